//! `bench tunnel` and `bench tunnel-soak`: TCP goodput (iperf3, CUBIC) between the two regional
//! hosts through our gateway pair, through a wireguard-go pair and over plain veth routing, in
//! the same namespaces and the same run (medians of 3), with the CPU each used; and the
//! full-length soak across real rekeys (REKEY_AFTER_TIME 120 s).

#![allow(clippy::print_stdout)]

use crate::netns::{ping, Regions, GW_A_WAN, GW_B_WAN, HOST_A, HOST_B};
use crate::tunnel_lab::{
    gateway_yaml, iperf3, tcp_transfer, Gateway, KeyPair, PeerSpec, Run, WgGo,
};
use anyhow::{Context as _, Result};
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const SECS: u32 = 10;

fn peers(ka: &KeyPair, kb: &KeyPair) -> (PeerSpec, PeerSpec) {
    (
        PeerSpec {
            name: "region-b".into(),
            public: kb.public.clone(),
            endpoint: Some(format!("{GW_B_WAN}:51820")),
            allowed: vec!["10.20.0.0/16".into()],
        },
        PeerSpec {
            name: "region-a".into(),
            public: ka.public.clone(),
            endpoint: Some(format!("{GW_A_WAN}:51820")),
            allowed: vec!["10.10.0.0/16".into()],
        },
    )
}

fn median(mut v: Vec<Run>) -> Run {
    v.sort_by(|a, b| a.gbits.total_cmp(&b.gbits));
    v[v.len() / 2]
}

async fn rounds(lab: &Regions, pids: &[u32], what: &str) -> Result<Run> {
    let mut runs = Vec::new();
    for i in 0..ROUNDS {
        let r = iperf3(&lab.host_b, &lab.host_a, HOST_B, SECS, pids).await?;
        println!(
            "  {what} round {}: {:.2} Gbit/s, machine {:.2} cores, gateways {:.2} cores",
            i + 1,
            r.gbits,
            r.machine_cores,
            r.gateway_cores
        );
        runs.push(r);
    }
    Ok(median(runs))
}

/// Our gateways vs wireguard-go vs plain veth.
pub async fn throughput(tunnel: &Path) -> Result<()> {
    crate::servers::which("iperf3").context("iperf3 not found (Debian package iperf3)")?;
    let lab = Regions::new()?;
    let dir = tempfile::tempdir()?;
    let (ka, kb) = (KeyPair::new(), KeyPair::new());
    let (to_b, to_a) = peers(&ka, &kb);

    println!("plain veth (gateways route the regions directly):");
    lab.route_directly()?;
    let veth = rounds(&lab, &[], "veth").await?;
    lab.unroute_directly()?;

    println!("our gateways (tunnel, release build):");
    let (ia, ib) = (crate::netns::unique("ta"), crate::netns::unique("tb"));
    let ya = gateway_yaml(
        &ia,
        &ka,
        "10.255.0.1/24",
        &dir.path().join(format!("{ia}.sock")),
        std::slice::from_ref(&to_b),
        &["log: warn"],
    );
    let yb = gateway_yaml(
        &ib,
        &kb,
        "10.255.0.2/24",
        &dir.path().join(format!("{ib}.sock")),
        std::slice::from_ref(&to_a),
        &["log: warn"],
    );
    let mut a = Gateway::start(tunnel, &lab.gw_a, dir.path(), &ia, &ya).await?;
    let mut b = Gateway::start(tunnel, &lab.gw_b, dir.path(), &ib, &yb).await?;
    anyhow::ensure!(
        ping(&lab.host_a, HOST_B, 3, "0.2")? >= 1,
        "no path through our gateways"
    );
    let ours = rounds(&lab, &[a.proc.id(), b.proc.id()], "ours").await?;
    a.stop()?;
    b.stop()?;

    println!("wireguard-go pair:");
    let (wa, wb) = (crate::netns::unique("wa"), crate::netns::unique("wb"));
    let ga = WgGo::start(
        &lab.gw_a,
        dir.path(),
        &wa,
        &ka,
        "10.255.0.1/24",
        std::slice::from_ref(&to_b),
    )
    .await?;
    let gb = WgGo::start(
        &lab.gw_b,
        dir.path(),
        &wb,
        &kb,
        "10.255.0.2/24",
        std::slice::from_ref(&to_a),
    )
    .await?;
    anyhow::ensure!(
        ping(&lab.host_a, HOST_B, 3, "0.2")? >= 1,
        "no path through wireguard-go"
    );
    let wg = rounds(&lab, &[ga.proc.id(), gb.proc.id()], "wireguard-go").await?;
    drop((ga, gb));

    let per = |r: &Run, cores: f64| {
        if r.gbits > 0.0 {
            cores / r.gbits
        } else {
            f64::NAN
        }
    };
    println!();
    println!("| path | Gbit/s (median of {ROUNDS}) | vs wireguard-go | vs veth | gateway cores per Gbit/s | machine cores per Gbit/s |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in [
        ("plain veth", &veth),
        ("our gateways", &ours),
        ("wireguard-go", &wg),
    ] {
        println!(
            "| {name} | {:.2} | {:.2}x | {:.2}x | {} | {:.2} |",
            r.gbits,
            r.gbits / wg.gbits,
            r.gbits / veth.gbits,
            if name == "plain veth" {
                "-".to_owned()
            } else {
                format!("{:.2}", per(r, r.gateway_cores))
            },
            per(r, r.machine_cores),
        );
    }
    Ok(())
}

