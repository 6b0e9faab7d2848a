//! feature-trimmer: a sidecar proxy that removes, from each score request, the features the
//! target model version does not use, and forwards the smaller request to leaf model servers.
//!
//! # Layout
//! - [`config`]: the TOML file, defaults, command-line overrides, validation of every problem.
//! - [`classify`]: what a URL addresses (protocol, model, version or label, score verb).
//! - [`bundle`]: the allowlist artefact, directory loading with last-known-good, the snapshot,
//!   the directory watcher.
//! - [`reload`]: rescans on events, timer and demand; swaps the serving state whole.
//! - [`trim`]: the trimming engines (pure: bytes and allowlist in, bytes and counts out).
//! - [`compression`]: lz4 frames on the trimmer-to-trimmer link, with a decode limit.
//! - [`upstream`]: clusters of leaves, routing by model, pooled clients, ejection, timeouts.
//! - [`proxy`]: the request path, from downstream body to upstream response.
//! - [`demo`]: the end-to-end demo on loopback (`trimmer demo`).
//! - [`check`]: offline validation of a configuration and its bundles.
//! - [`admin`]: health, readiness, metrics and status on a separate port.
//! - [`loadtest`]: the checking leaf and workload files for the e2e harness in `benches/e2e/`.
//! - [`workload`]: the reference workloads shared by benches, tests and the e2e harness.
//! - [`metrics`]: the Prometheus families.
//! - [`server`]: listeners, connection tasks, graceful shutdown.
//! - [`state`]: what the listeners share.

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
pub mod h1;
pub mod loadtest;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod trim;
pub mod upstream;
pub mod workload;
