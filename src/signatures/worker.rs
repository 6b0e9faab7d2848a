//! The tasks that talk to the leaves for a cluster's live signatures: the discovery loop
//! (fetch jobs queued by requests that missed, a few at a time, single flight per key) and
//! the drift check (on every bundle load and every `verify_interval_ms`). Every metadata
//! request goes through the cluster's own client and spends the cluster's budget.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::metadata::{self, tf_status_path};
use super::{
    DriftReport, KeyVersion, Labelled, LiveSignature, LiveSignatures, LiveSource, SignatureKey,
    VersionDrift,
};
use crate::bundle::AllowlistSnapshot;
use crate::classify::Protocol;
use crate::metrics::ModelMetrics;

/// What the tasks need of one cluster and the process around it. The server implements it
/// over its shared state, so that this module depends on neither the upstream clients nor
/// the shared state (they depend on it).
pub trait Leaves: Send + Sync + 'static {
    /// Cluster name (metrics, logs).
    fn name(&self) -> &str;
    /// The cluster's live signatures.
    fn live(&self) -> &LiveSignatures;
    /// `GET path` on the cluster with its client and attempt rules: status and body (at most
    /// `limit` bytes), or why there is none.
    fn get(
        &self,
        path: &str,
        limit: usize,
    ) -> impl Future<Output = Result<(u16, Vec<u8>), String>> + Send;
    /// The allowlists being served.
    fn snapshot(&self) -> Arc<AllowlistSnapshot>;
    /// Whether requests for `model` go to this cluster.
    fn serves(&self, model: &str) -> bool;
    /// Request metric handles for a model name.
    fn model_metrics(&self, model: &str) -> Arc<ModelMetrics>;
}

/// Largest metadata document read (a real one is a few KiB).
const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
/// Fetches running at once per cluster.
const CONCURRENT_FETCHES: usize = 4;
/// Versions of one model asked for an unversioned union, at most.
const MAX_UNION_VERSIONS: usize = 16;

/// Starts a cluster's discovery and drift tasks, as its settings enable them.
pub fn spawn<L: Leaves>(leaves: L) -> Vec<JoinHandle<()>> {
    let leaves = Arc::new(leaves);
    let settings = &leaves.live().settings;
    let mut tasks = Vec::new();
    if settings.discover {
        tasks.push(tokio::spawn(discover_loop(leaves.clone())));
    }
    if settings.verify {
        tasks.push(tokio::spawn(verify_loop(leaves)));
    }
    tasks
}

/// Why a signature could not be had.
#[derive(Debug)]
enum Failure {
    /// The leaf answered 404: no such model (version).
    NotFound,
    /// Unreachable, timed out, a non-2xx answer, or the budget ran dry.
    Error(String),
    /// A 2xx answer that is not a metadata document.
    Invalid(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("not found (404)"),
            Failure::Error(why) => write!(f, "error: {why}"),
            Failure::Invalid(why) => write!(f, "not a metadata document: {why}"),
        }
    }
}

async fn discover_loop<L: Leaves>(leaves: Arc<L>) {
    let taken = leaves
        .live()
        .job_receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut jobs) = taken else {
        return;
    };
    let running = Arc::new(Semaphore::new(CONCURRENT_FETCHES));
    while let Some(key) = jobs.recv().await {
        let Ok(permit) = running.clone().acquire_owned().await else {
            return;
        };
        let leaves = leaves.clone();
        tokio::spawn(async move {
            let _permit = permit;
            discover(leaves.as_ref(), key).await;
        });
    }
}

/// One fetch job: ask the leaf, store the answer (or the failure), wake waiting requests.
async fn discover<L: Leaves>(leaves: &L, key: SignatureKey) {
    let live = leaves.live();
    let result = fetch(leaves, &key).await;
    match result {
        Ok(signature) => {
            tracing::debug!(upstream = leaves.name(), model = %key.model, version = ?key.version, "signature discovered");
            let label = label_for(leaves, &key.model);
            live.finish(key, Ok(Arc::new(signature)), label);
        }
        Err(failure) => {
            tracing::debug!(upstream = leaves.name(), model = %key.model, version = ?key.version, %failure, "signature discovery failed; the model version stays untrimmed");
            live.finish(key, Err(()), None);
        }
    }
}

/// Metric handles for a discovered model name, while the bounded set has room.
fn label_for<L: Leaves>(leaves: &L, model: &str) -> Option<Labelled> {
    let live = leaves.live();
    {
        let cache = live.lock();
        if cache.labelled.contains_key(model) || cache.labelled.len() >= live.settings.max_entries {
            return None;
        }
    }
    Some(Labelled {
        metrics: leaves.model_metrics(model),
        counter: live.counter(model, LiveSource::Discovered),
    })
}

