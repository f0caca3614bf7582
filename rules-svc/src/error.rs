//! What can go wrong in rules-svc, by what the caller can do about it, and the one place where
//! that becomes a gRPC status.

use std::collections::HashMap;

use kopilka_proto::rules::{Violation, ViolationSeverity};
use kopilka_runtime::status;
use tonic::{Code, Status};

/// A rules-svc operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: `(field path, description)` pairs. Nothing changed.
    #[error("invalid argument")]
    Invalid(Vec<(String, String)>),
    /// Bad input with a stable reason (BASKET_INVALID, VALIDATION_FAILED …).
    #[error("invalid argument ({0})")]
    InvalidWithReason(&'static str, Vec<(String, String)>),
    /// A program with ERROR violations: INVALID_ARGUMENT PROGRAM_INVALID, one field violation
    /// per finding (path of the bad field, `CODE: description`).
    #[error("the program is invalid")]
    ProgramInvalid(Vec<Violation>),
    /// Something named does not exist (for this merchant): NOT_FOUND with the reason.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// The request cannot be applied in the current state: FAILED_PRECONDITION with a stable
    /// reason and `ErrorInfo.metadata`.
    #[error("{1}")]
    Precondition(&'static str, String, Vec<(String, String)>),
    /// Another service or the database is not answering: UNAVAILABLE DEPENDENCY_UNAVAILABLE.
    #[error("{0} is unavailable")]
    Unavailable(String),
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

    /// FAILED_PRECONDITION without metadata.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Precondition(reason, message.into(), Vec::new())
    }
}

fn bad_request_with_reason(reason: &str, violations: Vec<(String, String)>) -> Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
    let message = violations
        .iter()
        .map(|(f, d)| format!("{f}: {d}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|(f, d)| FieldViolation::new(f, d))
            .collect::<Vec<_>>(),
    );
    details.set_error_info(reason, status::ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => status::invalid_argument(violations),
            Error::InvalidWithReason(reason, violations) => {
                bad_request_with_reason(reason, violations)
            }
            Error::ProgramInvalid(violations) => bad_request_with_reason(
                "PROGRAM_INVALID",
                violations
                    .into_iter()
                    .filter(|v| v.severity() != ViolationSeverity::Warning)
                    .map(|v| (v.field, format!("{}: {}", v.code, v.description)))
                    .collect(),
            ),
            Error::NotFound(reason, message) => {
                status::with_reason(Code::NotFound, reason, message)
            }
            Error::Precondition(reason, message, metadata) => status::with_reason_and_metadata(
                Code::FailedPrecondition,
                reason,
                message,
                metadata.into_iter().collect(),
            ),
            Error::Unavailable(what) => status::with_reason_and_metadata(
                Code::Unavailable,
                "DEPENDENCY_UNAVAILABLE",
                format!("{what} is not answering"),
                HashMap::from([("dependency".to_owned(), what)]),
            ),
            Error::Db(sqlx::Error::PoolTimedOut) => status::with_reason(
                Code::Unavailable,
                "DEPENDENCY_UNAVAILABLE",
                "the database is not answering",
            ),
            ref other => status::internal(other),
        }
    }
}
