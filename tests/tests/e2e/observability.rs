//! What the hub writes about itself: logs at `trace` never carry a secret (dependencies'
//! events included), log files are one uncoloured line per event even with `RUST_BACKTRACE`,
//! and `/metrics` keeps a bounded number of series whatever clients send.

use base64::Engine as _;
use e2e::servers::{AzuriteServer, S3Server, SftpServer, WebDavServer};
use e2e::{assert_eventually, TestHub};
use serde_json::{json, Value};
use std::time::Duration;

const HUB: &str = env!("CARGO_BIN_EXE_e2e-hub");

/// The forms a secret could take in a log: as is, base64 (HTTP basic auth carries
/// `user:password`), URL-encoded.
fn forms(secret: &str, user: Option<&str>) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![
        secret.to_owned(),
        b64.encode(secret),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    ];
    if let Some(u) = user {
        out.push(b64.encode(format!("{u}:{secret}")));
    }
    out
}

/// A `hub dev` process at `SWITCHYARD_LOG=trace` with `RUST_BACKTRACE=1`, its stderr in a file.
struct HubProcess {
    child: tokio::process::Child,
    base: String,
    key: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl HubProcess {
    async fn start() -> HubProcess {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("data");
        let log = dir.path().join("hub.log");
        let port = e2e::servers::free_port();
        let child = tokio::process::Command::new(HUB)
            .args(["dev", "--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .env("SWITCHYARD_LOG", "trace")
            .env("RUST_BACKTRACE", "1")
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("hub dev");
        let base = format!("http://127.0.0.1:{port}");
        let http = e2e::http_client();
        assert_eventually!(
            http.get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200),
            Duration::from_secs(60),
            "hub dev to be ready"
        );
        let creds: Value = serde_json::from_str(
            &std::fs::read_to_string(data.join("dev-credentials.json")).expect("credentials"),
        )
        .expect("json");
        HubProcess {
            child,
            base,
            key: creds["api_key"].as_str().expect("key").to_owned(),
            log,
            _dir: dir,
        }
    }

    /// Connects an account; returns the answer's JSON (any status).
    async fn connect(&self, service: &str, credentials: Value) -> (u16, Value) {
        let r = e2e::http_client()
            .post(format!("{}/v1/accounts", self.base))
            .header("Authorization", format!("APIKey {}", self.key))
            .json(&json!({"service": service, "account": service, "credentials": credentials}))
            .send()
            .await
            .expect("connect");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json"))
    }

    /// Stops the hub (SIGTERM, bounded wait) and returns its whole log.
    async fn stop(mut self) -> String {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        let _ = self.child.kill().await;
        std::fs::read_to_string(&self.log).expect("log")
    }
}

#[tokio::test]
async fn no_secret_reaches_the_log_at_trace_and_every_event_is_one_plain_line() {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("logs").await.expect("bucket");
    let dav = WebDavServer::start().await.expect("rclone webdav");
    let sftp = SftpServer::start().await.expect("sshd");
    // Azurite is optional on a developer machine; the suite's machine has it.
    let azure = AzuriteServer::start().await.ok();
    if let Some(az) = &azure {
        az.create_container("logs").await.expect("container");
    }
    let hub = HubProcess::start().await;
    let mut secrets: Vec<(String, Vec<String>)> = vec![("api key".into(), forms(&hub.key, None))];

    // S3: moto accepts any key, so the secret is ours and unique.
    let s3_secret = format!("s3SECRET{:016x}", rand::random::<u64>());
    let (status, body) = hub
        .connect(
            "s3",
            json!({"bucket": "logs", "endpoint": s3.endpoint(), "region": "us-east-1",
                   "access_key_id": "AKIALOGTEST", "secret_access_key": s3_secret}),
        )
        .await;
    assert_eq!(status, 201, "s3: {body}");
    secrets.push(("s3 secret key".into(), forms(&s3_secret, None)));
    secrets.push((
        "s3 bearer token".into(),
        forms(body["bearer_token"]["key"].as_str().expect("token"), None),
    ));
    // An S3 account on a closed port: OpenDAL retries (and warns) before giving up.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let (status, body) = hub
        .connect(
            "s3",
            json!({"bucket": "logs", "endpoint": format!("http://127.0.0.1:{closed}"),
                   "access_key_id": "AKIALOGTEST", "secret_access_key": s3_secret}),
        )
        .await;
    assert_eq!(status, 502, "unreachable s3: {body}");

    let (status, body) = hub
        .connect(
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(),
                   "password": dav.password()}),
        )
        .await;
    assert_eq!(status, 201, "webdav: {body}");
    secrets.push((
        "webdav password".into(),
        forms(dav.password(), Some(dav.username())),
    ));

