//! OAuth 2.0 for applications over HTTP (the browser run is in `browser.rs`): the connect
//! page and its form against a real S3 server (moto), the code exchanged for a token that then
//! lists the account, and the attacks: an unknown client or an unregistered redirect URI (an
//! error page, never a redirect), a forged or replayed form (CSRF), a reused code (refused, and
//! the token it gave revoked), an expired code, another redirect URI or application at the
//! exchange, PKCE, the implicit grant only when enabled, a bad S3 secret (the form again with
//! the provider's complaint), hostile `extra_data` rendered as text; CORS for trusted origins
//! only; the pages' security headers.

use crate::offload::s3_creds;
use e2e::oauth_provider::FakeProvider;
use e2e::servers::S3Server;
use e2e::TestHub;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// A client without credentials that does not follow redirects.
fn client() -> reqwest::Client {
    e2e::no_redirect_client()
}

/// Registers `REDIRECT` (and `extra`) on the dev application, with `implicit` and `trusted`.
async fn register(hub: &TestHub, implicit: bool, trusted: &[&str]) {
    let r = hub
        .http
        .patch(hub.url(&format!(
            "/v1/meta/applications/{}",
            hub.creds.application_id
        )))
        .header("Authorization", hub.meta())
        .json(
            &json!({"redirect_uris": [REDIRECT, "https://app.example/cb"],
                      "trusted_domains": trusted, "implicit_grant_enabled": implicit}),
        )
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

fn authorize_url(hub: &TestHub, extra: &[(&str, &str)]) -> String {
    let mut q: Vec<(String, String)> = vec![
        ("client_id".into(), hub.creds.application_id.to_string()),
        ("response_type".into(), "code".into()),
        ("redirect_uri".into(), REDIRECT.into()),
        ("scope".into(), "s3".into()),
        ("state".into(), "st-123".into()),
    ];
    for (k, v) in extra {
        q.retain(|(qk, _)| qk != k);
        q.push(((*k).into(), (*v).into()));
    }
    let query = serde_urlencoded::to_string(&q).expect("query");
    hub.url(&format!("/v1/oauth?{query}"))
}

/// The hidden fields of the connect form, unescaped.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.strip_prefix("name=\"")?.split('"').next()?;
            let value = rest.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// The connect page: its status, body, cookie and hidden fields.
struct Page {
    status: StatusCode,
    html: String,
    cookie: Option<String>,
    csp: String,
    fields: Vec<(String, String)>,
}

async fn get_page(url: &str) -> Page {
    let r = client().get(url).send().await.expect("page");
    let status = r.status();
    let cookie = r
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let csp = r
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let html = r.text().await.expect("html");
    let fields = hidden_fields(&html);
    Page {
        status,
        html,
        cookie,
        csp,
        fields,
    }
}

/// Submits the page's form with `creds` (and the page's cookie unless `cookie` overrides it).
async fn submit(
    hub: &TestHub,
    page: &Page,
    creds: &[(&str, &str)],
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut form = page.fields.clone();
    for (k, v) in creds {
        form.push(((*k).into(), (*v).into()));
    }
    let mut req = post_form(hub, &form);
    if let Some(c) = cookie.or(page.cookie.as_deref()) {
        req = req.header("Cookie", c);
    }
    req.send().await.expect("submit")
}

/// `POST /v1/oauth` with a form body.
fn post_form(hub: &TestHub, form: &[(String, String)]) -> reqwest::RequestBuilder {
    client()
        .post(hub.url("/v1/oauth"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).expect("form"))
}

fn s3_fields(creds: &Value) -> Vec<(&'static str, String)> {
    [
        "endpoint",
        "region",
        "bucket",
        "access_key_id",
        "secret_access_key",
    ]
    .into_iter()
    .map(|k| (k, creds[k].as_str().unwrap_or_default().to_owned()))
    .collect()
}

/// Query (or fragment) parameters of a redirect.
fn params_of(location: &str, fragment: bool) -> Vec<(String, String)> {
    let u = url::Url::parse(location).expect("location");
    let part = if fragment { u.fragment() } else { u.query() }.unwrap_or("");
    url::form_urlencoded::parse(part.as_bytes())
        .into_owned()
        .collect()
}

fn param(ps: &[(String, String)], k: &str) -> Option<String> {
    ps.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone())
}

/// The whole code flow up to the code: page, form, redirect.
async fn code_for(hub: &TestHub, creds: &Value, extra: &[(&str, &str)]) -> String {
    let page = get_page(&authorize_url(hub, extra)).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let fields = s3_fields(creds);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = submit(hub, &page, &fields, None).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    let loc = r.headers()[LOCATION].to_str().expect("location").to_owned();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    let ps = params_of(&loc, false);
    assert_eq!(param(&ps, "state").as_deref(), Some("st-123"), "{loc}");
    param(&ps, "code").expect("code")
}

