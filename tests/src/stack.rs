//! The services as separate processes on one PostgreSQL (a database each), cards-svc with
//! Redis, and one or more gateway replicas on one gateway database: for faults a process
//! boundary makes real (SIGKILL, a dependency restarting, two replicas racing).
//!
//! [`Till`] is a register's view of it: a seeded merchant, its terminal key and clients.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::Channel;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, Buyer};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_proto::types::{BasketLine, IdentifierInput};
use kopilka_runtime::status::reason_of;
use rust_decimal::Decimal;
use tonic::{Code, Status};

use crate::gateway::{authed, seed_merchant, SeededMerchant};
use crate::processes::{binaries, ServiceProcess};
use crate::{TempPostgres, TempRedis};

/// The gateway's budget per dependency call (KOPILKA_DEPENDENCY_TIMEOUT_MS).
pub const DEPENDENCY_TIMEOUT_MS: u64 = 1000;
/// A call that takes longer than this is a hang, not a slow answer.
pub const HANG: Duration = Duration::from_secs(10);

const HEAD: &str = "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n";
/// The buyer every [`Till::confirm`] names.
pub const PHONE: &str = "+7 912 500-00-01";

/// The processes and what backs them.
pub struct Stack {
    pub cards: ServiceProcess,
    pub rules: ServiceProcess,
    pub ledger: ServiceProcess,
    /// The first gateway replica.
    pub gateway: ServiceProcess,
    /// More replicas of the gateway on the same database.
    pub replicas: Vec<ServiceProcess>,
    pub redis: TempRedis,
    // Last: the databases outlive the services using them.
    pub pg: TempPostgres,
}

impl Stack {
    /// cards, rules, ledger and one gateway.
    pub async fn start() -> Stack {
        Self::with_replicas(0).await
    }

    /// cards, rules, ledger and `1 + replicas` gateways on one gateway database.
    pub async fn with_replicas(replicas: usize) -> Stack {
        crate::init_tracing();
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
        let common = |db: String| {
            vec![
                ("KOPILKA_DATABASE_URL", db),
                ("KOPILKA_LOG_FORMAT", "json".to_owned()),
                ("KOPILKA_SHUTDOWN_GRACE", "0".to_owned()),
            ]
        };
        let (cards_db, rules_db, ledger_db, gateway_db) = (
            pg.create_database("cards").await,
            pg.create_database("rules").await,
            pg.create_database("ledger").await,
            pg.create_database("gateway").await,
        );

        // One after another, each on a port it has bound (ServiceProcess::launch retries on
        // another when a port is taken first), in the order they name each other: ledger-svc,
        // cards-svc (names ledger-svc), rules-svc (cards-svc), the gateways (all three).
        let ledger = ServiceProcess::launch(ledger_bin, &common(ledger_db)).await;
        let mut env = common(cards_db);
        env.push(("KOPILKA_REDIS_URL", redis.url()));
        env.push(("KOPILKA_LEDGER_URL", ledger.url()));
        let cards = ServiceProcess::launch(cards_bin, &env).await;
        let mut env = common(rules_db);
        env.push(("KOPILKA_CARDS_URL", cards.url()));
        env.push(("KOPILKA_RULES_CHANGE_POLL_MS", "200".to_owned()));
        let rules = ServiceProcess::launch(rules_bin, &env).await;
        let mut env = common(gateway_db);
        env.push(("KOPILKA_CARDS_URL", cards.url()));
        env.push(("KOPILKA_RULES_URL", rules.url()));
        env.push(("KOPILKA_LEDGER_URL", ledger.url()));
        env.push((
            "KOPILKA_DEPENDENCY_TIMEOUT_MS",
            DEPENDENCY_TIMEOUT_MS.to_string(),
        ));
        env.push(("KOPILKA_TIER_JOB", "false".to_owned()));
        // Scenarios ring up receipts faster than a cashier; rate limiting has its own test.
        env.push(("KOPILKA_TERMINAL_RATE_LIMIT", "500".to_owned()));
        let gateway = ServiceProcess::launch(&gateway_bin, &env).await;
        let mut more = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            more.push(ServiceProcess::launch(&gateway_bin, &env).await);
        }

        Stack {
            cards,
            rules,
            ledger,
            gateway,
            replicas: more,
            redis,
            pg,
        }
    }

    /// The gateway replicas' database.
    pub fn gateway_db_url(&self) -> String {
        self.pg.url("gateway")
    }
}

/// A register at one merchant, talking to the first gateway.
pub struct Till {
    pub m: SeededMerchant,
    pub checkout: CheckoutServiceClient<Channel>,
    pub customers: CustomerServiceClient<Channel>,
    pub ledger: LedgerServiceClient<Channel>,
    pub programs: ProgramServiceClient<Channel>,
}

impl Till {
    /// Seeds `merchant_id` (a store, a terminal and its key) and opens clients.
    pub async fn open(stack: &Stack, merchant_id: &str) -> Till {
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
    pub async fn program(&mut self, rules_yaml: &str) {
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

    /// Registers `phone` through the gateway; the customer id.
    pub async fn register(&mut self, phone: &str) -> String {
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
    pub async fn points(&mut self, customer_id: &str) -> Decimal {
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

    pub async fn calculate(&mut self, buyer: Option<Buyer>) -> Result<gw::Calculation, Status> {
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

    pub async fn confirm(
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
    pub async fn confirm_after_restart(
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

    pub async fn get_checkout(&mut self, receipt_id: &str) -> Result<gw::Checkout, Status> {
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
pub async fn within<T>(
    what: &str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
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

/// A decimal string; empty is zero.
pub fn dec(s: &str) -> Decimal {
    if s.is_empty() {
        return Decimal::ZERO;
    }
    Decimal::from_str(s).unwrap_or_else(|_| panic!("a decimal: {s:?}"))
}

/// A buyer named by phone.
pub fn phone(raw: &str) -> Option<Buyer> {
    Some(Buyer {
        who: Some(Who::Identifier(IdentifierInput {
            raw: raw.into(),
            kind_hint: 0,
        })),
    })
}

/// One line of one product at `price`.
pub fn one(price: &str) -> Vec<BasketLine> {
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
