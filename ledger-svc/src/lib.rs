//! ledger-svc: The points ledger (FEATURES L1–L6): accounts, an append-only double-entry journal, lots with
//! activation and expiry, holds, receipts, refunds and purchase aggregates.
//!
//! - [`config`]: settings from the environment.
//! - [`domain`]: the pure rules — amounts, the clock, the per-customer [`domain::book::Book`].
//! - [`store`]: the only SQL, one [`store::LedgerTx`] implemented for both engines.
//! - [`ledger`], [`receipts`], [`reads`]: the operations; [`jobs`]: the background due-work loop.
//! - [`api`]: the tonic service; [`convert`]: proto conversions; [`error`]: errors → statuses.
//! - [`settings`]: per-merchant settings with defaults.
//!
//! How the ledger works (accounts, lots, debt, refunds, idempotency): `ledger-svc/README.md`.
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.ledger.v1`) is defined in `proto/kopilka/ledger/v1`.

pub mod activity;
pub mod api;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod jobs;
pub mod ledger;
pub mod merge;
pub mod reads;
pub mod receipts;
pub mod settings;
pub mod store;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use kopilka_proto::ledger::ledger_service_server::LedgerServiceServer;
use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use kopilka_runtime::outbox::{self, NotifySink, RelayOptions};
use sqlx::migrate::Migrator;

pub use config::Config;

use api::LedgerApi;
use domain::clock::{Clock, SystemClock};
use ledger::Ledger;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The ledger schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Why ledger-svc could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("invalid notify URL")]
    NotifyUrl(#[source] tonic::transport::Error),
    #[error(transparent)]
    Token(#[from] kopilka_runtime::service_auth::TokenError),
}

/// Opens the database, runs migrations and binds the port; `run_until` then serves. With a
/// `notify_url`, a background job relays the outbox's events to notify-svc.
pub async fn build(config: Config) -> Result<Host, BuildError> {
    build_with_clock(config, Arc::new(SystemClock)).await
}

/// Like [`build`], with the clock injected (tests move time by hand).
pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Host, BuildError> {
    let interval = config.due_interval;
    let options = RelayOptions::default();
    let notify = match &config.notify_url {
        Some(url) => Some(
            NotifySink::connect_lazy(
                url,
                config.service.outbound_token()?,
                Duration::from_secs(10),
            )
            .map_err(BuildError::NotifyUrl)?,
        ),
        None => None,
    };
    let host = Host::start("ledger-svc", config.service, MIGRATIONS).await?;
    let ledger = Ledger::new(host.db().clone(), clock);
    let health = host.health();
    health.set_serving::<LedgerServiceServer<LedgerApi>>().await;
    let jobs = ledger.clone();
    let mut host = host
        .route(|router| router.add_service(LedgerServiceServer::new(LedgerApi::new(ledger))))
        .spawn_background(async move { jobs::run_due_work(jobs, interval).await });
    if let Some(sink) = notify {
        let outbox = kopilka_runtime::outbox::SqlOutbox(host.db().clone());
        host = host.spawn_background(outbox::relay("ledger-svc", outbox, sink, options));
    }
    Ok(host)
}
