//! The tunnel gateway end to end, as root in network namespaces the tests make: two regional
//! networks linked by our gateways (ping, TCP with checksum), interop with wireguard-go in both
//! directions of handshake initiation, peer restart, roaming, garbage datagrams, SIGHUP reload,
//! SIGTERM cleanup, a shortened-timer soak across rekeys; plus the command line and the example
//! configs.

use e2e::netns::{ping, Regions, GW_A_WAN, GW_B_WAN, HOST_A, HOST_B};
use e2e::tunnel_lab::{
    eventually, gateway_yaml, send_udp, tcp_transfer, Gateway, KeyPair, PeerSpec, WgGo,
};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TUNNEL: &str = env!("CARGO_BIN_EXE_e2e-tunnel");

fn bin() -> &'static Path {
    Path::new(TUNNEL)
}

/// Region B as a peer of A's gateway (and the reverse).
fn peer_b(kb: &KeyPair, endpoint: bool) -> PeerSpec {
    PeerSpec {
        name: "region-b".into(),
        public: kb.public.clone(),
        endpoint: endpoint.then(|| format!("{GW_B_WAN}:51820")),
        allowed: vec!["10.20.0.0/16".into(), "10.255.0.2/32".into()],
    }
}

fn peer_a(ka: &KeyPair, endpoint: bool) -> PeerSpec {
    PeerSpec {
        name: "region-a".into(),
        public: ka.public.clone(),
        endpoint: endpoint.then(|| format!("{GW_A_WAN}:51820")),
        allowed: vec!["10.10.0.0/16".into(), "10.255.0.1/32".into()],
    }
}

struct Pair {
    lab: Regions,
    dir: tempfile::TempDir,
    a: Gateway,
    b: Gateway,
    kb: KeyPair,
}

/// Our gateway on both sides; `extra_a` goes into A's `interface:` section.
async fn our_pair(extra_a: &[&str]) -> Pair {
    let lab = Regions::new().expect("namespaces");
    let dir = tempfile::tempdir().expect("dir");
    let (ka, kb) = (KeyPair::new(), KeyPair::new());
    let (ia, ib) = (e2e::netns::unique("wa"), e2e::netns::unique("wb"));
    let ya = gateway_yaml(
        &ia,
        &ka,
        "10.255.0.1/24",
        &dir.path().join(format!("{ia}.sock")),
        &[peer_b(&kb, true)],
        extra_a,
    );
    let yb = gateway_yaml(
        &ib,
        &kb,
        "10.255.0.2/24",
        &dir.path().join(format!("{ib}.sock")),
        &[peer_a(&ka, true)],
        &[],
    );
    let a = Gateway::start(bin(), &lab.gw_a, dir.path(), &ia, &ya)
        .await
        .expect("gateway A");
    let b = Gateway::start(bin(), &lab.gw_b, dir.path(), &ib, &yb)
        .await
        .expect("gateway B");
    Pair { lab, dir, a, b, kb }
}

/// Waits until `host` reaches `dst` (one ping answered), at most `timeout`.
async fn reachable(lab_ns: &e2e::netns::Netns, dst: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    eventually(timeout, "a ping reply through the tunnel", || {
        let ok = ping(lab_ns, dst, 1, "0.2").unwrap_or(0) == 1;
        async move { ok.then_some(()) }
    })
    .await
    .expect("reachable");
    t0.elapsed()
}

