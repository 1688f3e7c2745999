//! Requests shaped the way each Kloudless SDK sends them (kloudless-js and the file picker add
//! a trailing slash, Python's `requests` sends `True`), and the answer shapes they read
//! (`status_code` in errors, exactly `application/json`, 204 without a body, capabilities).

use e2e::TestHub;
use reqwest::Method;
use serde_json::Value;

/// A value for a path parameter that names nothing (so no route changes anything) but has the
/// shape the route documents.
fn absent(name: &str, path: &str) -> &'static str {
    match name {
        "acc" | "app" | "spoke" | "id" if !path.contains("/storage/") => "987654321",
        "id" if path.contains("/folders/") => "DZm9vL25vdGhlcmU",
        "id" if path.contains("/files/") => "FZm9vL25vdGhlcmU",
        "id" => "987654321",
        "key" => "987654321",
        "token" => "987654321",
        _ => "987654321",
    }
}

/// Every route of the OpenAPI document answers with a trailing slash as it does without one:
/// never the router's own 404 or 405. Each is asked with names that exist nowhere, so nothing
/// changes, and with both kinds of credentials.
#[tokio::test]
async fn every_route_takes_a_trailing_slash() {
    let hub = TestHub::start().await.expect("hub");
    let doc: Value = hub
        .http
        .get(hub.url("/v1/openapi.json/"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() > 30, "{}", paths.len());
    let mut asked = 0;
    for (template, item) in paths {
        for (method, op) in item.as_object().expect("item") {
            let Ok(m) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            let mut path = template.clone();
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let name = p["name"].as_str().expect("name");
                    let mut value = absent(name, template);
                    // An account route names the dev account where the route is about what is
                    // inside it (a missing account would answer before routing was tested).
                    if name == "acc" && template.contains("/storage/") {
                        value = "me";
                    }
                    path = path.replace(&format!("{{{name}}}"), value);
                }
            }
            for auth in [
                format!("APIKey {}", hub.creds.api_key),
                format!("Bearer {}", hub.creds.meta_token),
            ] {
                let r = hub
                    .http
                    .request(m.clone(), hub.url(&format!("{path}/")))
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .expect("send");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert_ne!(status, 405, "{method} {path}/: {body}");
                assert!(
                    !(status == 404 && body["message"] == "route not found"),
                    "{method} {path}/ is not routed: {body}"
                );
                asked += 1;
            }
        }
    }
    assert!(asked > 60, "{asked}");

    // The exact request kloudless-js sends for an account.
    let r = hub
        .req(
            Method::GET,
            &hub.url(&format!(
                "/v1/accounts/{}/?retrieve_full=True",
                hub.creds.account_id
            )),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["id"], hub.creds.account_id);
    assert!(v["properties"]["capabilities"].is_object(), "{v}");
    // And a folder listing with the file picker's slash.
    let r = hub
        .req(Method::GET, &hub.acc("/storage/folders/root/contents/"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    // Only one slash is forgiven: `//` is not a route.
    let r = hub
        .req(Method::GET, &hub.acc("/storage/folders/root/contents//"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 404);
}

/// Query booleans as every SDK sends them: `true`/`True`/`1` and their opposites; anything
/// else is a 400 that names the value.
#[tokio::test]
async fn query_booleans_in_any_sdk_spelling() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    for (value, full) in [
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("1", true),
        ("false", false),
        ("False", false),
        ("0", false),
    ] {
        let v: Value = hub
            .req(
                Method::GET,
                &hub.url(&format!("/v1/accounts/{acc}?retrieve_full={value}")),
            )
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(v["properties"].is_object(), full, "{value}: {v}");
    }
    let r = hub
        .req(
            Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}?retrieve_full=yes-please")),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error_code"], "invalid_parameters", "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("yes-please"),
        "{v}"
    );

    // `overwrite=True` (node's multipart init, Python) replaces; `overwrite=False` renames.
    let up = |name: &str, q: &str, body: &'static str| {
        let meta = serde_json::json!({"name": name, "parent_id": "root"}).to_string();
        hub.req(Method::POST, &hub.acc(&format!("/storage/files?{q}")))
            .header("X-Kloudless-Metadata", meta)
            .body(body)
            .send()
    };
    let a: Value = up("b.txt", "overwrite=True", "one")
        .await
        .expect("up")
        .json()
        .await
        .expect("json");
    let b: Value = up("b.txt", "overwrite=True", "two")
        .await
        .expect("up")
        .json()
        .await
        .expect("json");
    assert_eq!(a["id"], b["id"]);
    let c: Value = up("b.txt", "overwrite=False", "three")
        .await
        .expect("up")
        .json()
        .await
        .expect("json");
    assert_eq!(c["name"], "b (1).txt", "{c}");

    // `recursive=True` deletes a folder with something in it.
    let f: Value = hub
        .req(Method::POST, &hub.acc("/storage/folders"))
        .json(&serde_json::json!({"parent_id": "root", "name": "full"}))
        .send()
        .await
        .expect("mkdir")
        .json()
        .await
        .expect("json");
    let fid = f["id"].as_str().expect("id");
    hub.upload(acc, fid, "x.txt", b"x".to_vec())
        .await
        .expect("upload");
    let r = hub
        .req(
            Method::DELETE,
            &hub.acc(&format!("/storage/folders/{fid}?recursive=True")),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
}

