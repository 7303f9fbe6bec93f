//! Shared fixtures for the comparison benchmarks, and the markdown table
//! printed from criterion's results.
//!
//! The fixture is a realistic `GET /_matrix/key/v2/server` response of about
//! 1 KiB: two current keys (both sign the document), four retired keys and a
//! legacy TLS fingerprint, built and signed with homeport-core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use homeport_core::ServerName;
use homeport_core::keys::ServerKeysBuilder;
use homeport_core::signing::{KeyId, SigningKey};
use serde_json::Value;

/// The server the document belongs to.
pub const SERVER: &str = "matrix.example.org";
/// `valid_until_ts` of the fixture (2026-01-01T00:00:00Z).
pub const VALID_UNTIL_TS: u64 = 1_767_225_600_000;
/// The spec's test seed, used for the first current key.
pub const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
/// Version of the key every benchmark signs and verifies with.
pub const KEY_VERSION: &str = "a_AbCd";

/// The two current keys: `ed25519:a_AbCd` (spec seed) and `ed25519:a_EfGh`.
pub fn current_keys() -> [SigningKey; 2] {
    let a = SigningKey::from_seed_base64(KEY_VERSION, SPEC_SEED).expect("spec seed");
    let b = SigningKey::from_seed(KeyId::ed25519("a_EfGh").expect("key id"), [7u8; 32]);
    [a, b]
}

/// The key the benchmarks sign and verify with (`ed25519:a_AbCd`).
pub fn bench_key() -> SigningKey {
    let [a, _] = current_keys();
    a
}

/// The 32-byte seed of [`bench_key`].
pub fn bench_seed() -> [u8; 32] {
    homeport_core::base64::decode_array::<32>(SPEC_SEED).expect("spec seed")
}

/// The signed key document as a `serde_json::Value`.
pub fn key_document() -> Value {
    let name = ServerName::parse(SERVER).expect("server name");
    let keys = current_keys();
    let mut b = ServerKeysBuilder::new(&name, VALID_UNTIL_TS);
    for k in &keys {
        b = b.verify_key(k);
    }
    let old = [
        ("a_2019", 1_561_000_000_000u64),
        ("a_2021", 1_625_000_000_000),
        ("a_2023", 1_690_000_000_000),
        ("auto_1", 1_720_000_000_000),
    ];
    for (i, (version, expired_ts)) in old.into_iter().enumerate() {
        let id = KeyId::ed25519(version).expect("key id");
        let seed = [u8::try_from(i).expect("small") + 100; 32];
        let public = SigningKey::from_seed(id.clone(), seed).public_key_base64();
        b = b.old_verify_key(&id, &public, expired_ts);
    }
    b = b.tls_certificate(b"not really a DER certificate, only its hash is published");
    let refs: Vec<&SigningKey> = keys.iter().collect();
    b.sign(&refs).expect("sign fixture")
}

/// The document as it comes off the wire: compact JSON text.
pub fn key_document_text() -> String {
    serde_json::to_string(&key_document()).expect("serialise fixture")
}

/// A PKCS#8 v1 DER document for an Ed25519 seed (RFC 8410), the form
/// `ruma_signatures::Ed25519KeyPair::from_der` reads.
pub fn pkcs8_v1_der(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// One row of the summary table: criterion ids of each side.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// What is measured.
    pub label: &'static str,
    /// Criterion group.
    pub group: &'static str,
    /// homeport's function id.
    pub homeport: &'static str,
    /// ruma's function id.
    pub ruma: &'static str,
    /// The bare ed25519-dalek floor, where there is one.
    pub floor: Option<&'static str>,
}

