//! `check` findings against real in-process peers: a DNS server and HTTPS
//! servers on 127.0.0.x (and ::1 where the machine has it), with rcgen
//! certificates. Each finding is made to appear, and where it matters, a
//! close case where it must not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::*;
use homeport_core::signing::SigningKey;
use homeport_federation::check::{self, CheckOptions, Finding, Report, Severity};
use homeport_federation::{ClientConfig, FederationClient};
use homeport_resolve::{AddressFilter, Resolver};
use homeport_test_support::{
    Handler, HttpsServer, IssueOpts, RecordType, Scripted, TestCert, TlsSetup, next_loopback,
};
use serde_json::{Value, json};

/// The lab-like default for these tests: every address is on loopback.
fn private() -> CheckOptions {
    CheckOptions {
        private: true,
        ..CheckOptions::default()
    }
}

fn run(net: &Net, name: &str, opts: &CheckOptions) -> Report {
    run_with(&net.client(None), name, opts)
}

fn run_with(client: &FederationClient, name: &str, opts: &CheckOptions) -> Report {
    rt().block_on(check::check(client, &common::name(name), opts))
}

fn ids(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.id).collect()
}

fn get<'a>(r: &'a Report, id: &str) -> &'a Finding {
    r.findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} in {:?}", ids(r)))
}

/// A key server for `host:port` on a fresh loopback address with `cert`;
/// `host` resolves to it. Returns the server and the server name.
fn keyed_peer(net: &Net, host: &str, cert: TestCert) -> (HttpsServer, String) {
    let (s, name) = named_peer(net, host, cert);
    let key = SigningKey::generate("a_1").unwrap();
    s.set_handler(key_server(key_doc(&name, &key, DAY)));
    (s, name)
}

/// A server answering 404 on a fresh loopback address with `cert`; `host`
/// resolves to it. Returns the server and the server name `host:port`.
fn named_peer(net: &Net, host: &str, cert: TestCert) -> (HttpsServer, String) {
    let s = peer(cert, Scripted::not_found());
    let name = format!("{host}:{}", s.addr().port());
    let (h, ip) = (host.to_owned(), ip_of(&s));
    net.dns.zone().update(move |z| z.a(&h, ip)).unwrap();
    (s, name)
}

/// The delegated server of `example.test`: keys for `example.test`, a
/// certificate for `hs.test`, `hs.test` resolving to it.
fn delegated_target(net: &Net) -> HttpsServer {
    let key = SigningKey::generate("a_1").unwrap();
    let s = peer(
        net.ca.issue(&["hs.test"]).unwrap(),
        key_server(key_doc("example.test", &key, DAY)),
    );
    let ip = ip_of(&s);
    let wk_ip = net.wk_ip;
    net.dns
        .zone()
        .update(move |z| z.a("hs.test", ip).a("example.test", wk_ip))
        .unwrap();
    s
}

fn wk_json(m_server: &str) -> Scripted {
    Scripted::json(json!({ "m.server": m_server }))
}

// ---------------------------------------------------------------- certificates

