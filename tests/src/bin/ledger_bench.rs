//! `ledger-bench`: how many receipts per second ledger-svc commits on PostgreSQL, next to what
//! `pgbench` (TPC-B-like) gets from the same server, for the same time and number of clients.
//!
//! One temporary PostgreSQL cluster serves both phases:
//!
//! 1. ledger-svc runs in-process on a random port (pool sized to the concurrency); every
//!    customer is seeded with points (`Accrue`); then `--concurrency` callers, each on its own
//!    connection, call `RecordReceipt` for `--seconds`: a random customer, 2–5 lines, 5 % of
//!    each line's amount accrued as whole points, and on some receipts a redemption of 1–10
//!    points. Unique `request_id` and `receipt_id` each.
//! 2. `pgbench -i -s <scale>` in a separate database, then
//!    `pgbench -c <concurrency> -j 2 -T <seconds> -M prepared` (the built-in TPC-B-like script).
//!
//! It prints both throughputs, the ratio, latency percentiles, WAL and CPU per transaction.
//!
//! ```sh
//! cargo run --release -p kopilka-tests --bin ledger-bench -- --concurrency 16 --seconds 20
//! ```

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::ledger::{AccrueRequest, ReceiptInput, ReceiptLine, RecordReceiptRequest};
use kopilka_proto::types::{BasketLine, LotKind, PointsGrant};
use kopilka_tests::{PgOptions, TempPostgres};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const MERCHANT: &str = "bench";
/// Points each customer starts with (redemptions take 1–10 a receipt; accruals keep adding).
const SEED_POINTS: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Durability {
    /// fsync, synchronous_commit and full_page_writes on (PostgreSQL's defaults, production).
    Durable,
    /// All three off, as the test suite runs PostgreSQL: measures CPU, not the disk.
    Fast,
}

/// RecordReceipt throughput of ledger-svc against pgbench TPC-B-like on the same PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "ledger-bench", version)]
struct Args {
    /// Concurrent callers (RecordReceipt) and pgbench clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=250))]
    concurrency: u32,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Customers the receipts are spread over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    customers: u32,
    /// Percentage of receipts that also redeem 1–10 points.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
    redeem_percent: u32,
    /// PostgreSQL durability settings for the whole run (both phases).
    #[arg(long, value_enum, default_value_t = Durability::Durable)]
    durability: Durability,
    /// pgbench scale factor (100 000 accounts each); default: the concurrency, at least 1.
    #[arg(long)]
    scale: Option<u32>,
    /// Skip the pgbench phase.
    #[arg(long)]
    no_pgbench: bool,
    /// Load pg_stat_statements and print the statements one receipt costs (adds overhead:
    /// throughput figures of such a run are not the headline ones).
    #[arg(long)]
    statements: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kopilka_tests::init_tracing();
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping early");
            on_signal.cancel();
        }
    });
    run(args, interrupt).await
}

async fn run(args: Args, interrupt: CancellationToken) -> anyhow::Result<()> {
    let mut settings = Vec::new();
    if args.statements {
        settings.extend([
            "shared_preload_libraries=pg_stat_statements".to_owned(),
            "pg_stat_statements.track=all".to_owned(),
        ]);
    }
    let options = PgOptions {
        durable: args.durability == Durability::Durable,
        settings,
    };
    eprintln!("starting PostgreSQL ({:?})…", args.durability);
    let pg = tokio::task::spawn_blocking(move || TempPostgres::start_with(options))
        .await
        .context("start PostgreSQL")?;
    let admin_url = pg.url("postgres");
    let server_version: String = query_scalar(&admin_url, "SHOW server_version").await?;

    let ledger = ledger_phase(&args, &pg, &interrupt).await?;
    let pgbench = if args.no_pgbench || interrupt.is_cancelled() {
        None
    } else {
        Some(pgbench_phase(&args, &pg, &interrupt).await?)
    };
    print_report(&args, &server_version, &ledger, pgbench.as_ref());
    Ok(())
}

// ---- phase 1: ledger-svc --------------------------------------------------------------------

/// What the RecordReceipt phase measured.
struct LedgerRun {
    pool: u32,
    seeded: u64,
    seed_secs: f64,
    ok: u64,
    errors: u64,
    error_kinds: Vec<(String, u64)>,
    elapsed: f64,
    latency: Histogram<u64>,
    usage: Usage,
    statements: Option<Vec<(i64, f64, String)>>,
}

