//! The polling loop of the delta-API detectors (Dropbox `files/list_folder(/continue)`, Google
//! Drive `changes.list`, OneDrive `/delta`): the HTTP calls, with the account's OAuth token
//! (refreshed on a 401 when the account has a refresh token), page by page through
//! [`delta::changes`] into events and snapshot writes.
//!
//! A poll continues from the stored cursor. Without one (the first poll), or when the provider
//! expired it ([`DeltaError::Reset`]), it lists the whole account root instead (Dropbox:
//! `list_folder` recursive; Drive: the folders walked with `files.list`, after taking a start
//! page token; OneDrive: `/delta` without a token), stamps every snapshot row it sees with the
//! poll's epoch and, at the end, sweeps the rows left unstamped as deletions. The first poll
//! records nothing (a baseline).
//!
//! Hostile providers: every request goes through the egress guard (its resolver, and a check
//! of the URL itself); the links OneDrive hands back must stay on the configured API origin;
//! an answer over [`MAX_ANSWER`] stops the poll; a folder walk stops at [`MAX_FOLDERS`]
//! pending folders. Tokens are sent only as `Authorization` headers and never logged.
//!
//! The access tokens polls refresh are kept per process ([`Bearer`]), for the pass-through API
//! (`crate::api::raw`) too: a token either of them refreshed is the other's as well.

use super::delta::{self, DeltaError, Item, Known, Next, Page};
use super::listing::Change;
use super::{PollError, PollStats};
use crate::config::DeltaEndpoints;
use crate::db::DetectorLease;
use crate::state::{now_ms, Account, AppState};
use reqwest::{Method, Url};
use shared::storage::{OAuthSettings, ServiceConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The largest provider answer read (one page).
pub const MAX_ANSWER: usize = 16 << 20;
/// The most folders a Drive full listing keeps waiting to be listed.
pub const MAX_FOLDERS: usize = 1_000_000;
/// Items asked for per page.
const PAGE_SIZE: u32 = 1000;
/// Snapshot rows swept per round trip after a full listing.
const SWEEP_PAGE: i64 = 1000;
/// The longest one provider request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a hub keeps for its delta polls: one HTTP client for all of them, and per account the
/// access token it refreshed and the account root's id, both tied to the settings they came
/// from (new credentials or a new root start afresh). Refreshed tokens are not written back to
/// the account's sealed settings: after a restart the refresh token gets a new one.
#[derive(Clone)]
pub struct Delta {
    http: reqwest::Client,
    accounts: Kept,
}

/// What is kept per account and token endpoint. One per process ([`Kept::process`]): the
/// detectors and the pass-through API ([`Bearer`]) send, and refresh, the same access token.
/// (Hubs sharing a process, as tests run them, keep apart by their token endpoints.)
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<HashMap<(i64, String), Cached>>>);

#[derive(Default, Clone)]
struct Cached {
    /// A digest of the settings the rest came from (kept in memory only).
    settings: u64,
    token: Option<String>,
    root_id: Option<String>,
}

impl Kept {
    fn process() -> Self {
        static KEPT: OnceLock<Kept> = OnceLock::new();
        KEPT.get_or_init(Kept::default).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String), Cached>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is kept for `account`, refreshed at `token`, with settings digest `settings`
    /// (nothing if they changed).
    fn cached(&self, account: i64, token: &Url, settings: u64) -> Cached {
        self.lock()
            .get(&(account, token.as_str().to_owned()))
            .filter(|c| c.settings == settings)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, account: i64, token: &Url, settings: u64, f: impl FnOnce(&mut Cached)) {
        let mut all = self.lock();
        let c = all.entry((account, token.as_str().to_owned())).or_default();
        if c.settings != settings {
            *c = Cached {
                settings,
                ..Cached::default()
            };
        }
        f(c);
    }
}

impl Delta {
    /// The client goes through the egress guard's resolver, follows no redirects, and gives
    /// each request [`REQUEST_TIMEOUT`].
    pub fn new(state: &AppState) -> anyhow::Result<Self> {
        let http = state
            .connect_options
            .egress
            .http_builder(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("Switchyard-Detect/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            accounts: Kept::process(),
        })
    }

