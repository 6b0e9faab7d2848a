//! gRPC on the h2c listener, one more transport under the lifecycle. The five score methods
//! (TF Serving `Predict`, `Classify`, `Regress`; KServe `ModelInfer`, `ModelStreamInfer`) are
//! read message by message as DATA frames arrive (each message reassembled within
//! `max_body_bytes`), routed by the model their first message names, and each message is
//! trimmed by its own model and version and re-framed with its new length. Streams are never
//! buffered whole. Every other method passes untouched, unary or streaming. Answers stream
//! back unchanged with their trailers; the sidecar's own failures are gRPC statuses.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

use super::answer::{ProxyBody, SyntheticError};
use super::general::{client_lines, leaf_answer};
use super::{await_signature, count_unread, trim_message};
use crate::classify::{Protocol, Target, Verb, VersionSpec};
use crate::headers::strip_hop_by_hop;
use crate::metrics::Outcome;
use crate::state::Shared;
use crate::trim::grpc::{infer_target, model_spec, SpecVersion};
use crate::trim::Untrimmable;
use crate::upstream::h1::BoxError;

/// Whether a request is gRPC (`content-type: application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The score methods: the message they carry and the protocol family whose allowlists apply.
fn score_method(path: &str) -> Option<Verb> {
    match path {
        "/tensorflow.serving.PredictionService/Predict" => Some(Verb::Predict),
        "/tensorflow.serving.PredictionService/Classify" => Some(Verb::Classify),
        "/tensorflow.serving.PredictionService/Regress" => Some(Verb::Regress),
        "/inference.GRPCInferenceService/ModelInfer"
        | "/inference.GRPCInferenceService/ModelStreamInfer" => Some(Verb::Infer),
        _ => None,
    }
}

/// The model and version a score message names (`Err`: its routing fields do not parse).
fn target_of(verb: Verb, msg: &[u8]) -> Result<Target<'_>, Untrimmable> {
    if verb == Verb::Infer {
        let t = infer_target(msg)?;
        let version = match t.model_version {
            "" => VersionSpec::Unversioned,
            v => VersionSpec::Version(v.into()),
        };
        return Ok(Target {
            protocol: Protocol::KServeV2,
            model: t.model_name.into(),
            version,
            verb: Some(verb),
        });
    }
    let spec = model_spec(msg)?.unwrap_or_default();
    let version = match spec.version {
        None => VersionSpec::Unversioned,
        Some(SpecVersion::Number(n)) => VersionSpec::Version(n.to_string().into()),
        Some(SpecVersion::Label(l)) => VersionSpec::Label(l.into()),
    };
    Ok(Target {
        protocol: Protocol::TfServing,
        model: spec.name.into(),
        version,
        verb: Some(verb),
    })
}

/// One message as it came: its compressed flag and payload (without the 5-byte prefix).
struct Message {
    compressed: bool,
    payload: Bytes,
}

/// Reassembles length-prefixed messages from a request body's DATA frames.
struct Messages {
    body: Incoming,
    buf: BytesMut,
    /// Largest message accepted (`max_body_bytes`).
    max: u64,
    ended: bool,
}

impl Messages {
    fn new(body: Incoming, max: u64) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            max,
            ended: false,
        }
    }

    /// The next complete message; `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<Message>, SyntheticError> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if u64::from(len) > self.max {
                    return Err(SyntheticError::too_large(self.max));
                }
                let whole = 5 + len as usize;
                if self.buf.len() >= whole {
                    let compressed = self.buf[0] != 0;
                    self.buf.advance(5);
                    let payload = self.buf.split_to(len as usize).freeze();
                    return Ok(Some(Message {
                        compressed,
                        payload,
                    }));
                }
                // Room for the whole message at once, not grown frame by frame.
                self.buf.reserve(whole - self.buf.len());
            }
            if self.ended {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(SyntheticError::body_read(
                        "the stream ended inside a gRPC message",
                    )),
                };
            }
            match self.body.frame().await {
                // Request trailers carry nothing a leaf reads; gRPC clients send none.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(SyntheticError::body_read(&e.to_string())),
                None => self.ended = true,
            }
        }
    }
}

