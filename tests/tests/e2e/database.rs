//! The database layer on both engines: the same suite on SQLite and on a real PostgreSQL
//! started by the harness, plus the API end to end on PostgreSQL.

use e2e::servers::Postgres;
use e2e::{pattern, sha256_hex, HubOptions, TestHub};
use hub::db::{AccountChanges, Db};
use serde_json::json;
use shared::auth::hash_token;
use std::time::{Duration, Instant};

async fn suite(db: &Db) {
    db.migrate().await.expect("migrate");
    db.migrate().await.expect("migrations are idempotent");
    db.ping().await.expect("ping");
    let app = db.create_app("suite", "d", false, 1000).await.expect("app");
    assert!(app.active);
    let other = db.create_app("other", "", false, 1000).await.expect("app");
    let (apps, total) = db.list_apps(0, 10).await.expect("list");
    assert!(total >= 2 && apps.iter().any(|a| a.id == app.id));
    let (page, _) = db.list_apps(0, 1).await.expect("page");
    assert_eq!(page.len(), 1);

    let key = db
        .create_api_key(app.id, &hash_token("sk_one"), "sk_one", b"sealed", 1000)
        .await
        .expect("key");
    assert_eq!(
        db.app_for_api_key(&hash_token("sk_one"))
            .await
            .expect("lookup"),
        Some(app.id)
    );
    assert_eq!(
        db.app_for_api_key(&hash_token("sk_two"))
            .await
            .expect("lookup"),
        None
    );
    assert!(
        db.create_api_key(other.id, &hash_token("sk_one"), "dup", b"sealed", 1)
            .await
            .is_err(),
        "hashes are unique"
    );
    assert!(!db
        .delete_api_key(other.id, Some(key.id), &[0; 32])
        .await
        .expect("foreign"));
    db.update_app(app.id, None, None, Some(false), None, 2000)
        .await
        .expect("deactivate");
    assert_eq!(
        db.app_for_api_key(&hash_token("sk_one"))
            .await
            .expect("lookup"),
        None,
        "inactive apps do not authenticate"
    );
    let back = db
        .update_app(app.id, Some("renamed"), None, Some(true), None, 3000)
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(
        (
            back.name.as_str(),
            back.description.as_str(),
            back.modified_ms
        ),
        ("renamed", "d", 3000)
    );

    let acct = db
        .create_account(
            app.id,
            "fs",
            "disk",
            |id| format!("sealed-{id}").into_bytes(),
            1000,
        )
        .await
        .expect("account");
    assert_eq!(acct.credentials, format!("sealed-{}", acct.id).into_bytes());
    assert!(
        db.get_account(other.id, acct.id)
            .await
            .expect("get")
            .is_none(),
        "accounts are per application"
    );
    db.create_account_token(acct.id, &hash_token("at_x"), 1000)
        .await
        .expect("token");
    assert_eq!(
        db.account_for_token(&hash_token("at_x"))
            .await
            .expect("token"),
        Some((acct.id, app.id))
    );
    let changed = db
        .update_account(
            app.id,
            acct.id,
            AccountChanges {
                active: Some(false),
                ..Default::default()
            },
            5,
        )
        .await
        .expect("update")
        .expect("exists");
    assert!(!changed.active);
    assert_eq!(
        db.account_for_token(&hash_token("at_x"))
            .await
            .expect("token"),
        None
    );
    let (list, n) = db.list_accounts(app.id, None, 0, 10).await.expect("list");
    assert_eq!((list.len(), n), (1, 1));
    let (only, _) = db
        .list_accounts(app.id, Some(acct.id + 1000), 0, 10)
        .await
        .expect("only");
    assert!(only.is_empty());

    db.create_meta_token("ops", &hash_token("mt_x"), 1)
        .await
        .expect("meta");
    assert!(db
        .meta_token_exists(&hash_token("mt_x"))
        .await
        .expect("meta"));

    assert!(db.delete_app(app.id).await.expect("delete"));
    assert!(
        db.get_account(app.id, acct.id)
            .await
            .expect("get")
            .is_none(),
        "accounts cascade"
    );
    assert_eq!(
        db.account_for_token(&hash_token("at_x"))
            .await
            .expect("token"),
        None
    );
    assert_eq!(
        db.app_for_api_key(&hash_token("sk_one"))
            .await
            .expect("lookup"),
        None
    );
}

