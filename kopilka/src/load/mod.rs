//! `kopilka load`: a load generator for a running suite. It registers `--cards` customers, then
//! runs checkouts (Calculate, then Confirm of the same receipt, sometimes redeeming points)
//! either open-loop at `--rate` checkouts per second — each scheduled at its intended start, so
//! latencies include any queueing (no coordinated omission) — or closed-loop with
//! `--concurrency` workers. Latencies go into HdrHistograms; a progress line per second goes to
//! stderr; the end prints count, throughput, p50/p95/p99/max and errors per call.

pub mod catalogue;
pub mod stats;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kopilka_proto::gateway as gw;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::types::{BasketLine, IdentifierInput, IdentifierKind};
use rand::Rng;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cli::{Client, DEFAULT_GATEWAY};
use stats::{error_key, Call, CallStats, CallSummary, Stats};

/// `kopilka load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The gateway's gRPC URL.
    #[arg(long, env = "KOPILKA_GATEWAY_URL", default_value = DEFAULT_GATEWAY)]
    pub gateway: String,
    /// A terminal key (repeatable, or comma-separated); checkouts rotate over them.
    #[arg(
        long = "key",
        env = "KOPILKA_TERMINAL_KEY",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub keys: Vec<String>,
    /// A file of terminal keys, one per line (`KEY=value` lines and `#` comments allowed).
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// An admin key: registers the customers (else the terminal keys do).
    #[arg(long, env = "KOPILKA_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Open loop: checkouts started per second.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: workers each running one checkout after another (default 32 without --rate).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to measure, e.g. 60s, 2m, 500ms.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring (not counted).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Customers to register and buy with.
    #[arg(long, default_value_t = 10_000)]
    pub cards: u32,
    /// First customer number (phones +7 900 ddd-dd-dd from it).
    #[arg(long, default_value_t = 0)]
    pub card_offset: u32,
    /// Registrations in flight during the setup.
    #[arg(long, default_value_t = 64)]
    pub setup_concurrency: usize,
    /// Skip registering the customers (they exist from an earlier run).
    #[arg(long)]
    pub skip_setup: bool,
    /// Share of checkouts that redeem points when the customer has some (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    pub redeem_share: f64,
    /// Share of anonymous checkouts (no customer) (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub anonymous_share: f64,
    /// HTTP/2 connections to the gateway.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Most checkouts in flight in open-loop mode (beyond it starts wait, still timed from
    /// their intended start).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Print the summary as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// `60s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value = Decimal::from_str(number).map_err(|_| format!("{text:?} is not a duration"))?;
    let millis = match unit.trim() {
        "" | "s" | "sec" => value * Decimal::from(1000),
        "ms" => value,
        "m" | "min" => value * Decimal::from(60_000),
        "h" => value * Decimal::from(3_600_000),
        _ => return Err(format!("{text:?}: unknown unit (ms, s, m, h)")),
    };
    let millis = u64::try_from(millis.trunc()).map_err(|_| format!("{text:?} is out of range"))?;
    Ok(Duration::from_millis(millis))
}

/// The phone of customer `n`: `+7 900 ddd-dd-dd`.
pub fn phone(n: u32) -> String {
    let d = format!("{:07}", n % 10_000_000);
    format!("+7 900 {}-{}-{}", &d[0..3], &d[3..5], &d[5..7])
}

/// The summary `--json` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub cards: u32,
    pub terminals: usize,
    pub registered_now: u64,
    pub calls: Vec<CallSummary>,
}

struct Shared {
    clients: Vec<Client>,
    next_client: AtomicUsize,
    cards: u32,
    card_offset: u32,
    redeem_share: f64,
    anonymous_share: f64,
    stats: Mutex<Stats>,
    measure_from: Instant,
    end: Instant,
    /// Calls finished and failed since the last progress line (including warmup).
    window_calls: AtomicU64,
    window_errors: AtomicU64,
    total_errors: AtomicU64,
}

impl Shared {
    fn client(&self) -> &Client {
        let i = self.next_client.fetch_add(1, Ordering::Relaxed);
        &self.clients[i % self.clients.len()]
    }

