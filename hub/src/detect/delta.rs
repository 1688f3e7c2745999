//! Delta APIs of Dropbox (`files/list_folder/continue`), Google Drive (`changes.list` with
//! page tokens) and OneDrive (`/delta`), sans IO: parsers from their JSON answers to our items,
//! the cursor each keeps between polls, and the step that turns a page of items into changes
//! and snapshot writes against what the detector knew (by path on Dropbox, by the provider's
//! id on Drive and OneDrive, which is how their renames and moves are recognised). The polling
//! loop that calls the providers is `provider.rs`.

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
            Some(f) if !c.removed && !f.trashed => items.push(drive_item(f)),
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

/// A Drive file as an item.
fn drive_item(f: DriveFile) -> Item {
    let folder = f.mime_type == DRIVE_FOLDER;
    Item {
        id: Some(f.id),
        path: None,
        name: f.name,
        parent_id: f.parents.first().cloned(),
        // Folders compare by being folders (their times change with their contents).
        state: State::Present {
            folder,
            size: f.size.and_then(|s| s.parse().ok()).filter(|_| !folder),
            mtime_ms: rfc3339_ms(f.modified_time.as_deref()).filter(|_| !folder),
            version: f.md5_checksum.or(f.version).filter(|_| !folder),
        },
    }
}

/// The MIME type of Drive folders.
pub const DRIVE_FOLDER: &str = "application/vnd.google-apps.folder";

/// The fields a Drive detector asks for on files (`files.list`, and in `changes.list`).
pub const DRIVE_FILE_FIELDS: &str =
    "id,name,mimeType,parents,trashed,modifiedTime,size,md5Checksum,version";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveFiles {
    next_page_token: Option<String>,
    files: Vec<DriveFile>,
}

/// A `files.list` answer (one folder's children, for a full listing of a Drive account):
/// its items and the next page's token.
pub fn gdrive_files(status: u16, body: &str) -> Result<(Vec<Item>, Option<String>), DeltaError> {
    const S: &str = "gdrive";
    if status != 200 {
        return Err(malformed(S, format!("files.list answered {status}")));
    }
    let p: DriveFiles = serde_json::from_str(body).map_err(|e| malformed(S, e))?;
    let items = p
        .files
        .into_iter()
        .filter(|f| !f.trashed)
        .map(drive_item)
        .collect();
    Ok((items, p.next_page_token))
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

/// One write to a delta detector's snapshot, applied in order ([`crate::db::Db::snapshot_apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapOp {
    Put(Seen),
    Delete(String),
    /// Everything below a removed folder (its sort key).
    DeleteTree(String),
    /// Everything below a renamed folder, to below its new path.
    MoveTree {
        from_key: String,
        to_key: String,
        from_path: String,
        to_path: String,
    },
}

/// `path` relative to folder `dir`, when it lies below it.
fn below<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    path.strip_prefix(dir).and_then(|r| r.strip_prefix('/'))
}

/// What the detector knows while it takes a page: the snapshot rows the page names (looked up
/// by sort key and by ident before the page), and what the page's own changes did to them, so
/// an item sees the items before it (a folder renamed earlier in the page moved its children;
/// a folder added earlier is the parent of the next items).
#[derive(Debug, Default)]
pub struct Known {
    by_key: HashMap<String, Seen>,
    by_ident: HashMap<String, Seen>,
    /// Folders renamed by this page, in order.
    moves: Vec<(String, String)>,
    /// Folders removed by this page.
    removed: Vec<String>,
    at_path: HashMap<String, Option<Seen>>,
    with_ident: HashMap<String, Option<Seen>>,
}

impl Known {
    pub fn new(by_key: HashMap<String, Seen>, by_ident: HashMap<String, Seen>) -> Self {
        Self {
            by_key,
            by_ident,
            ..Default::default()
        }
    }

