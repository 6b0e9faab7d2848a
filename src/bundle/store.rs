//! The bundle directory as last seen: one entry per bundle name with its last-known-good
//! table. A scan lists the directory, re-reads every candidate file, and only parses the
//! ones whose bytes changed; a file that fails keeps its predecessor's table (stale). A
//! table whose content did not change stays the same allocation, so snapshots built after
//! the scan reuse everything merged from it.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::checksum::hex;
use super::format::{BundleError, BundleView};
use super::snapshot::AllowlistSnapshot;
use super::table::{BundleTable, FeatureNames};
use crate::config::TrimConfig;

/// Name of the sentinel file whose presence disables all trimming.
pub const KILL_SWITCH_FILE: &str = "TRIMMING_DISABLED";

/// What is known about one bundle name.
#[derive(Debug, Clone)]
pub struct BundleState {
    /// File the bundle was read from.
    pub path: PathBuf,
    /// What serving keeps of the last content that parsed and validated; `None` if the file
    /// never did.
    pub good: Option<Arc<BundleTable>>,
    /// SHA-256 of the last good file's bytes.
    pub good_digest: Option<String>,
    /// When the last good content was loaded.
    pub loaded_at: Option<SystemTime>,
    /// The current file failed; `good` (if any) is what is being served.
    pub stale: bool,
    /// Why the current file failed.
    pub last_error: Option<String>,
    /// SHA-256 of the bytes last examined, good or not: unchanged bytes are not re-parsed.
    seen_digest: [u8; 32],
    /// The file's stamp when those bytes were read, and when: an unchanged stamp spares
    /// re-reading the file at all.
    seen_stamp: Option<(FileStamp, SystemTime)>,
}

/// How long after a write a file's stamp is not trusted: timestamps can be coarser than the
/// time between two writes of the same size (the "racily clean" case git knows), so a file
/// read within this of its last change is read again at the next scan.
const RACY: Duration = Duration::from_secs(2);

/// Names no bundle lists that are kept before compacting (beyond as many as are listed).
const COMPACT_SLACK: usize = 1024;

/// What `stat` says of a file's identity, size and change times. The same stamp as when the
/// file was read (and read well after its last change) means the same bytes, so a scan of an
/// unchanged directory reads no bundle at all: kubelet touches and renames change the stamp
/// (times or inode) and are re-read as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The later of the two change times.
    fn changed(&self) -> SystemTime {
        let at = |(secs, nanos): (i64, i64)| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        at(self.mtime).max(at(self.ctime))
    }
}

impl BundleState {
    /// Whether the file still has the stamp it had when last read, and was read long enough
    /// after its last change for the stamp to tell.
    fn unchanged_since_read(&self, stamp: &FileStamp, racy: Duration) -> bool {
        self.seen_stamp
            .is_some_and(|(seen, read_at)| seen == *stamp && stamp.changed() + racy < read_at)
    }
}

/// One file examined during a scan.
#[derive(Debug, Clone)]
pub struct LoadEvent {
    /// Bundle name.
    pub bundle: String,
    /// `Ok` when it loaded; the reason otherwise.
    pub result: Result<(), String>,
}

/// What a scan found and did.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// The set of good bundle contents changed: the snapshot must be rebuilt.
    pub changed: bool,
    /// Files whose bytes changed (or appeared) and were parsed.
    pub loads: Vec<LoadEvent>,
    /// Bundles whose file disappeared.
    pub removed: Vec<String>,
    /// The directory could not be listed; nothing was changed.
    pub dir_error: Option<String>,
    /// Files whose bytes were read (the others had the stamp they had when last read).
    pub read: usize,
    /// Bytes of the files parsed (read with new content).
    pub parsed_bytes: u64,
}

/// The bundle directory's loaded state.
#[derive(Debug, Default)]
pub struct BundleStore {
    /// Watched directory; `None` when no directory is configured.
    dir: Option<PathBuf>,
    /// Largest bundle file read; a larger one is refused (its last-known-good stays).
    max_file_bytes: u64,
    /// Bundle name → state, in name order.
    entries: BTreeMap<String, BundleState>,
    /// Whether the kill-switch file was present at the last successful listing.
    kill_switch: bool,
    /// Feature names of every table, interned once (copied on write while a snapshot shares
    /// them).
    names: Arc<FeatureNames>,
    /// [`RACY`], shorter in tests.
    racy: Duration,
}

