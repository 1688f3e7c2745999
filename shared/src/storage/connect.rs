//! Builds an OpenDAL operator for each service from its typed settings (no IO except creating
//! the fs staging directory, writing an SFTP private key file for the ssh client and resolving
//! an SFTP host). Every HTTP provider client goes through the egress policy
//! ([`crate::egress`]): its resolver, a check of every request URL, no redirects.

use super::service::ServiceConfig;
use super::{webdav, Connector, Staging, StorageError};
use crate::budget::{Budget, Budgets};
use crate::egress::EgressPolicy;
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{HttpTransporter, OperationContext, Operator};
use std::path::PathBuf;
use std::time::Duration;

/// Process-level settings every connector needs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// A private directory (mode 0700) for files the ssh client must read (SFTP keys).
    pub scratch_dir: PathBuf,
    /// Per-request timeout for network providers.
    pub io_timeout: Duration,
    /// Where provider connections may go (the SSRF guard).
    pub egress: EgressPolicy,
    /// The provider request budgets every request draws from (see [`crate::budget`]).
    pub budgets: Budgets,
}

impl Default for ConnectOptions {
    /// Guarded: only globally reachable provider addresses.
    fn default() -> Self {
        Self {
            scratch_dir: std::env::temp_dir().join("switchyard-scratch"),
            io_timeout: Duration::from_secs(60),
            egress: EgressPolicy::default(),
            budgets: Budgets::default(),
        }
    }
}

/// The OAuth consumer services share one builder shape.
macro_rules! oauth_service {
    ($builder:ty, $s:expr, $bad:expr) => {{
        let s = $s;
        let mut b = <$builder>::default();
        if let Some(t) = &s.access_token {
            b = b.access_token(t);
        }
        if let Some(t) = &s.refresh_token {
            b = b.refresh_token(t);
        }
        if let Some(t) = &s.client_id {
            b = b.client_id(t);
        }
        if let Some(t) = &s.client_secret {
            b = b.client_secret(t);
        }
        if let Some(r) = &s.root {
            b = b.root(r);
        }
        (Operator::new(b).map_err($bad)?, Staging::Atomic)
    }};
}

static INSTALL: std::sync::Once = std::sync::Once::new();

