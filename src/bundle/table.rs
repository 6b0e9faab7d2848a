//! What serving keeps of a bundle: its feature names interned to ids shared by every bundle, an
//! allowlist per model version as a bitset over those ids, and the metadata `/status` shows.
//! A table is built once per bundle content and shared, unchanged, by every snapshot that
//! includes it; the parsed document is dropped as soon as the table exists.

use std::sync::{Arc, Mutex};

use rustc_hash::FxBuildHasher;

use super::format::{BundleView, ModelEntryView, Stage};
use crate::config::{Mode, VerifyOverride};

/// Feature names interned to dense ids. A store keeps one instance for all its bundles, and
/// ids are only ever added, so bitsets from different bundles and generations agree on what
/// each bit means; a snapshot shares the instance it was built with.
#[derive(Debug, Clone, Default)]
pub struct FeatureNames {
    /// Name → id, and id → name. Looked up once per request feature (requests never insert),
    /// and once per distinct name of each bundle loaded.
    table: NameTable<Arc<str>>,
}

impl FeatureNames {
    /// The id of `name`, if interned.
    #[inline]
    pub fn id(&self, name: &str) -> Option<u32> {
        self.table.find(name, name_hash(name)).ok()
    }

    /// The name of `id`.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.table.names.get(id as usize).map(|n| n.as_ref())
    }

    /// Number of interned names (including names no loaded bundle uses any more).
    pub fn len(&self) -> usize {
        self.table.names.len()
    }

    /// True when nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.table.names.is_empty()
    }

    /// The id of `name`, interning it if new. The names are copied first only if a snapshot
    /// still shares them (copy on write), so a reload that adds no name copies nothing.
    pub fn intern(names: &mut Arc<FeatureNames>, name: &str) -> u32 {
        Self::intern_hashed(names, name, name_hash(name))
    }

    /// [`Self::intern`] for a name whose [`name_hash`] is known.
    fn intern_hashed(names: &mut Arc<FeatureNames>, name: &str, hash: u32) -> u32 {
        match names.table.find(name, hash) {
            Ok(id) => id,
            Err(slot) => Arc::make_mut(names).table.insert(slot, hash, name.into()),
        }
    }
}

/// The hash names are found by. FxHash: names are short, bundle-controlled strings looked
/// up once per request feature; SipHash's flooding resistance buys nothing here (requests
/// never insert).
#[inline]
fn name_hash(name: &str) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = FxBuildHasher.build_hasher();
    hasher.write(name.as_bytes());
    // The low half: FxHash rotates its best-mixed bits there.
    hasher.finish() as u32
}

/// Names numbered in the order they were added: an open-addressing table of ids, each
/// beside its name's hash, length and first and last eight bytes, so that a probe compares
/// a name of up to 16 bytes (feature names mostly are) without reading the name itself, and
/// without a call to `memcmp`.
#[derive(Debug, Clone)]
struct NameTable<S> {
    /// Slot → id + 1 (0: empty); a power of two, at most half full.
    slots: Vec<u32>,
    /// Id → what a probe compares.
    keys: Vec<NameKey>,
    /// Id → name.
    names: Vec<S>,
}

/// What identifies a name of up to 16 bytes, and tells most longer ones apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameKey {
    hash: u32,
    len: u32,
    /// Overlapping words (or halves, or bytes) that cover the whole of a short name.
    words: [u64; 2],
}

impl NameKey {
    #[inline]
    fn of(name: &str, hash: u32) -> NameKey {
        let b = name.as_bytes();
        let n = b.len();
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let half = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
        let words = match n {
            8.. => [word(0), word(n - 8)],
            4..=7 => [u64::from(half(0)) | u64::from(half(n - 4)) << 32, 0],
            _ => [b.iter().fold(0, |acc, &byte| acc << 8 | u64::from(byte)), 0],
        };
        NameKey {
            hash,
            len: n as u32,
            words,
        }
    }

