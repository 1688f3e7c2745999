//! The `linkemu` command: the [`crate::linkemu`] WAN emulator as a long-running process, built
//! from a JSON description of its endpoints (TUN devices in named network namespaces) and of the
//! round-trip times between them. The terraform lab (`terraform/lab`) starts it to join its
//! regions; tests keep using the library directly.
//!
//! ```json
//! {
//!   "endpoints": [
//!     {"name": "us-east", "netns": "syl-us-east", "tun": "wan0",
//!      "addresses": ["10.240.1.1"], "owns": ["10.240.1.0/24"], "routes": ["10.240.0.0/16"]},
//!     {"name": "eu-west", "netns": "syl-eu-west", "tun": "wan0",
//!      "addresses": ["10.240.2.1"], "owns": ["10.240.2.0/24"], "routes": ["10.240.0.0/16"]}
//!   ],
//!   "rtt_ms": [{"a": "us-east", "b": "eu-west", "ms": 80}],
//!   "default_rtt_ms": 0, "rate_mbps": null, "loss": 0, "seed": 24301
//! }
//! ```
//!
//! Each direction of a pair gets half its RTT as one-way delay; pairs not listed get
//! `default_rtt_ms`. The process writes its pid to `--ready-file` once every device is up and
//! forwarding (callers wait for that file, not for a delay), runs until SIGTERM, SIGINT or
//! SIGHUP, then removes its devices (closing a TUN descriptor deletes the device and its routes)
//! and prints each link's counters to stderr. It exits non-zero if the forwarding thread fails.

use crate::linkemu::{Attachment, Emulator, LinkConfig};
use anyhow::{bail, ensure, Context as _, Result};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "linkemu",
    about = "Userspace WAN link emulator between network namespaces"
)]
pub struct Args {
    /// The JSON description of endpoints and RTTs.
    #[arg(long)]
    pub config: PathBuf,
    /// Written (with this process's pid) once every device forwards.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Check the description and exit without creating anything.
    #[arg(long)]
    pub check: bool,
}

/// The JSON description.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub rtt_ms: Vec<RttSpec>,
    #[serde(default)]
    pub default_rtt_ms: f64,
    /// Bottleneck rate of every link, megabits per second (none: unlimited).
    #[serde(default)]
    pub rate_mbps: Option<f64>,
    /// Random loss of every link, in `[0, 1]`.
    #[serde(default)]
    pub loss: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    0x5eed
}

/// One endpoint: a TUN device in a namespace (the root namespace when `netns` is absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default)]
    pub netns: Option<String>,
    pub tun: String,
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    pub owns: Vec<Ipv4Net>,
    #[serde(default)]
    pub routes: Vec<Ipv4Net>,
}

/// The RTT between two endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttSpec {
    pub a: String,
    pub b: String,
    pub ms: f64,
}

/// The longest RTT accepted (a typo such as `80000` for 80 ms would otherwise stall a lab).
const MAX_RTT_MS: f64 = 10_000.0;

impl Spec {
    /// Parses and checks a description; errors say which field is wrong.
    pub fn parse(json: &str) -> Result<Spec> {
        let spec: Spec = serde_json::from_str(json).context("the description is not valid")?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.endpoints.len() >= 2,
            "endpoints: at least two are needed"
        );
        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        for e in &self.endpoints {
            ensure!(!e.name.is_empty(), "endpoints: a name is empty");
            ensure!(
                names.insert(e.name.as_str()),
                "endpoints: {:?} appears twice",
                e.name
            );
            ensure!(
                !e.tun.is_empty() && e.tun.len() <= 15,
                "endpoints.{}.tun: {:?} is not an interface name (1 to 15 characters)",
                e.name,
                e.tun
            );
            ensure!(
                devices.insert((e.netns.as_deref(), e.tun.as_str())),
                "endpoints.{}.tun: {:?} is used twice in the same namespace",
                e.name,
                e.tun
            );
            ensure!(
                !e.owns.is_empty(),
                "endpoints.{}.owns: an endpoint must own at least one prefix",
                e.name
            );
        }
        for (i, a) in self.endpoints.iter().enumerate() {
            for b in &self.endpoints[i + 1..] {
                for x in &a.owns {
                    for y in &b.owns {
                        ensure!(
                            !(x.contains(y) || y.contains(x)),
                            "endpoints: {} owns {x} and {} owns {y}, which overlap",
                            a.name,
                            b.name
                        );
                    }
                }
            }
        }
        let rtt_ok = |ms: f64| ms.is_finite() && (0.0..=MAX_RTT_MS).contains(&ms);
        ensure!(
            rtt_ok(self.default_rtt_ms),
            "default_rtt_ms: {} is not between 0 and {MAX_RTT_MS}",
            self.default_rtt_ms
        );
        for r in &self.rtt_ms {
            for n in [&r.a, &r.b] {
                ensure!(
                    names.contains(n.as_str()),
                    "rtt_ms: {n:?} is not an endpoint"
                );
            }
            ensure!(r.a != r.b, "rtt_ms: {:?} to itself", r.a);
            ensure!(
                rtt_ok(r.ms),
                "rtt_ms: {} between {} and {} is not between 0 and {MAX_RTT_MS}",
                r.ms,
                r.a,
                r.b
            );
        }
        ensure!(
            (0.0..=1.0).contains(&self.loss),
            "loss: {} is not between 0 and 1",
            self.loss
        );
        if let Some(r) = self.rate_mbps {
            ensure!(
                r.is_finite() && r > 0.0,
                "rate_mbps: {r} is not a positive rate"
            );
        }
        Ok(())
    }

    /// The RTT between two endpoints (the last listed entry wins).
    pub fn rtt(&self, a: &str, b: &str) -> f64 {
        self.rtt_ms
            .iter()
            .rev()
            .find(|r| (r.a == a && r.b == b) || (r.a == b && r.b == a))
            .map_or(self.default_rtt_ms, |r| r.ms)
    }

    /// The conditions from `a` to `b`.
    pub fn link(&self, a: &str, b: &str) -> LinkConfig {
        LinkConfig {
            delay: Duration::from_secs_f64(self.rtt(a, b) / 2.0 / 1000.0),
            rate_bps: self.rate_mbps.map(|r| (r * 1e6) as u64),
            loss: self.loss,
            ..LinkConfig::default()
        }
    }
}

