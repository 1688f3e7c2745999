//! The multi-region lab: one network namespace per location (regions such as `us-east`, and
//! clients such as "a client near eu-west"), all joined through the [`linkemu`] WAN emulator with
//! a round-trip-time matrix that tests can change while they run (RTT, loss, rate, a location
//! going down).
//!
//! Address plan. A lab claims one free block `10.B.0.0/16` with `B` in 100..=199 (an exclusive
//! `flock` on `$TMPDIR/switchyard-lab-blocks/B`, released when the lab or its process goes, so
//! parallel test processes never share a block; other tests use 10.10, 10.20, 10.251 and
//! 192.0.2). Location `i` owns `10.B.i.0/24` and has the address `10.B.i.1` ([`Lab::addr`]);
//! [`Lab::add_address`] hands out `.2`, `.3`, … in the same location (a second hub, say).
//! Location 0 is the root namespace ([`ROOT`]), then the regions and the clients in the order
//! given.
//!
//! Inside a location's namespace everything not local goes to a TUN device `wan0` (default
//! route), which carries the location's addresses; the emulator delivers to it what is addressed
//! to its /24. **The root namespace is an attached location too**: a TUN device (unique name)
//! holds `10.B.0.1` with a route to `10.B.0.0/16`, and nothing else of the root's routing
//! changes. So the test process reaches every hub at its lab address, and lab namespaces reach a
//! server started in the root namespace (a shared PostgreSQL, say) at `lab.addr(ROOT)`. This was
//! preferred over a separate veth management network because it needs no second address per
//! location, keeps one routing picture (every path between two lab addresses crosses the
//! emulator, so a location that is down is down for the test process too), and the root's links
//! can be given delays like any other location (by default they have none and are never shaped).
//!
//! RTTs: each direction gets half the configured RTT as one-way delay. A client placed "near" a
//! region has that region's RTTs to everyone else and `near_rtt_ms` (default 2 ms) to the region
//! itself; an explicit [`LabSpec::rtt`] always wins. The rate, loss and queue limit of the spec
//! apply to every link between two non-root locations.
//!
//! Teardown: dropping the [`Lab`] stops the emulator (its devices and routes go), then kills the
//! processes in the namespaces and deletes them; a watchdog does the same if the test process
//! dies without unwinding.
//!
//! ```no_run
//! use e2e::lab::{Lab, LabSpec, ROOT};
//! # fn f() -> anyhow::Result<()> {
//! let lab = Lab::build(
//!     LabSpec::new()
//!         .region("us-east")
//!         .region("eu-west")
//!         .client("client-eu", "eu-west")
//!         .rtt("us-east", "eu-west", 80.0),
//! )?;
//! let hub = lab.addr("eu-west"); // 10.B.2.1
//! let ping = lab.ping("client-eu", hub, 5, std::time::Duration::from_millis(100))?;
//! assert!(ping.median_ms().is_some());
//! lab.set_down("eu-west", true); // failover
//! # let _ = ROOT; Ok(()) }
//! ```

use crate::linkemu::{Attachment, Emulator, EndpointId, LinkConfig, LinkStats, QueueLimit};
use crate::netns::{self, Netns, Proc, Watchdog};
use anyhow::{bail, Context as _, Result};
use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The name of the root namespace's location.
pub const ROOT: &str = "root";

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    regions: Vec<String>,
    clients: Vec<(String, String)>,
    rtts: Vec<(String, String, f64)>,
    near_rtt_ms: f64,
    root_rtt_ms: f64,
    link: LinkConfig,
    seed: u64,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec::new()
    }
}

impl LabSpec {
    pub fn new() -> LabSpec {
        LabSpec {
            regions: Vec::new(),
            clients: Vec::new(),
            rtts: Vec::new(),
            near_rtt_ms: 2.0,
            root_rtt_ms: 0.0,
            link: LinkConfig::default(),
            seed: 0x5eed,
        }
    }

    /// A region (a namespace for its hub and spokes).
    pub fn region(mut self, name: &str) -> Self {
        self.regions.push(name.to_owned());
        self
    }

