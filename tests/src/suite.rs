//! The five services on random ports, for one test. Dropping the suite stops it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::Channel;
use kopilka::{Addrs, Ports, Suite, SuiteConfig};
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{TempPostgres, TempRedis};

/// What the services store their data in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: SQLite files in a temp dir, in-process cache.
    Sqlite,
    /// Production: a temporary PostgreSQL (a database per service) and a temporary Redis.
    PostgresRedis,
}

/// A running suite, its temporary servers and data.
pub struct TestSuite {
    pub addrs: Addrs,
    pub postgres: Option<TempPostgres>,
    pub redis: Option<TempRedis>,
    /// The gateway's database (to seed tenants: see [`TestSuite::seed_merchant`]).
    pub gateway_db: kopilka_runtime::Db,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestSuite {
    /// Starts the whole suite on `backend`.
    pub async fn start(backend: Backend) -> Self {
        crate::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config =
            SuiteConfig::embedded(dir.path(), IpAddr::V4(Ipv4Addr::LOCALHOST), Ports::RANDOM);
        // Scenarios ring up receipts faster than a cashier; rate limiting has its own test.
        config.gateway.terminal_rate_limit = 50;
        // The tier-retry test runs the retries by hand (`tier_retry::run_due`); a background
        // pass in between would race it.
        config.gateway.tier_retry_interval_secs = 3600;
        config.set_service_token(&crate::service_token());
        let (postgres, redis) = match backend {
            Backend::Sqlite => (None, None),
            Backend::PostgresRedis => {
                let pg = tokio::task::spawn_blocking(TempPostgres::start)
                    .await
                    .expect("start PostgreSQL");
                let redis = tokio::task::spawn_blocking(TempRedis::start)
                    .await
                    .expect("start Redis");
                let url = |s: String| SecretString::from(s);
                config.gateway.service.database_url = url(pg.create_database("gateway").await);
                config.cards.service.database_url = url(pg.create_database("cards").await);
                config.rules.service.database_url = url(pg.create_database("rules").await);
                config.ledger.service.database_url = url(pg.create_database("ledger").await);
                config.notify.service.database_url = url(pg.create_database("notify").await);
                config.cards.redis_url = Some(url(redis.url()));
                (Some(pg), Some(redis))
            }
        };
        let suite = Suite::build(config).await.expect("the suite builds");
        let addrs = suite.addrs();
        let gateway_db = suite.gateway.db().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(suite.run_until(shutdown.clone()));
        TestSuite {
            addrs,
            postgres,
            redis,
            gateway_db,
            shutdown,
            task: Some(task),
            _dir: dir,
        }
    }

    /// A channel to one of the services (connects lazily), with the service token.
    pub fn channel(&self, addr: SocketAddr) -> Channel {
        crate::channel(addr)
    }

    /// Triggers a graceful shutdown and waits for every service to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestSuite {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
