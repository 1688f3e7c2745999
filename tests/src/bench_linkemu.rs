//! `bench linkemu`: the WAN link emulator's accuracy and capacity, in two lab namespaces.
//!
//! (a) Delay accuracy: for RTTs of 10, 80 and 150 ms, UDP probes from `a` to `b`, idle and while
//! a 100 Mbit/s TCP flow (`iperf3 -b 100M`) runs the same way on an unshaped link; the error of
//! each probe against the configured RTT (median and p99 over 3 rounds), and the emulator's own
//! lateness (when it wrote each packet against its due time). Then the same on a saturated
//! 100 Mbit/s link (goodput, ping RTT including the queueing the flow causes, lateness).
//! (b) Unshaped TCP throughput through the emulator, one stream and four, against a plain veth
//! pair between the same two namespaces, medians of 3, with the emulator thread's CPU.

#![allow(clippy::print_stdout)]

use crate::lab::{iperf3_bps, Lab, LabSpec};
use anyhow::{Context as _, Result};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn us(d: Option<Duration>) -> String {
    d.map_or_else(|| "> 5000".to_owned(), |d| format!("≤ {}", d.as_micros()))
}

/// Probes `a` → `b` over UDP (`count` probes, 40 ms apart) while `iperf3 extra` runs `a` → `b` for `secs`;
/// the ping RTTs and the iperf3 goodput.
fn ping_under_load(lab: &Lab, secs: u32, count: u32, extra: &[&str]) -> Result<(Vec<f64>, f64)> {
    std::thread::scope(|s| {
        let load = s.spawn(|| lab.iperf3("b", "a", secs, extra));
        std::thread::sleep(Duration::from_secs(1));
        let ping = lab.udp_ping("a", "b", count, Duration::from_millis(40));
        let report = load
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread"))??;
        let bps = iperf3_bps(&report).context("iperf3 result")?;
        Ok((ping?.rtts_ms, bps))
    })
}

fn accuracy(lab: &Lab) -> Result<()> {
    println!("## (a) delay accuracy");
    println!();
    println!(
        "UDP probes (µs timestamps), 100 per round, 3 rounds: idle, then during a 100 Mbit/s TCP \
         flow the same way (`iperf3 -b 100M -C cubic -t 6`) on an unshaped link:"
    );
    println!();
    println!("| RTT configured | load | probes answered | median error | p99 error | max error | emulator lateness p50 / p99 (µs) |");
    println!("|---|---|---|---|---|---|---|");
    for rtt in [10.0, 80.0, 150.0] {
        lab.set_rtt("a", "b", rtt);
        lab.set_rate("a", "b", None);
        for loaded in [false, true] {
            let mut errors = Vec::new();
            let mut loads = Vec::new();
            let mut sent = 0;
            let before = lab.stats("a", "b");
            for _ in 0..ROUNDS {
                let rtts = if loaded {
                    let (rtts, bps) = ping_under_load(lab, 6, 100, &["-b", "100M", "-C", "cubic"])?;
                    loads.push(bps / 1e6);
                    rtts
                } else {
                    lab.udp_ping("a", "b", 100, Duration::from_millis(20))?
                        .rtts_ms
                };
                sent += 100;
                errors.extend(rtts.iter().map(|r| r - rtt));
            }
            let s = lab.stats("a", "b").since(&before);
            let load = if loaded {
                format!("{:.1} Mbit/s", median(loads))
            } else {
                "idle".to_owned()
            };
            println!(
                "| {rtt} ms | {load} | {}/{sent} | {:+.3} ms | {:+.3} ms | {:+.3} ms | {} / {} |",
                errors.len(),
                median(errors.clone()),
                quantile(errors.clone(), 0.99),
                quantile(errors, 1.0),
                us(s.late_quantile(0.5)),
                us(s.late_quantile(0.99)),
            );
        }
    }
    println!();
    println!("A saturated 100 Mbit/s link (one TCP flow, default queue of 1000 packets), one 6 s round each:");
    println!();
    println!("| RTT configured | congestion control | goodput | ping median (queueing included) | emulator lateness p50 / p99 (µs) |");
    println!("|---|---|---|---|---|");
    for rtt in [10.0, 80.0, 150.0] {
        lab.set_rtt("a", "b", rtt);
        lab.set_rate("a", "b", Some(100_000_000));
        for cc in ["cubic", "bbr"] {
            let before = lab.stats("a", "b");
            let (rtts, bps) = ping_under_load(lab, 6, 100, &["-C", cc])?;
            let s = lab.stats("a", "b").since(&before);
            println!(
                "| {rtt} ms | {cc} | {:.1} Mbit/s | {:.2} ms | {} / {} |",
                bps / 1e6,
                median(rtts),
                us(s.late_quantile(0.5)),
                us(s.late_quantile(0.99)),
            );
        }
    }
    println!();
    Ok(())
}

fn throughput(lab: &Lab) -> Result<()> {
    lab.set_rtt("a", "b", 0.0);
    lab.set_rate("a", "b", None);
    // The baseline: a veth pair between the same two namespaces, outside the lab's /24s.
    let [_, block, _, _] = lab.addr("a").octets();
    let (va, vb) = (
        format!("10.{block}.254.1/30"),
        format!("10.{block}.254.2/30"),
    );
    crate::netns::veth(lab.ns("a"), &va, lab.ns("b"), &vb)?;
    let veth_b = std::net::Ipv4Addr::new(10, block, 254, 2);

    println!("## (b) unshaped TCP throughput (`iperf3 -C cubic -t 10`, median of {ROUNDS})");
    println!();
    println!("| path | streams | Gbit/s (median) | rounds | emulator thread cores | emulator cores per Gbit/s |");
    println!("|---|---|---|---|---|---|");
    for (path, addr) in [("plain veth", veth_b), ("link emulator", lab.addr("b"))] {
        for streams in ["1", "4"] {
            let mut runs = Vec::new();
            let mut cores = Vec::new();
            for _ in 0..ROUNDS {
                let cpu0 = lab.emulator().cpu_time().unwrap_or_default();
                let t0 = Instant::now();
                let report = lab.iperf3_at("b", addr, "a", 10, &["-C", "cubic", "-P", streams])?;
                let wall = t0.elapsed().as_secs_f64();
                let cpu = lab.emulator().cpu_time().unwrap_or_default() - cpu0;
                runs.push(iperf3_bps(&report).context("iperf3 result")? / 1e9);
                cores.push(cpu.as_secs_f64() / wall);
            }
            let gbits = median(runs.clone());
            let core = median(cores);
            let rounds: Vec<String> = runs.iter().map(|r| format!("{r:.2}")).collect();
            let per = if path == "plain veth" {
                "—".to_owned()
            } else {
                format!("{:.2}", core / gbits)
            };
            println!(
                "| {path} | {streams} | {gbits:.2} | {} | {core:.2} | {per} |",
                rounds.join(", ")
            );
        }
    }
    println!();
    Ok(())
}

/// Runs `part` (`accuracy` or `throughput`; both when `None`) and prints Markdown tables.
pub fn run(part: Option<&str>) -> Result<()> {
    crate::servers::which("iperf3").context("iperf3 not found (Debian package iperf3)")?;
    let lab = Lab::build(LabSpec::new().region("a").region("b").rtt("a", "b", 10.0))?;
    if matches!(part, None | Some("accuracy")) {
        accuracy(&lab)?;
    }
    if matches!(part, None | Some("throughput")) {
        throughput(&lab)?;
    }
    Ok(())
}