/// Entry point of the `linkemu` binary.
pub fn main(args: Args) -> Result<()> {
    let json = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let spec = Spec::parse(&json).with_context(|| format!("in {}", args.config.display()))?;
    if args.check {
        return Ok(());
    }

    // Block the stop signals before any thread starts (threads inherit the mask), and wait for
    // them on a thread of their own.
    let mut signals = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.wait().is_ok() {
                    stop.store(true, Ordering::Release);
                }
            })
            .context("starting the signal thread")?;
    }

    let mut builder = Emulator::builder().seed(spec.seed);
    for e in &spec.endpoints {
        builder
            .attach_in(
                e.netns.as_deref(),
                Attachment {
                    name: e.name.clone(),
                    tun: e.tun.clone(),
                    addresses: e.addresses.clone(),
                    owns: e.owns.clone(),
                    routes: e.routes.clone(),
                },
            )
            .with_context(|| format!("attaching {}", e.name))?;
    }
    let emu = builder.start()?;
    for a in &spec.endpoints {
        for b in &spec.endpoints {
            if a.name != b.name {
                let (ia, ib) = (id(&emu, &a.name)?, id(&emu, &b.name)?);
                emu.set_link(ia, ib, spec.link(&a.name, &b.name));
            }
        }
    }
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", ready.display()))?;
    }
    eprintln!(
        "linkemu: {} endpoints forwarding (pid {})",
        spec.endpoints.len(),
        std::process::id()
    );
    while !stop.load(Ordering::Acquire) && emu.is_running() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = !emu.is_running();
    for a in &spec.endpoints {
        for b in &spec.endpoints {
            if a.name != b.name {
                let st = emu.stats(id(&emu, &a.name)?, id(&emu, &b.name)?);
                let dropped = st.dropped_loss + st.dropped_queue + st.dropped_down;
                if st.packets > 0 || dropped > 0 {
                    eprintln!(
                        "linkemu: {} -> {}: {} packets, {} bytes, {dropped} dropped",
                        a.name, b.name, st.packets, st.bytes
                    );
                }
            }
        }
    }
    let result = emu.stop();
    if let Some(ready) = &args.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    match result {
        Err(e) => Err(e.context("the forwarding thread failed")),
        Ok(()) if failed => bail!("the forwarding thread stopped"),
        Ok(()) => Ok(()),
    }
}

fn id(emu: &Emulator, name: &str) -> Result<crate::linkemu::EndpointId> {
    emu.endpoint(name)
        .with_context(|| format!("no endpoint {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"{"endpoints": [
        {"name": "a", "netns": "x", "tun": "wan0", "owns": ["10.240.1.0/24"]},
        {"name": "b", "netns": "y", "tun": "wan0", "owns": ["10.240.2.0/24"]}],
      "rtt_ms": [{"a": "a", "b": "b", "ms": 80}]}"#;

    #[test]
    fn rtts_are_split_into_one_way_delays() {
        let spec = Spec::parse(TWO).expect("valid");
        assert_eq!(spec.link("a", "b").delay, Duration::from_millis(40));
        assert_eq!(spec.link("b", "a").delay, Duration::from_millis(40));
        assert_eq!(spec.link("a", "b").rate_bps, None);
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let cases = [
            (TWO.replace("10.240.2.0/24", "10.240.0.0/16"), "overlap"),
            (TWO.replace(r#""ms": 80"#, r#""ms": 80000"#), "rtt_ms"),
            (TWO.replace(r#""b": "b""#, r#""b": "c""#), "not an endpoint"),
            (TWO.replace(r#""name": "b""#, r#""name": "a""#), "twice"),
            (
                TWO.replace(r#"["10.240.1.0/24"]}"#, r#"["10.240.1.0/24"], "mtu": 1}"#),
                "mtu",
            ),
            (TWO.replace(r#""rtt_ms""#, r#""loss": 2, "rtt_ms""#), "loss"),
        ];
        for (json, what) in cases {
            let err = format!("{:#}", Spec::parse(&json).expect_err(what));
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}
