//! Regions for real (issue 12): a PostgreSQL primary in region `a`, its streaming replica in
//! region `b` 80 ms away, a hub in each. Through `b`'s hub: write-then-read pairs are never
//! stale, a read-only phase sends no request query to the primary, a commit position carried
//! across regions is honoured, a stopped replica costs no failed read, a stopped primary leaves
//! reads working and turns writes into a quick 503, `hub db promote` moves every hub to the new
//! primary without a restart, and the old primary, restarted, never receives a write. Plus a
//! lagging replica on loopback (replay paused) and the configuration mistakes.

use e2e::regions_lab::{db_calls, HubSpec, RegionsLab};
use e2e::servers::Postgres;
use e2e::{HubOptions, TestHub};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HUB: &str = env!("CARGO_BIN_EXE_e2e-hub");

/// A client of one lab hub with the application's API key.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    fn new(base: String, key: &str) -> Self {
        Client {
            http: e2e::http_client(),
            base,
            key: format!("APIKey {key}"),
        }
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .header("Authorization", &self.key)
            .timeout(Duration::from_secs(30))
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value, Option<String>) {
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let pos = resp
            .headers()
            .get("x-switchyard-position")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, pos)
    }

    async fn create_account(&self, root: &Path, name: &str) -> (StatusCode, Value, Option<String>) {
        self.json(self.req(Method::POST, "/v1/accounts").json(&json!({
            "service": "fs", "account": name, "credentials": {"root": root}
        })))
        .await
    }

    /// `/readyz`'s body, if it answered.
    async fn readyz(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// One write followed at once by a read of it; true when the read saw the write.
async fn pair(c: &Client, lab: &LabView, kind: usize, tag: &str, meta: &str) -> bool {
    let acc = lab.src;
    match kind {
        0 => {
            let (s, f, _) = c
                .json(
                    c.req(Method::POST, &format!("/v1/accounts/{acc}/storage/folders"))
                        .json(&json!({"name": tag, "parent_id": "root"})),
                )
                .await;
            assert_eq!(s, 201, "create folder: {f}");
            let id = f["id"].as_str().expect("folder id");
            let (s, g, _) = c
                .json(c.req(
                    Method::GET,
                    &format!("/v1/accounts/{acc}/storage/folders/{id}"),
                ))
                .await;
            s == 200 && g["name"] == tag
        }
        1 | 2 => {
            let (s, f, _) = c
                .json(
                    c.req(Method::POST, &format!("/v1/accounts/{acc}/storage/files"))
                        .header(
                            "X-Kloudless-Metadata",
                            json!({"name": tag, "parent_id": "root"}).to_string(),
                        )
                        .body(tag.as_bytes().to_vec()),
                )
                .await;
            assert_eq!(s, 201, "upload: {f}");
            let mut id = f["id"].as_str().expect("file id").to_owned();
            let mut want = tag.to_owned();
            if kind == 2 {
                want = format!("renamed-{tag}");
                let (s, r, _) = c
                    .json(
                        c.req(
                            Method::PATCH,
                            &format!("/v1/accounts/{acc}/storage/files/{id}"),
                        )
                        .json(&json!({"name": want})),
                    )
                    .await;
                assert_eq!(s, 200, "rename: {r}");
                id = r["id"].as_str().expect("renamed id").to_owned();
            }
            let (s, g, _) = c
                .json(c.req(
                    Method::GET,
                    &format!("/v1/accounts/{acc}/storage/files/{id}"),
                ))
                .await;
            s == 200 && g["name"] == want.as_str() && g["size"] == tag.len()
        }
        3 => {
            let root = lab.roots.join(tag);
            std::fs::create_dir_all(&root).expect("account root");
            let (s, a, _) = c.create_account(&root, tag).await;
            assert_eq!(s, 201, "create account: {a}");
            let id = a["id"].as_i64().expect("account id");
            let (s, g, _) = c
                .json(c.req(Method::GET, &format!("/v1/accounts/{id}")))
                .await;
            s == 200 && g["account"] == tag
        }
        4 => {
            let app = lab.app;
            let (s, k, _) = c
                .json(
                    c.http
                        .post(format!("{}/v1/meta/applications/{app}/apikeys", c.base))
                        .header("Authorization", format!("Bearer {meta}")),
                )
                .await;
            assert_eq!(s, 201, "create key: {k}");
            let id = k["id"].clone();
            let (s, list, _) = c
                .json(
                    c.http
                        .get(format!(
                            "{}/v1/meta/applications/{app}/apikeys?page_size=1000",
                            c.base
                        ))
                        .header("Authorization", format!("Bearer {meta}")),
                )
                .await;
            s == 200
                && list["objects"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|k| k["id"] == id))
        }
        _ => {
            let (s, t, _) = c
                .json(
                    c.req(
                        Method::POST,
                        &format!(
                            "/v1/accounts/{acc}/storage/files/{}/copy?return_type=task",
                            lab.seed_file
                        ),
                    )
                    .json(&json!({"account": lab.dst, "parent_id": "root", "name": tag})),
                )
                .await;
            assert_eq!(s, 202, "create transfer: {t}");
            let id = t["transfer"].as_i64().expect("transfer id");
            let (s, g, _) = c
                .json(c.req(Method::GET, &format!("/v1/transfers/{id}")))
                .await;
            s == 200 && g["id"] == id
        }
    }
}