/// Host A reaches host B by its private address through our two gateways: ping, then a
/// 64 MiB TCP transfer whose SHA-256 matches on arrival; and back the other way.
#[tokio::test]
async fn regions_linked_by_our_gateways() {
    let p = our_pair(&[]).await;
    reachable(&p.lab.host_a, HOST_B, Duration::from_secs(10)).await;
    assert_eq!(ping(&p.lab.host_a, HOST_B, 5, "0.05").expect("ping"), 5);
    assert_eq!(ping(&p.lab.host_b, HOST_A, 5, "0.05").expect("ping"), 5);
    tcp_transfer(
        &p.lab.host_a,
        &p.lab.host_b,
        HOST_B,
        5001,
        64 << 20,
        Duration::from_secs(30),
    )
    .expect("A to B");
    tcp_transfer(
        &p.lab.host_b,
        &p.lab.host_a,
        HOST_A,
        5002,
        16 << 20,
        Duration::from_secs(30),
    )
    .expect("B to A");
    let sa = p.a.status().await.expect("status");
    let peer = &sa.peers[0];
    assert_eq!(
        peer.endpoint,
        Some(format!("{GW_B_WAN}:51820").parse().expect("addr"))
    );
    assert!(peer.tx_bytes >= 64 << 20, "tx {}", peer.tx_bytes);
    assert!(peer.last_handshake_secs.is_some());
    assert_eq!(sa.dropped.inbound_dropped(), 0, "{:?}", sa.dropped);
    // `tunnel status` itself, text and JSON.
    let text = Command::new(bin())
        .args(["status", "--socket"])
        .arg(&p.a.socket)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("peer: region-b") && text.contains("latest handshake:"),
        "{text}"
    );
    let json = Command::new(bin())
        .args(["status", "--json", "--config"])
        .arg(&p.a.config)
        .output()
        .expect("status --json");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["peers"][0]["public_key"], p.kb.public.as_str());
    assert!(v["peers"][0]["rx_bytes"].as_u64().expect("rx") > 0);
    let mode = std::fs::metadata(&p.a.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    drop(p.dir);
}

/// Our gateway against wireguard-go + wg: first wireguard-go initiates (ours has no endpoint
/// for it and learns it from the handshake), then ours initiates (restarted, with an endpoint).
/// The initiator is the side that measured the handshake RTT.
#[tokio::test]
async fn interop_with_wireguard_go_both_directions() {
    let lab = Regions::new().expect("namespaces");
    let dir = tempfile::tempdir().expect("dir");
    let (ka, kb) = (KeyPair::new(), KeyPair::new());
    let (ia, ib) = (e2e::netns::unique("wa"), e2e::netns::unique("wg"));
    let wg = WgGo::start(
        &lab.gw_b,
        dir.path(),
        &ib,
        &kb,
        "10.255.0.2/24",
        &[peer_a(&ka, true)],
    )
    .await
    .expect("wireguard-go");
    let sock = dir.path().join(format!("{ia}.sock"));
    // Phase 1: ours knows no endpoint, so only wireguard-go can initiate.
    let y = gateway_yaml(&ia, &ka, "10.255.0.1/24", &sock, &[peer_b(&kb, false)], &[]);
    let mut ours = Gateway::start(bin(), &lab.gw_a, dir.path(), &ia, &y)
        .await
        .expect("ours");
    reachable(&lab.host_b, HOST_A, Duration::from_secs(15)).await;
    tcp_transfer(
        &lab.host_b,
        &lab.host_a,
        HOST_A,
        5003,
        8 << 20,
        Duration::from_secs(30),
    )
    .expect("B to A");
    tcp_transfer(
        &lab.host_a,
        &lab.host_b,
        HOST_B,
        5004,
        8 << 20,
        Duration::from_secs(30),
    )
    .expect("A to B");
    let st = ours.status().await.expect("status");
    let peer = &st.peers[0];
    assert_eq!(
        peer.endpoint,
        Some(format!("{GW_B_WAN}:51820").parse().expect("addr")),
        "learnt from the handshake"
    );
    assert!(peer.handshakes >= 1);
    assert_eq!(peer.handshake_rtt_ms, None, "wireguard-go initiated");
    assert!(wg.latest_handshake().expect("wg show") > 0);
    assert!(ours.stop().expect("stop").success());

    // Phase 2: ours restarts with the endpoint and initiates as soon as it is up.
    let y = gateway_yaml(&ia, &ka, "10.255.0.1/24", &sock, &[peer_b(&kb, true)], &[]);
    let ours = Gateway::start(bin(), &lab.gw_a, dir.path(), &ia, &y)
        .await
        .expect("ours again");
    reachable(&lab.host_a, HOST_B, Duration::from_secs(15)).await;
    tcp_transfer(
        &lab.host_a,
        &lab.host_b,
        HOST_B,
        5005,
        8 << 20,
        Duration::from_secs(30),
    )
    .expect("A to B");
    let st = ours.status().await.expect("status");
    assert!(
        st.peers[0].handshake_rtt_ms.is_some(),
        "ours initiated: {:?}",
        st.peers[0]
    );
}