/// `POST /v1/oauth/token` as the Python SDK sends it.
async fn exchange(
    hub: &TestHub,
    code: &str,
    redirect: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form: Vec<(String, String)> = vec![
        ("grant_type".into(), "authorization_code".into()),
        ("code".into(), code.into()),
        ("redirect_uri".into(), redirect.into()),
        ("client_id".into(), hub.creds.application_id.to_string()),
        ("client_secret".into(), hub.creds.api_key.clone()),
    ];
    for (k, v) in extra {
        form.retain(|(fk, _)| fk != k);
        form.push(((*k).into(), (*v).into()));
    }
    let body = serde_urlencoded::to_string(&form).expect("form");
    let r = client()
        .post(hub.url("/v1/oauth/token"))
        .header("Content-Type", "application/form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("token");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn with_bearer(hub: &TestHub, path: &str, token: &str) -> (u16, Value) {
    let r = client()
        .get(hub.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("get");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The application's redirect receiver on loopback, registered as the dev application's only
/// redirect URI: returns its URL and the query of the last redirect it received.
async fn app_receiver(hub: &TestHub) -> (String, std::sync::Arc<std::sync::Mutex<Option<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let app = {
        let seen = seen.clone();
        axum::Router::new()
            .route("/favicon.ico", axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }))
            .route(
            "/callback",
            axum::routing::get(move |uri: axum::http::Uri| {
                let seen = seen.clone();
                async move {
                    *seen.lock().expect("lock") = uri.query().map(str::to_owned);
                    axum::response::Html("<!doctype html><html lang=\"en\"><title>done</title><main><h1>Connected</h1></main></html>")
                }
            }),
        )
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        l.local_addr().expect("addr").port()
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    let r = hub
        .http
        .patch(hub.url(&format!(
            "/v1/meta/applications/{}",
            hub.creds.application_id
        )))
        .header("Authorization", hub.meta())
        .json(&json!({"redirect_uris": [redirect]}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    (redirect, seen)
}

async fn s3_setup() -> (S3Server, Value) {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("oauth").await.expect("bucket");
    let creds = s3_creds(&s3, "oauth");
    (s3, creds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_flow_connects_an_account_and_its_token_lists_it() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, false, &[]).await;
    let (_s3, creds) = s3_setup().await;

    // The page: strict policy, no inline script, the app's origin allowed as a form target.
    let page = get_page(&authorize_url(&hub, &[])).await;
    assert_eq!(page.status, 200);
    assert!(page.csp.contains("frame-ancestors 'none'"), "{}", page.csp);
    assert!(
        page.csp.contains("form-action 'self' http://127.0.0.1:9"),
        "{}",
        page.csp
    );
    assert!(!page.csp.contains("unsafe-inline"), "{}", page.csp);
    assert!(!page.html.contains("<script"), "{}", page.html);
    let cookie = page.cookie.clone().expect("csrf cookie");
    assert!(cookie.starts_with("sy_oauth="), "{cookie}");

    let code = code_for(&hub, &creds, &[]).await;
    let (s, grant) = exchange(&hub, &code, REDIRECT, &[]).await;
    assert_eq!(s, 200, "{grant}");
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["scope"], "s3");
    let token = grant["access_token"].as_str().expect("token").to_owned();
    let account = grant["account_id"].as_i64().expect("account");

    let (s, info) = with_bearer(&hub, "/v1/oauth/token/", &token).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["client_id"], hub.creds.application_id.to_string());
    assert_eq!(info["account_id"], account);
    let (s, list) = with_bearer(
        &hub,
        "/v1/accounts/me/storage/folders/root/contents",
        &token,
    )
    .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["count"], 0);

    // The code is spent: presenting it again fails and revokes the token it gave.
    let (s, again) = exchange(&hub, &code, REDIRECT, &[]).await;
    assert_eq!(s, 400, "{again}");
    assert_eq!(again["error_code"], "invalid_grant");
    let (s, _) = with_bearer(&hub, "/v1/oauth/token", &token).await;
    assert_eq!(s, 401);

    // Bound to the redirect URI and the application's key.
    let code = code_for(&hub, &creds, &[]).await;
    let (s, e) = exchange(&hub, &code, "https://app.example/cb", &[]).await;
    assert_eq!((s, e["error_code"].as_str()), (400, Some("invalid_grant")));
    let other_key = hub.other_app_key("other").await.expect("key");
    let code = code_for(&hub, &creds, &[]).await;
    let (s, _) = exchange(&hub, &code, REDIRECT, &[("client_secret", &other_key)]).await;
    assert_eq!(s, 401);
    // Expired codes are refused.
    let code = code_for(&hub, &creds, &[]).await;
    hub.state
        .db
        .backdate_codes(hub.creds.application_id, 1)
        .await
        .expect("backdate");
    let (s, e) = exchange(&hub, &code, REDIRECT, &[]).await;
    assert_eq!((s, e["error_code"].as_str()), (400, Some("invalid_grant")));
    let (s, e) = exchange(&hub, "oc_not-a-code", REDIRECT, &[]).await;
    assert_eq!((s, e["error_code"].as_str()), (400, Some("invalid_grant")));
    let (s, e) = exchange(&hub, &code, REDIRECT, &[("grant_type", "password")]).await;
    assert_eq!(
        (s, e["error_code"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (s, e) = with_bearer(&hub, "/v1/oauth/token", "at_nope").await;
    assert_eq!(s, 401, "{e}");
    assert!(e["error_code"].is_string() && e["id"].is_string(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_binds_the_code_to_its_verifier() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, false, &[]).await;
    let (_s3, creds) = s3_setup().await;
    let verifier = "v".repeat(20) + &"k".repeat(30);
    let challenge = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        Sha256::digest(verifier.as_bytes()),
    );
    let pkce = [
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let code = code_for(&hub, &creds, &pkce).await;
    let (s, _) = exchange(&hub, &code, REDIRECT, &[]).await;
    assert_eq!(s, 400, "no verifier");
    let code = code_for(&hub, &creds, &pkce).await;
    let wrong = "w".repeat(50);
    let (s, _) = exchange(&hub, &code, REDIRECT, &[("code_verifier", &wrong)]).await;
    assert_eq!(s, 400, "wrong verifier");
    let code = code_for(&hub, &creds, &pkce).await;
    let (s, g) = exchange(&hub, &code, REDIRECT, &[("code_verifier", &verifier)]).await;
    assert_eq!(s, 200, "{g}");
    // `plain` is not offered.
    let page = get_page(&authorize_url(
        &hub,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "plain"),
        ],
    ))
    .await;
    assert_eq!(page.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_pages_not_redirects() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, false, &["https://app.example"]).await;
    let (_s3, creds) = s3_setup().await;

    // Unknown client, unregistered redirect URI: a page, never a redirect.
    for (k, v) in [
        ("client_id", "99999"),
        ("client_id", "abc"),
        ("redirect_uri", "https://evil.example/cb"),
        ("redirect_uri", "http://127.0.0.1:9/callback/../x"),
    ] {
        let p = get_page(&authorize_url(&hub, &[(k, v)])).await;
        assert_eq!(p.status, 400, "{k}={v}: {}", p.html);
        assert!(p.html.contains("id=\"oauth-error\""), "{}", p.html);
    }
    // A bad response type or the implicit grant when disabled: back to the app with an error.
    for (rt, error) in [
        ("id_token", "unsupported_response_type"),
        ("token", "unauthorized_client"),
    ] {
        let r = client()
            .get(authorize_url(&hub, &[("response_type", rt)]))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 303);
        let loc = r.headers()[LOCATION].to_str().expect("loc").to_owned();
        let ps = params_of(&loc, rt == "token");
        assert_eq!(param(&ps, "error").as_deref(), Some(error), "{loc}");
        assert_eq!(param(&ps, "state").as_deref(), Some("st-123"), "{loc}");
    }

    // CSRF: no cookie, another cookie, or a parameter changed after the page was made.
    let page = get_page(&authorize_url(&hub, &[])).await;
    let fields = s3_fields(&creds);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let all: Vec<(String, String)> = page
        .fields
        .iter()
        .cloned()
        .chain(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .collect();
    let no_cookie = post_form(&hub, &all);
    assert_eq!(no_cookie.send().await.expect("post").status(), 403);
    let r = submit(
        &hub,
        &page,
        &fields,
        Some("sy_oauth=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    )
    .await;
    assert_eq!(r.status(), 403);
    let mut moved = Page {
        fields: page.fields.clone(),
        ..get_page(&authorize_url(&hub, &[])).await
    };
    for (k, v) in &mut moved.fields {
        if k == "state" {
            *v = "attacker".into();
        }
    }
    moved.cookie = page.cookie.clone();
    assert_eq!(submit(&hub, &moved, &fields, None).await.status(), 403);

    // extra_data prefills the form as text, never as markup.
    let hostile =
        r#"{"bucket": "\"><script>alert(1)</script>", "account": "<img src=x onerror=alert(1)>"}"#;
    let p = get_page(&authorize_url(&hub, &[("extra_data", hostile)])).await;
    assert_eq!(p.status, 200);
    assert!(!p.html.contains("<script>alert"), "{}", p.html);
    assert!(!p.html.contains("<img src=x"), "{}", p.html);
    assert!(
        p.html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{}",
        p.html
    );

    // CORS: the trusted origin is allowed, another is not.
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let r = client()
            .request(Method::OPTIONS, hub.acc("/storage/folders/root/contents"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
            .await
            .expect("preflight");
        let acao = r
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(
            acao.as_deref() == Some(origin),
            allowed,
            "{origin}: {acao:?}"
        );
        let r = hub
            .req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .header("Origin", origin)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().get("access-control-allow-origin").is_some(),
            allowed,
            "{origin}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_implicit_grant_returns_a_token_in_the_fragment_when_enabled() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, true, &[]).await;
    let (_s3, creds) = s3_setup().await;
    let page = get_page(&authorize_url(&hub, &[("response_type", "token")])).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let fields = s3_fields(&creds);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = submit(&hub, &page, &fields, None).await;
    assert_eq!(r.status(), 303);
    let loc = r.headers()[LOCATION].to_str().expect("loc").to_owned();
    let u = url::Url::parse(&loc).expect("url");
    assert_eq!(u.query(), None, "{loc}");
    let ps = params_of(&loc, true);
    assert_eq!(param(&ps, "token_type").as_deref(), Some("Bearer"));
    assert_eq!(param(&ps, "state").as_deref(), Some("st-123"));
    let token = param(&ps, "access_token").expect("token");
    let (s, info) = with_bearer(&hub, "/v1/oauth/token", &token).await;
    assert_eq!(s, 200, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_uris_and_trusted_domains_are_validated() {
    let hub = TestHub::start().await.expect("hub");
    for body in [
        json!({"redirect_uris": ["http://app.example/cb"]}),
        json!({"redirect_uris": ["javascript:alert(1)"]}),
        json!({"redirect_uris": ["https://app.example/cb#frag"]}),
        json!({"trusted_domains": ["https://app.example/path"]}),
        json!({"trusted_domains": ["*"]}),
    ] {
        let r = hub
            .http
            .patch(hub.url(&format!(
                "/v1/meta/applications/{}",
                hub.creds.application_id
            )))
            .header("Authorization", hub.meta())
            .json(&body)
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["error_code"], "invalid_parameters", "{e}");
    }
    let r = hub
        .http
        .post(hub.url("/v1/meta/applications"))
        .header("Authorization", hub.meta())
        .json(
            &json!({"name": "web", "redirect_uris": ["https://web.example/oauth"],
                      "trusted_domains": ["https://web.example"]}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let app: Value = r.json().await.expect("json");
    assert_eq!(app["redirect_uris"], json!(["https://web.example/oauth"]));
    assert_eq!(app["trusted_domains"], json!(["https://web.example"]));
    assert_eq!(app["implicit_grant_enabled"], false);
}

/// A bad S3 secret, or a key the server does not know, against an S3 server that checks
/// signatures (moto with its IAM checks on): the form comes back (400) with the provider's own
/// complaint, which differs between the two, and without the secret; the other fields are
/// kept for the next try. (Moto's check rebuilds requests with botocore and refuses even the
/// right secret from clients that sign differently over plain HTTP, so the right secret is
/// tried against the ordinary server in the other tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_secret_shows_the_providers_complaint() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, false, &[]).await;
    let s3 = S3Server::start_authenticated(&["checked"])
        .await
        .expect("moto with auth");
    let creds = s3_creds(&s3, "checked");
    let page = get_page(&authorize_url(&hub, &[])).await;
    let fields = s3_fields(&creds);
    for (field, value, complaint) in [
        (
            "secret_access_key",
            "not-the-secret",
            "SignatureDoesNotMatch",
        ),
        (
            "access_key_id",
            "AKIANOTAKEYATALL0000",
            "InvalidAccessKeyId",
        ),
    ] {
        let mut bad: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (k, v) in &mut bad {
            if *k == field {
                *v = value;
            }
        }
        let r = submit(&hub, &page, &bad, None).await;
        assert_eq!(r.status(), 400);
        let html = r.text().await.expect("html");
        let alert = html
            .split("role=\"alert\">")
            .nth(1)
            .and_then(|a| a.split('<').next())
            .unwrap_or_default();
        assert!(alert.contains(complaint), "{field}: {alert}");
        assert!(!html.contains("not-the-secret"), "{html}");
        assert!(!html.contains(s3.secret_access_key()), "{html}");
        // The non-secret fields are kept for the next try.
        assert!(html.contains("value=\"checked\""), "{html}");
    }
}

/// Runs a Python snippet with the Kloudless SDK configured for `hub`; its stdout as JSON.
async fn sdk(hub: &TestHub, code: &str) -> Value {
    let script = format!(
        "import json, kloudless\nkloudless.configuration['base_url'] = {:?}\n{code}",
        hub.base_url
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the SDK printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The flow a real app runs: the Kloudless Python SDK's `get_authorization_url`, a real
/// Chromium filling the S3 form against moto, the redirect to a receiver the test runs,
/// `get_token_from_code` (a wrong `state` refused by the SDK first), `verify_token`, and the
/// token listing the account's files. The pages pass axe-core (no serious or critical
/// violation) and are captured as screenshots; no CSP violation, no console error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_and_chromium_run_the_whole_flow() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let hub = TestHub::start().await.expect("hub");
    let (redirect, seen) = app_receiver(&hub).await;
    let (_s3, creds) = s3_setup().await;
    let c = crate::offload::connector(&creds).await;
    crate::offload::write_object(&c, "report.pdf", 1000, 3).await;

    let app_id = hub.creds.application_id.to_string();
    let start = sdk(
        &hub,
        &format!(
            "url, state = kloudless.application.get_authorization_url({app_id:?}, {redirect:?}, scope='s3')\n\
             print(json.dumps({{'url': url, 'state': state}}))"
        ),
    )
    .await;
    let url = start["url"].as_str().expect("url");
    let state = start["state"].as_str().expect("state");
    assert!(
        url.starts_with(&format!("{}/v1/oauth?", hub.base_url)),
        "{url}"
    );

    let shots = tempfile::tempdir().expect("tmp");
    let field = |k: &str| creds[k].as_str().unwrap_or_default().to_owned();
    let run = e2e::browser::run(json!({
        "screenshots": shots.path(),
        "steps": [
            {"goto": url},
            {"screenshot": "oauth-form"},
            {"axe": "oauth-form"},
            {"fill": {"#f-endpoint": field("endpoint"), "#f-region": field("region"),
                      "#f-bucket": field("bucket"), "#f-access_key_id": field("access_key_id"),
                      "#f-secret_access_key": field("secret_access_key")}},
            {"submit": "#connect"},
            {"wait_url_prefix": redirect, "timeout_ms": 20000},
            {"screenshot": "oauth-done"},
            {"expect_no_dialog": true}
        ]
    }))
    .await
    .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    assert_eq!(run["axe"]["oauth-form"], json!([]), "{run}");
    assert_eq!(run["csp_violations"], json!([]), "{run}");
    assert_eq!(run["console_errors"], json!([]), "{run}");
    assert!(shots.path().join("oauth-form.png").is_file());
    let query = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("the receiver was reached");
    let params: serde_json::Map<String, Value> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let params = Value::Object(params).to_string();

    let done = sdk(
        &hub,
        &format!(
            "from kloudless import exceptions\n\
             params = json.loads({params:?})\n\
             try:\n    kloudless.application.get_token_from_code({app_id:?}, {key:?}, 'wrong-state', {redirect:?}, **params)\n    wrong = 'accepted'\n\
             except exceptions.OauthFlowFailed as e:\n    wrong = 'refused'\n\
             token = kloudless.application.get_token_from_code({app_id:?}, {key:?}, {state:?}, {redirect:?}, **params)\n\
             info = kloudless.application.verify_token({app_id:?}, token)\n\
             account = kloudless.Account(token=token)\n\
             listing = account.get('storage/folders/root/contents').json()\n\
             print(json.dumps({{'wrong_state': wrong, 'info': info, 'names': [o['name'] for o in listing['objects']]}}))",
            key = hub.creds.api_key,
        ),
    )
    .await;
    assert_eq!(done["wrong_state"], "refused", "{done}");
    assert_eq!(done["info"]["client_id"], app_id, "{done}");
    assert_eq!(done["names"], json!(["report.pdf"]), "{done}");
}

/// Fifty exchanges of one code at the same moment: at most one is answered with a token, and
/// none stays usable (a code presented twice revokes what it gave, RFC 6749 §4.1.2, however
/// the presentations interleave).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_exchanged_fifty_times_at_once_leaves_no_live_token() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, false, &[]).await;
    let (_s3, creds) = s3_setup().await;
    let code = code_for(&hub, &creds, &[]).await;
    let answers =
        futures::future::join_all((0..50).map(|_| exchange(&hub, &code, REDIRECT, &[]))).await;
    let granted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, g)| g)
        .collect();
    assert!(granted.len() <= 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, e)| *s == 200 || e["error_code"] == "invalid_grant"),
        "{answers:?}"
    );
    for g in granted {
        let token = g["access_token"].as_str().expect("token");
        let (s, _) = with_bearer(&hub, "/v1/oauth/token", token).await;
        assert_eq!(
            s, 401,
            "a token from a code presented fifty times still works"
        );
    }
}

/// The interleaving the test above may or may not hit, forced: a second presentation that
/// comes after the first took the code but before it recorded its token. The first exchange
/// must then give nothing (there is no token yet for the second to revoke).
#[tokio::test]
async fn a_code_presented_again_during_its_exchange_gives_nothing() {
    let hub = TestHub::start().await.expect("hub");
    register(&hub, false, &[]).await;
    let (_s3, creds) = s3_setup().await;
    let code = code_for(&hub, &creds, &[]).await;
    let hash = Sha256::digest(code.as_bytes()).to_vec();
    let now = hub::state::now_ms();
    let first = match hub.state.db.take_code(&hash, now).await.expect("take") {
        hub::db::Taken::Fresh(c) => c,
        _ => panic!("the code was not fresh"),
    };
    let token = hub
        .state
        .db
        .create_scoped_token(first.account_id, &[7u8; 32], &first.scope, now)
        .await
        .expect("token");
    // The second presenter: finds no token yet.
    assert!(matches!(
        hub.state.db.take_code(&hash, now).await.expect("take"),
        hub::db::Taken::Reused(None)
    ));
    assert!(
        !hub.state
            .db
            .set_code_token(first.id, token)
            .await
            .expect("set"),
        "the first exchange recorded its token after the code was presented again"
    );
}

/// A hub whose connect page offers Dropbox, Google Drive and OneDrive through `provider`.
async fn provider_hub(provider: &FakeProvider) -> TestHub {
    let hub = TestHub::start_with(e2e::HubOptions {
        yaml: Some(provider.hub_yaml()),
        ..Default::default()
    })
    .await
    .expect("hub");
    register(&hub, false, &[]).await;
    hub
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The cookie a response sets, as `name=value`, with its attributes.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            (pair.to_owned(), attrs.to_owned())
        })
}

/// The provider leg for `service` up to the callback: the connect page and its button, the
/// provider's sign-in. Returns the callback URL the provider sent the browser to and the
/// binding cookie.
async fn to_callback(
    hub: &TestHub,
    provider: &FakeProvider,
    service: &str,
    fields: &[(&str, &str)],
) -> (String, String) {
    let page = get_page(&authorize_url(hub, &[("scope", service)])).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.html.contains("Continue to "), "{}", page.html);
    assert!(
        page.csp.contains(provider.base()),
        "the form may land on the provider: {}",
        page.csp
    );
    let r = submit(hub, &page, fields, None).await;
    assert_eq!(r.status(), 303, "{}", location(&r));
    let to = location(&r);
    assert!(
        to.starts_with(&format!("{}/authorize?", provider.base())),
        "{to}"
    );
    let (bind, attrs) = set_cookie(&r, "sy_oauth_cb").expect("the binding cookie");
    for a in ["HttpOnly", "SameSite=Lax", "Path=/v1/oauth/callback"] {
        assert!(attrs.contains(a), "{attrs}");
    }
    let r = client().get(&to).send().await.expect("sign-in");
    assert_eq!(r.status(), 303);
    let back = location(&r);
    assert!(back.starts_with(&hub.url("/v1/oauth/callback?")), "{back}");
    (back, bind)
}

/// Dropbox, Google Drive and OneDrive are connected through their own sign-in: the page's
/// button goes to the provider with PKCE and the scopes a refresh token needs; the callback
/// exchanges the code (client secret and verifier in the form), checks the token by asking who
/// it belongs to, names the account after the answer, and the application gets its code as
/// with any form. The stored tokens are the provider's: the pass-through API sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropbox_google_drive_and_onedrive_sign_in_at_the_provider() {
    let provider = FakeProvider::start().await.expect("provider");
    let hub = provider_hub(&provider).await;
    let page = get_page(&authorize_url(&hub, &[("scope", "all")])).await;
    for s in ["dropbox", "gdrive", "onedrive", "s3"] {
        assert!(
            page.html.contains(&format!("data-service=\"{s}\"")),
            "{s} is offered: {}",
            page.html
        );
    }
    for (service, name) in [
        ("dropbox", Some("Ada's Dropbox")),
        ("gdrive", None),
        ("onedrive", None),
    ] {
        let fields: Vec<(&str, &str)> = name.iter().map(|n| ("account", *n)).collect();
        let (back, bind) = to_callback(&hub, &provider, service, &fields).await;
        let r = client()
            .get(&back)
            .header("Cookie", &bind)
            .send()
            .await
            .expect("callback");
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
        let (cleared, _) = set_cookie(&r, "sy_oauth_cb").expect("the cookie is cleared");
        assert_eq!(cleared, "sy_oauth_cb=");
        let to = location(&r);
        assert!(to.starts_with(REDIRECT), "{to}");
        let ps = params_of(&to, false);
        assert_eq!(param(&ps, "state").as_deref(), Some("st-123"), "{to}");
        let code = param(&ps, "code").unwrap_or_else(|| panic!("no code: {to}"));
        let (s, grant) = exchange(&hub, &code, REDIRECT, &[]).await;
        assert_eq!(s, 200, "{grant}");
        let acc = grant["account_id"].as_i64().expect("account");

        let r = hub
            .req(Method::GET, &hub.url(&format!("/v1/accounts/{acc}")))
            .send()
            .await
            .expect("account");
        let view: Value = r.json().await.expect("json");
        assert_eq!(view["service"], service, "{view}");
        assert_eq!(
            view["account"],
            name.unwrap_or(e2e::oauth_provider::EMAIL),
            "{view}"
        );

        let authorize = provider.authorizes().pop().expect("an authorize request");
        let q = |k: &str| authorize.get(k).cloned().unwrap_or_default();
        assert_eq!(q("client_id"), e2e::oauth_provider::CLIENT_ID);
        assert_eq!(q("redirect_uri"), hub.url("/v1/oauth/callback"));
        assert_eq!(q("code_challenge_method"), "S256");
        match service {
            "dropbox" => assert_eq!(q("token_access_type"), "offline"),
            "gdrive" => {
                assert_eq!(q("access_type"), "offline");
                assert!(q("scope").contains("auth/drive"), "{authorize:?}");
            }
            _ => assert!(q("scope").contains("offline_access"), "{authorize:?}"),
        }
        // The code's exchange (secret and verifier), then a refresh: the account keeps the
        // refresh token, and the check asks with a fresh access token.
        let forms = provider.token_forms();
        let grants: Vec<&str> = forms
            .iter()
            .rev()
            .take(2)
            .map(|f| f["grant_type"].as_str())
            .collect();
        assert_eq!(grants, ["refresh_token", "authorization_code"], "{forms:?}");
        let form = &forms[forms.len() - 2];
        assert_eq!(form["client_secret"], e2e::oauth_provider::CLIENT_SECRET);
        assert!(form["code_verifier"].len() >= 43, "{form:?}");
    }

    // The stored access token is the provider's: the pass-through sends it.
    let (_, grant_acc) = {
        let (back, bind) = to_callback(&hub, &provider, "dropbox", &[]).await;
        let r = client()
            .get(&back)
            .header("Cookie", &bind)
            .send()
            .await
            .expect("callback");
        let code = param(&params_of(&location(&r), false), "code").expect("code");
        let (_, grant) = exchange(&hub, &code, REDIRECT, &[]).await;
        (
            grant.clone(),
            grant["account_id"].as_i64().expect("account"),
        )
    };
    let r = hub
        .req(
            Method::POST,
            &hub.url(&format!("/v1/accounts/{grant_acc}/raw")),
        )
        .header("X-Kloudless-Raw-URI", "/users/get_current_account")
        .header("X-Kloudless-Raw-Method", "POST")
        .send()
        .await
        .expect("raw");
    let status = r.status();
    let me: Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], e2e::oauth_provider::EMAIL);
}

