//! homeport-core against ruma (ruma-common 0.20, ruma-signatures 0.22) and
//! bare ed25519-dalek, on a realistic 1 KiB server key document.
//!
//! `cargo bench -p homeport-bench --bench core -- --warm-up-time 1 --measurement-time 3`
//!
//! Groups (criterion ids `group/function`):
//! - `canonical_from_value`: canonical JSON bytes from a `serde_json::Value`;
//! - `canonical_from_text`: the same from JSON text (parse + encode);
//! - `sign`: `sign_json` on the document (re-signing in place: the
//!   signature is replaced, so every iteration does the same work);
//! - `verify`: one ed25519 signature of the document, and the bare
//!   ed25519-dalek floor over pre-computed canonical bytes;
//! - `breakdown`: the pieces, to tell where time goes.
//!
//! At the end a markdown table of medians is printed (also available later
//! with `cargo run -p homeport-bench --example bench_table`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use homeport_bench::{
    SERVER, bench_key, bench_seed, criterion_dir, experiment, fmt_ns, key_document,
    key_document_text, markdown_table, pkcs8_v1_der,
};
use homeport_core::canonical_json::{self, Mode};
use homeport_core::signing;
use ruma_common::CanonicalJsonObject;
use ruma_common::canonical_json::{CanonicalJsonValue, to_canonical_value};
use ruma_common::serde::Base64;
use ruma_signatures::{Ed25519KeyPair, PublicKeyMap, PublicKeySet};
use serde_json::Value;

fn ruma_object(doc: &Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(doc.clone()).unwrap() {
        CanonicalJsonValue::Object(o) => o,
        other => panic!("not an object: {other:?}"),
    }
}

fn ruma_key_pair() -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(
        &pkcs8_v1_der(&bench_seed()),
        homeport_bench::KEY_VERSION.to_owned(),
    )
    .unwrap()
}

fn ruma_public_key_map() -> PublicKeyMap {
    let key = bench_key();
    let mut set = PublicKeySet::new();
    set.insert(
        key.id().as_str().to_owned(),
        Base64::new(key.verifying_key().to_bytes().to_vec()),
    );
    let mut map = BTreeMap::new();
    map.insert(SERVER.to_owned(), set);
    map
}

/// Both sides must agree before their speed is compared.
fn cross_check() {
    let doc = key_document();
    let text = key_document_text();
    let ours = canonical_json::to_canonical_vec(&doc, Mode::Lenient).unwrap();
    let theirs = serde_json::to_vec(&to_canonical_value(&doc).unwrap()).unwrap();
    assert_eq!(
        ours, theirs,
        "canonical JSON differs between homeport and ruma"
    );
    assert_eq!(
        ours,
        text.as_bytes(),
        "fixture text is not already canonical"
    );

    let obj = ruma_object(&doc);
    let ours = signing::signed_bytes(doc.as_object().unwrap()).unwrap();
    let theirs = ruma_signatures::to_canonical_json_string_for_signing(&obj).unwrap();
    assert_eq!(ours, theirs.as_bytes(), "signed bytes differ");

    let key = bench_key();
    let mut h = doc.clone();
    signing::sign_json(&mut h, SERVER, &key).unwrap();
    let mut r = obj.clone();
    ruma_signatures::sign_json(SERVER, &ruma_key_pair(), &mut r).unwrap();
    let hs = h["signatures"][SERVER][key.id().as_str()]
        .as_str()
        .unwrap()
        .to_owned();
    let rs = r["signatures"].as_object().unwrap()[SERVER]
        .as_object()
        .unwrap()[key.id().as_str()]
    .as_str()
    .unwrap()
    .to_owned();
    assert_eq!(hs, rs, "homeport and ruma signatures differ");

    signing::verify_json(&doc, SERVER, key.id(), &key.verifying_key()).unwrap();
    ruma_signatures::verify_json(&ruma_public_key_map(), &obj).unwrap();
    eprintln!(
        "fixture: {} bytes of JSON, {} signed bytes; homeport and ruma agree on canonical bytes and signatures",
        text.len(),
        ours.len()
    );
}

