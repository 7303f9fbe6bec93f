//! DNS lookups (hickory) with homeport's own TTL cache, so that record TTLs,
//! negative answers and stale-on-error follow the injected clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::cache::{Cached, SingleFlight, TtlCache};
use crate::clock::Clock;
use crate::srv::SrvRecord;

/// Why a DNS lookup failed (as opposed to answering "no such record").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsFailure {
    /// SERVFAIL.
    #[error("SERVFAIL for {name} {rtype}")]
    ServFail {
        /// Queried name.
        name: String,
        /// Record type.
        rtype: String,
    },
    /// REFUSED.
    #[error("REFUSED for {name} {rtype}")]
    Refused {
        /// Queried name.
        name: String,
        /// Record type.
        rtype: String,
    },
    /// No answer in time.
    #[error("no answer for {name} {rtype} in time (DNS timeout)")]
    Timeout {
        /// Queried name.
        name: String,
        /// Record type.
        rtype: String,
    },
    /// Anything else (unparsable name, network error, other rcode).
    #[error("DNS lookup of {name} {rtype} failed: {reason}")]
    Other {
        /// Queried name.
        name: String,
        /// Record type.
        rtype: String,
        /// Why.
        reason: String,
    },
}

/// Negative answer kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRecords {
    /// The name does not exist.
    NxDomain,
    /// The name exists, without records of this type.
    NoData,
}

/// An SRV answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SrvAnswer {
    /// Records: the `srv_max_records` of lowest priority, in priority order.
    Found {
        /// The records kept.
        records: Vec<SrvRecord>,
        /// How many the answer held.
        received: usize,
    },
    /// None.
    None(NoRecords),
}

/// An address answer: both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    /// AAAA results.
    pub v6: Vec<Ipv6Addr>,
    /// A results.
    pub v4: Vec<Ipv4Addr>,
    /// The canonical name when the queried name was a CNAME.
    pub cname: Option<String>,
    /// An error for one family while the other answered.
    pub partial_error: Option<DnsFailure>,
}

impl Addrs {
    /// IPv6 before IPv4, as the JSON contract orders them.
    pub fn all(&self) -> Vec<IpAddr> {
        self.v6
            .iter()
            .map(|a| IpAddr::V6(*a))
            .chain(self.v4.iter().map(|a| IpAddr::V4(*a)))
            .collect()
    }
}

/// A cached or fresh answer, and whether it was served stale.
#[derive(Clone, Debug)]
pub struct Answer<T> {
    /// The answer.
    pub value: T,
    /// True when DNS failed and an expired cached answer was used.
    pub stale: Option<DnsFailure>,
}

/// DNS settings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Nameservers to ask (`IP:PORT`); empty means the system configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Attempts per query.
    pub attempts: usize,
    /// SRV records kept per name (an answer may hold thousands).
    pub srv_max_records: usize,
    /// TTL used for negative answers without an SOA.
    pub negative_ttl: Duration,
    /// Upper bound on any TTL.
    pub max_ttl: Duration,
    /// How long an expired answer is kept for stale-on-error use.
    pub stale_for: Duration,
    /// Cache bound (entries).
    pub max_entries: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            srv_max_records: 100,
            negative_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            stale_for: Duration::from_secs(24 * 3600),
            max_entries: 10_000,
        }
    }
}

/// The record type and the lower-cased name in one shared string
/// (`"28|example.org"`): the cache's map and eviction queue, and the
/// in-flight table, hold the same allocation instead of a copy each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key(Arc<str>);

impl Key {
    fn new(name: &str, rtype: RecordType) -> Self {
        let mut s = u16::from(rtype).to_string();
        s.reserve_exact(name.len() + 1);
        s.push('|');
        s.extend(name.chars().map(|c| c.to_ascii_lowercase()));
        Key(s.into())
    }
}

#[derive(Clone, Debug)]
enum Entry {
    Srv(Arc<SrvAnswer>),
    Ip {
        ips: Arc<[IpAddr]>,
        cname: Option<Arc<str>>,
    },
    None(NoRecords),
}

type Fetched = Result<(Entry, Duration), DnsFailure>;

