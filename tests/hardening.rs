//! Regression tests for the faults a hostile-input probe found, each run on every transport
//! it applies to: the lean HTTP/1.1 path (a `POST` with `Content-Length`), hyper's HTTP/1.1
//! path (the same request with `TE: trailers`, which the lean path hands to hyper) and h2c.
//! The leaves are raw sockets that misbehave exactly as described; the clients read raw
//! bytes too, so nothing a well-behaved library would paper over goes unseen.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use feature_trimmer::config::Config;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Lean,
    HyperH1,
    H2c,
}

const ALL: [Transport; 3] = [Transport::Lean, Transport::HyperH1, Transport::H2c];

/// What a client got back.
#[derive(Debug)]
struct Got {
    status: u16,
    /// Header names lowercased.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Reads a response head from a raw socket (`buf` keeps what follows it).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, HashMap<String, String>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = response.parse(buf) {
            let status = response.code.unwrap();
            let map = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            buf.drain(..n);
            if status == 100 {
                continue;
            }
            return (status, map);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads more bytes onto `buf`; the peer closing here is a failure.
async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 65536];
    let n = stream.read(&mut chunk).await.unwrap();
    assert!(n > 0, "closed inside a body");
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads a whole HTTP/1.1 answer from a raw socket. An answer without framing on a
/// keep-alive connection never ends: that is a failure, reported as such.
async fn read_answer(stream: &mut TcpStream) -> Got {
    let mut buf = Vec::new();
    let (status, headers) = read_head(stream, &mut buf).await;
    let body = if status == 204 || status == 304 {
        Vec::new()
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.ends_with("chunked"))
    {
        let mut body = Vec::new();
        loop {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                more(stream, &mut buf).await;
            }
            let line = buf.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_text = String::from_utf8_lossy(&buf[..line]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            buf.drain(..line + 2);
            if size == 0 {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.starts_with(b"\r\n") {
                    more(stream, &mut buf).await;
                }
                break;
            }
            while buf.len() < size + 2 {
                more(stream, &mut buf).await;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
        body
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            more(stream, &mut buf).await;
        }
        buf.truncate(len);
        buf
    } else {
        panic!("an answer without framing: {status} {headers:?}");
    };
    Got {
        status,
        headers,
        body,
    }
}

/// Sends `body` to `path` over `transport` on a new client connection; the whole answer.
async fn call(sidecar: &Sidecar, transport: Transport, path: &str, body: &[u8]) -> Got {
    tokio::time::timeout(
        Duration::from_secs(5),
        call_inner(sidecar, transport, path, body),
    )
    .await
    .unwrap_or_else(|_| panic!("{transport:?}: no complete answer within 5 s"))
}

async fn call_inner(sidecar: &Sidecar, transport: Transport, path: &str, body: &[u8]) -> Got {
    match transport {
        Transport::Lean | Transport::HyperH1 => {
            let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
            let extra = if transport == Transport::HyperH1 {
                "te: trailers\r\n"
            } else {
                ""
            };
            let head = format!(
                "POST {path} HTTP/1.1\r\nhost: t\r\n{extra}content-length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body).await.unwrap();
            read_answer(&mut stream).await
        }
        Transport::H2c => {
            let request = http::Request::post(sidecar.url(path))
                .body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
                .unwrap();
            let a = answer(h2_client().request(request).await.unwrap()).await;
            Got {
                status: a.status.as_u16(),
                headers: a
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                body: a.body.to_vec(),
            }
        }
    }
}

/// How a raw leaf treats each request it reads.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Answers, then 150 ms later writes a second complete response on the connection.
    StrayResponseLater,
    /// Answers chunked, then 150 ms later writes stray bytes.
    ChunkedThenStray,
    /// Answers 204, then 150 ms later writes `0\r\n\r\n`.
    NoContentThenChunkEnd,
    /// Answers with a `Content-Length` shorter than the body it writes.
    ShortLength,
    /// Answers, then 100 ms later sends `408` and closes, as an idle timeout does.
    IdleTimeout408,
    /// Reads a request whose body starts with `crash` fully and closes without answering.
    CloseWithoutAnswer,
    /// Answers with both `Content-Length: 3` and a chunked body.
    LengthAndChunked,
    /// Answers with `Connection: keep-alive, Content-Length`.
    ConnectionNamesLength,
    /// Answers `204` with `Content-Length: 5`.
    NoContentWithLength,
}

/// A raw HTTP/1.1 leaf: answers `ans:BODY` to each request, misbehaving as told, and counts
/// how often it saw each body.
struct RawLeaf {
    url: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawLeaf {
    async fn start(how: Misbehaviour) -> RawLeaf {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_ = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, how, seen_.clone()));
            }
        });
        RawLeaf { url, seen }
    }

    fn times_seen(&self, body: &[u8]) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|b| *b == body)
            .count()
    }
}