/// The signature a key names: one metadata request, or for an unversioned key the union of
/// the versions the leaf reports (one more request per version, each within the budget).
async fn fetch<L: Leaves>(leaves: &L, key: &SignatureKey) -> Result<LiveSignature, Failure> {
    let live = leaves.live();
    let version = match &key.version {
        KeyVersion::Version(v) => Some(Ok(v.as_ref())),
        KeyVersion::Label(l) => Some(Err(l.as_ref())),
        KeyVersion::Unversioned => None,
    };
    match (key.protocol, version) {
        (protocol, Some(version)) => {
            let path = metadata::metadata_path(protocol, &key.model, Some(version));
            let doc = get_document(leaves, &path).await?;
            signature_of(protocol, &doc)
        }
        (Protocol::KServeV2, None) => {
            let path = metadata::metadata_path(Protocol::KServeV2, &key.model, None);
            let doc = get_document(leaves, &path).await?;
            let default = signature_of(Protocol::KServeV2, &doc)?;
            let versions = metadata::kserve_versions(&doc);
            if versions.len() < 2 {
                return Ok(default);
            }
            let mut parts = vec![default];
            for version in versions.iter().take(MAX_UNION_VERSIONS) {
                spend(live).await?;
                let path =
                    metadata::metadata_path(Protocol::KServeV2, &key.model, Some(Ok(version)));
                let doc = get_document(leaves, &path).await?;
                parts.push(signature_of(Protocol::KServeV2, &doc)?);
            }
            Ok(LiveSignature::union(&parts))
        }
        (Protocol::TfServing, None) => {
            let doc = get_document(leaves, &tf_status_path(&key.model)).await?;
            let versions = metadata::tf_available_versions(&doc).map_err(Failure::Invalid)?;
            if versions.is_empty() {
                return Err(Failure::Error("no version is AVAILABLE".into()));
            }
            let mut parts = Vec::new();
            for version in versions.iter().take(MAX_UNION_VERSIONS) {
                spend(live).await?;
                let path =
                    metadata::metadata_path(Protocol::TfServing, &key.model, Some(Ok(version)));
                let doc = get_document(leaves, &path).await?;
                parts.push(signature_of(Protocol::TfServing, &doc)?);
            }
            Ok(LiveSignature::union(&parts))
        }
    }
}

/// Reads a metadata document per protocol.
fn signature_of(protocol: Protocol, doc: &Value) -> Result<LiveSignature, Failure> {
    let signatures = match protocol {
        Protocol::KServeV2 => vec![(String::new(), metadata::kserve_inputs(doc))],
        Protocol::TfServing => metadata::tf_signatures(doc)
            .map_err(Failure::Invalid)?
            .into_iter()
            .map(|(name, inputs)| (name, Ok(inputs)))
            .collect(),
    };
    let signatures: Vec<(String, Vec<String>)> = signatures
        .into_iter()
        .map(|(name, inputs)| inputs.map(|i| (name, i)))
        .collect::<Result<_, _>>()
        .map_err(Failure::Invalid)?;
    Ok(LiveSignature::new(signatures))
}

/// Waits for the budget to allow one more metadata request (background work only; requests
/// never wait for it). Gives up after a few seconds: the budget is spent by something else.
async fn spend(live: &LiveSignatures) -> Result<(), Failure> {
    let per_second = live.settings.per_second;
    let step = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    for _ in 0..(5 * per_second.max(1)) {
        if live
            .lock()
            .take_token(std::time::Instant::now(), per_second)
        {
            return Ok(());
        }
        tokio::time::sleep(step).await;
    }
    live.stats.throttled.inc();
    Err(Failure::Error("metadata request budget exhausted".into()))
}

/// `GET path` on the cluster, counted by result, as JSON.
async fn get_document<L: Leaves>(leaves: &L, path: &str) -> Result<Value, Failure> {
    let result = match leaves.get(path, MAX_DOCUMENT).await {
        Ok((200, body)) => serde_json::from_slice::<Value>(&body)
            .map_err(|e| Failure::Invalid(format!("{path}: {e}"))),
        Ok((404, _)) => Err(Failure::NotFound),
        Ok((status, _)) => Err(Failure::Error(format!("{path}: status {status}"))),
        Err(e) => Err(Failure::Error(e)),
    };
    let label = match &result {
        Ok(_) => "ok",
        Err(Failure::NotFound) => "not_found",
        Err(Failure::Error(_)) => "error",
        Err(Failure::Invalid(_)) => "invalid",
    };
    leaves
        .live()
        .stats
        .families
        .fetches
        .with_label_values(&[leaves.name(), label])
        .inc();
    result
}

