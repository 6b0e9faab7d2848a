//! The gRPC wire engine against a reference built with `prost`: random requests are encoded
//! field by field, shuffled, mixed with unknown fields, trimmed, and the output decoded and
//! compared with the decoded input filtered by the allowlist. The messages are declared here
//! from the field numbers in PROTOCOLS.md (subsets of the real ones: fields left out are
//! unknown fields to prost and opaque to the engine alike).

use std::collections::BTreeMap;

use feature_trimmer::trim::grpc::{
    infer_target, model_spec, trim_examples, trim_infer, trim_predict, SpecVersion,
};
use feature_trimmer::trim::{TrimResult, Untrimmable};
use proptest::prelude::*;
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct Int64Value {
    #[prost(int64, tag = "1")]
    value: i64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Version {
    #[prost(message, tag = "2")]
    Number(Int64Value),
    #[prost(string, tag = "4")]
    Label(String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct ModelSpec {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(oneof = "Version", tags = "2, 4")]
    version: Option<Version>,
    #[prost(string, tag = "3")]
    signature_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(float, repeated, tag = "5")]
    float_val: Vec<f32>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PredictRequest {
    #[prost(message, optional, tag = "1")]
    model_spec: Option<ModelSpec>,
    #[prost(btree_map = "string, message", tag = "2")]
    inputs: BTreeMap<String, TensorProto>,
    #[prost(string, repeated, tag = "3")]
    output_filter: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Int64List {
    #[prost(int64, repeated, tag = "1")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Feature {
    #[prost(message, optional, tag = "3")]
    int64_list: Option<Int64List>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Features {
    #[prost(btree_map = "string, message", tag = "1")]
    feature: BTreeMap<String, Feature>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Example {
    #[prost(message, optional, tag = "1")]
    features: Option<Features>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExampleList {
    #[prost(message, repeated, tag = "1")]
    examples: Vec<Example>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExampleListWithContext {
    #[prost(message, repeated, tag = "1")]
    examples: Vec<Example>,
    #[prost(message, optional, tag = "2")]
    context: Option<Example>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(message, tag = "1")]
    ExampleList(ExampleList),
    #[prost(message, tag = "2")]
    ExampleListWithContext(ExampleListWithContext),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Input {
    #[prost(oneof = "Kind", tags = "1, 2")]
    kind: Option<Kind>,
}

/// `ClassificationRequest` and `RegressionRequest` alike.
#[derive(Clone, PartialEq, prost::Message)]
struct ExamplesRequest {
    #[prost(message, optional, tag = "1")]
    model_spec: Option<ModelSpec>,
    #[prost(message, optional, tag = "2")]
    input: Option<Input>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InferParameter {
    #[prost(string, tag = "3")]
    string_param: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InferTensorContents {
    #[prost(int32, repeated, tag = "2")]
    int_contents: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct InferInputTensor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    datatype: String,
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
    #[prost(btree_map = "string, message", tag = "4")]
    parameters: BTreeMap<String, InferParameter>,
    #[prost(message, optional, tag = "5")]
    contents: Option<InferTensorContents>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RequestedOutput {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ModelInferRequest {
    #[prost(string, tag = "1")]
    model_name: String,
    #[prost(string, tag = "2")]
    model_version: String,
    #[prost(string, tag = "3")]
    id: String,
    #[prost(btree_map = "string, message", tag = "4")]
    parameters: BTreeMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    inputs: Vec<InferInputTensor>,
    #[prost(message, repeated, tag = "6")]
    outputs: Vec<RequestedOutput>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    raw_input_contents: Vec<Vec<u8>>,
}

/// Feature and input names: short, one empty, one not ASCII.
const POOL: [&str; 6] = ["a", "b", "c", "feature_x", "", "é"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(&POOL[..]).prop_map(String::from)
}

fn allowlist() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(&POOL[..], 0..=POOL.len())
}

fn spec() -> impl Strategy<Value = ModelSpec> {
    let version = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|value| Some(Version::Number(Int64Value { value }))),
        name().prop_map(|l| Some(Version::Label(l))),
    ];
    (name(), version, name()).prop_map(|(name, version, signature_name)| ModelSpec {
        name,
        version,
        signature_name,
    })
}

fn tensor() -> impl Strategy<Value = TensorProto> {
    (
        0i32..10,
        prop::collection::vec(0i64..100, 0..3),
        prop::collection::vec((0u16..1000).prop_map(f32::from), 0..20),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..3),
    )
        .prop_map(|(dtype, dims, float_val, string_val)| TensorProto {
            dtype,
            tensor_shape: Some(TensorShape {
                dim: dims.into_iter().map(|size| Dim { size }).collect(),
            }),
            float_val,
            string_val,
        })
}

/// An unknown field (numbers 100..200) of any wire type.
fn unknown() -> impl Strategy<Value = Vec<u8>> {
    (
        100u64..200,
        0usize..4,
        prop::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(number, wire, payload)| {
            let mut out = Vec::new();
            let wire = [0u64, 1, 2, 5][wire];
            put_varint(&mut out, number << 3 | wire);
            match wire {
                0 => put_varint(&mut out, payload.len() as u64 * 1_000_003),
                1 => out.extend_from_slice(&[7; 8]),
                5 => out.extend_from_slice(&[9; 4]),
                _ => {
                    put_varint(&mut out, payload.len() as u64);
                    out.extend_from_slice(&payload);
                }
            }
            out
        })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A top-level field record, or several, and whether it is an `inputs` record (with its key).
#[derive(Debug, Clone)]
struct Piece {
    bytes: Vec<u8>,
    role: Role,
}

#[derive(Debug, Clone, PartialEq)]
enum Role {
    Other,
    /// A feature map entry or input tensor, by name; for `ModelInfer`, whether it owns a raw
    /// entry.
    Input(String, bool),
    Raw,
}

/// The pieces in the order `order` gives them (a stable sort by random keys).
fn shuffled(mut pieces: Vec<Piece>, order: &[u32]) -> Vec<Piece> {
    let mut keyed: Vec<(u32, Piece)> = pieces
        .drain(..)
        .enumerate()
        .map(|(i, p)| (order[i % order.len()], p))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, p)| p).collect()
}

fn concat<'a>(pieces: impl IntoIterator<Item = &'a Piece>) -> Vec<u8> {
    pieces.into_iter().flat_map(|p| p.bytes.clone()).collect()
}

/// A second trim changes nothing (or finds nothing left to trim).
fn idempotent(first: &[u8], again: TrimResult) -> Result<(), TestCaseError> {
    match again {
        Ok(t) => {
            prop_assert_eq!(t.removed, 0);
            prop_assert_eq!(t.body, first);
        }
        Err(Untrimmable::NotTrimmable(_)) => {}
        Err(e) => prop_assert!(false, "the output does not parse: {:?}", e),
    }
    Ok(())
}

/// The engine's routing fields agree with prost's merge of every `model_spec` record.
fn same_spec(bytes: &[u8], decoded: Option<&ModelSpec>) -> Result<(), TestCaseError> {
    let ours = model_spec(bytes).unwrap();
    prop_assert_eq!(ours.is_some(), decoded.is_some());
    if let (Some(ours), Some(theirs)) = (ours, decoded) {
        prop_assert_eq!(ours.name, theirs.name.as_str());
        prop_assert_eq!(ours.signature_name, theirs.signature_name.as_str());
        let version = match &theirs.version {
            None => None,
            Some(Version::Number(n)) => Some(SpecVersion::Number(n.value)),
            Some(Version::Label(l)) => Some(SpecVersion::Label(l.as_str())),
        };
        prop_assert_eq!(ours.version, version);
    }
    Ok(())
}

fn examples() -> impl Strategy<Value = Vec<Example>> {
    let example = prop::option::of(prop::collection::btree_map(
        name(),
        prop::collection::vec(-5i64..5, 0..4),
        0..6,
    ))
    .prop_map(|features| Example {
        features: features.map(|f| Features {
            feature: f
                .into_iter()
                .map(|(k, value)| {
                    (
                        k,
                        Feature {
                            int64_list: Some(Int64List { value }),
                        },
                    )
                })
                .collect(),
        }),
    });
    prop::collection::vec(example, 0..4)
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input { kind: None }),
        examples().prop_map(|examples| Input {
            kind: Some(Kind::ExampleList(ExampleList { examples })),
        }),
        (examples(), prop::option::of(examples())).prop_map(|(examples, context)| Input {
            kind: Some(Kind::ExampleListWithContext(ExampleListWithContext {
                examples,
                context: context.and_then(|mut c| c.pop()),
            })),
        }),
    ]
}

/// Every `Example` of a decoded request, filtered as the engine should.
fn filter_examples(input: &mut Input, names: &[&str]) {
    let filter = |e: &mut Example| {
        if let Some(f) = e.features.as_mut() {
            f.feature.retain(|k, _| names.contains(&k.as_str()));
        }
    };
    match &mut input.kind {
        None => {}
        Some(Kind::ExampleList(l)) => l.examples.iter_mut().for_each(filter),
        Some(Kind::ExampleListWithContext(l)) => {
            l.examples.iter_mut().for_each(filter);
            l.context.iter_mut().for_each(filter);
        }
    }
}

fn count_examples(input: &Input) -> usize {
    match &input.kind {
        None => 0,
        Some(Kind::ExampleList(l)) => l.examples.len(),
        Some(Kind::ExampleListWithContext(l)) => {
            l.examples.len() + usize::from(l.context.is_some())
        }
    }
}

/// How an input tensor carries its values.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    Raw,
    Contents,
    SharedMemory,
}

fn carrier() -> impl Strategy<Value = Carrier> {
    prop_oneof![
        6 => Just(Carrier::Raw),
        1 => Just(Carrier::Contents),
        1 => Just(Carrier::SharedMemory),
    ]
}

proptest! {
    #[test]
    fn predict_matches_prost(
        specs in prop::collection::vec(spec(), 0..3),
        inputs in prop::collection::btree_map(name(), tensor(), 0..6),
        filters in prop::collection::vec(name(), 0..3),
        unknowns in prop::collection::vec(unknown(), 0..4),
        order in prop::collection::vec(any::<u32>(), 1..16),
        names in allowlist(),
    ) {
        let mut pieces: Vec<Piece> = specs.iter().map(|s| Piece {
            bytes: PredictRequest { model_spec: Some(s.clone()), ..Default::default() }.encode_to_vec(),
            role: Role::Other,
        }).collect();
        for (k, v) in &inputs {
            let one = PredictRequest { inputs: BTreeMap::from([(k.clone(), v.clone())]), ..Default::default() };
            pieces.push(Piece { bytes: one.encode_to_vec(), role: Role::Input(k.clone(), false) });
        }
        for f in &filters {
            let one = PredictRequest { output_filter: vec![f.clone()], ..Default::default() };
            pieces.push(Piece { bytes: one.encode_to_vec(), role: Role::Other });
        }
        pieces.extend(unknowns.into_iter().map(|bytes| Piece { bytes, role: Role::Other }));
        let pieces = shuffled(pieces, &order);
        let body = concat(&pieces);
        let decoded = PredictRequest::decode(&body[..]).unwrap();
        same_spec(&body, decoded.model_spec.as_ref())?;

        let allow = |k: &str| names.contains(&k);
        let out = match trim_predict(&body, allow) {
            Err(Untrimmable::NotTrimmable(_)) if inputs.is_empty() => return Ok(()),
            other => other.unwrap(),
        };
        let keep = |p: &&Piece| match &p.role {
            Role::Input(k, _) => allow(k),
            _ => true,
        };
        // Byte for byte: the kept records, in their order, unknown fields included.
        prop_assert_eq!(&out.body, &concat(pieces.iter().filter(keep)));
        let kept = inputs.keys().filter(|k| allow(k)).count() as u64;
        prop_assert_eq!((out.kept, out.removed), (kept, inputs.len() as u64 - kept));
        let mut reference = decoded;
        reference.inputs.retain(|k, _| allow(k));
        prop_assert_eq!(PredictRequest::decode(&out.body[..]).unwrap(), reference);
        idempotent(&out.body, trim_predict(&out.body, allow))?;
    }

    #[test]
    fn examples_match_prost(
        specs in prop::collection::vec(spec(), 0..2),
        inputs in prop::collection::vec(input(), 0..3),
        unknowns in prop::collection::vec(unknown(), 0..3),
        order in prop::collection::vec(any::<u32>(), 1..8),
        names in allowlist(),
    ) {
        let mut pieces: Vec<Piece> = specs.iter().map(|s| Piece {
            bytes: ExamplesRequest { model_spec: Some(s.clone()), input: None }.encode_to_vec(),
            role: Role::Other,
        }).collect();
        pieces.extend(inputs.iter().map(|i| Piece {
            bytes: ExamplesRequest { model_spec: None, input: Some(i.clone()) }.encode_to_vec(),
            role: Role::Other,
        }));
        pieces.extend(unknowns.into_iter().map(|bytes| Piece { bytes, role: Role::Other }));
        let pieces = shuffled(pieces, &order);
        let body = concat(&pieces);
        let decoded = ExamplesRequest::decode(&body[..]).unwrap();
        same_spec(&body, decoded.model_spec.as_ref())?;

        let allow = |k: &str| names.contains(&k);
        let out = match trim_examples(&body, allow) {
            Err(Untrimmable::NotTrimmable(_)) if inputs.iter().map(count_examples).sum::<usize>() == 0 => return Ok(()),
            other => other.unwrap(),
        };
        let mut reference = decoded;
        if let Some(input) = reference.input.as_mut() {
            filter_examples(input, &names);
        }
        prop_assert_eq!(ExamplesRequest::decode(&out.body[..]).unwrap(), reference);
        if out.removed == 0 {
            prop_assert_eq!(&out.body, &body);
        } else {
            prop_assert!(out.body.len() < body.len());
        }
        idempotent(&out.body, trim_examples(&out.body, allow))?;
    }

    #[test]
    fn infer_matches_prost(
        names_in in prop::collection::vec(prop::option::of(name()), 0..3),
        inputs in prop::collection::vec((name(), carrier(), prop::collection::vec(any::<u8>(), 0..9)), 0..8),
        outputs in prop::collection::vec(name(), 0..2),
        unknowns in prop::collection::vec(unknown(), 0..3),
        // Sometimes one raw entry too many or too few.
        misalign in prop_oneof![8 => Just(0i8), 1 => Just(1i8), 1 => Just(-1i8)],
        order in prop::collection::vec(any::<u32>(), 1..24),
        names in allowlist(),
    ) {
        let mut pieces = Vec::new();
        for (i, n) in names_in.iter().enumerate() {
            let mut one = ModelInferRequest { id: format!("{i}"), ..Default::default() };
            match n {
                Some(n) => one.model_name = n.clone(),
                None => one.model_version = "7".into(),
            }
            pieces.push(Piece { bytes: one.encode_to_vec(), role: Role::Other });
        }
        let mut raws = Vec::new();
        for (name, carrier, data) in &inputs {
            let mut tensor = InferInputTensor {
                name: name.clone(),
                datatype: "UINT8".into(),
                shape: vec![1, data.len() as i64],
                ..Default::default()
            };
            tensor.parameters.insert("other".into(), InferParameter { string_param: "x".into() });
            match carrier {
                Carrier::Raw => raws.push(data.clone()),
                Carrier::Contents => tensor.contents = Some(InferTensorContents {
                    int_contents: data.iter().map(|&b| i32::from(b)).collect(),
                }),
                Carrier::SharedMemory => {
                    tensor.parameters.insert("shared_memory_region".into(), InferParameter { string_param: "r".into() });
                }
            }
            let owns = matches!(carrier, Carrier::Raw);
            let one = ModelInferRequest { inputs: vec![tensor], ..Default::default() };
            pieces.push(Piece { bytes: one.encode_to_vec(), role: Role::Input(name.clone(), owns) });
        }
        match misalign {
            1 => raws.push(vec![1, 2, 3]),
            -1 => { raws.pop(); }
            _ => {}
        }
        for raw in &raws {
            let one = ModelInferRequest { raw_input_contents: vec![raw.clone()], ..Default::default() };
            pieces.push(Piece { bytes: one.encode_to_vec(), role: Role::Raw });
        }
        for o in &outputs {
            let one = ModelInferRequest { outputs: vec![RequestedOutput { name: o.clone() }], ..Default::default() };
            pieces.push(Piece { bytes: one.encode_to_vec(), role: Role::Other });
        }
        pieces.extend(unknowns.into_iter().map(|bytes| Piece { bytes, role: Role::Other }));
        let pieces = shuffled(pieces, &order);
        let body = concat(&pieces);
        let decoded = ModelInferRequest::decode(&body[..]).unwrap();
        let target = infer_target(&body).unwrap();
        prop_assert_eq!(target.model_name, decoded.model_name.as_str());
        prop_assert_eq!(target.model_version, decoded.model_version.as_str());

        let allow = |k: &str| names.contains(&k);
        let owners: Vec<bool> = pieces.iter().filter_map(|p| match &p.role {
            Role::Input(name, true) => Some(allow(name)),
            _ => None,
        }).collect();
        let result = trim_infer(&body, allow);
        if owners.len() != raws.len() {
            prop_assert!(matches!(result, Err(Untrimmable::Parse { .. })), "{:?}", result);
            return Ok(());
        }
        let out = match result {
            Err(Untrimmable::NotTrimmable(_)) if inputs.is_empty() => return Ok(()),
            other => other.unwrap(),
        };
        // The k-th raw record in the stream goes with the k-th owning input.
        let mut raw_keep = owners.iter();
        let expected: Vec<&Piece> = pieces.iter().filter(|p| match &p.role {
            Role::Input(name, _) => allow(name),
            Role::Raw => *raw_keep.next().unwrap(),
            Role::Other => true,
        }).collect();
        prop_assert_eq!(&out.body, &concat(expected));
        let mut reference = decoded;
        let mut owned = reference
            .inputs
            .iter()
            .filter(|t| t.contents.is_none() && !t.parameters.contains_key("shared_memory_region"))
            .map(|t| allow(&t.name))
            .collect::<Vec<_>>()
            .into_iter();
        reference.raw_input_contents.retain(|_| owned.next().unwrap());
        reference.inputs.retain(|t| allow(&t.name));
        prop_assert_eq!(ModelInferRequest::decode(&out.body[..]).unwrap(), reference);
        idempotent(&out.body, trim_infer(&out.body, allow))?;
    }
}
