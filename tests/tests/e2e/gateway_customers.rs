//! CustomerService through the gateway and the monthly tier job, on SQLite and on PostgreSQL +
//! Redis: registration at the register with the 100-point start bonus for 14 days granted once
//! (the same request repeated, the same phone under another request id), the referrer's reward,
//! phones in other scripts refused on field "phone", merchants kept apart, terminal keys shown
//! masked phones only; and the window-tier recalculation (R13) moving customers up and down
//! once per month, with two concurrent runs doing it once.

use std::str::FromStr;

use chrono::{Duration, Utc};
use kopilka_proto::cards as cards_pb;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_proto::types::{BasketLine, IdentifierInput, IdentifierKind};
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_runtime::timestamps;
use kopilka_tests::gateway::{authed, SeededMerchant};
use kopilka_tests::Channel;
use kopilka_tests::{on_both_backends, TestSuite};
use rust_decimal::Decimal;
use tonic::{Code, Status};

on_both_backends!(
    registration_grants_the_start_bonus_once,
    referrers_are_rewarded_and_bad_phones_refused,
    merchants_never_see_each_others_customers,
    tier_job_moves_window_tiers_once_a_month,
    failed_tier_decisions_are_retried,
);

// ---- helpers ----------------------------------------------------------------------------------

/// 100 start points for 14 days (30 to the referrer), 5 % back, and tiers by the last 6 months'
/// turnover: SILVER from 20 000, down to what qualifies at each recalculation.
const PROGRAM: &str = r#"name: gateway customers
settings: {currency: RUB, time_zone: Europe/Moscow}
rules:
  - id: start-bonus
    name: Start bonus, 100 points valid 14 days
    points_terms: {valid_days: 14}
    action_reward:
      action: ACTION_KIND_REGISTRATION
      points: "100"
      once_per_customer: true
      referrer_rewards:
        - {level: 1, points: "30"}
  - id: base-points
    name: 5 % back
    accrue_percent: {percent: "5"}
tier_progression:
  levels:
    - {tier_code: BASIC}
    - tier_code: SILVER
      window_turnover: {lookback: {months: 6}, at_least: "20000"}
  downgrade: TIER_DOWNGRADE_TO_QUALIFIED
"#;

struct Shop {
    m: SeededMerchant,
    customers: CustomerServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    programs: ProgramServiceClient<Channel>,
    tiers: TierServiceClient<Channel>,
}

impl Shop {
    async fn open(suite: &TestSuite, merchant_id: &str) -> Shop {
        Shop {
            m: suite.seed_merchant(merchant_id).await,
            customers: CustomerServiceClient::new(suite.channel(suite.addrs.gateway)),
            ledger: LedgerServiceClient::new(suite.channel(suite.addrs.ledger)),
            programs: ProgramServiceClient::new(suite.channel(suite.addrs.rules)),
            tiers: TierServiceClient::new(suite.channel(suite.addrs.cards)),
        }
    }

    /// BASIC (default) and SILVER in cards-svc, then the program drafted, published, active.
    async fn with_program(suite: &TestSuite, merchant_id: &str) -> Shop {
        let mut shop = Shop::open(suite, merchant_id).await;
        for (code, rank, default) in [("BASIC", 0, true), ("SILVER", 1, false)] {
            shop.tiers
                .upsert_tier(cards_pb::UpsertTierRequest {
                    merchant_id: merchant_id.into(),
                    request_id: format!("tier-{code}"),
                    tier: Some(cards_pb::Tier {
                        code: code.into(),
                        name: format!("Tier {code}"),
                        rank,
                        is_default: default,
                        perks: vec![format!("{code} perk")],
                        ..Default::default()
                    }),
                })
                .await
                .expect("tier upserted");
        }
        let program = rules_svc::document::from_yaml(PROGRAM).expect("a valid program");
        let version = shop
            .programs
            .create_draft(rules_pb::CreateDraftRequest {
                merchant_id: merchant_id.into(),
                request_id: "draft".into(),
                source: Some(rules_pb::create_draft_request::Source::Program(program)),
                comment: String::new(),
                created_by: "test".into(),
            })
            .await
            .expect("draft")
            .into_inner()
            .version
            .unwrap()
            .version;
        shop.programs
            .publish_version(rules_pb::PublishVersionRequest {
                merchant_id: merchant_id.into(),
                request_id: "publish".into(),
                version,
                ..Default::default()
            })
            .await
            .expect("published");
        shop.programs
            .activate_version(rules_pb::ActivateVersionRequest {
                merchant_id: merchant_id.into(),
                request_id: "activate".into(),
                version,
                activate_at: None,
                requested_by: "test".into(),
            })
            .await
            .expect("activated");
        shop
    }

