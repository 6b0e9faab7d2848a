//! The lean HTTP/1.1 path for the requests that make up the traffic: a `POST` with a
//! `Content-Length` from an HTTP/1.1 client, towards an HTTP/1.1 cluster without compression.
//! Heads are parsed in place (`httparse`), the body is read once into a buffer of its declared
//! size, the request goes out in one `writev` on a pooled connection and the answer is relayed
//! as it arrives. hyper's general machinery (header maps, body channels, the pooled client's
//! tasks) cost about twice HAProxy's CPU per small request; this path does the same work with a
//! few buffers per request.
//!
//! Anything else (h2c, chunked or encoded bodies, `Expect`, upgrades, `Connection: close`,
//! other methods, heads that do not parse or are too large) ends the lean path for its
//! connection: the socket and the bytes already read go to hyper ([`Rewind`]), which serves
//! the rest of the connection as before and answers errors as before.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::answer::SyntheticError;
use super::io::{ClientStream, Rewind};
use super::{await_signature, forwards_header, own_lines, prepare, route, Prepared, RequestHead};
use crate::headers::{push_header, INFERENCE_HEADER_LENGTH};
use crate::state::Shared;
use crate::upstream::h1::{client_went_away, read_more, relay, ClientSide, MAX_HEAD, READ_SIZE};
use crate::upstream::{Cluster, Outgoing};
use crate::verify::capture::{parse_http1, Tee};
use crate::verify::Shadow;

/// Headers per head; more go to hyper.
const MAX_HEADERS: usize = 100;
/// Largest body buffer allocated before its bytes arrive.
const MAX_UPFRONT: usize = 16 * 1024 * 1024;

/// Serves requests on `stream` until the client closes it, an answer cannot be completed, or
/// shutdown begins (`None`), or until a request needs hyper: then the socket comes back with
/// the bytes already read, unconsumed.
pub async fn serve(
    shared: &Arc<Shared>,
    mut stream: ClientStream,
    stop: &mut watch::Receiver<bool>,
) -> Option<Rewind> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    // The leaf's answers pass through here, one request after the other.
    let mut answer: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let header_timeout = crate::config::ms(shared.config.header_read_timeout_ms);
    loop {
        // The head, within the timeout counted from when the connection is ready for it (as
        // hyper counts it: an idle keep-alive connection is closed when it runs out).
        let deadline = tokio::time::Instant::now() + header_timeout;
        if buf.is_empty() {
            tokio::select! {
                read = tokio::time::timeout_at(deadline, read_more(&mut stream, &mut buf)) => match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                },
                _ = stop.changed() => return None,
            }
        }
        let request = loop {
            let reason = match parse_request(shared, &buf) {
                Parsed::Lean(request) => break request,
                Parsed::Hyper(reason) => reason,
                Parsed::Partial if buf.len() > MAX_HEAD => "head",
                Parsed::Partial => {
                    match tokio::time::timeout_at(deadline, read_more(&mut stream, &mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => continue,
                        // Closed, failed or too slow: hyper would close without an answer too.
                        _ => return None,
                    }
                }
            };
            tracing::debug!(reason, "connection handed to hyper");
            shared
                .metrics
                .hyper_handoffs
                .with_label_values(&[reason])
                .inc();
            return Some(Rewind::new(buf, stream));
        };
        // The body, exactly as declared; the bytes after it are the next request's. (Room for
        // a large declared length is made as the bytes arrive, not on the client's word.)
        let mut body = Vec::with_capacity(request.content_length.min(MAX_UPFRONT));
        let have = (buf.len() - request.head_len).min(request.content_length);
        body.extend_from_slice(&buf[request.head_len..request.head_len + have]);
        buf.drain(..request.head_len + have);
        let body_deadline =
            tokio::time::Instant::now() + crate::config::ms(shared.config.body_read_timeout_ms);
        while body.len() < request.content_length {
            let missing = (request.content_length - body.len()) as u64;
            let mut rest = (&mut stream).take(missing);
            let read = rest.read_buf(&mut body);
            let failure = match tokio::time::timeout_at(body_deadline, read).await {
                Ok(Ok(n)) if n > 0 => continue,
                Ok(Ok(_)) => SyntheticError::body_read(
                    "the client closed the connection before the end of the body",
                ),
                Ok(Err(e)) => SyntheticError::body_read(&e.to_string()),
                Err(_) => SyntheticError::body_timeout(shared.config.body_read_timeout_ms),
            };
            shared.metrics.rejected(failure.kind).inc();
            let _ = stream.write_all(&failure.to_http1()).await;
            return None;
        }
        if !forward(shared, &mut stream, request, body, &mut answer).await {
            return None;
        }
        if *stop.borrow() {
            return None;
        }
    }
}

