//! A fleet-sized snapshot, end to end: 100 sealed bundles × 100 model versions (10 models of
//! 10 versions each) × 1,000 features drawn from 20,000 names, about 130 MB of JSON. Starts the
//! `trimmer` binary of this tree (and, when `TRIMMER_BEFORE_BIN` names one, an older build for
//! comparison) as a separate process on the same files and reports, side by side: time from
//! start to `/readyz` 200, resident memory once ready, the time a one-bundle change takes to
//! apply (`POST /reload`, and the reloader's own `last_reload_ms`), request latency on the
//! proxy while that reload runs, and then, with no requests, the wall and CPU time of a few
//! more one-bundle reloads (CPU summed over the process's threads, so that it says what a
//! reload costs whatever else the host runs). Numbers only: nothing is asserted.
//!
//! ```text
//! cargo bench --bench snapshot_scale
//! TRIMMER_BEFORE_BIN=/path/to/older/trimmer cargo bench --bench snapshot_scale
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use feature_trimmer::bundle::format::{Bundle, ModelEntry, FORMAT_V1};

const BUNDLES: usize = 100;
const MODELS_PER_BUNDLE: usize = 10;
const VERSIONS_PER_MODEL: usize = 10;
const FEATURES_PER_VERSION: usize = 1_000;
const UNIVERSE: usize = 20_000;
/// The bundle the reload changes.
const CHANGED: usize = 50;
/// One-bundle reloads measured with no requests running.
const IDLE_RELOADS: u64 = 5;

