//! The consolidated allowlist snapshot: every loaded bundle merged into one read-only map
//! (model → version → allowlist, labels, per-model union and latest), built off the request path
//! and swapped whole. Feature names are interned once; an allowlist is a bitset over their ids.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::classify::VersionSpec;
use crate::config::{Mode, TrimConfig, Unversioned, VerifyOverride};
use crate::trim::{Allowed, AllowlistId};

use super::format::Bundle;

/// A set of interned feature ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Bit `id` is set when feature `id` is allowed.
    bits: Box<[u64]>,
    /// Number of features allowed.
    len: usize,
}

impl Allowlist {
    fn from_ids(ids: impl IntoIterator<Item = u32>, universe: usize) -> Allowlist {
        let mut bits = vec![0u64; universe.div_ceil(64)].into_boxed_slice();
        for id in ids {
            bits[id as usize / 64] |= 1 << (id % 64);
        }
        let len = bits.iter().map(|w| w.count_ones() as usize).sum();
        Allowlist { bits, len }
    }

    fn union(&self, other: &Allowlist) -> Allowlist {
        let bits: Box<[u64]> = self
            .bits
            .iter()
            .zip(other.bits.iter())
            .map(|(a, b)| a | b)
            .collect();
        let len = bits.iter().map(|w| w.count_ones() as usize).sum();
        Allowlist { bits, len }
    }

    /// Whether feature `id` is allowed.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Number of features allowed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is allowed (such a list is never used to trim).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One of a snapshot's allowlists, as the engines ask it.
pub struct SnapshotAllowlist<'a> {
    snapshot: &'a AllowlistSnapshot,
    allowlist: &'a Allowlist,
}

impl Allowed for SnapshotAllowlist<'_> {
    #[inline]
    fn allows(&self, name: &str) -> bool {
        self.snapshot.allows(self.allowlist, name)
    }

    /// A snapshot never changes once built and its id is never reused, so the allowlist's
    /// address within it names it.
    fn identity(&self) -> Option<AllowlistId> {
        (self.snapshot.id != 0).then(|| AllowlistId {
            set: self.snapshot.id,
            member: std::ptr::from_ref(self.allowlist) as usize,
        })
    }
}

/// One model version's allowlist and resolved mode.
#[derive(Debug, Clone)]
pub struct VersionAllowlist {
    /// Allowed features.
    pub allowlist: Allowlist,
    /// Mode from the bundle, or the configured default.
    pub mode: Mode,
    /// The version this is (`None`: the union of a model's versions), which shadow
    /// verification keys its state by.
    pub version: Option<Box<str>>,
    /// Highest generation of the bundles listing this version: a new one re-arms a version
    /// that shadow verification switched to observe.
    pub generation: u64,
    /// The bundle entry's `verify` object (the first bundle's, on a conflict).
    pub verify: Option<Box<VerifyOverride>>,
}

/// Everything known about one model.
#[derive(Debug)]
pub struct ModelAllowlists {
    /// Model name.
    pub name: Box<str>,
    /// Non-empty allowlists by version.
    versions: HashMap<Box<str>, VersionAllowlist>,
    /// Label → version.
    labels: HashMap<Box<str>, Box<str>>,
    /// What an unversioned request uses (per `trim.unversioned`); `None` for passthrough.
    unversioned: Option<VersionAllowlist>,
}

/// Result of looking a request up.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// No bundle names the model.
    UnknownModel,
    /// The model is known, the version or label is not (or its allowlist is empty).
    UnknownVersion {
        /// Index of the model in the snapshot.
        model: usize,
    },
    /// Unversioned request under `unversioned = "passthrough"`.
    Passthrough {
        /// Index of the model in the snapshot.
        model: usize,
    },
    /// An allowlist to apply.
    Found {
        /// Index of the model in the snapshot.
        model: usize,
        /// The allowlist and its mode.
        entry: &'a VersionAllowlist,
    },
}

/// The merged, read-only view of every loaded bundle.
#[derive(Debug, Default)]
pub struct AllowlistSnapshot {
    /// Interned feature names → id.
    /// FxHash: keys are short, bundle-controlled strings looked up once per request feature;
    /// SipHash's flooding resistance buys nothing here (requests never insert).
    features: FxHashMap<Box<str>, u32>,
    /// Model name → index into `models`.
    model_index: FxHashMap<Box<str>, usize>,
    /// Models in name order.
    models: Vec<ModelAllowlists>,
    /// Number of non-empty model-version allowlists.
    allowlists: usize,
    /// Model versions (and labels) defined by more than one bundle.
    conflicts: usize,
    /// Unique per built snapshot (0: the empty default one), so that an allowlist is named by
    /// this and its address for as long as the process runs.
    id: u64,
}