    /// The snapshot keys and idents a page's items name: what [`Known::new`] needs.
    pub fn wanted(items: &[Item]) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut idents = Vec::new();
        for it in items {
            if let Some(p) = &it.path {
                keys.push(walk_key(p));
            }
            idents.extend(it.id.iter().chain(&it.parent_id).cloned());
        }
        keys.sort_unstable();
        keys.dedup();
        idents.sort_unstable();
        idents.dedup();
        (keys, idents)
    }

    /// The sort keys of the paths where a page's id-named items land, as far as the rows
    /// looked up by ident tell (their parents): a second lookup, so that an item put where the
    /// snapshot knew another object replaces it visibly.
    pub fn landing_keys(
        items: &[Item],
        root_id: Option<&str>,
        by_ident: &HashMap<String, Seen>,
    ) -> Vec<String> {
        let mut keys: Vec<String> = items
            .iter()
            .filter(|it| it.path.is_none() && it.state != State::Deleted)
            .filter_map(|it| {
                let parent = it.parent_id.as_deref()?;
                if Some(parent) == root_id {
                    return Some(walk_key(&it.name));
                }
                let p = by_ident.get(parent).filter(|s| s.folder)?;
                Some(walk_key(&format!("{}/{}", p.path, it.name)))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Adds rows found by sort key (the second lookup).
    pub fn add_keys(&mut self, rows: HashMap<String, Seen>) {
        self.by_key.extend(rows);
    }

    /// A row as it is after this page's folder renames and removals (`None`: removed).
    fn current(&self, mut s: Seen) -> Option<Seen> {
        for (from, to) in &self.moves {
            if let Some(rest) = below(&s.path, from) {
                s.path = format!("{to}/{rest}");
                s.key = walk_key(&s.path);
            }
        }
        if self.removed.iter().any(|r| below(&s.path, r).is_some()) {
            return None;
        }
        Some(s)
    }

    /// What is at `path` now.
    pub fn at_path(&self, path: &str) -> Option<Seen> {
        if let Some(v) = self.at_path.get(path) {
            return v.clone();
        }
        let s = self.current(self.by_key.get(&walk_key(path))?.clone())?;
        // Moved away with its folder, or itself renamed by this page.
        if s.path != path {
            return None;
        }
        if let Some(i) = &s.ident {
            if let Some(now) = self.with_ident.get(i) {
                return now.clone().filter(|n| n.path == path);
            }
        }
        Some(s)
    }

    /// The object with the provider's id `ident`, where it is now.
    pub fn with_ident(&self, ident: &str) -> Option<Seen> {
        if let Some(v) = self.with_ident.get(ident) {
            return v.clone();
        }
        let s = self.current(self.by_ident.get(ident)?.clone())?;
        match self.at_path.get(&s.path) {
            // Its path was taken or emptied by this page: it is not there any more.
            Some(now) if now.as_ref().and_then(|n| n.ident.as_deref()) != Some(ident) => None,
            _ => Some(s),
        }
    }

    fn note(&mut self, c: &Change) {
        match c {
            Change::Added(s) | Change::Updated { new: s, .. } => self.put(s),
            Change::Removed(s) => {
                self.gone(s);
                if s.folder {
                    self.removed.push(s.path.clone());
                }
            }
            Change::Renamed { from, to } => {
                self.gone(from);
                self.put(to);
                if from.folder {
                    self.moves.push((from.path.clone(), to.path.clone()));
                }
            }
        }
    }

    fn put(&mut self, s: &Seen) {
        self.at_path.insert(s.path.clone(), Some(s.clone()));
        if let Some(i) = &s.ident {
            self.with_ident.insert(i.clone(), Some(s.clone()));
        }
    }

    fn gone(&mut self, s: &Seen) {
        self.at_path.insert(s.path.clone(), None);
        if let Some(i) = &s.ident {
            self.with_ident.insert(i.clone(), None);
        }
    }
}

/// What a page did: the changes to record (in order), the snapshot writes, and the sort keys
/// of every object the page showed present (a full listing stamps them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub ops: Vec<SnapOp>,
    pub present: Vec<String>,
}

/// Turns a page's items into changes against what the detector knew (`known`): by path on
/// Dropbox (then by id, which is how its renames are recognised), by the provider's id on
/// Drive and OneDrive, whose items name their parent (`root_id`: the account root's id). A
/// known id under a new path is a rename or a move; a renamed or removed folder takes its
/// subtree along (one event, like the API's). Items whose parent is unknown (outside the
/// account root) are skipped; providers send parents before their children.
pub fn changes(items: Vec<Item>, root_id: Option<&str>, known: &mut Known) -> Applied {
    let mut out = Applied::default();
    // Deletions wait for the end of the page: a rename may come as the old path's deletion
    // followed by the object (same id) at its new path, which is then one rename. A deletion
    // of a path something on the page is put at or below goes first, as the provider ordered.
    let mut deletions: Vec<Item> = Vec::new();
    for it in items {
        if it.state == State::Deleted {
            deletions.push(it);
            continue;
        }
        if let Some(p) = item_path(&it, root_id, known) {
            let mut i = 0;
            while i < deletions.len() {
                let d = deletion_path(&deletions[i], known);
                if d.is_some_and(|d| d == p || below(&p, &d).is_some()) {
                    let d = deletions.remove(i);
                    take(d, root_id, known, &mut out);
                } else {
                    i += 1;
                }
            }
        }
        take(it, root_id, known, &mut out);
    }
    for d in deletions {
        take(d, root_id, known, &mut out);
    }
    out
}

/// Where a present item is, from the account root (`None`: outside it, its parent unknown, or
/// a name the API could not serve: `..`, a `/` inside a name, control characters — what a
/// hostile provider might send).
fn item_path(it: &Item, root_id: Option<&str>, known: &Known) -> Option<String> {
    if it.path.is_none() && shared::storage::validate_name(&it.name).is_err() {
        return None;
    }
    let path = match (&it.path, &it.parent_id) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(parent)) if Some(parent.as_str()) == root_id => Some(it.name.clone()),
        (None, Some(parent)) => known
            .with_ident(parent)
            .filter(|s| s.folder)
            .map(|s| format!("{}/{}", s.path, it.name)),
        (None, None) => None,
    };
    path.filter(|p| !p.is_empty() && shared::storage::StoragePath::parse(p).is_ok())
}

