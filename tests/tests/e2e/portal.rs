//! The developer portal (`/ui/`) in a real Chromium: sign in with the meta token (the session
//! in an HttpOnly cookie, never readable by the page), create an application whose name is
//! markup (shown as text, nothing runs), create an API key (shown once, and it works against
//! the API), revoke it; axe-core finds no serious or critical violation on any page. Over
//! HTTP: signed-out pages send you to sign in, a wrong token is refused, and a change without
//! the session's CSRF token is refused.

use e2e::TestHub;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::{json, Value};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_manages_applications_and_keys_in_chromium() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let hub = TestHub::start().await.expect("hub");
    let shots = tempfile::tempdir().expect("tmp");
    let base = hub.base_url.clone();
    let run = e2e::browser::run(json!({
        "screenshots": shots.path(),
        "steps": [
            {"goto": format!("{base}/ui/")},
            {"wait_url_prefix": format!("{base}/ui/login")},
            {"axe": "login"},
            {"screenshot": "portal-login"},
            {"fill": {"#f-token": hub.creds.meta_token}},
            {"submit": "#login"},
            {"wait_url_prefix": format!("{base}/ui/apps")},
            {"eval": "document.cookie"},
            {"axe": "apps"},
            {"fill": {"#f-name": HOSTILE}},
            {"submit": "#new-app"},
            {"wait_url_prefix": format!("{base}/ui/apps/")},
            {"text": "#app-name"},
            {"axe": "app"},
            {"screenshot": "portal-app"},
            {"submit": "#new-key-form"},
            {"text": "#new-key"},
            {"screenshot": "portal-new-key"},
            {"click": "header.bar a"},
            {"click": "#apps tbody tr:last-child a"},
            {"eval": "document.getElementById('new-key') === null && document.querySelectorAll('#keys tbody tr').length"},
            {"submit": "#keys tbody tr form"},
            {"eval": "document.querySelectorAll('#keys tbody tr').length"},
            {"expect_no_dialog": true}
        ]
    }))
    .await
    .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    for page in ["login", "apps", "app"] {
        assert_eq!(run["axe"][page], json!([]), "{page}: {run}");
    }
    assert_eq!(run["dialogs"], json!([]), "{run}");
    assert_eq!(run["csp_violations"], json!([]), "{run}");
    assert_eq!(run["console_errors"], json!([]), "{run}");
    // The session cookie is HttpOnly: the page's script sees nothing.
    assert_eq!(run["evals"][0], "", "{run}");
    assert_eq!(run["texts"]["#app-name"], HOSTILE, "{run}");
    let key = run["texts"]["#new-key"]
        .as_str()
        .expect("the key")
        .to_owned();
    assert!(key.starts_with("sk_"), "{key}");
    // Shown once: the page reached again lists the key by its hint only.
    assert_eq!(run["evals"][1], 1, "{run}");
    assert_eq!(run["evals"][2], 0, "{run}");
    // Revoked: the key no longer opens the API.
    let r = client()
        .get(hub.url("/v1/accounts"))
        .header("Authorization", format!("APIKey {key}"))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 401);
    assert!(shots.path().join("portal-new-key.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_refuses_strangers_and_forged_forms() {
    let hub = TestHub::start().await.expect("hub");
    let c = client();
    for path in ["/ui/", "/ui/apps", "/ui/apps/1"] {
        let r = c.get(hub.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()[LOCATION], "/ui/login", "{path}");
    }
    let form = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).expect("form");
    let login = |token: &str| {
        c.post(hub.url("/ui/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token)]))
            .send()
    };
    assert_eq!(login("mt_wrong").await.expect("login").status(), 401);
    let r = login(&hub.creds.meta_token).await.expect("login");
    assert_eq!(r.status(), 303);
    let set = r.headers()[SET_COOKIE].to_str().expect("cookie").to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().expect("pair").to_owned();
    let page = c
        .get(hub.url("/ui/apps"))
        .header("Cookie", &cookie)
        .send()
        .await
        .expect("apps");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        !html.contains(&hub.creds.meta_token),
        "the page holds no token"
    );
    // A change without (or with another) CSRF token is refused, and nothing is created.
    for csrf in ["", "AAAA"] {
        let r = c
            .post(hub.url("/ui/apps"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(&[("name", "forged"), ("csrf", csrf)]))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 403);
    }
    let apps: Value = c
        .get(hub.url("/v1/meta/applications"))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(!apps.to_string().contains("forged"), "{apps}");
}
