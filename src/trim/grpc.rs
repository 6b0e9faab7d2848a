//! gRPC request messages, trimmed at the protobuf wire level: TF Serving `Predict` `inputs` map
//! entries, `Classify`/`Regress` `tf.Example` features, and KServe/Triton `ModelInfer` `inputs[]`
//! with the `raw_input_contents` entries they own. Tags and lengths are walked, kept byte ranges
//! copied, and only the length prefixes that change are rewritten: no tensor is ever decoded.
//! Also reads the routing fields (model name, version) the transport needs. One message in (the
//! payload of one gRPC frame, without its 5-byte prefix), one message out.
//!
//! What is checked: the framing (tags, varints, lengths) of every message the engine walks
//! (requests, `Input`, example lists, `Example`, `Features`, map entries, `InferInputTensor`) and
//! the UTF-8 of every name it reads. Tensor values, `Feature`s and unknown fields are opaque
//! byte ranges, copied as they are.

use std::cell::RefCell;

use super::{ends_of, Allowed, AllowlistId, TrimResult, Trimmed, Untrimmable};

/// Which request message a gRPC method carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcBody {
    /// `tensorflow.serving.PredictionService/Predict`: `PredictRequest`.
    Predict,
    /// `tensorflow.serving.PredictionService/Classify` or `Regress`: `ClassificationRequest` or
    /// `RegressionRequest` (the same fields).
    Examples,
    /// `inference.GRPCInferenceService/ModelInfer`, and each request of `ModelStreamInfer`:
    /// `ModelInferRequest`.
    Infer,
}

/// Trims one request message of the given kind; see [`trim_predict`], [`trim_examples`] and
/// [`trim_infer`].
pub fn trim(msg: &[u8], body: GrpcBody, allowed: impl Allowed) -> TrimResult {
    match body {
        GrpcBody::Predict => trim_predict(msg, allowed),
        GrpcBody::Examples => trim_examples(msg, allowed),
        GrpcBody::Infer => trim_infer(msg, allowed),
    }
}

/// Trims a `PredictRequest`: drops the `inputs` map entries (field 2) whose key is not allowed.
/// `NotTrimmable` when the request has no `inputs` entry at all.
pub fn trim_predict(msg: &[u8], allowed: impl Allowed) -> TrimResult {
    let mut plan = Plan::new(msg);
    let mut answers = Answers::new(&allowed);
    let mut copied = 0;
    let mut entries = 0usize;
    let mut fields = Fields::new(msg, 0, msg.len());
    let mut last = None;
    while let Some(f) = fields.next_after(&last)? {
        last = Some(f);
        if f.number != 2 {
            continue;
        }
        f.expect_len()?;
        entries += 1;
        if answers.keep(entries - 1, map_key(msg, &f)?) {
            plan.kept += 1;
        } else {
            plan.removed += 1;
            plan.copy(copied, f.start);
            copied = f.end;
        }
    }
    if entries == 0 {
        return Err(Untrimmable::NotTrimmable("the request has no `inputs`"));
    }
    plan.copy(copied, msg.len());
    Ok(plan.finish())
}

/// Trims a `ClassificationRequest` or `RegressionRequest`: drops the `Features.feature` map
/// entries whose key is not allowed, in every `Example` of `input.example_list` and of
/// `input.example_list_with_context` (and its `context`), rewriting the length prefix of each
/// enclosing message that shrinks. `NotTrimmable` when the request holds no `Example`.
pub fn trim_examples(msg: &[u8], allowed: impl Allowed) -> TrimResult {
    let mut plan = Plan::new(msg);
    let mut examples = 0u64;
    let mut fields = Fields::new(msg, 0, msg.len());
    while let Some(f) = fields.next()? {
        if f.number == 2 {
            plan.nested(&f, |plan, start, end| {
                input(plan, start, end, &allowed, &mut examples)
            })?;
        } else {
            plan.copy(f.start, f.end);
        }
    }
    if examples == 0 {
        return Err(Untrimmable::NotTrimmable("the request has no examples"));
    }
    Ok(plan.finish())
}

/// `Input { oneof { ExampleList example_list = 1; ExampleListWithContext
/// example_list_with_context = 2; } }` between `start` and `end`; returns its new size.
fn input(
    plan: &mut Plan<'_>,
    start: usize,
    end: usize,
    allowed: &impl Allowed,
    examples: &mut u64,
) -> Result<usize, Untrimmable> {
    let mut size = 0;
    let mut fields = Fields::new(plan.msg, start, end);
    while let Some(f) = fields.next()? {
        size += match f.number {
            // `ExampleList { repeated Example examples = 1; }` and `ExampleListWithContext {
            // repeated Example examples = 1; Example context = 2; }`: the context is one more
            // feature map, trimmed like the examples.
            1 | 2 => {
                let with_context = f.number == 2;
                plan.nested(&f, |plan, start, end| {
                    let mut size = 0;
                    let mut fields = Fields::new(plan.msg, start, end);
                    while let Some(f) = fields.next()? {
                        size += if f.number == 1 || (with_context && f.number == 2) {
                            *examples += 1;
                            plan.nested(&f, |plan, start, end| example(plan, start, end, allowed))?
                        } else {
                            plan.copy(f.start, f.end)
                        };
                    }
                    Ok(size)
                })?
            }
            _ => plan.copy(f.start, f.end),
        };
    }
    Ok(size)
}

/// `Example { Features features = 1; }`, `Features { map<string, Feature> feature = 1; }`.
fn example(
    plan: &mut Plan<'_>,
    start: usize,
    end: usize,
    allowed: &impl Allowed,
) -> Result<usize, Untrimmable> {
    let mut size = 0;
    let mut fields = Fields::new(plan.msg, start, end);
    while let Some(f) = fields.next()? {
        size += if f.number == 1 {
            plan.nested(&f, |plan, start, end| {
                let msg = plan.msg;
                let mut size = 0;
                let mut fields = Fields::new(msg, start, end);
                while let Some(f) = fields.next()? {
                    if f.number == 1 {
                        f.expect_len()?;
                        if !allowed.allows(map_key(msg, &f)?) {
                            plan.removed += 1;
                            continue;
                        }
                        plan.kept += 1;
                    }
                    size += plan.copy(f.start, f.end);
                }
                Ok(size)
            })?
        } else {
            plan.copy(f.start, f.end)
        };
    }
    Ok(size)
}