fn canonical_from_value(c: &mut Criterion) {
    let doc = key_document();
    let mut g = c.benchmark_group("canonical_from_value");
    g.bench_function("homeport", |b| {
        b.iter(|| canonical_json::to_canonical_vec(black_box(&doc), Mode::Lenient).unwrap())
    });
    g.bench_function("homeport_strict", |b| {
        b.iter(|| canonical_json::to_canonical_vec(black_box(&doc), Mode::Strict).unwrap())
    });
    // ruma's entry point for any Serialize value, then serde_json on the
    // canonical value (BTreeMap order): the fastest ruma path from &Value.
    g.bench_function("ruma", |b| {
        b.iter(|| serde_json::to_vec(&to_canonical_value(black_box(&doc)).unwrap()).unwrap())
    });
    // The other ruma path: TryFrom<Value> (consumes, so it needs a clone).
    g.bench_function("ruma_try_from_clone", |b| {
        b.iter(|| {
            let v = CanonicalJsonValue::try_from(black_box(&doc).clone()).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    // ruma's Display (what `.to_string()` gives).
    g.bench_function("ruma_to_string", |b| {
        b.iter(|| to_canonical_value(black_box(&doc)).unwrap().to_string())
    });
    // Not the same task: encoding a value already held as CanonicalJsonValue.
    let cv = to_canonical_value(&doc).unwrap();
    g.bench_function("ruma_encode_only_prebuilt", |b| {
        b.iter(|| serde_json::to_vec(black_box(&cv)).unwrap())
    });
    g.finish();
}

fn canonical_from_text(c: &mut Criterion) {
    let text = key_document_text();
    let mut g = c.benchmark_group("canonical_from_text");
    // homeport's checked parser: numbers checked while parsing, duplicate
    // keys rejected.
    g.bench_function("homeport", |b| {
        b.iter(|| {
            let v = canonical_json::parse(black_box(&text), Mode::Lenient).unwrap();
            canonical_json::to_canonical_vec(&v, Mode::Lenient).unwrap()
        })
    });
    // Plain serde_json parse (no duplicate-key check) + homeport encoder.
    g.bench_function("homeport_serde_json_parse", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(&text)).unwrap();
            canonical_json::to_canonical_vec(&v, Mode::Lenient).unwrap()
        })
    });
    g.bench_function("ruma", |b| {
        b.iter(|| {
            let v: CanonicalJsonValue = serde_json::from_str(black_box(&text)).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    g.finish();
}

fn sign(c: &mut Criterion) {
    let key = bench_key();
    let pair = ruma_key_pair();
    let mut doc = key_document();
    let mut obj = ruma_object(&doc);
    let mut g = c.benchmark_group("sign");
    g.bench_function("homeport", |b| {
        b.iter(|| signing::sign_json(black_box(&mut doc), SERVER, &key).unwrap())
    });
    g.bench_function("ruma", |b| {
        b.iter(|| ruma_signatures::sign_json(SERVER, &pair, black_box(&mut obj)).unwrap())
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let doc = key_document();
    let obj = ruma_object(&doc);
    let key = bench_key();
    let id = key.id().clone();
    let vk = key.verifying_key();
    let map = ruma_public_key_map();
    let bytes = signing::signed_bytes(doc.as_object().unwrap()).unwrap();
    let sig_b64 = doc["signatures"][SERVER][id.as_str()].as_str().unwrap();
    let raw = homeport_core::base64::decode_array::<64>(sig_b64).unwrap();
    let sig2 = ed25519_dalek::Signature::from_bytes(&raw);
    let vk3 = ed25519_dalek_3::VerifyingKey::from_bytes(&vk.to_bytes()).unwrap();
    let sig3 = ed25519_dalek_3::Signature::from_bytes(&raw);

    let mut g = c.benchmark_group("verify");
    g.bench_function("homeport", |b| {
        b.iter(|| signing::verify_json(black_box(&doc), SERVER, &id, &vk).unwrap())
    });
    g.bench_function("ruma", |b| {
        b.iter(|| ruma_signatures::verify_json(&map, black_box(&obj)).unwrap())
    });
    // The floor: homeport's own ed25519-dalek (2.x), the strict check
    // homeport uses, over the pre-computed canonical bytes.
    g.bench_function("dalek2_verify_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(&bytes), &sig2).unwrap())
    });
    // homeport's strict check (signing::verify_strict: small-order R and A
    // tests, then dalek's plain verify) over the same bytes.
    g.bench_function("homeport_verify_strict_bytes", |b| {
        b.iter(|| signing::verify_strict(&vk, black_box(&bytes), &sig2).unwrap())
    });
    g.bench_function("dalek2_verify", |b| {
        use ed25519_dalek::Verifier as _;
        b.iter(|| vk.verify(black_box(&bytes), &sig2).unwrap())
    });
    // ruma-signatures 0.22's stack: ed25519-dalek 3, non-strict verify.
    g.bench_function("dalek3_verify", |b| {
        use ed25519_dalek_3::Verifier as _;
        b.iter(|| vk3.verify(black_box(&bytes), &sig3).unwrap())
    });
    g.bench_function("dalek3_verify_strict", |b| {
        b.iter(|| vk3.verify_strict(black_box(&bytes), &sig3).unwrap())
    });
    g.finish();
}

fn breakdown(c: &mut Criterion) {
    let doc = key_document();
    let obj = ruma_object(&doc);
    let key = bench_key();
    let bytes = signing::signed_bytes(doc.as_object().unwrap()).unwrap();
    let sk3 = ed25519_dalek_3::SigningKey::from_bytes(&bench_seed());
    let pk = key.verifying_key().to_bytes();
    let sig_b64 = doc["signatures"][SERVER][key.id().as_str()]
        .as_str()
        .unwrap()
        .to_owned();

    let mut g = c.benchmark_group("breakdown");
    g.bench_function("homeport_signed_bytes", |b| {
        b.iter(|| signing::signed_bytes(black_box(doc.as_object().unwrap())).unwrap())
    });
    g.bench_function("experiment_encode_from_value", |b| {
        b.iter(|| experiment::to_canonical_vec(black_box(&doc), Mode::Lenient).unwrap())
    });
    g.bench_function("ruma_signed_bytes", |b| {
        b.iter(|| ruma_signatures::to_canonical_json_string_for_signing(black_box(&obj)).unwrap())
    });
    g.bench_function("dalek2_sign", |b| b.iter(|| key.sign(black_box(&bytes))));
    g.bench_function("dalek3_sign", |b| {
        use ed25519_dalek_3::Signer as _;
        b.iter(|| sk3.sign(black_box(&bytes)))
    });
    // ruma decodes the public key (point decompression) on every verify;
    // homeport takes an already decoded VerifyingKey.
    g.bench_function("dalek3_public_key_from_bytes", |b| {
        b.iter(|| ed25519_dalek_3::VerifyingKey::from_bytes(black_box(&pk)).unwrap())
    });
    // The per-call weak-key test homeport's verify_strict keeps.
    let vk = key.verifying_key();
    g.bench_function("dalek2_is_weak", |b| b.iter(|| black_box(&vk).is_weak()));
    g.bench_function("homeport_base64_decode_sig", |b| {
        b.iter(|| homeport_core::base64::decode_array::<64>(black_box(&sig_b64)).unwrap())
    });
    g.finish();
}

type Contender<'a> = (&'static str, Box<dyn FnMut() + 'a>);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved A/B(/C) timing: each round times one ~1 ms batch of every
/// contender, starting with a different one each round, so that load from
/// other processes on a shared machine hits all sides alike. Returns each
/// contender's median ns/iteration and the median over rounds of the ratio
/// contender 0 / contender j.
fn interleaved(mut fs: Vec<Contender<'_>>, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let n = fs.len();
    let batches: Vec<u32> = fs
        .iter_mut()
        .map(|(_, f)| {
            let t = Instant::now();
            for _ in 0..20 {
                f();
            }
            let per = t.elapsed().as_secs_f64() / 20.0;
            (1e-3 / per).clamp(1.0, 1e6) as u32
        })
        .collect();
    let mut times = vec![Vec::with_capacity(rounds); n];
    let mut ratios = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        let mut this = vec![0.0; n];
        for k in 0..n {
            let j = (round + k) % n;
            let f = &mut fs[j].1;
            let t = Instant::now();
            for _ in 0..batches[j] {
                f();
            }
            this[j] = t.elapsed().as_secs_f64() * 1e9 / f64::from(batches[j]);
        }
        for j in 0..n {
            times[j].push(this[j]);
            ratios[j].push(this[0] / this[j]);
        }
    }
    (
        times.iter_mut().map(|t| median(t)).collect(),
        ratios.iter_mut().map(|r| median(r)).collect(),
    )
}

/// The interleaved table (also written to `<criterion dir>/homeport-interleaved.md`).
fn interleaved_table() -> String {
    let doc = key_document();
    let text = key_document_text();
    let obj = ruma_object(&doc);
    let key = bench_key();
    let id = key.id().clone();
    let vk = key.verifying_key();
    let pair = ruma_key_pair();
    let map = ruma_public_key_map();
    let bytes = signing::signed_bytes(doc.as_object().unwrap()).unwrap();
    let raw = homeport_core::base64::decode_array::<64>(
        doc["signatures"][SERVER][id.as_str()].as_str().unwrap(),
    )
    .unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&raw);
    let rounds = 300;

    let mut out = String::from(
        "| operation (1 KiB key document) | homeport | ruma | bare ed25519-dalek | homeport / ruma | homeport / dalek |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let mut row = |label: &str, fs: Vec<Contender<'_>>| {
        let has_floor = fs.len() > 2;
        let (t, r) = interleaved(fs, rounds);
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {:.2}x | {} |",
            fmt_ns(t[0]),
            fmt_ns(t[1]),
            if has_floor {
                fmt_ns(t[2])
            } else {
                "n/a".into()
            },
            r[1],
            if has_floor {
                format!("{:.2}x", r[2])
            } else {
                "n/a".into()
            },
        );
    };
    row(
        "canonical JSON encode, from `serde_json::Value`",
        vec![
            (
                "homeport",
                Box::new(|| {
                    black_box(
                        canonical_json::to_canonical_vec(black_box(&doc), Mode::Lenient).unwrap(),
                    );
                }),
            ),
            (
                "ruma",
                Box::new(|| {
                    black_box(
                        serde_json::to_vec(&to_canonical_value(black_box(&doc)).unwrap()).unwrap(),
                    );
                }),
            ),
        ],
    );
    row(
        "canonical JSON parse + encode, from text",
        vec![
            (
                "homeport",
                Box::new(|| {
                    let v = canonical_json::parse(black_box(&text), Mode::Lenient).unwrap();
                    black_box(canonical_json::to_canonical_vec(&v, Mode::Lenient).unwrap());
                }),
            ),
            (
                "ruma",
                Box::new(|| {
                    let v: CanonicalJsonValue = serde_json::from_str(black_box(&text)).unwrap();
                    black_box(serde_json::to_vec(&v).unwrap());
                }),
            ),
        ],
    );
    let mut hdoc = doc.clone();
    let mut robj = obj.clone();
    row(
        "sign_json",
        vec![
            (
                "homeport",
                Box::new(|| {
                    signing::sign_json(black_box(&mut hdoc), SERVER, &key).unwrap();
                }),
            ),
            (
                "ruma",
                Box::new(|| {
                    ruma_signatures::sign_json(SERVER, &pair, black_box(&mut robj)).unwrap();
                }),
            ),
        ],
    );
    row(
        "verify_json (one ed25519 signature)",
        vec![
            (
                "homeport",
                Box::new(|| {
                    signing::verify_json(black_box(&doc), SERVER, &id, &vk).unwrap();
                }),
            ),
            (
                "ruma",
                Box::new(|| {
                    ruma_signatures::verify_json(&map, black_box(&obj)).unwrap();
                }),
            ),
            (
                "dalek2_verify_strict",
                Box::new(|| {
                    vk.verify_strict(black_box(&bytes), &sig).unwrap();
                }),
            ),
        ],
    );
    // The proposed encoder change, against today's encoder and ruma.
    let (t, r) = interleaved(
        vec![
            (
                "experiment",
                Box::new(|| {
                    black_box(
                        experiment::to_canonical_vec(black_box(&doc), Mode::Lenient).unwrap(),
                    );
                }),
            ),
            (
                "homeport",
                Box::new(|| {
                    black_box(
                        canonical_json::to_canonical_vec(black_box(&doc), Mode::Lenient).unwrap(),
                    );
                }),
            ),
            (
                "ruma",
                Box::new(|| {
                    black_box(
                        serde_json::to_vec(&to_canonical_value(black_box(&doc)).unwrap()).unwrap(),
                    );
                }),
            ),
        ],
        rounds,
    );
    // Where verify time goes, on each stack.
    let pk = vk.to_bytes();
    let vk3 = ed25519_dalek_3::VerifyingKey::from_bytes(&pk).unwrap();
    let sig3 = ed25519_dalek_3::Signature::from_bytes(&raw);
    let (vt, _) = interleaved(
        vec![
            (
                "homeport verify_json",
                Box::new(|| {
                    signing::verify_json(black_box(&doc), SERVER, &id, &vk).unwrap();
                }),
            ),
            (
                "ruma verify_json",
                Box::new(|| {
                    ruma_signatures::verify_json(&map, black_box(&obj)).unwrap();
                }),
            ),
            (
                "dalek2 verify_strict",
                Box::new(|| {
                    vk.verify_strict(black_box(&bytes), &sig).unwrap();
                }),
            ),
            (
                "homeport signing::verify_strict",
                Box::new(|| {
                    signing::verify_strict(&vk, black_box(&bytes), &sig).unwrap();
                }),
            ),
            (
                "dalek2 verify",
                Box::new(|| {
                    use ed25519_dalek::Verifier as _;
                    vk.verify(black_box(&bytes), &sig).unwrap();
                }),
            ),
            (
                "dalek3 verify",
                Box::new(|| {
                    use ed25519_dalek_3::Verifier as _;
                    vk3.verify(black_box(&bytes), &sig3).unwrap();
                }),
            ),
            (
                "dalek3 key decode + verify (ruma's crypto)",
                Box::new(|| {
                    use ed25519_dalek_3::Verifier as _;
                    let k = ed25519_dalek_3::VerifyingKey::try_from(black_box(&pk[..])).unwrap();
                    k.verify(black_box(&bytes), &sig3).unwrap();
                }),
            ),
            (
                "homeport signed_bytes",
                Box::new(|| {
                    black_box(signing::signed_bytes(black_box(doc.as_object().unwrap())).unwrap());
                }),
            ),
            (
                "ruma to_canonical_json_string_for_signing",
                Box::new(|| {
                    black_box(
                        ruma_signatures::to_canonical_json_string_for_signing(black_box(&obj))
                            .unwrap(),
                    );
                }),
            ),
            (
                "prototype signed_bytes",
                Box::new(|| {
                    black_box(
                        experiment::signed_bytes(black_box(doc.as_object().unwrap())).unwrap(),
                    );
                }),
            ),
        ],
        rounds,
    );
    let names = [
        "homeport verify_json",
        "ruma verify_json",
        "dalek2 verify_strict",
        "homeport signing::verify_strict",
        "dalek2 verify",
        "dalek3 verify",
        "dalek3 key decode + verify (ruma's crypto)",
        "homeport signed_bytes",
        "ruma to_canonical_json_string_for_signing",
        "prototype signed_bytes",
    ];
    out.push_str("\nVerify and signing pieces, interleaved:\n\n| piece | median |\n|---|---:|\n");
    for (name, t) in names.iter().zip(&vt) {
        let _ = writeln!(out, "| {name} | {} |", fmt_ns(*t));
    }
    let _ = writeln!(
        out,
        "\nPrototype encoder (`homeport_bench::experiment`, now adopted by core) from `serde_json::Value`: \
         {} vs homeport-core {} ({:.2}x) vs ruma {} ({:.2}x).",
        fmt_ns(t[0]),
        fmt_ns(t[1]),
        r[1],
        fmt_ns(t[2]),
        r[2]
    );
    out
}

fn main() {
    cross_check();
    let mut c = Criterion::default().configure_from_args();
    canonical_from_value(&mut c);
    canonical_from_text(&mut c);
    sign(&mut c);
    verify(&mut c);
    breakdown(&mut c);
    c.final_summary();
    println!(
        "\nCriterion medians:\n\n{}",
        markdown_table(&criterion_dir())
    );
    // Only under `cargo bench` (not `cargo test --benches`).
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        let table = interleaved_table();
        println!(
            "Interleaved medians (300 rounds, ratios are medians of per-round ratios):\n\n{table}"
        );
        let dir = criterion_dir();
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join("homeport-interleaved.md"), &table);
        }
    }
}
