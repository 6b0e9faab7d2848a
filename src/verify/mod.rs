//! Shadow verification: proof on live traffic that a trimmed request scores the same as the
//! original. For a sample of trimmed requests the original goes to the same cluster too, off
//! the client's path and within process-wide budgets; the two answers are compared by protocol
//! ([`compare`]) while the client's answer is relayed untouched ([`capture`]). A model version
//! whose answers disagree `mismatches_to_disable` times within `window_ms` is switched to
//! observe until an admin re-arms it or a new bundle generation for it arrives. Noise pairs (the
//! trimmed request sent twice) teach how much the leaf differs from itself; a difference no
//! larger than that is `noise`, not a mismatch.
//!
//! HTTP transports only (TF Serving REST, KServe V2 JSON and binary); gRPC answers are not
//! compared.

pub mod capture;
pub mod compare;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::bundle::snapshot::{Lookup, VersionAllowlist};
use crate::bundle::AllowlistSnapshot;
use crate::classify::{Protocol, VersionSpec};
use crate::config::{ms, Mode, VerifyConfig};
use crate::metrics::{ModelMetrics, VerifyResult};
use crate::upstream::Cluster;
use crate::upstream::{h1, Outgoing};
use capture::{parse_http1, Tee, MAX_ANSWER_BYTES};
use compare::{Answer, Example, Spread, Tolerance};

/// Noise pairs a model version needs before a difference can be called a mismatch on a leaf
/// that has shown noise; until then every verification sends one.
const NOISE_WARMUP: u32 = 20;
/// A difference up to this many times the largest noise-pair spread seen is `noise`.
const NOISE_MARGIN: f64 = 3.0;

/// A model version, as verification keys its state.
type VersionKey = (Box<str>, Box<str>);

/// The process's verification state: budgets, what each version learned, and the versions
/// switched to observe.
pub struct Verifier {
    /// The `[verify]` table.
    config: VerifyConfig,
    /// Verifications in flight (each holds one until it ends).
    inflight: Arc<AtomicUsize>,
    /// Shadow bytes allowed now (a token bucket of one second).
    bytes: Mutex<ByteBudget>,
    /// Set while any version is contained, so the request path skips the map otherwise.
    any_contained: AtomicBool,
    /// Versions switched to observe; read on the request path, replaced whole on change.
    contained: ArcSwap<HashMap<VersionKey, Containment>>,
    /// Serialises changes of `contained` and holds what each version learned; taken by
    /// sampled requests and verification tasks only.
    versions: Mutex<HashMap<VersionKey, Learned>>,
}

/// Why and since when a version runs in observe.
#[derive(Clone)]
struct Containment {
    /// When verification switched it.
    since: SystemTime,
    /// The bundle generation it was switched under (another one re-arms it).
    generation: u64,
    /// Mismatches within the window when it was switched.
    mismatches: usize,
    /// The mismatch that tipped it (logged once).
    example: Example,
    /// Its model's metrics (the `trimmer_verify_contained` gauge).
    metrics: Arc<ModelMetrics>,
}

/// What verification learned about one version.
#[derive(Default)]
struct Learned {
    /// Noise pairs compared.
    noise_pairs: u32,
    /// The largest spread they showed.
    noise: Spread,
    /// When recent mismatches happened (pruned to the window).
    mismatches: VecDeque<Instant>,
}

