//! A spoke that failed a transfer is kept away from it for a while
//! (`transfers.failed_spoke_exclusion_secs`): the retry goes to another spoke, or to the hub
//! when none is left, the exclusion is recorded with the transfer (so any hub honours it), and
//! the transfer's note names the spoke, why and until when.
//!
//! The failing spoke fails for real: its scratch directory is a plain file, so it cannot write
//! the SFTP key an SFTP source needs (`cannot write sftp key file`), while the other spoke
//! and the hub can.

use crate::offload::{
    account, connector, first_file_id, s3_creds, sha_of, start_copy, transfer, until, write_object,
    Setup,
};
use crate::spokes::{wait_healthy, SpokeProc};
use e2e::cut_proxy::CutProxy;
use e2e::servers::{S3Server, SftpServer};
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// One transfer per spoke at a time; `grace_secs` before the hub runs transfers itself.
fn yaml(grace_secs: u64) -> String {
    format!(
        "offload:\n  part_size: {}\n  part_concurrency: 2\n  max_jobs_per_spoke: 1\n  \
         startup_grace_secs: {grace_secs}\n\
         network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n",
        8 * MIB
    )
}

/// Starts a spoke that fails every SFTP transfer: its scratch directory is a plain file.
async fn broken_spoke(hub: &TestHub, root: &std::path::Path, name: &str) -> SpokeProc {
    let s = SpokeProc::start(hub, root, name).await;
    let scratch = s.dir.join("scratch");
    if scratch.is_dir() {
        std::fs::remove_dir_all(&scratch).expect("remove scratch");
    }
    std::fs::write(&scratch, b"not a directory").expect("scratch file");
    wait_healthy(hub, s.id).await;
    s
}

/// An SFTP account holding `name` (`size` bytes) and its file id.
async fn sftp_source(hub: &TestHub, sftp: &SftpServer, name: &str, size: usize) -> (i64, Vec<u8>) {
    let data = e2e::pattern(size, 41);
    std::fs::write(sftp.dir().join(name), &data).expect("sftp file");
    let creds = json!({"endpoint": sftp.endpoint(), "user": sftp.user(),
                       "key": sftp.private_key(), "root": sftp.dir()});
    let id = hub.connect("sftp", creds).await.expect("sftp account")["id"]
        .as_i64()
        .expect("id");
    (id, data)
}

/// Copies the first file of account `src` into the root of `dst` under `name`, asynchronously;
/// the transfer id.
async fn copy_async(hub: &TestHub, src: i64, dst: i64, name: &str) -> i64 {
    let file = first_file_id(hub, src).await;
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!("/v1/accounts/{src}/storage/files/{file}/copy")),
        )
        .header("X-Kloudless-Async", "true")
        .json(&json!({"account": dst, "parent_id": "root", "name": name}))
        .send()
        .await
        .expect("copy");
    assert_eq!(r.status(), 202);
    let task: Value = r.json().await.expect("json");
    task["transfer"].as_i64().expect("transfer id")
}

fn note(t: &Value) -> &str {
    t["note"].as_str().unwrap_or_default()
}

