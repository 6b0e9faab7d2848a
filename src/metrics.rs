//! Prometheus metrics: one registry per running sidecar, metric families created once, and
//! child handles resolved ahead of time so the request path never looks up labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for upstream round trips: 0.5 ms to 30 s.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for time spent in a trim engine: 1 µs to 250 ms.
const TRIM_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// What happened to a score request (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Trimmed to the allowlist (possibly nothing needed removing).
    Trimmed,
    /// Mode observe: measured, forwarded untouched.
    Observed,
    /// Kill switch or mode off.
    Disabled,
    /// No bundle names the model.
    UnknownModel,
    /// The model is known, the version, label or a non-empty allowlist is not.
    UnknownVersion,
    /// The body is not JSON (or binary layout) the trimmer understands.
    ParseError,
    /// A compressed body the trimmer cannot read.
    UnsupportedEncoding,
    /// Understood, but not a shape that may be trimmed.
    NotTrimmable,
}

impl Outcome {
    /// Every outcome, in declaration order, so `outcome as usize` indexes label handles.
    pub const ALL: [Outcome; 8] = [
        Outcome::Trimmed,
        Outcome::Observed,
        Outcome::Disabled,
        Outcome::UnknownModel,
        Outcome::UnknownVersion,
        Outcome::ParseError,
        Outcome::UnsupportedEncoding,
        Outcome::NotTrimmable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Trimmed => "trimmed",
            Outcome::Observed => "observed",
            Outcome::Disabled => "disabled",
            Outcome::UnknownModel => "unknown_model",
            Outcome::UnknownVersion => "unknown_version",
            Outcome::ParseError => "parse_error",
            Outcome::UnsupportedEncoding => "unsupported_encoding",
            Outcome::NotTrimmable => "not_trimmable",
        }
    }

    /// A lookup that found nothing: what `trim_miss_rate` counts.
    pub fn is_miss(self) -> bool {
        matches!(self, Outcome::UnknownModel | Outcome::UnknownVersion)
    }
}

/// What shadow verification concluded for one sampled request (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyResult {
    /// Both answers agree within the tolerances.
    Match,
    /// They differ beyond the tolerances and the leaf's own noise.
    Mismatch,
    /// They differ beyond the tolerances, but no more than the leaf differs from itself.
    Noise,
    /// Nothing to compare: the shadow failed, timed out or answered an error (a strict leaf).
    Error,
    /// Sampled but not verified: over a budget, or an answer too large to keep.
    Skipped,
}

impl VerifyResult {
    /// Every result, in declaration order, so `result as usize` indexes label handles.
    pub const ALL: [VerifyResult; 5] = [
        VerifyResult::Match,
        VerifyResult::Mismatch,
        VerifyResult::Noise,
        VerifyResult::Error,
        VerifyResult::Skipped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyResult::Match => "match",
            VerifyResult::Mismatch => "mismatch",
            VerifyResult::Noise => "noise",
            VerifyResult::Error => "error",
            VerifyResult::Skipped => "skipped",
        }
    }
}

/// Label value for models no loaded bundle names (request data never creates series).
pub const UNKNOWN_MODEL: &str = "_unknown";

/// Per-model metric handles, resolved once per model and reused across snapshots.
pub struct ModelMetrics {
    /// Model name (or `_unknown`).
    pub name: String,
    /// `trimmer_requests_total` by outcome, indexed like `Outcome::ALL`.
    requests: [IntCounter; 8],
    /// `trimmer_request_bytes_total{direction="in"}`.
    bytes_in: IntCounter,
    /// `trimmer_request_bytes_total{direction="out"}`.
    bytes_out: IntCounter,
    /// `trimmer_features_removed_total`.
    features_removed: IntCounter,
    /// `trimmer_features_observed_total`: what observe mode would have removed.
    features_observed: IntCounter,
    /// Score requests and misses over the recent window, for `trim_miss_rate`.
    window: MissWindow,
    /// `trimmer_verify_total` by result, indexed like `VerifyResult::ALL`.
    verify: [IntCounter; 5],
    /// `trimmer_verify_shadow_bytes_total`.
    shadow_bytes: IntCounter,
    /// `trimmer_verify_contained`.
    contained: IntGauge,
}