    fn record(&self, call: Call, intended: Instant, outcome: Result<Duration, String>) {
        // The progress line counts gRPC calls: a checkout is two of them.
        let single = call != Call::Checkout;
        if single {
            self.window_calls.fetch_add(1, Ordering::Relaxed);
            if outcome.is_err() {
                self.window_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if intended < self.measure_from || intended >= self.end {
            return;
        }
        if single && outcome.is_err() {
            self.total_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut stats = self.stats.lock().expect("stats lock");
        match outcome {
            Ok(latency) => stats.get(call).ok(latency),
            Err(key) => stats.get(call).error(key),
        }
    }
}

fn read_keys(args: &LoadArgs) -> anyhow::Result<Vec<String>> {
    let mut keys: Vec<String> = args
        .keys
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if let Some(path) = &args.keys_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.split_once('=').map(|(_, v)| v).unwrap_or(line);
            keys.push(key.trim().trim_matches('"').to_owned());
        }
    }
    keys.dedup();
    if keys.is_empty() {
        anyhow::bail!(
            "no terminal key: pass --key (repeatable), --keys-file or KOPILKA_TERMINAL_KEY"
        );
    }
    Ok(keys)
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let keys = read_keys(&args)?;
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            anyhow::bail!("--rate must be positive");
        }
    }
    if !(0.0..=1.0).contains(&args.redeem_share) || !(0.0..=1.0).contains(&args.anonymous_share) {
        anyhow::bail!("--redeem-share and --anonymous-share are between 0 and 1");
    }
    if args.cards == 0 {
        anyhow::bail!("--cards must be at least 1");
    }
    let channels = (0..args.connections.max(1))
        .map(|_| crate::cli::channel(&args.gateway))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = Duration::from_secs(5);
    let n = channels.len().max(keys.len());
    let clients = (0..n)
        .map(|i| {
            Client::with_channel(
                channels[i % channels.len()].clone(),
                &keys[i % keys.len()],
                timeout,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let registered_now = if args.skip_setup {
        0
    } else {
        let setup_clients = match &args.admin_key {
            Some(admin) => vec![Client::with_channel(channels[0].clone(), admin, timeout)?],
            None => clients.clone(),
        };
        register(&args, &setup_clients).await?
    };

    let mode = match (args.rate, args.concurrency) {
        (Some(rate), _) => format!("open loop at {rate} checkouts/s"),
        (None, c) => format!("closed loop with {} workers", c.unwrap_or(32)),
    };
    eprintln!(
        "load: {mode} for {:?} after {:?} warmup, {} customers, {} terminal key(s), {} connection(s)",
        args.duration,
        args.warmup,
        args.cards,
        keys.len(),
        channels.len()
    );

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let shared = Arc::new(Shared {
        clients,
        next_client: AtomicUsize::new(0),
        cards: args.cards,
        card_offset: args.card_offset,
        redeem_share: args.redeem_share,
        anonymous_share: args.anonymous_share,
        stats: Mutex::new(Stats::default()),
        measure_from,
        end,
        window_calls: AtomicU64::new(0),
        window_errors: AtomicU64::new(0),
        total_errors: AtomicU64::new(0),
    });

    let done = Arc::new(AtomicBool::new(false));
    let progress =
        (!args.quiet).then(|| tokio::spawn(progress(shared.clone(), start, done.clone())));

    match args.rate {
        Some(rate) => open_loop(&shared, rate, start, end, args.max_in_flight).await,
        None => closed_loop(&shared, args.concurrency.unwrap_or(32), end).await,
    }
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }

    let seconds = args.duration.as_secs_f64();
    let calls = {
        let stats = shared.stats.lock().expect("stats lock");
        vec![
            stats.calculate.summary(Call::Calculate, seconds),
            stats.confirm.summary(Call::Confirm, seconds),
            stats.checkout.summary(Call::Checkout, seconds),
        ]
    };
    let table = stats::render(&calls);
    let summary = Summary {
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        concurrency: args.rate.is_none().then(|| args.concurrency.unwrap_or(32)),
        duration_s: seconds,
        warmup_s: args.warmup.as_secs_f64(),
        cards: args.cards,
        terminals: keys.len(),
        registered_now,
        calls,
    };
    if args.json {
        eprintln!();
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!();
        println!("{mode}, measured {:?}:", args.duration);
        print!("{table}");
    }
    Ok(())
}

/// Registers customers `card_offset .. card_offset + cards` (existing ones come back with
/// registered_now = false); returns how many were new.
async fn register(args: &LoadArgs, clients: &[Client]) -> anyhow::Result<u64> {
    let started = Instant::now();
    eprintln!("setup: registering {} customers …", args.cards);
    let next = Arc::new(AtomicU64::new(0));
    let new = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(CallStats::default()));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.setup_concurrency.max(1) {
        let client = clients[w % clients.len()].clone();
        let (next, new, failed) = (next.clone(), new.clone(), failed.clone());
        let (cards, offset) = (u64::from(args.cards), args.card_offset);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cards {
                    break;
                }
                let n = offset + u32::try_from(i).unwrap_or(u32::MAX);
                let phone = phone(n);
                let t = Instant::now();
                let answer = client
                    .customers()
                    .register_customer(client.request(gw::RegisterCustomerRequest {
                        request_id: format!("load-register-{n}"),
                        phone,
                        details: Some(gw::CustomerDetails {
                            first_name: FIRST_NAMES[n as usize % FIRST_NAMES.len()].to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }))
                    .await;
                let mut stats = failed.lock().expect("lock");
                match answer {
                    Ok(a) => {
                        stats.ok(t.elapsed());
                        if a.into_inner().customer.is_some_and(|c| c.registered_now) {
                            new.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(status) => stats.error(error_key(&status)),
                }
            }
        });
    }
    let total = u64::from(args.cards);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(r) => r.context("a registration worker panicked")?,
                None => break,
            },
            _ = tick.tick(), if !args.quiet => {
                let done = next.load(Ordering::Relaxed).min(total);
                eprintln!("setup: {done}/{total} customers ({:.0} s)", started.elapsed().as_secs_f64());
            }
        }
    }
    let stats = failed.lock().expect("lock");
    let ok = stats.latency.len();
    eprintln!(
        "setup: {ok} customers ready ({} new) in {:.1} s, p99 {:.2} ms",
        new.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        stats.quantile_ms(0.99)
    );
    if stats.error_count() > 0 {
        for (reason, n) in &stats.errors {
            eprintln!("setup: {n} failed with {reason}");
        }
        if ok == 0 {
            anyhow::bail!("no customer could be registered");
        }
    }
    Ok(new.load(Ordering::Relaxed))
}

