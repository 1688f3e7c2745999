//! Who is a hub and who is a spoke, told apart by certificates rather than names: a spoke
//! cannot enroll under a hub's name, a certificate from the spoke CA (whatever names it
//! carries) is refused as a hub by running spokes and by joining ones, and a join string
//! whose hub address was swapped leaks nothing to the impostor.

use crate::spokes::{enroll, enrolled_id, join_token, text, wait_healthy, SpokeProc};
use e2e::{assert_eventually, TestHub};
use shared::join::JoinString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A QUIC server speaking the hub's ALPN with a certificate the spoke CA issued for the hub's
/// name (what a spoke enrolled under the hub's name would hold). It counts the bytes anyone
/// sends it on any stream: the secrets an impostor would capture.
struct Impostor {
    addr: std::net::SocketAddr,
    received: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    endpoint: quinn::Endpoint,
}

impl Impostor {
    async fn start(hub: &TestHub) -> Impostor {
        let spoke_ca = &hub.state.network.spoke_ca;
        let (key, csr) = shared::pki::new_key_and_csr("impostor").expect("csr");
        let cert = spoke_ca
            .sign_spoke_csr(
                &csr,
                4242,
                Some(shared::pki::HUB_SERVER_NAME),
                Duration::from_secs(3600),
            )
            .expect("a spoke certificate naming the hub");
        let chain = format!("{cert}{}", spoke_ca.cert_pem);
        let tls =
            shared::pki::hub_server_config(&spoke_ca.cert_pem, &chain, &key, shared::proto::ALPN)
                .expect("tls");
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint =
            quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let (received, handshakes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (ep, r, h) = (endpoint.clone(), received.clone(), handshakes.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (r, h) = (r.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    h.fetch_add(1, Ordering::SeqCst);
                    while let Ok((_send, mut recv)) = conn.accept_bi().await {
                        let r = r.clone();
                        tokio::spawn(async move {
                            let mut buf = [0u8; 4096];
                            while let Ok(Some(n)) = recv.read(&mut buf).await {
                                r.fetch_add(n, Ordering::SeqCst);
                            }
                        });
                    }
                });
            }
        });
        Impostor {
            addr: endpoint.local_addr().expect("addr"),
            received,
            handshakes,
            endpoint,
        }
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

#[tokio::test]
async fn a_spoke_cannot_enroll_under_a_hub_name() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let zone = hub.state.config.dns.zone.clone();
    for (i, name) in [
        shared::pki::HUB_SERVER_NAME.to_owned(),
        "HUB.Switchyard.Internal.".to_owned(),
        format!("spoke-1.{}", shared::pki::HUB_SERVER_NAME),
        format!("api.{zone}"),
        format!("eu.api.{zone}"),
    ]
    .iter()
    .enumerate()
    {
        let join = join_token(&hub, "local").await;
        let dir = root.path().join(format!("s{i}"));
        // A name cannot be bound: the spoke binds loopback and advertises the name, which the
        // hub must refuse.
        let o = enroll(
            &join,
            &dir,
            &[
                "--advertise",
                &format!("{name}:443"),
                "--listen",
                "127.0.0.1:443",
            ],
        )
        .await;
        assert!(!o.status.success(), "{name} was accepted");
        assert!(
            text(&o.stderr).contains("not available to a spoke"),
            "{name}: {}",
            text(&o.stderr)
        );
        assert!(!dir.join("spoke.yaml").exists());
        // The refusal did not burn the token.
        let o = enroll(
            &join,
            &dir,
            &[
                "--advertise",
                &format!("spoke{i}.example.net:443"),
                "--listen",
                "127.0.0.1:443",
            ],
        )
        .await;
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
}