impl ModelMetrics {
    /// Records one score request.
    pub fn record(&self, outcome: Outcome, bytes_in: usize, bytes_out: usize, removed: u64) {
        self.requests[outcome as usize].inc();
        self.bytes_in.inc_by(bytes_in as u64);
        self.bytes_out.inc_by(bytes_out as u64);
        match outcome {
            Outcome::Trimmed => self.features_removed.inc_by(removed),
            Outcome::Observed => self.features_observed.inc_by(removed),
            _ => {}
        }
        self.window.record(outcome.is_miss());
    }

    /// Records what one shadow verification concluded.
    pub fn verified(&self, result: VerifyResult) {
        self.verify[result as usize].inc();
    }

    /// Counts request bytes sent to a leaf for verification (shadows and noise pairs).
    pub fn shadow_sent(&self, bytes: usize) {
        self.shadow_bytes.inc_by(bytes as u64);
    }

    /// Sets how many of the model's versions verification has switched to observe.
    pub fn set_contained(&self, versions: usize) {
        self.contained.set(versions as i64);
    }
}

/// Requests and misses in a ring of time buckets covering the window; lock-free.
struct MissWindow {
    /// Bucket width.
    bucket: Duration,
    /// Reference point for bucket numbers.
    epoch: Instant,
    /// Ring of `(bucket number, requests, misses)`.
    buckets: Box<[[AtomicU64; 3]]>,
}

impl MissWindow {
    const BUCKETS: u64 = 60;

    fn new(window: Duration) -> Self {
        let bucket = (window / Self::BUCKETS as u32).max(Duration::from_millis(1));
        let buckets = (0..Self::BUCKETS)
            .map(|_| {
                [
                    AtomicU64::new(u64::MAX),
                    AtomicU64::new(0),
                    AtomicU64::new(0),
                ]
            })
            .collect();
        MissWindow {
            bucket,
            epoch: Instant::now(),
            buckets,
        }
    }

    fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    fn record(&self, miss: bool) {
        let now = self.now();
        let slot = &self.buckets[(now % Self::BUCKETS) as usize];
        if slot[0].load(Ordering::Relaxed) != now && slot[0].swap(now, Ordering::AcqRel) != now {
            // First request in a new bucket; a racing increment may be lost, which a rate
            // over a minute tolerates.
            slot[1].store(0, Ordering::Relaxed);
            slot[2].store(0, Ordering::Relaxed);
        }
        slot[1].fetch_add(1, Ordering::Relaxed);
        if miss {
            slot[2].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Misses divided by requests over the window; 0 without requests.
    fn rate(&self) -> f64 {
        let now = self.now();
        let (mut requests, mut misses) = (0u64, 0u64);
        for slot in self.buckets.iter() {
            let stamp = slot[0].load(Ordering::Acquire);
            if stamp != u64::MAX && now.saturating_sub(stamp) < Self::BUCKETS {
                requests += slot[1].load(Ordering::Relaxed);
                misses += slot[2].load(Ordering::Relaxed);
            }
        }
        if requests == 0 {
            0.0
        } else {
            misses as f64 / requests as f64
        }
    }
}

/// Every metric family the sidecar exports.
pub struct Metrics {
    /// Registry rendered by `/metrics`; private so families can only be added here.
    registry: Registry,
    /// Upstream answers by cluster and status class.
    pub upstream_requests: IntCounterVec,
    /// Time from sending a request upstream to its response headers, by cluster.
    pub upstream_duration: HistogramVec,
    /// Failed upstream attempts by cluster and kind (`connect`, `timeout`, `transport`).
    pub upstream_errors: IntCounterVec,
    /// Requests the sidecar answered itself without asking a leaf, by reason.
    pub rejected_requests: IntCounterVec,
    /// Client connections the lean HTTP/1.1 path handed to hyper, by reason.
    pub hyper_handoffs: IntCounterVec,
    /// Bundle files parsed, by bundle and result (`ok`, `error`); `bundle="_directory"` counts
    /// scans that could not list the directory.
    pub bundle_loads: IntCounterVec,
    /// 1 while a bundle's current file fails and its last-known-good content is served.
    pub bundle_stale: IntGaugeVec,
    /// Generation of each bundle's content being served.
    pub bundle_generation: IntGaugeVec,
    /// Model-version allowlists in the serving snapshot.
    pub allowlists: IntGauge,
    /// Model versions or labels defined by more than one bundle.
    pub allowlist_conflicts: IntGauge,
    /// Snapshot rebuilds (content actually changed).
    pub bundle_reloads: IntCounter,
    /// Unix time of the last snapshot rebuild.
    pub bundle_last_reload: Gauge,
    /// Duration of the last scan that rebuilt the snapshot.
    pub bundle_reload_duration: Gauge,
    /// Score requests by model and outcome.
    requests: IntCounterVec,
    /// Score request body bytes by model and direction.
    request_bytes: IntCounterVec,
    /// Feature values removed by model.
    features_removed: IntCounterVec,
    /// Feature values observe mode would have removed, by model.
    features_observed: IntCounterVec,
    /// Shadow verifications by model and result.
    verify: IntCounterVec,
    /// Request bytes sent for verification, by model.
    verify_shadow_bytes: IntCounterVec,
    /// Versions of a model that verification switched to observe.
    verify_contained: IntGaugeVec,
    /// Time spent in a trim engine.
    pub trim_duration: Histogram,
    /// Misses / score requests over the window, by model; set when scraped.
    miss_rate: GaugeVec,
    /// 1 while trimming is disabled by the kill switch (admin call or file).
    pub trimming_disabled: IntGauge,
    /// The object-store poller's families.
    pub source: SourceMetrics,
    /// Live signatures: discovery, the cache, drift.
    pub signatures: SignatureMetrics,
}

impl Metrics {
    /// Creates and registers every family; fails only on a programming error (duplicate name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "trimmer_build_info",
                "Build of the running sidecar (always 1).",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "trimmer_upstream_requests_total",
                "Responses received from upstream clusters.",
            ),
            &["upstream", "class"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "trimmer_upstream_duration_seconds",
                "Time from sending a request upstream to receiving its response headers.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "trimmer_upstream_errors_total",
                "Failed upstream attempts by kind.",
            ),
            &["upstream", "kind"],
        )?;
        let rejected_requests = IntCounterVec::new(
            Opts::new(
                "trimmer_rejected_requests_total",
                "Requests answered by the sidecar itself before any upstream was asked.",
            ),
            &["reason"],
        )?;
        let hyper_handoffs = IntCounterVec::new(
            Opts::new(
                "trimmer_hyper_handoffs_total",
                "Client connections the lean HTTP/1.1 path handed to hyper, by what the request needed.",
            ),
            &["reason"],
        )?;
        let bundle_loads = IntCounterVec::new(
            Opts::new(
                "trimmer_bundle_loads_total",
                "Bundle files parsed, by bundle and result.",
            ),
            &["bundle", "result"],
        )?;
        let bundle_stale = IntGaugeVec::new(
            Opts::new(
                "trimmer_bundle_stale",
                "1 while the bundle's file fails and its last-known-good content is served.",
            ),
            &["bundle"],
        )?;
        let bundle_generation = IntGaugeVec::new(
            Opts::new(
                "trimmer_bundle_generation",
                "Generation of the bundle content being served.",
            ),
            &["bundle"],
        )?;
        let allowlists = IntGauge::new(
            "trimmer_allowlists",
            "Model-version allowlists being served.",
        )?;
        let allowlist_conflicts = IntGauge::new(
            "trimmer_allowlist_conflicts",
            "Model versions or labels defined by more than one bundle (resolved to the union).",
        )?;
        let bundle_reloads = IntCounter::new(
            "trimmer_bundle_reloads_total",
            "Allowlist snapshot rebuilds after a content change.",
        )?;
        let bundle_last_reload = Gauge::new(
            "trimmer_bundle_last_reload_timestamp_seconds",
            "Unix time of the last allowlist snapshot rebuild.",
        )?;
        let bundle_reload_duration = Gauge::new(
            "trimmer_bundle_reload_duration_seconds",
            "Duration of the last directory scan that rebuilt the snapshot.",
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "trimmer_requests_total",
                "Score requests by model and outcome.",
            ),
            &["model", "outcome"],
        )?;
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "trimmer_request_bytes_total",
                "Score request body bytes received (in) and forwarded (out), by model.",
            ),
            &["model", "direction"],
        )?;
        let features_removed = IntCounterVec::new(
            Opts::new(
                "trimmer_features_removed_total",
                "Feature values removed from score requests.",
            ),
            &["model"],
        )?;
        let features_observed = IntCounterVec::new(
            Opts::new(
                "trimmer_features_observed_total",
                "Feature values that mode observe would have removed (requests forwarded untouched).",
            ),
            &["model"],
        )?;
        let verify = IntCounterVec::new(
            Opts::new(
                "trimmer_verify_total",
                "Shadow verifications of trimmed requests, by model and result.",
            ),
            &["model", "result"],
        )?;
        let verify_shadow_bytes = IntCounterVec::new(
            Opts::new(
                "trimmer_verify_shadow_bytes_total",
                "Request body bytes sent to leaves for shadow verification (originals and noise pairs).",
            ),
            &["model"],
        )?;
        let verify_contained = IntGaugeVec::new(
            Opts::new(
                "trimmer_verify_contained",
                "Versions of the model that shadow verification switched to observe (re-armed by POST /verify/rearm or a new bundle generation).",
            ),
            &["model"],
        )?;
        let trim_duration = Histogram::with_opts(
            HistogramOpts::new(
                "trimmer_trim_duration_seconds",
                "Time spent in a trim engine per request.",
            )
            .buckets(TRIM_BUCKETS.to_vec()),
        )?;
        let miss_rate = GaugeVec::new(
            Opts::new(
                "trim_miss_rate",
                "Misses (unknown_version; unknown_model for _unknown) / score requests over the window.",
            ),
            &["model"],
        )?;
        let trimming_disabled = IntGauge::new(
            "trimmer_trimming_disabled",
            "1 while the kill switch disables all trimming.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(features_removed.clone()))?;
        registry.register(Box::new(features_observed.clone()))?;
        registry.register(Box::new(trim_duration.clone()))?;
        registry.register(Box::new(verify.clone()))?;
        registry.register(Box::new(verify_shadow_bytes.clone()))?;
        registry.register(Box::new(verify_contained.clone()))?;
        registry.register(Box::new(miss_rate.clone()))?;
        registry.register(Box::new(trimming_disabled.clone()))?;
        registry.register(Box::new(bundle_loads.clone()))?;
        registry.register(Box::new(bundle_stale.clone()))?;
        registry.register(Box::new(bundle_generation.clone()))?;
        registry.register(Box::new(allowlists.clone()))?;
        registry.register(Box::new(allowlist_conflicts.clone()))?;
        registry.register(Box::new(bundle_reloads.clone()))?;
        registry.register(Box::new(bundle_last_reload.clone()))?;
        registry.register(Box::new(bundle_reload_duration.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(rejected_requests.clone()))?;
        registry.register(Box::new(hyper_handoffs.clone()))?;
        let source = SourceMetrics::new(&registry)?;
        let signatures = SignatureMetrics::new(&registry)?;
        Ok(Self {
            registry,
            upstream_requests,
            upstream_duration,
            upstream_errors,
            rejected_requests,
            hyper_handoffs,
            bundle_loads,
            bundle_stale,
            bundle_generation,
            allowlists,
            allowlist_conflicts,
            bundle_reloads,
            bundle_last_reload,
            bundle_reload_duration,
            requests,
            request_bytes,
            features_removed,
            features_observed,
            verify,
            verify_shadow_bytes,
            verify_contained,
            trim_duration,
            miss_rate,
            trimming_disabled,
            source,
            signatures,
        })
    }

    /// The handle for a rejection reason (few, fixed reasons: looked up on the rare error path).
    pub fn rejected(&self, reason: &str) -> IntCounter {
        self.rejected_requests.with_label_values(&[reason])
    }

    /// Handles for one model (call once per model name, not per request).
    pub fn model(&self, name: &str, window: Duration) -> ModelMetrics {
        ModelMetrics {
            name: name.to_owned(),
            requests: Outcome::ALL.map(|o| self.requests.with_label_values(&[name, o.as_str()])),
            bytes_in: self.request_bytes.with_label_values(&[name, "in"]),
            bytes_out: self.request_bytes.with_label_values(&[name, "out"]),
            features_removed: self.features_removed.with_label_values(&[name]),
            features_observed: self.features_observed.with_label_values(&[name]),
            window: MissWindow::new(window),
            verify: VerifyResult::ALL.map(|r| self.verify.with_label_values(&[name, r.as_str()])),
            shadow_bytes: self.verify_shadow_bytes.with_label_values(&[name]),
            contained: self.verify_contained.with_label_values(&[name]),
        }
    }

    /// Sets `trim_miss_rate` for exactly these models (series of models gone are dropped).
    pub fn set_miss_rates<'a>(&self, models: impl IntoIterator<Item = &'a ModelMetrics>) {
        self.miss_rate.reset();
        for model in models {
            self.miss_rate
                .with_label_values(&[model.name.as_str()])
                .set(model.window.rate());
        }
    }

    /// Renders every family in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// What the object-store poller (`bundles.source`) exports.