    /// Whether equal keys mean equal names.
    #[inline]
    fn whole(&self) -> bool {
        self.len <= 16
    }
}

impl<S> Default for NameTable<S> {
    fn default() -> Self {
        NameTable {
            slots: vec![0; 1024],
            keys: Vec::new(),
            names: Vec::new(),
        }
    }
}

impl<S: AsRef<str>> NameTable<S> {
    /// The id of `name` (whose hash is `hash`), or the empty slot where it would go.
    #[inline]
    fn find(&self, name: &str, hash: u32) -> Result<u32, usize> {
        let key = NameKey::of(name, hash);
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            let id = match self.slots[slot] {
                0 => return Err(slot),
                id => id - 1,
            };
            if self.keys[id as usize] == key
                && (key.whole() || self.names[id as usize].as_ref() == name)
            {
                return Ok(id);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Adds `name` at `slot` (what [`Self::find`] returned for it) and returns its id.
    fn insert(&mut self, slot: usize, hash: u32, name: S) -> u32 {
        let id = self.names.len() as u32;
        self.keys.push(NameKey::of(name.as_ref(), hash));
        self.names.push(name);
        self.slots[slot] = id + 1;
        if self.names.len() * 2 > self.slots.len() {
            let mut slots = vec![0u32; self.slots.len() * 2];
            let mask = slots.len() - 1;
            for (id, key) in self.keys.iter().enumerate() {
                let mut slot = key.hash as usize & mask;
                while slots[slot] != 0 {
                    slot = (slot + 1) & mask;
                }
                slots[slot] = id as u32 + 1;
            }
            self.slots = slots;
        }
        id
    }

    /// The id of `name`, added if new.
    #[cfg(test)]
    fn intern(&mut self, name: S) -> u32 {
        let hash = name_hash(name.as_ref());
        self.intern_hashed(name, hash)
    }

    /// The id of `name`, whose [`name_hash`] is `hash`, added if new.
    #[inline]
    fn intern_hashed(&mut self, name: S, hash: u32) -> u32 {
        match self.find(name.as_ref(), hash) {
            Ok(id) => id,
            Err(slot) => self.insert(slot, hash, name),
        }
    }

    /// Each name with its hash, by id.
    fn hashed(&self) -> impl Iterator<Item = (u32, &S)> {
        self.keys.iter().map(|k| k.hash).zip(&self.names)
    }
}

/// A set of interned feature ids: a bitset, shared (not copied) by every snapshot and merged
/// view that uses it. Its words end at the highest id it holds, so two equal sets are equal
/// word for word whatever the number of names when each was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Bit `id` is set when feature `id` is allowed; the last word is never zero.
    bits: Arc<[u64]>,
    /// Number of features allowed.
    len: usize,
}

impl Allowlist {
    /// The set of `ids`.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Allowlist {
        let mut bits: Vec<u64> = Vec::new();
        for id in ids {
            set_bit(&mut bits, id);
        }
        Self::from_words(bits)
    }

    /// The set of `map[id]` for every `id` of this one.
    fn mapped(&self, map: &[u32]) -> Allowlist {
        let top = self.ids().map(|id| map[id as usize]).max();
        let mut bits = vec![0u64; top.map_or(0, |top| top as usize / 64 + 1)];
        for id in self.ids().map(|id| map[id as usize]) {
            bits[id as usize / 64] |= 1 << (id % 64);
        }
        Self::from_words(bits)
    }

    fn from_words(mut bits: Vec<u64>) -> Allowlist {
        while bits.last() == Some(&0) {
            bits.pop();
        }
        let len = bits.iter().map(|w| w.count_ones() as usize).sum();
        Allowlist {
            bits: bits.into(),
            len,
        }
    }

