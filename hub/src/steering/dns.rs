//! The authoritative DNS server of a hub (UDP and TCP on `dns.listen`, hickory-server 0.26 for
//! the message types and the zone catalog; the socket loops are ours).
//!
//! A custom [`RequestHandler`] answers the steered names itself, because hickory's `Catalog`
//! neither sees nor echoes EDNS Client Subnet:
//! - `api.<zone>` A/AAAA: the hub [`super::Steering::choose`] picks for the client (the ECS
//!   address when the query carries one, else the resolver's address); the ECS option is echoed
//!   with the scope prefix the decision was made for.
//! - `<region>.api.<zone>` A/AAAA: that region's hub, whatever the client.
//! - Other types at those names: NODATA with the SOA; an unknown region: NXDOMAIN.
//!
//! Everything else (SOA, NS, static records, NXDOMAIN with the SOA) goes to a `Catalog` holding
//! one in-memory zone built from the config.
//!
//! Before any of that, [`Handler::answer`] applies what hickory's own server loop cannot: UDP
//! response rate limiting per client network ([`super::rrl`]), FORMERR for a malformed EDNS
//! Client Subnet option (RFC 7871 section 6: a non-zero scope in a query, address bytes that do
//! not match the source prefix, bits set past it, or more than one option), and one DEBUG line
//! per query (hickory's loop logs two INFO lines per query, which a flood turns into a flood
//! of logs).

use super::rrl::{Limits, RateLimiter, Verdict};
use super::Steering;
use crate::config::{Config, DnsConfig};
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponse, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// TTL of the SOA and NS records.
const ZONE_TTL: u32 = 3600;
/// Largest UDP payload we announce (the DNS flag day 2020 value).
const MAX_PAYLOAD: u16 = 1232;
/// Receive and send buffer of each UDP socket.
const UDP_BUFFER: usize = 4 << 20;
/// How long a TCP client may stay idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connections served at once (more are closed at once: TCP is the fallback for slipped
/// answers, not a second bulk path).
const MAX_TCP_CONNECTIONS: usize = 256;
/// Queries answered on one TCP connection before it is closed.
const MAX_TCP_QUERIES: usize = 1000;
/// The largest UDP query read (EDNS clients announce at most 4096).
const MAX_UDP_QUERY: usize = 4096;

/// The zone as configured: names, SOA, and the catalog for non-steered names.
pub struct Zone {
    pub origin: Name,
    /// `api.<zone>`.
    pub api: LowerName,
    soa: Record,
    catalog: Catalog,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("origin", &self.origin)
            .finish()
    }
}

/// A config error: the key and what is wrong.
pub type ZoneError = (String, String);

fn name_in(zone: &Name, s: &str) -> Result<Name, String> {
    if s == "@" {
        return Ok(zone.clone());
    }
    let n = Name::parse(s, Some(zone)).map_err(|e| e.to_string())?;
    Ok(if n.is_fqdn() {
        n
    } else {
        n.append_domain(zone).map_err(|e| e.to_string())?
    })
}

fn push(records: &mut BTreeMap<RrKey, RecordSet>, record: Record, serial: u32) {
    let key = RrKey::new(LowerName::from(&record.name), record.record_type());
    records
        .entry(key)
        .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), serial))
        .insert(record, serial);
}

