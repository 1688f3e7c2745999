//! A spoke's data plane against hostile clients and hostile grants: idle and slow connections
//! and accept errors do not take the HTTPS endpoint down (and hubs stop sending clients to an
//! endpoint that is down), upload bodies that go quiet are cut off, each grant does exactly
//! one thing (relay grants never over HTTPS, upload URLs used once, never replacing, held to
//! their declared length), a spoke killed mid-upload leaves no staging behind, and no grant or
//! assignment reaches an `fs` root outside the spoke's declared `storage.fs_roots`.

use crate::spokes::{hub_fs_roots, spoke_view, wait_healthy, SpokeProc};
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use shared::proto::{Grant, HubMsg, Location};
use shared::storage::service::FsSettings;
use shared::storage::ServiceConfig;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A hub, one spoke serving the data endpoint, and a client trusting the network CA.
struct Edge {
    hub: TestHub,
    spoke: SpokeProc,
    advertise: String,
    port: u16,
    /// Trusts the network CA; follows no redirects.
    client: reqwest::Client,
    _root: tempfile::TempDir,
}

/// Starts the hub (offload threshold `threshold`, 4 MiB upload limit, 250 ms heartbeats, plus
/// `hub_yaml`) and an advertising spoke whose operator sections are `local(&hub)`.
async fn edge(threshold: u64, hub_yaml: &str, local: impl FnOnce(&TestHub) -> String) -> Edge {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some(format!(
            "offload:\n  threshold: {threshold}\nnetwork:\n  heartbeat_ms: 250\n{hub_yaml}"
        )),
        max_upload_bytes: 4 << 20,
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let port = e2e::servers::free_port();
    let advertise = format!("127.0.0.1:{port}");
    let local = local(&hub);
    let spoke = SpokeProc::start_local(
        None,
        &hub,
        root.path(),
        "edge",
        &["--advertise", &advertise],
        &[],
        Some(&local),
    )
    .await;
    wait_healthy(&hub, spoke.id).await;
    e2e::assert_eventually!(
        endpoint_state(&hub, spoke.id).await.as_deref() == Some("up"),
        Duration::from_secs(15),
        "the spoke to report its data endpoint up"
    );
    let ca = std::fs::read(spoke.dir.join("ca.crt")).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    Edge {
        hub,
        spoke,
        advertise,
        port,
        client,
        _root: root,
    }
}

/// The data endpoint state the hub shows for the spoke (`up`, `down`).
async fn endpoint_state(hub: &TestHub, id: i64) -> Option<String> {
    spoke_view(hub, id).await["status"]["data_endpoint"]
        .as_str()
        .map(str::to_owned)
}

/// A fresh upload URL for `name` in the dev account's root.
async fn upload_url(hub: &TestHub, name: &str, ttl: u64) -> reqwest::Response {
    hub.req(reqwest::Method::POST, &hub.acc("/storage/files/upload_url"))
        .json(&json!({"parent_id": "root", "name": name, "expires_in": ttl}))
        .send()
        .await
        .expect("upload_url")
}

async fn url_for(hub: &TestHub, name: &str) -> String {
    let r = upload_url(hub, name, 600).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    v["url"].as_str().expect("url").to_owned()
}

/// A plain API upload (`POST .../storage/files`) that does not follow redirects.
async fn api_upload(hub: &TestHub, name: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
        .post(hub.acc("/storage/files"))
        .header("Authorization", hub.apikey())
        .header(
            "X-Kloudless-Metadata",
            json!({"name": name, "parent_id": "root"}).to_string(),
        )
        .body(body)
        .send()
        .await
        .expect("upload")
}

/// Registers `g` on the spoke as a (compromised) hub could and returns its signed URL.
fn forged_url(e: &Edge, g: Grant) -> String {
    let (id, exp) = (g.grant_id.clone(), g.expires);
    let sig = hub::network::grant(&e.hub.state, e.spoke.id, g).expect("spoke connected");
    format!("https://{}/v1/data/{id}?exp={exp}&sig={sig}", e.advertise)
}

