//! `bench dns`: queries per second of the hub's steering DNS server for the steered name
//! (`api.<zone>` A, decided from RTTs, health and hysteresis) against NSD serving the equivalent
//! static zone (response rate limiting off in both), both on loopback, measured with `dnsperf` in
//! the same run (alternating, median of [`ROUNDS`]), with the lost-query percentage.

#![allow(clippy::print_stdout)]

use anyhow::{bail, Context as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const SECONDS: u32 = 10;
const ZONE: &str = "bench.test";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One dnsperf run.
#[derive(Debug, Clone, Copy)]
pub struct PerfResult {
    pub qps: f64,
    pub lost_pct: f64,
}

fn dnsperf(port: u16, queries: &Path) -> anyhow::Result<PerfResult> {
    let o = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args([
            "-l",
            &SECONDS.to_string(),
            "-c",
            "8",
            "-T",
            "2",
            "-q",
            "200",
            "-t",
            "2",
        ])
        .output()
        .context("dnsperf (Debian package dnsperf)")?;
    let out = String::from_utf8_lossy(&o.stdout);
    let field = |name: &str| -> Option<f64> {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let qps = field("Queries per second").context("dnsperf printed no qps")?;
    let sent = field("Queries sent").unwrap_or(0.0);
    let lost = field("Queries lost").unwrap_or(0.0);
    Ok(PerfResult {
        qps,
        lost_pct: if sent > 0.0 { lost * 100.0 / sent } else { 0.0 },
    })
}

async fn wait_dns(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let o = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+time=1", "+tries=1"])
            .args([&format!("api.{ZONE}"), "A", "+short"])
            .output()?;
        if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no DNS answer on port {port}")
}

fn start_nsd(dir: &Path, port: u16) -> anyhow::Result<Kill> {
    let zone = format!(
        "$ORIGIN {ZONE}.\n$TTL 30\n@ 3600 IN SOA ns1 hostmaster 1 3600 600 86400 30\n\
         @ 3600 IN NS ns1\napi IN A 192.0.2.30\nns1 IN A 127.0.0.1\n"
    );
    std::fs::write(dir.join("bench.zone"), zone)?;
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  server-count: 2\n  \
         username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  \
         pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
         zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  \
         rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\nremote-control:\n  \
         control-enable: no\nzone:\n  name: {ZONE}\n  zonefile: \"{d}/bench.zone\"\n",
        d = dir.display()
    );
    let conf_path = dir.join("nsd.conf");
    std::fs::write(&conf_path, conf)?;
    let nsd = Command::new("nsd")
        .args(["-d", "-c"])
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("nsd (Debian package nsd)")?;
    Ok(Kill(nsd))
}

async fn start_hub(hub_bin: &Path, dir: &Path, port: u16) -> anyhow::Result<Kill> {
    let http = crate::servers::free_port();
    let child = Command::new(hub_bin)
        .args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--port", &http.to_string()])
        .env("SWITCHYARD_LOG", "warn")
        .env("SWITCHYARD_DNS__LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHYARD_DNS__ZONE", ZONE)
        // dnsperf floods from one address: response rate limiting off, as for NSD.
        .env("SWITCHYARD_DNS__RRL__RESPONSES_PER_SECOND", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let hub = Kill(child);
    // Two more regions and RTTs for the client network, so every answer is a real decision.
    let url = format!("sqlite://{}/hub.db", dir.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    let db = loop {
        match hub::db::Db::connect(&url, 2).await {
            Ok(db) if db.steering_hubs(0).await.is_ok() => break db,
            _ if Instant::now() > deadline => bail!("the hub's database did not appear"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let now = hub::state::now_ms();
    db.upsert_steering_hub(
        "http://127.0.0.1:9/eu",
        "eu-west",
        &["192.0.2.20".into()],
        now,
    )
    .await?;
    db.upsert_steering_hub(
        "http://127.0.0.1:9/ap",
        "ap-south",
        &["192.0.2.30".into()],
        now,
    )
    .await?;
    let rtt = |region: &str, ms: i64| hub::db::RttRecord {
        prefix: "127.0.0.0/24".into(),
        region: region.into(),
        rtt_us: ms * 1000,
        samples: 10,
        updated_ms: now,
    };
    db.upsert_rtts(&[rtt("ap-south", 5), rtt("local", 60), rtt("eu-west", 90)])
        .await?;
    wait_dns(port).await?;
    // The snapshot reloads every second: make sure the answer is the steered one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+short"])
            .arg(format!("api.{ZONE}"))
            .output()?;
        if String::from_utf8_lossy(&o.stdout).trim() == "192.0.2.30" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the hub never answered the steered address");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(hub)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the comparison and prints a table.
pub async fn run(hub_bin: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let queries = tmp.path().join("queries.txt");
    let mut q = String::new();
    for _ in 0..1000 {
        q.push_str(&format!("api.{ZONE} A\n"));
    }
    std::fs::write(&queries, q)?;
    let nsd_dir = tmp.path().join("nsd");
    let hub_dir = tmp.path().join("hub");
    std::fs::create_dir_all(&nsd_dir)?;
    std::fs::create_dir_all(&hub_dir)?;
    let (nsd_port, hub_port) = (crate::servers::free_port(), crate::servers::free_port());
    let _nsd = start_nsd(&nsd_dir, nsd_port)?;
    wait_dns(nsd_port).await?;
    let _hub = start_hub(hub_bin, &hub_dir, hub_port).await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let n = dnsperf(nsd_port, &queries)?;
        let h = dnsperf(hub_port, &queries)?;
        println!(
            "round {}: nsd {:.0} qps ({:.3} % lost), hub {:.0} qps ({:.3} % lost)",
            round + 1,
            n.qps,
            n.lost_pct,
            h.qps,
            h.lost_pct
        );
        theirs.push(n);
        ours.push(h);
    }
    let (h, n) = (
        median(ours.iter().map(|r| r.qps).collect()),
        median(theirs.iter().map(|r| r.qps).collect()),
    );
    let lost = ours.iter().map(|r| r.lost_pct).fold(0.0, f64::max);
    println!("\n| server | qps (median of {ROUNDS} × {SECONDS} s) | max lost |");
    println!("|---|---|---|");
    println!(
        "| NSD (static zone, RRL off) | {n:.0} | {:.3} % |",
        theirs.iter().map(|r| r.lost_pct).fold(0.0, f64::max)
    );
    println!("| hub steering DNS (api.{ZONE}, steered) | {h:.0} | {lost:.3} % |");
    println!("\nratio hub/NSD: {:.2}× (goal ≥ 0.5×, 0 % lost)", h / n);
    Ok(())
}
