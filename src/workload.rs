//! The reference workloads from DESIGN.md, generated deterministically so benches, tests and
//! the end-to-end harness share the same bodies.

use crate::bundle::format::{Bundle, ModelEntry, FORMAT_V1};
use crate::trim::grpc::{self, put_bytes, put_uint, put_varint};
use crate::trim::tf_serving::{self, TfBody};
use crate::trim::{kserve, Allowed, TrimResult};
use serde_json::Value;

/// One reference workload: a request body and the allowlist that applies to it.
pub struct Workload {
    /// Name used by benches (`tfs-rows`, `kserve-json`, `kserve-binary`, `small`, `tfs-text`,
    /// `tfs-grpc`, `kserve-grpc`, `kserve-grpc-batch`).
    pub name: &'static str,
    /// Score URL path (for gRPC, the method's path).
    pub path: &'static str,
    /// Request body (for gRPC, one protobuf message, without gRPC's 5-byte frame prefix).
    pub body: Vec<u8>,
    /// `Inference-Header-Content-Length` for Triton binary bodies.
    pub json_len: Option<usize>,
    /// Every feature name in the body.
    pub features: Vec<String>,
    /// The allowed subset.
    pub allowed: Vec<String>,
}

/// Model name used by every workload.
pub const MODEL: &str = "ranker";
/// Model version used by every workload.
pub const VERSION: &str = "1";

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("feature_{i:04}")).collect()
}

/// Every `n / keep`-th name, `keep` of them.
fn allow_every(features: &[String], keep: usize) -> Vec<String> {
    let step = features.len() / keep;
    features.iter().step_by(step).take(keep).cloned().collect()
}

/// `tfs-rows`: TF Serving predict, 64 instances × 1,000 features (full-precision numbers,
/// strings, short lists), allowlist 100 (~1.6 MB in, ~10% out).
pub fn tfs_rows() -> Workload {
    tf_rows("tfs-rows", 64, 1000, 100, false, 42)
}

/// `small`: TF Serving predict, 1 instance × 200 features, allowlist 50 (~4 KB).
pub fn small() -> Workload {
    tf_rows("small", 1, 200, 50, false, 42)
}

/// `small` with other values (the same keys, so the same allowlist applies), one body per
/// `seed`: benches rotate through several, as a server sees bodies that differ, so that a
/// branch predictor cannot learn one replayed body's every branch.
pub fn small_varied(seed: u64) -> Workload {
    tf_rows("small", 1, 200, 50, false, seed)
}

/// `tfs-text`: not one of DESIGN.md's; `tfs-rows` with its string values in several scripts
/// (UTF-8 well above 0x7F), for the engine's UTF-8 path.
pub fn tfs_text() -> Workload {
    tf_rows("tfs-text", 64, 1000, 100, true, 42)
}

/// Words for `tfs-text`'s string values.
const TEXT: [&str; 8] = [
    "商品名称",
    "München",
    "Ελληνικά",
    "русский текст",
    "日本語テキスト",
    "한국어",
    "عربي",
    "café",
];

fn tf_rows(
    name: &'static str,
    rows: usize,
    n: usize,
    keep: usize,
    text: bool,
    seed: u64,
) -> Workload {
    let features = names(n);
    let mut rng = crate::trim::Lcg(seed);
    let mut body = String::with_capacity(rows * n * 26);
    body.push_str(r#"{"signature_name":"serving_default","instances":["#);
    for r in 0..rows {
        if r > 0 {
            body.push(',');
        }
        body.push('{');
        for (i, f) in features.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push('"');
            body.push_str(f);
            body.push_str("\":");
            match rng.next() % 3 {
                // Full-precision doubles, as Python's json or Jackson write them (17 digits).
                0 => body.push_str(&format!("{}", rng.next() as f64 / 2_147_483_648.0)),
                1 if text => body.push_str(&format!(
                    "\"{} {} {}\"",
                    TEXT[rng.next() as usize % TEXT.len()],
                    TEXT[rng.next() as usize % TEXT.len()],
                    rng.next() % 10_000
                )),
                1 => body.push_str(&format!("\"v{}\"", rng.next() % 10_000)),
                _ => body.push_str(&format!(
                    "[{},{},{}]",
                    rng.next() % 100,
                    rng.next() % 100,
                    rng.next() % 100
                )),
            }
        }
        body.push('}');
    }
    body.push_str("]}");
    let allowed = allow_every(&features, keep);
    Workload {
        name,
        path: "/v1/models/ranker/versions/1:predict",
        body: body.into_bytes(),
        json_len: None,
        features,
        allowed,
    }
}

