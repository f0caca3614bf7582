//! Building gRPC statuses with `google.rpc` error details that every gRPC client can read:
//! `BadRequest` field violations for bad input, `ErrorInfo` with a stable reason otherwise.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every Kopilka error.
pub const ERROR_DOMAIN: &str = "kopilka";

/// INVALID_ARGUMENT VALIDATION_FAILED carrying one `BadRequest` field violation per
/// `(field path, description)`.
pub fn invalid_argument<F, D>(violations: impl IntoIterator<Item = (F, D)>) -> Status
where
    F: Into<String>,
    D: Into<String>,
{
    bad_request(violations, "VALIDATION_FAILED", HashMap::new())
}

/// INVALID_ARGUMENT with one field violation and a stable reason (e.g. INVALID_CHECKSUM), for
/// bad input a client may want to tell apart from other bad input.
pub fn invalid_field_with_reason(field: &str, description: &str, reason: &str) -> Status {
    invalid_field_with_metadata(field, description, reason, HashMap::new())
}

/// Like [`invalid_field_with_reason`], with `ErrorInfo.metadata` (e.g. `kind`).
pub fn invalid_field_with_metadata(
    field: &str,
    description: &str,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    bad_request([(field, description)], reason, metadata)
}

/// INVALID_ARGUMENT with `BadRequest` violations beside an `ErrorInfo` (every Kopilka error
/// carries one).
pub(crate) fn bad_request<F, D>(
    violations: impl IntoIterator<Item = (F, D)>,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status
where
    F: Into<String>,
    D: Into<String>,
{
    let violations: Vec<FieldViolation> = violations
        .into_iter()
        .map(|(f, d)| FieldViolation::new(f, d))
        .collect();
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_bad_request(violations);
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A refusal with a stable reason: the gRPC code, the `ErrorInfo.reason` errors.proto names, a
/// message for humans and the metadata errors.proto documents for that reason. Every service's
/// error enum wraps one, so metadata is added the same way everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: &'static str,
    pub message: String,
    pub metadata: Vec<(&'static str, String)>,
}

impl Refusal {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            reason,
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// NOT_FOUND with `reason`.
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal::new(Code::NotFound, reason, message)
    }

    /// FAILED_PRECONDITION with `reason`.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal::new(Code::FailedPrecondition, reason, message)
    }

    /// One metadata entry (values are strings, as in `ErrorInfo`).
    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.metadata.push((key, value.to_string()));
        self
    }

    /// The value of a metadata entry, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        let metadata = r
            .metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        with_reason_and_metadata(r.code, r.reason, r.message, metadata)
    }
}

/// A status with an `ErrorInfo` whose `reason` is a stable `UPPER_SNAKE` code clients match on.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_reason_and_metadata(code, reason, message, HashMap::new())
}

/// Like [`with_reason`], with `ErrorInfo.metadata` (e.g. which dependency is unavailable).
pub fn with_reason_and_metadata(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// INTERNAL with an opaque message; the whole cause chain goes to the log, not to the caller.
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %chain, "internal error");
    Status::internal("internal error; the server log has the details")
}

/// The `ErrorInfo.reason` of a status, if it carries one.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The `(field, description)` pairs of a status's `BadRequest`, if it carries one.
pub fn field_violations_of(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|br| {
            br.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = invalid_argument([("lines[0].quantity", "must be positive")]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status).as_deref(), Some("VALIDATION_FAILED"));
        assert_eq!(
            field_violations_of(&status),
            vec![(
                "lines[0].quantity".to_owned(),
                "must be positive".to_owned()
            )]
        );
    }

    #[test]
    fn a_refusal_carries_its_metadata() {
        let status: Status = Refusal::precondition("INSUFFICIENT_POINTS", "short")
            .with("available", "10")
            .with("requested", "25")
            .into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.reason, "INSUFFICIENT_POINTS");
        assert_eq!(info.metadata.len(), 2);
        assert_eq!(info.metadata["available"], "10");
        assert_eq!(info.metadata["requested"], "25");
    }

    #[test]
    fn reason_round_trips() {
        let status = with_reason(
            Code::FailedPrecondition,
            "INSUFFICIENT_POINTS",
            "not enough",
        );
        assert_eq!(reason_of(&status).as_deref(), Some("INSUFFICIENT_POINTS"));
    }
}
