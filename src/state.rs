//! State shared by the proxy and admin listeners for the life of the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::bundle::{AllowlistSnapshot, ScanReport};
use crate::config::Config;
use crate::metrics::{Metrics, ModelMetrics};
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
    /// Shadow verification: budgets, what it learned, versions it switched to observe.
    pub verifier: crate::verify::Verifier,
}

impl Shared {
    /// Whether the kill switch (admin call or file) disables trimming, given the current state.
    pub fn kill_switch(&self, state: &TrimState) -> bool {
        state.kill_switch_file || self.trimming_disabled.load(Ordering::Relaxed)
    }
}

/// Everything a request reads about allowlists, swapped whole after every scan that changed
/// something.
#[derive(Default)]
pub struct TrimState {
    /// The merged allowlists.
    pub allowlists: Arc<AllowlistSnapshot>,
    /// Per-bundle status, for `/status`.
    pub bundles: Vec<BundleStatus>,
    /// The kill-switch file is present in the bundle directory.
    pub kill_switch_file: bool,
    /// Why the directory could not be listed at the last scan.
    pub directory_error: Option<String>,
    /// When the allowlists were last rebuilt, and how long that scan took.
    pub last_reload: Option<(SystemTime, Duration)>,
    /// Metric handles per model, indexed like the snapshot's models.
    pub models: Vec<Arc<ModelMetrics>>,
}

/// What `/status` shows of a bundle.
#[derive(Debug, Clone, Serialize)]
pub struct BundleStatus {
    /// Bundle name (file name without `.json`).
    pub name: String,
    /// File it is read from.
    pub file: String,
    /// Generation of the content being served (`None` if nothing ever loaded).
    pub generation: Option<u64>,
    /// The served content's `sha256` member, if it had one.
    pub sha256: Option<String>,
    /// SHA-256 of the served file's bytes.
    pub file_sha256: Option<String>,
    /// Provenance of the served content.
    pub source: Option<String>,
    /// When the served content was loaded (RFC 3339, UTC).
    pub loaded_at: Option<String>,
    /// The current file fails; the previous content is served.
    pub stale: bool,
    /// Why the current file fails.
    pub last_error: Option<String>,
    /// Model versions the served content lists.
    pub model_versions: usize,
}

/// Sent to the reloader to force a scan; the reply carries its summary.
pub type ReloadRequest = oneshot::Sender<ReloadSummary>;

/// The outcome of one scan, as `POST /reload` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadSummary {
    /// The allowlists were rebuilt.
    pub changed: bool,
    /// Bundles whose new content loaded.
    pub loaded: Vec<String>,
    /// Bundles whose file failed, with the reason (their last-known-good stays).
    pub failed: Vec<FailedLoad>,
    /// Bundles whose file is gone.
    pub removed: Vec<String>,
    /// Why the directory could not be listed.
    pub directory_error: Option<String>,
    /// Model-version allowlists now served.
    pub allowlists: usize,
}

/// A bundle file that failed to load.
#[derive(Debug, Clone, Serialize)]
pub struct FailedLoad {
    /// Bundle name.
    pub bundle: String,
    /// File and reason.
    pub error: String,
}

impl ReloadSummary {
    /// What a scan did, for `POST /reload`.
    pub fn from_report(report: &ScanReport, allowlists: usize) -> Self {
        let mut summary = ReloadSummary {
            changed: report.changed,
            loaded: Vec::new(),
            failed: Vec::new(),
            removed: report.removed.clone(),
            directory_error: report.dir_error.clone(),
            allowlists,
        };
        for load in &report.loads {
            match &load.result {
                Ok(()) => summary.loaded.push(load.bundle.clone()),
                Err(e) => summary.failed.push(FailedLoad {
                    bundle: load.bundle.clone(),
                    error: e.clone(),
                }),
            }
        }
        summary
    }
}
