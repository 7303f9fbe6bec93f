//! Matrix server names, parsed once at the edge.
//!
//! Grammar (Matrix spec, appendix "Server Name"):
//!
//! ```text
//! server_name = hostname [ ":" port ]
//! port        = 1*5DIGIT                      ; 1..=65535
//! hostname    = IPv4address / "[" IPv6address "]" / dns-name
//! dns-name    = 1*255dns-char                 ; DIGIT / ALPHA / "-" / "."
//! ```
//!
//! homeport is stricter than the bare grammar in three places, as Synapse is:
//! empty labels (`a..b`, a leading or trailing dot) are rejected, a label may
//! not exceed 63 characters (DNS cannot carry it), and a dotted quad of
//! digits must be a valid IPv4 address (`300.1.1.1` is an error, not a DNS
//! name).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The longest hostname the grammar allows.
pub const MAX_HOSTNAME_LEN: usize = 255;
/// The spec asks servers to keep the whole name under this length.
pub const RECOMMENDED_MAX_LEN: usize = 230;

/// The host part of a server name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 literal (`203.0.113.5`).
    Ipv4(Ipv4Addr),
    /// An IPv6 literal, written in brackets in the name (`[2001:db8::1]`).
    Ipv6(Ipv6Addr),
    /// A DNS name, as given (case kept).
    Dns(DnsName),
}

impl Host {
    /// The IP address when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ipv4(a) => Some(IpAddr::V4(*a)),
            Host::Ipv6(a) => Some(IpAddr::V6(*a)),
            Host::Dns(_) => None,
        }
    }

    /// The DNS name, when the host is one.
    pub fn dns(&self) -> Option<&DnsName> {
        match self {
            Host::Dns(d) => Some(d),
            _ => None,
        }
    }
}

/// A validated DNS name (ASCII letters, digits, `-` and `.`; case kept).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(Box<str>);

impl DnsName {
    /// The name exactly as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lower-cased form used for DNS and `.well-known` lookups.
    pub fn to_lowercase(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// Parse a bare DNS name (no port, no brackets), for example an SRV
    /// target with its trailing dot removed.
    pub fn parse(s: &str) -> Result<Self, ServerNameError> {
        validate_dns_name(s, 0)?;
        Ok(DnsName(s.into()))
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed server name: host plus optional port, with the original text kept
/// so that `Display` (and so the Host header) round-trips exactly.
#[derive(Clone, Debug)]
pub struct ServerName {
    text: Box<str>,
    host: Host,
    port: Option<u16>,
    /// Length of the host part of `text` (brackets included for IPv6).
    host_len: usize,
}

impl ServerName {
    /// Parse a server name. See the module docs for the grammar.
    pub fn parse(s: &str) -> Result<Self, ServerNameError> {
        parse(s)
    }

    /// The name exactly as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The explicit port, if one was written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host part exactly as written (IPv6 with its brackets).
    pub fn host_str(&self) -> &str {
        &self.text[..self.host_len]
    }

    /// The host without IPv6 brackets: the form used for DNS lookups,
    /// certificate names and `targets[].host`.
    pub fn host_unbracketed(&self) -> &str {
        match self.host {
            Host::Ipv6(_) => &self.text[1..self.host_len - 1],
            _ => &self.text[..self.host_len],
        }
    }

    /// The whole name lower-cased, for cache keys and lookups.
    pub fn to_lowercase(&self) -> String {
        self.text.to_ascii_lowercase()
    }

    /// True when the host is an IP literal.
    pub fn is_ip_literal(&self) -> bool {
        !matches!(self.host, Host::Dns(_))
    }

    /// True when the name is longer than the spec recommends (230).
    pub fn is_longer_than_recommended(&self) -> bool {
        self.text.len() > RECOMMENDED_MAX_LEN
    }
}

impl PartialEq for ServerName {
    /// Names compare as DNS does: case-insensitively, and with the exact
    /// port text (`:08448` and `:8448` name the same port but a different
    /// Host header; they compare equal here because the parsed port is used).
    fn eq(&self, other: &Self) -> bool {
        self.port == other.port && host_eq(&self.host, &other.host)
    }
}
impl Eq for ServerName {}

fn host_eq(a: &Host, b: &Host) -> bool {
    match (a, b) {
        (Host::Dns(x), Host::Dns(y)) => x.0.eq_ignore_ascii_case(&y.0),
        (x, y) => x == y,
    }
}

impl Hash for ServerName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.port.hash(state);
        match &self.host {
            Host::Dns(d) => {
                for b in d.0.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
            }
            other => other.hash(state),
        }
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ServerName {
    type Err = ServerNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl serde::Serialize for ServerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for ServerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which part of a server name an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole name.
    Name,
    /// The hostname.
    Host,
    /// The port after the last `:`.
    Port,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Name => "server name",
            Part::Host => "hostname",
            Part::Port => "port",
        })
    }
}

