//! Directory watching: file events are only hints that something may have changed; the
//! reloader always rescans the whole directory. The watcher watches the directory (never the
//! files: ConfigMap updates swap a symlink) and its parent (to see the directory re-created),
//! and is rebuilt whenever it reports an error or the directory is no longer the one watched.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A live watch on the bundle directory.
pub struct BundleWatcher {
    /// Keeps the OS watch alive.
    _watcher: notify::RecommendedWatcher,
    /// The watched directory.
    dir: PathBuf,
    /// `(device, inode)` of the directory when the watch was set (`None`: it did not exist):
    /// a removed, re-created or newly created directory differs.
    identity: Option<(u64, u64)>,
    /// Set by the event callback when notify reports an error (e.g. queue overflow).
    failed: Arc<AtomicBool>,
}

impl BundleWatcher {
    /// Watches `dir` and its parent (so the directory appearing or being replaced is seen);
    /// each event sends a hint on `hints`. Fails only when neither can be watched.
    pub fn arm(dir: &Path, hints: mpsc::Sender<()>) -> Result<BundleWatcher, String> {
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_err() {
                    flag.store(true, Ordering::Relaxed);
                }
                // A full channel already holds a pending hint; one is enough.
                let _ = hints.try_send(());
            })
            .map_err(|e| format!("cannot create a watcher: {e}"))?;
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent_watched = watcher.watch(parent, RecursiveMode::NonRecursive).is_ok();
        let identity = identity(dir);
        if identity.is_some() {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        } else if !parent_watched {
            return Err(format!(
                "neither {} nor its parent can be watched",
                dir.display()
            ));
        }
        Ok(BundleWatcher {
            _watcher: watcher,
            dir: dir.to_owned(),
            identity,
            failed,
        })
    }

    /// Whether the bundle directory itself is being watched.
    pub fn watches_dir(&self) -> bool {
        self.identity.is_some()
    }

    /// False once the watch can no longer be trusted: an error was reported, or the directory
    /// appeared, disappeared or was replaced since it was armed.
    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && identity(&self.dir) == self.identity
    }
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}
