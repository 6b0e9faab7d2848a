//! KServe V2 / Open Inference Protocol bodies: whole `inputs[]` entries are dropped by `name`.
//! With Triton's binary tensor extension the JSON header is followed by the tensors' bytes; a
//! dropped input's `binary_data_size` bytes are cut out and the header length is reported anew.

use std::ops::Range;

use super::json::{self, string_stop, Cursor};
use super::{open_root, Allowed, Output, Splice, TrimResult, Trimmed, Untrimmable};

/// Trims a V2 JSON body (no binary section).
pub fn trim_json(body: &[u8], allowed: impl Allowed) -> TrimResult {
    let (json, _) = trim_header(body, &allowed)?;
    Ok(json)
}

/// Trims a Triton binary-extension body whose JSON header is the first `json_len` bytes.
pub fn trim_binary(body: &[u8], json_len: usize, allowed: impl Allowed) -> TrimResult {
    if json_len == 0 {
        return Err(Untrimmable::NotTrimmable(
            "Inference-Header-Content-Length: 0 (one raw tensor)",
        ));
    }
    let Some((header, binary)) = body.split_at_checked(json_len) else {
        return Err(Untrimmable::Parse {
            offset: body.len(),
            reason: "Inference-Header-Content-Length within the body",
        });
    };
    let (mut trimmed, inputs) = trim_header(header, &allowed)?;
    let claimed: u64 = inputs.iter().map(|&(size, _)| size).sum();
    if claimed != binary.len() as u64 {
        return Err(Untrimmable::Parse {
            offset: json_len,
            reason: "binary_data_size values that add up to the binary section",
        });
    }
    let new_json_len = trimmed.body.len();
    let mut offset = 0usize;
    for (size, keep) in inputs {
        // Sizes add up to `binary.len()`, so these fit in usize.
        let end = offset + size as usize;
        if keep {
            trimmed.body.extend_from_slice(&binary[offset..end]);
        }
        offset = end;
    }
    trimmed.json_len = Some(new_json_len);
    Ok(trimmed)
}

/// Trims the JSON document; also returns each input's `(binary_data_size, kept)` in order.
fn trim_header(
    body: &[u8],
    allowed: &impl Allowed,
) -> Result<(Trimmed, Vec<(u64, bool)>), Untrimmable> {
    let mut c = open_root(body)?;
    let mut o = Output::new(body.len(), None);
    let mut inputs: Option<Vec<(u64, bool)>> = None;
    if !c.empty_container(b'}') {
        loop {
            let key = c.key()?;
            if c.text(key, &mut o.scratch) != "inputs" {
                c.skip_value()?;
            } else if inputs.is_some() {
                return Err(Untrimmable::NotTrimmable("`inputs` appears twice"));
            } else {
                inputs = Some(filter_inputs(&mut c, &mut o, allowed)?);
            }
            if !c.next_or_close(b'}')? {
                break;
            }
        }
    }
    c.end()?;
    match inputs {
        None => Err(Untrimmable::NotTrimmable("the body has no `inputs`")),
        Some(inputs) if inputs.is_empty() => Err(Untrimmable::NotTrimmable("`inputs` is empty")),
        Some(inputs) => Ok((o.finish(body), inputs)),
    }
}

/// Filters the `inputs` array at the cursor by name.
fn filter_inputs(
    c: &mut Cursor<'_>,
    o: &mut Output,
    allowed: &impl Allowed,
) -> Result<Vec<(u64, bool)>, Untrimmable> {
    if c.peek() != Some(b'[') {
        return Err(Untrimmable::NotTrimmable("`inputs` is not an array"));
    }
    c.pos += 1;
    let mut list = Vec::new();
    if c.empty_container(b']') {
        return Ok(list);
    }
    c.ws();
    let bytes = c.bytes;
    let mut splice = Splice::open(&mut o.out, bytes, o.copied, c.pos);
    let mut template: Option<Template> = None;
    loop {
        c.ws();
        let start = c.pos;
        let (keep, size) = match template.as_mut().and_then(|t| t.matches(bytes, start)) {
            Some((name, end, size)) => {
                c.pos = end;
                (allowed.allows(json::str_of(&bytes[name])), size)
            }
            None => {
                let (keep, size, name) = input_entry(c, &mut o.scratch, allowed)?;
                template = name.map(|name| Template {
                    start,
                    name,
                    end: c.pos,
                    size,
                });
                (keep, size)
            }
        };
        splice.item(&mut o.out, bytes, start, c.pos, keep);
        if keep {
            o.kept += 1;
        } else {
            o.removed += 1;
        }
        list.push((size, keep));
        if !c.next_or_close(b']')? {
            break;
        }
    }
    o.copied = splice.close(&mut o.out, bytes, c.pos);
    Ok(list)
}

