//! The outbox relay: domain events (`kopilka.type.v1.Event`) that a service wrote to its outbox
//! table in the transaction of the change that caused them are pushed to notify-svc
//! (`EventService.IngestEvents`) by one background loop, [`relay`].
//!
//! Delivery is at least once: a batch is claimed, sent, and marked relayed only after notify-svc
//! acknowledged it; a crash in between sends it again, and notify-svc de-duplicates by event id.
//! While notify-svc is unreachable the loop backs off exponentially (up to
//! [`RelayOptions::max_backoff`]) and the events simply wait in the outbox: the services' own
//! RPCs never call notify-svc and never wait for the relay.
//!
//! [`SqlOutbox`] is the store over a service's `outbox` table (on either engine). A claim is
//! a lease (`claimed_until`), taken in one statement (on PostgreSQL with `FOR UPDATE SKIP
//! LOCKED`), so several replicas relay side by side without sending the same batch together; a
//! replica that dies holding a lease delays its batch by the lease only.

use std::future::Future;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::service_auth::{self, ServiceChannel, ServiceToken};
use chrono::{DateTime, Utc};
use kopilka_proto::notify::event_service_client::EventServiceClient;
use kopilka_proto::notify::IngestEventsRequest;
use kopilka_proto::types::Event;
use prost::Message;
use sqlx::QueryBuilder;

use crate::{Db, Timestamp};

/// The key of an outbox row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub merchant_id: String,
    pub event_id: String,
}

/// An unrelayed outbox row, as claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub merchant_id: String,
    pub event_id: String,
    /// The encoded `kopilka.type.v1.Event`.
    pub event: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

impl OutboxEvent {
    /// The row's key.
    pub fn key(&self) -> EventKey {
        EventKey {
            merchant_id: self.merchant_id.clone(),
            event_id: self.event_id.clone(),
        }
    }
}

/// A service's outbox table, as the relay sees it.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` unrelayed events whose claim (if any) lapsed before `now`, oldest
    /// first, until `lease_until`; returns them oldest first.
    fn claim(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<Vec<OutboxEvent>>> + Send;

    /// Marks `keys` relayed at `at` (they are never claimed again).
    fn mark_relayed(
        &self,
        keys: &[EventKey],
        at: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Gives up the claim of `keys` (after a failed delivery) so the next pass takes them again.
    fn release(&self, keys: &[EventKey]) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// Where relayed events go: notify-svc's `EventService.IngestEvents` in production.
pub trait EventSink: Send + Sync + 'static {
    /// Delivers one batch; `Ok` only once the receiver has stored it durably.
    fn deliver(
        &self,
        request_id: String,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

/// notify-svc's `EventService`, over a lazily connected channel.
#[derive(Debug, Clone)]
pub struct NotifySink {
    client: EventServiceClient<ServiceChannel>,
}

impl NotifySink {
    /// A sink for notify-svc at `url` (`http://host:50055`); nothing is connected until the first
    /// batch, so notify-svc may start later.
    pub fn connect_lazy(
        url: &str,
        token: ServiceToken,
        rpc_timeout: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = service_auth::channel(url, token, Duration::from_secs(2), rpc_timeout)?;
        Ok(Self {
            client: EventServiceClient::new(channel),
        })
    }
}

impl EventSink for NotifySink {
    async fn deliver(&self, request_id: String, events: Vec<Event>) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .ingest_events(IngestEventsRequest {
                merchant_id: String::new(),
                request_id,
                events,
            })
            .await
            .map(|_| ())
    }
}

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Events per `IngestEvents` call (notify-svc takes at most 500).
    pub batch_size: usize,
    /// Pause between passes when the outbox is empty.
    pub idle_interval: Duration,
    /// First pause after a failure; doubled on each further failure.
    pub initial_backoff: Duration,
    /// Longest pause after failures.
    pub max_backoff: Duration,
    /// How long a claimed batch is reserved for this relay (longer than a delivery takes).
    pub lease: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            idle_interval: Duration::from_millis(500),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            lease: Duration::from_secs(30),
        }
    }
}

/// Why one pass of the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox store")]
    Store(#[from] sqlx::Error),
    #[error("delivery to notify-svc failed: {0}")]
    Deliver(tonic::Status),
}

/// One pass: claims a batch, delivers it, marks it relayed. Returns how many rows it relayed
/// (0 = the outbox had nothing to send).
pub async fn relay_once<S: OutboxStore, K: EventSink>(
    store: &S,
    sink: &K,
    options: &RelayOptions,
) -> Result<usize, RelayError> {
    let now = Utc::now();
    let lease = chrono::Duration::from_std(options.lease).unwrap_or(chrono::Duration::seconds(30));
    let batch = store
        .claim(options.batch_size.clamp(1, 500), now, now + lease)
        .await?;
    let Some(first) = batch.first() else {
        return Ok(0);
    };
    let request_id = format!("outbox-{}-{}", first.event_id, batch.len());
    let keys: Vec<EventKey> = batch.iter().map(OutboxEvent::key).collect();
    let mut events = Vec::with_capacity(batch.len());
    for row in &batch {
        match Event::decode(row.event.as_slice()) {
            Ok(event) => events.push(event),
            // Stays in the outbox (marked relayed, not deleted) instead of blocking every batch.
            Err(error) => tracing::error!(
                merchant_id = %row.merchant_id,
                event_id = %row.event_id,
                %error,
                "outbox event cannot be decoded; skipped"
            ),
        }
    }
    if !events.is_empty() {
        if let Err(status) = sink.deliver(request_id, events).await {
            if let Err(error) = store.release(&keys).await {
                tracing::debug!(%error, "releasing the outbox claim failed; it lapses by itself");
            }
            return Err(RelayError::Deliver(status));
        }
    }
    store.mark_relayed(&keys, Utc::now()).await?;
    Ok(batch.len())
}

