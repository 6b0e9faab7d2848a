//! Trim engine throughput against serde_json on the same bodies, side by side in one run.
//! Groups are the reference workloads; compare the functions' throughput as ratios:
//! `trimmer` vs `serde_json_validate` (parse to IgnoredAny), `serde_json_value` (parse to a
//! Value, filter, serialise) and `memcpy` (copy the bytes). `lz4_encode` / `lz4_decode` give
//! the link compression's cost on the same body; the compressed size is printed per workload.
//! The gRPC groups (`tfs-grpc`, `kserve-grpc`) compare `trimmer` with `prost_round_trip`
//! (decode with prost, filter, encode) and `memcpy`.

use criterion::{black_box, criterion_group, Criterion, Throughput};
use feature_trimmer::bundle::snapshot::Lookup;
use feature_trimmer::bundle::AllowlistSnapshot;
use feature_trimmer::classify::VersionSpec;
use feature_trimmer::config::TrimConfig;
use feature_trimmer::trim::Allowed;
use feature_trimmer::workload::{self, Workload};

// Not inlined, here and in `serde_validate`: callgrind reports each function's instructions alone.
#[inline(never)]
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

/// What the ratios are against: serde_json parsing to `IgnoredAny` (validation, nothing built).
#[inline(never)]
fn serde_validate(json: &[u8]) {
    serde_json::from_slice::<serde::de::IgnoredAny>(json).unwrap();
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
            b.iter(|| serde_validate(black_box(json)))
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
/// alternating call by call gives the steadier ratio. `TRIM_ONLY=name` runs one workload (for
/// `valgrind --tool=callgrind`, whose instruction counts are steady where times are not).
/// `TRIM_VARY=N` times `small` over N bodies of its shape, one after the other, instead of
/// replaying one: both parsers' branches are then predicted as well as a server's are.
fn alternating(rounds: usize) {
    use std::time::Instant;
    for w in workload::all().into_iter().filter(only) {
        let snapshot = AllowlistSnapshot::build([&w.bundle()], &TrimConfig::default());
        // Small bodies are timed in batches, so the clock's resolution does not matter.
        let batch = (1_000_000 / w.body.len()).max(1);
        let time = |f: &dyn Fn()| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() / batch as f64
        };
        let vary = std::env::var("TRIM_VARY").ok().and_then(|n| n.parse().ok());
        let varied: Vec<Workload> = match vary {
            Some(n) if w.name == "small" => (1..=n).map(workload::small_varied).collect(),
            _ => Vec::new(),
        };
        // Each workload with its JSON; each function goes through them in the same order.
        fn json(w: &Workload) -> &[u8] {
            &w.body[..w.json_len.unwrap_or(w.body.len())]
        }
        let bodies: Vec<(&Workload, &[u8])> = if varied.is_empty() {
            vec![(&w, json(&w))]
        } else {
            varied.iter().map(|v| (v, json(v))).collect()
        };
        let turn = |next: &std::cell::Cell<usize>| {
            let i = next.get();
            next.set(if i + 1 == bodies.len() { 0 } else { i + 1 });
            &bodies[i]
        };
        let (next_trim, next_validate) = Default::default();
        let (mut trimmer, mut validate) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            trimmer.push(time(&|| {
                black_box(engine(black_box(turn(&next_trim).0), &snapshot));
            }));
            validate.push(time(&|| {
                serde_validate(black_box(turn(&next_validate).1));
            }));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (t, v) = (median(trimmer), median(validate));
        println!(
            "alternating {}: trimmer {:.2} us, serde_json_validate {:.2} us, ratio {:.2}x ({rounds} rounds)",
            w.name,
            t * 1e6,
            v * 1e6,
            v / t
        );
    }
}

