//! Shadow verification against a real MLServer 1.7.1 (`tests/peers/verify`: a lenient V2 model
//! that ignores inputs it does not use, so it also answers the untrimmed original): a wrong
//! allowlist is caught and contained, a noisy leaf is not mistaken for a wrong allowlist, and
//! shadows held at a slow leaf stay within the budgets while clients get their answers.
//! `.ci/run` installs MLServer; run the tests through it.

mod common;

use std::time::Duration;

use common::*;
use feature_trimmer::config::{Config, VerifyConfig};
use serde_json::{json, Value};

/// A V2 request with inputs `x`, `y` and `z`; the root sends all three.
fn request(x: f64, y: f64, z: f64) -> String {
    json!({"id": format!("r-{x}"), "inputs": [
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [x]},
        {"name": "y", "shape": [1], "datatype": "FP64", "data": [y]},
        {"name": "z", "shape": [1], "datatype": "FP64", "data": [z]}]})
    .to_string()
}

/// POSTs a V2 JSON body (MLServer wants the content type) and returns status and JSON answer.
async fn infer(client: &TestClient, url: &str, body: String) -> (u16, Value) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let answer = answer(client.request(request).await.unwrap()).await;
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status.as_u16(), json)
}

fn score(answer: &Value) -> f64 {
    answer["outputs"][0]["data"][0].as_f64().unwrap()
}

/// A sidecar in front of `mlserver` with a bundle allowing `x` and `z` for `model` at
/// `generation`, and `verify` as the `[verify]` table.
async fn start_sidecar(
    mlserver: &MlServer,
    dir: &TempDir,
    model: &str,
    verify: VerifyConfig,
) -> Sidecar {
    std::fs::write(
        dir.path("b.json"),
        bundle_json("b", 1, &[(model, "1", &["x", "z"])]),
    )
    .unwrap();
    let mut config: Config = config_with(&[("mlserver", vec![mlserver.url.clone()], vec![])]);
    config.bundles.dir = Some(dir.0.clone());
    config.verify = verify;
    Sidecar::start(config).await
}