/// Relays `store`'s outbox to `sink` for as long as it runs (spawn it as a background job): a
/// full batch is followed at once by the next, an empty outbox is polled every
/// `idle_interval`, and failures back off exponentially up to `max_backoff`.
pub async fn relay<S: OutboxStore, K: EventSink>(
    service: &'static str,
    store: S,
    sink: K,
    options: RelayOptions,
) {
    let mut backoff = Backoff::new(options.initial_backoff, options.max_backoff);
    let mut failing = false;
    loop {
        match relay_once(&store, &sink, &options).await {
            Ok(relayed) => {
                backoff.reset();
                if failing {
                    failing = false;
                    tracing::info!(service, relayed, "outbox relay recovered");
                }
                if relayed < options.batch_size.clamp(1, 500) {
                    tokio::time::sleep(options.idle_interval).await;
                }
            }
            Err(error) => {
                let pause = backoff.failed();
                if failing {
                    tracing::debug!(service, %error, ?pause, "outbox relay still failing");
                } else {
                    failing = true;
                    tracing::warn!(service, %error, ?pause, "outbox relay failing; events wait in the outbox");
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The `outbox` table of a service (cards-svc and ledger-svc have the same columns:
/// `merchant_id, event_id, event, created_at, delivered_at, claimed_until`) as the relay sees
/// it: rows are claimed with a lease (`claimed_until`) in one statement — on PostgreSQL `FOR UPDATE SKIP LOCKED`, so
/// replicas never claim the same rows together; SQLite has one writer — and get `delivered_at`
/// once notify-svc has acknowledged them.
#[derive(Debug, Clone)]
pub struct SqlOutbox(pub Db);

/// `(merchant_id, event_id) IN ((…), …)` for `keys`.
fn push_keys<'a, DB>(q: &mut QueryBuilder<'a, DB>, keys: &'a [EventKey])
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    q.push("(merchant_id, event_id) IN (");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.push("(")
            .push_bind(key.merchant_id.as_str())
            .push(", ")
            .push_bind(key.event_id.as_str())
            .push(")");
    }
    q.push(")");
}

impl OutboxStore for SqlOutbox {
    async fn claim(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> sqlx::Result<Vec<OutboxEvent>> {
        let lock = match &self.0 {
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Db::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE outbox SET claimed_until = $1
             WHERE (merchant_id, event_id) IN (
                 SELECT merchant_id, event_id FROM outbox
                 WHERE delivered_at IS NULL AND (claimed_until IS NULL OR claimed_until <= $2)
                 ORDER BY created_at, event_id LIMIT $3{lock})
             RETURNING merchant_id, event_id, event, created_at"
        );
        let mut rows: Vec<(String, String, Vec<u8>, Timestamp)> = crate::with_db!(&self.0, pool => {
            sqlx::query_as(&sql)
                .bind(Timestamp(lease_until))
                .bind(Timestamp(now))
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
        });
        // RETURNING gives no order: oldest first, as claimed.
        rows.sort_by(|a, b| (a.3, &a.1).cmp(&(b.3, &b.1)));
        Ok(rows
            .into_iter()
            .map(|(merchant_id, event_id, event, created_at)| OutboxEvent {
                merchant_id,
                event_id,
                event,
                created_at: created_at.0,
            })
            .collect())
    }

    async fn mark_relayed(&self, keys: &[EventKey], at: DateTime<Utc>) -> sqlx::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        crate::with_db!(&self.0, pool => {
            let mut q = QueryBuilder::new("UPDATE outbox SET claimed_until = NULL, delivered_at = ");
            q.push_bind(Timestamp(at)).push(" WHERE ");
            push_keys(&mut q, keys);
            q.build().execute(pool).await.map(|_| ())
        })
    }

    async fn release(&self, keys: &[EventKey]) -> sqlx::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        crate::with_db!(&self.0, pool => {
            let mut q = QueryBuilder::new("UPDATE outbox SET claimed_until = NULL WHERE delivered_at IS NULL AND ");
            push_keys(&mut q, keys);
            q.build().execute(pool).await.map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Clone)]
    struct Row {
        event: OutboxEvent,
        claimed_until: Option<DateTime<Utc>>,
        relayed: bool,
    }

    /// An outbox in memory.
    #[derive(Clone, Default)]
    struct MemoryStore(Arc<Mutex<Vec<Row>>>);

    impl MemoryStore {
        fn push(&self, id: &str) {
            let event = Event {
                event_id: id.to_owned(),
                merchant_id: "m".to_owned(),
                ..Default::default()
            };
            self.0.lock().unwrap().push(Row {
                event: OutboxEvent {
                    merchant_id: "m".to_owned(),
                    event_id: id.to_owned(),
                    event: event.encode_to_vec(),
                    created_at: Utc::now(),
                },
                claimed_until: None,
                relayed: false,
            });
        }

        fn relayed(&self) -> Vec<String> {
            let rows = self.0.lock().unwrap();
            rows.iter()
                .filter(|r| r.relayed)
                .map(|r| r.event.event_id.clone())
                .collect()
        }
    }

    impl OutboxStore for MemoryStore {
        async fn claim(
            &self,
            limit: usize,
            now: DateTime<Utc>,
            lease_until: DateTime<Utc>,
        ) -> sqlx::Result<Vec<OutboxEvent>> {
            let mut rows = self.0.lock().unwrap();
            Ok(rows
                .iter_mut()
                .filter(|r| !r.relayed && r.claimed_until.is_none_or(|c| c <= now))
                .take(limit)
                .map(|r| {
                    r.claimed_until = Some(lease_until);
                    r.event.clone()
                })
                .collect())
        }

        async fn mark_relayed(&self, keys: &[EventKey], _at: DateTime<Utc>) -> sqlx::Result<()> {
            for r in self.0.lock().unwrap().iter_mut() {
                if keys.contains(&r.event.key()) {
                    r.relayed = true;
                    r.claimed_until = None;
                }
            }
            Ok(())
        }

        async fn release(&self, keys: &[EventKey]) -> sqlx::Result<()> {
            for r in self.0.lock().unwrap().iter_mut() {
                if keys.contains(&r.event.key()) {
                    r.claimed_until = None;
                }
            }
            Ok(())
        }
    }

    /// A receiver that is down for its first `failures` calls.
    #[derive(Clone, Default)]
    struct FlakySink {
        failures: Arc<AtomicUsize>,
        received: Arc<Mutex<Vec<String>>>,
    }

    impl EventSink for FlakySink {
        async fn deliver(
            &self,
            _request_id: String,
            events: Vec<Event>,
        ) -> Result<(), tonic::Status> {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(tonic::Status::unavailable("down"));
            }
            let mut received = self.received.lock().unwrap();
            received.extend(events.into_iter().map(|e| e.event_id));
            Ok(())
        }
    }

    fn fast() -> RelayOptions {
        RelayOptions {
            batch_size: 2,
            idle_interval: Duration::from_millis(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            lease: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn nothing_is_marked_relayed_until_delivery_succeeds() {
        let store = MemoryStore::default();
        store.push("e1");
        store.push("e2");
        store.push("e3");
        let sink = FlakySink::default();
        sink.failures.store(1, Ordering::SeqCst);

        let err = relay_once(&store, &sink, &fast()).await.unwrap_err();
        assert!(matches!(err, RelayError::Deliver(_)), "{err:?}");
        assert!(store.relayed().is_empty(), "a failed batch stays unrelayed");
        assert!(
            store
                .0
                .lock()
                .unwrap()
                .iter()
                .all(|r| r.claimed_until.is_none()),
            "its claim is released for the next pass"
        );

        assert_eq!(relay_once(&store, &sink, &fast()).await.unwrap(), 2);
        assert_eq!(store.relayed(), ["e1", "e2"], "oldest first, one batch");
        assert_eq!(relay_once(&store, &sink, &fast()).await.unwrap(), 1);
        assert_eq!(relay_once(&store, &sink, &fast()).await.unwrap(), 0);
        assert_eq!(*sink.received.lock().unwrap(), ["e1", "e2", "e3"]);
    }

    #[tokio::test]
    async fn claimed_rows_are_not_claimed_twice_while_leased() {
        let store = MemoryStore::default();
        store.push("e1");
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(30);
        assert_eq!(store.claim(10, now, later).await.unwrap().len(), 1);
        assert!(store.claim(10, now, later).await.unwrap().is_empty());
        let after_lease = later + chrono::Duration::seconds(1);
        assert_eq!(
            store
                .claim(10, after_lease, after_lease)
                .await
                .unwrap()
                .len(),
            1,
            "a lapsed lease is claimed again"
        );
    }

    #[tokio::test]
    async fn the_loop_backs_off_while_down_and_delivers_everything_later() {
        let store = MemoryStore::default();
        for i in 0..5 {
            store.push(&format!("e{i}"));
        }
        let sink = FlakySink::default();
        sink.failures.store(4, Ordering::SeqCst);
        let job = tokio::spawn(relay("test", store.clone(), sink.clone(), fast()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.relayed().len() < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not relayed in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        job.abort();
        assert_eq!(sink.failures.load(Ordering::SeqCst), 0);
        assert_eq!(
            *sink.received.lock().unwrap(),
            ["e0", "e1", "e2", "e3", "e4"],
            "every event once, in order"
        );
    }
}
