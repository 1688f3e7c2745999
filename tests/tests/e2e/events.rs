//! The per-account event feed (`/v1/accounts/{acc}/events`), on SQLite and on a real
//! PostgreSQL: one event per change made through the API (upload, overwrite, replace, folder
//! creation, rename, move, copy, delete, a copy between accounts landing, a move between
//! accounts), paged by cursor one at a time, `latest`, `after-auth`, retention and
//! `cursor_expired`, applications that do not collect, tenant isolation, forged cursors, and
//! 200 concurrent uploads read while they land.

use e2e::call;
use e2e::servers::Postgres;
use e2e::{HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A hub on SQLite (`None`) or on a fresh PostgreSQL (kept alive by the returned server).
async fn hub_on(postgres: bool) -> (TestHub, Option<Postgres>) {
    if !postgres {
        return (TestHub::start().await.expect("hub"), None);
    }
    let pg = Postgres::start().await.expect("postgres");
    let hub = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        ..Default::default()
    })
    .await
    .expect("hub on postgres");
    (hub, Some(pg))
}

/// One page of `acc`'s feed.
async fn page(
    hub: &TestHub,
    auth: &str,
    acc: &str,
    cursor: Option<&str>,
    size: u32,
) -> (u16, Value) {
    let mut path = format!("/v1/accounts/{acc}/events?page_size={size}");
    if let Some(c) = cursor {
        path.push_str(&format!("&cursor={c}"));
    }
    call(hub, Method::GET, auth, &path, None).await
}