/// Shadow bytes per second with one second of burst.
struct ByteBudget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBudget {
    fn take(&mut self, bytes: usize) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// A sampled request admitted within the budgets: what its verification needs to know. Holds
/// one of `max_inflight` until dropped.
pub struct Ticket {
    model: Box<str>,
    version: Box<str>,
    generation: u64,
    protocol: Protocol,
    settings: VerifyConfig,
    /// Send the trimmed request a second time.
    noise: bool,
    metrics: Arc<ModelMetrics>,
    _inflight: Inflight,
}

/// One verification in flight.
struct Inflight(Arc<AtomicUsize>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticket {
    /// The model whose version is verified.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// A ticket that will not be used (e.g. the cluster encodes bodies): counted `skipped`.
    pub fn skip(self) {
        self.metrics.verified(VerifyResult::Skipped);
    }
}

/// The requests a verification sends, as the transport planned them.
pub struct Shadow {
    /// Origin-form target, query included.
    pub target: String,
    /// The header lines hold the client's `Host`.
    pub host_kept: bool,
    /// Header lines of the original request (its own lengths), ending with the empty line.
    pub original_lines: Vec<u8>,
    /// The original body.
    pub original: Bytes,
    /// Header lines of the trimmed request, as forwarded.
    pub trimmed_lines: Vec<u8>,
    /// The trimmed body, as forwarded (sent again for a noise pair).
    pub trimmed: Bytes,
}

/// Where the transport hands over the client's answer once it was relayed (`None`: it could
/// not be kept). Dropping it unsent counts the verification as `error`.
pub type AnswerSender = oneshot::Sender<Option<Answer>>;

impl Verifier {
    /// Verification with the `[verify]` settings.
    pub fn new(config: VerifyConfig) -> Self {
        Verifier {
            config,
            inflight: Arc::new(AtomicUsize::new(0)),
            bytes: Mutex::new(ByteBudget {
                rate: config.max_bytes_per_second as f64,
                tokens: config.max_bytes_per_second as f64,
                last: Instant::now(),
            }),
            any_contained: AtomicBool::new(false),
            contained: ArcSwap::default(),
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The mode of `entry` (of `model`) once containment is applied: observe while
    /// verification holds the version (or, for the union of a model's versions, any of them).
    pub fn mode(&self, model: &str, entry: &VersionAllowlist) -> Mode {
        if !self.any_contained.load(Ordering::Relaxed) {
            return entry.mode;
        }
        let contained = self.contained.load();
        let held = match &entry.version {
            Some(version) => contained.contains_key(&(model.into(), version.clone())),
            None => contained.keys().any(|(m, _)| m.as_ref() == model),
        };
        if held {
            entry.mode.min(Mode::Observe)
        } else {
            entry.mode
        }
    }

    /// Whether to verify a request trimmed from `original_len` to `trimmed_len` bytes: drawn
    /// at the version's `sample` rate, then admitted within the budgets (over them: counted
    /// `skipped`, no ticket). The union of a model's versions is never verified.
    pub fn sample(
        &self,
        metrics: &Arc<ModelMetrics>,
        model: &str,
        protocol: Protocol,
        entry: &VersionAllowlist,
        original_len: usize,
        trimmed_len: usize,
    ) -> Option<Ticket> {
        let settings = match &entry.verify {
            Some(o) => self.config.with(o),
            None => self.config,
        };
        let version = entry.version.as_ref()?;
        if settings.sample <= 0.0 || unit_random() >= settings.sample {
            return None;
        }
        let key: VersionKey = (model.into(), version.clone());
        let warming = {
            let versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
            versions
                .get(&key)
                .is_none_or(|l| l.noise_pairs < NOISE_WARMUP)
        };
        let noise = warming || unit_random() < settings.noise_sample;
        let bytes = original_len + if noise { trimmed_len } else { 0 };
        let admitted = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.max_inflight).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            metrics.verified(VerifyResult::Skipped);
            return None;
        }
        let inflight = Inflight(self.inflight.clone());
        if !self
            .bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bytes)
        {
            metrics.verified(VerifyResult::Skipped);
            return None;
        }
        Some(Ticket {
            model: key.0,
            version: key.1,
            generation: entry.generation,
            protocol,
            settings,
            noise,
            metrics: metrics.clone(),
            _inflight: inflight,
        })
    }

    /// Verifies a ticketed request against `cluster` (the one its model routes to) and records
    /// the result: the transport sends the client's answer to `primary` once relayed.
    pub async fn run(
        &self,
        cluster: &Cluster,
        ticket: &Ticket,
        shadow: Shadow,
        primary: oneshot::Receiver<Option<Answer>>,
    ) {
        let (result, example) = self.verify(cluster, ticket, shadow, primary).await;
        self.conclude(ticket, result, example);
    }

    /// Records a verification's result; a mismatch may contain the version.
    fn conclude(&self, ticket: &Ticket, result: VerifyResult, example: Option<Example>) {
        ticket.metrics.verified(result);
        let (Some(example), VerifyResult::Mismatch) = (example, result) else {
            return;
        };
        let key: VersionKey = (ticket.model.clone(), ticket.version.clone());
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let learned = versions.entry(key.clone()).or_default();
        let now = Instant::now();
        let window = ms(ticket.settings.window_ms);
        learned.mismatches.push_back(now);
        while learned
            .mismatches
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            learned.mismatches.pop_front();
        }
        tracing::debug!(model = %key.0, version = %key.1, output = %example.output, trimmed = %example.trimmed, original = %example.original, "verification mismatch");
        let mismatches = learned.mismatches.len();
        if mismatches < ticket.settings.mismatches_to_disable as usize
            || self.contained.load().contains_key(&key)
        {
            return;
        }
        tracing::warn!(
            model = %key.0,
            version = %key.1,
            mismatches,
            window_ms = ticket.settings.window_ms,
            output = %example.output,
            trimmed = %example.trimmed,
            original = %example.original,
            "shadow verification: the trimmed request scores differently; version switched to observe \
             (re-arm: POST /verify/rearm on the admin port, or a new bundle generation)"
        );
        let mut contained = HashMap::clone(&self.contained.load());
        contained.insert(
            key,
            Containment {
                since: SystemTime::now(),
                generation: ticket.generation,
                mismatches,
                example,
                metrics: ticket.metrics.clone(),
            },
        );
        self.publish(contained);
    }

