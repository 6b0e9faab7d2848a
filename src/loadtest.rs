//! Support for the end-to-end harness in `benches/e2e/`: a leaf that parses every JSON body as
//! a real model server must (so a smaller body costs it less) and checks what it received
//! against the workload, and a way to write a workload's body and allowlist to files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::workload::{self, Workload};

/// What the leaf has seen: bodies equal to the full request, equal to the correctly trimmed
/// one, or anything else (a changed value, a missing feature, a rounded number).
#[derive(Default)]
struct Tally {
    full: AtomicU64,
    trimmed: AtomicU64,
    wrong: AtomicU64,
    unparsable: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Full,
    Trimmed,
    Wrong,
    Unparsable,
}

/// The leaf's work on one body: the parse a model server does, then the harness's check.
struct Checker {
    full: Value,
    trimmed: Value,
    /// Verdicts by exact body bytes. Comparing two parsed documents cost the leaf about a fifth
    /// of its time on trimmed tfs-rows (perf); an observer that no real server has should not
    /// set the rate. A body byte-equal to one already judged gets the same verdict; every
    /// other body is compared in full. A few entries: each target sends one body.
    seen: Mutex<Vec<(Bytes, Verdict)>>,
}

impl Checker {
    fn new(w: &Workload) -> Self {
        let json_len = w.json_len.unwrap_or(w.body.len());
        Checker {
            full: serde_json::from_slice(&w.body[..json_len]).unwrap_or_default(),
            trimmed: expected_trimmed(w),
            seen: Mutex::default(),
        }
    }

    fn check(&self, body: &Bytes) -> Verdict {
        // Parse like a model server does before it can run the model, whatever the memo knows.
        let doc = match serde_json::from_slice::<Value>(body) {
            Ok(doc) => doc,
            Err(_) => return Verdict::Unparsable,
        };
        let seen = |seen: &[(Bytes, Verdict)]| seen.iter().find(|(b, _)| b == body).map(|e| e.1);
        if let Some(verdict) = seen(&self.seen.lock().unwrap()) {
            return verdict;
        }
        let verdict = if doc == self.trimmed {
            Verdict::Trimmed
        } else if doc == self.full {
            Verdict::Full
        } else {
            Verdict::Wrong
        };
        let mut seen = self.seen.lock().unwrap();
        if seen.len() < 8 {
            seen.push((body.clone(), verdict));
        }
        verdict
    }
}

/// The workload with this bench name.
pub fn by_name(name: &str) -> Option<Workload> {
    workload::all().into_iter().find(|w| w.name == name)
}

/// Writes `body` (the request body), `allowlist.txt` (one feature per line) and
/// `bundles/bench.json` for the workload into `dir`.
pub fn write_workload(w: &Workload, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("bundles"))?;
    std::fs::write(dir.join("body"), &w.body)?;
    std::fs::write(dir.join("allowlist.txt"), w.allowed.join("\n") + "\n")?;
    std::fs::write(dir.join("path"), w.path)?;
    let bundle = serde_json::to_vec_pretty(&w.bundle()).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("bundles").join("bench.json"), bundle)
}

/// What the leaf expects a correct trimmer to deliver: the body filtered by serde_json,
/// independently of the trim engines.
fn expected_trimmed(w: &Workload) -> Value {
    w.serde_filtered().unwrap_or_default()
}

/// Serves the checking leaf on `addr` until the process ends. `GET /stats` answers the tally.
pub async fn serve_leaf(addr: SocketAddr, w: Workload) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "leaf for {} listening on {}",
        w.name,
        listener.local_addr()?
    );
    let checker = Arc::new(Checker::new(&w));
    let tally = Arc::new(Tally::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (checker, tally) = (checker.clone(), tally.clone());
        tokio::spawn(async move {
            let service =
                service_fn(move |request| answer(request, checker.clone(), tally.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    checker: Arc<Checker>,
    tally: Arc<Tally>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/stats" {
        let stats = serde_json::json!({
            "full": tally.full.load(Ordering::Relaxed),
            "trimmed": tally.trimmed.load(Ordering::Relaxed),
            "wrong": tally.wrong.load(Ordering::Relaxed),
            "unparsable": tally.unparsable.load(Ordering::Relaxed),
        });
        return Ok(Response::new(Full::new(Bytes::from(stats.to_string()))));
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let counter = match checker.check(&body) {
        Verdict::Trimmed => &tally.trimmed,
        Verdict::Full => &tally.full,
        Verdict::Wrong => &tally.wrong,
        Verdict::Unparsable => &tally.unparsable,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"predictions":[0.5]}"#,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_verdict_is_only_reused_for_the_same_bytes() {
        let w = by_name("tfs-rows").unwrap();
        let checker = Checker::new(&w);
        let trimmed = serde_json::to_vec(&expected_trimmed(&w)).unwrap();
        // What cjson does to a long float: 0.32651727739721537 -> 0.32651727739722.
        let text = String::from_utf8(trimmed.clone()).unwrap();
        let long = text
            .split([',', ':', '[', ']', '{', '}'])
            .find(|t| t.len() > 16 && t.starts_with("0."))
            .unwrap();
        let rounded = text.replacen(long, &long[..16], 1);
        for _ in 0..2 {
            assert_eq!(
                checker.check(&Bytes::from(trimmed.clone())),
                Verdict::Trimmed
            );
            assert_eq!(checker.check(&w.body.clone().into()), Verdict::Full);
            assert_eq!(checker.check(&Bytes::from(rounded.clone())), Verdict::Wrong);
            assert_eq!(
                checker.check(&Bytes::from_static(b"{\"in")),
                Verdict::Unparsable
            );
        }
        assert_eq!(checker.seen.lock().unwrap().len(), 3);
    }
}
