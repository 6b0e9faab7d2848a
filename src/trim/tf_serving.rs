//! TF Serving REST bodies: `:predict` with `instances` (row format, each object a feature map)
//! or `inputs` (columnar, an object of features), and `:classify` / `:regress` with `context`
//! and `examples[]` feature maps. Everything outside those maps is copied byte for byte.

use super::json::Cursor;
use super::{filter_map, open_root, Allowed, MapKind, Output, TrimResult, Untrimmable};

/// Which body shape the URL's verb implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TfBody {
    /// `:predict`.
    Predict,
    /// `:classify` or `:regress`.
    Examples,
}

/// Trims a TF Serving REST body, keeping the features `allowed` accepts.
pub fn trim(body: &[u8], shape: TfBody, allowed: impl Allowed) -> TrimResult {
    let mut c = open_root(body)?;
    if c.empty_container(b'}') {
        c.end()?;
        return Err(Untrimmable::NotTrimmable("the body has no feature maps"));
    }
    let mut o = Output::new(body.len(), allowed.identity());
    let mut maps = 0u32;
    let (mut seen_rows, mut seen_map) = (false, false);
    loop {
        let key = c.key()?;
        let field = match (shape, c.text(key, &mut o.scratch)) {
            (TfBody::Predict, "instances") | (TfBody::Examples, "examples") => Field::Rows,
            (TfBody::Predict, "inputs") | (TfBody::Examples, "context") => Field::Map,
            _ => Field::Other,
        };
        match field {
            Field::Rows => {
                if std::mem::replace(&mut seen_rows, true) {
                    return Err(Untrimmable::NotTrimmable("the feature list appears twice"));
                }
                maps += rows(&mut c, &mut o, &allowed)?;
            }
            Field::Map => {
                if std::mem::replace(&mut seen_map, true) {
                    return Err(Untrimmable::NotTrimmable("the feature map appears twice"));
                }
                let is_map = c.peek() == Some(b'{')
                    && matches!(filter_map(&mut c, &mut o, &allowed)?, MapKind::Features);
                if !is_map {
                    return Err(Untrimmable::NotTrimmable(match shape {
                        TfBody::Predict => "`inputs` is a plain value (single-input model)",
                        TfBody::Examples => "`context` is not a feature map",
                    }));
                }
                maps += 1;
            }
            Field::Other => c.skip_value()?,
        }
        if !c.next_or_close(b'}')? {
            break;
        }
    }
    c.end()?;
    if shape == TfBody::Predict && seen_rows && seen_map {
        return Err(Untrimmable::NotTrimmable(
            "both `instances` and `inputs` are present",
        ));
    }
    if maps == 0 {
        return Err(Untrimmable::NotTrimmable("the body has no feature maps"));
    }
    Ok(o.finish(body))
}

/// The body's top-level `signature_name` (which TF Serving signature the request uses), if it
/// has one and the body reads as a JSON object; scanned without building anything.
pub fn signature_name(body: &[u8]) -> Option<String> {
    let mut c = open_root(body).ok()?;
    if c.empty_container(b'}') {
        return None;
    }
    let mut scratch = String::new();
    loop {
        let key = c.key().ok()?;
        if c.text(key, &mut scratch) == "signature_name" {
            if c.peek() != Some(b'"') {
                return None;
            }
            let value = c.string().ok()?;
            let mut text = String::new();
            return Some(c.text(value, &mut text).to_owned());
        }
        c.skip_value().ok()?;
        if !c.next_or_close(b'}').ok()? {
            return None;
        }
    }
}

/// Top-level members the trimmer rewrites.
enum Field {
    /// `instances` or `examples`: an array of feature maps.
    Rows,
    /// `inputs` or `context`: one feature map.
    Map,
    Other,
}

