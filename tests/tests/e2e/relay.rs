//! The spoke↔spoke relay, in two "regions" made of network namespaces: each region has a spoke
//! and an S3 server only that spoke reaches; the hub sits between them. A copy from region A's
//! storage to region B's is written by B's spoke with the bytes relayed by A's over QUIC.

use crate::offload::{account, connector, first_file_id, s3_creds, sha_of, until, write_object};
use crate::spokes::{spoke_view, wait_healthy, SpokeProc};
use e2e::netns::{self, Netns};
use e2e::servers::S3Server;
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Namespaces `a`, `b` (the spokes' regions), `sa`, `sb` (their storage) and links:
///
/// ```text
///   sa 10.251.3.2 ── 10.251.3.1 a 10.251.1.2 ── 10.251.1.1 ROOT 10.251.2.1 ── 10.251.2.2 b ...
///   sa 10.251.4.2 ── 10.251.4.1 ROOT            (sb mirrors sa on 10.251.5/6)
/// ```
///
/// The storage namespaces route only their own links, so `a` reaches `sa` (and the hub in the
/// root namespace reaches both), while `b`'s packets reach `sa` through the root but get no
/// answer. The root forwards between `a` and `b`, so the spokes reach each other. The
/// namespaces (and with them every link) go on drop; forwarding is set back.
struct Regions {
    ns: [Netns; 4],
    forward_before: String,
}

const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A veth pair between the root namespace (`root_ip`) and `ns` (`ns_ip`), both /24.
fn root_link(root_ip: &str, ns: &Netns, ns_ip: &str) {
    let (l, r) = (netns::unique("rl"), netns::unique("rr"));
    netns::ip(&[
        "link", "add", &l, "type", "veth", "peer", "name", &r, "netns", &ns.name,
    ])
    .expect("veth");
    netns::ip(&["addr", "add", &format!("{root_ip}/24"), "dev", &l]).expect("addr");
    netns::ip(&["link", "set", &l, "up"]).expect("up");
    ns.ip(&["addr", "add", &format!("{ns_ip}/24"), "dev", &r])
        .expect("addr");
    ns.ip(&["link", "set", &r, "up"]).expect("up");
}

impl Regions {
    fn build() -> Regions {
        let forward_before = std::fs::read_to_string(FORWARD).unwrap_or_else(|_| "0".into());
        let ns = ["ra", "rb", "rsa", "rsb"].map(|p| Netns::new(p).expect("netns"));
        let [a, b, sa, sb] = &ns;
        root_link("10.251.1.1", a, "10.251.1.2");
        root_link("10.251.2.1", b, "10.251.2.2");
        netns::veth(a, "10.251.3.1/24", sa, "10.251.3.2/24").expect("a-sa");
        root_link("10.251.4.1", sa, "10.251.4.2");
        netns::veth(b, "10.251.5.1/24", sb, "10.251.5.2/24").expect("b-sb");
        root_link("10.251.6.1", sb, "10.251.6.2");
        for (ns, gw, store, via) in [
            (a, "10.251.1.1", "10.251.4.2/32", "10.251.3.2"),
            (b, "10.251.2.1", "10.251.6.2/32", "10.251.5.2"),
        ] {
            ns.ip(&["route", "add", "default", "via", gw])
                .expect("route");
            ns.ip(&["route", "add", store, "via", via]).expect("route");
        }
        std::fs::write(FORWARD, "1").expect("enable forwarding");
        Regions { ns, forward_before }
    }

    fn ns(&self, i: usize) -> &str {
        &self.ns[i].name
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        let _ = std::fs::write(FORWARD, self.forward_before.trim());
    }
}

fn storage_rtt(view: &Value, endpoint: &str) -> Option<u64> {
    view["status"]["rtts"][format!("storage:{endpoint}")].as_u64()
}

#[tokio::test]
async fn a_copy_between_regions_is_relayed_by_the_spoke_near_the_source() {
    e2e::raise_udp_buffers();
    let regions = Regions::build();
    let ip_of = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let s3a = S3Server::start_in(regions.ns(2), ip_of("10.251.4.2"))
        .await
        .expect("moto in sa");
    let s3b = S3Server::start_in(regions.ns(3), ip_of("10.251.6.2"))
        .await
        .expect("moto in sb");
    s3a.create_bucket("src").await.expect("bucket");
    s3b.create_bucket("dst").await.expect("bucket");
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(format!(
            "offload:\n  part_size: {}\n  part_concurrency: 2\n  startup_grace_secs: 0\n\
             network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n",
            8 * MIB
        )),
        bind: Some(ip_of("10.251.1.1")),
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let port = e2e::servers::free_port().to_string();
    let (adv_a, adv_b) = (format!("10.251.1.2:{port}"), format!("10.251.2.2:{port}"));
    let spoke_a = SpokeProc::start_in(
        Some(regions.ns(0)),
        &hub,
        root.path(),
        "near-src",
        &["--advertise", &adv_a],
        &[],
    )
    .await;
    let spoke_b = SpokeProc::start_in(
        Some(regions.ns(1)),
        &hub,
        root.path(),
        "near-dst",
        &["--advertise", &adv_b],
        &[],
    )
    .await;
    wait_healthy(&hub, spoke_a.id).await;
    wait_healthy(&hub, spoke_b.id).await;

    let src_creds = s3_creds(&s3a, "src");
    let dst_creds = s3_creds(&s3b, "dst");
    let size = 40 * MIB + 12_345;
    let sha = write_object(&connector(&src_creds).await, "far.bin", size, 23).await;
    let src = account(&hub, src_creds).await;
    let dst = account(&hub, dst_creds.clone()).await;
    let file_id = first_file_id(&hub, src).await;
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!("/v1/accounts/{src}/storage/files/{file_id}/copy")),
        )
        .header("X-Kloudless-Async", "true")
        .json(&json!({"account": dst, "parent_id": "root", "name": "near.bin"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(r.status(), 202);
    let task: Value = r.json().await.expect("json");
    let id = task["transfer"].as_i64().expect("transfer id");
    let t = until(
        &hub,
        id,
        Duration::from_secs(180),
        "the relayed copy",
        |t| t["state"] == "done",
    )
    .await;

    // The premise: each spoke measured its own region's storage and cannot reach the other's.
    let (ep_a, ep_b) = (
        s3a.endpoint().trim_start_matches("http://").to_owned(),
        s3b.endpoint().trim_start_matches("http://").to_owned(),
    );
    let (va, vb) = (
        spoke_view(&hub, spoke_a.id).await,
        spoke_view(&hub, spoke_b.id).await,
    );
    assert!(
        storage_rtt(&va, &ep_a).is_some_and(|r| r < u64::MAX),
        "{va}"
    );
    assert_eq!(storage_rtt(&va, &ep_b), Some(u64::MAX), "{va}");
    assert!(
        storage_rtt(&vb, &ep_b).is_some_and(|r| r < u64::MAX),
        "{vb}"
    );
    assert_eq!(storage_rtt(&vb, &ep_a), Some(u64::MAX), "{vb}");

    // The spoke near the destination wrote; the one near the source relayed.
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], spoke_b.id, "{t}");
    let note = t["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("relayed by spoke {}", spoke_a.id)),
        "{t}"
    );
    assert_eq!(t["bytes_done"], size, "{t}");
    assert!(t["checksum"].as_str().is_some_and(|c| !c.is_empty()), "{t}");
    assert_eq!(sha_of(&connector(&dst_creds).await, "near.bin").await, sha);
    assert!(
        spoke_b
            .log_text()
            .contains("reading the source through a relay spoke"),
        "{}",
        spoke_b.log_text()
    );

    // The relay answers only holders of a network certificate, and only for grants the hub
    // registered: a made-up grant is refused; a certificate from another CA does not connect.
    let ident_b = spoke::config::Identity::load(&spoke_b.dir).expect("identity");
    let bogus = shared::proto::RelayFrom {
        spoke_id: spoke_a.id,
        addr: adv_a.clone(),
        grant_id: "0123456789abcdef0123456789abcdef".into(),
        expires: i64::MAX,
        signature: shared::proto::Redacted("AAAA".into()),
    };
    let relayed = spoke::relay::Relayed::connect(&ident_b, &bogus, Default::default(), 1)
        .await
        .expect("a network certificate connects");
    use shared::storage::transfer::RangeSource as _;
    let refused = relayed.open(0, 1024).await.err().expect("refused");
    assert!(
        refused.to_string().contains("no such relay grant"),
        "{refused}"
    );
    let other_ca = shared::pki::Ca::generate("not ours", Duration::from_secs(3600)).expect("ca");
    let (key, csr) = shared::pki::new_key_and_csr("intruder").expect("csr");
    let cert = other_ca
        .sign_spoke_csr(
            &csr,
            ident_b.config.spoke_id,
            None,
            Duration::from_secs(3600),
        )
        .expect("cert");
    let intruder = spoke::config::Identity {
        config: ident_b.config.clone(),
        cert_pem: cert,
        key_pem: key,
        ca_pem: ident_b.ca_pem.clone(),
        hub_ca_pem: ident_b.hub_ca_pem.clone(),
        revoked: Default::default(),
    };
    let outcome =
        match spoke::relay::Relayed::connect(&intruder, &bogus, Default::default(), 1).await {
            // TLS 1.3: the client may believe it connected before the server checks its
            // certificate; the first request then fails.
            Ok(r) => r.open(0, 1024).await.err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
    assert!(outcome.is_some(), "a foreign certificate was served");
    drop((spoke_a, spoke_b, hub, s3a, s3b));
    drop(regions);
}

/// The relay over a long, lossy WAN (the lab's emulator: 100 ms RTT, 0.1 % random loss each
/// way, 1 Gbit/s): a 64 MiB copy from region a's S3 server to region b's is written by b's spoke
/// with the bytes relayed by a's, arrives byte-identical, and finishes within a bound generous
/// enough for a loaded machine (a single loss-based stream would need minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_copy_crosses_a_long_lossy_wan() {
    use e2e::wan_lab::{ServerKind, WanLab, WanPath};
    let wan = WanLab::build(
        WanPath {
            rtt_ms: 100.0,
            loss: 0.001,
            rate_bps: Some(1_000_000_000),
        },
        ServerKind::Moto,
    )
    .await
    .expect("lab");
    let size = 64 * MIB + 4321;
    let sha = wan.write_source("far.bin", size).await.expect("source");
    let d = wan
        .deploy(
            std::path::Path::new(crate::spokes::SPOKE),
            "bbr",
            "  part_size: 16777216\n",
        )
        .await
        .expect("deploy");
    let file = d.source_id("far.bin").await.expect("source id");
    let c = d
        .copy(&file, "near.bin", Duration::from_secs(150))
        .await
        .expect("copy");
    assert!(c.done, "not done within 150 s: {}", c.transfer);
    let t = &c.transfer;
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], d.spokes[1].id, "{t}");
    let note = t["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(&format!("relayed by spoke {}", d.spokes[0].id)),
        "{t}"
    );
    assert_eq!(t["bytes_done"], size, "{t}");
    let dst = connector(&wan.stores[1].creds("dst")).await;
    assert_eq!(sha_of(&dst, "near.bin").await, sha);
    let stats = wan.lab.stats("a", "b");
    assert!(stats.dropped_loss > 0, "the WAN lost nothing: {stats:?}");
    // Striped (offload.relay_connections, default 4): each of the first four parts went to a
    // connection of its own, so four connections each carried a whole part.
    let log = d.spokes[1].log();
    assert!(log.contains("stripes=4"), "{log}");
    let carried: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("relay connection closed"))
        .filter_map(|l| {
            let v = l.split("received_bytes=").nth(1)?;
            v.split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        carried.iter().filter(|b| **b >= 16 * MIB).count(),
        4,
        "bytes per connection: {carried:?}"
    );
    eprintln!(
        "64 MiB relayed over 100 ms / 0.1 % loss in {:.1} s ({:.0} Mbit/s); WAN a->b {stats:?}",
        c.secs,
        size as f64 * 8.0 / c.secs / 1e6
    );
}
