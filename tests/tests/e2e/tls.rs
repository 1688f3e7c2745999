//! HTTPS on the API: a certificate from files (HTTP/2 and HTTP/1.1 by ALPN, SIGHUP reload that
//! keeps established connections, a bad new file keeps the old certificate), the redirect
//! listener, handshake abuse (a client that never finishes, garbage, a huge SNI), and ACME
//! against a real Pebble: issuance, renewal, a failed challenge reported by `/readyz`.

use bytes::Bytes;
use e2e::servers::{free_port, Pebble, PebbleOptions};
use e2e::{assert_eventually, HubOptions, TestHub};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const HUB: &str = env!("CARGO_BIN_EXE_e2e-hub");
const IO: Duration = Duration::from_secs(10);

/// A CA made for one test and leaf certificates it signs.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn root(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `names`: (chain PEM, key PEM, leaf DER).
    fn leaf(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &*self.issuer)
            .expect("signed");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// Writes the pair the way an operator's tooling should: a new file renamed into place.
fn write_pair(dir: &Path, cert: &str, key: &str) {
    for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

fn tls_yaml(dir: &Path, extra: &str) -> String {
    format!(
        "tls:\n  cert_file: {d}/cert.pem\n  key_file: {d}/key.pem\n{extra}",
        d = dir.display()
    )
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A verified TLS connection to `addr` for `name`.
async fn connect(
    addr: SocketAddr,
    name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned())?;
    let s = tokio::time::timeout(IO, tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
        .await??;
    Ok(s)
}

/// [`connect`], retried every 50 ms for at most 60 s (a hub starting, a certificate coming).
async fn connect_eventually(
    addr: SocketAddr,
    name: &str,
    cfg: &Arc<rustls::ClientConfig>,
    what: &str,
) -> TlsStream<TcpStream> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match connect(addr, name, cfg.clone()).await {
            Ok(s) => return s,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leaf_of(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates")[0]
        .to_vec()
}

fn alpn_of(s: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(|p| p.to_vec())
}

fn serial_of(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("x509");
    c.tbs_certificate.raw_serial_as_string()
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn http1(s: TlsStream<TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    sender
}

async fn http2(s: TlsStream<TcpStream>) -> H2 {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .expect("http2 handshake");
    tokio::spawn(conn);
    sender
}

fn request(uri: &str, host: &str, auth: Option<&str>) -> http::Request<Empty<Bytes>> {
    let mut b = http::Request::get(uri).header(http::header::HOST, host);
    if let Some(a) = auth {
        b = b.header(http::header::AUTHORIZATION, a);
    }
    b.body(Empty::new()).expect("request")
}

async fn body_text(r: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get1(s: &mut H1, host: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let r = tokio::time::timeout(IO, s.send_request(request(path, host, auth)))
        .await
        .expect("in time")
        .expect("response");
    body_text(r).await
}

async fn get2(s: &mut H2, host: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let uri = format!("https://{host}{path}");
    let r = tokio::time::timeout(IO, s.send_request(request(&uri, host, auth)))
        .await
        .expect("in time")
        .expect("response");
    body_text(r).await
}

fn hub_addr(th: &TestHub) -> SocketAddr {
    th.base_url
        .trim_start_matches("http://")
        .parse()
        .expect("hub address")
}

/// A file certificate: HTTP/2 when the client offers `h2`, HTTP/1.1 otherwise, the whole API
/// behind both; and plain HTTP sent to the TLS port gets nothing but a closed connection.
#[tokio::test]
async fn https_with_a_file_certificate_speaks_h2_and_http1() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new();
    let (cert, key, leaf) = ca.leaf(&["hub.test"]);
    write_pair(dir.path(), &cert, &key);
    let th = TestHub::start_with(HubOptions {
        yaml: Some(tls_yaml(dir.path(), "")),
        ..Default::default()
    })
    .await
    .expect("hub");
    let addr = hub_addr(&th);
    assert!(
        th.creds.base_url.starts_with("https://"),
        "{}",
        th.creds.base_url
    );
    let auth = th.apikey();

    let s = connect(
        addr,
        "hub.test",
        client_config(&[ca.root()], &[b"h2", b"http/1.1"]),
    )
    .await
    .expect("TLS with h2 offered");
    assert_eq!(alpn_of(&s).as_deref(), Some(&b"h2"[..]));
    assert_eq!(leaf_of(&s), leaf, "the configured certificate is served");
    let mut h2 = http2(s).await;
    let (status, body) = get2(&mut h2, "hub.test", "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    // Many requests multiplexed on the one HTTP/2 connection, authenticated API included.
    let mut requests = Vec::new();
    for _ in 0..8 {
        let mut h = h2.clone();
        let auth = auth.clone();
        requests.push(tokio::spawn(async move {
            get2(&mut h, "hub.test", "/v1/accounts", Some(&auth)).await
        }));
    }
    for r in requests {
        let (status, body) = r.await.expect("task");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"count\""), "{body}");
    }

    let s = connect(
        addr,
        "hub.test",
        client_config(&[ca.root()], &[b"http/1.1"]),
    )
    .await
    .expect("TLS with http/1.1 offered");
    assert_eq!(alpn_of(&s).as_deref(), Some(&b"http/1.1"[..]));
    let mut h1 = http1(s).await;
    let (status, body) = get1(&mut h1, "hub.test", "/v1/accounts", Some(&auth)).await;
    assert_eq!(status, 200, "{body}");

    // No ALPN at all (old clients): HTTP/1.1.
    let s = connect(addr, "hub.test", client_config(&[ca.root()], &[]))
        .await
        .expect("TLS without ALPN");
    assert_eq!(alpn_of(&s), None);
    let mut h1 = http1(s).await;
    assert_eq!(get1(&mut h1, "hub.test", "/healthz", None).await.0, 200);

    // Plain HTTP to the HTTPS port: no HTTP answer, the connection is closed at once.
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: hub.test\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .expect("closed promptly");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // A client that does not trust the CA is refused by its own verifier (a real chain check).
    let other = TestCa::new();
    let e = connect(addr, "hub.test", client_config(&[other.root()], &[b"h2"]))
        .await
        .expect_err("untrusted");
    assert!(e.to_string().contains("certificate"), "{e}");
}

/// Reads until EOF or an error; `Err` if the peer keeps the connection open past `limit`.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => {
                if got.len() < 1 << 16 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

/// The real `hub` binary: SIGHUP swaps the certificate for new connections while an
/// established connection keeps working; a bad new file keeps the old certificate and logs
/// why; SIGTERM still stops gracefully.
#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new();
    let (cert_a, key_a, leaf_a) = ca.leaf(&["hub.test"]);
    write_pair(dir.path(), &cert_a, &key_a);
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, tls_yaml(dir.path(), "")).expect("base config");
    let log = dir.path().join("hub.log");
    let port = free_port();
    let mut child = tokio::process::Command::new(HUB)
        .arg("--config")
        .arg(&base)
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .env("SWITCHYARD_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("hub dev");
    let pid = child.id().expect("pid").to_string();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let cfg = client_config(&[ca.root()], &[b"http/1.1"]);
    let established = connect_eventually(addr, "hub.test", &cfg, "the hub to serve HTTPS").await;
    assert_eq!(leaf_of(&established), leaf_a);
    let mut kept = http1(established).await;
    assert_eq!(get1(&mut kept, "hub.test", "/readyz", None).await.0, 200);

    let (cert_b, key_b, leaf_b) = ca.leaf(&["hub.test"]);
    write_pair(dir.path(), &cert_b, &key_b);
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill -HUP")
    };
    assert!(hup().success());
    assert_eventually!(
        connect(addr, "hub.test", cfg.clone())
            .await
            .is_ok_and(|s| leaf_of(&s) == leaf_b),
        Duration::from_secs(10),
        "new connections to get the new certificate"
    );
    // The connection made before the reload still serves requests.
    for _ in 0..3 {
        assert_eq!(get1(&mut kept, "hub.test", "/healthz", None).await.0, 200);
    }

    // A broken file: the reload fails, says why, and the certificate served stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").expect("garbage");
    assert!(hup().success());
    assert_eventually!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("TLS certificate reload failed"),
        Duration::from_secs(10),
        "the failed reload in the log"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    let line = text
        .lines()
        .find(|l| l.contains("TLS certificate reload failed"))
        .expect("line");
    assert!(line.contains("tls.cert_file"), "{line}");
    let s = connect(addr, "hub.test", cfg.clone())
        .await
        .expect("still serving");
    assert_eq!(leaf_of(&s), leaf_b, "the previous certificate stays");
    assert_eq!(get1(&mut kept, "hub.test", "/healthz", None).await.0, 200);
    drop(kept);

    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the hub stops on SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
}

/// The plain-HTTP listener: 308 to the same host, path and query over HTTPS, for every method;
/// ACME challenge paths it does not know answer a JSON 404.
#[tokio::test]
async fn redirect_listener_answers_308_to_https() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf(&["hub.test"]);
    write_pair(dir.path(), &cert, &key);
    let port = free_port();
    let redirect = free_port();
    let th = TestHub::start_with(HubOptions {
        port: Some(port),
        yaml: Some(tls_yaml(
            dir.path(),
            &format!(
                "  redirect_listen: 127.0.0.1:{redirect}\npublic_url: https://hub.test:{port}\n"
            ),
        )),
        ..Default::default()
    })
    .await
    .expect("hub");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // `serve` binds the redirect listener as it starts, in the hub's task.
    assert_eventually!(
        TcpStream::connect(("127.0.0.1", redirect)).await.is_ok(),
        Duration::from_secs(10),
        "the redirect listener"
    );
    let url = format!("http://127.0.0.1:{redirect}/v1/accounts/1/storage/folders/root/contents?page_size=5&x=a%20b");
    let r = http
        .get(&url)
        .header("Host", format!("api.hub.test:{redirect}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://api.hub.test:{port}/v1/accounts/1/storage/folders/root/contents?page_size=5&x=a%20b")
    );
    let r = http
        .post(format!("http://127.0.0.1:{redirect}/v1/accounts"))
        .header("Host", "hub.test")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 308, "308 keeps the method and body");
    assert_eq!(
        r.headers()["location"],
        format!("https://hub.test:{port}/v1/accounts")
    );
    // No usable Host: the public URL's origin.
    let mut tcp = TcpStream::connect(("127.0.0.1", redirect))
        .await
        .expect("tcp");
    tcp.write_all(b"GET /x HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let got = read_until_closed(&mut tcp, IO).await.expect("answer");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.") && got.contains(" 308 "), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains(&format!("location: https://hub.test:{port}/x")),
        "{got}"
    );
    let r = http
        .get(format!(
            "http://127.0.0.1:{redirect}/.well-known/acme-challenge/unknown-token"
        ))
        .send()
        .await
        .expect("challenge");
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error_code"], "not_found", "{body}");
    drop(th);
}

