//! Request authentication: `Authorization: APIKey <key>` (scheme matched case-insensitively),
//! `Bearer <account token>`, and `Bearer <meta token>` for `/v1/meta`. Tokens are looked up by
//! their SHA-256 hash; the hash index lookup is the comparison, and cached hits compare hashes
//! in constant time through the map's key equality on fixed-size digests.

use crate::error::ApiError;
use crate::state::{AppState, Principal};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use shared::auth::hash_token;

/// A caller of the storage API: an application, possibly narrowed to one account.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub app_id: i64,
    /// Set for account bearer tokens.
    pub account_id: Option<i64>,
}

/// A caller of the Meta API.
#[derive(Debug, Clone, Copy)]
pub struct MetaCaller;

enum Credential<'a> {
    ApiKey(&'a str),
    Bearer(&'a str),
}

fn credential(parts: &Parts) -> Result<Credential<'_>, ApiError> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let first = values
        .next()
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    // Which one counts would depend on the component reading it (proxy, framework, us):
    // refuse rather than pick.
    if values.next().is_some() {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            "the request has more than one Authorization header; send exactly one",
        ));
    }
    let value = first
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| {
        ApiError::unauthorized("Authorization must be `APIKey <key>` or `Bearer <token>`")
    })?;
    let token = token.trim();
    if token.is_empty() || token.len() > 512 {
        return Err(ApiError::unauthorized("malformed credentials"));
    }
    if scheme.eq_ignore_ascii_case("apikey") {
        Ok(Credential::ApiKey(token))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Credential::Bearer(token))
    } else {
        Err(ApiError::unauthorized(
            "Authorization must be `APIKey <key>` or `Bearer <token>`",
        ))
    }
}

/// The bearer token of a request's `Authorization` header (one header, `Bearer` scheme).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "the request has more than one Authorization header; send exactly one",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    match value.trim().split_once(' ') {
        Some((scheme, t))
            if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() && t.len() <= 512 =>
        {
            Ok(t.trim())
        }
        _ => Err(ApiError::unauthorized(
            "Authorization must be `Bearer <token>`",
        )),
    }
}

async fn principal(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let (hash, bearer) = match credential(parts)? {
        Credential::ApiKey(k) => (hash_token(k), false),
        Credential::Bearer(t) => (hash_token(t), true),
    };
    state
        .principal_for(hash, bearer)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid or revoked credentials"))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match principal(parts, state).await? {
            Principal::App { app_id } => Ok(Caller {
                app_id,
                account_id: None,
            }),
            Principal::Account { app_id, account_id } => Ok(Caller {
                app_id,
                account_id: Some(account_id),
            }),
            Principal::Meta => Err(ApiError::unauthorized(
                "a meta token only reaches /v1/meta; use an API key or account token",
            )),
        }
    }
}

impl FromRequestParts<AppState> for MetaCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match principal(parts, state).await? {
            Principal::Meta => Ok(MetaCaller),
            _ => Err(ApiError::unauthorized(
                "the Meta API needs a meta bearer token",
            )),
        }
    }
}

impl Caller {
    /// Resolves the `{acc}` path segment (`me` or a numeric id) to an account id this caller may
    /// reach. Accounts of other applications and other accounts of a bearer token are 404s, so
    /// that ids do not leak.
    pub fn account_id(&self, acc: &str) -> Result<i64, ApiError> {
        let id = if acc == "me" {
            self.account_id.ok_or_else(|| {
                ApiError::bad_request("`me` needs an account bearer token; use the numeric id")
            })?
        } else {
            acc.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::bad_request("account id must be a number or `me`"))?
        };
        match self.account_id {
            Some(own) if own != id => Err(ApiError::not_found("account")),
            _ => Ok(id),
        }
    }
}
