//! The DNS peer, checked with real clients: raw UDP/TCP queries encoded
//! with hickory-proto, and hickory-resolver itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use homeport_test_support::{DnsServer, Failure, Protocol, Zone, next_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn request(name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.metadata.recursion_desired = true;
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        m.set_edns(edns);
    }
    m
}

/// One UDP query; `None` if no answer within `wait`.
async fn udp_query_within(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    edns_payload: Option<u16>,
    wait: Duration,
) -> Option<(Message, usize)> {
    let socket = UdpSocket::bind((server.ip(), 0)).await.unwrap();
    let req = request(name, rtype, edns_payload);
    socket
        .send_to(&req.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, from) = timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    assert_eq!(from, server);
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.id, req.id);
    Some((reply, len))
}

async fn udp_query(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    udp_query_within(server, name, rtype, None, WAIT)
        .await
        .expect("no UDP answer")
        .0
}

async fn tcp_send(stream: &mut TcpStream, req: &Message) {
    let bytes = req.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
}

async fn tcp_recv(stream: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

async fn tcp_query(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    timeout(WAIT, async {
        let mut stream = TcpStream::connect(server).await.unwrap();
        let req = request(name, rtype, None);
        tcp_send(&mut stream, &req).await;
        let reply = tcp_recv(&mut stream).await;
        assert_eq!(reply.id, req.id);
        reply
    })
    .await
    .expect("no TCP answer")
}

fn resolver(server: SocketAddr) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 1;
    builder.build().unwrap()
}

fn start(zone: Zone) -> DnsServer {
    DnsServer::start(IpAddr::V4(next_loopback()), zone).unwrap()
}

#[tokio::test]
async fn udp_and_tcp_share_one_port_and_answer_a_and_aaaa() {
    let v4 = Ipv4Addr::new(127, 0, 0, 42);
    let v6 = Ipv6Addr::LOCALHOST;
    let dns = start(Zone::new().a("host.test", v4).aaaa("host.test", v6));
    for reply in [
        udp_query(dns.addr(), "host.test.", RecordType::A).await,
        tcp_query(dns.addr(), "host.test.", RecordType::A).await,
    ] {
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert!(reply.authoritative);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].data, RData::A(v4.into()));
    }
    let reply = udp_query(dns.addr(), "host.test.", RecordType::AAAA).await;
    assert_eq!(reply.answers[0].data, RData::AAAA(v6.into()));
    assert_eq!(dns.query_count("host.test", RecordType::A), 2);
    assert_eq!(
        dns.query_count_on("host.test.", RecordType::A, Protocol::Tcp),
        1
    );
}

#[tokio::test]
async fn names_match_case_insensitively_with_or_without_trailing_dot() {
    let ip = Ipv4Addr::new(127, 0, 0, 43);
    let dns = start(Zone::new().a("Mixed.Case.TEST.", ip));
    let reply = udp_query(dns.addr(), "mixed.CASE.test.", RecordType::A).await;
    assert_eq!(reply.answers.len(), 1);
    // The owner name echoes the query's spelling.
    assert_eq!(reply.answers[0].name.to_ascii(), "mixed.CASE.test.");
    assert_eq!(dns.query_count("MIXED.case.test.", RecordType::A), 1);
}

#[tokio::test]
async fn srv_records_and_the_dot_target() {
    let dns = start(
        Zone::new()
            .ttl(60)
            .srv(
                "_matrix-fed._tcp.example.test",
                10,
                5,
                8448,
                "fed.example.test",
            )
            .srv(
                "_matrix-fed._tcp.example.test",
                20,
                0,
                443,
                "backup.example.test.",
            )
            .srv("_matrix-fed._tcp.none.test", 0, 0, 0, "."),
    );
    let reply = udp_query(
        dns.addr(),
        "_matrix-fed._tcp.example.test.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    let srvs: Vec<_> = reply
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(srv) => {
                assert_eq!(r.ttl, 60);
                (srv.priority, srv.weight, srv.port, srv.target.to_ascii())
            }
            other => panic!("not SRV: {other:?}"),
        })
        .collect();
    assert_eq!(
        srvs,
        vec![
            (10, 5, 8448, "fed.example.test.".to_owned()),
            (20, 0, 443, "backup.example.test.".to_owned()),
        ]
    );
    let reply = udp_query(dns.addr(), "_matrix-fed._tcp.none.test.", RecordType::SRV).await;
    match &reply.answers[0].data {
        RData::SRV(srv) => assert!(srv.target.is_root()),
        other => panic!("not SRV: {other:?}"),
    }
}

