//! Every service reports SERVING over grpc.health.v1 and describes the contract over reflection,
//! on the embedded default and on PostgreSQL + Redis; shutdown drains and releases the ports.

use kopilka_tests::{Backend, TestSuite};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn assert_all_serving(suite: &TestSuite) {
    for (name, addr) in suite.addrs.all() {
        let mut health = HealthClient::new(suite.channel(addr));
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name} health check failed: {e}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{name} at {addr}");
    }
}

#[tokio::test]
async fn every_service_is_serving_on_sqlite() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    assert_all_serving(&suite).await;
    suite.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn every_service_is_serving_on_postgres_and_redis() {
    let suite = TestSuite::start(Backend::PostgresRedis).await;
    assert_all_serving(&suite).await;
    suite.stop().await.expect("clean shutdown");
}

/// The services a server's reflection lists.
async fn listed(suite: &TestSuite, name: &str, addr: std::net::SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(suite.channel(addr));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_or_else(|e| panic!("{name}: reflection failed: {e}"))
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{name}: unexpected reflection answer");
    };
    let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    services.sort();
    services
}

/// The internal services describe the whole contract; the gateway only what registers and
/// admins call.
#[tokio::test]
async fn reflection_describes_what_each_service_serves() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    for (name, addr) in suite.addrs.all() {
        let services = listed(&suite, name, addr).await;
        if name == "gateway" {
            assert_eq!(
                services,
                [
                    "grpc.health.v1.Health",
                    "kopilka.gateway.v1.AdminService",
                    "kopilka.gateway.v1.CheckoutService",
                    "kopilka.gateway.v1.CustomerService",
                ],
                "the gateway lists what registers may call, not the internal packages"
            );
            continue;
        }
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{name}: {services:?}"
        );
        for package in [
            "kopilka.gateway.v1",
            "kopilka.cards.v1",
            "kopilka.rules.v1",
            "kopilka.ledger.v1",
            "kopilka.notify.v1",
        ] {
            assert!(
                services.iter().any(|s| s.starts_with(package)),
                "{name} does not describe {package}: {services:?}"
            );
        }
    }
    suite.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_releases_every_port() {
    let suite = TestSuite::start(Backend::Sqlite).await;
    let addrs = suite.addrs;
    suite.stop().await.expect("clean shutdown");
    for (name, addr) in addrs.all() {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{name} still accepts connections at {addr}"
        );
    }
}
