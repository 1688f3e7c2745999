//! The WAN link emulator and the multi-region lab (root, real namespaces, TUN devices, ping and
//! iperf3): configured RTTs show in ping, also after a change mid-test; a rate limit holds and
//! the emulator stays on time under load; random loss is as configured; queue-limit drops are
//! counted exactly; a location can go down and come back; the root namespace reaches every
//! location both ways; teardown leaves nothing behind, also after a panic.

use e2e::lab::{iperf3_bps, Lab, LabSpec, ROOT};
use e2e::linkemu::QueueLimit;
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

/// Three regions at 10/80/150 ms and a client near eu-west.
fn three_regions() -> Lab {
    Lab::build(
        LabSpec::new()
            .region("us-east")
            .region("eu-west")
            .region("ap-south")
            .client("client-eu", "eu-west")
            .rtt("us-east", "eu-west", 80.0)
            .rtt("eu-west", "ap-south", 10.0)
            .rtt("us-east", "ap-south", 150.0),
    )
    .expect("lab")
}

/// The median ping RTT from `from` to `to`, checked against `want_ms` (never early, at most
/// 2 ms late: the suite runs ~220 tests on two cores at once, and the emulator's thread shares
/// them; `bench linkemu` measures its accuracy on a quiet machine).
fn assert_rtt(lab: &Lab, from: &str, to: &str, want_ms: f64) {
    let p = lab
        .udp_ping(from, to, 7, Duration::from_millis(20))
        .expect("udp ping");
    let median = p
        .median_ms()
        .unwrap_or_else(|| panic!("{from} -> {to}: no replies"));
    assert!(
        median >= want_ms - 0.05 && median <= want_ms + 2.0,
        "{from} -> {to}: median RTT {median} ms, configured {want_ms} ms ({:?})",
        p.rtts_ms
    );
}

#[test]
fn configured_rtts_show_in_ping() {
    let lab = three_regions();
    let pairs = [
        ("us-east", "eu-west", 80.0),
        ("eu-west", "ap-south", 10.0),
        ("ap-south", "us-east", 150.0),
        ("client-eu", "eu-west", 2.0),
        ("client-eu", "us-east", 80.0),
        ("client-eu", "ap-south", 10.0),
        (ROOT, "ap-south", 0.0),
        ("us-east", ROOT, 0.0),
    ];
    std::thread::scope(|s| {
        for (a, b, ms) in pairs {
            let lab = &lab;
            s.spawn(move || assert_rtt(lab, a, b, ms));
        }
    });

    // Conditions change while the lab runs.
    lab.set_rtt("us-east", "eu-west", 40.0);
    assert_rtt(&lab, "eu-west", "us-east", 40.0);
    assert_eq!(
        lab.link("us-east", "eu-west").delay,
        Duration::from_millis(20)
    );
    let s = lab.stats("us-east", "eu-west");
    assert!(s.packets > 0, "{s:?}");
    assert_eq!(
        s.dropped_loss + s.dropped_queue + s.dropped_down,
        0,
        "{s:?}"
    );
}

