//! Live signatures seen from outside: discovery and the drift check against a real MLServer
//! 1.7.1 (a model declaring 30 inputs that rejects any other and any absent one), TF Serving
//! REST metadata from a test leaf serving a real metadata document, metadata requests that
//! fail (leaf down, slow, garbage, 5xx), and a flood of unknown model names against the
//! per-cluster budget. MLServer is installed by `.ci/run`.

mod common;

use std::convert::Infallible;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use feature_trimmer::config::{ClusterConfig, Config, OnDrift};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The 30 inputs `wide` declares.
fn declared() -> Vec<String> {
    (0..30).map(|i| format!("f{i:02}")).collect()
}

/// A V2 request with the 30 declared inputs (each 1.0) and 270 the model does not know.
fn wide_request() -> String {
    let mut inputs: Vec<Value> = declared()
        .into_iter()
        .map(|n| json!({"name": n, "shape": [1], "datatype": "FP32", "data": [1.0]}))
        .collect();
    for i in 0..270 {
        inputs.push(
            json!({"name": format!("x{i:03}"), "shape": [1], "datatype": "FP32", "data": [100.0]}),
        );
    }
    json!({"id": "w-1", "inputs": inputs}).to_string()
}

/// One cluster `leaves` in front of `url`, with `adjust` applied to it.
fn config_on(url: &str, adjust: impl FnOnce(&mut ClusterConfig)) -> Config {
    let mut config = config_with(&[("leaves", vec![url.to_owned()], vec![])]);
    adjust(&mut config.clusters[0]);
    config
}

/// `(inputs the model counted, their sum)` from a `wide` answer.
fn wide_answer(answer: &Answer) -> (i64, f64) {
    let json = answer.json();
    let outputs = json["outputs"].as_array().unwrap();
    let find = |name: &str| {
        outputs
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name}: {json}"))["data"][0]
            .clone()
    };
    (
        find("inputs").as_i64().unwrap(),
        find("sum").as_f64().unwrap(),
    )
}

