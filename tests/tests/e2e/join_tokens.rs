//! Reusable join tokens with real `spoke` processes: a use limit held under concurrent
//! enrollment on PostgreSQL, one identity per use, revocation and expiry with clear reasons,
//! a failed use given back, the token API and CLI, and tokens made before migration 0008.

use crate::spokes::{enroll, enrolled_id, spoke_view, text, wait_healthy, SpokeProc};
use e2e::servers::Postgres;
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use shared::join::JoinString;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// `POST /v1/network/spokes/tokens` with the Meta token; the response (asserted 201).
async fn new_token(hub: &TestHub, body: Value) -> Value {
    let r = hub
        .http
        .post(hub.url("/v1/network/spokes/tokens"))
        .header("Authorization", hub.meta())
        .json(&body)
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    r.json().await.expect("json")
}

async fn token_row(hub: &TestHub, id: &str) -> hub::db::JoinTokenRecord {
    hub.state
        .db
        .get_join_token(id)
        .await
        .expect("db")
        .expect("token row")
}

async fn revoke_token(hub: &TestHub, id: &str) -> reqwest::Response {
    hub.http
        .delete(hub.url(&format!("/v1/network/spokes/tokens/{id}")))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("revoke")
}

/// The SHA-256 fingerprint of the certificate `spoke enroll` wrote into `dir`.
fn cert_fingerprint(dir: &Path) -> String {
    let pem = std::fs::read_to_string(dir.join("spoke.crt")).expect("spoke.crt");
    shared::pki::fingerprint_pem(&pem).expect("fingerprint")
}

/// A refused `spoke enroll`: nothing written, and stderr says `why`.
fn assert_refused(o: &std::process::Output, why: &str) {
    assert!(!o.status.success(), "enrolled: {}", text(&o.stdout));
    assert!(text(&o.stderr).contains(why), "{}", text(&o.stderr));
}

async fn postgres_hub() -> (Postgres, TestHub) {
    let pg = Postgres::start().await.expect("postgres");
    let hub = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        ..Default::default()
    })
    .await
    .expect("hub on postgres");
    (pg, hub)
}

/// A token with 3 uses enrolls three spokes, each with its own key pair, certificate, row
/// and name, all of which connect and heartbeat; the fourth use is refused as exhausted.
#[tokio::test]
async fn join_token_with_three_uses_enrolls_three_spokes() {
    let (_pg, hub) = postgres_hub().await;
    let root = tempfile::tempdir().expect("tmp");
    let t = new_token(&hub, json!({"region": "local", "name": "web", "uses": 3})).await;
    assert_eq!(t["max_uses"], 3);
    let join = t["join"].as_str().expect("join");
    let mut spokes = Vec::new();
    let mut fingerprints = HashSet::new();
    let mut keys = HashSet::new();
    for i in 0..3 {
        let dir = root.path().join(format!("s{i}"));
        let id = enrolled_id(&enroll(join, &dir, &[]).await);
        assert!(
            fingerprints.insert(cert_fingerprint(&dir)),
            "a certificate twice"
        );
        assert!(
            keys.insert(std::fs::read_to_string(dir.join("spoke.key")).expect("key")),
            "a key twice"
        );
        spokes.push(SpokeProc::run(dir, id, &[]));
    }
    let mut names = HashSet::new();
    for s in &spokes {
        wait_healthy(&hub, s.id).await;
        let v = spoke_view(&hub, s.id).await;
        assert_eq!(v["join_token"], t["id"], "{v}");
        names.insert(v["name"].as_str().expect("name").to_owned());
    }
    assert_eq!(
        names,
        HashSet::from(["web-1".to_owned(), "web-2".into(), "web-3".into()])
    );
    // The hub knows each by the fingerprint of the certificate it signed for it.
    let rows = hub.state.db.list_spokes().await.expect("spokes");
    let db_fps: HashSet<String> = rows.iter().map(|s| s.cert_fingerprint.clone()).collect();
    assert_eq!(db_fps, fingerprints);

    let o = enroll(join, &root.path().join("s3"), &[]).await;
    assert_refused(&o, "join token exhausted");
    assert!(!root.path().join("s3/spoke.yaml").exists());
    let row = token_row(&hub, t["id"].as_str().expect("id")).await;
    assert_eq!((row.uses, row.max_uses), (3, 3));
    assert_eq!(hub.state.db.list_spokes().await.expect("spokes").len(), 3);
    // The exhausted token spent no identity on the refusal: the three still heartbeat.
    for s in &spokes {
        wait_healthy(&hub, s.id).await;
    }
}

