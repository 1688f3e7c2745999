//! `bench regions`: database-bound reads and write-then-read across two lab regions 80 ms
//! apart (primary in `a`, streaming replica in `b`). Side by side in one run:
//! - `GET /v1/transfers/{id}` and `GET /v1/accounts/{id}` (a different account each time, so
//!   the account cache is cold) through `b`'s hub reading its replica, through a second hub in
//!   `b` configured with only the remote primary, and through `a`'s hub next to the primary:
//!   p50 of sequential requests and throughput of 32 concurrent clients.
//! - Write-then-read through `b`'s hub (`POST /v1/meta/applications`, then `GET` it): latency
//!   of the pair against one RTT plus the replication lag, with the lag's median and p99 as
//!   the hub measures it (`switchyard_hub_db_replica_lag_ms`, sampled during the run).
//!
//! The client is the lab's root location (no delay to any region): a client next to the hub it
//! calls.

#![allow(clippy::print_stdout)]

use crate::regions_lab::{HubSpec, RegionsLab};
use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RTT_MS: f64 = 80.0;
const ROUNDS: usize = 3;
const SEQUENTIAL: usize = 200;
const CONCURRENCY: usize = 32;

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    quantile(&mut v, 0.5)
}

struct Target {
    label: &'static str,
    base: String,
}

/// p50 (ms) of `n` sequential GETs of `paths` (cycled).
async fn sequential(
    http: &reqwest::Client,
    key: &str,
    base: &str,
    paths: &[String],
) -> Result<f64> {
    let mut lat = Vec::with_capacity(SEQUENTIAL);
    for p in paths.iter().cycle().take(SEQUENTIAL) {
        let t0 = Instant::now();
        let r = http
            .get(format!("{base}{p}"))
            .header("Authorization", key)
            .send()
            .await?;
        ensure!(r.status() == 200, "GET {p}: {}", r.status());
        r.bytes().await?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(quantile(&mut lat, 0.5))
}

/// Requests per second of `CONCURRENCY` clients sharing `paths` (each path once).
async fn throughput(
    http: &reqwest::Client,
    key: &str,
    base: &str,
    paths: &[String],
) -> Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let paths = Arc::new(paths.to_vec());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, key, base, next, paths) = (
            http.clone(),
            key.to_owned(),
            base.to_owned(),
            next.clone(),
            paths.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = paths.get(i) else {
                    return anyhow::Ok(());
                };
                let r = http
                    .get(format!("{base}{p}"))
                    .header("Authorization", &key)
                    .send()
                    .await?;
                ensure!(r.status() == 200, "GET {p}: {}", r.status());
                r.bytes().await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(paths.len() as f64 / t0.elapsed().as_secs_f64())
}

