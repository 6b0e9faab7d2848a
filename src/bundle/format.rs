//! Bundle format v1: the Rust types are the schema (`trimmer bundle schema` prints it), plus the
//! checks that JSON Schema cannot express (checksum, file name, uniqueness).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use super::checksum::{bundle_checksum, document_checksum};
use super::document::{Features, Json, Name};
use crate::config::{Mode, VerifyConfig, VerifyOverride};

/// The value of `format` for this version.
pub const FORMAT_V1: &str = "trimmer.bundle/v1";

/// One allowlist bundle artefact (`<bundle>.json`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "trimmer.bundle/v1")]
pub struct Bundle {
    /// Always `trimmer.bundle/v1`.
    #[schemars(regex(pattern = r"^trimmer\.bundle/v1$"))]
    pub format: String,
    /// Bundle name; must equal the file name without `.json`.
    #[schemars(length(min = 1))]
    pub bundle: String,
    /// Monotonic generation set by the pipeline (informational to the sidecar).
    pub generation: u64,
    /// RFC 3339 build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Provenance: pipeline run, model repository revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// One entry per model version.
    pub models: Vec<ModelEntry>,
    /// Per model: label → version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Lowercase hex SHA-256 of the JCS canonical document without this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// The allowlist of one model version.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Model name as it appears in score URLs (case-sensitive).
    #[schemars(length(min = 1))]
    pub model: String,
    /// Version as it appears in score URLs.
    #[schemars(length(min = 1))]
    pub version: String,
    /// Rollout stage of this version.
    #[serde(default)]
    pub stage: Stage,
    /// Input feature names the version uses; an empty list is treated as missing.
    pub features: Vec<String>,
    /// Trimming mode for this version; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Shadow verification settings for this version, over the configured `[verify]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyOverride>,
}

/// Rollout stage of a model version.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Served by the leaves now.
    #[default]
    Current,
    /// Known to the root ahead of the leaves serving it.
    Pending,
}

/// Why a bundle file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not JSON (truncated, half-written, garbage).
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    /// JSON, but not the v1 schema.
    #[error("schema violation: {0}")]
    Schema(String),
    /// The content does not match its `sha256`.
    #[error("checksum mismatch: file says {stated}, content hashes to {actual}")]
    Checksum {
        /// The `sha256` member.
        stated: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The `bundle` member disagrees with the file name.
    #[error("bundle field is `{field}` but the file is named `{file}.json`")]
    NameMismatch {
        /// The `bundle` member.
        field: String,
        /// The file name without `.json`.
        file: String,
    },
}

impl Bundle {
    /// Parses and validates a bundle file; `expected_name` is the file name without `.json`.
    pub fn parse(bytes: &[u8], expected_name: &str) -> Result<Bundle, BundleError> {
        BundleView::with(bytes, Some(expected_name), |view| view.to_owned())
    }

    /// Parses and validates a bundle document wherever it is stored (checksum and schema, not
    /// the file name).
    pub fn parse_document(bytes: &[u8]) -> Result<Bundle, BundleError> {
        BundleView::with(bytes, None, |view| view.to_owned())
    }

    /// Fills in `sha256` for the current content.
    pub fn seal(&mut self) {
        self.sha256 = None;
        // Serialising these types to a Value cannot fail.
        let value = serde_json::to_value(&*self).unwrap_or_default();
        self.sha256 = Some(bundle_checksum(&value));
    }
}

/// A validated bundle document whose strings borrow from the file's bytes: the one place the
/// v1 rules are checked, for the pipeline's owned [`Bundle`] and for the sidecar, which
/// interns the names straight from it and keeps no copy of the document. Its fields mirror
/// [`Bundle`]'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleView<'a> {
    /// Always `trimmer.bundle/v1`.
    #[serde(borrow)]
    pub format: Cow<'a, str>,
    /// Bundle name.
    #[serde(borrow)]
    pub bundle: Cow<'a, str>,
    /// Monotonic generation set by the pipeline.
    pub generation: u64,
    /// RFC 3339 build time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Provenance.
    #[serde(default)]
    pub source: Option<String>,
    /// One entry per model version.
    #[serde(borrow)]
    pub models: Vec<ModelEntryView<'a>>,
    /// Per model: label → version.
    #[serde(default)]
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The stated checksum.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// [`ModelEntry`], borrowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntryView<'a> {
    /// Model name.
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    /// Version.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// Rollout stage.
    #[serde(default)]
    pub stage: Stage,
    /// Input feature names.
    #[serde(borrow)]
    pub features: Features<'a>,
    /// Trimming mode, if the entry sets one.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Shadow verification settings, if the entry sets them.
    #[serde(default)]
    pub verify: Option<VerifyOverride>,
}

