//! What can go wrong in a cards operation, by what the caller can do about it, and the one place
//! where that becomes a gRPC status.

use std::collections::HashMap;

use kopilka_runtime::status;
use tonic::{Code, Status};

use crate::identifiers::ParseError;

/// A cards operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `(field path, description)` pairs. Nothing changed.
    #[error("invalid argument")]
    Invalid(Vec<(String, String)>),
    /// An identifier could not be read: INVALID_ARGUMENT with reason INVALID_CHECKSUM or
    /// INVALID_IDENTIFIER and the field it came from.
    #[error("{field}: {error}")]
    Unreadable { field: String, error: ParseError },
    /// Something named does not exist for this merchant: NOT_FOUND with the reason.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// The identifier belongs to a customer already: ALREADY_EXISTS IDENTIFIER_TAKEN, with the
    /// owner in the metadata (a register may serve that customer instead).
    #[error("{message}")]
    Taken { message: String, owner: String },
    /// The request cannot be applied in the current state: FAILED_PRECONDITION with a stable
    /// reason.
    #[error("{1}")]
    Precondition(&'static str, String),
    /// Optimistic concurrency (etag) failed: ABORTED.
    #[error("{1}")]
    Aborted(&'static str, String),
    /// A service this call needs is down: UNAVAILABLE DEPENDENCY_UNAVAILABLE; retry later.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
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

    /// An identifier from `field` could not be read.
    pub fn unreadable(field: impl Into<String>, error: ParseError) -> Self {
        Error::Unreadable {
            field: field.into(),
            error,
        }
    }

    pub fn customer_not_found(id: &str) -> Self {
        Error::NotFound("CUSTOMER_NOT_FOUND", format!("customer `{id}` not found"))
    }

    /// Whether retrying the whole operation may succeed (a concurrent insert won a race).
    pub fn is_retryable_conflict(&self) -> bool {
        match self {
            Error::Db(sqlx::Error::Database(e)) => {
                e.is_unique_violation()
                    || matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
            }
            _ => false,
        }
    }
}

/// `Ok(())` when there are no violations.
pub fn done(violations: Vec<(String, String)>) -> Result<(), Error> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(violations))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => status::invalid_argument(violations),
            Error::Unreadable { field, error } => {
                status::invalid_field_with_reason(&field, &error.to_string(), error.reason())
            }
            Error::NotFound(reason, message) => {
                status::with_reason(Code::NotFound, reason, message)
            }
            Error::Taken { message, owner } => {
                let mut metadata = HashMap::new();
                metadata.insert("customer_id".to_owned(), owner);
                status::with_reason_and_metadata(
                    Code::AlreadyExists,
                    "IDENTIFIER_TAKEN",
                    message,
                    metadata,
                )
            }
            Error::Precondition(reason, message) => {
                status::with_reason(Code::FailedPrecondition, reason, message)
            }
            Error::Aborted(reason, message) => status::with_reason(Code::Aborted, reason, message),
            Error::Unavailable(dependency) => {
                let mut metadata = HashMap::new();
                metadata.insert("dependency".to_owned(), dependency.to_owned());
                status::with_reason_and_metadata(
                    Code::Unavailable,
                    "DEPENDENCY_UNAVAILABLE",
                    format!("{dependency} is unavailable; retry with the same request_id"),
                    metadata,
                )
            }
            e @ (Error::Db(_) | Error::Decode(_)) => status::internal(&e),
        }
    }
}
