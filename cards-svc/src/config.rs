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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceSettings::embedded(DEFAULT_PORT, "data/cards.db"),
            telemetry: TelemetrySettings::default(),
            redis_url: None,
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
