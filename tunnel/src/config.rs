//! The gateway's YAML configuration: parsing, validation with errors that name the key, and the
//! checks on files holding secrets (a key file, or the config itself when a key is inline): owned
//! by the user running the gateway and not accessible by group or others.
//!
//! ```yaml
//! interface:
//!   name: wg-us-east
//!   private_key_file: us-east.key      # or private_key: <base64>; relative to this file
//!   addresses: [10.255.0.1/24]
//!   listen_port: 51820
//!   mtu: 1420
//! peers:
//!   - name: eu-west
//!     public_key: <base64>
//!     endpoint: 198.51.100.20:51820
//!     allowed_ips: [10.20.0.0/16, 10.255.0.2/32]
//!     persistent_keepalive: 25
//! ```

use crate::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The default UDP port, as for `wg`.
pub const DEFAULT_PORT: u16 = 51820;
/// The default MTU: 1500 minus the largest WireGuard overhead (IPv6 + UDP + 32).
pub const DEFAULT_MTU: u16 = 1420;
/// The largest config or key file read (both are a few hundred bytes).
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: RawInterface,
    #[serde(default)]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    private_key_file: Option<PathBuf>,
    #[serde(default)]
    addresses: Vec<IpNet>,
    #[serde(default)]
    listen_port: Option<u16>,
    #[serde(default)]
    mtu: Option<u16>,
    #[serde(default)]
    control_socket: Option<PathBuf>,
    #[serde(default)]
    rekey_after_secs: Option<u64>,
    #[serde(default = "yes")]
    offload: bool,
    #[serde(default)]
    log: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default)]
    name: Option<String>,
    public_key: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<IpNet>,
    #[serde(default)]
    persistent_keepalive: Option<u16>,
    #[serde(default)]
    preshared_key: Option<String>,
    #[serde(default)]
    preshared_key_file: Option<PathBuf>,
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub interface: Interface,
    pub peers: Vec<PeerConfig>,
}

/// The local side: TUN device, UDP port, key.
#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub private_key: PrivateKey,
    pub addresses: Vec<IpNet>,
    pub listen_port: u16,
    pub mtu: u16,
    /// Where `tunnel status` finds the running gateway.
    pub control_socket: PathBuf,
    /// Start a new handshake (a rekey) whenever the current session is this old, on top of
    /// WireGuard's own timers. For soak tests: the protocol's REKEY_AFTER_TIME (120 s) is a
    /// constant inside boringtun.
    pub rekey_after: Option<Duration>,
    /// TUN offload (virtio-net header, TCP/UDP GSO and GRO on the device).
    pub offload: bool,
    /// Default tracing filter (`SWITCHYARD_LOG` overrides it).
    pub log: String,
}

/// One remote gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub name: Option<String>,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
}

impl PeerConfig {
    /// What `tunnel status` and logs call this peer: its name, else its public key.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.public_key.to_string(),
        }
    }
}

impl Config {
    /// Reads and validates `path`; relative key files are resolved against its directory. A
    /// config holding a key inline must be private to the user running the gateway, as a key
    /// file must.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let (text, meta) = read_bounded(path).map_err(read_err)?;
        let raw = parse_raw(&text)?;
        let inline = if raw.interface.private_key.is_some() {
            Some("interface.private_key".to_owned())
        } else {
            raw.peers
                .iter()
                .position(|p| p.preshared_key.is_some())
                .map(|n| format!("peers[{n}].preshared_key"))
        };
        if let Some(key) = inline {
            check_private(path, &meta, "holds a key inline")
                .map_err(|m| invalid(key, format!("{m}, or move the key to a key file")))?;
        }
        validate(raw, config_dir(path))
    }

    /// Parses and validates YAML text; `dir` is where relative paths point.
    pub fn from_yaml(text: &str, dir: &Path) -> Result<Config, ConfigError> {
        validate(parse_raw(text)?, dir)
    }

    /// Where the gateway configured by `path` answers `status`. Reads only the interface's
    /// name and `control_socket`: a status query needs no key, and must not fail (or read
    /// secrets) because of them.
    pub fn control_socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
        #[derive(Deserialize)]
        struct SocketOnly {
            interface: SocketInterface,
        }
        #[derive(Deserialize)]
        struct SocketInterface {
            name: String,
            #[serde(default)]
            control_socket: Option<PathBuf>,
        }
        let (text, _) = read_bounded(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(yaml_error)?;
        let only: SocketOnly = serde_path_to_error::deserialize(value)
            .map_err(|e| invalid(e.path().to_string(), e.into_inner().to_string()))?;
        Ok(match only.interface.control_socket {
            Some(p) => resolve(config_dir(path), &p),
            None => default_control_socket(&only.interface.name),
        })
    }
}

