//! One conformance suite for every storage connector, run against real servers started by the
//! harness on loopback: local disk, S3 (moto), WebDAV (rclone), SFTP (OpenSSH) and Azure Blob
//! (Azurite).

use bytes::Bytes;
use e2e::servers::{AzuriteServer, NginxServer, S3Server, SftpServer, WebDavServer};
use e2e::{pattern, sha256_hex, TestHub};
use futures::TryStreamExt;
use serde_json::json;
use shared::storage::{
    ByteRange, ConnectOptions, Connector, EntryKind, Publish, ServiceConfig, StorageError,
    StoragePath,
};

fn p(s: &str) -> StoragePath {
    StoragePath::parse(s).expect("valid path")
}

fn chunks(
    data: &[u8],
    size: usize,
) -> impl futures::Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static {
    let parts: Vec<Result<Bytes, String>> = data
        .chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(parts)
}

async fn read_all(c: &Connector, path: &StoragePath, range: Option<ByteRange>) -> Vec<u8> {
    let s = c.read(path, range).await.expect("read");
    let parts: Vec<Bytes> = s.try_collect().await.expect("stream");
    parts.concat()
}

/// A connector to the loopback test servers (no SSRF guard: they are internal addresses).
async fn connect(service: &str, creds: serde_json::Value, scratch: &std::path::Path) -> Connector {
    let cfg = ServiceConfig::from_parts(service, creds).expect("settings");
    Connector::connect(
        &cfg,
        &ConnectOptions {
            scratch_dir: scratch.to_owned(),
            egress: e2e::loopback_egress(),
            ..Default::default()
        },
    )
    .await
    .expect("connector")
}

