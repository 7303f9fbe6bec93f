//! Key fetching and verification against real HTTPS peers: direct fetches,
//! every failed check, the 7-day clamp, notaries (both signatures, batches,
//! duplicates), shared in-flight fetches, and X-Matrix request
//! authentication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use homeport_core::keys::{KeyProblem, SEVEN_DAYS_MS, ServerKeysBuilder};
use homeport_core::signing::{self, KeyId, SigningKey};
use homeport_core::xmatrix::RequestToSign;
use homeport_federation::auth::{self, AuthError, Incoming};
use homeport_federation::{KeyError, Via};
use homeport_test_support::{Handler, HttpsServer, Scripted, Zone};
use serde_json::{Value, json};

/// A key server for `server` (port in the name) serving `doc`.
fn serve(net: &Net, doc: impl FnOnce(&str) -> Value) -> (HttpsServer, String) {
    let p = peer(
        net.ca
            .issue(&["hs.test", "notary.test", "other.test"])
            .unwrap(),
        Scripted::not_found(),
    );
    let server = format!("hs.test:{}", p.addr().port());
    p.set_handler(key_server(doc(&server)));
    net.zone(
        Zone::new()
            .a("hs.test", ip_of(&p))
            .a("notary.test", ip_of(&p))
            .a("other.test", ip_of(&p)),
    );
    (p, server)
}

fn fetch_err(net: &Net, server: &str) -> KeyError {
    rt().block_on(net.fetcher().fetch_direct(&name(server)))
        .unwrap_err()
}

fn problems(e: KeyError) -> Vec<KeyProblem> {
    match e {
        KeyError::Checks { problems, .. } => problems,
        other => panic!("expected failed checks, got {other}"),
    }
}

#[test]
fn direct_fetch_verifies_and_clamps_to_seven_days() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, server) = serve(&net, |s| key_doc(s, &key, 30 * DAY));
    let fetcher = net.fetcher();
    let before = now_ms();
    let f = rt().block_on(fetcher.fetch_direct(&name(&server))).unwrap();
    assert_eq!(f.keys.len(), 1);
    let k = &f.keys[0];
    assert_eq!(k.key_id.as_str(), "ed25519:a_1");
    assert_eq!(k.key, key.verifying_key());
    assert_eq!(k.via, Via::Direct);
    assert!(k.published_valid_until_ts > before + 29 * DAY);
    assert!(
        k.valid_until_ts <= now_ms() + SEVEN_DAYS_MS && k.valid_until_ts >= before + SEVEN_DAYS_MS,
        "7-day clamp"
    );
    assert_eq!(
        fetcher.store().get(&server, "ed25519:a_1").unwrap().key,
        key.verifying_key()
    );
}

#[test]
fn short_validity_is_kept_as_published() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, server) = serve(&net, |s| key_doc(s, &key, DAY));
    let f = rt()
        .block_on(net.fetcher().fetch_direct(&name(&server)))
        .unwrap();
    assert_eq!(f.keys[0].valid_until_ts, f.keys[0].published_valid_until_ts);
}

#[test]
fn server_name_mismatch_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, server) = serve(&net, |_| key_doc("other.test", &key, DAY));
    let p = problems(fetch_err(&net, &server));
    assert!(
        matches!(&p[0], KeyProblem::ServerNameMismatch { found, .. } if found == "other.test"),
        "{p:?}"
    );
}

#[test]
fn no_self_signature_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, server) = serve(&net, |s| {
        ServerKeysBuilder::new(&name(s), now_ms() + DAY)
            .verify_key(&key)
            .build()
    });
    let p = problems(fetch_err(&net, &server));
    assert!(
        p.iter()
            .any(|x| matches!(x, KeyProblem::NoSelfSignature { .. })),
        "{p:?}"
    );
}