fn grant(method: &str, account: i64, service: ServiceConfig, path: &str) -> Grant {
    Grant {
        grant_id: hub::network::new_grant_id(),
        method: method.to_owned(),
        account,
        location: Location {
            service,
            path: path.to_owned(),
        },
        file_id: String::new(),
        expires: now_secs() + 600,
        max_bytes: 0,
        replace: false,
        declared_len: None,
        staging: None,
        claim: None,
        receipt: None,
        part: None,
        reader: None,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn fs(root: &Path) -> ServiceConfig {
    ServiceConfig::Fs(FsSettings {
        root: root.to_string_lossy().into_owned(),
    })
}

/// Files left in the dev account's staging folder.
fn staging_left(hub: &TestHub) -> usize {
    std::fs::read_dir(hub.dev_root().join(".switchyard-partial"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (with `prlimit`, as the
/// test crate has no safe setrlimit), so the test's own sockets fit.
/// The soft open-files limit of process `pid` (`self` for this one), as `/proc` shows it.
fn soft_nofile(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("soft nofile")
        .to_owned()
}

fn raise_nofile(want: u64) {
    let soft: u64 = soft_nofile("self").parse().expect("soft nofile");
    if soft >= want {
        return;
    }
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={want}:"))
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "raising RLIMIT_NOFILE to {want}");
}

/// Whether the peer closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A real upload through a fresh URL and a redirected download of it, both through the spoke.
async fn real_round_trip(e: &Edge, name: &str, seed: u64) {
    let data = e2e::pattern(256 << 10, seed);
    let url = url_for(&e.hub, name).await;
    let r = e
        .client
        .put(&url)
        .body(data.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201, "a real upload while under attack");
    let f: Value = r.json().await.expect("json");
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(e.hub.acc(&format!(
            "/storage/files/{}/contents",
            f["id"].as_str().expect("id")
        )))
        .header("Authorization", e.hub.apikey())
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 307, "large downloads go to the spoke");
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    let got = e.client.get(&location).send().await.expect("follow");
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.expect("bytes").as_ref() == data.as_slice());
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_take_the_data_endpoint_down() {
    raise_nofile(8192);
    let e = edge(64 << 10, "", |hub| {
        format!(
            "{}data_endpoint:\n  max_connections: 1100\n  handshake_timeout_secs: 8\n  \
             header_timeout_secs: 2\n",
            hub_fs_roots(hub)
        )
    })
    .await;
    // 1,000 connections that never say a word.
    let started = Instant::now();
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let s = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(("127.0.0.1", e.port)),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        idle.push(s);
    }
    // While they are open: real requests are served, and the endpoint is still up.
    real_round_trip(&e, "during.bin", 1).await;
    assert_eq!(
        endpoint_state(&e.hub, e.spoke.id).await.as_deref(),
        Some("up")
    );
    // Past the cap (1,100), new connections are closed at once rather than queued.
    let mut extra = Vec::new();
    for _ in 0..200 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(("127.0.0.1", e.port)),
        )
        .await
        {
            extra.push(s);
        }
    }
    let mut closed_at_once = 0;
    for s in &mut extra {
        if closed_within(s, Duration::from_millis(200)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 50,
        "only {closed_at_once} of 200 connections past the cap were closed promptly"
    );
    // The handshake deadline (8 s) closes every idle connection.
    let closes = futures::future::join_all(
        idle.iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(30))),
    )
    .await;
    let open = closes.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} idle connections still open after 30 s");
    tracing::info!(
        secs = started.elapsed().as_secs(),
        "idle connections closed"
    );
    drop((idle, extra));
    // A head sent a byte at a time is cut off at the head deadline (2 s).
    let ca = std::fs::read_to_string(e.spoke.dir.join("ca.crt")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", e.port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("tls");
    let head = b"GET /v1/data/x?exp=1&sig=x HTTP/1.1\r\nHost: a\r\nX-Slow: ";
    let slow_start = Instant::now();
    let mut cut = false;
    for b in head
        .iter()
        .chain(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter())
    {
        if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(250), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing.
                cut = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        cut,
        "a head trickled over {:?} was never cut off",
        slow_start.elapsed()
    );
    assert!(slow_start.elapsed() < Duration::from_secs(10));
    // And afterwards, the endpoint works as before.
    real_round_trip(&e, "after.bin", 2).await;
    assert!(e.spoke.log_text().contains("at its connection limit"));
}

