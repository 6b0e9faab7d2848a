//! `bundle diff`: what changes between two generations, per model version.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bundle::format::{Bundle, ModelEntry, Stage};
use crate::config::{Mode, VerifyOverride};

/// Differences between two bundles.
#[derive(Debug, Default, Serialize)]
pub struct BundleDiff {
    /// Bundle name (of the new side).
    pub bundle: String,
    /// Generation of the old side.
    pub from_generation: u64,
    /// Generation of the new side.
    pub to_generation: u64,
    /// Model versions only the new side lists.
    pub added: Vec<VersionSummary>,
    /// Model versions only the old side lists.
    pub removed: Vec<VersionSummary>,
    /// Model versions both list, with what changed.
    pub changed: Vec<VersionChange>,
    /// Labels that were added, removed or moved.
    pub labels: Vec<LabelChange>,
}

/// A model version as a whole.
#[derive(Debug, Serialize)]
pub struct VersionSummary {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// Stage.
    pub stage: Stage,
    /// Mode, if set.
    pub mode: Option<Mode>,
    /// Number of features.
    pub features: usize,
    /// Shadow verification override, if set.
    pub verify: Option<VerifyOverride>,
}

/// What changed in one model version.
#[derive(Debug, Serialize)]
pub struct VersionChange {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// Features the new side adds.
    pub features_added: Vec<String>,
    /// Features the new side removes.
    pub features_removed: Vec<String>,
    /// `(old, new)` stage when it changed.
    pub stage: Option<(Stage, Stage)>,
    /// `(old, new)` mode when it changed.
    pub mode: Option<(Option<Mode>, Option<Mode>)>,
    /// `(old, new)` shadow verification override when it changed.
    pub verify: Option<(Option<VerifyOverride>, Option<VerifyOverride>)>,
}

/// A label that changed.
#[derive(Debug, Serialize)]
pub struct LabelChange {
    /// Model name.
    pub model: String,
    /// Label.
    pub label: String,
    /// Version before (`None`: new label).
    pub from: Option<String>,
    /// Version after (`None`: label removed).
    pub to: Option<String>,
}

/// Compares `old` with `new`.
pub fn diff(old: &Bundle, new: &Bundle) -> BundleDiff {
    let index = |b: &'_ Bundle| -> BTreeMap<(String, String), ModelEntry> {
        b.models
            .iter()
            .map(|m| ((m.model.clone(), m.version.clone()), m.clone()))
            .collect()
    };
    let (before, after) = (index(old), index(new));
    let summary = |m: &ModelEntry| VersionSummary {
        model: m.model.clone(),
        version: m.version.clone(),
        stage: m.stage,
        mode: m.mode,
        features: m.features.len(),
        verify: m.verify,
    };
    let mut d = BundleDiff {
        bundle: new.bundle.clone(),
        from_generation: old.generation,
        to_generation: new.generation,
        ..BundleDiff::default()
    };
    for (key, m) in &after {
        match before.get(key) {
            None => d.added.push(summary(m)),
            Some(o) => {
                let change = VersionChange {
                    model: m.model.clone(),
                    version: m.version.clone(),
                    features_added: m
                        .features
                        .iter()
                        .filter(|f| !o.features.contains(f))
                        .cloned()
                        .collect(),
                    features_removed: o
                        .features
                        .iter()
                        .filter(|f| !m.features.contains(f))
                        .cloned()
                        .collect(),
                    stage: (o.stage != m.stage).then_some((o.stage, m.stage)),
                    mode: (o.mode != m.mode).then_some((o.mode, m.mode)),
                    verify: (o.verify != m.verify).then_some((o.verify, m.verify)),
                };
                if !change.features_added.is_empty()
                    || !change.features_removed.is_empty()
                    || change.stage.is_some()
                    || change.mode.is_some()
                    || change.verify.is_some()
                {
                    d.changed.push(change);
                }
            }
        }
    }
    d.removed = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .map(|(_, m)| summary(m))
        .collect();
    let mut models: Vec<&String> = old.labels.keys().chain(new.labels.keys()).collect();
    models.sort();
    models.dedup();
    for model in models {
        let (o, n) = (old.labels.get(model), new.labels.get(model));
        let mut labels: Vec<&String> = o.into_iter().chain(n).flat_map(|m| m.keys()).collect();
        labels.sort();
        labels.dedup();
        for label in labels {
            let from = o.and_then(|m| m.get(label)).cloned();
            let to = n.and_then(|m| m.get(label)).cloned();
            if from != to {
                d.labels.push(LabelChange {
                    model: model.clone(),
                    label: label.clone(),
                    from,
                    to,
                });
            }
        }
    }
    d
}

impl BundleDiff {
    /// True when nothing changed but (perhaps) the generation.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.labels.is_empty()
    }

    /// A human-readable rendering, one line per change.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "bundle {}: generation {} -> {}\n",
            self.bundle, self.from_generation, self.to_generation
        );
        let mode =
            |m: Option<Mode>| m.map_or("default".to_owned(), |m| format!("{m:?}").to_lowercase());
        let stage = |s: Stage| format!("{s:?}").to_lowercase();
        for a in &self.added {
            out += &format!(
                "  + {}@{}  {}, mode {}, {} features{}\n",
                a.model,
                a.version,
                stage(a.stage),
                mode(a.mode),
                a.features,
                a.verify
                    .map(|v| format!(", verify {}", verify_text(Some(v))))
                    .unwrap_or_default()
            );
        }
        for r in &self.removed {
            out += &format!(
                "  - {}@{}  (was {}, {} features)\n",
                r.model,
                r.version,
                stage(r.stage),
                r.features
            );
        }
        for c in &self.changed {
            let mut parts = Vec::new();
            if let Some((from, to)) = c.stage {
                parts.push(format!("stage {} -> {}", stage(from), stage(to)));
            }
            if let Some((from, to)) = c.mode {
                parts.push(format!("mode {} -> {}", mode(from), mode(to)));
            }
            if let Some((from, to)) = c.verify {
                parts.push(format!(
                    "verify {} -> {}",
                    verify_text(from),
                    verify_text(to)
                ));
            }
            if !c.features_added.is_empty() {
                parts.push(format!("features added: {}", c.features_added.join(", ")));
            }
            if !c.features_removed.is_empty() {
                parts.push(format!(
                    "features removed: {}",
                    c.features_removed.join(", ")
                ));
            }
            out += &format!("  ~ {}@{}  {}\n", c.model, c.version, parts.join("; "));
        }
        for l in &self.labels {
            let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
            out += &format!(
                "  label {} of {}: {} -> {}\n",
                l.label,
                l.model,
                v(&l.from),
                v(&l.to)
            );
        }
        if self.is_empty() {
            out += "  no changes\n";
        }
        out
    }
}

/// A `verify` override as compact JSON (`default` when absent).
fn verify_text(verify: Option<VerifyOverride>) -> String {
    verify.map_or("default".to_owned(), |v| {
        serde_json::to_string(&v).unwrap_or_default()
    })
}
