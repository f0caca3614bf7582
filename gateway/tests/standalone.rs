//! The production way: the gateway binary alone, configured only from `KOPILKA_*` variables, on
//! PostgreSQL with JSON logs; SERVING once migrated, and a clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kopilka_tests::{free_port, TempPostgres};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test(flavor = "multi_thread")]
async fn gateway_binary_runs_alone_on_postgres_from_the_environment() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap();
    let url = pg.create_database("gateway").await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("KOPILKA_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("KOPILKA_DATABASE_URL", &url)
        .env("KOPILKA_SERVICE_TOKEN", "standalone-test-service-token")
        .env("KOPILKA_LOG_FORMAT", "json")
        .env("KOPILKA_SHUTDOWN_GRACE", "0.2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await;
            break reply.expect("health answers").into_inner().status();
        }
        assert!(child.try_wait().unwrap().is_none(), "gateway exited early");
        assert!(Instant::now() < deadline, "gateway did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, ServingStatus::Serving);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "exit status {}", output.status);
    let logs = String::from_utf8_lossy(&output.stdout);
    let first = logs.lines().next().expect("the gateway logs");
    assert!(
        first.starts_with('{') && first.contains("\"level\""),
        "JSON logs expected: {first}"
    );
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(!logs.contains(&url), "the database URL must not be logged");
}
