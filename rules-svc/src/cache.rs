//! What evaluation reads on every receipt, kept in memory: compiled plans per (merchant,
//! version), each merchant's activation schedule and category catalog.
//!
//! Plans never go stale: a published version is immutable, so `(merchant, version)` names one
//! compiled plan forever and the cache only bounds memory. Schedules and catalogs do change;
//! every change writes a row to the `program_changes` feed in its own transaction, and
//! [`ProgramCache::follow_changes`] (one task per replica) polls the feed and drops the
//! merchant's cached schedule and catalog whenever its seq moved. The replica that made a
//! change drops them at once, so it reads its own writes. See `rules-svc/README.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kopilka_proto::rules::Program;
use moka::future::Cache;
use prost::Message;

use crate::catalog::Catalog;
use crate::error::Error;
use crate::plan::Plan;
use crate::store::{ActivationRow, Store};

/// How the cache is sized and refreshed.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Most compiled plans kept (least recently used go first).
    pub plans: u64,
    /// Most merchants whose schedule and catalog are kept.
    pub merchants: u64,
    /// How often the change feed is polled.
    pub poll: Duration,
    /// Entries older than this are read again even without a change: a bound on staleness
    /// should a feed row ever be missed (it is not expected to be).
    pub max_age: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            plans: 10_000,
            merchants: 100_000,
            poll: Duration::from_secs(1),
            max_age: Duration::from_secs(300),
        }
    }
}

/// A merchant's activations, earliest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub activations: Vec<ActivationRow>,
}

impl Schedule {
    /// The activation in force at `at`: the latest one at or before it.
    pub fn at(&self, at: DateTime<Utc>) -> Option<&ActivationRow> {
        let after = self.activations.partition_point(|a| a.activate_at.0 <= at);
        after.checked_sub(1).map(|i| &self.activations[i])
    }

    /// Activations after `at`, soonest first.
    pub fn after(&self, at: DateTime<Utc>) -> &[ActivationRow] {
        let i = self.activations.partition_point(|a| a.activate_at.0 <= at);
        &self.activations[i..]
    }
}

/// The per-replica cache. Cloning shares it.
#[derive(Clone)]
pub struct ProgramCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: CacheSettings,
    plans: Cache<(String, u64), Arc<Plan>>,
    schedules: Cache<String, Arc<Schedule>>,
    catalogs: Cache<String, Arc<Catalog>>,
    /// Bumped by every invalidation. A load that started before one does not store its result,
    /// so an entry read just before a change cannot outlive the change's invalidation.
    epoch: AtomicU64,
    feed: Mutex<Feed>,
}

/// What the feed follower has seen.
#[derive(Default)]
struct Feed {
    /// The newest seq seen per merchant.
    seen: HashMap<String, i64>,
    /// When the last successful poll started (its own clock).
    last_poll: Option<DateTime<Utc>>,
}

/// How far back each poll reads the feed before its previous one: covers transactions that
/// were still open at the previous poll (their rows carry an earlier time) and clock skew
/// between replicas. A change is seen at most once per merchant and seq, so the overlap costs
/// nothing but a slightly longer read.
const FEED_OVERLAP: chrono::Duration = chrono::Duration::seconds(60);

