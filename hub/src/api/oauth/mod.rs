//! OAuth 2.0 for applications, as the Kloudless SDKs drive it: `GET /v1/oauth` shows the end
//! user a page to pick a storage service (the app's `scope` narrows the choice) and fill its
//! form; `POST /v1/oauth` checks the CSRF token, connects the account exactly as
//! `POST /v1/accounts` does (a real call to the provider) and redirects to the app's
//! registered `redirect_uri` with a `code` (or, with the implicit grant, a token in the
//! fragment); `POST /v1/oauth/token` exchanges the code for a bearer token; `GET
//! /v1/oauth/token` tells what a bearer token is.
//!
//! Dropbox, Google Drive and OneDrive, when configured (`oauth.providers`), sign the user in at
//! the provider itself instead of a form: [`providers`].
//!
//! Codes: only a SHA-256 is stored; single use (one conditional UPDATE; a code presented again
//! revokes the token it gave), 10 minutes, bound to the application, the redirect URI and the
//! PKCE challenge (`S256`) when sent. A request naming an unknown application or a redirect URI
//! the application did not register gets an error page, never a redirect. The form's CSRF token
//! is an HMAC over a random cookie (HttpOnly, SameSite=Strict) and the request's parameters.

pub(crate) mod providers;

use crate::api::accounts::store_account;
use crate::db::{NewCode, Taken};
use crate::error::{ApiError, ApiResult};
use crate::model::{NewAccount, OAuthChanges};
use crate::pages::{escape, page};
use crate::state::{now_ms, AppState};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::auth::{ct_eq as constant_time_eq, generate_token, hash_token};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long a code may be exchanged.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// The CSRF cookie.
const CSRF_COOKIE: &str = "sy_oauth";
/// Most redirect URIs and trusted domains per application.
const MAX_LISTED: usize = 20;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize_page, authorize_submit))
        .routes(routes!(token_exchange, token_info))
        .routes(routes!(providers::callback))
}

/// A storage service the connect page offers, and its form.
struct ServiceForm {
    service: &'static str,
    title: &'static str,
    fields: &'static [Field],
    /// Signs the user in at the provider (its own OAuth) instead of a form of credentials;
    /// offered only when `oauth.providers` configures it.
    provider: bool,
}

struct Field {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    kind: Kind,
    required: bool,
}

#[derive(PartialEq)]
enum Kind {
    Text,
    Secret,
    Multiline,
}

const fn f(
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    kind: Kind,
    required: bool,
) -> Field {
    Field {
        name,
        label,
        hint,
        kind,
        required,
    }
}

const FORMS: &[ServiceForm] = &[
    ServiceForm {
        service: "s3",
        title: "Amazon S3 or an S3-compatible store",
        fields: &[
            f(
                "endpoint",
                "Endpoint",
                "empty for AWS; e.g. https://s3.example.net",
                Kind::Text,
                false,
            ),
            f("region", "Region", "e.g. us-east-1", Kind::Text, false),
            f("bucket", "Bucket", "", Kind::Text, true),
            f("access_key_id", "Access key ID", "", Kind::Text, true),
            f(
                "secret_access_key",
                "Secret access key",
                "",
                Kind::Secret,
                true,
            ),
        ],
        provider: false,
    },
    ServiceForm {
        service: "webdav",
        title: "WebDAV",
        fields: &[
            f(
                "endpoint",
                "Server URL",
                "e.g. https://dav.example.net/files",
                Kind::Text,
                true,
            ),
            f("username", "User name", "", Kind::Text, false),
            f("password", "Password", "", Kind::Secret, false),
        ],
        provider: false,
    },
    ServiceForm {
        service: "sftp",
        title: "SFTP",
        fields: &[
            f("endpoint", "Host", "host:port", Kind::Text, true),
            f("user", "User", "", Kind::Text, true),
            f(
                "key",
                "Private key",
                "OpenSSH or PEM; or a password below",
                Kind::Multiline,
                false,
            ),
            f("password", "Password", "", Kind::Secret, false),
        ],
        provider: false,
    },
    ServiceForm {
        service: "azblob",
        title: "Azure Blob Storage",
        fields: &[
            f(
                "endpoint",
                "Endpoint",
                "e.g. https://ACCOUNT.blob.core.windows.net",
                Kind::Text,
                true,
            ),
            f("container", "Container", "", Kind::Text, true),
            f("account_name", "Storage account", "", Kind::Text, true),
            f("account_key", "Account key", "", Kind::Secret, true),
        ],
        provider: false,
    },
    ServiceForm {
        service: "gcs",
        title: "Google Cloud Storage",
        fields: &[
            f("bucket", "Bucket", "", Kind::Text, true),
            f(
                "credential",
                "Service account key",
                "the JSON key, base64 encoded",
                Kind::Multiline,
                true,
            ),
            f(
                "endpoint",
                "Endpoint",
                "empty for Google's",
                Kind::Text,
                false,
            ),
        ],
        provider: false,
    },
    ServiceForm {
        service: "dropbox",
        title: "Dropbox",
        fields: &[],
        provider: true,
    },
    ServiceForm {
        service: "gdrive",
        title: "Google Drive",
        fields: &[],
        provider: true,
    },
    ServiceForm {
        service: "onedrive",
        title: "OneDrive",
        fields: &[],
        provider: true,
    },
];

