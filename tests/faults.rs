//! Faults around the sidecar: leaves that reset, hang, lie or read slowly, bundles rewritten
//! with corrupt files under load. Every request gets the leaf's answer or our clear error.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A leaf that reads whatever arrives and then does `act` with the connection.
async fn raw_leaf<F, Fut>(act: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let act = std::sync::Arc::new(act);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let act = act.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                act(stream).await;
            });
        }
    });
    url
}

/// A sidecar routing model `flaky` to `bad` and everything else to a working leaf.
async fn beside_a_good_leaf(bad: String) -> (Leaf, Sidecar) {
    let good = Leaf::start("good").await;
    let sidecar = Sidecar::start(config_with(&[
        ("good", vec![good.url()], vec![]),
        ("bad", vec![bad], vec!["flaky"]),
    ]))
    .await;
    (good, sidecar)
}

async fn still_serving(sidecar: &Sidecar) {
    let a = send(&h1_client(), "POST", &sidecar.url("/fine"), "ok").await;
    assert_eq!(a.status, 200, "the sidecar must keep serving");
}

#[tokio::test]
async fn a_leaf_that_resets_before_answering_gets_502() {
    let bad = raw_leaf(|stream| async move {
        let _ = stream.set_zero_linger();
        drop(stream);
    })
    .await;
    let (_good, sidecar) = beside_a_good_leaf(bad).await;
    let a = send(
        &h1_client(),
        "POST",
        &sidecar.url("/v1/models/flaky:predict"),
        "{}",
    )
    .await;
    assert_eq!(a.status, 502);
    let error = a.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("`bad`"), "{error}");
    still_serving(&sidecar).await;
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_upstream_errors_total{kind="transport",upstream="bad"}"#
        ),
        Some(1.0)
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn a_leaf_that_resets_mid_response_ends_the_client_response_too() {
    let bad = raw_leaf(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            .await;
        let _ = stream.write_all(&[b'x'; 100]).await;
        let _ = stream.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stream.set_zero_linger();
    })
    .await;
    let (_good, sidecar) = beside_a_good_leaf(bad).await;
    let request = http::Request::post(sidecar.url("/v1/models/flaky:predict"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = h1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200, "headers were already on their way");
    // The body cannot complete: the client sees an error, never a silently short body or a hang.
    use http_body_util::BodyExt;
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("no hang");
    assert!(body.is_err(), "a truncated body must surface as an error");
    still_serving(&sidecar).await;
    sidecar.stop().await;
}

#[tokio::test]
async fn a_malformed_response_gets_502() {
    let bad = raw_leaf(|mut stream| async move {
        let _ = stream.write_all(b"HTTP/1.1 abc what\r\n\r\n").await;
    })
    .await;
    let (_good, sidecar) = beside_a_good_leaf(bad).await;
    let a = send(
        &h1_client(),
        "POST",
        &sidecar.url("/v1/models/flaky:predict"),
        "{}",
    )
    .await;
    assert_eq!(a.status, 502);
    assert!(a.json()["error"].as_str().unwrap().contains("failed"));
    still_serving(&sidecar).await;
    sidecar.stop().await;
}

#[tokio::test]
async fn a_leaf_slow_to_read_the_request_still_gets_all_of_it() {
    // A leaf that waits before reading an 8 MiB body: the sidecar's writes block, then resume.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let counter = counter.clone();
                async move {
                    use http_body_util::BodyExt;
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    counter.store(body.len(), std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"done")),
                    ))
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    let sidecar = Sidecar::start(config_with(&[("slow", vec![url], vec![])])).await;
    let body = vec![b'7'; 8 * 1024 * 1024];
    let a = send(
        &h1_client(),
        "POST",
        &sidecar.url("/v2/models/m/infer"),
        body,
    )
    .await;
    assert_eq!((a.status.as_u16(), &a.body[..]), (200, &b"done"[..]));
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        8 * 1024 * 1024
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bundle_rewrites_under_load_never_drop_trimming() {
    let dir = TempDir::new("faults-bundles");
    let good = r#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 1,
      "models": [{"model": "ranker", "version": "1", "features": ["a"]}]}"#;
    std::fs::write(dir.path("home.json"), good).unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    config.bundles.debounce_ms = 1;
    let sidecar = Sidecar::start(config).await;

    let path = dir.path("home.json");
    let writer = tokio::task::spawn_blocking(move || {
        for i in 0..300 {
            let text = match i % 3 {
                0 => "{ corrupt".to_owned(),
                1 => good
                    .replace("\"a\"", "\"a\", \"z\"")
                    .replace("home\"", "other\""),
                _ => good.to_owned(),
            };
            std::fs::write(&path, text).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        std::fs::write(&path, good).unwrap();
    });
    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = sidecar.url("/v1/models/ranker/versions/1:predict");
        clients.push(tokio::spawn(async move {
            let client = h1_client();
            for _ in 0..100 {
                let a = send(
                    &client,
                    "POST",
                    &url,
                    r#"{"instances": [{"a": 1, "b": 2}]}"#,
                )
                .await;
                assert_eq!(a.status, 200);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    writer.await.unwrap();
    for seen in leaf.seen() {
        assert_eq!(
            &seen.body[..],
            br#"{"instances": [{"a": 1}]}"#,
            "every request was trimmed with a good allowlist"
        );
    }
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="ranker",outcome="trimmed"}"#
        ),
        Some(400.0)
    );
    assert!(
        metric(
            &m,
            r#"trimmer_bundle_loads_total{bundle="home",result="error"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    sidecar.stop().await;
}
