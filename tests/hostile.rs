//! Hostile clients: slow or oversized headers, lying lengths, invalid bodies, binary headers
//! that claim bytes that are not there, and model names built to blow up metrics.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use feature_trimmer::config::Config;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUNDLE: &str = r#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 1,
  "models": [{"model": "ranker", "version": "1", "features": ["a"]}]}"#;

async fn setup(tweak: impl FnOnce(&mut Config)) -> (TempDir, Leaf, Sidecar) {
    let dir = TempDir::new("hostile");
    std::fs::write(dir.path("home.json"), BUNDLE).unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    tweak(&mut config);
    let sidecar = Sidecar::start(config).await;
    (dir, leaf, sidecar)
}

/// Reads until the peer closes (or 5 s pass); returns what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("the sidecar must close the connection");
    out
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (_dir, _leaf, sidecar) = setup(|c| c.header_read_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/models/ranker:predict HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_to_close(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // Others are still served.
    assert_eq!(
        send(&h1_client(), "GET", &sidecar.url("/v1/models/ranker"), "")
            .await
            .status,
        200
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (_dir, leaf, sidecar) = setup(|_| {}).await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let huge = "x".repeat(1024 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = read_to_close(&mut stream).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert_eq!(leaf.count(), 0);
    assert_eq!(
        send(&h1_client(), "GET", &sidecar.url("/"), "")
            .await
            .status,
        200
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn a_lying_content_length_gets_a_clear_error() {
    let (_dir, leaf, sidecar) = setup(|_| {}).await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/models/ranker/versions/1:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"instances\":[]}")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_to_close(&mut stream).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("\"error\"") && text.contains("request body"),
        "{text}"
    );
    assert_eq!(leaf.count(), 0, "a partial body is never forwarded");
    sidecar.stop().await;
}

#[tokio::test]
async fn invalid_utf8_json_and_binary_layouts_pass_untouched() {
    let (_dir, leaf, sidecar) = setup(|_| {}).await;
    let client = h1_client();
    let bodies: [&[u8]; 3] = [
        b"{\"instances\": [{\"a\": \"\xff\xfe\", \"b\": 1}]}",
        b"{\"instances\": [{\"a\": 1,, }]}",
        b"\x00\x01binary",
    ];
    for body in bodies {
        let a = send(
            &client,
            "POST",
            &sidecar.url("/v1/models/ranker/versions/1:predict"),
            body.to_vec(),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(&leaf.seen().pop().unwrap().body[..], body);
    }
    // A Triton header that claims more binary bytes than the body has.
    let json = r#"{"inputs":[{"name":"a","shape":[4],"datatype":"FP32","parameters":{"binary_data_size":16}},{"name":"b","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
    let mut body = json.as_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    for header in [
        json.len().to_string(),
        (body.len() + 100).to_string(),
        "not a number".to_owned(),
    ] {
        let request = Request::post(sidecar.url("/v2/models/ranker/versions/1/infer"))
            .header("inference-header-content-length", header.as_str())
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        assert_eq!(
            answer(client.request(request).await.unwrap()).await.status,
            200
        );
        assert_eq!(leaf.seen().pop().unwrap().body, body, "header {header}");
    }
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="ranker",outcome="parse_error"}"#
        ),
        Some(6.0)
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn hostile_model_names_never_create_series() {
    let (_dir, leaf, sidecar) = setup(|_| {}).await;
    let client = h1_client();
    let series = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("trimmer_requests_total{"))
            .count()
    };
    let before = series(&get_text(&sidecar.admin_url("/metrics")).await);
    let long = "m".repeat(8 * 1024);
    let tricks = [
        "/v1/models/..%2F..%2Fetc%2Fpasswd:predict".to_owned(),
        "/v1/models/%00%0a:predict".to_owned(),
        format!("/v1/models/{long}:predict"),
        "/v2/models/..%2Fadmin/infer".to_owned(),
        "/v1/models/ranker%20:predict".to_owned(),
    ];
    for path in &tricks {
        let a = send(&client, "POST", &sidecar.url(path), "{}").await;
        assert_eq!(a.status, 200, "{path}");
    }
    for i in 0..500 {
        send(
            &client,
            "POST",
            &sidecar.url(&format!("/v1/models/flood_{i}:predict")),
            "{}",
        )
        .await;
    }
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(series(&m), before, "request data created metric series");
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="_unknown",outcome="unknown_model"}"#
        ),
        Some(505.0)
    );
    assert!(!m.contains("flood_") && !m.contains("passwd"));
    assert_eq!(leaf.count(), 505, "unknown models still reach their leaf");
    // Paths were forwarded as they came, not decoded.
    assert!(leaf
        .seen()
        .iter()
        .any(|s| s.uri.path() == "/v1/models/..%2F..%2Fetc%2Fpasswd:predict"));
    sidecar.stop().await;
}
