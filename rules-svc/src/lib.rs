//! rules-svc: The loyalty program (FEATURES R1–R15): versioned declarative programs and their evaluation.
//!
//! - [`config`]: settings from the environment.
//! - [`document`]: the program's YAML/JSON form.
//! - [`store`]: program versions and activations (the only SQL).
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.rules.v1`) is defined in `proto/kopilka/rules/v1`.

pub mod config;
pub mod document;
pub mod store;

use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use sqlx::migrate::Migrator;

pub use config::Config;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The rules schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Opens the database, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, StartError> {
    Host::start("rules-svc", config.service, MIGRATIONS).await
}
