//! The bundle checksum: lowercase hex SHA-256 of the RFC 8785 (JCS) canonical JSON of the
//! document without its `sha256` member.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::document::Json;

/// Checksum of `document` (its top-level `sha256` member, if any, is left out).
pub fn bundle_checksum(document: &Value) -> String {
    let mut canonical = Vec::with_capacity(4096);
    match document {
        // Written member by member rather than from a copy without `sha256`: a bundle's
        // document is megabytes, and a copy would double what a load holds at its peak.
        Value::Object(map) => write_object(
            map.iter().filter(|(key, _)| key.as_str() != "sha256"),
            &mut canonical,
        ),
        other => write_canonical(other, &mut canonical),
    }
    hex(&Sha256::digest(&canonical))
}

/// Checksum of a borrowed document: the same bytes hashed as [`bundle_checksum`] hashes,
/// fed to the hash as they are written rather than gathered first (a bundle's canonical form
/// is as large as its file).
pub fn document_checksum(document: &Json<'_>) -> String {
    let mut out = Canonical {
        buf: Vec::with_capacity(2 * SPILL),
        hasher: Sha256::new(),
    };
    match document {
        Json::Object(members) => {
            write_members(members.iter().filter(|(key, _)| key != "sha256"), &mut out)
        }
        other => write_document(other, &mut out),
    }
    out.hasher.update(&out.buf);
    hex(&out.hasher.finalize())
}

/// Canonical bytes on their way into the hash.
struct Canonical {
    /// Written, not yet hashed.
    buf: Vec<u8>,
    hasher: Sha256,
}

/// How much canonical text is gathered before it is hashed.
const SPILL: usize = 32 * 1024;

impl Canonical {
    fn spill(&mut self) {
        if self.buf.len() >= SPILL {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }
}

/// JCS serialisation of a borrowed document (its objects are already in canonical order).
fn write_document(value: &Json<'_>, out: &mut Canonical) {
    match value {
        Json::Null => out.buf.extend_from_slice(b"null"),
        Json::Bool(b) => out
            .buf
            .extend_from_slice(if *b { b"true" } else { b"false" }),
        Json::Number(n) => out.buf.extend_from_slice(n.to_string().as_bytes()),
        Json::String(s) => write_string(s, &mut out.buf),
        Json::Array(items) => {
            out.buf.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.buf.push(b',');
                }
                write_document(item, out);
            }
            out.buf.push(b']');
            out.spill();
        }
        Json::Object(members) => write_members(members.iter(), out),
        Json::Strings(strings) => {
            out.buf.extend_from_slice(strings.text().as_bytes());
            out.spill();
        }
    }
}

fn write_members<'a, 'b: 'a>(
    members: impl Iterator<Item = &'a (std::borrow::Cow<'b, str>, Json<'b>)>,
    out: &mut Canonical,
) {
    out.buf.push(b'{');
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.buf.push(b',');
        }
        write_string(key, &mut out.buf);
        out.buf.push(b':');
        write_document(value, out);
    }
    out.buf.push(b'}');
    out.spill();
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// JCS serialisation: no whitespace, object members sorted by their UTF-16 code units,
/// strings escaped as ECMAScript's `JSON.stringify` does (serde_json's escaping matches).
/// Numbers: integers print exactly; bundles carry no fractions (the schema has none), and a
/// float is written in serde_json's shortest form.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object(map.iter(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// An object's members sorted by their keys' UTF-16 code units.
fn write_object<'a>(members: impl Iterator<Item = (&'a String, &'a Value)>, out: &mut Vec<u8>) {
    let mut members: Vec<(&String, &Value)> = members.collect();
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push(b'{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_canonical(value, out);
    }
    out.push(b'}');
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Most names need no escape: copied as they are.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json escapes exactly `"`, `\`, and control characters (short forms \b \f \n \r \t,
    // otherwise \u00xx in lowercase), which is what JCS requires.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_by_utf16_and_drops_whitespace() {
        let doc: Value = serde_json::from_str(
            r#"{ "b": [1, 2, {"z": null, "a": true}], "a": "\u0007x\"", "\ud83d\ude00": 1, "\uffff": 2 }"#,
        )
        .unwrap();
        let mut out = Vec::new();
        write_canonical(&doc, &mut out);
        // U+1F600 is a surrogate pair (0xD83D...) and sorts before U+FFFF in UTF-16 order.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\":\"\\u0007x\\\"\",\"b\":[1,2,{\"a\":true,\"z\":null}],\"\u{1F600}\":1,\"\u{FFFF}\":2}"
        );
    }

    #[test]
    fn checksum_ignores_the_sha256_member_and_formatting() {
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": "two"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":"two","sha256":"whatever","x":1}"#).unwrap();
        assert_eq!(bundle_checksum(&a), bundle_checksum(&b));
        // sha256('{"x":1,"y":"two"}')
        assert_eq!(
            bundle_checksum(&a),
            hex(&Sha256::digest(br#"{"x":1,"y":"two"}"#))
        );
    }
}