/// Trims a `ModelInferRequest`: drops the `inputs` (field 5) whose `name` is not allowed, and
/// with each the `raw_input_contents` entry (field 7) it owns. Raw entries belong, in order, to
/// the inputs that have no `contents` and no `shared_memory_region` parameter; when their
/// numbers differ nothing is trimmed (a `Parse` error). `NotTrimmable` when the request has no
/// input.
pub fn trim_infer(msg: &[u8], allowed: impl Allowed) -> TrimResult {
    let mut inputs = InputReader::new(&allowed);
    match infer_in_order(msg, &mut inputs)? {
        Some(trimmed) => Ok(trimmed),
        None => infer_any_order(msg, &mut inputs),
    }
}

/// The error for raw entries that do not pair up with their inputs.
const MISALIGNED: Untrimmable = Untrimmable::Parse {
    offset: 0,
    reason: "one raw_input_contents entry per input without contents or shared memory",
};

/// [`trim_infer`] in one pass, for requests in which every raw entry comes after the input
/// that owns it (as protobuf encoders write fields: in field-number order); `None` at the
/// first raw entry that comes before its input.
fn infer_in_order(
    msg: &[u8],
    inputs: &mut InputReader<'_, impl Allowed>,
) -> Result<Option<Trimmed>, Untrimmable> {
    let mut plan = Plan::new(msg);
    let mut owned: Vec<bool> = Vec::new();
    let (mut raws, mut copied) = (0usize, 0usize);
    let mut fields = Fields::new(msg, 0, msg.len());
    let mut last = None;
    while let Some(f) = fields.next_after(&last)? {
        last = Some(f);
        let keep = match f.number {
            5 => {
                let (keep, owns_raw) = inputs.decide(msg, &f)?;
                if owns_raw {
                    owned.push(keep);
                }
                if keep {
                    plan.kept += 1;
                } else {
                    plan.removed += 1;
                }
                keep
            }
            7 => {
                f.expect_len()?;
                let Some(&keep) = owned.get(raws) else {
                    return Ok(None);
                };
                raws += 1;
                keep
            }
            _ => continue,
        };
        if !keep {
            plan.copy(copied, f.start);
            copied = f.end;
        }
    }
    if owned.len() != raws {
        return Err(MISALIGNED);
    }
    if inputs.seen == 0 {
        return Err(Untrimmable::NotTrimmable("the request has no inputs"));
    }
    plan.copy(copied, msg.len());
    Ok(Some(plan.finish()))
}

/// [`trim_infer`] for any order of inputs and raw entries: every record is noted first, then
/// the k-th raw entry goes with the k-th owning input, wherever either appears.
fn infer_any_order(msg: &[u8], inputs: &mut InputReader<'_, impl Allowed>) -> TrimResult {
    inputs.seen = 0;
    let mut records = Vec::new();
    let (mut owners, mut raws) = (0usize, 0usize);
    let mut fields = Fields::new(msg, 0, msg.len());
    while let Some(f) = fields.next()? {
        let kind = match f.number {
            5 => {
                let (keep, owns_raw) = inputs.decide(msg, &f)?;
                owners += usize::from(owns_raw);
                Record::Input { keep, owns_raw }
            }
            7 => {
                f.expect_len()?;
                raws += 1;
                Record::Raw
            }
            _ => continue,
        };
        records.push((f.start, f.end, kind));
    }
    if owners != raws {
        return Err(MISALIGNED);
    }
    if inputs.seen == 0 {
        return Err(Untrimmable::NotTrimmable("the request has no inputs"));
    }
    let mut owned: Vec<bool> = records
        .iter()
        .filter_map(|&(_, _, kind)| match kind {
            Record::Input {
                keep,
                owns_raw: true,
            } => Some(keep),
            _ => None,
        })
        .collect();
    owned.reverse();
    let mut plan = Plan::new(msg);
    let mut copied = 0;
    for (start, end, kind) in records {
        let keep = match kind {
            Record::Input { keep, .. } => {
                if keep {
                    plan.kept += 1;
                } else {
                    plan.removed += 1;
                }
                keep
            }
            // `owners == raws`, so there is one decision per raw entry.
            Record::Raw => owned.pop().unwrap_or(true),
        };
        if !keep {
            plan.copy(copied, start);
            copied = end;
        }
    }
    plan.copy(copied, msg.len());
    Ok(plan.finish())
}

/// Decides `inputs` records one after the other.
struct InputReader<'a, A: Allowed> {
    answers: Answers<'a, A>,
    /// The last input parsed in full.
    template: Option<Template>,
    /// Inputs decided so far (the position of the next one).
    seen: usize,
}

impl<'a, A: Allowed> InputReader<'a, A> {
    fn new(allowed: &'a A) -> Self {
        InputReader {
            answers: Answers::new(allowed),
            template: None,
            seen: 0,
        }
    }

    /// Whether the input record `f` is kept, and whether it owns a raw entry.
    #[inline(always)]
    fn decide(&mut self, msg: &[u8], f: &Field) -> Result<(bool, bool), Untrimmable> {
        f.expect_len()?;
        let (name, owns_raw) = match self.template.as_ref().and_then(|t| t.matches(msg, f)) {
            Some(matched) => matched?,
            None => {
                let tensor = infer_input(msg, f.value, f.end)?;
                self.template = Some(Template {
                    start: f.start,
                    end: f.end,
                    name: tensor.name.0 - f.start..tensor.name.1 - f.start,
                    owns_raw: tensor.owns_raw,
                });
                (utf8(msg, tensor.name.0, tensor.name.1)?, tensor.owns_raw)
            }
        };
        let keep = self.answers.keep(self.seen, name);
        self.seen += 1;
        Ok((keep, owns_raw))
    }
}

/// The allowlist's answers by feature position (the n-th map entry or input of a message),
/// kept by the thread from one request to the next while the allowlist is the same one: a
/// client sends one model the same features in the same order, so comparing a name with the
/// one remembered at its position replaces most allowlist lookups. Only names of up to sixteen
/// bytes are remembered, which the two words of a slot hold whole.
#[derive(Default)]
struct Memo {
    /// The allowlist the answers are for; `None`: nothing is remembered.
    owner: Option<AllowlistId>,
    slots: Vec<Slot>,
}

/// A remembered name and answer.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    head: u64,
    tail: u64,
    /// The name's length plus one; 0: nothing remembered.
    len: u8,
    keep: bool,
}

/// The most positions a thread remembers (~400 KiB).
const MEMO_SLOTS: usize = 16_384;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::default();
}

/// An allowlist with the thread's [`Memo`] for it, handed back when done.
struct Answers<'a, A: Allowed> {
    allowed: &'a A,
    memo: Memo,
}

impl<'a, A: Allowed> Answers<'a, A> {
    /// Takes the thread's memo, emptied unless it is for this allowlist.
    fn new(allowed: &'a A) -> Self {
        let owner = allowed.identity();
        let mut memo = MEMO.with(RefCell::take);
        if owner.is_none() || memo.owner != owner {
            memo.slots.clear();
        }
        memo.owner = owner;
        Answers { allowed, memo }
    }

