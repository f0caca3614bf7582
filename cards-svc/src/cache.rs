//! Where tier data is cached: Redis in production, process memory in the embedded default.
//! Redis is an accelerator, never a dependency: when it is unreachable, lookups go to the
//! database and the service keeps SERVING.

use secrecy::{ExposeSecret, SecretString};

/// The cache backend chosen at start-up.
#[derive(Clone)]
pub enum CacheBackend {
    /// A Redis server (connections are made lazily and re-made after failures).
    Redis(redis::Client),
    /// Process memory (the embedded default).
    InProcess,
}

impl std::fmt::Debug for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may carry a password.
            CacheBackend::Redis(_) => f.write_str("Redis"),
            CacheBackend::InProcess => f.write_str("InProcess"),
        }
    }
}

impl CacheBackend {
    /// Redis when a URL is configured, else in-process. A malformed URL is an error; an
    /// unreachable server is only logged.
    pub async fn open(url: Option<&SecretString>) -> Result<Self, redis::RedisError> {
        let Some(url) = url else {
            return Ok(CacheBackend::InProcess);
        };
        let client = redis::Client::open(url.expose_secret())?;
        match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                tracing::info!(reachable = pong.is_ok(), "Redis tier cache configured");
            }
            Err(error) => {
                tracing::warn!(%error, "Redis unreachable at start-up; tier lookups use the database until it is back");
            }
        }
        Ok(CacheBackend::Redis(client))
    }
}
