//! notify-svc: Notifications (FEATURES N1–N8): templates, channel settings, durable delivery of SMS, e-mail
//! and push, triggered and scheduled messages, reviews.
//!
//! - [`config`]: settings from the environment.
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.notify.v1`) is defined in `proto/kopilka/notify/v1`.

pub mod config;

use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use sqlx::migrate::Migrator;

pub use config::Config;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The notify schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Opens the database, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, StartError> {
    Host::start("notify-svc", config.service, MIGRATIONS).await
}