/// Traffic both ways for `minutes` with the protocol's own timers: at least three real rekeys
/// (every 120 s) without a one-way stall.
pub async fn soak(tunnel: &Path, minutes: u64) -> Result<()> {
    let lab = Regions::new()?;
    let dir = tempfile::tempdir()?;
    let (ka, kb) = (KeyPair::new(), KeyPair::new());
    let (to_b, to_a) = peers(&ka, &kb);
    let (ia, ib) = (crate::netns::unique("sa"), crate::netns::unique("sb"));
    let ya = gateway_yaml(
        &ia,
        &ka,
        "10.255.0.1/24",
        &dir.path().join(format!("{ia}.sock")),
        &[to_b],
        &[],
    );
    let yb = gateway_yaml(
        &ib,
        &kb,
        "10.255.0.2/24",
        &dir.path().join(format!("{ib}.sock")),
        &[to_a],
        &[],
    );
    let a = Gateway::start(tunnel, &lab.gw_a, dir.path(), &ia, &ya).await?;
    let b = Gateway::start(tunnel, &lab.gw_b, dir.path(), &ib, &yb).await?;
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let (mut sent, mut lost, mut worst_gap) = (0u64, 0u64, 0u32);
    let mut transfers = 0;
    while Instant::now() < end {
        // Ten seconds of pings each way at 100 ms, then a TCP transfer each way.
        let (x, y) = std::thread::scope(|s| {
            let x = s.spawn(|| ping(&lab.host_a, HOST_B, 100, "0.1"));
            let y = s.spawn(|| ping(&lab.host_b, HOST_A, 100, "0.1"));
            (x.join(), y.join())
        });
        for got in [x, y] {
            let got = got.map_err(|_| anyhow::anyhow!("ping thread"))??;
            sent += 100;
            lost += u64::from(100 - got);
            worst_gap = worst_gap.max(100 - got);
        }
        tcp_transfer(
            &lab.host_a,
            &lab.host_b,
            HOST_B,
            6001,
            16 << 20,
            Duration::from_secs(30),
        )?;
        tcp_transfer(
            &lab.host_b,
            &lab.host_a,
            HOST_A,
            6002,
            16 << 20,
            Duration::from_secs(30),
        )?;
        transfers += 2;
    }
    let (sa, sb) = (a.status().await?, b.status().await?);
    let rekeys = sa.peers[0]
        .handshakes
        .max(sb.peers[0].handshakes)
        .saturating_sub(1);
    println!(
        "soak: {:.1} min, {rekeys} rekeys after the first handshake, {transfers} verified 16 MiB transfers, \
         pings {lost}/{sent} lost (worst 10 s window: {worst_gap} lost of 100), dropped A {:?} B {:?}",
        start.elapsed().as_secs_f64() / 60.0,
        sa.dropped,
        sb.dropped
    );
    anyhow::ensure!(rekeys >= 3, "only {rekeys} rekeys");
    anyhow::ensure!(
        worst_gap <= 2,
        "a stall: {worst_gap} pings of 100 lost in one window"
    );
    println!("soak: ok");
    Ok(())
}
