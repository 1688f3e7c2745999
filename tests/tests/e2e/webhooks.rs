//! Webhooks (issue 14) against a receiver written in the test: the seed-000 signature checked
//! byte for byte and the Standard Webhooks one; the test request at creation (a wrong echo is
//! a 400); SSRF refusals; a receiver failing then recovering; bursts coalescing while the feed
//! keeps every event; 410 and failing for too long disabling; manual retry; Redis SIGKILLed
//! and restarted empty with deliveries pending; two hubs sharing Redis notifying once.

use e2e::call;
use e2e::servers::{Postgres, RedisServer};
use e2e::webhook_receiver::{Answer, Received, Receiver};
use e2e::{HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Short timings so retries and disabling happen within a test.
pub(crate) const FAST: &str =
    "webhooks:\n  timeout: 2s\n  retry_schedule: [0ms, 200ms, 400ms, 800ms]\n  \
                    reconcile_every: 100ms\n  requeue_after: 3s\n";

/// Adds a webhook for the hub's dev application; returns its JSON (with the secret).
async fn add_webhook(hub: &TestHub, url: &str) -> (u16, Value) {
    let app = hub.creds.application_id;
    call(
        hub,
        Method::POST,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks"),
        Some(json!({ "url": url })),
    )
    .await
}

async fn upload(hub: &TestHub, account: i64, name: &str) {
    hub.upload(account, "root", name, name.as_bytes().to_vec())
        .await
        .expect("upload");
}

fn notifications(got: &[Received]) -> Vec<&Received> {
    got.iter().filter(|r| r.account().is_some()).collect()
}

async fn deliveries(hub: &TestHub, hook: i64) -> Vec<Value> {
    let app = hub.creds.application_id;
    let (s, v) = call(
        hub,
        Method::GET,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{hook}/deliveries?page_size=1000"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["objects"].as_array().expect("objects").clone()
}

#[tokio::test]
async fn signed_notifications_reach_a_receiver_that_verifies_them() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(FAST.into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let app = hub.creds.application_id;
    let rx = Receiver::start(app).await;
    let (s, hook) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 201, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(hook["active"], true);
    // The test request came first: empty body, both signatures valid.
    let got = rx.got();
    assert_eq!(got.len(), 1, "one test request");
    assert!(got[0].body.is_empty());
    assert!(got[0].kloudless_signature_ok(&hub.creds.api_key));
    assert!(got[0].standard_signature_ok(&secret));
    // The secret is never shown again.
    let id = hook["id"].as_i64().expect("id");
    let (s, v) = call(
        &hub,
        Method::GET,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("secret").is_none(), "{v}");
    let (s, v) = call(
        &hub,
        Method::GET,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["objects"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["objects"][0].get("secret").is_none(), "{v}");

    let acc = hub.creds.account_id;
    upload(&hub, acc, "a.txt").await;
    assert!(
        rx.wait_for(Duration::from_secs(10), |g| !notifications(g).is_empty())
            .await,
        "no notification within 10 s"
    );
    let got = rx.got();
    let n = notifications(&got)[0];
    assert_eq!(n.body.as_ref(), format!("account={acc}").as_bytes());
    assert_eq!(
        n.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(n
        .header("user-agent")
        .is_some_and(|u| u.starts_with("Switchyard-Webhooks/")));
    assert!(
        n.kloudless_signature_ok(&hub.creds.api_key),
        "X-Kloudless-Signature"
    );
    assert!(
        !n.kloudless_signature_ok("sk_wrong"),
        "a wrong key must not verify"
    );
    assert!(n.standard_signature_ok(&secret), "webhook-signature");
    let ts: i64 = n
        .header("webhook-timestamp")
        .expect("ts")
        .parse()
        .expect("ts number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now - ts).abs() < 60, "timestamp {ts} vs now {now}");

    // The attempt log shows it (once the hub has settled it, just after the answer).
    let shown = Instant::now();
    loop {
        let d = deliveries(&hub, id).await;
        if d.iter()
            .any(|a| a["success"] == true && a["status"] == 200 && a["account"] == acc)
        {
            break;
        }
        assert!(shown.elapsed() < Duration::from_secs(5), "{d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleting the webhook stops notifications.
    let (s, _) = call(
        &hub,
        Method::DELETE,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let before = rx.count();
    upload(&hub, acc, "b.txt").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), before, "a deleted webhook was notified");
}

#[tokio::test]
async fn creation_checks_the_url_and_the_echo() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(FAST.into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let app = hub.creds.application_id;
    let rx = Receiver::start(app).await;

    rx.answer(Answer::Status(200, "not-the-app-id".into(), None));
    let (s, v) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("not-the-app-id") && m.contains(&app.to_string())),
        "{v}"
    );
    assert!(v["error_code"].is_string() && v["id"].is_string(), "{v}");

    rx.answer(Answer::Status(500, "boom".into(), None));
    let (s, v) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("500")),
        "{v}"
    );

    // A redirect is not followed (it could point anywhere), and an answer slower than
    // `webhooks.timeout` (2 s here) fails.
    rx.answer(Answer::Status(302, String::new(), None));
    let (s, v) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("302")),
        "{v}"
    );
    rx.answer(Answer::Slow(Duration::from_secs(4)));
    let (s, v) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("timed out")),
        "{v}"
    );

    // Nothing listening.
    let closed = format!("http://127.0.0.1:{}/", e2e::servers::free_port());
    let (s, v) = add_webhook(&hub, &closed).await;
    assert_eq!(s, 400, "{v}");

    for bad in [
        "ftp://example.com/",
        "not a url",
        "http://user:pw@127.0.0.1/",
        "file:///etc/passwd",
    ] {
        let (s, v) = add_webhook(&hub, bad).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (s, v) = add_webhook(&hub, &"http://a.example/".repeat(200)).await;
    assert_eq!(s, 400, "{v}");
    // Unknown application, and no meta token.
    let (s, _) = call(
        &hub,
        Method::POST,
        &hub.meta(),
        "/v1/meta/applications/999999/webhooks",
        Some(json!({"url": rx.url()})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &hub,
        Method::POST,
        &hub.apikey(),
        &format!("/v1/meta/applications/{app}/webhooks"),
        Some(json!({"url": rx.url()})),
    )
    .await;
    assert_eq!(s, 401);
    // Nothing was saved.
    let (_, v) = call(
        &hub,
        Method::GET,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks"),
        None,
    )
    .await;
    assert_eq!(v["objects"].as_array().map(Vec::len), Some(0), "{v}");

    rx.answer(Answer::Echo);
    let (s, v) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn internal_webhook_addresses_are_refused() {
    let hub = TestHub::start_with(HubOptions {
        ssrf_guard: true,
        ..Default::default()
    })
    .await
    .expect("hub");
    let rx = Receiver::start(hub.creds.application_id).await;
    for url in [
        rx.url(),
        format!("http://localhost:{}/hook", rx.addr.port()),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/".into(),
        "http://[::1]/".into(),
        "http://[::ffff:127.0.0.1]/".into(),
        "http://0.0.0.0/".into(),
    ] {
        let (s, v) = add_webhook(&hub, &url).await;
        assert_eq!(s, 400, "{url}: {v}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("internal")),
            "{url}: {v}"
        );
    }
    assert_eq!(rx.count(), 0, "a refused URL was contacted");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_notification_once_it_recovers() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(FAST.into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let app = hub.creds.application_id;
    let rx = Receiver::start(app).await;
    let (s, hook) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 201, "{hook}");
    let id = hook["id"].as_i64().expect("id");
    rx.answer(Answer::Status(500, "down".into(), None));
    let acc = hub.creds.account_id;
    upload(&hub, acc, "a.txt").await;
    // It fails for 3 s (several retries on the 200/400/800 ms schedule)...
    let start = Instant::now();
    assert!(
        rx.wait_for(Duration::from_secs(10), |g| notifications(g).len() >= 3)
            .await
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(start.elapsed())).await;
    let failing = notifications(&rx.got()).len();
    let (_, v) = call(
        &hub,
        Method::GET,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{id}"),
        None,
    )
    .await;
    assert!(v["failing_since"].is_string(), "{v}");
    assert_eq!(v["active"], true, "{v}");
    // ...then recovers: the next retry (at most 800 ms later) succeeds.
    rx.answer(Answer::Echo);
    let recovered = Instant::now();
    let d = loop {
        let d = deliveries(&hub, id).await;
        if d.iter().any(|a| a["success"] == true) {
            break d;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(10),
            "no success after recovery: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = rx.got();
    let all = notifications(&got);
    assert!(all.len() > failing);
    // Every attempt of this notification carried the same webhook-id.
    let ids: std::collections::HashSet<_> =
        all.iter().filter_map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let failed: Vec<_> = d.iter().filter(|a| a["success"] == false).collect();
    assert!(failed.len() >= 3, "{d:?}");
    assert!(failed.iter().all(|a| a["status"] == 500), "{d:?}");
    let (_, v) = call(
        &hub,
        Method::GET,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{id}"),
        None,
    )
    .await;
    assert!(v["failing_since"].is_null(), "{v}");

    // Retry-After is honoured: asked for 2 s, the next attempt waits that long, not 200 ms.
    rx.answer(Answer::Status(503, "busy".into(), Some("2".into())));
    let before = notifications(&rx.got()).len();
    upload(&hub, acc, "b.txt").await;
    assert!(
        rx.wait_for(Duration::from_secs(10), |g| notifications(g).len() > before)
            .await
    );
    rx.answer(Answer::Echo);
    assert!(
        rx.wait_for(Duration::from_secs(10), |g| notifications(g).len()
            > before + 1)
            .await
    );
    let got = rx.got();
    let all = notifications(&got);
    let gap = all[before + 1].at.duration_since(all[before].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After 2 ignored: retried after {gap:?}"
    );

    // A manual retry of a delivery sends its account's notification again.
    let d = deliveries(&hub, id).await;
    let last = d[0]["id"].as_i64().expect("delivery id");
    let n = rx.count();
    let (s, v) = call(
        &hub,
        Method::POST,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{id}/deliveries/{last}/retry"),
        None,
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert!(
        rx.wait_for(Duration::from_secs(10), |g| g.len() > n).await,
        "the retry sent nothing"
    );
    let (s, _) = call(
        &hub,
        Method::POST,
        &hub.meta(),
        &format!("/v1/meta/applications/{app}/webhooks/{id}/deliveries/999999/retry"),
        None,
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn gone_and_long_failing_webhooks_are_disabled_with_the_reason() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(format!("{FAST}  disable_after: 2s\n")),
        ..Default::default()
    })
    .await
    .expect("hub");
    let app = hub.creds.application_id;
    let acc = hub.creds.account_id;
    let get = |id: i64| {
        let hub = &hub;
        async move {
            call(
                hub,
                Method::GET,
                &hub.meta(),
                &format!("/v1/meta/applications/{app}/webhooks/{id}"),
                None,
            )
            .await
            .1
        }
    };
    let wait_disabled = |id: i64| {
        let get = &get;
        async move {
            let start = Instant::now();
            loop {
                let v = get(id).await;
                if v["active"] == false {
                    return v;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "not disabled: {v}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    let gone = Receiver::start(app).await;
    let (_, h1) = add_webhook(&hub, &gone.url()).await;
    let h1 = h1["id"].as_i64().expect("id");
    gone.answer(Answer::Status(410, "gone".into(), None));
    upload(&hub, acc, "a.txt").await;
    let v = wait_disabled(h1).await;
    assert!(
        v["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{v}"
    );
    assert!(v["disabled"].is_string(), "{v}");
    let n = gone.count();
    upload(&hub, acc, "b.txt").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(gone.count(), n, "a disabled webhook was notified");
    // A manual retry of a disabled webhook says why it cannot.
    let d = deliveries(&hub, h1).await;
    let (s, v) = call(
        &hub,
        Method::POST,
        &hub.meta(),
        &format!(
            "/v1/meta/applications/{app}/webhooks/{h1}/deliveries/{}/retry",
            d[0]["id"]
        ),
        None,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error_code"], "webhook_disabled", "{v}");

    let failing = Receiver::start(app).await;
    let (_, h2) = add_webhook(&hub, &failing.url()).await;
    let h2 = h2["id"].as_i64().expect("id");
    failing.answer(Answer::Status(500, "down".into(), None));
    upload(&hub, acc, "c.txt").await;
    let v = wait_disabled(h2).await;
    let reason = v["disabled_reason"].as_str().expect("reason");
    assert!(
        reason.contains("failed for 2s") && reason.contains("500"),
        "{v}"
    );
}

#[tokio::test]
async fn bursts_coalesce_and_the_receiver_still_reads_every_event() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(FAST.into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let app = hub.creds.application_id;
    let acc = hub.creds.account_id;
    let rx = Receiver::start(app).await;
    let (s, _) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 201);
    // The app's cursor: where it starts reading.
    let (_, v) = call(
        &hub,
        Method::GET,
        &hub.apikey(),
        &format!("/v1/accounts/{acc}/events/latest"),
        None,
    )
    .await;
    let mut cursor = v["cursor"].as_str().expect("cursor").to_owned();

    // 100 uploads, 10 at a time; the receiver reads the feed after each notification, as an
    // application does.
    let uploads = async {
        let mut tasks = Vec::new();
        for w in 0..10 {
            let hub = &hub;
            tasks.push(async move {
                for j in 0..10 {
                    upload(hub, acc, &format!("f{w}-{j}.txt")).await;
                }
            });
        }
        futures::future::join_all(tasks).await;
    };
    let mut read = 0usize;
    let mut handled = 0usize;
    let reader = async {
        let start = Instant::now();
        // Until 100 events were read and no notification came for 2 s (bounded: 60 s).
        let mut quiet_since = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let got = rx.got();
            let ns = notifications(&got).len();
            if ns > handled {
                handled = ns;
                quiet_since = Instant::now();
                loop {
                    let (s, v) = call(
                        &hub,
                        Method::GET,
                        &hub.apikey(),
                        &format!("/v1/accounts/{acc}/events?cursor={cursor}&page_size=1000"),
                        None,
                    )
                    .await;
                    assert_eq!(s, 200, "{v}");
                    let objs = v["objects"].as_array().expect("objects").len();
                    cursor = v["cursor"].as_str().expect("cursor").to_owned();
                    read += objs;
                    if objs == 0 {
                        break;
                    }
                }
            } else if read >= 100 && quiet_since.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::join!(uploads, reader);
    assert_eq!(
        read, 100,
        "the receiver read {read} of 100 events through its notifications"
    );
    assert!(
        handled < 50,
        "{handled} notifications for 100 uploads: bursts must coalesce"
    );
    assert!(handled >= 1);
}

/// A hub sharing `redis` and, optionally, a PostgreSQL.
async fn hub_with_redis(redis: &RedisServer, pg: Option<&Postgres>, extra: &str) -> TestHub {
    TestHub::start_with(HubOptions {
        database_url: pg.map(Postgres::url),
        yaml: Some(format!("{FAST}{extra}redis:\n  url: \"{}\"\n", redis.url())),
        ..Default::default()
    })
    .await
    .expect("hub with redis")
}

/// Connects `n` more `fs` accounts of the dev application; returns their ids.
async fn accounts(hub: &TestHub, n: usize, tag: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..n {
        let root = hub.new_fs_root(&format!("{tag}{i}")).expect("root");
        let v = hub
            .connect("fs", json!({ "root": root }))
            .await
            .expect("connect");
        out.push(v["id"].as_i64().expect("account id"));
    }
    out
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_loses_no_pending_delivery() {
    let mut redis = RedisServer::start().await.expect("redis");
    // One delivery at a time to a slow receiver: the rest of the work waits in Redis.
    let hub = hub_with_redis(&redis, None, "  concurrency: 1\n").await;
    let app = hub.creds.application_id;
    let rx = Receiver::start(app).await;
    let (s, _) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 201);
    let accs = accounts(&hub, 20, "r").await;

    // Part 1: work queued in Redis when it dies is not lost.
    rx.answer(Answer::Slow(Duration::from_millis(300)));
    for a in &accs {
        upload(&hub, *a, "w.txt").await;
    }
    let key = format!("switchyard:{}:webhooks", hub.state.config.region);
    let queued = Instant::now();
    loop {
        let len = redis.command(&format!("XLEN {key}")).await.expect("xlen");
        let n: i64 = len.trim().trim_start_matches(':').parse().unwrap_or(0);
        if n >= 5 {
            break;
        }
        assert!(
            queued.elapsed() < Duration::from_secs(10),
            "the work never queued up in Redis ({len})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill();
    redis.restart().await.expect("redis restart");
    assert_eq!(redis.command("DBSIZE").await.expect("dbsize").trim(), ":0");
    rx.answer(Answer::Echo);
    let ok = rx
        .wait_for(Duration::from_secs(30), |g| {
            let s: std::collections::HashSet<_> = notifications(g)
                .iter()
                .filter_map(|r| r.account())
                .collect();
            accs.iter().all(|a| s.contains(a))
        })
        .await;
    assert!(ok, "work queued in the Redis that died was lost");

    // Part 2: notifications failing (pending retries) when Redis dies all arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark0 = rx.count();
    rx.answer(Answer::Status(500, "down".into(), None));
    for a in &accs {
        upload(&hub, *a, "x.txt").await;
    }
    // Every account's notification was tried and failed (so they are pending)...
    assert!(
        rx.wait_for(Duration::from_secs(20), |g| {
            let s: std::collections::HashSet<_> = g[mark0.min(g.len())..]
                .iter()
                .filter_map(|r| r.account())
                .collect();
            accs.iter().all(|a| s.contains(a))
        })
        .await
    );
    // ...then Redis dies and comes back empty, and the receiver recovers.
    redis.kill();
    redis.restart().await.expect("redis restart");
    assert_eq!(redis.command("DBSIZE").await.expect("dbsize").trim(), ":0");
    let mark = rx.count();
    rx.answer(Answer::Echo);
    let ok = rx
        .wait_for(Duration::from_secs(30), |g| {
            let s: std::collections::HashSet<_> = g[mark.min(g.len())..]
                .iter()
                .filter_map(|r| r.account())
                .collect();
            accs.iter().all(|a| s.contains(a))
        })
        .await;
    assert!(
        ok,
        "not every pending notification arrived after the Redis restart"
    );
    // And new work flows through the new Redis.
    let n = rx.count();
    upload(&hub, accs[0], "y.txt").await;
    assert!(rx.wait_for(Duration::from_secs(10), |g| g.len() > n).await);
    let m = hub.state.metrics.render();
    assert!(m.contains("switchyard_hub_webhook_queue_push"), "metrics");
}

#[tokio::test]
async fn two_hubs_sharing_redis_notify_each_change_once() {
    let redis = RedisServer::start().await.expect("redis");
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("dir");
    let yaml = |extra: &str| format!("{FAST}redis:\n  url: \"{}\"\n{extra}", redis.url());
    let a = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        dir: Some(dir.path().join("a")),
        yaml: Some(yaml("")),
        ..Default::default()
    })
    .await
    .expect("hub a");
    // B shares A's master key (it opens A's accounts and keys) and allows A's `fs` roots.
    let b = a
        .start_peer(pg.url(), dir.path().join("b"), &yaml(""))
        .await
        .expect("hub b");
    let app = a.creds.application_id;
    let rx = Receiver::start(app).await;
    let (s, _) = add_webhook(&a, &rx.url()).await;
    assert_eq!(s, 201);
    let accs = accounts(&a, 40, "t").await;
    // One change per account, alternating hubs (b uses a's application key: one database).
    let b_key = format!("APIKey {}", a.creds.api_key);
    for (i, acc) in accs.iter().enumerate() {
        if i % 2 == 0 {
            upload(&a, *acc, "x.txt").await;
        } else {
            let meta = json!({ "name": "x.txt", "parent_id": "root" }).to_string();
            let r = b
                .http
                .post(b.url(&format!("/v1/accounts/{acc}/storage/files")))
                .header("Authorization", &b_key)
                .header("X-Kloudless-Metadata", meta)
                .body("x")
                .send()
                .await
                .expect("upload via b");
            assert_eq!(r.status(), 201);
        }
    }
    assert!(
        rx.wait_for(Duration::from_secs(30), |g| {
            let s: std::collections::HashSet<_> = notifications(g)
                .iter()
                .filter_map(|r| r.account())
                .collect();
            accs.iter().all(|a| s.contains(a))
        })
        .await,
        "not every account was notified"
    );
    // Quiet for a moment, then count: each account once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut per: HashMap<i64, usize> = HashMap::new();
    for r in notifications(&rx.got()) {
        *per.entry(r.account().expect("account")).or_default() += 1;
    }
    let dup: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "notified more than once: {dup:?}");
    assert_eq!(per.len(), accs.len());
}

/// A receiver that reads the feed as soon as it is told must find the event: with the region's
/// replica paused, the notification waits until the replica shows the event (here, until
/// replay resumes), not just until the primary committed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_wait_until_the_replica_shows_the_event() {
    let primary = Postgres::start().await.expect("primary");
    let replica = primary.replica("hooks", None, None).await.expect("replica");
    let hub = TestHub::start_with(HubOptions {
        database_url: Some(primary.url()),
        yaml: Some(format!(
            "{FAST}database:\n  url: \"{}\"\n  replica_url: \"{}\"\n  read_your_writes_wait_ms: 5000\n  \
             max_replica_lag_ms: 4000\n",
            primary.url(),
            replica.url()
        )),
        ..HubOptions::default()
    })
    .await
    .expect("hub");
    let ready = || async {
        let r = hub
            .http
            .get(hub.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        r.json::<Value>().await.expect("json")["status"] == "ok"
    };
    let t = Instant::now();
    while !ready().await {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "replica never usable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = hub.creds.application_id;
    let acc = hub.creds.account_id;
    let rx = Receiver::start(app).await;
    let (s, v) = add_webhook(&hub, &rx.url()).await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = call(
        &hub,
        Method::GET,
        &hub.apikey(),
        &format!("/v1/accounts/{acc}/events/latest"),
        None,
    )
    .await;
    let cursor = v["cursor"].as_str().expect("cursor").to_owned();

    replica
        .sql("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause");
    let upload = async {
        upload(&hub, acc, "paused.txt").await;
    };
    let resume = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at = Instant::now();
        replica
            .sql("SELECT pg_wal_replay_resume()")
            .await
            .expect("resume");
        at
    };
    let ((), resumed) = tokio::join!(upload, resume);
    assert!(
        rx.wait_for(Duration::from_secs(10), |g| !notifications(g).is_empty())
            .await,
        "no notification"
    );
    let got = rx.got();
    let n = notifications(&got)[0];
    assert!(
        n.at >= resumed,
        "notified {:?} before the replica could show the event",
        resumed.duration_since(n.at)
    );
    let (s, v) = call(
        &hub,
        Method::GET,
        &hub.apikey(),
        &format!("/v1/accounts/{acc}/events?cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["objects"].as_array().map(Vec::len), Some(1), "{v}");
}
