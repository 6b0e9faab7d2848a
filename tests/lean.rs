//! The lean HTTP/1.1 path (`src/h1.rs`) on real sockets: one client connection carrying lean
//! and hyper-served requests (pipelined), leaves answering in every HTTP/1.1 framing, pooled
//! connections the leaf closed, and leaves that send more than they announced.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUNDLE: &str = r#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 1,
  "models": [{"model": "ranker", "version": "1", "features": ["a"]}]}"#;

/// Reads one HTTP/1.1 response with a Content-Length body; returns (head, body).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len = content_length(&head).expect("a content-length");
            while buf.len() < end + 4 + len {
                read_some(stream, buf).await;
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return (head, body);
        }
        read_some(stream, buf).await;
    }
}

/// The `Content-Length` of a message head.
fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().unwrap())
    })
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    assert!(
        n > 0,
        "closed early; so far: {}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

#[tokio::test]
async fn one_connection_carries_lean_and_hyper_requests_pipelined() {
    let dir = TempDir::new("lean");
    std::fs::write(dir.path("home.json"), BUNDLE).unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    let sidecar = Sidecar::start(config).await;
    let score = "/v1/models/ranker/versions/1:predict";
    let body = r#"{"instances":[{"a":1,"b":2}]}"#;
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-Id: {}\r\nContent-Length: {}\r\n\r\n{body}",
            path.len(),
            body.len()
        )
    };
    // Two lean requests, a GET (which hands the connection to hyper), then a score request
    // that hyper now serves: all written at once.
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let all = [
        post(score, body),
        post("/echo", "plain"),
        post("/empty", ""),
        "GET /v1/models/ranker HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        post(score, body),
    ]
    .concat();
    stream.write_all(all.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(read_response(&mut stream, &mut buf).await);
    }
    for (head, _) in &answers {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-leaf: leaf"), "{head}");
    }
    assert_eq!(
        answers[0].1, br#"{"instances":[{"a":1}]}"#,
        "trimmed, echoed"
    );
    assert_eq!(answers[1].1, b"plain");
    assert_eq!(answers[2].1, b"", "an empty body is a body too");
    assert_eq!(answers[4].1, br#"{"instances":[{"a":1}]}"#);
    let seen = leaf.seen();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[1].headers["x-id"], "5", "end-to-end headers pass");
    assert_eq!(seen[1].headers["host"], leaf.addr.to_string().as_str());
    assert_eq!(seen[2].headers["content-length"], "0");
    assert_eq!(seen[3].method, "GET");
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="ranker",outcome="trimmed"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_hyper_handoffs_total{reason="not_post"}"#
        ),
        Some(1.0),
        "the GET handed the connection over, once"
    );
    sidecar.stop().await;
}

/// A keep-alive leaf on raw sockets: reads each request (head + Content-Length body) and
/// answers with `answer(path)`; closes after an answer without a length. Counts connections.
async fn raw_keep_alive_leaf(
    answer: fn(&str) -> Vec<u8>,
    close_after_each: bool,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let len = content_length(&head).unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.drain(..end + 4 + len);
                    let out = answer(&path);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    let delimited_by_close = !String::from_utf8_lossy(&out)
                        .to_ascii_lowercase()
                        .contains("content-length")
                        && !String::from_utf8_lossy(&out).contains("chunked")
                        && !out.starts_with(b"HTTP/1.1 204");
                    if delimited_by_close || close_after_each {
                        return;
                    }
                }
            });
        }
    });
    (url, connections)
}

fn framed_answers(path: &str) -> Vec<u8> {
    match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n4;x=y\r\nabcd\r\n6\r\nefghij\r\n0\r\nx-sum: 10\r\n\r\n".to_vec(),
        "/close" => b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
        "/empty" => b"HTTP/1.1 204 No Content\r\nx-empty: 1\r\n\r\n".to_vec(),
        "/interim" => b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal".to_vec(),
        "/extra" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE".to_vec(),
        "/interim-then-close" => b"HTTP/1.1 103 Early Hints\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\nplain".to_vec(),
    }
}

#[tokio::test]
async fn leaf_answers_in_every_framing_reach_the_client_whole() {
    let (url, connections) = raw_keep_alive_leaf(framed_answers, false).await;
    let sidecar = Sidecar::start(config_with(&[("leaf", vec![url], vec![])])).await;
    let client = h1_client();
    let expected: [(&str, u16, &[u8]); 6] = [
        ("/chunked", 200, b"abcdefghij"),
        ("/close", 200, b"until the end"),
        ("/empty", 204, b""),
        ("/interim", 200, b"final"),
        ("/extra", 200, b"ok"),
        ("/plain", 200, b"plain"),
    ];
    // Twice over: each answer must also leave the pooled connection fit for the next one
    // (or not pooled at all).
    for round in 0..2 {
        for (path, status, body) in expected {
            let a = send(&client, "POST", &sidecar.url(path), "x").await;
            assert_eq!(a.status, status, "{path} round {round}");
            assert_eq!(&a.body[..], body, "{path} round {round}");
            if path == "/plain" {
                assert!(a.headers.get("x-hop").is_none(), "named by Connection");
                assert!(a.headers.get("connection").is_none());
            }
            if path == "/empty" {
                assert_eq!(a.headers["x-empty"], "1");
            }
        }
    }
    // /close and /extra each cost a connection; the others reuse pooled ones.
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (4..=6).contains(&opened),
        "{opened} connections to the leaf"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn a_request_the_leaf_began_to_answer_is_never_sent_again() {
    // The leaf answers 103 on the pooled connection and closes it: it had the request, so the
    // sidecar must answer 502 instead of sending the POST again on a new connection.
    let (url, connections) = raw_keep_alive_leaf(framed_answers, false).await;
    let sidecar = Sidecar::start(config_with(&[("leaf", vec![url], vec![])])).await;
    let client = h1_client();
    assert_eq!(
        send(&client, "POST", &sidecar.url("/plain"), "x")
            .await
            .status,
        200
    );
    let a = send(&client, "POST", &sidecar.url("/interim-then-close"), "x").await;
    assert_eq!(a.status, 502, "{:?}", a.body);
    assert!(
        a.json()["error"].as_str().unwrap().contains("closed"),
        "{:?}",
        a.body
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1, "no second attempt");
    sidecar.stop().await;
}

#[tokio::test]
async fn a_pooled_connection_the_leaf_closed_is_replaced_without_an_error() {
    // The leaf answers once per connection (keep-alive headers, then closes): the sidecar's
    // next request finds its pooled connection dead and must open a new one.
    let (url, connections) = raw_keep_alive_leaf(framed_answers, true).await;
    let sidecar = Sidecar::start(config_with(&[("leaf", vec![url], vec![])])).await;
    let client = h1_client();
    for i in 0..5 {
        let a = send(&client, "POST", &sidecar.url("/plain"), "x").await;
        assert_eq!(a.status, 200, "request {i}: {:?}", a.body);
        assert_eq!(&a.body[..], b"plain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 5);
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    let errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("trimmer_upstream_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(errors, 0.0, "{metrics}");
    sidecar.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_timeout() {
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.header_read_timeout_ms = 300;
    let sidecar = Sidecar::start(config).await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut stream, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hi");
    // Then nothing: the connection is closed once the timeout has run out, not before.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let idle = started.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
    sidecar.stop().await;
}
