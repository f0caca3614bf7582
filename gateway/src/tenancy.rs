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

/// A shop, café or other point of sale.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Store {
    pub merchant_id: String,
    pub store_id: String,
    pub name: String,
    pub address: String,
    pub created_at: Timestamp,
}

/// A cash register in a store.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Terminal {
    pub merchant_id: String,
    pub terminal_id: String,
    pub store_id: String,
    pub name: String,
    pub disabled_at: Option<Timestamp>,
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

    /// Inserts a store; `false` when the id is taken in this merchant.
    pub async fn create_store(&self, s: &Store) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO stores (merchant_id, store_id, name, address, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (merchant_id, store_id) DO NOTHING",
        )
        .bind(&s.merchant_id)
        .bind(&s.store_id)
        .bind(&s.name)
        .bind(&s.address)
        .bind(s.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// The merchant's stores, by id.
    pub async fn stores(&self, merchant_id: &str) -> Result<Vec<Store>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, store_id, name, address, created_at
             FROM stores WHERE merchant_id = $1 ORDER BY store_id",
        )
        .bind(merchant_id)
        .fetch_all(pool)
        .await)
    }

    /// Inserts a terminal; `false` when the id is taken in this merchant.
    pub async fn create_terminal(&self, t: &Terminal) -> Result<bool, sqlx::Error> {
        let done = with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO terminals (merchant_id, terminal_id, store_id, name, disabled_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (merchant_id, terminal_id) DO NOTHING",
        )
        .bind(&t.merchant_id)
        .bind(&t.terminal_id)
        .bind(&t.store_id)
        .bind(&t.name)
        .bind(t.disabled_at)
        .bind(t.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// One terminal by id.
    pub async fn terminal(
        &self,
        merchant_id: &str,
        terminal_id: &str,
    ) -> Result<Option<Terminal>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, terminal_id, store_id, name, disabled_at, created_at
             FROM terminals WHERE merchant_id = $1 AND terminal_id = $2",
        )
        .bind(merchant_id)
        .bind(terminal_id)
        .fetch_optional(pool)
        .await)
    }

    /// Stores a generated key's digest for a merchant (and terminal, for terminal keys).
    pub async fn insert_key(
        &self,
        merchant_id: &str,
        key: &GeneratedKey,
        scope: KeyScope,
        terminal_id: Option<&str>,
        label: &str,
        now: Timestamp,
    ) -> Result<(), sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO api_keys (merchant_id, key_id, scope, terminal_id, label, secret_digest, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(merchant_id)
        .bind(&key.key_id)
        .bind(scope.as_str())
        .bind(terminal_id)
        .bind(label)
        .bind(&key.secret_digest)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
    }

    /// The key record for a presented key id, revoked or not.
    pub async fn key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
        with_db!(&self.db, pool => sqlx::query_as(
            "SELECT merchant_id, key_id, scope, terminal_id, label, secret_digest, created_at, revoked_at
             FROM api_keys WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(pool)
        .await)
    }
}
