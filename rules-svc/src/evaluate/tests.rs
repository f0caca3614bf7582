//! Every mechanic of FEATURES R1–R15 with the seed documents' own numbers.

use chrono::{DateTime, TimeZone, Utc};
use kopilka_proto::rules::{
    CustomerContext, CustomerTier, EvaluationInput, EvaluationResult, ExplainLevel, HintKind,
    RuleOutcome,
};
use kopilka_proto::types::{
    lookback::Span, BasketLine, Date, Lookback, PurchaseAggregates, StampBalance, WindowAggregate,
};
use kopilka_proto::wkt::Timestamp;
use rust_decimal::Decimal;

use super::evaluate;
use crate::catalog::Catalog;
use crate::document::from_yaml;
use crate::error::Error;
use crate::plan::Plan;

const HEAD: &str = "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n";

fn plan(rules: &str) -> Plan {
    plan_with(HEAD, rules)
}

fn plan_with(head: &str, rules: &str) -> Plan {
    let program = from_yaml(&format!("{head}rules:\n{rules}")).expect("test program parses");
    Plan::compile(&program, 1).expect("test program compiles")
}

fn line(id: &str, product: &str, categories: &[&str], price: &str, quantity: &str) -> BasketLine {
    BasketLine {
        line_id: id.into(),
        product_id: product.into(),
        category_ids: categories.iter().map(|c| c.to_string()).collect(),
        unit_price: price.into(),
        quantity: quantity.into(),
        ..Default::default()
    }
}

/// Monday 2026-11-30 10:00 Moscow time.
fn monday_10() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 7, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn customer() -> CustomerContext {
    CustomerContext {
        customer_id: "c1".into(),
        available_points: "100000".into(),
        ..Default::default()
    }
}

fn input(
    lines: Vec<BasketLine>,
    customer: Option<CustomerContext>,
    at: DateTime<Utc>,
) -> EvaluationInput {
    EvaluationInput {
        lines,
        customer,
        occurred_at: Some(ts(at)),
        explain: ExplainLevel::Full as i32,
        ..Default::default()
    }
}

fn run(plan: &Plan, input: &EvaluationInput) -> EvaluationResult {
    evaluate(
        plan,
        input,
        &Catalog::default(),
        monday_10() + chrono::Duration::days(30),
    )
    .expect("evaluates")
}

fn one(price: &str) -> Vec<BasketLine> {
    vec![line("1", "p1", &["goods"], price, "1")]
}

fn totals(r: &EvaluationResult) -> &kopilka_proto::rules::ReceiptTotals {
    r.totals.as_ref().unwrap()
}

fn accrued(plan: &Plan, price: &str) -> String {
    totals(&run(
        plan,
        &input(one(price), Some(customer()), monday_10()),
    ))
    .points_accrued
    .clone()
}

const BRACKETS: &str = "  - id: brackets\n    name: 3/6/12\n    accrue_brackets:\n      brackets:\n        - {at_least: \"0\", percent: \"3\"}\n        - {at_least: \"500\", percent: \"6\"}\n        - {above: \"1000\", percent: \"12\"}\n";

#[test]
fn r3_brackets_by_receipt_total_with_boundaries() {
    let p = plan(BRACKETS);
    // Below 500 -> 3 % (rounded down), 500-1000 -> 6 %, above 1000 -> 12 %.
    assert_eq!(accrued(&p, "499.99"), "14");
    assert_eq!(accrued(&p, "500.00"), "30");
    assert_eq!(accrued(&p, "750.00"), "45");
    assert_eq!(accrued(&p, "1000.00"), "60");
    assert_eq!(accrued(&p, "1000.01"), "120");
    assert_eq!(accrued(&p, "2000.00"), "240");
    // The cashier is told how much more reaches 12 %.
    let r = run(&p, &input(one("880.00"), Some(customer()), monday_10()));
    let hint = r
        .hints
        .iter()
        .find(|h| h.kind == HintKind::NextBracket as i32)
        .unwrap();
    assert_eq!(
        (hint.amount_needed.as_str(), hint.benefit.as_str()),
        ("120.01", "12")
    );
    assert!(hint.message.contains("120.01"), "{}", hint.message);
    let e = r
        .explanations
        .iter()
        .find(|e| e.rule_id == "brackets")
        .unwrap();
    assert_eq!(e.outcome, RuleOutcome::Applied as i32);
    assert_eq!(e.amount, "52");
}