/// The shared cases: every connector must pass all of them.
async fn conformance(c: &Connector) {
    c.check().await.expect("credential check");
    let base = p("conformance");
    c.create_folder(&base).await.expect("mkdir");
    assert_eq!(
        c.stat_folder(&base).await.expect("stat dir").kind,
        EntryKind::Folder
    );
    assert!(matches!(
        c.stat(&p("conformance/missing")).await,
        Err(StorageError::NotFound)
    ));

    // Streaming write in many chunks, then full and ranged reads.
    let data = pattern(3 * 1024 * 1024 + 17, 9);
    let a = p("conformance/a.bin");
    let e = c.write(&a, chunks(&data, 64 * 1024)).await.expect("write");
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(sha256_hex(&read_all(c, &a, None).await), sha256_hex(&data));
    let r = read_all(
        c,
        &a,
        Some(ByteRange {
            start: 1000,
            len: Some(5000),
        }),
    )
    .await;
    assert_eq!(r, &data[1000..6000]);
    let tail = read_all(
        c,
        &a,
        Some(ByteRange {
            start: data.len() as u64 - 10,
            len: None,
        }),
    )
    .await;
    assert_eq!(tail, &data[data.len() - 10..]);

    // Replace in place.
    c.write(&a, chunks(b"short", 2)).await.expect("overwrite");
    assert_eq!(read_all(c, &a, None).await, b"short");

    // An interrupted upload leaves nothing visible, neither the target nor a staging file.
    let broken = futures::stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 100_000])),
        Err("client went away".to_owned()),
    ]);
    let res = c.write(&p("conformance/broken.bin"), broken).await;
    assert!(matches!(res, Err(StorageError::Interrupted(_))), "{res:?}");
    assert!(!c
        .exists(&p("conformance/broken.bin"))
        .await
        .expect("exists"));

    // Listing is sorted and hides reserved names.
    c.write(&p("conformance/b.txt"), chunks(b"bee", 8))
        .await
        .expect("b");
    c.create_folder(&p("conformance/sub")).await.expect("sub");
    c.write(&p("conformance/sub/deep.txt"), chunks(b"deep", 8))
        .await
        .expect("deep");
    let (list, cut) = c.list(&base).await.expect("list");
    assert!(!cut);
    let names: Vec<_> = list.iter().map(|e| e.path.name().to_owned()).collect();
    assert_eq!(names, vec!["a.bin", "b.txt", "sub"]);
    assert_eq!(list[2].kind, EntryKind::Folder);
    assert_eq!(list[1].size, 3);

    // Copy and rename files; rename folders with their contents.
    c.copy_file(&p("conformance/b.txt"), &p("conformance/c.txt"))
        .await
        .expect("copy");
    assert_eq!(read_all(c, &p("conformance/c.txt"), None).await, b"bee");
    c.rename(
        &p("conformance/c.txt"),
        &p("conformance/sub/d.txt"),
        EntryKind::File,
    )
    .await
    .expect("move");
    assert!(!c.exists(&p("conformance/c.txt")).await.expect("exists"));
    assert!(matches!(
        c.rename(
            &p("conformance/b.txt"),
            &p("conformance/sub/d.txt"),
            EntryKind::File
        )
        .await,
        Err(StorageError::AlreadyExists)
    ));
    c.rename(
        &p("conformance/sub"),
        &p("conformance/moved"),
        EntryKind::Folder,
    )
    .await
    .expect("move dir");
    assert_eq!(
        read_all(c, &p("conformance/moved/deep.txt"), None).await,
        b"deep"
    );
    assert!(!c.exists(&p("conformance/sub")).await.expect("exists"));

    // Walk finds nested objects.
    let (all, _) = c.walk(&StoragePath::root(), 1000).await.expect("walk");
    assert!(
        all.iter()
            .any(|e| e.path.as_str() == "conformance/moved/d.txt"),
        "{all:?}"
    );
    assert!(all
        .iter()
        .all(|e| !e.path.as_str().contains(".switchyard-")));

    // Folder copy from the same connector.
    c.copy_folder_from(c, &p("conformance/moved"), &p("conformance/copied"))
        .await
        .expect("copy dir");
    assert_eq!(
        read_all(c, &p("conformance/copied/d.txt"), None).await,
        b"bee"
    );

    // Publishing without replace never touches a taken name: staged services move on to the
    // next free one, services that write in place refuse.
    let taken = p("conformance/taken.txt");
    c.write(&taken, chunks(b"one", 8)).await.expect("first");
    let second = c
        .write_with(
            &taken,
            chunks(b"two", 8),
            Publish::NoReplace { alternatives: 3 },
            None,
        )
        .await;
    if c.publishes_in_place() {
        assert!(
            matches!(second, Err(StorageError::AlreadyExists)),
            "{second:?}"
        );
    } else {
        let e = second.expect("second");
        assert_eq!(e.path, p("conformance/taken (1).txt"));
        assert_eq!(read_all(c, &e.path, None).await, b"two");
    }
    assert_eq!(read_all(c, &taken, None).await, b"one");
    assert!(matches!(
        c.write_with(
            &taken,
            chunks(b"three", 8),
            Publish::NoReplace { alternatives: 0 },
            None
        )
        .await,
        Err(StorageError::AlreadyExists)
    ));
    // A rename never replaces either.
    assert!(matches!(
        c.rename(&p("conformance/a.bin"), &taken, EntryKind::File)
            .await,
        Err(StorageError::AlreadyExists)
    ));
    assert_eq!(read_all(c, &taken, None).await, b"one");
    // The longest names stage under a short name of their own.
    let long = p(&format!("conformance/{}", "l".repeat(250)));
    c.write(&long, chunks(b"long", 8))
        .await
        .expect("250-byte name");
    assert_eq!(read_all(c, &long, None).await, b"long");
    // A folder that exists is never created again.
    c.create_folder_new(&p("conformance/excl"))
        .await
        .expect("new folder");
    assert!(matches!(
        c.create_folder_new(&p("conformance/excl")).await,
        Err(StorageError::AlreadyExists)
    ));

    // Deletes.
    assert!(matches!(
        c.delete_folder(&base, false).await,
        Err(StorageError::NotEmpty)
    ));
    c.delete_file(&p("conformance/b.txt"))
        .await
        .expect("delete file");
    assert!(!c.exists(&p("conformance/b.txt")).await.expect("exists"));
    c.delete_folder(&base, true).await.expect("delete tree");
    assert!(!c.exists(&base).await.expect("exists"));
}

