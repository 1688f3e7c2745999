//! `bench wan`: a cross-region copy through the spoke relay over emulated long and lossy links
//! ([`crate::wan_lab`]), against the tools users would otherwise run over the same links, all
//! in one run: `rclone copyto` (in the destination's region with its defaults and with
//! `--multi-thread-streams 8`; in the source's region with 8 parallel multipart uploads, where
//! rclone does stripe over the WAN), each under the machine's kernel TCP congestion control and
//! under Debian's default (cubic) when they differ, and `iperf3 -C cubic` with one and eight
//! streams as the transport's reference. Each case is a path between the regions: (a) 100 ms
//! RTT, clean; (b) 100 ms, 0.1 % random loss; (c) 200 ms, 1 % loss; the WAN is capped at
//! 1 Gbit/s; (z) 20 ms, uncapped, measures what the endpoints carry at all.
//!
//! Two rates per copy: end to end (request to `done`), and while crossing the WAN (from the
//! first to the last 100 ms with traffic on the emulated link: without dispatch before and the
//! destination assembling the multipart upload after, which `s3s-fs` does by copying every
//! part, ~4 s per GiB, whoever uploaded them).
//!
//! A run that has not finished after the time limit is stopped and measured by the bytes it
//! moved (the transfer's `bytes_done`; rclone's last stats line): single TCP streams over a
//! lossy long path would otherwise take most of an hour per gigabyte.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use crate::lab::iperf3_bps;
use crate::wan_lab::{self, Deployment, RateSampler, ServerKind, WanLab, WanPath, REGIONS};
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// The WAN's rate cap.
pub const RATE_BPS: u64 = 1_000_000_000;

/// The cases: name, RTT (ms), loss, rate cap. The last is hardly a WAN: it measures what the
/// endpoints (servers, spokes, emulator on this machine's cores) carry at all (20 ms, because
/// the hub relays only when the source is clearly nearer the relaying spoke).
pub const CASES: [(&str, f64, f64, Option<u64>); 4] = [
    ("a: 100 ms, clean", 100.0, 0.0, Some(RATE_BPS)),
    ("b: 100 ms, 0.1 % loss", 100.0, 0.001, Some(RATE_BPS)),
    ("c: 200 ms, 1 % loss", 200.0, 0.01, Some(RATE_BPS)),
    (
        "z: 20 ms, clean, no cap (the endpoints' ceiling)",
        20.0,
        0.0,
        None,
    ),
];

