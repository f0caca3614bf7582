//! Settings of the gateway, from `KOPILKA_*` environment variables over the defaults below.

use kopilka_runtime::config::TelemetrySettings;
use kopilka_runtime::host::ServiceSettings;
use serde::{Deserialize, Serialize};

/// The default gRPC port of the gateway (the one cash registers call).
pub const DEFAULT_PORT: u16 = 50051;

/// Everything the gateway reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Listen address, database, pool and shutdown settings.
    #[serde(flatten)]
    pub service: ServiceSettings,
    /// Log format and filter.
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// cards-svc (`KOPILKA_CARDS_URL`, e.g. `http://cards:50052`).
    pub cards_url: String,
    /// rules-svc (`KOPILKA_RULES_URL`).
    pub rules_url: String,
    /// ledger-svc (`KOPILKA_LEDGER_URL`).
    pub ledger_url: String,
    /// How long one call to a dependency may take, in milliseconds, unless the caller's own
    /// deadline is sooner (`KOPILKA_DEPENDENCY_TIMEOUT_MS`).
    pub dependency_timeout_ms: u64,
    /// Calls in flight to one dependency; beyond it calls are shed at once with UNAVAILABLE
    /// rather than queued (`KOPILKA_DEPENDENCY_CONCURRENCY`).
    pub dependency_concurrency: usize,
    /// Extra attempts of an idempotent call that met UNAVAILABLE (`KOPILKA_DEPENDENCY_RETRIES`).
    pub dependency_retries: u32,
    /// Requests per second allowed per terminal key, with a burst of the same size
    /// (`KOPILKA_TERMINAL_RATE_LIMIT`).
    pub terminal_rate_limit: u32,
    /// Requests per second allowed per admin key (`KOPILKA_ADMIN_RATE_LIMIT`).
    pub admin_rate_limit: u32,
    /// How long a verified key is trusted before it is read again, in seconds; a revocation
    /// reaches other replicas within this time (`KOPILKA_KEY_CACHE_TTL_SECS`).
    pub key_cache_ttl_secs: u64,
    /// Run the monthly tier recalculation in this process (`KOPILKA_TIER_JOB`).
    pub tier_job: bool,
    /// How often the tier job checks whether a month has started, in seconds.
    pub tier_job_interval_secs: u64,
    /// How often tier decisions that failed after a purchase are looked at again, in seconds
    /// (`KOPILKA_TIER_RETRY_INTERVAL_SECS`); each waits 30 s, doubling to an hour, between tries.
    pub tier_retry_interval_secs: u64,
    /// How long request ids and checkout answers are kept, in days.
    pub retention_days: u64,
}

impl Default for Config {
    fn default() -> Self {
        let local = |port: u16| format!("http://127.0.0.1:{port}");
        Self {
            service: ServiceSettings::embedded(DEFAULT_PORT, "data/gateway.db"),
            telemetry: TelemetrySettings::default(),
            cards_url: local(50052),
            rules_url: local(50053),
            ledger_url: local(50054),
            dependency_timeout_ms: 2_000,
            dependency_concurrency: 512,
            dependency_retries: 2,
            terminal_rate_limit: 20,
            admin_rate_limit: 200,
            key_cache_ttl_secs: 30,
            tier_job: true,
            tier_job_interval_secs: 600,
            tier_retry_interval_secs: 30,
            retention_days: 30,
        }
    }
}

impl Config {
    /// The defaults overlaid with `KOPILKA_*` environment variables.
    pub fn from_env() -> Result<Self, Box<figment::Error>> {
        kopilka_runtime::config::from_env(Self::default())
    }
}