fn fp32(rng: &mut crate::trim::Lcg) -> f32 {
    (rng.next() % 2_000_000) as f32 / 1_000_000.0 - 1.0
}

/// `kserve-json`: KServe V2, 1,000 input tensors of 64 FP32 values each, allowlist 100.
pub fn kserve_json() -> Workload {
    let features = names(1000);
    let mut rng = crate::trim::Lcg(7);
    let mut body = String::from(r#"{"id":"bench","inputs":["#);
    for (i, f) in features.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"name":"{f}","shape":[1,64],"datatype":"FP32","data":["#
        ));
        for v in 0..64 {
            if v > 0 {
                body.push(',');
            }
            body.push_str(&format!("{}", fp32(&mut rng)));
        }
        body.push_str("]}");
    }
    body.push_str(r#"],"outputs":[{"name":"score"}]}"#);
    let allowed = allow_every(&features, 100);
    Workload {
        name: "kserve-json",
        path: "/v2/models/ranker/versions/1/infer",
        body: body.into_bytes(),
        json_len: None,
        features,
        allowed,
    }
}

/// `kserve-binary`: the same inputs as Triton binary tensors.
pub fn kserve_binary() -> Workload {
    let features = names(1000);
    let mut rng = crate::trim::Lcg(7);
    let mut json = String::from(r#"{"id":"bench","inputs":["#);
    for (i, f) in features.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"name":"{f}","shape":[1,64],"datatype":"FP32","parameters":{{"binary_data_size":256}}}}"#
        ));
    }
    json.push_str(r#"],"outputs":[{"name":"score","parameters":{"binary_data":true}}]}"#);
    let json_len = json.len();
    let mut body = json.into_bytes();
    for _ in 0..features.len() * 64 {
        body.extend_from_slice(&fp32(&mut rng).to_le_bytes());
    }
    let allowed = allow_every(&features, 100);
    Workload {
        name: "kserve-binary",
        path: "/v2/models/ranker/versions/1/infer",
        body,
        json_len: Some(json_len),
        features,
        allowed,
    }
}

/// gRPC method path of `tfs-grpc`.
pub const TFS_PREDICT: &str = "/tensorflow.serving.PredictionService/Predict";
/// gRPC method path of `kserve-grpc`.
pub const KSERVE_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// `tfs-grpc`: a TF Serving gRPC `PredictRequest`, 1,000 `inputs` of 64 floats each (a
/// `TensorProto` with `dtype` DT_FLOAT, shape [1, 64] and packed `float_val`), allowlist 100.
pub fn tfs_grpc() -> Workload {
    let features = names(1000);
    let mut rng = crate::trim::Lcg(7);
    let mut body = Vec::with_capacity(features.len() * 300);
    put_bytes(&mut body, 1, &model_spec());
    let (mut entry, mut tensor, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    for f in &features {
        tensor.clear();
        put_uint(&mut tensor, 1, 1);
        put_bytes(&mut tensor, 2, &shape_proto(&[1, 64], &mut scratch));
        scratch.clear();
        for _ in 0..64 {
            scratch.extend_from_slice(&fp32(&mut rng).to_le_bytes());
        }
        put_bytes(&mut tensor, 5, &scratch);
        entry.clear();
        put_bytes(&mut entry, 1, f.as_bytes());
        put_bytes(&mut entry, 2, &tensor);
        put_bytes(&mut body, 2, &entry);
    }
    let allowed = allow_every(&features, 100);
    Workload {
        name: "tfs-grpc",
        path: TFS_PREDICT,
        body,
        json_len: None,
        features,
        allowed,
    }
}

/// `ModelSpec { name: "ranker", version: { value: 1 }, signature_name: "serving_default" }`.
fn model_spec() -> Vec<u8> {
    let mut spec = Vec::new();
    put_bytes(&mut spec, 1, MODEL.as_bytes());
    let mut version = Vec::new();
    put_uint(&mut version, 1, 1);
    put_bytes(&mut spec, 2, &version);
    put_bytes(&mut spec, 3, b"serving_default");
    spec
}

/// `TensorShapeProto { repeated Dim dim = 2; }`, `Dim { int64 size = 1; }`.
fn shape_proto(dims: &[u64], scratch: &mut Vec<u8>) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        scratch.clear();
        put_uint(scratch, 1, d);
        put_bytes(&mut shape, 2, scratch);
    }
    shape
}

