//! Bundle and config.pbtxt parsers: no panic; an accepted bundle re-serialises to a document
//! that parses to the same bundle and passes its own checksum once sealed; the borrowed
//! document reader accepts what serde_json accepts and hashes it alike.
#![no_main]

use feature_trimmer::bundle::checksum::{bundle_checksum, document_checksum};
use feature_trimmer::bundle::document::Json;
use feature_trimmer::bundle::Bundle;
use feature_trimmer::pipeline::pbtxt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = serde_json::from_slice::<serde_json::Value>(data);
    let document = Json::parse(data);
    assert_eq!(value.is_ok(), document.is_ok());
    if let (Ok(value), Ok(document)) = (value, document) {
        assert_eq!(document_checksum(&document), bundle_checksum(&value));
    }
    if let Ok(mut bundle) = Bundle::parse_document(data) {
        bundle.seal();
        let text = serde_json::to_vec(&bundle).expect("bundles serialise");
        let again = Bundle::parse_document(&text).expect("a sealed bundle parses");
        assert_eq!(again, bundle);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pbtxt::parse(text);
    }
});