#[test]
fn certificate_expiring_in_five_days_is_a_warning_and_a_fresh_one_is_not() {
    let net = Net::new(Handler::routes().into());
    let five_days = net
        .ca
        .issue_with(
            &["soon.test"],
            IssueOpts::valid_around_now(
                Duration::from_secs(86_400),
                Duration::from_secs(5 * 86_400 + 3600),
            ),
        )
        .unwrap();
    let (_s, name) = keyed_peer(&net, "soon.test", five_days);
    let r = run(&net, &name, &private());
    let f = get(&r, "cert_expires_soon");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.evidence.contains("in 5 day(s)"), "{}", f.evidence);
    assert!(r.ok, "a warning only: {:?}", ids(&r));
    let leaf = &r.to_json()["addresses"][0]["certificate"]["chain"][0];
    assert_eq!(leaf["days_left"], 5);
    assert!(leaf["not_before"].as_i64().unwrap() < leaf["not_after"].as_i64().unwrap());

    let (_s, name) = keyed_peer(&net, "fresh.test", net.ca.issue(&["fresh.test"]).unwrap());
    let r = run(&net, &name, &private());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn certificate_not_yet_valid_is_its_own_finding_not_untrusted_or_expired() {
    let net = Net::new(Handler::routes().into());
    let future = net
        .ca
        .issue_with(&["future.test"], IssueOpts::not_yet_valid())
        .unwrap();
    let (_s, name) = keyed_peer(&net, "future.test", future);
    let r = run(&net, &name, &private());
    let cert: Vec<_> = ids(&r)
        .into_iter()
        .filter(|i| i.starts_with("cert_"))
        .collect();
    assert_eq!(cert, ["cert_not_yet_valid"], "{:?}", r.findings);
    let f = get(&r, "cert_not_yet_valid");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.evidence.contains("not_before"), "{}", f.evidence);
    assert!(!r.ok);
    let leaf = &r.to_json()["addresses"][0]["certificate"]["chain"][0];
    let now = i64::try_from(now_ms() / 1000).unwrap();
    assert!(leaf["not_before"].as_i64().unwrap() > now, "{leaf}");

    let expired = net
        .ca
        .issue_with(&["past.test"], IssueOpts::expired())
        .unwrap();
    let (_s, name) = keyed_peer(&net, "past.test", expired);
    let r = run(&net, &name, &private());
    let cert: Vec<_> = ids(&r)
        .into_iter()
        .filter(|i| i.starts_with("cert_"))
        .collect();
    assert_eq!(cert, ["cert_expired"], "{:?}", r.findings);
    assert!(
        get(&r, "cert_expired").evidence.contains("days ago"),
        "{:?}",
        r.findings
    );
}

// ------------------------------------------------------------------------ keys

#[test]
fn key_response_not_in_canonical_form_is_reported_with_the_first_difference() {
    let net = Net::new(Handler::routes().into());
    let (s, name) = named_peer(&net, "pretty.test", net.ca.issue(&["pretty.test"]).unwrap());
    let key = SigningKey::generate("a_1").unwrap();
    let doc = key_doc(&name, &key, DAY);
    s.set_handler(with_version(
        Handler::routes().route(
            "/_matrix/key/v2/server",
            Scripted::bytes(200, serde_json::to_vec_pretty(&doc).unwrap())
                .header("content-type", "application/json"),
        ),
    ));
    let r = run(&net, &name, &private());
    assert_eq!(ids(&r), ["key_not_canonical"], "{:?}", r.findings);
    let f = get(&r, "key_not_canonical");
    assert_eq!(f.severity, Severity::Info);
    assert!(f.evidence.contains("at byte 1:"), "{}", f.evidence);
    let keys = &r.to_json()["addresses"][0]["keys"];
    assert_eq!(keys["canonical"], false);
    assert_eq!(keys["verify_keys"], json!([["ed25519:a_1", "valid"]]));

    // The same document, canonical: nothing to say.
    let (_s, name) = keyed_peer(
        &net,
        "canonical.test",
        net.ca.issue(&["canonical.test"]).unwrap(),
    );
    let r = run(&net, &name, &private());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.to_json()["addresses"][0]["keys"]["canonical"], true);
}

#[test]
fn key_content_type_is_compared_without_case_and_quoted_plainly() {
    let net = Net::new(Handler::routes().into());
    let (s, name) = named_peer(&net, "ctype.test", net.ca.issue(&["ctype.test"]).unwrap());
    let key = SigningKey::generate("a_1").unwrap();
    let body = homeport_core::canonical_json::to_canonical_vec(
        &key_doc(&name, &key, DAY),
        homeport_core::canonical_json::Mode::Strict,
    )
    .unwrap();
    let serve = |ct: &str| {
        s.set_handler(with_version(Handler::routes().route(
            "/_matrix/key/v2/server",
            Scripted::bytes(200, body.clone()).header("content-type", ct),
        )));
    };

    serve("Application/JSON; charset=utf-8");
    let r = run(&net, &name, &private());
    assert!(r.findings.is_empty(), "{:?}", r.findings);

    serve("text/plain");
    let r = run(&net, &name, &private());
    let f = get(&r, "key_content_type");
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.evidence
            .ends_with("answered with Content-Type: text/plain"),
        "{}",
        f.evidence
    );
}

