//! Which vector instructions this process may run, detected once: the proofs that the
//! engines' `#[target_feature]` code (the map index of `rows.rs`, the number arrays of
//! `json.rs`) takes before it runs. The private fields leave `detect` the only way to make
//! one, so every value that holds one and every call that takes one may run them.

use std::sync::LazyLock;

/// Proof that this process may run AVX-512BW, POPCNT and BMI1 instructions: the CPU has them,
/// and `TRIMMER_AVX512=off` does not turn them off.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx512 {
    _detected: (),
}

impl Avx512 {
    /// The proof, if this process has it; detected once.
    #[inline]
    pub(super) fn get() -> Option<Avx512> {
        static DETECTED: LazyLock<Option<Avx512>> = LazyLock::new(Avx512::detect);
        *DETECTED
    }

    fn detect() -> Option<Avx512> {
        let allowed = std::env::var("TRIMMER_AVX512").map_or(true, |v| v != "off");
        let present = is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("popcnt")
            && is_x86_feature_detected!("bmi1");
        (allowed && present).then_some(Avx512 { _detected: () })
    }

    /// [`Avx512::get`] for a test that compares the vector code with a reference; see
    /// [`say_skipped`].
    #[cfg(test)]
    pub(super) fn or_say_why() -> Option<Avx512> {
        static SAID: std::sync::Once = std::sync::Once::new();
        let cpu = Avx512::get();
        if cpu.is_none() {
            SAID.call_once(|| say_skipped("AVX-512BW/POPCNT/BMI1", "TRIMMER_AVX512=off"));
        }
        cpu
    }
}

/// Proof that this process may run AVX2, PCLMULQDQ, POPCNT and BMI1 instructions: the CPU has
/// them, and `TRIMMER_AVX2=off` does not turn them off.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// The proof, if this process has it; detected once.
    #[inline]
    pub(super) fn get() -> Option<Avx2> {
        static DETECTED: LazyLock<Option<Avx2>> = LazyLock::new(Avx2::detect);
        *DETECTED
    }

    fn detect() -> Option<Avx2> {
        let allowed = std::env::var("TRIMMER_AVX2").map_or(true, |v| v != "off");
        let present = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("pclmulqdq")
            && is_x86_feature_detected!("popcnt")
            && is_x86_feature_detected!("bmi1");
        (allowed && present).then_some(Avx2 { _detected: () })
    }

    /// [`Avx2::get`] for a test that compares the vector code with a reference; see
    /// [`say_skipped`].
    #[cfg(test)]
    pub(super) fn or_say_why() -> Option<Avx2> {
        static SAID: std::sync::Once = std::sync::Once::new();
        let cpu = Avx2::get();
        if cpu.is_none() {
            SAID.call_once(|| say_skipped("AVX2/PCLMULQDQ/POPCNT/BMI1", "TRIMMER_AVX2=off"));
        }
        cpu
    }
}

/// Says, once per process and past the test harness's output capture, that the tests do not
/// compare some vector code with its reference: a skipped comparison must not look like a
/// passed one.
#[cfg(test)]
fn say_skipped(features: &str, switch: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED in trim tests: the {features} code is not compared with its reference (not on \
         this CPU, or {switch})"
    );
}
