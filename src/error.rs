//! The error of the service modules (scoring, sweeps, searches, validations, unit models):
//! a request refused for a reason its caller can fix, or a fault of a backend. The API turns
//! a reason into an HTTP status in one place (`api/error.rs`); the modules know nothing of
//! HTTP.

use serde_json::Value;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request is malformed (a bad number, a name given twice): 400.
    Invalid,
    /// A name or id it uses does not exist: 404.
    NotFound,
    /// The registry is not in a state to do it yet (no base, unit models not ready): 409.
    Conflict,
    /// Well formed but cannot be done as asked (too many mixtures, bad weights): 422.
    Unprocessable,
    /// The work the request waited for failed (a score job): 500, saying why.
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller can fix it: `code` is stable, `message` says what to do, `details` names
    /// what it concerns.
    #[error("{message}")]
    Refused {
        reason: Reason,
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A fault of the server (an invariant that did not hold), with its cause.
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn refused(reason: Reason, code: &'static str, message: impl Into<String>) -> Self {
        Error::Refused {
            reason,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::refused(Reason::Invalid, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Error::refused(Reason::Unprocessable, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::refused(Reason::Conflict, code, message)
    }

    /// `what` (e.g. `partition "code"`) does not exist.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Error::refused(Reason::NotFound, "not_found", format!("{what} not found"))
    }

    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Internal(e.into())
    }

    /// The same refusal with `details` attached.
    pub fn with_details(self, value: Value) -> Self {
        match self {
            Error::Refused {
                reason,
                code,
                message,
                ..
            } => Error::Refused {
                reason,
                code,
                message,
                details: Some(value),
            },
            e => e,
        }
    }

    /// The same refusal with its message prefixed by where in the request it arose
    /// (`mixtures[2]: ...`).
    pub fn context(self, at: impl std::fmt::Display) -> Self {
        match self {
            Error::Refused {
                reason,
                code,
                message,
                details,
            } => Error::Refused {
                reason,
                code,
                message: format!("{at}: {message}"),
                details,
            },
            e => e,
        }
    }
}