/// A proxy that answers only the Host form peers send today: a warning
/// whose fix names the change that would break it.
#[test]
fn host_probe_warning_names_the_change_that_would_break_the_proxy() {
    let net = Net::new(Handler::routes().into());
    let key = SigningKey::generate("a_1").unwrap();
    let (s, name) = named_peer(
        &net,
        "portonly.test",
        net.ca.issue(&["portonly.test"]).unwrap(),
    );
    s.set_handler(with_version(Handler::routes().route_host(
        &name,
        "/_matrix/key/v2/server",
        Scripted::json(key_doc(&name, &key, DAY)),
    )));
    let r = run(&net, &name, &private());
    let f = get(&r, "host_port_rejected_by_proxy");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.fix.contains("drop the port"), "{}", f.fix);
    assert!(r.ok);
}

#[test]
fn verify_keys_status_is_a_snake_case_word_and_the_reason_a_problem() {
    let net = Net::new(Handler::routes().into());
    let (s, name) = named_peer(&net, "badsig.test", net.ca.issue(&["badsig.test"]).unwrap());
    let key = SigningKey::generate("a_1").unwrap();
    let mut doc = key_doc(&name, &key, DAY);
    doc["signatures"][&name]["ed25519:a_1"] = "@@@".into();
    s.set_handler(key_server(doc));
    let r = run(&net, &name, &private());
    let keys = &r.to_json()["addresses"][0]["keys"];
    assert_eq!(keys["verify_keys"], json!([["ed25519:a_1", "malformed"]]));
    assert!(
        keys["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("malformed")),
        "{keys}"
    );
}

// ----------------------------------------------------------------- .well-known

#[test]
fn a_redirected_well_known_lists_the_location_chain_and_a_direct_one_does_not() {
    let net = Net::new(Handler::routes().into());
    let target = delegated_target(&net);
    let m = format!("hs.test:{}", target.addr().port());
    net.wk.set_handler(
        Handler::routes()
            .route(
                "/.well-known/matrix/server",
                Scripted::redirect(302, "/.well-known/matrix/server-moved"),
            )
            .route("/.well-known/matrix/server-moved", wk_json(&m)),
    );
    let r = run(&net, "example.test", &private());
    let f = get(&r, "wellknown_redirected");
    assert_eq!(f.severity, Severity::Info);
    assert!(
        f.evidence.contains("/.well-known/matrix/server-moved"),
        "{}",
        f.evidence
    );
    assert!(r.ok, "{:?}", r.findings);

    net.wk
        .set_handler(Handler::routes().route("/.well-known/matrix/server", wk_json(&m)));
    let r = run(&net, "example.test", &private());
    assert!(
        !ids(&r).contains(&"wellknown_redirected"),
        "{:?}",
        r.findings
    );
}

#[test]
fn well_known_cache_lifetime_over_48_hours_is_a_warning_under_an_hour_info() {
    let net = Net::new(Handler::routes().into());
    let target = delegated_target(&net);
    let m = format!("hs.test:{}", target.addr().port());
    let with = |cc: &str| {
        net.wk.set_handler(Handler::routes().route(
            "/.well-known/matrix/server",
            wk_json(&m).header("cache-control", cc),
        ));
        run(&net, "example.test", &private())
    };
    let r = with("max-age=604800");
    let f = get(&r, "wellknown_cache_long");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.evidence.contains("604800s"), "{}", f.evidence);
    // The lifetime applied is clamped to 48 hours; the finding looks at
    // what was asked for.
    assert_eq!(
        r.resolution.well_known.as_ref().unwrap().cache_seconds,
        172_800
    );
    assert!(!ids(&r).contains(&"wellknown_cache_short"));

    let r = with("max-age=86400");
    assert!(
        !ids(&r).iter().any(|i| i.starts_with("wellknown_cache")),
        "{:?}",
        r.findings
    );
    let r = with("max-age=172800");
    assert!(
        !ids(&r).contains(&"wellknown_cache_long"),
        "48 h exactly is fine"
    );

    let r = with("max-age=600");
    assert_eq!(get(&r, "wellknown_cache_short").severity, Severity::Info);
    assert!(!ids(&r).contains(&"wellknown_cache_long"));
}

