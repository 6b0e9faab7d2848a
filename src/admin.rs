//! The admin listener: health, readiness, Prometheus metrics and a JSON status page.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::proxy::answer::{full, json_response, ProxyBody, SyntheticError};
use crate::proxy::io::Peer;
use crate::state::Shared;

/// Handles one admin request.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        (&Method::GET, "/readyz") => readiness(&shared),
        (&Method::GET, "/metrics") => {
            let state = shared.trim_state.load();
            let metrics = &shared.metrics;
            metrics.set_miss_rates(
                state
                    .models
                    .iter()
                    .map(|m| m.as_ref())
                    .chain([&shared.unknown_model]),
            );
            metrics
                .trimming_disabled
                .set(i64::from(shared.kill_switch(&state)));
            let mut response = Response::new(full(metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/status") => status(&shared),
        (&Method::POST, "/reload" | "/trimming/disable" | "/trimming/enable" | "/verify/rearm")
            if !mutation_allowed(&shared, &request) =>
        {
            SyntheticError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin changes are only accepted from loopback (admin.allow_remote_changes)",
            )
            .response()
        }
        (&Method::POST, "/reload") => reload(&shared).await,
        (&Method::POST, "/trimming/disable") => kill_switch(&shared, true),
        (&Method::POST, "/trimming/enable") => kill_switch(&shared, false),
        (&Method::POST, "/verify/rearm") => rearm(&shared, request.uri().query()),
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/status" | "/reload" | "/trimming/disable"
            | "/trimming/enable" | "/verify/rearm",
        ) => SyntheticError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        )
        .response(),
        (_, path) => SyntheticError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin endpoint at {path}"),
        )
        .response(),
    };
    Ok(response)
}

/// Mutating calls come from loopback peers only, unless the configuration allows more.
fn mutation_allowed(shared: &Shared, request: &Request<Incoming>) -> bool {
    change_allowed(
        shared.config.admin.allow_remote_changes,
        request.extensions().get::<Peer>(),
    )
}

/// The rule itself: loopback peers always, others only when configured. A request without a
/// known peer is refused. An IPv4 peer on a dual-stack listener arrives as `::ffff:a.b.c.d`:
/// canonicalised first, so `::ffff:127.0.0.1` counts as loopback.
fn change_allowed(allow_remote: bool, peer: Option<&Peer>) -> bool {
    allow_remote || peer.is_some_and(|peer| peer.0.ip().to_canonical().is_loopback())
}

/// Sets the admin kill switch; the file switch is independent (either one disables).
fn kill_switch(shared: &Shared, disabled: bool) -> Response<ProxyBody> {
    shared.trimming_disabled.store(disabled, Ordering::Relaxed);
    let state = shared.trim_state.load();
    tracing::warn!(disabled, "trimming kill switch set through the admin port");
    let body = serde_json::json!({
        "admin": disabled,
        "file": state.kill_switch_file,
        "trimming_disabled": shared.kill_switch(&state),
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// Re-arms versions shadow verification switched to observe: `?model=M&version=V`, `?model=M`
/// (all its versions) or nothing (every one).
fn rearm(shared: &Shared, query: Option<&str>) -> Response<ProxyBody> {
    let (mut model, mut version) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = crate::classify::decode(&value.replace('+', "%20")).map(|v| v.into_owned());
        match (key, value) {
            ("model", Some(v)) => model = Some(v),
            ("version", Some(v)) => version = Some(v),
            _ => {
                return SyntheticError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unexpected query parameter `{pair}` (model=M&version=V)"),
                )
                .response()
            }
        }
    }
    let rearmed = shared.verifier.rearm(model.as_deref(), version.as_deref());
    if !rearmed.is_empty() {
        tracing::warn!(
            ?rearmed,
            "shadow verification re-armed through the admin port"
        );
    }
    let body = serde_json::json!({ "rearmed": rearmed });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

fn readiness(shared: &Shared) -> Response<ProxyBody> {
    if shared.draining.load(Ordering::Relaxed) {
        SyntheticError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "shutting down",
        )
        .response()
    } else if !shared.ready.load(Ordering::Relaxed) {
        SyntheticError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "starting").response()
    } else {
        json_response(StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
    }
}

/// Forces a rescan and reports what it did.
async fn reload(shared: &Shared) -> Response<ProxyBody> {
    let (reply, summary) = tokio::sync::oneshot::channel();
    if shared.reload.send(reply).await.is_err() {
        return SyntheticError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_failed",
            "the reloader is not running",
        )
        .response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(60), summary).await {
        Ok(Ok(summary)) => json_response(
            StatusCode::OK,
            serde_json::to_vec_pretty(&summary).unwrap_or_default(),
        ),
        _ => SyntheticError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_failed",
            "the reload did not finish within 60 s",
        )
        .response(),
    }
}

fn status(shared: &Shared) -> Response<ProxyBody> {
    let state = shared.trim_state.load();
    let allowlists = &state.allowlists;
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "ready": shared.ready.load(Ordering::Relaxed),
        "draining": shared.draining.load(Ordering::Relaxed),
        "listen": shared.config.listen,
        "clusters": shared.upstreams.status(),
        "signatures": shared
            .upstreams
            .clusters()
            .iter()
            .filter_map(|c| c.signatures.as_ref().map(|s| s.status()))
            .collect::<Vec<_>>(),
        "bundle_dir": shared.config.bundles.dir,
        "directory_error": state.directory_error,
        "bundles": state.bundles,
        "allowlists": {
            "model_versions": allowlists.allowlists(),
            "models": allowlists.model_names().count(),
            "distinct_features": allowlists.distinct_features(),
            "conflicts": allowlists.conflicts(),
            "last_reload": state.last_reload.map(|(at, _)| crate::bundle::format::rfc3339(at)),
            "last_reload_ms": state.last_reload.map(|(_, took)| took.as_secs_f64() * 1e3),
        },
        "kill_switch": {
            "admin": shared.trimming_disabled.load(Ordering::Relaxed),
            "file": state.kill_switch_file,
            "trimming_disabled": shared.kill_switch(&state),
        },
        "verify": shared.verifier.status(),
    });
    json_response(
        StatusCode::OK,
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_change_things_unless_allowed() {
        let peer = |addr: &str| Peer(addr.parse().unwrap());
        assert!(change_allowed(false, Some(&peer("127.0.0.1:5000"))));
        assert!(change_allowed(false, Some(&peer("[::1]:5000"))));
        assert!(!change_allowed(false, Some(&peer("10.1.2.3:5000"))));
        assert!(!change_allowed(false, Some(&peer("[fd00::1]:5000"))));
        // IPv4 peers of a dual-stack listener.
        assert!(change_allowed(
            false,
            Some(&peer("[::ffff:127.0.0.1]:5000"))
        ));
        assert!(!change_allowed(
            false,
            Some(&peer("[::ffff:10.1.2.3]:5000"))
        ));
        assert!(!change_allowed(false, None));
        assert!(change_allowed(true, Some(&peer("10.1.2.3:5000"))));
    }
}
