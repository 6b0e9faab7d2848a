//! The proxy path: read the body within its limit, classify, pick the cluster, forward, and
//! stream the answer back. Every failure becomes an explicit JSON error response.
// The steps return the client's error response itself as their `Err`: it is large, but only
// built on the rare failure path, and boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::bundle::snapshot::Lookup;
use crate::classify::{classify, Protocol, Target, Verb};
use crate::compression;
use crate::config::{Compression, Mode};
use crate::metrics::{ModelMetrics, Outcome};
use crate::state::Shared;
use crate::trim::tf_serving::TfBody;
use crate::trim::{kserve, tf_serving, Untrimmable};
use crate::upstream::UpstreamError;

/// Triton's binary extension: length of the JSON part of the body.
pub const INFERENCE_HEADER_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// What the trim step decided for one score request.
struct Decision<'a> {
    /// Label for `trimmer_requests_total`.
    outcome: Outcome,
    /// The model's metric handles (`_unknown` for models no bundle names).
    model: ModelHandle<'a>,
    /// The body to forward instead of the original, when features were removed.
    body: Option<Vec<u8>>,
    /// New `Inference-Header-Content-Length` for a trimmed Triton binary body.
    json_len: Option<usize>,
    /// Features removed (or, in mode observe, that would have been).
    removed: u64,
}

/// Metric handles that outlive the snapshot guard: the model's (shared) or `_unknown`'s.
enum ModelHandle<'a> {
    Known(Arc<ModelMetrics>),
    Unknown(&'a ModelMetrics),
}

impl std::ops::Deref for ModelHandle<'_> {
    type Target = ModelMetrics;
    fn deref(&self) -> &ModelMetrics {
        match self {
            ModelHandle::Known(m) => m,
            ModelHandle::Unknown(m) => m,
        }
    }
}

/// What `decide` needs of the request's headers.
pub struct TrimHeaders<'h> {
    /// Whether the body carries a `Content-Encoding` other than `identity`.
    pub encoded: bool,
    /// `Inference-Header-Content-Length` (Triton's binary extension), if present.
    pub binary_json_len: Option<&'h [u8]>,
}

/// What trimming did to one score request: the body to forward instead of the original and
/// the new `Inference-Header-Content-Length`, when features were removed.
pub struct Trimmed {
    /// The trimmed body (`None`: forward the original).
    pub body: Option<Vec<u8>>,
    /// New `Inference-Header-Content-Length` of a trimmed Triton binary body.
    pub json_len: Option<usize>,
}

/// Trims a score request (`target` has a verb and the method is POST) and records it in the
/// model's metrics.
pub fn trim_request(
    shared: &Shared,
    target: &Target<'_>,
    headers: TrimHeaders<'_>,
    body: &[u8],
) -> Trimmed {
    let decision = decide(shared, target, headers, body);
    let forwarded = decision.body.as_ref().map_or(body.len(), Vec::len);
    decision
        .model
        .record(decision.outcome, body.len(), forwarded, decision.removed);
    Trimmed {
        body: decision.body,
        json_len: decision.json_len,
    }
}

/// Looks the request up in the current snapshot (one load) and runs the protocol's engine.
fn decide<'a>(
    shared: &'a Shared,
    target: &Target<'_>,
    headers: TrimHeaders<'_>,
    body: &[u8],
) -> Decision<'a> {
    let state = shared.trim_state.load();
    let untouched = |outcome, model| Decision {
        outcome,
        model,
        body: None,
        json_len: None,
        removed: 0,
    };
    let (index, entry) = match state.allowlists.lookup(&target.model, &target.version) {
        Lookup::UnknownModel => {
            let outcome = if shared.kill_switch(&state) {
                Outcome::Disabled
            } else {
                Outcome::UnknownModel
            };
            return untouched(outcome, ModelHandle::Unknown(&shared.unknown_model));
        }
        Lookup::UnknownVersion { model } => (model, None),
        Lookup::Passthrough { model } => (model, Some(None)),
        Lookup::Found { model, entry } => (model, Some(Some(entry))),
    };
    let model = match state.models.get(index) {
        Some(handles) => ModelHandle::Known(handles.clone()),
        None => ModelHandle::Unknown(&shared.unknown_model),
    };
    if shared.kill_switch(&state) {
        return untouched(Outcome::Disabled, model);
    }
    let entry = match entry {
        None => return untouched(Outcome::UnknownVersion, model),
        Some(None) => return untouched(Outcome::NotTrimmable, model),
        Some(Some(entry)) => entry,
    };
    if entry.mode == Mode::Off {
        return untouched(Outcome::Disabled, model);
    }
    if headers.encoded {
        return untouched(Outcome::UnsupportedEncoding, model);
    }
    let snapshot = &state.allowlists;
    let allowed = snapshot.allowed(&entry.allowlist);
    let started = std::time::Instant::now();
    let result = match (target.protocol, target.verb) {
        (Protocol::TfServing, Some(Verb::Predict)) => {
            tf_serving::trim(body, TfBody::Predict, allowed)
        }
        (Protocol::TfServing, _) => tf_serving::trim(body, TfBody::Examples, allowed),
        (Protocol::KServeV2, _) => match headers.binary_json_len {
            None => kserve::trim_json(body, allowed),
            Some(value) => match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(json_len) => kserve::trim_binary(body, json_len, allowed),
                None => Err(Untrimmable::Parse {
                    offset: 0,
                    reason: "a numeric Inference-Header-Content-Length",
                }),
            },
        },
    };
    shared
        .metrics
        .trim_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(trimmed) if entry.mode == Mode::Observe => Decision {
            outcome: Outcome::Observed,
            model,
            body: None,
            json_len: None,
            removed: trimmed.removed,
        },
        Ok(trimmed) => Decision {
            outcome: Outcome::Trimmed,
            model,
            removed: trimmed.removed,
            json_len: trimmed.json_len.filter(|_| trimmed.removed > 0),
            body: (trimmed.removed > 0).then_some(trimmed.body),
        },
        Err(Untrimmable::NotTrimmable(why)) => {
            tracing::debug!(model = %target.model, why, "not trimmable; forwarded untouched");
            untouched(Outcome::NotTrimmable, model)
        }
        Err(Untrimmable::Parse { offset, reason }) => {
            tracing::debug!(model = %target.model, offset, expected = reason, "body not understood; forwarded untouched");
            untouched(Outcome::ParseError, model)
        }
    }
}