/// Fifty `spoke enroll` processes race for a token of 5 uses on PostgreSQL: exactly five
/// enroll, and the database holds exactly five spokes of that token. Then 200 enrollments
/// start at one instant inside the hub (a barrier, no process start-up to spread them out)
/// for another token of 5 uses: again exactly five.
#[tokio::test]
async fn join_token_uses_hold_under_a_race_on_postgres() {
    let (pg, hub) = postgres_hub().await;
    let root = tempfile::tempdir().expect("tmp");
    let t = new_token(&hub, json!({"region": "local", "name": "asg", "uses": 5})).await;
    let id = t["id"].as_str().expect("id").to_owned();
    let join = t["join"].as_str().expect("join").to_owned();
    let started = std::time::Instant::now();
    let attempts: Vec<_> = (0..50)
        .map(|i| {
            let join = join.clone();
            let dir = root.path().join(format!("r{i}"));
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    enroll(&join, &dir, &["--timeout", "60"]),
                )
                .await
                .expect("an enrollment within 120 s")
            })
        })
        .collect();
    let mut wins = 0;
    for a in attempts {
        let o = a.await.expect("join");
        if o.status.success() {
            wins += 1;
        } else {
            // Losers hear that the token is spent (or, after ten refusals from this one
            // address, the per-source throttle, which never looks at the token).
            let err = text(&o.stderr);
            assert!(
                err.contains("join token exhausted") || err.contains("too many failed"),
                "{err}"
            );
        }
    }
    eprintln!("50 concurrent enrollments took {:?}", started.elapsed());
    assert_eq!(wins, 5);
    let row = token_row(&hub, &id).await;
    assert_eq!((row.uses, row.max_uses), (5, 5));
    let of_token = pg
        .sql(&format!(
            "SELECT count(*), count(DISTINCT cert_fingerprint), count(DISTINCT name) FROM spokes \
             WHERE join_token_id = '{id}' AND cert_fingerprint NOT LIKE 'pending:%'"
        ))
        .await
        .expect("sql");
    assert_eq!(of_token.trim(), "5|5|5");

    // 200 at one instant, in the hub, on the same database.
    let t = new_token(&hub, json!({"region": "local", "uses": 5})).await;
    let j = JoinString::parse(t["join"].as_str().expect("join")).expect("parse");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (_, csr_pem) = shared::pki::new_key_and_csr("racer").expect("csr");
            let req = shared::proto::EnrollRequest {
                token_id: j.token_id.clone(),
                secret: j.secret.clone(),
                csr_pem,
                name: None,
                advertise: None,
            };
            let (state, barrier) = (hub.state.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                hub::network::enroll::enroll(&state, &req).await
            })
        })
        .collect();
    let mut certs = HashSet::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("the race ends within 120 s")
            .expect("join")
        {
            Ok(e) => assert!(certs.insert(e.cert_pem)),
            Err(r) => assert_eq!(r.code, "token_exhausted", "{r:?}"),
        }
    }
    assert_eq!(certs.len(), 5);
    let row = token_row(&hub, &j.token_id).await;
    assert_eq!(row.uses, 5);
    let n = pg
        .sql(&format!(
            "SELECT count(*) FROM spokes WHERE join_token_id = '{}'",
            j.token_id
        ))
        .await
        .expect("sql");
    assert_eq!(n.trim(), "5");
}

