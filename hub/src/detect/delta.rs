//! Delta APIs of Dropbox (`files/list_folder/continue`), Google Drive (`changes.list` with
//! page tokens) and OneDrive (`/delta`): parsers from their JSON answers to our items, the
//! cursor each keeps between polls, and the step that turns items into changes against what
//! the detector knew (by path on Dropbox, by the provider's id on Drive and OneDrive, which
//! is how their renames and moves are recognised). Sans IO; the polling loop that calls the
//! providers is not wired up (no provider is reachable from here).

use super::listing::{walk_key, Change, Seen};
use serde::Deserialize;
use std::collections::HashMap;

/// Services whose changes come from a delta API rather than a listing diff.
pub fn is_delta_service(service: &str) -> bool {
    matches!(service, "dropbox" | "gdrive" | "onedrive")
}

/// What a delta item says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Present {
        folder: bool,
        size: Option<i64>,
        mtime_ms: Option<i64>,
        /// The provider's version (Dropbox `rev`, Drive `md5Checksum`/`version`, OneDrive
        /// `cTag`/`eTag`).
        version: Option<String>,
    },
    Deleted,
}

/// One item of a delta page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The provider's stable id (Drive, OneDrive; Dropbox files and folders, not deletions).
    pub id: Option<String>,
    /// The path from the account root when the provider gives it (Dropbox), without a
    /// leading slash.
    pub path: Option<String>,
    pub name: String,
    /// The parent's id (Drive, OneDrive).
    pub parent_id: Option<String>,
    pub state: State,
}

/// Where to go after a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// More pages now: call again with this cursor.
    More(String),
    /// Caught up: store this cursor and poll again at the interval.
    Done(String),
}

/// One parsed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: Next,
}

/// A page that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("the {service} delta answer is not what its API documents: {reason}")]
    Malformed {
        service: &'static str,
        reason: String,
    },
    /// The cursor is no longer valid (Dropbox `reset`, Drive/OneDrive 410): list everything
    /// again and diff it against the snapshot.
    #[error("the {0} cursor expired; a full listing is needed")]
    Reset(&'static str),
}

fn malformed(service: &'static str, e: impl std::fmt::Display) -> DeltaError {
    DeltaError::Malformed {
        service,
        reason: e.to_string(),
    }
}

fn rfc3339_ms(s: Option<&str>) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s?, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The stored cursor of a service: `<service>:<provider cursor>`, so a cursor is never
/// handed to another service's API.
pub fn store_cursor(service: &str, cursor: &str) -> String {
    format!("{service}:{cursor}")
}

/// The provider cursor of a stored one, if it belongs to `service`.
pub fn load_cursor<'a>(service: &str, stored: &'a str) -> Option<&'a str> {
    stored
        .strip_prefix(service)
        .and_then(|r| r.strip_prefix(':'))
}

// ---- Dropbox ----

#[derive(Deserialize)]
struct DropboxPage {
    entries: Vec<DropboxEntry>,
    cursor: String,
    has_more: bool,
}

#[derive(Deserialize)]
struct DropboxEntry {
    #[serde(rename = ".tag")]
    tag: String,
    name: String,
    id: Option<String>,
    path_display: Option<String>,
    path_lower: Option<String>,
    server_modified: Option<String>,
    rev: Option<String>,
    size: Option<i64>,
}

/// A `files/list_folder` or `files/list_folder/continue` answer (200), or its 409 error.
pub fn dropbox(status: u16, body: &str) -> Result<Page, DeltaError> {
    const S: &str = "dropbox";
    if status == 409 {
        let v: serde_json::Value = serde_json::from_str(body).map_err(|e| malformed(S, e))?;
        if v["error"][".tag"] == "reset" {
            return Err(DeltaError::Reset(S));
        }
        return Err(malformed(S, format!("error {}", v["error_summary"])));
    }
    let p: DropboxPage = serde_json::from_str(body).map_err(|e| malformed(S, e))?;
    let mut items = Vec::with_capacity(p.entries.len());
    for e in p.entries {
        let path = e
            .path_display
            .or(e.path_lower)
            .ok_or_else(|| malformed(S, "an entry without a path"))?;
        let state = match e.tag.as_str() {
            "file" => State::Present {
                folder: false,
                size: e.size,
                mtime_ms: rfc3339_ms(e.server_modified.as_deref()),
                version: e.rev,
            },
            "folder" => State::Present {
                folder: true,
                size: None,
                mtime_ms: None,
                version: None,
            },
            "deleted" => State::Deleted,
            other => return Err(malformed(S, format!("unknown entry tag {other:?}"))),
        };
        items.push(Item {
            id: e.id,
            path: Some(path.trim_start_matches('/').to_owned()),
            name: e.name,
            parent_id: None,
            state,
        });
    }
    Ok(Page {
        items,
        next: if p.has_more {
            Next::More(p.cursor)
        } else {
            Next::Done(p.cursor)
        },
    })
}