/// The DNS side of the resolver.
pub(crate) struct Dns {
    resolver: TokioResolver,
    cache: TtlCache<Key, Entry>,
    flight: SingleFlight<Key, Fetched>,
    cfg: DnsConfig,
    clock: Arc<dyn Clock>,
}

/// Building the hickory resolver failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up DNS: {0}")]
pub struct DnsSetupError(pub String);

impl Dns {
    pub(crate) fn new(cfg: DnsConfig, clock: Arc<dyn Clock>) -> Result<Self, DnsSetupError> {
        let mut builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsSetupError(e.to_string()))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        opts.edns0 = true;
        opts.ndots = 0;
        let resolver = builder.build().map_err(|e| DnsSetupError(e.to_string()))?;
        Ok(Dns {
            resolver,
            cache: TtlCache::new(cfg.max_entries),
            flight: SingleFlight::new(),
            cfg,
            clock,
        })
    }

    pub(crate) fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    async fn cached(&self, name: &str, rtype: RecordType) -> Result<Answer<Entry>, DnsFailure> {
        let key = Key::new(name, rtype);
        let stale = match self.cache.get(&key, self.clock.now()) {
            Cached::Fresh(e) => {
                return Ok(Answer {
                    value: e,
                    stale: None,
                });
            }
            Cached::Stale(e) => Some(e),
            Cached::Miss => None,
        };
        let fetched = self
            .flight
            .run(key.clone(), || self.query(name, rtype))
            .await;
        match fetched {
            Ok((entry, ttl)) => {
                let now = self.clock.now();
                let ttl = ttl.min(self.cfg.max_ttl);
                self.cache.insert(
                    key,
                    entry.clone(),
                    now + ttl,
                    now + ttl + self.cfg.stale_for,
                );
                Ok(Answer {
                    value: entry,
                    stale: None,
                })
            }
            Err(e) => match stale {
                Some(old) => Ok(Answer {
                    value: old,
                    stale: Some(e),
                }),
                None => Err(e),
            },
        }
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Fetched {
        let rt = rtype.to_string();
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        let qname = Name::from_ascii(&fqdn).map_err(|e| DnsFailure::Other {
            name: name.to_owned(),
            rtype: rt.clone(),
            reason: e.to_string(),
        })?;
        match self.resolver.lookup(qname, rtype).await {
            Ok(lookup) => {
                let mut ttl = u32::MAX;
                let mut srv = Vec::new();
                let mut ips = Vec::new();
                let mut cname = None;
                for r in lookup.answers() {
                    match &r.data {
                        RData::SRV(s) if rtype == RecordType::SRV => {
                            ttl = ttl.min(r.ttl);
                            srv.push(SrvRecord {
                                priority: s.priority,
                                weight: s.weight,
                                port: s.port,
                                target: trim_dot(&s.target.to_ascii()),
                            });
                        }
                        RData::A(a) if rtype == RecordType::A => {
                            ttl = ttl.min(r.ttl);
                            ips.push(IpAddr::V4(a.0));
                        }
                        RData::AAAA(a) if rtype == RecordType::AAAA => {
                            ttl = ttl.min(r.ttl);
                            ips.push(IpAddr::V6(a.0));
                        }
                        RData::CNAME(c) => {
                            ttl = ttl.min(r.ttl);
                            cname = Some(trim_dot(&c.0.to_ascii()));
                        }
                        _ => {}
                    }
                }
                let ttl = Duration::from_secs(u64::from(if ttl == u32::MAX { 0 } else { ttl }));
                let entry = if rtype == RecordType::SRV {
                    if srv.is_empty() {
                        Entry::None(NoRecords::NoData)
                    } else {
                        // An answer may hold thousands of records (a 64 KiB
                        // TCP response): keep the lowest priorities only.
                        let received = srv.len();
                        srv.sort_by_key(|r| r.priority);
                        srv.truncate(self.cfg.srv_max_records.max(1));
                        Entry::Srv(Arc::new(SrvAnswer::Found {
                            records: srv,
                            received,
                        }))
                    }
                } else if ips.is_empty() {
                    Entry::None(NoRecords::NoData)
                } else {
                    Entry::Ip {
                        ips: ips.into(),
                        cname: cname.map(Into::into),
                    }
                };
                Ok((entry, ttl))
            }
            Err(e) => classify(e, name, &rt, self.cfg.negative_ttl),
        }
    }

    /// SRV records for `name` (e.g. `_matrix-fed._tcp.example.org`).
    pub(crate) async fn srv(&self, name: &str) -> Result<Answer<SrvAnswer>, DnsFailure> {
        let a = self.cached(name, RecordType::SRV).await?;
        let value = match a.value {
            Entry::Srv(s) => (*s).clone(),
            Entry::None(n) => SrvAnswer::None(n),
            Entry::Ip { .. } => SrvAnswer::None(NoRecords::NoData),
        };
        Ok(Answer {
            value,
            stale: a.stale,
        })
    }

    /// AAAA and A for `host`, concurrently. Fails only when both fail (or
    /// one fails and the other has no records).
    pub(crate) async fn addrs(&self, host: &str) -> Result<Answer<Addrs>, DnsFailure> {
        let (v6, v4) = tokio::join!(
            self.cached(host, RecordType::AAAA),
            self.cached(host, RecordType::A)
        );
        let mut out = Addrs::default();
        let mut stale = None;
        let mut errors = Vec::new();
        for res in [v6, v4] {
            match res {
                Ok(a) => {
                    if a.stale.is_some() {
                        stale = a.stale;
                    }
                    if let Entry::Ip { ips, cname } = a.value {
                        for ip in ips.iter() {
                            match ip {
                                IpAddr::V6(x) => out.v6.push(*x),
                                IpAddr::V4(x) => out.v4.push(*x),
                            }
                        }
                        if out.cname.is_none() {
                            out.cname = cname.map(|c| c.to_string());
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if out.v6.is_empty() && out.v4.is_empty() {
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
        } else {
            out.partial_error = errors.into_iter().next();
        }
        Ok(Answer { value: out, stale })
    }

    /// Whether `host` exists at all (used to tell NXDOMAIN from NODATA for
    /// addresses): true when either family answered NODATA.
    pub(crate) async fn addr_negative_kind(&self, host: &str) -> Option<NoRecords> {
        let key = |t: RecordType| Key::new(host, t);
        let now = self.clock.now();
        let mut kind = None;
        for t in [RecordType::AAAA, RecordType::A] {
            if let Cached::Fresh(Entry::None(k)) | Cached::Stale(Entry::None(k)) =
                self.cache.get(&key(t), now)
                && (k == NoRecords::NoData || kind.is_none())
            {
                kind = Some(k);
            }
        }
        kind
    }
}

fn trim_dot(s: &str) -> String {
    if s == "." {
        return ".".to_owned();
    }
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

fn classify(e: NetError, name: &str, rtype: &str, default_negative: Duration) -> Fetched {
    let (n, r) = (name.to_owned(), rtype.to_owned());
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => {
            let kind = if no.response_code == ResponseCode::NXDomain {
                NoRecords::NxDomain
            } else {
                NoRecords::NoData
            };
            let ttl = no
                .negative_ttl
                .map(|t| Duration::from_secs(u64::from(t)))
                .unwrap_or(default_negative);
            Ok((Entry::None(kind), ttl))
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            Err(DnsFailure::ServFail { name: n, rtype: r })
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            Err(DnsFailure::Refused { name: n, rtype: r })
        }
        NetError::Timeout => Err(DnsFailure::Timeout { name: n, rtype: r }),
        other => {
            let reason = other.to_string();
            if reason.contains("timed out") {
                Err(DnsFailure::Timeout { name: n, rtype: r })
            } else if reason.contains("ServFail") || reason.contains("SERVFAIL") {
                Err(DnsFailure::ServFail { name: n, rtype: r })
            } else if reason.contains("Refused") || reason.contains("REFUSED") {
                Err(DnsFailure::Refused { name: n, rtype: r })
            } else {
                Err(DnsFailure::Other {
                    name: n,
                    rtype: r,
                    reason,
                })
            }
        }
    }
}
