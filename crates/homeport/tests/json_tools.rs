//! The JSON and key tools, run as a user runs them: the real binary, its
//! stdout, stderr and exit status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

const SPEC_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
const SPEC_PUBLIC: &str = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI";

fn homeport(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The program may exit (invalid arguments) before reading its input:
    // a broken pipe here is not a test failure, the exit status tells.
    let write = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(e) = write {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> &str {
    std::str::from_utf8(&o.stdout).unwrap()
}
fn stderr(o: &Output) -> &str {
    std::str::from_utf8(&o.stderr).unwrap()
}

#[test]
fn canonical_json_lenient_normalises_integral_floats() {
    let o = homeport(&["canonical-json"], r#"{ "b": 1e10, "a": -0 }"#);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "{\"a\":0,\"b\":10000000000}\n");
}

#[test]
fn canonical_json_strict_rejects_floats_with_position() {
    let o = homeport(&["canonical-json", "--strict", "-"], "{\n \"a\": -0\n}");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout(&o), "");
    let e = stderr(&o);
    assert!(
        e.starts_with("error: number -0.0 is written as a float"),
        "{e}"
    );
    assert!(e.trim_end().ends_with("(at <stdin>:2:8)"), "{e}");
}

#[test]
fn canonical_json_rejects_fraction_and_range_in_both_modes() {
    for args in [&["canonical-json"][..], &["canonical-json", "--strict"][..]] {
        let o = homeport(args, "[1.5]");
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("not an integer"), "{}", stderr(&o));
        let o = homeport(args, "[9007199254740992]");
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("outside the canonical JSON range"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn canonical_json_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.json");
    std::fs::write(&p, "{\"x\": [1, 2,]}").unwrap();
    let o = homeport(&["canonical-json", p.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("(at {}:1:13)", p.display())),
        "{}",
        stderr(&o)
    );
    let o = homeport(&["canonical-json", "/nonexistent/x.json"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("error: cannot read input"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sign_json_reproduces_the_spec_vector() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, format!("ed25519 1 {SPEC_SEED}\n")).unwrap();
    let o = homeport(
        &[
            "sign-json",
            "--key",
            key.to_str().unwrap(),
            "--server-name",
            "domain",
        ],
        r#"{ "one": 1, "two": "Two" }"#,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "{\"one\":1,\"signatures\":{\"domain\":{\"ed25519:1\":\"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw\"}},\"two\":\"Two\"}\n"
    );
    // And verify-json accepts it (prints nothing, exit 0).
    let v = homeport(
        &[
            "verify-json",
            "--server-name",
            "domain",
            "--key-id",
            "ed25519:1",
            "--public-key",
            SPEC_PUBLIC,
        ],
        stdout(&o),
    );
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert_eq!(stdout(&v), "");
}

#[test]
fn sign_json_picks_the_key_by_id_and_reports_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let other = "nYjU0bqeAqJ8YbPCrl2eJKZm8dC7Ub3cAp4t9nLaQcQ";
    std::fs::write(&key, format!("ed25519 a {other}\ned25519 1 {SPEC_SEED}\n")).unwrap();
    let o = homeport(
        &[
            "sign-json",
            "--key",
            key.to_str().unwrap(),
            "--server-name",
            "domain",
            "--key-id",
            "ed25519:1",
        ],
        "{}",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    ));
    let o = homeport(
        &[
            "sign-json",
            "--key",
            key.to_str().unwrap(),
            "--server-name",
            "domain",
            "--key-id",
            "ed25519:zz",
        ],
        "{}",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has no key ed25519:zz (it has ed25519:a, ed25519:1)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sign_json_reports_bad_key_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, format!("ed25519 1 {SPEC_SEED}\ned25519 2 short\n")).unwrap();
    let o = homeport(
        &[
            "sign-json",
            "--key",
            key.to_str().unwrap(),
            "--server-name",
            "domain",
        ],
        "{}",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("(at {}:2)", key.display())),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sign_json_rejects_non_objects_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, format!("ed25519 1 {SPEC_SEED}\n")).unwrap();
    let o = homeport(
        &[
            "sign-json",
            "--key",
            key.to_str().unwrap(),
            "--server-name",
            "domain",
        ],
        "[1]",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("only a JSON object can be signed"),
        "{}",
        stderr(&o)
    );
    let o = homeport(
        &[
            "sign-json",
            "--key",
            key.to_str().unwrap(),
            "--server-name",
            "bad name",
        ],
        "{}",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("(at --server-name)"), "{}", stderr(&o));
}

#[test]
fn verify_json_exit_codes() {
    let signed = "{\"one\":1,\"signatures\":{\"domain\":{\"ed25519:1\":\"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw\"}},\"two\":\"Two\"}";
    let args = [
        "verify-json",
        "--server-name",
        "domain",
        "--key-id",
        "ed25519:1",
        "--public-key",
        SPEC_PUBLIC,
    ];
    // Tampered: 1.
    let o = homeport(&args, &signed.replace("\"Two\"", "\"Three\""));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    // Missing signature: 1.
    let o = homeport(&args, "{\"one\":1}");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no signatures from domain"),
        "{}",
        stderr(&o)
    );
    // Bad public key: 2.
    let mut bad = args;
    bad[6] = "AAAA";
    let o = homeport(&bad, signed);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("(at --public-key)"), "{}", stderr(&o));
    // Not JSON: 2.
    let o = homeport(&args, "nope");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn keygen_writes_a_synapse_key_file_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("example.org.signing.key");
    let o = homeport(
        &["keygen", "--version", "a_test", "-o", p.to_str().unwrap()],
        "",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&p).unwrap();
    let keys = homeport_core::signing::parse_key_file(&text).unwrap();
    assert_eq!(keys[0].id().as_str(), "ed25519:a_test");
    assert!(stderr(&o).contains(&keys[0].public_key_base64()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let o = homeport(&["keygen", "-o", p.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
}

#[test]
fn keygen_to_stdout_with_default_version() {
    let o = homeport(&["keygen"], "");
    assert_eq!(o.status.code(), Some(0));
    let line = stdout(&o);
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], "ed25519");
    assert!(parts[1].starts_with("a_") && parts[1].len() == 6, "{line}");
    let o = homeport(&["keygen", "--version", "bad version"], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_usage_is_exit_2() {
    let o = homeport(&["sign-json"], "");
    assert_eq!(o.status.code(), Some(2));
    let o = homeport(&["no-such-command"], "");
    assert_eq!(o.status.code(), Some(2));
}
