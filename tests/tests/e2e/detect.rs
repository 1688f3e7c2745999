//! Detection of changes made outside the API (`hub::detect`), against real servers: files
//! created, changed, renamed and deleted directly in an `fs` root, in an S3 bucket (moto,
//! through the S3 API), on WebDAV (rclone) and on SFTP (OpenSSH) each give the right events
//! within a few polls (and on Azure Blob through Azurite); a change made through the API gives exactly one event; an account of
//! an application that does not collect gets no detector; two hubs on one PostgreSQL and one
//! Redis share the polls and each change is recorded once, also after one hub stopped; a poll
//! left by a dead hub is redone once its lease has run out.

use e2e::servers::{AzuriteServer, Postgres, RedisServer, S3Server, SftpServer, WebDavServer};
use e2e::{HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};
use shared::storage::{ConnectOptions, Connector, EntryKind, ServiceConfig, StoragePath};
use std::time::{Duration, Instant};

/// Polls every 200 ms; leases of 3 s so that a dead hub's poll is redone quickly.
const YAML: &str =
    "events:\n  detect:\n    interval_ms: 200\n    lease_ms: 3000\n    fs_settle_ms: 50\n";

async fn hub(pg: Option<&Postgres>) -> TestHub {
    TestHub::start_with(HubOptions {
        database_url: pg.map(|p| p.url()),
        yaml: Some(YAML.into()),
        ..Default::default()
    })
    .await
    .expect("hub")
}

async fn outside(service: &str, creds: Value, scratch: &std::path::Path) -> Connector {
    let cfg = ServiceConfig::from_parts(service, creds).expect("settings");
    Connector::connect(
        &cfg,
        &ConnectOptions {
            scratch_dir: scratch.to_owned(),
            egress: e2e::loopback_egress(),
            ..Default::default()
        },
    )
    .await
    .expect("connector")
}

fn p(s: &str) -> StoragePath {
    StoragePath::parse(s).expect("path")
}

/// An upload body.
type Body = std::pin::Pin<
    Box<futures::stream::Iter<std::vec::IntoIter<Result<bytes::Bytes, std::io::Error>>>>,
>;

fn body(text: &str) -> Body {
    Box::pin(futures::stream::iter(vec![Ok(bytes::Bytes::from(
        text.to_owned(),
    ))]))
}

/// When the account's detector last finished a poll (ms), waiting at most 30 s for one after
/// `after`.
pub(crate) async fn polled_after(hub: &TestHub, acc: i64, after: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = hub.state.db.detector_state(acc).await.expect("state");
        if let Some(t) = st.and_then(|s| s.last_poll_ms) {
            if t > after {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no detector poll of {acc} after {after} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a file into an `fs` root the way editors save: written beside the root, then
/// renamed into it, so that a listing sees it whole or not at all (a plain write is seen
/// empty by a listing that comes between its create and its write: an add, then an update).
fn put_file(root: &std::path::Path, name: &str, text: impl AsRef<[u8]>) {
    let tmp = root
        .parent()
        .expect("a root has a parent")
        .join(format!(".put-{}-{name}", std::process::id()));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, root.join(name)).expect("rename into the root");
}

fn now_ms() -> i64 {
    hub::state::now_ms()
}

/// Every event of `acc` after position `cursor` (`None`: all), and the new cursor.
pub(crate) async fn events_after(
    hub: &TestHub,
    acc: i64,
    cursor: Option<&str>,
) -> (Vec<Value>, String) {
    events_as(hub, &hub.apikey(), acc, cursor).await
}

/// [`events_after`] with the API key `auth` (another hub's application).
async fn events_as(
    hub: &TestHub,
    auth: &str,
    acc: i64,
    cursor: Option<&str>,
) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    let mut cursor = cursor.map(str::to_owned);
    for _ in 0..100 {
        let mut url = hub.url(&format!("/v1/accounts/{acc}/events?page_size=1000"));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = hub
            .http
            .get(&url)
            .header("Authorization", auth)
            .send()
            .await
            .expect("events");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        let objects = v["objects"].as_array().expect("objects").clone();
        cursor = v["cursor"].as_str().map(str::to_owned);
        if objects.is_empty() {
            return (out, cursor.unwrap_or_default());
        }
        out.extend(objects);
    }
    panic!("feed did not end");
}

/// `type path` (and `<- previous name` for renames) of each event.
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let mut s = format!(
                "{} {}",
                e["type"].as_str().unwrap_or("?"),
                e["metadata"]["path"].as_str().unwrap_or("?")
            );
            if let Some(prev) = e["previous"]["name"].as_str() {
                s.push_str(&format!(" <- {prev}"));
            }
            s
        })
        .collect()
}

