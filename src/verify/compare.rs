//! Comparing the leaf's answer to a trimmed request with its answer to the original, by
//! protocol: TF Serving `predictions` / `outputs` / `results`, KServe V2 `outputs[]` (JSON
//! `data` or Triton binary outputs). Only those members are read, so identifiers (`id`,
//! `model_version`) and timing fields (`parameters`) never count as differences. Pure: bytes in,
//! a verdict out.

use serde_json::Value;

use crate::classify::Protocol;

/// A leaf's answer, as the comparison needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Inference-Header-Content-Length` of an answer with Triton binary outputs.
    pub json_len: Option<usize>,
    /// The whole body, decoded from its transfer framing.
    pub body: Vec<u8>,
}

/// How far apart two numbers may be and still count as equal: within `abs`, or within `rel`
/// of the larger magnitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute difference allowed.
    pub abs: f64,
    /// Difference allowed relative to the larger magnitude.
    pub rel: f64,
}

impl Tolerance {
    /// Whether `a` and `b` are equal within this tolerance (infinities must be equal, NaN
    /// equals NaN).
    pub fn equal(&self, a: f64, b: f64) -> bool {
        if a == b || (a.is_nan() && b.is_nan()) {
            return true;
        }
        let d = (a - b).abs();
        d <= self.abs || d <= self.rel * a.abs().max(b.abs())
    }
}

/// The first difference found: where, and both sides' values (shortened).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Example {
    /// Output and position (`predictions[0]`, `outputs[score].data[3]`).
    pub output: String,
    /// The value in the answer to the trimmed request.
    pub trimmed: String,
    /// The value in the answer to the original request.
    pub original: String,
}

/// The largest differences between two answers' numbers: what a noise pair teaches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// Largest absolute difference.
    pub abs: f64,
    /// Largest difference relative to the larger magnitude.
    pub rel: f64,
}

/// Why an answer could not be compared.
#[derive(Debug, thiserror::Error)]
#[error("answer not comparable: {0}")]
pub struct Unreadable(String);

/// `Ok(None)` when both answers agree within `tolerance`, else the first difference.
pub fn compare(
    protocol: Protocol,
    trimmed: &Answer,
    original: &Answer,
    tolerance: Tolerance,
) -> Result<Option<Example>, Unreadable> {
    let (a, b) = (outputs(protocol, trimmed)?, outputs(protocol, original)?);
    Ok(walk_outputs(&a, &b, &mut |x, y| tolerance.equal(x, y)))
}

/// The spread of two answers to the same request (a noise pair); `Ok(None)` when they differ
/// in more than numbers (shape, names, strings), which no tolerance describes.
pub fn spread(protocol: Protocol, a: &Answer, b: &Answer) -> Result<Option<Spread>, Unreadable> {
    let (a, b) = (outputs(protocol, a)?, outputs(protocol, b)?);
    let mut spread = Spread::default();
    let difference = walk_outputs(&a, &b, &mut |x, y| {
        if x != y && x.is_finite() && y.is_finite() {
            let d = (x - y).abs();
            spread.abs = spread.abs.max(d);
            spread.rel = spread.rel.max(d / x.abs().max(y.abs()));
        }
        x == y || (x.is_finite() && y.is_finite()) || (x.is_nan() && y.is_nan())
    });
    Ok(difference.is_none().then_some(spread))
}

/// One named output of an answer.
struct Output {
    /// `predictions`, `outputs` or `results` (TF Serving), the output's name (V2).
    name: String,
    /// V2 `datatype` and `shape`, compared exactly.
    meta: Option<(Value, Value)>,
    data: Data,
}

enum Data {
    /// JSON values, compared member by member.
    Json(Value),
    /// A Triton binary output of numbers.
    Numbers(Vec<f64>),
    /// A Triton binary `BYTES` output, compared byte for byte.
    Raw(Vec<u8>),
}