/// Builds the zone from `dns` config; errors name the key.
pub fn build_zone(dns: &DnsConfig) -> Result<Zone, ZoneError> {
    let bad = |key: &str, m: String| (format!("dns.{key}"), m);
    let origin = Name::from_ascii(&dns.zone)
        .map_err(|e| bad("zone", format!("{:?} is not a domain name: {e}", dns.zone)))?;
    let origin = if origin.is_fqdn() {
        origin
    } else {
        origin
            .append_domain(&Name::root())
            .map_err(|e| bad("zone", e.to_string()))?
    };
    if origin.is_root() {
        return Err(bad("zone", "must not be the root".into()));
    }
    let api = Name::from_ascii("api")
        .and_then(|n| n.append_domain(&origin))
        .map_err(|e| bad("zone", e.to_string()))?;
    let mut ns_names = Vec::new();
    for (i, ns) in dns.nameservers.iter().enumerate() {
        ns_names.push(
            name_in(&origin, ns)
                .map_err(|e| bad(&format!("nameservers[{i}]"), format!("{ns:?}: {e}")))?,
        );
    }
    if ns_names.is_empty() {
        ns_names.push(name_in(&origin, "ns1").map_err(|e| bad("nameservers", e))?);
    }
    let rname = match &dns.hostmaster {
        Some(h) => name_in(&origin, h).map_err(|e| bad("hostmaster", format!("{h:?}: {e}")))?,
        None => name_in(&origin, "hostmaster").map_err(|e| bad("hostmaster", e))?,
    };
    // The serial moves with every start, so secondaries notice configuration changes.
    let serial = (crate::state::now_ms() / 1000) as u32;
    let soa = Record::from_rdata(
        origin.clone(),
        ZONE_TTL,
        RData::SOA(SOA::new(
            ns_names[0].clone(),
            rname,
            serial,
            3600,
            600,
            86_400,
            dns.ttl_secs,
        )),
    );
    let mut records = BTreeMap::new();
    push(&mut records, soa.clone(), serial);
    for ns in &ns_names {
        push(
            &mut records,
            Record::from_rdata(origin.clone(), ZONE_TTL, RData::NS(NS(ns.clone()))),
            serial,
        );
    }
    for (i, r) in dns.records.iter().enumerate() {
        let key = format!("records[{i}]");
        let kind = match r.kind.to_ascii_uppercase().as_str() {
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "CNAME" => RecordType::CNAME,
            "TXT" => RecordType::TXT,
            "MX" => RecordType::MX,
            other => {
                return Err(bad(
                    &format!("{key}.type"),
                    format!("{other:?} is not one of A, AAAA, CNAME, TXT, MX"),
                ))
            }
        };
        let name = name_in(&origin, &r.name)
            .map_err(|e| bad(&format!("{key}.name"), format!("{:?}: {e}", r.name)))?;
        if !origin.zone_of(&name) {
            return Err(bad(
                &format!("{key}.name"),
                format!("{name} is outside the zone {origin}"),
            ));
        }
        if LowerName::from(&name) == LowerName::from(&api)
            || LowerName::from(&api).zone_of(&LowerName::from(&name))
        {
            return Err(bad(
                &format!("{key}.name"),
                format!("{name} is steered; it cannot have static records"),
            ));
        }
        let rdata = RData::try_from_str(kind, &r.value).map_err(|e| {
            bad(
                &format!("{key}.value"),
                format!("{:?} is not a valid {kind} value: {e}", r.value),
            )
        })?;
        push(
            &mut records,
            Record::from_rdata(name, r.ttl.unwrap_or(dns.ttl_secs), rdata),
            serial,
        );
    }
    let handler = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .map_err(|e| bad("zone", e))?;
    let mut catalog = Catalog::new();
    let handler: Arc<dyn ZoneHandler> = Arc::new(handler);
    catalog.upsert(LowerName::from(&origin), vec![handler]);
    Ok(Zone {
        origin,
        api: LowerName::from(&api),
        soa,
        catalog,
    })
}

