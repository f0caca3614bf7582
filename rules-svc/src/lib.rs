//! rules-svc: The loyalty program (FEATURES R1–R15): versioned declarative programs and their evaluation.
//!
//! - [`config`]: settings from the environment.
//! - [`document`]: the program's YAML/JSON form.
//! - [`settings`]: a program's settings with defaults; [`money`]: rounding and largest-remainder
//!   allocation; [`catalog`]: the category tree; [`context`]: reading the customer context.
//! - [`plan`]: a program compiled for evaluation; [`evaluate`]: one receipt, a pure function.
//! - [`tier`]: tier decisions (R13), a pure function.
//! - [`action`]: points for non-purchase actions (R14), a pure function.
//! - [`validate`]: program validation with field paths, and what evaluation needs.
//! - [`error`]: errors → gRPC statuses, in one place.
//! - [`store`]: program versions, activations, the change feed and idempotency records (SQL);
//!   [`catalog_store`]: the category tree (SQL and its checks).
//! - [`programs`]: [`programs::Programs`], the shared state and the operations of
//!   ProgramService and CatalogService, and `resolve` for evaluation; [`cache`]: compiled plans,
//!   schedules and catalogs per replica, refreshed from the change feed; [`api`]: the tonic
//!   handlers of ProgramService and CatalogService; [`evaluation_api`]: EvaluationService;
//!   [`simulate`]: simulation totals.
//!
//! How a publication reaches every replica: `rules-svc/README.md`.
//! - [`MIGRATIONS`]: the schema, one migration directory per engine.
//!
//! The gRPC API (`kopilka.rules.v1`) is defined in `proto/kopilka/rules/v1`.

pub mod action;
pub mod api;
pub mod cache;
pub mod catalog;
pub mod catalog_store;
pub mod config;
pub mod context;
pub mod document;
pub mod error;
pub mod evaluate;
pub mod evaluation_api;
pub mod money;
pub mod plan;
pub mod programs;
pub mod settings;
pub mod simulate;
pub mod store;
pub mod tier;
pub mod validate;

use std::time::Duration;

use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::rules::catalog_service_server::CatalogServiceServer;
use kopilka_proto::rules::evaluation_service_server::EvaluationServiceServer;
use kopilka_proto::rules::program_service_server::ProgramServiceServer;
use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use kopilka_runtime::server::Router;
use kopilka_runtime::service_auth::{self, TokenError};
use sqlx::migrate::Migrator;

use api::ProgramApi;
use cache::{CacheSettings, ProgramCache};
use evaluation_api::EvaluationApi;
use programs::Programs;
use store::Store;

pub use config::Config;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The rules schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Why rules-svc could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("invalid cards-svc URL")]
    CardsUrl(#[from] tonic::transport::Error),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Opens the database, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, BuildError> {
    Ok(build_with_state(config).await?.0)
}

/// Like [`build`], also returning the shared state (tests resolve programs through it).
pub async fn build_with_state(config: Config) -> Result<(Host, Programs), BuildError> {
    let cards = match &config.cards_url {
        Some(url) => Some(TierServiceClient::new(service_auth::channel(
            url,
            config.service.outbound_token()?,
            Duration::from_secs(2),
            Duration::from_secs(5),
        )?)),
        None => None,
    };
    let host = Host::start("rules-svc", config.service, MIGRATIONS).await?;
    let store = Store::new(host.db().clone());
    let cache = ProgramCache::new(
        store.clone(),
        CacheSettings {
            plans: config.rules_plan_cache,
            poll: Duration::from_millis(config.rules_change_poll_ms.max(10)),
            ..CacheSettings::default()
        },
    );
    let programs = Programs::new(store, cache.clone(), cards);
    let health = host.health();
    health
        .set_serving::<ProgramServiceServer<ProgramApi>>()
        .await;
    health
        .set_serving::<CatalogServiceServer<ProgramApi>>()
        .await;
    health
        .set_serving::<EvaluationServiceServer<EvaluationApi>>()
        .await;
    let retention = chrono::Duration::hours(config.idempotency_retention_hours as i64);
    let pruner = programs.clone();
    let host = host
        .route(|router| services(router, &programs))
        .spawn_background(cache.follow_changes())
        .spawn_background(async move {
            // Request ids are kept long enough for retries, then pruned hourly.
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                if let Err(error) = pruner.prune(retention).await {
                    tracing::warn!(%error, "pruning idempotency records failed");
                }
            }
        });
    Ok((host, programs))
}

/// The gRPC services of rules-svc, all sharing one [`Programs`] (EvaluationService is added
/// here with a clone of it, and set serving in [`build_with_state`]).
fn services(router: Router, programs: &Programs) -> Router {
    let api = ProgramApi(programs.clone());
    router
        .add_service(ProgramServiceServer::new(api.clone()))
        .add_service(CatalogServiceServer::new(api))
        .add_service(EvaluationServiceServer::new(EvaluationApi::new(
            programs.clone(),
        )))
}