/// The request's `grpc-encoding`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    /// Any other (deflate, snappy, zstd, …): forwarded untouched.
    Other,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Self {
        match headers.get("grpc-encoding").map(HeaderValue::as_bytes) {
            None => Encoding::Identity,
            Some(v) if v.eq_ignore_ascii_case(b"identity") => Encoding::Identity,
            Some(v) if v.eq_ignore_ascii_case(b"gzip") => Encoding::Gzip,
            Some(_) => Encoding::Other,
        }
    }
}

/// A score message's payload as the engine reads it: as it came, or gzip decoded within
/// `max_body_bytes`. `Err` carries the outcome of a message that cannot be read (an encoding
/// the sidecar does not decode, a corrupt or oversized gzip message): it goes on untouched.
fn readable(message: &Message, encoding: Encoding, max: u64) -> Result<Bytes, Outcome> {
    if !message.compressed {
        return Ok(message.payload.clone());
    }
    match encoding {
        // A compressed flag without a `grpc-encoding` is a protocol error the leaf reports.
        Encoding::Identity => Err(Outcome::ParseError),
        Encoding::Other => Err(Outcome::UnsupportedEncoding),
        Encoding::Gzip => {
            let mut plain = Vec::new();
            let read = flate2::read::GzDecoder::new(&message.payload[..])
                .take(max.saturating_add(1))
                .read_to_end(&mut plain);
            match read {
                Ok(_) if plain.len() as u64 <= max => Ok(plain.into()),
                Ok(_) => Err(Outcome::ParseError),
                Err(e) => {
                    tracing::debug!(error = %e, "gzip message not decoded; forwarded untouched");
                    Err(Outcome::ParseError)
                }
            }
        }
    }
}

