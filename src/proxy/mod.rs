//! The request lifecycle, written once for every transport: classify → route to a cluster →
//! one snapshot load and the trim decision → the forwarded request → attempts against the
//! cluster's endpoints → the answer. Transports only parse, read within limits and write:
//! [`lean`] (HTTP/1.1 parsed in place, the common case), [`general`] (hyper: HTTP/1.1 and
//! h2c, everything else) and [`grpc`] (gRPC on h2c, message by message). [`answer`] is what the sidecar answers itself; [`io`] wraps client
//! connections.

pub mod answer;
pub mod general;
pub mod grpc;
pub mod io;
pub mod lean;

use std::io::Write as _;
use std::sync::Arc;

use crate::bundle::snapshot::Lookup;
use crate::bundle::snapshot::SnapshotAllowlist;
use crate::classify::{classify, Protocol, Target, Verb};
use crate::compression;
use crate::config::{Compression, Mode};
use crate::headers::{is_hop_by_hop, push_header, INFERENCE_HEADER_LENGTH};
use crate::metrics::{ModelMetrics, Outcome};
use crate::signatures::{LiveAllowlist, LiveDecision, LiveUse};
use crate::state::Shared;
use crate::trim::grpc::GrpcBody;
use crate::trim::tf_serving::TfBody;
use crate::trim::{kserve, tf_serving, Allowed, TrimResult, Untrimmable};
use crate::upstream::Cluster;
use crate::verify::{AnswerSender, Shadow, Ticket};

/// What the trim step decided for one score request.
struct Decision<'a> {
    /// Label for `trimmer_requests_total`.
    outcome: Outcome,
    /// The model's metric handles (`_unknown` for models no bundle names).
    model: ModelHandle<'a>,
    /// The body to forward instead of the original, when features were removed.
    body: Option<Vec<u8>>,
    /// New `Inference-Header-Content-Length` for a trimmed Triton binary body.
    json_len: Option<usize>,
    /// Features removed (or, in mode observe, that would have been).
    removed: u64,
    /// Shadow verification admitted for this trimmed request.
    verify: Option<Ticket>,
}

/// Metric handles that outlive the snapshot guard: the model's (shared) or `_unknown`'s.
enum ModelHandle<'a> {
    Known(Arc<ModelMetrics>),
    Unknown(&'a ModelMetrics),
}

impl std::ops::Deref for ModelHandle<'_> {
    type Target = ModelMetrics;
    fn deref(&self) -> &ModelMetrics {
        match self {
            ModelHandle::Known(m) => m,
            ModelHandle::Unknown(m) => m,
        }
    }
}

/// What the lifecycle needs of a request's head, whatever transport parsed it.
pub struct RequestHead<'h> {
    /// The method is `POST` (only those are score requests).
    pub post: bool,
    /// Path, without the query.
    pub path: &'h str,
    /// The body's `Content-Encoding` (not `identity`), if any, after the transport decoded
    /// what it accepts.
    pub encoding: Option<&'h [u8]>,
    /// `Inference-Header-Content-Length` (Triton's binary extension), if present.
    pub binary_json_len: Option<&'h [u8]>,
}

/// The body and head additions the lifecycle decided for one request (`Default`: none, the
/// request as it came).
#[derive(Default)]
pub struct Prepared {
    /// The body to send instead of the one received (trimmed and/or encoded), if any.
    pub body: Option<Vec<u8>>,
    /// New `Inference-Header-Content-Length` of a trimmed Triton binary body.
    pub json_len: Option<usize>,
    /// `Content-Encoding` the lifecycle applied towards the cluster (`lz4`).
    pub encoding: Option<&'static str>,
    /// Shadow verification admitted for this request: the transport keeps the original body
    /// and starts it ([`start_verification`]).
    pub verify: Option<Ticket>,
}

/// classify → route: the score target a path names, if any, and the cluster that serves its
/// model (unclaimed models and non-score paths go to the default cluster).
pub fn route<'s, 'p>(shared: &'s Shared, path: &'p str) -> (Option<Target<'p>>, &'s Cluster) {
    let target = classify(path);
    let cluster = shared
        .upstreams
        .route(target.as_ref().map(|t| t.model.as_ref()));
    (target, cluster)
}

