//! Live signatures: a model's inputs learned from the leaf itself (KServe V2 and TF Serving
//! REST metadata), as a second allowlist layer under the bundles, and the drift check that
//! compares bundle allowlists with them. Per cluster, opt-in (`discover_signatures`,
//! `verify_signatures`). The request path only reads: a miss looks in the cache and, at most,
//! queues a fetch; [`worker`] makes every metadata request, off the request path, within the
//! cluster's budget. [`metadata`] reads the leaves' documents.
//!
//! gRPC: on an h2c cluster a KServe model's metadata is asked as the `ModelMetadata` RPC
//! first (the upstream client gives its answer in the REST document's shape), then over REST.
//! TF Serving's `GetModelMetadata` is not asked: an h2c TF Serving leaf without REST sees
//! every fetch fail (counted, negative-cached) and nothing change.

pub mod metadata;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::bundle::snapshot::{AllowlistSnapshot, Lookup};
use crate::classify::{Protocol, Target, VersionSpec};
use crate::config::{ms, ClusterConfig, Mode, OnDrift};
use crate::metrics::{ModelMetrics, SignatureMetrics};
use crate::trim::{tf_serving, Allowed, AllowlistId};

/// Which model version a signature describes, as a request named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyVersion {
    /// An explicit version.
    Version(Box<str>),
    /// A TF Serving label, resolved by the leaf.
    Label(Box<str>),
    /// No version: the union of the versions the leaf reports ready.
    Unversioned,
}

/// What a cached signature is the signature of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignatureKey {
    /// Which metadata API describes it.
    pub protocol: Protocol,
    /// Model name.
    pub model: Box<str>,
    /// Version, label or none.
    pub version: KeyVersion,
}

impl SignatureKey {
    /// The key a score request's target looks up.
    pub fn of(target: &Target<'_>) -> SignatureKey {
        SignatureKey {
            protocol: target.protocol,
            model: target.model.as_ref().into(),
            version: match &target.version {
                VersionSpec::Version(v) => KeyVersion::Version(v.as_ref().into()),
                VersionSpec::Label(l) => KeyVersion::Label(l.as_ref().into()),
                VersionSpec::Unversioned => KeyVersion::Unversioned,
            },
        }
    }
}

/// A model version's inputs as the leaf declares them: one set for KServe V2, one per
/// signature name for TF Serving. Immutable once built.
#[derive(Debug)]
pub struct LiveSignature {
    /// `(signature name, inputs)`; KServe's one set is named `""`.
    signatures: Vec<(Box<str>, FxHashSet<Box<str>>)>,
    /// Names this signature in [`AllowlistId`] (never reused).
    id: u64,
    /// Approximate memory held, for the cache's byte bound.
    bytes: usize,
}

impl LiveSignature {
    /// Builds a signature from `(signature name, input names)` pairs.
    pub fn new(signatures: Vec<(String, Vec<String>)>) -> LiveSignature {
        // Snapshot ids count up from 1; these count down from the top, so the two never meet.
        static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
        let mut bytes = 64;
        let signatures = signatures
            .into_iter()
            .map(|(name, inputs)| {
                bytes += name.len() + 64;
                let set: FxHashSet<Box<str>> = inputs
                    .into_iter()
                    .map(|i| {
                        bytes += i.len() + 32;
                        i.into_boxed_str()
                    })
                    .collect();
                (name.into_boxed_str(), set)
            })
            .collect();
        LiveSignature {
            signatures,
            id: NEXT.fetch_sub(1, Ordering::Relaxed),
            bytes,
        }
    }