/// Revoking a token refuses its further uses, whatever is left of them; the spokes it already
/// enrolled keep working (a restart included). A wrong secret for a revoked token still looks
/// like an unknown token.
#[tokio::test]
async fn revoked_join_token_is_refused_and_its_spokes_keep_working() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    // Revoked before any use.
    let a = new_token(&hub, json!({"region": "local", "uses": 3})).await;
    assert_eq!(
        revoke_token(&hub, a["id"].as_str().expect("id"))
            .await
            .status(),
        204
    );
    let o = enroll(
        a["join"].as_str().expect("join"),
        &root.path().join("a"),
        &[],
    )
    .await;
    assert_refused(&o, "join token revoked");

    // Revoked after one of three uses.
    let b = new_token(&hub, json!({"region": "local", "name": "batch", "uses": 3})).await;
    let join = b["join"].as_str().expect("join");
    let dir = root.path().join("b1");
    let id = enrolled_id(&enroll(join, &dir, &[]).await);
    let mut spoke = SpokeProc::run(dir.clone(), id, &[]);
    wait_healthy(&hub, id).await;
    let bid = b["id"].as_str().expect("id");
    assert_eq!(revoke_token(&hub, bid).await.status(), 204);
    let o = enroll(join, &root.path().join("b2"), &[]).await;
    assert_refused(&o, "join token revoked");
    assert_eq!(token_row(&hub, bid).await.uses, 1);
    // Its spoke is untouched: the same session keeps heartbeating after the revocation, and
    // the spoke is welcome again after a restart.
    let since = spoke_view(&hub, id).await["status"]["connected_secs"]
        .as_u64()
        .expect("connected");
    e2e::assert_eventually!(
        {
            let v = spoke_view(&hub, id).await;
            v["status"]["healthy"] == true
                && v["status"]["connected_secs"].as_u64().unwrap_or(0) >= since + 2
                && v["status"]["last_heartbeat_ms_ago"]
                    .as_u64()
                    .unwrap_or(u64::MAX)
                    < 1500
        },
        Duration::from_secs(15),
        "heartbeats after the token's revocation"
    );
    wait_healthy(&hub, id).await;
    spoke.kill().await;
    let _again = SpokeProc::run(dir, id, &[]);
    wait_healthy(&hub, id).await;
    assert!(spoke_view(&hub, id).await["revoked"].is_null());

    // A probe cannot tell a revoked token from an unknown one without its secret.
    let mut wrong = JoinString::parse(join).expect("parse");
    wrong.secret = shared::proto::Redacted("js_guess".into());
    let o = enroll(&wrong.encode(), &root.path().join("b3"), &[]).await;
    assert_refused(&o, "does not exist");
    let mut unknown = JoinString::parse(join).expect("parse");
    unknown.token_id = "jt_nosuchtoken".into();
    let o = enroll(&unknown.encode(), &root.path().join("b4"), &[]).await;
    assert_refused(&o, "does not exist");
}

/// An expired reusable token is refused as expired, with uses left or not.
#[tokio::test]
async fn expired_join_token_is_refused() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let fresh = new_token(&hub, json!({"region": "local", "uses": 4})).await;
    let secret = "js_expired-reusable-secret";
    let now = hub::state::now_ms();
    hub.state
        .db
        .create_join_token(&hub::db::JoinTokenRecord {
            id: "jt_expiredmulti".into(),
            secret_hash: shared::auth::hash_token(secret).to_vec(),
            region: "local".into(),
            name: Some("gone".into()),
            expires_ms: now - 1000,
            used_ms: None,
            spoke_id: None,
            created_ms: now - 10_000,
            max_uses: 4,
            uses: 0,
            revoked_ms: None,
        })
        .await
        .expect("token row");
    let mut j = JoinString::parse(fresh["join"].as_str().expect("join")).expect("parse");
    j.token_id = "jt_expiredmulti".into();
    j.secret = shared::proto::Redacted(secret.into());
    let o = enroll(&j.encode(), &root.path().join("e"), &[]).await;
    assert_refused(&o, "join token expired");
    assert_eq!(token_row(&hub, "jt_expiredmulti").await.uses, 0);
    let list: Value = hub
        .http
        .get(hub.url("/v1/network/spokes/tokens"))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let row = list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|t| t["id"] == "jt_expiredmulti")
        .expect("listed");
    assert_eq!(row["state"], "expired", "{row}");
}