fn outputs(protocol: Protocol, answer: &Answer) -> Result<Vec<Output>, Unreadable> {
    let bad = |why: &str| Unreadable(why.to_owned());
    let json_len = answer.json_len.unwrap_or(answer.body.len());
    let (json, mut binary) = answer
        .body
        .split_at_checked(json_len)
        .ok_or_else(|| bad("Inference-Header-Content-Length past the body"))?;
    let document: Value =
        serde_json::from_slice(json).map_err(|e| Unreadable(format!("not JSON: {e}")))?;
    let Value::Object(mut members) = document else {
        return Err(bad("not a JSON object"));
    };
    match protocol {
        Protocol::TfServing => {
            let found: Vec<Output> = ["predictions", "outputs", "results"]
                .into_iter()
                .filter_map(|name| {
                    members.remove(name).map(|value| Output {
                        name: name.to_owned(),
                        meta: None,
                        data: Data::Json(value),
                    })
                })
                .collect();
            if found.is_empty() {
                return Err(bad("no `predictions`, `outputs` or `results`"));
            }
            Ok(found)
        }
        Protocol::KServeV2 => {
            let Some(Value::Array(list)) = members.remove("outputs") else {
                return Err(bad("no `outputs` array"));
            };
            let mut found = Vec::with_capacity(list.len());
            for output in list {
                let Value::Object(mut output) = output else {
                    return Err(bad("an output that is not an object"));
                };
                let name = match output.remove("name") {
                    Some(Value::String(name)) => name,
                    _ => return Err(bad("an output without a name")),
                };
                let datatype = output.remove("datatype").unwrap_or(Value::Null);
                let shape = output.remove("shape").unwrap_or(Value::Null);
                let size = output
                    .get("parameters")
                    .and_then(|p| p.get("binary_data_size"))
                    .and_then(Value::as_u64);
                let data = match (size, output.remove("data")) {
                    (Some(size), _) => {
                        let size = usize::try_from(size).unwrap_or(usize::MAX);
                        let (bytes, rest) = binary
                            .split_at_checked(size)
                            .ok_or_else(|| bad("binary output past the body"))?;
                        binary = rest;
                        decode_binary(datatype.as_str().unwrap_or(""), bytes)
                            .ok_or_else(|| Unreadable(format!("binary output {name}")))?
                    }
                    (None, Some(data)) => Data::Json(data),
                    (None, None) => Data::Json(Value::Null),
                };
                found.push(Output {
                    name,
                    meta: Some((datatype, shape)),
                    data,
                });
            }
            Ok(found)
        }
    }
}

/// A Triton binary tensor as numbers (little-endian, row-major), or raw bytes for `BYTES`.
fn decode_binary(datatype: &str, bytes: &[u8]) -> Option<Data> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Option<Data> {
        if !bytes.len().is_multiple_of(N) {
            return None;
        }
        let values = bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap_or([0; N])))
            .collect();
        Some(Data::Numbers(values))
    }
    match datatype {
        "BOOL" | "UINT8" => each::<1>(bytes, |b| f64::from(b[0])),
        "INT8" => each::<1>(bytes, |b| f64::from(i8::from_le_bytes(b))),
        "UINT16" => each::<2>(bytes, |b| f64::from(u16::from_le_bytes(b))),
        "INT16" => each::<2>(bytes, |b| f64::from(i16::from_le_bytes(b))),
        "FP16" => each::<2>(bytes, |b| half_to_f64(u16::from_le_bytes(b))),
        "BF16" => each::<2>(bytes, |b| {
            f64::from(f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16))
        }),
        "UINT32" => each::<4>(bytes, |b| f64::from(u32::from_le_bytes(b))),
        "INT32" => each::<4>(bytes, |b| f64::from(i32::from_le_bytes(b))),
        "FP32" => each::<4>(bytes, |b| f64::from(f32::from_le_bytes(b))),
        "UINT64" => each::<8>(bytes, |b| u64::from_le_bytes(b) as f64),
        "INT64" => each::<8>(bytes, |b| i64::from_le_bytes(b) as f64),
        "FP64" => each::<8>(bytes, f64::from_le_bytes),
        _ => Some(Data::Raw(bytes.to_vec())),
    }
}

/// IEEE 754 binary16 to f64.
fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    sign * match exponent {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}