#[test]
fn r1_discounts_fixed_and_by_receipt_total() {
    let p = plan(
        "  - id: fixed\n    name: 100 off\n    discount_fixed: {amount: \"100\"}\n  - id: by-total\n    name: 5 % from 1000\n    when: {receipt_total: {at_least: \"1000\"}}\n    discount_percent: {percent: \"5\"}\n",
    );
    let lines = vec![
        line("1", "a", &[], "333.33", "1"),
        line("2", "b", &[], "333.33", "1"),
        line("3", "c", &[], "333.34", "1"),
    ];
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    let t = totals(&r);
    // 100 spread by largest remainder plus 5 % of 1000.00 = 50.00.
    assert_eq!(t.discount, "150.00");
    let sum: rust_decimal::Decimal = r
        .lines
        .iter()
        .map(|l| l.discount.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(sum.to_string(), "150.00");
    assert_eq!(t.net_amount, "850.00");
    // Below 1000 only the fixed discount.
    let r = run(&p, &input(one("999.99"), Some(customer()), monday_10()));
    assert_eq!(totals(&r).discount, "100.00");
    let miss = r
        .explanations
        .iter()
        .find(|e| e.rule_id == "by-total")
        .unwrap();
    assert_eq!(miss.failed_path, "rules[1].when.receipt_total");
    assert!(miss.near_miss);
    assert_eq!(miss.missing_amount, "0.01");
}

#[test]
fn r2_percent_per_100_and_fixed_per_product() {
    let p = plan("  - id: per100\n    name: 1 point per each full 100\n    accrue_per_amount: {points: \"1\", every: \"100\"}\n");
    assert_eq!(accrued(&p, "99.99"), "0");
    assert_eq!(accrued(&p, "199.99"), "1");
    assert_eq!(accrued(&p, "250.00"), "2");
    let p = plan("  - id: wash\n    name: 50 points per wash\n    scope: {product_ids: [wash]}\n    accrue_fixed: {points: \"50\", per: PER_UNIT}\n");
    let lines = vec![
        line("1", "wash", &[], "500", "2"),
        line("2", "wax", &[], "300", "1"),
    ];
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    assert_eq!(r.lines[0].accrual_points, "100");
    assert_eq!(r.lines[1].accrual_points, "0");
    let p = plan("  - id: pct\n    name: 4 %\n    accrue_percent: {percent: \"4\"}\n");
    assert_eq!(accrued(&p, "1234.56"), "49");
}

#[test]
fn r4_exclusions_from_discount_accrual_and_redemption() {
    let p = plan(
        "  - id: sale\n    name: sale\n    scope: {category_ids: [sale]}\n    exclude: {from_accrual: true, from_discount: true}\n  - id: materials\n    name: materials not payable with points\n    scope: {category_ids: [materials]}\n    exclude: {from_redemption: true}\n  - id: base\n    name: 10 %\n    discount_percent: {percent: \"10\"}\n  - id: pts\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n",
    );
    let lines = vec![
        line("1", "a", &["sale"], "200", "1"),
        line("2", "b", &["materials"], "300", "1"),
        line("3", "c", &["services"], "500", "1"),
    ];
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    assert_eq!(r.lines[0].discount, "0.00");
    assert_eq!(r.lines[0].accrual_points, "0");
    assert!(r.lines[0].excluded_from_discount && r.lines[0].excluded_from_accrual);
    assert_eq!(r.lines[1].discount, "30.00");
    assert_eq!(r.lines[1].max_redeem_points, "0");
    assert!(r.lines[1].excluded_from_redemption);
    assert_eq!(r.lines[2].max_redeem_points, "450");
    assert_eq!(totals(&r).max_redeem_points, "650");
}

fn tier(code: &str, discount: &str, accrual: &str, share: &str) -> CustomerContext {
    CustomerContext {
        tier: Some(CustomerTier {
            code: code.into(),
            rank: 1,
            discount_percent: discount.into(),
            accrual_percent: accrual.into(),
            max_redeem_share_percent: share.into(),
        }),
        ..customer()
    }
}

#[test]
fn r5_tier_rates_discount_and_redemption_share() {
    let p = plan("  - id: tier\n    name: tier rates\n    tier_rates: {discount: true, accrual: true, redemption_share: true}\n");
    let r = run(
        &p,
        &input(one("1000"), Some(tier("NEW", "3", "", "30")), monday_10()),
    );
    assert_eq!(totals(&r).discount, "30.00");
    assert_eq!(totals(&r).max_redeem_points, "291");
    let r = run(
        &p,
        &input(
            one("1000"),
            Some(tier("VIP", "10", "5", "100")),
            monday_10(),
        ),
    );
    assert_eq!(totals(&r).discount, "100.00");
    assert_eq!(totals(&r).max_redeem_points, "900");
    assert_eq!(totals(&r).points_accrued, "45");
    // No tier: nothing from this rule.
    let r = run(&p, &input(one("1000"), Some(customer()), monday_10()));
    assert_eq!(totals(&r).discount, "0.00");
}

#[test]
fn r6_birthday_window_three_days_each_side() {
    let p = plan("  - id: base\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n  - id: bday\n    name: double on birthday\n    when: {birthday: {days_before: 3, days_after: 3}}\n    accrual_multiplier: {factor: \"2\"}\n");
    let born = |month, day| CustomerContext {
        birth_date: Some(Date {
            year: 1990,
            month,
            day,
        }),
        ..customer()
    };
    // Monday 30 November: a birthday on 3 December is 3 days ahead; on 4 December, 4.
    let r = run(&p, &input(one("1000"), Some(born(12, 3)), monday_10()));
    assert_eq!(totals(&r).points_accrued, "100");
    assert!(r.hints.iter().any(|h| h.kind == HintKind::Birthday as i32));
    let r = run(&p, &input(one("1000"), Some(born(12, 4)), monday_10()));
    assert_eq!(totals(&r).points_accrued, "50");
    let r = run(&p, &input(one("1000"), Some(born(11, 27)), monday_10()));
    assert_eq!(totals(&r).points_accrued, "100");
    let r = run(&p, &input(one("1000"), Some(customer()), monday_10()));
    assert_eq!(totals(&r).points_accrued, "50", "no birth date, no bonus");
}

#[test]
fn r7_happy_hours_in_the_merchant_time_zone() {
    let p = plan("  - id: hh\n    name: Mon-Thu 9-12\n    when:\n      time_windows:\n        - weekdays: [WEEKDAY_MONDAY, WEEKDAY_TUESDAY, WEEKDAY_WEDNESDAY, WEEKDAY_THURSDAY]\n          start: \"09:00\"\n          end: \"12:00\"\n    discount_percent: {percent: \"10\"}\n");
    let at = |d, h, m| Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
    let discount = |t| {
        totals(&run(&p, &input(one("500"), Some(customer()), t)))
            .discount
            .clone()
    };
    assert_eq!(discount(at(30, 6, 0)), "50.00", "Monday 09:00 MSK");
    assert_eq!(discount(at(30, 8, 59)), "50.00", "Monday 11:59 MSK");
    assert_eq!(discount(at(30, 9, 0)), "0.00", "Monday 12:00 MSK");
    assert_eq!(discount(at(30, 5, 59)), "0.00", "Monday 08:59 MSK");
    assert_eq!(discount(at(27, 7, 0)), "0.00", "Friday 10:00 MSK");
    // A store in another zone: 10:00 in Vladivostok is 00:00 UTC.
    let mut i = input(one("500"), Some(customer()), at(30, 0, 0));
    i.time_zone = "Asia/Vladivostok".into();
    assert_eq!(totals(&run(&p, &i)).discount, "50.00");
}

fn with_last_purchase(days_ago: i64) -> CustomerContext {
    CustomerContext {
        aggregates: Some(PurchaseAggregates {
            purchase_count: 3,
            last_purchase_at: Some(ts(monday_10() - chrono::Duration::days(days_ago))),
            ..Default::default()
        }),
        ..customer()
    }
}

#[test]
fn r8_frequency_bonus_within_seven_days() {
    let p = plan("  - id: base\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n  - id: again\n    name: +3 % within 7 days\n    when: {since_last_purchase: {within_days: 7}}\n    accrue_percent: {percent: \"3\"}\n");
    let pts = |c| {
        totals(&run(&p, &input(one("1000"), Some(c), monday_10())))
            .points_accrued
            .clone()
    };
    assert_eq!(pts(with_last_purchase(7)), "80");
    assert_eq!(pts(with_last_purchase(8)), "50");
    assert_eq!(pts(customer()), "50", "no previous purchase");
}

fn with_turnover(three_months: &str) -> CustomerContext {
    CustomerContext {
        aggregates: Some(PurchaseAggregates {
            lifetime_turnover: "100000".into(),
            windows: vec![WindowAggregate {
                lookback: Some(Lookback {
                    span: Some(Span::Months(3)),
                }),
                turnover: three_months.into(),
                purchase_count: 10,
            }],
            ..Default::default()
        }),
        ..customer()
    }
}

#[test]
fn r9_turnover_over_three_months_selects_the_rate() {
    let p = plan_with(
        "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\ngroups: [{id: rate, mode: GROUP_MODE_FIRST}]\n",
        "  - id: active\n    name: 15 % for > 30 000 in 3 months\n    group: rate\n    priority: 10\n    when: {turnover: {lookback: {months: 3}, amount: {above: \"30000\"}}}\n    accrue_percent: {percent: \"15\"}\n  - id: base\n    name: 5 % otherwise\n    group: rate\n    accrue_percent: {percent: \"5\"}\n",
    );
    let r = run(
        &p,
        &input(one("1000"), Some(with_turnover("30000.01")), monday_10()),
    );
    assert_eq!(totals(&r).points_accrued, "150");
    let lost = r.explanations.iter().find(|e| e.rule_id == "base").unwrap();
    assert_eq!(lost.outcome, RuleOutcome::LostInGroup as i32);
    assert_eq!(lost.superseded_by, "active");
    let r = run(
        &p,
        &input(one("1000"), Some(with_turnover("30000")), monday_10()),
    );
    assert_eq!(totals(&r).points_accrued, "50");
    let miss = r
        .explanations
        .iter()
        .find(|e| e.rule_id == "active")
        .unwrap();
    assert_eq!(miss.failed_path, "rules[0].when.turnover");
}

#[test]
fn r10_redemption_limits_share_weekday_per_visit_and_refusals() {
    let p = plan_with(
        "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow, max_redeem_share_percent: \"50\"}\n",
        "  - id: weekend\n    name: 20 % on weekends\n    when: {time_windows: [{weekdays: [WEEKDAY_SATURDAY, WEEKDAY_SUNDAY]}]}\n    redemption_limit: {max_share_percent: \"20\"}\n  - id: visit\n    name: at most 300 per visit\n    redemption_limit: {max_points: \"300\"}\n",
    );
    let lines = vec![
        line("1", "a", &[], "400", "1"),
        line("2", "b", &[], "400", "1"),
    ];
    let r = run(&p, &input(lines.clone(), Some(customer()), monday_10()));
    assert_eq!(
        totals(&r).max_redeem_points,
        "300",
        "50 % = 400, per visit 300"
    );
    let sunday = Utc.with_ymd_and_hms(2026, 11, 29, 9, 0, 0).unwrap();
    let r = run(&p, &input(lines.clone(), Some(customer()), sunday));
    assert_eq!(totals(&r).max_redeem_points, "160", "weekend share 20 %");
    // Asking for more than allowed, or more than the customer has.
    let mut i = input(lines.clone(), Some(customer()), monday_10());
    i.redeem_points = "301".into();
    let err = evaluate(&p, &i, &Catalog::default(), monday_10()).unwrap_err();
    assert!(
        matches!(&err, Error::Refused(r) if r.reason == "REDEMPTION_LIMIT_EXCEEDED" && r.get("max_redeemable") == Some("300")),
        "{err:?}"
    );
    let mut poor = customer();
    poor.available_points = "100".into();
    let mut i = input(lines.clone(), Some(poor), monday_10());
    i.redeem_points = "150".into();
    let err = evaluate(&p, &i, &Catalog::default(), monday_10()).unwrap_err();
    assert!(
        matches!(&err, Error::Refused(r) if r.reason == "INSUFFICIENT_POINTS"),
        "{err:?}"
    );
    // A valid redemption is spread over the lines and lowers the money to pay.
    let mut i = input(lines, Some(customer()), monday_10());
    i.redeem_points = "300".into();
    let r = run(&p, &i);
    assert_eq!(
        (
            r.lines[0].redeem_points.as_str(),
            r.lines[1].redeem_points.as_str()
        ),
        ("150", "150")
    );
    assert_eq!(totals(&r).paid_money, "500.00");
}

#[test]
fn r11_three_for_two_every_second_half_price_and_stamps() {
    let p = plan("  - id: three-for-two\n    name: 3 for 2\n    n_for_m: {buy: 3, pay: 2}\n");
    let lines = vec![
        line("1", "a", &[], "100", "2"),
        line("2", "b", &[], "60", "1"),
        line("3", "c", &[], "50", "1"),
    ];
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    // Units 100, 100, 60 | 50: the cheapest of the full group (60) is free.
    assert_eq!(totals(&r).discount, "60.00");
    assert_eq!(r.lines[1].discount, "60.00");
    let p = plan(
        "  - id: second\n    name: every second 50 %\n    nth_item: {every: 2, percent: \"50\"}\n",
    );
    let lines = vec![
        line("1", "a", &[], "100", "1"),
        line("2", "b", &[], "80", "1"),
        line("3", "c", &[], "60", "1"),
    ];
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    assert_eq!(
        totals(&r).discount,
        "40.00",
        "the second dearest (80) half price"
    );
    assert!(r
        .hints
        .iter()
        .any(|h| h.kind == HintKind::OneMoreItem as i32));
    let p = plan("  - id: pizza\n    name: every 6th pizza free\n    scope: {category_ids: [pizza]}\n    stamp_card: {every: 6}\n");
    let with_stamps = |n| CustomerContext {
        stamps: vec![StampBalance {
            stamp_card_id: "pizza".into(),
            count: n,
        }],
        ..customer()
    };
    let pizzas = vec![
        line("1", "margherita", &["pizza"], "500", "1"),
        line("2", "cola", &["drinks"], "100", "1"),
    ];
    let r = run(
        &p,
        &input(pizzas.clone(), Some(with_stamps(5)), monday_10()),
    );
    assert_eq!(totals(&r).discount, "500.00", "the 6th pizza is free");
    let c = &r.stamp_changes[0];
    assert_eq!((c.earned, c.consumed, c.balance_after), (0, 5, 0));
    let r = run(&p, &input(pizzas, Some(with_stamps(3)), monday_10()));
    assert_eq!(totals(&r).discount, "0.00");
    let c = &r.stamp_changes[0];
    assert_eq!((c.earned, c.consumed, c.balance_after), (1, 0, 4));
    let hint = r
        .hints
        .iter()
        .find(|h| h.kind == HintKind::Stamps as i32)
        .unwrap();
    assert_eq!(hint.units_needed, 1);
}

#[test]
fn r12_discount_and_points_stack_or_compete() {
    // Stacking: points accrue on the amount after discount.
    let p = plan("  - id: d\n    name: 10 % off\n    discount_percent: {percent: \"10\"}\n  - id: a\n    name: 5 % points\n    accrue_percent: {percent: \"5\"}\n");
    let r = run(&p, &input(one("1000"), Some(customer()), monday_10()));
    assert_eq!(
        (
            totals(&r).discount.as_str(),
            totals(&r).points_accrued.as_str()
        ),
        ("100.00", "45")
    );
    // Competing in a BEST group: the one worth more wins.
    let p = plan_with(
        "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\ngroups: [{id: promo}]\n",
        "  - id: d\n    name: 10 % off\n    group: promo\n    discount_percent: {percent: \"10\"}\n  - id: a\n    name: 15 % points\n    group: promo\n    accrue_percent: {percent: \"15\"}\n",
    );
    let r = run(&p, &input(one("1000"), Some(customer()), monday_10()));
    assert_eq!(
        (
            totals(&r).discount.as_str(),
            totals(&r).points_accrued.as_str()
        ),
        ("0.00", "150")
    );
    // stop_further_rules: sale lines get the promo and nothing lower.
    let p = plan("  - id: promo\n    name: 20 % promo\n    priority: 10\n    stop_further_rules: true\n    scope: {category_ids: [promo]}\n    discount_percent: {percent: \"20\"}\n  - id: all\n    name: 5 % on all\n    discount_percent: {percent: \"5\"}\n");
    let lines = vec![
        line("1", "a", &["promo"], "100", "1"),
        line("2", "b", &[], "100", "1"),
    ];
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    assert_eq!(
        (r.lines[0].discount.as_str(), r.lines[1].discount.as_str()),
        ("20.00", "5.00")
    );
}

#[test]
fn r13_tier_progress_hint() {
    let p = plan_with(
        "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\ntier_progression:\n  levels:\n    - {tier_code: NEW}\n    - {tier_code: GOLD, cumulative_turnover_at_least: \"10000\"}\n    - {tier_code: VIP, cumulative_turnover_at_least: \"30000\"}\n",
        "  - id: base\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n",
    );
    let mut c = tier("NEW", "", "", "");
    c.aggregates = Some(PurchaseAggregates {
        lifetime_turnover: "8000".into(),
        ..Default::default()
    });
    let r = run(&p, &input(one("800"), Some(c), monday_10()));
    let hint = r
        .hints
        .iter()
        .find(|h| h.kind == HintKind::TierProgress as i32)
        .unwrap();
    assert_eq!(
        (hint.amount_needed.as_str(), hint.benefit.as_str()),
        ("1200.00", "GOLD")
    );
}

#[test]
fn r15_cashback_on_money_paid_and_referral_rewards() {
    let p = plan("  - id: cb\n    name: 10 % cashback\n    cashback: {percent: \"10\"}\n  - id: ref\n    name: friends\n    referral_reward:\n      levels:\n        - {level: 1, percent: \"2\"}\n        - {level: 2, points: \"10\"}\n");
    let mut c = customer();
    c.referrer_customer_ids = vec!["friend".into(), "friend-of-friend".into()];
    let mut i = input(one("1000"), Some(c), monday_10());
    i.redeem_points = "200".into();
    let r = run(&p, &i);
    assert_eq!(
        totals(&r).points_accrued,
        "80",
        "10 % of the 800.00 paid in money"
    );
    assert_eq!(
        r.accruals[0].kind,
        kopilka_proto::types::LotKind::Cashback as i32
    );
    assert_eq!(r.referral_rewards.len(), 2);
    assert_eq!(r.referral_rewards[0].grant.as_ref().unwrap().amount, "16");
    assert_eq!(r.referral_rewards[1].grant.as_ref().unwrap().amount, "10");
    assert_eq!(totals(&r).referral_points, "26");
}

#[test]
fn promo_codes_anonymous_receipts_and_lot_terms() {
    let p = plan_with(
        "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow, accrual_activation_days: 14, accrual_validity_days: 365}\n",
        "  - id: code\n    name: SUMMER 15 % off\n    when: {promo_code: {codes: [summer]}, include_anonymous: true}\n    discount_percent: {percent: \"15\"}\n  - id: pts\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n",
    );
    let mut i = input(one("1000"), None, monday_10());
    i.promo_codes = vec!["Summer".into(), "NOPE".into()];
    let r = run(&p, &i);
    assert_eq!(totals(&r).discount, "150.00");
    assert_eq!(
        totals(&r).points_accrued,
        "0",
        "anonymous receipts earn nothing"
    );
    assert_eq!(r.applied_promo_codes, ["SUMMER"]);
    assert!(r
        .hints
        .iter()
        .any(|h| h.kind == HintKind::PromoCodeUnknown as i32 && h.benefit == "NOPE"));
    let anon = r.explanations.iter().find(|e| e.rule_id == "pts").unwrap();
    assert_eq!(anon.outcome, RuleOutcome::Anonymous as i32);
    // A member's points are pending 14 days, then valid a year.
    let r = run(&p, &input(one("1000"), Some(customer()), monday_10()));
    let lot = &r.accruals[0];
    assert_eq!(lot.amount, "50");
    assert_eq!(
        lot.activates_at.as_ref().unwrap().seconds,
        (monday_10() + chrono::Duration::days(14)).timestamp()
    );
    assert_eq!(
        lot.expires_at.as_ref().unwrap().seconds,
        (monday_10() + chrono::Duration::days(379)).timestamp()
    );
}

#[test]
fn bad_baskets_name_the_field_and_never_panic() {
    let p = plan(BRACKETS);
    let mut bad = one("10.001");
    bad.push(line("1", "p2", &[], "5", "0"));
    let err = evaluate(
        &p,
        &input(bad, Some(customer()), monday_10()),
        &Catalog::default(),
        monday_10(),
    )
    .unwrap_err();
    let Error::Invalid(v) = err else {
        panic!("{err:?}")
    };
    assert_eq!(v.reason(), "BASKET_INVALID");
    let fields: Vec<&str> = v.fields().iter().map(|x| x.0.as_str()).collect();
    assert_eq!(
        fields,
        [
            "input.lines[0].unit_price",
            "input.lines[1].line_id",
            "input.lines[1].quantity"
        ]
    );
    let err = evaluate(
        &p,
        &input(vec![], None, monday_10()),
        &Catalog::default(),
        monday_10(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Invalid(ref v) if v.fields()[0].0 == "input.lines"));
    let future = input(one("10"), None, monday_10() + chrono::Duration::minutes(6));
    let err = evaluate(&p, &future, &Catalog::default(), monday_10()).unwrap_err();
    assert!(matches!(err, Error::Invalid(ref v) if v.fields()[0].0 == "input.occurred_at"));
}

#[test]
fn same_input_same_output() {
    let p = plan(BRACKETS);
    let i = input(one("777.77"), Some(customer()), monday_10());
    assert_eq!(run(&p, &i), run(&p, &i));
}

#[test]
fn stacked_multipliers_saturate_instead_of_overflowing() {
    let mut rules = "  - id: huge\n    name: huge\n    accrue_fixed: {points: \"999999999999\", per: PER_UNIT}\n".to_owned();
    for i in 0..20 {
        rules.push_str(&format!(
            "  - id: m{i}\n    name: m\n    accrual_multiplier: {{factor: \"100\"}}\n"
        ));
    }
    let p = plan(&rules);
    let r = run(
        &p,
        &input(
            vec![line("1", "x", &[], "1", "100000")],
            Some(customer()),
            monday_10(),
        ),
    );
    assert!(!totals(&r).points_accrued.is_empty());
}

// ---- properties: lines add up to totals, every figure on its scale ----

/// A random rule, written out as YAML by [`GenRule::yaml`].
#[derive(Debug, Clone)]
enum GenEffect {
    Percent {
        tenths: u32,
        max: Option<u32>,
    },
    Fixed {
        amount: u32,
        per: &'static str,
    },
    NForM {
        buy: u32,
        pay: u32,
        max_times: u32,
    },
    Nth {
        every: u32,
        tenths: u32,
        max_times: u32,
    },
    Stamp {
        every: u32,
        per_receipt: bool,
        points: Option<u32>,
        tenths: u32,
    },
    Accrue {
        tenths: u32,
        gross: bool,
    },
    AccrueFixed {
        points: u32,
        per: &'static str,
    },
    Cashback {
        tenths: u32,
    },
    Multiplier {
        tenths: u32,
    },
    Referral {
        tenths: u32,
    },
    Limit {
        share: u32,
    },
}

#[derive(Debug, Clone)]
struct GenRule {
    effect: GenEffect,
    /// Scope: lines of this category only.
    category: Option<&'static str>,
    stop: bool,
}

impl GenRule {
    fn yaml(&self, id: usize) -> String {
        let pct = |tenths: u32| Decimal::new(i64::from(tenths), 1);
        let effect = match &self.effect {
            GenEffect::Percent { tenths, max } => match max {
                Some(m) => format!(
                    "discount_percent: {{percent: \"{}\", max_amount: \"{m}\"}}",
                    pct(*tenths)
                ),
                None => format!("discount_percent: {{percent: \"{}\"}}", pct(*tenths)),
            },
            GenEffect::Fixed { amount, per } => {
                format!("discount_fixed: {{amount: \"{amount}\", per: {per}}}")
            }
            GenEffect::NForM {
                buy,
                pay,
                max_times,
            } => {
                format!("n_for_m: {{buy: {buy}, pay: {pay}, max_times: {max_times}}}")
            }
            GenEffect::Nth {
                every,
                tenths,
                max_times,
            } => format!(
                "nth_item: {{every: {every}, percent: \"{}\", max_times: {max_times}}}",
                pct(*tenths)
            ),
            GenEffect::Stamp {
                every,
                per_receipt,
                points,
                tenths,
            } => {
                let per = if *per_receipt {
                    "PER_RECEIPT"
                } else {
                    "PER_UNIT"
                };
                match points {
                    Some(p) => {
                        format!("stamp_card: {{every: {every}, per: {per}, points: \"{p}\"}}")
                    }
                    None => format!(
                        "stamp_card: {{every: {every}, per: {per}, discount_percent: \"{}\"}}",
                        pct(*tenths)
                    ),
                }
            }
            GenEffect::Accrue { tenths, gross } => {
                let basis = if *gross {
                    "AMOUNT_BASIS_GROSS"
                } else {
                    "AMOUNT_BASIS_NET"
                };
                format!(
                    "accrue_percent: {{percent: \"{}\", basis: {basis}}}",
                    pct(*tenths)
                )
            }
            GenEffect::AccrueFixed { points, per } => {
                format!("accrue_fixed: {{points: \"{points}\", per: {per}}}")
            }
            GenEffect::Cashback { tenths } => {
                format!("cashback: {{percent: \"{}\"}}", pct(*tenths))
            }
            GenEffect::Multiplier { tenths } => {
                format!("accrual_multiplier: {{factor: \"{}\"}}", pct(*tenths))
            }
            GenEffect::Referral { tenths } => format!(
                "referral_reward:\n      levels:\n        - {{level: 1, percent: \"{}\"}}",
                pct(*tenths)
            ),
            GenEffect::Limit { share } => {
                format!("redemption_limit: {{max_share_percent: \"{share}\"}}")
            }
        };
        let mut out = format!("  - id: r{id}\n    name: r{id}\n");
        if self.stop {
            out.push_str("    stop_further_rules: true\n");
        }
        if let Some(c) = self.category {
            out.push_str(&format!("    scope: {{category_ids: [{c}]}}\n"));
        }
        out.push_str(&format!("    {effect}\n"));
        out
    }
}

fn gen_effect() -> impl proptest::strategy::Strategy<Value = GenEffect> {
    use proptest::prelude::*;
    let per = || prop_oneof![Just("PER_RECEIPT"), Just("PER_LINE"), Just("PER_UNIT")];
    prop_oneof![
        (1u32..=1000, proptest::option::of(1u32..500))
            .prop_map(|(tenths, max)| GenEffect::Percent { tenths, max }),
        (1u32..300, per()).prop_map(|(amount, per)| GenEffect::Fixed { amount, per }),
        (2u32..7)
            .prop_flat_map(|buy| (Just(buy), 1..buy, 0u32..5))
            .prop_map(|(buy, pay, max_times)| GenEffect::NForM {
                buy,
                pay,
                max_times
            }),
        (2u32..6, 1u32..=1000, 0u32..5).prop_map(|(every, tenths, max_times)| GenEffect::Nth {
            every,
            tenths,
            max_times
        }),
        (
            2u32..7,
            any::<bool>(),
            proptest::option::of(1u32..50),
            1u32..=1000
        )
            .prop_map(|(every, per_receipt, points, tenths)| GenEffect::Stamp {
                every,
                per_receipt,
                points,
                tenths
            }),
        (1u32..=300, any::<bool>()).prop_map(|(tenths, gross)| GenEffect::Accrue { tenths, gross }),
        (1u32..20, per()).prop_map(|(points, per)| GenEffect::AccrueFixed { points, per }),
        (1u32..=300).prop_map(|tenths| GenEffect::Cashback { tenths }),
        (10u32..=30).prop_map(|tenths| GenEffect::Multiplier { tenths }),
        (1u32..=100).prop_map(|tenths| GenEffect::Referral { tenths }),
        (0u32..=100).prop_map(|share| GenEffect::Limit { share }),
    ]
}

fn gen_rule() -> impl proptest::strategy::Strategy<Value = GenRule> {
    use proptest::prelude::*;
    (
        gen_effect(),
        prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))],
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(effect, category, stop)| GenRule {
            effect,
            category,
            stop,
        })
}

