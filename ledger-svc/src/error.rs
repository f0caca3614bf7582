//! What can go wrong in a ledger operation, by what the caller can do about it, and the one
//! place where that becomes a gRPC status.

use kopilka_runtime::status;
use rust_decimal::Decimal;
use tonic::{Code, Status};

/// A ledger operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `(field path, description)` pairs. Nothing changed.
    #[error("invalid argument")]
    Invalid(Vec<(String, String)>),
    /// Something named does not exist (for this merchant): NOT_FOUND with the reason.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// The request cannot be applied in the current state: FAILED_PRECONDITION with a stable
    /// reason (INSUFFICIENT_POINTS, HOLD_EXPIRED, IDEMPOTENCY_KEY_REUSED …).
    #[error("{1}")]
    Precondition(&'static str, String),
    /// The database failed.
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// A stored document could not be decoded.
    #[error("stored data is corrupt")]
    Decode(#[from] prost::DecodeError),
}

impl Error {
    /// One field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::Invalid(vec![(field.into(), description.into())])
    }

    pub fn insufficient(available: Decimal, requested: Decimal) -> Self {
        Error::Precondition(
            "INSUFFICIENT_POINTS",
            format!("insufficient points: {available} available, {requested} requested"),
        )
    }

    /// Whether retrying the whole operation may succeed (a concurrent insert won a race).
    pub fn is_retryable_conflict(&self) -> bool {
        match self {
            Error::Db(sqlx::Error::Database(e)) => {
                e.is_unique_violation()
                    // PostgreSQL serialization failure / deadlock.
                    || matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
            }
            _ => false,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => status::invalid_argument(violations),
            Error::NotFound(reason, message) => {
                status::with_reason(Code::NotFound, reason, message)
            }
            Error::Precondition(reason, message) => {
                status::with_reason(Code::FailedPrecondition, reason, message)
            }
            Error::Db(sqlx::Error::PoolTimedOut) => status::with_reason(
                Code::Unavailable,
                "DEPENDENCY_UNAVAILABLE",
                "the database is not answering",
            ),
            ref other => status::internal(other),
        }
    }
}
