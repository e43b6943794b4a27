//! One error type for HTTP: each 4xx says what to fix; database and internal errors are an
//! opaque 5xx, logged once with their cause.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub enum ApiError {
    /// 400, 404, 409, 413, 415, 422: the caller can fix it; 503 `shutting_down`: the caller
    /// retries.
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// 503: the database or the store is unreachable; retry later.
    Unavailable { backend: Backend, cause: String },
    /// 500.
    Internal(String),
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
                tracing::error!("internal error: {cause}");
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
    let mut error = json!({ "code": code, "message": message });
    if let Some(details) = details {
        error["details"] = details;
    }
    (status, Json(json!({ "error": error }))).into_response()
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
        let outage = crate::registry::is_outage(&e);
        if outage {
            ApiError::Unavailable {
                backend: Backend::Database,
                cause: e.to_string(),
            }
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Unavailable {
            backend: Backend::Store,
            cause: e.to_string(),
        }
    }
}