impl Connector {
    /// Builds the connector for `cfg`. This does not contact the provider (except resolving an
    /// SFTP host): call [`Connector::check`] for that.
    pub async fn connect(cfg: &ServiceConfig, opts: &ConnectOptions) -> Result<Self, StorageError> {
        INSTALL.call_once(opendal::install_default);
        let bad = |e: opendal::Error| StorageError::InvalidSettings(e.message().to_owned());
        let (op, staging) = match cfg {
            #[cfg(feature = "fs")]
            ServiceConfig::Fs(s) => {
                let root = std::path::Path::new(&s.root);
                if !root.is_dir() {
                    return Err(StorageError::InvalidSettings(
                        "fs root does not exist or is not a directory".into(),
                    ));
                }
                // Uploads do not go through OpenDAL's fs writer: its atomic write stages under
                // `<name>.<uuid>` (too long for a 250-byte name) and replaces on rename. Ours
                // stages under a short fixed name and can publish without replacing.
                let b = opendal::services::Fs::default().root(&s.root);
                // Never through a symbolic link below the root (`nofollow`); the publish path
                // (`publish.rs`) makes the same check before it links or renames.
                let op = Operator::new(b)
                    .map_err(bad)?
                    .layer(super::nofollow::NoFollowLayer::new(root));
                (op, Staging::Fs(root.to_path_buf()))
            }
            #[cfg(feature = "s3")]
            ServiceConfig::S3(s) => {
                let mut b = opendal::services::S3::default()
                    .bucket(&s.bucket)
                    .access_key_id(&s.access_key_id)
                    .secret_access_key(&s.secret_access_key)
                    .region(s.region.as_deref().unwrap_or("us-east-1"))
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(e) = &s.endpoint {
                    b = b.endpoint(e);
                }
                if let Some(r) = &s.root {
                    b = b.root(r);
                }
                (Operator::new(b).map_err(bad)?, Staging::Atomic)
            }
            #[cfg(feature = "webdav")]
            ServiceConfig::Webdav(s) => {
                let mut b = opendal::services::Webdav::default().endpoint(&s.endpoint);
                if let Some(u) = &s.username {
                    b = b.username(u);
                }
                if let Some(p) = &s.password {
                    b = b.password(p);
                }
                if let Some(r) = &s.root {
                    b = b.root(r);
                }
                let budget = opts.budgets.budget(cfg.name(), cfg.budget_key());
                let client = webdav::Client::new(s, opts.io_timeout, &opts.egress, budget)?;
                (Operator::new(b).map_err(bad)?, Staging::Webdav(client))
            }
            #[cfg(feature = "sftp")]
            ServiceConfig::Sftp(s) => {
                let key = s.key.as_deref().ok_or_else(|| {
                    StorageError::InvalidSettings("sftp needs a private `key`".into())
                })?;
                let key_path = write_private_key(&opts.scratch_dir, key)?;
                // The ssh client resolves and connects by itself, out of the guard's sight: resolve
                // and check here, and hand it the checked address instead of the name.
                let endpoint = checked_ssh_endpoint(cfg, &opts.egress).await?;
                let mut b = opendal::services::Sftp::default()
                    .endpoint(&endpoint)
                    .user(&s.user)
                    .key(&key_path.to_string_lossy())
                    .known_hosts_strategy("accept");
                if let Some(r) = &s.root {
                    b = b.root(r);
                }
                (Operator::new(b).map_err(bad)?, Staging::Rename)
            }
            #[cfg(feature = "azblob")]
            ServiceConfig::Azblob(s) => {
                let mut b = opendal::services::Azblob::default()
                    .container(&s.container)
                    .endpoint(&s.endpoint)
                    .account_name(&s.account_name)
                    .account_key(&s.account_key);
                if let Some(r) = &s.root {
                    b = b.root(r);
                }
                (Operator::new(b).map_err(bad)?, Staging::Atomic)
            }
            #[cfg(feature = "gcs")]
            ServiceConfig::Gcs(s) => {
                let mut b = opendal::services::Gcs::default()
                    .bucket(&s.bucket)
                    .credential(&s.credential);
                if let Some(e) = &s.endpoint {
                    b = b.endpoint(e);
                }
                if let Some(r) = &s.root {
                    b = b.root(r);
                }
                (Operator::new(b).map_err(bad)?, Staging::Atomic)
            }
            #[cfg(feature = "dropbox")]
            ServiceConfig::Dropbox(s) => oauth_service!(opendal::services::Dropbox, s, bad),
            #[cfg(feature = "gdrive")]
            ServiceConfig::Gdrive(s) => oauth_service!(opendal::services::Gdrive, s, bad),
            #[cfg(feature = "onedrive")]
            ServiceConfig::Onedrive(s) => oauth_service!(opendal::services::Onedrive, s, bad),
            #[allow(unreachable_patterns)]
            other => {
                return Err(StorageError::Unsupported(format!(
                    "service '{}' is not compiled into this build",
                    other.name()
                )))
            }
        };
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let budget = opts.budgets.budget(cfg.name(), cfg.budget_key());
        let (op, publish_op) = if cfg.name() == "fs" {
            (op.clone(), op)
        } else {
            let http = opts
                .egress
                .http_client(opts.io_timeout)
                .map_err(|e| StorageError::Other(format!("cannot build the HTTP client: {e}")))?;
            let transport = GuardedTransport {
                requests: requests.clone(),
                budget: budget.clone(),
                egress: opts.egress.clone(),
                inner: opendal_http_transport_reqwest::ReqwestTransport::new(http),
            };
            let op = op
                .with_context(
                    OperationContext::new().with_http_transport(HttpTransporter::new(transport)),
                )
                .layer(TimeoutLayer::new().with_io_timeout(opts.io_timeout));
            let publish_op = op.clone();
            let op = op.layer(
                // Short, bounded retries: a request waits at most ~1.5 s before the client
                // hears 502/429 and decides for itself.
                RetryLayer::new()
                    .with_max_times(3)
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(1))
                    .with_jitter()
                    .with_notify(LogRetry),
            );
            (op, publish_op)
        };
        let endpoint_host = cfg.endpoint_addr().ok().flatten().map(|(h, _)| h);
        Ok(Connector {
            op,
            publish_op,
            service: cfg.name(),
            staging,
            staging_ready: Default::default(),
            tagging: super::etag::Tagging::for_service(cfg),
            endpoint_host,
            egress: opts.egress.clone(),
            requests,
            budget,
        })
    }
}