    /// A client location near `region`.
    pub fn client(mut self, name: &str, near: &str) -> Self {
        self.clients.push((name.to_owned(), near.to_owned()));
        self
    }

    /// The RTT between `a` and `b` in milliseconds (both directions, half each way).
    pub fn rtt(mut self, a: &str, b: &str, ms: f64) -> Self {
        self.rtts.push((a.to_owned(), b.to_owned(), ms));
        self
    }

    /// The RTT between a client and the region it is near (default 2 ms).
    pub fn near_rtt(mut self, ms: f64) -> Self {
        self.near_rtt_ms = ms;
        self
    }

    /// The RTT between the root namespace and every location (default 0).
    pub fn root_rtt(mut self, ms: f64) -> Self {
        self.root_rtt_ms = ms;
        self
    }

    /// The rate limit of every link between two lab locations (bits/s).
    pub fn rate_bps(mut self, rate: Option<u64>) -> Self {
        self.link.rate_bps = rate;
        self
    }

    /// The random loss of every link between two lab locations.
    pub fn loss(mut self, p: f64) -> Self {
        self.link.loss = p;
        self
    }

    /// The queue limit of every link between two lab locations.
    pub fn queue(mut self, q: QueueLimit) -> Self {
        self.link.queue = q;
        self
    }

    /// The seed of the emulator's loss draws.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn near(&self, name: &str) -> String {
        self.clients
            .iter()
            .find(|(c, _)| c == name)
            .map_or_else(|| name.to_owned(), |(_, r)| r.clone())
    }

    fn explicit(&self, a: &str, b: &str) -> Option<f64> {
        self.rtts
            .iter()
            .rev()
            .find(|(x, y, _)| (x == a && y == b) || (x == b && y == a))
            .map(|(_, _, ms)| *ms)
    }

    /// The RTT between two distinct locations.
    fn rtt_between(&self, a: &str, b: &str) -> Result<f64> {
        if let Some(ms) = self.explicit(a, b) {
            return Ok(ms);
        }
        if a == ROOT || b == ROOT {
            return Ok(self.root_rtt_ms);
        }
        let (ra, rb) = (self.near(a), self.near(b));
        if ra == rb {
            return Ok(self.near_rtt_ms);
        }
        self.explicit(&ra, &rb)
            .with_context(|| format!("no RTT between {ra} and {rb} (LabSpec::rtt)"))
    }
}

struct Location {
    name: String,
    /// `None` for the root namespace.
    ns: Option<Netns>,
    tun: String,
    addr: Ipv4Addr,
    id: EndpointId,
}

/// A running lab. Dropping it tears everything down.
pub struct Lab {
    // Field order is drop order: the emulator (and its devices) first, the watchdog and the
    // address block last.
    emu: Emulator,
    locations: Vec<Location>,
    block: u8,
    next_host: Mutex<Vec<u8>>,
    _watchdog: Watchdog,
    _block_lock: Flock<std::fs::File>,
}

fn delay_of(rtt_ms: f64) -> Duration {
    Duration::from_secs_f64(rtt_ms.max(0.0) / 2000.0)
}