/// A request the lean path takes, with what forwarding it needs of its head.
struct LeanRequest<'s> {
    head_len: usize,
    content_length: usize,
    /// Request target as sent (origin form, query included).
    target: String,
    /// Length of the path in `target` (before any `?`).
    path_len: usize,
    /// Header lines to forward, each ending in CRLF, without `Host` (unless the cluster keeps
    /// it), `Content-Length`, `Inference-Header-Content-Length` and hop-by-hop headers.
    lines: Vec<u8>,
    /// `Inference-Header-Content-Length` as sent.
    binary_json_len: Option<Vec<u8>>,
    /// Whether `lines` holds the client's `Host` (the cluster keeps it and there was one).
    host_kept: bool,
    cluster: &'s Cluster,
}

enum Parsed<'s> {
    Lean(LeanRequest<'s>),
    Partial,
    /// For hyper, with the reason (the `reason` label of `trimmer_hyper_handoffs_total`).
    Hyper(&'static str),
}

/// Parses the head at the start of `buf` and decides whether the lean path takes it.
fn parse_request<'s>(shared: &'s Shared, buf: &[u8]) -> Parsed<'s> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper("head"),
    };
    let (Some(method), Some(version), Some(target)) =
        (request.method, request.version, request.path)
    else {
        return Parsed::Hyper("head");
    };
    if method != "POST" {
        return Parsed::Hyper("not_post");
    }
    if version != 1 {
        return Parsed::Hyper("not_http11");
    }
    // hyper refuses (400) or rewrites (drops a `#fragment`) some targets that httparse
    // accepts: those go to hyper, so both paths answer them alike.
    if !target.starts_with('/')
        || target.contains('#')
        || http::uri::PathAndQuery::try_from(target).is_err()
    {
        return Parsed::Hyper("target");
    }
    let path = &target[..target.find('?').unwrap_or(target.len())];
    let (_, cluster) = route(shared, path);
    if !cluster.lean() {
        return Parsed::Hyper("cluster");
    }
    let mut content_length = None;
    let mut binary_json_len = None;
    let mut host_kept = false;
    let mut lines = Vec::with_capacity(head_len);
    for header in request.headers.iter() {
        let name = header.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            let value = std::str::from_utf8(header.value).ok().and_then(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse::<usize>().ok())
                    .flatten()
            });
            match (content_length, value) {
                (None, Some(v)) => content_length = Some(v),
                _ => return Parsed::Hyper("framing"),
            }
        } else if is("connection") {
            let keep_alive = header
                .value
                .split(|&b| b == b',')
                .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
            if !keep_alive {
                return Parsed::Hyper("framing");
            }
        } else if is("content-encoding") {
            return Parsed::Hyper("encoding");
        } else if is("transfer-encoding")
            || is("expect")
            || is("upgrade")
            || is("te")
            || is("trailer")
        {
            return Parsed::Hyper("framing");
        } else if is(INFERENCE_HEADER_LENGTH.as_str()) {
            binary_json_len = Some(header.value.to_vec());
        } else if forwards_header(name, header.value, cluster.preserve_host) {
            host_kept |= is("host");
            push_header(&mut lines, name.as_bytes(), header.value);
        }
    }
    match content_length {
        None => Parsed::Hyper("framing"),
        Some(len) if len as u64 > shared.config.max_body_bytes => Parsed::Hyper("too_large"),
        Some(len) => Parsed::Lean(LeanRequest {
            head_len,
            content_length: len,
            target: target.to_string(),
            path_len: path.len(),
            lines,
            binary_json_len,
            host_kept,
            cluster,
        }),
    }
}

