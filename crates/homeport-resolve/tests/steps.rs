//! One test per row of the discovery step table, against a real in-process
//! DNS server and a real HTTPS `.well-known` server, plus the behaviours of
//! Synapse's federation-agent tests and gomatrixserverlib's resolve tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;

use common::*;
use homeport_resolve::{ResolveError, SrvOutcome, Step, WellKnownOutcome};
use homeport_test_support::{RecordType, Scripted, Zone};

fn s(x: &str) -> String {
    x.to_owned()
}

#[test]
fn step1_ipv4_literal_uses_8448_no_sni_and_no_lookups() {
    let w = World::new(Zone::new());
    let r = resolve(&w, "1.2.3.4");
    assert_eq!(r.step, Step::IpLiteral);
    assert_eq!(
        dest(&r),
        (
            s("1.2.3.4"),
            s("1.2.3.4"),
            None,
            vec![(s("1.2.3.4"), 8448, vec![s("1.2.3.4")])]
        )
    );
    assert!(r.well_known.is_none());
    assert!(r.srv.is_empty());
    assert!(w.dns.queries().is_empty(), "no DNS for an IP literal");
    assert_eq!(
        w.https.request_count(),
        0,
        "no .well-known for an IP literal"
    );
}

#[test]
fn step1_ipv4_literal_with_port_keeps_port_in_host() {
    let w = World::new(Zone::new());
    let r = resolve(&w, "42.42.42.42:443");
    assert_eq!(
        dest(&r),
        (
            s("42.42.42.42:443"),
            s("42.42.42.42"),
            None,
            vec![(s("42.42.42.42"), 443, vec![s("42.42.42.42")])]
        )
    );
}

#[test]
fn step1_ipv6_literal_keeps_brackets_in_host_only() {
    let w = World::new(Zone::new());
    let r = resolve(&w, "[::1]");
    assert_eq!(
        dest(&r),
        (
            s("[::1]"),
            s("::1"),
            None,
            vec![(s("::1"), 8448, vec![s("::1")])]
        )
    );
    let r = resolve(&w, "[42:42::42]:80");
    assert_eq!(
        dest(&r),
        (
            s("[42:42::42]:80"),
            s("42:42::42"),
            None,
            vec![(s("42:42::42"), 80, vec![s("42:42::42")])]
        )
    );
    assert!(w.dns.queries().is_empty());
}

#[test]
fn step2_explicit_port_is_kept_in_host_header_and_skips_well_known_and_srv() {
    let w = World::new(
        Zone::new()
            .a("example.test", Ipv4Addr::new(127, 0, 0, 9))
            .aaaa("example.test", "2001:db8::9".parse().unwrap())
            .srv(
                "_matrix-fed._tcp.example.test",
                1,
                1,
                9999,
                "fed.other.test",
            ),
    );
    w.delegate("example.test", "elsewhere.test");
    let r = resolve(&w, "example.test:4242");
    assert_eq!(r.step, Step::ExplicitPort);
    assert_eq!(
        dest(&r),
        (
            s("example.test:4242"),
            s("example.test"),
            Some(s("example.test")),
            vec![(
                s("example.test"),
                4242,
                vec![s("2001:db8::9"), s("127.0.0.9")]
            )]
        )
    );
    assert_eq!(w.https.request_count(), 0);
    assert_eq!(
        w.dns
            .query_count("_matrix-fed._tcp.example.test", RecordType::SRV),
        0
    );
    assert!(r.well_known.is_none() && r.srv.is_empty());
}

#[test]
fn step2_name_case_is_kept_for_host_and_sni_but_lookups_are_lower_case() {
    let w = World::new(Zone::new().a("upper.example.test", Ipv4Addr::new(127, 0, 0, 9)));
    let r = resolve(&w, "Upper.Example.test:8448");
    let (host, tls, sni, _) = dest(&r);
    assert_eq!(
        (host.as_str(), tls.as_str(), sni.as_deref()),
        (
            "Upper.Example.test:8448",
            "Upper.Example.test",
            Some("Upper.Example.test")
        )
    );
}

#[test]
fn step3_1_delegated_ip_literal() {
    let w = world_with(&["example.test"], |z| z);
    w.delegate("example.test", "42.42.42.42");
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::DelegatedIp);
    assert_eq!(
        dest(&r),
        (
            s("42.42.42.42"),
            s("42.42.42.42"),
            None,
            vec![(s("42.42.42.42"), 8448, vec![s("42.42.42.42")])]
        )
    );
    assert!(r.srv.is_empty());

    let w = world_with(&["example.test"], |z| z);
    w.delegate("example.test", "[2001:db8::42]:443");
    let r = resolve(&w, "example.test");
    assert_eq!(
        dest(&r),
        (
            s("[2001:db8::42]:443"),
            s("2001:db8::42"),
            None,
            vec![(s("2001:db8::42"), 443, vec![s("2001:db8::42")])]
        )
    );
}