/// Checks the `dns` section (called by config validation).
pub fn check_config(config: &Config) -> Result<(), ZoneError> {
    let dns = &config.dns;
    if dns.ttl_secs == 0 || dns.ttl_secs > 86_400 {
        return Err(("dns.ttl_secs".into(), "must be between 1 and 86400".into()));
    }
    if dns.probe_interval_secs == 0 {
        return Err((
            "dns.probe_interval_secs".into(),
            "must be at least 1".into(),
        ));
    }
    if dns.probe_failures == 0 {
        return Err(("dns.probe_failures".into(), "must be at least 1".into()));
    }
    let rrl = &dns.rrl;
    if rrl.responses_per_second > 1_000_000 {
        return Err((
            "dns.rrl.responses_per_second".into(),
            "must be at most 1000000 (0 turns limiting off)".into(),
        ));
    }
    if rrl.responses_per_second > 0 && !(1..=1_000_000).contains(&rrl.burst) {
        return Err((
            "dns.rrl.burst".into(),
            "must be between 1 and 1000000".into(),
        ));
    }
    if rrl.slip > 10 {
        return Err((
            "dns.rrl.slip".into(),
            "must be between 0 (never) and 10".into(),
        ));
    }
    if !(1..=10_000_000).contains(&rrl.max_prefixes) {
        return Err((
            "dns.rrl.max_prefixes".into(),
            "must be between 1 and 10000000".into(),
        ));
    }
    build_zone(dns).map(|_| ())
}

/// What a query name is to us.
enum Class<'a> {
    Api,
    Region(&'a [u8]),
    Other,
}

/// The request handler: steered names here, the rest to the catalog.
#[derive(Clone)]
pub struct Handler {
    pub steering: Arc<Steering>,
    pub zone: Arc<Zone>,
    /// UDP response budgets per client network.
    pub rrl: Arc<Mutex<RateLimiter>>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").field("zone", &self.zone).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the EDNS Client Subnet options of the query `msg` are malformed (RFC 7871 section 6),
/// if they are: more than one option, an unknown family, a source prefix longer than the
/// family's addresses, a non-zero scope (only responses carry one), an address longer or
/// shorter than the source prefix needs, or bits set past the source prefix. Read from the wire
/// because hickory's parser reads only the address bytes the source prefix needs (extra ones
/// vanish) and checks neither the scope nor the spare bits.
pub fn ecs_error(msg: &[u8]) -> Option<&'static str> {
    fn u16_at(b: &[u8], i: usize) -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    }
    /// The offset after the (possibly compressed) name at `i`.
    fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
        loop {
            let len = *b.get(i)?;
            match len & 0xc0 {
                0 if len == 0 => return Some(i + 1),
                0 => i += 1 + usize::from(len),
                0xc0 => return b.get(i + 1).map(|_| i + 2),
                _ => return None,
            }
        }
    }
    let qd = u16_at(msg, 4)?;
    let records = u16_at(msg, 6)? + u16_at(msg, 8)? + u16_at(msg, 10)?;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut seen = 0;
    for _ in 0..records {
        i = skip_name(msg, i)?;
        let rtype = u16_at(msg, i)?;
        let rdlen = u16_at(msg, i + 8)?;
        let rdata = msg.get(i + 10..i + 10 + rdlen)?;
        i += 10 + rdlen;
        if rtype != 41 {
            continue;
        }
        let mut j = 0;
        while j + 4 <= rdata.len() {
            let code = u16_at(rdata, j)?;
            let len = u16_at(rdata, j + 2)?;
            let Some(opt) = rdata.get(j + 4..j + 4 + len) else {
                // A truncated option: the parser refuses the message already.
                return None;
            };
            j += 4 + len;
            if code != 8 {
                continue;
            }
            seen += 1;
            if seen > 1 {
                return Some("more than one client subnet option");
            }
            if opt.len() < 4 {
                return Some("a client subnet option shorter than its fixed fields");
            }
            let bits = match u16_at(opt, 0)? {
                1 => 32,
                2 => 128,
                _ => return Some("an unknown client subnet address family"),
            };
            let (source, scope, addr) = (usize::from(opt[2]), opt[3], &opt[4..]);
            if source > bits {
                return Some("a source prefix longer than the address");
            }
            if scope != 0 {
                return Some("a non-zero scope prefix in a query");
            }
            if addr.len() != source.div_ceil(8) {
                return Some("address bytes that do not match the source prefix");
            }
            if source % 8 != 0 {
                let spare = 8 - source % 8;
                if addr.last().is_some_and(|b| b & ((1u8 << spare) - 1) != 0) {
                    return Some("address bits set past the source prefix");
                }
            }
        }
    }
    None
}

