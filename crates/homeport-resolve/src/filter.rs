//! Address filtering: refuse private and special-purpose ranges when
//! resolving on behalf of others (notary, tester), checked on every
//! resolved address, after unwrapping IPv4-mapped, IPv4-compatible and
//! NAT64 (64:ff9b::/96) forms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The ranges Synapse's default `ip_range_blacklist` names, which homeport
/// uses as its default deny list.
pub const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "0.0.0.0/8",
    "255.255.255.255/32",
    "::1/128",
    "::/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

/// A deny list with an allow list that overrides it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressFilter {
    /// Refused ranges.
    pub deny: Vec<IpNet>,
    /// Ranges allowed even when denied.
    pub allow: Vec<IpNet>,
}

/// A range that did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP range (expected e.g. 10.0.0.0/8 or fc00::/7)")]
pub struct BadRange(pub String);

/// Parse `a.b.c.d/n`, `x::/n`, or a bare address (a /32 or /128).
pub fn parse_range(s: &str) -> Result<IpNet, BadRange> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| BadRange(s.to_owned()))
}

impl AddressFilter {
    /// Nothing denied.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Synapse's default deny list.
    pub fn default_deny() -> Self {
        AddressFilter {
            deny: DEFAULT_DENY
                .iter()
                .filter_map(|s| parse_range(s).ok())
                .collect(),
            allow: Vec::new(),
        }
    }

    /// True when nothing is denied.
    pub fn is_open(&self) -> bool {
        self.deny.is_empty()
    }

    /// The range that denies `ip`, if any (after unwrapping embedded IPv4).
    pub fn denied_by(&self, ip: IpAddr) -> Option<IpNet> {
        if self.deny.is_empty() {
            return None;
        }
        let candidates = [Some(ip), embedded_v4(ip).map(IpAddr::V4)];
        for c in candidates.into_iter().flatten() {
            if self.allow.iter().any(|n| n.contains(&c)) {
                continue;
            }
            if let Some(n) = self.deny.iter().find(|n| n.contains(&c)) {
                return Some(*n);
            }
        }
        None
    }

    /// True when `ip` may be dialled.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.denied_by(ip).is_none()
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) address.
pub fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    if s[..6] == [0, 0, 0, 0, 0, 0] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_list_blocks_special_ranges() {
        let f = AddressFilter::default_deny();
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "0.0.0.0",
            "224.0.0.1",
            "ff02::1",
            "::",
        ] {
            assert!(!f.permits(ip(a)), "{a} should be denied");
        }
        for a in ["8.8.8.8", "2606:4700::1", "1.1.1.1"] {
            assert!(f.permits(ip(a)), "{a} should be allowed");
        }
    }

    #[test]
    fn embedded_forms_are_unwrapped() {
        let f = AddressFilter::default_deny();
        for a in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(!f.permits(ip(a)), "{a} should be denied");
        }
        assert!(f.permits(ip("64:ff9b::808:808")));
        assert_eq!(embedded_v4(ip("::1")), None);
    }

    #[test]
    fn allow_list_overrides() {
        let mut f = AddressFilter::default_deny();
        f.allow.push(parse_range("127.0.0.0/24").unwrap());
        assert!(f.permits(ip("127.0.0.5")));
        assert!(f.permits(ip("::ffff:127.0.0.5")));
        assert!(!f.permits(ip("127.0.1.5")));
        assert!(AddressFilter::allow_all().permits(ip("127.0.0.1")));
    }

    #[test]
    fn ranges_parse_and_errors_say_what() {
        assert_eq!(parse_range("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_range("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_range("nope").unwrap_err().to_string(),
            "\"nope\" is not an IP range (expected e.g. 10.0.0.0/8 or fc00::/7)"
        );
    }
}