/// Waits (bounded: 30 s) until the feed after `cursor` holds `want` (in any order), then
/// lets two more polls pass and checks nothing else arrived. Every detected event has no
/// client address and the action `detected`. Returns the new cursor.
pub(crate) async fn expect_events(hub: &TestHub, acc: i64, cursor: &str, want: &[&str]) -> String {
    expect_events_as(hub, &hub.apikey(), acc, cursor, want).await
}

async fn expect_events_as(
    hub: &TestHub,
    auth: &str,
    acc: i64,
    cursor: &str,
    want: &[&str],
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    loop {
        let (events, _) = events_as(hub, auth, acc, Some(cursor)).await;
        let mut got = summary(&events);
        got.sort();
        if got.len() >= want.len() {
            let t = now_ms();
            let t = polled_after(hub, acc, t).await;
            polled_after(hub, acc, t).await;
            let (events, next) = events_as(hub, auth, acc, Some(cursor)).await;
            let mut got = summary(&events);
            got.sort();
            assert_eq!(got, want, "events: {events:#?}");
            for e in &events {
                if e["action"] == "detected" {
                    assert!(e["ip"].is_null() && e["user_id"].is_null(), "{e}");
                }
            }
            return next;
        }
        assert!(
            Instant::now() < deadline,
            "expected {want:?} within 30 s, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(hub: &TestHub, service: &str, creds: Value) -> i64 {
    hub.connect(service, creds).await.expect("connect")["id"]
        .as_i64()
        .expect("id")
}

async fn api_upload(hub: &TestHub, acc: i64, name: &str, text: &str) -> Value {
    let meta = json!({ "name": name, "parent_id": "root" }).to_string();
    let r = hub
        .req(
            Method::POST,
            &hub.url(&format!("/v1/accounts/{acc}/storage/files?overwrite=true")),
        )
        .header("X-Kloudless-Metadata", meta)
        .body(text.to_owned())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

/// Runs `f` while no poll of `acc` runs: takes the next poll's lease as the test, then gives
/// it back due at once.
async fn between_polls<T>(hub: &TestHub, acc: i64, f: impl std::future::Future<Output = T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        let now = now_ms();
        if let Some(l) = hub
            .state
            .db
            .start_poll(acc, "test#1", now, now + 10_000)
            .await
            .expect("start")
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no poll of {acc} came due");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let out = f.await;
    hub.state
        .db
        .end_poll(&lease, now_ms(), now_ms())
        .await
        .expect("end");
    out
}

/// The changes every service goes through: made with `c` (the provider's own protocol),
/// then one through the API. `renames`: whether the service gives renames (else they are a
/// delete and an add); `folders`: whether folders are objects of their own.
async fn scenario(hub: &TestHub, acc: i64, c: &Connector, renames: bool, folders: bool) {
    let (_, cursor) = events_after(hub, acc, None).await;
    // The first poll stores the snapshot and records nothing.
    c.write(&p("before.txt"), body("there before"))
        .await
        .expect("write");
    let t = polled_after(hub, acc, 0).await;
    polled_after(hub, acc, t).await;

    c.write(&p("a.txt"), body("one")).await.expect("write");
    c.create_folder(&p("d")).await.expect("folder");
    c.write(&p("d/b.txt"), body("bee")).await.expect("write");
    let mut want = vec!["add /a.txt", "add /d/b.txt"];
    if folders {
        want.push("add /d");
    }
    let cursor = expect_events(hub, acc, &cursor, &want).await;

    c.write(&p("a.txt"), body("one, changed"))
        .await
        .expect("write");
    let cursor = expect_events(hub, acc, &cursor, &["update /a.txt"]).await;

    // Object stores rename by copy + delete: a listing between the two would see an add and
    // then a delete. The test holds the detector's lease while it renames.
    between_polls(
        hub,
        acc,
        c.rename(&p("a.txt"), &p("c.txt"), EntryKind::File),
    )
    .await
    .expect("rename");
    let want: &[&str] = if renames {
        &["rename /c.txt <- a.txt"]
    } else {
        &["delete /a.txt", "add /c.txt"]
    };
    let cursor = expect_events(hub, acc, &cursor, want).await;

    between_polls(
        hub,
        acc,
        c.rename(&p("c.txt"), &p("d/c.txt"), EntryKind::File),
    )
    .await
    .expect("move");
    let want: &[&str] = if renames {
        &["move /d/c.txt <- c.txt"]
    } else {
        &["delete /c.txt", "add /d/c.txt"]
    };
    let cursor = expect_events(hub, acc, &cursor, want).await;

    c.delete_file(&p("d/b.txt")).await.expect("delete");
    let cursor = expect_events(hub, acc, &cursor, &["delete /d/b.txt"]).await;

    // Through the API: exactly one event, the API's own (with the client's address), however
    // many polls see the file afterwards; then a replace of it through the API too. The upload
    // is held between polls: a poll that lists the file after the provider has it and before
    // the API records it is the other order (the detector's event stands, the API's is the
    // echo), which is what `Echo` promises but not what this test checks.
    between_polls(hub, acc, api_upload(hub, acc, "api.txt", "from the api")).await;
    let cursor = expect_events(hub, acc, &cursor, &["add /api.txt"]).await;
    let (all, _) = events_after(hub, acc, None).await;
    let api: Vec<&Value> = all
        .iter()
        .filter(|e| e["metadata"]["path"] == "/api.txt")
        .collect();
    assert_eq!(api.len(), 1, "{all:#?}");
    assert_ne!(api[0]["action"], "detected", "{:#}", api[0]);
    api_upload(hub, acc, "api.txt", "from the api, again and longer").await;
    expect_events(hub, acc, &cursor, &["update /api.txt"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outside_changes() {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("detect").await.expect("bucket");
    let creds = json!({"bucket": "detect", "endpoint": s3.endpoint(), "region": "us-east-1",
        "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()});
    let hub = hub(None).await;
    let acc = connect(&hub, "s3", creds.clone()).await;
    let scratch = tempfile::tempdir().expect("tmp");
    let c = outside("s3", creds, scratch.path()).await;
    scenario(&hub, acc, &c, true, true).await;
}

/// Azure Blob: a copy gets a new ETag, so a rename is a delete and an add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azblob_outside_changes() {
    let az = AzuriteServer::start().await.expect("azurite");
    az.create_container("detect").await.expect("container");
    let creds = json!({"container": "detect", "endpoint": az.endpoint(),
        "account_name": az.account_name(), "account_key": az.account_key()});
    let hub = hub(None).await;
    let acc = connect(&hub, "azblob", creds.clone()).await;
    let scratch = tempfile::tempdir().expect("tmp");
    let c = outside("azblob", creds, scratch.path()).await;
    scenario(&hub, acc, &c, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_outside_changes() {
    let hub = hub(None).await;
    let root = hub.new_fs_root("detect").expect("root");
    let acc = connect(&hub, "fs", json!({ "root": root })).await;
    let c = outside("fs", json!({ "root": root }), &root).await;
    scenario(&hub, acc, &c, true, true).await;
    // Straight on the disk, as any program would: a burst of writes is a few polls, and a
    // renamed folder is one rename (its contents move with it).
    let (_, cursor) = events_after(&hub, acc, None).await;
    for i in 0..50 {
        put_file(&root, &format!("burst-{i}.txt"), format!("{i}"));
    }
    std::fs::rename(root.join("d"), root.join("e")).expect("rename folder");
    let mut want: Vec<String> = (0..50).map(|i| format!("add /burst-{i}.txt")).collect();
    want.push("rename /e <- d".into());
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    expect_events(&hub, acc, &cursor, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_outside_changes() {
    let dav = WebDavServer::start().await.expect("rclone webdav");
    let creds =
        json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()});
    let hub = hub(None).await;
    let acc = connect(&hub, "webdav", creds.clone()).await;
    let scratch = tempfile::tempdir().expect("tmp");
    let c = outside("webdav", creds, scratch.path()).await;
    scenario(&hub, acc, &c, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_outside_changes() {
    let sftp = SftpServer::start().await.expect("sshd");
    let creds = json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
        "root": sftp.dir()});
    let hub = hub(None).await;
    let acc = connect(&hub, "sftp", creds.clone()).await;
    let scratch = tempfile::tempdir().expect("tmp");
    let c = outside("sftp", creds, scratch.path()).await;
    scenario(&hub, acc, &c, false, true).await;
}

/// An application that does not collect events gets no detector and no events; turning
/// collection on starts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_detector_without_collection() {
    let hub = hub(None).await;
    let meta = hub.meta();
    let app: Value = hub
        .http
        .post(hub.url("/v1/meta/applications"))
        .header("Authorization", &meta)
        .json(&json!({"name": "quiet"}))
        .send()
        .await
        .expect("app")
        .json()
        .await
        .expect("json");
    let app_id = app["id"].as_i64().expect("id");
    let key: Value = hub
        .http
        .post(hub.url(&format!("/v1/meta/applications/{app_id}/apikeys")))
        .header("Authorization", &meta)
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let other = format!("APIKey {}", key["key"].as_str().expect("key"));
    let root = hub.fs_root_of(app_id, "quiet").expect("root");
    let acc: Value = hub
        .http
        .post(hub.url("/v1/accounts"))
        .header("Authorization", &other)
        .json(&json!({"service": "fs", "account": "quiet", "credentials": {"root": root}}))
        .send()
        .await
        .expect("connect")
        .json()
        .await
        .expect("json");
    let qid = acc["id"].as_i64().expect("id");
    put_file(&root, "outside.txt", "x");
    // The dev account's detector polls twice meanwhile: the manager ran several rounds.
    let dev = hub.creds.account_id;
    let t = polled_after(&hub, dev, 0).await;
    let t = polled_after(&hub, dev, t).await;
    polled_after(&hub, dev, t).await;
    assert_eq!(hub.state.db.detector_state(qid).await.expect("state"), None);
    let r: Value = hub
        .http
        .get(hub.url(&format!("/v1/accounts/{qid}/events")))
        .header("Authorization", &other)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(r["objects"], json!([]), "{r}");
    // Collection on: a detector starts (its first poll is the baseline).
    let s = hub
        .http
        .patch(hub.url(&format!("/v1/meta/applications/{app_id}")))
        .header("Authorization", &meta)
        .json(&json!({"collect_events": true}))
        .send()
        .await
        .expect("patch")
        .status();
    assert_eq!(s, 200);
    polled_after(&hub, qid, 0).await;
}

/// Two hubs on one PostgreSQL and one Redis, B without a scheduler: the polls A hands to the
/// Redis stream are run by both hubs; each outside change is recorded once; with one
/// hub stopped the other polls every account and records the next changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_spread_over_hubs_through_redis() {
    let redis = RedisServer::start().await.expect("redis");
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    let with_redis = format!("{YAML}redis:\n  url: \"{}\"\n", redis.url());
    let a = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        dir: Some(dir.path().join("a")),
        yaml: Some(with_redis.clone()),
        ..Default::default()
    })
    .await
    .expect("hub a");
    // Hub B shares A's master key (it opens A's accounts) and allows A's `fs` roots. It hands
    // nothing to the queue: every poll it runs came from A through Redis.
    let b_yaml = format!(
        "{YAML}    schedule: false
{}",
        with_redis.trim_start_matches(YAML)
    );
    let b = a
        .start_peer(pg.url(), dir.path().join("b"), &b_yaml)
        .await
        .expect("hub b");
    let mut accs = Vec::new();
    for i in 0..8 {
        let root = a.new_fs_root(&format!("spread{i}")).expect("root");
        let acc = connect(&a, "fs", json!({ "root": root })).await;
        accs.push((acc, root));
    }
    let mut cursors = Vec::new();
    for (acc, _) in &accs {
        let t = polled_after(&a, *acc, 0).await;
        polled_after(&a, *acc, t).await;
        cursors.push(events_after(&a, *acc, None).await.1);
    }
    // Who ran the polls, sampled for a few seconds: both hubs.
    let mut holders = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while holders.len() < 2 && Instant::now() < deadline {
        for (acc, _) in &accs {
            let st = a
                .state
                .db
                .detector_state(*acc)
                .await
                .expect("s")
                .expect("row");
            holders.extend(st.last_holder);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holders.len(), 2, "polls ran on {holders:?} only");
    let pushed = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("switchyard_hub_detect_queue_pushed_total "))
            .map(|v| v.parse::<f64>().expect("number"))
    };
    assert!(pushed(&a.state.metrics.render()).is_some_and(|n| n > 0.0));
    assert_eq!(pushed(&b.state.metrics.render()), Some(0.0));

    for (acc, root) in &accs {
        put_file(root, &format!("f{acc}.txt"), "x");
    }
    for ((acc, _), cursor) in accs.iter().zip(cursors.iter_mut()) {
        *cursor = expect_events(&a, *acc, cursor, &[&format!("add /f{acc}.txt")]).await;
    }

    // B stops (its polls running are aborted; their leases run out): A polls every account.
    let auth = a.apikey();
    let b_holder = hub::transfers::holder(&b.state).to_string();
    b.stop().await.expect("stop");
    let stopped_at = now_ms();
    for (acc, root) in &accs {
        put_file(root, "after.txt", "x");
        polled_after(&a, *acc, stopped_at).await;
    }
    for ((acc, _), cursor) in accs.iter().zip(cursors.iter()) {
        expect_events_as(&a, &auth, *acc, cursor, &["add /after.txt"]).await;
        let st = a
            .state
            .db
            .detector_state(*acc)
            .await
            .expect("s")
            .expect("row");
        assert_ne!(st.last_holder.as_deref(), Some(b_holder.as_str()));
    }
}

/// A hub that took a poll and died holds the account's lease until it runs out: no other hub
/// polls meanwhile, and then one redoes the poll and records the change it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_left_by_a_dead_hub_is_redone_after_its_lease() {
    let hub = hub(None).await;
    let root = hub.new_fs_root("dead").expect("root");
    let acc = connect(&hub, "fs", json!({ "root": root })).await;
    let t = polled_after(&hub, acc, 0).await;
    polled_after(&hub, acc, t).await;
    let (_, cursor) = events_after(&hub, acc, None).await;
    // Take the next poll as a hub that then dies: a lease of 2 s, never renewed or ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    let until = loop {
        let now = now_ms();
        let until = now + 2000;
        if hub
            .state
            .db
            .start_poll(acc, "dead-hub#1", now, until)
            .await
            .expect("start")
            .is_some()
        {
            break until;
        }
        assert!(Instant::now() < deadline, "the poll never came due");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let before = hub
        .state
        .db
        .detector_state(acc)
        .await
        .expect("s")
        .and_then(|s| s.last_poll_ms)
        .expect("polled");
    put_file(&root, "late.txt", "x");
    let t = polled_after(&hub, acc, before).await;
    assert!(
        t >= until,
        "a poll ended at {t} while the dead hub's lease ran until {until}"
    );
    expect_events(&hub, acc, &cursor, &["add /late.txt"]).await;
    let st = hub
        .state
        .db
        .detector_state(acc)
        .await
        .expect("s")
        .expect("row");
    assert_ne!(st.last_holder.as_deref(), Some("dead-hub#1"));
}

/// A poll lists while the API renames a folder and then deletes it: its listing saw the
/// rename's result, but its record comes after the delete committed. The listing's state is
/// the one the API's rename left (the latest event before the listing started), so nothing is
/// recorded; a listing that started after the delete and still sees the folder (made again
/// from outside) records it.
#[tokio::test]
async fn a_state_the_api_left_before_changing_it_again_is_an_echo() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some("events:\n  detect:\n    enabled: false\n".into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let acc = hub.creds.account_id;
    let head = || hub.state.db.stream_head(acc);
    let call = |method: Method, path: String, body: Option<Value>| {
        let r = hub.req(method, &hub.url(&path));
        async move {
            let r = match body {
                Some(b) => r.json(&b),
                None => r,
            };
            let r = r.send().await.expect("call");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let h0 = head().await.expect("head");
    let (s, docs) = call(
        Method::POST,
        format!("/v1/accounts/{acc}/storage/folders"),
        Some(json!({"parent_id": "root", "name": "docs"})),
    )
    .await;
    assert_eq!(s, 201, "{docs}");
    let id = docs["id"].as_str().expect("id");
    let (s, docs2) = call(
        Method::PATCH,
        format!("/v1/accounts/{acc}/storage/folders/{id}"),
        Some(json!({"name": "docs2"})),
    )
    .await;
    assert_eq!(s, 200, "{docs2}");
    let listed = head().await.expect("head");
    let id2 = docs2["id"].as_str().expect("id");
    let (s, _) = call(
        Method::DELETE,
        format!("/v1/accounts/{acc}/storage/folders/{id2}?recursive=true"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (from, to) = (p("docs"), p("docs2"));
    let entry = shared::storage::Entry {
        path: to.clone(),
        kind: EntryKind::Folder,
        size: 0,
        modified: None,
        etag: None,
        content_type: None,
    };
    let detected = |listed_seq: i64| {
        let mut e = hub::events::new_event(
            &hub.state.ids,
            &hub::events::Change {
                account: acc,
                kind: hub::events::rename_or_move(&from, &to),
                action: "detected",
                entry: &entry,
                from: Some(&from),
                dedupe_key: None,
            },
        );
        e.origin = "detect";
        e.ip = None;
        e.user_id = None;
        e.echo = hub::db::Echo::Detected {
            after_seq: h0,
            listed_seq,
        };
        e
    };
    assert!(
        !hub::events::record_event(&hub.state, &detected(listed)).await,
        "the rename the API made was recorded again"
    );
    let after_delete = head().await.expect("head");
    assert!(
        hub::events::record_event(&hub.state, &detected(after_delete)).await,
        "a state seen after the API's delete is a change of its own"
    );
}

/// A file the API added, changed from outside before the detector listed it: the detector
/// finds it missing from its snapshot, but the feed already told its readers the file was
/// added, so the change is an `update` of it, not a second `add`.
#[tokio::test]
async fn an_outside_change_to_a_file_the_api_added_is_an_update() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some("events:\n  detect:\n    enabled: false\n".into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let acc = hub.creds.account_id;
    let before = hub.state.db.stream_head(acc).await.expect("head");
    let added = api_upload(&hub, acc, "both.txt", "from the api").await;
    let listed = hub.state.db.stream_head(acc).await.expect("head");
    let entry = shared::storage::Entry {
        path: p("both.txt"),
        kind: EntryKind::File,
        size: 30,
        modified: Some(now_ms() + 5),
        etag: Some("\"changed-outside\"".into()),
        content_type: None,
    };
    let mut e = hub::events::new_event(
        &hub.state.ids,
        &hub::events::Change {
            account: acc,
            kind: hub::events::kind::ADD,
            action: "detected",
            entry: &entry,
            from: None,
            dedupe_key: None,
        },
    );
    e.origin = "detect";
    e.ip = None;
    e.echo = hub::db::Echo::Detected {
        after_seq: before,
        listed_seq: listed,
    };
    assert!(hub::events::record_event(&hub.state, &e).await);
    let (all, _) = events_after(&hub, acc, None).await;
    let kinds: Vec<(&str, &str)> = all
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("add", "upload"), ("update", "detected")],
        "{all:#?}"
    );
    assert_eq!(all[1]["id"], added["id"]);

    // A file the API deleted since, made again from outside, is an addition.
    let id = added["id"].as_str().expect("id");
    let r = hub
        .req(
            Method::DELETE,
            &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}")),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let mut again = e;
    again.echo = hub::db::Echo::Detected {
        after_seq: before,
        listed_seq: hub.state.db.stream_head(acc).await.expect("head"),
    };
    assert!(hub::events::record_event(&hub.state, &again).await);
    let (all, _) = events_after(&hub, acc, None).await;
    assert_eq!(all.last().expect("event")["type"], "add", "{all:#?}");
}