/// The path a deletion removes, as known now.
fn deletion_path(it: &Item, known: &Known) -> Option<String> {
    match (&it.path, &it.id) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(id)) => known.with_ident(id).map(|s| s.path),
        (None, None) => None,
    }
}

/// Takes one item: what it changes against `known`, into `out`.
fn take(it: Item, root_id: Option<&str>, known: &mut Known, out: &mut Applied) {
    let before = match (&it.path, &it.id) {
        (Some(p), id) => known
            .at_path(p)
            .or_else(|| id.as_deref().and_then(|i| known.with_ident(i))),
        (None, Some(id)) => known.with_ident(id),
        (None, None) => None,
    };
    let change = match it.state {
        State::Deleted => before.map(Change::Removed),
        State::Present {
            folder,
            size,
            mtime_ms,
            ref version,
        } => {
            let version = version.clone();
            let Some(path) = item_path(&it, root_id, known) else {
                // Moved out of the account root (its new parent is not below it).
                if let Some(b) = before {
                    push(out, known, Change::Removed(b));
                }
                return;
            };
            let now = Seen {
                key: walk_key(&path),
                path,
                folder,
                version,
                size,
                mtime_ms,
                ident: it.id.clone(),
            };
            out.present.push(now.key.clone());
            // Drive and OneDrive name objects by id: another object the snapshot knew at this
            // path was replaced (Drive also allows two files of one name in a folder; the
            // later one wins the path).
            if it.path.is_none() {
                if let Some(occupant) = known.at_path(&now.path) {
                    if occupant.ident != now.ident
                        && before.as_ref().is_none_or(|b| b.key != occupant.key)
                    {
                        push(out, known, Change::Removed(occupant));
                    }
                }
            }
            match before {
                None => Some(Change::Added(now)),
                Some(b) if b.folder != now.folder => {
                    push(out, known, Change::Removed(b));
                    Some(Change::Added(now))
                }
                Some(b) if b.path != now.path => Some(Change::Renamed { from: b, to: now }),
                Some(b) if !folder && !b.same_as(&now) => {
                    Some(Change::Updated { old: b, new: now })
                }
                Some(b) => {
                    // The same version; keep what the provider says now (its id may be new if
                    // the object was replaced by an identical one).
                    if b != now {
                        known.put(&now);
                        out.ops.push(SnapOp::Put(now));
                    }
                    None
                }
            }
        }
    };
    if let Some(c) = change {
        push(out, known, c);
    }
}