/// The authorization request (`GET /v1/oauth`, and the hidden fields of its form).
#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuthorizeParams {
    /// The application id.
    #[serde(default)]
    client_id: String,
    /// `code`, or `token` when the application enabled the implicit grant.
    #[serde(default)]
    response_type: String,
    /// One of the application's registered redirect URIs, exactly.
    #[serde(default)]
    redirect_uri: String,
    /// Space-separated: `all` (or `storage`), or services such as `s3 webdav`.
    #[serde(default)]
    scope: Option<String>,
    /// Returned unchanged to the redirect URI.
    #[serde(default)]
    state: Option<String>,
    /// URL-encoded JSON object: default values of the form's fields.
    #[serde(default)]
    extra_data: Option<String>,
    /// PKCE (RFC 7636): base64url SHA-256 of the verifier.
    #[serde(default)]
    code_challenge: Option<String>,
    /// `S256` (the only method accepted).
    #[serde(default)]
    code_challenge_method: Option<String>,
    /// The service picked on the chooser.
    #[serde(default)]
    service: Option<String>,
}

/// A request checked far enough to answer by redirect.
struct Checked {
    app_id: i64,
    redirect: url::Url,
    services: Vec<&'static ServiceForm>,
    scope: String,
}

/// Checks client and redirect URI; errors before that are pages, after it redirects.
async fn check(state: &AppState, p: &AuthorizeParams) -> Result<Checked, Box<Response>> {
    let bad_page = |title: &str, why: &str| {
        Box::new(page(
            StatusCode::BAD_REQUEST,
            title,
            &format!(
                "<h1 id=\"oauth-error\">{}</h1>\n<p class=\"error\" role=\"alert\">{}</p>",
                escape(title),
                escape(why)
            ),
            &[],
        ))
    };
    let app = match p.client_id.trim().parse::<i64>() {
        Ok(id) => state.db.get_app(id).await.ok().flatten(),
        Err(_) => None,
    };
    let Some(app) = app.filter(|a| a.active) else {
        return Err(bad_page(
            "Unknown application",
            "The application that sent you here (`client_id`) is not known to this service.",
        ));
    };
    if !app.redirect_uris.iter().any(|u| u == &p.redirect_uri) {
        return Err(bad_page(
            "Redirect URI not registered",
            "The application asked to send you back to an address it did not register; \
             nothing was sent there.",
        ));
    }
    let redirect = url::Url::parse(&p.redirect_uri).map_err(|_| {
        bad_page(
            "Redirect URI not registered",
            "The registered redirect URI is not a URL.",
        )
    })?;
    let fail = |error: &str, why: &str| {
        Err(Box::new(redirect_error(
            &redirect,
            &p.response_type,
            error,
            why,
            p.state.as_deref(),
        )))
    };
    match p.response_type.as_str() {
        "code" => {}
        "token" if app.implicit_grant_enabled => {}
        "token" => return fail("unauthorized_client", "the implicit grant is not enabled"),
        _ => {
            return fail(
                "unsupported_response_type",
                "response_type must be code or token",
            )
        }
    }
    match (
        p.code_challenge.as_deref(),
        p.code_challenge_method.as_deref(),
    ) {
        (None, None) => {}
        (Some(c), Some("S256")) if is_challenge(c) => {}
        (Some(_), Some("S256")) => {
            return fail(
                "invalid_request",
                "code_challenge must be 43 base64url characters",
            )
        }
        (Some(_), None | Some(_)) => {
            return fail("invalid_request", "code_challenge_method must be S256")
        }
        (None, Some(_)) => return fail("invalid_request", "code_challenge is missing"),
    }
    let scope = p.scope.as_deref().unwrap_or("all").trim().to_owned();
    let services = services_for(&scope, |f| {
        !f.provider || state.config.oauth.providers.contains_key(f.service)
    });
    if services.is_empty() {
        return fail("invalid_scope", "the scope names no service offered here");
    }
    Ok(Checked {
        app_id: app.id,
        redirect,
        services,
        scope: if scope.is_empty() {
            "all".into()
        } else {
            scope
        },
    })
}

