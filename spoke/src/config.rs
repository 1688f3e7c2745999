//! What `spoke enroll` writes and `spoke run` reads: `DIR/spoke.yaml` plus the key,
//! certificate and CA files next to it, and the sections of `spoke.yaml` only the operator
//! writes ([`LocalConfig`]: `fs` roots, data endpoint limits).

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
    /// What the data endpoint binds (`ip:port`); `advertise` when absent.
    #[serde(default)]
    pub listen: Option<String>,
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
        let config: SpokeConfig = split_local(&text)
            .and_then(|(core, _)| serde_yaml_ng::from_value(core))
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

/// The top-level sections of `spoke.yaml` that belong to the operator: enrollment never
/// writes them, and [`SpokeConfig`] never sees them.
const LOCAL_SECTIONS: [&str; 2] = ["storage", "data_endpoint"];

/// Splits `spoke.yaml` into the enrolled part and the operator's sections.
fn split_local(
    text: &str,
) -> Result<(serde_yaml_ng::Value, serde_yaml_ng::Value), serde_yaml_ng::Error> {
    let mut core: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
    let mut local = serde_yaml_ng::Mapping::new();
    if let Some(map) = core.as_mapping_mut() {
        for key in LOCAL_SECTIONS {
            if let Some(v) = map.remove(key) {
                local.insert(key.into(), v);
            }
        }
    }
    Ok((core, serde_yaml_ng::Value::Mapping(local)))
}

/// What the operator sets in `spoke.yaml` besides what enrollment wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub data_endpoint: DataEndpointConfig,
}

/// `storage:`: where this spoke may act for `fs` accounts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Folders below which `fs` accounts may live (absolute; never `/`, nor a folder holding
    /// this spoke's own files). Empty (the default): every `fs` grant and assignment is refused.
    #[serde(default)]
    pub fs_roots: Vec<PathBuf>,
}

/// `data_endpoint:`: the limits of the HTTPS data endpoint against slow or idle clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataEndpointConfig {
    /// Connections served at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// Seconds a connection has to finish its TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds a client has to send a request's head (and an idle keep-alive connection to
    /// start the next one).
    pub header_timeout_secs: u64,
    /// Seconds an upload's body may go without a byte.
    pub body_idle_timeout_secs: u64,
}

impl Default for DataEndpointConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout_secs: 10,
            header_timeout_secs: 15,
            body_idle_timeout_secs: 30,
        }
    }
}

impl LocalConfig {
    /// Reads the operator's sections of `DIR/spoke.yaml` and checks them: `fs` roots must be
    /// absolute, existing folders (kept in canonical form), not `/` and apart from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<LocalConfig> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let mut local: LocalConfig = split_local(&text)
            .and_then(|(_, local)| serde_yaml_ng::from_value(local))
            .with_context(|| format!("{} is not a valid spoke config", cfg_path.display()))?;
        let own = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let mut roots = Vec::new();
        for r in &local.storage.fs_roots {
            anyhow::ensure!(
                r.is_absolute(),
                "storage.fs_roots: {} must be an absolute path",
                r.display()
            );
            let c = r
                .canonicalize()
                .with_context(|| format!("storage.fs_roots: cannot resolve {}", r.display()))?;
            anyhow::ensure!(
                c.is_dir(),
                "storage.fs_roots: {} is not a folder",
                r.display()
            );
            anyhow::ensure!(
                c.parent().is_some(),
                "storage.fs_roots: `/` cannot be an fs root; name the folders accounts live in"
            );
            anyhow::ensure!(
                !own.starts_with(&c) && !c.starts_with(&own),
                "storage.fs_roots: {} overlaps this spoke's own data dir {}",
                r.display(),
                own.display()
            );
            roots.push(c);
        }
        local.storage.fs_roots = roots;
        let d = &local.data_endpoint;
        anyhow::ensure!(
            d.max_connections >= 1,
            "data_endpoint.max_connections must be at least 1"
        );
        for (key, v) in [
            ("handshake_timeout_secs", d.handshake_timeout_secs),
            ("header_timeout_secs", d.header_timeout_secs),
            ("body_idle_timeout_secs", d.body_idle_timeout_secs),
        ] {
            anyhow::ensure!(
                (1..=3600).contains(&v),
                "data_endpoint.{key} must be between 1 and 3600"
            );
        }
        Ok(local)
    }
}
