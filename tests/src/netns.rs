//! Network namespaces for tests that cross a network (root only): namespaces joined by veth
//! pairs, commands and background processes inside them, and code run in them on a thread
//! that joined the namespace (`Netns::run`). Everything is named with the test process's pid
//! and a counter, so parallel tests never collide, and removed on drop (processes killed first,
//! then the namespaces, which takes their interfaces with them). A small `sh` watchdog does the
//! same if the test process dies without running `Drop`.
//!
//! [`Regions`] is the standard picture of two regional networks linked over an "internet":
//! `host_a` (10.10.1.2) — `gw_a` (10.10.1.1 | 192.0.2.1) — `gw_b` (192.0.2.2 | 10.20.1.1) —
//! `host_b` (10.20.1.2), hosts routing everything to their gateway, gateways forwarding.

use anyhow::{bail, Context as _, Result};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{prefix}{pid % 100000}x{n}` (≤ 15 chars
/// for prefixes of up to 3 characters, so it also fits an interface name).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command to completion, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// Runs `f` on a new thread that has joined the named namespace (one made by `ip netns add`,
/// ours or someone else's): sockets and devices it opens live there.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = PathBuf::from("/run/netns").join(name);
    std::thread::spawn(move || {
        let fd =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("joining the namespace")?;
        Ok(f())
    })
}

/// A network namespace, deleted (with its processes) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `sysctl -w KEY=VALUE` inside the namespace.
    pub fn sysctl(&self, key_value: &str) -> Result<()> {
        run(self.command("sysctl").args(["-q", "-w", key_value]))?;
        Ok(())
    }

    /// Whether the namespace has an interface called `name`.
    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The namespace's routing table (`ip route show`), one route per line.
    pub fn routes(&self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.ip(&["route", "show"])?.stdout).into_owned())
    }

    /// Runs `f` on a new thread that has joined this namespace: sockets it opens live there.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        run_in(&self.name, f)
    }

    /// Starts `cmd` (built with [`Netns::command`]) in the background, output to `log`.
    pub fn spawn(&self, mut cmd: Command, log: &std::path::Path) -> Result<Proc> {
        let out = std::fs::File::create(log)?;
        cmd.stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null());
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(Proc {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    fn kill_all(&self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Links `a` and `b` with a veth pair (`a_name` in `a`, `b_name` in `b`), with addresses, up.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<(String, String)> {
    let (an, bn) = (unique("va"), unique("vb"));
    ip(&[
        "link", "add", &an, "netns", &a.name, "type", "veth", "peer", "name", &bn, "netns", &b.name,
    ])?;
    for (ns, dev, addr) in [(a, &an, a_addr), (b, &bn, b_addr)] {
        ns.ip(&["address", "add", addr, "dev", dev])?;
        ns.ip(&["link", "set", "dev", dev, "up"])?;
    }
    Ok((an, bn))
}

/// A background process; killed (SIGTERM, then SIGKILL after 5 s) on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (e.g. "HUP") to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string()))?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(s) = child.try_wait()? {
                self.child = None;
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("process {} still running after {timeout:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes namespaces (killing their processes) if the test process dies without dropping them.
pub struct Watchdog(Option<Child>);

impl Watchdog {
    pub fn start(names: &[&str]) -> Watchdog {
        let list = names.join(" ");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             for n in {list}; do for p in $(ip netns pids $n 2>/dev/null); do kill -9 $p; done; \
             ip netns del $n 2>/dev/null; done",
            pid = std::process::id()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        Watchdog(child)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Two regional networks, A (10.10.0.0/16) and B (10.20.0.0/16), each a host behind a gateway,
/// the gateways linked by an "internet" veth (192.0.2.0/24). The gateways forward but have no
/// route to the other region: that is the tunnel's job.
pub struct Regions {
    // Field order is drop order: the watchdog goes last.
    pub host_a: Netns,
    pub gw_a: Netns,
    pub gw_b: Netns,
    pub host_b: Netns,
    /// The gateways' internet-side interfaces.
    pub gw_a_wan: String,
    pub gw_b_wan: String,
    _watchdog: Watchdog,
}

pub const HOST_A: &str = "10.10.1.2";
pub const HOST_B: &str = "10.20.1.2";
pub const GW_A_WAN: &str = "192.0.2.1";
pub const GW_B_WAN: &str = "192.0.2.2";

impl Regions {
    pub fn new() -> Result<Regions> {
        let host_a = Netns::new("ha")?;
        let gw_a = Netns::new("ga")?;
        let gw_b = Netns::new("gb")?;
        let host_b = Netns::new("hb")?;
        let watchdog = Watchdog::start(&[&host_a.name, &gw_a.name, &gw_b.name, &host_b.name]);
        veth(&host_a, "10.10.1.2/24", &gw_a, "10.10.1.1/24")?;
        let (gw_a_wan, gw_b_wan) = veth(&gw_a, "192.0.2.1/24", &gw_b, "192.0.2.2/24")?;
        veth(&gw_b, "10.20.1.1/24", &host_b, "10.20.1.2/24")?;
        host_a.ip(&["route", "add", "default", "via", "10.10.1.1"])?;
        host_b.ip(&["route", "add", "default", "via", "10.20.1.1"])?;
        for gw in [&gw_a, &gw_b] {
            gw.sysctl("net.ipv4.ip_forward=1")?;
        }
        Ok(Regions {
            host_a,
            gw_a,
            gw_b,
            host_b,
            gw_a_wan,
            gw_b_wan,
            _watchdog: watchdog,
        })
    }

    /// Routes each region to the other over the plain internet link (the no-tunnel baseline).
    pub fn route_directly(&self) -> Result<()> {
        self.gw_a
            .ip(&["route", "replace", "10.20.0.0/16", "via", GW_B_WAN])?;
        self.gw_b
            .ip(&["route", "replace", "10.10.0.0/16", "via", GW_A_WAN])?;
        Ok(())
    }

    /// Undoes [`Regions::route_directly`].
    pub fn unroute_directly(&self) -> Result<()> {
        self.gw_a
            .ip(&["route", "del", "10.20.0.0/16", "via", GW_B_WAN])?;
        self.gw_b
            .ip(&["route", "del", "10.10.0.0/16", "via", GW_A_WAN])?;
        Ok(())
    }
}

/// `ping -c COUNT -i INTERVAL -W 1 DST` from `ns`; the number of replies.
pub fn ping(ns: &Netns, dst: &str, count: u32, interval: &str) -> Result<u32> {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            dst,
        ])
        .output()
        .context("running ping (Debian package iputils-ping)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find(|l| l.contains("received"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(received)
}