/// What a TLS listener meets on the internet: a client that opens a connection and never
/// finishes its handshake is cut off after `tls.handshake_timeout_secs`; a ClientHello with an
/// oversized server name is answered at once (no hang, no crash); a handshake message larger
/// than TLS allows is refused; and the hub keeps serving others meanwhile.
#[tokio::test]
async fn handshake_abuse_is_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new();
    let (cert, key, _) = ca.leaf(&["hub.test"]);
    write_pair(dir.path(), &cert, &key);
    let th = TestHub::start_with(HubOptions {
        yaml: Some(tls_yaml(dir.path(), "  handshake_timeout_secs: 2\n")),
        ..Default::default()
    })
    .await
    .expect("hub");
    let addr = hub_addr(&th);
    let cfg = client_config(&[ca.root()], &[b"http/1.1"]);

    // Silent clients and one that stops mid-ClientHello: all closed by the server after ~2 s.
    let started = std::time::Instant::now();
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp");
        if i % 2 == 1 {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("partial hello");
        }
        idle.push(tcp);
    }
    // Meanwhile a real client is served.
    let s = connect(addr, "hub.test", cfg.clone()).await.expect("TLS");
    let mut h = http1(s).await;
    assert_eq!(get1(&mut h, "hub.test", "/healthz", None).await.0, 200);
    for mut tcp in idle {
        read_until_closed(&mut tcp, Duration::from_secs(8))
            .await
            .expect("the server closes a stalled handshake");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "stalled handshakes closed after {took:?}"
    );

    // A 3,000-byte server name (DNS allows 253): answered promptly, with a handshake or an
    // alert record, well before the handshake timeout.
    for len in [300usize, 3000] {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp");
        tcp.write_all(&client_hello(&"a".repeat(len)))
            .await
            .expect("hello");
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut first))
            .await
            .unwrap_or_else(|_| panic!("no answer within 1 s to a {len}-byte SNI"))
            .unwrap_or(0);
        assert!(
            n == 0 || first[0] == 0x16 || first[0] == 0x15,
            "a TLS record or a close, got {:#x}",
            first[0]
        );
    }
    // A ClientHello that claims 16 MiB: refused at once, not buffered.
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    huge.resize(5 + 0x4000, 0);
    tcp.write_all(&huge).await.expect("write");
    let started = std::time::Instant::now();
    read_until_closed(&mut tcp, Duration::from_secs(1))
        .await
        .expect("closed at once");
    assert!(started.elapsed() < Duration::from_secs(1));

    let s = connect(addr, "hub.test", cfg).await.expect("still serving");
    let mut h = http1(s).await;
    assert_eq!(get1(&mut h, "hub.test", "/readyz", None).await.0, 200);
}

