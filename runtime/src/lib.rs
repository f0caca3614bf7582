//! Cross-cutting runtime shared by the five Kopilka services. Business logic never lives here.
//!
//! - [`backoff`]: the one exponential back-off every retry waits by.
//! - [`config`]: typed settings layered from defaults and `KOPILKA_*` environment variables.
//! - [`telemetry`]: `tracing` set-up, human-readable or JSON.
//! - [`server`]: a gRPC server with health and reflection that drains gracefully on shutdown.
//! - [`service_auth`]: the service token internal services demand and internal callers attach.
//! - [`shutdown`]: the SIGTERM / Ctrl-C future a binary hands to its server.
//! - [`host`]: what every service process does around its own RPCs (DB, port, health, drain).
//! - [`currency`]: ISO 4217 minor units of a currency code, one table for every service.
//! - [`decimal`]: decimal strings of the contract (money, points, percentages) parsed and formatted exactly.
//! - [`db`]: one handle over PostgreSQL or SQLite, chosen by URL, with each service's migrations.
//! - [`status`]: building gRPC statuses with `google.rpc` details (field violations, stable reasons).
//! - [`validate`]: request fields checked one way: violations with field paths and reasons.
//! - [`timestamps`]: proto timestamps to and from `chrono` instants.
//! - [`outbox`]: the relay of outbox events to notify-svc, at least once, with back-off.
//! - [`redact`]: masking phone numbers, e-mails and keys before they reach a log line.

pub mod backoff;
pub mod config;
pub mod currency;
pub mod db;
pub mod decimal;
pub mod host;
pub mod outbox;
pub mod redact;
pub mod server;
pub mod service_auth;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod timestamps;
pub mod validate;

pub use db::{Amount, Db, Timestamp};
