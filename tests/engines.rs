//! The trim engines alone: golden cases per protocol and body form, and a property test over
//! random documents and allowlists.

use feature_trimmer::bundle::format::{Bundle, ModelEntry, FORMAT_V1};
use feature_trimmer::bundle::snapshot::{AllowlistSnapshot, Lookup, SnapshotAllowlist};
use feature_trimmer::classify::VersionSpec;
use feature_trimmer::config::TrimConfig;
use feature_trimmer::trim::kserve::{trim_binary, trim_json};
use feature_trimmer::trim::tf_serving::{trim, TfBody};
use feature_trimmer::trim::{Allowed, AllowlistId, Untrimmable};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::cell::Cell;

fn allow<'a>(names: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
    move |k| names.contains(&k)
}

fn tf(body: &str, names: &[&str]) -> Result<String, Untrimmable> {
    trim(body.as_bytes(), TfBody::Predict, allow(names)).map(|t| String::from_utf8(t.body).unwrap())
}

#[test]
fn golden_tf_serving() {
    let cases: &[(&str, &[&str], &str)] = &[
        // NaN and infinities are values like any other.
        (
            r#"{"instances":[{"a":NaN,"b":Infinity,"c":-Infinity}]}"#,
            &["a", "c"],
            r#"{"instances":[{"a":NaN,"c":-Infinity}]}"#,
        ),
        // b64 values survive as they are.
        (
            r#"{"inputs":{"img":{"b64":"aGVsbG8="},"other":{"b64":"eA=="}}}"#,
            &["img"],
            r#"{"inputs":{"img":{"b64":"aGVsbG8="}}}"#,
        ),
        // Duplicate keys: each occurrence is judged on its own and keeps its bytes and order.
        (
            r#"{"instances":[{"a":1,"x":2,"a":3}]}"#,
            &["a"],
            r#"{"instances":[{"a":1,"a":3}]}"#,
        ),
        (
            r#"{"instances":[{"a":1,"x":2,"x":3}]}"#,
            &["a"],
            r#"{"instances":[{"a":1}]}"#,
        ),
        // Unicode escapes in names are decoded before the lookup; the raw key is kept.
        (
            r#"{"instances":[{"f\u005fa":1,"\u00e9t\u00e9":2,"z":3}]}"#,
            &["f_a", "été"],
            r#"{"instances":[{"f\u005fa":1,"\u00e9t\u00e9":2}]}"#,
        ),
        // Whitespace and separators outside removed members are kept.
        (
            "{ \"instances\" : [ { \"a\" : 1 , \"b\" : 2 } ,\n {\"b\":3, \"a\":4} ] }",
            &["a"],
            "{ \"instances\" : [ { \"a\" : 1 } ,\n {\"a\":4} ] }",
        ),
        // Only feature maps are touched: nested objects inside a kept value stay whole.
        (
            r#"{"instances":[{"a":{"b":1,"c":[{"d":2}]},"b":0}],"b":"top"}"#,
            &["a"],
            r#"{"instances":[{"a":{"b":1,"c":[{"d":2}]}}],"b":"top"}"#,
        ),
    ];
    for (body, names, expected) in cases {
        assert_eq!(tf(body, names).as_deref(), Ok(*expected), "{body}");
    }
    let not_trimmable: &[&str] = &[
        r#"{"instances":[]}"#,
        r#"{"instances":[1,2,3]}"#,
        r#"{"instances":[[1,2],[3,4]]}"#,
        r#"{"instances":[{"b64":"aGk="},{"b64":"aGk="}]}"#,
        r#"{"instances":[{"a":1},[2]]}"#,
        r#"{"inputs":[[1,2]]}"#,
    ];
    for body in not_trimmable {
        assert!(
            matches!(tf(body, &["a"]), Err(Untrimmable::NotTrimmable(_))),
            "{body}"
        );
    }
}

