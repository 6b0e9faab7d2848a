//! gRPC trimming on the h2c listener, end to end on loopback:
//! - real peers: Triton's gRPC client (`tritonclient.grpc`) → sidecar → MLServer 1.7.1's gRPC
//!   side, whose strict model fails on any undeclared or misaligned input;
//! - TF Serving `Predict`, `Classify` and `Regress`: no TF Serving server can be installed
//!   here, so a recording grpcio leaf stands in for it (`tests/peers/grpc_peers.py`, stubs from
//!   a `.proto` written for the tests from PROTOCOLS.md's field numbers);
//! - the sidecar's own gRPC statuses and streaming, with hyper's h2 client against a small
//!   Rust gRPC leaf of the test's own (it echoes each DATA frame as it arrives, so a test can
//!   tell a stream passed message by message from one buffered whole).
//!
//! `.ci/run` installs the Python peers.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use feature_trimmer::config::{Config, UpstreamProtocol};
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

const BUNDLE: &str = r#"{"format": "trimmer.bundle/v1", "bundle": "grpc", "generation": 1,
  "labels": {"tfs_m": {"stable": "1"}},
  "models": [{"model": "strict", "version": "1", "features": ["x", "z"]},
             {"model": "tfs_m", "version": "1", "features": ["x", "z"]}]}"#;

/// A config whose clusters are all h2c unless named `h1*`, with the test bundle loaded.
fn grpc_config(clusters: &[(&str, Vec<String>, Vec<&str>)], dir: &TempDir) -> Config {
    std::fs::write(dir.path("grpc.json"), BUNDLE).unwrap();
    let mut config = config_with(clusters);
    for cluster in &mut config.clusters {
        if !cluster.name.starts_with("h1") {
            cluster.protocol = UpstreamProtocol::H2c;
        }
    }
    config.bundles.dir = Some(dir.0.clone());
    config
}

