//! notify-svc: Notifications (FEATURES N1–N8): templates, channel settings, durable delivery of SMS, e-mail
//! and push, triggered and scheduled messages, reviews.
//!
//! - [`config`]: settings from the environment.
//! - [`events`]: `EventService`, the intake of the other services' outbox events (stored,
//!   de-duplicated by event id); [`store`]: the SQL.
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.notify.v1`) is defined in `proto/kopilka/notify/v1`.

pub mod config;
pub mod events;
pub mod store;

use kopilka_proto::notify::event_service_server::EventServiceServer;
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
    let host = Host::start("notify-svc", config.service, MIGRATIONS).await?;
    let events = events::EventApi::new(host.db().clone());
    host.health()
        .set_serving::<EventServiceServer<events::EventApi>>()
        .await;
    Ok(host.route(|r| r.add_service(EventServiceServer::new(events))))
}
