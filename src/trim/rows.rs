//! A bit-parallel index of one feature map (a JSON object): byte classes become one bit per
//! byte, strings and arrays become bit regions, and the JSON grammar of the object becomes
//! conditions on those masks, so a member costs a few bit operations instead of a branch per
//! byte and per token. The result is the member boundaries the engine splices by.
//!
//! The grammar is written once, over [`Lanes`]; shapes run it (picked at run time, see
//! `vector_path`): with AVX-512BW, eight 64-byte blocks at a time, one per 64-bit lane of a
//! register; with AVX2 (and PCLMULQDQ), four at a time in a 256-bit register. A third shape,
//! one block at a time in a plain `u64` (as simdjson's stage 1 does), needs of a CPU only a
//! classifier (compares and nibble lookups into one mask per class) and a prefix xor (a
//! carry-less multiply) (see [`Classify`]): the shape for NEON, run on x86 by the tests. The
//! order of tokens is checked with parities (prefix xors), not by following each token past
//! whitespace (see `State::step`). Without AVX2 or AVX-512 there is no index and the cursor
//! does all the work.
//!
//! It vouches only for the common shape: string keys, values that are strings, numbers or flat
//! arrays of them, no backslash anywhere. Bytes above 0x7F may sit only in strings; whether a
//! map has any is reported, and the caller checks its UTF-8 right away. Everything else
//! (escapes, `true`/`null`/`NaN`, nested containers, one-member maps, errors of any kind)
//! returns `None` and the validating cursor in `json.rs` handles the object from its start, so
//! it alone decides and reports errors.

use super::json::{Bits, NumberBytes, NumberGrammar};

/// One bit per byte for each class of byte the index distinguishes: `W` is `u64` for one
/// 64-byte block, or [`Lanes`] for a chunk of eight blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Classes<W> {
    quote: W,
    /// A backslash or a byte below 0x20 (tab, line feed and carriage return included): none
    /// may stand in a string the index vouches for.
    escape: W,
    /// Bytes that may not stand outside strings: all but whitespace (space, tab, line feed,
    /// carriage return), `"`, `,`, `:`, `[`, `]`, `}` and the bytes of numbers.
    other: W,
    close_brace: W,
    open_bracket: W,
    close_bracket: W,
    comma: W,
    colon: W,
    digit: W,
    zero: W,
    dot: W,
    /// `e` or `E`.
    exp: W,
    minus: W,
    plus: W,
    /// Not zero when a byte is above 0x7F (which bits are set is the classifier's choice): not
    /// a class of the grammar (outside strings such bytes are `other`), only collected to tell
    /// whether the map's UTF-8 needs checking.
    high: W,
}

/// Calls macro `$m` with the names of the classes (macros, not closures, inline into
/// functions compiled for other CPU features).
macro_rules! each_class {
    ($m:ident) => {
        $m!(
            quote,
            escape,
            other,
            close_brace,
            open_bracket,
            close_bracket,
            comma,
            colon,
            digit,
            zero,
            dot,
            exp,
            minus,
            plus
        )
    };
}

/// Where the keys of the last indexed object are, as byte offsets; reused across objects.
/// Where a value ends is not recorded: in a map the index vouched for, it follows from the
/// next key with a short scan back (only whitespace and one comma between a value and the
/// next key), which the engine does only for the members it keeps.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// For each member in order: its key's opening and closing quotes. Only
    /// the first `found` are this object's; the rest is room the scan writes into (a chunk's
    /// worth and sixteen more), so that positions go straight to their place.
    spans: Vec<u32>,
    /// How many of `spans` hold positions.
    found: usize,
    /// Whether the map has bytes above 0x7F (in its strings), which are not checked here.
    pub(super) high: bool,
}

impl Members {
    /// Each member's key bounds, quotes included.
    pub(super) fn keys(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.quotes()
            .iter()
            .map(|&[start, close]| (start as usize, close as usize + 1))
    }

    /// Each member's key quotes: the offsets of its opening and closing quote.
    pub(super) fn quotes(&self) -> &[[u32; 2]] {
        self.spans[..self.found].as_chunks::<2>().0
    }

    /// Offset of the first member's key.
    pub(super) fn first(&self) -> usize {
        self.spans[0] as usize
    }

    pub(super) fn len(&self) -> usize {
        self.found / 2
    }

    /// One past the value of member `i` of the object that ends at `end` (one past its `}`):
    /// back from the next key (or the `}`) over whitespace, the comma, whitespace.
    #[inline(always)]
    pub(super) fn value_end(&self, bytes: &[u8], i: usize, end: usize) -> usize {
        let space = |mut at: usize| {
            while matches!(bytes[at - 1], b' ' | b'\n' | b'\r' | b'\t') {
                at -= 1;
            }
            at
        };
        let next = self.spans[..self.found]
            .get(2 * (i + 1))
            .map_or(end - 1, |&k| k as usize);
        // Mostly, a comma stands right after the value and right before the next key.
        if let [.., before, b','] = bytes[..next] {
            if !matches!(before, b' ' | b'\n' | b'\r' | b'\t') {
                return next - 1;
            }
        }
        let at = space(next);
        if bytes[at - 1] == b',' {
            space(at - 1)
        } else {
            at
        }
    }
}

/// The longest body whose key positions are written one at a time ([`positions_loop`]). The
/// loop's exit in each block is a branch on how many keys the block holds: over a long
/// body's many blocks it is mispredicted often enough that eight writes per block whatever
/// the count ([`positions_unrolled`]) are faster; over a short body the loop is.
const LOOPED_BODY: usize = 16 * 1024;

/// How far ahead of the scan the body is asked into the cache, in bytes.
const PREFETCH_AHEAD: usize = 2048;

/// Indexes the object whose `{` is at `open`. Returns the offset one past its `}` with
/// `members` filled, or `None` (members unspecified) when the cursor must decide.
pub(super) fn index(bytes: &[u8], open: usize, members: &mut Members) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(cpu) = Avx512::get() {
            return cpu.index(bytes, open, members);
        }
        if let Some(cpu) = Avx2::get() {
            return cpu.index(bytes, open, members);
        }
    }
    let _ = (bytes, open, members);
    None
}

