//! The bundle pipeline as a deploy job runs it: `trimmer bundle build | validate | diff |
//! publish | rollback` on real-shaped signature files, and a running sidecar that sees a
//! publish and a rollback.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_trimmer");

fn trimmer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the command's standard error contains `message`.
fn says(o: &Output, message: &str) {
    assert!(stderr(o).contains(message), "{}", stderr(o));
}

fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// TF Serving's metadata response shape: doubled `signature_def`, int64 as strings, input keys
/// differing from graph tensor names, several signatures.
const TF_METADATA: &str = r#"{
 "model_spec": {"name": "half_plus_two", "signature_name": "", "version": "123"},
 "metadata": {"signature_def": {"signature_def": {
   "classify_x_to_y": {"inputs": {"inputs": {"dtype": "DT_STRING", "tensor_shape": {"dim": [], "unknown_rank": true}, "name": "tf_example:0"}},
                       "outputs": {"scores": {"dtype": "DT_FLOAT", "name": "y:0"}}, "method_name": "tensorflow/serving/classify"},
   "serving_default": {"inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": false}, "name": "x:0"},
                                  "x2": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": false}, "name": "x2:0"}},
                       "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y:0"}}, "method_name": "tensorflow/serving/predict", "defaults": {}}
 }}}
}"#;

/// A KServe V2 model metadata response (Triton prefixes batched shapes with -1).
const V2_METADATA: &str = r#"{"name": "ads_ctr", "versions": ["5", "6"], "platform": "onnxruntime_onnx",
  "inputs": [{"name": "user_country", "datatype": "BYTES", "shape": [-1, 1]},
             {"name": "ad_ctr_30d", "datatype": "FP32", "shape": [-1, 1]}],
  "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]}"#;

const PBTXT_LIST: &str = r#"
# Triton model configuration, repeated fields as lists
name: "ranker_triton"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "user_id"     # int64 id
    data_type: TYPE_INT64
    dims: [ 1 ]
  },
  {
    name: "item_ctr"
    data_type: TYPE_FP32
    dims: [ 4 ]
    optional: true      # may be absent from a request, still allowed
  }
]
output [ { name: "score", data_type: TYPE_FP32, dims: [ 1 ] } ]
"#;

const PBTXT_BLOCKS: &str = r#"
# the same, repeated blocks
platform: "pytorch_libtorch"
input {
  name: "INPUT__0"
  data_type: TYPE_FP32
  dims: [ 16 ]
}
input {
  name: "INPUT__1"
  data_type: TYPE_FP32
  dims: [ 16 ]
}
output {
  name: "OUTPUT__0"
  data_type: TYPE_FP32
  dims: [ 1 ]
}
"#;

