//! Trimming engines, one per protocol: the JSON ones over one scanning core, gRPC's over the
//! protobuf wire format. Pure: bytes and an allowlist predicate in, bytes and counts (or the
//! reason nothing was changed) out. No HTTP, no metrics, no I/O, so the engines can be fuzzed
//! and benchmarked alone.

#[cfg(target_arch = "x86_64")]
mod cpu;
pub mod grpc;
pub mod json;
pub mod kserve;
mod rows;
pub mod tf_serving;

use std::cell::RefCell;

use json::{Cursor, SyntaxError};

/// Which vector code the engines run: `"avx512"` (the map index of `rows.rs`, eight blocks at
/// a time) when the CPU has AVX-512BW, POPCNT and BMI1 and the environment does not set
/// `TRIMMER_AVX512=off`; else `"avx2"` (the same index one block at a time) when it has AVX2,
/// PCLMULQDQ, POPCNT and BMI1 and the environment does not set `TRIMMER_AVX2=off`; else
/// `"portable"` (the cursor alone). Decided once per process. Arrays of numbers (tensor data)
/// are classified with AVX2 on both vector paths, or when `TRIMMER_AVX2=off` with SSE2.
pub fn vector_path() -> &'static str {
    rows::runs().unwrap_or("portable")
}

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

/// The allowlist an engine trims by. Any `Fn(&str) -> bool` is one.
pub trait Allowed {
    /// Whether the feature called `name` is kept.
    fn allows(&self, name: &str) -> bool;

    /// Names this allowlist for as long as the process runs, never reused for another one, so
    /// that a thread may keep the answers of one request for the next; `None` (the default):
    /// answers are kept within one request only.
    fn identity(&self) -> Option<AllowlistId> {
        None
    }
}

impl<F: Fn(&str) -> bool> Allowed for F {
    fn allows(&self, name: &str) -> bool {
        self(name)
    }
}

/// See [`Allowed::identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowlistId {
    /// Unique per allowlist set (a snapshot, say), never reused.
    pub set: u64,
    /// Unique within the set (an address, say).
    pub member: usize,
}

/// A cursor just inside the document's top-level object; a valid body that is not an object
/// is not trimmable.
fn open_root(body: &[u8]) -> Result<Cursor<'_>, Untrimmable> {
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

/// The trimmed document being written, and what was decided on the way.
struct Output {
    /// Bytes written so far.
    out: Vec<u8>,
    /// Input offset up to which `out` holds the document; the rest is copied lazily.
    copied: usize,
    /// Unescaped key text, reused.
    scratch: String,
    /// Feature values removed.
    removed: u64,
    /// Feature values kept.
    kept: u64,
    /// The previous map's keys by position: rows usually repeat their keys in the same order,
    /// so comparing bytes replaces most allowlist lookups.
    memo: Vec<Remembered>,
    /// Some slot of `memo` may hold a key longer than sixteen bytes.
    long_keys: bool,
    /// Member boundaries from the bit-parallel index, reused.
    members: rows::Members,
    /// The allowlist's identity, when it has one.
    owner: Option<AllowlistId>,
}

impl Output {
    /// An empty output, with the memo and index buffers this thread kept from its last
    /// request. The memo's answers are kept only for the same allowlist (`owner`), and then
    /// only those for keys of up to sixteen bytes, which its words decide alone (a longer
    /// key's check reads the remembered key's bytes in the body they came from).
    fn new(capacity: usize, owner: Option<AllowlistId>) -> Self {
        let mut kept = KEPT.with(RefCell::take);
        if owner.is_none() || kept.owner != owner {
            kept.memo.clear();
        } else if kept.long_keys {
            for slot in kept.memo.iter_mut().filter(|slot| slot.len > 16) {
                *slot = Remembered::NOTHING;
            }
        }
        Output {
            out: Vec::with_capacity(capacity),
            copied: 0,
            scratch: String::new(),
            removed: 0,
            kept: 0,
            memo: kept.memo,
            long_keys: false,
            members: kept.members,
            owner,
        }
    }