pub struct SourceMetrics {
    /// Conditional GETs of pointers by result (`not_modified`, `updated`, `error`).
    pub polls: IntCounterVec,
    /// Listings of the prefix (new bundle names) by result (`ok`, `error`).
    pub lists: IntCounterVec,
    /// Unix time of the last poll round that reached the store (the start time until one does).
    pub last_success: GaugeVec,
    /// Bundle objects fetched.
    pub objects: IntCounter,
    /// Body bytes received from the store (pointers and objects).
    pub bytes: IntCounter,
    /// Pointers or objects refused (digest, key, checksum or schema mismatch).
    pub rejected: IntCounter,
}

impl SourceMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let polls = IntCounterVec::new(
            Opts::new(
                "trimmer_bundle_source_polls_total",
                "Conditional GETs of bundle pointers in the object store, by result.",
            ),
            &["result"],
        )?;
        let lists = IntCounterVec::new(
            Opts::new(
                "trimmer_bundle_source_lists_total",
                "Listings of the object-store prefix for new bundle names, by result.",
            ),
            &["result"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "trimmer_bundle_source_last_success_timestamp_seconds",
                "Unix time of the last poll round that reached the bundle store (process start until one does).",
            ),
            &["source"],
        )?;
        let objects = IntCounter::new(
            "trimmer_bundle_source_objects_fetched_total",
            "Bundle objects fetched from the object store.",
        )?;
        let bytes = IntCounter::new(
            "trimmer_bundle_source_bytes_fetched_total",
            "Body bytes received from the object store (pointers and objects).",
        )?;
        let rejected = IntCounter::new(
            "trimmer_bundle_source_rejected_total",
            "Pointers or objects from the store refused (digest, key, checksum or schema); last-known-good kept.",
        )?;
        registry.register(Box::new(polls.clone()))?;
        registry.register(Box::new(lists.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(objects.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Self {
            polls,
            lists,
            last_success,
            objects,
            bytes,
            rejected,
        })
    }
}