#[test]
fn deep_nesting_in_a_value_is_neither_a_crash_nor_a_miss() {
    let deep = "[".repeat(10_000) + "1" + &"]".repeat(10_000);
    let body = format!(r#"{{"instances":[{{"deep":{deep},"keep":1}}]}}"#);
    assert_eq!(
        tf(&body, &["keep"]).unwrap(),
        r#"{"instances":[{"keep":1}]}"#
    );
    let body = format!(r#"{{"instances":[{{"deep":{deep},"keep":1}}]}}"#);
    assert_eq!(tf(&body, &["deep", "keep"]).unwrap(), body);
    let broken = format!(
        r#"{{"instances":[{{"deep":{}1{}}}]}}"#,
        "[".repeat(10_000),
        "]".repeat(9_999)
    );
    assert!(matches!(
        tf(&broken, &["deep"]),
        Err(Untrimmable::Parse { .. })
    ));
}

#[test]
fn golden_classify_and_regress() {
    let body = r#"{"signature_name":"s","context":{"country":"de","junk":[1]},"examples":[{"age":1,"junk":2},{"age":3}]}"#;
    let out = trim(
        body.as_bytes(),
        TfBody::Examples,
        allow(&["country", "age"]),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out.body).unwrap(),
        r#"{"signature_name":"s","context":{"country":"de"},"examples":[{"age":1},{"age":3}]}"#
    );
}

#[test]
fn golden_kserve() {
    // A Triton body whose JSON header has no binary inputs: the binary section is empty.
    let header = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[1]},{"name":"b","shape":[1],"datatype":"INT32","data":[2]}]}"#;
    let t = trim_binary(header.as_bytes(), header.len(), allow(&["b"])).unwrap();
    assert_eq!(
        String::from_utf8(t.body.clone()).unwrap(),
        r#"{"inputs":[{"name":"b","shape":[1],"datatype":"INT32","data":[2]}]}"#
    );
    assert_eq!(t.json_len, Some(t.body.len()));
    // Mixed data and binary inputs: bytes follow the binary inputs only, in order.
    let header = r#"{"inputs":[{"name":"a","datatype":"UINT8","shape":[2],"parameters":{"binary_data_size":2}},{"name":"b","datatype":"UINT8","shape":[1],"data":[9]},{"name":"c","datatype":"UINT8","shape":[1],"parameters":{"other":true,"binary_data_size":1}}],"outputs":[{"name":"o","parameters":{"binary_data":true}}]}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(b"AAC");
    let t = trim_binary(&body, header.len(), allow(&["a", "b"])).unwrap();
    let json_len = t.json_len.unwrap();
    assert_eq!(&t.body[json_len..], b"AA");
    let t = trim_binary(&body, header.len(), allow(&["c"])).unwrap();
    assert_eq!(&t.body[t.json_len.unwrap()..], b"C");
    assert!(std::str::from_utf8(&t.body[..t.json_len.unwrap()])
        .unwrap()
        .contains(r#""outputs":[{"name":"o""#));
    // An input name with escapes.
    let t = trim_json(
        br#"{"inputs":[{"name":"\u0061","data":[1]},{"name":"b","data":[2]}]}"#,
        allow(&["a"]),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(t.body).unwrap(),
        r#"{"inputs":[{"name":"\u0061","data":[1]}]}"#
    );
    // A header claiming more bytes than the body has.
    assert!(matches!(
        trim_binary(&body, body.len() + 10, allow(&["a"])),
        Err(Untrimmable::Parse { .. })
    ));
}

/// The engines check UTF-8 only where bytes above 0x7F were seen (an indexed map right after
/// indexing it, the rest at the end), so every place such a byte can sit is tried with valid
/// and invalid sequences, through both the bit-parallel index and the cursor: a body is trimmed exactly when serde_json accepts it,
/// and then the non-ASCII bytes arrive as they were sent.
#[test]
fn utf8_is_checked_wherever_a_byte_above_0x7f_sits() {
    let vector = feature_trimmer::trim::vector_path();
    if vector == "portable" {
        // Past the harness's output capture: the cases still pass, through the cursor only.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "PARTLY SKIPPED in utf8_is_checked_wherever_a_byte_above_0x7f_sits: the {vector} \
             path has no map index, so the \"indexed map\" cases run through the cursor only"
        );
    }
    let valid: [&[u8]; 4] = [
        b"\xc3\xa9",
        b"\xe2\x82\xac",
        b"\xf0\x9f\x98\x80",
        b"a\xc3\xa9z",
    ];
    let invalid: [&[u8]; 8] = [
        b"\xff",             // never in UTF-8
        b"\x80",             // a lone continuation byte
        b"\xc3",             // cut short by the closing quote
        b"\xe2\x82",         // cut short
        b"\xc0\xaf",         // overlong `/`
        b"\xed\xa0\x80",     // a surrogate
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"\xc3\xa9\xff",     // valid, then not
    ];
    let long = "y".repeat(70);
    // Per engine: (body with `X` where the sequence goes, allowed names, what the spot is).
    let tf_rows: &[(&str, &[&str], &str)] = &[
        (
            r#"{"instances":[{"a":"vX","b":1,"c":2}]}"#,
            &["b"],
            "dropped value, indexed map",
        ),
        (
            r#"{"instances":[{"a":"vX","b":1,"c":2}]}"#,
            &["a"],
            "kept value, indexed map",
        ),
        (r#"{"instances":[{"kX":1,"b":2}]}"#, &["b"], "dropped key"),
        (
            r#"{"instances":[{"kX":1,"b":2}]}"#,
            &["b", "kX"],
            "kept key",
        ),
        (
            r#"{"signature_name":"sX","instances":[{"a":1,"b":2}]}"#,
            &["a"],
            "outside the maps",
        ),
        (
            r#"{"instances":[{"a":["w","vX"],"b":1}]}"#,
            &["b"],
            "in an array value",
        ),
        (
            r#"{"instances":[{"a":"v\nX","b":1}]}"#,
            &["b"],
            "after an escape",
        ),
        (
            r#"{"instances":[{"a":"X"}]}"#,
            &["b"],
            "one-member map (cursor)",
        ),
        (
            r#"{"instances":[{"a":1X,"b":2}]}"#,
            &["b"],
            "outside a string",
        ),
        (
            r#"{"instances":[{"a":"LONGXLONG","b":1}]}"#,
            &["b"],
            "across 64-byte blocks",
        ),
    ];
    let kserve: &[(&str, &[&str], &str)] = &[
        (
            r#"{"inputs":[{"name":"nX","datatype":"FP32","shape":[1],"data":[1]},{"name":"m","datatype":"FP32","shape":[1],"data":[1]}]}"#,
            &["m"],
            "dropped input name",
        ),
        (
            r#"{"inputs":[{"name":"a","datatype":"FP32","shape":[1],"data":[1]},{"name":"bX","datatype":"FP32","shape":[1],"data":[1]}]}"#,
            &["a", "bX"],
            "name of an entry like the one before (template)",
        ),
        (
            r#"{"id":"X","inputs":[{"name":"a","data":[1]},{"name":"b","data":[2]}]}"#,
            &["a"],
            "request id",
        ),
    ];
    let mut checked = (0, 0);
    for sequence in valid.iter().chain(&invalid) {
        let text = String::from_utf8_lossy(sequence);
        let fill = |template: &str| {
            let template = template.replace("LONG", &long);
            let (before, after) = template.split_once('X').unwrap();
            [before.as_bytes(), sequence, after.as_bytes()].concat()
        };
        let names = |names: &[&str]| -> Vec<String> {
            names.iter().map(|n| n.replace('X', &text)).collect()
        };
        let cases = tf_rows
            .iter()
            .map(|case| (false, case))
            .chain(kserve.iter().map(|case| (true, case)));
        for (is_kserve, &(template, allowed, spot)) in cases {
            let body = fill(template);
            let allowed = names(allowed);
            let allow = |k: &str| allowed.iter().any(|n| n == k);
            let result = if is_kserve {
                trim_json(&body, allow)
            } else {
                trim(&body, TfBody::Predict, allow)
            };
            let context = format!("{spot}: {:?}", String::from_utf8_lossy(&body));
            let Ok(input) = serde_json::from_slice::<Value>(&body) else {
                assert!(
                    matches!(result, Err(Untrimmable::Parse { .. })),
                    "{context}: {result:?}"
                );
                checked.1 += 1;
                continue;
            };
            let out = result.unwrap_or_else(|e| panic!("{context}: {e:?}"));
            let mut expected = input;
            if is_kserve {
                let inputs = expected["inputs"].as_array_mut().unwrap();
                inputs.retain(|i| allow(i["name"].as_str().unwrap()));
            } else {
                for row in expected["instances"].as_array_mut().unwrap() {
                    row.as_object_mut().unwrap().retain(|k, _| allow(k));
                }
            }
            let parsed: Value = serde_json::from_slice(&out.body).expect("valid output");
            assert_eq!(parsed, expected, "{context}");
            if expected.to_string().contains(&*text) {
                let kept = out.body.windows(sequence.len()).any(|w| w == *sequence);
                assert!(kept, "{context}: the bytes changed");
            }
            checked.0 += 1;
        }
    }
    // Valid sequences in strings are trimmed, all else is refused (so forwarded untouched).
    assert_eq!(checked, (4 * 12, 4 + 8 * 13));
    // A Triton header is checked the same way (its second entry is the first as a template
    // apart from the name); its binary section is not text.
    for (name, valid) in [(&b"b\xc3\xa9"[..], true), (b"b\xff", false)] {
        let header = [
            &br#"{"inputs":[{"name":"a","datatype":"UINT8","shape":[1],"parameters":{"binary_data_size":1}},{"name":""#[..],
            name,
            br#"","datatype":"UINT8","shape":[1],"parameters":{"binary_data_size":1}}]}"#,
        ]
        .concat();
        let body = [&header[..], b"\xff\xfe"].concat();
        match trim_binary(&body, header.len(), allow(&["a"])) {
            Ok(t) if valid => assert_eq!(&t.body[t.json_len.unwrap()..], b"\xff"),
            Err(Untrimmable::Parse { .. }) if !valid => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(name)),
        }
    }
}

