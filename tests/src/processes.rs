//! Service binaries as separate OS processes, for tests of a dependency dying (SIGKILL) and
//! coming back: [`ServiceProcess::launch`] starts one on a free port with `KOPILKA_*` settings
//! and waits until it serves, starting it again on another port when the one it was given was
//! taken meanwhile (bounded: [`BIND_ATTEMPTS`]); [`ServiceProcess::spawn`] starts one on a
//! fixed port, [`ServiceProcess::wait_ready`] polls its gRPC health, [`ServiceProcess::kill`]
//! sends SIGKILL, [`ServiceProcess::restart`] starts it again on the same port and database.
//! Dropping a process kills it.
//!
//! The binaries are the workspace's own (`cards-svc`, `rules-svc`, `ledger-svc`, `gateway`,
//! …), looked up next to the test executable in the cargo target dir and built once per test
//! process with `cargo build` (cargo decides what is stale; a build that fails fails the test).

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

/// How many ports [`ServiceProcess::launch`] tries before it gives up: a port is picked free,
/// but another test may bind it before the service does.
pub const BIND_ATTEMPTS: u32 = 5;

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

/// The path of workspace binary `bin` of package `package`, built first by `cargo build` (once
/// per test process, so it is never older than the sources; concurrent callers wait).
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
        // cargo decides what is stale (a file's time says nothing about what it was built
        // from); a fresh build is a no-op of a second.
        .filter(|(_, bin)| !built.contains(*bin))
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
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo build: {e}"));
        let what: Vec<String> = stale
            .iter()
            .map(|(package, bin)| format!("-p {package} --bin {bin}"))
            .collect();
        // Never an older binary instead: a test of code that does not build tells nothing.
        if let Err(failure) = build_outcome(&output, &what.join(" ")) {
            panic!("{failure}");
        }
    }
    built.extend(wanted.iter().map(|(_, bin)| (*bin).to_owned()));
    wanted.iter().map(|(_, bin)| dir.join(bin)).collect()
}

/// `Ok` when `cargo build <what>` succeeded; otherwise why it failed, with everything cargo
/// wrote, so the test fails with the compiler's errors instead of running an older binary.
pub fn build_outcome(output: &std::process::Output, what: &str) -> Result<(), String> {
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "cargo build {what} failed ({}); no older binary is used instead:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
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

    /// Starts `bin` on a free port with `envs` and waits until it serves. When the port was
    /// taken before the service could bind it (another test got it first), starts it again on
    /// another, at most [`BIND_ATTEMPTS`] times; any other failure to start panics with the logs.
    pub async fn launch(bin: impl Into<PathBuf>, envs: &[(&str, String)]) -> Self {
        let bin = bin.into();
        let mut attempt = 1;
        loop {
            let mut process = Self::spawn(&bin, crate::free_port(), envs);
            match process.try_ready().await {
                Ok(()) => return process,
                Err(NotReady::PortTaken(why)) if attempt < BIND_ATTEMPTS => {
                    eprintln!(
                        "{} could not bind port {} (attempt {attempt}), trying another: {why}",
                        process.name, process.port
                    );
                    attempt += 1;
                }
                Err(NotReady::PortTaken(why) | NotReady::Failed(why)) => panic!("{why}"),
            }
        }
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
        if let Err(NotReady::PortTaken(why) | NotReady::Failed(why)) = self.try_ready().await {
            panic!("{why}");
        }
    }

    async fn try_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let logs = self.logs();
                let why = format!(
                    "{} exited while starting on port {} ({status}):\n{logs}",
                    self.name, self.port
                );
                self.child = None;
                return Err(if port_taken(&logs) {
                    NotReady::PortTaken(why)
                } else {
                    NotReady::Failed(why)
                });
            }
            if self.child.is_none() {
                return Err(NotReady::Failed(format!("{} is not running", self.name)));
            }
            let endpoint = Endpoint::from_shared(self.url())
                .expect("valid URI")
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(2));
            if let Ok(channel) = endpoint.connect().await {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                // SERVING from a process that then turns out to have exited was somebody
                // else's server on the port: the next round reports the exit.
                if reply.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
                    && self.is_running()
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(NotReady::Failed(format!(
                    "{} did not become SERVING on port {}:\n{}",
                    self.name,
                    self.port,
                    self.logs()
                )));
            }
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
    /// serves. Kills it first if it still runs. (Other services know it by this port, so it
    /// cannot move: if another test bound the port in between, this panics with the logs.)
    pub async fn restart(&mut self) {
        self.kill();
        self.start();
        self.wait_ready().await;
    }
}

/// Why a service did not start.
enum NotReady {
    /// Its port was bound by someone else first: worth another port.
    PortTaken(String),
    Failed(String),
}

/// Whether a server's output says it could not bind its port because it is in use.
pub fn port_taken(output: &str) -> bool {
    output.contains("Address already in use") || output.contains("os error 98")
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output};

    use super::build_outcome;

    fn output(raw_status: i32, stderr: &str) -> Output {
        Output {
            status: ExitStatus::from_raw(raw_status),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_successful_build_is_ok() {
        assert_eq!(
            build_outcome(&output(0, ""), "-p gateway --bin gateway"),
            Ok(())
        );
    }

    #[test]
    fn a_failed_build_is_an_error_with_cargo_output() {
        // Exit code 101 (wait status 101 << 8), as cargo exits on a compile error.
        let failure = build_outcome(
            &output(
                101 << 8,
                "error[E0425]: cannot find value `x` in this scope",
            ),
            "-p gateway --bin gateway",
        )
        .expect_err("a failed build");
        assert!(failure.contains("-p gateway --bin gateway"), "{failure}");
        assert!(failure.contains("error[E0425]"), "{failure}");
        assert!(failure.contains("no older binary"), "{failure}");
    }

    #[test]
    fn a_port_in_use_is_recognised() {
        assert!(super::port_taken(
            "Error: cannot bind 127.0.0.1:4000\n\nCaused by:\n    Address already in use (os error 98)"
        ));
        assert!(!super::port_taken(
            "Error: database \"cards\" does not exist"
        ));
    }

    #[test]
    fn a_build_killed_by_a_signal_is_an_error() {
        // SIGKILL (9) as a raw wait status: no exit code at all.
        assert!(build_outcome(&output(9, ""), "-p cards-svc --bin cards-svc").is_err());
    }
}
