//! Installing bundles into a watched directory: atomically (temp file, fsync, rename, fsync of
//! the directory), with history under `DIR/.history/NAME/GENERATION.json` so that a rollback
//! is a metadata operation. The sidecar ignores dot-files, so neither temp files nor history
//! are ever loaded.

use std::path::{Path, PathBuf};

use crate::bundle::format::Bundle;
use crate::bundle::store::write_atomically;

/// Reads a bundle file for publishing (to a directory or a store): it must parse, match its
/// checksum and hold the safety invariants.
pub fn publishable(file: &Path) -> Result<(Vec<u8>, Bundle), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let bundle = Bundle::parse_document(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let problems = super::build::invariants(&bundle, None, &[], false);
    if !problems.is_empty() {
        return Err(format!("{}: {}", file.display(), problems.join("; ")));
    }
    Ok((bytes, bundle))
}

/// Publishes the bundle file at `file` as `dir/<bundle>.json`; returns the installed path.
/// Refuses a generation not newer than the live one unless `force`.
pub fn publish(file: &Path, dir: &Path, force: bool) -> Result<(PathBuf, Bundle), String> {
    let (bytes, bundle) = publishable(file)?;
    let target = dir.join(format!("{}.json", bundle.bundle));
    let history = history_dir(dir, &bundle.bundle);
    if let Some((live_bytes, live)) = live(&target) {
        if bundle.generation <= live.generation && !force {
            return Err(format!(
                "generation {} is not newer than the live generation {} of `{}` (--force to publish anyway)",
                bundle.generation, live.generation, bundle.bundle
            ));
        }
        // Keep the live generation restorable even if it was installed by hand.
        let kept = history.join(format!("{}.json", live.generation));
        if !kept.exists() {
            write_atomically(&kept, &live_bytes)?;
        }
    }
    write_atomically(&history.join(format!("{}.json", bundle.generation)), &bytes)?;
    write_atomically(&target, &bytes)?;
    Ok((target, bundle))
}

/// Restores generation `to` (default: the newest one older than the live one) of bundle
/// `name` in `dir`; returns the restored generation.
pub fn rollback(name: &str, dir: &Path, to: Option<u64>) -> Result<u64, String> {
    let history = history_dir(dir, name);
    let target = dir.join(format!("{name}.json"));
    let mut generations: Vec<u64> = std::fs::read_dir(&history)
        .map_err(|e| format!("no history for `{name}` in {}: {e}", history.display()))?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    generations.sort_unstable();
    let generation = match to {
        Some(g) => g,
        None => {
            let live = live(&target).map(|(_, b)| b.generation).ok_or_else(|| {
                format!(
                    "{} is missing or invalid; name a generation with --to",
                    target.display()
                )
            })?;
            *generations
                .iter()
                .rev()
                .find(|&&g| g < live)
                .ok_or_else(|| {
                    format!(
                        "no generation of `{name}` older than the live {live} in {}",
                        history.display()
                    )
                })?
        }
    };
    if !generations.contains(&generation) {
        return Err(format!(
            "generation {generation} of `{name}` is not in {} (have {generations:?})",
            history.display()
        ));
    }
    let source = history.join(format!("{generation}.json"));
    let bytes =
        std::fs::read(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    Bundle::parse(&bytes, name).map_err(|e| format!("{}: {e}", source.display()))?;
    write_atomically(&target, &bytes)?;
    Ok(generation)
}

fn history_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(".history").join(name)
}

/// The live file's bytes and content, when it exists and is valid.
fn live(target: &Path) -> Option<(Vec<u8>, Bundle)> {
    let bytes = std::fs::read(target).ok()?;
    let bundle = Bundle::parse_document(&bytes).ok()?;
    Some((bytes, bundle))
}