async fn ledger_phase(
    args: &Args,
    pg: &TempPostgres,
    interrupt: &CancellationToken,
) -> anyhow::Result<LedgerRun> {
    let database_url = pg.create_database("ledger").await;
    // One connection per caller, and one spare for the background job.
    let pool = args.concurrency + 1;
    let mut config = ledger_svc::Config::default();
    config.service.listen_addr = "127.0.0.1:0".parse().expect("an address");
    config.service.database_url = SecretString::from(database_url.clone());
    config.service.max_connections = pool;
    config.service.service_token = Some(kopilka_tests::service_token());
    let token = config.service.outbound_token()?;
    let host = ledger_svc::build(config)
        .await
        .map_err(|e| anyhow::anyhow!("ledger-svc does not start: {e:?}"))?;
    let addr = host.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(host.run_until(shutdown.clone().cancelled_owned()));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("connect to ledger-svc")?;
        clients.push(LedgerServiceClient::new(InterceptedService::new(
            channel,
            token.clone(),
        )));
    }
    // A run id keeps ids unique should the same database ever be reused.
    let run_id = format!("{:x}", rand::random::<u32>());

    eprintln!(
        "seeding {} customers with {SEED_POINTS} points each…",
        args.customers
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut seeders = Vec::new();
    for mut client in clients.iter().cloned() {
        let (next, customers, run_id) = (next.clone(), u64::from(args.customers), run_id.clone());
        seeders.push(tokio::spawn(async move {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= customers {
                    return Ok::<_, tonic::Status>(());
                }
                client
                    .accrue(AccrueRequest {
                        merchant_id: MERCHANT.to_owned(),
                        request_id: format!("{run_id}-seed-{c}"),
                        customer_id: customer_id(c),
                        grant: Some(PointsGrant {
                            amount: SEED_POINTS.to_string(),
                            kind: LotKind::Migration as i32,
                            ..Default::default()
                        }),
                        description: "ledger-bench seed".to_owned(),
                        occurred_at: None,
                    })
                    .await?;
            }
        }));
    }
    for s in seeders {
        s.await?.context("seeding failed")?;
    }
    let seed_secs = started.elapsed().as_secs_f64();

    let stats_url = pg.url("ledger");
    if args.statements {
        execute(
            &stats_url,
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        )
        .await?;
    }
    execute(&stats_url, "CHECKPOINT").await?;
    if args.statements {
        execute(&stats_url, "SELECT pg_stat_statements_reset()").await?;
    }

    eprintln!(
        "RecordReceipt: {} callers for {} s…",
        args.concurrency, args.seconds
    );
    let stop = interrupt.child_token();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let meter = Meter::start(&stats_url, pg.postmaster_pid()).await?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for (worker, client) in clients.into_iter().enumerate() {
        let w = Worker {
            id: worker,
            run_id: run_id.clone(),
            customers: args.customers,
            redeem_percent: args.redeem_percent,
            ok: ok.clone(),
            errors: errors.clone(),
        };
        workers.push(tokio::spawn(w.run(client, stop.clone())));
    }
    let progress = tokio::spawn(progress(
        "receipts",
        ok.clone(),
        errors.clone(),
        args.seconds,
        stop.clone(),
    ));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
        _ = stop.cancelled() => {}
    }
    stop.cancel();
    let mut latency = new_histogram();
    let mut kinds: HashMap<String, u64> = HashMap::new();
    for w in workers {
        let (h, k) = w.await?;
        latency.add(&h).expect("histograms with the same bounds");
        for (kind, n) in k {
            *kinds.entry(kind).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = progress.await;
    let usage = meter.stop().await?;

    let statements = if args.statements {
        Some(top_statements(&stats_url).await?)
    } else {
        None
    };
    shutdown.cancel();
    let _ = server.await;
    let mut error_kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    error_kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    Ok(LedgerRun {
        pool,
        seeded: u64::from(args.customers),
        seed_secs,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        error_kinds,
        elapsed,
        latency,
        usage,
        statements,
    })
}

fn customer_id(n: u64) -> String {
    format!("cust-{n:06}")
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One RecordReceipt caller (a cash register).
struct Worker {
    id: usize,
    run_id: String,
    customers: u32,
    redeem_percent: u32,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Worker {
    async fn run(
        self,
        mut client: LedgerServiceClient<kopilka_tests::Channel>,
        stop: CancellationToken,
    ) -> (Histogram<u64>, HashMap<String, u64>) {
        let mut rng = SmallRng::seed_from_u64(0x006b_6f70_696c_6b61 ^ self.id as u64);
        let mut latency = new_histogram();
        let mut kinds = HashMap::new();
        let mut seq = 0u64;
        while !stop.is_cancelled() {
            seq += 1;
            let request = self.receipt(&mut rng, seq);
            let t = Instant::now();
            let result = tokio::select! {
                r = client.record_receipt(request) => r,
                _ = stop.cancelled() => break,
            };
            let micros = t.elapsed().as_micros().max(1) as u64;
            match result {
                Ok(_) => {
                    latency.saturating_record(micros);
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    let kind = format!("{:?}: {}", status.code(), status.message());
                    *kinds.entry(kind).or_insert(0) += 1;
                }
            }
        }
        (latency, kinds)
    }

    /// A receipt of 2–5 lines for a random customer; 5 % of each line accrued (whole points);
    /// on `redeem_percent` % of receipts 1–10 points redeemed on the first line.
    fn receipt(&self, rng: &mut SmallRng, seq: u64) -> RecordReceiptRequest {
        let customer = customer_id(u64::from(rng.random_range(0..self.customers)));
        let redeem: u32 = if rng.random_range(0..100) < self.redeem_percent {
            rng.random_range(1..=10)
        } else {
            0
        };
        let line_count = rng.random_range(2..=5);
        let lines = (0..line_count)
            .map(|i| {
                let price_cents: u64 = rng.random_range(5_000..=200_000);
                let quantity: u64 = rng.random_range(1..=3);
                let amount_cents = price_cents * quantity;
                ReceiptLine {
                    line: Some(BasketLine {
                        line_id: (i + 1).to_string(),
                        product_id: format!("sku-{}", rng.random_range(1..=500)),
                        name: "bench item".to_owned(),
                        unit_price: format!("{}.{:02}", price_cents / 100, price_cents % 100),
                        quantity: quantity.to_string(),
                        ..Default::default()
                    }),
                    // 5 % of the amount, rounded down to whole points (points_scale 0).
                    accrual_points: (amount_cents / 2000).to_string(),
                    redeem_points: if i == 0 && redeem > 0 {
                        redeem.to_string()
                    } else {
                        String::new()
                    },
                    // A point pays 1 money unit in the bench's program.
                    redeem_money: if i == 0 && redeem > 0 {
                        redeem.to_string()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }
            })
            .collect();
        RecordReceiptRequest {
            merchant_id: MERCHANT.to_owned(),
            request_id: format!("{}-req-{}-{seq}", self.run_id, self.id),
            receipt: Some(ReceiptInput {
                receipt_id: format!("{}-rcpt-{}-{seq}", self.run_id, self.id),
                customer_id: customer,
                store_id: "main".to_owned(),
                terminal_id: format!("till-{}", self.id),
                program_version: 1,
                lines,
                redeem_points: redeem.to_string(),
                ..Default::default()
            }),
        }
    }
}

/// Prints progress until `stop`: rewritten in place on a terminal, every 5 s otherwise.
async fn progress(
    what: &str,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    seconds: u64,
    stop: CancellationToken,
) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let n = ok.load(Ordering::Relaxed);
        let t = started.elapsed().as_secs();
        let rate = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (n, Instant::now());
        let line = format!(
            "  {t:>3}/{seconds} s  {n} {what}  {rate:.0}/s now  {} errors",
            errors.load(Ordering::Relaxed)
        );
        if tty {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if t.is_multiple_of(5) {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}

/// The statements the ledger database ran in the measured phase: calls, total ms, query.
async fn top_statements(url: &str) -> anyhow::Result<Vec<(i64, f64, String)>> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let rows: Vec<(i64, f64, String)> = sqlx::query_as(
        "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s
         JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = 'ledger' AND s.query NOT LIKE '%pg_stat_statements%'
         ORDER BY s.calls DESC, s.total_exec_time DESC",
    )
    .fetch_all(&mut conn)
    .await?;
    Ok(rows)
}

// ---- phase 2: pgbench -----------------------------------------------------------------------

/// What pgbench measured.
struct PgbenchRun {
    scale: u32,
    tps: f64,
    transactions: u64,
    failed: u64,
    latency_ms: Option<f64>,
    usage: Usage,
    command: String,
}

async fn pgbench_phase(
    args: &Args,
    pg: &TempPostgres,
    interrupt: &CancellationToken,
) -> anyhow::Result<PgbenchRun> {
    let pgbench = pgbench_binary(pg)?;
    let scale = args.scale.unwrap_or(args.concurrency).max(1);
    let url = pg.create_database("pgbench").await;
    let port = pg.port().to_string();
    let conn_args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];

    eprintln!("pgbench -i -s {scale}…");
    let init = tokio::process::Command::new(&pgbench)
        .args(["-i", "-q", "-s", &scale.to_string()])
        .args(conn_args)
        .arg("pgbench")
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", pgbench.display()))?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed:\n{}{}",
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
    }
    execute(&url, "CHECKPOINT").await?;

    let clients = args.concurrency.to_string();
    let threads = args.concurrency.min(2).to_string();
    let seconds = args.seconds.to_string();
    let run_args = [
        "-c", &clients, "-j", &threads, "-T", &seconds, "-M", "prepared", "-P", "5",
    ];
    let command = format!("pgbench {} pgbench", run_args[..8].join(" "));
    eprintln!("{command}…");
    let meter = Meter::start(&url, pg.postmaster_pid()).await?;
    let child = tokio::process::Command::new(&pgbench)
        .args(run_args)
        .args(conn_args)
        .arg("pgbench")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("run {}", pgbench.display()))?;
    let out = tokio::select! {
        out = child.wait_with_output() => out?,
        _ = interrupt.cancelled() => bail!("interrupted during pgbench"),
    };
    let usage = meter.stop().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed ({}):\n{stdout}", out.status);
    }
    let tps = field(&stdout, "tps = ")
        .with_context(|| format!("no `tps = ` line in pgbench's output:\n{stdout}"))?;
    Ok(PgbenchRun {
        scale,
        tps,
        transactions: field(&stdout, "number of transactions actually processed: ")
            .map_or(0, |n| n as u64),
        failed: field(&stdout, "number of failed transactions: ").map_or(0, |n| n as u64),
        latency_ms: field(&stdout, "latency average = "),
        usage,
        command,
    })
}

