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

/// How long cached auth and account lookups stay valid (bounds how long a revocation made on
/// another hub takes to apply here).
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_CAPACITY: usize = 10_000;

pub type AppState = Arc<HubState>;

#[derive(Debug)]
pub struct HubState {
    pub config: Config,
    pub db: Db,
    pub sealer: Sealer,
    pub ids: IdCodec,
    pub metrics: Metrics,
    pub connect_options: ConnectOptions,
    /// Canonical forms of `storage.fs.allowed_roots`.
    pub fs_roots: Vec<PathBuf>,
    /// Root of the per-spoke keys that sign data URLs.
    pub spoke_data: Tagger,
    /// The spoke network: CA, connected spokes.
    pub network: crate::network::Network,
    /// Live state of transfers run or watched by this hub.
    pub transfers: crate::transfers::TransferBook,
    /// Latency-aware DNS steering: measurements, health, the answer snapshot.
    pub steering: Arc<crate::steering::Steering>,
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
        Ok(Self {
            connect_options: ConnectOptions {
                scratch_dir,
                io_timeout: Duration::from_secs(config.storage.io_timeout_secs),
                egress: config.storage.egress_policy()?,
            },
            sealer: Sealer::new(&master.derive("credentials")),
            ids: IdCodec::new(Tagger::new(master.derive("object-ids"))),
            metrics: Metrics::default(),
            fs_roots,
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
        if let Some(p) = self.principals.get(&hash, now) {
            return Ok(Some(p));
        }
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
            self.principals.insert(hash, p, now);
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
        if let Some(a) = self.accounts.get(&id, now) {
            if a.record.app_id == app_id {
                return Ok(a);
            }
            return Err(ApiError::not_found("account"));
        }
        let record = self
            .db
            .get_account(app_id, id)
            .await?
            .ok_or_else(|| ApiError::not_found("account"))?;
        let account = Arc::new(self.open_account(record).await?);
        self.accounts.insert(id, account.clone(), now);
        Ok(account)
    }

    /// Decrypts an account's settings and builds its connector.
    pub async fn open_account(&self, record: AccountRecord) -> ApiResult<Account> {
        let plain = self
            .sealer
            .open(&record.credentials, account_aad(record.id).as_bytes())
            .map_err(|e| ApiError::internal(format_args!("account {}: {e}", record.id)))?;
        let settings: ServiceConfig = serde_json::from_slice(&plain)
            .map_err(|e| ApiError::internal(format_args!("account {} settings: {e}", record.id)))?;
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