#[tokio::test]
async fn a_spoke_certificate_cannot_serve_as_a_hub() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let impostor = Impostor::start(&hub).await;

    // A legitimate spoke whose hub list was pointed at the impostor (a hijacked DNS name, a
    // poisoned route): it must refuse the handshake and send nothing, its hello included.
    let join = join_token(&hub, "local").await;
    let dir = root.path().join("victim");
    let id = enrolled_id(&enroll(&join, &dir, &["--name", "victim"]).await);
    let cfg_path = dir.join("spoke.yaml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    let real = hub.state.network.advertise().expect("quic").to_owned();
    assert!(cfg.contains(&real), "{cfg}");
    std::fs::write(&cfg_path, cfg.replace(&real, &impostor.addr.to_string())).expect("rewrite");
    let victim = SpokeProc::run(dir, id, &[]);
    assert_eventually!(
        victim.log_text().contains("certificate"),
        Duration::from_secs(30),
        "the spoke to refuse the impostor's certificate"
    );
    assert!(
        !victim.log_text().contains("connected to hub"),
        "{}",
        victim.log_text()
    );
    assert_eq!(
        impostor.received.load(Ordering::SeqCst),
        0,
        "the spoke spoke to the impostor"
    );
    assert_eq!(impostor.handshakes.load(Ordering::SeqCst), 0);
    drop(victim);

    // A join string whose hub address was swapped for the impostor's: enrollment fails before
    // the token's secret is sent, and the token still works at the real hub.
    let join = join_token(&hub, "local").await;
    let mut j = JoinString::parse(&join).expect("parse");
    j.quic = impostor.addr.to_string();
    let o = enroll(
        &j.encode(),
        &root.path().join("joiner"),
        &["--timeout", "5"],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not the one this join string was made for"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        impostor.received.load(Ordering::SeqCst),
        0,
        "the secret reached the impostor"
    );
    let o = enroll(&join, &root.path().join("joiner"), &[]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// What a spoke's relay answers a peer: `Ok(message)` when a request reached the grant lookup
/// (a made-up grant is refused there), `Err(why)` when the peer was refused before that.
async fn relay_attempt(relay: &spoke::relay::Relayed) -> Result<String, String> {
    use shared::storage::transfer::RangeSource as _;
    match relay.open(0, 1024).await {
        Ok(_) => Ok("served".into()),
        Err(e) if e.to_string().contains("no such relay grant") => Ok(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_revoked_spoke_is_refused_by_the_other_spokes_relays() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let port = e2e::servers::free_port();
    let advertise = format!("127.0.0.1:{port}");
    let relay = SpokeProc::start_full(
        &hub,
        root.path(),
        "relay",
        &["--advertise", &advertise],
        &[],
    )
    .await;
    wait_healthy(&hub, relay.id).await;
    // The peer: an enrolled spoke whose identity the test drives in-process.
    let join = join_token(&hub, "local").await;
    let dir = root.path().join("peer");
    let peer_id = enrolled_id(&enroll(&join, &dir, &["--name", "peer"]).await);
    let peer = spoke::config::Identity::load(&dir).expect("identity");
    let from = shared::proto::RelayFrom {
        spoke_id: relay.id,
        addr: advertise.clone(),
        grant_id: "0123456789abcdef0123456789abcdef".into(),
        expires: i64::MAX,
        signature: shared::proto::Redacted("AAAA".into()),
    };
    // Before the revocation the peer's requests reach the grant lookup.
    let open = spoke::relay::Relayed::connect(&peer, &from, Default::default(), 1)
        .await
        .expect("connects");
    assert!(relay_attempt(&open).await.is_ok());

    let r = hub
        .http
        .delete(hub.url(&format!("/v1/network/spokes/{peer_id}")))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    let started = std::time::Instant::now();
    assert_eventually!(
        relay
            .log_text()
            .contains("revoked spoke certificates updated"),
        Duration::from_secs(10),
        "the revocation to reach the relay spoke"
    );
    eprintln!("revocation reached the spoke in {:?}", started.elapsed());
    // The connection opened before: its next request is refused and the connection closed.
    let refused = relay_attempt(&open).await;
    assert!(refused.is_err(), "{refused:?}");
    // A new connection: refused at the handshake (or its first request, TLS 1.3 being what it
    // is), never reaching the grant lookup.
    let outcome = match spoke::relay::Relayed::connect(&peer, &from, Default::default(), 1).await {
        Ok(r) => relay_attempt(&r).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(
        outcome.is_err(),
        "a revoked spoke reached the grant lookup: {outcome:?}"
    );
}

#[tokio::test]
async fn failed_enrollments_are_throttled_per_source() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let join = join_token(&hub, "local").await;
    let mut wrong = JoinString::parse(&join).expect("parse");
    wrong.secret = shared::proto::Redacted("js_guessed-secret".into());
    for i in 0..10 {
        let o = enroll(&wrong.encode(), &root.path().join(format!("g{i}")), &[]).await;
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("does not exist"),
            "{}",
            text(&o.stderr)
        );
    }
    // The source has used its failures: even the right secret is not looked at now, so
    // guessing costs a minute per ten tries.
    let o = enroll(&join, &root.path().join("right"), &[]).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("too many failed enrollments"),
        "{}",
        text(&o.stderr)
    );
    assert!(!root.path().join("right/spoke.yaml").exists());
}
