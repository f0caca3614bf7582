//! A throw-away PostgreSQL cluster: initdb into a temp dir, postmaster on a free port with its
//! socket in that dir (started again on another port when that one was taken before the
//! postmaster could bind it), stopped and deleted on drop. Runs as the `postgres` user when the
//! tests run as root (PostgreSQL refuses root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;

use crate::processes::{port_taken, BIND_ATTEMPTS};
use crate::{free_port, install};

const PG_DIRS: &[&str] = &["/usr/lib/postgresql/*/bin"];

/// How to start a [`TempPostgres`]. The default is the tests' fast, non-durable cluster.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// `fsync`, `synchronous_commit` and `full_page_writes` on (PostgreSQL's own defaults):
    /// every commit waits for its WAL to reach the disk, as in production. Off by default,
    /// which is much faster and fine for throw-away test data.
    pub durable: bool,
    /// Further server settings, each `name=value`, passed as `-c name=value`.
    pub settings: Vec<String>,
}

/// A running temporary cluster.
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

impl TempPostgres {
    /// initdb + start with the tests' fast settings (no fsync, no synchronous commit); panics
    /// with the server log when the cluster cannot start.
    pub fn start() -> Self {
        Self::start_with(PgOptions::default())
    }

    /// Like [`TempPostgres::start`], with the given options.
    pub fn start_with(opts: PgOptions) -> Self {
        let initdb = install::find_or_install("initdb", PG_DIRS, &["postgresql"]);
        let bindir = std::fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .expect("initdb lives in a directory");
        let dir = tempfile::Builder::new()
            .prefix("kopilka-pg-")
            .tempdir()
            .expect("temp dir");
        let owner = postgres_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let pg = TempPostgres {
            dir,
            bindir,
            port: free_port(),
            owner,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        let durability = if opts.durable {
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        } else {
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let log = pg.dir.path().join("server.log");
        let mut pg = pg;
        let mut attempt = 1;
        loop {
            let mut options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 {durability} -c max_connections=300",
                pg.port,
                pg.dir.path().display()
            );
            for setting in &opts.settings {
                options.push_str(" -c ");
                options.push_str(setting);
            }
            let started = pg.try_run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            match started {
                Ok(()) => return pg,
                // Another test bound the port between free_port and the postmaster.
                Err(why) if attempt < BIND_ATTEMPTS && port_taken(&why) => {
                    eprintln!("PostgreSQL could not bind port {}; trying another", pg.port);
                    pg.port = free_port();
                    attempt += 1;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Restarts the server (`pg_ctl restart -m fast`: open connections are cut, in-flight
    /// transactions roll back) on the same port and data directory, and waits until it accepts
    /// connections again. For tests of every client reconnecting by itself.
    pub fn restart(&self) {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
        );
    }

    /// The directory of the cluster's binaries (`initdb`, `pg_ctl`, and usually `pgbench`).
    pub fn bin_dir(&self) -> &Path {
        &self.bindir
    }

    /// The postmaster's process id (the server's other processes are its children).
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The TCP port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database.
    pub async fn create_database(&self, name: &str) -> String {
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the temporary cluster");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create database");
        self.url(name)
    }

    /// Stops the cluster at once (for tests of a dependency going down).
    pub fn stop(&self) {
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        if let Err(why) = self.try_run(program, args) {
            panic!("{why}");
        }
    }

    /// Runs `program`; on failure, what it and the server log said.
    fn try_run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        Err(format!(
            "{program} failed: {}\n{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(uid, gid)` of the `postgres` user when running as root; `None` otherwise.
fn postgres_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam reads a NUL-terminated name; the result is copied out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root but there is no `postgres` user to run PostgreSQL as"
    );
    // SAFETY: pw is non-null and points at a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, gid))
}