async fn metrics_of(sidecar: &Sidecar) -> String {
    get_text(&sidecar.admin_url("/metrics")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_signatures_discovered_and_drift_contained() {
    let mlserver = MlServer::start("mlserver-wide", "wide").await;
    let client = h1_client();
    let body = wide_request();
    let infer = "/v2/models/wide/versions/1/infer";

    // The strict leaf refuses the root's 300 inputs.
    let direct = send(
        &client,
        "POST",
        &format!("{}{infer}", mlserver.url),
        body.clone(),
    )
    .await;
    assert_eq!(direct.status, 400, "{:?}", direct.body);
    assert!(String::from_utf8_lossy(&direct.body).contains("270 unexpected"));

    // No bundle, discovery with signature_wait_ms = 0: the first request goes on untouched
    // (and fails at the strict leaf); a later one is trimmed to the 30 and answered.
    let sidecar = Sidecar::start(config_on(&mlserver.url, |c| {
        c.discover_signatures = true;
    }))
    .await;
    let first = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
    assert_eq!(first.status, 400, "{:?}", first.body);
    let mut sent = 1;
    let trimmed = loop {
        let answer = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
        sent += 1;
        if answer.status == 200 {
            break answer;
        }
        assert!(sent < 500, "never trimmed: {:?}", answer.body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("signature_wait_ms = 0: request {sent} was the first trimmed");
    assert_eq!(wide_answer(&trimmed), (30, 30.0));
    assert_eq!(trimmed.json()["id"], "w-1");
    let metrics = metrics_of(&sidecar).await;
    let m = |series: &str| metric(&metrics, series);
    assert_eq!(
        m(r#"trimmer_signature_fetches_total{result="ok",upstream="leaves"}"#),
        Some(1.0),
        "one fetch for one model version (single flight):\n{metrics}"
    );
    assert_eq!(
        m(r#"trimmer_requests_total{model="wide",outcome="trimmed"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"trimmer_live_signature_requests_total{model="wide",source="discovered"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"trimmer_features_removed_total{model="wide"}"#),
        Some(270.0)
    );
    assert_eq!(
        m(r#"trimmer_requests_total{model="_unknown",outcome="unknown_model"}"#),
        Some((sent - 1) as f64)
    );
    assert_eq!(
        m(r#"trimmer_signature_cache_entries{upstream="leaves"}"#),
        Some(1.0)
    );
    // Unversioned: the union of the ready versions (MLServer lists none: the default's).
    let unversioned = loop {
        let answer = send(
            &client,
            "POST",
            &sidecar.url("/v2/models/wide/infer"),
            body.clone(),
        )
        .await;
        if answer.status == 200 {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(wide_answer(&unversioned), (30, 30.0));
    sidecar.stop().await;

    // With signature_wait_ms > 0 the very first request is trimmed.
    let sidecar = Sidecar::start(config_on(&mlserver.url, |c| {
        c.discover_signatures = true;
        c.signature_wait_ms = 5_000;
    }))
    .await;
    let first = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(wide_answer(&first), (30, 30.0));
    sidecar.stop().await;

    // A bundle that omits one declared input (f29) and lists one the model lacks.
    let dir = TempDir::new("drift");
    let mut features: Vec<String> = declared()[..29].to_vec();
    features.push("x000".into());
    let features: Vec<&str> = features.iter().map(String::as_str).collect();
    std::fs::write(
        dir.path("wide.json"),
        bundle_json("wide", 1, &[("wide", "1", &features)]),
    )
    .unwrap();
    let missing = r#"trimmer_allowlist_drift{kind="missing",model="wide"}"#;
    // A sidecar verifying `wide` against the leaf, once its drift check has found the gap.
    let (url, bundles) = (&mlserver.url, &dir.0);
    let drift_sidecar = |on_drift| async move {
        let mut config = config_on(url, |c| {
            c.verify_signatures = true;
            c.on_drift = on_drift;
        });
        config.bundles.dir = Some(bundles.clone());
        let sidecar = Sidecar::start(config).await;
        let admin = sidecar.admin_url("/metrics");
        eventually("the drift check", || async {
            metric(&get_text(&admin).await, missing) == Some(1.0)
        })
        .await;
        sidecar
    };

    // on_drift = "live": the strict model still gets exactly its 30 inputs and answers.
    let sidecar = drift_sidecar(OnDrift::Live).await;
    let metrics = metrics_of(&sidecar).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_allowlist_drift{kind="extra",model="wide"}"#
        ),
        Some(1.0)
    );
    let status = status(&sidecar).await;
    let versions = &status["signatures"][0]["drift"]["versions"];
    assert_eq!(versions[0]["model"], "wide");
    assert_eq!(versions[0]["version"], "1");
    assert_eq!(versions[0]["missing"], json!(["f29"]));
    assert_eq!(versions[0]["extra"], json!(["x000"]));
    assert_eq!(
        versions[0]["action"],
        "trimmed by the leaf's live signature"
    );
    let answer = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(wide_answer(&answer), (30, 30.0));
    let metrics = metrics_of(&sidecar).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_live_signature_requests_total{model="wide",source="drift"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="wide",outcome="trimmed"}"#
        ),
        Some(1.0)
    );
    promtool_fires(metric(&metrics, missing).unwrap());
    sidecar.stop().await;

    // on_drift = "observe": requests for that version reach the leaf untouched.
    let sidecar = drift_sidecar(OnDrift::Observe).await;
    let answer = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("270 unexpected"),
        "the leaf saw all 300 inputs: {:?}",
        answer.body
    );
    let metrics = metrics_of(&sidecar).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="wide",outcome="observed"}"#
        ),
        Some(1.0)
    );
    sidecar.stop().await;

    // on_drift = "ignore": only reported; the bundle's list is sent (29 declared inputs and
    // one the model lacks) and the model fails.
    let sidecar = drift_sidecar(OnDrift::Ignore).await;
    let admin = sidecar.admin_url("/metrics");
    let answer = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("unexpected inference input ['x000']"),
        "{:?}",
        answer.body
    );
    // A bundle built from the leaf itself fixes it: published into the watched directory, the
    // drift clears and the bundle trims to exactly the 30.
    let built = build_bundle(&[
        "--bundle",
        "wide",
        "--signatures-from",
        &mlserver.url,
        "--model",
        "wide@1",
        "--out",
        dir.path("wide.json").to_str().unwrap(),
    ])
    .await;
    assert!(built.status.success(), "{built:?}");
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(dir.path("wide.json")).unwrap()).unwrap();
    assert_eq!(bundle["models"][0]["features"], json!(declared()));
    eventually("the drift to clear", || async {
        metric(&get_text(&admin).await, missing) == Some(0.0)
    })
    .await;
    let answer = send(&client, "POST", &sidecar.url(infer), body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(wide_answer(&answer), (30, 30.0));
    sidecar.stop().await;
}

/// Runs `trimmer bundle build ARGS`.
async fn build_bundle(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_trimmer"))
            .arg("bundle")
            .arg("build")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs the shipped alert rules through `promtool test rules` with the drift value this
/// sidecar reported, held for 10 minutes: `TrimmerAllowlistMissingInputs` must fire.
fn promtool_fires(missing: f64) {
    let dir = TempDir::new("promtool");
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/trimmer-rules.yaml"
    );
    let test = format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'trimmer_allowlist_drift{{namespace="ml",pod="p",model="wide",kind="missing"}}'
        values: '{missing}x15'
    alert_rule_test:
      - alertname: TrimmerAllowlistMissingInputs
        eval_time: 10m
        exp_alerts:
          - exp_labels: {{severity: critical, namespace: ml, pod: p, model: wide}}
            exp_annotations:
              summary: "wide: a bundle allowlist lacks {missing} input(s) the leaf declares"
              description: "Trimming by that allowlist removes inputs the model needs. See /status on the admin port (signatures[].drift.versions: which version, which inputs, what on_drift does) and publish a bundle built from the leaf's signature (trimmer bundle build --signatures-from http://LEAF --model NAME@VERSION)."
"#
    );
    std::fs::write(dir.path("drift.test.yaml"), test).unwrap();
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.path("drift.test.yaml"))
        .output()
        .expect("promtool is needed (bash .ci/run installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// TF Serving's metadata answer for `saved_model_half_plus_two_2_versions` version 123, in the
/// shape of tensorflow/serving's testdata `saved_model_half_plus_two_2_versions_metadata.json`
/// (the doubled `signature_def`, int64s as strings, graph tensor names inside the inputs).
fn tf_metadata(model: &str, version: &str) -> Value {
    let tensor = |name: &str, dtype: &str| json!({"dtype": dtype, "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": false}, "name": name});
    let examples = json!({"dtype": "DT_STRING", "tensor_shape": {"dim": [], "unknown_rank": true}, "name": "tf_example:0"});
    json!({
        "model_spec": {"name": model, "signature_name": "", "version": version},
        "metadata": {"signature_def": {"signature_def": {
            "regress_x2_to_y3": {"inputs": {"inputs": tensor("x2:0", "DT_FLOAT")}, "outputs": {"outputs": tensor("y3:0", "DT_FLOAT")}, "method_name": "tensorflow/serving/regress", "defaults": {}},
            "serving_default": {"inputs": {"x": tensor("x:0", "DT_FLOAT")}, "outputs": {"y": tensor("y:0", "DT_FLOAT")}, "method_name": "tensorflow/serving/predict", "defaults": {}},
            "classify_x_to_y": {"inputs": {"inputs": examples.clone()}, "outputs": {"scores": tensor("y:0", "DT_FLOAT")}, "method_name": "tensorflow/serving/classify", "defaults": {}},
            "classify_x2_to_y3": {"inputs": {"inputs": tensor("x2:0", "DT_FLOAT")}, "outputs": {"scores": tensor("y3:0", "DT_FLOAT")}, "method_name": "tensorflow/serving/classify", "defaults": {}},
            "regress_x_to_y2": {"inputs": {"inputs": examples.clone()}, "outputs": {"outputs": tensor("y2:0", "DT_FLOAT")}, "method_name": "tensorflow/serving/regress", "defaults": {}},
            "regress_x_to_y": {"inputs": {"inputs": examples}, "outputs": {"outputs": tensor("y:0", "DT_FLOAT")}, "method_name": "tensorflow/serving/regress", "defaults": {}}
        }}}
    })
}

