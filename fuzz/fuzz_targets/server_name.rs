//! `ServerName::parse` on arbitrary text: it never panics, and whatever it
//! accepts round-trips exactly.
#![no_main]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use homeport_core::{DnsName, Host, ServerName};
use libfuzzer_sys::fuzz_target;

fn hash_of(n: &ServerName) -> u64 {
    let mut h = DefaultHasher::new();
    n.hash(&mut h);
    h.finish()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = ServerName::parse(input) else {
        return;
    };

    // Display and as_str give back the input exactly.
    assert_eq!(name.to_string(), input, "Display differs from the input");
    assert_eq!(name.as_str(), input);

    // Re-parsing the displayed form succeeds and is equal (and hashes equal).
    let again = ServerName::parse(&name.to_string())
        .unwrap_or_else(|e| panic!("re-parse of {input:?} failed: {e}"));
    assert_eq!(again, name, "re-parse of {input:?} differs");
    assert_eq!(again.host(), name.host());
    assert_eq!(again.port(), name.port());
    assert_eq!(hash_of(&again), hash_of(&name));

    // host_str + ":" + port text reconstructs the input.
    let host = name.host_str();
    match name.port() {
        None => assert_eq!(host, input, "no port, but host_str is not the whole input"),
        Some(port) => {
            let rest = input
                .strip_prefix(host)
                .and_then(|r| r.strip_prefix(':'))
                .unwrap_or_else(|| panic!("{input:?} is not host_str {host:?} + ':' + port"));
            assert!(
                !rest.is_empty() && rest.len() <= 5 && rest.bytes().all(|b| b.is_ascii_digit()),
                "port text {rest:?} of {input:?} is not 1-5 digits"
            );
            assert_eq!(
                rest.parse::<u16>().ok(),
                Some(port),
                "port text {rest:?} != {port}"
            );
            assert_ne!(port, 0);
            assert_eq!(format!("{host}:{rest}"), input);
            if !rest.starts_with('0') {
                assert_eq!(format!("{host}:{port}"), input);
            }
        }
    }

    // The host kind agrees with the host text.
    let bare = name.host_unbracketed();
    match name.host() {
        Host::Ipv6(addr) => {
            assert_eq!(format!("[{bare}]"), host);
            assert_eq!(bare.parse::<Ipv6Addr>().ok(), Some(*addr));
            assert!(name.is_ip_literal());
        }
        Host::Ipv4(addr) => {
            assert_eq!(bare, host);
            assert_eq!(host.parse::<Ipv4Addr>().ok(), Some(*addr));
            assert!(name.is_ip_literal());
        }
        Host::Dns(dns) => {
            assert_eq!(bare, host);
            assert_eq!(dns.as_str(), host);
            assert!(!name.is_ip_literal());
            assert!(host.len() <= 255);
            assert!(
                host.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            );
            let d = DnsName::parse(host).unwrap_or_else(|e| {
                panic!("host {host:?} of {input:?} rejected by DnsName::parse: {e}")
            });
            assert_eq!(&d, dns);
        }
    }

    // The lower-cased name is the same server name.
    let lower = ServerName::parse(&name.to_lowercase())
        .unwrap_or_else(|e| panic!("lower-cased {input:?} failed to parse: {e}"));
    assert_eq!(lower, name);
    assert_eq!(hash_of(&lower), hash_of(&name));
});
