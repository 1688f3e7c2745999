//! The pass-through API against real servers: S3 (moto: list, get, put and read tagging),
//! Azure Blob (Azurite, which checks the Shared Key signature) and WebDAV (PROPFIND); the
//! provider's errors come back as they are; a URI on another host, reserved headers, and
//! services without an HTTP API are refused. Dropbox, Google Drive and OneDrive against
//! providers replaying recorded answers ([`e2e::replay`]; no real one is reachable from here):
//! the account's bearer token on each request, refreshed once on a 401 and the request sent
//! again unless its body was streamed, shared with the delta detectors both ways; the token
//! never in an answer, nor sent to another host.
//!
//! OAuth accounts are written into the database directly: connecting one through the API
//! checks the credentials with the provider's own servers.

use super::detect::polled_after;
use e2e::replay::{Answer, Replay};
use e2e::servers::{AzuriteServer, S3Server, WebDavServer};
use e2e::{HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};

async fn connected(hub: &TestHub, service: &str, credentials: Value) -> i64 {
    hub.connect(service, credentials).await.expect("connect")["id"]
        .as_i64()
        .expect("id")
}

/// A raw request; returns the status, the content type and the body.
async fn raw(
    hub: &TestHub,
    acc: i64,
    method: &str,
    uri: &str,
    headers: Option<Value>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut rb = hub
        .req(Method::POST, &hub.url(&format!("/v1/accounts/{acc}/raw/")))
        .header("X-Kloudless-Raw-URI", uri)
        .header("X-Kloudless-Raw-Method", method);
    if let Some(h) = headers {
        rb = rb.header("X-Kloudless-Raw-Headers", h.to_string());
    }
    if let Some(b) = body {
        rb = rb.body(b.to_owned());
    }
    let r = rb.send().await.expect("raw");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_to_s3() {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("raw").await.expect("bucket");
    let hub = TestHub::start().await.expect("hub");
    let acc = connected(
        &hub,
        "s3",
        json!({"bucket": "raw", "endpoint": s3.endpoint(), "region": "us-east-1",
               "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}),
    )
    .await;
    hub.upload(acc, "root", "a b.txt", b"raw bytes".to_vec())
        .await
        .expect("upload");
    // `X-Kloudless-Raw-Data: true` adds S3's own view of the object; without it, nothing.
    let f = hub
        .upload(acc, "root", "meta.txt", b"meta".to_vec())
        .await
        .expect("upload");
    let url = hub.url(&format!(
        "/v1/accounts/{acc}/storage/files/{}",
        f["id"].as_str().expect("id")
    ));
    let with: Value = hub
        .req(Method::GET, &url)
        .header("X-Kloudless-Raw-Data", "true")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(with["raw"]["Key"], "meta.txt", "{with}");
    assert_eq!(with["raw"]["Size"], 4);
    assert!(with["raw"]["ETag"].is_string(), "{with}");
    let listing: Value = hub
        .req(
            Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}/storage/folders/root/contents")),
        )
        .header("X-Kloudless-Raw-Data", "True")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(listing["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .all(|o| o["raw"]["Key"].is_string()));
    let without: Value = hub
        .req(Method::GET, &url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(without.get("raw").is_none(), "{without}");

    let (s, _, body) = raw(&hub, acc, "get", "/?list-type=2", None, None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("<Key>a b.txt</Key>"), "{body}");
    let (s, _, body) = raw(&hub, acc, "GET", "/a%20b.txt", None, None).await;
    assert_eq!((s, body.as_str()), (200, "raw bytes"));
    let tagging =
        "<Tagging><TagSet><Tag><Key>team</Key><Value>blue</Value></Tag></TagSet></Tagging>";
    let (s, _, body) = raw(
        &hub,
        acc,
        "PUT",
        "/a%20b.txt?tagging",
        Some(json!({"Content-Type": "application/xml"})),
        Some(tagging),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = raw(&hub, acc, "GET", "/a%20b.txt?tagging", None, None).await;
    assert_eq!(s, 200);
    assert!(body.contains("<Value>blue</Value>"), "{body}");
    // The same origin, absolute, is fine; the provider's own 404 comes back as it is.
    let (s, ct, body) = raw(
        &hub,
        acc,
        "GET",
        &format!("{}/raw/missing.txt", s3.endpoint()),
        None,
        None,
    )
    .await;
    assert_eq!(s, 404, "{body}");
    assert!(!ct.starts_with("application/json"), "{ct}: {body}");
    assert!(body.contains("NoSuchKey"), "{body}");
    // Another host never gets the credentials; reserved headers are refused.
    for (uri, headers) in [
        ("http://127.0.0.2:9/raw/a.txt".to_owned(), None),
        ("https://evil.example/raw".to_owned(), None),
        ("a.txt".to_owned(), None),
        ("/a.txt".to_owned(), Some(json!({"Authorization": "x"}))),
        ("/a.txt".to_owned(), Some(json!({"Host": "evil.example"}))),
        ("/a.txt".to_owned(), Some(json!(["not", "an", "object"]))),
    ] {
        let (s, _, body) = raw(&hub, acc, "GET", &uri, headers, None).await;
        assert_eq!(s, 400, "{uri}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(v["error_code"], "invalid_parameters", "{v}");
    }
    // Another application's key does not reach the account.
    let r = hub
        .http
        .post(hub.url(&format!("/v1/accounts/{acc}/raw")))
        .header("Authorization", "APIKey nope")
        .header("X-Kloudless-Raw-URI", "/")
        .send()
        .await
        .expect("raw");
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_to_azure_are_signed_with_shared_key() {
    let az = AzuriteServer::start().await.expect("azurite");
    az.create_container("raw").await.expect("container");
    let hub = TestHub::start().await.expect("hub");
    let acc = connected(
        &hub,
        "azblob",
        json!({"container": "raw", "endpoint": az.endpoint(),
               "account_name": az.account_name(), "account_key": az.account_key()}),
    )
    .await;
    hub.upload(acc, "root", "blob.txt", b"azure bytes".to_vec())
        .await
        .expect("upload");
    let (s, _, body) = raw(&hub, acc, "GET", "?restype=container&comp=list", None, None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("<Name>blob.txt</Name>"), "{body}");
    let (s, _, body) = raw(&hub, acc, "GET", "/blob.txt", None, None).await;
    assert_eq!((s, body.as_str()), (200, "azure bytes"));
    let (s, _, body) = raw(
        &hub,
        acc,
        "PUT",
        "/blob.txt?comp=metadata",
        Some(json!({"x-ms-meta-team": "blue"})),
        Some(""),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_propfind_on_webdav_and_none_on_fs() {
    let dav = WebDavServer::start().await.expect("rclone webdav");
    let hub = TestHub::start().await.expect("hub");
    let acc = connected(
        &hub,
        "webdav",
        json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
    )
    .await;
    hub.upload(acc, "root", "dav.txt", b"dav".to_vec())
        .await
        .expect("upload");
    let (s, _, body) = raw(
        &hub,
        acc,
        "PROPFIND",
        "/",
        Some(json!({"Depth": "1"})),
        None,
    )
    .await;
    assert_eq!(s, 207, "{body}");
    assert!(body.contains("dav.txt"), "{body}");
    let (s, _, body) = raw(&hub, hub.creds.account_id, "GET", "/", None, None).await;
    assert_eq!(s, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error_code"], "raw_not_supported");
}

/// A hub whose Dropbox, Google Drive and OneDrive APIs are `api` (detectors on or off).
async fn oauth_hub(api: &Replay, detect: bool) -> TestHub {
    TestHub::start_with(HubOptions {
        yaml: Some(api.oauth_yaml(detect)),
        ..Default::default()
    })
    .await
    .expect("hub")
}

/// Stores an account of `service` with `creds` (the API would check them with the provider).
async fn oauth_account(hub: &TestHub, service: &str, creds: Value) -> i64 {
    hub.store_account(service, creds).await.expect("account")
}

/// What the hub answered to a raw request, whole.
#[derive(Debug)]
struct Answered {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Whether `secret` shows anywhere in the answer.
    fn shows(&self, secret: &str) -> bool {
        self.body.contains(secret)
            || self
                .headers
                .iter()
                .any(|(k, v)| k.contains(secret) || v.contains(secret))
    }
}

/// A raw request with an optional JSON body (`Content-Type: application/json`).
async fn raw_call(
    hub: &TestHub,
    acc: i64,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Answered {
    let mut rb = hub
        .req(Method::POST, &hub.url(&format!("/v1/accounts/{acc}/raw")))
        .header("X-Kloudless-Raw-URI", uri)
        .header("X-Kloudless-Raw-Method", method);
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().await.expect("raw");
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = r.text().await.expect("text");
    Answered {
        status,
        headers,
        body,
    }
}

fn token_answer(path: &str, token: &str) -> Answer {
    Answer::new(
        Method::POST,
        path,
        200,
        json!({"access_token": token, "token_type": "bearer", "expires_in": 3600}).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_to_oauth_services_carry_the_bearer_token() {
    let api = Replay::start().await.expect("replay");
    let hub = oauth_hub(&api, false).await;
    let (dbx_token, drive_token, graph_token) = (
        "sl.dbx-secret-7f3a",
        "ya29.drive-secret-91c2",
        "EwBgraph-secret-0d4e",
    );
    let dbx = oauth_account(&hub, "dropbox", json!({"access_token": dbx_token})).await;
    let drive = oauth_account(&hub, "gdrive", json!({"access_token": drive_token})).await;
    let graph = oauth_account(&hub, "onedrive", json!({"access_token": graph_token})).await;
    let metadata = json!({".tag": "file", "name": "a.txt", "id": "id:a", "rev": "r1"});
    let files = json!({"files": [{"id": "f1", "name": "a"}]});
    let root = json!({"id": "ROOT", "name": "root", "folder": {"childCount": 2}});
    let drive_info = json!({"id": "b!drive", "driveType": "personal"});
    api.script([
        Answer::new(
            Method::POST,
            "/2/files/get_metadata",
            200,
            metadata.to_string(),
        ),
        Answer::new(Method::GET, "/drive/v3/files", 200, files.to_string()),
        Answer::new(Method::GET, "/v1.0/me/drive/root", 200, root.to_string()),
        Answer::new(Method::GET, "/v1.0/me/drive", 200, drive_info.to_string()),
    ]);
    let mut answers = Vec::new();

    // Dropbox RPC: a POST with a JSON body, to the API base.
    let a = raw_call(
        &hub,
        dbx,
        "POST",
        "/files/get_metadata",
        Some(json!({"path": "/a.txt"})),
    )
    .await;
    assert_eq!((a.status, a.json()), (200, metadata), "{a:?}");
    answers.push(a);
    // Google Drive: a GET with its query string.
    let a = raw_call(
        &hub,
        drive,
        "GET",
        "/files?q=name%20%3D%20%27a%27&fields=files(id,name)",
        None,
    )
    .await;
    assert_eq!((a.status, a.json()), (200, files), "{a:?}");
    answers.push(a);
    // OneDrive: a GET, relative, then absolute on the API's own origin.
    let a = raw_call(&hub, graph, "GET", "/me/drive/root", None).await;
    assert_eq!((a.status, a.json()), (200, root), "{a:?}");
    answers.push(a);
    let a = raw_call(
        &hub,
        graph,
        "get",
        &format!("{}/v1.0/me/drive", api.base()),
        None,
    )
    .await;
    assert_eq!((a.status, a.json()), (200, drive_info), "{a:?}");
    answers.push(a);

    let got = api.got();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[0].path, "/2/files/get_metadata");
    assert_eq!(
        got[0].authorization,
        Some(format!("Bearer {dbx_token}")),
        "{got:#?}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&got[0].body).expect("json"),
        json!({"path": "/a.txt"})
    );
    assert_eq!(got[1].method, Method::GET);
    assert_eq!(got[1].authorization, Some(format!("Bearer {drive_token}")));
    assert_eq!(got[1].param("q").as_deref(), Some("name = 'a'"));
    assert_eq!(got[1].param("fields").as_deref(), Some("files(id,name)"));
    for g in &got[2..] {
        assert_eq!(g.authorization, Some(format!("Bearer {graph_token}")));
        assert!(g.body.is_empty());
    }

    // Another host never gets the token: refused before any request. Dropbox's content host
    // is allowed only beside Dropbox's own API (here the API is the replay server).
    for (acc, uri) in [
        (
            dbx,
            "https://content.dropboxapi.com/2/files/download".to_owned(),
        ),
        (
            dbx,
            "https://api.dropboxapi.com/2/files/get_metadata".to_owned(),
        ),
        (
            graph,
            "https://graph.microsoft.com/v1.0/me/drive".to_owned(),
        ),
        (drive, "http://127.0.0.2:9/drive/v3/files".to_owned()),
        (
            drive,
            format!(
                "{}/drive/v3/files",
                api.base().replace("127.0.0.1", "localhost")
            ),
        ),
        (drive, "files".to_owned()),
    ] {
        let a = raw_call(&hub, acc, "GET", &uri, None).await;
        assert_eq!(a.status, 400, "{uri}: {a:?}");
        assert_eq!(a.json()["error_code"], "invalid_parameters", "{uri}: {a:?}");
        answers.push(a);
    }
    assert_eq!(api.got().len(), 4, "no request to another host");

    // An account with neither an access token nor a way to get one.
    let bare = oauth_account(&hub, "onedrive", json!({"refresh_token": "rt-only"})).await;
    let a = raw_call(&hub, bare, "GET", "/me/drive", None).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.json()["error_code"], "invalid_credentials", "{a:?}");
    answers.push(a);

    for a in &answers {
        for secret in [dbx_token, drive_token, graph_token, "rt-only"] {
            assert!(!a.shows(secret), "{secret} in {a:?}");
        }
    }
    assert_eq!(api.pending(), 0);
    assert_eq!(api.got().len(), 4, "{:#?}", api.got());
    assert!(api.unscripted().is_empty(), "{:#?}", api.unscripted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_oauth_token_refreshed_once_on_401() {
    let api = Replay::start().await.expect("replay");
    let hub = oauth_hub(&api, false).await;
    // An account with a refresh token holds no access token (the connectors take one or
    // the other): its first request gets one.
    let secret = "client-secret-5be1";
    let drive = oauth_account(
        &hub,
        "gdrive",
        json!({"refresh_token": "refresh-token-1", "client_id": "cid", "client_secret": secret}),
    )
    .await;
    let expired = json!({"error": {"code": 401,
        "message": "Request had invalid authentication credentials."}})
    .to_string();
    let about = json!({"user": {"displayName": "Ann"}});
    let grant = format!(
        "grant_type=refresh_token&refresh_token=refresh-token-1&client_id=cid&client_secret={secret}"
    );
    let mut answers = Vec::new();

    api.script([
        token_answer("/token", "drive-token-1"),
        Answer::new(Method::GET, "/drive/v3/about", 200, about.to_string()),
    ]);
    let a = raw_call(&hub, drive, "GET", "/about?fields=user", None).await;
    assert_eq!((a.status, a.json()), (200, about.clone()), "{a:?}");
    answers.push(a);
    let got = api.got();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        (
            got[0].method.clone(),
            got[0].path.as_str(),
            got[0].body.as_str()
        ),
        (Method::POST, "/token", grant.as_str())
    );
    assert_eq!(got[0].authorization, None);
    assert_eq!(
        got[1].authorization.as_deref(),
        Some("Bearer drive-token-1")
    );
    assert_eq!(got[1].param("fields").as_deref(), Some("user"));

    // The token expired: a GET answered 401 gets one refresh and is sent again with the new
    // token, which the next requests keep.
    api.script([
        Answer::new(Method::GET, "/drive/v3/about", 401, expired.clone()),
        token_answer("/token", "drive-token-2"),
        Answer::new(Method::GET, "/drive/v3/about", 200, about.to_string()),
        Answer::new(Method::GET, "/drive/v3/files/f1", 200, r#"{"id": "f1"}"#),
    ]);
    let a = raw_call(&hub, drive, "GET", "/about?fields=user", None).await;
    assert_eq!((a.status, a.json()), (200, about.clone()), "{a:?}");
    answers.push(a);
    let a = raw_call(&hub, drive, "GET", "/files/f1", None).await;
    assert_eq!(a.status, 200, "{a:?}");
    answers.push(a);
    let got = api.got();
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(
        got[2].authorization.as_deref(),
        Some("Bearer drive-token-1")
    );
    assert_eq!(
        (got[3].path.as_str(), got[3].body.as_str()),
        ("/token", grant.as_str())
    );
    assert_eq!(
        got[4].authorization.as_deref(),
        Some("Bearer drive-token-2")
    );
    assert_eq!(got[4].param("fields").as_deref(), Some("user"));
    assert_eq!(
        got[5].authorization.as_deref(),
        Some("Bearer drive-token-2")
    );

    // A POST whose body was streamed cannot be sent again: the provider's 401 comes back
    // as it is, after one request and no refresh.
    api.script([Answer::new(
        Method::POST,
        "/drive/v3/files",
        401,
        expired.clone(),
    )]);
    let a = raw_call(&hub, drive, "POST", "/files", Some(json!({"name": "x"}))).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (401, expired.as_str()),
        "{a:?}"
    );
    answers.push(a);
    let got = api.got();
    assert_eq!(got.len(), 7, "{got:#?}");
    assert_eq!(got[6].body, r#"{"name":"x"}"#);
    assert_eq!(
        got[6].authorization.as_deref(),
        Some("Bearer drive-token-2")
    );

    // Still 401 with the refreshed token: that answer comes back, with no second refresh.
    api.script([
        Answer::new(Method::DELETE, "/drive/v3/files/f1", 401, expired.clone()),
        token_answer("/token", "drive-token-3"),
        Answer::new(Method::DELETE, "/drive/v3/files/f1", 401, expired.clone()),
    ]);
    let a = raw_call(&hub, drive, "DELETE", "/files/f1", None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (401, expired.as_str()),
        "{a:?}"
    );
    answers.push(a);
    let got = api.got();
    assert_eq!(got.len(), 10, "{got:#?}");
    assert_eq!(
        got[9].authorization.as_deref(),
        Some("Bearer drive-token-3")
    );

    // Dropbox RPC without arguments: a POST with an empty body can be sent again.
    let dbx = oauth_account(
        &hub,
        "dropbox",
        json!({"refresh_token": "refresh-dbx", "client_id": "app-key", "client_secret": secret}),
    )
    .await;
    let account = json!({"account_id": "dbid:1", "email": "ann@example.com"});
    let current = "/2/users/get_current_account";
    api.script([
        token_answer("/oauth2/token", "sl.dbx-token-1"),
        Answer::new(Method::POST, current, 200, account.to_string()),
        Answer::new(
            Method::POST,
            current,
            401,
            r#"{"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}"#,
        ),
        token_answer("/oauth2/token", "sl.dbx-token-2"),
        Answer::new(Method::POST, current, 200, account.to_string()),
    ]);
    for _ in 0..2 {
        let a = raw_call(&hub, dbx, "POST", "/users/get_current_account", None).await;
        assert_eq!((a.status, a.json()), (200, account.clone()), "{a:?}");
        answers.push(a);
    }
    let got = api.got();
    assert_eq!(got.len(), 15, "{got:#?}");
    assert_eq!(
        got[10].body,
        format!(
            "grant_type=refresh_token&refresh_token=refresh-dbx&client_id=app-key&client_secret={secret}"
        )
    );
    assert_eq!(
        got[12].authorization.as_deref(),
        Some("Bearer sl.dbx-token-1")
    );
    assert_eq!(got[13].body, got[10].body);
    assert_eq!(
        got[14].authorization.as_deref(),
        Some("Bearer sl.dbx-token-2")
    );
    assert!(got[14].body.is_empty());

    // The token endpoint refuses (and quotes the secret): an error of our own that does not.
    let graph = oauth_account(
        &hub,
        "onedrive",
        json!({"refresh_token": "refresh-graph", "client_id": "cid", "client_secret": secret}),
    )
    .await;
    api.script([Answer::new(
        Method::POST,
        "/oauth2/v2.0/token",
        400,
        json!({"error": "invalid_grant",
            "error_description": format!("refresh-graph / {secret} expired")})
        .to_string(),
    )]);
    let a = raw_call(&hub, graph, "GET", "/me/drive", None).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(a.json()["error_code"], "invalid_credentials", "{a:?}");
    answers.push(a);
    assert_eq!(api.got().len(), 16, "no request without a token");

    for a in &answers {
        for s in [
            "refresh-token-1",
            "drive-token-1",
            "drive-token-2",
            "drive-token-3",
            "refresh-dbx",
            "sl.dbx-token-1",
            "sl.dbx-token-2",
            "refresh-graph",
            secret,
        ] {
            assert!(!a.shows(s), "{s} in {a:?}");
        }
    }
    assert_eq!(api.pending(), 0);
    assert!(api.unscripted().is_empty(), "{:#?}", api.unscripted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_the_delta_detector_share_the_refreshed_token() {
    const CONTINUE: &str = "/2/files/list_folder/continue";
    let api = Replay::start().await.expect("replay");
    let hub = oauth_hub(&api, true).await;
    let page = |cursor: &str| json!({"entries": [], "cursor": cursor, "has_more": false});
    // The detector's first poll gets a token from the refresh token, then lists the root.
    api.script([
        token_answer("/oauth2/token", "detector-token-1"),
        Answer::new(
            Method::POST,
            "/2/files/list_folder",
            200,
            page("c1").to_string(),
        ),
    ]);
    api.idle([Answer::new(
        Method::POST,
        CONTINUE,
        200,
        page("c1").to_string(),
    )]);
    let acc = oauth_account(
        &hub,
        "dropbox",
        json!({"refresh_token": "rt", "client_id": "cid", "client_secret": "cs"}),
    )
    .await;
    polled_after(&hub, acc, 0).await;

    // The pass-through sends the detector's token, without a refresh of its own.
    let metadata = json!({".tag": "folder", "name": "Apps", "id": "id:apps"});
    api.script([Answer::new(
        Method::POST,
        "/2/files/get_metadata",
        200,
        metadata.to_string(),
    )]);
    let a = raw_call(
        &hub,
        acc,
        "POST",
        "/files/get_metadata",
        Some(json!({"path": "/Apps"})),
    )
    .await;
    assert_eq!((a.status, a.json()), (200, metadata), "{a:?}");
    let scripted = |path: &str| -> Vec<_> {
        api.got()
            .into_iter()
            .filter(|g| g.scripted && g.path == path)
            .collect()
    };
    let call = scripted("/2/files/get_metadata");
    assert_eq!(
        call[0].authorization.as_deref(),
        Some("Bearer detector-token-1")
    );
    assert_eq!(scripted("/oauth2/token").len(), 1, "one refresh so far");

    // The pass-through refreshes after a 401; the detector's next polls send that token.
    api.script([
        Answer::new(
            Method::POST,
            "/2/users/get_current_account",
            401,
            r#"{"error_summary": "expired_access_token/"}"#,
        ),
        token_answer("/oauth2/token", "raw-token-2"),
        Answer::new(
            Method::POST,
            "/2/users/get_current_account",
            200,
            json!({"account_id": "dbid:1"}).to_string(),
        ),
    ]);
    let a = raw_call(&hub, acc, "POST", "/users/get_current_account", None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        !a.shows("raw-token-2") && !a.shows("detector-token-1"),
        "{a:?}"
    );
    let calls = scripted("/2/users/get_current_account");
    assert_eq!(
        calls[1].authorization.as_deref(),
        Some("Bearer raw-token-2")
    );
    // A poll under way meanwhile may still have sent the old token: the second one after
    // this point started after the refresh.
    let t = polled_after(&hub, acc, hub::state::now_ms()).await;
    polled_after(&hub, acc, t).await;
    let last = api
        .got()
        .into_iter()
        .rev()
        .find(|g| g.path == CONTINUE)
        .expect("a poll");
    assert_eq!(last.authorization.as_deref(), Some("Bearer raw-token-2"));
    assert_eq!(scripted("/oauth2/token").len(), 2, "no other refresh");
    assert_eq!(api.pending(), 0);
    assert!(api.unscripted().is_empty(), "{:#?}", api.unscripted());
}