/// Records `c` in `out` with its snapshot writes, and in `known` for the items after it.
fn push(out: &mut Applied, known: &mut Known, c: Change) {
    match &c {
        Change::Added(s) | Change::Updated { new: s, .. } => out.ops.push(SnapOp::Put(s.clone())),
        Change::Removed(s) => {
            out.ops.push(SnapOp::Delete(s.key.clone()));
            if s.folder {
                out.ops.push(SnapOp::DeleteTree(s.key.clone()));
            }
        }
        Change::Renamed { from, to } => {
            out.ops.push(SnapOp::Delete(from.key.clone()));
            out.ops.push(SnapOp::Put(to.clone()));
            if from.folder {
                out.ops.push(SnapOp::MoveTree {
                    from_key: from.key.clone(),
                    to_key: to.key.clone(),
                    from_path: from.path.clone(),
                    to_path: to.path.clone(),
                });
            }
        }
    }
    known.note(&c);
    out.changes.push(c);
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

    /// A snapshot holding `rows`, as a page's lookups would find it.
    fn knowing(rows: Vec<Seen>) -> Known {
        let by_key = rows.iter().map(|s| (s.key.clone(), s.clone())).collect();
        let by_ident = rows
            .iter()
            .filter_map(|s| Some((s.ident.clone()?, s.clone())))
            .collect();
        Known::new(by_key, by_ident)
    }

    fn item(id: &str, path: Option<&str>, name: &str, parent: Option<&str>, state: State) -> Item {
        Item {
            id: Some(id.into()),
            path: path.map(str::to_owned),
            name: name.into(),
            parent_id: parent.map(str::to_owned),
            state,
        }
    }

    fn file(version: &str) -> State {
        State::Present {
            folder: false,
            size: Some(1),
            mtime_ms: None,
            version: Some(version.into()),
        }
    }

    impl State {
        fn with_size(self, n: i64) -> State {
            match self {
                State::Present {
                    folder,
                    mtime_ms,
                    version,
                    ..
                } => State::Present {
                    folder,
                    size: Some(n),
                    mtime_ms,
                    version,
                },
                s => s,
            }
        }
    }

    const FOLDER: State = State::Present {
        folder: true,
        size: None,
        mtime_ms: None,
        version: None,
    };

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
        let mut known = knowing(vec![
            seen(
                "Homework/math/Prime_Numbers.txt",
                false,
                Some("old-rev"),
                None,
            ),
            seen("Homework/old notes.txt", false, Some("x"), None),
        ]);
        let c = changes(p.items, None, &mut known).changes;
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
        let mut known = knowing(vec![
            seen(
                "Q1/report.pdf",
                false,
                Some("5d41402abc4b2a76b9719d911017c592"),
                Some("1Rep"),
            ),
            seen("Q1", true, None, Some("1Q1")),
            seen("draft.txt", false, Some("d"), Some("1Draft")),
            seen("trashed.txt", false, Some("t"), Some("1Trash")),
        ]);
        let c = changes(p.items, Some("0AROOT"), &mut known).changes;
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
        let mut known = knowing(vec![
            seen("Documents", true, None, Some("01DOCS")),
            seen(
                "Documents/budget.xlsx",
                false,
                Some("\"c:{B1},1\""),
                Some("01BUDGET"),
            ),
            seen("Documents/old.txt", false, Some("o"), Some("01OLD")),
        ]);
        let c = changes(p.items, Some("01ROOT"), &mut known).changes;
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

    #[test]
    fn a_renamed_folder_takes_its_subtree_in_one_event() {
        // Dropbox: the old folder deleted (no id), the folder and its file at the new path
        // (ids kept); then the file is changed on a later page.
        let mut known = knowing(vec![
            seen("Homework", true, None, Some("id:h")),
            seen("Homework/a.txt", false, Some("r1"), Some("id:a")),
        ]);
        let deleted = Item {
            id: None,
            ..item("", Some("Homework"), "Homework", None, State::Deleted)
        };
        let page = vec![
            deleted,
            item("id:h", Some("Work"), "Work", None, FOLDER),
            item("id:a", Some("Work/a.txt"), "a.txt", None, file("r1")),
        ];
        let a = changes(page, None, &mut known);
        assert_eq!(names(&a.changes), vec!["rename Homework -> Work"]);
        assert_eq!(
            a.ops.last(),
            Some(&SnapOp::MoveTree {
                from_key: walk_key("Homework"),
                to_key: walk_key("Work"),
                from_path: "Homework".into(),
                to_path: "Work".into(),
            })
        );
        assert_eq!(a.present, vec![walk_key("Work"), walk_key("Work/a.txt")]);
        // The deletion may also come after the new entries.
        let mut known = knowing(vec![
            seen("Homework", true, None, Some("id:h")),
            seen("Homework/a.txt", false, Some("r1"), Some("id:a")),
        ]);
        let page = vec![
            item("id:h", Some("Work"), "Work", None, FOLDER),
            item("id:a", Some("Work/a.txt"), "a.txt", None, file("r2")),
            Item {
                id: None,
                ..item("", Some("Homework"), "Homework", None, State::Deleted)
            },
        ];
        let a = changes(page, None, &mut known);
        assert_eq!(
            names(&a.changes),
            vec!["rename Homework -> Work", "update Work/a.txt"]
        );
    }

    #[test]
    fn id_services_follow_folder_renames_moves_out_and_type_changes() {
        // Drive/OneDrive name only the renamed folder; its child's later change is found by
        // id under the new path. A file whose new parent is outside the root is gone; a file
        // replaced by a folder of the same name is a removal and an addition.
        let mut known = knowing(vec![
            seen("Q1", true, None, Some("F1")),
            seen("Q1/r.pdf", false, Some("v1"), Some("R")),
            seen("x.txt", false, Some("v1"), Some("X")),
            seen("y", false, Some("v1"), Some("Y")),
        ]);
        let page = vec![
            item("F1", None, "Q2", Some("ROOT"), FOLDER),
            item("R", None, "r.pdf", Some("F1"), file("v2")),
            item("X", None, "x.txt", Some("ELSEWHERE"), file("v1")),
            item("Y2", None, "y", Some("ROOT"), FOLDER),
        ];
        let a = changes(page, Some("ROOT"), &mut known);
        assert_eq!(
            names(&a.changes),
            vec![
                "rename Q1 -> Q2",
                "update Q2/r.pdf",
                "delete x.txt",
                "delete y",
                "add y"
            ]
        );
        // Deleting a known folder deletes its subtree with it: one event, one tree removal;
        // a later item of the subtree finds nothing.
        let mut known = knowing(vec![
            seen("Q1", true, None, Some("F1")),
            seen("Q1/r.pdf", false, Some("v1"), Some("R")),
        ]);
        let page = vec![
            item("F1", None, "", None, State::Deleted),
            item("R", None, "", None, State::Deleted),
        ];
        let a = changes(page, Some("ROOT"), &mut known);
        assert_eq!(names(&a.changes), vec!["delete Q1"]);
        assert!(a.ops.contains(&SnapOp::DeleteTree(walk_key("Q1"))));
        // Items outside the root that were never known are skipped.
        let a = changes(
            vec![item("Z", None, "z", Some("ELSEWHERE"), file("v"))],
            Some("ROOT"),
            &mut Known::default(),
        );
        assert_eq!(a, Applied::default());
    }

    #[test]
    fn gdrive_files_list_for_full_listings() {
        let body = r#"{"nextPageToken": "p2", "files": [
            {"id": "F", "name": "docs", "mimeType": "application/vnd.google-apps.folder",
             "parents": ["ROOT"], "modifiedTime": "2026-01-02T03:04:05.678Z"},
            {"id": "A", "name": "a.txt", "mimeType": "text/plain", "parents": ["ROOT"],
             "size": "12", "md5Checksum": "abc", "version": "7"},
            {"id": "T", "name": "t.txt", "mimeType": "text/plain", "parents": ["ROOT"],
             "trashed": true}]}"#;
        let (items, next) = gdrive_files(200, body).expect("files");
        assert_eq!(next.as_deref(), Some("p2"));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].state, FOLDER);
        assert_eq!(items[1].state, file("abc").with_size(12));
        assert!(matches!(
            gdrive_files(403, "{}"),
            Err(DeltaError::Malformed { .. })
        ));
    }

    #[test]
    fn an_id_item_put_over_another_object_replaces_it() {
        // The folder "y" (id Y2) arrives where the file "y" (id Y) was; the file's own
        // deletion comes on a later page and finds nothing more to record.
        let rows = vec![seen("y", false, Some("v1"), Some("Y"))];
        let items = vec![item("Y2", None, "y", Some("ROOT"), FOLDER)];
        assert_eq!(
            Known::landing_keys(&items, Some("ROOT"), &HashMap::new()),
            vec!["y"]
        );
        let mut known = knowing(rows);
        let a = changes(items, Some("ROOT"), &mut known);
        assert_eq!(names(&a.changes), vec!["delete y", "add y"]);
        let mut known = knowing(vec![seen("y", true, None, Some("Y2"))]);
        let a = changes(
            vec![item("Y", None, "", None, State::Deleted)],
            Some("ROOT"),
            &mut known,
        );
        assert!(a.changes.is_empty());
    }

    #[test]
    fn names_the_api_cannot_serve_are_skipped() {
        for name in ["..", "a/b", "bad\u{0}name", "."] {
            let a = changes(
                vec![item("Z", None, name, Some("ROOT"), file("v"))],
                Some("ROOT"),
                &mut Known::default(),
            );
            assert_eq!(a, Applied::default(), "{name:?}");
        }
        let a = changes(
            vec![item("Z", Some("ok/../../etc"), "etc", None, file("v"))],
            None,
            &mut Known::default(),
        );
        assert_eq!(a, Applied::default());
    }
}
