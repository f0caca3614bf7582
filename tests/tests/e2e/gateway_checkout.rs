//! CheckoutService end to end through the gateway, on SQLite and on PostgreSQL + Redis: the seed
//! documents' examples (brackets 3/6/12 %, tier discounts and redemption caps, sale exclusions,
//! tier upgrades at 10 000 and 30 000, the 100-point start bonus for 14 days, referral rewards),
//! every step repeated and duplicated, concurrent redemptions on one card, merchants kept apart,
//! bad input refused with field paths, and offline receipts booked once under the program of
//! their sale time.

use std::str::FromStr;

use chrono::{Duration, Utc};
use kopilka_proto::cards as cards_pb;
use kopilka_proto::cards::tier_service_client::TierServiceClient;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, Buyer, CheckoutState};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::ledger::ledger_service_client::LedgerServiceClient;
use kopilka_proto::rules as rules_pb;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_proto::types::{BasketLine, IdentifierInput};
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_runtime::timestamps;
use kopilka_tests::gateway::{authed, SeededMerchant};
use kopilka_tests::Channel;
use kopilka_tests::{on_both_backends, TestSuite};
use rust_decimal::Decimal;
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_backends!(
    seed_examples_through_the_gateway,
    every_step_is_idempotent_and_states_are_kept,
    concurrent_redemptions_on_one_card_never_overspend,
    merchants_are_isolated_and_scopes_enforced,
    bad_input_is_refused_with_field_paths_and_changes_nothing,
    offline_receipts_are_booked_once_under_the_program_of_their_time,
    happy_hours_birthday_frequency_and_turnover_through_the_gateway,
);

// ---- helpers ----------------------------------------------------------------------------------

const HEAD: &str = "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n";

/// The seed program: 3/6/12 % by receipt total, tier discounts and redemption caps, sale items
/// outside, 100 start points for 14 days, referrers earn 5 % of friends' purchases, SILVER at
/// 10 000 and GOLD at 30 000 of lifetime purchases.
const SEED_PROGRAM: &str = r#"rules:
  - id: sale
    name: sale items outside
    scope: {category_ids: [sale]}
    exclude: {from_accrual: true, from_discount: true, from_redemption: true}
  - id: tier
    name: tier rates
    tier_rates: {discount: true, redemption_share: true}
  - id: brackets
    name: 3/6/12
    accrue_brackets:
      brackets:
        - {at_least: "0", percent: "3"}
        - {at_least: "500", percent: "6"}
        - {above: "1000", percent: "12"}
  - id: referral
    name: referrers earn 5 %
    referral_reward:
      levels:
        - {level: 1, percent: "5"}
  - id: start-bonus
    name: start bonus
    points_terms: {valid_days: 14}
    action_reward: {action: ACTION_KIND_REGISTRATION, points: "100", once_per_customer: true}
tier_progression:
  levels:
    - {tier_code: BASE}
    - {tier_code: SILVER, cumulative_turnover_at_least: "10000"}
    - {tier_code: GOLD, cumulative_turnover_at_least: "30000"}
  downgrade: TIER_DOWNGRADE_NEVER
"#;

/// Only points payment, up to the whole receipt: for the redemption race.
const REDEEM_ONLY: &str = r#"rules:
  - id: pay
    name: pay with points
    redemption_limit: {max_share_percent: "100"}
"#;

struct Shop {
    m: SeededMerchant,
    checkout: CheckoutServiceClient<Channel>,
    customers: CustomerServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    programs: ProgramServiceClient<Channel>,
    tiers: TierServiceClient<Channel>,
}

impl Shop {
    async fn open(suite: &TestSuite, merchant_id: &str) -> Shop {
        let m = suite.seed_merchant(merchant_id).await;
        Shop {
            m,
            checkout: CheckoutServiceClient::new(suite.channel(suite.addrs.gateway)),
            customers: CustomerServiceClient::new(suite.channel(suite.addrs.gateway)),
            ledger: LedgerServiceClient::new(suite.channel(suite.addrs.ledger)),
            programs: ProgramServiceClient::new(suite.channel(suite.addrs.rules)),
            tiers: TierServiceClient::new(suite.channel(suite.addrs.cards)),
        }
    }

    fn key(&self) -> &str {
        &self.m.terminal_key
    }

    async fn tier(&mut self, code: &str, rank: i32, discount: &str, share: &str, default: bool) {
        self.tiers
            .upsert_tier(cards_pb::UpsertTierRequest {
                merchant_id: self.m.merchant_id.clone(),
                request_id: format!("tier-{code}"),
                tier: Some(cards_pb::Tier {
                    code: code.into(),
                    name: format!("Tier {code}"),
                    rank,
                    discount_percent: discount.into(),
                    max_redeem_share_percent: share.into(),
                    is_default: default,
                    perks: vec![format!("{code} perk")],
                    ..Default::default()
                }),
            })
            .await
            .expect("tier upserted");
    }

    /// Drafts, publishes and activates a program now; returns its version.
    async fn program(&mut self, rules_yaml: &str, tag: &str) -> u64 {
        self.program_doc(&format!("{HEAD}{rules_yaml}"), tag).await
    }