/// A peer restarts: traffic resumes within one handshake retry (REKEY_TIMEOUT, 5 s), because
/// a gateway starts a handshake to every peer with a known endpoint as it comes up. Then
/// gateway B changes address: A follows it after B's first authenticated datagram, and not
/// after a forged one.
#[tokio::test]
async fn peer_restart_and_roaming() {
    let mut p = our_pair(&[]).await;
    reachable(&p.lab.host_a, HOST_B, Duration::from_secs(10)).await;

    // Restart B (SIGKILL: no goodbye) and measure until A's host reaches B's again.
    p.b.proc.signal("KILL").expect("kill");
    p.b.proc.wait(Duration::from_secs(5)).expect("killed");
    let config = p.b.config.clone();
    let socket = p.b.socket.clone();
    let iface = p.b.iface.clone();
    let restarted = Instant::now();
    p.b = Gateway::run(bin(), &p.lab.gw_b, config, socket, &iface)
        .await
        .expect("B again");
    reachable(&p.lab.host_a, HOST_B, Duration::from_secs(10)).await;
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "traffic resumed after {took:?}"
    );

    // B moves from 192.0.2.2 to 192.0.2.3. A forged datagram from the new address first.
    let moved: SocketAddr = "192.0.2.3:51820".parse().expect("addr");
    let wan = p.lab.gw_b_wan.clone();
    // Deleting first: removing a primary address also removes its secondaries.
    p.lab
        .gw_b
        .ip(&["address", "del", "192.0.2.2/24", "dev", &wan])
        .expect("del address");
    p.lab
        .gw_b
        .ip(&["address", "add", "192.0.2.3/24", "dev", &wan])
        .expect("add address");
    let before = p.a.status().await.expect("status");
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&[0xab; 60]);
    let target: SocketAddr = format!("{GW_A_WAN}:51820").parse().expect("addr");
    // From another port, as B's gateway owns 51820 there.
    send_udp(
        &p.lab.gw_b,
        "192.0.2.3:40000".parse().expect("addr"),
        target,
        vec![forged],
    )
    .expect("send");
    eventually(
        Duration::from_secs(5),
        "the forged datagram counted",
        || {
            let a = &p.a;
            let was = before.dropped.inbound_dropped();
            async move {
                let now = a.status().await.ok()?;
                (now.dropped.inbound_dropped() > was).then_some(())
            }
        },
    )
    .await
    .expect("counted");
    let st = p.a.status().await.expect("status");
    assert_eq!(
        st.peers[0].endpoint,
        Some(format!("{GW_B_WAN}:51820").parse().expect("addr")),
        "a forged datagram moved the endpoint"
    );
    // B's host sends: B's first authenticated datagram comes from the new address.
    reachable(&p.lab.host_b, HOST_A, Duration::from_secs(10)).await;
    let st = p.a.status().await.expect("status");
    assert_eq!(st.peers[0].endpoint, Some(moved));
    assert!(st.peers[0].roams >= 1);
    assert_eq!(ping(&p.lab.host_a, HOST_B, 3, "0.05").expect("ping"), 3);
}