    fn cached(&self, account: i64, token: &Url, settings: u64) -> Cached {
        self.accounts.cached(account, token, settings)
    }

    fn update(&self, account: i64, token: &Url, settings: u64, f: impl FnOnce(&mut Cached)) {
        self.accounts.update(account, token, settings, f);
    }
}

/// The digest [`Delta`] ties what it keeps to.
fn digest(s: &OAuthSettings) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &s.access_token,
        &s.refresh_token,
        &s.client_id,
        &s.client_secret,
        &s.root,
    )
        .hash(&mut h);
    h.finish()
}

/// Why an access token could not be refreshed. No variant holds a token, a secret, or the
/// token endpoint's answer (which may quote them).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the account has no refresh token with client id and secret")]
    NotRefreshable,
    /// The egress guard refused the token endpoint.
    #[error("{0}")]
    EgressDenied(String),
    #[error(transparent)]
    Spent(#[from] shared::budget::BudgetSpent),
    /// The token endpoint could not be reached (the error holds no URL).
    #[error("token refresh: {0}")]
    Unreachable(reqwest::Error),
    /// The token endpoint refused the grant, or answered without a token.
    #[error("the token endpoint answered {0} without an access token")]
    Refused(u16),
    /// The answer could not be read.
    #[error("token refresh: {0}")]
    Answer(String),
}

/// An OAuth account's access token, as the delta polls and the pass-through API send it: the
/// one last refreshed for these settings, else the one the account was connected with;
/// refreshed into the process's [`Kept`] cache, so a token one of them refreshed is the
/// other's too.
pub struct Bearer<'a> {
    kept: Kept,
    account: i64,
    settings: &'a OAuthSettings,
    digest: u64,
    token_url: Url,
}

impl<'a> Bearer<'a> {
    /// Account `account`'s token, refreshed at `endpoints.token`.
    pub fn new(account: i64, settings: &'a OAuthSettings, endpoints: &DeltaEndpoints) -> Self {
        Self {
            kept: Kept::process(),
            account,
            settings,
            digest: digest(settings),
            token_url: endpoints.token.clone(),
        }
    }

    /// The token to send, if the account has one.
    pub fn token(&self) -> Option<String> {
        self.kept
            .cached(self.account, &self.token_url, self.digest)
            .token
            .or_else(|| self.settings.access_token.clone())
    }

    /// Where [`Bearer::refresh`] gets a new token.
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// Whether [`Bearer::refresh`] can get a new token.
    pub fn can_refresh(&self) -> bool {
        let s = self.settings;
        s.refresh_token.is_some() && s.client_id.is_some() && s.client_secret.is_some()
    }

