//! TF Serving engine: no panic; valid in, valid out; only bodies the validating cursor accepts
//! are trimmed (the bit-parallel map index must not vouch for anything else); no feature outside
//! the allowlist survives in any row of a trimmed body.
#![no_main]

use feature_trimmer::trim::json::Cursor;
use feature_trimmer::trim::tf_serving::{trim, TfBody};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&bits, body)) = data.split_first() else {
        return;
    };
    let allowed = common::allowlist(bits);
    let shape = if bits & 1 == 0 {
        TfBody::Predict
    } else {
        TfBody::Examples
    };
    let Ok(trimmed) = trim(body, shape, |k: &str| allowed.contains(&k)) else {
        return;
    };
    let text = std::str::from_utf8(body).expect("a trimmed body is UTF-8");
    let mut cursor = Cursor::new(text);
    let valid = cursor.skip_value().and_then(|()| cursor.end());
    assert!(valid.is_ok(), "trimmed a body the cursor rejects: {valid:?}");
    let Some(out) = common::check_validity(body, &trimmed.body) else {
        return;
    };
    let rows = match shape {
        TfBody::Predict => out.get("instances"),
        TfBody::Examples => out.get("examples"),
    };
    for row in rows.and_then(Value::as_array).into_iter().flatten() {
        if let Some(map) = row.as_object() {
            if map.len() == 1 && map.contains_key("b64") {
                continue;
            }
            for key in map.keys() {
                assert!(allowed.contains(&key.as_str()), "`{key}` survived");
            }
        }
    }
});