impl AllowlistSnapshot {
    /// Merges `bundles` (in the given order; conflicts resolve to the union, labels to the first).
    /// Every allowlist shares one universe of ids, so unions are word-wise ORs.
    pub fn build<'a>(bundles: impl IntoIterator<Item = &'a Bundle>, trim: &TrimConfig) -> Self {
        let bundles: Vec<&Bundle> = bundles.into_iter().collect();
        let mut features: FxHashMap<Box<str>, u32> = FxHashMap::default();
        for bundle in &bundles {
            for entry in &bundle.models {
                for name in &entry.features {
                    let next = features.len() as u32;
                    features.entry(name.as_str().into()).or_insert(next);
                }
            }
        }
        let universe = features.len();
        let mut conflicts = 0;
        // model → version → (allowlist, mode), merged across bundles.
        let mut merged: std::collections::BTreeMap<&str, HashMap<&str, VersionAllowlist>> =
            Default::default();
        let mut labels: HashMap<&str, HashMap<&str, &str>> = HashMap::new();
        for bundle in &bundles {
            for entry in &bundle.models {
                let ids = entry
                    .features
                    .iter()
                    .filter_map(|f| features.get(f.as_str()).copied());
                let allowlist = Allowlist::from_ids(ids, universe);
                let mode = entry.mode.unwrap_or(trim.mode);
                let versions = merged.entry(entry.model.as_str()).or_default();
                match versions.get_mut(entry.version.as_str()) {
                    Some(existing) => {
                        conflicts += 1;
                        existing.allowlist = existing.allowlist.union(&allowlist);
                        existing.mode = existing.mode.min(mode);
                        existing.generation = existing.generation.max(bundle.generation);
                    }
                    None => {
                        versions.insert(
                            entry.version.as_str(),
                            VersionAllowlist {
                                allowlist,
                                mode,
                                version: Some(entry.version.as_str().into()),
                                generation: bundle.generation,
                                verify: entry.verify.map(Box::new),
                            },
                        );
                    }
                }
            }
            for (model, map) in &bundle.labels {
                let known = labels.entry(model.as_str()).or_default();
                for (label, version) in map {
                    match known.get(label.as_str()) {
                        Some(existing) if *existing != version.as_str() => conflicts += 1,
                        Some(_) => {}
                        None => {
                            known.insert(label.as_str(), version.as_str());
                        }
                    }
                }
            }
        }
        let mut allowlists = 0;
        let mut models = Vec::with_capacity(merged.len());
        for (name, versions) in merged {
            let versions: HashMap<Box<str>, VersionAllowlist> = versions
                .into_iter()
                .filter(|(_, v)| !v.allowlist.is_empty())
                .map(|(k, v)| (Box::from(k), v))
                .collect();
            allowlists += versions.len();
            let unversioned = unversioned_allowlist(&versions, trim.unversioned);
            let labels = labels
                .remove(name)
                .unwrap_or_default()
                .into_iter()
                .map(|(l, v)| (Box::from(l), Box::from(v)))
                .collect();
            models.push(ModelAllowlists {
                name: name.into(),
                versions,
                labels,
                unversioned,
            });
        }
        let model_index = models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        static BUILT: AtomicU64 = AtomicU64::new(1);
        AllowlistSnapshot {
            features,
            model_index,
            models,
            allowlists,
            conflicts,
            id: BUILT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// `allowlist` (one of this snapshot's) as the engines ask it.
    pub fn allowed<'a>(&'a self, allowlist: &'a Allowlist) -> SnapshotAllowlist<'a> {
        SnapshotAllowlist {
            snapshot: self,
            allowlist,
        }
    }

    /// Finds the allowlist for a request, per the lookup rules in DESIGN.md.
    pub fn lookup(&self, model: &str, version: &VersionSpec<'_>) -> Lookup<'_> {
        let Some(&index) = self.model_index.get(model) else {
            return Lookup::UnknownModel;
        };
        let m = &self.models[index];
        let entry = match version {
            VersionSpec::Version(v) => m.versions.get(v.as_ref()),
            VersionSpec::Label(l) => m.labels.get(l.as_ref()).and_then(|v| m.versions.get(v)),
            VersionSpec::Unversioned => match &m.unversioned {
                Some(entry) => Some(entry),
                None if m.versions.is_empty() => None,
                None => return Lookup::Passthrough { model: index },
            },
        };
        match entry {
            Some(entry) => Lookup::Found {
                model: index,
                entry,
            },
            None => Lookup::UnknownVersion { model: index },
        }
    }

    /// The id of an interned feature name.
    #[inline]
    pub fn feature_id(&self, name: &str) -> Option<u32> {
        self.features.get(name).copied()
    }

    /// Whether `allowlist` allows the feature called `name`.
    #[inline]
    pub fn allows(&self, allowlist: &Allowlist, name: &str) -> bool {
        self.feature_id(name)
            .is_some_and(|id| allowlist.contains(id))
    }

    /// The version a model's label names.
    pub fn label_version(&self, model: &str, label: &str) -> Option<&str> {
        let m = &self.models[*self.model_index.get(model)?];
        m.labels.get(label).map(|v| v.as_ref())
    }

    /// A model's versions with their allowed feature names (sorted), for the drift check.
    pub fn version_features(&self, model: &str) -> Vec<(&str, Vec<&str>)> {
        let Some(&index) = self.model_index.get(model) else {
            return Vec::new();
        };
        let mut names: Vec<&str> = vec![""; self.features.len()];
        for (name, &id) in &self.features {
            names[id as usize] = name;
        }
        let mut versions: Vec<(&str, Vec<&str>)> = self.models[index]
            .versions
            .iter()
            .map(|(version, entry)| {
                let mut allowed: Vec<&str> = (0..names.len() as u32)
                    .filter(|&id| entry.allowlist.contains(id))
                    .map(|id| names[id as usize])
                    .collect();
                allowed.sort_unstable();
                (version.as_ref(), allowed)
            })
            .collect();
        versions.sort_unstable();
        versions
    }

    /// Model names in index order (the index `Lookup` reports).
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|m| m.name.as_ref())
    }

    /// Number of non-empty model-version allowlists.
    pub fn allowlists(&self) -> usize {
        self.allowlists
    }

    /// Number of model versions or labels defined by more than one bundle.
    pub fn conflicts(&self) -> usize {
        self.conflicts
    }

    /// Number of distinct feature names.
    pub fn distinct_features(&self) -> usize {
        self.features.len()
    }
}

