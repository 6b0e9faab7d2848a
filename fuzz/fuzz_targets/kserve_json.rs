//! KServe V2 JSON engine: no panic; valid in, valid out; every surviving input is allowed.
#![no_main]

use feature_trimmer::trim::kserve::trim_json;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&bits, body)) = data.split_first() else {
        return;
    };
    let allowed = common::allowlist(bits);
    let Ok(trimmed) = trim_json(body, |k: &str| allowed.contains(&k)) else {
        return;
    };
    assert!(
        std::str::from_utf8(body).is_ok(),
        "trimmed a body that is not UTF-8"
    );
    let Some(out) = common::check_validity(body, &trimmed.body) else {
        return;
    };
    for input in out
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = input.get("name").and_then(Value::as_str) {
            assert!(allowed.contains(&name), "input `{name}` survived");
        }
    }
});