// ------------------------------------------------------------------------- SRV

#[test]
fn srv_record_of_a_delegated_name_with_a_port_is_reported_as_ignored() {
    let net = Net::new(Handler::routes().into());
    let target = delegated_target(&net);
    let m = format!("hs.test:{}", target.addr().port());
    net.wk
        .set_handler(Handler::routes().route("/.well-known/matrix/server", wk_json(&m)));

    let r = run(&net, "example.test", &private());
    assert_eq!(r.resolution.step.as_str(), "3.2");
    assert!(
        !ids(&r).contains(&"srv_ignored_due_to_port"),
        "{:?}",
        r.findings
    );

    // Asked of the check's own resolver (the test's DNS server).
    net.dns.clear_queries();
    net.dns
        .zone()
        .update(|z| z.srv("_matrix-fed._tcp.hs.test", 10, 5, 8448, "hs.test"))
        .unwrap();
    let r = run(&net, "example.test", &private());
    let f = get(&r, "srv_ignored_due_to_port");
    assert_eq!(f.severity, Severity::Info);
    assert!(
        f.evidence.contains("_matrix-fed._tcp.hs.test") && f.evidence.contains(&m),
        "{}",
        f.evidence
    );
    assert!(
        net.dns
            .query_count("_matrix-fed._tcp.hs.test", RecordType::SRV)
            >= 1
    );
    assert!(r.ok);

    // Only the deprecated name.
    net.dns
        .zone()
        .update(|z| {
            z.remove("_matrix-fed._tcp.hs.test")
                .srv("_matrix._tcp.hs.test", 10, 5, 8448, "hs.test")
        })
        .unwrap();
    let r = run(&net, "example.test", &private());
    assert!(
        get(&r, "srv_ignored_due_to_port")
            .evidence
            .contains("_matrix._tcp.hs.test"),
        "{:?}",
        r.findings
    );
}

#[test]
fn srv_records_of_a_delegating_name_are_reported_as_ignored_in_either_form() {
    let net = Net::new(Handler::routes().into());
    let target = delegated_target(&net);
    let m = format!("hs.test:{}", target.addr().port());
    net.wk
        .set_handler(Handler::routes().route("/.well-known/matrix/server", wk_json(&m)));
    let r = run(&net, "example.test", &private());
    assert!(
        !ids(&r).contains(&"srv_ignored_due_to_wellknown"),
        "{:?}",
        r.findings
    );
    // Only the deprecated form, on the server name itself.
    net.dns
        .zone()
        .update(|z| z.srv("_matrix._tcp.example.test", 10, 5, 8448, "old.test"))
        .unwrap();
    let r = run(&net, "example.test", &private());
    let f = get(&r, "srv_ignored_due_to_wellknown");
    assert_eq!(f.severity, Severity::Info);
    assert!(
        f.evidence
            .contains("_matrix._tcp.example.test (10 5 8448 old.test")
            && f.evidence.contains(&m),
        "{}",
        f.evidence
    );
    // Both forms: reported once, for the current one.
    net.dns
        .zone()
        .update(|z| z.srv("_matrix-fed._tcp.example.test", 10, 5, 8448, "new.test"))
        .unwrap();
    let r = run(&net, "example.test", &private());
    let all: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.id == "srv_ignored_due_to_wellknown")
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].evidence.starts_with("_matrix-fed._tcp.example.test"),
        "{all:?}"
    );
}

// ------------------------------------------------------------------- addresses

/// A server on `[::1]`, or `None` when this machine has no IPv6 loopback.
fn on_v6_loopback(cert: TestCert) -> Option<HttpsServer> {
    HttpsServer::start(
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        cert,
        Scripted::not_found(),
    )
    .ok()
}