/// Body type of every response the sidecar writes.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

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

/// An answer the sidecar makes itself instead of the leaf's, on any transport: the status, a
/// kind that the `x-trimmer-error` header carries (so a client or a log pipeline can tell the
/// sidecar's 502 from a leaf's), and a message for the JSON body `{"error": message}`.
#[derive(Debug)]
pub struct SyntheticError {
    /// Status for the client.
    pub status: StatusCode,
    /// `x-trimmer-error` value; also the `reason` of `trimmer_rejected_requests_total` for
    /// requests refused before forwarding.
    pub kind: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// The header naming the kind of a [`SyntheticError`].
pub const TRIMMER_ERROR: HeaderName = HeaderName::from_static("x-trimmer-error");

impl SyntheticError {
    /// The body is larger than `max_body_bytes` (declared, discovered, or decoded).
    pub fn too_large(max: u64) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "body_too_large",
            message: format!("request body exceeds max_body_bytes ({max} bytes)"),
        }
    }

    /// The client failed while sending the body.
    pub fn body_read(cause: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "body_read_error",
            message: format!("could not read the request body: {cause}"),
        }
    }

    /// The client took longer than `body_read_timeout_ms` to send the body.
    pub fn body_timeout(timeout_ms: u64) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "body_read_timeout",
            message: format!(
                "the request body did not arrive within body_read_timeout_ms ({timeout_ms} ms)"
            ),
        }
    }

    /// The cluster could not answer.
    pub fn upstream(error: &UpstreamError) -> Self {
        let kind = match error {
            UpstreamError::Unreachable { .. } => "no_endpoint",
            UpstreamError::Timeout { .. } => "upstream_timeout",
            UpstreamError::Transport { .. } => "upstream_failed",
        };
        Self {
            status: error.status(),
            kind,
            message: error.to_string(),
        }
    }

    /// As a response for hyper (either HTTP version).
    pub fn response(&self) -> Response<ProxyBody> {
        let mut response = error_response(self.status, &self.message);
        response
            .headers_mut()
            .insert(TRIMMER_ERROR, HeaderValue::from_static(self.kind));
        response
    }

    /// As HTTP/1.1 bytes on the wire, for the lean path.
    pub fn to_http1(&self) -> Vec<u8> {
        let body = error_json(&self.message);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{TRIMMER_ERROR}: {}\r\ncontent-length: {}\r\n\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            self.kind,
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// A response the sidecar writes itself: `{"error": message}` with the given status.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, error_json(message).into_bytes())
}

/// The body of every error the sidecar answers itself: `{"error": message}`.
pub fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A complete body as a `ProxyBody`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), besides those `Connection` names.
/// The lean path (`h1`) checks the same list.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is in `HOP_BY_HOP` (any case).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Removes hop-by-hop headers, including those the `Connection` header names. `TE: trailers`
/// and `Trailer` are end-to-end and kept: hyper's HTTP/1.1 side only writes trailers that a
/// `Trailer` header declared.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // `Content-Length` is framing, not hop-by-hop, even when `Connection` names it.
    for name in named.into_iter().filter(|n| n != header::CONTENT_LENGTH) {
        headers.remove(name);
    }
    let keep_te = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["x-request-id"], "abc");
    }
}
