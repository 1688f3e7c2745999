//! Spoke processes for the network tests: enroll and run the real `spoke` binary.

use e2e::{HubApi, TestHub};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub const SPOKE: &str = env!("CARGO_BIN_EXE_e2e-spoke");

/// A join string from the hub's API.
pub async fn join_token(hub: &impl HubApi, region: &str) -> String {
    let r = hub
        .client()
        .post(hub.url("/v1/network/spokes/tokens"))
        .header("Authorization", hub.meta())
        .json(&json!({"region": region}))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    v["join"].as_str().expect("join").to_owned()
}

/// The spoke binary, run inside network namespace `netns` when given.
fn spoke_command(netns: Option<&str>) -> tokio::process::Command {
    match netns {
        Some(ns) => {
            // `ip netns exec` execs the program: the child is the spoke itself.
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns, SPOKE]);
            c
        }
        None => tokio::process::Command::new(SPOKE),
    }
}

/// `spoke enroll JOIN --data-dir DIR` (plus `extra` flags).
pub async fn enroll(join: &str, dir: &Path, extra: &[&str]) -> Output {
    enroll_in(None, join, dir, extra).await
}

/// [`enroll`] inside a network namespace.
pub async fn enroll_in(netns: Option<&str>, join: &str, dir: &Path, extra: &[&str]) -> Output {
    spoke_command(netns)
        .arg("enroll")
        .arg(join)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .await
        .expect("spoke enroll")
}

/// The `storage:` section declaring the hub's allowed `fs` roots as the spoke's own.
pub fn hub_fs_roots(hub: &TestHub) -> String {
    let mut y = "\nstorage:\n  fs_roots:\n".to_owned();
    for r in &hub.state.config.storage.fs.allowed_roots {
        y.push_str(&format!("  - {:?}\n", r.to_string_lossy()));
    }
    y
}

/// The spoke id a successful `spoke enroll` printed ("enrolled spoke ID ...").
pub fn enrolled_id(o: &Output) -> i64 {
    assert!(o.status.success(), "enroll: {}", text(&o.stderr));
    text(&o.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("spoke id in the enroll output")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `spoke run` process; killed on drop.
pub struct SpokeProc {
    pub child: tokio::process::Child,
    /// The spoke's data dir.
    pub dir: PathBuf,
    pub id: i64,
    pub log: PathBuf,
}

impl SpokeProc {
    /// Enrolls a new spoke into a fresh dir under `root` and starts it.
    pub async fn start(hub: &TestHub, root: &Path, name: &str) -> SpokeProc {
        Self::start_with(hub, root, name, &[]).await
    }

    pub async fn start_with(
        hub: &TestHub,
        root: &Path,
        name: &str,
        run_args: &[&str],
    ) -> SpokeProc {
        Self::start_full(hub, root, name, &[], run_args).await
    }

    /// Enrolls with extra `enroll_args` (e.g. `--advertise`) and starts it.
    pub async fn start_full(
        hub: &TestHub,
        root: &Path,
        name: &str,
        enroll_args: &[&str],
        run_args: &[&str],
    ) -> SpokeProc {
        Self::start_in(None, hub, root, name, enroll_args, run_args).await
    }

    /// [`SpokeProc::start_full`] inside network namespace `netns` (made by the test).
    pub async fn start_in(
        netns: Option<&str>,
        hub: &TestHub,
        root: &Path,
        name: &str,
        enroll_args: &[&str],
        run_args: &[&str],
    ) -> SpokeProc {
        Self::start_local(netns, hub, root, name, enroll_args, run_args, None).await
    }

    /// Enrolls and starts a spoke whose operator sections of `spoke.yaml` are `local` (YAML);
    /// by default (`None`) it may act on `fs` storage in the hub's allowed roots (the spokes
    /// of these tests share the hub's disk).
    pub async fn start_local(
        netns: Option<&str>,
        hub: &TestHub,
        root: &Path,
        name: &str,
        enroll_args: &[&str],
        run_args: &[&str],
        local: Option<&str>,
    ) -> SpokeProc {
        let dir = root.join(name);
        let join = join_token(hub, &hub.state.config.region).await;
        let mut args = vec!["--name", name];
        args.extend_from_slice(enroll_args);
        let id = enrolled_id(&enroll_in(netns, &join, &dir, &args).await);
        let local = match local {
            Some(l) => l.to_owned(),
            None => hub_fs_roots(hub),
        };
        let cfg = dir.join("spoke.yaml");
        let mut text = std::fs::read_to_string(&cfg).expect("spoke.yaml");
        text.push_str(&local);
        std::fs::write(&cfg, text).expect("write spoke.yaml");
        Self::run_in(netns, dir, id, run_args)
    }

    /// Starts `spoke run` on an enrolled dir.
    pub fn run(dir: PathBuf, id: i64, run_args: &[&str]) -> SpokeProc {
        Self::run_in(None, dir, id, run_args)
    }

    fn run_in(netns: Option<&str>, dir: PathBuf, id: i64, run_args: &[&str]) -> SpokeProc {
        let log = dir.join("run.log");
        let file = std::fs::File::create(&log).expect("log");
        let child = spoke_command(netns)
            .arg("run")
            .arg("--data-dir")
            .arg(&dir)
            .args(run_args)
            .env("SWITCHYARD_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spoke run");
        SpokeProc {
            child,
            dir,
            id,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit on its own.
    pub async fn exit_within(&mut self, d: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(d, self.child.wait())
            .await
            .expect("spoke exits in time")
            .expect("wait")
    }
}

/// The spoke as the hub's API shows it.
pub async fn spoke_view(hub: &impl HubApi, id: i64) -> serde_json::Value {
    hub.client()
        .get(hub.url(&format!("/v1/network/spokes/{id}")))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("spoke")
        .json()
        .await
        .expect("json")
}

/// Waits until the hub reports the spoke connected and healthy.
pub async fn wait_healthy(hub: &impl HubApi, id: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = spoke_view(hub, id).await;
        if v["status"]["healthy"] == true {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spoke {id} never became healthy: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
