//! The JSON scanning core shared by the engines: a cursor over the body that validates as it
//! goes and reports byte offsets, so engines copy kept bytes instead of re-serialising them.
//! Nesting is tracked on an explicit stack, never by recursion, so a deeply nested value cannot
//! overflow the thread's stack. Accepts TF Serving's `NaN`, `Infinity` and `-Infinity` tokens.
//! Also the bit-parallel grammar of JSON numbers, shared by the cursor's number-array validator
//! and the map index in `rows.rs`.

#[cfg(target_arch = "x86_64")]
use super::cpu::Avx2;

/// Why a body is not JSON the trimmer understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset where scanning stopped.
    pub offset: usize,
    /// What was expected there.
    pub expected: &'static str,
}

/// Result of a scanning step.
pub type Scan<T> = Result<T, SyntaxError>;

/// A string's position: `start` is the opening quote, `end` one past the closing quote.
#[derive(Debug, Clone, Copy)]
pub struct StrSpan {
    /// Offset of the opening quote.
    pub start: usize,
    /// Offset one past the closing quote.
    pub end: usize,
    /// The content contains at least one backslash escape.
    pub escaped: bool,
}

/// Bytes that end a run of plain string content: `"`, `\\` and control characters.
const STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// A validating cursor over a JSON document. UTF-8 is checked where it can be broken: a byte
/// above 0x7F is valid only inside a string, so the bytes from the first string that has one
/// are checked in one pass by [`Cursor::end`], and the body needs no pass of its own. The
/// document is valid only once `end` returns `Ok`.
pub struct Cursor<'a> {
    /// The whole document.
    pub bytes: &'a [u8],
    /// Current offset.
    pub pos: usize,
    /// Open containers (their closing bracket) while skipping a value; reused across values.
    stack: Vec<u8>,
    /// Where the first string content (or indexed map) with a byte above 0x7F starts, not yet
    /// checked to be UTF-8 (`usize::MAX`: none).
    unchecked: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor {
            bytes,
            pos: 0,
            stack: Vec::new(),
            unchecked: usize::MAX,
        }
    }

    fn fail<T>(&self, expected: &'static str) -> Scan<T> {
        Err(SyntaxError {
            offset: self.pos,
            expected,
        })
    }

    /// Skips insignificant whitespace.
    #[inline(always)]
    pub fn ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if b > b' ' || !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, without consuming it.
    #[inline(always)]
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `byte` (after whitespace) or fails.
    #[inline]
    pub fn expect(&mut self, byte: u8, expected: &'static str) -> Scan<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    /// After `{` or `[` was consumed: true when the container is empty (its closing bracket is
    /// consumed too).
    #[inline]
    pub fn empty_container(&mut self, close: u8) -> bool {
        if self.peek() == Some(close) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// After a member or element: consumes `,` (true, more follow) or `close` (false).
    #[inline(always)]
    pub fn next_or_close(&mut self, close: u8) -> Scan<bool> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => self.fail(if close == b'}' {
                "`,` or `}`"
            } else {
                "`,` or `]`"
            }),
        }
    }

    /// Reads an object key and its colon; the cursor is left at the value.
    #[inline(always)]
    pub fn key(&mut self) -> Scan<StrSpan> {
        if self.peek() != Some(b'"') {
            return self.fail("a string key");
        }
        let key = self.string()?;
        self.expect(b':', "`:`")?;
        self.ws();
        Ok(key)
    }

    /// Reads a string starting at the cursor (which must be on `"`), validating escapes and
    /// rejecting raw control characters; UTF-8 is left to [`Cursor::end`].
    #[inline(always)]
    pub fn string(&mut self) -> Scan<StrSpan> {
        let start = self.pos;
        let mut pos = self.pos + 1;
        let (mut escaped, mut high) = (false, false);
        loop {
            let (stop, seen) = string_stop(self.bytes, pos);
            (pos, high) = (stop, high | seen);
            match self.bytes.get(pos) {
                Some(b'"') => {
                    if high {
                        self.unchecked_from(start + 1);
                    }
                    self.pos = pos + 1;
                    return Ok(StrSpan {
                        start,
                        end: self.pos,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.bytes.get(pos + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => pos += 2,
                        Some(b'u') => {
                            let hex = self.bytes.get(pos + 2..pos + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                self.pos = pos;
                                return self.fail("four hex digits after \\u");
                            }
                            pos += 6;
                        }
                        _ => {
                            self.pos = pos;
                            return self.fail("a valid escape");
                        }
                    }
                }
                Some(_) => {
                    self.pos = pos;
                    return self.fail("no control characters in strings");
                }
                None => {
                    self.pos = pos;
                    return self.fail("the end of a string");
                }
            }
        }
    }

    /// Skips one complete value of any depth, validating it.
    pub fn skip_value(&mut self) -> Scan<()> {
        // Scalars and arrays of scalars (most values) never touch the stack.
        match self.peek() {
            Some(b'"') => return self.string().map(|_| ()),
            Some(b'[') => {
                if let Some(done) = self.flat_array() {
                    return done;
                }
            }
            Some(b'{') => {}
            Some(_) => return self.scalar(),
            None => return self.fail("a value"),
        }
        let base = self.stack.len();
        loop {
            // A value starts here.
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    if !self.empty_container(b'}') {
                        self.stack.push(b'}');
                        self.key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    if !self.empty_container(b']') {
                        self.stack.push(b']');
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(_) => self.scalar()?,
                None => return self.fail("a value"),
            }
            // A value ended: close containers until one continues.
            loop {
                let Some(&close) = self
                    .stack
                    .get(self.stack.len().wrapping_sub(1))
                    .filter(|_| self.stack.len() > base)
                else {
                    return Ok(());
                };
                if self.next_or_close(close)? {
                    if close == b'}' {
                        self.key()?;
                    }
                    break;
                }
                self.stack.pop();
            }
        }
    }

    /// Skips an array at the cursor if it holds only scalars; `None` (cursor unmoved) when it
    /// holds a container, for the general path to take over.
    #[inline(always)]
    fn flat_array(&mut self) -> Option<Scan<()>> {
        let start = self.pos;
        self.pos += 1;
        if self.empty_container(b']') {
            return Some(Ok(()));
        }
        let mut numbers = 0;
        loop {
            // A long array of numbers (tensor data) is validated in blocks once it looks like one.
            if numbers == 4 {
                if let Some(end) = number_array_rest(self.bytes, self.pos) {
                    self.pos = end;
                    return Some(Ok(()));
                }
            }
            let step = match self.peek() {
                Some(b'[' | b'{') => {
                    self.pos = start;
                    return None;
                }
                Some(b'"') => self.string().map(|_| ()),
                Some(b'0'..=b'9' | b'-') => {
                    numbers += 1;
                    self.scalar()
                }
                Some(_) => self.scalar(),
                None => self.fail("a value"),
            };
            if let Err(e) = step {
                return Some(Err(e));
            }
            match self.next_or_close(b']') {
                Ok(true) => {}
                Ok(false) => return Some(Ok(())),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// A number, `true`, `false`, `null`, `NaN`, `Infinity` or `-Infinity`.
    #[inline(always)]
    fn scalar(&mut self) -> Scan<()> {
        let literal: &[u8] = match self.bytes[self.pos] {
            b'0'..=b'9' => return self.number(),
            b'-' if self.bytes.get(self.pos + 1) != Some(&b'I') => return self.number(),
            b'-' => b"-Infinity",
            b't' => b"true",
            b'f' => b"false",
            b'n' => b"null",
            b'N' => b"NaN",
            b'I' => b"Infinity",
            _ => return self.fail("a value"),
        };
        if self.bytes[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(())
        } else {
            self.fail("a value")
        }
    }

    #[inline(always)]
    fn digits(&mut self) -> usize {
        let n = digit_run(self.bytes, self.pos);
        self.pos += n;
        n
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    #[inline(always)]
    fn number(&mut self) -> Scan<()> {
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("a value"),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.fail("digits after `.`");
            }
        }
        if matches!(self.bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.bytes.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.fail("exponent digits");
            }
        }
        Ok(())
    }

    /// Leaves the bytes from `at` on (string content with bytes above 0x7F, read by the cursor
    /// or vouched for by the map index) to the next UTF-8 check ([`Cursor::check_utf8`]).
    pub(super) fn unchecked_from(&mut self, at: usize) {
        self.unchecked = self.unchecked.min(at);
    }

    /// Checks that only whitespace remains, and that the strings read are UTF-8: one check
    /// from the first not yet checked with a byte above 0x7F on (bytes outside strings are
    /// ASCII by then), as fast on long text as checking each string is slow on short ones.
    pub fn end(&mut self) -> Scan<()> {
        if self.peek().is_some() {
            return self.fail("the end of the document");
        }
        self.check_utf8(self.bytes.len())
    }

    /// Checks that the bytes left unchecked before `to` are UTF-8, and marks them checked:
    /// nothing at or after `to` may be pending (the cursor has not read past it).
    pub(super) fn check_utf8(&mut self, to: usize) -> Scan<()> {
        if let Some(pending) = self.bytes.get(self.unchecked..to) {
            if let Err(e) = simdutf8::compat::from_utf8(pending) {
                self.pos = self.unchecked + e.valid_up_to();
                return self.fail("valid UTF-8");
            }
            self.unchecked = usize::MAX;
        }
        Ok(())
    }

    /// Reads an unsigned integer value (e.g. `binary_data_size`).
    pub fn unsigned(&mut self) -> Scan<u64> {
        self.ws();
        let start = self.pos;
        if self.digits() == 0 {
            return self.fail("an unsigned integer");
        }
        let delimited = matches!(
            self.bytes.get(self.pos),
            None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
        );
        match str_of(&self.bytes[start..self.pos]).parse().ok() {
            Some(n) if delimited => Ok(n),
            _ => self.fail("an unsigned integer"),
        }
    }

    /// The text of a string span, unescaped into `scratch` only when it has escapes.
    #[inline]
    pub fn text<'s>(&'s self, span: StrSpan, scratch: &'s mut String) -> &'s str {
        let raw = str_of(&self.bytes[span.start + 1..span.end - 1]);
        if !span.escaped {
            return raw;
        }
        unescape(raw, scratch);
        scratch
    }
}

/// Bytes the cursor has read as string content (or as a number), so UTF-8, as `str`. Keys
/// and numbers are short and nearly always ASCII, for which the check is a quick loop instead
/// of a call to `from_utf8` (which cost kserve-json 8 %). Bytes that are not UTF-8 (a span
/// that was never read, which would be a bug) read as empty.
#[inline]
pub(super) fn str_of(bytes: &[u8]) -> &str {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return unsafe { std::str::from_utf8_unchecked(bytes) };
    }
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// The offset of the first `"`, `\\` or control character at or after `pos` (or the end),
/// eight bytes at a time where the input allows, and whether a byte above 0x7F came before it
/// (true also when one only follows it within the same eight bytes).
#[inline(always)]
pub(super) fn string_stop(bytes: &[u8], mut at: usize) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut seen = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        seen |= x;
        // Classic "has zero byte" tests; a false positive can only sit above a true one, and
        // only the lowest flagged byte is used.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let stops = zero(x ^ (ONES * b'"' as u64))
            | zero(x ^ (ONES * b'\\' as u64))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
        if stops != 0 {
            return (
                at + (stops.trailing_zeros() / 8) as usize,
                seen & HIGHS != 0,
            );
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at).filter(|&&b| !STRING_STOP[b as usize]) {
        seen |= u64::from(b);
        at += 1;
    }
    (at, seen & HIGHS != 0)
}

/// One bit per byte of a 64-byte block for each class of byte a numeric array holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Classes {
    digit: u64,
    zero: u64,
    dot: u64,
    /// `e` or `E`.
    exp: u64,
    minus: u64,
    plus: u64,
    comma: u64,
    /// Space, tab, line feed, carriage return.
    space: u64,
}

/// Classifies a block byte by byte: the reference, and the path on targets without SSE2.
#[cfg_attr(target_arch = "x86_64", cfg(test))]
fn classify_bytewise(block: &[u8; 64]) -> Classes {
    let mut k = Classes::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        let class = match b {
            b'0'..=b'9' => &mut k.digit,
            b'.' => &mut k.dot,
            b'e' | b'E' => &mut k.exp,
            b'-' => &mut k.minus,
            b'+' => &mut k.plus,
            b',' => &mut k.comma,
            b' ' | b'\t' | b'\n' | b'\r' => &mut k.space,
            _ => continue,
        };
        *class |= bit;
        if b == b'0' {
            k.zero |= bit;
        }
    }
    k
}