fn main() {
    let dir = std::env::temp_dir().join(format!("trimmer-scale-{}", std::process::id()));
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    let started = Instant::now();
    let mut total = 0;
    for b in 0..BUNDLES {
        total += write_bundle(&bundles, b, 1);
    }
    println!(
        "generated {BUNDLES} bundles, {} model versions, {:.0} MB of JSON in {:.1} s",
        BUNDLES * MODELS_PER_BUNDLE * VERSIONS_PER_MODEL,
        total as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    // Files older than the store's racy window, as a real directory's are.
    std::thread::sleep(Duration::from_secs(3));
    let leaf = start_leaf();

    let mut subjects = Vec::new();
    if let Ok(before) = std::env::var("TRIMMER_BEFORE_BIN") {
        subjects.push(("before", PathBuf::from(before)));
    }
    subjects.push(("after", PathBuf::from(env!("CARGO_BIN_EXE_trimmer"))));
    let mut results = Vec::new();
    for (label, bin) in &subjects {
        let result = measure(bin, &dir, leaf);
        println!("{label:>6}: {result:?}");
        results.push((*label, result));
        // Put the changed bundle back for the next subject.
        write_bundle(&bundles, CHANGED, 1);
        std::thread::sleep(Duration::from_secs(3));
    }
    print_table(&results);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What one binary did.
#[derive(Debug)]
struct Figures {
    ready: Duration,
    /// CPU the process used until ready (user + system), whatever else the host runs.
    ready_cpu: Duration,
    rss_ready_mb: f64,
    peak_rss_mb: f64,
    reload_wall: Duration,
    reload_reported_ms: f64,
    rss_after_reload_mb: f64,
    requests_p50_us: u64,
    requests_p99_us: u64,
    requests_max_us: u64,
    during_reload_count: usize,
    during_reload_max_us: u64,
    /// Medians of the reloads with no requests running.
    idle_reload_wall: Duration,
    idle_reload_cpu: Duration,
}

fn measure(bin: &Path, dir: &Path, leaf: u16) -> Figures {
    let (proxy, admin) = (free_port(), free_port());
    let config = dir.join("trimmer.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{proxy}"
default_cluster = "leaves"
[admin]
listen = "127.0.0.1:{admin}"
[bundles]
dir = "{}"
rescan_interval_ms = 3600000
debounce_ms = 3600000
scan_timeout_ms = 120000
[[clusters]]
name = "leaves"
endpoints = ["http://127.0.0.1:{leaf}"]
"#,
            dir.join("bundles").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while get(admin, "/readyz").map(|(status, _)| status) != Some(200) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{} exited",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    let ready_cpu = cpu_time(&child);
    std::thread::sleep(Duration::from_secs(2));
    let rss_ready_mb = rss_mb(&child, "VmRSS");

    // Requests all along; one bundle rewritten and reloaded in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    let client = {
        let (stop, samples) = (stop.clone(), samples.clone());
        std::thread::spawn(move || requests(proxy, &stop, &samples))
    };
    std::thread::sleep(Duration::from_secs(1));
    write_bundle(&dir.join("bundles"), CHANGED, 2);
    let reload_started = Instant::now();
    let (status, body) = post(admin, "/reload").unwrap();
    let reload_wall = reload_started.elapsed();
    let reload_ended = Instant::now();
    assert_eq!(status, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["changed"], true, "{summary}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (_, status_page) = get(admin, "/status").unwrap();
    let status_page: serde_json::Value = serde_json::from_str(&status_page).unwrap();
    let reload_reported_ms = status_page["allowlists"]["last_reload_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_secs(1));
    let rss_after_reload_mb = rss_mb(&child, "VmRSS");
    let peak_rss_mb = rss_mb(&child, "VmHWM");

    let (mut idle_walls, mut idle_cpus) = (Vec::new(), Vec::new());
    for generation in 3..3 + IDLE_RELOADS {
        write_bundle(&dir.join("bundles"), CHANGED, generation);
        let (cpu, wall) = (thread_cpu_times(&child), Instant::now());
        let (status, body) = post(admin, "/reload").unwrap();
        idle_walls.push(wall.elapsed());
        idle_cpus.push(cpu_since(&child, &cpu));
        assert_eq!(status, 200, "{body}");
        let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(summary["changed"], true, "{summary}");
    }
    idle_walls.sort_unstable();
    idle_cpus.sort_unstable();

    let samples = samples.lock().unwrap();
    let mut all: Vec<u64> = samples.iter().map(|(_, d)| d.as_micros() as u64).collect();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    let during: Vec<u64> = samples
        .iter()
        .filter(|(start, took)| *start < reload_ended && *start + *took > reload_started)
        .map(|(_, d)| d.as_micros() as u64)
        .collect();
    // SAFETY: kill only sends a signal to the child this function started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    Figures {
        ready,
        ready_cpu,
        rss_ready_mb,
        peak_rss_mb,
        reload_wall,
        reload_reported_ms,
        rss_after_reload_mb,
        requests_p50_us: at(0.5),
        requests_p99_us: at(0.99),
        requests_max_us: at(1.0),
        during_reload_count: during.len(),
        during_reload_max_us: during.iter().copied().max().unwrap_or(0),
        idle_reload_wall: idle_walls[IDLE_RELOADS as usize / 2],
        idle_reload_cpu: idle_cpus[IDLE_RELOADS as usize / 2],
    }
}

fn print_table(results: &[(&str, Figures)]) {
    println!();
    println!(
        "{:<44}{}",
        "",
        results
            .iter()
            .map(|(l, _)| format!("{l:>12}"))
            .collect::<String>()
    );
    let row = |name: &str, value: &dyn Fn(&Figures) -> String| {
        println!(
            "{name:<44}{}",
            results
                .iter()
                .map(|(_, f)| format!("{:>12}", value(f)))
                .collect::<String>()
        );
    };
    row("start to ready (s)", &|f| {
        format!("{:.2}", f.ready.as_secs_f64())
    });
    row("CPU used until ready (s)", &|f| {
        format!("{:.2}", f.ready_cpu.as_secs_f64())
    });
    row("RSS once ready (MB)", &|f| format!("{:.0}", f.rss_ready_mb));
    row("RSS after the reload (MB)", &|f| {
        format!("{:.0}", f.rss_after_reload_mb)
    });
    row("peak RSS (MB)", &|f| format!("{:.0}", f.peak_rss_mb));
    row("one-bundle reload, POST /reload (ms)", &|f| {
        format!("{:.1}", f.reload_wall.as_secs_f64() * 1e3)
    });
    row("one-bundle reload, last_reload_ms", &|f| {
        format!("{:.1}", f.reload_reported_ms)
    });
    row("requests p50 / p99 (µs)", &|f| {
        format!("{}/{}", f.requests_p50_us, f.requests_p99_us)
    });
    row("requests max, whole run (µs)", &|f| {
        f.requests_max_us.to_string()
    });
    row("requests overlapping the reload", &|f| {
        f.during_reload_count.to_string()
    });
    row("their max latency (µs)", &|f| {
        f.during_reload_max_us.to_string()
    });
    row("one-bundle reload, no requests: wall (ms)", &|f| {
        format!("{:.1}", f.idle_reload_wall.as_secs_f64() * 1e3)
    });
    row("one-bundle reload, no requests: CPU (ms)", &|f| {
        format!("{:.1}", f.idle_reload_cpu.as_secs_f64() * 1e3)
    });
}

/// Writes bundle `b` at `generation` (generation 2 changes one version's features) by
/// rename, and returns its size.
fn write_bundle(dir: &Path, b: usize, generation: u64) -> usize {
    {
        let name = format!("b{b:03}");
        let mut rng = Lcg(0x9e37_79b9_7f4a_7c15 ^ b as u64);
        let mut models = Vec::new();
        let mut labels = std::collections::BTreeMap::new();
        for m in 0..MODELS_PER_BUNDLE {
            let model = format!("m{b:03}_{m}");
            for v in 1..=VERSIONS_PER_MODEL {
                let mut features = sample(&mut rng);
                if generation > 1 && m == 0 && v == 1 {
                    features.truncate(FEATURES_PER_VERSION - 10);
                }
                models.push(ModelEntry {
                    model: model.clone(),
                    version: v.to_string(),
                    stage: Default::default(),
                    features,
                    mode: None,
                    verify: None,
                });
            }
            labels.insert(
                model,
                [
                    ("stable".to_owned(), (VERSIONS_PER_MODEL - 1).to_string()),
                    ("canary".to_owned(), VERSIONS_PER_MODEL.to_string()),
                ]
                .into(),
            );
        }
        let mut bundle = Bundle {
            format: FORMAT_V1.into(),
            bundle: name.clone(),
            generation,
            created_at: None,
            source: Some("snapshot_scale bench".into()),
            models,
            labels,
            sha256: None,
        };
        bundle.seal();
        let bytes = serde_json::to_vec(&bundle).unwrap();
        let tmp = dir.join(format!(".{name}.json.tmp"));
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.json"))).unwrap();
        bytes.len()
    }
}

/// `FEATURES_PER_VERSION` distinct names of the universe (a partial Fisher-Yates shuffle).
fn sample(rng: &mut Lcg) -> Vec<String> {
    let mut ids: Vec<u32> = (0..UNIVERSE as u32).collect();
    for i in 0..FEATURES_PER_VERSION {
        let j = i + (rng.next() % (UNIVERSE - i) as u64) as usize;
        ids.swap(i, j);
    }
    ids[..FEATURES_PER_VERSION]
        .iter()
        .map(|id| format!("feat_{id:05}"))
        .collect()
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Keep-alive requests to a model of the changed bundle until `stop`, each timed.
fn requests(proxy: u16, stop: &AtomicBool, samples: &Mutex<Vec<(Instant, Duration)>>) {
    let body = br#"{"instances": [{"feat_00001": 1, "feat_00002": 2, "not_a_feature": 3}]}"#;
    let path = format!("/v1/models/m{CHANGED:03}_0/versions/3:predict");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let mut stream = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut local = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        stream.write_all(&request).unwrap();
        let (status, _) = read_response(&mut stream).unwrap();
        local.push((start, start.elapsed()));
        assert_eq!(status, 200);
    }
    samples.lock().unwrap().extend(local);
}

/// A leaf that answers `{}` to every request, over keep-alive connections.
fn start_leaf() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_nodelay(true);
                while read_message(&mut stream).is_ok() {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Reads one HTTP/1.1 message framed by Content-Length: (first line, body).
fn read_message(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    let first = head.lines().next().unwrap_or_default().to_owned();
    Ok((first, body))
}

fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let (first, body) = read_message(stream)?;
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    call(port, "GET", path)
}

fn post(port: u16, path: &str) -> Option<(u16, String)> {
    call(port, "POST", path)
}

/// One admin call on a fresh connection.
fn call(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let (status, body) = read_response(&mut stream).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// User + system time of the process so far.
fn cpu_time(child: &Child) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((fields[0] + fields[1]) as f64 / ticks)
}

/// CPU time of each of the process's threads so far, by thread id.
fn thread_cpu_times(child: &Child) -> std::collections::HashMap<String, Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap();
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanos = stat.split(' ').next()?.parse().ok()?;
            Some((
                task.file_name().into_string().ok()?,
                Duration::from_nanos(nanos),
            ))
        })
        .collect()
}

/// CPU time the process's threads used since `before` (nanosecond counts, where
/// [`cpu_time`] counts clock ticks); a thread that ended since is left out.
fn cpu_since(child: &Child, before: &std::collections::HashMap<String, Duration>) -> Duration {
    thread_cpu_times(child)
        .into_iter()
        .map(|(tid, now)| now.saturating_sub(before.get(&tid).copied().unwrap_or_default()))
        .sum()
}

/// A `/proc/PID/status` figure in MB.
fn rss_mb(child: &Child, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
