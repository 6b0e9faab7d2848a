//! Real peers nobody here wrote: Triton's Python client (`tritonclient`) builds V2 JSON and
//! binary-tensor requests against the sidecar (the leaf records what arrives), and MLServer is
//! a real V2 leaf with a strict model that rejects undeclared inputs. `.ci/run` installs both;
//! run the tests through it.

mod common;

use common::*;
use serde_json::Value;

const BUNDLE: &str = r#"{"format": "trimmer.bundle/v1", "bundle": "peers", "generation": 1,
  "models": [{"model": "triton_m", "version": "1", "features": ["x", "z"]}]}"#;

fn input_names(json: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(json).unwrap();
    v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_json_and_binary_requests_are_trimmed() {
    let dir = TempDir::new("peers");
    std::fs::write(dir.path("peers.json"), BUNDLE).unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    let sidecar = Sidecar::start(config).await;

    let args = vec![sidecar.addr.to_string(), "triton_m".into(), "1".into()];
    python_peer("triton_client.py", args).await;

    let seen = leaf.seen();
    assert_eq!(seen.len(), 2);
    // JSON: y is gone, x and z are exactly as the client wrote them.
    assert_eq!(input_names(&seen[0].body), ["x", "z"]);
    let json: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(json["id"], "peer-0");
    assert_eq!(
        json["inputs"][0]["data"],
        serde_json::json!([1.0, 2.0, 3.0, 4.0])
    );
    // Binary: y's bytes are cut, x's and z's follow the rewritten JSON header in order.
    let binary = &seen[1];
    let json_len: usize = binary.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        binary.headers["content-length"],
        binary.body.len().to_string()
    );
    let (header, tensors) = binary.body.split_at(json_len);
    assert_eq!(input_names(header), ["x", "z"]);
    let mut expected = Vec::new();
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        expected.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0.25f64, -8.5] {
        expected.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(tensors, expected.as_slice());

    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="triton_m",outcome="trimmed"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_features_removed_total{model="triton_m"}"#
        ),
        Some(2.0)
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_rejects_the_full_request_and_answers_the_trimmed_one() {
    let mlserver = MlServer::start("mlserver", "strict").await;
    let dir = TempDir::new("peers-mlserver");
    std::fs::write(dir.path("peers.json"), BUNDLE.replace("triton_m", "strict")).unwrap();
    let mut config = config_with(&[("mlserver", vec![mlserver.url.clone()], vec![])]);
    config.bundles.dir = Some(dir.0.clone());
    // Shadow verification of every trimmed request: this strict leaf refuses the originals.
    config.verify.sample = 1.0;
    let sidecar = Sidecar::start(config).await;
    let client = h1_client();
    let body = r#"{"id": "r-1", "inputs": [
        {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "y", "shape": [1], "datatype": "FP32", "data": [100]},
        {"name": "z", "shape": [1], "datatype": "FP64", "data": [5]}]}"#;

    // The strict leaf refuses the root's superset of features...
    let direct = send(
        &client,
        "POST",
        &format!("{}/v2/models/strict/versions/1/infer", mlserver.url),
        body,
    )
    .await;
    assert_eq!(direct.status, 400, "{:?}", direct.body);
    assert!(String::from_utf8_lossy(&direct.body).contains("unexpected inference input"));
    // ...and answers once the sidecar has trimmed it.
    let trimmed = send(
        &client,
        "POST",
        &sidecar.url("/v2/models/strict/versions/1/infer"),
        body,
    )
    .await;
    assert_eq!(trimmed.status, 200, "{:?}", trimmed.body);
    let answer = trimmed.json();
    assert_eq!(answer["id"], "r-1");
    assert_eq!(answer["outputs"][0]["data"], serde_json::json!([8.0]));
    // A miss is forwarded untouched: the client gets the leaf's own answer (no version 2).
    let miss = send(
        &client,
        "POST",
        &sidecar.url("/v2/models/strict/versions/2/infer"),
        body,
    )
    .await;
    assert_eq!(miss.status, 404, "{:?}", miss.body);
    assert!(
        String::from_utf8_lossy(&miss.body).contains("strict"),
        "{:?}",
        miss.body
    );
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_requests_total{model="strict",outcome="unknown_version"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, r#"trim_miss_rate{model="strict"}"#),
        Some(0.5)
    );
    // The shadow of the trimmed request (the original) was refused: `error`, never `mismatch`,
    // and the version keeps trimming.
    let verified = |result: &'static str| {
        let url = sidecar.admin_url("/metrics");
        async move {
            let text = get_text(&url).await;
            metric(
                &text,
                &format!(r#"trimmer_verify_total{{model="strict",result="{result}"}}"#),
            )
        }
    };
    eventually("the verification to conclude", || async {
        verified("error").await == Some(1.0)
    })
    .await;
    assert_eq!(verified("mismatch").await, Some(0.0));
    assert_eq!(
        status(&sidecar).await["verify"]["contained"],
        serde_json::json!([])
    );
    sidecar.stop().await;
}
