//! The steering DNS server against `dig`: authoritative SOA/NS/static records, NXDOMAIN and
//! NODATA with the SOA, `api.<zone>` steered per EDNS Client Subnet (echoed with the scope
//! used), `<region>.api.<zone>` fixed, TCP, garbage ignored; and the steering explanation API.
//! Abuse: a UDP flood from one client network gets its response budget (slipped answers with
//! TC=1 beyond) while another network is still answered, and malformed EDNS Client Subnet
//! options get FORMERR.

use e2e::{HubOptions, TestHub};
use hub::db::RttRecord;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// `dig @addr -p port ARGS +norec +time=2 +tries=1`, the whole output.
fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let o = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            "+norec",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig (Debian package dnsutils)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The answer records' data of a `+short`-less dig output (type, data).
fn answers(out: &str) -> Vec<(String, String)> {
    let mut in_answer = false;
    let mut v = Vec::new();
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                v.push((f[3].to_owned(), f[4..].join(" ")));
            }
        }
    }
    v
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("?")
}

fn flags(out: &str) -> String {
    out.split("flags: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or("")
        .to_owned()
}

const ZONE_YAML: &str = "dns:
  listen: 127.0.0.1:0
  zone: sy.test
  nameservers: [ns1, ns2.sy.test.]
  hostmaster: hostmaster
  ttl_secs: 30
  records:
    - {name: www, type: A, value: 192.0.2.10}
    - {name: '@', type: TXT, value: '\"hello world\"', ttl: 300}
    - {name: mail, type: MX, value: '10 mx.sy.test.'}
  regions:
    - {cidr: 10.9.0.0/16, region: eu-west}
";

async fn steering_hub() -> TestHub {
    steering_hub_with(ZONE_YAML).await
}

async fn steering_hub_with(yaml: &str) -> TestHub {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(yaml.into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let db = &hub.state.db;
    let now = hub::state::now_ms();
    // Two more regions in the directory (their APIs refuse connections: probes fail, but with
    // three hubs one observer is not enough to take them down).
    db.upsert_steering_hub(
        "http://127.0.0.1:9/eu",
        "eu-west",
        &["192.0.2.20".into()],
        now,
    )
    .await
    .expect("eu");
    db.upsert_steering_hub(
        "http://127.0.0.1:9/ap",
        "ap-south",
        &["192.0.2.30".into(), "2001:db8::30".into()],
        now,
    )
    .await
    .expect("ap");
    let rtt = |prefix: &str, region: &str, ms: i64| RttRecord {
        prefix: prefix.into(),
        region: region.into(),
        rtt_us: ms * 1000,
        samples: 5,
        updated_ms: now,
    };
    db.upsert_rtts(&[
        rtt("198.51.100.0/24", "ap-south", 5),
        rtt("198.51.100.0/24", "local", 60),
        rtt("198.51.100.0/24", "eu-west", 90),
    ])
    .await
    .expect("rtts");
    // The snapshot reloads every second; wait until all three regions and the RTTs are in it
    // (a reload may fall between the inserts above).
    e2e::assert_eventually!(
        {
            let snap = hub.state.steering.snapshot();
            snap.hubs.len() == 3 && !snap.rtt.is_empty()
        },
        Duration::from_secs(10),
        "the directory and the RTTs to load"
    );
    hub
}

#[tokio::test]
async fn dig_sees_an_authoritative_steering_zone() {
    let hub = steering_hub().await;
    let dns = hub.dns_addr().expect("dns listening");
    let run = |args: Vec<&'static str>| tokio::task::spawn_blocking(move || dig(dns, &args));

    // SOA and NS: authoritative.
    let soa = run(vec!["sy.test", "SOA"]).await.expect("dig");
    assert_eq!(status(&soa), "NOERROR", "{soa}");
    assert!(flags(&soa).contains("aa"), "{soa}");
    let a = answers(&soa);
    assert_eq!(a.len(), 1, "{soa}");
    assert_eq!(a[0].0, "SOA");
    assert!(
        a[0].1.starts_with("ns1.sy.test. hostmaster.sy.test."),
        "{soa}"
    );
    let ns = run(vec!["sy.test", "NS"]).await.expect("dig");
    let mut names: Vec<String> = answers(&ns).into_iter().map(|(_, d)| d).collect();
    names.sort();
    assert_eq!(names, ["ns1.sy.test.", "ns2.sy.test."], "{ns}");

    // Static records, NXDOMAIN with the SOA.
    let www = run(vec!["www.sy.test", "A"]).await.expect("dig");
    assert_eq!(answers(&www), [("A".into(), "192.0.2.10".into())], "{www}");
    assert!(flags(&www).contains("aa"), "{www}");
    let mx = run(vec!["mail.sy.test", "MX"]).await.expect("dig");
    assert_eq!(
        answers(&mx),
        [("MX".into(), "10 mx.sy.test.".into())],
        "{mx}"
    );
    let nx = run(vec!["nope.sy.test", "A"]).await.expect("dig");
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(
        nx.contains("AUTHORITY SECTION") && nx.contains("SOA"),
        "{nx}"
    );
    let refused = run(vec!["example.org", "A"]).await.expect("dig");
    assert_eq!(status(&refused), "REFUSED", "{refused}");

    // api.<zone> per client subnet: the measured RTT wins, scope echoed.
    let near_ap = run(vec!["api.sy.test", "A", "+subnet=198.51.100.7/24"])
        .await
        .expect("dig");
    assert_eq!(
        answers(&near_ap),
        [("A".into(), "192.0.2.30".into())],
        "{near_ap}"
    );
    assert!(flags(&near_ap).contains("aa"), "{near_ap}");
    assert!(
        near_ap.contains("CLIENT-SUBNET: 198.51.100.0/24/24"),
        "the ECS option is echoed with scope 24: {near_ap}"
    );
    let ttl: Vec<&str> = near_ap
        .lines()
        .filter(|l| l.starts_with("api.sy.test."))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ttl, ["30"], "{near_ap}");
    let v6 = run(vec!["api.sy.test", "AAAA", "+subnet=198.51.100.7/24"])
        .await
        .expect("dig");
    assert_eq!(
        answers(&v6),
        [("AAAA".into(), "2001:db8::30".into())],
        "{v6}"
    );
    // No RTT for this network: the static CIDR map.
    let mapped = run(vec!["api.sy.test", "A", "+subnet=10.9.4.4/24"])
        .await
        .expect("dig");
    assert_eq!(
        answers(&mapped),
        [("A".into(), "192.0.2.20".into())],
        "{mapped}"
    );
    // A /16 source prefix is decided (and scoped) at /16: no data there, the default region.
    let wide = run(vec!["api.sy.test", "A", "+subnet=198.51.100.7/16"])
        .await
        .expect("dig");
    assert_eq!(answers(&wide), [("A".into(), "127.0.0.1".into())], "{wide}");
    assert!(wide.contains("CLIENT-SUBNET: 198.51.0.0/16/16"), "{wide}");
    // No ECS: the resolver's own address (loopback here: the default region).
    let plain = run(vec!["api.sy.test", "A"]).await.expect("dig");
    assert_eq!(
        answers(&plain),
        [("A".into(), "127.0.0.1".into())],
        "{plain}"
    );

    // <region>.api.<zone> is fixed; unknown regions do not exist; other types are NODATA.
    let fixed = run(vec!["eu-west.api.sy.test", "A", "+subnet=198.51.100.7/24"])
        .await
        .expect("dig");
    assert_eq!(
        answers(&fixed),
        [("A".into(), "192.0.2.20".into())],
        "{fixed}"
    );
    assert!(
        fixed.contains("CLIENT-SUBNET: 198.51.100.0/24/0"),
        "{fixed}"
    );
    let mars = run(vec!["mars.api.sy.test", "A"]).await.expect("dig");
    assert_eq!(status(&mars), "NXDOMAIN", "{mars}");
    let nodata = run(vec!["api.sy.test", "TXT"]).await.expect("dig");
    assert_eq!(status(&nodata), "NOERROR", "{nodata}");
    assert!(
        answers(&nodata).is_empty() && nodata.contains("SOA"),
        "{nodata}"
    );

    // TCP.
    let tcp = run(vec!["api.sy.test", "A", "+tcp", "+subnet=198.51.100.7/24"])
        .await
        .expect("dig");
    assert_eq!(answers(&tcp), [("A".into(), "192.0.2.30".into())], "{tcp}");
    let tcp_soa = run(vec!["sy.test", "SOA", "+tcp"]).await.expect("dig");
    assert_eq!(status(&tcp_soa), "NOERROR", "{tcp_soa}");

    // Garbage and truncated datagrams are ignored; the server keeps answering.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let mut valid = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    valid.extend_from_slice(b"\x03api\x02sy\x04test\x00\x00\x01\x00\x01");
    for junk in [
        vec![],
        vec![0xff; 3],
        vec![0u8; 12],
        valid[..valid.len() - 3].to_vec(),
        (0..=255u8).collect::<Vec<u8>>(),
        {
            let mut v = valid.clone();
            v[5] = 40; // 40 questions announced, one present
            v
        },
    ] {
        sock.send_to(&junk, dns).await.expect("send");
    }
    let after = run(vec!["www.sy.test", "A"]).await.expect("dig");
    assert_eq!(
        answers(&after),
        [("A".into(), "192.0.2.10".into())],
        "{after}"
    );
}

#[tokio::test]
async fn the_steering_api_explains_a_decision() {
    let hub = steering_hub().await;
    let get = |client: &str| {
        hub.http
            .get(hub.url(&format!("/v1/network/steering?client={client}")))
            .header("Authorization", hub.meta())
            .send()
    };
    let r = get("198.51.100.7").await.expect("steering");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["prefix"], "198.51.100.0/24", "{v}");
    assert_eq!(v["chosen"], "ap-south", "{v}");
    assert_eq!(
        v["addresses"],
        serde_json::json!(["192.0.2.30", "2001:db8::30"]),
        "{v}"
    );
    assert_eq!(v["ttl"], 30);
    let regions: Vec<&str> = v["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|c| c["region"].as_str())
        .collect();
    assert_eq!(
        regions,
        ["ap-south", "local", "eu-west"],
        "ranked by RTT: {v}"
    );
    assert_eq!(v["candidates"][0]["rtt_ms"], 5.0, "{v}");
    assert!(v["reason"].as_str().unwrap_or("").contains("RTT"), "{v}");
    let r = get("10.9.1.1").await.expect("steering");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["chosen"], "eu-west", "{v}");
    assert_eq!(v["candidates"][0]["basis"], "static_map", "{v}");
    // Bad input and the wrong credentials.
    let r = get("not-an-ip").await.expect("steering");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "invalid_parameters");
    let r = hub
        .http
        .get(hub.url("/v1/network/steering?client=192.0.2.1"))
        .header("Authorization", hub.apikey())
        .send()
        .await
        .expect("steering");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn dns_config_errors_name_the_key() {
    let bad = [
        ("dns:\n  zone: 'bad..zone'\n", "dns.zone"),
        ("dns:\n  ttl_secs: 0\n", "dns.ttl_secs"),
        (
            "dns:\n  records:\n    - {name: www, type: A, value: not-an-ip}\n",
            "dns.records[0].value",
        ),
        (
            "dns:\n  records:\n    - {name: www, type: SRV, value: x}\n",
            "dns.records[0].type",
        ),
        (
            "dns:\n  records:\n    - {name: api, type: A, value: 192.0.2.1}\n",
            "dns.records[0].name",
        ),
        (
            "dns:\n  regions:\n    - {cidr: 10.0.0.0/33, region: x}\n",
            "dns.regions",
        ),
    ];
    let rrl = [
        (
            "dns:\n  rrl: {responses_per_second: 2000000}\n",
            "dns.rrl.responses_per_second",
        ),
        ("dns:\n  rrl: {burst: 0}\n", "dns.rrl.burst"),
        ("dns:\n  rrl: {slip: 11}\n", "dns.rrl.slip"),
        ("dns:\n  rrl: {max_prefixes: 0}\n", "dns.rrl.max_prefixes"),
        ("dns:\n  rrl: {rate: 5}\n", "dns.rrl"),
    ];
    for (yaml, key) in bad.into_iter().chain(rrl) {
        let e = hub::config::Config::from_yaml(yaml, Vec::new()).expect_err(yaml);
        assert!(e.to_string().contains(key), "{yaml} → {e}");
    }
}

