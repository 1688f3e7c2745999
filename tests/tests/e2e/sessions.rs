//! Upload sessions (`storage/multipart`) on real services: parts out of order, a part sent
//! again, the checks of each part, completion with a part missing, abort, expiry, and a hub
//! restarted between parts.

use e2e::servers::{AzuriteServer, S3Server, SftpServer, WebDavServer};
use e2e::{pattern, sha256_hex, HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_azure_blob() {
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
/// session's multipart upload; WebDAV: as a staging object) and has a hub record it before it
/// answers 200 with the session. A part URL is good once; a part failing its Content-MD5 is
/// not kept; the session completes on the hub as usual.
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
    // Nothing left staged on WebDAV.
    let staged = dav.dir().join(".switchyard-partial");
    let left: Vec<_> = std::fs::read_dir(&staged)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
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
