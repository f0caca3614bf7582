//! The SQL of program versions, activations, the change feed and idempotency records (category
//! SQL is in [`crate::catalog_store`]). Every statement is written once: [`Tx`] holds a
//! transaction on either engine and [`on_tx!`] expands the same body for both, so there is no
//! second copy of a query. The dialects differ only in row locks (`FOR UPDATE` on PostgreSQL;
//! SQLite's `BEGIN IMMEDIATE` already serialises writers).

use chrono::{DateTime, Utc};
use kopilka_runtime::{Db, Timestamp};
use sqlx::{Postgres, Sqlite, Transaction};

use crate::error::Error;

/// A stored program version.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VersionRow {
    pub merchant_id: String,
    pub version: i64,
    /// `draft` or `published`.
    pub status: String,
    /// The protobuf-encoded `kopilka.rules.v1.Program`.
    pub document: Vec<u8>,
    pub etag: String,
    pub fingerprint: String,
    pub based_on_version: i64,
    pub comment: String,
    pub created_by: String,
    /// The protobuf-encoded `EvaluationNeeds`, once validated or published.
    pub needs: Option<Vec<u8>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub published_at: Option<Timestamp>,
}

pub const DRAFT: &str = "draft";
pub const PUBLISHED: &str = "published";

impl VersionRow {
    pub fn is_published(&self) -> bool {
        self.status == PUBLISHED
    }
}

const VERSION_COLUMNS: &str = "merchant_id, version, status, document, etag, fingerprint, \
     based_on_version, comment, created_by, needs, created_at, updated_at, published_at";

/// An activation: `version` is in force from `activate_at` until the next activation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActivationRow {
    pub activation_id: String,
    pub version: i64,
    pub activate_at: Timestamp,
    /// When it was requested.
    pub created_at: Timestamp,
    pub requested_by: String,
}

const ACTIVATION_COLUMNS: &str = "activation_id, version, activate_at, created_at, requested_by";

/// How a request id was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: this transaction performs the operation.
    New,
    /// Done before: the operation, the request digest and the stored answer.
    Done {
        operation: String,
        request_hash: Vec<u8>,
        response: Vec<u8>,
    },
}

/// The database of rules-svc: opens transactions on whichever engine it holds.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

/// One transaction on either engine. Dropped without [`Tx::commit`], it rolls back.
pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// Runs the same body on the connection of either arm of a [`Tx`]:
/// `on_tx!(tx, c => sqlx::query("…").execute(&mut **c).await)`.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Postgres($c) => $body,
            $crate::store::Tx::Sqlite($c) => $body,
        }
    };
}
pub(crate) use on_tx;