/// Filters an array whose elements must all be feature maps; returns how many there were.
fn rows(c: &mut Cursor<'_>, o: &mut Output, allowed: &impl Allowed) -> Result<u32, Untrimmable> {
    if c.peek() != Some(b'[') {
        return Err(Untrimmable::NotTrimmable(
            "the feature list is not an array",
        ));
    }
    c.pos += 1;
    if c.empty_container(b']') {
        return Err(Untrimmable::NotTrimmable("the feature list is empty"));
    }
    let mut maps = 0;
    loop {
        let is_map =
            c.peek() == Some(b'{') && matches!(filter_map(c, o, allowed)?, MapKind::Features);
        if !is_map {
            return Err(Untrimmable::NotTrimmable(
                "the feature list holds plain values (single-input model) or mixed rows",
            ));
        }
        maps += 1;
        if !c.next_or_close(b']')? {
            return Ok(maps);
        }
    }
}

#[cfg(test)]
mod signature_name_tests {
    use super::signature_name;

    #[test]
    fn finds_the_top_level_member_only() {
        let body =
            br#"{"instances":[{"signature_name":"no"}],"signature_name":"regress_x2_to_y3"}"#;
        assert_eq!(signature_name(body).as_deref(), Some("regress_x2_to_y3"));
        assert_eq!(signature_name(br#"{"instances":[1]}"#), None);
        assert_eq!(
            signature_name(br#"{"signature_name":"a\u0062"}"#).as_deref(),
            Some("ab")
        );
        assert_eq!(signature_name(b"not json"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow<'a>(names: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |k| names.contains(&k)
    }

    fn trimmed(body: &str, shape: TfBody, names: &[&str]) -> String {
        String::from_utf8(trim(body.as_bytes(), shape, allow(names)).unwrap().body).unwrap()
    }

    #[test]
    fn rows_and_columns() {
        let body = r#"{"signature_name":"serving_default","instances":[{"a":1,"b":[1,2],"c":"x"},{"c":"y","a":2}]}"#;
        assert_eq!(
            trimmed(body, TfBody::Predict, &["a", "c"]),
            r#"{"signature_name":"serving_default","instances":[{"a":1,"c":"x"},{"c":"y","a":2}]}"#
        );
        let body = r#"{"inputs": {"a": [1, 2], "b": {"b64": "aGk="}, "z": NaN}}"#;
        assert_eq!(
            trimmed(body, TfBody::Predict, &["b", "z"]),
            r#"{"inputs": {"b": {"b64": "aGk="}, "z": NaN}}"#
        );
    }

    #[test]
    fn classify_context_and_examples() {
        let body = r#"{"context": {"country": "de", "junk": 1}, "examples": [{"age": 3, "junk": 2}, {"junk": 0}]}"#;
        let out = trimmed(body, TfBody::Examples, &["country", "age"]);
        assert_eq!(
            out,
            r#"{"context": {"country": "de"}, "examples": [{"age": 3}, {}]}"#
        );
        let result = trim(
            body.as_bytes(),
            TfBody::Examples,
            allow(&["country", "age"]),
        )
        .unwrap();
        assert_eq!((result.removed, result.kept), (3, 2));
    }

    #[test]
    fn untouched_shapes() {
        let not = |body: &str| trim(body.as_bytes(), TfBody::Predict, allow(&["a"])).unwrap_err();
        assert!(matches!(
            not(r#"{"instances": [1, 2, 3]}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(
            not(r#"{"instances": [{"b64": "aGk="}]}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(
            not(r#"{"instances": [{"a": 1}, 2]}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(
            not(r#"{"instances": []}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(
            not(r#"{"inputs": [1, 2]}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(
            not(r#"{"signature_name": "x"}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(not(r#"[{"a": 1}]"#), Untrimmable::NotTrimmable(_)));
        assert!(matches!(
            not(r#"{"instances": [{"a": 1}], "inputs": {"a": 1}}"#),
            Untrimmable::NotTrimmable(_)
        ));
        assert!(matches!(
            not(r#"{"instances": [{"a": 1}"#),
            Untrimmable::Parse { .. }
        ));
        assert!(matches!(
            not(r#"{"instances": [{"a": 1}]} x"#),
            Untrimmable::Parse { .. }
        ));
        assert!(matches!(
            not("{\"instances\": [{\"a\": \"\u{1}\"}]}"),
            Untrimmable::Parse { .. }
        ));
        assert!(matches!(
            trim(
                b"{\"instances\": [{\"a\": \"\xff\"}]}",
                TfBody::Predict,
                |_: &str| true
            ),
            Err(Untrimmable::Parse { .. })
        ));
    }
}