fn config_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn yaml_error(e: serde_yaml_ng::Error) -> ConfigError {
    let at = e
        .location()
        .map(|l| format!("line {} column {}", l.line(), l.column()))
        .unwrap_or_else(|| "(document)".into());
    invalid(at, e.to_string())
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(yaml_error)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        invalid(key, e.into_inner().to_string())
    })
}

/// The text of `path` (at most [`MAX_FILE`] bytes) and the metadata of the file that was read
/// (taken from the open file, so a swap between check and read changes nothing).
fn read_bounded(path: &Path) -> std::io::Result<(String, std::fs::Metadata)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text)?;
    Ok((text, meta))
}

/// Refuses a file holding a secret that is not private to the user running the gateway:
/// accessible by group or others, or owned by another user (who could change or replace it).
fn check_private(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} {what} and is accessible by group or others (mode {mode:04o}); refusing to \
             use it: chmod 600 it",
            path.display()
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} {what} and is owned by uid {}, not by uid {me} running the gateway; refusing \
             to use it: chown it",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    }
}

/// Reads a key file, refusing one that group or others may access or another user owns.
pub fn read_key_file(path: &Path) -> Result<String, String> {
    let (text, meta) =
        read_bounded(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check_private(path, &meta, "holds a key")?;
    Ok(text)
}

fn key_text(
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    dir: &Path,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            key,
            format!("set only one of `{key}` and `{key}_file`"),
        )),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(f)) => read_key_file(&resolve(dir, &f))
            .map(Some)
            .map_err(|m| invalid(format!("{key}_file"), m)),
        (None, None) => Ok(None),
    }
}

fn key_message(e: KeyError) -> String {
    format!("invalid key: {e}")
}

fn validate(raw: RawConfig, dir: &Path) -> Result<Config, ConfigError> {
    let i = raw.interface;
    if i.name.is_empty()
        || i.name.len() > 15
        || !i
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "interface.name",
            "must be 1-15 characters: letters, digits, '-', '_', '.'",
        ));
    }
    let private_key = key_text(
        "interface.private_key",
        i.private_key,
        i.private_key_file,
        dir,
    )?
    .ok_or_else(|| {
        invalid(
            "interface.private_key",
            "required (or interface.private_key_file)",
        )
    })?;
    let private_key = PrivateKey::from_base64(&private_key)
        .map_err(|e| invalid("interface.private_key", key_message(e)))?;
    if i.addresses.is_empty() {
        return Err(invalid(
            "interface.addresses",
            "at least one address (e.g. 10.255.0.1/24)",
        ));
    }
    let mtu = i.mtu.unwrap_or(DEFAULT_MTU);
    let has_v6 = i.addresses.iter().any(|a| matches!(a, IpNet::V6(_)));
    let min_mtu = if has_v6 { 1280 } else { 576 };
    if !(min_mtu..=65_000).contains(&mtu) {
        return Err(invalid(
            "interface.mtu",
            format!("must be between {min_mtu} and 65000"),
        ));
    }
    if i.rekey_after_secs == Some(0) {
        return Err(invalid("interface.rekey_after_secs", "must be at least 1"));
    }
    let control_socket = match i.control_socket {
        Some(p) => resolve(dir, &p),
        None => default_control_socket(&i.name),
    };

    let own_public = private_key.public_key();
    let mut peers = Vec::with_capacity(raw.peers.len());
    let mut seen_keys: HashMap<PublicKey, usize> = HashMap::new();
    let mut seen_nets: BTreeMap<IpNet, usize> = BTreeMap::new();
    for (n, p) in raw.peers.into_iter().enumerate() {
        let at = |k: &str| format!("peers[{n}].{k}");
        let public_key = PublicKey::from_base64(&p.public_key)
            .map_err(|e| invalid(at("public_key"), key_message(e)))?;
        if public_key == own_public {
            return Err(invalid(
                at("public_key"),
                "is this gateway's own public key",
            ));
        }
        if let Some(first) = seen_keys.insert(public_key, n) {
            return Err(invalid(
                at("public_key"),
                format!("same key as peers[{first}]"),
            ));
        }
        let endpoint = match p.endpoint {
            None => None,
            Some(e) => Some(
                e.to_socket_addrs()
                    .map_err(|err| {
                        invalid(at("endpoint"), format!("`{e}`: {err} (want host:port)"))
                    })?
                    .next()
                    .ok_or_else(|| invalid(at("endpoint"), format!("`{e}` resolves to nothing")))?,
            ),
        };
        let mut allowed_ips = Vec::with_capacity(p.allowed_ips.len());
        for (k, net) in p.allowed_ips.into_iter().enumerate() {
            // As `wg` does: host bits are ignored (10.20.0.1/16 means 10.20.0.0/16).
            let net = net.trunc();
            if let Some(first) = seen_nets.insert(net, n) {
                return Err(invalid(
                    format!("peers[{n}].allowed_ips[{k}]"),
                    format!("{net} is already routed to peers[{first}]"),
                ));
            }
            allowed_ips.push(net);
        }
        let preshared_key = key_text(
            &at("preshared_key"),
            p.preshared_key,
            p.preshared_key_file,
            dir,
        )?
        .map(|t| {
            PresharedKey::from_base64(&t).map_err(|e| invalid(at("preshared_key"), key_message(e)))
        })
        .transpose()?;
        let name = p.name.filter(|s| !s.is_empty());
        peers.push(PeerConfig {
            name,
            public_key,
            endpoint,
            allowed_ips,
            persistent_keepalive: p.persistent_keepalive.filter(|&k| k > 0),
            preshared_key,
        });
    }

    Ok(Config {
        interface: Interface {
            name: i.name,
            private_key,
            addresses: i.addresses,
            listen_port: i.listen_port.unwrap_or(DEFAULT_PORT),
            mtu,
            control_socket,
            rekey_after: i.rekey_after_secs.map(Duration::from_secs),
            offload: i.offload,
            log: i.log.unwrap_or_else(|| "info".into()),
        },
        peers,
    })
}