/// The prost messages of the gRPC workloads, with the fields they use (from the field numbers
/// in PROTOCOLS.md), as generated code would declare them.
mod pb {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Int64Value {
        #[prost(int64, tag = "1")]
        pub value: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelSpec {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub version: Option<Int64Value>,
        #[prost(string, tag = "3")]
        pub signature_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dim {
        #[prost(int64, tag = "1")]
        pub size: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShape {
        #[prost(message, repeated, tag = "2")]
        pub dim: Vec<Dim>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int32, tag = "1")]
        pub dtype: i32,
        #[prost(message, optional, tag = "2")]
        pub tensor_shape: Option<TensorShape>,
        #[prost(float, repeated, tag = "5")]
        pub float_val: Vec<f32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PredictRequest {
        #[prost(message, optional, tag = "1")]
        pub model_spec: Option<ModelSpec>,
        #[prost(map = "string, message", tag = "2")]
        pub inputs: HashMap<String, TensorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferInputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestedOutput {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferInputTensor>,
        #[prost(message, repeated, tag = "6")]
        pub outputs: Vec<RequestedOutput>,
        #[prost(bytes = "vec", repeated, tag = "7")]
        pub raw_input_contents: Vec<Vec<u8>>,
    }
}

/// The straightforward alternative for gRPC: decode with prost, filter (asking the same
/// allowlist as the trimmer), encode.
fn prost_round_trip(w: &Workload, snapshot: &AllowlistSnapshot) -> usize {
    use prost::Message;
    let Lookup::Found { entry, .. } = snapshot.lookup(
        workload::MODEL,
        &VersionSpec::Version(workload::VERSION.into()),
    ) else {
        panic!("workload allowlist missing")
    };
    let list = snapshot.allowed(&entry.allowlist);
    let allowed = |k: &str| list.allows(k);
    if w.path == workload::TFS_PREDICT {
        let mut req = pb::PredictRequest::decode(&w.body[..]).unwrap();
        req.inputs.retain(|k, _| allowed(k));
        req.encode_to_vec().len()
    } else {
        let mut req = pb::ModelInferRequest::decode(&w.body[..]).unwrap();
        // Every input of the workload owns a raw entry.
        let keep: Vec<bool> = req.inputs.iter().map(|i| allowed(&i.name)).collect();
        let mut k = keep.iter();
        req.raw_input_contents.retain(|_| *k.next().unwrap());
        req.inputs.retain(|i| allowed(&i.name));
        req.encode_to_vec().len()
    }
}

fn bench_grpc(c: &mut Criterion) {
    for w in workload::grpc_all() {
        let snapshot = AllowlistSnapshot::build([&w.bundle()], &TrimConfig::default());
        let mut group = c.benchmark_group(w.name);
        group.throughput(Throughput::Bytes(w.body.len() as u64));
        group.bench_function("trimmer", |b| b.iter(|| engine(black_box(&w), &snapshot)));
        group.bench_function("prost_round_trip", |b| {
            b.iter(|| prost_round_trip(black_box(&w), &snapshot))
        });
        group.bench_function("memcpy", |b| b.iter(|| black_box(&w.body).to_vec()));
        group.finish();
    }
}

/// With `TRIM_ALTERNATE=N`: the gRPC groups' three functions called in turn N times, median
/// times and the ratios the targets are stated in.
fn alternating_grpc(rounds: usize) {
    use std::time::Instant;
    for w in workload::grpc_all().into_iter().filter(only) {
        let snapshot = AllowlistSnapshot::build([&w.bundle()], &TrimConfig::default());
        let time = |f: &dyn Fn()| {
            let start = Instant::now();
            for _ in 0..20 {
                f();
            }
            start.elapsed().as_secs_f64() / 20.0
        };
        let (mut trimmer, mut prost, mut memcpy) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            trimmer.push(time(&|| {
                black_box(engine(black_box(&w), &snapshot));
            }));
            prost.push(time(&|| {
                black_box(prost_round_trip(black_box(&w), &snapshot));
            }));
            memcpy.push(time(&|| {
                black_box(black_box(&w.body).to_vec());
            }));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (t, p, m) = (median(trimmer), median(prost), median(memcpy));
        println!(
            "alternating {}: trimmer {:.1} us, prost_round_trip {:.1} us ({:.1}x), memcpy {:.1} us (trimmer at {:.2}x memcpy's throughput) ({rounds} rounds)",
            w.name,
            t * 1e6,
            p * 1e6,
            p / t,
            m * 1e6,
            m / t
        );
    }
}

/// Whether `TRIM_ONLY` (unset: every workload) names this workload.
fn only(w: &Workload) -> bool {
    std::env::var("TRIM_ONLY").map_or(true, |name| name == w.name)
}

criterion_group!(benches, bench, bench_grpc);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let Some(rounds) = std::env::var("TRIM_ALTERNATE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        alternating(rounds);
        alternating_grpc(rounds);
    }
}
