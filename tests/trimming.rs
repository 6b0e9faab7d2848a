//! Trimming end to end through real sockets: a recording leaf sees exactly the allowed
//! features, misses arrive byte-identical, and /metrics counts every outcome.

mod common;

use bytes::Bytes;
use common::*;
use feature_trimmer::config::Config;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

const BUNDLE: &str = r#"{
  "format": "trimmer.bundle/v1", "bundle": "home", "generation": 1,
  "models": [
    {"model": "ranker", "version": "1", "features": ["a", "b"]},
    {"model": "ranker", "version": "2", "features": ["a", "c"], "mode": "observe"},
    {"model": "ranker", "version": "3", "features": ["a"], "mode": "off"},
    {"model": "triton_m", "version": "1", "features": ["x", "z"]}
  ],
  "labels": {"ranker": {"stable": "1"}}
}"#;

struct Setup {
    _dir: TempDir,
    leaf: Leaf,
    sidecar: Sidecar,
    client: TestClient,
    dir: std::path::PathBuf,
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> Setup {
    let dir = TempDir::new("trim");
    std::fs::write(dir.path("home.json"), BUNDLE).unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    config.bundles.debounce_ms = 10;
    tweak(&mut config);
    let sidecar = Sidecar::start(config).await;
    let path = dir.0.clone();
    Setup {
        _dir: dir,
        leaf,
        sidecar,
        client: h1_client(),
        dir: path,
    }
}

/// Keys in a deliberate order (a `json!` value would sort them).
const INSTANCES: &str = r#"{"signature_name": "serving_default", "instances": [
    {"a": 1.5, "b": "x", "c": [1, 2], "d": {"b64": "aGk="}},
    {"d": null, "c": 3, "b": "y", "a": -0.0}
]}"#;

impl Setup {
    async fn post(&self, path: &str, body: &str) -> Answer {
        send(
            &self.client,
            "POST",
            &self.sidecar.url(path),
            body.to_owned(),
        )
        .await
    }

    fn last_seen(&self) -> Seen {
        self.leaf.seen().pop().unwrap()
    }

    async fn metrics(&self) -> String {
        get_text(&self.sidecar.admin_url("/metrics")).await
    }
}

fn keys_of_instances(body: &[u8]) -> Vec<Vec<String>> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_object().unwrap().keys().cloned().collect())
        .collect()
}