/// What live signatures (discovery and drift checks, per cluster) export.
#[derive(Clone)]
pub struct SignatureMetrics {
    /// Metadata requests to leaves by cluster and result (`ok`, `not_found`, `error`,
    /// `invalid`), and `throttled` for fetches the per-cluster budget refused.
    pub fetches: IntCounterVec,
    /// Cached signatures and remembered failures, by cluster.
    pub cache_entries: IntGaugeVec,
    /// Bytes of cached signatures, by cluster.
    pub cache_bytes: IntGaugeVec,
    /// Score requests whose allowlist came from the leaf, by model and source (`discovered`:
    /// no bundle had it; `drift`: it replaced a drifted bundle version under `on_drift = "live"`).
    pub live_requests: IntCounterVec,
    /// Inputs a bundle allowlist lacks (`missing`) or has beyond (`extra`) the leaf's
    /// signature, summed over the model's versions.
    pub drift: IntGaugeVec,
}

impl SignatureMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let fetches = IntCounterVec::new(
            Opts::new(
                "trimmer_signature_fetches_total",
                "Metadata requests to leaves for model signatures, by cluster and result (throttled: refused by the budget, never sent).",
            ),
            &["upstream", "result"],
        )?;
        let cache_entries = IntGaugeVec::new(
            Opts::new(
                "trimmer_signature_cache_entries",
                "Live signatures and remembered failures cached, by cluster.",
            ),
            &["upstream"],
        )?;
        let cache_bytes = IntGaugeVec::new(
            Opts::new(
                "trimmer_signature_cache_bytes",
                "Bytes of live signatures cached, by cluster.",
            ),
            &["upstream"],
        )?;
        let live_requests = IntCounterVec::new(
            Opts::new(
                "trimmer_live_signature_requests_total",
                "Score requests whose allowlist was the leaf's live signature, by source (discovered, drift).",
            ),
            &["model", "source"],
        )?;
        let drift = IntGaugeVec::new(
            Opts::new(
                "trimmer_allowlist_drift",
                "Inputs the leaf declares that the bundle allowlist lacks (missing) or that it lists beyond them (extra), summed over the model's versions.",
            ),
            &["model", "kind"],
        )?;
        registry.register(Box::new(fetches.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(live_requests.clone()))?;
        registry.register(Box::new(drift.clone()))?;
        Ok(Self {
            fetches,
            cache_entries,
            cache_bytes,
            live_requests,
            drift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn verify_results_index_their_handles() {
        for (i, result) in super::VerifyResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, i, "{}", result.as_str());
        }
    }

    #[test]
    fn outcomes_index_their_handles() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{}", outcome.as_str());
        }
    }
}
