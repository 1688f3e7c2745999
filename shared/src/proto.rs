//! The hub↔spoke wire protocol: a versioned preamble, then length-prefixed JSON frames on QUIC
//! streams. Sans-IO: [`encode`] makes bytes, [`FrameDecoder`] turns bytes back into messages;
//! the caller owns the sockets.
//!
//! Stream layout: each side first writes a 6-byte preamble (`SWYD` + protocol version, big
//! endian), then frames of `u32` big-endian length + one JSON message. A frame longer than
//! [`MAX_FRAME`], a bad preamble or a message that does not parse is an error that closes the
//! stream; it never panics. The control stream opened by a spoke starts with
//! [`SpokeMsg::Hello`] (or [`SpokeMsg::Enroll`] on a connection without a client certificate).

use crate::storage::service::ServiceConfig;
use crate::storage::transfer::{PartDone, PartPlan};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks. Bump on any incompatible message change.
pub const VERSION: u16 = 2;
/// The QUIC ALPN of the control plane.
pub const ALPN: &[u8] = b"switchyard";
/// The QUIC ALPN of the spoke↔spoke relay.
pub const ALPN_RELAY: &[u8] = b"switchyard-relay";
/// Largest relay request frame (requests are a few hundred bytes).
pub const MAX_RELAY_FRAME: usize = 16 * 1024;
/// Start of every stream.
pub const MAGIC: [u8; 4] = *b"SWYD";
/// Bytes of the preamble: magic + version.
pub const PREAMBLE_LEN: usize = 6;
/// Largest frame body accepted (1 MiB): control messages are small; bytes never travel here.
pub const MAX_FRAME: usize = 1 << 20;
/// QUIC application error code: the peer speaks another protocol version.
pub const CLOSE_VERSION_MISMATCH: u32 = 0x5601;
/// QUIC application error code: the spoke is revoked or unknown.
pub const CLOSE_REVOKED: u32 = 0x5602;
/// QUIC application error code: a frame broke the protocol.
pub const CLOSE_PROTOCOL: u32 = 0x5603;
/// QUIC application error code: orderly shutdown.
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code: the peer already holds as many connections as it may.
pub const CLOSE_BUSY: u32 = 0x5604;

/// What can go wrong turning bytes into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("not a Switchyard control stream (bad preamble)")]
    BadMagic,
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("garbled frame: {0}")]
    Garbled(String),
}

/// The preamble for `version`.
pub fn preamble(version: u16) -> [u8; PREAMBLE_LEN] {
    let v = version.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1]]
}

/// The peer's version from its preamble; a version other than ours is an error naming both.
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<u16, ProtoError> {
    if bytes[..4] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let theirs = u16::from_be_bytes([bytes[4], bytes[5]]);
    if theirs != VERSION {
        return Err(ProtoError::VersionMismatch {
            ours: VERSION,
            theirs,
        });
    }
    Ok(theirs)
}

/// One message as a frame: length prefix + JSON.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    let body = serde_json::to_vec(msg).map_err(|e| ProtoError::Garbled(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reassembles frames from arbitrary chunks of a stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. An oversized length
    /// is refused as soon as its prefix arrives, so the buffer never grows past the limit.
    pub fn decode<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ProtoError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(ProtoError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let parsed = serde_json::from_slice(&self.buf[4..4 + len])
            .map_err(|e| ProtoError::Garbled(e.to_string()));
        self.buf.drain(..4 + len);
        parsed.map(Some)
    }
}

/// A string that never shows in `Debug` output (tokens, secrets).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Messages a spoke sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SpokeMsg {
    /// On an unauthenticated connection: join the network with a join token and a CSR.
    Enroll(EnrollRequest),
    /// First message of an enrolled spoke's control stream.
    Hello(Hello),
    /// Load and measurements, every `heartbeat_ms`.
    Heartbeat(Heartbeat),
    /// Bytes moved so far for a transfer (at least once a second while it runs).
    Progress {
        transfer_id: i64,
        bytes_done: u64,
        bytes_per_sec: u64,
    },
    /// One part is written and verified; the hub makes it durable.
    PartDone { transfer_id: i64, part: PartDone },
    /// The whole transfer is written and verified.
    Done {
        transfer_id: i64,
        size: u64,
        checksum: String,
    },
    /// The transfer failed on this spoke.
    Failed {
        transfer_id: i64,
        message: String,
        retryable: bool,
    },
}