#[test]
fn signature_by_a_key_not_in_verify_keys_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let published = SigningKey::generate("a_pub").unwrap();
    let signer = SigningKey::generate("a_other").unwrap();
    let (_p, server) = serve(&net, |s| {
        ServerKeysBuilder::new(&name(s), now_ms() + DAY)
            .verify_key(&published)
            .sign(&[&signer])
            .unwrap()
    });
    let p = problems(fetch_err(&net, &server));
    assert!(
        p.contains(&KeyProblem::SignatureByUnknownKey {
            key_id: "ed25519:a_other".into()
        }),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|x| matches!(x, KeyProblem::NoSelfSignature { .. })),
        "{p:?}"
    );
}

#[test]
fn bad_base64_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, server) = serve(&net, |s| {
        let mut d = key_doc(s, &key, DAY);
        d["signatures"][s]["ed25519:a_1"] = "not base64!".into();
        d
    });
    let p = problems(fetch_err(&net, &server));
    assert!(
        p.iter()
            .any(|x| matches!(x, KeyProblem::SignatureMalformed { .. })),
        "{p:?}"
    );
}

#[test]
fn expired_valid_until_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, server) = serve(&net, |s| {
        ServerKeysBuilder::new(&name(s), now_ms() - 1000)
            .verify_key(&key)
            .sign(&[&key])
            .unwrap()
    });
    let p = problems(fetch_err(&net, &server));
    assert!(matches!(p[0], KeyProblem::Expired { .. }), "{p:?}");
}

#[test]
fn non_json_and_errors_are_reported() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let (p, server) = serve(&net, |_| json!({}));
    p.set_handler(Scripted::text(200, "<html>hello</html>"));
    assert!(matches!(fetch_err(&net, &server), KeyError::NotJson { .. }));
    p.set_handler(Scripted::text(502, "bad gateway"));
    assert!(matches!(
        fetch_err(&net, &server),
        KeyError::Status { status: 502, .. }
    ));
}

#[test]
fn old_verify_keys_are_for_events_only() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_new").unwrap();
    let old = SigningKey::generate("a_old").unwrap();
    let (_p, server) = serve(&net, |s| {
        ServerKeysBuilder::new(&name(s), now_ms() + DAY)
            .verify_key(&key)
            .old_verify_key(old.id(), &old.public_key_base64(), now_ms() - DAY)
            .sign(&[&key])
            .unwrap()
    });
    let f = rt()
        .block_on(net.fetcher().fetch_direct(&name(&server)))
        .unwrap();
    assert_eq!(f.old_keys.len(), 1);
    assert!(!f.old_keys[0].valid_for_requests(now_ms()));
    assert!(f.keys[0].valid_for_requests(now_ms()));
}

#[test]
fn concurrent_fetches_for_one_origin_collapse_into_one() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let p = peer(net.ca.issue(&["hs.test"]).unwrap(), Scripted::not_found());
    let server = format!("hs.test:{}", p.addr().port());
    p.set_handler(Scripted::delay(
        std::time::Duration::from_millis(300),
        Scripted::json(key_doc(&server, &key, DAY)),
    ));
    net.zone(Zone::new().a("hs.test", ip_of(&p)));
    let fetcher = Arc::new(net.fetcher());
    let rt = rt();
    rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..10 {
            let f = fetcher.clone();
            let s = name(&server);
            hs.push(tokio::spawn(async move {
                f.fetch_direct(&s).await.map(|k| k.keys.len())
            }));
        }
        for h in hs {
            assert_eq!(h.await.unwrap().unwrap(), 1);
        }
    });
    assert_eq!(only(p.requests(), "/_matrix/key/v2/server").len(), 1);
}

