//! Keeps the serving state current: rescans the bundle directory when the watcher hints, on a
//! timer, on `POST /reload` or SIGHUP; rebuilds the allowlist snapshot off the request path;
//! records metrics; swaps one `TrimState` whole. No request ever waits on a reload.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::bundle::store::BundleState;
use crate::bundle::watch::BundleWatcher;
use crate::bundle::{AllowlistSnapshot, BundleStore, ScanReport};
use crate::config::ms;
use crate::metrics::ModelMetrics;
use crate::state::{BundleStatus, ReloadRequest, ReloadSummary, Shared, TrimState};

/// Bundle bytes parsed by a scan from which on the memory it freed is handed back to the
/// system. What parsing fewer frees stays in the allocator's free lists for the next parse
/// to reuse: trimming it costs a one-bundle reload a page fault per page it touches again.
const RELEASE_AFTER_PARSING: u64 = 16 << 20;

/// Owns the bundle store and the watcher; runs as one task.
pub struct Reloader {
    shared: Arc<Shared>,
    /// Behind a mutex only so a scan can run on the blocking pool and come back.
    store: Arc<Mutex<BundleStore>>,
    watcher: Option<BundleWatcher>,
    /// Last watcher problem logged, so a missing directory is not logged every loop.
    watch_problem: Option<String>,
    /// Metric handles by model name, kept across reloads so counters and miss windows persist.
    model_metrics: std::collections::HashMap<String, Arc<ModelMetrics>>,
    hints_tx: mpsc::Sender<()>,
    hints: mpsc::Receiver<()>,
    requests: mpsc::Receiver<ReloadRequest>,
}

impl Reloader {
    /// A reloader for `shared`'s bundle directory, answering forced reloads from `requests`.
    pub fn new(shared: Arc<Shared>, requests: mpsc::Receiver<ReloadRequest>) -> Self {
        let store = BundleStore::new(
            shared.config.bundles.watched_dir(),
            shared.config.bundles.max_file_bytes,
        );
        let (hints_tx, hints) = mpsc::channel(1);
        Reloader {
            shared,
            store: Arc::new(Mutex::new(store)),
            watcher: None,
            watch_problem: None,
            model_metrics: Default::default(),
            hints_tx,
            hints,
            requests,
        }
    }

