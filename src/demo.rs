//! `trimmer demo`: the whole loop on loopback. Starts an example leaf and the sidecar with the
//! example bundles, sends a mix of score requests (TF Serving, KServe V2 JSON, Triton binary;
//! trimmed, observed, unknown model, unknown version), and prints what was saved, read back from
//! the sidecar's own /metrics.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::config::{ClusterConfig, Config};
use crate::server::Server;

/// The example bundles, used when `config/bundles` is not in the working directory.
const EXAMPLE_BUNDLES: [(&str, &str); 2] = [
    (
        "homefeed.json",
        include_str!("../config/bundles/homefeed.json"),
    ),
    ("ads.json", include_str!("../config/bundles/ads.json")),
];

/// Features the root sends to every model: the union of what all its models use, and more.
const ROOT_FEATURES: [&str; 12] = [
    "user_age_bucket",
    "user_country",
    "item_ctr_7d",
    "item_category",
    "hour_of_day",
    "user_embedding",
    "item_freshness",
    "ad_id",
    "ad_ctr_30d",
    "ad_format",
    "session_length",
    "device_type",
];

/// Runs the demo; with `keep_running` it stays up until Ctrl-C after printing the URLs.
pub async fn run(keep_running: bool) -> Result<(), String> {
    let leaf = start_leaf()
        .await
        .map_err(|e| format!("cannot start the example leaf: {e}"))?;
    let (bundle_dir, _temp) = bundle_dir()?;
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        default_cluster: "leaves".into(),
        clusters: vec![ClusterConfig {
            name: "leaves".into(),
            endpoints: vec![format!("http://{}", leaf.addr)],
            ..ClusterConfig::default()
        }],
        ..Config::default()
    };
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.bundles.dir = Some(bundle_dir.clone());
    let server = Server::bind(config).await.map_err(|e| e.to_string())?;
    let (proxy, admin) = (server.proxy_addr(), server.admin_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    wait_ready(&client, admin).await?;

    println!(
        "feature-trimmer demo: leaf on {}, sidecar on {proxy}, admin on {admin}",
        leaf.addr
    );
    println!("bundles from {}\n", bundle_dir.display());
    let mut sent = 0;
    for (label, path, headers, body) in traffic() {
        let mut request = Request::post(format!("http://{proxy}{path}"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{label}: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        println!("  {status}  {label:<46} POST {path}");
        sent += 1;
    }
    let metrics = fetch(&client, &format!("http://{admin}/metrics")).await?;
    println!();
    print_summary(&metrics, sent, leaf.bytes.load(Ordering::Relaxed));
    println!("\nmetrics: http://{admin}/metrics   status: http://{admin}/status");
    if keep_running {
        println!("proxy:   http://{proxy}   (Ctrl-C to stop)");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop.send(());
    let _ = running.await;
    Ok(())
}

/// One sample request: label, path, extra headers, body.
type Sample = (
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
    Vec<u8>,
);

/// Every request the demo sends.
fn traffic() -> Vec<Sample> {
    let rows = tf_rows(16);
    let v2 = v2_json();
    let (binary, json_len) = v2_binary();
    let binary_headers = vec![
        ("inference-header-content-length", json_len.to_string()),
        ("content-type", "application/octet-stream".to_owned()),
    ];
    vec![
        (
            "TF Serving, version 17 (trimmed)",
            "/v1/models/homefeed_ranker/versions/17:predict",
            vec![],
            rows.clone(),
        ),
        (
            "TF Serving, label stable = 17 (trimmed)",
            "/v1/models/homefeed_ranker/labels/stable:predict",
            vec![],
            rows.clone(),
        ),
        (
            "TF Serving, version 18 (mode observe)",
            "/v1/models/homefeed_ranker/versions/18:predict",
            vec![],
            rows.clone(),
        ),
        (
            "TF Serving, unknown version 99 (miss)",
            "/v1/models/homefeed_ranker/versions/99:predict",
            vec![],
            rows.clone(),
        ),
        (
            "TF Serving, unknown model (miss)",
            "/v1/models/search_ranker:predict",
            vec![],
            rows,
        ),
        (
            "KServe V2 JSON, ads_ctr 5 (trimmed)",
            "/v2/models/ads_ctr/versions/5/infer",
            vec![],
            v2.clone(),
        ),
        (
            "Triton binary tensors, ads_ctr 6 (trimmed)",
            "/v2/models/ads_ctr/versions/6/infer",
            binary_headers,
            binary,
        ),
        (
            "KServe V2 JSON, ads_ctr 7 (miss)",
            "/v2/models/ads_ctr/versions/7/infer",
            vec![],
            v2,
        ),
    ]
}

/// A TF Serving row-format body: `n` instances carrying every root feature.
fn tf_rows(n: usize) -> Vec<u8> {
    let instances: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            ROOT_FEATURES
                .iter()
                .enumerate()
                .map(|(f, name)| {
                    let value = match f % 3 {
                        0 => serde_json::json!(i * 7 + f),
                        1 => serde_json::json!(format!("v{i}-{f}")),
                        _ => serde_json::json!([0.25 * f as f64, 0.5, -1.0, 2.0]),
                    };
                    ((*name).to_owned(), value)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    serde_json::json!({"signature_name": "serving_default", "instances": instances})
        .to_string()
        .into_bytes()
}

fn v2_inputs() -> Vec<serde_json::Value> {
    ROOT_FEATURES
        .iter()
        .map(|name| serde_json::json!({"name": name, "shape": [8], "datatype": "FP32", "data": vec![0.5; 8]}))
        .collect()
}

fn v2_json() -> Vec<u8> {
    serde_json::json!({"id": "demo-1", "inputs": v2_inputs()})
        .to_string()
        .into_bytes()
}

/// Triton binary extension: every input's 8 FP32 values as raw bytes after the JSON header.
fn v2_binary() -> (Vec<u8>, usize) {
    let inputs: Vec<serde_json::Value> = ROOT_FEATURES
        .iter()
        .map(|name| serde_json::json!({"name": name, "shape": [8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}))
        .collect();
    let mut body = serde_json::json!({"id": "demo-2", "inputs": inputs})
        .to_string()
        .into_bytes();
    let json_len = body.len();
    for i in 0..ROOT_FEATURES.len() {
        for v in 0..8 {
            body.extend_from_slice(&((i * 8 + v) as f32).to_le_bytes());
        }
    }
    (body, json_len)
}

/// Prints requests by outcome and bytes in/out per model, from the Prometheus text.
fn print_summary(metrics: &str, sent: usize, leaf_bytes: u64) {
    let mut outcomes: BTreeMap<String, f64> = BTreeMap::new();
    let mut bytes: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with("trimmer_requests_total{") {
            *outcomes.entry(label(series, "outcome")).or_default() += value;
        } else if series.starts_with("trimmer_request_bytes_total{") {
            let entry = bytes.entry(label(series, "model")).or_default();
            if label(series, "direction") == "in" {
                entry.0 += value;
            } else {
                entry.1 += value;
            }
        }
    }
    println!("{:<22} {:>8}", "outcome", "requests");
    for (outcome, count) in outcomes.iter().filter(|(_, c)| **c > 0.0) {
        println!("{outcome:<22} {count:>8}");
    }
    println!(
        "\n{:<22} {:>10} {:>10} {:>8}",
        "model", "bytes in", "bytes out", "saved"
    );
    let (mut total_in, mut total_out) = (0.0, 0.0);
    for (model, (bytes_in, bytes_out)) in bytes.iter().filter(|(_, (i, _))| *i > 0.0) {
        println!(
            "{model:<22} {bytes_in:>10} {bytes_out:>10} {:>7.1}%",
            saving(*bytes_in, *bytes_out)
        );
        total_in += bytes_in;
        total_out += bytes_out;
    }
    println!(
        "{:<22} {total_in:>10} {total_out:>10} {:>7.1}%",
        "total",
        saving(total_in, total_out)
    );
    println!("\n{sent} requests sent; the leaf received {leaf_bytes} body bytes.");
}

fn saving(bytes_in: f64, bytes_out: f64) -> f64 {
    if bytes_in > 0.0 {
        100.0 * (1.0 - bytes_out / bytes_in)
    } else {
        0.0
    }
}

/// The value of `name="..."` in a series.
fn label(series: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    series
        .split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value.to_owned())
        .unwrap_or_default()
}

/// `config/bundles` when run from the repository, else the embedded copies in a temp dir.
fn bundle_dir() -> Result<(PathBuf, Option<TempBundles>), String> {
    let local = PathBuf::from("config/bundles");
    if local.join("homefeed.json").is_file() {
        return Ok((local, None));
    }
    let dir = std::env::temp_dir().join(format!("trimmer-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (name, text) in EXAMPLE_BUNDLES {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    Ok((dir.clone(), Some(TempBundles(dir))))
}

/// Removes the demo's temporary bundle directory.
struct TempBundles(PathBuf);

impl Drop for TempBundles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<String, String> {
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn wait_ready(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    admin: SocketAddr,
) -> Result<(), String> {
    for _ in 0..500 {
        let request = Request::get(format!("http://{admin}/readyz"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        if client
            .request(request)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err("the sidecar did not become ready within 5 s".into())
}

/// The example leaf: answers like a model server and counts the body bytes it receives.
struct ExampleLeaf {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
}

async fn start_leaf() -> std::io::Result<ExampleLeaf> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| leaf_answer(counter.clone(), request));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(ExampleLeaf { addr, bytes })
}

async fn leaf_answer(
    counter: Arc<AtomicU64>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let v2 = request.uri().path().starts_with("/v2/");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    counter.fetch_add(body.len() as u64, Ordering::Relaxed);
    let answer = if v2 {
        r#"{"model_name":"demo","outputs":[{"name":"score","datatype":"FP32","shape":[1],"data":[0.5]}]}"#
    } else {
        r#"{"predictions":[0.5]}"#
    };
    let mut response = Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
