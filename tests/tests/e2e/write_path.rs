//! The write path under concurrency, through the real API on every connector (local disk, S3 on
//! moto, WebDAV on rclone, SFTP on OpenSSH): racing uploads of one name each get their own
//! file, racing folder creations have one winner, overwrites are never torn, staging never
//! leaks (a hub killed with SIGKILL mid-upload, a folder deleted during an upload), long names
//! never fail for their staging name, and a bounded stress of mixed operations keeps every
//! acknowledged write.

use crate::hubs::{dev_credentials, spawn_hub, wait_ready};
use e2e::servers::{free_port, S3Server, SftpServer, WebDavServer};
use e2e::{assert_eventually, pattern, sha256_hex, TestHub};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound of every concurrent phase: a hang fails the test instead of stalling the suite.
const PHASE_LIMIT: Duration = Duration::from_secs(240);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PHASE_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PHASE_LIMIT:?}"))
}

/// One upload through the API: (status, JSON body).
async fn upload(
    hub: &TestHub,
    acc: i64,
    parent: &str,
    name: &str,
    data: Vec<u8>,
    overwrite: bool,
) -> (u16, Value) {
    let r = hub
        .req(
            Method::POST,
            &hub.url(&format!(
                "/v1/accounts/{acc}/storage/files?overwrite={overwrite}"
            )),
        )
        .header(
            "X-Kloudless-Metadata",
            json!({"name": name, "parent_id": parent}).to_string(),
        )
        .body(data)
        .send()
        .await
        .expect("upload request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_json(hub: &TestHub, url: &str) -> (u16, Value) {
    let r = hub.req(Method::GET, url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Names in folder `folder` of `acc` (one page of up to 1000).
async fn names_in(hub: &TestHub, acc: i64, folder: &str) -> Vec<String> {
    let (status, v) = get_json(
        hub,
        &hub.url(&format!(
            "/v1/accounts/{acc}/storage/folders/{folder}/contents?page_size=1000"
        )),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["name"].as_str().expect("name").to_owned())
        .collect()
}

async fn new_folder(hub: &TestHub, acc: i64, parent: &str, name: &str) -> String {
    let r = hub
        .req(
            Method::POST,
            &hub.url(&format!("/v1/accounts/{acc}/storage/folders")),
        )
        .json(&json!({"parent_id": parent, "name": name}))
        .send()
        .await
        .expect("mkdir");
    assert!(r.status().is_success(), "mkdir {name}: {}", r.status());
    let v: Value = r.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

/// `n` concurrent uploads of `same.bin` into folder `parent` without overwrite, each with its
/// own bytes: every one must answer 201 naming a file of its own that holds its own bytes, and
/// the folder must hold exactly those files.
async fn upload_race(hub: &TestHub, acc: i64, parent: &str, n: usize) {
    let started = std::time::Instant::now();
    let results = bounded(
        "the upload race",
        join_all((0..n).map(|i| async move {
            let data = pattern(2048 + i, i as u64 + 1);
            let (status, v) = upload(hub, acc, parent, "same.bin", data.clone(), false).await;
            (i, data, status, v)
        })),
    )
    .await;
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for (i, _, status, v) in &results {
        assert_eq!(*status, 201, "upload {i}: {v}");
        assert!(
            ids.insert(v["id"].as_str().expect("id").to_owned()),
            "upload {i} shares an id: {v}"
        );
        assert!(
            names.insert(v["name"].as_str().expect("name").to_owned()),
            "upload {i} shares a name: {v}"
        );
    }
    for (i, data, _, v) in &results {
        let body = hub
            .download(acc, v["id"].as_str().expect("id"))
            .await
            .expect("download");
        assert_eq!(
            sha256_hex(&body),
            sha256_hex(data),
            "upload {i} answered {} but it holds other bytes",
            v["name"]
        );
    }
    let listed: HashSet<String> = names_in(hub, acc, parent)
        .await
        .into_iter()
        .filter(|n| n.starts_with("same"))
        .collect();
    assert_eq!(
        listed, names,
        "the folder holds exactly the acknowledged files"
    );
    eprintln!("{n} racing uploads took {:?}", started.elapsed());
}

/// `n` concurrent creations of one folder with `conflict_if_exists=true`: exactly one 201.
async fn folder_race(hub: &TestHub, acc: i64, n: usize) {
    let url = hub.url(&format!(
        "/v1/accounts/{acc}/storage/folders?conflict_if_exists=true"
    ));
    let statuses = bounded(
        "the folder race",
        join_all((0..n).map(|_| {
            let url = url.clone();
            async move {
                hub.req(Method::POST, &url)
                    .json(&json!({"parent_id": "root", "name": "contested"}))
                    .send()
                    .await
                    .expect("mkdir")
                    .status()
                    .as_u16()
            }
        })),
    )
    .await;
    let created = statuses.iter().filter(|s| **s == 201).count();
    let conflicts = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!(
        (created, conflicts),
        (1, n - 1),
        "exactly one creation wins: {statuses:?}"
    );
}

/// Fails, listing them, when staging objects are left under `root`.
fn assert_no_staging(root: &Path) {
    let left = staging_files(root);
    assert!(left.is_empty(), "{left:?}");
}

/// Files left under the raw staging folder of a local root (none when it does not exist).
fn staging_files(root: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join(".switchyard-partial")) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

/// Keys of `bucket` on moto and its incomplete multipart uploads, read with unsigned
/// requests (moto does not check signatures) so nothing of ours filters them.
async fn raw_bucket(s3: &S3Server, bucket: &str) -> (Vec<String>, usize) {
    let http = e2e::http_client();
    let list = http
        .get(format!(
            "{}/{bucket}?list-type=2&max-keys=10000",
            s3.endpoint()
        ))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    let keys = list
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect();
    (keys, incomplete_uploads(s3, bucket).await.len())
}

/// The keys of `bucket`'s incomplete multipart uploads (one per upload), unsigned like
/// [`raw_bucket`].
async fn incomplete_uploads(s3: &S3Server, bucket: &str) -> Vec<String> {
    let doc = e2e::http_client()
        .get(format!("{}/{bucket}?uploads", s3.endpoint()))
        .send()
        .await
        .expect("uploads")
        .text()
        .await
        .expect("text");
    let mut keys: Vec<String> = doc
        .split("<Upload>")
        .skip(1)
        .filter_map(|u| u.split("<Key>").nth(1)?.split("</Key>").next())
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

async fn s3_account(hub: &TestHub, s3: &S3Server, bucket: &str) -> i64 {
    s3.create_bucket(bucket).await.expect("bucket");
    hub.connect(
        "s3",
        json!({"bucket": bucket, "endpoint": s3.endpoint(), "region": "us-east-1",
               "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}),
    )
    .await
    .expect("s3 account")["id"]
        .as_i64()
        .expect("id")
}

async fn fs_account(hub: &TestHub, name: &str) -> (i64, PathBuf) {
    let root = hub.new_fs_root(name).expect("root");
    let id = hub
        .connect("fs", json!({"root": root}))
        .await
        .expect("fs account")["id"]
        .as_i64()
        .expect("id");
    (id, root)
}

#[tokio::test]
async fn racing_uploads_each_get_their_own_file_on_fs() {
    let hub = TestHub::start().await.expect("hub");
    let (acc, root) = fs_account(&hub, "race").await;
    upload_race(&hub, acc, "root", 200).await;
    assert_no_staging(&root);
}

// moto, rclone and sshd serve each request far slower than a local disk (moto handles one at
// a time per connection, sshd starts a session per connection): 40 racers still collide on
// every name many times over, in a bounded time.
#[tokio::test]
async fn racing_uploads_each_get_their_own_file_on_s3() {
    let hub = TestHub::start().await.expect("hub");
    let s3 = S3Server::start().await.expect("moto");
    let acc = s3_account(&hub, &s3, "race").await;
    upload_race(&hub, acc, "root", 40).await;
    let (keys, uploads) = raw_bucket(&s3, "race").await;
    assert_eq!(uploads, 0, "no multipart upload left");
    assert!(keys.iter().all(|k| !k.contains(".switchyard-")), "{keys:?}");
}

#[tokio::test]
async fn racing_uploads_each_get_their_own_file_on_webdav() {
    let hub = TestHub::start().await.expect("hub");
    let dav = WebDavServer::start().await.expect("rclone");
    let acc = hub
        .connect(
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
        )
        .await
        .expect("webdav")["id"]
        .as_i64()
        .expect("id");
    upload_race(&hub, acc, "root", 40).await;
    assert_no_staging(dav.dir());
}

#[tokio::test]
async fn racing_uploads_each_get_their_own_file_on_sftp() {
    let hub = TestHub::start().await.expect("hub");
    let sftp = SftpServer::start().await.expect("sshd");
    let acc = hub
        .connect(
            "sftp",
            json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
                   "root": sftp.dir()}),
        )
        .await
        .expect("sftp")["id"]
        .as_i64()
        .expect("id");
    upload_race(&hub, acc, "root", 30).await;
    assert_no_staging(sftp.dir());
}

#[tokio::test]
async fn racing_folder_creations_have_one_winner_on_every_connector() {
    let hub = TestHub::start().await.expect("hub");
    let (fs, _) = fs_account(&hub, "folders").await;
    folder_race(&hub, fs, 50).await;
    let s3 = S3Server::start().await.expect("moto");
    folder_race(&hub, s3_account(&hub, &s3, "folders").await, 50).await;
    let dav = WebDavServer::start().await.expect("rclone");
    let dav_acc = hub
        .connect(
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
        )
        .await
        .expect("webdav")["id"]
        .as_i64()
        .expect("id");
    folder_race(&hub, dav_acc, 50).await;
    let sftp = SftpServer::start().await.expect("sshd");
    let sftp_acc = hub
        .connect(
            "sftp",
            json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
                   "root": sftp.dir()}),
        )
        .await
        .expect("sftp")["id"]
        .as_i64()
        .expect("id");
    folder_race(&hub, sftp_acc, 20).await;
}

/// Concurrent `overwrite=true` uploads of one name while readers download it: every upload is
/// acknowledged, every read is one written content entirely, and the last state is one of them.
/// `gaps`: the server replaces by deleting first (WebDAV `MOVE` with `Overwrite: T` is a DELETE
/// then a MOVE by RFC 4918), so a read may fail for a moment, but never return a torn file.
async fn overwrite_race(hub: &TestHub, acc: i64, gaps: bool) {
    let contents: Vec<Vec<u8>> = (0..8).map(|i| pattern(300_000, 100 + i)).collect();
    let digests: HashSet<String> = contents.iter().map(|c| sha256_hex(c)).collect();
    let first = upload(hub, acc, "root", "hot.bin", contents[0].clone(), true).await;
    assert_eq!(first.0, 201, "{}", first.1);
    let id = first.1["id"].as_str().expect("id").to_owned();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (done, digests, id) = (&done, &digests, &id);
    let writers = async {
        let r = join_all((0..48).map(|i| {
            let data = contents[i % contents.len()].clone();
            async move { upload(hub, acc, "root", "hot.bin", data, true).await }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    };
    let readers = join_all((0..4).map(|_| async move {
        let mut reads = 0;
        // Bounded: a reader stops when the writers are done or after 2000 reads.
        while !done.load(std::sync::atomic::Ordering::SeqCst) && reads < 2000 {
            let body = match hub.download(acc, id).await {
                Ok(b) => b,
                // The server deletes, then moves: the read finds nothing, or loses its file
                // mid-stream (the hub has sent the headers by then and cuts the body).
                Err(_) if gaps => {
                    reads += 1;
                    continue;
                }
                Err(e) => panic!("every read finds the file: {e}"),
            };
            assert!(
                digests.contains(&sha256_hex(&body)),
                "a read saw a torn or mixed file ({} bytes)",
                body.len()
            );
            reads += 1;
        }
        reads
    }));
    let (written, reads) = bounded(
        "the overwrite race",
        futures::future::join(writers, readers),
    )
    .await;
    for (status, v) in written {
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["name"], "hot.bin", "overwrite keeps the name");
    }
    eprintln!("reads during overwrites: {reads:?}");
    let last = hub.download(acc, id).await.expect("final");
    assert!(digests.contains(&sha256_hex(&last)));
    assert_eq!(
        names_in(hub, acc, "root").await,
        vec!["hot.bin".to_owned()],
        "no extra files"
    );
}

#[tokio::test]
async fn overwrites_are_last_writer_wins_and_never_torn() {
    let hub = TestHub::start().await.expect("hub");
    let (fs, root) = fs_account(&hub, "overwrite").await;
    overwrite_race(&hub, fs, false).await;
    assert_no_staging(&root);
    let dav = WebDavServer::start().await.expect("rclone");
    let dav_acc = hub
        .connect(
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
        )
        .await
        .expect("webdav")["id"]
        .as_i64()
        .expect("id");
    overwrite_race(&hub, dav_acc, true).await;
    assert_no_staging(dav.dir());
}

#[tokio::test]
async fn a_long_name_never_fails_for_its_staging_name() {
    let hub = TestHub::start().await.expect("hub");
    let (acc, root) = fs_account(&hub, "long").await;
    let name = format!("{}.txt", "n".repeat(246));
    assert_eq!(name.len(), 250);
    let (status, v) = upload(&hub, acc, "root", &name, b"long".to_vec(), false).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["name"], name.as_str());
    // Replacing it stages too.
    let (status, v) = upload(&hub, acc, "root", &name, b"longer".to_vec(), true).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(std::fs::read(root.join(&name)).expect("on disk"), b"longer");
    // A 255-byte name (the limit): a second upload has no longer numbered name to move on
    // to and says so, rather than failing at the provider.
    let max = "m".repeat(255);
    let (status, v) = upload(&hub, acc, "root", &max, b"a".to_vec(), false).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = upload(&hub, acc, "root", &max, b"b".to_vec(), false).await;
    assert_eq!(status, 409, "{v}");
    assert_no_staging(&root);
}

/// A request body we feed by hand: the upload stays open until the test sends the rest.
fn held_body() -> (
    tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    reqwest::Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, reqwest::Body::wrap_stream(tokio_stream_from(rx)))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Total bytes of the files in a local root's staging folder.
fn staged_bytes(root: &Path) -> u64 {
    staging_files(root)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn an_upload_into_a_folder_deleted_meanwhile_fails_clearly_and_leaves_nothing() {
    let hub = TestHub::start().await.expect("hub");
    let (acc, root) = fs_account(&hub, "vanishing").await;
    let folder = new_folder(&hub, acc, "root", "doomed").await;
    let (tx, body) = held_body();
    let request = hub
        .req(
            Method::POST,
            &hub.url(&format!("/v1/accounts/{acc}/storage/files")),
        )
        .header(
            "X-Kloudless-Metadata",
            json!({"name": "big.bin", "parent_id": folder}).to_string(),
        )
        .body(body)
        .send();
    let upload = tokio::spawn(request);
    let chunk = bytes::Bytes::from(pattern(1 << 20, 5));
    for _ in 0..4 {
        tx.send(Ok(chunk.clone())).await.expect("send");
    }
    assert_eventually!(
        staged_bytes(&root) >= 1 << 20,
        Duration::from_secs(30),
        "the upload to be staging"
    );
    let r = hub
        .req(
            Method::DELETE,
            &hub.url(&format!(
                "/v1/accounts/{acc}/storage/folders/{folder}?recursive=true"
            )),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    tx.send(Ok(chunk)).await.expect("send");
    drop(tx);
    let r = bounded("the upload", upload)
        .await
        .expect("join")
        .expect("answer");
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "not_found", "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("parent folder"),
        "{v}"
    );
    assert!(!root.join("doomed").exists(), "the folder stays deleted");
    assert_no_staging(&root);
}

#[tokio::test]
async fn staging_of_a_hub_killed_mid_upload_is_swept() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let base = dir.path().join("base.yaml");
    std::fs::write(
        &base,
        "storage:\n  staging_grace_secs: 2\nlog:\n  level: warn\n",
    )
    .expect("config");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let port = free_port();
    let mut first = spawn_hub(&data, &base, port);
    wait_ready(&http, port).await;
    let creds = dev_credentials(&data);
    let key = creds["api_key"].as_str().expect("key").to_owned();
    let acc = creds["account_id"].as_i64().expect("account");
    // The dev account's root: the dev application's space under `DATA_DIR/files`.
    let files = data.join("files").join(format!(
        "app-{}",
        creds["application_id"].as_i64().expect("application")
    ));

    let (tx, upload) = held_upload(&http, port, &key, acc, "interrupted.bin", false);
    let chunk = bytes::Bytes::from(pattern(1 << 20, 9));
    for _ in 0..8 {
        tx.send(Ok(chunk.clone())).await.expect("send");
    }
    assert_eventually!(
        staged_bytes(&files) >= 4 << 20,
        Duration::from_secs(30),
        "the upload to be staging"
    );
    first.kill().await.expect("SIGKILL and reap");
    drop(tx);
    let _ = upload.await;
    assert!(
        staged_bytes(&files) > 0,
        "the killed hub left its staging behind"
    );
    assert!(!files.join("interrupted.bin").exists());

    // The next hub on the same database sweeps it once the grace period has passed.
    let port = free_port();
    let mut second = spawn_hub(&data, &base, port);
    wait_ready(&http, port).await;
    assert_eventually!(
        staging_files(&files).is_empty(),
        Duration::from_secs(30),
        "the staging object to be swept"
    );
    // A live upload is not swept meanwhile: its claim is refreshed while it streams.
    let (tx, upload) = held_upload(&http, port, &key, acc, "slow.bin", false);
    let mut sent = Vec::new();
    for i in 0..5u64 {
        let part = pattern(64 * 1024, i);
        sent.extend_from_slice(&part);
        tx.send(Ok(bytes::Bytes::from(part))).await.expect("send");
        // Spread over more than two grace periods, so a sweep would have struck.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(tx);
    let r = bounded("the slow upload", upload)
        .await
        .expect("join")
        .expect("answer");
    assert_eq!(r.status(), 201);
    assert_eq!(std::fs::read(files.join("slow.bin")).expect("file"), sent);
    second.kill().await.expect("kill and reap");
}

/// Starts an upload of `name` into the root of `acc` on the hub at `port`, whose body the test
/// feeds through the returned sender.
#[allow(clippy::type_complexity)]
fn held_upload(
    http: &reqwest::Client,
    port: u16,
    key: &str,
    acc: i64,
    name: &str,
    overwrite: bool,
) -> (
    tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let (tx, body) = held_body();
    let upload = tokio::spawn(
        http.post(format!(
            "http://127.0.0.1:{port}/v1/accounts/{acc}/storage/files?overwrite={overwrite}"
        ))
        .header("Authorization", format!("APIKey {key}"))
        .header(
            "X-Kloudless-Metadata",
            json!({"name": name, "parent_id": "root"}).to_string(),
        )
        .body(body)
        .send(),
    );
    (tx, upload)
}

/// On S3 a writer killed mid-upload leaves no staging object but an incomplete multipart
/// upload, whose parts use storage until someone aborts it: the next hub's sweep does, for
/// uploads with and without replace, and leaves a live upload of the same name alone.
#[tokio::test]
async fn multipart_uploads_of_a_hub_killed_mid_upload_are_aborted_on_s3() {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("killed").await.expect("bucket");
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let base = dir.path().join("base.yaml");
    std::fs::write(
        &base,
        "storage:\n  staging_grace_secs: 2\n  allow_private_endpoints: true\nlog:\n  level: warn\n",
    )
    .expect("config");
    let http = e2e::http_client();
    let port = free_port();
    let mut first = spawn_hub(&data, &base, port);
    wait_ready(&http, port).await;
    let creds = dev_credentials(&data);
    let key = creds["api_key"].as_str().expect("key").to_owned();
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/accounts"))
        .header("Authorization", format!("APIKey {key}"))
        .json(
            &json!({"service": "s3", "account": "killed", "credentials": {
            "bucket": "killed", "endpoint": s3.endpoint(), "region": "us-east-1",
            "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}}),
        )
        .send()
        .await
        .expect("connect");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let acc = r.json::<Value>().await.expect("account")["id"]
        .as_i64()
        .expect("id");

    // One upload that must not replace (a reserved name) and one that may: both past the
    // first multipart part, then the hub dies.
    let chunk = bytes::Bytes::from(pattern(1 << 20, 3));
    let mut held = Vec::new();
    for (name, overwrite) in [("keep-out.bin", false), ("replace-me.bin", true)] {
        let (tx, upload) = held_upload(&http, port, &key, acc, name, overwrite);
        // Past the first 8 MiB part even with the loopback socket buffers full.
        for _ in 0..24 {
            tx.send(Ok(chunk.clone())).await.expect("send");
        }
        held.push((tx, upload));
    }
    assert_eventually!(
        incomplete_uploads(&s3, "killed").await.len() >= 2,
        Duration::from_secs(60),
        "both uploads to have started multipart uploads"
    );
    first.kill().await.expect("SIGKILL and reap");
    for (tx, upload) in held {
        drop(tx);
        let _ = upload.await;
    }
    let (keys, uploads) = raw_bucket(&s3, "killed").await;
    assert!(keys.is_empty(), "no object appeared: {keys:?}");
    assert_eq!(
        uploads, 2,
        "the killed hub left its multipart uploads behind"
    );

    // The next hub: a live upload of one of the names starts before the old claims go stale
    // and streams across several sweeps; the dead writers' uploads are aborted, the live one
    // completes.
    let port = free_port();
    let mut second = spawn_hub(&data, &base, port);
    wait_ready(&http, port).await;
    let (tx, upload) = held_upload(&http, port, &key, acc, "replace-me.bin", true);
    let mut sent = Vec::new();
    for i in 0..24u64 {
        let part = pattern(1 << 20, 100 + i);
        sent.extend_from_slice(&part);
        tx.send(Ok(bytes::Bytes::from(part))).await.expect("send");
    }
    // The reserved name's dead upload goes; the other name's is deferred while a live writer
    // holds that name (S3 cannot say which of the two uploads is the dead one).
    assert_eventually!(
        incomplete_uploads(&s3, "killed").await == ["replace-me.bin", "replace-me.bin"],
        Duration::from_secs(60),
        "the dead upload of the reserved name to be aborted, the live one kept"
    );
    // Across more sweeps (every second with a 2 s grace), the live upload keeps going.
    for i in 0..3u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let part = pattern(1 << 20, 200 + i);
        sent.extend_from_slice(&part);
        tx.send(Ok(bytes::Bytes::from(part))).await.expect("send");
    }
    drop(tx);
    let r = bounded("the live upload", upload)
        .await
        .expect("join")
        .expect("answer");
    assert_eq!(r.status(), 201);
    // With the live writer gone, the deferred claim is swept after another grace period.
    assert_eventually!(
        incomplete_uploads(&s3, "killed").await.is_empty(),
        Duration::from_secs(60),
        "the deferred dead upload to be aborted"
    );
    let (keys, _) = raw_bucket(&s3, "killed").await;
    assert_eq!(keys, vec!["replace-me.bin".to_owned()]);
    let got = http
        .get(format!("{}/killed/replace-me.bin", s3.endpoint()))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&sent),
        "the live upload's bytes"
    );
    second.kill().await.expect("kill and reap");
}

/// What one stress client believes about its own files: id → (name, folder id, digest).
type Owned = HashMap<String, (String, String, String)>;

/// N clients × M operations on one folder (and a subfolder): uploads of names shared by all
/// clients without overwrite, renames and moves to shared names, deletes, downloads and
/// listings. Each client touches only files it created, so it knows exactly what must be true
/// of them at the end; names are contested by everyone.
async fn stress(hub: &TestHub, acc: i64, clients: usize, ops: usize) -> (Owned, HashSet<String>) {
    let top = new_folder(hub, acc, "root", "stress").await;
    let sub = new_folder(hub, acc, &top, "sub").await;
    let names = ["a.bin", "b.bin", "c.txt", "d"];
    let per_client = join_all((0..clients).map(|c| {
        let (top, sub) = (top.clone(), sub.clone());
        async move {
            let mut rng = c as u64 * 7919 + 17;
            let mut next = move |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            let mut owned = Owned::new();
            let mut deleted = HashSet::new();
            for op in 0..ops {
                let name = names[next(names.len() as u64) as usize];
                let pick = |owned: &Owned, k: u64| owned.keys().nth(k as usize).cloned();
                let roll = next(100);
                if roll < 40 || owned.is_empty() {
                    let folder = if next(4) == 0 { &sub } else { &top };
                    let data = pattern(1000 + next(5000) as usize, (c * 1000 + op) as u64);
                    let (status, v) = upload(hub, acc, folder, name, data.clone(), false).await;
                    assert_eq!(status, 201, "client {c} op {op}: upload {v}");
                    let id = v["id"].as_str().expect("id").to_owned();
                    owned.insert(
                        id.clone(),
                        (
                            v["name"].as_str().expect("name").into(),
                            folder.clone(),
                            sha256_hex(&data),
                        ),
                    );
                    deleted.remove(&id);
                } else if roll < 60 {
                    let id = pick(&owned, next(owned.len() as u64)).expect("own file");
                    let folder = if next(3) == 0 {
                        sub.clone()
                    } else {
                        top.clone()
                    };
                    let r = hub
                        .req(
                            Method::PATCH,
                            &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}")),
                        )
                        .json(&json!({"name": format!("r{c}-{op}-{name}"), "parent_id": folder}))
                        .send()
                        .await
                        .expect("rename");
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.expect("json");
                    assert_eq!(status, 200, "client {c} op {op}: rename {v}");
                    let (_, _, digest) = owned.remove(&id).expect("owned");
                    deleted.insert(id);
                    let new_id = v["id"].as_str().expect("id").to_owned();
                    deleted.remove(&new_id);
                    owned.insert(
                        new_id,
                        (v["name"].as_str().expect("name").into(), folder, digest),
                    );
                } else if roll < 70 {
                    // A rename onto a contested name: taken is a 409 and nothing changes.
                    let id = pick(&owned, next(owned.len() as u64)).expect("own file");
                    let folder = owned[&id].1.clone();
                    let r = hub
                        .req(
                            Method::PATCH,
                            &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}")),
                        )
                        .json(&json!({"name": name}))
                        .send()
                        .await
                        .expect("rename");
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.expect("json");
                    match status {
                        200 => {
                            let (old_name, _, digest) = owned.remove(&id).expect("owned");
                            if old_name != name {
                                deleted.insert(id);
                            }
                            let new_id = v["id"].as_str().expect("id").to_owned();
                            deleted.remove(&new_id);
                            owned.insert(new_id, (name.to_owned(), folder, digest));
                        }
                        409 => {}
                        _ => panic!("client {c} op {op}: contested rename {status} {v}"),
                    }
                } else if roll < 82 {
                    let id = pick(&owned, next(owned.len() as u64)).expect("own file");
                    let r = hub
                        .req(
                            Method::DELETE,
                            &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}")),
                        )
                        .send()
                        .await
                        .expect("delete");
                    assert_eq!(r.status(), 204, "client {c} op {op}: delete");
                    owned.remove(&id);
                    deleted.insert(id);
                } else if roll < 92 {
                    let id = pick(&owned, next(owned.len() as u64)).expect("own file");
                    let body = hub.download(acc, &id).await.expect("read own file");
                    assert_eq!(sha256_hex(&body), owned[&id].2, "client {c} op {op}: read");
                } else {
                    let (status, v) = get_json(
                        hub,
                        &hub.url(&format!(
                            "/v1/accounts/{acc}/storage/folders/{top}/contents?page_size=1000"
                        )),
                    )
                    .await;
                    assert_eq!(status, 200, "{v}");
                    assert!(
                        !v.to_string().contains(".switchyard-"),
                        "staging is never listed"
                    );
                }
            }
            (owned, deleted)
        }
    }));
    let results = bounded("the stress clients", per_client).await;
    let mut owned = Owned::new();
    let mut deleted = HashSet::new();
    for (o, d) in results {
        owned.extend(o);
        deleted.extend(d);
    }
    // A path one client deleted may since hold another client's newer file.
    deleted.retain(|id| !owned.contains_key(id));
    for (id, (name, _, digest)) in &owned {
        let body = hub
            .download(acc, id)
            .await
            .expect("acknowledged write readable");
        assert_eq!(&sha256_hex(&body), digest, "{name} holds its own bytes");
    }
    for id in &deleted {
        let r = hub
            .req(
                Method::GET,
                &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}")),
            )
            .send()
            .await
            .expect("stat");
        assert_eq!(r.status(), 404, "a deleted file is gone");
    }
    let expect = |folder: &str| -> HashSet<String> {
        owned
            .values()
            .filter(|(_, f, _)| f == folder)
            .map(|(n, _, _)| n.clone())
            .collect()
    };
    let mut top_names: HashSet<String> = names_in(hub, acc, &top).await.into_iter().collect();
    assert!(top_names.remove("sub"));
    assert_eq!(
        top_names,
        expect(&top),
        "the folder holds exactly the live files"
    );
    let sub_names: HashSet<String> = names_in(hub, acc, &sub).await.into_iter().collect();
    assert_eq!(
        sub_names,
        expect(&sub),
        "the subfolder holds exactly the live files"
    );
    (owned, deleted)
}

#[tokio::test]
async fn stress_mixed_operations_keep_every_acknowledged_write_on_fs() {
    let hub = TestHub::start().await.expect("hub");
    let (acc, root) = fs_account(&hub, "stress").await;
    let started = std::time::Instant::now();
    let (owned, deleted) = stress(&hub, acc, 16, 25).await;
    eprintln!(
        "fs stress: {} live files, {} deleted, {:?}",
        owned.len(),
        deleted.len(),
        started.elapsed()
    );
    assert_no_staging(&root);
}

#[tokio::test]
async fn stress_mixed_operations_keep_every_acknowledged_write_on_s3() {
    let hub = TestHub::start().await.expect("hub");
    let s3 = S3Server::start().await.expect("moto");
    let acc = s3_account(&hub, &s3, "stress").await;
    let started = std::time::Instant::now();
    let (owned, deleted) = stress(&hub, acc, 8, 15).await;
    eprintln!(
        "s3 stress: {} live files, {} deleted, {:?}",
        owned.len(),
        deleted.len(),
        started.elapsed()
    );
    let (keys, uploads) = raw_bucket(&s3, "stress").await;
    assert_eq!(uploads, 0, "no multipart upload left");
    assert!(keys.iter().all(|k| !k.contains(".switchyard-")), "{keys:?}");
    // Every raw object is a live file or a folder marker.
    let files = keys.iter().filter(|k| !k.ends_with('/')).count();
    assert_eq!(files, owned.len(), "{keys:?}");
}
