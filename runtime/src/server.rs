//! A tonic server with the furniture every Kopilka service carries: `grpc.health.v1`,
//! reflection (v1 and v1alpha) over the Kopilka contract (or only the services a public server
//! names), the service-token check of internal services, per-connection stream and per-call time
//! limits, HTTP/2 keep-alive, and a graceful shutdown that flips health to NOT_SERVING first,
//! waits a grace period so load balancers and probes react, then stops accepting and lets
//! in-flight calls finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::service_auth::RequireToken;

/// The overall status name in `grpc.health.v1` (the empty service name).
const OVERALL: &str = "";

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot bind {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// Calls in flight per HTTP/2 connection by default: one client cannot hold unbounded work.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// The longest a call may run by default (every Kopilka RPC is a unary call of milliseconds).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one connection and one call may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// The router every service adds its gRPC services to: behind the service-token check.
pub type Router = tonic::transport::server::Router<
    tower::layer::util::Stack<RequireToken, tower::layer::util::Identity>,
>;

/// A router that already serves health and reflection, and the reporter to flip health with.
pub struct GrpcServer {
    /// Add the service's own gRPC services to this router.
    pub router: Router,
    /// Per-service health; the overall status (`""`) is managed by [`serve`].
    pub health: HealthReporter,
}

impl GrpcServer {
    /// A router with health and reflection and the default [`Limits`]; the overall status
    /// starts SERVING.
    pub fn new() -> Result<Self, ServeError> {
        Self::with_limits(Limits::default(), RequireToken::open(), &[])
    }

    /// Like [`GrpcServer::new`], with per-connection stream and per-call time limits, calls
    /// refused unless `check` passes them (the service token of internal services), and
    /// reflection listing only the services named in `listed` (all when empty).
    pub fn with_limits(
        limits: Limits,
        check: RequireToken,
        listed: &[&str],
    ) -> Result<Self, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(kopilka_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for name in listed {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let router = Server::builder()
            .max_concurrent_streams(Some(limits.max_concurrent_streams.max(1)))
            .timeout(limits.request_timeout)
            // Dead peers are found and their connections closed.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(check)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        Ok(Self { router, health })
    }
}

/// Binds `addr` (port 0 picks a free port; read it back with `local_addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind(addr, e))
}

/// Serves until `shutdown` completes, then drains: NOT_SERVING, wait `grace`, stop accepting,
/// finish in-flight calls.
pub async fn serve(
    server: GrpcServer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), ServeError> {
    let GrpcServer { router, health } = server;
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "gRPC server listening");
    let drain = async move {
        shutdown.await;
        health
            .set_service_status(OVERALL, ServingStatus::NotServing)
            .await;
        tracing::info!(?addr, ?grace, "draining: health is NOT_SERVING");
        tokio::time::sleep(grace).await;
    };
    // Without TCP_NODELAY, Nagle's algorithm holds small gRPC frames back ~40 ms per call.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router.serve_with_incoming_shutdown(incoming, drain).await?;
    tracing::info!(?addr, "gRPC server stopped");
    Ok(())
}
