//! gateway: the cash-register API (FEATURES G1–G5). It authenticates terminals and admins,
//! keeps merchants apart, and composes each checkout from cards, rules and ledger.
//!
//! - [`config`]: settings from the environment.
//! - [`admin`]: AdminService — stores, terminals, API keys; tiers, programs and categories forwarded.
//! - [`customers`]: CustomerService — registration with the start bonus, lookup, balances, cards.
//! - [`keys`]: API key generation, parsing and constant-time verification.
//! - [`auth`]: who is calling (merchant, scope, terminal) and per-terminal rate limits.
//! - [`tenancy`]: merchants, stores, terminals and API keys (SQL).
//! - [`deps`]: the clients of cards, rules and ledger with their tower layers.
//! - [`idempotency`]: the keys the gateway makes, apart from the callers' request ids.
//! - [`requests`]: answers of mutating calls by request id (idempotency).
//! - [`checkout`]: CheckoutService — Calculate, Reserve, Confirm, Cancel, Refund, offline receipts.
//! - [`error`]: errors → gRPC statuses, in one place.
//! - [`seed`]: the demo tenant of the embedded default.
//! - [`tier_job`]: the monthly tier recalculation (R13), one replica per merchant and month.
//! - [`tier_retry`]: the tier decision after a purchase, kept and retried when it fails.
//!
//! The public API (`kopilka.gateway.v1`) is defined in `proto/kopilka/gateway/v1`.

pub mod admin;
pub mod auth;
pub mod checkout;
pub mod config;
pub mod customers;
pub mod deps;
pub mod error;
pub mod idempotency;
pub mod keys;
pub mod requests;
pub mod seed;
pub mod tenancy;
pub mod tier_job;
pub mod tier_retry;

use std::time::Duration;

use kopilka_proto::gateway::admin_service_server::AdminServiceServer;
use kopilka_proto::gateway::checkout_service_server::CheckoutServiceServer;
use kopilka_proto::gateway::customer_service_server::CustomerServiceServer;
use kopilka_runtime::db::Migrations;
use kopilka_runtime::host::{Host, StartError};
use kopilka_runtime::server::Router;
use sqlx::migrate::Migrator;

pub use config::Config;

use auth::Auth;
use deps::Deps;
use requests::Requests;
use tenancy::Tenancy;
use tier_retry::TierRetries;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The gateway schema for each engine.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES_MIGRATIONS,
    sqlite: &SQLITE_MIGRATIONS,
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("invalid dependency URL")]
    DependencyUrl(#[from] tonic::transport::Error),
    #[error(transparent)]
    Token(#[from] kopilka_runtime::service_auth::TokenError),
}

/// What every handler shares: storage, authentication and the dependencies' clients.
#[derive(Clone)]
pub struct Gateway {
    pub config: Config,
    pub tenancy: Tenancy,
    pub auth: Auth,
    pub deps: Deps,
    pub requests: Requests,
    pub tier_retries: TierRetries,
}

impl Gateway {
    pub fn new(config: Config, db: kopilka_runtime::Db) -> Result<Self, BuildError> {
        let tenancy = Tenancy::new(db.clone());
        let auth = Auth::new(
            tenancy.clone(),
            Duration::from_secs(config.key_cache_ttl_secs),
            config.terminal_rate_limit,
            config.admin_rate_limit,
        );
        Ok(Self {
            deps: Deps::new(&config, config.service.outbound_token()?)?,
            requests: Requests::new(db.clone()),
            tier_retries: TierRetries::new(db),
            tenancy,
            auth,
            config,
        })
    }
}

/// What the gateway's reflection lists: the services registers and admins call (the internal
/// packages stay out of sight).
const LISTED: &[&str] = &[
    "kopilka.gateway.v1.CheckoutService",
    "kopilka.gateway.v1.CustomerService",
    "kopilka.gateway.v1.AdminService",
    "grpc.health.v1.Health",
];

/// The largest request accepted (larger: OUT_OF_RANGE before decoding), as common.proto says.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Opens the database, runs migrations and binds the port; `run_until` then serves.
pub async fn build(config: Config) -> Result<Host, BuildError> {
    let host = Host::start_public("gateway", config.service.clone(), MIGRATIONS, LISTED).await?;
    let gateway = Gateway::new(config, host.db().clone())?;
    let host = spawn_tier_job(host, &gateway);
    let host = spawn_pruning(host, &gateway);
    let interval = Duration::from_secs(gateway.config.tier_retry_interval_secs.max(1));
    let host = host.spawn_background(tier_retry::run_forever(gateway.clone(), interval));
    host.health()
        .set_serving::<AdminServiceServer<admin::AdminApi>>()
        .await;
    let checkout = checkout::CheckoutApi::new(gateway.clone(), host.db().clone());
    host.health()
        .set_serving::<CheckoutServiceServer<checkout::CheckoutApi>>()
        .await;
    let host = host.route(|router| {
        services(router, &gateway).add_service(
            CheckoutServiceServer::new(checkout).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
    });
    Ok(host)
}

/// The public gRPC services, all sharing one [`Gateway`].
fn services(router: Router, gateway: &Gateway) -> Router {
    router
        .add_service(
            AdminServiceServer::new(admin::AdminApi::new(gateway.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            CustomerServiceServer::new(customers::CustomerApi::new(gateway.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
}

/// Forgets answers by request id once they are older than `retention_days` (checked hourly):
/// registers are told answers are kept 30 days.
fn spawn_pruning(host: Host, gateway: &Gateway) -> Host {
    let requests = gateway.requests.clone();
    let retention = chrono::Duration::days(gateway.config.retention_days.max(1) as i64);
    host.spawn_background(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let before = kopilka_runtime::Timestamp::from(chrono::Utc::now() - retention);
            if let Err(error) = requests.prune(before).await {
                tracing::warn!(%error, "pruning stored answers failed");
            }
        }
    })
}

/// Runs the monthly tier recalculation in the background when `config.tier_job` is set.
fn spawn_tier_job(host: Host, gateway: &Gateway) -> Host {
    if !gateway.config.tier_job {
        return host;
    }
    let interval = Duration::from_secs(gateway.config.tier_job_interval_secs.max(1));
    host.spawn_background(tier_job::run_forever(
        gateway.clone(),
        interval,
        tier_job::replica_id(),
    ))
}
