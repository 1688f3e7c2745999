//! An OAuth 2.0 provider for tests, on loopback, standing where Dropbox, Google Drive and
//! OneDrive stand (none is reachable from here): the sign-in (`GET /authorize`, which consents
//! at once, or refuses when told to), the token endpoint (`POST /token`: the
//! `authorization_code` grant with the client's id and secret and the PKCE verifier checked,
//! each code once; the `refresh_token` grant) and the three "who am I" calls the hub checks
//! accounts with (Dropbox `POST /2/users/get_current_account`, Drive `GET /drive/v3/about`,
//! OneDrive `GET /v1.0/me/drive`), which answer only a token it issued. It records what it was
//! sent, so tests can check what the hub did.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The client id the provider knows.
pub const CLIENT_ID: &str = "switchyard-test-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "provider-client-secret-5b1e";
/// The user who signs in.
pub const EMAIL: &str = "ada@example.net";

#[derive(Default)]
struct Inner {
    /// code → (redirect_uri, code_challenge)
    codes: HashMap<String, (String, String)>,
    access: HashSet<String>,
    refresh: HashSet<String>,
    /// The user refuses at the sign-in.
    deny: bool,
    /// The token endpoint refuses every grant.
    refuse_tokens: bool,
    /// Every authorize request's query, every token request's form.
    authorizes: Vec<BTreeMap<String, String>>,
    token_forms: Vec<BTreeMap<String, String>>,
    /// Bearer tokens the "who am I" calls were sent with.
    bearers: Vec<String>,
    next: u64,
}

/// The running provider.
#[derive(Clone)]
pub struct FakeProvider {
    base: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeProvider {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/2/users/get_current_account", post(dropbox_me))
            .route("/drive/v3/about", get(drive_about))
            .route("/v1.0/me/drive", get(onedrive_drive))
            .with_state(inner.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", l.local_addr()?);
        tokio::spawn(async move { axum::serve(l, app).await });
        Ok(Self { base, inner })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The hub's configuration for all three providers at this server (detectors off: they
    /// would poll delta endpoints this server does not have).
    pub fn hub_yaml(&self) -> String {
        let b = &self.base;
        let mut y = String::from("oauth:\n  providers:\n");
        for p in ["dropbox", "gdrive", "onedrive"] {
            y.push_str(&format!(
                "    {p}:\n      client_id: {CLIENT_ID}\n      client_secret: {CLIENT_SECRET}\n      \
                 authorize_url: {b}/authorize\n"
            ));
        }
        y.push_str(&format!(
            "events:\n  detect:\n    enabled: false\n    services:\n\
             \x20     dropbox:\n        api_url: {b}/2\n        token_url: {b}/token\n\
             \x20     gdrive:\n        api_url: {b}/drive/v3\n        token_url: {b}/token\n\
             \x20     onedrive:\n        api_url: {b}/v1.0\n        token_url: {b}/token\n"
        ));
        y
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The user refuses at the next sign-ins.
    pub fn deny(&self, deny: bool) {
        self.lock().deny = deny;
    }

    /// The token endpoint refuses every grant.
    pub fn refuse_tokens(&self, refuse: bool) {
        self.lock().refuse_tokens = refuse;
    }

    /// Issues an access token directly (an account connected with `POST /v1/accounts`).
    pub fn issue_access_token(&self) -> String {
        let mut g = self.lock();
        g.next += 1;
        let t = format!("access-{}", g.next);
        g.access.insert(t.clone());
        t
    }

    pub fn authorizes(&self) -> Vec<BTreeMap<String, String>> {
        self.lock().authorizes.clone()
    }

    pub fn token_forms(&self) -> Vec<BTreeMap<String, String>> {
        self.lock().token_forms.clone()
    }

    pub fn bearers(&self) -> Vec<String> {
        self.lock().bearers.clone()
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn see(to: url::Url) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

async fn authorize(State(s): State<Shared>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let mut g = lock(&s);
    g.authorizes.push(q.clone());
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || get("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    let Ok(mut to) = url::Url::parse(&get("redirect_uri")) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    if g.deny {
        to.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("error_description", "The user denied access")
            .append_pair("state", &get("state"));
        return see(to);
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
        return (StatusCode::BAD_REQUEST, "PKCE S256 is required").into_response();
    }
    g.next += 1;
    let code = format!("provider-code-{}", g.next);
    g.codes
        .insert(code.clone(), (get("redirect_uri"), get("code_challenge")));
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"));
    see(to)
}

fn refused(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
}

async fn token(State(s): State<Shared>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut g = lock(&s);
    g.token_forms.push(form.clone());
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    if g.refuse_tokens {
        return refused("invalid_grant");
    }
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    match get("grant_type").as_str() {
        "authorization_code" => {
            let Some((redirect, challenge)) = g.codes.remove(&get("code")) else {
                return refused("invalid_grant");
            };
            let verified = URL_SAFE_NO_PAD.encode(Sha256::digest(get("code_verifier").as_bytes()));
            if redirect != get("redirect_uri") || verified != challenge {
                return refused("invalid_grant");
            }
        }
        "refresh_token" => {
            if !g.refresh.contains(&get("refresh_token")) {
                return refused("invalid_grant");
            }
        }
        _ => return refused("unsupported_grant_type"),
    }
    g.next += 1;
    let (access, refresh) = (format!("access-{}", g.next), format!("refresh-{}", g.next));
    g.access.insert(access.clone());
    g.refresh.insert(refresh.clone());
    Json(
        json!({"access_token": access, "refresh_token": refresh, "token_type": "bearer",
                "expires_in": 14400}),
    )
    .into_response()
}

/// Whether the request carries a token this provider issued.
fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let mut g = lock(s);
    g.bearers.push(token.clone());
    g.access.contains(&token)
}

fn expired() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_access_token"})),
    )
        .into_response()
}

async fn dropbox_me(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return expired();
    }
    Json(json!({"account_id": "dbid:ada", "email": EMAIL,
                "name": {"display_name": "Ada Lovelace"}}))
    .into_response()
}

async fn drive_about(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return expired();
    }
    Json(json!({"user": {"emailAddress": EMAIL, "displayName": "Ada Lovelace"}})).into_response()
}

async fn onedrive_drive(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return expired();
    }
    Json(json!({"id": "b!ada", "driveType": "personal",
                "owner": {"user": {"displayName": "Ada Lovelace", "email": EMAIL}}}))
    .into_response()
}