/// Trims one score message through the lifecycle (its own model and version, `read` from
/// its readable payload) and frames it again, gzip encoded again when it came so. A message
/// the sidecar cannot read (`Err`: the outcome and the bytes it counts) goes on as it came,
/// counted.
fn trimmed_frame(
    shared: &Shared,
    message: &Message,
    read: Result<(&Bytes, Target<'_>), (Outcome, usize)>,
) -> Framed {
    let untouched = || frame(message.compressed, message.payload.clone());
    let (plain, target) = match read {
        Ok(read) => read,
        Err((outcome, len)) => {
            count_unread(shared, outcome, len);
            return untouched();
        }
    };
    let Some(trimmed) = trim_message(shared, &target, plain) else {
        return untouched();
    };
    if !message.compressed {
        return frame(false, trimmed.into());
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(trimmed.len() / 2),
        flate2::Compression::fast(),
    );
    match encoder.write_all(&trimmed).and_then(|()| encoder.finish()) {
        Ok(encoded) => frame(true, encoded.into()),
        // Encoding into memory cannot fail in practice; the original is correct.
        Err(_) => untouched(),
    }
}

/// Trims the next score message of a call: made readable, its routing fields read once,
/// given up to `signature_wait_ms` for its model's live signature where the cluster discovers
/// them, trimmed and framed. Also the model it names, for routing.
async fn trim_next(
    shared: &Shared,
    verb: Verb,
    encoding: Encoding,
    message: &Message,
) -> (Framed, Option<String>) {
    let plain = readable(message, encoding, shared.config.max_body_bytes);
    let read = match &plain {
        Ok(plain) => match target_of(verb, plain) {
            Ok(target) => Ok((plain, target)),
            Err(_) => Err((Outcome::ParseError, plain.len())),
        },
        Err(outcome) => Err((*outcome, message.payload.len())),
    };
    let mut model = None;
    if let Ok((_, target)) = &read {
        let cluster = shared.upstreams.route(Some(target.model.as_ref()));
        await_signature(shared, cluster, Some(target)).await;
        model = Some(target.model.clone().into_owned());
    }
    (trimmed_frame(shared, message, read), model)
}

/// A message as its 5-byte prefix and its payload, sent as two chunks (the payload is never
/// copied to sit behind its prefix).
type Framed = [Bytes; 2];

fn frame(compressed: bool, payload: Bytes) -> Framed {
    let mut prefix = [u8::from(compressed), 0, 0, 0, 0];
    prefix[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    [Bytes::copy_from_slice(&prefix), payload]
}

/// `grpc-timeout` (`1..=8` digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`) as a duration.
fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request body towards the leaf, made afresh for each attempt: the first message (read
/// before routing) and then whatever the pump task passes on. An attempt that could not
/// connect never polled it, so the next attempt's body starts from the same place.
struct Upload {
    first: VecDeque<Bytes>,
    rest: Option<Arc<Mutex<Pumped>>>,
}

/// What the pump task passes on, chunk by chunk.
type Pumped = mpsc::Receiver<Result<Bytes, BoxError>>;

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.first.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = &self.rest else {
            return Poll::Ready(None);
        };
        let mut rest = rest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rest.poll_recv(cx)
            .map(|next| next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_empty() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.rest {
            None => SizeHint::with_exact(self.first.iter().map(|c| c.len() as u64).sum()),
            Some(_) => SizeHint::default(),
        }
    }
}

/// Passes the rest of the request on as it arrives: score messages trimmed one by one, any
/// other method's bytes as they came. Ends when the client ends or the leaf stops reading.
fn pump(
    shared: Arc<Shared>,
    verb: Option<Verb>,
    encoding: Encoding,
    mut messages: Messages,
) -> Pumped {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let chunks: Vec<Result<Bytes, BoxError>> = match verb {
                Some(verb) => match messages.next().await {
                    Ok(Some(message)) => {
                        let (framed, _) = trim_next(&shared, verb, encoding, &message).await;
                        framed.into_iter().map(Ok).collect()
                    }
                    Ok(None) => break,
                    Err(e) => {
                        shared.metrics.rejected(e.kind).inc();
                        vec![Err(BoxError::from(e.message))]
                    }
                },
                None => match messages.body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => vec![Ok(data)],
                        Err(_) => continue,
                    },
                    Some(Err(e)) => vec![Err(e.into())],
                    None => break,
                },
            };
            for chunk in chunks {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    rx
}

/// Forwards one gRPC request; never fails (the sidecar's own failures are gRPC statuses).
pub async fn forward(
    shared: Arc<Shared>,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<ProxyBody> {
    match exchange(shared, parts, body).await {
        Ok(response) => response,
        Err(failure) => {
            tracing::warn!(kind = failure.kind, message = %failure.message, "gRPC request failed");
            failure.grpc_response()
        }
    }
}

/// read the first message of a score method (within `body_read_timeout_ms`) → route by its
/// model → send with the rest pumped behind it → the leaf's answer.
async fn exchange(
    shared: Arc<Shared>,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<ProxyBody>, SyntheticError> {
    strip_hop_by_hop(&mut parts.headers);
    let verb = score_method(parts.uri.path());
    let encoding = Encoding::of(&parts.headers);
    let deadline = parts.headers.get("grpc-timeout").and_then(grpc_timeout);
    let max = shared.config.max_body_bytes;
    let mut messages = Messages::new(body, max);
    let mut first = VecDeque::new();
    let mut model = None;
    if let Some(verb) = verb {
        let limit = crate::config::ms(shared.config.body_read_timeout_ms);
        let read = tokio::time::timeout(limit, messages.next())
            .await
            .unwrap_or_else(|_| {
                Err(SyntheticError::body_timeout(
                    shared.config.body_read_timeout_ms,
                ))
            });
        let message = read.inspect_err(|e| shared.metrics.rejected(e.kind).inc())?;
        if let Some(message) = message {
            let (framed, named) = trim_next(&shared, verb, encoding, &message).await;
            first = VecDeque::from(framed);
            model = named;
        }
    }
    let cluster = shared.upstreams.route(model.as_deref());
    let complete = messages.ended || messages.body.is_end_stream();
    let rest = (!complete || !messages.buf.is_empty())
        .then(|| Arc::new(Mutex::new(pump(shared.clone(), verb, encoding, messages))));
    let (lines, _) = client_lines(&parts, cluster.preserve_host);
    let upload = || {
        Upload {
            first: first.clone(),
            rest: rest.clone(),
        }
        .boxed()
    };
    let Some(answered) = cluster
        .send_h2c(
            &parts.method,
            parts.uri.path_and_query(),
            &lines,
            &upload,
            deadline,
        )
        .await
    else {
        return Err(SyntheticError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_not_h2c",
            format!(
                "upstream `{}` speaks HTTP/1.1 only; gRPC needs a cluster with protocol = \"h2c\"",
                cluster.name
            ),
        ));
    };
    let response = answered.map_err(|e| SyntheticError::upstream(&e))?;
    Ok(leaf_answer(response))
}
