//! ledger-svc: The points ledger (FEATURES L1–L6): accounts, an append-only double-entry journal, lots with
//! activation and expiry, holds, receipts, refunds and purchase aggregates.
//!
//! - [`config`]: settings from the environment.
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.ledger.v1`) is defined in `proto/kopilka/ledger/v1`.

pub mod config;
pub mod domain;

use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use sqlx::migrate::Migrator;

pub use config::Config;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The ledger schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Opens the database, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, StartError> {
    Host::start("ledger-svc", config.service, MIGRATIONS).await
}
