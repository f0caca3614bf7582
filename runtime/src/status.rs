//! Building gRPC statuses with `google.rpc` error details that every gRPC client can read:
//! `BadRequest` field violations for bad input, `ErrorInfo` with a stable reason otherwise.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every Kopilka error.
pub const ERROR_DOMAIN: &str = "kopilka";

/// INVALID_ARGUMENT carrying one `BadRequest` field violation per `(field path, description)`.
pub fn invalid_argument<F, D>(violations: impl IntoIterator<Item = (F, D)>) -> Status
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
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(violations),
    )
}

/// INVALID_ARGUMENT with one field violation and a stable reason (e.g. INVALID_CHECKSUM), for
/// bad input a client may want to tell apart from other bad input.
pub fn invalid_field_with_reason(field: &str, description: &str, reason: &str) -> Status {
    let mut details = ErrorDetails::with_bad_request(vec![FieldViolation::new(field, description)]);
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
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
        assert_eq!(
            field_violations_of(&status),
            vec![(
                "lines[0].quantity".to_owned(),
                "must be positive".to_owned()
            )]
        );
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