/// A TLS 1.2/1.3 ClientHello (one record) offering ECDHE suites, naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    fn u16be(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    // server_name
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend(u16be(name.len() + 3));
    sn.push(0);
    sn.extend(u16be(name.len()));
    sn.extend(name);
    ext.extend([0x00, 0x00]);
    ext.extend(u16be(sn.len()));
    ext.extend(&sn);
    // supported_groups: x25519, secp256r1
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext.extend([
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);
    let mut body = vec![0x03, 0x03];
    body.extend([0x42; 32]); // random
    body.push(0); // session id
                  // ECDHE-ECDSA/RSA-AES128-GCM-SHA256
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([0x01, 0x00]); // compression: null
    body.extend(u16be(ext.len()));
    body.extend(ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend(u16be(body.len()));
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16be(hs.len()));
    record.extend(hs);
    record
}

/// ACME against Pebble: the hub starts with no certificate, gets one for `public_url`'s host
/// over HTTP-01 (served by its redirect listener) that chains to Pebble's issuing root, caches
/// it (0600), and renews it before it expires (a new serial).
#[tokio::test]
async fn acme_issues_and_renews_a_certificate_from_pebble() {
    let port = free_port();
    let redirect = free_port();
    // 15 s certificates: with the default `renew_before` (30 days, longer than the lifetime)
    // the hub renews at two thirds of the lifetime, ~10 s after issuance.
    let pebble = Pebble::start(PebbleOptions {
        http_port: redirect,
        validity_secs: Some(15),
    })
    .await
    .expect("pebble");
    let cache = tempfile::tempdir().expect("tmp");
    let yaml = format!(
        "public_url: https://localhost:{port}\ntls:\n  redirect_listen: 127.0.0.1:{redirect}\n  \
         acme:\n    directory_url: {dir}\n    contact: [ops@example.com]\n    ca_file: {ca}\n    \
         cache_dir: {cache}\n",
        dir = pebble.directory_url(),
        ca = pebble.ca_file().display(),
        cache = cache.path().display(),
    );
    let th = TestHub::start_with(HubOptions {
        port: Some(port),
        yaml: Some(yaml),
        ..Default::default()
    })
    .await
    .expect("hub");
    let addr = hub_addr(&th);
    let root = pebble.issuing_root().await.expect("Pebble's root");
    let root = CertificateDer::from_pem_slice(root.as_bytes()).expect("root PEM");
    let cfg = client_config(&[root], &[b"h2", b"http/1.1"]);

    let s = connect_eventually(
        addr,
        "localhost",
        &cfg,
        "a certificate chaining to Pebble's root",
    )
    .await;
    let first_leaf = leaf_of(&s);
    let mut h2 = http2(s).await;
    let (status, body) = get2(&mut h2, "localhost", "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        th.state.tls.as_ref().and_then(|t| t.serving_serial()),
        Some(serial_of(&first_leaf).replace(':', ""))
    );
    let (status, metrics) = get2(&mut h2, "localhost", "/metrics", None).await;
    assert_eq!(status, 200);
    let (_, parsed) = x509_parser::parse_x509_certificate(&first_leaf).expect("x509");
    let expiry = format!(
        "switchyard_hub_tls_certificate_not_after_seconds {}",
        parsed.validity().not_after.timestamp()
    );
    assert!(metrics.contains(&expiry), "{expiry} in\n{metrics}");
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["account.json", "certificate.pem"] {
        let mode = std::fs::metadata(cache.path().join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // Renewal: a new certificate (new serial) before the first one expires.
    let first_serial = serial_of(&first_leaf);
    let mut renewed = None;
    assert_eventually!(
        {
            if let Ok(s) = connect(addr, "localhost", cfg.clone()).await {
                let leaf = leaf_of(&s);
                if serial_of(&leaf) != first_serial {
                    renewed = Some(leaf);
                }
            }
            renewed.is_some()
        },
        Duration::from_secs(40),
        "the renewed certificate"
    );
    let (_, first) = x509_parser::parse_x509_certificate(&first_leaf).expect("x509");
    let renewed = renewed.expect("renewed");
    let (_, second) = x509_parser::parse_x509_certificate(&renewed).expect("x509");
    assert!(
        second.validity().not_after.timestamp() > first.validity().not_after.timestamp(),
        "the renewal extends validity"
    );
    // The connection made before the renewal keeps working.
    let (status, _) = get2(&mut h2, "localhost", "/healthz", None).await;
    assert_eq!(status, 200);
}

/// A challenge Pebble cannot validate (its HTTP-01 port is one nobody serves): `/readyz`
/// answers 503 naming the challenge type, the domain and Pebble's problem detail, served on
/// the placeholder certificate.
#[tokio::test]
async fn acme_failed_challenge_is_reported_on_readyz() {
    let port = free_port();
    let redirect = free_port();
    let nobody = free_port();
    let pebble = Pebble::start(PebbleOptions {
        http_port: nobody,
        validity_secs: None,
    })
    .await
    .expect("pebble");
    let yaml = format!(
        "public_url: https://localhost:{port}\ntls:\n  redirect_listen: 127.0.0.1:{redirect}\n  \
         acme:\n    directory_url: {dir}\n    ca_file: {ca}\n",
        dir = pebble.directory_url(),
        ca = pebble.ca_file().display(),
    );
    let th = TestHub::start_with(HubOptions {
        port: Some(port),
        yaml: Some(yaml),
        ..Default::default()
    })
    .await
    .expect("hub");
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(IO)
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{port}/readyz");
    let mut body = serde_json::Value::Null;
    assert_eventually!(
        {
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == 503 {
                    body = r.json().await.unwrap_or_default();
                }
            }
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("challenge"))
        },
        Duration::from_secs(60),
        "/readyz to report the failed challenge"
    );
    let message = body["message"].as_str().expect("message");
    assert_eq!(body["error_code"], "not_ready", "{body}");
    assert!(message.contains("http-01"), "{message}");
    assert!(message.contains("localhost"), "{message}");
    // Pebble's problem document: its type and its detail (the refused connection).
    assert!(
        message.contains("urn:ietf:params:acme:error:connection"),
        "{message}"
    );
    assert!(message.contains(&nobody.to_string()), "{message}");
    let metrics = http
        .get(format!("https://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("switchyard_hub_tls_certificate_not_after_seconds 0"),
        "{metrics}"
    );
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_hub_acme_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the failure counter");
    assert!(failures >= 1, "{metrics}");
    assert_eq!(
        th.state
            .tls
            .as_ref()
            .and_then(|t| t.last_error())
            .as_deref(),
        Some(message.trim_start_matches("no TLS certificate yet: "))
    );
}
