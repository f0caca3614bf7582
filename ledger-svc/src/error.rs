//! What can go wrong in a ledger operation, by what the caller can do about it, and the one
//! place where that becomes a gRPC status.

use kopilka_runtime::status::{self, Refusal};
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;
use tonic::Status;

use crate::settings::Settings;

/// A ledger operation's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: field violations under VALIDATION_FAILED or a more specific reason
    /// (LIMIT_EXCEEDED, TIMESTAMP_IN_FUTURE, PAGE_TOKEN_INVALID). Nothing changed.
    #[error("invalid argument: {0}")]
    Invalid(#[from] Violations),
    /// Refused with a stable reason and the metadata errors.proto documents for it: NOT_FOUND
    /// (HOLD_NOT_FOUND …) or FAILED_PRECONDITION (INSUFFICIENT_POINTS, HOLD_EXPIRED …).
    #[error("{0}")]
    Refused(#[from] Refusal),
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

    /// INSUFFICIENT_POINTS, the amounts formatted like the balance's.
    pub fn insufficient(s: &Settings, available: Decimal, requested: Decimal) -> Self {
        let (available, requested) = (s.points(available), s.points(requested));
        Refusal::precondition(
            "INSUFFICIENT_POINTS",
            format!("insufficient points: {available} available, {requested} requested"),
        )
        .with("available", available)
        .with("requested", requested)
        .into()
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
            Error::Invalid(violations) => Status::from(violations),
            Error::Refused(refusal) => refusal.into(),
            Error::Db(ref e) if kopilka_runtime::db::is_unavailable(e) => {
                kopilka_runtime::db::unavailable_status()
            }
            ref other => status::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kopilka_proto::ledger as pb;
    use kopilka_runtime::Db;
    use tonic::Code;

    use crate::testing::*;

    /// A database that does not hand out a connection in time is DEPENDENCY_UNAVAILABLE.
    #[tokio::test]
    async fn a_pool_timeout_names_the_database() {
        let (l, _) = ledger_with_acquire_timeout(Duration::from_millis(100)).await;
        let Db::Sqlite(pool) = l.db() else {
            unreachable!("the test ledger runs on SQLite")
        };
        let _only = pool.acquire().await.unwrap();
        let read = l
            .get_balance(&pb::GetBalanceRequest {
                merchant_id: M.into(),
                customer_id: "c-1".into(),
                expiring_within: None,
            })
            .await;
        assert_eq!(
            refusal(read),
            answer(
                Code::Unavailable,
                "DEPENDENCY_UNAVAILABLE",
                &[("dependency", "database")]
            )
        );
    }
}
