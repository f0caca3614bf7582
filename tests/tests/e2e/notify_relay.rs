//! The outbox relay over real gRPC, on SQLite and on PostgreSQL: events ledger-svc and cards-svc
//! write with their changes reach notify-svc (stored once, de-duplicated by id), and while
//! notify-svc is down a receipt is still booked and its events arrive once notify-svc is up.
//!
//! notify-svc has no RPC yet that lists what it ingested, and `TestSuite` does not expose its
//! database, so these tests build the suite through `kopilka::Suite` themselves (the same
//! wiring `TestSuite` uses) to keep notify-svc's database handle, and read the events with
//! `notify_svc::store::received_events`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kopilka::{Ports, Suite, SuiteConfig};
use kopilka_proto::cards as cpb;
use kopilka_proto::ledger as lpb;
use kopilka_proto::notify::event_service_client::EventServiceClient;
use kopilka_proto::notify::IngestEventsRequest;
use kopilka_proto::types::{event::Payload, BasketLine, Event};
use kopilka_runtime::{with_db, Db};
use kopilka_tests::Channel;
use kopilka_tests::{free_port, Backend, TempPostgres};
use prost::Message;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const M: &str = "m-relay";

/// Runs each scenario `async fn(Backend)` once per backend.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $scenario() { super::$scenario(kopilka_tests::Backend::Sqlite).await; } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $scenario() { super::$scenario(kopilka_tests::Backend::PostgresRedis).await; } )*
        }
    };
}

on_both!(ledger_and_cards_events_reach_notify, notify_down_then_up);