/// Runs `tests/peers/grpc_peers.py MODE A B` and parses its report.
async fn peers(mode: &str, a: String, b: String) -> Value {
    let printed = python_peer("grpc_peers.py", vec![mode.to_owned(), a, b]).await;
    serde_json::from_slice(&printed).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_through_the_sidecar_to_mlserver() {
    let mlserver = MlServer::start("mlserver-grpc", "strict").await;
    let dir = TempDir::new("grpc-mlserver");
    let config = grpc_config(
        &[(
            "mlserver",
            vec![format!("http://{}", mlserver.grpc)],
            vec![],
        )],
        &dir,
    );
    let sidecar = Sidecar::start(config).await;
    let report = peers("kserve", sidecar.addr.to_string(), mlserver.grpc.clone()).await;

    // The strict model refuses the root's union of inputs...
    assert_eq!(report["direct_full"]["code"], "StatusCode.INVALID_ARGUMENT");
    assert!(report["direct_full"]["details"]
        .as_str()
        .unwrap()
        .contains("unexpected inference input"));
    // ...and through the sidecar answers exactly as to a direct call with only its inputs:
    // dropped inputs sat at the start, the middle and the end, each with its own raw entry.
    let allowed = &report["direct_allowed"];
    assert_eq!(allowed["x"], serde_json::json!([[1.5], [2.5], [3.5]]));
    assert_eq!(&report["via_sidecar"], allowed);
    assert_eq!(&report["via_sidecar_gzip"], allowed);
    // A miss reaches the leaf untouched: all five inputs, in order, with their values.
    assert_eq!(
        report["miss"]["order"],
        serde_json::json!(["d0", "x", "d1", "z", "d2"])
    );
    assert_eq!(report["miss"]["d1"].as_array().unwrap().len(), 11);
    // A stream of three requests: each trimmed on its own, each answered.
    let stream = report["stream"].as_array().unwrap();
    assert_eq!(stream.len(), 3, "{stream:?}");
    for (n, answer) in stream.iter().enumerate() {
        assert_eq!(answer["outputs"], serde_json::json!(["x", "z"]));
        assert_eq!(answer["x_len"], 3 + n);
    }

    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    let series = |s: &str| metric(&metrics, s);
    // 2 unary + 3 stream messages trimmed, 3 inputs removed from each.
    assert_eq!(
        series(r#"trimmer_requests_total{model="strict",outcome="trimmed"}"#),
        Some(5.0)
    );
    assert_eq!(
        series(r#"trimmer_features_removed_total{model="strict"}"#),
        Some(15.0)
    );
    assert_eq!(
        series(r#"trimmer_requests_total{model="_unknown",outcome="unknown_model"}"#),
        Some(1.0)
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_signatures_come_from_the_model_metadata_rpc_of_a_grpc_leaf() {
    // No bundle: the strict model's inputs come from MLServer's gRPC `ModelMetadata`, asked
    // on the first miss (the cluster is its gRPC port only).
    let mlserver = MlServer::start("mlserver-grpc", "strict").await;
    let dir = TempDir::new("grpc-discover");
    let mut config = config_with(&[(
        "mlserver",
        vec![format!("http://{}", mlserver.grpc)],
        vec![],
    )]);
    let cluster = &mut config.clusters[0];
    cluster.protocol = UpstreamProtocol::H2c;
    cluster.discover_signatures = true;
    cluster.signature_wait_ms = 5_000;
    config.bundles.dir = Some(dir.0.clone());
    let sidecar = Sidecar::start(config).await;
    let report = peers("kserve", sidecar.addr.to_string(), mlserver.grpc.clone()).await;

    // Trimmed from the first request on, to what the leaf declares; the same answers as a
    // direct call with only those inputs.
    let allowed = &report["direct_allowed"];
    assert_eq!(&report["via_sidecar"], allowed);
    assert_eq!(&report["via_sidecar_gzip"], allowed);
    assert_eq!(report["stream"].as_array().unwrap().len(), 3);
    // `lenient` declares no inputs: nothing to trim by, untouched.
    assert_eq!(
        report["miss"]["order"],
        serde_json::json!(["d0", "x", "d1", "z", "d2"])
    );
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    let fetched = metric(
        &metrics,
        r#"trimmer_signature_fetches_total{result="ok",upstream="mlserver"}"#,
    );
    assert!(fetched.is_some_and(|n| n >= 1.0), "{metrics}");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_serving_predict_classify_regress_through_a_recording_stand_in() {
    let leaf_port = dead_addr().await.port();
    let dir = TempDir::new("grpc-tfs");
    let config = grpc_config(
        &[
            (
                "default",
                vec![format!("http://{}", dead_addr().await)],
                vec![],
            ),
            (
                "tfs",
                vec![format!("http://127.0.0.1:{leaf_port}")],
                vec!["tfs_m", "unbundled"],
            ),
            (
                "h1",
                vec![format!("http://{}", dead_addr().await)],
                vec!["h1_*"],
            ),
        ],
        &dir,
    );
    let sidecar = Sidecar::start(config).await;
    let report = peers("tfs", sidecar.addr.to_string(), leaf_port.to_string()).await;

    for case in ["predict", "predict_label", "predict_gzip"] {
        let r = &report[case];
        assert_eq!(r["leaf_keys"], serde_json::json!(["x", "z"]), "{case}: {r}");
        assert_eq!(
            r["answer_keys"],
            serde_json::json!(["x", "z"]),
            "{case}: {r}"
        );
        assert_eq!(r["kept_equal"], true, "{case}: {r}");
        assert_eq!(r["spec_equal"], true, "{case}: {r}");
        assert!(
            r["leaf_bytes"].as_u64() < r["sent_bytes"].as_u64(),
            "{case}: {r}"
        );
    }
    assert_eq!(report["miss_identical"], true);
    let classify = &report["classify"];
    assert_eq!(
        classify["leaf_features"],
        serde_json::json!([["x", "z"], ["x", "z"], ["x", "z"]])
    );
    assert_eq!(classify["answer_labels"], classify["leaf_features"]);
    assert_eq!(classify["x_values"], serde_json::json!([2.0, 3.0, 4.0]));
    let regress = &report["regress"];
    assert_eq!(regress["leaf_context"], serde_json::json!(["z"]));
    assert_eq!(regress["leaf_features"], serde_json::json!([["x"], ["x"]]));
    assert_eq!(regress["answer_values"], serde_json::json!([1.0, 2.0]));
    // Routed by model to an HTTP/1.1-only cluster: a clear UNAVAILABLE from the sidecar.
    assert_eq!(report["h1_cluster"]["code"], "UNAVAILABLE");
    assert!(report["h1_cluster"]["details"]
        .as_str()
        .unwrap()
        .contains("upstream `h1` speaks HTTP/1.1 only"));
    // Routing by model: everything but the h1 case reached the tfs cluster's leaf.
    assert_eq!(report["leaf_calls"], 6);

    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="tfs_m",outcome="trimmed"}"#
        ),
        Some(5.0)
    );
    sidecar.stop().await;
}

// ---------------------------------------------------------------- sidecar statuses, streams

/// A gRPC leaf of the test's own: records what each call carried (in DATA frames, as they
/// came) and echoes every frame back at once, then ends with `grpc-status: 0` and a custom
/// trailer. Calls to `/hang` never answer.
struct EchoLeaf {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl EchoLeaf {
    async fn start() -> EchoLeaf {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_ = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen_.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| echo(seen.clone(), request));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EchoLeaf { addr, seen }
    }
}

async fn echo(
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
    request: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    let (mut tx, rx) = streamed(4);
    let mut body = request.into_body();
    tokio::spawn(async move {
        let mut all = BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                all.extend_from_slice(&data);
                let _ = tx.send_data(data).await;
            }
        }
        seen.lock().unwrap().push((path, all.freeze()));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-leaf-trailer", "kept".parse().unwrap());
        let _ = tx.send_trailers(trailers).await;
    });
    let mut response = Response::new(rx.boxed());
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    Ok(response)
}

/// An h2 connection to the sidecar for hand-made gRPC calls.
async fn h2_connection(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<GrpcBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

type GrpcBody = BoxBody<Bytes, Infallible>;

fn grpc_request(path: &str, body: GrpcBody, extra: &[(&str, &str)]) -> Request<GrpcBody> {
    let mut request = Request::post(format!("http://sidecar{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.body(body).unwrap()
}

/// One gRPC message: the 5-byte prefix and the payload.
fn framed(payload: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

/// A `ModelInferRequest` for `strict` version 1 with inputs `names`, each with a raw entry.
fn infer_request(names: &[&str]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, payload: &[u8]) {
        out.push(number << 3 | 2);
        out.push(payload.len() as u8);
        out.extend_from_slice(payload);
    }
    let mut msg = Vec::new();
    field(&mut msg, 1, b"strict");
    field(&mut msg, 2, b"1");
    for name in names {
        let mut input = Vec::new();
        field(&mut input, 1, name.as_bytes());
        field(&mut msg, 5, &input);
    }
    for name in names {
        field(&mut msg, 7, format!("raw-{name}").as_bytes());
    }
    msg
}

/// The sidecar's own status: HTTP 200, trailers-only, as a gRPC client reads it.
fn status_of(response: &Response<Incoming>) -> (String, String, String) {
    let h = response.headers();
    let get = |n: &str| {
        h.get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(response.status(), 200);
    assert_eq!(get("content-type"), "application/grpc");
    (
        get("grpc-status"),
        get("grpc-message"),
        get("x-trimmer-error"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_trimmed_message_by_message_as_it_arrives() {
    let leaf = EchoLeaf::start().await;
    let dir = TempDir::new("grpc-stream");
    let config = grpc_config(
        &[("leaf", vec![format!("http://{}", leaf.addr)], vec![])],
        &dir,
    );
    let sidecar = Sidecar::start(config).await;
    let mut sender = h2_connection(sidecar.addr).await;

    for path in [
        "/inference.GRPCInferenceService/ModelStreamInfer",
        // Any other method passes untouched, streaming as well.
        "/test.Chat/Talk",
    ] {
        let (mut tx, rx) = streamed(4);
        let response = sender.send_request(grpc_request(path, rx.boxed(), &[]));
        let message = infer_request(&["a", "x", "b", "z"]);
        tx.send_data(framed(&message)).await.unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let trimmed = path.contains("ModelStreamInfer");
        let expected = |m: &[u8]| -> Bytes {
            match trimmed {
                true => framed(&infer_request(&["x", "z"])),
                false => framed(m),
            }
        };
        // Each message comes back (echoed by the leaf) before the next is sent: the stream
        // is not buffered whole, neither way.
        for round in 0..3 {
            let mut got = BytesMut::new();
            while got.len() < expected(&message).len() {
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{path}: no echo of message {round}"))
                    .unwrap()
                    .unwrap();
                got.extend_from_slice(&frame.into_data().unwrap());
            }
            assert_eq!(got.freeze(), expected(&message), "{path}: message {round}");
            if round < 2 {
                // Split across two DATA frames: reassembled before it is trimmed.
                let next = framed(&message);
                tx.send_data(next.slice(..7)).await.unwrap();
                tx.send_data(next.slice(7..)).await.unwrap();
            }
        }
        drop(tx);
        // The leaf's trailers come through unchanged.
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            if let Ok(t) = frame.unwrap().into_trailers() {
                trailers = Some(t);
            }
        }
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-leaf-trailer"], "kept");
    }
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="strict",outcome="trimmed"}"#
        ),
        Some(3.0)
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_own_failures_are_grpc_statuses() {
    let leaf = EchoLeaf::start().await;
    let dir = TempDir::new("grpc-status");
    let mut config = grpc_config(
        &[
            ("leaf", vec![format!("http://{}", leaf.addr)], vec![]),
            (
                "down",
                vec![format!("http://{}", dead_addr().await)],
                vec!["down_*"],
            ),
        ],
        &dir,
    );
    config.max_body_bytes = 4096;
    config.clusters[0].request_timeout_ms = 60_000;
    let sidecar = Sidecar::start(config).await;
    let mut sender = h2_connection(sidecar.addr).await;
    let call = |path: &str, body: Bytes, extra: &[(&str, &str)]| {
        grpc_request(path, Full::new(body).boxed(), extra)
    };

    // No endpoint accepts: UNAVAILABLE, naming the upstream.
    let mut msg = Vec::new();
    msg.extend_from_slice(&[0x0a, 6]);
    msg.extend_from_slice(b"down_m");
    let response = sender
        .send_request(call(
            "/inference.GRPCInferenceService/ModelInfer",
            framed(&msg),
            &[],
        ))
        .await
        .unwrap();
    let (code, message, kind) = status_of(&response);
    assert_eq!((code.as_str(), kind.as_str()), ("14", "no_endpoint"));
    assert!(message.contains("upstream `down`"), "{message}");

    // The client's grpc-timeout is shorter than the cluster's 60 s: DEADLINE_EXCEEDED.
    let response = sender
        .send_request(call("/hang", framed(b"hello"), &[("grpc-timeout", "300m")]))
        .await
        .unwrap();
    let (code, message, kind) = status_of(&response);
    assert_eq!((code.as_str(), kind.as_str()), ("4", "upstream_timeout"));
    assert!(message.contains("300 ms"), "{message}");

    // A message larger than max_body_bytes: RESOURCE_EXHAUSTED, nothing forwarded.
    let big = framed(&vec![0u8; 5000]);
    let before = leaf.seen.lock().unwrap().len();
    let response = sender
        .send_request(call("/inference.GRPCInferenceService/ModelInfer", big, &[]))
        .await
        .unwrap();
    let (code, _, kind) = status_of(&response);
    assert_eq!((code.as_str(), kind.as_str()), ("8", "body_too_large"));
    assert_eq!(leaf.seen.lock().unwrap().len(), before);

    // A message that does not parse goes on untouched.
    let garbage = framed(&[0xff, 0xff, 0xff]);
    let response = sender
        .send_request(call(
            "/inference.GRPCInferenceService/ModelInfer",
            garbage.clone(),
            &[],
        ))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(body.to_bytes(), garbage);
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="_unknown",outcome="parse_error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_rejected_requests_total{reason="body_too_large"}"#
        ),
        Some(1.0)
    );
    sidecar.stop().await;
}