#[tokio::test]
async fn accept_errors_keep_the_endpoint_listening_and_hubs_stop_redirecting_to_it() {
    let e = edge(64 << 10, "", |hub| {
        format!(
            "{}data_endpoint:\n  handshake_timeout_secs: 120\n",
            hub_fs_roots(hub)
        )
    })
    .await;
    let big = e2e::pattern(128 << 10, 3);
    let r = api_upload(&e.hub, "first.bin", big.clone()).await;
    assert_eq!(r.status(), 307, "a large upload is redirected to the spoke");
    // Starve the spoke of file descriptors: a few more than it holds now.
    let pid = e.spoke.child.id().expect("pid");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let soft = soft_nofile(&pid.to_string());
    let set = |soft: &str| {
        let ok = std::process::Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={soft}:"))
            .status()
            .expect("prlimit")
            .success();
        assert!(ok, "prlimit {soft}");
    };
    set(&(fds + 8).to_string());
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", e.port))
                .await
                .expect("connect"),
        );
    }
    // Accepting fails (EMFILE): the spoke says so, and the hub sends no client there.
    e2e::assert_eventually!(
        endpoint_state(&e.hub, e.spoke.id).await.as_deref() == Some("down"),
        Duration::from_secs(15),
        "the spoke to report its data endpoint down"
    );
    let r = api_upload(&e.hub, "second.bin", big.clone()).await;
    assert_eq!(
        r.status(),
        201,
        "served by the hub, not redirected to a dead endpoint"
    );
    assert!(std::fs::read(e.hub.dev_root().join("second.bin")).expect("file") == big);
    let r = upload_url(&e.hub, "third.bin", 600).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        spoke_view(&e.hub, e.spoke.id).await["status"]["healthy"],
        true
    );
    assert!(
        e.spoke.log_text().contains("cannot accept connections"),
        "{}",
        e.spoke.log_text()
    );
    // Descriptors back: the same listener accepts again, and clients are sent there again.
    set(&soft);
    drop(idle);
    e2e::assert_eventually!(
        endpoint_state(&e.hub, e.spoke.id).await.as_deref() == Some("up"),
        Duration::from_secs(20),
        "the data endpoint to come back up"
    );
    let r = api_upload(&e.hub, "fourth.bin", big.clone()).await;
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    let r = e
        .client
        .post(&location)
        .body(big.clone())
        .send()
        .await
        .expect("follow");
    assert_eq!(r.status(), 201);
    assert!(std::fs::read(e.hub.dev_root().join("fourth.bin")).expect("file") == big);
}

#[tokio::test]
async fn a_relay_grant_changes_nothing_over_https() {
    let e = edge(1 << 20, "", hub_fs_roots).await;
    let data = e2e::pattern(10_000, 4);
    e.hub
        .upload(e.hub.creds.account_id, "root", "source.bin", data.clone())
        .await
        .expect("upload");
    let a = e
        .hub
        .state
        .account(e.hub.creds.application_id, e.hub.creds.account_id)
        .await
        .expect("account");
    let url = forged_url(
        &e,
        grant(
            "RELAY",
            e.hub.creds.account_id,
            a.settings.clone(),
            "source.bin",
        ),
    );
    for method in [
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::PUT,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
    ] {
        let r = e
            .client
            .request(method.clone(), &url)
            .body("")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 403, "{method} on a relay grant");
    }
    assert!(
        std::fs::read(e.hub.dev_root().join("source.bin")).expect("file") == data,
        "the source is untouched"
    );
}

#[tokio::test]
async fn concurrent_puts_on_one_upload_url_give_one_201() {
    let e = edge(1 << 20, "", hub_fs_roots).await;
    let url = url_for(&e.hub, "race.bin").await;
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| e2e::pattern(512 << 10, 10 + i)).collect();
    let answers = futures::future::join_all(bodies.iter().map(|b| {
        let (client, url, b) = (e.client.clone(), url.clone(), b.clone());
        async move {
            let r = client.put(&url).body(b).send().await.expect("put");
            let status = r.status().as_u16();
            let v: Value = r.json().await.expect("json");
            (status, v)
        }
    }))
    .await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == 201)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*s, 410, "{v}");
        assert_eq!(v["error_code"], "url_used");
        assert!(v["id"].is_string() && v["message"].is_string());
    }
    assert!(
        std::fs::read(e.hub.dev_root().join("race.bin")).expect("file") == bodies[winners[0]],
        "the file is the winner's, whole"
    );
    assert_eq!(staging_left(&e.hub), 0);
}