/// The allowlist for requests without a version, or `None` for passthrough (or no versions).
fn unversioned_allowlist(
    versions: &HashMap<Box<str>, VersionAllowlist>,
    policy: Unversioned,
) -> Option<VersionAllowlist> {
    match policy {
        Unversioned::Passthrough => None,
        Unversioned::Latest => {
            let numeric = versions.keys().all(|v| v.parse::<u64>().is_ok());
            versions
                .iter()
                .max_by(|a, b| compare_versions(numeric, a.0, b.0))
                .map(|(_, v)| v.clone())
        }
        // The union is no one version: verification neither samples nor contains it as one.
        Unversioned::Union => versions
            .values()
            .map(|v| VersionAllowlist {
                version: None,
                verify: None,
                ..v.clone()
            })
            .reduce(|acc, v| VersionAllowlist {
                allowlist: acc.allowlist.union(&v.allowlist),
                mode: acc.mode.min(v.mode),
                version: None,
                generation: acc.generation.max(v.generation),
                verify: None,
            }),
    }
}

/// Numeric when `numeric` (every version of the model is a number), otherwise lexicographic.
fn compare_versions(numeric: bool, a: &str, b: &str) -> std::cmp::Ordering {
    if numeric {
        a.parse::<u64>()
            .unwrap_or(0)
            .cmp(&b.parse::<u64>().unwrap_or(0))
    } else {
        a.cmp(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::ModelEntry;

    fn bundle(
        name: &str,
        models: &[(&str, &str, &[&str], Option<Mode>)],
        labels: &[(&str, &str, &str)],
    ) -> Bundle {
        let mut label_map =
            std::collections::BTreeMap::<String, std::collections::BTreeMap<String, String>>::new();
        for (model, label, version) in labels {
            label_map
                .entry((*model).into())
                .or_default()
                .insert((*label).into(), (*version).into());
        }
        Bundle {
            format: crate::bundle::format::FORMAT_V1.into(),
            bundle: name.into(),
            generation: 1,
            created_at: None,
            source: None,
            models: models
                .iter()
                .map(|(model, version, features, mode)| ModelEntry {
                    model: (*model).into(),
                    version: (*version).into(),
                    stage: Default::default(),
                    features: features.iter().map(|f| (*f).into()).collect(),
                    mode: *mode,
                    verify: None,
                })
                .collect(),
            labels: label_map,
            sha256: None,
        }
    }

    fn names(snapshot: &AllowlistSnapshot, lookup: Lookup<'_>) -> Vec<String> {
        let Lookup::Found { entry, .. } = lookup else {
            panic!("not found: {lookup:?}")
        };
        let mut names: Vec<String> = snapshot
            .features
            .keys()
            .filter(|f| snapshot.allows(&entry.allowlist, f))
            .map(|f| f.to_string())
            .collect();
        names.sort();
        names
    }

    fn v(version: &str) -> VersionSpec<'_> {
        VersionSpec::Version(version.into())
    }

    #[test]
    fn lookup_rules() {
        let a = bundle(
            "a",
            &[
                ("m", "1", &["x", "y"], None),
                ("m", "2", &["y", "z"], Some(Mode::Observe)),
                ("m", "10", &["w"], None),
                ("m", "3", &[], None),
            ],
            &[("m", "stable", "1"), ("m", "broken", "3")],
        );
        let b = bundle(
            "b",
            &[
                ("m", "1", &["q"], Some(Mode::Off)),
                ("n", "1", &["x"], None),
            ],
            &[],
        );
        let trim = TrimConfig::default();
        let s = AllowlistSnapshot::build([&a, &b], &trim);
        assert_eq!(s.conflicts(), 1);
        assert_eq!(s.allowlists(), 4, "empty allowlists are not counted");
        assert_eq!(
            names(&s, s.lookup("m", &v("1"))),
            ["q", "x", "y"],
            "conflict → union"
        );
        let Lookup::Found { entry, .. } = s.lookup("m", &v("1")) else {
            panic!()
        };
        assert_eq!(entry.mode, Mode::Off, "conflict → least aggressive mode");
        assert_eq!(
            names(&s, s.lookup("m", &VersionSpec::Label("stable".into()))),
            ["q", "x", "y"]
        );
        assert!(matches!(
            s.lookup("m", &VersionSpec::Label("canary".into())),
            Lookup::UnknownVersion { .. }
        ));
        assert!(matches!(
            s.lookup("m", &VersionSpec::Label("broken".into())),
            Lookup::UnknownVersion { .. }
        ));
        assert!(
            matches!(s.lookup("m", &v("3")), Lookup::UnknownVersion { .. }),
            "empty = missing"
        );
        assert!(matches!(
            s.lookup("m", &v("4")),
            Lookup::UnknownVersion { .. }
        ));
        assert!(
            matches!(s.lookup("M", &v("1")), Lookup::UnknownModel),
            "names are case-sensitive"
        );
        assert_eq!(
            names(&s, s.lookup("m", &VersionSpec::Unversioned)),
            ["q", "w", "x", "y", "z"]
        );
        let Lookup::Found { entry, .. } = s.lookup("m", &VersionSpec::Unversioned) else {
            panic!()
        };
        assert_eq!(
            entry.mode,
            Mode::Off,
            "union takes the least aggressive mode"
        );

        let latest = TrimConfig {
            unversioned: Unversioned::Latest,
            ..TrimConfig::default()
        };
        let s = AllowlistSnapshot::build([&a, &b], &latest);
        assert_eq!(
            names(&s, s.lookup("m", &VersionSpec::Unversioned)),
            ["w"],
            "10 > 2 numerically"
        );
        let pass = TrimConfig {
            unversioned: Unversioned::Passthrough,
            ..TrimConfig::default()
        };
        let s = AllowlistSnapshot::build([&a, &b], &pass);
        assert!(matches!(
            s.lookup("m", &VersionSpec::Unversioned),
            Lookup::Passthrough { .. }
        ));
    }

    #[test]
    fn names_are_interned_once() {
        let a = bundle(
            "a",
            &[("m", "1", &["x", "y"], None), ("m", "2", &["x", "y"], None)],
            &[],
        );
        let b = bundle("b", &[("n", "1", &["y", "x"], None)], &[]);
        let s = AllowlistSnapshot::build([&a, &b], &TrimConfig::default());
        assert_eq!(s.distinct_features(), 2);
    }
}