    /// Every feature any of `sets` allows.
    pub fn union_of<'a>(sets: impl IntoIterator<Item = &'a Allowlist>) -> Allowlist {
        let mut bits: Vec<u64> = Vec::new();
        for set in sets {
            if bits.len() < set.bits.len() {
                bits.resize(set.bits.len(), 0);
            }
            for (word, set) in bits.iter_mut().zip(set.bits.iter()) {
                *word |= set;
            }
        }
        Self::from_words(bits)
    }

    /// Every feature either allows.
    pub fn union(&self, other: &Allowlist) -> Allowlist {
        Self::union_of([self, other])
    }

    /// Whether feature `id` is allowed.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// The allowed ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let bit = word.trailing_zeros();
                    word &= word - 1;
                    i as u32 * 64 + bit
                })
            })
        })
    }

    /// Number of features allowed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is allowed (such a list is never used to trim).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `self` and `other` are the same allocation (not merely equal).
    pub fn shares_bits_with(&self, other: &Allowlist) -> bool {
        Arc::ptr_eq(&self.bits, &other.bits)
    }

    /// Bytes the bitset holds.
    pub fn heap_bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// Sets bit `id` of `bits`, growing it as needed.
#[inline]
fn set_bit(bits: &mut Vec<u64>, id: u32) {
    let word = id as usize / 64;
    if word >= bits.len() {
        bits.resize(word + 1, 0);
    }
    bits[word] |= 1 << (id % 64);
}

/// One bundle as serving needs it.
#[derive(Debug, PartialEq)]
pub struct BundleTable {
    /// Generation set by the pipeline.
    pub generation: u64,
    /// The bundle's `sha256` member, if it had one.
    pub sha256: Option<Box<str>>,
    /// Provenance.
    pub source: Option<Box<str>>,
    /// Build time: kept so that a new build of the same allowlists counts as a change, as it
    /// did when whole documents were compared.
    created_at: Option<Box<str>>,
    /// Models named by entries or labels, in name order.
    pub(super) models: Vec<TableModel>,
    /// Number of model-version entries.
    model_versions: usize,
    /// Every feature any entry lists (for the snapshot's count of distinct names).
    pub(super) used: Allowlist,
}

/// One model's part of a bundle.
#[derive(Debug, PartialEq)]
pub(super) struct TableModel {
    /// Model name (shared with every snapshot that indexes it).
    pub(super) name: Arc<str>,
    /// Its entries, in bundle order.
    pub(super) versions: Vec<TableVersion>,
    /// Label → version, by label.
    pub(super) labels: Vec<(Box<str>, Arc<str>)>,
}

/// One model version's entry.
#[derive(Debug, PartialEq)]
pub(super) struct TableVersion {
    /// Version.
    pub(super) version: Arc<str>,
    /// Rollout stage (informational; kept for change detection).
    stage: Stage,
    /// Mode the entry sets.
    pub(super) mode: Option<Mode>,
    /// Allowed features.
    pub(super) allowlist: Allowlist,
    /// The entry's shadow verification settings.
    pub(super) verify: Option<VerifyOverride>,
}

impl BundleTable {
    /// The table of a validated bundle, interning its feature names into `names`.
    pub fn from_view(view: &BundleView<'_>, names: &mut Arc<FeatureNames>) -> BundleTable {
        Self::from_view_with(view, |_, entry| {
            Allowlist::from_ids(
                entry
                    .features
                    .iter()
                    .map(|f| FeatureNames::intern(names, f)),
            )
        })
    }

