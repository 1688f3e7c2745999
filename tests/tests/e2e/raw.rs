//! The pass-through API against real servers: S3 (moto: list, get, put and read tagging),
//! Azure Blob (Azurite, which checks the Shared Key signature) and WebDAV (PROPFIND); the
//! provider's errors come back as they are; a URI on another host, reserved headers, and
//! services without an HTTP API are refused.

use e2e::servers::{AzuriteServer, S3Server, WebDavServer};
use e2e::TestHub;
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
