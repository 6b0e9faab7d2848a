//! State shared by the proxy and admin listeners for the life of the process.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;
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
}
