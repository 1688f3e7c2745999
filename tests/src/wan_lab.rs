//! Two lab regions joined by an emulated WAN ([`crate::lab`]), each with an S3 server and a
//! spoke, and a hub in the lab's root location (no delay to either region): a copy from
//! region `a`'s server to region `b`'s is written by `b`'s spoke (nearest the destination)
//! with the bytes relayed over QUIC by `a`'s (nearest the source), so the WAN carries the
//! relay. Used by `bench wan` (a 1 GiB copy against rclone and iperf3 over long and lossy
//! paths) and the relay-over-WAN lab test.
//!
//! The S3 servers are moto (what the test suite installs) or `s3s-fs` (the benchmark's: it
//! keeps up with a gigabit); either listens on its region's lab address. Spokes are the real
//! `spoke` binary (its path is the caller's: the test's `CARGO_BIN_EXE_*` or the bench's
//! sibling), enrolled with a join token and advertising their region's lab address.

use crate::lab::{Lab, LabSpec, ROOT};
use crate::linkemu::QueueLimit;
use crate::netns::Proc;
use crate::servers::{free_port, S3Server};
use crate::{HubOptions, TestHub};
use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The regions: `a` holds the source, `b` the destination.
pub const REGIONS: [&str; 2] = ["a", "b"];
/// Access keys of the `s3s-fs` servers.
const FS_KEY: (&str, &str) = ("wan", "wan-bench-secret");

/// Which S3 server the regions run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// moto (`servers::S3Server`), as the tests use.
    Moto,
    /// `s3s-fs` (`cargo install s3s-fs@0.14.1 --features binary`), files on disk.
    S3sFs,
}

/// One region's S3 server.
pub enum Store {
    Moto(S3Server),
    Fs {
        _proc: Proc,
        addr: Ipv4Addr,
        port: u16,
        root: PathBuf,
    },
}

impl Store {
    pub fn endpoint(&self) -> String {
        match self {
            Store::Moto(s) => s.endpoint(),
            Store::Fs { addr, port, .. } => format!("http://{addr}:{port}"),
        }
    }

    /// The account credentials for `bucket` on this server.
    pub fn creds(&self, bucket: &str) -> Value {
        let (id, secret) = match self {
            Store::Moto(s) => (s.access_key_id(), s.secret_access_key()),
            Store::Fs { .. } => FS_KEY,
        };
        json!({"bucket": bucket, "endpoint": self.endpoint(), "region": "us-east-1",
               "access_key_id": id, "secret_access_key": secret})
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        match self {
            Store::Moto(s) => s.create_bucket(bucket).await,
            Store::Fs { root, .. } => Ok(std::fs::create_dir_all(root.join(bucket))?),
        }
    }

    /// The file behind an object (`s3s-fs` only).
    pub fn file(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        match self {
            Store::Fs { root, .. } => Some(root.join(bucket).join(key)),
            Store::Moto(_) => None,
        }
    }
}

/// The lab, its two servers and a scratch directory.
pub struct WanLab {
    pub lab: Lab,
    /// Region `a`'s server, then `b`'s.
    pub stores: [Store; 2],
    pub dir: tempfile::TempDir,
}

/// The WAN between the regions.
#[derive(Clone, Copy, Debug)]
pub struct WanPath {
    pub rtt_ms: f64,
    pub loss: f64,
    pub rate_bps: Option<u64>,
}

