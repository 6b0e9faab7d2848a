//! The consolidated allowlist snapshot: every loaded bundle's table merged into one read-only
//! map (model → version → allowlist, labels, per-model union and latest), built off the request
//! path and swapped whole. A reload merges again only the models named by the tables that
//! changed; every other model keeps its merged view from the previous snapshot (the same
//! allocation), and so does the model index while the set of models stays the same, so a
//! reload costs what changed, not the fleet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::table::{BundleTable, FeatureNames, TableModel};
use crate::classify::VersionSpec;
use crate::config::{Mode, TrimConfig, Unversioned, VerifyOverride};
use crate::trim::{Allowed, AllowlistId};

use super::format::{Bundle, BundleView};
pub use super::table::Allowlist;

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

/// Everything known about one model, merged from the bundles that name it.
#[derive(Debug)]
pub struct ModelAllowlists {
    /// Model name.
    pub name: Arc<str>,
    /// Non-empty allowlists by version.
    versions: HashMap<Arc<str>, VersionAllowlist>,
    /// Label → version.
    labels: HashMap<Box<str>, Arc<str>>,
    /// What an unversioned request uses (per `trim.unversioned`); `None` for passthrough.
    unversioned: Option<VersionAllowlist>,
    /// Model versions and labels defined by more than one of its bundles.
    conflicts: usize,
    /// Whether any bundle lists a version of it (a model only labels name is not served).
    listed: bool,
    /// The tables it was merged from, in bundle order: what a reload merges again when one
    /// of them, or a new table naming the model, changes.
    sources: Vec<Arc<BundleTable>>,
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
    /// Interned feature names (shared with the store that built it).
    names: Arc<FeatureNames>,
    /// Model name → index into `models` (shared with the previous snapshot when its models
    /// are the same names in the same order).
    model_index: Arc<FxHashMap<Arc<str>, usize>>,
    /// Models in name order.
    models: Vec<Arc<ModelAllowlists>>,
    /// Models only labels name, in name order: not served, kept for their conflicts.
    unlisted: Vec<Arc<ModelAllowlists>>,
    /// The tables merged, in bundle order: the next snapshot merges again only the models
    /// named by tables that are not among these (or by these that are gone).
    tables: Vec<Arc<BundleTable>>,
    /// Number of non-empty model-version allowlists.
    allowlists: usize,
    /// Model versions (and labels) defined by more than one bundle.
    conflicts: usize,
    /// Distinct feature names the loaded bundles list.
    distinct_features: usize,
    /// The configured mode and unversioned policy the merges used (reuse needs the same).
    trim: Option<(Mode, Unversioned)>,
    /// Unique per built snapshot (0: the empty default one), so that an allowlist is named by
    /// this and its address for as long as the process runs.
    id: u64,
}