    /// The union of several versions' signatures, signature by signature.
    pub fn union<'a>(parts: impl IntoIterator<Item = &'a LiveSignature>) -> LiveSignature {
        let mut merged: Vec<(String, Vec<String>)> = Vec::new();
        for part in parts {
            for (name, inputs) in &part.signatures {
                let slot = match merged.iter().position(|(n, _)| n.as_str() == name.as_ref()) {
                    Some(i) => i,
                    None => {
                        merged.push((name.to_string(), Vec::new()));
                        merged.len() - 1
                    }
                };
                for input in inputs {
                    if !merged[slot].1.iter().any(|i| i.as_str() == input.as_ref()) {
                        merged[slot].1.push(input.to_string());
                    }
                }
            }
        }
        LiveSignature::new(merged)
    }

    /// The inputs a request uses: KServe's one set, or the TF Serving signature named (the
    /// default one when `signature` is `None`).
    pub fn inputs(&self, signature: Option<&str>) -> Option<LiveAllowlist<'_>> {
        let set = match self.signatures.as_slice() {
            [(name, set)] if name.is_empty() => set,
            all => {
                let wanted = signature.unwrap_or(metadata::DEFAULT_TF_SIGNATURE);
                &all.iter().find(|(n, _)| n.as_ref() == wanted)?.1
            }
        };
        (!set.is_empty()).then_some(LiveAllowlist {
            inputs: set,
            id: self.id,
        })
    }

    /// Sorted input names of the default signature (KServe's set, TF's `serving_default`).
    pub fn default_inputs(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .inputs(None)
            .map(|l| l.inputs.iter().map(AsRef::as_ref).collect())
            .unwrap_or_default();
        names.sort_unstable();
        names
    }
}

/// One live signature as the engines ask it.
pub struct LiveAllowlist<'a> {
    inputs: &'a FxHashSet<Box<str>>,
    id: u64,
}

impl Allowed for LiveAllowlist<'_> {
    #[inline]
    fn allows(&self, name: &str) -> bool {
        self.inputs.contains(name)
    }

    /// The signature never changes once built and its id is never reused; the set's address
    /// tells its TF Serving signatures apart.
    fn identity(&self) -> Option<AllowlistId> {
        Some(AllowlistId {
            set: self.id,
            member: std::ptr::from_ref(self.inputs) as usize,
        })
    }
}

/// Where a live allowlist used for a request came from (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveSource {
    /// No bundle had the model version; discovery did.
    Discovered,
    /// A bundle had it but lacks inputs the leaf declares, and `on_drift = "live"`.
    Drift,
}

/// What the leaf's signatures decide for one request, on top of the bundle lookup.
pub enum LiveDecision {
    /// Nothing: the bundle lookup stands.
    None,
    /// Trim by the leaf's signature.
    Use(LiveUse),
    /// A drifted version under `on_drift = "observe"`: at most mode observe.
    Observe,
}

/// A live signature chosen for a request, with its metric handles.
pub struct LiveUse {
    /// The signature.
    pub signature: Arc<LiveSignature>,
    /// `signature_name` of a TF Serving body (`None`: the default signature).
    pub signature_name: Option<String>,
    /// The mode to trim with (a drifted version keeps its bundle mode).
    pub mode: Mode,
    /// `trimmer_live_signature_requests_total` for this model and source.
    pub counter: IntCounter,
    /// The model's request metrics when the model has a label (bundle or discovered set).
    pub metrics: Option<Arc<ModelMetrics>>,
}

impl LiveUse {
    /// The allowlist to trim with; `None` when the named signature has no inputs.
    pub fn allowed(&self) -> Option<LiveAllowlist<'_>> {
        self.signature.inputs(self.signature_name.as_deref())
    }
}

/// One cache slot.
enum Slot {
    /// A fetch is queued or running (single flight).
    Pending,
    /// The leaf answered with a signature.
    Ready {
        signature: Arc<LiveSignature>,
        fetched: Instant,
        /// A background refresh is queued or running.
        refreshing: bool,
    },
    /// 404, an error or an unreadable answer: not asked again before `until`.
    Failed { until: Instant },
}

struct Entry {
    slot: Slot,
    /// For least-recently-used eviction.
    used: Instant,
}

/// A model name discovery gave a label to, with its handles (created off the request path).
struct Labelled {
    metrics: Arc<ModelMetrics>,
    counter: IntCounter,
}

/// The cache and the budget, behind one short lock (taken on misses and discovered requests).
struct Cache {
    entries: HashMap<SignatureKey, Entry>,
    /// Bytes of the `Ready` signatures.
    bytes: usize,
    /// Metadata requests the budget still allows now.
    tokens: f64,
    /// When `tokens` was last topped up.
    refilled: Instant,
    /// Discovered model names with a label, at most `signature_cache_entries` for the life
    /// of the process (series are never removed, so this bounds them).
    labelled: HashMap<Box<str>, Labelled>,
}