/// An enrollment that fails after taking its use (here the database refuses the spoke row)
/// gives the use back and leaves no spoke; a bad CSR is refused before a use is taken.
#[tokio::test]
async fn a_failed_enrollment_gives_its_join_token_use_back() {
    let (pg, hub) = postgres_hub().await;
    let root = tempfile::tempdir().expect("tmp");
    let t = new_token(&hub, json!({"region": "local", "uses": 1})).await;
    let id = t["id"].as_str().expect("id");
    let join = t["join"].as_str().expect("join");
    pg.sql(
        "CREATE FUNCTION refuse_spokes() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'spokes are refused by the test'; END $$; \
         CREATE TRIGGER refuse_spokes BEFORE INSERT ON spokes \
         FOR EACH ROW EXECUTE FUNCTION refuse_spokes();",
    )
    .await
    .expect("trigger");
    let o = enroll(join, &root.path().join("a"), &[]).await;
    assert_refused(&o, "could not complete the enrollment");
    assert_eq!(token_row(&hub, id).await.uses, 0, "the use was given back");
    assert!(hub.state.db.list_spokes().await.expect("spokes").is_empty());

    // A bad CSR never takes a use.
    let j = JoinString::parse(join).expect("parse");
    let r = hub::network::enroll::enroll(
        &hub.state,
        &shared::proto::EnrollRequest {
            token_id: j.token_id.clone(),
            secret: j.secret.clone(),
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            name: None,
            advertise: None,
        },
    )
    .await
    .expect_err("a bad CSR");
    assert_eq!(r.code, "bad_request");
    assert_eq!(token_row(&hub, id).await.uses, 0);

    // Once the database takes spokes again, the single use is there.
    pg.sql("DROP TRIGGER refuse_spokes ON spokes;")
        .await
        .expect("drop trigger");
    enrolled_id(&enroll(join, &root.path().join("b"), &[]).await);
    assert_eq!(token_row(&hub, id).await.uses, 1);
    let o = enroll(join, &root.path().join("c"), &[]).await;
    assert_refused(&o, "join token exhausted");
}

/// The token API: `uses` on create, a list that shows uses and never a secret, DELETE
/// revokes (idempotently), bad input is a 400 with our error shape, and only the Meta token
/// is let in.
#[tokio::test]
async fn join_token_api_creates_lists_and_revokes() {
    let hub = TestHub::start().await.expect("hub");
    let t = new_token(
        &hub,
        json!({"region": "local", "name": "api", "uses": 7, "ttl_secs": 600}),
    )
    .await;
    let id = t["id"].as_str().expect("id");
    assert_eq!(t["max_uses"], 7);
    let secret = JoinString::parse(t["join"].as_str().expect("join"))
        .expect("parse")
        .secret
        .0;
    let list = |hub: &TestHub| {
        hub.http
            .get(hub.url("/v1/network/spokes/tokens"))
            .header("Authorization", hub.meta())
            .send()
    };
    let r = list(&hub).await.expect("list");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("text");
    assert!(!body.contains(&secret), "a secret in the list: {body}");
    assert!(
        !body.contains("SYJ1-") && !body.contains("\"join\""),
        "{body}"
    );
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["type"], "object_list");
    let row = v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(
        (&row["uses"], &row["max_uses"], &row["state"], &row["name"]),
        (&json!(0), &json!(7), &json!("active"), &json!("api"))
    );
    assert!(
        row["expires"].is_string() && row["revoked"].is_null(),
        "{row}"
    );

    for (n, status) in [(1, 204), (2, 204)] {
        assert_eq!(revoke_token(&hub, id).await.status(), status, "revoke #{n}");
    }
    let v: Value = list(&hub).await.expect("list").json().await.expect("json");
    let row = v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["id"] == id)
        .expect("listed")
        .clone();
    assert_eq!(row["state"], "revoked");
    assert!(row["revoked"].is_string());
    let r = revoke_token(&hub, "jt_nosuchtoken").await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error_code"], "not_found");
    assert!(e["id"].is_string() && e["message"].is_string(), "{e}");

    // Bad input.
    for body in [
        json!({"region": "local", "uses": 0}),
        json!({"region": "local", "uses": 10001}),
        json!({"region": "local", "uses": "x"}),
        json!({"region": "local", "uses": -1}),
        json!({"region": "local", "uses": 2, "ttl_secs": 59}),
        json!({"region": "local", "uses": 2, "ttl_secs": 2_592_001}),
    ] {
        let r = hub
            .http
            .post(hub.url("/v1/network/spokes/tokens"))
            .header("Authorization", hub.meta())
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["error_code"], "invalid_parameters", "{body}: {e}");
        assert!(e["id"].is_string(), "{e}");
        let field = if body.get("ttl_secs").is_some() {
            "ttl_secs"
        } else {
            "uses"
        };
        assert!(
            e["message"].as_str().expect("message").contains(field),
            "{body}: {e}"
        );
    }
    assert_eq!(
        new_token(&hub, json!({"region": "local", "uses": 10000})).await["max_uses"],
        10000
    );

    // Only the Meta token: not the dev application's key, not another application's, not none.
    let other_app: Value = hub
        .http
        .post(hub.url("/v1/meta/applications"))
        .header("Authorization", hub.meta())
        .json(&json!({"name": "other"}))
        .send()
        .await
        .expect("app")
        .json()
        .await
        .expect("json");
    let other_key: Value = hub
        .http
        .post(hub.url(&format!(
            "/v1/meta/applications/{}/apikeys",
            other_app["id"]
        )))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let other = format!("APIKey {}", other_key["key"].as_str().expect("key"));
    for auth in [Some(hub.apikey()), Some(other), None] {
        for (method, path) in [
            (reqwest::Method::GET, "/v1/network/spokes/tokens".to_owned()),
            (
                reqwest::Method::POST,
                "/v1/network/spokes/tokens".to_owned(),
            ),
            (
                reqwest::Method::DELETE,
                format!("/v1/network/spokes/tokens/{id}"),
            ),
        ] {
            let mut rb = hub
                .http
                .request(method.clone(), hub.url(&path))
                .json(&json!({"region": "local", "uses": 3}));
            if let Some(a) = &auth {
                rb = rb.header("Authorization", a);
            }
            let r = rb.send().await.expect("request");
            assert!(
                matches!(r.status().as_u16(), 401 | 403),
                "{method} {path} with {:?}: {}",
                auth.as_deref().map(|a| &a[..8]),
                r.status()
            );
            let e: Value = r.json().await.expect("json");
            assert!(e["error_code"].is_string(), "{e}");
        }
    }
    // Nothing above created a token.
    let v: Value = list(&hub).await.expect("list").json().await.expect("json");
    assert_eq!(v["count"], 2, "{v}");
}

