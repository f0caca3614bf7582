//! Settings of ledger-svc, from `KOPILKA_*` environment variables over the defaults below.

use kopilka_runtime::config::TelemetrySettings;
use kopilka_runtime::host::ServiceSettings;

use serde::{Deserialize, Serialize};

/// The default gRPC port of ledger-svc.
pub const DEFAULT_PORT: u16 = 50054;

/// Everything ledger-svc reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Listen address, database, pool and shutdown settings.
    #[serde(flatten)]
    pub service: ServiceSettings,
    /// Log format and filter.
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// Seconds between passes of the job that activates and expires lots and releases
    /// timed-out holds (`KOPILKA_DUE_INTERVAL`).
    #[serde(with = "seconds")]
    pub due_interval: std::time::Duration,
    /// notify-svc (`http://host:50055`), to which the outbox's domain events are relayed
    /// (`KOPILKA_NOTIFY_URL`); unset = no relay, events stay in the outbox.
    #[serde(default)]
    pub notify_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            service: ServiceSettings::embedded(DEFAULT_PORT, "data/ledger.db"),
            telemetry: TelemetrySettings::default(),
            due_interval: std::time::Duration::from_secs(30),
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

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?.max(1)))
    }
}
