//! A JSON document borrowed from its bytes: what `serde_json::Value` holds, without a `String`
//! per string (a bundle has one per feature of every version). Objects keep the last of
//! duplicate members, as `Value` does. It is canonicalised for the checksum and deserialised
//! into the typed view, so a bundle is parsed once and its names are copied only when interned.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};
use serde_json::Number;

/// One JSON value.
#[derive(Debug, Clone)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` reads it.
    Number(Number),
    /// A string: borrowed unless it had escapes.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Json<'a>>),
    /// An array of strings written compactly (`["a","b"]`: no whitespace, no escapes), kept as
    /// its text: that text is already its canonical form, and a bundle's feature lists are
    /// such arrays. Equal to the [`Json::Array`] of the same strings.
    Strings(PlainStrings<'a>),
    /// An object's members sorted by their keys' UTF-16 code units (the canonical order),
    /// one per key.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// The text of a compact array of strings without escapes, brackets included.
#[derive(Debug, Clone, Copy)]
pub struct PlainStrings<'a>(&'a str);

impl<'a> PlainStrings<'a> {
    /// The array's text, which is its canonical form.
    pub fn text(&self) -> &'a str {
        self.0
    }

    /// The strings.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> {
        // `[` and then, per string, `"` + string + `"` + `,` or `]`; no string holds a quote.
        let mut rest = &self.0[1..];
        std::iter::from_fn(move || {
            let string = rest.strip_prefix('"')?;
            // Names are short: a plain loop beats memchr's setup.
            let end = string.bytes().position(|b| b == b'"')?;
            rest = &string[end + 2..];
            Some(&string[..end])
        })
    }
}

impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Json::Null, Json::Null) => true,
            (Json::Bool(a), Json::Bool(b)) => a == b,
            (Json::Number(a), Json::Number(b)) => a == b,
            (Json::String(a), Json::String(b)) => a == b,
            (Json::Object(a), Json::Object(b)) => a == b,
            (Json::Array(a), Json::Array(b)) => a == b,
            (Json::Strings(a), Json::Strings(b)) => a.0 == b.0,
            (Json::Strings(s), Json::Array(items)) | (Json::Array(items), Json::Strings(s)) => {
                let mut strings = s.iter();
                items
                    .iter()
                    .all(|item| matches!(item, Json::String(a) if strings.next() == Some(a)))
                    && strings.next().is_none()
            }
            _ => false,
        }
    }
}

impl<'a> Json<'a> {
    /// Parses `bytes` (borrowing every string without escapes). A document is read by a
    /// parser made for the plain JSON bundles are; anything it does not handle (an error among
    /// others) is read by `serde_json` instead, which also says what is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Json<'a>, serde_json::Error> {
        match Parser::document(bytes) {
            Some(json) => Ok(json),
            None => serde_json::from_slice(bytes),
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<Json<'de>, Json<'de>>()? {
            let Json::String(key) = key else {
                return Err(de::Error::custom("an object key that is not a string"));
            };
            members.push((key, value));
        }
        Ok(Json::Object(canonical_order(members)))
    }
}

/// An object's members (in document order) in canonical order, the last of duplicate keys
/// kept.
fn canonical_order<'a>(
    mut members: Vec<(Cow<'a, str>, Json<'a>)>,
) -> Vec<(Cow<'a, str>, Json<'a>)> {
    // Newest first, so that the stable sort keeps the last of duplicate keys first.
    members.reverse();
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    members.dedup_by(|later, kept| later.0 == kept.0);
    members
}

/// Deepest nesting the parser follows (serde_json's limit is 128): deeper documents are left
/// to serde_json, which rejects them.
const MAX_DEPTH: usize = 100;

