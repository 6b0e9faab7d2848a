//! Test fixtures shared by the integration tests: a recording leaf model server, a sidecar
//! started in-process on ephemeral ports, and HTTP/1.1 and h2c clients. Everything runs on
//! real sockets on 127.0.0.1.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use feature_trimmer::config::{ClusterConfig, Config};
use feature_trimmer::server::Server;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What a leaf saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A leaf model server stand-in that records every request. Paths:
/// `/hang` never answers; `/slow/MS` answers after MS ms; `/trailers` answers with trailers;
/// a request with `x-leaf-answer: v2` gets a valid KServe V2 response; anything else echoes the
/// body back with `x-leaf: NAME`.
pub struct Leaf {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Leaf {
    pub async fn start(name: &str) -> Leaf {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (name_, seen_) = (name.to_owned(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, seen) = (name_.clone(), seen_.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| leaf_handle(name.clone(), seen.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Leaf {
            addr,
            name: name.to_owned(),
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type LeafBody = BoxBody<Bytes, Infallible>;

/// A body another task feeds frame by frame, through the sidecar's own frame queue
/// (`upstream::h1::frame_channel`): http-body-util's `Channel` can end before its last frame.
/// Nothing here ends one with an error.
pub fn streamed(
    capacity: usize,
) -> (
    feature_trimmer::upstream::h1::FrameSender,
    BoxBody<Bytes, Infallible>,
) {
    let (tx, rx) = feature_trimmer::upstream::h1::frame_channel(capacity);
    (
        tx,
        rx.map_err(|e| -> Infallible { unreachable!("{e}") })
            .boxed(),
    )
}

async fn leaf_handle(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    request: Request<Incoming>,
) -> Result<Response<LeafBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        version: parts.version,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path().to_owned();
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|m| m.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let v2_answer = parts
        .headers
        .get("x-leaf-answer")
        .is_some_and(|v| v == "v2");
    let mut response = if v2_answer {
        // A valid KServe V2 response, for real clients that parse what they get back.
        let answer = r#"{"model_name":"m","model_version":"1","outputs":[{"name":"out","datatype":"FP32","shape":[1],"data":[0.5]}]}"#;
        let mut response = Response::new(Full::new(Bytes::from_static(answer.as_bytes())).boxed());
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    } else if path == "/trailers" {
        let (mut tx, body) = streamed(4);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"part one;")).await;
            let _ = tx.send_data(Bytes::from_static(b"part two")).await;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let _ = tx.send_trailers(trailers).await;
        });
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert("trailer", "grpc-status, x-checksum".parse().unwrap());
        response
    } else {
        Response::new(Full::new(body).boxed())
    };
    response
        .headers_mut()
        .insert("x-leaf", name.parse().unwrap());
    response
        .headers_mut()
        .append("x-multi", "one".parse().unwrap());
    response
        .headers_mut()
        .append("x-multi", "two".parse().unwrap());
    Ok(response)
}

/// A sidecar running in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sidecar {
    /// Starts the sidecar with `config`, forcing ephemeral loopback ports.
    pub async fn start(mut config: Config) -> Sidecar {
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(config.problems(), Vec::<String>::new());
        let server = Server::bind(config).await.unwrap();
        let (addr, admin) = (server.proxy_addr(), server.admin_addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let sidecar = Sidecar {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
        };
        let ready = sidecar.admin_url("/readyz");
        eventually("the sidecar to become ready", || async {
            send(&h1_client(), "GET", &ready, "").await.status == 200
        })
        .await;
        sidecar
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A configuration with one cluster per `(name, endpoints, models)`; the first is the default.
pub fn config_with(clusters: &[(&str, Vec<String>, Vec<&str>)]) -> Config {
    Config {
        default_cluster: clusters[0].0.to_owned(),
        clusters: clusters
            .iter()
            .map(|(name, endpoints, models)| ClusterConfig {
                name: (*name).to_owned(),
                endpoints: endpoints.clone(),
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                ..ClusterConfig::default()
            })
            .collect(),
        ..Config::default()
    }
}

/// A configuration sending everything to one leaf.
pub fn config_for(leaf: &Leaf) -> Config {
    config_with(&[("default", vec![leaf.url()], vec![])])
}

/// An address where nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A finished response: status, headers, body and trailers.
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Reads a whole response, trailers included.
pub async fn answer<B>(response: Response<B>) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame: Frame<Bytes> = frame.unwrap();
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: data.into(),
        trailers,
    }
}

/// Sends `method url` with `body` and returns the whole answer.
pub async fn send(client: &TestClient, method: &str, url: &str, body: impl Into<Bytes>) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .unwrap();
    answer(client.request(request).await.unwrap()).await
}

/// GETs an admin or proxy URL as text.
pub async fn get_text(url: &str) -> String {
    let a = send(&h1_client(), "GET", url, Bytes::new()).await;
    String::from_utf8(a.body.to_vec()).unwrap()
}

/// The value of one sample line in Prometheus text (`name{labels}` exactly as rendered).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `check` every 10 ms until it holds; panics after 10 s naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A bundle file's text: `models` are `(model, version, features)`.
pub fn bundle_json(name: &str, generation: u64, models: &[(&str, &str, &[&str])]) -> String {
    let models: Vec<serde_json::Value> = models
        .iter()
        .map(|(model, version, features)| serde_json::json!({"model": model, "version": version, "features": features}))
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "format": "trimmer.bundle/v1",
        "bundle": name,
        "generation": generation,
        "models": models,
    }))
    .unwrap()
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("trimmer-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `/status` as JSON.
pub async fn status(sidecar: &Sidecar) -> serde_json::Value {
    serde_json::from_str(&get_text(&sidecar.admin_url("/status")).await).unwrap()
}

/// A child process that is killed if the test ends (or panics) before it exits, so no orphan
/// keeps running or holds the test runner's output open.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // After a successful wait() both are no-ops.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `trimmer` binary running `serve` with JSON logs on ephemeral loopback ports.
pub struct Spawned {
    pub child: KillOnDrop,
    pub proxy: String,
    pub admin: String,
    /// The engine's vector path from the serving log line (`avx512` or `portable`).
    pub engine: String,
    /// Every later log line, collected until the process exits.
    pub logs: std::thread::JoinHandle<Vec<String>>,
}

/// Starts `trimmer serve` with `args` (plus ephemeral listeners and JSON logs) and reads the
/// bound addresses from its first log line.
pub fn spawn_trimmer(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trimmer"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(args)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (proxy, admin, engine) = loop {
        let line = lines
            .next()
            .expect("trimmer exited before serving")
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if let (Some(listen), Some(admin)) = (
            entry["fields"]["listen"].as_str(),
            entry["fields"]["admin"].as_str(),
        ) {
            let engine = entry["fields"]["engine"].as_str().unwrap_or_default();
            break (listen.to_owned(), admin.to_owned(), engine.to_owned());
        }
    };
    let logs = std::thread::spawn(move || lines.map_while(Result::ok).collect());
    Spawned {
        child: KillOnDrop(child),
        proxy,
        admin,
        engine,
        logs,
    }
}

