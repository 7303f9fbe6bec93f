//! `.well-known` fetching and caching against a real HTTPS server: the
//! request as sent, redirects, loops, size caps, hostile servers, bad
//! certificates, and Synapse's cache rules driven by an injected clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use homeport_resolve::{Clock, ResolveError, Resolver, Step, WellKnownFailure, WellKnownOutcome};
use homeport_test_support::{Body, Handler, HttpsServer, Scripted, TestCa, Zone, next_loopback};

fn world() -> World {
    let w = World::new(Zone::new());
    let mut z = Zone::new();
    for h in ["example.test", "redirect.test", "matrix.example.test"] {
        z = z.a(h, w.ip);
    }
    w.dns
        .zone()
        .replace(z.a("fed.other.test", Ipv4Addr::new(127, 0, 0, 5)))
        .unwrap();
    w
}

#[test]
fn request_uses_lower_case_host_and_sni_and_get() {
    let w = world();
    w.delegate("example.test", "fed.other.test:443");
    let r = resolve(&w, "Example.TEST");
    assert_eq!(r.step, Step::DelegatedPort);
    let reqs = w.well_known_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].sni.as_deref(), Some("example.test"));
    let port = w.https.addr().port();
    assert_eq!(
        reqs[0].host.as_deref(),
        Some(format!("example.test:{port}").as_str())
    );
    assert_eq!(reqs[0].uri, WK);
    assert!(
        reqs[0]
            .header("user-agent")
            .unwrap()
            .starts_with("homeport/")
    );
}

#[test]
fn redirect_is_followed_and_listed() {
    let w = world();
    let port = w.https.addr().port();
    w.serve(
        "example.test",
        WK,
        Scripted::redirect(302, "/even_better_known"),
    );
    w.serve(
        "example.test",
        "/even_better_known",
        Scripted::redirect(301, &format!("https://redirect.test:{port}/final")),
    );
    w.serve(
        "redirect.test",
        "/final",
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"})),
    );
    let r = resolve(&w, "example.test");
    assert_eq!(r.step, Step::DelegatedPort, "{:#?}", r.trace);
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(
        wk.redirects,
        vec![
            format!("https://example.test:{port}/even_better_known"),
            format!("https://redirect.test:{port}/final")
        ]
    );
    let reqs = w.well_known_requests();
    assert!(
        w.https
            .requests()
            .iter()
            .any(|r| r.sni.as_deref() == Some("redirect.test") && r.uri == "/final")
    );
    assert_eq!(reqs.len(), 1);
}

#[test]
fn redirect_loop_is_an_error_reported_as_a_loop() {
    let w = world();
    w.serve("example.test", WK, Scripted::redirect(302, "/a"));
    w.serve(
        "example.test",
        "/a",
        Scripted::redirect(307, "/.well-known/matrix/server"),
    );
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.outcome(), WellKnownOutcome::Error);
    assert!(
        matches!(wk.result, Err(WellKnownFailure::RedirectLoop(_))),
        "{:?}",
        wk.result
    );
    assert!(wk.redirects.len() == 2);
    // Discovery goes on without delegation (step 6 here).
    assert_eq!(r.step, Step::Default);
}

#[test]
fn fifty_redirects_stop_after_twenty() {
    let w = world();
    let handler = Handler::new(|req| {
        let n: u32 = req.path().trim_start_matches("/r").parse().unwrap_or(0);
        Scripted::redirect(302, &format!("/r{}", n + 1))
    });
    w.https.set_handler(handler);
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.result, Err(WellKnownFailure::TooManyRedirects(20)));
    assert_eq!(wk.redirects.len(), 21);
    assert_eq!(
        w.https.request_count(),
        21,
        "the 22nd hop is never requested"
    );
}

#[test]
fn redirect_to_http_is_refused() {
    let w = world();
    w.serve(
        "example.test",
        WK,
        Scripted::redirect(302, "http://example.test/x"),
    );
    let r = resolve(&w, "example.test");
    assert!(matches!(
        r.well_known.as_ref().unwrap().result,
        Err(WellKnownFailure::NotHttps(_))
    ));
}

fn padded(total: usize) -> Bytes {
    let head = br#"{"m.server": "fed.other.test:443"}"#;
    let mut v = head.to_vec();
    v.resize(total, b' ');
    Bytes::from(v)
}