    /// Whether `name`, the feature at position `i`, is allowed.
    #[inline(always)]
    fn keep(&mut self, i: usize, name: &str) -> bool {
        let memo = &mut self.memo;
        if memo.owner.is_none() || name.len() > 16 || i >= MEMO_SLOTS {
            return self.allowed.allows(name);
        }
        let (head, tail) = ends_of(name.as_bytes());
        // At most 17: fits.
        let len = name.len() as u8 + 1;
        if let Some(slot) = memo.slots.get(i) {
            if slot.len == len && slot.head == head && slot.tail == tail {
                return slot.keep;
            }
        }
        let keep = self.allowed.allows(name);
        if memo.slots.len() <= i {
            memo.slots.resize(i + 1, Slot::default());
        }
        memo.slots[i] = Slot {
            head,
            tail,
            len,
            keep,
        };
        keep
    }
}

impl<A: Allowed> Drop for Answers<'_, A> {
    /// Hands the memo back to the thread for its next request.
    fn drop(&mut self) {
        if self.memo.owner.is_some() {
            let memo = std::mem::take(&mut self.memo);
            // The thread may be exiting; then there is no next request.
            let _ = MEMO.try_with(|m| *m.borrow_mut() = memo);
        }
    }
}

/// A `ModelInferRequest` field the trimmer may cut out.
#[derive(Debug, Clone, Copy)]
enum Record {
    /// An `inputs` entry: whether it is kept, and whether it owns a raw entry.
    Input { keep: bool, owns_raw: bool },
    /// A `raw_input_contents` entry.
    Raw,
}

/// An input record already parsed, for the next ones to be compared with: the tensors of one
/// request usually differ only in their name (same datatype, shape and parameters), and a
/// record whose bytes equal the template's outside a name of the same length is parsed the
/// same way, apart from the name.
struct Template {
    /// The record (tag included).
    start: usize,
    end: usize,
    /// Its name's content, relative to `start`.
    name: std::ops::Range<usize>,
    owns_raw: bool,
}

impl Template {
    /// The name and `owns_raw` of record `f` if it matches the template.
    #[inline(always)]
    fn matches<'a>(
        &self,
        msg: &'a [u8],
        f: &Field,
    ) -> Option<Result<(&'a str, bool), Untrimmable>> {
        let (t, r) = (&msg[self.start..self.end], &msg[f.start..f.end]);
        let same = t.len() == r.len()
            && same_bytes(&t[..self.name.start], &r[..self.name.start])
            && same_bytes(&t[self.name.end..], &r[self.name.end..]);
        same.then(|| {
            let name = f.start + self.name.start..f.start + self.name.end;
            utf8(msg, name.start, name.end).map(|name| (name, self.owns_raw))
        })
    }
}

/// `a == b` for slices of equal length. The pieces compared are mostly a few bytes long, where
/// two overlapping word loads beat a call to `memcmp` (and a byte loop).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let half = |s: &[u8], at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[at..at + 4]);
        u32::from_ne_bytes(w)
    };
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// What the trimmer reads of an `InferInputTensor`.
struct InferInput {
    /// The content of the last `name` field (empty, at `start`, when there is none).
    name: (usize, usize),
    /// No `contents` (field 5) and no `shared_memory_region` parameter.
    owns_raw: bool,
}

/// `InferInputTensor { string name = 1; string datatype = 2; repeated int64 shape = 3;
/// map<string, InferParameter> parameters = 4; InferTensorContents contents = 5; }`.
fn infer_input(msg: &[u8], start: usize, end: usize) -> Result<InferInput, Untrimmable> {
    let mut name = (start, start);
    let (mut contents, mut shared_memory) = (false, false);
    let mut fields = Fields::new(msg, start, end);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                f.string(msg)?;
                name = (f.value, f.end);
            }
            4 => {
                f.expect_len()?;
                shared_memory |= map_key(msg, &f)? == "shared_memory_region";
            }
            5 => {
                f.expect_len()?;
                contents = true;
            }
            _ => {}
        }
    }
    Ok(InferInput {
        name,
        owns_raw: !contents && !shared_memory,
    })
}

/// The key of the map entry record `f` (`{ key = 1; value = 2; }`): the last one, or "" when
/// the entry has none, as protobuf reads it.
#[inline]
fn map_key<'a>(msg: &'a [u8], f: &Field) -> Result<&'a str, Untrimmable> {
    let mut key = "";
    let mut fields = Fields::new(msg, f.value, f.end);
    while let Some(f) = fields.next()? {
        if f.number == 1 {
            key = f.string(msg)?;
        }
    }
    Ok(key)
}

/// The routing fields of a TF Serving request (`PredictRequest`, `ClassificationRequest`,
/// `RegressionRequest`: all carry `ModelSpec model_spec = 1`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelSpec<'a> {
    /// `name` ("" when not set).
    pub name: &'a str,
    /// The `version` / `version_label` oneof: whichever came last, `None` when neither did.
    pub version: Option<SpecVersion<'a>>,
    /// `signature_name` ("" when not set: the server's default signature).
    pub signature_name: &'a str,
}

/// The version a `ModelSpec` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecVersion<'a> {
    /// `version` (a `google.protobuf.Int64Value`; 0 when the wrapper has no value).
    Number(i64),
    /// `version_label`.
    Label(&'a str),
}

/// Reads `model_spec` from a TF Serving request; `None` when the message has none. Several
/// `model_spec` records are merged as protobuf merges them: each field that appears takes the
/// last value given (for the `version` wrapper, the last `value` inside it), and setting one
/// side of the `version` / `version_label` oneof clears the other.
pub fn model_spec(msg: &[u8]) -> Result<Option<ModelSpec<'_>>, Untrimmable> {
    let mut spec: Option<ModelSpec<'_>> = None;
    let mut fields = Fields::new(msg, 0, msg.len());
    while let Some(f) = fields.next()? {
        if f.number != 1 {
            continue;
        }
        f.expect_len()?;
        let spec = spec.get_or_insert_with(ModelSpec::default);
        let mut inner = Fields::new(msg, f.value, f.end);
        while let Some(g) = inner.next()? {
            match g.number {
                1 => spec.name = g.string(msg)?,
                2 => {
                    g.expect_len()?;
                    let mut value = match spec.version {
                        Some(SpecVersion::Number(n)) => n,
                        _ => 0,
                    };
                    let mut wrapper = Fields::new(msg, g.value, g.end);
                    while let Some(h) = wrapper.next()? {
                        if h.number == 1 {
                            if h.wire != VARINT {
                                return Err(parse(h.start, "an int64 value"));
                            }
                            let mut at = h.value;
                            // int64 is the varint's two's complement bits.
                            value = varint(msg, &mut at, h.end)? as i64;
                        }
                    }
                    spec.version = Some(SpecVersion::Number(value));
                }
                3 => spec.signature_name = g.string(msg)?,
                4 => spec.version = Some(SpecVersion::Label(g.string(msg)?)),
                _ => {}
            }
        }
    }
    Ok(spec)
}

