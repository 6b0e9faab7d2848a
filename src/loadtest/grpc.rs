//! gRPC for the end-to-end harness: `ModelInfer` decoded with `prost` as a real server decodes
//! it (declared here from the field numbers in PROTOCOLS.md; the leaf's check stays independent
//! of the trim engines), the leaf's answer with its `grpc-status` trailer, and a fixed-rate
//! open-loop h2c load generator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde::Serialize;
use tokio::net::TcpStream;

use super::LeafBody;
use crate::workload::Workload;

/// `InferParameter`: one of its values.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ParameterChoice {
    /// `bool_param = 1`.
    #[prost(bool, tag = "1")]
    Bool(bool),
    /// `int64_param = 2`.
    #[prost(int64, tag = "2")]
    Int64(i64),
    /// `string_param = 3`.
    #[prost(string, tag = "3")]
    String(String),
    /// `double_param = 4`.
    #[prost(double, tag = "4")]
    Double(f64),
    /// `uint64_param = 5`.
    #[prost(uint64, tag = "5")]
    Uint64(u64),
}

/// `InferParameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferParameter {
    /// The value.
    #[prost(oneof = "ParameterChoice", tags = "1, 2, 3, 4, 5")]
    pub choice: Option<ParameterChoice>,
}

/// `InferTensorContents`: typed tensor data (tritonclient sends raw contents instead).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    /// `bool_contents = 1`.
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    /// `int_contents = 2`.
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    /// `int64_contents = 3`.
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    /// `uint_contents = 4`.
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    /// `uint64_contents = 5`.
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    /// `fp32_contents = 6`.
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    /// `fp64_contents = 7`.
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
    /// `bytes_contents = 8`.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub bytes_contents: Vec<Vec<u8>>,
}

/// `ModelInferRequest.InferInputTensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferInputTensor {
    /// The input's name: the feature the allowlist names.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `FP32`, `INT64`, `BYTES`, …
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Dimensions.
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    /// Per-input parameters (e.g. shared memory).
    #[prost(btree_map = "string, message", tag = "4")]
    pub parameters: BTreeMap<String, InferParameter>,
    /// Typed data, when not in `raw_input_contents`.
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

/// `ModelInferRequest.InferRequestedOutputTensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferRequestedOutputTensor {
    /// The output's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Per-output parameters.
    #[prost(btree_map = "string, message", tag = "2")]
    pub parameters: BTreeMap<String, InferParameter>,
}

/// `ModelInferRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    /// The model.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Its version; empty for the server's choice.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// Request id, echoed in the answer.
    #[prost(string, tag = "3")]
    pub id: String,
    /// Request parameters.
    #[prost(btree_map = "string, message", tag = "4")]
    pub parameters: BTreeMap<String, InferParameter>,
    /// The inputs (features).
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<InferInputTensor>,
    /// The outputs asked for.
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<InferRequestedOutputTensor>,
    /// Tensor data, in order, of the inputs without typed `contents`. Copied out of the message
    /// as a protobuf runtime does (a `Vec`, not a view of the received buffer).
    #[prost(bytes = "vec", repeated, tag = "7")]
    pub raw_input_contents: Vec<Vec<u8>>,
}

/// `ModelInferResponse.InferOutputTensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InferOutputTensor {
    /// The output's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its datatype.
    #[prost(string, tag = "2")]
    pub datatype: String,
    /// Dimensions.
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

/// `ModelInferResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    /// The model that answered.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Its version.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// The request's id.
    #[prost(string, tag = "3")]
    pub id: String,
    /// The outputs.
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<InferOutputTensor>,
    /// Their data, in order.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub raw_output_contents: Vec<Vec<u8>>,
}

/// A unary request body (one uncompressed length-prefixed message) decoded; `None` if it is
/// anything else.
pub fn decode_unary(body: &[u8]) -> Option<ModelInferRequest> {
    let (prefix, message) = body.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    if prefix[0] != 0 || len as usize != message.len() {
        return None;
    }
    ModelInferRequest::decode(message).ok()
}

/// `request` with only the allowed inputs and, with each, its raw entry (raw entries belong in
/// order to the inputs without typed contents): what a correct trimmer delivers.
pub fn filtered(request: &ModelInferRequest, allowed: &[String]) -> ModelInferRequest {
    let mut out = request.clone();
    out.inputs.clear();
    out.raw_input_contents.clear();
    let mut raw = request.raw_input_contents.iter();
    for input in &request.inputs {
        let entry = if input.contents.is_none() {
            raw.next()
        } else {
            None
        };
        if allowed.contains(&input.name) {
            out.inputs.push(input.clone());
            out.raw_input_contents.extend(entry.cloned());
        }
    }
    out
}

/// `message` behind gRPC's 5-byte prefix (uncompressed).
pub fn framed(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The leaf's answer to `request` (`None`: it did not decode): a small `ModelInferResponse`
/// with `grpc-status: 0`, or `INVALID_ARGUMENT`.
pub fn answer(request: Option<&ModelInferRequest>) -> Response<LeafBody> {
    let mut trailers = HeaderMap::new();
    let data = match request {
        Some(request) => {
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let response = ModelInferResponse {
                model_name: request.model_name.clone(),
                model_version: request.model_version.clone(),
                id: request.id.clone(),
                outputs: vec![InferOutputTensor {
                    name: "score".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 1],
                }],
                raw_output_contents: vec![0.5f32.to_le_bytes().to_vec()],
            };
            Some(framed(&response.encode_to_vec()))
        }
        None => {
            trailers.insert("grpc-status", HeaderValue::from_static("3"));
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("not a ModelInferRequest"),
            );
            None
        }
    };
    let mut response = Response::new(LeafBody {
        data,
        trailers: Some(trailers),
    });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// What the load generator does: `rate` requests per second for `duration`, spread over