#[tokio::test]
async fn fs_connector() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = connect("fs", json!({"root": dir.path()}), dir.path()).await;
    conformance(&c).await;
    let staging = dir.path().join(".switchyard-partial");
    assert!(std::fs::read_dir(staging)
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

#[tokio::test]
async fn s3_connector() {
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("conformance").await.expect("bucket");
    let scratch = tempfile::tempdir().expect("tmp");
    let creds = json!({"bucket": "conformance", "endpoint": s3.endpoint(), "region": "us-east-1",
                       "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()});
    conformance(&connect("s3", creds, scratch.path()).await).await;
    let missing = connect(
        "s3",
        json!({"bucket": "no-such-bucket", "endpoint": s3.endpoint(),
        "access_key_id": "a", "secret_access_key": "b"}),
        scratch.path(),
    )
    .await;
    assert!(matches!(
        missing.check().await,
        Err(StorageError::InvalidSettings(_))
    ));
}

#[tokio::test]
async fn webdav_connector() {
    let dav = WebDavServer::start().await.expect("rclone webdav");
    let scratch = tempfile::tempdir().expect("tmp");
    let creds =
        json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()});
    conformance(&connect("webdav", creds, scratch.path()).await).await;
    let wrong = connect(
        "webdav",
        json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": "wrong"}),
        scratch.path(),
    )
    .await;
    let err = wrong.check().await.expect_err("wrong password");
    assert!(matches!(err, StorageError::InvalidSettings(_)), "{err:?}");
}

#[tokio::test]
async fn azblob_connector() {
    let az = AzuriteServer::start().await.expect("azurite");
    az.create_container("conformance").await.expect("container");
    let scratch = tempfile::tempdir().expect("tmp");
    let creds = json!({"container": "conformance", "endpoint": az.endpoint(),
                       "account_name": az.account_name(), "account_key": az.account_key()});
    conformance(&connect("azblob", creds, scratch.path()).await).await;
    // A key Azurite does not know is refused by its signature check: a settings error.
    let wrong = connect(
        "azblob",
        json!({"container": "conformance", "endpoint": az.endpoint(),
        "account_name": az.account_name(), "account_key": "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="}),
        scratch.path(),
    ).await;
    let err = wrong.check().await.expect_err("wrong key");
    assert!(matches!(err, StorageError::InvalidSettings(_)), "{err:?}");
}

#[tokio::test]
async fn sftp_connector() {
    let sftp = SftpServer::start().await.expect("sshd");
    let scratch = tempfile::tempdir().expect("tmp");
    let creds = json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
                       "root": sftp.dir()});
    conformance(&connect("sftp", creds, scratch.path()).await).await;
    let other_key = e2e::servers::SftpServer::start()
        .await
        .expect("second sshd");
    let wrong = connect(
        "sftp",
        json!({"endpoint": sftp.endpoint(), "user": sftp.user(),
        "key": other_key.private_key(), "root": sftp.dir()}),
        scratch.path(),
    )
    .await;
    assert!(wrong.check().await.is_err());
}

/// The same API flow through the hub over an S3 account and a WebDAV account, with a
/// cross-account copy between them.
#[tokio::test]
async fn api_over_s3_and_webdav() {
    let hub = TestHub::start().await.expect("hub");
    let s3 = S3Server::start().await.expect("moto");
    s3.create_bucket("api").await.expect("bucket");
    let dav = WebDavServer::start().await.expect("webdav");
    let s3acct = hub
        .connect(
            "s3",
            json!({"bucket": "api", "endpoint": s3.endpoint(),
        "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}),
        )
        .await
        .expect("s3");
    let davacct = hub
        .connect(
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(),
        "password": dav.password()}),
        )
        .await
        .expect("webdav");
    let s3id = s3acct["id"].as_i64().expect("id");
    let david = davacct["id"].as_i64().expect("id");
    let data = pattern(1_500_000, 4);
    let f = hub
        .upload(s3id, "root", "photo.jpg", data.clone())
        .await
        .expect("upload");
    assert_eq!(f["mime_type"], "image/jpeg");
    let copy = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!(
                "/v1/accounts/{s3id}/storage/files/{}/copy",
                f["id"].as_str().expect("id")
            )),
        )
        .json(&json!({"account": david, "parent_id": "root"}))
        .send()
        .await
        .expect("copy");
    assert_eq!(copy.status(), 201);
    let copied: serde_json::Value = copy.json().await.expect("json");
    assert_eq!(copied["account"], david);
    let body = hub
        .download(david, copied["id"].as_str().expect("id"))
        .await
        .expect("download");
    assert_eq!(sha256_hex(&body), sha256_hex(&data));
    assert_eq!(
        std::fs::read(dav.dir().join("photo.jpg"))
            .expect("on disk")
            .len(),
        data.len()
    );

    // A wrong WebDAV password is a 400 that names the provider's complaint.
    let r = hub
        .req(reqwest::Method::POST, &hub.url("/v1/accounts"))
        .json(&json!({"service": "webdav", "account": "bad", "credentials": {"endpoint": dav.endpoint(), "username": "u", "password": "nope"}}))
        .send()
        .await
        .expect("bad creds");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "invalid_credentials", "{v}");

    // The provider goes away: a clear 502, not a 500 or a hang.
    drop(s3);
    let r = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!(
                "/v1/accounts/{s3id}/storage/folders/root/contents"
            )),
        )
        .send()
        .await
        .expect("provider down");
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "service_unavailable", "{v}");
}