/// The routing fields of a KServe `ModelInferRequest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InferTarget<'a> {
    /// `model_name` ("" when not set).
    pub model_name: &'a str,
    /// `model_version` ("" when not set: the server picks).
    pub model_version: &'a str,
}

/// Reads `model_name` and `model_version` (the last of each) from a `ModelInferRequest`.
pub fn infer_target(msg: &[u8]) -> Result<InferTarget<'_>, Untrimmable> {
    let mut target = InferTarget::default();
    let mut fields = Fields::new(msg, 0, msg.len());
    while let Some(f) = fields.next()? {
        match f.number {
            1 => target.model_name = f.string(msg)?,
            2 => target.model_version = f.string(msg)?,
            _ => {}
        }
    }
    Ok(target)
}

/// What live signatures read of a KServe `ModelMetadataResponse { string name = 1; repeated
/// string versions = 2; string platform = 3; repeated TensorMetadata inputs = 4; … }`: the
/// versions and the input names (`TensorMetadata { string name = 1; … }`), in order.
pub fn metadata_inputs(msg: &[u8]) -> Result<(Vec<&str>, Vec<&str>), Untrimmable> {
    let (mut versions, mut inputs) = (Vec::new(), Vec::new());
    let mut fields = Fields::new(msg, 0, msg.len());
    while let Some(f) = fields.next()? {
        match f.number {
            2 => versions.push(f.string(msg)?),
            4 => {
                f.expect_len()?;
                let mut name = "";
                let mut inner = Fields::new(msg, f.value, f.end);
                while let Some(g) = inner.next()? {
                    if g.number == 1 {
                        name = g.string(msg)?;
                    }
                }
                inputs.push(name);
            }
            _ => {}
        }
    }
    Ok((versions, inputs))
}

/// A KServe `ModelMetadataRequest { string name = 1; string version = 2; }`.
pub fn metadata_request(name: &str, version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + version.len() + 8);
    for (number, value) in [(1u64, name), (2, version)] {
        if !value.is_empty() {
            put_varint(&mut out, number << 3 | u64::from(LEN));
            put_varint(&mut out, value.len() as u64);
            out.extend_from_slice(value.as_bytes());
        }
    }
    out
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

fn parse(offset: usize, reason: &'static str) -> Untrimmable {
    Untrimmable::Parse { offset, reason }
}

/// One field record.
#[derive(Debug, Clone, Copy)]
struct Field {
    number: u32,
    wire: u8,
    /// Offset of its tag.
    start: usize,
    /// Offset of its value; for a length-delimited field, of its length prefix.
    prefix: usize,
    /// Offset of its value proper (past the length prefix, if any).
    value: usize,
    /// One past its last byte.
    end: usize,
}

impl Field {
    /// Known fields the trimmer walks into must be length-delimited, as protobuf requires.
    #[inline]
    fn expect_len(&self) -> Result<(), Untrimmable> {
        if self.wire == LEN {
            Ok(())
        } else {
            Err(parse(self.start, "a length-delimited field"))
        }
    }

    /// The field as a protobuf `string`.
    #[inline]
    fn string<'a>(&self, msg: &'a [u8]) -> Result<&'a str, Untrimmable> {
        self.expect_len()?;
        utf8(msg, self.value, self.end)
    }
}

/// The field records of one message, in order.
struct Fields<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(msg: &'a [u8], start: usize, end: usize) -> Self {
        Fields {
            msg,
            pos: start,
            end,
        }
    }

    /// The next record, `None` at the message's end.
    #[inline(always)]
    fn next(&mut self) -> Result<Option<Field>, Untrimmable> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos;
        let key = varint(self.msg, &mut self.pos, self.end)?;
        // As protobuf decoders read a key: a u32 whose low three bits are the wire type.
        let key = u32::try_from(key).map_err(|_| parse(start, "a field key of 32 bits"))?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        if number == 0 {
            return Err(parse(start, "a field number above 0"));
        }
        let prefix = self.pos;
        let room = self.end - self.pos;
        let value = match wire {
            VARINT => {
                varint(self.msg, &mut self.pos, self.end)?;
                prefix
            }
            I64 | I32 => {
                let width = if wire == I64 { 8 } else { 4 };
                if room < width {
                    return Err(parse(self.end, "a fixed-width value within the message"));
                }
                self.pos += width;
                prefix
            }
            LEN => {
                let len = varint(self.msg, &mut self.pos, self.end)?;
                let value = self.pos;
                if len > (self.end - value) as u64 {
                    return Err(parse(prefix, "a length within the message"));
                }
                // Fits: at most `end - value`.
                self.pos = value + len as usize;
                value
            }
            _ => return Err(parse(start, "wire type 0, 1, 2 or 5")),
        };
        Ok(Some(Field {
            number,
            wire,
            start,
            prefix,
            value,
            end: self.pos,
        }))
    }
}

impl Fields<'_> {
    /// The next record if it is length-delimited and its tag and length prefix are the bytes of
    /// `like`'s (a record of this message): then it has the same field number and size, and
    /// its end is known without reading it. Runs of alike records (tensors of one shape) are
    /// the common case, and this way where each record ends does not wait for the load of its
    /// length, so the reads of the next records can start early.
    #[inline(always)]
    fn next_like(&mut self, like: &Field) -> Option<Field> {
        let (size, head) = (like.end - like.start, like.value - like.start);
        let start = self.pos;
        if like.wire != LEN || self.end - start < size {
            return None;
        }
        if !same_bytes(
            &self.msg[start..start + head],
            &self.msg[like.start..like.value],
        ) {
            return None;
        }
        self.pos = start + size;
        Some(Field {
            start,
            prefix: start + (like.prefix - like.start),
            value: start + head,
            end: start + size,
            ..*like
        })
    }

    /// [`Fields::next_like`], else [`Fields::next`].
    #[inline(always)]
    fn next_after(&mut self, last: &Option<Field>) -> Result<Option<Field>, Untrimmable> {
        if let Some(f) = last.as_ref().and_then(|like| self.next_like(like)) {
            return Ok(Some(f));
        }
        self.next()
    }
}

