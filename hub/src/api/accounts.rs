//! Connected storage accounts: connect (with a real credential check), list, retrieve, update,
//! disconnect. Credentials are sealed at rest and never returned.

use super::{page_of, ApiJson, ApiPath, ApiQuery, CommonErrors, Paging};
use crate::auth::Caller;
use crate::db::{AccountChanges, AccountRecord};
use crate::error::{ApiError, ApiResult};
use crate::guard;
use crate::model::{rfc3339, AccountChangesBody, AccountView, BearerToken, NewAccount, ObjectList};
use crate::state::{account_aad, now_ms, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use shared::auth::{generate_token, hash_token};
use shared::storage::{Capabilities, Connector, ServiceConfig, SettingsError};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_accounts, create_account))
        .routes(routes!(get_account, patch_account, delete_account))
}

/// An account as the API shows it: `service` is the short id (`fs`), `service_name` its
/// display name ("Local Filesystem"), in listings and single reads alike (the Kloudless shape).
fn view(r: &AccountRecord) -> AccountView {
    AccountView {
        id: r.id,
        account: r.name.clone(),
        service: r.service.clone(),
        service_name: shared::storage::service::display_name(&r.service).to_owned(),
        active: r.active,
        admin: false,
        apis: vec!["storage"],
        created: rfc3339(r.created_ms),
        modified: rfc3339(r.modified_ms),
        properties: None,
        bearer_token: None,
    }
}

/// `properties.capabilities` of `retrieve_full`, in the Kloudless shape (`{name: {"value":
/// bool}}`, the names the Kloudless SDKs test for), then our own facts and limits under the
/// same shape.
fn properties(c: &Capabilities, max_upload_bytes: u64) -> serde_json::Value {
    let mut caps = serde_json::Map::new();
    let mut put = |name: &str, value: serde_json::Value| {
        caps.insert(name.to_owned(), serde_json::json!({ "value": value }));
    };
    // What the unified API does on every service (a rename without native support is a copy
    // and a delete; search walks the account).
    for name in [
        "can_upload_file",
        "can_update_file_content",
        "can_rename_file",
        "can_move_file",
        "can_copy_file",
        "can_delete_file",
        "can_delete_file_permanently",
        "can_search_file_name",
        "can_create_folder",
        "can_rename_folder",
        "can_move_folder",
        "can_copy_folder",
        "can_delete_folder",
    ] {
        put(name, true.into());
    }
    put(
        "multipart_uploads_supported_for_files",
        crate::api::storage::SESSIONS_SUPPORTED.into(),
    );
    // Not part of this API.
    for name in [
        "permissions_supported_for_files",
        "properties_supported_for_files",
        "can_list_properties",
        "can_delete_all_properties",
    ] {
        put(name, false.into());
    }
    // Ours.
    put("server_side_copy", c.server_side_copy.into());
    put("native_rename", c.native_rename.into());
    put("range_reads", c.range_reads.into());
    put("folders_are_objects", c.folders_are_objects.into());
    put("conditional_writes", c.conditional_writes.into());
    put("multipart_min_part_size", c.parts.min.into());
    put("multipart_max_part_size", c.parts.max.into());
    put("multipart_max_parts", c.parts.max_parts.into());
    // 0: no limit of our own on a single upload.
    put("max_single_upload_size", max_upload_bytes.into());
    serde_json::json!({ "capabilities": caps })
}

fn settings_error(e: SettingsError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn validate_display_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request(
            "`account` must be 1 to 255 characters",
        ));
    }
    Ok(())
}

/// Parses, guards (SSRF, `fs` roots confined to application `app_id`) and live-checks account
/// settings. Dropbox, Google Drive and OneDrive are checked by asking who the token belongs to
/// ([`crate::api::oauth::providers::identify`]), which names the account too; the others by
/// listing the root.
async fn checked_settings(
    state: &AppState,
    app_id: i64,
    service: &str,
    credentials: serde_json::Value,
) -> ApiResult<(ServiceConfig, Option<String>)> {
    if !credentials.is_object() {
        return Err(ApiError::bad_request("`credentials` must be an object"));
    }
    let mut credentials = credentials;
    // An `fs` root may be relative to the application's space: parse the settings with a
    // stand-in, then put the confined absolute folder in its place.
    let fs_root = match credentials.get_mut("root") {
        Some(root @ serde_json::Value::String(_)) if service == "fs" => {
            Some(std::mem::replace(root, "/".into()))
        }
        _ => None,
    };
    let mut settings = ServiceConfig::from_parts(service, credentials).map_err(settings_error)?;
    if let (ServiceConfig::Fs(fs), Some(serde_json::Value::String(requested))) =
        (&mut settings, fs_root)
    {
        let root = crate::fsroot::confine(&requested, app_id, &state.fs_roots, true)?;
        fs.root = root.to_string_lossy().into_owned();
    }
    guard::check_endpoint(&settings, &state.connect_options.egress).await?;
    let connector = Connector::connect(&settings, &state.connect_options).await?;
    let who = crate::api::oauth::providers::identify(state, &settings).await?;
    if who.is_none() {
        connector.check().await?;
    }
    Ok((settings, who))
}

fn seal(state: &AppState, settings: &ServiceConfig, id: i64) -> Vec<u8> {
    let plain = serde_json::to_vec(settings).unwrap_or_default();
    state.sealer.seal(&plain, account_aad(id).as_bytes())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RetrieveOptions {
    /// Include per-account `capabilities`.
    #[serde(default, deserialize_with = "crate::api::query_bool")]
    retrieve_full: Option<bool>,
}

/// List connected accounts.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(Paging),
    responses((status = 200, body = ObjectList<AccountView>), CommonErrors))]