// ---- Google Drive ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrivePage {
    next_page_token: Option<String>,
    new_start_page_token: Option<String>,
    changes: Vec<DriveChange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveChange {
    change_type: Option<String>,
    #[serde(default)]
    removed: bool,
    file_id: Option<String>,
    file: Option<DriveFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveFile {
    id: String,
    name: String,
    mime_type: String,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default)]
    trashed: bool,
    modified_time: Option<String>,
    size: Option<String>,
    md5_checksum: Option<String>,
    version: Option<String>,
}

/// A `changes.list` answer (fields `nextPageToken,newStartPageToken,changes(...)`); a 410
/// or a 404 on the page token means it expired.
pub fn gdrive(status: u16, body: &str) -> Result<Page, DeltaError> {
    const S: &str = "gdrive";
    if status == 410 || status == 404 {
        return Err(DeltaError::Reset(S));
    }
    let p: DrivePage = serde_json::from_str(body).map_err(|e| malformed(S, e))?;
    let mut items = Vec::new();
    for c in p.changes {
        // Shared-drive changes (`changeType: drive`) are not objects of the account.
        if c.change_type.as_deref() == Some("drive") {
            continue;
        }
        let id = c
            .file_id
            .clone()
            .or_else(|| c.file.as_ref().map(|f| f.id.clone()));
        match c.file {
            Some(f) if !c.removed && !f.trashed => {
                let folder = f.mime_type == "application/vnd.google-apps.folder";
                items.push(Item {
                    id: Some(f.id),
                    path: None,
                    name: f.name,
                    parent_id: f.parents.first().cloned(),
                    state: State::Present {
                        folder,
                        size: f.size.and_then(|s| s.parse().ok()),
                        mtime_ms: rfc3339_ms(f.modified_time.as_deref()),
                        version: f.md5_checksum.or(f.version),
                    },
                });
            }
            f => items.push(Item {
                id,
                path: None,
                name: f.map(|f| f.name).unwrap_or_default(),
                parent_id: None,
                state: State::Deleted,
            }),
        }
    }
    let next = match (p.next_page_token, p.new_start_page_token) {
        (Some(t), _) => Next::More(t),
        (None, Some(t)) => Next::Done(t),
        (None, None) => return Err(malformed(S, "neither nextPageToken nor newStartPageToken")),
    };
    Ok(Page { items, next })
}

// ---- OneDrive ----