    /// The finished body: what was written plus the input's untouched tail.
    fn finish(mut self, body: &[u8]) -> Trimmed {
        self.out.extend_from_slice(&body[self.copied..]);
        Trimmed {
            body: std::mem::take(&mut self.out),
            removed: self.removed,
            kept: self.kept,
            json_len: None,
        }
    }
}

impl Drop for Output {
    /// Hands the memo and index buffers back to the thread for its next request, unless a
    /// huge map made them huge.
    fn drop(&mut self) {
        if self.memo.len() > KEPT_MEMBERS {
            return;
        }
        let kept = Kept {
            memo: std::mem::take(&mut self.memo),
            long_keys: self.long_keys,
            members: std::mem::take(&mut self.members),
            owner: self.owner,
        };
        KEPT.with(|k| *k.borrow_mut() = kept);
    }
}

/// The most map members whose memo a thread keeps between requests (~400 KiB of memo).
const KEPT_MEMBERS: usize = 16_384;

/// What a thread keeps from one request's trim to the next.
#[derive(Default)]
struct Kept {
    memo: Vec<Remembered>,
    /// As [`Output::long_keys`].
    long_keys: bool,
    /// The allowlist the memo's answers are for.
    owner: Option<AllowlistId>,
    members: rows::Members,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::default();
}

/// A key the previous map had at some position, and whether it was kept. Its first and last
/// eight bytes are held here, so most comparisons never touch the previous map's bytes (which
/// the scan of the current map has usually pushed out of the nearest cache).
#[derive(Debug, Clone, Copy)]
struct Remembered {
    head: u64,
    tail: u64,
    start: u32,
    /// Key length, quotes included.
    len: u16,
    keep: bool,
}

impl Remembered {
    /// A slot no key matches (every key has two quotes at least).
    const NOTHING: Remembered = Remembered {
        head: 0,
        tail: 0,
        start: 0,
        len: 0,
        keep: false,
    };
}

/// The first and last eight bytes of `key` (zero-padded when shorter).
#[inline(always)]
fn ends_of(key: &[u8]) -> (u64, u64) {
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        w[..s.len()].copy_from_slice(s);
        u64::from_ne_bytes(w)
    };
    if key.len() >= 8 {
        (word(&key[..8]), word(&key[key.len() - 8..]))
    } else {
        (word(key), 0)
    }
}

/// Whether `slot` holds `key` (quotes included), a key of the body `bytes`.
#[inline(always)]
fn remembers(slot: &Remembered, bytes: &[u8], key: &[u8]) -> bool {
    // Up to sixteen bytes, the two words cover the whole key.
    usize::from(slot.len) == key.len()
        && (slot.head, slot.tail) == ends_of(key)
        && (key.len() <= 16 || {
            let from = slot.start as usize;
            bytes.get(from..from + key.len()) == Some(key)
        })
}

/// Whether a map member with key bytes (quotes included) at `start..end` is kept. `slot` is
/// what the previous map had at the same position: it answers when the bytes are the same;
/// otherwise `lookup` asks the allowlist and the answer is remembered there (and
/// `long_keys` set if the key is longer than sixteen bytes).
#[inline(always)]
fn memo_keep(
    slot: &mut Remembered,
    long_keys: &mut bool,
    bytes: &[u8],
    (start, end): (usize, usize),
    lookup: impl FnOnce() -> bool,
) -> bool {
    let key = &bytes[start..end];
    if remembers(slot, bytes, key) {
        return slot.keep;
    }
    let keep = lookup();
    let (head, tail) = ends_of(key);
    // A key too long or too far into the body to note down is remembered as length 0, which
    // no key (two quotes at least) matches.
    let (start, len) = match (u32::try_from(start), u16::try_from(key.len())) {
        (Ok(start), Ok(len)) => (start, len),
        _ => (0, 0),
    };
    *slot = Remembered {
        head,
        tail,
        start,
        len,
        keep,
    };
    *long_keys |= len > 16;
    keep
}

