//! Real `hub dev` processes for the tests that kill, stop or restart a hub: spawning one,
//! waiting until it is ready, the credentials it wrote, and [`HubProc`], which the API helpers
//! take like an in-process hub.

use e2e::assert_eventually;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const HUB_BIN: &str = env!("CARGO_BIN_EXE_e2e-hub");

/// A real `hub dev` process on `port` over `data` with config `base` (killed when dropped, so
/// a failing test leaves no hub behind); its log is discarded.
pub fn spawn_hub(data: &Path, base: &Path, port: u16) -> tokio::process::Child {
    spawn_hub_logged(data, base, port, None)
}

/// [`spawn_hub`] writing the hub's log (stderr) to `log` when given.
pub fn spawn_hub_logged(
    data: &Path,
    base: &Path,
    port: u16,
    log: Option<&Path>,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(HUB_BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHYARD_")) {
        cmd.env_remove(k);
    }
    let stderr = match log {
        Some(p) => std::process::Stdio::from(std::fs::File::create(p).expect("hub log")),
        None => std::process::Stdio::null(),
    };
    cmd.arg("--config")
        .arg(base)
        .args(["dev", "--data-dir"])
        .arg(data)
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the hub")
}

/// What `hub dev` wrote to `DATA_DIR/dev-credentials.json`.
pub fn dev_credentials(data: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(data.join("dev-credentials.json")).expect("credentials"))
        .expect("json")
}

pub async fn wait_ready(http: &reqwest::Client, port: u16) {
    assert_eventually!(
        http.get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        Duration::from_secs(60),
        "the hub to be ready"
    );
}

/// A running `hub dev` process, ready, with the dev credentials of its data dir (so API
/// calls use that application even when several hubs share one database).
pub struct HubProc {
    pub child: tokio::process::Child,
    pub port: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    base_url: String,
    http: reqwest::Client,
    api_key: String,
    meta_token: String,
}

impl HubProc {
    /// Starts `hub dev` over `data` with config `base`, logging to `log`; returns once ready.
    pub async fn start(data: &Path, base: &Path, log: &Path) -> HubProc {
        let port = e2e::servers::free_port();
        let child = spawn_hub_logged(data, base, port, Some(log));
        let http = e2e::http_client();
        wait_ready(&http, port).await;
        let creds = dev_credentials(data);
        HubProc {
            child,
            port,
            data: data.to_owned(),
            log: log.to_owned(),
            base_url: format!("http://127.0.0.1:{port}"),
            http,
            api_key: creds["api_key"].as_str().expect("key").to_owned(),
            meta_token: creds["meta_token"].as_str().expect("meta").to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("a running hub").to_string();
        let st = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, no goodbye, and reap.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL and reap");
    }
}

impl e2e::HubApi for HubProc {
    fn base(&self) -> &str {
        &self.base_url
    }
    fn client(&self) -> &reqwest::Client {
        &self.http
    }
    fn api_key(&self) -> &str {
        &self.api_key
    }
    fn meta_token(&self) -> &str {
        &self.meta_token
    }
}
