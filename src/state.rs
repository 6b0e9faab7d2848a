//! State shared by the proxy and admin listeners for the life of the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::{Metrics, ModelMetrics};
use crate::reload::{ReloadRequest, TrimState};
use crate::upstream::Upstreams;

/// Everything a request handler may need, created once at start-up.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Clusters and routing.
    pub upstreams: Upstreams,
    /// Metric families.
    pub metrics: Metrics,
    /// Set once both listeners are bound and the first bundle scan has finished.
    pub ready: AtomicBool,
    /// Set on SIGTERM/SIGINT: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Process start, for `/status`.
    pub started: Instant,
    /// Allowlists and bundle status: loaded once per request, swapped whole by the reloader.
    pub trim_state: ArcSwap<TrimState>,
    /// Asks the reloader for an immediate scan (`POST /reload`, SIGHUP).
    pub reload: mpsc::Sender<ReloadRequest>,
    /// Metric handles for models no bundle names (`model="_unknown"`).
    pub unknown_model: ModelMetrics,
    /// Kill switch set through the admin port (`POST /trimming/disable`).
    pub trimming_disabled: AtomicBool,
}

impl Shared {
    /// Whether the kill switch (admin call or file) disables trimming, given the current state.
    pub fn kill_switch(&self, state: &TrimState) -> bool {
        state.kill_switch_file || self.trimming_disabled.load(Ordering::Relaxed)
    }
}