/// The services a scope allows, of those `offered` (a provider only when configured): `all`,
/// `any`, `storage` or nothing → every one; else the named ones (`s3`, `webdav:…`).
fn services_for(scope: &str, offered: impl Fn(&ServiceForm) -> bool) -> Vec<&'static ServiceForm> {
    let words: Vec<&str> = scope
        .split_whitespace()
        .map(|w| w.split(':').next().unwrap_or(w))
        .collect();
    let every = words.is_empty()
        || words
            .iter()
            .any(|w| matches!(*w, "all" | "any" | "storage"));
    FORMS
        .iter()
        .filter(|f| offered(f) && (every || words.contains(&f.service)))
        .collect()
}

fn is_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A redirect to the app carrying an error (in the query for `code`, the fragment for `token`).
fn redirect_error(
    to: &url::Url,
    response_type: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    redirect_with(to, response_type == "token", &pairs)
}

fn redirect_with(to: &url::Url, fragment: bool, pairs: &[(&str, &str)]) -> Response {
    let mut u = to.clone();
    if fragment {
        let f = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        u.set_fragment(Some(&f));
    } else {
        u.query_pairs_mut().extend_pairs(pairs);
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(u.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The origin a redirect lands on (for the form's `form-action`).
fn origin(u: &url::Url) -> String {
    u.origin().ascii_serialization()
}

/// The connect page: the chooser, or one service's form.
#[utoipa::path(get, path = "/v1/oauth", tag = "oauth", security(()), params(AuthorizeParams),
    responses((status = 200, description = "The connect page (HTML)", content_type = "text/html"),
              (status = 303, description = "Back to the application's redirect URI with an error"),
              (status = 400, description = "Unknown application or unregistered redirect URI (HTML)")))]
async fn authorize_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    let c = match check(&state, &p).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let picked = match (&p.service, c.services.as_slice()) {
        (Some(s), _) => c.services.iter().find(|f| f.service == s).copied(),
        (None, [only]) => Some(*only),
        (None, _) => None,
    };
    let Some(form) = picked else {
        return chooser(&p, &c);
    };
    let prefill = extra_data(p.extra_data.as_deref());
    connect_form(&state, &headers, &p, &c, form, &prefill, None)
}

fn chooser(p: &AuthorizeParams, c: &Checked) -> Response {
    let mut items = String::new();
    for f in &c.services {
        let mut q = p.clone();
        q.service = Some(f.service.to_owned());
        let query = serde_urlencoded::to_string(&q).unwrap_or_default();
        items.push_str(&format!(
            "<li><a class=\"service\" data-service=\"{}\" href=\"/v1/oauth?{}\">{}</a></li>\n",
            f.service,
            escape(&query),
            escape(f.title)
        ));
    }
    page(
        StatusCode::OK,
        "Connect your storage",
        &format!(
            "<h1>Connect your storage</h1>\n<p class=\"lead\">Choose where your files are.</p>\n\
             <ul class=\"services\">\n{items}</ul>"
        ),
        &[],
    )
}

/// The field defaults `extra_data` carries (a JSON object of strings; anything else is
/// ignored).
fn extra_data(raw: Option<&str>) -> BTreeMap<String, String> {
    raw.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.as_object().cloned())
        .map(|o| {
            o.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Number(n) => Some((k, n.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A service's form. `values` prefill it (never a secret field); `error` is the provider's or
/// our complaint about the last submission.
fn connect_form(
    state: &AppState,
    headers: &HeaderMap,
    p: &AuthorizeParams,
    c: &Checked,
    form: &ServiceForm,
    values: &BTreeMap<String, String>,
    error: Option<&str>,
) -> Response {
    let mut p = p.clone();
    p.service = Some(form.service.to_owned());
    // The CSRF cookie: reused while the browser has one, so two tabs do not fight.
    let cookie = cookie_value(headers)
        .filter(|v| v.len() == 43)
        .unwrap_or_else(|| {
            generate_token("")
                .expose_secret()
                .chars()
                .take(43)
                .collect()
        });
    let csrf = csrf_tag(state, &cookie, &p);
    let mut hidden = String::new();
    let params = serde_json::to_value(&p).unwrap_or_default();
    if let Some(o) = params.as_object() {
        for (k, v) in o {
            if let Some(v) = v.as_str() {
                hidden.push_str(&format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                    escape(k),
                    escape(v)
                ));
            }
        }
    }
    hidden.push_str(&format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n"
    ));
    let mut fields = String::new();
    let account = values.get("account").map(String::as_str).unwrap_or("");
    fields.push_str(&format!(
        "<label for=\"f-account\">Name this connection <span class=\"hint\">(optional)</span></label>\n\
         <input id=\"f-account\" name=\"account\" maxlength=\"255\" value=\"{}\">\n",
        escape(account)
    ));
    for fl in form.fields {
        let id = format!("f-{}", fl.name);
        let hint = if fl.hint.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"hint\">({})</span>", escape(fl.hint))
        };
        let required = if fl.required { " required" } else { "" };
        let value = match fl.kind {
            Kind::Secret => "",
            _ => values.get(fl.name).map(String::as_str).unwrap_or(""),
        };
        fields.push_str(&format!(
            "<label for=\"{id}\">{}{hint}</label>\n",
            escape(fl.label)
        ));
        match fl.kind {
            Kind::Multiline => fields.push_str(&format!(
                "<textarea id=\"{id}\" name=\"{}\"{required}>{}</textarea>\n",
                fl.name,
                escape(value)
            )),
            Kind::Text | Kind::Secret => fields.push_str(&format!(
                "<input id=\"{id}\" name=\"{}\" type=\"{}\" autocomplete=\"off\" value=\"{}\"{required}>\n",
                fl.name,
                if fl.kind == Kind::Secret { "password" } else { "text" },
                escape(value)
            )),
        }
    }
    let error = error
        .map(|e| {
            format!(
                "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>\n",
                escape(e)
            )
        })
        .unwrap_or_default();
    let back = if c.services.len() > 1 {
        let mut q = p.clone();
        q.service = None;
        format!(
            "<p><a href=\"/v1/oauth?{}\">Choose another service</a></p>\n",
            escape(&serde_urlencoded::to_string(&q).unwrap_or_default())
        )
    } else {
        String::new()
    };
    let (lead, button) = if form.provider {
        (
            providers::lead(form.title),
            format!("Continue to {}", escape(form.title)),
        )
    } else {
        (
            "The application will reach the files of this connection. The details are checked \
             with the service before anything is saved."
                .to_owned(),
            "Connect".to_owned(),
        )
    };
    let body = format!(
        "<h1>Connect {}</h1>\n<p class=\"lead\">{lead}</p>\n\
         {error}<form id=\"connect\" method=\"post\" action=\"/v1/oauth\">\n{hidden}{fields}\
         <button type=\"submit\">{button}</button>\n</form>\n{back}",
        escape(form.title)
    );
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    // The form lands on the application (or, for a provider, on its sign-in page): a browser
    // holds the redirects after a submission to `form-action` too.
    let mut lands = vec![origin(&c.redirect)];
    if form.provider {
        lands.extend(providers::authorize_origin(state, form.service));
    }
    let mut r = page(status, "Connect your storage", &body, &lands);
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={cookie}; Path=/v1/oauth; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    crate::pages::cookie(headers, CSRF_COOKIE)
}

/// The form's CSRF token: HMAC over the cookie and every parameter of the request.
fn csrf_tag(state: &AppState, cookie: &str, p: &AuthorizeParams) -> String {
    let params = serde_urlencoded::to_string(p).unwrap_or_default();
    let tag = state
        .oauth_forms
        .tag(&[cookie.as_bytes(), b"\n", params.as_bytes()]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
}

/// Submitting a service's form: connect the account, then back to the application.
#[utoipa::path(post, path = "/v1/oauth", tag = "oauth", security(()),
    request_body(content = BTreeMap<String, String>, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Back to the application's redirect URI"),
              (status = 400, description = "The form again with the complaint (HTML)"),
              (status = 403, description = "The CSRF check failed (HTML)"),
              (status = 415, body = crate::error::ErrorBody)))]