/// Why a server name is invalid. Positions are 0-based byte offsets into the
/// input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerNameError {
    /// Nothing to parse.
    #[error("{part} is empty")]
    Empty {
        /// Which part is empty.
        part: Part,
    },
    /// A character that the grammar does not allow there.
    #[error("invalid character {ch:?} in {part} at position {pos}")]
    InvalidChar {
        /// The character.
        ch: char,
        /// Where it is.
        pos: usize,
        /// In which part.
        part: Part,
    },
    /// A non-ASCII character in a DNS name.
    #[error(
        "non-ASCII character {ch:?} at position {pos}: internationalised names must be written in A-label form (xn--...)"
    )]
    ULabel {
        /// The character.
        ch: char,
        /// Where it is.
        pos: usize,
    },
    /// The port is not 1 to 5 digits.
    #[error("port {text:?} must be 1 to 5 decimal digits")]
    BadPort {
        /// The port as written.
        text: String,
    },
    /// The port does not fit 1..=65535.
    #[error("port {text} is out of range (1-65535)")]
    PortOutOfRange {
        /// The port as written.
        text: String,
    },
    /// `[` without `]`.
    #[error("IPv6 literal opened at position 0 has no closing ']'")]
    UnclosedBracket,
    /// Something other than `:port` after `]`.
    #[error("unexpected {ch:?} at position {pos} after the IPv6 literal (expected ':' and a port)")]
    AfterBracket {
        /// The character.
        ch: char,
        /// Where it is.
        pos: usize,
    },
    /// The text in brackets is not an IPv6 address.
    #[error("{text:?} is not a valid IPv6 address")]
    BadIpv6 {
        /// The text inside the brackets.
        text: String,
    },
    /// An IPv6 address written without brackets.
    #[error("IPv6 literal {text:?} must be written in brackets, e.g. [{text}]")]
    UnbracketedIpv6 {
        /// The name as given.
        text: String,
    },
    /// A dotted quad of digits that is not an IPv4 address.
    #[error("{text:?} looks like an IPv4 address but is not a valid one")]
    BadIpv4 {
        /// The host as given.
        text: String,
    },
    /// An empty label (`a..b`, leading or trailing dot).
    #[error("empty label at position {pos} (a leading, trailing or doubled '.')")]
    EmptyLabel {
        /// Where it is.
        pos: usize,
    },
    /// A label over 63 characters.
    #[error("label at position {pos} is {len} characters long; DNS allows at most 63")]
    LabelTooLong {
        /// Where it starts.
        pos: usize,
        /// Its length.
        len: usize,
    },
    /// Hostname over 255 characters.
    #[error("hostname is {len} characters long; at most 255 are allowed")]
    TooLong {
        /// The length.
        len: usize,
    },
}

fn parse(s: &str) -> Result<ServerName, ServerNameError> {
    if s.is_empty() {
        return Err(ServerNameError::Empty { part: Part::Name });
    }
    let (host, host_len, port_text) = if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']').ok_or(ServerNameError::UnclosedBracket)?;
        let inner = &rest[..close];
        if inner.is_empty() {
            return Err(ServerNameError::Empty { part: Part::Host });
        }
        if inner.len() > 39 {
            return Err(ServerNameError::BadIpv6 { text: inner.into() });
        }
        for (i, ch) in inner.char_indices() {
            if !(ch.is_ascii_hexdigit() || ch == ':' || ch == '.') {
                return Err(ServerNameError::InvalidChar {
                    ch,
                    pos: i + 1,
                    part: Part::Host,
                });
            }
        }
        let addr = Ipv6Addr::from_str(inner)
            .map_err(|_| ServerNameError::BadIpv6 { text: inner.into() })?;
        let host_len = close + 2;
        let after = &s[host_len..];
        let port_text = match after.chars().next() {
            None => None,
            Some(':') => Some(&after[1..]),
            Some(ch) => return Err(ServerNameError::AfterBracket { ch, pos: host_len }),
        };
        (Host::Ipv6(addr), host_len, port_text)
    } else {
        let (host_text, port_text) = match s.rfind(':') {
            Some(i) => {
                if s[..i].contains(':') {
                    return Err(ServerNameError::UnbracketedIpv6 { text: s.into() });
                }
                (&s[..i], Some(&s[i + 1..]))
            }
            None => (s, None),
        };
        if host_text.is_empty() {
            return Err(ServerNameError::Empty { part: Part::Host });
        }
        (parse_host(host_text)?, host_text.len(), port_text)
    };
    let port = match port_text {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    Ok(ServerName {
        text: s.into(),
        host,
        port,
        host_len,
    })
}

