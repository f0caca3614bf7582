//! Service binaries as separate OS processes, for tests of a dependency dying (SIGKILL) and
//! coming back: [`ServiceProcess::spawn`] starts one on a fixed port with `KOPILKA_*` settings,
//! [`ServiceProcess::wait_ready`] polls its gRPC health, [`ServiceProcess::kill`] sends SIGKILL,
//! [`ServiceProcess::restart`] starts it again on the same port and database. Dropping a
//! process kills it.
//!
//! The binaries are the workspace's own (`cards-svc`, `rules-svc`, `ledger-svc`, `gateway`,
//! …), looked up next to the test executable in the cargo target dir and built once per test
//! process with `cargo build` when missing or older than the test executable.

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;

use crate::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a service may take to migrate its database and start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Binaries this test process has already built (or found fresh).
static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// `target/<profile>/<bin>` for the test executable running now.
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("target/<profile>/deps");
    // Test executables live in target/<profile>/deps; binaries one level up.
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("target/<profile>").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The path of workspace binary `bin` of package `package`, built first if it is missing or
/// older than the test executable (once per test process; concurrent callers wait).
pub fn binary(package: &str, bin: &str) -> PathBuf {
    binaries(&[(package, bin)]).remove(0)
}

/// [`binary`] for several `(package, bin)` pairs, built with one `cargo build`.
pub fn binaries(wanted: &[(&str, &str)]) -> Vec<PathBuf> {
    let dir = binary_dir();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashSet::new);
    let stale: Vec<&(&str, &str)> = wanted
        .iter()
        .filter(|(_, bin)| !built.contains(*bin) && needs_build(&dir.join(bin)))
        .collect();
    if !stale.is_empty() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet"]);
        for (package, bin) in &stale {
            cmd.args(["-p", package, "--bin", bin]);
        }
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        if let Some(root) = workspace_root() {
            cmd.current_dir(root);
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo build: {e}"));
        // A failed build (someone mid-edit) still leaves a usable older binary, if there is one.
        for (package, bin) in &stale {
            assert!(
                status.success() || dir.join(bin).exists(),
                "cargo build -p {package} --bin {bin} failed: {status}"
            );
        }
    }
    built.extend(wanted.iter().map(|(_, bin)| (*bin).to_owned()));
    wanted.iter().map(|(_, bin)| dir.join(bin)).collect()
}

fn needs_build(path: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(path),
        std::env::current_exe().ok().and_then(|e| modified(&e)),
    ) {
        (None, _) => true,
        (Some(bin), Some(test)) => bin < test,
        (Some(_), None) => false,
    }
}

fn workspace_root() -> Option<PathBuf> {
    // CARGO_MANIFEST_DIR of this crate is <workspace>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
}

/// One service binary running as a child process on a fixed port.
pub struct ServiceProcess {
    name: String,
    bin: PathBuf,
    port: u16,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    logs: tempfile::TempDir,
    starts: u32,
}

impl ServiceProcess {
    /// Starts `bin` listening on `127.0.0.1:<port>` with `envs` (`KOPILKA_LISTEN_ADDR` is set
    /// here; logs go to a file shown when the service fails to start). Does not wait: see
    /// [`ServiceProcess::wait_ready`].
    pub fn spawn(bin: impl Into<PathBuf>, port: u16, envs: &[(&str, String)]) -> Self {
        let bin = bin.into();
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "service".to_owned());
        let mut envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        envs.push(("KOPILKA_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
        envs.push(("KOPILKA_SERVICE_TOKEN".into(), crate::SERVICE_TOKEN.into()));
        let mut process = ServiceProcess {
            name,
            bin,
            port,
            envs,
            child: None,
            logs: tempfile::Builder::new()
                .prefix("kopilka-proc-")
                .tempdir()
                .expect("temp dir for logs"),
            starts: 0,
        };
        process.start();
        process
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        self.starts += 1;
        let log = self.log_path();
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&self.bin)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.logs
            .path()
            .join(format!("{}-{}.log", self.name, self.starts))
    }

    /// What the current (or last) run of the service wrote.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The binary's file name (`cards-svc`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<port>`, for other services' `KOPILKA_*_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A lazily connecting channel to the service (survives restarts).
    pub fn channel(&self) -> Channel {
        crate::channel_to(&self.url())
    }

    /// Waits until grpc.health.v1 says SERVING; panics with the logs if the process exits or
    /// does not get there within a minute.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited while starting ({status}):\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(self.child.is_some(), "{} is not running", self.name);
            let endpoint = Endpoint::from_shared(self.url())
                .expect("valid URI")
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(2));
            if let Ok(channel) = endpoint.connect().await {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                if reply.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become SERVING on port {}:\n{}",
                self.name,
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, then reaps the process: no graceful shutdown, connections just drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Starts the service again with the same port, settings and database, and waits until it
    /// serves. Kills it first if it still runs.
    pub async fn restart(&mut self) {
        self.kill();
        self.start();
        self.wait_ready().await;
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