/// Metadata requests `flaky` has had: it answers the first one only.
static FLAKY: AtomicUsize = AtomicUsize::new(0);

/// A TF Serving REST stand-in (TF Serving itself is not installable here). Models:
/// `half_plus_two` answers metadata (versions 123 available, 122 ended) and checks predicts
/// like TF Serving's row format (every instance's keys equal to the signature's inputs);
/// `slow` answers the same metadata after 3 s; `flaky` answers it once, then 503;
/// `garbage` answers metadata with HTML;
/// `broken` with a 500; any other model is 404, as TF Serving answers unknown servables.
/// Predicts for other models are accepted and recorded.
struct TfLeaf {
    addr: std::net::SocketAddr,
    metadata_requests: Arc<AtomicUsize>,
    predicts: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TfLeaf {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TfLeaf {
    async fn start() -> TfLeaf {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metadata_requests = Arc::new(AtomicUsize::new(0));
        let predicts = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (metadata_requests.clone(), predicts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (count, seen) = (count.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| tf_leaf(count.clone(), seen.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TfLeaf {
            addr,
            metadata_requests,
            predicts,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn last_predict(&self) -> (String, Value) {
        self.predicts.lock().unwrap().last().cloned().unwrap()
    }
}

async fn tf_leaf(
    metadata_requests: Arc<AtomicUsize>,
    predicts: Arc<Mutex<Vec<(String, Value)>>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let rest = path.strip_prefix("/v1/models/").unwrap_or("");
    let model = rest.split(['/', ':']).next().unwrap_or("").to_owned();
    let answer = |status: u16, body: Value| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    };
    let not_found = json!({"error": format!("Servable not found for request: Latest({model})")});
    if parts.method == http::Method::GET {
        metadata_requests.fetch_add(1, Ordering::SeqCst);
        let known = matches!(model.as_str(), "half_plus_two" | "slow" | "flaky");
        match model.as_str() {
            "flaky" if FLAKY.fetch_add(1, Ordering::SeqCst) > 0 => {
                return answer(503, json!({"error": "unavailable"}))
            }
            "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
            "garbage" => {
                return Ok(Response::new(Full::new(Bytes::from_static(
                    b"<html>metadata? what metadata</html>",
                ))))
            }
            "broken" => return answer(500, json!({"error": "internal"})),
            _ => {}
        }
        if !known {
            return answer(404, not_found);
        }
        return if rest == model {
            answer(
                200,
                json!({"model_version_status": [
                    {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
                    {"version": "122", "state": "END", "status": {"error_code": "OK", "error_message": ""}}]}),
            )
        } else if rest.ends_with("/metadata") && !rest.contains("/versions/122") {
            answer(200, tf_metadata(&model, "123"))
        } else {
            answer(404, not_found)
        };
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    predicts.lock().unwrap().push((path.clone(), json.clone()));
    if model == "half_plus_two" {
        let signature = json["signature_name"].as_str().unwrap_or("serving_default");
        let metadata = tf_metadata("half_plus_two", "123");
        let inputs = &metadata["metadata"]["signature_def"]["signature_def"][signature]["inputs"];
        let mut expected: Vec<&String> = inputs.as_object().unwrap().keys().collect();
        expected.sort();
        for instance in json["instances"].as_array().unwrap() {
            let mut keys: Vec<&String> = instance.as_object().unwrap().keys().collect();
            keys.sort();
            if keys != expected {
                return answer(
                    400,
                    json!({"error": format!("Failed to process element: 0 key: {keys:?} of 'instances' list. Error: Invalid argument: keys must be equal to: {expected:?}")}),
                );
            }
        }
    }
    answer(200, json!({"predictions": [2.5]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_serving_metadata_discovered_and_signature_name_honoured() {
    let leaf = TfLeaf::start().await;
    let sidecar = Sidecar::start(config_on(&leaf.url(), |c| {
        c.discover_signatures = true;
        c.signature_wait_ms = 5_000;
    }))
    .await;
    let client = h1_client();
    let row = r#"{"x": 1.0, "inputs": 2.0, "item_ctr": 0.5, "user_country": "fr"}"#;

    let body = format!(r#"{{"instances": [{row}, {row}]}}"#);
    let url = sidecar.url("/v1/models/half_plus_two/versions/123:predict");
    let answer = send(&client, "POST", &url, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        leaf.last_predict().1,
        json!({"instances": [{"x": 1.0}, {"x": 1.0}]})
    );

    // signature_name picks the signature whose input keys are kept.
    let body = format!(r#"{{"signature_name": "regress_x2_to_y3", "instances": [{row}]}}"#);
    let answer = send(&client, "POST", &url, body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        leaf.last_predict().1,
        json!({"signature_name": "regress_x2_to_y3", "instances": [{"inputs": 2.0}]})
    );

    // Unversioned: the union over the versions the leaf reports AVAILABLE (123 only).
    let body = format!(r#"{{"instances": [{row}]}}"#);
    let answer = send(
        &client,
        "POST",
        &sidecar.url("/v1/models/half_plus_two:predict"),
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(leaf.last_predict().1, json!({"instances": [{"x": 1.0}]}));

    let metrics = metrics_of(&sidecar).await;
    // Version 123 once, then the status and 123's metadata for the unversioned union.
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_signature_fetches_total{result="ok",upstream="leaves"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(leaf.metadata_requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_live_signature_requests_total{model="half_plus_two",source="discovered"}"#
        ),
        Some(3.0)
    );
    sidecar.stop().await;

    // `bundle build --signatures-from`: the same document, read for the CLI's --signature.
    let dir = TempDir::new("tf-build");
    let out = dir.path("tf.json");
    let (leaf_url, out_path) = (leaf.url(), out.to_str().unwrap().to_owned());
    let from = ["--bundle", "tf", "--signatures-from", &leaf_url];
    let mut args = from.to_vec();
    args.extend([
        "--model",
        "half_plus_two@123",
        "--signature",
        "regress_x2_to_y3",
    ]);
    args.extend(["--out", &out_path]);
    let built = build_bundle(&args).await;
    assert!(built.status.success(), "{built:?}");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(bundle["models"][0]["model"], "half_plus_two");
    assert_eq!(bundle["models"][0]["version"], "123");
    assert_eq!(bundle["models"][0]["features"], json!(["inputs"]));
    // A model the leaf does not know fails the build, naming it.
    let mut args = from.to_vec();
    args.extend(["--model", "nope@1", "--out", &out_path]);
    let built = build_bundle(&args).await;
    assert_eq!(built.status.code(), Some(1), "{built:?}");
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(
        stderr.contains("nope@1: the leaf does not know it"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_metadata_leaves_requests_untouched() {
    let leaf = TfLeaf::start().await;
    let dead = dead_addr().await;
    let mut config = config_on(&leaf.url(), |c| {
        c.discover_signatures = true;
        c.signature_wait_ms = 300;
    });
    config.clusters.push(ClusterConfig {
        name: "down".into(),
        endpoints: vec![format!("http://{dead}")],
        models: vec!["gone".into()],
        discover_signatures: true,
        signature_wait_ms: 300,
        ..ClusterConfig::default()
    });
    let sidecar = Sidecar::start(config).await;
    let client = h1_client();
    let body = r#"{"instances": [{"x": 1.0, "junk": 2.0}]}"#;
    let untouched: Value = serde_json::from_str(body).unwrap();

    for model in ["garbage", "broken", "slow"] {
        let started = Instant::now();
        let url = sidecar.url(&format!("/v1/models/{model}/versions/1:predict"));
        let answer = send(&client, "POST", &url, body).await;
        println!(
            "{model}: answered in {:?} (signature_wait_ms = 300)",
            started.elapsed()
        );
        assert_eq!(answer.status, 200, "{model}: {:?}", answer.body);
        assert_eq!(leaf.last_predict().1, untouched, "{model}");
    }
    // The leaf itself is down: the sidecar's own 502, after the failed metadata request.
    let answer = send(
        &client,
        "POST",
        &sidecar.url("/v1/models/gone:predict"),
        body,
    )
    .await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);

    let admin = sidecar.admin_url("/metrics");
    eventually("every failure counted", || async {
        let m = get_text(&admin).await;
        metric(
            &m,
            r#"trimmer_signature_fetches_total{result="invalid",upstream="leaves"}"#,
        ) == Some(1.0)
            && metric(
                &m,
                r#"trimmer_signature_fetches_total{result="error",upstream="leaves"}"#,
            ) == Some(1.0)
            && metric(
                &m,
                r#"trimmer_signature_fetches_total{result="error",upstream="down"}"#,
            ) == Some(1.0)
    })
    .await;
    let metrics = metrics_of(&sidecar).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="_unknown",outcome="unknown_model"}"#
        ),
        Some(4.0)
    );
    // The failures are remembered: asking again sends no metadata request.
    let before = leaf.metadata_requests.load(Ordering::SeqCst);
    for model in ["garbage", "broken"] {
        let url = sidecar.url(&format!("/v1/models/{model}/versions/1:predict"));
        assert_eq!(send(&client, "POST", &url, body).await.status, 200);
        assert_eq!(leaf.last_predict().1, untouched);
    }
    assert_eq!(leaf.metadata_requests.load(Ordering::SeqCst), before);
    // The slow answer arrives after the request went on; later requests use it.
    let url = sidecar.url("/v1/models/slow/versions/1:predict");
    eventually("the slow signature to arrive", || async {
        send(&client, "POST", &url, body).await;
        leaf.last_predict().1 == json!({"instances": [{"x": 1.0}]})
    })
    .await;
    sidecar.stop().await;
}

/// Resident memory of this test process (sidecar, leaf and clients), from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_flood_stays_within_the_budget() {
    const REQUESTS: usize = 5_000;
    const PER_SECOND: u32 = 10;
    const CACHE: usize = 32;
    let leaf = TfLeaf::start().await;
    let started = Instant::now();
    let sidecar = Sidecar::start(config_on(&leaf.url(), |c| {
        c.discover_signatures = true;
        c.metadata_requests_per_second = PER_SECOND;
        c.signature_cache_entries = CACHE;
    }))
    .await;
    let series_before = metrics_of(&sidecar).await.lines().count();
    let rss_before = rss_kib();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (next, url) = (next.clone(), sidecar.url(""));
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    return;
                }
                let path = format!("{url}/v1/models/flood_{i}/versions/1:predict");
                let answer = send(&client, "POST", &path, r#"{"instances": [{"a": 1}]}"#).await;
                assert_eq!(answer.status, 200);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let flood = started.elapsed();
    // Let queued fetches finish, then count what the leaf saw against what the budget allows.
    let admin = sidecar.admin_url("/metrics");
    eventually("queued fetches to finish", || async {
        let m = get_text(&admin).await;
        metric(
            &m,
            r#"trimmer_signature_fetches_total{result="not_found",upstream="leaves"}"#,
        ) == Some(leaf.metadata_requests.load(Ordering::SeqCst) as f64)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let asked = leaf.metadata_requests.load(Ordering::SeqCst);
    // A burst of PER_SECOND, then PER_SECOND a second (one more for rounding in the bucket).
    let allowed = f64::from(PER_SECOND) * (1.0 + elapsed) + 1.0;
    let metrics = metrics_of(&sidecar).await;
    let throttled = metric(
        &metrics,
        r#"trimmer_signature_fetches_total{result="throttled",upstream="leaves"}"#,
    )
    .unwrap_or(0.0);
    let entries = metric(
        &metrics,
        r#"trimmer_signature_cache_entries{upstream="leaves"}"#,
    )
    .unwrap();
    let bytes = metric(
        &metrics,
        r#"trimmer_signature_cache_bytes{upstream="leaves"}"#,
    )
    .unwrap();
    let series_after = metrics.lines().count();
    println!(
        "{REQUESTS} unknown models in {flood:?}: {asked} metadata requests (budget {PER_SECOND}/s allows {allowed:.0} in {elapsed:.1} s), \
         {throttled} throttled, cache {entries} entries / {bytes} bytes (cap {CACHE}), /metrics lines {series_before} -> {series_after}, \
         test process RSS {rss_before} -> {} KiB (sidecar, leaf and clients together)",
        rss_kib()
    );
    assert!(asked > 0);
    assert!(
        (asked as f64) <= allowed,
        "{asked} metadata requests > {allowed}"
    );
    assert_eq!(
        asked as f64 + throttled,
        REQUESTS as f64,
        "every miss either fetched or throttled"
    );
    assert!(entries <= CACHE as f64, "{entries} cache entries");
    assert_eq!(bytes, 0.0, "404s cache no signature");
    assert!(!metrics.contains("flood_"), "request data created series");
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="_unknown",outcome="unknown_model"}"#
        ),
        Some(REQUESTS as f64)
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_stands_while_the_leaf_cannot_answer() {
    let leaf = TfLeaf::start().await;
    let dir = TempDir::new("flaky");
    std::fs::write(
        dir.path("flaky.json"),
        bundle_json("flaky", 1, &[("flaky", "123", &["y"])]),
    )
    .unwrap();
    let mut config = config_on(&leaf.url(), |c| {
        c.verify_signatures = true;
        c.verify_interval_ms = 100;
    });
    config.bundles.dir = Some(dir.0.clone());
    let sidecar = Sidecar::start(config).await;
    let admin = sidecar.admin_url("/metrics");
    let missing = r#"trimmer_allowlist_drift{kind="missing",model="flaky"}"#;
    eventually("the drift check", || async {
        metric(&get_text(&admin).await, missing) == Some(1.0)
    })
    .await;
    // Later checks get 503s: counted, listed as unchecked, and the drift stands.
    eventually("a failed check", || async {
        let m = get_text(&admin).await;
        metric(
            &m,
            r#"trimmer_signature_fetches_total{result="error",upstream="leaves"}"#,
        )
        .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(metric(&metrics_of(&sidecar).await, missing), Some(1.0));
    let status = status(&sidecar).await;
    let drift = &status["signatures"][0]["drift"];
    assert_eq!(drift["versions"][0]["missing"], json!(["x"]));
    assert_eq!(drift["unchecked"][0]["model"], "flaky");
    assert!(drift["unchecked"][0]["error"]
        .as_str()
        .unwrap()
        .contains("503"));
    // Contained meanwhile (on_drift = "observe", the default).
    let body = r#"{"instances": [{"x": 1.0, "y": 2.0}]}"#;
    let url = sidecar.url("/v1/models/flaky/versions/123:predict");
    assert_eq!(send(&h1_client(), "POST", &url, body).await.status, 200);
    assert_eq!(
        leaf.last_predict().1,
        serde_json::from_str::<Value>(body).unwrap()
    );
    sidecar.stop().await;
}