impl AllowlistSnapshot {
    /// Merges `bundles` (in the given order; conflicts resolve to the union, labels to the first).
    /// Every allowlist shares one universe of ids, so unions are word-wise ORs.
    pub fn build<'a>(bundles: impl IntoIterator<Item = &'a Bundle>, trim: &TrimConfig) -> Self {
        let mut names = Arc::new(FeatureNames::default());
        let tables: Vec<Arc<BundleTable>> = bundles
            .into_iter()
            .map(|b| Arc::new(BundleTable::from_view(&BundleView::of(b), &mut names)))
            .collect();
        Self::assemble(&tables, names, None, trim)
    }

    /// Merges `tables` (in bundle order, with ids from `names`) like [`Self::build`], taking
    /// from `previous` every model named by none of the tables that came or went since it was
    /// built: a reload that changed one bundle re-merges only that bundle's models.
    pub fn assemble(
        tables: &[Arc<BundleTable>],
        names: Arc<FeatureNames>,
        previous: Option<&AllowlistSnapshot>,
        trim: &TrimConfig,
    ) -> Self {
        let policy = (trim.mode, trim.unversioned);
        let previous = previous.filter(|p| p.trim == Some(policy));
        let mut models = Vec::new();
        let mut unlisted = Vec::new();
        let mut merged = Vec::new();
        match previous.and_then(|p| Some((p, TableChanges::between(&p.tables, tables)?))) {
            Some((previous, changes)) => {
                // Found by index, so that the models kept are not read, only shared.
                let mut remerged: Vec<usize> = (changes.models.iter())
                    .filter_map(|name| previous.model_index.get(*name).copied())
                    .collect();
                remerged.sort_unstable();
                let mut from = 0;
                for at in remerged {
                    models.extend_from_slice(&previous.models[from..at]);
                    from = at + 1;
                }
                models.extend_from_slice(&previous.models[from..]);
                unlisted.extend(
                    (previous.unlisted.iter())
                        .filter(|m| !changes.models.contains(&*m.name))
                        .cloned(),
                );
                // A changed model's bundles: those it had that are still here, and new ones.
                let position: FxHashMap<*const BundleTable, usize> = (tables.iter().enumerate())
                    .map(|(i, t)| (Arc::as_ptr(t), i))
                    .collect();
                for name in changes.models {
                    let old = previous.model(name).or_else(|| {
                        let at = previous.unlisted.binary_search_by(|m| (*m.name).cmp(name));
                        at.ok().map(|at| &previous.unlisted[at])
                    });
                    let mut at: Vec<usize> = (old.iter().flat_map(|m| &m.sources))
                        .chain(changes.came.iter().copied())
                        .filter_map(|t| position.get(&Arc::as_ptr(t)).copied())
                        .collect();
                    at.sort_unstable();
                    at.dedup();
                    let sources: Vec<_> = (at.into_iter())
                        .filter_map(|i| Some((&tables[i], tables[i].model(name)?)))
                        .collect();
                    merged.push(sources);
                }
            }
            None => {
                let mut by_model: BTreeMap<&str, Vec<_>> = BTreeMap::new();
                for table in tables {
                    for model in &table.models {
                        by_model
                            .entry(&model.name)
                            .or_default()
                            .push((table, model));
                    }
                }
                merged.extend(by_model.into_values());
            }
        }
        for sources in merged.into_iter().filter(|s| !s.is_empty()) {
            let model = Arc::new(ModelAllowlists::merge(&sources, trim));
            let into = if model.listed {
                &mut models
            } else {
                &mut unlisted
            };
            let at = into.partition_point(|m| m.name < model.name);
            into.insert(at, model);
        }
        let model_index = match previous {
            Some(p)
                if p.models
                    .iter()
                    .map(|m| &m.name)
                    .eq(models.iter().map(|m| &m.name)) =>
            {
                p.model_index.clone()
            }
            _ => Arc::new(
                models
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.name.clone(), i))
                    .collect(),
            ),
        };
        static BUILT: AtomicU64 = AtomicU64::new(1);
        AllowlistSnapshot {
            names,
            model_index,
            allowlists: models.iter().map(|m| m.versions.len()).sum(),
            conflicts: models.iter().chain(&unlisted).map(|m| m.conflicts).sum(),
            distinct_features: Allowlist::union_of(tables.iter().map(|t| &t.used)).len(),
            models,
            unlisted,
            tables: tables.to_vec(),
            trim: Some(policy),
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

    /// The merged view of `model`, if it is served.
    pub fn model(&self, model: &str) -> Option<&Arc<ModelAllowlists>> {
        self.model_index.get(model).map(|&i| &self.models[i])
    }

    /// The id of an interned feature name.
    #[inline]
    pub fn feature_id(&self, name: &str) -> Option<u32> {
        self.names.id(name)
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
        let mut versions: Vec<(&str, Vec<&str>)> = self.models[index]
            .versions
            .iter()
            .map(|(version, entry)| {
                let mut allowed: Vec<&str> = entry
                    .allowlist
                    .ids()
                    .filter_map(|id| self.names.name(id))
                    .collect();
                allowed.sort_unstable();
                (version.as_ref(), allowed)
            })
            .collect();
        versions.sort_unstable();
        versions
    }

    /// Whether `other` has the same models at the same indices (so per-model state indexed
    /// like one fits the other).
    pub fn same_models_as(&self, other: &AllowlistSnapshot) -> bool {
        Arc::ptr_eq(&self.model_index, &other.model_index)
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
        self.distinct_features
    }
}

