//! Provider budgets shared by the cluster: two hubs (one PostgreSQL, one Redis) and a spoke in
//! front of a rate-limited WebDAV provider (`e2e::throttle`, a recording proxy before `rclone
//! serve webdav`). One `429 Retry-After: 7` keeps every process off the provider for 7 s; a
//! budget of 20 requests per second holds across both hubs at the provider; Redis killed means
//! local pacing and no error.

use crate::offload::{s3_creds, transfer, until};
use crate::spokes::{wait_healthy, SpokeProc};
use e2e::servers::{Postgres, RedisServer, S3Server, WebDavServer};
use e2e::throttle::{Seen, Throttle};
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

struct Cluster {
    redis: RedisServer,
    _pg: Postgres,
    _dir: tempfile::TempDir,
    a: TestHub,
    b: TestHub,
    dav: WebDavServer,
    provider: Throttle,
    /// The WebDAV account (through the provider), of the dev application.
    account: i64,
}

/// Two hubs sharing a database and `redis`, with `budgets` (YAML under `budgets:`) and `extra`
/// top-level YAML, and a WebDAV account behind the recording provider.
async fn cluster(redis: RedisServer, budgets: &str, extra: &str) -> Cluster {
    let pg = Postgres::start().await.expect("postgres");
    let dir = tempfile::tempdir().expect("dir");
    let yaml = format!(
        "redis:\n  url: \"{}\"\nbudgets:\n{budgets}{extra}",
        redis.url()
    );
    let a = TestHub::start_with(HubOptions {
        database_url: Some(pg.url()),
        dir: Some(dir.path().join("a")),
        yaml: Some(yaml.clone()),
        ..Default::default()
    })
    .await
    .expect("hub a");
    let b = a
        .start_peer(pg.url(), dir.path().join("b"), &yaml)
        .await
        .expect("hub b");
    let dav = WebDavServer::start().await.expect("webdav");
    let provider = Throttle::start(&dav.endpoint()).await.expect("provider");
    let account = a
        .connect(
            "webdav",
            json!({"endpoint": provider.endpoint(), "username": dav.username(),
                   "password": dav.password()}),
        )
        .await
        .expect("webdav account")["id"]
        .as_i64()
        .expect("id");
    Cluster {
        redis,
        _pg: pg,
        _dir: dir,
        a,
        b,
        dav,
        provider,
        account,
    }
}

impl Cluster {
    /// The id of the file `name` in the account's root.
    async fn file_id(&self, name: &str) -> String {
        let list: Value = self
            .a
            .req(
                reqwest::Method::GET,
                &self.a.url(&format!(
                    "/v1/accounts/{}/storage/folders/root/contents",
                    self.account
                )),
            )
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        list["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .find(|o| o["name"] == name)
            .and_then(|o| o["id"].as_str())
            .expect("the file is listed")
            .to_owned()
    }
}

/// One answer a client got.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    hub: char,
    status: u16,
    code: Option<String>,
    retry_after: Option<u64>,
    remaining: Option<u64>,
}