/// A world whose zone maps each of `hosts` to the world's own address.
fn world_with(hosts: &[&str], extra: impl FnOnce(Zone) -> Zone) -> World {
    let w = World::new(Zone::new());
    let mut z = Zone::new();
    for h in hosts {
        z = z.a(h, w.ip);
    }
    w.dns.zone().replace(extra(z)).unwrap();
    w
}

#[test]
fn step3_2_delegated_port_is_kept_in_host_header_and_skips_srv() {
    let w = world_with(&["example.test"], |z| {
        z.a("matrix.example.test", Ipv4Addr::new(127, 0, 0, 77))
            .srv(
                "_matrix-fed._tcp.matrix.example.test",
                1,
                1,
                9999,
                "fed.other.test",
            )
    });
    w.delegate("example.test", "matrix.example.test:4242");
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::DelegatedPort);
    assert_eq!(
        dest(&r),
        (
            s("matrix.example.test:4242"),
            s("matrix.example.test"),
            Some(s("matrix.example.test")),
            vec![(s("matrix.example.test"), 4242, vec![s("127.0.0.77")])]
        )
    );
    assert!(r.srv.is_empty());
    assert_eq!(
        w.dns
            .query_count("_matrix-fed._tcp.matrix.example.test", RecordType::SRV),
        0
    );
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.outcome(), WellKnownOutcome::Delegated);
}

#[test]
fn step3_3_srv_port_never_reaches_host_header_and_srv_target_never_reaches_tls_name() {
    let w = world_with(&["example.test"], |z| {
        z.srv(
            "_matrix-fed._tcp.matrix.example.test",
            10,
            5,
            443,
            "fed.other.test",
        )
        .srv(
            "_matrix._tcp.matrix.example.test",
            10,
            5,
            1111,
            "legacy.other.test",
        )
        .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 5))
        .aaaa("fed.other.test", "2001:db8::5".parse().unwrap())
    });
    w.delegate("example.test", "matrix.example.test");
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::DelegatedSrv);
    assert_eq!(
        dest(&r),
        (
            s("matrix.example.test"),
            s("matrix.example.test"),
            Some(s("matrix.example.test")),
            vec![(
                s("fed.other.test"),
                443,
                vec![s("2001:db8::5"), s("127.0.0.5")]
            )]
        )
    );
    assert_eq!(srv_names(&r), ["_matrix-fed._tcp.matrix.example.test"]);
    assert_eq!(
        w.dns
            .query_count("_matrix._tcp.matrix.example.test", RecordType::SRV),
        0,
        "no legacy lookup when _matrix-fed has records"
    );
    // No second .well-known lookup on the delegated name.
    assert!(
        w.well_known_requests().iter().all(|r| r
            .host
            .as_deref()
            .unwrap_or("")
            .starts_with("example.test"))
    );
}

#[test]
fn step3_4_legacy_srv_only_when_matrix_fed_has_no_records() {
    let w = world_with(&["example.test"], |z| {
        z.srv(
            "_matrix._tcp.matrix.example.test",
            10,
            5,
            8443,
            "fed.other.test",
        )
        .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 6))
    });
    w.delegate("example.test", "matrix.example.test");
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::DelegatedLegacySrv);
    assert_eq!(dest(&r).0, "matrix.example.test");
    assert_eq!(
        dest(&r).3,
        vec![(s("fed.other.test"), 8443, vec![s("127.0.0.6")])]
    );
    assert_eq!(
        srv_names(&r),
        [
            "_matrix-fed._tcp.matrix.example.test",
            "_matrix._tcp.matrix.example.test"
        ]
    );
    assert_eq!(r.srv[0].outcome, SrvOutcome::Nxdomain);
    assert_eq!(r.srv[1].outcome, SrvOutcome::Found);
}

#[test]
fn step3_5_delegated_host_on_8448_when_no_srv() {
    let w = world_with(&["example.test"], |z| {
        z.a("matrix.example.test", Ipv4Addr::new(127, 0, 0, 7))
    });
    w.delegate("example.test", "matrix.example.test");
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::DelegatedDefault);
    assert_eq!(
        dest(&r),
        (
            s("matrix.example.test"),
            s("matrix.example.test"),
            Some(s("matrix.example.test")),
            vec![(s("matrix.example.test"), 8448, vec![s("127.0.0.7")])]
        )
    );
    assert_eq!(srv_names(&r).len(), 2);
}