    /// The table of a validated bundle on the shared `names`, locked only to add names that
    /// `known` (the names as they were when the scan began) lacks. A name `known` has keeps
    /// its id for good, so a reload, whose names are nearly all known, looks each up once and
    /// builds its bitsets straight away; the other names are first numbered within the bundle
    /// (a bundle repeats each name across its versions), so several bundles can be read at
    /// once and the shared table sees each new name once per bundle, not once per version.
    pub fn from_view_shared(
        view: &BundleView<'_>,
        known: &FeatureNames,
        names: &Mutex<Arc<FeatureNames>>,
    ) -> BundleTable {
        let mut local = NameTable::<&str>::default();
        // Per entry: its known ids as a bitset, and the local numbers of its other names.
        let mut listed: Vec<(Vec<u64>, Vec<u32>)> = view
            .models
            .iter()
            .map(|entry| {
                let (mut bits, mut new) = (Vec::new(), Vec::new());
                for f in entry.features.iter() {
                    let hash = name_hash(f);
                    match known.table.find(f, hash) {
                        Ok(id) => set_bit(&mut bits, id),
                        Err(_) => new.push(local.intern_hashed(f, hash)),
                    }
                }
                (bits, new)
            })
            .collect();
        let shared: Vec<u32> = if local.names.is_empty() {
            Vec::new()
        } else {
            let mut names = names
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            local
                .hashed()
                .map(|(hash, f)| FeatureNames::intern_hashed(&mut names, f, hash))
                .collect()
        };
        drop(local);
        Self::from_view_with(view, |i, _| {
            let (mut bits, new) = std::mem::take(&mut listed[i]);
            for local in new {
                set_bit(&mut bits, shared[local as usize]);
            }
            Allowlist::from_words(bits)
        })
    }

