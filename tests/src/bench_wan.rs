//! `bench wan`: a cross-region copy through the spoke relay over emulated long and lossy links
//! ([`crate::wan_lab`]), against the tools users would otherwise run over the same links, all
//! in one run: `rclone copyto` (in the destination's region with its defaults and with
//! `--multi-thread-streams 8`; in the source's region with 8 parallel multipart uploads, where
//! rclone does stripe over the WAN), and `iperf3 -C cubic` with one and eight streams as the
//! transport's reference. Each case is a path between the regions: (a) 100 ms RTT, clean; (b)
//! 100 ms, 0.1 % random loss; (c) 200 ms, 1 % loss; the WAN is capped at 1 Gbit/s.
//!
//! A run that has not finished after the time limit is stopped and measured by the bytes it
//! moved (the transfer's `bytes_done`; rclone's last stats line): single TCP streams over a
//! lossy long path would otherwise take most of an hour per gigabyte.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use crate::lab::iperf3_bps;
use crate::wan_lab::{self, Deployment, ServerKind, WanLab, WanPath, REGIONS};
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// The WAN's rate cap.
pub const RATE_BPS: u64 = 1_000_000_000;

/// The cases.
pub const CASES: [(&str, f64, f64); 3] = [
    ("a: 100 ms, clean", 100.0, 0.0),
    ("b: 100 ms, 0.1 % loss", 100.0, 0.001),
    ("c: 200 ms, 1 % loss", 200.0, 0.01),
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

/// One copy through the relay: Mbit/s, whether it finished, spoke CPU seconds per Gbit and the
/// spokes' peak RSS (MiB).
struct Ours {
    mbps: f64,
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
    let name = format!("ours-{round}.bin");
    let c = d.copy(file, &name, limit).await?;
    let gbit = c.bytes as f64 * 8.0 / 1e9;
    let cpu: Vec<f64> = d
        .spokes
        .iter()
        .zip(&cpu0)
        .map(|(s, c0)| (s.cpu_secs() - c0) / gbit.max(1e-9))
        .collect();
    let note = c.transfer["note"].as_str().unwrap_or("");
    if c.done && !note.contains("relayed by spoke") {
        anyhow::bail!("the copy was not relayed: {}", c.transfer);
    }
    if let Some(f) = wan.stores[1].file("dst", &name) {
        let _ = std::fs::remove_file(f);
    }
    Ok(Ours {
        mbps: mbit(c.bytes, c.secs),
        done: c.done,
        cpu_per_gbit: [cpu[0], cpu[1]],
        peak_mib: [d.spokes[0].peak_rss() >> 20, d.spokes[1].peak_rss() >> 20],
    })
}

/// Runs the benchmark (`spoke_bin`: the release `spoke` binary) and prints the table.
pub async fn run(spoke_bin: &Path, b: WanBench) -> Result<()> {
    let first = CASES[b.cases[0]];
    let wan = WanLab::build(
        WanPath {
            rtt_ms: first.1,
            loss: first.2,
            rate_bps: Some(RATE_BPS),
        },
        ServerKind::S3sFs,
    )
    .await?;
    println!(
        "wan: writing the {} MiB source object in region a",
        b.size >> 20
    );
    wan.write_source("big.bin", b.size).await?;
    let mut report = Vec::new();
    for &ci in &b.cases {
        let (case, rtt_ms, loss) = CASES[ci];
        wan.set_path(WanPath {
            rtt_ms,
            loss,
            rate_bps: Some(RATE_BPS),
        });
        println!("== case {case}");
        let mut lines = Vec::new();
        // The transport's reference.
        let mut iperf = Vec::new();
        for (label, extra) in [
            ("iperf3 -C cubic, 1 stream", vec!["-C", "cubic"]),
            ("iperf3 -C cubic -P 8", vec!["-C", "cubic", "-P", "8"]),
        ] {
            let r = wan.lab.iperf3(REGIONS[1], REGIONS[0], 10, &extra)?;
            let mbps = iperf3_bps(&r).unwrap_or(0.0) / 1e6;
            println!("  {label}: {mbps:.1} Mbit/s");
            iperf.push((label, mbps));
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
                    "  relay {cc} round {round}: {:.1} Mbit/s{} | spoke CPU s/Gbit a {:.2} b {:.2} | peak RSS a {} MiB b {} MiB",
                    o.mbps,
                    if o.done { "" } else { " (stopped at the limit)" },
                    o.cpu_per_gbit[0],
                    o.cpu_per_gbit[1],
                    o.peak_mib[0],
                    o.peak_mib[1]
                );
                rounds.push(o);
            }
            let m = median(rounds.iter().map(|o| o.mbps).collect());
            let cpu = [
                median(rounds.iter().map(|o| o.cpu_per_gbit[0]).collect()),
                median(rounds.iter().map(|o| o.cpu_per_gbit[1]).collect()),
            ];
            let peak = rounds
                .iter()
                .map(|o| o.peak_mib[0].max(o.peak_mib[1]))
                .max()
                .unwrap_or(0);
            ours_by.push((cc.clone(), m, cpu, peak));
            drop(d);
        }
        // rclone.
        let mut theirs = Vec::new();
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
            let mut v = Vec::new();
            for round in 0..b.rounds {
                let dest = format!("rclone-{round}.bin");
                let r = wan_lab::rclone(&wan, at, "big.bin", &dest, b.size, &flags, b.limit)?;
                let mbps = mbit(r.bytes, r.secs);
                println!(
                    "  {label} round {round}: {mbps:.1} Mbit/s{}, at most {} TCP connections across the WAN",
                    if r.done { "" } else { " (stopped at the limit)" },
                    r.wan_connections
                );
                if let Some(f) = wan.stores[1].file("dst", &dest) {
                    let _ = std::fs::remove_file(f);
                }
                v.push(mbps);
            }
            theirs.push((label, median(v)));
        }
        let single = theirs[0].1;
        let best = theirs.iter().map(|(_, m)| *m).fold(0.0, f64::max);
        for (cc, m, cpu, peak) in &ours_by {
            lines.push(format!(
                "| {case} | relay, {cc} | {m:.1} | {:.1}× | {:.1}× | {:.2} | {:.2} / {:.2} | {peak} |",
                m / single,
                m / best,
                m / (RATE_BPS as f64 / 1e6),
                cpu[0],
                cpu[1],
            ));
        }
        for (label, m) in &theirs {
            lines.push(format!("| {case} | {label} | {m:.1} | | | | | |"));
        }
        for (label, m) in &iperf {
            lines.push(format!("| {case} | {label} | {m:.1} | | | | | |"));
        }
        report.extend(lines);
    }
    println!(
        "\n| case | what | Mbit/s (median of {}) | vs rclone defaults | vs rclone's best | vs the 1 Gbit/s cap | spoke CPU s per Gbit (a / b) | peak spoke RSS MiB |",
        b.rounds
    );
    println!("|---|---|---|---|---|---|---|---|");
    for l in report {
        println!("{l}");
    }
    Ok(())
}