#[test]
fn ipv4_failing_while_ipv6_works_is_ipv4_unreachable_an_error() {
    let net = Net::new(Handler::routes().into());
    let Some(v6) = on_v6_loopback(net.ca.issue(&["dual.test"]).unwrap()) else {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    };
    let name = format!("dual.test:{}", v6.addr().port());
    let key = SigningKey::generate("a_1").unwrap();
    v6.set_handler(key_server(key_doc(&name, &key, DAY)));
    // Nothing listens on that port of a fresh IPv4 loopback address.
    let dead = next_loopback();
    net.dns
        .zone()
        .update(move |z| {
            z.aaaa("dual.test", Ipv6Addr::LOCALHOST)
                .a("dual.test", dead)
        })
        .unwrap();
    let r = run(&net, &name, &private());
    assert_eq!(ids(&r), ["ipv4_unreachable"], "{:?}", r.findings);
    let f = get(&r, "ipv4_unreachable");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.evidence.contains("IPv6 does ([::1]:"), "{}", f.evidence);
    assert!(!r.ok);
}

#[test]
fn ipv6_failing_while_ipv4_works_is_ipv6_unreachable_a_warning() {
    let net = Net::new(Handler::routes().into());
    if on_v6_loopback(net.ca.issue(&["x.test"]).unwrap()).is_none() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let (s, name) = keyed_peer(&net, "dual4.test", net.ca.issue(&["dual4.test"]).unwrap());
    let port = s.addr().port();
    // [::1] on the same port: nothing there (the port was free on IPv4).
    if std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_err() {
        eprintln!("[::1]:{port} is taken here: skipped");
        return;
    }
    net.dns
        .zone()
        .update(|z| z.aaaa("dual4.test", Ipv6Addr::LOCALHOST))
        .unwrap();
    let r = run(&net, &name, &private());
    assert_eq!(ids(&r), ["ipv6_unreachable"], "{:?}", r.findings);
    assert_eq!(get(&r, "ipv6_unreachable").severity, Severity::Warning);
    assert!(r.ok);
}

#[test]
fn private_addresses_are_reported_unless_private_or_whitelisted() {
    let net = Net::new(Handler::routes().into());
    let (s, name) = keyed_peer(&net, "lan.test", net.ca.issue(&["lan.test"]).unwrap());
    let r = run(&net, &name, &CheckOptions::default());
    assert_eq!(ids(&r), ["address_not_public"], "{:?}", r.findings);
    let f = get(&r, "address_not_public");
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.evidence.contains(&s.addr().ip().to_string()) && f.evidence.contains("127.0.0.0/8"),
        "{}",
        f.evidence
    );
    assert!(r.ok);

    let r = run(&net, &name, &private());
    assert!(r.findings.is_empty(), "{:?}", r.findings);

    // A client that refuses Synapse's list but whitelists loopback (the
    // tester and monitor with ip_range_whitelist): those are intended.
    let filter = AddressFilter {
        allow: vec![homeport_resolve::filter::parse_range("127.0.0.0/8").unwrap()],
        ..AddressFilter::default_deny()
    };
    let mut rc = net.resolver_cfg.clone();
    rc.filter = filter.clone();
    let mut cc = ClientConfig::new(net.tls.clone());
    cc.connect.filter = filter;
    let client = FederationClient::new(Resolver::new(rc).unwrap(), cc, None);
    let r = run_with(&client, &name, &CheckOptions::default());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

// ------------------------------------------------------------ client discovery

/// `example.test` delegating properly, with `/.well-known/matrix/client`
/// (and `support`) answering as `extra` routes say.
fn client_net(
    extra: impl Fn(homeport_test_support::Routes) -> homeport_test_support::Routes,
) -> (Net, HttpsServer) {
    let net = Net::new(Handler::routes().into());
    let target = delegated_target(&net);
    let m = format!("hs.test:{}", target.addr().port());
    net.wk.set_handler(extra(
        Handler::routes().route("/.well-known/matrix/server", wk_json(&m)),
    ));
    (net, target)
}

/// The finding ids besides the `wellknown_explicit_port` every
/// [`client_net`] delegation has.
fn beyond_delegation(r: &Report) -> Vec<&'static str> {
    ids(r)
        .into_iter()
        .filter(|i| *i != "wellknown_explicit_port")
        .collect()
}

