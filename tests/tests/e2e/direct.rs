//! Client-direct data through a spoke's HTTPS endpoint: `upload_url`, the 307 redirect of large
//! downloads, and signed URLs that are single purpose, expiring and tamper-proof (403), and
//! good for one upload (410 after).

use crate::spokes::{wait_healthy, SpokeProc};
use e2e::{HubOptions, TestHub};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn upload_url_and_redirected_download_through_a_spoke() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some("offload:\n  threshold: 1048576\nnetwork:\n  heartbeat_ms: 250\n".into()),
        max_upload_bytes: 4 << 20,
        ..Default::default()
    })
    .await
    .expect("hub");
    let root = tempfile::tempdir().expect("tmp");
    let port = e2e::servers::free_port();
    let advertise = format!("127.0.0.1:{port}");
    let spoke =
        SpokeProc::start_full(&hub, root.path(), "edge", &["--advertise", &advertise], &[]).await;
    wait_healthy(&hub, spoke.id).await;
    e2e::assert_eventually!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok(),
        Duration::from_secs(10),
        "the data endpoint to listen"
    );
    // Clients trust the network CA (published to them like any private CA).
    let ca = std::fs::read(spoke.dir.join("ca.crt")).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let ask = |name: &str, ttl: u64| {
        hub.req(reqwest::Method::POST, &hub.acc("/storage/files/upload_url"))
            .json(&json!({"parent_id": "root", "name": name, "expires_in": ttl}))
            .send()
    };
    let r = ask("direct.bin", 600).await.expect("upload_url");
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.expect("json");
    let url = u["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!("https://{advertise}/v1/data/")),
        "{url}"
    );
    let data = e2e::pattern(3 << 20, 5);

    // Tampered signature, tampered expiry, wrong method: 403, nothing written.
    let sig_at = url.find("sig=").expect("sig") + 4;
    let mut bad_sig = url.clone();
    let flip = if &url[sig_at..sig_at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    bad_sig.replace_range(sig_at..sig_at + 1, flip);
    let exp_at = url.find("exp=").expect("exp") + 4;
    let mut bad_exp = url.clone();
    bad_exp.insert(exp_at, '9');
    // (Small bodies: the spoke refuses before reading, and may close on a large one.)
    for bad in [&bad_sig, &bad_exp] {
        let r = client.put(bad).body("x").send().await.expect("put");
        assert_eq!(r.status(), 403, "{bad}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error_code"], "forbidden");
    }
    let r = client.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 403, "an upload URL does not download");
    assert!(!hub.dev_root().join("direct.bin").exists());

    // The real upload: streamed by the spoke into the account, answered with the file.
    let r = client
        .put(&url)
        .body(data.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.expect("json");
    assert_eq!(f["id"], u["id"]);
    assert_eq!(f["size"], data.len());
    assert_eq!(
        std::fs::read(hub.dev_root().join("direct.bin")).expect("file"),
        data
    );
    let r = client.put(&url).body("x").send().await.expect("again");
    assert_eq!(r.status(), 410, "an upload URL is single use");

    // A large plain upload is redirected to the spoke (307 keeps method and body); a small one
    // is served by the hub; a declared size over the limit is refused up front.
    let upload = |name: &str, body: Vec<u8>| {
        let meta = json!({"name": name, "parent_id": "root"}).to_string();
        let no_follow = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        no_follow
            .post(hub.acc("/storage/files"))
            .header("Authorization", hub.apikey())
            .header("X-Kloudless-Metadata", meta)
            .body(body)
            .send()
    };
    let big = e2e::pattern(2 << 20, 9);
    let r = upload("big.bin", big.clone()).await.expect("upload");
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    assert!(
        location.starts_with(&format!("https://{advertise}/v1/data/")),
        "{location}"
    );
    assert!(
        !hub.dev_root().join("big.bin").exists(),
        "the hub wrote nothing"
    );
    let r = client
        .post(&location)
        .body(big.clone())
        .send()
        .await
        .expect("follow");
    assert_eq!(r.status(), 201);
    let big_file: Value = r.json().await.expect("json");
    assert_eq!(big_file["size"], big.len());
    assert!(std::fs::read(hub.dev_root().join("big.bin")).expect("file") == big);
    let r = upload("small.bin", b"tiny".to_vec()).await.expect("small");
    assert_eq!(r.status(), 201);
    // Over the limit: refused from the headers alone, before any body is sent.
    let mut tcp = tokio::net::TcpStream::connect(hub.base_url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/accounts/{}/storage/files HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         X-Kloudless-Metadata: {{\"name\":\"huge.bin\",\"parent_id\":\"root\"}}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        hub.creds.account_id,
        hub.apikey(),
        5 << 20
    );
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tcp.write_all(head.as_bytes()).await.expect("send");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer before the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");

    // A large download redirects to the spoke; the signed URL serves exactly the file.
    let id = f["id"].as_str().expect("id");
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_follow
        .get(hub.acc(&format!("/storage/files/{id}/contents")))
        .header("Authorization", hub.apikey())
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    assert!(
        location.starts_with(&format!("https://{advertise}/")),
        "{location}"
    );
    let body = client.get(&location).send().await.expect("follow");
    assert_eq!(body.status(), 200);
    assert!(body.bytes().await.expect("bytes").as_ref() == data.as_slice());
    // A range request is served by the hub itself.
    let r = no_follow
        .get(hub.acc(&format!("/storage/files/{id}/contents")))
        .header("Authorization", hub.apikey())
        .header("Range", "bytes=0-9")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), 206);

    // Expired: a one-second URL used late.
    let u: Value = ask("late.bin", 1)
        .await
        .expect("upload_url")
        .json()
        .await
        .expect("json");
    let exp: u64 = u["url"]
        .as_str()
        .and_then(|url| url.split("exp=").nth(1))
        .and_then(|r| r.split('&').next())
        .and_then(|e| e.parse().ok())
        .expect("exp");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    e2e::assert_eventually!(now() > exp, Duration::from_secs(5), "the URL to expire");
    let r = client
        .put(u["url"].as_str().expect("url"))
        .body("late")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["message"].as_str().unwrap_or("").contains("expired"),
        "{v}"
    );
    // Bad input to upload_url.
    let r = ask("x.bin", 0).await.expect("ttl 0");
    assert_eq!(r.status(), 400);
}

/// Without a spoke that serves data, `upload_url` says so clearly and large downloads are
/// served by the hub itself.
#[tokio::test]
async fn no_data_spoke_means_503_for_upload_url_and_inline_downloads() {
    let hub = TestHub::start_with(HubOptions {
        yaml: Some("offload:\n  threshold: 1024\n".into()),
        ..Default::default()
    })
    .await
    .expect("hub");
    let r = hub
        .req(reqwest::Method::POST, &hub.acc("/storage/files/upload_url"))
        .json(&json!({"parent_id": "root", "name": "a.bin"}))
        .send()
        .await
        .expect("upload_url");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "no_data_spoke");
    let data = e2e::pattern(4096, 1);
    let f = hub
        .upload(hub.creds.account_id, "root", "a.bin", data.clone())
        .await
        .expect("upload");
    let got = hub
        .download(hub.creds.account_id, f["id"].as_str().expect("id"))
        .await
        .expect("download");
    assert_eq!(got.as_ref(), data.as_slice());
}
