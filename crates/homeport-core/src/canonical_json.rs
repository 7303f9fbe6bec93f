//! Canonical JSON as the Matrix spec defines it.
//!
//! The encoder owns key order (sorted by code point, which for UTF-8 is byte
//! order) and the number rules, so its output never depends on how
//! `serde_json::Map` happens to iterate (for example with serde_json's
//! `preserve_order` feature enabled by some other crate in the graph).
//!
//! Numbers: integers must lie within ±(2^53−1). In [`Mode::Lenient`] (the
//! spec's own example, and homeport's default) an integral float such as
//! `-0` or `1e10` is written as the integer it equals; in [`Mode::Strict`]
//! (what room versions 6 and later require) any float is rejected. A fraction
//! is rejected in both modes.
//!
//! ```
//! use homeport_core::canonical_json::{to_canonical_string, Mode};
//! let v = serde_json::json!({"b": "2", "a": -0.0, "c": 1e10});
//! assert_eq!(to_canonical_string(&v, Mode::Lenient).unwrap(),
//!            r#"{"a":0,"b":"2","c":10000000000}"#);
//! ```

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Largest integer canonical JSON allows (2^53 − 1).
pub const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;
/// Smallest integer canonical JSON allows (−(2^53 − 1)).
pub const MIN_SAFE_INTEGER: i64 = -MAX_SAFE_INTEGER;

/// How floats are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Integral floats (`-0`, `1e10`, `2.0`) are written as integers.
    #[default]
    Lenient,
    /// Every float is rejected, including `-0`.
    Strict,
}

/// Why a value has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalJsonError {
    /// An integer outside ±(2^53−1).
    #[error("integer {value} at {path} is outside the canonical JSON range ±(2^53-1)")]
    IntegerOutOfRange {
        /// The number as text.
        value: String,
        /// JSON path (`$.a[0].b`).
        path: String,
    },
    /// A number with a fractional part.
    #[error("number {value} at {path} is not an integer; canonical JSON has no fractions")]
    Fraction {
        /// The number as text.
        value: String,
        /// JSON path.
        path: String,
    },
    /// A float in strict mode.
    #[error(
        "number {value} at {path} is written as a float (exponent, fraction or -0); strict canonical JSON allows only integers"
    )]
    FloatInStrictMode {
        /// The number as text.
        value: String,
        /// JSON path.
        path: String,
    },
}

/// Encode `value` as canonical JSON bytes.
pub fn to_canonical_vec(value: &Value, mode: Mode) -> Result<Vec<u8>, CanonicalJsonError> {
    // 1 KiB holds a typical key document or event without regrowing.
    let mut out = Vec::with_capacity(1024);
    write_canonical(&mut out, value, mode)?;
    Ok(out)
}

/// Encode `value` as a canonical JSON string.
pub fn to_canonical_string(value: &Value, mode: Mode) -> Result<String, CanonicalJsonError> {
    let bytes = to_canonical_vec(value, mode)?;
    // The encoder writes only valid UTF-8 (string contents come from `str`,
    // everything else is ASCII), so the lossy branch is never taken.
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Append the canonical encoding of `value` to `out`.
pub fn write_canonical(
    out: &mut Vec<u8>,
    value: &Value,
    mode: Mode,
) -> Result<(), CanonicalJsonError> {
    match encode(out, value, mode) {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into_error()),
    }
}

/// Append the canonical encoding of an object, leaving out the given
/// top-level keys (used for signing: `signatures` and `unsigned`).
pub fn write_canonical_object_without(
    out: &mut Vec<u8>,
    map: &Map<String, Value>,
    skip: &[&str],
    mode: Mode,
) -> Result<(), CanonicalJsonError> {
    let kept = |k: &String| !skip.contains(&k.as_str());
    let result = if keys_ascending(map) {
        write_entries(out, map.iter().filter(|(k, _)| kept(k)), mode)
    } else {
        let mut entries: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| kept(k)).collect();
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        write_entries(out, entries.into_iter(), mode)
    };
    result.map_err(Pending::into_error)
}

