//! The developer portal (`/ui/`): sign in with a meta token, then applications (create,
//! rename, settings: event collection, OAuth redirect URIs, trusted domains, the implicit
//! grant; delete) and their API keys (created and shown once, revoked), and the accounts they
//! connected. Server-rendered pages (`pages.rs`: no script, strict policy), every change a
//! POST carrying the session's CSRF token, answered by a redirect (a new key is shown on the
//! answer itself, once).
//!
//! The session: a random token in an HttpOnly, SameSite=Strict cookie (Secure under TLS),
//! never in the page or in storage the page's script could read; the database keeps only its
//! SHA-256, and it dies with the meta token it was made from, on sign-out, or after
//! [`SESSION_TTL`].

use crate::error::ApiError;
use crate::model::OAuthChanges;
use crate::pages::{escape, page};
use crate::state::{now_ms, AppState};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine as _;
use secrecy::ExposeSecret;
use shared::auth::{ct_eq, generate_token, hash_token};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const COOKIE: &str = "sy_portal";

/// The portal's routes (outside the API's JSON error shaping: these answer pages).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/apps", get(apps).post(create_app))
        .route("/ui/apps/{app}", get(app_page).post(save_app))
        .route("/ui/apps/{app}/delete", post(delete_app))
        .route("/ui/apps/{app}/keys", post(create_key))
        .route("/ui/apps/{app}/keys/{key}/revoke", post(revoke_key))
        .route("/ui/apps/{app}/accounts/{acc}", get(explorer_page))
        .route("/ui/apps/{app}/accounts/{acc}/delete", post(disconnect))
        .route("/ui/apps/{app}/webhooks", post(add_webhook))
        .route("/ui/apps/{app}/webhooks/{id}", get(webhook_page))
        .route("/ui/apps/{app}/webhooks/{id}/delete", post(delete_webhook))
        .route(
            "/ui/apps/{app}/webhooks/{id}/deliveries/{delivery}/resend",
            post(resend_delivery),
        )
        .route("/ui/apps/{app}/accounts/{acc}/token", post(explorer_token))
        .route("/ui/network", get(console_page))
        .route("/ui/network.json", get(console_data))
}

type Fields = BTreeMap<String, String>;

/// A signed-in request: the session token (for the CSRF tag).
struct Session(String);

fn cookie(headers: &HeaderMap) -> Option<String> {
    crate::pages::cookie(headers, COOKIE)
}