/// The summary rows, in table order.
pub const ROWS: &[Row] = &[
    Row {
        label: "canonical JSON encode, from `serde_json::Value`",
        group: "canonical_from_value",
        homeport: "homeport",
        ruma: "ruma",
        floor: None,
    },
    Row {
        label: "canonical JSON parse + encode, from text",
        group: "canonical_from_text",
        homeport: "homeport",
        ruma: "ruma",
        floor: None,
    },
    Row {
        label: "sign_json",
        group: "sign",
        homeport: "homeport",
        ruma: "ruma",
        floor: None,
    },
    Row {
        label: "verify_json (one ed25519 signature)",
        group: "verify",
        homeport: "homeport",
        ruma: "ruma",
        floor: Some("dalek2_verify_strict"),
    },
];

/// Where criterion writes its results for this workspace.
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion")
}

/// The median (ns) of one benchmark from its `new/estimates.json`.
pub fn median_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(group).join(id).join("new/estimates.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("median")?.get("point_estimate")?.as_f64()
}

/// A duration in ns, with a unit that keeps 3 significant digits.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), fmt_ns)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "—".to_owned(),
    }
}

/// The summary table (medians) plus a table of every benchmark found under
/// `dir`, as markdown.
pub fn markdown_table(dir: &Path) -> String {
    let mut out = String::new();
    out.push_str(
        "| operation (1 KiB key document) | homeport | ruma | bare ed25519-dalek | homeport / ruma | homeport / dalek |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for row in ROWS {
        let h = median_ns(dir, row.group, row.homeport);
        let r = median_ns(dir, row.group, row.ruma);
        let f = row.floor.and_then(|id| median_ns(dir, row.group, id));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.label,
            cell(h),
            cell(r),
            row.floor.map_or_else(|| "n/a".to_owned(), |_| cell(f)),
            ratio(h, r),
            row.floor.map_or_else(|| "n/a".to_owned(), |_| ratio(h, f)),
        );
    }
    out.push_str(
        "\nAll measurements (median):\n\n| group | benchmark | median |\n|---|---|---:|\n",
    );
    for group in [
        "canonical_from_value",
        "canonical_from_text",
        "sign",
        "verify",
        "breakdown",
    ] {
        let Ok(entries) = std::fs::read_dir(dir.join(group)) else {
            continue;
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("new/estimates.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        for id in ids {
            let _ = writeln!(
                out,
                "| {group} | {id} | {} |",
                cell(median_ns(dir, group, &id))
            );
        }
    }
    out
}

/// The prototype of two encoder changes that homeport-core has since
/// adopted (kept as a reference point: core should now match it): a 256-entry escape
/// table with a whole-run copy in `write_string` (serde_json's approach,
/// instead of a per-byte `match`), and objects written straight from the
/// map's iterator when it is already sorted (no per-object `Vec` of
/// entries). Output is byte-identical to `homeport_core::canonical_json`
/// for every value it accepts; numbers are handled by the real encoder.
pub mod experiment {
    use homeport_core::canonical_json::{self, CanonicalJsonError, Mode};
    use serde_json::Value;