/// A random basket line: price in minor units, quantity whole + thousandths, an optional
/// register amount as a share (per mille) of price x quantity.
#[derive(Debug, Clone)]
struct GenLine {
    minor: u32,
    whole: u32,
    thousandths: u32,
    weighted: bool,
    amount_permille: Option<u32>,
    category: &'static str,
}

fn gen_line() -> impl proptest::strategy::Strategy<Value = GenLine> {
    use proptest::prelude::*;
    (
        0u32..200_000,
        0u32..50,
        prop_oneof![3 => Just(0u32), 1 => 0u32..1000],
        proptest::bool::weighted(0.15),
        proptest::option::of(0u32..=1000),
        prop_oneof![Just("a"), Just("b"), Just("c")],
    )
        .prop_map(
            |(minor, whole, thousandths, weighted, amount_permille, category)| GenLine {
                minor,
                whole,
                thousandths,
                weighted,
                amount_permille,
                category,
            },
        )
}

/// The lines as a basket for a currency of `scale` decimals.
fn basket(lines: &[GenLine], scale: u32) -> Vec<BasketLine> {
    use rust_decimal::RoundingStrategy;
    lines
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let price = Decimal::new(i64::from(g.minor), scale);
            let mut quantity = Decimal::from(g.whole) + Decimal::new(i64::from(g.thousandths), 3);
            if quantity.is_zero() {
                quantity = Decimal::new(5, 1);
            }
            let mut l = line(&i.to_string(), &format!("p{i}"), &[g.category], "0", "1");
            l.unit_price = price.to_string();
            l.quantity = quantity.to_string();
            l.weighted = g.weighted;
            if let Some(permille) = g.amount_permille {
                let amount = (price * quantity * Decimal::new(i64::from(permille), 3))
                    .round_dp_with_strategy(scale, RoundingStrategy::ToZero);
                l.amount = amount.to_string();
            }
            l
        })
        .collect()
}