async fn authorize_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(mut fields): Form<BTreeMap<String, String>>,
) -> Response {
    let take = |m: &mut BTreeMap<String, String>, k: &str| m.remove(k);
    let p = AuthorizeParams {
        client_id: take(&mut fields, "client_id").unwrap_or_default(),
        response_type: take(&mut fields, "response_type").unwrap_or_default(),
        redirect_uri: take(&mut fields, "redirect_uri").unwrap_or_default(),
        scope: take(&mut fields, "scope"),
        state: take(&mut fields, "state"),
        extra_data: take(&mut fields, "extra_data"),
        code_challenge: take(&mut fields, "code_challenge"),
        code_challenge_method: take(&mut fields, "code_challenge_method"),
        service: take(&mut fields, "service"),
    };
    let sent = take(&mut fields, "csrf").unwrap_or_default();
    let c = match check(&state, &p).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let forged = || {
        page(
            StatusCode::FORBIDDEN,
            "Please try again",
            "<h1 id=\"oauth-error\">Please try again</h1>\n<p class=\"error\" role=\"alert\">\
             This form expired or was not sent from this page. Go back to the application \
             and start again.</p>",
            &[],
        )
    };
    let Some(cookie) = cookie_value(&headers) else {
        return forged();
    };
    if !constant_time_eq(sent.as_bytes(), csrf_tag(&state, &cookie, &p).as_bytes()) {
        return forged();
    }
    let Some(form) = p
        .service
        .as_deref()
        .and_then(|s| c.services.iter().find(|f| f.service == s).copied())
    else {
        return redirect_error(
            &c.redirect,
            &p.response_type,
            "invalid_request",
            "no service was chosen",
            p.state.as_deref(),
        );
    };
    if form.provider {
        let account = fields
            .get("account")
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty());
        return match providers::start(&state, &p, form, account) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let mut credentials = serde_json::Map::new();
    for fl in form.fields {
        if let Some(v) = fields
            .get(fl.name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            let v = if fl.kind == Kind::Multiline {
                fields.get(fl.name).map(String::as_str).unwrap_or(v)
            } else {
                v
            };
            credentials.insert(fl.name.to_owned(), serde_json::Value::String(v.to_owned()));
        }
    }
    let account = fields
        .get("account")
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| {
            let what = ["bucket", "container", "endpoint"]
                .iter()
                .find_map(|k| credentials.get(*k).and_then(|v| v.as_str()))
                .unwrap_or("");
            format!("{} {what}", form.title)
                .trim()
                .chars()
                .take(255)
                .collect()
        });
    let body = NewAccount {
        service: form.service.to_owned(),
        account,
        credentials: serde_json::Value::Object(credentials),
    };
    let (record, _) = match store_account(&state, c.app_id, &body).await {
        Ok(r) => r,
        Err(e) => {
            let mut keep = fields.clone();
            keep.retain(|k, _| {
                form.fields
                    .iter()
                    .any(|f| f.name == k && f.kind != Kind::Secret)
                    || k == "account"
            });
            return connect_form(&state, &headers, &p, &c, form, &keep, Some(e.message()));
        }
    };
    finish(&state, &p, &c, record.id).await
}