/// Runs the benchmark with the `hub` binary at `hub_bin`.
pub async fn run(hub_bin: &Path) -> Result<()> {
    let lab = RegionsLab::build(
        hub_bin,
        RTT_MS,
        &[
            HubSpec {
                name: "hub-a",
                region: "a",
                replica: false,
            },
            HubSpec {
                name: "hub-b",
                region: "b",
                replica: true,
            },
            HubSpec {
                name: "hub-b-remote",
                region: "b",
                replica: false,
            },
        ],
    )
    .await?;
    let http = crate::http_client();
    let key = format!("APIKey {}", lab.api_key);
    let a = lab.hub("hub-a").base();

    // Accounts to read cold (created next to the primary, quickly), and a transfer row.
    let total_accounts = ROUNDS * (2 * (SEQUENTIAL + 1000) + SEQUENTIAL + 300);
    let roots = lab.fs_root("bench")?;
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, key, a, made, next, roots) = (
            http.clone(),
            key.clone(),
            a.clone(),
            made.clone(),
            next.clone(),
            roots.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total_accounts {
                    return anyhow::Ok(());
                }
                let r = http
                    .post(format!("{a}/v1/accounts"))
                    .header("Authorization", &key)
                    .json(&json!({"service": "fs", "account": format!("b{i}"), "credentials": {"root": roots}}))
                    .send()
                    .await?;
                ensure!(r.status() == 201, "create account: {}", r.status());
                let v: Value = r.json().await?;
                made.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(v["id"].as_i64().context("id")?);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut accounts: Vec<i64> = made.lock().unwrap_or_else(|p| p.into_inner()).clone();
    accounts.sort_unstable();
    lab.primary
        .sql(&format!(
            "INSERT INTO transfers (app_id, kind, state, src_account, src_path, dst_account, \
             dst_path, size, part_size, owner, created_ms, updated_ms) VALUES ({app}, 'copy', \
             'done', {acc}, 'a', {acc}, 'b', 1, 1, 'bench', 0, 0)",
            app = lab.app_id,
            acc = accounts[0],
        ))
        .await?;
    let transfer: i64 = lab
        .primary
        .sql("SELECT max(id) FROM transfers")
        .await?
        .parse()?;
    let targets = [
        Target {
            label: "a's hub, local primary",
            base: a.clone(),
        },
        Target {
            label: "b's hub, local replica",
            base: lab.hub("hub-b").base(),
        },
        Target {
            label: "b's hub, remote primary only",
            base: lab.hub("hub-b-remote").base(),
        },
    ];
    // The replica caught up and every hub measured it.
    lab.wait_healthy(Duration::from_secs(30))?;

    println!(
        "\n## bench regions: reads ({RTT_MS} ms RTT between regions, {ROUNDS} rounds, medians)\n"
    );
    println!("| target | GET transfer p50 | GET account (cold) p50 | GET transfer req/s | GET account (cold) req/s |");
    println!("|---|---|---|---|---|");
    let transfer_path = vec![format!("/v1/transfers/{transfer}")];
    let mut cursor = accounts.iter();
    let mut take = |n: usize| -> Vec<String> {
        cursor
            .by_ref()
            .take(n)
            .map(|id| format!("/v1/accounts/{id}"))
            .collect()
    };
    let mut figures = Vec::new();
    // Rounds interleave the targets, so drift in the machine's load hits all three alike.
    let mut per: Vec<[Vec<f64>; 4]> = (0..targets.len()).map(|_| Default::default()).collect();
    for _ in 0..ROUNDS {
        for (i, t) in targets.iter().enumerate() {
            let remote = t.label.contains("remote");
            per[i][0].push(sequential(&http, &key, &t.base, &transfer_path).await?);
            per[i][1].push(sequential(&http, &key, &t.base, &take(SEQUENTIAL)).await?);
            let n = if remote { 400 } else { 2000 };
            let tp: Vec<String> = std::iter::repeat_n(transfer_path[0].clone(), n).collect();
            per[i][2].push(throughput(&http, &key, &t.base, &tp).await?);
            let n = if remote { 300 } else { 1000 };
            per[i][3].push(throughput(&http, &key, &t.base, &take(n)).await?);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let f: Vec<f64> = per[i].iter().map(|v| median(v.clone())).collect();
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.0} | {:.0} |",
            t.label, f[0], f[1], f[2], f[3]
        );
        figures.push(f);
    }
    let (local, replica, remote) = (&figures[0], &figures[1], &figures[2]);
    println!(
        "\nreplica vs a's local primary, p50: transfer {:+.2} ms, account {:+.2} ms (goal: within 2 ms)",
        replica[0] - local[0],
        replica[1] - local[1]
    );
    println!(
        "replica vs remote primary, throughput: transfer {:.1}×, account {:.1}× (goal: ≥ 10×)",
        replica[2] / remote[2],
        replica[3] / remote[3]
    );

    // Write-then-read through b, with the replica lag sampled meanwhile.
    let b = lab.hub("hub-b").base();
    let meta_out = lab.cli("hub-b", &["meta-token", "create", "--name", "bench"])?;
    let meta = String::from_utf8_lossy(&meta_out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("meta token: "))
        .context("meta token")?
        .trim()
        .to_owned();
    let meta = format!("Bearer {meta}");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (http, b, stop) = (http.clone(), b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = http.get(format!("{b}/metrics")).send().await {
                    if let Ok(text) = r.text().await {
                        if let Some(v) = text
                            .lines()
                            .find(|l| l.starts_with("switchyard_hub_db_replica_lag_ms "))
                            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        {
                            lags.push(v);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lags
        })
    };
    let mut pairs = Vec::new();
    let mut stale = 0;
    for i in 0..ROUNDS * 100 {
        let t0 = Instant::now();
        let r = http
            .post(format!("{b}/v1/meta/applications"))
            .header("Authorization", &meta)
            .json(&json!({"name": format!("wr-{i}")}))
            .send()
            .await?;
        ensure!(r.status() == 201, "create application: {}", r.status());
        let v: Value = r.json().await?;
        let id = v["id"].as_i64().context("application id")?;
        let r = http
            .get(format!("{b}/v1/meta/applications/{id}"))
            .header("Authorization", &meta)
            .send()
            .await?;
        if r.status() != 200 {
            stale += 1;
        }
        r.bytes().await?;
        pairs.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lags = sampler.await?;
    let pair_p50 = quantile(&mut pairs, 0.5);
    let pair_p99 = quantile(&mut pairs, 0.99);
    let lag_p50 = quantile(&mut lags, 0.5);
    let lag_p99 = quantile(&mut lags, 0.99);
    println!(
        "\n## bench regions: write-then-read through b ({} pairs)\n",
        pairs.len()
    );
    println!("| write-then-read p50 | p99 | replication lag p50 | lag p99 | bound (RTT + lag p50 + 10 ms) | stale reads |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {pair_p50:.1} ms | {pair_p99:.1} ms | {lag_p50:.0} ms | {lag_p99:.0} ms | {:.1} ms | {stale} |",
        RTT_MS + lag_p50 + 10.0
    );
    Ok(())
}
