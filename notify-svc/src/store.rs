//! The only SQL of notify-svc, written once for both engines (see `kopilka_runtime::db`).

use chrono::{DateTime, Utc};
use kopilka_runtime::{with_db, Db, Timestamp};
use sqlx::QueryBuilder;

/// An event as stored by [`insert_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub merchant_id: String,
    pub event_id: String,
    /// `kopilka.type.v1.EventType` of the payload (0 when unknown).
    pub event_type: i32,
    pub customer_id: String,
    pub producer: String,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The encoded `kopilka.type.v1.Event`.
    pub event: Vec<u8>,
}

/// Stores `events` in one statement, skipping those already stored (by merchant and event id,
/// also within the batch); returns how many were new.
pub async fn insert_events(db: &Db, events: &[EventRow], now: DateTime<Utc>) -> sqlx::Result<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    with_db!(db, pool => {
        let mut q = QueryBuilder::new(
            "INSERT INTO events (merchant_id, event_id, event_type, customer_id, producer, occurred_at, event, received_at) ",
        );
        q.push_values(events, |mut b, e| {
            b.push_bind(&e.merchant_id)
                .push_bind(&e.event_id)
                .push_bind(e.event_type)
                .push_bind(&e.customer_id)
                .push_bind(&e.producer)
                .push_bind(e.occurred_at.map(Timestamp))
                .push_bind(&e.event)
                .push_bind(Timestamp(now));
        });
        q.push(" ON CONFLICT (merchant_id, event_id) DO NOTHING");
        Ok(q.build().execute(pool).await?.rows_affected())
    })
}

/// The encoded events received for `merchant`, in the order they were received (for the
/// consumers of events and for tests).
pub async fn received_events(db: &Db, merchant: &str) -> sqlx::Result<Vec<Vec<u8>>> {
    with_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT event FROM events WHERE merchant_id = $1 ORDER BY received_at, event_id",
        )
        .bind(merchant)
        .fetch_all(pool)
        .await
    })
}