/// The number after `prefix` on the first line that starts with it.
fn field(output: &str, prefix: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// pgbench next to the cluster's initdb, else on PATH.
fn pgbench_binary(pg: &TempPostgres) -> anyhow::Result<PathBuf> {
    let beside = pg.bin_dir().join("pgbench");
    if beside.is_file() {
        return Ok(beside);
    }
    kopilka_tests::install::find("pgbench", &[]).context(
        "pgbench not found next to initdb nor on PATH (Debian: it is in the postgresql package)",
    )
}

// ---- measuring ------------------------------------------------------------------------------

/// What a phase cost: WAL written, CPU of PostgreSQL's processes, of this process (ledger-svc
/// and its callers) and of its waited-for children (pgbench), and the wall time.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    wal_bytes: f64,
    pg_cpu: f64,
    own_cpu: f64,
    children_cpu: f64,
    /// CPU of every other process on the machine: noise in the measurement.
    other_cpu: f64,
    wall: f64,
}

/// Measures one phase from `start` to `stop`. The CPU of PostgreSQL's and of other processes
/// is sampled from `/proc/<pid>/schedstat` every 100 ms (a process that exits loses at most its
/// last 100 ms); the machine-wide `/proc/stat` is not used because its tick-based counts are
/// unreliable in virtual machines.
struct Meter {
    url: String,
    wal_bytes: f64,
    own_cpu: f64,
    children_cpu: f64,
    started: Instant,
    stop: CancellationToken,
    sampler: tokio::task::JoinHandle<(f64, f64)>,
}

