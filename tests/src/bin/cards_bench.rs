//! `cards-bench`: how many LookupCustomer calls per second cards-svc answers — by phone and by
//! card number, with the customer's tier — with a warm Redis tier cache and with the cache off,
//! on a database of `--customers` customers (one million by default).
//!
//! One temporary PostgreSQL cluster and one temporary Redis serve the whole run:
//!
//! 1. Two cards-svc instances run in-process on random ports over the same database (pool sized
//!    to the concurrency): one with the Redis tier cache, one with `tier_cache = false`.
//! 2. Seeding, on the cache-on instance: five tiers (`UpsertTier`), a card-number format
//!    (`UpdateCardsSettings`), the first 100 customers through `CreateCustomer`; the rest are
//!    bulk-loaded with `COPY` in batches (customers, a phone and a card number each, one tier
//!    assignment each, documents encoded with the real protobuf types), then `VACUUM (ANALYZE)`.
//! 3. The lookups pick uniformly random customers among a random sample of `--working-set`
//!    seeded customers (the customers who shop during the run). A warm-up looks each of them up
//!    once on the cache-on instance, which fills Redis. Then for each instance (cache, no cache)
//!    and each input kind (a phone typed as "8 (912) 345-67-89", a card number as typed),
//!    `--concurrency` callers, each on its own connection, call `LookupCustomer` for
//!    `--seconds`. Every answer is checked: the right customer, with its tier.
//!
//! It prints lookups/s and latency percentiles of the four runs side by side, with Redis hits
//! and misses and CPU per lookup.
//!
//! ```sh
//! cargo run --release -p kopilka-tests --bin cards-bench -- --customers 1000000 --seconds 15
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kopilka_proto::cards::cards_settings_service_client::CardsSettingsServiceClient;
use kopilka_proto::cards::customer_service_client::CustomerServiceClient;
use kopilka_proto::cards::identifier_service_client::IdentifierServiceClient;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::cards::{
    CardChecksum, CardNumberFormat, CardsSettings, CreateCustomerRequest, CustomerProfile,
    LookupCustomerRequest, LookupCustomerResponse, RegistrationChannel, RegistrationSource,
    SetConsentResponse, Tier, TierAssignment, TierSource, UpdateCardsSettingsRequest,
    UpsertTierRequest,
};
use kopilka_proto::types::{Date, Gender, IdentifierInput, IdentifierKind};
use kopilka_proto::wkt::{FieldMask, Timestamp};
use kopilka_runtime::service_auth::ServiceToken;
use kopilka_tests::{PgOptions, TempPostgres, TempRedis};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const MERCHANT: &str = "bench";
/// Customers created through CreateCustomer (the real path); the rest are bulk-loaded.
const THROUGH_API: u64 = 100;
/// Rows per COPY statement.
const COPY_BATCH: u64 = 50_000;
/// The card-number format set in the merchant's settings (13 digits, Luhn check digit).
const CARD_PATTERN: &str = "^77[0-9]{11}$";

/// The merchant's tiers: code, name, rank, accrual %, discount %, share of customers in %.
const TIERS: [(&str, &str, i32, &str, &str, u64); 5] = [
    ("new", "New", 0, "1", "0", 55),
    ("silver", "Silver", 1, "3", "2", 25),
    ("gold", "Gold", 2, "5", "3", 13),
    ("platinum", "Platinum", 3, "7", "5", 5),
    ("vip", "VIP", 4, "10", "7", 2),
];