impl WanLab {
    /// Builds the lab with `path` between the regions (the root location reaches both without
    /// delay) and starts a server of `kind` in each region.
    pub async fn build(path: WanPath, kind: ServerKind) -> Result<WanLab> {
        crate::raise_udp_buffers();
        let lab = Lab::build(
            LabSpec::new()
                .region(REGIONS[0])
                .region(REGIONS[1])
                .rtt(REGIONS[0], REGIONS[1], path.rtt_ms)
                .loss(path.loss)
                .rate_bps(path.rate_bps)
                .queue(queue_for(path)),
        )?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-wan-")
            .tempdir_in("/var/tmp")?;
        let mut stores = Vec::new();
        for r in REGIONS {
            let addr = lab.addr(r);
            let store = match kind {
                ServerKind::Moto => {
                    Store::Moto(S3Server::start_in(&lab.ns(r).name, IpAddr::V4(addr)).await?)
                }
                ServerKind::S3sFs => {
                    let root = dir.path().join(format!("s3-{r}"));
                    std::fs::create_dir_all(&root)?;
                    let port = free_port();
                    let mut cmd = lab.command(r, "s3s-fs");
                    cmd.args(["--host", &addr.to_string(), "--port", &port.to_string()])
                        .args(["--access-key", FS_KEY.0, "--secret-key", FS_KEY.1])
                        .arg(&root);
                    let proc = lab
                        .spawn(r, cmd, &dir.path().join(format!("s3-{r}.log")))
                        .context("s3s-fs (cargo install s3s-fs@0.14.1 --features binary)")?;
                    wait_tcp(addr, port, Duration::from_secs(20)).await?;
                    Store::Fs {
                        _proc: proc,
                        addr,
                        port,
                        root,
                    }
                }
            };
            stores.push(store);
        }
        let stores: [Store; 2] = stores
            .try_into()
            .map_err(|_| anyhow::anyhow!("two stores"))?;
        stores[0].create_bucket("src").await?;
        stores[1].create_bucket("dst").await?;
        Ok(WanLab { lab, stores, dir })
    }

    /// Sets the WAN between the regions (both directions), with a queue of one
    /// bandwidth-delay product.
    pub fn set_path(&self, path: WanPath) {
        let q = queue_for(path);
        self.lab.update_both(REGIONS[0], REGIONS[1], |l| {
            l.delay = Duration::from_secs_f64(path.rtt_ms / 2000.0);
            l.loss = path.loss;
            l.rate_bps = path.rate_bps;
            l.queue = q;
        });
    }

