//! Answers the sidecar makes itself, on any transport: one type for every error
//! ([`SyntheticError`]: status, `x-trimmer-error` kind, JSON body) and the body type of every
//! response the proxy and admin listeners write.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::upstream::h1::BoxError;
use crate::upstream::UpstreamError;

/// Body type of every response the sidecar writes.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

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
    /// An answer of `status` and `kind` saying `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

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
        let mut response = json_response(self.status, error_json(&self.message).into_bytes());
        response
            .headers_mut()
            .insert(TRIMMER_ERROR, HeaderValue::from_static(self.kind));
        response
    }

    /// As a gRPC status: HTTP 200, trailers-only (`grpc-status`, `grpc-message` percent-encoded,
    /// and `x-trimmer-error`). Too large → `RESOURCE_EXHAUSTED`, a timeout →
    /// `DEADLINE_EXCEEDED`, a client that failed while sending → `CANCELLED`, everything else
    /// (no endpoint, a failed or HTTP/1.1-only upstream) → `UNAVAILABLE`.
    pub fn grpc_response(&self) -> Response<ProxyBody> {
        let code: u16 = match self.kind {
            "body_too_large" => 8,
            "upstream_timeout" | "body_read_timeout" => 4,
            "body_read_error" => 1,
            _ => 14,
        };
        let mut message = String::with_capacity(self.message.len());
        for b in self.message.bytes() {
            match b {
                b' '..=b'~' if b != b'%' => message.push(char::from(b)),
                _ => message.push_str(&format!("%{b:02X}")),
            }
        }
        let mut response = Response::new(full(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", message);
        }
        headers.insert(TRIMMER_ERROR, HeaderValue::from_static(self.kind));
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