/// decide → prepare: trims a score request (one snapshot load, metrics recorded) and applies
/// the cluster's body encoding. Anything else passes as it came.
pub fn prepare(
    shared: &Shared,
    cluster: &Cluster,
    target: Option<&Target<'_>>,
    head: &RequestHead<'_>,
    body: &[u8],
) -> Prepared {
    let mut prepared = Prepared {
        body: None,
        json_len: None,
        encoding: None,
        verify: None,
    };
    if let Some(target) = target.filter(|t| t.verb.is_some() && head.post) {
        let headers = TrimHeaders {
            encoded: head.encoding.is_some(),
            binary_json_len: head.binary_json_len,
            grpc: false,
        };
        let trimmed = trim_request(shared, cluster, target, headers, body);
        prepared.body = trimmed.body;
        prepared.json_len = trimmed.json_len;
        prepared.verify = trimmed.verify;
    }
    if cluster.compression == Compression::Lz4 && head.encoding.is_none() {
        // The shadow would need the same encoding: clusters with compression are not verified.
        if let Some(ticket) = prepared.verify.take() {
            ticket.skip();
        }
        let plain = prepared.body.as_deref().unwrap_or(body);
        if !plain.is_empty() {
            match compression::encode(plain) {
                Ok(encoded) => {
                    prepared.body = Some(encoded);
                    prepared.encoding = Some("lz4");
                }
                // Encoding into memory cannot fail in practice; the plain body is correct.
                Err(e) => {
                    tracing::warn!(error = %e, "lz4 encoding failed; sending the body unencoded")
                }
            }
        }
    }
    prepared
}

/// discover → wait: when the cluster discovers signatures with a `signature_wait_ms` and a
/// score request's model version has no bundle allowlist, gives discovery up to that long
/// (queueing the fetch), so that the request itself can be trimmed. Call before [`prepare`].
pub async fn await_signature(shared: &Shared, cluster: &Cluster, target: Option<&Target<'_>>) {
    let Some(live) = cluster.signatures.as_ref() else {
        return;
    };
    let Some(target) = target.filter(|t| t.verb.is_some()) else {
        return;
    };
    if !live.settings.discover || live.settings.wait.is_zero() {
        return;
    }
    let missed = matches!(
        shared
            .trim_state
            .load()
            .allowlists
            .lookup(&target.model, &target.version),
        Lookup::UnknownModel | Lookup::UnknownVersion { .. }
    );
    if missed {
        live.wait_for(target).await;
    }
}

/// verify: starts the shadow verification of a ticketed request in a task of its own, against
/// the cluster its model routes to; the transport sends the client's answer through the
/// returned sender once relayed.
pub fn start_verification(shared: &Arc<Shared>, ticket: Ticket, shadow: Shadow) -> AnswerSender {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let cluster = shared.upstreams.route(Some(ticket.model()));
        shared.verifier.run(cluster, &ticket, shadow, rx).await;
    });
    tx
}

/// Whether a header the client sent goes on to the leaf as it is, on every transport:
/// hop-by-hop headers stop here, `Content-Length` and Triton's length are rewritten by
/// [`own_lines`], `Expect` was answered by the sidecar, and `Host` is the endpoint's unless the
/// cluster keeps the client's. `TE: trailers` goes on (a leaf sends HTTP/1.1 trailers only to
/// a client that accepts them). (Headers a `Connection` header names are removed before.)
pub fn forwards_header(name: &str, value: &[u8], preserve_host: bool) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if is("te") {
        return value.eq_ignore_ascii_case(b"trailers");
    }
    !(is_hop_by_hop(name)
        || is("content-length")
        || is("expect")
        || is(INFERENCE_HEADER_LENGTH.as_str())
        || (is("host") && !preserve_host))
}

/// Appends the lifecycle's own header lines after the client's and ends the head: Triton's
/// length (rewritten after a trim, else as sent), the encoding applied, `Content-Length`
/// (when the request had a body or framing), and the empty line.
pub fn own_lines(
    lines: &mut Vec<u8>,
    prepared: &Prepared,
    sent_json_len: Option<&[u8]>,
    body_len: Option<usize>,
) {
    match (prepared.json_len, sent_json_len) {
        (Some(len), _) => {
            let _ = write!(lines, "{INFERENCE_HEADER_LENGTH}: {len}\r\n");
        }
        (None, Some(value)) => {
            push_header(lines, INFERENCE_HEADER_LENGTH.as_str().as_bytes(), value)
        }
        (None, None) => {}
    }
    if let Some(encoding) = prepared.encoding {
        push_header(lines, b"content-encoding", encoding.as_bytes());
    }
    if let Some(len) = body_len {
        let _ = write!(lines, "content-length: {len}\r\n");
    }
    lines.extend_from_slice(b"\r\n");
}