/// The settings of one cluster's live signatures.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `discover_signatures`.
    pub discover: bool,
    /// `verify_signatures`.
    pub verify: bool,
    /// `signature_wait_ms`.
    #[serde(serialize_with = "as_ms")]
    pub wait: Duration,
    /// `on_drift`.
    pub on_drift: OnDrift,
    /// `signature_ttl_ms`.
    #[serde(serialize_with = "as_ms")]
    pub ttl: Duration,
    /// `signature_negative_ttl_ms`.
    #[serde(serialize_with = "as_ms")]
    pub negative_ttl: Duration,
    /// `signature_cache_entries`.
    pub max_entries: usize,
    /// `signature_cache_bytes`.
    pub max_bytes: usize,
    /// `metadata_requests_per_second`.
    pub per_second: u32,
    /// `verify_interval_ms`.
    #[serde(serialize_with = "as_ms")]
    pub verify_interval: Duration,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Fetch jobs waiting for the worker, at most (beyond them a miss is throttled).
const QUEUE: usize = 256;

/// One cluster's live signatures: the cache, the budget, the drift report.
pub struct LiveSignatures {
    /// Cluster name (metrics, logs).
    upstream: String,
    /// What the configuration asked for.
    pub settings: Settings,
    cache: Mutex<Cache>,
    /// Fetch jobs for the worker.
    jobs: mpsc::Sender<SignatureKey>,
    /// Taken by the worker when it starts.
    job_receiver: Mutex<Option<mpsc::Receiver<SignatureKey>>>,
    /// Woken whenever a fetch finishes (requests waiting up to `signature_wait_ms`).
    fetched: Notify,
    /// Woken when a bundle loads (the drift check runs).
    bundles_changed: Notify,
    /// The last drift check, swapped whole.
    drift: ArcSwap<DriftReport>,
    /// Handles for this cluster's families.
    stats: Stats,
}

/// Metric children of one cluster.
struct Stats {
    families: SignatureMetrics,
    throttled: IntCounter,
    /// `trimmer_live_signature_requests_total{model="_unknown",source="discovered"}`.
    unknown_discovered: IntCounter,
    entries: IntGauge,
    bytes: IntGauge,
}