/// What the benchmark runs.
#[derive(Clone, Debug)]
pub struct WanBench {
    pub rounds: usize,
    pub size: u64,
    pub limit: Duration,
    /// Congestion controllers of the relay to measure.
    pub congestion: Vec<String>,
    /// Which cases (indices into [`CASES`]).
    pub cases: Vec<usize>,
    /// Extra `offload:` settings (YAML lines indented by two), for experiments.
    pub offload: String,
    /// Whether to run the baselines (rclone, iperf3); experiments on the relay skip them.
    pub baselines: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn mbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

/// One copy through the relay: Mbit/s end to end and while crossing the WAN, whether it
/// finished, spoke CPU seconds per Gbit and the spokes' peak RSS (MiB).
struct Ours {
    mbps: f64,
    wan_mbps: f64,
    done: bool,
    cpu_per_gbit: [f64; 2],
    peak_mib: [u64; 2],
}

async fn ours_round(
    wan: &WanLab,
    d: &Deployment,
    file: &str,
    round: usize,
    limit: Duration,
) -> Result<Ours> {
    let cpu0: Vec<f64> = d.spokes.iter().map(|s| s.cpu_secs()).collect();
    let link0 = wan.lab.stats(REGIONS[0], REGIONS[1]);
    let overflow0: Vec<u64> = d.spokes.iter().map(|s| s.udp_rcvbuf_errors()).collect();
    let name = format!("ours-{round}.bin");
    // The WAN's delivery rate over time (100 ms samples).
    let finished = std::sync::atomic::AtomicBool::new(false);
    let sample = async {
        let mut rates = RateSampler::new(wan);
        let mut drops = Vec::new();
        let mut last = d.spokes[1].udp_rcvbuf_errors();
        while !finished.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rates.tick(wan);
            let now = d.spokes[1].udp_rcvbuf_errors();
            drops.push(now.saturating_sub(last));
            last = now;
        }
        (rates.rates, drops)
    };
    let copy = async {
        let c = d.copy(file, &name, limit).await;
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        c
    };
    let (c, (rates, drops)) = tokio::join!(copy, sample);
    let c = c?;
    if std::env::var_os("BENCH_WAN_SERIES").is_some() {
        let series: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "    WAN a→b series (Mbit/s per 100 ms): {}",
            series.join(" ")
        );
        let series: Vec<String> = drops.iter().map(|r| r.to_string()).collect();
        println!(
            "    region b's full-UDP-buffer drops per 100 ms: {}",
            series.join(" ")
        );
    }
    let wan_mbps = wan_lab::wan_phase(&rates);
    let gbit = c.bytes as f64 * 8.0 / 1e9;
    let cpu: Vec<f64> = d
        .spokes
        .iter()
        .zip(&cpu0)
        .map(|(s, c0)| (s.cpu_secs() - c0) / gbit.max(1e-9))
        .collect();
    let l = wan.lab.stats(REGIONS[0], REGIONS[1]).since(&link0);
    println!(
        "    emulator a→b: {} packets delivered, {} lost at random, {} dropped by the queue, late p99 ≤ {:?}",
        l.packets,
        l.dropped_loss,
        l.dropped_queue,
        l.late_quantile(0.99)
    );
    let overflows: Vec<u64> = d
        .spokes
        .iter()
        .zip(&overflow0)
        .map(|(s, o0)| s.udp_rcvbuf_errors().saturating_sub(*o0))
        .collect();
    println!(
        "    datagrams dropped for a full UDP receive buffer: region a {}, region b {}",
        overflows[0], overflows[1]
    );
    // What the QUIC path did (each spoke logs it when the relay connection ends).
    for s in &d.spokes {
        if let Some(l) = s
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("relay connection"))
        {
            println!("    {}", l.trim());
        }
    }
    let note = c.transfer["note"].as_str().unwrap_or("");
    if c.done && !note.contains("relayed by spoke") {
        anyhow::bail!("the copy was not relayed: {}", c.transfer);
    }
    if let Some(f) = wan.stores[1].file("dst", &name) {
        let _ = std::fs::remove_file(f);
    }
    Ok(Ours {
        mbps: mbit(c.bytes, c.secs),
        wan_mbps,
        done: c.done,
        cpu_per_gbit: [cpu[0], cpu[1]],
        peak_mib: [d.spokes[0].peak_rss() >> 20, d.spokes[1].peak_rss() >> 20],
    })
}