#[test]
fn step4_srv_after_failed_well_known_uses_hostname_for_host_and_tls() {
    let w = world_with(&["example.test"], |z| {
        z.srv(
            "_matrix-fed._tcp.example.test",
            10,
            5,
            8443,
            "fed.other.test",
        )
        .srv(
            "_matrix._tcp.example.test",
            10,
            5,
            1111,
            "legacy.other.test",
        )
        .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 8))
    });
    // No .well-known route: 404.
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::Srv);
    assert_eq!(
        dest(&r),
        (
            s("example.test"),
            s("example.test"),
            Some(s("example.test")),
            vec![(s("fed.other.test"), 8443, vec![s("127.0.0.8")])]
        )
    );
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.outcome(), WellKnownOutcome::NotFound);
    assert_eq!(wk.status, Some(404));
    assert_eq!(srv_names(&r), ["_matrix-fed._tcp.example.test"]);
}

#[test]
fn step5_legacy_srv_for_hostname() {
    let w = world_with(&["example.test"], |z| {
        z.srv("_matrix._tcp.example.test", 10, 5, 8444, "fed.other.test")
            .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 8))
    });
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::LegacySrv);
    assert_eq!(dest(&r).0, "example.test");
    assert_eq!(
        dest(&r).3,
        vec![(s("fed.other.test"), 8444, vec![s("127.0.0.8")])]
    );
    assert_eq!(
        srv_names(&r),
        ["_matrix-fed._tcp.example.test", "_matrix._tcp.example.test"]
    );
}

#[test]
fn step6_hostname_on_8448_when_nothing_else() {
    let w = world_with(&["example.test"], |z| z);
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::Default);
    assert_eq!(
        dest(&r),
        (
            s("example.test"),
            s("example.test"),
            Some(s("example.test")),
            vec![(s("example.test"), 8448, vec![w.ip.to_string()])]
        )
    );
}

#[test]
fn srv_no_fallback_to_legacy_or_8448_when_matrix_fed_targets_have_no_address() {
    let w = world_with(&["example.test"], |z| {
        z.srv(
            "_matrix-fed._tcp.example.test",
            10,
            5,
            8443,
            "gone.other.test",
        )
        .srv("_matrix._tcp.example.test", 10, 5, 1111, "fed.other.test")
        .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 8))
    });
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::Srv);
    assert!(
        matches!(r.outcome, Err(ResolveError::NoAddresses { .. })),
        "{:?}",
        r.outcome
    );
    assert_eq!(
        w.dns
            .query_count("_matrix._tcp.example.test", RecordType::SRV),
        0
    );
}

#[test]
fn srv_target_dot_means_unavailable_and_does_not_fall_back() {
    let w = world_with(&["example.test"], |z| {
        z.srv("_matrix-fed._tcp.example.test", 0, 0, 0, ".")
    });
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::Srv);
    assert_eq!(
        r.outcome,
        Err(ResolveError::SrvUnavailable {
            name: s("_matrix-fed._tcp.example.test")
        })
    );
    assert_eq!(r.srv[0].outcome, SrvOutcome::Unavailable);
    let j = r.to_json();
    assert_eq!(j["step"], "4");
    assert!(j["host_header"].is_null() && j["tls_name"].is_null() && j["sni"].is_null());
    assert_eq!(j["targets"], serde_json::json!([]));
    assert!(j["error"].as_str().unwrap().contains("unavailable"));
}

#[test]
fn srv_servfail_is_an_error_not_a_silent_8448() {
    let w = world_with(&["example.test"], |z| {
        z.servfail("_matrix-fed._tcp.example.test")
    });
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::Srv);
    assert!(
        matches!(&r.outcome, Err(ResolveError::Dns(e)) if e.to_string().contains("SERVFAIL")),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.srv[0].outcome, SrvOutcome::Error);
    assert_eq!(
        w.dns
            .query_count("_matrix._tcp.example.test", RecordType::SRV),
        0,
        "an error is not 'no records'"
    );
}

#[test]
fn srv_refused_is_an_error() {
    let w = world_with(&["example.test"], |z| {
        z.refused("_matrix-fed._tcp.example.test")
    });
    let r = resolve(&w, "example.test");
    assert!(
        matches!(&r.outcome, Err(ResolveError::Dns(e)) if e.to_string().contains("REFUSED")),
        "{:?}",
        r.outcome
    );
}

