//! The local control socket: a Unix socket (mode 0600 from the moment it exists) on which the
//! running gateway answers `status` with one JSON document, and the client side `tunnel status`
//! uses.

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
        let listener = bind_private(path)?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
        })
    }
}

/// Binds `path` so that the socket file is 0600 when it appears: `bind` creates it with the
/// process umask applied, so the umask is 0177 around the call. A chmod after the bind would
/// leave a window in which anyone could connect (and a connection made then stays open). The
/// umask is process-wide: a file another thread creates in that instant gets fewer
/// permissions, never more.
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use nix::sys::stat::{umask, Mode};
    let before = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(before);
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading the mode of {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        let _ = std::fs::remove_file(path);
        anyhow::bail!(
            "{} was created with mode {mode:04o}, not 0600; refusing to serve on it",
            path.display()
        );
    }
    Ok(listener)
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
        let mut s = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
                "permission denied connecting to {}: the control socket is open only to the \
                 user running the gateway (usually root); run `tunnel status` as that user",
                path.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("connecting to {} (is the gateway up?)", path.display())
                })
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::ffi::OsStr;

    /// inotify sees every change of the socket file: it must be created 0600, never chmodded
    /// into it afterwards (the window the old create-then-chmod left open).
    #[test]
    fn the_socket_is_private_from_the_moment_it_exists() {
        use nix::sys::stat::{umask, Mode};
        let dir = tempfile::tempdir().expect("dir");
        let ino = Inotify::init(InitFlags::IN_NONBLOCK).expect("inotify");
        ino.add_watch(
            dir.path(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ATTRIB,
        )
        .expect("watch");
        let path = dir.path().join("t.sock");
        // The usual umask, under which a plain bind creates the socket 0755.
        let ambient = Mode::from_bits_truncate(0o022);
        umask(ambient);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let sock = rt.block_on(ControlSocket::bind(&path)).expect("bind");
        assert_eq!(umask(ambient), ambient, "the umask is restored");
        let mut masks = Vec::new();
        loop {
            match ino.read_events() {
                Ok(events) => masks.extend(
                    events
                        .into_iter()
                        .filter(|e| e.name.as_deref() == Some(OsStr::new("t.sock")))
                        .map(|e| e.mask),
                ),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("inotify: {e}"),
            }
        }
        assert!(
            masks.iter().any(|m| m.contains(AddWatchFlags::IN_CREATE)),
            "{masks:?}"
        );
        assert!(
            !masks.iter().any(|m| m.contains(AddWatchFlags::IN_ATTRIB)),
            "the socket's mode changed after it was created: {masks:?}"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(sock);
        assert!(!path.exists(), "the socket file is removed on drop");
    }
}