    /// A new access token from the refresh token (OAuth 2 `refresh_token` grant, form-encoded,
    /// within the account's `budget`), kept for the next requests. `http` must be the egress
    /// guard's client.
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        egress: &shared::egress::EgressPolicy,
        budget: &shared::budget::Budget,
    ) -> Result<String, RefreshError> {
        let s = self.settings;
        let (Some(refresh), Some(id), Some(secret)) = (
            s.refresh_token.as_deref(),
            s.client_id.as_deref(),
            s.client_secret.as_deref(),
        ) else {
            return Err(RefreshError::NotRefreshable);
        };
        let url = self.token_url.clone();
        egress
            .check_url(&url)
            .map_err(|e| RefreshError::EgressDenied(e.to_string()))?;
        let req = http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", id),
                ("client_secret", secret),
            ]));
        let resp = budget
            .send(req)
            .await?
            .map_err(|e| RefreshError::Unreachable(e.without_url()))?;
        let status = resp.status().as_u16();
        let body = read_capped(resp)
            .await
            .map_err(|e| RefreshError::Answer(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct Grant {
            access_token: String,
        }
        match serde_json::from_str::<Grant>(&body) {
            Ok(g) if status == 200 && !g.access_token.is_empty() => {
                let token = g.access_token.clone();
                self.kept
                    .update(self.account, &self.token_url, self.digest, |c| {
                        c.token = Some(token)
                    });
                Ok(g.access_token)
            }
            _ => Err(RefreshError::Refused(status)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Dropbox,
    Gdrive,
    Onedrive,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Dropbox => "dropbox",
            Service::Gdrive => "gdrive",
            Service::Onedrive => "onedrive",
        }
    }
}

/// Where the listing goes next.
enum Step {
    /// Continue from a cursor (Dropbox cursor, Drive page token, OneDrive link).
    Delta(String),
    /// The first page of a full listing.
    Full,
    /// Dropbox's full listing, continued.
    DropboxMore(String),
    /// OneDrive's full listing, continued (a `nextLink`).
    OnedriveMore(String),
    /// Drive's full listing: the folders left to list, the page of the current one, and the
    /// start page token taken before the walk began (the cursor once it is done).
    DriveWalk {
        folders: Vec<String>,
        page: Option<String>,
        start: String,
    },
}

/// One account's provider API.
struct Api<'a> {
    service: Service,
    http: reqwest::Client,
    state: &'a AppState,
    endpoints: DeltaEndpoints,
    settings: &'a OAuthSettings,
    digest: u64,
    account: i64,
    delta: &'a Delta,
    requests: u64,
    /// The account's provider budget (shared with its connector and the cluster).
    budget: shared::budget::Budget,
}

