//! `hub db status` and `hub db promote`: what each PostgreSQL server of the configuration is
//! (primary, replica, timeline, replay lag) and the operator's failover step. Both talk to the
//! servers directly, without migrations, so they work while the primary is gone.

use super::topology::{fmt_lsn, probe, split_hosts, Probe};
use crate::config::DatabaseConfig;
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::time::Duration;

struct Server {
    key: &'static str,
    label: String,
    pool: AnyPool,
    probe: Result<Probe, String>,
}

async fn servers(cfg: &DatabaseConfig) -> anyhow::Result<Vec<Server>> {
    sqlx::any::install_default_drivers();
    let url = cfg.url.as_deref().unwrap_or("sqlite:");
    if url.starts_with("sqlite:") {
        bail!("database.url: `hub db` needs PostgreSQL (the SQLite database has no replicas)");
    }
    let mut named: Vec<(&'static str, String, String)> = split_hosts(url)
        .map_err(|m| anyhow::anyhow!("database.url: {m}"))?
        .into_iter()
        .map(|(u, l)| ("database.url", u, l))
        .collect();
    if let Some(r) = &cfg.replica_url {
        for (u, l) in split_hosts(r).map_err(|m| anyhow::anyhow!("database.replica_url: {m}"))? {
            if !named.iter().any(|(_, _, label)| *label == l) {
                named.push(("database.replica_url", u, l));
            }
        }
    }
    let mut out = Vec::new();
    for (key, u, label) in named {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
            .connect_lazy(&u)
            .with_context(|| format!("{key}: {label}"))?;
        out.push(Server {
            key,
            label,
            pool,
            probe: Err(String::new()),
        });
    }
    let probes = futures::future::join_all(out.iter().map(|s| probe(&s.pool))).await;
    for (s, p) in out.iter_mut().zip(probes) {
        s.probe = p;
    }
    Ok(out)
}

/// The primary's timeline: the highest among servers not in recovery.
fn newest_timeline(servers: &[Server]) -> Option<u32> {
    servers
        .iter()
        .filter_map(|s| s.probe.as_ref().ok())
        .filter(|p| !p.in_recovery)
        .filter_map(|p| p.timeline)
        .max()
}

/// `hub db status`: every configured server, what it is, its timeline and position; the
/// configured replica's lag; and every standby the primary streams to.
pub async fn status(cfg: &DatabaseConfig) -> anyhow::Result<Value> {
    let servers = servers(cfg).await?;
    let newest = newest_timeline(&servers);
    let primary = servers.iter().find(|s| {
        s.probe
            .as_ref()
            .is_ok_and(|p| !p.in_recovery && p.timeline == newest)
    });
    let primary_lsn = primary.and_then(|s| s.probe.as_ref().ok()?.lsn);
    let mut rows = Vec::new();
    for s in &servers {
        let mut row = json!({ "host": s.label, "config_key": s.key });
        match &s.probe {
            Err(e) => {
                row["role"] = json!("unreachable");
                row["error"] = json!(e);
            }
            Ok(p) => {
                row["timeline"] = json!(p.timeline);
                row["lsn"] = json!(p.lsn.map(fmt_lsn));
                if !p.in_recovery {
                    row["role"] = json!(if p.timeline == newest {
                        "primary"
                    } else {
                        "stale primary (an older timeline: never written to)"
                    });
                } else {
                    row["role"] = json!("replica");
                    if let (Some(pl), Some(r)) = (primary_lsn, p.lsn) {
                        let behind = pl.saturating_sub(r);
                        row["lag_bytes"] = json!(behind);
                        row["lag_ms"] = json!(if behind == 0 {
                            Some(0)
                        } else {
                            replay_age_ms(&s.pool).await
                        });
                    }
                }
            }
        }
        rows.push(row);
    }
    let standbys = match primary {
        Some(p) => streaming(&p.pool).await.unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(json!({
        "primary": primary.map(|p| p.label.clone()),
        "timeline": newest,
        "servers": rows,
        "standbys": standbys,
    }))
}

async fn replay_age_ms(pool: &AnyPool) -> Option<i64> {
    sqlx::query(
        "SELECT (EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint \
         AS ms",
    )
    .fetch_one(pool)
    .await
    .ok()?
    .try_get::<Option<i64>, _>("ms")
    .ok()?
}

/// The standbys the primary streams to (`pg_stat_replication`).
async fn streaming(pool: &AnyPool) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT application_name, COALESCE(client_addr::text, 'local') AS addr, state, \
         sync_state, replay_lsn::text AS replay_lsn, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes, \
         (EXTRACT(EPOCH FROM replay_lag) * 1000)::bigint AS lag_ms \
         FROM pg_stat_replication ORDER BY application_name",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "name": r.try_get::<String, _>("application_name")?,
                "address": r.try_get::<String, _>("addr")?,
                "state": r.try_get::<Option<String>, _>("state")?,
                "sync": r.try_get::<Option<String>, _>("sync_state")?,
                "replay_lsn": r.try_get::<Option<String>, _>("replay_lsn")?,
                "lag_bytes": r.try_get::<Option<i64>, _>("lag_bytes")?,
                "lag_ms": r.try_get::<Option<i64>, _>("lag_ms")?,
            }))
        })
        .collect()
}

