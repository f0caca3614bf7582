//! Settings come from one typed struct per binary, layered: built-in defaults, then environment
//! variables prefixed `KOPILKA_` (e.g. `KOPILKA_DATABASE_URL`, `KOPILKA_LISTEN_ADDR`).

use figment::providers::{Env, Serialized};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The prefix every environment variable read by Kopilka carries.
pub const ENV_PREFIX: &str = "KOPILKA_";

/// Reads `T` from its defaults overlaid with `KOPILKA_*` environment variables.
pub fn from_env<T>(defaults: T) -> Result<T, Box<figment::Error>>
where
    T: Serialize + DeserializeOwned,
{
    Figment::from(Serialized::defaults(defaults))
        .merge(Env::prefixed(ENV_PREFIX))
        .extract()
        .map_err(Box::new)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one event per line.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging settings shared by every binary (`KOPILKA_LOG_FORMAT`, `KOPILKA_LOG`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter directive such as `info` or `info,sqlx=warn`.
    pub log: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log: "info,sqlx=warn,h2=warn,tower=warn".to_owned(),
        }
    }
}