/// `/run/switchyard/tunnel-<interface>.sock`.
pub fn default_control_socket(interface: &str) -> PathBuf {
    PathBuf::from(format!("/run/switchyard/tunnel-{interface}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const KEY_A: &str = "mDc1GiL1qYc2Ky/cf6zBi7sCZZy1b0LLMuAvOq28R3A=";
    const PUB_B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const PUB_C: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, Path::new("/nonexistent"))
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("not an Invalid: {other}"),
        }
    }

    fn base() -> String {
        format!(
            "interface:\n  name: wg0\n  private_key: {KEY_A}\n  addresses: [10.255.0.1/24]\n\
             peers:\n  - public_key: {PUB_B}\n    endpoint: 192.0.2.1:51820\n    allowed_ips: [10.20.0.1/16]\n"
        )
    }

    #[test]
    fn minimal_config_and_defaults() {
        let c = parse(&base()).expect("valid");
        assert_eq!(c.interface.listen_port, DEFAULT_PORT);
        assert_eq!(c.interface.mtu, DEFAULT_MTU);
        assert!(c.interface.offload);
        assert_eq!(
            c.interface.control_socket,
            PathBuf::from("/run/switchyard/tunnel-wg0.sock")
        );
        assert_eq!(
            c.peers[0].allowed_ips,
            vec!["10.20.0.0/16".parse::<IpNet>().expect("net")]
        );
        assert_eq!(
            c.peers[0].endpoint,
            Some("192.0.2.1:51820".parse().expect("addr"))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                base().replace("wg0", "this-name-is-far-too-long"),
                "interface.name",
            ),
            (
                base().replace("10.20.0.1/16", "10.20.0.1/99"),
                "peers[0].allowed_ips[0]",
            ),
            (base().replace(PUB_B, "short"), "peers[0].public_key"),
            (
                base().replace("192.0.2.1:51820", "no-port"),
                "peers[0].endpoint",
            ),
            (base().replace(KEY_A, "AAAA"), "interface.private_key"),
            (
                base().replace("  addresses: [10.255.0.1/24]\n", ""),
                "interface.addresses",
            ),
            (
                base() + "    persistent_keepalive: lots\n",
                "peers[0].persistent_keepalive",
            ),
            (base() + "    colour: blue\n", "peers[0]"),
            (
                base().replace("  name: wg0\n", "  name: wg0\n  mtu: 100\n"),
                "interface.mtu",
            ),
            (
                base() + &format!("  - public_key: {PUB_C}\n    allowed_ips: [10.20.0.0/16]\n"),
                "peers[1].allowed_ips[0]",
            ),
            (
                base() + &format!("  - public_key: {PUB_B}\n"),
                "peers[1].public_key",
            ),
        ];
        for (yaml, want) in cases {
            let got = key_of(parse(&yaml).expect_err(want));
            assert!(got.starts_with(want), "want key {want}, got {got}");
        }
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k.key");
        let mut f = std::fs::File::create(&path).expect("create");
        writeln!(f, "{KEY_A}").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let yaml = base().replace(&format!("private_key: {KEY_A}"), "private_key_file: k.key");
        let e = Config::from_yaml(&yaml, dir.path()).expect_err("0644 must be refused");
        let text = e.to_string();
        assert!(text.contains("interface.private_key_file"), "{text}");
        assert!(text.contains("chmod 600"), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Config::from_yaml(&yaml, dir.path()).expect("0600 is fine");
        assert_eq!(c.interface.private_key.expose_base64(), KEY_A);
    }

    fn write_mode(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_config_with_an_inline_key_must_be_private() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gw.yaml");
        write_mode(&path, &base(), 0o644);
        let e = Config::load(&path).expect_err("a world-readable inline key");
        let text = e.to_string();
        assert!(text.contains("interface.private_key"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("mode 0644"), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Config::load(&path).expect("0600 is fine");

        // An inline preshared key is a secret too.
        let psk = base().replace(&format!("private_key: {KEY_A}"), "private_key_file: k.key")
            + &format!(
                "    preshared_key: {KEY_A}
"
            );
        write_mode(&dir.path().join("k.key"), KEY_A, 0o600);
        write_mode(&path, &psk, 0o640);
        let e = Config::load(&path).expect_err("a group-readable inline psk");
        assert!(e.to_string().contains("peers[0].preshared_key"), "{e}");
        assert!(e.to_string().contains("mode 0640"), "{e}");

        // Keys in key files only: the config may be readable.
        let files = base().replace(&format!("private_key: {KEY_A}"), "private_key_file: k.key");
        write_mode(&path, &files, 0o644);
        Config::load(&path).expect("no secret inline");
    }

    /// Run as root (the gateway's user here): a file chowned to nobody is someone else's.
    #[test]
    fn secrets_owned_by_another_user_are_refused() {
        const NOBODY: u32 = 65534;
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("k.key");
        write_mode(&key, KEY_A, 0o600);
        std::os::unix::fs::chown(&key, Some(NOBODY), None).expect("chown (run as root)");
        let yaml = base().replace(&format!("private_key: {KEY_A}"), "private_key_file: k.key");
        let e = Config::from_yaml(&yaml, dir.path()).expect_err("a key file of another user");
        let text = e.to_string();
        assert!(text.contains("interface.private_key_file"), "{text}");
        assert!(text.contains("owned by uid 65534"), "{text}");

        let path = dir.path().join("gw.yaml");
        write_mode(&path, &base(), 0o600);
        std::os::unix::fs::chown(&path, Some(NOBODY), None).expect("chown");
        let e = Config::load(&path).expect_err("an inline key in another user's file");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(&path, Some(nix::unistd::geteuid().as_raw()), None)
            .expect("chown back");
        std::os::unix::fs::chown(&key, Some(nix::unistd::geteuid().as_raw()), None)
            .expect("chown back");
        Config::load(&path).expect("ours again");
        Config::from_yaml(&yaml, dir.path()).expect("ours again");
    }

    #[test]
    fn the_control_socket_is_found_without_the_keys() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gw.yaml");
        // A key file that does not exist: the gateway cannot start, status needs no key.
        let yaml = base().replace(
            &format!("private_key: {KEY_A}"),
            "private_key_file: gone.key",
        );
        write_mode(&path, &yaml, 0o644);
        assert!(Config::load(&path).is_err());
        assert_eq!(
            Config::control_socket_of(&path).expect("socket"),
            PathBuf::from("/run/switchyard/tunnel-wg0.sock")
        );
        let own = yaml.replace("  name: wg0\n", "  name: wg0\n  control_socket: ctl.sock\n");
        write_mode(&path, &own, 0o644);
        assert_eq!(
            Config::control_socket_of(&path).expect("socket"),
            dir.path().join("ctl.sock")
        );
    }

    #[test]
    fn debug_of_config_has_no_secrets() {
        let yaml = base() + &format!("    preshared_key: {KEY_A}\n");
        let c = parse(&yaml).expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains(KEY_A), "{shown}");
    }
}
