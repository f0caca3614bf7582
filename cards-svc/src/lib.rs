//! cards-svc: Who the customer is (FEATURES C1–C8): card numbers, barcodes, magstripe and contactless
//! identifiers, phones, profiles and consents, tiers (cached), referral links.
//!
//! - [`config`]: settings from the environment.
//! - [`cache`]: the tier cache backend (Redis or in-process).
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.cards.v1`) is defined in `proto/kopilka/cards/v1`.

pub mod cache;
pub mod config;

use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use sqlx::migrate::Migrator;

pub use config::Config;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The cards schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Why cards-svc could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("invalid Redis URL")]
    Redis(#[from] redis::RedisError),
}

/// Opens the database and the cache, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, BuildError> {
    let cache = cache::CacheBackend::open(config.redis_url.as_ref()).await?;
    tracing::info!(?cache, "tier cache backend");
    Ok(Host::start("cards-svc", config.service, MIGRATIONS).await?)
}
