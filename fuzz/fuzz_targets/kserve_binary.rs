//! Triton binary engine: no panic; the reported JSON length and the kept tensor bytes add up to
//! the body; the JSON part is valid whenever the input's was.
#![no_main]

use feature_trimmer::trim::kserve::trim_binary;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let bits = data[0];
    let json_len = u16::from_le_bytes([data[1], data[2]]) as usize;
    let body = &data[3..];
    let allowed = common::allowlist(bits);
    let Ok(trimmed) = trim_binary(body, json_len, |k: &str| allowed.contains(&k)) else {
        return;
    };
    let new_len = trimmed
        .json_len
        .expect("binary results carry the JSON length");
    assert!(new_len <= trimmed.body.len());
    assert!(
        trimmed.body.len() <= body.len(),
        "trimming never grows a body"
    );
    let tail = &trimmed.body[new_len..];
    // Kept tensor bytes are a subsequence of the original binary section, in order.
    let original = &body[json_len..];
    let mut at = 0;
    for &b in tail {
        at += original[at..]
            .iter()
            .position(|&o| o == b)
            .expect("kept bytes come from the input")
            + 1;
    }
    common::check_validity(&body[..json_len], &trimmed.body[..new_len]);
});
