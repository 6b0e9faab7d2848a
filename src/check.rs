//! `trimmer check`: validates a configuration and every bundle it points at, offline.

use std::path::Path;

use crate::bundle::BundleStore;
use crate::config::{Config, Overrides};

/// Checks the configuration at `path` and its bundle directory. Returns the lines to print
/// on success, or every problem found.
pub fn check(path: &Path) -> Result<Vec<String>, Vec<String>> {
    let config = Config::load(Some(path), &Overrides::default()).map_err(|e| e.problems)?;
    let mut ok = vec![format!("{}: configuration ok", path.display())];
    let mut problems = Vec::new();
    let Some(dir) = config.bundles.watched_dir() else {
        ok.push("no bundle directory configured: nothing will be trimmed".to_owned());
        return Ok(ok);
    };
    if let Some(source) = &config.bundles.source {
        ok.push(format!(
            "bundles come from {source}, cached in {}",
            dir.display()
        ));
        if !dir.exists() {
            ok.push("the cache directory does not exist yet: the sidecar creates it".to_owned());
            return Ok(ok);
        }
    }
    let mut store = BundleStore::new(Some(dir), config.bundles.max_file_bytes);
    let report = store.scan();
    problems.extend(report.dir_error);
    for load in report.loads {
        match load.result {
            Ok(()) => {
                let bundle = &store.entries()[&load.bundle];
                let generation = bundle.good.as_ref().map_or(0, |b| b.generation);
                ok.push(format!(
                    "bundle {}: ok (generation {generation})",
                    load.bundle
                ));
            }
            Err(why) => problems.push(format!("bundle {}: {why}", load.bundle)),
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}
