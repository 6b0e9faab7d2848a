//! Allowlist bundles at run time: the v1 artefact format and its checksum, loading a directory
//! with per-bundle last-known-good, what serving keeps of each bundle (its table), the
//! consolidated snapshot, and the directory watcher. The
//! offline side (build, validate, diff, publish) is the `pipeline` module. Knows nothing of HTTP.

pub mod checksum;
pub mod document;
pub mod format;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod watch;

pub use format::{Bundle, BundleError, BundleView, ModelEntry, Stage};
pub use snapshot::AllowlistSnapshot;
pub use store::{BundleStore, ScanReport};
pub use table::{Allowlist, BundleTable, FeatureNames};

/// Hands memory the allocator holds free back to the operating system. glibc keeps what a
/// bundle load freed (parsed documents are many times the tables kept) in its arenas for
/// good; trimming after a load is what brings the resident size down to what is in use.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
