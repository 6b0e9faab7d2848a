//! Shared by the gRPC engine targets: the checks every wire engine must pass.

use feature_trimmer::trim::grpc::{infer_target, model_spec, trim, GrpcBody};
use feature_trimmer::trim::Untrimmable;

/// No panic; a trimmed message is no longer than the input, trims again to itself (so every
/// surviving name is allowed and it still parses), and can be trimmed down to nothing without
/// a parse error (for ModelInfer: its raw entries still pair up with their inputs).
pub fn check(body: GrpcBody, msg: &[u8], allowed: &[&str]) {
    let _ = model_spec(msg);
    let _ = infer_target(msg);
    let Ok(trimmed) = trim(msg, body, |k: &str| allowed.contains(&k)) else {
        return;
    };
    assert!(
        trimmed.body.len() <= msg.len(),
        "trimming never grows a message"
    );
    if trimmed.removed == 0 {
        assert_eq!(trimmed.body, msg, "nothing removed, nothing changed");
    }
    match trim(&trimmed.body, body, |k: &str| allowed.contains(&k)) {
        Ok(again) => {
            assert_eq!(again.removed, 0, "a second trim removed more");
            assert_eq!(
                again.body, trimmed.body,
                "a second trim changed the message"
            );
            assert_eq!(again.kept, trimmed.kept);
        }
        Err(Untrimmable::NotTrimmable(_)) => assert_eq!(trimmed.kept, 0),
        Err(e) => panic!("the trimmed message does not parse: {e:?}"),
    }
    if let Err(Untrimmable::Parse { .. }) = trim(&trimmed.body, body, |_: &str| false) {
        panic!("the trimmed message does not trim to nothing");
    }
}