#[derive(Debug, Clone)]
struct GenProgram {
    currency: &'static str,
    rounding: &'static str,
    points_scale: u32,
    point_value: &'static str,
    max_discount: &'static str,
    sequential: bool,
    rules: Vec<GenRule>,
}

impl GenProgram {
    fn plan(&self) -> Plan {
        let rules: String = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.yaml(i))
            .collect();
        self.plan_with_rule(&rules)
    }

    /// The program's settings with `rules` (YAML) instead of its own.
    fn plan_with_rule(&self, rules: &str) -> Plan {
        let combination = if self.sequential {
            "DISCOUNT_COMBINATION_SEQUENTIAL"
        } else {
            "DISCOUNT_COMBINATION_ADDITIVE"
        };
        let head = format!(
            "name: t\nsettings: {{currency: {}, time_zone: Europe/Moscow, money_rounding: {}, points_scale: {}, point_value: \"{}\", max_discount_percent: \"{}\", discount_combination: {combination}}}\n",
            self.currency, self.rounding, self.points_scale, self.point_value, self.max_discount
        );
        plan_with(&head, rules)
    }
}

fn gen_program() -> impl proptest::strategy::Strategy<Value = GenProgram> {
    use proptest::prelude::*;
    (
        prop_oneof![Just("RUB"), Just("JPY"), Just("KWD")],
        prop_oneof![
            Just("ROUNDING_HALF_UP"),
            Just("ROUNDING_HALF_EVEN"),
            Just("ROUNDING_DOWN"),
            Just("ROUNDING_UP")
        ],
        0u32..=2,
        prop_oneof![Just("1"), Just("0.5"), Just("2")],
        prop_oneof![Just("100"), Just("50"), Just("33.3")],
        any::<bool>(),
        proptest::collection::vec(gen_rule(), 1..6),
    )
        .prop_map(
            |(currency, rounding, points_scale, point_value, max_discount, sequential, rules)| {
                GenProgram {
                    currency,
                    rounding,
                    points_scale,
                    point_value,
                    max_discount,
                    sequential,
                    rules,
                }
            },
        )
}