/// The account `account` is connected: back to the application with a code, or with a token
/// in the fragment for the implicit grant.
async fn finish(state: &AppState, p: &AuthorizeParams, c: &Checked, account: i64) -> Response {
    let now = now_ms();
    let account_id = account.to_string();
    if p.response_type == "token" {
        let token = generate_token("at_");
        let hash = hash_token(token.expose_secret());
        if let Err(e) = state
            .db
            .create_scoped_token(account, &hash, &c.scope, now)
            .await
        {
            return ApiError::from(e).into_response();
        }
        let mut pairs = vec![
            ("access_token", token.expose_secret()),
            ("token_type", "Bearer"),
            ("account_id", account_id.as_str()),
            ("scope", c.scope.as_str()),
        ];
        if let Some(s) = p.state.as_deref() {
            pairs.push(("state", s));
        }
        return redirect_with(&c.redirect, true, &pairs);
    }
    let code = generate_token("oc_");
    let created = state
        .db
        .create_code(
            &NewCode {
                hash: &hash_token(code.expose_secret()),
                app_id: c.app_id,
                account_id: account,
                redirect_uri: &p.redirect_uri,
                scope: &c.scope,
                code_challenge: p.code_challenge.as_deref(),
                expires_ms: now + CODE_TTL.as_millis() as i64,
            },
            now,
        )
        .await;
    if let Err(e) = created {
        return ApiError::from(e).into_response();
    }
    let mut pairs = vec![("code", code.expose_secret())];
    if let Some(s) = p.state.as_deref() {
        pairs.push(("state", s));
    }
    redirect_with(&c.redirect, false, &pairs)
}