/// A notary that answers `/_matrix/key/v2/query` with `entries` and its own
/// keys at `/_matrix/key/v2/server`.
fn notary(
    net: &Net,
    nkey: &SigningKey,
    entries: impl Fn(&str, &Value) -> Vec<Value> + Send + Sync + 'static,
) -> (HttpsServer, String) {
    let p = peer(
        net.ca
            .issue(&["notary.test", "hs.test", "other.test"])
            .unwrap(),
        Scripted::not_found(),
    );
    let nname = format!("notary.test:{}", p.addr().port());
    let own = key_doc(&nname, nkey, DAY);
    let nname2 = nname.clone();
    p.set_handler(Handler::new(move |r| match r.path() {
        "/_matrix/key/v2/server" => Scripted::json(own.clone()),
        path if path.starts_with("/_matrix/key/v2/query") => {
            let body = r.json().unwrap_or(Value::Null);
            Scripted::json(json!({ "server_keys": entries(&nname2, &body) }))
        }
        _ => Scripted::not_found(),
    }));
    net.zone(
        Zone::new()
            .a("notary.test", ip_of(&p))
            .a("hs.test", ip_of(&p)),
    );
    (p, nname)
}

fn notarised(
    origin: &str,
    okey: &SigningKey,
    notary: &str,
    nkey: Option<&SigningKey>,
    valid_for: u64,
) -> Value {
    let mut d = key_doc(origin, okey, valid_for);
    if let Some(nk) = nkey {
        signing::sign_json(&mut d, notary, nk).unwrap();
    }
    d
}

fn notary_keys(
    fetcher: &homeport_federation::KeyFetcher,
    nname: &str,
) -> Vec<(KeyId, ed25519_dalek::VerifyingKey)> {
    let nk = rt().block_on(fetcher.fetch_direct(&name(nname))).unwrap();
    nk.keys.iter().map(|k| (k.key_id.clone(), k.key)).collect()
}

#[test]
fn notary_response_verifies_both_signatures() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let nkey = SigningKey::generate("a_notary").unwrap();
    let okey = SigningKey::generate("a_origin").unwrap();
    let nk2 = nkey.clone();
    let (p, nname) = notary(&net, &nkey, move |n, _| {
        vec![notarised("origin.test", &okey, n, Some(&nk2), DAY)]
    });
    let fetcher = net.fetcher();
    let keys = notary_keys(&fetcher, &nname);
    let entries = rt()
        .block_on(fetcher.query_notary(
            &name(&nname),
            &keys,
            &[(name("origin.test"), vec![])],
            now_ms(),
        ))
        .unwrap();
    let f = entries[0].result.as_ref().unwrap();
    assert_eq!(f.via, Via::Notary(nname.clone()));
    assert_eq!(f.notary_key.as_ref().unwrap().as_str(), "ed25519:a_notary");
    // The query carried minimum_valid_until_ts semantics in a POST body.
    let q = only(p.requests(), "/_matrix/key/v2/query");
    assert_eq!(q[0].method, "POST");
    assert!(q[0].json().unwrap()["server_keys"]["origin.test"].is_object());
}

#[test]
fn notary_response_missing_the_notary_signature_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let nkey = SigningKey::generate("a_notary").unwrap();
    let okey = SigningKey::generate("a_origin").unwrap();
    let (_p, nname) = notary(&net, &nkey, move |n, _| {
        vec![notarised("origin.test", &okey, n, None, DAY)]
    });
    let fetcher = net.fetcher();
    let keys = notary_keys(&fetcher, &nname);
    let entries = rt()
        .block_on(fetcher.query_notary(
            &name(&nname),
            &keys,
            &[(name("origin.test"), vec![])],
            now_ms(),
        ))
        .unwrap();
    assert!(
        matches!(&entries[0].result, Err(KeyError::NotarySignature { reason, .. }) if reason.contains("not signed by the notary")),
        "{:?}",
        entries[0].result
    );
}

