//! Model signatures, the source of truth for allowlists, in the forms pipelines have at hand:
//! `module_info.json`, a TF Serving metadata response, a KServe V2 metadata response, and a
//! Triton `config.pbtxt`. Each yields the input names of one model version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::classify::Protocol;
use crate::signatures::metadata;

/// The inputs of one model version, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// Input names in the signature's order.
    pub inputs: Vec<String>,
    /// File read.
    pub file: PathBuf,
    /// Which form the file had.
    pub form: Form,
}

/// Signature file forms, in order of preference when two describe the same version (a
/// server's metadata beats a `config.pbtxt` on disk, which Triton may auto-complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Form {
    /// TF Serving `GET /v1/models/NAME/versions/N/metadata`.
    TfServingMetadata,
    /// KServe V2 `GET /v2/models/NAME[/versions/V]`.
    KServeMetadata,
    /// `{"model", "version", "input_names"}`.
    ModuleInfo,
    /// Triton model configuration (protobuf text format).
    TritonConfig,
}

/// What reading a signature directory found.
#[derive(Debug, Default)]
pub struct SignatureScan {
    /// One signature per model version.
    pub signatures: BTreeMap<(String, String), Signature>,
    /// Files or version directories that were skipped, each naming the file and why.
    pub warnings: Vec<String>,
}

/// Reads every signature under `dir` (files anywhere below it; model and version taken from
/// `dir/MODEL/VERSION/…` when the file does not carry them). `tf_signature` picks the TF
/// Serving signature (default `serving_default`).
pub fn scan(dir: &Path, tf_signature: &str) -> std::io::Result<SignatureScan> {
    let mut scan = SignatureScan::default();
    let mut files = Vec::new();
    let mut version_dirs = Vec::new();
    collect(dir, dir, 0, &mut files, &mut version_dirs)?;
    files.sort();
    for file in files {
        let relative: Vec<String> = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .parent()
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        match read(&file, &relative, tf_signature) {
            Ok(Some(signature)) => {
                let key = (signature.model.clone(), signature.version.clone());
                match scan.signatures.get(&key) {
                    Some(existing) if existing.form <= signature.form => {
                        scan.warnings.push(format!(
                            "{}: {}@{} is already described by {}; ignored",
                            file.display(),
                            key.0,
                            key.1,
                            existing.file.display()
                        ));
                    }
                    _ => {
                        scan.signatures.insert(key, signature);
                    }
                }
            }
            Ok(None) => {}
            Err(why) => scan
                .warnings
                .push(format!("{}: {why}; skipped", file.display())),
        }
    }
    for (model, version, path) in version_dirs {
        if !scan
            .signatures
            .contains_key(&(model.clone(), version.clone()))
        {
            scan.warnings.push(format!(
                "{}: no readable signature for {model}@{version}; version skipped",
                path.display()
            ));
        }
    }
    Ok(scan)
}