/// Which index runs here: `"avx512"` (see [`Avx512`]), `"avx2"` (see [`Avx2`]), or `None`
/// (the cursor alone).
pub(super) fn runs() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if Avx512::get().is_some() {
            return Some("avx512");
        }
        if Avx2::get().is_some() {
            return Some("avx2");
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
use super::cpu::{Avx2, Avx512};

/// Whether the key positions in `bytes` are written by [`positions_unrolled`] rather than
/// [`positions_loop`] (see [`LOOPED_BODY`]). Each way has its own compiled scan.
fn unrolled(bytes: &[u8]) -> bool {
    bytes.len() > LOOPED_BODY
}

/// The scan over chunks of `L::BLOCKS` blocks; `L` does the classifying and the lane
/// arithmetic, on the CPU `cpu` vouches for. `UNROLLED` as [`unrolled`] says.
#[inline(always)]
fn scan<L: Lanes, const UNROLLED: bool>(
    cpu: L::Cpu,
    bytes: &[u8],
    open: usize,
    members: &mut Members,
) -> Option<usize> {
    let chunk_len = 64 * L::BLOCKS;
    if bytes.len() >= u32::MAX as usize - chunk_len {
        return None;
    }
    // A small map would pay for eight blocks: its first chunk stops after the first block
    // holding a `}`; the blocks after it count as control bytes. If that `}` was in a string,
    // the map is not over and those bytes fail it: then it is scanned again, whole chunks only.
    for short in [true, false] {
        members.found = 0;
        let mut state = State::<L>::new(cpu);
        let mut at = open + 1;
        // The grammar reads one chunk while the next is classified into the other: it then
        // loads masks whose stores are done, where loading a chunk just stored waited for them.
        let mut chunks = [L::Chunk::default(), L::Chunk::default()];
        let mut high = 0;
        let mut filled = classify_chunk::<L>(cpu, bytes, at, &mut chunks[0], short, &mut high)?;
        let mut current = 0;
        while at < bytes.len() {
            // The body has just come off the socket, mostly beyond L2: ask for the chunk four
            // ahead (-10 % trim time per tfs-rows request end to end; no change measurable in
            // the bench, which reads the same body again and again).
            #[cfg(target_arch = "x86_64")]
            let ahead = at + PREFETCH_AHEAD;
            if let Some(ahead) = bytes.get(ahead..ahead + chunk_len) {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                for line in ahead.chunks(64) {
                    // SAFETY: a prefetch is a hint, of bytes of `bytes`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
            }
            // Room for every position this chunk can hold, and sixteen slots more.
            let room = members.found + chunk_len + 16;
            if members.spans.len() < room {
                members.spans.resize(room.max(2 * members.spans.len()), 0);
            }
            let next = at + chunk_len;
            // Only the first chunk is ever short, and a short one is the last.
            let (mut next_filled, mut next_high) = (0, 0);
            if filled == L::BLOCKS && next < bytes.len() {
                let chunk = &mut chunks[current ^ 1];
                next_filled = classify_chunk::<L>(cpu, bytes, next, chunk, false, &mut next_high)?;
            }
            match state.step(cpu, &chunks[current], at as u32, members, UNROLLED) {
                Some(None) => at = next,
                Some(Some(end)) => {
                    // The grammar kept bytes above 0x7F inside strings; the caller checks them.
                    members.high = high != 0;
                    return finish(members, at + end);
                }
                None if filled < L::BLOCKS => break,
                None => return None,
            }
            (filled, current) = (next_filled, current ^ 1);
            high |= next_high;
        }
    }
    None
}

/// Classifies the chunk at `at` into `chunk`, and ORs its bytes above 0x7F into `high`.
/// Returns how many blocks were read: all, unless `short` and a block may hold a `}`, after
/// which the rest count as control bytes.
#[inline(always)]
fn classify_chunk<L: Lanes>(
    cpu: L::Cpu,
    bytes: &[u8],
    at: usize,
    chunk: &mut L::Chunk,
    short: bool,
    high: &mut u64,
) -> Option<usize> {
    if !short {
        if let Some(whole) = bytes.get(at..at + 64 * L::BLOCKS) {
            // One bounds check for the whole chunk (and on AVX2 the tables loaded once).
            *high |= L::classify_all(cpu, whole.as_chunks::<64>().0, chunk);
            return Some(L::BLOCKS);
        }
    }
    for j in 0..L::BLOCKS {
        let from = at + 64 * j;
        *high |= match bytes.get(from..from + 64) {
            Some(block) => L::classify(cpu, block.try_into().ok()?, chunk, j),
            None => {
                // Zero padding: a control byte, so a map not over before it fails.
                let tail = bytes.get(from.min(bytes.len())..)?;
                let mut block = [0u8; 64];
                block[..tail.len()].copy_from_slice(tail);
                L::classify(cpu, &block, chunk, j)
            }
        };
        if short && L::closes(chunk, j) {
            // A branch: a fill of nothing still called memset, which cleared the vector
            // registers' upper halves.
            if j + 1 < L::BLOCKS {
                L::unread(chunk, j + 1);
            }
            return Some(j + 1);
        }
    }
    Some(L::BLOCKS)
}

/// At least two members (a single `{"b64": ...}` member is a value, not a map, which the
/// cursor tells apart). The key bounds pair up: no colon or member comma stands in a string,
/// so a key's closing quote is on the key side with its opening one.
fn finish(members: &Members, end: usize) -> Option<usize> {
    (members.found >= 4).then_some(end + 1)
}

/// The flags of a byte, as simdjson's stage 1 classifies: `LOW_NIBBLE[b & 15] &
/// HIGH_NIBBLE[b >> 4]` (two table lookups of sixteen bytes, one instruction each on a vector
/// of bytes). Each of the bits in [`OUTSIDE`] stands for the bytes of one high nibble that may
/// stand outside strings (0: tab, line feed, carriage return; 2: space, `"+,-.`; 3: digits and
/// `:`; 4 and 6: `E` and `e`; 5: `[` and `]`; 7: `}`): a byte with none of them is `other`.
/// The bits in [`ESCAPE`] are a byte below 0x20 (0x40) and the backslash (0x80).
const LOW_NIBBLE: [u8; 16] = [
    0x46, 0x44, 0x46, 0x44, 0x44, 0x4c, 0x44, 0x44, 0x44, 0x45, 0x45, 0x52, 0xc2, 0x73, 0x42, 0x40,
];
/// See [`LOW_NIBBLE`]; high nibbles from 8 have no flags.
const HIGH_NIBBLE: [u8; 16] = [
    0x41, 0x40, 0x02, 0x04, 0x08, 0x90, 0x08, 0x20, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// The flags of bytes that may stand outside strings (see [`LOW_NIBBLE`]).
const OUTSIDE: u8 = 0x3f;
/// The flags of bytes that may not stand in strings (see [`LOW_NIBBLE`]).
const ESCAPE: u8 = 0xc0;

/// A code of four bits (4 to 7) per byte, `CODE_LOW[b & 15] & CODE_HIGH[b >> 4]`, that tells
/// the grammar's classes apart for the bytes that are neither `other` nor a quote, where a mask
/// per class would cost a classifier that makes masks one at a time (AVX2) one per class. Each
/// bit is a set of low nibbles by a set of high nibbles; codes as bits 7 to 4: `+` 0000, `,`
/// 0001, `.` 0010, `-` 0011, `0` 0100, `1`-`9` 0101, `e` and `E` 0111, `[` 1000, `]` 1001, `}`
/// 1011, `:` 1100, whitespace 0110 (space and tab), 1110 (line feed) or 1010 (carriage
/// return), which no class has. What other bytes get does not matter: a quote is masked out,
/// and an `other` byte fails the map wherever the grammar looks at its class.
const CODE_LOW: [u8; 16] = [
    0x60, 0x50, 0x50, 0x50, 0x50, 0x70, 0x50, 0x50, 0x50, 0x70, 0xe0, 0x80, 0x10, 0xb0, 0x20, 0x00,
];
/// See [`CODE_LOW`].
const CODE_HIGH: [u8; 16] = [
    0xe0, 0x00, 0x70, 0xd0, 0x70, 0x90, 0x70, 0xb0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// The classes from the quotes, escapes and `other` bytes and the four bit masks of the code
/// of [`CODE_LOW`] (bit 4 first); `ones` is the mask of all ones.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn decode<M: Bits>(
    [quote, escape, other]: [M; 3],
    [c0, c1, c2, c3]: [M; 4],
    ones: M,
    high: M,
) -> Classes<M> {
    // 00xx: `+`, `,`, `.`, `-`; 10xx: `[`, `]`, `}`.
    let signs = c3.xor(ones).but(c2);
    let signs_1 = signs.and(c1);
    let brackets = c3.but(c2);
    let digit = c2.but(c3).but(c1);
    Classes {
        quote,
        escape,
        other,
        close_brace: brackets.and(c1).and(c0),
        open_bracket: brackets.but(c1).but(c0),
        close_bracket: brackets.and(c0).but(c1),
        comma: signs.and(c0).but(c1),
        colon: c3.and(c2).but(c1),
        digit,
        zero: digit.but(c0),
        dot: signs_1.but(c0),
        exp: c2.and(c1).and(c0),
        minus: signs_1.and(c0),
        plus: signs.but(c1).but(c0),
        high,
    }
}

/// Classifies a block byte by byte: the reference for the vector classifiers.
#[cfg(test)]
fn classify_bytewise(block: &[u8; 64]) -> Classes<u64> {
    let mut k = Classes::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        let class = match b {
            b'"' => Some(&mut k.quote),
            b'\\' => Some(&mut k.escape),
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
            b' ' | b'\t' | b'\n' | b'\r' => None,
            _ => Some(&mut k.other),
        };
        if let Some(class) = class {
            *class |= bit;
        }
        if b == b'\\' {
            k.other |= bit;
        }
        if b < 0x20 {
            k.escape |= bit;
        }
        if b > 0x7f {
            k.high |= bit;
        }
        if b == b'0' {
            k.zero |= bit;
        }
    }
    k
}

/// One 64-bit word per block of a chunk of [`Lanes::BLOCKS`] blocks (bit `i` of lane `j` is
/// byte `64 * j + i`), and the block classifier that goes with them. The grammar is written
/// once over this.
trait Lanes: Bits {
    /// What vouches for the instructions the lanes run (a lane value exists only with one).
    type Cpu: Copy;
    /// The lanes as plain words.
    type Words: Copy + Default + AsRef<[u64]> + AsMut<[u64]>;
    /// Blocks per chunk, eight at most (sets of lanes are `u8`s).
    const BLOCKS: usize;
    /// What the classifier leaves of a chunk's blocks until they are loaded into lanes.
    type Chunk: Default;
    /// Classifies `block` as block `j` of `chunk`; returns its [`Classes::high`].
    fn classify(cpu: Self::Cpu, block: &[u8; 64], chunk: &mut Self::Chunk, j: usize) -> u64;
    /// Classifies `blocks`, all of a chunk's, into `chunk`; returns their [`Classes::high`]
    /// ORed.
    #[inline(always)]
    fn classify_all(cpu: Self::Cpu, blocks: &[[u8; 64]], chunk: &mut Self::Chunk) -> u64 {
        let mut high = 0;
        for (j, block) in blocks.iter().enumerate() {
            high |= Self::classify(cpu, block, chunk, j);
        }
        high
    }
    /// Whether block `j` of `chunk` may hold a `}` (in a string or not): a small map's first
    /// chunk stops after it.
    fn closes(chunk: &Self::Chunk, j: usize) -> bool;
    /// Blocks from `from` on count as control bytes.
    fn unread(chunk: &mut Self::Chunk, from: usize);
    /// The chunk's quotes, one lane per block.
    fn quotes(cpu: Self::Cpu, chunk: &Self::Chunk) -> Self;
    /// The chunk's classes, one lane per block, with the bytes of `strings` in none of the
    /// classes the grammar looks at outside strings (all but `quote`, `escape` and `other`).
    fn load(cpu: Self::Cpu, chunk: &Self::Chunk, strings: Self) -> Classes<Self>;
    fn from_words(cpu: Self::Cpu, words: Self::Words) -> Self;
    fn words(self) -> Self::Words;
    fn splat(cpu: Self::Cpu, x: u64) -> Self;
    /// Bit `i` set where the bits up to `i`, in this and all earlier lanes and chunks, have
    /// odd parity; `carry` holds the previous chunk's result.
    fn prefix_xor(self, carry: &mut Self) -> Self;
    /// The lowest set bit of each lane.
    fn lowest(self) -> Self;
    /// For each lane holding one bit: that bit and all below it; all ones for zero lanes.
    fn through(self) -> Self;
    /// Lanes with any bit set.
    fn nonzero(self) -> u8;
    /// Lanes not in `lanes` cleared.
    fn keep(self, lanes: u8) -> Self;
}

/// [`Lanes::classify`] for lanes whose classifier gives every class: each class of the block
/// goes straight to its lane.
#[inline(always)]
fn set_classes<W: AsMut<[u64]>>(chunk: &mut Classes<W>, j: usize, classes: Classes<u64>) -> u64 {
    macro_rules! set {
        ($($field:ident),*) => { $(chunk.$field.as_mut()[j] = classes.$field;)* };
    }
    each_class!(set);
    classes.high
}

/// [`Lanes::unread`] for lanes whose classifier gives every class.
#[inline(always)]
fn unread_classes<W: AsMut<[u64]>>(chunk: &mut Classes<W>, from: usize) {
    chunk.escape.as_mut()[from..].fill(!0);
    chunk.other.as_mut()[from..].fill(!0);
}

/// [`Lanes::load`] for lanes whose classifier gives every class.
#[inline(always)]
fn load_classes<L: Lanes>(cpu: L::Cpu, chunk: &Classes<L::Words>, strings: L) -> Classes<L> {
    let outside = |words| L::from_words(cpu, words).but(strings);
    Classes {
        quote: L::from_words(cpu, chunk.quote),
        escape: L::from_words(cpu, chunk.escape),
        other: L::from_words(cpu, chunk.other),
        close_brace: outside(chunk.close_brace),
        open_bracket: outside(chunk.open_bracket),
        close_bracket: outside(chunk.close_bracket),
        comma: outside(chunk.comma),
        colon: outside(chunk.colon),
        digit: outside(chunk.digit),
        zero: outside(chunk.zero),
        dot: outside(chunk.dot),
        exp: outside(chunk.exp),
        minus: outside(chunk.minus),
        plus: outside(chunk.plus),
        high: L::splat(cpu, 0),
    }
}

/// The lane arithmetic of four or eight lanes in one value, which [`Lanes`] on them is made of.
trait Wide: Lanes<Carry = u8> {
    fn shl<const N: u32>(self) -> Self;
    /// Bit 63 moved to bit 0.
    fn top(self) -> Self;
    /// All ones where bit 63 is set.
    fn spread_top(self) -> Self;
    /// Lane `j - n` in lane `j`; the lowest `n` lanes from the highest of `below` (all of
    /// `below` when there are `n` lanes or fewer).
    fn up1(self, below: Self) -> Self;
    fn up2(self, below: Self) -> Self;
    fn up4(self, below: Self) -> Self;
    /// Lane-wise sum with `o`, whose bits are within `self`, and the lanes that carried out.
    fn add(self, o: Self) -> (Self, u8);
    /// Adds one in `lanes`; returns the lanes that wrapped to zero.
    fn inc(self, lanes: u8) -> (Self, u8);
}

/// [`Bits::later`] for lanes: bit 0 of lane 0 from the previous chunk's last byte.
#[inline(always)]
fn later<L: Wide>(x: L, before: L) -> L {
    x.shl::<1>().or(x.up1(before).top())
}

/// [`Bits::add_carried`] for lanes: carries between lanes, and from the previous chunk's top
/// lane (`carry` is 1 when it carried out); `seeds` are within `run`, as in `json.rs`.
#[inline(always)]
fn add_carried<L: Wide>(run: L, seeds: L, carry: &mut u8) -> L {
    let top = L::BLOCKS - 1;
    let all = ((1u16 << L::BLOCKS) - 1) as u8;
    let (mut sum, carried) = run.add(seeds);
    let mut out = carried >> top;
    let mut lanes = ((carried << 1) | *carry) & all;
    // One round, unless a carry enters a lane whose bits are all set.
    while lanes != 0 {
        let (next, wrapped) = sum.inc(lanes);
        sum = next;
        out |= wrapped >> top;
        lanes = (wrapped << 1) & all;
    }
    *carry = out;
    sum
}

/// [`Lanes::prefix_xor`] for four or eight lanes.
#[inline(always)]
fn prefix_xor<L: Wide>(x: L, carry: &mut L) -> L {
    let zero = x.xor(x);
    let mut x = x;
    x = x.xor(x.shl::<1>());
    x = x.xor(x.shl::<2>());
    x = x.xor(x.shl::<4>());
    x = x.xor(x.shl::<8>());
    x = x.xor(x.shl::<16>());
    x = x.xor(x.shl::<32>());
    let mut before = x.spread_top().up1(carry.spread_top());
    before = before.xor(before.up1(zero));
    before = before.xor(before.up2(zero));
    before = before.xor(before.up4(zero));
    let x = x.xor(before);
    *carry = x;
    x
}

/// Everything carried from one chunk to the next.
struct State<L: Lanes> {
    in_string: L,
    in_array: L,
    /// Parity of the atoms and separators so far (see `step`).
    turn: L,
    /// Parity of the colons and the commas between members so far (see `step`).
    value_side: L,
    /// The previous chunk's `[`s, for a `[]` across chunks.
    open_bracket: L,
    numbers: NumberGrammar<L>,
}

impl<L: Lanes> State<L> {
    fn new(cpu: L::Cpu) -> Self {
        let zero = L::splat(cpu, 0);
        State {
            in_string: zero,
            in_array: zero,
            turn: zero,
            value_side: zero,
            open_bracket: zero,
            numbers: NumberGrammar::new(zero),
        }
    }

    /// Checks one chunk at offset `base` and records the member boundaries in it (with
    /// [`positions_unrolled`] if `unrolled`, else [`positions_loop`]). `None`: the cursor
    /// must decide; `Some(None)`: the object goes on; `Some(Some(i))`: its `}` is at
    /// `base + i`.
    ///
    /// The order of tokens is checked with two parities instead of following each token to
    /// the next one past whitespace. Atoms (a string, a number, an empty array) and
    /// separators (`:`, `,`, `}`) must alternate, starting with an atom after the `{`: the
    /// parity of all of them so far (`turn`) is odd just after an atom and even just after a
    /// separator, so an atom where it is odd or a separator where it is even breaks the
    /// object. A non-empty array counts as its elements and commas: `[` stands where an atom
    /// may, `]` where a separator may. Which atoms are keys follows from the parity of the
    /// colons and the member commas (`value_side`): keys stand where it is even, and must be
    /// strings; a colon must make it odd, a member comma or the `}` must find it odd.
    #[inline(always)]
    fn step(
        &mut self,
        cpu: L::Cpu,
        chunk: &L::Chunk,
        base: u32,
        members: &mut Members,
        unrolled: bool,
    ) -> Option<Option<usize>> {
        // Strings: with no backslash, quotes alternate open and close.
        let quote = L::quotes(cpu, chunk);
        let in_string = quote.prefix_xor(&mut self.in_string);
        let open_quote = quote.and(in_string);
        let string_or_quote = in_string.or(quote);
        let k = L::load(cpu, chunk, string_or_quote);
        let Classes {
            close_brace,
            open_bracket,
            close_bracket,
            comma,
            colon,
            digit,
            zero,
            dot,
            exp,
            minus,
            plus,
            ..
        } = k;
        // Arrays: with no nesting, brackets alternate open and close (checked below).
        let in_array = open_bracket
            .or(close_bracket)
            .prefix_xor(&mut self.in_array);
        let member_comma = comma.but(in_array);
        let value_side = colon.or(member_comma).prefix_xor(&mut self.value_side);
        // Members: their keys' quotes, the only quotes where `value_side` is even.
        let key_quotes = quote.but(value_side);
        let separators = comma.or(colon).or(close_brace);
        // What the numbers do not change is checked before them, so that fewer masks live
        // across them: a `[` that closes (nested) or a `]` that opens; `:` or `}` in an array;
        // a member comma that makes `value_side` odd, or `:`, `}` or `[` where it is even.
        // Each is one mask of two kinds of bytes against the parity flipped for one kind.
        let outside_array = close_bracket.or(colon).or(close_brace);
        let bad = k
            .escape
            .and(in_string)
            .or(k.other.but(string_or_quote))
            .or(open_bracket
                .or(outside_array)
                .but(in_array.xor(outside_array)))
            .or(member_comma
                .or(colon)
                .or(close_brace)
                .or(open_bracket)
                .but(value_side.xor(member_comma)));
        // Against `turn` (which neither counts), a `[` is checked as a separator is, `turn`
        // even at it, and a `]` as an atom is, `turn` odd at it (the `]` of `[]` is an atom).
        let separator_like = separators.or(open_bracket);
        let tokens = open_quote.or(close_bracket).or(separator_like);
        let opens_before = std::mem::replace(&mut self.open_bracket, open_bracket);

        let token = digit.or(dot).or(exp).or(minus).or(plus);
        let numbers = self.numbers.step(NumberBytes {
            token,
            digit,
            zero,
            dot,
            exp,
            minus,
            plus,
        });
        let atoms = open_quote.or(numbers.starts);
        let turn_before = self.turn;
        let mut turn = atoms.or(separators).prefix_xor(&mut self.turn);
        // The `]` of `[]` (nothing between the brackets) is an atom of its own. Only there
        // does a `]` of a valid object find `turn` even before counting it (it follows a
        // separator, where others follow an atom): then `turn` is taken again with it.
        if close_bracket.but(turn).nonzero() != 0 {
            let empty = open_bracket.later(opens_before).and(close_bracket);
            self.turn = turn_before;
            turn = atoms.or(empty).or(separators).prefix_xor(&mut self.turn);
        }
        // Atoms where `turn` is even, separators where it is odd; numbers on the key side.
        let mut bad = bad
            .or(tokens.or(numbers.starts).but(turn.xor(separator_like)))
            .or(numbers.starts.but(value_side))
            .or(numbers.wrong);
        let mut key_quotes = key_quotes;
        let mut lanes = L::BLOCKS;
        let mut end = None;
        let end_lanes = close_brace.nonzero();
        if end_lanes != 0 {
            // Only the chunk of the `}` has bytes past the object, which nothing is asked of.
            // Live: up to and including the first `}` outside strings.
            let lane = end_lanes.trailing_zeros() as usize;
            let ends = close_brace.lowest();
            let live = ends.through().keep(((2u16 << lane) - 1) as u8);
            bad = bad.and(live);
            key_quotes = key_quotes.and(live);
            lanes = lane + 1;
            end = Some(64 * lane + ends.words().as_ref()[lane].trailing_zeros() as usize);
        }
        if bad.nonzero() != 0 {
            return None;
        }

        let key_quotes = key_quotes.words();
        let mut n = members.found;
        for j in 0..lanes {
            let base = base + 64 * j as u32;
            let bits = key_quotes.as_ref()[j];
            n = if unrolled {
                positions_unrolled(bits, base, &mut members.spans, n)
            } else {
                positions_loop(bits, base, &mut members.spans, n)
            };
        }
        members.found = n;
        Some(end)
    }
}

/// Portable lanes, plain words: the same grammar runs in tests on any CPU.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Words([u64; 8]);

#[cfg(test)]
impl Words {
    #[inline(always)]
    fn map2(self, o: Self, f: impl Fn(u64, u64) -> u64) -> Self {
        Words(std::array::from_fn(|j| f(self.0[j], o.0[j])))
    }

    #[inline(always)]
    fn up(self, below: Self, n: usize) -> Self {
        Words(std::array::from_fn(|j| {
            if j >= n {
                self.0[j - n]
            } else {
                below.0[8 - n + j]
            }
        }))
    }

    #[inline(always)]
    fn lanes(f: impl Fn(usize) -> bool) -> u8 {
        (0..8).filter(|&j| f(j)).fold(0, |m, j| m | 1 << j)
    }
}

#[cfg(test)]
impl Bits for Words {
    type Carry = u8;
    fn and(self, o: Self) -> Self {
        self.map2(o, |a, b| a & b)
    }
    fn or(self, o: Self) -> Self {
        self.map2(o, |a, b| a | b)
    }
    fn xor(self, o: Self) -> Self {
        self.map2(o, |a, b| a ^ b)
    }
    fn but(self, o: Self) -> Self {
        self.map2(o, |a, b| a & !b)
    }
    fn later(self, before: Self) -> Self {
        later(self, before)
    }
    fn add_carried(self, seeds: Self, carry: &mut u8) -> Self {
        add_carried(self, seeds, carry)
    }
}

#[cfg(test)]
impl Lanes for Words {
    /// Plain words run on any CPU.
    type Cpu = ();
    type Words = [u64; 8];
    type Chunk = Classes<[u64; 8]>;
    const BLOCKS: usize = 8;
    fn classify((): (), block: &[u8; 64], chunk: &mut Self::Chunk, j: usize) -> u64 {
        set_classes(chunk, j, classify_bytewise(block))
    }
    fn closes(chunk: &Self::Chunk, j: usize) -> bool {
        chunk.close_brace[j] != 0
    }
    fn unread(chunk: &mut Self::Chunk, from: usize) {
        unread_classes(chunk, from)
    }
    fn quotes((): (), chunk: &Self::Chunk) -> Self {
        Words(chunk.quote)
    }
    fn load((): (), chunk: &Self::Chunk, strings: Self) -> Classes<Self> {
        load_classes((), chunk, strings)
    }
    fn from_words((): (), words: [u64; 8]) -> Self {
        Words(words)
    }
    fn words(self) -> [u64; 8] {
        self.0
    }
    fn splat((): (), x: u64) -> Self {
        Words([x; 8])
    }
    fn prefix_xor(self, carry: &mut Self) -> Self {
        prefix_xor(self, carry)
    }
    fn lowest(self) -> Self {
        Words(self.0.map(|a| a & a.wrapping_neg()))
    }
    fn through(self) -> Self {
        Words(self.0.map(|a| a | a.wrapping_sub(1)))
    }
    fn nonzero(self) -> u8 {
        Words::lanes(|j| self.0[j] != 0)
    }
    fn keep(self, lanes: u8) -> Self {
        Words(std::array::from_fn(|j| {
            if lanes >> j & 1 == 1 {
                self.0[j]
            } else {
                0
            }
        }))
    }
}

#[cfg(test)]
impl Wide for Words {
    fn shl<const N: u32>(self) -> Self {
        Words(self.0.map(|a| a << N))
    }
    fn top(self) -> Self {
        Words(self.0.map(|a| a >> 63))
    }
    fn spread_top(self) -> Self {
        Words(self.0.map(|a| ((a as i64) >> 63) as u64))
    }
    fn up1(self, below: Self) -> Self {
        self.up(below, 1)
    }
    fn up2(self, below: Self) -> Self {
        self.up(below, 2)
    }
    fn up4(self, below: Self) -> Self {
        self.up(below, 4)
    }
    fn add(self, o: Self) -> (Self, u8) {
        let sum = self.map2(o, u64::wrapping_add);
        (sum, Words::lanes(|j| sum.0[j] < self.0[j]))
    }
    fn inc(self, lanes: u8) -> (Self, u8) {
        let sum = Words(std::array::from_fn(|j| {
            self.0[j].wrapping_add(u64::from(lanes >> j & 1))
        }));
        (sum, Words::lanes(|j| lanes >> j & 1 == 1 && sum.0[j] == 0))
    }
}

/// Writes `base + i` for each set bit `i` of `bits` to `out` from `n` on, one bit at a time,
/// and returns the new `n`.
#[inline(always)]
fn positions_loop(mut bits: u64, base: u32, out: &mut [u32], mut n: usize) -> usize {
    while bits != 0 {
        out[n] = base + bits.trailing_zeros();
        n += 1;
        bits &= bits - 1;
    }
    n
}

/// [`positions_loop`] with eight slots written whatever the count (a branch only for denser
/// words), so up to eight past the new `n`; `out` needs sixteen slots from `n`, or as many
/// as `bits` has set when more. Each step clears the bit its `tzcnt` found: with `blsr`
/// instead, the compiler turns the eight `tzcnt`s into a vector popcount sequence. Each slot
/// is one volatile store: plain stores the compiler gathered into a vector with `vpinsrd`,
/// shuffles that compete with the index's own for the same port.
#[inline(always)]
fn positions_unrolled(mut bits: u64, base: u32, out: &mut [u32], n: usize) -> usize {
    let count = bits.count_ones() as usize;
    let Some(slots) = out.get_mut(n..n + 16) else {
        return positions_slow(bits, base, out, n);
    };
    let mut write = |slots: &mut [u32]| {
        for slot in slots {
            let at = bits.trailing_zeros();
            // SAFETY: `slot` is a `&mut u32`, valid and aligned for the write.
            unsafe { std::ptr::write_volatile(slot, base + at) };
            bits &= !1u64.wrapping_shl(at);
        }
    };
    write(&mut slots[..8]);
    if count > 8 {
        write(&mut slots[8..]);
        if count > 16 {
            let mut i = n + 16;
            while bits != 0 {
                out[i] = base + bits.trailing_zeros();
                bits &= bits - 1;
                i += 1;
            }
        }
    }
    n + count
}

/// Never taken (the caller leaves sixteen slots of room), but a slice index is not proof.
#[cold]
fn positions_slow(mut bits: u64, base: u32, out: &mut [u32], mut n: usize) -> usize {
    while bits != 0 {
        out[n] = base + bits.trailing_zeros();
        n += 1;
        bits &= bits - 1;
    }
    n
}

/// What a CPU must provide to run the grammar one block at a time ([`Word`]): the block
/// classifier and a prefix xor. The x86 AVX2 one is in `avx2` (whose index runs four blocks
/// per step in a vector register, `avx2::Ymm`, with this classifier); NEON would be another.
trait Classify: Copy {
    fn classify(self, block: &[u8; 64]) -> Classes<u64>;
    /// Bit `i` set where bits `0..=i` of `x` have odd parity.
    #[cfg_attr(not(test), allow(dead_code))]
    fn prefix_xor(self, x: u64) -> u64;
}

/// The lanes as one `u64`: one block per chunk, the grammar in scalar instructions (carries
/// and shifts across blocks are plain word arithmetic), classified by `C`. The shape for a
/// CPU whose vectors are narrower than four words (NEON); on x86 only tests run it (AVX2
/// runs four blocks per step: ~20 % fewer instructions per map).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy)]
struct Word<C> {
    bits: u64,
    cpu: C,
}

#[cfg_attr(not(test), allow(dead_code))]
impl<C: Copy> Word<C> {
    #[inline(always)]
    fn with(self, bits: u64) -> Self {
        Word {
            bits,
            cpu: self.cpu,
        }
    }
}

impl<C: Copy> Bits for Word<C> {
    /// 0 or 1: in a register, where a `bool` went through flags and byte registers.
    type Carry = u64;
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        self.with(self.bits & o.bits)
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        self.with(self.bits | o.bits)
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        self.with(self.bits ^ o.bits)
    }
    #[inline(always)]
    fn but(self, o: Self) -> Self {
        self.with(self.bits & !o.bits)
    }
    #[inline(always)]
    fn later(self, before: Self) -> Self {
        self.with(self.bits.later(before.bits))
    }
    #[inline(always)]
    fn add_carried(self, seeds: Self, carry: &mut u64) -> Self {
        let (a, b) = (self.bits, seeds.bits);
        let sum = a.wrapping_add(b).wrapping_add(*carry);
        // A full adder's carry out of the top bit.
        *carry = ((a & b) | ((a | b) & !sum)) >> 63;
        self.with(sum)
    }
}

impl<C: Classify> Lanes for Word<C> {
    type Cpu = C;
    type Words = [u64; 1];
    type Chunk = Classes<[u64; 1]>;
    const BLOCKS: usize = 1;
    #[inline(always)]
    fn classify(cpu: C, block: &[u8; 64], chunk: &mut Self::Chunk, j: usize) -> u64 {
        set_classes(chunk, j, cpu.classify(block))
    }
    #[inline(always)]
    fn closes(chunk: &Self::Chunk, j: usize) -> bool {
        chunk.close_brace[j] != 0
    }
    #[inline(always)]
    fn unread(chunk: &mut Self::Chunk, from: usize) {
        unread_classes(chunk, from)
    }
    #[inline(always)]
    fn quotes(cpu: C, chunk: &Self::Chunk) -> Self {
        Self::from_words(cpu, chunk.quote)
    }
    #[inline(always)]
    fn load(cpu: C, chunk: &Self::Chunk, strings: Self) -> Classes<Self> {
        load_classes(cpu, chunk, strings)
    }
    #[inline(always)]
    fn from_words(cpu: C, [bits]: [u64; 1]) -> Self {
        Word { bits, cpu }
    }
    #[inline(always)]
    fn words(self) -> [u64; 1] {
        [self.bits]
    }
    #[inline(always)]
    fn splat(cpu: C, bits: u64) -> Self {
        Word { bits, cpu }
    }
    #[inline(always)]
    fn prefix_xor(self, carry: &mut Self) -> Self {
        // All ones when the previous block ended with odd parity.
        let before = ((carry.bits as i64) >> 63) as u64;
        *carry = self.with(self.cpu.prefix_xor(self.bits) ^ before);
        *carry
    }
    #[inline(always)]
    fn lowest(self) -> Self {
        self.with(self.bits & self.bits.wrapping_neg())
    }
    #[inline(always)]
    fn through(self) -> Self {
        self.with(self.bits | self.bits.wrapping_sub(1))
    }
    #[inline(always)]
    fn nonzero(self) -> u8 {
        u8::from(self.bits != 0)
    }
    #[inline(always)]
    fn keep(self, lanes: u8) -> Self {
        self.with(self.bits & (u64::from(lanes) & 1).wrapping_neg())
    }
}

/// The classifier of any CPU, byte by byte: the reference for the vector classifiers.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
struct Bytewise;

#[cfg(test)]
impl Classify for Bytewise {
    fn classify(self, block: &[u8; 64]) -> Classes<u64> {
        classify_bytewise(block)
    }
    fn prefix_xor(self, x: u64) -> u64 {
        (0..64)
            .fold((0, false), |(out, odd), i| {
                let odd = odd ^ (x >> i & 1 == 1);
                (out | u64::from(odd) << i, odd)
            })
            .0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The lanes as one AVX-512 register.
    use super::Avx512;
    use super::{
        add_carried, later, load_classes, prefix_xor, scan, set_classes, unread_classes, unrolled,
        Bits, Classes, Lanes, Members, Wide, ESCAPE, HIGH_NIBBLE, LOW_NIBBLE, OUTSIDE,
    };
    use std::arch::x86_64::*;

    impl Avx512 {
        /// [`super::index`] on AVX-512.
        #[inline]
        pub(super) fn index(
            self,
            bytes: &[u8],
            open: usize,
            members: &mut Members,
        ) -> Option<usize> {
            // SAFETY: `self` proves the CPU has the features `index` is compiled for.
            unsafe {
                if unrolled(bytes) {
                    index::<true>(self, bytes, open, members)
                } else {
                    index::<false>(self, bytes, open, members)
                }
            }
        }
    }

    #[target_feature(enable = "avx512bw,popcnt,bmi1")]
    fn index<const UNROLLED: bool>(
        cpu: Avx512,
        bytes: &[u8],
        open: usize,
        members: &mut Members,
    ) -> Option<usize> {
        scan::<Zmm, UNROLLED>(cpu, bytes, open, members)
    }

    /// The eight lanes in one register, with the proof that they may be computed on.
    #[derive(Clone, Copy)]
    pub(super) struct Zmm {
        v: __m512i,
        cpu: Avx512,
    }

    impl Zmm {
        #[inline(always)]
        fn with(self, v: __m512i) -> Zmm {
            Zmm { v, cpu: self.cpu }
        }

        /// A block's classes, each straight from a compare into a mask register.
        #[inline(always)]
        pub(super) fn classify_block(_: Avx512, block: &[u8; 64]) -> Classes<u64> {
            // SAFETY: the `Avx512` argument proves AVX-512BW; the one load reads the 64 bytes
            // of `block`, unaligned loads being allowed.
            unsafe {
                let v = _mm512_loadu_si512(block.as_ptr().cast());
                // A macro, not a closure: a closure would not inherit the CPU features.
                macro_rules! eq {
                    ($b:expr) => {
                        _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8($b as i8))
                    };
                }
                let nibble = _mm512_set1_epi8(0x0f);
                let table = |t: &[u8; 16]| _mm_loadu_si128(t.as_ptr().cast());
                let flags = _mm512_and_si512(
                    _mm512_shuffle_epi8(
                        _mm512_broadcast_i32x4(table(&LOW_NIBBLE)),
                        _mm512_and_si512(v, nibble),
                    ),
                    _mm512_shuffle_epi8(
                        _mm512_broadcast_i32x4(table(&HIGH_NIBBLE)),
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble),
                    ),
                );
                Classes {
                    quote: eq!(b'"'),
                    escape: _mm512_test_epi8_mask(flags, _mm512_set1_epi8(ESCAPE as i8)),
                    other: _mm512_testn_epi8_mask(flags, _mm512_set1_epi8(OUTSIDE as i8)),
                    high: _mm512_movepi8_mask(v),
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
        }
    }

    impl Bits for Zmm {
        type Carry = u8;
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F (part of AVX-512BW); no memory is touched.
            self.with(unsafe { _mm512_and_si512(self.v, o.v) })
        }
        #[inline(always)]
        fn or(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F (part of AVX-512BW); no memory is touched.
            self.with(unsafe { _mm512_or_si512(self.v, o.v) })
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F (part of AVX-512BW); no memory is touched.
            self.with(unsafe { _mm512_xor_si512(self.v, o.v) })
        }
        #[inline(always)]
        fn but(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F (part of AVX-512BW); no memory is touched.
            self.with(unsafe { _mm512_andnot_si512(o.v, self.v) })
        }
        #[inline(always)]
        fn later(self, before: Self) -> Self {
            later(self, before)
        }
        #[inline(always)]
        fn add_carried(self, seeds: Self, carry: &mut u8) -> Self {
            add_carried(self, seeds, carry)
        }
    }

    impl Lanes for Zmm {
        type Cpu = Avx512;
        type Words = [u64; 8];
        type Chunk = Classes<[u64; 8]>;
        const BLOCKS: usize = 8;
        #[inline(always)]
        fn classify(cpu: Avx512, block: &[u8; 64], chunk: &mut Self::Chunk, j: usize) -> u64 {
            set_classes(chunk, j, Zmm::classify_block(cpu, block))
        }
        #[inline(always)]
        fn closes(chunk: &Self::Chunk, j: usize) -> bool {
            chunk.close_brace[j] != 0
        }
        #[inline(always)]
        fn unread(chunk: &mut Self::Chunk, from: usize) {
            unread_classes(chunk, from)
        }
        #[inline(always)]
        fn quotes(cpu: Avx512, chunk: &Self::Chunk) -> Self {
            Self::from_words(cpu, chunk.quote)
        }
        #[inline(always)]
        fn load(cpu: Avx512, chunk: &Self::Chunk, strings: Self) -> Classes<Self> {
            load_classes(cpu, chunk, strings)
        }
        #[inline(always)]
        fn from_words(cpu: Avx512, words: [u64; 8]) -> Self {
            // SAFETY: `cpu` proves AVX-512F; the load reads the 64 bytes of `words`, unaligned
            // loads being allowed.
            let v = unsafe { _mm512_loadu_si512(words.as_ptr().cast()) };
            Zmm { v, cpu }
        }
        #[inline(always)]
        fn words(self) -> [u64; 8] {
            let mut words = [0u64; 8];
            // SAFETY: `self.cpu` proves AVX-512F; the store writes the 64 bytes of `words`,
            // unaligned stores being allowed.
            unsafe { _mm512_storeu_si512(words.as_mut_ptr().cast(), self.v) };
            words
        }
        #[inline(always)]
        fn splat(cpu: Avx512, x: u64) -> Self {
            // SAFETY: `cpu` proves AVX-512F; no memory is touched.
            let v = unsafe { _mm512_set1_epi64(x as i64) };
            Zmm { v, cpu }
        }
        #[inline(always)]
        fn prefix_xor(self, carry: &mut Self) -> Self {
            prefix_xor(self, carry)
        }
        #[inline(always)]
        fn lowest(self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe {
                let negated = _mm512_sub_epi64(_mm512_setzero_si512(), self.v);
                _mm512_and_si512(self.v, negated)
            })
        }
        #[inline(always)]
        fn through(self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe {
                _mm512_or_si512(self.v, _mm512_sub_epi64(self.v, _mm512_set1_epi64(1)))
            })
        }
        #[inline(always)]
        fn nonzero(self) -> u8 {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            unsafe { _mm512_test_epi64_mask(self.v, self.v) }
        }
        #[inline(always)]
        fn keep(self, lanes: u8) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_maskz_mov_epi64(lanes, self.v) })
        }
    }

    impl Wide for Zmm {
        #[inline(always)]
        fn shl<const N: u32>(self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_slli_epi64::<N>(self.v) })
        }
        #[inline(always)]
        fn top(self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_srli_epi64::<63>(self.v) })
        }
        #[inline(always)]
        fn spread_top(self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_srai_epi64::<63>(self.v) })
        }
        #[inline(always)]
        fn up1(self, below: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_alignr_epi64::<7>(self.v, below.v) })
        }
        #[inline(always)]
        fn up2(self, below: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_alignr_epi64::<6>(self.v, below.v) })
        }
        #[inline(always)]
        fn up4(self, below: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            self.with(unsafe { _mm512_alignr_epi64::<4>(self.v, below.v) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> (Self, u8) {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            let (sum, carried) = unsafe {
                let sum = _mm512_add_epi64(self.v, o.v);
                (sum, _mm512_cmplt_epu64_mask(sum, self.v))
            };
            (self.with(sum), carried)
        }
        #[inline(always)]
        fn inc(self, lanes: u8) -> (Self, u8) {
            // SAFETY: `self.cpu` proves AVX-512F; no memory is touched.
            let (sum, wrapped) = unsafe {
                let sum = _mm512_mask_add_epi64(self.v, lanes, self.v, _mm512_set1_epi64(1));
                (
                    sum,
                    _mm512_mask_cmpeq_epi64_mask(lanes, sum, _mm512_setzero_si512()),
                )
            };
            (self.with(sum), wrapped)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The classifier and prefix xor of [`Word`] on AVX2 and PCLMULQDQ.
    use super::Avx2;
    use super::{
        add_carried, decode, later, prefix_xor, scan, unrolled, Bits, Classes, Classify, Lanes,
        Members, Wide, CODE_HIGH, CODE_LOW, ESCAPE, HIGH_NIBBLE, LOW_NIBBLE, OUTSIDE,
    };
    use std::arch::x86_64::*;

    impl Avx2 {
        /// [`super::index`] on AVX2.
        #[inline]
        pub(super) fn index(
            self,
            bytes: &[u8],
            open: usize,
            members: &mut Members,
        ) -> Option<usize> {
            // SAFETY: `self` proves the CPU has the features `index` is compiled for.
            unsafe {
                if unrolled(bytes) {
                    index::<true>(self, bytes, open, members)
                } else {
                    index::<false>(self, bytes, open, members)
                }
            }
        }
    }

    #[target_feature(enable = "avx2,pclmulqdq,popcnt,bmi1")]
    fn index<const UNROLLED: bool>(
        cpu: Avx2,
        bytes: &[u8],
        open: usize,
        members: &mut Members,
    ) -> Option<usize> {
        scan::<Ymm, UNROLLED>(cpu, bytes, open, members)
    }

    /// [`super::index`] one block at a time ([`super::Word`]), the shape another CPU's classifier
    /// would run: compared with the four-lane one in tests.
    #[cfg(test)]
    #[target_feature(enable = "avx2,pclmulqdq,popcnt,bmi1")]
    pub(super) fn index_word(
        cpu: Avx2,
        bytes: &[u8],
        open: usize,
        members: &mut Members,
    ) -> Option<usize> {
        if unrolled(bytes) {
            scan::<super::Word<Avx2>, true>(cpu, bytes, open, members)
        } else {
            scan::<super::Word<Avx2>, false>(cpu, bytes, open, members)
        }
    }

    /// The masks the AVX2 classifier makes of a block, from which the lanes decode the
    /// classes four blocks at a time (see [`decode`]): a mask costs two `vpmovmskb` and their
    /// joining per block, where a bit operation in the lanes costs one per four blocks. The
    /// planes are the quotes, the escapes, the bytes `other` and the four bits of the code (see
    /// [`CODE_LOW`]).
    const PLANES: usize = 7;
    const QUOTES: usize = 0;
    const ESCAPES: usize = 1;
    const OTHERS: usize = 2;
    const CODE: usize = 3;

    /// The planes of a chunk's blocks, each as the 32-bit halves `vpmovmskb` gives, in order:
    /// a block's 64-bit lane without shifting them together.
    #[derive(Default)]
    pub(super) struct Chunk([[u32; 8]; PLANES]);

    impl Avx2 {
        /// The two halves of a block in registers.
        #[inline(always)]
        fn halves(self, block: &[u8; 64]) -> [__m256i; 2] {
            // SAFETY: `self` proves AVX2; the two loads read the 64 bytes of `block`, unaligned
            // loads being allowed.
            unsafe {
                [
                    _mm256_loadu_si256(block.as_ptr().cast()),
                    _mm256_loadu_si256(block.as_ptr().add(32).cast()),
                ]
            }
        }

        /// Not zero when a byte of the block is above 0x7F: the two halves' top bits in one
        /// mask.
        #[inline(always)]
        fn high(self, [a, b]: [__m256i; 2]) -> u32 {
            // SAFETY: `self` proves AVX2; no memory is touched.
            unsafe { _mm256_movemask_epi8(_mm256_or_si256(a, b)) as u32 }
        }

        /// The classifier's tables and constants in registers.
        #[inline(always)]
        fn tables(self) -> Tables {
            // SAFETY: `self` proves AVX2; each table load reads the 16 bytes of a table.
            unsafe {
                // A macro, not a closure: a closure would not inherit the CPU features.
                macro_rules! table {
                    ($t:expr) => {
                        _mm256_broadcastsi128_si256(_mm_loadu_si128($t.as_ptr().cast()))
                    };
                }
                Tables {
                    nibble: _mm256_set1_epi8(0x0f),
                    flags: [table!(LOW_NIBBLE), table!(HIGH_NIBBLE)],
                    code: [table!(CODE_LOW), table!(CODE_HIGH)],
                    quote: _mm256_set1_epi8(b'"' as i8),
                    outside: _mm256_set1_epi8(OUTSIDE as i8),
                }
            }
        }

        /// Classifies `block` as block `j` of `chunk`; returns its two halves.
        #[inline(always)]
        fn classify_into(
            self,
            tables: &Tables,
            block: &[u8; 64],
            chunk: &mut Chunk,
            j: usize,
        ) -> [__m256i; 2] {
            let halves = self.halves(block);
            for (h, &half) in halves.iter().enumerate() {
                for (plane, mask) in chunk.0.iter_mut().zip(self.planes(tables, half)) {
                    plane[2 * j + h] = mask;
                }
            }
            halves
        }

        /// The planes of one half block, in the order of [`PLANES`].
        #[inline(always)]
        fn planes(self, t: &Tables, v: __m256i) -> [u32; PLANES] {
            // SAFETY: `self` proves AVX2; no memory is touched.
            unsafe {
                let low = _mm256_and_si256(v, t.nibble);
                let high = _mm256_and_si256(_mm256_srli_epi16::<4>(v), t.nibble);
                // Macros, not closures: a closure would not inherit the CPU features.
                macro_rules! lookup {
                    ($tables:expr) => {
                        _mm256_and_si256(
                            _mm256_shuffle_epi8($tables[0], low),
                            _mm256_shuffle_epi8($tables[1], high),
                        )
                    };
                }
                macro_rules! mask {
                    ($e:expr) => {
                        _mm256_movemask_epi8($e) as u32
                    };
                }
                let flags = lookup!(t.flags);
                let code = lookup!(t.code);
                const _: () = assert!(ESCAPE == 0xc0);
                [
                    mask!(_mm256_cmpeq_epi8(v, t.quote)),
                    // The escape bits are the top two: the lower one moved up and the top
                    // bit taken.
                    mask!(_mm256_or_si256(flags, _mm256_add_epi8(flags, flags))),
                    mask!(_mm256_cmpeq_epi8(
                        _mm256_and_si256(flags, t.outside),
                        _mm256_setzero_si256(),
                    )),
                    // Code bits 4 to 7, each moved to the top.
                    mask!(_mm256_slli_epi16::<3>(code)),
                    mask!(_mm256_slli_epi16::<2>(code)),
                    mask!(_mm256_add_epi8(code, code)),
                    mask!(code),
                ]
            }
        }
    }

    /// The tables of [`Avx2::planes`], loaded once per chunk.
    struct Tables {
        /// 0x0f in every byte.
        nibble: __m256i,
        /// The tables of [`LOW_NIBBLE`] and [`HIGH_NIBBLE`].
        flags: [__m256i; 2],
        /// The tables of [`CODE_LOW`] and [`CODE_HIGH`].
        code: [__m256i; 2],
        /// `"` in every byte.
        quote: __m256i,
        /// [`OUTSIDE`] in every byte.
        outside: __m256i,
    }

    /// Four lanes (blocks) in one AVX2 register, with the proof that they may be computed on:
    /// the grammar's bit operations then cost one instruction per four blocks, where one block
    /// at a time in general registers they cost one each and spilled.
    #[derive(Clone, Copy)]
    pub(super) struct Ymm {
        v: __m256i,
        cpu: Avx2,
    }

    impl Ymm {
        #[inline(always)]
        fn with(self, v: __m256i) -> Ymm {
            Ymm { v, cpu: self.cpu }
        }

        /// All ones in the lanes of `lanes`: each lane compares its own bit of them.
        #[inline(always)]
        fn lane_mask(self, lanes: u8) -> __m256i {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            unsafe {
                let bits = _mm256_setr_epi64x(1, 2, 4, 8);
                let mine = _mm256_and_si256(_mm256_set1_epi64x(i64::from(lanes)), bits);
                _mm256_cmpeq_epi64(mine, bits)
            }
        }
    }

    /// Plane `i` of `chunk`, one lane per block.
    #[inline(always)]
    fn plane(cpu: Avx2, chunk: &Chunk, i: usize) -> Ymm {
        // SAFETY: `cpu` proves AVX2; the load reads the 32 bytes of one plane, unaligned loads
        // being allowed.
        let v = unsafe { _mm256_loadu_si256(chunk.0[i].as_ptr().cast()) };
        Ymm { v, cpu }
    }

    impl Bits for Ymm {
        type Carry = u8;
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_and_si256(self.v, o.v) })
        }
        #[inline(always)]
        fn or(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_or_si256(self.v, o.v) })
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_xor_si256(self.v, o.v) })
        }
        #[inline(always)]
        fn but(self, o: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_andnot_si256(o.v, self.v) })
        }
        #[inline(always)]
        fn later(self, before: Self) -> Self {
            later(self, before)
        }
        #[inline(always)]
        fn add_carried(self, seeds: Self, carry: &mut u8) -> Self {
            add_carried(self, seeds, carry)
        }
    }

    impl Lanes for Ymm {
        type Cpu = Avx2;
        type Words = [u64; 4];
        type Chunk = Chunk;
        const BLOCKS: usize = 4;
        #[inline(always)]
        fn classify(cpu: Avx2, block: &[u8; 64], chunk: &mut Chunk, j: usize) -> u64 {
            let halves = cpu.classify_into(&cpu.tables(), block, chunk, j);
            u64::from(cpu.high(halves))
        }
        #[inline(always)]
        fn classify_all(cpu: Avx2, blocks: &[[u8; 64]], chunk: &mut Chunk) -> u64 {
            let tables = cpu.tables();
            // SAFETY: `cpu` proves AVX2; no memory is touched.
            let mut any = unsafe { _mm256_setzero_si256() };
            for (j, block) in blocks.iter().enumerate() {
                let halves = cpu.classify_into(&tables, block, chunk, j);
                // SAFETY: `cpu` proves AVX2; no memory is touched.
                any = unsafe { _mm256_or_si256(any, _mm256_or_si256(halves[0], halves[1])) };
            }
            // SAFETY: `cpu` proves AVX2; no memory is touched.
            u64::from(unsafe { _mm256_movemask_epi8(any) } as u32)
        }
        #[inline(always)]
        fn closes(chunk: &Chunk, j: usize) -> bool {
            let p =
                |i: usize| u64::from(chunk.0[i][2 * j]) | u64::from(chunk.0[i][2 * j + 1]) << 32;
            let k = decode(
                [p(QUOTES), p(ESCAPES), p(OTHERS)],
                [p(CODE), p(CODE + 1), p(CODE + 2), p(CODE + 3)],
                !0,
                0,
            );
            k.close_brace.but(k.other) != 0
        }
        #[inline(always)]
        fn unread(chunk: &mut Chunk, from: usize) {
            chunk.0[ESCAPES][2 * from..].fill(!0);
            chunk.0[OTHERS][2 * from..].fill(!0);
        }
        #[inline(always)]
        fn quotes(cpu: Avx2, chunk: &Chunk) -> Ymm {
            plane(cpu, chunk, QUOTES)
        }
        #[inline(always)]
        fn load(cpu: Avx2, chunk: &Chunk, strings: Ymm) -> Classes<Ymm> {
            let p = |i: usize| plane(cpu, chunk, i);
            // The bytes of strings get code 0110 (as a space), which no class has: three
            // operations where clearing them from each class took eleven.
            decode(
                [p(QUOTES), p(ESCAPES), p(OTHERS)],
                [
                    p(CODE).but(strings),
                    p(CODE + 1).or(strings),
                    p(CODE + 2).or(strings),
                    p(CODE + 3),
                ],
                Ymm::splat(cpu, !0),
                Ymm::splat(cpu, 0),
            )
        }
        #[inline(always)]
        fn from_words(cpu: Avx2, words: [u64; 4]) -> Self {
            // SAFETY: `cpu` proves AVX2; the load reads the 32 bytes of `words`, unaligned
            // loads being allowed.
            let v = unsafe { _mm256_loadu_si256(words.as_ptr().cast()) };
            Ymm { v, cpu }
        }
        #[inline(always)]
        fn words(self) -> [u64; 4] {
            let mut words = [0u64; 4];
            // SAFETY: `self.cpu` proves AVX2; the store writes the 32 bytes of `words`,
            // unaligned stores being allowed.
            unsafe { _mm256_storeu_si256(words.as_mut_ptr().cast(), self.v) };
            words
        }
        #[inline(always)]
        fn splat(cpu: Avx2, x: u64) -> Self {
            // SAFETY: `cpu` proves AVX2; no memory is touched.
            let v = unsafe { _mm256_set1_epi64x(x as i64) };
            Ymm { v, cpu }
        }
        #[inline(always)]
        fn prefix_xor(self, carry: &mut Self) -> Self {
            prefix_xor(self, carry)
        }
        #[inline(always)]
        fn lowest(self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe {
                _mm256_and_si256(self.v, _mm256_sub_epi64(_mm256_setzero_si256(), self.v))
            })
        }
        #[inline(always)]
        fn through(self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe {
                _mm256_or_si256(self.v, _mm256_sub_epi64(self.v, _mm256_set1_epi64x(1)))
            })
        }
        #[inline(always)]
        fn nonzero(self) -> u8 {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            unsafe {
                let zero = _mm256_cmpeq_epi64(self.v, _mm256_setzero_si256());
                !(_mm256_movemask_pd(_mm256_castsi256_pd(zero)) as u8) & 0x0f
            }
        }
        #[inline(always)]
        fn keep(self, lanes: u8) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_and_si256(self.v, self.lane_mask(lanes)) })
        }
    }

    impl Wide for Ymm {
        #[inline(always)]
        fn shl<const N: u32>(self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_sll_epi64(self.v, _mm_set_epi64x(0, i64::from(N))) })
        }
        #[inline(always)]
        fn top(self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_srli_epi64::<63>(self.v) })
        }
        #[inline(always)]
        fn spread_top(self) -> Self {
            // No 64-bit arithmetic shift in AVX2: negative lanes compare below zero.
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_cmpgt_epi64(_mm256_setzero_si256(), self.v) })
        }
        #[inline(always)]
        fn up1(self, below: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe {
                // [below 2, below 3, self 0, self 1], then each half a lane on.
                let middle = _mm256_permute2x128_si256::<0x21>(below.v, self.v);
                _mm256_alignr_epi8::<8>(self.v, middle)
            })
        }
        #[inline(always)]
        fn up2(self, below: Self) -> Self {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            self.with(unsafe { _mm256_permute2x128_si256::<0x21>(below.v, self.v) })
        }
        #[inline(always)]
        fn up4(self, below: Self) -> Self {
            below
        }
        #[inline(always)]
        fn add(self, o: Self) -> (Self, u8) {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            let (sum, carried) = unsafe {
                let sum = _mm256_add_epi64(self.v, o.v);
                // A full adder's carry out of the top bit, `o` being within `self`.
                let carry = _mm256_or_si256(o.v, _mm256_andnot_si256(sum, self.v));
                (sum, _mm256_movemask_pd(_mm256_castsi256_pd(carry)) as u8)
            };
            (self.with(sum), carried)
        }
        #[inline(always)]
        fn inc(self, lanes: u8) -> (Self, u8) {
            // SAFETY: `self.cpu` proves AVX2; no memory is touched.
            let (sum, wrapped) = unsafe {
                // Subtracting all ones adds one.
                let sum = _mm256_sub_epi64(self.v, self.lane_mask(lanes));
                let zero = _mm256_cmpeq_epi64(sum, _mm256_setzero_si256());
                (
                    sum,
                    _mm256_movemask_pd(_mm256_castsi256_pd(zero)) as u8 & lanes,
                )
            };
            (self.with(sum), wrapped)
        }
    }

    impl Classify for Avx2 {
        /// The planes (see [`Chunk`]) decoded one block at a time.
        #[inline(always)]
        fn classify(self, block: &[u8; 64]) -> Classes<u64> {
            let tables = self.tables();
            let halves = self.halves(block);
            let [a, b] = halves.map(|half| self.planes(&tables, half));
            let p: [u64; PLANES] = std::array::from_fn(|i| u64::from(a[i]) | u64::from(b[i]) << 32);
            decode(
                [p[QUOTES], p[ESCAPES], p[OTHERS]],
                [p[CODE], p[CODE + 1], p[CODE + 2], p[CODE + 3]],
                !0,
                u64::from(self.high(halves)),
            )
        }

        #[inline(always)]
        fn prefix_xor(self, x: u64) -> u64 {
            // A carry-less multiply by all ones: bit `i` of the product is the parity of bits
            // `0..=i`. SAFETY: `self` proves PCLMULQDQ (SSE2 is baseline); no memory is touched.
            unsafe {
                let product =
                    _mm_clmulepi64_si128::<0>(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1));
                _mm_cvtsi128_si64(product) as u64
            }
        }
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
        let mut c = Cursor::new(text.as_bytes());
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

    fn index_bytewise(bytes: &[u8], open: usize, members: &mut Members) -> Option<usize> {
        if unrolled(bytes) {
            scan::<Words, true>((), bytes, open, members)
        } else {
            scan::<Words, false>((), bytes, open, members)
        }
    }

    /// The one-block shape with the reference classifier.
    fn index_word(bytes: &[u8], open: usize, members: &mut Members) -> Option<usize> {
        if unrolled(bytes) {
            scan::<Word<Bytewise>, true>(Bytewise, bytes, open, members)
        } else {
            scan::<Word<Bytewise>, false>(Bytewise, bytes, open, members)
        }
    }

    fn indexed(
        text: &str,
        index: impl Fn(&[u8], usize, &mut Members) -> Option<usize>,
    ) -> Option<Spans> {
        let mut m = Members::default();
        let bytes = text.as_bytes();
        let end = index(bytes, 0, &mut m)?;
        // Key and value ends as the engine works them out from the key starts.
        let members = (m.keys().enumerate())
            .map(|(i, (start, key_end))| {
                let value_end = m.value_end(bytes, i, end);
                (start as u32, key_end as u32, value_end as u32)
            })
            .collect();
        Some((members, end))
    }

    /// Checks the index against the cursor: whatever it vouches for, the cursor agrees with
    /// member for member. Returns whether it vouched. Once as a short body and once followed
    /// by enough spaces to be a long one, so that both position writers run (see
    /// [`LOOPED_BODY`]).
    fn agrees(text: &str) -> bool {
        let vouched = agrees_as_body(text);
        let long = format!("{text}{}", " ".repeat(LOOPED_BODY));
        assert_eq!(agrees_as_body(&long), vouched, "{text:?}");
        vouched
    }

    fn agrees_as_body(text: &str) -> bool {
        let Some(got) = indexed(text, index_bytewise) else {
            // Where the eight-lane shape declines, so do the others.
            assert_eq!(indexed(text, index_word), None, "{text:?}");
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = Avx2::get() {
                assert_eq!(
                    indexed(text, |b, o, m| cpu.index(b, o, m)),
                    None,
                    "{text:?}"
                );
                assert_eq!(
                    // SAFETY: `cpu` proves the CPU has the features it is compiled for.
                    indexed(text, |b, o, m| unsafe { avx2::index_word(cpu, b, o, m) }),
                    None,
                    "{text:?}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(cpu) = Avx512::get() {
                assert_eq!(
                    indexed(text, |b, o, m| cpu.index(b, o, m)),
                    None,
                    "{text:?}"
                );
            }
            return false;
        };
        assert_eq!(Some(&got), reference(text).as_ref(), "{text:?}");
        assert_eq!(indexed(text, index_word).as_ref(), Some(&got), "{text:?}");
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = Avx512::or_say_why() {
            assert_eq!(
                indexed(text, |b, o, m| cpu.index(b, o, m)).as_ref(),
                Some(&got),
                "{text:?}"
            );
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = Avx2::or_say_why() {
            assert_eq!(
                indexed(text, |b, o, m| cpu.index(b, o, m)).as_ref(),
                Some(&got),
                "{text:?}"
            );
            assert_eq!(
                // SAFETY: `cpu` proves the CPU has the features it is compiled for.
                indexed(text, |b, o, m| unsafe { avx2::index_word(cpu, b, o, m) }).as_ref(),
                Some(&got),
                "{text:?}"
            );
        }
        true
    }

    /// The two position writers agree on words of every count of set bits, the dense ones
    /// past sixteen included (maps rarely hold more than four keys in a block).
    #[test]
    fn the_position_writers_agree() {
        let mut rng = crate::trim::Lcg(5);
        for round in 0..20_000u32 {
            let ones = round % 65;
            let mut bits = 0u64;
            while bits.count_ones() < ones {
                bits |= 1 << (rng.next() % 64);
            }
            let (mut looped, mut unrolled) = (vec![0; 80], vec![0; 80]);
            let n = positions_loop(bits, 1000, &mut looped, 3);
            assert_eq!(
                positions_unrolled(bits, 1000, &mut unrolled, 3),
                n,
                "{bits:#x}"
            );
            assert_eq!(looped[..n], unrolled[..n], "{bits:#x}");
        }
    }

    /// `[]`, and brackets that do not pair, with the `[` at every offset across the first
    /// boundaries of blocks and chunks (one, four and eight blocks).
    #[test]
    fn brackets_across_chunk_boundaries_agree_with_the_cursor() {
        for at in 12..600 {
            let filler = "x".repeat(at - 12);
            for brackets in ["[]", "[ ]", "[]]", "[[]", "[1,[]", "[1]"] {
                let map = format!("{{\"p\":\"{filler}\",\"k\":{brackets},\"z\":1}}");
                assert_eq!(map.find('['), Some(at));
                let vouched = agrees(&map);
                if brackets == "[]" || brackets == "[1]" {
                    assert!(vouched, "{map:?}");
                }
            }
        }
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

    #[test]
    fn every_prefix_xor_matches_the_bytewise_one() {
        let mut rng = crate::trim::Lcg(5);
        let mut lanes_carry = Words([0; 8]);
        let mut word_carry = Word {
            bits: 0,
            cpu: Bytewise,
        };
        #[cfg(target_arch = "x86_64")]
        let mut avx2_carry = Avx2::or_say_why().map(|cpu| Word { bits: 0, cpu });
        let mut odd = false;
        for _ in 0..2_000 {
            let words = Words(std::array::from_fn(|_| {
                rng.next() << 40 ^ rng.next() << 20 ^ rng.next()
            }));
            // Each word after the other, from the parity the one before ended with.
            let expected = words.0.map(|w| {
                let x = Bytewise.prefix_xor(w) ^ u64::from(odd).wrapping_neg();
                odd = x >> 63 == 1;
                x
            });
            assert_eq!(words.prefix_xor(&mut lanes_carry).0, expected);
            for (bits, expected) in words.0.into_iter().zip(expected) {
                let word = Word {
                    bits,
                    cpu: Bytewise,
                };
                assert_eq!(word.prefix_xor(&mut word_carry).bits, expected);
                #[cfg(target_arch = "x86_64")]
                if let Some(carry) = avx2_carry.as_mut() {
                    let word = Word {
                        bits,
                        cpu: carry.cpu,
                    };
                    assert_eq!(word.prefix_xor(carry).bits, expected);
                }
            }
        }
    }

    /// The four-lane AVX2 arithmetic against the eight portable lanes: two chunks of four
    /// make one of eight, with carries between them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_lanes_match_the_portable_ones() {
        let Some(cpu) = Avx2::or_say_why() else {
            return;
        };
        let mut rng = crate::trim::Lcg(11);
        let mut word = || rng.next() << 40 ^ rng.next() << 20 ^ rng.next();
        let (mut xor_words, mut xor_ymm) = (Words([0; 8]), avx2::Ymm::splat(cpu, 0));
        let (mut add_words, mut add_ymm) = (0u8, 0u8);
        for round in 0..5_000 {
            // Long runs of ones, so that carries cross lanes and chunks.
            let runs: [u64; 8] = std::array::from_fn(|_| match word() % 4 {
                0 => !0,
                1 => word(),
                _ => word() | word() | word(),
            });
            let seeds: [u64; 8] = std::array::from_fn(|j| runs[j] & word() & word() & word());
            let xor = Words(runs).prefix_xor(&mut xor_words).0;
            let sum = Words(runs).add_carried(Words(seeds), &mut add_words).0;
            let (mut got_xor, mut got_sum) = ([0; 8], [0; 8]);
            for half in 0..2 {
                let at = 4 * half;
                let part =
                    |w: &[u64; 8]| avx2::Ymm::from_words(cpu, w[at..at + 4].try_into().unwrap());
                got_xor[at..at + 4].copy_from_slice(&part(&runs).prefix_xor(&mut xor_ymm).words());
                got_sum[at..at + 4]
                    .copy_from_slice(&part(&runs).add_carried(part(&seeds), &mut add_ymm).words());
            }
            assert_eq!(got_xor, xor, "round {round}");
            assert_eq!(got_sum, sum, "round {round}");
            assert_eq!(add_ymm, add_words, "round {round}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_classifier_matches_the_bytewise_one() {
        let Some(cpu) = Avx2::or_say_why() else {
            return;
        };
        for (round, block) in random_blocks().enumerate() {
            assert_eq!(
                as_grammar_sees(cpu.classify(&block)),
                as_grammar_sees(classify_bytewise(&block)),
                "round {round}: {block:?}"
            );
        }
    }

    /// `k` as the grammar relies on it: `high` only telling whether there is a byte above 0x7F,
    /// and the classes of the code (see [`CODE_LOW`]) only for bytes neither quotes nor `other`.
    fn as_grammar_sees(k: Classes<u64>) -> Classes<u64> {
        let seen = !(k.quote | k.other);
        macro_rules! seen {
            ($($field:ident),*) => {
                Classes {
                    $($field: k.$field & seen,)*
                    quote: k.quote,
                    escape: k.escape,
                    other: k.other,
                    high: u64::from(k.high != 0),
                }
            };
        }
        seen!(
            close_brace,
            open_bracket,
            close_bracket,
            comma,
            colon,
            digit,
            zero,
            dot,
            exp,
            minus,
            plus
        )
    }

    #[test]
    fn the_code_tells_every_class_apart() {
        for b in 0..=255u8 {
            // A block of `b` alone: every class all ones or none.
            let expected = classify_bytewise(&[b; 64]);
            let code = CODE_LOW[usize::from(b & 15)] & CODE_HIGH[usize::from(b >> 4)];
            let plane = |bit: u32| 0u64.wrapping_sub(u64::from(code >> bit & 1));
            let got = decode(
                [expected.quote, expected.escape, expected.other],
                [plane(4), plane(5), plane(6), plane(7)],
                !0,
                expected.high,
            );
            assert_eq!(as_grammar_sees(got), as_grammar_sees(expected), "{b:#04x}");
        }
    }

    /// Blocks of every byte value, with JSON's own bytes more often.
    fn random_blocks() -> impl Iterator<Item = [u8; 64]> {
        let mut rng = crate::trim::Lcg(3);
        (0..20_000).map(move |_| {
            let mut block = [0u8; 64];
            for b in block.iter_mut() {
                *b = match rng.next() % 3 {
                    0 => rng.next() as u8,
                    _ => {
                        let json = b"\"\\{}[],:0123456789.eE+- \t\n\rxa";
                        json[rng.next() as usize % json.len()]
                    }
                };
            }
            block
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_classifier_matches_the_bytewise_one() {
        let Some(cpu) = Avx512::or_say_why() else {
            return;
        };
        for (round, block) in random_blocks().enumerate() {
            let got = avx512::Zmm::classify_block(cpu, &block);
            assert_eq!(got, classify_bytewise(&block), "round {round}: {block:?}");
        }
    }

    #[test]
    fn indexes_every_row_of_a_workload_shaped_body() {
        // tfs-rows' shape: 64 rows of 1,000 features (numbers, strings, short lists).
        let row: Vec<String> = (0..1000)
            .map(|i| match i % 3 {
                0 => format!("\"feature_{i:04}\": {}.5", i),
                1 => format!("\"feature_{i:04}\": \"v{i}\""),
                _ => format!("\"feature_{i:04}\": [1, 2, {i}]"),
            })
            .collect();
        let row = format!("{{{}}}", row.join(", "));
        let body = format!("{{\"instances\": [{}]}}", vec![row; 64].join(","));
        let body = body.as_bytes();
        let mut m = Members::default();
        let mut pos = body.iter().position(|&b| b == b'[').unwrap() + 1;
        let mut rows = 0;
        while body[pos] == b'{' {
            let end = index_bytewise(body, pos, &mut m).expect("row indexed");
            assert_eq!(m.len(), 1000);
            rows += 1;
            pos = end + 1;
        }
        assert_eq!(rows, 64);
    }
}