#[tokio::test]
async fn an_upload_url_never_replaces_a_file_created_after_it() {
    let e = edge(1 << 20, "", hub_fs_roots).await;
    let url = url_for(&e.hub, "later.bin").await;
    let first = e2e::pattern(4096, 5);
    let f = e
        .hub
        .upload(e.hub.creds.account_id, "root", "later.bin", first.clone())
        .await
        .expect("api upload");
    assert_eq!(
        f["name"], "later.bin",
        "the name was free when the API wrote it"
    );
    let r = e
        .client
        .put(&url)
        .body(e2e::pattern(8192, 6))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "conflict");
    assert!(std::fs::read(e.hub.dev_root().join("later.bin")).expect("file") == first);
    assert!(!e.hub.dev_root().join("later (1).bin").exists());
    assert_eq!(staging_left(&e.hub), 0);
}

#[tokio::test]
async fn a_redirected_upload_is_held_to_its_declared_length() {
    let e = edge(4096, "", hub_fs_roots).await;
    let declared = e2e::pattern(5000, 7);
    let r = api_upload(&e.hub, "sized.bin", declared.clone()).await;
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    // 50 KB against 5,000 declared: refused from the head, nothing written.
    let r = e
        .client
        .post(&location)
        .body(e2e::pattern(50_000, 8))
        .send()
        .await
        .expect("over");
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "request_too_large");
    // Fewer bytes than declared: refused too.
    let r = e
        .client
        .post(&location)
        .body(e2e::pattern(4000, 8))
        .send()
        .await
        .expect("under");
    assert_eq!(r.status(), 400);
    assert!(!e.hub.dev_root().join("sized.bin").exists());
    // The declared upload itself still goes through, once.
    let r = e
        .client
        .post(&location)
        .body(declared.clone())
        .send()
        .await
        .expect("exact");
    assert_eq!(r.status(), 201);
    assert!(std::fs::read(e.hub.dev_root().join("sized.bin")).expect("file") == declared);
    assert_eq!(staging_left(&e.hub), 0);
}

#[tokio::test]
async fn a_spoke_killed_mid_upload_leaves_no_staging() {
    let mut e = edge(1 << 20, "storage:\n  staging_grace_secs: 2\n", hub_fs_roots).await;
    // A URL that expires in 2 s, for an upload that outlasts it.
    let r = upload_url(&e.hub, "stuck.bin", 2).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let url = v["url"].as_str().expect("url").to_owned();
    let exp: i64 = url
        .split("exp=")
        .nth(1)
        .and_then(|r| r.split('&').next())
        .and_then(|x| x.parse().ok())
        .expect("exp");
    // 1 MiB, then nothing: the body never ends.
    let chunk = bytes::Bytes::from(e2e::pattern(1 << 20, 9));
    let body = futures::StreamExt::chain(
        futures::stream::iter([Ok::<_, std::io::Error>(chunk)]),
        futures::stream::pending(),
    );
    let client = e.client.clone();
    let upload = tokio::spawn(async move {
        client
            .put(&url)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
    });
    e2e::assert_eventually!(
        staging_left(&e.hub) == 1,
        Duration::from_secs(15),
        "the spoke to stage the upload"
    );
    // Well past the URL's expiry plus the grace period the upload still runs: the spoke's
    // heartbeats keep its claim fresh, so the sweep leaves the staging alone.
    e2e::assert_eventually!(
        now_secs() > exp + 5,
        Duration::from_secs(15),
        "expiry + 2 grace periods"
    );
    assert_eq!(
        staging_left(&e.hub),
        1,
        "the sweep took a running upload's staging"
    );
    // The spoke dies mid-upload: the hub's claim goes stale and the sweep deletes the staging.
    e.spoke.kill().await;
    e2e::assert_eventually!(
        staging_left(&e.hub) == 0,
        Duration::from_secs(20),
        "the sweep to delete the dead spoke's staging"
    );
    upload.abort();
    assert!(!e.hub.dev_root().join("stuck.bin").exists());
}

