//! What a leaf's metadata answers say, per protocol: the input names of a model version (KServe
//! V2 `inputs[].name`; TF Serving the keys of `metadata.signature_def.signature_def[SIG].inputs`),
//! the versions it reports, and the paths to ask. Pure: documents in, names out.

use serde_json::Value;

use crate::classify::Protocol;

/// The TF Serving signature a request without `signature_name` uses.
pub const DEFAULT_TF_SIGNATURE: &str = "serving_default";

/// KServe V2 `GET /v2/models/NAME[/versions/V]`: the input names.
pub fn kserve_inputs(doc: &Value) -> Result<Vec<String>, String> {
    let list = doc
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("no `inputs` list")?;
    list.iter()
        .map(|i| i.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| "an input has no name".to_owned())
}

/// KServe V2: the `versions` the model metadata lists (absent or empty for many servers).
pub fn kserve_versions(doc: &Value) -> Vec<String> {
    doc.get("versions")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// TF Serving `GET /v1/models/NAME[/versions/N]/metadata`: every signature with its input
/// names (the keys; the inner `"name": "x:0"` is a graph tensor name, not what clients send).
pub fn tf_signatures(doc: &Value) -> Result<Vec<(String, Vec<String>)>, String> {
    let defs = doc
        .pointer("/metadata/signature_def/signature_def")
        .and_then(Value::as_object)
        .ok_or("no `metadata.signature_def.signature_def`")?;
    defs.iter()
        .map(|(name, def)| {
            let inputs = def
                .get("inputs")
                .and_then(Value::as_object)
                .ok_or_else(|| format!("signature `{name}` has no inputs"))?;
            Ok((name.clone(), inputs.keys().cloned().collect()))
        })
        .collect()
}

/// TF Serving: the input names of one signature of a metadata document.
pub fn tf_signature_inputs(doc: &Value, signature: &str) -> Result<Vec<String>, String> {
    let all = tf_signatures(doc)?;
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let missing = format!("no signature `{signature}` (has: {})", names.join(", "));
    all.into_iter()
        .find(|(name, _)| name == signature)
        .map(|(_, inputs)| inputs)
        .ok_or(missing)
}

/// TF Serving `GET /v1/models/NAME` (model status): the versions whose state is `AVAILABLE`.
pub fn tf_available_versions(doc: &Value) -> Result<Vec<String>, String> {
    let list = doc
        .get("model_version_status")
        .and_then(Value::as_array)
        .ok_or("no `model_version_status` list")?;
    Ok(list
        .iter()
        .filter(|s| s.get("state").and_then(Value::as_str) == Some("AVAILABLE"))
        .filter_map(|s| match s.get("version") {
            Some(Value::String(v)) => Some(v.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .collect())
}

/// The metadata path of a model version (`version`: `Some(Ok(v))` a version, `Some(Err(l))` a
/// TF Serving label, `None` the server's default).
pub fn metadata_path(
    protocol: Protocol,
    model: &str,
    version: Option<Result<&str, &str>>,
) -> String {
    let model = encode(model);
    match (protocol, version) {
        (Protocol::KServeV2, None) => format!("/v2/models/{model}"),
        (Protocol::KServeV2, Some(Ok(v) | Err(v))) => {
            format!("/v2/models/{model}/versions/{}", encode(v))
        }
        (Protocol::TfServing, None) => format!("/v1/models/{model}/metadata"),
        (Protocol::TfServing, Some(Ok(v))) => {
            format!("/v1/models/{model}/versions/{}/metadata", encode(v))
        }
        (Protocol::TfServing, Some(Err(l))) => {
            format!("/v1/models/{model}/labels/{}/metadata", encode(l))
        }
    }
}

/// TF Serving's model status path (which versions are available).
pub fn tf_status_path(model: &str) -> String {
    format!("/v1/models/{}", encode(model))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (names arrive decoded).
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_names() {
        assert_eq!(
            metadata_path(Protocol::KServeV2, "a b/c", Some(Ok("1"))),
            "/v2/models/a%20b%2Fc/versions/1"
        );
        assert_eq!(
            metadata_path(Protocol::TfServing, "m", Some(Err("stable"))),
            "/v1/models/m/labels/stable/metadata"
        );
        assert_eq!(
            metadata_path(Protocol::TfServing, "m", None),
            "/v1/models/m/metadata"
        );
    }

    #[test]
    fn documents() {
        let v2: Value = serde_json::from_str(
            r#"{"name":"m","versions":["1","2"],"inputs":[{"name":"a","datatype":"FP32","shape":[1]},{"name":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(kserve_inputs(&v2).unwrap(), ["a", "b"]);
        assert_eq!(kserve_versions(&v2), ["1", "2"]);
        assert!(kserve_inputs(&serde_json::json!({"inputs": [{"n": 1}]})).is_err());
        let status: Value = serde_json::from_str(
            r#"{"model_version_status":[{"version":"2","state":"AVAILABLE"},{"version":"1","state":"END"}]}"#,
        )
        .unwrap();
        assert_eq!(tf_available_versions(&status).unwrap(), ["2"]);
    }
}
