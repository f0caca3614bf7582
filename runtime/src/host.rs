//! What every service process does around its own gRPC services: open its database and run its
//! migrations, bind its port, serve health and reflection, keep the overall health status in step
//! with the database, and drain gracefully on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::db::{Db, DbError, Migrations};
use crate::server::{self, GrpcServer, Router, ServeError};
use crate::service_auth::{RequireToken, ServiceToken, TokenError};

/// Settings every service binary reads (`KOPILKA_LISTEN_ADDR`, `KOPILKA_DATABASE_URL`, …).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSettings {
    /// Where the gRPC server listens; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// `postgres://…` or `sqlite://path/file.db` (created when missing).
    #[serde(serialize_with = "serialize_secret")]
    pub database_url: SecretString,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// How long health says NOT_SERVING before the server stops accepting calls on shutdown.
    #[serde(with = "seconds")]
    pub shutdown_grace: Duration,
    /// How often the database is pinged to keep the health status true.
    #[serde(with = "seconds")]
    pub health_interval: Duration,
    /// Calls in flight on one HTTP/2 connection (`KOPILKA_MAX_CONCURRENT_STREAMS`); a client
    /// opening more waits for a free stream.
    pub max_concurrent_streams: u32,
    /// The longest any call may run (`KOPILKA_REQUEST_TIMEOUT`, seconds); a caller's shorter
    /// `grpc-timeout` wins. A call past it ends with CANCELLED.
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// The secret shared by all services (`KOPILKA_SERVICE_TOKEN`): internal services refuse
    /// calls without it, internal callers attach it. Required by cards, rules, ledger and notify.
    #[serde(serialize_with = "serialize_optional_secret")]
    pub service_token: Option<SecretString>,
}

impl ServiceSettings {
    /// The token to attach to calls to internal services.
    pub fn outbound_token(&self) -> Result<ServiceToken, TokenError> {
        ServiceToken::required(self.service_token.as_ref())
    }
}

impl ServiceSettings {
    /// Defaults for a service listening on `port` with its SQLite file at `sqlite_path`.
    pub fn embedded(port: u16, sqlite_path: &str) -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], port)),
            database_url: SecretString::from(format!("sqlite://{sqlite_path}")),
            max_connections: 8,
            shutdown_grace: Duration::from_secs(0),
            health_interval: Duration::from_secs(5),
            max_concurrent_streams: server::MAX_CONCURRENT_STREAMS,
            request_timeout: server::REQUEST_TIMEOUT,
            service_token: None,
        }
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database")]
    Db(#[from] DbError),
    #[error("gRPC server")]
    Serve(#[from] ServeError),
    #[error("service token")]
    Token(#[from] TokenError),
}

/// A started (bound, migrated) service process, ready to run.
pub struct Host {
    name: &'static str,
    db: Db,
    server: GrpcServer,
    listener: TcpListener,
    settings: ServiceSettings,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Host {
    /// An internal service: connects and migrates the database, then binds the listener; every
    /// call but health must carry the service token (without one configured it does not start).
    pub async fn start(
        name: &'static str,
        settings: ServiceSettings,
        migrations: Migrations,
    ) -> Result<Self, StartError> {
        let check = ServiceToken::required(settings.service_token.as_ref())?.check();
        Self::start_with(name, settings, migrations, check, &[]).await
    }

    /// The public gateway: like [`Host::start`], without the service-token check (its callers
    /// authenticate with API keys), its reflection listing only the services in `listed`.
    pub async fn start_public(
        name: &'static str,
        settings: ServiceSettings,
        migrations: Migrations,
        listed: &[&str],
    ) -> Result<Self, StartError> {
        Self::start_with(name, settings, migrations, RequireToken::open(), listed).await
    }

    async fn start_with(
        name: &'static str,
        settings: ServiceSettings,
        migrations: Migrations,
        check: RequireToken,
        listed: &[&str],
    ) -> Result<Self, StartError> {
        let db = Db::connect(
            settings.database_url.expose_secret(),
            settings.max_connections,
            migrations,
        )
        .await?;
        let listener = server::bind(settings.listen_addr).await?;
        let server = GrpcServer::with_limits(
            server::Limits {
                max_concurrent_streams: settings.max_concurrent_streams,
                request_timeout: settings.request_timeout,
            },
            check,
            listed,
        )?;
        tracing::info!(service = name, backend = ?db.backend(), "database ready");
        Ok(Self {
            name,
            db,
            server,
            listener,
            settings,
            background: Vec::new(),
        })
    }

    /// Runs a background job (expiry, relays …) for as long as the service runs; it is stopped
    /// when the server has drained.
    pub fn spawn_background(mut self, job: impl Future<Output = ()> + Send + 'static) -> Self {
        self.background.push(tokio::spawn(job));
        self
    }

    /// The service's database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The address actually bound (useful when the port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Adds the service's own gRPC services: `host.route(|r| r.add_service(MyServer::new(svc)))`.
    pub fn route(mut self, add: impl FnOnce(Router) -> Router) -> Self {
        self.server.router = add(self.server.router);
        self
    }

    /// The health reporter, to publish per-service statuses.
    pub fn health(&self) -> tonic_health::server::HealthReporter {
        self.server.health.clone()
    }

    /// Serves until `shutdown`, then drains and closes the database.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let Host {
            name,
            db,
            server,
            listener,
            settings,
            background,
        } = self;
        let (stop_probe, stopped) = watch::channel(false);
        let probe = tokio::spawn(probe_database(
            name,
            db.clone(),
            server.health.clone(),
            settings.health_interval,
            stopped,
        ));
        let shutdown = async move {
            shutdown.await;
            let _ = stop_probe.send(true);
        };
        let result = server::serve(server, listener, shutdown, settings.shutdown_grace).await;
        let _ = probe.await;
        for job in background {
            job.abort();
            let _ = job.await;
        }
        db.close().await;
        tracing::info!(service = name, "stopped");
        result
    }
}

/// Keeps the overall health status true to whether the database answers.
async fn probe_database(
    name: &'static str,
    db: Db,
    health: tonic_health::server::HealthReporter,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let ok = db.ping().await.is_ok();
        if *stopped.borrow() {
            return;
        }
        if ok != healthy {
            healthy = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::warn!(service = name, ?status, "database health changed");
            health.set_service_status("", status).await;
        }
    }
}

fn serialize_secret<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    // Serialised only in memory, to layer the defaults under the environment; `Debug` still
    // redacts it, so it never reaches a log line.
    s.serialize_str(secret.expose_secret())
}

fn serialize_optional_secret<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serialize_secret(secret, s),
        None => s.serialize_none(),
    }
}

/// Durations in configuration are whole or fractional seconds (`KOPILKA_SHUTDOWN_GRACE=5`).
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