/// How many of `keys` (each key's quotes), from the first, are the keys their `memo` slots
/// hold. Out of line, with no allowlist to ask, so that the loop has the registers to itself.
#[inline(never)]
fn remembered(bytes: &[u8], keys: &[[u32; 2]], memo: &[Remembered]) -> usize {
    keys.iter()
        .zip(memo)
        .take_while(|&(&[open, close], slot)| {
            bytes
                .get(open as usize..close as usize + 1)
                .is_some_and(|key| remembers(slot, bytes, key))
        })
        .count()
}

/// What a `{...}` at the cursor turned out to be.
enum MapKind {
    /// A feature map, filtered into the output.
    Features,
    /// `{"b64": "..."}`: a value, left for the raw copy.
    B64Value,
}

/// Filters the feature map at the cursor (on `{`) into the output. `o.copied` is advanced past
/// the map unless it was a `{"b64": ...}` value, which is left to be copied as it is.
fn filter_map(
    c: &mut Cursor<'_>,
    o: &mut Output,
    allowed: &impl Allowed,
) -> Result<MapKind, Untrimmable> {
    let bytes = c.bytes;
    if let Some(end) = rows::index(bytes, c.pos, &mut o.members) {
        if o.members.high {
            // Now, while the map's bytes are in cache.
            c.unchecked_from(c.pos);
            c.check_utf8(end)?;
        }
        filter_indexed(bytes, o, allowed, end);
        c.pos = end;
        return Ok(MapKind::Features);
    }
    c.pos += 1;
    if c.empty_container(b'}') {
        return Ok(MapKind::Features);
    }
    let mark = o.out.len();
    let (mut members, mut b64_string) = (0usize, false);
    let (mut kept, mut removed) = (0u64, 0u64);
    c.ws();
    let mut splice = Splice::open(&mut o.out, bytes, o.copied, c.pos);
    loop {
        c.ws();
        let key_start = c.pos;
        let key = c.key()?;
        let is_string = c.bytes.get(c.pos) == Some(&b'"');
        c.skip_value()?;
        let end = c.pos;
        let raw = &bytes[key.start..key.end];
        if o.memo.len() <= members {
            o.memo.push(Remembered::NOTHING);
        }
        let keep = memo_keep(
            &mut o.memo[members],
            &mut o.long_keys,
            bytes,
            (key.start, key.end),
            || allowed.allows(c.text(key, &mut o.scratch)),
        );
        if members == 0 {
            b64_string = is_string
                && (raw == b"\"b64\"" || (key.escaped && c.text(key, &mut o.scratch) == "b64"));
        }
        members += 1;
        if keep {
            kept += 1;
        } else {
            removed += 1;
        }
        splice.item(&mut o.out, bytes, key_start, end, keep);
        if !c.next_or_close(b'}')? {
            break;
        }
    }
    if members == 1 && b64_string {
        // `copied` was not advanced: the raw object is copied with what follows.
        o.out.truncate(mark);
        return Ok(MapKind::B64Value);
    }
    o.copied = splice.close(&mut o.out, bytes, c.pos);
    o.removed += removed;
    o.kept += kept;
    Ok(MapKind::Features)
}

