//! Soak: 100,000 requests across the reference workloads through the `trimmer` binary, with a
//! bundle rewrite and reload every 2,000 requests; file descriptors and resident memory of the
//! sidecar process must be flat at the end. Long: run it on purpose with
//! `cargo test --release --test soak -- --ignored --nocapture`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use feature_trimmer::workload;

const TOTAL: usize = 100_000;
const CLIENTS: usize = 8;

/// One bundle allowing every workload's allowlist for `ranker@1`.
fn bundle(workloads: &[workload::Workload], generation: u64) -> Vec<u8> {
    let mut b = workloads[0].bundle();
    b.generation = generation;
    for w in workloads.iter().skip(1) {
        b.models[0].features.extend(w.allowed.iter().cloned());
    }
    b.models[0].features.sort();
    b.models[0].features.dedup();
    b.seal();
    serde_json::to_vec(&b).unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run explicitly (see the module docs)"]
async fn soak_keeps_fds_and_memory_flat() {
    let workloads = Arc::new(workload::all());
    let dir = TempDir::new("soak");
    std::fs::write(dir.path("bench.json"), bundle(&workloads, 1)).unwrap();
    let leaf = Leaf::start("leaf").await;
    let bundles = dir.0.to_str().unwrap().to_owned();
    let Spawned {
        mut child,
        proxy,
        admin,
        ..
    } = spawn_trimmer(
        &["--upstream", &leaf.url(), "--bundles", &bundles],
        &[("RUST_LOG", "warn,feature_trimmer::server=info")],
    );
    let pid = child.id();

    let next = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (workloads, next, samples, proxy, admin) = (
                workloads.clone(),
                next.clone(),
                samples.clone(),
                proxy.clone(),
                admin.clone(),
            );
            let dir = dir.0.clone();
            tokio::spawn(async move {
                let client = h1_client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= TOTAL {
                        return;
                    }
                    // 85% small, 7% kserve-binary, 6% kserve-json, 2% tfs-rows.
                    let w = match i % 100 {
                        0 | 1 => &workloads[0],
                        2..=7 => &workloads[1],
                        8..=14 => &workloads[2],
                        _ => &workloads[3],
                    };
                    let mut request = http::Request::post(format!("http://{proxy}{}", w.path));
                    if let Some(json_len) = w.json_len {
                        request = request.header("inference-header-content-length", json_len);
                    }
                    let request = request
                        .body(http_body_util::Full::new(Bytes::from(w.body.clone())))
                        .unwrap();
                    let a = answer(client.request(request).await.unwrap()).await;
                    assert_eq!(a.status, 200, "request {i}");
                    if i % 2_000 == 0 {
                        std::fs::write(
                            dir.join("bench.json"),
                            bundle(&workloads, i as u64 / 2_000 + 2),
                        )
                        .unwrap();
                        send(&client, "POST", &format!("http://{admin}/reload"), "").await;
                    }
                    if i % 10_000 == 0 {
                        samples.lock().unwrap().push((i, fds(pid), rss_kib(pid)));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let metrics = get_text(&format!("http://{admin}/metrics")).await;
    let trimmed = metric(
        &metrics,
        r#"trimmer_requests_total{model="ranker",outcome="trimmed"}"#,
    )
    .unwrap();
    let (end_fds, end_rss) = (fds(pid), rss_kib(pid));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let mut samples = samples.lock().unwrap().clone();
    samples.sort();
    println!(
        "soak: {TOTAL} requests in {:.1} s, {trimmed} trimmed",
        elapsed.as_secs_f64()
    );
    for (i, fds, rss) in &samples {
        println!("  after {i:>6} requests: {fds:>3} fds, {rss:>7} KiB resident");
    }
    println!("  at the end:            {end_fds:>3} fds, {end_rss:>7} KiB resident");
    assert_eq!(trimmed, TOTAL as f64);
    // Flat: compare the end with the sample at 20% (after warm-up and pool growth).
    let (_, warm_fds, warm_rss) = samples
        .iter()
        .find(|(i, _, _)| *i >= TOTAL / 5)
        .copied()
        .unwrap();
    assert!(
        end_fds <= warm_fds + 4,
        "fds grew from {warm_fds} to {end_fds}"
    );
    assert!(
        end_rss <= warm_rss + warm_rss / 4 + 16 * 1024,
        "memory grew from {warm_rss} to {end_rss} KiB"
    );
}