async fn latest(hub: &TestHub, auth: &str, acc: &str) -> String {
    let (s, v) = call(
        hub,
        Method::GET,
        auth,
        &format!("/v1/accounts/{acc}/events/latest"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["cursor"].as_str().expect("cursor").to_owned()
}

/// Every event after `cursor`, `size` per page, until an empty page (at most 1000 pages);
/// checks each page's shape and that cursors never repeat. Returns the events and the last
/// cursor.
async fn drain(
    hub: &TestHub,
    auth: &str,
    acc: &str,
    cursor: Option<&str>,
    size: u32,
) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    let mut cursor = cursor.map(str::to_owned);
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let (s, v) = page(hub, auth, acc, cursor.as_deref(), size).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["type"], "object_list", "{v}");
        let objects = v["objects"].as_array().expect("objects").clone();
        assert_eq!(v["count"].as_u64(), Some(objects.len() as u64), "{v}");
        assert!(objects.len() <= size as usize, "{v}");
        let next = v["cursor"].as_str().expect("cursor").to_owned();
        if objects.is_empty() {
            assert_eq!(v["remaining"], 0, "{v}");
            if let Some(c) = &cursor {
                assert_eq!(&next, c, "an empty page keeps the cursor");
            }
            return (out, next);
        }
        assert!(seen.insert(next.clone()), "cursor {next} returned twice");
        out.extend(objects);
        cursor = Some(next);
    }
    panic!("the feed did not end within 1000 pages");
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn upload(hub: &TestHub, acc: i64, parent: &str, name: &str, overwrite: bool) -> Value {
    let meta = json!({ "name": name, "parent_id": parent }).to_string();
    let r = hub
        .req(
            Method::POST,
            &hub.url(&format!(
                "/v1/accounts/{acc}/storage/files?overwrite={overwrite}"
            )),
        )
        .header("X-Kloudless-Metadata", meta)
        .body(format!("content of {name}"))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

/// Every kind of change through the API gives exactly one event, in order, with the object
/// as the API returned it; paged one at a time; `latest`; the start of the feed.
async fn every_change_once(postgres: bool) {
    let (hub, _pg) = hub_on(postgres).await;
    let key = hub.apikey();
    let acc = hub.creds.account_id;
    let a = acc.to_string();
    let start = latest(&hub, &key, &a).await;

    let (s, folder) = call(
        &hub,
        Method::POST,
        &key,
        &format!("/v1/accounts/{acc}/storage/folders"),
        Some(json!({"parent_id": "root", "name": "docs"})),
    )
    .await;
    assert_eq!(s, 201, "{folder}");
    // Asking again for an existing folder changes nothing: no event.
    let (s, _) = call(
        &hub,
        Method::POST,
        &key,
        &format!("/v1/accounts/{acc}/storage/folders"),
        Some(json!({"parent_id": "root", "name": "docs"})),
    )
    .await;
    assert_eq!(s, 200);
    let f1 = upload(&hub, acc, "root", "a.txt", false).await;
    let f1b = upload(&hub, acc, "root", "a.txt", true).await;
    assert_eq!(f1b["id"], f1["id"]);
    let f1id = f1["id"].as_str().expect("id");
    let r = hub
        .req(
            Method::PUT,
            &hub.url(&format!("/v1/accounts/{acc}/storage/files/{f1id}")),
        )
        .body("replaced")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let (s, renamed) = call(
        &hub,
        Method::PATCH,
        &key,
        &format!("/v1/accounts/{acc}/storage/files/{f1id}"),
        Some(json!({"name": "b.txt"})),
    )
    .await;
    assert_eq!(s, 200, "{renamed}");
    let rid = renamed["id"].as_str().expect("id");
    let (s, moved) = call(
        &hub,
        Method::PATCH,
        &key,
        &format!("/v1/accounts/{acc}/storage/files/{rid}"),
        Some(json!({"parent_id": folder["id"]})),
    )
    .await;
    assert_eq!(s, 200, "{moved}");
    let mid = moved["id"].as_str().expect("id");
    let (s, copied) = call(
        &hub,
        Method::POST,
        &key,
        &format!("/v1/accounts/{acc}/storage/files/{mid}/copy"),
        Some(json!({"parent_id": "root", "name": "c.txt"})),
    )
    .await;
    assert_eq!(s, 201, "{copied}");
    let cid = copied["id"].as_str().expect("id");
    let (s, _) = call(
        &hub,
        Method::DELETE,
        &key,
        &format!("/v1/accounts/{acc}/storage/files/{cid}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let fid = folder["id"].as_str().expect("id");
    let (s, folder2) = call(
        &hub,
        Method::PATCH,
        &key,
        &format!("/v1/accounts/{acc}/storage/folders/{fid}"),
        Some(json!({"name": "docs2"})),
    )
    .await;
    assert_eq!(s, 200, "{folder2}");
    let f2id = folder2["id"].as_str().expect("id");
    let (s, _) = call(
        &hub,
        Method::DELETE,
        &key,
        &format!("/v1/accounts/{acc}/storage/folders/{f2id}?recursive=true"),
        None,
    )
    .await;
    assert_eq!(s, 204);

    let (events, end) = drain(&hub, &key, &a, Some(&start), 1).await;
    assert_eq!(
        kinds(&events),
        [
            "add", "add", "update", "update", "rename", "move", "copy", "delete", "rename",
            "delete"
        ],
        "{events:#?}"
    );
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, [fid, f1id, f1id, f1id, rid, mid, cid, cid, f2id, f2id]);
    for e in &events {
        assert_eq!(e["account"], acc, "{e}");
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
        assert!(e["modified"].as_str().is_some_and(|m| m.len() >= 20), "{e}");
    }
    // The metadata is the object as the API answered it.
    assert_eq!(events[1]["metadata"], f1);
    assert_eq!(events[4]["metadata"], renamed);
    assert_eq!(events[5]["metadata"], moved);
    assert_eq!(events[6]["metadata"], copied);
    assert_eq!(events[0]["metadata"]["type"], "folder");
    assert_eq!(events[7]["metadata"]["name"], "c.txt");
    // Renames and moves say where the object was.
    assert_eq!(events[4]["previous"]["id"], f1id);
    assert_eq!(events[4]["previous"]["name"], "a.txt");
    assert_eq!(events[4]["previous"]["parent_id"], "root");
    assert_eq!(events[5]["previous"]["id"], rid);
    assert_eq!(events[5]["previous"]["parent_id"], "root");
    assert_eq!(events[8]["previous"]["name"], "docs");
    assert!(events[0].get("previous").is_none());
    // Latest is where the iteration ended; no cursor starts at the oldest kept event.
    assert_eq!(latest(&hub, &key, &a).await, end);
    let (all, _) = drain(&hub, &key, &a, None, 1000).await;
    assert_eq!(all, events);
    let (s, first) = page(&hub, &key, &a, None, 3).await;
    assert_eq!(s, 200);
    assert_eq!(first["count"], 3);
    assert_eq!(first["remaining"], 7, "{first}");
    // The numeric zero some clients start from means "from the start" too.
    let (_, zero) = page(&hub, &key, &a, Some("0"), 3).await;
    assert_eq!(zero["objects"], first["objects"]);
}

#[tokio::test]
async fn every_change_once_sqlite() {
    every_change_once(false).await;
}

#[tokio::test]
async fn every_change_once_postgres() {
    every_change_once(true).await;
}

/// Copies and moves between accounts: the destination's feed gets the file, the source's
/// feed gets only what left it.
async fn between_accounts(postgres: bool) {
    let (hub, _pg) = hub_on(postgres).await;
    let key = hub.apikey();
    let src = hub.creds.account_id;
    let root = hub.new_fs_root("second").expect("root");
    let dst = hub
        .connect("fs", json!({"root": root}))
        .await
        .expect("connect")["id"]
        .as_i64()
        .expect("id");
    let f = upload(&hub, src, "root", "x.bin", false).await;
    let fid = f["id"].as_str().expect("id");
    let before = latest(&hub, &key, &src.to_string()).await;
    let (s, copied) = call(
        &hub,
        Method::POST,
        &key,
        &format!("/v1/accounts/{src}/storage/files/{fid}/copy"),
        Some(json!({"account": dst, "parent_id": "root"})),
    )
    .await;
    assert_eq!(s, 201, "{copied}");
    let (events, _) = drain(&hub, &key, &dst.to_string(), None, 10).await;
    assert_eq!(kinds(&events), ["copy"], "{events:#?}");
    assert_eq!(events[0]["action"], "transfer");
    assert_eq!(events[0]["account"], dst);
    assert_eq!(events[0]["id"], copied["id"]);
    assert_eq!(events[0]["metadata"]["size"], copied["size"]);
    let (none, _) = drain(&hub, &key, &src.to_string(), Some(&before), 10).await;
    assert!(none.is_empty(), "the source did not change: {none:#?}");
    // A move to the other account: gone from one, added to the other.
    let (s, moved) = call(
        &hub,
        Method::PATCH,
        &key,
        &format!("/v1/accounts/{src}/storage/files/{fid}"),
        Some(json!({"account": dst, "name": "moved.bin"})),
    )
    .await;
    assert_eq!(s, 200, "{moved}");
    let (src_events, _) = drain(&hub, &key, &src.to_string(), Some(&before), 10).await;
    assert_eq!(kinds(&src_events), ["delete"]);
    assert_eq!(src_events[0]["id"], fid);
    let (dst_events, _) = drain(&hub, &key, &dst.to_string(), None, 10).await;
    assert_eq!(kinds(&dst_events), ["copy", "add"]);
    assert_eq!(dst_events[1]["metadata"], moved);
}

#[tokio::test]
async fn between_accounts_sqlite() {
    between_accounts(false).await;
}

#[tokio::test]
async fn between_accounts_postgres() {
    between_accounts(true).await;
}

/// `after-auth` starts where the account was last connected: at creation, and again when
/// its credentials are replaced.
#[tokio::test]
async fn after_auth() {
    let (hub, _pg) = hub_on(false).await;
    let key = hub.apikey();
    let root = hub.new_fs_root("reauth").expect("root");
    let acc = hub
        .connect("fs", json!({"root": root}))
        .await
        .expect("connect")["id"]
        .as_i64()
        .expect("id");
    let a = acc.to_string();
    upload(&hub, acc, "root", "before.txt", false).await;
    let (from_auth, _) = drain(&hub, &key, &a, Some("after-auth"), 10).await;
    assert_eq!(from_auth.len(), 1);
    assert_eq!(from_auth[0]["metadata"]["name"], "before.txt");
    let (s, v) = call(
        &hub,
        Method::PATCH,
        &key,
        &format!("/v1/accounts/{acc}"),
        Some(json!({"credentials": {"root": root}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    upload(&hub, acc, "root", "after.txt", false).await;
    let (from_auth, _) = drain(&hub, &key, &a, Some("after-auth"), 10).await;
    assert_eq!(from_auth.len(), 1, "{from_auth:#?}");
    assert_eq!(from_auth[0]["metadata"]["name"], "after.txt");
    let (all, _) = drain(&hub, &key, &a, None, 10).await;
    assert_eq!(all.len(), 2);
}

/// Events older than the retention are swept; a cursor before the oldest kept event is a
/// 400 `cursor_expired` naming the oldest valid cursor, which works.
async fn retention(postgres: bool) {
    let (hub, _pg) = hub_on(postgres).await;
    let key = hub.apikey();
    let acc = hub.creds.account_id;
    let a = acc.to_string();
    for n in 0..3 {
        upload(&hub, acc, "root", &format!("r{n}.txt"), false).await;
    }
    let (s, first) = page(&hub, &key, &a, None, 1).await;
    assert_eq!(s, 200);
    let after_one = first["cursor"].as_str().expect("cursor").to_owned();
    // Nothing is old yet: a sweep keeps everything.
    hub::events::sweep_once(&hub.state).await.expect("sweep");
    assert_eq!(drain(&hub, &key, &a, None, 10).await.0.len(), 3);
    let eight_days_ago = hub::state::now_ms() - 8 * 86_400_000;
    hub.state
        .db
        .backdate_events(acc, 2, eight_days_ago)
        .await
        .expect("backdate");
    assert_eq!(hub::events::sweep_once(&hub.state).await.expect("sweep"), 2);
    for stale in [Some(after_one.as_str()), Some("after-auth")] {
        let (s, v) = page(&hub, &key, &a, stale, 10).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error_code"], "cursor_expired", "{v}");
        assert!(v["id"].is_string(), "{v}");
    }
    let (_, v) = page(&hub, &key, &a, Some(&after_one), 10).await;
    let message = v["message"].as_str().expect("message");
    let oldest = message.rsplit(' ').next().expect("cursor in message");
    let (rest, _) = drain(&hub, &key, &a, Some(oldest), 10).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["metadata"]["name"], "r2.txt");
    // Without a cursor the feed starts at the oldest kept event.
    assert_eq!(drain(&hub, &key, &a, None, 10).await.0, rest);
}

#[tokio::test]
async fn retention_sqlite() {
    retention(false).await;
}

#[tokio::test]
async fn retention_postgres() {
    retention(true).await;
}

/// An application with `collect_events` off (the default) records nothing; turned on
/// through the Meta API, it records from then on. Another application's key is a 404; a
/// forged, foreign or garbage cursor a 400 `invalid_cursor`; `page_size` out of range a 400
/// naming it.
#[tokio::test]
async fn collection_isolation_and_cursors() {
    let (hub, _pg) = hub_on(false).await;
    let meta = hub.meta();
    let (s, app) = call(
        &hub,
        Method::POST,
        &meta,
        "/v1/meta/applications",
        Some(json!({"name": "quiet"})),
    )
    .await;
    assert_eq!(s, 201, "{app}");
    assert_eq!(app["collect_events"], false);
    let app_id = app["id"].as_i64().expect("id");
    let (s, k) = call(
        &hub,
        Method::POST,
        &meta,
        &format!("/v1/meta/applications/{app_id}/apikeys"),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let other = format!("APIKey {}", k["key"].as_str().expect("key"));
    let root = hub.fs_root_of(app_id, "quiet").expect("root");
    let (s, acc) = call(
        &hub,
        Method::POST,
        &other,
        "/v1/accounts",
        Some(json!({"service": "fs", "account": "quiet", "credentials": {"root": root}})),
    )
    .await;
    assert_eq!(s, 201, "{acc}");
    let qid = acc["id"].as_i64().expect("id");
    let q = qid.to_string();
    let up = |name: &'static str| {
        let meta = json!({ "name": name, "parent_id": "root" }).to_string();
        hub.http
            .post(hub.url(&format!("/v1/accounts/{qid}/storage/files")))
            .header("Authorization", other.clone())
            .header("X-Kloudless-Metadata", meta)
            .body("x")
            .send()
    };
    assert_eq!(up("off.txt").await.expect("upload").status(), 201);
    assert!(drain(&hub, &other, &q, None, 10).await.0.is_empty());
    let (s, v) = call(
        &hub,
        Method::PATCH,
        &meta,
        &format!("/v1/meta/applications/{app_id}"),
        Some(json!({"collect_events": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["collect_events"], true);
    let (_, v) = call(
        &hub,
        Method::GET,
        &meta,
        &format!("/v1/meta/applications/{app_id}"),
        None,
    )
    .await;
    assert_eq!(v["collect_events"], true);
    assert_eq!(up("on.txt").await.expect("upload").status(), 201);
    let (events, _) = drain(&hub, &other, &q, None, 10).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["metadata"]["name"], "on.txt");
    // The account's bearer token reads the same feed as `me`, and no other account's.
    let bearer = format!(
        "Bearer {}",
        acc["bearer_token"]["key"].as_str().expect("token")
    );
    assert_eq!(drain(&hub, &bearer, "me", None, 10).await.0, events);
    let (s, _) = page(&hub, &bearer, &hub.creds.account_id.to_string(), None, 10).await;
    assert_eq!(s, 404);
    // The dev application collects (hub dev turns it on).
    let (_, dev) = call(
        &hub,
        Method::GET,
        &meta,
        &format!("/v1/meta/applications/{}", hub.creds.application_id),
        None,
    )
    .await;
    assert_eq!(dev["collect_events"], true);

    // Tenant isolation: each application's key reaches only its own accounts' feeds.
    let key = hub.apikey();
    let dev_acc = hub.creds.account_id.to_string();
    for (auth, acc) in [(&other, dev_acc.as_str()), (&key, q.as_str())] {
        for path in ["events", "events/latest"] {
            let (s, v) = call(
                &hub,
                Method::GET,
                auth,
                &format!("/v1/accounts/{acc}/{path}"),
                None,
            )
            .await;
            assert_eq!(s, 404, "{path}: {v}");
            assert_eq!(v["error_code"], "not_found", "{v}");
        }
    }

    // Cursors: another account's, tampered, garbage.
    let foreign = latest(&hub, &other, &q).await;
    // One character changed in the position's bytes: the tag no longer matches.
    let mut tampered: Vec<char> = latest(&hub, &key, &dev_acc).await.chars().collect();
    tampered[12] = if tampered[12] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for bad in [
        foreign.as_str(),
        tampered.as_str(),
        "garbage",
        "-1",
        "after-autht",
    ] {
        let (s, v) = page(&hub, &key, &dev_acc, Some(bad), 10).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error_code"], "invalid_cursor", "{bad}: {v}");
        assert!(
            v["message"].as_str().is_some() && v["id"].is_string(),
            "{v}"
        );
    }
    for size in [0, 1001] {
        let (s, v) = page(&hub, &key, &dev_acc, None, size).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["message"]
                .as_str()
                .expect("message")
                .contains("page_size"),
            "{v}"
        );
    }
}

/// 200 concurrent uploads to one account, read by a client paging while they land: exactly
/// 200 events, positions strictly increasing, none skipped or repeated.
async fn concurrent_uploads(postgres: bool) {
    let (hub, _pg) = hub_on(postgres).await;
    let key = hub.apikey();
    let acc = hub.creds.account_id;
    let a = acc.to_string();
    let start = latest(&hub, &key, &a).await;
    const N: usize = 200;
    let reader = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got: Vec<Value> = Vec::new();
        let mut cursor = start.clone();
        while got.len() < N {
            assert!(
                Instant::now() < deadline,
                "only {} of {N} events within 120 s",
                got.len()
            );
            let (s, v) = page(&hub, &key, &a, Some(&cursor), 7).await;
            assert_eq!(s, 200, "{v}");
            let objects = v["objects"].as_array().expect("objects");
            if objects.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            got.extend(objects.iter().cloned());
            cursor = v["cursor"].as_str().expect("cursor").to_owned();
        }
        got
    };
    let writers = futures::future::join_all((0..N).map(|n| {
        let hub = &hub;
        async move { upload(hub, acc, "root", &format!("c{n:03}.txt"), false).await }
    }));
    let started = Instant::now();
    let (uploaded, got) = tokio::join!(writers, reader);
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(got.len(), N, "every event exactly once");
    let want: HashSet<String> = uploaded
        .iter()
        .map(|f| f["id"].as_str().unwrap_or("").to_owned())
        .collect();
    let have: HashSet<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(want.len(), N);
    assert_eq!(have, want);
    // The whole run again from the start, one event per page: 200 distinct cursors, then the end.
    let (again, _) = drain(&hub, &key, &a, Some(&start), 1).await;
    assert_eq!(again, got, "the same order for every reader");
    let (after, _) = drain(&hub, &key, &a, Some(&latest(&hub, &key, &a).await), 5).await;
    assert!(after.is_empty());
}

#[tokio::test]
async fn concurrent_uploads_sqlite() {
    concurrent_uploads(false).await;
}

#[tokio::test]
async fn concurrent_uploads_postgres() {
    concurrent_uploads(true).await;
}

/// Uploads that go straight to a spoke (an `upload_url`, a redirected large upload, a
/// redirected overwrite) are recorded once each, when the spoke reports them published; a
/// report repeated (another hub, a reconnect) records nothing more, and one with a receipt
/// no hub issued is refused.
#[tokio::test]
async fn direct_uploads_through_a_spoke() {
    use crate::spokes::{wait_healthy, SpokeProc};
    let hub = TestHub::start_with(HubOptions {
        // No detector: its view of these files would race the spoke's reports (either is
        // right, `Echo`; the detector's side is tested in `detect`).
        yaml: Some(
            "offload:\n  threshold: 1048576\nnetwork:\n  heartbeat_ms: 250\n\
             events:\n  detect:\n    enabled: false\n"
                .into(),
        ),
        max_upload_bytes: 8 << 20,
        ..Default::default()
    })
    .await
    .expect("hub");
    let key = hub.apikey();
    let acc = hub.creds.account_id;
    let a = acc.to_string();
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
        Duration::from_secs(10),
        "the data endpoint to listen"
    );
    let ca = std::fs::read(spoke.dir.join("ca.crt")).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let start = latest(&hub, &key, &a).await;

    let (s, u) = call(
        &hub,
        Method::POST,
        &key,
        &format!("/v1/accounts/{acc}/storage/files/upload_url"),
        Some(json!({"parent_id": "root", "name": "direct.bin"})),
    )
    .await;
    assert_eq!(s, 200, "{u}");
    let url = u["url"].as_str().expect("url").to_owned();
    let r = client
        .put(&url)
        .body(e2e::pattern(3 << 20, 1))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let redirected = |name: &'static str, overwrite: bool| {
        let client = client.clone();
        let (hub, key) = (&hub, key.clone());
        async move {
            let body = e2e::pattern(2 << 20, 2);
            let r = client
                .post(hub.url(&format!(
                    "/v1/accounts/{acc}/storage/files?overwrite={overwrite}"
                )))
                .header("Authorization", key)
                .header(
                    "X-Kloudless-Metadata",
                    json!({"name": name, "parent_id": "root"}).to_string(),
                )
                .body(body.clone())
                .send()
                .await
                .expect("upload");
            assert_eq!(r.status(), 307);
            let location = r.headers()["location"].to_str().expect("ascii").to_owned();
            let r = client
                .post(&location)
                .body(body)
                .send()
                .await
                .expect("follow");
            assert_eq!(r.status(), 201);
        }
    };
    redirected("big.bin", false).await;
    redirected("big.bin", true).await;

    let mut events: Vec<Value>;
    e2e::assert_eventually!(
        {
            events = drain(&hub, &key, &a, Some(&start), 10).await.0;
            events.len() >= 3
        },
        Duration::from_secs(10),
        "the spoke's reports of three published uploads"
    );
    assert_eq!(kinds(&events), ["add", "add", "update"], "{events:#?}");
    assert_eq!(events[0]["id"], u["id"]);
    assert_eq!(events[0]["action"], "upload");
    assert_eq!(events[0]["metadata"]["name"], "direct.bin");
    assert_eq!(events[0]["metadata"]["size"], 3 << 20);
    assert_eq!(events[1]["metadata"]["name"], "big.bin");
    assert_eq!(events[2]["id"], events[1]["id"]);

    // The same report again (another hub, a session that reconnected): nothing more. A
    // report whose receipt no hub issued: nothing at all.
    let grant = url
        .split("/v1/data/")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .expect("grant");
    let again = shared::proto::UploadDone {
        grant_id: grant.to_owned(),
        account: acc,
        path: "direct.bin".into(),
        receipt: hub::events::receipt(&hub.state, grant, acc, "direct.bin", "add"),
        size: 3 << 20,
        modified: None,
        etag: None,
        content_type: None,
    };
    let mut forged = again.clone();
    forged.grant_id = "made-up".into();
    forged.path = "forged.bin".into();
    hub::events::record_direct_uploads(&hub.state, spoke.id, vec![again, forged]).await;
    let (all, _) = drain(&hub, &key, &a, Some(&start), 10).await;
    assert_eq!(all, events);
}