impl BundleStore {
    /// An empty store for `dir` that reads bundle files of up to `max_file_bytes`.
    pub fn new(dir: Option<PathBuf>, max_file_bytes: u64) -> Self {
        Self {
            dir,
            max_file_bytes,
            racy: RACY,
            ..Self::default()
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Every known bundle name with its state.
    pub fn entries(&self) -> &BTreeMap<String, BundleState> {
        &self.entries
    }

    /// Good bundle tables, in name order.
    pub fn good_bundles(&self) -> impl Iterator<Item = &Arc<BundleTable>> {
        self.entries.values().filter_map(|e| e.good.as_ref())
    }

    /// The names the tables' ids refer to.
    pub fn names(&self) -> &Arc<FeatureNames> {
        &self.names
    }

    /// The snapshot of the good tables, reusing from `previous` what no scan changed.
    pub fn snapshot(
        &self,
        previous: Option<&AllowlistSnapshot>,
        trim: &TrimConfig,
    ) -> AllowlistSnapshot {
        let tables: Vec<Arc<BundleTable>> = self.good_bundles().cloned().collect();
        AllowlistSnapshot::assemble(&tables, self.names.clone(), previous, trim)
    }

    /// Whether the kill-switch file is present.
    pub fn kill_switch(&self) -> bool {
        self.kill_switch
    }

    /// Lists the directory and brings every entry up to date, reading files one at a time.
    pub fn scan(&mut self) -> ScanReport {
        self.scan_on(1)
    }

    /// [`Self::scan`], reading and parsing the files that changed on up to `threads` threads
    /// (the first scan of a fleet-sized directory, before the sidecar is ready, has every
    /// core to itself; a reload while serving runs on one, so requests keep the others).
    /// Every outcome is recorded in listing order, whatever the order they finished in.
    pub fn scan_on(&mut self, threads: usize) -> ScanReport {
        let mut report = ScanReport::default();
        let Some(dir) = self.dir.clone() else {
            return report;
        };
        let listing = match list_candidates(&dir) {
            Ok(listing) => listing,
            Err(e) => {
                report.dir_error = Some(format!("cannot list {}: {e}", dir.display()));
                return report;
            }
        };
        self.kill_switch = dir.join(KILL_SWITCH_FILE).exists();
        let mut present = std::collections::HashSet::new();
        let mut to_read = Vec::new();
        for (name, path, stamp) in listing {
            match self.entries.get(&name) {
                Some(e) if e.unchanged_since_read(&stamp, self.racy) => {
                    present.insert(name);
                }
                entry => {
                    let seen = entry.map(|e| e.seen_digest);
                    to_read.push((name, path, seen));
                }
            }
        }
        report.read = to_read.len();
        // A clone, not the store's own: a panicking parse leaves the store's names whole.
        let names = Mutex::new(self.names.clone());
        let known = &*self.names;
        let max = self.max_file_bytes;
        let read = in_parallel(&to_read, threads, |(name, path, seen)| {
            read_file(name, path, *seen, max, known, &names)
        });
        self.names = names.into_inner().unwrap_or_else(|p| p.into_inner());
        for ((name, path, _), read) in to_read.into_iter().zip(read) {
            let read = match read {
                FileRead::Gone => continue,
                FileRead::Unreadable(why) => {
                    present.insert(name.clone());
                    self.record_failure(&name, path, [0; 32], why, &mut report);
                    continue;
                }
                FileRead::Read(read) => read,
            };
            present.insert(name.clone());
            let seen_stamp = Some((read.stamp, read.read_at));
            let parsed = match read.parsed {
                None => {
                    // The same bytes as last time: nothing to do but trust the new stamp.
                    if let Some(entry) = self.entries.get_mut(&name) {
                        entry.seen_stamp = seen_stamp;
                    }
                    continue;
                }
                Some(parsed) => parsed,
            };
            let digest = read.digest;
            report.parsed_bytes += read.len;
            match parsed {
                Ok(table) => {
                    let previous = self.entries.get(&name).and_then(|e| e.good.as_ref());
                    let table = match previous {
                        // Same content (reformatted, say): keep the allocation snapshots share.
                        Some(previous) if **previous == table => previous.clone(),
                        _ => {
                            report.changed = true;
                            Arc::new(table)
                        }
                    };
                    self.entries.insert(
                        name.clone(),
                        BundleState {
                            path,
                            good: Some(table),
                            good_digest: Some(hex(&digest)),
                            loaded_at: Some(SystemTime::now()),
                            stale: false,
                            last_error: None,
                            seen_digest: digest,
                            seen_stamp,
                        },
                    );
                    report.loads.push(LoadEvent {
                        bundle: name,
                        result: Ok(()),
                    });
                }
                Err(e) => {
                    let why = format!("{}: {e}", path.display());
                    self.record_failure(&name, path, digest, why, &mut report);
                    if let Some(entry) = self.entries.get_mut(&name) {
                        entry.seen_stamp = seen_stamp;
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(entry) = self.entries.remove(&name) {
                report.changed |= entry.good.is_some();
            }
            report.removed.push(name);
        }
        if report.changed {
            self.compact_names();
        }
        report
    }

    /// Names only grow as bundles change; when most are no longer listed by any bundle (a
    /// fleet that renamed its features, say), they are interned afresh from the live ones and
    /// every table is rebuilt on the new ids. Rare, and the one reload that does it merges
    /// every model again.
    fn compact_names(&mut self) {
        let live = super::table::Allowlist::union_of(self.good_bundles().map(|t| t.used()));
        if self.names.len() <= 2 * live.len() + COMPACT_SLACK {
            return;
        }
        let mut fresh = Arc::new(FeatureNames::default());
        let mut map = vec![u32::MAX; self.names.len()];
        for id in live.ids() {
            if let Some(name) = self.names.name(id) {
                map[id as usize] = FeatureNames::intern(&mut fresh, name);
            }
        }
        for entry in self.entries.values_mut() {
            if let Some(table) = &entry.good {
                entry.good = Some(Arc::new(table.remap(&map)));
            }
        }
        tracing::info!(
            before = self.names.len(),
            after = fresh.len(),
            "feature names compacted"
        );
        self.names = fresh;
    }

    fn record_failure(
        &mut self,
        name: &str,
        path: PathBuf,
        digest: [u8; 32],
        why: String,
        report: &mut ScanReport,
    ) {
        let entry = self
            .entries
            .entry(name.to_owned())
            .or_insert_with(|| BundleState {
                path: path.clone(),
                good: None,
                good_digest: None,
                loaded_at: None,
                stale: true,
                last_error: None,
                seen_digest: [0; 32],
                seen_stamp: None,
            });
        entry.path = path;
        entry.stale = true;
        entry.last_error = Some(why.clone());
        entry.seen_digest = digest;
        entry.seen_stamp = None;
        report.loads.push(LoadEvent {
            bundle: name.to_owned(),
            result: Err(why),
        });
    }
}

/// What reading one bundle file gave.
enum FileRead {
    /// The file is gone since the listing (a dangling link, a deletion): not broken.
    Gone,
    /// It could not be read; the reason.
    Unreadable(String),
    /// Its bytes were read.
    Read(ReadBundle),
}

/// A bundle file's bytes, hashed and (when they changed) parsed.
struct ReadBundle {
    /// SHA-256 of the bytes.
    digest: [u8; 32],
    /// The file's stamp when read, and when that was.
    stamp: FileStamp,
    read_at: SystemTime,
    /// `None` when the bytes are the ones last examined; otherwise the table or why not.
    parsed: Option<Result<BundleTable, BundleError>>,
    /// Number of bytes.
    len: u64,
}

/// Reads, hashes and (unless its digest is `seen`) parses bundle `name` from `path`, adding
/// the feature names `known` lacks to `names`. The file's bytes are dropped before returning:
/// the table is all that stays.
fn read_file(
    name: &str,
    path: &Path,
    seen: Option<[u8; 32]>,
    max: u64,
    known: &FeatureNames,
    names: &Mutex<Arc<FeatureNames>>,
) -> FileRead {
    let read_at = SystemTime::now();
    let (bytes, stamp) = match read_bounded(path, max) {
        Ok(read) => read,
        Err(e) if e.kind() == ErrorKind::NotFound => return FileRead::Gone,
        Err(e) => return FileRead::Unreadable(format!("cannot read {}: {e}", path.display())),
    };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let parsed = (seen != Some(digest)).then(|| {
        BundleView::with(&bytes, Some(name), |view| {
            BundleTable::from_view_shared(view, known, names)
        })
    });
    FileRead::Read(ReadBundle {
        digest,
        stamp,
        read_at,
        parsed,
        len: bytes.len() as u64,
    })
}

/// `work` applied to every item on up to `threads` threads, results in `items`' order.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(&work).collect();
    }
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, work(item)));
        }
    };
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(worker)).collect();
        let mine = worker();
        for (i, result) in helpers
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .chain(mine)
        {
            results[i] = Some(result);
        }
    });
    results.into_iter().flatten().collect()
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot install {}: {e}", path.display())
    })
}

