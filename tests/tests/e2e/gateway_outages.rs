//! The gateway with each dependency stopped in turn: cards-svc, rules-svc, ledger-svc and the
//! gateway run as separate processes on PostgreSQL (a database each), cards-svc with Redis. A
//! dependency killed with SIGKILL makes the checkout answer UNAVAILABLE DEPENDENCY_UNAVAILABLE
//! naming it, within the dependency timeout, and book nothing (never a zero discount or a
//! success without it); once it is back, the very same Confirm (same request id) books exactly
//! once. Redis killed under cards-svc changes nothing for the checkout.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, Buyer, CheckoutState};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_proto::types::{BasketLine, IdentifierInput};
use kopilka_runtime::status::reason_of;
use kopilka_tests::gateway::{authed, seed_merchant, SeededMerchant};
use kopilka_tests::processes::{binaries, ServiceProcess};
use kopilka_tests::{free_port, TempPostgres, TempRedis};
use rust_decimal::Decimal;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The gateway's budget per dependency call (KOPILKA_DEPENDENCY_TIMEOUT_MS).
const DEPENDENCY_TIMEOUT_MS: u64 = 1000;
/// A call that takes longer than this is a hang, not a slow answer.
const HANG: Duration = Duration::from_secs(10);

const HEAD: &str = "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n";
const FLAT_5: &str = "rules:\n  - id: flat\n    name: flat\n    accrue_percent: {percent: \"5\"}\n";
const PHONE: &str = "+7 912 500-00-01";

/// The four processes and what backs them.
struct Stack {
    cards: ServiceProcess,
    rules: ServiceProcess,
    ledger: ServiceProcess,
    gateway: ServiceProcess,
    redis: TempRedis,
    // Last: the databases outlive the services using them.
    _pg: TempPostgres,
}

impl Stack {
    async fn start() -> Stack {
        kopilka_tests::init_tracing();
        let bins = tokio::task::spawn_blocking(|| {
            let started = Instant::now();
            let bins = binaries(&[
                ("cards-svc", "cards-svc"),
                ("rules-svc", "rules-svc"),
                ("ledger-svc", "ledger-svc"),
                ("gateway", "gateway"),
            ]);
            eprintln!("binaries ready in {:?}", started.elapsed());
            <[PathBuf; 4]>::try_from(bins).expect("four binaries")
        });
        let pg = tokio::task::spawn_blocking(TempPostgres::start);
        let redis = tokio::task::spawn_blocking(TempRedis::start);
        let [cards_bin, rules_bin, ledger_bin, gateway_bin] = bins.await.expect("binaries");
        let pg = pg.await.expect("start PostgreSQL");
        let redis = redis.await.expect("start Redis");
        let (cards_port, rules_port, ledger_port, gateway_port) =
            (free_port(), free_port(), free_port(), free_port());
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let common = |db: String| {
            vec![
                ("KOPILKA_DATABASE_URL", db),
                ("KOPILKA_LOG_FORMAT", "json".to_owned()),
                ("KOPILKA_SHUTDOWN_GRACE", "0".to_owned()),
            ]
        };

        let mut env = common(pg.create_database("cards").await);
        env.push(("KOPILKA_REDIS_URL", redis.url()));
        env.push(("KOPILKA_LEDGER_URL", url(ledger_port)));
        let cards = ServiceProcess::spawn(cards_bin, cards_port, &env);
        let mut env = common(pg.create_database("rules").await);
        env.push(("KOPILKA_CARDS_URL", url(cards_port)));
        env.push(("KOPILKA_RULES_CHANGE_POLL_MS", "200".to_owned()));
        let rules = ServiceProcess::spawn(rules_bin, rules_port, &env);
        let ledger = ServiceProcess::spawn(
            ledger_bin,
            ledger_port,
            &common(pg.create_database("ledger").await),
        );
        let mut env = common(pg.create_database("gateway").await);
        env.push(("KOPILKA_CARDS_URL", url(cards_port)));
        env.push(("KOPILKA_RULES_URL", url(rules_port)));
        env.push(("KOPILKA_LEDGER_URL", url(ledger_port)));
        env.push((
            "KOPILKA_DEPENDENCY_TIMEOUT_MS",
            DEPENDENCY_TIMEOUT_MS.to_string(),
        ));
        env.push(("KOPILKA_TIER_JOB", "false".to_owned()));
        let gateway = ServiceProcess::spawn(gateway_bin, gateway_port, &env);

        let mut stack = Stack {
            cards,
            rules,
            ledger,
            gateway,
            redis,
            _pg: pg,
        };
        stack.cards.wait_ready().await;
        stack.rules.wait_ready().await;
        stack.ledger.wait_ready().await;
        stack.gateway.wait_ready().await;
        stack
    }