const FIRST_NAMES: [&str; 8] = [
    "Анна",
    "Иван",
    "Мария",
    "Сергей",
    "Ольга",
    "Дмитрий",
    "Елена",
    "Алексей",
];
const LAST_NAMES: [&str; 8] = [
    "Иванова",
    "Смирнов",
    "Кузнецова",
    "Попов",
    "Васильева",
    "Петров",
    "Соколова",
    "Михайлов",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Durability {
    /// fsync, synchronous_commit and full_page_writes on (PostgreSQL's defaults, production).
    Durable,
    /// All three off, as the test suite runs PostgreSQL.
    Fast,
}

/// LookupCustomer throughput of cards-svc, with a warm Redis tier cache and with it off.
#[derive(Debug, Parser)]
#[command(name = "cards-bench", version)]
struct Args {
    /// Concurrent callers (cash registers), each on its own connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=250))]
    concurrency: u32,
    /// Seconds each of the four measured runs lasts.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Customers seeded (at most 10 million: phones are +7 912 and 7 digits).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    customers: u64,
    /// Customers the lookups pick from (a random sample of the seeded ones, all looked up once
    /// by the warm-up); capped at --customers.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    working_set: u64,
    /// PostgreSQL durability settings for the whole run.
    #[arg(long, value_enum, default_value_t = Durability::Durable)]
    durability: Durability,
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
    let started = Instant::now();
    let options = PgOptions {
        durable: args.durability == Durability::Durable,
        settings: Vec::new(),
    };
    eprintln!("starting PostgreSQL ({:?}) and Redis…", args.durability);
    let pg = tokio::task::spawn_blocking(move || TempPostgres::start_with(options))
        .await
        .context("start PostgreSQL")?;
    let redis = tokio::task::spawn_blocking(TempRedis::start)
        .await
        .context("start Redis")?;
    let database_url = pg.create_database("cards").await;
    let server_version: String = query_scalar(&database_url, "SHOW server_version").await?;
    let redis_version = redis_info(&redis.url(), "server")
        .await?
        .get("redis_version")
        .cloned()
        .unwrap_or_default();

    // One connection per caller, and one spare for the background job.
    let pool = args.concurrency + 1;
    let cached = CardsInstance::start(&database_url, Some(redis.url()), pool).await?;
    let uncached = CardsInstance::start(&database_url, None, pool).await?;

    let seeding = seed(&args, &cached.addr, &database_url, &interrupt).await?;
    let population = Arc::new(Population {
        customers: args.customers,
        api_ids: seeding.api_ids.clone(),
        id_base_ms: seeding.id_base_ms,
    });
    let database_size: String = query_scalar(
        &database_url,
        "SELECT pg_size_pretty(pg_database_size('cards'))",
    )
    .await?;

    // The working set: a random sample of the seeded customers.
    let working_set = args.working_set.min(args.customers);
    let mut rng = SmallRng::seed_from_u64(0x0063_6172_6473);
    let set: Vec<u64> =
        rand::seq::index::sample(&mut rng, args.customers as usize, working_set as usize)
            .into_iter()
            .map(|i| i as u64)
            .collect();
    let set = Arc::new(set);

    let cached_clients = cached.clients(args.concurrency).await?;
    let uncached_clients = uncached.clients(args.concurrency).await?;

    let ctx = Ctx {
        pg: &pg,
        redis_url: redis.url(),
        population,
        set,
        interrupt: &interrupt,
    };
    let warmup = ctx.warm_up(&cached_clients).await?;
    let mut runs: Vec<Option<PhaseRun>> = Vec::new();
    for (clients, cache, input) in [
        (&cached_clients, true, Input::Phone),
        (&cached_clients, true, Input::Card),
        (&uncached_clients, false, Input::Phone),
        (&uncached_clients, false, Input::Card),
    ] {
        if interrupt.is_cancelled() {
            runs.push(None);
            continue;
        }
        runs.push(Some(
            ctx.measure(clients, cache, input, args.seconds).await?,
        ));
    }
    drop(cached_clients);
    drop(uncached_clients);
    cached.stop().await;
    uncached.stop().await;

    print_report(&Report {
        args: &args,
        server_version: &server_version,
        redis_version: &redis_version,
        pool,
        seeding: &seeding,
        database_size: &database_size,
        working_set,
        warmup: &warmup,
        runs: &runs,
        total: started.elapsed(),
    });
    Ok(())
}

// ---- cards-svc instances --------------------------------------------------------------------

/// A cards-svc running in this process.
struct CardsInstance {
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl CardsInstance {
    /// With the Redis tier cache when `redis_url` is given, else with the tier cache off.
    async fn start(
        database_url: &str,
        redis_url: Option<String>,
        pool: u32,
    ) -> anyhow::Result<CardsInstance> {
        let mut config = cards_svc::Config::default();
        config.service.listen_addr = "127.0.0.1:0".parse().expect("an address");
        config.service.database_url = SecretString::from(database_url.to_owned());
        config.service.max_connections = pool;
        config.service.service_token = Some(kopilka_tests::service_token());
        config.tier_cache = redis_url.is_some();
        config.redis_url = redis_url.map(SecretString::from);
        config.tier_cache_ttl_secs = 3600;
        let host = cards_svc::build(config)
            .await
            .map_err(|e| anyhow::anyhow!("cards-svc does not start: {e:?}"))?;
        let addr = host.local_addr();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn({
            let stop = shutdown.clone().cancelled_owned();
            async move {
                let _ = host.run_until(stop).await;
            }
        });
        Ok(CardsInstance {
            addr,
            shutdown,
            server,
        })
    }

    /// `n` clients, each on its own connection.
    async fn clients(
        &self,
        n: u32,
    ) -> anyhow::Result<Vec<IdentifierServiceClient<kopilka_tests::Channel>>> {
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(IdentifierServiceClient::new(connect(&self.addr).await?));
        }
        Ok(clients)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// A connected channel (each client its own connection) carrying the service token.
async fn connect(addr: &SocketAddr) -> anyhow::Result<kopilka_tests::Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("connect to cards-svc")?;
    let token = ServiceToken::new(&kopilka_tests::service_token())?;
    Ok(InterceptedService::new(channel, token))
}

// ---- the seeded customers -------------------------------------------------------------------

/// Customer number `i`'s data, derived from `i` (the bulk-loaded ones) or remembered (the ones
/// created through the API, whose ids the service chose).
struct Population {
    customers: u64,
    api_ids: Vec<String>,
    /// Milliseconds since the epoch of the first bulk-loaded id (ids are UUIDv7-shaped).
    id_base_ms: u64,
}

impl Population {
    fn customer_id(&self, i: u64) -> String {
        match self.api_ids.get(i as usize) {
            Some(id) => id.clone(),
            None => uuid_v7_like(self.id_base_ms + i, mix(i ^ 0x1d)),
        }
    }

    /// The tier code customer `i` holds: the default tier for those registered through the
    /// API, else imported with a spread over the tiers.
    fn tier(&self, i: u64) -> &'static str {
        if (i as usize) < self.api_ids.len() {
            return TIERS[0].0;
        }
        tier_index(i).map_or(TIERS[0].0, |t| TIERS[t].0)
    }
}

fn tier_index(i: u64) -> Option<usize> {
    let mut roll = mix(i ^ 0x7e) % 100;
    for (n, tier) in TIERS.iter().enumerate() {
        if roll < tier.5 {
            return Some(n);
        }
        roll -= tier.5;
    }
    None
}

/// splitmix64: a well-spread 64-bit hash of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A UUIDv7-shaped id (as cards-svc issues) for `ms` with random bits from `r`.
fn uuid_v7_like(ms: u64, r: u64) -> String {
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        (ms >> 16) & 0xffff_ffff,
        ms & 0xffff,
        r & 0xfff,
        0x8000 | ((r >> 12) & 0x3fff),
        (r >> 26) & 0xffff_ffff_ffff
    )
}