/// Feature names, some of which need escaping when written as JSON.
const POOL: &[&str] = &[
    "a", "b", "c", "user_id", "é", "q\"uote", "tab\t", "b64x", "n/1", "z",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z\\\\\"\u{e9}\u{1F600} ]{0,8}".prop_map(Value::from),
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        "[A-Za-z0-9+/]{0,8}".prop_map(|s| json!({"b64": s})),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn feature_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop::sample::select(POOL), value(), 1..POOL.len())
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn allowlist() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(POOL, 1..POOL.len())
}

fn filtered(map: &Map<String, Value>, names: &[&str]) -> Value {
    Value::Object(
        map.iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn tf_rows_trim_to_exactly_the_allowed_features(
        rows in prop::collection::vec(feature_map(), 1..5),
        extra in value(),
        names in allowlist(),
        pretty in any::<bool>(),
    ) {
        let input = json!({"signature_name": "serving_default", "instances": rows, "zz_extra": extra});
        let text = if pretty { serde_json::to_string_pretty(&input) } else { serde_json::to_string(&input) }.unwrap();
        let out = trim(text.as_bytes(), TfBody::Predict, allow(&names)).unwrap();
        let expected = json!({
            "signature_name": "serving_default",
            "instances": rows.iter().map(|r| filtered(r, &names)).collect::<Vec<_>>(),
            "zz_extra": extra,
        });
        let parsed: Value = serde_json::from_slice(&out.body).unwrap();
        // Both sides go through serde_json's text parser (its float parsing is not exact).
        let expected_parsed: Value = serde_json::from_str(&serde_json::to_string(&expected).unwrap()).unwrap();
        prop_assert_eq!(&parsed, &expected_parsed);
        if !pretty {
            // Compact input: every kept byte is where serde_json would write it.
            prop_assert_eq!(std::str::from_utf8(&out.body).unwrap(), serde_json::to_string(&expected).unwrap());
        }
        let again = trim(&out.body, TfBody::Predict, allow(&names)).unwrap();
        prop_assert_eq!(again.removed, 0);
        prop_assert_eq!(again.body, out.body);
    }

    #[test]
    fn kserve_inputs_trim_to_exactly_the_allowed_names(
        // Up to 40 values per tensor: arrays of more than four numbers take the block validator.
        inputs in prop::collection::vec((prop::sample::select(POOL), prop::collection::vec(-1e3f64..1e3, 0..40)), 1..8),
        names in allowlist(),
    ) {
        let entries: Vec<Value> = inputs
            .iter()
            .map(|(name, data)| json!({"name": name, "shape": [data.len()], "datatype": "FP64", "data": data}))
            .collect();
        let input = json!({"id": "x", "inputs": entries, "outputs": [{"name": "out"}]});
        let text = serde_json::to_string(&input).unwrap();
        let out = trim_json(text.as_bytes(), allow(&names)).unwrap();
        let kept: Vec<Value> = entries.iter().filter(|e| names.contains(&e["name"].as_str().unwrap())).cloned().collect();
        let expected = json!({"id": "x", "inputs": kept, "outputs": [{"name": "out"}]});
        prop_assert_eq!(std::str::from_utf8(&out.body).unwrap(), serde_json::to_string(&expected).unwrap());
        match trim_json(&out.body, allow(&names)) {
            Ok(again) => prop_assert_eq!(again.body, out.body),
            // Every input was removed; an empty `inputs` is left alone the second time.
            Err(Untrimmable::NotTrimmable(_)) => prop_assert!(kept.is_empty()),
            Err(e) => prop_assert!(false, "{:?}", e),
        }
    }

    #[test]
    fn kserve_binary_entries_keep_their_own_tensors(
        // Three tensor kinds, so most entries repeat the one before apart from the name.
        inputs in prop::collection::vec((prop::sample::select(POOL), 1usize..4), 1..12),
        names in allowlist(),
    ) {
        let entry = |name: &str, n: usize| json!({"name": name, "shape": [1, n], "datatype": "FP32", "parameters": {"binary_data_size": 4 * n}});
        let header = |list: &[usize]| {
            let entries: Vec<Value> = list.iter().map(|&i| entry(inputs[i].0, inputs[i].1)).collect();
            serde_json::to_string(&json!({"id": "x", "inputs": entries})).unwrap()
        };
        // Each tensor's bytes are its position, so a slice cut from the wrong place shows.
        let body = |list: &[usize]| {
            let mut body = header(list).into_bytes();
            for &i in list {
                body.extend(std::iter::repeat_n(i as u8, 4 * inputs[i].1));
            }
            body
        };
        let all: Vec<usize> = (0..inputs.len()).collect();
        let kept: Vec<usize> = all.iter().copied().filter(|&i| names.contains(&inputs[i].0)).collect();
        let out = trim_binary(&body(&all), header(&all).len(), allow(&names)).unwrap();
        prop_assert_eq!(out.json_len, Some(header(&kept).len()));
        prop_assert_eq!(out.body, body(&kept));
        prop_assert_eq!((out.kept, out.removed), (kept.len() as u64, (all.len() - kept.len()) as u64));
    }
}

/// A snapshot's allowlist that counts how often the engine asks it.
struct Counting<'a> {
    inner: SnapshotAllowlist<'a>,
    asked: Cell<usize>,
}