/// A provider that rate limits (nginx in front of WebDAV answering 429 with `Retry-After`, as
/// cloud front ends do): the client gets a 429 with `Retry-After`, never a 500; the account's
/// budget cools down for that long (no request reaches the provider meanwhile), then the
/// account works again.
#[tokio::test]
async fn provider_rate_limit_is_a_429_with_retry_after() {
    let hub = TestHub::start().await.expect("hub");
    let dav = WebDavServer::start().await.expect("webdav");
    std::fs::create_dir(dav.dir().join("limited")).expect("mkdir");
    std::fs::write(dav.dir().join("limited/a.txt"), b"hello").expect("file");
    let front = NginxServer::start(&format!(
        "location /limited {{ add_header Retry-After 2 always; return 429; }}\n\
         location / {{ proxy_pass {}; proxy_set_header Host $http_host; }}",
        dav.endpoint()
    ))
    .await
    .expect("nginx");
    let acct = hub
        .connect(
            "webdav",
            json!({"endpoint": front.endpoint(), "username": dav.username(),
                   "password": dav.password()}),
        )
        .await
        .expect("webdav through nginx");
    let id = acct["id"].as_i64().expect("id");
    let root: serde_json::Value = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!("/v1/accounts/{id}/storage/folders/root/contents")),
        )
        .send()
        .await
        .expect("root")
        .json()
        .await
        .expect("json");
    let folder = root["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == "limited")
        .expect("the limited folder")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let check = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 429);
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!(retry >= 1);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["error_code"], "rate_limited", "{v}");
        assert!(v["id"].is_string());
        retry
    };
    let r = hub
        .req(
            reqwest::Method::GET,
            &hub.url(&format!(
                "/v1/accounts/{id}/storage/folders/{folder}/contents"
            )),
        )
        .send()
        .await
        .expect("list");
    assert_eq!(check(r).await, 2, "the provider's own Retry-After");
    // Meanwhile the whole provider is cooling down: a request elsewhere waits up to the API's
    // bound (2 s) for the pause to end and then goes through, instead of hitting the provider
    // again at once.
    let started = std::time::Instant::now();
    let r = hub
        .req(
            reqwest::Method::POST,
            &hub.url(&format!("/v1/accounts/{id}/storage/files")),
        )
        .header(
            "X-Kloudless-Metadata",
            json!({"parent_id": "root", "name": "x.txt"}).to_string(),
        )
        .body("data")
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201, "the rest of the account still works");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1_000),
        "the upload waited out the provider's pause ({:?})",
        started.elapsed()
    );
    let f: serde_json::Value = r.json().await.expect("json");
    let r = hub
        .req(
            reqwest::Method::PATCH,
            &hub.url(&format!(
                "/v1/accounts/{id}/storage/files/{}",
                f["id"].as_str().expect("id")
            )),
        )
        .json(&json!({"parent_id": folder}))
        .send()
        .await
        .expect("move");
    assert_eq!(check(r).await, 2);
}

/// A request on file `id` of account `acc` with the API key.
fn file_req(
    hub: &TestHub,
    method: reqwest::Method,
    acc: i64,
    id: &str,
    rest: &str,
) -> reqwest::RequestBuilder {
    hub.req(
        method,
        &hub.url(&format!("/v1/accounts/{acc}/storage/files/{id}{rest}")),
    )
}