    /// Writes `size` bytes of [`crate::pattern`] as `src/<key>` on region `a`'s server (from
    /// the root location, which has no delay); returns its SHA-256.
    pub async fn write_source(&self, key: &str, size: u64) -> Result<String> {
        use futures::StreamExt as _;
        use sha2::Digest as _;
        use shared::storage::{ConnectOptions, Connector, ServiceConfig, StoragePath};
        let opts = ConnectOptions {
            egress: crate::loopback_egress(),
            ..ConnectOptions::default()
        };
        let c = Connector::connect(
            &ServiceConfig::from_parts("s3", self.stores[0].creds("src"))?,
            &opts,
        )
        .await?;
        const MIB: u64 = 1 << 20;
        let sha = std::sync::Arc::new(std::sync::Mutex::new(sha2::Sha256::new()));
        let hashing = sha.clone();
        let stream = futures::stream::iter(0..size.div_ceil(MIB)).map(move |i| {
            let b = crate::pattern(MIB.min(size - i * MIB) as usize, i);
            hashing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .update(&b);
            Ok::<_, String>(bytes::Bytes::from(b))
        });
        c.write(&StoragePath::parse(key)?, Box::pin(stream)).await?;
        let sha = std::mem::take(
            &mut *sha
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        Ok(hex::encode(sha.finalize()))
    }

    /// A hub in the root location with `offload.congestion: congestion` (and `extra` YAML),
    /// a spoke in each region advertising its lab address, and an S3 account on each server.
    pub async fn deploy(
        &self,
        spoke_bin: &Path,
        congestion: &str,
        extra: &str,
    ) -> Result<Deployment> {
        let yaml = format!(
            "offload:\n  congestion: {congestion}\n  startup_grace_secs: 0\n{extra}\
             network:\n  heartbeat_ms: 250\n  missed_heartbeats: 8\n\
             events:\n  detect:\n    enabled: false\n"
        );
        let hub = TestHub::start_with(HubOptions {
            yaml: Some(yaml),
            bind: Some(IpAddr::V4(self.lab.addr(ROOT))),
            ..Default::default()
        })
        .await?;
        let run = self.dir.path().join(format!("deploy-{}", free_port()));
        let mut spokes = Vec::new();
        for r in REGIONS {
            spokes.push(self.spoke(&hub, spoke_bin, &run, r).await?);
        }
        let mut accounts = [0i64; 2];
        for (i, (store, bucket)) in self.stores.iter().zip(["src", "dst"]).enumerate() {
            let v = hub
                .connect("s3", store.creds(bucket))
                .await
                .with_context(|| format!("connecting {bucket}"))?;
            accounts[i] = v["id"].as_i64().context("account id")?;
        }
        let d = Deployment {
            hub,
            spokes,
            accounts,
        };
        for s in &d.spokes {
            d.wait_healthy(s.id, Duration::from_secs(30)).await?;
        }
        Ok(d)
    }

    /// Enrolls and starts the spoke of region `r`.
    async fn spoke(&self, hub: &TestHub, bin: &Path, run: &Path, r: &str) -> Result<Spoke> {
        let dir = run.join(format!("spoke-{r}"));
        let join = join_token(hub, &hub.state.config.region).await?;
        let advertise = format!("{}:{}", self.lab.addr(r), free_port());
        let mut cmd = self.lab.command(r, &bin.to_string_lossy());
        cmd.arg("enroll")
            .arg(&join)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", &format!("edge-{r}"), "--advertise", &advertise])
            .env("SWITCHYARD_LOG", "warn");
        let out = tokio::process::Command::from(cmd).output().await?;
        if !out.status.success() {
            bail!(
                "spoke enroll in {r}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let id: i64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .context("spoke id in the enroll output")?;
        let mut cmd = self.lab.command(r, &bin.to_string_lossy());
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&dir)
            .env("SWITCHYARD_LOG", "info")
            .stdout(Stdio::null());
        // Experiments: extra environment for the spokes, `K=V,K=V` (e.g. allocator settings).
        if let Ok(extra) = std::env::var("BENCH_WAN_SPOKE_ENV") {
            for kv in extra.split(',').filter(|kv| !kv.is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        let proc = self.lab.spawn(r, cmd, &dir.join("run.log"))?;
        Ok(Spoke {
            id,
            region: r.to_owned(),
            proc,
            dir,
        })
    }
}

/// A queue of one bandwidth-delay product (at least the emulator's default of 1000 packets):
/// what a router on a long path holds, so that a single TCP flow can fill a clean link.
fn queue_for(path: WanPath) -> QueueLimit {
    match path.rate_bps {
        Some(rate) => {
            let bdp = (rate as f64 / 8.0 * path.rtt_ms / 1000.0) as usize;
            QueueLimit::Bytes(bdp.max(1500 * 1000))
        }
        None => QueueLimit::default(),
    }
}

/// A join string from the hub's API.
async fn join_token(hub: &TestHub, region: &str) -> Result<String> {
    let r = hub
        .http
        .post(hub.url("/v1/network/spokes/tokens"))
        .header("Authorization", hub.meta())
        .json(&json!({"region": region}))
        .send()
        .await?;
    let v: Value = r.json().await?;
    Ok(v["join"].as_str().context("join")?.to_owned())
}

async fn wait_tcp(addr: Ipv4Addr, port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect((addr, port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{addr}:{port} did not listen within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A spoke process of the lab.
pub struct Spoke {
    pub id: i64,
    pub region: String,
    pub proc: Proc,
    pub dir: PathBuf,
}

impl Spoke {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("run.log")).unwrap_or_default()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.proc.id())
    }

    /// Peak resident set size so far (bytes).
    pub fn peak_rss(&self) -> u64 {
        status_kib(self.proc.id(), "VmHWM:") * 1024
    }

    /// Datagrams the kernel dropped so far in the spoke's region because a UDP socket's
    /// receive buffer was full (`RcvbufErrors` of its namespace): the relay's receiver falling
    /// behind, which QUIC then counts as loss.
    pub fn udp_rcvbuf_errors(&self) -> u64 {
        udp_rcvbuf_errors(self.proc.id())
    }
}

/// `Udp: RcvbufErrors` of the network namespace process `pid` is in (`/proc/PID/net/snmp`).
pub fn udp_rcvbuf_errors(pid: u32) -> u64 {
    let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of process `pid` (`/proc/PID/stat`).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based); `rest` starts at field 3.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// A `kB` field of `/proc/PID/status`.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The hub, the two spokes and the two accounts (`a`'s source, `b`'s destination).
pub struct Deployment {
    pub hub: TestHub,
    pub spokes: Vec<Spoke>,
    pub accounts: [i64; 2],
}

/// How a copy went.
#[derive(Debug)]
pub struct Copied {
    /// The transfer as the API shows it at the end.
    pub transfer: Value,
    /// Seconds from the request to `done` (or to the time limit).
    pub secs: f64,
    /// Bytes done when it ended (the whole object when `done`).
    pub bytes: u64,
    pub done: bool,
}

impl Deployment {
    /// Waits until the spoke `id` is connected and healthy.
    pub async fn wait_healthy(&self, id: i64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let v: Value = self
                .hub
                .http
                .get(self.hub.url(&format!("/v1/network/spokes/{id}")))
                .header("Authorization", self.hub.meta())
                .send()
                .await?
                .json()
                .await?;
            if v["status"]["healthy"] == true {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("spoke {id} not healthy within {within:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The id of the source object `key` in account `a`.
    pub async fn source_id(&self, key: &str) -> Result<String> {
        let v: Value = self
            .hub
            .req(
                reqwest::Method::GET,
                &self.hub.url(&format!(
                    "/v1/accounts/{}/storage/folders/root/contents",
                    self.accounts[0]
                )),
            )
            .send()
            .await?
            .json()
            .await?;
        v["objects"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == key))
            .and_then(|o| o["id"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no {key} in {v}"))
    }

    /// Copies the source `file_id` into `b`'s account as `name` (a transfer), waiting up to
    /// `limit`; a copy still running then is cancelled and measured by what it moved.
    pub async fn copy(&self, file_id: &str, name: &str, limit: Duration) -> Result<Copied> {
        let t0 = Instant::now();
        let r = self
            .hub
            .req(
                reqwest::Method::POST,
                &self.hub.url(&format!(
                    "/v1/accounts/{}/storage/files/{file_id}/copy",
                    self.accounts[0]
                )),
            )
            .header("X-Kloudless-Async", "true")
            .json(&json!({"account": self.accounts[1], "parent_id": "root", "name": name}))
            .send()
            .await?;
        let task: Value = r.json().await?;
        let id = task["transfer"]
            .as_i64()
            .with_context(|| format!("{task}"))?;
        loop {
            let t: Value = self
                .hub
                .req(
                    reqwest::Method::GET,
                    &self.hub.url(&format!("/v1/transfers/{id}")),
                )
                .send()
                .await?
                .json()
                .await?;
            let state = t["state"].as_str().unwrap_or("");
            let bytes = t["bytes_done"].as_u64().unwrap_or(0);
            if state == "done" {
                return Ok(Copied {
                    secs: t0.elapsed().as_secs_f64(),
                    bytes,
                    done: true,
                    transfer: t,
                });
            }
            if state == "failed" || state == "cancelled" {
                bail!("the copy {state}: {t}");
            }
            if t0.elapsed() > limit {
                let secs = t0.elapsed().as_secs_f64();
                let _ = self
                    .hub
                    .req(
                        reqwest::Method::DELETE,
                        &self.hub.url(&format!("/v1/transfers/{id}")),
                    )
                    .send()
                    .await;
                return Ok(Copied {
                    secs,
                    bytes,
                    done: false,
                    transfer: t,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How an rclone run went.
#[derive(Debug)]
pub struct RcloneRun {
    pub secs: f64,
    /// Bytes rclone reported moved (the whole object when it finished).
    pub bytes: u64,
    pub done: bool,
    /// The most TCP connections it had open at once across the WAN (sampled twice a second).
    pub wan_connections: usize,
    /// Mbit/s crossing the WAN (a→b) while it did (see [`wan_phase`]).
    pub wan_mbps: f64,
}

/// Samples the WAN's a→b delivery rate (Mbit/s) every call to [`RateSampler::tick`] that is
/// at least 100 ms after the last sample.
pub struct RateSampler {
    last: (Instant, u64),
    pub rates: Vec<f64>,
}

impl RateSampler {
    pub fn new(wan: &WanLab) -> Self {
        RateSampler {
            last: (Instant::now(), wan.lab.stats(REGIONS[0], REGIONS[1]).bytes),
            rates: Vec::new(),
        }
    }

    pub fn tick(&mut self, wan: &WanLab) {
        let now = Instant::now();
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt < 0.1 {
            return;
        }
        let bytes = wan.lab.stats(REGIONS[0], REGIONS[1]).bytes;
        self.rates
            .push((bytes - self.last.1) as f64 * 8.0 / dt / 1e6);
        self.last = (now, bytes);
    }
}

/// The mean rate from the first to the last sample that carried traffic (over 5 Mbit/s): the
/// WAN phase of a copy, without what comes before the first byte (dispatch, connections) and
/// after the last (the destination assembling a multipart upload: `s3s-fs` copies every part
/// into the object, about 4 s per GiB here).
pub fn wan_phase(rates: &[f64]) -> f64 {
    let active = |r: &&f64| **r > 5.0;
    let first = rates.iter().position(|r| active(&r));
    let last = rates.iter().rposition(|r| active(&r));
    match (first, last) {
        (Some(f), Some(l)) => rates[f..=l].iter().sum::<f64>() / (l - f + 1) as f64,
        _ => 0.0,
    }
}

/// The established TCP connections in location `at` to `endpoint` (`http://host:port`).
fn connections_to(wan: &WanLab, at: &str, endpoint: &str) -> usize {
    let peer = endpoint.trim_start_matches("http://");
    let out = wan
        .lab
        .command(at, "ss")
        .args(["-Htn", "state", "established"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == peer))
            .count()
    })
    .unwrap_or(0)
}

/// `rclone copyto a:src/<key> b:dst/<dest> <flags>` run in location `at`, stopped after
/// `limit` (then measured by the bytes its last stats line reported).
pub fn rclone(
    wan: &WanLab,
    at: &str,
    key: &str,
    dest: &str,
    size: u64,
    flags: &[&str],
    limit: Duration,
) -> Result<RcloneRun> {
    let env = |name: &str, s: &Store, bucket: &str| -> Vec<(String, String)> {
        let c = s.creds(bucket);
        let p = format!("RCLONE_CONFIG_{}_", name.to_uppercase());
        vec![
            (format!("{p}TYPE"), "s3".into()),
            (format!("{p}PROVIDER"), "Other".into()),
            (format!("{p}ENDPOINT"), s.endpoint()),
            (
                format!("{p}ACCESS_KEY_ID"),
                c["access_key_id"].as_str().unwrap_or_default().into(),
            ),
            (
                format!("{p}SECRET_ACCESS_KEY"),
                c["secret_access_key"].as_str().unwrap_or_default().into(),
            ),
            (format!("{p}REGION"), "us-east-1".into()),
        ]
    };
    let log = wan.dir.path().join(format!("rclone-{}.log", free_port()));
    let mut cmd = wan.lab.command(at, "rclone");
    cmd.args(["copyto", &format!("a:src/{key}"), &format!("b:dst/{dest}")])
        .args([
            "--config",
            "/dev/null",
            "--stats",
            "1s",
            "--use-json-log",
            "-v",
        ])
        .args(flags)
        .envs(env("a", &wan.stores[0], "src"))
        .envs(env("b", &wan.stores[1], "dst"))
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("rclone (Debian package rclone)")?;
    // The server across the WAN from where rclone runs.
    let far = if at == REGIONS[1] {
        wan.stores[0].endpoint()
    } else {
        wan.stores[1].endpoint()
    };
    let mut wan_connections = 0;
    let mut sampled = Instant::now();
    let mut rates = RateSampler::new(wan);
    let status = loop {
        rates.tick(wan);
        if sampled.elapsed() >= Duration::from_millis(500) {
            wan_connections = wan_connections.max(connections_to(wan, at, &far));
            sampled = Instant::now();
        }
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = t0.elapsed().as_secs_f64();
    let wan_mbps = wan_phase(&rates.rates);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(RcloneRun {
            secs,
            bytes: size,
            done: true,
            wan_connections,
            wan_mbps,
        }),
        Some(s) => bail!("rclone failed ({s}): {}", tail(&text)),
        None => Ok(RcloneRun {
            secs,
            bytes: last_stats_bytes(&text),
            done: false,
            wan_connections,
            wan_mbps,
        }),
    }
}

/// The `bytes` of the last stats line of rclone's JSON log.
fn last_stats_bytes(log: &str) -> u64 {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["stats"]["bytes"].as_u64())
        .unwrap_or(0)
}

fn tail(s: &str) -> String {
    let n = s.len().saturating_sub(2000);
    s[s.char_indices()
        .map(|(i, _)| i)
        .find(|i| *i >= n)
        .unwrap_or(0)..]
        .to_owned()
}