/// Reads a bundle file of at most `max` bytes. The file is opened without blocking and the
/// opened handle must be a regular file: a FIFO swapped in after the listing would block a
/// plain `open` forever, and a device or `/proc` file (size 0, endless content) is not a
/// bundle. The bytes are counted while reading, whatever size the file claims.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, FileStamp)> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    // Taken before reading: a write during the read changes the stamp the next scan sees.
    let stamp = FileStamp::of(&meta);
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::other(format!("{what}, not a regular file")));
    }
    // Sized as the file says (one allocation, no copies as it grows); counted all the same.
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut file = file;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok((bytes, stamp)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if (bytes.len() + n) as u64 > max {
            return Err(std::io::Error::other(format!(
                "larger than bundles.max_file_bytes ({max} bytes)"
            )));
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// `(bundle name, path, stamp)` of every `*.json` entry that is not hidden or an editor file.
fn list_candidates(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, FileStamp)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        // `..data`, `..2026_11_22...` (ConfigMap internals), dotfiles, `#emacs#` saves.
        if file_name.starts_with('.') || file_name.starts_with('#') {
            continue;
        }
        let Some(name) = file_name.strip_suffix(".json") else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let path = entry.path();
        // A dangling link is a deleted bundle; anything else that is not a regular file (a
        // directory, FIFO or device under a bundle's name) is listed and fails to load, so it
        // shows in `/status` and the load metrics instead of vanishing silently.
        if let Ok(meta) = std::fs::metadata(&path) {
            out.push((name.to_owned(), path, FileStamp::of(&meta)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = r#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 1,
        "models": [{"model": "m", "version": "1", "features": ["a", "b"]}]}"#;

    #[test]
    fn only_files_whose_stamp_changed_are_read_again() {
        let dir = std::env::temp_dir().join(format!("trimmer-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("home.json");
        std::fs::write(&file, BUNDLE).unwrap();
        let mut store = BundleStore::new(Some(dir.clone()), 1 << 20);

        // A file changed within the racy window of its read is read at every scan.
        let first = store.scan();
        assert_eq!((first.read, first.changed), (1, true));
        assert_eq!(
            store.scan().read,
            1,
            "just written: the stamp is not trusted yet"
        );

        // Read well after its change (no window here): the stamp alone says unchanged.
        store.racy = Duration::ZERO;
        let idle = store.scan();
        assert_eq!((idle.read, idle.changed, idle.loads.len()), (0, false, 0));
        let table = store.entries()["home"].good.clone().unwrap();

        // A touch (kubelet) changes the stamp: read, same digest, nothing loaded.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let touched = store.scan();
        assert_eq!((touched.read, touched.changed), (1, false));
        assert!(touched.loads.is_empty());

        // New content through a rename: a new inode, read and loaded.
        let tmp = dir.join("home.json.tmp");
        std::fs::write(&tmp, BUNDLE.replace("\"b\"", "\"c\"")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let renamed = store.scan();
        assert_eq!((renamed.read, renamed.changed), (1, true));
        assert!(!Arc::ptr_eq(
            &table,
            store.entries()["home"].good.as_ref().unwrap()
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_scan_on_several_threads_loads_what_one_thread_loads() {
        let dir = std::env::temp_dir().join(format!("trimmer-parallel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for b in 0..7 {
            let models: Vec<serde_json::Value> = (0..3)
                .map(|v| {
                    let features: Vec<String> = (0..50)
                        .map(|f| format!("f{}", (b * 7 + v * 13 + f) % 90))
                        .collect();
                    serde_json::json!({"model": format!("m{}", b % 3), "version": format!("{b}{v}"),
                        "features": features})
                })
                .collect();
            let bundle = serde_json::json!({"format": "trimmer.bundle/v1", "bundle": format!("b{b}"),
                "generation": 1, "models": models});
            // Compact (feature lists read as their text) and pretty, alike.
            let text = if b % 2 == 0 {
                serde_json::to_string(&bundle).unwrap()
            } else {
                serde_json::to_string_pretty(&bundle).unwrap()
            };
            std::fs::write(dir.join(format!("b{b}.json")), text).unwrap();
        }
        std::fs::write(dir.join("broken.json"), "{\"format\": ").unwrap();
        let mut one = BundleStore::new(Some(dir.clone()), 1 << 20);
        let mut four = BundleStore::new(Some(dir.clone()), 1 << 20);
        let (a, b) = (one.scan_on(1), four.scan_on(4));
        let outcomes = |r: &ScanReport| -> Vec<(String, bool)> {
            let mut outcomes: Vec<_> = r
                .loads
                .iter()
                .map(|l| (l.bundle.clone(), l.result.is_ok()))
                .collect();
            outcomes.sort();
            outcomes
        };
        assert_eq!(outcomes(&a), outcomes(&b));
        assert_eq!(outcomes(&b).len(), 8);
        assert_eq!((a.read, b.read, a.changed, b.changed), (8, 8, true, true));
        assert!(four.entries()["broken"].stale && four.entries()["broken"].good.is_none());
        let trim = TrimConfig::default();
        let (a, b) = (one.snapshot(None, &trim), four.snapshot(None, &trim));
        assert_eq!(a.allowlists(), 21);
        assert_eq!((a.distinct_features(), b.distinct_features()), (90, 90));
        for model in ["m0", "m1", "m2"] {
            assert_eq!(a.version_features(model), b.version_features(model));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_no_bundle_lists_any_more_are_compacted_away() {
        let dir = std::env::temp_dir().join(format!("trimmer-compact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("home.json");
        let write = |prefix: &str| {
            let features: Vec<String> = (0..2000).map(|i| format!("{prefix}{i}")).collect();
            let bundle = serde_json::json!({"format": "trimmer.bundle/v1", "bundle": "home",
                "generation": 1, "models": [{"model": "m", "version": "1", "features": features}]});
            std::fs::write(&file, bundle.to_string()).unwrap();
        };
        let mut store = BundleStore::new(Some(dir.clone()), 1 << 20);
        write("a");
        store.scan();
        write("b");
        store.scan();
        assert_eq!(store.names().len(), 4000, "2000 stale names are kept");
        let before = store.snapshot(None, &TrimConfig::default());
        write("c");
        assert!(store.scan().changed);
        assert_eq!(
            store.names().len(),
            2000,
            "6000 names, 2000 listed: compacted"
        );
        let after = store.snapshot(Some(&before), &TrimConfig::default());
        let table = store.entries()["home"].good.clone().unwrap();
        assert_eq!(table.used().len(), 2000);
        assert_eq!(after.distinct_features(), 2000);
        let crate::bundle::snapshot::Lookup::Found { entry, .. } =
            after.lookup("m", &crate::classify::VersionSpec::Version("1".into()))
        else {
            panic!("m@1 not found")
        };
        assert!(after.allows(&entry.allowlist, "c0") && after.allows(&entry.allowlist, "c1999"));
        assert!(!after.allows(&entry.allowlist, "b0") && after.feature_id("a0").is_none());
        assert!(
            before.feature_id("b0").is_some(),
            "the old snapshot keeps its own names"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
