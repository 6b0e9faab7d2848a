//! A bit-parallel index of one feature map (a JSON object), 64 bytes at a time: byte classes
//! become one bit per byte, strings and arrays become bit regions, and the JSON grammar of the
//! object becomes conditions on those masks, so a member costs a few bit operations instead of
//! a branch per byte and per token. The result is the member boundaries the engine splices by.
//!
//! It vouches only for the common shape: string keys, values that are strings, numbers or flat
//! arrays of them, no backslash anywhere. Everything else (escapes, `true`/`null`/`NaN`, nested
//! containers, one-member maps, errors of any kind) returns `None` and the validating cursor in
//! `json.rs` handles the object from its start, so it alone decides and reports errors.

use super::json::add_carried;

/// One bit per byte of a 64-byte block for each class of byte the index distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Classes {
    quote: u64,
    backslash: u64,
    /// Below 0x20 (includes tab, line feed, carriage return).
    control: u64,
    /// Space, tab, line feed, carriage return.
    space: u64,
    open_brace: u64,
    close_brace: u64,
    open_bracket: u64,
    close_bracket: u64,
    comma: u64,
    colon: u64,
    digit: u64,
    zero: u64,
    dot: u64,
    /// `e` or `E`.
    exp: u64,
    minus: u64,
    plus: u64,
}

/// Member boundaries of the last indexed object, as byte offsets; reused across objects.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// Each key's opening quote.
    pub(super) starts: Vec<u32>,
    /// One past each key's closing quote.
    pub(super) key_ends: Vec<u32>,
    /// One past each member's value.
    pub(super) ends: Vec<u32>,
}

/// Indexes the object whose `{` is at `open`. Returns the offset one past its `}` with
/// `members` filled, or `None` (members unspecified) when the cursor must decide.
pub(super) fn index(bytes: &[u8], open: usize, members: &mut Members) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU supports AVX-512BW, checked just above.
        return unsafe { index_avx512(bytes, open, members) };
    }
    let _ = (bytes, open, members);
    None
}

