//! An authoritative DNS server speaking the real protocol over UDP and TCP
//! (messages parsed and encoded with hickory-proto), answering from a
//! [`Zone`] that tests can change while it runs.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::background::{Background, runtime};

/// Default TTL of records (seconds) until [`Zone::ttl`] changes it.
const DEFAULT_TTL: u32 = 300;
/// Default SOA minimum, the negative-caching TTL (seconds).
const DEFAULT_SOA_MINIMUM: u32 = 30;
/// The UDP payload size this server advertises in its own OPT record.
const SERVER_UDP_PAYLOAD: u16 = 1232;
/// How many CNAMEs a lookup follows inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

/// A failure mode for a name, see [`Zone::fail`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Answer with RCODE SERVFAIL.
    ServFail,
    /// Answer with RCODE REFUSED.
    Refused,
    /// Never answer (neither over UDP nor TCP); the client times out.
    Timeout,
}

/// Transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// One query the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedQuery {
    /// The query name, lower-cased, without the trailing dot.
    pub name: String,
    /// The query type.
    pub rtype: RecordType,
    /// Transport it arrived on.
    pub protocol: Protocol,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Normalised owner name.
    name: String,
    ttl: u32,
    data: RData,
}

/// The records and failure modes a [`DnsServer`] answers from.
///
/// Names are matched case-insensitively and with or without a trailing dot.
/// A name with records of some other type answers NOERROR with an empty
/// answer (NODATA); a name with no records at all (and nothing below it)
/// answers NXDOMAIN. Negative answers carry the zone's SOA in the authority
/// section (TTL and minimum = [`Zone::soa_minimum`], default 30 s). Every
/// answer from the zone has the AA bit set. A query for another type at a
/// CNAME returns the CNAME and, when the target is in the zone, the
/// target's records (followed up to 8 hops).
///
/// Builder methods take and return `self`; to change a running server's
/// zone use [`DnsServer::zone`] and [`ZoneHandle::update`].
///
/// Invalid names are not reported by the builder methods: they are
/// collected and make [`DnsServer::start`] / [`ZoneHandle::replace`] fail
/// with `InvalidInput`.
///
/// Over UDP an answer larger than 512 bytes (or the EDNS payload size the
/// query advertised) is replaced by an empty reply with TC=1; over TCP the
/// full answer is sent, up to 65535 bytes. Beyond that the TCP reply holds
/// the records that fit, with TC=1 (hickory-resolver reports that as an
/// error).
///
/// A large answer set is just many calls. Owner names are compressed, but
/// SRV targets never are (RFC 2782), so each SRV record costs 18 bytes
/// plus its target's length on the wire: 2000 records fit one TCP message
/// only with targets of at most about 14 bytes, such as `t1999.b` (9
/// bytes):
/// ```
/// # use homeport_test_support::Zone;
/// let mut zone = Zone::new();
/// for i in 0..2000u16 {
///     zone = zone.srv("_matrix-fed._tcp.big.test", 10, 1, 8448, &format!("t{i}.b"));
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Zone {
    /// Normalised apex; "" is the root (authoritative for every name).
    apex: String,
    ttl: u32,
    soa_minimum: u32,
    records: Vec<Entry>,
    /// (name, type or None for every type) -> failure.
    failures: HashMap<(String, Option<RecordType>), Failure>,
    errors: Vec<String>,
}

impl Default for Zone {
    fn default() -> Self {
        Self::new()
    }
}

/// Lower-cases and strips the trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Parses a normalised name ("" = root) into an FQDN.
fn parse_name(normalized: &str) -> Result<Name, String> {
    if normalized.is_empty() {
        return Ok(Name::root());
    }
    Name::from_ascii(format!("{normalized}."))
        .map_err(|e| format!("invalid name {normalized:?}: {e}"))
}

impl Zone {
    /// An empty zone authoritative for every name (apex = the root).
    pub fn new() -> Self {
        Self {
            apex: String::new(),
            ttl: DEFAULT_TTL,
            soa_minimum: DEFAULT_SOA_MINIMUM,
            records: Vec::new(),
            failures: HashMap::new(),
            errors: Vec::new(),
        }
    }

