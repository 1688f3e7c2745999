//! `X-Kloudless-Raw-Data: true`: file and folder objects carry `raw`, the provider's metadata
//! of the object in the provider's own field names (S3's `Key`/`ETag`/`LastModified`, Azure's
//! `Name` and `Properties`, WebDAV's DAV properties, …): what the connector read from the
//! provider for this answer, with the object's full key at the provider (the account's `root`
//! included).

use crate::model::rfc3339;
use shared::storage::{Entry, EntryKind, ServiceConfig};

tokio::task_local! {
    /// Whether the request being served asked for `raw` (set by the request middleware).
    pub(crate) static RAW_DATA: bool;
}

/// Whether the current request asked for `raw`.
pub(crate) fn requested() -> bool {
    RAW_DATA.try_with(|r| *r).unwrap_or(false)
}

/// Whether a request's headers ask for `raw` (`true` in any case, or `1`).
pub(crate) fn asked(h: &axum::http::HeaderMap) -> bool {
    h.get("x-kloudless-raw-data")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
}

/// The object's key at the provider: the account's root, then its path.
fn key(root: Option<&str>, e: &Entry) -> String {
    let root = root.unwrap_or("").trim_matches('/');
    let path = e.path.as_str().trim_matches('/');
    let mut k = match (root.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => root.to_owned(),
        (false, false) => format!("{root}/{path}"),
    };
    if e.kind == EntryKind::Folder && !k.is_empty() {
        k.push('/');
    }
    k
}

fn http_date(ms: Option<i64>) -> Option<String> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms?).ok()?);
    Some(httpdate::fmt_http_date(t))
}

/// `raw` for entry `e` of an account with `settings`.
pub(crate) fn raw(settings: &ServiceConfig, e: &Entry) -> serde_json::Value {
    use serde_json::json;
    let folder = e.kind == EntryKind::Folder;
    let etag = e.etag.clone();
    let ct = e.content_type.clone();
    match settings {
        ServiceConfig::S3(s) if folder => json!({"Prefix": key(s.root.as_deref(), e)}),
        ServiceConfig::S3(s) => json!({
            "Key": key(s.root.as_deref(), e), "Size": e.size, "ETag": etag,
            "LastModified": e.modified.map(rfc3339), "ContentType": ct,
        }),
        ServiceConfig::Azblob(s) => json!({
            "Name": key(s.root.as_deref(), e),
            "Properties": {"Content-Length": e.size, "Etag": etag,
                           "Last-Modified": http_date(e.modified), "Content-Type": ct,
                           "ResourceType": if folder { "directory" } else { "file" }},
        }),
        ServiceConfig::Gcs(s) => json!({
            "name": key(s.root.as_deref(), e), "size": e.size.to_string(), "etag": etag,
            "updated": e.modified.map(rfc3339), "contentType": ct,
        }),
        ServiceConfig::Webdav(s) => json!({
            "href": format!("/{}", key(s.root.as_deref(), e)),
            "getcontentlength": (!folder).then_some(e.size), "getetag": etag,
            "getlastmodified": http_date(e.modified), "getcontenttype": ct,
            "resourcetype": if folder { "collection" } else { "" },
        }),
        ServiceConfig::Sftp(s) => json!({
            "path": format!("/{}", key(s.root.as_deref(), e)), "size": e.size,
            "mtime": e.modified.map(|m| m / 1000),
            "type": if folder { "directory" } else { "file" },
        }),
        ServiceConfig::Fs(_) => json!({
            "path": e.path.as_str(), "size": e.size, "mtime": e.modified.map(|m| m / 1000),
            "type": if folder { "directory" } else { "file" },
        }),
        ServiceConfig::Dropbox(s) => json!({
            ".tag": if folder { "folder" } else { "file" },
            "path_display": format!("/{}", key(s.root.as_deref(), e)).trim_end_matches('/'),
            "size": (!folder).then_some(e.size), "server_modified": e.modified.map(rfc3339),
        }),
        ServiceConfig::Gdrive(_) => json!({
            "name": e.path.name(), "size": (!folder).then(|| e.size.to_string()),
            "modifiedTime": e.modified.map(rfc3339),
            "mimeType": if folder { Some("application/vnd.google-apps.folder".to_owned()) } else { ct },
        }),
        ServiceConfig::Onedrive(_) => json!({
            "name": e.path.name(), "size": e.size, "eTag": etag,
            "lastModifiedDateTime": e.modified.map(rfc3339),
        }),
    }
}
