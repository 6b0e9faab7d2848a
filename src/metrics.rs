//! Prometheus metrics: one registry per running sidecar, metric families created once, and
//! child handles resolved ahead of time so the request path never looks up labels.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