/// Encodes `response` in at most `max` bytes (records that do not fit are left out, with TC=1).
fn encode<'q, 'a, A, N, S, D>(
    response: MessageResponse<'q, 'a, A, N, S, D>,
    max: u16,
) -> Option<(ResponseInfo, Vec<u8>)>
where
    A: Iterator<Item = &'a Record> + Send + 'a,
    N: Iterator<Item = &'a Record> + Send + 'a,
    S: Iterator<Item = &'a Record> + Send + 'a,
    D: Iterator<Item = &'a Record> + Send + 'a,
{
    let mut bytes = Vec::with_capacity(512);
    let mut enc = BinEncoder::new(&mut bytes);
    enc.set_max_size(max);
    match response.destructive_emit(&mut enc) {
        Ok(info) => Some((info, bytes)),
        Err(e) => {
            tracing::debug!(error = %e, "encoding a DNS response failed");
            None
        }
    }
}

/// The [`ResponseHandler`] our loops give the handler: keeps the encoded response for the loop
/// to send.
#[derive(Clone)]
struct Reply {
    max: u16,
    out: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) =
            encode(response, self.max).ok_or_else(|| NetError::from("encoding failed"))?;
        *lock(&self.out) = Some(bytes);
        Ok(info)
    }
}

/// FORMERR for a message whose header is all we could read (id, opcode and RD kept).
fn formerr_header(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return None;
    }
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(&raw[..2]);
    h[2] = 0x80 | (raw[2] & 0x79);
    h[3] = ResponseCode::FormErr.low();
    Some(h)
}

impl Handler {
    pub fn new(steering: Arc<Steering>, zone: Zone, rrl: Limits) -> Handler {
        Handler {
            steering,
            zone: Arc::new(zone),
            rrl: Arc::new(Mutex::new(RateLimiter::new(rrl))),
        }
    }

