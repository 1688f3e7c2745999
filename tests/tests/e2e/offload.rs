//! Transfers offloaded to spokes, end to end with real processes and a real S3 server (moto):
//! a byte-identical cross-account copy, SIGKILL of the spoke halfway (resumes on another
//! spoke without re-sending durable parts), a hub restart halfway, cancellation, and the hub
//! doing the work itself when no spoke is healthy.

use crate::spokes::{wait_healthy, SpokeProc};
use e2e::servers::S3Server;
use e2e::{HubApi, HubOptions, TestHub};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shared::storage::{ConnectOptions, Connector, ServiceConfig, StoragePath};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

pub(crate) fn s3_creds(s3: &S3Server, bucket: &str) -> Value {
    json!({"bucket": bucket, "endpoint": s3.endpoint(), "region": "us-east-1",
           "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()})
}

/// A connector to the loopback S3 server (no SSRF guard: it is an internal address).
pub(crate) async fn connector(creds: &Value) -> Connector {
    let cfg = ServiceConfig::from_parts("s3", creds.clone()).expect("settings");
    let opts = ConnectOptions {
        egress: e2e::loopback_egress(),
        ..ConnectOptions::default()
    };
    Connector::connect(&cfg, &opts).await.expect("connector")
}

/// Writes `size` pseudo-random bytes, generated on the fly (never held whole); returns the
/// SHA-256 hex of what the store then holds.
pub(crate) async fn write_object(c: &Connector, path: &str, size: u64, seed: u64) -> String {
    let stream = futures::stream::iter(0..size.div_ceil(MIB)).map(move |i| {
        let n = (size - i * MIB).min(MIB);
        Ok::<_, String>(bytes::Bytes::from(e2e::pattern(n as usize, seed ^ i)))
    });
    c.write(&StoragePath::parse(path).expect("path"), Box::pin(stream))
        .await
        .expect("write source");
    sha_of(c, path).await
}

/// SHA-256 of an object as the store serves it. Moto sometimes drops a connection when the
/// machine is loaded; a read that fails that way is retried (a missing object is not).
pub(crate) async fn sha_of(c: &Connector, path: &str) -> String {
    let p = StoragePath::parse(path).expect("path");
    let mut last = String::new();
    for _ in 0..5 {
        match try_sha(c, &p).await {
            Ok(h) => return h,
            Err(shared::storage::StorageError::NotFound) => panic!("{path} does not exist"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("reading {path} kept failing: {last}")
}

async fn try_sha(c: &Connector, p: &StoragePath) -> Result<String, shared::storage::StorageError> {
    let mut s = c.read(p, None).await?;
    let mut h = Sha256::new();
    while let Some(chunk) = s
        .try_next()
        .await
        .map_err(|e| shared::storage::StorageError::Interrupted(e.to_string()))?
    {
        h.update(&chunk);
    }
    Ok(hex::encode(h.finalize()))
}

pub(crate) struct Setup {
    pub(crate) s3: S3Server,
    pub(crate) src: i64,
    pub(crate) dst: i64,
    pub(crate) file_id: String,
    pub(crate) sha: String,
    pub(crate) dst_creds: Value,
}

/// Connects an S3 account; its id.
pub(crate) async fn account(hub: &impl HubApi, creds: Value) -> i64 {
    hub.connect("s3", creds).await.expect("account")["id"]
        .as_i64()
        .expect("id")
}

/// The id of the first object in an account's root folder.
pub(crate) async fn first_file_id(hub: &impl HubApi, account: i64) -> String {
    let list: Value = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!(
                "/v1/accounts/{account}/storage/folders/root/contents"
            )),
        )
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    list["objects"][0]["id"]
        .as_str()
        .expect("file id")
        .to_owned()
}

/// Two S3 accounts (two buckets) with a `size`-byte object in the first.
async fn setup(hub: &TestHub, size: u64) -> Setup {
    setup_seeded(hub, size, 11).await
}

/// [`setup`] with the object's bytes from `seed`.
pub(crate) async fn setup_seeded(hub: &impl HubApi, size: u64, seed: u64) -> Setup {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("src").await.expect("bucket");
    s3.create_bucket("dst").await.expect("bucket");
    let src_creds = s3_creds(&s3, "src");
    let sha = write_object(&connector(&src_creds).await, "big.bin", size, seed).await;
    let src = account(hub, src_creds).await;
    let dst_creds = s3_creds(&s3, "dst");
    let dst = account(hub, dst_creds.clone()).await;
    let file_id = first_file_id(hub, src).await;
    Setup {
        s3,
        src,
        dst,
        file_id,
        sha,
        dst_creds,
    }
}

/// Starts an asynchronous cross-account copy; returns the transfer id.
pub(crate) async fn start_copy(hub: &impl HubApi, s: &Setup) -> i64 {
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!(
                "/v1/accounts/{}/storage/files/{}/copy",
                s.src, s.file_id
            )),
        )
        .header("X-Kloudless-Async", "true")
        .json(&json!({"account": s.dst, "parent_id": "root"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(r.status(), 202);
    let task: Value = r.json().await.expect("json");
    task["transfer"].as_i64().expect("transfer id")
}

pub(crate) async fn transfer(hub: &impl HubApi, id: i64) -> Value {
    hub.req(
        reqwest::Method::GET,
        &hub.url(&format!("/v1/transfers/{id}")),
    )
    .send()
    .await
    .expect("transfer")
    .json()
    .await
    .expect("json")
}

/// Polls the transfer until `pred` holds (at most `limit`).
pub(crate) async fn until(
    hub: &impl HubApi,
    id: i64,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let t = transfer(hub, id).await;
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {t}"
        );
        assert!(
            !matches!(t["state"].as_str(), Some("failed" | "cancelled")),
            "transfer ended while waiting for {what}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn hub_yaml(rate: Option<u64>, part_mib: u64) -> String {
    hub_yaml_grace(rate, part_mib, 0)
}

fn hub_yaml_grace(rate: Option<u64>, part_mib: u64, grace_secs: u64) -> String {
    let mut y = format!(
        "offload:\n  part_size: {}\n  part_concurrency: 2\n  startup_grace_secs: {grace_secs}\n",
        part_mib * MIB
    );
    if let Some(r) = rate {
        y.push_str(&format!("  spoke_rate_limit: {r}\n"));
    }
    y.push_str("network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n");
    y
}

/// A hub with `yaml` and one enrolled, healthy spoke called `name`.
pub(crate) async fn hub_with_spoke(
    yaml: String,
    name: &str,
) -> (TestHub, tempfile::TempDir, SpokeProc) {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(yaml),
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let spoke = SpokeProc::start(&hub, root.path(), name).await;
    wait_healthy(&hub, spoke.id).await;
    (hub, root, spoke)
}

/// 256 MiB between two S3 accounts, moved by a spoke: byte-identical, with a checksum, and the
/// task API reports it.
#[tokio::test]
async fn offloaded_copy_is_byte_identical() {
    let (hub, _root, spoke) = hub_with_spoke(hub_yaml(None, 16), "s1").await;
    let s = setup(&hub, 256 * MIB).await;
    let id = start_copy(&hub, &s).await;
    let t = until(&hub, id, Duration::from_secs(240), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], spoke.id, "{t}");
    assert_eq!(t["bytes_done"], 256 * MIB);
    assert_eq!(t["parts_done"], 16);
    assert!(
        t["checksum"].as_str().expect("checksum").ends_with("-16"),
        "{t}"
    );
    assert_eq!(
        sha_of(&connector(&s.dst_creds).await, "big.bin").await,
        s.sha
    );
    // The Kloudless task view of the same transfer.
    let task: Value = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!("/v1/accounts/{}/tasks/{id}", s.dst)),
        )
        .send()
        .await
        .expect("task")
        .json()
        .await
        .expect("json");
    assert_eq!(task["state"], "SUCCESS", "{task}");
    assert_eq!(task["result"]["size"], 256 * MIB);
    assert_eq!(task["result"]["account"], s.dst);
    // A synchronous cross-account copy also goes through a spoke and answers with the file.
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!(
                "/v1/accounts/{}/storage/files/{}/copy",
                s.src, s.file_id
            )),
        )
        .json(&json!({"account": s.dst, "parent_id": "root", "name": "again.bin"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.expect("json");
    assert_eq!(f["name"], "again.bin");
    assert_eq!(f["size"], 256 * MIB);
    drop(s.s3);
}

/// SIGKILL of the spoke halfway: the transfer finishes on the second spoke, which gets only
/// the parts that were not durable yet; the result is byte-identical.
#[tokio::test]
async fn spoke_killed_halfway_resumes_on_another_spoke() {
    let (hub, root, mut a) = hub_with_spoke(hub_yaml(Some(48 * MIB), 8), "a").await;
    let s = setup(&hub, 256 * MIB).await;
    let id = start_copy(&hub, &s).await;
    let t = until(
        &hub,
        id,
        Duration::from_secs(60),
        "some durable parts",
        |t| t["parts_done"].as_u64().unwrap_or(0) >= 6,
    )
    .await;
    assert_eq!(t["spoke"], a.id, "{t}");
    // Only now is there a second spoke to take over.
    let b = SpokeProc::start(&hub, root.path(), "b").await;
    wait_healthy(&hub, b.id).await;
    a.kill().await;
    let before = hub.state.db.transfer_parts(id).await.expect("parts").len();
    let t = until(&hub, id, Duration::from_secs(120), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["spoke"], b.id, "{t}");
    let parts = hub.state.db.transfer_parts(id).await.expect("parts");
    assert_eq!(parts.len(), 32);
    let by_a = parts.iter().filter(|(_, s)| *s == Some(a.id)).count();
    let by_b = parts.iter().filter(|(_, s)| *s == Some(b.id)).count();
    assert!(
        by_a >= before && by_a + by_b == 32,
        "a {by_a} b {by_b} before {before}"
    );
    let note = t["note"].as_str().expect("note");
    assert!(note.starts_with("resumed with "), "{note}");
    let k: usize = note
        .trim_start_matches("resumed with ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(
        k >= before,
        "the resumed run got {k} durable parts, {before} were durable"
    );
    assert_eq!(
        sha_of(&connector(&s.dst_creds).await, "big.bin").await,
        s.sha
    );
}

/// The hub restarts while a spoke is copying: the new hub process resumes the transfer from its
/// durable parts when the spoke reconnects, and it completes byte-identical.
#[tokio::test]
async fn hub_restart_mid_transfer_completes() {
    let root = tempfile::tempdir().expect("tmp");
    let hub_dir = root.path().join("hub");
    let port = e2e::servers::free_port();
    let opts = HubOptions {
        // After the restart the hub waits for its spokes to reconnect before working inline.
        yaml: Some(hub_yaml_grace(Some(48 * MIB), 8, 15)),
        dir: Some(hub_dir),
        port: Some(port),
        ..Default::default()
    };
    // The first hub has no grace period: were it to dispatch while shutting down (its spoke's
    // connection closing looks like a lost spoke), it would start the transfer itself.
    let first = HubOptions {
        yaml: Some(hub_yaml_grace(Some(48 * MIB), 8, 0)),
        ..opts.clone()
    };
    let hub = TestHub::start_with(first).await.expect("hub");
    let spoke = SpokeProc::start(&hub, root.path(), "s").await;
    wait_healthy(&hub, spoke.id).await;
    let s = setup(&hub, 192 * MIB).await;
    let id = start_copy(&hub, &s).await;
    until(
        &hub,
        id,
        Duration::from_secs(60),
        "some durable parts",
        |t| t["parts_done"].as_u64().unwrap_or(0) >= 4,
    )
    .await;
    let old = hub.state.clone();
    hub.stop().await.expect("stop");
    // A stopping hub starts no work: the transfer is not taken over by the hub.
    for _ in 0..10 {
        let t = old
            .db
            .get_transfer(id)
            .await
            .expect("db")
            .expect("transfer");
        assert_ne!(t.executor.as_deref(), Some("hub"), "{t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(old);
    let hub = TestHub::start_with(opts).await.expect("restarted hub");
    let t = until(&hub, id, Duration::from_secs(120), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["executor"], "spoke", "{t}\n{}", spoke.log_text());
    assert_eq!(t["spoke"], spoke.id, "{t}");
    assert!(t["note"].as_str().unwrap_or("").contains("resumed"), "{t}");
    assert_eq!(
        sha_of(&connector(&s.dst_creds).await, "big.bin").await,
        s.sha
    );
}

/// Progress reaches the hub at least once a second, and DELETE cancels: the spoke stops and
/// the destination upload is aborted (no object appears).
#[tokio::test]
async fn progress_and_cancel() {
    let (hub, _root, spoke) = hub_with_spoke(hub_yaml(Some(16 * MIB), 8), "s").await;
    let s = setup(&hub, 96 * MIB).await;
    let id = start_copy(&hub, &s).await;
    until(&hub, id, Duration::from_secs(30), "progress", |t| {
        t["bytes_done"].as_u64().unwrap_or(0) > 0
    })
    .await;
    // Over 3 s the reported progress moves at least twice (reports are sent every 0.5 s).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(transfer(&hub, id).await["bytes_done"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(seen.len() >= 3, "progress values seen: {seen:?}");
    let t = transfer(&hub, id).await;
    assert!(
        t["rate"].as_u64().unwrap_or(0) > 0 && t["eta"].is_u64(),
        "{t}"
    );
    let r = hub
        .req(
            reqwest::Method::DELETE,
            &hub.url(&format!("/v1/transfers/{id}")),
        )
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.expect("json");
    assert_eq!(t["state"], "cancelled");
    e2e::assert_eventually!(
        spoke.log_text().contains("cancelled"),
        Duration::from_secs(10),
        "the spoke to stop the transfer"
    );
    let dst = connector(&s.dst_creds).await;
    assert!(!dst
        .exists(&StoragePath::parse("big.bin").expect("p"))
        .await
        .expect("exists"));
    // Another application's key cannot see it.
    let r = hub
        .http
        .get(hub.url("/v1/transfers/999999"))
        .header("Authorization", hub.apikey())
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 404);
}

/// With no spoke at all the hub runs the copy itself, says so, and the result is identical.
#[tokio::test]
async fn no_spoke_means_the_hub_does_it() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(hub_yaml(None, 8)),
        ..Default::default()
    })
    .await
    .expect("hub");
    let s = setup(&hub, 40 * MIB).await;
    let id = start_copy(&hub, &s).await;
    let t = until(&hub, id, Duration::from_secs(60), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["executor"], "hub", "{t}");
    assert!(
        t["note"]
            .as_str()
            .unwrap_or("")
            .contains("no healthy spoke"),
        "{t}"
    );
    assert_eq!(t["parts_done"], 5);
    assert_eq!(
        sha_of(&connector(&s.dst_creds).await, "big.bin").await,
        s.sha
    );
    // A cross-account copy into a non-multipart destination (local disk) streams instead.
    let fs_root = hub.new_fs_root("copy-dst").expect("root");
    let fs = hub
        .connect("fs", json!({"root": fs_root}))
        .await
        .expect("fs")["id"]
        .as_i64()
        .expect("id");
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!(
                "/v1/accounts/{}/storage/files/{}/copy",
                s.src, s.file_id
            )),
        )
        .json(&json!({"account": fs, "parent_id": "root"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(r.status(), 201);
    let on_disk = std::fs::read(fs_root.join("big.bin")).expect("copied file");
    assert_eq!(e2e::sha256_hex(&on_disk), s.sha);
}

/// A spoke that stops heartbeating (SIGSTOP) is marked unhealthy and gets no work; when it
/// comes back (SIGCONT) it is healthy again and work goes to it.
#[tokio::test]
async fn silent_spoke_gets_no_work() {
    let (hub, _root, spoke) = hub_with_spoke(hub_yaml(None, 8), "quiet").await;
    let s = setup(&hub, 24 * MIB).await;
    let pid = spoke.child.id().expect("pid").to_string();
    let signal = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    signal("-STOP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::spokes::spoke_view(&hub, spoke.id).await["status"]["healthy"] == true {
        assert!(Instant::now() < deadline, "the silent spoke stayed healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = start_copy(&hub, &s).await;
    let t = until(&hub, id, Duration::from_secs(60), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["executor"], "hub", "{t}");
    signal("-CONT");
    wait_healthy(&hub, spoke.id).await;
    let id = start_copy(&hub, &s).await;
    let t = until(&hub, id, Duration::from_secs(60), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], spoke.id, "{t}");
}

/// A copy to storage no spoke has measured yet waits for that measurement only: the spoke
/// reports it as soon as it has it and the hub dispatches at once, not at the next heartbeat or
/// scheduler pass (both 30 s apart here; without either, the copy would sit queued that long).
#[tokio::test]
async fn copy_to_new_storage_starts_once_the_spoke_measured_it() {
    let yaml = format!(
        "offload:\n  part_size: {}\n  startup_grace_secs: 0\n\
         transfers:\n  scheduler_tick_ms: 30000\n  lease_ms: 200000\n\
         network:\n  heartbeat_ms: 30000\n  missed_heartbeats: 2\n",
        8 * MIB
    );
    let (hub, _root, spoke) = hub_with_spoke(yaml, "prober").await;
    // A new S3 server: an endpoint the spoke has never measured.
    let s = setup(&hub, 16 * MIB).await;
    let started = Instant::now();
    let id = start_copy(&hub, &s).await;
    let t = until(
        &hub,
        id,
        Duration::from_secs(12),
        "the copy's dispatch",
        |t| t["state"] == "running" || t["state"] == "done",
    )
    .await;
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], spoke.id, "{t}");
    let t = until(&hub, id, Duration::from_secs(60), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["bytes_done"], 16 * MIB, "{t}");
    assert!(started.elapsed() < Duration::from_secs(30), "{t}");
    assert_eq!(
        sha_of(&connector(&s.dst_creds).await, "big.bin").await,
        s.sha
    );
    // The hub heard the measurement before the next heartbeat was due.
    let view = crate::spokes::spoke_view(&hub, spoke.id).await;
    let endpoint = s.s3.endpoint();
    let host_port = endpoint.trim_start_matches("http://");
    assert!(
        view.to_string().contains(host_port),
        "the spoke's view lacks its RTT to {host_port}: {view}"
    );
}