const FIRST_NAMES: &[&str] = &[
    "Анна",
    "Иван",
    "Мария",
    "Алексей",
    "Ольга",
    "Дмитрий",
    "Елена",
    "Сергей",
    "Наталья",
    "Павел",
];

async fn open_loop(
    shared: &Arc<Shared>,
    rate: f64,
    start: Instant,
    end: Instant,
    max_in_flight: usize,
) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut i: u64 = 0;
    loop {
        // Each checkout's intended start; a late scheduler catches up at once and the
        // latency still counts from here.
        let intended = start + interval.mul_f64(i as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let shared = shared.clone();
        tokio::spawn(async move {
            checkout(&shared, intended).await;
            drop(permit);
        });
        i += 1;
    }
    // Wait for the checkouts in flight (bounded).
    let all = u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(30), in_flight.acquire_many(all)).await;
}

async fn closed_loop(shared: &Arc<Shared>, workers: usize, end: Instant) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let shared = shared.clone();
        set.spawn(async move {
            loop {
                let intended = Instant::now();
                if intended >= end {
                    break;
                }
                checkout(&shared, intended).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

struct Plan {
    buyer: Option<gw::Buyer>,
    lines: Vec<BasketLine>,
    redeem: Option<u32>,
}

fn plan(shared: &Shared) -> Plan {
    let mut rng = rand::rng();
    let buyer = (!rng.random_bool(shared.anonymous_share)).then(|| {
        let n = shared.card_offset + rng.random_range(0..shared.cards);
        gw::Buyer {
            who: Some(gw::buyer::Who::Identifier(IdentifierInput {
                raw: phone(n),
                kind_hint: IdentifierKind::Phone as i32,
            })),
        }
    });
    let redeem = (buyer.is_some() && rng.random_bool(shared.redeem_share))
        .then(|| rng.random_range(10..=100u32));
    Plan {
        buyer,
        lines: catalogue::basket(&mut rng),
        redeem,
    }
}

/// Points to redeem: `percent` % of the most redeemable, rounded down to its scale.
pub fn redeem_points(max_redeem: &str, percent: u32) -> Option<String> {
    let max = Decimal::from_str(max_redeem).ok()?;
    if max <= Decimal::ZERO {
        return None;
    }
    let points = (max * Decimal::from(percent) / Decimal::from(100))
        .round_dp_with_strategy(max.scale(), RoundingStrategy::ToZero);
    (points > Decimal::ZERO).then(|| points.to_string())
}

async fn checkout(shared: &Shared, intended: Instant) {
    let plan = plan(shared);
    let client = shared.client();
    let receipt_id = uuid::Uuid::new_v4().to_string();
    let mut request = client.request(gw::CalculateRequest {
        receipt_id: receipt_id.clone(),
        buyer: plan.buyer.clone(),
        lines: plan.lines.clone(),
        explain: rules_pb::ExplainLevel::Applied as i32,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(3));
    let answer = client.checkout().calculate(request).await;
    let calculated = Instant::now();
    let calc = match answer {
        Ok(a) => {
            shared.record(Call::Calculate, intended, Ok(calculated - intended));
            a.into_inner().calculation.unwrap_or_default()
        }
        Err(status) => {
            let key = error_key(&status);
            shared.record(Call::Calculate, intended, Err(key.clone()));
            shared.record(Call::Checkout, intended, Err(key));
            return;
        }
    };
    let redeem_points = plan
        .redeem
        .and_then(|percent| {
            let max = calc.totals.as_ref()?.max_redeem_points.as_str();
            redeem_points(max, percent)
        })
        .unwrap_or_default();
    let request = client.request(gw::ConfirmRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        receipt_id,
        buyer: plan.buyer,
        lines: plan.lines,
        redeem_points,
        ..Default::default()
    });
    let answer = client.checkout().confirm(request).await;
    let confirmed = Instant::now();
    match answer {
        Ok(_) => {
            shared.record(Call::Confirm, intended, Ok(confirmed - calculated));
            shared.record(Call::Checkout, intended, Ok(confirmed - intended));
        }
        Err(status) => {
            let key = error_key(&status);
            shared.record(Call::Confirm, intended, Err(key.clone()));
            shared.record(Call::Checkout, intended, Err(key));
        }
    }
}

/// A line per second: elapsed, calls/s, errors, p99 so far.
async fn progress(shared: Arc<Shared>, start: Instant, done: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = start;
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        let calls = shared.window_calls.swap(0, Ordering::Relaxed);
        let errors = shared.window_errors.swap(0, Ordering::Relaxed);
        let per_s = calls as f64 / (now - last).as_secs_f64().max(1e-3);
        last = now;
        let phase = if now < shared.measure_from {
            "warmup "
        } else if now < shared.end {
            "measure"
        } else {
            "drain  "
        };
        let (p99_calc, p99_conf) = {
            let stats = shared.stats.lock().expect("stats lock");
            (
                stats.calculate.quantile_ms(0.99),
                stats.confirm.quantile_ms(0.99),
            )
        };
        eprintln!(
            "[{phase} {:>5.0}s] {per_s:>8.1} calls/s  errors {errors:>4} (total {})  p99 calculate {p99_calc:.2} ms  confirm {p99_conf:.2} ms",
            (now - start).as_secs_f64(),
            shared.total_errors.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn phones_are_distinct_and_formatted() {
        assert_eq!(phone(0), "+7 900 000-00-00");
        assert_eq!(phone(1_234_567), "+7 900 123-45-67");
        assert_ne!(phone(1), phone(2));
    }

    #[test]
    fn redemption_within_the_max() {
        assert_eq!(redeem_points("120", 50).as_deref(), Some("60"));
        assert_eq!(redeem_points("7", 10), None);
        assert_eq!(redeem_points("7", 30).as_deref(), Some("2"));
        assert_eq!(redeem_points("10.55", 50).as_deref(), Some("5.27"));
        assert_eq!(redeem_points("0", 100), None);
        assert_eq!(redeem_points("", 100), None);
    }
}