/// Trims one gRPC score message (without its 5-byte prefix, decoded) for the model and
/// version it names, by the same decision and metrics as an HTTP body; `None`: forward it as
/// it came.
pub fn trim_message(shared: &Shared, target: &Target<'_>, msg: &[u8]) -> Option<Vec<u8>> {
    let headers = TrimHeaders {
        encoded: false,
        binary_json_len: None,
        grpc: true,
    };
    let cluster = shared.upstreams.route(Some(target.model.as_ref()));
    trim_request(shared, cluster, target, headers, msg).body
}

/// Counts a score message whose model the sidecar cannot read (forwarded untouched) under
/// `_unknown`.
pub fn count_unread(shared: &Shared, outcome: Outcome, len: usize) {
    shared.unknown_model.record(outcome, len, len, 0);
}

/// What `decide` needs of the request's headers.
struct TrimHeaders<'h> {
    /// Whether the body carries a `Content-Encoding` other than `identity`.
    encoded: bool,
    /// `Inference-Header-Content-Length` (Triton's binary extension), if present.
    binary_json_len: Option<&'h [u8]>,
    /// The body is a gRPC message (protobuf), not REST.
    grpc: bool,
}

/// What trimming did to one score request: the body to forward instead of the original and
/// the new `Inference-Header-Content-Length`, when features were removed.
struct Trimmed {
    /// The trimmed body (`None`: forward the original).
    body: Option<Vec<u8>>,
    /// New `Inference-Header-Content-Length` of a trimmed Triton binary body.
    json_len: Option<usize>,
    /// Shadow verification admitted for this request.
    verify: Option<Ticket>,
}

/// Trims a score request (`target` has a verb and the method is POST) and records it in the
/// model's metrics.
fn trim_request(
    shared: &Shared,
    cluster: &Cluster,
    target: &Target<'_>,
    headers: TrimHeaders<'_>,
    body: &[u8],
) -> Trimmed {
    let decision = decide(shared, cluster, target, headers, body);
    let forwarded = decision.body.as_ref().map_or(body.len(), Vec::len);
    decision
        .model
        .record(decision.outcome, body.len(), forwarded, decision.removed);
    Trimmed {
        body: decision.body,
        json_len: decision.json_len,
        verify: decision.verify,
    }
}

