//! The tier decision after a purchase (R13), and its retries.
//!
//! Confirm decides the buyer's tier right after the receipt is booked. When rules-svc or
//! cards-svc cannot answer at that moment the receipt stays booked, and the decision's
//! DecideTier request is kept in `tier_retries` in the same commit as the checkout. A background
//! task ([`run_forever`]) sends it again with back-off until it is decided, so an upgrade earned
//! by an acknowledged purchase is never lost. Replaying is safe: DecideTier reads only the
//! request, and AssignTier's request id is derived from the receipt, so a decision applied
//! twice (two replicas, or a crash after AssignTier) changes the tier once.

use std::time::Duration;

use chrono::Utc;
use kopilka_proto::cards;
use kopilka_proto::rules::{DecideTierRequest, TierDecision};
use kopilka_runtime::{with_db, Db, Timestamp};
use prost::Message;
use tonic::Code;

use crate::deps::{Deadline, Retry, CARDS, RULES};
use crate::error::{Error, Result};
use crate::{dep_call, Gateway};

/// Rows read per [`run_due`] call.
const BATCH: i64 = 100;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What one decision came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// The program has no tier progression: nothing will ever change after a purchase.
    NoProgression,
    /// The tier stays.
    Kept,
    /// Upgraded; the tier as cards-svc now holds it.
    Upgraded(Option<cards::Tier>),
}

/// The request id of the AssignTier a receipt's decision makes (the same on every retry).
pub fn assign_request_id(receipt_id: &str) -> String {
    crate::idempotency::derived("tier", &[receipt_id])
}

/// DecideTier, then for an upgrade AssignTier and the tier as it now is.
pub async fn decide(
    gw: &Gateway,
    deadline: Deadline,
    request: DecideTierRequest,
    receipt_id: &str,
) -> Result<Decided> {
    let merchant_id = request.merchant_id.clone();
    let customer_id = request
        .customer
        .as_ref()
        .map(|c| c.customer_id.clone())
        .unwrap_or_default();
    let decision = dep_call!(
        gw,
        RULES,
        deadline,
        Retry::Idempotent,
        evaluation.decide_tier(request)
    );
    let decision = match decision {
        Ok(d) => d,
        Err(e) if e.reason().as_deref() == Some("NO_ACTIVE_PROGRAM") => return Ok(Decided::Kept),
        Err(e) => return Err(e),
    };
    match decision.decision() {
        TierDecision::NoProgression => return Ok(Decided::NoProgression),
        TierDecision::Upgrade => {}
        _ => return Ok(Decided::Kept),
    }
    dep_call!(
        gw,
        CARDS,
        deadline,
        Retry::Idempotent,
        tiers.assign_tier(cards::AssignTierRequest {
            merchant_id: merchant_id.clone(),
            request_id: assign_request_id(receipt_id),
            customer_id: customer_id.clone(),
            tier_code: decision.tier_code.clone(),
            source: cards::TierSource::Rule as i32,
            reason: decision.reason.clone(),
            rule_id: decision.rule_id.clone(),
            program_version: decision.program_version,
            lock: false,
            effective_at: None,
        })
    )?;
    let now = dep_call!(
        gw,
        CARDS,
        deadline,
        Retry::Idempotent,
        tiers.get_customer_tier(cards::GetCustomerTierRequest {
            merchant_id,
            customer_id,
        })
    )?;
    Ok(Decided::Upgraded(now.tier))
}

/// Whether trying again later may succeed: the dependency was down, slow or overloaded.
pub fn is_transient(error: &Error) -> bool {
    match error {
        Error::Dependency { .. } | Error::Db(_) => true,
        Error::Downstream(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Unknown
        ),
        _ => false,
    }
}

/// The wait after a failed attempt, given how many failed before it: 30 s, doubling, at most
/// an hour.
pub fn backoff(attempts: u32) -> Duration {
    kopilka_runtime::backoff::Backoff::nth(Duration::from_secs(30), MAX_BACKOFF, attempts)
}

/// Stores a pending decision, due at $6 (inside `Checkouts::commit`'s transaction).
pub const INSERT: &str =
    "INSERT INTO tier_retries (merchant_id, receipt_id, request, attempts, next_attempt_at, last_error, created_at)
     VALUES ($1, $2, $3, 0, $6, $5, $4) ON CONFLICT (merchant_id, receipt_id) DO NOTHING";

/// Forgets a decision that was made.
pub const FORGET: &str = "DELETE FROM tier_retries WHERE merchant_id = $1 AND receipt_id = $2";

/// A decision to keep for later.
pub struct Pending {
    pub request: DecideTierRequest,
    pub error: String,
}