/// Messages a hub sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HubMsg {
    /// Enrollment accepted: the signed certificate and everything the spoke needs.
    Enrolled(Box<Enrolled>),
    /// A request was refused; `code` is stable, `message` is for people.
    Refused { code: String, message: String },
    /// The hello is accepted.
    Welcome(Welcome),
    /// Run (or resume) a transfer.
    Assign(Box<Assignment>),
    /// Stop a transfer now.
    Cancel { transfer_id: i64 },
    /// Serve one client-direct upload or download on the data endpoint until it expires.
    Grant(Box<Grant>),
    /// Measure the RTT to these storage endpoints (`host:port`) now and in every heartbeat.
    Probe { targets: Vec<String> },
    /// Fingerprints (SHA-256 hex) of revoked spoke certificates: every one, sent after the
    /// welcome and again whenever the list grows. A spoke refuses these peers on its relay.
    Revoked { fingerprints: Vec<String> },
}

/// A client-direct data grant: the spoke accepts `method` on `/v1/data/{grant_id}` with a URL
/// signed over the same claims (`shared::auth::DataClaims`) by the key in [`Welcome`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    /// `GET` or `PUT`.
    pub method: String,
    pub account: i64,
    pub location: Location,
    /// The object id the file has (or will have) in the API, for the upload's answer.
    pub file_id: String,
    /// Unix seconds.
    pub expires: i64,
    /// Largest upload accepted, bytes (0: no limit).
    pub max_bytes: u64,
    /// An upload replaces a file of the same name (a redirected `overwrite=true` upload);
    /// otherwise it never does, and a taken name fails the upload with 409.
    #[serde(default)]
    pub replace: bool,
    /// The `Content-Length` a redirected upload declared to the hub: the request must declare
    /// exactly this and send no more.
    #[serde(default)]
    pub declared_len: Option<u64>,
    /// The staging key the hub recorded for this upload (`.switchyard-partial/<16 hex>`), on
    /// services that stage.
    #[serde(default)]
    pub staging: Option<String>,
    /// The hub's claim (`storage_claims` key) on the upload's leftovers: the spoke names it in
    /// heartbeats while the upload runs, so the hub's sweep cleans up only after it stopped.
    #[serde(default)]
    pub claim: Option<String>,
    /// For uploads: what the hub records in the account's event feed once the upload is
    /// published, and its proof that the hub issued this grant. The spoke reports it back
    /// ([`UploadDone`]); absent from hubs without an event feed.
    #[serde(default)]
    pub receipt: Option<UploadReceipt>,
    /// Method `PART`: the upload-session part this grant takes (a spoke that does not know
    /// the method refuses the grant rather than publishing the part as a file).
    #[serde(default)]
    pub part: Option<PartGrant>,
    /// Method `RELAY`: the spoke that may read through the grant (the transfer's writer), as
    /// its certificate names it ([`crate::pki::spoke_id_of`]). The relaying spoke refuses
    /// every other peer, and a grant that names none, so a leaked grant serves no other spoke.
    #[serde(default)]
    pub reader: Option<i64>,
}

/// What a published client-direct upload is in the account's event feed (`add` or
/// `update`), with the issuing hub's tag over the grant, account, path and kind: a spoke can
/// report only uploads a hub granted, as granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReceipt {
    pub kind: String,
    /// Hex of the hub's HMAC; not a secret (the spoke cannot make one for another grant).
    pub tag: String,
}

/// A client-direct upload this spoke published: the grant's receipt and what the provider
/// answered. Sent in heartbeats to every hub (each records it at most once per account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadDone {
    pub grant_id: String,
    pub account: i64,
    pub path: String,
    pub receipt: UploadReceipt,
    pub size: u64,
    /// Unix milliseconds, when the provider says.
    #[serde(default)]
    pub modified: Option<i64>,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Join request: the token from the join string and a CSR for the spoke's own key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token_id: String,
    pub secret: Redacted,
    pub csr_pem: String,
    pub name: Option<String>,
    /// Where clients and other spokes reach this spoke's data endpoint (`host:port`).
    pub advertise: Option<String>,
}

/// Enrollment result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    pub spoke_id: i64,
    pub name: String,
    pub region: String,
    pub cert_pem: String,
    /// The spoke CA: the issuer of `cert_pem` and of every other spoke's certificate (relay
    /// peers are verified under it; data-endpoint clients trust it).
    pub ca_pem: String,
    /// The network CA (the one the join string pins): the issuer of hub certificates, the only
    /// CA a spoke trusts for a hub.
    pub hub_ca_pem: String,
    pub hubs: Vec<HubInfo>,
    pub settings: SpokeSettings,
}

