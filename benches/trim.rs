//! Trim engine throughput against serde_json on the same bodies, side by side in one run.
//! Groups are the reference workloads; compare the functions' throughput as ratios:
//! `trimmer` vs `serde_json_validate` (parse to IgnoredAny), `serde_json_value` (parse to a
//! Value, filter, serialise) and `memcpy` (copy the bytes). `lz4_encode` / `lz4_decode` give
//! the link compression's cost on the same body; the compressed size is printed per workload.

use criterion::{black_box, criterion_group, Criterion, Throughput};
use feature_trimmer::bundle::snapshot::Lookup;
use feature_trimmer::bundle::AllowlistSnapshot;
use feature_trimmer::classify::VersionSpec;
use feature_trimmer::config::TrimConfig;
use feature_trimmer::workload::{self, Workload};

fn engine(w: &Workload, snapshot: &AllowlistSnapshot) -> usize {
    let Lookup::Found { entry, .. } = snapshot.lookup(
        workload::MODEL,
        &VersionSpec::Version(workload::VERSION.into()),
    ) else {
        panic!("workload allowlist missing")
    };
    // As the proxy passes it: a thread keeps the answers for short keys from one call to the
    // next, as it does between one model's requests.
    let allowed = snapshot.allowed(&entry.allowlist);
    w.trim(allowed).expect("workloads trim").body.len()
}

/// The straightforward alternative: parse, filter the feature maps, serialise.
fn serde_value(w: &Workload) -> usize {
    let doc = w.serde_filtered().unwrap();
    serde_json::to_vec(&doc).unwrap().len()
}

fn bench(c: &mut Criterion) {
    for w in workload::all() {
        let snapshot = AllowlistSnapshot::build([&w.bundle()], &TrimConfig::default());
        let mut group = c.benchmark_group(w.name);
        group.throughput(Throughput::Bytes(w.body.len() as u64));
        if w.body.len() > 100_000 {
            group.sample_size(20);
        }
        group.bench_function("trimmer", |b| b.iter(|| engine(black_box(&w), &snapshot)));
        group.bench_function("serde_json_validate", |b| {
            let json = &w.body[..w.json_len.unwrap_or(w.body.len())];
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(json)).unwrap())
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| serde_value(black_box(&w)))
        });
        group.bench_function("memcpy", |b| b.iter(|| black_box(&w.body).to_vec()));
        // lz4 on the link: encode the whole body (what a trimmer next to the leaf decodes).
        let encoded = feature_trimmer::compression::encode(&w.body).unwrap();
        eprintln!(
            "{}: {} bytes, lz4 {} bytes ({:.1}%)",
            w.name,
            w.body.len(),
            encoded.len(),
            100.0 * encoded.len() as f64 / w.body.len() as f64
        );
        group.bench_function("lz4_encode", |b| {
            b.iter(|| feature_trimmer::compression::encode(black_box(&w.body)).unwrap())
        });
        group.bench_function("lz4_decode", |b| {
            b.iter(|| feature_trimmer::compression::decode(black_box(&encoded), u64::MAX).unwrap())
        });
        group.finish();
    }
}

/// With `TRIM_ALTERNATE=N`: after the groups, `trimmer` and `serde_json_validate` called
/// alternately on the same body N times, median times and their ratio per workload. Criterion
/// runs one function for seconds, then the other; on a host whose speed drifts over seconds,
/// alternating call by call gives the steadier ratio.
fn alternating(rounds: usize) {
    use std::time::Instant;
    for w in workload::all() {
        let snapshot = AllowlistSnapshot::build([&w.bundle()], &TrimConfig::default());
        let json = &w.body[..w.json_len.unwrap_or(w.body.len())];
        // Small bodies are timed in batches, so the clock's resolution does not matter.
        let batch = (1_000_000 / w.body.len()).max(1);
        let time = |f: &dyn Fn()| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() / batch as f64
        };
        let (mut trimmer, mut validate) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            trimmer.push(time(&|| {
                black_box(engine(black_box(&w), &snapshot));
            }));
            validate.push(time(&|| {
                serde_json::from_slice::<serde::de::IgnoredAny>(black_box(json)).unwrap();
            }));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (t, v) = (median(trimmer), median(validate));
        println!(
            "alternating {}: trimmer {:.1} us, serde_json_validate {:.1} us, ratio {:.2}x ({rounds} rounds)",
            w.name,
            t * 1e6,
            v * 1e6,
            v / t
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let Some(rounds) = std::env::var("TRIM_ALTERNATE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        alternating(rounds);
    }
}