/// Our own lookups (spokes dialing hubs, storage probes) go through hickory-resolver, which
/// keeps an answer exactly as long as its TTL: a changed record is seen within one TTL.
#[tokio::test]
async fn our_resolver_honours_short_ttls() {
    let hub = steering_hub_with(&ZONE_YAML.replace("ttl_secs: 30", "ttl_secs: 1")).await;
    let dns = hub.dns_addr().expect("dns listening");
    let r = shared::resolve::Resolver::with_nameserver(dns).expect("resolver");
    let first = r.lookup_host("eu-west.api.sy.test").await.expect("lookup");
    assert_eq!(
        first,
        ["192.0.2.20".parse::<std::net::IpAddr>().expect("ip")]
    );
    hub.state
        .db
        .upsert_steering_hub(
            "http://127.0.0.1:9/eu",
            "eu-west",
            &["192.0.2.21".into()],
            hub::state::now_ms(),
        )
        .await
        .expect("move eu-west");
    let moved: std::net::IpAddr = "192.0.2.21".parse().expect("ip");
    let started = std::time::Instant::now();
    e2e::assert_eventually!(
        r.lookup_host("eu-west.api.sy.test")
            .await
            .is_ok_and(|a| a == [moved]),
        Duration::from_secs(5),
        "the new address after one TTL (1 s) and one snapshot reload (1 s)"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let addr = r.resolve("eu-west.api.sy.test:443").await.expect("resolve");
    assert_eq!(addr, SocketAddr::new(moved, 443));
    assert!(r.lookup_host("mars.api.sy.test").await.is_err());
}

/// A query for `api.sy.test` A with id `id`, and an OPT record carrying `options` (raw EDNS
/// options) when given.
fn query(id: u16, options: Option<&[u8]>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(options.is_some())]);
    q.extend_from_slice(b"\x03api\x02sy\x04test\x00\x00\x01\x00\x01");
    if let Some(opts) = options {
        let len = u16::try_from(opts.len()).expect("options fit");
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        q.extend_from_slice(&len.to_be_bytes());
        q.extend_from_slice(opts);
    }
    q
}

