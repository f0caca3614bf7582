//! The `checkouts` table: one row per (merchant, register receipt id) with its state and the
//! stored answer (an encoded `kopilka.gateway.v1.Checkout`).

use kopilka_proto::gateway::{Checkout, CheckoutState};
use kopilka_runtime::{with_db, Db, Timestamp};
use prost::Message;

use crate::error::Result;

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
        let c = &stored.checkout;
        let now = Timestamp::now();
        with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO checkouts (merchant_id, receipt_id, state, customer_id, hold_id, content_hash, body, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (merchant_id, receipt_id) DO UPDATE SET
               state = EXCLUDED.state, customer_id = EXCLUDED.customer_id, hold_id = EXCLUDED.hold_id,
               content_hash = EXCLUDED.content_hash, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
        )
        .bind(merchant_id)
        .bind(&c.receipt_id)
        .bind(c.state().as_str_name())
        .bind(&c.customer_id)
        .bind(&stored.hold_id)
        .bind(stored.content_hash.as_deref())
        .bind(c.encode_to_vec())
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }
}
