//! JSON shapes of the API (Kloudless v1 compatible), shared by handlers and the OpenAPI
//! document. Create and read types are separate (`NewAccount` vs `AccountView`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// RFC 3339 text of Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A page of objects.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectList<T: ToSchema> {
    /// Always `object_list`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub api: &'static str,
    pub objects: Vec<T>,
    /// Number of objects on this page.
    pub count: usize,
    pub page: u32,
    /// The next page number, or null on the last page.
    pub next_page: Option<u32>,
}

/// `{id, name}` of a parent or ancestor folder.
#[derive(Debug, Serialize, ToSchema)]
pub struct FolderRef {
    pub id: String,
    pub name: String,
}

/// A file or folder.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageObject {
    pub id: String,
    pub name: String,
    /// `file` or `folder`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in bytes (null for folders).
    pub size: Option<u64>,
    pub created: Option<String>,
    pub modified: Option<String>,
    pub mime_type: Option<String>,
    pub account: i64,
    /// Null for the root folder.
    pub parent: Option<FolderRef>,
    pub ancestors: Vec<FolderRef>,
    /// Path from the account root, starting with `/`.
    pub path: String,
    pub downloadable: bool,
    pub raw_id: String,
    pub api: &'static str,
    /// Folders only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_create_folders: Option<bool>,
    /// Folders only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_upload_files: Option<bool>,
    /// With `X-Kloudless-Raw-Data: true`: the provider's metadata of the object, in its own
    /// field names.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub raw: Option<serde_json::Value>,
}

/// An application.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationView {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub active: bool,
    /// Whether changes to its accounts are recorded in their event feeds
    /// (`/v1/accounts/{acc}/events`).
    pub collect_events: bool,
    /// OAuth: the redirect URIs the application registered (exact match).
    pub redirect_uris: Vec<String>,
    /// Origins (`scheme://host[:port]`) its browser code calls the API from (CORS).
    pub trusted_domains: Vec<String>,
    /// OAuth: `response_type=token` (the implicit grant) is allowed.
    pub implicit_grant_enabled: bool,
    pub created: String,
    pub modified: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewApplication {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Record changes to its accounts in their event feeds (default false).
    #[serde(default)]
    pub collect_events: Option<bool>,
    #[serde(flatten)]
    pub oauth: OAuthChanges,
}

/// An application's OAuth settings, each optional in a change.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct OAuthChanges {
    /// Absolute `https` URLs (`http` only on loopback), at most 20, exact match.
    #[serde(default)]
    pub redirect_uris: Option<Vec<String>>,
    /// Origins `scheme://host[:port]`, at most 20.
    #[serde(default)]
    pub trusted_domains: Option<Vec<String>>,
    #[serde(default)]
    pub implicit_grant_enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ApplicationChanges {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    /// Record changes to its accounts in their event feeds.
    #[serde(default)]
    pub collect_events: Option<bool>,
    #[serde(flatten)]
    pub oauth: OAuthChanges,
}

/// An API key. `key` is present only in the response that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The first characters of the key, to tell keys apart.
    pub key_hint: String,
    pub created: String,
}

/// A connected storage account.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: i64,
    /// Display name.
    pub account: String,
    pub service: String,
    pub service_name: String,
    pub active: bool,
    pub admin: bool,
    pub apis: Vec<&'static str>,
    pub created: String,
    pub modified: String,
    /// With `retrieve_full=true`: `{"capabilities": {name: {"value": ...}}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
    /// Present only in the response that connected the account: the account's bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<BearerToken>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BearerToken {
    pub key: String,
}

/// Connects a storage account.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAccount {
    /// `fs`, `s3`, `webdav`, `sftp`, `azblob`, `gcs`, `dropbox`, `gdrive` or `onedrive`.
    pub service: String,
    /// Display name. Dropbox, Google Drive and OneDrive accounts may leave it out: they take
    /// the name the provider gives (the user's email).
    #[serde(default)]
    pub account: String,
    /// The service's settings (see the README's connector table).
    #[schema(value_type = Object)]
    pub credentials: serde_json::Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AccountChangesBody {
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewFolder {
    pub parent_id: String,
    pub name: String,
}

/// Rename (`name`), move (`parent_id`), or move to another account (`account`, files only).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ObjectChanges {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub account: Option<AccountRefBody>,
}

/// Copy destination; omitted fields keep the source's folder, name and account.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CopyTarget {
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub account: Option<AccountRefBody>,
}

/// An account id as a number or numeric string (SDKs send both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AccountRefBody {
    Number(i64),
    Text(String),
}

/// The `X-Kloudless-Metadata` header of an upload.
#[derive(Debug, Deserialize)]
pub struct UploadMetadata {
    pub name: String,
    pub parent_id: String,
}

/// One change in an account's event feed (`/v1/accounts/{acc}/events`), in the Kloudless
/// shape: `id` is the changed object's id (what the Kloudless SDKs compare with a file's id).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// The changed object's id.
    pub id: String,
    pub account: i64,
    /// `add`, `update`, `delete`, `rename`, `move` or `copy`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the API did (`upload`, `create_folder`, `rename`, `move`, `copy`, `delete`,
    /// `transfer`, ...).
    pub action: String,
    /// When the change happened.
    pub modified: String,
    /// The address of the client that made the change through the API (null when unknown).
    pub ip: Option<String>,
    /// The provider's user who made the change, when known (null for changes through the
    /// API).
    pub user_id: Option<String>,
    /// The object as the API returns it (after the change; as it was, for a delete).
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Renames and moves (our addition): the id, name and parent the object had before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousView>,
}

/// Where a renamed or moved object was before.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousView {
    pub id: String,
    pub name: String,
    /// The id of the folder it was in.
    pub parent_id: Option<String>,
}

/// A page of the event feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Always `object_list`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub objects: Vec<EventView>,
    /// Continue from here (`?cursor=`); the same cursor when the page is empty.
    pub cursor: String,
    /// Events after this page.
    pub remaining: i64,
    /// Events on this page.
    pub count: usize,
}

/// The newest position of an account's event feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventCursor {
    pub cursor: String,
}