impl Store {
    pub fn new(db: Db) -> Self {
        Store { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A write transaction (`BEGIN IMMEDIATE` on SQLite, so writers queue instead of failing
    /// on a lock upgrade).
    pub async fn write(&self) -> Result<Tx, Error> {
        Ok(match &self.db {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// A read transaction: one consistent snapshot for a multi-statement read.
    pub async fn read(&self) -> Result<Tx, Error> {
        Ok(match &self.db {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
        })
    }
}

/// Whether a failed transaction may simply be run again (two writers took the same key or
/// PostgreSQL chose a deadlock victim).
pub fn is_retryable(error: &Error) -> bool {
    match error {
        Error::Db(sqlx::Error::Database(e)) => {
            e.is_unique_violation() || matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
        }
        _ => false,
    }
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from(t)
}

impl Tx {
    pub async fn commit(self) -> Result<(), Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await?,
            Tx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, whose write transactions are exclusive.
    pub(crate) fn for_update(&self) -> &'static str {
        match self {
            Tx::Postgres(_) => " FOR UPDATE",
            Tx::Sqlite(_) => "",
        }
    }

    // ---- idempotency ---------------------------------------------------------------------

    /// Registers `request_id` for this operation, or returns what it did before. A concurrent
    /// duplicate waits on the key (PostgreSQL) or the write lock (SQLite) for the first to end.
    pub async fn claim_request(
        &mut self,
        merchant: &str,
        request_id: &str,
        operation: &str,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Claim, Error> {
        let inserted = on_tx!(self, c => sqlx::query(
            "INSERT INTO idempotency_keys (merchant_id, request_id, operation, request_hash, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (merchant_id, request_id) DO NOTHING",
        )
        .bind(merchant).bind(request_id).bind(operation).bind(hash).bind(ts(now))
        .execute(&mut **c).await?.rows_affected());
        if inserted == 1 {
            return Ok(Claim::New);
        }
        let found = self.claimed_request(merchant, request_id).await?;
        let (operation, request_hash, response) =
            found.ok_or(Error::Db(sqlx::Error::RowNotFound))?;
        Ok(Claim::Done {
            operation,
            request_hash,
            response: response.unwrap_or_default(),
        })
    }

    /// What `request_id` was used for and answered, if it was (read-only).
    #[allow(clippy::type_complexity)]
    pub async fn claimed_request(
        &mut self,
        merchant: &str,
        request_id: &str,
    ) -> Result<Option<(String, Vec<u8>, Option<Vec<u8>>)>, Error> {
        Ok(on_tx!(self, c => sqlx::query_as(
            "SELECT operation, request_hash, response FROM idempotency_keys
             WHERE merchant_id = $1 AND request_id = $2",
        )
        .bind(merchant).bind(request_id)
        .fetch_optional(&mut **c).await?))
    }

    /// Stores the answer of a claimed request.
    pub async fn finish_request(
        &mut self,
        merchant: &str,
        request_id: &str,
        response: &[u8],
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "UPDATE idempotency_keys SET response = $3 WHERE merchant_id = $1 AND request_id = $2",
        )
        .bind(merchant).bind(request_id).bind(response)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Forgets request ids older than `before`.
    pub async fn prune_idempotency(&mut self, before: DateTime<Utc>) -> Result<u64, Error> {
        Ok(
            on_tx!(self, c => sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(ts(before)).execute(&mut **c).await?.rows_affected()),
        )
    }

    // ---- versions ------------------------------------------------------------------------

    /// The merchant's next version number (never one handed out before, even if deleted).
    pub async fn next_version(&mut self, merchant: &str) -> Result<i64, Error> {
        Ok(on_tx!(self, c => sqlx::query_scalar(
            "INSERT INTO program_merchants (merchant_id, last_version) VALUES ($1, 1)
             ON CONFLICT (merchant_id) DO UPDATE SET last_version = program_merchants.last_version + 1
             RETURNING last_version",
        )
        .bind(merchant)
        .fetch_one(&mut **c).await?))
    }

    pub async fn insert_version(&mut self, v: &VersionRow) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO program_versions ({VERSION_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        on_tx!(self, c => sqlx::query(&sql)
            .bind(&v.merchant_id).bind(v.version).bind(&v.status).bind(&v.document)
            .bind(&v.etag).bind(&v.fingerprint).bind(v.based_on_version).bind(&v.comment)
            .bind(&v.created_by).bind(&v.needs).bind(v.created_at).bind(v.updated_at)
            .bind(v.published_at)
            .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// One version of the merchant's (another merchant's version is not found).
    pub async fn version(
        &mut self,
        merchant: &str,
        version: i64,
    ) -> Result<Option<VersionRow>, Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM program_versions WHERE merchant_id = $1 AND version = $2"
        );
        Ok(on_tx!(self, c => sqlx::query_as(&sql)
            .bind(merchant).bind(version).fetch_optional(&mut **c).await?))
    }

    /// Like [`Tx::version`], locking the row until the transaction ends.
    pub async fn lock_version(
        &mut self,
        merchant: &str,
        version: i64,
    ) -> Result<Option<VersionRow>, Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM program_versions WHERE merchant_id = $1 AND version = $2{}",
            self.for_update()
        );
        Ok(on_tx!(self, c => sqlx::query_as(&sql)
            .bind(merchant).bind(version).fetch_optional(&mut **c).await?))
    }

    /// Writes a draft's mutable columns (document, etag, fingerprint, comment, needs, updated_at).
    pub async fn update_draft(&mut self, v: &VersionRow) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "UPDATE program_versions SET document = $3, etag = $4, fingerprint = $5, comment = $6,
                 needs = $7, updated_at = $8
             WHERE merchant_id = $1 AND version = $2 AND status = 'draft'",
        )
        .bind(&v.merchant_id).bind(v.version).bind(&v.document).bind(&v.etag)
        .bind(&v.fingerprint).bind(&v.comment).bind(&v.needs).bind(v.updated_at)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Records what a draft needs, if the draft is still the one validated (same etag).
    pub async fn set_needs(
        &mut self,
        merchant: &str,
        version: i64,
        etag: &str,
        needs: &[u8],
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "UPDATE program_versions SET needs = $4
             WHERE merchant_id = $1 AND version = $2 AND etag = $3 AND status = 'draft'",
        )
        .bind(merchant).bind(version).bind(etag).bind(needs)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Freezes a draft with what it needs.
    pub async fn publish(
        &mut self,
        merchant: &str,
        version: i64,
        needs: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "UPDATE program_versions SET status = 'published', needs = $3, published_at = $4
             WHERE merchant_id = $1 AND version = $2 AND status = 'draft'",
        )
        .bind(merchant).bind(version).bind(needs).bind(ts(now))
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    pub async fn delete_draft(&mut self, merchant: &str, version: i64) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "DELETE FROM program_versions WHERE merchant_id = $1 AND version = $2 AND status = 'draft'",
        )
        .bind(merchant).bind(version)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Versions newest first: only `status` if given, only numbers below `before` if given.
    pub async fn list_versions(
        &mut self,
        merchant: &str,
        status: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<VersionRow>, Error> {
        // NULL parameters switch a filter off, so one statement serves every combination.
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM program_versions
             WHERE merchant_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR version < $3)
             ORDER BY version DESC LIMIT $4"
        );
        Ok(on_tx!(self, c => sqlx::query_as(&sql)
            .bind(merchant).bind(status).bind(before).bind(limit)
            .fetch_all(&mut **c).await?))
    }

    // ---- activations ---------------------------------------------------------------------

    /// Stores an activation; one already at the same instant is replaced (its id goes away).
    pub async fn upsert_activation(
        &mut self,
        merchant: &str,
        a: &ActivationRow,
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "INSERT INTO program_activations (merchant_id, activate_at, version, created_at, activation_id, requested_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (merchant_id, activate_at) DO UPDATE SET version = excluded.version,
                 created_at = excluded.created_at, activation_id = excluded.activation_id,
                 requested_by = excluded.requested_by",
        )
        .bind(merchant).bind(a.activate_at).bind(a.version).bind(a.created_at)
        .bind(&a.activation_id).bind(&a.requested_by)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Every activation of the merchant, earliest first.
    pub async fn activations(&mut self, merchant: &str) -> Result<Vec<ActivationRow>, Error> {
        let sql = format!(
            "SELECT {ACTIVATION_COLUMNS} FROM program_activations WHERE merchant_id = $1
             ORDER BY activate_at"
        );
        Ok(on_tx!(self, c => sqlx::query_as(&sql)
            .bind(merchant).fetch_all(&mut **c).await?))
    }

    pub async fn activation(
        &mut self,
        merchant: &str,
        activation_id: &str,
    ) -> Result<Option<ActivationRow>, Error> {
        let sql = format!(
            "SELECT {ACTIVATION_COLUMNS} FROM program_activations
             WHERE merchant_id = $1 AND activation_id = $2"
        );
        Ok(on_tx!(self, c => sqlx::query_as(&sql)
            .bind(merchant).bind(activation_id).fetch_optional(&mut **c).await?))
    }

    pub async fn delete_activation(
        &mut self,
        merchant: &str,
        activation_id: &str,
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "DELETE FROM program_activations WHERE merchant_id = $1 AND activation_id = $2",
        )
        .bind(merchant).bind(activation_id)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    // ---- change feed ---------------------------------------------------------------------

    /// Appends a change of `kind` (`publish`, `activate`, `cancel`, `catalog`) to the merchant's
    /// feed and returns its seq. Two concurrent writers of one merchant pick the same seq; the
    /// primary key refuses the second, whose transaction is then retried (see [`is_retryable`]),
    /// so seqs commit in order.
    pub async fn record_change(
        &mut self,
        merchant: &str,
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, Error> {
        Ok(on_tx!(self, c => sqlx::query_scalar(
            "INSERT INTO program_changes (merchant_id, seq, kind, changed_at)
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM program_changes WHERE merchant_id = $1
             RETURNING seq",
        )
        .bind(merchant).bind(kind).bind(ts(now))
        .fetch_one(&mut **c).await?))
    }

    /// The newest seq of every merchant with a change at or after `since`.
    pub async fn changes_since(
        &mut self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, Error> {
        Ok(on_tx!(self, c => sqlx::query_as(
            "SELECT merchant_id, MAX(seq) FROM program_changes WHERE changed_at >= $1
             GROUP BY merchant_id",
        )
        .bind(ts(since))
        .fetch_all(&mut **c).await?))
    }

    /// Forgets changes older than `before`, keeping each merchant's newest (its seq continues
    /// from there, so a replica never sees a seq it already saw come back).
    pub async fn prune_changes(&mut self, before: DateTime<Utc>) -> Result<u64, Error> {
        Ok(on_tx!(self, c => sqlx::query(
            "DELETE FROM program_changes WHERE changed_at < $1 AND seq < (
                 SELECT MAX(n.seq) FROM program_changes n
                 WHERE n.merchant_id = program_changes.merchant_id)",
        )
        .bind(ts(before))
        .execute(&mut **c).await?.rows_affected()))
    }
}
