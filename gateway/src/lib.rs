//! gateway: the cash-register API (FEATURES G1–G5). It authenticates terminals and admins,
//! keeps merchants apart, and composes each checkout from cards, rules and ledger.
//!
//! - [`config`]: settings from the environment.
//! - [`keys`]: API key generation, parsing and constant-time verification.
//! - [`tenancy`]: merchants, stores, terminals and API keys (the gateway's only SQL).
//! - [`seed`]: the demo tenant of the embedded default.
//!
//! The public API (`kopilka.gateway.v1`) is defined in `proto/kopilka/gateway/v1`.

pub mod config;
pub mod keys;
pub mod seed;
pub mod tenancy;

use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use sqlx::migrate::Migrator;

pub use config::Config;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The gateway schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Opens the database, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, StartError> {
    Host::start("gateway", config.service, MIGRATIONS).await
}