impl Meter {
    async fn start(url: &str, postmaster: Option<u32>) -> anyhow::Result<Meter> {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut cpu = ProcessCpu::new(postmaster);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => cpu.sample(),
                    _ = token.cancelled() => break,
                }
            }
            cpu.sample();
            (cpu.seconds(Owner::Postgres), cpu.seconds(Owner::Other))
        });
        Ok(Meter {
            url: url.to_owned(),
            wal_bytes: wal_bytes(url).await?,
            own_cpu: rusage(libc::RUSAGE_SELF),
            children_cpu: rusage(libc::RUSAGE_CHILDREN),
            started: Instant::now(),
            stop,
            sampler,
        })
    }

    async fn stop(self) -> anyhow::Result<Usage> {
        let wall = self.started.elapsed().as_secs_f64();
        let own_cpu = rusage(libc::RUSAGE_SELF) - self.own_cpu;
        let children_cpu = rusage(libc::RUSAGE_CHILDREN) - self.children_cpu;
        self.stop.cancel();
        let (pg_cpu, other_cpu) = self.sampler.await?;
        Ok(Usage {
            wal_bytes: wal_bytes(&self.url).await? - self.wal_bytes,
            pg_cpu,
            own_cpu,
            children_cpu,
            other_cpu,
            wall,
        })
    }
}