/// `loops` clients per hub asking for the metadata of `file` (one PROPFIND at the provider
/// each) until `until`; bounded by count too.
async fn hammer(c: &Cluster, file: &str, loops: usize, until: Instant) -> Vec<Answer> {
    let mut tasks = tokio::task::JoinSet::new();
    for (name, hub) in [('a', &c.a), ('b', &c.b)] {
        for _ in 0..loops {
            let url = hub.url(&format!("/v1/accounts/{}/storage/files/{file}", c.account));
            let http = hub.http.clone();
            let key = c.a.apikey();
            tasks.spawn(async move {
                let mut out = Vec::new();
                for _ in 0..5_000 {
                    if Instant::now() >= until {
                        break;
                    }
                    let r = http
                        .get(&url)
                        .header("Authorization", &key)
                        .send()
                        .await
                        .expect("request");
                    let status = r.status().as_u16();
                    let header = |n: &str| {
                        r.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                    };
                    let (retry_after, remaining) =
                        (header("retry-after"), header("x-ratelimit-remaining"));
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let code = body["error_code"].as_str().map(str::to_owned);
                    out.push(Answer {
                        at: Instant::now(),
                        hub: name,
                        status,
                        code,
                        retry_after,
                        remaining,
                    });
                    if status == 429 {
                        // A client that honours Retry-After would wait; this one keeps asking
                        // (a little later) to show nothing reaches the provider meanwhile.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                out
            });
        }
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("client task"));
    }
    all.sort_by_key(|a| a.at);
    all
}

fn in_window(seen: &[Seen], from: Instant, to: Instant) -> Vec<&Seen> {
    seen.iter().filter(|s| s.at > from && s.at < to).collect()
}

/// One `429 Retry-After: 7` from the provider, answered to one request of one hub: for 7 s no
/// process (either hub, the spoke running a transfer from the provider) sends it anything.
/// Clients of both hubs get our `429 rate_limited` with `Retry-After` meanwhile; afterwards the
/// requests and the transfer go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_retry_after_keeps_every_process_away() {
    let redis = RedisServer::start().await.expect("redis");
    let c = cluster(
        redis,
        "  services:\n    webdav: {rate: 100, burst: 100}\n",
        "offload:\n  part_size: 5242880\n  part_concurrency: 1\n  spoke_rate_limit: 4194304\n\
         network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n",
    )
    .await;
    // The transfer's source: 40 MiB on the provider, read by the spoke in 5 MiB parts at 4
    // MiB/s (one ranged GET about every 1.3 s), into S3.
    let data = e2e::pattern(40 * MIB, 7);
    std::fs::write(c.dav.dir().join("big.bin"), &data).expect("write source");
    std::fs::write(c.dav.dir().join("small.txt"), b"hello").expect("write small");
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("dst").await.expect("bucket");
    let dst = c.a.connect("s3", s3_creds(&s3, "dst")).await.expect("s3")["id"]
        .as_i64()
        .expect("id");
    let spokes = tempfile::tempdir().expect("tmp");
    let spoke = SpokeProc::start(&c.a, spokes.path(), "near-dav").await;
    wait_healthy(&c.a, spoke.id).await;
    let (big, small) = (c.file_id("big.bin").await, c.file_id("small.txt").await);
    let r =
        c.a.req(
            reqwest::Method::POST,
            &c.a.url(&format!(
                "/v1/accounts/{}/storage/files/{big}/copy",
                c.account
            )),
        )
        .header("X-Kloudless-Async", "true")
        .json(&json!({"account": dst, "parent_id": "root"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let id = r.json::<Value>().await.expect("task")["transfer"]
        .as_i64()
        .expect("transfer id");
    until(
        &c.a,
        id,
        Duration::from_secs(30),
        "the spoke's first part",
        |t| t["spoke"].is_number() && t["parts_done"].as_u64().unwrap_or(0) >= 1,
    )
    .await;

    let started = Instant::now();
    let hammering = hammer(&c, &small, 2, started + Duration::from_secs(12));
    let provider = &c.provider;
    // The 429 goes out once the hubs' clients are asking (polled, bounded).
    let script = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while provider
            .seen()
            .iter()
            .filter(|s| s.path == "/small.txt")
            .count()
            < 10
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        provider.answer_next(429, Some(7));
    };
    let (answers, ()) = tokio::join!(hammering, script);
    let done = until(&c.a, id, Duration::from_secs(120), "the transfer", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(done["bytes_done"].as_u64(), Some(data.len() as u64));

    let seen = c.provider.seen();
    let t429 = seen
        .iter()
        .find(|s| s.status == 429)
        .expect("the provider answered its 429")
        .at;
    // Requests already on their way when the 429 left may still arrive; nothing else may.
    let quiet = in_window(
        &seen,
        t429 + Duration::from_millis(300),
        t429 + Duration::from_millis(6_900),
    );
    assert!(
        quiet.is_empty(),
        "{} requests reached the provider during its cool-down, first {:?}",
        quiet.len(),
        &quiet[..quiet.len().min(5)]
    );
    // The hubs ask about small.txt; only the spoke reads big.bin (one ranged GET per part).
    let part_read = |s: &&Seen| s.method == "GET" && s.path == "/big.bin";
    let after = t429 + Duration::from_secs(7);
    assert!(
        seen.iter().any(|s| s.at >= after && s.path == "/small.txt"),
        "the hubs' requests went on after 7 s"
    );
    assert!(
        seen.iter().filter(part_read).any(|s| s.at >= after),
        "the spoke's part reads went on after 7 s"
    );
    assert!(
        seen.iter().filter(part_read).any(|s| s.at < t429),
        "the spoke was reading parts before the 429"
    );
    // Both hubs told their clients, with the provider's pause as Retry-After.
    for hub in ['a', 'b'] {
        let paused: Vec<&Answer> = answers
            .iter()
            .filter(|a| {
                a.hub == hub
                    && a.at > t429 + Duration::from_millis(300)
                    && a.at < t429 + Duration::from_millis(6_500)
            })
            .collect();
        assert!(!paused.is_empty(), "hub {hub}'s clients kept asking");
        for a in &paused {
            assert_eq!(a.status, 429, "hub {hub} during the cool-down: {a:?}");
            assert_eq!(a.code.as_deref(), Some("rate_limited"));
            let ra = a.retry_after.expect("Retry-After");
            assert!((1..=7).contains(&ra), "Retry-After {ra}");
        }
        assert!(
            answers
                .iter()
                .any(|a| a.hub == hub && a.status == 200 && a.at > t429 + Duration::from_secs(7)),
            "hub {hub} served again after the cool-down"
        );
    }
    // Transfers are background work: the spoke waited the pause out instead of failing.
    let t = transfer(&c.a, id).await;
    assert_eq!(t["state"], "done", "{t}");
}

/// A budget of 20 requests per second holds at the provider within 10 % while eight clients
/// on two hubs ask as fast as they can, and the provider (which would throttle past 25/s)
/// never has to refuse anything. Runs with the timing tests (alone): it measures a rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_20_per_second_holds_across_two_hubs() {
    let redis = RedisServer::start().await.expect("redis");
    let c = cluster(redis, "  services:\n    webdav: {rate: 20, burst: 1}\n", "").await;
    std::fs::write(c.dav.dir().join("f.txt"), b"hello").expect("write");
    let file = c.file_id("f.txt").await;
    c.provider.limit(25.0, 5.0);
    // Let the listing's slots pass, then measure from a clean slate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.provider.clear();
    let started = Instant::now();
    let answers = hammer(&c, &file, 4, started + Duration::from_secs(7)).await;
    let seen = c.provider.seen();
    let window = in_window(
        &seen,
        started + Duration::from_millis(1_500),
        started + Duration::from_millis(6_500),
    );
    let rate = window.len() as f64 / 5.0;
    eprintln!("{rate} requests per second reached the provider (budget 20)");
    assert!(
        (18.0..=22.0).contains(&rate),
        "{rate} requests per second reached the provider (budget 20)"
    );
    assert!(
        seen.iter().all(|s| s.status != 429),
        "the provider had to throttle us"
    );
    for hub in ['a', 'b'] {
        let ok: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.hub == hub && a.status == 200)
            .collect();
        assert!(ok.len() >= 20, "hub {hub} served only {}", ok.len());
        assert!(
            ok.iter().all(|a| a.remaining.is_some()),
            "budgeted answers carry X-RateLimit-Remaining"
        );
    }
}

async fn readyz_budgets(hub: &TestHub) -> String {
    let v: Value = hub
        .http
        .get(hub.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    v["budgets"].as_str().unwrap_or_default().to_owned()
}

/// Redis killed: each hub paces alone (and says so in `/readyz`), clients see no error; Redis
/// back: the budgets are shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_local_pacing_and_no_error() {
    let redis = RedisServer::start().await.expect("redis");
    let mut c = cluster(
        redis,
        "  services:\n    webdav: {rate: 50, burst: 10}\n",
        "",
    )
    .await;
    std::fs::write(c.dav.dir().join("f.txt"), b"hello").expect("write");
    let file = c.file_id("f.txt").await;
    assert_eq!(readyz_budgets(&c.a).await, "shared");
    let before = hammer(&c, &file, 1, Instant::now() + Duration::from_secs(2)).await;
    assert!(before.iter().all(|a| a.status == 200), "{before:?}");
    c.redis.kill();
    let during = hammer(&c, &file, 1, Instant::now() + Duration::from_secs(3)).await;
    assert!(during.len() >= 10, "only {} requests", during.len());
    let failed: Vec<&Answer> = during.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "errors without Redis: {failed:?}");
    assert_eq!(readyz_budgets(&c.a).await, "local_fallback");
    assert_eq!(readyz_budgets(&c.b).await, "local_fallback");
    c.redis.restart().await.expect("redis back");
    // The next request after the retry pause finds Redis again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        hammer(&c, &file, 1, Instant::now() + Duration::from_millis(1_200)).await;
        if readyz_budgets(&c.a).await == "shared" && readyz_budgets(&c.b).await == "shared" {
            break;
        }
        assert!(Instant::now() < deadline, "budgets never shared again");
    }
    let keys = c.redis.command("KEYS *budget*").await.expect("keys");
    assert!(
        keys.contains("webdav:"),
        "the buckets are in Redis again: {keys}"
    );
}