#[tokio::test]
async fn the_leaf_sees_only_allowed_features_and_misses_pass_byte_identical() {
    let s = setup(|_| {}).await;
    let body = INSTANCES.to_owned();

    // Versioned, labelled and unversioned requests are trimmed; kept bytes keep their order.
    for path in [
        "/v1/models/ranker/versions/1:predict",
        "/v1/models/ranker/labels/stable:predict",
    ] {
        let a = s.post(path, &body).await;
        assert_eq!(a.status, 200);
        let seen = s.last_seen();
        let expected = r#"{"signature_name": "serving_default", "instances": [
    {"a": 1.5, "b": "x"},
    {"b": "y", "a": -0.0}
]}"#;
        assert_eq!(std::str::from_utf8(&seen.body).unwrap(), expected, "{path}");
        assert_eq!(seen.headers["content-length"], seen.body.len().to_string());
    }
    // Unversioned: the union of versions 1-3 with the least aggressive mode (3 is off).
    s.post("/v1/models/ranker:predict", &body).await;
    assert_eq!(s.last_seen().body, body.as_bytes());

    // Misses and other outcomes arrive byte-identical.
    for path in [
        "/v1/models/unknown:predict",
        "/v1/models/ranker/versions/9:predict",
        "/v1/models/ranker/labels/canary:predict",
        "/v1/models/ranker/versions/2:predict", // observe
        "/v1/models/ranker/versions/3:predict", // off
    ] {
        s.post(path, &body).await;
        assert_eq!(s.last_seen().body, body.as_bytes(), "{path}");
    }
    let broken = "{\"instances\": [{\"a\": 1,]}";
    s.post("/v1/models/ranker/versions/1:predict", broken).await;
    assert_eq!(s.last_seen().body, broken.as_bytes());
    let plain = r#"{"instances": [[1, 2], [3, 4]]}"#;
    s.post("/v1/models/ranker/versions/1:predict", plain).await;
    assert_eq!(s.last_seen().body, plain.as_bytes());
    // Not score requests: untouched and not counted.
    send(
        &s.client,
        "GET",
        &s.sidecar.url("/v1/models/ranker/versions/1/metadata"),
        "",
    )
    .await;

    let m = s.metrics().await;
    let count = |outcome: &str, model: &str| {
        metric(
            &m,
            &format!(r#"trimmer_requests_total{{model="{model}",outcome="{outcome}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("trimmed", "ranker"), 2.0);
    assert_eq!(count("unknown_model", "_unknown"), 1.0);
    assert_eq!(count("unknown_version", "ranker"), 2.0);
    assert_eq!(count("observed", "ranker"), 1.0);
    assert_eq!(count("disabled", "ranker"), 2.0);
    assert_eq!(count("parse_error", "ranker"), 1.0);
    assert_eq!(count("not_trimmable", "ranker"), 1.0);
    // ranker: 2 misses out of 9 score requests; _unknown: 1 of 1.
    assert_eq!(
        metric(&m, r#"trim_miss_rate{model="ranker"}"#),
        Some(2.0 / 9.0)
    );
    assert_eq!(metric(&m, r#"trim_miss_rate{model="_unknown"}"#), Some(1.0));
    assert_eq!(metric(&m, r#"trim_miss_rate{model="triton_m"}"#), Some(0.0));
    // 2 rows × (c, d) removed twice; observe counts what it would have removed (b, d per row).
    assert_eq!(
        metric(&m, r#"trimmer_features_removed_total{model="ranker"}"#),
        Some(8.0)
    );
    assert_eq!(
        metric(&m, r#"trimmer_features_observed_total{model="ranker"}"#),
        Some(4.0)
    );
    let bytes_in = metric(
        &m,
        r#"trimmer_request_bytes_total{direction="in",model="ranker"}"#,
    )
    .unwrap();
    let bytes_out = metric(
        &m,
        r#"trimmer_request_bytes_total{direction="out",model="ranker"}"#,
    )
    .unwrap();
    assert!(bytes_out < bytes_in, "{bytes_out} < {bytes_in}");
    // The engine ran for: two trims, observe, the parse error and the plain rows.
    assert_eq!(metric(&m, "trimmer_trim_duration_seconds_count"), Some(5.0));
    s.sidecar.stop().await;
}

#[tokio::test]
async fn kserve_json_and_triton_binary_bodies_are_trimmed() {
    let s = setup(|_| {}).await;
    let body = json!({"id": "req-7", "inputs": [
        {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
        {"name": "y", "shape": [1], "datatype": "BYTES", "data": ["drop me"]},
        {"name": "z", "shape": [1], "datatype": "INT64", "data": [3]}
    ]})
    .to_string();
    s.post("/v2/models/triton_m/versions/1/infer", &body).await;
    let seen: Value = serde_json::from_slice(&s.last_seen().body).unwrap();
    let names: Vec<&str> = seen["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x", "z"]);
    assert_eq!(seen["id"], "req-7");

    // Binary: x (8 bytes), y (4 bytes) and z (8 bytes) as raw tensors after the JSON header.
    let header = json!({"inputs": [
        {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        {"name": "y", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
        {"name": "z", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}
    ]})
    .to_string();
    let mut raw = header.clone().into_bytes();
    raw.extend_from_slice(&[1; 8]);
    raw.extend_from_slice(&[2; 4]);
    raw.extend_from_slice(&[3; 8]);
    let request = Request::post(s.sidecar.url("/v2/models/triton_m/versions/1/infer"))
        .header("inference-header-content-length", header.len())
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(raw.clone())))
        .unwrap();
    assert_eq!(
        answer(s.client.request(request).await.unwrap())
            .await
            .status,
        200
    );
    let seen = s.last_seen();
    let json_len: usize = seen.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (json_part, binary) = seen.body.split_at(json_len);
    let json_part: Value = serde_json::from_slice(json_part).unwrap();
    assert_eq!(json_part["inputs"].as_array().unwrap().len(), 2);
    assert_eq!(binary, [[1u8; 8].as_slice(), &[3; 8]].concat());
    assert_eq!(seen.headers["content-length"], seen.body.len().to_string());

    // Inference-Header-Content-Length: 0 is one raw tensor: untouched.
    let request = Request::post(s.sidecar.url("/v2/models/triton_m/versions/1/infer"))
        .header("inference-header-content-length", "0")
        .body(Full::new(Bytes::from_static(&[9; 16])))
        .unwrap();
    answer(s.client.request(request).await.unwrap()).await;
    assert_eq!(s.last_seen().body, [9u8; 16].as_slice());
    // A gzip body cannot be read: untouched.
    let request = Request::post(s.sidecar.url("/v2/models/triton_m/versions/1/infer"))
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    answer(s.client.request(request).await.unwrap()).await;
    assert_eq!(s.last_seen().body, body.as_bytes());
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="triton_m",outcome="trimmed"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="triton_m",outcome="not_trimmable"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="triton_m",outcome="unsupported_encoding"}"#
        ),
        Some(1.0)
    );
    s.sidecar.stop().await;
}

#[tokio::test]
async fn kill_switch_by_admin_call_and_by_file() {
    let s = setup(|_| {}).await;
    let body = INSTANCES.to_owned();
    let path = "/v1/models/ranker/versions/1:predict";
    let admin = |p: &str| s.sidecar.admin_url(p);

    let a = send(&s.client, "POST", &admin("/trimming/disable"), "").await;
    assert_eq!(a.json()["trimming_disabled"], true);
    s.post(path, &body).await;
    assert_eq!(
        s.last_seen().body,
        body.as_bytes(),
        "disabled by admin call"
    );
    assert_eq!(
        metric(&s.metrics().await, "trimmer_trimming_disabled"),
        Some(1.0)
    );
    send(&s.client, "POST", &admin("/trimming/enable"), "").await;
    s.post(path, &body).await;
    assert_ne!(s.last_seen().body, body.as_bytes(), "enabled again");

    std::fs::write(s.dir.join("TRIMMING_DISABLED"), "incident 1234").unwrap();
    eventually("the kill-switch file to be seen", || async {
        status(&s.sidecar).await["kill_switch"]["file"] == true
    })
    .await;
    s.post(path, &body).await;
    assert_eq!(s.last_seen().body, body.as_bytes(), "disabled by file");
    std::fs::remove_file(s.dir.join("TRIMMING_DISABLED")).unwrap();
    eventually("the kill-switch file removal to be seen", || async {
        status(&s.sidecar).await["kill_switch"]["trimming_disabled"] == false
    })
    .await;
    s.post(path, &body).await;
    assert_ne!(s.last_seen().body, body.as_bytes());
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="ranker",outcome="disabled"}"#
        ),
        Some(2.0)
    );
    assert_eq!(metric(&m, "trimmer_trimming_disabled"), Some(0.0));
    s.sidecar.stop().await;
}

#[tokio::test]
async fn passthrough_and_latest_for_unversioned_requests() {
    let body = INSTANCES.to_owned();
    let s = setup(|c| c.trim.unversioned = feature_trimmer::config::Unversioned::Latest).await;
    s.post("/v1/models/ranker:predict", &body).await;
    // Latest is version 3 (mode off): untouched, counted as disabled.
    assert_eq!(s.last_seen().body, body.as_bytes());
    s.sidecar.stop().await;

    let s = setup(|c| c.trim.unversioned = feature_trimmer::config::Unversioned::Passthrough).await;
    s.post("/v1/models/ranker:predict", &body).await;
    assert_eq!(s.last_seen().body, body.as_bytes());
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_requests_total{model="ranker",outcome="not_trimmable"}"#
        ),
        Some(1.0)
    );
    s.sidecar.stop().await;
}

#[tokio::test]
async fn the_union_trims_when_every_version_enforces() {
    let s = setup(|_| {}).await;
    std::fs::write(
        s.dir.join("home.json"),
        r#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 2, "models": [
            {"model": "ranker", "version": "1", "features": ["a", "b"]},
            {"model": "ranker", "version": "2", "features": ["a", "c"]}]}"#,
    )
    .unwrap();
    send(&s.client, "POST", &s.sidecar.admin_url("/reload"), "").await;
    s.post("/v1/models/ranker:predict", INSTANCES).await;
    assert_eq!(
        keys_of_instances(&s.last_seen().body),
        [vec!["a", "b", "c"], vec!["a", "b", "c"]]
    );
    s.sidecar.stop().await;
}