/// `connections` h2c connections, whatever the target answers (open loop).
pub struct LoadPlan {
    /// Requests per second, scheduled evenly.
    pub rate: f64,
    /// How long requests are sent.
    pub duration: Duration,
    /// h2c connections, used in turn.
    pub connections: usize,
    /// How long answers are awaited once the last request is sent; later ones are `unfinished`.
    pub grace: Duration,
}

/// What the load generator saw. Latency runs from each request's scheduled send time, so a
/// target that makes requests queue is charged for the wait (no coordinated omission).
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// Requests scheduled.
    pub sent: u64,
    /// Answers with HTTP 200 and `grpc-status: 0`.
    pub ok: u64,
    /// Any other answer or a transport failure.
    pub errors: u64,
    /// Not answered within the grace period after the last send.
    pub unfinished: u64,
    /// `ok` over the time from the first scheduled send to the last answer.
    pub rps: f64,
    /// Latency percentiles of the `ok` answers, milliseconds.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
    /// A few distinct error messages, to tell a refused connection from a `grpc-status`.
    pub error_samples: Vec<String>,
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// Sends `w`'s message (framed) to `target`'s `w.path` by `plan`.
pub async fn load(
    target: SocketAddr,
    w: &Workload,
    plan: &LoadPlan,
) -> std::io::Result<LoadReport> {
    let body = framed(&w.body);
    let uri: http::Uri = format!("http://{target}{}", w.path)
        .parse()
        .map_err(std::io::Error::other)?;
    let mut senders = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections.max(1) {
        senders.push(connect(target).await?);
    }
    let count = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let mut sender = senders[i as usize % senders.len()].clone();
        let request = Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(body.clone()))
            .map_err(std::io::Error::other)?;
        tasks.push(tokio::spawn(async move {
            let outcome = call(&mut sender, request).await;
            (outcome, Instant::now(), scheduled)
        }));
    }
    let give_up = tokio::time::Instant::now() + plan.grace;
    let mut latencies = Vec::with_capacity(tasks.len());
    let (mut errors, mut unfinished) = (0, 0);
    let mut error_samples: Vec<String> = Vec::new();
    let mut last = start;
    for task in tasks {
        match tokio::time::timeout_at(give_up, task).await {
            Ok(Ok((Ok(()), done, scheduled))) => {
                latencies.push(done.saturating_duration_since(scheduled));
                last = last.max(done);
            }
            Ok(Ok((Err(e), _, _))) => {
                errors += 1;
                if error_samples.len() < 5 && !error_samples.contains(&e) {
                    error_samples.push(e);
                }
            }
            Ok(Err(e)) => {
                errors += 1;
                error_samples.push(e.to_string());
            }
            // Dropping the handle leaves the task running until the process ends: harmless.
            Err(_) => unfinished += 1,
        }
    }
    latencies.sort_unstable();
    let ms = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let ok = latencies.len() as u64;
    Ok(LoadReport {
        sent: count,
        ok,
        errors,
        unfinished,
        rps: ok as f64
            / last
                .saturating_duration_since(start)
                .as_secs_f64()
                .max(1e-9),
        p50: ms(0.50),
        p90: ms(0.90),
        p99: ms(0.99),
        max: ms(1.0),
        error_samples,
    })
}

/// One h2c connection with windows that let a ~1.6 MB message go in one flight, as gRPC
/// clients tune them (grpc-go and grpc-c++ grow theirs by BDP probing).
async fn connect(target: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .max_send_buf_size(4 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One unary call: `Ok` for HTTP 200 and `grpc-status: 0` (in the trailers, or in the headers
/// of a trailers-only answer) after the whole answer arrived.
async fn call(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<(), String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (head, body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(format!("HTTP {}", head.status));
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("answer body: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| head.headers.get("grpc-status"));
    match status.map(HeaderValue::as_bytes) {
        Some(b"0") => Ok(()),
        Some(code) => Err(format!(
            "grpc-status {} {:?}",
            String::from_utf8_lossy(code),
            trailers
                .get("grpc-message")
                .or_else(|| head.headers.get("grpc-message"))
        )),
        None => Err("no grpc-status".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_filter_keeps_each_raw_entry_with_its_input() {
        let w = crate::workload::kserve_grpc();
        let full = decode_unary(&framed(&w.body)).unwrap();
        let trimmed = filtered(&full, &w.allowed);
        assert_eq!(trimmed.inputs.len(), 100);
        assert_eq!(trimmed.raw_input_contents.len(), 100);
        // The engine's output decodes to the same message (the leaf's verdict `trimmed`).
        let allowed = |k: &str| w.allowed.iter().any(|a| a == k);
        let engine = w.trim(allowed).unwrap().body;
        assert_eq!(decode_unary(&framed(&engine)).unwrap(), trimmed);
        let second = full
            .inputs
            .iter()
            .position(|i| i.name == w.allowed[1])
            .unwrap();
        assert_eq!(
            trimmed.raw_input_contents[1],
            full.raw_input_contents[second]
        );
        assert!(decode_unary(&w.body).is_none(), "unframed");
        assert!(decode_unary(&framed(&w.body)[..100]).is_none(), "truncated");
    }
}