fn client_doc(base_url: &str) -> Scripted {
    Scripted::json(json!({"m.homeserver": {"base_url": base_url}}))
        .header("access-control-allow-origin", "*")
}

#[test]
fn client_base_url_must_answer_versions_with_200_json() {
    let (net, _t) = client_net(|r| r);
    let versions = |s: Scripted| -> Handler {
        Handler::routes()
            .route("/_matrix/client/versions", s)
            .into()
    };
    let ok_json = || Scripted::json(json!({"versions": ["v1.11"]}));
    let good = peer(net.ca.issue(&["client.test"]).unwrap(), versions(ok_json()));
    let broken = peer(
        net.ca.issue(&["broken.test"]).unwrap(),
        versions(Scripted::not_found()),
    );
    let not_json = peer(
        net.ca.issue(&["html.test"]).unwrap(),
        versions(Scripted::text(200, "<html>welcome</html>")),
    );
    let wrong_cert = peer(net.ca.issue(&["other.test"]).unwrap(), versions(ok_json()));
    let plain = HttpsServer::start(
        SocketAddr::new(IpAddr::V4(next_loopback()), 0),
        TlsSetup::Plain,
        versions(ok_json()),
    )
    .unwrap();
    let (g, b, h, w) = (
        ip_of(&good),
        ip_of(&broken),
        ip_of(&not_json),
        ip_of(&wrong_cert),
    );
    net.dns
        .zone()
        .update(move |z| {
            z.a("client.test", g)
                .a("broken.test", b)
                .a("html.test", h)
                .a("wrongcert.test", w)
        })
        .unwrap();
    let port = |s: &HttpsServer| s.addr().port();
    let cases: Vec<(String, Option<&str>)> = vec![
        (format!("https://client.test:{}", port(&good)), None),
        (format!("https://client.test:{}/", port(&good)), None),
        (format!("http://{}", plain.addr()), None),
        (
            format!("https://broken.test:{}", port(&broken)),
            Some("HTTP 404"),
        ),
        (
            format!("https://html.test:{}", port(&not_json)),
            Some("not a JSON object"),
        ),
        (
            format!("https://wrongcert.test:{}", port(&wrong_cert)),
            Some("tls: "),
        ),
        ("https://nowhere.test".to_owned(), Some("dns: ")),
    ];
    for (base_url, problem) in cases {
        let target_port = _t.addr().port();
        net.wk.set_handler(
            Handler::routes()
                .route(
                    "/.well-known/matrix/server",
                    wk_json(&format!("hs.test:{target_port}")),
                )
                .route("/.well-known/matrix/client", client_doc(&base_url)),
        );
        let r = run(&net, "example.test", &private());
        let v = r.to_json();
        let versions = &v["client_well_known"]["versions"];
        assert_eq!(
            versions["url"],
            format!("{}/_matrix/client/versions", base_url.trim_end_matches('/'))
        );
        match problem {
            None => {
                assert!(
                    r.findings.iter().all(|f| f.severity == Severity::Info),
                    "{base_url}: {:?}",
                    r.findings
                );
                assert_eq!(versions["status"], 200, "{base_url}: {versions}");
                assert_eq!(versions["error"], Value::Null);
            }
            Some(p) => {
                let f = get(&r, "client_base_url_unreachable");
                assert_eq!(f.severity, Severity::Warning);
                assert!(
                    f.evidence.contains(p) && f.evidence.contains("/_matrix/client/versions"),
                    "{base_url}: {}",
                    f.evidence
                );
                assert!(versions["error"].is_string(), "{versions}");
                assert!(r.ok, "a warning: {:?}", r.findings);
            }
        }
    }
}