/// Garbage and truncated datagrams at the gateway's port: each dropped and counted, the
/// gateway keeps running and carrying traffic.
#[tokio::test]
async fn garbage_datagrams_are_dropped_and_counted() {
    let p = our_pair(&[]).await;
    reachable(&p.lab.host_a, HOST_B, Duration::from_secs(10)).await;
    let before = p.a.status().await.expect("status").dropped;
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![4, 0, 0],
        vec![1, 0, 0, 0],
        [vec![1, 0, 0, 0], vec![0; 143]].concat(), // truncated initiation
        [vec![1, 0, 0, 0], vec![7; 144]].concat(), // initiation, bad MAC
        [vec![2, 0, 0, 0], vec![0; 80]].concat(),  // truncated response
        [vec![3, 0, 0, 0], vec![9; 60]].concat(),  // cookie for nobody
        [vec![4, 0, 0, 0], vec![0; 27]].concat(),  // data shorter than its header + tag
        [vec![4, 1, 0, 0], vec![0; 100]].concat(), // reserved bytes set
        vec![0xff; 1400],
    ];
    let mut state = 12345u32;
    for len in [33usize, 200, 1000, 1452] {
        let mut d = vec![4u8, 0, 0, 0];
        d.extend((4..len).map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 16) as u8
        }));
        datagrams.push(d);
    }
    let n = datagrams.len() as u64;
    let target: SocketAddr = format!("{GW_A_WAN}:51820").parse().expect("addr");
    send_udp(
        &p.lab.gw_b,
        "192.0.2.2:40001".parse().expect("addr"),
        target,
        datagrams,
    )
    .expect("send");
    let a = &p.a;
    let want = before.inbound_dropped() + n;
    let after = eventually(
        Duration::from_secs(5),
        "every datagram counted",
        || async move {
            let now = a.status().await.ok()?.dropped;
            (now.inbound_dropped() >= want).then_some(now)
        },
    )
    .await
    .expect("counted");
    assert_eq!(
        after.inbound_dropped(),
        before.inbound_dropped() + n,
        "{after:?}"
    );
    assert!(after.malformed > before.malformed && after.unauthenticated > before.unauthenticated);
    let mut a_proc = p.a;
    assert!(a_proc.proc.running(), "the gateway survived");
    assert_eq!(ping(&p.lab.host_a, HOST_B, 3, "0.05").expect("ping"), 3);
}