#[test]
fn notary_signature_by_an_unknown_key_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let nkey = SigningKey::generate("a_notary").unwrap();
    let rogue = SigningKey::generate("a_rogue").unwrap();
    let okey = SigningKey::generate("a_origin").unwrap();
    let (_p, nname) = notary(&net, &nkey, move |n, _| {
        vec![notarised("origin.test", &okey, n, Some(&rogue), DAY)]
    });
    let fetcher = net.fetcher();
    let keys = notary_keys(&fetcher, &nname);
    let entries = rt()
        .block_on(fetcher.query_notary(
            &name(&nname),
            &keys,
            &[(name("origin.test"), vec![])],
            now_ms(),
        ))
        .unwrap();
    assert!(matches!(
        &entries[0].result,
        Err(KeyError::NotarySignature { .. })
    ));
}

#[test]
fn notary_entry_failing_the_origin_checks_is_refused() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let nkey = SigningKey::generate("a_notary").unwrap();
    let okey = SigningKey::generate("a_origin").unwrap();
    let nk2 = nkey.clone();
    let (_p, nname) = notary(&net, &nkey, move |n, _| {
        let mut d = key_doc("origin.test", &okey, DAY);
        // Change the first character of the signature: always a different
        // signature, still valid base64 (a replace() could find nothing to
        // replace and leave the signature valid).
        let sig = d["signatures"]["origin.test"]["ed25519:a_origin"]
            .as_str()
            .unwrap()
            .to_owned();
        let first = if sig.starts_with('A') { "B" } else { "A" };
        d["signatures"]["origin.test"]["ed25519:a_origin"] = format!("{first}{}", &sig[1..]).into();
        signing::sign_json(&mut d, n, &nk2).unwrap();
        vec![d]
    });
    let fetcher = net.fetcher();
    let keys = notary_keys(&fetcher, &nname);
    let entries = rt()
        .block_on(fetcher.query_notary(
            &name(&nname),
            &keys,
            &[(name("origin.test"), vec![])],
            now_ms(),
        ))
        .unwrap();
    assert!(
        matches!(&entries[0].result, Err(KeyError::Checks { .. })),
        "{:?}",
        entries[0].result
    );
}

#[test]
fn several_servers_in_one_query_and_duplicates_keep_the_latest_validity() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let nkey = SigningKey::generate("a_notary").unwrap();
    let k1 = SigningKey::generate("a_one").unwrap();
    let k2 = SigningKey::generate("a_two").unwrap();
    let nk2 = nkey.clone();
    let (p, nname) = notary(&net, &nkey, move |n, _| {
        vec![
            notarised("one.test", &k1, n, Some(&nk2), DAY),
            notarised("one.test", &k1, n, Some(&nk2), 3 * DAY),
            notarised("one.test", &k1, n, Some(&nk2), 2 * DAY),
            notarised("two.test", &k2, n, Some(&nk2), DAY),
        ]
    });
    let fetcher = net.fetcher();
    let keys = notary_keys(&fetcher, &nname);
    let id = KeyId::parse("ed25519:a_one").unwrap();
    let entries = rt()
        .block_on(fetcher.query_notary(
            &name(&nname),
            &keys,
            &[(name("one.test"), vec![id]), (name("two.test"), vec![])],
            now_ms(),
        ))
        .unwrap();
    assert_eq!(entries.len(), 2);
    let one = entries[0].result.as_ref().unwrap();
    assert!(
        one.keys[0].published_valid_until_ts > now_ms() + 2 * DAY + DAY / 2,
        "latest validity kept"
    );
    assert!(entries[1].result.is_ok());
    let q = only(p.requests(), "/_matrix/key/v2/query");
    assert_eq!(q.len(), 1, "one batched request");
    let body = q[0].json().unwrap();
    assert!(body["server_keys"]["one.test"]["ed25519:a_one"]["minimum_valid_until_ts"].is_u64());
    assert!(
        body["server_keys"]["two.test"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn notary_without_an_entry_is_reported_missing() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let nkey = SigningKey::generate("a_notary").unwrap();
    let (_p, nname) = notary(&net, &nkey, |_, _| vec![]);
    let fetcher = net.fetcher();
    let keys = notary_keys(&fetcher, &nname);
    let entries = rt()
        .block_on(fetcher.query_notary_get(&name(&nname), &keys, &name("origin.test"), now_ms()))
        .unwrap();
    assert!(matches!(
        entries[0].result,
        Err(KeyError::NotaryMissing { .. })
    ));
}

// ---- X-Matrix request authentication ----

fn signed_headers(
    origin: &str,
    key: &SigningKey,
    method: &str,
    uri: &str,
    dest: &str,
    body: Option<&Value>,
) -> http::HeaderMap {
    let o = name(origin);
    let d = name(dest);
    let x = RequestToSign {
        method,
        uri,
        origin: &o,
        destination: &d,
        content: body,
    }
    .sign(key)
    .unwrap();
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        x.to_header_value().parse().unwrap(),
    );
    h
}

