//! The REST API against an in-process hub on loopback (SQLite, `fs` account).

use e2e::{pattern, sha256_hex, HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json body")
}

fn assert_error_shape(v: &Value, code: &str) {
    assert_eq!(v["error_code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["id"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn upload_list_download_roundtrip() {
    let hub = TestHub::start().await.expect("hub");
    let data = pattern(300_000, 1);
    let f = hub
        .upload(hub.creds.account_id, "root", "data.bin", data.clone())
        .await
        .expect("upload");
    assert_eq!(f["type"], "file");
    assert_eq!(f["size"], 300_000);
    assert_eq!(f["parent"]["id"], "root");
    assert_eq!(f["path"], "/data.bin");
    let id = f["id"].as_str().expect("id");

    let meta = hub
        .req(Method::GET, &hub.acc(&format!("/storage/files/{id}")))
        .send()
        .await
        .expect("get");
    assert_eq!(meta.status(), 200);
    assert!(meta.headers().contains_key("x-request-id"));
    assert_eq!(json_of(meta).await["id"], id);

    let list = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["type"], "object_list");
    assert_eq!(list["count"], 1);
    assert_eq!(list["objects"][0]["name"], "data.bin");
    assert_eq!(list["next_page"], Value::Null);

    let dl = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{id}/contents")),
        )
        .send()
        .await
        .expect("download");
    assert_eq!(dl.status(), 200);
    let etag = dl.headers()["etag"].to_str().expect("etag").to_owned();
    let body = dl.bytes().await.expect("body");
    assert_eq!(sha256_hex(&body), sha256_hex(&data));

    let part = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{id}/contents")),
        )
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 1000-1999/300000");
    assert_eq!(&part.bytes().await.expect("body")[..], &data[1000..2000]);

    let suffix = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{id}/contents")),
        )
        .header("Range", "bytes=-10")
        .send()
        .await
        .expect("suffix");
    assert_eq!(suffix.status(), 206);
    assert_eq!(
        &suffix.bytes().await.expect("body")[..],
        &data[data.len() - 10..]
    );

    let bad = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{id}/contents")),
        )
        .header("Range", "bytes=400000-")
        .send()
        .await
        .expect("416");
    assert_eq!(bad.status(), 416);
    assert_eq!(bad.headers()["content-range"], "bytes */300000");

    let cached = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{id}/contents")),
        )
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("304");
    assert_eq!(cached.status(), 304);
    hub.stop().await.expect("stop");
}

#[tokio::test]
async fn overwrite_false_renames_and_put_replaces() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    let a = hub
        .upload(acc, "root", "report.txt", b"one".to_vec())
        .await
        .expect("first");
    let b = hub
        .upload(acc, "root", "report.txt", b"two".to_vec())
        .await
        .expect("second");
    assert_eq!(b["name"], "report (1).txt");
    let c = hub
        .upload(acc, "root", "report.txt", b"three".to_vec())
        .await
        .expect("third");
    assert_eq!(c["name"], "report (2).txt");

    let r = hub
        .req(Method::POST, &hub.acc("/storage/files?overwrite=true"))
        .header(
            "X-Kloudless-Metadata",
            r#"{"name":"report.txt","parent_id":"root"}"#,
        )
        .body("replaced")
        .send()
        .await
        .expect("overwrite");
    assert_eq!(r.status(), 201);
    assert_eq!(json_of(r).await["id"], a["id"]);

    let id = a["id"].as_str().expect("id");
    let put = hub
        .req(Method::PUT, &hub.acc(&format!("/storage/files/{id}")))
        .body("new content!")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    assert_eq!(json_of(put).await["size"], 12);
    let body = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{id}/contents")),
        )
        .send()
        .await
        .expect("dl")
        .text()
        .await
        .expect("text");
    assert_eq!(body, "new content!");
}