/// Callbacks the hub did not send the browser to: a tampered state, a state without the
/// browser's cookie or with another browser's, one used already — an error page each, never a
/// redirect and never a token request. A refusal at the provider and a token endpoint that
/// refuses go back to the application as errors, with nothing connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_provider_callbacks_are_refused() {
    let provider = FakeProvider::start().await.expect("provider");
    let hub = provider_hub(&provider).await;
    let accounts = || async {
        let r = hub
            .req(Method::GET, &hub.url("/v1/accounts"))
            .send()
            .await
            .expect("accounts");
        r.json::<Value>().await.expect("json")["count"]
            .as_i64()
            .unwrap_or(-1)
    };
    let before = accounts().await;
    let (back, bind) = to_callback(&hub, &provider, "dropbox", &[]).await;
    let (_, other_bind) = to_callback(&hub, &provider, "dropbox", &[]).await;
    let tokens_before = provider.token_forms().len();
    let state = url::Url::parse(&back)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let mut tampered = state.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let with_state = |s: &str| {
        let mut u = url::Url::parse(&back).expect("url");
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "state" {
                    s.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        u.to_string()
    };
    for (what, url, cookie) in [
        ("tampered", with_state(&tampered), Some(bind.as_str())),
        ("no cookie", back.clone(), None),
        (
            "another browser's cookie",
            back.clone(),
            Some(other_bind.as_str()),
        ),
        (
            "no state",
            hub.url("/v1/oauth/callback?code=x"),
            Some(bind.as_str()),
        ),
    ] {
        let mut rb = client().get(&url);
        if let Some(c) = cookie {
            rb = rb.header("Cookie", c);
        }
        let r = rb.send().await.expect("callback");
        assert_eq!(r.status(), 400, "{what}");
        assert!(r.headers().get(LOCATION).is_none(), "{what}");
        let html = r.text().await.expect("html");
        assert!(html.contains("Please start again"), "{what}: {html}");
    }
    assert_eq!(
        provider.token_forms().len(),
        tokens_before,
        "no code was exchanged"
    );
    // The real one still works once; the provider's code is spent after that.
    let r = client()
        .get(&back)
        .header("Cookie", &bind)
        .send()
        .await
        .expect("callback");
    assert!(location(&r).contains("code="), "{}", location(&r));
    let r = client()
        .get(&back)
        .header("Cookie", &bind)
        .send()
        .await
        .expect("callback again");
    let to = location(&r);
    assert!(to.starts_with(REDIRECT), "{to}");
    assert_eq!(
        param(&params_of(&to, false), "error").as_deref(),
        Some("server_error"),
        "{to}"
    );
    assert_eq!(accounts().await, before + 1);

    // The user refuses at the provider.
    provider.deny(true);
    let (back, bind) = to_callback(&hub, &provider, "gdrive", &[]).await;
    let r = client()
        .get(&back)
        .header("Cookie", &bind)
        .send()
        .await
        .expect("callback");
    let ps = params_of(&location(&r), false);
    assert_eq!(param(&ps, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&ps, "state").as_deref(), Some("st-123"));
    provider.deny(false);

    // The token endpoint refuses.
    provider.refuse_tokens(true);
    let (back, bind) = to_callback(&hub, &provider, "onedrive", &[]).await;
    let r = client()
        .get(&back)
        .header("Cookie", &bind)
        .send()
        .await
        .expect("callback");
    let ps = params_of(&location(&r), false);
    assert_eq!(param(&ps, "error").as_deref(), Some("server_error"));
    provider.refuse_tokens(false);
    assert_eq!(accounts().await, before + 1, "nothing more was connected");
}