/// Members of an `inputs[]` entry the trimmer reads.
enum Field {
    Name,
    Parameters,
    Other,
}

/// An entry already scanned, for the next one to be compared with: tensors of one request
/// usually differ only in their name (same shape, datatype and binary size), and an entry whose
/// bytes equal the template's outside the name string is valid and means the same, apart
/// from the name.
struct Template {
    /// Offset of the entry's `{`.
    start: usize,
    /// The content of its name string (between the quotes), which has no escapes.
    name: Range<usize>,
    /// Offset just past its `}`.
    end: usize,
    /// Its `binary_data_size` (0 without one).
    size: u64,
}

impl Template {
    /// When the entry at `start` is the template with another plain name: that name's range,
    /// the offset past the entry and the size. The template then follows the new entry.
    #[inline]
    fn matches(&mut self, bytes: &[u8], start: usize) -> Option<(Range<usize>, usize, u64)> {
        let before = &bytes[self.start..self.name.start];
        let name_start = start + before.len();
        if bytes.get(start..name_start)? != before {
            return None;
        }
        let (name_end, high) = string_stop(bytes, name_start);
        if high {
            return None;
        }
        let after = &bytes[self.name.end..self.end];
        let end = name_end + after.len();
        if bytes.get(name_end..end)? != after {
            return None;
        }
        // `after` starts with the closing quote, so the name ended at a quote, not at an
        // escape or a control character, and it had no byte above 0x7F: it is plain ASCII.
        self.start = start;
        self.name = name_start..name_end;
        self.end = end;
        Some((name_start..name_end, end, self.size))
    }
}

