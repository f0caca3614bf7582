//! One database handle over PostgreSQL (production) or SQLite (the embedded default), chosen by
//! the URL scheme, with the owning service's migrations applied on connect.
//!
//! Services write each query once in the SQL both engines accept (`$1` placeholders, `RETURNING`,
//! `ON CONFLICT`, integer and text types) and run it on whichever pool they hold through
//! [`with_db!`](crate::with_db), which expands the same code for each engine. Where the dialects
//! really differ (DDL, row locks, `BEGIN IMMEDIATE`), the service matches on [`Db`] explicitly.

mod amount;
mod timestamp;

pub use amount::Amount;
pub use timestamp::Timestamp;

/// Whether `error` says the database cannot be reached right now (a pool timeout, a broken or
/// closed connection, PostgreSQL shutting down or restarting: SQLSTATE classes 08 and 57P), so
/// the call may be retried as it is: UNAVAILABLE DEPENDENCY_UNAVAILABLE "database", never
/// INTERNAL.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// UNAVAILABLE DEPENDENCY_UNAVAILABLE with `dependency` = "database".
pub fn unavailable_status() -> tonic::Status {
    crate::status::with_reason_and_metadata(
        tonic::Code::Unavailable,
        "DEPENDENCY_UNAVAILABLE",
        "the database is not answering; retry the same call",
        std::collections::HashMap::from([("dependency".to_owned(), "database".to_owned())]),
    )
}

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// A connection pool on one of the two supported engines.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL: the production engine.
    Postgres(PgPool),
    /// SQLite: the embedded default (one file per service).
    Sqlite(SqlitePool),
}

/// Which engine a [`Db`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A service's migrations, one directory per engine (`migrations/postgres`, `migrations/sqlite`).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    pub postgres: &'static Migrator,
    pub sqlite: &'static Migrator,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL scheme in `{0}`: use postgres:// or sqlite://")]
    UnsupportedScheme(String),
    #[error("invalid database URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot create directory {0} for the SQLite file")]
    CreateDir(String, #[source] std::io::Error),
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("database migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Runs the same block on whichever pool a [`Db`] holds: `with_db!(db, pool => query.fetch_one(pool).await)`.
#[macro_export]
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}

impl Db {
    /// Opens a pool for `url` (`postgres://…` or `sqlite://path/file.db`) and applies migrations.
    /// SQLite files and their directories are created when missing.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        migrations: Migrations,
    ) -> Result<Self, DbError> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(DbError::InvalidUrl)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            Db::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(DbError::InvalidUrl)?
                .create_if_missing(true)
                // WAL lets readers run beside the single writer; FULL sync makes every
                // acknowledged commit survive a power cut, not only a process crash.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            if let Some(dir) = Path::new(options.get_filename()).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| DbError::CreateDir(dir.display().to_string(), e))?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            Db::Sqlite(pool)
        } else {
            return Err(DbError::UnsupportedScheme(scheme_of(url)));
        };
        match &db {
            Db::Postgres(pool) => migrations.postgres.run(pool).await,
            Db::Sqlite(pool) => migrations.sqlite.run(pool).await,
        }
        .map_err(DbError::Migrate)?;
        Ok(db)
    }

    /// The engine behind this handle.
    pub fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// A round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    /// Closes every connection; pending queries finish first.
    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await)
    }
}

/// The scheme part of a URL, without credentials, for error messages.
fn scheme_of(url: &str) -> String {
    url.split_once(':')
        .map(|(s, _)| s.to_owned())
        .unwrap_or_default()
}
