//! One table of edge cases, each run against every transport it applies to: the lean
//! HTTP/1.1 path, hyper's HTTP/1.1 path (the same request with `TE: trailers`, which the lean
//! path hands to hyper) and h2c. The lifecycle is written once, so every transport must give
//! the same answer: status, `x-trimmer-error` and JSON body, and the leaf must see the same
//! request.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use feature_trimmer::config::Config;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Lean,
    HyperH1,
    H2c,
}

/// What a client got back, as compared across transports.
#[derive(Debug, PartialEq)]
struct Got {
    status: u16,
    kind: Option<String>,
    body: Vec<u8>,
    trailers: Option<Vec<(String, String)>>,
}

/// One request: method, path, extra headers, body.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

async fn call(sidecar: &Sidecar, transport: Transport, c: &Call<'_>) -> Got {
    tokio::time::timeout(Duration::from_secs(10), call_inner(sidecar, transport, c))
        .await
        .unwrap_or_else(|_| panic!("{transport:?} {} {}: no answer", c.method, c.path))
}

async fn call_inner(sidecar: &Sidecar, transport: Transport, c: &Call<'_>) -> Got {
    let client = match transport {
        Transport::H2c => h2_client(),
        _ => h1_client(),
    };
    let mut request = http::Request::builder()
        .method(c.method)
        .uri(sidecar.url(c.path));
    for (name, value) in c.headers {
        request = request.header(*name, *value);
    }
    if transport == Transport::HyperH1 {
        request = request.header("te", "trailers");
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(c.body)))
        .unwrap();
    let a = answer(client.request(request).await.unwrap()).await;
    let mut trailers: Option<Vec<(String, String)>> = a.trailers.map(|t| {
        t.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    });
    if let Some(t) = trailers.as_mut() {
        t.sort();
    }
    Got {
        status: a.status.as_u16(),
        kind: a
            .headers
            .get("x-trimmer-error")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: a.body.to_vec(),
        trailers,
    }
}

/// Runs `c` over `transports` against one sidecar; every answer must equal the first, which
/// is returned. `leaf_saw` is checked after each call (the leaf's last request).
async fn same_everywhere(
    sidecar: &Sidecar,
    transports: &[Transport],
    c: &Call<'_>,
    mut leaf_saw: impl FnMut(Transport),
) -> Got {
    let mut first: Option<Got> = None;
    for &transport in transports {
        let got = call(sidecar, transport, c).await;
        leaf_saw(transport);
        match &first {
            None => first = Some(got),
            Some(expected) => assert_eq!(&got, expected, "{transport:?} differs for {}", c.path),
        }
    }
    first.unwrap()
}

fn error_of(got: &Got) -> String {
    let json: serde_json::Value = serde_json::from_slice(&got.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&got.body)));
    json["error"].as_str().unwrap().to_owned()
}

const ALL: [Transport; 3] = [Transport::Lean, Transport::HyperH1, Transport::H2c];

async fn sidecar(endpoints: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Sidecar {
    let mut config = config_with(&[("leaves", endpoints, vec![])]);
    tweak(&mut config);
    Sidecar::start(config).await
}

#[tokio::test]
async fn sidecar_errors_are_the_same_on_every_transport() {
    let leaf = Leaf::start("leaf").await;
    let dead = format!("http://{}", dead_addr().await);
    let resetting = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf).await;
                let _ = stream.set_zero_linger();
            }
        });
        url
    };
    let big = vec![b'x'; 2000];
    type Tweak = fn(&mut Config);
    // (case, endpoint, configuration, request, status, kind, part of the message)
    let cases: Vec<(&str, String, Tweak, Call, u16, &str, &str)> = vec![
        (
            "declared too large",
            leaf.url(),
            |c| c.max_body_bytes = 1000,
            Call {
                method: "POST",
                path: "/v1/models/m:predict",
                headers: &[],
                body: &big,
            },
            413,
            "body_too_large",
            "max_body_bytes (1000 bytes)",
        ),
        (
            "nothing listening",
            dead.clone(),
            |_| {},
            Call {
                method: "POST",
                path: "/v1/models/m:predict",
                headers: &[],
                body: b"{}",
            },
            502,
            "no_endpoint",
            "no endpoint of upstream `leaves`",
        ),
        (
            "leaf never answers",
            leaf.url(),
            |c| c.clusters[0].request_timeout_ms = 300,
            Call {
                method: "POST",
                path: "/hang",
                headers: &[],
                body: b"{}",
            },
            504,
            "upstream_timeout",
            "did not answer within 300 ms",
        ),
        (
            "leaf fails after the request was sent",
            resetting.clone(),
            |_| {},
            Call {
                method: "POST",
                path: "/v1/models/m:predict",
                headers: &[],
                body: b"{}",
            },
            502,
            "upstream_failed",
            "failed",
        ),
    ];
    for (case, endpoint, tweak, request, status, kind, message) in cases {
        let sidecar = sidecar(vec![endpoint], tweak).await;
        let got = same_everywhere(&sidecar, &ALL, &request, |_| {}).await;
        assert_eq!(got.status, status, "{case}");
        assert_eq!(got.kind.as_deref(), Some(kind), "{case}");
        assert!(
            error_of(&got).contains(message),
            "{case}: {}",
            error_of(&got)
        );
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn a_body_cut_short_is_the_same_400_on_both_http1_paths() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = sidecar(vec![leaf.url()], |_| {}).await;
    let mut answers = Vec::new();
    for extra in ["", "te: trailers\r\n"] {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        let head =
            format!("POST /v1/models/m:predict HTTP/1.1\r\nhost: t\r\n{extra}content-length: 100\r\n\r\n0123456789");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .expect("an answer and a close")
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).unwrap_or_default().to_owned();
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix("x-trimmer-error: "))
            .map(str::to_owned);
        answers.push((status, kind));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[0],
        ("400".to_owned(), Some("body_read_error".to_owned()))
    );
    assert_eq!(leaf.count(), 0);
    sidecar.stop().await;
}

