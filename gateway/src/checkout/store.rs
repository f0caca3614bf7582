//! The `checkouts` table: one row per (merchant, register receipt id) with its state and the
//! stored answer (an encoded `kopilka.gateway.v1.Checkout`).

use kopilka_proto::gateway::{Checkout, CheckoutState};
use kopilka_runtime::{with_db, Db, Timestamp};
use prost::Message;

use crate::error::Result;
use crate::tier_retry;

/// A stored checkout.
#[derive(Debug, Clone)]
pub struct Stored {
    pub checkout: Checkout,
    /// The ledger hold, when reserved.
    pub hold_id: String,
    /// Digest of the confirmed content (Confirm / SubmitOfflineReceipt).
    pub content_hash: Option<Vec<u8>>,
    /// The row's version when read; 0 for a checkout not stored yet. A write succeeds only
    /// while the row is still at this version.
    pub version: i64,
}

impl Stored {
    pub fn state(&self) -> CheckoutState {
        self.checkout.state()
    }
}

/// A new checkout; nothing when a concurrent call stored one first.
const INSERT: &str =
    "INSERT INTO checkouts (merchant_id, receipt_id, state, customer_id, hold_id, content_hash, body, created_at, updated_at, version)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 1)
     ON CONFLICT (merchant_id, receipt_id) DO NOTHING";

/// The next version of a checkout, only while it is at the version it was read at ($9).
const UPDATE: &str =
    "UPDATE checkouts SET state = $3, customer_id = $4, hold_id = $5, content_hash = $6, body = $7,
       updated_at = $8, version = version + 1
     WHERE merchant_id = $1 AND receipt_id = $2 AND version = $9";

/// `hold_id, content_hash, body, version` of a stored checkout.
type Row = (String, Option<Vec<u8>>, Vec<u8>, i64);

/// A write that lost to a concurrent one: the checkout changed since it was read.
#[derive(Debug)]
pub struct Stale;

/// An answer stored by request id with a checkout (see `requests`).
pub struct Answer<'a> {
    pub request_id: &'a str,
    pub operation: &'a str,
    pub request_hash: &'a [u8],
    pub response: Vec<u8>,
}

/// Checkout storage on either engine.
#[derive(Debug, Clone)]
pub struct Checkouts {
    db: Db,
}