/// `POST /v1/accounts` checks a Dropbox, Google Drive or OneDrive token by asking the provider
/// who it belongs to: a token it issued connects (named after the answer when no name is
/// given); a token it does not know is refused with a clear error and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_services_are_checked_by_asking_who_the_token_is() {
    let provider = FakeProvider::start().await.expect("provider");
    let hub = provider_hub(&provider).await;
    for service in ["dropbox", "gdrive", "onedrive"] {
        let token = provider.issue_access_token();
        let r = hub
            .req(Method::POST, &hub.url("/v1/accounts"))
            .json(&json!({"service": service, "credentials": {"access_token": token}}))
            .send()
            .await
            .expect("connect");
        assert_eq!(r.status(), 201, "{service}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["account"], e2e::oauth_provider::EMAIL, "{v}");
        assert_eq!(provider.bearers().last(), Some(&token));

        let r = hub
            .req(Method::POST, &hub.url("/v1/accounts"))
            .json(&json!({"service": service, "account": "x",
                          "credentials": {"access_token": "not-a-token"}}))
            .send()
            .await
            .expect("connect");
        assert_eq!(r.status(), 400, "{service}");
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["error_code"], "invalid_credentials", "{e}");
        assert!(!e.to_string().contains("not-a-token"), "{e}");
    }
    // A name is still required of the other services.
    let r = hub
        .req(Method::POST, &hub.url("/v1/accounts"))
        .json(&json!({"service": "fs", "credentials": {"root": "x"}}))
        .send()
        .await
        .expect("connect");
    assert_eq!(r.status(), 400);
}