/// The steering rows hubs write on every probe and flush are pruned in bounded batches: rows
/// past their retention go, the oldest first and at most `limit` per statement; recent rows,
/// and a row whose key was written again since, stay.
async fn steering_prune(db: &Db) {
    use hub::db::{HealthRecord, RttRecord};
    use hub::steering::{prune, Pruned, HEALTH_RETENTION, RTT_AGE};
    let now: i64 = 1_700_000_000_000;
    let rtt_age = RTT_AGE.as_millis() as i64;
    let health_age = HEALTH_RETENTION.as_millis() as i64;
    let rtt = |i: u32, updated_ms: i64| RttRecord {
        prefix: format!("203.0.{i}.0/24"),
        region: "r1".into(),
        rtt_us: 1000 + i64::from(i),
        samples: 1,
        updated_ms,
    };
    // Seven past the retention (the oldest first), two recent, and one old row written again.
    let mut rows: Vec<RttRecord> = (0..7)
        .map(|i| rtt(i, now - rtt_age - 1000 * (10 - i64::from(i))))
        .collect();
    rows.push(rtt(100, now - 3_600_000));
    rows.push(rtt(101, now));
    rows.push(rtt(102, now - 2 * rtt_age));
    db.upsert_rtts(&rows).await.expect("rtts");
    db.upsert_rtts(&[rtt(102, now - 60_000)])
        .await
        .expect("refresh");
    let health = |observer: &str, updated_ms: i64| HealthRecord {
        observer: observer.into(),
        target: "https://hub-t".into(),
        healthy: true,
        failures: 0,
        updated_ms,
    };
    for i in 0..5 {
        db.upsert_health(&health(&format!("https://gone-{i}"), now - health_age - 1))
            .await
            .expect("health");
    }
    db.upsert_health(&health("https://live-1", now - 5_000))
        .await
        .expect("health");
    db.upsert_health(&health("https://live-2", now))
        .await
        .expect("health");

    // At most the batch size per statement, the oldest first.
    let cutoff = now - rtt_age;
    let prefixes = |rows: Vec<RttRecord>| {
        let mut p: Vec<String> = rows.into_iter().map(|r| r.prefix).collect();
        p.sort();
        p
    };
    assert_eq!(
        db.prune_some(hub::db::STEERING_RTT, cutoff, 3)
            .await
            .expect("prune"),
        3
    );
    let left = prefixes(db.rtts_since(0, 1000).await.expect("rtts"));
    assert_eq!(left.len(), 7, "{left:?}");
    for gone in ["203.0.0.0/24", "203.0.1.0/24", "203.0.2.0/24"] {
        assert!(!left.iter().any(|p| p == gone), "{gone} kept: {left:?}");
    }
    assert_eq!(
        db.prune_some(hub::db::STEERING_RTT, cutoff, 3)
            .await
            .expect("prune"),
        3
    );
    assert_eq!(
        db.prune_some(hub::db::HUB_HEALTH, now - health_age, 2)
            .await
            .expect("prune"),
        2
    );
    // The periodic round takes the rest, in batches.
    assert_eq!(
        prune(db, now).await.expect("prune"),
        Pruned { rtts: 1, health: 3 }
    );
    assert_eq!(
        prune(db, now).await.expect("prune"),
        Pruned::default(),
        "nothing left to prune"
    );
    assert_eq!(
        prefixes(db.rtts_since(0, 1000).await.expect("rtts")),
        vec!["203.0.100.0/24", "203.0.101.0/24", "203.0.102.0/24"]
    );
    let mut observers: Vec<String> = db
        .health_since(0)
        .await
        .expect("health")
        .into_iter()
        .map(|h| h.observer)
        .collect();
    observers.sort();
    assert_eq!(observers, vec!["https://live-1", "https://live-2"]);
}

#[tokio::test]
async fn steering_rows_are_pruned_in_bounded_batches() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = Db::connect(
        &format!("sqlite://{}", dir.path().join("t.db").display()),
        4,
    )
    .await
    .expect("sqlite");
    db.migrate().await.expect("migrate");
    steering_prune(&db).await;
}