#[test]
fn authenticate_accepts_a_valid_signature_and_fetches_the_key() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (p, origin) = serve(&net, |s| key_doc(s, &key, DAY));
    let fetcher = net.fetcher();
    let body = json!({"a": 1});
    let headers = signed_headers(
        &origin,
        &key,
        "PUT",
        "/_matrix/federation/v1/send/1?x=%2F",
        "me.test",
        Some(&body),
    );
    let raw = serde_json::to_vec(&body).unwrap();
    let req = Incoming {
        method: "PUT",
        uri: "/_matrix/federation/v1/send/1?x=%2F",
        headers: &headers,
        body: Some(&raw),
    };
    let got = rt()
        .block_on(auth::authenticate(&req, &name("me.test"), &fetcher))
        .unwrap();
    assert_eq!(got.as_str(), origin);
    // The key is cached: a second request does not fetch again.
    rt().block_on(auth::authenticate(&req, &name("me.test"), &fetcher))
        .unwrap();
    assert_eq!(only(p.requests(), "/_matrix/key/v2/server").len(), 1);
}

#[test]
fn authenticate_rejects_with_the_right_status() {
    let net = Net::new(Handler::fixed(Scripted::not_found()));
    let key = SigningKey::generate("a_1").unwrap();
    let (_p, origin) = serve(&net, |s| key_doc(s, &key, DAY));
    let fetcher = net.fetcher();
    let me = name("me.test");
    let rt = rt();
    let run = |h: &http::HeaderMap, uri: &str| {
        let req = Incoming {
            method: "GET",
            uri,
            headers: h,
            body: None,
        };
        rt.block_on(auth::authenticate(&req, &me, &fetcher))
    };
    // Missing.
    let e = run(&http::HeaderMap::new(), "/x").unwrap_err();
    assert!(matches!(e, AuthError::Missing) && e.status() == 401);
    // Malformed.
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        "X-Matrix origin=\"unterminated".parse().unwrap(),
    );
    assert_eq!(run(&h, "/x").unwrap_err().status(), 400);
    // Tampered path.
    let h = signed_headers(&origin, &key, "GET", "/x", "me.test", None);
    let e = run(&h, "/y").unwrap_err();
    assert!(
        matches!(e, AuthError::BadSignature(_)) && e.status() == 401,
        "{e}"
    );
    // Another destination.
    let h = signed_headers(&origin, &key, "GET", "/x", "someone.else", None);
    let e = run(&h, "/x").unwrap_err();
    assert!(
        matches!(e, AuthError::WrongDestination(_)) && e.status() == 401,
        "{e}"
    );
    // Unknown key.
    let other = SigningKey::generate("a_unknown").unwrap();
    let h = signed_headers(&origin, &other, "GET", "/x", "me.test", None);
    let e = run(&h, "/x").unwrap_err();
    assert!(
        matches!(e, AuthError::UnknownKey { .. }) && e.status() == 401,
        "{e}"
    );
    assert_eq!(e.errcode(), "M_UNAUTHORIZED");
    // A valid one passes.
    let h = signed_headers(&origin, &key, "GET", "/x", "me.test", None);
    assert!(run(&h, "/x").is_ok());
}