/// A hub a spoke dials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    pub region: String,
    /// QUIC control endpoint, `host:port`.
    pub quic: String,
    /// REST API base URL.
    pub api: String,
}

/// Knobs the hub hands its spokes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpokeSettings {
    pub heartbeat_ms: u64,
    pub max_jobs: u32,
    pub part_concurrency: u32,
    /// Bytes per second across all of this spoke's transfers; `None` = unlimited.
    pub rate_limit: Option<u64>,
    /// Congestion controller of relay connections.
    #[serde(default)]
    pub congestion: crate::quic::Congestion,
    /// QUIC connections one relayed transfer is striped over (a hub that predates striping
    /// sends none: one).
    #[serde(default = "one")]
    pub relay_connections: u32,
    /// The hub's SSRF policy: spokes connect to providers under the same rules.
    #[serde(default)]
    pub egress: EgressSettings,
    /// The cluster's provider budgets: spokes draw from them through their hub.
    #[serde(default)]
    pub budgets: crate::budget::BudgetSettings,
}

fn one() -> u32 {
    1
}

/// Which internal addresses provider connections may reach (see `crate::egress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressSettings {
    /// Every address is allowed (`storage.allow_private_endpoints`).
    #[serde(default)]
    pub allow_private: bool,
    /// Internal networks allowed anyway (`storage.allowed_private_endpoints`).
    #[serde(default)]
    pub allowed: Vec<ipnet::IpNet>,
}

impl Default for SpokeSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1000,
            max_jobs: 4,
            part_concurrency: 4,
            rate_limit: None,
            congestion: crate::quic::Congestion::default(),
            relay_connections: 1,
            egress: EgressSettings::default(),
            budgets: crate::budget::BudgetSettings::default(),
        }
    }
}

/// A spoke's greeting on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub spoke_id: i64,
    pub region: String,
    pub software: String,
    /// Jobs it will run at once.
    pub slots: u32,
    /// Transfers this spoke still runs from before a reconnect.
    pub running: Vec<i64>,
    /// The folders its operator declared for `fs` accounts (`storage.fs_roots`, canonical):
    /// hubs give it `fs` work only at or below one of them.
    #[serde(default)]
    pub fs_roots: Vec<String>,
    /// It fetches URL sources ([`Assignment::source_url`]); older spokes do not.
    #[serde(default)]
    pub url_sources: bool,
}

/// The hub's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub hub_region: String,
    pub settings: SpokeSettings,
    /// This spoke's key for verifying signed data URLs (base64url of 32 bytes), derived by the
    /// hub per spoke; absent from hubs that do not hand out data URLs.
    #[serde(default)]
    pub data_key: Option<Redacted>,
}

/// Load and measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Heartbeat {
    pub active_jobs: u32,
    pub free_slots: u32,
    pub bytes_per_sec: u64,
    /// Round-trip times the spoke measured (to this hub, to storage endpoints).
    pub rtts: Vec<RttSample>,
    /// Whether the spoke's HTTPS data endpoint is accepting connections; absent from spokes
    /// without one (and from older spokes, which hubs treat as up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_endpoint: Option<EndpointHealth>,
    /// Client-direct uploads running now, by the hub's claim on their leftovers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<UploadClaim>,
    /// Client-direct uploads published recently (a heartbeat goes out at once after each;
    /// each is repeated to every hub session for a while, since a session may be down).
    /// Hubs without an event feed ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploaded: Vec<UploadDone>,
}

/// The state of a spoke's data endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointHealth {
    /// Listening and accepting.
    Up,
    /// Not listening, or failing to accept (e.g. out of file descriptors): hubs send no
    /// clients to it.
    Down,
}

/// A running client-direct upload: the account and the hub's claim key from its grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadClaim {
    pub account: i64,
    pub claim: String,
}

/// The `rtt_us` of a storage endpoint the spoke could not connect to.
pub const UNREACHABLE: u64 = u64::MAX;

/// One measured round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttSample {
    /// `hub:<region>` or `storage:<host:port>`.
    pub target: String,
    pub rtt_us: u64,
}

