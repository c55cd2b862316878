//! RPC reply bodies: decoding any bytes, and encode → decode giving back the same result or
//! remote error.
#![no_main]

use enoki::{RemoteError, fuzzing};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::decode_reply(data);

    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let json = serde_json::to_vec(&value).expect("a Value serializes");
        let mut body = Vec::new();
        fuzzing::encode_reply(Ok(&json), &mut body);
        let decoded = fuzzing::decode_reply(&body).expect("an encoded result decodes");
        // Against the same text parsed alone: serde_json's default float parsing may move a
        // re-read float by one ulp, which is not enoki's doing.
        let expected: Value = serde_json::from_slice(&json).expect("re-reads");
        assert_eq!(decoded, expected);
    }

    if let Ok(remote) = serde_json::from_slice::<RemoteError>(data) {
        let mut body = Vec::new();
        fuzzing::encode_reply(Err(&remote), &mut body);
        let err = fuzzing::decode_reply(&body).expect_err("an encoded error decodes as one");
        assert_eq!(err.as_remote(), Some(&remote));
    }
});