/// `value` has at most `scale` decimals.
fn on_scale(value: Decimal, scale: u32) -> bool {
    value.normalize().scale() <= scale
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is a decimal"))
}

/// The customer side of a random receipt.
#[derive(Debug, Clone)]
struct GenCustomer {
    /// Available points in ten-thousandths: often more decimals than the points scale.
    available: u64,
    stamps: u32,
    redeem: u32,
}

fn gen_customer() -> impl proptest::strategy::Strategy<Value = Option<GenCustomer>> {
    use proptest::prelude::*;
    proptest::option::weighted(
        0.85,
        (0u64..100_000_000, 0u32..8, 0u32..3000).prop_map(|(available, stamps, redeem)| {
            GenCustomer {
                available,
                stamps,
                redeem,
            }
        }),
    )
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(512))]

    /// Whatever the rules, each line's figures are on the money (points) scale and the lines
    /// add up to the receipt's totals, string for string.
    #[test]
    fn lines_add_up_to_totals_on_the_money_scale(
        program in gen_program(),
        lines in proptest::collection::vec(gen_line(), 1..8),
        member in gen_customer(),
    ) {
        check_lines_add_up(&program, &lines, member.as_ref())?;
    }
}

fn check_lines_add_up(
    program: &GenProgram,
    lines: &[GenLine],
    member: Option<&GenCustomer>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use super::{explain, input::Receipt, Evaluation, Redemption};
    use kopilka_proto::rules::{EffectTarget, LineResult};
    use proptest::{prop_assert, prop_assert_eq};
    let plan = program.plan();
    let s = plan.settings();
    let customer = member.map(|m| CustomerContext {
        available_points: Decimal::new(m.available as i64, 4).to_string(),
        stamps: (0..program.rules.len())
            .map(|i| StampBalance {
                stamp_card_id: format!("r{i}"),
                count: m.stamps,
            })
            .collect(),
        referrer_customer_ids: vec!["friend".into()],
        ..customer()
    });
    let mut i = input(basket(lines, s.money_scale), customer, monday_10());
    if let Some(m) = member {
        i.redeem_points = m.redeem.to_string();
    }
    let now = monday_10() + chrono::Duration::days(30);
    // The phases of `evaluate_with`, to see the exact figures before they are formatted.
    let receipt = Receipt::read(&plan, &i, &Catalog::default(), now).expect("a valid basket");
    let mut e = Evaluation::new(&plan, &receipt);
    e.select();
    e.exclusions();
    e.discounts();
    e.redemption(Redemption::Cap).expect("capped");
    e.accruals();
    let r = explain::result(&e);
    let public = super::evaluate_with(&plan, &i, &Catalog::default(), now, Redemption::Cap);
    prop_assert_eq!(&r, &public.unwrap());

    let (ms, ps) = (s.money_scale, s.points_scale);
    for (l, run) in e.lines.iter().enumerate() {
        let gross = receipt.lines[l].gross;
        prop_assert!(on_scale(run.discount, ms), "line {l}: {}", run.discount);
        prop_assert!(run.discount >= Decimal::ZERO && run.discount <= gross);
        prop_assert!(
            on_scale(run.redeem_money, ms),
            "line {l}: {}",
            run.redeem_money
        );
        for v in [run.accrual, run.redeem, run.max_redeem] {
            prop_assert!(on_scale(v, ps), "line {l}: {v}");
        }
        for (rule, target, v) in &run.contributions {
            let scale = if *target == EffectTarget::Discount {
                ms
            } else {
                ps
            };
            prop_assert!(on_scale(*v, scale), "line {l}, rule {rule}: {v}");
        }
    }
    prop_assert!(on_scale(e.total_max_redeem, ps), "{}", e.total_max_redeem);

    let t = totals(&r);
    let sum = |f: fn(&LineResult) -> &str| -> Decimal { r.lines.iter().map(|l| dec(f(l))).sum() };
    prop_assert_eq!(sum(|l| &l.gross_amount), dec(&t.gross_amount));
    prop_assert_eq!(sum(|l| &l.discount), dec(&t.discount));
    prop_assert_eq!(sum(|l| &l.net_amount), dec(&t.net_amount));
    prop_assert_eq!(sum(|l| &l.max_redeem_points), dec(&t.max_redeem_points));
    prop_assert_eq!(sum(|l| &l.redeem_points), dec(&t.redeem_points));
    prop_assert_eq!(sum(|l| &l.redeem_money), dec(&t.redeem_money));
    prop_assert_eq!(sum(|l| &l.paid_money), dec(&t.paid_money));
    prop_assert_eq!(sum(|l| &l.accrual_points), dec(&t.points_accrued));
    let lots: Decimal = r.accruals.iter().map(|a| dec(&a.amount)).sum();
    prop_assert_eq!(lots, dec(&t.points_accrued));
    let referrals: Decimal = r
        .referral_rewards
        .iter()
        .map(|x| dec(&x.grant.as_ref().unwrap().amount))
        .sum();
    prop_assert_eq!(referrals, dec(&t.referral_points));
    // Each line's contributions add up to its discount and accrual.
    for l in &r.lines {
        let of = |target: EffectTarget| -> Decimal {
            l.contributions
                .iter()
                .filter(|c| c.target == target as i32)
                .map(|c| dec(&c.amount))
                .sum()
        };
        prop_assert_eq!(of(EffectTarget::Discount), dec(&l.discount));
        prop_assert_eq!(of(EffectTarget::Accrual), dec(&l.accrual_points));
    }
    Ok(())
}