/// Runs the lifecycle for a request read whole, relays the answer; `false` when the
/// connection must close.
async fn forward(
    shared: &Arc<Shared>,
    stream: &mut ClientStream,
    mut request: LeanRequest<'_>,
    body: Vec<u8>,
    answer: &mut Vec<u8>,
) -> bool {
    let path = &request.target[..request.path_len];
    let head = RequestHead {
        post: true,
        path,
        encoding: None,
        binary_json_len: request.binary_json_len.as_deref(),
    };
    let cluster = request.cluster;
    let (target, _) = route(shared, path);
    await_signature(shared, cluster, target.as_ref()).await;
    let mut prepared = prepare(shared, cluster, target.as_ref(), &head, &body);
    // A verified request keeps its original body and head for the shadow.
    let original = prepared.verify.as_ref().map(|_| {
        let mut lines = request.lines.clone();
        own_lines(
            &mut lines,
            &Prepared::default(),
            head.binary_json_len,
            Some(body.len()),
        );
        lines
    });
    let (body, original) = match (prepared.body.take(), original) {
        (Some(trimmed), Some(lines)) => (trimmed, Some((lines, body))),
        (Some(trimmed), None) => (trimmed, None),
        (None, _) => (body, None),
    };
    own_lines(
        &mut request.lines,
        &prepared,
        head.binary_json_len,
        Some(body.len()),
    );
    let verification = match (prepared.verify.take(), original) {
        (Some(ticket), Some((original_lines, original))) => {
            let shadow = Shadow {
                target: request.target.clone(),
                host_kept: request.host_kept,
                original_lines,
                original: original.into(),
                trimmed_lines: request.lines.clone(),
                trimmed: bytes::Bytes::copy_from_slice(&body),
            };
            Some(super::start_verification(shared, ticket, shadow))
        }
        _ => None,
    };
    let outgoing = Outgoing {
        method: "POST",
        target: &request.target,
        host_kept: request.host_kept,
        lines: &request.lines,
        body: &body,
        bodiless_answer: false,
    };
    let exchanged = cluster.exchange(&outgoing, answer).await;
    drop(body);
    let (head, mut leaf) = match exchanged {
        Ok(exchange) => exchange,
        Err(e) => {
            tracing::warn!(error = %e, path, "upstream request failed");
            let answer = SyntheticError::upstream(&e).to_http1();
            return stream.write_all(&answer).await.is_ok();
        }
    };
    let relayed = match verification {
        None => relay(&head, answer, &mut leaf.stream, &mut ClientSide(stream)).await,
        Some(verification) => {
            // The client's answer is relayed as always; a copy is kept for the comparison.
            let mut tee = ClientSide(Tee::new(&mut *stream));
            let relayed = relay(&head, answer, &mut leaf.stream, &mut tee).await;
            // An answer that failed on its way is not sent: the verification counts `error`.
            if relayed.is_ok() {
                let kept = tee.0.capture.into_bytes().and_then(|b| parse_http1(&b));
                let _ = verification.send(kept);
            }
            relayed
        }
    };
    match relayed {
        Ok(clean) => {
            if clean && head.reusable {
                leaf.release();
            }
            true
        }
        // A client's everyday timeout, not the leaf's failing.
        Err(e) if client_went_away(&e) => {
            tracing::debug!(error = %e, path, "the client left before its answer ended");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, path, "relaying the upstream response failed");
            false
        }
    }
}