#[test]
fn support_document_404_is_fine_and_an_invalid_one_is_info() {
    let (net, _t) = client_net(|r| r);
    let r = run(&net, "example.test", &private());
    assert!(beyond_delegation(&r).is_empty(), "{:?}", r.findings);
    assert_eq!(r.to_json()["support_well_known"], json!({"status": 404}));

    let (net, _t) = client_net(|r| {
        r.route(
            "/.well-known/matrix/support",
            Scripted::json(json!({"contacts": [
                {"matrix_id": "@admin:example.test", "role": "m.role.admin"}
            ], "support_page": "https://example.test/help"})),
        )
    });
    let r = run(&net, "example.test", &private());
    assert!(beyond_delegation(&r).is_empty(), "{:?}", r.findings);
    assert_eq!(
        r.to_json()["support_well_known"],
        json!({"status": 200, "contacts": 1, "support_page": "https://example.test/help"})
    );

    for (doc, why) in [
        (
            json!({"contacts": [{"matrix_id": "@admin:example.test"}]}),
            "role",
        ),
        (
            json!({"contacts": [{"role": "m.role.admin"}]}),
            "email_address",
        ),
        (json!({"admins": []}), "support_page"),
        (json!({"contacts": "admin@example.test"}), "not an array"),
    ] {
        let body = doc.clone();
        let (net, _t) = client_net(move |r| {
            r.route("/.well-known/matrix/support", Scripted::json(body.clone()))
        });
        let r = run(&net, "example.test", &private());
        assert_eq!(
            beyond_delegation(&r),
            ["support_wellknown_invalid"],
            "{doc}"
        );
        let f = get(&r, "support_wellknown_invalid");
        assert_eq!(f.severity, Severity::Info);
        assert!(f.evidence.contains(why), "{doc}: {}", f.evidence);
        let s = &r.to_json()["support_well_known"];
        assert_eq!(s["status"], 200);
        assert!(s["error"].as_str().unwrap().contains(why), "{s}");
        assert!(r.ok);
    }
}

// ----------------------------------------------------------- the time limit

#[test]
fn a_check_cut_short_reports_what_it_learnt_and_what_was_pending() {
    let net = Net::new(Handler::routes().into());
    let (s, name) = keyed_peer(&net, "slow.test", net.ca.issue(&["slow.test"]).unwrap());
    let key = SigningKey::generate("a_1").unwrap();
    s.set_handler(Handler::routes().route(
        "/_matrix/key/v2/server",
        Scripted::delay(
            Duration::from_secs(60),
            Scripted::json(key_doc(&name, &key, DAY)),
        ),
    ));
    // Long enough for connect and TLS on loopback even on a busy machine;
    // the key server answers after a minute.
    let opts = CheckOptions {
        time_limit: Some(Duration::from_secs(5)),
        ..private()
    };
    let r = run(&net, &name, &opts);
    assert!(!r.ok);
    let f = get(&r, "check_timed_out");
    assert_eq!(f.severity, Severity::Error);
    let at = format!("address {}: keys", s.addr());
    assert_eq!(r.pending, vec![at.clone()]);
    assert!(f.evidence.contains(&at), "{}", f.evidence);
    // What was learnt before the time ran out is kept.
    let v = r.to_json();
    assert_eq!(v["pending"], json!([at]));
    let a = &v["addresses"][0];
    assert_eq!(a["certificate"]["valid"], true, "{a}");
    assert!(a["tls"]["version"].is_string(), "{a}");
    assert!(a["error"].as_str().unwrap().starts_with("timeout: "), "{a}");
    // A cut-short address is not a connection failure.
    assert_eq!(ids(&r), ["check_timed_out"], "{:?}", r.findings);

    // Without a limit nothing is pending.
    s.set_handler(key_server(key_doc(&name, &key, DAY)));
    let r = run(&net, &name, &private());
    assert!(r.pending.is_empty());
    assert_eq!(r.to_json()["pending"], json!([]));
}

#[test]
fn a_check_cut_short_during_discovery_keeps_the_trace() {
    // .well-known accepts the connection and never answers within the limit.
    let net = Net::new(
        Handler::routes()
            .route(
                "/.well-known/matrix/server",
                Scripted::delay(Duration::from_secs(60), wk_json("hs.test")),
            )
            .into(),
    );
    let wk_ip = net.wk_ip;
    net.dns
        .zone()
        .update(move |z| z.a("example.test", wk_ip))
        .unwrap();
    let opts = CheckOptions {
        time_limit: Some(Duration::from_secs(1)),
        ..private()
    };
    let r = run(&net, "example.test", &opts);
    assert!(!r.ok);
    assert_eq!(r.pending.first().map(String::as_str), Some("resolution"));
    assert!(r.pending.contains(&"well_known_by_address".to_owned()));
    assert_eq!(ids(&r), ["check_timed_out"], "{:?}", r.findings);
    let v = r.to_json();
    assert_eq!(v["resolution"]["step"], "3");
    assert!(
        v["trace"].as_array().unwrap().iter().any(|t| t["message"]
            .as_str()
            .unwrap()
            .contains(".well-known/matrix/server")),
        "{v:#}"
    );
    assert_eq!(v["addresses"], json!([]));
}