/// One ECS option: family, source and scope prefix lengths, address bytes as given.
fn ecs(family: u16, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
    let mut o = vec![0, 8];
    o.extend_from_slice(&u16::try_from(4 + addr.len()).expect("len").to_be_bytes());
    o.extend_from_slice(&family.to_be_bytes());
    o.extend_from_slice(&[source, scope]);
    o.extend_from_slice(addr);
    o
}

/// Sends `q` from `sock` and returns the reply (at most 2 s).
async fn ask(sock: &tokio::net::UdpSocket, dns: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(q, dns).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let wait = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf));
    let (n, _) = wait.await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

#[tokio::test]
async fn malformed_client_subnets_get_formerr() {
    let hub = steering_hub().await;
    let dns = hub.dns_addr().expect("dns listening");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    // The well-formed option is answered (the control for each case below).
    let good = ecs(1, 24, 0, &[198, 51, 100]);
    let ok = ask(&sock, dns, &query(1, Some(&good)))
        .await
        .expect("reply");
    assert_eq!(rcode(&ok), 0, "a well-formed ECS option is answered");
    assert!(u16::from_be_bytes([ok[6], ok[7]]) >= 1, "with an answer");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a non-zero scope", ecs(1, 24, 24, &[198, 51, 100])),
        ("a trailing address byte", ecs(1, 24, 0, &[198, 51, 100, 7])),
        ("bits set past the prefix", ecs(1, 20, 0, &[198, 51, 100])),
        ("two options", [good.clone(), good.clone()].concat()),
        (
            "an IPv6 trailing byte",
            ecs(2, 48, 0, &[0x20, 1, 0x0d, 0xb8, 0, 1, 9]),
        ),
        (
            "a source longer than IPv4",
            ecs(1, 33, 0, &[198, 51, 100, 7, 0]),
        ),
    ];
    let mut accepted = Vec::new();
    for (i, (what, opt)) in cases.iter().enumerate() {
        let id = 100 + u16::try_from(i).expect("id");
        let r = ask(&sock, dns, &query(id, Some(opt)))
            .await
            .unwrap_or_else(|| panic!("{what}: no reply"));
        assert_eq!(u16::from_be_bytes([r[0], r[1]]), id, "{what}");
        if rcode(&r) != 1 || u16::from_be_bytes([r[6], r[7]]) != 0 {
            accepted.push(*what);
        }
    }
    assert!(
        accepted.is_empty(),
        "these malformed options did not get FORMERR: {accepted:?}"
    );
}