/// Two spokes; the one that runs the transfer fails it. The retry waits for the other spoke
/// (busy with another transfer, and the hub does not step in) instead of going back to the
/// one that failed, and the note says so. Without the exclusion, the transfer goes back to
/// the failing spoke at every scheduler tick until its attempts run out.
#[tokio::test]
async fn a_failed_spoke_is_kept_away_from_the_transfer() {
    // The hub never runs transfers itself here: only the spokes can.
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(yaml(3600)),
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let good = SpokeProc::start(&hub, root.path(), "good").await;
    wait_healthy(&hub, good.id).await;

    // A copy keeps the good spoke's one slot busy for as long as the test wants: its source
    // is read through a proxy that hands it on at 512 KiB/s per read until told otherwise.
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("src").await.expect("bucket");
    s3.create_bucket("dst").await.expect("bucket");
    let direct = s3_creds(&s3, "src");
    let sha = write_object(&connector(&direct).await, "big.bin", 32 * MIB, 7).await;
    let slow = CutProxy::start(&s3.endpoint()).await.expect("proxy");
    slow.pace(512 * 1024);
    let mut src_creds = direct.clone();
    src_creds["endpoint"] = json!(slow.endpoint());
    let src = account(&hub, src_creds).await;
    let dst_creds = s3_creds(&s3, "dst");
    let dst = account(&hub, dst_creds.clone()).await;
    let file_id = first_file_id(&hub, src).await;
    let long = Setup {
        s3,
        src,
        dst,
        file_id,
        sha,
        dst_creds,
    };
    let t0 = start_copy(&hub, &long).await;
    until(
        &hub,
        t0,
        Duration::from_secs(30),
        "the long copy to run",
        |t| t["state"] == "running" && t["spoke"] == good.id,
    )
    .await;

    // Only now the broken spoke: the SFTP copy can only go to it, and it fails there.
    let bad = broken_spoke(&hub, root.path(), "bad").await;
    let sftp = SftpServer::start().await.expect("sshd");
    let (sftp_acc, data) = sftp_source(&hub, &sftp, "small.bin", 3 * MIB as usize).await;
    let t1 = copy_async(&hub, sftp_acc, long.dst, "small.bin").await;
    let t = until(
        &hub,
        t1,
        Duration::from_secs(30),
        "the failure on the bad spoke",
        |t| note(t).contains("failed this transfer"),
    )
    .await;
    eprintln!("after the failure: {t}");
    let said = format!("spoke {} (bad) failed this transfer: ", bad.id);
    assert!(note(&t).contains(&said), "{t}");
    assert!(note(&t).contains("cannot write sftp key file"), "{t}");
    assert!(note(&t).contains("; excluded until "), "{t}");
    assert!(
        bad.log_text().contains("transfer failed"),
        "{}",
        bad.log_text()
    );
    // Recorded with the transfer, for about the configured 300 s.
    let now = hub::state::now_ms();
    let excluded = hub
        .state
        .db
        .transfer_exclusions(t1, now)
        .await
        .expect("exclusions");
    assert_eq!(excluded.len(), 1, "{excluded:?}");
    assert_eq!(excluded[0].spoke_id, bad.id);
    let left = excluded[0].until_ms - now;
    assert!((290_000..=300_000).contains(&left), "{left} ms left");
    assert!(
        excluded[0].reason.contains("cannot write sftp key file"),
        "{excluded:?}"
    );

    // The retry waits for the good spoke (the hub does not step in: its grace period).
    // Watched for 3 s (several scheduler ticks): it never leaves the queue meanwhile.
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let t = transfer(&hub, t1).await;
        assert_eq!(t["state"], "queued", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The long copy may finish now; then the retry runs on the good spoke.
    slow.pace(1 << 40);
    let t = until(&hub, t1, Duration::from_secs(90), "the SFTP copy", |t| {
        t["state"] == "done"
    })
    .await;
    eprintln!("done: {t}");
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], good.id, "{t}");
    assert_eq!(t["attempts"], 2, "one attempt on each spoke: {t}");
    assert!(note(&t).contains(&said), "{t}");
    assert_eq!(
        sha_of(&connector(&long.dst_creds).await, "small.bin").await,
        e2e::sha256_hex(&data)
    );
    let t = until(&hub, t0, Duration::from_secs(90), "the long copy", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["spoke"], good.id, "{t}");
    assert_eq!(
        sha_of(&connector(&long.dst_creds).await, "big.bin").await,
        long.sha
    );
    // Spent exclusions are pruned by the periodic sweep; this one is not spent yet.
    assert_eq!(
        hub::transfers::prune_exclusions(&hub.state)
            .await
            .expect("prune"),
        0
    );
    assert_eq!(
        hub.state
            .db
            .prune_some(hub::db::TRANSFER_EXCLUSIONS, now + 301_000, 10)
            .await
            .expect("prune"),
        1
    );
    drop(sftp);
}

/// The only spoke failed the transfer and the hub may run transfers itself: the hub runs it,
/// and the note says why.
#[tokio::test]
async fn the_hub_runs_what_its_only_spoke_failed() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(yaml(0)),
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let bad = broken_spoke(&hub, root.path(), "bad").await;
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("dst").await.expect("bucket");
    let dst_creds = s3_creds(&s3, "dst");
    let dst = account(&hub, dst_creds.clone()).await;
    let sftp = SftpServer::start().await.expect("sshd");
    let (sftp_acc, data) = sftp_source(&hub, &sftp, "one.bin", 2 * MIB as usize).await;
    let id = copy_async(&hub, sftp_acc, dst, "one.bin").await;
    let t = until(&hub, id, Duration::from_secs(60), "the copy", |t| {
        t["state"] == "done"
    })
    .await;
    eprintln!("done: {t}");
    assert_eq!(t["executor"], "hub", "{t}");
    let n = note(&t);
    assert!(
        n.contains(&format!("spoke {} (bad) failed this transfer: ", bad.id))
            && n.contains("no other spoke can take it: the hub ran this transfer itself"),
        "{t}"
    );
    assert_eq!(
        sha_of(&connector(&dst_creds).await, "one.bin").await,
        e2e::sha256_hex(&data)
    );
    assert!(
        transfer(&hub, id).await["attempts"].as_i64().unwrap_or(0) >= 2,
        "the spoke's attempt and the hub's"
    );
}
