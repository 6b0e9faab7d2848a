//! The general path: HTTP/1.1 and h2c served by hyper, for every request the lean path does
//! not take. Reads the body within its limit and time, decodes lz4 where accepted, hands the
//! request to the lifecycle, and turns the leaf's answer (or a [`SyntheticError`]) into a
//! response.
// The steps return the client's error response itself as their `Err`: it is large, but only
// built on the rare failure path, and boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::answer::{full, ProxyBody, SyntheticError};
use super::{await_signature, forwards_header, own_lines, prepare, route, Prepared, RequestHead};
use crate::compression;
use crate::headers::{push_header, strip_hop_by_hop, INFERENCE_HEADER_LENGTH};
use crate::state::Shared;
use crate::upstream::h1::{self, BoxError, READ_SIZE};
use crate::upstream::{Cluster, Outgoing, UpstreamError};
use crate::verify::capture::TeeBody;
use crate::verify::Shadow;

/// Handles one downstream request; never fails (errors are responses).
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if request.version() == http::Version::HTTP_2 && super::grpc::is_grpc(request.headers()) {
        let (parts, body) = request.into_parts();
        return Ok(super::grpc::forward(shared, parts, body).await);
    }
    Ok(forward(&shared, request)
        .await
        .unwrap_or_else(|response| response))
}