/// 5,000 queries from one client network as fast as loopback takes them: at most the budget
/// (burst + rate × elapsed) is answered, the rest dropped or slipped (TC=1, no records), the
/// reply bytes stay below the query bytes (no amplification), a second network is answered in
/// the middle of the flood, and the flooded client still gets answers over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_gets_its_budget_and_other_networks_are_still_answered() {
    const RATE: f64 = 20.0;
    const BURST: f64 = 40.0;
    const FLOOD: u16 = 5000;
    let yaml = ZONE_YAML.to_owned() + "  rrl: {responses_per_second: 20, burst: 40, slip: 2}\n";
    let hub = steering_hub_with(&yaml).await;
    let dns = hub.dns_addr().expect("dns listening");
    let flooder = std::sync::Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp"),
    );
    // 127.0.1.0/24 is another client network (all of 127/8 is loopback).
    let other = tokio::net::UdpSocket::bind("127.0.1.1:0")
        .await
        .expect("udp on 127.0.1.1");

    #[derive(Default, Debug)]
    struct Seen {
        answered: u64,
        slipped: u64,
        bytes: u64,
    }
    let rx = flooder.clone();
    let receiver = tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut buf = vec![0u8; 4096];
        // Until a second passes without a reply (bounded: at most one reply per query).
        for _ in 0..FLOOD {
            let got = tokio::time::timeout(Duration::from_secs(1), rx.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = got else { break };
            let r = &buf[..n];
            seen.bytes += n as u64;
            let ancount = u16::from_be_bytes([r[6], r[7]]);
            if r[2] & 0x02 != 0 {
                assert_eq!(ancount, 0, "a slipped answer carries no records");
                seen.slipped += 1;
            } else {
                assert!(ancount >= 1, "an answer: {r:?}");
                seen.answered += 1;
            }
        }
        seen
    });

    let started = std::time::Instant::now();
    let mut sent_bytes = 0u64;
    let mut other_answered = None;
    for id in 0..FLOOD {
        let q = query(id, None);
        sent_bytes += q.len() as u64;
        flooder.send_to(&q, dns).await.expect("send");
        if id == FLOOD / 2 {
            // In the middle of the flood, the flooder's budget long spent.
            let r = ask(&other, dns, &query(60_000, None)).await;
            other_answered = Some(r.is_some_and(|r| rcode(&r) == 0 && r[2] & 0x02 == 0));
        }
        if id % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .expect("the receiver ends")
        .expect("receiver");
    let elapsed = started.elapsed().as_secs_f64();
    let budget = BURST + RATE * elapsed + 1.0;
    eprintln!(
        "flood: {FLOOD} queries in {elapsed:.2} s, {} answered (budget {budget:.0}), {} slipped, \
         {} reply bytes for {sent_bytes} query bytes",
        seen.answered, seen.slipped, seen.bytes
    );
    assert!(
        (seen.answered as f64) <= budget,
        "{seen:?}: more answers than the budget {budget:.0} in {elapsed:.2} s"
    );
    assert!(seen.answered >= 1, "the burst is answered: {seen:?}");
    assert!(seen.slipped >= 1, "limited answers slip (TC=1): {seen:?}");
    assert!(
        seen.slipped <= (u64::from(FLOOD) - seen.answered) / 2 + 1,
        "slip 2: at most every second limited answer: {seen:?}"
    );
    assert!(
        seen.bytes < sent_bytes,
        "no amplification: {} reply bytes for {sent_bytes} query bytes",
        seen.bytes
    );
    assert_eq!(
        other_answered,
        Some(true),
        "another client network is answered during the flood"
    );
    // TCP is not limited: the flooded client still gets its answer there.
    let tcp = tokio::task::spawn_blocking(move || dig(dns, &["api.sy.test", "A", "+tcp"]))
        .await
        .expect("dig");
    assert_eq!(answers(&tcp), [("A".into(), "127.0.0.1".into())], "{tcp}");
}

