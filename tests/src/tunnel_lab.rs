//! The tunnel lab: real `tunnel` gateways and real `wireguard-go` peers in the namespaces of
//! [`crate::netns::Regions`], TCP transfers verified by checksum, raw UDP datagrams, and the
//! `iperf3` runs the benchmark measures. Shared by `tests/e2e/tunnel.rs` and `bench tunnel`.

use crate::netns::{Netns, Proc};
use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tunnel::control::Status;
use tunnel::keys::PrivateKey;

/// A key pair as `wg` writes them.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

impl KeyPair {
    pub fn new() -> KeyPair {
        let k = PrivateKey::generate();
        KeyPair {
            private: k.expose_base64(),
            public: k.public_key().to_string(),
        }
    }
}

impl Default for KeyPair {
    fn default() -> Self {
        KeyPair::new()
    }
}

/// One `peers:` entry.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub name: String,
    pub public: String,
    pub endpoint: Option<String>,
    pub allowed: Vec<String>,
}

/// A gateway config as YAML; `extra` is appended to the `interface:` section (indented).
pub fn gateway_yaml(
    iface: &str,
    key: &KeyPair,
    address: &str,
    socket: &Path,
    peers: &[PeerSpec],
    extra: &[&str],
) -> String {
    let mut y = format!(
        "interface:\n  name: {iface}\n  private_key: {}\n  addresses: [{address}]\n  \
         listen_port: 51820\n  control_socket: {}\n",
        key.private,
        socket.display()
    );
    for e in extra {
        y.push_str(&format!("  {e}\n"));
    }
    y.push_str("peers:\n");
    for p in peers {
        y.push_str(&format!(
            "  - name: {}\n    public_key: {}\n    allowed_ips: [{}]\n",
            p.name,
            p.public,
            p.allowed.join(", ")
        ));
        if let Some(e) = &p.endpoint {
            y.push_str(&format!("    endpoint: {e}\n"));
        }
    }
    y
}

/// Polls `cond` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `tunnel up` in a namespace.
pub struct Gateway {
    pub proc: Proc,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub iface: String,
}

impl Gateway {
    /// Writes `yaml` to `dir/{iface}.yaml` (mode 0600), starts `bin up --config` in `ns`, and
    /// waits until its control socket answers.
    pub async fn start(
        bin: &Path,
        ns: &Netns,
        dir: &Path,
        iface: &str,
        yaml: &str,
    ) -> Result<Gateway> {
        let config = dir.join(format!("{iface}.yaml"));
        std::fs::write(&config, yaml)?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
        let socket = dir.join(format!("{iface}.sock"));
        Gateway::run(bin, ns, config, socket, iface).await
    }

