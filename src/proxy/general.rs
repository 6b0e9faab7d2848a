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

use super::answer::{ProxyBody, SyntheticError};
use super::{trim_request, TrimHeaders};
use crate::classify::classify;
use crate::compression;
use crate::config::Compression;
use crate::headers::{strip_hop_by_hop, INFERENCE_HEADER_LENGTH};
use crate::state::Shared;

/// Handles one downstream request; never fails (errors are responses).
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(forward(&shared, request)
        .await
        .unwrap_or_else(|response| response))
}

/// read (within the limit) → decode → classify and route → trim → encode → send.
async fn forward(
    shared: &Shared,
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
    let target = classify(parts.uri.path());
    let cluster = shared
        .upstreams
        .route(target.as_ref().map(|t| t.model.as_ref()));
    if let Some(target) = target
        .as_ref()
        .filter(|t| t.verb.is_some() && parts.method == http::Method::POST)
    {
        let headers = TrimHeaders {
            encoded: content_encoding(&parts.headers).is_some(),
            binary_json_len: parts
                .headers
                .get(&INFERENCE_HEADER_LENGTH)
                .map(HeaderValue::as_bytes),
        };
        let trimmed = trim_request(shared, target, headers, &body);
        if let Some(trimmed) = trimmed.body {
            body = Bytes::from(trimmed);
        }
        if let Some(json_len) = trimmed.json_len {
            parts
                .headers
                .insert(INFERENCE_HEADER_LENGTH, HeaderValue::from(json_len));
        }
    }
    if cluster.compression == Compression::Lz4
        && !body.is_empty()
        && content_encoding(&parts.headers).is_none()
    {
        match compression::encode(&body) {
            Ok(encoded) => {
                body = Bytes::from(encoded);
                parts
                    .headers
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("lz4"));
            }
            // Encoding into memory cannot fail in practice; sending the plain body is correct.
            Err(e) => tracing::warn!(error = %e, "lz4 encoding failed; sending the body unencoded"),
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    // hyper answered `Expect: 100-continue` when the body was read; the leaf gets it whole.
    parts.headers.remove(header::EXPECT);
    let expects_body = matches!(
        parts.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    if framed || expects_body || !body.is_empty() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    match cluster.send(&parts, body).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            // A chunked answer that also claims a length is framed by its chunks (RFC 9112
            // §6.3); the claim would cut the body short on the client's side.
            // A 204 or 304 has no body, whatever length it claims: a client must not wait
            // for one.
            if parts.headers.contains_key(header::TRANSFER_ENCODING)
                || matches!(parts.status.as_u16(), 204 | 304)
            {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            strip_hop_by_hop(&mut parts.headers);
            // The downstream connection decides its own version (an HTTP/1.0 leaf must not
            // downgrade an HTTP/1.1 client).
            parts.version = http::Version::default();
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(e) => {
            tracing::warn!(error = %e, path = parts.uri.path(), "upstream request failed");
            Err(SyntheticError::upstream(&e).response())
        }
    }
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