/// The first difference between two answers' outputs; `numbers` decides for each pair of
/// numbers whether they are equal.
fn walk_outputs(
    a: &[Output],
    b: &[Output],
    numbers: &mut dyn FnMut(f64, f64) -> bool,
) -> Option<Example> {
    fn names(list: &[Output]) -> Vec<&str> {
        let mut names: Vec<&str> = list.iter().map(|o| o.name.as_str()).collect();
        names.sort_unstable();
        names
    }
    if names(a) != names(b) {
        return Some(Example {
            output: "outputs".into(),
            trimmed: names(a).join(","),
            original: names(b).join(","),
        });
    }
    for x in a {
        let Some(y) = b.iter().find(|y| y.name == x.name) else {
            continue;
        };
        let mut path = x.name.clone();
        if x.meta != y.meta {
            let meta = |o: &Output| format!("{:?}", o.meta.as_ref().map(|(d, s)| (d, s)));
            return Some(Example {
                output: path,
                trimmed: meta(x),
                original: meta(y),
            });
        }
        let found = match (&x.data, &y.data) {
            (Data::Json(p), Data::Json(q)) => walk(p, q, &mut path, numbers),
            (Data::Raw(p), Data::Raw(q)) if p == q => None,
            (p, q) => {
                let (p, q) = (flat_numbers(p), flat_numbers(q));
                match (p, q) {
                    (Some(p), Some(q)) if p.len() == q.len() => {
                        p.iter().zip(&q).enumerate().find_map(|(i, (&s, &t))| {
                            (!numbers(s, t)).then(|| Example {
                                output: format!("{path}[{i}]"),
                                trimmed: s.to_string(),
                                original: t.to_string(),
                            })
                        })
                    }
                    _ => Some(Example {
                        output: path.clone(),
                        trimmed: "(tensor)".into(),
                        original: "(a tensor of another kind or size)".into(),
                    }),
                }
            }
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The numbers of an output, flattened in row-major order (`None` if it holds anything else).
fn flat_numbers(data: &Data) -> Option<Vec<f64>> {
    fn push(v: &Value, out: &mut Vec<f64>) -> bool {
        match v {
            Value::Number(n) => n.as_f64().map(|f| out.push(f)).is_some(),
            Value::Bool(b) => {
                out.push(f64::from(u8::from(*b)));
                true
            }
            Value::Array(items) => items.iter().all(|i| push(i, out)),
            _ => false,
        }
    }
    match data {
        Data::Numbers(n) => Some(n.clone()),
        Data::Json(v) => {
            let mut out = Vec::new();
            push(v, &mut out).then_some(out)
        }
        Data::Raw(_) => None,
    }
}

/// The first difference between two JSON values at `path`.
fn walk(
    a: &Value,
    b: &Value,
    path: &mut String,
    numbers: &mut dyn FnMut(f64, f64) -> bool,
) -> Option<Example> {
    let differs = |path: &str, a: &Value, b: &Value| {
        Some(Example {
            output: path.to_owned(),
            trimmed: shorten(a.to_string()),
            original: shorten(b.to_string()),
        })
    };
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) if numbers(p, q) => None,
            _ => differs(path, a, b),
        },
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(Example {
                    output: path.clone(),
                    trimmed: format!("{} items", x.len()),
                    original: format!("{} items", y.len()),
                });
            }
            let len = path.len();
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                path.push_str(&format!("[{i}]"));
                let found = walk(p, q, path, numbers);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() || x.keys().any(|k| !y.contains_key(k)) {
                let keys = |m: &serde_json::Map<String, Value>| {
                    m.keys().cloned().collect::<Vec<_>>().join(",")
                };
                return Some(Example {
                    output: path.clone(),
                    trimmed: keys(x),
                    original: keys(y),
                });
            }
            let len = path.len();
            for (k, p) in x {
                path.push('.');
                path.push_str(k);
                let found = y.get(k).and_then(|q| walk(p, q, path, numbers));
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ if a == b => None,
        _ => differs(path, a, b),
    }
}