/// Where bytes come from or go to: a storage account's settings and a path in it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub service: ServiceConfig,
    pub path: String,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ServiceConfig's Debug already hides credentials.
        f.debug_struct("Location")
            .field("service", &self.service)
            .field("path", &self.path)
            .finish()
    }
}

/// A transfer (or the rest of one) for a spoke to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub transfer_id: i64,
    pub source: Location,
    pub dest: Location,
    pub size: u64,
    pub part_size: u64,
    /// The destination's multipart upload, when it has resumable parts.
    pub upload_id: Option<String>,
    /// Parts still to do (completed ones are left out).
    pub parts: Vec<PartPlan>,
    /// Parts already durable (the hub completes the upload from all durable parts).
    pub done: Vec<PartDone>,
    pub concurrency: u32,
    pub rate_limit: Option<u64>,
    /// Read the source through this spoke (it sits near the source; this one near the
    /// destination) instead of from the provider directly.
    #[serde(default)]
    pub relay: Option<RelayFrom>,
    /// The source is this URL, not `source` (an upload from a URL): fetched with the egress
    /// guard, every redirect checked. Only spokes whose hello declares `url_sources` get one.
    #[serde(default)]
    pub source_url: Option<UrlFetch>,
}

/// A URL to fetch as a transfer's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlFetch {
    /// The URL the client gave (it may carry a signature: never logged).
    pub url: Redacted,
    /// Its length when the upload started; a source of another length now fails the transfer.
    /// `None`: unknown (streamed, at most `max_bytes`).
    pub size: Option<u64>,
    /// The largest source accepted; 0 = no limit.
    pub max_bytes: u64,
}

/// A spoke relaying a transfer's source bytes, and the signed grant that lets us ask it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayFrom {
    pub spoke_id: i64,
    /// Its QUIC relay endpoint, `host:port` (the UDP side of its data endpoint).
    pub addr: String,
    /// The `RELAY` grant the hub registered on it.
    pub grant_id: String,
    /// Unix seconds.
    pub expires: i64,
    /// `shared::auth::sign_data` over the grant's claims with the relaying spoke's data key.
    pub signature: Redacted,
}

/// First frame of a relay stream (writer → relaying spoke): send bytes `offset..offset+len` of
/// the grant's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRequest {
    pub grant_id: String,
    pub expires: i64,
    pub signature: Redacted,
    pub offset: u64,
    pub len: u64,
}

/// The relaying spoke's answer; after `Ok` exactly the requested bytes follow, raw, and the
/// stream finishes (a failure part-way resets the stream instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayReply {
    Ok,
    Refused { code: String, message: String },
}

/// A spoke's question to a hub, the one frame of a bidirectional stream it opens on its control
/// connection (after the hello); the hub answers one [`SideAnswer`] frame and finishes the
/// stream. Questions wait for their answer without holding up the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SideAsk {
    /// A slot of provider budget `key`, waiting at most `max_wait_ms`. The hub applies its own
    /// limits: the spoke names only the service and the bucket.
    Take {
        service: String,
        key: String,
        max_wait_ms: u64,
    },
    /// The provider asked for a pause of `ms` on budget `key`.
    Cool { key: String, ms: u64 },
    /// An upload-session part a [`PartGrant`] sent here is at the provider: record it.
    Part(PartReport),
}

/// The hub's answer to a [`SideAsk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SideAnswer {
    Take {
        take: crate::budget::Take,
    },
    Cooled,
    /// The part is recorded; `session` is what the API answers for the part (the session).
    Recorded {
        session: serde_json::Value,
    },
    /// `status` and `code` are what the client gets.
    Refused {
        message: String,
        #[serde(default)]
        status: Option<u16>,
        #[serde(default)]
        code: Option<String>,
    },
}

/// Largest frame of a side stream (an answer names up to 10,000 received parts).
pub const MAX_SIDE_FRAME: usize = 256 * 1024;

/// An upload-session part a grant (method `PART`) uploads: the spoke writes it where the hub
/// says, exactly `declared_len` bytes, then asks the hub to record it ([`SideAsk::Part`])
/// before it answers the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartGrant {
    pub session: i64,
    pub number: u16,
    /// S3 sessions: the multipart upload the part joins (`UploadPart`).
    #[serde(default)]
    pub upload_id: Option<String>,
    /// Other services: the staging object the part is kept as.
    #[serde(default)]
    pub staging: Option<String>,
    /// The hub's tag over the grant, the account, the session, the number, the length and
    /// where the part goes: a spoke reports only the part it was granted.
    pub tag: String,
}