/// A signature directory with every form, plus a version directory without a signature.
fn signatures(root: &Path) -> PathBuf {
    let dir = root.join("signatures");
    write(dir.join("half_plus_two/123/metadata.json"), TF_METADATA);
    write(dir.join("ads_ctr/5/metadata.json"), V2_METADATA);
    write(
        dir.join("homefeed_ranker/17/module_info.json"),
        r#"{"model": "homefeed_ranker", "version": "17", "input_names": ["user_country", "item_ctr_7d", "hour_of_day"]}"#,
    );
    write(
        dir.join("module_info_18.json"),
        r#"{"model": "homefeed_ranker", "version": "18", "input_names": ["user_country", "item_ctr_7d", "item_freshness"]}"#,
    );
    write(dir.join("ranker_triton/1/config.pbtxt"), PBTXT_LIST);
    write(dir.join("torch_model/2/config.pbtxt"), PBTXT_BLOCKS);
    write(
        dir.join("lost_model/4/README.txt"),
        "the signature export failed",
    );
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn features(bundle: &Value, model: &str, version: &str) -> Vec<String> {
    bundle["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model && m["version"] == version)
        .unwrap_or_else(|| panic!("{model}@{version} missing"))["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn build_reads_every_signature_form_and_skips_a_missing_one() {
    let tmp = TempDir::new("build");
    let sigs = signatures(&tmp.0);
    let out = tmp.path("homefeed.json");
    let o = build("homefeed", &sigs, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    says(&o, "lost_model/4");
    says(&o, "no readable signature");
    let bundle = read_json(&out);
    assert_eq!(bundle["generation"], 1);
    assert!(
        bundle.get("created_at").is_none(),
        "no time without --created-at or SOURCE_DATE_EPOCH"
    );
    // TF Serving: the input keys of serving_default, not the graph tensor names.
    assert_eq!(features(&bundle, "half_plus_two", "123"), ["x", "x2"]);
    assert_eq!(
        features(&bundle, "ads_ctr", "5"),
        ["ad_ctr_30d", "user_country"]
    );
    assert_eq!(
        features(&bundle, "homefeed_ranker", "17"),
        ["hour_of_day", "item_ctr_7d", "user_country"]
    );
    assert_eq!(
        features(&bundle, "homefeed_ranker", "18"),
        ["item_ctr_7d", "item_freshness", "user_country"]
    );
    assert_eq!(
        features(&bundle, "ranker_triton", "1"),
        ["item_ctr", "user_id"],
        "optional inputs stay"
    );
    assert_eq!(
        features(&bundle, "torch_model", "2"),
        ["INPUT__0", "INPUT__1"]
    );
    assert_eq!(bundle["models"].as_array().unwrap().len(), 6);
    // The artefact is one the sidecar accepts, sealed with its checksum.
    assert!(trimmer(&["bundle", "validate", out.to_str().unwrap()])
        .status
        .success());
    assert_eq!(bundle["sha256"].as_str().unwrap().len(), 64);

    // Another TF signature by name; --strict turns the missing signature into an error.
    let o = build(
        "homefeed",
        &sigs,
        &tmp.path("x.json"),
        &["--signature", "classify_x_to_y"],
    );
    assert!(o.status.success());
    assert_eq!(
        features(&read_json(&tmp.path("x.json")), "half_plus_two", "123"),
        ["inputs"]
    );
    let o = build("homefeed", &sigs, &tmp.path("strict.json"), &["--strict"]);
    assert_eq!(o.status.code(), Some(1));
    says(&o, "lost_model/4");
    assert!(!tmp.path("strict.json").exists());
}

#[test]
fn building_twice_gives_identical_bytes() {
    let tmp = TempDir::new("determinism");
    let sigs = signatures(&tmp.0);
    let run = |out: &str| {
        let o = Command::new(BIN)
            .args([
                "bundle",
                "build",
                "--bundle",
                "homefeed",
                "--source",
                "pipeline run 8812, models abc123",
            ])
            .args([
                "--signatures",
                sigs.to_str().unwrap(),
                "--out",
                tmp.path(out).to_str().unwrap(),
            ])
            .env("SOURCE_DATE_EPOCH", "1795305600")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(tmp.path(out)).unwrap()
    };
    let (a, b) = (run("a.json"), run("b.json"));
    assert_eq!(a, b);
    let bundle: Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(bundle["created_at"], "2026-11-22T00:00:00Z");
    assert_eq!(bundle["source"], "pipeline run 8812, models abc123");
}

#[test]
fn a_policy_sets_stages_modes_labels_and_every_bad_reference_is_listed() {
    let tmp = TempDir::new("policy");
    let sigs = signatures(&tmp.0);
    write(
        tmp.path("policy.toml"),
        r#"
[models.homefeed_ranker.labels]
stable = "17"
canary = "18"

[models.homefeed_ranker.versions.18]
stage = "pending"
mode = "observe"
"#,
    );
    let out = tmp.path("out.json");
    let build_with = |policy: &Path| {
        build(
            "homefeed",
            &sigs,
            &out,
            &["--policy", policy.to_str().unwrap()],
        )
    };
    let o = build_with(&tmp.path("policy.toml"));
    assert!(o.status.success(), "{}", stderr(&o));
    let bundle = read_json(&out);
    assert_eq!(bundle["labels"]["homefeed_ranker"]["canary"], "18");
    let v18 = bundle["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["version"] == "18")
        .unwrap()
        .clone();
    assert_eq!(
        (v18["stage"].as_str(), v18["mode"].as_str()),
        (Some("pending"), Some("observe"))
    );

    write(
        tmp.path("bad.toml"),
        r#"
[models.nope.versions.1]
stage = "pending"
[models.homefeed_ranker.labels]
stable = "99"
[models.homefeed_ranker.versions.20]
mode = "off"
"#,
    );
    let o = build_with(&tmp.path("bad.toml"));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("model `nope` has no signature"), "{e}");
    assert!(
        e.contains("label `stable` of `homefeed_ranker` points to homefeed_ranker@99"),
        "{e}"
    );
    assert!(e.contains("homefeed_ranker@20 has no signature"), "{e}");
    write(
        tmp.path("typo.toml"),
        "[models.homefeed_ranker.versions.18]\nstag = \"pending\"\n",
    );
    let o = build_with(&tmp.path("typo.toml"));
    says(&o, "unknown field `stag`");
}

/// Builds from `models` (module_info files) with extra arguments; returns the output.
fn build_from(
    tmp: &TempDir,
    tag: &str,
    models: &[(&str, &str, &[&str])],
    extra: &[&str],
) -> (Output, PathBuf) {
    let sigs = tmp.path(&format!("sigs-{tag}"));
    for (model, version, inputs) in models {
        let info = serde_json::json!({"model": model, "version": version, "input_names": inputs});
        write(
            sigs.join(format!("{model}-{version}.json")),
            &info.to_string(),
        );
    }
    let out = tmp.path(&format!("{tag}.json"));
    (build("b", &sigs, &out, extra), out)
}

/// Runs `trimmer bundle build` for `bundle` from the signatures in `sigs` into `out`.
fn build(bundle: &str, sigs: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "bundle",
        "build",
        "--bundle",
        bundle,
        "--signatures",
        sigs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    trimmer(&args)
}

#[test]
fn every_invariant_has_its_own_message() {
    let tmp = TempDir::new("invariants");
    let (o, _) = build_from(&tmp, "empty", &[("m", "1", &[])], &[]);
    says(&o, "m@1 has an empty allowlist");
    let (o, _) = build_from(&tmp, "dupes", &[("m", "1", &["a", "b", "a"])], &[]);
    says(&o, "m@1 lists feature `a` more than once");

    let (o, gen1) = build_from(
        &tmp,
        "gen1",
        &[("m", "1", &["a"]), ("m", "2", &["a", "b"])],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let previous = gen1.to_str().unwrap();
    // Version 1 disappears without --retire.
    let (o, _) = build_from(
        &tmp,
        "drop",
        &[("m", "2", &["a", "b"])],
        &["--previous", previous],
    );
    says(&o, "m@1 was current in generation 1 and is missing");
    let (o, retired) = build_from(
        &tmp,
        "retire",
        &[("m", "2", &["a", "b"])],
        &["--previous", previous, "--retire", "m@1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_json(&retired)["generation"], 2);
    let (o, _) = build_from(
        &tmp,
        "retire-unknown",
        &[("m", "1", &["a"]), ("m", "2", &["a"])],
        &["--previous", previous, "--retire", "m@7"],
    );
    says(&o, "--retire m@7: the previous generation does not list it");
    // Version 3 becomes current without having been pending first.
    let (o, _) = build_from(
        &tmp,
        "new",
        &[("m", "1", &["a"]), ("m", "2", &["a"]), ("m", "3", &["c"])],
        &["--previous", previous],
    );
    says(&o, "m@3 becomes current but generation 1 did not list it");
    let (o, _) = build_from(
        &tmp,
        "new-allowed",
        &[("m", "1", &["a"]), ("m", "2", &["a"]), ("m", "3", &["c"])],
        &["--previous", previous, "--allow-new-current"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // validate: the same rules on files from elsewhere, plus checksum and labels.
    let mut doc = read_json(&gen1);
    doc["labels"] = serde_json::json!({"m": {"stable": "9"}});
    doc.as_object_mut().unwrap().remove("sha256");
    write(tmp.path("labels.json"), &doc.to_string());
    let o = trimmer(&[
        "bundle",
        "validate",
        tmp.path("labels.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    says(
        &o,
        "label `stable` of `m` points to m@9, which the bundle does not list",
    );
    let tampered = std::fs::read_to_string(&gen1)
        .unwrap()
        .replace("\"b\"", "\"z\"");
    write(tmp.path("tampered.json"), &tampered);
    let o = trimmer(&[
        "bundle",
        "validate",
        tmp.path("tampered.json").to_str().unwrap(),
    ]);
    says(&o, "checksum mismatch");
    let o = trimmer(&["bundle", "validate", previous, "--previous", previous]);
    says(
        &o,
        "generation 1 is not newer than the previous generation 1",
    );
    assert!(
        trimmer(&["bundle", "validate", previous, retired.to_str().unwrap()])
            .status
            .success()
    );
}

#[test]
fn diff_shows_per_version_changes_as_text_and_json() {
    let tmp = TempDir::new("diff");
    let (_, old) = build_from(
        &tmp,
        "old",
        &[("m", "1", &["a", "b"]), ("m", "2", &["a"])],
        &[],
    );
    write(tmp.path("policy.toml"), "[models.m.versions.3]\nstage = \"pending\"\nmode = \"observe\"\n[models.m.versions.2]\nmode = \"off\"\nverify = { sample = 0.5, abs = 0.01 }\n");
    let policy = tmp.path("policy.toml");
    let (o, new) = build_from(
        &tmp,
        "new",
        &[("m", "2", &["a", "c"]), ("m", "3", &["c"])],
        &[
            "--previous",
            old.to_str().unwrap(),
            "--retire",
            "m@1",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = trimmer(&[
        "bundle",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("generation 1 -> 2"), "{text}");
    assert!(
        text.contains("+ m@3  pending, mode observe, 1 features"),
        "{text}"
    );
    assert!(text.contains("- m@1"), "{text}");
    assert!(
        text.contains(
            r#"~ m@2  mode default -> off; verify default -> {"sample":0.5,"abs":0.01}; features added: c"#
        ),
        "{text}"
    );
    let o = trimmer(&[
        "bundle",
        "diff",
        "--json",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    let json: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        json["changed"][0]["features_added"],
        serde_json::json!(["c"])
    );
    assert_eq!(json["removed"][0]["version"], "1");
    assert_eq!(
        json["changed"][0]["verify"],
        serde_json::json!([null, {"sample": 0.5, "abs": 0.01}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_rollback_is_seen_by_a_running_sidecar() {
    let tmp = TempDir::new("publish");
    let live = tmp.path("live");
    std::fs::create_dir_all(&live).unwrap();
    let (_, gen1) = build_from(&tmp, "g1", &[("m", "1", &["a", "b"])], &[]);
    let (_, gen2) = build_from(
        &tmp,
        "g2",
        &[("m", "1", &["a"]), ("m", "2", &["a", "b"])],
        &["--previous", gen1.to_str().unwrap(), "--allow-new-current"],
    );

    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(live.clone());
    config.bundles.debounce_ms = 10;
    let sidecar = Sidecar::start(config).await;
    let generation = |sidecar: &Sidecar| {
        let url = sidecar.admin_url("/metrics");
        async move {
            metric(
                &get_text(&url).await,
                r#"trimmer_bundle_generation{bundle="b"}"#,
            )
        }
    };

    for file in [&gen1, &gen2] {
        let o = trimmer(&[
            "bundle",
            "publish",
            file.to_str().unwrap(),
            "--dir",
            live.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    eventually("generation 2 to be served", || async {
        generation(&sidecar).await == Some(2.0)
    })
    .await;
    let o = trimmer(&[
        "bundle",
        "publish",
        gen1.to_str().unwrap(),
        "--dir",
        live.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    says(&o, "generation 1 is not newer than the live generation 2");
    assert!(live.join(".history/b/1.json").exists() && live.join(".history/b/2.json").exists());

    let o = trimmer(&["bundle", "rollback", "b", "--dir", live.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("restored b generation 1"));
    eventually("the rollback to generation 1 to be served", || async {
        generation(&sidecar).await == Some(1.0)
    })
    .await;
    let status = status(&sidecar).await;
    assert_eq!(status["bundles"][0]["generation"], 1);
    assert_eq!(status["bundles"][0]["stale"], false);
    // Only the live file was ever loaded (temp files and history are dot-files).
    let m = get_text(&sidecar.admin_url("/metrics")).await;
    assert_eq!(
        metric(
            &m,
            r#"trimmer_bundle_loads_total{bundle="b",result="error"}"#
        ),
        None
    );
    let o = trimmer(&[
        "bundle",
        "rollback",
        "b",
        "--dir",
        live.to_str().unwrap(),
        "--to",
        "2",
    ]);
    assert!(o.status.success());
    eventually("generation 2 again", || async {
        generation(&sidecar).await == Some(2.0)
    })
    .await;
    sidecar.stop().await;
}
