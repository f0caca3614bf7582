//! Program versions and activations: the only SQL of rules-svc. Each query is written once and
//! runs on PostgreSQL and SQLite.

use kopilka_runtime::{with_db, Db, Timestamp};

/// A stored program version.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VersionRow {
    pub merchant_id: String,
    pub version: i64,
    /// `draft` or `published`.
    pub status: String,
    /// The protobuf-encoded `kopilka.rules.v1.Program`.
    pub document: Vec<u8>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub published_at: Option<Timestamp>,
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("program version not found")]
    NotFound,
    #[error("only a draft can be changed or published; this version is published")]
    Immutable,
    #[error("only a published version can be activated")]
    NotPublished,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Program storage on either engine.
#[derive(Debug, Clone)]
pub struct Programs {
    db: Db,
}

const COLUMNS: &str =
    "merchant_id, version, status, document, created_at, updated_at, published_at";

impl Programs {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a new draft as the merchant's next version number and returns it.
    pub async fn create_draft(
        &self,
        merchant_id: &str,
        document: &[u8],
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        // Two concurrent drafts may pick the same number; the primary key refuses the second,
        // which then takes the next one.
        let mut attempts = 0;
        loop {
            let inserted = with_db!(&self.db, pool => sqlx::query_scalar::<_, i64>(
                "INSERT INTO program_versions (merchant_id, version, status, document, created_at, updated_at)
                 SELECT $1, COALESCE(MAX(version), 0) + 1, 'draft', $2, $3, $3
                 FROM program_versions WHERE merchant_id = $1
                 RETURNING version",
            )
            .bind(merchant_id)
            .bind(document)
            .bind(now)
            .fetch_one(pool)
            .await);
            match inserted {
                Ok(version) => return Ok(version),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempts < 5 => {
                    attempts += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One version.
    pub async fn version(&self, merchant_id: &str, version: i64) -> Result<VersionRow, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM program_versions WHERE merchant_id = $1 AND version = $2"
        );
        with_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(merchant_id)
            .bind(version)
            .fetch_optional(pool)
            .await)?
        .ok_or(StoreError::NotFound)
    }

    /// Replaces a draft's document; a published version is immutable.
    pub async fn update_draft(
        &self,
        merchant_id: &str,
        version: i64,
        document: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let changed = with_db!(&self.db, pool => sqlx::query(
            "UPDATE program_versions SET document = $3, updated_at = $4
             WHERE merchant_id = $1 AND version = $2 AND status = 'draft'",
        )
        .bind(merchant_id)
        .bind(version)
        .bind(document)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        if changed == 0 {
            self.version(merchant_id, version).await?;
            return Err(StoreError::Immutable);
        }
        Ok(())
    }

    /// Freezes a draft. Publishing a published version again changes nothing.
    pub async fn publish(
        &self,
        merchant_id: &str,
        version: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let changed = with_db!(&self.db, pool => sqlx::query(
            "UPDATE program_versions SET status = 'published', published_at = $3, updated_at = $3
             WHERE merchant_id = $1 AND version = $2 AND status = 'draft'",
        )
        .bind(merchant_id)
        .bind(version)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        if changed == 0 {
            // Either missing or already published: tell which.
            self.version(merchant_id, version).await?;
        }
        Ok(())
    }

    /// Makes a published version the active one from `activate_at` on.
    pub async fn activate(
        &self,
        merchant_id: &str,
        version: i64,
        activate_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if self.version(merchant_id, version).await?.status != "published" {
            return Err(StoreError::NotPublished);
        }
        with_db!(&self.db, pool => sqlx::query(
            "INSERT INTO program_activations (merchant_id, activate_at, version, created_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (merchant_id, activate_at) DO UPDATE SET version = excluded.version",
        )
        .bind(merchant_id)
        .bind(activate_at)
        .bind(version)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// The version in force at `at`, if any has been activated by then.
    pub async fn active_at(
        &self,
        merchant_id: &str,
        at: Timestamp,
    ) -> Result<Option<VersionRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM program_versions v
             WHERE v.merchant_id = $1 AND v.version = (
                 SELECT a.version FROM program_activations a
                 WHERE a.merchant_id = $1 AND a.activate_at <= $2
                 ORDER BY a.activate_at DESC LIMIT 1)",
            COLUMNS
                .split(", ")
                .map(|c| format!("v.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(with_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(merchant_id)
            .bind(at)
            .fetch_optional(pool)
            .await)?)
    }

    /// How many versions the merchant has (drafts included).
    pub async fn count(&self, merchant_id: &str) -> Result<i64, StoreError> {
        Ok(with_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM program_versions WHERE merchant_id = $1",
        )
        .bind(merchant_id)
        .fetch_one(pool)
        .await)?)
    }
}