impl Api<'_> {
    fn url(&self, rest: &str) -> Result<Url, PollError> {
        let base = self.endpoints.api.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{rest}"))
            .map_err(|e| PollError::Provider(format!("bad API URL: {e}")))
    }

    /// One request with the account's token; on a 401 the token is refreshed once (when the
    /// account has a refresh token) and the request sent again. Returns the status and body.
    async fn send(
        &mut self,
        method: Method,
        url: Url,
        json: Option<&serde_json::Value>,
    ) -> Result<(u16, String), PollError> {
        let api = &self.endpoints.api;
        if url.origin() != api.origin() {
            return Err(PollError::Provider(format!(
                "the {} API handed a link to another origin ({}); refused",
                self.service.name(),
                url.origin().ascii_serialization()
            )));
        }
        self.state
            .connect_options
            .egress
            .check_url(&url)
            .map_err(|e| PollError::Provider(e.to_string()))?;
        let mut refreshed = false;
        loop {
            let token = match self.bearer().token() {
                Some(t) => t,
                None => {
                    refreshed = true;
                    self.refresh().await?
                }
            };
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token);
            if let Some(j) = json {
                req = req.json(j);
            }
            self.requests += 1;
            let resp = self
                .budget
                .send(req)
                .await
                .map_err(|e| spent(self.service, e))?
                .map_err(|e| {
                    PollError::Provider(format!("{} API: {}", self.service.name(), e.without_url()))
                })?;
            let status = resp.status().as_u16();
            if status == 401 && !refreshed && self.can_refresh() {
                refreshed = true;
                self.refresh().await?;
                continue;
            }
            if status == 401 {
                return Err(PollError::Provider(format!(
                    "the {} API refused the account's access token (401); reconnect the account",
                    self.service.name()
                )));
            }
            if status == 429 || status >= 500 {
                return Err(PollError::Provider(format!(
                    "the {} API answered {status}; the poll is tried again at the next interval",
                    self.service.name()
                )));
            }
            let body = read_capped(resp).await?;
            return Ok((status, body));
        }
    }

    /// The account's token, kept in this poller's cache.
    fn bearer(&self) -> Bearer<'_> {
        Bearer {
            kept: self.delta.accounts.clone(),
            account: self.account,
            settings: self.settings,
            digest: self.digest,
            token_url: self.endpoints.token.clone(),
        }
    }

    fn can_refresh(&self) -> bool {
        self.bearer().can_refresh()
    }

    /// A new access token from the refresh token (OAuth 2 `refresh_token` grant).
    async fn refresh(&mut self) -> Result<String, PollError> {
        self.requests += 1;
        let service = self.service;
        let egress = &self.state.connect_options.egress;
        self.bearer()
            .refresh(&self.http, egress, &self.budget)
            .await
            .map_err(|e| match e {
                RefreshError::NotRefreshable => PollError::Provider(
                    "the account has no access token and no refresh token with client id and \
                     secret"
                        .into(),
                ),
                RefreshError::Spent(e) => spent(service, e),
                // The answer is not quoted: it may hold what the provider thinks of the secret.
                RefreshError::Refused(status) => PollError::Provider(format!(
                    "refreshing the {} access token failed ({status}); reconnect the account",
                    service.name()
                )),
                other => PollError::Provider(other.to_string()),
            })
    }

    /// Looks up the account root's id on Drive and OneDrive (`settings.root`, `/` when
    /// absent) and keeps it for the next polls.
    async fn resolve_root(&mut self) -> Result<Option<String>, PollError> {
        let id = self.root_id().await?;
        let kept = id.clone();
        self.delta
            .update(self.account, &self.endpoints.token, self.digest, |c| {
                c.root_id = kept
            });
        Ok(id)
    }

    async fn root_id(&mut self) -> Result<Option<String>, PollError> {
        let root = self
            .settings
            .root
            .as_deref()
            .unwrap_or("/")
            .trim_matches('/');
        match self.service {
            Service::Dropbox => Ok(None),
            Service::Onedrive => {
                let mut url = self.url("me/drive")?;
                {
                    let mut seg = url
                        .path_segments_mut()
                        .map_err(|()| PollError::Provider("bad API URL".into()))?;
                    if root.is_empty() {
                        seg.push("root");
                    } else {
                        // `root:/a/b:` addresses a folder by path.
                        seg.push("root:");
                        let comps: Vec<&str> = root.split('/').collect();
                        for (i, c) in comps.iter().enumerate() {
                            if i + 1 == comps.len() {
                                seg.push(&format!("{c}:"));
                            } else {
                                seg.push(c);
                            }
                        }
                    }
                }
                url.query_pairs_mut().append_pair("$select", "id");
                let (status, body) = self.send(Method::GET, url, None).await?;
                Ok(Some(id_of(self.service, status, &body, "id")?))
            }
            Service::Gdrive => {
                let mut url = self.url("files/root")?;
                url.query_pairs_mut().append_pair("fields", "id");
                let (status, body) = self.send(Method::GET, url, None).await?;
                let mut id = id_of(self.service, status, &body, "id")?;
                for name in root.split('/').filter(|c| !c.is_empty()) {
                    let mut url = self.url("files")?;
                    url.query_pairs_mut()
                        .append_pair(
                            "q",
                            &format!(
                                "name = '{}' and '{}' in parents and mimeType = '{}' and trashed = false",
                                drive_quote(name),
                                drive_quote(&id),
                                delta::DRIVE_FOLDER
                            ),
                        )
                        .append_pair("fields", "files(id)")
                        .append_pair("pageSize", "2");
                    let (status, body) = self.send(Method::GET, url, None).await?;
                    let v: serde_json::Value = parse(self.service, status, &body)?;
                    id = match v["files"].as_array().map(Vec::as_slice) {
                        Some([one]) => one["id"].as_str().unwrap_or_default().to_owned(),
                        Some([]) => {
                            return Err(PollError::Provider(format!(
                                "the account root folder {name:?} is not on the drive"
                            )))
                        }
                        _ => {
                            return Err(PollError::Provider(format!(
                                "the account root folder {name:?} is ambiguous on the drive"
                            )))
                        }
                    };
                }
                Ok(Some(id))
            }
        }
    }

    /// The next page of the listing at `step`, and the step after it (`None`: caught up,
    /// with the cursor to store).
    async fn page(
        &mut self,
        step: Step,
        root_id: Option<&str>,
    ) -> Result<(Vec<Item>, Result<Step, String>), PollError> {
        let s = self.service;
        let unusable = |e: DeltaError| match e {
            DeltaError::Reset(_) => PollError::Reset,
            other => PollError::Provider(other.to_string()),
        };
        match (s, step) {
            (Service::Dropbox, Step::Full) => {
                let root = self
                    .settings
                    .root
                    .as_deref()
                    .unwrap_or("")
                    .trim_matches('/');
                let body = serde_json::json!({
                    "path": if root.is_empty() { String::new() } else { format!("/{root}") },
                    "recursive": true,
                    "include_deleted": false,
                    "limit": PAGE_SIZE,
                });
                let (status, text) = self
                    .send(Method::POST, self.url("files/list_folder")?, Some(&body))
                    .await?;
                let page = delta::dropbox(status, &text).map_err(unusable)?;
                Ok(self.dropbox_page(page, true))
            }
            (Service::Dropbox, Step::Delta(c) | Step::DropboxMore(c)) => {
                let body = serde_json::json!({ "cursor": c });
                let (status, text) = self
                    .send(
                        Method::POST,
                        self.url("files/list_folder/continue")?,
                        Some(&body),
                    )
                    .await?;
                let page = delta::dropbox(status, &text).map_err(unusable)?;
                Ok(self.dropbox_page(page, false))
            }
            (Service::Gdrive, Step::Full) => {
                let mut url = self.url("changes/startPageToken")?;
                url.query_pairs_mut()
                    .append_pair("fields", "startPageToken");
                let (status, body) = self.send(Method::GET, url, None).await?;
                let start = id_of(s, status, &body, "startPageToken")?;
                let root = root_id.unwrap_or_default().to_owned();
                Ok((
                    Vec::new(),
                    Ok(Step::DriveWalk {
                        folders: vec![root],
                        page: None,
                        start,
                    }),
                ))
            }
            (
                Service::Gdrive,
                Step::DriveWalk {
                    mut folders,
                    page,
                    start,
                },
            ) => {
                let Some(folder) = folders.last().cloned() else {
                    return Ok((Vec::new(), Err(start)));
                };
                let mut url = self.url("files")?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair(
                        "q",
                        &format!("'{}' in parents and trashed = false", drive_quote(&folder)),
                    )
                    .append_pair(
                        "fields",
                        &format!("nextPageToken,files({})", delta::DRIVE_FILE_FIELDS),
                    )
                    .append_pair("pageSize", &PAGE_SIZE.to_string())
                    .append_pair("orderBy", "folder,name");
                    if let Some(p) = &page {
                        q.append_pair("pageToken", p);
                    }
                }
                let (status, body) = self.send(Method::GET, url, None).await?;
                let (items, next) = delta::gdrive_files(status, &body).map_err(unusable)?;
                let page = match next {
                    Some(n) => Some(n),
                    None => {
                        folders.pop();
                        None
                    }
                };
                for it in &items {
                    if matches!(it.state, delta::State::Present { folder: true, .. }) {
                        if folders.len() >= MAX_FOLDERS {
                            return Err(PollError::Provider(format!(
                                "more than {MAX_FOLDERS} folders wait to be listed"
                            )));
                        }
                        // Listed after the current folder's last page: they go below it.
                        let at = if page.is_some() {
                            folders.len() - 1
                        } else {
                            folders.len()
                        };
                        folders.insert(at, it.id.clone().unwrap_or_default());
                    }
                }
                let next = if folders.is_empty() {
                    Err(start)
                } else {
                    Ok(Step::DriveWalk {
                        folders,
                        page,
                        start,
                    })
                };
                Ok((items, next))
            }
            (Service::Gdrive, Step::Delta(token)) => {
                let mut url = self.url("changes")?;
                url.query_pairs_mut()
                    .append_pair("pageToken", &token)
                    .append_pair("pageSize", &PAGE_SIZE.to_string())
                    .append_pair("includeRemoved", "true")
                    .append_pair("spaces", "drive")
                    .append_pair(
                        "fields",
                        &format!(
                            "nextPageToken,newStartPageToken,changes(changeType,removed,fileId,file({}))",
                            delta::DRIVE_FILE_FIELDS
                        ),
                    );
                let (status, body) = self.send(Method::GET, url, None).await?;
                let page = delta::gdrive(status, &body).map_err(unusable)?;
                Ok(next_of(page, Step::Delta))
            }
            (Service::Onedrive, Step::Full) => {
                let url = self.url("me/drive/root/delta")?;
                let (status, body) = self.send(Method::GET, url, None).await?;
                let page = delta::onedrive(status, &body).map_err(unusable)?;
                Ok(next_of(page, Step::OnedriveMore))
            }
            (Service::Onedrive, Step::Delta(link) | Step::OnedriveMore(link)) => {
                let url = Url::parse(&link).map_err(|e| {
                    PollError::Provider(format!("the OneDrive link is not a URL: {e}"))
                })?;
                let (status, body) = self.send(Method::GET, url, None).await?;
                let page = delta::onedrive(status, &body).map_err(unusable)?;
                Ok(next_of(page, Step::Delta))
            }
            _ => Err(PollError::Provider(
                "a listing step of another service".into(),
            )),
        }
    }

    /// A Dropbox page with its paths made relative to the account root (entries outside it,
    /// and the root itself, dropped).
    fn dropbox_page(&self, page: Page, full: bool) -> (Vec<Item>, Result<Step, String>) {
        let root = self
            .settings
            .root
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_lowercase();
        let items = page
            .items
            .into_iter()
            .filter_map(|mut it| {
                let p = it.path.take()?;
                let rel = if root.is_empty() {
                    p
                } else {
                    // Dropbox paths are case-insensitive.
                    let lower = p.to_lowercase();
                    let rest = lower.strip_prefix(&root)?.strip_prefix('/')?;
                    p[p.len() - rest.len()..].to_owned()
                };
                (!rel.is_empty()).then_some(Item {
                    path: Some(rel),
                    ..it
                })
            })
            .collect();
        let next = match page.next {
            Next::More(c) if full => Ok(Step::DropboxMore(c)),
            Next::More(c) => Ok(Step::Delta(c)),
            Next::Done(c) => Err(c),
        };
        (items, next)
    }
}