// ---- unit mechanics: runs of units instead of every unit ----

/// The unit-by-unit expansion the run-based N for M, Nth item and stamp card replaced, kept as
/// the reference (without its old cap of 10 000 units per line). Prices come from the same
/// [`Evaluation::unit_price`], so only the counting is compared.
mod by_unit {
    use rust_decimal::Decimal;

    use super::super::{pct, Evaluation, Failure, Outcome};
    use crate::plan::StampReward;

    /// Every whole unit (index in `lines`, price), dearest first (ties: line order).
    fn units_desc(e: &Evaluation, lines: &[usize]) -> Vec<(usize, Decimal)> {
        let mut units = Vec::new();
        for (k, &l) in lines.iter().enumerate() {
            let price = e.unit_price(l);
            for _ in 0..e.r.lines[l].units() {
                units.push((k, price));
            }
        }
        units.sort_by_key(|u| std::cmp::Reverse(u.1));
        units
    }

    pub fn n_for_m(
        e: &mut Evaluation,
        i: usize,
        lines: &[usize],
        buy: u32,
        pay: u32,
        max_times: u32,
    ) -> Vec<Decimal> {
        let units = units_desc(e, lines);
        let buy = buy as usize;
        let mut groups = units.len() / buy;
        if max_times > 0 {
            groups = groups.min(max_times as usize);
        }
        let mut amounts = vec![Decimal::ZERO; lines.len()];
        for g in 0..groups {
            for &(k, price) in &units[g * buy + pay as usize..(g + 1) * buy] {
                amounts[k] += price;
            }
        }
        e.rules[i].one_more =
            units.len() % buy == buy - 1 && (max_times == 0 || (groups as u32) < max_times);
        if groups == 0 {
            e.rules[i].outcome = Outcome::Failed(Failure {
                field: "n_for_m.buy",
                missing: None,
                bound: None,
            });
        }
        e.cap_to_rooms(lines, amounts)
    }

