//! `bench webhooks`: webhook delivery latency and throughput, hub on PostgreSQL, work through
//! Redis and through the in-process queue, side by side in one run:
//! - **latency**: 10,000 uploads spread over 100 accounts (32 clients), one webhook (the app
//!   collects events); for each event of the feeds, the time from the event (its `modified`,
//!   when the hub recorded it) to the first notification of its account that arrived after
//!   it, p50 and p99; and how many notifications there were.
//! - **throughput**: 100 webhooks × 100 accounts: one upload per account opens 10,000
//!   notifications at once; deliveries per second until the receiver has all of them.
//!
//! The hub runs in this process (the same code as `hub serve`), with PostgreSQL, Redis and the
//! receiver on loopback.

#![allow(clippy::print_stdout)]

use crate::servers::{Postgres, RedisServer};
use crate::webhook_receiver::{Received, Receiver};
use crate::{HubOptions, TestHub};
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 100;
const UPLOADS: usize = 10_000;
const CLIENTS: usize = 32;

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

struct Setup {
    hub: TestHub,
    rx: Receiver,
    accounts: Vec<i64>,
    _pg: Postgres,
    _redis: Option<RedisServer>,
}

async fn setup(redis: bool, webhooks: usize) -> Result<Setup> {
    let pg = Postgres::start().await?;
    let r = if redis {
        Some(RedisServer::start().await?)
    } else {
        None
    };
    let mut yaml = "log:\n  level: warn\n".to_owned();
    if let Some(r) = &r {
        yaml.push_str(&format!("redis:\n  url: \"{}\"\n", r.url()));
    }
    let hub = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        yaml: Some(yaml),
        max_upload_bytes: 1 << 20,
        ..Default::default()
    })
    .await?;
    let app = hub.creds.application_id;
    let rx = Receiver::start(app).await;
    for _ in 0..webhooks {
        let r = hub
            .http
            .post(hub.url(&format!("/v1/meta/applications/{app}/webhooks")))
            .header("Authorization", hub.meta())
            .json(&json!({ "url": rx.url() }))
            .send()
            .await?;
        ensure!(r.status() == 201, "webhook: {}", r.text().await?);
    }
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let root = hub.new_fs_root(&format!("b{i}"))?;
        let v = hub.connect("fs", json!({ "root": root })).await?;
        accounts.push(v["id"].as_i64().context("account id")?);
    }
    Ok(Setup {
        hub,
        rx,
        accounts,
        _pg: pg,
        _redis: r,
    })
}

fn notes(got: &[Received]) -> Vec<(i64, std::time::SystemTime)> {
    got.iter()
        .filter_map(|r| Some((r.account()?, r.wall)))
        .collect()
}

/// Every event time (`modified`, when the hub recorded it) of `acc`'s feed.
async fn event_times(hub: &TestHub, acc: i64) -> Result<Vec<std::time::SystemTime>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/v1/accounts/{acc}/events?page_size=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let v: serde_json::Value = hub
            .http
            .get(hub.url(&path))
            .header("Authorization", hub.apikey())
            .send()
            .await?
            .json()
            .await?;
        let objs = v["objects"].as_array().context("objects")?;
        if objs.is_empty() {
            return Ok(out);
        }
        for e in objs {
            let t = time::OffsetDateTime::parse(
                e["modified"].as_str().context("modified")?,
                &time::format_description::well_known::Rfc3339,
            )?;
            out.push(std::time::SystemTime::from(t));
        }
        cursor = Some(v["cursor"].as_str().context("cursor")?.to_owned());
    }
    anyhow::bail!("the feed of {acc} did not end")
}