impl LiveSignatures {
    /// The live signatures of a cluster that enables discovery or verification.
    pub fn new(config: &ClusterConfig, metrics: &SignatureMetrics) -> LiveSignatures {
        let (jobs, receiver) = mpsc::channel(QUEUE);
        let settings = Settings {
            discover: config.discover_signatures,
            verify: config.verify_signatures,
            wait: ms(config.signature_wait_ms),
            on_drift: config.on_drift,
            ttl: ms(config.signature_ttl_ms),
            negative_ttl: ms(config.signature_negative_ttl_ms),
            max_entries: config.signature_cache_entries,
            max_bytes: config.signature_cache_bytes,
            per_second: config.metadata_requests_per_second,
            verify_interval: ms(config.verify_interval_ms),
        };
        let name = config.name.as_str();
        let stats = Stats {
            throttled: metrics.fetches.with_label_values(&[name, "throttled"]),
            unknown_discovered: metrics
                .live_requests
                .with_label_values(&[crate::metrics::UNKNOWN_MODEL, "discovered"]),
            entries: metrics.cache_entries.with_label_values(&[name]),
            bytes: metrics.cache_bytes.with_label_values(&[name]),
            families: metrics.clone(),
        };
        LiveSignatures {
            upstream: config.name.clone(),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                bytes: 0,
                tokens: f64::from(settings.per_second),
                refilled: Instant::now(),
                labelled: HashMap::new(),
            }),
            settings,
            jobs,
            job_receiver: Mutex::new(Some(receiver)),
            fetched: Notify::new(),
            bundles_changed: Notify::new(),
            drift: ArcSwap::default(),
            stats,
        }
    }

    /// Asks for a drift check (a bundle loaded).
    pub fn bundles_changed(&self) {
        self.bundles_changed.notify_one();
    }

    /// What the leaf's signatures decide for a request, given the bundle lookup: a miss
    /// filled by a discovered signature (queueing a fetch when there is none), or a drifted
    /// bundle version replaced or contained per `on_drift`.
    pub fn resolve(
        &self,
        snapshot: &AllowlistSnapshot,
        lookup: &Lookup<'_>,
        target: &Target<'_>,
        body: &[u8],
        default_mode: Mode,
    ) -> LiveDecision {
        match lookup {
            Lookup::UnknownModel | Lookup::UnknownVersion { .. } if self.settings.discover => {
                match self.discovered(target) {
                    Some((signature, labelled)) => LiveDecision::Use(LiveUse {
                        signature_name: signature_name(target, body),
                        signature,
                        mode: default_mode,
                        counter: labelled.as_ref().map_or_else(
                            || self.stats.unknown_discovered.clone(),
                            |l| l.counter.clone(),
                        ),
                        metrics: labelled.map(|l| l.metrics),
                    }),
                    None => LiveDecision::None,
                }
            }
            Lookup::Found { entry, .. }
                if self.settings.verify && self.settings.on_drift != OnDrift::Ignore =>
            {
                let report = self.drift.load();
                let drifted = match &target.version {
                    VersionSpec::Version(v) => report.version(&target.model, v),
                    VersionSpec::Label(l) => snapshot
                        .label_version(&target.model, l)
                        .and_then(|v| report.version(&target.model, v)),
                    VersionSpec::Unversioned => report.unversioned(&target.model),
                };
                let Some(live) = drifted else {
                    return LiveDecision::None;
                };
                match (self.settings.on_drift, live) {
                    (OnDrift::Live, Some((signature, counter))) => LiveDecision::Use(LiveUse {
                        signature_name: signature_name(target, body),
                        signature,
                        mode: entry.mode,
                        counter,
                        metrics: None,
                    }),
                    // No live signature to trim by (the unversioned union is incomplete):
                    // containment is the safe side.
                    _ => LiveDecision::Observe,
                }
            }
            _ => LiveDecision::None,
        }
    }

    /// The discovered signature for a request's model version, if cached; queues a fetch
    /// (within the budget) when there is none or it is due for refresh.
    fn discovered(&self, target: &Target<'_>) -> Option<(Arc<LiveSignature>, Option<Labelled>)> {
        let key = SignatureKey::of(target);
        let now = Instant::now();
        let mut cache = self.lock();
        let (found, queue) = match cache.entries.get_mut(&key) {
            Some(entry) => {
                entry.used = now;
                match &mut entry.slot {
                    Slot::Ready {
                        signature,
                        fetched,
                        refreshing,
                    } => {
                        let due = !*refreshing && now.duration_since(*fetched) >= self.settings.ttl;
                        let signature = signature.clone();
                        (Some(signature), due)
                    }
                    Slot::Pending => (None, false),
                    Slot::Failed { until } => (None, now >= *until),
                }
            }
            None => (None, true),
        };
        if queue && cache.take_token(now, self.settings.per_second) {
            if self.jobs.try_send(key.clone()).is_ok() {
                match cache.entries.get_mut(&key) {
                    Some(Entry {
                        slot: Slot::Ready { refreshing, .. },
                        ..
                    }) => *refreshing = true,
                    Some(entry) => entry.slot = Slot::Pending,
                    None => {
                        cache.entries.insert(
                            key.clone(),
                            Entry {
                                slot: Slot::Pending,
                                used: now,
                            },
                        );
                        self.evict(&mut cache);
                    }
                }
            } else {
                self.stats.throttled.inc();
            }
        } else if queue {
            self.stats.throttled.inc();
        }
        let signature = found?;
        let labelled = cache.labelled.get(&key.model).map(|l| Labelled {
            metrics: l.metrics.clone(),
            counter: l.counter.clone(),
        });
        Some((signature, labelled))
    }

    /// Waits, at most `signature_wait_ms`, for a request's signature to be discovered
    /// (queueing its fetch); returns at once when it is cached, failed or throttled.
    pub async fn wait_for(&self, target: &Target<'_>) {
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        let key = SignatureKey::of(target);
        // Looks it up as a request would, queueing the fetch.
        self.discovered(target);
        loop {
            let notified = self.fetched.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let slot = self
                .lock()
                .entries
                .get(&key)
                .map(|e| matches!(e.slot, Slot::Pending));
            if slot != Some(true) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Stores what a fetch found and wakes waiting requests.
    fn finish(
        &self,
        key: SignatureKey,
        result: Result<Arc<LiveSignature>, ()>,
        label: Option<Labelled>,
    ) {
        let now = Instant::now();
        let mut cache = self.lock();
        if let Some(Labelled { metrics, counter }) = label {
            if cache.labelled.len() < self.settings.max_entries {
                cache
                    .labelled
                    .entry(key.model.clone())
                    .or_insert(Labelled { metrics, counter });
            }
        }
        let slot = match result {
            Ok(signature) => {
                cache.bytes += signature.bytes;
                Slot::Ready {
                    signature,
                    fetched: now,
                    refreshing: false,
                }
            }
            Err(()) => match cache.entries.get_mut(&key) {
                // A refresh that failed keeps the signature it had: the leaf said it before,
                // and the next refresh is due after the negative TTL.
                Some(Entry {
                    slot:
                        Slot::Ready {
                            fetched,
                            refreshing,
                            ..
                        },
                    ..
                }) => {
                    *refreshing = false;
                    *fetched =
                        now - self.settings.ttl + self.settings.negative_ttl.min(self.settings.ttl);
                    drop(cache);
                    self.fetched.notify_waiters();
                    return;
                }
                _ => Slot::Failed {
                    until: now + self.settings.negative_ttl,
                },
            },
        };
        let old = cache.entries.insert(key, Entry { slot, used: now });
        if let Some(Entry {
            slot: Slot::Ready { signature, .. },
            ..
        }) = old
        {
            cache.bytes -= signature.bytes;
        }
        self.evict(&mut cache);
        drop(cache);
        self.fetched.notify_waiters();
    }

    /// Drops least-recently-used entries (never pending ones) while over either bound.
    fn evict(&self, cache: &mut Cache) {
        while cache.entries.len() > self.settings.max_entries
            || cache.bytes > self.settings.max_bytes
        {
            let victim = cache
                .entries
                .iter()
                .filter(|(_, e)| !matches!(e.slot, Slot::Pending))
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(Entry {
                slot: Slot::Ready { signature, .. },
                ..
            }) = cache.entries.remove(&victim)
            {
                cache.bytes -= signature.bytes;
            }
        }
        self.stats.entries.set(cache.entries.len() as i64);
        self.stats.bytes.set(cache.bytes as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `trimmer_live_signature_requests_total` child for a model and source (looked up
    /// off the request path, or once for `_unknown`).
    fn counter(&self, model: &str, source: LiveSource) -> IntCounter {
        let source = match source {
            LiveSource::Discovered => "discovered",
            LiveSource::Drift => "drift",
        };
        self.stats
            .families
            .live_requests
            .with_label_values(&[model, source])
    }

    /// What `/status` shows: settings, cache size, the drift report.
    pub fn status(&self) -> serde_json::Value {
        let (entries, bytes, ready, failed) = {
            let cache = self.lock();
            let ready = cache
                .entries
                .values()
                .filter(|e| matches!(e.slot, Slot::Ready { .. }))
                .count();
            let failed = cache
                .entries
                .values()
                .filter(|e| matches!(e.slot, Slot::Failed { .. }))
                .count();
            (cache.entries.len(), cache.bytes, ready, failed)
        };
        let report = self.drift.load();
        serde_json::json!({
            "upstream": self.upstream,
            "settings": self.settings,
            "cache": {"entries": entries, "bytes": bytes, "signatures": ready, "failures": failed},
            "drift": report.status(self.settings.on_drift),
        })
    }
}

impl Cache {
    /// Takes one metadata request from the budget (`per_second`, a burst of as many).
    fn take_token(&mut self, now: Instant, per_second: u32) -> bool {
        let rate = f64::from(per_second);
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `signature_name` of a TF Serving body (KServe has none).
fn signature_name(target: &Target<'_>, body: &[u8]) -> Option<String> {
    match target.protocol {
        Protocol::TfServing => tf_serving::signature_name(body),
        _ => None,
    }
}

/// One bundle version compared with the leaf.
#[derive(Debug, Clone, Serialize)]
pub struct VersionDrift {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// Inputs the leaf declares that the allowlist lacks (trimming them breaks the model).
    pub missing: Vec<String>,
    /// Allowlist entries the leaf does not declare (harmless).
    pub extra: Vec<String>,
    /// When `missing` was first seen non-empty (RFC 3339), while it stays so.
    pub since: Option<String>,
    /// The leaf's signature.
    #[serde(skip)]
    pub live: Arc<LiveSignature>,
}

/// What the last drift check found, swapped whole.
#[derive(Default)]
pub struct DriftReport {
    /// Every version checked, by (model, version).
    versions: HashMap<(String, String), VersionDrift>,
    /// Per model: any version missing inputs, and the union of the versions' live signatures
    /// (`None` when some version could not be checked), with its `drift` counter.
    models: HashMap<String, (bool, Option<Arc<LiveSignature>>, IntCounter)>,
    /// Versions that could not be checked, with why.
    unchecked: Vec<(String, String, String)>,
    /// When the check finished.
    checked_at: Option<SystemTime>,
}

/// A drifted version's live signature and its counter, when there is one to trim by.
type DriftLive = Option<(Arc<LiveSignature>, IntCounter)>;

impl DriftReport {
    /// `Some` when the version misses inputs.
    fn version(&self, model: &str, version: &str) -> Option<DriftLive> {
        let drift = self
            .versions
            .get(&(model.to_owned(), version.to_owned()))
            .filter(|d| !d.missing.is_empty())?;
        let counter = self.models.get(model).map(|m| m.2.clone())?;
        Some(Some((drift.live.clone(), counter)))
    }

    /// `Some` when any version of the model misses inputs.
    fn unversioned(&self, model: &str) -> Option<DriftLive> {
        let (_, union, counter) = self.models.get(model).filter(|(drifted, ..)| *drifted)?;
        Some(union.clone().map(|u| (u, counter.clone())))
    }

    fn status(&self, on_drift: OnDrift) -> serde_json::Value {
        let action = match on_drift {
            OnDrift::Live => "trimmed by the leaf's live signature",
            OnDrift::Observe => "contained: mode observe (not trimmed)",
            OnDrift::Ignore => "reported only",
        };
        let mut versions: Vec<&VersionDrift> = self.versions.values().collect();
        versions.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        let versions: Vec<serde_json::Value> = versions
            .into_iter()
            .map(|d| {
                let drifted = !d.missing.is_empty();
                serde_json::json!({
                    "model": d.model,
                    "version": d.version,
                    "missing": d.missing,
                    "extra": d.extra,
                    "since": d.since,
                    "action": if drifted { action } else { "none" },
                    "rearm": if drifted {
                        "publish a bundle whose allowlist for this version includes the missing inputs; the next check (on load, or every verify_interval_ms) clears it"
                    } else { "" },
                })
            })
            .collect();
        let unchecked: Vec<serde_json::Value> = self
            .unchecked
            .iter()
            .map(|(m, v, why)| serde_json::json!({"model": m, "version": v, "error": why}))
            .collect();
        serde_json::json!({
            "checked_at": self.checked_at.map(crate::bundle::format::rfc3339),
            "versions": versions,
            "unchecked": unchecked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn live(
        adjust: impl FnOnce(&mut ClusterConfig),
    ) -> (LiveSignatures, mpsc::Receiver<SignatureKey>) {
        let mut config = ClusterConfig {
            name: "c".into(),
            discover_signatures: true,
            ..ClusterConfig::default()
        };
        adjust(&mut config);
        let metrics = crate::metrics::Metrics::new().unwrap();
        let live = LiveSignatures::new(&config, &metrics.signatures);
        let jobs = live.job_receiver.lock().unwrap().take().unwrap();
        (live, jobs)
    }

    fn signature(inputs: &[&str]) -> Arc<LiveSignature> {
        let inputs = inputs.iter().map(|i| (*i).to_owned()).collect();
        Arc::new(LiveSignature::new(vec![(String::new(), inputs)]))
    }

    fn target(model: &str) -> Target<'_> {
        // Leaked: a test's handful of paths.
        let path: &'static str = Box::leak(format!("/v2/models/{model}/versions/1/infer").into());
        classify(path).unwrap()
    }

    #[test]
    fn one_fetch_per_model_version_then_the_answer_is_used() {
        let (live, mut jobs) = live(|_| {});
        let t = target("m");
        assert!(live.discovered(&t).is_none());
        assert!(live.discovered(&t).is_none());
        let key = jobs.try_recv().unwrap();
        assert!(jobs.try_recv().is_err(), "single flight");
        live.finish(key, Ok(signature(&["a", "b"])), None);
        let (found, label) = live.discovered(&t).unwrap();
        assert!(label.is_none());
        let allowed = found.inputs(None).unwrap();
        assert!(allowed.allows("a") && !allowed.allows("c"));
        assert!(
            jobs.try_recv().is_err(),
            "a fresh signature is not fetched again"
        );
    }

    #[test]
    fn failures_are_remembered_and_a_stale_signature_refreshes_in_the_background() {
        let (live, mut jobs) = live(|c| c.signature_ttl_ms = 0);
        let (a, b) = (target("a"), target("b"));
        live.discovered(&a);
        live.finish(jobs.try_recv().unwrap(), Err(()), None);
        assert!(live.discovered(&a).is_none());
        assert!(jobs.try_recv().is_err(), "negative cache");
        live.discovered(&b);
        live.finish(jobs.try_recv().unwrap(), Ok(signature(&["x"])), None);
        // Due at once (TTL 0): still used, refreshed once in the background.
        assert!(live.discovered(&b).is_some());
        assert!(live.discovered(&b).is_some());
        let refresh = jobs.try_recv().unwrap();
        assert!(jobs.try_recv().is_err(), "one refresh at a time");
        // A refresh that fails keeps the signature.
        live.finish(refresh, Err(()), None);
        assert!(live.discovered(&b).is_some());
    }

    #[test]
    fn the_budget_throttles_misses() {
        let (live, mut jobs) = live(|c| c.metadata_requests_per_second = 2);
        for model in ["a", "b", "c", "d"] {
            assert!(live.discovered(&target(model)).is_none());
        }
        assert!(jobs.try_recv().is_ok() && jobs.try_recv().is_ok());
        assert!(jobs.try_recv().is_err());
        assert_eq!(live.stats.throttled.get(), 2);
    }

    #[test]
    fn the_cache_is_bounded_by_count_and_bytes() {
        let (live, mut jobs) = live(|c| {
            c.signature_cache_entries = 3;
            c.metadata_requests_per_second = 100;
        });
        for i in 0..6 {
            live.discovered(&target(&format!("m{i}")));
            live.finish(jobs.try_recv().unwrap(), Ok(signature(&["a"])), None);
        }
        assert_eq!(live.lock().entries.len(), 3);
        assert!(
            live.discovered(&target("m5")).is_some(),
            "the most recent stays"
        );
        let one = signature(&["a"]).bytes;
        let (live, mut jobs) = live_with_bytes(one * 2);
        for i in 0..4 {
            live.discovered(&target(&format!("m{i}")));
            live.finish(jobs.try_recv().unwrap(), Ok(signature(&["a"])), None);
        }
        let cache = live.lock();
        assert!(cache.bytes <= one * 2, "{} bytes", cache.bytes);
        assert_eq!(cache.entries.len(), 2);
    }

    fn live_with_bytes(bytes: usize) -> (LiveSignatures, mpsc::Receiver<SignatureKey>) {
        live(|c| {
            c.signature_cache_bytes = bytes;
            c.metadata_requests_per_second = 100;
        })
    }

    #[test]
    fn tf_signatures_by_name_and_unions() {
        let tf = LiveSignature::new(vec![
            ("serving_default".into(), vec!["x".into()]),
            ("regress".into(), vec!["inputs".into()]),
        ]);
        assert!(tf.inputs(None).unwrap().allows("x"));
        assert!(tf.inputs(Some("regress")).unwrap().allows("inputs"));
        assert!(tf.inputs(Some("nope")).is_none());
        let other = LiveSignature::new(vec![("serving_default".into(), vec!["y".into()])]);
        let union = LiveSignature::union([&tf, &other]);
        assert_eq!(union.default_inputs(), ["x", "y"]);
    }
}