/// Filters a map the bit-parallel index vouched for (`o.members` holds its keys; the map has
/// no escapes, and its UTF-8 was checked) into the output; `end` is one past its
/// `}`. Where a value ends is worked out only for the members kept (and the last): the bytes
/// before the first key, each kept member with the separator that preceded it, and the bytes
/// after the last value are copied.
fn filter_indexed(bytes: &[u8], o: &mut Output, allowed: &impl Allowed, end: usize) {
    let m = &o.members;
    if o.memo.len() < m.len() {
        o.memo.resize(m.len(), Remembered::NOTHING);
    }
    // First every decision (each lands in the member's memo slot), then the copying: two
    // short loops keep their state in registers where one long one spilled it.
    // Rows mostly repeat the previous row's keys: runs of them are passed over out of line.
    let keys = m.quotes();
    let mut at = 0;
    while at < keys.len() {
        at += remembered(bytes, &keys[at..], &o.memo[at..]);
        if let (Some(&[open, close]), Some(slot)) = (keys.get(at), o.memo.get_mut(at)) {
            let (start, key_end) = (open as usize, close as usize + 1);
            memo_keep(slot, &mut o.long_keys, bytes, (start, key_end), || {
                allowed.allows(json::str_of(&bytes[start + 1..key_end - 1]))
            });
        }
        at += 1;
    }
    let out = &mut o.out;
    out.extend_from_slice(&bytes[o.copied..m.first()]);
    let mut kept = 0;
    for (i, ((start, _), slot)) in m.keys().zip(&o.memo).enumerate() {
        if slot.keep {
            // With the separator that precedes it (from the previous member's value end),
            // in one copy.
            let from = if kept > 0 {
                m.value_end(bytes, i - 1, end)
            } else {
                start
            };
            out.extend_from_slice(&bytes[from..m.value_end(bytes, i, end)]);
            kept += 1;
        }
    }
    out.extend_from_slice(&bytes[m.value_end(bytes, m.len() - 1, end)..end]);
    o.copied = end;
    o.kept += kept;
    o.removed += m.len() as u64 - kept;
}

/// A tiny deterministic generator (64-bit LCG) so no randomness crate is needed: drives the
/// engines' randomised unit tests and the reference workloads.
#[cfg(any(test, feature = "testkit"))]
pub(crate) struct Lcg(pub(crate) u64);

#[cfg(any(test, feature = "testkit"))]
impl Lcg {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_key_answers_only_for_the_same_bytes() {
        // Keys at the same position in consecutive rows that differ only in their last bytes,
        // only in the middle (longer than the two remembered words, or one byte longer), or
        // only in length; each row once through the index (plain keys) and once through the
        // cursor (an escaped key).
        let allowed = [
            "feature_01",
            "feature_alpha_0001",
            "abcdefgXijklmno",
            "aaaaaaaaaaaaaa",
            "ab",
            "b",
        ];
        for extra in ["", r#","\u0062":3"#] {
            let body = format!(
                r#"{{"instances":[{{"feature_01":1,"feature_alpha_0001":2,"abcdefgXijklmno":3,"aaaaaaaaaaaaaa":4,"ab":0,"z":0{extra}}},{{"feature_02":1,"feature_beta__0001":2,"abcdefgYijklmno":3,"aaaaaaaaaaaaa":4,"abc":0,"z":0{extra}}}]}}"#
            );
            let out = tf_serving::trim(body.as_bytes(), tf_serving::TfBody::Predict, |k: &str| {
                allowed.contains(&k)
            })
            .unwrap();
            let kept = if extra.is_empty() {
                ""
            } else {
                r#","\u0062":3"#
            };
            assert_eq!(
                String::from_utf8(out.body).unwrap(),
                format!(
                    r#"{{"instances":[{{"feature_01":1,"feature_alpha_0001":2,"abcdefgXijklmno":3,"aaaaaaaaaaaaaa":4,"ab":0{kept}}},{{{}}}]}}"#,
                    &kept[kept.len().min(1)..]
                ),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn filter_map_keeps_separators_and_bytes() {
        let body = r#"{ "a" : 1 ,"b":[2, {"x":3}] ,  "c":"\u0063" }"#;
        let mut c = Cursor::new(body.as_bytes());
        let mut o = Output::new(body.len(), None);
        let allow = |k: &str| k != "b";
        assert!(matches!(
            filter_map(&mut c, &mut o, &allow),
            Ok(MapKind::Features)
        ));
        assert_eq!(
            std::str::from_utf8(&o.out).unwrap(),
            r#"{ "a" : 1 ,  "c":"\u0063" }"#
        );
        assert_eq!((o.removed, o.kept), (1, 2));
        assert_eq!(o.copied, body.len());
    }
}
