//! `spoke enroll`: joins the network with a join string. The key pair is made here and never
//! leaves this machine; the hub is trusted only if its CA matches the join string's pin.

use crate::config::{self, SpokeConfig};
use crate::control::{connect, ControlStream};
use anyhow::Context as _;
use shared::join::JoinString;
use shared::proto::{EnrollRequest, HubMsg, SpokeMsg};
use std::path::Path;
use std::time::Duration;

/// What enrollment produced, for the caller to print.
#[derive(Debug)]
pub struct Joined {
    pub spoke_id: i64,
    pub name: String,
    pub region: String,
    pub hubs: Vec<String>,
}

/// Where a spoke's data endpoint is reached and what it binds.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// `host:port` clients and other spokes reach (none: no data endpoint).
    pub advertise: Option<String>,
    /// `ip:port` bound (none: the advertised address, which must then be `ip:port`).
    pub listen: Option<String>,
}

impl Endpoint {
    /// Checks that the endpoint can be served before anything is asked of the hub.
    fn check(&self) -> anyhow::Result<()> {
        match (&self.advertise, &self.listen) {
            (None, Some(_)) => anyhow::bail!("--listen needs --advertise"),
            (Some(a), None) => {
                a.parse::<std::net::SocketAddr>().map_err(|_| {
                    anyhow::anyhow!(
                        "--advertise {a:?} is not ip:port, so it cannot be bound: add --listen ip:port"
                    )
                })?;
            }
            (_, Some(l)) => {
                l.parse::<std::net::SocketAddr>()
                    .map_err(|_| anyhow::anyhow!("--listen {l:?} must be ip:port"))?;
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// Enrolls into `dir` (created if missing; must not hold an enrolled spoke).
pub async fn enroll(
    join: &str,
    dir: &Path,
    name: Option<String>,
    endpoint: Endpoint,
    timeout: Duration,
) -> anyhow::Result<Joined> {
    let join = JoinString::parse(join)?;
    endpoint.check()?;
    let Endpoint { advertise, listen } = endpoint;
    let cfg_path = dir.join(config::CONFIG_FILE);
    anyhow::ensure!(
        !cfg_path.exists(),
        "{} already holds an enrolled spoke ({} exists); use another --data-dir or remove it",
        dir.display(),
        cfg_path.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Leftovers of an enrollment that failed before spoke.yaml was written are ours to replace.
    for f in [
        config::KEY_FILE,
        config::CERT_FILE,
        config::CA_FILE,
        config::HUB_CA_FILE,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let (key_pem, csr_pem) = shared::pki::new_key_and_csr(name.as_deref().unwrap_or("spoke"))?;
    config::write_new(&dir.join(config::KEY_FILE), key_pem.as_bytes(), 0o600)?;

    let tls = shared::pki::pinned_client_config(&join.ca_fingerprint, shared::proto::ALPN)?;
    let reply = tokio::time::timeout(timeout, async {
        let (endpoint, conn) = connect(&join.quic, tls, Duration::from_secs(1))
            .await
            .map_err(|e| explain_connect(&join.quic, e))?;
        let mut stream = ControlStream::open(&conn).await.map_err(|e| explain_connect(&join.quic, e))?;
        stream
            .send(&SpokeMsg::Enroll(EnrollRequest {
                token_id: join.token_id.clone(),
                secret: join.secret.clone(),
                csr_pem,
                name: name.clone(),
                advertise: advertise.clone(),
            }))
            .await?;
        let reply = stream.recv().await?;
        conn.close(quinn::VarInt::from_u32(0), b"done");
        endpoint.wait_idle().await;
        anyhow::Ok(reply)
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "cannot reach the hub at {}: no answer within {timeout:?} (is the hub running and UDP open?)",
            join.quic
        )
    })??;
    let enrolled = match reply {
        HubMsg::Enrolled(e) => e,
        HubMsg::Refused { code, message } => {
            anyhow::bail!("the hub refused the enrollment ({code}): {message}")
        }
        other => anyhow::bail!("unexpected answer from the hub: {other:?}"),
    };
    // The hub CA handed back must be the pinned one, and spokes must get their certificates
    // from a CA of their own (a network where one CA signs both could not tell them apart).
    let hub_ca = shared::pki::fingerprint_pem(&enrolled.hub_ca_pem)?;
    anyhow::ensure!(
        shared::auth::ct_eq(
            hub_ca.as_bytes(),
            join.ca_fingerprint.to_ascii_lowercase().as_bytes()
        ),
        "the hub answered with a network CA other than the one the join string pins"
    );
    anyhow::ensure!(
        shared::pki::fingerprint_pem(&enrolled.ca_pem)? != hub_ca,
        "the hub issues spoke certificates from its hub CA; upgrade the hub before enrolling"
    );
    config::write_new(
        &dir.join(config::CERT_FILE),
        enrolled.cert_pem.as_bytes(),
        0o644,
    )?;
    config::write_new(
        &dir.join(config::CA_FILE),
        enrolled.ca_pem.as_bytes(),
        0o644,
    )?;
    config::write_new(
        &dir.join(config::HUB_CA_FILE),
        enrolled.hub_ca_pem.as_bytes(),
        0o644,
    )?;
    let cfg = SpokeConfig {
        spoke_id: enrolled.spoke_id,
        name: enrolled.name.clone(),
        region: enrolled.region.clone(),
        hubs: enrolled.hubs.clone(),
        settings: enrolled.settings.clone(),
        advertise,
        listen,
    };
    // spoke.yaml last, atomically: its presence means "enrolled".
    let tmp = dir.join(format!("{}.tmp", config::CONFIG_FILE));
    let _ = std::fs::remove_file(&tmp);
    config::write_new(&tmp, serde_yaml_ng::to_string(&cfg)?.as_bytes(), 0o644)?;
    std::fs::rename(&tmp, &cfg_path).with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok(Joined {
        spoke_id: enrolled.spoke_id,
        name: enrolled.name,
        region: enrolled.region,
        hubs: enrolled
            .hubs
            .into_iter()
            .map(|h| format!("{} ({})", h.quic, h.region))
            .collect(),
    })
}

/// Turns connection failures into operator language (wrong pin, unreachable).
fn explain_connect(addr: &str, e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains(shared::pki::PIN_MISMATCH) || text.contains("certificate") {
        anyhow::anyhow!(
            "the hub at {addr} is not the one this join string was made for: {} \
             (wrong address, or the join string was altered)",
            shared::pki::PIN_MISMATCH
        )
    } else {
        anyhow::anyhow!("cannot reach the hub at {addr}: {text}")
    }
}