/// Error under construction: the path is collected innermost first while the
/// recursion unwinds.
struct Pending<'a> {
    kind: u8,
    value: String,
    path: Vec<PathSeg<'a>>,
}

enum PathSeg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Pending<'_> {
    fn into_error(self) -> CanonicalJsonError {
        let mut path = String::from("$");
        for seg in self.path.iter().rev() {
            match seg {
                PathSeg::Key(k) => {
                    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        path.push('.');
                        path.push_str(k);
                    } else {
                        path.push('[');
                        path.push_str(&Value::String((*k).to_owned()).to_string());
                        path.push(']');
                    }
                }
                PathSeg::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        let value = self.value;
        match self.kind {
            0 => CanonicalJsonError::IntegerOutOfRange { value, path },
            1 => CanonicalJsonError::Fraction { value, path },
            _ => CanonicalJsonError::FloatInStrictMode { value, path },
        }
    }
}

const K_RANGE: u8 = 0;
const K_FRACTION: u8 = 1;
const K_STRICT: u8 = 2;

fn encode<'a>(out: &mut Vec<u8>, value: &'a Value, mode: Mode) -> Result<(), Pending<'a>> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let i = canonical_integer(n, mode).map_err(|kind| Pending {
                kind,
                value: n.to_string(),
                path: Vec::new(),
            })?;
            write_i64(out, i);
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Err(mut e) = encode(out, item, mode) {
                    e.path.push(PathSeg::Index(i));
                    return Err(e);
                }
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Without preserve_order serde_json's map is a BTreeMap, already
            // in byte order, and is written straight from its iterator; any
            // other order is sorted first, so the output never depends on
            // the map's iteration order.
            if keys_ascending(map) {
                write_entries(out, map.iter(), mode)?;
            } else {
                let mut entries: Vec<(&'a String, &'a Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                write_entries(out, entries.into_iter(), mode)?;
            }
        }
    }
    Ok(())
}

/// True when the map iterates in strictly ascending byte order of its keys
/// (always, unless serde_json's `preserve_order` is on).
fn keys_ascending(map: &Map<String, Value>) -> bool {
    let mut keys = map.keys();
    let Some(mut prev) = keys.next() else {
        return true;
    };
    for k in keys {
        if prev.as_bytes() >= k.as_bytes() {
            return false;
        }
        prev = k;
    }
    true
}

/// Write `{"k":v,...}` from entries already in canonical order.
fn write_entries<'a>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    mode: Mode,
) -> Result<(), Pending<'a>> {
    out.push(b'{');
    let mut first = true;
    for (k, v) in entries {
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(out, k);
        out.push(b':');
        if let Err(mut e) = encode(out, v, mode) {
            e.path.push(PathSeg::Key(k));
            return Err(e);
        }
    }
    out.push(b'}');
    Ok(())
}

