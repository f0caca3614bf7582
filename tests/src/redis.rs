//! A throw-away `redis-server` on a free port (started again on another when that one was taken
//! before the server could bind it), killed on drop (or earlier with [`TempRedis::stop`]).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::processes::{port_taken, BIND_ATTEMPTS};
use crate::{free_port, install};

/// A running temporary Redis.
pub struct TempRedis {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    logs: tempfile::TempDir,
}

impl TempRedis {
    /// Starts redis-server (installing it when missing) and waits until it answers.
    pub fn start() -> Self {
        let bin = install::find_or_install("redis-server", &[], &["redis-server"]);
        let mut redis = TempRedis {
            child: None,
            port: free_port(),
            bin,
            logs: tempfile::Builder::new()
                .prefix("kopilka-redis-")
                .tempdir()
                .expect("temp dir for the Redis log"),
        };
        let mut attempt = 1;
        loop {
            redis.spawn();
            match redis.wait_until_ready() {
                Ok(()) => return redis,
                Err(why) if attempt < BIND_ATTEMPTS && port_taken(&why) => {
                    eprintln!(
                        "redis-server could not bind port {}; trying another",
                        redis.port
                    );
                    redis.port = free_port();
                    attempt += 1;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted) after
    /// [`TempRedis::stop`], and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(why) = self.wait_until_ready() {
            panic!("{why}");
        }
    }

    fn spawn(&mut self) {
        let log = File::create(self.log_path()).expect("Redis log file");
        let err = log.try_clone().expect("Redis log file");
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.logs.path().join("redis.log")
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server now (for tests of Redis going down mid-test).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until our server (its `process_id`, not whoever else may listen on the port)
    /// answers; on failure, why, with the server's log.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = self.child.as_ref().map(Child::id).expect("spawned");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(format!(
                    "redis-server exited while starting on port {} ({status}):\n{log}",
                    self.port
                ));
            }
            let info = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
            if let Ok(info) = info {
                if info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                return Err(format!(
                    "redis-server did not start on port {}:\n{log}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