#[test]
fn rate_limit_holds_and_timing_stays_accurate_under_load() {
    let lab = Lab::build(
        LabSpec::new()
            .region("a")
            .region("b")
            .rtt("a", "b", 20.0)
            .rate_bps(Some(100_000_000)),
    )
    .expect("lab");

    // Saturating TCP through 100 Mbit/s: goodput just under the rate, and the emulator writes
    // packets on time (serialization + delay): the median within 250 µs, 95% within 1 ms. The
    // tail (p99) depends on what else the host runs; `bench linkemu` measures it quietly.
    let before = lab.stats("a", "b");
    let report = lab.iperf3("b", "a", 3, &["-C", "cubic"]).expect("iperf3");
    let bps = iperf3_bps(&report).expect("iperf3 result");
    assert!(
        (85e6..=100e6).contains(&bps),
        "100 Mbit/s link carried {:.1} Mbit/s",
        bps / 1e6
    );
    let s = lab.stats("a", "b").since(&before);
    assert!(s.packets > 20_000, "{s:?}");
    let (p50, p95) = (s.late_quantile(0.5), s.late_quantile(0.95));
    assert!(
        p50.is_some_and(|l| l <= Duration::from_micros(250))
            && p95.is_some_and(|l| l <= Duration::from_millis(1)),
        "lateness p50 {p50:?} p95 {p95:?}: {s:?}"
    );

    // A 100 Mbit/s flow on a link with room for it: ping RTT within 1 ms of the configured.
    lab.set_rate("a", "b", Some(1_000_000_000));
    let ping = std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            lab.udp_ping("a", "b", 40, Duration::from_millis(50))
        });
        let report = lab.iperf3("b", "a", 3, &["-b", "100M"]).expect("iperf3");
        let bps = iperf3_bps(&report).expect("iperf3 result");
        assert!(bps > 90e6, "the load was {:.1} Mbit/s", bps / 1e6);
        pinger.join().expect("pinger").expect("ping")
    });
    let median = ping.median_ms().expect("replies");
    assert!(
        (20.0..=21.0).contains(&median),
        "RTT under a 100 Mbit/s load: median {median} ms, configured 20 ({:?})",
        ping.rtts_ms
    );

    // Unshaped, the emulator is far from the bottleneck of a 100 Mbit/s lab.
    lab.set_rate("a", "b", None);
    lab.set_rtt("a", "b", 0.0);
    let report = lab.iperf3("b", "a", 2, &[]).expect("iperf3");
    let bps = iperf3_bps(&report).expect("iperf3 result");
    assert!(bps > 300e6, "unshaped: {:.1} Mbit/s", bps / 1e6);
}

#[test]
fn random_loss_is_as_configured() {
    let lab = Lab::build(
        LabSpec::new()
            .region("a")
            .region("b")
            .rtt("a", "b", 2.0)
            .loss(0.10),
    )
    .expect("lab");
    let p = lab
        .ping("a", lab.addr("b"), 1000, Duration::from_millis(2))
        .expect("ping");
    // Each echo crosses two lossy links: 0.9² = 81 % come back (σ ≈ 1.2 %).
    let ratio = p.received() as f64 / 1000.0;
    assert!(
        (0.75..=0.87).contains(&ratio),
        "{ratio} of the pings came back"
    );
    let s = lab.stats("a", "b");
    let offered = s.packets + s.dropped_loss;
    assert_eq!(offered, 1000, "{s:?}");
    let lost = s.dropped_loss as f64 / offered as f64;
    assert!((0.07..=0.13).contains(&lost), "a -> b lost {lost}: {s:?}");

    // Loss changes at runtime too.
    lab.set_loss("a", "b", 0.0);
    let p = lab
        .ping("a", lab.addr("b"), 50, Duration::from_millis(2))
        .expect("ping");
    assert_eq!(p.received(), 50);
}

#[test]
fn queue_limit_drops_are_counted() {
    let lab = Lab::build(
        LabSpec::new()
            .region("a")
            .region("b")
            .rtt("a", "b", 2.0)
            .rate_bps(Some(10_000_000))
            .queue(QueueLimit::Packets(20)),
    )
    .expect("lab");
    let dst = SocketAddrV4::new(lab.addr("b"), 9000);
    let rx = lab
        .ns("b")
        .run(move || UdpSocket::bind(dst))
        .join()
        .expect("thread")
        .expect("netns")
        .expect("bind");
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // 300 datagrams of 1000 bytes at once into a 10 Mbit/s link that queues 20.
    lab.ns("a")
        .run(move || -> std::io::Result<()> {
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..300u32 {
                let mut payload = [0u8; 1000];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                tx.send_to(&payload, dst)?;
            }
            Ok(())
        })
        .join()
        .expect("thread")
        .expect("netns")
        .expect("send");
    let mut got = 0u64;
    let mut buf = [0u8; 2000];
    while rx.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    let s = lab.stats("a", "b");
    assert_eq!(s.packets + s.dropped_queue, 300, "{s:?}");
    assert_eq!(got, s.packets, "received vs delivered: {s:?}");
    assert!(s.dropped_queue >= 200, "{s:?}");
    assert_eq!(s.dropped_loss + s.dropped_down, 0, "{s:?}");
}