    fn gateway_db_url(&self) -> String {
        self._pg.url("gateway")
    }
}

struct Till {
    m: SeededMerchant,
    checkout: CheckoutServiceClient<Channel>,
    customers: CustomerServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    programs: ProgramServiceClient<Channel>,
}

impl Till {
    async fn open(stack: &Stack, merchant_id: &str) -> Till {
        let db = kopilka_runtime::Db::connect(&stack.gateway_db_url(), 2, gateway::MIGRATIONS)
            .await
            .expect("the gateway's database");
        let m = seed_merchant(&db, merchant_id).await;
        Till {
            m,
            checkout: CheckoutServiceClient::new(stack.gateway.channel()),
            customers: CustomerServiceClient::new(stack.gateway.channel()),
            ledger: LedgerServiceClient::new(stack.ledger.channel()),
            programs: ProgramServiceClient::new(stack.rules.channel()),
        }
    }

    /// Drafts, publishes and activates `rules_yaml` now.
    async fn program(&mut self, rules_yaml: &str) {
        let program = rules_svc::document::from_yaml(&format!("{HEAD}{rules_yaml}"))
            .expect("a valid program document");
        let merchant_id = self.m.merchant_id.clone();
        let draft = self
            .programs
            .create_draft(rules_pb::CreateDraftRequest {
                merchant_id: merchant_id.clone(),
                request_id: "draft".into(),
                source: Some(rules_pb::create_draft_request::Source::Program(program)),
                comment: String::new(),
                created_by: "test".into(),
            })
            .await
            .expect("draft")
            .into_inner();
        let version = draft.version.unwrap().version;
        self.programs
            .publish_version(rules_pb::PublishVersionRequest {
                merchant_id: merchant_id.clone(),
                request_id: "publish".into(),
                version,
                ..Default::default()
            })
            .await
            .expect("published");
        self.programs
            .activate_version(rules_pb::ActivateVersionRequest {
                merchant_id,
                request_id: "activate".into(),
                version,
                activate_at: None,
                requested_by: "test".into(),
            })
            .await
            .expect("activated");
    }

    async fn register(&mut self, phone: &str) -> String {
        let request = gw::RegisterCustomerRequest {
            request_id: format!(
                "register-{}",
                phone.replace(|c: char| !c.is_ascii_digit(), "")
            ),
            phone: phone.into(),
            details: Some(gw::CustomerDetails {
                first_name: "Ирина".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        within(
            "RegisterCustomer",
            self.customers
                .register_customer(authed(request, &self.m.terminal_key)),
        )
        .await
        .expect("registered")
        .into_inner()
        .customer
        .expect("a customer")
        .customer_id
    }

    /// Available plus pending points, read from ledger-svc directly.
    async fn points(&mut self, customer_id: &str) -> Decimal {
        let balance = self
            .ledger
            .get_balance(ledger_pb::GetBalanceRequest {
                merchant_id: self.m.merchant_id.clone(),
                customer_id: customer_id.into(),
                ..Default::default()
            })
            .await
            .expect("balance")
            .into_inner()
            .balance
            .unwrap();
        dec(&balance.available) + dec(&balance.pending)
    }

    async fn calculate(&mut self, buyer: Option<Buyer>) -> Result<gw::Calculation, Status> {
        let request = gw::CalculateRequest {
            buyer,
            lines: one("1000.00"),
            ..Default::default()
        };
        within(
            "Calculate",
            self.checkout
                .calculate(authed(request, &self.m.terminal_key)),
        )
        .await
        .map(|r| r.into_inner().calculation.expect("a calculation"))
    }

    async fn confirm(
        &mut self,
        request_id: &str,
        receipt_id: &str,
    ) -> Result<gw::ConfirmResponse, Status> {
        let request = gw::ConfirmRequest {
            request_id: request_id.into(),
            receipt_id: receipt_id.into(),
            buyer: phone(PHONE),
            lines: one("1000.00"),
            ..Default::default()
        };
        within(
            "Confirm",
            self.checkout.confirm(authed(request, &self.m.terminal_key)),
        )
        .await
        .map(|r| r.into_inner())
    }

    /// Confirm retried while it answers UNAVAILABLE (a dependency just restarted: the
    /// gateway's channel reconnects), for at most 15 s; the first other answer.
    async fn confirm_after_restart(
        &mut self,
        request_id: &str,
        receipt_id: &str,
    ) -> Result<gw::ConfirmResponse, Status> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer = self.confirm(request_id, receipt_id).await;
            match &answer {
                Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    eprintln!("Confirm {request_id} after the restart: {attempts} attempt(s)");
                    return answer;
                }
            }
        }
    }

