//! The delta-API detectors (`hub::detect::provider`) against providers replaying recorded
//! answers ([`e2e::replay`]; no Dropbox, Google Drive or OneDrive server is reachable from
//! here): the first poll lists the account whole and records nothing, later polls continue
//! from the stored cursor and record renames (a folder's as one event), moves, additions,
//! changes and deletions; an expired access token is refreshed once and the request sent
//! again; an expired cursor lists everything again and records what changed meanwhile,
//! deletions included; a link handed back to another origin is refused without being asked.
//!
//! The accounts are written into the database directly: connecting one through the API
//! checks the credentials with the provider's own servers.

use super::detect::{events_after, expect_events, polled_after};
use e2e::replay::{Answer, Replay};
use e2e::{HubOptions, TestHub};
use reqwest::Method;
use serde_json::{json, Value};

async fn hub_for(api: &Replay) -> TestHub {
    TestHub::start_with(HubOptions {
        yaml: Some(api.oauth_yaml(true)),
        ..Default::default()
    })
    .await
    .expect("hub")
}

/// Stores an account of `service` with `creds` (the API would check them with the provider).
async fn account(hub: &TestHub, service: &str, creds: Value) -> i64 {
    hub.store_account(service, creds).await.expect("account")
}

/// Waits for the first poll (the baseline) and one more, checks they recorded nothing, and
/// returns the feed's cursor.
async fn after_baseline(hub: &TestHub, acc: i64) -> String {
    let t = polled_after(hub, acc, 0).await;
    polled_after(hub, acc, t).await;
    let (events, cursor) = events_after(hub, acc, None).await;
    assert!(events.is_empty(), "a baseline records nothing: {events:#?}");
    cursor
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).expect("a JSON body")
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

const LIST: &str = "/2/files/list_folder";
const CONTINUE: &str = "/2/files/list_folder/continue";

fn dropbox_page(entries: Value, cursor: &str, more: bool) -> String {
    json!({"entries": entries, "cursor": cursor, "has_more": more}).to_string()
}

/// Dropbox with nothing new since `cursor`.
fn dropbox_idle(cursor: &str) -> [Answer; 1] {
    [Answer::new(
        Method::POST,
        CONTINUE,
        200,
        dropbox_page(json!([]), cursor, false),
    )]
}

fn dbx_file(path: &str, id: &str, rev: &str) -> Value {
    json!({".tag": "file", "name": name_of(path), "id": id, "path_display": path,
        "path_lower": path.to_lowercase(), "rev": rev, "size": 5,
        "server_modified": "2026-11-30T10:00:00Z"})
}

fn dbx_folder(path: &str, id: &str) -> Value {
    json!({".tag": "folder", "name": name_of(path), "id": id, "path_display": path,
        "path_lower": path.to_lowercase()})
}

