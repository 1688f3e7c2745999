//! Shared state of a running hub: config, database, keys, caches and metrics.

use crate::cache::TtlCache;
use crate::config::Config;
use crate::db::{AccountRecord, Db};
use crate::error::{ApiError, ApiResult};
use crate::ids::IdCodec;
use crate::metrics::Metrics;
use shared::auth::{MasterKey, Sealer, Tagger};
use shared::storage::{ConnectOptions, Connector, ServiceConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who is calling, after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An application API key: reaches every account of the application.
    App { app_id: i64 },
    /// An account bearer token: reaches that one account.
    Account { app_id: i64, account_id: i64 },
    /// A meta (management) token.
    Meta,
}

/// A connected account, ready to use.
#[derive(Debug)]
pub struct Account {
    pub record: AccountRecord,
    pub settings: ServiceConfig,
    pub connector: Connector,
}

impl Account {
    pub fn id(&self) -> i64 {
        self.record.id
    }
}

/// How long cached auth and account lookups stay valid while the revocation feed is live (a
/// revocation reaches the cache through the feed, within `crate::revocation::BOUND`; when the
/// feed is not live, entries live only `crate::revocation::SHORT_TTL`).
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_CAPACITY: usize = 10_000;

pub type AppState = Arc<HubState>;