fn next_of(page: Page, more: fn(String) -> Step) -> (Vec<Item>, Result<Step, String>) {
    let next = match page.next {
        Next::More(c) => Ok(more(c)),
        Next::Done(c) => Err(c),
    };
    (page.items, next)
}

/// An `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut u = Url::parse("form:").expect("a URL");
    u.query_pairs_mut().extend_pairs(pairs);
    u.query().unwrap_or_default().to_owned()
}

/// `s` inside a Drive query's single quotes.
fn drive_quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

fn parse(service: Service, status: u16, body: &str) -> Result<serde_json::Value, PollError> {
    if status != 200 {
        return Err(PollError::Provider(format!(
            "the {} API answered {status}",
            service.name()
        )));
    }
    serde_json::from_str(body).map_err(|e| {
        PollError::Provider(format!(
            "the {} API's answer is not JSON: {e}",
            service.name()
        ))
    })
}

fn id_of(service: Service, status: u16, body: &str, field: &str) -> Result<String, PollError> {
    let v = parse(service, status, body)?;
    match v[field].as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(PollError::Provider(format!(
            "the {} API's answer has no {field}",
            service.name()
        ))),
    }
}

/// The body of `resp`, at most [`MAX_ANSWER`] bytes, read as it comes.
async fn read_capped(mut resp: reqwest::Response) -> Result<String, PollError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| PollError::Provider(format!("reading the answer: {}", e.without_url())))?
    {
        if buf.len() + chunk.len() > MAX_ANSWER {
            return Err(PollError::Provider(format!(
                "the provider's answer is over {} MiB",
                MAX_ANSWER >> 20
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| PollError::Provider("the answer is not UTF-8".into()))
}

/// The account's budget had no slot within the background bound: the poll fails and is tried
/// again at the next interval.
fn spent(service: Service, e: shared::budget::BudgetSpent) -> PollError {
    PollError::Provider(format!(
        "the {} API budget is spent for {} s; the poll is tried again at the next interval",
        service.name(),
        e.retry_after.as_secs()
    ))
}

/// One poll of a delta-API account under `lease` (see the module comment). Returns its cost
/// and the stream position read before it listed.
pub async fn poll(
    state: &AppState,
    account: &Account,
    lease: &DetectorLease,
    delta: &Delta,
) -> Result<(PollStats, i64), PollError> {
    let (service, settings) = match &account.settings {
        ServiceConfig::Dropbox(s) => (Service::Dropbox, s),
        ServiceConfig::Gdrive(s) => (Service::Gdrive, s),
        ServiceConfig::Onedrive(s) => (Service::Onedrive, s),
        other => {
            return Err(PollError::Provider(format!(
                "{} has no delta API",
                other.name()
            )))
        }
    };
    let endpoints = state
        .config
        .events
        .detect
        .delta_endpoints(service.name())
        .ok_or_else(|| PollError::Provider("no API endpoints".into()))?;
    let mut api = Api {
        service,
        http: delta.http.clone(),
        state,
        endpoints,
        settings,
        digest: digest(settings),
        account: lease.account_id,
        delta,
        requests: 0,
        budget: account.connector.budget().clone(),
    };
    let head = state.db.stream_head(lease.account_id).await?;
    let record = lease.baseline;
    let cursor = lease
        .cursor
        .as_deref()
        .and_then(|c| delta::load_cursor(service.name(), c))
        .filter(|_| lease.baseline);
    let mut full = cursor.is_none();
    let mut step = match cursor {
        Some(c) => Step::Delta(c.to_owned()),
        None => Step::Full,
    };
    // The root's id is looked up again for every full listing, else kept from the last poll.
    let mut root_id = match api
        .delta
        .cached(api.account, &api.endpoints.token, api.digest)
        .root_id
    {
        Some(id) if !full => Some(id),
        _ => api.resolve_root().await?,
    };
    let mut stats = PollStats::default();
    let cursor = loop {
        let (items, next) = match api.page(step, root_id.as_deref()).await {
            Ok(p) => p,
            Err(PollError::Reset) if !full => {
                tracing::info!(
                    account = lease.account_id,
                    service = service.name(),
                    "detector: the provider expired the cursor; listing everything again"
                );
                full = true;
                step = Step::Full;
                root_id = api.resolve_root().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        stats.scanned += items.len() as u64;
        if items.is_empty() {
            // Nothing to look up or write (an idle poll's page, a walk's first step).
            match next {
                Ok(s) => step = s,
                Err(cursor) => break cursor,
            }
            continue;
        }
        let (keys, idents) = Known::wanted(&items);
        let (by_key, by_ident) = state
            .db
            .snapshot_lookup(lease.account_id, &keys, &idents)
            .await?;
        let landing = Known::landing_keys(&items, root_id.as_deref(), &by_ident);
        let mut known = Known::new(by_key, by_ident);
        if !landing.is_empty() {
            let (more, _) = state
                .db
                .snapshot_lookup(lease.account_id, &landing, &[])
                .await?;
            known.add_keys(more);
        }
        let applied = delta::changes(items, root_id.as_deref(), &mut known);
        if record {
            for c in &applied.changes {
                stats.recorded +=
                    u64::from(super::record_change(state, account, lease, head, c).await);
            }
        }
        let stamp: &[String] = if full { &applied.present } else { &[] };
        if !state.db.snapshot_apply(lease, &applied.ops, stamp).await? {
            return Err(PollError::LeaseLost);
        }
        match next {
            Ok(s) => step = s,
            Err(cursor) => break cursor,
        }
    };
    if full {
        stats.recorded += sweep(state, account, lease, record.then_some(head)).await?;
    }
    stats.requests = api.requests;
    let stored = delta::store_cursor(service.name(), &cursor);
    if !state
        .db
        .finish_poll(lease, head, Some(&stored), now_ms())
        .await?
    {
        return Err(PollError::LeaseLost);
    }
    Ok((stats, head))
}

/// After a full listing: removes the snapshot rows it did not see, recording each as a
/// deletion (unless on a baseline; `listed_seq`: the head the poll read); a folder's subtree
/// goes with it, in one event.
async fn sweep(
    state: &AppState,
    account: &Account,
    lease: &DetectorLease,
    listed_seq: Option<i64>,
) -> Result<u64, PollError> {
    let mut after = String::new();
    let mut folder: Option<String> = None;
    let mut recorded = 0;
    loop {
        let rows = state
            .db
            .snapshot_unmarked(lease.account_id, lease.epoch, &after, SWEEP_PAGE)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(recorded);
        };
        after = last.key.clone();
        let mut delete = Vec::with_capacity(rows.len());
        for s in rows {
            let inside = folder
                .as_deref()
                .is_some_and(|f| s.key.starts_with(&format!("{f}\u{1}")));
            if !inside {
                if s.folder {
                    folder = Some(s.key.clone());
                }
                if let Some(head) = listed_seq {
                    let gone = Change::Removed(s.clone());
                    recorded +=
                        u64::from(super::record_change(state, account, lease, head, &gone).await);
                }
            }
            delete.push(delta::SnapOp::Delete(s.key));
        }
        if !state.db.snapshot_apply(lease, &delete, &[]).await? {
            return Err(PollError::LeaseLost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_goes_with_the_settings_it_came_from() {
        let delta = Delta {
            http: reqwest::Client::new(),
            accounts: Kept::default(),
        };
        let token_url = Url::parse("https://token.example/oauth2/token").expect("a URL");
        let mut settings = OAuthSettings {
            access_token: None,
            refresh_token: Some("rt-1".into()),
            client_id: Some("cid".into()),
            client_secret: Some("cs".into()),
            root: None,
        };
        let first = digest(&settings);
        delta.update(7, &token_url, first, |c| c.token = Some("t1".into()));
        delta.update(7, &token_url, first, |c| c.root_id = Some("ROOT".into()));
        let kept = delta.cached(7, &token_url, first);
        assert_eq!(
            (kept.token.as_deref(), kept.root_id.as_deref()),
            (Some("t1"), Some("ROOT"))
        );
        assert!(
            delta.cached(8, &token_url, first).token.is_none(),
            "another account"
        );
        // Another token endpoint (another hub of the process): not its token.
        let elsewhere = Url::parse("https://other.example/token").expect("a URL");
        assert!(delta.cached(7, &elsewhere, first).token.is_none());
        // The account was connected again with another refresh token (maybe another user's
        // drive): nothing kept for the old one is used.
        settings.refresh_token = Some("rt-2".into());
        let second = digest(&settings);
        assert_ne!(first, second);
        let kept = delta.cached(7, &token_url, second);
        assert!(kept.token.is_none() && kept.root_id.is_none());
        delta.update(7, &token_url, second, |c| c.token = Some("t2".into()));
        assert!(delta.cached(7, &token_url, first).token.is_none());
    }

    #[test]
    fn the_pass_through_sends_the_token_the_detector_refreshed() {
        let endpoints = DeltaEndpoints {
            api: Url::parse("https://api.example/2").expect("a URL"),
            token: Url::parse("https://api.example/oauth2/token").expect("a URL"),
        };
        let settings = OAuthSettings {
            access_token: Some("connected".into()),
            refresh_token: Some("rt".into()),
            client_id: Some("cid".into()),
            client_secret: None,
            root: None,
        };
        // An account id no other test of this process uses: the cache is the process's.
        let account = i64::MIN + 7;
        let bearer = Bearer::new(account, &settings, &endpoints);
        assert_eq!(bearer.token().as_deref(), Some("connected"));
        assert!(!bearer.can_refresh(), "no client secret");
        Kept::process().update(account, &endpoints.token, digest(&settings), |c| {
            c.token = Some("refreshed".into())
        });
        assert_eq!(bearer.token().as_deref(), Some("refreshed"));
    }

    #[test]
    fn refresh_grants_are_form_encoded() {
        assert_eq!(
            form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "a b&c=d")
            ]),
            "grant_type=refresh_token&refresh_token=a+b%26c%3Dd"
        );
    }

    #[test]
    fn drive_queries_quote_names() {
        assert_eq!(drive_quote(r"it's a\b"), r"it\'s a\\b");
    }
}