impl ModelAllowlists {
    /// Merges one model's parts from its bundles, in bundle order.
    fn merge(sources: &[(&Arc<BundleTable>, &TableModel)], trim: &TrimConfig) -> Self {
        let mut versions: HashMap<Arc<str>, VersionAllowlist> = HashMap::new();
        let mut labels: HashMap<Box<str>, Arc<str>> = HashMap::new();
        let mut conflicts = 0;
        for (table, part) in sources {
            for entry in &part.versions {
                let mode = entry.mode.unwrap_or(trim.mode);
                match versions.get_mut(&entry.version) {
                    Some(existing) => {
                        conflicts += 1;
                        existing.allowlist = existing.allowlist.union(&entry.allowlist);
                        existing.mode = existing.mode.min(mode);
                        existing.generation = existing.generation.max(table.generation);
                    }
                    None => {
                        let allowlist = entry.allowlist.clone();
                        let version = VersionAllowlist {
                            allowlist,
                            mode,
                            version: Some(entry.version.as_ref().into()),
                            generation: table.generation,
                            verify: entry.verify.map(Box::new),
                        };
                        versions.insert(entry.version.clone(), version);
                    }
                }
            }
        }
        for (_, part) in sources {
            for (label, version) in &part.labels {
                match labels.get(label) {
                    Some(existing) if existing != version => conflicts += 1,
                    Some(_) => {}
                    None => {
                        labels.insert(label.clone(), version.clone());
                    }
                }
            }
        }
        let listed = !versions.is_empty();
        versions.retain(|_, v| !v.allowlist.is_empty());
        let unversioned = unversioned_allowlist(&versions, trim.unversioned);
        ModelAllowlists {
            name: sources
                .first()
                .map(|(_, m)| m.name.clone())
                .unwrap_or_default(),
            versions,
            labels,
            unversioned,
            conflicts,
            listed,
            sources: sources.iter().map(|(t, _)| Arc::clone(t)).collect(),
        }
    }

    /// Every allowlist this merge holds (versions and the unversioned one).
    pub fn allowlists(&self) -> impl Iterator<Item = &Allowlist> {
        self.versions
            .values()
            .chain(&self.unversioned)
            .map(|v| &v.allowlist)
    }
}

/// How two lists of tables (in bundle order) differ, by allocation.
struct TableChanges<'t> {
    /// Tables only the second list holds.
    came: Vec<&'t Arc<BundleTable>>,
    /// Models named by tables only one of the lists holds: the ones merged differently.
    models: BTreeSet<&'t str>,
}

impl<'t> TableChanges<'t> {
    /// `None` when the tables in both are not in the same order, which changes every merge
    /// that spans them, or when most tables are new: merging everything again is then
    /// cheaper than finding what to keep.
    fn between(before: &'t [Arc<BundleTable>], after: &'t [Arc<BundleTable>]) -> Option<Self> {
        let was: FxHashSet<*const BundleTable> = before.iter().map(Arc::as_ptr).collect();
        let is: FxHashSet<*const BundleTable> = after.iter().map(Arc::as_ptr).collect();
        let still = before.iter().map(Arc::as_ptr).filter(|t| is.contains(t));
        if !still.eq(after.iter().map(Arc::as_ptr).filter(|t| was.contains(t))) {
            return None;
        }
        let gone = before.iter().filter(|t| !is.contains(&Arc::as_ptr(t)));
        let came: Vec<_> = (after.iter())
            .filter(|t| !was.contains(&Arc::as_ptr(t)))
            .collect();
        if came.len() * 2 > after.len() {
            return None;
        }
        let models = (gone.chain(came.iter().copied()))
            .flat_map(|t| t.models.iter().map(|m| &*m.name))
            .collect();
        Some(TableChanges { came, models })
    }
}

