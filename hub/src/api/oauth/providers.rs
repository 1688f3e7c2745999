//! Connecting Dropbox, Google Drive and OneDrive through the providers' own OAuth: the connect
//! page's button sends the user to the provider's sign-in (`oauth.providers.<name>`: this
//! deployment's client id and secret), the provider sends them back to
//! `GET /v1/oauth/callback`, the hub exchanges the provider's code for tokens, checks them with
//! a real call (the same one `POST /v1/accounts` makes for these services, [`identify`]) and
//! then finishes the application's flow exactly like a filled-in form: a code (or a token in
//! the fragment) to the application's redirect URI.
//!
//! Nothing is stored between the two legs: the application's request, the PKCE verifier of the
//! provider leg and an expiry travel in the provider's `state`, sealed (XChaCha20-Poly1305,
//! the credentials key, its own AAD), so any hub of the network can take the callback. The
//! state is bound to the browser that started the flow by a random cookie (HttpOnly,
//! `SameSite=Lax` so that the provider's redirect carries it, scoped to the callback's path,
//! 10 minutes) whose SHA-256 the state holds: a callback with another browser's state, a
//! tampered or expired state gets an error page, never a redirect. Provider tokens are sent
//! only in form bodies and `Authorization` headers, never logged; the provider's answers are
//! read up to [`MAX_ANSWER`] bytes and never quoted to the user.

use super::{check, finish, redirect_error, AuthorizeParams, ServiceForm};
use crate::api::raw::refresh_failed;
use crate::config::ProviderClientConfig;
use crate::detect::provider::Bearer;
use crate::error::{ApiError, ApiResult};
use crate::model::NewAccount;
use crate::pages::{escape, page};
use crate::state::{now_ms, AppState};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::auth::{ct_eq, generate_token};
use shared::storage::{OAuthSettings, ServiceConfig, StorageError};
use std::time::Duration;
use utoipa::IntoParams;

/// How long a user has to sign in at the provider.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// The cookie binding a provider leg to the browser that started it.
const BIND_COOKIE: &str = "sy_oauth_cb";
/// The callback's path (the redirect URI registered with each provider, after `public_url`).
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";
/// The most bytes of a provider answer read.
const MAX_ANSWER: usize = 1 << 20;
/// The AAD of sealed states.
const STATE_AAD: &[u8] = b"oauth-provider-state";

/// What travels, sealed, in the provider's `state`.
#[derive(Serialize, Deserialize)]
struct Flow {
    /// The application's authorization request.
    p: AuthorizeParams,
    /// The name the user gave the connection, if any.
    account: Option<String>,
    /// The provider leg's PKCE verifier.
    verifier: String,
    /// base64url SHA-256 of the binding cookie.
    bind: String,
    /// Expiry (ms since the epoch).
    exp: i64,
}

/// The callback's URL, as registered with the providers.
pub fn callback_url(state: &AppState) -> String {
    format!(
        "{}{CALLBACK_PATH}",
        state.config.public_url().trim_end_matches('/')
    )
}

/// This deployment's client of `service`, when configured.
pub(super) fn client(state: &AppState, service: &str) -> Option<ProviderClientConfig> {
    state.config.oauth.providers.get(service).cloned()
}

/// The origin of the provider's sign-in page (for the connect form's `form-action`).
pub(super) fn authorize_origin(state: &AppState, service: &str) -> Option<String> {
    client(state, service)
        .and_then(|c| c.authorize_url(service))
        .map(|u| u.origin().ascii_serialization())
}

