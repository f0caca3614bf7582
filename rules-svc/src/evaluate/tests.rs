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
        matches!(&err, Error::Precondition("REDEMPTION_LIMIT_EXCEEDED", _, m) if m[0].1 == "300"),
        "{err:?}"
    );
    let mut poor = customer();
    poor.available_points = "100".into();
    let mut i = input(lines.clone(), Some(poor), monday_10());
    i.redeem_points = "150".into();
    let err = evaluate(&p, &i, &Catalog::default(), monday_10()).unwrap_err();
    assert!(
        matches!(err, Error::Precondition("INSUFFICIENT_POINTS", _, _)),
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
    let Error::InvalidWithReason("BASKET_INVALID", v) = err else {
        panic!("{err:?}")
    };
    let fields: Vec<&str> = v.iter().map(|x| x.0.as_str()).collect();
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
    assert!(matches!(err, Error::InvalidWithReason(_, ref v) if v[0].0 == "input.lines"));
    let future = input(one("10"), None, monday_10() + chrono::Duration::minutes(6));
    let err = evaluate(&p, &future, &Catalog::default(), monday_10()).unwrap_err();
    assert!(matches!(err, Error::InvalidWithReason(_, ref v) if v[0].0 == "input.occurred_at"));
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
