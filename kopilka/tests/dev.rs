//! `kopilka dev`, run as a newcomer runs it: the real binary, five services answering SERVING,
//! the demo tenant printed, a clean exit on SIGTERM, and the same keys shown on a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `kopilka dev` and returns it with everything it printed up to "Stop with Ctrl-C."
fn start(data_dir: &std::path::Path, ports: &[u16; 5]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kopilka"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--gateway-port", &ports[0].to_string()])
        .args(["--cards-port", &ports[1].to_string()])
        .args(["--rules-port", &ports[2].to_string()])
        .args(["--ledger-port", &ports[3].to_string()])
        .args(["--notify-port", &ports[4].to_string()])
        .env("KOPILKA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kopilka dev");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "kopilka dev exited early; it printed:\n{printed}");
        printed.push_str(&line);
        if line.starts_with("Stop with Ctrl-C.") {
            break;
        }
    }
    (child, printed)
}

fn stop(mut child: Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "kopilka dev exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("kopilka dev did not stop within 10 s of SIGTERM");
}

fn key_lines(printed: &str) -> Vec<String> {
    printed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("KOPILKA_") && l.contains("=kpk_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_all_five_services_and_seeds_the_demo_once() {
    let data = tempfile::tempdir().unwrap();
    let ports = [
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    ];

    let (child, printed) = start(data.path(), &ports);
    assert!(printed.contains("Demo merchant `demo`"), "{printed}");
    assert!(
        printed.contains("Active program: version 1, `Demo café`"),
        "{printed}"
    );
    let keys = key_lines(&printed);
    assert_eq!(
        keys.len(),
        2,
        "terminal and admin keys expected:\n{printed}"
    );
    for port in ports {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "port {port}");
    }
    stop(child);
    for db in ["gateway", "cards", "rules", "ledger", "notify"] {
        assert!(
            data.path().join(format!("{db}.db")).is_file(),
            "{db}.db missing"
        );
    }

    // A restart keeps the data and shows the same keys: nothing is seeded twice.
    let (child, printed_again) = start(data.path(), &ports);
    assert_eq!(key_lines(&printed_again), keys);
    stop(child);
}
