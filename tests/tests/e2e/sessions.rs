//! Upload sessions (`storage/multipart`) on real services: parts out of order, a part sent
//! again, the checks of each part, completion with a part missing, abort, expiry, and a hub
//! restarted between parts; a hub killed while completing (the next completion takes over
//! and lands one file) or after publishing (the file is adopted). S3 and Azure Blob sessions keep their parts as the provider's own
//! multipart uploads and blocks, never as staging objects.

use e2e::servers::{AzuriteServer, S3Server, SftpServer, WebDavServer};
use e2e::{pattern, sha256_hex, HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// The part size the test hubs ask for: S3's smallest.
const PART: usize = 5 * 1024 * 1024;

fn options() -> HubOptions {
    HubOptions {
        yaml: Some(format!(
            "storage:\n  upload_part_size_bytes: {PART}\n  upload_session_ttl_secs: 3600\n"
        )),
        ..HubOptions::default()
    }
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

fn url(hub: &TestHub, acc: i64, rest: &str) -> String {
    hub.url(&format!("/v1/accounts/{acc}/storage/multipart{rest}"))
}

async fn open(hub: &TestHub, acc: i64, name: &str, size: Option<usize>, overwrite: &str) -> Value {
    let mut body = json!({"parent_id": "root", "name": name});
    if let Some(n) = size {
        body["size"] = n.into();
    }
    let r = hub
        .req(
            Method::POST,
            &url(hub, acc, &format!("?overwrite={overwrite}")),
        )
        .json(&body)
        .send()
        .await
        .expect("open");
    assert_eq!(r.status(), 201);
    let v = json_of(r).await;
    assert!(
        v["id"]
            .as_i64()
            .is_some_and(|id| id > 0 && id < i64::from(i32::MAX)),
        "{v}"
    );
    assert!(v.get("type").is_none(), "{v}");
    v
}

async fn put(hub: &TestHub, acc: i64, id: i64, n: usize, bytes: &[u8]) -> reqwest::Response {
    hub.req(
        Method::PUT,
        &url(hub, acc, &format!("/{id}?part_number={n}")),
    )
    .header("Content-Type", "application/octet-stream")
    .body(bytes.to_vec())
    .send()
    .await
    .expect("part")
}

fn part(data: &[u8], n: usize) -> &[u8] {
    let start = (n - 1) * PART;
    &data[start..(start + PART).min(data.len())]
}

async fn download(hub: &TestHub, acc: i64, id: &str) -> Vec<u8> {
    let r = hub
        .req(
            Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}/contents")),
        )
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("bytes").to_vec()
}

/// The whole life of a session on one service: what every service must do alike.
async fn lifecycle(hub: &TestHub, acc: i64) {
    let data = pattern(2 * PART + 1000, 7);
    let s = open(hub, acc, "big.bin", Some(data.len()), "false").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(s["part_size"], PART);
    assert_eq!(s["parallel_uploads"], true);
    assert_eq!(s["parts_received"], json!([]));

    // Out of order, one of them twice (the first time with the wrong bytes): the last wins.
    for (n, bytes) in [
        (3, part(&data, 3).to_vec()),
        (1, vec![0u8; PART]),
        (1, part(&data, 1).to_vec()),
    ] {
        let r = put(hub, acc, id, n, &bytes).await;
        assert_eq!(r.status(), 200, "part {n}");
        assert_eq!(json_of(r).await["id"], id);
    }
    // The wrong number, the wrong length, a digest that does not match.
    let r = put(hub, acc, id, 4, part(&data, 3)).await;
    assert_eq!(r.status(), 400);
    let r = put(hub, acc, id, 2, &part(&data, 2)[..100]).await;
    assert_eq!(r.status(), 400);
    assert!(json_of(r).await["message"]
        .as_str()
        .expect("m")
        .contains(&PART.to_string()));
    let r = hub
        .req(Method::PUT, &url(hub, acc, &format!("/{id}?part_number=2")))
        .header("Content-MD5", "AAAAAAAAAAAAAAAAAAAAAA==")
        .body(part(&data, 2).to_vec())
        .send()
        .await
        .expect("md5");
    assert_eq!(r.status(), 400);
    let got = json_of(
        hub.req(Method::GET, &url(hub, acc, &format!("/{id}/")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(got["parts_received"], json!([1, 3]), "{got}");

    // Completing without part 2 names it, and the session stays open.
    let r = hub
        .req(Method::POST, &url(hub, acc, &format!("/{id}/complete")))
        .send()
        .await
        .expect("complete");
    assert_eq!(r.status(), 400);
    let v = json_of(r).await;
    assert!(v["message"].as_str().expect("m").contains("part 2"), "{v}");

    // Part 2 with its right digest, then complete with an empty JSON body (the Java SDK).
    use base64::Engine;
    use md5::Digest;
    let digest = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(part(&data, 2)));
    let r = hub
        .req(Method::PUT, &url(hub, acc, &format!("/{id}?part_number=2")))
        .header("Content-MD5", digest)
        .body(part(&data, 2).to_vec())
        .send()
        .await
        .expect("part 2");
    assert_eq!(r.status(), 200);
    let r = hub
        .req(Method::POST, &url(hub, acc, &format!("/{id}/complete")))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("complete");
    assert_eq!(r.status(), 200);
    let f = json_of(r).await;
    assert_eq!(f["type"], "file");
    assert_eq!(f["name"], "big.bin");
    assert_eq!(f["size"], data.len());
    let got = download(hub, acc, f["id"].as_str().expect("id")).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    // Done: no more parts, no second completion.
    assert_eq!(put(hub, acc, id, 1, part(&data, 1)).await.status(), 409);

    // Without overwrite a second session of the name lands beside it; with overwrite it
    // replaces. Sizes unknown: the last part may be short.
    for (overwrite, want) in [("False", "big (1).bin"), ("True", "big.bin")] {
        let s = open(hub, acc, "big.bin", None, overwrite).await;
        let id = s["id"].as_i64().expect("id");
        assert_eq!(put(hub, acc, id, 1, b"small").await.status(), 200);
        let r = hub
            .req(Method::POST, &url(hub, acc, &format!("/{id}/complete/")))
            .send()
            .await
            .expect("complete");
        assert_eq!(r.status(), 200);
        let f = json_of(r).await;
        assert_eq!(f["name"], want, "{f}");
        assert_eq!(
            download(hub, acc, f["id"].as_str().expect("id")).await,
            b"small"
        );
    }

    // Abort: 204, and the session is gone.
    let s = open(hub, acc, "gone.bin", Some(PART + 1), "false").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(put(hub, acc, id, 1, part(&data, 1)).await.status(), 200);
    let r = hub
        .req(Method::DELETE, &url(hub, acc, &format!("/{id}")))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 204);
    let r = hub
        .req(Method::GET, &url(hub, acc, &format!("/{id}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
}

/// What is left in the account's staging folder (an `fs` root).
fn staged(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root.join(".switchyard-partial"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_fs() {
    let hub = TestHub::start_with(options()).await.expect("hub");
    let acc = hub.creds.account_id;
    lifecycle(&hub, acc).await;
    // Nothing staged is left once every session completed or was aborted.
    let acc_root = fs_root(&hub).await;
    assert_eq!(staged(&acc_root), Vec::<String>::new());
    // Another application's key cannot see or feed the dev application's session.
    let s = open(&hub, acc, "mine.bin", None, "false").await;
    let id = s["id"].as_i64().expect("id");
    let r = hub
        .http
        .get(url(&hub, acc, &format!("/{id}")))
        .header(
            "Authorization",
            format!("APIKey {}", hub.other_app_key("other").await.expect("key")),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
}

/// The root folder of the dev account.
async fn fs_root(hub: &TestHub) -> std::path::PathBuf {
    let a = hub
        .state
        .account(hub.creds.application_id, hub.creds.account_id)
        .await
        .expect("account");
    match &a.settings {
        shared::storage::ServiceConfig::Fs(fs) => fs.root.clone().into(),
        _ => panic!("the dev account is fs"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_s3_are_native_multipart_uploads() {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("sessions").await.expect("bucket");
    let hub = TestHub::start_with(options()).await.expect("hub");
    let acc = hub
        .connect(
            "s3",
            json!({"bucket": "sessions", "endpoint": s3.endpoint(), "region": "us-east-1",
                   "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}),
        )
        .await
        .expect("connect")["id"]
        .as_i64()
        .expect("id");
    lifecycle(&hub, acc).await;
    // Nothing staged at the provider: the parts went to S3's own multipart uploads, and none
    // is left open.
    let listing = reqwest::get(format!("{}/sessions?uploads", s3.endpoint()))
        .await
        .expect("list uploads")
        .text()
        .await
        .expect("text");
    assert!(!listing.contains("<UploadId>"), "{listing}");
    let objects = reqwest::get(format!("{}/sessions?list-type=2", s3.endpoint()))
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(!objects.contains(".switchyard-partial"), "{objects}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_webdav() {
    let dav = WebDavServer::start().await.expect("rclone webdav");
    let hub = TestHub::start_with(options()).await.expect("hub");
    let acc = hub
        .connect(
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
        )
        .await
        .expect("connect")["id"]
        .as_i64()
        .expect("id");
    lifecycle(&hub, acc).await;
}

async fn connected(hub: &TestHub, service: &str, credentials: Value) -> i64 {
    hub.connect(service, credentials).await.expect("connect")["id"]
        .as_i64()
        .expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_sftp() {
    let sftp = SftpServer::start().await.expect("sshd");
    let hub = TestHub::start_with(options()).await.expect("hub");
    let acc = connected(
        &hub,
        "sftp",
        json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
               "root": sftp.dir()}),
    )
    .await;
    lifecycle(&hub, acc).await;
}

/// A Shared Key signed request to Azurite, `rest` relative to its account (`container/blob?…`):
/// the status and the body.
async fn azure(az: &AzuriteServer, method: Method, rest: &str, body: &[u8]) -> (u16, String) {
    let url = reqwest::Url::parse(&format!("{}/{rest}", az.endpoint())).expect("url");
    let mut headers: Vec<(String, String)> = Vec::new();
    if method == Method::PUT {
        headers.push(("content-length".into(), body.len().to_string()));
        headers.push(("x-ms-blob-type".into(), "BlockBlob".into()));
    }
    let auth = shared::storage::sign::SharedKey {
        account_name: az.account_name(),
        account_key: az.account_key(),
    }
    .sign(
        method.as_str(),
        &url,
        &headers,
        std::time::SystemTime::now().try_into().expect("now"),
    )
    .expect("sign");
    let mut req = reqwest::Client::new().request(method, url);
    for (k, v) in headers.iter().chain(&auth) {
        req = req.header(k.as_str(), v.as_str());
    }
    let r = req.body(body.to_vec()).send().await.expect("azurite");
    let status = r.status().as_u16();
    (status, r.text().await.expect("text"))
}

/// Whether an Azure container listing holds no staging object (the staging folder's own
/// marker may be there).
fn no_staged_parts(listing: &str) -> bool {
    listing
        .split("<Name>")
        .skip(1)
        .filter_map(|n| n.split_once("</Name>").map(|(name, _)| name))
        .all(|name| !name.starts_with(".switchyard-partial/") || name == ".switchyard-partial/")
}

/// The block ids (in order) and sizes of one list (`CommittedBlocks`, `UncommittedBlocks`) of a
/// `Get Block List` answer.
fn blocks_in(doc: &str, list: &str) -> Vec<(String, u64)> {
    let open = format!("<{list}>");
    let Some(start) = doc.find(&open) else {
        return Vec::new();
    };
    let rest = &doc[start + open.len()..];
    let section = &rest[..rest.find(&format!("</{list}>")).expect("closed list")];
    section
        .split("<Block>")
        .skip(1)
        .map(|b| {
            let text = |tag: &str| {
                let from = b.find(&format!("<{tag}>")).expect("tag") + tag.len() + 2;
                b[from..from + b[from..].find('<').expect("end")].to_owned()
            };
            (text("Name"), text("Size").parse().expect("size"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_azure_blob() {
    use shared::storage::azure_blocks::block_id;
    let az = AzuriteServer::start().await.expect("azurite");
    az.create_container("sessions").await.expect("container");
    let hub = TestHub::start_with(options()).await.expect("hub");
    let acc = connected(
        &hub,
        "azblob",
        json!({"container": "sessions", "endpoint": az.endpoint(),
               "account_name": az.account_name(), "account_key": az.account_key()}),
    )
    .await;
    lifecycle(&hub, acc).await;
    // The account says what blocks allow: up to 4000 MiB each (the API numbers 10,000 parts).
    let v = json_of(
        hub.req(
            Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}?retrieve_full=true")),
        )
        .send()
        .await
        .expect("account"),
    )
    .await;
    let caps = &v["properties"]["capabilities"];
    assert_eq!(
        caps["multipart_max_part_size"]["value"],
        4000u64 * 1024 * 1024,
        "{v}"
    );
    assert_eq!(caps["multipart_max_parts"]["value"], 10_000, "{v}");

    // The parts are blocks of the blob itself: nothing is staged, and before completion the
    // blob holds them uncommitted (no file is visible yet).
    let data = pattern(PART + 10, 11);
    let s = open(&hub, acc, "blocks.bin", Some(data.len()), "false").await;
    let id = s["id"].as_i64().expect("id");
    for n in [2, 1] {
        assert_eq!(put(&hub, acc, id, n, part(&data, n)).await.status(), 200);
    }
    let (status, listing) = azure(
        &az,
        Method::GET,
        "sessions?restype=container&comp=list&include=uncommittedblobs",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("<Name>blocks.bin</Name>"), "{listing}");
    assert!(no_staged_parts(&listing), "{listing}");
    let (status, _) = azure(&az, Method::GET, "sessions/blocks.bin", b"").await;
    assert_eq!(status, 404, "uncommitted blocks are no file");
    let (status, doc) = azure(
        &az,
        Method::GET,
        "sessions/blocks.bin?comp=blocklist&blocklisttype=all",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    let mut uncommitted = blocks_in(&doc, "UncommittedBlocks");
    uncommitted.sort();
    let mut want = vec![(block_id(id, 1), PART as u64), (block_id(id, 2), 10)];
    want.sort();
    assert_eq!(uncommitted, want, "{doc}");
    assert_eq!(blocks_in(&doc, "CommittedBlocks"), vec![], "{doc}");
    let r = hub
        .req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
        .send()
        .await
        .expect("complete");
    assert_eq!(r.status(), 200);
    let f = json_of(r).await;
    assert_eq!(f["name"], "blocks.bin");
    assert_eq!(f["size"], data.len());
    let (_, doc) = azure(
        &az,
        Method::GET,
        "sessions/blocks.bin?comp=blocklist&blocklisttype=all",
        b"",
    )
    .await;
    assert_eq!(
        blocks_in(&doc, "CommittedBlocks"),
        vec![(block_id(id, 1), PART as u64), (block_id(id, 2), 10)],
        "exactly the parts, in order: {doc}"
    );
    assert_eq!(blocks_in(&doc, "UncommittedBlocks"), vec![], "{doc}");
    let got = download(&hub, acc, f["id"].as_str().expect("id")).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&data));

    // An empty file: one empty part, no block, an empty block list.
    let s = open(&hub, acc, "empty.bin", Some(0), "false").await;
    let id = s["id"].as_i64().expect("id");
    let r = hub
        .req(
            Method::PUT,
            &url(&hub, acc, &format!("/{id}?part_number=1")),
        )
        .header("Content-Length", "0")
        .send()
        .await
        .expect("empty part");
    assert_eq!(r.status(), 200);
    let r = hub
        .req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
        .send()
        .await
        .expect("complete");
    assert_eq!(r.status(), 200);
    let f = json_of(r).await;
    assert_eq!(
        (f["name"].clone(), f["size"].clone()),
        (json!("empty.bin"), json!(0))
    );
    assert!(download(&hub, acc, f["id"].as_str().expect("id"))
        .await
        .is_empty());

    // Without overwrite, the name reserved at creation is never replaced: a blob another
    // client of the storage account writes there meanwhile makes the completion a 409, and
    // stays as it was. The session stays open until aborted, which gives the name back.
    let s = open(&hub, acc, "taken.bin", None, "false").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(s["name"], "taken.bin");
    assert_eq!(put(&hub, acc, id, 1, b"mine").await.status(), 200);
    let claimed = |claims: Vec<hub::db::ClaimRecord>| claims.iter().any(|c| c.key == "taken.bin");
    let claims = hub
        .state
        .db
        .live_claims(acc, 0, 1000)
        .await
        .expect("claims");
    assert!(claimed(claims), "the name is reserved");
    let (status, _) = azure(&az, Method::PUT, "sessions/taken.bin", b"theirs").await;
    assert_eq!(status, 201);
    let r = hub
        .req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
        .send()
        .await
        .expect("complete");
    let status = r.status();
    let v = json_of(r).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error_code"], "conflict", "{v}");
    let (_, content) = azure(&az, Method::GET, "sessions/taken.bin", b"").await;
    assert_eq!(content, "theirs");
    let got = json_of(
        hub.req(Method::GET, &url(&hub, acc, &format!("/{id}")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(got["parts_received"], json!([1]), "{got}");
    let r = hub
        .req(Method::DELETE, &url(&hub, acc, &format!("/{id}")))
        .send()
        .await
        .expect("abort");
    assert_eq!(r.status(), 204);
    let claims = hub
        .state
        .db
        .live_claims(acc, 0, 1000)
        .await
        .expect("claims");
    assert!(!claimed(claims), "the name claim is released");

    // The block list itself is conditional: a blob that appears between the check and the
    // commit is not replaced either (the race the check above cannot close).
    let a = hub
        .state
        .account(hub.creds.application_id, acc)
        .await
        .expect("account");
    let shared::storage::ServiceConfig::Azblob(settings) = &a.settings else {
        panic!("an Azure Blob account");
    };
    let path = shared::storage::StoragePath::parse("race.bin").expect("path");
    let blocks = shared::storage::azure_blocks::AzureBlocks::for_settings(
        settings,
        &path,
        a.connector.egress(),
    )
    .expect("blocks");
    let (status, _) = azure(&az, Method::PUT, "sessions/race.bin", b"first").await;
    assert_eq!(status, 201);
    let id = block_id(1, 1);
    let body = futures::stream::iter([Ok(bytes::Bytes::from_static(b"second"))]);
    blocks.put_block(&id, 6, body).await.expect("put block");
    let ids = vec![id];
    assert!(matches!(
        blocks.put_block_list(&ids, false).await,
        Err(shared::storage::StorageError::AlreadyExists)
    ));
    let (_, content) = azure(&az, Method::GET, "sessions/race.bin", b"").await;
    assert_eq!(content, "first");
    blocks.put_block_list(&ids, true).await.expect("overwrite");
    let (_, content) = azure(&az, Method::GET, "sessions/race.bin", b"").await;
    assert_eq!(content, "second");

    // Another upload committed to the name drops the session's uncommitted blocks: completion
    // names the part to send again rather than commit a list Azure no longer holds.
    let s = open(&hub, acc, "race.bin", None, "true").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(put(&hub, acc, id, 1, b"session").await.status(), 200);
    let other = block_id(id + 1, 1);
    let body = futures::stream::iter([Ok(bytes::Bytes::from_static(b"other"))]);
    blocks.put_block(&other, 5, body).await.expect("put block");
    blocks
        .put_block_list(&[other], true)
        .await
        .expect("commit another upload");
    let complete = || {
        hub.req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
            .send()
    };
    let r = complete().await.expect("complete");
    let status = r.status();
    let v = json_of(r).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().expect("m").contains("part 1"), "{v}");
    assert_eq!(put(&hub, acc, id, 1, b"session").await.status(), 200);
    let r = complete().await.expect("complete");
    assert_eq!(r.status(), 200);
    let (_, content) = azure(&az, Method::GET, "sessions/race.bin", b"").await;
    assert_eq!(content, "session");
}

/// A session outlives its hub: parts sent to one hub, the rest and the completion to the next
/// one on the same database. An expired session's parts are swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_hub_restart_and_expires() {
    let dir = tempfile::tempdir().expect("tmp");
    let opts = || HubOptions {
        dir: Some(dir.path().join("hub")),
        ..options()
    };
    let data = pattern(2 * PART + 10, 3);
    let hub = TestHub::start_with(opts()).await.expect("hub");
    let acc = hub.creds.account_id;
    let s = open(&hub, acc, "restart.bin", Some(data.len()), "false").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(put(&hub, acc, id, 2, part(&data, 2)).await.status(), 200);
    hub.stop().await.expect("stop");

    let hub = TestHub::start_with(opts()).await.expect("second hub");
    for n in [1, 3] {
        assert_eq!(put(&hub, acc, id, n, part(&data, n)).await.status(), 200);
    }
    let f = json_of(
        hub.req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
            .send()
            .await
            .expect("complete"),
    )
    .await;
    let got = download(&hub, acc, f["id"].as_str().expect("id")).await;
    assert_eq!(sha256_hex(&got), sha256_hex(&data));

    // Expiry: a session left with a part is swept with its part once its time is up.
    let root = fs_root(&hub).await;
    let s = open(&hub, acc, "left.bin", None, "false").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(put(&hub, acc, id, 1, b"left behind").await.status(), 200);
    assert_eq!(staged(&root).len(), 1);
    hub.state
        .db
        .backdate_session(id, 1)
        .await
        .expect("backdate");
    assert_eq!(hub::sessions::sweep(&hub.state).await.expect("sweep"), 1);
    assert_eq!(staged(&root), Vec::<String>::new());
    let r = hub
        .req(Method::GET, &url(&hub, acc, &format!("/{id}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
}

/// Sessions at or above `offload.threshold` keep their bytes off the hubs: each part PUT to a
/// hub answers 307 to a signed URL on a data spoke, which writes the part (S3: into the
/// session's multipart upload; WebDAV and Azure Blob: as a staging object) and has a hub record
/// it before it answers 200 with the session. A part URL is good once; a part failing its
/// Content-MD5 is not kept; the session completes on the hub as usual (on Azure Blob, the
/// staged parts become the blob's blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_sessions_send_their_parts_to_a_spoke() {
    use crate::spokes::{wait_healthy, SpokeProc};
    use base64::Engine as _;
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(format!(
            "storage:\n  upload_part_size_bytes: {PART}\n  upload_session_ttl_secs: 3600\n\
             offload:\n  threshold: {}\nnetwork:\n  heartbeat_ms: 250\n",
            2 * PART
        )),
        ..HubOptions::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let port = e2e::servers::free_port();
    let advertise = format!("127.0.0.1:{port}");
    let spoke =
        SpokeProc::start_full(&hub, root.path(), "edge", &["--advertise", &advertise], &[]).await;
    wait_healthy(&hub, spoke.id).await;
    e2e::assert_eventually!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok(),
        std::time::Duration::from_secs(10),
        "the data endpoint to listen"
    );
    let ca = std::fs::read(spoke.dir.join("ca.crt")).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let follow = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .build()
        .expect("client");
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("big").await.expect("bucket");
    let dav = WebDavServer::start().await.expect("webdav");
    let az = AzuriteServer::start().await.expect("azurite");
    az.create_container("big").await.expect("container");
    let accounts = [
        connected(
            &hub,
            "s3",
            json!({"bucket": "big", "endpoint": s3.endpoint(), "region": "us-east-1",
                   "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}),
        )
        .await,
        connected(
            &hub,
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
        )
        .await,
        connected(
            &hub,
            "azblob",
            json!({"container": "big", "endpoint": az.endpoint(),
                   "account_name": az.account_name(), "account_key": az.account_key()}),
        )
        .await,
    ];
    let md5 = |b: &[u8]| {
        use md5::Digest;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(b))
    };
    for acc in accounts {
        let data = pattern(2 * PART + 4096, acc as u64);
        let s = open(&hub, acc, "large.bin", Some(data.len()), "false").await;
        let id = s["id"].as_i64().expect("id");
        // The hub redirects (it does not read the part), the spoke takes it.
        let redirect = |n: usize| {
            let bytes = part(&data, n).to_vec();
            client
                .put(url(&hub, acc, &format!("/{id}?part_number={n}")))
                .header("Authorization", hub.apikey())
                .header("Content-MD5", md5(&bytes))
                .body(bytes)
                .send()
        };
        let location = |r: &reqwest::Response| {
            r.headers()
                .get("location")
                .expect("Location")
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        let mut first_url = String::new();
        for n in [3, 1, 2] {
            let r = redirect(n).await.expect("part to the hub");
            assert_eq!(r.status(), 307, "part {n} of account {acc}");
            let to = location(&r);
            assert!(
                to.starts_with(&format!("https://{advertise}/v1/data/")),
                "{to}"
            );
            let bytes = part(&data, n).to_vec();
            let r = client
                .put(&to)
                .header("Content-MD5", md5(&bytes))
                .body(bytes)
                .send()
                .await
                .expect("part to the spoke");
            assert_eq!(r.status(), 200, "account {acc} part {n}");
            let v = json_of(r).await;
            assert_eq!(v["id"], id, "{v}");
            assert!(
                v["parts_received"]
                    .as_array()
                    .expect("parts")
                    .contains(&json!(n)),
                "{v}"
            );
            if n == 3 {
                first_url = to;
            }
        }
        // A part URL is good once.
        let r = client
            .put(&first_url)
            .body(part(&data, 3).to_vec())
            .send()
            .await
            .expect("again");
        assert_eq!(r.status(), 410);
        // Part 1 again, with bytes that do not match their Content-MD5: refused, not kept (the
        // first part 1 stays).
        let r = redirect(1).await.expect("part to the hub");
        let to = location(&r);
        let mut wrong = part(&data, 1).to_vec();
        wrong[10] ^= 0xff;
        let r = client
            .put(&to)
            .header("Content-MD5", md5(part(&data, 1)))
            .body(wrong)
            .send()
            .await
            .expect("bad part");
        let status = r.status();
        let v = json_of(r).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error_code"], "invalid_parameters");
        // A part of the wrong length is refused before anything is written.
        let r = redirect(2).await.expect("part to the hub");
        let r = client
            .put(location(&r))
            .body(vec![0u8; 10])
            .send()
            .await
            .expect("short part");
        assert_eq!(r.status(), 400);
        let r = hub
            .req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
            .send()
            .await
            .expect("complete");
        assert_eq!(r.status(), 200);
        let f = json_of(r).await;
        // A large file downloads from the spoke too (307 followed, the network CA trusted).
        let r = follow
            .get(hub.url(&format!(
                "/v1/accounts/{acc}/storage/files/{}/contents",
                f["id"].as_str().expect("id")
            )))
            .header("Authorization", hub.apikey())
            .send()
            .await
            .expect("download");
        assert_eq!(r.status(), 200);
        let got = r.bytes().await.expect("bytes");
        assert_eq!(sha256_hex(&got), sha256_hex(&data), "account {acc}");
    }
    // Nothing left staged on WebDAV or Azure Blob, where the file is made of the blocks.
    let staged = dav.dir().join(".switchyard-partial");
    let left: Vec<_> = std::fs::read_dir(&staged)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let (status, listing) = azure(&az, Method::GET, "big?restype=container&comp=list", b"").await;
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("<Name>large.bin</Name>"), "{listing}");
    assert!(no_staged_parts(&listing), "{listing}");
    let (_, doc) = azure(&az, Method::GET, "big/large.bin?comp=blocklist", b"").await;
    assert_eq!(blocks_in(&doc, "CommittedBlocks").len(), 3, "{doc}");
}

/// 200 clients at once feed one session (every part once, 40 of them twice, all concurrently),
/// then two clients complete it at the same moment: every part is recorded, a part sent twice
/// leaves one staged object, exactly one completion makes the file (the other is told the
/// session is being or was completed), the file is byte-identical and nothing stays staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_parts_and_two_concurrent_completions() {
    const SMALL: usize = 64 * 1024;
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(format!(
            "storage:\n  upload_part_size_bytes: {SMALL}\n  upload_session_ttl_secs: 3600\n"
        )),
        ..HubOptions::default()
    })
    .await
    .expect("hub");
    let acc = hub.creds.account_id;
    let data = std::sync::Arc::new(pattern(200 * SMALL - 100, 9));
    let s = open(&hub, acc, "crowd.bin", Some(data.len()), "false").await;
    let id = s["id"].as_i64().expect("id");
    assert_eq!(s["part_size"], SMALL);
    let mut sends: Vec<usize> = (1..=200).collect();
    sends.extend((1..=200).step_by(5));
    let mut tasks = tokio::task::JoinSet::new();
    for n in sends {
        let (data, http, to, key) = (
            data.clone(),
            hub.http.clone(),
            url(&hub, acc, &format!("/{id}?part_number={n}")),
            hub.apikey(),
        );
        tasks.spawn(async move {
            let start = (n - 1) * SMALL;
            let bytes = data[start..(start + SMALL).min(data.len())].to_vec();
            let r = http
                .put(to)
                .header("Authorization", key)
                .body(bytes)
                .send()
                .await
                .expect("part");
            (n, r.status().as_u16())
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (n, status) = r.expect("task");
        assert_eq!(status, 200, "part {n}");
    }
    let v = json_of(
        hub.req(Method::GET, &url(&hub, acc, &format!("/{id}")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    let got: Vec<i64> = v["parts_received"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert_eq!(got, (1..=200).collect::<Vec<i64>>());
    // One staged object per part: the copies of a part sent twice were deleted.
    let root = fs_root(&hub).await;
    assert_eq!(staged(&root).len(), 200, "{:?}", staged(&root).len());
    let complete = || {
        hub.req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
            .send()
    };
    let (a, b) = tokio::join!(complete(), complete());
    let mut statuses = [
        a.expect("complete").status().as_u16(),
        b.expect("complete").status().as_u16(),
    ];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "one completion makes the file");
    assert_eq!(
        std::fs::read(root.join("crowd.bin")).expect("the file"),
        *data
    );
    assert!(!root.join("crowd (1).bin").exists(), "one file, not two");
    assert_eq!(staged(&root), Vec::<String>::new(), "nothing stays staged");
}

/// A hub that died after publishing a session's file but before recording it leaves the
/// session `completing`, its parts staged and recorded, and the file in place. The completion
/// that takes it over (after `storage.session_completion_stale_secs`) finds that file holding
/// exactly the parts' bytes and adopts it: no second file beside it; the parts are removed. A
/// file of the same size but other bytes at the name is someone else's: the session lands
/// beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_taken_over_adopts_the_file_its_dead_hub_published() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(format!(
            "storage:\n  upload_part_size_bytes: {PART}\n  session_completion_stale_secs: 1\n"
        )),
        ..HubOptions::default()
    })
    .await
    .expect("hub");
    let acc = hub.creds.account_id;
    let root = fs_root(&hub).await;
    let data = pattern(2 * PART + 7, 21);
    for (name, there, adopted) in [
        ("adopted.bin", data.clone(), true),
        ("foreign.bin", pattern(data.len(), 22), false),
    ] {
        let s = open(&hub, acc, name, Some(data.len()), "false").await;
        let id = s["id"].as_i64().expect("id");
        for n in 1..=3 {
            assert_eq!(put(&hub, acc, id, n, part(&data, n)).await.status(), 200);
        }
        // What the dead hub left: its published file, the session completing.
        std::fs::write(root.join(name), &there).expect("the published file");
        hub.state
            .db
            .backdate_completion(id, hub::state::now_ms() - 5_000)
            .await
            .expect("backdate");
        let r = hub
            .req(Method::POST, &url(&hub, acc, &format!("/{id}/complete")))
            .send()
            .await
            .expect("complete");
        assert_eq!(r.status(), 200);
        let f = json_of(r).await;
        let stem = name.trim_end_matches(".bin");
        let want = if adopted {
            name.to_owned()
        } else {
            format!("{stem} (1).bin")
        };
        assert_eq!(f["name"], want, "{f}");
        let got = download(&hub, acc, f["id"].as_str().expect("id")).await;
        assert_eq!(sha256_hex(&got), sha256_hex(&data));
        assert_eq!(staged(&root), Vec::<String>::new());
    }
    let list = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    // adopted.bin, foreign.bin and foreign (1).bin.
    assert_eq!(list["count"], 3, "{list}");
}

/// A hub killed (SIGKILL) while it writes a session's file on `fs`: after the restart, the
/// next completion takes the stale one over and lands exactly one file with the session's
/// bytes; the killed completion's half-written staging object is swept (its claim goes
/// stale) and the parts are removed, so nothing stays staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_killed_halfway_is_taken_over_after_a_restart() {
    use crate::hubs::{dev_credentials, HubProc};
    use e2e::HubApi;
    const PARTS: usize = 30;
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("hub.yaml");
    std::fs::write(
        &base,
        format!(
            "storage:\n  upload_part_size_bytes: {PART}\n  session_completion_stale_secs: 1\n  \
             staging_grace_secs: 1\n"
        ),
    )
    .expect("config");
    let data_dir = dir.path().join("data");
    let mut hub = HubProc::start(&data_dir, &base, &dir.path().join("a.log")).await;
    let acc = dev_credentials(&data_dir)["account_id"]
        .as_i64()
        .expect("account");
    let sessions = |rest: &str| hub_url(&hub, acc, rest);
    let data = pattern(PARTS * PART, 13);
    let s: Value = hub
        .req(Method::POST, &sessions("?overwrite=false"))
        .json(&json!({"parent_id": "root", "name": "killed.bin", "size": data.len()}))
        .send()
        .await
        .expect("open")
        .json()
        .await
        .expect("json");
    let id = s["id"].as_i64().expect("id");
    for n in 1..=PARTS {
        let r = hub
            .req(Method::PUT, &sessions(&format!("/{id}?part_number={n}")))
            .body(part(&data, n).to_vec())
            .send()
            .await
            .expect("part");
        assert_eq!(r.status(), 200);
    }
    let root = std::fs::read_dir(data_dir.join("files"))
        .expect("files")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join(".switchyard-partial").is_dir())
        .expect("the account's root");
    assert_eq!(staged(&root).len(), PARTS);
    // Complete, and kill the hub as soon as the file's own staging object appears.
    let completing = {
        let req = hub
            .req(Method::POST, &sessions(&format!("/{id}/complete")))
            .send();
        tokio::spawn(req)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while staged(&root).len() <= PARTS {
        assert!(
            std::time::Instant::now() < deadline,
            "the completion never started writing"
        );
        assert!(
            !completing.is_finished(),
            "the completion finished before the kill"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hub.kill().await;
    let _ = completing.await;
    assert!(
        !root.join("killed.bin").exists(),
        "the killed completion published"
    );

    let hub = HubProc::start(&data_dir, &base, &dir.path().join("b.log")).await;
    let sessions = |rest: &str| hub_url(&hub, acc, rest);
    // The killed completion holds the session until it is stale (1 s): 409 until then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = hub
            .req(Method::POST, &sessions(&format!("/{id}/complete")))
            .send()
            .await
            .expect("complete");
        if r.status() != 409 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status(), 200);
    let f: Value = r.json().await.expect("json");
    assert_eq!(f["name"], "killed.bin", "{f}");
    let got = std::fs::read(root.join("killed.bin")).expect("the file");
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    let names: Vec<String> = std::fs::read_dir(&root)
        .expect("root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".switchyard-partial")
        .collect();
    assert_eq!(names, vec!["killed.bin".to_owned()]);
    e2e::assert_eventually!(
        staged(&root).is_empty(),
        Duration::from_secs(30),
        "the killed completion's staging to be swept"
    );
}

fn hub_url(hub: &impl e2e::HubApi, acc: i64, rest: &str) -> String {
    hub.url(&format!("/v1/accounts/{acc}/storage/multipart{rest}"))
}