impl Allowed for &Counting<'_> {
    fn allows(&self, name: &str) -> bool {
        self.asked.set(self.asked.get() + 1);
        self.inner.allows(name)
    }
    fn identity(&self) -> Option<AllowlistId> {
        self.inner.identity()
    }
}

/// A thread keeps its key answers from one request to the next, but only for the same
/// allowlist and only for keys of up to sixteen bytes (a longer key is checked against the
/// bytes of the body it came from, which the next request does not have).
#[test]
fn key_answers_carry_over_to_the_next_request_only_when_exact() {
    let model = |name: &str, features: &[&str]| ModelEntry {
        model: name.into(),
        version: "1".into(),
        stage: Default::default(),
        features: features.iter().map(|f| f.to_string()).collect(),
        mode: None,
        verify: None,
    };
    let mut bundle = Bundle {
        format: FORMAT_V1.into(),
        bundle: "carry-over".into(),
        generation: 1,
        created_at: None,
        source: None,
        models: vec![model("a", &["feature_alpha_0001", "x"]), model("b", &["y"])],
        labels: Default::default(),
        sha256: None,
    };
    bundle.seal();
    let snapshot = AllowlistSnapshot::build([&bundle], &TrimConfig::default());
    let list = |name: &str| {
        let Lookup::Found { entry, .. } = snapshot.lookup(name, &VersionSpec::Version("1".into()))
        else {
            panic!("model {name}")
        };
        Counting {
            inner: snapshot.allowed(&entry.allowlist),
            asked: Cell::new(0),
        }
    };
    let run = |allowed: &Counting<'_>, body: &str| {
        allowed.asked.set(0);
        let out = trim(body.as_bytes(), TfBody::Predict, allowed).unwrap();
        (String::from_utf8(out.body).unwrap(), allowed.asked.get())
    };
    let (a, b) = (list("a"), list("b"));
    assert_ne!(a.inner.identity(), b.inner.identity());
    assert!(a.inner.identity().is_some());
    // 20-byte keys with the same first and last eight bytes, at the same offsets.
    let alpha = r#"{"instances":[{"feature_alpha_0001":1,"x":2,"z":3}]}"#;
    let omgha = r#"{"instances":[{"feature_omgha_0001":1,"x":2,"z":3}]}"#;
    let (kept_alpha, kept_omgha) = (
        r#"{"instances":[{"feature_alpha_0001":1,"x":2}]}"#,
        r#"{"instances":[{"x":2}]}"#,
    );
    assert_eq!(run(&a, alpha), (kept_alpha.to_string(), 3));
    // Again: the short keys are answered from the last request, the long one is asked.
    assert_eq!(run(&a, alpha), (kept_alpha.to_string(), 1));
    assert_eq!(run(&a, omgha), (kept_omgha.to_string(), 1));
    // Another allowlist asks everything anew.
    assert_eq!(run(&b, alpha), (r#"{"instances":[{}]}"#.to_string(), 3));
    assert_eq!(run(&a, alpha), (kept_alpha.to_string(), 3));
    // A predicate without an identity keeps nothing across requests.
    let asked = Cell::new(0);
    let plain = |name: &str| {
        asked.set(asked.get() + 1);
        name == "x"
    };
    for _ in 0..2 {
        trim(alpha.as_bytes(), TfBody::Predict, plain).unwrap();
    }
    assert_eq!(asked.get(), 6);
}