async fn verify_loop<L: Leaves>(leaves: Arc<L>) {
    let live = leaves.live();
    let mut every = tokio::time::interval(live.settings.verify_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Which metadata API answered for a model (a bundle does not say which one it speaks).
    let mut protocols: HashMap<String, Protocol> = HashMap::new();
    let mut gauged: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = live.bundles_changed.notified() => {}
        }
        let report = check(leaves.as_ref(), &mut protocols).await;
        let drift = &live.stats.families.drift;
        let mut models: Vec<String> = Vec::new();
        let mut sums: HashMap<&str, (i64, i64)> = HashMap::new();
        for drift in report.versions.values() {
            let sum = sums.entry(drift.model.as_str()).or_default();
            sum.0 += drift.missing.len() as i64;
            sum.1 += drift.extra.len() as i64;
        }
        for (model, (missing, extra)) in sums {
            drift.with_label_values(&[model, "missing"]).set(missing);
            drift.with_label_values(&[model, "extra"]).set(extra);
            models.push(model.to_owned());
        }
        for gone in gauged.iter().filter(|m| !models.contains(m)) {
            let _ = drift.remove_label_values(&[gone, "missing"]);
            let _ = drift.remove_label_values(&[gone, "extra"]);
        }
        gauged = models;
        live.drift.store(Arc::new(report));
    }
}

/// One drift check: every bundle version of this cluster's models against the leaf.
async fn check<L: Leaves>(leaves: &L, protocols: &mut HashMap<String, Protocol>) -> DriftReport {
    let live = leaves.live();
    let snapshot = leaves.snapshot();
    let previous = live.drift.load_full();
    let mut report = DriftReport::default();
    let models: Vec<&str> = snapshot
        .model_names()
        .filter(|m| leaves.serves(m))
        .collect();
    for model in models {
        let mut parts = Vec::new();
        let mut complete = true;
        let mut drifted = false;
        for (version, allowed) in snapshot.version_features(model) {
            let live_signature = match verify_fetch(leaves, model, version, protocols).await {
                Ok(signature) => Arc::new(signature),
                Err(failure) => {
                    complete = false;
                    tracing::warn!(upstream = leaves.name(), model, version, %failure, "drift check: the leaf's signature could not be read; the last result stands");
                    report.unchecked.push((
                        model.to_owned(),
                        version.to_owned(),
                        failure.to_string(),
                    ));
                    // A leaf that cannot answer now does not clear what it said before (an
                    // alert on it stays until a check says otherwise).
                    let key = (model.to_owned(), version.to_owned());
                    if let Some(before) = previous.versions.get(&key) {
                        drifted |= !before.missing.is_empty();
                        report.versions.insert(key, before.clone());
                    }
                    continue;
                }
            };
            let declared = live_signature.default_inputs();
            let missing: Vec<String> = declared
                .iter()
                .filter(|i| allowed.binary_search(i).is_err())
                .map(|i| (*i).to_owned())
                .collect();
            let extra: Vec<String> = allowed
                .iter()
                .filter(|a| declared.binary_search(a).is_err())
                .map(|a| (*a).to_owned())
                .collect();
            let key = (model.to_owned(), version.to_owned());
            let before = previous.versions.get(&key);
            let since = match before {
                Some(b) if !b.missing.is_empty() && !missing.is_empty() => b.since.clone(),
                _ if !missing.is_empty() => Some(crate::bundle::format::rfc3339(SystemTime::now())),
                _ => None,
            };
            if !missing.is_empty() && before.is_none_or(|b| b.missing != missing) {
                tracing::warn!(
                    upstream = leaves.name(),
                    model,
                    version,
                    ?missing,
                    on_drift = live.settings.on_drift.as_str(),
                    "drift: the bundle allowlist lacks inputs the leaf declares"
                );
            } else if missing.is_empty() && before.is_some_and(|b| !b.missing.is_empty()) {
                tracing::info!(upstream = leaves.name(), model, version, "drift cleared");
            }
            drifted |= !missing.is_empty();
            parts.push(live_signature.clone());
            report.versions.insert(
                key,
                VersionDrift {
                    model: model.to_owned(),
                    version: version.to_owned(),
                    missing,
                    extra,
                    since,
                    live: live_signature,
                },
            );
        }
        let union = (complete && !parts.is_empty())
            .then(|| Arc::new(LiveSignature::union(parts.iter().map(|p| p.as_ref()))));
        report.models.insert(
            model.to_owned(),
            (drifted, union, live.counter(model, LiveSource::Drift)),
        );
    }
    report.checked_at = Some(SystemTime::now());
    report
}

/// A bundle version's signature: the metadata API that answered for the model before, else
/// KServe V2 and then TF Serving.
async fn verify_fetch<L: Leaves>(
    leaves: &L,
    model: &str,
    version: &str,
    protocols: &mut HashMap<String, Protocol>,
) -> Result<LiveSignature, Failure> {
    let order = match protocols.get(model) {
        Some(Protocol::TfServing) => [Protocol::TfServing, Protocol::KServeV2],
        _ => [Protocol::KServeV2, Protocol::TfServing],
    };
    let mut last = Failure::NotFound;
    for protocol in order {
        spend(leaves.live()).await?;
        let key = SignatureKey {
            protocol,
            model: model.into(),
            version: KeyVersion::Version(version.into()),
        };
        match fetch(leaves, &key).await {
            Ok(signature) => {
                protocols.insert(model.to_owned(), protocol);
                return Ok(signature);
            }
            // Another API may serve it; an unreachable leaf will not answer the other either.
            Err(e @ (Failure::NotFound | Failure::Invalid(_))) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
