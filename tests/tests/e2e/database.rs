//! The database layer on both engines: the same suite on SQLite and on a real PostgreSQL
//! started by the harness, plus the API end to end on PostgreSQL.

use e2e::servers::Postgres;
use e2e::{pattern, sha256_hex, HubOptions, TestHub};
use hub::db::{AccountChanges, Db};
use shared::auth::hash_token;

async fn suite(db: &Db) {
    db.migrate().await.expect("migrate");
    db.migrate().await.expect("migrations are idempotent");
    db.ping().await.expect("ping");
    let app = db.create_app("suite", "d", 1000).await.expect("app");
    assert!(app.active);
    let other = db.create_app("other", "", 1000).await.expect("app");
    let (apps, total) = db.list_apps(0, 10).await.expect("list");
    assert!(total >= 2 && apps.iter().any(|a| a.id == app.id));
    let (page, _) = db.list_apps(0, 1).await.expect("page");
    assert_eq!(page.len(), 1);

    let key = db
        .create_api_key(app.id, &hash_token("sk_one"), "sk_one", 1000)
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
        db.create_api_key(other.id, &hash_token("sk_one"), "dup", 1)
            .await
            .is_err(),
        "hashes are unique"
    );
    assert!(!db
        .delete_api_key(other.id, Some(key.id), &[0; 32])
        .await
        .expect("foreign"));
    db.update_app(app.id, None, None, Some(false), 2000)
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
        .update_app(app.id, Some("renamed"), None, Some(true), 3000)
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
