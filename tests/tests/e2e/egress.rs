//! Connections to providers under the SSRF guard, through a hub with the guard on: a name that
//! rebinds to a private address on its second lookup, a provider that redirects to a private
//! address, provider error bodies kept out of API errors, accounts that do not work refused
//! at connect (WebDAV root check), and network failures reported as `provider_unreachable`.
//!
//! The servers run on loopback, so each hub allows exactly `127.0.0.1/32`
//! (`storage.allowed_private_endpoints`, the operator's allow-list) and the "internal" target
//! the attacker aims at listens on `127.0.0.2`, which stays refused.

use e2e::scripted_dns::ScriptedDns;
use e2e::servers::{NginxServer, S3Server, WebDavServer};
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What an internal service would answer; no API answer may ever contain it.
const INTERNAL_SECRET: &str = "internal-secret-7f3a9c";

/// An HTTP server on `127.0.0.2` (an internal address outside the allow-list) that counts
/// connections and answers every request with [`INTERNAL_SECRET`].
struct InternalServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl InternalServer {
    async fn start() -> InternalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let body = format!("<secret>{INTERNAL_SECRET}</secret>");
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        InternalServer { port, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for InternalServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hub with the SSRF guard on, allowing only `127.0.0.1/32`, resolving provider names with
/// `nameserver` when given.
async fn guarded_hub(nameserver: Option<std::net::SocketAddr>, extra: &str) -> TestHub {
    let mut yaml = String::from(
        "storage:\n  allowed_private_endpoints: ['127.0.0.1/32']\n  io_timeout_secs: 2\n",
    );
    if let Some(ns) = nameserver {
        yaml.push_str(&format!("  nameserver: '{ns}'\n"));
    }
    yaml.push_str(extra);
    TestHub::start_with(HubOptions {
        ssrf_guard: true,
        yaml: Some(yaml),
        ..HubOptions::default()
    })
    .await
    .expect("hub")
}

/// `POST /v1/accounts`; returns the status and the JSON answer.
async fn connect(hub: &TestHub, service: &str, credentials: Value) -> (u16, Value) {
    let r = hub
        .req(reqwest::Method::POST, &hub.url("/v1/accounts"))
        .json(&json!({"service": service, "account": "egress test", "credentials": credentials}))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

fn s3_creds(endpoint: &str) -> Value {
    json!({"bucket": "b", "endpoint": endpoint, "region": "us-east-1",
           "access_key_id": "AKIAEGRESS", "secret_access_key": "egress-secret"})
}

#[tokio::test]
async fn a_name_that_rebinds_to_a_private_address_never_reaches_it() {
    let internal = InternalServer::start().await;
    // First lookup: a public address (the hub's early check passes); every later lookup: the
    // internal server.
    let public: Ipv4Addr = "93.184.215.14".parse().expect("ip");
    let private: Ipv4Addr = "127.0.0.2".parse().expect("ip");
    let dns = ScriptedDns::start(&[
        ("s3.rebind.example.net", &[public, private][..]),
        ("dav.rebind.example.net", &[public, private][..]),
    ])
    .await
    .expect("dns");
    let hub = guarded_hub(Some(dns.addr()), "").await;
    for (service, name, creds) in [
        (
            "s3",
            "s3.rebind.example.net",
            s3_creds(&format!("http://s3.rebind.example.net:{}", internal.port)),
        ),
        (
            "webdav",
            "dav.rebind.example.net",
            json!({"endpoint": format!("http://dav.rebind.example.net:{}", internal.port),
                   "username": "u", "password": "p"}),
        ),
    ] {
        let (status, body) = connect(&hub, service, creds).await;
        assert_eq!(status, 400, "{service}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("internal address")),
            "{service}: {body}"
        );
        assert!(!body.to_string().contains(INTERNAL_SECRET), "{body}");
        // The refusal came from the connection's own lookup, not only the early check.
        assert!(
            dns.a_queries(name) >= 2,
            "{service}: the provider client must resolve again"
        );
    }
    assert_eq!(internal.hits(), 0, "the internal server was reached");
}

#[tokio::test]
async fn a_provider_that_redirects_to_a_private_address_is_not_followed() {
    let internal = InternalServer::start().await;
    let redirector = NginxServer::start(&format!(
        "location / {{ return 307 http://127.0.0.2:{}/stolen; }}",
        internal.port
    ))
    .await
    .expect("nginx");
    let hub = guarded_hub(None, "").await;
    for (service, creds) in [
        ("s3", s3_creds(&redirector.endpoint())),
        (
            "webdav",
            json!({"endpoint": redirector.endpoint(), "username": "u", "password": "p"}),
        ),
    ] {
        let (status, body) = connect(&hub, service, creds).await;
        assert_eq!(status, 400, "{service}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("307")),
            "{service}: {body}"
        );
        assert!(!body.to_string().contains(INTERNAL_SECRET), "{body}");
    }
    assert_eq!(
        internal.hits(),
        0,
        "a redirect was followed to the internal server"
    );
}

#[tokio::test]
async fn literal_internal_endpoints_of_every_kind_are_refused() {
    let hub = guarded_hub(None, "").await;
    for host in [
        "127.0.0.2",
        "10.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "198.18.0.1",
        "[::1]",
        "[::ffff:127.0.0.2]",
        "[::127.0.0.2]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:a9fe:a9fe::1]",
        "[2001:0:4136:e378:8000:63bf:5601:5601]",
        "[fe80::1]",
        "[fd00::1]",
    ] {
        let (status, body) = connect(&hub, "s3", s3_creds(&format!("http://{host}:9000"))).await;
        assert_eq!(status, 400, "{host}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("internal address")),
            "{host}: {body}"
        );
    }
}

#[tokio::test]
async fn provider_error_bodies_never_reach_the_caller() {
    // An S3-shaped refusal whose message is secret, and a plain-text body.
    let nginx = NginxServer::start(&format!(
        "location /b {{ default_type application/xml; return 403 \
         '<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>{INTERNAL_SECRET}</Message></Error>'; }}\n\
         location /plain {{ default_type text/plain; return 400 '{INTERNAL_SECRET}'; }}"
    ))
    .await
    .expect("nginx");
    let hub = guarded_hub(None, "").await;
    let (status, body) = connect(&hub, "s3", s3_creds(&nginx.endpoint())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], "invalid_credentials", "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("403") && msg.contains("AccessDenied"),
        "{body}"
    );
    assert!(!body.to_string().contains(INTERNAL_SECRET), "{body}");

    let creds = json!({"bucket": "plain", "endpoint": nginx.endpoint(), "region": "us-east-1",
                       "access_key_id": "a", "secret_access_key": "s"});
    let (status, body) = connect(&hub, "s3", creds).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("400")),
        "{body}"
    );
    assert!(!body.to_string().contains(INTERNAL_SECRET), "{body}");
}