    /// Scans once, marks the sidecar ready, then reacts to hints, the timer and requests until
    /// `stop` fires. A hint schedules a scan once events have been quiet for the debounce
    /// period (at most 20 periods after the first, so a directory that never goes quiet is
    /// still rescanned); forced reloads never wait for it.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.ensure_watcher();
        // Nothing is served before this first scan: it may parse on every core.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.rescan_on(cores).await;
        self.shared
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let period = ms(self.shared.config.bundles.rescan_interval_ms);
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut debounce = Debounce::new(ms(self.shared.config.bundles.debounce_ms));
        loop {
            let due = debounce.due();
            let due = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = self.hints.recv() => {
                    debounce.hint(tokio::time::Instant::now());
                    continue;
                }
                _ = due => {
                    self.rescan().await;
                }
                _ = timer.tick() => {
                    self.rescan().await;
                }
                Some(reply) = self.requests.recv() => {
                    let summary = self.rescan().await;
                    let _ = reply.send(summary);
                }
                _ = stop.changed() => break,
            }
            debounce.clear();
            self.ensure_watcher();
        }
    }

    /// (Re)arms the watcher when there is none or it can no longer be trusted.
    fn ensure_watcher(&mut self) {
        let Some(dir) = self.shared.config.bundles.watched_dir() else {
            return;
        };
        if self.watcher.as_ref().is_some_and(BundleWatcher::is_healthy) {
            return;
        }
        let rearm = self.watcher.take().is_some();
        let problem = match BundleWatcher::arm(&dir, self.hints_tx.clone()) {
            Ok(watcher) => {
                let watches_dir = watcher.watches_dir();
                self.watcher = Some(watcher);
                if rearm {
                    // Changes made while unwatched: look now.
                    let _ = self.hints_tx.try_send(());
                }
                (!watches_dir)
                    .then(|| format!("{} does not exist; watching its parent", dir.display()))
            }
            Err(problem) => Some(format!("{problem}; relying on periodic rescans")),
        };
        match problem {
            Some(problem) if self.watch_problem.as_deref() != Some(problem.as_str()) => {
                tracing::warn!(%problem, "bundle directory not watched");
                self.watch_problem = Some(problem);
            }
            Some(_) => {}
            None => {
                if self.watch_problem.take().is_some() || rearm {
                    tracing::info!(dir = %dir.display(), "bundle directory watch armed");
                }
            }
        }
    }

    /// Scans the directory on the blocking pool, rebuilds and swaps what changed. A scan that
    /// outlives `bundles.scan_timeout_ms` (a hung mount) is abandoned: the current allowlists
    /// stay, the reloader goes on (so shutdown never waits on it), and later scans report the
    /// stuck one until it returns instead of piling up behind it.
    async fn rescan(&mut self) -> ReloadSummary {
        self.rescan_on(1).await
    }

    /// [`Self::rescan`], parsing changed bundles on up to `threads` threads.
    async fn rescan_on(&mut self, threads: usize) -> ReloadSummary {
        let started = Instant::now();
        let store = self.store.clone();
        let trim = self.shared.config.trim.clone();
        let previous = self.shared.trim_state.load_full().allowlists.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let mut store = match store.try_lock() {
                Ok(store) => store,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err("an earlier bundle scan is still running".to_owned())
                }
            };
            let report = store.scan_on(threads);
            let snapshot = report
                .changed
                .then(|| store.snapshot(Some(&previous), &trim));
            drop(previous);
            if report.parsed_bytes >= RELEASE_AFTER_PARSING {
                // Parsing freed documents many times the size of what is kept.
                crate::bundle::release_freed_memory();
            }
            let statuses: Vec<BundleStatus> = store
                .entries()
                .iter()
                .map(|(n, e)| bundle_status(n, e))
                .collect();
            Ok((report, snapshot, statuses, store.kill_switch()))
        });
        let limit = ms(self.shared.config.bundles.scan_timeout_ms);
        let scanned = match tokio::time::timeout(limit, scan).await {
            Ok(Ok(Ok(scanned))) => Ok(scanned),
            Ok(Ok(Err(why))) => Err(why),
            Ok(Err(e)) => Err(format!("bundle scan failed: {e}")),
            Err(_) => Err(format!(
                "bundle scan did not finish within bundles.scan_timeout_ms ({} ms)",
                limit.as_millis()
            )),
        };
        let (report, snapshot, statuses, kill_switch_file) = match scanned {
            Ok(scanned) => scanned,
            Err(why) => {
                tracing::error!(error = %why, "keeping the current allowlists");
                let report = ScanReport {
                    dir_error: Some(why),
                    ..ScanReport::default()
                };
                return ReloadSummary::from_report(&report, self.current_allowlists());
            }
        };
        self.record(&report, &statuses);
        let current = self.shared.trim_state.load_full();
        let last_reload = match &snapshot {
            Some(_) => Some((SystemTime::now(), started.elapsed())),
            None => current.last_reload,
        };
        let (allowlists, models) = match snapshot {
            Some(snapshot) if snapshot.same_models_as(&current.allowlists) => {
                (Arc::new(snapshot), current.models.clone())
            }
            Some(snapshot) => {
                let models = self.model_handles(&snapshot);
                (Arc::new(snapshot), models)
            }
            None => (current.allowlists.clone(), current.models.clone()),
        };
        if let Some((at, took)) = last_reload.filter(|_| report.changed) {
            let m = &self.shared.metrics;
            m.bundle_reloads.inc();
            m.allowlists.set(allowlists.allowlists() as i64);
            m.allowlist_conflicts.set(allowlists.conflicts() as i64);
            m.bundle_last_reload.set(
                at.duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            m.bundle_reload_duration.set(took.as_secs_f64());
            tracing::info!(
                allowlists = allowlists.allowlists(),
                conflicts = allowlists.conflicts(),
                took_ms = took.as_millis() as u64,
                "allowlists reloaded"
            );
        }
        if kill_switch_file != current.kill_switch_file {
            tracing::warn!(
                disabled = kill_switch_file,
                "kill-switch file changed: trimming {}",
                if kill_switch_file {
                    "disabled"
                } else {
                    "enabled"
                }
            );
        }
        if report.changed {
            self.shared.verifier.snapshot_changed(&allowlists);
        }
        let summary = ReloadSummary::from_report(&report, allowlists.allowlists());
        let changed = report.changed;
        self.shared.trim_state.store(Arc::new(TrimState {
            allowlists,
            bundles: statuses,
            kill_switch_file,
            directory_error: report.dir_error,
            last_reload,
            models,
        }));
        if changed {
            for live in self
                .shared
                .upstreams
                .clusters()
                .iter()
                .filter_map(|c| c.signatures.as_ref())
            {
                live.bundles_changed();
            }
        }
        summary
    }

    /// Handles for every model of `snapshot`, in its index order; new names get new handles.
    fn model_handles(&mut self, snapshot: &AllowlistSnapshot) -> Vec<Arc<ModelMetrics>> {
        let window = ms(self.shared.config.trim.miss_rate_window_ms);
        let metrics = &self.shared.metrics;
        snapshot
            .model_names()
            .map(|name| {
                self.model_metrics
                    .entry(name.to_owned())
                    .or_insert_with(|| Arc::new(metrics.model(name, window)))
                    .clone()
            })
            .collect()
    }

    fn current_allowlists(&self) -> usize {
        self.shared.trim_state.load().allowlists.allowlists()
    }

    /// Load counters, stale and generation gauges, and logs for one scan.
    fn record(&self, report: &ScanReport, statuses: &[BundleStatus]) {
        let m = &self.shared.metrics;
        if let Some(problem) = &report.dir_error {
            m.bundle_loads
                .with_label_values(&["_directory", "error"])
                .inc();
            tracing::warn!(%problem, "bundle directory unreadable; keeping the current allowlists");
        }
        for load in &report.loads {
            match &load.result {
                Ok(()) => {
                    m.bundle_loads
                        .with_label_values(&[load.bundle.as_str(), "ok"])
                        .inc();
                    tracing::info!(bundle = %load.bundle, "bundle loaded");
                }
                Err(why) => {
                    m.bundle_loads
                        .with_label_values(&[load.bundle.as_str(), "error"])
                        .inc();
                    tracing::warn!(bundle = %load.bundle, error = %why, "bundle rejected; last-known-good kept");
                }
            }
        }
        for name in &report.removed {
            let _ = m.bundle_stale.remove_label_values(&[name.as_str()]);
            let _ = m.bundle_generation.remove_label_values(&[name.as_str()]);
            tracing::info!(bundle = %name, "bundle file gone; its allowlists removed");
        }
        for status in statuses {
            m.bundle_stale
                .with_label_values(&[status.name.as_str()])
                .set(i64::from(status.stale));
            if let Some(generation) = status.generation {
                m.bundle_generation
                    .with_label_values(&[status.name.as_str()])
                    .set(generation as i64);
            }
        }
    }
}

