//! feature-trimmer: a sidecar proxy that removes, from each score request, the features the
//! target model version does not use, and forwards the smaller request to leaf model servers.
//!
//! # Layout
//! In reading order: the request path, then the allowlists it reads, then what runs around them.
//! - [`server`]: listeners, a task per connection, graceful shutdown.
//! - [`proxy`]: the request lifecycle, written once: route, the trim decision, the forwarded
//!   head, the answer; its transports ([`proxy::lean`] for HTTP/1.1 parsed in place,
//!   [`proxy::general`] for everything hyper serves), the sidecar's own answers
//!   ([`proxy::answer`]) and client connections ([`proxy::io`]).
//! - [`classify`]: what a URL addresses (protocol, model, version or label, score verb).
//! - [`upstream`]: clusters of leaves, routing by model, the attempt rules, ejection, timeouts,
//!   and the lean HTTP/1.1 client with its pool ([`upstream::h1`]).
//! - [`headers`]: header rules both directions share (hop-by-hop, Triton's length header).
//! - [`trim`]: the trimming engines (pure: bytes and allowlist in, bytes and counts out).
//! - [`compression`]: lz4 frames on the trimmer-to-trimmer link, with a decode limit.
//! - [`state`]: what the listeners share for the life of the process.
//! - [`bundle`]: the allowlist artefact, directory loading with last-known-good, the snapshot,
//!   the directory watcher.
//! - [`signatures`]: live signatures: a model's inputs learned from the leaf's metadata, a
//!   second allowlist layer under the bundles, and the drift check of bundles against them.
//! - [`objstore`]: bundles from S3-compatible storage: layout, publish/rollback, the poller
//!   that fills the cache directory the reloader loads.
//! - [`verify`]: shadow verification: a sample of trimmed requests also sent untrimmed, off
//!   the client's path and within budgets; answers compared by protocol; versions whose
//!   answers disagree switched to observe.
//! - [`reload`]: rescans on events, timer and demand; swaps the serving state whole.
//! - [`metrics`]: the Prometheus families.
//! - [`admin`]: health, readiness, metrics and status on a separate port.
//! - [`config`]: the TOML file, defaults, command-line overrides, validation of every problem.
//! - [`check`]: offline validation of a configuration and its bundles.
//! - [`pipeline`]: the offline pipeline and `trimmer bundle`: build, validate, diff, publish,
//!   roll back.
//! - [`demo`]: the end-to-end demo on loopback (`trimmer demo`).
//! - `workload` and `loadtest` (feature `testkit`, never in the `trimmer` binary): the
//!   reference workloads shared by benches and tests, and the checking leaf of the e2e harness
//!   in `benches/e2e/` (binary `trimmer-e2e`).

// Every `unsafe` operation is in a block of its own, with the reason it is sound beside it.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod bundle;
pub mod check;
pub mod classify;
pub mod compression;
pub mod config;
pub mod demo;
pub mod headers;
#[cfg(feature = "testkit")]
pub mod loadtest;
pub mod metrics;
pub mod objstore;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod signatures;
pub mod state;
pub mod trim;
pub mod upstream;
pub mod verify;
#[cfg(feature = "testkit")]
pub mod workload;
