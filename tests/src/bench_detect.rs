//! `bench detect`: one detector poll of an S3 bucket with no changes (moto on loopback),
//! against `rclone lsjson -R` of the same bucket, at two bucket sizes: wall time, provider
//! requests and peak memory per poll (ours: the peak RSS of this process during the poll, reset
//! with `/proc/self/clear_refs` before it; rclone's: its max RSS from `/usr/bin/time`).
//!
//! The hub runs in this process (a `TestHub` on SQLite with its own detectors off) and the
//! bench drives `hub::detect::poll_once` on a lease it takes itself, so the figures are one
//! poll's and nothing else's.

#![allow(clippy::print_stdout)]

use crate::servers::S3Server;
use crate::{HubOptions, TestHub};
use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use shared::storage::{ConnectOptions, Connector, ServiceConfig, StoragePath};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const BUCKET: &str = "detect-bench";
/// Uploads in flight while filling the bucket.
const FILL_CONCURRENCY: usize = 32;
/// The longest a fill may take before the bench gives up on that size.
const FILL_LIMIT: Duration = Duration::from_secs(40 * 60);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `VmRSS` or `VmHWM` of this process, KiB.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let n = rest.trim_start_matches(':').trim().trim_end_matches(" kB");
            return Ok(n.trim().parse()?);
        }
    }
    bail!("{field} not in /proc/self/status")
}

/// Fills the bucket up to `n` objects (`obj/<i>` under 100 prefixes), bounded in count and
/// time; returns how many exist.
async fn fill(c: &Connector, from: usize, n: usize) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut done = from;
    let mut jobs = futures::stream::iter(from..n)
        .map(|i| {
            let c = c.clone();
            async move {
                let path = StoragePath::parse(&format!("p{:02}/obj-{i:07}.txt", i % 100))?;
                let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(
                    bytes::Bytes::from(format!("object {i}")),
                )]);
                c.write(&path, Box::pin(body)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(FILL_CONCURRENCY);
    while let Some(r) = jobs.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(10_000) {
            println!(
                "  filled {done} objects ({:.0}/s)",
                (done - from) as f64 / started.elapsed().as_secs_f64()
            );
        }
        if started.elapsed() > FILL_LIMIT {
            println!("  fill stopped at {done} objects after {FILL_LIMIT:?}");
            break;
        }
    }
    Ok(done)
}

/// One `rclone lsjson -R` of the bucket: (seconds, max RSS KiB, objects listed).
fn rclone(s3: &S3Server) -> anyhow::Result<(f64, u64, usize)> {
    let out_file = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        // Listing only, as our poll: `--no-modtime` keeps rclone from a HEAD per object
        // for its own mtime metadata (its default; 20.8 s for 10,000 objects here).
        .args([
            "-f",
            "%M",
            "rclone",
            "lsjson",
            "-R",
            "--fast-list",
            "--no-modtime",
            "--no-mimetype",
        ])
        .arg(format!("moto:{BUCKET}"))
        .env("RCLONE_CONFIG_MOTO_TYPE", "s3")
        .env("RCLONE_CONFIG_MOTO_PROVIDER", "Other")
        .env("RCLONE_CONFIG_MOTO_ACCESS_KEY_ID", s3.access_key_id())
        .env(
            "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY",
            s3.secret_access_key(),
        )
        .env("RCLONE_CONFIG_MOTO_ENDPOINT", s3.endpoint())
        .env("RCLONE_CONFIG_MOTO_REGION", "us-east-1")
        .env("RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE", "true")
        // The environment's CA bundle is for HTTPS; rclone's S3 client refuses it on plain HTTP.
        .env_remove("AWS_CA_BUNDLE")
        .stdout(out_file.reopen()?)
        .output()
        .context("running rclone under /usr/bin/time")?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("rclone lsjson failed: {stderr}");
    }
    let rss = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("rclone's max RSS")?;
    let listed: Vec<serde_json::Value> = serde_json::from_reader(std::io::BufReader::new(
        std::fs::File::open(out_file.path())?,
    ))?;
    let files = listed.iter().filter(|v| v["IsDir"] == false).count();
    Ok((secs, rss, files))
}

pub async fn run(sizes: &[usize]) -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    s3.create_bucket(BUCKET).await?;
    let creds = serde_json::json!({"bucket": BUCKET, "endpoint": s3.endpoint(),
        "region": "us-east-1", "access_key_id": s3.access_key_id(),
        "secret_access_key": s3.secret_access_key()});
    let hub = TestHub::start_with(HubOptions {
        yaml: Some("events:\n  detect:\n    enabled: false\n".into()),
        ..Default::default()
    })
    .await?;
    let acc = hub.connect("s3", creds.clone()).await?["id"]
        .as_i64()
        .context("account id")?;
    let state = &hub.state;
    let now = hub::state::now_ms();
    state.db.ensure_detectors(now).await?;
    let lease = state
        .db
        .start_poll(acc, "bench#1", now, now + 86_400_000)
        .await?
        .context("the bench account's detector lease")?;
    let record = state.db.get_account_any(acc).await?.context("account")?;
    let account = state
        .open_account(record)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let cfg = ServiceConfig::from_parts("s3", creds)?;
    let filler = Connector::connect(
        &cfg,
        &ConnectOptions {
            egress: crate::loopback_egress(),
            ..Default::default()
        },
    )
    .await?;

    let mut have = 0;
    let mut lease = lease;
    println!("| objects | ours: wall (median) | requests | objects scanned | process peak RSS | peak RSS growth | rclone lsjson -R: wall | rclone max RSS | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let t = Instant::now();
        have = fill(&filler, have, n).await?;
        eprintln!(
            "filled to {have} objects in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        // The baseline poll (first at this size) writes the snapshot; not measured. As a
        // baseline it records nothing: the objects the fill added are not changes to measure
        // (recorded one by one they would take the bench hours).
        lease.baseline = false;
        let t = Instant::now();
        let (_, seq) = hub::detect::poll_once(state, &account, &lease).await?;
        eprintln!("snapshot poll: {:.2} s", t.elapsed().as_secs_f64());
        lease.baseline = true;
        lease.polled_seq = seq;
        let (mut ours, mut growth, mut rc, mut rc_rss) = (vec![], vec![], vec![], vec![]);
        let mut peak = Vec::new();
        let mut stats = hub::detect::PollStats::default();
        for _ in 0..ROUNDS {
            std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM")?;
            let before = status_kib("VmRSS")?;
            let t = Instant::now();
            let (s, _) = hub::detect::poll_once(state, &account, &lease).await?;
            ours.push(t.elapsed().as_secs_f64());
            let hwm = status_kib("VmHWM")?;
            peak.push(hwm as f64);
            growth.push(hwm.saturating_sub(before) as f64);
            if s.recorded != 0 || s.scanned != have as u64 {
                bail!("a poll of an unchanged bucket found changes: {s:?}");
            }
            stats = s;
            let (secs, rss, files) = rclone(&s3)?;
            if files != have {
                bail!("rclone listed {files} objects, the bucket has {have}");
            }
            rc.push(secs);
            rc_rss.push(rss as f64);
        }
        let (o, r) = (median(ours), median(rc));
        println!(
            "| {have} | {o:.2} s | {} | {} | {:.0} MiB | {:.1} MiB | {r:.2} s | {:.0} MiB | {:.2}× |",
            stats.requests,
            stats.scanned,
            median(peak) / 1024.0,
            median(growth) / 1024.0,
            median(rc_rss) / 1024.0,
            o / r
        );
    }
    hub.stop().await?;
    Ok(())
}