/// When a rescan is due after watcher hints: once events have been quiet for `quiet`, but at
/// most 20 × `quiet` after the first, so a directory that never goes quiet is still rescanned.
struct Debounce {
    /// `bundles.debounce_ms`.
    quiet: std::time::Duration,
    /// (first hint, scan due) while hints are pending.
    pending: Option<(tokio::time::Instant, tokio::time::Instant)>,
}

impl Debounce {
    fn new(quiet: std::time::Duration) -> Self {
        Self {
            quiet,
            pending: None,
        }
    }

    /// A hint arrived at `now`.
    fn hint(&mut self, now: tokio::time::Instant) {
        let first = self.pending.map_or(now, |(first, _)| first);
        self.pending = Some((first, (now + self.quiet).min(first + self.quiet * 20)));
    }

    /// A scan ran: nothing is pending.
    fn clear(&mut self) {
        self.pending = None;
    }

    /// When the pending hints are due for a scan.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.pending.map(|(_, due)| due)
    }
}

fn bundle_status(name: &str, entry: &BundleState) -> BundleStatus {
    let good = entry.good.as_deref();
    BundleStatus {
        name: name.to_owned(),
        file: entry.path.display().to_string(),
        generation: good.map(|b| b.generation),
        sha256: good.and_then(|b| b.sha256.as_deref().map(str::to_owned)),
        file_sha256: entry.good_digest.clone(),
        source: good.and_then(|b| b.source.as_deref().map(str::to_owned)),
        loaded_at: entry.loaded_at.map(crate::bundle::format::rfc3339),
        stale: entry.stale,
        last_error: entry.last_error.clone(),
        model_versions: good.map_or(0, |b| b.model_versions()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{advance, sleep_until, Instant};

    use super::Debounce;

    /// On tokio's paused clock: hints in a burst move the scan to `quiet` after the last one;
    /// a directory that never goes quiet is scanned 20 × `quiet` after the first hint.
    #[tokio::test(start_paused = true)]
    async fn hints_are_debounced_on_virtual_time() {
        let quiet = Duration::from_millis(200);
        let mut debounce = Debounce::new(quiet);
        assert_eq!(debounce.due(), None);
        let first = Instant::now();
        debounce.hint(first);
        advance(Duration::from_millis(150)).await;
        debounce.hint(Instant::now());
        let due = debounce.due().unwrap();
        assert_eq!(due - first, Duration::from_millis(350));
        sleep_until(due).await;
        assert_eq!(Instant::now() - first, Duration::from_millis(350));

        let mut storm = Debounce::new(quiet);
        let first = Instant::now();
        for _ in 0..100 {
            storm.hint(Instant::now());
            advance(Duration::from_millis(100)).await;
        }
        assert_eq!(storm.due().unwrap() - first, quiet * 20);
    }
}