#[tokio::test]
async fn nxdomain_for_unknown_names_nodata_for_other_types() {
    let dns = start(
        Zone::new()
            .soa_minimum(17)
            .a("only-a.test", Ipv4Addr::new(127, 0, 0, 44))
            .srv("_matrix-fed._tcp.deep.test", 1, 1, 1, "x.test"),
    );
    // NODATA: the name exists with another type.
    let reply = udp_query(dns.addr(), "only-a.test.", RecordType::AAAA).await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert!(reply.authoritative);
    let soa = &reply.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.ttl, 17);
    match &soa.data {
        RData::SOA(soa) => assert_eq!(soa.minimum, 17),
        other => panic!("{other:?}"),
    }
    // An empty non-terminal exists too: NODATA.
    let reply = udp_query(dns.addr(), "_tcp.deep.test.", RecordType::SRV).await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    // NXDOMAIN: nothing at all at that name.
    let reply = udp_query(dns.addr(), "missing.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    assert!(reply.authoritative);
    assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn hickory_resolver_sees_nxdomain_and_nodata_with_negative_ttl() {
    let dns = start(Zone::new().a("only-a.test", Ipv4Addr::new(127, 0, 0, 45)));
    let resolver = resolver(dns.addr());
    let err = timeout(WAIT, resolver.lookup("missing.test.", RecordType::A))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    let err = timeout(WAIT, resolver.lookup("only-a.test.", RecordType::AAAA))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    // Negative answers are cached: asking again does not reach the server.
    let _ = resolver.lookup("missing.test.", RecordType::A).await;
    assert_eq!(dns.query_count("missing.test", RecordType::A), 1);
}

#[tokio::test]
async fn servfail_and_refused() {
    let dns = start(
        Zone::new()
            .a("broken.test", Ipv4Addr::new(127, 0, 0, 46))
            .servfail("broken.test")
            .refused("refused.test")
            .fail(
                "aaaa-only-fails.test",
                Some(RecordType::AAAA),
                Failure::ServFail,
            )
            .a("aaaa-only-fails.test", Ipv4Addr::new(127, 0, 0, 46)),
    );
    let reply = udp_query(dns.addr(), "broken.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
    let reply = tcp_query(dns.addr(), "refused.test.", RecordType::SRV).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    let reply = udp_query(dns.addr(), "aaaa-only-fails.test.", RecordType::AAAA).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    let reply = udp_query(dns.addr(), "aaaa-only-fails.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
}

#[tokio::test]
async fn timeout_names_are_never_answered_over_udp_or_tcp() {
    let dns = start(
        Zone::new()
            .timeout("slow.test")
            .a("fast.test", Ipv4Addr::new(127, 0, 0, 47)),
    );
    let wait = Duration::from_millis(300);
    assert!(
        udp_query_within(dns.addr(), "slow.test.", RecordType::A, None, wait)
            .await
            .is_none()
    );
    // Over TCP: no answer for the timed-out name, but the same connection
    // still answers the next query.
    let mut stream = TcpStream::connect(dns.addr()).await.unwrap();
    tcp_send(&mut stream, &request("slow.test.", RecordType::A, None)).await;
    let fast = request("fast.test.", RecordType::A, None);
    tcp_send(&mut stream, &fast).await;
    let reply = timeout(WAIT, tcp_recv(&mut stream)).await.unwrap();
    assert_eq!(reply.id, fast.id);
    assert!(
        timeout(wait, tcp_recv(&mut stream)).await.is_err(),
        "timed-out name was answered"
    );
    assert_eq!(dns.query_count("slow.test", RecordType::A), 2);
    // hickory-resolver gives up with a timeout.
    let err = timeout(
        WAIT,
        resolver(dns.addr()).lookup("slow.test.", RecordType::A),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(!err.is_no_records_found(), "{err:?}");
}

#[tokio::test]
async fn cname_is_chased_within_the_zone() {
    let ip = Ipv4Addr::new(127, 0, 0, 48);
    let dns = start(
        Zone::new()
            .cname("alias.test", "middle.test")
            .cname("middle.test", "target.test")
            .a("target.test", ip)
            .cname("outside.test", "elsewhere.invalid"),
    );
    let reply = udp_query(dns.addr(), "alias.test.", RecordType::A).await;
    let types: Vec<_> = reply.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        types,
        vec![RecordType::CNAME, RecordType::CNAME, RecordType::A]
    );
    assert_eq!(reply.answers[2].name.to_ascii(), "target.test.");
    let reply = udp_query(dns.addr(), "alias.test.", RecordType::CNAME).await;
    assert_eq!(reply.answers.len(), 1);
    let addrs: Vec<IpAddr> = resolver(dns.addr())
        .lookup_ip("alias.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(addrs, vec![IpAddr::V4(ip)]);
}

/// SRV targets are never compressed, so 2000 records only fit one TCP
/// message with short targets (`t1999.b.` is 9 bytes on the wire).
fn big_srv_zone(n: u16) -> Zone {
    let mut zone = Zone::new();
    for i in 0..n {
        zone = zone.srv("_matrix-fed._tcp.big.test", 10, 1, 8448, &format!("t{i}.b"));
    }
    zone
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    let dns = start(big_srv_zone(2000));
    let name = "_matrix-fed._tcp.big.test.";
    // Without EDNS the UDP limit is 512 bytes.
    let (reply, len) = udp_query_within(dns.addr(), name, RecordType::SRV, None, WAIT)
        .await
        .unwrap();
    assert!(reply.truncation);
    assert!(reply.answers.is_empty());
    assert!(len <= 512);
    // With EDNS 4096 it is still too large.
    let (reply, len) = udp_query_within(dns.addr(), name, RecordType::SRV, Some(4096), WAIT)
        .await
        .unwrap();
    assert!(reply.truncation);
    assert!(len <= 4096);
    let reply = tcp_query(dns.addr(), name, RecordType::SRV).await;
    assert!(!reply.truncation);
    assert_eq!(reply.answers.len(), 2000);
}

#[tokio::test]
async fn answers_too_large_even_for_tcp_are_partial_with_tc_set() {
    let mut zone = Zone::new();
    for i in 0..2000 {
        zone = zone.srv(
            "_matrix-fed._tcp.huge.test",
            10,
            1,
            8448,
            &format!("target-{i}.huge.test"),
        );
    }
    let dns = start(zone);
    let reply = tcp_query(dns.addr(), "_matrix-fed._tcp.huge.test.", RecordType::SRV).await;
    assert!(reply.truncation);
    assert!(!reply.answers.is_empty() && reply.answers.len() < 2000);
}

#[tokio::test]
async fn answers_fit_the_advertised_edns_size() {
    let dns = start(big_srv_zone(40));
    let name = "_matrix-fed._tcp.big.test.";
    let (reply, len) = udp_query_within(dns.addr(), name, RecordType::SRV, None, WAIT)
        .await
        .unwrap();
    assert!(reply.truncation, "{len} bytes");
    let (reply, len) = udp_query_within(dns.addr(), name, RecordType::SRV, Some(4096), WAIT)
        .await
        .unwrap();
    assert!(!reply.truncation);
    assert!(len > 512);
    assert_eq!(reply.answers.len(), 40);
}

#[tokio::test]
async fn hickory_resolver_retries_truncated_answers_over_tcp() {
    let dns = start(big_srv_zone(2000));
    let lookup = timeout(
        WAIT,
        resolver(dns.addr()).lookup("_matrix-fed._tcp.big.test.", RecordType::SRV),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(lookup.answers().len(), 2000);
    let protocols: Vec<_> = dns.queries().iter().map(|q| q.protocol).collect();
    assert_eq!(protocols, vec![Protocol::Udp, Protocol::Tcp]);
}

#[tokio::test]
async fn the_zone_can_change_while_running() {
    let dns = start(
        Zone::new()
            .ttl(0)
            .a("moving.test", Ipv4Addr::new(127, 0, 0, 50)),
    );
    let reply = udp_query(dns.addr(), "moving.test.", RecordType::A).await;
    assert_eq!(
        reply.answers[0].data,
        RData::A(Ipv4Addr::new(127, 0, 0, 50).into())
    );
    dns.zone()
        .update(|z| {
            z.remove("moving.test")
                .a("moving.test", Ipv4Addr::new(127, 0, 0, 51))
        })
        .unwrap();
    let reply = udp_query(dns.addr(), "moving.test.", RecordType::A).await;
    assert_eq!(
        reply.answers[0].data,
        RData::A(Ipv4Addr::new(127, 0, 0, 51).into())
    );
    dns.zone().update(|z| z.servfail("moving.test")).unwrap();
    let reply = udp_query(dns.addr(), "moving.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    dns.zone().replace(Zone::new()).unwrap();
    let reply = udp_query(dns.addr(), "moving.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    assert_eq!(dns.query_count("moving.test", RecordType::A), 4);
    dns.clear_queries();
    assert!(dns.queries().is_empty());
}

#[tokio::test]
async fn a_resolver_cache_is_observable_through_the_query_log() {
    let dns = start(
        Zone::new()
            .ttl(3600)
            .a("cached.test", Ipv4Addr::new(127, 0, 0, 52)),
    );
    let resolver = resolver(dns.addr());
    for _ in 0..3 {
        resolver
            .lookup("cached.test.", RecordType::A)
            .await
            .unwrap();
    }
    assert_eq!(dns.query_count("cached.test", RecordType::A), 1);
}

#[tokio::test]
async fn names_outside_the_apex_are_refused() {
    let dns =
        start(Zone::with_apex("example.test").a("a.example.test", Ipv4Addr::new(127, 0, 0, 53)));
    let reply = udp_query(dns.addr(), "a.example.test.", RecordType::A).await;
    assert_eq!(reply.answers.len(), 1);
    let reply = udp_query(dns.addr(), "b.example.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    assert_eq!(reply.authorities[0].name.to_ascii(), "example.test.");
    let reply = udp_query(dns.addr(), "example.test.", RecordType::SOA).await;
    assert_eq!(reply.answers[0].record_type(), RecordType::SOA);
    let reply = udp_query(dns.addr(), "other.test.", RecordType::A).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert!(!reply.authoritative);
}

#[test]
fn invalid_names_fail_at_start() {
    let zone = Zone::new().a("bad..name", Ipv4Addr::LOCALHOST);
    let err = DnsServer::start(IpAddr::V4(next_loopback()), zone).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn stop_closes_the_sockets() {
    let dns = start(Zone::new());
    let addr = dns.addr();
    let started = Instant::now();
    dns.stop();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn ipv6_loopback_works_when_available() {
    let Ok(dns) = DnsServer::start(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        Zone::new().a("v6.test", Ipv4Addr::new(127, 0, 0, 54)),
    ) else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let reply = udp_query(dns.addr(), "v6.test.", RecordType::A).await;
    assert_eq!(reply.answers.len(), 1);
}
