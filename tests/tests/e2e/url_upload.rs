//! Uploads from a URL against a source server the test runs: small, large, chunked without a
//! length, a redirect chain, slow; and refused: an internal address (literal, by name, after a
//! redirect), cloud metadata, `file://`, too many redirects, too large, an error answer.
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
    let mut yaml = String::from("storage:\n  allowed_private_endpoints: ['127.0.0.1/32']\n");
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