/// The token request (form fields).
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct TokenRequest {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    client_id: String,
    /// An API key of the application.
    #[serde(default)]
    client_secret: String,
    /// PKCE: the verifier whose S256 was the challenge.
    #[serde(default)]
    code_verifier: Option<String>,
}

/// A granted token.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenGrant {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    account_id: i64,
    scope: String,
}

/// What a bearer token is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenView {
    /// The application id (a string, as Kloudless application ids were).
    client_id: String,
    account_id: i64,
    scope: String,
    created: String,
}

fn grant_error(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// Exchange an authorization code for a bearer token. The body is form-encoded (also under the
/// Python SDK's `Content-Type: application/form-urlencoded`).
#[utoipa::path(post, path = "/v1/oauth/token", tag = "oauth", security(()),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenGrant), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody)))]
async fn token_exchange(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<Json<TokenGrant>> {
    let t: TokenRequest = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a form: {e}")))?;
    if t.grant_type != "authorization_code" {
        return Err(grant_error(
            "unsupported_grant_type",
            "grant_type must be authorization_code",
        ));
    }
    let app_id: i64 = t
        .client_id
        .trim()
        .parse()
        .map_err(|_| ApiError::unauthorized("unknown client_id"))?;
    // The client secret is an API key of that application (found by its hash: the index
    // lookup is the comparison).
    let key_app = match t.client_secret.trim() {
        "" => None,
        k => state.db.app_for_api_key(&hash_token(k)).await?,
    };
    if key_app != Some(app_id) {
        return Err(ApiError::unauthorized(
            "client_secret is not an API key of this application",
        ));
    }
    let now = now_ms();
    let invalid = || grant_error("invalid_grant", "the code is invalid, expired or used");
    let code = match state.db.take_code(&hash_token(t.code.trim()), now).await? {
        Taken::Fresh(c) => c,
        Taken::Reused(token) => {
            // Whoever presents a used code may have stolen it: what it gave is revoked.
            if let Some(id) = token {
                state.db.delete_token(id).await?;
                tracing::warn!(
                    app = app_id,
                    "an authorization code was presented twice; its token is revoked"
                );
            }
            return Err(invalid());
        }
        Taken::Unknown => return Err(invalid()),
    };
    if code.expires_ms < now || code.app_id != app_id || code.redirect_uri != t.redirect_uri {
        return Err(invalid());
    }
    if let Some(challenge) = &code.code_challenge {
        let verifier = t.code_verifier.as_deref().unwrap_or("");
        let ours = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        if verifier.len() < 43 || !constant_time_eq(ours.as_bytes(), challenge.as_bytes()) {
            return Err(invalid());
        }
    }
    let token = generate_token("at_");
    let token_id = state
        .db
        .create_scoped_token(
            code.account_id,
            &hash_token(token.expose_secret()),
            &code.scope,
            now,
        )
        .await?;
    if !state.db.set_code_token(code.id, token_id).await? {
        // Presented again while this exchange ran: neither presenter gets a token.
        state.db.delete_token(token_id).await?;
        tracing::warn!(
            app = app_id,
            "an authorization code was presented twice during its exchange; no token given"
        );
        return Err(invalid());
    }
    Ok(Json(TokenGrant {
        access_token: token.expose_secret().to_owned(),
        token_type: "Bearer",
        account_id: code.account_id,
        scope: code.scope,
    }))
}

/// What the bearer token in `Authorization` is: its application (`client_id`), account and
/// scope (the SDKs' `verify_token`).
#[utoipa::path(get, path = "/v1/oauth/token", tag = "oauth",
    responses((status = 200, body = TokenView), (status = 401, body = crate::error::ErrorBody)))]