/// What one [`run_due`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Decided now (upgraded or not) and forgotten.
    pub decided: u64,
    /// Upgrades among them.
    pub upgraded: u64,
    /// Still failing for a transient reason: tried again later.
    pub postponed: u64,
    /// Refused for good (e.g. the customer was merged away): forgotten, with a warning.
    pub dropped: u64,
}

/// The `tier_retries` table.
#[derive(Debug, Clone)]
pub struct TierRetries {
    db: Db,
}

type Row = (String, String, Vec<u8>, i64);

impl TierRetries {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Keeps a decision on its own (Confirm keeps it inside the checkout's commit instead).
    pub async fn keep(&self, merchant_id: &str, receipt_id: &str, pending: &Pending) -> Result<()> {
        let now = Timestamp::now();
        with_db!(&self.db, pool => sqlx::query(INSERT)
            .bind(merchant_id)
            .bind(receipt_id)
            .bind(pending.request.encode_to_vec())
            .bind(now)
            .bind(&pending.error)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Decisions waiting for this merchant.
    pub async fn waiting(&self, merchant_id: &str) -> Result<i64> {
        Ok(with_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM tier_retries WHERE merchant_id = $1",
        )
        .bind(merchant_id)
        .fetch_one(pool)
        .await)?)
    }

    async fn due(&self, now: Timestamp) -> Result<Vec<Row>> {
        Ok(with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, receipt_id, request, attempts FROM tier_retries
             WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(pool)
        .await)?)
    }

    async fn forget(&self, merchant_id: &str, receipt_id: &str) -> Result<()> {
        with_db!(&self.db, pool => sqlx::query(FORGET)
        .bind(merchant_id)
        .bind(receipt_id)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    async fn postpone(
        &self,
        merchant_id: &str,
        receipt_id: &str,
        attempts: i64,
        next: Timestamp,
        error: &str,
    ) -> Result<()> {
        with_db!(&self.db, pool => sqlx::query(
            "UPDATE tier_retries SET attempts = $3, next_attempt_at = $4, last_error = $5
             WHERE merchant_id = $1 AND receipt_id = $2",
        )
        .bind(merchant_id)
        .bind(receipt_id)
        .bind(attempts)
        .bind(next)
        .bind(error)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}

/// Sends the decisions due at `now` again.
pub async fn run_due(gw: &Gateway, now: chrono::DateTime<Utc>) -> Result<RetryReport> {
    let mut report = RetryReport::default();
    for (merchant_id, receipt_id, body, attempts) in gw.tier_retries.due(now.into()).await? {
        let outcome = match DecideTierRequest::decode(body.as_slice()) {
            Ok(request) => decide(gw, Deadline::none(), request, &receipt_id).await,
            Err(e) => Err(Error::Decode(e)),
        };
        match outcome {
            Ok(decided) => {
                report.decided += 1;
                if matches!(decided, Decided::Upgraded(_)) {
                    report.upgraded += 1;
                }
                gw.tier_retries.forget(&merchant_id, &receipt_id).await?;
            }
            Err(error) if is_transient(&error) => {
                report.postponed += 1;
                let wait = chrono::Duration::from_std(backoff(attempts.max(0) as u32))
                    .unwrap_or(chrono::Duration::hours(1));
                let attempts = attempts.saturating_add(1);
                let next = Timestamp::from(now + wait);
                gw.tier_retries
                    .postpone(
                        &merchant_id,
                        &receipt_id,
                        attempts,
                        next,
                        &error.to_string(),
                    )
                    .await?;
            }
            Err(error) => {
                report.dropped += 1;
                tracing::warn!(%error, %merchant_id, %receipt_id, "a tier decision after a purchase was refused; dropped");
                gw.tier_retries.forget(&merchant_id, &receipt_id).await?;
            }
        }
    }
    Ok(report)
}

/// Sends due decisions every `interval`, the first time one interval after start.
pub async fn run_forever(gw: Gateway, interval: Duration) {
    let interval = interval.max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match run_due(&gw, Utc::now()).await {
            Ok(r) if r != RetryReport::default() => tracing::info!(?r, "tier decisions retried"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retrying tier decisions failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), Duration::from_secs(30));
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(3), Duration::from_secs(240));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn only_outages_are_retried() {
        let down = Error::Dependency {
            dependency: "rules",
            detail: "connection refused".into(),
        };
        assert!(is_transient(&down));
        assert!(is_transient(&Error::Downstream(
            tonic::Status::unavailable("x")
        )));
        assert!(!is_transient(&Error::Downstream(tonic::Status::not_found(
            "merged"
        ))));
        assert!(!is_transient(&Error::invalid("customer", "bad")));
    }
}
