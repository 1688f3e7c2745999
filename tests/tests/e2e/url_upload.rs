//! Uploads from a URL against a source server the test runs: small, large, chunked without a
//! length, a redirect chain, slow; and refused: an internal address (literal, by name, after a
//! redirect), cloud metadata, `file://`, too many redirects, too large, an error answer.
//! `X-Kloudless-Async` answers a task; large files and files of unknown length are fetched by
//! a spoke (in S3 multipart parts when the source answers ranges), which applies the SSRF
//! guard to every hop itself: a source that redirects to an internal address only when the
//! spoke asks is refused there too.
//!
//! The hubs run with the SSRF guard on and allow only `127.0.0.1/32` (the operator's
//! allow-list, as in `egress.rs`): the source listens there; `127.0.0.2` stands for the
//! internal network and stays refused.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use e2e::scripted_dns::ScriptedDns;
use e2e::{pattern, sha256_hex, HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BIG: usize = 24 * 1024 * 1024;
const CHUNKED: usize = 3 * 1024 * 1024 + 17;

#[derive(Clone)]
struct Source {
    port: u16,
    internal_hits: Arc<AtomicUsize>,
}

/// The source server on 127.0.0.1 and an "internal" one on 127.0.0.2 that counts its hits.
async fn sources() -> Source {
    let internal_hits = Arc::new(AtomicUsize::new(0));
    let hits = internal_hits.clone();
    let internal = Router::new().fallback(move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            "internal secret"
        }
    });
    let l2 = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind internal");
    let internal_port = l2.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l2, internal).await });

    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let app =
        Router::new()
            .route("/small.txt", get(|| async { "hello from the source" }))
            .route("/big.bin", get(|| async { pattern(BIG, 5) }))
            .route(
                "/chunked.bin",
                get(|| async {
                    let data = pattern(CHUNKED, 6);
                    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
                        .chunks(64 * 1024)
                        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                        .collect();
                    Body::from_stream(futures::stream::iter(chunks))
                }),
            )
            .route(
                "/slow.txt",
                get(|| async {
                    let s = futures::stream::unfold(0, |i| async move {
                        if i == 5 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        Some((
                            Ok::<_, std::io::Error>(bytes::Bytes::from(format!("{i}"))),
                            i + 1,
                        ))
                    });
                    Body::from_stream(s)
                }),
            )
            .route(
                "/r/{n}",
                get(|Path(n): Path<u32>| async move {
                    let to = if n == 0 {
                        "/small.txt".to_owned()
                    } else {
                        format!("/r/{}", n - 1)
                    };
                    redirect(&to)
                }),
            )
            .route(
                "/to-internal",
                get(move || async move {
                    redirect(&format!("http://127.0.0.2:{internal_port}/secret"))
                }),
            )
            .route("/to-file", get(|| async { redirect("file:///etc/passwd") }))
            .route(
                "/missing",
                get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
            )
            .with_state(());
    tokio::spawn(async move { axum::serve(l, app).await });
    Source {
        port,
        internal_hits,
    }
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut()
        .insert(header::LOCATION, to.parse().expect("location"));
    r
}