/// Reads a varint at `*pos` (before `end`) and moves past it.
#[inline(always)]
fn varint(msg: &[u8], pos: &mut usize, end: usize) -> Result<u64, Untrimmable> {
    let start = *pos;
    let bytes = &msg[start..end];
    // Tags and lengths up to 16 KiB: one or two bytes.
    match *bytes {
        [b, ..] if b < 0x80 => {
            *pos = start + 1;
            Ok(u64::from(b))
        }
        [b0, b1, ..] if b1 < 0x80 => {
            *pos = start + 2;
            Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7)
        }
        _ => varint_long(bytes, pos),
    }
}

/// [`varint`] past its first two bytes.
#[cold]
#[inline(never)]
fn varint_long(bytes: &[u8], pos: &mut usize) -> Result<u64, Untrimmable> {
    let start = *pos;
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        // The tenth byte holds bit 63 only.
        if i == 9 && b > 1 {
            return Err(parse(start, "a varint of at most 64 bits"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *pos = start + i + 1;
            return Ok(value);
        }
    }
    Err(parse(start, "a complete varint"))
}

/// `msg[start..end]` as a `str`. Names are short and nearly always ASCII, for which a quick
/// loop replaces a call to `from_utf8`.
#[inline(always)]
fn utf8(msg: &[u8], start: usize, end: usize) -> Result<&str, Untrimmable> {
    let bytes = &msg[start..end];
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|_| parse(start, "UTF-8"))
}