async fn serve_raw(mut stream: TcpStream, how: Misbehaviour, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    loop {
        // One request: head, then its Content-Length body.
        let (head_len, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = request.parse(&buf) {
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                break (n, length);
            }
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        while buf.len() < head_len + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let body = buf[head_len..head_len + length].to_vec();
        buf.drain(..head_len + length);
        seen.lock().unwrap().push(body.clone());
        let mut answer = b"ans:".to_vec();
        answer.extend_from_slice(&body);
        let plain = |extra: &str| {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\n{extra}content-length: {}\r\n\r\n",
                answer.len()
            )
            .into_bytes();
            out.extend_from_slice(&answer);
            out
        };
        let (now, after): (Vec<u8>, Option<(&[u8], u64)>) = match how {
            Misbehaviour::StrayResponseLater => (
                plain(""),
                Some((b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray", 150)),
            ),
            Misbehaviour::ChunkedThenStray => {
                let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                out.extend_from_slice(format!("{:x}\r\n", answer.len()).as_bytes());
                out.extend_from_slice(&answer);
                out.extend_from_slice(b"\r\n0\r\n\r\n");
                (out, Some((b"stray bytes", 150)))
            }
            Misbehaviour::NoContentThenChunkEnd => (
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                Some((b"0\r\n\r\n", 150)),
            ),
            Misbehaviour::ShortLength => {
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n".to_vec();
                out.extend_from_slice(&answer);
                (out, None)
            }
            Misbehaviour::IdleTimeout408 => (
                plain(""),
                Some((
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    100,
                )),
            ),
            Misbehaviour::CloseWithoutAnswer if body.starts_with(b"crash") => return,
            Misbehaviour::CloseWithoutAnswer => (plain(""), None),
            Misbehaviour::LengthAndChunked => {
                let (a, b) = answer.split_at(answer.len() / 2);
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for part in [a, b] {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                (out, None)
            }
            Misbehaviour::ConnectionNamesLength => {
                (plain("connection: keep-alive, Content-Length\r\n"), None)
            }
            Misbehaviour::NoContentWithLength => (
                b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n".to_vec(),
                None,
            ),
        };
        if stream.write_all(&now).await.is_err() {
            return;
        }
        if let Some((bytes, ms)) = after {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if stream.write_all(bytes).await.is_err() {
                return;
            }
            if matches!(how, Misbehaviour::IdleTimeout408) {
                return;
            }
        }
    }
}

async fn sidecar_for(url: &str, tweak: impl FnOnce(&mut Config)) -> Sidecar {
    let mut config = config_with(&[("leaf", vec![url.to_owned()], vec![])]);
    tweak(&mut config);
    Sidecar::start(config).await
}

/// Checks that each transport really took the path it names.
async fn assert_paths(sidecar: &Sidecar, transport: Transport) {
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    let handoffs = metric(&m, r#"trimmer_hyper_handoffs_total{reason="framing"}"#).unwrap_or(0.0);
    match transport {
        Transport::Lean => assert_eq!(handoffs, 0.0, "the lean path was not taken"),
        Transport::HyperH1 => assert!(handoffs > 0.0, "hyper's path was not taken"),
        Transport::H2c => {}
    }
}

/// Several clients, one after the other, each long enough after the last for a stray to
/// have arrived: every one gets the answer to its own request, and the leaf sees each
/// request exactly once.
async fn no_answer_to_the_wrong_client(
    how: Misbehaviour,
    expected: impl Fn(&[u8]) -> (u16, Vec<u8>),
) {
    for transport in ALL {
        let leaf = RawLeaf::start(how).await;
        let sidecar = sidecar_for(&leaf.url, |_| {}).await;
        for i in 0..4 {
            let body = format!("{transport:?}-request-{i}").into_bytes();
            let got = call(&sidecar, transport, "/echo", &body).await;
            let (status, answer) = expected(&body);
            assert_eq!(
                (got.status, String::from_utf8_lossy(&got.body)),
                (status, String::from_utf8_lossy(&answer)),
                "{how:?} over {transport:?}, request {i}"
            );
            assert_eq!(
                leaf.times_seen(&body),
                1,
                "{how:?} over {transport:?}: sent once"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_paths(&sidecar, transport).await;
        sidecar.stop().await;
    }
}

fn own_answer(body: &[u8]) -> (u16, Vec<u8>) {
    (200, [b"ans:", body].concat())
}

#[tokio::test]
async fn a_late_second_response_never_reaches_the_next_client() {
    no_answer_to_the_wrong_client(Misbehaviour::StrayResponseLater, own_answer).await;
}

#[tokio::test]
async fn stray_bytes_after_a_chunked_answer_never_reach_the_next_client() {
    no_answer_to_the_wrong_client(Misbehaviour::ChunkedThenStray, own_answer).await;
}

#[tokio::test]
async fn bytes_after_a_204_never_reach_the_next_client() {
    no_answer_to_the_wrong_client(Misbehaviour::NoContentThenChunkEnd, |_| (204, Vec::new())).await;
}

#[tokio::test]
async fn bytes_past_a_short_content_length_never_reach_the_next_client() {
    // The leaf's own answer is cut at its length (its word); the rest is not the next answer.
    no_answer_to_the_wrong_client(Misbehaviour::ShortLength, |_| (200, b"ans".to_vec())).await;
}

#[tokio::test]
async fn a_408_on_an_idle_connection_never_reaches_the_next_client() {
    no_answer_to_the_wrong_client(Misbehaviour::IdleTimeout408, own_answer).await;
}

#[tokio::test]
async fn a_leaf_that_closes_without_answering_gets_the_request_once() {
    for transport in ALL {
        let leaf = RawLeaf::start(Misbehaviour::CloseWithoutAnswer).await;
        let sidecar = sidecar_for(&leaf.url, |c| c.clusters[0].max_idle_per_endpoint = 10).await;
        // Ten pooled connections to the leaf.
        let warm: Vec<_> = (0..10)
            .map(|i| {
                let sidecar = &sidecar;
                async move {
                    let body = format!("warm-{i}").into_bytes();
                    let got = call(sidecar, transport, "/echo", &body).await;
                    assert_eq!(got.body, [b"ans:".as_slice(), &body].concat());
                }
            })
            .collect();
        futures_join_all(warm).await;
        let got = call(&sidecar, transport, "/echo", b"crash-1").await;
        assert_eq!(got.status, 502, "{transport:?}");
        assert_eq!(
            got.headers.get("x-trimmer-error").map(String::as_str),
            Some("upstream_failed"),
            "{transport:?}"
        );
        assert_eq!(
            leaf.times_seen(b"crash-1"),
            1,
            "{transport:?}: never replayed"
        );
        assert_paths(&sidecar, transport).await;
        sidecar.stop().await;
    }
}

/// Runs futures concurrently on this task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    all = false;
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[tokio::test]
async fn a_chunked_answer_that_also_claims_a_length_arrives_whole() {
    for transport in ALL {
        let leaf = RawLeaf::start(Misbehaviour::LengthAndChunked).await;
        let sidecar = sidecar_for(&leaf.url, |_| {}).await;
        let body = b"a-body-longer-than-three-bytes";
        let got = call(&sidecar, transport, "/echo", body).await;
        assert_eq!((got.status, got.body), own_answer(body), "{transport:?}");
        assert_paths(&sidecar, transport).await;
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn framing_headers_survive_connection_and_204_loses_its_length() {
    for transport in ALL {
        let leaf = RawLeaf::start(Misbehaviour::ConnectionNamesLength).await;
        let sidecar = sidecar_for(&leaf.url, |_| {}).await;
        for i in 0..2 {
            let body = format!("named-{i}").into_bytes();
            // read_answer fails on an answer without framing.
            let got = call(&sidecar, transport, "/echo", &body).await;
            assert_eq!((got.status, got.body), own_answer(&body), "{transport:?}");
        }
        sidecar.stop().await;

        let leaf = RawLeaf::start(Misbehaviour::NoContentWithLength).await;
        let sidecar = sidecar_for(&leaf.url, |_| {}).await;
        let got = call(&sidecar, transport, "/echo", b"x").await;
        assert_eq!(got.status, 204, "{transport:?}");
        assert_eq!(got.headers.get("content-length"), None, "{transport:?}");
        // The next request on the pool still works.
        let got = call(&sidecar, transport, "/echo", b"y").await;
        assert_eq!(got.status, 204, "{transport:?}");
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn expect_is_not_forwarded_after_it_was_answered() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start(config_for(&leaf)).await;
    let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
        )
        .await
        .unwrap();
    // The sidecar answers the expectation itself, then reads the body.
    let mut interim = Vec::new();
    while !interim.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        interim.extend_from_slice(&chunk[..n]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(b"ok").await.unwrap();
    let mut buf = Vec::new();
    let (status, _) = read_head(&mut stream, &mut buf).await;
    assert_eq!(status, 200);
    let seen = leaf.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].headers.get("expect").is_none(),
        "{:?}",
        seen[0].headers
    );
    assert_eq!(&seen[0].body[..], b"ok");
    sidecar.stop().await;
}

#[tokio::test]
async fn targets_hyper_refuses_get_the_same_answer_on_both_paths() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start(config_for(&leaf)).await;
    for target in [
        "/v2/models/m/infer#frag",
        "/v2/models/\u{e9}t\u{e9}/infer",
        "/a\"b",
        "/a<b>",
        "/a^b",
    ] {
        let mut statuses = Vec::new();
        for extra in ["", "te: trailers\r\n"] {
            let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
            let request =
                format!("POST {target} HTTP/1.1\r\nhost: t\r\n{extra}content-length: 2\r\n\r\nok");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&chunk[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            let text = String::from_utf8_lossy(&out).to_string();
            statuses.push(text.split(' ').nth(1).unwrap_or("none").to_owned());
        }
        assert_eq!(
            statuses[0], statuses[1],
            "{target:?}: lean and hyper paths differ"
        );
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed() {
    let leaf = Leaf::start("leaf").await;
    let sidecar = Sidecar::start({
        let mut c = config_for(&leaf);
        c.body_read_timeout_ms = 300;
        c
    })
    .await;
    for transport in [Transport::Lean, Transport::HyperH1] {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        let head = match transport {
            Transport::Lean => {
                "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 10000000\r\n\r\nsome"
            }
            _ => {
                "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n4\r\nsome\r\n"
            }
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let (status, headers) =
            tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream, &mut buf))
                .await
                .unwrap_or_else(|_| panic!("{transport:?}: no answer to a stalled body"));
        assert_eq!(status, 408, "{transport:?}");
        assert_eq!(
            headers.get("x-trimmer-error").map(String::as_str),
            Some("body_read_timeout")
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        // The connection is closed after the answer.
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{transport:?}: the connection stays open");
    }
    // h2c: a body stream that never ends.
    let (mut tx, body) = streamed(1);
    tx.send_data(Bytes::from_static(b"some")).await.unwrap();
    let request = http::Request::post(sidecar.url("/echo"))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .expect("h2c: no answer to a stalled body")
        .unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(response.headers()["x-trimmer-error"], "body_read_timeout");
    drop(tx);
    assert_eq!(leaf.count(), 0, "nothing reached the leaf");
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_rejected_requests_total{reason="body_read_timeout"}"#
        ),
        Some(3.0)
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    for transport in [Transport::Lean, Transport::HyperH1] {
        // A leaf that answers with an endless body and notes when its writes start failing.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (failed_tx, failed) = tokio::sync::oneshot::channel::<Instant>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = stream.read(&mut chunk).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
                .await;
            let block = vec![b'x'; 65536];
            while stream.write_all(&block).await.is_ok() {}
            let _ = failed_tx.send(Instant::now());
        });
        let sidecar = sidecar_for(&url, |c| c.client_write_timeout_ms = 300).await;
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        let extra = if transport == Transport::HyperH1 {
            "te: trailers\r\n"
        } else {
            ""
        };
        let head = format!("POST /echo HTTP/1.1\r\nhost: t\r\n{extra}content-length: 2\r\n\r\nhi");
        stream.write_all(head.as_bytes()).await.unwrap();
        // The client reads nothing from here on.
        let sent = Instant::now();
        let failed_at = tokio::time::timeout(Duration::from_secs(10), failed)
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: the stalled client was never dropped"))
            .unwrap();
        assert!(failed_at.duration_since(sent) < Duration::from_secs(8));
        drop(stream);
        sidecar.stop().await;
    }
}

#[tokio::test]
async fn ipv4_mapped_loopback_peers_may_change_things() {
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.listen = "127.0.0.1:0".parse().unwrap();
    // A dual-stack admin listener: IPv4 callers arrive as ::ffff:127.0.0.1.
    config.admin.listen = "[::]:0".parse().unwrap();
    let server = feature_trimmer::server::Server::bind(config).await.unwrap();
    let admin = server.admin_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let url = format!("http://127.0.0.1:{admin}/trimming/disable");
    let mut status = 0;
    for _ in 0..100 {
        if let Ok(Ok(response)) = tokio::time::timeout(
            Duration::from_secs(1),
            h1_client().request(
                http::Request::post(&url)
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap(),
            ),
        )
        .await
        {
            status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "a local caller through a dual-stack listener");
    let _ = stop.send(());
    task.await.unwrap();
}

/// Peak resident memory of a process, from `/proc/PID/status` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Writes a configuration file and starts `trimmer serve` with it.
fn spawn_with(dir: &TempDir, toml: &str, leaf: &str, bundles: &std::path::Path) -> Spawned {
    let config = dir.path("trimmer.toml");
    std::fs::write(&config, toml).unwrap();
    spawn_trimmer(
        &[
            "--config",
            config.to_str().unwrap(),
            "--upstream",
            leaf,
            "--bundles",
            bundles.to_str().unwrap(),
        ],
        &[],
    )
}

async fn post_text(url: &str) -> (u16, String) {
    let a = send(&h1_client(), "POST", url, "").await;
    (
        a.status.as_u16(),
        String::from_utf8_lossy(&a.body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_are_not_regular_files_are_reported_and_never_hang_a_reload() {
    let work = TempDir::new("nonregular");
    let bundles = TempDir::new("nonregular-bundles");
    std::fs::write(
        bundles.path("home.json"),
        bundle_json("home", 1, &[("ranker", "1", &["a"])]),
    )
    .unwrap();
    let fifo = bundles.path("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    // A ConfigMap-style symlink swapped to a FIFO, a device, a directory, and a /proc file
    // that claims size 0 and reads on forever.
    std::os::unix::fs::symlink(&fifo, bundles.path("swapped.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", bundles.path("zero.json")).unwrap();
    std::fs::create_dir(bundles.path("dir.json")).unwrap();
    std::os::unix::fs::symlink("/proc/self/pagemap", bundles.path("pagemap.json")).unwrap();
    let leaf = Leaf::start("leaf").await;
    let trimmer = spawn_with(
        &work,
        "shutdown_grace_ms = 2000\n[bundles]\nmax_file_bytes = 1048576\ndebounce_ms = 20\n",
        &leaf.url(),
        &bundles.0,
    );
    let admin = format!("http://{}", trimmer.admin);
    eventually("the first scan", || async {
        send(&h1_client(), "GET", &format!("{admin}/readyz"), "")
            .await
            .status
            == 200
    })
    .await;
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        post_text(&format!("{admin}/reload")),
    )
    .await
    .expect("a reload finishes");
    assert_eq!(status, 200, "{body}");
    let status_page: serde_json::Value =
        serde_json::from_str(&get_text(&format!("{admin}/status")).await).unwrap();
    let bundle = |name: &str| {
        status_page["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from /status: {status_page}"))
            .clone()
    };
    for (name, why) in [
        ("fifo", "FIFO"),
        ("swapped", "FIFO"),
        ("zero", "device"),
        ("dir", "directory"),
        ("pagemap", "max_file_bytes"),
    ] {
        let b = bundle(name);
        assert_eq!(b["stale"], true, "{name}: {b}");
        let error = b["last_error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{name}: {error}");
    }
    assert_eq!(bundle("home")["generation"], 1);
    let m = get_text(&format!("{admin}/metrics")).await;
    for name in ["fifo", "swapped", "zero", "dir", "pagemap"] {
        let series = format!(r#"trimmer_bundle_loads_total{{bundle="{name}",result="error"}}"#);
        assert!(metric(&m, &series).unwrap_or(0.0) >= 1.0, "{series}");
    }
    // Reading /proc/self/pagemap stopped at the cap.
    let peak = peak_rss(trimmer.child.id());
    assert!(peak < 100 << 20, "peak RSS {peak} bytes");
    // Edits are still picked up.
    std::fs::write(
        bundles.path("home.json"),
        bundle_json("home", 2, &[("ranker", "1", &["a", "b"])]),
    )
    .unwrap();
    eventually("the edit to be loaded", || async {
        let page: serde_json::Value =
            serde_json::from_str(&get_text(&format!("{admin}/status")).await).unwrap();
        page["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "home" && b["generation"] == 2)
    })
    .await;
    // SIGTERM ends the process within the grace period.
    let mut child = trimmer.child;
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM did not finish within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sidecar in front of a recording leaf, with bundle `home` (generation 1: `ranker@1`
/// keeps `a`) in its bundle directory.
async fn ranker_sidecar(tweak: impl FnOnce(&mut Config)) -> (TempDir, Leaf, Sidecar) {
    let dir = TempDir::new("ranker");
    std::fs::write(
        dir.path("home.json"),
        bundle_json("home", 1, &[("ranker", "1", &["a"])]),
    )
    .unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    tweak(&mut config);
    (dir, leaf, Sidecar::start(config).await)
}

#[tokio::test]
async fn an_oversized_bundle_is_refused_and_its_last_known_good_kept() {
    let (dir, leaf, sidecar) = ranker_sidecar(|c| {
        c.bundles.max_file_bytes = 64 * 1024;
        c.bundles.debounce_ms = 10;
    })
    .await;
    let features: Vec<String> = (0..20_000).map(|i| format!("feature_{i}")).collect();
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let big = bundle_json("home", 2, &[("ranker", "1", &refs)]);
    assert!(big.len() > 64 * 1024);
    std::fs::write(dir.path("home.json"), big).unwrap();
    let (status, body) = post_text(&sidecar.admin_url("/reload")).await;
    assert_eq!(status, 200, "{body}");
    let page = common::status(&sidecar).await;
    let home = &page["bundles"][0];
    assert_eq!(home["stale"], true, "{home}");
    assert_eq!(home["generation"], 1, "{home}");
    assert!(home["last_error"]
        .as_str()
        .unwrap()
        .contains("max_file_bytes"));
    // Still trimmed with generation 1.
    let a = send(
        &h1_client(),
        "POST",
        &sidecar.url("/v1/models/ranker/versions/1:predict"),
        r#"{"instances": [{"a": 1, "feature_7": 2}]}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(&leaf.seen()[0].body[..], br#"{"instances": [{"a": 1}]}"#);
    sidecar.stop().await;
}

#[tokio::test]
async fn lz4_bodies_pass_untouched_unless_accepted() {
    let (_dir, leaf, sidecar) = ranker_sidecar(|_| {}).await;
    let encoded =
        feature_trimmer::compression::encode(br#"{"instances": [{"a": 1, "b": 2}]}"#).unwrap();
    let request = http::Request::post(sidecar.url("/v1/models/ranker/versions/1:predict"))
        .header("content-encoding", "lz4")
        .body(http_body_util::Full::new(Bytes::from(encoded.clone())))
        .unwrap();
    let a = answer(h1_client().request(request).await.unwrap()).await;
    assert_eq!(a.status, 200);
    let seen = &leaf.seen()[0];
    assert_eq!(seen.body, encoded, "forwarded as sent");
    assert_eq!(seen.headers["content-encoding"], "lz4");
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="ranker",outcome="unsupported_encoding"}"#
        ),
        Some(1.0)
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_bombs_get_413_with_bounded_memory() {
    let work = TempDir::new("bomb");
    let bundles = TempDir::new("bomb-bundles");
    let leaf = Leaf::start("leaf").await;
    let max_body = 8u64 << 20;
    let trimmer = spawn_with(
        &work,
        &format!("max_body_bytes = {max_body}\naccept_lz4 = true\n"),
        &leaf.url(),
        &bundles.0,
    );
    let proxy = format!("http://{}", trimmer.proxy);
    // A small ordinary request first, so the baseline includes the serving machinery.
    let a = send(&h1_client(), "POST", &format!("{proxy}/echo"), "warm").await;
    assert_eq!(a.status, 200);
    let before = peak_rss(trimmer.child.id());
    // ~1 MB of lz4 that would decode to 256 MiB, eight at once.
    let bomb = Bytes::from(feature_trimmer::compression::encode(&vec![0u8; 256 << 20]).unwrap());
    assert!(bomb.len() < 2 << 20);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, bomb) = (format!("{proxy}/v1/models/m:predict"), bomb.clone());
        tasks.push(tokio::spawn(async move {
            let request = http::Request::post(url)
                .header("content-encoding", "lz4")
                .body(http_body_util::Full::new(bomb))
                .unwrap();
            answer(h1_client().request(request).await.unwrap()).await
        }));
    }
    // Ordinary requests are still answered meanwhile.
    let a = send(&h1_client(), "POST", &format!("{proxy}/echo"), "ordinary").await;
    assert_eq!((a.status.as_u16(), &a.body[..]), (200, &b"ordinary"[..]));
    for task in tasks {
        let a = task.await.unwrap();
        assert_eq!(a.status, 413);
        assert_eq!(a.headers["x-trimmer-error"], "body_too_large");
    }
    // Each bomb may cost its compressed body, its output (capped at max_body_bytes) and a
    // copy while the output grows: well under 3 x max_body_bytes each.
    let growth = peak_rss(trimmer.child.id()).saturating_sub(before);
    assert!(
        growth < 8 * (3 * max_body + (2 << 20)),
        "peak RSS grew by {growth} bytes"
    );
    assert_eq!(leaf.count(), 2, "no bomb reached the leaf");
}
