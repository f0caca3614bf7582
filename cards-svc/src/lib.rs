//! cards-svc: who the customer is (FEATURES C1–C8) — card numbers, barcodes, magstripe and
//! contactless identifiers, phones, profiles and consents, tiers (cached), referral links,
//! registration links.
//!
//! - [`identifiers`]: reading every identifier form (pure).
//! - [`store`]: the only SQL, one [`store::CardsTx`] implemented for both engines.
//! - [`cache`]: the tier cache (Redis or in-process), never stale by construction.
//! - [`cards`]: shared state and idempotent mutations; [`customers`], [`identify`], [`tiers`],
//!   [`referrals`], [`registration`], [`settings`]: the operations.
//! - [`api`]: the tonic services; [`error`]: the one mapping to gRPC statuses.
//!
//! The gRPC API (`kopilka.cards.v1`) is defined in `proto/kopilka/cards/v1`.

pub mod api;
pub mod cache;
pub mod cards;
pub mod config;
pub mod customers;
pub mod error;
pub mod identifiers;
pub mod identify;
pub mod referrals;
pub mod registration;
pub mod settings;
pub mod store;
pub mod tiers;

use std::time::Duration;

use kopilka_proto::cards as pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use kopilka_runtime::outbox::{NotifySink, RelayOptions};
use kopilka_runtime::service_auth::{self, TokenError};
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
    #[error("invalid ledger URL")]
    LedgerUrl(#[from] tonic::transport::Error),
    #[error("invalid notify URL")]
    NotifyUrl(#[source] tonic::transport::Error),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Opens the database and the cache, runs migrations and binds the port; `run_until` then serves.
/// With a `notify_url`, a background job relays the outbox's events to notify-svc.
pub async fn build(config: Config) -> Result<Host, BuildError> {
    let cache = cache::TierCache::open(
        config.redis_url.as_ref(),
        config.tier_cache,
        Duration::from_secs(config.tier_cache_ttl_secs),
    )?;
    tracing::info!(?cache, "tier cache backend");
    let ledger = match &config.ledger_url {
        Some(url) => Some(LedgerServiceClient::new(service_auth::channel(
            url,
            config.service.outbound_token()?,
            Duration::from_secs(2),
            Duration::from_secs(10),
        )?)),
        None => None,
    };
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
    let host = Host::start("cards-svc", config.service, MIGRATIONS).await?;
    let cards = cards::Cards::new(host.db().clone(), cache, ledger);
    let api = api::CardsApi(cards.clone());
    let retention = chrono::Duration::hours(config.idempotency_retention_hours as i64);
    let outbox = kopilka_runtime::outbox::SqlOutbox(host.db().clone());
    let host = host
        .route(|r| {
            r.add_service(pb::customer_service_server::CustomerServiceServer::new(
                api.clone(),
            ))
            .add_service(pb::identifier_service_server::IdentifierServiceServer::new(
                api.clone(),
            ))
            .add_service(pb::tier_service_server::TierServiceServer::new(api.clone()))
            .add_service(pb::referral_service_server::ReferralServiceServer::new(
                api.clone(),
            ))
            .add_service(
                pb::registration_service_server::RegistrationServiceServer::new(api.clone()),
            )
            .add_service(pb::cards_settings_service_server::CardsSettingsServiceServer::new(api))
        })
        .spawn_background(async move {
            // Request ids are kept long enough for register retries, then pruned hourly.
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                if let Err(error) = cards.prune(retention).await {
                    tracing::warn!(%error, "pruning idempotency records failed");
                }
            }
        });
    Ok(match notify {
        Some(sink) => host.spawn_background(kopilka_runtime::outbox::relay(
            "cards-svc",
            outbox,
            sink,
            RelayOptions::default(),
        )),
        None => host,
    })
}
