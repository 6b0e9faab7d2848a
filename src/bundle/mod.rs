//! Allowlist bundles at run time: the v1 artefact format and its checksum, loading a directory
//! with per-bundle last-known-good, the consolidated snapshot, and the directory watcher. The
//! offline side (build, validate, diff, publish) is the `pipeline` module. Knows nothing of HTTP.

pub mod checksum;
pub mod format;
pub mod snapshot;
pub mod store;
pub mod watch;

pub use format::{Bundle, BundleError, ModelEntry, Stage};
pub use snapshot::{Allowlist, AllowlistSnapshot};
pub use store::{BundleStore, ScanReport};
