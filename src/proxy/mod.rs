//! The request lifecycle, written once for every transport: classify → route to a cluster →
//! one snapshot load and the trim decision → the forwarded request → attempts against the
//! cluster's endpoints → the answer. Transports only parse, read within limits and write:
//! [`lean`] (HTTP/1.1 parsed in place, the common case) and [`general`] (hyper: HTTP/1.1 and
//! h2c, everything else). [`answer`] is what the sidecar answers itself; [`io`] wraps client
//! connections.

pub mod answer;
pub mod general;
pub mod io;
pub mod lean;

use std::sync::Arc;

use crate::bundle::snapshot::Lookup;
use crate::classify::{Protocol, Target, Verb};
use crate::config::Mode;
use crate::metrics::{ModelMetrics, Outcome};
use crate::state::Shared;
use crate::trim::tf_serving::TfBody;
use crate::trim::{kserve, tf_serving, Untrimmable};

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

/// What `decide` needs of the request's headers.
pub struct TrimHeaders<'h> {
    /// Whether the body carries a `Content-Encoding` other than `identity`.
    pub encoded: bool,
    /// `Inference-Header-Content-Length` (Triton's binary extension), if present.
    pub binary_json_len: Option<&'h [u8]>,
}

/// What trimming did to one score request: the body to forward instead of the original and
/// the new `Inference-Header-Content-Length`, when features were removed.
pub struct Trimmed {
    /// The trimmed body (`None`: forward the original).
    pub body: Option<Vec<u8>>,
    /// New `Inference-Header-Content-Length` of a trimmed Triton binary body.
    pub json_len: Option<usize>,
}

/// Trims a score request (`target` has a verb and the method is POST) and records it in the
/// model's metrics.
pub fn trim_request(
    shared: &Shared,
    target: &Target<'_>,
    headers: TrimHeaders<'_>,
    body: &[u8],
) -> Trimmed {
    let decision = decide(shared, target, headers, body);
    let forwarded = decision.body.as_ref().map_or(body.len(), Vec::len);
    decision
        .model
        .record(decision.outcome, body.len(), forwarded, decision.removed);
    Trimmed {
        body: decision.body,
        json_len: decision.json_len,
    }
}

/// Looks the request up in the current snapshot (one load) and runs the protocol's engine.
fn decide<'a>(
    shared: &'a Shared,
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
    };
    let (index, entry) = match state.allowlists.lookup(&target.model, &target.version) {
        Lookup::UnknownModel => {
            let outcome = if shared.kill_switch(&state) {
                Outcome::Disabled
            } else {
                Outcome::UnknownModel
            };
            return untouched(outcome, ModelHandle::Unknown(&shared.unknown_model));
        }
        Lookup::UnknownVersion { model } => (model, None),
        Lookup::Passthrough { model } => (model, Some(None)),
        Lookup::Found { model, entry } => (model, Some(Some(entry))),
    };
    let model = match state.models.get(index) {
        Some(handles) => ModelHandle::Known(handles.clone()),
        None => ModelHandle::Unknown(&shared.unknown_model),
    };
    if shared.kill_switch(&state) {
        return untouched(Outcome::Disabled, model);
    }
    let entry = match entry {
        None => return untouched(Outcome::UnknownVersion, model),
        Some(None) => return untouched(Outcome::NotTrimmable, model),
        Some(Some(entry)) => entry,
    };
    if entry.mode == Mode::Off {
        return untouched(Outcome::Disabled, model);
    }
    if headers.encoded {
        return untouched(Outcome::UnsupportedEncoding, model);
    }
    let snapshot = &state.allowlists;
    let allowed = snapshot.allowed(&entry.allowlist);
    let started = std::time::Instant::now();
    let result = match (target.protocol, target.verb) {
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
    };
    shared
        .metrics
        .trim_duration
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(trimmed) if entry.mode == Mode::Observe => Decision {
            outcome: Outcome::Observed,
            model,
            body: None,
            json_len: None,
            removed: trimmed.removed,
        },
        Ok(trimmed) => Decision {
            outcome: Outcome::Trimmed,
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