/// What a spoke reports of a part it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReport {
    pub grant_id: String,
    pub account: i64,
    pub part: PartGrant,
    pub size: u64,
    /// S3: the part's ETag.
    #[serde(default)]
    pub etag: Option<String>,
}

/// Reads one length-prefixed frame of at most `max` bytes from a QUIC stream.
pub async fn read_frame<M: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<M, ProtoError> {
    let garbled = |e: quinn::ReadExactError| ProtoError::Garbled(e.to_string());
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(garbled)?;
    let mut body = vec![0u8; frame_len(prefix, max)?];
    recv.read_exact(&mut body).await.map_err(garbled)?;
    decode_body(&body)
}

/// The length of the frame whose 4-byte prefix is `prefix`, or an error beyond `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    Ok(len)
}

/// Parses one frame body (without its length prefix).
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, ProtoError> {
    serde_json::from_slice(body).map_err(|e| ProtoError::Garbled(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn settings_from_a_hub_before_striping_mean_one_relay_connection() {
        let mut v = serde_json::to_value(SpokeSettings {
            relay_connections: 4,
            ..SpokeSettings::default()
        })
        .expect("json");
        assert_eq!(v["relay_connections"], 4);
        v.as_object_mut()
            .expect("object")
            .remove("relay_connections");
        let old: SpokeSettings = serde_json::from_value(v).expect("parse");
        assert_eq!(old.relay_connections, 1);
    }

    fn sample_msgs() -> Vec<SpokeMsg> {
        vec![
            SpokeMsg::Hello(Hello {
                version: VERSION,
                spoke_id: 7,
                region: "eu-west".into(),
                software: "spoke 0.1".into(),
                slots: 4,
                running: vec![1, 2],
                fs_roots: vec!["/srv/files".into()],
                url_sources: true,
            }),
            SpokeMsg::Heartbeat(Heartbeat {
                active_jobs: 1,
                free_slots: 3,
                bytes_per_sec: 123,
                rtts: vec![RttSample {
                    target: "hub:eu-west".into(),
                    rtt_us: 800,
                }],
                data_endpoint: Some(EndpointHealth::Down),
                uploads: vec![UploadClaim {
                    account: 3,
                    claim: ".switchyard-partial/00112233aabbccdd".into(),
                }],
                uploaded: vec![UploadDone {
                    grant_id: "g1".into(),
                    account: 3,
                    path: "a/b.bin".into(),
                    receipt: UploadReceipt {
                        kind: "add".into(),
                        tag: "00ff".into(),
                    },
                    size: 1 << 33,
                    modified: Some(1_700_000_000_000),
                    etag: None,
                    content_type: Some("application/pdf".into()),
                }],
            }),
            SpokeMsg::Progress {
                transfer_id: 3,
                bytes_done: 1 << 40,
                bytes_per_sec: 9,
            },
            SpokeMsg::Failed {
                transfer_id: 3,
                message: "ünïcode ✓".into(),
                retryable: true,
            },
        ]
    }

    #[test]
    fn roundtrip_in_one_push() {
        let mut d = FrameDecoder::default();
        for m in sample_msgs() {
            d.push(&encode(&m).expect("encode"));
        }
        for m in sample_msgs() {
            assert_eq!(d.decode::<SpokeMsg>().expect("decode"), Some(m));
        }
        assert_eq!(d.decode::<SpokeMsg>().expect("empty"), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn relay_frames_roundtrip_and_hide_their_signature() {
        let req = RelayRequest {
            grant_id: "g".into(),
            expires: 99,
            signature: Redacted("s3cr3t".into()),
            offset: 5 << 30,
            len: 8 << 20,
        };
        let frame = encode(&req).expect("encode");
        let len = frame_len(frame[..4].try_into().expect("prefix"), MAX_RELAY_FRAME).expect("len");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_body::<RelayRequest>(&frame[4..]), Ok(req.clone()));
        assert!(!format!("{req:?}").contains("s3cr3t"));
        assert_eq!(
            frame_len((MAX_RELAY_FRAME as u32 + 1).to_be_bytes(), MAX_RELAY_FRAME),
            Err(ProtoError::TooLarge {
                len: MAX_RELAY_FRAME + 1,
                max: MAX_RELAY_FRAME
            })
        );
        assert!(decode_body::<RelayReply>(b"{\"type\":\"maybe\"}").is_err());
        let refused = RelayReply::Refused {
            code: "forbidden".into(),
            message: "no".into(),
        };
        let f = encode(&refused).expect("encode");
        assert_eq!(decode_body::<RelayReply>(&f[4..]), Ok(refused));
    }

    #[test]
    fn older_peers_messages_still_parse() {
        // A heartbeat from a spoke that predates endpoint health: no health, no uploads.
        let hb: SpokeMsg = serde_json::from_str(
            r#"{"type":"heartbeat","active_jobs":0,"free_slots":4,"bytes_per_sec":0,"rtts":[]}"#,
        )
        .expect("old heartbeat");
        let SpokeMsg::Heartbeat(hb) = hb else {
            panic!("not a heartbeat: {hb:?}");
        };
        assert_eq!((hb.data_endpoint, hb.uploads.len()), (None, 0));
        // And the new fields stay off the wire when there is nothing to say.
        let text = serde_json::to_string(&Heartbeat::default()).expect("encode");
        assert!(
            !text.contains("data_endpoint") && !text.contains("uploads"),
            "{text}"
        );
    }

    #[test]
    fn preamble_checks() {
        assert_eq!(check_preamble(&preamble(VERSION)), Ok(VERSION));
        assert_eq!(
            check_preamble(&preamble(VERSION + 1)),
            Err(ProtoError::VersionMismatch {
                ours: VERSION,
                theirs: VERSION + 1
            })
        );
        assert_eq!(check_preamble(b"HTTP/1"), Err(ProtoError::BadMagic));
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut d = FrameDecoder::new(16);
        d.push(&17u32.to_be_bytes());
        assert_eq!(
            d.decode::<SpokeMsg>(),
            Err(ProtoError::TooLarge { len: 17, max: 16 })
        );
    }

    #[test]
    fn unknown_and_garbled_frames_are_errors() {
        let mut d = FrameDecoder::default();
        let body = br#"{"type":"launch_missiles"}"#;
        d.push(&(body.len() as u32).to_be_bytes());
        d.push(body);
        assert!(matches!(
            d.decode::<SpokeMsg>(),
            Err(ProtoError::Garbled(_))
        ));
        let mut d = FrameDecoder::default();
        d.push(&3u32.to_be_bytes());
        d.push(b"{{{");
        assert!(matches!(d.decode::<HubMsg>(), Err(ProtoError::Garbled(_))));
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let m = SpokeMsg::Enroll(EnrollRequest {
            token_id: "t1".into(),
            secret: Redacted("hunter2-secret".into()),
            csr_pem: String::new(),
            name: None,
            advertise: None,
        });
        assert!(!format!("{m:?}").contains("hunter2"));
        let json = String::from_utf8(encode(&m).expect("encode")[4..].to_vec()).expect("utf8");
        assert!(json.contains("hunter2"), "the wire carries it: {json}");
    }

    proptest! {
        /// Any split of a valid stream into chunks decodes to the same messages.
        #[test]
        fn any_chunking_decodes_the_same(splits in proptest::collection::vec(1usize..64, 1..40),
                                         n in 0u64..u64::MAX, text in ".{0,200}") {
            let msgs = vec![
                SpokeMsg::Progress { transfer_id: n as i64, bytes_done: n, bytes_per_sec: n / 3 },
                SpokeMsg::Failed { transfer_id: 1, message: text.clone(), retryable: n % 2 == 0 },
            ];
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend(encode(m).expect("encode"));
            }
            let mut d = FrameDecoder::default();
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let mut i = 0;
            while !rest.is_empty() {
                let take = splits[i % splits.len()].min(rest.len());
                d.push(&rest[..take]);
                rest = &rest[take..];
                i += 1;
                while let Some(m) = d.decode::<SpokeMsg>().expect("decode") {
                    out.push(m);
                }
            }
            prop_assert_eq!(out, msgs);
        }

        /// Arbitrary bytes never panic the decoder: they decode, wait or fail cleanly.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut d = FrameDecoder::new(1024);
            d.push(&bytes);
            for _ in 0..8 {
                match d.decode::<HubMsg>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(d.buffered() <= bytes.len());
        }

        /// Random preambles are either ours or a clean error.
        #[test]
        fn preamble_never_panics(bytes in proptest::array::uniform6(any::<u8>())) {
            let r = check_preamble(&bytes);
            prop_assert!(r.is_ok() == (bytes == preamble(VERSION)));
        }
    }
}
