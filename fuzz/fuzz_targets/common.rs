//! Shared by the engine targets: an allowlist chosen by the first input byte from a small pool
//! of names (so the fuzzer can hit them), and the checks every engine must pass.

use serde_json::Value;

/// Names the fuzzer is likely to produce or find in the dictionary.
pub const POOL: [&str; 8] = ["a", "b", "c", "x", "name", "b64", "inputs", "\u{e9}"];

/// The allowed subset encoded by `bits`.
pub fn allowlist(bits: u8) -> Vec<&'static str> {
    POOL.iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Output is valid JSON whenever the input was (by serde_json's strict reading).
pub fn check_validity(input: &[u8], output: &[u8]) -> Option<Value> {
    let input_valid = serde_json::from_slice::<Value>(input).is_ok();
    let parsed = serde_json::from_slice::<Value>(output);
    if input_valid {
        assert!(
            parsed.is_ok(),
            "valid input became invalid output:\n{:?}\n{:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(output)
        );
    }
    parsed.ok()
}
