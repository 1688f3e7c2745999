//! Who is a hub and who is a spoke, told apart by certificates rather than names: a spoke
//! cannot enroll under a hub's name, a certificate from the spoke CA (whatever names it
//! carries) is refused as a hub by running spokes and by joining ones, and a join string
//! whose hub address was swapped leaks nothing to the impostor.

use crate::spokes::{enroll, join_token, text, SpokeProc};
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
        let tls = shared::pki::hub_server_config(
            &spoke_ca.cert_pem,
            &chain,
            &key,
            shared::proto::ALPN,
        )
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
        let o = enroll(&join, &dir, &["--advertise", &format!("{name}:443")]).await;
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
            &["--advertise", &format!("spoke{i}.example.net:443")],
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
    let o = enroll(&join, &dir, &["--name", "victim"]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let id: i64 = text(&o.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("id");
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
    assert!(!victim.log_text().contains("connected to hub"), "{}", victim.log_text());
    assert_eq!(impostor.received.load(Ordering::SeqCst), 0, "the spoke spoke to the impostor");
    assert_eq!(impostor.handshakes.load(Ordering::SeqCst), 0);
    drop(victim);

    // A join string whose hub address was swapped for the impostor's: enrollment fails before
    // the token's secret is sent, and the token still works at the real hub.
    let join = join_token(&hub, "local").await;
    let mut j = JoinString::parse(&join).expect("parse");
    j.quic = impostor.addr.to_string();
    let o = enroll(&j.encode(), &root.path().join("joiner"), &["--timeout", "5"]).await;
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not the one this join string was made for"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(impostor.received.load(Ordering::SeqCst), 0, "the secret reached the impostor");
    let o = enroll(&join, &root.path().join("joiner"), &[]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
}