/// Human-readable form of [`status`].
pub fn status_text(v: &Value) -> String {
    let mut out = format!(
        "primary: {} (timeline {})\n",
        v["primary"].as_str().unwrap_or("none found"),
        v["timeline"]
    );
    for s in v["servers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}\t{}\ttimeline {}\tlsn {}",
            s["host"].as_str().unwrap_or(""),
            s["role"].as_str().unwrap_or(""),
            s["timeline"],
            s["lsn"].as_str().unwrap_or("-"),
        ));
        if s.get("lag_bytes").is_some() {
            out.push_str(&format!(
                "\tlag {} bytes, {} ms",
                s["lag_bytes"], s["lag_ms"]
            ));
        }
        if let Some(e) = s["error"].as_str() {
            out.push_str(&format!("\t{e}"));
        }
        out.push('\n');
    }
    for s in v["standbys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "streams to {} at {}\t{}\t{}\tlag {} bytes, {} ms\n",
            s["name"].as_str().unwrap_or(""),
            s["address"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            s["sync"].as_str().unwrap_or(""),
            s["lag_bytes"],
            s["lag_ms"],
        ));
    }
    out
}

/// `hub db promote`: promotes this region's replica (`database.replica_url`). Refuses while
/// another server of `database.url` still answers as a primary, unless `force`: two primaries
/// would take diverging writes.
pub async fn promote(cfg: &DatabaseConfig, force: bool) -> anyhow::Result<String> {
    let Some(replica_url) = &cfg.replica_url else {
        bail!("database.replica_url: not set; `hub db promote` promotes this region's replica");
    };
    let label = split_hosts(replica_url)
        .map_err(|m| anyhow::anyhow!("database.replica_url: {m}"))?
        .remove(0)
        .1;
    let servers = servers(cfg).await?;
    let replica = servers
        .iter()
        .find(|s| s.label == label)
        .context("database.replica_url: not found")?;
    match &replica.probe {
        Err(e) => bail!("database.replica_url: the replica at {label} cannot be reached: {e}"),
        Ok(p) if !p.in_recovery => {
            bail!("database.replica_url: {label} is already a primary (not in recovery)")
        }
        Ok(_) => {}
    }
    let live: Vec<String> = servers
        .iter()
        .filter(|s| s.label != label)
        .filter_map(|s| match &s.probe {
            Ok(p) if !p.in_recovery => Some(format!(
                "{} (timeline {})",
                s.label,
                p.timeline.unwrap_or(0)
            )),
            _ => None,
        })
        .collect();
    if !live.is_empty() && !force {
        bail!(
            "the primary at {} still answers; promoting now would leave two primaries taking \
             different writes. Stop it first, or pass --force if it is cut off from every hub",
            live.join(", ")
        );
    }
    let ok: bool = sqlx::query("SELECT pg_promote(true, 60) AS ok")
        .fetch_one(&replica.pool)
        .await
        .with_context(|| format!("pg_promote() on {label}"))?
        .try_get("ok")?;
    if !ok {
        bail!("pg_promote() on {label} did not finish within 60 s");
    }
    let after = probe(&replica.pool)
        .await
        .map_err(|e| anyhow::anyhow!("{label} after promotion: {e}"))?;
    Ok(format!(
        "promoted {label}: now the primary on timeline {}{}",
        after.timeline.unwrap_or(0),
        if live.is_empty() {
            String::new()
        } else {
            format!(" (forced while {} still answered)", live.join(", "))
        }
    ))
}
