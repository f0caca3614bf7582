//! Properties of evaluation on random programs, baskets and customers: no discount above a
//! line's price, no negative amounts, lines that sum exactly to the totals, lots that sum to
//! the points accrued, the same answer for the same input, and a higher receipt total never in
//! a lower bracket.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use kopilka_proto::rules::{
    CustomerContext, CustomerTier, EvaluationInput, EvaluationResult, ExplainLevel, Program,
};
use kopilka_proto::types::{
    lookback::Span, BasketLine, Date, Lookback, PurchaseAggregates, StampBalance, WindowAggregate,
};
use kopilka_proto::wkt::Timestamp;
use proptest::prelude::*;
use rules_svc::catalog::Catalog;
use rules_svc::document::from_yaml;
use rules_svc::evaluate::{evaluate_with, Redemption};
use rules_svc::plan::Plan;
use rust_decimal::Decimal;

/// Rule templates; `{p}` is a percentage, `{a}` an amount, `{n}` a small count.
const TEMPLATES: &[&str] = &[
    "discount_percent: {percent: \"{p}\"}",
    "discount_percent: {percent: \"{p}\", max_amount: \"{a}\"}",
    "discount_fixed: {amount: \"{a}\"}",
    "discount_fixed: {amount: \"{a}\", per: PER_LINE}",
    "discount_fixed: {amount: \"{a}\", per: PER_UNIT}",
    "discount_brackets: {brackets: [{at_least: \"0\", percent: \"{p}\"}, {at_least: \"500\", percent: \"50\"}, {above: \"1000\", fixed_amount: \"{a}\"}]}",
    "accrue_percent: {percent: \"{p}\"}",
    "accrue_percent: {percent: \"{p}\", basis: AMOUNT_BASIS_GROSS, max_points: \"{a}\"}",
    "accrue_per_amount: {points: \"{n}\", every: \"100\"}",
    "accrue_per_amount: {points: \"{n}\", every: \"50\", per: PER_LINE}",
    "accrue_fixed: {points: \"{n}\", per: PER_UNIT}",
    "accrue_brackets: {brackets: [{at_least: \"0\", percent: \"3\"}, {at_least: \"500\", percent: \"6\"}, {above: \"1000\", percent: \"12\"}]}",
    "accrue_brackets: {basis: BRACKET_BASIS_WINDOW_TURNOVER, lookback: {months: 3}, brackets: [{at_least: \"0\", percent: \"5\"}, {above: \"30000\", percent: \"15\"}]}",
    "cashback: {percent: \"{p}\"}",
    "accrual_multiplier: {factor: \"{f}\"}",
    "tier_rates: {discount: true, accrual: true, redemption_share: true}",
    "exclude: {from_discount: true}",
    "exclude: {from_accrual: true, from_redemption: true}",
    "redemption_limit: {max_share_percent: \"{p}\"}",
    "redemption_limit: {max_points: \"{a}\"}",
    "n_for_m: {buy: 3, pay: 2}",
    "nth_item: {every: 2, percent: \"{p}\"}",
    "stamp_card: {every: 6}",
    "stamp_card: {every: 3, per: PER_RECEIPT, points: \"{n}\"}",
    "referral_reward: {levels: [{level: 1, percent: \"{p}\"}, {level: 2, points: \"{n}\"}]}",
];

const CONDITIONS: &[&str] = &[
    "",
    "when: {receipt_total: {at_least: \"{a}\"}}",
    "when: {tiers: [GOLD]}",
    "when: {birthday: {days_before: 3, days_after: 3}}",
    "when: {time_windows: [{weekdays: [WEEKDAY_MONDAY], start: \"09:00\", end: \"12:00\"}]}",
    "when: {since_last_purchase: {within_days: 7}}",
    "when: {include_anonymous: true}",
    "when: {promo_code: {codes: [SUMMER]}}",
];

const SCOPES: &[&str] = &[
    "",
    "scope: {category_ids: [a]}",
    "scope: {exclude_category_ids: [b], skip_discounted_lines: true}",
    "scope: {product_ids: [p1, p2]}",
];

#[derive(Debug, Clone)]
struct RuleSpec {
    template: usize,
    condition: usize,
    scope: usize,
    percent: u32,
    amount: u32,
    count: u32,
    factor: u32,
    priority: i32,
    group: bool,
    stop: bool,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        (0..TEMPLATES.len(), 0..CONDITIONS.len(), 0..SCOPES.len()),
        (1u32..=100, 1u32..5000, 1u32..20, 1u32..40),
        (-3i32..3, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (template, condition, scope),
                (percent, amount, count, factor),
                (priority, group, stop),
            )| RuleSpec {
                template,
                condition,
                scope,
                percent,
                amount,
                count,
                factor,
                priority,
                group,
                stop,
            },
        )
}

