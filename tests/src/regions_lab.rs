//! Two database regions in the lab: a PostgreSQL primary in region `a` and its streaming
//! replica in region `b` (each in its region's namespace, the WAN emulator between them), and
//! real `hub serve` processes placed in either region, each configured with both servers in
//! `database.url` (so a promoted replica is found) and, when asked, `b`'s replica as
//! `database.replica_url`. The test process (the lab's root location, no delay to any region)
//! plays a client sitting next to whichever hub it calls.

use crate::lab::{Lab, LabSpec};
use crate::netns::Proc;
use crate::servers::Postgres;
use anyhow::{bail, Context as _, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where the primary runs.
pub const PRIMARY_REGION: &str = "a";
/// Where the replica runs.
pub const REPLICA_REGION: &str = "b";

/// One hub process of the lab.
pub struct LabHub {
    pub name: String,
    pub region: String,
    pub addr: Ipv4Addr,
    pub config: PathBuf,
    proc: Option<Proc>,
}

impl LabHub {
    /// `http://ADDR:8080`.
    pub fn base(&self) -> String {
        format!("http://{}:8080", self.addr)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// Sends `signal` to the hub process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        self.proc.as_ref().context("not running")?.signal(signal)
    }
}

/// What hubs to start: `(name, region, with the replica)`.
pub struct HubSpec {
    pub name: &'static str,
    pub region: &'static str,
    pub replica: bool,
}

/// The lab, both servers and the hubs.
pub struct RegionsLab {
    pub hubs: Vec<LabHub>,
    pub replica: Postgres,
    pub primary: Postgres,
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    hub_bin: PathBuf,
    /// The dev application's API key and id (`hub apps create`).
    pub api_key: String,
    pub app_id: i64,
    /// Where `fs` accounts may live (`storage.fs.allowed_roots`).
    pub roots: PathBuf,
}

impl RegionsLab {
    /// Builds the lab (`rtt_ms` between the regions), the primary and replica, and the hubs;
    /// returns once every hub answers `/readyz` and an application exists.
    pub async fn build(hub_bin: &Path, rtt_ms: f64, hubs: &[HubSpec]) -> Result<RegionsLab> {
        let lab = Lab::build(
            LabSpec::new()
                .region(PRIMARY_REGION)
                .region(REPLICA_REGION)
                .rtt(PRIMARY_REGION, REPLICA_REGION, rtt_ms),
        )?;
        let allow = lab.block().to_string();
        let a = lab.addr(PRIMARY_REGION);
        let b = lab.addr(REPLICA_REGION);
        let primary = Postgres::start_in(&lab.ns(PRIMARY_REGION).name, IpAddr::V4(a), &allow)
            .await
            .context("primary")?;
        // The production default (the harness turns it off for speed): a commit is on disk
        // and ready to ship when the hub hears of it.
        primary
            .sql("ALTER DATABASE switchyard SET synchronous_commit = on")
            .await?;
        let replica = primary
            .replica(
                "region_b",
                Some(&lab.ns(REPLICA_REGION).name),
                Some((IpAddr::V4(b), &allow)),
            )
            .await
            .context("replica")?;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("master.key");
        let secret: [u8; 32] = rand::random();
        use base64::Engine as _;
        std::fs::write(
            &key,
            base64::engine::general_purpose::STANDARD.encode(secret),
        )?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let roots = dir.path().join("roots");
        std::fs::create_dir_all(&roots)?;
        let roots = roots.canonicalize()?;
        let mut me = RegionsLab {
            hubs: Vec::new(),
            replica,
            primary,
            lab,
            dir,
            hub_bin: hub_bin.to_owned(),
            api_key: String::new(),
            app_id: 0,
            roots,
        };
        for (i, h) in hubs.iter().enumerate() {
            let addr = if me.hubs.iter().any(|o| o.region == h.region) {
                me.lab.add_address(h.region)?
            } else {
                me.lab.addr(h.region)
            };
            let config = me.write_config(h, addr)?;
            let mut hub = LabHub {
                name: h.name.to_owned(),
                region: h.region.to_owned(),
                addr,
                config,
                proc: None,
            };
            me.spawn(&mut hub)?;
            me.hubs.push(hub);
            // The first hub migrates; the others start once it is ready.
            if i == 0 || i + 1 == hubs.len() {
                me.wait_ready(Duration::from_secs(60))?;
            }
        }
        let out = me.cli(hubs[0].name, &["apps", "create", "--name", "lab"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        me.api_key = text
            .lines()
            .find_map(|l| l.strip_prefix("api key: "))
            .context("an api key in `apps create`")?
            .trim()
            .to_owned();
        me.app_id = text
            .lines()
            .find_map(|l| l.strip_prefix("application "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("an application id in `apps create`")?;
        Ok(me)
    }

    /// `postgres://switchyard@A,B/switchyard`: both servers, for failover.
    pub fn both_url(&self) -> String {
        format!(
            "postgres://switchyard@{},{}/switchyard",
            self.primary.host_port(),
            self.replica.host_port()
        )
    }

    fn write_config(&self, h: &HubSpec, addr: Ipv4Addr) -> Result<PathBuf> {
        let data = self.dir.path().join(h.name);
        std::fs::create_dir_all(&data)?;
        let replica = if h.replica {
            format!("  replica_url: \"{}\"\n", self.replica.url())
        } else {
            String::new()
        };
        let yaml = format!(
            "listen: \"{addr}:8080\"\npublic_url: \"http://{addr}:8080\"\nregion: {region}\n\
             data_dir: \"{data}\"\ndatabase:\n  url: \"{url}\"\n{replica}  max_connections: 8\n\
             secrets:\n  master_key_file: \"{key}\"\nnetwork:\n  quic_listen: null\n\
             storage:\n  allow_private_endpoints: true\n  fs:\n    allowed_roots: [\"{roots}\"]\n",
            region = h.region,
            data = data.display(),
            url = self.both_url(),
            key = self.dir.path().join("master.key").display(),
            roots = self.roots.display(),
        );
        let path = self.dir.path().join(format!("{}.yaml", h.name));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    fn spawn(&self, hub: &mut LabHub) -> Result<()> {
        let mut cmd = self
            .lab
            .command(&hub.region, &self.hub_bin.display().to_string());
        cmd.arg("--config")
            .arg(&hub.config)
            .arg("serve")
            .env("SWITCHYARD_LOG", "info");
        let log = self.dir.path().join(format!("{}.log", hub.name));
        hub.proc = Some(self.lab.spawn(&hub.region, cmd, &log)?);
        Ok(())
    }

    /// The hub called `name`.
    pub fn hub(&self, name: &str) -> &LabHub {
        self.hubs
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no hub {name}"))
    }

    /// Waits until every hub answers `/readyz`.
    pub fn wait_ready(&self, within: Duration) -> Result<()> {
        self.wait_readyz(within, |_| true)
    }

    /// Waits until every hub's `/readyz` says `ok` (not `degraded`): a hub with a replica has
    /// measured it and reads it.
    pub fn wait_healthy(&self, within: Duration) -> Result<()> {
        self.wait_readyz(within, |body| {
            serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["status"] == "ok")
        })
    }

    fn wait_readyz(&self, within: Duration, good: impl Fn(&[u8]) -> bool) -> Result<()> {
        let deadline = Instant::now() + within;
        for h in &self.hubs {
            loop {
                let ok = Command::new("curl")
                    .args(["-sf", "-m", "2", &format!("{}/readyz", h.base())])
                    .output()
                    .is_ok_and(|o| o.status.success() && good(&o.stdout));
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("hub {} not ready:\n{}", h.name, self.logs());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Runs the hub command line with `name`'s configuration (from the root namespace).
    pub fn cli(&self, name: &str, args: &[&str]) -> Result<Output> {
        let out = Command::new(&self.hub_bin)
            .arg("--config")
            .arg(&self.hub(name).config)
            .args(args)
            .env("SWITCHYARD_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "hub {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Like [`RegionsLab::cli`], the raw output whatever the exit status.
    pub fn cli_raw(&self, name: &str, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.hub_bin)
            .arg("--config")
            .arg(&self.hub(name).config)
            .args(args)
            .env("SWITCHYARD_LOG", "warn")
            .output()?)
    }

    /// The tail of every hub's log.
    pub fn logs(&self) -> String {
        self.hubs
            .iter()
            .map(|h| {
                let out = h.log();
                let tail: Vec<&str> = out.lines().rev().take(20).collect();
                format!(
                    "--- {}\n{}",
                    h.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A new `fs` account root in the application's space.
    pub fn fs_root(&self, name: &str) -> Result<PathBuf> {
        let p = self.roots.join(format!("app-{}", self.app_id)).join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p.canonicalize()?)
    }
}

/// A hub's Prometheus counter `switchyard_hub_db_calls_total{pool,origin}`.
pub fn db_calls(metrics: &str, pool: &str, origin: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_hub_db_calls_total{"))
        .filter(|l| {
            l.contains(&format!("pool=\"{pool}\"")) && l.contains(&format!("origin=\"{origin}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