/// At most 120 characters of a value, for logs and `/status`.
fn shorten(mut text: String) -> String {
    if text.len() > 120 {
        let mut end = 117;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Answer {
        Answer {
            status: 200,
            json_len: None,
            body: body.as_bytes().to_vec(),
        }
    }

    const TIGHT: Tolerance = Tolerance {
        abs: 1e-6,
        rel: 1e-6,
    };

    #[test]
    fn tf_serving_compares_predictions_within_tolerance() {
        let a = json(r#"{"predictions": [[0.5, 1.0], [2.0, 3.0]]}"#);
        let close = json(r#"{"predictions": [[0.5000000001, 1.0], [2.0, 3.0]]}"#);
        let far = json(r#"{"predictions": [[0.5, 1.0], [2.0, 3.5]]}"#);
        assert_eq!(
            compare(Protocol::TfServing, &a, &close, TIGHT).unwrap(),
            None
        );
        let example = compare(Protocol::TfServing, &a, &far, TIGHT)
            .unwrap()
            .unwrap();
        assert_eq!(example.output, "predictions[1][1]");
        assert_eq!(
            (example.trimmed.as_str(), example.original.as_str()),
            ("3.0", "3.5")
        );
        let loose = Tolerance { abs: 0.0, rel: 0.2 };
        assert_eq!(compare(Protocol::TfServing, &a, &far, loose).unwrap(), None);
        // classify/regress results; members other than the outputs are ignored.
        let r1 = json(r#"{"results": [[["a", 0.25]]], "model_spec": {"version": "1"}}"#);
        let r2 = json(r#"{"results": [[["a", 0.25]]], "model_spec": {"version": "2"}}"#);
        let r3 = json(r#"{"results": [[["b", 0.25]]]}"#);
        assert_eq!(compare(Protocol::TfServing, &r1, &r2, TIGHT).unwrap(), None);
        assert!(compare(Protocol::TfServing, &r1, &r3, TIGHT)
            .unwrap()
            .is_some());
        assert!(compare(Protocol::TfServing, &json(r#"{"error": "x"}"#), &a, TIGHT).is_err());
    }

    #[test]
    fn v2_ignores_ids_and_timing_and_matches_outputs_by_name() {
        let a = json(
            r#"{"id": "1", "model_name": "m", "model_version": "1", "parameters": {"queue_ms": 3},
            "outputs": [{"name": "p", "datatype": "FP32", "shape": [2], "data": [0.1, 0.2]},
                        {"name": "q", "datatype": "INT64", "shape": [1], "data": [7]}]}"#,
        );
        let b = json(
            r#"{"id": "2", "model_name": "m", "parameters": {"queue_ms": 9},
            "outputs": [{"name": "q", "datatype": "INT64", "shape": [1], "data": [7]},
                        {"name": "p", "datatype": "FP32", "shape": [2], "data": [0.1, 0.2]}]}"#,
        );
        assert_eq!(compare(Protocol::KServeV2, &a, &b, TIGHT).unwrap(), None);
        let c = json(
            r#"{"outputs": [{"name": "p", "datatype": "FP32", "shape": [2], "data": [0.1, 0.9]},
                           {"name": "q", "datatype": "INT64", "shape": [1], "data": [7]}]}"#,
        );
        let example = compare(Protocol::KServeV2, &a, &c, TIGHT).unwrap().unwrap();
        assert_eq!(example.output, "p[1]");
        let d = json(
            r#"{"outputs": [{"name": "p", "datatype": "FP64", "shape": [2], "data": [0.1, 0.2]}]}"#,
        );
        assert!(compare(Protocol::KServeV2, &a, &d, TIGHT)
            .unwrap()
            .is_some());
    }

    #[test]
    fn triton_binary_outputs_are_decoded() {
        let binary = |values: &[f32], id: &str| {
            let header = format!(
                r#"{{"id": "{id}", "outputs": [{{"name": "p", "datatype": "FP32", "shape": [{}], "parameters": {{"binary_data_size": {}}}}}]}}"#,
                values.len(),
                values.len() * 4
            );
            let mut body = header.clone().into_bytes();
            for v in values {
                body.extend_from_slice(&v.to_le_bytes());
            }
            Answer {
                status: 200,
                json_len: Some(header.len()),
                body,
            }
        };
        let a = binary(&[1.0, 2.0], "a");
        assert_eq!(
            compare(Protocol::KServeV2, &a, &binary(&[1.0, 2.0], "b"), TIGHT).unwrap(),
            None
        );
        let example = compare(Protocol::KServeV2, &a, &binary(&[1.0, 2.5], "b"), TIGHT)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                example.output.as_str(),
                example.trimmed.as_str(),
                example.original.as_str()
            ),
            ("p[1]", "2", "2.5")
        );
        // The same tensor as JSON data compares by value.
        let as_json = json(
            r#"{"outputs": [{"name": "p", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}"#,
        );
        assert_eq!(
            compare(Protocol::KServeV2, &a, &as_json, TIGHT).unwrap(),
            None
        );
        let mut short = binary(&[1.0, 2.0], "b");
        short.body.pop();
        assert!(compare(Protocol::KServeV2, &a, &short, TIGHT).is_err());
        assert_eq!(half_to_f64(0x3c00), 1.0);
        assert_eq!(half_to_f64(0xc000), -2.0);
    }

    #[test]
    fn spread_measures_numbers_and_refuses_other_differences() {
        let a = json(r#"{"predictions": [1.0, 10.0]}"#);
        let b = json(r#"{"predictions": [1.5, 10.0]}"#);
        let s = spread(Protocol::TfServing, &a, &b).unwrap().unwrap();
        assert_eq!(s.abs, 0.5);
        assert!((s.rel - 0.5 / 1.5).abs() < 1e-12);
        let c = json(r#"{"predictions": [1.0]}"#);
        assert_eq!(spread(Protocol::TfServing, &a, &c).unwrap(), None);
    }
}
