//! A real Prometheus server (Debian's `prometheus`, installed by `.ci/run`) scrapes the
//! sidecar on loopback with the shipped recording rules; `trim_miss_rate` and the fleet-wide
//! recording rule are read back through its query API after traffic with known misses. Every
//! expression of the Grafana dashboard is also checked to be valid PromQL there.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

const BUNDLE: &str = r#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 1,
  "models": [{"model": "ranker", "version": "1", "features": ["a"]}]}"#;

struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = TempDir::new("prometheus");
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/trimmer-rules.yaml"
    );
    std::fs::write(
        dir.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: trimmer\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = dead_addr().await.port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is needed (bash .ci/run installs Debian's prometheus)");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let ready = format!("{}/-/ready", prometheus.url);
    eventually("prometheus to be ready", || async {
        let request = http::Request::get(&ready)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        h1_client()
            .request(request)
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    prometheus
}

async fn query(prometheus: &Prometheus, expr: &str) -> Value {
    let mut url = format!("{}/api/v1/query?query=", prometheus.url);
    for byte in expr.bytes() {
        if byte.is_ascii_alphanumeric() {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    serde_json::from_str(&get_text(&url).await).unwrap()
}

/// The value of the sample labelled `model` in a query result, if any.
fn model_value(result: &Value, model: &str) -> Option<f64> {
    result["data"]["result"]
        .as_array()?
        .iter()
        .find(|s| s["metric"]["model"] == model)?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_trim_miss_rate_back() {
    let dir = TempDir::new("prom-bundles");
    std::fs::write(dir.path("home.json"), BUNDLE).unwrap();
    let leaf = Leaf::start("leaf").await;
    let mut config = config_for(&leaf);
    config.bundles.dir = Some(dir.0.clone());
    let sidecar = Sidecar::start(config).await;
    let prometheus = start_prometheus(sidecar.admin).await;
    eventually("the first scrape", || async {
        query(&prometheus, "up{job=\"trimmer\"}").await["data"]["result"][0]["value"][1] == "1"
    })
    .await;

    // 4 requests for ranker: 1 of them for an unknown version; 2 for a model no bundle names.
    let client = h1_client();
    let body = r#"{"instances": [{"a": 1, "b": 2}]}"#;
    for path in [
        "/v1/models/ranker/versions/1:predict",
        "/v1/models/ranker/versions/1:predict",
        "/v1/models/ranker/versions/1:predict",
        "/v1/models/ranker/versions/2:predict",
        "/v1/models/mystery:predict",
        "/v1/models/other_mystery:predict",
    ] {
        assert_eq!(
            send(&client, "POST", &sidecar.url(path), body).await.status,
            200
        );
    }
    eventually("trim_miss_rate through Prometheus", || async {
        let result = query(&prometheus, "trim_miss_rate").await;
        model_value(&result, "ranker") == Some(0.25)
            && model_value(&result, "_unknown") == Some(1.0)
    })
    .await;
    eventually("the fleet-wide recording rule", || async {
        let result = query(&prometheus, "model:trim_miss_rate:ratio_rate5m").await;
        model_value(&result, "ranker").is_some_and(|v| (v - 0.25).abs() < 1e-9)
    })
    .await;

    // Every dashboard expression parses and evaluates.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/feature-trimmer-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            let result = query(&prometheus, &expr).await;
            assert_eq!(result["status"], "success", "{expr}: {result}");
        }
    }
    sidecar.stop().await;
}
