//! The end-to-end harness: an in-process hub on a loopback port (`TestHub::start()`), real
//! servers for the production dependencies (`servers`), and small request helpers.

pub mod bench_budgets;
pub mod bench_detect;
pub mod bench_dns;
pub mod bench_lab;
pub mod bench_linkemu;
pub mod bench_regions;
pub mod bench_tunnel;
pub mod bench_wan;
pub mod bench_webhooks;
pub mod browser;
pub mod cut_proxy;
pub mod lab;
pub mod linkemu;
pub mod linkemu_cli;
pub mod netns;
pub mod oauth_provider;
pub mod proxy;
pub mod regions_lab;
pub mod replay;
pub mod scripted_dns;
pub mod servers;
pub mod terraform_lab;
pub mod throttle;
pub mod tunnel_lab;
pub mod wan_lab;
pub mod webhook_receiver;

use anyhow::Context as _;
use hub::config::Config;
use hub::dev::DevCredentials;
use hub::state::AppState;
use std::path::PathBuf;
use std::time::Duration;

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics with `what` on timeout.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $what:expr) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Raises the kernel's UDP socket buffer limits (`net.core.rmem_max`/`wmem_max`) to 16 MiB
/// when lower, so QUIC endpoints get the 8 MiB buffers they ask for (the default limit here is
/// 4 MiB). Global to the machine, only ever raised, so it needs no undoing.
pub fn raise_udp_buffers() {
    const WANT: u64 = 16 << 20;
    for name in ["rmem_max", "wmem_max"] {
        let path = format!("/proc/sys/net/core/{name}");
        let now: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if now < WANT {
            if let Err(e) = std::fs::write(&path, WANT.to_string()) {
                tracing::warn!(%path, error = %e, "cannot raise the UDP buffer limit");
            }
        }
    }
}

/// How to start a test hub.
#[derive(Debug, Default, Clone)]
pub struct HubOptions {
    /// A PostgreSQL URL; SQLite in the data dir when `None`.
    pub database_url: Option<String>,
    /// `limits.max_upload_bytes`.
    pub max_upload_bytes: u64,
    /// Extra YAML merged as the base config.
    pub yaml: Option<String>,
    /// Keep the SSRF guard on (test hubs otherwise allow loopback storage servers).
    pub ssrf_guard: bool,
    /// Use this directory (kept after the hub stops) instead of a fresh temp dir, so a second
    /// hub can restart on the same data.
    pub dir: Option<PathBuf>,
    /// Serve on this port (HTTP on TCP, spokes on UDP) instead of a free one.
    pub port: Option<u16>,
    /// Serve on this address instead of 127.0.0.1 (spokes in network namespaces dial it).
    pub bind: Option<std::net::IpAddr>,
}

/// A test hub's directory: a temp dir, or one the test keeps for a restart.
#[derive(Debug)]
enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &std::path::Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// An HTTP client for tests: every request is bounded (120 s), so a server that accepts and
/// never answers fails the test instead of hanging the suite.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a reqwest client")
}

/// [`http_client`] that does not follow redirects (tests that read `Location`).
pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client")
}

/// The egress policy of connectors the tests build directly: the test servers are on
/// loopback, which the default policy (only globally routable addresses) refuses.
pub fn loopback_egress() -> shared::egress::EgressPolicy {
    shared::egress::EgressPolicy::open(shared::resolve::Resolver::system().clone())
}

/// What a test needs to call a hub's API, whether it runs in the test process ([`TestHub`])
/// or as a real `hub` process: its base URL, a client and the dev credentials.
pub trait HubApi {
    fn base(&self) -> &str;
    fn client(&self) -> &reqwest::Client;
    /// The dev application's API key.
    fn api_key(&self) -> &str;
    /// The dev meta token.
    fn meta_token(&self) -> &str;

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    fn apikey(&self) -> String {
        format!("APIKey {}", self.api_key())
    }

    fn meta(&self) -> String {
        format!("Bearer {}", self.meta_token())
    }

    /// A request with the API key.
    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client()
            .request(method, url)
            .header("Authorization", self.apikey())
    }

    /// Connects an account of the dev application; returns its JSON (with `bearer_token`).
    #[allow(async_fn_in_trait)]
    async fn connect(
        &self,
        service: &str,
        credentials: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let r = self
            .req(reqwest::Method::POST, &self.url("/v1/accounts"))
            .json(&serde_json::json!({ "service": service, "account": format!("{service} test"), "credentials": credentials }))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 201,
            "connect {service} failed: {} {}",
            r.status(),
            r.text().await?
        );
        Ok(r.json().await?)
    }
}

