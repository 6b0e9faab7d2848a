//! KServe V2 / Open Inference Protocol bodies: whole `inputs[]` entries are dropped by `name`.
//! With Triton's binary tensor extension the JSON header is followed by the tensors' bytes; a
//! dropped input's `binary_data_size` bytes are cut out and the header length is reported anew.

use super::json::Cursor;
use super::{open_root, Output, Splice, TrimResult, Trimmed, Untrimmable};

/// Trims a V2 JSON body (no binary section).
pub fn trim_json(body: &[u8], allowed: impl Fn(&str) -> bool) -> TrimResult {
    let (json, _) = trim_header(body, &allowed)?;
    Ok(json)
}

/// Trims a Triton binary-extension body whose JSON header is the first `json_len` bytes.
pub fn trim_binary(body: &[u8], json_len: usize, allowed: impl Fn(&str) -> bool) -> TrimResult {
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
    allowed: &impl Fn(&str) -> bool,
) -> Result<(Trimmed, Vec<(u64, bool)>), Untrimmable> {
    let mut c = open_root(body)?;
    let mut o = Output::new(body.len());
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
    allowed: &impl Fn(&str) -> bool,
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
    loop {
        c.ws();
        let start = c.pos;
        let (keep, size) = input_entry(c, &mut o.scratch, allowed)?;
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

/// Scans one `inputs[]` entry; returns whether its name is allowed and its binary size.
fn input_entry(
    c: &mut Cursor<'_>,
    scratch: &mut String,
    allowed: &impl Fn(&str) -> bool,
) -> Result<(bool, u64), Untrimmable> {
    if c.peek() != Some(b'{') {
        return Err(Untrimmable::NotTrimmable(
            "an `inputs` entry is not an object",
        ));
    }
    c.pos += 1;
    let (mut keep, mut size) = (None, 0u64);
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
                keep = Some(allowed(c.text(name, scratch)));
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
        Some(keep) => Ok((keep, size)),
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
}