    /// An empty zone authoritative only for `apex` and names below it;
    /// queries for other names answer REFUSED.
    pub fn with_apex(apex: &str) -> Self {
        let mut zone = Self::new();
        zone.apex = normalize(apex);
        if let Err(e) = parse_name(&zone.apex) {
            zone.errors.push(e);
        }
        zone
    }

    /// TTL (seconds) for records added after this call. Default 300.
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// The SOA minimum and SOA TTL (seconds), i.e. the negative-caching TTL
    /// of NXDOMAIN and NODATA answers. Default 30.
    pub fn soa_minimum(mut self, seconds: u32) -> Self {
        self.soa_minimum = seconds;
        self
    }

    /// Adds a record with the current TTL.
    pub fn record(self, name: &str, data: RData) -> Self {
        let ttl = self.ttl;
        self.record_ttl(name, ttl, data)
    }

    /// Adds a record with an explicit TTL.
    pub fn record_ttl(mut self, name: &str, ttl: u32, data: RData) -> Self {
        let name = normalize(name);
        if let Err(e) = parse_name(&name) {
            self.errors.push(e);
            return self;
        }
        self.records.push(Entry { name, ttl, data });
        self
    }

    /// Adds an A record.
    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.record(name, RData::A(A(ip)))
    }

    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.record(name, RData::AAAA(AAAA(ip)))
    }

    /// Adds an A or AAAA record, whichever `ip` is.
    pub fn ip(self, name: &str, ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => self.a(name, v4),
            IpAddr::V6(v6) => self.aaaa(name, v6),
        }
    }

    /// Adds a CNAME record.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        match parse_name(&normalize(target)) {
            Ok(target) => self.record(name, RData::CNAME(CNAME(target))),
            Err(e) => {
                self.errors.push(e);
                self
            }
        }
    }

    /// Adds an SRV record. `target` "." means "service not available".
    pub fn srv(mut self, name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Self {
        match parse_name(&normalize(target)) {
            Ok(target) => self.record(name, RData::SRV(SRV::new(priority, weight, port, target))),
            Err(e) => {
                self.errors.push(e);
                self
            }
        }
    }

    /// Adds a TXT record with one character-string.
    pub fn txt(self, name: &str, text: &str) -> Self {
        self.record(name, RData::TXT(TXT::new(vec![text.to_owned()])))
    }

    /// Makes queries for `name` (of type `rtype`, or of every type when
    /// `None`) fail in the given way. Takes precedence over records.
    pub fn fail(mut self, name: &str, rtype: Option<RecordType>, failure: Failure) -> Self {
        self.failures.insert((normalize(name), rtype), failure);
        self
    }

    /// Every query for `name` answers SERVFAIL.
    pub fn servfail(self, name: &str) -> Self {
        self.fail(name, None, Failure::ServFail)
    }

    /// Every query for `name` answers REFUSED.
    pub fn refused(self, name: &str) -> Self {
        self.fail(name, None, Failure::Refused)
    }

    /// Queries for `name` are never answered, over UDP or TCP.
    pub fn timeout(self, name: &str) -> Self {
        self.fail(name, None, Failure::Timeout)
    }

    /// Removes every record and failure mode of `name`.
    pub fn remove(mut self, name: &str) -> Self {
        let name = normalize(name);
        self.records.retain(|e| e.name != name);
        self.failures.retain(|(n, _), _| *n != name);
        self
    }

    /// Removes the records of one type at `name`.
    pub fn remove_type(mut self, name: &str, rtype: RecordType) -> Self {
        let name = normalize(name);
        self.records
            .retain(|e| !(e.name == name && e.data.record_type() == rtype));
        self
    }

    /// Removes the failure modes of `name` (all types).
    pub fn clear_failures(mut self, name: &str) -> Self {
        let name = normalize(name);
        self.failures.retain(|(n, _), _| *n != name);
        self
    }

    fn check(&self) -> io::Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                self.errors.join("; "),
            ))
        }
    }

    fn in_zone(&self, name: &str) -> bool {
        self.apex.is_empty()
            || name == self.apex
            || name
                .strip_suffix(self.apex.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// True when the name owns records, is the apex, or has names below it
    /// (an empty non-terminal).
    fn exists(&self, name: &str) -> bool {
        if name == self.apex {
            return true;
        }
        self.records.iter().any(|e| {
            e.name == name
                || e.name
                    .strip_suffix(name)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }

    fn failure(&self, name: &str, rtype: RecordType) -> Option<Failure> {
        self.failures
            .get(&(name.to_owned(), Some(rtype)))
            .or_else(|| self.failures.get(&(name.to_owned(), None)))
            .copied()
    }

    fn soa(&self) -> Option<Record> {
        let apex = parse_name(&self.apex).ok()?;
        let mname = apex.prepend_label("ns").ok()?;
        let rname = apex.prepend_label("hostmaster").ok()?;
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, self.soa_minimum);
        Some(Record::from_rdata(apex, self.soa_minimum, RData::SOA(soa)))
    }

    /// Builds the answer to `query`; `None` means "do not answer".
    fn answer(&self, request: &Message, query: &Query) -> Option<Message> {
        let qname = query.name();
        let qtype = query.query_type();
        let name = normalize(&qname.to_ascii());

        let mut response = Message::new(request.id, MessageType::Response, request.op_code);
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.add_query(query.clone());

        match self.failure(&name, qtype) {
            Some(Failure::Timeout) => return None,
            Some(Failure::ServFail) => {
                response.metadata.response_code = ResponseCode::ServFail;
                return Some(response);
            }
            Some(Failure::Refused) => {
                response.metadata.response_code = ResponseCode::Refused;
                return Some(response);
            }
            None => {}
        }
        if request.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return Some(response);
        }
        if !self.in_zone(&name) {
            response.metadata.response_code = ResponseCode::Refused;
            return Some(response);
        }
        response.metadata.authoritative = true;

        if qtype == RecordType::SOA && name == self.apex {
            if let Some(soa) = self.soa() {
                response.add_answer(soa);
            }
            return Some(response);
        }

        let mut current = name;
        let mut owner = qname.clone();
        let mut rcode = ResponseCode::NoError;
        let mut negative = false;
        for _ in 0..=MAX_CNAME_CHAIN {
            if !self.in_zone(&current) {
                // Chased out of the zone: the client resolves the rest.
                break;
            }
            let here: Vec<&Entry> = self.records.iter().filter(|e| e.name == current).collect();
            if here.is_empty() && !self.exists(&current) {
                rcode = ResponseCode::NXDomain;
                negative = true;
                break;
            }
            let matching: Vec<&&Entry> = here
                .iter()
                .filter(|e| qtype == RecordType::ANY || e.data.record_type() == qtype)
                .collect();
            if !matching.is_empty() {
                for e in matching {
                    response.add_answer(Record::from_rdata(owner.clone(), e.ttl, e.data.clone()));
                }
                break;
            }
            let cname = here.iter().find_map(|e| match &e.data {
                RData::CNAME(CNAME(target)) => Some((e.ttl, target.clone())),
                _ => None,
            });
            match cname {
                Some((ttl, target)) => {
                    response.add_answer(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    current = normalize(&target.to_ascii());
                    owner = target;
                }
                None => {
                    negative = true;
                    break;
                }
            }
        }
        response.metadata.response_code = rcode;
        if negative && let Some(soa) = self.soa() {
            response.add_authority(soa);
        }
        Some(response)
    }
}

/// A shared handle on a running server's [`Zone`].
#[derive(Clone, Debug)]
pub struct ZoneHandle(Arc<Mutex<Zone>>);

impl ZoneHandle {
    fn lock(&self) -> MutexGuard<'_, Zone> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the current zone.
    pub fn get(&self) -> Zone {
        self.lock().clone()
    }

    /// Replaces the zone. Fails (and keeps the old zone) if `zone` holds
    /// invalid names.
    pub fn replace(&self, zone: Zone) -> io::Result<()> {
        zone.check()?;
        *self.lock() = zone;
        Ok(())
    }

    /// Rewrites the zone with a builder chain, e.g.
    /// `handle.update(|z| z.remove("a.test").a("a.test", ip))`. Fails (and
    /// keeps the old zone) if the result holds invalid names.
    pub fn update(&self, f: impl FnOnce(Zone) -> Zone) -> io::Result<()> {
        let mut guard = self.lock();
        let new = f(guard.clone());
        new.check()?;
        *guard = new;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Log(Mutex<Vec<LoggedQuery>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<LoggedQuery>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Shared {
    zone: ZoneHandle,
    log: Log,
}

/// An authoritative DNS server on one loopback address, UDP and TCP on the
/// same (ephemeral) port. Stops when dropped.
///
/// ```
/// # use homeport_test_support::*;
/// # use std::net::Ipv4Addr;
/// # fn main() -> std::io::Result<()> {
/// let ip = next_loopback();
/// let dns = DnsServer::start(ip.into(), Zone::new().a("a.test", Ipv4Addr::new(127, 0, 0, 9)))?;
/// // point a resolver at dns.addr() (UDP and TCP) ...
/// assert_eq!(dns.query_count("a.test", RecordType::A), 0);
/// # Ok(())
/// # }
/// ```
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    background: Background,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds UDP on an ephemeral port of `ip` and TCP on the same port,
/// retrying with another port when TCP's is taken.
fn bind_pair(ip: IpAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind((ip, port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not bind UDP and TCP on one port")))
}

impl DnsServer {
    /// Starts a server on `ip` (UDP and TCP on the same ephemeral port)
    /// answering from `zone`. Returns once both sockets are bound.
    pub fn start(ip: IpAddr, zone: Zone) -> io::Result<DnsServer> {
        zone.check()?;
        let (udp, tcp) = bind_pair(ip)?;
        let addr = udp.local_addr()?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let runtime = runtime()?;
        let (udp, tcp) = {
            let _guard = runtime.enter();
            (UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?)
        };
        let shared = Arc::new(Shared {
            zone: ZoneHandle(Arc::new(Mutex::new(zone))),
            log: Log::default(),
        });
        let serve = {
            let shared = shared.clone();
            async move {
                tokio::spawn(tcp_loop(tcp, shared.clone()));
                udp_loop(udp, shared).await;
            }
        };
        let background = Background::spawn(format!("dns-{addr}"), runtime, serve)?;
        Ok(DnsServer {
            addr,
            shared,
            background,
        })
    }

    /// The address, for UDP and TCP alike.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to read or change the zone while the server runs.
    pub fn zone(&self) -> ZoneHandle {
        self.shared.zone.clone()
    }

    /// Every query received so far, in arrival order (including ones the
    /// server did not answer).
    pub fn queries(&self) -> Vec<LoggedQuery> {
        self.shared.log.lock().clone()
    }

    /// How many queries for `name` (any case, with or without trailing dot)
    /// and `rtype` arrived, over UDP and TCP together (a truncated UDP
    /// answer followed by the TCP retry counts 2).
    pub fn query_count(&self, name: &str, rtype: RecordType) -> usize {
        let name = normalize(name);
        self.shared
            .log
            .lock()
            .iter()
            .filter(|q| q.name == name && q.rtype == rtype)
            .count()
    }

    /// Like [`DnsServer::query_count`], for one transport.
    pub fn query_count_on(&self, name: &str, rtype: RecordType, protocol: Protocol) -> usize {
        let name = normalize(name);
        self.shared
            .log
            .lock()
            .iter()
            .filter(|q| q.name == name && q.rtype == rtype && q.protocol == protocol)
            .count()
    }

    /// Forgets the queries logged so far.
    pub fn clear_queries(&self) {
        self.shared.log.lock().clear();
    }

    /// Stops the server and waits until its sockets are closed.
    pub fn stop(mut self) {
        self.background.stop();
    }
}

/// Decodes a request, logs it and builds the encoded reply; `None` means
/// "send nothing". `limit` is the transport's size limit: UDP replies that
/// exceed it are replaced by an empty TC=1 reply.
fn handle(shared: &Shared, bytes: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            // Answer FORMERR if there is at least an id to answer to.
            let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if request.message_type != MessageType::Query {
        return None;
    }
    let Some(query) = request.queries.first().cloned() else {
        return Message::error_msg(request.id, request.op_code, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };
    shared.log.lock().push(LoggedQuery {
        name: normalize(&query.name().to_ascii()),
        rtype: query.query_type(),
        protocol,
    });
    let mut response = shared.zone.lock().answer(&request, &query)?;
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(SERVER_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    let limit = match protocol {
        Protocol::Udp => usize::from(request.max_payload()),
        Protocol::Tcp => usize::from(u16::MAX),
    };
    let servfail = |request: &Message| {
        let mut m = Message::error_msg(request.id, request.op_code, ResponseCode::ServFail);
        m.add_query(query.clone());
        m.to_vec().ok()
    };
    let encoded = match response.to_vec() {
        Ok(bytes) => bytes,
        Err(_) => return servfail(&request),
    };
    if encoded.len() <= limit && !tc_set(&encoded) {
        return Some(encoded);
    }
    // hickory-proto compresses only the first 120 names of a message, so a
    // large answer set may still fit when every owner name points at the
    // question.
    if let Some(compact) = compact_encode(&response)
        && compact.len() <= limit
    {
        return Some(compact);
    }
    match protocol {
        Protocol::Udp => {
            let mut truncated = response.truncate();
            truncated.metadata.truncation = true;
            truncated.to_vec().ok()
        }
        // Too large even for TCP: hickory-proto's encoding keeps the
        // records that fit and sets TC.
        Protocol::Tcp if encoded.len() <= limit => Some(encoded),
        Protocol::Tcp => servfail(&request),
    }
}

/// Whether an encoded message has the TC bit set.
fn tc_set(encoded: &[u8]) -> bool {
    encoded.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

fn encode_uncompressed(item: &dyn BinEncodable) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    item.emit(&mut encoder).ok()?;
    Some(buf)
}

/// Encodes a positive answer (no authority or additional records) with
/// every owner name equal to the question name written as a pointer to
/// it, and all other names uncompressed. `None` when the message has
/// another shape or does not fit 65535 bytes.
fn compact_encode(response: &Message) -> Option<Vec<u8>> {
    if !response.authorities.is_empty() || !response.additionals.is_empty() {
        return None;
    }
    let query = response.queries.first()?;
    let mut head = Message::new(response.id, MessageType::Response, response.op_code);
    head.metadata = response.metadata;
    head.add_query(query.clone());
    // Header and question; the question name starts at offset 12.
    let mut out = head.to_vec().ok()?;
    let ancount = u16::try_from(response.answers.len()).ok()?;
    out.get_mut(6..8)?.copy_from_slice(&ancount.to_be_bytes());
    for record in &response.answers {
        if record.name.eq_case(query.name()) {
            out.extend_from_slice(&[0xC0, 0x0C]);
        } else {
            out.extend(encode_uncompressed(&record.name)?);
        }
        out.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
        out.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
        out.extend_from_slice(&record.ttl.to_be_bytes());
        let rdata = encode_uncompressed(&record.data)?;
        out.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        out.extend(rdata);
    }
    if let Some(edns) = &response.edns {
        // OPT: root owner, TYPE 41, CLASS = UDP payload size, TTL = extended
        // RCODE 0, version 0, no flags, empty RDATA.
        out.extend_from_slice(&[0x00, 0x00, 0x29]);
        out.extend_from_slice(&edns.max_payload().to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        out.get_mut(10..12)?.copy_from_slice(&1u16.to_be_bytes());
    }
    (out.len() <= usize::from(u16::MAX)).then_some(out)
}

async fn udp_loop(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on some
                // systems; keep serving.
                tracing::debug!("dns udp recv: {e}");
                continue;
            }
        };
        let Some(request) = buf.get(..len) else {
            continue;
        };
        if let Some(reply) = handle(&shared, request, Protocol::Udp)
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!("dns udp send to {peer}: {e}");
        }
    }
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tcp_conn(stream, shared.clone()));
            }
            Err(e) => {
                tracing::debug!("dns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let Some(reply) = handle(&shared, &request, Protocol::Tcp) else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
