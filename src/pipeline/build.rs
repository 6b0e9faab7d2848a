//! Building a bundle from signatures and a policy, and the safety invariants that `build` and
//! `validate` enforce so that a new artefact stays backwards compatible during rolling deploys.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use serde::Deserialize;

use super::signature::{self, Signature};
use crate::bundle::format::{Bundle, ModelEntry, Stage, FORMAT_V1};
use crate::config::{Mode, VerifyOverride};

/// The policy file: rollout stage, mode and labels per model version. Configuration as code,
/// validated against the signatures.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Per model.
    #[serde(default)]
    pub models: BTreeMap<String, ModelPolicy>,
}

/// Policy for one model.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    /// Label → version.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Per version.
    #[serde(default)]
    pub versions: BTreeMap<String, VersionPolicy>,
}

/// Policy for one model version.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicy {
    /// Rollout stage (default `current`).
    pub stage: Option<Stage>,
    /// Trimming mode (default: the sidecar's configured mode).
    pub mode: Option<Mode>,
    /// Shadow verification settings (default: the sidecar's `[verify]`).
    pub verify: Option<VerifyOverride>,
}

/// A `MODEL@VERSION` reference from the command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionRef {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
}

impl std::str::FromStr for VersionRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.rsplit_once('@') {
            Some((model, version)) if !model.is_empty() && !version.is_empty() => Ok(VersionRef {
                model: model.into(),
                version: version.into(),
            }),
            _ => Err(format!("`{s}` is not MODEL@VERSION")),
        }
    }
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.model, self.version)
    }
}

/// Everything `bundle build` takes.
#[derive(Debug)]
pub struct BuildInput<'a> {
    /// Bundle name.
    pub bundle: &'a str,
    /// Directory of signatures, if any.
    pub signatures: Option<&'a Path>,
    /// Signatures fetched from running leaves (`--signatures-from`); they win over files.
    pub fetched: Vec<Signature>,
    /// TF Serving signature to read.
    pub tf_signature: &'a str,
    /// Policy, if any.
    pub policy: Option<&'a Policy>,
    /// The previous generation, if any.
    pub previous: Option<&'a Bundle>,
    /// Versions that may disappear (and are left out).
    pub retire: &'a [VersionRef],
    /// Allow a version to become current without having been present before.
    pub allow_new_current: bool,
    /// Missing or unreadable signatures are errors rather than warnings.
    pub strict: bool,
    /// `created_at` to record (RFC 3339), if any.
    pub created_at: Option<String>,
    /// Provenance to record, if any.
    pub source: Option<String>,
}

/// A built bundle and the warnings met on the way.
#[derive(Debug)]
pub struct Built {
    /// The sealed bundle.
    pub bundle: Bundle,
    /// Skipped signatures and other remarks.
    pub warnings: Vec<String>,
}

/// Builds a sealed bundle, or every problem found.
pub fn build(input: &BuildInput<'_>) -> Result<Built, Vec<String>> {
    let mut scan = match input.signatures {
        Some(dir) => signature::scan(dir, input.tf_signature)
            .map_err(|e| vec![format!("cannot read {}: {e}", dir.display())])?,
        None => Default::default(),
    };
    for fetched in &input.fetched {
        let key = (fetched.model.clone(), fetched.version.clone());
        if let Some(file) = scan.signatures.get(&key) {
            scan.warnings.push(format!(
                "{}@{}: {} is replaced by the leaf's answer ({})",
                key.0,
                key.1,
                file.file.display(),
                fetched.file.display()
            ));
        }
        scan.signatures.insert(key, fetched.clone());
    }
    let mut problems = Vec::new();
    if input.strict {
        problems.extend(scan.warnings.iter().cloned());
    }
    let retired: HashSet<&VersionRef> = input.retire.iter().collect();
    for r in input.retire {
        let listed = input.previous.is_some_and(|p| {
            p.models
                .iter()
                .any(|m| m.model == r.model && m.version == r.version)
        });
        if !listed {
            problems.push(format!(
                "--retire {r}: the previous generation does not list it"
            ));
        }
    }
    let signatures: Vec<&Signature> = scan
        .signatures
        .values()
        .filter(|s| {
            !retired.contains(&VersionRef {
                model: s.model.clone(),
                version: s.version.clone(),
            })
        })
        .collect();
    let empty = Policy::default();
    let policy = input.policy.unwrap_or(&empty);
    problems.extend(check_policy(policy, &signatures));
    let mut models: Vec<ModelEntry> = signatures
        .iter()
        .map(|s| {
            let v = policy
                .models
                .get(&s.model)
                .and_then(|m| m.versions.get(&s.version));
            let mut features = s.inputs.clone();
            features.sort();
            ModelEntry {
                model: s.model.clone(),
                version: s.version.clone(),
                stage: v.and_then(|v| v.stage).unwrap_or_default(),
                features,
                mode: v.and_then(|v| v.mode),
                verify: v.and_then(|v| v.verify),
            }
        })
        .collect();
    models.sort_by(|a, b| {
        (a.model.as_str(), version_key(&a.version))
            .cmp(&(b.model.as_str(), version_key(&b.version)))
    });
    let labels = policy
        .models
        .iter()
        .filter(|(_, m)| !m.labels.is_empty())
        .map(|(name, m)| (name.clone(), m.labels.clone()))
        .collect();
    let mut bundle = Bundle {
        format: FORMAT_V1.to_owned(),
        bundle: input.bundle.to_owned(),
        generation: input.previous.map_or(1, |p| p.generation + 1),
        created_at: input.created_at.clone(),
        source: input.source.clone(),
        models,
        labels,
        sha256: None,
    };
    problems.extend(invariants(
        &bundle,
        input.previous,
        input.retire,
        input.allow_new_current,
    ));
    if !problems.is_empty() {
        return Err(problems);
    }
    bundle.seal();
    Ok(Built {
        bundle,
        warnings: scan.warnings,
    })
}