/// An MLServer process (a real V2 server, HTTP and gRPC) serving a copy of the model folder
/// `tests/peers/NAME` on loopback ports of its own. `.ci/run` installs MLServer.
pub struct MlServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT` of its REST side.
    pub url: String,
    /// `127.0.0.1:PORT` of its gRPC side.
    pub grpc: String,
    _dir: TempDir,
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MlServer {
    /// Starts MLServer on `tests/peers/NAME` and waits (up to 90 s) until `ready_model`
    /// version 1 is ready.
    pub async fn start(name: &str, ready_model: &str) -> MlServer {
        let dir = TempDir::new("mlserver");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/peers")
            .join(name);
        copy_tree(&source, &dir.0);
        let (http, grpc, metrics) = (
            dead_addr().await.port(),
            dead_addr().await.port(),
            dead_addr().await.port(),
        );
        let child = std::process::Command::new("mlserver")
            .arg("start")
            .arg(&dir.0)
            .env("MLSERVER_HOST", "127.0.0.1")
            .env("MLSERVER_HTTP_PORT", http.to_string())
            .env("MLSERVER_GRPC_PORT", grpc.to_string())
            .env("MLSERVER_METRICS_PORT", metrics.to_string())
            .env("MLSERVER_PARALLEL_WORKERS", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mlserver is needed (bash .ci/run installs it)");
        let server = MlServer {
            child,
            url: format!("http://127.0.0.1:{http}"),
            grpc: format!("127.0.0.1:{grpc}"),
            _dir: dir,
        };
        let ready = format!("{}/v2/models/{ready_model}/versions/1/ready", server.url);
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let request = Request::get(&ready).body(Full::new(Bytes::new())).unwrap();
            if h1_client()
                .request(request)
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mlserver did not become ready in 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Copies a folder and everything under it.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs the Python peer `tests/peers/SCRIPT` with `args` (off the async workers) and returns
/// what it printed; fails the test, saying why, when a peer is not installed or the script
/// fails. `.ci/run` installs the Python peers.
pub async fn python_peer(script: &str, args: Vec<String>) -> Vec<u8> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 is needed (bash .ci/run installs the peers)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "a Python peer is not installed; run the tests with `bash .ci/run`, which installs them:\n{stderr}"
    );
    assert!(output.status.success(), "the Python peer failed:\n{stderr}");
    output.stdout
}