/// SIGHUP adds and removes a peer (and its route) without touching the session of the peer
/// that stayed; a broken config on SIGHUP is refused and the gateway keeps running. SIGTERM
/// removes the routes, the interface and the control socket.
#[tokio::test]
async fn sighup_reload_and_sigterm_cleanup() {
    let mut p = our_pair(&[]).await;
    reachable(&p.lab.host_a, HOST_B, Duration::from_secs(10)).await;
    let before = p.a.status().await.expect("status").peers[0].clone();
    let original = std::fs::read_to_string(&p.a.config).expect("config");
    let extra = KeyPair::new();
    let added = format!(
        "{original}  - name: region-c\n    public_key: {}\n    allowed_ips: [10.30.0.0/16]\n",
        extra.public
    );
    std::fs::write(&p.a.config, &added).expect("write");
    p.a.proc.signal("HUP").expect("hup");
    let a = &p.a;
    eventually(Duration::from_secs(5), "the new peer", || async move {
        (a.status().await.ok()?.peers.len() == 2).then_some(())
    })
    .await
    .expect("reloaded");
    assert!(p
        .lab
        .gw_a
        .routes()
        .expect("routes")
        .contains("10.30.0.0/16"));
    let kept = p.a.status().await.expect("status").peers[0].clone();
    assert_eq!(
        kept.handshakes, before.handshakes,
        "the session of region-b was kept"
    );
    assert!(kept.last_handshake_secs >= before.last_handshake_secs);
    assert_eq!(ping(&p.lab.host_a, HOST_B, 3, "0.05").expect("ping"), 3);

    // A broken config is refused; everything keeps running.
    std::fs::write(&p.a.config, "interface: {name: 7}\n").expect("write");
    p.a.proc.signal("HUP").expect("hup");
    eventually(Duration::from_secs(5), "the refusal in the log", || {
        let ok = p.a.proc.output().contains("reload refused");
        async move { ok.then_some(()) }
    })
    .await
    .expect("refused");
    assert_eq!(p.a.status().await.expect("status").peers.len(), 2);

    // Back to one peer: the route goes, region-b's session stays.
    std::fs::write(&p.a.config, &original).expect("write");
    p.a.proc.signal("HUP").expect("hup");
    let a = &p.a;
    eventually(Duration::from_secs(5), "the peer removed", || async move {
        (a.status().await.ok()?.peers.len() == 1).then_some(())
    })
    .await
    .expect("reloaded");
    assert!(!p
        .lab
        .gw_a
        .routes()
        .expect("routes")
        .contains("10.30.0.0/16"));
    assert_eq!(
        p.a.status().await.expect("status").peers[0].handshakes,
        before.handshakes
    );

    let iface = p.a.iface.clone();
    assert!(p.lab.gw_a.has_link(&iface));
    assert!(p.a.stop().expect("stop").success(), "{}", p.a.proc.output());
    assert!(!p.lab.gw_a.has_link(&iface), "interface removed");
    let routes = p.lab.gw_a.routes().expect("routes");
    assert!(
        !routes.contains("10.20.0.0/16") && !routes.contains(&iface),
        "{routes}"
    );
    assert!(!p.a.socket.exists(), "control socket removed");
}

/// Traffic both ways across at least three rekeys with no one-way stall. CI shortens the
/// session lifetime with `rekey_after_secs: 2` (boringtun's REKEY_AFTER_TIME is a 120 s
/// constant; `bench tunnel-soak` runs the full-length version). Pings every 50 ms in both
/// directions at once: a deaf direction would lose a run of them.
#[tokio::test]
async fn soak_across_rekeys() {
    let p = our_pair(&["rekey_after_secs: 2"]).await;
    reachable(&p.lab.host_a, HOST_B, Duration::from_secs(10)).await;
    let start = p.a.status().await.expect("status").peers[0].handshakes;
    let (ha, hb) = (p.lab.host_a.name.clone(), p.lab.host_b.name.clone());
    let count = 180; // 9 s at 50 ms
    let pinger = |ns: String, dst: &'static str| {
        std::thread::spawn(move || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    &count.to_string(),
                    "-i",
                    "0.05",
                    "-W",
                    "1",
                    dst,
                ])
                .output()
        })
    };
    let ab = pinger(ha, HOST_B);
    let ba = pinger(hb, HOST_A);
    // Meanwhile a TCP transfer each way.
    tcp_transfer(
        &p.lab.host_a,
        &p.lab.host_b,
        HOST_B,
        5006,
        32 << 20,
        Duration::from_secs(30),
    )
    .expect("A to B");
    tcp_transfer(
        &p.lab.host_b,
        &p.lab.host_a,
        HOST_A,
        5007,
        32 << 20,
        Duration::from_secs(30),
    )
    .expect("B to A");
    let received = |out: std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.contains("received"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let got_ab = received(ab.join().expect("thread").expect("ping"));
    let got_ba = received(ba.join().expect("thread").expect("ping"));
    let end = p.a.status().await.expect("status");
    let rekeys = end.peers[0].handshakes - start;
    assert!(rekeys >= 3, "only {rekeys} rekeys");
    // A rekey may cost a packet in flight; a stall would cost many.
    assert!(
        got_ab >= count - 3,
        "A->B: {got_ab}/{count} replies across {rekeys} rekeys"
    );
    assert!(
        got_ba >= count - 3,
        "B->A: {got_ba}/{count} replies across {rekeys} rekeys"
    );
    let b = p.b.status().await.expect("status");
    assert_eq!(b.dropped.inbound_dropped(), 0, "{:?}", b.dropped);
}