    /// The table of `view`, with `allowlist` giving the allowlist of each entry (by index).
    fn from_view_with<'v>(
        view: &'v BundleView<'_>,
        mut allowlist: impl FnMut(usize, &'v ModelEntryView<'_>) -> Allowlist,
    ) -> BundleTable {
        let mut models: std::collections::BTreeMap<&str, TableModel> = Default::default();
        let model = |name: &str| -> TableModel {
            TableModel {
                name: name.into(),
                versions: Vec::new(),
                labels: Vec::new(),
            }
        };
        let mut used: Vec<u64> = Vec::new();
        for (i, entry) in view.models.iter().enumerate() {
            let allowlist = allowlist(i, entry);
            if used.len() < allowlist.bits.len() {
                used.resize(allowlist.bits.len(), 0);
            }
            for (word, bits) in used.iter_mut().zip(allowlist.bits.iter()) {
                *word |= bits;
            }
            models
                .entry(&entry.model)
                .or_insert_with(|| model(&entry.model))
                .versions
                .push(TableVersion {
                    version: entry.version.as_ref().into(),
                    stage: entry.stage,
                    mode: entry.mode,
                    allowlist,
                    verify: entry.verify,
                });
        }
        for (name, labels) in &view.labels {
            models.entry(name).or_insert_with(|| model(name)).labels = labels
                .iter()
                .map(|(label, version)| (Box::from(label.as_str()), Arc::from(version.as_str())))
                .collect();
        }
        BundleTable {
            generation: view.generation,
            sha256: view.sha256.as_deref().map(Box::from),
            source: view.source.as_deref().map(Box::from),
            created_at: view.created_at.as_deref().map(Box::from),
            models: models.into_values().collect(),
            model_versions: view.models.len(),
            used: Allowlist::from_words(used),
        }
    }

    /// The same table with every id `i` replaced by `map[i]` (for names being compacted).
    pub fn remap(&self, map: &[u32]) -> BundleTable {
        let remap = |a: &Allowlist| a.mapped(map);
        BundleTable {
            generation: self.generation,
            sha256: self.sha256.clone(),
            source: self.source.clone(),
            created_at: self.created_at.clone(),
            models: self
                .models
                .iter()
                .map(|m| TableModel {
                    name: m.name.clone(),
                    versions: m
                        .versions
                        .iter()
                        .map(|v| TableVersion {
                            version: v.version.clone(),
                            stage: v.stage,
                            mode: v.mode,
                            allowlist: remap(&v.allowlist),
                            verify: v.verify,
                        })
                        .collect(),
                    labels: m.labels.clone(),
                })
                .collect(),
            model_versions: self.model_versions,
            used: remap(&self.used),
        }
    }

    /// The part of model `name`, if the bundle names it.
    pub(super) fn model(&self, name: &str) -> Option<&TableModel> {
        let at = self.models.binary_search_by(|m| (*m.name).cmp(name));
        at.ok().map(|at| &self.models[at])
    }

    /// Every feature any entry lists.
    pub fn used(&self) -> &Allowlist {
        &self.used
    }

    /// Number of model versions the bundle lists.
    pub fn model_versions(&self) -> usize {
        self.model_versions
    }

    /// Every allowlist of the table (for tests and measurements).
    pub fn allowlists(&self) -> impl Iterator<Item = &Allowlist> {
        self.models
            .iter()
            .flat_map(|m| m.versions.iter().map(|v| &v.allowlist))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitsets_end_at_their_highest_id_and_compare_by_content() {
        let a = Allowlist::from_ids([3, 200, 64]);
        assert_eq!(a.len(), 3);
        assert_eq!(a.heap_bytes(), 4 * 8, "words up to id 200 only");
        assert!(a.contains(3) && a.contains(64) && a.contains(200));
        assert!(!a.contains(4) && !a.contains(100_000));
        assert_eq!(a.ids().collect::<Vec<_>>(), [3, 64, 200]);
        let b = Allowlist::from_ids([1]);
        let u = a.union(&b);
        assert_eq!(u.ids().collect::<Vec<_>>(), [1, 3, 64, 200]);
        assert_eq!(b.union(&a), u, "union is symmetric across lengths");
        assert_eq!(Allowlist::from_ids([200, 64, 3, 3]), a);
        assert!(!Allowlist::from_ids([200, 64, 3]).shares_bits_with(&a));
        assert!(a.clone().shares_bits_with(&a), "a clone shares its bits");
        assert!(Allowlist::from_ids([]).is_empty());
    }

    #[test]
    fn the_name_table_finds_every_name_it_grew_past() {
        let names: Vec<String> = (0..5000)
            .map(|i| "x".repeat(i % 23) + &i.to_string())
            .collect();
        let mut table = NameTable::<&str>::default();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(table.intern(name), i as u32);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(table.intern(name), i as u32, "{name}");
            assert_eq!(table.find(&format!("{name}!"), name_hash(name)).ok(), None);
        }
        assert_eq!(table.names.len(), 5000);
        // Names of every length that differ in one byte, or only in length, are told apart.
        let mut table = NameTable::<String>::default();
        for len in 0..40 {
            let a: String = ('a'..='z').cycle().take(len).collect();
            let id = table.intern(a.clone());
            assert_eq!(table.find(&a, name_hash(&a)), Ok(id));
            for at in 0..len {
                let mut b = a.clone().into_bytes();
                b[at] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(table.find(&b, name_hash(&b)).is_err(), "{b}");
                // Even were the hashes to agree.
                assert!(table.find(&b, name_hash(&a)).is_err(), "{b}");
            }
            let longer = format!("{a}#");
            assert!(table.find(&longer, name_hash(&a)).is_err(), "{longer}");
        }
    }

    #[test]
    fn names_are_interned_once_and_copied_only_when_shared() {
        let mut names = Arc::new(FeatureNames::default());
        assert_eq!(FeatureNames::intern(&mut names, "x"), 0);
        assert_eq!(FeatureNames::intern(&mut names, "y"), 1);
        assert_eq!(FeatureNames::intern(&mut names, "x"), 0);
        let shared = names.clone();
        assert_eq!(FeatureNames::intern(&mut names, "y"), 1);
        assert!(Arc::ptr_eq(&names, &shared), "a known name copies nothing");
        assert_eq!(FeatureNames::intern(&mut names, "z"), 2);
        assert!(
            !Arc::ptr_eq(&names, &shared),
            "a new name copies shared names"
        );
        assert_eq!(shared.len(), 2, "the shared copy is untouched");
        assert_eq!((names.id("z"), names.name(1)), (Some(2), Some("y")));
    }
}