#[tokio::test]
async fn grants_and_assignments_reach_fs_only_inside_declared_roots() {
    let declared = tempfile::tempdir().expect("declared");
    let outside = tempfile::tempdir().expect("outside");
    let declared_path = declared.path().canonicalize().expect("canon");
    let e = edge(1 << 20, "", |_| {
        format!(
            "storage:\n  fs_roots:\n  - {:?}\n",
            declared_path.to_string_lossy()
        )
    })
    .await;
    let outside_path = outside.path().canonicalize().expect("canon");
    // The hub's own account lies outside this spoke's roots, and the hub knows it from the
    // spoke's hello: no upload URL on that spoke (503: no spoke can serve it), and large
    // uploads and downloads stay on the hub.
    let r = upload_url(&e.hub, "x.bin", 600).await;
    assert_eq!(r.status(), 503);
    let r = api_upload(&e.hub, "big.bin", vec![7u8; 2 << 20]).await;
    assert_eq!(r.status(), 201, "served inline, not redirected");
    assert!(!e.hub.dev_root().join("x.bin").exists());
    // A forged grant for the host's own files, or a write to an arbitrary folder: refused.
    let url = forged_url(&e, grant("GET", 1, fs(Path::new("/etc")), "hostname"));
    let r = e.client.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("an error, not the file");
    assert_eq!(v["error_code"], "forbidden");
    let url = forged_url(&e, grant("PUT", 1, fs(&outside_path), "planted"));
    let r = e.client.put(&url).body("x").send().await.expect("put");
    assert_eq!(r.status(), 403);
    // A link inside a declared root does not lead out of it.
    std::os::unix::fs::symlink(&outside_path, declared_path.join("link")).expect("ln");
    let url = forged_url(
        &e,
        grant("PUT", 1, fs(&declared_path.join("link")), "planted"),
    );
    let r = e.client.put(&url).body("x").send().await.expect("put");
    assert_eq!(r.status(), 403);
    // An assignment copying the host's files out: refused before anything is opened.
    let assign = shared::proto::Assignment {
        transfer_id: 987_654_321,
        source: Location {
            service: fs(Path::new("/etc")),
            path: "hostname".into(),
        },
        dest: Location {
            service: fs(&outside_path),
            path: "stolen".into(),
        },
        size: 1,
        part_size: 1 << 20,
        upload_id: None,
        parts: Vec::new(),
        done: Vec::new(),
        concurrency: 1,
        rate_limit: None,
        relay: None,
        source_url: None,
    };
    assert!(e
        .hub
        .state
        .network
        .registry
        .send(e.spoke.id, HubMsg::Assign(Box::new(assign))));
    e2e::assert_eventually!(
        e.spoke.log_text().contains("transfer failed"),
        Duration::from_secs(15),
        "the spoke to refuse the assignment"
    );
    assert!(e.spoke.log_text().contains("storage.fs_roots"));
    assert_eq!(
        std::fs::read_dir(&outside_path).expect("dir").count(),
        0,
        "nothing written outside the declared roots"
    );
    // Inside the declared roots, the same spoke serves `fs` grants.
    std::fs::write(declared_path.join("ok.txt"), b"inside").expect("write");
    let url = forged_url(&e, grant("GET", 1, fs(&declared_path), "ok.txt"));
    let r = e.client.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), b"inside");
}

#[tokio::test]
async fn an_upload_body_that_goes_quiet_is_cut_off_and_leaves_nothing() {
    let e = edge(1 << 20, "", |hub| {
        format!(
            "{}data_endpoint:\n  body_idle_timeout_secs: 2\n",
            hub_fs_roots(hub)
        )
    })
    .await;
    let url = url_for(&e.hub, "quiet.bin").await;
    // 256 KiB, then silence with the connection held open.
    let chunk = bytes::Bytes::from(e2e::pattern(256 << 10, 12));
    let body = futures::StreamExt::chain(
        futures::stream::iter([Ok::<_, std::io::Error>(chunk)]),
        futures::stream::pending(),
    );
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        e.client
            .put(&url)
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    )
    .await
    .expect("an answer, not a connection held forever")
    .expect("put");
    assert_eq!(r.status(), 408);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!e.hub.dev_root().join("quiet.bin").exists());
    e2e::assert_eventually!(
        staging_left(&e.hub) == 0,
        Duration::from_secs(5),
        "the failed upload to delete its staging"
    );
}
