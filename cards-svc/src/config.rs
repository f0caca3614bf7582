//! Settings of cards-svc, from `KOPILKA_*` environment variables over the defaults below.

use kopilka_runtime::config::TelemetrySettings;
use kopilka_runtime::host::ServiceSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The default gRPC port of cards-svc.
pub const DEFAULT_PORT: u16 = 50052;

/// Everything cards-svc reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Listen address, database, pool and shutdown settings.
    #[serde(flatten)]
    pub service: ServiceSettings,
    /// Log format and filter.
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// Redis for the tier cache (`redis://host:6379/0`); unset means an in-process cache.
    #[serde(default, serialize_with = "serialize_optional_secret")]
    pub redis_url: Option<SecretString>,
    /// `false` turns the tier cache off (every read goes to the database): the benchmark's
    /// baseline, or a way to rule the cache out when debugging.
    pub tier_cache: bool,
    /// Lifetime of a cached tier entry, in seconds (entries are never stale; this bounds memory).
    pub tier_cache_ttl_secs: u64,
    /// ledger-svc (`http://host:50054`), called to merge two customers' accounts; unset = merges
    /// fail with DEPENDENCY_UNAVAILABLE.
    pub ledger_url: Option<String>,
    /// How long request ids are remembered for retries, in hours: 30 days by default, as long
    /// as the gateway and the ledger remember theirs, so a retry the gateway still answers is
    /// never applied twice downstream.
    pub idempotency_retention_hours: u64,
    /// notify-svc (`http://host:50055`), to which the outbox's domain events are relayed
    /// (`KOPILKA_NOTIFY_URL`); unset = no relay, events stay in the outbox.
    #[serde(default)]
    pub notify_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceSettings::embedded(DEFAULT_PORT, "data/cards.db"),
            telemetry: TelemetrySettings::default(),
            redis_url: None,
            tier_cache: true,
            tier_cache_ttl_secs: 3600,
            ledger_url: None,
            idempotency_retention_hours: 720,
            notify_url: None,
        }
    }
}

impl Config {
    /// The defaults overlaid with `KOPILKA_*` environment variables.
    pub fn from_env() -> Result<Self, Box<figment::Error>> {
        kopilka_runtime::config::from_env(Self::default())
    }
}

fn serialize_optional_secret<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    // In memory only, to layer defaults under the environment; `Debug` still redacts it.
    match secret {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}
