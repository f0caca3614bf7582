//! What can go wrong in a cards operation, by what the caller can do about it, and the one place
//! where that becomes a gRPC status.

use std::collections::HashMap;

use kopilka_runtime::status::{self, Refusal};
use kopilka_runtime::validate::Violations;
use tonic::{Code, Status};

use crate::identifiers::ReadError;

/// A cards operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: INVALID_ARGUMENT with one field violation per problem, under
    /// VALIDATION_FAILED or a more specific reason (LIMIT_EXCEEDED with `field` and `limit`,
    /// TIMESTAMP_IN_FUTURE, PAGE_TOKEN_INVALID). Nothing changed.
    #[error("invalid argument: {0}")]
    Invalid(#[from] Violations),
    /// An identifier could not be read: INVALID_ARGUMENT with reason INVALID_CHECKSUM or
    /// INVALID_IDENTIFIER, the field it came from and the kind it was read as.
    #[error("{field}: {error}")]
    Unreadable { field: String, error: ReadError },
    /// Refused with a stable reason and the metadata errors.proto documents for it (NOT_FOUND,
    /// ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED).
    #[error("{0}")]
    Refused(#[from] Refusal),
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
    /// One field violation (VALIDATION_FAILED).
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::Invalid(Violations::one(field, description))
    }

    /// FAILED_PRECONDITION LIMIT_EXCEEDED: the request is within its own limits, but the stored
    /// collection `field` ("identifiers" of a customer, "tiers" of a merchant) already holds
    /// `limit` entries. Metadata `field` and `limit`, as for a request's own limits.
    pub fn collection_full(field: &'static str, limit: usize, message: impl Into<String>) -> Self {
        Refusal::precondition("LIMIT_EXCEEDED", message)
            .with("field", field)
            .with("limit", limit)
            .into()
    }

    /// An identifier from `field` could not be read.
    pub fn unreadable(field: impl Into<String>, error: ReadError) -> Self {
        Error::Unreadable {
            field: field.into(),
            error,
        }
    }

    pub fn customer_not_found(id: &str) -> Self {
        Refusal::not_found("CUSTOMER_NOT_FOUND", format!("customer `{id}` not found")).into()
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

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => violations.into(),
            Error::Unreadable { field, error } => status::invalid_field_with_metadata(
                &field,
                &error.to_string(),
                error.reason(),
                HashMap::from([("kind".to_owned(), error.kind.as_str_name().to_owned())]),
            ),
            Error::Refused(refusal) => refusal.into(),
            Error::Unavailable(dependency) => status::with_reason_and_metadata(
                Code::Unavailable,
                "DEPENDENCY_UNAVAILABLE",
                format!("{dependency} is unavailable; retry with the same request_id"),
                HashMap::from([("dependency".to_owned(), dependency.to_owned())]),
            ),
            Error::Db(ref e) if kopilka_runtime::db::is_unavailable(e) => {
                kopilka_runtime::db::unavailable_status()
            }
            e @ (Error::Db(_) | Error::Decode(_)) => status::internal(&e),
        }
    }
}

#[cfg(test)]
mod tests;