    /// The response to one message from `src`, or `None` when nothing is to be sent (a
    /// response, no readable header, or over the client network's UDP budget).
    pub async fn answer(&self, raw: &[u8], src: SocketAddr, protocol: Protocol) -> Option<Vec<u8>> {
        // Every UDP response counts, errors included; TCP is not limited.
        let verdict = if protocol == Protocol::Udp {
            lock(&self.rrl).check(src.ip(), Instant::now())
        } else {
            Verdict::Answer
        };
        if verdict == Verdict::Drop {
            tracing::debug!(src = %src.ip(), "DNS response dropped by the rate limit");
            return None;
        }
        let request = match Request::from_bytes(raw.to_vec(), src, protocol) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(src = %src.ip(), error = %e, "malformed DNS message: FORMERR");
                return formerr_header(raw);
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let max = match protocol {
            Protocol::Udp => request.max_payload().min(MAX_PAYLOAD),
            _ => u16::MAX,
        };
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(MAX_PAYLOAD);
            e
        });
        let (qname, qtype) = match request.queries.queries().first() {
            Some(q) => (q.name().to_string(), q.query_type()),
            None => (String::new(), RecordType::Unknown(0)),
        };
        if let Some(why) = ecs_error(raw) {
            tracing::debug!(src = %src.ip(), %qname, %qtype, why, "DNS query: FORMERR");
            let r = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                .error_msg(&request.metadata, ResponseCode::FormErr);
            return encode(r, max).map(|(_, b)| b);
        }
        if verdict == Verdict::Slip {
            tracing::debug!(src = %src.ip(), %qname, %qtype, "DNS response slipped (TC=1)");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.truncation = true;
            let r = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                .build_no_records(metadata);
            return encode(r, max).map(|(_, b)| b);
        }
        let reply = Reply {
            max,
            out: Arc::new(Mutex::new(None)),
        };
        let info = self
            .handle_request::<_, TokioTime>(&request, reply.clone())
            .await;
        tracing::debug!(
            src = %src.ip(),
            proto = %protocol,
            %qname,
            %qtype,
            rcode = %info.response_code,
            answers = info.counts().answers,
            "DNS query"
        );
        let out = lock(&reply.out).take();
        out
    }

    fn classify<'a>(&self, name: &'a LowerName) -> Class<'a> {
        if *name == self.zone.api {
            return Class::Api;
        }
        if name.num_labels() == self.zone.api.num_labels() + 1 && self.zone.api.zone_of(name) {
            if let Some(label) = name.iter().next() {
                return Class::Region(label);
            }
        }
        Class::Other
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let info = match request.request_info() {
            Ok(info)
                if info.metadata.message_type == MessageType::Query
                    && info.metadata.op_code == OpCode::Query =>
            {
                info
            }
            _ => {
                return self
                    .zone
                    .catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
        };
        let qname = info.query.name();
        let qtype = info.query.query_type();
        let class = self.classify(qname);
        if matches!(class, Class::Other) {
            return self
                .zone
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let ecs = request
            .edns
            .as_ref()
            .and_then(|e| match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(cs)) => Some(*cs),
                _ => None,
            });
        let snap = self.steering.snapshot();
        let (region, scope) = match class {
            Class::Api => {
                let (client, source) = match &ecs {
                    Some(cs) if cs.source_prefix() > 0 => (cs.addr(), Some(cs.source_prefix())),
                    _ => (request.src().ip(), None),
                };
                let (region, prefix) = self.steering.choose(&snap, client, source);
                (region, prefix.len())
            }
            Class::Region(label) => {
                let known = snap
                    .hubs
                    .iter()
                    .find(|h| h.region.as_bytes().eq_ignore_ascii_case(label))
                    .map(|h| h.region.clone());
                (known, 0)
            }
            Class::Other => (None, 0),
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let name = Name::from(qname);
        let ttl = self.steering.ttl;
        let answers: Vec<Record> = match (&region, qtype) {
            (Some(r), RecordType::A | RecordType::AAAA) => self
                .steering
                .addresses_of(&snap, r)
                .into_iter()
                .filter_map(|ip| match (ip, qtype) {
                    (IpAddr::V4(v4), RecordType::A) => {
                        Some(Record::from_rdata(name.clone(), ttl, RData::A(A(v4))))
                    }
                    (IpAddr::V6(v6), RecordType::AAAA) => {
                        Some(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))))
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if region.is_none() && matches!(class, Class::Region(_)) {
            metadata.response_code = ResponseCode::NXDomain;
        }
        let soa: Vec<&Record> = if answers.is_empty() {
            vec![&self.zone.soa]
        } else {
            Vec::new()
        };
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(MAX_PAYLOAD);
            if let Some(cs) = &ecs {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    cs.addr(),
                    cs.source_prefix(),
                    scope.min(cs.source_prefix()),
                )));
            }
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let response = builder.build(metadata, answers.iter(), [], soa, []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// One UDP socket per core on the same address (`SO_REUSEPORT`: the kernel spreads queries
/// over them, so receiving is parallel too), each with large buffers so that bursts wait in
/// the kernel instead of being dropped.
fn udp_sockets(addr: SocketAddr) -> std::io::Result<Vec<tokio::net::UdpSocket>> {
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(bound),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_port(true)?;
        let _ = s.set_recv_buffer_size(UDP_BUFFER);
        let _ = s.set_send_buffer_size(UDP_BUFFER);
        s.set_nonblocking(true)?;
        s.bind(&bound.into())?;
        let std: std::net::UdpSocket = s.into();
        // Port 0 asked for any port: the others join the one the first got.
        bound = std.local_addr()?;
        out.push(tokio::net::UdpSocket::from_std(std)?);
    }
    Ok(out)
}

