//! ledger-svc alone on a random port, on SQLite or a temporary PostgreSQL, with a clock the test
//! moves by hand, and a client to it.

use std::sync::Arc;

use crate::Channel;
use chrono::{DateTime, TimeZone, Utc};
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use ledger_svc::domain::clock::ManualClock;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Backend, TempPostgres};

/// A running ledger-svc.
pub struct TestLedger {
    pub client: LedgerServiceClient<Channel>,
    pub clock: ManualClock,
    pub addr: std::net::SocketAddr,
    /// The database URL (for tests that reopen it).
    pub database_url: String,
    pub postgres: Option<TempPostgres>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// 2026-01-05 09:00 UTC, a Monday: where the manual clock starts.
pub fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap()
}

impl TestLedger {
    /// Starts ledger-svc on `backend` (Redis plays no part in the ledger).
    pub async fn start(backend: Backend) -> Self {
        crate::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let (database_url, postgres) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("ledger.db").display()),
                None,
            ),
            Backend::PostgresRedis => {
                let pg = tokio::task::spawn_blocking(TempPostgres::start)
                    .await
                    .expect("start PostgreSQL");
                (pg.create_database("ledger").await, Some(pg))
            }
        };
        let mut config = ledger_svc::Config::default();
        config.service.listen_addr = "127.0.0.1:0".parse().unwrap();
        config.service.database_url = SecretString::from(database_url.clone());
        config.service.max_connections = 32;
        config.service.service_token = Some(crate::service_token());
        // The tests drive due work themselves (ProcessDueLots) with the manual clock.
        config.due_interval = std::time::Duration::from_secs(3600);
        let clock = ManualClock::new(epoch());
        let host = ledger_svc::build_with_clock(config, Arc::new(clock.clone()))
            .await
            .expect("ledger-svc builds");
        let addr = host.local_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = host.run_until(token.cancelled_owned()).await;
        });
        let channel = crate::channel(addr);
        TestLedger {
            client: LedgerServiceClient::new(channel),
            clock,
            addr,
            database_url,
            postgres,
            shutdown,
            task: Some(task),
            _dir: dir,
        }
    }

    /// A fresh client (for concurrent callers).
    pub fn client(&self) -> LedgerServiceClient<Channel> {
        self.client.clone()
    }

    /// Stops the service and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestLedger {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