/// A JSON parser for well-formed documents whose numbers and escaped strings are rare (what
/// bundles are): it returns `None` on anything wrong or unusual, and what it returns is what
/// `serde_json` reads from the same bytes. Numbers and strings with escapes are decoded by
/// `serde_json` itself, from their span; every other string is validated here and borrowed.
/// Items are gathered on one stack, so each array is allocated once, at its final size.
struct Parser<'a> {
    bytes: &'a [u8],
    /// Next byte to read.
    at: usize,
    /// Items of the arrays being read, innermost last.
    items: Vec<Json<'a>>,
    /// Members of the objects being read, innermost last.
    members: Vec<(Cow<'a, str>, Json<'a>)>,
}

impl<'a> Parser<'a> {
    fn document(bytes: &'a [u8]) -> Option<Json<'a>> {
        let mut parser = Parser {
            bytes,
            at: 0,
            items: Vec::new(),
            members: Vec::new(),
        };
        let json = parser.value(0)?;
        parser.skip_whitespace();
        (parser.at == bytes.len()).then_some(json)
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed when it is `expected`.
    #[inline]
    fn eat(&mut self, expected: u8) -> bool {
        self.skip_whitespace();
        let found = self.bytes.get(self.at) == Some(&expected);
        self.at += usize::from(found);
        found
    }

    fn value(&mut self, depth: usize) -> Option<Json<'a>> {
        self.skip_whitespace();
        match *self.bytes.get(self.at)? {
            b'"' => self.string().map(Json::String),
            b'[' if depth < MAX_DEPTH => self.array(depth + 1),
            b'{' if depth < MAX_DEPTH => self.object(depth + 1),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'n' => self.literal(b"null", Json::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, text: &[u8], json: Json<'a>) -> Option<Json<'a>> {
        let found = self.bytes.get(self.at..self.at + text.len()) == Some(text);
        self.at += text.len();
        found.then_some(json)
    }

    fn number(&mut self) -> Option<Json<'a>> {
        let start = self.at;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
        }
        serde_json::from_slice::<Number>(&self.bytes[start..self.at])
            .ok()
            .map(Json::Number)
    }

    /// The string starting at the current `"`.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at + 1;
        let mut end = start;
        let mut high = 0;
        loop {
            match *self.bytes.get(end)? {
                b'"' => break,
                b'\\' => return self.escaped_string(end),
                0..=0x1f => return None,
                byte => high |= byte,
            }
            end += 1;
        }
        self.at = end + 1;
        let raw = &self.bytes[start..end];
        if high < 0x80 {
            // SAFETY: every byte is below 0x80: ASCII, which is UTF-8.
            Some(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(raw) }))
        } else {
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
    }

    /// The string starting at the current `"` with an escape at `escape`, decoded by
    /// serde_json from its span.
    fn escaped_string(&mut self, mut escape: usize) -> Option<Cow<'a, str>> {
        let start = self.at;
        loop {
            match *self.bytes.get(escape)? {
                b'"' => break,
                b'\\' => escape += 2,
                _ => escape += 1,
            }
        }
        self.at = escape + 1;
        serde_json::from_slice::<String>(&self.bytes[start..self.at])
            .ok()
            .map(Cow::Owned)
    }

    /// The compact array of plain strings starting at the current `[`, if it is one (the
    /// position is left as it was otherwise).
    fn plain_strings(&mut self) -> Option<Json<'a>> {
        let bytes = self.bytes;
        let start = self.at;
        let mut at = start + 1;
        let mut high = 0;
        if bytes.get(at) == Some(&b'"') {
            loop {
                at += 1;
                loop {
                    match *bytes.get(at)? {
                        b'"' => break,
                        b'\\' | 0..=0x1f => return None,
                        byte => high |= byte,
                    }
                    at += 1;
                }
                at += 1;
                if bytes.get(at..at + 2) != Some(b",\"") {
                    break;
                }
                at += 1;
            }
        }
        if bytes.get(at) != Some(&b']') {
            return None;
        }
        let text = &bytes[start..=at];
        let text = if high < 0x80 {
            // SAFETY: every byte is below 0x80: ASCII, which is UTF-8.
            unsafe { std::str::from_utf8_unchecked(text) }
        } else {
            // The delimiters are ASCII: the text is UTF-8 exactly when every string is.
            std::str::from_utf8(text).ok()?
        };
        self.at = at + 1;
        Some(Json::Strings(PlainStrings(text)))
    }

    fn array(&mut self, depth: usize) -> Option<Json<'a>> {
        if let Some(strings) = self.plain_strings() {
            return Some(strings);
        }
        self.at += 1;
        let mark = self.items.len();
        if !self.eat(b']') {
            loop {
                let item = self.value(depth)?;
                self.items.push(item);
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b']') {
                    break;
                }
                return None;
            }
        }
        Some(Json::Array(self.items.drain(mark..).collect()))
    }

    fn object(&mut self, depth: usize) -> Option<Json<'a>> {
        self.at += 1;
        let mark = self.members.len();
        if !self.eat(b'}') {
            loop {
                self.skip_whitespace();
                if self.bytes.get(self.at) != Some(&b'"') {
                    return None;
                }
                let key = self.string()?;
                if !self.eat(b':') {
                    return None;
                }
                let value = self.value(depth)?;
                self.members.push((key, value));
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b'}') {
                    break;
                }
                return None;
            }
        }
        Some(Json::Object(canonical_order(
            self.members.drain(mark..).collect(),
        )))
    }
}