/// `hub spokes token create --uses N --json` prints one JSON object and nothing else, and its
/// `join` enrolls; `token list` and `token revoke` do what they say, unknown ids fail.
#[tokio::test]
async fn join_token_cli_json_list_and_revoke() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let cfg = root.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {d}\nsecrets:\n  master_key_file: {d}/master.key\nlog:\n  level: info\n\
             network:\n  quic_listen: {q}\n",
            d = hub.data_dir.display(),
            q = hub.state.network.advertise().expect("quic")
        ),
    )
    .expect("cfg");
    let hub_cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_e2e-hub"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("hub cli")
    };
    let o = hub_cli(&[
        "spokes", "token", "create", "--region", "local", "--name", "tf", "--uses", "2", "--ttl",
        "30d", "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let v: Value = serde_json::from_str(&stdout).expect("stdout is one JSON object");
    let keys: HashSet<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["id", "region", "name", "join", "max_uses", "expires_at"])
    );
    assert_eq!(
        (&v["region"], &v["name"], &v["max_uses"]),
        (&json!("local"), &json!("tf"), &json!(2))
    );
    let expires = time::OffsetDateTime::parse(
        v["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let days = (expires - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{expires}");
    let id = v["id"].as_str().expect("id").to_owned();
    let join = v["join"].as_str().expect("join");
    let sid = enrolled_id(&enroll(join, &root.path().join("s"), &[]).await);
    let _spoke = SpokeProc::run(root.path().join("s"), sid, &[]);
    wait_healthy(&hub, sid).await;
    assert_eq!(spoke_view(&hub, sid).await["name"], "tf-1");

    let o = hub_cli(&["spokes", "token", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let secret = JoinString::parse(join).expect("parse").secret.0;
    assert!(!text(&o.stdout).contains(&secret));
    let l: Value = serde_json::from_slice(&o.stdout).expect("json");
    let row = l
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(
        (&row["uses"], &row["max_uses"]),
        (&json!(1), &json!(2)),
        "{row}"
    );
    let o = hub_cli(&["spokes", "token", "list"]);
    let line = text(&o.stdout);
    assert!(
        line.contains(&id) && line.contains("1/2 uses") && !line.contains(&secret),
        "{line}"
    );

    let o = hub_cli(&["spokes", "token", "revoke", &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("revoked"), "{}", text(&o.stdout));
    let o = hub_cli(&["spokes", "token", "revoke", &id]);
    assert!(o.status.success(), "idempotent: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("already revoked"),
        "{}",
        text(&o.stdout)
    );
    let o = hub_cli(&["spokes", "token", "revoke", "jt_nosuchtoken"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no join token jt_nosuchtoken"),
        "{}",
        text(&o.stderr)
    );
    let o = enroll(join, &root.path().join("t"), &[]).await;
    assert_refused(&o, "join token revoked");
    // The spoke the token enrolled is still there.
    wait_healthy(&hub, sid).await;

    for bad in ["0", "10001", "x"] {
        let o = hub_cli(&[
            "spokes", "token", "create", "--region", "local", "--uses", bad,
        ]);
        assert!(!o.status.success(), "--uses {bad}");
        assert!(text(&o.stderr).contains("--uses"), "{}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
}

/// Tokens and spokes from before migration 0008 keep their meaning: a used token stays used,
/// an unused one enrolls exactly once, a spoke learns the token it enrolled with, and spokes
/// that shared a name are told apart.
#[tokio::test]
async fn join_tokens_from_before_reusable_tokens_keep_single_use() {
    let pg = Postgres::start().await.expect("postgres");
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres");
    let all = sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("migrations");
    let mut before = sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("migrations");
    before.migrations = all
        .migrations
        .iter()
        .filter(|m| m.version < 8)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let pool = sqlx::PgPool::connect(&pg.url()).await.expect("pool");
    before.run(&pool).await.expect("migrations 1-7");
    let now = hub::state::now_ms();
    let hash = |s: &str| shared::auth::hash_token(s).to_vec();
    for (id, secret, used) in [
        ("jt_oldused", "js_old-used", true),
        ("jt_oldfresh", "js_old-fresh", false),
    ] {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, region, name, expires_ms, used_ms, \
             spoke_id, created_ms) VALUES ($1, $2, 'local', 'old', $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(hash(secret))
        .bind(now + 3_600_000)
        .bind(used.then_some(now - 1000))
        .bind(used.then_some(1_i64))
        .bind(now - 10_000)
        .execute(&pool)
        .await
        .expect("legacy token");
    }
    for fp in ["aa", "bb"] {
        sqlx::query(
            "INSERT INTO spokes (name, region, cert_fingerprint, enrolled_ms) \
             VALUES ('twin', 'local', $1, $2)",
        )
        .bind(fp)
        .bind(now - 5000)
        .execute(&pool)
        .await
        .expect("legacy spoke");
    }
    pool.close().await;

    let hub = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        ..Default::default()
    })
    .await
    .expect("hub applies 0008");
    let used = token_row(&hub, "jt_oldused").await;
    assert_eq!((used.uses, used.max_uses), (1, 1));
    let spokes = hub.state.db.list_spokes().await.expect("spokes");
    assert_eq!(spokes[0].join_token_id.as_deref(), Some("jt_oldused"));
    assert_eq!(spokes[0].name, "twin");
    assert_eq!(spokes[1].name, format!("twin-{}", spokes[1].id));

    let root = tempfile::tempdir().expect("tmp");
    let fresh_join = new_token(&hub, json!({"region": "local"})).await;
    let with = |id: &str, secret: &str| {
        let mut j = JoinString::parse(fresh_join["join"].as_str().expect("join")).expect("parse");
        j.token_id = id.into();
        j.secret = shared::proto::Redacted(secret.into());
        j.encode()
    };
    let o = enroll(
        &with("jt_oldused", "js_old-used"),
        &root.path().join("a"),
        &[],
    )
    .await;
    assert_refused(&o, "join token exhausted");
    let sid = enrolled_id(
        &enroll(
            &with("jt_oldfresh", "js_old-fresh"),
            &root.path().join("b"),
            &[],
        )
        .await,
    );
    // A single-use token's spoke takes the token's name as it is.
    assert_eq!(spoke_view(&hub, sid).await["name"], "old");
    let o = enroll(
        &with("jt_oldfresh", "js_old-fresh"),
        &root.path().join("c"),
        &[],
    )
    .await;
    assert_refused(&o, "join token exhausted");
    // The new single-use token behaves the same.
    enrolled_id(
        &enroll(
            fresh_join["join"].as_str().expect("join"),
            &root.path().join("d"),
            &[],
        )
        .await,
    );
    let o = enroll(
        fresh_join["join"].as_str().expect("join"),
        &root.path().join("e"),
        &[],
    )
    .await;
    assert_refused(&o, "already used");
}

/// Spoke names stay unique among live spokes on both engines: a second token of the same name
/// and a spoke asking for a taken name get another name instead of a duplicate; a revoked
/// spoke's name is free again.
#[tokio::test]
async fn spoke_names_stay_unique_across_join_tokens() {
    let pg = Postgres::start().await.expect("postgres");
    for database_url in [None, Some(pg.url())] {
        let hub = TestHub::start_with(HubOptions {
            database_url,
            ..Default::default()
        })
        .await
        .expect("hub");
        let root = tempfile::tempdir().expect("tmp");
        let name_of = |o: &std::process::Output| {
            text(&o.stdout)
                .split_whitespace()
                .nth(3)
                .map(|n| n.trim_matches(['(', ')']).to_owned())
                .expect("name")
        };
        let a = new_token(&hub, json!({"region": "local", "name": "dup", "uses": 2})).await;
        let b = new_token(&hub, json!({"region": "local", "name": "dup", "uses": 2})).await;
        let o = enroll(
            a["join"].as_str().expect("join"),
            &root.path().join("a"),
            &[],
        )
        .await;
        let first = enrolled_id(&o);
        assert_eq!(name_of(&o), "dup-1");
        let o = enroll(
            b["join"].as_str().expect("join"),
            &root.path().join("b"),
            &[],
        )
        .await;
        let second = name_of(&o);
        assert!(
            second.starts_with("dup-1-") && second.len() == "dup-1-".len() + 4,
            "{second}"
        );
        // A name asked for that a live spoke holds: the use number is appended.
        let o = enroll(
            a["join"].as_str().expect("join"),
            &root.path().join("c"),
            &["--name", "dup-1"],
        )
        .await;
        assert_eq!(name_of(&o), "dup-1-2");
        let names: Vec<String> = hub
            .state
            .db
            .list_spokes()
            .await
            .expect("spokes")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), 3, "{names:?}");
        // Once revoked, a spoke's name may be taken again.
        let r = hub
            .http
            .delete(hub.url(&format!("/v1/network/spokes/{first}")))
            .header("Authorization", hub.meta())
            .send()
            .await
            .expect("revoke");
        assert_eq!(r.status(), 204);
        let o = enroll(
            b["join"].as_str().expect("join"),
            &root.path().join("d"),
            &["--name", "dup-1"],
        )
        .await;
        assert_eq!(name_of(&o), "dup-1");
    }
}

/// A UDP "load balancer" in front of a hub (as an NLB forwards QUIC): every client address
/// gets its own upstream socket, datagrams are relayed both ways. Dropping the task stops it.
async fn udp_balancer(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use std::collections::HashMap;
    use std::sync::Arc;
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let addr = front.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut flows: HashMap<std::net::SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let up = match flows.get(&client) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(
                        tokio::net::UdpSocket::bind("127.0.0.1:0")
                            .await
                            .expect("bind"),
                    );
                    u.connect(upstream).await.expect("connect");
                    let (u2, front2) = (u.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_535];
                        while let Ok(n) = u2.recv(&mut buf).await {
                            let _ = front2.send_to(&buf[..n], client).await;
                        }
                    });
                    flows.insert(client, u.clone());
                    u
                }
            };
            let _ = up.send(&buf[..n]).await;
        }
    });
    (addr, task)
}