impl Checkouts {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn get(&self, merchant_id: &str, receipt_id: &str) -> Result<Option<Stored>> {
        let row: Option<Row> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT hold_id, content_hash, body, version FROM checkouts WHERE merchant_id = $1 AND receipt_id = $2",
        )
        .bind(merchant_id)
        .bind(receipt_id)
        .fetch_optional(pool)
        .await)?;
        row.map(|(hold_id, content_hash, body, version)| {
            Ok(Stored {
                checkout: Checkout::decode(body.as_slice())?,
                hold_id,
                content_hash,
                version,
            })
        })
        .transpose()
    }

    /// Stores the checkout's next version (returned); [`Stale`] when it changed since it was
    /// read.
    pub async fn put(&self, merchant_id: &str, stored: &Stored) -> Result<Result<i64, Stale>> {
        self.write(merchant_id, stored, &[], None, true).await
    }

    /// Like [`Checkouts::put`], but PostgreSQL acknowledges before the WAL is flushed: for a
    /// calculation, which books nothing (a crash may lose it; GetCheckout then shows the one
    /// before). It keeps the disk flush out of Calculate's latency.
    pub async fn put_calculation(
        &self,
        merchant_id: &str,
        stored: &Stored,
    ) -> Result<Result<i64, Stale>> {
        self.write(merchant_id, stored, &[], None, false).await
    }

    /// Inserts or replaces the row and stores `answers` (by request id) and a tier decision
    /// still to make in one transaction: one commit per booked receipt, and never a booked
    /// checkout without its answers. The decision is made right after the commit
    /// ([`Checkouts::tier_decided`]); the retry task takes it up only if that did not happen
    /// within [`tier_retry::backoff`]`(0)`.
    pub async fn commit(
        &self,
        merchant_id: &str,
        stored: &Stored,
        answers: &[Answer<'_>],
        pending_tier: Option<&tier_retry::Pending>,
    ) -> Result<Result<i64, Stale>> {
        self.write(merchant_id, stored, answers, pending_tier, true)
            .await
    }

    /// The row's next version, `answers` and a pending tier decision in one transaction, or
    /// nothing at all when the row is no longer at `stored.version`; `flushed: false` lets
    /// PostgreSQL answer before the WAL reaches the disk.
    async fn write(
        &self,
        merchant_id: &str,
        stored: &Stored,
        answers: &[Answer<'_>],
        pending_tier: Option<&tier_retry::Pending>,
        flushed: bool,
    ) -> Result<Result<i64, Stale>> {
        let c = &stored.checkout;
        let now = Timestamp::now();
        let body = c.encode_to_vec();
        with_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            if !flushed && matches!(self.db, Db::Postgres(_)) {
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
            }
            let query = sqlx::query(if stored.version == 0 { INSERT } else { UPDATE })
                .bind(merchant_id)
                .bind(&c.receipt_id)
                .bind(c.state().as_str_name())
                .bind(&c.customer_id)
                .bind(&stored.hold_id)
                .bind(stored.content_hash.as_deref())
                .bind(&body)
                .bind(now);
            let query = if stored.version == 0 { query } else { query.bind(stored.version) };
            let written = query.execute(&mut *tx).await?.rows_affected();
            if written != 1 {
                tx.rollback().await?;
                return Ok(Err(Stale));
            }
            for a in answers {
                sqlx::query(crate::requests::INSERT_ANSWER)
                .bind(merchant_id)
                .bind(a.request_id)
                .bind(a.operation)
                .bind(a.request_hash)
                .bind(&a.response)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(p) = pending_tier {
                let due = chrono::DateTime::<chrono::Utc>::from(now)
                    + chrono::Duration::from_std(tier_retry::backoff(0)).unwrap_or_default();
                sqlx::query(tier_retry::INSERT)
                    .bind(merchant_id)
                    .bind(&c.receipt_id)
                    .bind(p.request.encode_to_vec())
                    .bind(now)
                    .bind(&p.error)
                    .bind(Timestamp::from(due))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(Ok(stored.version + 1))
    }

    /// The tier decision kept by [`Checkouts::commit`] is made: forgets it, and after an
    /// upgrade stores the checkout (while still at `stored.version`) and the answers that
    /// show the new tier. Without an upgrade nothing is lost if this write is (the retry
    /// task decides again, idempotently), so PostgreSQL need not flush it.
    pub async fn tier_decided(
        &self,
        merchant_id: &str,
        receipt_id: &str,
        upgrade: Option<(&Stored, &[Answer<'_>])>,
    ) -> Result<()> {
        let now = Timestamp::now();
        with_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            if upgrade.is_none() && matches!(self.db, Db::Postgres(_)) {
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some((stored, answers)) = upgrade {
                let c = &stored.checkout;
                sqlx::query(UPDATE)
                    .bind(merchant_id)
                    .bind(receipt_id)
                    .bind(c.state().as_str_name())
                    .bind(&c.customer_id)
                    .bind(&stored.hold_id)
                    .bind(stored.content_hash.as_deref())
                    .bind(c.encode_to_vec())
                    .bind(now)
                    .bind(stored.version)
                    .execute(&mut *tx)
                    .await?;
                for a in answers {
                    sqlx::query(
                        "UPDATE gateway_requests SET response = $3
                         WHERE merchant_id = $1 AND request_id = $2 AND operation = $4",
                    )
                    .bind(merchant_id)
                    .bind(a.request_id)
                    .bind(&a.response)
                    .bind(a.operation)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query(tier_retry::FORGET)
                .bind(merchant_id)
                .bind(receipt_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
