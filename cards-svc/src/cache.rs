//! The tier cache: tier definitions and customers' tier assignments, in Redis (production) or in
//! process memory (the embedded default).
//!
//! Entries are named by versions the database keeps — the merchant's `tiers_version`, bumped on
//! every tier-definition change, and the customer's `tier_seq`, the number of their current
//! assignment — which the lookup reads in the same statement that finds the customer. A cached
//! entry is therefore never stale: a change writes a new version, so readers ask for a new name,
//! whatever happened to Redis meanwhile. Old names are deleted best effort and expire anyway.
//!
//! Redis is an accelerator, never a dependency: when a call fails or times out the caller reads
//! the database, the failure is logged and counted, and Redis is left alone for a moment
//! (so an outage costs one timeout per pause, not one per lookup).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};

/// How long a Redis call may take before the database is asked instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(200);
/// How long Redis is left alone after a failure.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Entries of the in-process cache.
const IN_PROCESS_CAPACITY: u64 = 200_000;

/// Counters of the cache (also logged on changes of Redis health).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Calls that failed or were skipped because Redis is failing: answered by the database.
    pub fallbacks: AtomicU64,
}

/// Key of a merchant's tier definitions at one version.
pub fn tiers_key(merchant: &str, version: i64) -> String {
    format!("kopilka:cards:{merchant}:tiers:{version}")
}

/// Key of a customer's tier assignment number `seq`.
pub fn assignment_key(merchant: &str, customer: &str, seq: i64) -> String {
    format!("kopilka:cards:{merchant}:tier:{customer}:{seq}")
}

#[derive(Clone)]
enum Backend {
    Redis(Arc<RedisCache>),
    InProcess(moka::future::Cache<String, Arc<Vec<u8>>>),
    Off,
}

struct RedisCache {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    paused_until: Mutex<Option<Instant>>,
}

/// The tier cache (cheap to clone).
#[derive(Clone)]
pub struct TierCache {
    backend: Backend,
    ttl: Duration,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for TierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Redis URL may carry a password.
        f.write_str(match self.backend {
            Backend::Redis(_) => "Redis",
            Backend::InProcess(_) => "InProcess",
            Backend::Off => "Off",
        })
    }
}

impl TierCache {
    /// Redis when a URL is configured, else in-process; `Off` when `enabled` is false (the
    /// benchmark's baseline). A malformed URL is an error; an unreachable server is not.
    pub fn open(
        url: Option<&SecretString>,
        enabled: bool,
        ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        let backend = match (enabled, url) {
            (false, _) => Backend::Off,
            (true, Some(url)) => Backend::Redis(Arc::new(RedisCache {
                client: redis::Client::open(url.expose_secret())?,
                conn: tokio::sync::Mutex::new(None),
                paused_until: Mutex::new(None),
            })),
            (true, None) => Backend::InProcess(
                moka::future::Cache::builder()
                    .max_capacity(IN_PROCESS_CAPACITY)
                    .time_to_live(ttl)
                    .build(),
            ),
        };
        Ok(TierCache {
            backend,
            ttl,
            stats: Arc::new(CacheStats::default()),
        })
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The cached values of `keys`, `None` where missing (or where Redis failed).
    pub async fn get_many(&self, keys: &[String]) -> Vec<Option<Arc<Vec<u8>>>> {
        let found = match &self.backend {
            Backend::Off => vec![None; keys.len()],
            Backend::InProcess(cache) => {
                let mut found = Vec::with_capacity(keys.len());
                for key in keys {
                    found.push(cache.get(key).await);
                }
                found
            }
            Backend::Redis(redis) => {
                let mut cmd = redis::cmd("MGET");
                for key in keys {
                    cmd.arg(key);
                }
                match redis.call::<Vec<Option<Vec<u8>>>>(&cmd, &self.stats).await {
                    Some(values) => values.into_iter().map(|v| v.map(Arc::new)).collect(),
                    None => vec![None; keys.len()],
                }
            }
        };
        for value in &found {
            let counter = if value.is_some() {
                &self.stats.hits
            } else {
                &self.stats.misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Stores `value` under `key` (best effort).
    pub async fn put(&self, key: String, value: Vec<u8>) {
        match &self.backend {
            Backend::Off => {}
            Backend::InProcess(cache) => cache.insert(key, Arc::new(value)).await,
            Backend::Redis(redis) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key)
                    .arg(value)
                    .arg("EX")
                    .arg(self.ttl.as_secs().max(1));
                redis.call::<()>(&cmd, &self.stats).await;
            }
        }
    }

    /// Deletes `key` (best effort: a newer version is asked for anyway).
    pub async fn forget(&self, key: String) {
        match &self.backend {
            Backend::Off => {}
            Backend::InProcess(cache) => cache.invalidate(&key).await,
            Backend::Redis(redis) => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(key);
                redis.call::<i64>(&cmd, &self.stats).await;
            }
        }
    }
}

impl RedisCache {
    /// Runs `cmd`, or returns `None` (counted, logged) when Redis fails, times out or is paused.
    async fn call<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        stats: &CacheStats,
    ) -> Option<T> {
        if self.paused() {
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let result = tokio::time::timeout(REDIS_TIMEOUT, async {
            let mut conn = self.connection().await?;
            cmd.query_async::<T>(&mut conn).await
        })
        .await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.pause(&error.to_string(), stats);
                None
            }
            Err(_) => {
                self.pause("timed out", stats);
                None
            }
        }
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    fn paused(&self) -> bool {
        let mut until = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                tracing::info!("trying the Redis tier cache again");
                false
            }
            None => false,
        }
    }

    fn pause(&self, error: &str, stats: &CacheStats) {
        stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        let mut until = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_none() {
            tracing::warn!(
                error,
                fallbacks = stats.fallbacks.load(Ordering::Relaxed),
                "Redis tier cache failing; reading tiers from the database"
            );
        }
        *until = Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }
}
