//! Canonical JSON: parse -> encode -> parse gives the same value, and
//! encoding is idempotent.
#![no_main]

use homeport_core::canonical_json::{self, Mode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = canonical_json::parse(text, Mode::Lenient) else {
        return;
    };
    let out = canonical_json::to_canonical_string(&value, Mode::Lenient)
        .unwrap_or_else(|e| panic!("parse accepted {text:?} but encoding failed: {e}"));
    // The lenient parser already turned integral floats into integers, so
    // strict encoding must succeed too, with the same bytes.
    let strict = canonical_json::to_canonical_string(&value, Mode::Strict)
        .unwrap_or_else(|e| panic!("strict encoding of lenient-parsed {text:?} failed: {e}"));
    assert_eq!(strict, out);

    // serde_json reads the output back to the same value ...
    let by_serde: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("serde_json rejects canonical output {out:?}: {e}"));
    assert_eq!(
        by_serde, value,
        "serde_json re-parse of {out:?} differs (input {text:?})"
    );
    // ... and so does the checked parser in strict mode.
    let by_core = canonical_json::parse(&out, Mode::Strict)
        .unwrap_or_else(|e| panic!("strict parse rejects canonical output {out:?}: {e}"));
    assert_eq!(
        by_core, value,
        "strict re-parse of {out:?} differs (input {text:?})"
    );

    // Idempotent: encoding the re-parsed value gives identical bytes.
    for v in [&by_serde, &by_core] {
        let out2 = canonical_json::to_canonical_vec(v, Mode::Strict)
            .unwrap_or_else(|e| panic!("re-encoding {out:?} failed: {e}"));
        assert_eq!(
            out2,
            out.as_bytes(),
            "encoding is not idempotent for {text:?}"
        );
    }
});