/// Change→delivery for every event: from the event's time to the first notification of its
/// account that arrived after it, ms. Also the number of notifications and uploads/s.
async fn latency(redis: bool) -> Result<(f64, f64, usize, f64)> {
    let s = setup(redis, 1).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let hub = &s.hub;
        let accounts = &s.accounts;
        tasks.push(async move {
            for i in (c..UPLOADS).step_by(CLIENTS) {
                let acc = accounts[i % ACCOUNTS];
                hub.upload(acc, "root", &format!("f{i}.txt"), b"x".to_vec())
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    for r in futures::future::join_all(tasks).await {
        r?;
    }
    let upload_secs = started.elapsed().as_secs_f64();
    // Until no notification came for 2 s (at most 30 s).
    let quiet = Instant::now();
    let mut last = s.rx.count();
    let mut since = Instant::now();
    while quiet.elapsed() < Duration::from_secs(30) && since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.rx.count() != last {
            last = s.rx.count();
            since = Instant::now();
        }
    }
    let got = s.rx.got();
    let mut per: HashMap<i64, Vec<std::time::SystemTime>> = HashMap::new();
    for (a, t) in notes(&got) {
        per.entry(a).or_default().push(t);
    }
    let mut lat = Vec::with_capacity(UPLOADS);
    let mut missing = 0;
    for acc in &s.accounts {
        let empty = Vec::new();
        let ns = per.get(acc).unwrap_or(&empty);
        for t in event_times(&s.hub, *acc).await? {
            match ns.iter().filter(|n| **n >= t).min() {
                Some(n) => lat.push(n.duration_since(t).unwrap_or_default().as_secs_f64() * 1000.0),
                None => missing += 1,
            }
        }
    }
    ensure!(
        missing == 0,
        "{missing} events were never followed by a notification"
    );
    ensure!(
        lat.len() == UPLOADS,
        "{} events for {UPLOADS} uploads",
        lat.len()
    );
    let n = notes(&got).len();
    let p50 = quantile(&mut lat, 0.5);
    let p99 = quantile(&mut lat, 0.99);
    Ok((p50, p99, n, UPLOADS as f64 / upload_secs))
}

async fn throughput(redis: bool) -> Result<f64> {
    let s = setup(redis, 100).await?;
    let want = 100 * ACCOUNTS;
    let before = s.rx.count();
    let started = Instant::now();
    for a in &s.accounts {
        s.hub.upload(*a, "root", "x.txt", b"x".to_vec()).await?;
    }
    let ok =
        s.rx.wait_for(Duration::from_secs(120), |g| g.len() >= before + want)
            .await;
    ensure!(
        ok,
        "only {} of {want} notifications in 120 s",
        s.rx.count() - before
    );
    let got = s.rx.got();
    let first = got[before..].iter().map(|r| r.at).min().context("first")?;
    let last = got[before..].iter().map(|r| r.at).max().context("last")?;
    let _ = started;
    Ok(want as f64 / last.duration_since(first).as_secs_f64())
}

/// Runs both measurements for both queues, `rounds` times, and prints medians.
pub async fn run(rounds: usize) -> Result<()> {
    println!("## bench webhooks ({rounds} rounds, medians)\n");
    println!("| queue | uploads/s | notifications for {UPLOADS} uploads | change→delivery p50 | p99 | deliveries/s (10,000 at once) |");
    println!("|---|---|---|---|---|---|");
    for redis in [true, false] {
        let (mut p50s, mut p99s, mut ns, mut ups, mut tps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (p50, p99, n, up) = latency(redis).await?;
            p50s.push(p50);
            p99s.push(p99);
            ns.push(n as f64);
            ups.push(up);
            tps.push(throughput(redis).await?);
        }
        println!(
            "| {} | {:.0} | {:.0} | {:.0} ms | {:.0} ms | {:.0} |",
            if redis { "Redis Streams" } else { "in-process" },
            quantile(&mut ups, 0.5),
            quantile(&mut ns, 0.5),
            quantile(&mut p50s, 0.5),
            quantile(&mut p99s, 0.5),
            quantile(&mut tps, 0.5),
        );
    }
    Ok(())
}