    async fn get_checkout(&mut self, receipt_id: &str) -> Result<gw::Checkout, Status> {
        let request = gw::GetCheckoutRequest {
            receipt_id: receipt_id.into(),
        };
        within(
            "GetCheckout",
            self.checkout
                .get_checkout(authed(request, &self.m.terminal_key)),
        )
        .await
        .map(|r| r.into_inner().checkout.expect("a checkout"))
    }
}

/// `call`, which must answer within [`HANG`]; prints how long it took.
async fn within<T>(what: &str, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let started = Instant::now();
    let answer = tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {HANG:?}"));
    let outcome = match &answer {
        Ok(_) => "OK".to_owned(),
        Err(s) => format!("{:?} {}", s.code(), reason_of(s).unwrap_or_default()),
    };
    eprintln!("{what}: {outcome} in {:?}", started.elapsed());
    answer
}

/// UNAVAILABLE DEPENDENCY_UNAVAILABLE with metadata dependency = `dependency`.
#[track_caller]
fn assert_dependency_unavailable<T: std::fmt::Debug>(answer: Result<T, Status>, dependency: &str) {
    let status = answer.expect_err("an answer without the dependency");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("ErrorInfo expected: {status:?}"));
    assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE", "{status:?}");
    assert_eq!(
        info.metadata.get("dependency").map(String::as_str),
        Some(dependency),
        "{status:?}"
    );
}

fn dec(s: &str) -> Decimal {
    if s.is_empty() {
        return Decimal::ZERO;
    }
    Decimal::from_str(s).unwrap_or_else(|_| panic!("a decimal: {s:?}"))
}

fn phone(raw: &str) -> Option<Buyer> {
    Some(Buyer {
        who: Some(Who::Identifier(IdentifierInput {
            raw: raw.into(),
            kind_hint: 0,
        })),
    })
}

fn one(price: &str) -> Vec<BasketLine> {
    vec![BasketLine {
        line_id: "1".into(),
        product_id: "p-1".into(),
        name: "product 1".into(),
        category_ids: vec!["food".into()],
        unit_price: price.into(),
        quantity: "1".into(),
        ..Default::default()
    }]
}