#[derive(Debug)]
pub struct HubState {
    pub config: Config,
    pub db: Db,
    pub sealer: Sealer,
    pub ids: IdCodec,
    /// Makes and checks event feed cursors.
    pub cursors: crate::events::CursorCodec,
    /// Tags the receipts of client-direct upload grants (see `crate::events::receipt`).
    pub receipts: Tagger,
    /// Tags of sharing links' URLs.
    pub links: Tagger,
    /// The OAuth connect form's CSRF tokens.
    pub oauth_forms: Tagger,
    /// The origins applications trust (CORS), cached.
    pub cors: crate::cors::TrustedOrigins,
    pub metrics: Metrics,
    pub connect_options: ConnectOptions,
    /// Canonical forms of `storage.fs.allowed_roots` (each application owns `app-<id>` in each).
    pub fs_roots: Vec<PathBuf>,
    /// Whether cached credentials may be trusted for their full TTL (the revocation feed).
    pub freshness: crate::revocation::Freshness,
    /// Root of the per-spoke keys that sign data URLs.
    pub spoke_data: Tagger,
    /// The spoke network: CA, connected spokes.
    pub network: crate::network::Network,
    /// Live state of transfers run or watched by this hub.
    pub transfers: crate::transfers::TransferBook,
    /// Latency-aware DNS steering: measurements, health, the answer snapshot.
    pub steering: Arc<crate::steering::Steering>,
    /// HTTPS on the API, when `tls` is configured.
    pub tls: Option<Arc<crate::tls::Tls>>,
    principals: TtlCache<[u8; 32], Principal>,
    accounts: TtlCache<i64, Arc<Account>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl HubState {
    pub fn new(
        config: Config,
        db: Db,
        master: &MasterKey,
        network: crate::network::Network,
    ) -> anyhow::Result<Self> {
        let scratch_dir = config.data_dir.join("scratch");
        let fs_roots = config
            .storage
            .fs
            .allowed_roots
            .iter()
            .filter_map(|p| match p.canonicalize() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(root = %p.display(), error = %e, "fs allowed root is unusable");
                    None
                }
            })
            .collect();
        let mut metrics = Metrics::default();
        if let Some(t) = db.topology() {
            metrics.register_db(&t.stats);
        }
        let budgets = crate::budgets::from_config(&config)?;
        metrics.register_budgets(&budgets);
        let tls = crate::tls::Tls::from_config(&config, &metrics)?;
        Ok(Self {
            tls,
            connect_options: ConnectOptions {
                scratch_dir,
                io_timeout: Duration::from_secs(config.storage.io_timeout_secs),
                egress: config.storage.egress_policy()?,
                budgets,
            },
            sealer: Sealer::new(&master.derive("credentials")),
            ids: IdCodec::new(Tagger::new(master.derive("object-ids"))),
            cursors: crate::events::CursorCodec::new(Tagger::new(master.derive("event-cursors"))),
            receipts: Tagger::new(master.derive("upload-receipts")),
            links: Tagger::new(master.derive("share-links")),
            oauth_forms: Tagger::new(master.derive("oauth-forms")),
            cors: crate::cors::TrustedOrigins::default(),
            metrics,
            fs_roots,
            freshness: crate::revocation::Freshness::default(),
            spoke_data: Tagger::new(master.derive("spoke-data")),
            network,
            transfers: crate::transfers::TransferBook::default(),
            steering: Arc::new(crate::steering::Steering::new(&config)),
            principals: TtlCache::new(CACHE_TTL, CACHE_CAPACITY),
            accounts: TtlCache::new(CACHE_TTL, CACHE_CAPACITY),
            config,
            db,
        })
    }

    /// Resolves a token hash to a principal (API key, account token or meta token).
    pub async fn principal_for(
        &self,
        hash: [u8; 32],
        bearer: bool,
    ) -> ApiResult<Option<Principal>> {
        let now = Instant::now();
        if let Some(p) = self.principals.get(&hash, now, self.freshness.max_age(now)) {
            return Ok(Some(p));
        }
        let generation = self.principals.generation();
        let found = if bearer {
            match self.db.account_for_token(&hash).await? {
                Some((account_id, app_id)) => Some(Principal::Account { app_id, account_id }),
                None if self.db.meta_token_exists(&hash).await? => Some(Principal::Meta),
                None => None,
            }
        } else {
            self.db
                .app_for_api_key(&hash)
                .await?
                .map(|app_id| Principal::App { app_id })
        };
        if let Some(p) = found {
            self.principals.insert(hash, p, now, generation);
        }
        Ok(found)
    }

    /// Forgets cached principals of an application (after key revocation or deactivation).
    pub fn forget_app(&self, app: i64) {
        self.principals.retain(|_, p| match p {
            Principal::App { app_id } | Principal::Account { app_id, .. } => *app_id != app,
            Principal::Meta => true,
        });
        self.accounts.retain(|_, a| a.record.app_id != app);
        self.cors.forget();
    }

    /// Forgets every cached principal and account (the revocation feed lost track).
    pub fn forget_all(&self) {
        self.principals.clear();
        self.accounts.clear();
    }

    /// Forgets a cached account (after update or delete).
    pub fn forget_account(&self, id: i64) {
        self.accounts.remove(&id);
        self.principals.retain(
            |_, p| !matches!(p, Principal::Account { account_id, .. } if *account_id == id),
        );
    }

    /// Loads an account of `app_id` with its connector (cached).
    pub async fn account(&self, app_id: i64, id: i64) -> ApiResult<Arc<Account>> {
        let now = Instant::now();
        if let Some(a) = self.accounts.get(&id, now, self.freshness.max_age(now)) {
            if a.record.app_id == app_id {
                // A few `lstat`s: a link swapped in for the root applies at the next request.
                self.check_fs_root(&a.record, &a.settings)?;
                return Ok(a);
            }
            return Err(ApiError::not_found("account"));
        }
        let generation = self.accounts.generation();
        let record = self
            .db
            .get_account(app_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found("account"))?;
        let account = Arc::new(self.open_account(record).await?);
        self.accounts.insert(id, account.clone(), now, generation);
        Ok(account)
    }

    /// Refuses an `fs` account whose root is no longer a real folder inside its application's
    /// space (a symbolic link swapped in since it was connected, or a change of the allowed
    /// roots).
    fn check_fs_root(&self, record: &AccountRecord, settings: &ServiceConfig) -> ApiResult<()> {
        let ServiceConfig::Fs(fs) = settings else {
            return Ok(());
        };
        let confined = crate::fsroot::confine(&fs.root, record.app_id, &self.fs_roots, false);
        if matches!(&confined, Ok(root) if root == std::path::Path::new(&fs.root)) {
            return Ok(());
        }
        tracing::warn!(
            account = record.id,
            app = record.app_id,
            "fs root is no longer inside its application's space; refusing the account"
        );
        Err(ApiError::forbidden(
            "this account's fs root is no longer a folder inside its application's fs space \
             (a symbolic link, or a change of storage.fs.allowed_roots); connect it again with \
             a root inside the space",
        ))
    }

    /// Decrypts an account's settings and builds its connector. An `fs` root is checked again
    /// against its application's space (a link may have been put in its place since it was
    /// connected, or the allowed roots changed).
    pub async fn open_account(&self, record: AccountRecord) -> ApiResult<Account> {
        let plain = self
            .sealer
            .open(&record.credentials, account_aad(record.id).as_bytes())
            .map_err(|e| ApiError::internal(format_args!("account {}: {e}", record.id)))?;
        let settings: ServiceConfig = serde_json::from_slice(&plain)
            .map_err(|e| ApiError::internal(format_args!("account {} settings: {e}", record.id)))?;
        self.check_fs_root(&record, &settings)?;
        let connector = Connector::connect(&settings, &self.connect_options).await?;
        Ok(Account {
            record,
            settings,
            connector,
        })
    }
}

impl HubState {
    /// The key spoke `id` verifies data URLs with (the hub signs with the same).
    pub fn spoke_data_key(&self, id: i64) -> [u8; 32] {
        self.spoke_data.tag(&[b"spoke-data-key", &id.to_be_bytes()])
    }
}

/// Associated data binding sealed credentials to their account row.
pub fn account_aad(id: i64) -> String {
    format!("account:{id}")
}