#[test]
fn body_of_51199_bytes_is_accepted_and_51200_rejected() {
    let w = world();
    w.serve("example.test", WK, Scripted::bytes(200, padded(51_199)));
    let r = resolve(&w, "example.test");
    assert_eq!(
        r.well_known.as_ref().unwrap().outcome(),
        WellKnownOutcome::Delegated
    );

    let w = world();
    w.serve("example.test", WK, Scripted::bytes(200, padded(51_200)));
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.result, Err(WellKnownFailure::TooLarge(51_200)));
    assert!(
        wk.result.as_ref().unwrap_err().is_temporary(),
        "oversize is a temporary failure"
    );
    assert_eq!(r.step, Step::Default);
}

#[test]
fn oversize_without_content_length_is_cut_off() {
    let w = world();
    w.serve(
        "example.test",
        WK,
        Scripted::new(200).with_body(Body::Slow {
            chunk: padded(30_000),
            every: Duration::from_millis(1),
            count: 3,
        }),
    );
    let r = resolve(&w, "example.test");
    assert_eq!(
        r.well_known.as_ref().unwrap().result,
        Err(WellKnownFailure::TooLarge(51_200))
    );
}

#[test]
fn endless_body_ends_at_the_cap() {
    let w = world();
    w.serve(
        "example.test",
        WK,
        Scripted::new(200).with_body(Body::Endless {
            chunk: Bytes::new(),
        }),
    );
    let start = Instant::now();
    let r = resolve(&w, "example.test");
    assert_eq!(
        r.well_known.as_ref().unwrap().result,
        Err(WellKnownFailure::TooLarge(51_200))
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn slowloris_well_known_ends_within_the_bound() {
    let mut w = world();
    w.cfg.well_known.timeout = Duration::from_millis(800);
    w.serve(
        "example.test",
        WK,
        Scripted::new(200).with_body(Body::Slow {
            chunk: Bytes::from_static(b" "),
            every: Duration::from_millis(200),
            count: 1000,
        }),
    );
    let start = Instant::now();
    let r = resolve(&w, "example.test");
    assert!(matches!(
        r.well_known.as_ref().unwrap().result,
        Err(WellKnownFailure::Timeout(_))
    ));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn headers_that_never_come_end_within_the_bound() {
    let mut w = world();
    w.cfg.well_known.timeout = Duration::from_millis(500);
    w.serve(
        "example.test",
        WK,
        Scripted::delay(Duration::from_secs(30), Scripted::ok()),
    );
    let start = Instant::now();
    let r = resolve(&w, "example.test");
    assert!(matches!(
        r.well_known.as_ref().unwrap().result,
        Err(WellKnownFailure::Timeout(_))
    ));
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[test]
fn invalid_documents_mean_no_delegation() {
    for (body, what) in [
        (&b"NOT JSON"[..], "not valid JSON"),
        (br#"{"m.server": ""}"#, "empty"),
        (br#"{"m.server": 5}"#, "not a string"),
        (br#"{"x": 1}"#, "no \"m.server\""),
        (br#"{"m.server": "bad name"}"#, "not a valid server name"),
    ] {
        let w = world();
        w.serve(
            "example.test",
            WK,
            Scripted::bytes(200, Bytes::copy_from_slice(body)),
        );
        let r = resolve(&w, "example.test");
        let wk = r.well_known.as_ref().unwrap();
        assert_eq!(wk.outcome(), WellKnownOutcome::Invalid, "{what}");
        assert!(
            wk.result.as_ref().unwrap_err().to_string().contains(what),
            "{what}: {:?}",
            wk.result
        );
        assert_eq!(r.step, Step::Default, "{what}");
    }
}

#[test]
fn server_errors_are_temporary_and_client_errors_permanent() {
    let w = world();
    w.serve("example.test", WK, Scripted::new(503));
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.outcome(), WellKnownOutcome::Error);
    assert_eq!(wk.status, Some(503));
    let w = world();
    w.serve("example.test", WK, Scripted::new(410));
    let r = resolve(&w, "example.test");
    assert_eq!(
        r.well_known.as_ref().unwrap().outcome(),
        WellKnownOutcome::NotFound
    );
}

#[test]
fn content_type_is_ignored() {
    let w = world();
    w.serve(
        "example.test",
        WK,
        Scripted::bytes(
            200,
            Bytes::from_static(br#"{"m.server":"fed.other.test:443"}"#),
        )
        .header("Content-Type", "text/html"),
    );
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert_eq!(wk.outcome(), WellKnownOutcome::Delegated);
    assert_eq!(wk.content_type.as_deref(), Some("text/html"));
}

#[test]
fn untrusted_or_wrong_certificate_is_a_temporary_failure_and_discovery_goes_on() {
    // A server whose certificate is from another CA.
    let ip = next_loopback();
    let other = TestCa::new("someone else").unwrap();
    let https = HttpsServer::start(
        (IpAddr::V4(ip), 0).into(),
        other.issue(&["example.test"]).unwrap(),
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"})),
    )
    .unwrap();
    let mut w = world();
    w.dns
        .zone()
        .update(|z| z.remove("example.test").a("example.test", ip))
        .unwrap();
    w.cfg.well_known.port = https.addr().port();
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert!(
        matches!(wk.result, Err(WellKnownFailure::Tls(_))),
        "{:?}",
        wk.result
    );
    assert_eq!(r.step, Step::Default);
    assert_eq!(https.request_count(), 0);

    // A certificate from the trusted CA but for another name.
    let w2 = world();
    let https2 = HttpsServer::start(
        (IpAddr::V4(ip), 0).into(),
        w2.ca.issue(&["other.test"]).unwrap(),
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"})),
    )
    .unwrap();
    let mut w2 = w2;
    w2.dns
        .zone()
        .update(|z| z.remove("example.test").a("example.test", ip))
        .unwrap();
    w2.cfg.well_known.port = https2.addr().port();
    let r = resolve(&w2, "example.test");
    assert!(matches!(
        r.well_known.as_ref().unwrap().result,
        Err(WellKnownFailure::Tls(_))
    ));
}

#[test]
fn connection_refused_is_a_temporary_failure() {
    let mut w = world();
    w.cfg.well_known.port = 1; // nothing listens there
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert!(
        matches!(wk.result, Err(WellKnownFailure::Connect(_))),
        "{:?}",
        wk.result
    );
}

// ---- caching (Synapse's test_well_known_cache and friends) ----

fn resolver(w: &World) -> Resolver {
    w.resolver()
}

fn wk_of(rt: &tokio::runtime::Runtime, r: &Resolver, n: &str) -> Arc<homeport_resolve::Resolution> {
    let n = name(n);
    rt.block_on(r.resolve_uncached(&n)).0.into()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn cache_respects_max_age_and_refetches_in_the_grace_period() {
    let w = world();
    let rt = runtime();
    let r = resolver(&w);
    w.serve(
        "example.test",
        WK,
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"}))
            .header("Cache-Control", "max-age=1000"),
    );
    let first = wk_of(&rt, &r, "example.test");
    assert_eq!(first.well_known.as_ref().unwrap().cache_seconds, 1000);
    assert_eq!(w.https.request_count(), 1);
    let again = wk_of(&rt, &r, "example.test");
    assert!(again.well_known.as_ref().unwrap().from_cache);
    assert_eq!(w.https.request_count(), 1, "served from cache");
    // 799 s: still before the last 20 %.
    w.clock.advance(Duration::from_secs(799));
    wk_of(&rt, &r, "example.test");
    assert_eq!(w.https.request_count(), 1);
    // 801 s: within the grace period, refetch.
    w.delegate("example.test", "other.test:443");
    w.clock.advance(Duration::from_secs(2));
    let refreshed = wk_of(&rt, &r, "example.test");
    assert_eq!(w.https.request_count(), 2);
    assert_eq!(
        refreshed
            .well_known
            .as_ref()
            .unwrap()
            .result
            .as_ref()
            .unwrap()
            .as_str(),
        "other.test:443"
    );
}

#[test]
fn temporary_failure_keeps_serving_the_previous_result_with_retries() {
    let w = world();
    let rt = runtime();
    let r = resolver(&w);
    w.serve(
        "example.test",
        WK,
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"}))
            .header("Cache-Control", "max-age=1000"),
    );
    wk_of(&rt, &r, "example.test");
    w.clock.advance(Duration::from_secs(900));
    w.serve("example.test", WK, Scripted::new(502));
    let before = w.https.request_count();
    let res = wk_of(&rt, &r, "example.test");
    let wk = res.well_known.as_ref().unwrap();
    assert_eq!(wk.result.as_ref().unwrap().as_str(), "fed.other.test:443");
    assert_eq!(wk.stale_because, Some(WellKnownFailure::ServerError(502)));
    assert_eq!(
        w.https.request_count() - before,
        3,
        "three attempts when the name had a valid result"
    );
    assert_eq!(res.step, Step::DelegatedPort);
}

#[test]
fn permanent_failure_drops_the_previous_result() {
    let w = world();
    let rt = runtime();
    let r = resolver(&w);
    w.serve(
        "example.test",
        WK,
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"}))
            .header("Cache-Control", "max-age=1000"),
    );
    wk_of(&rt, &r, "example.test");
    w.clock.advance(Duration::from_secs(900));
    w.serve("example.test", WK, Scripted::not_found());
    let res = wk_of(&rt, &r, "example.test");
    assert_eq!(
        res.well_known.as_ref().unwrap().outcome(),
        WellKnownOutcome::NotFound
    );
    // Had a valid result recently: the failure is cached for ~2 minutes.
    let secs = res.well_known.as_ref().unwrap().cache_seconds;
    assert!((108..=132).contains(&secs), "{secs}");
}

#[test]
fn default_ttl_is_a_day_with_jitter_and_headers_are_clamped() {
    let cases: &[(Option<&str>, u64, u64)] = &[
        (None, 77_760, 95_040),
        (Some("max-age=10"), 300, 300),
        (Some("max-age=1000000000"), 172_800, 172_800),
        (Some("no-store"), 300, 300),
        (Some("max-age=0, private, must-revalidate"), 300, 300),
        (Some("foo, Max-Age = 3600, bar"), 3600, 3600),
    ];
    for (cc, lo, hi) in cases {
        let w = world();
        let mut resp = Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"}));
        if let Some(cc) = cc {
            resp = resp.header("Cache-Control", cc);
        }
        w.serve("example.test", WK, resp);
        let r = resolve(&w, "example.test");
        let secs = r.well_known.as_ref().unwrap().cache_seconds;
        assert!((*lo..=*hi).contains(&secs), "{cc:?}: {secs}");
    }
}

#[test]
fn expires_header_is_used_when_no_max_age() {
    let w = world();
    let when = w.clock.wall() + Duration::from_secs(7200);
    let date = httpdate(when);
    w.serve(
        "example.test",
        WK,
        Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"}))
            .header("Expires", &date),
    );
    let r = resolve(&w, "example.test");
    let secs = r.well_known.as_ref().unwrap().cache_seconds;
    assert!((7195..=7200).contains(&secs), "{secs}");
}

fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn failures_back_off_exponentially_up_to_an_hour() {
    let w = world();
    let rt = runtime();
    let r = resolver(&w);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let res = wk_of(&rt, &r, "example.test");
        let secs = res.well_known.as_ref().unwrap().cache_seconds;
        seen.push(secs);
        w.clock.advance(Duration::from_secs(secs + 1));
    }
    // 10 min, 20, 40, then the 1 h cap, each ±10 %.
    let expect = [600.0, 1200.0, 2400.0, 3600.0, 3600.0];
    for (got, want) in seen.iter().zip(expect) {
        let g = *got as f64;
        assert!(g >= want * 0.89 && g <= want * 1.11, "{seen:?}");
    }
    assert_eq!(w.https.request_count(), 5);
}

#[test]
fn failure_is_cached_so_no_refetch_within_its_ttl() {
    let w = world();
    let rt = runtime();
    let r = resolver(&w);
    wk_of(&rt, &r, "example.test");
    wk_of(&rt, &r, "example.test");
    w.clock.advance(Duration::from_secs(300));
    wk_of(&rt, &r, "example.test");
    assert_eq!(w.https.request_count(), 1);
}

#[test]
fn concurrent_lookups_of_one_name_share_one_fetch() {
    let w = world();
    w.serve(
        "example.test",
        WK,
        Scripted::delay(
            Duration::from_millis(300),
            Scripted::json(serde_json::json!({"m.server": "fed.other.test:443"})),
        ),
    );
    let r = resolver(&w);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..20 {
            let r = r.clone();
            handles.push(tokio::spawn(async move {
                r.resolve_uncached(&name("example.test")).await.0
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().step, Step::DelegatedPort);
        }
    });
    assert_eq!(w.https.request_count(), 1);
}

#[test]
fn resolution_cache_serves_repeat_lookups_without_network() {
    let w = world();
    w.delegate("example.test", "fed.other.test:443");
    let r = resolver(&w);
    let rt = runtime();
    let first = rt.block_on(r.resolve(&name("example.test")));
    assert!(!first.from_cache);
    let q = w.dns.queries().len();
    let second = rt.block_on(r.resolve(&name("example.test")));
    assert!(second.from_cache);
    assert_eq!(w.dns.queries().len(), q);
    assert_eq!(w.https.request_count(), 1);
    assert_eq!(second.destination(), first.destination());
}

#[test]
fn well_known_host_in_denied_range_is_refused() {
    let mut w = world();
    w.cfg.filter = homeport_resolve::AddressFilter::default_deny();
    w.delegate("example.test", "fed.other.test:443");
    let r = resolve(&w, "example.test");
    let wk = r.well_known.as_ref().unwrap();
    assert!(
        matches!(wk.result, Err(WellKnownFailure::Denied { .. })),
        "{:?}",
        wk.result
    );
    assert_eq!(w.https.request_count(), 0, "never dialled");
    // And the fallback target (127.0.0.x) is refused too.
    assert!(
        matches!(r.outcome, Err(ResolveError::Denied { .. })),
        "{:?}",
        r.outcome
    );
}