async fn list_accounts(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> ApiResult<Json<ObjectList<AccountView>>> {
    let (page, size) = paging.resolve()?;
    let (rows, total) = state
        .db
        .list_accounts(
            caller.app_id,
            caller.account_id,
            Paging::offset(page, size) as i64,
            i64::from(size),
        )
        .await?;
    let objects = rows.iter().map(view).collect();
    Ok(Json(page_of(objects, page, size, total as usize, "meta")))
}

/// Connect a storage account. The credentials are checked with a real call to the provider
/// first; the response carries the account's bearer token, shown only this once.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = NewAccount,
    responses((status = 201, body = AccountView), CommonErrors))]
async fn create_account(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewAccount>,
) -> ApiResult<(StatusCode, Json<AccountView>)> {
    if caller.account_id.is_some() {
        return Err(ApiError::forbidden(
            "an account token cannot connect accounts; use an API key",
        ));
    }
    let (record, _, token) = connect_account(&state, caller.app_id, &body).await?;
    let mut v = view(&record);
    v.bearer_token = Some(BearerToken { key: token });
    Ok((StatusCode::CREATED, Json(v)))
}

/// Checks and stores a new account of `app_id`; returns it with its new bearer token.
pub async fn connect_account(
    state: &AppState,
    app_id: i64,
    body: &NewAccount,
) -> ApiResult<(AccountRecord, ServiceConfig, String)> {
    let (record, settings) = store_account(state, app_id, body).await?;
    let token = generate_token("at_");
    state
        .db
        .create_account_token(record.id, &hash_token(token.expose_secret()), now_ms())
        .await?;
    Ok((record, settings, token.expose_secret().to_owned()))
}

/// Checks (a real call to the provider) and stores a new account of `app_id`, without a token
/// (the OAuth flow gives one when its code is exchanged).
pub async fn store_account(
    state: &AppState,
    app_id: i64,
    body: &NewAccount,
) -> ApiResult<(AccountRecord, ServiceConfig)> {
    // Accounts of services that say who they are may leave their name to the provider.
    let named_by_provider =
        body.account.is_empty() && crate::config::OAUTH_PROVIDERS.contains(&body.service.as_str());
    if !named_by_provider {
        validate_display_name(&body.account)?;
    }
    let (settings, who) =
        checked_settings(state, app_id, &body.service, body.credentials.clone()).await?;
    let name = match who {
        Some(who) if named_by_provider => who,
        _ => body.account.clone(),
    };
    validate_display_name(&name)?;
    let now = now_ms();
    let record = state
        .db
        .create_account(
            app_id,
            settings.name(),
            &name,
            |id| seal(state, &settings, id),
            now,
        )
        .await?;
    tracing::info!(
        account = record.id,
        app = app_id,
        service = settings.name(),
        "account connected"
    );
    Ok((record, settings))
}

/// Retrieve an account.
#[utoipa::path(get, path = "/v1/accounts/{acc}", tag = "accounts",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$"), RetrieveOptions),
    responses((status = 200, body = AccountView), CommonErrors))]
async fn get_account(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiQuery(opts): ApiQuery<RetrieveOptions>,
) -> ApiResult<Json<AccountView>> {
    let id = caller.account_id(&acc)?;
    let account = state.account(caller.app_id, id).await?;
    let mut v = view(&account.record);
    if opts.retrieve_full == Some(true) {
        v.properties = Some(properties(
            &account.connector.capabilities(),
            state.config.limits.max_upload_bytes,
        ));
    }
    Ok(Json(v))
}

/// Update an account: display name, active flag, or credentials (checked again).
#[utoipa::path(patch, path = "/v1/accounts/{acc}", tag = "accounts",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$")),
    request_body = AccountChangesBody,
    responses((status = 200, body = AccountView), CommonErrors))]
async fn patch_account(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
    ApiJson(body): ApiJson<AccountChangesBody>,
) -> ApiResult<Json<AccountView>> {
    let id = caller.account_id(&acc)?;
    let current = state.account(caller.app_id, id).await?;
    if let Some(n) = &body.account {
        validate_display_name(n)?;
    }
    let mut changes = AccountChanges {
        name: body.account.clone(),
        active: body.active,
        credentials: None,
    };
    let body_had_credentials = body.credentials.is_some();
    if let Some(creds) = body.credentials {
        let (settings, _) =
            checked_settings(&state, caller.app_id, current.settings.name(), creds).await?;
        changes.credentials = Some(seal(&state, &settings, id));
    }
    let record = state
        .db
        .update_account(caller.app_id, id, changes, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    if body_had_credentials {
        // Connected again: `after-auth` now starts here.
        state.db.mark_event_auth(id).await?;
    }
    state.forget_account(id);
    Ok(Json(view(&record)))
}

/// Disconnect an account (its files stay where they are).
#[utoipa::path(delete, path = "/v1/accounts/{acc}", tag = "accounts",
    params(("acc" = String, Path, description = "Account id or `me`", pattern = r"^([0-9]{1,18}|me)$")),
    responses((status = 204, description = "Disconnected"), CommonErrors))]
async fn delete_account(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(acc): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = caller.account_id(&acc)?;
    if !state.db.delete_account(caller.app_id, id).await? {
        return Err(ApiError::not_found("account"));
    }
    state.forget_account(id);
    Ok(StatusCode::NO_CONTENT)
}