    let (status, body) = hub
        .connect(
            "sftp",
            json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
                   "root": sftp.dir()}),
        )
        .await;
    assert_eq!(status, 201, "sftp: {body}");
    // The key's body lines (the PEM armour is not secret).
    for line in sftp
        .private_key()
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        if line.len() >= 16 {
            secrets.push(("sftp private key".into(), vec![line.to_owned()]));
        }
    }

    if let Some(az) = &azure {
        let (status, body) = hub
            .connect(
                "azblob",
                json!({"container": "logs", "endpoint": az.endpoint(),
                       "account_name": az.account_name(), "account_key": az.account_key()}),
            )
            .await;
        assert_eq!(status, 201, "azblob: {body}");
        secrets.push(("azure account key".into(), forms(az.account_key(), None)));
    }

    // Use each account once so the request paths log too.
    let accounts: Value = e2e::http_client()
        .get(format!("{}/v1/accounts", hub.base))
        .header("Authorization", format!("APIKey {}", hub.key))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    for a in accounts["objects"].as_array().expect("objects") {
        let r = e2e::http_client()
            .get(format!(
                "{}/v1/accounts/{}/storage/folders/root/contents",
                hub.base, a["id"]
            ))
            .header("Authorization", format!("APIKey {}", hub.key))
            .send()
            .await
            .expect("listing");
        assert_eq!(r.status(), 200, "listing account {}", a["id"]);
    }

    let log = hub.stop().await;
    assert!(
        log.lines().count() > 100,
        "a trace log has plenty of lines: {}",
        log.lines().count()
    );
    assert!(
        log.contains("reqsign") || log.contains("hyper") || log.contains("reqwest"),
        "dependencies' events are in the log"
    );
    for (what, variants) in &secrets {
        for v in variants {
            if let Some(line) = log.lines().find(|l| l.contains(v.as_str())) {
                let shown: String = line.chars().take(300).collect();
                panic!("{what} appears in the log: {shown}");
            }
        }
    }
    // Written to a file: no colour codes, one event per line (each starts with its timestamp),
    // no backtrace frames even with RUST_BACKTRACE=1, and the retries were logged.
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file");
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("20") && line.as_bytes().get(4) == Some(&b'-'),
            "not an event line: {}",
            line.chars().take(200).collect::<String>()
        );
    }
    assert!(
        log.contains("retrying"),
        "OpenDAL retries are logged (on one line)"
    );
}

#[tokio::test]
async fn metrics_series_stay_bounded_whatever_clients_send() {
    let hub = TestHub::start().await.expect("hub");
    let http = e2e::http_client();
    let started = std::time::Instant::now();
    for i in 0..300u32 {
        let method = reqwest::Method::from_bytes(format!("X{i:04}").as_bytes()).expect("method");
        let path = format!("/v1/{:08x}/{i}", rand::random::<u32>());
        let r = http
            .request(method, hub.url(&path))
            .send()
            .await
            .expect("request");
        assert!(r.status().is_client_error(), "{}", r.status());
        let r = http
            .get(hub.url(&format!("/nothing/{:08x}", rand::random::<u32>())))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 404);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "load loop too slow"
        );
    }
    let text = http
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_hub_http_requests_total{"))
        .collect();
    assert!(
        series.len() <= 10,
        "{} request series after 600 odd requests:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(
        series.iter().any(|l| l.contains("method=\"OTHER\"")),
        "{series:?}"
    );
    let all = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(all < 200, "{all} samples in /metrics");
}
