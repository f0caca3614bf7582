//! What can go wrong in the gateway, by what the caller can do about it, and the one place where
//! that becomes a gRPC status.

use std::collections::HashMap;
use std::time::Duration;

use kopilka_runtime::status::{self, Refusal};
use kopilka_runtime::validate::Violations;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A gateway operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: field violations naming the caller's fields, under VALIDATION_FAILED or a
    /// more specific reason (LIMIT_EXCEEDED …). Nothing changed.
    #[error("invalid argument: {0}")]
    Invalid(#[from] Violations),
    /// No key, or a key that is malformed, unknown or revoked: UNAUTHENTICATED API_KEY_INVALID.
    #[error("a valid API key is required")]
    Unauthenticated,
    /// A refusal with a stable reason and the metadata errors.proto documents for it: the key
    /// may not do this (PERMISSION_DENIED), something named does not exist for this merchant
    /// (NOT_FOUND), the request cannot be applied in the current state (FAILED_PRECONDITION).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// A concurrent call changed what this one read, more often than it re-read:
    /// ABORTED CONCURRENT_MODIFICATION. Nothing of this call is kept; retrying is safe.
    #[error("{0}")]
    Aborted(String),
    /// Too many calls: RESOURCE_EXHAUSTED RATE_LIMITED with a RetryInfo and the limit (requests
    /// per second).
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration, limit: u32 },
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
    /// The gateway's own fault (a request it built was refused): INTERNAL, logged.
    #[error("{0}")]
    Internal(String),
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
        Error::Invalid(Violations::one(field, description))
    }

    /// FAILED_PRECONDITION without metadata.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal::precondition(reason, message).into()
    }

    /// NOT_FOUND without metadata.
    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal::not_found(reason, message).into()
    }

    /// A dependency's INVALID_ARGUMENT re-addressed to the caller's request: each violation's
    /// field path starting with an internal prefix of `paths` is renamed to the caller's. A
    /// violation of a field the caller did not send (the gateway filled it) is the gateway's
    /// fault, not the caller's: the whole error becomes INTERNAL. Other errors pass unchanged.
    pub fn for_caller(self, paths: &[(&str, &str)]) -> Self {
        let Error::Downstream(status) = &self else {
            return self;
        };
        if status.code() != Code::InvalidArgument {
            return self;
        }
        let info = status.get_details_error_info();
        let mut renamed = Violations::new();
        for (field, description) in status::field_violations_of(status) {
            let caller_field = paths.iter().find_map(|(internal, caller)| {
                let rest = field.strip_prefix(internal)?;
                (rest.is_empty() || rest.starts_with(['.', '['])).then(|| format!("{caller}{rest}"))
            });
            let Some(caller_field) = caller_field else {
                return Error::Internal(format!(
                    "a dependency refused a field the gateway filled: {field}: {description}"
                ));
            };
            match &info {
                Some(info) if info.reason != kopilka_runtime::validate::VALIDATION_FAILED => {
                    let mut metadata: Vec<(&'static str, String)> = Vec::new();
                    for (key, value) in &info.metadata {
                        // `field` metadata names a field too.
                        let value = match key.as_str() {
                            "field" => caller_field.clone(),
                            _ => value.clone(),
                        };
                        if let Some(key) = METADATA_KEYS.iter().find(|k| **k == key.as_str()) {
                            metadata.push((*key, value));
                        }
                    }
                    let reason = REASONS
                        .iter()
                        .find(|r| **r == info.reason)
                        .copied()
                        .unwrap_or(kopilka_runtime::validate::VALIDATION_FAILED);
                    renamed.add_with_reason(caller_field, description, reason, metadata);
                }
                _ => renamed.add(caller_field, description),
            }
        }
        if renamed.is_empty() {
            // Refused without naming any field: nothing of the caller's to point at.
            return Error::Internal(format!(
                "a dependency refused a request the gateway built: {}",
                status.message()
            ));
        }
        Error::Invalid(renamed)
    }

    /// The stable reason this error carries, if any (what tests and clients match on).
    pub fn reason(&self) -> Option<String> {
        match self {
            Error::Refused(r) => Some(r.reason.to_owned()),
            Error::Downstream(status) => status::reason_of(status),
            _ => None,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(violations) => violations.into(),
            Error::Unauthenticated => status::with_reason(
                Code::Unauthenticated,
                "API_KEY_INVALID",
                "send \"authorization: Bearer <api key>\" with a valid, unrevoked key",
            ),
            Error::Refused(refusal) => refusal.into(),
            Error::Aborted(message) => {
                status::with_reason(Code::Aborted, "CONCURRENT_MODIFICATION", message)
            }
            Error::RateLimited { retry_after, limit } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.set_error_info(
                    "RATE_LIMITED",
                    status::ERROR_DOMAIN,
                    HashMap::from([("limit".to_owned(), limit.to_string())]),
                );
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
            Error::Db(error) if kopilka_runtime::db::is_unavailable(&error) => {
                kopilka_runtime::db::unavailable_status()
            }
            Error::Db(error) => status::internal(&error),
            Error::Decode(error) => status::internal(&error),
            e @ Error::Internal(_) => status::internal(&e),
        }
    }
}

/// The INVALID_ARGUMENT reasons a dependency may give that name the caller's input.
const REASONS: &[&str] = &[
    "LIMIT_EXCEEDED",
    "TIMESTAMP_IN_FUTURE",
    "PAGE_TOKEN_INVALID",
    "INVALID_CHECKSUM",
    "INVALID_IDENTIFIER",
    "BASKET_INVALID",
];

/// The metadata keys those reasons carry.
const METADATA_KEYS: &[&str] = &["field", "limit", "kind"];

/// Handler results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
