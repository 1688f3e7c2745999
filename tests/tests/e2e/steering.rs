//! The steering DNS server against `dig`: authoritative SOA/NS/static records, NXDOMAIN and
//! NODATA with the SOA, `api.<zone>` steered per EDNS Client Subnet (echoed with the scope
//! used), `<region>.api.<zone>` fixed, TCP, garbage ignored; and the steering explanation API.

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
    for (yaml, key) in bad {
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