/// The connect form's button was pressed: off to the provider's sign-in, with the flow sealed
/// in `state` and the binding cookie set.
pub(super) fn start(
    state: &AppState,
    p: &AuthorizeParams,
    form: &ServiceForm,
    account: Option<String>,
) -> ApiResult<Response> {
    let service = form.service;
    let cfg = client(state, service)
        .ok_or_else(|| ApiError::bad_request(format!("{service} is not configured")))?;
    let authorize = cfg
        .authorize_url(service)
        .ok_or_else(|| ApiError::internal("no authorize URL"))?;
    let verifier = generate_token("").expose_secret().to_owned();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let nonce = generate_token("").expose_secret().to_owned();
    let mut p = p.clone();
    // Only the form's defaults: not needed any more, and they would lengthen the URL.
    p.extra_data = None;
    let flow = Flow {
        p,
        account,
        verifier,
        bind: URL_SAFE_NO_PAD.encode(Sha256::digest(nonce.as_bytes())),
        exp: now_ms() + FLOW_TTL.as_millis() as i64,
    };
    let plain = serde_json::to_vec(&flow).map_err(ApiError::internal)?;
    let sealed = URL_SAFE_NO_PAD.encode(state.sealer.seal(&plain, STATE_AAD));
    let mut to = authorize;
    {
        let mut q = to.query_pairs_mut();
        q.append_pair("client_id", &cfg.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &callback_url(state))
            .append_pair("state", &sealed)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let scope = cfg.scope(service);
        if !scope.is_empty() {
            q.append_pair("scope", &scope);
        }
        // A refresh token, so the account outlives the first access token.
        match service {
            "dropbox" => {
                q.append_pair("token_access_type", "offline");
            }
            "gdrive" => {
                q.append_pair("access_type", "offline")
                    .append_pair("prompt", "consent");
            }
            _ => {}
        }
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(to.as_str()).map_err(ApiError::internal)?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{BIND_COOKIE}={nonce}; Path={CALLBACK_PATH}; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            FLOW_TTL.as_secs()
        ))
        .map_err(ApiError::internal)?,
    );
    Ok(r)
}

/// What the provider sends the user back with.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallbackParams {
    /// The provider's authorization code.
    #[serde(default)]
    code: Option<String>,
    /// The sealed flow this hub put in the provider's `state`.
    #[serde(default)]
    state: Option<String>,
    /// Set when the user refused, or the provider failed.
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

fn stale_page() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Please start again",
        "<h1 id=\"oauth-error\">Please start again</h1>\n<p class=\"error\" role=\"alert\">This \
         sign-in expired, was already used, or was not started in this browser. Go back to the \
         application and connect again.</p>",
        &[],
    )
}

/// The flow in `sealed`, if this network sealed it, it has not expired, and this browser
/// started it.
fn open_flow(state: &AppState, headers: &HeaderMap, sealed: &str) -> Option<Flow> {
    let raw = URL_SAFE_NO_PAD.decode(sealed.trim()).ok()?;
    let plain = state.sealer.open(&raw, STATE_AAD).ok()?;
    let flow: Flow = serde_json::from_slice(&plain).ok()?;
    if flow.exp < now_ms() {
        return None;
    }
    let nonce = crate::pages::cookie(headers, BIND_COOKIE)?;
    let bind = URL_SAFE_NO_PAD.encode(Sha256::digest(nonce.as_bytes()));
    ct_eq(bind.as_bytes(), flow.bind.as_bytes()).then_some(flow)
}

/// Back from the provider's sign-in: exchange its code, check the tokens, connect the account
/// and finish the application's flow.
#[utoipa::path(get, path = "/v1/oauth/callback", tag = "oauth", security(()),
    params(CallbackParams),
    responses((status = 303, description = "Back to the application's redirect URI, with a code or an error"),
              (status = 400, description = "A state this browser did not start, tampered or expired (HTML)")))]
pub(super) async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackParams>,
) -> Response {
    let Some(flow) = q
        .state
        .as_deref()
        .and_then(|s| open_flow(&state, &headers, s))
    else {
        return stale_page();
    };
    let p = flow.p;
    let c = match check(&state, &p).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let fail = |error: &str, why: &str| {
        forget_binding(
            &state,
            redirect_error(
                &c.redirect,
                &p.response_type,
                error,
                why,
                p.state.as_deref(),
            ),
        )
    };
    let picked = p.service.as_deref().unwrap_or_default();
    let Some(form) = c
        .services
        .iter()
        .find(|f| f.provider && f.service == picked)
        .copied()
    else {
        return fail("invalid_request", "that service is not offered any more");
    };
    let service = form.service;
    let Some(cfg) = client(&state, service) else {
        return fail("invalid_request", "that service is not offered any more");
    };
    if let Some(e) = q.error.as_deref() {
        let why = match e {
            "access_denied" => format!("access to {} was not granted", form.title),
            _ => format!("{} did not complete the sign-in ({})", form.title, short(e)),
        };
        tracing::info!(service, error = %short(e), description = %short(q.error_description.as_deref().unwrap_or("")),
            "a provider sign-in came back with an error");
        return fail("access_denied", &why);
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return fail("server_error", "the provider sent no code");
    };
    let settings = match exchange(&state, service, &cfg, code, &flow.verifier).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service, error = %e.message(), "a provider code exchange failed");
            return fail("server_error", e.message());
        }
    };
    let body = NewAccount {
        service: service.to_owned(),
        account: flow.account.unwrap_or_default(),
        credentials: serde_json::to_value(&settings).unwrap_or_default(),
    };
    let record = match crate::api::accounts::store_account(&state, c.app_id, &body).await {
        Ok((r, _)) => r,
        Err(e) => return fail("server_error", e.message()),
    };
    forget_binding(&state, finish(&state, &p, &c, record.id).await)
}