/// `trimmer_verify_total{model=…}` by result.
async fn verified(sidecar: &Sidecar, model: &str) -> [f64; 5] {
    let text = get_text(&sidecar.admin_url("/metrics")).await;
    ["match", "mismatch", "noise", "error", "skipped"].map(|result| {
        metric(
            &text,
            &format!(r#"trimmer_verify_total{{model="{model}",result="{result}"}}"#),
        )
        .unwrap_or(0.0)
    })
}

/// Waits (up to `limit`) until `count` verifications of `model` have concluded.
async fn concluded(sidecar: &Sidecar, model: &str, count: f64, limit: Duration) -> [f64; 5] {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let results = verified(sidecar, model).await;
        if results.iter().sum::<f64>() >= count {
            return results;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {results:?} of {count} verifications concluded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_of(sidecar: &Sidecar) -> Value {
    status(sidecar).await
}

async fn metric_value(sidecar: &Sidecar, series: &str) -> f64 {
    let text = get_text(&sidecar.admin_url("/metrics")).await;
    metric(&text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_allowlist_is_caught_and_the_version_switched_to_observe() {
    let mlserver = MlServer::start("verify", "lenient").await;
    let dir = TempDir::new("verify-lenient");
    // The bundle omits `y`, which the model uses: trimmed requests score differently.
    let verify = VerifyConfig {
        sample: 1.0,
        mismatches_to_disable: 3,
        timeout_ms: 30_000,
        ..VerifyConfig::default()
    };
    let sidecar = start_sidecar(&mlserver, &dir, "lenient", verify).await;
    let client = h1_client();
    let url = sidecar.url("/v2/models/lenient/versions/1/infer");
    let trimmed_score = |x: f64, z: f64| x + z;
    let full_score = |x: f64, y: f64, z: f64| x + 0.5 * y + z;

    // The very first sampled request shows the mismatch; the client got the trimmed answer
    // exactly as without verification.
    let (status, answer) = infer(&client, &url, request(1.0, 10.0, 2.0)).await;
    assert_eq!((status, score(&answer)), (200, trimmed_score(1.0, 2.0)));
    let results = concluded(&sidecar, "lenient", 1.0, Duration::from_secs(30)).await;
    assert_eq!(
        results,
        [0.0, 1.0, 0.0, 0.0, 0.0],
        "match, mismatch, noise, error, skipped"
    );
    for i in 2..=3 {
        let x = f64::from(i);
        let (status, answer) = infer(&client, &url, request(x, 10.0, 2.0)).await;
        assert_eq!((status, score(&answer)), (200, trimmed_score(x, 2.0)));
    }
    let results = concluded(&sidecar, "lenient", 3.0, Duration::from_secs(30)).await;
    assert_eq!(results[1], 3.0, "{results:?}");

    // Three mismatches within the window: the version runs in observe, with the example.
    let state = status_of(&sidecar).await;
    let contained = &state["verify"]["contained"];
    assert_eq!(contained.as_array().unwrap().len(), 1, "{state:#}");
    assert_eq!(contained[0]["model"], "lenient");
    assert_eq!(contained[0]["version"], "1");
    assert_eq!(contained[0]["mode"], "observe");
    assert_eq!(contained[0]["example"]["output"], "score[0]");
    // The mismatch that tipped it: the third request (x = 3, y = 10, z = 2).
    assert_eq!(contained[0]["example"]["trimmed"], "5.0");
    assert_eq!(contained[0]["example"]["original"], "10.0");
    assert!(contained[0]["rearm"]
        .as_str()
        .unwrap()
        .contains("POST /verify/rearm"));
    assert_eq!(
        metric_value(&sidecar, r#"trimmer_verify_contained{model="lenient"}"#).await,
        1.0
    );
    // Later requests reach the leaf untouched: the client gets the full score.
    for i in 4..=6 {
        let x = f64::from(i);
        let (status, answer) = infer(&client, &url, request(x, 10.0, 2.0)).await;
        assert_eq!((status, score(&answer)), (200, full_score(x, 10.0, 2.0)));
    }
    assert_eq!(
        metric_value(
            &sidecar,
            r#"trimmer_requests_total{model="lenient",outcome="observed"}"#
        )
        .await,
        3.0
    );

    // Re-armed from the admin port: trimmed again (and caught again).
    let rearmed = send(
        &client,
        "POST",
        &sidecar.admin_url("/verify/rearm?model=lenient&version=1"),
        "",
    )
    .await;
    assert_eq!(rearmed.status, 200);
    assert_eq!(rearmed.json()["rearmed"], json!(["lenient@1"]));
    let (_, answer) = infer(&client, &url, request(7.0, 10.0, 2.0)).await;
    assert_eq!(score(&answer), trimmed_score(7.0, 2.0));
    for i in 8..=9 {
        infer(&client, &url, request(f64::from(i), 10.0, 2.0)).await;
    }
    let results = concluded(&sidecar, "lenient", 6.0, Duration::from_secs(30)).await;
    assert_eq!(results[1], 6.0, "{results:?}");
    assert_eq!(
        status_of(&sidecar).await["verify"]["contained"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A new generation of the bundle re-arms it too.
    std::fs::write(
        dir.path("b.json"),
        bundle_json("b", 2, &[("lenient", "1", &["x", "z"])]),
    )
    .unwrap();
    let reload = send(&client, "POST", &sidecar.admin_url("/reload"), "").await;
    assert_eq!(reload.status, 200);
    assert_eq!(status_of(&sidecar).await["verify"]["contained"], json!([]));
    assert_eq!(
        metric_value(&sidecar, r#"trimmer_verify_contained{model="lenient"}"#).await,
        0.0
    );
    let (_, answer) = infer(&client, &url, request(10.0, 10.0, 2.0)).await;
    assert_eq!(score(&answer), trimmed_score(10.0, 2.0));
    // Re-arming is loopback-only like the kill switch: the admin port here is loopback, so the
    // refusal is shown by the shared rule's unit test; an unknown parameter is refused.
    let bad = send(
        &client,
        "POST",
        &sidecar.admin_url("/verify/rearm?modell=x"),
        "",
    )
    .await;
    assert_eq!(bad.status, 400);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_leaf_with_a_correct_allowlist_never_mismatches() {
    let mlserver = MlServer::start("verify", "noisy").await;
    let dir = TempDir::new("verify-noisy");
    // Tolerances far below the leaf's noise (±0.001): every difference is the leaf's own.
    let verify = VerifyConfig {
        sample: 1.0,
        noise_sample: 0.2,
        abs: 1e-9,
        rel: 1e-9,
        max_inflight: 64,
        max_bytes_per_second: 1 << 30,
        timeout_ms: 30_000,
        ..VerifyConfig::default()
    };
    let sidecar = start_sidecar(&mlserver, &dir, "noisy", verify).await;
    let url = sidecar.url("/v2/models/noisy/versions/1/infer");
    // Two workers on HTTP/1.1 (the lean path), two on h2c (hyper's path).
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = if w % 2 == 0 { h1_client() } else { h2_client() };
                for i in 0..250 {
                    let x = f64::from(w * 1000 + i);
                    let (status, answer) = infer(&client, &url, request(x, 5.0, 1.0)).await;
                    assert_eq!(status, 200, "{answer}");
                    assert!((score(&answer) - (x + 1.0)).abs() <= 0.001, "{answer}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let results = concluded(&sidecar, "noisy", 1000.0, Duration::from_secs(120)).await;
    let [matched, mismatched, noise, errors, skipped] = results;
    assert_eq!(mismatched, 0.0, "{results:?}");
    assert_eq!((errors, skipped), (0.0, 0.0), "{results:?}");
    assert!(noise > 0.0, "{results:?}");
    assert_eq!(matched + noise, 1000.0, "{results:?}");
    assert_eq!(status_of(&sidecar).await["verify"]["contained"], json!([]));
    assert_eq!(
        metric_value(
            &sidecar,
            r#"trimmer_requests_total{model="noisy",outcome="trimmed"}"#
        )
        .await,
        1000.0
    );
    let handoffs = metric_value(&sidecar, r#"trimmer_hyper_handoffs_total{reason="head"}"#).await;
    assert!(
        handoffs >= 2.0,
        "the h2c connections went to hyper: {handoffs}"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_held_at_a_slow_leaf_stay_within_the_budgets() {
    let mlserver = MlServer::start("verify", "gated").await;
    let client = h1_client();
    let direct = format!("{}/v2/models/gated/versions/1/infer", mlserver.url);
    let held = |answer: &Value| {
        (
            answer["parameters"]["held_max"].as_u64().unwrap(),
            answer["parameters"]["held_seen"].as_u64().unwrap(),
        )
    };
    let body = request(1.0, 5.0, 2.0);
    let trimmed_len = json!({"id": "r-1", "inputs": [
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]},
        {"name": "z", "shape": [1], "datatype": "FP64", "data": [2.0]}]})
    .to_string()
    .len();

    // In flight: the leaf holds every original (it carries `y`) until the test opens the gate,
    // so the shadows admitted stay in flight for the whole burst.
    let dir = TempDir::new("verify-gated");
    let verify = VerifyConfig {
        sample: 1.0,
        max_inflight: 3,
        max_bytes_per_second: 1 << 30,
        timeout_ms: 60_000,
        ..VerifyConfig::default()
    };
    let sidecar = start_sidecar(&mlserver, &dir, "gated", verify).await;
    let url = sidecar.url("/v2/models/gated/versions/1/infer");
    let clients: Vec<_> = (0..30)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { infer(&h1_client(), &url, body).await })
        })
        .collect();
    for answer in clients {
        // Every client has its answer while the shadows are still held at the leaf: none
        // waited for verification.
        let (status, answer) = answer.await.unwrap();
        assert_eq!((status, score(&answer)), (200, 3.0), "{answer}");
    }
    let (_, answer) = infer(
        &client,
        &direct,
        request(0.0, 0.0, 0.0).replace("\"y\"", "\"w\""),
    )
    .await;
    assert_eq!(
        held(&answer),
        (3, 3),
        "at most max_inflight originals reached the leaf"
    );
    let results = verified(&sidecar, "gated").await;
    assert_eq!(
        results,
        [0.0, 0.0, 0.0, 0.0, 27.0],
        "over max_inflight: skipped"
    );
    // The first verifications of a version all send a noise pair (the trimmed body again).
    assert_eq!(
        metric_value(
            &sidecar,
            r#"trimmer_verify_shadow_bytes_total{model="gated"}"#
        )
        .await,
        (3 * (body.len() + trimmed_len)) as f64
    );
    // Open the gate: the held shadows answer and match.
    let open =
        json!({"inputs": [{"name": "open_gate", "shape": [1], "datatype": "FP64", "data": [1]}]});
    infer(&client, &direct, open.to_string()).await;
    let results = concluded(&sidecar, "gated", 30.0, Duration::from_secs(30)).await;
    assert_eq!(results, [3.0, 0.0, 0.0, 0.0, 27.0]);
    sidecar.stop().await;

    // Bytes: a budget of 2.5 verifications' bytes per second admits two at once, then what it
    // refills; everything else is skipped and the clients' answers are unaffected.
    let dir = TempDir::new("verify-bytes");
    let per_verification = body.len() + trimmed_len;
    let rate = (per_verification * 5 / 2) as u64;
    let verify = VerifyConfig {
        sample: 1.0,
        max_inflight: 100,
        max_bytes_per_second: rate,
        timeout_ms: 60_000,
        ..VerifyConfig::default()
    };
    let sidecar = start_sidecar(&mlserver, &dir, "gated", verify).await;
    let url = sidecar.url("/v2/models/gated/versions/1/infer");
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { infer(&h1_client(), &url, body).await })
        })
        .collect();
    for answer in clients {
        let (status, answer) = answer.await.unwrap();
        assert_eq!((status, score(&answer)), (200, 3.0), "{answer}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let results = concluded(&sidecar, "gated", 40.0, Duration::from_secs(30)).await;
    let sent = metric_value(
        &sidecar,
        r#"trimmer_verify_shadow_bytes_total{model="gated"}"#,
    )
    .await;
    assert!(
        sent <= rate as f64 * (1.0 + elapsed),
        "{sent} bytes in {elapsed:.2} s over a budget of {rate}/s"
    );
    assert!(
        sent >= (2 * per_verification) as f64,
        "the burst admits two: {sent}"
    );
    assert!(results[4] > 0.0, "{results:?}");
    assert_eq!(results[0] + results[4], 40.0, "{results:?}");
    sidecar.stop().await;
}