/// read (within the limit and time) → decode what is accepted → the lifecycle → send →
/// the answer as a response.
async fn forward(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    let (mut parts, body) = request.into_parts();
    let framed = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut body = read_body(shared, &parts.headers, body).await?;
    if shared.config.accept_lz4
        && content_encoding(&parts.headers).is_some_and(|e| e.eq_ignore_ascii_case(b"lz4"))
    {
        body = decode_lz4(shared, body).await?;
        parts.headers.remove(header::CONTENT_ENCODING);
    }
    strip_hop_by_hop(&mut parts.headers);
    let path = parts.uri.path();
    let head = RequestHead {
        post: parts.method == http::Method::POST,
        path,
        encoding: content_encoding(&parts.headers),
        binary_json_len: parts
            .headers
            .get(&INFERENCE_HEADER_LENGTH)
            .map(HeaderValue::as_bytes),
    };
    let (target, cluster) = route(shared, path);
    await_signature(shared, cluster, target.as_ref().filter(|_| head.post)).await;
    let mut prepared = prepare(shared, cluster, target.as_ref(), &head, &body);
    let ticket = prepared.verify.take();
    let expects_body = matches!(
        parts.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    let body_len = prepared.body.as_ref().map_or(body.len(), Vec::len);
    let body_len = (framed || expects_body || body_len > 0).then_some(body_len);
    let (mut lines, host_kept) = client_lines(&parts, cluster.preserve_host);
    // A verified request keeps its original body and head for the shadow.
    let original = ticket.as_ref().map(|_| {
        let mut original_lines = lines.clone();
        own_lines(
            &mut original_lines,
            &Prepared::default(),
            head.binary_json_len,
            Some(body.len()),
        );
        (original_lines, body.clone())
    });
    own_lines(&mut lines, &prepared, head.binary_json_len, body_len);
    let body = prepared.body.map_or(body, Bytes::from);
    let verification = match (ticket, original) {
        (Some(ticket), Some((original_lines, original))) => {
            let shadow = Shadow {
                target: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
                host_kept,
                original_lines,
                original,
                trimmed_lines: lines.clone(),
                trimmed: body.clone(),
            };
            Some(super::start_verification(shared, ticket, shadow))
        }
        _ => None,
    };
    let answered = match cluster
        .send_h2c(
            &parts.method,
            parts.uri.path_and_query(),
            &lines,
            &|| full(body.clone()),
            None,
        )
        .await
    {
        Some(answered) => answered.map(leaf_answer),
        None => exchange_h1(cluster, &parts, &lines, host_kept, &body).await,
    };
    match answered {
        Ok(response) => match verification {
            None => Ok(response),
            Some(verification) => {
                // The client reads the answer as always; a copy is kept for the comparison.
                let status = response.status().as_u16();
                let (parts, body) = response.into_parts();
                let body = TeeBody::new(body, status, &parts.headers, verification);
                Ok(Response::from_parts(parts, body.boxed()))
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, path, "upstream request failed");
            Err(SyntheticError::upstream(&e).response())
        }
    }
}

/// The client's end-to-end header lines for the leaf (the lifecycle's own follow), and
/// whether they name the host.
pub(super) fn client_lines(parts: &http::request::Parts, preserve_host: bool) -> (Vec<u8>, bool) {
    let mut lines = Vec::with_capacity(512);
    let mut host_kept = false;
    for (name, value) in &parts.headers {
        if forwards_header(name.as_str(), value.as_bytes(), preserve_host) {
            host_kept |= name == header::HOST;
            push_header(&mut lines, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if preserve_host && !host_kept {
        // An h2 client names the host in `:authority` only.
        if let Some(authority) = parts.uri.authority() {
            push_header(&mut lines, b"host", authority.as_str().as_bytes());
            host_kept = true;
        }
    }
    (lines, host_kept)
}

/// An h2c leaf's answer as the client's response, streamed with its trailers.
pub(super) fn leaf_answer(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    // The lean client already framed HTTP/1.1 answers (`upstream::h1`); an h2 leaf's 204 or
    // 304 has no body either, whatever length it claims.
    if matches!(parts.status.as_u16(), 204 | 304) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    // The downstream connection decides its own version.
    parts.version = http::Version::default();
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

/// Sends a request to an HTTP/1.1 cluster with the lean client (one pool per endpoint for
/// both transports) and streams the answer back as hyper frames from a task of its own, which
/// returns the connection to its pool once the body ended exactly at its framing.
async fn exchange_h1(
    cluster: &Cluster,
    parts: &http::request::Parts,
    lines: &[u8],
    host_kept: bool,
    body: &[u8],
) -> Result<Response<ProxyBody>, UpstreamError> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let outgoing = Outgoing {
        method: parts.method.as_str(),
        target,
        host_kept,
        lines,
        body,
        bodiless_answer: parts.method == http::Method::HEAD,
    };
    let mut buf = Vec::with_capacity(READ_SIZE);
    let (head, mut leaf) = cluster.exchange(&outgoing, &mut buf).await?;
    let response = h1::response_parts(&head).map_err(|e| {
        let endpoint = leaf.stream.peer_addr().map(|a| a.to_string());
        cluster.malformed(&endpoint.unwrap_or_default(), e.to_string())
    })?;
    let (mut frames, body) = h1::frame_channel(4);
    tokio::spawn(async move {
        match h1::relay_frames(&head, &mut buf, &mut leaf.stream, &mut frames).await {
            Ok(true) if head.reusable => leaf.release(),
            Ok(_) => {}
            // Nothing reads the frames: a client's everyday timeout, not the leaf's failing.
            Err(e) if h1::client_went_away(&e) => {
                tracing::debug!(error = %e, "the client left before its answer ended")
            }
            Err(e) => {
                // The connection is of no more use; the client may take a while to read.
                drop(leaf);
                tracing::warn!(error = %e, "relaying the upstream response failed");
                frames.abort(e.into()).await;
            }
        }
    });
    Ok(Response::from_parts(response, body.boxed()))
}

/// The whole request body, refused with 413 as soon as it is known to exceed the limit
/// (declared, or while reading), with 400 when the client fails to send it and with 408 when
/// it takes longer than `body_read_timeout_ms`.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Response<ProxyBody>> {
    let max = shared.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let failure = if declared.is_some_and(|len| len > max) {
        SyntheticError::too_large(max)
    } else {
        let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
        let limit = crate::config::ms(shared.config.body_read_timeout_ms);
        match tokio::time::timeout(limit, limited.collect()).await {
            Ok(Ok(collected)) => return Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                SyntheticError::too_large(max)
            }
            Ok(Err(e)) => SyntheticError::body_read(&e.to_string()),
            Err(_) => SyntheticError::body_timeout(shared.config.body_read_timeout_ms),
        }
    };
    shared.metrics.rejected(failure.kind).inc();
    Err(failure.response())
}

/// An lz4 body decoded within `max_body_bytes`: 413 past the limit, 400 for a corrupt frame.
/// Decoded on the blocking pool, so a stream of bombs does not stall the async workers.
async fn decode_lz4(shared: &Shared, body: Bytes) -> Result<Bytes, Response<ProxyBody>> {
    let limit = shared.config.max_body_bytes;
    let decoded = tokio::task::spawn_blocking(move || compression::decode(&body, limit))
        .await
        .unwrap_or_else(|e| Err(compression::DecodeError::Corrupt(e.to_string())));
    decoded.map(Bytes::from).map_err(|e| {
        let failure = match e {
            compression::DecodeError::TooLarge(_) => SyntheticError::too_large(limit),
            compression::DecodeError::Corrupt(_) => SyntheticError {
                status: StatusCode::BAD_REQUEST,
                kind: "bad_encoding",
                message: e.to_string(),
            },
        };
        shared.metrics.rejected(failure.kind).inc();
        failure.response()
    })
}

/// The request's `Content-Encoding`, unless absent or `identity`.
fn content_encoding(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.eq_ignore_ascii_case(b"identity"))
}
