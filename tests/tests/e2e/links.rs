//! Sharing links: direct, page, password (wrong, then limited), expiry, deactivation, deletion,
//! another application's key, and a URL that cannot be guessed from the link's id; and the
//! pages people see, in Chromium (axe-core, screenshots).

use e2e::{pattern, sha256_hex, TestHub};
use reqwest::Method;
use serde_json::{json, Value};

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

async fn create(hub: &TestHub, body: Value) -> (u16, Value) {
    let r = hub
        .req(Method::POST, &hub.acc("/storage/links/"))
        .json(&body)
        .send()
        .await
        .expect("create");
    let s = r.status().as_u16();
    (s, json_of(r).await)
}

/// The password form's body.
fn password_form(p: &str) -> String {
    format!(
        "password={}",
        percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// A client without credentials that does not follow redirects.
fn anonymous() -> reqwest::Client {
    e2e::no_redirect_client()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_serve_files_without_keys() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    let data = pattern(300_000, 9);
    let f = hub
        .upload(acc, "root", "report <1>.pdf", data.clone())
        .await
        .expect("upload");
    let file_id = f["id"].as_str().expect("id");
    let web = anonymous();

    // Direct: the bytes at the URL.
    let (s, direct) = create(&hub, json!({"file_id": file_id, "direct": true})).await;
    assert_eq!(s, 201, "{direct}");
    assert_eq!(direct["password"], false);
    assert_eq!(direct["active"], true);
    assert_eq!(direct["file_id"], file_id);
    assert!(direct.get("type").is_none(), "{direct}");
    let url = direct["url"].as_str().expect("url").to_owned();
    let r = web.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        sha256_hex(&r.bytes().await.expect("bytes")),
        sha256_hex(&data)
    );

    // The URL is not the id: another tag for the same id, or the id alone, is 404.
    let id = direct["id"].as_i64().expect("id");
    for bad in [
        hub.url(&format!("/v1/links/{id}.AAAAAAAAAAAAAAAAAAAAAAAA")),
        hub.url(&format!("/v1/links/{id}")),
        hub.url(&format!(
            "/v1/links/{}.{}",
            id + 1,
            url.rsplit('.').next().expect("tag")
        )),
    ] {
        let r = web.get(&bad).send().await.expect("get");
        assert!(
            r.status() == 404 || r.status() == 400,
            "{bad}: {}",
            r.status()
        );
    }

    // A page: the name escaped, a download button that serves the file.
    let (_, page_link) = create(&hub, json!({"file_id": file_id})).await;
    let url = page_link["url"].as_str().expect("url").to_owned();
    let r = web.get(&url).send().await.expect("page");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    let html = r.text().await.expect("html");
    assert!(html.contains("report &lt;1&gt;.pdf"), "{html}");
    assert!(!html.contains("report <1>"), "{html}");
    let r = web
        .get(format!("{url}?download=1"))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("bytes").len(), data.len());

    // A password: the form, a wrong password (the form again, 403), the right one (the file).
    let (_, locked) = create(
        &hub,
        json!({"file_id": file_id, "password": "correct horse", "direct_link": true}),
    )
    .await;
    assert_eq!(locked["password"], true);
    assert!(!locked.to_string().contains("correct horse"));
    let url = locked["url"].as_str().expect("url").to_owned();
    let form = web
        .get(&url)
        .send()
        .await
        .expect("form")
        .text()
        .await
        .expect("html");
    assert!(form.contains("id=\"id_password\"") && form.contains("name=\"form-submit\""));
    let r = web
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(password_form("wrong"))
        .send()
        .await
        .expect("wrong");
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .expect("html")
        .contains("password entered is incorrect"));
    let r = web
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(password_form("correct horse"))
        .send()
        .await
        .expect("right");
    assert_eq!(r.status(), 200);
    assert_eq!(
        sha256_hex(&r.bytes().await.expect("bytes")),
        sha256_hex(&data)
    );
    // Guessing is limited: after 5 wrong passwords, even the right one waits (429).
    for _ in 0..5 {
        web.post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(password_form("guess"))
            .send()
            .await
            .expect("guess");
    }
    let r = web
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(password_form("correct horse"))
        .send()
        .await
        .expect("limited");
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ra")
        .parse()
        .expect("seconds");
    assert!((1..=900).contains(&after), "{after}");

    // A burst of concurrent guesses at a fresh link: at most 5 are ever checked.
    let (_, burst) = create(&hub, json!({"file_id": file_id, "password": "s3cret"})).await;
    let url = burst["url"].as_str().expect("url").to_owned();
    let answers = futures::future::join_all((0..30).map(|i| {
        let (web, url) = (web.clone(), url.clone());
        async move {
            web.post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(password_form(&format!("guess-{i}")))
                .send()
                .await
                .expect("guess")
                .status()
                .as_u16()
        }
    }))
    .await;
    let checked = answers.iter().filter(|s| **s == 403).count();
    let limited = answers.iter().filter(|s| **s == 429).count();
    assert!(checked <= 5, "{answers:?}");
    assert_eq!(checked + limited, 30, "{answers:?}");

    // Deactivated, expired, deleted: 404.
    let id = page_link["id"].as_i64().expect("id");
    let patched = json_of(
        hub.req(Method::PATCH, &hub.acc(&format!("/storage/links/{id}")))
            .json(&json!({"active": false, "account_id": acc, "link_id": id}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(patched["active"], false, "{patched}");
    let url = page_link["url"].as_str().expect("url");
    assert_eq!(web.get(url).send().await.expect("get").status(), 404);
    let (_, expired) = create(
        &hub,
        json!({"file_id": file_id, "direct": true, "expiration": "2020-10-12T00:00:00"}),
    )
    .await;
    assert_eq!(expired["expiration"], "2020-10-12T00:00:00Z", "{expired}");
    let r = web
        .get(expired["url"].as_str().expect("url"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    // Moving the expiration into the future (naive with microseconds, as Python sends it)
    // brings it back; `null` removes it.
    let id = expired["id"].as_i64().expect("id");
    let v = json_of(
        hub.req(Method::PATCH, &hub.acc(&format!("/storage/links/{id}")))
            .json(&json!({"expiration": "2999-08-11T12:00:00.123456"}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert!(v["expiration"]
        .as_str()
        .expect("exp")
        .starts_with("2999-08-11T12:00:00"));
    let r = web
        .get(expired["url"].as_str().expect("url"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let v = json_of(
        hub.req(Method::PATCH, &hub.acc(&format!("/storage/links/{id}")))
            .json(&json!({"expiration": null}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(v["expiration"], Value::Null);
    let r = hub
        .req(Method::DELETE, &hub.acc(&format!("/storage/links/{id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let r = web
        .get(expired["url"].as_str().expect("url"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);

    // Listing: paged, `active=True` filters.
    let all = json_of(
        hub.req(Method::GET, &hub.acc("/storage/links?page_size=1"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(all["count"], 1);
    assert_eq!(all["next_page"], 2);
    let active = json_of(
        hub.req(Method::GET, &hub.acc("/storage/links?active=True"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert!(active["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .all(|l| l["active"] == true));
    assert_eq!(active["count"], 3, "{active}");

    // Bad input.
    let (s, v) = create(&hub, json!({"file_id": "Fnotafile"})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = create(
        &hub,
        json!({"file_id": file_id, "expiration": "next tuesday"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
}

/// Another application's key sees none of the dev application's links and cannot make one
/// for its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_belong_to_their_application() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    let f = hub
        .upload(acc, "root", "mine.txt", b"mine".to_vec())
        .await
        .expect("upload");
    let (_, link) = create(&hub, json!({"file_id": f["id"]})).await;
    let id = link["id"].as_i64().expect("id");
    let other = format!("APIKey {}", hub.other_app_key("other").await.expect("key"));
    for (method, path, body) in [
        (
            Method::GET,
            format!("/v1/accounts/{acc}/storage/links/{id}"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/accounts/{acc}/storage/links"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/accounts/{acc}/storage/links/{id}"),
            Some(json!({"active": false})),
        ),
        (
            Method::DELETE,
            format!("/v1/accounts/{acc}/storage/links/{id}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/accounts/{acc}/storage/links"),
            Some(json!({"file_id": f["id"]})),
        ),
    ] {
        let mut rb = hub
            .http
            .request(method.clone(), hub.url(&path))
            .header("Authorization", &other);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("send");
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    // Still there and still active.
    let v = json_of(
        hub.req(Method::GET, &hub.acc(&format!("/storage/links/{id}")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(v["active"], true);
}

/// The pages a link shows people, in Chromium: the download page, the password form, the form
/// after a wrong password, the page once too many wrong passwords were tried, and the page of
/// an expired link and of one that never existed (pages, not JSON, for a browser; the API's
/// JSON for anyone else). axe-core finds no serious or critical violation on any of them, the
/// file's name (markup) shows as text, no script runs, and a screenshot of each is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_pages_are_accessible_in_chromium() {
    assert!(
        e2e::browser::available(),
        "Chromium and the browser driver are needed"
    );
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    let name = "plan <img src=x onerror=alert(1)>.pdf";
    let f = hub
        .upload(acc, "root", name, pattern(4_000, 3))
        .await
        .expect("upload");
    let file_id = f["id"].as_str().expect("id");
    let url_of = |v: &Value| v["url"].as_str().expect("url").to_owned();
    let (s, page_link) = create(&hub, json!({"file_id": file_id})).await;
    assert_eq!(s, 201, "{page_link}");
    let (s, locked) = create(&hub, json!({"file_id": file_id, "password": "open sesame"})).await;
    assert_eq!(s, 201, "{locked}");
    let (s, expired) = create(
        &hub,
        json!({"file_id": file_id, "expiration": "2020-10-12T00:00:00"}),
    )
    .await;
    assert_eq!(s, 201, "{expired}");
    let unknown = hub.url("/v1/links/987654321.AAAAAAAAAAAAAAAAAAAAAAAA");

    let wrong = [
        json!({"fill": {"#id_password": "not it"}}),
        json!({"submit": "form"}),
    ];
    let mut steps = vec![
        json!({"goto": url_of(&page_link)}),
        json!({"text": "p.file"}),
        json!({"axe": "link-download"}),
        json!({"screenshot": "link-download"}),
        json!({"goto": url_of(&locked)}),
        json!({"axe": "link-password"}),
        json!({"screenshot": "link-password"}),
    ];
    steps.extend(wrong.clone());
    steps.extend([
        json!({"text": "p.error"}),
        json!({"axe": "link-password-wrong"}),
        json!({"screenshot": "link-password-wrong"}),
    ]);
    // Five more: four checked and wrong, then the sixth attempt refused unchecked (429).
    for _ in 0..5 {
        steps.extend(wrong.clone());
    }
    steps.extend([
        json!({"text": "h1"}),
        json!({"axe": "link-locked"}),
        json!({"screenshot": "link-locked"}),
        json!({"goto": url_of(&expired)}),
        json!({"text": "main"}),
        json!({"axe": "link-expired"}),
        json!({"screenshot": "link-expired"}),
        json!({"goto": unknown}),
        json!({"axe": "link-not-found"}),
        json!({"screenshot": "link-not-found"}),
        json!({"expect_no_dialog": true}),
    ]);
    let shots = tempfile::tempdir().expect("tmp");
    let run = e2e::browser::run(json!({"screenshots": shots.path(), "steps": steps}))
        .await
        .expect("browser");
    assert_eq!(run["ok"], true, "{run}");
    let pages = [
        "link-download",
        "link-password",
        "link-password-wrong",
        "link-locked",
        "link-expired",
        "link-not-found",
    ];
    for page in pages {
        assert_eq!(run["axe"][page], json!([]), "{page}: {run}");
        assert!(
            shots.path().join(format!("{page}.png")).is_file(),
            "{page}: no screenshot"
        );
    }
    // What each navigation answered: the two pages, six password attempts (five checked and
    // wrong, the sixth refused), the expired link and the unknown one.
    let statuses: Vec<u64> = run["navigations"]
        .as_array()
        .expect("navigations")
        .iter()
        .filter_map(|n| n["status"].as_u64())
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 403, 403, 403, 403, 403, 429, 404, 404],
        "{run}"
    );
    assert_eq!(
        run["texts"]["p.file"],
        format!("{name} ({} bytes)", 4_000),
        "{run}"
    );
    assert_eq!(
        run["texts"]["p.error"], "The password entered is incorrect.",
        "{run}"
    );
    assert_eq!(run["texts"]["h1"], "Try again later", "{run}");
    assert!(
        run["texts"]["main"]
            .as_str()
            .unwrap_or("")
            .contains("This link does not work"),
        "{run}"
    );
    assert_eq!(run["dialogs"], json!([]), "{run}");
    assert_eq!(run["csp_violations"], json!([]), "{run}");
    assert_eq!(run["page_errors"], json!([]), "{run}");

    // Anyone but a browser still gets the API's JSON errors.
    let r = anonymous()
        .get(url_of(&expired))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    assert_eq!(json_of(r).await["error_code"], "not_found");
    let r = anonymous()
        .post(url_of(&locked))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(password_form("open sesame"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(json_of(r).await["error_code"], "too_many_requests");
    // A browser's 429 page keeps the `Retry-After`.
    let r = anonymous()
        .post(url_of(&locked))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(password_form("open sesame"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
}