/// The integer a JSON number stands for, under the canonical rules.
fn canonical_integer(n: &Number, mode: Mode) -> Result<i64, u8> {
    if let Some(i) = n.as_i64() {
        return if (MIN_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
            Ok(i)
        } else {
            Err(K_RANGE)
        };
    }
    if n.as_u64().is_some() {
        return Err(K_RANGE);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if !f.is_finite() || f.fract() != 0.0 {
        return Err(K_FRACTION);
    }
    if mode == Mode::Strict {
        return Err(K_STRICT);
    }
    if f.abs() > MAX_SAFE_INTEGER as f64 {
        return Err(K_RANGE);
    }
    // Integral and within ±(2^53−1): exactly representable as i64.
    Ok(f as i64)
}

fn write_i64(out: &mut Vec<u8>, i: i64) {
    let mut buf = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut pos = buf.len();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[pos..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether any of the eight bytes of `w` is a control character, `"` or
/// `\\`. Exact "is there one" tests (the classic has-zero-byte and
/// has-byte-less-than tricks: no false negatives, and a positive only sends
/// the caller to its byte-by-byte path, so a false positive would cost time,
/// never change output).
#[inline]
fn any_byte_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let below_0x20 = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
    below_0x20 || has_zero(w ^ (ONES * u64::from(b'"'))) || has_zero(w ^ (ONES * u64::from(b'\\')))
}

/// Escape table: 0 for a byte written raw, `u` for `\u00XX`, otherwise the
/// letter after the backslash.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
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

/// Write a JSON string with canonical escaping: only `"`, `\` and control
/// characters are escaped; `\b \t \n \f \r` use their short forms, other
/// controls `\u00XX` with lower-case hex; everything else is written raw.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `start..i` is the run of raw bytes not yet copied.
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip eight bytes at a time while none of them needs escaping.
        if let Some(word) = bytes[i..].first_chunk::<8>()
            && !any_byte_needs_escape(u64::from_le_bytes(*word))
        {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let esc = ESCAPE[usize::from(b)];
        if esc != 0 {
            out.extend_from_slice(&bytes[start..i]);
            if esc == b'u' {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            } else {
                out.push(b'\\');
                out.push(esc);
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A JSON parse error with its position (1-based line and column).
#[derive(Debug, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Parse JSON text for canonicalisation: numbers are checked against `mode`
/// while parsing (so errors carry line and column), and duplicate object keys
/// are rejected (their meaning differs between parsers, which is unsafe for
/// anything that is signed).
pub fn parse(text: &str, mode: Mode) -> Result<Value, ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = CheckedSeed { mode };
    let v = de::DeserializeSeed::deserialize(seed, &mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    v.map_err(|e| {
        let line = e.line();
        let column = e.column();
        let mut message = e.to_string();
        // serde_json appends " at line L column C"; we report it separately.
        if let Some(idx) = message.rfind(" at line ") {
            message.truncate(idx);
        }
        ParseError {
            message,
            line,
            column,
        }
    })
}

#[derive(Clone, Copy)]
struct CheckedSeed {
    mode: Mode,
}

impl<'de> de::DeserializeSeed<'de> for CheckedSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CheckedSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if (MIN_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
            Ok(Value::from(v))
        } else {
            Err(E::custom(format!(
                "integer {v} is outside the canonical JSON range ±(2^53-1)"
            )))
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v <= MAX_SAFE_INTEGER as u64 {
            Ok(Value::from(v))
        } else {
            Err(E::custom(format!(
                "integer {v} is outside the canonical JSON range ±(2^53-1)"
            )))
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        let n = Number::from_f64(v).ok_or_else(|| E::custom("number is not finite"))?;
        match canonical_integer(&n, self.mode) {
            Ok(i) => Ok(Value::from(i)),
            Err(K_RANGE) => Err(E::custom(format!(
                "integer {n} is outside the canonical JSON range ±(2^53-1)"
            ))),
            Err(K_FRACTION) => Err(E::custom(format!(
                "number {n} is not an integer; canonical JSON has no fractions"
            ))),
            Err(_) => Err(E::custom(format!(
                "number {n} is written as a float (exponent, fraction or -0); strict canonical JSON allows only integers"
            ))),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            // The value is parsed before the duplicate check, so an invalid
            // value under a repeated key reports the value's error.
            let v = access.next_value_seed(self)?;
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(v);
                }
                Entry::Occupied(slot) => {
                    return Err(de::Error::custom(format!("duplicate key {:?}", slot.key())));
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(input: &str) -> String {
        let v: Value = serde_json::from_str(input).unwrap();
        to_canonical_string(&v, Mode::Lenient).unwrap()
    }

    /// Every row of the spec's canonical JSON table.
    #[test]
    fn spec_vectors() {
        let rows: &[(&str, &str)] = &[
            ("{}", "{}"),
            (r#"{ "one": 1, "two": "Two" }"#, r#"{"one":1,"two":"Two"}"#),
            (r#"{ "b": "2", "a": "1" }"#, r#"{"a":"1","b":"2"}"#),
            (
                r#"{"auth":{"success":true,"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email","address":"john.doe@example.org"},{"medium":"msisdn","address":"123456789"}]}}}"#,
                r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
            ),
            (r#"{ "a": "日本語" }"#, r#"{"a":"日本語"}"#),
            (r#"{ "本": 2, "日": 1 }"#, r#"{"日":1,"本":2}"#),
            (r#"{ "a": "\u65E5" }"#, r#"{"a":"日"}"#),
            (r#"{ "a": null }"#, r#"{"a":null}"#),
            (r#"{ "a": -0, "b": 1e10 }"#, r#"{"a":0,"b":10000000000}"#),
            (r#""text\u0003\r\n""#, r#""text\u0003\r\n""#),
        ];
        for (input, want) in rows {
            assert_eq!(&canon(input), want, "input {input}");
            // The checked parser agrees with serde_json + encoder.
            let v = parse(input, Mode::Lenient).unwrap();
            assert_eq!(&to_canonical_string(&v, Mode::Lenient).unwrap(), want);
        }
    }

    #[test]
    fn escaping_rules() {
        let s: String =
            (0u8..0x20).map(char::from).collect::<String>() + "\"\\/\u{7f}\u{2028}\u{2029}é";
        let v = Value::String(s);
        assert_eq!(
            to_canonical_string(&v, Mode::Strict).unwrap(),
            "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\\\"\\\\/\u{7f}\u{2028}\u{2029}é\""
        );
    }

    /// The word-at-a-time scan gives the byte-by-byte result for escapes
    /// at every position and alignment.
    #[test]
    fn escapes_at_every_offset() {
        fn reference(s: &str) -> Vec<u8> {
            let mut out = vec![b'"'];
            for c in s.chars() {
                match c {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\u{08}' => out.extend_from_slice(b"\\b"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\u{0c}' => out.extend_from_slice(b"\\f"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    c if (c as u32) < 0x20 => {
                        out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                    }
                    c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            out.push(b'"');
            out
        }
        let specials = [
            '"',
            '\\',
            '\0',
            '\n',
            '\u{1f}',
            '\u{7f}',
            ' ',
            '!',
            '#',
            '[',
            ']',
            'é',
            '\u{2028}',
            '\u{1F600}',
            '\u{5c22}',
        ];
        for len in 0..20 {
            for pos in 0..len {
                for &c in &specials {
                    let s: String = (0..len).map(|j| if j == pos { c } else { 'a' }).collect();
                    let mut out = Vec::new();
                    write_string(&mut out, &s);
                    assert_eq!(out, reference(&s), "{s:?}");
                }
            }
        }
        for b in 0u8..0x80 {
            let s: String = std::iter::repeat_n(char::from(b), 17).collect();
            let mut out = Vec::new();
            write_string(&mut out, &s);
            assert_eq!(out, reference(&s), "{s:?}");
        }
    }

    #[test]
    fn keys_sort_by_code_point_not_utf16() {
        // U+FB01 (3 UTF-8 bytes, EF AC 81) sorts before U+1F600 (F0 9F 98 80)
        // by code point; UTF-16 order would put the surrogate pair first.
        let v = serde_json::json!({"\u{1F600}": 1, "\u{FB01}": 2, "Z": 3, "a": 4});
        assert_eq!(
            to_canonical_string(&v, Mode::Lenient).unwrap(),
            "{\"Z\":3,\"a\":4,\"\u{FB01}\":2,\"\u{1F600}\":1}"
        );
    }

    #[test]
    fn encoder_sorts_whatever_the_map_order() {
        // Build a map whose iteration order is reversed if preserve_order is
        // on; the encoder must sort regardless.
        let mut m = Map::new();
        m.insert("z".into(), Value::from(1));
        m.insert("m".into(), Value::from(2));
        m.insert("a".into(), Value::from(3));
        let mut out = Vec::new();
        write_canonical_object_without(&mut out, &m, &[], Mode::Strict).unwrap();
        assert_eq!(out, br#"{"a":3,"m":2,"z":1}"#);
        assert_eq!(
            to_canonical_string(&Value::Object(m), Mode::Strict).unwrap(),
            r#"{"a":3,"m":2,"z":1}"#
        );
    }

    /// Fails if some crate in the graph turns on serde_json's
    /// `preserve_order`: the encoder does not depend on it, but other code
    /// that compares `Value`s or re-serialises them with serde_json would
    /// silently change behaviour, so we want to know.
    #[test]
    fn serde_json_preserve_order_is_off() {
        let mut m = Map::new();
        m.insert("b".into(), Value::Null);
        m.insert("a".into(), Value::Null);
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["a", "b"],
            "serde_json's preserve_order feature is enabled somewhere in the dependency graph"
        );
    }

    #[test]
    fn integer_range_edges() {
        for ok in ["9007199254740991", "-9007199254740991", "0"] {
            let v: Value = serde_json::from_str(ok).unwrap();
            assert_eq!(to_canonical_string(&v, Mode::Strict).unwrap(), ok);
        }
        for bad in [
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551615",
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            for mode in [Mode::Strict, Mode::Lenient] {
                assert!(
                    matches!(
                        to_canonical_vec(&v, mode),
                        Err(CanonicalJsonError::IntegerOutOfRange { .. })
                    ),
                    "{bad} {mode:?}"
                );
            }
            assert!(parse(bad, Mode::Lenient).is_err());
        }
        // An integral float beyond the range is out of range, not normalised.
        let v: Value = serde_json::from_str("1e300").unwrap();
        assert!(matches!(
            to_canonical_vec(&v, Mode::Lenient),
            Err(CanonicalJsonError::IntegerOutOfRange { .. })
        ));
    }

    #[test]
    fn fractions_rejected_in_both_modes_with_path() {
        let v: Value = serde_json::from_str(r#"{"a":{"b":[1, 2.5]}}"#).unwrap();
        for mode in [Mode::Strict, Mode::Lenient] {
            assert_eq!(
                to_canonical_vec(&v, mode),
                Err(CanonicalJsonError::Fraction {
                    value: "2.5".into(),
                    path: "$.a.b[1]".into()
                })
            );
        }
    }

    #[test]
    fn strict_rejects_floats_and_negative_zero() {
        for input in ["-0", "1e10", "2.0", "-0.0"] {
            let v: Value = serde_json::from_str(input).unwrap();
            assert!(
                matches!(
                    to_canonical_vec(&v, Mode::Strict),
                    Err(CanonicalJsonError::FloatInStrictMode { .. })
                ),
                "{input}"
            );
            let err = parse(input, Mode::Strict).unwrap_err();
            assert!(err.message.contains("strict"), "{input}: {err}");
        }
        let v: Value = serde_json::from_str(r#"{"x y": 2.0}"#).unwrap();
        assert_eq!(
            to_canonical_vec(&v, Mode::Strict).unwrap_err().to_string(),
            "number 2.0 at $[\"x y\"] is written as a float (exponent, fraction or -0); strict canonical JSON allows only integers"
        );
    }

    #[test]
    fn parse_reports_line_and_column() {
        let err = parse("{\n  \"a\": 1.5\n}", Mode::Lenient).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not an integer"), "{err}");
        let err = parse("{\"a\":1,\"a\":2}", Mode::Lenient).unwrap_err();
        assert!(err.message.contains("duplicate key"), "{err}");
        let err = parse("{\"a\":1} x", Mode::Lenient).unwrap_err();
        assert_eq!((err.line, err.column), (1, 9));
        let err = parse("[1,", Mode::Lenient).unwrap_err();
        assert!(err.message.contains("EOF"), "{err}");
    }

    #[test]
    fn duplicate_keys_report_the_value_error_first() {
        let err = parse(r#"{"a":1,"b":{"a":2,"a":3}}"#, Mode::Lenient).unwrap_err();
        assert_eq!(err.message, "duplicate key \"a\"");
        assert_eq!((err.line, err.column), (1, 24));
        // The repeated key's value is parsed (and checked) before the
        // duplicate is noticed.
        let err = parse(r#"{"a":1,"a":1.5}"#, Mode::Lenient).unwrap_err();
        assert!(err.message.contains("not an integer"), "{err}");
    }

    #[test]
    fn object_without_skips_keys() {
        let v = serde_json::json!({"b":1,"signatures":{},"unsigned":{"x":1},"a":2});
        let mut out = Vec::new();
        write_canonical_object_without(
            &mut out,
            v.as_object().unwrap(),
            &["signatures", "unsigned"],
            Mode::Lenient,
        )
        .unwrap();
        assert_eq!(out, br#"{"a":2,"b":1}"#);
    }
}