    async fn program_doc(&mut self, document: &str, tag: &str) -> u64 {
        let program = rules_svc::document::from_yaml(document).expect("a valid program document");
        let merchant_id = self.m.merchant_id.clone();
        let draft = self
            .programs
            .create_draft(rules_pb::CreateDraftRequest {
                merchant_id: merchant_id.clone(),
                request_id: format!("draft-{tag}"),
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
                request_id: format!("publish-{tag}"),
                version,
                ..Default::default()
            })
            .await
            .expect("published");
        self.programs
            .activate_version(rules_pb::ActivateVersionRequest {
                merchant_id,
                request_id: format!("activate-{tag}"),
                version,
                activate_at: None,
                requested_by: "test".into(),
            })
            .await
            .expect("activated");
        version
    }

    async fn register(
        &mut self,
        phone: &str,
        referrer: Option<&str>,
    ) -> gw::RegisterCustomerResponse {
        self.register_born(phone, referrer, None).await
    }

    async fn register_born(
        &mut self,
        phone: &str,
        referrer: Option<&str>,
        birth_date: Option<kopilka_proto::types::Date>,
    ) -> gw::RegisterCustomerResponse {
        let details = gw::CustomerDetails {
            first_name: "Ирина".into(),
            last_name: "Смирнова".into(),
            referrer: referrer.map(|r| IdentifierInput {
                raw: r.into(),
                kind_hint: 0,
            }),
            birth_date,
            ..Default::default()
        };
        self.customers
            .register_customer(authed(
                gw::RegisterCustomerRequest {
                    request_id: format!(
                        "register-{}",
                        phone
                            .chars()
                            .filter(char::is_ascii_digit)
                            .collect::<String>()
                    ),
                    phone: phone.into(),
                    details: Some(details),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .expect("registered")
            .into_inner()
    }

    async fn give_points(&mut self, customer_id: &str, amount: &str) {
        self.ledger
            .adjust(ledger_pb::AdjustRequest {
                merchant_id: self.m.merchant_id.clone(),
                request_id: format!("give-{customer_id}-{amount}"),
                customer_id: customer_id.into(),
                amount: amount.into(),
                reason: "test".into(),
                operator: "test".into(),
                ..Default::default()
            })
            .await
            .expect("points given");
    }

    async fn available(&mut self, customer_id: &str) -> Decimal {
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

    async fn calculate(
        &mut self,
        buyer: Option<Buyer>,
        lines: Vec<BasketLine>,
        redeem: &str,
    ) -> Result<gw::Calculation, Status> {
        self.checkout
            .calculate(authed(
                gw::CalculateRequest {
                    buyer,
                    lines,
                    redeem_points: redeem.into(),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .map(|r| r.into_inner().calculation.unwrap())
    }

    async fn confirm(
        &mut self,
        request_id: &str,
        receipt_id: &str,
        buyer: Option<Buyer>,
        lines: Vec<BasketLine>,
        redeem: &str,
    ) -> Result<gw::ConfirmResponse, Status> {
        self.checkout
            .confirm(authed(
                gw::ConfirmRequest {
                    request_id: request_id.into(),
                    receipt_id: receipt_id.into(),
                    buyer,
                    lines,
                    redeem_points: redeem.into(),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .map(|r| r.into_inner())
    }
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

fn customer(id: &str) -> Option<Buyer> {
    Some(Buyer {
        who: Some(Who::CustomerId(id.into())),
    })
}

fn line(id: &str, price: &str, quantity: &str, categories: &[&str]) -> BasketLine {
    BasketLine {
        line_id: id.into(),
        product_id: format!("p-{id}"),
        name: format!("product {id}"),
        category_ids: categories.iter().map(|c| c.to_string()).collect(),
        unit_price: price.into(),
        quantity: quantity.into(),
        ..Default::default()
    }
}

fn one(price: &str) -> Vec<BasketLine> {
    vec![line("1", price, "1", &["food"])]
}

fn totals(c: &gw::Calculation) -> &rules_pb::ReceiptTotals {
    c.totals.as_ref().unwrap()
}

fn reason(status: &Status) -> String {
    reason_of(status).unwrap_or_default()
}

fn fields(status: &Status) -> Vec<String> {
    field_violations_of(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

// ---- scenarios --------------------------------------------------------------------------------

async fn seed_examples_through_the_gateway(suite: TestSuite) {
    let mut shop = Shop::open(&suite, "seed").await;
    shop.tier("BASE", 1, "3", "30", true).await;
    shop.tier("SILVER", 2, "5", "50", false).await;
    shop.tier("GOLD", 3, "10", "100", false).await;
    shop.program(SEED_PROGRAM, "seed").await;

    // Registration at the register: 100 start points valid 14 days, once.
    let reg = shop.register("+7 912 000-00-01", None).await;
    let ann = reg.customer.clone().unwrap();
    assert!(ann.registered_now);
    assert_eq!(ann.tier_code, "BASE");
    assert!(
        !ann.phone_masked.contains("000-00-01"),
        "{}",
        ann.phone_masked
    );
    let bonus = reg.start_bonus.unwrap();
    assert_eq!(dec(&bonus.points), Decimal::from(100));
    let expires = timestamps::from_proto(bonus.expires_at.as_ref().unwrap()).unwrap();
    let days = (expires - Utc::now()).num_hours();
    assert!((13 * 24..=14 * 24).contains(&days), "expires in {days} h");
    let again = shop.register("+7 912 000-00-01", None).await;
    assert_eq!(again.customer.unwrap().customer_id, ann.customer_id);
    assert_eq!(
        shop.available(&ann.customer_id).await,
        Decimal::from(100),
        "the bonus is granted once"
    );

    // Brackets by receipt total (anonymous receipts: no tier discount, no points).
    let anonymous = shop.calculate(None, one("1000.00"), "").await.unwrap();
    assert_eq!(dec(&totals(&anonymous).points_accrued), Decimal::ZERO);
    assert!(anonymous.customer.is_none());

    // BASE: 3 % off, 30 % payable with points; points by total 3/6/12 %.
    let c = shop
        .calculate(phone("+79120000001"), one("1000.00"), "")
        .await
        .unwrap();
    let t = totals(&c);
    assert_eq!(dec(&t.discount), dec("30.00"), "BASE tier discount 3 %");
    assert_eq!(c.customer.as_ref().unwrap().customer_id, ann.customer_id);
    assert_eq!(c.customer.as_ref().unwrap().perks, ["BASE perk"]);
    let base_accrual = dec(&t.points_accrued);
    assert!(base_accrual > Decimal::ZERO);
    let max_redeem = dec(&t.max_redeem_points);
    assert_eq!(
        max_redeem,
        Decimal::from(100),
        "the cap (291) is above the 100 available"
    );
    assert!(dec(&c.balance.as_ref().unwrap().available) == Decimal::from(100));
    assert!(
        c.display_lines
            .iter()
            .any(|l| l.starts_with("Скидка 30,00")),
        "{:?}",
        c.display_lines
    );
    // Calculating books nothing.
    assert_eq!(shop.available(&ann.customer_id).await, Decimal::from(100));

    // Redemption cap: 30 % of 1 000 after the 3 % discount is 291; above that is refused.
    shop.give_points(&ann.customer_id, "900").await;
    let too_much = shop
        .confirm(
            "r-cap",
            "cap-1",
            phone("+79120000001"),
            one("1000.00"),
            "300",
        )
        .await
        .unwrap_err();
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    assert_eq!(reason(&too_much), "REDEMPTION_LIMIT_EXCEEDED");
    let meta = too_much.get_details_error_info().unwrap().metadata;
    assert_eq!(dec(&meta["max_redeemable"]), Decimal::from(291));

    // Sale items get no discount and no points; the rest of the receipt does.
    let c = shop
        .calculate(
            phone("+79120000001"),
            vec![
                line("1", "400.00", "1", &["food"]),
                line("2", "600.00", "1", &["sale"]),
            ],
            "",
        )
        .await
        .unwrap();
    assert_eq!(dec(&c.lines[1].discount), Decimal::ZERO);
    assert_eq!(dec(&c.lines[1].accrual_points), Decimal::ZERO);
    assert_eq!(dec(&c.lines[0].discount), dec("12.00"));

    // A purchase with points: balance = before - redeemed + accrued.
    let before = shop.available(&ann.customer_id).await;
    let done = shop
        .confirm(
            "r-1",
            "sale-1",
            phone("+79120000001"),
            one("1000.00"),
            "200",
        )
        .await
        .unwrap();
    let checkout = done.checkout.as_ref().unwrap();
    assert_eq!(checkout.state(), CheckoutState::Confirmed);
    let booked = checkout.receipt.as_ref().unwrap().summary.clone().unwrap();
    assert_eq!(dec(&booked.redeem_points), Decimal::from(200));
    let accrued = dec(&booked.points_accrued);
    assert_eq!(
        shop.available(&ann.customer_id).await,
        before - Decimal::from(200) + accrued
    );
    assert!(!done.tier_changed);
    assert!(
        done.print_lines
            .iter()
            .any(|l| l.starts_with("Списано: 200")),
        "{:?}",
        done.print_lines
    );

    // Tier upgrade at 10 000 of purchases, then at 30 000; the next Calculate sees it.
    let up = shop
        .confirm("r-2", "big-1", phone("+79120000001"), one("9800.00"), "")
        .await
        .unwrap();
    // Turnover is money paid: 770.00 (1 000 - 3 % - 200 points) + 9 506.00 ≥ 10 000.
    assert!(up.tier_changed, "770 + 9 506 ≥ 10 000: SILVER");
    assert_eq!(up.customer.as_ref().unwrap().tier_code, "SILVER");
    let c = shop
        .calculate(phone("+79120000001"), one("1000.00"), "")
        .await
        .unwrap();
    assert_eq!(dec(&totals(&c).discount), dec("50.00"), "SILVER 5 %");
    let up = shop
        .confirm("r-3", "big-2", phone("+79120000001"), one("21000.00"), "")
        .await
        .unwrap();
    assert!(up.tier_changed, "10 276 + 19 950 ≥ 30 000: GOLD");
    assert_eq!(up.customer.as_ref().unwrap().tier_code, "GOLD");
    let c = shop
        .calculate(phone("+79120000001"), one("1000.00"), "")
        .await
        .unwrap();
    assert_eq!(dec(&totals(&c).discount), dec("100.00"), "GOLD 10 %");
    let available = shop.available(&ann.customer_id).await;
    assert_eq!(
        dec(&totals(&c).max_redeem_points),
        available.min(dec("900")),
        "GOLD may pay the whole receipt with points"
    );

    // Referral: B names A; A earns 5 % of B's purchases.
    let b = shop
        .register("+7 912 000-00-02", Some("+7 912 000-00-01"))
        .await;
    let b_id = b.customer.unwrap().customer_id;
    let a_before = shop.available(&ann.customer_id).await;
    shop.confirm("r-4", "friend-1", customer(&b_id), one("1000.00"), "")
        .await
        .unwrap();
    let a_after = shop.available(&ann.customer_id).await;
    assert_eq!(
        a_after - a_before,
        Decimal::from(48),
        "5 % of 970.00 (after B's 3 % discount) = 48.5, rounded down"
    );

    // A full refund takes the accrued points back; a second one is refused.
    let refund = shop
        .checkout
        .refund(authed(
            gw::RefundRequest {
                request_id: "ref-1".into(),
                receipt_id: "sale-1".into(),
                refund_id: "return-1".into(),
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.checkout.unwrap().state(), CheckoutState::Refunded);
    let r = refund.refund.unwrap();
    assert_eq!(dec(&r.points_restored), Decimal::from(200));
    assert_eq!(dec(&r.points_reversed), accrued);
    let again = shop
        .checkout
        .refund(authed(
            gw::RefundRequest {
                request_id: "ref-2".into(),
                receipt_id: "sale-1".into(),
                refund_id: "return-2".into(),
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&again), "RECEIPT_ALREADY_REFUNDED");
    suite.stop().await.unwrap();
}

async fn every_step_is_idempotent_and_states_are_kept(suite: TestSuite) {
    let mut shop = Shop::open(&suite, "idem").await;
    shop.tier("BASE", 1, "", "100", true).await;
    shop.tier("SILVER", 2, "", "100", false).await;
    shop.tier("GOLD", 3, "", "100", false).await;
    shop.program(SEED_PROGRAM, "idem").await;
    let reg = shop.register("+7 912 100-00-01", None).await;
    let id = reg.customer.unwrap().customer_id;
    shop.give_points(&id, "1000").await;
    let start = shop.available(&id).await;

    // Confirm twice with one request id, then again under another: one booking.
    let first = shop
        .confirm("c-1", "rcpt-1", customer(&id), one("1000.00"), "100")
        .await
        .unwrap();
    let second = shop
        .confirm("c-1", "rcpt-1", customer(&id), one("1000.00"), "100")
        .await
        .unwrap();
    assert_eq!(first, second);
    let third = shop
        .confirm("c-1b", "rcpt-1", customer(&id), one("1000.00"), "100")
        .await
        .unwrap();
    assert_eq!(
        first.checkout.as_ref().unwrap().receipt,
        third.checkout.as_ref().unwrap().receipt
    );
    let accrued = dec(&first
        .checkout
        .as_ref()
        .unwrap()
        .receipt
        .as_ref()
        .unwrap()
        .summary
        .as_ref()
        .unwrap()
        .points_accrued);
    assert_eq!(
        shop.available(&id).await,
        start - Decimal::from(100) + accrued
    );
    // The same receipt id with other content is a conflict; the request id with another payload too.
    let other = shop
        .confirm("c-2", "rcpt-1", customer(&id), one("999.00"), "")
        .await
        .unwrap_err();
    assert_eq!(reason(&other), "CHECKOUT_STATE_CONFLICT");
    let reused = shop
        .confirm("c-1", "rcpt-9", customer(&id), one("5.00"), "")
        .await
        .unwrap_err();
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");

    // Reserve → Confirm: the hold pays; repeating the reservation returns the same hold.
    let reserve = |request_id: &str, points: &str| gw::ReserveRequest {
        request_id: request_id.into(),
        receipt_id: "rcpt-2".into(),
        buyer: customer(&id),
        lines: one("500.00"),
        points: points.into(),
        ..Default::default()
    };
    let held = shop
        .checkout
        .reserve(authed(reserve("h-1", "150"), shop.key()))
        .await
        .unwrap()
        .into_inner();
    let held_again = shop
        .checkout
        .reserve(authed(reserve("h-1", "150"), shop.key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held, held_again);
    let checkout = held.checkout.unwrap();
    assert_eq!(checkout.state(), CheckoutState::Reserved);
    assert_eq!(dec(&checkout.hold.unwrap().points), Decimal::from(150));
    let before = shop.available(&id).await;
    let ok = shop
        .confirm("c-3", "rcpt-2", customer(&id), one("500.00"), "150")
        .await
        .unwrap();
    assert_eq!(ok.checkout.unwrap().state(), CheckoutState::Confirmed);
    let got = shop
        .checkout
        .get_checkout(authed(
            gw::GetCheckoutRequest {
                receipt_id: "rcpt-2".into(),
            },
            shop.key(),
        ))
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    assert_eq!(got.state(), CheckoutState::Confirmed);
    let accrued = dec(&got.receipt.unwrap().summary.unwrap().points_accrued);
    // The hold was already out of "available"; booking it leaves available as it was plus the accrual.
    assert_eq!(shop.available(&id).await, before + accrued);
    let late = shop
        .checkout
        .cancel(authed(
            gw::CancelRequest {
                request_id: "x-1".into(),
                receipt_id: "rcpt-2".into(),
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&late), "CHECKOUT_STATE_CONFLICT");

    // Reserve → Cancel releases the hold; Cancel repeats; a late Confirm is refused.
    let before = shop.available(&id).await;
    let mut r = reserve("h-2", "100");
    r.receipt_id = "rcpt-3".into();
    shop.checkout.reserve(authed(r, shop.key())).await.unwrap();
    assert_eq!(shop.available(&id).await, before - Decimal::from(100));
    let cancel = gw::CancelRequest {
        request_id: "x-2".into(),
        receipt_id: "rcpt-3".into(),
        reason: "left".into(),
        ..Default::default()
    };
    let cancelled = shop
        .checkout
        .cancel(authed(cancel.clone(), shop.key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cancelled.checkout.unwrap().state(),
        CheckoutState::Cancelled
    );
    shop.checkout
        .cancel(authed(cancel, shop.key()))
        .await
        .unwrap();
    assert_eq!(shop.available(&id).await, before);
    let refused = shop
        .confirm("c-4", "rcpt-3", customer(&id), one("500.00"), "")
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "CHECKOUT_STATE_CONFLICT");

    // Cancel of an unknown receipt records it: a late Confirm is refused.
    shop.checkout
        .cancel(authed(
            gw::CancelRequest {
                request_id: "x-3".into(),
                receipt_id: "never".into(),
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap();
    let refused = shop
        .confirm("c-5", "never", customer(&id), one("10.00"), "")
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "CHECKOUT_STATE_CONFLICT");

    // Partial refund by line, repeated with its request id, then the rest.
    let two = vec![
        line("1", "300.00", "2", &["food"]),
        line("2", "400.00", "1", &["food"]),
    ];
    shop.confirm("c-6", "rcpt-4", customer(&id), two, "")
        .await
        .unwrap();
    let partial = gw::RefundRequest {
        request_id: "rf-1".into(),
        receipt_id: "rcpt-4".into(),
        refund_id: "ret-1".into(),
        lines: vec![gw::RefundLine {
            line_id: "1".into(),
            quantity: "1".into(),
        }],
        ..Default::default()
    };
    let a = shop
        .checkout
        .refund(authed(partial.clone(), shop.key()))
        .await
        .unwrap()
        .into_inner();
    let b = shop
        .checkout
        .refund(authed(partial, shop.key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(
        a.checkout.unwrap().state(),
        CheckoutState::PartiallyRefunded
    );
    assert_eq!(dec(&a.refund.unwrap().amount), dec("300.00"));
    let rest = shop
        .checkout
        .refund(authed(
            gw::RefundRequest {
                request_id: "rf-2".into(),
                receipt_id: "rcpt-4".into(),
                refund_id: "ret-2".into(),
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.checkout.unwrap().state(), CheckoutState::Refunded);
    let missing = shop
        .checkout
        .refund(authed(
            gw::RefundRequest {
                request_id: "rf-3".into(),
                receipt_id: "nope".into(),
                refund_id: "r".into(),
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "CHECKOUT_NOT_FOUND")
    );

    // An unknown phone registers in the Confirm itself, with the start bonus, once.
    let mut confirm = gw::ConfirmRequest {
        request_id: "c-new".into(),
        receipt_id: "rcpt-new".into(),
        buyer: phone("+7 912 100-00-09"),
        lines: one("100.00"),
        register_if_unknown: Some(gw::CustomerDetails {
            first_name: "Олег".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let unknown = shop
        .calculate(phone("+7 912 100-00-09"), one("100.00"), "")
        .await
        .unwrap_err();
    assert_eq!(reason(&unknown), "CARD_NOT_FOUND");
    // … or is previewed as a newcomer on the default tier, booking nothing.
    let preview = shop
        .checkout
        .calculate(authed(
            gw::CalculateRequest {
                receipt_id: "rcpt-preview".into(),
                buyer: phone("+7 912 100-00-09"),
                lines: one("100.00"),
                preview_new_customer: true,
                ..Default::default()
            },
            shop.key(),
        ))
        .await
        .unwrap()
        .into_inner()
        .calculation
        .unwrap();
    let newcomer = preview.customer.unwrap();
    assert!(newcomer.registered_now);
    assert_eq!(newcomer.tier_code, "BASE");
    let stored = shop
        .checkout
        .get_checkout(authed(
            gw::GetCheckoutRequest {
                receipt_id: "rcpt-preview".into(),
            },
            shop.key(),
        ))
        .await
        .unwrap()
        .into_inner()
        .checkout
        .unwrap();
    assert_eq!(stored.state(), CheckoutState::Calculated);
    assert_eq!(stored.customer_id, "");
    let new = shop
        .checkout
        .confirm(authed(confirm.clone(), shop.key()))
        .await
        .unwrap()
        .into_inner();
    let newcomer = new.customer.unwrap();
    assert!(newcomer.registered_now);
    let again = shop
        .checkout
        .confirm(authed(confirm.clone(), shop.key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.customer.unwrap().customer_id, newcomer.customer_id);
    confirm.request_id = "c-new-2".into();
    confirm.receipt_id = "rcpt-new-2".into();
    shop.checkout
        .confirm(authed(confirm, shop.key()))
        .await
        .unwrap();
    let got = shop.available(&newcomer.customer_id).await;
    assert!(
        got >= Decimal::from(100) && got < Decimal::from(110),
        "one start bonus plus two small accruals: {got}"
    );
    suite.stop().await.unwrap();
}

async fn concurrent_redemptions_on_one_card_never_overspend(suite: TestSuite) {
    let mut shop = Shop::open(&suite, "race").await;
    shop.program(REDEEM_ONLY, "race").await;
    let reg = shop.register("+7 912 200-00-01", None).await;
    let id = reg.customer.unwrap().customer_id;
    shop.give_points(&id, "1000").await;
    let mut calls = Vec::new();
    // The admin key naming the terminal: 32 calls at once are above a terminal key's rate.
    for i in 0..32 {
        let mut s = shop.checkout.clone();
        let key = shop.m.admin_key.clone();
        let terminal_id = shop.m.terminal_id.clone();
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            s.confirm(authed(
                gw::ConfirmRequest {
                    request_id: format!("race-{i}"),
                    receipt_id: format!("race-{i}"),
                    buyer: customer(&id),
                    lines: one("100.00"),
                    redeem_points: "50".into(),
                    terminal_id,
                    ..Default::default()
                },
                &key,
            ))
            .await
        }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(reason(&status), "INSUFFICIENT_POINTS", "{status:?}");
            }
        }
    }
    assert_eq!(ok, 20, "1 000 points pay for exactly 20 redemptions of 50");
    assert_eq!(shop.available(&id).await, Decimal::ZERO);
    suite.stop().await.unwrap();
}

async fn merchants_are_isolated_and_scopes_enforced(suite: TestSuite) {
    let mut a = Shop::open(&suite, "iso-a").await;
    let mut b = Shop::open(&suite, "iso-b").await;
    a.program(REDEEM_ONLY, "iso-a").await;
    b.program(REDEEM_ONLY, "iso-b").await;
    let reg = a.register("+7 912 300-00-01", None).await;
    let a_customer = reg.customer.unwrap().customer_id;
    a.confirm("c-1", "shared-id", customer(&a_customer), one("100.00"), "")
        .await
        .unwrap();

    // B's keys see nothing of A's.
    let err = b
        .calculate(customer(&a_customer), one("10.00"), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = b
        .calculate(phone("+7 912 300-00-01"), one("10.00"), "")
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "CARD_NOT_FOUND")
    );
    let err = b
        .checkout
        .get_checkout(authed(
            gw::GetCheckoutRequest {
                receipt_id: "shared-id".into(),
            },
            b.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .checkout
        .refund(authed(
            gw::RefundRequest {
                request_id: "r".into(),
                receipt_id: "shared-id".into(),
                refund_id: "x".into(),
                ..Default::default()
            },
            b.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .customers
        .lookup_customer(authed(
            gw::LookupCustomerRequest {
                identifier: Some(IdentifierInput {
                    raw: "+7 912 300-00-01".into(),
                    kind_hint: 0,
                }),
            },
            b.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The same receipt id is B's own receipt: merchants do not share receipt ids.
    let reg = b.register("+7 912 300-00-02", None).await;
    let b_customer = reg.customer.unwrap().customer_id;
    b.confirm("c-1", "shared-id", customer(&b_customer), one("100.00"), "")
        .await
        .unwrap();

    // A terminal key acts for its own terminal only; admin keys must name one.
    let mut named = gw::CalculateRequest {
        lines: one("10.00"),
        terminal_id: "someone-else".into(),
        ..Default::default()
    };
    let err = a
        .checkout
        .calculate(authed(named.clone(), a.key()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PERMISSION_DENIED_KEY_SCOPE");
    named.terminal_id = String::new();
    let err = a
        .checkout
        .calculate(authed(named.clone(), &a.m.admin_key))
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["terminal_id"]);
    named.terminal_id = a.m.terminal_id.clone();
    a.checkout
        .calculate(authed(named.clone(), &a.m.admin_key))
        .await
        .unwrap();
    named.terminal_id = b.m.terminal_id.clone();
    let err = a
        .checkout
        .calculate(authed(named, &a.m.admin_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "TERMINAL_NOT_FOUND")
    );

    // A terminal key is rate-limited (the test suite allows 50 calls a second), with a RetryInfo.
    let mut limited = None;
    for _ in 0..120 {
        let calc = gw::CalculateRequest {
            lines: one("10.00"),
            ..Default::default()
        };
        if let Err(e) = a.checkout.calculate(authed(calc, a.key())).await {
            limited = Some(e);
            break;
        }
    }
    let limited = limited.expect("120 calls at once exceed the terminal's rate");
    assert_eq!(
        (limited.code(), reason(&limited).as_str()),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    assert!(limited.get_details_retry_info().is_some());

    // The internal services are not served on the gateway's port, whatever the key.
    let mut internal = LedgerServiceClient::new(suite.channel(suite.addrs.gateway));
    let err = internal
        .get_balance(authed(
            ledger_pb::GetBalanceRequest {
                merchant_id: "iso-a".into(),
                customer_id: a_customer.clone(),
                ..Default::default()
            },
            a.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // No key, a garbage key, a forged secret: UNAUTHENTICATED.
    let plain = gw::CalculateRequest {
        lines: one("10.00"),
        ..Default::default()
    };
    let err = a.checkout.calculate(plain.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "API_KEY_INVALID")
    );
    let err = a
        .checkout
        .calculate(authed(plain.clone(), "kpk_nonsense"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let forged = format!("{}{}", &a.key()[..a.key().len() - 4], "0000");
    let err = a
        .checkout
        .calculate(authed(plain, &forged))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    suite.stop().await.unwrap();
}

async fn bad_input_is_refused_with_field_paths_and_changes_nothing(suite: TestSuite) {
    let mut shop = Shop::open(&suite, "bad").await;
    shop.program(REDEEM_ONLY, "bad").await;
    let future = timestamps::to_proto(Utc::now() + Duration::hours(1));
    let good = || gw::ConfirmRequest {
        request_id: "bad-1".into(),
        receipt_id: "bad-receipt".into(),
        lines: one("10.00"),
        ..Default::default()
    };
    let long = "x".repeat(300);
    let cases: Vec<(&str, gw::ConfirmRequest, Vec<&str>)> = vec![
        (
            "zero quantity",
            gw::ConfirmRequest {
                lines: vec![line("1", "10", "0", &[])],
                ..good()
            },
            vec!["lines[0].quantity"],
        ),
        (
            "negative quantity",
            gw::ConfirmRequest {
                lines: vec![line("1", "10", "-1", &[])],
                ..good()
            },
            vec!["lines[0].quantity"],
        ),
        (
            "three decimals in roubles",
            gw::ConfirmRequest {
                lines: vec![line("1", "10.555", "1", &[])],
                ..good()
            },
            vec!["lines[0].unit_price"],
        ),
        (
            "empty receipt",
            gw::ConfirmRequest {
                lines: vec![],
                ..good()
            },
            vec!["lines"],
        ),
        (
            "too many lines",
            gw::ConfirmRequest {
                lines: (0..501)
                    .map(|i| line(&i.to_string(), "1", "1", &[]))
                    .collect(),
                ..good()
            },
            vec!["lines"],
        ),
        (
            "oversized name",
            gw::ConfirmRequest {
                lines: vec![BasketLine {
                    name: long.clone(),
                    ..line("1", "1", "1", &[])
                }],
                ..good()
            },
            vec!["lines[0].name"],
        ),
        (
            "oversized receipt id",
            gw::ConfirmRequest {
                receipt_id: long.clone(),
                ..good()
            },
            vec!["receipt_id"],
        ),
        (
            "no request id",
            gw::ConfirmRequest {
                request_id: String::new(),
                ..good()
            },
            vec!["request_id"],
        ),
        (
            "arabic-indic digits",
            gw::ConfirmRequest {
                buyer: phone("+7 912 ٣٤٥-67-89"),
                ..good()
            },
            vec!["buyer.identifier.raw"],
        ),
        (
            "unknown identifier kind",
            gw::ConfirmRequest {
                buyer: Some(Buyer {
                    who: Some(Who::Identifier(IdentifierInput {
                        raw: "123".into(),
                        kind_hint: 77,
                    })),
                }),
                ..good()
            },
            vec!["buyer.identifier.kind_hint"],
        ),
        (
            "far future",
            gw::ConfirmRequest {
                occurred_at: Some(future),
                ..good()
            },
            vec!["occurred_at"],
        ),
        (
            "negative points",
            gw::ConfirmRequest {
                redeem_points: "-5".into(),
                ..good()
            },
            vec!["redeem_points"],
        ),
    ];
    for (what, request, expected) in cases {
        let err = shop
            .checkout
            .confirm(authed(request, shop.key()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(fields(&err), expected, "{what}");
    }
    // None of them stored anything.
    let err = shop
        .checkout
        .get_checkout(authed(
            gw::GetCheckoutRequest {
                receipt_id: "bad-receipt".into(),
            },
            shop.key(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A message above 1 MiB is refused before it is decoded.
    let huge = gw::CalculateRequest {
        lines: (0..400)
            .map(|i| BasketLine {
                name: "я".repeat(1500),
                ..line(&i.to_string(), "1", "1", &[])
            })
            .collect(),
        ..Default::default()
    };
    let err = shop
        .checkout
        .calculate(authed(huge, shop.key()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    suite.stop().await.unwrap();
}

async fn offline_receipts_are_booked_once_under_the_program_of_their_time(suite: TestSuite) {
    let mut shop = Shop::open(&suite, "off").await;
    let three = "rules:\n  - id: flat\n    name: flat 3 %\n    accrue_percent: {percent: \"3\"}\n";
    let ten = "rules:\n  - id: flat\n    name: flat 10 %\n    accrue_percent: {percent: \"10\"}\n";
    shop.program(three, "off-1").await;
    let reg = shop.register("+7 912 400-00-01", None).await;
    let id = reg.customer.unwrap().customer_id;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let sold_at = timestamps::to_proto(Utc::now());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    shop.program(ten, "off-2").await;

    let offline = |request_id: &str, receipt_id: &str, at| gw::SubmitOfflineReceiptRequest {
        request_id: request_id.into(),
        receipt_id: receipt_id.into(),
        buyer: customer(&id),
        lines: one("1000.00"),
        occurred_at: Some(at),
        ..Default::default()
    };
    let before = shop.available(&id).await;
    let first = shop
        .checkout
        .submit_offline_receipt(authed(offline("o-1", "off-1", sold_at), shop.key()))
        .await
        .unwrap()
        .into_inner();
    let checkout = first.checkout.clone().unwrap();
    assert!(checkout.offline);
    let summary = checkout.receipt.unwrap().summary.unwrap();
    assert_eq!(
        dec(&summary.points_accrued),
        Decimal::from(30),
        "3 %: the program of the sale time"
    );
    let again = shop
        .checkout
        .submit_offline_receipt(authed(offline("o-1", "off-1", sold_at), shop.key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    shop.checkout
        .submit_offline_receipt(authed(offline("o-1b", "off-1", sold_at), shop.key()))
        .await
        .unwrap();
    assert_eq!(
        shop.available(&id).await,
        before + Decimal::from(30),
        "accrued exactly once"
    );

    // An online receipt is accrued under today's program.
    let online = shop
        .confirm("o-2", "on-1", customer(&id), one("1000.00"), "")
        .await
        .unwrap();
    let summary = online.checkout.unwrap().receipt.unwrap().summary.unwrap();
    assert_eq!(dec(&summary.points_accrued), Decimal::from(100));
    // Its id cannot come back as offline; too old and future receipts are refused.
    let err = shop
        .checkout
        .submit_offline_receipt(authed(offline("o-3", "on-1", sold_at), shop.key()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "CHECKOUT_STATE_CONFLICT");
    let old = timestamps::to_proto(Utc::now() - Duration::days(31));
    let err = shop
        .checkout
        .submit_offline_receipt(authed(offline("o-4", "old-1", old), shop.key()))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "RECEIPT_TOO_OLD");
    let future = timestamps::to_proto(Utc::now() + Duration::hours(2));
    let err = shop
        .checkout
        .submit_offline_receipt(authed(offline("o-5", "fut-1", future), shop.key()))
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["occurred_at"]);
    suite.stop().await.unwrap();
}

async fn happy_hours_birthday_frequency_and_turnover_through_the_gateway(suite: TestSuite) {
    use chrono::{Datelike, Timelike};
    let mut shop = Shop::open(&suite, "time").await;
    // Happy hours around the current time (UTC, every weekday), so a real "now" falls inside.
    let now = Utc::now();
    let hhmm = |t: chrono::DateTime<Utc>| format!("{:02}:{:02}", t.hour(), t.minute());
    let (start, end) = (
        hhmm(now - Duration::hours(2)),
        hhmm(now + Duration::hours(2)),
    );
    let program = format!(
        r#"name: t
settings: {{currency: RUB, time_zone: UTC}}
groups: [{{id: rate, mode: GROUP_MODE_FIRST}}]
rules:
  - id: happy-hours
    name: 10 % off in happy hours
    when:
      time_windows:
        - weekdays: [WEEKDAY_MONDAY, WEEKDAY_TUESDAY, WEEKDAY_WEDNESDAY, WEEKDAY_THURSDAY, WEEKDAY_FRIDAY, WEEKDAY_SATURDAY, WEEKDAY_SUNDAY]
          start: "{start}"
          end: "{end}"
    discount_percent: {{percent: "10"}}
  - id: active
    name: 15 % for more than 30 000 in 3 months
    group: rate
    priority: 10
    when: {{turnover: {{lookback: {{months: 3}}, amount: {{above: "30000"}}}}}}
    accrue_percent: {{percent: "15"}}
  - id: base
    name: 5 % otherwise
    group: rate
    accrue_percent: {{percent: "5"}}
  - id: again
    name: +3 % within 7 days of the last purchase
    when: {{since_last_purchase: {{within_days: 7}}}}
    accrue_percent: {{percent: "3"}}
  - id: birthday
    name: double points 3 days around the birthday
    when: {{birthday: {{days_before: 3, days_after: 3}}}}
    accrual_multiplier: {{factor: "2"}}
"#
    );
    shop.program_doc(&program, "time").await;
    let far = now + Duration::days(40);
    let plain = shop
        .register_born(
            "+7 912 500-00-01",
            None,
            Some(kopilka_proto::types::Date {
                year: 1990,
                month: far.month() as i32,
                day: far.day() as i32,
            }),
        )
        .await
        .customer
        .unwrap()
        .customer_id;
    let accrued = |r: &gw::ConfirmResponse| {
        dec(&r
            .checkout
            .as_ref()
            .unwrap()
            .receipt
            .as_ref()
            .unwrap()
            .summary
            .as_ref()
            .unwrap()
            .points_accrued)
    };
    // Happy hours: 10 % off; first purchase: 5 % of 900.00.
    let first = shop
        .confirm("t-1", "t-1", customer(&plain), one("1000.00"), "")
        .await
        .unwrap();
    let c = first
        .checkout
        .as_ref()
        .unwrap()
        .calculation
        .as_ref()
        .unwrap();
    assert_eq!(dec(&totals(c).discount), dec("100.00"), "happy hours 10 %");
    assert_eq!(accrued(&first), Decimal::from(45));
    // Within 7 days of the last purchase: +3 %.
    let second = shop
        .confirm("t-2", "t-2", customer(&plain), one("1000.00"), "")
        .await
        .unwrap();
    assert_eq!(accrued(&second), Decimal::from(72), "8 % of 900.00");
    // Over 30 000 in three months: the 15 % rate wins the group (plus 3 % for frequency).
    shop.confirm("t-3", "t-3", customer(&plain), one("40000.00"), "")
        .await
        .unwrap();
    let fourth = shop
        .confirm("t-4", "t-4", customer(&plain), one("1000.00"), "")
        .await
        .unwrap();
    assert_eq!(accrued(&fourth), Decimal::from(162), "18 % of 900.00");
    // Birthday today: double points.
    let born = shop
        .register_born(
            "+7 912 500-00-02",
            None,
            Some(kopilka_proto::types::Date {
                year: 1990,
                month: now.month() as i32,
                day: now.day() as i32,
            }),
        )
        .await
        .customer
        .unwrap()
        .customer_id;
    let party = shop
        .confirm("t-5", "t-5", customer(&born), one("1000.00"), "")
        .await
        .unwrap();
    assert_eq!(accrued(&party), Decimal::from(90), "5 % of 900.00, doubled");
    suite.stop().await.unwrap();
}