async fn token_info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<TokenView>> {
    let token = crate::auth::bearer_token(&headers)?;
    let info = state
        .db
        .token_info(&hash_token(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
    Ok(Json(TokenView {
        client_id: info.app_id.to_string(),
        account_id: info.account_id,
        scope: info.scope,
        created: crate::model::rfc3339(info.created_ms),
    }))
}

/// Checks an application's OAuth settings before they are saved.
pub fn validate_settings(c: &OAuthChanges) -> ApiResult<()> {
    if let Some(list) = &c.redirect_uris {
        if list.len() > MAX_LISTED {
            return Err(ApiError::bad_request(format!(
                "`redirect_uris` holds at most {MAX_LISTED} URIs"
            )));
        }
        for u in list {
            let parsed = url::Url::parse(u).map_err(|e| {
                ApiError::bad_request(format!("`redirect_uris`: {u:?} is not a URL: {e}"))
            })?;
            let loopback = matches!(
                parsed.host(),
                Some(url::Host::Ipv4(ip)) if ip.is_loopback()
            ) || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                || parsed.host_str() == Some("localhost");
            let ok_scheme = parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback);
            if !ok_scheme || parsed.fragment().is_some() || u.len() > 2000 {
                return Err(ApiError::bad_request(format!(
                    "`redirect_uris`: {u:?} must be an https URL (http only on loopback) \
                     without a fragment, at most 2000 characters"
                )));
            }
        }
    }
    if let Some(list) = &c.trusted_domains {
        if list.len() > MAX_LISTED {
            return Err(ApiError::bad_request(format!(
                "`trusted_domains` holds at most {MAX_LISTED} origins"
            )));
        }
        for d in list {
            let parsed = url::Url::parse(d).ok();
            let is_origin = parsed.as_ref().is_some_and(|p| {
                matches!(p.scheme(), "https" | "http")
                    && p.host().is_some()
                    && p.origin().ascii_serialization() == d.trim_end_matches('/')
            });
            if !is_origin {
                return Err(ApiError::bad_request(format!(
                    "`trusted_domains`: {d:?} must be an origin such as https://app.example"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_narrow_the_services() {
        // Providers unconfigured (forms only), then configured.
        let forms = FORMS.iter().filter(|f| !f.provider).count();
        let names = |s: &str| -> Vec<&str> {
            services_for(s, |f| !f.provider)
                .iter()
                .map(|f| f.service)
                .collect()
        };
        assert_eq!(names("all").len(), forms);
        assert_eq!(names("").len(), forms);
        assert_eq!(names("storage").len(), forms);
        assert_eq!(names("s3"), ["s3"]);
        assert_eq!(names("webdav:normal.storage s3"), ["s3", "webdav"]);
        assert!(names("dropbox").is_empty());
        let all = |s: &str| -> Vec<&str> {
            services_for(s, |_| true)
                .iter()
                .map(|f| f.service)
                .collect()
        };
        assert_eq!(all("all").len(), FORMS.len());
        assert_eq!(all("dropbox onedrive"), ["dropbox", "onedrive"]);
    }

    #[test]
    fn settings_are_checked() {
        let c = |r: &[&str], t: &[&str]| OAuthChanges {
            redirect_uris: Some(r.iter().map(|s| (*s).to_owned()).collect()),
            trusted_domains: Some(t.iter().map(|s| (*s).to_owned()).collect()),
            implicit_grant_enabled: None,
        };
        assert!(validate_settings(&c(
            &["https://app.example/cb", "http://127.0.0.1:8000/cb"],
            &["https://app.example"]
        ))
        .is_ok());
        assert!(validate_settings(&c(&["http://app.example/cb"], &[])).is_err());
        assert!(validate_settings(&c(&["https://app.example/cb#x"], &[])).is_err());
        assert!(validate_settings(&c(&["javascript:alert(1)"], &[])).is_err());
        assert!(validate_settings(&c(&[], &["https://app.example/path"])).is_err());
        assert!(validate_settings(&c(&[], &["*"])).is_err());
    }

    #[test]
    fn challenges_have_their_form() {
        assert!(is_challenge(&"a".repeat(43)));
        assert!(!is_challenge(&"a".repeat(42)));
        assert!(!is_challenge(&format!("{}=", "a".repeat(42))));
    }
}
