//! Trimming engines, one per protocol, over one JSON scanning core. Pure: bytes and an
//! allowlist predicate in, bytes and counts (or the reason nothing was changed) out. No HTTP,
//! no metrics, no I/O, so the engines can be fuzzed and benchmarked alone.

pub mod json;
pub mod kserve;
pub mod tf_serving;

use json::{Cursor, SyntaxError};

/// A trimmed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// The new body (equal to the input when nothing was removed).
    pub body: Vec<u8>,
    /// Feature values removed (one per removed map member or input tensor).
    pub removed: u64,
    /// Feature values kept.
    pub kept: u64,
    /// For Triton binary bodies: the new `Inference-Header-Content-Length`.
    pub json_len: Option<usize>,
}

/// Why a body is forwarded untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrimmable {
    /// Valid, but not a shape the trimmer may change (single-input plain values, mixed
    /// `instances`, no feature maps at all).
    NotTrimmable(&'static str),
    /// Not JSON (or a binary layout) the trimmer understands.
    Parse {
        /// Byte offset of the problem.
        offset: usize,
        /// What was expected.
        reason: &'static str,
    },
}

impl From<SyntaxError> for Untrimmable {
    fn from(e: SyntaxError) -> Self {
        Untrimmable::Parse {
            offset: e.offset,
            reason: e.expected,
        }
    }
}

/// Result of an engine.
pub type TrimResult = Result<Trimmed, Untrimmable>;

/// A cursor just inside the document's top-level object. The whole body is checked to be UTF-8
/// once here, so spans can be read as `str` later; a valid body that is not an object is
/// not trimmable.
fn open_root(body: &[u8]) -> Result<Cursor<'_>, Untrimmable> {
    std::str::from_utf8(body).map_err(|e| Untrimmable::Parse {
        offset: e.valid_up_to(),
        reason: "valid UTF-8",
    })?;
    let mut c = Cursor::new(body);
    if c.peek() != Some(b'{') {
        c.skip_value()?;
        c.end()?;
        return Err(Untrimmable::NotTrimmable("the body is not a JSON object"));
    }
    c.pos += 1;
    Ok(c)
}

/// Copies a container while dropping some of its items (object members or array elements),
/// keeping every other byte: the text before the first item, the separator that preceded each
/// kept item, and the text after the last item.
struct Splice {
    /// End of the previous item (kept or not).
    prev_end: usize,
    /// Items written so far.
    kept: u64,
}

impl Splice {
    /// Starts at the first item: flushes everything not yet copied up to it.
    fn open(out: &mut Vec<u8>, bytes: &[u8], copied: usize, first_item: usize) -> Splice {
        out.extend_from_slice(&bytes[copied..first_item]);
        Splice {
            prev_end: first_item,
            kept: 0,
        }
    }

    /// One item spanning `start..end`.
    #[inline]
    fn item(&mut self, out: &mut Vec<u8>, bytes: &[u8], start: usize, end: usize, keep: bool) {
        if keep {
            if self.kept > 0 {
                out.extend_from_slice(&bytes[self.prev_end..start]);
            }
            out.extend_from_slice(&bytes[start..end]);
            self.kept += 1;
        }
        self.prev_end = end;
    }

    /// After the closing bracket at `close_end - 1`; returns the new copy position.
    fn close(self, out: &mut Vec<u8>, bytes: &[u8], close_end: usize) -> usize {
        out.extend_from_slice(&bytes[self.prev_end..close_end]);
        close_end
    }
}

/// What a `{...}` at the cursor turned out to be.
enum MapKind {
    /// A feature map, filtered into the output.
    Features,
    /// `{"b64": "..."}`: a value, left for the raw copy.
    B64Value,
}

/// Filters the feature map at the cursor (on `{`) into `out`. `copied` is the input offset up
/// to which `out` already holds the document; it is advanced past the map unless the map was a
/// `{"b64": ...}` value, which is left to be copied as it is.
fn filter_map(
    c: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    copied: &mut usize,
    allowed: &impl Fn(&str) -> bool,
    scratch: &mut String,
    counts: &mut (u64, u64),
) -> Result<MapKind, Untrimmable> {
    let bytes = c.bytes;
    c.pos += 1;
    if c.empty_container(b'}') {
        return Ok(MapKind::Features);
    }
    let mark = out.len();
    let (mut members, mut b64_string) = (0u32, false);
    let (mut kept, mut removed) = (0u64, 0u64);
    c.ws();
    let mut splice = Splice::open(out, bytes, *copied, c.pos);
    loop {
        c.ws();
        let key_start = c.pos;
        let key = c.key()?;
        let is_string = c.peek() == Some(b'"');
        c.skip_value()?;
        let end = c.pos;
        let name = c.text(key, scratch);
        members += 1;
        if members == 1 {
            b64_string = is_string && name == "b64";
        }
        let keep = allowed(name);
        if keep {
            kept += 1;
        } else {
            removed += 1;
        }
        splice.item(out, bytes, key_start, end, keep);
        if !c.next_or_close(b'}')? {
            break;
        }
    }
    if members == 1 && b64_string {
        // `copied` was not advanced: the raw object is copied with what follows.
        out.truncate(mark);
        return Ok(MapKind::B64Value);
    }
    *copied = splice.close(out, bytes, c.pos);
    counts.0 += removed;
    counts.1 += kept;
    Ok(MapKind::Features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_map_keeps_separators_and_bytes() {
        let body = br#"{ "a" : 1 ,"b":[2, {"x":3}] ,  "c":"\u0063" }"#;
        let mut c = Cursor::new(body);
        let (mut out, mut copied, mut scratch, mut counts) = (Vec::new(), 0, String::new(), (0, 0));
        let allow = |k: &str| k != "b";
        assert!(matches!(
            filter_map(
                &mut c,
                &mut out,
                &mut copied,
                &allow,
                &mut scratch,
                &mut counts
            ),
            Ok(MapKind::Features)
        ));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "a" : 1 ,  "c":"\u0063" }"#
        );
        assert_eq!(counts, (1, 2));
        assert_eq!(copied, body.len());
    }
}