/// Answers the datagrams of one UDP socket, one at a time (the sockets are answered in
/// parallel; handling is in memory, so a queue of tasks would only add memory under a flood).
async fn serve_udp(socket: tokio::net::UdpSocket, handler: Handler) {
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "receiving a DNS datagram");
                continue;
            }
        };
        // Port 0 cannot be answered (and is a typical forged source).
        if src.port() == 0 {
            continue;
        }
        if let Some(out) = handler.answer(&buf[..n], src, Protocol::Udp).await {
            if let Err(e) = socket.send_to(&out, src).await {
                tracing::debug!(error = %e, "sending a DNS response");
            }
        }
    }
}

/// Accepts TCP connections, at most [`MAX_TCP_CONNECTIONS`] at once; accept errors (out of
/// file descriptors) back off instead of ending the loop.
async fn serve_tcp(listener: tokio::net::TcpListener, handler: Handler) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    // Owned here, so stopping the server (aborting this task) ends every connection too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a DNS TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(src = %peer.ip(), "too many DNS TCP connections; closing one");
            continue;
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_tcp_connection(stream, peer, &handler).await;
        });
    }
}

/// Answers length-prefixed queries on one connection until it is idle for [`TCP_TIMEOUT`].
async fn serve_tcp_connection(mut stream: tokio::net::TcpStream, peer: SocketAddr, h: &Handler) {
    use tokio::time::timeout;
    for _ in 0..MAX_TCP_QUERIES {
        let mut len = [0u8; 2];
        if !matches!(
            timeout(TCP_TIMEOUT, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            timeout(TCP_TIMEOUT, stream.read_exact(&mut msg)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(out) = h.answer(&msg, peer, Protocol::Tcp).await else {
            continue;
        };
        let Ok(out_len) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&out_len.to_be_bytes());
        framed.extend_from_slice(&out);
        if !matches!(
            timeout(TCP_TIMEOUT, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    pub local_addr: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl DnsServer {
    /// Serves the zone on UDP and TCP at `addr` (port 0: any free port, the same for both).
    pub async fn start(
        steering: Arc<Steering>,
        config: &Config,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let zone = build_zone(&config.dns).map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
        let sockets =
            udp_sockets(addr).map_err(|e| anyhow::anyhow!("binding DNS on UDP {addr}: {e}"))?;
        let local_addr = sockets[0].local_addr()?;
        let tcp = tokio::net::TcpListener::bind(local_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding DNS on TCP {local_addr}: {e}"))?;
        let handler = Handler::new(steering, zone, Limits::from(&config.dns.rrl));
        let mut tasks = tokio::task::JoinSet::new();
        for s in sockets {
            tasks.spawn(serve_udp(s, handler.clone()));
        }
        tasks.spawn(serve_tcp(tcp, handler));
        tracing::info!(%local_addr, zone = %config.dns.zone, "steering DNS listening (UDP and TCP)");
        Ok(DnsServer { local_addr, tasks })
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn handler() -> Handler {
        let yaml =
            "dns:\n  zone: sy.test\n  records:\n    - {name: www, type: A, value: 192.0.2.1}\n";
        let config = Config::from_yaml(yaml, Vec::<(String, String)>::new()).expect("config");
        Handler::new(
            Arc::new(Steering::new(&config)),
            build_zone(&config.dns).expect("zone"),
            Limits::from(&config.dns.rrl),
        )
    }

    /// A query for `api.sy.test` A with an ECS option for 198.51.100.0/24.
    fn steered_query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend_from_slice(b"\x03api\x02sy\x04test\x00\x00\x01\x00\x01");
        // OPT: root name, type 41, payload 1232, rcode/flags 0, rdlen 11, ECS (code 8, len 7):
        // family 1, source 24, scope 0, 3 address bytes.
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11]);
        q.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100]);
        q
    }

    fn answer(h: &Handler, rt: &tokio::runtime::Runtime, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let src: SocketAddr = "192.0.2.99:5353".parse().expect("addr");
        rt.block_on(h.answer(&bytes, src, Protocol::Udp))
    }

    /// The query with its ECS option (the last 11 bytes) replaced by `options`.
    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut q = steered_query();
        q.truncate(q.len() - 13);
        q.extend_from_slice(&u16::try_from(options.len()).expect("len").to_be_bytes());
        q.extend_from_slice(options);
        q
    }

    fn ecs(family: u8, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
        let len = u8::try_from(4 + addr.len()).expect("len");
        let mut o = vec![0, 8, 0, len, 0, family, source, scope];
        o.extend_from_slice(addr);
        o
    }

    #[test]
    fn client_subnet_rules_of_rfc7871() {
        let ok = [
            ecs(1, 24, 0, &[198, 51, 100]),
            ecs(1, 0, 0, &[]),
            ecs(1, 20, 0, &[198, 51, 96]),
            ecs(2, 56, 0, &[0x20, 1, 0x0d, 0xb8, 0, 0, 0x12]),
            // Another option next to ECS is fine.
            [
                vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8],
                ecs(1, 24, 0, &[10, 0, 0]),
            ]
            .concat(),
        ];
        for o in ok {
            assert_eq!(ecs_error(&with_options(&o)), None, "{o:?}");
        }
        assert_eq!(ecs_error(&steered_query()), None);
        let bad = [
            (ecs(1, 24, 24, &[198, 51, 100]), "scope"),
            (ecs(1, 24, 0, &[198, 51, 100, 0]), "match"),
            (ecs(1, 24, 0, &[198, 51]), "match"),
            (ecs(1, 20, 0, &[198, 51, 100]), "past"),
            (ecs(1, 33, 0, &[1, 2, 3, 4, 5]), "longer"),
            (ecs(3, 8, 0, &[1]), "family"),
            (vec![0, 8, 0, 2, 0, 1], "shorter"),
            (
                [
                    ecs(1, 24, 0, &[198, 51, 100]),
                    ecs(1, 24, 0, &[198, 51, 100]),
                ]
                .concat(),
                "more than one",
            ),
        ];
        for (o, why) in bad {
            let got = ecs_error(&with_options(&o));
            assert!(got.is_some_and(|g| g.contains(why)), "{o:?}: {got:?}");
        }
    }

    #[test]
    fn malformed_client_subnets_are_answered_formerr() {
        let rt = tokio::runtime::Runtime::new().expect("rt");
        let h = handler();
        let q = with_options(&ecs(1, 24, 24, &[198, 51, 100]));
        let r = answer(&h, &rt, q).expect("an answer");
        let m = hickory_proto::op::Message::from_vec(&r).expect("parse");
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn the_steered_query_is_answered_with_its_subnet_echoed() {
        let rt = tokio::runtime::Runtime::new().expect("rt");
        let h = handler();
        let r = answer(&h, &rt, steered_query()).expect("an answer");
        let m = hickory_proto::op::Message::from_vec(&r).expect("parse");
        assert!(m.metadata.authoritative);
        let edns = m.edns.expect("edns echoed");
        match edns.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(cs)) => {
                assert_eq!(cs.source_prefix(), 24);
                assert_eq!(cs.scope_prefix(), 24);
            }
            other => panic!("no ECS echoed: {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            thread_local! {
                static RT: tokio::runtime::Runtime = tokio::runtime::Runtime::new().expect("rt");
            }
            let h = handler();
            RT.with(|rt| { let _ = answer(&h, rt, bytes); });
        }

        #[test]
        fn mutated_queries_never_panic(at in 0usize..48, byte in any::<u8>(), cut in 0usize..48) {
            thread_local! {
                static RT: tokio::runtime::Runtime = tokio::runtime::Runtime::new().expect("rt");
            }
            let h = handler();
            let mut q = steered_query();
            let i = at % q.len();
            q[i] = byte;
            q.truncate(q.len() - cut.min(q.len()));
            RT.with(|rt| { let _ = answer(&h, rt, q); });
        }
    }
}
