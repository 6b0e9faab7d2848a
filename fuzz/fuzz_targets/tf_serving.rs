//! TF Serving engine: no panic; valid in, valid out; only bodies the validating cursor accepts
//! are trimmed (the bit-parallel map index must not vouch for anything else); no feature outside
//! the allowlist survives in any row of a trimmed body; and (bodies without `b64`) the output
//! means exactly the input minus the features the allowlist does not name.
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
    assert!(
        std::str::from_utf8(body).is_ok(),
        "trimmed a body that is not UTF-8"
    );
    let mut cursor = Cursor::new(body);
    let valid = cursor.skip_value().and_then(|()| cursor.end());
    assert!(
        valid.is_ok(),
        "trimmed a body the cursor rejects: {valid:?}"
    );
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
    // `{"b64": ...}` values are left to the unit tests: a map with the key twice is a feature
    // map on the wire but looks like a value once parsed.
    if body.windows(3).any(|w| w == b"b64") {
        return;
    }
    let Ok(mut expected) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let (rows, map) = match shape {
        TfBody::Predict => ("instances", "inputs"),
        TfBody::Examples => ("examples", "context"),
    };
    let mut maps = Vec::new();
    for (key, value) in expected.as_object_mut().into_iter().flatten() {
        if key == map {
            maps.push(value);
        } else if let (true, Value::Array(items)) = (key == rows, value) {
            maps.extend(items.iter_mut());
        }
    }
    for features in maps.into_iter().filter_map(Value::as_object_mut) {
        features.retain(|k, _| allowed.contains(&k.as_str()));
    }
    assert_eq!(out, expected, "kept values changed");
});
