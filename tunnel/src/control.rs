//! The local control socket: a Unix socket (mode 0600) on which the running gateway answers
//! `status` with one JSON document, and the client side `tunnel status` uses.

use crate::node::{CounterSnapshot, PeerStatus};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// The whole answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    pub offload: bool,
    pub uptime_secs: f64,
    /// Datagrams and packets dropped, by reason.
    pub dropped: CounterSnapshot,
    pub peers: Vec<PeerStatus>,
}

/// The listening control socket; the file is removed on drop.
pub struct ControlSocket {
    pub listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (creating its directory), replacing a stale socket file but refusing to
    /// take over one a live gateway answers on.
    pub async fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                anyhow::bail!(
                    "another gateway is answering on {}; is this interface already up?",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers one connection: reads the request line, writes `status` as JSON.
pub async fn answer(mut stream: UnixStream, status: Status) {
    let mut req = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut req)).await;
    let ok = matches!(read, Ok(Ok(n)) if req[..n].starts_with(b"status"));
    let body = if ok {
        serde_json::to_vec(&status).unwrap_or_default()
    } else {
        b"{\"error\":\"unknown request\"}".to_vec()
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&body).await?;
        stream.write_all(b"\n").await?;
        stream.shutdown().await
    })
    .await;
}

/// Asks the gateway behind `path` for its status.
pub async fn query(path: &Path) -> anyhow::Result<Status> {
    let work = async {
        let mut s = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {} (is the gateway up?)", path.display()))?;
        s.write_all(b"status\n").await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        let status: Status = serde_json::from_slice(&body).context("parsing the status reply")?;
        anyhow::Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .context("the gateway did not answer within 5 s")?
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `status` for people, in the spirit of `wg show`.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "interface: {}", s.interface);
    let _ = writeln!(o, "  public key: {}", s.public_key);
    let _ = writeln!(o, "  listening port: {}", s.listen_port);
    let _ = writeln!(o, "  offload: {}", if s.offload { "on" } else { "off" });
    let d = &s.dropped;
    let _ = writeln!(
        o,
        "  dropped: {} malformed, {} unauthenticated, {} replayed, {} unknown peer, \
         {} disallowed source, {} no route, {} no endpoint",
        d.malformed,
        d.unauthenticated,
        d.replayed,
        d.unknown_peer,
        d.disallowed_source,
        d.no_route,
        d.no_endpoint
    );
    for p in &s.peers {
        let _ = writeln!(o);
        match &p.name {
            Some(n) => {
                let _ = writeln!(o, "peer: {n} ({})", p.public_key);
            }
            None => {
                let _ = writeln!(o, "peer: {}", p.public_key);
            }
        }
        let endpoint = p
            .endpoint
            .map_or_else(|| "(none)".to_owned(), |e| e.to_string());
        let _ = writeln!(o, "  endpoint: {endpoint}");
        let nets: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "  allowed ips: {}", nets.join(", "));
        let hs = p
            .last_handshake_secs
            .map_or_else(|| "(none)".to_owned(), |s| format!("{s:.0} seconds ago"));
        let _ = writeln!(o, "  latest handshake: {hs}");
        let rtt = p
            .handshake_rtt_ms
            .map_or_else(|| "(unknown)".to_owned(), |ms| format!("{ms} ms"));
        let _ = writeln!(o, "  handshake rtt: {rtt}");
        let _ = writeln!(
            o,
            "  transfer: {} received, {} sent",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        );
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(o, "  persistent keepalive: every {k} seconds");
        }
    }
    o
}