async fn wal_bytes(url: &str) -> anyhow::Result<f64> {
    let wal: String = query_scalar(url, "SELECT wal_bytes::text FROM pg_stat_wal").await?;
    Ok(wal.parse().unwrap_or(0.0))
}

/// Whose a process is, for CPU accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The PostgreSQL cluster: the postmaster and its children.
    Postgres,
    /// This process and its children (measured with getrusage instead).
    Mine,
    /// Anything else on the machine: noise for the measurement.
    Other,
}

/// CPU time of the machine's processes by [`Owner`], from `/proc/<pid>/schedstat`
/// (nanoseconds run, exact where `/proc/stat`'s ticks are not).
struct ProcessCpu {
    postmaster: Option<u32>,
    me: u32,
    /// pid -> (owner, runtime at first sight, runtime at last sight).
    seen: HashMap<u32, (Owner, u64, u64)>,
    first: bool,
}

impl ProcessCpu {
    fn new(postmaster: Option<u32>) -> Self {
        ProcessCpu {
            postmaster,
            me: std::process::id(),
            seen: HashMap::new(),
            first: true,
        }
    }

    fn owner(&self, pid: u32) -> Owner {
        let parent = parent_of(pid);
        if self.postmaster.is_some() && (Some(pid) == self.postmaster || parent == self.postmaster)
        {
            Owner::Postgres
        } else if pid == self.me || parent == Some(self.me) {
            Owner::Mine
        } else {
            Owner::Other
        }
    }