/// Bytes of `v` as a varint.
#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field `number` holding `payload` (the reference workloads'
/// encoder).
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn put_bytes(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, u64::from(number) << 3 | u64::from(LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Appends a varint field `number` holding `v` (the reference workloads' encoder).
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn put_uint(out: &mut Vec<u8>, number: u32, v: u64) {
    put_varint(out, u64::from(number) << 3 | u64::from(VARINT));
    put_varint(out, v);
}

/// One piece of the output.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// The input's bytes in `start..end`.
    Copy(usize, usize),
    /// A new length prefix.
    Len(u64),
}

/// The output described as pieces of the input and new length prefixes, so that it can be
/// written in one pass into a buffer of its exact size once every length is known.
struct Plan<'a> {
    msg: &'a [u8],
    ops: Vec<Op>,
    removed: u64,
    kept: u64,
}

impl<'a> Plan<'a> {
    fn new(msg: &'a [u8]) -> Self {
        Plan {
            msg,
            ops: Vec::new(),
            removed: 0,
            kept: 0,
        }
    }

    /// Appends the input's `start..end`; returns its length.
    #[inline]
    fn copy(&mut self, start: usize, end: usize) -> usize {
        if start < end {
            match self.ops.last_mut() {
                Some(Op::Copy(_, last)) if *last == start => *last = end,
                _ => self.ops.push(Op::Copy(start, end)),
            }
        }
        end - start
    }

    /// Appends the length-delimited field `f` with its value rewritten by `inner` (which
    /// plans the value's pieces and returns their size); returns the field's new size. The
    /// length prefix is rewritten only if the value's size changed; a value in which nothing
    /// was removed is planned as one copy of the original field.
    fn nested(
        &mut self,
        f: &Field,
        inner: impl FnOnce(&mut Self, usize, usize) -> Result<usize, Untrimmable>,
    ) -> Result<usize, Untrimmable> {
        f.expect_len()?;
        let (mark, last, removed) = (self.ops.len(), self.ops.last().copied(), self.removed);
        self.copy(f.start, f.prefix);
        let slot = self.ops.len();
        self.ops.push(Op::Len(0));
        let size = inner(self, f.value, f.end)?;
        if self.removed == removed {
            self.ops.truncate(mark);
            if let (Some(op), Some(last)) = (self.ops.last_mut(), last) {
                *op = last;
            }
            return Ok(self.copy(f.start, f.end));
        }
        self.ops[slot] = Op::Len(size as u64);
        Ok(f.prefix - f.start + varint_len(size as u64) + size)
    }

    /// Writes the planned output; the input as it is when nothing was removed.
    fn finish(self) -> Trimmed {
        let body = if self.removed == 0 {
            self.msg.to_vec()
        } else {
            let size = self
                .ops
                .iter()
                .map(|op| match *op {
                    Op::Copy(start, end) => end - start,
                    Op::Len(v) => varint_len(v),
                })
                .sum();
            let mut out = Vec::with_capacity(size);
            for op in self.ops {
                match op {
                    Op::Copy(start, end) => out.extend_from_slice(&self.msg[start..end]),
                    Op::Len(v) => put_varint(&mut out, v),
                }
            }
            out
        };
        Trimmed {
            body,
            removed: self.removed,
            kept: self.kept,
            json_len: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message built field by field.
    #[derive(Default, Clone)]
    struct Msg(Vec<u8>);

    impl Msg {
        fn bytes(mut self, number: u32, payload: &[u8]) -> Self {
            put_bytes(&mut self.0, number, payload);
            self
        }
        fn msg(self, number: u32, m: &Msg) -> Self {
            self.bytes(number, &m.0)
        }
        fn uint(mut self, number: u32, v: u64) -> Self {
            put_uint(&mut self.0, number, v);
            self
        }
        fn fixed32(mut self, number: u32, v: u32) -> Self {
            put_varint(&mut self.0, u64::from(number) << 3 | 5);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn fixed64(mut self, number: u32, v: u64) -> Self {
            put_varint(&mut self.0, u64::from(number) << 3 | 1);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
    }

    fn m() -> Msg {
        Msg::default()
    }

    /// A map entry `{key, value}` with an opaque value.
    fn entry(key: &str, value: &[u8]) -> Msg {
        m().bytes(1, key.as_bytes()).bytes(2, value)
    }

    fn allow<'a>(names: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |k| names.contains(&k)
    }

    /// Trims, checks that a second trim changes nothing, returns the body and counts.
    fn run(msg: &[u8], body: GrpcBody, names: &[&str]) -> Result<(Vec<u8>, u64, u64), Untrimmable> {
        let t = trim(msg, body, allow(names))?;
        match trim(&t.body, body, allow(names)) {
            Ok(again) => assert_eq!((again.body, again.removed), (t.body.clone(), 0)),
            Err(Untrimmable::NotTrimmable(_)) => {}
            Err(e) => panic!("the output does not parse: {e:?}"),
        }
        Ok((t.body, t.removed, t.kept))
    }

    fn spec() -> Msg {
        m().bytes(1, b"ranker").msg(2, &m().uint(1, 3))
    }

    fn tensor(n: usize) -> Vec<u8> {
        m().uint(1, 1).bytes(5, &vec![7u8; n * 4]).0
    }

    #[test]
    fn predict_drops_entries_and_keeps_everything_else() {
        let a = entry("a", &tensor(4));
        let b = entry("b", &tensor(4));
        let c = entry("c", &tensor(0));
        // Unknown fields of every wire type, `output_filter`, entries out of order with the spec.
        let input = m()
            .msg(2, &a)
            .msg(1, &spec())
            .bytes(3, b"out")
            .msg(2, &b)
            .uint(99, 1 << 40)
            .fixed32(98, 5)
            .msg(2, &c)
            .fixed64(97, 6)
            .msg(2, &b);
        let want = m()
            .msg(2, &a)
            .msg(1, &spec())
            .bytes(3, b"out")
            .uint(99, 1 << 40)
            .fixed32(98, 5)
            .msg(2, &c)
            .fixed64(97, 6);
        let (out, removed, kept) = run(&input.0, GrpcBody::Predict, &["a", "c"]).unwrap();
        assert_eq!(out, want.0);
        assert_eq!((removed, kept), (2, 2));
        // Nothing removed: the same bytes.
        let (out, removed, _) = run(&input.0, GrpcBody::Predict, &["a", "b", "c"]).unwrap();
        assert_eq!((out, removed), (input.0.clone(), 0));
        // Everything removed.
        let (out, removed, _) = run(&input.0, GrpcBody::Predict, &[]).unwrap();
        assert_eq!(
            out,
            m().msg(1, &spec())
                .bytes(3, b"out")
                .uint(99, 1 << 40)
                .fixed32(98, 5)
                .fixed64(97, 6)
                .0
        );
        assert_eq!(removed, 4);
    }

    #[test]
    fn predict_reads_keys_as_protobuf_does() {
        // No key: the empty string. Two keys: the last. Value before key, unknown fields.
        let keyless = m().bytes(2, &tensor(1));
        let twice = m().bytes(1, b"x").bytes(2, &tensor(1)).bytes(1, b"a");
        let reversed = m().bytes(2, &tensor(1)).uint(7, 1).bytes(1, b"b");
        let input = m().msg(2, &keyless).msg(2, &twice).msg(2, &reversed);
        let (out, ..) = run(&input.0, GrpcBody::Predict, &["a"]).unwrap();
        assert_eq!(out, m().msg(2, &twice).0);
        let (out, ..) = run(&input.0, GrpcBody::Predict, &["", "b"]).unwrap();
        assert_eq!(out, m().msg(2, &keyless).msg(2, &reversed).0);
        // An empty entry is a keyless one.
        let input = m().bytes(2, b"").msg(2, &twice);
        let (out, ..) = run(&input.0, GrpcBody::Predict, &["a"]).unwrap();
        assert_eq!(out, m().msg(2, &twice).0);
    }

    #[test]
    fn messages_without_feature_maps_are_not_trimmable() {
        for body in [GrpcBody::Predict, GrpcBody::Examples, GrpcBody::Infer] {
            for msg in [m(), m().msg(1, &spec()), m().bytes(9, b"x")] {
                assert!(
                    matches!(
                        trim(&msg.0, body, allow(&[])),
                        Err(Untrimmable::NotTrimmable(_))
                    ),
                    "{body:?}"
                );
            }
        }
    }

    /// `Example { features { feature: {key: value} ... } }`.
    fn example(features: &[(&str, &[u8])]) -> Msg {
        let mut f = m();
        for (k, v) in features {
            f = f.msg(1, &entry(k, v));
        }
        m().msg(1, &f)
    }

    #[test]
    fn examples_are_trimmed_at_every_depth() {
        let big = vec![1u8; 200];
        let e1 = example(&[("a", b"1"), ("b", &big), ("c", b"3")]);
        let e2 = example(&[("b", b"2"), ("a", b"1")]);
        let ctx = example(&[("c", &big), ("b", b"x")]);
        let untouched = example(&[("a", b"9")]);
        // `ExampleList` with an unknown field; `Input` with both cases of the oneof.
        let list = m().msg(1, &e1).uint(5, 5).msg(1, &e2).msg(1, &untouched);
        let with_context = m().msg(1, &e2).msg(2, &ctx);
        let input = m().msg(1, &list).msg(2, &with_context).bytes(7, b"?");
        let request = m().msg(1, &spec()).msg(2, &input).bytes(3, b"unknown");
        let (out, removed, kept) = run(&request.0, GrpcBody::Examples, &["a"]).unwrap();
        let e1t = example(&[("a", b"1")]);
        let e2t = example(&[("a", b"1")]);
        let want = m()
            .msg(1, &spec())
            .msg(
                2,
                &m().msg(
                    1,
                    &m().msg(1, &e1t).uint(5, 5).msg(1, &e2t).msg(1, &untouched),
                )
                .msg(2, &m().msg(1, &e2t).msg(2, &example(&[])))
                .bytes(7, b"?"),
            )
            .bytes(3, b"unknown");
        assert_eq!(out, want.0);
        assert_eq!((removed, kept), (6, 4));
        // Unknown fields in `Example` and `Features`, a repeated `features`.
        let features = m()
            .msg(1, &entry("b", b"1"))
            .uint(3, 3)
            .msg(1, &entry("a", b"2"));
        let ex = m().uint(4, 4).msg(1, &features).msg(1, &features);
        let request = m().msg(2, &m().msg(1, &m().msg(1, &ex)));
        let (out, ..) = run(&request.0, GrpcBody::Examples, &["a"]).unwrap();
        let features = m().uint(3, 3).msg(1, &entry("a", b"2"));
        let ex = m().uint(4, 4).msg(1, &features).msg(1, &features);
        assert_eq!(out, m().msg(2, &m().msg(1, &m().msg(1, &ex))).0);
    }

    #[test]
    fn unchanged_messages_keep_their_length_prefixes() {
        // A non-minimal length prefix (0x87 0x00 for 7) in an Example nothing is removed from
        // stays as it is; the one enclosing a removal is written anew.
        let kept = m()
            .raw(&[0x0a, 0x87, 0x00])
            .raw(&m().msg(1, &entry("a", b"")).0);
        assert_eq!(kept.0.len(), 3 + 7);
        let trimmed = example(&[("a", b""), ("b", b"")]);
        let request = m().msg(2, &m().msg(1, &m().msg(1, &kept).msg(1, &trimmed)));
        let (out, removed, _) = run(&request.0, GrpcBody::Examples, &["a"]).unwrap();
        assert_eq!(removed, 1);
        let want = m().msg(
            2,
            &m().msg(1, &m().msg(1, &kept).msg(1, &example(&[("a", b"")]))),
        );
        assert_eq!(out, want.0);
    }

    /// `InferInputTensor { name, datatype, shape }`, with optional typed contents or a
    /// shared-memory parameter.
    fn infer_input(name: &str, how: &str) -> Msg {
        let t = m()
            .bytes(1, name.as_bytes())
            .bytes(2, b"FP32")
            .bytes(3, &[1, 2]);
        match how {
            "contents" => t.msg(5, &m().bytes(2, &[0; 8])),
            "shm" => t.msg(4, &entry("shared_memory_region", b"r")),
            _ => t.msg(4, &entry("other", b"p")),
        }
    }

    #[test]
    fn infer_drops_inputs_with_their_raw_entries() {
        let raw = |i: u8| vec![i; 8];
        // Raw entries before, among and after the inputs; owners a, c, e (b has contents, d is
        // in shared memory), so raw k belongs to the k-th of them.
        let input = m()
            .bytes(1, b"ranker")
            .bytes(7, &raw(0))
            .msg(5, &infer_input("a", ""))
            .msg(5, &infer_input("b", "contents"))
            .bytes(7, &raw(1))
            .msg(5, &infer_input("c", ""))
            .msg(5, &infer_input("d", "shm"))
            .bytes(6, b"\x0a\x05score")
            .msg(5, &infer_input("e", ""))
            .bytes(7, &raw(2));
        let cases: &[(&[&str], &[&str], &[u8])] = &[
            (
                &["a", "b", "c", "d", "e"],
                &["a", "b", "c", "d", "e"],
                &[0, 1, 2],
            ),
            (&["b", "c", "d", "e"], &["b", "c", "d", "e"], &[1, 2]),
            (&["a", "b", "d", "e"], &["a", "b", "d", "e"], &[0, 2]),
            (&["a", "c"], &["a", "c"], &[0, 1]),
            (&["e"], &["e"], &[2]),
            (&[], &[], &[]),
        ];
        for &(names, inputs, raws) in cases {
            let (out, removed, kept) = run(&input.0, GrpcBody::Infer, names).unwrap();
            assert_eq!(
                (removed, kept),
                (5 - inputs.len() as u64, inputs.len() as u64)
            );
            // Rebuild what should be left, in the original order.
            let mut want = m().bytes(1, b"ranker");
            let keep = |n: &str| inputs.contains(&n);
            if raws.contains(&0) {
                want = want.bytes(7, &raw(0));
            }
            for (name, how) in [("a", ""), ("b", "contents")] {
                if keep(name) {
                    want = want.msg(5, &infer_input(name, how));
                }
            }
            if raws.contains(&1) {
                want = want.bytes(7, &raw(1));
            }
            for (name, how) in [("c", ""), ("d", "shm")] {
                if keep(name) {
                    want = want.msg(5, &infer_input(name, how));
                }
            }
            want = want.bytes(6, b"\x0a\x05score");
            if keep("e") {
                want = want.msg(5, &infer_input("e", ""));
            }
            if raws.contains(&2) {
                want = want.bytes(7, &raw(2));
            }
            assert_eq!(out, want.0, "{names:?}");
        }
    }

    #[test]
    fn infer_with_misaligned_raw_entries_is_left_alone() {
        let two = m()
            .msg(5, &infer_input("a", ""))
            .msg(5, &infer_input("b", ""));
        for msg in [
            two.clone().bytes(7, b"1"),
            two.clone().bytes(7, b"1").bytes(7, b"2").bytes(7, b"3"),
            two.clone(),
        ] {
            assert!(matches!(
                trim_infer(&msg.0, allow(&["a"])),
                Err(Untrimmable::Parse { .. })
            ));
        }
        // Typed contents only: no raw entries needed.
        let typed = m()
            .msg(5, &infer_input("a", "contents"))
            .msg(5, &infer_input("b", "contents"));
        let (out, ..) = run(&typed.0, GrpcBody::Infer, &["b"]).unwrap();
        assert_eq!(out, m().msg(5, &infer_input("b", "contents")).0);
    }

    #[test]
    fn empty_and_huge_tensors() {
        let huge = vec![0x5au8; 5 << 20];
        let input = m()
            .msg(5, &infer_input("a", ""))
            .msg(5, &infer_input("b", ""))
            .msg(5, &infer_input("c", ""))
            .bytes(7, b"")
            .bytes(7, &huge)
            .bytes(7, b"");
        let (out, ..) = run(&input.0, GrpcBody::Infer, &["a", "c"]).unwrap();
        let want = m()
            .msg(5, &infer_input("a", ""))
            .msg(5, &infer_input("c", ""))
            .bytes(7, b"")
            .bytes(7, b"");
        assert!(out == want.0);
        let (out, ..) = run(&input.0, GrpcBody::Infer, &["b"]).unwrap();
        assert_eq!(
            out.len(),
            input.0.len() - 2 * (infer_input("a", "").0.len() + 2) - 4
        );
        let predict = m()
            .msg(2, &entry("big", &huge))
            .msg(2, &entry("empty", b""))
            .msg(2, &entry("x", &[]));
        let (out, ..) = run(&predict.0, GrpcBody::Predict, &["big", "empty"]).unwrap();
        // Tensors this size are compared with `assert!`: a failure would print megabytes.
        assert!(out == predict.0[..predict.0.len() - 7]);
        let ex = example(&[("big", &huge), ("small", b"")]);
        let request = m().msg(2, &m().msg(1, &m().msg(1, &ex)));
        let (out, ..) = run(&request.0, GrpcBody::Examples, &["big"]).unwrap();
        let want = example(&[("big", &huge)]);
        assert!(out == m().msg(2, &m().msg(1, &m().msg(1, &want))).0);
    }

    /// Top-level field boundaries of a well-formed message.
    fn boundaries(msg: &[u8]) -> Vec<usize> {
        let mut fields = Fields::new(msg, 0, msg.len());
        let mut at = vec![0];
        while let Some(f) = fields.next().unwrap() {
            at.push(f.end);
        }
        at
    }

    #[test]
    fn truncated_messages_are_parse_errors() {
        let predict = m()
            .msg(1, &spec())
            .msg(2, &entry("a", &tensor(40)))
            .msg(2, &entry("b", &tensor(2)));
        let ex = example(&[("a", &[1; 150]), ("b", b"2")]);
        let examples = m()
            .msg(1, &spec())
            .msg(2, &m().msg(2, &m().msg(1, &ex).msg(2, &ex)));
        let infer = m()
            .bytes(1, b"m")
            .msg(5, &infer_input("a", ""))
            .msg(5, &infer_input("b", ""))
            .bytes(7, &[3; 130])
            .bytes(7, b"x");
        for (msg, body) in [
            (predict, GrpcBody::Predict),
            (examples, GrpcBody::Examples),
            (infer, GrpcBody::Infer),
        ] {
            let ends = boundaries(&msg.0);
            for len in 0..msg.0.len() {
                let result = trim(&msg.0[..len], body, allow(&["a"]));
                if !ends.contains(&len) {
                    assert!(
                        matches!(result, Err(Untrimmable::Parse { .. })),
                        "{body:?} cut at {len}: {result:?}"
                    );
                }
                let _ = model_spec(&msg.0[..len]);
                let _ = infer_target(&msg.0[..len]);
            }
        }
    }

    #[test]
    fn malformed_messages_are_parse_errors() {
        let ok = m().msg(2, &entry("a", b"1"));
        let cases: &[&[u8]] = &[
            // Group wire types, 6 and 7.
            &[0x0b, 0x0c],
            &[0x0e],
            &[0x0f],
            // Field number 0.
            &[0x02, 0x00],
            // An eleven-byte varint, and one over 64 bits.
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
            ],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            // A length past the end.
            &[0x1a, 0x05, 0x00],
            // `inputs` that is not length-delimited.
            &[0x10, 0x01],
            // A key that is not UTF-8, and a key that is a varint.
            &[0x12, 0x03, 0x0a, 0x01, 0xff],
            &[0x12, 0x02, 0x08, 0x01],
        ];
        for &case in cases {
            let mut msg = ok.0.clone();
            msg.extend_from_slice(case);
            assert!(
                matches!(
                    trim_predict(&msg, allow(&["a"])),
                    Err(Untrimmable::Parse { .. })
                ),
                "{case:x?}"
            );
        }
        // Names in the other engines.
        let bad_name = m().bytes(5, &m().bytes(1, &[0xc3]).0).bytes(7, b"");
        assert!(matches!(
            trim_infer(&bad_name.0, allow(&[])),
            Err(Untrimmable::Parse { .. })
        ));
        let bad_key = m().bytes(
            2,
            &m().msg(1, &m().msg(1, &m().msg(1, &m().bytes(1, &[0x80]))))
                .0,
        );
        assert!(matches!(
            trim_examples(&bad_key.0, allow(&[])),
            Err(Untrimmable::Parse { .. })
        ));
    }

    #[test]
    fn routing_fields_merge_as_protobuf_does() {
        assert_eq!(model_spec(&m().msg(2, &entry("a", b"")).0), Ok(None));
        let msg = m()
            .msg(1, &m().bytes(3, b"sig").bytes(1, b"first"))
            .msg(2, &entry("a", b""))
            .msg(1, &m().bytes(1, b"ranker").msg(2, &m().uint(1, 7)));
        assert_eq!(
            model_spec(&msg.0),
            Ok(Some(ModelSpec {
                name: "ranker",
                version: Some(SpecVersion::Number(7)),
                signature_name: "sig",
            }))
        );
        // The oneof: the last side set wins; a repeated wrapper merges its value.
        let label_last = msg.clone().msg(1, &m().bytes(4, b"stable"));
        assert_eq!(
            model_spec(&label_last.0).unwrap().unwrap().version,
            Some(SpecVersion::Label("stable"))
        );
        let merged = msg.clone().msg(1, &m().msg(2, &m()));
        assert_eq!(
            model_spec(&merged.0).unwrap().unwrap().version,
            Some(SpecVersion::Number(7))
        );
        let negative = m().msg(1, &m().msg(2, &m().uint(1, -2i64 as u64)));
        assert_eq!(
            model_spec(&negative.0).unwrap().unwrap().version,
            Some(SpecVersion::Number(-2))
        );
        let after_label = label_last.msg(1, &m().msg(2, &m()));
        assert_eq!(
            model_spec(&after_label.0).unwrap().unwrap().version,
            Some(SpecVersion::Number(0))
        );
        assert!(model_spec(&m().msg(1, &m().bytes(1, &[0xff])).0).is_err());

        let infer = m()
            .bytes(2, b"3")
            .msg(5, &infer_input("a", ""))
            .bytes(1, b"x")
            .bytes(1, b"ranker");
        assert_eq!(
            infer_target(&infer.0),
            Ok(InferTarget {
                model_name: "ranker",
                model_version: "3"
            })
        );
        assert_eq!(infer_target(&[]), Ok(InferTarget::default()));
        assert!(infer_target(&m().bytes(2, &[0xfe]).0).is_err());
    }

    /// An allowlist with an identity, counting the names it is asked about.
    struct Counted<'a> {
        names: &'a [&'a str],
        id: usize,
        asked: std::cell::Cell<usize>,
    }

    impl Allowed for &Counted<'_> {
        fn allows(&self, name: &str) -> bool {
            self.asked.set(self.asked.get() + 1);
            self.names.contains(&name)
        }
        fn identity(&self) -> Option<AllowlistId> {
            Some(AllowlistId {
                set: u64::MAX - 7,
                member: self.id,
            })
        }
    }

    #[test]
    fn remembered_answers_are_used_only_for_the_same_name_and_allowlist() {
        let long = "a_feature_name_longer_than_16";
        let infer = |names: &[&str]| {
            let mut msg = m();
            for n in names {
                msg = msg.msg(5, &infer_input(n, ""));
            }
            for _ in names {
                msg = msg.bytes(7, b"r");
            }
            msg.0
        };
        let first = infer(&["a", "b", "feature_0123456", long]);
        let list = Counted {
            names: &["a", "feature_0123456", "feature_0123457", long],
            id: 1,
            asked: Default::default(),
        };
        let out = trim_infer(&first, &list).unwrap();
        assert_eq!((out.kept, list.asked.get()), (3, 4));
        // The same names: only the long one is asked again.
        trim_infer(&first, &list).unwrap();
        assert_eq!(list.asked.get(), 5);
        // A name that differs in one byte at the same position is asked.
        let second = infer(&["a", "b", "feature_0123457", long]);
        let out = trim_infer(&second, &list).unwrap();
        assert_eq!((out.kept, list.asked.get()), (3, 7));
        // Another allowlist with the same names answers for itself.
        let other = Counted {
            names: &["b"],
            id: 2,
            asked: Default::default(),
        };
        let out = trim_infer(&second, &other).unwrap();
        assert_eq!((out.kept, other.asked.get()), (1, 4));
        // Predict entries share the memo by position.
        let predict = m().msg(2, &entry("b", b"")).msg(2, &entry("a", b"")).0;
        let out = trim_predict(&predict, &list).unwrap();
        assert_eq!((out.kept, list.asked.get()), (1, 9));
        let out = trim_predict(&predict, &list).unwrap();
        assert_eq!((out.kept, list.asked.get()), (1, 9));
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut at = 0;
            assert_eq!(varint(&out, &mut at, out.len()), Ok(v));
            assert_eq!(at, out.len());
        }
    }
}
