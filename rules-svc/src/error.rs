//! What can go wrong in rules-svc, by what the caller can do about it, and the one place where
//! that becomes a gRPC status. Every status carries an `ErrorInfo` (domain "kopilka") with the
//! reason and the metadata errors.proto documents for it.

use std::collections::HashMap;

use kopilka_proto::rules::{Violation, ViolationSeverity};
use kopilka_runtime::status::{self, Refusal};
use kopilka_runtime::validate::{Violations, VALIDATION_FAILED};
use tonic::{Code, Status};

/// A rules-svc operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: field violations under VALIDATION_FAILED or a more specific reason
    /// (LIMIT_EXCEEDED, TIMESTAMP_IN_FUTURE, PAGE_TOKEN_INVALID, BASKET_INVALID …). Nothing
    /// changed.
    #[error("invalid argument: {0}")]
    Invalid(#[from] Violations),
    /// A program with ERROR violations: INVALID_ARGUMENT PROGRAM_INVALID, one field violation
    /// per finding (path of the bad field, `CODE: description`).
    #[error("the program is invalid")]
    ProgramInvalid(Vec<Violation>),
    /// Refused with a stable reason and the metadata errors.proto documents for it: something
    /// named does not exist for this merchant (NOT_FOUND), or the request cannot be applied in
    /// the current state (FAILED_PRECONDITION).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// A service this call needs is not answering: UNAVAILABLE DEPENDENCY_UNAVAILABLE with
    /// metadata `dependency` ("cards").
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    /// The database failed (a pool timeout is UNAVAILABLE DEPENDENCY_UNAVAILABLE "database").
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
}

/// `violations` under `reason` (e.g. BASKET_INVALID) unless one of them already has a more
/// specific one (LIMIT_EXCEEDED, TIMESTAMP_IN_FUTURE …). The field violations stay as they are.
pub fn with_default_reason(violations: Violations, reason: &'static str) -> Violations {
    if violations.reason() != VALIDATION_FAILED {
        return violations;
    }
    let mut out = Violations::new();
    for (i, (field, description)) in violations.fields().iter().enumerate() {
        if i == 0 {
            out.add_with_reason(field.clone(), description.clone(), reason, Vec::new());
        } else {
            out.add(field.clone(), description.clone());
        }
    }
    out
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

fn unavailable(dependency: &str, message: &str) -> Status {
    status::with_reason_and_metadata(
        Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
        message,
        HashMap::from([("dependency".to_owned(), dependency.to_owned())]),
    )
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => violations.into(),
            Error::ProgramInvalid(violations) => bad_request_with_reason(
                "PROGRAM_INVALID",
                violations
                    .into_iter()
                    .filter(|v| v.severity() != ViolationSeverity::Warning)
                    .map(|v| (v.field, format!("{}: {}", v.code, v.description)))
                    .collect(),
            ),
            Error::Refused(refusal) => refusal.into(),
            Error::Unavailable(dependency) => {
                unavailable(dependency, &format!("{dependency} is not answering"))
            }
            Error::Db(ref e) if kopilka_runtime::db::is_unavailable(e) => {
                kopilka_runtime::db::unavailable_status()
            }
            ref other => status::internal(other),
        }
    }
}

#[cfg(test)]
mod tests;