/// One request per second (no Redis: this hub's own buckets): of five pass-through requests
/// at once (one provider request each), the first goes at once, the next two wait their slots
/// (within the API's 2 s), the last two get `429 rate_limited` at once with `Retry-After`
/// (whole seconds, rounded up) and nothing reserved; the served answers carry the budget
/// headers.
#[tokio::test]
async fn a_request_past_its_wait_gets_429_with_retry_after() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some("budgets:\n  services:\n    webdav: {rate: 1, burst: 1}\n".into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let dav = WebDavServer::start().await.expect("webdav");
    std::fs::write(dav.dir().join("f.txt"), b"hello").expect("write");
    let provider = Throttle::start(&dav.endpoint()).await.expect("provider");
    let acc = hub
        .connect(
            "webdav",
            json!({"endpoint": provider.endpoint(), "username": dav.username(),
                   "password": dav.password()}),
        )
        .await
        .expect("account")["id"]
        .as_i64()
        .expect("id");
    // Connecting took the bucket's slot; a quiet second refills it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    provider.clear();
    let started = Instant::now();
    let url = hub.url(&format!("/v1/accounts/{acc}/raw"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let r = hub
            .req(reqwest::Method::POST, &url)
            .header("X-Kloudless-Raw-URI", "/f.txt")
            .header("X-Kloudless-Raw-Method", "PROPFIND")
            .header("X-Kloudless-Raw-Headers", r#"{"Depth": "0"}"#);
        tasks.spawn(async move {
            let r = r.send().await.expect("request");
            let h = |n: &str| {
                r.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let (ra, limit, remaining) = (
                h("retry-after"),
                h("x-ratelimit-limit"),
                h("x-ratelimit-remaining"),
            );
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (started.elapsed(), status, ra, limit, remaining, text)
        });
    }
    let mut got = Vec::new();
    while let Some(r) = tasks.join_next().await {
        got.push(r.expect("task"));
    }
    got.sort_by_key(|g| g.0);
    let served: Vec<_> = got.iter().filter(|g| g.1 == 207).collect();
    let refused: Vec<_> = got.iter().filter(|g| g.1 == 429).collect();
    assert_eq!((served.len(), refused.len()), (3, 2), "{got:?}");
    for r in &refused {
        assert!(r.0 < Duration::from_millis(900), "refused at once: {r:?}");
        let v: Value = serde_json::from_str(&r.5).expect("a JSON error");
        assert_eq!(v["error_code"], "rate_limited", "{r:?}");
        let ra: u64 =
            r.2.as_deref()
                .expect("Retry-After")
                .parse()
                .expect("seconds");
        assert!((2..=3).contains(&ra), "Retry-After {ra}");
    }
    // Paced one second apart.
    assert!(served[1].0 >= Duration::from_millis(900), "{served:?}");
    assert!(served[2].0 >= Duration::from_millis(1_900), "{served:?}");
    for s in &served {
        assert_eq!(s.3.as_deref(), Some("1"), "X-RateLimit-Limit");
        assert_eq!(s.4.as_deref(), Some("0"), "X-RateLimit-Remaining");
    }
    let seen = provider.seen();
    assert_eq!(
        seen.len(),
        3,
        "only the served requests reached the provider: {seen:?}"
    );
}
