//! The end-to-end test harness: real servers on free ports, never ones left running.
//!
//! - [`TempPostgres`]: a throw-away PostgreSQL cluster (initdb in a temp dir, free port, another
//!   when that one is taken first).
//! - [`TempRedis`]: a throw-away `redis-server` on a free port (likewise).
//! - [`TestSuite`]: the five Kopilka services on random ports, on SQLite or on PostgreSQL + Redis.
//! - [`stack::Stack`]: the services as separate processes, with gateway replicas.
//! - [`TestSuite::seed_merchant`] and [`authed`]: gateway tenants and keys for gateway tests.
//!
//! Missing server binaries are installed with apt (when running as root), so a fresh machine
//! needs nothing but `cargo test --workspace`.

pub mod gateway;
pub mod install;
pub mod ledger;
pub mod postgres;
pub mod processes;
pub mod redis;
pub mod stack;
pub mod suite;

pub use gateway::{authed, SeededMerchant};
pub use postgres::{PgOptions, TempPostgres};
pub use redis::TempRedis;
pub use suite::{Backend, TestSuite};

use std::net::SocketAddr;

use kopilka_runtime::service_auth::{self, ServiceToken};
use secrecy::SecretString;

/// A channel tests call a service through: it carries the service token (the internal services
/// demand it; the gateway ignores it).
pub type Channel = service_auth::ServiceChannel;

/// The service token of every service a test starts (`KOPILKA_SERVICE_TOKEN` of processes).
pub const SERVICE_TOKEN: &str = "kopilka-tests-service-token";

/// [`SERVICE_TOKEN`] as settings hold it.
pub fn service_token() -> SecretString {
    SecretString::from(SERVICE_TOKEN)
}

/// A lazily connecting channel to `url` (`http://…`) with the test service token.
pub fn channel_to(url: &str) -> Channel {
    let token = ServiceToken::new(&service_token()).expect("a valid test token");
    service_auth::channel(
        url,
        token,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(60),
    )
    .expect("a valid URI")
}

/// [`channel_to`] a local address.
pub fn channel(addr: SocketAddr) -> Channel {
    channel_to(&format!("http://{addr}"))
}

/// Runs each scenario `async fn(TestSuite)` as two tests: on SQLite and on PostgreSQL + Redis.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $scenario() {
                super::$scenario($crate::TestSuite::start($crate::Backend::Sqlite).await).await;
            } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $scenario() {
                super::$scenario($crate::TestSuite::start($crate::Backend::PostgresRedis).await).await;
            } )*
        }
    };
}

/// A port nobody listens on right now — and nothing keeps it so: another test may bind it the
/// next moment. For a dependency that is down (an address where nothing listens yet), and for
/// servers started on it that retry on another port when they find it taken
/// ([`processes::ServiceProcess::launch`], [`TempPostgres`], [`TempRedis`]). In-process
/// servers bind port 0 themselves instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

/// Quiet tracing for tests; `RUST_LOG=info cargo test` shows the services' logs.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}
