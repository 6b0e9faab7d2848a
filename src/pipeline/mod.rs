//! The offline pipeline that produces and ships bundles: build from model signatures (files,
//! `config.pbtxt`), validate, diff, publish and roll back, and its command line. The sidecar
//! never runs it; it shares only the artefact format with [`crate::bundle`].

pub mod build;
pub mod cli;
pub mod diff;
pub mod pbtxt;
pub mod publish;
pub mod signature;