impl Source {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn hub(dns: Option<&ScriptedDns>, max_upload: u64) -> TestHub {
    // No spoke: transfers (files of unknown length) run on the hub at once.
    let mut yaml = String::from(
        "offload:\n  startup_grace_secs: 0\nstorage:\n  allowed_private_endpoints: ['127.0.0.1/32']\n",
    );
    if let Some(d) = dns {
        yaml.push_str(&format!("  nameserver: '{}'\n", d.addr()));
    }
    TestHub::start_with(HubOptions {
        ssrf_guard: true,
        yaml: Some(yaml),
        max_upload_bytes: max_upload,
        ..HubOptions::default()
    })
    .await
    .expect("hub")
}

async fn from_url(hub: &TestHub, url: &str, name: &str) -> (u16, Value) {
    let r = hub
        .req(Method::POST, &hub.acc("/storage/files/?overwrite=false"))
        .json(&json!({"url": url, "parent_id": "root", "name": name}))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn content(hub: &TestHub, f: &Value) -> Vec<u8> {
    let id = f["id"].as_str().expect("id");
    hub.req(
        Method::GET,
        &hub.acc(&format!("/storage/files/{id}/contents")),
    )
    .send()
    .await
    .expect("get")
    .bytes()
    .await
    .expect("bytes")
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_fetched_from_urls() {
    let src = sources().await;
    let hub = hub(None, 0).await;
    let (s, f) = from_url(&hub, &src.url("/small.txt"), "small.txt").await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["name"], "small.txt");
    assert_eq!(content(&hub, &f).await, b"hello from the source");

    let (s, f) = from_url(&hub, &src.url("/big.bin"), "big.bin").await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["size"], BIG);
    assert_eq!(
        sha256_hex(&content(&hub, &f).await),
        sha256_hex(&pattern(BIG, 5))
    );

    let (s, f) = from_url(&hub, &src.url("/chunked.bin"), "chunked.bin").await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        sha256_hex(&content(&hub, &f).await),
        sha256_hex(&pattern(CHUNKED, 6))
    );

    // Five redirects are followed; the name is taken, so the file lands beside it.
    let (s, f) = from_url(&hub, &src.url("/r/4"), "small.txt").await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["name"], "small (1).txt");
    assert_eq!(content(&hub, &f).await, b"hello from the source");

    let (s, f) = from_url(&hub, &src.url("/slow.txt"), "slow.txt").await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(content(&hub, &f).await, b"01234");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_urls_are_refused() {
    let src = sources().await;
    let private: Ipv4Addr = "127.0.0.2".parse().expect("ip");
    let dns = ScriptedDns::start(&[("files.internal.example.net", &[private][..])])
        .await
        .expect("dns");
    let hub = hub(Some(&dns), 1024 * 1024).await;
    let internal = |path: &str| format!("http://127.0.0.2:{}{path}", src.port);
    for (url, status, code) in [
        (internal("/secret"), 400, "url_not_allowed"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            400,
            "url_not_allowed",
        ),
        (
            format!("http://files.internal.example.net:{}/secret", src.port),
            400,
            "url_not_allowed",
        ),
        (src.url("/to-internal"), 400, "url_not_allowed"),
        ("file:///etc/passwd".to_owned(), 400, "invalid_parameters"),
        (src.url("/to-file"), 400, "invalid_parameters"),
        (src.url("/r/5"), 502, "upstream_error"),
        (src.url("/missing"), 502, "upstream_error"),
        (src.url("/big.bin"), 413, "request_too_large"),
        (src.url("/chunked.bin"), 413, "request_too_large"),
        (
            "http://127.0.0.1:1/closed".to_owned(),
            502,
            "upstream_unreachable",
        ),
        ("not a url".to_owned(), 400, "invalid_parameters"),
    ] {
        let (s, body) = from_url(&hub, &url, "x.bin").await;
        assert_eq!(s, status, "{url}: {body}");
        assert_eq!(body["error_code"], code, "{url}: {body}");
        assert!(!body.to_string().contains("internal secret"), "{body}");
    }
    assert_eq!(src.internal_hits.load(Ordering::SeqCst), 0);
    // Nothing was written by any of them.
    let list: Value = hub
        .req(Method::GET, &hub.acc("/storage/folders/root/contents"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["count"], 0, "{list}");
}

/// A file served with byte ranges (`ETag`, `206` with `Content-Range`), counting the ranged
/// GETs it answers; after `serve_first` requests it redirects to `then_redirect` instead.
#[derive(Clone)]
struct Ranged {
    data: Arc<Vec<u8>>,
    hits: Arc<AtomicUsize>,
    ranged_hits: Arc<AtomicUsize>,
    serve_first: usize,
    then_redirect: Option<String>,
}

impl Ranged {
    fn new(data: Vec<u8>) -> Self {
        Self {
            data: Arc::new(data),
            hits: Arc::new(AtomicUsize::new(0)),
            ranged_hits: Arc::new(AtomicUsize::new(0)),
            serve_first: usize::MAX,
            then_redirect: None,
        }
    }

    fn answer(&self, headers: &axum::http::HeaderMap) -> Response {
        let n = self.hits.fetch_add(1, Ordering::SeqCst);
        if n >= self.serve_first {
            if let Some(to) = &self.then_redirect {
                return redirect(to);
            }
        }
        let len = self.data.len();
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| {
                let a: usize = a.parse().ok()?;
                let b: usize = if b.is_empty() {
                    len - 1
                } else {
                    b.parse().ok()?
                };
                (a <= b && b < len).then_some((a, b))
            });
        let mut r = match range {
            Some((a, b)) => {
                self.ranged_hits.fetch_add(1, Ordering::SeqCst);
                let mut r =
                    (StatusCode::PARTIAL_CONTENT, self.data[a..=b].to_vec()).into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    format!("bytes {a}-{b}/{len}").parse().expect("range"),
                );
                r
            }
            None => self.data.to_vec().into_response(),
        };
        let h = r.headers_mut();
        h.insert(header::ACCEPT_RANGES, "bytes".parse().expect("v"));
        h.insert(header::ETAG, "\"v1\"".parse().expect("v"));
        r
    }
}