/// `kserve-grpc`: a KServe gRPC `ModelInferRequest`, 1,000 FP32 [1, 64] inputs whose values
/// are in `raw_input_contents` (as tritonclient sends them), allowlist 100.
pub fn kserve_grpc() -> Workload {
    model_infer("kserve-grpc", [1, 64])
}

/// `kserve-grpc-batch`: not one of DESIGN.md's; `kserve-grpc` with FP32 [400, 1] inputs (a
/// batch of 400 candidates, ~1.6 MB), the end-to-end harness's gRPC request.
pub fn kserve_grpc_batch() -> Workload {
    model_infer("kserve-grpc-batch", [400, 1])
}

/// A `ModelInferRequest` with 1,000 FP32 inputs of `shape`, values in `raw_input_contents`,
/// allowlist 100.
fn model_infer(name: &'static str, shape: [u64; 2]) -> Workload {
    let features = names(1000);
    let values = (shape[0] * shape[1]) as usize;
    let mut rng = crate::trim::Lcg(7);
    let mut body = Vec::with_capacity(features.len() * (4 * values + 40));
    put_bytes(&mut body, 1, MODEL.as_bytes());
    put_bytes(&mut body, 2, VERSION.as_bytes());
    put_bytes(&mut body, 3, b"bench");
    let mut input = Vec::new();
    let mut packed = Vec::new();
    for f in &features {
        input.clear();
        put_bytes(&mut input, 1, f.as_bytes());
        put_bytes(&mut input, 2, b"FP32");
        // `repeated int64 shape = 3`, packed.
        packed.clear();
        shape.iter().for_each(|&d| put_varint(&mut packed, d));
        put_bytes(&mut input, 3, &packed);
        put_bytes(&mut body, 5, &input);
    }
    input.clear();
    put_bytes(&mut input, 1, b"score");
    put_bytes(&mut body, 6, &input);
    for _ in &features {
        input.clear();
        for _ in 0..values {
            input.extend_from_slice(&fp32(&mut rng).to_le_bytes());
        }
        put_bytes(&mut body, 7, &input);
    }
    let allowed = allow_every(&features, 100);
    Workload {
        name,
        path: KSERVE_INFER,
        body,
        json_len: None,
        features,
        allowed,
    }
}

/// The gRPC workloads, kept apart from [`all`] because their bodies are not JSON.
pub fn grpc_all() -> Vec<Workload> {
    vec![tfs_grpc(), kserve_grpc()]
}

/// All of them, in the order benches report them.
pub fn all() -> Vec<Workload> {
    vec![
        tfs_rows(),
        kserve_json(),
        kserve_binary(),
        small(),
        tfs_text(),
    ]
}