#[tokio::test]
async fn forwarded_heads_are_the_same_on_every_transport() {
    let dir = TempDir::new("lifecycle");
    std::fs::write(
        dir.path("home.json"),
        bundle_json("home", 1, &[("ranker", "1", &["a"]), ("m", "1", &["keep"])]),
    )
    .unwrap();
    for preserve_host in [false, true] {
        let leaf = Leaf::start("leaf").await;
        let sidecar = sidecar(vec![leaf.url()], |c| {
            c.bundles.dir = Some(dir.0.clone());
            c.clusters[0].preserve_host = preserve_host;
        })
        .await;
        let check = |transport: Transport| {
            let seen = leaf.seen().pop().unwrap();
            let host = seen
                .headers
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned());
            let authority = seen.uri.authority().map(|a| a.to_string());
            let host = host.or(authority).unwrap_or_default();
            if preserve_host {
                assert_eq!(
                    host,
                    sidecar.addr.to_string(),
                    "{transport:?}: the client's host"
                );
            } else {
                assert_eq!(
                    host,
                    leaf.addr.to_string(),
                    "{transport:?}: the endpoint's host"
                );
            }
            for hop in ["keep-alive", "proxy-authorization", "upgrade"] {
                assert!(
                    !seen.headers.contains_key(hop),
                    "{transport:?}: {hop} forwarded"
                );
            }
            assert_eq!(seen.headers["x-request-id"], "r-1", "{transport:?}");
            seen
        };
        // A TF Serving request trimmed: Content-Length follows the new body.
        let body = br#"{"instances": [{"a": 1, "b": 2}]}"#;
        let request = Call {
            method: "POST",
            path: "/v1/models/ranker/versions/1:predict",
            headers: &[
                ("x-request-id", "r-1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "secret"),
            ],
            body,
        };
        let mut seen_bodies = Vec::new();
        let got = same_everywhere(&sidecar, &ALL, &request, |t| {
            let seen = check(t);
            assert_eq!(
                seen.headers["content-length"],
                seen.body.len().to_string(),
                "{t:?}"
            );
            seen_bodies.push(seen.body);
        })
        .await;
        assert_eq!(got.status, 200);
        assert!(seen_bodies
            .iter()
            .all(|b| &b[..] == br#"{"instances": [{"a": 1}]}"#));

        // A Triton binary request trimmed: both lengths rewritten.
        let json = br#"{"inputs":[{"name":"drop","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4}},{"name":"keep","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":3}}]}"#;
        let mut binary = json.to_vec();
        binary.extend_from_slice(b"DROPkep");
        let json_len = json.len().to_string();
        let headers = [
            ("x-request-id", "r-1"),
            ("inference-header-content-length", json_len.as_str()),
        ];
        let request = Call {
            method: "POST",
            path: "/v2/models/m/versions/1/infer",
            headers: &headers,
            body: &binary,
        };
        same_everywhere(&sidecar, &ALL, &request, |t| {
            let seen = check(t);
            let new_json_len: usize = seen.headers["inference-header-content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(seen.body.ends_with(b"kep"), "{t:?}");
            assert!(!seen.body.windows(4).any(|w| w == b"DROP"), "{t:?}");
            assert_eq!(new_json_len, seen.body.len() - 3, "{t:?}");
            assert_eq!(
                seen.headers["content-length"],
                seen.body.len().to_string(),
                "{t:?}"
            );
        })
        .await;
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn trailers_and_lz4_are_the_same_on_every_transport_that_carries_them() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = sidecar(vec![leaf.url()], |c| c.accept_lz4 = true).await;
    // Trailers: the leaf declares them and sends them to clients that accept them
    // (`TE: trailers`, which also sends an HTTP/1.1 request to hyper's path).
    let request = Call {
        method: "POST",
        path: "/trailers",
        headers: &[("te", "trailers")],
        body: b"x",
    };
    let got = same_everywhere(
        &sidecar,
        &[Transport::HyperH1, Transport::H2c],
        &request,
        |_| {},
    )
    .await;
    assert_eq!(got.body, b"part one;part two");
    assert_eq!(
        got.trailers,
        Some(vec![
            ("grpc-status".to_owned(), "0".to_owned()),
            ("x-checksum".to_owned(), "abc123".to_owned())
        ])
    );
    // lz4 accepted: decoded before the leaf, whatever the transport.
    let plain = b"{\"instances\": [{\"a\": 1}]}".repeat(20);
    let encoded = feature_trimmer::compression::encode(&plain).unwrap();
    let request = Call {
        method: "POST",
        path: "/echo",
        headers: &[("content-encoding", "lz4")],
        body: &encoded,
    };
    let got = same_everywhere(&sidecar, &ALL, &request, |t| {
        let seen = leaf.seen().pop().unwrap();
        assert_eq!(seen.body, plain, "{t:?}");
        assert!(!seen.headers.contains_key("content-encoding"), "{t:?}");
    })
    .await;
    assert_eq!(got.body, plain);
    sidecar.stop().await;
}

#[tokio::test]
async fn a_head_answer_keeps_its_length_and_the_connection() {
    // A raw leaf: HEAD gets a head announcing 5 bytes and no body; anything else gets "fine".
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = buf.starts_with(b"HEAD");
                    buf.drain(..end);
                    let answer: &[u8] = if head {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let sidecar = sidecar(vec![url], |_| {}).await;
    for client in [h1_client(), h2_client()] {
        let request = http::Request::head(sidecar.url("/v1/models/m"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
            .await
            .expect("a HEAD answer")
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "5");
        let got = send(&client, "GET", &sidecar.url("/v1/models/m"), "").await;
        assert_eq!(&got.body[..], b"fine");
    }
    // The HEAD answer ended at its head: the pooled connection served what followed.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    sidecar.stop().await;
}

#[tokio::test]
async fn admin_answers_carry_their_kind_too() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = sidecar(vec![leaf.url()], |_| {}).await;
    for (method, path, status, kind) in [
        ("GET", "/nothing", 404, "not_found"),
        ("GET", "/reload", 405, "method_not_allowed"),
    ] {
        let a = send(&h1_client(), method, &sidecar.admin_url(path), "").await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.headers["x-trimmer-error"], kind, "{path}");
        assert!(a.json()["error"].is_string(), "{path}");
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn a_body_discovered_too_large_is_the_same_413_where_it_can_be() {
    // No declared length: HTTP/1.1 chunked (hyper's path) and an h2c stream without
    // content-length; the limit is found while reading.
    let leaf = Leaf::start("leaf").await;
    let sidecar = sidecar(vec![leaf.url()], |c| c.max_body_bytes = 1000).await;
    let mut answers = Vec::new();
    for h2 in [false, true] {
        let (mut tx, body) = streamed(4);
        tokio::spawn(async move {
            for _ in 0..4 {
                if tx.send_data(Bytes::from(vec![b'x'; 400])).await.is_err() {
                    return;
                }
            }
        });
        let request = http::Request::post(sidecar.url("/v1/models/m:predict"))
            .body(body)
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(h2)
                .build_http();
        let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
            .await
            .expect("an answer")
            .unwrap();
        let a = answer(response).await;
        answers.push((
            a.status.as_u16(),
            a.headers["x-trimmer-error"].to_str().unwrap().to_owned(),
            a.json()["error"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 413);
    assert_eq!(answers[0].1, "body_too_large");
    assert_eq!(leaf.count(), 0);
    sidecar.stop().await;
}