/// The kernel's default TCP congestion control in region `r`'s namespace.
fn kernel_cc(wan: &WanLab, r: &str) -> Result<String> {
    let out = wan
        .lab
        .command(r, "sysctl")
        .args(["-n", "net.ipv4.tcp_congestion_control"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The machine's `net.ipv4.tcp_allowed_congestion_control` while the benchmark widens it: a
/// namespace may only default to an allowed controller (this machine allows `reno bbr`), so
/// `cubic` is added for the run and the list put back when this drops.
struct AllowedCc(Option<String>);

impl AllowedCc {
    const KEY: &'static str = "net.ipv4.tcp_allowed_congestion_control";

    fn allow(cc: &str) -> Result<AllowedCc> {
        let out = std::process::Command::new("sysctl")
            .args(["-n", Self::KEY])
            .output()?;
        let was = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if was.split_whitespace().any(|c| c == cc) {
            return Ok(AllowedCc(None));
        }
        let ok = std::process::Command::new("sysctl")
            .args(["-q", "-w", &format!("{}={was} {cc}", Self::KEY)])
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot allow TCP congestion control {cc}");
        Ok(AllowedCc(Some(was)))
    }
}

impl Drop for AllowedCc {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = std::process::Command::new("sysctl")
                .args(["-q", "-w", &format!("{}={was}", Self::KEY)])
                .status();
        }
    }
}

/// Sets the default TCP congestion control of both regions' namespaces (sockets made after
/// it, including connections the servers accept, use it).
fn set_kernel_cc(wan: &WanLab, cc: &str) -> Result<()> {
    for r in REGIONS {
        let ok = wan
            .lab
            .command(r, "sysctl")
            .args(["-q", "-w", &format!("net.ipv4.tcp_congestion_control={cc}")])
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot set TCP congestion control {cc} in {r}");
    }
    Ok(())
}

/// rclone's median over the rounds: (end to end, while crossing the WAN), Mbit/s.
fn rclone_runs(
    wan: &WanLab,
    b: &WanBench,
    label: &str,
    at: &str,
    flags: &[&str],
) -> Result<(f64, f64)> {
    let mut v = Vec::new();
    let mut w = Vec::new();
    for round in 0..b.rounds {
        let dest = format!("rclone-{round}.bin");
        let r = wan_lab::rclone(wan, at, "big.bin", &dest, b.size, flags, b.limit)?;
        let mbps = mbit(r.bytes, r.secs);
        println!(
            "  {label} round {round}: {mbps:.1} Mbit/s ({:.1} while crossing the WAN){}, at most {} TCP connections across the WAN",
            r.wan_mbps,
            if r.done { "" } else { " (stopped at the limit)" },
            r.wan_connections
        );
        if let Some(f) = wan.stores[1].file("dst", &dest) {
            let _ = std::fs::remove_file(f);
        }
        v.push(mbps);
        w.push(r.wan_mbps);
    }
    Ok((median(v), median(w)))
}

/// Runs the benchmark (`spoke_bin`: the release `spoke` binary) and prints the table.
pub async fn run(spoke_bin: &Path, b: WanBench) -> Result<()> {
    let first = CASES[b.cases[0]];
    let wan = WanLab::build(
        WanPath {
            rtt_ms: first.1,
            loss: first.2,
            rate_bps: first.3,
        },
        ServerKind::S3sFs,
    )
    .await?;
    // rclone runs under the machine's kernel TCP congestion control, and under Debian's
    // default (cubic) when the machine's differs: the loss-based stream users mostly have.
    let machine_cc = kernel_cc(&wan, REGIONS[0])?;
    let mut kernel_ccs = vec![machine_cc.clone()];
    let mut _allowed = None;
    if machine_cc != "cubic" && b.baselines {
        _allowed = Some(AllowedCc::allow("cubic")?);
        kernel_ccs.push("cubic".to_owned());
    }
    println!(
        "wan: writing the {} MiB source object in region a (kernel TCP congestion control: {machine_cc})",
        b.size >> 20
    );
    wan.write_source("big.bin", b.size).await?;
    let mut report = Vec::new();
    for &ci in &b.cases {
        let (case, rtt_ms, loss, rate_bps) = CASES[ci];
        wan.set_path(WanPath {
            rtt_ms,
            loss,
            rate_bps,
        });
        println!("== case {case}");
        // The transport's reference.
        let mut iperf = Vec::new();
        if b.baselines {
            for (label, extra) in [
                ("iperf3 -C cubic, 1 stream", vec!["-C", "cubic"]),
                ("iperf3 -C cubic -P 8", vec!["-C", "cubic", "-P", "8"]),
            ] {
                let r = wan.lab.iperf3(REGIONS[1], REGIONS[0], 10, &extra)?;
                let mbps = iperf3_bps(&r).unwrap_or(0.0) / 1e6;
                println!("  {label}: {mbps:.1} Mbit/s");
                iperf.push((label, mbps));
            }
        }
        // Ours, per congestion controller.
        let mut ours_by = Vec::new();
        for cc in &b.congestion {
            let d = wan.deploy(spoke_bin, cc, &b.offload).await?;
            let file = d.source_id("big.bin").await?;
            let mut rounds = Vec::new();
            for round in 0..b.rounds {
                let o = ours_round(&wan, &d, &file, round, b.limit).await?;
                println!(
                    "  relay {cc} round {round}: {:.1} Mbit/s ({:.1} while crossing the WAN){} | spoke CPU s/Gbit a {:.2} b {:.2} | peak RSS a {} MiB b {} MiB",
                    o.mbps,
                    o.wan_mbps,
                    if o.done { "" } else { " (stopped at the limit)" },
                    o.cpu_per_gbit[0],
                    o.cpu_per_gbit[1],
                    o.peak_mib[0],
                    o.peak_mib[1]
                );
                rounds.push(o);
            }
            let m = median(rounds.iter().map(|o| o.mbps).collect());
            let w = median(rounds.iter().map(|o| o.wan_mbps).collect());
            let cpu = [
                median(rounds.iter().map(|o| o.cpu_per_gbit[0]).collect()),
                median(rounds.iter().map(|o| o.cpu_per_gbit[1]).collect()),
            ];
            let peak = [
                rounds.iter().map(|o| o.peak_mib[0]).max().unwrap_or(0),
                rounds.iter().map(|o| o.peak_mib[1]).max().unwrap_or(0),
            ];
            ours_by.push((cc.clone(), m, w, cpu, peak));
            drop(d);
        }
        // rclone, per kernel congestion control: (kernel cc, label, end to end, WAN phase).
        let mut theirs: Vec<(String, &str, f64, f64)> = Vec::new();
        if b.baselines {
            for kcc in &kernel_ccs {
                set_kernel_cc(&wan, kcc)?;
                for (label, at, flags) in [
                    ("rclone copyto in b, defaults", REGIONS[1], vec![]),
                    (
                        "rclone copyto in b, --multi-thread-streams 8",
                        REGIONS[1],
                        vec!["--multi-thread-streams", "8"],
                    ),
                    (
                        "rclone copyto in a, --s3-upload-concurrency 8 --s3-chunk-size 16M",
                        REGIONS[0],
                        vec!["--s3-upload-concurrency", "8", "--s3-chunk-size", "16M"],
                    ),
                ] {
                    // `--multi-thread-streams` changes nothing for an S3 destination (one
                    // connection either way): shown under the machine's controller only.
                    if kcc != &machine_cc && !flags.is_empty() && at == REGIONS[1] {
                        continue;
                    }
                    let label_k = format!("{label} (kernel {kcc})");
                    let (m, w) = rclone_runs(&wan, &b, &label_k, at, &flags)?;
                    theirs.push((kcc.clone(), label, m, w));
                }
            }
            set_kernel_cc(&wan, &machine_cc)?;
        }
        // Ratios against rclone under each kernel controller.
        let single = |k: &str| theirs.iter().find(|t| t.0 == k).map_or(f64::NAN, |t| t.2);
        let best = |k: &str| {
            theirs
                .iter()
                .filter(|t| t.0 == k)
                .map(|t| t.2)
                .fold(f64::NAN, f64::max)
        };
        let ratios = |m: f64, f: &dyn Fn(&str) -> f64| {
            kernel_ccs
                .iter()
                .map(|k| format!("{:.1}×", m / f(k)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (cc, m, w, cpu, peak) in &ours_by {
            report.push(format!(
                "| {case} | relay, {cc} | {m:.1} | {w:.1} | {} | {} | {:.2} | {:.2} / {:.2} | {} / {} |",
                ratios(*m, &single),
                ratios(*m, &best),
                w / (RATE_BPS as f64 / 1e6),
                cpu[0],
                cpu[1],
                peak[0],
                peak[1],
            ));
        }
        for (kcc, label, m, w) in &theirs {
            report.push(format!(
                "| {case} | {label}, kernel {kcc} | {m:.1} | {w:.1} | | | | | |"
            ));
        }
        for (label, m) in &iperf {
            report.push(format!("| {case} | {label} | | {m:.1} | | | | | |"));
        }
    }
    println!(
        "\n| case | what | Mbit/s end to end (median of {}) | Mbit/s while crossing the WAN | vs rclone defaults (kernel {}) | vs rclone's best (kernel {}) | WAN phase vs the 1 Gbit/s cap | spoke CPU s per Gbit (a / b) | peak spoke RSS MiB (a / b) |",
        b.rounds,
        kernel_ccs.join(" / "),
        kernel_ccs.join(" / "),
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in report {
        println!("{l}");
    }
    Ok(())
}