    fn sample(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(runtime) = runtime_ns(pid) else {
                continue;
            };
            match self.seen.get_mut(&pid) {
                Some((_, _, last)) => *last = runtime,
                None => {
                    // A process born after the first sample ran all its time inside the phase.
                    let base = if self.first { runtime } else { 0 };
                    let owner = self.owner(pid);
                    self.seen.insert(pid, (owner, base, runtime));
                }
            }
        }
        self.first = false;
    }

    /// CPU seconds of `owner`'s processes between the first and the last sample.
    fn seconds(&self, owner: Owner) -> f64 {
        let ns: u64 = self
            .seen
            .values()
            .filter(|(o, ..)| *o == owner)
            .map(|(_, first, last)| last.saturating_sub(*first))
            .sum();
        ns as f64 / 1e9
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …; comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn runtime_ns(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU seconds of this process or of its waited-for children.
fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(())
}

async fn query_scalar(url: &str, sql: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let value: String = sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(value)
}

// ---- report ---------------------------------------------------------------------------------

fn print_report(
    args: &Args,
    server_version: &str,
    ledger: &LedgerRun,
    pgbench: Option<&PgbenchRun>,
) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let durability = match args.durability {
        Durability::Durable => "durable: fsync, synchronous_commit, full_page_writes on",
        Durability::Fast => "fast: fsync, synchronous_commit, full_page_writes off",
    };
    let receipts_per_s = ledger.ok as f64 / ledger.elapsed;
    let ms = |q: f64| ledger.latency.value_at_quantile(q) as f64 / 1000.0;
    let per_tx = |total: f64, n: f64| if n > 0.0 { total / n } else { 0.0 };

    println!();
    println!(
        "ledger-bench: RecordReceipt vs pgbench TPC-B-like on one PostgreSQL {server_version}"
    );
    println!(
        "  {cpus} CPUs; PostgreSQL, ledger-svc (in this process), the callers and pgbench all on this machine"
    );
    println!("  PostgreSQL {durability}");
    println!(
        "  concurrency {}, {} s per phase; {} customers seeded with {SEED_POINTS} points ({:.0} Accrue/s);",
        args.concurrency,
        args.seconds,
        ledger.seeded,
        ledger.seeded as f64 / ledger.seed_secs
    );
    println!(
        "  receipts of 2-5 lines, 5 % accrued, {} % redeem 1-10 points; ledger pool {}",
        args.redeem_percent, ledger.pool
    );
    if let Some(p) = pgbench {
        println!("  {} (scale {})", p.command, p.scale);
    }
    if args.statements {
        println!("  pg_stat_statements loaded: throughput includes its overhead");
    }
    println!();
    let (pg_tps, pg_n, pg_failed, pg_lat) = match pgbench {
        Some(p) => (
            format!("{:.1}", p.tps),
            p.transactions.to_string(),
            p.failed.to_string(),
            p.latency_ms.map_or("-".to_owned(), |l| format!("{l:.2}")),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    let row = |name: &str, a: String, b: String| println!("  {name:<28} {a:>14} {b:>14}");
    row("", "RecordReceipt".into(), "pgbench".into());
    row(
        "committed per second",
        format!("{receipts_per_s:.1}"),
        pg_tps,
    );
    row("committed", ledger.ok.to_string(), pg_n);
    row("errors / failed", ledger.errors.to_string(), pg_failed);
    row(
        "latency mean ms",
        format!("{:.2}", ledger.latency.mean() / 1000.0),
        pg_lat,
    );
    row("latency p50 ms", format!("{:.2}", ms(0.50)), "-".into());
    row("latency p95 ms", format!("{:.2}", ms(0.95)), "-".into());
    row("latency p99 ms", format!("{:.2}", ms(0.99)), "-".into());
    row("latency max ms", format!("{:.2}", ms(1.0)), "-".into());
    let n = ledger.ok as f64;
    row(
        "WAL bytes per transaction",
        format!("{:.0}", per_tx(ledger.usage.wal_bytes, n)),
        pgbench.map_or("-".into(), |p| {
            format!("{:.0}", per_tx(p.usage.wal_bytes, p.transactions as f64))
        }),
    );
    let (pn, pu) = pgbench.map_or((0.0, Usage::default()), |p| {
        (p.transactions as f64, p.usage)
    });
    let dash = |v: String| if pgbench.is_some() { v } else { "-".into() };
    row(
        "CPU ms/tx, PostgreSQL",
        format!("{:.3}", 1000.0 * per_tx(ledger.usage.pg_cpu, n)),
        dash(format!("{:.3}", 1000.0 * per_tx(pu.pg_cpu, pn))),
    );
    row(
        "CPU ms/tx, client side",
        format!("{:.3}", 1000.0 * per_tx(ledger.usage.own_cpu, n)),
        dash(format!("{:.3}", 1000.0 * per_tx(pu.children_cpu, pn))),
    );
    row(
        &format!("CPUs busy, measured (of {cpus})"),
        format!(
            "{:.2}",
            (ledger.usage.pg_cpu + ledger.usage.own_cpu) / ledger.usage.wall
        ),
        dash(format!(
            "{:.2}",
            (pu.pg_cpu + pu.children_cpu) / pu.wall.max(1e-9)
        )),
    );
    row(
        "CPUs busy, other processes",
        format!("{:.2}", ledger.usage.other_cpu / ledger.usage.wall),
        dash(format!("{:.2}", pu.other_cpu / pu.wall.max(1e-9))),
    );
    println!(
        "  (client side = ledger-svc + its callers in this process; for pgbench, pgbench itself)"
    );
    let noisy = ledger.usage.other_cpu / ledger.usage.wall > 0.1
        || pgbench.is_some() && pu.other_cpu / pu.wall.max(1e-9) > 0.1;
    if noisy {
        println!(
            "  WARNING: other processes used more than 0.1 CPU during a phase: figures disturbed"
        );
    }
    for (kind, count) in ledger.error_kinds.iter().take(5) {
        println!("  error x{count}: {kind}");
    }
    if let Some(p) = pgbench {
        let ratio = receipts_per_s / p.tps;
        println!();
        println!(
            "  ratio receipts/s / pgbench tps = {ratio:.2}  (aim >= 0.50: {})",
            if ratio >= 0.5 { "met" } else { "NOT met" }
        );
    }
    if let Some(statements) = &ledger.statements {
        let calls: i64 = statements.iter().map(|s| s.0).sum();
        let time: f64 = statements.iter().map(|s| s.1).sum();
        println!();
        println!(
            "  statements per receipt: {:.1} ({:.2} ms execution in PostgreSQL per receipt)",
            per_tx(calls as f64, n),
            per_tx(time, n)
        );
        println!("  {:>8} {:>9}  statement", "per rcpt", "ms/rcpt");
        for (c, t, q) in statements.iter().take(30) {
            let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
            let q: String = q.chars().take(110).collect();
            println!(
                "  {:>8.2} {:>9.3}  {q}",
                per_tx(*c as f64, n),
                per_tx(*t, n)
            );
        }
    }
}