/// A query is never logged above DEBUG: the hub binary at `info` answers queries and its log
/// holds the start-up lines but not one line per query.
#[tokio::test]
async fn queries_are_not_logged_at_info() {
    const HUB: &str = env!("CARGO_BIN_EXE_e2e-hub");
    let dir = tempfile::tempdir().expect("tmp");
    let log_path = dir.path().join("hub.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = e2e::servers::free_port();
    let dns: SocketAddr = format!("127.0.0.1:{}", e2e::servers::free_port())
        .parse()
        .expect("addr");
    let mut cmd = Command::new(HUB);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHYARD_")) {
        cmd.env_remove(k);
    }
    let child = cmd
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .env("SWITCHYARD_LOG", "info")
        .env("SWITCHYARD_DNS__LISTEN", dns.to_string())
        .env("SWITCHYARD_DNS__ZONE", "sy.test")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("hub dev");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut hub = Kill(child);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    e2e::assert_eventually!(
        ask(&sock, dns, &query(1, None)).await.is_some(),
        Duration::from_secs(30),
        "the hub's DNS server to answer"
    );
    for id in 2..22 {
        let r = ask(&sock, dns, &query(id, None)).await.expect("an answer");
        assert_eq!(rcode(&r), 0);
    }
    let _ = hub.0.kill();
    let _ = hub.0.wait();
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        text.contains("steering DNS listening"),
        "the log is written at info: {text}"
    );
    let per_query: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("request:") || (l.contains("sy.test") && !l.contains("DNS listening"))
        })
        .collect();
    assert!(
        per_query.is_empty(),
        "{} log lines about queries at info, e.g. {:?}",
        per_query.len(),
        per_query.first()
    );
}