    async fn register_as(
        &self,
        key: &str,
        request_id: &str,
        phone: &str,
        referrer: Option<&str>,
    ) -> Result<gw::RegisterCustomerResponse, Status> {
        let details = gw::CustomerDetails {
            first_name: "Ирина".into(),
            last_name: "Смирнова".into(),
            email: "irina@example.ru".into(),
            referrer: referrer.map(|r| IdentifierInput {
                raw: r.into(),
                kind_hint: 0,
            }),
            ..Default::default()
        };
        self.customers
            .clone()
            .register_customer(authed(
                gw::RegisterCustomerRequest {
                    request_id: request_id.into(),
                    phone: phone.into(),
                    details: Some(details),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn register(&self, request_id: &str, phone: &str) -> gw::RegisterCustomerResponse {
        self.register_as(&self.m.terminal_key, request_id, phone, None)
            .await
            .expect("registered")
    }

    async fn lookup(&self, key: &str, raw: &str) -> Result<gw::LookupCustomerResponse, Status> {
        self.customers
            .clone()
            .lookup_customer(authed(
                gw::LookupCustomerRequest {
                    identifier: Some(IdentifierInput {
                        raw: raw.into(),
                        kind_hint: 0,
                    }),
                },
                key,
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn balance(&self, customer_id: &str) -> ledger_pb::Balance {
        self.customers
            .clone()
            .get_balance(authed(
                gw::GetBalanceRequest {
                    customer: Some(gw::get_balance_request::Customer::CustomerId(
                        customer_id.into(),
                    )),
                },
                &self.m.terminal_key,
            ))
            .await
            .expect("balance")
            .into_inner()
            .balance
            .unwrap()
    }

    async fn tier_of(&self, customer_id: &str) -> String {
        self.tiers
            .clone()
            .get_customer_tier(cards_pb::GetCustomerTierRequest {
                merchant_id: self.m.merchant_id.clone(),
                customer_id: customer_id.into(),
            })
            .await
            .expect("customer tier")
            .into_inner()
            .assignment
            .map(|a| a.tier_code)
            .unwrap_or_default()
    }

    async fn tier_history(&self, customer_id: &str) -> Vec<cards_pb::TierAssignment> {
        self.customers
            .clone()
            .get_tier_history(authed(
                gw::GetTierHistoryRequest {
                    customer_id: customer_id.into(),
                    ..Default::default()
                },
                &self.m.admin_key,
            ))
            .await
            .expect("tier history")
            .into_inner()
            .assignments
    }

    /// A confirmed purchase of `amount` booked straight in the ledger.
    async fn purchase(&self, customer_id: &str, receipt_id: &str, amount: &str) {
        self.ledger
            .clone()
            .record_receipt(ledger_pb::RecordReceiptRequest {
                merchant_id: self.m.merchant_id.clone(),
                request_id: format!("rec-{receipt_id}"),
                receipt: Some(ledger_pb::ReceiptInput {
                    receipt_id: receipt_id.into(),
                    customer_id: customer_id.into(),
                    store_id: self.m.store_id.clone(),
                    terminal_id: self.m.terminal_id.clone(),
                    currency: "RUB".into(),
                    occurred_at: Some(timestamps::to_proto(Utc::now() - Duration::days(10))),
                    lines: vec![ledger_pb::ReceiptLine {
                        line: Some(BasketLine {
                            line_id: "1".into(),
                            product_id: "p1".into(),
                            name: "membership".into(),
                            unit_price: amount.into(),
                            quantity: "1".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            })
            .await
            .expect("receipt recorded");
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|_| panic!("a decimal: {s:?}"))
}

fn customer_id(r: &gw::RegisterCustomerResponse) -> String {
    r.customer.as_ref().unwrap().customer_id.clone()
}

/// A gateway of our own on the suite's database and dependencies, to run the tier job by hand.
fn gateway_of(suite: &TestSuite) -> gateway::Gateway {
    gateway_with_rules_at(suite, &format!("http://{}", suite.addrs.rules))
}

/// Like [`gateway_of`], with rules-svc at `rules_url` (a closed port: rules-svc is down).
fn gateway_with_rules_at(suite: &TestSuite, rules_url: &str) -> gateway::Gateway {
    let mut config = gateway::Config {
        cards_url: format!("http://{}", suite.addrs.cards),
        rules_url: rules_url.to_owned(),
        ledger_url: format!("http://{}", suite.addrs.ledger),
        tier_job: false,
        ..Default::default()
    };
    config.service.service_token = Some(kopilka_tests::service_token());
    gateway::Gateway::new(config, suite.gateway_db.clone()).expect("a gateway")
}

// ---- scenarios --------------------------------------------------------------------------------

async fn registration_grants_the_start_bonus_once(suite: TestSuite) {
    let shop = Shop::with_program(&suite, "m-reg").await;

    // At the register: a new customer with 100 points for 14 days, the balance showing them.
    let first = shop.register("reg-1", "8 (912) 345-67-89").await;
    let summary = first.customer.clone().unwrap();
    assert!(summary.registered_now);
    assert_eq!(summary.display_name, "Ирина С.");
    assert_eq!(summary.tier_code, "BASIC");
    assert_eq!(summary.perks, vec!["BASIC perk".to_owned()]);
    assert!(!summary.phone_masked.contains("9123456789"), "{summary:?}");
    // Kopilka's one phone mask: country code, the first 3 and last 2 national digits.
    assert_eq!(summary.phone_masked, "+7 912 ***-**-89");
    let bonus = first.start_bonus.clone().unwrap();
    assert_eq!(dec(&bonus.points), dec("100"));
    assert_eq!(bonus.rule_id, "start-bonus");
    let registered_at = timestamps::from_proto(&summary.registered_at.unwrap()).unwrap();
    let expires_at = timestamps::from_proto(&bonus.expires_at.unwrap()).unwrap();
    assert_eq!(expires_at - registered_at, Duration::days(14));
    let balance = first.balance.clone().unwrap();
    assert_eq!(dec(&balance.available), dec("100"));
    let id = customer_id(&first);
    let read = shop.balance(&id).await;
    assert_eq!(dec(&read.available), dec("100"));
    assert_eq!(read.expiring.len(), 1, "{read:?}");
    assert_eq!(dec(&read.expiring[0].amount), dec("100"));
    // The ledger keeps microseconds.
    let expiry = timestamps::from_proto(read.expiring[0].expires_at.as_ref().unwrap()).unwrap();
    assert!(
        (expiry - expires_at).abs() < Duration::milliseconds(1),
        "{expiry} {expires_at}"
    );

    // The same request again: the first answer, no second bonus.
    let again = shop.register("reg-1", "8 (912) 345-67-89").await;
    assert_eq!(again, first);
    assert_eq!(dec(&shop.balance(&id).await.available), dec("100"));

    // Another request id, the same phone in another notation: that customer, nothing granted.
    let other = shop.register("reg-2", "+79123456789").await;
    assert_eq!(customer_id(&other), id);
    assert!(!other.customer.as_ref().unwrap().registered_now);
    assert_eq!(dec(&other.start_bonus.unwrap().points), Decimal::ZERO);
    assert_eq!(dec(&other.balance.unwrap().available), dec("100"));
    assert_eq!(dec(&shop.balance(&id).await.available), dec("100"));

    // Found by phone at the register, with the phone masked for the terminal key.
    let found = shop
        .lookup(&shop.m.terminal_key, "+7 912 345 67 89")
        .await
        .unwrap();
    let seen = found.customer.unwrap();
    assert_eq!(seen.customer_id, id);
    assert_eq!(seen.input_kind, IdentifierKind::Phone as i32);
    assert!(!format!("{seen:?}").contains("9123456789"), "{seen:?}");
    assert_eq!(dec(&found.balance.unwrap().available), dec("100"));

    // A terminal key never gets the profile (full phone, e-mail); an admin key does.
    let as_terminal = shop
        .customers
        .clone()
        .get_customer(authed(
            gw::GetCustomerRequest {
                customer_id: id.clone(),
            },
            &shop.m.terminal_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(as_terminal.profile.is_none());
    assert!(!format!("{as_terminal:?}").contains("irina@"));
    let as_admin = shop
        .customers
        .clone()
        .get_customer(authed(
            gw::GetCustomerRequest {
                customer_id: id.clone(),
            },
            &shop.m.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        as_admin.profile.unwrap().profile.unwrap().phone,
        "+79123456789"
    );

    // The history (an admin's view) shows the one gift.
    let history = shop
        .customers
        .clone()
        .list_history(authed(
            gw::ListHistoryRequest {
                customer_id: id.clone(),
                ..Default::default()
            },
            &shop.m.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.transactions.len(), 1, "{history:?}");

    // Admin-only calls refuse terminal keys; an unknown card is CARD_NOT_FOUND.
    let refused = shop
        .customers
        .clone()
        .get_tier_history(authed(
            gw::GetTierHistoryRequest {
                customer_id: id.clone(),
                ..Default::default()
            },
            &shop.m.terminal_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let unknown = shop
        .lookup(&shop.m.terminal_key, "+79990000000")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(reason_of(&unknown).as_deref(), Some("CARD_NOT_FOUND"));
    let unimplemented = shop
        .customers
        .clone()
        .list_registration_links(authed(
            gw::ListRegistrationLinksRequest::default(),
            &shop.m.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), Code::Unimplemented);
}

async fn referrers_are_rewarded_and_bad_phones_refused(suite: TestSuite) {
    let shop = Shop::with_program(&suite, "m-ref").await;
    let a = shop.register("reg-a", "+79120000001").await;
    let a_id = customer_id(&a);
    assert_eq!(dec(&shop.balance(&a_id).await.available), dec("100"));

    // B names A's phone: B gets the start bonus, A the referrer's 30.
    let b = shop
        .register_as(
            &shop.m.terminal_key,
            "reg-b",
            "+79120000002",
            Some("8 912 000-00-01"),
        )
        .await
        .expect("B registered");
    assert!(b.customer.as_ref().unwrap().registered_now);
    assert_eq!(dec(&b.start_bonus.as_ref().unwrap().points), dec("100"));
    assert_eq!(dec(&shop.balance(&a_id).await.available), dec("130"));
    // B again under another id: nothing more for anyone.
    shop.register_as(
        &shop.m.terminal_key,
        "reg-b-2",
        "+79120000002",
        Some("+79120000001"),
    )
    .await
    .expect("B found");
    assert_eq!(dec(&shop.balance(&a_id).await.available), dec("130"));

    // A's referrals list B; B's chain names A.
    let listed = shop
        .customers
        .clone()
        .list_referrals(authed(
            gw::ListReferralsRequest {
                customer_id: a_id.clone(),
                ..Default::default()
            },
            &shop.m.admin_key,
        ))
        .await
        .expect("A's referrals")
        .into_inner();
    assert_eq!(listed.total_referrals, 1);
    assert_eq!(listed.referrals[0].customer_id, customer_id(&b));
    let chain = shop
        .customers
        .clone()
        .list_referrals(authed(
            gw::ListReferralsRequest {
                customer_id: customer_id(&b),
                ..Default::default()
            },
            &shop.m.admin_key,
        ))
        .await
        .expect("B's referrals")
        .into_inner();
    assert_eq!(chain.referrers.len(), 1);
    assert_eq!(chain.referrers[0].customer_id, a_id);

    // An unknown referrer fails the registration.
    let no_referrer = shop
        .register_as(
            &shop.m.terminal_key,
            "reg-c",
            "+79120000003",
            Some("+79129999999"),
        )
        .await
        .unwrap_err();
    assert_eq!(no_referrer.code(), Code::NotFound);
    assert_eq!(
        reason_of(&no_referrer).as_deref(),
        Some("REFERRER_NOT_FOUND")
    );

    // Digits of other scripts, letters, too many cards: INVALID_ARGUMENT with the field.
    for phone in ["+٧٩١٢٣٤٥٦٧٨٩", "+7912３456789", "+7912abc6789"] {
        let bad = shop
            .register_as(&shop.m.terminal_key, "reg-bad", phone, None)
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{phone}");
        let fields: Vec<String> = field_violations_of(&bad)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec!["phone".to_owned()], "{phone}");
    }
    let cards: Vec<IdentifierInput> = (0..6)
        .map(|i| IdentifierInput {
            raw: format!("10000{i}"),
            kind_hint: 0,
        })
        .collect();
    let too_many = shop
        .customers
        .clone()
        .register_customer(authed(
            gw::RegisterCustomerRequest {
                request_id: "reg-cards".into(),
                phone: "+79120000004".into(),
                cards,
                ..Default::default()
            },
            &shop.m.terminal_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(field_violations_of(&too_many)
        .iter()
        .any(|(f, _)| f == "cards"));
    // Nothing was created by the refused calls.
    let missing = shop
        .lookup(&shop.m.terminal_key, "+79120000004")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

async fn merchants_never_see_each_others_customers(suite: TestSuite) {
    let a = Shop::with_program(&suite, "m-a").await;
    let b = Shop::open(&suite, "m-b").await;
    let ira = a.register("reg-1", "+79125550001").await;
    let id = customer_id(&ira);

    // B looks the phone up, or the id: NOT_FOUND.
    let by_phone = b
        .lookup(&b.m.terminal_key, "+79125550001")
        .await
        .unwrap_err();
    assert_eq!(by_phone.code(), Code::NotFound);
    let by_id = b
        .customers
        .clone()
        .get_customer(authed(
            gw::GetCustomerRequest {
                customer_id: id.clone(),
            },
            &b.m.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound);
    let history = b
        .customers
        .clone()
        .list_history(authed(
            gw::ListHistoryRequest {
                customer_id: id.clone(),
                ..Default::default()
            },
            &b.m.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(history.code(), Code::NotFound);
    let gift = b
        .customers
        .clone()
        .grant_gift(authed(
            gw::GrantGiftRequest {
                request_id: "gift-1".into(),
                customer_id: id.clone(),
                points: "500".into(),
                valid_days: 7,
                ..Default::default()
            },
            &b.m.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(gift.code(), Code::NotFound);
    assert_eq!(dec(&a.balance(&id).await.available), dec("100"));

    // B registering the same phone makes B's own customer (B has no program: no bonus).
    let own = b.register("reg-1", "+79125550001").await;
    assert_ne!(customer_id(&own), id);
    assert!(own.customer.unwrap().registered_now);
    assert_eq!(dec(&own.start_bonus.unwrap().points), Decimal::ZERO);

    // No key, or B's key on A's customer by card, gets nothing.
    let anonymous = a
        .customers
        .clone()
        .lookup_customer(gw::LookupCustomerRequest {
            identifier: Some(IdentifierInput {
                raw: "+79125550001".into(),
                kind_hint: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

async fn tier_job_moves_window_tiers_once_a_month(suite: TestSuite) {
    let shop = Shop::with_program(&suite, "m-tiers").await;
    // X spends 25 000 (window qualifies for SILVER); Y was made SILVER by hand without a lock
    // and bought nothing (falls back to BASIC); Z is locked on SILVER (stays).
    let x = customer_id(&shop.register("reg-x", "+79126660001").await);
    let y = customer_id(&shop.register("reg-y", "+79126660002").await);
    let z = customer_id(&shop.register("reg-z", "+79126660003").await);
    shop.purchase(&x, "r-x-1", "25000").await;
    for (who, lock) in [(&y, false), (&z, true)] {
        shop.customers
            .clone()
            .assign_tier(authed(
                gw::AssignTierRequest {
                    request_id: format!("assign-{who}"),
                    customer_id: who.clone(),
                    tier_code: "SILVER".into(),
                    reason: "promo".into(),
                    lock,
                },
                &shop.m.admin_key,
            ))
            .await
            .expect("assigned by hand");
    }
    // Another merchant without a program: claimed and finished with nothing to do.
    Shop::open(&suite, "m-none").await;

    // Two replicas at once: the month runs once per merchant.
    let gw_a = gateway_of(&suite);
    let gw_b = gateway_of(&suite);
    let now = Utc::now();
    let (a, b) = tokio::join!(
        gateway::tier_job::run_due(&gw_a, now, "replica-a"),
        gateway::tier_job::run_due(&gw_b, now, "replica-b"),
    );
    let (a, b) = (a.expect("run a"), b.expect("run b"));
    let runs: Vec<_> = a.runs.iter().chain(b.runs.iter()).collect();
    let tiers_runs: Vec<_> = runs.iter().filter(|r| r.merchant_id == "m-tiers").collect();
    assert_eq!(tiers_runs.len(), 1, "{a:?} {b:?}");
    assert_eq!(
        runs.iter().filter(|r| r.merchant_id == "m-none").count(),
        1,
        "{a:?} {b:?}"
    );
    let run = tiers_runs[0];
    assert!(run.finished, "{run:?}");
    assert_eq!(run.customers, 3, "{run:?}");
    assert_eq!(
        (run.upgraded, run.downgraded, run.failed),
        (1, 1, 0),
        "{run:?}"
    );
    assert_eq!(a.already_claimed + b.already_claimed, 2, "{a:?} {b:?}");

    assert_eq!(shop.tier_of(&x).await, "SILVER");
    assert_eq!(shop.tier_of(&y).await, "BASIC");
    assert_eq!(shop.tier_of(&z).await, "SILVER");
    let history = shop.tier_history(&x).await;
    let latest = &history[0];
    assert_eq!(latest.tier_code, "SILVER");
    assert_eq!(latest.source, cards_pb::TierSource::Rule as i32);
    assert_eq!(latest.rule_id, "tier_progression.SILVER");
    assert!(latest.program_version > 0);

    // Again in the same month: claimed already, nothing changes.
    let history_len = (
        shop.tier_history(&x).await.len(),
        shop.tier_history(&y).await.len(),
    );
    let again = gateway::tier_job::run_due(&gw_a, Utc::now(), "replica-a")
        .await
        .expect("run again");
    assert!(again.runs.is_empty(), "{again:?}");
    assert_eq!(again.already_claimed, 2);
    assert_eq!(
        (
            shop.tier_history(&x).await.len(),
            shop.tier_history(&y).await.len()
        ),
        history_len
    );
}

async fn failed_tier_decisions_are_retried(suite: TestSuite) {
    let shop = Shop::with_program(&suite, "m-retry").await;
    let x = customer_id(&shop.register("reg-x", "+79126660011").await);
    // Two decisions Confirm could not make after booking (rules-svc was down): X's purchase of
    // 25 000 (SILVER's threshold), and one by a customer who is gone since.
    let decision = |customer_id: &str| gateway::tier_retry::Pending {
        request: rules_pb::DecideTierRequest {
            merchant_id: "m-retry".into(),
            program: None,
            customer: Some(rules_pb::CustomerContext {
                customer_id: customer_id.into(),
                tier: Some(rules_pb::CustomerTier {
                    code: "BASIC".into(),
                    rank: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            trigger: rules_pb::TierTrigger::Purchase as i32,
            purchase_amount: "25000".into(),
            decided_at: Some(timestamps::to_proto(Utc::now())),
        },
        error: "rules-svc is unavailable".into(),
    };
    let gw = gateway_of(&suite);
    gw.tier_retries
        .keep("m-retry", "r-1", &decision(&x))
        .await
        .unwrap();
    let gone = "0190a000-0000-7000-8000-000000000001";
    gw.tier_retries
        .keep("m-retry", "r-2", &decision(gone))
        .await
        .unwrap();
    assert_eq!(gw.tier_retries.waiting("m-retry").await.unwrap(), 2);

    // Still down: both wait, backing off.
    let down = gateway_with_rules_at(&suite, "http://127.0.0.1:9");
    let now = Utc::now();
    let report = gateway::tier_retry::run_due(&down, now).await.unwrap();
    assert_eq!(report.postponed, 2, "{report:?}");
    assert_eq!(shop.tier_of(&x).await, "BASIC");
    let early = gateway::tier_retry::run_due(&gw, now + Duration::seconds(5)).await;
    assert_eq!(
        early.unwrap(),
        Default::default(),
        "not due before the back-off"
    );

    // Up again: X is upgraded by the rule; the decision for the gone customer is dropped.
    let later = now + Duration::seconds(31);
    let report = gateway::tier_retry::run_due(&gw, later).await.unwrap();
    assert_eq!(
        (
            report.decided,
            report.upgraded,
            report.dropped,
            report.postponed
        ),
        (1, 1, 1, 0),
        "{report:?}"
    );
    assert_eq!(shop.tier_of(&x).await, "SILVER");
    let latest = &shop.tier_history(&x).await[0];
    assert_eq!(latest.source, cards_pb::TierSource::Rule as i32);
    assert_eq!(latest.rule_id, "tier_progression.SILVER");
    assert_eq!(gw.tier_retries.waiting("m-retry").await.unwrap(), 0);

    // Kept again (a replica that retried concurrently): applied once, nothing new in history.
    let history = shop.tier_history(&x).await.len();
    gw.tier_retries
        .keep("m-retry", "r-1", &decision(&x))
        .await
        .unwrap();
    let report = gateway::tier_retry::run_due(&gw, later).await.unwrap();
    assert_eq!(report.decided, 1, "{report:?}");
    assert_eq!(shop.tier_history(&x).await.len(), history);
}