/// Numeric versions sort numerically, before any non-numeric ones (which sort as text).
fn version_key(version: &str) -> (u8, u64, &str) {
    match version.parse::<u64>() {
        Ok(n) => (0, n, ""),
        Err(_) => (1, 0, version),
    }
}

/// Every reference in the policy must name a model version that has a signature.
fn check_policy(policy: &Policy, signatures: &[&Signature]) -> Vec<String> {
    let known: BTreeSet<(&str, &str)> = signatures
        .iter()
        .map(|s| (s.model.as_str(), s.version.as_str()))
        .collect();
    let has_model = |m: &str| known.iter().any(|(model, _)| *model == m);
    let mut problems = Vec::new();
    for (model, m) in &policy.models {
        if !has_model(model) {
            problems.push(format!("policy: model `{model}` has no signature"));
            continue;
        }
        for version in m.versions.keys() {
            if !known.contains(&(model.as_str(), version.as_str())) {
                problems.push(format!("policy: {model}@{version} has no signature"));
            }
        }
        for (label, version) in &m.labels {
            if !known.contains(&(model.as_str(), version.as_str())) {
                problems.push(format!("policy: label `{label}` of `{model}` points to {model}@{version}, which has no signature"));
            }
        }
    }
    problems
}

/// The safety invariants, each violation with its own message. `previous` enables the
/// rolling-deploy checks.
pub fn invariants(
    bundle: &Bundle,
    previous: Option<&Bundle>,
    retire: &[VersionRef],
    allow_new_current: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut versions = HashSet::new();
    for entry in &bundle.models {
        let at = format!("{}@{}", entry.model, entry.version);
        if !versions.insert((entry.model.as_str(), entry.version.as_str())) {
            problems.push(format!("{at} is listed more than once"));
        }
        if entry.features.is_empty() {
            problems.push(format!("{at} has an empty allowlist (it would never be trimmed; drop it or fix its signature)"));
        }
        let mut names = HashSet::new();
        for feature in &entry.features {
            if !names.insert(feature.as_str()) {
                problems.push(format!("{at} lists feature `{feature}` more than once"));
            }
        }
    }
    for (model, labels) in &bundle.labels {
        for (label, version) in labels {
            if !versions.contains(&(model.as_str(), version.as_str())) {
                problems.push(format!("label `{label}` of `{model}` points to {model}@{version}, which the bundle does not list"));
            }
        }
    }
    let Some(previous) = previous else {
        return problems;
    };
    if previous.bundle != bundle.bundle {
        problems.push(format!(
            "the previous generation is bundle `{}`, not `{}`",
            previous.bundle, bundle.bundle
        ));
    }
    if bundle.generation <= previous.generation {
        problems.push(format!(
            "generation {} is not newer than the previous generation {}",
            bundle.generation, previous.generation
        ));
    }
    let retired: HashSet<(&str, &str)> = retire
        .iter()
        .map(|r| (r.model.as_str(), r.version.as_str()))
        .collect();
    let before: HashSet<(&str, &str)> = previous
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.version.as_str()))
        .collect();
    for old in &previous.models {
        let key = (old.model.as_str(), old.version.as_str());
        if !versions.contains(&key) && !retired.contains(&key) {
            problems.push(format!(
                "{}@{} was {} in generation {} and is missing; roots still send it during the rollout (retire it explicitly with --retire {}@{})",
                old.model,
                old.version,
                stage_name(old.stage),
                previous.generation,
                old.model,
                old.version
            ));
        }
    }
    if !allow_new_current {
        for entry in bundle.models.iter().filter(|m| m.stage == Stage::Current) {
            if !before.contains(&(entry.model.as_str(), entry.version.as_str())) {
                problems.push(format!(
                    "{}@{} becomes current but generation {} did not list it; ship it as pending first so roots learn it before leaves serve it (or pass --allow-new-current)",
                    entry.model, entry.version, previous.generation
                ));
            }
        }
    }
    problems
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Current => "current",
        Stage::Pending => "pending",
    }
}

/// Parses a policy file, reporting unknown keys and bad values.
pub fn read_policy(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
}

/// `created_at` from an explicit value or `SOURCE_DATE_EPOCH` (reproducible builds).
pub fn created_at(explicit: Option<String>) -> Result<Option<String>, String> {
    if explicit.is_some() {
        return Ok(explicit);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => {
            let secs: u64 = epoch
                .trim()
                .parse()
                .map_err(|_| format!("SOURCE_DATE_EPOCH `{epoch}` is not a number"))?;
            Ok(Some(crate::bundle::format::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )))
        }
        Err(_) => Ok(None),
    }
}