    /// Swaps in a new set of contained versions and updates the gauges of the models involved.
    /// Called with `versions` locked, which serialises changes.
    fn publish(&self, contained: HashMap<VersionKey, Containment>) {
        let old = self.contained.load_full();
        let mut counts: HashMap<&str, (usize, &Arc<ModelMetrics>)> = HashMap::new();
        for ((model, _), c) in old.iter() {
            counts.entry(model.as_ref()).or_insert((0, &c.metrics));
        }
        for ((model, _), c) in contained.iter() {
            counts.entry(model.as_ref()).or_insert((0, &c.metrics)).0 += 1;
        }
        for (count, metrics) in counts.values() {
            metrics.set_contained(*count);
        }
        self.any_contained
            .store(!contained.is_empty(), Ordering::Relaxed);
        self.contained.store(Arc::new(contained));
    }

    /// Re-arms contained versions (`model`, and `version` of it, when given; all otherwise)
    /// and forgets their recent mismatches; returns those re-armed as `model@version`.
    pub fn rearm(&self, model: Option<&str>, version: Option<&str>) -> Vec<String> {
        self.release(|m, v, _| model.is_none_or(|x| x == m) && version.is_none_or(|x| x == v))
    }

    /// After a reload: re-arms contained versions whose bundle generation changed (or that no
    /// bundle lists any more).
    pub fn snapshot_changed(&self, snapshot: &AllowlistSnapshot) {
        let rearmed = self.release(|model, version, c| {
            match snapshot.lookup(model, &VersionSpec::Version(version.into())) {
                Lookup::Found { entry, .. } => entry.generation != c.generation,
                _ => true,
            }
        });
        for version in rearmed {
            tracing::info!(%version, "shadow verification re-armed by a new bundle generation");
        }
    }

    fn release(&self, mut pick: impl FnMut(&str, &str, &Containment) -> bool) -> Vec<String> {
        if !self.any_contained.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let mut contained = HashMap::clone(&self.contained.load());
        let mut released = Vec::new();
        contained.retain(|key, c| {
            let go = pick(&key.0, &key.1, c);
            if go {
                released.push(format!("{}@{}", key.0, key.1));
                if let Some(learned) = versions.get_mut(key) {
                    learned.mismatches.clear();
                }
            }
            !go
        });
        if !released.is_empty() {
            self.publish(contained);
        }
        drop(versions);
        released
    }