impl BundleView<'_> {
    /// Parses `bytes`, verifies the checksum, the schema and (when given) the file name, and
    /// hands the borrowed view to `f`. The parsed document lives only for the call.
    pub fn with<R>(
        bytes: &[u8],
        expected_name: Option<&str>,
        f: impl FnOnce(&BundleView<'_>) -> R,
    ) -> Result<R, BundleError> {
        let document = Json::parse(bytes).map_err(BundleError::Json)?;
        let stated = document.get("sha256").and_then(Json::as_str);
        if let Some(stated) = stated {
            let actual = document_checksum(&document);
            if stated != actual {
                return Err(BundleError::Checksum {
                    stated: stated.to_owned(),
                    actual,
                });
            }
        }
        let view =
            BundleView::deserialize(&document).map_err(|e| BundleError::Schema(e.to_string()))?;
        view.check_schema()?;
        if let Some(expected) = expected_name {
            if view.bundle != expected {
                return Err(BundleError::NameMismatch {
                    field: view.bundle.clone().into_owned(),
                    file: expected.to_owned(),
                });
            }
        }
        Ok(f(&view))
    }
}

impl<'a> BundleView<'a> {
    /// A view of an owned bundle (for code that builds bundles in memory).
    pub fn of(bundle: &'a Bundle) -> BundleView<'a> {
        BundleView {
            format: Cow::Borrowed(&bundle.format),
            bundle: Cow::Borrowed(&bundle.bundle),
            generation: bundle.generation,
            created_at: bundle.created_at.clone(),
            source: bundle.source.clone(),
            models: bundle
                .models
                .iter()
                .map(|m| ModelEntryView {
                    model: Cow::Borrowed(&m.model),
                    version: Cow::Borrowed(&m.version),
                    stage: m.stage,
                    features: Features::Names(
                        m.features.iter().map(|f| Name(Cow::Borrowed(f))).collect(),
                    ),
                    mode: m.mode,
                    verify: m.verify,
                })
                .collect(),
            labels: bundle.labels.clone(),
            sha256: bundle.sha256.clone(),
        }
    }

    /// The owned bundle.
    pub fn to_owned(&self) -> Bundle {
        Bundle {
            format: self.format.clone().into_owned(),
            bundle: self.bundle.clone().into_owned(),
            generation: self.generation,
            created_at: self.created_at.clone(),
            source: self.source.clone(),
            models: self
                .models
                .iter()
                .map(|m| ModelEntry {
                    model: m.model.clone().into_owned(),
                    version: m.version.clone().into_owned(),
                    stage: m.stage,
                    features: m.features.iter().map(|f| f.to_string()).collect(),
                    mode: m.mode,
                    verify: m.verify,
                })
                .collect(),
            labels: self.labels.clone(),
            sha256: self.sha256.clone(),
        }
    }

    /// Checks what the types alone do not: format tag, non-empty names, unique versions.
    fn check_schema(&self) -> Result<(), BundleError> {
        let fail = |why: String| Err(BundleError::Schema(why));
        if self.format != FORMAT_V1 {
            return fail(format!(
                "format is `{}`, expected `{FORMAT_V1}`",
                self.format
            ));
        }
        if self.bundle.is_empty() {
            return fail("`bundle` is empty".into());
        }
        if let Some(sha) = &self.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return fail("`sha256` must be 64 lowercase hex digits".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, entry) in self.models.iter().enumerate() {
            if entry.model.is_empty() || entry.version.is_empty() {
                return fail(format!(
                    "models[{i}]: `model` and `version` must not be empty"
                ));
            }
            if let Some(verify) = &entry.verify {
                let problems = VerifyConfig::default()
                    .with(verify)
                    .problems(&format!("models[{i}].verify."));
                if !problems.is_empty() {
                    return fail(problems.join("; "));
                }
            }
            if !seen.insert((&entry.model, &entry.version)) {
                return fail(format!(
                    "models[{i}]: {}@{} is listed twice",
                    entry.model, entry.version
                ));
            }
        }
        Ok(())
    }
}

/// The JSON Schema of format v1, generated from the types.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Bundle);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// `2026-11-22T01:02:03Z` for a system time (UTC, whole seconds).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "format": "trimmer.bundle/v1", "bundle": "homefeed", "generation": 42,
      "models": [
        {"model": "homefeed_ranker", "version": "17", "stage": "current", "features": ["f_a", "f_b"]},
        {"model": "homefeed_ranker", "version": "18", "stage": "pending", "features": ["f_a", "f_c"], "mode": "observe",
         "verify": {"sample": 0.05, "abs": 0.001}}
      ],
      "labels": {"homefeed_ranker": {"stable": "17", "canary": "18"}}
    }"#;

    #[test]
    fn parses_the_design_example() {
        let bundle = Bundle::parse(GOOD.as_bytes(), "homefeed").unwrap();
        assert_eq!(bundle.generation, 42);
        assert_eq!(bundle.models[1].mode, Some(Mode::Observe));
        assert_eq!(bundle.models[1].stage, Stage::Pending);
        let verify = bundle.models[1].verify.unwrap();
        assert_eq!(
            (verify.sample, verify.abs, verify.rel),
            (Some(0.05), Some(0.001), None)
        );
        assert_eq!(bundle.models[0].verify, None);
    }

    #[test]
    fn escaped_strings_parse_like_plain_ones() {
        let escaped = GOOD
            .replace("\"f_a\"", "\"f_\\u0061\"")
            .replace(
                "\"homefeed_ranker\", \"version\": \"17\"",
                "\"homefeed_r\\u0061nker\", \"version\": \"1\\u0037\"",
            )
            .replace("\"stable\": \"17\"", "\"st\\u0061ble\": \"1\\u0037\"");
        assert_ne!(escaped, GOOD);
        assert_eq!(
            Bundle::parse(escaped.as_bytes(), "homefeed").unwrap(),
            Bundle::parse(GOOD.as_bytes(), "homefeed").unwrap()
        );
    }

    #[test]
    fn sealed_bundles_verify_and_tampering_shows() {
        let mut bundle = Bundle::parse(GOOD.as_bytes(), "homefeed").unwrap();
        bundle.seal();
        let text = serde_json::to_string_pretty(&bundle).unwrap();
        assert!(Bundle::parse(text.as_bytes(), "homefeed").is_ok());
        // Compact, as the pipeline writes it: feature lists are read as their text.
        let compact = serde_json::to_vec(&bundle).unwrap();
        assert_eq!(Bundle::parse(&compact, "homefeed").unwrap(), bundle);
        let tampered = String::from_utf8(compact)
            .unwrap()
            .replace("\"f_b\"", "\"f_x\"");
        assert!(matches!(
            Bundle::parse(tampered.as_bytes(), "homefeed"),
            Err(BundleError::Checksum { .. })
        ));
        let tampered = text.replace("\"f_b\"", "\"f_x\"");
        assert!(matches!(
            Bundle::parse(tampered.as_bytes(), "homefeed"),
            Err(BundleError::Checksum { .. })
        ));
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            (
                GOOD.replace("trimmer.bundle/v1", "trimmer.bundle/v2"),
                "format is",
            ),
            (
                GOOD.replace("\"generation\": 42", "\"generation\": -1"),
                "schema violation",
            ),
            (
                GOOD.replace("\"stage\": \"pending\"", "\"stage\": \"canary\""),
                "schema violation",
            ),
            (GOOD.replace("\"labels\"", "\"lables\""), "unknown field"),
            (
                GOOD.replace("\"18\", \"stage\"", "\"17\", \"stage\""),
                "listed twice",
            ),
            (GOOD[..GOOD.len() / 2].to_owned(), "not valid JSON"),
            (
                GOOD.replace("\"sample\": 0.05", "\"sample\": 5"),
                "models[1].verify.sample",
            ),
            (
                GOOD.replace("\"sample\": 0.05", "\"max_inflight\": 5"),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = Bundle::parse(text.as_bytes(), "homefeed")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "{error} should contain {expected}"
            );
        }
        let error = Bundle::parse(GOOD.as_bytes(), "ads")
            .unwrap_err()
            .to_string();
        assert!(error.contains("file is named `ads.json`"), "{error}");
    }

    #[test]
    fn schema_names_the_fields() {
        let schema = json_schema();
        for field in [
            "format",
            "generation",
            "models",
            "features",
            "labels",
            "sha256",
            "pending",
            "verify",
            "noise_sample",
            "mismatches_to_disable",
        ] {
            assert!(schema.contains(field), "{field} missing from schema");
        }
    }
}

#[cfg(test)]
mod rfc3339_tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_305_600)),
            "2026-11-22T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_786_061)),
            "2000-02-29T01:01:01Z"
        );
    }
}