/// Deserialising the typed view from the document: strings without escapes stay borrowed
/// from the file's bytes.
impl<'de> Deserializer<'de> for &Json<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Json::Null => visitor.visit_unit(),
            Json::Bool(b) => visitor.visit_bool(*b),
            Json::Number(n) => n.deserialize_any(visitor),
            Json::String(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Json::String(Cow::Owned(s)) => visitor.visit_str(s),
            Json::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Json::Strings(strings) => {
                let mut seq =
                    SeqDeserializer::new(strings.iter().map(BorrowedStrDeserializer::new));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Json::Object(members) => {
                let mut map = MapDeserializer::new(members.iter().map(|(k, v)| (Key(k), v)));
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Json::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            // [`Features`] takes a compact list as its text.
            Json::Strings(strings) if name == FEATURES => visitor.visit_borrowed_str(strings.0),
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            // Unit variants, the only kind the bundle format has.
            Json::String(s) => visitor.visit_enum(s.as_ref().into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for &Json<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// An object key.
struct Key<'t, 'de>(&'t Cow<'de, str>);

impl<'de> Deserializer<'de> for Key<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
            Cow::Owned(s) => visitor.visit_str(s),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Key<'_, 'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// A string that borrows from the document when it can (serde's own `Cow` always copies).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Name<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for NameVisitor<'a> {
            type Value = Name<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor(std::marker::PhantomData))
    }
}

/// The newtype name under which a compact list reaches [`Features`] as its text.
const FEATURES: &str = "$trimmer::Features";

/// A model entry's feature names, borrowed: the text of a compact list (the form the pipeline
/// writes, split only as it is read), or the names one by one.
#[derive(Debug, Clone)]
pub enum Features<'a> {
    /// A compact list of plain strings, as its text.
    Text(PlainStrings<'a>),
    /// Any other list.
    Names(Vec<Name<'a>>),
}

impl<'a> Features<'a> {
    /// The names, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (text, names) = match self {
            Features::Text(text) => (Some(text.iter()), None),
            Features::Names(names) => (None, Some(names.iter().map(|n| n.as_ref()))),
        };
        text.into_iter()
            .flatten()
            .chain(names.into_iter().flatten())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Features<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FeaturesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FeaturesVisitor<'a> {
            type Value = Features<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings")
            }

            /// Only `&Json`'s deserializer calls this, with a [`Json::Strings`]' text.
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Features<'a>, E> {
                Ok(Features::Text(PlainStrings(v)))
            }

            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Features<'a>, D::Error> {
                Vec::deserialize(d).map(Features::Names)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Features<'a>, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Features::Names)
            }
        }
        deserializer.deserialize_newtype_struct(FEATURES, FeaturesVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::checksum::{bundle_checksum, document_checksum};

    /// What serde_json alone reads from `bytes`, as the parser's fallback does.
    fn by_serde(bytes: &[u8]) -> Option<Json<'_>> {
        serde_json::from_slice(bytes).ok()
    }

    #[test]
    fn the_parser_reads_what_serde_json_reads_or_leaves_it_to_it() {
        let text = r#" {"format":"trimmer.bundle/v1", "models": [ {"model": "m\u00e9", "version":"1",
            "features": ["a", "b\"q", "\ud83d\ude00", "é", "", "c\\"], "verify": {"sample": 0.05,
            "abs": 1e-3, "n": -0, "big": 18446744073709551616}}, [], {}, [[]], true, false, null],
            "labels": {"m": {"b": "2", "a": "1", "b": "3"}}, "x": 12,
            "plain": ["f_1","é","","a b","f_1"], "mixed": ["a",1], "empty": [], "one": [""]} "#;
        let bytes = text.as_bytes();
        let parsed = Parser::document(bytes).expect("a plain document is the parser's");
        assert!(matches!(parsed.get("plain"), Some(Json::Strings(_))));
        assert!(matches!(parsed.get("mixed"), Some(Json::Array(_))));
        assert_eq!(Some(parsed), by_serde(bytes));
        // Every prefix, every byte removed, and every byte replaced by a few that matter: the
        // parser either reads what serde_json reads or declines.
        let mut variants: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for i in 0..bytes.len() {
            let mut removed = bytes.to_vec();
            removed.remove(i);
            variants.push(removed);
            for b in [
                b'"', b'\\', b',', b':', b'{', b']', b'0', b'-', b'e', 0x01, 0xc3, 0xff,
            ] {
                let mut replaced = bytes.to_vec();
                replaced[i] = b;
                variants.push(replaced);
            }
        }
        let mut declined = 0;
        for variant in &variants {
            match Parser::document(variant) {
                Some(json) => {
                    let value: serde_json::Value = serde_json::from_slice(variant).unwrap();
                    assert_eq!(document_checksum(&json), bundle_checksum(&value));
                    assert_eq!(
                        Some(json),
                        by_serde(variant),
                        "{}",
                        String::from_utf8_lossy(variant)
                    );
                }
                None => declined += 1,
            }
            assert_eq!(
                Json::parse(variant).ok(),
                by_serde(variant),
                "{}",
                String::from_utf8_lossy(variant)
            );
        }
        assert!(declined > 0 && declined < variants.len());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            Parser::document(deep.as_bytes()),
            None,
            "left to serde_json"
        );
        assert!(Json::parse(deep.as_bytes()).is_ok());
    }

    #[test]
    fn reads_like_value_and_hashes_alike() {
        let text = r#"{"b": [1, -2, 3.5, 1e2, true, null, "x\u0041\n"], "a": {"z": 1, "z": 2},
            "sha256": "ignored", "\ud83d\ude00": "", "\uffff": {}, "n": 18446744073709551615}"#;
        let json = Json::parse(text.as_bytes()).unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(document_checksum(&json), bundle_checksum(&value));
        assert_eq!(
            json.get("a").unwrap().get("z"),
            Some(&Json::Number(2.into())),
            "last wins"
        );
        let Some(Json::Array(items)) = json.get("b") else {
            panic!()
        };
        assert_eq!(items[6], Json::String(Cow::Owned("xA\n".into())));
        let Json::Object(members) = &json else {
            panic!()
        };
        assert!(
            matches!(members[0].0, Cow::Borrowed("a")),
            "plain strings are borrowed"
        );
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "n", "sha256", "\u{1F600}", "\u{FFFF}"]);
    }
}
