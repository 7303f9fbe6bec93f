//! DNS behaviour of discovery against a real in-process DNS server: TTLs,
//! stale answers on failure, truncation, huge answers, silent servers, both
//! address families, and the address filter on every resolved address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use homeport_resolve::{AddressFilter, ResolveError, Resolver, ResolverConfig, Step, TrustConfig};
use homeport_test_support::{Protocol, RecordType, Zone, next_loopback};

fn srv_world(extra: impl FnOnce(Zone) -> Zone) -> World {
    let w = World::new(Zone::new());
    let z = Zone::new().ttl(300).a("example.test", w.ip);
    w.dns.zone().replace(extra(z)).unwrap();
    w
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn srv_answers_are_cached_for_their_ttl() {
    let w = srv_world(|z| {
        z.ttl(120)
            .srv(
                "_matrix-fed._tcp.example.test",
                10,
                0,
                8443,
                "fed.other.test",
            )
            .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 8))
    });
    let r = w.resolver();
    let rt = rt();
    let n = name("example.test");
    rt.block_on(r.resolve_uncached(&n));
    rt.block_on(r.resolve_uncached(&n));
    assert_eq!(
        w.dns
            .query_count("_matrix-fed._tcp.example.test", RecordType::SRV),
        1
    );
    w.clock.advance(Duration::from_secs(121));
    rt.block_on(r.resolve_uncached(&n));
    assert_eq!(
        w.dns
            .query_count("_matrix-fed._tcp.example.test", RecordType::SRV),
        2
    );
}

#[test]
fn negative_answers_are_cached_for_the_soa_minimum() {
    let w = srv_world(|z| z.soa_minimum(60));
    let r = w.resolver();
    let rt = rt();
    let n = name("example.test");
    rt.block_on(r.resolve_uncached(&n));
    rt.block_on(r.resolve_uncached(&n));
    assert_eq!(
        w.dns
            .query_count("_matrix-fed._tcp.example.test", RecordType::SRV),
        1
    );
    w.clock.advance(Duration::from_secs(61));
    rt.block_on(r.resolve_uncached(&n));
    assert_eq!(
        w.dns
            .query_count("_matrix-fed._tcp.example.test", RecordType::SRV),
        2
    );
}

#[test]
fn expired_srv_answer_is_served_when_dns_fails() {
    let w = srv_world(|z| {
        z.ttl(60)
            .srv(
                "_matrix-fed._tcp.example.test",
                10,
                0,
                8443,
                "fed.other.test",
            )
            .a("fed.other.test", Ipv4Addr::new(127, 0, 0, 8))
    });
    let r = w.resolver();
    let rt = rt();
    let n = name("example.test");
    let first = rt.block_on(r.resolve_uncached(&n)).0;
    assert_eq!(first.step, Step::Srv);
    w.clock.advance(Duration::from_secs(3600));
    w.dns
        .zone()
        .update(|z| {
            z.servfail("_matrix-fed._tcp.example.test")
                .servfail("fed.other.test")
        })
        .unwrap();
    let (again, valid_for) = rt.block_on(r.resolve_uncached(&n));
    assert_eq!(again.step, Step::Srv, "{:#?}", again.trace);
    assert_eq!(again.destination().unwrap().targets[0].port, 8443);
    assert!(again.srv[0].stale);
    assert!(
        valid_for.is_zero(),
        "a stale answer is not cached as a resolution"
    );
    assert!(
        again
            .trace
            .iter()
            .any(|t| t.message.contains("expired cached answer"))
    );
}

#[test]
fn both_address_families_are_returned_ipv6_first() {
    let w = srv_world(|z| {
        z.a("matrix.example.test", Ipv4Addr::new(127, 0, 0, 21))
            .aaaa("matrix.example.test", "2001:db8::21".parse().unwrap())
            .aaaa("matrix.example.test", "2001:db8::22".parse().unwrap())
    });
    let r = resolve(&w, "matrix.example.test:8448");
    let addrs = &dest(&r).3[0].2;
    assert_eq!(addrs, &["2001:db8::21", "2001:db8::22", "127.0.0.21"]);
}

#[test]
fn one_family_failing_still_resolves() {
    let w = srv_world(|z| {
        z.a("matrix.example.test", Ipv4Addr::new(127, 0, 0, 21))
            .fail(
                "matrix.example.test",
                Some(RecordType::AAAA),
                homeport_test_support::Failure::ServFail,
            )
    });
    let r = resolve(&w, "matrix.example.test:8448");
    assert_eq!(dest(&r).3[0].2, ["127.0.0.21"]);
    assert!(
        r.trace
            .iter()
            .any(|t| t.message.contains("SERVFAIL") && t.message.contains("other family"))
    );
}