/// Classifies a block sixteen bytes at a time with SSE2 compares.
#[cfg(target_arch = "x86_64")]
fn classify(block: &[u8; 64]) -> Classes {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8, _mm_set_epi64x,
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&block[i * 8..i * 8 + 8]);
        i64::from_le_bytes(w)
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always available;
    // none of them reads or writes memory.
    unsafe {
        let lanes = [
            _mm_set_epi64x(word(1), word(0)),
            _mm_set_epi64x(word(3), word(2)),
            _mm_set_epi64x(word(5), word(4)),
            _mm_set_epi64x(word(7), word(6)),
        ];
        let splat = |b: u8| _mm_set1_epi8(b as i8);
        let mut k = Classes::default();
        for (i, v) in lanes.into_iter().enumerate() {
            let bits = |x: __m128i| u64::from(_mm_movemask_epi8(x) as u16) << (16 * i);
            let eq = |b: u8| _mm_cmpeq_epi8(v, splat(b));
            let digit = _mm_and_si128(
                _mm_cmpgt_epi8(v, splat(b'0' - 1)),
                _mm_cmplt_epi8(v, splat(b'9' + 1)),
            );
            k.digit |= bits(digit);
            k.zero |= bits(eq(b'0'));
            k.dot |= bits(eq(b'.'));
            k.exp |= bits(_mm_cmpeq_epi8(_mm_or_si128(v, splat(0x20)), splat(b'e')));
            k.minus |= bits(eq(b'-'));
            k.plus |= bits(eq(b'+'));
            k.comma |= bits(eq(b','));
            k.space |= bits(_mm_or_si128(
                _mm_or_si128(eq(b' '), eq(b'\t')),
                _mm_or_si128(eq(b'\n'), eq(b'\r')),
            ));
        }
        k
    }
}