impl Lab {
    /// Builds the namespaces, the emulator and its links.
    pub fn build(spec: LabSpec) -> Result<Lab> {
        let mut names = vec![ROOT.to_owned()];
        names.extend(spec.regions.iter().cloned());
        names.extend(spec.clients.iter().map(|(c, _)| c.clone()));
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                bail!("location {n} given twice");
            }
        }
        for (c, r) in &spec.clients {
            if !spec.regions.contains(r) {
                bail!("client {c} is near {r}, which is not a region");
            }
        }
        if names.len() > 250 {
            bail!("at most 249 locations");
        }
        let (block, block_lock) = claim_block()?;

        let mut namespaces = Vec::new();
        for n in &names[1..] {
            let prefix = if spec.regions.contains(n) { "lr" } else { "lc" };
            namespaces.push(Netns::new(prefix)?);
        }
        // Deletes the namespaces if the test process dies without dropping the lab. (The root
        // TUN device needs no watchdog: it dies with its descriptor.)
        let names_: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
        let watchdog = Watchdog::start(&names_);

        let mut builder = Emulator::builder().seed(spec.seed);
        let mut locations = Vec::new();
        let mut spaces = namespaces.into_iter();
        for (i, name) in names.iter().enumerate() {
            let addr = Ipv4Addr::new(10, block, i as u8, 1);
            let owns = Ipv4Net::new(addr, 24)?.trunc();
            let (ns, tun, routes) = if i == 0 {
                let lab = Ipv4Net::new(addr, 16)?.trunc();
                (None, netns::unique("lke"), vec![lab])
            } else {
                let ns = spaces.next().context("one namespace per location")?;
                (Some(ns), "wan0".to_owned(), vec![Ipv4Net::default()])
            };
            let id = builder.attach(
                ns.as_ref(),
                Attachment {
                    name: name.clone(),
                    tun: tun.clone(),
                    addresses: vec![addr],
                    owns: vec![owns],
                    routes,
                },
            )?;
            locations.push(Location {
                name: name.clone(),
                ns,
                tun,
                addr,
                id,
            });
        }
        let emu = builder.start()?;
        for a in &locations {
            for b in &locations {
                if a.id == b.id {
                    continue;
                }
                let rtt = spec.rtt_between(&a.name, &b.name)?;
                let mut cfg = if a.ns.is_none() || b.ns.is_none() {
                    LinkConfig::default()
                } else {
                    spec.link
                };
                cfg.delay = delay_of(rtt);
                emu.set_link(a.id, b.id, cfg);
            }
        }
        Ok(Lab {
            emu,
            next_host: Mutex::new(vec![2; locations.len()]),
            locations,
            block,
            _watchdog: watchdog,
            _block_lock: block_lock,
        })
    }

    fn loc(&self, name: &str) -> &Location {
        self.locations
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no location {name} in this lab"))
    }

    /// Every location's name, the root first.
    pub fn names(&self) -> Vec<&str> {
        self.locations.iter().map(|l| l.name.as_str()).collect()
    }

    /// The lab's address block, `10.B.0.0/16`.
    pub fn block(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, self.block, 0, 0), 16).unwrap_or_default()
    }

    /// The location's namespace. Panics for [`ROOT`] (the test's own namespace) and unknown
    /// names.
    pub fn ns(&self, name: &str) -> &Netns {
        self.loc(name)
            .ns
            .as_ref()
            .unwrap_or_else(|| panic!("{name} is the root namespace"))
    }

    /// The location's main address (`10.B.i.1`). Panics for unknown names.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.loc(name).addr
    }

    /// The TUN interface of the location (`wan0` inside a namespace).
    pub fn interface(&self, name: &str) -> &str {
        &self.loc(name).tun
    }

    /// Adds another address in the location (`10.B.i.2`, `.3`, …) and returns it.
    pub fn add_address(&self, name: &str) -> Result<Ipv4Addr> {
        let l = self.loc(name);
        let host = {
            let mut next = self.next_host.lock().unwrap_or_else(|p| p.into_inner());
            let i = l.id.0;
            if next[i] == 255 {
                bail!("location {name} has no addresses left");
            }
            next[i] += 1;
            next[i] - 1
        };
        let [a, b, c, _] = l.addr.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        let args = ["address", "add", &format!("{addr}/32"), "dev", &l.tun];
        match &l.ns {
            Some(ns) => ns.ip(&args)?,
            None => netns::ip(&args)?,
        };
        Ok(addr)
    }

    /// A command to run in the location (a plain command for [`ROOT`]).
    pub fn command(&self, name: &str, program: &str) -> Command {
        match &self.loc(name).ns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    /// Starts `cmd` (from [`Lab::command`]) in the background in a namespace location, output
    /// to `log`; killed when the returned [`Proc`] or the lab drops.
    pub fn spawn(&self, name: &str, cmd: Command, log: &std::path::Path) -> Result<Proc> {
        self.ns(name).spawn(cmd, log)
    }

    /// The emulator, for anything this API does not cover.
    pub fn emulator(&self) -> &Emulator {
        &self.emu
    }

    /// The emulator endpoint of a location.
    pub fn endpoint(&self, name: &str) -> EndpointId {
        self.loc(name).id
    }

    /// The conditions of the direction `from` → `to`.
    pub fn link(&self, from: &str, to: &str) -> LinkConfig {
        self.emu.link(self.loc(from).id, self.loc(to).id)
    }

    /// Edits the direction `from` → `to`.
    pub fn update_link(&self, from: &str, to: &str, f: impl FnOnce(&mut LinkConfig)) {
        self.emu.update_link(self.loc(from).id, self.loc(to).id, f);
    }

    /// Edits both directions between `a` and `b`.
    pub fn update_both(&self, a: &str, b: &str, f: impl Fn(&mut LinkConfig)) {
        self.update_link(a, b, &f);
        self.update_link(b, a, &f);
    }

    /// Sets the RTT between `a` and `b` (half each way), from now on.
    pub fn set_rtt(&self, a: &str, b: &str, ms: f64) {
        self.update_both(a, b, |c| c.delay = delay_of(ms));
    }

    /// Sets the random loss between `a` and `b`, both directions.
    pub fn set_loss(&self, a: &str, b: &str, p: f64) {
        self.update_both(a, b, |c| c.loss = p);
    }

    /// Sets the rate limit between `a` and `b`, both directions.
    pub fn set_rate(&self, a: &str, b: &str, rate_bps: Option<u64>) {
        self.update_both(a, b, |c| c.rate_bps = rate_bps);
    }

    /// Cuts a location off from every other (the root included), or brings it back.
    pub fn set_down(&self, name: &str, down: bool) {
        for other in &self.locations {
            if other.name != name {
                self.update_both(name, &other.name, |c| c.down = down);
            }
        }
    }

    /// The counters of the direction `from` → `to`.
    pub fn stats(&self, from: &str, to: &str) -> LinkStats {
        self.emu.stats(self.loc(from).id, self.loc(to).id)
    }

    /// Pings `to` from location `from`: `count` echo requests `interval` apart, then waits at
    /// most 2 s for the last replies.
    pub fn ping(&self, from: &str, to: Ipv4Addr, count: u32, interval: Duration) -> Result<Ping> {
        // No `-w`: with a deadline, ping keeps sending until `count` replies came back.
        let out = self
            .command(from, "ping")
            .args(["-n", "-c", &count.to_string()])
            .args(["-i", &format!("{:.3}", interval.as_secs_f64())])
            .args(["-W", "2"])
            .arg(to.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running ping (Debian package iputils-ping)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rtts_ms = text
            .lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|t| t.split_whitespace().next()?.parse().ok())
            .collect();
        Ok(Ping {
            sent: count,
            rtts_ms,
        })
    }

    /// Like [`Lab::ping`] but over UDP with microsecond timestamps (ping prints RTTs of 100 ms
    /// and more in whole milliseconds): an echo responder on `to`'s address in its location,
    /// and `count` sequential probes from `from`, each waited for at most 2 s and `interval`
    /// apart.
    pub fn udp_ping(&self, from: &str, to: &str, count: u32, interval: Duration) -> Result<Ping> {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let in_ns =
            |name: &str, f: Box<dyn FnOnce() -> Result<Ping> + Send>| match &self.loc(name).ns {
                Some(ns) => ns
                    .run(f)
                    .join()
                    .map_err(|_| anyhow::anyhow!("udp_ping thread panicked"))??,
                None => f(),
            };
        let bind = SocketAddr::from((self.addr(to), 0));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let responder = move || -> Result<Ping> {
            let sock = UdpSocket::bind(bind)?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let _ = tx.send(sock.local_addr());
            let mut buf = [0u8; 64];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
            Ok(Ping {
                sent: 0,
                rtts_ms: Vec::new(),
            })
        };
        std::thread::scope(|s| {
            let echo = s.spawn(|| in_ns(to, Box::new(responder)));
            let result = (|| {
                let target = rx
                    .recv_timeout(Duration::from_secs(5))
                    .context("the echo responder did not start")??;
                let prober = move || -> Result<Ping> {
                    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut rtts_ms = Vec::new();
                    let mut buf = [0u8; 64];
                    for seq in 0..count {
                        let t0 = Instant::now();
                        sock.send_to(&seq.to_be_bytes(), target)?;
                        while let Ok(n) = sock.recv(&mut buf) {
                            if n == 4 && buf[..4] == seq.to_be_bytes() {
                                rtts_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                                break;
                            }
                        }
                        std::thread::sleep(interval.saturating_sub(t0.elapsed()));
                    }
                    Ok(Ping {
                        sent: count,
                        rtts_ms,
                    })
                };
                in_ns(from, Box::new(prober))
            })();
            stop.store(true, Ordering::Relaxed);
            let echoed = echo
                .join()
                .map_err(|_| anyhow::anyhow!("echo thread panicked"));
            let ping = result?;
            echoed??;
            Ok(ping)
        })
    }

    /// Runs `iperf3` from `client` to a one-off server in `server` for `secs` seconds with
    /// `extra` client arguments (e.g. `-R`, `-P 4`, `-u -b 100M`); the JSON report.
    pub fn iperf3(
        &self,
        server: &str,
        client: &str,
        secs: u32,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        self.iperf3_at(server, self.addr(server), client, secs, extra)
    }

    /// [`Lab::iperf3`] with the server on `addr` (an address of `server` outside the lab plan,
    /// such as a veth baseline's).
    pub fn iperf3_at(
        &self,
        server: &str,
        addr: Ipv4Addr,
        client: &str,
        secs: u32,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(5301);
        let port = PORT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let addr = addr.to_string();
        let mut srv = self
            .command(server, "iperf3")
            .args(["-s", "-1", "-B", &addr, "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting iperf3 -s (Debian package iperf3)")?;
        let result = (|| {
            let started = Instant::now();
            loop {
                let out = self
                    .command(client, "iperf3")
                    .args(["-c", &addr, "-p", &port, "-J", "-t", &secs.to_string()])
                    .args(extra)
                    .stdin(Stdio::null())
                    .output()
                    .context("running iperf3 -c")?;
                let report: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                let err = report["error"].as_str().map(str::to_owned);
                match err {
                    None if out.status.success() => return Ok(report),
                    // The server may not be listening yet.
                    Some(e)
                        if e.contains("connect") && started.elapsed() < Duration::from_secs(5) =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => bail!(
                        "iperf3 {client} -> {server} failed: {}",
                        err.unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
                    ),
                }
            }
        })();
        kill(&mut srv);
        result
    }
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The received bits per second of an iperf3 JSON report (TCP or UDP).
pub fn iperf3_bps(report: &serde_json::Value) -> Option<f64> {
    let end = &report["end"];
    end["sum_received"]["bits_per_second"]
        .as_f64()
        .or_else(|| end["sum"]["bits_per_second"].as_f64())
}

/// The outcome of [`Lab::ping`].
#[derive(Clone, Debug)]
pub struct Ping {
    pub sent: u32,
    /// The RTT of every reply, in arrival order.
    pub rtts_ms: Vec<f64>,
}

impl Ping {
    pub fn received(&self) -> usize {
        self.rtts_ms.len()
    }

    /// The median RTT.
    pub fn median_ms(&self) -> Option<f64> {
        self.quantile_ms(0.5)
    }

    /// A quantile (nearest rank) of the RTTs.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut v = self.rtts_ms.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

/// Claims a free `10.B.0.0/16` block for this lab.
fn claim_block() -> Result<(u8, Flock<std::fs::File>)> {
    let dir = std::env::temp_dir().join("switchyard-lab-blocks");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for b in 100u8..=199 {
        let path = dir.join(b.to_string());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok((b, lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => return Err(e).context("locking an address block"),
        }
    }
    bail!("every lab address block (10.100-199.0.0/16) is in use")
}