    /// Starts a gateway on an existing config file.
    pub async fn run(
        bin: &Path,
        ns: &Netns,
        config: PathBuf,
        socket: PathBuf,
        iface: &str,
    ) -> Result<Gateway> {
        let mut cmd = ns.command(bin);
        cmd.arg("up").arg("--config").arg(&config);
        cmd.env(
            "SWITCHYARD_LOG",
            std::env::var("TUNNEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let log = config.with_extension(format!("log{}", crate::netns::unique("")));
        let mut proc = ns.spawn(cmd, &log)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tunnel::control::query(&socket).await.is_ok() {
                break;
            }
            if !proc.running() {
                bail!("tunnel exited during start:\n{}", proc.output());
            }
            if Instant::now() > deadline {
                bail!(
                    "tunnel did not answer on {} within 15 s:\n{}",
                    socket.display(),
                    proc.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Gateway {
            proc,
            config,
            socket,
            iface: iface.to_owned(),
        })
    }

    pub async fn status(&self) -> Result<Status> {
        tunnel::control::query(&self.socket).await
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.proc.signal("TERM")?;
        self.proc.wait(Duration::from_secs(10))
    }
}

/// A `wireguard-go` interface in a namespace, configured with `wg`; removed on drop.
pub struct WgGo {
    pub proc: Proc,
    pub iface: String,
    ns_name: String,
}

impl WgGo {
    /// Starts `wireguard-go -f IFACE` in `ns` with `key`, `address`, port 51820, `peers`, and
    /// routes to every peer's AllowedIPs.
    pub async fn start(
        ns: &Netns,
        dir: &Path,
        iface: &str,
        key: &KeyPair,
        address: &str,
        peers: &[PeerSpec],
    ) -> Result<WgGo> {
        let bin = crate::servers::which("wireguard-go")
            .context("wireguard-go not found (Debian package wireguard-go)")?;
        crate::servers::which("wg").context("wg not found (Debian package wireguard-tools)")?;
        let mut cmd = ns.command(bin);
        cmd.args(["-f", iface]);
        cmd.env("LOG_LEVEL", "error");
        let proc = ns.spawn(cmd, &dir.join(format!("{iface}.wggo.log")))?;
        let wg = WgGo {
            proc,
            iface: iface.to_owned(),
            ns_name: ns.name.clone(),
        };
        let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        eventually(
            Duration::from_secs(10),
            "wireguard-go's UAPI socket",
            || {
                let ok = sock.exists();
                async move { ok.then_some(()) }
            },
        )
        .await?;
        let key_file = dir.join(format!("{iface}.key"));
        std::fs::write(&key_file, &key.private)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
        let mut set = ns.command("wg");
        set.args(["set", iface, "private-key"])
            .arg(&key_file)
            .args(["listen-port", "51820"]);
        for p in peers {
            set.args(["peer", &p.public, "allowed-ips", &p.allowed.join(",")]);
            if let Some(e) = &p.endpoint {
                set.args(["endpoint", e]);
            }
        }
        crate::netns::run(&mut set)?;
        ns.ip(&["address", "add", address, "dev", iface])?;
        ns.ip(&["link", "set", "dev", iface, "mtu", "1420", "up"])?;
        for p in peers {
            for a in &p.allowed {
                ns.ip(&["route", "replace", a, "dev", iface])?;
            }
        }
        Ok(wg)
    }

    /// `wg show IFACE latest-handshakes` for the one peer: seconds since the epoch, 0 = never.
    pub fn latest_handshake(&self) -> Result<u64> {
        let out = crate::netns::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.ns_name,
            "wg",
            "show",
            &self.iface,
            "latest-handshakes",
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }
}

/// Sends `bytes` of pseudo-random data from `from` to `to_ip:port` (a listener in `to`) over
/// TCP, and checks that what arrived has the same SHA-256. Every step is bounded by `timeout`.
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: &str,
    port: u16,
    bytes: usize,
    timeout: Duration,
) -> Result<Duration> {
    let addr: SocketAddr = format!("{to_ip}:{port}").parse()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.run(move || -> Result<(usize, Vec<u8>)> {
        let l = TcpListener::bind(addr)?;
        let _ = ready_tx.send(());
        l.set_nonblocking(false)?;
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(timeout))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k;
        }
        Ok((n, h.finalize().to_vec()))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the receiving side did not start listening")?;
    let client = from.run(move || -> Result<(Vec<u8>, Duration)> {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_write_timeout(Some(timeout))?;
        let mut h = Sha256::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len());
            for w in chunk[..k].chunks_mut(8) {
                // xorshift64: cheap, incompressible enough, reproducible.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let b = state.to_le_bytes();
                w.copy_from_slice(&b[..w.len()]);
            }
            s.write_all(&chunk[..k])?;
            h.update(&chunk[..k]);
            left -= k;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok((h.finalize().to_vec(), started.elapsed()))
    });
    let (sent_hash, took) = client
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))???;
    let (n, got_hash) = server
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))???;
    anyhow::ensure!(n == bytes, "received {n} bytes, sent {bytes}");
    anyhow::ensure!(got_hash == sent_hash, "checksum mismatch");
    Ok(took)
}

/// Sends each datagram from `from` (bound to `local`) to `to`.
pub fn send_udp(
    from: &Netns,
    local: SocketAddr,
    to: SocketAddr,
    datagrams: Vec<Vec<u8>>,
) -> Result<()> {
    from.run(move || -> Result<()> {
        let s = UdpSocket::bind(local)?;
        for d in &datagrams {
            s.send_to(d, to)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender panicked"))??
}

/// CPU time (user + system) of a process and its threads, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// Busy CPU time of the whole machine (all cores), in seconds, from /proc/stat.
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// One `iperf3` run: goodput and CPU used.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub gbits: f64,
    /// Cores busy over the whole machine during the run.
    pub machine_cores: f64,
    /// Cores the gateway processes used during the run.
    pub gateway_cores: f64,
}

/// `iperf3 -C cubic` from `client` to `server_ip` (an `iperf3 -s` in `server`) for `secs`;
/// `gateway_pids` are sampled for their CPU time.
pub async fn iperf3(
    server: &Netns,
    client: &Netns,
    server_ip: &str,
    secs: u32,
    gateway_pids: &[u32],
) -> Result<Run> {
    // Namespaces are per lab, so the default port is free.
    let port = 5201;
    let mut s = server.command("iperf3");
    s.args(["-s", "-1", "--forceflush", "-p", &port.to_string()]);
    let log = std::env::temp_dir().join(crate::netns::unique("iperf3s"));
    let mut srv = server.spawn(s, &log)?;
    // Wait until the server listens (iperf3 prints "Server listening").
    eventually(Duration::from_secs(10), "iperf3 server", || {
        let ok = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening");
        async move { ok.then_some(()) }
    })
    .await?;
    let cpu0: f64 = gateway_pids.iter().map(|&p| cpu_secs(p)).sum();
    let m0 = machine_busy_secs();
    let t0 = Instant::now();
    let out = client
        .command("iperf3")
        .args([
            "-c",
            server_ip,
            "-p",
            &port.to_string(),
            "-C",
            "cubic",
            "-J",
            "-t",
            &secs.to_string(),
        ])
        .output()
        .context("running iperf3 (Debian package iperf3)")?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu1: f64 = gateway_pids.iter().map(|&p| cpu_secs(p)).sum();
    let m1 = machine_busy_secs();
    let _ = srv.wait(Duration::from_secs(5));
    let _ = std::fs::remove_file(&log);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no result in iperf3 output: {}", v["error"]))?;
    Ok(Run {
        gbits: bps / 1e9,
        machine_cores: (m1 - m0) / wall,
        gateway_cores: (cpu1 - cpu0) / wall,
    })
}