/// The 7 subscriber digits of customer `i`'s phone (+7 912 …): a bijection of 0..10^7, so
/// phones are unique and not in customer order.
fn phone_digits(i: u64) -> u64 {
    (i * 7_654_321 + 1_234_567) % 10_000_000
}

/// Customer `i`'s phone in E.164, as stored.
fn phone_e164(i: u64) -> String {
    format!("+7912{:07}", phone_digits(i))
}

/// Customer `i`'s phone as a cashier types it: "8 (912) 345-67-89".
fn phone_typed(i: u64) -> String {
    let d = format!("{:07}", phone_digits(i));
    format!("8 (912) {}-{}-{}", &d[..3], &d[3..5], &d[5..])
}

/// Customer `i`'s card number: "77", 10 digits (a bijection of i), a Luhn check digit.
fn card_number(i: u64) -> String {
    let body = format!("77{:010}", (i * 2_654_435_761) % 10_000_000_000);
    let sum: u32 = body
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(n, d)| match (n % 2 == 0, d * 2) {
            (false, _) => d,
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn first_name(i: u64) -> &'static str {
    FIRST_NAMES[(mix(i ^ 0xf1) % FIRST_NAMES.len() as u64) as usize]
}

fn last_name(i: u64) -> &'static str {
    LAST_NAMES[(mix(i ^ 0x1a) % LAST_NAMES.len() as u64) as usize]
}

