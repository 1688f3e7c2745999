//! What `spoke enroll` writes and `spoke run` reads: `DIR/spoke.yaml` plus the key,
//! certificate and CA files next to it.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use shared::proto::{HubInfo, SpokeSettings};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// File names inside the data dir.
pub const CONFIG_FILE: &str = "spoke.yaml";
pub const KEY_FILE: &str = "spoke.key";
pub const CERT_FILE: &str = "spoke.crt";
/// The spoke CA: issuer of this and every other spoke's certificate.
pub const CA_FILE: &str = "ca.crt";
/// The network CA (the join string's pin): the only issuer a spoke trusts for a hub.
pub const HUB_CA_FILE: &str = "hub-ca.crt";

/// `spoke.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeConfig {
    pub spoke_id: i64,
    pub name: String,
    pub region: String,
    /// Hubs to dial, nearest first.
    pub hubs: Vec<HubInfo>,
    pub settings: SpokeSettings,
    /// Where clients reach this spoke's data endpoint (`host:port`), if it serves one.
    #[serde(default)]
    pub advertise: Option<String>,
}

/// An enrolled spoke's files, loaded.
#[derive(Debug)]
pub struct Identity {
    pub config: SpokeConfig,
    pub cert_pem: String,
    pub key_pem: String,
    /// The spoke CA (relay peers are verified under it).
    pub ca_pem: String,
    /// The network CA: hubs are verified under it, and only it.
    pub hub_ca_pem: String,
    /// Revoked spoke certificates, as hubs push them (`HubMsg::Revoked`): refused as relay
    /// peers in both directions.
    pub revoked: shared::pki::Revoked,
}

impl Identity {
    /// Loads `DIR/spoke.yaml` and the files next to it; refuses a key readable by others.
    pub fn load(dir: &Path) -> anyhow::Result<Identity> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).with_context(|| {
            format!(
                "cannot read {} (is this spoke enrolled? run `spoke enroll JOIN_STRING --data-dir {}`)",
                cfg_path.display(),
                dir.display()
            )
        })?;
        let config: SpokeConfig = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not a valid spoke config", cfg_path.display()))?;
        let key_path = dir.join(KEY_FILE);
        let mode = std::fs::metadata(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?
            .permissions()
            .mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{} is readable by group or others; chmod 600 it",
            key_path.display()
        );
        anyhow::ensure!(
            dir.join(HUB_CA_FILE).exists(),
            "{} has no {HUB_CA_FILE}: this spoke was enrolled by an older version, whose \
             certificates could not tell spokes from hubs; enroll it again with a new join \
             string (`hub spokes token create`) into an empty --data-dir",
            dir.display()
        );
        let read = |name: &str| -> anyhow::Result<String> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        Ok(Identity {
            config,
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            ca_pem: read(CA_FILE)?,
            hub_ca_pem: read(HUB_CA_FILE)?,
            revoked: shared::pki::Revoked::default(),
        })
    }
}

/// Writes a file that must not exist yet, with `mode`.
pub fn write_new(path: &PathBuf, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