impl Workload {
    /// A bundle (`bench`) that allows this workload's allowlist for `ranker@1`.
    pub fn bundle(&self) -> Bundle {
        let mut bundle = Bundle {
            format: FORMAT_V1.into(),
            bundle: "bench".into(),
            generation: 1,
            created_at: None,
            source: Some(format!("workload {}", self.name)),
            models: vec![ModelEntry {
                model: MODEL.into(),
                version: VERSION.into(),
                stage: Default::default(),
                features: self.allowed.clone(),
                mode: None,
                verify: None,
            }],
            labels: Default::default(),
            sha256: None,
        };
        bundle.seal();
        bundle
    }

    /// The JSON part of the body parsed to a `Value`, every feature map (TF Serving rows, KServe
    /// `inputs`) filtered by the allowlist: the straightforward trimmer, without the engines.
    pub fn serde_filtered(&self) -> serde_json::Result<Value> {
        let mut doc: Value =
            serde_json::from_slice(&self.body[..self.json_len.unwrap_or(self.body.len())])?;
        let allowed = |k: &str| self.allowed.iter().any(|a| a == k);
        if let Some(rows) = doc.get_mut("instances").and_then(Value::as_array_mut) {
            for row in rows.iter_mut().filter_map(Value::as_object_mut) {
                row.retain(|k, _| allowed(k));
            }
        }
        if let Some(inputs) = doc.get_mut("inputs").and_then(Value::as_array_mut) {
            inputs.retain(|i| i["name"].as_str().is_some_and(allowed));
        }
        Ok(doc)
    }

    /// The body through the engine the proxy picks for its path and headers.
    pub fn trim(&self, allowed: impl Allowed) -> TrimResult {
        match self.path {
            TFS_PREDICT => return grpc::trim_predict(&self.body, allowed),
            KSERVE_INFER => return grpc::trim_infer(&self.body, allowed),
            _ => {}
        }
        match (self.json_len, self.path.starts_with("/v1/")) {
            (Some(json_len), _) => kserve::trim_binary(&self.body, json_len, allowed),
            (None, true) => tf_serving::trim(&self.body, TfBody::Predict, allowed),
            (None, false) => kserve::trim_json(&self.body, allowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_design() {
        let rows = tfs_rows();
        assert!(
            (1_400_000..1_900_000).contains(&rows.body.len()),
            "{}",
            rows.body.len()
        );
        assert_eq!(rows.allowed.len(), 100);
        let small = small();
        assert!(
            (3_000..6_000).contains(&small.body.len()),
            "{}",
            small.body.len()
        );
        assert_eq!(small.allowed.len(), 50);
        let json = kserve_json();
        let value: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(value["inputs"].as_array().unwrap().len(), 1000);
        let binary = kserve_binary();
        assert_eq!(binary.body.len() - binary.json_len.unwrap(), 1000 * 256);
        for w in grpc_all() {
            let allowed = |k: &str| w.allowed.iter().any(|a| a == k);
            let trimmed = w.trim(allowed).unwrap();
            assert_eq!((trimmed.kept, trimmed.removed), (100, 900), "{}", w.name);
        }
        let batch = kserve_grpc_batch();
        assert!(
            (1_500_000..1_800_000).contains(&batch.body.len()),
            "{}",
            batch.body.len()
        );
        let allowed = |k: &str| batch.allowed.iter().any(|a| a == k);
        let trimmed = batch.trim(allowed).unwrap();
        assert_eq!((trimmed.kept, trimmed.removed), (100, 900));
        let infer = kserve_grpc();
        assert_eq!(
            grpc::infer_target(&infer.body).unwrap(),
            grpc::InferTarget {
                model_name: MODEL,
                model_version: VERSION
            }
        );
        let predict = tfs_grpc();
        let spec = grpc::model_spec(&predict.body).unwrap().unwrap();
        assert_eq!(
            (spec.name, spec.version, spec.signature_name),
            (MODEL, Some(grpc::SpecVersion::Number(1)), "serving_default")
        );
    }
}
