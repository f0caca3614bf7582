//! The ready-made programs in `rules-svc/programs/`: each one parses, validates with no error
//! (its tier codes passed as known), survives YAML → Program → YAML → Program unchanged,
//! compiles, and evaluates one realistic receipt with the effect its comments promise.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use kopilka_proto::rules::{
    rule::Effect, CustomerContext, CustomerTier, EffectTarget, EvaluationInput, EvaluationResult,
    ExplainLevel, Program, RuleOutcome,
};
use kopilka_proto::types::{
    lookback::Span, BasketLine, Lookback, PurchaseAggregates, StampBalance, WindowAggregate,
};
use rules_svc::catalog::Catalog;
use rules_svc::document::{from_yaml, to_yaml};
use rules_svc::evaluate::evaluate;
use rules_svc::plan::Plan;
use rules_svc::validate::{validate, Known};
use rust_decimal::Decimal;

fn programs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("programs")
}

/// Every `*.yaml` in `programs/`, sorted by file name.
fn program_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(programs_dir())
        .expect("rules-svc/programs exists")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path).expect("a readable program file");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn load(file: &str) -> Program {
    let text = std::fs::read_to_string(programs_dir().join(file)).expect("the program file");
    from_yaml(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The tier codes a program refers to (conditions and tier progression): what the merchant
/// must have defined in cards-svc.
fn tier_codes(program: &Program) -> Vec<String> {
    let mut codes = BTreeSet::new();
    for rule in &program.rules {
        if let Some(when) = &rule.when {
            codes.extend(when.tiers.iter().cloned());
        }
    }
    if let Some(progression) = &program.tier_progression {
        codes.extend(progression.levels.iter().map(|l| l.tier_code.clone()));
    }
    codes.into_iter().collect()
}

#[test]
fn there_are_the_five_shipped_programs() {
    let names: Vec<String> = program_files().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "car-wash.yaml",
        "coffee-shop.yaml",
        "demo-cafe.yaml",
        "electronics-chain.yaml",
        "fitness-club.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
}

#[test]
fn every_program_parses_validates_round_trips_and_compiles() {
    for (name, text) in program_files() {
        let program = from_yaml(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        assert!(!program.rules.is_empty(), "{name} has no rules");
        for rule in &program.rules {
            assert!(
                rule.effect.is_some(),
                "{name}: rule {} has no effect",
                rule.id
            );
        }

        let codes = tier_codes(&program);
        let report = validate(
            &program,
            &Known {
                tier_codes: Some(&codes),
                catalog: None,
            },
        );
        assert!(
            report.is_valid(),
            "{name} does not validate: {:#?}",
            report.errors()
        );

        let yaml = to_yaml(&program).unwrap_or_else(|e| panic!("{name} does not serialize: {e}"));
        let again = from_yaml(&yaml).unwrap_or_else(|e| panic!("{name} written back: {e}"));
        assert_eq!(again, program, "{name} changes on a YAML round trip");

        Plan::compile(&program, 1).unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
    }
}

#[test]
fn a_program_with_an_unknown_tier_is_refused() {
    // The check above is not vacuous: the same document against a merchant without the tiers.
    let program = load("electronics-chain.yaml");
    let report = validate(
        &program,
        &Known {
            tier_codes: Some(&["NEW".to_owned()]),
            catalog: None,
        },
    );
    assert!(!report.is_valid());
    assert!(
        report.errors().iter().any(|v| v.code == "UNKNOWN_TIER"),
        "{:#?}",
        report.errors()
    );
}

#[test]
fn the_programs_use_the_mechanics_they_promise() {
    let kinds = |file: &str| -> Vec<&'static str> {
        load(file)
            .rules
            .iter()
            .filter_map(|r| r.effect.as_ref())
            .map(|e| match e {
                Effect::StampCard(_) => "stamp_card",
                Effect::AccruePercent(_) => "accrue_percent",
                Effect::DiscountPercent(_) => "discount_percent",
                Effect::AccrueFixed(_) => "accrue_fixed",
                Effect::ActionReward(_) => "action_reward",
                Effect::ReferralReward(_) => "referral_reward",
                Effect::TierRates(_) => "tier_rates",
                Effect::AccrueBrackets(_) => "accrue_brackets",
                Effect::Cashback(_) => "cashback",
                Effect::RedemptionLimit(_) => "redemption_limit",
                Effect::NForM(_) => "n_for_m",
                Effect::Exclude(_) => "exclude",
                _ => "other",
            })
            .collect()
    };
    let has = |file: &str, wanted: &[&str]| {
        let got = kinds(file);
        for w in wanted {
            assert!(got.contains(w), "{file} has no {w}: {got:?}");
        }
    };
    has(
        "coffee-shop.yaml",
        &["stamp_card", "accrue_percent", "discount_percent"],
    );
    has(
        "car-wash.yaml",
        &[
            "accrue_fixed",
            "action_reward",
            "referral_reward",
            "stamp_card",
        ],
    );
    has(
        "fitness-club.yaml",
        &["action_reward", "tier_rates", "accrue_percent"],
    );
    has(
        "electronics-chain.yaml",
        &[
            "tier_rates",
            "accrue_brackets",
            "cashback",
            "redemption_limit",
            "n_for_m",
            "exclude",
        ],
    );
    assert!(load("electronics-chain.yaml").tier_progression.is_some());
}

// ---- evaluation: one realistic receipt per program ----

fn dec(s: &str) -> Decimal {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}

/// A Moscow local time (UTC+3 all year).
fn moscow(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .expect("a valid time")
        - chrono::Duration::hours(3)
}

fn ts(t: DateTime<Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn line(id: &str, product: &str, categories: &[&str], price: &str, quantity: &str) -> BasketLine {
    BasketLine {
        line_id: id.to_owned(),
        product_id: product.to_owned(),
        name: product.to_owned(),
        category_ids: categories.iter().map(|c| (*c).to_owned()).collect(),
        unit_price: price.to_owned(),
        quantity: quantity.to_owned(),
        ..Default::default()
    }
}

fn customer(id: &str) -> CustomerContext {
    CustomerContext {
        customer_id: id.to_owned(),
        ..Default::default()
    }
}

fn tier(code: &str, accrual: &str, discount: &str, redeem_share: &str) -> CustomerTier {
    CustomerTier {
        code: code.to_owned(),
        rank: 0,
        accrual_percent: accrual.to_owned(),
        discount_percent: discount.to_owned(),
        max_redeem_share_percent: redeem_share.to_owned(),
    }
}

fn window(months: u32, turnover: &str, count: u64) -> WindowAggregate {
    WindowAggregate {
        lookback: Some(Lookback {
            span: Some(Span::Months(months)),
        }),
        turnover: turnover.to_owned(),
        purchase_count: count,
    }
}

fn input(lines: Vec<BasketLine>, customer: CustomerContext, at: DateTime<Utc>) -> EvaluationInput {
    EvaluationInput {
        lines,
        customer: Some(customer),
        occurred_at: Some(ts(at)),
        explain: ExplainLevel::Full as i32,
        ..Default::default()
    }
}

fn run(file: &str, input: &EvaluationInput) -> EvaluationResult {
    let program = load(file);
    let plan = Plan::compile(&program, 7).unwrap_or_else(|e| panic!("{file}: {e}"));
    let now = input
        .occurred_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
        .unwrap_or_else(Utc::now);
    let result = evaluate(&plan, input, &Catalog::default(), now)
        .unwrap_or_else(|e| panic!("{file}: evaluation failed: {e}"));
    assert_eq!(result.program_version, 7, "the result names its version");
    result
}

fn totals(r: &EvaluationResult) -> &kopilka_proto::rules::ReceiptTotals {
    r.totals.as_ref().expect("totals")
}

fn line_discount(r: &EvaluationResult, id: &str) -> Decimal {
    let l = r
        .lines
        .iter()
        .find(|l| l.line_id == id)
        .unwrap_or_else(|| panic!("no line {id}"));
    dec(&l.discount)
}

/// Total of one rule's contributions of one target over all lines.
fn by_rule(r: &EvaluationResult, rule: &str, target: EffectTarget) -> Decimal {
    r.lines
        .iter()
        .flat_map(|l| &l.contributions)
        .filter(|c| c.rule_id == rule && c.target == target as i32)
        .map(|c| dec(&c.amount))
        .sum()
}

fn outcome(r: &EvaluationResult, rule: &str) -> RuleOutcome {
    r.explanations
        .iter()
        .find(|e| e.rule_id == rule)
        .and_then(|e| RuleOutcome::try_from(e.outcome).ok())
        .unwrap_or(RuleOutcome::Unspecified)
}

fn applied_rules(r: &EvaluationResult) -> Vec<&str> {
    r.explanations
        .iter()
        .filter(|e| e.outcome == RuleOutcome::Applied as i32)
        .map(|e| e.rule_id.as_str())
        .collect()
}

#[test]
fn coffee_shop_sixth_coffee_is_free() {
    // Friday afternoon (no happy hours); the guest has 5 stamps, so this coffee is the 6th.
    let mut guest = customer("guest-1");
    guest.stamps = vec![StampBalance {
        stamp_card_id: "coffee-stamps".to_owned(),
        count: 5,
    }];
    let receipt = input(
        vec![
            line("1", "cappuccino", &["coffee"], "180.00", "1"),
            line("2", "croissant", &["bakery"], "120.00", "1"),
        ],
        guest,
        moscow(2026, 6, 5, 15, 0),
    );
    let r = run("coffee-shop.yaml", &receipt);
    assert_eq!(line_discount(&r, "1"), dec("180"), "the 6th coffee is free");
    assert_eq!(line_discount(&r, "2"), Decimal::ZERO);
    assert_eq!(dec(&totals(&r).paid_money), dec("120"));
    // 5 % of the 120.00 paid.
    assert_eq!(dec(&totals(&r).points_accrued), dec("6"));
    let change = r
        .stamp_changes
        .iter()
        .find(|c| c.stamp_card_id == "coffee-stamps")
        .expect("a stamp change for the coffee card");
    assert_eq!(change.balance_after, 0, "the card starts again: {change:?}");
    assert_eq!(outcome(&r, "happy-hours"), RuleOutcome::ConditionNotMet);

    // The same guest with 2 stamps pays for the coffee and gets a stamp.
    let mut guest = customer("guest-1");
    guest.stamps = vec![StampBalance {
        stamp_card_id: "coffee-stamps".to_owned(),
        count: 2,
    }];
    let receipt = input(
        vec![line("1", "cappuccino", &["coffee"], "180.00", "1")],
        guest,
        moscow(2026, 6, 5, 15, 0),
    );
    let r = run("coffee-shop.yaml", &receipt);
    assert_eq!(line_discount(&r, "1"), Decimal::ZERO);
    assert_eq!(dec(&totals(&r).points_accrued), dec("9"));
    let change = r
        .stamp_changes
        .iter()
        .find(|c| c.stamp_card_id == "coffee-stamps")
        .expect("a stamp change");
    assert_eq!((change.earned, change.balance_after), (1, 3));
}

#[test]
fn coffee_shop_happy_hours_take_ten_percent_off() {
    // Monday 10:00 Moscow: 10 % off everything, then 5 % points on what is paid, rounded down.
    let receipt = input(
        vec![
            line("1", "latte", &["coffee"], "200.00", "1"),
            line("2", "cheesecake", &["desserts"], "300.00", "1"),
        ],
        customer("guest-2"),
        moscow(2026, 6, 1, 10, 0),
    );
    let r = run("coffee-shop.yaml", &receipt);
    assert_eq!(dec(&totals(&r).discount), dec("50"));
    assert_eq!(dec(&totals(&r).net_amount), dec("450"));
    // 5 % of 450 = 22.5 → 22 points (points round down).
    assert_eq!(dec(&totals(&r).points_accrued), dec("22"));
    assert_eq!(outcome(&r, "happy-hours"), RuleOutcome::Applied);
    // 12:00 is outside the window.
    let receipt = EvaluationInput {
        occurred_at: Some(ts(moscow(2026, 6, 1, 12, 0))),
        ..receipt
    };
    let r = run("coffee-shop.yaml", &receipt);
    assert_eq!(dec(&totals(&r).discount), Decimal::ZERO);
}

#[test]
fn car_wash_points_per_wash_and_for_services_and_referrers() {
    let mut driver = customer("driver-1");
    driver.stamps = vec![StampBalance {
        stamp_card_id: "wash-visits".to_owned(),
        count: 3,
    }];
    driver.referrer_customer_ids = vec!["friend-1".to_owned(), "friend-2".to_owned()];
    driver.available_points = "10000".to_owned();
    let receipt = input(
        vec![
            line("1", "complex-wash", &["wash"], "800.00", "1"),
            line("2", "tyre-change", &["service"], "1500.00", "1"),
            line("3", "wipers", &["materials"], "500.00", "1"),
        ],
        driver,
        moscow(2026, 6, 3, 14, 0),
    );
    let r = run("car-wash.yaml", &receipt);
    assert_eq!(dec(&totals(&r).discount), Decimal::ZERO);
    // 50 for the wash + 10 % of 1500 for the service; nothing for materials.
    assert_eq!(by_rule(&r, "wash-points", EffectTarget::Accrual), dec("50"));
    assert_eq!(
        by_rule(&r, "service-points", EffectTarget::Accrual),
        dec("150")
    );
    assert_eq!(dec(&totals(&r).points_accrued), dec("200"));
    let wipers = r.lines.iter().find(|l| l.line_id == "3").expect("line 3");
    assert!(wipers.excluded_from_accrual && wipers.excluded_from_redemption);
    assert_eq!(dec(&wipers.accrual_points), Decimal::ZERO);
    // Points pay at most 30 % of the wash and the service; materials not at all.
    assert_eq!(dec(&totals(&r).max_redeem_points), dec("690"));
    // The visit is a stamp: 3 → 4.
    let change = r
        .stamp_changes
        .iter()
        .find(|c| c.stamp_card_id == "wash-visits")
        .expect("a stamp change");
    assert_eq!(change.balance_after, 4);
    // Referrers: level 1 gets 5 %, level 2 gets 3 % of the purchase.
    let reward = |who: &str| -> Decimal {
        r.referral_rewards
            .iter()
            .filter(|g| g.customer_id == who)
            .filter_map(|g| g.grant.as_ref())
            .map(|g| dec(&g.amount))
            .sum()
    };
    assert!(
        reward("friend-1") > Decimal::ZERO,
        "{:?}",
        r.referral_rewards
    );
    assert!(reward("friend-1") > reward("friend-2"));
    assert_eq!(
        dec(&totals(&r).referral_points),
        reward("friend-1") + reward("friend-2")
    );
    // The review and registration rewards never act on receipts.
    assert!(!applied_rules(&r).contains(&"review-reward"));
    assert!(!applied_rules(&r).contains(&"referral-registration"));
}

#[test]
fn car_wash_tenth_visit_is_free() {
    let mut driver = customer("driver-2");
    driver.stamps = vec![StampBalance {
        stamp_card_id: "wash-visits".to_owned(),
        count: 9,
    }];
    let receipt = input(
        vec![line("1", "express-wash", &["wash"], "600.00", "1")],
        driver,
        moscow(2026, 6, 6, 11, 0),
    );
    let r = run("car-wash.yaml", &receipt);
    assert_eq!(line_discount(&r, "1"), dec("600"));
    assert_eq!(dec(&totals(&r).paid_money), Decimal::ZERO);
    let change = r
        .stamp_changes
        .iter()
        .find(|c| c.stamp_card_id == "wash-visits")
        .expect("a stamp change");
    assert_eq!(change.balance_after, 0);
}

#[test]
fn fitness_club_tier_rate_and_weekly_bonus_but_no_start_bonus_on_receipts() {
    // A BASIC member (10 %) who last came 3 days ago buys a 2 000 personal training.
    let at = moscow(2026, 6, 3, 19, 0);
    let mut member = customer("member-1");
    member.tier = Some(tier("BASIC", "10", "", "30"));
    member.aggregates = Some(PurchaseAggregates {
        as_of: Some(ts(at)),
        lifetime_turnover: "12000".to_owned(),
        purchase_count: 8,
        last_purchase_at: Some(ts(at - chrono::Duration::days(3))),
        windows: vec![window(6, "12000", 8)],
        ..Default::default()
    });
    member.available_points = "5000".to_owned();
    let receipt = input(
        vec![line(
            "1",
            "personal-training",
            &["training"],
            "2000.00",
            "1",
        )],
        member,
        at,
    );
    let r = run("fitness-club.yaml", &receipt);
    assert_eq!(by_rule(&r, "tier-rates", EffectTarget::Accrual), dec("200"));
    assert_eq!(
        by_rule(&r, "weekly-visit", EffectTarget::Accrual),
        dec("100")
    );
    assert_eq!(dec(&totals(&r).points_accrued), dec("300"));
    assert_eq!(outcome(&r, "base-points"), RuleOutcome::LostInGroup);
    // The BASIC tier pays at most 30 % with points.
    assert_eq!(dec(&totals(&r).max_redeem_points), dec("600"));
    // The start bonus is for registration only: no 100-point lot on a receipt.
    let applied = applied_rules(&r);
    assert!(!applied.contains(&"start-bonus"), "{applied:?}");
    assert!(!applied.contains(&"survey-reward"), "{applied:?}");
    let accrued: Decimal = r.accruals.iter().map(|g| dec(&g.amount)).sum();
    assert_eq!(accrued, dec("300"));

    // A new member without a tier and no earlier purchase: the 10 % base rate only.
    let receipt = input(
        vec![line("1", "month-pass", &["membership"], "1500.00", "1")],
        customer("member-2"),
        at,
    );
    let r = run("fitness-club.yaml", &receipt);
    assert_eq!(dec(&totals(&r).points_accrued), dec("150"));
    assert_eq!(outcome(&r, "weekly-visit"), RuleOutcome::ConditionNotMet);
}

fn shopper(id: &str, three_months: &str) -> CustomerContext {
    let at = moscow(2026, 6, 3, 14, 0);
    let mut c = customer(id);
    c.aggregates = Some(PurchaseAggregates {
        as_of: Some(ts(at)),
        lifetime_turnover: three_months.to_owned(),
        purchase_count: 3,
        last_purchase_at: Some(ts(at - chrono::Duration::days(40))),
        windows: vec![window(3, three_months, 3)],
        ..Default::default()
    });
    c.available_points = "100000".to_owned();
    c
}

#[test]
fn electronics_brackets_and_activity_cashback() {
    let wednesday = moscow(2026, 6, 3, 14, 0);
    // No tier, quiet customer: 2 000 receipt → 12 % by bracket + 5 % cashback.
    let receipt = input(
        vec![line("1", "headphones", &["audio"], "2000.00", "1")],
        shopper("shopper-1", "8000"),
        wednesday,
    );
    let r = run("electronics-chain.yaml", &receipt);
    assert_eq!(
        by_rule(&r, "receipt-brackets", EffectTarget::Accrual),
        dec("240")
    );
    assert_eq!(
        by_rule(&r, "regular-cashback", EffectTarget::Accrual),
        dec("100")
    );
    assert_eq!(dec(&totals(&r).points_accrued), dec("340"));
    assert_eq!(outcome(&r, "active-cashback"), RuleOutcome::ConditionNotMet);

    // Exactly 1 000.00 is still the 6 % bracket.
    let receipt = input(
        vec![line("1", "speaker", &["audio"], "1000.00", "1")],
        shopper("shopper-1", "8000"),
        wednesday,
    );
    let r = run("electronics-chain.yaml", &receipt);
    assert_eq!(
        by_rule(&r, "receipt-brackets", EffectTarget::Accrual),
        dec("60")
    );

    // Over 30 000 in the last 3 months: 15 % cashback instead of 5 %.
    let receipt = input(
        vec![line("1", "headphones", &["audio"], "2000.00", "1")],
        shopper("shopper-2", "35000"),
        wednesday,
    );
    let r = run("electronics-chain.yaml", &receipt);
    assert_eq!(
        by_rule(&r, "active-cashback", EffectTarget::Accrual),
        dec("300")
    );
    assert_eq!(outcome(&r, "regular-cashback"), RuleOutcome::LostInGroup);
    assert_eq!(dec(&totals(&r).points_accrued), dec("540"));
}

#[test]
fn electronics_accessories_three_for_two_and_sale_outside() {
    let receipt = input(
        vec![
            line("1", "case", &["accessories"], "500.00", "1"),
            line("2", "cable", &["accessories"], "400.00", "1"),
            line("3", "charger", &["accessories"], "300.00", "1"),
            line("4", "old-phone", &["sale"], "5000.00", "1"),
        ],
        shopper("shopper-3", "0"),
        moscow(2026, 6, 3, 14, 0),
    );
    let r = run("electronics-chain.yaml", &receipt);
    assert_eq!(line_discount(&r, "3"), dec("300"), "the cheapest is free");
    assert_eq!(line_discount(&r, "1"), Decimal::ZERO);
    assert_eq!(line_discount(&r, "4"), Decimal::ZERO);
    let sale = r.lines.iter().find(|l| l.line_id == "4").expect("line 4");
    assert!(sale.excluded_from_discount && sale.excluded_from_accrual);
    assert!(sale.excluded_from_redemption);
    assert_eq!(dec(&sale.accrual_points), Decimal::ZERO);
    assert_eq!(dec(&sale.max_redeem_points), Decimal::ZERO);
}

#[test]
fn electronics_redemption_more_on_weekdays_than_weekends() {
    // A VIP (10 % off, 100 % payable by tier): the day's limit decides.
    let vip = |id: &str| {
        let mut c = shopper(id, "0");
        c.tier = Some(tier("VIP", "", "10", "100"));
        c
    };
    let lines = vec![line("1", "tablet", &["tablets"], "2000.00", "1")];
    let r = run(
        "electronics-chain.yaml",
        &input(lines.clone(), vip("vip-1"), moscow(2026, 6, 3, 14, 0)),
    );
    assert_eq!(dec(&totals(&r).discount), dec("200"));
    // Wednesday: 50 % of 1 800.
    assert_eq!(dec(&totals(&r).max_redeem_points), dec("900"));
    let r = run(
        "electronics-chain.yaml",
        &input(lines, vip("vip-1"), moscow(2026, 6, 6, 14, 0)),
    );
    // Saturday: 20 % of 1 800.
    assert_eq!(dec(&totals(&r).max_redeem_points), dec("360"));
}

#[test]
fn every_program_evaluates_an_anonymous_receipt() {
    // No customer: discount rules that need one do not apply, nothing accrues, nothing fails.
    for (name, text) in program_files() {
        let program = from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = Plan::compile(&program, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        let at = moscow(2026, 6, 3, 14, 0);
        let receipt = EvaluationInput {
            lines: vec![
                line("1", "p1", &["coffee"], "250.00", "2"),
                line("2", "p2", &["sale"], "99.90", "1"),
            ],
            occurred_at: Some(ts(at)),
            ..Default::default()
        };
        let r = evaluate(&plan, &receipt, &Catalog::default(), at)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(dec(&totals(&r).gross_amount), dec("599.90"), "{name}");
        assert_eq!(dec(&totals(&r).points_accrued), Decimal::ZERO, "{name}");
    }
}