/// Keys from `tunnel keygen`/`pubkey` and `wg genkey`/`pubkey` are interchangeable.
#[test]
fn keys_interchangeable_with_wg() {
    if e2e::servers::which("wg").is_none() {
        panic!("wg not found (Debian package wireguard-tools; .ci/install-deps.sh installs it)");
    }
    let pipe = |cmd: &str, args: &[&str], input: &str| -> String {
        use std::io::Write as _;
        let mut c = Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = c.wait_with_output().expect("wait");
        assert!(out.status.success(), "{cmd} {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let ours = pipe(TUNNEL, &["keygen"], "");
    assert_eq!(
        pipe("wg", &["pubkey"], &ours),
        pipe(TUNNEL, &["pubkey"], &ours)
    );
    let theirs = pipe("wg", &["genkey"], "");
    assert_eq!(
        pipe("wg", &["pubkey"], &theirs),
        pipe(TUNNEL, &["pubkey"], &theirs)
    );
    let bad = Command::new(TUNNEL)
        .arg("pubkey")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!bad.status.success());
}

/// `tunnel up` with a bad config names the key; a key file others can read is refused, and so
/// is a config others can read that holds the key inline.
#[test]
fn bad_configs_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().expect("dir");
    let k = KeyPair::new();
    let path = dir.path().join("gw.yaml");
    let up_with_mode = |yaml: &str, mode: u32| {
        std::fs::write(&path, yaml).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let out = Command::new(TUNNEL)
            .arg("up")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let up = |yaml: &str| up_with_mode(yaml, 0o600);
    let good = |key_line: &str| {
        format!(
            "interface:\n  name: wgx\n  {key_line}\n  addresses: [10.255.0.1/24]\npeers:\n  - public_key: {}\n    allowed_ips: [10.20.0.0/16]\n",
            KeyPair::new().public
        )
    };
    let e =
        up(&good(&format!("private_key: {}", k.private)).replace("10.20.0.0/16", "10.20.0.0/40"));
    assert!(e.contains("peers[0].allowed_ips[0]"), "{e}");
    let e = up(&good(&format!("private_key: {}", k.private))
        .replace("  addresses:", "  listen_port: 70000\n  addresses:"));
    assert!(e.contains("interface.listen_port"), "{e}");
    let key_file = dir.path().join("gw.key");
    std::fs::write(&key_file, &k.private).expect("write");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let e = up(&good("private_key_file: gw.key"));
    assert!(
        e.contains("interface.private_key_file") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(
        !e.contains(&k.private),
        "the key leaked into the error: {e}"
    );
    // Otherwise valid: only the exposure stops it.
    let e = up_with_mode(&good(&format!("private_key: {}", k.private)), 0o644);
    assert!(
        e.contains(&path.display().to_string()) && e.contains("mode 0644"),
        "an inline key in a world-readable config: {e}"
    );
    assert!(
        !e.contains(&k.private),
        "the key leaked into the error: {e}"
    );
}

/// Every example in `config/tunnel/` parses (with a generated 0600 key file in place of the
/// one it names).
#[test]
fn example_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tunnel");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).expect("config/tunnel") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let dir = tempfile::tempdir().expect("dir");
        let key_name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("private_key_file:"))
            .and_then(|v| v.split('#').next())
            .map(|v| v.trim().to_owned())
            .expect("examples name a key file");
        let key_path = dir
            .path()
            .join(Path::new(&key_name).file_name().expect("name"));
        std::fs::write(&key_path, KeyPair::new().private).expect("key");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let text = text.replace(&key_name, &key_path.display().to_string());
        let c = tunnel::config::Config::from_yaml(&text, dir.path())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!c.peers.is_empty(), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 2, "expected an example per region");
}
