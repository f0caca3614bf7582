//! The gateway's own tables: merchants, stores, terminals and API keys. The only SQL of the
//! gateway lives here; each query is written once and runs on PostgreSQL and SQLite.

use kopilka_runtime::Timestamp;
use kopilka_runtime::{with_db, Db};

use crate::keys::{GeneratedKey, KeyScope};

/// A merchant: the unit of tenancy. Every other record belongs to one.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Merchant {
    pub merchant_id: String,
    pub name: String,
    /// ISO 4217 code, e.g. `RUB`.
    pub currency: String,
    /// IANA time zone, e.g. `Europe/Moscow`.
    pub time_zone: String,
    /// The region phone numbers without a country code belong to, e.g. `RU`.
    pub phone_region: String,
    pub created_at: Timestamp,
}

/// The stored part of an API key (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub merchant_id: String,
    pub key_id: String,
    pub scope: String,
    pub terminal_id: Option<String>,
    pub label: String,
    pub secret_digest: Vec<u8>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// When the key stops working; `None` = never.
    pub expires_at: Option<Timestamp>,
}

/// Tenancy storage on either engine.
#[derive(Debug, Clone)]
pub struct Tenancy {
    db: Db,
}

impl Tenancy {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a merchant; `false` when one with that id already exists (nothing changes).
    pub async fn create_merchant(&self, m: &Merchant) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO merchants (merchant_id, name, currency, time_zone, phone_region, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (merchant_id) DO NOTHING",
        )
        .bind(&m.merchant_id)
        .bind(&m.name)
        .bind(&m.currency)
        .bind(&m.time_zone)
        .bind(&m.phone_region)
        .bind(m.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// One merchant by id.
    pub async fn merchant(&self, merchant_id: &str) -> Result<Option<Merchant>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, name, currency, time_zone, phone_region, created_at
             FROM merchants WHERE merchant_id = $1",
        )
        .bind(merchant_id)
        .fetch_optional(pool)
        .await)
    }

    /// Stores a generated key's digest for a merchant (and terminal, for terminal keys), with
    /// no expiry.
    pub async fn insert_key(
        &self,
        merchant_id: &str,
        key: &GeneratedKey,
        scope: KeyScope,
        terminal_id: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Result<(), sqlx::Error> {
        let stored = self
            .insert_key_record(&NewApiKey {
                merchant_id,
                key_id: &key.key_id,
                scope,
                terminal_id,
                label,
                secret_digest: &key.secret_digest,
                created_at: now,
                expires_at: None,
            })
            .await?;
        if stored {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(format!(
                "key id {} is taken",
                key.key_id
            )))
        }
    }

    /// The key record for a presented key id, revoked or not.
    pub async fn key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, key_id, scope, terminal_id, label, secret_digest, created_at, revoked_at, expires_at
             FROM api_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(pool)
        .await)
    }

    /// One store with every column, in this merchant.
    pub async fn store(
        &self,
        merchant_id: &str,
        store_id: &str,
    ) -> Result<Option<Store>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, store_id, name, address, time_zone, external_id,
                    wallet_location_text, latitude, longitude, active, created_at
             FROM stores WHERE merchant_id = $1 AND store_id = $2",
        )
        .bind(merchant_id)
        .bind(store_id)
        .fetch_optional(pool)
        .await)
    }

    /// Inserts a store with every column; `false` when the id is taken in this merchant.
    pub async fn insert_store(&self, s: &Store) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO stores (merchant_id, store_id, name, address, time_zone, external_id,
                                 wallet_location_text, latitude, longitude, active, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (merchant_id, store_id) DO NOTHING",
        )
        .bind(&s.merchant_id)
        .bind(&s.store_id)
        .bind(&s.name)
        .bind(&s.address)
        .bind(&s.time_zone)
        .bind(&s.external_id)
        .bind(&s.wallet_location_text)
        .bind(s.latitude)
        .bind(s.longitude)
        .bind(s.active)
        .bind(s.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Rewrites a store's changeable columns; `false` when it does not exist.
    pub async fn update_store(&self, s: &Store) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "UPDATE stores SET name = $3, address = $4, time_zone = $5, external_id = $6,
                    wallet_location_text = $7, latitude = $8, longitude = $9, active = $10
             WHERE merchant_id = $1 AND store_id = $2",
        )
        .bind(&s.merchant_id)
        .bind(&s.store_id)
        .bind(&s.name)
        .bind(&s.address)
        .bind(&s.time_zone)
        .bind(&s.external_id)
        .bind(&s.wallet_location_text)
        .bind(s.latitude)
        .bind(s.longitude)
        .bind(s.active)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Up to `limit` stores with ids after `after` (empty = from the first), by id.
    pub async fn stores_page(
        &self,
        merchant_id: &str,
        include_inactive: bool,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Store>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, store_id, name, address, time_zone, external_id,
                    wallet_location_text, latitude, longitude, active, created_at
             FROM stores
             WHERE merchant_id = $1 AND ($2 OR active) AND store_id > $3
             ORDER BY store_id LIMIT $4",
        )
        .bind(merchant_id)
        .bind(include_inactive)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)
    }

    /// One terminal with every column, in this merchant.
    pub async fn terminal(
        &self,
        merchant_id: &str,
        terminal_id: &str,
    ) -> Result<Option<Terminal>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, terminal_id, store_id, name, external_id, disabled_at, created_at,
                    last_seen_at
             FROM terminals WHERE merchant_id = $1 AND terminal_id = $2",
        )
        .bind(merchant_id)
        .bind(terminal_id)
        .fetch_optional(pool)
        .await)
    }

    /// Inserts a terminal with every column; `false` when the id is taken in this merchant.
    pub async fn insert_terminal(&self, t: &Terminal) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO terminals (merchant_id, terminal_id, store_id, name, external_id,
                                    disabled_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (merchant_id, terminal_id) DO NOTHING",
        )
        .bind(&t.merchant_id)
        .bind(&t.terminal_id)
        .bind(&t.store_id)
        .bind(&t.name)
        .bind(&t.external_id)
        .bind(t.disabled_at)
        .bind(t.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Up to `limit` terminals with ids after `after`, by id; `store_id` empty = every store.
    pub async fn terminals_page(
        &self,
        merchant_id: &str,
        store_id: &str,
        include_disabled: bool,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Terminal>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, terminal_id, store_id, name, external_id, disabled_at, created_at,
                    last_seen_at
             FROM terminals
             WHERE merchant_id = $1 AND ($2 = '' OR store_id = $2)
               AND ($3 OR disabled_at IS NULL) AND terminal_id > $4
             ORDER BY terminal_id LIMIT $5",
        )
        .bind(merchant_id)
        .bind(store_id)
        .bind(include_disabled)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)
    }

    /// Disables a terminal (keeping the first `disabled_at` if it is disabled already), or
    /// enables it with `disabled_at: None`; `false` when it does not exist.
    pub async fn set_terminal_disabled(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        disabled_at: Option<Timestamp>,
    ) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "UPDATE terminals SET disabled_at = CASE WHEN $3 IS NULL THEN NULL
                                                     ELSE COALESCE(disabled_at, $3) END
             WHERE merchant_id = $1 AND terminal_id = $2",
        )
        .bind(merchant_id)
        .bind(terminal_id)
        .bind(disabled_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Records a call made with a key at `at`: the key's `last_used_at` and, for a terminal
    /// key, its terminal's `last_seen_at`.
    pub async fn record_use(
        &self,
        merchant_id: &str,
        key_id: &str,
        terminal_id: Option<&str>,
        at: Timestamp,
    ) -> Result<(), sqlx::Error> {
        with_db!(&self.db, pool => {
            sqlx::query("UPDATE api_keys SET last_used_at = $3 WHERE merchant_id = $1 AND key_id = $2")
                .bind(merchant_id)
                .bind(key_id)
                .bind(at)
                .execute(pool)
                .await?;
            if let Some(terminal_id) = terminal_id {
                sqlx::query(
                    "UPDATE terminals SET last_seen_at = $3 WHERE merchant_id = $1 AND terminal_id = $2",
                )
                .bind(merchant_id)
                .bind(terminal_id)
                .bind(at)
                .execute(pool)
                .await?;
            }
            Ok(())
        })
    }

    /// Stores a key's digest with its expiry; `false` when the key id exists already.
    pub async fn insert_key_record(&self, k: &NewApiKey<'_>) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO api_keys (merchant_id, key_id, scope, terminal_id, label, secret_digest,
                                   created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(k.merchant_id)
        .bind(k.key_id)
        .bind(k.scope.as_str())
        .bind(k.terminal_id)
        .bind(k.label)
        .bind(k.secret_digest)
        .bind(k.created_at)
        .bind(k.expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// One key of this merchant (without its digest), with its terminal's store.
    pub async fn key_listing(
        &self,
        merchant_id: &str,
        key_id: &str,
    ) -> Result<Option<ApiKeyListing>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT k.merchant_id, k.key_id, k.scope, k.terminal_id, t.store_id, k.label,
                    k.created_at, k.expires_at, k.last_used_at, k.revoked_at
             FROM api_keys k
             LEFT JOIN terminals t ON t.merchant_id = k.merchant_id AND t.terminal_id = k.terminal_id
             WHERE k.merchant_id = $1 AND k.key_id = $2",
        )
        .bind(merchant_id)
        .bind(key_id)
        .fetch_optional(pool)
        .await)
    }

    /// Up to `limit` keys with ids after `after`, by id; `terminal_id` empty = all; revoked and
    /// expired (at `now`) keys only with `include_revoked`.
    pub async fn key_listings_page(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        include_revoked: bool,
        now: Timestamp,
        after: &str,
        limit: i64,
    ) -> Result<Vec<ApiKeyListing>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT k.merchant_id, k.key_id, k.scope, k.terminal_id, t.store_id, k.label,
                    k.created_at, k.expires_at, k.last_used_at, k.revoked_at
             FROM api_keys k
             LEFT JOIN terminals t ON t.merchant_id = k.merchant_id AND t.terminal_id = k.terminal_id
             WHERE k.merchant_id = $1 AND ($2 = '' OR k.terminal_id = $2)
               AND ($3 OR (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $4)))
               AND k.key_id > $5
             ORDER BY k.key_id LIMIT $6",
        )
        .bind(merchant_id)
        .bind(terminal_id)
        .bind(include_revoked)
        .bind(now)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)
    }

    /// Revokes a key unless it is the merchant's last active admin key. Revocations of one
    /// merchant are serialised (its merchants row is locked), so two concurrent revocations
    /// cannot remove the last two admin keys.
    pub async fn revoke_key(
        &self,
        merchant_id: &str,
        key_id: &str,
        now: Timestamp,
    ) -> Result<Revocation, sqlx::Error> {
        with_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE merchants SET name = name WHERE merchant_id = $1")
                .bind(merchant_id)
                .execute(&mut *tx)
                .await?;
            let found: Option<(String, Option<Timestamp>, Option<Timestamp>)> = sqlx::query_as(
                "SELECT scope, revoked_at, expires_at FROM api_keys
                 WHERE merchant_id = $1 AND key_id = $2",
            )
            .bind(merchant_id)
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = match found {
                None => Revocation::NotFound,
                Some((_, Some(_), _)) => Revocation::AlreadyRevoked,
                Some((scope, None, expires_at)) => {
                    let active = expires_at.is_none_or(|e| e > now);
                    let others: i64 = if scope == KeyScope::Admin.as_str() && active {
                        sqlx::query_scalar(
                            "SELECT COUNT(*) FROM api_keys
                             WHERE merchant_id = $1 AND scope = 'admin' AND key_id <> $2
                               AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)",
                        )
                        .bind(merchant_id)
                        .bind(key_id)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?
                    } else {
                        1
                    };
                    if others == 0 {
                        Revocation::LastAdminKey
                    } else {
                        sqlx::query(
                            "UPDATE api_keys SET revoked_at = $3 WHERE merchant_id = $1 AND key_id = $2",
                        )
                        .bind(merchant_id)
                        .bind(key_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        Revocation::Revoked
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Every merchant, by id (scheduled jobs walk them; the list is small: one row per tenant).
    pub async fn merchants(&self) -> Result<Vec<Merchant>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, name, currency, time_zone, phone_region, created_at
             FROM merchants ORDER BY merchant_id",
        )
        .fetch_all(pool)
        .await)
    }

    /// The gateway database (for the scheduled jobs' claims, see `tier_job::JobRuns`).
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// A store with every column (what AdminService shows and changes).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Store {
    pub merchant_id: String,
    pub store_id: String,
    pub name: String,
    pub address: String,
    /// IANA time zone; empty = the merchant's.
    pub time_zone: String,
    pub external_id: String,
    pub wallet_location_text: String,
    /// WGS 84 degrees; both set or both unset.
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub active: bool,
    pub created_at: Timestamp,
}

/// A terminal with every column.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Terminal {
    pub merchant_id: String,
    pub terminal_id: String,
    pub store_id: String,
    pub name: String,
    pub external_id: String,
    pub disabled_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The last call made with one of its keys (to the minute).
    pub last_seen_at: Option<Timestamp>,
}

/// A key to store (its secret's digest only).
#[derive(Debug, Clone)]
pub struct NewApiKey<'a> {
    pub merchant_id: &'a str,
    pub key_id: &'a str,
    pub scope: KeyScope,
    pub terminal_id: Option<&'a str>,
    pub label: &'a str,
    pub secret_digest: &'a [u8],
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// A key as listed: no digest, with its terminal's store.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyListing {
    pub merchant_id: String,
    pub key_id: String,
    pub scope: String,
    pub terminal_id: Option<String>,
    pub store_id: Option<String>,
    pub label: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// What [`Tenancy::revoke_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    AlreadyRevoked,
    NotFound,
    /// Refused: it is the merchant's last active admin key.
    LastAdminKey,
}