/// Several hubs behind one load balancer: join strings name the balancer
/// (`network.join_advertise`), the hub directory names each hub's own endpoint, so an enrolled
/// spoke keeps a session with every hub rather than with whichever one the balancer picked.
#[tokio::test(flavor = "multi_thread")]
async fn join_strings_name_the_load_balancer_and_sessions_go_to_each_hub() {
    let port = e2e::servers::free_port();
    let hub_quic: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (balancer, balancer_task) = udp_balancer(hub_quic).await;
    let hub = TestHub::start_with(HubOptions {
        port: Some(port),
        yaml: Some(format!("network:\n  join_advertise: {balancer}\n")),
        ..Default::default()
    })
    .await
    .expect("hub");
    let t = new_token(&hub, json!({"region": "local", "name": "lb"})).await;
    let join = t["join"].as_str().expect("join");
    assert_eq!(
        JoinString::parse(join).expect("parse").quic,
        balancer.to_string()
    );
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path().join("s");
    // Enrollment goes through the balancer ...
    let sid = enrolled_id(&enroll(join, &dir, &[]).await);
    let cfg = std::fs::read_to_string(dir.join("spoke.yaml")).expect("spoke.yaml");
    assert!(cfg.contains(&hub_quic.to_string()), "{cfg}");
    assert!(!cfg.contains(&balancer.to_string()), "{cfg}");
    // ... the session goes to the hub's own endpoint: it works with the balancer gone.
    balancer_task.abort();
    let _spoke = SpokeProc::run(dir, sid, &[]);
    wait_healthy(&hub, sid).await;
}