/// Scans one `inputs[]` entry; returns whether its name is allowed, its binary size and,
/// when the name has no escapes, the range of the name's content.
fn input_entry(
    c: &mut Cursor<'_>,
    scratch: &mut String,
    allowed: &impl Allowed,
) -> Result<(bool, u64, Option<Range<usize>>), Untrimmable> {
    if c.peek() != Some(b'{') {
        return Err(Untrimmable::NotTrimmable(
            "an `inputs` entry is not an object",
        ));
    }
    c.pos += 1;
    let (mut keep, mut size, mut plain_name) = (None, 0u64, None);
    if c.empty_container(b'}') {
        return Err(Untrimmable::NotTrimmable("an `inputs` entry has no name"));
    }
    loop {
        let key = c.key()?;
        let field = match c.text(key, scratch) {
            "name" => Field::Name,
            "parameters" => Field::Parameters,
            _ => Field::Other,
        };
        match field {
            Field::Name => {
                if c.peek() != Some(b'"') || keep.is_some() {
                    return Err(Untrimmable::NotTrimmable(
                        "an input name is not a single string",
                    ));
                }
                let name = c.string()?;
                keep = Some(allowed.allows(c.text(name, scratch)));
                plain_name = (!name.escaped).then_some(name.start + 1..name.end - 1);
            }
            Field::Parameters if c.peek() == Some(b'{') => {
                c.pos += 1;
                if !c.empty_container(b'}') {
                    loop {
                        let key = c.key()?;
                        if c.text(key, scratch) == "binary_data_size" {
                            size = c.unsigned()?;
                        } else {
                            c.skip_value()?;
                        }
                        if !c.next_or_close(b'}')? {
                            break;
                        }
                    }
                }
            }
            _ => c.skip_value()?,
        }
        if !c.next_or_close(b'}')? {
            break;
        }
    }
    match keep {
        Some(keep) => Ok((keep, size, plain_name)),
        None => Err(Untrimmable::NotTrimmable("an `inputs` entry has no name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow<'a>(names: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |k| names.contains(&k)
    }

    #[test]
    fn drops_whole_inputs_by_name() {
        let body = br#"{"id":"r1","inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1.5]}, {"shape":[1],"name":"b","datatype":"FP32","data":[2]},{"name":"c","shape":[1],"datatype":"BYTES","data":["x"]}],"outputs":[{"name":"out"}]}"#;
        let t = trim_json(body, allow(&["a", "c"])).unwrap();
        assert_eq!(
            std::str::from_utf8(&t.body).unwrap(),
            r#"{"id":"r1","inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1.5]},{"name":"c","shape":[1],"datatype":"BYTES","data":["x"]}],"outputs":[{"name":"out"}]}"#
        );
        assert_eq!((t.removed, t.kept), (1, 2));
        let t = trim_json(body, allow(&["b"])).unwrap();
        assert_eq!(
            std::str::from_utf8(&t.body).unwrap(),
            r#"{"id":"r1","inputs":[{"shape":[1],"name":"b","datatype":"FP32","data":[2]}],"outputs":[{"name":"out"}]}"#
        );
    }

    #[test]
    fn binary_sections_follow_their_inputs() {
        let json = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT8","parameters":{"binary_data_size":2}},{"name":"b","shape":[1],"datatype":"INT8","data":[7]},{"name":"c","shape":[3],"datatype":"INT8","parameters":{"binary_data_size":3}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[1, 2, 3, 4, 5]);
        let t = trim_binary(&body, json.len(), allow(&["b", "c"])).unwrap();
        let new_len = t.json_len.unwrap();
        assert_eq!(
            std::str::from_utf8(&t.body[..new_len]).unwrap(),
            r#"{"inputs":[{"name":"b","shape":[1],"datatype":"INT8","data":[7]},{"name":"c","shape":[3],"datatype":"INT8","parameters":{"binary_data_size":3}}]}"#
        );
        assert_eq!(&t.body[new_len..], &[3, 4, 5]);
        // Sizes that do not add up, or a header past the end, are not guessed at.
        assert!(matches!(
            trim_binary(&body[..body.len() - 1], json.len(), allow(&["b"])),
            Err(Untrimmable::Parse { .. })
        ));
        assert!(matches!(
            trim_binary(&body, body.len() + 1, allow(&["b"])),
            Err(Untrimmable::Parse { .. })
        ));
        assert!(matches!(
            trim_binary(&body, 0, allow(&["b"])),
            Err(Untrimmable::NotTrimmable(_))
        ));
    }

    #[test]
    fn an_entry_like_the_one_before_is_still_checked() {
        let entry = |name: &str| {
            format!(
                r#"{{"name":"{name}","shape":[1],"datatype":"INT8","parameters":{{"binary_data_size":1}}}}"#
            )
        };
        let body = |names: &[&str]| {
            let entries: Vec<String> = names.iter().map(|n| entry(n)).collect();
            let mut body = format!(r#"{{"inputs":[{}]}}"#, entries.join(",")).into_bytes();
            let json_len = body.len();
            body.extend((0..names.len()).map(|i| i as u8));
            (body, json_len)
        };
        // An escaped name does not match the template; the full scan reads it.
        let (b, len) = body(&["a", r#"b\"c"#, "d"]);
        let t = trim_binary(&b, len, allow(&["b\"c", "d"])).unwrap();
        assert_eq!(t.kept, 2);
        assert_eq!(&t.body[t.json_len.unwrap()..], &[1, 2]);
        // A raw control character in a name is not JSON, wherever it is.
        let (b, len) = body(&["a", "b\u{1}", "d"]);
        assert!(matches!(
            trim_binary(&b, len, allow(&["a"])),
            Err(Untrimmable::Parse { .. })
        ));
    }
}