/// The allowlist for requests without a version, or `None` for passthrough (or no versions).
fn unversioned_allowlist(
    versions: &HashMap<Arc<str>, VersionAllowlist>,
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
        let mut names: Vec<String> = (0..snapshot.names.len() as u32)
            .filter_map(|id| snapshot.names.name(id))
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

    /// Everything a lookup, `/status` or the drift check can see of a snapshot.
    fn seen(s: &AllowlistSnapshot) -> Vec<String> {
        let mut seen = vec![format!(
            "{} {} {}",
            s.allowlists(),
            s.conflicts(),
            s.distinct_features()
        )];
        for (i, model) in s.model_names().enumerate() {
            seen.push(format!("{i} {model} {:?}", s.version_features(model)));
            for label in ["stable", "canary"] {
                seen.push(format!("{label} {:?}", s.label_version(model, label)));
            }
            if let Lookup::Found { entry, .. } = s.lookup(model, &VersionSpec::Unversioned) {
                seen.push(format!(
                    "{:?} {:?} {}",
                    entry.allowlist, entry.mode, entry.generation
                ));
            }
        }
        seen
    }

    #[test]
    fn a_reload_merges_only_the_models_of_changed_tables() {
        let trim = TrimConfig::default();
        let mut names = Arc::new(FeatureNames::default());
        let mut table =
            |b: &Bundle| Arc::new(BundleTable::from_view(&BundleView::of(b), &mut names));
        // `shared` is in both a and c (a conflict); `tags` is only labelled (not served).
        let a = table(&bundle(
            "a",
            &[("shared", "1", &["x"], None), ("a", "1", &["y"], None)],
            &[("tags", "stable", "1")],
        ));
        let b = table(&bundle("b", &[("b", "1", &["z"], None)], &[]));
        let c = table(&bundle(
            "c",
            &[("shared", "1", &["w"], None), ("c", "2", &["x"], None)],
            &[("shared", "stable", "1"), ("tags", "stable", "2")],
        ));
        let c2 = table(&bundle(
            "c",
            &[
                ("shared", "1", &["v"], Some(Mode::Observe)),
                ("c", "3", &["x"], None),
            ],
            &[("tags", "canary", "2")],
        ));
        let d = table(&bundle(
            "d",
            &[("d", "1", &["q"], None), ("a", "2", &["q"], None)],
            &[],
        ));
        let full = |tables: &[Arc<BundleTable>]| {
            AllowlistSnapshot::assemble(tables, names.clone(), None, &trim)
        };
        let first = full(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(first.conflicts(), 2, "shared@1 and tags' stable label");
        for tables in [
            vec![a.clone(), b.clone(), c2.clone()],
            vec![a.clone(), c.clone()],
            vec![a.clone(), b.clone(), c.clone(), d.clone()],
            vec![b.clone(), c.clone()],
            vec![c.clone(), b.clone(), a.clone()],
        ] {
            let next = AllowlistSnapshot::assemble(&tables, names.clone(), Some(&first), &trim);
            assert_eq!(seen(&next), seen(&full(&tables)));
        }
        let next = AllowlistSnapshot::assemble(
            &[a.clone(), b.clone(), c2.clone()],
            names.clone(),
            Some(&first),
            &trim,
        );
        for (model, reused) in [("a", true), ("b", true), ("shared", false), ("c", false)] {
            let same = Arc::ptr_eq(first.model(model).unwrap(), next.model(model).unwrap());
            assert_eq!(same, reused, "{model}");
        }
        assert!(
            next.same_models_as(&first),
            "the same models at the same places"
        );
        let grown = AllowlistSnapshot::assemble(&[a, b, c, d], names.clone(), Some(&next), &trim);
        assert!(!grown.same_models_as(&next), "model d came");
    }
}
