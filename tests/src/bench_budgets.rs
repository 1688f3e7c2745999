//! `bench budgets`: what the shared provider budgets cost, side by side in one run:
//! - **admission**: one `Budget::admit` on an unlimited bucket (the cool-down check every
//!   provider request makes) and on a paced one that never waits, through Redis (the Lua
//!   script) and in this process; sequential (latency, median of rounds) and 16 tasks at once
//!   (admissions per second).
//! - **API**: metadata GETs of a WebDAV file through a hub (8 clients), budgets through Redis
//!   vs in the hub alone: the median request latency and requests per second, so the cost is
//!   seen next to a whole request.
//!
//! Redis, the WebDAV server and the hubs run on loopback; the hubs in this process.

#![allow(clippy::print_stdout)]

use crate::servers::{RedisServer, WebDavServer};
use crate::{HubOptions, TestHub};
use anyhow::{ensure, Context as _, Result};
use shared::budget::{BudgetSettings, Budgets, Limit};
use std::sync::Arc;
use std::time::Instant;

const ROUNDS: usize = 5;
const SEQUENTIAL: usize = 5_000;
const TASKS: usize = 16;
const PER_TASK: usize = 1_000;
const API_CLIENTS: usize = 8;
const API_REQUESTS: usize = 2_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn settings() -> BudgetSettings {
    let mut s = BudgetSettings::default();
    // Paced but never waiting at this rate: the script's full path, no sleep.
    s.services
        .insert("s3".into(), Limit::per_second(1_000_000.0, 1_000_000));
    s.services.insert("webdav".into(), Limit::UNLIMITED);
    s
}

/// (µs per admission sequentially, admissions per second with [`TASKS`] tasks).
async fn admission(budgets: &Budgets, service: &'static str) -> Result<(f64, f64)> {
    let b = budgets.budget(service, Some(format!("{service}:bench:443/b")));
    let mut lat = Vec::new();
    let mut rate = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..SEQUENTIAL {
            b.admit().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6 / SEQUENTIAL as f64);
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let b = b.clone();
            set.spawn(async move {
                for _ in 0..PER_TASK {
                    b.admit().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        rate.push((TASKS * PER_TASK) as f64 / t.elapsed().as_secs_f64());
    }
    Ok((median(&mut lat), median(&mut rate)))
}

/// (median ms per request, requests per second) of metadata GETs on `hub`.
async fn api(hub: &TestHub, account: i64, file: &str) -> Result<(f64, f64)> {
    let url = hub.url(&format!("/v1/accounts/{account}/storage/files/{file}"));
    let mut lat = Vec::new();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..API_CLIENTS {
        let (http, url, key) = (hub.http.clone(), url.clone(), hub.apikey());
        set.spawn(async move {
            let mut out = Vec::new();
            for _ in 0..API_REQUESTS / API_CLIENTS {
                let s = Instant::now();
                let r = http.get(&url).header("Authorization", &key).send().await?;
                ensure!(r.status() == 200, "metadata answered {}", r.status());
                r.bytes().await?;
                out.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(out)
        });
    }
    while let Some(r) = set.join_next().await {
        lat.extend(r??);
    }
    let rps = API_REQUESTS as f64 / t.elapsed().as_secs_f64();
    Ok((median(&mut lat), rps))
}

async fn hub_with(
    redis: Option<&RedisServer>,
    dav: &WebDavServer,
) -> Result<(TestHub, i64, String)> {
    let mut yaml = "budgets:\n  services:\n    webdav: {rate: 0}\n".to_owned();
    if let Some(r) = redis {
        yaml.push_str(&format!("redis:\n  url: \"{}\"\n", r.url()));
    }
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(yaml),
        ..Default::default()
    })
    .await?;
    let acc = hub
        .connect(
            "webdav",
            serde_json::json!({"endpoint": dav.endpoint(), "username": dav.username(),
                               "password": dav.password()}),
        )
        .await?["id"]
        .as_i64()
        .context("account id")?;
    let list: serde_json::Value = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}/storage/folders/root/contents")),
        )
        .send()
        .await?
        .json()
        .await?;
    let file = list["objects"][0]["id"]
        .as_str()
        .context("file id")?
        .to_owned();
    Ok((hub, acc, file))
}

pub async fn run() -> Result<()> {
    let redis = RedisServer::start().await?;
    let shared = Budgets::new(settings());
    shared.set_shared(Arc::new(hub::budgets::RedisStore::new(
        &redis.url(),
        "bench",
    )?));
    let local = Budgets::new(settings());
    println!("admission (medians of {ROUNDS} rounds):");
    println!("| bucket | store | µs per admission (sequential) | admissions/s ({TASKS} tasks) |");
    println!("|---|---|---|---|");
    for (service, what) in [("webdav", "unlimited"), ("s3", "paced")] {
        for (store, b) in [("redis", &shared), ("in process", &local)] {
            let (us, rate) = admission(b, service).await?;
            println!("| {what} | {store} | {us:.1} | {rate:.0} |");
        }
    }
    ensure!(
        matches!(shared.mode(), shared::budget::Mode::Shared(_)),
        "Redis was not used: {:?}",
        shared.mode()
    );
    let dav = WebDavServer::start().await?;
    std::fs::write(dav.dir().join("f.txt"), b"hello")?;
    println!("\nAPI: {API_REQUESTS} metadata GETs of a WebDAV file, {API_CLIENTS} clients:");
    println!("| budgets | median ms | requests/s |");
    println!("|---|---|---|");
    let (with, acc, file) = hub_with(Some(&redis), &dav).await?;
    let (without, acc2, file2) = hub_with(None, &dav).await?;
    // Warm both (connections, caches), then alternate.
    api(&with, acc, &file).await?;
    api(&without, acc2, &file2).await?;
    let (mut a_ms, mut a_rps, mut b_ms, mut b_rps) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let (ms, rps) = api(&with, acc, &file).await?;
        a_ms.push(ms);
        a_rps.push(rps);
        let (ms, rps) = api(&without, acc2, &file2).await?;
        b_ms.push(ms);
        b_rps.push(rps);
    }
    println!(
        "| shared (Redis) | {:.2} | {:.0} |",
        median(&mut a_ms),
        median(&mut a_rps)
    );
    println!(
        "| in the hub | {:.2} | {:.0} |",
        median(&mut b_ms),
        median(&mut b_rps)
    );
    with.stop().await?;
    without.stop().await?;
    Ok(())
}
