//! gRPC wire engine, TF Serving Classify/Regress: tf.Example features: the checks of `grpc.rs`.
#![no_main]

use feature_trimmer::trim::grpc::GrpcBody;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
#[allow(dead_code)]
mod common;
#[path = "grpc.rs"]
mod grpc;

fuzz_target!(|data: &[u8]| {
    let Some((&bits, msg)) = data.split_first() else {
        return;
    };
    grpc::check(GrpcBody::Examples, msg, &common::allowlist(bits));
});