#[test]
fn verify_keys_and_the_new_fields_are_in_the_json() {
    let net = Net::new(Handler::routes().into());
    let (_s, name) = keyed_peer(&net, "json.test", net.ca.issue(&["json.test"]).unwrap());
    let v = run(&net, &name, &private()).to_json();
    for k in ["support_well_known", "pending", "client_well_known"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    let keys = &v["addresses"][0]["keys"];
    assert_eq!(keys["verify_keys"], json!([["ed25519:a_1", "valid"]]));
    assert!(v["addresses"][0]["certificate"]["chain"][0]["not_before"].is_i64());
    let _: &Value = &v;
}

// ---------------------------------------------------------------- the notary

/// A notary on its own address that vouches for whatever `doc` returns
/// (signed by the notary), with its own keys at `/_matrix/key/v2/server`.
fn notary_peer(
    net: &Net,
    doc: impl Fn() -> Value + Send + Sync + 'static,
) -> (HttpsServer, String) {
    let (p, nname) = named_peer(net, "notary.test", net.ca.issue(&["notary.test"]).unwrap());
    let nkey = SigningKey::generate("a_notary").unwrap();
    let own = key_doc(&nname, &nkey, DAY);
    let n2 = nname.clone();
    p.set_handler(Handler::new(move |r| match r.path() {
        "/_matrix/key/v2/server" => Scripted::json(own.clone()),
        "/_matrix/key/v2/query" => {
            let mut d = doc();
            homeport_core::signing::sign_json(&mut d, &n2, &nkey).unwrap();
            Scripted::json(json!({ "server_keys": [d] }))
        }
        _ => Scripted::not_found(),
    }));
    (p, nname)
}

#[test]
fn a_notary_with_another_key_under_the_same_id_is_an_error() {
    let net = Net::new(Handler::routes().into());
    let (s, name) = named_peer(&net, "origin.test", net.ca.issue(&["origin.test"]).unwrap());
    let key = SigningKey::generate("a_1").unwrap();
    s.set_handler(key_server(key_doc(&name, &key, DAY)));
    let with_notary = |doc: Value| {
        let (_n, nname) = notary_peer(&net, move || doc.clone());
        let opts = CheckOptions {
            notary: Some(common::name(&nname)),
            ..private()
        };
        run(&net, &name, &opts)
    };

    // The same key: nothing to say.
    let r = with_notary(key_doc(&name, &key, DAY));
    assert!(r.findings.is_empty(), "{:?}", r.findings);

    // Someone else's key under the server's key id.
    let impostor = SigningKey::generate("a_1").unwrap();
    let r = with_notary(key_doc(&name, &impostor, DAY));
    let f = get(&r, "key_notary_mismatch");
    assert_eq!(f.severity, Severity::Error);
    assert!(
        f.evidence.contains("ed25519:a_1")
            && f.evidence.contains(&impostor.public_key_base64())
            && f.evidence.contains(&key.public_key_base64()),
        "{}",
        f.evidence
    );
    assert!(!r.ok);

    // A notary still serving the keys from before a rotation.
    let older = SigningKey::generate("a_0").unwrap();
    let r = with_notary(key_doc(&name, &older, DAY));
    assert_eq!(get(&r, "key_notary_mismatch").severity, Severity::Warning);
    assert!(r.ok);

    // A notary that cannot be reached at all.
    let opts = CheckOptions {
        notary: Some(common::name("gone.test:1")),
        ..private()
    };
    let r = run(&net, &name, &opts);
    assert_eq!(get(&r, "notary_unreachable").severity, Severity::Warning);
}
