//! The JSON scanning core shared by the engines: a cursor over the body that validates as it
//! goes and reports byte offsets, so engines copy kept bytes instead of re-serialising them.
//! Nesting is tracked on an explicit stack, never by recursion, so a deeply nested value cannot
//! overflow the thread's stack. Accepts TF Serving's `NaN`, `Infinity` and `-Infinity` tokens.

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

/// A validating cursor over a JSON document.
pub struct Cursor<'a> {
    /// The whole document, already checked to be UTF-8.
    pub text: &'a str,
    /// The same, as bytes.
    pub bytes: &'a [u8],
    /// Current offset.
    pub pos: usize,
    /// Open containers (their closing bracket) while skipping a value; reused across values.
    stack: Vec<u8>,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Cursor {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            stack: Vec::new(),
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
    /// rejecting raw control characters.
    #[inline(always)]
    pub fn string(&mut self) -> Scan<StrSpan> {
        let start = self.pos;
        let mut pos = self.pos + 1;
        let mut escaped = false;
        loop {
            pos = string_stop(self.bytes, pos);
            match self.bytes.get(pos) {
                Some(b'"') => {
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
        loop {
            let step = match self.peek() {
                Some(b'[' | b'{') => {
                    self.pos = start;
                    return None;
                }
                Some(b'"') => self.string().map(|_| ()),
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

    /// Checks that only whitespace remains.
    pub fn end(&mut self) -> Scan<()> {
        if self.peek().is_some() {
            return self.fail("the end of the document");
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
        match self.text.get(start..self.pos).and_then(|t| t.parse().ok()) {
            Some(n) if delimited => Ok(n),
            _ => self.fail("an unsigned integer"),
        }
    }

    /// The text of a string span, unescaped into `scratch` only when it has escapes.
    #[inline]
    pub fn text<'s>(&'s self, span: StrSpan, scratch: &'s mut String) -> &'s str {
        // Quotes are ASCII, so both ends are character boundaries.
        let raw = self.text.get(span.start + 1..span.end - 1).unwrap_or("");
        if !span.escaped {
            return raw;
        }
        unescape(raw, scratch);
        scratch
    }
}

/// The offset of the first `"`, `\\` or control character at or after `pos` (or the end),
/// eight bytes at a time where the input allows.
#[inline(always)]
fn string_stop(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Classic "has zero byte" tests; a false positive can only sit above a true one, and
        // only the lowest flagged byte is used.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let stops = zero(x ^ (ONES * b'"' as u64))
            | zero(x ^ (ONES * b'\\' as u64))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
        if stops != 0 {
            return at + (stops.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while bytes.get(at).is_some_and(|&b| !STRING_STOP[b as usize]) {
        at += 1;
    }
    at
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

    fn valid(text: &str) -> bool {
        let mut c = Cursor::new(text);
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
    fn string_stops_match_the_table() {
        // Every byte value at every position of a 16-byte window.
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut text = vec![b'a'; 20];
                text[at] = b;
                let expected = if STRING_STOP[b as usize] { at } else { 20 };
                assert_eq!(string_stop(&text, 0), expected, "byte {b} at {at}");
            }
        }
        assert_eq!(string_stop(b"\xc3\xa9\xe2\x82\xac\"", 0), 5);
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