    pub fn nth_item(
        e: &mut Evaluation,
        i: usize,
        lines: &[usize],
        every: u32,
        percent: Decimal,
        max_times: u32,
    ) -> Vec<Decimal> {
        let s = e.settings();
        let units = units_desc(e, lines);
        let every = every as usize;
        let mut amounts = vec![Decimal::ZERO; lines.len()];
        let mut given = 0u32;
        for &(k, price) in units.iter().skip(every - 1).step_by(every) {
            if max_times > 0 && given >= max_times {
                break;
            }
            amounts[k] += s.round_money(pct(price, percent));
            given += 1;
        }
        e.rules[i].one_more =
            units.len() % every == every - 1 && (max_times == 0 || given < max_times);
        if given == 0 {
            e.rules[i].outcome = Outcome::Failed(Failure {
                field: "nth_item.every",
                missing: None,
                bound: None,
            });
        }
        e.cap_to_rooms(lines, amounts)
    }

    pub fn stamp_card(
        e: &mut Evaluation,
        i: usize,
        lines: &[usize],
        every: u32,
        per_receipt: bool,
        reward: StampReward,
    ) -> Vec<Decimal> {
        let plan = e.plan;
        let s = plan.settings();
        let rule_id = &plan.rules[i].id;
        let balance =
            e.r.customer
                .and_then(|c| c.stamps.iter().find(|x| &x.stamp_card_id == rule_id))
                .map_or(0, |x| x.count);
        let mut units = units_desc(e, lines);
        units.reverse();
        if per_receipt {
            let cheapest = units.first().copied().or_else(|| {
                lines
                    .iter()
                    .enumerate()
                    .min_by(|a, b| e.r.lines[*a.1].gross.cmp(&e.r.lines[*b.1].gross))
                    .map(|(k, &l)| (k, e.r.lines[l].gross))
            });
            units = cheapest.into_iter().collect();
        }
        let qualifying = units.len() as u32;
        let rewards = (balance.saturating_add(qualifying)) / every;
        let rewards = rewards.min(qualifying);
        let after = balance
            .saturating_add(qualifying)
            .saturating_sub(rewards * every);
        e.rules[i].stamps = Some((qualifying - rewards, rewards * (every - 1), after));
        let mut amounts = vec![Decimal::ZERO; lines.len()];
        for &(k, price) in units.iter().take(rewards as usize) {
            match reward {
                StampReward::Percent(p) => amounts[k] += s.round_money(pct(price, p)),
                StampReward::Points(points) => e.stamp_points.push((i, lines[k], points)),
            }
        }
        e.cap_to_rooms(lines, amounts)
    }
}

/// Parameters of one unit mechanic, for [`runs_count_like_units`].
#[derive(Debug, Clone)]
enum Mechanic {
    NForM {
        buy: u32,
        pay: u32,
        max_times: u32,
    },
    Nth {
        every: u32,
        tenths: u32,
        max_times: u32,
    },
    Stamp {
        every: u32,
        per_receipt: bool,
        points: Option<u32>,
        tenths: u32,
    },
}

fn gen_mechanic() -> impl proptest::strategy::Strategy<Value = Mechanic> {
    use proptest::prelude::*;
    let max_times = || prop_oneof![Just(0u32), 1u32..40];
    prop_oneof![
        (2u32..9)
            .prop_flat_map(move |buy| (Just(buy), 1..buy, max_times()))
            .prop_map(|(buy, pay, max_times)| Mechanic::NForM {
                buy,
                pay,
                max_times
            }),
        (2u32..9, 1u32..=1000, max_times()).prop_map(|(every, tenths, max_times)| {
            Mechanic::Nth {
                every,
                tenths,
                max_times,
            }
        }),
        (
            2u32..9,
            any::<bool>(),
            proptest::option::of(1u32..50),
            1u32..=1000
        )
            .prop_map(|(every, per_receipt, points, tenths)| Mechanic::Stamp {
                every,
                per_receipt,
                points,
                tenths,
            }),
    ]
}

/// One mechanic on one set of lines, run-based (`by_runs`) or unit by unit: the amounts, the
/// rule's state after it and the stamp points per line.
fn apply_mechanic(
    e: &mut super::Evaluation,
    lines: &[usize],
    m: &Mechanic,
    by_runs: bool,
) -> (Vec<Decimal>, String, Vec<Decimal>) {
    use crate::plan::StampReward;
    let pct = |tenths: u32| Decimal::new(i64::from(tenths), 1);
    let amounts = match *m {
        Mechanic::NForM {
            buy,
            pay,
            max_times,
        } if by_runs => e.n_for_m(0, lines, buy, pay, max_times),
        Mechanic::NForM {
            buy,
            pay,
            max_times,
        } => by_unit::n_for_m(e, 0, lines, buy, pay, max_times),
        Mechanic::Nth {
            every,
            tenths,
            max_times,
        } if by_runs => e.nth_item(0, lines, every, pct(tenths), max_times),
        Mechanic::Nth {
            every,
            tenths,
            max_times,
        } => by_unit::nth_item(e, 0, lines, every, pct(tenths), max_times),
        Mechanic::Stamp {
            every,
            per_receipt,
            points,
            tenths,
        } => {
            let reward = match points {
                Some(p) => StampReward::Points(Decimal::from(p)),
                None => StampReward::Percent(pct(tenths)),
            };
            if by_runs {
                e.stamp_card(0, lines, every, per_receipt, reward)
            } else {
                by_unit::stamp_card(e, 0, lines, every, per_receipt, reward)
            }
        }
    };
    let run = &e.rules[0];
    let state = format!("{:?} {} {:?}", run.outcome, run.one_more, run.stamps);
    // Booked as `accruals` books them: each entry rounded.
    let mut points = vec![Decimal::ZERO; e.lines.len()];
    for (_, l, p) in &e.stamp_points {
        points[*l] += e.plan.settings().round_points(*p);
    }
    (amounts, state, points)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

    /// Counting over runs of equal units gives what expanding every unit gave: amounts per
    /// line, `one_more`, outcomes, stamp balances and points rewards.
    #[test]
    fn runs_count_like_units(
        program in gen_program(),
        lines in proptest::collection::vec(gen_line(), 1..9),
        in_scope in proptest::collection::vec(proptest::bool::weighted(0.8), 9),
        prior in proptest::collection::vec(0u32..=1000, 9),
        mechanic in gen_mechanic(),
        stamps in 0u32..20,
    ) {
        let scope: Vec<usize> = (0..lines.len()).filter(|&l| in_scope[l]).collect();
        proptest::prop_assume!(!scope.is_empty());
        check_runs_like_units(&program, &lines, &scope, &prior, &mechanic, stamps)?;
    }
}