#[test]
fn huge_srv_answer_via_truncation_keeps_at_most_srv_max_records() {
    let w = srv_world(|mut z| {
        for i in 0..2000u32 {
            z = z.srv(
                "_matrix-fed._tcp.example.test",
                (i % 50) as u16,
                1,
                8448,
                &format!("t{i}.b"),
            );
        }
        z.a("t0.b", Ipv4Addr::new(127, 0, 0, 31))
            .a("t50.b", Ipv4Addr::new(127, 0, 0, 32))
    });
    let start = Instant::now();
    let r = resolve(&w, "example.test");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        w.dns.query_count_on(
            "_matrix-fed._tcp.example.test",
            RecordType::SRV,
            Protocol::Tcp
        ),
        1,
        "retried over TCP after TC=1"
    );
    assert_eq!(r.srv[0].records.len(), 100, "srv_max_records");
    // 40 records per priority: priorities 0 and 1, and 20 of priority 2.
    assert!(
        r.srv[0].records.iter().all(|x| x.priority <= 2),
        "lowest priorities kept"
    );
    assert_eq!(
        r.srv[0].records.iter().filter(|x| x.priority == 0).count(),
        40
    );
    assert!(r.trace.iter().any(|t| t.message.contains("kept 100 of")));
    // Only t0.b (priority 0) and t50.b (priority 0) resolve among those kept.
    let d = r.destination().unwrap();
    assert!(
        d.targets
            .iter()
            .all(|t| t.host == "t0.b" || t.host == "t50.b"),
        "{:?}",
        d.targets
    );
}

#[test]
fn a_dns_server_that_never_answers_fails_within_the_bound() {
    let w = World::new(
        Zone::new()
            .timeout("example.test")
            .timeout("_matrix-fed._tcp.example.test"),
    );
    let start = Instant::now();
    let r = resolve(&w, "example.test");
    assert!(r.outcome.is_err());
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn nothing_listening_on_the_nameserver_port_is_an_error_not_a_hang() {
    let ip = next_loopback();
    let mut cfg = ResolverConfig::default();
    // A port nothing listens on.
    let sock = std::net::UdpSocket::bind((ip, 0)).unwrap();
    let port = sock.local_addr().unwrap().port();
    drop(sock);
    cfg.dns.nameservers = vec![SocketAddr::new(IpAddr::V4(ip), port)];
    cfg.dns.timeout = Duration::from_millis(300);
    cfg.dns.attempts = 1;
    cfg.trust = TrustConfig::only(vec![
        homeport_test_support::TestCa::new("x").unwrap().cert_der(),
    ]);
    cfg.timeout = Duration::from_secs(5);
    let r = Resolver::new(cfg).unwrap();
    let start = Instant::now();
    let res = block_on(async move { r.resolve(&name("example.test:8448")).await });
    assert!(
        matches!(res.outcome, Err(ResolveError::Dns(_))),
        "{:?}",
        res.outcome
    );
    assert!(start.elapsed() < Duration::from_secs(6));
}

#[test]
fn filter_refuses_literals_and_resolved_addresses() {
    let mut w = srv_world(|z| {
        z.srv(
            "_matrix-fed._tcp.example.test",
            10,
            0,
            8443,
            "fed.other.test",
        )
        .a("fed.other.test", Ipv4Addr::new(10, 1, 2, 3))
        .a("public.test", Ipv4Addr::new(93, 184, 216, 34))
    });
    w.cfg.filter = AddressFilter::default_deny();
    for literal in [
        "127.0.0.1",
        "[::1]:8448",
        "[::ffff:127.0.0.1]",
        "10.0.0.1:443",
    ] {
        let r = resolve(&w, literal);
        assert!(
            matches!(r.outcome, Err(ResolveError::Denied { .. })),
            "{literal}: {:?}",
            r.outcome
        );
    }
    let r = resolve(&w, "example.test");
    assert!(
        matches!(r.outcome, Err(ResolveError::Denied { .. })),
        "{:?}",
        r.outcome
    );
    // An allowed public address passes (never dialled: resolution only).
    let r = resolve(&w, "public.test:8448");
    assert_eq!(dest(&r).3[0].2, ["93.184.216.34"]);
    // And the allow list overrides the deny list.
    w.cfg
        .filter
        .allow
        .push(homeport_resolve::filter::parse_range("10.0.0.0/8").unwrap());
    let r = resolve(&w, "example.test");
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
}

#[test]
fn address_ttl_is_respected() {
    let w = srv_world(|z| {
        z.ttl(30)
            .a("matrix.example.test", Ipv4Addr::new(127, 0, 0, 41))
    });
    let r = w.resolver();
    let rt = rt();
    let n = name("matrix.example.test:8448");
    rt.block_on(r.resolve(&n));
    rt.block_on(r.resolve(&n));
    assert_eq!(w.dns.query_count("matrix.example.test", RecordType::A), 1);
    w.dns
        .zone()
        .update(|z| {
            z.remove("matrix.example.test")
                .a("matrix.example.test", Ipv4Addr::new(127, 0, 0, 42))
        })
        .unwrap();
    w.clock.advance(Duration::from_secs(31));
    let again = rt.block_on(r.resolve(&n));
    assert_eq!(
        again.destination().unwrap().targets[0].addrs,
        vec!["127.0.0.42".parse::<IpAddr>().unwrap()]
    );
}
