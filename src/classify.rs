//! Request classification from the URL alone: which protocol, model, version or label, and
//! whether it is a score request the trimmer may touch. Everything else is forwarded untouched.

use std::borrow::Cow;

/// Serving protocol a URL belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TensorFlow Serving REST (`/v1/models/...`).
    TfServing,
    /// KServe V2 / Open Inference Protocol REST (`/v2/models/...`), including Triton.
    KServeV2,
}

/// Score verbs; anything else under a model path is metadata or health and never trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// TF Serving `:predict`.
    Predict,
    /// TF Serving `:classify`.
    Classify,
    /// TF Serving `:regress`.
    Regress,
    /// KServe V2 `/infer`.
    Infer,
}

/// Which version of the model the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSpec<'a> {
    /// None named: the server picks (latest).
    Unversioned,
    /// An explicit version.
    Version(Cow<'a, str>),
    /// A TF Serving version label.
    Label(Cow<'a, str>),
}

/// What a URL addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Protocol family of the URL.
    pub protocol: Protocol,
    /// Model name, percent-decoded.
    pub model: Cow<'a, str>,
    /// Version or label named by the URL.
    pub version: VersionSpec<'a>,
    /// Set when the URL is a score request (the method is checked by the caller).
    pub verb: Option<Verb>,
}

/// Classifies a request path (without query). `None` for paths outside `/v1/models/` and
/// `/v2/models/`, or with names that do not percent-decode to UTF-8.
pub fn classify(path: &str) -> Option<Target<'_>> {
    if let Some(rest) = strip_prefix_ci(path, "/v1/models/") {
        tf_serving(rest)
    } else if let Some(rest) = strip_prefix_ci(path, "/v2/models/") {
        kserve(rest)
    } else {
        None
    }
}

/// `NAME[/versions/N | /labels/L][:verb | /metadata]`.
fn tf_serving(rest: &str) -> Option<Target<'_>> {
    let end = rest.find(['/', ':']).unwrap_or(rest.len());
    let model = decode(&rest[..end])?;
    let mut rest = &rest[end..];
    let mut version = VersionSpec::Unversioned;
    let mut well_formed = true;
    if let Some(after) = strip_prefix_ci(rest, "/versions/") {
        let end = after.find(['/', ':']).unwrap_or(after.len());
        let digits = &after[..end];
        well_formed = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        version = VersionSpec::Version(Cow::Borrowed(digits));
        rest = &after[end..];
    } else if let Some(after) = strip_prefix_ci(rest, "/labels/") {
        let end = after.find(['/', ':']).unwrap_or(after.len());
        version = VersionSpec::Label(decode(&after[..end])?);
        well_formed = end > 0;
        rest = &after[end..];
    }
    let verb = match rest.to_ascii_lowercase().as_str() {
        ":predict" => Some(Verb::Predict),
        ":classify" => Some(Verb::Classify),
        ":regress" => Some(Verb::Regress),
        _ => None,
    };
    Some(Target {
        protocol: Protocol::TfServing,
        model,
        version,
        verb: verb.filter(|_| well_formed),
    })
}

/// `NAME[/versions/V][/infer | /ready | /config | ...]`.
fn kserve(rest: &str) -> Option<Target<'_>> {
    let end = rest.find('/').unwrap_or(rest.len());
    let model = decode(&rest[..end])?;
    let mut rest = &rest[end..];
    let mut version = VersionSpec::Unversioned;
    let mut well_formed = true;
    if let Some(after) = strip_prefix_ci(rest, "/versions/") {
        let end = after.find('/').unwrap_or(after.len());
        well_formed = end > 0;
        version = VersionSpec::Version(decode(&after[..end])?);
        rest = &after[end..];
    }
    let verb = rest.eq_ignore_ascii_case("/infer").then_some(Verb::Infer);
    Some(Target {
        protocol: Protocol::KServeV2,
        model,
        version,
        verb: verb.filter(|_| well_formed),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Percent-decodes a path segment; `None` if it is empty, malformed, or not UTF-8.
pub(crate) fn decode(segment: &str) -> Option<Cow<'_, str>> {
    if segment.is_empty() {
        return None;
    }
    if !segment.contains('%') {
        return Some(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target<'_> {
        classify(path).unwrap()
    }

    #[test]
    fn tf_serving_urls() {
        let t = target("/v1/models/ranker:predict");
        assert_eq!(
            (t.protocol, t.model.as_ref(), t.verb),
            (Protocol::TfServing, "ranker", Some(Verb::Predict))
        );
        assert_eq!(t.version, VersionSpec::Unversioned);
        let t = target("/V1/Models/ranker/versions/17:CLASSIFY");
        assert_eq!(t.version, VersionSpec::Version("17".into()));
        assert_eq!(t.verb, Some(Verb::Classify));
        let t = target("/v1/models/r%2Fx/labels/can%61ry:regress");
        assert_eq!(t.model, "r/x");
        assert_eq!(t.version, VersionSpec::Label("canary".into()));
        assert_eq!(t.verb, Some(Verb::Regress));
        assert_eq!(target("/v1/models/ranker/metadata").verb, None);
        assert_eq!(target("/v1/models/ranker/versions/x1:predict").verb, None);
        assert_eq!(target("/v1/models/Ranker:predict").model, "Ranker");
    }

    #[test]
    fn kserve_urls() {
        let t = target("/v2/models/m/versions/v2/infer");
        assert_eq!(
            (t.protocol, t.model.as_ref(), t.verb),
            (Protocol::KServeV2, "m", Some(Verb::Infer))
        );
        assert_eq!(t.version, VersionSpec::Version("v2".into()));
        assert_eq!(target("/v2/models/m/INFER").verb, Some(Verb::Infer));
        assert_eq!(target("/v2/models/m").verb, None);
        assert_eq!(target("/v2/models/m/ready").verb, None);
    }

    #[test]
    fn other_paths() {
        assert!(classify("/v1/models/").is_none());
        assert!(classify("/v2/health/ready").is_none());
        assert!(classify("/v1/models/%zz:predict").is_none());
        assert!(classify("/v1/models/%ff:predict").is_none());
    }
}