fn parse_port(p: &str) -> Result<u16, ServerNameError> {
    if p.is_empty() {
        return Err(ServerNameError::Empty { part: Part::Port });
    }
    if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ServerNameError::BadPort { text: p.into() });
    }
    // At most 5 digits: fits u32.
    let n: u32 = p
        .bytes()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    match u16::try_from(n) {
        Ok(v) if v != 0 => Ok(v),
        _ => Err(ServerNameError::PortOutOfRange { text: p.into() }),
    }
}

fn parse_host(h: &str) -> Result<Host, ServerNameError> {
    // A dotted quad of digits is an IPv4address by the grammar.
    let looks_ipv4 = h.split('.').count() == 4
        && h.split('.')
            .all(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()));
    if looks_ipv4 {
        return Ipv4Addr::from_str(h)
            .map(Host::Ipv4)
            .map_err(|_| ServerNameError::BadIpv4 { text: h.into() });
    }
    validate_dns_name(h, 0)?;
    Ok(Host::Dns(DnsName(h.into())))
}

fn validate_dns_name(h: &str, offset: usize) -> Result<(), ServerNameError> {
    if h.is_empty() {
        return Err(ServerNameError::Empty { part: Part::Host });
    }
    for (i, ch) in h.char_indices() {
        if !ch.is_ascii() {
            return Err(ServerNameError::ULabel {
                ch,
                pos: offset + i,
            });
        }
        if !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '.') {
            return Err(ServerNameError::InvalidChar {
                ch,
                pos: offset + i,
                part: Part::Host,
            });
        }
    }
    if h.len() > MAX_HOSTNAME_LEN {
        return Err(ServerNameError::TooLong { len: h.len() });
    }
    let mut pos = offset;
    for label in h.split('.') {
        if label.is_empty() {
            return Err(ServerNameError::EmptyLabel { pos });
        }
        if label.len() > 63 {
            return Err(ServerNameError::LabelTooLong {
                pos,
                len: label.len(),
            });
        }
        pos += label.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ServerName {
        ServerName::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }
    fn err(s: &str) -> ServerNameError {
        match ServerName::parse(s) {
            Ok(n) => panic!("{s:?} should not parse, got {n:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn grammar_rows_parse() {
        let cases: &[(&str, &str, Option<u16>)] = &[
            ("matrix.org", "matrix.org", None),
            ("matrix.org:8888", "matrix.org", Some(8888)),
            ("1.2.3.4", "1.2.3.4", None),
            ("1.2.3.4:1234", "1.2.3.4", Some(1234)),
            ("[1234:5678::abcd]", "[1234:5678::abcd]", None),
            ("[1234:5678::abcd]:5678", "[1234:5678::abcd]", Some(5678)),
            ("[::1]", "[::1]", None),
            ("[::ffff:1.2.3.4]:8448", "[::ffff:1.2.3.4]", Some(8448)),
            ("localhost", "localhost", None),
            ("a-b.c", "a-b.c", None),
            ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
            ("example.org:65535", "example.org", Some(65535)),
            ("example.org:1", "example.org", Some(1)),
            ("example.org:08448", "example.org", Some(8448)),
        ];
        for (input, host, port) in cases {
            let n = ok(input);
            assert_eq!(n.host_str(), *host, "{input}");
            assert_eq!(n.port(), *port, "{input}");
            assert_eq!(n.to_string(), *input, "display round-trips {input}");
        }
    }

    #[test]
    fn host_kinds() {
        assert_eq!(ok("1.2.3.4").host(), &Host::Ipv4(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(ok("[::1]:8448").host(), &Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(ok("[::1]:8448").host_unbracketed(), "::1");
        assert!(ok("[::1]").is_ip_literal());
        assert!(!ok("example.org").is_ip_literal());
        assert_eq!(
            ok("Example.ORG").host().dns().map(|d| d.as_str()),
            Some("Example.ORG")
        );
    }

    #[test]
    fn case_is_kept_and_lowercase_available() {
        let n = ok("MaTrix.Example.ORG:8448");
        assert_eq!(n.as_str(), "MaTrix.Example.ORG:8448");
        assert_eq!(n.to_lowercase(), "matrix.example.org:8448");
        assert_eq!(n, ok("matrix.example.org:8448"));
    }

    #[test]
    fn ports_out_of_range_and_malformed() {
        assert_eq!(
            err("example.org:0"),
            ServerNameError::PortOutOfRange { text: "0".into() }
        );
        assert_eq!(
            err("example.org:65536"),
            ServerNameError::PortOutOfRange {
                text: "65536".into()
            }
        );
        assert_eq!(
            err("example.org:123456"),
            ServerNameError::BadPort {
                text: "123456".into()
            }
        );
        assert_eq!(
            err("example.org:80a"),
            ServerNameError::BadPort { text: "80a".into() }
        );
        assert_eq!(
            err("example.org:"),
            ServerNameError::Empty { part: Part::Port }
        );
        assert_eq!(err("[::1]:"), ServerNameError::Empty { part: Part::Port });
        assert_eq!(
            err("[::1]:99999"),
            ServerNameError::PortOutOfRange {
                text: "99999".into()
            }
        );
    }

    #[test]
    fn empty_parts() {
        assert_eq!(err(""), ServerNameError::Empty { part: Part::Name });
        assert_eq!(err(":8448"), ServerNameError::Empty { part: Part::Host });
        assert_eq!(err("[]:8448"), ServerNameError::Empty { part: Part::Host });
    }

    #[test]
    fn ipv6_errors() {
        assert_eq!(err("[::1"), ServerNameError::UnclosedBracket);
        assert_eq!(err("[::1:8448"), ServerNameError::UnclosedBracket);
        assert_eq!(
            err("[::1]x"),
            ServerNameError::AfterBracket { ch: 'x', pos: 5 }
        );
        assert_eq!(
            err("[::g]"),
            ServerNameError::InvalidChar {
                ch: 'g',
                pos: 3,
                part: Part::Host
            }
        );
        assert_eq!(
            err("[1:2:3]"),
            ServerNameError::BadIpv6 {
                text: "1:2:3".into()
            }
        );
        assert_eq!(
            err("::1"),
            ServerNameError::UnbracketedIpv6 { text: "::1".into() }
        );
        assert_eq!(
            err("2001:db8::1:8448"),
            ServerNameError::UnbracketedIpv6 {
                text: "2001:db8::1:8448".into()
            }
        );
        assert!(matches!(
            err("[fe80::1%eth0]"),
            ServerNameError::InvalidChar { ch: '%', .. }
        ));
    }

    #[test]
    fn dns_name_errors() {
        assert_eq!(
            err("exa mple.org"),
            ServerNameError::InvalidChar {
                ch: ' ',
                pos: 3,
                part: Part::Host
            }
        );
        assert_eq!(
            err("under_score.org"),
            ServerNameError::InvalidChar {
                ch: '_',
                pos: 5,
                part: Part::Host
            }
        );
        assert_eq!(
            err("bücher.example"),
            ServerNameError::ULabel { ch: 'ü', pos: 1 }
        );
        assert_eq!(err("example.org."), ServerNameError::EmptyLabel { pos: 12 });
        assert_eq!(err(".example.org"), ServerNameError::EmptyLabel { pos: 0 });
        assert_eq!(err("a..b"), ServerNameError::EmptyLabel { pos: 2 });
        assert_eq!(
            err("300.1.1.1"),
            ServerNameError::BadIpv4 {
                text: "300.1.1.1".into()
            }
        );
        let long_label = format!("{}.org", "a".repeat(64));
        assert_eq!(
            err(&long_label),
            ServerNameError::LabelTooLong { pos: 0, len: 64 }
        );
    }

    #[test]
    fn length_limits() {
        // 4 labels of 63 + 3 dots = 255: the longest allowed.
        let label = "a".repeat(63);
        let max = [label.as_str(); 4].join(".");
        assert_eq!(max.len(), 255);
        let n = ok(&max);
        assert!(n.is_longer_than_recommended());
        let over = format!("{max}b");
        assert_eq!(err(&over), ServerNameError::TooLong { len: 256 });
        assert!(!ok("example.org").is_longer_than_recommended());
    }

    #[test]
    fn numeric_names_that_are_not_quads_are_dns_names() {
        assert!(matches!(ok("1.2.3").host(), Host::Dns(_)));
        assert!(matches!(ok("1.2.3.4.5").host(), Host::Dns(_)));
    }

    #[test]
    fn errors_display_what_and_where() {
        assert_eq!(
            err("exa mple.org").to_string(),
            "invalid character ' ' in hostname at position 3"
        );
        assert_eq!(
            err("example.org:65536").to_string(),
            "port 65536 is out of range (1-65535)"
        );
    }

    #[test]
    fn serde_round_trip() {
        let n: ServerName = serde_json::from_str("\"example.org:8448\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"example.org:8448\"");
        assert!(serde_json::from_str::<ServerName>("\"bad name\"").is_err());
    }
}