/// Services running until dropped.
struct Running {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn new() -> Self {
        Running {
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    fn run(&mut self, host: kopilka_runtime::host::Host) {
        let stop = self.shutdown.clone().cancelled_owned();
        self.tasks.push(tokio::spawn(async move {
            let _ = host.run_until(stop).await;
        }));
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Where each service keeps its data: a temp dir for SQLite, or a temporary PostgreSQL.
struct Storage {
    dir: tempfile::TempDir,
    postgres: Option<TempPostgres>,
}

impl Storage {
    async fn new(backend: Backend) -> Self {
        kopilka_tests::init_tracing();
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::PostgresRedis => Some(
                tokio::task::spawn_blocking(TempPostgres::start)
                    .await
                    .expect("start PostgreSQL"),
            ),
        };
        Storage {
            dir: tempfile::tempdir().expect("temp dir"),
            postgres,
        }
    }

    /// The database URL of service `name`.
    async fn url(&self, name: &str) -> String {
        match &self.postgres {
            Some(pg) => pg.create_database(name).await,
            None => format!(
                "sqlite://{}",
                self.dir.path().join(format!("{name}.db")).display()
            ),
        }
    }
}

fn channel(addr: SocketAddr) -> Channel {
    kopilka_tests::channel(addr)
}

fn rid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "relay-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A receipt that accrues 10 points to `customer`.
fn receipt(receipt_id: &str, customer: &str) -> lpb::RecordReceiptRequest {
    lpb::RecordReceiptRequest {
        merchant_id: M.into(),
        request_id: rid(),
        receipt: Some(lpb::ReceiptInput {
            receipt_id: receipt_id.into(),
            customer_id: customer.into(),
            store_id: "store-1".into(),
            terminal_id: "till-1".into(),
            currency: "RUB".into(),
            lines: vec![lpb::ReceiptLine {
                line: Some(BasketLine {
                    line_id: "1".into(),
                    product_id: "milk".into(),
                    name: "Milk".into(),
                    unit_price: "100".into(),
                    quantity: "1".into(),
                    ..Default::default()
                }),
                accrual_points: "10".into(),
                ..Default::default()
            }],
            redeem_points: "0".into(),
            ..Default::default()
        }),
    }
}

async fn received(db: &Db) -> Vec<Event> {
    notify_svc::store::received_events(db, M)
        .await
        .expect("read notify's events")
        .iter()
        .map(|bytes| Event::decode(bytes.as_slice()).expect("a stored event decodes"))
        .collect()
}

/// Polls notify-svc's events until `done` holds for them (at most 30 s).
async fn wait_for(db: &Db, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = received(db).await;
        if done(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not reach notify-svc; it has {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn purchase_of(events: &[Event], receipt_id: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(&e.payload, Some(Payload::PurchaseConfirmed(p)) if p.receipt_id == receipt_id))
        .count()
}

fn accrual_of(events: &[Event], receipt_id: &str) -> usize {
    events
        .iter()
        .filter(
            |e| matches!(&e.payload, Some(Payload::PointsAccrued(p)) if p.receipt_id == receipt_id),
        )
        .count()
}

/// Outbox rows of a service not yet marked delivered.
async fn undelivered(db: &Db) -> i64 {
    with_db!(db, pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(pool)
            .await
            .expect("count the outbox")
    })
}

async fn wait_until_delivered(db: &Db, service: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = undelivered(db).await;
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service}'s outbox still has {left} undelivered events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole suite (through `Suite::build`, which points ledger-svc and cards-svc at notify-svc):
/// a receipt's PurchaseConfirmed and PointsAccrued and a registration's CustomerRegistered reach
/// notify-svc once each, the producers mark them delivered, and sending them again is counted as
/// duplicates.
async fn ledger_and_cards_events_reach_notify(backend: Backend) {
    let storage = Storage::new(backend).await;
    let mut config = SuiteConfig::embedded(
        storage.dir.path(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ports::RANDOM,
    );
    config.set_service_token(&kopilka_tests::service_token());
    if storage.postgres.is_some() {
        config.gateway.service.database_url = SecretString::from(storage.url("gateway").await);
        config.cards.service.database_url = SecretString::from(storage.url("cards").await);
        config.rules.service.database_url = SecretString::from(storage.url("rules").await);
        config.ledger.service.database_url = SecretString::from(storage.url("ledger").await);
        config.notify.service.database_url = SecretString::from(storage.url("notify").await);
    }
    let suite = Suite::build(config).await.expect("the suite builds");
    let addrs = suite.addrs();
    let (notify_db, ledger_db, cards_db) = (
        suite.notify.db().clone(),
        suite.ledger.db().clone(),
        suite.cards.db().clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(suite.run_until(shutdown.clone()));

    let mut ledger = lpb::ledger_service_client::LedgerServiceClient::new(channel(addrs.ledger));
    ledger
        .record_receipt(receipt("r-1", "c-1"))
        .await
        .expect("RecordReceipt");
    let mut customers =
        cpb::customer_service_client::CustomerServiceClient::new(channel(addrs.cards));
    let created = customers
        .create_customer(cpb::CreateCustomerRequest {
            merchant_id: M.into(),
            request_id: rid(),
            profile: Some(cpb::CustomerProfile {
                first_name: "Ivan".into(),
                phone: "+79161234567".into(),
                ..Default::default()
            }),
            registration: Some(cpb::RegistrationSource {
                channel: cpb::RegistrationChannel::Register as i32,
                store_id: "store-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("CreateCustomer")
        .into_inner()
        .customer
        .expect("customer");

    let events = wait_for(
        &notify_db,
        "the receipt's and the registration's events",
        |e| {
            purchase_of(e, "r-1") == 1
                && accrual_of(e, "r-1") == 1
                && e.iter().any(|e| {
                    e.customer_id == created.customer_id
                        && matches!(e.payload, Some(Payload::CustomerRegistered(_)))
                })
        },
    )
    .await;
    let purchase = events
        .iter()
        .find(|e| matches!(e.payload, Some(Payload::PurchaseConfirmed(_))))
        .unwrap();
    assert_eq!(
        (purchase.producer.as_str(), purchase.customer_id.as_str()),
        ("ledger-svc", "c-1")
    );
    wait_until_delivered(&ledger_db, "ledger-svc").await;
    wait_until_delivered(&cards_db, "cards-svc").await;

    // A relay repeating a batch (at least once) changes nothing: IngestEvents counts them as
    // duplicates, and notify-svc still has each event once.
    let mut intake = EventServiceClient::new(channel(addrs.notify));
    let again = intake
        .ingest_events(IngestEventsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            events: events.clone(),
        })
        .await
        .expect("IngestEvents")
        .into_inner();
    assert_eq!((again.accepted, again.duplicates), (0, events.len() as u32));
    assert_eq!(received(&notify_db).await.len(), events.len());

    shutdown.cancel();
    task.await
        .expect("suite task")
        .expect("suite stops cleanly");
}

/// notify-svc down: ledger-svc still books the receipt (its events wait in the outbox); once
/// notify-svc starts on the address ledger-svc was given, the events arrive and are marked
/// delivered.
async fn notify_down_then_up(backend: Backend) {
    let storage = Storage::new(backend).await;
    let notify_port = free_port();
    let notify_addr = SocketAddr::from(([127, 0, 0, 1], notify_port));

    let mut running = Running::new();
    let mut config = ledger_svc::Config::default();
    config.service.listen_addr = "127.0.0.1:0".parse().unwrap();
    config.service.service_token = Some(kopilka_tests::service_token());
    config.service.database_url = SecretString::from(storage.url("ledger").await);
    config.notify_url = Some(format!("http://{notify_addr}"));
    let host = ledger_svc::build(config).await.expect("ledger-svc builds");
    let ledger_addr = host.local_addr();
    let ledger_db = host.db().clone();
    running.run(host);

    let mut ledger = lpb::ledger_service_client::LedgerServiceClient::new(channel(ledger_addr));
    let booked = ledger
        .record_receipt(receipt("r-down", "c-down"))
        .await
        .expect("RecordReceipt succeeds while notify-svc is down")
        .into_inner();
    assert!(!booked.already_recorded);
    // The relay has had time to fail a few times; the events are still waiting.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        undelivered(&ledger_db).await,
        2,
        "PurchaseConfirmed and PointsAccrued wait in the outbox"
    );

    let mut notify_config = notify_svc::Config::default();
    notify_config.service.listen_addr = notify_addr;
    notify_config.service.service_token = Some(kopilka_tests::service_token());
    notify_config.service.database_url = SecretString::from(storage.url("notify").await);
    let notify = notify_svc::build(notify_config)
        .await
        .expect("notify-svc builds on the port ledger-svc was given");
    let notify_db = notify.db().clone();
    running.run(notify);

    let events = wait_for(&notify_db, "the receipt's events", |e| {
        purchase_of(e, "r-down") == 1 && accrual_of(e, "r-down") == 1
    })
    .await;
    assert_eq!(events.len(), 2, "each event once: {events:?}");
    wait_until_delivered(&ledger_db, "ledger-svc").await;
    running.stop().await;
}