impl ProgramCache {
    pub fn new(store: Store, settings: CacheSettings) -> Self {
        fn merchants<V: Clone + Send + Sync + 'static>(s: &CacheSettings) -> Cache<String, V> {
            Cache::builder()
                .max_capacity(s.merchants)
                .time_to_live(s.max_age)
                .build()
        }
        ProgramCache {
            inner: Arc::new(Inner {
                store,
                settings,
                plans: Cache::builder().max_capacity(settings.plans).build(),
                schedules: merchants(&settings),
                catalogs: merchants(&settings),
                epoch: AtomicU64::new(0),
                feed: Mutex::default(),
            }),
        }
    }

    pub fn settings(&self) -> CacheSettings {
        self.inner.settings
    }

    /// The compiled plan of a published version (compiled once, then shared). The caller has
    /// checked that the version is published: a draft must never be cached under its number.
    pub async fn plan(
        &self,
        merchant: &str,
        version: u64,
        document: &[u8],
    ) -> Result<Arc<Plan>, Error> {
        let key = (merchant.to_owned(), version);
        if let Some(plan) = self.inner.plans.get(&key).await {
            return Ok(plan);
        }
        let program = Program::decode(document)?;
        let plan = Arc::new(Plan::compile(&program, version)?);
        self.inner.plans.insert(key, plan.clone()).await;
        Ok(plan)
    }

    /// The cached plan of `(merchant, version)`, if compiled already.
    pub async fn cached_plan(&self, merchant: &str, version: u64) -> Option<Arc<Plan>> {
        self.inner.plans.get(&(merchant.to_owned(), version)).await
    }

    /// The merchant's activation schedule.
    pub async fn schedule(&self, merchant: &str) -> Result<Arc<Schedule>, Error> {
        if let Some(s) = self.inner.schedules.get(merchant).await {
            return Ok(s);
        }
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let mut tx = self.inner.store.read().await?;
        let schedule = Arc::new(Schedule {
            activations: tx.activations(merchant).await?,
        });
        drop(tx);
        if self.inner.epoch.load(Ordering::Acquire) == epoch {
            self.inner
                .schedules
                .insert(merchant.to_owned(), schedule.clone())
                .await;
        }
        Ok(schedule)
    }

    /// The merchant's category tree (empty when it has none).
    pub async fn catalog(&self, merchant: &str) -> Result<Arc<Catalog>, Error> {
        if let Some(c) = self.inner.catalogs.get(merchant).await {
            return Ok(c);
        }
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let mut tx = self.inner.store.read().await?;
        let catalog = Arc::new(Catalog::new(tx.category_parents(merchant).await?));
        drop(tx);
        if self.inner.epoch.load(Ordering::Acquire) == epoch {
            self.inner
                .catalogs
                .insert(merchant.to_owned(), catalog.clone())
                .await;
        }
        Ok(catalog)
    }

    /// Drops the merchant's schedule and catalog (after a change, or when the feed says so).
    pub async fn invalidate(&self, merchant: &str) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        self.inner.schedules.invalidate(merchant).await;
        self.inner.catalogs.invalidate(merchant).await;
    }

    /// Reads the change feed once; drops what is cached for every merchant whose seq moved.
    /// Returns how many merchants were invalidated.
    pub async fn poll_changes(&self) -> Result<usize, Error> {
        let started = Utc::now();
        let since = {
            let feed = self.inner.feed.lock().unwrap_or_else(|e| e.into_inner());
            feed.last_poll
        };
        // The first poll of a replica has nothing cached from before it started, but reads
        // the recent window to learn the current seqs.
        let since = since.unwrap_or(started) - FEED_OVERLAP;
        let mut tx = self.inner.store.read().await?;
        let heads = tx.changes_since(since).await?;
        drop(tx);
        let moved: Vec<String> = {
            let mut feed = self.inner.feed.lock().unwrap_or_else(|e| e.into_inner());
            let moved = heads
                .iter()
                .filter(|(merchant, seq)| feed.seen.get(merchant) != Some(seq))
                .map(|(merchant, _)| merchant.clone())
                .collect();
            // Only merchants inside the window are remembered: one quiet for longer has no seq
            // here, so its next change (a higher seq) still counts as a move.
            feed.seen = heads.into_iter().collect();
            feed.last_poll = Some(started);
            moved
        };
        for merchant in &moved {
            self.invalidate(merchant).await;
        }
        Ok(moved.len())
    }

    /// Follows the change feed for as long as the service runs (one task per replica).
    pub async fn follow_changes(self) {
        let mut tick = tokio::time::interval(self.inner.settings.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.poll_changes().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(merchants = n, "program changes: caches dropped"),
                Err(error) => tracing::warn!(%error, "reading the program change feed failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use kopilka_runtime::Timestamp;

    fn activation(id: &str, version: i64, minute: u32) -> ActivationRow {
        let at = Timestamp::from(Utc.with_ymd_and_hms(2026, 1, 1, 9, minute, 0).unwrap());
        ActivationRow {
            activation_id: id.into(),
            version,
            activate_at: at,
            created_at: at,
            requested_by: String::new(),
        }
    }

    #[test]
    fn the_latest_activation_at_or_before_an_instant_is_in_force() {
        let s = Schedule {
            activations: vec![activation("a", 1, 10), activation("b", 2, 20)],
        };
        let t = |m| Utc.with_ymd_and_hms(2026, 1, 1, 9, m, 0).unwrap();
        assert_eq!(s.at(t(9)), None);
        assert_eq!(s.at(t(10)).map(|a| a.version), Some(1));
        assert_eq!(s.at(t(19)).map(|a| a.version), Some(1));
        assert_eq!(s.at(t(20)).map(|a| a.version), Some(2));
        assert_eq!(s.after(t(10)).len(), 1);
        assert_eq!(s.after(t(9)).len(), 2);
        assert!(s.after(t(20)).is_empty());
    }
}