/// Clears the binding cookie on the way back to the application (one flow, one callback).
fn forget_binding(state: &AppState, mut r: Response) -> Response {
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{BIND_COOKIE}=; Path={CALLBACK_PATH}; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// A provider's word, cut short and kept to plain characters (it is logged and shown).
fn short(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || " _-.:".contains(*c))
        .take(80)
        .collect()
}

/// The egress guard's client for calls to a provider's OAuth and API endpoints.
fn http(state: &AppState) -> ApiResult<reqwest::Client> {
    state
        .connect_options
        .egress
        .http_builder(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(
            state.config.storage.io_timeout_secs.max(1),
        ))
        .build()
        .map_err(ApiError::internal)
}

/// Reads a provider's JSON answer, at most [`MAX_ANSWER`] bytes.
async fn read_json(resp: reqwest::Response, host: &str) -> ApiResult<serde_json::Value> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::from(shared::storage::unreachable(host, &e)))?;
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(StorageError::Unavailable(format!("{host} answered too much")).into());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|_| {
        StorageError::Unavailable(format!("{host} answered something else than JSON")).into()
    })
}

/// The provider's code for tokens (OAuth 2 `authorization_code` grant with the PKCE verifier,
/// form-encoded, client id and secret in the body): the account's settings.
async fn exchange(
    state: &AppState,
    service: &'static str,
    cfg: &ProviderClientConfig,
    code: &str,
    verifier: &str,
) -> ApiResult<OAuthSettings> {
    let endpoints = state
        .config
        .events
        .detect
        .delta_endpoints(service)
        .ok_or_else(|| ApiError::internal("no token endpoint"))?;
    let secret = cfg.secret().map_err(|e| {
        tracing::error!(service, error = %e, "oauth.providers: the client secret cannot be read");
        ApiError::internal("the provider's client secret is not readable")
    })?;
    let url = endpoints.token;
    let host = url.host_str().unwrap_or_default().to_owned();
    state
        .connect_options
        .egress
        .check_url(&url)
        .map_err(|e| ApiError::from(StorageError::EgressDenied(e.to_string())))?;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &callback_url(state))
        .append_pair("client_id", &cfg.client_id)
        .append_pair("client_secret", &secret)
        .append_pair("code_verifier", verifier)
        .finish();
    let req = http(state)?
        .post(url)
        .header(
            header::CONTENT_TYPE.as_str(),
            "application/x-www-form-urlencoded",
        )
        .header(header::ACCEPT.as_str(), "application/json")
        .body(form);
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::from(shared::storage::unreachable(&host, &e.without_url())))?;
    let status = resp.status().as_u16();
    let v = read_json(resp, &host).await?;
    let text = |k: &str| {
        v.get(k)
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    match (status, text("access_token")) {
        // With a refresh token the account keeps that (the connectors take one or the other,
        // and an access token dies within hours); the check then gets a fresh access token.
        (200, Some(access)) => Ok(match text("refresh_token") {
            Some(refresh) => OAuthSettings {
                access_token: None,
                refresh_token: Some(refresh),
                client_id: Some(cfg.client_id.clone()),
                client_secret: Some(secret),
                root: None,
            },
            None => OAuthSettings {
                access_token: Some(access),
                refresh_token: None,
                client_id: None,
                client_secret: None,
                root: None,
            },
        }),
        _ => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!(
                "{host} did not accept the sign-in ({status}{})",
                text("error")
                    .map(|e| format!(" {}", short(&e)))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// The real call that checks the credentials of a Dropbox, Google Drive or OneDrive account
/// (`POST /v1/accounts`, and the provider sign-in above): who the token belongs to (Dropbox
/// `users/get_current_account`, Drive `about`, OneDrive `me/drive`), at the API base the
/// detectors and the pass-through use. An account with only a refresh token gets an access
/// token first; a 401 is refreshed once. Returns the account's name at the provider (its
/// email, else its display name); `None` for other services.
pub(crate) async fn identify(
    state: &AppState,
    settings: &ServiceConfig,
) -> ApiResult<Option<String>> {
    let (service, s) = match settings {
        ServiceConfig::Dropbox(s) => ("dropbox", s),
        ServiceConfig::Gdrive(s) => ("gdrive", s),
        ServiceConfig::Onedrive(s) => ("onedrive", s),
        _ => return Ok(None),
    };
    let endpoints = state
        .config
        .events
        .detect
        .delta_endpoints(service)
        .ok_or_else(|| ApiError::internal("no API endpoint"))?;
    let base = endpoints.api.as_str().trim_end_matches('/').to_owned();
    let (method, url) = match service {
        "dropbox" => (
            reqwest::Method::POST,
            format!("{base}/users/get_current_account"),
        ),
        "gdrive" => (reqwest::Method::GET, format!("{base}/about?fields=user")),
        _ => (reqwest::Method::GET, format!("{base}/me/drive")),
    };
    let url = reqwest::Url::parse(&url).map_err(ApiError::internal)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let egress = &state.connect_options.egress;
    egress
        .check_url(&url)
        .map_err(|e| ApiError::from(StorageError::EgressDenied(e.to_string())))?;
    let client = http(state)?;
    let budget = state
        .connect_options
        .budgets
        .budget(settings.name(), settings.budget_key());
    // Account 0: nothing is kept for an account not stored yet (the settings' digest keys it).
    let bearer = Bearer::new(0, s, &endpoints);
    let token_host = endpoints.token.host_str().unwrap_or_default().to_owned();
    let refresh = || async {
        bearer
            .refresh(&client, egress, &budget)
            .await
            .map_err(|e| refresh_failed(service, &token_host, e))
    };
    let send = |token: String| {
        let mut rb = client
            .request(method.clone(), url.clone())
            .bearer_auth(token);
        if service == "dropbox" {
            rb = rb
                .header(header::CONTENT_TYPE.as_str(), "application/json")
                .body("null");
        }
        let (budget, host) = (&budget, &host);
        async move {
            budget
                .send(rb)
                .await
                .map_err(|e| ApiError::from(StorageError::from(e)))?
                .map_err(|e| ApiError::from(shared::storage::unreachable(host, &e)))
        }
    };
    let (token, refreshed) = match bearer.token() {
        Some(t) => (t, false),
        None => (refresh().await?, true),
    };
    let mut resp = send(token).await?;
    if resp.status().as_u16() == 401 && !refreshed && bearer.can_refresh() {
        drop(resp);
        resp = send(refresh().await?).await?;
    }
    let status = resp.status().as_u16();
    if matches!(status, 400 | 401 | 403) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            format!("{host} refused the credentials ({status})"),
        ));
    }
    if status != 200 {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("{host} answered {status} to the credential check"),
        ));
    }
    let v = read_json(resp, &host).await?;
    let pick = |paths: &[&[&str]]| {
        paths.iter().find_map(|path| {
            let mut at = &v;
            for k in *path {
                at = at.get(k)?;
            }
            at.as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        })
    };
    let name = match service {
        "dropbox" => pick(&[&["email"], &["name", "display_name"]]),
        "gdrive" => pick(&[&["user", "emailAddress"], &["user", "displayName"]]),
        _ => pick(&[
            &["owner", "user", "email"],
            &["owner", "user", "displayName"],
        ]),
    };
    Ok(Some(
        name.map(|n| n.chars().take(255).collect())
            .unwrap_or_else(|| format!("{} account", settings.name())),
    ))
}

/// The connect form's note for a provider that signs the user in itself.
pub(super) fn lead(title: &str) -> String {
    format!(
        "You will sign in at {} and allow this application to reach your files; then you come \
         back here.",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn provider_words_are_cut_and_plain() {
        assert_eq!(short("access_denied"), "access_denied");
        assert_eq!(short("<script>x</script>"), "scriptxscript");
        assert_eq!(short(&"a".repeat(500)).len(), 80);
    }
}
