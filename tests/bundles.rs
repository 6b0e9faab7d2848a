//! Bundle loading with real files and real symlinks: every way a pipeline, an editor or the
//! kubelet writes a bundle directory must end in the snapshot the files describe, and a bad
//! file must never take a good bundle down.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use common::*;
use feature_trimmer::bundle::snapshot::{AllowlistSnapshot, Lookup};
use feature_trimmer::bundle::{Allowlist, BundleStore, BundleTable};
use feature_trimmer::classify::VersionSpec;
use feature_trimmer::config::{BundlesConfig, Config, TrimConfig};

/// Bundle name → (generation, stale) of what the store serves.
fn served(store: &BundleStore) -> BTreeMap<String, (Option<u64>, bool)> {
    store
        .entries()
        .iter()
        .map(|(name, e)| {
            (
                name.clone(),
                (e.good.as_ref().map(|b| b.generation), e.stale),
            )
        })
        .collect()
}

fn expect(entries: &[(&str, Option<u64>, bool)]) -> BTreeMap<String, (Option<u64>, bool)> {
    entries
        .iter()
        .map(|(n, g, s)| ((*n).to_owned(), (*g, *s)))
        .collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn good(name: &str, generation: u64) -> String {
    bundle_json(name, generation, &[("model_a", "1", &["f1", "f2"])])
}

#[test]
fn atomic_rename_and_in_place_rewrites_end_right() {
    let dir = TempDir::new("rename");
    let mut store = BundleStore::new(Some(dir.0.clone()), BundlesConfig::default().max_file_bytes);
    write(&dir.path("home.json"), &good("home", 1));
    write(&dir.path("ads.json"), &good("ads", 1));
    assert!(store.scan().changed);
    assert_eq!(
        served(&store),
        expect(&[("ads", Some(1), false), ("home", Some(1), false)])
    );

    // Editor or pipeline save: temp file (ignored while it exists) then rename over.
    write(&dir.path(".home.json.swp"), "garbage");
    write(&dir.path("home.json.tmp"), &good("home", 2));
    write(&dir.path("home.json~"), "backup");
    assert!(
        !store.scan().changed,
        "temp and editor files are not bundles"
    );
    std::fs::rename(dir.path("home.json.tmp"), dir.path("home.json")).unwrap();
    assert!(store.scan().changed);
    assert_eq!(served(&store)["home"], (Some(2), false));

    // In-place truncating write observed half way: empty, then partial, then complete.
    std::fs::File::create(dir.path("home.json")).unwrap();
    let report = store.scan();
    assert!(!report.changed && report.loads[0].result.is_err());
    assert_eq!(
        served(&store)["home"],
        (Some(2), true),
        "truncated file keeps last-known-good"
    );
    let full = good("home", 3);
    write(&dir.path("home.json"), &full[..full.len() / 2]);
    store.scan();
    assert_eq!(served(&store)["home"], (Some(2), true));
    write(&dir.path("home.json"), &full);
    assert!(store.scan().changed);
    assert_eq!(
        served(&store),
        expect(&[("ads", Some(1), false), ("home", Some(3), false)])
    );
}

#[test]
fn corrupt_checksum_and_schema_failures_keep_last_known_good() {
    let dir = TempDir::new("corrupt");
    let mut store = BundleStore::new(Some(dir.0.clone()), BundlesConfig::default().max_file_bytes);
    write(&dir.path("home.json"), &good("home", 1));
    write(&dir.path("ads.json"), &good("ads", 1));
    store.scan();

    // Sealed bundle with a valid checksum loads; the same content tampered with does not.
    let mut sealed: serde_json::Value = serde_json::from_str(&good("home", 2)).unwrap();
    let checksum = feature_trimmer::bundle::checksum::bundle_checksum(&sealed);
    sealed["sha256"] = checksum.into();
    write(&dir.path("home.json"), &sealed.to_string());
    store.scan();
    assert_eq!(served(&store)["home"], (Some(2), false));
    sealed["models"][0]["features"][0] = "f_injected".into();
    write(&dir.path("home.json"), &sealed.to_string());
    let report = store.scan();
    let error = report.loads[0].result.clone().unwrap_err();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert_eq!(served(&store)["home"], (Some(2), true));

    write(
        &dir.path("ads.json"),
        "{\"format\": \"trimmer.bundle/v1\", \"bundle\": ",
    );
    let error = store.scan().loads[0].result.clone().unwrap_err();
    assert!(
        error.contains("not valid JSON") && error.contains("ads.json"),
        "{error}"
    );
    write(
        &dir.path("ads.json"),
        &good("ads", 5).replace("\"features\"", "\"feature\""),
    );
    let error = store.scan().loads[0].result.clone().unwrap_err();
    assert!(error.contains("schema violation"), "{error}");
    write(&dir.path("ads.json"), &good("other_name", 5));
    let error = store.scan().loads[0].result.clone().unwrap_err();
    assert!(error.contains("file is named `ads.json`"), "{error}");
    assert_eq!(
        served(&store),
        expect(&[("ads", Some(1), true), ("home", Some(2), true)])
    );

    // A bundle that never loaded is listed, stale, with nothing served.
    write(&dir.path("new.json"), "not json");
    store.scan();
    assert_eq!(served(&store)["new"], (None, true));
    assert_eq!(store.good_bundles().count(), 2);
}

#[test]
fn unchanged_bytes_are_not_reloaded() {
    let dir = TempDir::new("touch");
    let mut store = BundleStore::new(Some(dir.0.clone()), BundlesConfig::default().max_file_bytes);
    write(&dir.path("home.json"), &good("home", 1));
    assert_eq!(store.scan().loads.len(), 1);
    // kubelet-style touch: same bytes rewritten.
    write(&dir.path("home.json"), &good("home", 1));
    let report = store.scan();
    assert!(!report.changed && report.loads.is_empty());
    // Same content, different formatting: parsed, but the snapshot need not change.
    write(&dir.path("home.json"), &good("home", 1).replace('\n', " "));
    let report = store.scan();
    assert!(!report.changed && report.loads.len() == 1);
}

fn tables(store: &BundleStore) -> BTreeMap<String, Arc<BundleTable>> {
    store
        .entries()
        .iter()
        .map(|(name, e)| (name.clone(), e.good.clone().unwrap()))
        .collect()
}

fn found(snapshot: &AllowlistSnapshot, model: &str, version: &str) -> Allowlist {
    match snapshot.lookup(model, &VersionSpec::Version(version.into())) {
        Lookup::Found { entry, .. } => entry.allowlist.clone(),
        other => panic!("{model}@{version}: {other:?}"),
    }
}

/// A reload that changes one bundle rebuilds that bundle's parts only: the other bundles'
/// tables, the merged views of the models only they feed, and their bitsets are the same
/// allocations in the next snapshot, which still answers every lookup from the new content.
#[test]
fn a_reload_reuses_every_part_of_the_unchanged_bundles() {
    let dir = TempDir::new("reuse");
    let trim = TrimConfig::default();
    let mut store = BundleStore::new(Some(dir.0.clone()), BundlesConfig::default().max_file_bytes);
    let home = |generation, first: &[&str]| {
        bundle_json(
            "home",
            generation,
            &[("ranker", "1", first), ("ranker", "2", &["b", "c"])],
        )
    };
    write(&dir.path("home.json"), &home(1, &["a", "b"]));
    write(
        &dir.path("ads.json"),
        &bundle_json(
            "ads",
            1,
            &[("ctr", "1", &["a", "d"]), ("shared", "1", &["x"])],
        ),
    );
    write(
        &dir.path("feed.json"),
        &bundle_json("feed", 1, &[("shared", "1", &["y"])]),
    );
    store.scan();
    let first = store.snapshot(None, &trim);
    let before = tables(&store);
    assert_eq!(first.distinct_features(), 6);

    write(&dir.path("home.json"), &home(2, &["a", "e"]));
    assert!(store.scan().changed);
    let second = store.snapshot(Some(&first), &trim);
    let after = tables(&store);
    assert!(Arc::ptr_eq(&before["ads"], &after["ads"]));
    assert!(Arc::ptr_eq(&before["feed"], &after["feed"]));
    assert!(!Arc::ptr_eq(&before["home"], &after["home"]));
    for model in ["ctr", "shared"] {
        assert!(
            Arc::ptr_eq(first.model(model).unwrap(), second.model(model).unwrap()),
            "{model}: fed by unchanged bundles only, so merged once"
        );
    }
    assert!(!Arc::ptr_eq(
        first.model("ranker").unwrap(),
        second.model("ranker").unwrap()
    ));
    assert!(found(&first, "ctr", "1").shares_bits_with(&found(&second, "ctr", "1")));
    let shared = found(&second, "shared", "1");
    assert!(second.allows(&shared, "x") && second.allows(&shared, "y"));

    // The new snapshot answers from the new content; the old one, still held, from the old.
    let ranker = found(&second, "ranker", "1");
    assert!(second.allows(&ranker, "e") && !second.allows(&ranker, "b"));
    assert!(first.allows(&found(&first, "ranker", "1"), "b"));
    assert_eq!(
        first.feature_id("e"),
        None,
        "a new name never reaches an old snapshot"
    );
    assert_eq!(
        first.feature_id("a"),
        second.feature_id("a"),
        "ids are stable"
    );
    assert_eq!(second.distinct_features(), 7);
    assert_eq!((second.allowlists(), second.conflicts()), (4, 1));

    // The same content rewritten differently keeps even the changed bundle's allocation.
    write(
        &dir.path("home.json"),
        &home(2, &["a", "e"]).replace('\n', " "),
    );
    let report = store.scan();
    assert!(!report.changed && report.loads.len() == 1);
    assert!(Arc::ptr_eq(&after["home"], &tables(&store)["home"]));
}

/// Writes a ConfigMap volume the way the kubelet's AtomicWriter does: files in a fresh
/// timestamped directory, `..data_tmp` pointing at it renamed over `..data`, user-visible
/// symlinks `name -> ..data/name`, then the old directory removed.
fn kubelet_write(dir: &Path, generation: u32, files: &[(&str, String)]) {
    let stamp = format!("..2026_11_22_00_00_{generation:02}.{generation}");
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir(&ts_dir).unwrap();
    for (name, text) in files {
        write(&ts_dir.join(name), text);
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[test]
fn configmap_data_symlink_swaps() {
    let dir = TempDir::new("configmap");
    let mut store = BundleStore::new(Some(dir.0.clone()), BundlesConfig::default().max_file_bytes);
    kubelet_write(
        &dir.0,
        1,
        &[("home.json", good("home", 1)), ("ads.json", good("ads", 1))],
    );
    store.scan();
    assert_eq!(
        served(&store),
        expect(&[("ads", Some(1), false), ("home", Some(1), false)])
    );

    kubelet_write(
        &dir.0,
        2,
        &[("home.json", good("home", 2)), ("ads.json", good("ads", 1))],
    );
    assert!(store.scan().changed);
    assert_eq!(
        served(&store),
        expect(&[("ads", Some(1), false), ("home", Some(2), false)])
    );

    // A key removed from the ConfigMap: after the swap its symlink dangles (the kubelet removes
    // it a moment later). Both states mean "deleted".
    kubelet_write(&dir.0, 3, &[("home.json", good("home", 2))]);
    let report = store.scan();
    assert!(report.changed && report.removed == ["ads"], "{report:?}");
    std::fs::remove_file(dir.path("ads.json")).unwrap();
    assert!(!store.scan().changed);
    assert_eq!(served(&store), expect(&[("home", Some(2), false)]));
}

#[test]
fn deletion_and_directory_removal() {
    let dir = TempDir::new("delete");
    let mut store = BundleStore::new(Some(dir.0.clone()), BundlesConfig::default().max_file_bytes);
    write(&dir.path("home.json"), &good("home", 1));
    write(&dir.path("ads.json"), &good("ads", 1));
    store.scan();
    std::fs::remove_file(dir.path("ads.json")).unwrap();
    assert_eq!(store.scan().removed, ["ads"]);
    assert_eq!(served(&store), expect(&[("home", Some(1), false)]));

    // The directory disappears: nothing changes, the problem is reported.
    std::fs::remove_dir_all(&dir.0).unwrap();
    let report = store.scan();
    assert!(report.dir_error.is_some() && !report.changed);
    assert_eq!(served(&store), expect(&[("home", Some(1), false)]));
    // Re-created with other content: that content is served.
    std::fs::create_dir(&dir.0).unwrap();
    write(&dir.path("ads.json"), &good("ads", 7));
    let report = store.scan();
    assert!(report.changed && report.removed == ["home"]);
    assert_eq!(served(&store), expect(&[("ads", Some(7), false)]));
}

fn bundle_config(dir: &TempDir, leaf: &Leaf) -> Config {
    let mut config = config_for(leaf);
    config.bundles.dir = Some(dir.0.clone());
    config.bundles.debounce_ms = 20;
    // Long enough that only the watcher (or POST /reload) can explain a reload.
    config.bundles.rescan_interval_ms = 3_600_000;
    config
}

async fn bundle_generation(sidecar: &Sidecar, name: &str) -> Option<u64> {
    let status = status(sidecar).await;
    status["bundles"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)?["generation"]
        .as_u64()
}

#[tokio::test]
async fn the_watcher_picks_up_changes_and_kubelet_touches_count_nothing() {
    let (dir, leaf) = (TempDir::new("watch"), Leaf::start("leaf").await);
    write(&dir.path("home.json"), &good("home", 1));
    let sidecar = Sidecar::start(bundle_config(&dir, &leaf)).await;
    assert_eq!(
        bundle_generation(&sidecar, "home").await,
        Some(1),
        "loaded before ready: {}",
        status(&sidecar).await
    );

    write(&dir.path("home.json.tmp"), &good("home", 2));
    std::fs::rename(dir.path("home.json.tmp"), dir.path("home.json")).unwrap();
    eventually("the rename to be seen", || async {
        bundle_generation(&sidecar, "home").await == Some(2)
    })
    .await;

    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    let reloads = metric(&metrics, "trimmer_bundle_reloads_total").unwrap();
    assert_eq!(reloads, 2.0);
    // Touch without changing content, and an unrelated file: no reload counted.
    write(&dir.path("home.json"), &good("home", 2));
    write(&dir.path("notes.txt"), "hello");
    let summary = send(&h1_client(), "POST", &sidecar.admin_url("/reload"), "")
        .await
        .json();
    assert_eq!(summary["changed"], false);
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(&metrics, "trimmer_bundle_reloads_total"),
        Some(reloads)
    );
    assert_eq!(
        metric(&metrics, r#"trimmer_bundle_generation{bundle="home"}"#),
        Some(2.0)
    );
    assert_eq!(metric(&metrics, "trimmer_allowlists"), Some(1.0));

    // Directory removed and re-created: the watch is rebuilt and new files are seen.
    std::fs::remove_dir_all(&dir.0).unwrap();
    eventually("the missing directory to be reported", || async {
        !status(&sidecar).await["directory_error"].is_null()
    })
    .await;
    assert_eq!(
        bundle_generation(&sidecar, "home").await,
        Some(2),
        "still serving"
    );
    std::fs::create_dir(&dir.0).unwrap();
    write(&dir.path("home.json"), &good("home", 3));
    eventually("the re-created directory to be seen", || async {
        bundle_generation(&sidecar, "home").await == Some(3)
    })
    .await;
    sidecar.stop().await;
}

#[tokio::test]
async fn a_broken_start_still_serves_and_reports() {
    let (dir, leaf) = (TempDir::new("broken-start"), Leaf::start("leaf").await);
    write(&dir.path("home.json"), "{ truncated");
    write(&dir.path("ads.json"), &good("ads", 4));
    let sidecar = Sidecar::start(bundle_config(&dir, &leaf)).await;
    let a = send(
        &h1_client(),
        "POST",
        &sidecar.url("/v1/models/model_a:predict"),
        "{}",
    )
    .await;
    assert_eq!(a.status, 200);
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_bundle_loads_total{bundle="home",result="error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trimmer_bundle_loads_total{bundle="ads",result="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, r#"trimmer_bundle_stale{bundle="home"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, r#"trimmer_bundle_stale{bundle="ads"}"#),
        Some(0.0)
    );
    let status = status(&sidecar).await;
    let home = status["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "home")
        .unwrap()
        .clone();
    assert!(
        home["last_error"].as_str().unwrap().contains("home.json"),
        "{home}"
    );
    sidecar.stop().await;

    // A directory that does not exist at all: ready, serving, counted.
    let missing = TempDir::new("missing");
    std::fs::remove_dir_all(&missing.0).unwrap();
    let sidecar = Sidecar::start(bundle_config(&missing, &leaf)).await;
    let metrics = get_text(&sidecar.admin_url("/metrics")).await;
    assert!(
        metric(
            &metrics,
            r#"trimmer_bundle_loads_total{bundle="_directory",result="error"}"#
        ) >= Some(1.0)
    );
    assert_eq!(
        send(&h1_client(), "GET", &sidecar.url("/v1/models/x"), "")
            .await
            .status,
        200
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rapid_rewrites_never_drop_a_good_bundle() {
    let (dir, leaf) = (TempDir::new("rapid"), Leaf::start("leaf").await);
    write(
        &dir.path("steady.json"),
        &bundle_json("steady", 1, &[("s", "1", &["x"]), ("s", "2", &["y"])]),
    );
    write(&dir.path("churn.json"), &good("churn", 0));
    let mut config = bundle_config(&dir, &leaf);
    config.bundles.debounce_ms = 1;
    let sidecar = Sidecar::start(config).await;

    // Watch the served allowlist count from another task for the whole run.
    let metrics_url = sidecar.admin_url("/metrics");
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let (mut lowest, mut samples) = (f64::MAX, 0);
        loop {
            let metrics = get_text(&metrics_url).await;
            lowest = lowest.min(metric(&metrics, "trimmer_allowlists").unwrap());
            samples += 1;
            if done.try_recv().is_ok() {
                return (lowest, samples);
            }
        }
    });
    let path = dir.path("churn.json");
    let writer = tokio::task::spawn_blocking(move || {
        for generation in 1..=1000u64 {
            let text = good("churn", generation);
            if generation % 2 == 0 {
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, &text).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            } else {
                // In place, in two writes, so a scan can catch it half-written.
                use std::io::Write;
                let mut file = std::fs::File::create(&path).unwrap();
                file.write_all(&text.as_bytes()[..text.len() / 2]).unwrap();
                file.flush().unwrap();
                file.write_all(&text.as_bytes()[text.len() / 2..]).unwrap();
            }
        }
    });
    writer.await.unwrap();
    eventually("the last rewrite to be served", || async {
        bundle_generation(&sidecar, "churn").await == Some(1000)
    })
    .await;
    let _ = done_tx.send(());
    let (lowest, samples) = watcher.await.unwrap();
    assert_eq!(
        lowest, 3.0,
        "a good bundle was dropped during the rewrites ({samples} samples)"
    );
    let status = status(&sidecar).await;
    for bundle in status["bundles"].as_array().unwrap() {
        assert_eq!(bundle["stale"], false, "{bundle}");
    }
    assert_eq!(bundle_generation(&sidecar, "steady").await, Some(1));
    sidecar.stop().await;
}

#[tokio::test]
async fn post_reload_reports_what_it_did() {
    let (dir, leaf) = (TempDir::new("reload"), Leaf::start("leaf").await);
    let mut config = bundle_config(&dir, &leaf);
    config.bundles.debounce_ms = 60_000; // the watcher hint waits; POST /reload does not
    let sidecar = Sidecar::start(config).await;
    write(&dir.path("home.json"), &good("home", 1));
    write(&dir.path("bad.json"), "[]");
    let summary = send(&h1_client(), "POST", &sidecar.admin_url("/reload"), "").await;
    assert_eq!(summary.status, 200);
    let summary = summary.json();
    assert_eq!(summary["changed"], true);
    assert_eq!(summary["loaded"], serde_json::json!(["home"]));
    assert_eq!(summary["failed"][0]["bundle"], "bad");
    assert_eq!(summary["allowlists"], 1);
    assert_eq!(
        send(&h1_client(), "GET", &sidecar.admin_url("/reload"), "")
            .await
            .status,
        405
    );
    sidecar.stop().await;
}