/// The class of a byte as a flag of `NUMBER_LOW[b & 15] & NUMBER_HIGH[b >> 4]` (two table
/// lookups of sixteen bytes, one instruction each on a vector of bytes), a bit per class:
/// digit 0x01, zero 0x02, dot 0x04, exp 0x08, minus 0x10, plus 0x20, comma 0x40, and tab, line
/// feed or carriage return 0x80. Space (0x20) shares its low nibble with `0` and its high one
/// with the signs, so it is compared alone.
#[cfg(target_arch = "x86_64")]
const NUMBER_LOW: [u8; 16] = [
    0x03, 0x01, 0x01, 0x01, 0x01, 0x09, 0x01, 0x01, 0x01, 0x81, 0x80, 0x20, 0x40, 0x90, 0x04, 0x00,
];
/// See [`NUMBER_LOW`]; high nibbles from 8 have no flags.
#[cfg(target_arch = "x86_64")]
const NUMBER_HIGH: [u8; 16] = [
    0x80, 0x00, 0x74, 0x03, 0x08, 0x00, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Classifies a block thirty-two bytes at a time with the tables of [`NUMBER_LOW`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify_avx2(_: Avx2, block: &[u8; 64]) -> Classes {
    use std::arch::x86_64::*;
    // SAFETY: the `Avx2` argument proves AVX2; the loads read the 64 bytes of `block` and the
    // 16 of each table, unaligned loads being allowed.
    unsafe {
        // Macros, not closures: a closure would not inherit the CPU features.
        macro_rules! table {
            ($t:expr) => {
                _mm256_broadcastsi128_si256(_mm_loadu_si128($t.as_ptr().cast()))
            };
        }
        macro_rules! mask {
            ($x:expr) => {
                u64::from(_mm256_movemask_epi8($x) as u32)
            };
        }
        let (low_table, high_table) = (table!(NUMBER_LOW), table!(NUMBER_HIGH));
        let nibble = _mm256_set1_epi8(0x0f);
        let space = _mm256_set1_epi8(b' ' as i8);
        let mut halves = [[0u64; 8]; 2];
        for (h, masks) in halves.iter_mut().enumerate() {
            let v = _mm256_loadu_si256(block.as_ptr().add(32 * h).cast());
            let flags = _mm256_and_si256(
                _mm256_shuffle_epi8(low_table, _mm256_and_si256(v, nibble)),
                _mm256_shuffle_epi8(
                    high_table,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble),
                ),
            );
            // Flag bit `k` moved to the top of its byte.
            *masks = [
                mask!(_mm256_slli_epi16::<7>(flags)),
                mask!(_mm256_slli_epi16::<6>(flags)),
                mask!(_mm256_slli_epi16::<5>(flags)),
                mask!(_mm256_slli_epi16::<4>(flags)),
                mask!(_mm256_slli_epi16::<3>(flags)),
                mask!(_mm256_slli_epi16::<2>(flags)),
                mask!(_mm256_add_epi8(flags, flags)),
                mask!(flags) | mask!(_mm256_cmpeq_epi8(v, space)),
            ];
        }
        let [a, b] = halves;
        let [digit, zero, dot, exp, minus, plus, comma, space] =
            std::array::from_fn(|k| a[k] | b[k] << 32);
        Classes {
            digit,
            zero,
            dot,
            exp,
            minus,
            plus,
            comma,
            space,
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(block: &[u8; 64]) -> Classes {
    classify_bytewise(block)
}

/// A mask of one bit per byte: one 64-byte block (`u64`, for the number arrays here) or a
/// chunk of eight blocks (the lanes of the map index in `rows.rs`), so that the number grammar
/// below is written once for both.
pub(super) trait Bits: Copy {
    /// What an addition carries into the next mask.
    type Carry: Copy + Default;
    fn and(self, o: Self) -> Self;
    fn or(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
    /// `self & !o`.
    fn but(self, o: Self) -> Self;
    /// Each bit moved to the next byte; the first byte's bit from the last byte of `before`,
    /// the previous mask.
    fn later(self, before: Self) -> Self;
    /// `self + seeds` with carries from the previous mask and into the next: within each run of
    /// set bits of `self`, the carry from a seed clears the run from the seed to its end and
    /// sets the first bit past it.
    fn add_carried(self, seeds: Self, carry: &mut Self::Carry) -> Self;
}

impl Bits for u64 {
    type Carry = bool;
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        self & o
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        self | o
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        self ^ o
    }
    #[inline(always)]
    fn but(self, o: Self) -> Self {
        self & !o
    }
    #[inline(always)]
    fn later(self, before: Self) -> Self {
        (self << 1) | (before >> 63)
    }
    #[inline(always)]
    fn add_carried(self, seeds: Self, carry: &mut bool) -> Self {
        let (sum, c1) = self.overflowing_add(seeds);
        let (sum, c2) = sum.overflowing_add(u64::from(*carry));
        *carry = c1 | c2;
        sum
    }
}

/// `x` one byte later (see [`Bits::later`]), keeping `x` for the next mask.
#[derive(Clone, Copy)]
pub(super) struct Prev<M>(pub(super) M);

impl<M: Bits> Prev<M> {
    #[inline(always)]
    pub(super) fn of(&mut self, x: M) -> M {
        let shifted = x.later(self.0);
        self.0 = x;
        shifted
    }
}

/// The bytes of one mask that numbers are made of, outside strings.
pub(super) struct NumberBytes<M> {
    /// Any of the five below: each caller has it already, for its own rules.
    pub(super) token: M,
    pub(super) digit: M,
    pub(super) zero: M,
    pub(super) dot: M,
    /// `e` or `E`.
    pub(super) exp: M,
    pub(super) minus: M,
    pub(super) plus: M,
}

/// The tokens of one mask, for the grammar around them (separators, what may follow).
pub(super) struct Tokens<M> {
    /// The first byte of each token.
    pub(super) starts: M,
    /// The bytes after a byte of a token.
    pub(super) prev_token: M,
    /// Bytes where a token breaks the number grammar.
    pub(super) wrong: M,
}

/// The grammar of a JSON number, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as
/// conditions on the masks of its bytes, for the number arrays here and the map index in
/// `rows.rs` alike. Tokens are runs of number bytes; each starts with a digit or `-`; `-` leads
/// a token or follows `e`; `+` follows `e`; a sign, `e` or `.` is followed by a digit (`e` also
/// by a sign); `e` and `.` follow a digit; a token ends with a digit; no leading zero; at most
/// one `.` and one `e` per token, `.` first. Holds what carries from one mask to the next.
pub(super) struct NumberGrammar<M: Bits> {
    token: Prev<M>,
    digit: Prev<M>,
    exp: Prev<M>,
    dot: Prev<M>,
    sign: Prev<M>,
    minus_start: Prev<M>,
    lead: Prev<M>,
    past_exp: M::Carry,
    past_dot: M::Carry,
}

impl<M: Bits> NumberGrammar<M> {
    /// Before the first mask; `zero` is the empty mask.
    #[inline(always)]
    pub(super) fn new(zero: M) -> Self {
        let prev = Prev(zero);
        NumberGrammar {
            token: prev,
            digit: prev,
            exp: prev,
            dot: prev,
            sign: prev,
            minus_start: prev,
            lead: prev,
            past_exp: M::Carry::default(),
            past_dot: M::Carry::default(),
        }
    }

    /// Checks the next mask's number bytes.
    #[inline(always)]
    pub(super) fn step(&mut self, n: NumberBytes<M>) -> Tokens<M> {
        let NumberBytes {
            token,
            digit,
            zero,
            dot,
            exp,
            minus,
            plus,
        } = n;
        let sign = minus.or(plus);
        let prev_token = self.token.of(token);
        let starts = token.but(prev_token);
        let prev_digit = self.digit.of(digit);
        let prev_exp = self.exp.of(exp);
        let prev_dot = self.dot.of(dot);
        let minus_start = minus.and(starts);
        let lead = zero.and(starts.or(self.minus_start.of(minus_start)));
        let past_exp = past(token, prev_exp, &mut self.past_exp);
        let past_dot = past(token, prev_dot, &mut self.past_dot);
        let wrong = starts
            .but(digit.or(minus))
            .or(minus.but(starts.or(prev_exp)))
            .or(plus.but(prev_exp))
            .or(self.sign.of(sign).but(digit))
            .or(prev_exp.but(digit.or(sign)))
            .or(exp.or(dot).but(prev_digit))
            .or(prev_dot.but(digit))
            .or(self.lead.of(lead).and(digit))
            .or(dot.or(exp).and(past_exp))
            .or(dot.and(past_dot))
            .or(prev_token.but(token).but(prev_digit));
        Tokens {
            starts,
            prev_token,
            wrong,
        }
    }
}

/// The bytes of each run of `token` from its first byte after a byte of `after` to its end.
#[inline(always)]
fn past<M: Bits>(token: M, after: M, carry: &mut M::Carry) -> M {
    token
        .add_carried(after.and(token), carry)
        .xor(token)
        .and(token)
}

/// Validates the rest of an array of numbers from `pos` (where an element must start: just
/// after `[` or `,`), 64 bytes at a time with bit masks instead of a branch per byte. Returns
/// the offset just past the closing `]`; `None` when the array holds anything but numbers, is
/// not valid, or ends within 64 bytes of the input's end: the bytewise path decides those.
///
/// Each token must be a number (see [`NumberGrammar`]); between tokens exactly one comma, with
/// spaces.
fn number_array_rest(bytes: &[u8], pos: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = Avx2::get() {
        // SAFETY: `cpu` proves the CPU has the features the function is compiled for.
        return unsafe { number_array_rest_avx2(cpu, bytes, pos) };
    }
    number_array_rest_with(bytes, pos, classify)
}

/// [`number_array_rest`] with the AVX2 classifier, and the grammar compiled for AVX2 too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,pclmulqdq,popcnt,bmi1")]
fn number_array_rest_avx2(cpu: Avx2, bytes: &[u8], pos: usize) -> Option<usize> {
    number_array_rest_with(bytes, pos, |block| classify_avx2(cpu, block))
}

/// [`number_array_rest`] with the block classifier `classify`.
#[inline(always)]
fn number_array_rest_with(
    bytes: &[u8],
    pos: usize,
    classify: impl Fn(&[u8; 64]) -> Classes,
) -> Option<usize> {
    let mut numbers = NumberGrammar::new(0u64);
    let mut last_comma = 0u64;
    let (mut after_comma_carry, mut after_token_carry) = (false, false);
    let mut at = pos;
    // The first byte is where an element may start, as after a comma.
    let mut start_seed = 1u64;
    loop {
        let block: &[u8; 64] = bytes.get(at..at + 64)?.try_into().ok()?;
        let k = classify(block);
        let token = k.digit | k.dot | k.exp | k.minus | k.plus;
        let other = !(token | k.comma | k.space);
        let (end, within) = match other.trailing_zeros() {
            64 => (0, !0u64),
            o if block[o as usize] == b']' => (1u64 << o, (1u64 << o) - 1),
            _ => return None,
        };
        let token = token & within;
        let t = numbers.step(NumberBytes {
            token,
            digit: k.digit & within,
            zero: k.zero & within,
            dot: k.dot & within,
            exp: k.exp & within,
            minus: k.minus & within,
            plus: k.plus & within,
        });
        let (comma, space) = (k.comma & within, k.space & within);
        // The first byte past each run of spaces that follows a comma (or the start) or a token.
        let after_comma = comma.later(last_comma) | start_seed;
        let after_token = t.prev_token & !token;
        let next_after_comma = space.add_carried(after_comma, &mut after_comma_carry) & !space;
        let next_after_token = space.add_carried(after_token, &mut after_token_carry) & !space;
        let wrong = t.wrong | (next_after_comma & !t.starts) | (next_after_token & !(comma | end));
        if wrong & (within | end) != 0 {
            return None;
        }
        if end != 0 {
            return Some(at + end.trailing_zeros() as usize + 1);
        }
        last_comma = comma;
        start_seed = 0;
        at += 64;
    }
}

/// The number of ASCII digits at `pos`, eight bytes at a time where the input allows.
#[inline(always)]
fn digit_run(bytes: &[u8], pos: usize) -> usize {
    let mut at = pos;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Per byte: non-zero unless the high nibble is 3 and the low nibble is below 10.
        let high = (x & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030;
        let low = ((x & 0x0F0F_0F0F_0F0F_0F0F) + 0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
        let not_digit = high | low;
        if not_digit != 0 {
            return at - pos + (not_digit.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at - pos
}

/// Decodes JSON escapes (already validated) into `out`; lone surrogates become U+FFFD.
fn unescape(raw: &str, out: &mut String) {
    out.clear();
    let mut chars = raw.char_indices();
    let bytes = raw.as_bytes();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, kind)) = chars.next() else { break };
        match kind {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex = |at: usize| {
                    raw.get(at..at + 4)
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                };
                let Some(high) = hex(i + 2) else { break };
                for _ in 0..4 {
                    chars.next();
                }
                let low_follows = (0xD800..0xDC00).contains(&high)
                    && bytes.get(i + 6) == Some(&b'\\')
                    && bytes.get(i + 7) == Some(&b'u');
                let low = if low_follows {
                    hex(i + 8).filter(|l| (0xDC00..0xE000).contains(l))
                } else {
                    None
                };
                match low {
                    Some(low) => {
                        for _ in 0..6 {
                            chars.next();
                        }
                        out.push(
                            char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                                .unwrap_or('\u{FFFD}'),
                        );
                    }
                    None => out.push(char::from_u32(high).unwrap_or('\u{FFFD}')),
                }
            }
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trim::Lcg;

    fn valid(text: &str) -> bool {
        let mut c = Cursor::new(text.as_bytes());
        c.skip_value().and_then(|()| c.end()).is_ok()
    }

    #[test]
    fn accepts_json_and_tf_serving_tokens() {
        for text in [
            "0",
            "-0.5e+10",
            "1E3",
            "\"a\\u00e9\\n\"",
            "[]",
            "{}",
            " [1, {\"a\": [null, true, false]}] ",
            "NaN",
            "[Infinity, -Infinity]",
            "{\"b64\": \"aGk=\"}",
        ] {
            assert!(valid(text), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_json() {
        for text in [
            "",
            "01",
            "1.",
            "-",
            "+1",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12\"",
            "nul",
            "\"tab\there\"",
            "[",
            "{\"a\":}",
            "{1:2}",
            "[1]]",
            "inf",
        ] {
            assert!(!valid(text), "{text:?} accepted");
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = "[".repeat(200_000) + &"]".repeat(200_000);
        assert!(valid(&deep));
        let unbalanced = "[".repeat(200_000) + &"]".repeat(199_999);
        assert!(!valid(&unbalanced));
        let objects = "{\"a\":".repeat(50_000) + "1" + &"}".repeat(50_000);
        assert!(valid(&objects));
    }

    #[test]
    fn digit_runs() {
        for (text, at, n) in [
            ("12345678901x", 0, 11),
            ("a1b", 1, 1),
            ("0123456789", 0, 10),
            ("x", 0, 0),
            ("9:;/", 0, 1),
            ("12345678", 0, 8),
        ] {
            assert_eq!(digit_run(text.as_bytes(), at), n, "{text}");
        }
        // Every byte value next to digits: only '0'..='9' count.
        for b in 0..=255u8 {
            let text = [b'1', b'2', b'3', b, b'4', b'5', b'6', b'7', b'8', b'9'];
            let expected = if b.is_ascii_digit() { 10 } else { 3 };
            assert_eq!(digit_run(&text, 0), expected, "byte {b}");
        }
    }

    #[test]
    fn classify_matches_the_bytewise_reference() {
        let mut rng = Lcg(3);
        let mut block = [0u8; 64];
        for round in 0..20_000 {
            for b in block.iter_mut() {
                // Half the rounds from the interesting bytes, half from all 256.
                let r = rng.next() as usize;
                *b = if round % 2 == 0 {
                    b"0123456789.eE+-, \t\n\r]x\x7f\x80\xff/:"[r % 27]
                } else {
                    r as u8
                };
            }
            let expected = classify_bytewise(&block);
            assert_eq!(classify(&block), expected, "{block:?}");
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = Avx2::or_say_why() {
                assert_eq!(classify_avx2(cpu, &block), expected, "{block:?}");
            }
        }
    }

    /// The block validator against serde_json on arrays that are mostly valid, with one random
    /// edit in some, at every alignment and length up to a few blocks, with this process's
    /// classifier and the baseline one. (Not against the cursor: its `skip_value` hands arrays
    /// of more than four numbers to this same validator.)
    #[test]
    fn number_arrays_agree_with_serde_json() {
        let mut rng = Lcg(11);
        let mut next = |n: usize| rng.next() as usize % n;
        let numbers = [
            "0",
            "-0",
            "7",
            "-12",
            "0.5",
            "-0.25",
            "1e5",
            "1E-7",
            "-3.5e+12",
            "123456789",
            "0.5117839368657123",
            "10",
            "9.0",
        ];
        let edits = b"0123456789.eE+-, ]\n\"x[{";
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..60_000 {
            let mut text = String::from("[");
            let count = 1 + next(40);
            for i in 0..count {
                if i > 0 {
                    text.push_str([",", ", ", " ,", ",\n  "][next(4)]);
                }
                text.push_str(numbers[next(numbers.len())]);
            }
            text.push_str([&"]", &" ]", &"\n]"][next(3)]);
            let mut bytes = text.into_bytes();
            if next(2) == 0 {
                let at = 1 + next(bytes.len() - 1);
                bytes[at] = edits[next(edits.len())];
            }
            if bytes[1..].trim_ascii_start().first() == Some(&b']') {
                continue; // the caller never hands over an empty array
            }
            bytes.extend_from_slice(&[b' '; 70]);
            let text = std::str::from_utf8(&bytes).unwrap();
            let mut stream =
                serde_json::Deserializer::from_slice(&bytes).into_iter::<serde::de::IgnoredAny>();
            let reference = match stream.next() {
                Some(Ok(_)) => Some(stream.byte_offset()),
                _ => None,
            };
            let found = number_array_rest(&bytes, 1);
            // The baseline classifier where the process runs AVX2's.
            assert_eq!(
                number_array_rest_with(&bytes, 1, classify),
                found,
                "{text:?}"
            );
            match found {
                Some(end) => {
                    assert_eq!(Some(end), reference, "{text:?}");
                    accepted += 1;
                }
                None => {
                    // Declining is allowed only for what is not JSON or for values that are
                    // not numbers.
                    let non_numeric = text.trim_end()[1..]
                        .bytes()
                        .any(|b| !b"0123456789.eE+-, \n]".contains(&b));
                    assert!(reference.is_none() || non_numeric, "{text:?}");
                    rejected += 1;
                }
            }
        }
        assert!(
            accepted > 10_000 && rejected > 10_000,
            "{accepted} {rejected}"
        );
    }

    #[test]
    fn string_stops_match_the_table() {
        // Every byte value at every position of a 16-byte window.
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut text = vec![b'a'; 20];
                text[at] = b;
                let expected = if STRING_STOP[b as usize] { at } else { 20 };
                assert_eq!(
                    string_stop(&text, 0),
                    (expected, b > 0x7f),
                    "byte {b} at {at}"
                );
            }
        }
        assert_eq!(string_stop(b"\xc3\xa9\xe2\x82\xac\"", 0), (5, true));
        assert_eq!(string_stop(b"abcdefghijk\"", 0), (11, false));
    }

    #[test]
    fn unescapes_keys() {
        let mut out = String::new();
        unescape(r#"f\u005fa\n\ud83d\ude00\"x"#, &mut out);
        assert_eq!(out, "f_a\n\u{1F600}\"x");
        unescape(r"\ud800x", &mut out);
        assert_eq!(out, "\u{FFFD}x");
    }
}