#[tokio::test]
async fn folders_move_copy_delete_search_recent() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    let mk = |parent: String, name: &'static str| {
        let hub = &hub;
        async move {
            let r = hub
                .req(Method::POST, &hub.acc("/storage/folders"))
                .json(&json!({"parent_id": parent, "name": name}))
                .send()
                .await
                .expect("mkdir");
            (r.status(), json_of(r).await)
        }
    };
    let (s, docs) = mk("root".into(), "docs").await;
    assert_eq!(s, 201);
    assert_eq!(docs["type"], "folder");
    let (s, again) = mk("root".into(), "docs").await;
    assert_eq!(s, 200);
    assert_eq!(again["id"], docs["id"]);
    let conflict = hub
        .req(
            Method::POST,
            &hub.acc("/storage/folders?conflict_if_exists=true"),
        )
        .json(&json!({"parent_id": "root", "name": "docs"}))
        .send()
        .await
        .expect("conflict");
    assert_eq!(conflict.status(), 409);
    assert_error_shape(&json_of(conflict).await, "conflict");

    let docs_id = docs["id"].as_str().expect("id").to_owned();
    let (_, sub) = mk(docs_id.clone(), "sub").await;
    let f = hub
        .upload(
            acc,
            sub["id"].as_str().expect("id"),
            "Needle Notes.md",
            b"# hi".to_vec(),
        )
        .await
        .expect("up");
    assert_eq!(f["ancestors"].as_array().expect("ancestors").len(), 3);
    hub.upload(acc, "root", "other.txt", b"x".to_vec())
        .await
        .expect("up");

    let search = json_of(
        hub.req(Method::GET, &hub.acc("/storage/search?q=needle"))
            .send()
            .await
            .expect("search"),
    )
    .await;
    assert_eq!(search["count"], 1);
    assert_eq!(search["objects"][0]["name"], "Needle Notes.md");
    let empty = hub
        .req(Method::GET, &hub.acc("/storage/search?q="))
        .send()
        .await
        .expect("empty q");
    assert_eq!(empty.status(), 400);
    assert_error_shape(&json_of(empty).await, "invalid_parameters");

    let recent = json_of(
        hub.req(Method::GET, &hub.acc("/storage/recent"))
            .send()
            .await
            .expect("recent"),
    )
    .await;
    assert_eq!(recent["count"], 2);

    // Rename the folder: children move with it and get new ids.
    let renamed = hub
        .req(
            Method::PATCH,
            &hub.acc(&format!("/storage/folders/{docs_id}")),
        )
        .json(&json!({"name": "papers"}))
        .send()
        .await
        .expect("rename");
    assert_eq!(renamed.status(), 200);
    let renamed = json_of(renamed).await;
    assert_eq!(renamed["path"], "/papers");
    let old = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/folders/{docs_id}")),
        )
        .send()
        .await
        .expect("old");
    assert_eq!(old.status(), 404);

    // Copy the tree.
    let papers_id = renamed["id"].as_str().expect("id");
    let copy = hub
        .req(
            Method::POST,
            &hub.acc(&format!("/storage/folders/{papers_id}/copy")),
        )
        .json(&json!({"parent_id": "root", "name": "papers-copy"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(copy.status(), 201);
    let search = json_of(
        hub.req(Method::GET, &hub.acc("/storage/search?q=needle"))
            .send()
            .await
            .expect("search"),
    )
    .await;
    assert_eq!(search["count"], 2);

    // Non-recursive delete of a non-empty folder is refused; recursive works.
    let refuse = hub
        .req(
            Method::DELETE,
            &hub.acc(&format!("/storage/folders/{papers_id}")),
        )
        .send()
        .await
        .expect("del");
    assert_eq!(refuse.status(), 409);
    let ok = hub
        .req(
            Method::DELETE,
            &hub.acc(&format!("/storage/folders/{papers_id}?recursive=true")),
        )
        .send()
        .await
        .expect("del");
    assert_eq!(ok.status(), 204);
    let root_delete = hub
        .req(Method::DELETE, &hub.acc("/storage/folders/root"))
        .send()
        .await
        .expect("root");
    assert_eq!(root_delete.status(), 400);

    // File move and copy.
    let other = json_of(
        hub.req(Method::GET, &hub.acc("/storage/search?q=other"))
            .send()
            .await
            .expect("s"),
    )
    .await;
    let other_id = other["objects"][0]["id"].as_str().expect("id").to_owned();
    let copied = hub
        .req(
            Method::POST,
            &hub.acc(&format!("/storage/files/{other_id}/copy")),
        )
        .json(&json!({"name": "other-copy.txt"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(copied.status(), 201);
    let moved = hub
        .req(
            Method::PATCH,
            &hub.acc(&format!("/storage/files/{other_id}")),
        )
        .json(&json!({"parent_id": renamed_root_copy(&hub).await}))
        .send()
        .await
        .expect("move");
    assert_eq!(moved.status(), 200);
    assert_eq!(json_of(moved).await["path"], "/papers-copy/other.txt");
}

async fn renamed_root_copy(hub: &TestHub) -> String {
    let list = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == "papers-copy")
        .expect("copy exists")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test]
async fn paging() {
    let hub = TestHub::start().await.expect("hub");
    for i in 0..25 {
        hub.upload(
            hub.creds.account_id,
            "root",
            &format!("f{i:02}.txt"),
            vec![b'x'; i],
        )
        .await
        .expect("up");
    }
    let p1 = json_of(
        hub.req(
            Method::GET,
            &hub.acc("/storage/folders/root/contents?page_size=10"),
        )
        .send()
        .await
        .expect("p1"),
    )
    .await;
    assert_eq!(p1["count"], 10);
    assert_eq!(p1["next_page"], 2);
    assert_eq!(p1["objects"][0]["name"], "f00.txt");
    let p3 = json_of(
        hub.req(
            Method::GET,
            &hub.acc("/storage/folders/root/contents?page_size=10&page=3"),
        )
        .send()
        .await
        .expect("p3"),
    )
    .await;
    assert_eq!(p3["count"], 5);
    assert_eq!(p3["next_page"], Value::Null);
    for bad in ["page_size=1001", "page_size=0", "page=0", "page=abc"] {
        let r = hub
            .req(
                Method::GET,
                &hub.acc(&format!("/storage/folders/root/contents?{bad}")),
            )
            .send()
            .await
            .expect("bad");
        assert_eq!(r.status(), 400, "{bad}");
        assert_error_shape(&json_of(r).await, "invalid_parameters");
    }
}

#[tokio::test]
async fn auth_errors_and_isolation() {
    let hub = TestHub::start().await.expect("hub");
    let url = hub.acc("/storage/folders/root");
    let none = hub.http.get(&url).send().await.expect("no auth");
    assert_eq!(none.status(), 401);
    assert_error_shape(&json_of(none).await, "unauthorized");
    let wrong = hub
        .http
        .get(&url)
        .header("Authorization", "APIKey sk_nope")
        .send()
        .await
        .expect("wrong");
    assert_eq!(wrong.status(), 401);
    let scheme = hub
        .http
        .get(&url)
        .header("Authorization", format!("apikey {}", hub.creds.api_key))
        .send()
        .await
        .expect("lower");
    assert_eq!(scheme.status(), 200, "scheme is case-insensitive");
    let meta_on_storage = hub
        .http
        .get(&url)
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("meta");
    assert_eq!(meta_on_storage.status(), 401);

    // A second application: its key must not reach the first app's account (404, not 403).
    let (app_id, other_auth) = other_app(&hub, "other").await;
    let other_key = other_auth.trim_start_matches("APIKey ").to_owned();
    let foreign = hub
        .http
        .get(&url)
        .header("Authorization", format!("APIKey {other_key}"))
        .send()
        .await
        .expect("foreign");
    assert_eq!(foreign.status(), 404);
    assert_error_shape(&json_of(foreign).await, "not_found");

    // Keys are listed by hint only; revoking one takes effect at once.
    let keys = json_of(
        hub.http
            .get(hub.url(&format!("/v1/meta/applications/{app_id}/apikeys")))
            .header("Authorization", hub.meta())
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(keys["count"], 1);
    assert!(keys["objects"][0].get("key").is_none());
    let del = hub
        .http
        .delete(hub.url(&format!(
            "/v1/meta/applications/{app_id}/apikeys/{other_key}"
        )))
        .header("Authorization", hub.meta())
        .send()
        .await
        .expect("revoke");
    assert_eq!(del.status(), 204);
    let revoked = hub
        .http
        .get(hub.url("/v1/accounts"))
        .header("Authorization", format!("APIKey {other_key}"))
        .send()
        .await
        .expect("revoked");
    assert_eq!(revoked.status(), 401);

    // An account bearer token reaches `me` and only its own account.
    let root2 = hub.new_fs_root("second").expect("root");
    let second = hub
        .connect("fs", json!({"root": root2}))
        .await
        .expect("connect");
    let token = second["bearer_token"]["key"]
        .as_str()
        .expect("token")
        .to_owned();
    let me = hub
        .http
        .get(hub.url("/v1/accounts/me/storage/folders/root"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);
    let other = hub
        .http
        .get(&url)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("other");
    assert_eq!(other.status(), 404);
    let listed = json_of(
        hub.http
            .get(hub.url("/v1/accounts"))
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(listed["count"], 1);
    let me_with_key = hub
        .req(Method::GET, &hub.url("/v1/accounts/me"))
        .send()
        .await
        .expect("me");
    assert_eq!(me_with_key.status(), 400);
}

#[tokio::test]
async fn accounts_crud_and_credentials_hidden() {
    let hub = TestHub::start().await.expect("hub");
    let root = hub.new_fs_root("crud").expect("root");
    let acct = hub
        .connect("fs", json!({"root": root}))
        .await
        .expect("connect");
    let id = acct["id"].as_i64().expect("numeric id");
    assert!(acct.get("credentials").is_none());
    let full = json_of(
        hub.req(
            Method::GET,
            &hub.url(&format!("/v1/accounts/{id}?retrieve_full=true")),
        )
        .send()
        .await
        .expect("get"),
    )
    .await;
    assert!(full["properties"]["capabilities"].is_object(), "{full}");
    assert!(
        !full.to_string().contains(root.to_str().expect("utf8")),
        "no credentials in responses"
    );
    let patched = json_of(
        hub.req(Method::PATCH, &hub.url(&format!("/v1/accounts/{id}")))
            .json(&json!({"account": "renamed"}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(patched["account"], "renamed");
    let list = json_of(
        hub.req(Method::GET, &hub.url("/v1/accounts"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["count"], 2);
    let del = hub
        .req(Method::DELETE, &hub.url(&format!("/v1/accounts/{id}")))
        .send()
        .await
        .expect("del");
    assert_eq!(del.status(), 204);
    let gone = hub
        .req(Method::GET, &hub.url(&format!("/v1/accounts/{id}")))
        .send()
        .await
        .expect("gone");
    assert_eq!(gone.status(), 404);

    // Bad account input.
    for (service, creds, code) in [
        ("nope", json!({}), "invalid_parameters"),
        ("fs", json!({"rooot": "/tmp"}), "invalid_parameters"),
        ("fs", json!({"root": "/etc"}), "invalid_parameters"),
        (
            "fs",
            json!({"root": "/definitely/missing"}),
            "invalid_parameters",
        ),
    ] {
        let r = hub
            .req(Method::POST, &hub.url("/v1/accounts"))
            .json(&json!({"service": service, "account": "x", "credentials": creds}))
            .send()
            .await
            .expect("bad");
        assert_eq!(r.status(), 400, "{service} {creds}");
        assert_error_shape(&json_of(r).await, code);
    }
    // Credentials are encrypted at rest: the database file never holds the root path in clear.
    let db = std::fs::read(hub.data_dir.join("hub.db")).expect("db file");
    let needle = root.to_str().expect("utf8").as_bytes();
    assert!(!db.windows(needle.len()).any(|w| w == needle));
}

#[tokio::test]
async fn ssrf_guard_refuses_internal_endpoints() {
    let hub = TestHub::start_with(HubOptions {
        ssrf_guard: true,
        ..Default::default()
    })
    .await
    .expect("hub");
    for (service, creds) in [
        (
            "s3",
            json!({"bucket": "b", "access_key_id": "a", "secret_access_key": "s", "endpoint": "http://169.254.169.254"}),
        ),
        (
            "s3",
            json!({"bucket": "b", "access_key_id": "a", "secret_access_key": "s", "endpoint": "http://localhost:9000"}),
        ),
        ("webdav", json!({"endpoint": "http://[::1]:8080/dav"})),
        ("webdav", json!({"endpoint": "file:///etc/passwd"})),
        (
            "sftp",
            json!({"endpoint": "10.0.0.1:22", "user": "u", "key": "k"}),
        ),
    ] {
        let r = hub
            .req(Method::POST, &hub.url("/v1/accounts"))
            .json(&json!({"service": service, "account": "x", "credentials": creds}))
            .send()
            .await
            .expect("ssrf");
        assert_eq!(r.status(), 400, "{service} {creds}");
        let v = json_of(r).await;
        assert_error_shape(&v, "invalid_parameters");
    }
}

#[tokio::test]
async fn bad_input_is_rejected() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    for name in [
        "..",
        ".",
        "a/b",
        "a\\b",
        "with\0nul",
        &"x".repeat(300),
        ".switchyard-partial",
    ] {
        let meta = json!({"name": name, "parent_id": "root"}).to_string();
        let r = hub
            .req(Method::POST, &hub.acc("/storage/files"))
            .header("X-Kloudless-Metadata", meta)
            .body("x")
            .send()
            .await;
        let r = match r {
            Ok(r) => r,
            Err(_) => continue,
        };
        assert_eq!(r.status(), 400, "name {name:?}");
        assert_error_shape(&json_of(r).await, "invalid_parameters");
        let r = hub
            .req(Method::POST, &hub.acc("/storage/folders"))
            .json(&json!({"parent_id": "root", "name": name}))
            .send()
            .await
            .expect("mkdir");
        assert_eq!(r.status(), 400, "folder {name:?}");
    }
    for id in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "F..",
        "Fnot-base64!",
        "D%00",
    ] {
        let r = hub
            .req(Method::GET, &hub.acc(&format!("/storage/files/{id}")))
            .send()
            .await
            .expect("traversal id");
        assert_eq!(r.status(), 400, "id {id}");
    }
    // A forged id (valid encoding, invalid tag) and another account's id are 404.
    use base64::Engine as _;
    let mut raw = vec![0u8; 12];
    raw.extend_from_slice(b"../../etc/passwd");
    let forged = format!(
        "F{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let r = hub
        .req(Method::GET, &hub.acc(&format!("/storage/files/{forged}")))
        .send()
        .await
        .expect("forged");
    assert_eq!(r.status(), 404);
    let f = hub
        .upload(acc, "root", "mine.txt", b"x".to_vec())
        .await
        .expect("up");
    let root2 = hub.new_fs_root("foreign").expect("root");
    let second = hub
        .connect("fs", json!({"root": root2}))
        .await
        .expect("connect");
    std::fs::write(root2.join("mine.txt"), b"other").expect("write");
    let r = hub
        .req(
            Method::GET,
            &hub.url(&format!(
                "/v1/accounts/{}/storage/files/{}",
                second["id"],
                f["id"].as_str().expect("id")
            )),
        )
        .send()
        .await
        .expect("foreign id");
    assert_eq!(r.status(), 404);

    // Malformed metadata, malformed JSON, unknown route, wrong method, too-large body.
    for meta in ["not json", r#"{"name": "x"}"#, "[]"] {
        let r = hub
            .req(Method::POST, &hub.acc("/storage/files"))
            .header("X-Kloudless-Metadata", meta)
            .body("x")
            .send()
            .await
            .expect("meta");
        assert_eq!(r.status(), 400, "{meta}");
    }
    let r = hub
        .req(Method::POST, &hub.acc("/storage/files"))
        .body("no metadata")
        .send()
        .await
        .expect("missing meta");
    assert_eq!(r.status(), 400);
    let r = hub
        .req(Method::POST, &hub.acc("/storage/folders"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("bad json");
    assert_eq!(r.status(), 400);
    assert_error_shape(&json_of(r).await, "invalid_parameters");
    let r = hub
        .req(Method::GET, &hub.url("/v1/nothing/here"))
        .send()
        .await
        .expect("404");
    assert_eq!(r.status(), 404);
    assert_error_shape(&json_of(r).await, "not_found");
    let r = hub
        .req(Method::PUT, &hub.url("/v1/accounts"))
        .send()
        .await
        .expect("405");
    assert_eq!(r.status(), 405);
    assert_error_shape(&json_of(r).await, "method_not_allowed");
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = hub
        .req(Method::POST, &hub.acc("/storage/folders"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("413");
    assert_eq!(r.status(), 413);
    assert_error_shape(&json_of(r).await, "request_too_large");
    let r = hub
        .req(Method::GET, &hub.url("/v1/accounts/abc"))
        .send()
        .await
        .expect("non-numeric");
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn upload_limit_and_interrupted_upload_leave_nothing() {
    let hub = TestHub::start_with(HubOptions {
        max_upload_bytes: 1024 * 1024,
        ..Default::default()
    })
    .await
    .expect("hub");
    let r = hub
        .req(Method::POST, &hub.acc("/storage/files"))
        .header(
            "X-Kloudless-Metadata",
            r#"{"name":"big.bin","parent_id":"root"}"#,
        )
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // An upload whose connection dies halfway: raw HTTP with a longer Content-Length than sent.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(hub.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/accounts/{}/storage/files HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         X-Kloudless-Metadata: {{\"name\":\"half.bin\",\"parent_id\":\"root\"}}\r\nContent-Length: 1000000\r\n\r\n",
        hub.creds.account_id,
        hub.apikey()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&vec![7u8; 500_000]).await.expect("half");
    s.flush().await.expect("flush");
    drop(s);
    let files = hub.dev_root();
    // The hub notices the broken body and aborts; the staging area drains and nothing is visible.
    e2e::assert_eventually!(
        std::fs::read_dir(files.join(".switchyard-partial"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        std::time::Duration::from_secs(10),
        "staging file removal"
    );
    let visible: Vec<_> = std::fs::read_dir(&files)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != ".switchyard-partial")
        .collect();
    assert!(visible.is_empty(), "partial upload visible: {visible:?}");
    let list = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["count"], 0);
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let hub = TestHub::start().await.expect("hub");
    assert_eq!(
        hub.http
            .get(hub.url("/healthz"))
            .send()
            .await
            .expect("h")
            .status(),
        200
    );
    assert_eq!(
        hub.http
            .get(hub.url("/readyz"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    hub.upload(hub.creds.account_id, "root", "m.bin", vec![1u8; 4096])
        .await
        .expect("up");
    let m = hub
        .http
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("text");
    assert!(m.contains("switchyard_hub_http_requests_total"), "{m}");
    assert!(m.contains("switchyard_hub_http_request_duration_seconds_bucket"));
    assert!(
        m.contains("route=\"/v1/accounts/{acc}/storage/files\""),
        "{m}"
    );
    let doc: Value = hub
        .http
        .get(hub.url("/v1/openapi.json"))
        .send()
        .await
        .expect("o")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/meta/applications",
        "/v1/meta/applications/{app}",
        "/v1/meta/applications/{app}/apikeys",
        "/v1/meta/applications/{app}/apikeys/{key}",
        "/v1/accounts",
        "/v1/accounts/{acc}",
        "/v1/accounts/{acc}/storage/folders",
        "/v1/accounts/{acc}/storage/folders/{id}",
        "/v1/accounts/{acc}/storage/folders/{id}/contents",
        "/v1/accounts/{acc}/storage/folders/{id}/copy",
        "/v1/accounts/{acc}/storage/files",
        "/v1/accounts/{acc}/storage/files/{id}",
        "/v1/accounts/{acc}/storage/files/{id}/contents",
        "/v1/accounts/{acc}/storage/files/{id}/copy",
        "/v1/accounts/{acc}/storage/search",
        "/v1/accounts/{acc}/storage/recent",
        "/v1/accounts/{acc}/events",
        "/v1/accounts/{acc}/events/latest",
        "/v1/network/spokes/tokens",
        "/v1/network/spokes/tokens/{token}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    // Every path parameter is constrained, so generated clients and fuzzers send valid shapes.
    for (path, item) in paths {
        for op in item.as_object().expect("item").values() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" && param["schema"]["type"] == "string" {
                    assert!(
                        param["schema"]["pattern"].is_string(),
                        "{path}: path parameter {} has no pattern",
                        param["name"]
                    );
                }
            }
        }
    }
}

/// Schemathesis (PyPI) fuzzes every route from `/v1/openapi.json`, with an API key and with a
/// meta token: no 5xx, no response that breaks its own schema, no undocumented status.
#[tokio::test]
async fn schemathesis_finds_no_server_errors() {
    let hub = TestHub::start().await.expect("hub");
    for auth in [hub.apikey(), hub.meta()] {
        let out = tokio::process::Command::new("schemathesis")
            .args(["run", &hub.url("/v1/openapi.json"), "-H", &format!("Authorization: {auth}")])
            .args(["--max-examples", "10", "--seed", "1", "--no-color"])
            .args(["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .await
            .expect("schemathesis (pip install schemathesis)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "schemathesis found failures:\n{text}");
        assert!(text.contains("passed"), "{text}");
    }
}

/// The issue's case at full size: a 2 GiB upload whose connection dies after 1 GiB. While it runs
/// the bytes stream to a staging file (never into memory, never under the real name); after the
/// drop nothing is visible and the staging area drains.
#[tokio::test]
async fn interrupted_2gib_upload_leaves_no_partial_file() {
    use tokio::io::AsyncWriteExt;
    const TOTAL: u64 = 2 << 30;
    const SENT: u64 = 1 << 30;
    let hub = TestHub::start_with(HubOptions {
        max_upload_bytes: 4 << 30,
        ..Default::default()
    })
    .await
    .expect("hub");
    let files = hub.dev_root();
    let staging = files.join(".switchyard-partial");
    let staged_bytes = || -> u64 {
        std::fs::read_dir(&staging)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let mut s = tokio::net::TcpStream::connect(hub.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/accounts/{}/storage/files HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         X-Kloudless-Metadata: {{\"name\":\"huge.bin\",\"parent_id\":\"root\"}}\r\n\
         Content-Length: {TOTAL}\r\n\r\n",
        hub.creds.account_id,
        hub.apikey()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![0x5au8; 1 << 20];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    for i in 0..(SENT >> 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "sending took too long"
        );
        s.write_all(&chunk).await.expect("body");
        if i == 512 {
            // Halfway through what we send: bytes are landing in staging, the name is not listed.
            e2e::assert_eventually!(
                staged_bytes() > 64 << 20,
                std::time::Duration::from_secs(30),
                "the upload streaming into the staging area"
            );
            let list = json_of(
                hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
                    .send()
                    .await
                    .expect("list"),
            )
            .await;
            assert_eq!(list["count"], 0, "in-flight upload visible: {list}");
        }
    }
    s.flush().await.expect("flush");
    drop(s);
    e2e::assert_eventually!(
        staged_bytes() == 0
            && std::fs::read_dir(&staging)
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        std::time::Duration::from_secs(30),
        "staging file removal"
    );
    let visible: Vec<_> = std::fs::read_dir(&files)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != ".switchyard-partial")
        .collect();
    assert!(visible.is_empty(), "partial upload visible: {visible:?}");
    let list = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["count"], 0);
}

/// A second application of `hub` with its own API key: `(app id, "APIKey ...")`.
async fn other_app(hub: &TestHub, name: &str) -> (i64, String) {
    let app = json_of(
        hub.http
            .post(hub.url("/v1/meta/applications"))
            .header("Authorization", hub.meta())
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("app"),
    )
    .await;
    let app_id = app["id"].as_i64().expect("id");
    let key = json_of(
        hub.http
            .post(hub.url(&format!("/v1/meta/applications/{app_id}/apikeys")))
            .header("Authorization", hub.meta())
            .send()
            .await
            .expect("key"),
    )
    .await;
    (
        app_id,
        format!("APIKey {}", key["key"].as_str().expect("key")),
    )
}

/// Connects an `fs` account with `root` as `auth`; the response.
async fn connect_fs(hub: &TestHub, auth: &str, root: &str) -> reqwest::Response {
    hub.http
        .post(hub.url("/v1/accounts"))
        .header("Authorization", auth)
        .json(&json!({"service": "fs", "account": "fs", "credentials": {"root": root}}))
        .send()
        .await
        .expect("connect")
}

/// Application B tries every way into application A's `fs` space: A's roots, their parents,
/// `..`, a symbolic link in B's own space (placed before connecting, or swapped in later), and
/// probing which host paths exist. Only its own space works.
#[tokio::test]
async fn fs_roots_are_confined_to_their_application() {
    let hub = TestHub::start().await.expect("hub");
    let a_root = hub.new_fs_root("photos").expect("A's root");
    std::fs::write(a_root.join("secret.txt"), b"A's data").expect("A's file");
    let (b_app, b_key) = other_app(&hub, "tenant-b").await;
    let allowed = hub.fs_allowed_root();
    let b_space = allowed.join(format!("app-{b_app}"));
    std::fs::create_dir_all(&b_space).expect("B's space");
    std::os::unix::fs::symlink(&a_root, b_space.join("link")).expect("link into A");
    // Relative roots lie in B's space under the first allowed root (the dev hub's `files`).
    let b_first = hub.data_dir.join("files").join(format!("app-{b_app}"));
    std::fs::create_dir_all(&b_first).expect("B's first space");
    std::os::unix::fs::symlink(&a_root, b_first.join("link")).expect("link into A");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();

    let mut answers = Vec::new();
    for root in [
        s(&a_root),
        s(&hub.dev_root()),
        s(a_root.parent().expect("A's space")),
        s(&allowed),
        s(&hub.data_dir.join("files")),
        s(&b_space
            .join("..")
            .join(format!("app-{}", hub.creds.application_id))),
        format!("../app-{}/photos", hub.creds.application_id),
        s(&b_space.join("link")),
        "link".into(),
        "link/deeper".into(),
        // Existing and missing host paths answer the same.
        "/etc".into(),
        "/etc/passwd".into(),
        "/definitely/missing/dir".into(),
        s(&a_root.join("missing")),
        "/".into(),
    ] {
        let r = connect_fs(&hub, &b_key, &root).await;
        assert_eq!(r.status(), 400, "B connected {root}");
        let v = json_of(r).await;
        assert_error_shape(&v, "invalid_parameters");
        answers.push((root, v["message"].as_str().unwrap_or_default().to_owned()));
    }
    let outside = &answers[0].1;
    for (root, message) in &answers {
        if root.contains("link") {
            continue; // inside B's own space: told it is a link, never where it leads
        }
        assert_eq!(
            message, outside,
            "{root} answers differently: existence leaks"
        );
    }
    for (root, message) in answers.iter().filter(|(r, _)| r.contains("link")) {
        assert!(!message.contains(&s(&a_root)), "{root}: {message}");
    }

    // B's own space works, relative (made on demand) or absolute.
    let r = connect_fs(&hub, &b_key, "albums/2024").await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert!(hub
        .data_dir
        .join("files")
        .join(format!("app-{b_app}/albums/2024"))
        .is_dir());
    let own = b_space.join("own");
    std::fs::create_dir_all(&own).expect("own");
    let r = connect_fs(&hub, &b_key, &s(&own)).await;
    assert_eq!(r.status(), 201);
    let acct = json_of(r).await["id"].as_i64().expect("id");
    let list_url = hub.url(&format!(
        "/v1/accounts/{acct}/storage/folders/root/contents"
    ));
    let listing = hub
        .http
        .get(&list_url)
        .header("Authorization", &b_key)
        .send()
        .await
        .expect("list");
    assert_eq!(listing.status(), 200);

    // A link made inside B's root later, into A's files: never followed.
    std::os::unix::fs::symlink(&a_root, own.join("inner")).expect("link inside the root");
    let path = shared::storage::path::StoragePath::parse("inner/secret.txt").expect("path");
    let id = hub
        .state
        .ids
        .encode(acct, shared::storage::EntryKind::File, &path);
    for suffix in ["", "/contents"] {
        let r = hub
            .http
            .get(hub.url(&format!("/v1/accounts/{acct}/storage/files/{id}{suffix}")))
            .header("Authorization", &b_key)
            .send()
            .await
            .expect("read through the link");
        assert_eq!(r.status(), 403, "{suffix}");
        let body = r.text().await.expect("body");
        assert!(!body.contains("A's data"), "{body}");
    }
    std::fs::remove_file(own.join("inner")).expect("rm link");

    // A link swapped in for the root later is refused at use, even with the account cached.
    std::fs::remove_dir_all(&own).expect("rm own");
    std::os::unix::fs::symlink(&a_root, &own).expect("swap in a link");
    let r = hub
        .http
        .get(&list_url)
        .header("Authorization", &b_key)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 403);
    let body = r.text().await.expect("body");
    assert!(!body.contains("secret.txt"), "{body}");
    // A still reaches its own files.
    let a_acct = json_of(connect_fs(&hub, &hub.apikey(), &s(&a_root)).await).await;
    assert!(a_acct["id"].as_i64().is_some(), "{a_acct}");
}

/// An account bearer token lists, reads and cancels only transfers that touch its account; the
/// application's API key sees them all.
#[tokio::test]
async fn bearer_tokens_see_only_their_transfers() {
    let hub = TestHub::start().await.expect("hub");
    let mut ends = Vec::new();
    for name in ["x", "y"] {
        let root = hub.new_fs_root(name).expect("root");
        let a = hub.connect("fs", json!({"root": root})).await.expect("fs");
        ends.push((
            a["id"].as_i64().expect("id"),
            format!(
                "Bearer {}",
                a["bearer_token"]["key"].as_str().expect("token")
            ),
        ));
    }
    let f = hub
        .upload(hub.creds.account_id, "root", "t.bin", pattern(10_000, 4))
        .await
        .expect("upload");
    let mut transfers = Vec::new();
    for (dst, _) in &ends {
        let r = hub
            .req(
                Method::POST,
                &hub.acc(&format!(
                    "/storage/files/{}/copy",
                    f["id"].as_str().expect("id")
                )),
            )
            .header("X-Kloudless-Async", "true")
            .json(&json!({"account": dst, "parent_id": "root"}))
            .send()
            .await
            .expect("copy");
        assert_eq!(r.status(), 202);
        transfers.push(json_of(r).await["transfer"].as_i64().expect("transfer"));
    }
    let get = |auth: String, method: Method, path: String| {
        let r = hub
            .http
            .request(method, hub.url(&path))
            .header("Authorization", auth);
        async move { r.send().await.expect("request") }
    };
    let all = json_of(get(hub.apikey(), Method::GET, "/v1/transfers".into()).await).await;
    assert_eq!(all["count"], 2, "{all}");
    for (i, (_, token)) in ends.iter().enumerate() {
        let (mine, theirs) = (transfers[i], transfers[1 - i]);
        let listed = json_of(get(token.clone(), Method::GET, "/v1/transfers".into()).await).await;
        assert_eq!(listed["count"], 1, "{listed}");
        assert_eq!(listed["objects"][0]["id"], mine);
        let r = get(token.clone(), Method::GET, format!("/v1/transfers/{mine}")).await;
        assert_eq!(r.status(), 200);
        for method in [Method::GET, Method::DELETE] {
            let r = get(
                token.clone(),
                method.clone(),
                format!("/v1/transfers/{theirs}"),
            )
            .await;
            assert_eq!(r.status(), 404, "{method} of another account's transfer");
            assert_error_shape(&json_of(r).await, "not_found");
        }
    }
    // The foreign cancels changed nothing: neither transfer was cancelled by them.
    for id in &transfers {
        let t = json_of(get(hub.apikey(), Method::GET, format!("/v1/transfers/{id}")).await).await;
        assert_ne!(t["state"], "cancelled", "{t}");
    }
    // Its own transfer, a token may cancel.
    let r = get(
        ends[0].1.clone(),
        Method::DELETE,
        format!("/v1/transfers/{}", transfers[0]),
    )
    .await;
    assert_eq!(r.status(), 200);
}

/// Application names are shown to operators: control characters are refused at creation.
#[tokio::test]
async fn application_names_refuse_control_characters() {
    let hub = TestHub::start().await.expect("hub");
    for name in ["evil\u{1b}[31mred", "two\nlines", "rtl\u{202e}txt.exe"] {
        let r = hub
            .http
            .post(hub.url("/v1/meta/applications"))
            .header("Authorization", hub.meta())
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 400, "{name:?}");
        let v = json_of(r).await;
        assert_error_shape(&v, "invalid_parameters");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("control"),
            "{v}"
        );
    }
    let (app, _) = other_app(&hub, "fine name é").await;
    let r = hub
        .http
        .patch(hub.url(&format!("/v1/meta/applications/{app}")))
        .header("Authorization", hub.meta())
        .json(&json!({ "name": "bad\u{7}" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 400);
}

/// Names are NFC (the NFD spelling of a name is the same file), bidirectional and invisible
/// control characters are refused with a clear 400, and the reserved staging prefix is
/// matched in any case, for uploads, folders and listings.
#[tokio::test]
async fn names_are_nfc_and_free_of_invisible_characters() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    let nfc = "caf\u{e9}.txt";
    let nfd = "cafe\u{301}.txt";
    let a = hub
        .upload(acc, "root", nfc, b"one".to_vec())
        .await
        .expect("nfc");
    let b = hub
        .upload(acc, "root", nfd, b"two".to_vec())
        .await
        .expect("nfd");
    assert_eq!(
        b["name"], "caf\u{e9} (1).txt",
        "the NFD name is the NFC name: {b}"
    );
    let r = hub
        .req(Method::POST, &hub.acc("/storage/files?overwrite=true"))
        .header(
            "X-Kloudless-Metadata",
            json!({"name": nfd, "parent_id": "root"}).to_string(),
        )
        .body("three")
        .send()
        .await
        .expect("overwrite");
    assert_eq!(r.status(), 201);
    assert_eq!(json_of(r).await["id"], a["id"], "replaced the NFC file");
    let on_disk: Vec<String> = std::fs::read_dir(hub.dev_root())
        .expect("root")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("caf"))
        .collect();
    assert!(
        on_disk.iter().all(|n| !n.contains('\u{301}')),
        "{on_disk:?}"
    );
    assert_eq!(on_disk.len(), 2, "{on_disk:?}");
    let r = hub
        .req(Method::POST, &hub.acc("/storage/folders"))
        .json(&json!({"parent_id": "root", "name": "Pe\u{301}rez"}))
        .send()
        .await
        .expect("mkdir");
    assert_eq!(r.status(), 201);
    assert_eq!(json_of(r).await["name"], "P\u{e9}rez");

    for (name, code) in [
        ("invoice\u{202E}fdp.exe", "U+202E"),
        ("a\u{2066}b", "U+2066"),
        ("rtl\u{200F}mark", "U+200F"),
        ("arabic\u{061C}mark", "U+061C"),
        ("zero\u{200B}width", "U+200B"),
    ] {
        let r = hub
            .req(Method::POST, &hub.acc("/storage/files"))
            .header(
                "X-Kloudless-Metadata",
                json!({"name": name, "parent_id": "root"}).to_string(),
            )
            .body("x")
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 400, "{name:?}");
        let v = json_of(r).await;
        assert_error_shape(&v, "invalid_parameters");
        assert!(v["message"].as_str().expect("msg").contains(code), "{v}");
        let r = hub
            .req(Method::POST, &hub.acc("/storage/folders"))
            .json(&json!({"parent_id": "root", "name": name}))
            .send()
            .await
            .expect("mkdir");
        assert_eq!(r.status(), 400, "folder {name:?}");
    }
    for name in ["a\u{85}b", "bell\u{7}"] {
        let r = hub
            .req(Method::POST, &hub.acc("/storage/folders"))
            .json(&json!({"parent_id": "root", "name": name}))
            .send()
            .await
            .expect("mkdir");
        assert_eq!(r.status(), 400, "C0/C1 {name:?}");
    }
    // Emoji sequences with zero-width joiners are ordinary names.
    hub.upload(
        acc,
        "root",
        "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}.png",
        b"x".to_vec(),
    )
    .await
    .expect("emoji");

    // The reserved prefix in any case: refused as a name, hidden in listings.
    for name in [".SWITCHYARD-partial", ".Switchyard-x.txt"] {
        let r = hub
            .req(Method::POST, &hub.acc("/storage/folders"))
            .json(&json!({"parent_id": "root", "name": name}))
            .send()
            .await
            .expect("mkdir");
        assert_eq!(r.status(), 400, "{name}");
        assert_error_shape(&json_of(r).await, "invalid_parameters");
    }
    std::fs::create_dir(hub.dev_root().join(".SWITCHYARD-Partial")).expect("mkdir");
    std::fs::write(hub.dev_root().join(".Switchyard-upload.tmp"), b"x").expect("write");
    let list = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    let names: Vec<&str> = list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_ascii_lowercase().starts_with(".switchyard-")),
        "{names:?}"
    );
}

/// Two Authorization headers are a 400 naming the header, whichever comes first.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let hub = TestHub::start().await.expect("hub");
    for (first, second) in [
        (hub.apikey(), "APIKey wrong".to_owned()),
        ("APIKey wrong".to_owned(), hub.apikey()),
    ] {
        let r = hub
            .http
            .get(hub.url("/v1/accounts"))
            .header("Authorization", first)
            .header("Authorization", second)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 400);
        let v = json_of(r).await;
        assert_error_shape(&v, "bad_request");
        assert!(
            v["message"]
                .as_str()
                .expect("msg")
                .contains("Authorization"),
            "{v}"
        );
    }
}

/// Sends raw request bytes and returns the status, headers and body of the answer.
async fn raw_request(addr: &str, request: &[u8]) -> (u16, String, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer before it has read everything; a write error then is fine.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head[9..12].parse().expect("status");
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), body)
}

/// Too many or too large header fields get a 431 with the usual JSON error and request id
/// (hyper used to answer these itself with an empty body).
#[tokio::test]
async fn oversized_headers_get_a_json_431() {
    let hub = TestHub::start().await.expect("hub");
    let addr = hub.base_url.trim_start_matches("http://").to_owned();
    let mut many = String::from("GET /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let big = format!(
        "GET /v1/accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    for req in [many, big] {
        let (status, head, body) = raw_request(&addr, req.as_bytes()).await;
        assert_eq!(status, 431, "{head}");
        assert_error_shape(&body, "request_header_fields_too_large");
        assert!(head.contains("x-request-id:"), "{head}");
    }
    // A request within the limits still works.
    let ok = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Fine: {}\r\n\r\n",
        "f".repeat(8 * 1024)
    );
    let (status, head, _) = raw_request(&addr, ok.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
}

/// A path parameter that is not a number says which one and what it must be.
#[tokio::test]
async fn numeric_path_parameters_are_named() {
    let hub = TestHub::start().await.expect("hub");
    let meta = |path: &str| {
        hub.http
            .get(hub.url(path))
            .header("Authorization", hub.meta())
    };
    for (req, expect) in [
        (
            meta("/v1/meta/applications/abc"),
            "`app` must be a numeric application id",
        ),
        (
            meta("/v1/meta/applications/abc/apikeys"),
            "`app` must be a numeric application id",
        ),
        (
            meta("/v1/meta/applications/99999999999999999999"),
            "`app` must be a numeric application id",
        ),
        (
            meta("/v1/network/spokes/abc"),
            "`spoke` must be a numeric spoke id",
        ),
        (
            hub.req(Method::GET, &hub.url("/v1/transfers/abc")),
            "`id` must be a numeric transfer id",
        ),
        (
            hub.req(Method::GET, &hub.acc("/tasks/abc")),
            "`id` must be a numeric task id",
        ),
    ] {
        let r = req.send().await.expect("request");
        assert_eq!(r.status(), 400);
        let v = json_of(r).await;
        assert_error_shape(&v, "invalid_parameters");
        assert_eq!(v["message"], expect, "{v}");
    }
}

/// `service` is the short id and `service_name` the display name, in the list and on one
/// account alike.
#[tokio::test]
async fn service_name_is_the_same_everywhere() {
    let hub = TestHub::start().await.expect("hub");
    let list = json_of(
        hub.req(Method::GET, &hub.url("/v1/accounts"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    let listed = &list["objects"][0];
    let one = json_of(
        hub.req(Method::GET, &hub.acc(""))
            .send()
            .await
            .expect("get"),
    )
    .await;
    for v in [listed, &one] {
        assert_eq!(v["service"], "fs", "{v}");
        assert_eq!(v["service_name"], "Local Filesystem", "{v}");
    }
}

/// An `fs` file's ETag is its content's SHA-256, hashed once per version and then served from
/// the cache (keyed by inode, ctime and size). The times it prints (cold, warm) are figures
/// for the notes, not assertions: timing belongs to benchmarks.
#[tokio::test]
async fn fs_etag_is_the_content_hash_and_cached() {
    let hub = TestHub::start().await.expect("hub");

    let data = pattern(100 * 1000 * 1000, 7);
    std::fs::write(hub.dev_root().join("big.bin"), &data).expect("write");
    let root = json_of(
        hub.req(Method::GET, &hub.acc("/storage/folders/root/contents"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    let id = root["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == "big.bin")
        .expect("big.bin")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let url = hub.acc(&format!("/storage/files/{id}"));
    let get = || async {
        let t = std::time::Instant::now();
        let r = hub.req(Method::GET, &url).send().await.expect("get");
        assert_eq!(r.status(), 200);
        let tag = r.headers()["etag"].to_str().expect("etag").to_owned();
        (t.elapsed(), tag)
    };
    let (cold, tag) = get().await;
    assert_eq!(
        tag,
        format!("\"{}\"", sha256_hex(&data)),
        "the ETag is the content's SHA-256"
    );
    // A hash is cached once the file's ctime is older than the settle window (1 s): until
    // then every GET hashes again. Poll (bounded) until a GET is served from the cache.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut warm = cold;
    while shared::storage::cached_hashes() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hash was never cached"
        );
        let (t, again) = get().await;
        assert_eq!(again, tag);
        warm = t;
    }
    let mut warm_samples = Vec::new();
    for _ in 0..5 {
        let (t, again) = get().await;
        assert_eq!(again, tag);
        warm_samples.push(t);
    }
    warm_samples.sort();
    let warm_median = warm_samples[2];
    eprintln!("ETag of a 100 MB fs file: cold GET {cold:?}, first cached {warm:?}, warm median {warm_median:?}");
}