/// A confirmed receipt of 1 000.00 accruing 5 %.
#[track_caller]
fn assert_booked(answer: &gw::ConfirmResponse, receipt_id: &str) {
    let checkout = answer.checkout.as_ref().expect("a checkout");
    assert_eq!(checkout.receipt_id, receipt_id);
    assert_eq!(checkout.state(), CheckoutState::Confirmed);
    let summary = checkout
        .receipt
        .as_ref()
        .and_then(|r| r.summary.as_ref())
        .expect("a receipt summary");
    assert_eq!(dec(&summary.points_accrued), Decimal::from(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dependency_killed_in_turn() {
    let mut stack = Stack::start().await;
    let mut till = Till::open(&stack, "outage").await;
    till.program(FLAT_5).await;
    let customer = till.register(PHONE).await;

    // All up: 5 % of 1 000.
    let calculation = till.calculate(phone(PHONE)).await.expect("calculated");
    let totals = calculation.totals.as_ref().unwrap();
    assert_eq!(dec(&totals.points_accrued), Decimal::from(50));
    let confirmed = till.confirm("c-0", "rcpt-0").await.expect("confirmed");
    assert_booked(&confirmed, "rcpt-0");
    let mut points = till.points(&customer).await;

    // ---- rules-svc killed: no calculation at all, never a zero discount; nothing booked.
    stack.rules.kill();
    assert_dependency_unavailable(till.calculate(phone(PHONE)).await, "rules-svc");
    assert_dependency_unavailable(till.calculate(None).await, "rules-svc");
    assert_dependency_unavailable(till.confirm("c-rules", "rcpt-rules").await, "rules-svc");
    assert_eq!(till.points(&customer).await, points, "nothing booked");
    let missing = till.get_checkout("rcpt-rules").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    stack.rules.restart().await;
    let booked = till
        .confirm_after_restart("c-rules", "rcpt-rules")
        .await
        .expect("the same Confirm succeeds once rules-svc is back");
    assert_booked(&booked, "rcpt-rules");
    let again = till
        .confirm("c-rules", "rcpt-rules")
        .await
        .expect("repeated");
    assert_eq!(again.checkout, booked.checkout, "the same answer");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked once");
    let stored = till.get_checkout("rcpt-rules").await.expect("stored");
    assert_eq!(stored.state(), CheckoutState::Confirmed);

    // ---- ledger-svc killed: the purchase cannot be booked; once it is back, exactly once.
    stack.ledger.kill();
    // Calculate shows the buyer's balance: without ledger-svc it may refuse, naming it.
    if let Err(status) = till.calculate(phone(PHONE)).await {
        assert_dependency_unavailable::<()>(Err(status), "ledger-svc");
    }
    assert_dependency_unavailable(till.confirm("c-ledger", "rcpt-ledger").await, "ledger-svc");
    stack.ledger.restart().await;
    assert_eq!(till.points(&customer).await, points, "nothing booked");
    let booked = till
        .confirm_after_restart("c-ledger", "rcpt-ledger")
        .await
        .expect("the same Confirm succeeds once ledger-svc is back");
    assert_booked(&booked, "rcpt-ledger");
    let again = till
        .confirm("c-ledger", "rcpt-ledger")
        .await
        .expect("repeated");
    assert_eq!(again.checkout, booked.checkout, "the same answer");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked exactly once");

    // ---- cards-svc killed: identified buyers cannot be served.
    stack.cards.kill();
    assert_dependency_unavailable(till.calculate(phone(PHONE)).await, "cards-svc");
    assert_dependency_unavailable(till.confirm("c-cards", "rcpt-cards").await, "cards-svc");
    assert_eq!(till.points(&customer).await, points, "nothing booked");
    let anonymous = till.calculate(None).await;
    eprintln!(
        "anonymous Calculate without cards-svc: {:?}",
        anonymous.as_ref().map(|_| "OK").map_err(|s| s.code())
    );
    stack.cards.restart().await;
    let booked = till
        .confirm_after_restart("c-cards", "rcpt-cards")
        .await
        .expect("the same Confirm succeeds once cards-svc is back");
    assert_booked(&booked, "rcpt-cards");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked once");

    // ---- Redis killed (SIGKILL) under cards-svc: the checkout goes on without the cache.
    // cards-svc keeps the merchant's tiers in Redis: there is something there to miss.
    let mut redis = redis::Client::open(stack.redis.url())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut redis)
        .await
        .expect("DBSIZE");
    assert!(keys > 0, "cards-svc cached nothing in Redis");
    drop(redis);
    stack.redis.stop();
    let calculation = till
        .calculate(phone(PHONE))
        .await
        .expect("Calculate without Redis");
    assert_eq!(
        dec(&calculation.totals.as_ref().unwrap().points_accrued),
        Decimal::from(50)
    );
    let booked = till
        .confirm("c-redis", "rcpt-redis")
        .await
        .expect("Confirm without Redis");
    assert_booked(&booked, "rcpt-redis");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked once");
    assert!(stack.cards.is_running(), "cards-svc survives Redis dying");
    let logs = stack.cards.logs();
    let fallbacks = logs.lines().filter(|l| l.contains("Redis")).count();
    eprintln!("cards-svc log lines about Redis after it died: {fallbacks}");
}
