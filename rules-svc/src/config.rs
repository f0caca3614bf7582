//! Settings of rules-svc, from `KOPILKA_*` environment variables over the defaults below.

use kopilka_runtime::config::TelemetrySettings;
use kopilka_runtime::host::ServiceSettings;

use serde::{Deserialize, Serialize};

/// The default gRPC port of rules-svc.
pub const DEFAULT_PORT: u16 = 50053;

/// Everything rules-svc reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Listen address, database, pool and shutdown settings.
    #[serde(flatten)]
    pub service: ServiceSettings,
    /// Log format and filter.
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// cards-svc (`http://host:50052`), asked for the merchant's tier codes when a validation
    /// or publication names none (`KOPILKA_CARDS_URL`); unset = tier references are not checked.
    pub cards_url: Option<String>,
    /// How often each replica polls the program change feed, in milliseconds
    /// (`KOPILKA_RULES_CHANGE_POLL_MS`): the delay before a publication or activation made on
    /// another replica is seen here.
    pub rules_change_poll_ms: u64,
    /// Most compiled program versions kept in memory (`KOPILKA_RULES_PLAN_CACHE`).
    pub rules_plan_cache: u64,
    /// How long request ids are remembered for retries, in hours: 30 days by default, as long
    /// as the gateway and the ledger remember theirs, so a retry the gateway still answers is
    /// never applied twice downstream.
    pub idempotency_retention_hours: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceSettings::embedded(DEFAULT_PORT, "data/rules.db"),
            telemetry: TelemetrySettings::default(),
            cards_url: None,
            rules_change_poll_ms: 1000,
            rules_plan_cache: 10_000,
            idempotency_retention_hours: 720,
        }
    }
}

impl Config {
    /// The defaults overlaid with `KOPILKA_*` environment variables.
    pub fn from_env() -> Result<Self, Box<figment::Error>> {
        kopilka_runtime::config::from_env(Self::default())
    }
}