    /// What `/status` shows: the settings and every contained version with why, since when
    /// and how to re-arm it.
    pub fn status(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Contained<'a> {
            model: &'a str,
            version: &'a str,
            mode: &'static str,
            reason: String,
            since: String,
            generation: u64,
            example: &'a Example,
            rearm: String,
        }
        let contained = self.contained.load();
        let mut list: Vec<Contained<'_>> = contained
            .iter()
            .map(|((model, version), c)| Contained {
                model,
                version,
                mode: "observe",
                reason: format!(
                    "shadow verification: {} mismatches within the window",
                    c.mismatches
                ),
                since: crate::bundle::format::rfc3339(c.since),
                generation: c.generation,
                example: &c.example,
                rearm: format!(
                    "POST /verify/rearm?model={model}&version={version} on the admin port, or a new bundle generation"
                ),
            })
            .collect();
        list.sort_by(|a, b| (a.model, a.version).cmp(&(b.model, b.version)));
        serde_json::json!({
            "sample": self.config.sample,
            "inflight": self.inflight.load(Ordering::Relaxed),
            "max_inflight": self.config.max_inflight,
            "max_bytes_per_second": self.config.max_bytes_per_second,
            "contained": list,
        })
    }

    /// Learns a noise pair's spread; returns the version's learned noise (pairs, spread).
    fn learn(&self, ticket: &Ticket, spread: Option<Spread>) -> (u32, Spread) {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let learned = versions
            .entry((ticket.model.clone(), ticket.version.clone()))
            .or_default();
        if let Some(spread) = spread {
            learned.noise_pairs = learned.noise_pairs.saturating_add(1);
            learned.noise.abs = learned.noise.abs.max(spread.abs);
            learned.noise.rel = learned.noise.rel.max(spread.rel);
        }
        (learned.noise_pairs, learned.noise)
    }
}