fn etag_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Conditional requests through the API on one account: strong ETags that follow the content
/// (not size + mtime), If-Match on PUT/PATCH/DELETE (stale → 412 and nothing changes),
/// If-None-Match (weak) → 304, the dates and their precedence, and racing conditional writers.
async fn conditional_suite(hub: &TestHub, acc: i64) {
    use reqwest::Method;
    let f = hub
        .upload(acc, "root", "cond.txt", b"version one".to_vec())
        .await
        .expect("upload");
    let id = f["id"].as_str().expect("id").to_owned();
    let meta = file_req(hub, Method::GET, acc, &id, "")
        .send()
        .await
        .expect("get");
    assert_eq!(meta.status(), 200);
    let v1 = etag_of(&meta);
    assert!(
        v1.starts_with('"') && v1.ends_with('"') && v1.len() > 8,
        "{v1}"
    );
    assert!(meta.headers().contains_key("last-modified"));
    let dl = file_req(hub, Method::GET, acc, &id, "/contents")
        .send()
        .await
        .expect("dl");
    assert_eq!(etag_of(&dl), v1, "metadata and download agree");

    // If-None-Match, weak comparison, on metadata and contents: 304 with the ETag, no body.
    for (rest, tag) in [
        ("", v1.clone()),
        ("/contents", format!("W/{v1}")),
        ("/contents", "*".into()),
    ] {
        let r = file_req(hub, Method::GET, acc, &id, rest)
            .header("If-None-Match", &tag)
            .send()
            .await
            .expect("304");
        assert_eq!(r.status(), 304, "{rest} {tag}");
        assert_eq!(etag_of(&r), v1);
        assert!(r.bytes().await.expect("body").is_empty());
    }
    let r = file_req(hub, Method::GET, acc, &id, "/contents")
        .header("If-None-Match", "\"something-else\"")
        .send()
        .await
        .expect("200");
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], b"version one");

    // A stale If-Match on PUT: 412, content unchanged.
    let r = file_req(hub, Method::PUT, acc, &id, "")
        .header("If-Match", "\"stale\"")
        .body("lost update")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 412);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "precondition_failed", "{v}");
    assert!(v["id"].is_string());
    assert_eq!(
        &hub.download(acc, &id).await.expect("dl")[..],
        b"version one"
    );

    // The matching ETag: replaced, and the new ETag is answered.
    let r = file_req(hub, Method::PUT, acc, &id, "")
        .header("If-Match", &v1)
        .body("version two!")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let v2 = etag_of(&r);
    assert_ne!(v2, v1);
    assert_eq!(
        &hub.download(acc, &id).await.expect("dl")[..],
        b"version two!"
    );
    let r = file_req(hub, Method::GET, acc, &id, "")
        .send()
        .await
        .expect("get");
    assert_eq!(etag_of(&r), v2, "the PUT's ETag is the file's");

    // Same size, new content, within the same second: the ETag still changes (a size + mtime
    // tag would not on SFTP and WebDAV, whose times have one-second resolution).
    let r = file_req(hub, Method::PUT, acc, &id, "")
        .body("version 2bis")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let r = file_req(hub, Method::GET, acc, &id, "")
        .send()
        .await
        .expect("get");
    let v3 = etag_of(&r);
    assert_ne!(v3, v2, "same size, different bytes");
    let r = file_req(hub, Method::PUT, acc, &id, "")
        .header("If-Match", &v2)
        .body("lost update")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 412, "v2 is stale now");
    assert_eq!(
        &hub.download(acc, &id).await.expect("dl")[..],
        b"version 2bis"
    );

    // Dates: If-Unmodified-Since in the past is 412; If-Match beats it.
    let past = "Sat, 01 Jan 2000 00:00:00 GMT";
    let future = httpdate::fmt_http_date(
        std::time::SystemTime::now() + std::time::Duration::from_secs(86_400),
    );
    let r = file_req(hub, Method::PUT, acc, &id, "")
        .header("If-Unmodified-Since", past)
        .body("lost update")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 412);
    assert_eq!(
        &hub.download(acc, &id).await.expect("dl")[..],
        b"version 2bis"
    );
    let r = file_req(hub, Method::GET, acc, &id, "/contents")
        .header("If-Modified-Since", &future)
        .send()
        .await
        .expect("ims");
    assert_eq!(r.status(), 304);
    let r = file_req(hub, Method::GET, acc, &id, "")
        .header("If-Modified-Since", past)
        .send()
        .await
        .expect("ims");
    assert_eq!(r.status(), 200);
    // If-None-Match (not matching) beats If-Modified-Since (which alone would be 304).
    let r = file_req(hub, Method::GET, acc, &id, "/contents")
        .header("If-None-Match", "\"other\"")
        .header("If-Modified-Since", &future)
        .send()
        .await
        .expect("inm");
    assert_eq!(r.status(), 200);

    // PATCH: stale → 412 and the file keeps its name; matching (plus a past
    // If-Unmodified-Since, which If-Match overrides) → renamed.
    let r = file_req(hub, Method::PATCH, acc, &id, "")
        .header("If-Match", &v1)
        .json(&json!({"name": "renamed.txt"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 412);
    let r = file_req(hub, Method::GET, acc, &id, "")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "not renamed");
    let r = file_req(hub, Method::PATCH, acc, &id, "")
        .header("If-Match", &v3)
        .header("If-Unmodified-Since", past)
        .json(&json!({"name": "renamed.txt"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    let moved: serde_json::Value = r.json().await.expect("json");
    assert_eq!(moved["name"], "renamed.txt");
    let id = moved["id"].as_str().expect("id").to_owned();

    // Racing writers holding the same ETag: exactly one wins, the others get 412.
    let r = file_req(hub, Method::GET, acc, &id, "")
        .send()
        .await
        .expect("get");
    let tag = etag_of(&r);
    let racers = (0..8).map(|i| {
        let req = file_req(hub, Method::PUT, acc, &id, "")
            .header("If-Match", &tag)
            .body(format!("racer {i}"));
        async move { (i, req.send().await.expect("put").status().as_u16()) }
    });
    let results = futures::future::join_all(racers).await;
    let winners: Vec<_> = results.iter().filter(|(_, s)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(_, s)| *s == 200 || *s == 412),
        "{results:?}"
    );
    let body = hub.download(acc, &id).await.expect("dl");
    assert_eq!(body, format!("racer {}", winners[0].0).as_bytes());

    // DELETE: stale → 412 and the file stays; `*` matches any existing file.
    let r = file_req(hub, Method::DELETE, acc, &id, "")
        .header("If-Match", &tag)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 412);
    assert_eq!(
        file_req(hub, Method::GET, acc, &id, "")
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let r = file_req(hub, Method::DELETE, acc, &id, "")
        .header("If-Match", "*")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(
        file_req(hub, Method::GET, acc, &id, "")
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
}

#[tokio::test]
async fn conditional_requests_on_every_connector() {
    let hub = TestHub::start().await.expect("hub");
    let (s3, dav, sftp) = tokio::join!(
        S3Server::start(),
        WebDavServer::start(),
        SftpServer::start()
    );
    let (s3, dav, sftp) = (s3.expect("moto"), dav.expect("webdav"), sftp.expect("sshd"));
    s3.create_bucket("cond").await.expect("bucket");
    let mut accounts = vec![("fs", hub.creds.account_id)];
    for (service, creds) in [
        (
            "s3",
            json!({"bucket": "cond", "endpoint": s3.endpoint(), "region": "us-east-1",
                      "access_key_id": s3.access_key_id(), "secret_access_key": s3.secret_access_key()}),
        ),
        (
            "webdav",
            json!({"endpoint": dav.endpoint(), "username": dav.username(), "password": dav.password()}),
        ),
        (
            "sftp",
            json!({"endpoint": sftp.endpoint(), "user": sftp.user(), "key": sftp.private_key(),
                        "root": sftp.dir()}),
        ),
    ] {
        let a = hub.connect(service, creds).await.expect("connect");
        accounts.push((service, a["id"].as_i64().expect("id")));
    }
    for (service, acc) in accounts {
        eprintln!("conditional requests on {service}");
        conditional_suite(&hub, acc).await;
    }
}