#[tokio::test]
async fn sqlite_suite() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = Db::connect(
        &format!("sqlite://{}", dir.path().join("t.db").display()),
        4,
    )
    .await
    .expect("sqlite");
    suite(&db).await;
}

#[tokio::test]
async fn postgres_suite_and_api() {
    let pg = Postgres::start().await.expect("postgres");
    let db = Db::connect(&pg.url(), 4).await.expect("postgres");
    suite(&db).await;
    steering_prune(&db).await;
    db.close().await;

    let hub = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        ..Default::default()
    })
    .await
    .expect("hub on postgres");
    let data = pattern(200_000, 3);
    let f = hub
        .upload(hub.creds.account_id, "root", "pg.bin", data.clone())
        .await
        .expect("upload");
    let body = hub
        .download(hub.creds.account_id, f["id"].as_str().expect("id"))
        .await
        .expect("download");
    assert_eq!(sha256_hex(&body), sha256_hex(&data));
    assert_eq!(
        hub.http
            .get(hub.url("/readyz"))
            .send()
            .await
            .expect("ready")
            .status(),
        200
    );
    hub.stop().await.expect("stop");
}

/// `status` of `GET path` on `hub` with `auth`.
async fn status_of(hub: &TestHub, auth: &str, path: &str) -> u16 {
    hub.http
        .get(hub.url(path))
        .header("Authorization", auth)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Polls until `GET path` with `auth` on `hub` answers `want`, failing after one second (the
/// documented revocation bound); returns how long it took.
async fn answers_within_a_second(hub: &TestHub, auth: &str, path: &str, want: u16) -> Duration {
    let start = Instant::now();
    e2e::assert_eventually!(
        status_of(hub, auth, path).await == want,
        Duration::from_secs(1),
        format!("{path} to answer {want} within the revocation bound")
    );
    start.elapsed()
}

/// A new API key of `app`, made through `hub`'s Meta API: `(id, "APIKey ...")`.
async fn new_key(hub: &TestHub, app: i64) -> (i64, String) {
    let v: serde_json::Value = hub
        .http
        .post(hub.url(&format!("/v1/meta/applications/{app}/apikeys")))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    (
        v["id"].as_i64().expect("id"),
        format!("APIKey {}", v["key"].as_str().expect("key")),
    )
}

/// Two hubs on one PostgreSQL, caches warm on both: an API key revoked through hub A's API or
/// through the `hub` command line, an account deactivated (its bearer token) and an account
/// deleted are refused by hub B within one second while B's feed is live (so it was the
/// notification, not an expiry); and again right after every NOTIFY connection is killed.
#[tokio::test]
async fn revocation_reaches_every_hub_within_a_second() {
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    let a = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        dir: Some(dir.path().join("a")),
        ..Default::default()
    })
    .await
    .expect("hub a");
    // Hub B shares A's master key (it opens A's accounts) and allows A's `fs` roots.
    let b = a
        .start_peer(pg.url(), dir.path().join("b"), "")
        .await
        .expect("hub b");
    let app = a.creds.application_id;
    let feed_live = |hub: &TestHub| hub.state.freshness.live(Instant::now());
    e2e::assert_eventually!(
        feed_live(&a) && feed_live(&b),
        Duration::from_secs(10),
        "both hubs' revocation feeds to be live"
    );

    let (k1, key1) = new_key(&a, app).await;
    let (_, key2) = new_key(&a, app).await;
    let mut accounts = Vec::new();
    for name in ["deactivated", "deleted"] {
        let root = a.new_fs_root(name).expect("root");
        let acct = a.connect("fs", json!({ "root": root })).await.expect("fs");
        accounts.push((
            acct["id"].as_i64().expect("id"),
            format!(
                "Bearer {}",
                acct["bearer_token"]["key"].as_str().expect("token")
            ),
        ));
    }
    let (x, x_token) = accounts[0].clone();
    let (y, _) = accounts[1].clone();
    // Warm both hubs' caches.
    for hub in [&a, &b] {
        assert_eq!(status_of(hub, &key1, "/v1/accounts").await, 200);
        assert_eq!(status_of(hub, &key2, "/v1/accounts").await, 200);
        assert_eq!(status_of(hub, &x_token, "/v1/accounts/me").await, 200);
        assert_eq!(
            status_of(hub, &a.apikey(), &format!("/v1/accounts/{y}")).await,
            200
        );
    }
    let mut took = Vec::new();

    // Each revocation also flushes B's other cached credentials of the application, so each
    // step warms B again right before it.
    // A key revoked through hub A's Meta API.
    assert!(feed_live(&b));
    let r = a
        .http
        .delete(a.url(&format!("/v1/meta/applications/{app}/apikeys/{k1}")))
        .header("Authorization", a.meta())
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    took.push(answers_within_a_second(&b, &key1, "/v1/accounts", 401).await);

    // A key revoked by the command line, another process.
    let config = dir.path().join("cli.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {data}\ndatabase:\n  url: {url}\nsecrets:\n  master_key_file: {data}/master.key\nlog:\n  level: warn\n",
            data = a.data_dir.display(),
            url = pg.url()
        ),
    )
    .expect("cli config");
    assert_eq!(status_of(&b, &key2, "/v1/accounts").await, 200);
    assert!(feed_live(&b));
    let raw_key2 = key2.trim_start_matches("APIKey ").to_owned();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-hub"))
        .arg("--config")
        .arg(&config)
        .args(["keys", "revoke", "--app", &app.to_string(), &raw_key2])
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .await
        .expect("hub keys revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took.push(answers_within_a_second(&b, &key2, "/v1/accounts", 401).await);
    took.push(answers_within_a_second(&a, &key2, "/v1/accounts", 401).await);

    // An account deactivated: its bearer token is refused.
    assert_eq!(status_of(&b, &x_token, "/v1/accounts/me").await, 200);
    assert!(feed_live(&b));
    let r = a
        .req(reqwest::Method::PATCH, &a.url(&format!("/v1/accounts/{x}")))
        .json(&json!({ "active": false }))
        .send()
        .await
        .expect("deactivate");
    assert_eq!(r.status(), 200);
    took.push(answers_within_a_second(&b, &x_token, "/v1/accounts/me", 401).await);

    // An account deleted: gone on hub B too.
    assert_eq!(
        status_of(&b, &a.apikey(), &format!("/v1/accounts/{y}")).await,
        200
    );
    assert!(feed_live(&b));
    let r = a
        .req(
            reqwest::Method::DELETE,
            &a.url(&format!("/v1/accounts/{y}")),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    took.push(answers_within_a_second(&b, &a.apikey(), &format!("/v1/accounts/{y}"), 404).await);

    // Every NOTIFY connection killed: a revocation right after still reaches B in time (the
    // caches fall back to a short TTL), and the listeners come back.
    let (k3, key3) = new_key(&a, app).await;
    assert_eq!(status_of(&b, &key3, "/v1/accounts").await, 200);
    let listeners = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}'",
        hub::revocation::LISTENER_NAME
    );
    assert_eq!(pg.sql(&listeners).await.expect("count"), "2");
    pg.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
        hub::revocation::LISTENER_NAME
    ))
    .await
    .expect("terminate");
    let r = a
        .http
        .delete(a.url(&format!("/v1/meta/applications/{app}/apikeys/{k3}")))
        .header("Authorization", a.meta())
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    took.push(answers_within_a_second(&b, &key3, "/v1/accounts", 401).await);
    e2e::assert_eventually!(
        pg.sql(&listeners).await.is_ok_and(|n| n == "2") && feed_live(&a) && feed_live(&b),
        Duration::from_secs(15),
        "the revocation feeds to reconnect"
    );
    let (k4, key4) = new_key(&a, app).await;
    assert_eq!(status_of(&b, &key4, "/v1/accounts").await, 200);
    assert!(feed_live(&b));
    let r = a
        .http
        .delete(a.url(&format!("/v1/meta/applications/{app}/apikeys/{k4}")))
        .header("Authorization", a.meta())
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    took.push(answers_within_a_second(&b, &key4, "/v1/accounts", 401).await);
    eprintln!("revocation reached the other hub after {took:?}");
    b.stop().await.expect("stop b");
    a.stop().await.expect("stop a");
}