fn spoke_enroll() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-spoke"));
    c.arg("enroll").env("SWITCHYARD_LOG", "warn");
    c
}

/// `spoke enroll --join-file` (a file, or `-` for standard input) keeps the join string out of
/// the process list; `--listen` binds the data endpoint apart from the advertised address (a
/// cloud instance's public address is on no interface).
#[tokio::test(flavor = "multi_thread")]
async fn spoke_enroll_takes_the_join_string_from_a_file_and_listens_apart_from_its_address() {
    let hub = TestHub::start().await.expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let t = new_token(&hub, json!({"region": "local", "name": "f", "uses": 2})).await;
    let join = t["join"].as_str().expect("join").to_owned();
    let file = root.path().join("join");
    std::fs::write(&file, format!("{join}\n")).expect("join file");

    // From a file, advertising an address no interface holds while binding loopback.
    let port = e2e::servers::free_port();
    let (advertise, listen) = (format!("192.0.2.10:{port}"), format!("127.0.0.1:{port}"));
    let o = spoke_enroll()
        .arg("--join-file")
        .arg(&file)
        .arg("--data-dir")
        .arg(root.path().join("a"))
        .args(["--advertise", &advertise, "--listen", &listen])
        .output()
        .await
        .expect("enroll");
    let sid = enrolled_id(&o);
    let _spoke = SpokeProc::run(root.path().join("a"), sid, &[]);
    wait_healthy(&hub, sid).await;
    assert_eq!(spoke_view(&hub, sid).await["advertise"], advertise.as_str());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the data endpoint never listened on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // From standard input.
    let mut child = spoke_enroll()
        .args(["--join-file", "-", "--data-dir"])
        .arg(root.path().join("b"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("enroll");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(join.as_bytes()).await.expect("write");
    }
    enrolled_id(&child.wait_with_output().await.expect("enroll"));

    // Mistakes are refused before the hub is asked (the token has no use left to waste).
    let empty = root.path().join("empty");
    std::fs::write(&empty, "\n").expect("empty");
    for (args, why) in [
        (
            vec!["--join-file".into(), empty.display().to_string()],
            "holds no join string",
        ),
        (
            vec![
                join.clone(),
                "--join-file".into(),
                file.display().to_string(),
            ],
            "cannot be used with",
        ),
        (vec![], "required"),
        (
            vec![
                join.clone(),
                "--advertise".into(),
                "spoke.example.net:9443".into(),
            ],
            "add --listen",
        ),
        (
            vec![join.clone(), "--listen".into(), listen.clone()],
            "--advertise",
        ),
    ] {
        let o = spoke_enroll()
            .args(&args)
            .arg("--data-dir")
            .arg(root.path().join("c"))
            .output()
            .await
            .expect("enroll");
        assert!(!o.status.success(), "{args:?}");
        assert!(
            text(&o.stderr).contains(why),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}