fn dbx_deleted(path: &str) -> Value {
    json!({".tag": "deleted", "name": name_of(path), "path_display": path,
        "path_lower": path.to_lowercase()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropbox_list_folder_continue() {
    let api = Replay::start().await.expect("replay");
    let hub = hub_for(&api).await;
    // The first poll: an access token from the refresh token, then the account root listed
    // whole, in two pages (the root is /Apps/sy).
    let token = |t: &str| {
        Answer::new(
            Method::POST,
            "/oauth2/token",
            200,
            json!({"access_token": t, "token_type": "bearer", "expires_in": 14400}).to_string(),
        )
    };
    api.script([
        token("t1"),
        Answer::new(
            Method::POST,
            LIST,
            200,
            dropbox_page(
                json!([
                    dbx_folder("/Apps/sy/Homework", "id:h"),
                    dbx_file("/Apps/sy/Homework/a.txt", "id:a", "r1")
                ]),
                "c1",
                true,
            ),
        ),
        Answer::new(
            Method::POST,
            CONTINUE,
            200,
            dropbox_page(
                json!([dbx_file("/Apps/sy/b.txt", "id:b", "r1")]),
                "c2",
                false,
            ),
        ),
    ]);
    api.idle(dropbox_idle("c2"));
    let acc = account(
        &hub,
        "dropbox",
        json!({"refresh_token": "rt", "client_id": "cid", "client_secret": "cs",
            "root": "/Apps/sy"}),
    )
    .await;
    let cursor = after_baseline(&hub, acc).await;
    let got = api.got();
    let grant = "grant_type=refresh_token&refresh_token=rt&client_id=cid&client_secret=cs";
    assert_eq!(
        (got[0].path.as_str(), got[0].body.as_str()),
        ("/oauth2/token", grant)
    );
    assert_eq!(got[1].path, LIST);
    assert_eq!(got[1].authorization.as_deref(), Some("Bearer t1"));
    let first = json_of(&got[1].body);
    assert_eq!(
        (first["path"].as_str(), first["recursive"].as_bool()),
        (Some("/Apps/sy"), Some(true))
    );
    assert_eq!(json_of(&got[2].body)["cursor"], "c1");
    assert_eq!(json_of(&got[3].body)["cursor"], "c2");

    // The access token expired: refreshed once, then the page asked again. A file renamed (its old path
    // deleted first), a folder renamed with its file, a file added.
    let before = api.got().len();
    api.script([
        Answer::new(
            Method::POST,
            CONTINUE,
            401,
            r#"{"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}"#,
        ),
        token("t2"),
        Answer::new(
            Method::POST,
            CONTINUE,
            200,
            dropbox_page(
                json!([dbx_deleted("/Apps/sy/b.txt"), dbx_file("/Apps/sy/c.txt", "id:b", "r1"),
                    dbx_deleted("/Apps/sy/Homework"), dbx_folder("/Apps/sy/Work", "id:h"),
                    dbx_file("/Apps/sy/Work/a.txt", "id:a", "r1"),
                    dbx_file("/Apps/sy/d.txt", "id:d", "r1")]),
                "c3",
                false,
            ),
        ),
    ]);
    api.idle(dropbox_idle("c3"));
    let cursor = expect_events(
        &hub,
        acc,
        &cursor,
        &[
            "rename /c.txt <- b.txt",
            "rename /Work <- Homework",
            "add /d.txt",
        ],
    )
    .await;
    let got = api.got();
    let poll: Vec<_> = got[before..].iter().filter(|g| g.scripted).collect();
    assert_eq!(poll.len(), 3, "{poll:#?}");
    assert_eq!(poll[0].authorization.as_deref(), Some("Bearer t1"));
    assert_eq!(poll[1].body, grant);
    assert_eq!(poll[2].authorization.as_deref(), Some("Bearer t2"));
    assert!(
        got.last()
            .is_some_and(|g| g.authorization.as_deref() == Some("Bearer t2")),
        "the refreshed token is kept"
    );

    // The cursor expired: everything is listed again; what changed meanwhile is recorded,
    // the file that disappeared included.
    api.script([
        Answer::new(
            Method::POST,
            CONTINUE,
            409,
            r#"{"error_summary": "reset/..", "error": {".tag": "reset"}}"#,
        ),
        Answer::new(
            Method::POST,
            LIST,
            200,
            dropbox_page(
                json!([
                    dbx_folder("/Apps/sy/Work", "id:h"),
                    dbx_file("/Apps/sy/Work/a.txt", "id:a", "r2"),
                    dbx_file("/Apps/sy/d.txt", "id:d", "r1")
                ]),
                "c4",
                false,
            ),
        ),
    ]);
    api.idle(dropbox_idle("c4"));
    expect_events(&hub, acc, &cursor, &["update /Work/a.txt", "delete /c.txt"]).await;
    assert_eq!(api.pending(), 0);
    let last = api.got().last().cloned().expect("a request");
    assert_eq!(json_of(&last.body)["cursor"], "c4");
    assert!(api.unscripted().is_empty(), "{:#?}", api.unscripted());
}

fn drive_file(id: &str, name: &str, parent: &str, md5: &str) -> Value {
    json!({"id": id, "name": name, "mimeType": "text/plain", "parents": [parent],
        "size": "5", "md5Checksum": md5, "modifiedTime": "2026-11-30T10:00:00.000Z"})
}

fn drive_folder(id: &str, name: &str, parent: &str) -> Value {
    json!({"id": id, "name": name, "mimeType": "application/vnd.google-apps.folder",
        "parents": [parent]})
}

fn drive_changes(changes: Value, next: &str) -> String {
    json!({"kind": "drive#changeList", "newStartPageToken": next, "changes": changes}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_drive_changes_list() {
    let api = Replay::start().await.expect("replay");
    let hub = hub_for(&api).await;
    const FILES: &str = "/drive/v3/files";
    const CHANGES: &str = "/drive/v3/changes";
    const START: &str = "/drive/v3/changes/startPageToken";
    let root = Answer::new(
        Method::GET,
        "/drive/v3/files/root",
        200,
        r#"{"id": "0AROOT"}"#,
    );
    let idle = |token: &str| {
        [
            root.clone(),
            Answer::new(Method::GET, CHANGES, 200, drive_changes(json!([]), token)),
        ]
    };
    let changes = |body: String| Answer::new(Method::GET, CHANGES, 200, body);
    // The first poll: the start page token, then the folders walked (the root in two pages,
    // then the folder found in it).
    api.script([
        Answer::new(Method::GET, START, 200, r#"{"startPageToken": "100"}"#),
        Answer::new(
            Method::GET,
            FILES,
            200,
            json!({"nextPageToken": "p2", "files": [drive_folder("F1", "Q1", "0AROOT")]})
                .to_string(),
        ),
        Answer::new(
            Method::GET,
            FILES,
            200,
            json!({"files": [drive_file("X", "x.txt", "0AROOT", "m1")]}).to_string(),
        ),
        Answer::new(
            Method::GET,
            FILES,
            200,
            json!({"files": [drive_file("R", "r.pdf", "F1", "m1")]}).to_string(),
        ),
    ]);
    api.idle(idle("100"));
    let acc = account(&hub, "gdrive", json!({"access_token": "tok"})).await;
    let cursor = after_baseline(&hub, acc).await;
    assert_eq!(api.pending(), 0);
    let got = api.got();
    let walk: Vec<_> = got.iter().filter(|g| g.path == FILES).collect();
    assert_eq!(
        walk[0].param("q").as_deref(),
        Some("'0AROOT' in parents and trashed = false")
    );
    assert_eq!(walk[1].param("pageToken").as_deref(), Some("p2"));
    assert_eq!(
        walk[2].param("q").as_deref(),
        Some("'F1' in parents and trashed = false")
    );
    let next = got
        .iter()
        .rfind(|g| g.path == CHANGES)
        .expect("a changes.list");
    assert_eq!(next.param("pageToken").as_deref(), Some("100"));
    assert_eq!(next.param("includeRemoved").as_deref(), Some("true"));
    assert_eq!(next.authorization.as_deref(), Some("Bearer tok"));

    // The folder renamed (only it is named), its file changed, x.txt moved into it; a shared
    // drive's change is not the account's.
    api.script([changes(drive_changes(
        json!([
            {"changeType": "file", "fileId": "F1", "removed": false,
             "file": drive_folder("F1", "Q2", "0AROOT")},
            {"changeType": "file", "fileId": "R", "removed": false,
             "file": drive_file("R", "r.pdf", "F1", "m2")},
            {"changeType": "file", "fileId": "X", "removed": false,
             "file": drive_file("X", "x.txt", "F1", "m1")},
            {"changeType": "drive", "driveId": "SD"},
        ]),
        "101",
    ))]);
    api.idle(idle("101"));
    let cursor = expect_events(
        &hub,
        acc,
        &cursor,
        &[
            "rename /Q2 <- Q1",
            "update /Q2/r.pdf",
            "move /Q2/x.txt <- x.txt",
        ],
    )
    .await;

    // Trashed, removed, added.
    let mut x = drive_file("X", "x.txt", "F1", "m1");
    x["trashed"] = json!(true);
    api.script([changes(drive_changes(
        json!([
            {"changeType": "file", "fileId": "X", "removed": false, "file": x},
            {"changeType": "file", "fileId": "R", "removed": true},
            {"changeType": "file", "fileId": "N", "removed": false,
             "file": drive_file("N", "n.txt", "0AROOT", "m1")},
        ]),
        "102",
    ))]);
    api.idle(idle("102"));
    let cursor = expect_events(
        &hub,
        acc,
        &cursor,
        &["delete /Q2/x.txt", "delete /Q2/r.pdf", "add /n.txt"],
    )
    .await;

    // The page token expired (410): the drive is walked again; a file appeared and n.txt
    // disappeared meanwhile.
    api.script([
        Answer::new(Method::GET, CHANGES, 410, r#"{"error": {"code": 410}}"#),
        Answer::new(Method::GET, START, 200, r#"{"startPageToken": "200"}"#),
        Answer::new(
            Method::GET,
            FILES,
            200,
            json!({"files": [drive_folder("F1", "Q2", "0AROOT"),
                drive_file("L", "late.txt", "0AROOT", "m1")]})
            .to_string(),
        ),
        Answer::new(Method::GET, FILES, 200, json!({"files": []}).to_string()),
    ]);
    api.idle(idle("200"));
    expect_events(&hub, acc, &cursor, &["add /late.txt", "delete /n.txt"]).await;
    assert_eq!(api.pending(), 0);
    let last = api
        .got()
        .into_iter()
        .rfind(|g| g.path == CHANGES)
        .expect("changes");
    assert_eq!(last.param("pageToken").as_deref(), Some("200"));
    assert!(api.unscripted().is_empty(), "{:#?}", api.unscripted());
}

fn graph_page(value: Value, next: Option<&str>, delta: Option<&str>) -> String {
    let mut v = json!({"value": value});
    if let Some(n) = next {
        v["@odata.nextLink"] = json!(n);
    }
    if let Some(d) = delta {
        v["@odata.deltaLink"] = json!(d);
    }
    v.to_string()
}

fn graph_file(id: &str, name: &str, parent: &str, ctag: &str) -> Value {
    json!({"id": id, "name": name, "parentReference": {"id": parent}, "file": {},
        "size": 5, "cTag": ctag, "lastModifiedDateTime": "2026-11-30T10:00:00Z"})
}

fn graph_folder(id: &str, name: &str, parent: &str) -> Value {
    json!({"id": id, "name": name, "parentReference": {"id": parent}, "folder": {"childCount": 1}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_delta_and_hostile_answers() {
    let api = Replay::start().await.expect("replay");
    let elsewhere = Replay::start().await.expect("replay");
    let hub = hub_for(&api).await;
    const DELTA: &str = "/v1.0/me/drive/root/delta";
    let root = Answer::new(
        Method::GET,
        "/v1.0/me/drive/root",
        200,
        r#"{"id": "01ROOT"}"#,
    );
    let idle = |token: &str| {
        [
            root.clone(),
            Answer::new(
                Method::GET,
                DELTA,
                200,
                graph_page(
                    json!([]),
                    None,
                    Some(&format!("{{base}}{DELTA}?token={token}")),
                ),
            ),
        ]
    };
    // The first poll: /delta without a token enumerates the drive (the root item first).
    api.script([
        Answer::new(
            Method::GET,
            DELTA,
            200,
            graph_page(
                json!([{"id": "01ROOT", "name": "root", "root": {}, "folder": {}},
                    graph_folder("01DOCS", "Docs", "01ROOT"),
                    graph_file("01A", "a.txt", "01DOCS", "c1")]),
                Some(&format!("{{base}}{DELTA}?token=n1")),
                None,
            ),
        ),
        Answer::new(
            Method::GET,
            DELTA,
            200,
            graph_page(
                json!([graph_file("01B", "b.txt", "01ROOT", "c1")]),
                None,
                Some(&format!("{{base}}{DELTA}?token=d1")),
            ),
        ),
    ]);
    api.idle(idle("d1"));
    let acc = account(&hub, "onedrive", json!({"access_token": "tok"})).await;
    let cursor = after_baseline(&hub, acc).await;
    assert_eq!(api.pending(), 0);
    let deltas: Vec<_> = api.got().into_iter().filter(|g| g.path == DELTA).collect();
    assert_eq!(deltas[0].query, "");
    assert_eq!(deltas[1].param("token").as_deref(), Some("n1"));
    assert_eq!(deltas[2].param("token").as_deref(), Some("d1"));

    // The folder renamed, its file changed, a file deleted.
    api.script([Answer::new(
        Method::GET,
        DELTA,
        200,
        graph_page(
            json!([graph_folder("01DOCS", "Papers", "01ROOT"),
                graph_file("01A", "a.txt", "01DOCS", "c2"),
                {"id": "01B", "deleted": {"state": "deleted"}}]),
            None,
            Some(&format!("{{base}}{DELTA}?token=d2")),
        ),
    )]);
    api.idle(idle("d2"));
    let cursor = expect_events(
        &hub,
        acc,
        &cursor,
        &[
            "rename /Papers <- Docs",
            "update /Papers/a.txt",
            "delete /b.txt",
        ],
    )
    .await;

    // Hostile answers: the next page "is" on another origin; a page of 17 MiB. Each poll
    // stops without asking the other origin or reading past 16 MiB, records nothing and keeps
    // its cursor; the next poll continues from it.
    let huge = json!({"value": [], "padding": "x".repeat(17 << 20)}).to_string();
    api.script([
        Answer::new(
            Method::GET,
            DELTA,
            200,
            graph_page(
                json!([]),
                Some(&format!("{}{DELTA}?token=steal", elsewhere.base())),
                None,
            ),
        ),
        Answer::new(Method::GET, DELTA, 200, huge),
    ]);
    let asked = |token: &str| {
        api.got()
            .iter()
            .filter(|g| g.param("token").as_deref() == Some(token))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen = asked("d2");
    while api.pending() > 0 || asked("d2") < seen + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no poll after the hostile page"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(elsewhere.got().is_empty(), "{:#?}", elsewhere.got());
    expect_events(&hub, acc, &cursor, &[]).await;
    assert!(api.unscripted().is_empty(), "{:#?}", api.unscripted());
}
