//! The forwarding path seen from outside: byte-identical bodies and headers over HTTP/1.1 and
//! h2c, trailers, the sidecar's own error answers, routing, spreading and ejection.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Deterministic bytes covering every value, so a dropped or reordered chunk shows.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn bodies_and_headers_survive(client: TestClient) {
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.max_body_bytes = 128 * 1024 * 1024;
    let sidecar = Sidecar::start(config).await;
    for len in [0, 1, 1234, 64 * 1024 * 1024] {
        let body = pattern(len);
        let request = Request::builder()
            .method("POST")
            .uri(sidecar.url("/v1/models/ranker:predict?debug=1"))
            .header("x-request-id", "r-42")
            .header("accept", "application/json")
            .header("x-dup", "first")
            .header("x-dup", "second")
            .header("connection", "x-secret")
            .header("x-secret", "hop-by-hop")
            .body(Full::new(body.clone()))
            .unwrap();
        let a = answer(client.request(request).await.unwrap()).await;
        assert_eq!(a.status, 200);
        assert!(a.body == body, "response body differs for {len} bytes");
        assert_eq!(a.headers["x-leaf"], "leaf");
        let multi: Vec<_> = a.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"]);

        let seen = leaf.seen().pop().unwrap();
        assert!(
            seen.body == body,
            "leaf saw a different body for {len} bytes"
        );
        assert_eq!(
            seen.uri.path_and_query().unwrap(),
            "/v1/models/ranker:predict?debug=1"
        );
        assert_eq!(seen.headers["x-request-id"], "r-42");
        assert_eq!(seen.headers["accept"], "application/json");
        let dup: Vec<_> = seen.headers.get_all("x-dup").iter().collect();
        assert_eq!(dup, ["first", "second"]);
        assert!(
            !seen.headers.contains_key("x-secret"),
            "header named by Connection leaked"
        );
        assert_eq!(seen.headers["host"], leaf.addr.to_string());
        assert_eq!(seen.headers["content-length"], len.to_string());
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn http1_forwards_bytes_and_headers_unchanged() {
    bodies_and_headers_survive(h1_client()).await;
}

#[tokio::test]
async fn h2c_forwards_bytes_and_headers_unchanged() {
    bodies_and_headers_survive(h2_client()).await;
}

#[tokio::test]
async fn chunked_request_body_arrives_whole() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start(config_for(&leaf)).await;
    let (mut tx, body) = streamed(2);
    let expected = pattern(300_000);
    let chunks = expected.clone();
    tokio::spawn(async move {
        for chunk in chunks.chunks(7_001) {
            tx.send_data(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(sidecar.url("/v2/models/m/infer"))
        .body(body)
        .unwrap();
    let a = answer(client.request(request).await.unwrap()).await;
    assert_eq!(a.status, 200);
    assert!(a.body == expected);
    let seen = leaf.seen().pop().unwrap();
    assert!(seen.body == expected, "leaf saw a different body");
    sidecar.stop().await;
}

#[tokio::test]
async fn response_trailers_reach_the_client() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start(config_for(&leaf)).await;
    for client in [h1_client(), h2_client()] {
        let request = Request::get(sidecar.url("/trailers"))
            .header("te", "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = answer(client.request(request).await.unwrap()).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, "part one;part two");
        let trailers = a
            .trailers
            .unwrap_or_else(|| panic!("trailers were dropped ({:?})", a.headers));
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-checksum"], "abc123");
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn oversized_body_gets_413_declared_or_not() {
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.max_body_bytes = 1000;
    let sidecar = Sidecar::start(config).await;
    let client = h1_client();

    let a = send(
        &client,
        "POST",
        &sidecar.url("/v1/models/m:predict"),
        pattern(1001),
    )
    .await;
    assert_eq!(a.status, 413);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_body_bytes (1000 bytes)"));

    // Undeclared length (chunked): the limit trips while reading.
    let (mut tx, body) = streamed(2);
    tokio::spawn(async move {
        for _ in 0..20 {
            if tx.send_data(pattern(100)).await.is_err() {
                break;
            }
        }
    });
    let chunked = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(sidecar.url("/v1/models/m:predict"))
        .body(body)
        .unwrap();
    let a = answer(chunked.request(request).await.unwrap()).await;
    assert_eq!(a.status, 413);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_body_bytes"));

    let a = send(
        &client,
        "POST",
        &sidecar.url("/v1/models/m:predict"),
        pattern(1000),
    )
    .await;
    assert_eq!(a.status, 200, "a body exactly at the limit passes");
    assert_eq!(leaf.count(), 1, "rejected bodies never reached the leaf");
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_rejected_requests_total{reason="body_too_large"}"#
        ),
        Some(2.0)
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn nothing_listening_gets_502_naming_the_upstream() {
    let dead = dead_addr().await;
    let sidecar = Sidecar::start(config_with(&[(
        "leaves",
        vec![format!("http://{dead}")],
        vec![],
    )]))
    .await;
    let a = send(
        &h1_client(),
        "POST",
        &sidecar.url("/v1/models/m:predict"),
        "{}",
    )
    .await;
    assert_eq!(a.status, 502);
    let error = a.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("`leaves`") && error.contains(&dead.to_string()),
        "{error}"
    );
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_upstream_errors_total{kind="connect",upstream="leaves"}"#
        ),
        Some(1.0)
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn leaf_that_never_answers_gets_504() {
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.clusters[0].request_timeout_ms = 300;
    let sidecar = Sidecar::start(config).await;
    let started = std::time::Instant::now();
    let a = send(&h1_client(), "POST", &sidecar.url("/hang"), "{}").await;
    assert_eq!(a.status, 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let error = a.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("did not answer within 300 ms") && error.contains("`default`"),
        "{error}"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn requests_route_by_model_name() {
    let (ads, home, other) = (
        Leaf::start("ads").await,
        Leaf::start("home").await,
        Leaf::start("other").await,
    );
    let sidecar = Sidecar::start(config_with(&[
        ("other", vec![other.url()], vec![]),
        ("ads", vec![ads.url()], vec!["ads_*"]),
        ("home", vec![home.url()], vec!["homefeed_ranker"]),
    ]))
    .await;
    let client = h1_client();
    for (path, leaf) in [
        ("/v1/models/ads_ctr/versions/3:predict", "ads"),
        ("/v2/models/ads_cvr/infer", "ads"),
        ("/v1/models/homefeed_ranker/metadata", "home"),
        ("/v2/models/homefeed_ranker/versions/2/infer", "home"),
        ("/v1/models/homefeed_ranker_v2:predict", "other"),
        ("/v2/health/ready", "other"),
    ] {
        let a = send(&client, "POST", &sidecar.url(path), "{}").await;
        assert_eq!(a.headers["x-leaf"], leaf, "{path}");
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn load_spreads_and_a_dead_endpoint_is_skipped() {
    let (a, b) = (Leaf::start("a").await, Leaf::start("b").await);
    let dead = format!("http://{}", dead_addr().await);
    let mut config = config_with(&[("pool", vec![a.url(), dead, b.url()], vec![])]);
    config.clusters[0].eject_ms = 60_000;
    let sidecar = Sidecar::start(config).await;
    let client = h1_client();
    for i in 0..30 {
        let r = send(
            &client,
            "POST",
            &sidecar.url("/v2/models/m/infer"),
            format!("{i}"),
        )
        .await;
        assert_eq!(
            r.status, 200,
            "request {i} failed although two endpoints are alive"
        );
        assert_eq!(r.body, format!("{i}"));
    }
    assert_eq!(a.count() + b.count(), 30);
    assert!(
        a.count() >= 10 && b.count() >= 10,
        "uneven spread: {} vs {}",
        a.count(),
        b.count()
    );
    let status: serde_json::Value =
        serde_json::from_str(&get_text(&sidecar.admin_url("/status")).await).unwrap();
    let ejected: Vec<bool> = status["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ejected"].as_bool().unwrap())
        .collect();
    assert_eq!(ejected, [false, true, false]);
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_upstream_errors_total{kind="connect",upstream="pool"}"#
        ),
        Some(1.0),
        "the dead endpoint was tried once, then skipped"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn least_outstanding_avoids_a_busy_endpoint() {
    let (a, b) = (Leaf::start("a").await, Leaf::start("b").await);
    let mut config = config_with(&[("pool", vec![a.url(), b.url()], vec![])]);
    config.clusters[0].balance = feature_trimmer::config::Balance::LeastOutstanding;
    let sidecar = Sidecar::start(config).await;
    let client = h1_client();
    // Occupy one endpoint with slow requests, then send quick ones.
    let slow_url = sidecar.url("/slow/1500");
    let slow = tokio::spawn({
        let client = client.clone();
        async move { send(&client, "POST", &slow_url, "slow").await }
    });
    eventually("the slow request to reach a leaf", || async {
        a.count() + b.count() == 1
    })
    .await;
    let busy = if a.count() == 1 { &a } else { &b };
    for _ in 0..10 {
        let r = send(&client, "POST", &sidecar.url("/fast"), "x").await;
        assert_ne!(
            r.headers["x-leaf"],
            busy.name.as_str(),
            "sent to the busy endpoint"
        );
    }
    assert_eq!(slow.await.unwrap().status, 200);
    sidecar.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_requests_all_answered() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start(config_for(&leaf)).await;
    let (h1, h2) = (h1_client(), h2_client());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = if i % 2 == 0 { h1.clone() } else { h2.clone() };
        let url = sidecar.url(&format!("/v1/models/m{}:predict", i % 7));
        tasks.push(tokio::spawn(async move {
            let body = format!("{{\"instances\":[{{\"request\":{i}}}]}}");
            let a = send(&client, "POST", &url, body.clone()).await;
            (a.status, a.body == body)
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, same) = task.await.unwrap();
        assert!(
            status == 200 && same,
            "request {i}: {status}, body intact: {same}"
        );
    }
    assert_eq!(leaf.count(), 200);
    sidecar.stop().await;
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start(config_for(&leaf)).await;
    let client = h1_client();
    assert_eq!(
        send(&client, "GET", &sidecar.admin_url("/healthz"), "")
            .await
            .status,
        200
    );
    assert_eq!(
        send(&client, "GET", &sidecar.admin_url("/readyz"), "")
            .await
            .status,
        200
    );
    send(&client, "POST", &sidecar.url("/v1/models/m:predict"), "{}").await;
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(&metrics, r#"trimmer_build_info{version="0.1.0"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_upstream_requests_total{class="2xx",upstream="default"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_upstream_duration_seconds_count{upstream="default"}"#
        ),
        Some(1.0)
    );
    let missing = send(&client, "GET", &sidecar.admin_url("/nope"), "").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
    sidecar.stop().await;
}

#[tokio::test]
async fn h2c_towards_a_cluster_when_configured() {
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.clusters[0].protocol = feature_trimmer::config::UpstreamProtocol::H2c;
    let sidecar = Sidecar::start(config).await;
    let client = h1_client();
    for i in 0..5 {
        let a = send(
            &client,
            "POST",
            &sidecar.url("/v2/models/m/infer"),
            format!("body-{i}"),
        )
        .await;
        assert_eq!(
            (a.status.as_u16(), a.body.clone()),
            (200, bytes::Bytes::from(format!("body-{i}")))
        );
    }
    let seen = leaf.seen();
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "the leaf was not spoken to over h2c"
    );
    assert!(seen
        .iter()
        .all(|s| s.uri.authority().map(|a| a.to_string()) == Some(leaf.addr.to_string())));
    sidecar.stop().await;
}