#[test]
fn srv_timeout_is_an_error_within_the_bound() {
    let w = world_with(&["example.test"], |z| {
        z.timeout("_matrix-fed._tcp.example.test")
    });
    let start = std::time::Instant::now();
    let r = resolve(&w, "example.test");
    assert!(
        matches!(&r.outcome, Err(ResolveError::Dns(e)) if e.to_string().contains("timeout")),
        "{:?}",
        r.outcome
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn srv_records_in_rfc2782_priority_order() {
    let w = world_with(&["example.test"], |z| {
        z.srv("_matrix-fed._tcp.example.test", 20, 0, 8444, "b.other.test")
            .srv("_matrix-fed._tcp.example.test", 10, 0, 8443, "a.other.test")
            .srv("_matrix-fed._tcp.example.test", 30, 0, 8445, "c.other.test")
            .a("a.other.test", Ipv4Addr::new(127, 0, 0, 11))
            .a("b.other.test", Ipv4Addr::new(127, 0, 0, 12))
            .a("c.other.test", Ipv4Addr::new(127, 0, 0, 13))
    });
    let r = resolve(&w, "example.test");
    let ports: Vec<u16> = dest(&r).3.iter().map(|t| t.1).collect();
    assert_eq!(ports, [8443, 8444, 8445]);
    let prios: Vec<u16> = r.srv[0].records.iter().map(|r| r.priority).collect();
    assert_eq!(prios, [10, 20, 30]);
}

#[test]
fn srv_target_cname_is_followed_and_recorded() {
    let w = world_with(&["example.test"], |z| {
        z.srv(
            "_matrix-fed._tcp.example.test",
            10,
            0,
            8443,
            "alias.other.test",
        )
        .cname("alias.other.test", "real.other.test")
        .a("real.other.test", Ipv4Addr::new(127, 0, 0, 14))
    });
    let r = resolve(&w, "example.test");
    let d = r.destination().unwrap();
    assert_eq!(
        d.targets[0].addrs,
        vec!["127.0.0.14".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(d.targets[0].cname.as_deref(), Some("real.other.test"));
    assert!(r.trace.iter().any(|t| t.message.contains("RFC 2782")));
}

#[test]
fn idna_names_pass_through_as_a_labels() {
    let w = world_with(&["xn--bcher-kva.test"], |z| {
        z.srv(
            "_matrix-fed._tcp.xn--bcher-kva.test",
            10,
            0,
            8443,
            "xn--trget-3qa.test",
        )
        .a("xn--trget-3qa.test", Ipv4Addr::new(127, 0, 0, 15))
    });
    let r = resolve(&w, "xn--bcher-kva.test");
    assert_eq!(dest(&r).0, "xn--bcher-kva.test");
    assert_eq!(dest(&r).2.as_deref(), Some("xn--bcher-kva.test"));
    assert_eq!(dest(&r).3[0].0, "xn--trget-3qa.test");
}

#[test]
fn nxdomain_and_nodata_are_told_apart() {
    let w = world_with(&["example.test"], |z| {
        z.txt("_matrix-fed._tcp.example.test", "not an srv")
    });
    let r = resolve(&w, "example.test");
    assert_eq!(r.srv[0].outcome, SrvOutcome::Nodata);
    assert_eq!(r.srv[1].outcome, SrvOutcome::Nxdomain);
}

#[test]
fn no_address_for_hostname_fails_step6() {
    let w = World::new(Zone::new());
    let r = resolve(&w, "missing.test");
    assert_eq!(r.step, Step::Default);
    assert!(
        matches!(r.outcome, Err(ResolveError::NoAddresses { .. })),
        "{:?}",
        r.outcome
    );
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.outcome(), WellKnownOutcome::Error);
}

#[test]
fn json_object_matches_the_contract() {
    let w = world_with(&["example.test"], |z| {
        z.srv(
            "_matrix-fed._tcp.matrix.example.test",
            10,
            5,
            443,
            "fed.other.test",
        )
        .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 5))
        .aaaa("fed.other.test", "2001:db8::5".parse().unwrap())
    });
    w.serve(
        "example.test",
        WK,
        Scripted::json(serde_json::json!({"m.server": "matrix.example.test"}))
            .header("Cache-Control", "max-age=3600"),
    );
    let r = resolve(&w, "example.test");
    let j = r.to_json();
    let port = w.https.addr().port();
    assert_eq!(
        j,
        serde_json::json!({
            "server_name": "example.test",
            "step": "3.3",
            "well_known": {"url": format!("https://example.test:{port}/.well-known/matrix/server"),
                            "outcome": "delegated", "status": 200,
                            "m.server": "matrix.example.test", "redirects": [],
                            "cache_seconds": 3600, "error": null},
            "srv": [{"name": "_matrix-fed._tcp.matrix.example.test", "outcome": "found",
                     "records": [{"priority": 10, "weight": 5, "port": 443, "target": "fed.other.test"}], "error": null}],
            "host_header": "matrix.example.test",
            "tls_name": "matrix.example.test",
            "sni": "matrix.example.test",
            "targets": [{"host": "fed.other.test", "port": 443, "addrs": ["2001:db8::5", "127.0.0.5"]}],
            "error": null
        })
    );
}
