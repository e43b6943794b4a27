//! One error type for HTTP: each 4xx says what to fix; database and internal errors are an
//! opaque 5xx, logged once with their cause.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Debug)]
pub enum ApiError {
    /// 400, 401, 403, 404, 405, 409, 413, 415, 422: the caller can fix it; 503
    /// `shutting_down`: the caller retries.
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// 503: the database or the store is unreachable; retry later.
    Unavailable { backend: Backend, cause: String },
    /// 500: a fault of the server, with its cause chain (logged once, never shown).
    Internal(Cause),
}

/// What made a 500: an error with its sources, or a message.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl ApiError {
    /// A 500 caused by `e` (its sources kept for the log).
    pub fn internal(e: impl Into<Cause>) -> Self {
        ApiError::Internal(e.into())
    }
}

/// `e` and each of its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::status(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::Client {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("{what} not found"),
            details: None,
        }
    }

    pub fn status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details) = match self {
            ApiError::Client {
                status,
                code,
                message,
                details,
            } => (status, code, message, details),
            ApiError::Unavailable { backend, cause } => {
                tracing::warn!("unavailable ({}): {cause}", backend.as_str());
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the {} is unreachable; retry later", backend.what()),
                    None,
                );
                // For the request metrics, which count 503s by their cause.
                response.extensions_mut().insert(backend);
                return response;
            }
            ApiError::Internal(cause) => {
                tracing::error!("internal error: {}", chain(cause.as_ref()));
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".into(),
                    None,
                )
            }
        };
        error_response(status, code, message, details)
    }
}

fn error_response(
    status: StatusCode,
    code: &str,
    message: String,
    details: Option<Value>,
) -> Response {
    let error = ErrorDetail {
        code: code.to_string(),
        message,
        details,
    };
    (status, Json(ErrorBody { error })).into_response()
}

/// What a 503 could not reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Database,
    Store,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Database => "database",
            Backend::Store => "store",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Backend::Database => "database",
            Backend::Store => "object store",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A data exception (class 22: a NUL character in a name, a number out of range) is
        // a value from the request that the database cannot hold: the caller's to fix.
        if let sqlx::Error::Database(db) = &e
            && db.code().is_some_and(|c| c.starts_with("22"))
        {
            return ApiError::bad_request(
                "invalid_value",
                format!(
                    "the request holds a value that cannot be stored: {}",
                    db.message()
                ),
            );
        }
        let outage = crate::registry::is_outage(&e);
        if outage {
            ApiError::Unavailable {
                backend: Backend::Database,
                cause: e.to_string(),
            }
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::{Error, Reason};
        match e {
            Error::Refused {
                reason,
                code,
                message,
                details,
            } => ApiError::Client {
                status: match reason {
                    Reason::Invalid => StatusCode::BAD_REQUEST,
                    Reason::NotFound => StatusCode::NOT_FOUND,
                    Reason::Conflict => StatusCode::CONFLICT,
                    Reason::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
                    Reason::Failed => StatusCode::INTERNAL_SERVER_ERROR,
                },
                code,
                message,
                details,
            },
            Error::Database(e) => e.into(),
            Error::Store(e) => e.into(),
            Error::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_full() {
            tracing::warn!("the store is full: {e}");
            return ApiError::status(
                StatusCode::INSUFFICIENT_STORAGE,
                "store_full",
                format!("the object store has no space left, so nothing was stored ({e})"),
            );
        }
        ApiError::Unavailable {
            backend: Backend::Store,
            cause: e.to_string(),
        }
    }
}

/// The error shape of every 4xx and 5xx answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `invalid_query`, `name_taken`, …).
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// Ids and names the error is about, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// The errors any route may answer: documentation for the OpenAPI document (answers are
/// made by [`ApiError`]).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum Errors {
    /// Malformed query, body or id.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// A missing, malformed, unknown or revoked token.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The token lacks the scope.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// An unknown name or id.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// In conflict with what exists (a name taken, models not ready, a partition in use).
    #[response(status = 409)]
    Conflict(#[to_schema] ErrorBody),
    /// Larger than the server accepts.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// An upload's content type or encoding is not one the server reads.
    #[response(status = 415)]
    UnsupportedMediaType(#[to_schema] ErrorBody),
    /// Well-formed but not usable (invalid data, checkpoint, sizes, too many mixtures).
    #[response(status = 422)]
    Unprocessable(#[to_schema] ErrorBody),
    /// A fault of the server, logged with its cause.
    #[response(status = 500)]
    Internal(#[to_schema] ErrorBody),
    /// The database or the store does not answer, or the server is stopping: retry.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
    /// The store has no space left: nothing was stored; retry once there is room.
    #[response(status = 507)]
    InsufficientStorage(#[to_schema] ErrorBody),
}