/// The Dropbox sign-in in Chromium: the chooser, the button, the provider, back to the
/// application with a code — the page's `form-action` lets the submission's redirect reach the
/// provider (a browser enforces it on redirects), and nothing is reported to the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_at_dropbox() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let provider = FakeProvider::start().await.expect("provider");
    let hub = TestHub::start_with(e2e::HubOptions {
        yaml: Some(provider.hub_yaml()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let (redirect, _) = app_receiver(&hub).await;
    let start = format!(
        "{}/v1/oauth?client_id={}&response_type=code&redirect_uri={}&state=br-1",
        hub.base_url,
        hub.creds.application_id,
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );
    let shots = tempfile::tempdir().expect("tmp");
    let run = e2e::browser::run(json!({
        "screenshots": shots.path(),
        "steps": [
            {"goto": start},
            {"click": "a[data-service=dropbox]"},
            {"screenshot": "oauth-dropbox"},
            {"axe": "oauth-dropbox"},
            {"submit": "#connect"},
            {"wait_url_prefix": redirect, "timeout_ms": 20000},
        ]
    }))
    .await
    .expect("browser");
    e2e::browser::ensure_ok(&run).expect("the flow");
    assert_eq!(run["csp_violations"], json!([]), "{run:#}");
    assert_eq!(run["console_errors"], json!([]), "{run:#}");
    let url = run["url"].as_str().expect("url");
    let ps = params_of(url, false);
    assert_eq!(param(&ps, "state").as_deref(), Some("br-1"), "{url}");
    let code = param(&ps, "code").unwrap_or_else(|| panic!("no code: {url}"));
    let (s, grant) = exchange(&hub, &code, &redirect, &[]).await;
    assert_eq!(s, 200, "{grant}");
}