/// The answer shapes the SDKs read: errors carry `status_code`; JSON is exactly
/// `application/json` (kloudless-js and the Java SDK compare it whole); a DELETE is 204 with no
/// body; capabilities are `{name: {"value": bool}}`.
#[tokio::test]
async fn answers_are_shaped_for_every_sdk() {
    let hub = TestHub::start().await.expect("hub");
    let acc = hub.creds.account_id;
    for (method, url, status) in [
        (
            Method::GET,
            hub.url("/v1/accounts/987654321/storage/folders/root"),
            404u16,
        ),
        (Method::GET, hub.url("/v1/nothing-here"), 404),
        (Method::PUT, hub.acc("/storage/search"), 405),
        (Method::GET, hub.acc("/storage/search"), 400),
    ] {
        let r = hub.req(method, &url).send().await.expect("send");
        assert_eq!(r.status().as_u16(), status, "{url}");
        assert_eq!(r.headers()["content-type"], "application/json", "{url}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["status_code"], status, "{v}");
        assert!(v["error_code"].is_string() && v["message"].is_string() && v["id"].is_string());
    }
    let f = hub
        .upload(acc, "root", "d.txt", b"d".to_vec())
        .await
        .expect("upload");
    let r = hub
        .req(
            Method::GET,
            &hub.acc(&format!("/storage/files/{}", f["id"].as_str().expect("id"))),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["content-type"], "application/json");

    // DELETEs of the Kloudless routes: 204, nothing after the headers.
    let folder: Value = hub
        .req(Method::POST, &hub.acc("/storage/folders"))
        .json(&serde_json::json!({"parent_id": "root", "name": "gone"}))
        .send()
        .await
        .expect("mkdir")
        .json()
        .await
        .expect("json");
    for url in [
        hub.acc(&format!("/storage/files/{}", f["id"].as_str().expect("id"))),
        hub.acc(&format!(
            "/storage/folders/{}",
            folder["id"].as_str().expect("id")
        )),
    ] {
        let r = hub.req(Method::DELETE, &url).send().await.expect("delete");
        assert_eq!(r.status(), 204, "{url}");
        assert!(r.headers().get("content-type").is_none(), "{url}");
        assert!(r.bytes().await.expect("body").is_empty(), "{url}");
    }

    let v: Value = hub
        .req(
            Method::GET,
            &hub.url(&format!("/v1/accounts/{acc}?retrieve_full=true")),
        )
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let caps = v["properties"]["capabilities"]
        .as_object()
        .expect("capabilities");
    // The names the Kloudless SDKs' tests gate on, each `{"value": bool}`.
    for name in [
        "can_upload_file",
        "can_rename_file",
        "can_move_file",
        "can_copy_file",
        "can_update_file_content",
        "can_delete_file",
        "can_create_folder",
        "can_rename_folder",
        "can_move_folder",
        "can_copy_folder",
        "can_delete_folder",
        "can_search_file_name",
        "multipart_uploads_supported_for_files",
        "permissions_supported_for_files",
        "can_list_properties",
    ] {
        assert!(caps[name]["value"].is_boolean(), "{name}: {v}");
    }
    assert_eq!(caps["can_upload_file"]["value"], true);
    assert_eq!(caps["permissions_supported_for_files"]["value"], false);
    // fs: folders are objects, any part size down to a byte.
    assert_eq!(caps["folders_are_objects"]["value"], true);
    assert_eq!(caps["multipart_min_part_size"]["value"], 1);
    assert_eq!(caps["multipart_max_parts"]["value"], 10_000);
}