#[derive(Deserialize)]
struct GraphPage {
    value: Vec<GraphItem>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphItem {
    id: String,
    #[serde(default)]
    name: String,
    parent_reference: Option<GraphParent>,
    file: Option<serde_json::Value>,
    folder: Option<serde_json::Value>,
    root: Option<serde_json::Value>,
    deleted: Option<serde_json::Value>,
    size: Option<i64>,
    last_modified_date_time: Option<String>,
    c_tag: Option<String>,
    e_tag: Option<String>,
}

#[derive(Deserialize)]
struct GraphParent {
    id: Option<String>,
}

/// A `/drive/root/delta` answer; `410 Gone` (`resyncRequired`) means the token expired.
pub fn onedrive(status: u16, body: &str) -> Result<Page, DeltaError> {
    const S: &str = "onedrive";
    if status == 410 {
        return Err(DeltaError::Reset(S));
    }
    let p: GraphPage = serde_json::from_str(body).map_err(|e| malformed(S, e))?;
    let mut items = Vec::new();
    for i in p.value {
        if i.root.is_some() {
            continue;
        }
        let state = if i.deleted.is_some() {
            State::Deleted
        } else {
            let folder = i.folder.is_some();
            if !folder && i.file.is_none() {
                // Packages, OneNote notebooks and the like: not files or folders we serve.
                continue;
            }
            State::Present {
                folder,
                size: (!folder).then_some(i.size).flatten(),
                mtime_ms: rfc3339_ms(i.last_modified_date_time.as_deref()),
                version: i.c_tag.or(i.e_tag),
            }
        };
        items.push(Item {
            id: Some(i.id),
            path: None,
            name: i.name,
            parent_id: i.parent_reference.and_then(|p| p.id),
            state,
        });
    }
    let next = match (p.next_link, p.delta_link) {
        (Some(l), _) => Next::More(l),
        (None, Some(l)) => Next::Done(l),
        (None, None) => return Err(malformed(S, "neither @odata.nextLink nor @odata.deltaLink")),
    };
    Ok(Page { items, next })
}

/// Turns a page's items into changes against what the detector knew: `known_path` looks up
/// the snapshot by path (Dropbox), `known_id` by provider id (Drive, OneDrive: `Seen::ident`).
/// `root_id` is the id of the account root on id-based services. Items whose parent is
/// unknown (outside the account root) are skipped. A known id under a new path is a rename or
/// a move; the page's own folders are known to the items after them (providers send parents
/// first).
pub fn changes(
    items: Vec<Item>,
    root_id: Option<&str>,
    mut known_path: impl FnMut(&str) -> Option<Seen>,
    mut known_id: impl FnMut(&str) -> Option<Seen>,
) -> Vec<Change> {
    let mut page_paths: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for it in items {
        let before = match (&it.path, &it.id) {
            (Some(p), _) => known_path(p),
            (None, Some(id)) => page_paths
                .get(id)
                .map(|p| Seen {
                    key: walk_key(p),
                    path: p.clone(),
                    folder: true,
                    version: None,
                    size: None,
                    mtime_ms: None,
                    ident: Some(id.clone()),
                })
                .or_else(|| known_id(id)),
            (None, None) => None,
        };
        let path = match (&it.path, &it.parent_id) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(parent)) if Some(parent.as_str()) == root_id => Some(it.name.clone()),
            (None, Some(parent)) => page_paths
                .get(parent)
                .cloned()
                .or_else(|| known_id(parent).map(|s| s.path))
                .map(|pp| format!("{pp}/{}", it.name)),
            (None, None) => None,
        };
        match it.state {
            State::Deleted => {
                if let Some(b) = before {
                    out.push(Change::Removed(b));
                }
            }
            State::Present {
                folder,
                size,
                mtime_ms,
                version,
            } => {
                let Some(path) = path else { continue };
                let now = Seen {
                    key: walk_key(&path),
                    path: path.clone(),
                    folder,
                    version,
                    size,
                    mtime_ms,
                    ident: it.id.clone(),
                };
                if folder {
                    if let Some(id) = &it.id {
                        page_paths.insert(id.clone(), path.clone());
                    }
                }
                match before {
                    None => out.push(Change::Added(now)),
                    Some(b) if b.path != now.path => out.push(Change::Renamed { from: b, to: now }),
                    Some(b) if !b.same_as(&now) && !folder => {
                        out.push(Change::Updated { old: b, new: now })
                    }
                    Some(_) => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPBOX: &str = include_str!("fixtures/dropbox_list_folder_continue.json");
    const DROPBOX_LAST: &str = include_str!("fixtures/dropbox_list_folder_continue_last.json");
    const GDRIVE: &str = include_str!("fixtures/gdrive_changes_list.json");
    const GDRIVE_LAST: &str = include_str!("fixtures/gdrive_changes_list_last.json");
    const ONEDRIVE: &str = include_str!("fixtures/onedrive_delta.json");
    const ONEDRIVE_LAST: &str = include_str!("fixtures/onedrive_delta_last.json");

    fn seen(path: &str, folder: bool, version: Option<&str>, ident: Option<&str>) -> Seen {
        Seen {
            key: walk_key(path),
            path: path.into(),
            folder,
            version: version.map(str::to_owned),
            size: (!folder).then_some(1),
            mtime_ms: None,
            ident: ident.map(str::to_owned),
        }
    }

    fn names(c: &[Change]) -> Vec<String> {
        c.iter()
            .map(|c| match c {
                Change::Added(s) => format!("add {}", s.path),
                Change::Updated { new, .. } => format!("update {}", new.path),
                Change::Removed(s) => format!("delete {}", s.path),
                Change::Renamed { from, to } => format!("rename {} -> {}", from.path, to.path),
            })
            .collect()
    }

    #[test]
    fn dropbox_pages_and_cursor() {
        let p = dropbox(200, DROPBOX).expect("page");
        assert_eq!(p.items.len(), 4);
        assert_eq!(
            p.next,
            Next::More("AAHDG3s5LnLxvkQqi2RhqTnBA3GQmhe8w6pqp2QYT3ZWqZZF".into())
        );
        assert_eq!(p.items[0].path.as_deref(), Some("Homework/math"));
        assert_eq!(
            p.items[1].state,
            State::Present {
                folder: false,
                size: Some(7212),
                mtime_ms: Some(1_431_445_838_000),
                version: Some("a1c10ce0dd78".into())
            }
        );
        let last = dropbox(200, DROPBOX_LAST).expect("last");
        assert!(matches!(last.next, Next::Done(_)));
        // Known before: the notes file (now changed) and the one deleted; the rest is new.
        let known = |p: &str| match p {
            "Homework/math/Prime_Numbers.txt" => Some(seen(p, false, Some("old-rev"), None)),
            "Homework/old notes.txt" => Some(seen(p, false, Some("x"), None)),
            _ => None,
        };
        let c = changes(p.items, None, known, |_| None);
        assert_eq!(
            names(&c),
            vec![
                "add Homework/math",
                "update Homework/math/Prime_Numbers.txt",
                "add Homework/math/Sets.txt",
                "delete Homework/old notes.txt",
            ]
        );
        assert_eq!(
            dropbox(
                409,
                r#"{"error_summary": "reset/..", "error": {".tag": "reset"}}"#
            ),
            Err(DeltaError::Reset("dropbox"))
        );
        assert!(matches!(
            dropbox(200, "{}"),
            Err(DeltaError::Malformed { .. })
        ));
        let stored = store_cursor("dropbox", "abc:def");
        assert_eq!(load_cursor("dropbox", &stored), Some("abc:def"));
        assert_eq!(load_cursor("gdrive", &stored), None);
    }

    #[test]
    fn gdrive_pages_renames_and_tokens() {
        let p = gdrive(200, GDRIVE).expect("page");
        assert_eq!(p.next, Next::More("8361".into()));
        let last = gdrive(200, GDRIVE_LAST).expect("last");
        assert_eq!(last.next, Next::Done("8362".into()));
        assert!(last.items.is_empty());
        // The report was known as "Q1/report.pdf" (id 1Rep); the draft was known and is gone.
        let known = |id: &str| match id {
            "1Rep" => Some(seen(
                "Q1/report.pdf",
                false,
                Some("5d41402abc4b2a76b9719d911017c592"),
                Some("1Rep"),
            )),
            "1Q1" => Some(seen("Q1", true, None, Some("1Q1"))),
            "1Draft" => Some(seen("draft.txt", false, Some("d"), Some("1Draft"))),
            "1Trash" => Some(seen("trashed.txt", false, Some("t"), Some("1Trash"))),
            _ => None,
        };
        let c = changes(p.items, Some("0AROOT"), |_| None, known);
        assert_eq!(
            names(&c),
            vec![
                "add Q2",
                "rename Q1/report.pdf -> Q2/report-final.pdf",
                "add Q2/notes.txt",
                "delete draft.txt",
                "delete trashed.txt",
            ]
        );
        assert_eq!(gdrive(410, ""), Err(DeltaError::Reset("gdrive")));
    }

    #[test]
    fn onedrive_pages_and_delta_link() {
        let p = onedrive(200, ONEDRIVE).expect("page");
        assert!(matches!(&p.next, Next::More(l) if l.contains("$skiptoken")));
        let last = onedrive(200, ONEDRIVE_LAST).expect("last");
        assert!(matches!(&last.next, Next::Done(l) if l.contains("token=")));
        let known = |id: &str| match id {
            "01DOCS" => Some(seen("Documents", true, None, Some("01DOCS"))),
            "01BUDGET" => Some(seen(
                "Documents/budget.xlsx",
                false,
                Some("\"c:{B1},1\""),
                Some("01BUDGET"),
            )),
            "01OLD" => Some(seen("Documents/old.txt", false, Some("o"), Some("01OLD"))),
            _ => None,
        };
        let c = changes(p.items, Some("01ROOT"), |_| None, known);
        assert_eq!(
            names(&c),
            vec![
                "update Documents/budget.xlsx",
                "add Photos",
                "add Photos/beach.jpg",
                "delete Documents/old.txt",
            ]
        );
        assert_eq!(onedrive(410, ""), Err(DeltaError::Reset("onedrive")));
    }
}
