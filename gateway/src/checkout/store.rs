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
}

impl Stored {
    pub fn state(&self) -> CheckoutState {
        self.checkout.state()
    }
}

const UPSERT: &str =
    "INSERT INTO checkouts (merchant_id, receipt_id, state, customer_id, hold_id, content_hash, body, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
     ON CONFLICT (merchant_id, receipt_id) DO UPDATE SET
       state = EXCLUDED.state, customer_id = EXCLUDED.customer_id, hold_id = EXCLUDED.hold_id,
       content_hash = EXCLUDED.content_hash, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at";

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
        let row: Option<(String, Option<Vec<u8>>, Vec<u8>)> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT hold_id, content_hash, body FROM checkouts WHERE merchant_id = $1 AND receipt_id = $2",
        )
        .bind(merchant_id)
        .bind(receipt_id)
        .fetch_optional(pool)
        .await)?;
        row.map(|(hold_id, content_hash, body)| {
            Ok(Stored {
                checkout: Checkout::decode(body.as_slice())?,
                hold_id,
                content_hash,
            })
        })
        .transpose()
    }

    /// Inserts or replaces the row.
    pub async fn put(&self, merchant_id: &str, stored: &Stored) -> Result<()> {
        self.write(merchant_id, stored, &[], None, true).await
    }

    /// Like [`Checkouts::put`], but PostgreSQL acknowledges before the WAL is flushed: for a
    /// calculation, which books nothing (a crash may lose it; GetCheckout then shows the one
    /// before). It keeps the disk flush out of Calculate's latency.
    pub async fn put_calculation(&self, merchant_id: &str, stored: &Stored) -> Result<()> {
        self.write(merchant_id, stored, &[], None, false).await
    }

    /// Inserts or replaces the row and stores `answers` (by request id) and a tier decision
    /// still to make in one transaction: one commit per booked receipt, and never a booked
    /// checkout without its answers.
    pub async fn commit(
        &self,
        merchant_id: &str,
        stored: &Stored,
        answers: &[Answer<'_>],
        pending_tier: Option<&tier_retry::Pending>,
    ) -> Result<()> {
        self.write(merchant_id, stored, answers, pending_tier, true)
            .await
    }

    /// The row, `answers` and a pending tier decision in one transaction; `flushed: false`
    /// lets PostgreSQL answer before the WAL reaches the disk.
    async fn write(
        &self,
        merchant_id: &str,
        stored: &Stored,
        answers: &[Answer<'_>],
        pending_tier: Option<&tier_retry::Pending>,
        flushed: bool,
    ) -> Result<()> {
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
            sqlx::query(UPSERT)
                .bind(merchant_id)
                .bind(&c.receipt_id)
                .bind(c.state().as_str_name())
                .bind(&c.customer_id)
                .bind(&stored.hold_id)
                .bind(stored.content_hash.as_deref())
                .bind(&body)
                .bind(now)
                .execute(&mut *tx)
                .await?;
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
                sqlx::query(tier_retry::INSERT)
                    .bind(merchant_id)
                    .bind(&c.receipt_id)
                    .bind(p.request.encode_to_vec())
                    .bind(now)
                    .bind(&p.error)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