/// `prior`: per mille of each line's amount already given as discount, so that rooms cap
/// some lines.
fn check_runs_like_units(
    program: &GenProgram,
    lines: &[GenLine],
    scope: &[usize],
    prior: &[u32],
    mechanic: &Mechanic,
    stamps: u32,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use super::{input::Receipt, Evaluation};
    // The program's settings; the rule is only an id for the stamp balance.
    let plan = program.plan_with_rule("  - id: r0\n    name: r0\n    n_for_m: {buy: 2, pay: 1}\n");
    let s = plan.settings();
    let customer = CustomerContext {
        stamps: vec![StampBalance {
            stamp_card_id: "r0".into(),
            count: stamps,
        }],
        ..customer()
    };
    let i = input(basket(lines, s.money_scale), Some(customer), monday_10());
    let receipt =
        Receipt::read(&plan, &i, &Catalog::default(), monday_10()).expect("a valid basket");
    let results: Vec<_> = [true, false]
        .into_iter()
        .map(|by_runs| {
            let mut e = Evaluation::new(&plan, &receipt);
            e.select();
            for (l, line) in receipt.lines.iter().enumerate() {
                let given = line.gross * Decimal::new(i64::from(prior[l]), 3);
                e.lines[l].discount = s.round_money(given).min(line.gross);
            }
            apply_mechanic(&mut e, scope, mechanic, by_runs)
        })
        .collect();
    proptest::prop_assert_eq!(&results[0], &results[1]);
    Ok(())
}

#[test]
fn runs_of_a_hundred_thousand_units_on_500_lines() {
    // 500 lines of 100 000 units at 2.55: 50 000 000 units, each line 255 000.00.
    let lines: Vec<BasketLine> = (0..500)
        .map(|i| line(&i.to_string(), &format!("p{i}"), &[], "2.55", "100000"))
        .collect();
    let i = input(lines, Some(customer()), monday_10());
    let discount = |rule: &str| {
        let r = run(&plan(rule), &i);
        (totals(&r).discount.clone(), r)
    };

    // 3 for 2: floor(5e7 / 3) = 16 666 666 free units.
    let (total, r) = discount("  - id: n\n    name: 3 for 2\n    n_for_m: {buy: 3, pay: 2}\n");
    assert_eq!(total, "42499998.30", "16 666 666 x 2.55");
    // Line 0 holds units 0..100 000, every third free: 33 333 of them, far beyond the old
    // cap of 10 000 units per line (which gave 3 333 and a total of 4 249 998.30).
    assert_eq!(r.lines[0].discount, "84999.15");
    assert!(r
        .hints
        .iter()
        .any(|h| h.kind == HintKind::OneMoreItem as i32));
    let (total, _) = discount(
        "  - id: n\n    name: 3 for 2\n    n_for_m: {buy: 3, pay: 2, max_times: 1000000}\n",
    );
    assert_eq!(total, "2550000.00", "1 000 000 x 2.55");

    // Every 2nd 50 %: 25 000 000 units at 1.275, rounded per unit to 1.28.
    let (total, _) =
        discount("  - id: n\n    name: every 2nd\n    nth_item: {every: 2, percent: \"50\"}\n");
    assert_eq!(total, "32000000.00");

    // Every 6th free, no stamps yet: 8 333 333 rewards, the cheapest units first; at equal
    // prices from the last line back, so lines 417..500 are free and line 416 has 33 333.
    let (total, r) = discount("  - id: n\n    name: 6th free\n    stamp_card: {every: 6}\n");
    assert_eq!(total, "21249999.15", "8 333 333 x 2.55");
    assert!(r.lines[417..].iter().all(|l| l.discount == "255000.00"));
    assert_eq!(r.lines[416].discount, "84999.15");
    assert_eq!(r.lines[415].discount, "0.00");
    let c = &r.stamp_changes[0];
    assert_eq!(
        (c.earned, c.consumed, c.balance_after),
        (41_666_667, 41_666_665, 2),
        "5e7 - 8 333 333 earned, 8 333 333 x 5 used, 5e7 - 8 333 333 x 6 left"
    );
}

#[test]
fn a_register_amount_gives_unit_prices_on_the_money_scale() {
    // 100.00 for 3 units: 33.33 a unit, not 33.333…; each line's free unit is 33.33 and the
    // lines add up to the total (they did not: 33.33 + 33.33 against 66.67).
    let p = plan("  - id: n\n    name: 3 for 2\n    n_for_m: {buy: 3, pay: 2}\n");
    let mut lines = vec![
        line("1", "a", &[], "40", "3"),
        line("2", "b", &[], "40", "3"),
    ];
    for l in &mut lines {
        l.amount = "100.00".into();
    }
    let r = run(&p, &input(lines, Some(customer()), monday_10()));
    assert_eq!(
        (r.lines[0].discount.as_str(), r.lines[1].discount.as_str()),
        ("33.33", "33.33")
    );
    assert_eq!(totals(&r).discount, "66.66");
    // Rounding up: 33.34 a unit.
    let p = plan_with(
        "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow, money_rounding: ROUNDING_UP}\n",
        "  - id: n\n    name: 3 for 2\n    n_for_m: {buy: 3, pay: 2}\n",
    );
    let r = run(
        &p,
        &input(
            one_amount("40", "3", "100.00"),
            Some(customer()),
            monday_10(),
        ),
    );
    assert_eq!(totals(&r).discount, "33.34");
}

fn one_amount(price: &str, quantity: &str, amount: &str) -> Vec<BasketLine> {
    let mut l = line("1", "p1", &[], price, quantity);
    l.amount = amount.into();
    vec![l]
}

#[test]
fn a_balance_beyond_the_points_scale_is_not_redeemable() {
    // 100.5 points available at points scale 0: at most 100 can pay, on the lines and in total.
    let p = plan("  - id: pts\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n");
    let mut c = customer();
    c.available_points = "100.5".into();
    let r = run(&p, &input(one("1000"), Some(c), monday_10()));
    assert_eq!(totals(&r).max_redeem_points, "100");
    assert_eq!(r.lines[0].max_redeem_points, "100");
}

#[test]
fn a_customer_in_debt_accrues_but_redeems_nothing() {
    // -5 available (a refund took back points already spent): served, not refused as input.
    let p = plan("  - id: pts\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n");
    let mut c = customer();
    c.available_points = "-5".into();
    let r = run(&p, &input(one("1000"), Some(c.clone()), monday_10()));
    assert_eq!(totals(&r).max_redeem_points, "0");
    assert_eq!(r.lines[0].max_redeem_points, "0");
    assert_eq!(totals(&r).points_accrued, "50");
    // Redeeming meanwhile is INSUFFICIENT_POINTS with the real balance.
    let mut i = input(one("1000"), Some(c.clone()), monday_10());
    i.redeem_points = "1".into();
    let err = evaluate(&p, &i, &Catalog::default(), monday_10()).unwrap_err();
    assert!(
        matches!(&err, Error::Refused(r) if r.reason == "INSUFFICIENT_POINTS"
            && r.get("available") == Some("-5") && r.get("requested") == Some("1")),
        "{err:?}"
    );
    // A malformed balance is still refused.
    c.available_points = "--5".into();
    let err = evaluate(
        &p,
        &input(one("1000"), Some(c), monday_10()),
        &Catalog::default(),
        monday_10(),
    )
    .unwrap_err();
    assert!(
        format!("{err:?}").contains("input.customer.available_points"),
        "{err:?}"
    );
}
