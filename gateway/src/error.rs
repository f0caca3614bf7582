//! What can go wrong in the gateway, by what the caller can do about it, and the one place where
//! that becomes a gRPC status.

use std::collections::HashMap;
use std::time::Duration;

use kopilka_runtime::status;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A gateway operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `(field path, description)` pairs. Nothing changed.
    #[error("invalid argument")]
    Invalid(Vec<(String, String)>),
    /// No key, or a key that is malformed, unknown or revoked: UNAUTHENTICATED API_KEY_INVALID.
    #[error("a valid API key is required")]
    Unauthenticated,
    /// The key may not do this: PERMISSION_DENIED with the reason.
    #[error("{1}")]
    PermissionDenied(&'static str, String),
    /// Something named does not exist for this merchant: NOT_FOUND with the reason.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// The request cannot be applied in the current state: FAILED_PRECONDITION with a stable
    /// reason and `ErrorInfo.metadata`.
    #[error("{1}")]
    Precondition(&'static str, String, Vec<(String, String)>),
    /// A concurrent call changed what this one read, more often than it re-read:
    /// ABORTED CONCURRENT_MODIFICATION. Nothing of this call is kept; retrying is safe.
    #[error("{0}")]
    Aborted(String),
    /// Too many calls: RESOURCE_EXHAUSTED RATE_LIMITED with a RetryInfo.
    #[error("rate limit exceeded")]
    RateLimited(Duration),
    /// A dependency did not answer in time, refused, or shed the call: UNAVAILABLE
    /// DEPENDENCY_UNAVAILABLE with metadata `dependency`. Never a silently wrong answer.
    #[error("{dependency} is unavailable: {detail}")]
    Dependency {
        dependency: &'static str,
        detail: String,
    },
    /// A dependency's own answer (NOT_FOUND CARD_NOT_FOUND, FAILED_PRECONDITION
    /// INSUFFICIENT_POINTS …), passed on with its details.
    #[error("{0}")]
    Downstream(Status),
    /// The gateway's database failed.
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// A stored answer could not be decoded.
    #[error("stored data is corrupt")]
    Decode(#[from] prost::DecodeError),
}

impl Error {
    /// One field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::Invalid(vec![(field.into(), description.into())])
    }

    /// FAILED_PRECONDITION without metadata.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Precondition(reason, message.into(), Vec::new())
    }

    /// The stable reason this error carries, if any (what tests and clients match on).
    pub fn reason(&self) -> Option<String> {
        match self {
            Error::PermissionDenied(r, _) | Error::NotFound(r, _) | Error::Precondition(r, ..) => {
                Some((*r).to_owned())
            }
            Error::Downstream(status) => status::reason_of(status),
            _ => None,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => status::invalid_argument(violations),
            Error::Unauthenticated => status::with_reason(
                Code::Unauthenticated,
                "API_KEY_INVALID",
                "send \"authorization: Bearer <api key>\" with a valid, unrevoked key",
            ),
            Error::PermissionDenied(reason, message) => {
                status::with_reason(Code::PermissionDenied, reason, message)
            }
            Error::NotFound(reason, message) => {
                status::with_reason(Code::NotFound, reason, message)
            }
            Error::Precondition(reason, message, metadata) => status::with_reason_and_metadata(
                Code::FailedPrecondition,
                reason,
                message,
                metadata.into_iter().collect(),
            ),
            Error::Aborted(message) => {
                status::with_reason(Code::Aborted, "CONCURRENT_MODIFICATION", message)
            }
            Error::RateLimited(retry_after) => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info("RATE_LIMITED", status::ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    "too many requests for this key; retry after the delay in RetryInfo",
                    details,
                )
            }
            Error::Dependency { dependency, detail } => {
                tracing::warn!(dependency, %detail, "dependency unavailable");
                status::with_reason_and_metadata(
                    Code::Unavailable,
                    "DEPENDENCY_UNAVAILABLE",
                    format!(
                        "{dependency} is unavailable; retry the same call with the same request_id"
                    ),
                    HashMap::from([("dependency".to_owned(), dependency.to_owned())]),
                )
            }
            Error::Downstream(status) => status,
            Error::Db(error) => match error {
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                    status::with_reason_and_metadata(
                        Code::Unavailable,
                        "DEPENDENCY_UNAVAILABLE",
                        "the gateway database is unavailable; retry the same call",
                        HashMap::from([("dependency".to_owned(), "gateway-db".to_owned())]),
                    )
                }
                other => status::internal(&other),
            },
            Error::Decode(error) => status::internal(&error),
        }
    }
}

/// Handler results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