fn settings() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("ROUNDING_HALF_UP"), Just("ROUNDING_HALF_EVEN"), Just("ROUNDING_DOWN"), Just("ROUNDING_UP")],
        prop_oneof![Just("ROUNDING_DOWN"), Just("ROUNDING_HALF_UP")],
        0u32..=2,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just("1"), Just("0.5"), Just("2")],
        10u32..=100,
    )
        .prop_map(|(money, points, scale, redeemed, sequential, value, share)| {
            format!(
                "settings: {{currency: RUB, time_zone: Europe/Moscow, money_rounding: {money}, points_rounding: {points}, points_scale: {scale}, accrue_on_redeemed_part: {redeemed}, discount_combination: {}, point_value: \"{value}\", max_redeem_share_percent: \"{share}\", min_money_payment: \"1\"}}\n",
                if sequential { "DISCOUNT_COMBINATION_SEQUENTIAL" } else { "DISCOUNT_COMBINATION_ADDITIVE" }
            )
        })
}

fn program(settings: &str, rules: &[RuleSpec], best: bool) -> Program {
    let mut yaml = format!(
        "name: random\n{settings}groups: [{{id: g, mode: {}}}]\nrules:\n",
        if best {
            "GROUP_MODE_BEST"
        } else {
            "GROUP_MODE_FIRST"
        }
    );
    for (i, r) in rules.iter().enumerate() {
        let fill = |t: &str| {
            t.replace("{p}", &r.percent.to_string())
                .replace("{a}", &r.amount.to_string())
                .replace("{n}", &r.count.to_string())
                .replace("{f}", &format!("{}.{}", r.factor / 10, r.factor % 10))
        };
        yaml.push_str(&format!(
            "  - id: r{i}\n    name: rule {i}\n    priority: {}\n    stop_further_rules: {}\n",
            r.priority, r.stop
        ));
        if r.group {
            yaml.push_str("    group: g\n");
        }
        for part in [
            CONDITIONS[r.condition],
            SCOPES[r.scope],
            TEMPLATES[r.template],
        ] {
            if !part.is_empty() {
                yaml.push_str(&format!("    {}\n", fill(part)));
            }
        }
    }
    from_yaml(&yaml).unwrap_or_else(|e| panic!("generated program parses: {e}\n{yaml}"))
}

fn basket_line() -> impl Strategy<Value = (u32, u32, u32, u32, bool)> {
    // (price in kopecks, quantity in thousandths, category, product, weighted)
    (
        0u32..200_000,
        1u32..10_000,
        0u32..4,
        0u32..4,
        prop::bool::weighted(0.1),
    )
}

fn lines(specs: &[(u32, u32, u32, u32, bool)]) -> Vec<BasketLine> {
    specs
        .iter()
        .enumerate()
        .map(|(i, &(price, qty, cat, product, weighted))| BasketLine {
            line_id: format!("l{i}"),
            product_id: format!("p{product}"),
            category_ids: vec![["a", "b", "c", "sale"][cat as usize].to_owned()],
            unit_price: Decimal::new(i64::from(price), 2).to_string(),
            quantity: if weighted {
                Decimal::new(i64::from(qty), 3).to_string()
            } else {
                (qty % 7 + 1).to_string()
            },
            weighted,
            ..Default::default()
        })
        .collect()
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 7, 0, 0).unwrap()
}

fn customer(kind: u8, available: u32) -> Option<CustomerContext> {
    match kind % 3 {
        0 => None,
        1 => Some(CustomerContext {
            customer_id: "c".into(),
            available_points: available.to_string(),
            ..Default::default()
        }),
        _ => Some(CustomerContext {
            customer_id: "c".into(),
            tier: Some(CustomerTier {
                code: "GOLD".into(),
                rank: 2,
                accrual_percent: "7".into(),
                discount_percent: "5".into(),
                max_redeem_share_percent: "30".into(),
            }),
            birth_date: Some(Date {
                year: 1990,
                month: 12,
                day: 1,
            }),
            aggregates: Some(PurchaseAggregates {
                lifetime_turnover: "45000".into(),
                purchase_count: 12,
                last_purchase_at: Some(Timestamp {
                    seconds: at().timestamp() - 86_400 * 3,
                    nanos: 0,
                }),
                windows: vec![WindowAggregate {
                    lookback: Some(Lookback {
                        span: Some(Span::Months(3)),
                    }),
                    turnover: "31000".into(),
                    purchase_count: 4,
                }],
                ..Default::default()
            }),
            stamps: vec![StampBalance {
                stamp_card_id: "r3".into(),
                count: 5,
            }],
            referrer_customer_ids: vec!["f1".into(), "f2".into()],
            available_points: available.to_string(),
            ..Default::default()
        }),
    }
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|_| panic!("`{s}` is a decimal"))
}