/// The scan loop, written once for each classifier so the classifier inlines into it.
macro_rules! scan {
    ($bytes:expr, $open:expr, $members:expr, $classify:path) => {{
        let (bytes, open, members): (&[u8], usize, &mut Members) = ($bytes, $open, $members);
        if bytes.len() >= u32::MAX as usize {
            return None;
        }
        members.starts.clear();
        members.key_ends.clear();
        members.ends.clear();
        let mut state = State::new();
        let mut at = open + 1;
        loop {
            let classes = match bytes.get(at..at + 64) {
                Some(block) => $classify(block.try_into().ok()?),
                None => {
                    // Zero padding: a control byte, so a map that does not end before it fails.
                    let tail = bytes.get(at..)?;
                    let mut block = [0u8; 64];
                    block[..tail.len()].copy_from_slice(tail);
                    $classify(&block)
                }
            };
            match state.step(&classes, at as u32, members) {
                Step::More => at += 64,
                Step::End(end) => break finish(members, at + end),
                Step::Bail => break None,
            }
            if at >= bytes.len() {
                break None;
            }
        }
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
unsafe fn index_avx512(bytes: &[u8], open: usize, members: &mut Members) -> Option<usize> {
    scan!(bytes, open, members, classify_avx512)
}

/// The reference scan with the bytewise classifier (tests compare the two classifiers).
#[cfg(test)]
fn index_bytewise(bytes: &[u8], open: usize, members: &mut Members) -> Option<usize> {
    scan!(bytes, open, members, classify_bytewise)
}

/// Checks the member lists agree; at least two members (a single `{"b64": ...}` member is a
/// value, not a map, which the cursor tells apart).
fn finish(members: &Members, end: usize) -> Option<usize> {
    let n = members.starts.len();
    (n >= 2 && members.key_ends.len() == n && members.ends.len() == n).then_some(end + 1)
}

/// Classifies a block byte by byte: the reference for the vector classifier.
#[cfg(test)]
fn classify_bytewise(block: &[u8; 64]) -> Classes {
    let mut k = Classes::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        let class = match b {
            b'"' => Some(&mut k.quote),
            b'\\' => Some(&mut k.backslash),
            b'{' => Some(&mut k.open_brace),
            b'}' => Some(&mut k.close_brace),
            b'[' => Some(&mut k.open_bracket),
            b']' => Some(&mut k.close_bracket),
            b',' => Some(&mut k.comma),
            b':' => Some(&mut k.colon),
            b'0'..=b'9' => Some(&mut k.digit),
            b'.' => Some(&mut k.dot),
            b'e' | b'E' => Some(&mut k.exp),
            b'-' => Some(&mut k.minus),
            b'+' => Some(&mut k.plus),
            b' ' | b'\t' | b'\n' | b'\r' => Some(&mut k.space),
            _ => None,
        };
        if let Some(class) = class {
            *class |= bit;
        }
        if b < 0x20 {
            k.control |= bit;
        }
        if b == b'0' {
            k.zero |= bit;
        }
    }
    k
}

/// Classifies a block with AVX-512BW compares, one mask register per class.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
#[inline]
unsafe fn classify_avx512(block: &[u8; 64]) -> Classes {
    use std::arch::x86_64::{
        _mm512_cmpeq_epi8_mask, _mm512_cmplt_epu8_mask, _mm512_loadu_si512, _mm512_or_si512,
        _mm512_set1_epi8, _mm512_sub_epi8,
    };
    // SAFETY (for the whole body): `block` is 64 readable bytes; the rest are register ops.
    let v = _mm512_loadu_si512(block.as_ptr().cast());
    macro_rules! eq {
        ($b:expr) => {
            _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8($b as i8))
        };
    }
    Classes {
        quote: eq!(b'"'),
        backslash: eq!(b'\\'),
        control: _mm512_cmplt_epu8_mask(v, _mm512_set1_epi8(0x20)),
        space: eq!(b' ') | eq!(b'\t') | eq!(b'\n') | eq!(b'\r'),
        open_brace: eq!(b'{'),
        close_brace: eq!(b'}'),
        open_bracket: eq!(b'['),
        close_bracket: eq!(b']'),
        comma: eq!(b','),
        colon: eq!(b':'),
        digit: _mm512_cmplt_epu8_mask(
            _mm512_sub_epi8(v, _mm512_set1_epi8(b'0' as i8)),
            _mm512_set1_epi8(10),
        ),
        zero: eq!(b'0'),
        dot: eq!(b'.'),
        exp: _mm512_cmpeq_epi8_mask(
            _mm512_or_si512(v, _mm512_set1_epi8(0x20)),
            _mm512_set1_epi8(b'e' as i8),
        ),
        minus: eq!(b'-'),
        plus: eq!(b'+'),
    }
}

/// Bit `i` set where bit `i` of `x` is the parity of bits `0..=i`.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// `x` shifted one byte later, with the previous block's last bit shifted in.
#[derive(Default)]
struct Prev(u64);

impl Prev {
    #[inline(always)]
    fn of(&mut self, x: u64) -> u64 {
        let shifted = (x << 1) | self.0;
        self.0 = x >> 63;
        shifted
    }
}

/// The first significant byte after each byte of a class: the next byte, or the first byte
/// past the run of whitespace that follows.
#[derive(Default)]
struct After {
    prev: Prev,
    carry: bool,
}

impl After {
    #[inline(always)]
    fn of(&mut self, x: u64, space: u64) -> u64 {
        // A seed inside whitespace is always at the start of its run (it follows a
        // significant byte), so the sum carries it to the first byte past the run.
        add_carried(space, self.prev.of(x), &mut self.carry) & !space
    }
}

/// What one block told.
enum Step {
    More,
    /// The object's `}` is at this offset in the block.
    End(usize),
    Bail,
}

/// Everything carried from one block to the next.
#[derive(Default)]
struct State {
    /// All ones while inside a string (or an array) at the end of the previous block.
    in_string: u64,
    in_array: u64,
    key_close_carry: bool,
    past_exp_carry: bool,
    past_dot_carry: bool,
    token: Prev,
    digit: Prev,
    exp: Prev,
    dot: Prev,
    sign: Prev,
    minus_start: Prev,
    lead: Prev,
    value_end: Prev,
    after_key_start: After,
    after_key_close: After,
    after_colon: After,
    after_value: After,
    after_open_bracket: After,
    after_element_comma: After,
}

impl State {
    fn new() -> Self {
        let mut state = State::default();
        // The object's `{` precedes the first block: its successor must be a key.
        state.after_key_start.prev.0 = 1;
        state
    }

    /// Checks one block and records the member boundaries in it; `base` is its offset.
    #[inline(always)]
    fn step(&mut self, k: &Classes, base: u32, members: &mut Members) -> Step {
        // Strings: with no backslash, quotes alternate open and close.
        let in_string = prefix_xor(k.quote) ^ self.in_string;
        self.in_string = 0u64.wrapping_sub(in_string >> 63);
        let open_quote = k.quote & in_string;
        let close_quote = k.quote & !in_string;
        let outside = !(in_string | k.quote);
        let space = k.space & outside;
        let close_brace = k.close_brace & outside;
        let open_bracket = k.open_bracket & outside;
        let close_bracket = k.close_bracket & outside;
        // Arrays: with no nesting, brackets alternate open and close (checked below).
        let in_array = prefix_xor(open_bracket | close_bracket) ^ self.in_array;
        self.in_array = 0u64.wrapping_sub(in_array >> 63);
        let end = close_brace & close_brace.wrapping_neg();
        let live = if end == 0 { !0 } else { end | (end - 1) };
        let comma = k.comma & outside;
        let colon = k.colon & outside;
        let [digit, dot, exp, minus, plus] =
            [k.digit, k.dot, k.exp, k.minus, k.plus].map(|x| x & outside);
        let token = digit | dot | exp | minus | plus;

        let mut bad = k.backslash
            | (k.control & !space)
            | (k.open_brace & outside)
            | (outside
                & !(space | comma | colon | open_bracket | close_bracket | close_brace | token))
            | (open_bracket & !in_array)
            | (close_bracket & in_array)
            | (end & in_array);

        // The sequence of tokens: each kind constrains the next significant byte.
        let prev_token = self.token.of(token);
        let continued = token & prev_token;
        let starts = token & !prev_token;
        let key = self.after_key_start.of(comma & !in_array, space);
        bad |= key & !open_quote;
        let key_close = add_carried(in_string, key, &mut self.key_close_carry) & !in_string;
        let after_key = self.after_key_close.of(key_close, space);
        bad |= after_key & !colon;
        bad |= self.after_colon.of(colon, space) & !(open_quote | starts | open_bracket);
        let value_close = (close_quote & !key_close) | close_bracket | token;
        bad |= self.after_value.of(value_close, space)
            & !continued
            & !(comma | close_bracket | close_brace);
        bad |= self.after_open_bracket.of(open_bracket, space)
            & !(open_quote | starts | close_bracket);
        bad |= self.after_element_comma.of(comma & in_array, space) & !(open_quote | starts);

        // Numbers: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` as conditions on each run.
        let sign = minus | plus;
        let prev_digit = self.digit.of(digit);
        let prev_exp = self.exp.of(exp);
        let prev_dot = self.dot.of(dot);
        let minus_start = minus & starts;
        let lead = k.zero & outside & (starts | self.minus_start.of(minus_start));
        let past_exp =
            (add_carried(token, prev_exp & token, &mut self.past_exp_carry) ^ token) & token;
        let past_dot =
            (add_carried(token, prev_dot & token, &mut self.past_dot_carry) ^ token) & token;
        bad |= (starts & !(digit | minus))
            | (minus & !(starts | prev_exp))
            | (plus & !prev_exp)
            | (self.sign.of(sign) & !digit)
            | (prev_exp & !(digit | sign))
            | ((exp | dot) & !prev_digit)
            | (prev_dot & !digit)
            | (self.lead.of(lead) & digit)
            | ((dot | exp) & past_exp)
            | (dot & past_dot)
            | (prev_token & !token & !prev_digit);
        if bad & live != 0 {
            return Step::Bail;
        }

        // Member boundaries: key quotes, and one past each value at the object's level.
        let value_end = self
            .value_end
            .of((close_quote & !key_close & !in_array) | close_bracket | (token & !in_array))
            & !continued;
        push_bits(&mut members.starts, key & live, base);
        push_bits(&mut members.key_ends, key_close & live, base + 1);
        push_bits(&mut members.ends, value_end & live, base);
        if end == 0 {
            Step::More
        } else {
            Step::End(end.trailing_zeros() as usize)
        }
    }
}

/// Appends `base + i` for each set bit `i` of `bits`.
#[inline(always)]
fn push_bits(out: &mut Vec<u32>, mut bits: u64, base: u32) {
    while bits != 0 {
        out.push(base + bits.trailing_zeros());
        bits &= bits - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::json::Cursor;
    use super::*;
    use proptest::prelude::*;

    /// Each member's key start, key end and value end, and one past the object.
    type Spans = (Vec<(u32, u32, u32)>, usize);

    /// The members of the object at 0 as the validating cursor sees them (the reference).
    fn reference(text: &str) -> Option<Spans> {
        let mut c = Cursor::new(text);
        c.expect(b'{', "{").ok()?;
        let mut members = Vec::new();
        if c.empty_container(b'}') {
            return Some((members, c.pos));
        }
        loop {
            c.ws();
            let start = c.pos;
            let key = c.key().ok()?;
            c.skip_value().ok()?;
            members.push((start as u32, key.end as u32, c.pos as u32));
            if !c.next_or_close(b'}').ok()? {
                return Some((members, c.pos));
            }
        }
    }

    fn indexed(
        text: &str,
        index: fn(&[u8], usize, &mut Members) -> Option<usize>,
    ) -> Option<Spans> {
        let mut m = Members::default();
        let end = index(text.as_bytes(), 0, &mut m)?;
        let members = m
            .starts
            .iter()
            .zip(&m.key_ends)
            .zip(&m.ends)
            .map(|((&s, &k), &e)| (s, k, e))
            .collect();
        Some((members, end))
    }

    /// Checks the index against the cursor: whatever it vouches for, the cursor agrees with
    /// member for member. Returns whether it vouched.
    fn agrees(text: &str) -> bool {
        let Some(got) = indexed(text, index_bytewise) else {
            return false;
        };
        assert_eq!(Some(&got), reference(text).as_ref(), "{text:?}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            assert_eq!(
                indexed(text, |b, o, m| unsafe { index_avx512(b, o, m) }),
                Some(got),
                "{text:?}"
            );
        }
        true
    }

    /// JSON-ish fragments, valid and not, that a feature map's bytes are made of; mostly ones
    /// the index vouches for, so that whole maps of them are common.
    fn piece() -> impl Strategy<Value = String> {
        const VOUCHED_PIECES: &[&str] = &[
            "0",
            "-0",
            "0.5",
            "-12.25e+3",
            "1E-7",
            "0.1234567890123456789",
            "123456789012345678901234567890",
            "\"v12\"",
            "\"\"",
            "\"é ü {}[],:\"",
            "[1,2,3]",
            "[ 1 , -2.5 ]",
            "[\"a\",\"b\"]",
        ];
        const CURSOR_PIECES: &[&str] = &[
            "[]",
            "true",
            "null",
            "NaN",
            "-Infinity",
            "\"a\\\"b\"",
            "{\"x\":1}",
            "[[1],[2]]",
            "{\"b64\":\"aGk=\"}",
        ];
        const INVALID_PIECES: &[&str] = &[
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "--1",
            "+1",
            "1.2.3",
            "1e2e3",
            "1e2.3",
            "1-2",
            "1+2",
            "2e3-1",
            "[1,]",
            "[,1]",
            "[1 2]",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "\"open",
            "e5",
            "]",
            "[",
            "-",
            "0x1",
            "",
            "[1",
            "[\"a\"",
        ];
        prop_oneof![
            30 => prop::sample::select(VOUCHED_PIECES),
            1 => prop::sample::select(CURSOR_PIECES),
            1 => prop::sample::select(INVALID_PIECES),
        ]
        .prop_map(str::to_string)
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop_oneof![4 => Just(""), 2 => Just(" "), 1 => Just("\n  "), 1 => Just("\t"),
            1 => Just("                                                                 ")]
    }

    /// A feature map: mostly well-formed, sometimes with a structural mistake.
    fn map() -> impl Strategy<Value = String> {
        let member = (
            "[a-z_é0-9]{0,70}",
            space(),
            space(),
            piece(),
            space(),
            0..120u8,
        );
        (prop::collection::vec(member, 0..12), space(), 0..40u8).prop_map(
            |(members, lead, flaw)| {
                let mut text = format!("{{{lead}");
                for (i, (key, s1, s2, value, s3, mistake)) in members.iter().enumerate() {
                    if i > 0 {
                        text.push_str(match mistake {
                            0 => "",
                            1 => ",,",
                            2 => ":",
                            _ => ",",
                        });
                    }
                    let colon = if *mistake == 3 { "" } else { ":" };
                    let quote = if *mistake == 4 { "" } else { "\"" };
                    text.push_str(&format!("{s1}\"{key}{quote}{s2}{colon}{s1}{value}{s3}"));
                }
                text.push_str(match flaw {
                    0 => "",
                    1 => ",}",
                    2 => "]}",
                    _ => "}",
                });
                // Whatever follows the map must not matter.
                text.push_str(",{\"x\":\u{1}} trailing");
                text
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn the_index_agrees_with_the_cursor(text in map()) {
            agrees(&text);
        }

        #[test]
        fn the_index_vouches_for_plain_maps(
            members in prop::collection::vec(("[a-z_0-9]{1,40}", 0..7usize, space()), 2..60)
        ) {
            let values = ["0.5361077059432864", "\"v7\"", "[12,3,99]", "-1e-3", "[\"a\", \"b\"]", "7", "\"\""];
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, s)| format!("\"{k}\"{s}:{s}{}{s}", values[*v]))
                .collect();
            let text = format!("{{{}}}", body.join(", "));
            prop_assert!(agrees(&text), "not indexed: {}", text);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_classifier_matches_the_bytewise_one() {
        if !std::arch::is_x86_feature_detected!("avx512bw") {
            eprintln!("no AVX-512BW on this CPU: only the bytewise classifier is tested");
            return;
        }
        let mut rng = crate::workload::Lcg(3);
        let mut block = [0u8; 64];
        for round in 0..20_000 {
            for b in block.iter_mut() {
                // Every byte value, with JSON's own bytes more often.
                *b = match rng.next() % 3 {
                    0 => rng.next() as u8,
                    _ => {
                        let json = b"\"\\{}[],:0123456789.eE+- \t\n\rxa";
                        json[rng.next() as usize % json.len()]
                    }
                };
            }
            let got = unsafe { classify_avx512(&block) };
            assert_eq!(got, classify_bytewise(&block), "round {round}: {block:?}");
        }
    }

    #[test]
    fn indexes_every_row_of_the_reference_workload() {
        let w = crate::workload::tfs_rows();
        let mut m = Members::default();
        let mut pos = w.body.iter().position(|&b| b == b'[').unwrap() + 1;
        let mut rows = 0;
        while w.body[pos] == b'{' {
            let end = index_bytewise(&w.body, pos, &mut m).expect("row indexed");
            assert_eq!(m.starts.len(), 1000);
            rows += 1;
            pos = end + 1;
        }
        assert_eq!(rows, 64);
    }
}