#[tokio::test]
async fn lz4_on_the_link_between_two_trimmers() {
    // root -> trimmer A (trims, lz4 out) -> trimmer B (decodes) -> leaf.
    let s = setup(|c| c.accept_lz4 = true).await;
    let mut config = config_with(&[(
        "near-leaf",
        vec![format!("http://{}", s.sidecar.addr)],
        vec![],
    )]);
    config.clusters[0].compression = feature_trimmer::config::Compression::Lz4;
    let dir = TempDir::new("lz4");
    std::fs::write(dir.path("home.json"), BUNDLE).unwrap();
    config.bundles.dir = Some(dir.0.clone());
    let near_root = Sidecar::start(config).await;

    let path = "/v1/models/ranker/versions/1:predict";
    let a = send(&s.client, "POST", &near_root.url(path), INSTANCES).await;
    assert_eq!(a.status, 200);
    let seen = s.last_seen();
    assert!(
        seen.headers.get("content-encoding").is_none(),
        "decoded before the leaf"
    );
    assert_eq!(
        keys_of_instances(&seen.body),
        [vec!["a", "b"], vec!["a", "b"]]
    );
    // The hop between the trimmers carried fewer bytes than the trimmed body.
    let m = get_text(&near_root.admin_url("/metrics")).await;
    let out = metric(
        &m,
        r#"trimmer_request_bytes_total{direction="out",model="ranker"}"#,
    )
    .unwrap();
    assert_eq!(out, seen.body.len() as f64);

    // Corrupt and oversized lz4 bodies get a clear answer, not a guess.
    let request = |body: Vec<u8>| {
        Request::post(s.sidecar.url(path))
            .header("content-encoding", "lz4")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let a = answer(
        s.client
            .request(request(b"\x04\x22\x4d\x18garbage".to_vec()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"].as_str().unwrap().contains("lz4"));
    let bomb = feature_trimmer::compression::encode(&vec![b' '; 200 * 1024 * 1024]).unwrap();
    let a = answer(s.client.request(request(bomb)).await.unwrap()).await;
    assert_eq!(a.status, 413);
    near_root.stop().await;
    s.sidecar.stop().await;
}
