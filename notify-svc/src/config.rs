//! Settings of notify-svc, from `KOPILKA_*` environment variables over the defaults below.

use kopilka_runtime::config::TelemetrySettings;
use kopilka_runtime::host::ServiceSettings;

use serde::{Deserialize, Serialize};

/// The default gRPC port of notify-svc.
pub const DEFAULT_PORT: u16 = 50055;

/// Everything notify-svc reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Listen address, database, pool and shutdown settings.
    #[serde(flatten)]
    pub service: ServiceSettings,
    /// Log format and filter.
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceSettings::embedded(DEFAULT_PORT, "data/notify.db"),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Config {
    /// The defaults overlaid with `KOPILKA_*` environment variables.
    pub fn from_env() -> Result<Self, Box<figment::Error>> {
        kopilka_runtime::config::from_env(Self::default())
    }
}