/// Customer `i`'s profile (phone in E.164), as cards-svc stores it.
fn profile(i: u64) -> CustomerProfile {
    let r = mix(i ^ 0xb1);
    // Two thirds gave a birthday.
    let birth_date = (!r.is_multiple_of(3)).then(|| Date {
        year: 1950 + ((r >> 8) % 55) as i32,
        month: 1 + ((r >> 16) % 12) as i32,
        day: 1 + ((r >> 24) % 28) as i32,
    });
    CustomerProfile {
        first_name: first_name(i).to_owned(),
        last_name: last_name(i).to_owned(),
        phone: phone_e164(i),
        birth_date,
        gender: match (r >> 32) % 3 {
            0 => Gender::Unspecified,
            1 => Gender::Female,
            _ => Gender::Male,
        } as i32,
        ..Default::default()
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A TIMESTAMPTZ in COPY text form.
fn pg_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// A BYTEA in COPY text form (hex, the backslash escaped).
fn pg_bytea(out: &mut String, bytes: &[u8]) {
    out.push_str("\\\\x");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

// ---- seeding --------------------------------------------------------------------------------

/// What seeding did.
struct Seeding {
    api_ids: Vec<String>,
    id_base_ms: u64,
    api_secs: f64,
    copy_secs: f64,
    analyze_secs: f64,
    total_secs: f64,
}

async fn seed(
    args: &Args,
    addr: &SocketAddr,
    database_url: &str,
    interrupt: &CancellationToken,
) -> anyhow::Result<Seeding> {
    let started = Instant::now();
    let channel = connect(addr).await?;
    let mut tiers = TierServiceClient::new(channel.clone());
    let mut settings = CardsSettingsServiceClient::new(channel.clone());
    let mut customers = CustomerServiceClient::new(channel);
    let run_id = format!("{:x}", rand::random::<u32>());

    eprintln!("seeding: {} tiers and a card format…", TIERS.len());
    for (code, name, rank, accrual, discount, _) in TIERS {
        tiers
            .upsert_tier(UpsertTierRequest {
                merchant_id: MERCHANT.to_owned(),
                request_id: format!("{run_id}-tier-{code}"),
                tier: Some(Tier {
                    code: code.to_owned(),
                    name: name.to_owned(),
                    rank,
                    accrual_percent: accrual.to_owned(),
                    discount_percent: discount.to_owned(),
                    max_redeem_share_percent: "50".to_owned(),
                    is_default: rank == 0,
                    description: format!("{name}: {accrual} % back, {discount} % off"),
                    ..Default::default()
                }),
            })
            .await
            .with_context(|| format!("UpsertTier {code}"))?;
    }
    settings
        .update_cards_settings(UpdateCardsSettingsRequest {
            merchant_id: MERCHANT.to_owned(),
            request_id: format!("{run_id}-settings"),
            settings: Some(CardsSettings {
                default_phone_region: "RU".to_owned(),
                card_number_formats: vec![CardNumberFormat {
                    name: "plastic".to_owned(),
                    pattern: CARD_PATTERN.to_owned(),
                    checksum: CardChecksum::Luhn as i32,
                }],
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec![
                    "default_phone_region".to_owned(),
                    "card_number_formats".to_owned(),
                ],
            }),
        })
        .await
        .context("UpdateCardsSettings")?;

    let through_api = THROUGH_API.min(args.customers);
    eprintln!("seeding: {through_api} customers through CreateCustomer…");
    let mut api_ids = Vec::new();
    for i in 0..through_api {
        let p = profile(i);
        let created = customers
            .create_customer(CreateCustomerRequest {
                merchant_id: MERCHANT.to_owned(),
                request_id: format!("{run_id}-customer-{i}"),
                profile: Some(CustomerProfile {
                    phone: phone_typed(i),
                    ..p
                }),
                identifiers: vec![IdentifierInput {
                    raw: card_number(i),
                    kind_hint: IdentifierKind::CardNumber as i32,
                }],
                registration: Some(RegistrationSource {
                    channel: RegistrationChannel::Register as i32,
                    store_id: "main".to_owned(),
                    terminal_id: "till-1".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("CreateCustomer {i}"))?
            .into_inner();
        let customer = created
            .customer
            .context("CreateCustomer without customer")?;
        if customer.tier.as_ref().map(|t| t.tier_code.as_str()) != Some(TIERS[0].0) {
            bail!("a customer created through the API did not get the default tier");
        }
        api_ids.push(customer.customer_id);
    }
    let api_secs = started.elapsed().as_secs_f64();

    // Bulk load the rest: three COPY streams (one per table) in parallel, batches of 50 000.
    let bulk = args.customers - through_api;
    let copy_started = Instant::now();
    let id_base_ms = (Utc::now() - chrono::Duration::days(1)).timestamp_millis() as u64;
    eprintln!("seeding: {bulk} customers with COPY…");
    let done = Arc::new(AtomicU64::new(0));
    let stop = interrupt.child_token();
    let progress = tokio::spawn(count_progress(
        "rows copied",
        done.clone(),
        bulk * 4,
        stop.clone(),
    ));
    let mut copies = Vec::new();
    for table in [Table::Customers, Table::Identifiers, Table::TierHistory] {
        let (url, done, stop) = (database_url.to_owned(), done.clone(), stop.clone());
        let pop = Population {
            customers: args.customers,
            api_ids: api_ids.clone(),
            id_base_ms,
        };
        copies.push(tokio::spawn(async move {
            copy_table(&url, table, &pop, through_api, &done, &stop).await
        }));
    }
    for c in copies {
        c.await??;
    }
    stop.cancel();
    let _ = progress.await;
    if interrupt.is_cancelled() {
        bail!("interrupted while seeding");
    }
    let copy_secs = copy_started.elapsed().as_secs_f64();
    let analyze_started = Instant::now();
    eprintln!("seeding: VACUUM (ANALYZE), CHECKPOINT…");
    // As after an import: statistics, visibility map and hint bits set, so no autovacuum
    // of the fresh tables runs during the measurement.
    execute(database_url, "VACUUM (ANALYZE)").await?;
    execute(database_url, "CHECKPOINT").await?;
    let analyze_secs = analyze_started.elapsed().as_secs_f64();
    let total_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "seeded {} customers in {total_secs:.1} s ({:.0} customers/s; COPY {copy_secs:.1} s)",
        args.customers,
        args.customers as f64 / total_secs
    );
    Ok(Seeding {
        api_ids,
        id_base_ms,
        api_secs,
        copy_secs,
        analyze_secs,
        total_secs,
    })
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Customers,
    Identifiers,
    TierHistory,
}

impl Table {
    fn copy_statement(self) -> &'static str {
        match self {
            Table::Customers => {
                "COPY customers (merchant_id, customer_id, state, merged_into, external_id, phone, \
                 birth_month, birth_day, gender, consent_mask, referrer_id, referred_at, tier_code, \
                 tier_seq, registered_at, created_at, updated_at, version, profile, consents, \
                 registration) FROM STDIN"
            }
            Table::Identifiers => {
                "COPY identifiers (merchant_id, kind, value, customer_id, state, block_reason, \
                 block_comment, added_at, blocked_at, replaced_kind, replaced_value) FROM STDIN"
            }
            Table::TierHistory => {
                "COPY tier_history (merchant_id, customer_id, seq, assignment, assigned_at) FROM STDIN"
            }
        }
    }
}

/// The times of customer `i`: registered some time in the last three years, imported (created)
/// at `import` plus `i` microseconds.
fn times(i: u64, import: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let registered =
        import - chrono::Duration::seconds((mix(i ^ 0x5e) % (3 * 365 * 86_400)) as i64);
    let created = import + chrono::Duration::microseconds(i as i64);
    (registered, created)
}

/// COPYs rows `from..customers` of `table`, a statement per batch, counting rows in `done`
/// (identifiers count twice: two rows a customer).
async fn copy_table(
    url: &str,
    table: Table,
    pop: &Population,
    from: u64,
    done: &AtomicU64,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let import = Utc
        .timestamp_millis_opt(pop.id_base_ms as i64)
        .single()
        .expect("a valid time");
    let consents = SetConsentResponse { consents: vec![] }.encode_to_vec();
    let registration = RegistrationSource {
        channel: RegistrationChannel::Import as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let mut start = from;
    let mut buf = String::new();
    while start < pop.customers && !stop.is_cancelled() {
        let end = (start + COPY_BATCH).min(pop.customers);
        let mut copy = conn
            .copy_in_raw(table.copy_statement())
            .await
            .with_context(|| format!("COPY {table:?}"))?;
        for i in start..end {
            let id = pop.customer_id(i);
            let (registered, created) = times(i, import);
            let tier = tier_index(i).unwrap_or(0);
            let (code, name, rank, ..) = TIERS[tier];
            match table {
                Table::Customers => {
                    let p = profile(i);
                    let (month, day) = p.birth_date.as_ref().map_or((0, 0), |d| (d.month, d.day));
                    let created = pg_time(created);
                    let _ = write!(
                        buf,
                        "{MERCHANT}\t{id}\t1\t\t\\N\t{}\t{month}\t{day}\t{}\t0\t\t\\N\t{code}\t1\t{}\t{created}\t{created}\t2\t",
                        p.phone,
                        p.gender,
                        pg_time(registered),
                    );
                    pg_bytea(&mut buf, &p.encode_to_vec());
                    buf.push('\t');
                    pg_bytea(&mut buf, &consents);
                    buf.push('\t');
                    pg_bytea(&mut buf, &registration);
                    buf.push('\n');
                }
                Table::Identifiers => {
                    let added = pg_time(created);
                    for (kind, value) in [
                        (IdentifierKind::CardNumber, card_number(i)),
                        (IdentifierKind::Phone, phone_e164(i)),
                    ] {
                        let _ = writeln!(
                            buf,
                            "{MERCHANT}\t{}\t{value}\t{id}\t1\t0\t\t{added}\t\\N\t0\t",
                            kind as i32
                        );
                    }
                }
                Table::TierHistory => {
                    let assignment = TierAssignment {
                        customer_id: id.clone(),
                        tier_code: code.to_owned(),
                        tier_name: name.to_owned(),
                        tier_rank: rank,
                        source: TierSource::Import as i32,
                        reason: "imported".to_owned(),
                        assigned_at: Some(timestamp(created)),
                        ..Default::default()
                    };
                    let _ = write!(buf, "{MERCHANT}\t{id}\t1\t");
                    pg_bytea(&mut buf, &assignment.encode_to_vec());
                    let _ = writeln!(buf, "\t{}", pg_time(created));
                }
            }
            if buf.len() >= 1 << 20 {
                copy.send(std::mem::take(&mut buf).into_bytes()).await?;
            }
        }
        if !buf.is_empty() {
            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
        }
        let rows = copy
            .finish()
            .await
            .with_context(|| format!("COPY {table:?}"))?;
        done.fetch_add(rows, Ordering::Relaxed);
        start = end;
    }
    Ok(())
}

// ---- measuring ------------------------------------------------------------------------------

/// What the callers type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// The customer's phone, "8 (912) 345-67-89", auto-detected.
    Phone,
    /// The card number as typed (13 digits), auto-detected.
    Card,
}

impl Input {
    fn raw(self, i: u64) -> String {
        match self {
            Input::Phone => phone_typed(i),
            Input::Card => card_number(i),
        }
    }
}

/// What one measured run found.
struct PhaseRun {
    cache: bool,
    input: Input,
    ok: u64,
    errors: u64,
    error_kinds: Vec<(String, u64)>,
    elapsed: f64,
    latency: Histogram<u64>,
    usage: Usage,
    /// Redis keyspace hits and misses during the run.
    redis: (u64, u64),
}

/// The warm-up's figures.
struct Warmup {
    lookups: u64,
    errors: u64,
    error_kinds: Vec<(String, u64)>,
    secs: f64,
    redis: (u64, u64),
}

struct Ctx<'a> {
    pg: &'a TempPostgres,
    redis_url: String,
    population: Arc<Population>,
    set: Arc<Vec<u64>>,
    interrupt: &'a CancellationToken,
}

impl Ctx<'_> {
    /// Looks every working-set customer up once by card on the cache-on instance.
    async fn warm_up(
        &self,
        clients: &[IdentifierServiceClient<kopilka_tests::Channel>],
    ) -> anyhow::Result<Warmup> {
        eprintln!(
            "warm-up: looking up the {} working-set customers once (fills the tier cache)…",
            self.set.len()
        );
        let before = redis_hits(&self.redis_url).await?;
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = self.interrupt.child_token();
        let progress = tokio::spawn(count_progress(
            "lookups",
            ok.clone(),
            self.set.len() as u64,
            stop.clone(),
        ));
        let mut workers = Vec::new();
        for mut client in clients.iter().cloned() {
            let (next, ok, errors, stop) = (next.clone(), ok.clone(), errors.clone(), stop.clone());
            let (pop, set) = (self.population.clone(), self.set.clone());
            workers.push(tokio::spawn(async move {
                let mut kinds = HashMap::new();
                while !stop.is_cancelled() {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = set.get(n as usize) else {
                        break;
                    };
                    let result = client.lookup_customer(request(Input::Card, i)).await;
                    match check(&pop, i, result) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(kind) => {
                            *kinds.entry(kind).or_insert(0) += 1;
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                kinds
            }));
        }
        let mut kinds: HashMap<String, u64> = HashMap::new();
        for w in workers {
            for (kind, n) in w.await? {
                *kinds.entry(kind).or_default() += n;
            }
        }
        stop.cancel();
        let _ = progress.await;
        let after = redis_hits(&self.redis_url).await?;
        Ok(Warmup {
            lookups: ok.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            error_kinds: sorted(kinds),
            secs: started.elapsed().as_secs_f64(),
            redis: (after.0 - before.0, after.1 - before.1),
        })
    }

    /// `clients` look up random working-set customers by `input` for `seconds`.
    async fn measure(
        &self,
        clients: &[IdentifierServiceClient<kopilka_tests::Channel>],
        cache: bool,
        input: Input,
        seconds: u64,
    ) -> anyhow::Result<PhaseRun> {
        let what = format!(
            "{} lookups, {}",
            match input {
                Input::Phone => "phone",
                Input::Card => "card",
            },
            if cache { "cache" } else { "no cache" }
        );
        eprintln!("{what}: {} callers for {seconds} s…", clients.len());
        let stop = self.interrupt.child_token();
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let before = redis_hits(&self.redis_url).await?;
        let meter = Meter::start(self.pg.postmaster_pid());
        let started = Instant::now();
        let mut workers = Vec::new();
        for (id, client) in clients.iter().cloned().enumerate() {
            let w = Worker {
                id,
                input,
                population: self.population.clone(),
                set: self.set.clone(),
                ok: ok.clone(),
                errors: errors.clone(),
            };
            workers.push(tokio::spawn(w.run(client, stop.clone())));
        }
        let progress = tokio::spawn(progress(
            "lookups",
            ok.clone(),
            errors.clone(),
            seconds,
            stop.clone(),
        ));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
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
        let after = redis_hits(&self.redis_url).await?;
        Ok(PhaseRun {
            cache,
            input,
            ok: ok.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            error_kinds: sorted(kinds),
            elapsed,
            latency,
            usage,
            redis: (after.0 - before.0, after.1 - before.1),
        })
    }
}

fn sorted(kinds: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds
}

fn request(input: Input, i: u64) -> LookupCustomerRequest {
    LookupCustomerRequest {
        merchant_id: MERCHANT.to_owned(),
        input: Some(IdentifierInput {
            raw: input.raw(i),
            kind_hint: IdentifierKind::Unspecified as i32,
        }),
        include_referral_chain: false,
    }
}

/// Ok when the answer names customer `i` with its tier; else what was wrong.
fn check(
    pop: &Population,
    i: u64,
    result: Result<tonic::Response<LookupCustomerResponse>, tonic::Status>,
) -> Result<(), String> {
    let r = match result {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
    };
    let Some(customer) = &r.customer else {
        return Err("wrong answer: no customer".to_owned());
    };
    if customer.customer_id != pop.customer_id(i) {
        return Err("wrong answer: another customer".to_owned());
    }
    let expected = pop.tier(i);
    match (&customer.tier, &r.tier) {
        (Some(a), Some(t)) if a.tier_code == expected && t.code == expected => Ok(()),
        (None, _) => Err("wrong answer: no tier assignment".to_owned()),
        (_, None) => Err("wrong answer: no tier definition".to_owned()),
        _ => Err("wrong answer: another tier".to_owned()),
    }
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One LookupCustomer caller (a cash register).
struct Worker {
    id: usize,
    input: Input,
    population: Arc<Population>,
    set: Arc<Vec<u64>>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Worker {
    async fn run(
        self,
        mut client: IdentifierServiceClient<kopilka_tests::Channel>,
        stop: CancellationToken,
    ) -> (Histogram<u64>, HashMap<String, u64>) {
        let mut rng = SmallRng::seed_from_u64(0x006b_6f70_696c_6b61 ^ self.id as u64);
        let mut latency = new_histogram();
        let mut kinds = HashMap::new();
        while !stop.is_cancelled() {
            let i = self.set[rng.random_range(0..self.set.len())];
            let request = request(self.input, i);
            let t = Instant::now();
            let result = tokio::select! {
                r = client.lookup_customer(request) => r,
                _ = stop.cancelled() => break,
            };
            let micros = t.elapsed().as_micros().max(1) as u64;
            match check(&self.population, i, result) {
                Ok(()) => {
                    latency.saturating_record(micros);
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(kind) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    *kinds.entry(kind).or_insert(0) += 1;
                }
            }
        }
        (latency, kinds)
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

/// Progress of a job of `total` units until `stop`: in place on a terminal, every 5 s otherwise.
async fn count_progress(what: &str, done: Arc<AtomicU64>, total: u64, stop: CancellationToken) {
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
        let n = done.load(Ordering::Relaxed);
        let t = started.elapsed().as_secs();
        let rate = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (n, Instant::now());
        let line = format!("  {t:>4} s  {n}/{total} {what}  {rate:.0}/s now");
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

// ---- Redis, CPU -----------------------------------------------------------------------------

/// `INFO <section>` as name -> value.
async fn redis_info(url: &str, section: &str) -> anyhow::Result<HashMap<String, String>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// Redis keyspace (hits, misses) so far (an MGET of the assignment and the tier definitions
/// counts two).
async fn redis_hits(url: &str) -> anyhow::Result<(u64, u64)> {
    let info = redis_info(url, "stats").await?;
    let get = |k: &str| info.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((get("keyspace_hits"), get("keyspace_misses")))
}

/// CPU seconds a run cost, by whom, and its wall time.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    pg_cpu: f64,
    /// This process: cards-svc (both instances) and the callers.
    own_cpu: f64,
    redis_cpu: f64,
    /// Every other process on the machine: noise in the measurement.
    other_cpu: f64,
    wall: f64,
}

/// Measures a run from `start` to `stop`: this process by getrusage, the rest from
/// `/proc/<pid>/schedstat` sampled every 100 ms (as ledger-bench does).
struct Meter {
    own_cpu: f64,
    started: Instant,
    stop: CancellationToken,
    sampler: tokio::task::JoinHandle<(f64, f64, f64)>,
}

impl Meter {
    fn start(postmaster: Option<u32>) -> Meter {
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
            (
                cpu.seconds(Owner::Postgres),
                cpu.seconds(Owner::Redis),
                cpu.seconds(Owner::Other),
            )
        });
        Meter {
            own_cpu: rusage_self(),
            started: Instant::now(),
            stop,
            sampler,
        }
    }

    async fn stop(self) -> anyhow::Result<Usage> {
        let wall = self.started.elapsed().as_secs_f64();
        let own_cpu = rusage_self() - self.own_cpu;
        self.stop.cancel();
        let (pg_cpu, redis_cpu, other_cpu) = self.sampler.await?;
        Ok(Usage {
            pg_cpu,
            own_cpu,
            redis_cpu,
            other_cpu,
            wall,
        })
    }
}

/// Whose a process is, for CPU accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The PostgreSQL cluster: the postmaster and its children.
    Postgres,
    /// The redis-server this process started.
    Redis,
    /// This process (measured with getrusage instead).
    Mine,
    /// Anything else on the machine.
    Other,
}

/// CPU time of the machine's processes by [`Owner`], from `/proc/<pid>/schedstat`.
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
        } else if pid == self.me {
            Owner::Mine
        } else if parent == Some(self.me) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "redis-server" {
                Owner::Redis
            } else {
                Owner::Other
            }
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
                    // A process born after the first sample ran all its time inside the run.
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

/// User + system CPU seconds of this process.
fn rusage_self() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
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

struct Report<'a> {
    args: &'a Args,
    server_version: &'a str,
    redis_version: &'a str,
    pool: u32,
    seeding: &'a Seeding,
    database_size: &'a str,
    working_set: u64,
    warmup: &'a Warmup,
    runs: &'a [Option<PhaseRun>],
    total: Duration,
}

fn print_report(r: &Report<'_>) {
    let args = r.args;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let durability = match args.durability {
        Durability::Durable => "durable: fsync, synchronous_commit, full_page_writes on",
        Durability::Fast => "fast: fsync, synchronous_commit, full_page_writes off",
    };
    let s = r.seeding;
    let through_api = THROUGH_API.min(args.customers);
    println!();
    println!(
        "cards-bench: LookupCustomer (customer + tier) on PostgreSQL {}, Redis {}",
        r.server_version, r.redis_version
    );
    println!(
        "  {cpus} CPUs; PostgreSQL, Redis, both cards-svc (in this process) and the callers all on this machine"
    );
    println!("  PostgreSQL {durability}");
    println!(
        "  {} customers seeded in {:.1} s ({:.0}/s): {through_api} through CreateCustomer ({:.1} s), the rest with COPY ({:.1} s), VACUUM ANALYZE + CHECKPOINT {:.1} s; database {}",
        args.customers,
        s.total_secs,
        args.customers as f64 / s.total_secs,
        s.api_secs,
        s.copy_secs,
        s.analyze_secs,
        r.database_size
    );
    println!(
        "  concurrency {}, {} s per run, cards-svc pool {} each; lookups of random customers among {} (working set)",
        args.concurrency, args.seconds, r.pool, r.working_set
    );
    println!(
        "  phone typed as \"8 (912) 345-67-89\", card as 13 digits, both auto-detected; every answer checked (customer and tier)"
    );
    let w = r.warmup;
    println!(
        "  warm-up: {} lookups by card in {:.1} s ({:.0}/s, {} errors), Redis {} hits / {} misses",
        w.lookups,
        w.secs,
        w.lookups as f64 / w.secs.max(1e-9),
        w.errors,
        w.redis.0,
        w.redis.1
    );
    println!();

    let header = |run: &Option<PhaseRun>, n: usize| match run {
        Some(p) => format!(
            "{}, {}",
            match p.input {
                Input::Phone => "phone",
                Input::Card => "card",
            },
            if p.cache { "cache" } else { "no cache" }
        ),
        None => [
            "phone, cache",
            "card, cache",
            "phone, no cache",
            "card, no cache",
        ][n]
            .to_owned(),
    };
    let row = |name: &str, cells: Vec<String>| {
        let mut line = format!("  {name:<30}");
        for c in cells {
            let _ = write!(line, " {c:>16}");
        }
        println!("{line}");
    };
    let cells = |f: &dyn Fn(&PhaseRun) -> String| -> Vec<String> {
        r.runs
            .iter()
            .map(|run| run.as_ref().map_or("-".to_owned(), f))
            .collect()
    };
    row(
        "",
        r.runs
            .iter()
            .enumerate()
            .map(|(n, run)| header(run, n))
            .collect(),
    );
    row(
        "lookups/s",
        cells(&|p| format!("{:.1}", p.ok as f64 / p.elapsed)),
    );
    row("lookups", cells(&|p| p.ok.to_string()));
    row("errors", cells(&|p| p.errors.to_string()));
    let ms =
        |p: &PhaseRun, q: f64| format!("{:.2}", p.latency.value_at_quantile(q) as f64 / 1000.0);
    row(
        "latency mean ms",
        cells(&|p| format!("{:.2}", p.latency.mean() / 1000.0)),
    );
    row("latency p50 ms", cells(&|p| ms(p, 0.50)));
    row("latency p99 ms", cells(&|p| ms(p, 0.99)));
    row("latency max ms", cells(&|p| ms(p, 1.0)));
    let dash_off = |p: &PhaseRun, v: String| if p.cache { v } else { "-".to_owned() };
    row(
        "Redis hits / misses",
        cells(&|p| dash_off(p, format!("{} / {}", p.redis.0, p.redis.1))),
    );
    let per = |total: f64, p: &PhaseRun| {
        if p.ok > 0 {
            format!("{:.3}", 1000.0 * total / p.ok as f64)
        } else {
            "-".to_owned()
        }
    };
    row(
        "CPU ms/lookup, PostgreSQL",
        cells(&|p| per(p.usage.pg_cpu, p)),
    );
    row(
        "CPU ms/lookup, cards-svc+callers",
        cells(&|p| per(p.usage.own_cpu, p)),
    );
    row(
        "CPU ms/lookup, Redis",
        cells(&|p| dash_off(p, per(p.usage.redis_cpu, p))),
    );
    row(
        &format!("CPUs busy, measured (of {cpus})"),
        cells(&|p| {
            format!(
                "{:.2}",
                (p.usage.pg_cpu + p.usage.own_cpu + p.usage.redis_cpu) / p.usage.wall
            )
        }),
    );
    row(
        "CPUs busy, other processes",
        cells(&|p| format!("{:.2}", p.usage.other_cpu / p.usage.wall)),
    );
    println!("  (Redis hits / misses: keyspace counters; a lookup asks for 2 keys, the customer's tier assignment and the tier definitions)");
    let noisy = r
        .runs
        .iter()
        .flatten()
        .any(|p| p.usage.other_cpu / p.usage.wall > 0.1);
    if noisy {
        println!(
            "  WARNING: other processes used more than 0.1 CPU during a run: figures disturbed"
        );
    }
    let [pc, cc, pn, cn] = [0, 1, 2, 3].map(|n| r.runs[n].as_ref());
    let rate = |p: &PhaseRun| p.ok as f64 / p.elapsed;
    for (what, with, without) in [("phone", pc, pn), ("card", cc, cn)] {
        if let (Some(a), Some(b)) = (with, without) {
            println!(
                "  {what}: cache / no cache = {:.2}x lookups/s",
                rate(a) / rate(b)
            );
        }
    }
    for (kind, count) in w.error_kinds.iter().take(5) {
        println!("  warm-up error x{count}: {kind}");
    }
    for (n, run) in r.runs.iter().enumerate() {
        if let Some(p) = run {
            for (kind, count) in p.error_kinds.iter().take(5) {
                println!("  {} error x{count}: {kind}", header(run, n));
            }
        }
    }
    println!("  total run time {:.1} s", r.total.as_secs_f64());
}
