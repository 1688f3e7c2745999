//! The authoritative DNS server of a hub (hickory-server 0.26, UDP and TCP on `dns.listen`).
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

use super::Steering;
use crate::config::{Config, DnsConfig};
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// TTL of the SOA and NS records.
const ZONE_TTL: u32 = 3600;
/// Largest UDP payload we announce (the DNS flag day 2020 value).
const MAX_PAYLOAD: u16 = 1232;
/// Receive and send buffer of each UDP socket.
const UDP_BUFFER: usize = 4 << 20;
/// How long a TCP client may stay idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

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
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").field("zone", &self.zone).finish()
    }
}

impl Handler {
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

/// A running DNS server.
pub struct DnsServer {
    pub local_addr: SocketAddr,
    server: hickory_server::Server<Handler>,
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
        let mut server = hickory_server::Server::new(Handler {
            steering,
            zone: Arc::new(zone),
        });
        for s in sockets {
            server.register_socket(s);
        }
        server.register_listener(tcp, TCP_TIMEOUT, 64 * 1024);
        tracing::info!(%local_addr, zone = %config.dns.zone, "steering DNS listening (UDP and TCP)");
        Ok(DnsServer { local_addr, server })
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::net::NetError;
    use hickory_server::zone_handler::MessageResponse;
    use proptest::prelude::*;
    use std::sync::Mutex;

    /// Collects the encoded response.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Option<Vec<u8>>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Collect {
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
            let mut bytes = Vec::new();
            let info = {
                let mut enc = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
                response.destructive_emit(&mut enc)?
            };
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
            Ok(info)
        }
    }

    fn handler() -> Handler {
        let yaml =
            "dns:\n  zone: sy.test\n  records:\n    - {name: www, type: A, value: 192.0.2.1}\n";
        let config = Config::from_yaml(yaml, Vec::<(String, String)>::new()).expect("config");
        Handler {
            steering: Arc::new(Steering::new(&config)),
            zone: Arc::new(build_zone(&config.dns).expect("zone")),
        }
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
        let req = Request::from_bytes(bytes, src, Protocol::Udp).ok()?;
        let out = Collect::default();
        rt.block_on(h.handle_request::<_, TokioTime>(&req, out.clone()));
        let got = out.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        got
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