impl Verifier {
    /// Sends the shadow (and the noise pair), waits for the client's answer, compares.
    async fn verify(
        &self,
        cluster: &Cluster,
        ticket: &Ticket,
        shadow: Shadow,
        primary: oneshot::Receiver<Option<Answer>>,
    ) -> (VerifyResult, Option<Example>) {
        let deadline = tokio::time::Instant::now() + ms(ticket.settings.timeout_ms);
        let sent = shadow.original.len()
            + if ticket.noise {
                shadow.trimmed.len()
            } else {
                0
            };
        ticket.metrics.shadow_sent(sent);
        let original = send(
            cluster,
            &shadow.target,
            shadow.host_kept,
            &shadow.original_lines,
            &shadow.original,
        );
        let noise = async {
            if ticket.noise {
                send(
                    cluster,
                    &shadow.target,
                    shadow.host_kept,
                    &shadow.trimmed_lines,
                    &shadow.trimmed,
                )
                .await
            } else {
                Err(Failed::NotSent)
            }
        };
        let waited = tokio::time::timeout_at(deadline, async {
            let (original, noise, primary) = tokio::join!(original, noise, primary);
            (original, noise, primary)
        })
        .await;
        let Ok((original, noise, primary)) = waited else {
            return (VerifyResult::Error, None);
        };
        let primary = match primary {
            Ok(Some(answer)) => answer,
            // Too large to keep.
            Ok(None) => return (VerifyResult::Skipped, None),
            // The client's answer failed or was abandoned.
            Err(_) => return (VerifyResult::Error, None),
        };
        let original = match original {
            Ok(answer) => answer,
            Err(Failed::TooLarge) => return (VerifyResult::Skipped, None),
            Err(_) => return (VerifyResult::Error, None),
        };
        let spread = match noise {
            Ok(noise) if is_success(noise.status) && is_success(primary.status) => {
                compare::spread(ticket.protocol, &primary, &noise)
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let (pairs, noise) = self.learn(ticket, spread);
        judge(ticket, &primary, &original, pairs, noise)
    }
}

/// The verdict on one verification, given what the version's noise pairs showed.
fn judge(
    ticket: &Ticket,
    trimmed: &Answer,
    original: &Answer,
    noise_pairs: u32,
    noise: Spread,
) -> (VerifyResult, Option<Example>) {
    match (is_success(trimmed.status), is_success(original.status)) {
        // A strict leaf refusing the original, or both failing: nothing to compare.
        (_, false) => return (VerifyResult::Error, None),
        (false, true) => {
            let example = Example {
                output: "status".into(),
                trimmed: trimmed.status.to_string(),
                original: original.status.to_string(),
            };
            return (VerifyResult::Mismatch, Some(example));
        }
        (true, true) => {}
    }
    let tolerance = Tolerance {
        abs: ticket.settings.abs,
        rel: ticket.settings.rel,
    };
    let example = match compare::compare(ticket.protocol, trimmed, original, tolerance) {
        Ok(None) => return (VerifyResult::Match, None),
        Ok(Some(example)) => example,
        Err(e) => {
            tracing::debug!(model = %ticket.model, error = %e, "verification could not compare the answers");
            return (VerifyResult::Error, None);
        }
    };
    let noisy = noise.abs > 0.0 || noise.rel > 0.0;
    if noisy && noise_pairs < NOISE_WARMUP {
        // The leaf differs from itself and how much is not known yet.
        return (VerifyResult::Noise, Some(example));
    }
    let widened = Tolerance {
        abs: tolerance.abs.max(NOISE_MARGIN * noise.abs),
        rel: tolerance.rel.max(NOISE_MARGIN * noise.rel),
    };
    match compare::compare(ticket.protocol, trimmed, original, widened) {
        Ok(None) if noisy => (VerifyResult::Noise, Some(example)),
        _ => (VerifyResult::Mismatch, Some(example)),
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Why a shadow request produced no answer to compare.
#[derive(Debug)]
enum Failed {
    /// Not sent (no noise pair for this request).
    NotSent,
    /// The leaf could not be reached or failed.
    Upstream,
    /// The answer is larger than [`MAX_ANSWER_BYTES`].
    TooLarge,
}

/// One shadow request to the cluster, its answer read whole (bounded).
async fn send(
    cluster: &crate::upstream::Cluster,
    target: &str,
    host_kept: bool,
    lines: &[u8],
    body: &Bytes,
) -> Result<Answer, Failed> {
    let path = http::uri::PathAndQuery::try_from(target).ok();
    if let Some(answered) = cluster
        .send_h2c(
            &http::Method::POST,
            path.as_ref(),
            lines,
            &|| {
                http_body_util::Full::new(body.clone())
                    .map_err(|never: std::convert::Infallible| match never {})
                    .boxed()
            },
            None,
        )
        .await
    {
        let response = answered.map_err(|_| Failed::Upstream)?;
        let (parts, incoming) = response.into_parts();
        let collected = Limited::new(incoming, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Failed::TooLarge
                } else {
                    Failed::Upstream
                }
            })?;
        let json_len = parts
            .headers
            .get(&crate::headers::INFERENCE_HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        return Ok(Answer {
            status: parts.status.as_u16(),
            json_len,
            body: collected.to_bytes().to_vec(),
        });
    }
    let outgoing = Outgoing {
        method: "POST",
        target,
        host_kept,
        lines,
        body,
        bodiless_answer: false,
    };
    let mut buf = Vec::with_capacity(h1::READ_SIZE);
    let (head, mut leaf) = cluster
        .exchange(&outgoing, &mut buf)
        .await
        .map_err(|_| Failed::Upstream)?;
    let mut tee = Tee::new(tokio::io::sink());
    let clean = h1::relay(&head, &mut buf, &mut leaf.stream, &mut tee)
        .await
        .map_err(|_| Failed::Upstream)?;
    if clean && head.reusable {
        leaf.release();
    }
    let bytes = tee.capture.into_bytes().ok_or(Failed::TooLarge)?;
    parse_http1(&bytes).ok_or(Failed::Upstream)
}

/// A number in [0, 1) from a per-thread xorshift generator (sampling needs no quality beyond
/// that, and no lock).
fn unit_random() -> f64 {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1,
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_refills_at_its_rate_with_one_second_of_burst() {
        let mut budget = ByteBudget {
            rate: 1000.0,
            tokens: 1000.0,
            last: Instant::now(),
        };
        assert!(budget.take(600));
        assert!(
            !budget.take(600),
            "only 400 left (plus what a few µs refilled)"
        );
        assert!(!budget.take(1001), "never more than one second of burst");
        budget.last -= std::time::Duration::from_secs(5);
        assert!(budget.take(1000));
    }

    #[test]
    fn sampling_draws_are_spread_over_the_unit_interval() {
        let draws: Vec<f64> = (0..10_000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below = draws.iter().filter(|d| **d < 0.01).count();
        assert!((40..=200).contains(&below), "{below} of 10,000 below 0.01");
    }
}