/// What the pairs need to know of the lab.
struct LabView {
    src: i64,
    dst: i64,
    app: i64,
    seed_file: String,
    roots: std::path::PathBuf,
}

#[test]
fn replica_reads_are_never_stale_and_a_region_outlives_its_primary() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut lab = RegionsLab::build(
            Path::new(HUB),
            80.0,
            &[
                HubSpec {
                    name: "hub-a",
                    region: "a",
                    replica: false,
                },
                HubSpec {
                    name: "hub-b",
                    region: "b",
                    replica: true,
                },
            ],
        )
        .await
        .expect("regions lab");
        let a = Client::new(lab.hub("hub-a").base(), &lab.api_key);
        let b = Client::new(lab.hub("hub-b").base(), &lab.api_key);
        let meta_out = lab
            .cli("hub-b", &["meta-token", "create", "--name", "lab"])
            .expect("meta token");
        let meta = String::from_utf8_lossy(&meta_out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("meta token: "))
            .expect("meta token line")
            .trim()
            .to_owned();

        // Two accounts and a seed file for the transfers, through b.
        let (s, src, _) = b
            .create_account(&lab.fs_root("src").expect("fs_root"), "src")
            .await;
        assert_eq!(s, 201, "{src}");
        let (s, dst, _) = b
            .create_account(&lab.fs_root("dst").expect("fs_root"), "dst")
            .await;
        assert_eq!(s, 201, "{dst}");
        let src_id = src["id"].as_i64().expect("id");
        let (s, seed, _) = b
            .json(
                b.req(
                    Method::POST,
                    &format!("/v1/accounts/{src_id}/storage/files"),
                )
                .header(
                    "X-Kloudless-Metadata",
                    json!({"name": "seed.bin", "parent_id": "root"}).to_string(),
                )
                .body(vec![7u8; 4096]),
            )
            .await;
        assert_eq!(s, 201, "{seed}");
        let view = Arc::new(LabView {
            src: src_id,
            dst: dst["id"].as_i64().expect("id"),
            app: lab.app_id,
            seed_file: seed["id"].as_str().expect("id").to_owned(),
            roots: lab.fs_root("accounts").expect("fs_root"),
        });

        // 500 write-then-read pairs through b, 20 clients at once, six kinds of write.
        let stale = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..20usize {
            let (b, view, stale, meta) = (b.clone(), view.clone(), stale.clone(), meta.clone());
            tasks.push(tokio::spawn(async move {
                for j in 0..25usize {
                    let n = w * 25 + j;
                    let tag = format!("p{n}");
                    if !pair(&b, &view, n % 6, &tag, &meta).await {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("pair worker");
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "pairs took too long"
        );
        assert_eq!(
            stale.load(Ordering::Relaxed),
            0,
            "stale reads through b's replica"
        );

        // A read-only phase: b's request queries all go to its replica. Writes that outran
        // the replica fenced it until its monitor sees them; under a loaded machine that can
        // take a few samples, so start once b reports its replica usable three polls running.
        let settle = Instant::now();
        let mut streak = 0;
        while streak < 3 {
            assert!(
                settle.elapsed() < Duration::from_secs(30),
                "b's replica never became usable after the writes\n{}",
                b.metrics().await
            );
            let usable = b
                .metrics()
                .await
                .lines()
                .any(|l| l == "switchyard_hub_db_replica_usable 1");
            streak = if usable { streak + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let before = b.metrics().await;
        let (_, list, _) = b.json(b.req(Method::GET, "/v1/transfers")).await;
        let ids: Vec<i64> = list["objects"]
            .as_array()
            .expect("transfers")
            .iter()
            .filter_map(|t| t["id"].as_i64())
            .collect();
        assert!(!ids.is_empty());
        for id in ids.iter().cycle().take(100) {
            let (s, _, _) = b
                .json(b.req(Method::GET, &format!("/v1/transfers/{id}")))
                .await;
            assert_eq!(s, 200);
        }
        let (s, _, _) = b.json(b.req(Method::GET, "/v1/accounts")).await;
        assert_eq!(s, 200);
        let after = b.metrics().await;
        assert_eq!(
            db_calls(&after, "primary", "request"),
            db_calls(&before, "primary", "request"),
            "b's hub sent request queries to the primary during a read-only phase\n{}",
            lab.logs()
        );
        assert!(
            db_calls(&after, "replica", "request") >= db_calls(&before, "replica", "request") + 100
        );

        // Across regions: a write through a, read through b carrying the position.
        let acc_root = lab.fs_root("cross").expect("fs_root");
        for i in 0..30 {
            let name = format!("cross-{i}");
            let (s, acc, pos) = a.create_account(&acc_root, &name).await;
            assert_eq!(s, 201, "{acc}");
            let pos = pos.expect("a write answers X-Switchyard-Position");
            let id = acc["id"].as_i64().expect("id");
            let (s, g, _) = b
                .json(
                    b.req(Method::GET, &format!("/v1/accounts/{id}"))
                        .header("X-Switchyard-Position", &pos),
                )
                .await;
            assert_eq!(
                (s, g["account"].as_str()),
                (StatusCode::OK, Some(name.as_str()))
            );
        }
        let (s, e, _) = b
            .json(
                b.req(Method::GET, "/v1/accounts")
                    .header("X-Switchyard-Position", "x"),
            )
            .await;
        assert_eq!(
            (s, e["error_code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_position"))
        );

        // The replica stops: reads through b are still answered (the primary serves them).
        lab.replica.stop();
        for id in ids.iter().take(20) {
            let (s, body, _) = b
                .json(b.req(Method::GET, &format!("/v1/transfers/{id}")))
                .await;
            assert_eq!(s, 200, "read with the replica stopped: {body}");
        }
        let bb = &b;
        let degraded = within(Duration::from_secs(5), || async move {
            let b = bb;
            let r = b.readyz().await?;
            (r["status"] == "degraded" && r["database"]["replica"] == "unreachable").then_some(r)
        })
        .await;
        assert!(degraded.is_some(), "readyz reports the replica down");
        lab.replica.restart().await.expect("replica back");
        within(Duration::from_secs(15), || async move {
            let b = bb;
            let r = b.readyz().await?;
            (r["status"] == "ok").then_some(())
        })
        .await
        .expect("replica usable again");

        // Promotion is refused while the primary answers; status names both servers.
        let refused = lab.cli_raw("hub-b", &["db", "promote"]).expect("cli_raw");
        assert!(!refused.status.success());
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(why.contains("still answers"), "{why}");
        let status: Value = serde_json::from_slice(
            &lab.cli("hub-b", &["db", "status", "--json"])
                .expect("an answer")
                .stdout,
        )
        .expect("status json");
        assert_eq!(status["primary"], lab.primary.host_port().as_str());
        assert_eq!(status["timeline"], 1);
        let rep = status["servers"]
            .as_array()
            .expect("an answer")
            .iter()
            .find(|s| s["host"] == lab.replica.host_port().as_str())
            .expect("replica row")
            .clone();
        assert_eq!(rep["role"], "replica", "{status}");
        assert!(rep["lag_bytes"].is_u64(), "{status}");
        assert_eq!(
            status["standbys"].as_array().map(Vec::len),
            Some(1),
            "{status}"
        );

        // The primary's region is lost: reads through b go on, writes fail fast and clearly.
        lab.primary.stop();
        for id in ids.iter().take(20) {
            let (s, body, _) = b
                .json(b.req(Method::GET, &format!("/v1/transfers/{id}")))
                .await;
            assert_eq!(s, 200, "read with the primary stopped: {body}");
        }
        let t0 = Instant::now();
        let resp = b
            .req(Method::POST, "/v1/accounts")
            .json(&json!({"service": "fs", "account": "lost", "credentials": {"root": acc_root}}))
            .send()
            .await
            .expect("write");
        let took = t0.elapsed();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        let body: Value = resp.json().await.expect("the call");
        assert_eq!(body["error_code"], "database_unavailable", "{body}");
        assert!(took < Duration::from_secs(3), "503 after {took:?}");

        // The operator promotes b's replica; both hubs write to it without a restart.
        let promoted = lab.cli("hub-b", &["db", "promote"]).expect("promote");
        let said = String::from_utf8_lossy(&promoted.stdout);
        assert!(said.contains("timeline 2"), "{said}");
        let mut after_promotion = Vec::new();
        for (c, who) in [(&a, "a"), (&b, "b")] {
            let name = format!("after-promotion-{who}");
            let (name, acc_root) = (&name, &acc_root);
            let ok = within(Duration::from_secs(15), || async move {
                let (s, acc, _) = c.create_account(acc_root, name).await;
                (s == 201).then(|| acc["id"].as_i64())?
            })
            .await;
            after_promotion.push(
                ok.unwrap_or_else(|| panic!("{who} writes after the promotion\n{}", lab.logs())),
            );
        }

        // The old primary comes back as it was (timeline 1): no hub writes to it.
        lab.primary.restart().await.expect("old primary back");
        let t0 = Instant::now();
        let mut n = 0;
        while t0.elapsed() < Duration::from_secs(4) {
            for (c, who) in [(&a, "a"), (&b, "b")] {
                let (s, acc, _) = c
                    .create_account(&acc_root, &format!("after-restart-{who}-{n}"))
                    .await;
                assert_eq!(s, 201, "{acc}");
            }
            n += 1;
        }
        let on_old = lab
            .primary
            .sql("SELECT count(*) FROM accounts WHERE name LIKE 'after-%'")
            .await
            .expect("an answer");
        let on_new = lab
            .replica
            .sql("SELECT count(*) FROM accounts WHERE name LIKE 'after-%'")
            .await
            .expect("an answer");
        assert_eq!(
            on_old, "0",
            "rows written after the promotion reached the old primary"
        );
        assert_eq!(on_new, (2 * n + 2).to_string());
        let status: Value = serde_json::from_slice(
            &lab.cli("hub-a", &["db", "status", "--json"])
                .expect("an answer")
                .stdout,
        )
        .expect("an answer");
        assert_eq!(
            status["primary"],
            lab.replica.host_port().as_str(),
            "{status}"
        );
        assert_eq!(status["timeline"], 2);
    });
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `limit`.
async fn within<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica that stops replaying (paused on purpose): a write's visibility wait ends at its
/// bound, the read after it is still fresh (from the primary), `/readyz` reports the lag, and
/// once replay resumes reads go back to the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_never_serves_a_stale_read() {
    // Warnings (a 500's cause) land in the test output.
    shared::logging::init("warn", false);
    let primary = Postgres::start().await.expect("primary");
    let replica = primary
        .replica("lagging", None, None)
        .await
        .expect("replica");
    let hub = TestHub::start_with(HubOptions {
        database_url: Some(primary.url()),
        yaml: Some(format!(
            "database:\n  url: \"{}\"\n  replica_url: \"{}\"\n  read_your_writes_wait_ms: 300\n  \
             max_replica_lag_ms: 800\n",
            primary.url(),
            replica.url()
        )),
        ..HubOptions::default()
    })
    .await
    .expect("hub");
    let c = Client::new(hub.base_url.clone(), &hub.creds.api_key);
    let cc = &c;
    let ready = || async move {
        let r = cc.readyz().await?;
        (r["status"] == "ok").then_some(())
    };
    // Until its first heartbeat shows on the replica, the hub does not read it.
    within(Duration::from_secs(5), ready)
        .await
        .expect("replica measured and usable");
    let root = hub.new_fs_root("lag").expect("new_fs_root");
    // In step: the write waits for the replica, and the position comes from it.
    let (s, acc, pos) = c.create_account(&root, "fresh").await;
    assert_eq!(s, 201, "{acc}");
    assert!(pos.is_some_and(|p| p.starts_with("1:")));

    within(Duration::from_secs(5), ready)
        .await
        .expect("replica usable before the pause");
    replica
        .sql("SELECT pg_wal_replay_pause()")
        .await
        .expect("the call");
    let t0 = Instant::now();
    let (s, acc, _) = c.create_account(&root, "while-paused").await;
    assert_eq!(s, 201, "{acc}");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the write waited for the replica"
    );
    let id = acc["id"].as_i64().expect("id");
    let before = c.metrics().await;
    for _ in 0..5 {
        let (s, g, _) = c
            .json(c.req(Method::GET, &format!("/v1/accounts/{id}")))
            .await;
        assert_eq!(
            (s, g["account"].as_str()),
            (StatusCode::OK, Some("while-paused"))
        );
        let (s, l, _) = c.json(c.req(Method::GET, "/v1/accounts")).await;
        assert_eq!(s, 200);
        assert!(l["objects"]
            .as_array()
            .expect("an answer")
            .iter()
            .any(|a| a["id"] == id));
    }
    let after = c.metrics().await;
    assert_eq!(
        db_calls(&after, "replica", "request"),
        db_calls(&before, "replica", "request"),
        "a fenced replica was read"
    );
    let lagging = within(Duration::from_secs(5), || async move {
        let c = cc;
        let r = c.readyz().await?;
        (r["status"] == "degraded" && r["database"]["replica"] == "lagging").then_some(())
    })
    .await;
    assert!(lagging.is_some(), "readyz reports the lagging replica");

    replica
        .sql("SELECT pg_wal_replay_resume()")
        .await
        .expect("the call");
    let back = within(Duration::from_secs(10), || async move {
        let c = cc;
        let before = db_calls(&c.metrics().await, "replica", "request");
        let (s, _, _) = c.json(c.req(Method::GET, "/v1/accounts")).await;
        (s == 200 && db_calls(&c.metrics().await, "replica", "request") > before).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "reads return to the replica once it caught up"
    );
    hub.stop().await.expect("the call");
}

/// Configuration mistakes name the key: a replica with SQLite, a "replica" that is a primary,
/// an unreachable replica at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_configuration_mistakes_name_the_key() {
    use hub::db::Db;
    let routing = hub::config::DatabaseConfig::default().routing();
    let e = Db::connect_routed(
        "sqlite::memory:",
        Some("postgres://u@127.0.0.1:1/db"),
        routing.clone(),
    )
    .await
    .expect_err("a replica with SQLite is refused");
    assert_eq!(e.0, "database.replica_url", "{e:?}");
    assert!(e.1.contains("SQLite"), "{e:?}");

    let primary = Postgres::start().await.expect("primary");
    let other = Postgres::start().await.expect("another primary");
    let e = Db::connect_routed(&primary.url(), Some(&other.url()), routing.clone())
        .await
        .expect_err("a primary as the replica is refused");
    assert_eq!(e.0, "database.replica_url", "{e:?}");
    assert!(
        e.1.contains("is a primary, not a streaming replica"),
        "{e:?}"
    );

    let port = e2e::servers::free_port();
    let t0 = Instant::now();
    let e = Db::connect_routed(
        &primary.url(),
        Some(&format!(
            "postgres://switchyard@127.0.0.1:{port}/switchyard"
        )),
        routing.clone(),
    )
    .await
    .expect_err("an unreachable replica is refused");
    assert_eq!(e.0, "database.replica_url", "{e:?}");
    assert!(e.1.contains("cannot be reached"), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // And through the command line, the same words.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("hub.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: \"{}\"\ndatabase:\n  replica_url: \"{}\"\n",
            dir.path().display(),
            other.url()
        ),
    )
    .expect("an answer");
    let out = std::process::Command::new(HUB)
        .arg("--config")
        .arg(&cfg)
        .args(["db", "status"])
        .output()
        .expect("an answer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database.replica_url") && err.contains("SQLite"),
        "{err}"
    );
}