    const __: u8 = 0;
    const UU: u8 = b'u';
    /// For each byte: 0 = written raw, otherwise the escape letter.
    static ESCAPE: [u8; 256] = {
        let mut t = [__; 256];
        let mut i = 0;
        while i < 0x20 {
            t[i] = UU;
            i += 1;
        }
        t[0x08] = b'b';
        t[0x09] = b't';
        t[0x0a] = b'n';
        t[0x0c] = b'f';
        t[0x0d] = b'r';
        t[b'"' as usize] = b'"';
        t[b'\\' as usize] = b'\\';
        t
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";

    /// `write_string` with a lookup table and run copies.
    pub fn write_string(out: &mut Vec<u8>, s: &str) {
        let bytes = s.as_bytes();
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let e = ESCAPE[usize::from(b)];
            if e == __ {
                continue;
            }
            out.extend_from_slice(&bytes[start..i]);
            if e == UU {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            } else {
                out.push(b'\\');
                out.push(e);
            }
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
        out.push(b'"');
    }

    fn encode(out: &mut Vec<u8>, v: &Value, mode: Mode) -> Result<(), CanonicalJsonError> {
        match v {
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    encode(out, item, mode)?;
                }
                out.push(b']');
            }
            Value::Object(map) => {
                let sorted = map
                    .keys()
                    .zip(map.keys().skip(1))
                    .all(|(a, b)| a.as_bytes() < b.as_bytes());
                out.push(b'{');
                if sorted {
                    for (i, (k, v)) in map.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_string(out, k);
                        out.push(b':');
                        encode(out, v, mode)?;
                    }
                } else {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_string(out, k);
                        out.push(b':');
                        encode(out, v, mode)?;
                    }
                }
                out.push(b'}');
            }
            // null, booleans and numbers: the real encoder (it is cheap
            // there, and owns the number rules).
            scalar => canonical_json::write_canonical(out, scalar, mode)?,
        }
        Ok(())
    }

    /// `homeport_core::signing::signed_bytes` with the two changes: the
    /// object without `signatures` and `unsigned`.
    pub fn signed_bytes(
        obj: &serde_json::Map<String, Value>,
    ) -> Result<Vec<u8>, CanonicalJsonError> {
        let mut out = Vec::with_capacity(1024);
        let mut prev: Option<&str> = None;
        let mut sorted = true;
        for k in obj.keys() {
            if prev.is_some_and(|p| p.as_bytes() >= k.as_bytes()) {
                sorted = false;
                break;
            }
            prev = Some(k);
        }
        let mut entries: Vec<(&String, &Value)> = Vec::new();
        let iter: Box<dyn Iterator<Item = (&String, &Value)>> = if sorted {
            Box::new(obj.iter())
        } else {
            entries.extend(obj.iter());
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            Box::new(entries.iter().copied())
        };
        out.push(b'{');
        let mut first = true;
        for (k, v) in iter {
            if k == "signatures" || k == "unsigned" {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_string(&mut out, k);
            out.push(b':');
            encode(&mut out, v, Mode::Lenient)?;
        }
        out.push(b'}');
        Ok(out)
    }

    /// `to_canonical_vec` with the two changes (and a 1 KiB first buffer).
    pub fn to_canonical_vec(v: &Value, mode: Mode) -> Result<Vec<u8>, CanonicalJsonError> {
        let mut out = Vec::with_capacity(1024);
        encode(&mut out, v, mode)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_is_about_one_kib_and_verifies() {
        let text = key_document_text();
        assert!((900..=1300).contains(&text.len()), "{} bytes", text.len());
        let doc = key_document();
        let key = bench_key();
        homeport_core::signing::verify_json(&doc, SERVER, key.id(), &key.verifying_key()).unwrap();
        let name = ServerName::parse(SERVER).unwrap();
        let report = homeport_core::keys::check_server_keys(&doc, &name, VALID_UNTIL_TS - 1);
        assert!(report.ok(), "{:?}", report.problems);
    }

    #[test]
    fn experiment_encoder_matches_core() {
        use homeport_core::canonical_json::{Mode, to_canonical_vec};
        let all_bytes: String =
            (0u8..0x80).map(char::from).collect::<String>() + "é日\u{1F600}\u{2028}";
        let values = [
            key_document(),
            serde_json::json!({"b": [1, -2, {"z": null, "a": true}], "a": all_bytes, "": {}, "c": []}),
            serde_json::json!({"\u{1F600}": 1, "\u{FB01}": 2, "Z": 3, "a": -0.0, "e": 1e10}),
            serde_json::json!(all_bytes),
        ];
        for v in &values {
            for mode in [Mode::Lenient, Mode::Strict] {
                assert_eq!(
                    experiment::to_canonical_vec(v, mode).ok(),
                    to_canonical_vec(v, mode).ok(),
                    "{v}"
                );
            }
            if let Some(obj) = v.as_object() {
                assert_eq!(
                    experiment::signed_bytes(obj).ok(),
                    homeport_core::signing::signed_bytes(obj).ok()
                );
            }
        }
    }
}