/// Serves `files` on 127.0.0.1 (by path); the port.
async fn serve(files: Vec<(&'static str, Ranged)>) -> u16 {
    let mut app = Router::new();
    for (path, f) in files {
        app = app.route(
            path,
            get(move |headers: axum::http::HeaderMap| {
                let f = f.clone();
                async move { f.answer(&headers) }
            }),
        );
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

async fn task(hub: &TestHub, id: i64) -> Value {
    hub.req(Method::GET, &hub.acc(&format!("/tasks/{id}")))
        .send()
        .await
        .expect("task")
        .json()
        .await
        .expect("json")
}

/// Polls a task until it is `SUCCESS` or `FAILURE` (at most a minute).
async fn task_end(hub: &TestHub, id: i64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let t = task(hub, id).await;
        if matches!(t["state"].as_str(), Some("SUCCESS" | "FAILURE")) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task never ended: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn from_url_async(hub: &TestHub, url: &str, name: &str) -> (u16, Value) {
    let r = hub
        .req(Method::POST, &hub.acc("/storage/files"))
        .header("X-Kloudless-Async", "True")
        .json(&json!({"url": url, "parent_id": "root", "name": name}))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `X-Kloudless-Async: true` answers 202 with a task at once; the task ends `SUCCESS` with the
/// file as its result (here run by the hub: no spoke). A URL refused before any transfer is
/// refused at once, with the same errors as the synchronous form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_uploads_answer_a_task() {
    let src = sources().await;
    let hub = hub(None, 0).await;
    let (s, t) = from_url_async(&hub, &src.url("/small.txt"), "small.txt").await;
    assert_eq!(s, 202, "{t}");
    assert!(
        matches!(
            t["state"].as_str(),
            Some("PENDING" | "RECEIVED" | "STARTED" | "SUCCESS")
        ),
        "{t}"
    );
    let t = task_end(&hub, t["id"].as_i64().expect("task id")).await;
    assert_eq!(t["state"], "SUCCESS", "{t}");
    assert_eq!(t["result"]["name"], "small.txt", "{t}");
    assert_eq!(t["bytes_total"], 21, "{t}");
    assert_eq!(content(&hub, &t["result"]).await, b"hello from the source");

    // A chunked source of unknown length: the task's total is unknown until it lands.
    let (s, t) = from_url_async(&hub, &src.url("/chunked.bin"), "chunked.bin").await;
    assert_eq!(s, 202, "{t}");
    let t = task_end(&hub, t["id"].as_i64().expect("task id")).await;
    assert_eq!(t["state"], "SUCCESS", "{t}");
    assert_eq!(t["bytes_total"], CHUNKED, "{t}");
    assert_eq!(t["result"]["size"], CHUNKED, "{t}");
    assert_eq!(
        sha256_hex(&content(&hub, &t["result"]).await),
        sha256_hex(&pattern(CHUNKED, 6))
    );

    // The feed records an upload, not a copy.
    let latest: Value = hub
        .req(Method::GET, &hub.acc("/events?cursor=0&page_size=100"))
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let actions: Vec<&str> = latest["objects"]
        .as_array()
        .map(|o| o.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(!actions.contains(&"transfer"), "{latest}");

    for (url, status, code) in [
        (src.url("/to-internal"), 400, "url_not_allowed"),
        (src.url("/missing"), 502, "upstream_error"),
        ("ftp://example.com/x".to_owned(), 400, "invalid_parameters"),
    ] {
        let (s, body) = from_url_async(&hub, &url, "x.bin").await;
        assert_eq!(s, status, "{url}: {body}");
        assert_eq!(body["error_code"], code, "{url}: {body}");
    }
    assert_eq!(src.internal_hits.load(Ordering::SeqCst), 0);
}

/// A hub (SSRF guard on, `127.0.0.1/32` allowed, large = 16 MiB, 8 MiB parts) with one spoke
/// and an S3 account as the upload's destination.
async fn hub_with_spoke() -> (
    TestHub,
    e2e::servers::S3Server,
    Value,
    tempfile::TempDir,
    crate::spokes::SpokeProc,
) {
    let yaml = "offload:\n  threshold: 16777216\n  part_size: 8388608\n  part_concurrency: 2\n  startup_grace_secs: 0\n\
                network:\n  heartbeat_ms: 250\n  missed_heartbeats: 4\n\
                storage:\n  allowed_private_endpoints: ['127.0.0.1/32']\n";
    let hub = TestHub::start_with(HubOptions {
        ssrf_guard: true,
        yaml: Some(yaml.to_owned()),
        ..HubOptions::default()
    })
    .await
    .expect("hub");
    let s3 = e2e::servers::S3Server::start().await.expect("moto");
    s3.create_bucket("dst").await.expect("bucket");
    let creds = crate::offload::s3_creds(&s3, "dst");
    let root = tempfile::tempdir().expect("tmp");
    let spoke = crate::spokes::SpokeProc::start(&hub, root.path(), "u1").await;
    crate::spokes::wait_healthy(&hub, spoke.id).await;
    (hub, s3, creds, root, spoke)
}

/// `POST …/storage/files` of account `acc` from `url` as `name`, with `X-Kloudless-Async`
/// when `as_task`.
async fn upload_to(
    hub: &TestHub,
    acc: i64,
    url: &str,
    name: &str,
    as_task: bool,
) -> reqwest::Response {
    let mut req = hub
        .req(
            Method::POST,
            &hub.url(&format!("/v1/accounts/{acc}/storage/files")),
        )
        .json(&json!({"url": url, "parent_id": "root", "name": name}));
    if as_task {
        req = req.header("X-Kloudless-Async", "true");
    }
    req.send().await.expect("upload")
}

/// The newest transfer of the application.
async fn newest_transfer(hub: &TestHub) -> Value {
    let list: Value = hub
        .req(Method::GET, &hub.url("/v1/transfers"))
        .send()
        .await
        .expect("transfers")
        .json()
        .await
        .expect("json");
    list["objects"][0].clone()
}

/// A 40 MiB file (over the 16 MiB threshold) from a server that answers ranges is fetched by
/// the spoke in five 8 MiB parts straight into the S3 account's multipart upload (one ranged
/// GET per part); a 3 MiB file of unknown length (chunked) goes through the spoke as one
/// stream. Both are byte-identical, and the synchronous request answers the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_urls_are_fetched_by_a_spoke() {
    const SIZE: usize = 40 * 1024 * 1024;
    let (hub, _s3, creds, _root, spoke) = hub_with_spoke().await;
    let acc = crate::offload::account(&hub, creds.clone()).await;
    let big = Ranged::new(pattern(SIZE, 9));
    let port = serve(vec![("/big.bin", big.clone())]).await;
    let src = sources().await;

    let url = format!("http://127.0.0.1:{port}/big.bin");
    let r = upload_to(&hub, acc, &url, "big.bin", false).await;
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.expect("json");
    assert_eq!(f["size"], SIZE, "{f}");
    let t = newest_transfer(&hub).await;
    assert_eq!(t["operation"], "url", "{t}");
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["spoke"], spoke.id, "{t}");
    assert_eq!(t["parts_done"], 5, "{t}");
    assert!(
        t["checksum"].as_str().is_some_and(|c| c.ends_with("-5")),
        "{t}"
    );
    assert_eq!(
        t["source"]["path"],
        format!("http://127.0.0.1:{port}"),
        "{t}"
    );
    // The hub's one-byte probe, then one ranged GET per part.
    assert_eq!(big.ranged_hits.load(Ordering::SeqCst), 1 + 1 + 5);
    let dst = crate::offload::connector(&creds).await;
    assert_eq!(
        crate::offload::sha_of(&dst, "big.bin").await,
        sha256_hex(&pattern(SIZE, 9))
    );

    let r = upload_to(&hub, acc, &src.url("/chunked.bin"), "chunked.bin", false).await;
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.expect("json");
    assert_eq!(f["size"], CHUNKED, "{f}");
    let t = newest_transfer(&hub).await;
    assert_eq!(t["executor"], "spoke", "{t}");
    assert_eq!(t["bytes_total"], CHUNKED, "{t}");
    assert_eq!(t["part_size"], 0, "{t}");
    assert_eq!(
        crate::offload::sha_of(&dst, "chunked.bin").await,
        sha256_hex(&pattern(CHUNKED, 6))
    );
}

/// The source answers the hub (its GET and its probe) with the file, then redirects the spoke
/// to an internal address: the spoke's own guard refuses that hop, the internal server is
/// never reached, and the task fails saying why. Nothing lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_refuses_a_hop_the_hub_never_saw() {
    let (hub, _s3, creds, _root, _spoke) = hub_with_spoke().await;
    let acc = crate::offload::account(&hub, creds.clone()).await;
    let src = sources().await;
    let internal = format!("http://127.0.0.2:{}/secret", src.port);
    let mut flip = Ranged::new(pattern(20 * 1024 * 1024, 3));
    flip.serve_first = 2;
    flip.then_redirect = Some(internal);
    let port = serve(vec![("/flip.bin", flip.clone())]).await;
    let url = format!("http://127.0.0.1:{port}/flip.bin");
    let r = upload_to(&hub, acc, &url, "flip.bin", true).await;
    assert_eq!(r.status(), 202);
    let t: Value = r.json().await.expect("json");
    let id = t["id"].as_i64().expect("id");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let t = loop {
        let t: Value = hub
            .req(
                Method::GET,
                &hub.url(&format!("/v1/accounts/{acc}/tasks/{id}")),
            )
            .send()
            .await
            .expect("task")
            .json()
            .await
            .expect("json");
        if matches!(t["state"].as_str(), Some("SUCCESS" | "FAILURE")) {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(t["state"], "FAILURE", "{t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not fetched") && error.contains("127.0.0.2"),
        "{t}"
    );
    let tr = newest_transfer(&hub).await;
    assert_eq!(tr["executor"], "spoke", "{tr}");
    // One refusal is final: the spoke did not try again and again.
    assert_eq!(tr["attempts"], 1, "{tr}");
    assert_eq!(src.internal_hits.load(Ordering::SeqCst), 0);
    let dst = crate::offload::connector(&creds).await;
    assert!(!dst
        .exists(&shared::storage::StoragePath::parse("flip.bin").expect("path"))
        .await
        .expect("exists"));
}