/// Files up to `dir/MODEL/VERSION/file`, and every `MODEL/VERSION` directory seen.
fn collect(
    root: &Path,
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    version_dirs: &mut Vec<(String, String, PathBuf)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if depth == 1 {
                let model = dir
                    .strip_prefix(root)
                    .unwrap_or(dir)
                    .to_string_lossy()
                    .into_owned();
                version_dirs.push((model, name, path.clone()));
            }
            if depth < 2 {
                collect(root, &path, depth + 1, files, version_dirs)?;
            }
        } else if name.ends_with(".json") || name.ends_with(".pbtxt") {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads one file; `Ok(None)` for JSON that is no signature form (left alone silently only
/// when it is not in a version directory).
fn read(file: &Path, relative: &[String], tf_signature: &str) -> Result<Option<Signature>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("unreadable ({e})"))?;
    let path_model = relative.first().cloned();
    let path_version = relative.get(1).cloned();
    let (form, model, version, inputs) = if file.extension().is_some_and(|e| e == "pbtxt") {
        let config = super::pbtxt::parse(&text).map_err(|e| format!("not protobuf text: {e}"))?;
        let model = config.scalar("name").map(str::to_owned);
        let inputs: Vec<String> = config
            .messages("input")
            .map(|input| {
                input
                    .scalar("name")
                    .map(str::to_owned)
                    .ok_or("an input has no name")
            })
            .collect::<Result<_, _>>()?;
        (Form::TritonConfig, model, None, inputs)
    } else {
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))?;
        if let Some(names) = doc.get("input_names") {
            let inputs = string_list(names).ok_or("`input_names` is not a list of strings")?;
            (
                Form::ModuleInfo,
                text_field(&doc["model"]),
                text_field(&doc["version"]),
                inputs,
            )
        } else if doc
            .pointer("/metadata/signature_def/signature_def")
            .is_some()
        {
            let inputs = metadata::tf_signature_inputs(&doc, tf_signature)?;
            let spec = &doc["model_spec"];
            (
                Form::TfServingMetadata,
                text_field(&spec["name"]),
                text_field(&spec["version"]),
                inputs,
            )
        } else if doc.get("inputs").is_some_and(Value::is_array) {
            let inputs = metadata::kserve_inputs(&doc)?;
            (Form::KServeMetadata, text_field(&doc["name"]), None, inputs)
        } else if path_version.is_some() {
            return Err("not a signature (no input_names, signature_def or inputs)".into());
        } else {
            return Ok(None);
        }
    };
    let model = model
        .or(path_model)
        .ok_or("no model name (neither in the file nor from MODEL/VERSION/)")?;
    let version = version
        .or(path_version)
        .ok_or("no version (neither in the file nor from MODEL/VERSION/)")?;
    Ok(Some(Signature {
        model,
        version,
        inputs,
        file: file.to_owned(),
        form,
    }))
}

/// A string, or an integer written as a number (versions are int64s, often strings).
fn text_field(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Asks a running leaf for the signature of `model@version`: KServe V2 metadata
/// (`GET /v2/models/NAME/versions/V`), else TF Serving's (`GET /v1/models/NAME/versions/V/metadata`,
/// the inputs of `tf_signature`). `leaf` is `http://host:port`.
pub async fn fetch_from_leaf(
    leaf: &str,
    model: &str,
    version: &str,
    tf_signature: &str,
) -> Result<Signature, String> {
    use http_body_util::BodyExt;
    let authority = crate::config::parse_endpoint(leaf)
        .map_err(|why| format!("--signatures-from {leaf}: {why}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut tried = Vec::new();
    for protocol in [Protocol::KServeV2, Protocol::TfServing] {
        let path = metadata::metadata_path(protocol, model, Some(Ok(version)));
        let url = format!("http://{authority}{path}");
        let request = http::Request::get(&url)
            .header("accept", "application/json")
            .body(Default::default())
            .map_err(|e| format!("{url}: {e}"))?;
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
                .await
                .map_err(|_| format!("{url}: no answer within 30 s"))?
                .map_err(|e| format!("{url}: {e}"))?;
        let status = answer.status();
        let body = http_body_util::Limited::new(answer.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        if status == http::StatusCode::NOT_FOUND {
            tried.push(format!("{url}: 404"));
            continue;
        }
        if !status.is_success() {
            return Err(format!("{url}: status {status}"));
        }
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))?;
        let (form, inputs) = match protocol {
            Protocol::KServeV2 => (Form::KServeMetadata, metadata::kserve_inputs(&doc)),
            Protocol::TfServing => (
                Form::TfServingMetadata,
                metadata::tf_signature_inputs(&doc, tf_signature),
            ),
        };
        return Ok(Signature {
            model: model.to_owned(),
            version: version.to_owned(),
            inputs: inputs.map_err(|e| format!("{url}: {e}"))?,
            file: PathBuf::from(url),
            form,
        });
    }
    Err(format!(
        "{model}@{version}: the leaf does not know it ({})",
        tried.join("; ")
    ))
}