#[tokio::test]
async fn webdav_accounts_that_do_not_work_are_not_saved() {
    let dav = WebDavServer::start().await.expect("rclone webdav");
    std::fs::write(dav.dir().join("a-file"), b"x").expect("file");
    let site = tempfile::tempdir().expect("tmp");
    std::fs::write(site.path().join("index.html"), b"<h1>hello</h1>").expect("index");
    let nginx = NginxServer::start(&format!("location / {{ root {}; }}", site.path().display()))
        .await
        .expect("nginx");
    let hub = guarded_hub(None, "").await;
    let dav_creds = |root: Option<&str>, password: &str| {
        let mut c = json!({"endpoint": dav.endpoint(), "username": dav.username(),
                           "password": password});
        if let Some(r) = root {
            c["root"] = json!(r);
        }
        c
    };
    let cases = [
        (
            "missing root",
            dav_creds(Some("no-such-folder"), dav.password()),
            "does not exist",
        ),
        (
            "file root",
            dav_creds(Some("a-file"), dav.password()),
            "not a folder",
        ),
        (
            "wrong password",
            dav_creds(None, "wrong"),
            "refused the login",
        ),
        (
            "static web server",
            json!({"endpoint": nginx.endpoint(), "username": "u", "password": "p"}),
            "does not speak WebDAV",
        ),
    ];
    for (what, creds, says) in cases {
        let (status, body) = connect(&hub, "webdav", creds).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error_code"], "invalid_credentials", "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(says)),
            "{what}: {body}"
        );
    }
    let list: Value = hub
        .req(reqwest::Method::GET, &hub.url("/v1/accounts"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["count"], 1, "only the dev account exists: {list}");
    // The working account still connects.
    let (status, body) = connect(&hub, "webdav", dav_creds(None, dav.password())).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn network_failures_are_provider_unreachable() {
    // Refused: a port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    // Timeout: accepts, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    // TLS: https to a plain HTTP server.
    let s3 = S3Server::start().await.expect("moto");
    let plain = s3.endpoint().replace("http://", "https://");
    // DNS: a name our nameserver does not know (NXDOMAIN).
    let dns = ScriptedDns::start(&[]).await.expect("dns");
    let hub = guarded_hub(Some(dns.addr()), "").await;
    let cases = [
        ("refused", format!("http://127.0.0.1:{closed}"), "127.0.0.1"),
        (
            "timeout",
            format!("http://127.0.0.1:{silent_port}"),
            "127.0.0.1",
        ),
        ("tls", plain, "127.0.0.1"),
        (
            "dns",
            "http://no-such-host.example.net:9000".to_owned(),
            "no-such-host.example.net",
        ),
    ];
    for (what, endpoint, host) in cases {
        let started = std::time::Instant::now();
        let (status, body) = connect(&hub, "s3", s3_creds(&endpoint)).await;
        assert_eq!(status, 502, "{what}: {body}");
        assert_eq!(body["error_code"], "provider_unreachable", "{what}: {body}");
        let msg = body["message"].as_str().unwrap_or_default();
        assert!(msg.contains(host), "{what}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    silent_task.abort();
    // An authentication refusal stays invalid_credentials: WebDAV with a wrong password.
    let dav = WebDavServer::start().await.expect("rclone webdav");
    let (status, body) = connect(
        &hub,
        "webdav",
        json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": "wrong"}),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("invalid_credentials")),
        "{body}"
    );
}