/// OpenDAL's HTTP transport with the egress check on every request: the URL's host when it is
/// an IP literal (names are checked by the client's resolver), including a redirect target
/// OpenDAL reuses. The reqwest client underneath follows no redirects. Each request waits for
/// the account's budget first, and a `429`/`503` answer cools the budget down cluster-wide.
struct GuardedTransport {
    /// Counts the requests sent (detectors report their cost per poll).
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    budget: Budget,
    egress: EgressPolicy,
    inner: opendal_http_transport_reqwest::ReqwestTransport,
}

impl opendal::HttpTransport for GuardedTransport {
    async fn fetch(
        &self,
        req: http::Request<opendal::Buffer>,
    ) -> opendal::Result<http::Response<opendal::HttpBody>> {
        let mut targets = vec![req.uri().to_string()];
        if let Some(r) = req.extensions().get::<opendal::HttpRedirect>() {
            targets.push(r.uri().original_uri().to_owned());
        }
        for t in targets {
            let url = reqwest::Url::parse(&t).map_err(|e| {
                opendal::Error::new(opendal::ErrorKind::Unexpected, "request url is invalid")
                    .set_source(e)
            })?;
            self.egress.check_url(&url).map_err(|e| {
                opendal::Error::new(opendal::ErrorKind::Unexpected, "send http request")
                    .with_operation("egress::check")
                    .set_source(e)
            })?;
        }
        self.budget.admit().await.map_err(|e| {
            // Permanent: the retry layer must not wait again what the budget refused.
            opendal::Error::new(opendal::ErrorKind::RateLimited, "provider budget spent")
                .with_operation("budget::admit")
                .set_source(e)
        })?;
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self.inner.fetch(req).await?;
        self.budget
            .observe(resp.status().as_u16(), resp.headers())
            .await;
        Ok(resp)
    }
}

/// Logs OpenDAL's retries on one line, without the provider's response body or a backtrace
/// (its default notifier prints the error's multi-line `Debug`, body and backtrace included).
struct LogRetry;

impl opendal::layers::RetryInterceptor for LogRetry {
    fn intercept(&self, event: opendal::layers::RetryEvent<'_>) {
        tracing::warn!(
            operation = ?event.op,
            attempt = event.attempt,
            after_ms = event.retry_after.as_millis() as u64,
            error = %super::describe_error(event.err),
            "provider request failed; retrying"
        );
    }
}

/// `ssh://user@ip:port` for the SFTP endpoint's host, resolved and checked against the policy.
#[cfg(feature = "sftp")]
async fn checked_ssh_endpoint(
    cfg: &ServiceConfig,
    egress: &EgressPolicy,
) -> Result<String, StorageError> {
    let (host, port) = cfg
        .endpoint_addr()
        .map_err(StorageError::InvalidSettings)?
        .ok_or_else(|| StorageError::InvalidSettings("sftp needs an `endpoint`".into()))?;
    let ips = egress.resolve(&host).await.map_err(super::egress_error)?;
    let ip = *ips.first().ok_or_else(|| StorageError::Unreachable {
        host: host.clone(),
        cause: "the name has no addresses".into(),
    })?;
    Ok(format!("ssh://{}", std::net::SocketAddr::new(ip, port)))
}

/// Writes an SFTP private key where the ssh client can read it: a file named by the key's hash
/// under a 0700 directory, mode 0600, written once.
#[cfg(feature = "sftp")]
fn write_private_key(dir: &std::path::Path, key: &str) -> Result<PathBuf, StorageError> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StorageError::Other(format!("cannot write sftp key file: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let mut text = key.trim().to_owned();
    text.push('\n');
    let name = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
    let path = dir.join(format!("sftp-{name}.key"));
    if !path.exists() {
        let tmp = dir.join(format!("sftp-{name}.{:x}.tmp", rand::random::<u64>()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    Ok(path)
}