fn check_invariants(r: &EvaluationResult) {
    let t = r.totals.as_ref().unwrap();
    let mut sums = [Decimal::ZERO; 6];
    for l in &r.lines {
        let (gross, discount, net) = (d(&l.gross_amount), d(&l.discount), d(&l.net_amount));
        assert!(
            discount >= Decimal::ZERO && discount <= gross,
            "discount {discount} within 0..{gross}"
        );
        assert_eq!(net, gross - discount);
        let (redeem_money, paid) = (d(&l.redeem_money), d(&l.paid_money));
        assert!(
            redeem_money >= Decimal::ZERO && paid >= Decimal::ZERO,
            "{l:?}"
        );
        assert_eq!(paid, net - redeem_money);
        assert!(d(&l.redeem_points) <= d(&l.max_redeem_points), "{l:?}");
        assert!(d(&l.accrual_points) >= Decimal::ZERO, "{l:?}");
        for (k, v) in [
            &l.gross_amount,
            &l.discount,
            &l.net_amount,
            &l.redeem_points,
            &l.redeem_money,
            &l.accrual_points,
        ]
        .into_iter()
        .enumerate()
        {
            sums[k] += d(v);
        }
    }
    assert_eq!(sums[0], d(&t.gross_amount));
    assert_eq!(sums[1], d(&t.discount));
    assert_eq!(sums[2], d(&t.net_amount));
    assert_eq!(sums[3], d(&t.redeem_points));
    assert_eq!(sums[4], d(&t.redeem_money));
    assert_eq!(sums[5], d(&t.points_accrued));
    let lots: Decimal = r.accruals.iter().map(|g| d(&g.amount)).sum();
    assert_eq!(lots, d(&t.points_accrued), "lots sum to the points accrued");
    assert!(r.accruals.iter().all(|g| d(&g.amount) > Decimal::ZERO));
    let referral: Decimal = r
        .referral_rewards
        .iter()
        .map(|g| d(&g.grant.as_ref().unwrap().amount))
        .sum();
    assert_eq!(referral, d(&t.referral_points));
    assert!(d(&t.max_redeem_points) >= d(&t.redeem_points));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn amounts_stay_in_bounds_and_lines_sum_to_totals(
        settings in settings(),
        rules in prop::collection::vec(rule_spec(), 1..12),
        best in any::<bool>(),
        basket in prop::collection::vec(basket_line(), 1..20),
        kind in any::<u8>(),
        available in 0u32..5000,
        redeem in 0u32..5000,
    ) {
        let plan = Plan::compile(&program(&settings, &rules, best), 1).expect("compiles");
        let input = EvaluationInput {
            lines: lines(&basket),
            customer: customer(kind, available),
            promo_codes: vec!["summer".into()],
            occurred_at: Some(Timestamp { seconds: at().timestamp(), nanos: 0 }),
            redeem_points: if kind % 3 == 0 { String::new() } else { redeem.to_string() },
            explain: ExplainLevel::Full as i32,
            ..Default::default()
        };
        let catalog = Catalog::default();
        let first = evaluate_with(&plan, &input, &catalog, at(), Redemption::Cap).expect("a valid input evaluates");
        check_invariants(&first);
        let again = evaluate_with(&plan, &input, &catalog, at(), Redemption::Cap).unwrap();
        prop_assert_eq!(first, again);
    }

    #[test]
    fn a_higher_receipt_total_never_gets_a_lower_bracket(
        bounds in prop::collection::vec((1u32..1000, any::<bool>()), 1..8),
        a in 0u32..2_000_000,
        b in 0u32..2_000_000,
    ) {
        // A random ascending table: each bound above the previous one.
        let mut lower = 0u32;
        let brackets: Vec<String> = bounds
            .iter()
            .enumerate()
            .map(|(i, (step, inclusive))| {
                lower += step * 10;
                let key = if *inclusive { "at_least" } else { "above" };
                format!("{{{key}: \"{lower}\", percent: \"{}\"}}", i + 1)
            })
            .collect();
        let yaml = format!(
            "name: b\nsettings: {{currency: RUB, time_zone: UTC, points_scale: 2}}\nrules:\n  - id: b\n    name: b\n    accrue_brackets: {{brackets: [{}]}}\n",
            brackets.join(", ")
        );
        let plan = Plan::compile(&from_yaml(&yaml).unwrap(), 1).unwrap();
        let rules_svc::plan::Effect::AccrueBrackets(table) = &plan.rules[0].effect else {
            panic!("a bracket table");
        };
        let (low, high) = (Decimal::new(i64::from(a.min(b)), 2), Decimal::new(i64::from(a.max(b)), 2));
        prop_assert!(table.find(low) <= table.find(high), "{} in {:?}, {} in {:?}", low, table.find(low), high, table.find(high));
        // End to end: more money, never fewer points.
        let points = |kopecks: u32| {
            let input = EvaluationInput {
                lines: lines(&[(kopecks, 1, 0, 0, false)]),
                customer: customer(1, 0),
                occurred_at: Some(Timestamp { seconds: at().timestamp(), nanos: 0 }),
                ..Default::default()
            };
            let r = evaluate_with(&plan, &input, &Catalog::default(), at(), Redemption::Cap).unwrap();
            d(&r.totals.unwrap().points_accrued)
        };
        prop_assert!(points(a.min(b)) <= points(a.max(b)));
    }
}