#[test]
fn location_goes_down_and_comes_back() {
    let lab = three_regions();
    lab.set_down("eu-west", true);
    let p = lab
        .ping(
            "us-east",
            lab.addr("eu-west"),
            3,
            Duration::from_millis(100),
        )
        .expect("ping");
    assert_eq!(p.received(), 0, "eu-west is down: {p:?}");
    let p = lab
        .ping(ROOT, lab.addr("eu-west"), 2, Duration::from_millis(100))
        .expect("ping");
    assert_eq!(p.received(), 0, "down for the root too: {p:?}");
    assert!(lab.stats("us-east", "eu-west").dropped_down >= 3);
    // The others are unaffected.
    assert_rtt(&lab, "us-east", "ap-south", 150.0);

    lab.set_down("eu-west", false);
    assert_rtt(&lab, "us-east", "eu-west", 80.0);
}

#[test]
fn root_namespace_reaches_every_location_both_ways() {
    let lab = three_regions();
    // The test process (root) to a server in a location...
    let hub = SocketAddrV4::new(lab.addr("eu-west"), 8443);
    let listener = lab
        .ns("eu-west")
        .run(move || TcpListener::bind(hub))
        .join()
        .expect("thread")
        .expect("netns")
        .expect("bind in eu-west");
    let conn = TcpStream::connect_timeout(&hub.into(), Duration::from_secs(5)).expect("connect");
    let (_, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.addr(ROOT)));
    drop(conn);

    // ... and a location to a server in the root namespace (a shared database, say).
    let db = TcpListener::bind(SocketAddrV4::new(lab.addr(ROOT), 0)).expect("bind in root");
    let db_addr = db.local_addr().expect("addr");
    let peer = lab
        .ns("ap-south")
        .run(move || {
            TcpStream::connect_timeout(&db_addr, Duration::from_secs(5)).map(|s| s.local_addr())
        })
        .join()
        .expect("thread")
        .expect("netns")
        .expect("connect from ap-south")
        .expect("local addr");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.addr("ap-south")));

    // A second address in a location is reachable too.
    let extra = lab.add_address("us-east").expect("address");
    assert_eq!(extra.octets()[3], 2);
    let p = lab
        .ping("client-eu", extra, 3, Duration::from_millis(50))
        .expect("ping");
    assert_eq!(p.received(), 3);
}

/// What a lab leaves in the root namespace: its namespaces, its TUN device, its routes.
struct Traces {
    namespaces: Vec<String>,
    tun: String,
    block: String,
}

fn traces(lab: &Lab) -> Traces {
    Traces {
        namespaces: lab
            .names()
            .into_iter()
            .filter(|n| *n != ROOT)
            .map(|n| lab.ns(n).name.clone())
            .collect(),
        tun: lab.interface(ROOT).to_owned(),
        block: lab.block().to_string(),
    }
}

fn assert_gone(t: &Traces) {
    let out = |args: &[&str]| {
        String::from_utf8_lossy(&Command::new("ip").args(args).output().expect("ip").stdout)
            .into_owned()
    };
    let list = out(&["netns", "list"]);
    for n in &t.namespaces {
        assert!(
            !list.split_whitespace().any(|w| w == n),
            "namespace {n} left"
        );
    }
    assert!(
        !out(&["-o", "link", "show"]).contains(&format!(" {}:", t.tun)),
        "device {} left",
        t.tun
    );
    assert_eq!(out(&["route", "show", "root", &t.block]).trim(), "");
}

#[test]
fn teardown_leaves_nothing_even_after_a_panic() {
    let lab = three_regions();
    let t = traces(&lab);
    let list = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    assert!(t.namespaces.iter().all(|n| list.contains(n.as_str())));
    drop(lab);
    assert_gone(&t);

    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let lab = three_regions();
        tx.send(traces(&lab)).expect("send");
        panic!("a test failing with the lab up");
    })
    .join();
    assert!(r.is_err());
    assert_gone(&rx.recv().expect("traces"));
}
