//! Prometheus metrics: one registry per running sidecar, metric families created once, and
//! child handles resolved ahead of time so the request path never looks up labels.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Buckets for upstream round trips: 0.5 ms to 30 s.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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
        Ok(Self {
            registry,
            upstream_requests,
            upstream_duration,
            upstream_errors,
            rejected_requests,
            bundle_loads,
            bundle_stale,
            bundle_generation,
            allowlists,
            allowlist_conflicts,
            bundle_reloads,
            bundle_last_reload,
            bundle_reload_duration,
        })
    }

    /// The handle for a rejection reason (few, fixed reasons: looked up on the rare error path).
    pub fn rejected(&self, reason: &str) -> IntCounter {
        self.rejected_requests.with_label_values(&[reason])
    }

    /// Renders every family in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