/// Looks the request up in the current snapshot (one load), lets the cluster's live signatures
/// fill a miss or overrule a drifted version (a bundle otherwise wins), and runs the
/// protocol's engine.
fn decide<'a>(
    shared: &'a Shared,
    cluster: &Cluster,
    target: &Target<'_>,
    headers: TrimHeaders<'_>,
    body: &[u8],
) -> Decision<'a> {
    let state = shared.trim_state.load();
    let untouched = |outcome, model| Decision {
        outcome,
        model,
        body: None,
        json_len: None,
        removed: 0,
        verify: None,
    };
    let snapshot = &state.allowlists;
    let lookup = snapshot.lookup(&target.model, &target.version);
    let live = match &cluster.signatures {
        Some(live) => live.resolve(snapshot, &lookup, target, body, shared.config.trim.mode),
        None => LiveDecision::None,
    };
    // A TF Serving gRPC message names its signature in protobuf, which a live signature is
    // not matched against (yet): it never trims one; a drifted version is contained instead.
    let live = match live {
        LiveDecision::Use(_) if headers.grpc && target.protocol == Protocol::TfServing => {
            LiveDecision::Observe
        }
        live => live,
    };
    let (index, entry) = match lookup {
        Lookup::UnknownModel => (None, None),
        Lookup::UnknownVersion { model } => (Some(model), None),
        Lookup::Passthrough { model } => (Some(model), Some(None)),
        Lookup::Found { model, entry } => (Some(model), Some(Some(entry))),
    };
    let bundle_model = index.and_then(|i| state.models.get(i));
    let model = match (bundle_model, &live) {
        (Some(handles), _) => ModelHandle::Known(handles.clone()),
        (
            None,
            LiveDecision::Use(LiveUse {
                metrics: Some(handles),
                ..
            }),
        ) => ModelHandle::Known(handles.clone()),
        (None, _) => ModelHandle::Unknown(&shared.unknown_model),
    };
    if shared.kill_switch(&state) {
        return untouched(Outcome::Disabled, model);
    }
    let (allowed, mode) = match (&live, entry) {
        (LiveDecision::Use(used), _) => match used.allowed() {
            Some(allowed) => {
                used.counter.inc();
                (Allow::Live(allowed), used.mode)
            }
            None => return untouched(Outcome::UnknownVersion, model),
        },
        (_, None) if index.is_none() => return untouched(Outcome::UnknownModel, model),
        (_, None) => return untouched(Outcome::UnknownVersion, model),
        (_, Some(None)) => return untouched(Outcome::NotTrimmable, model),
        // Shadow verification may hold a bundle's version in observe.
        (LiveDecision::Observe, Some(Some(entry))) => (
            Allow::Bundle(snapshot.allowed(&entry.allowlist)),
            shared
                .verifier
                .mode(&target.model, entry)
                .min(Mode::Observe),
        ),
        (LiveDecision::None, Some(Some(entry))) => (
            Allow::Bundle(snapshot.allowed(&entry.allowlist)),
            shared.verifier.mode(&target.model, entry),
        ),
    };
    // Only a bundle's allowlist is verified (a live signature is the leaf's own word), and only
    // for REST: gRPC answers are not compared (yet).
    let verified_entry = match (&allowed, entry) {
        (Allow::Bundle(_), Some(Some(entry))) if !headers.grpc => Some(entry),
        _ => None,
    };
    if mode == Mode::Off {
        return untouched(Outcome::Disabled, model);
    }
    if headers.encoded {
        return untouched(Outcome::UnsupportedEncoding, model);
    }
    let started = std::time::Instant::now();
    // One monomorphic engine run per allowlist kind: the bundle path pays nothing for the other.
    let result = match allowed {
        Allow::Bundle(allowed) => run_engine(target, &headers, body, allowed),
        Allow::Live(allowed) => run_engine(target, &headers, body, allowed),
    };
    shared
        .metrics
        .trim_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(trimmed) if mode == Mode::Observe => Decision {
            outcome: Outcome::Observed,
            model,
            body: None,
            json_len: None,
            removed: trimmed.removed,
            verify: None,
        },
        Ok(trimmed) => Decision {
            outcome: Outcome::Trimmed,
            verify: match (&model, verified_entry) {
                (ModelHandle::Known(metrics), Some(entry)) if trimmed.removed > 0 => {
                    shared.verifier.sample(
                        metrics,
                        &target.model,
                        target.protocol,
                        entry,
                        body.len(),
                        trimmed.body.len(),
                    )
                }
                _ => None,
            },
            model,
            removed: trimmed.removed,
            json_len: trimmed.json_len.filter(|_| trimmed.removed > 0),
            body: (trimmed.removed > 0).then_some(trimmed.body),
        },
        Err(Untrimmable::NotTrimmable(why)) => {
            tracing::debug!(model = %target.model, why, "not trimmable; forwarded untouched");
            untouched(Outcome::NotTrimmable, model)
        }
        Err(Untrimmable::Parse { offset, reason }) => {
            tracing::debug!(model = %target.model, offset, expected = reason, "body not understood; forwarded untouched");
            untouched(Outcome::ParseError, model)
        }
    }
}

/// The allowlist a request is trimmed with: a bundle's, or the leaf's live signature.
enum Allow<'a> {
    Bundle(SnapshotAllowlist<'a>),
    Live(LiveAllowlist<'a>),
}

/// The protocol's engine for a score request.
fn run_engine(
    target: &Target<'_>,
    headers: &TrimHeaders<'_>,
    body: &[u8],
    allowed: impl Allowed,
) -> TrimResult {
    match (target.protocol, target.verb) {
        _ if headers.grpc => {
            let message = match target.verb {
                Some(Verb::Predict) => GrpcBody::Predict,
                Some(Verb::Classify | Verb::Regress) => GrpcBody::Examples,
                _ => GrpcBody::Infer,
            };
            crate::trim::grpc::trim(body, message, allowed)
        }
        (Protocol::TfServing, Some(Verb::Predict)) => {
            tf_serving::trim(body, TfBody::Predict, allowed)
        }
        (Protocol::TfServing, _) => tf_serving::trim(body, TfBody::Examples, allowed),
        (Protocol::KServeV2, _) => match headers.binary_json_len {
            None => kserve::trim_json(body, allowed),
            Some(value) => match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(json_len) => kserve::trim_binary(body, json_len, allowed),
                None => Err(Untrimmable::Parse {
                    offset: 0,
                    reason: "a numeric Inference-Header-Content-Length",
                }),
            },
        },
    }
}