async fn session(state: &AppState, headers: &HeaderMap) -> Result<Session, Response> {
    let Some(token) = cookie(headers) else {
        return Err(to_login());
    };
    match state
        .db
        .portal_session_live(&hash_token(&token), now_ms())
        .await
    {
        Ok(true) => Ok(Session(token)),
        Ok(false) => Err(to_login()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// A change: signed in, and the form's CSRF token is this session's.
async fn changing(state: &AppState, headers: &HeaderMap, f: &Fields) -> Result<Session, Response> {
    let s = session(state, headers).await?;
    let sent = f.get("csrf").map(String::as_str).unwrap_or("");
    if !ct_eq(sent.as_bytes(), csrf(state, &s).as_bytes()) {
        return Err(page(
            StatusCode::FORBIDDEN,
            "Please try again",
            "<h1>Please try again</h1><p class=\"error\" role=\"alert\">This form was not sent \
             from this page. Reload it and try again.</p>",
            &[],
        ));
    }
    Ok(s)
}

/// A signed-in change: the session, and its form whose CSRF token is the session's (the
/// extractor of every POST of the portal).
struct Change {
    session: Session,
    form: Fields,
}

impl axum::extract::FromRequest<AppState> for Change {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Form(form) = Form::<Fields>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = changing(state, &headers, &form).await?;
        Ok(Change { session, form })
    }
}

fn csrf(state: &AppState, s: &Session) -> String {
    let tag = state.oauth_forms.tag(&[b"portal\n", s.0.as_bytes()]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
}

fn see(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn to_login() -> Response {
    see("/ui/login")
}

/// The header of a signed-in page: the sections and the sign-out button.
fn nav_bar(state: &AppState, s: &Session) -> String {
    format!(
        "<header class=\"bar\"><nav><a href=\"/ui/apps\">Applications</a> \
         <a href=\"/ui/network\">Network</a></nav>\
         <form method=\"post\" action=\"/ui/logout\">{}<button type=\"submit\" \
         class=\"link\">Sign out</button></form></header>\n",
        hidden_csrf(state, s)
    )
}

/// The page frame of a signed-in page.
fn frame(state: &AppState, s: &Session, title: &str, body: &str) -> Response {
    page(
        StatusCode::OK,
        title,
        &format!("{}{body}", nav_bar(state, s)),
        &[],
    )
}

fn hidden_csrf(state: &AppState, s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        csrf(state, s)
    )
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session(&state, &headers).await {
        Ok(_) => see("/ui/apps"),
        Err(r) => r,
    }
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|e| {
            format!(
                "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>\n",
                escape(e)
            )
        })
        .unwrap_or_default();
    page(
        status,
        "Sign in",
        &format!(
            "<h1>Switchyard developer portal</h1>\n<p class=\"lead\">Sign in with a meta \
             token (<code>hub meta-token create</code>).</p>\n{error}\
             <form id=\"login\" method=\"post\" action=\"/ui/login\">\n\
             <label for=\"f-token\">Meta token</label>\n\
             <input id=\"f-token\" name=\"token\" type=\"password\" autocomplete=\"off\" required>\n\
             <button type=\"submit\">Sign in</button>\n</form>"
        ),
        &[],
    )
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

async fn login(State(state): State<AppState>, Form(f): Form<Fields>) -> Response {
    let token = f.get("token").map(|t| t.trim()).unwrap_or("");
    let id = match token {
        "" => None,
        t => match state.db.meta_token_id(&hash_token(t)).await {
            Ok(id) => id,
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let Some(meta) = id else {
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That is not a meta token of this hub."),
        );
    };
    let session = generate_token("ps_");
    let now = now_ms();
    if let Err(e) = state
        .db
        .create_portal_session(
            &hash_token(session.expose_secret()),
            meta,
            now,
            now + SESSION_TTL.as_millis() as i64,
        )
        .await
    {
        return ApiError::from(e).into_response();
    }
    let mut r = see("/ui/apps");
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session.expose_secret(),
        SESSION_TTL.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(state): State<AppState>, Change { session: s, .. }: Change) -> Response {
    if let Err(e) = state
        .db
        .end_portal_session(&hash_token(&s.0), now_ms())
        .await
    {
        return ApiError::from(e).into_response();
    }
    let mut r = to_login();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sy_portal=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn apps(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let s = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (list, total) = match state.db.list_apps(0, 200).await {
        Ok(l) => l,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut rows = String::new();
    for a in &list {
        rows.push_str(&format!(
            "<tr><td><a href=\"/ui/apps/{}\">{}</a></td><td>{}</td><td>{}</td></tr>\n",
            a.id,
            escape(&a.name),
            a.id,
            if a.active { "active" } else { "inactive" }
        ));
    }
    let more = if total > list.len() as i64 {
        format!("<p class=\"lead\">The first {} of {total}.</p>", list.len())
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Applications</h1>\n<table id=\"apps\"><thead><tr><th scope=\"col\">Name</th>\
         <th scope=\"col\">Id</th><th scope=\"col\">State</th></tr></thead>\n<tbody>\n{rows}\
         </tbody></table>\n{more}\
         <h2>New application</h2>\n<form id=\"new-app\" method=\"post\" action=\"/ui/apps\">{}\n\
         <label for=\"f-name\">Name</label>\n<input id=\"f-name\" name=\"name\" maxlength=\"200\" \
         required>\n<button type=\"submit\">Create</button>\n</form>",
        hidden_csrf(&state, &s)
    );
    frame(&state, &s, "Applications", &body)
}

async fn create_app(State(state): State<AppState>, Change { form: f, .. }: Change) -> Response {
    let name = f.get("name").map(|n| n.trim()).unwrap_or("");
    if let Err(e) = crate::api::validate_app_name(name) {
        return error_page(e);
    }
    match state.db.create_app(name, "", false, now_ms()).await {
        Ok(a) => see(&format!("/ui/apps/{}", a.id)),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn error_page(e: ApiError) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Not saved",
        &format!(
            "<h1>Not saved</h1>\n<p class=\"error\" role=\"alert\">{}</p>\n\
             <p><a href=\"/ui/apps\">Back to the applications</a></p>",
            escape(e.message())
        ),
        &[],
    )
}

/// A secret just made, shown once on the page that answers its creation.
enum Shown<'a> {
    Key(&'a str),
    WebhookSecret(&'a str),
}

/// One application's page; `shown` is a secret just created, shown this once.
async fn render_app(state: &AppState, s: &Session, app: i64, shown: Option<Shown<'_>>) -> Response {
    let a = match state.db.get_app(app).await {
        Ok(Some(a)) => a,
        Ok(None) => return crate::pages::not_found("application"),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let keys = match state.db.list_api_keys(app).await {
        Ok(k) => k,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let accounts = match state.db.list_accounts(app, None, 0, 200).await {
        Ok((l, _)) => l,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let hooks = match state.db.list_webhooks(app).await {
        Ok(h) => h,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let csrf = hidden_csrf(state, s);
    let secret = shown.is_some();
    let shown = match shown {
        Some(Shown::Key(k)) => format!(
            "<div class=\"notice\" role=\"status\"><p>The new API key, shown only now: copy \
             it somewhere safe.</p><p><code id=\"new-key\">{}</code></p></div>\n",
            escape(k)
        ),
        Some(Shown::WebhookSecret(k)) => format!(
            "<div class=\"notice\" role=\"status\"><p>The webhook passed its test. Its signing \
             secret, shown only now:</p><p><code id=\"new-secret\">{}</code></p></div>\n",
            escape(k)
        ),
        None => String::new(),
    };
    let mut hook_rows = String::new();
    for h in &hooks {
        let state_text = match (&h.disabled_ms, &h.disabled_reason) {
            (Some(_), reason) => format!("disabled: {}", reason.as_deref().unwrap_or("no reason")),
            (None, _) if h.failing_since_ms.is_some() => "failing".to_owned(),
            (None, _) => "active".to_owned(),
        };
        hook_rows.push_str(&format!(
            "<tr><td><a href=\"/ui/apps/{app}/webhooks/{id}\">{url}</a></td><td>{st}</td><td>\
             <form method=\"post\" action=\"/ui/apps/{app}/webhooks/{id}/delete\">{csrf}\
             <button type=\"submit\" class=\"danger\">Delete</button></form></td></tr>\n",
            id = h.id,
            url = escape(&h.url),
            st = escape(&state_text),
        ));
    }
    let connect = match a.redirect_uris.first() {
        Some(redirect) => {
            let q = serde_urlencoded::to_string([
                ("client_id", app.to_string()),
                ("response_type", "code".to_owned()),
                ("redirect_uri", redirect.clone()),
                ("scope", "all".to_owned()),
            ])
            .unwrap_or_default();
            format!(
                "<p><a href=\"/v1/oauth?{}\">Connect an account</a> <span class=\"hint\">(the \
                 OAuth page; the code goes to {})</span></p>\n",
                escape(&q),
                escape(redirect)
            )
        }
        None => "<p class=\"hint\">Register a redirect URI to connect accounts through the OAuth \
                 page.</p>\n"
            .to_owned(),
    };
    let mut key_rows = String::new();
    for k in &keys {
        key_rows.push_str(&format!(
            "<tr><td><code>{}…</code></td><td>{}</td><td><form method=\"post\" \
             action=\"/ui/apps/{app}/keys/{}/revoke\">{csrf}<button type=\"submit\" \
             class=\"danger\">Revoke</button></form></td></tr>\n",
            escape(&k.hint),
            crate::model::rfc3339(k.created_ms),
            k.id
        ));
    }
    let mut account_rows = String::new();
    for c in &accounts {
        account_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><a href=\"/ui/apps/{app}/accounts/{}\">{}</a></td>\
             <td><form method=\"post\" action=\"/ui/apps/{app}/accounts/{}/delete\">{csrf}\
             <button type=\"submit\" class=\"danger\">Disconnect</button></form></td></tr>\n",
            c.id,
            escape(&c.service),
            c.id,
            escape(&c.name),
            c.id,
        ));
    }
    let checked = |b: bool| if b { " checked" } else { "" };
    let body = format!(
        "<h1 id=\"app-name\">{name}</h1>\n<p class=\"lead\">Application {app}</p>\n{shown}\
         <h2>Settings</h2>\n<form id=\"settings\" method=\"post\" action=\"/ui/apps/{app}\">{csrf}\n\
         <label for=\"f-name\">Name</label>\n<input id=\"f-name\" name=\"name\" maxlength=\"200\" \
         value=\"{name}\" required>\n\
         <label for=\"f-redirects\">OAuth redirect URIs <span class=\"hint\">(one per line)</span>\
         </label>\n<textarea id=\"f-redirects\" name=\"redirect_uris\">{redirects}</textarea>\n\
         <label for=\"f-trusted\">Trusted domains <span class=\"hint\">(origins allowed to call \
         the API from a browser, one per line)</span></label>\n<textarea id=\"f-trusted\" \
         name=\"trusted_domains\">{trusted}</textarea>\n\
         <label class=\"check\"><input type=\"checkbox\" name=\"collect_events\" value=\"1\"{ev}> \
         Record changes in the accounts' event feeds</label>\n\
         <label class=\"check\"><input type=\"checkbox\" name=\"implicit_grant_enabled\" \
         value=\"1\"{ig}> Allow the OAuth implicit grant</label>\n\
         <button type=\"submit\">Save</button>\n</form>\n\
         <h2>API keys</h2>\n<table id=\"keys\"><thead><tr><th scope=\"col\">Key</th>\
         <th scope=\"col\">Created</th><th scope=\"col\"><span class=\"hint\">Action</span></th>\
         </tr></thead>\n<tbody>\n{key_rows}</tbody></table>\n\
         <form id=\"new-key-form\" method=\"post\" action=\"/ui/apps/{app}/keys\">{csrf}\
         <button type=\"submit\">Create an API key</button></form>\n\
         <h2>Webhooks</h2>\n<table id=\"webhooks\"><thead><tr><th scope=\"col\">URL</th>\
         <th scope=\"col\">State</th><th scope=\"col\"><span class=\"hint\">Action</span></th>\
         </tr></thead>\n<tbody>\n{hook_rows}</tbody></table>\n\
         <form id=\"new-webhook\" method=\"post\" action=\"/ui/apps/{app}/webhooks\">{csrf}\n\
         <label for=\"f-hook\">Add a webhook <span class=\"hint\">(it must answer a signed test \
         request with 200 and the application id)</span></label>\n<input id=\"f-hook\" \
         name=\"url\" type=\"url\" required>\n<button type=\"submit\">Add</button>\n</form>\n\
         <h2>Connected accounts</h2>\n{connect}<table id=\"accounts\"><thead><tr><th scope=\"col\">Id</th>\
         <th scope=\"col\">Service</th><th scope=\"col\">Name</th>\
         <th scope=\"col\"><span class=\"hint\">Action</span></th></tr></thead>\n<tbody>\n\
         {account_rows}</tbody></table>\n\
         <h2>Delete</h2>\n<form id=\"delete-app\" method=\"post\" action=\"/ui/apps/{app}/delete\">\
         {csrf}\n<label class=\"check\"><input type=\"checkbox\" name=\"confirm\" value=\"1\" \
         required> Delete this application, its keys and its accounts</label>\n\
         <button type=\"submit\" class=\"danger\">Delete</button>\n</form>",
        name = escape(&a.name),
        redirects = escape(&a.redirect_uris.join("\n")),
        trusted = escape(&a.trusted_domains.join("\n")),
        ev = checked(a.collect_events),
        ig = checked(a.implicit_grant_enabled),
    );
    let mut r = frame(state, s, &a.name, &body);
    if secret {
        // The page with the key is never kept by the browser.
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn app_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app): Path<i64>,
) -> Response {
    match session(&state, &headers).await {
        Ok(s) => render_app(&state, &s, app, None).await,
        Err(r) => r,
    }
}

fn lines(v: Option<&String>) -> Vec<String> {
    v.map(|t| {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

async fn save_app(
    State(state): State<AppState>,
    Path(app): Path<i64>,
    Change { form: f, .. }: Change,
) -> Response {
    let name = f
        .get("name")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    if let Err(e) = crate::api::validate_app_name(&name) {
        return error_page(e);
    }
    let oauth = OAuthChanges {
        redirect_uris: Some(lines(f.get("redirect_uris"))),
        trusted_domains: Some(lines(f.get("trusted_domains"))),
        implicit_grant_enabled: Some(f.contains_key("implicit_grant_enabled")),
    };
    if let Err(e) = crate::api::oauth::validate_settings(&oauth) {
        return error_page(e);
    }
    let now = now_ms();
    let collect = Some(f.contains_key("collect_events"));
    match state
        .db
        .update_app(app, Some(&name), None, None, collect, now)
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => return crate::pages::not_found("application"),
        Err(e) => return ApiError::from(e).into_response(),
    }
    if let Err(e) = state.db.set_app_oauth(app, &oauth, now).await {
        return ApiError::from(e).into_response();
    }
    state.forget_app(app);
    see(&format!("/ui/apps/{app}"))
}

async fn delete_app(
    State(state): State<AppState>,
    Path(app): Path<i64>,
    Change { form: f, .. }: Change,
) -> Response {
    if !f.contains_key("confirm") {
        return error_page(ApiError::bad_request(
            "tick the box to confirm the deletion",
        ));
    }
    match state.db.delete_app(app).await {
        Ok(_) => {
            state.forget_app(app);
            see("/ui/apps")
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn create_key(
    State(state): State<AppState>,
    Path(app): Path<i64>,
    Change { session: s, .. }: Change,
) -> Response {
    match crate::api::create_api_key(&state, app).await {
        Ok((_, key)) => render_app(&state, &s, app, Some(Shown::Key(&key))).await,
        Err(e) => e.into_response(),
    }
}

async fn revoke_key(
    State(state): State<AppState>,
    Path((app, key)): Path<(i64, i64)>,
    _: Change,
) -> Response {
    match state.db.delete_api_key(app, Some(key), &[]).await {
        Ok(_) => {
            state.forget_app(app);
            see(&format!("/ui/apps/{app}"))
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Most transfers the console shows (unfinished first).
const CONSOLE_TRANSFERS: i64 = 1000;
/// A hub not seen in the directory for this long is shown down.
const HUB_STALE_MS: i64 = 30_000;
/// A spoke certificate expiring within this long is flagged.
const CERT_WARN_MS: i64 = 7 * 86_400_000;

/// The operator console: the page; `console.js` fills it from `/ui/network.json` every second.
async fn console_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let s = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let nav = nav_bar(&state, &s);
    let body = format!(
        "{nav}<h1>Network</h1>\n<p class=\"lead\" id=\"updated\" aria-live=\"polite\">Loading…</p>\n\
         <h2>Regions</h2>\n<svg id=\"map\" role=\"img\" aria-label=\"Regions and the measured \
         round trips between them\" viewBox=\"0 0 600 260\"></svg>\n\
         <h2>Hubs</h2>\n<table id=\"hubs\"><thead><tr><th scope=\"col\">API</th>\
         <th scope=\"col\">Region</th><th scope=\"col\">Health</th><th scope=\"col\">Last seen</th>\
         <th scope=\"col\">Version</th><th scope=\"col\">Database</th>\
         <th scope=\"col\">Replica lag</th></tr></thead><tbody></tbody></table>\n\
         <h2>Spokes</h2>\n<table id=\"spokes\"><thead><tr><th scope=\"col\">Name</th>\
         <th scope=\"col\">Region</th><th scope=\"col\">Health</th><th scope=\"col\">Load</th>\
         <th scope=\"col\">RTT to this hub</th><th scope=\"col\">Storage RTTs</th>\
         <th scope=\"col\">Last heartbeat</th><th scope=\"col\">Certificate expires</th>\
         </tr></thead><tbody></tbody></table>\n\
         <h2>Transfers</h2>\n<table id=\"transfers\"><thead><tr><th scope=\"col\">Id</th>\
         <th scope=\"col\">Operation</th><th scope=\"col\">State</th>\
         <th scope=\"col\">Progress</th><th scope=\"col\">Rate</th><th scope=\"col\">ETA</th>\
         <th scope=\"col\">Executor</th></tr></thead><tbody></tbody></table>"
    );
    let mut r = crate::pages::scripted_page("Network", &body, "console.js");
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    r
}

/// What the console shows, as JSON (the portal session's, like the page).
async fn console_data(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if session(&state, &headers).await.is_err() {
        return ApiError::unauthorized("sign in at /ui/login").into_response();
    }
    match console_snapshot(&state).await {
        Ok(v) => {
            let mut r = axum::Json(v).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn console_snapshot(state: &AppState) -> Result<serde_json::Value, ApiError> {
    use serde_json::json;
    let now = now_ms();
    let mut hubs = state.db.list_hubs(0).await?;
    let spokes = state.db.list_spokes().await?;
    let transfers = state.db.console_transfers(CONSOLE_TRANSFERS).await?;
    // In a fixed order: every hub refreshes its row every few seconds.
    hubs.sort_by(|a, b| (&a.region, &a.api, &a.quic).cmp(&(&b.region, &b.api, &b.quic)));
    let hubs: Vec<_> = hubs
        .iter()
        .map(|h| {
            json!({"api": h.api, "region": h.region, "quic": h.quic,
                   "healthy": now - h.seen_ms < HUB_STALE_MS, "seen_ms_ago": now - h.seen_ms,
                   "version": h.version, "db_role": h.db_role,
                   "replica_lag_ms": h.replica_lag_ms})
        })
        .collect();
    // Links between regions: the round trips spokes measure to hubs (`hub:<region>`).
    let mut links: BTreeMap<(String, String), u64> = BTreeMap::new();
    let spokes: Vec<_> = spokes
        .iter()
        .filter(|s| s.revoked_ms.is_none())
        .map(|s| {
            let live = state.network.registry.status(s.id);
            if let Some(l) = &live {
                for (k, us) in &l.rtts {
                    if let Some(region) = k.strip_prefix("hub:") {
                        let key = (s.region.clone(), region.to_owned());
                        links
                            .entry(key)
                            .and_modify(|v| *v = (*v).min(*us))
                            .or_insert(*us);
                    }
                }
            }
            let storage: BTreeMap<&str, u64> = live
                .as_ref()
                .map(|l| {
                    l.rtts
                        .iter()
                        .filter_map(|(k, v)| k.strip_prefix("storage:").map(|h| (h, *v)))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "id": s.id, "name": s.name, "region": s.region,
                "connected": live.is_some(),
                "healthy": live.as_ref().is_some_and(|l| l.healthy),
                "active_jobs": live.as_ref().map(|l| l.active_jobs),
                "free_slots": live.as_ref().map(|l| l.free_slots),
                "bytes_per_sec": live.as_ref().map(|l| l.bytes_per_sec),
                "rtt_us": live.as_ref().map(|l| l.rtt_us),
                "storage_rtts_us": storage,
                "last_heartbeat_ms_ago": live.as_ref().map(|l| l.last_heartbeat_ms_ago),
                "last_seen": s.last_seen_ms.map(crate::model::rfc3339),
                "cert_not_after": s.cert_not_after_ms.map(crate::model::rfc3339),
                "cert_expires_in_s": s.cert_not_after_ms.map(|na| (na - now).div_euclid(1000)),
                "cert_expires_soon": s.cert_not_after_ms.is_some_and(|na| na - now < CERT_WARN_MS),
            })
        })
        .collect();
    let transfers: Vec<_> = transfers
        .into_iter()
        .map(|t| {
            let total = u64::try_from(t.size).ok();
            let (done, rate) = match state.transfers.live(t.id) {
                Some((b, r)) if t.state == "running" => {
                    (b.max(t.bytes_done as u64).min(total.unwrap_or(u64::MAX)), r)
                }
                _ => (t.bytes_done as u64, 0),
            };
            let eta = total
                .filter(|_| t.state == "running" && rate > 0)
                .map(|n| n.saturating_sub(done) / rate);
            let relayed = t.note.as_deref().is_some_and(|n| n.contains("relayed"));
            json!({"id": t.id, "operation": t.kind, "state": t.state, "bytes_done": done,
                   "bytes_total": total, "rate": rate, "eta": eta, "executor": t.executor,
                   "spoke": t.spoke_id, "region": t.region, "relayed": relayed})
        })
        .collect();
    let links: Vec<_> = links
        .into_iter()
        .map(|((from, to), us)| json!({"from": from, "to": to, "rtt_ms": us as f64 / 1000.0}))
        .collect();
    Ok(json!({
        "region": state.config.region,
        "version": env!("CARGO_PKG_VERSION"),
        "hubs": hubs, "spokes": spokes, "transfers": transfers, "links": links,
    }))
}

/// How long an explorer's account token lasts (the page asks for another on a 401).
const EXPLORER_TOKEN: Duration = Duration::from_secs(15 * 60);

/// The file explorer of one account: `explorer.js` works through the public REST API with a
/// short-lived bearer token of that account, asked for with the session's CSRF token.
async fn explorer_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app, acc)): Path<(i64, i64)>,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let account = match state.db.list_accounts(app, Some(acc), 0, 1).await {
        Ok((mut l, _)) if !l.is_empty() => l.remove(0),
        Ok(_) => return crate::pages::not_found("account"),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let body = format!(
        "{nav}<h1>{name}</h1>\n<p class=\"lead\"><a href=\"/ui/apps/{app}\">Application {app}</a> \
         · account {acc} · {service}</p>\n\
         <div id=\"explorer\" data-app=\"{app}\" data-account=\"{acc}\" data-csrf=\"{csrf}\">\n\
         <nav id=\"crumbs\" aria-label=\"Folder\"></nav>\n\
         <form id=\"search\" role=\"search\"><label for=\"q\">Search</label>\
         <input id=\"q\" name=\"q\" type=\"search\"><button type=\"submit\">Search</button></form>\n\
         <form id=\"mkdir\"><label for=\"folder-name\">New folder</label>\
         <input id=\"folder-name\" name=\"name\" required><button type=\"submit\">Create</button></form>\n\
         <p><label for=\"upload\">Upload a file</label> <input id=\"upload\" type=\"file\"> \
         <progress id=\"upload-progress\" max=\"1\" value=\"0\" aria-label=\"Upload\" hidden></progress> \
         <span id=\"upload-status\" role=\"status\"></span></p>\n\
         <p id=\"status\" role=\"status\" aria-live=\"polite\" tabindex=\"-1\"></p>\n\
         <table id=\"files\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Size</th>\
         <th scope=\"col\">Modified</th><th scope=\"col\"><span class=\"hint\">Actions</span></th></tr>\
         </thead><tbody></tbody></table>\n<p><button id=\"more\" type=\"button\" hidden>More</button></p>\n\
         <dialog id=\"move\" aria-labelledby=\"move-title\"><h2 id=\"move-title\">Move</h2>\n\
         <p class=\"hint\">Choose the folder to move it into.</p>\n\
         <nav id=\"move-crumbs\" aria-label=\"Destination folder\"></nav>\n\
         <ul id=\"move-folders\" aria-label=\"Folders inside it\"></ul>\n\
         <p><button id=\"move-more\" type=\"button\" class=\"link\" hidden>More folders</button></p>\n\
         <p id=\"move-status\" role=\"status\"></p>\n\
         <p class=\"actions\"><button id=\"move-here\" type=\"button\">Move here</button> \
         <button id=\"move-cancel\" type=\"button\" class=\"link\">Cancel</button></p>\n\
         </dialog>\n</div>",
        nav = nav_bar(&state, &s),
        name = escape(&account.name),
        service = escape(&account.service),
        csrf = csrf(&state, &s),
    );
    let mut r = crate::pages::scripted_page(&account.name, &body, "explorer.js");
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    r
}

/// A short-lived bearer token of the account, for the explorer's calls to the API.
async fn explorer_token(
    State(state): State<AppState>,
    Path((app, acc)): Path<(i64, i64)>,
    _: Change,
) -> Response {
    match state.db.list_accounts(app, Some(acc), 0, 1).await {
        Ok((l, _)) if !l.is_empty() => {}
        Ok(_) => return ApiError::not_found("account").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    }
    let token = generate_token("at_");
    let now = now_ms();
    let expires = now + EXPLORER_TOKEN.as_millis() as i64;
    if let Err(e) = state
        .db
        .create_expiring_token(
            acc,
            &hash_token(token.expose_secret()),
            "explorer",
            now,
            Some(expires),
        )
        .await
    {
        return ApiError::from(e).into_response();
    }
    let mut r = axum::Json(serde_json::json!({
        "access_token": token.expose_secret(),
        "account_id": acc,
        "expires_in": EXPLORER_TOKEN.as_secs(),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Disconnecting an account (its files stay where they are).
async fn disconnect(
    State(state): State<AppState>,
    Path((app, acc)): Path<(i64, i64)>,
    _: Change,
) -> Response {
    match state.db.delete_account(app, acc).await {
        Ok(true) => {
            state.forget_account(acc);
            see(&format!("/ui/apps/{app}"))
        }
        Ok(false) => crate::pages::not_found("account"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Adding a webhook: its live test first, as the Meta API does; its secret shown once.
async fn add_webhook(
    State(state): State<AppState>,
    Path(app): Path<i64>,
    Change {
        session: s,
        form: f,
    }: Change,
) -> Response {
    let url = f.get("url").map(String::as_str).unwrap_or("");
    match crate::api::webhooks::add(&state, app, url).await {
        Ok((_, secret)) => render_app(&state, &s, app, Some(Shown::WebhookSecret(&secret))).await,
        Err(e) => error_page(e),
    }
}

async fn delete_webhook(
    State(state): State<AppState>,
    Path((app, id)): Path<(i64, i64)>,
    _: Change,
) -> Response {
    match state.db.delete_webhook(app, id).await {
        Ok(true) => see(&format!("/ui/apps/{app}")),
        Ok(false) => crate::pages::not_found("webhook"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A webhook's delivery log, newest first, each attempt with a resend button.
async fn webhook_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app, id)): Path<(i64, i64)>,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let hook = match state.db.get_webhook(app, id).await {
        Ok(Some(h)) => h,
        Ok(None) => return crate::pages::not_found("webhook"),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let attempts = match state.db.list_webhook_attempts(id, 0, 100).await {
        Ok((rows, _)) => rows,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let csrf = hidden_csrf(&state, &s);
    let mut rows = String::new();
    for a in &attempts {
        rows.push_str(&format!(
            "<tr data-ok=\"{ok}\"><td>{at}</td><td>{acc}</td><td>{n}</td><td>{status}</td>\
             <td>{lat} ms</td><td>{err}</td><td><form method=\"post\" \
             action=\"/ui/apps/{app}/webhooks/{id}/deliveries/{d}/resend\">{csrf}\
             <button type=\"submit\">Resend</button></form></td></tr>\n",
            ok = a.ok,
            at = crate::model::rfc3339(a.at_ms),
            acc = a.account_id,
            n = a.attempt,
            status = a
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no answer".into()),
            lat = a.latency_ms,
            err = escape(
                a.error
                    .as_deref()
                    .unwrap_or(if a.ok { "delivered" } else { "" })
            ),
            d = a.id,
        ));
    }
    let body = format!(
        "<h1>Webhook deliveries</h1>\n<p class=\"lead\"><a href=\"/ui/apps/{app}\">Application \
         {app}</a> · <code>{url}</code></p>\n<table id=\"deliveries\"><thead><tr>\
         <th scope=\"col\">When</th><th scope=\"col\">Account</th><th scope=\"col\">Attempt</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Latency</th><th scope=\"col\">Result</th>\
         <th scope=\"col\"><span class=\"hint\">Action</span></th></tr></thead>\n<tbody>\n{rows}\
         </tbody></table>",
        url = escape(&hook.url),
    );
    frame(&state, &s, "Webhook deliveries", &body)
}

async fn resend_delivery(
    State(state): State<AppState>,
    Path((app, id, delivery)): Path<(i64, i64, i64)>,
    _: Change,
) -> Response {
    match crate::api::webhooks::resend(&state, app, id, delivery).await {
        Ok(()) => see(&format!("/ui/apps/{app}/webhooks/{id}")),
        Err(e) => error_page(e),
    }
}