impl HubApi for TestHub {
    fn base(&self) -> &str {
        &self.base_url
    }
    fn client(&self) -> &reqwest::Client {
        &self.http
    }
    fn api_key(&self) -> &str {
        &self.creds.api_key
    }
    fn meta_token(&self) -> &str {
        &self.creds.meta_token
    }
}

/// A hub serving on 127.0.0.1 with a dev application, API key, meta token and `fs` account.
pub struct TestHub {
    pub base_url: String,
    pub creds: DevCredentials,
    pub state: AppState,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    _dir: Dir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    background: Option<hub::Background>,
}

impl TestHub {
    /// A hub on SQLite.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(HubOptions::default()).await
    }

    pub async fn start_with(opts: HubOptions) -> anyhow::Result<Self> {
        let dir = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                Dir::Kept(d.clone())
            }
            None => Dir::Temp(tempfile::tempdir()?),
        };
        let data_dir = dir.path().join("data");
        let ip = opts.bind.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let listener = tokio::net::TcpListener::bind((ip, opts.port.unwrap_or(0))).await?;
        let port = listener.local_addr()?.port();
        let base = match &opts.yaml {
            Some(y) => {
                let p = dir.path().join("base.yaml");
                std::fs::write(&p, y)?;
                Some(p)
            }
            None => None,
        };
        let mut config: Config = hub::dev::dev_config(&data_dir, port, base.as_deref())?;
        config.database.url = opts.database_url.clone();
        config.listen = std::net::SocketAddr::new(ip, port);
        config.network.quic_listen = Some(std::net::SocketAddr::new(ip, port));
        config.limits.max_upload_bytes = opts.max_upload_bytes;
        config.storage.allow_private_endpoints = !opts.ssrf_guard;
        config
            .storage
            .fs
            .allowed_roots
            .push(dir.path().join("roots"));
        std::fs::create_dir_all(dir.path().join("roots"))?;
        let state = hub::open(config).await.context("opening the hub")?;
        let creds = hub::dev::bootstrap(&state).await?;
        let background = hub::Background::start(&state).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hub::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            base_url: format!("http://{}", std::net::SocketAddr::new(ip, port)),
            creds,
            state,
            http: http_client(),
            data_dir: data_dir.canonicalize()?,
            _dir: dir,
            shutdown: Some(tx),
            task: Some(task),
            background: Some(background),
        })
    }

    /// The steering DNS server's address (UDP and TCP), when `dns.listen` is configured.
    pub fn dns_addr(&self) -> Option<std::net::SocketAddr> {
        self.background
            .as_ref()
            .and_then(|b| b.dns.as_ref())
            .map(|d| d.local_addr)
    }

    /// A directory in the dev application's space under the allowed `fs` root `roots`, for
    /// extra accounts.
    pub fn new_fs_root(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.fs_root_of(self.creds.application_id, name)
    }

    /// A directory in application `app`'s space under the allowed `fs` root `roots`.
    pub fn fs_root_of(&self, app: i64, name: &str) -> anyhow::Result<PathBuf> {
        let p = self
            ._dir
            .path()
            .join("roots")
            .join(format!("app-{app}"))
            .join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p.canonicalize()?)
    }

    /// A second hub on the database at `database_url` (this hub's) in `dir`: it shares this
    /// hub's master key (it opens this hub's accounts and keys) and allows its `fs` roots;
    /// `yaml` comes before that `storage` section.
    pub async fn start_peer(
        &self,
        database_url: String,
        dir: PathBuf,
        yaml: &str,
    ) -> anyhow::Result<TestHub> {
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::copy(
            self.data_dir.join("master.key"),
            dir.join("data/master.key"),
        )?;
        TestHub::start_with(HubOptions {
            database_url: Some(database_url),
            dir: Some(dir),
            yaml: Some(format!(
                "{yaml}storage:\n  fs:\n    allowed_roots:\n      - {}\n",
                self.fs_allowed_root().display()
            )),
            ..Default::default()
        })
        .await
    }

    /// The allowed `fs` root `roots` (canonical), where each application owns `app-<id>`.
    pub fn fs_allowed_root(&self) -> PathBuf {
        self._dir
            .path()
            .join("roots")
            .canonicalize()
            .unwrap_or_else(|_| self._dir.path().join("roots"))
    }

    /// The dev account's root: the dev application's space under `DATA_DIR/files`.
    pub fn dev_root(&self) -> PathBuf {
        self.data_dir
            .join("files")
            .join(format!("app-{}", self.creds.application_id))
    }

    pub fn url(&self, path: &str) -> String {
        HubApi::url(self, path)
    }

    /// `/v1/accounts/{dev account}{rest}`.
    pub fn acc(&self, rest: &str) -> String {
        self.url(&format!("/v1/accounts/{}{rest}", self.creds.account_id))
    }

    pub fn apikey(&self) -> String {
        HubApi::apikey(self)
    }

    pub fn meta(&self) -> String {
        HubApi::meta(self)
    }

    /// A request with the API key.
    pub fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        HubApi::req(self, method, url)
    }

    /// Uploads `data` as `name` into folder `parent` of `account`; returns the file object.
    pub async fn upload(
        &self,
        account: i64,
        parent: &str,
        name: &str,
        data: Vec<u8>,
    ) -> anyhow::Result<serde_json::Value> {
        let meta = serde_json::json!({ "name": name, "parent_id": parent }).to_string();
        let r = self
            .req(
                reqwest::Method::POST,
                &self.url(&format!("/v1/accounts/{account}/storage/files")),
            )
            .header("X-Kloudless-Metadata", meta)
            .body(data)
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 201,
            "upload failed: {} {}",
            r.status(),
            r.text().await?
        );
        Ok(r.json().await?)
    }

    /// Downloads the whole content of file `id` of `account`.
    pub async fn download(&self, account: i64, id: &str) -> anyhow::Result<bytes::Bytes> {
        let url = self.url(&format!(
            "/v1/accounts/{account}/storage/files/{id}/contents"
        ));
        let r = self.req(reqwest::Method::GET, &url).send().await?;
        anyhow::ensure!(r.status().is_success(), "download failed: {}", r.status());
        Ok(r.bytes().await?)
    }

    /// Stores an account of the dev application for `service` with `creds` in the database
    /// directly, sealed as the API seals them: without the provider check that connecting
    /// through the API makes (OAuth providers' real servers are unreachable from tests).
    pub async fn store_account(
        &self,
        service: &str,
        creds: serde_json::Value,
    ) -> anyhow::Result<i64> {
        let settings = shared::storage::ServiceConfig::from_parts(service, creds)?;
        let plain = serde_json::to_vec(&settings)?;
        let sealer = &self.state.sealer;
        Ok(self
            .state
            .db
            .create_account(
                self.creds.application_id,
                service,
                &format!("{service} account"),
                |id| sealer.seal(&plain, hub::state::account_aad(id).as_bytes()),
                hub::state::now_ms(),
            )
            .await?
            .id)
    }

    /// An API key of a new application called `name`: another tenant of this hub.
    pub async fn other_app_key(&self, name: &str) -> anyhow::Result<String> {
        let meta = format!("Bearer {}", self.creds.meta_token);
        let app: serde_json::Value = self
            .http
            .post(self.url("/v1/meta/applications"))
            .header("Authorization", &meta)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await?
            .json()
            .await?;
        let id = app["id"].as_i64().context("application id")?;
        let key: serde_json::Value = self
            .http
            .post(self.url(&format!("/v1/meta/applications/{id}/apikeys")))
            .header("Authorization", &meta)
            .send()
            .await?
            .json()
            .await?;
        Ok(key["key"].as_str().context("key")?.to_owned())
    }

    /// Connects an account of the dev application; returns its JSON (with `bearer_token`).
    pub async fn connect(
        &self,
        service: &str,
        credentials: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        HubApi::connect(self, service, credentials).await
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        if let Some(b) = self.background.take() {
            b.shutdown().await;
        }
        Ok(())
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(b) = &self.background {
            b.abort();
        }
    }
}

/// SHA-256 hex of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `(status, JSON body)` of a request to `hub` with `auth` (`Null` when the body is not JSON).
pub async fn call(
    hub: &TestHub,
    method: reqwest::Method,
    auth: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = hub
        .http
        .request(method, hub.url(path))
        .header("Authorization", auth);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}
