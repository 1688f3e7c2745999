//! The one API error type: maps to an HTTP status and a Kloudless `error_code`, always carries
//! the request id, and never leaks internals (details of a 500 go to the log only).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::storage::{PathError, StorageError};
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being served (set by the request middleware).
    pub static REQUEST_ID: String;
}

/// The current request id, or `-` outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".to_owned())
}

/// The code of a copy's source that failed for good (`StorageError::Source`: a URL that
/// answers an error, changed, or passed the size limit): retrying does not help.
pub const UPSTREAM_FINAL: &str = "upstream_error";

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status, repeated (kloudless-js and the Ruby SDK read it from the body).
    pub status_code: u16,
    /// Machine-readable code such as `invalid_parameters` or `not_found`.
    pub error_code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request id (also in the `X-Request-Id` header).
    pub id: String,
}

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The message shown to clients.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again (elsewhere, later) may succeed: provider outages and rate limits,
    /// not a copy's source that failed for good ([`UPSTREAM_FINAL`]).
    pub fn retryable(&self) -> bool {
        (self.status.is_server_error() || self.status == StatusCode::TOO_MANY_REQUESTS)
            && self.code != UPSTREAM_FINAL
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameters", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// The same error with a `Retry-After` of `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// A failed `If-Match` / `If-Unmodified-Since`: nothing was changed.
    pub fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the file has changed since the ETag or date given in If-Match or \
             If-Unmodified-Since; nothing was changed",
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// An unexpected failure: logged with its detail, answered as an opaque 500.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(request_id = %request_id(), error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "internal error; quote the request id when reporting it",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error_code` clients get.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status_code: self.status.as_u16(),
            error_code: self.code.to_owned(),
            message: self.message,
            id: request_id(),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&e) {
            tracing::warn!(request_id = %request_id(), error = %e, "database unavailable");
            let mut err = Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable (a failover may be under way); retry shortly",
            );
            err.retry_after = Some(2);
            return err;
        }
        Self::internal(format_args!("database: {e}"))
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => Self::not_found("object"),
            StorageError::AlreadyExists => {
                Self::conflict("conflict", "an object with that name already exists")
            }
            StorageError::NotEmpty => Self::conflict(
                "folder_not_empty",
                "folder is not empty; pass recursive=true to delete it",
            ),
            StorageError::WrongKind { expected } => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {expected}"),
            ),
            StorageError::PermissionDenied(m) => Self::forbidden(m),
            StorageError::InvalidSettings(m) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_credentials",
                format!("the storage provider rejected the credentials: {m}"),
            ),
            StorageError::RateLimited { retry_after } => {
                let mut err = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "the storage provider is rate limiting requests; retry later",
                );
                err.retry_after = Some(retry_after.map(|d| d.as_secs().max(1)).unwrap_or(5));
                err
            }
            StorageError::BudgetSpent(s) => {
                let mut err = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    if s.cooling {
                        "the storage provider asked for a pause in requests; retry later"
                    } else {
                        "requests to this storage provider are paced to its budget; retry later"
                    },
                );
                // Whole seconds, rounded up: a client retrying then finds a slot.
                err.retry_after = Some(s.retry_after.as_millis().div_ceil(1000).max(1) as u64);
                err
            }
            StorageError::Unavailable(m) => {
                tracing::warn!(request_id = %request_id(), error = %m, "provider unavailable");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    "service_unavailable",
                    "the storage provider is unavailable",
                )
            }
            StorageError::Unreachable { host, cause } => {
                tracing::info!(request_id = %request_id(), %host, %cause, "provider unreachable");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_unreachable",
                    format!("cannot reach the storage provider at {host}: {cause}"),
                )
            }
            StorageError::EgressDenied(m) => Self::bad_request(m),
            StorageError::RangeNotSatisfiable => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "requested range is not satisfiable",
            ),
            StorageError::PreconditionFailed => Self::precondition_failed(),
            StorageError::Unsupported(m) => Self::new(
                StatusCode::BAD_REQUEST,
                "not_supported",
                format!("not supported by this storage service: {m}"),
            ),
            StorageError::Interrupted(m) => {
                tracing::info!(request_id = %request_id(), error = %m, "upload interrupted");
                Self::bad_request("the request body ended before the upload was complete")
            }
            StorageError::Path(p) => p.into(),
            StorageError::Other(m) => Self::internal(format_args!("storage: {m}")),
            StorageError::Source(m) => Self::new(StatusCode::BAD_GATEWAY, UPSTREAM_FINAL, m),
        }
    }
}
