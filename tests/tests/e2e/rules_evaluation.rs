//! EvaluationService over gRPC, on SQLite and on PostgreSQL: programs are created, published
//! and activated through ProgramService (from YAML, tier codes given so no cards-svc lookup is
//! needed), then receipts are evaluated through the real server with the seed documents' own
//! numbers (FEATURES R1–R15); errors carry stable reasons and field paths; dry runs of drafts
//! and inline programs; comparison of two versions; a client-streaming simulation whose totals
//! equal the sums of single evaluations; tier decisions (R13) and action rewards (R14).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use kopilka_proto::rules as pb;
use kopilka_proto::rules::evaluation_service_client::EvaluationServiceClient;
use kopilka_proto::rules::program_service_client::ProgramServiceClient;
use kopilka_proto::rules::{
    program_ref::Source, simulate_request::Item, CustomerContext, CustomerTier, EvaluationInput,
    EvaluationResult, ExplainLevel, HintKind, ProgramRef, RuleOutcome, TierCriterion, TierDecision,
    TierTrigger,
};
use kopilka_proto::types::{
    lookback::Span, ActionKind, BasketLine, Date, Lookback, LotKind, PurchaseAggregates,
    StampBalance, WindowAggregate,
};
use kopilka_proto::wkt::Timestamp;
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_tests::Channel;
use kopilka_tests::{on_both_backends, TestSuite};
use rules_svc::document::from_yaml;
use rust_decimal::Decimal;
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_backends!(
    evaluate_gives_the_seed_numbers,
    occurred_at_selects_the_version_active_then,
    errors_have_stable_reasons_and_field_paths,
    dry_run_of_drafts_and_inline_programs,
    compare_versions_per_line_and_in_total,
    simulation_totals_equal_single_evaluations,
    tier_decisions_and_action_rewards,
);

// ---- helpers ----------------------------------------------------------------------------------

const HEAD: &str = "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n";

/// R3: below 500 → 3 %, 500–1000 → 6 %, above 1000 → 12 % (points), after a sale exclusion.
const SALE_AND_BRACKETS: &str = "  - id: sale\n    name: no points or discounts on sale\n    scope: {category_ids: [sale]}\n    exclude: {from_accrual: true, from_discount: true}\n  - id: brackets\n    name: 3/6/12\n    accrue_brackets:\n      brackets:\n        - {at_least: \"0\", percent: \"3\"}\n        - {at_least: \"500\", percent: \"6\"}\n        - {above: \"1000\", percent: \"12\"}\n";

/// R5: the tier's discount, accrual and redemption share.
const TIER_RATES: &str = "  - id: tier\n    name: tier rates\n    tier_rates: {discount: true, accrual: true, redemption_share: true}\n";

/// Clients of one running suite's rules-svc.
#[derive(Clone)]
struct Rules {
    programs: ProgramServiceClient<Channel>,
    eval: EvaluationServiceClient<Channel>,
}

impl Rules {
    fn of(suite: &TestSuite) -> Self {
        let channel = suite.channel(suite.addrs.rules);
        Rules {
            programs: ProgramServiceClient::new(channel.clone()),
            eval: EvaluationServiceClient::new(channel),
        }
    }

    async fn draft(&self, merchant: &str, yaml: &str) -> pb::ProgramVersion {
        let program = from_yaml(yaml).expect("the test program parses");
        self.programs
            .clone()
            .create_draft(pb::CreateDraftRequest {
                merchant_id: merchant.into(),
                request_id: unique("req"),
                source: Some(pb::create_draft_request::Source::Program(program)),
                comment: String::new(),
                created_by: "test".into(),
            })
            .await
            .expect("CreateDraft")
            .into_inner()
            .version
            .expect("a version")
    }

    async fn publish(&self, merchant: &str, version: u64, tiers: &[&str]) -> pb::ProgramVersion {
        self.programs
            .clone()
            .publish_version(pb::PublishVersionRequest {
                merchant_id: merchant.into(),
                request_id: unique("req"),
                version,
                etag: String::new(),
                tier_codes: tiers.iter().map(|t| t.to_string()).collect(),
            })
            .await
            .expect("PublishVersion")
            .into_inner()
            .version
            .expect("a version")
    }

    async fn activate(&self, merchant: &str, version: u64, at: Option<DateTime<Utc>>) {
        self.programs
            .clone()
            .activate_version(pb::ActivateVersionRequest {
                merchant_id: merchant.into(),
                request_id: unique("req"),
                version,
                activate_at: at.map(ts),
                requested_by: "test".into(),
            })
            .await
            .expect("ActivateVersion");
    }

    /// A draft of `yaml`, published (with `tiers` as the known tier codes) and active now.
    async fn live(&self, merchant: &str, yaml: &str, tiers: &[&str]) -> pb::ProgramVersion {
        let draft = self.draft(merchant, yaml).await;
        let published = self.publish(merchant, draft.version, tiers).await;
        self.activate(merchant, published.version, None).await;
        published
    }

    /// A fresh merchant whose active program has `rules` (under the common head).
    async fn merchant_with(&self, name: &str, rules: &str) -> (String, pb::ProgramVersion) {
        let m = unique(name);
        let v = self.live(&m, &format!("{HEAD}rules:\n{rules}"), &[]).await;
        (m, v)
    }

    async fn evaluate(
        &self,
        merchant: &str,
        program: Option<Source>,
        input: EvaluationInput,
    ) -> Result<EvaluationResult, Status> {
        self.eval
            .clone()
            .evaluate(pb::EvaluateRequest {
                merchant_id: merchant.into(),
                program: program.map(|s| ProgramRef { source: Some(s) }),
                input: Some(input),
            })
            .await
            .map(|r| r.into_inner().result.expect("a result"))
    }

    /// Evaluates with the version active at the receipt's time.
    async fn active(&self, merchant: &str, input: EvaluationInput) -> EvaluationResult {
        self.evaluate(merchant, None, input)
            .await
            .expect("Evaluate")
    }

    /// Evaluates with a given published version.
    async fn at_version(
        &self,
        merchant: &str,
        version: u64,
        input: EvaluationInput,
    ) -> EvaluationResult {
        self.evaluate(merchant, Some(Source::Version(version)), input)
            .await
            .expect("Evaluate")
    }

    async fn dry_run(
        &self,
        merchant: &str,
        program: Source,
        input: EvaluationInput,
        tiers: &[&str],
    ) -> pb::DryRunResponse {
        self.eval
            .clone()
            .dry_run(pb::DryRunRequest {
                merchant_id: merchant.into(),
                program: Some(ProgramRef {
                    source: Some(program),
                }),
                input: Some(input),
                tier_codes: tiers.iter().map(|t| t.to_string()).collect(),
            })
            .await
            .expect("DryRun")
            .into_inner()
    }
}

/// A unique id: time and a counter.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn seconds(t: &Option<Timestamp>) -> i64 {
    t.as_ref().expect("a timestamp").seconds
}

/// Monday 2026-11-30 10:00 Moscow time.
fn monday_10() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 7, 0, 0).unwrap()
}

/// Now rounded up to a whole second: after every activation made so far (timestamps here
/// carry whole seconds), well before the 5-minute future limit.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() + 1, 0).unwrap()
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

fn one(price: &str) -> Vec<BasketLine> {
    vec![line("1", "p1", &["goods"], price, "1")]
}

fn customer() -> CustomerContext {
    CustomerContext {
        customer_id: "c1".into(),
        available_points: "100000".into(),
        ..Default::default()
    }
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

fn totals(r: &EvaluationResult) -> &pb::ReceiptTotals {
    r.totals.as_ref().expect("totals")
}

fn explanation<'a>(r: &'a EvaluationResult, rule: &str) -> &'a pb::Explanation {
    r.explanations
        .iter()
        .find(|e| e.rule_id == rule)
        .unwrap_or_else(|| panic!("no explanation for {rule}: {:?}", r.explanations))
}

fn hint(r: &EvaluationResult, kind: HintKind) -> &pb::Hint {
    r.hints
        .iter()
        .find(|h| h.kind == kind as i32)
        .unwrap_or_else(|| panic!("no {kind:?} hint: {:?}", r.hints))
}

fn dec(s: &str) -> Decimal {
    if s.is_empty() {
        return Decimal::ZERO;
    }
    Decimal::from_str(s).unwrap_or_else(|e| panic!("`{s}` is not a decimal: {e}"))
}

#[track_caller]
fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) -> Status {
    let status = result.expect_err("the call fails");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
    status
}

fn fields(status: &Status) -> Vec<String> {
    field_violations_of(status)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

// ---- 1. Evaluate with the active version: the seed numbers ----------------------------------

async fn evaluate_gives_the_seed_numbers(suite: TestSuite) {
    let rules = Rules::of(&suite);

    // R3 brackets and R4 a sale category excluded.
    let (m, v) = rules.merchant_with("brackets", SALE_AND_BRACKETS).await;
    let accrued = |price: &'static str| {
        let rules = rules.clone();
        let m = m.clone();
        async move {
            let r = rules
                .active(&m, input(one(price), Some(customer()), now()))
                .await;
            totals(&r).points_accrued.clone()
        }
    };
    assert_eq!(accrued("499.99").await, "14");
    assert_eq!(accrued("500.00").await, "30");
    assert_eq!(accrued("1000.00").await, "60", "1000.00 is still 6 %");
    assert_eq!(accrued("1000.01").await, "120");
    let r = rules
        .active(&m, input(one("880.00"), Some(customer()), now()))
        .await;
    assert_eq!(r.program_version, v.version);
    assert_eq!(r.program_fingerprint, v.fingerprint);
    assert_eq!(r.program_fingerprint.len(), 64);
    assert_eq!(r.currency, "RUB");
    assert_eq!(r.time_zone, "Europe/Moscow");
    let t = totals(&r);
    assert_eq!(
        (
            t.gross_amount.as_str(),
            t.discount.as_str(),
            t.net_amount.as_str(),
            t.points_accrued.as_str(),
            t.max_redeem_points.as_str(),
            t.paid_money.as_str()
        ),
        ("880.00", "0.00", "880.00", "52", "880", "880.00")
    );
    assert_eq!(r.lines[0].accrual_points, "52");
    assert_eq!(r.accruals.len(), 1);
    assert_eq!(r.accruals[0].amount, "52");
    let next = hint(&r, HintKind::NextBracket);
    assert_eq!(
        (
            next.amount_needed.as_str(),
            next.benefit.as_str(),
            next.rule_id.as_str()
        ),
        ("120.01", "12", "brackets")
    );
    let applied = explanation(&r, "brackets");
    assert_eq!(applied.outcome(), RuleOutcome::Applied);
    assert_eq!(applied.amount, "52");
    // The sale line counts for the bracket (700.00 → 6 %) but earns nothing.
    let r = rules
        .active(
            &m,
            input(
                vec![
                    line("1", "tv", &["goods"], "500.00", "1"),
                    line("2", "cable", &["sale"], "200.00", "1"),
                ],
                Some(customer()),
                now(),
            ),
        )
        .await;
    assert_eq!(
        (
            r.lines[0].accrual_points.as_str(),
            r.lines[1].accrual_points.as_str()
        ),
        ("30", "0")
    );
    assert!(r.lines[1].excluded_from_accrual && r.lines[1].excluded_from_discount);
    assert!(!r.lines[0].excluded_from_accrual);
    assert_eq!(totals(&r).points_accrued, "30");

    // R1 a fixed discount spread by largest remainder, and 5 % from a receipt of 1000.
    let (m, _) = rules
        .merchant_with(
            "fixed",
            "  - id: fixed\n    name: 100 off\n    discount_fixed: {amount: \"100\"}\n  - id: by-total\n    name: 5 % from 1000\n    when: {receipt_total: {at_least: \"1000\"}}\n    discount_percent: {percent: \"5\"}\n",
        )
        .await;
    let r = rules
        .active(
            &m,
            input(
                vec![
                    line("1", "a", &[], "333.33", "1"),
                    line("2", "b", &[], "333.33", "1"),
                    line("3", "c", &[], "333.34", "1"),
                ],
                Some(customer()),
                now(),
            ),
        )
        .await;
    assert_eq!(totals(&r).discount, "150.00");
    assert_eq!(totals(&r).net_amount, "850.00");
    let sum: Decimal = r.lines.iter().map(|l| dec(&l.discount)).sum();
    assert_eq!(sum, dec("150.00"), "lines sum to the total");
    let r = rules
        .active(&m, input(one("999.99"), Some(customer()), now()))
        .await;
    assert_eq!(totals(&r).discount, "100.00");
    let miss = explanation(&r, "by-total");
    assert_eq!(miss.outcome(), RuleOutcome::ConditionNotMet);
    assert_eq!(miss.failed_path, "rules[1].when.receipt_total");
    assert!(miss.near_miss);
    assert_eq!(miss.missing_amount, "0.01");

    // R5 tier discounts 3 % / 10 %, redemption shares 30 % / 100 %.
    let (m, _) = rules.merchant_with("tiers", TIER_RATES).await;
    let r = rules
        .active(
            &m,
            input(one("1000"), Some(tier("NEW", "3", "", "30")), now()),
        )
        .await;
    assert_eq!(
        (
            totals(&r).discount.as_str(),
            totals(&r).max_redeem_points.as_str()
        ),
        ("30.00", "291")
    );
    assert_eq!(r.lines[0].discount, "30.00");
    assert_eq!(r.lines[0].max_redeem_points, "291");
    let r = rules
        .active(
            &m,
            input(one("1000"), Some(tier("VIP", "10", "5", "100")), now()),
        )
        .await;
    assert_eq!(
        (
            totals(&r).discount.as_str(),
            totals(&r).max_redeem_points.as_str(),
            totals(&r).points_accrued.as_str()
        ),
        ("100.00", "900", "45")
    );

    // R7 happy hours Mon–Thu 9:00–12:00 Moscow time (past receipts name the version).
    let (m, v) = rules
        .merchant_with(
            "happy",
            "  - id: hh\n    name: Mon-Thu 9-12\n    when:\n      time_windows:\n        - weekdays: [WEEKDAY_MONDAY, WEEKDAY_TUESDAY, WEEKDAY_WEDNESDAY, WEEKDAY_THURSDAY]\n          start: \"09:00\"\n          end: \"12:00\"\n    discount_percent: {percent: \"10\"}\n",
        )
        .await;
    let at = |d, h, min| Utc.with_ymd_and_hms(2026, 11, d, h, min, 0).unwrap();
    for (when, want, why) in [
        (at(30, 6, 0), "50.00", "Monday 09:00 MSK"),
        (at(30, 8, 59), "50.00", "Monday 11:59 MSK"),
        (at(30, 9, 0), "0.00", "Monday 12:00 MSK"),
        (at(27, 7, 0), "0.00", "Friday 10:00 MSK"),
    ] {
        let r = rules
            .at_version(&m, v.version, input(one("500"), Some(customer()), when))
            .await;
        assert_eq!(totals(&r).discount, want, "{why}");
        if want == "0.00" {
            assert_eq!(
                explanation(&r, "hh").failed_path,
                "rules[0].when.time_windows",
                "{why}"
            );
        }
    }

    // R6 birthday ±3 days doubles the points.
    let (m, v) = rules
        .merchant_with(
            "birthday",
            "  - id: base\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n  - id: bday\n    name: double on birthday\n    when: {birthday: {days_before: 3, days_after: 3}}\n    accrual_multiplier: {factor: \"2\"}\n",
        )
        .await;
    let born = |month, day| CustomerContext {
        birth_date: Some(Date {
            year: 1990,
            month,
            day,
        }),
        ..customer()
    };
    for (c, want) in [
        (born(12, 3), "100"),
        (born(12, 4), "50"),
        (born(11, 27), "100"),
        (customer(), "50"),
    ] {
        let r = rules
            .at_version(
                &m,
                v.version,
                input(one("1000"), Some(c.clone()), monday_10()),
            )
            .await;
        assert_eq!(totals(&r).points_accrued, want, "{:?}", c.birth_date);
        if want == "100" {
            hint(&r, HintKind::Birthday);
        }
    }

    // R8 a frequency bonus within 7 days of the previous purchase.
    let (m, _) = rules
        .merchant_with(
            "frequency",
            "  - id: base\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n  - id: again\n    name: +3 % within 7 days\n    when: {since_last_purchase: {within_days: 7}}\n    accrue_percent: {percent: \"3\"}\n",
        )
        .await;
    let t = now();
    let last = |days| CustomerContext {
        aggregates: Some(PurchaseAggregates {
            purchase_count: 3,
            last_purchase_at: Some(ts(t - Duration::days(days))),
            ..Default::default()
        }),
        ..customer()
    };
    for (c, want) in [(last(7), "80"), (last(8), "50"), (customer(), "50")] {
        let r = rules.active(&m, input(one("1000"), Some(c), t)).await;
        assert_eq!(totals(&r).points_accrued, want);
    }

    // R9 turnover over the last 3 months above 30 000 → 15 %, else 5 % (a FIRST group).
    let m = unique("turnover");
    rules
        .live(
            &m,
            &format!(
                "name: t\nsettings: {{currency: RUB, time_zone: Europe/Moscow}}\ngroups: [{{id: rate, mode: GROUP_MODE_FIRST}}]\nrules:\n{}",
                "  - id: active\n    name: 15 % for > 30 000 in 3 months\n    group: rate\n    priority: 10\n    when: {turnover: {lookback: {months: 3}, amount: {above: \"30000\"}}}\n    accrue_percent: {percent: \"15\"}\n  - id: base\n    name: 5 % otherwise\n    group: rate\n    accrue_percent: {percent: \"5\"}\n"
            ),
            &[],
        )
        .await;
    let turnover = |three_months: &str| CustomerContext {
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
    };
    let r = rules
        .active(&m, input(one("1000"), Some(turnover("30000.01")), now()))
        .await;
    assert_eq!(totals(&r).points_accrued, "150");
    let lost = explanation(&r, "base");
    assert_eq!(lost.outcome(), RuleOutcome::LostInGroup);
    assert_eq!(lost.superseded_by, "active");
    let r = rules
        .active(&m, input(one("1000"), Some(turnover("30000")), now()))
        .await;
    assert_eq!(totals(&r).points_accrued, "50");
    assert_eq!(
        explanation(&r, "active").failed_path,
        "rules[0].when.turnover"
    );

    // R10 redemption limits: 50 % of the receipt, 300 per visit, 20 % on weekends.
    let m = unique("limits");
    let limits = rules
        .live(
            &m,
            "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow, max_redeem_share_percent: \"50\"}\nrules:\n  - id: weekend\n    name: 20 % on weekends\n    when: {time_windows: [{weekdays: [WEEKDAY_SATURDAY, WEEKDAY_SUNDAY]}]}\n    redemption_limit: {max_share_percent: \"20\"}\n  - id: visit\n    name: at most 300 per visit\n    redemption_limit: {max_points: \"300\"}\n",
            &[],
        )
        .await;
    let two = || {
        vec![
            line("1", "a", &[], "400", "1"),
            line("2", "b", &[], "400", "1"),
        ]
    };
    let r = rules
        .at_version(
            &m,
            limits.version,
            input(two(), Some(customer()), monday_10()),
        )
        .await;
    assert_eq!(
        totals(&r).max_redeem_points,
        "300",
        "50 % = 400, per visit 300"
    );
    let sunday = Utc.with_ymd_and_hms(2026, 11, 29, 9, 0, 0).unwrap();
    let r = rules
        .at_version(&m, limits.version, input(two(), Some(customer()), sunday))
        .await;
    assert_eq!(totals(&r).max_redeem_points, "160", "weekend share 20 %");
    let mut pay = input(two(), Some(customer()), monday_10());
    pay.redeem_points = "300".into();
    let r = rules.at_version(&m, limits.version, pay).await;
    assert_eq!(
        (
            r.lines[0].redeem_points.as_str(),
            r.lines[1].redeem_points.as_str()
        ),
        ("150", "150")
    );
    assert_eq!(
        (
            totals(&r).redeem_points.as_str(),
            totals(&r).redeem_money.as_str(),
            totals(&r).paid_money.as_str()
        ),
        ("300", "300.00", "500.00")
    );

    // R11 3 for 2, every second item 50 %, every 6th pizza free.
    let (m, _) = rules
        .merchant_with(
            "three-for-two",
            "  - id: three-for-two\n    name: 3 for 2\n    n_for_m: {buy: 3, pay: 2}\n",
        )
        .await;
    let r = rules
        .active(
            &m,
            input(
                vec![
                    line("1", "a", &[], "100", "2"),
                    line("2", "b", &[], "60", "1"),
                    line("3", "c", &[], "50", "1"),
                ],
                Some(customer()),
                now(),
            ),
        )
        .await;
    assert_eq!(totals(&r).discount, "60.00");
    let discounts: Vec<&str> = r.lines.iter().map(|l| l.discount.as_str()).collect();
    assert_eq!(discounts, ["0.00", "60.00", "0.00"]);
    let (m, _) = rules
        .merchant_with(
            "second",
            "  - id: second\n    name: every second 50 %\n    nth_item: {every: 2, percent: \"50\"}\n",
        )
        .await;
    let r = rules
        .active(
            &m,
            input(
                vec![
                    line("1", "a", &[], "100", "1"),
                    line("2", "b", &[], "80", "1"),
                    line("3", "c", &[], "60", "1"),
                ],
                Some(customer()),
                now(),
            ),
        )
        .await;
    assert_eq!(
        totals(&r).discount,
        "40.00",
        "the second dearest half price"
    );
    assert_eq!(r.lines[1].discount, "40.00");
    hint(&r, HintKind::OneMoreItem);
    let (m, _) = rules
        .merchant_with(
            "pizza",
            "  - id: pizza\n    name: every 6th pizza free\n    scope: {category_ids: [pizza]}\n    stamp_card: {every: 6}\n",
        )
        .await;
    let stamps = |n| CustomerContext {
        stamps: vec![StampBalance {
            stamp_card_id: "pizza".into(),
            count: n,
        }],
        ..customer()
    };
    let pizzas = || {
        vec![
            line("1", "margherita", &["pizza"], "500", "1"),
            line("2", "cola", &["drinks"], "100", "1"),
        ]
    };
    let r = rules
        .active(&m, input(pizzas(), Some(stamps(5)), now()))
        .await;
    assert_eq!(totals(&r).discount, "500.00", "the 6th pizza is free");
    let c = &r.stamp_changes[0];
    assert_eq!(
        (
            c.stamp_card_id.as_str(),
            c.earned,
            c.consumed,
            c.balance_after
        ),
        ("pizza", 0, 5, 0)
    );
    let r = rules
        .active(&m, input(pizzas(), Some(stamps(3)), now()))
        .await;
    assert_eq!(totals(&r).discount, "0.00");
    let c = &r.stamp_changes[0];
    assert_eq!((c.earned, c.consumed, c.balance_after), (1, 0, 4));
    assert_eq!(hint(&r, HintKind::Stamps).units_needed, 1);

    // R15 cashback on the money paid and C7 referral rewards per level.
    let (m, _) = rules
        .merchant_with(
            "referral",
            "  - id: cb\n    name: 10 % cashback\n    cashback: {percent: \"10\"}\n  - id: ref\n    name: friends\n    referral_reward:\n      levels:\n        - {level: 1, percent: \"2\"}\n        - {level: 2, points: \"10\"}\n",
        )
        .await;
    let mut c = customer();
    c.referrer_customer_ids = vec!["friend".into(), "friend-of-friend".into()];
    let mut i = input(one("1000"), Some(c), now());
    i.redeem_points = "200".into();
    let r = rules.active(&m, i).await;
    assert_eq!(totals(&r).points_accrued, "80", "10 % of the 800.00 paid");
    assert_eq!(r.accruals[0].kind(), LotKind::Cashback);
    let referrals: Vec<(&str, u32, &str)> = r
        .referral_rewards
        .iter()
        .map(|g| {
            (
                g.customer_id.as_str(),
                g.level,
                g.grant.as_ref().unwrap().amount.as_str(),
            )
        })
        .collect();
    assert_eq!(
        referrals,
        [("friend", 1, "16"), ("friend-of-friend", 2, "10")]
    );
    assert_eq!(totals(&r).referral_points, "26");
}

// ---- occurred_at picks the version -------------------------------------------------------------

async fn occurred_at_selects_the_version_active_then(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = unique("schedule");
    let five = |name: &str, pct: &str| {
        format!("name: {name}\nsettings: {{currency: RUB, time_zone: Europe/Moscow}}\nrules:\n  - id: base\n    name: {pct} %\n    accrue_percent: {{percent: \"{pct}\"}}\n")
    };
    let before_v1 = now() - Duration::seconds(60);
    let v1 = rules.live(&m, &five("v1", "5"), &[]).await;
    // v2 takes effect two minutes from now, v3 in an hour.
    let t2 = now() + Duration::seconds(120);
    let d2 = rules.draft(&m, &five("v2", "10")).await;
    let v2 = rules.publish(&m, d2.version, &[]).await;
    rules.activate(&m, v2.version, Some(t2)).await;
    let t3 = now() + Duration::hours(1);
    let d3 = rules.draft(&m, &five("v3", "20")).await;
    let v3 = rules.publish(&m, d3.version, &[]).await;
    rules.activate(&m, v3.version, Some(t3)).await;

    // A receipt dated before v2 uses v1, one dated after it uses v2.
    let r = rules
        .active(
            &m,
            input(one("1000"), Some(customer()), t2 - Duration::seconds(60)),
        )
        .await;
    assert_eq!(
        (r.program_version, r.program_fingerprint.as_str()),
        (v1.version, v1.fingerprint.as_str())
    );
    assert_eq!(totals(&r).points_accrued, "50");
    let r = rules
        .active(
            &m,
            input(one("1000"), Some(customer()), t2 + Duration::seconds(60)),
        )
        .await;
    assert_eq!(
        (r.program_version, r.program_fingerprint.as_str()),
        (v2.version, v2.fingerprint.as_str())
    );
    assert_eq!(totals(&r).points_accrued, "100");
    // The version active an hour ahead, named by active_at (a receipt cannot be dated there).
    let r = rules
        .evaluate(
            &m,
            Some(Source::ActiveAt(ts(t3 + Duration::seconds(60)))),
            input(one("1000"), Some(customer()), now()),
        )
        .await
        .expect("Evaluate active_at");
    assert_eq!(r.program_version, v3.version);
    assert_eq!(totals(&r).points_accrued, "200");
    let status = assert_status(
        rules
            .evaluate(
                &m,
                None,
                input(one("1000"), Some(customer()), t3 + Duration::seconds(60)),
            )
            .await,
        Code::InvalidArgument,
        "TIMESTAMP_IN_FUTURE",
    );
    assert_eq!(fields(&status), ["input.occurred_at"]);
    // Before v1 nothing was active.
    assert_status(
        rules
            .evaluate(&m, None, input(one("1000"), Some(customer()), before_v1))
            .await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PROGRAM",
    );
    // A version named by number is used whatever the receipt's time.
    let r = rules
        .at_version(
            &m,
            v3.version,
            input(one("1000"), Some(customer()), before_v1),
        )
        .await;
    assert_eq!(totals(&r).points_accrued, "200");
}

// ---- 2. errors ------------------------------------------------------------------------------

async fn errors_have_stable_reasons_and_field_paths(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let fresh = unique("nothing");
    let draft = rules
        .draft(&fresh, &format!("{HEAD}rules:\n{SALE_AND_BRACKETS}"))
        .await;
    // No activation yet.
    assert_status(
        rules
            .evaluate(&fresh, None, input(one("100"), Some(customer()), now()))
            .await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PROGRAM",
    );
    // A draft is not evaluated at checkout.
    let status = assert_status(
        rules
            .evaluate(
                &fresh,
                Some(Source::Version(draft.version)),
                input(one("100"), Some(customer()), now()),
            )
            .await,
        Code::FailedPrecondition,
        "PROGRAM_NOT_PUBLISHED",
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("version"),
        Some(&draft.version.to_string())
    );
    assert_status(
        rules
            .evaluate(
                &fresh,
                Some(Source::Version(99)),
                input(one("100"), Some(customer()), now()),
            )
            .await,
        Code::NotFound,
        "VERSION_NOT_FOUND",
    );
    // An inline program is for previews only.
    let status = rules
        .evaluate(
            &fresh,
            Some(Source::Inline(
                from_yaml(&format!("{HEAD}rules:\n{SALE_AND_BRACKETS}")).unwrap(),
            )),
            input(one("100"), Some(customer()), now()),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(fields(&status), ["program.inline"]);

    // Bad baskets name the field.
    let m = unique("limits");
    rules
        .live(
            &m,
            "name: t\nsettings: {currency: RUB, time_zone: Europe/Moscow, max_redeem_share_percent: \"50\"}\nrules:\n  - id: visit\n    name: at most 300 per visit\n    redemption_limit: {max_points: \"300\"}\n",
            &[],
        )
        .await;
    let mut bad = one("10.001");
    bad.push(line("2", "p2", &[], "5", "0"));
    let status = assert_status(
        rules
            .evaluate(&m, None, input(bad, Some(customer()), now()))
            .await,
        Code::InvalidArgument,
        "BASKET_INVALID",
    );
    assert_eq!(
        fields(&status),
        ["input.lines[0].unit_price", "input.lines[1].quantity"]
    );
    let status = assert_status(
        rules
            .evaluate(&m, None, input(vec![], Some(customer()), now()))
            .await,
        Code::InvalidArgument,
        "BASKET_INVALID",
    );
    assert_eq!(fields(&status), ["input.lines"]);
    let status = assert_status(
        rules
            .evaluate(
                &m,
                None,
                input(vec![line("1", "p", &[], "10", "0")], None, now()),
            )
            .await,
        Code::InvalidArgument,
        "BASKET_INVALID",
    );
    assert_eq!(fields(&status), ["input.lines[0].quantity"]);
    // No input at all.
    let status = rules
        .eval
        .clone()
        .evaluate(pb::EvaluateRequest {
            merchant_id: m.clone(),
            program: None,
            input: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["input"]);

    // Asking to pay with more points than allowed, or than the customer has.
    let lines = || {
        vec![
            line("1", "a", &[], "400", "1"),
            line("2", "b", &[], "400", "1"),
        ]
    };
    let mut i = input(lines(), Some(customer()), now());
    i.redeem_points = "301".into();
    let status = assert_status(
        rules.evaluate(&m, None, i).await,
        Code::FailedPrecondition,
        "REDEMPTION_LIMIT_EXCEEDED",
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("max_redeemable").map(String::as_str),
        Some("300")
    );
    let mut poor = customer();
    poor.available_points = "100".into();
    let mut i = input(lines(), Some(poor), now());
    i.redeem_points = "150".into();
    assert_status(
        rules.evaluate(&m, None, i).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_POINTS",
    );
    // Exactly the limit is fine.
    let mut i = input(lines(), Some(customer()), now());
    i.redeem_points = "300".into();
    let r = rules.active(&m, i).await;
    assert_eq!(totals(&r).redeem_points, "300");
    // An anonymous receipt cannot be paid with points.
    let mut i = input(lines(), None, now());
    i.redeem_points = "1".into();
    let status = assert_status(
        rules.evaluate(&m, None, i).await,
        Code::InvalidArgument,
        "BASKET_INVALID",
    );
    assert_eq!(fields(&status), ["input.redeem_points"]);
}

// ---- 3. DryRun --------------------------------------------------------------------------------

async fn dry_run_of_drafts_and_inline_programs(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = unique("preview");
    let yaml = format!("{HEAD}rules:\n{SALE_AND_BRACKETS}");
    let draft = rules.draft(&m, &yaml).await;
    // A draft by version: evaluated as it would be once published.
    let r = rules
        .dry_run(
            &m,
            Source::Version(draft.version),
            input(one("880.00"), Some(customer()), now()),
            &[],
        )
        .await;
    let result = r.result.expect("a result for a valid draft");
    assert_eq!(result.program_version, draft.version);
    assert_eq!(result.program_fingerprint, draft.fingerprint);
    assert_eq!(totals(&result).points_accrued, "52");
    assert_eq!(hint(&result, HintKind::NextBracket).amount_needed, "120.01");
    assert!(r
        .violations
        .iter()
        .all(|v| v.severity() == pb::ViolationSeverity::Warning));

    // An inline program, not stored; a tier condition checked against the given codes.
    let inline = from_yaml(&format!(
        "{HEAD}rules:\n  - id: gold\n    name: Gold 10 %\n    when: {{tiers: [GOLD]}}\n    discount_percent: {{percent: \"10\"}}\n{TIER_RATES}"
    ))
    .unwrap();
    let r = rules
        .dry_run(
            &m,
            Source::Inline(inline.clone()),
            input(one("1000"), Some(tier("GOLD", "3", "", "30")), now()),
            &["GOLD"],
        )
        .await;
    let result = r.result.expect("a result for a valid inline program");
    assert_eq!(result.program_version, 0);
    assert_eq!(result.program_fingerprint.len(), 64);
    // 10 % + the tier's 3 % add up; 30 % of 870.00 is payable with points.
    assert_eq!(
        (
            totals(&result).discount.as_str(),
            totals(&result).max_redeem_points.as_str()
        ),
        ("130.00", "261")
    );
    // Nothing was stored.
    let listed = rules
        .programs
        .clone()
        .list_versions(pb::ListVersionsRequest {
            merchant_id: m.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.versions.len(), 1);

    // An invalid inline program: its violations with paths, no result.
    let invalid = from_yaml(&format!(
        "{HEAD}rules:\n  - id: too-much\n    name: 150 %\n    discount_percent: {{percent: \"150\"}}\n  - id: never\n    name: empty window\n    when: {{time_windows: [{{start: \"10:00\", end: \"10:00\"}}]}}\n    discount_percent: {{percent: \"5\"}}\n"
    ))
    .unwrap();
    let r = rules
        .dry_run(
            &m,
            Source::Inline(invalid),
            input(one("1000"), Some(customer()), now()),
            &[],
        )
        .await;
    assert!(r.result.is_none(), "{:?}", r.result);
    let errors: Vec<(&str, &str)> = r
        .violations
        .iter()
        .filter(|v| v.severity() == pb::ViolationSeverity::Error)
        .map(|v| (v.field.as_str(), v.code.as_str()))
        .collect();
    assert!(
        errors
            .iter()
            .any(|(f, _)| *f == "rules[0].discount_percent.percent"),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(f, c)| f.starts_with("rules[1].when.time_windows[0]")
                && *c == "EMPTY_TIME_WINDOW"),
        "{errors:?}"
    );
    // An unknown tier named by an inline program.
    let r = rules
        .dry_run(
            &m,
            Source::Inline(inline),
            input(one("1000"), Some(customer()), now()),
            &["SILVER"],
        )
        .await;
    assert!(r.result.is_none());
    assert!(
        r.violations
            .iter()
            .any(|v| v.code == "UNKNOWN_TIER" && v.field.starts_with("rules[0].when.tiers")),
        "{:?}",
        r.violations
    );
    // A bad basket is still a bad basket.
    let status = rules
        .eval
        .clone()
        .dry_run(pb::DryRunRequest {
            merchant_id: m.clone(),
            program: Some(ProgramRef {
                source: Some(Source::Version(draft.version)),
            }),
            input: Some(input(one("-1"), Some(customer()), now())),
            tier_codes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&status).as_deref(), Some("BASKET_INVALID"));
    assert_eq!(fields(&status), ["input.lines[0].unit_price"]);
}

// ---- 4. CompareVersions -----------------------------------------------------------------------

fn percent_program(discount: &str) -> String {
    format!("{HEAD}rules:\n  - id: off\n    name: {discount} % off\n    discount_percent: {{percent: \"{discount}\"}}\n  - id: pts\n    name: 5 % points\n    accrue_percent: {{percent: \"5\"}}\n")
}

async fn compare_versions_per_line_and_in_total(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = unique("compare");
    let v1 = rules.live(&m, &percent_program("5"), &[]).await;
    let draft = rules.draft(&m, &percent_program("10")).await;
    let receipt = || {
        input(
            vec![
                line("1", "a", &[], "200.00", "1"),
                line("2", "b", &[], "300.00", "1"),
            ],
            Some(customer()),
            now(),
        )
    };
    let compare = |base: Option<Source>| {
        let mut eval = rules.eval.clone();
        let m = m.clone();
        let request = pb::CompareVersionsRequest {
            merchant_id: m,
            base: base.map(|s| ProgramRef { source: Some(s) }),
            candidate: Some(ProgramRef {
                source: Some(Source::Version(draft.version)),
            }),
            input: Some(receipt()),
        };
        async move {
            eval.compare_versions(request)
                .await
                .expect("CompareVersions")
                .into_inner()
        }
    };
    let c = compare(Some(Source::Version(v1.version))).await;
    let base = c.base.as_ref().unwrap();
    let cand = c.candidate.as_ref().unwrap();
    assert_eq!(
        (base.program_version, cand.program_version),
        (v1.version, draft.version)
    );
    let d = |r: &EvaluationResult| -> Vec<String> {
        r.lines.iter().map(|l| l.discount.clone()).collect()
    };
    assert_eq!(d(base), ["10.00", "15.00"]);
    assert_eq!(d(cand), ["20.00", "30.00"]);
    // Points: 5 % of 190.00 and 285.00 against 5 % of 180.00 and 270.00.
    let p = |r: &EvaluationResult| -> Vec<String> {
        r.lines.iter().map(|l| l.accrual_points.clone()).collect()
    };
    assert_eq!(p(base), ["9", "14"]);
    assert_eq!(p(cand), ["9", "13"]);
    let diffs: Vec<(&str, &str, &str, &str)> = c
        .lines
        .iter()
        .map(|l| {
            (
                l.line_id.as_str(),
                l.discount.as_str(),
                l.accrual_points.as_str(),
                l.max_redeem_points.as_str(),
            )
        })
        .collect();
    assert_eq!(
        diffs,
        [("1", "10.00", "0", "-10"), ("2", "15.00", "-1", "-15")]
    );
    assert_eq!(
        (
            c.discount.as_str(),
            c.points_accrued.as_str(),
            c.max_redeem_points.as_str()
        ),
        ("25.00", "-1", "-25")
    );
    // Every difference is candidate minus base.
    for (i, l) in c.lines.iter().enumerate() {
        assert_eq!(
            dec(&l.discount),
            dec(&cand.lines[i].discount) - dec(&base.lines[i].discount)
        );
        assert_eq!(
            dec(&l.accrual_points),
            dec(&cand.lines[i].accrual_points) - dec(&base.lines[i].accrual_points)
        );
    }
    assert_eq!(
        dec(&c.points_accrued),
        dec(&totals(cand).points_accrued) - dec(&totals(base).points_accrued)
    );
    // An unset base is the active version: the same answer.
    let again = compare(None).await;
    assert_eq!(again.base.as_ref().unwrap().program_version, v1.version);
    assert_eq!(again.lines, c.lines);
    // The candidate is required.
    let status = rules
        .eval
        .clone()
        .compare_versions(pb::CompareVersionsRequest {
            merchant_id: m.clone(),
            base: None,
            candidate: None,
            input: Some(receipt()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["candidate"]);
}

// ---- 5. Simulate ------------------------------------------------------------------------------

/// The baseline: brackets, tier rates, a sale exclusion and 3 for 2.
fn baseline_program() -> String {
    format!("{HEAD}rules:\n{SALE_AND_BRACKETS}{TIER_RATES}  - id: three-for-two\n    name: 3 for 2\n    scope: {{category_ids: [socks]}}\n    n_for_m: {{buy: 3, pay: 2}}\n")
}

/// The candidate: a 5 % discount on everything but sale, a frequency bonus and 3 for 2.
fn candidate_program() -> String {
    format!("{HEAD}rules:\n{SALE_AND_BRACKETS}{TIER_RATES}  - id: five-off\n    name: 5 % off\n    discount_percent: {{percent: \"5\"}}\n  - id: again\n    name: +3 % within 7 days\n    when: {{since_last_purchase: {{within_days: 7}}}}\n    accrue_percent: {{percent: \"3\"}}\n  - id: three-for-two\n    name: 3 for 2\n    scope: {{category_ids: [socks]}}\n    n_for_m: {{buy: 3, pay: 2}}\n")
}

/// 50 receipts with varied customers (anonymous, no tier, NEW, GOLD, VIP) and baskets.
fn receipts(at: DateTime<Utc>) -> Vec<EvaluationInput> {
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let tiers = [
        None,
        Some(("NEW", "3", "", "30")),
        Some(("GOLD", "5", "2", "50")),
        Some(("VIP", "10", "5", "100")),
    ];
    (0..50)
        .map(|i| {
            let lines = (0..1 + next(4))
                .map(|j| {
                    let (product, category) = match next(4) {
                        0 => ("sock", "socks"),
                        1 => ("cable", "sale"),
                        _ => ("gadget", "goods"),
                    };
                    let price = format!("{}.{:02}", 10 + next(700), next(100));
                    let quantity = (1 + next(3)).to_string();
                    line(&format!("{j}"), product, &[category], &price, &quantity)
                })
                .collect();
            let customer = if i % 10 == 9 {
                None
            } else {
                let mut c = CustomerContext {
                    customer_id: format!("c{}", next(12)),
                    available_points: "100000".into(),
                    ..Default::default()
                };
                if let Some((code, discount, accrual, share)) = tiers[(i % 4) as usize] {
                    c.tier = Some(CustomerTier {
                        code: code.into(),
                        rank: 1,
                        discount_percent: discount.into(),
                        accrual_percent: accrual.into(),
                        max_redeem_share_percent: share.into(),
                    });
                }
                if next(2) == 0 {
                    c.aggregates = Some(PurchaseAggregates {
                        purchase_count: 2,
                        last_purchase_at: Some(ts(at - Duration::days(1 + next(14) as i64))),
                        ..Default::default()
                    });
                }
                Some(c)
            };
            EvaluationInput {
                lines,
                customer,
                occurred_at: Some(ts(at)),
                explain: ExplainLevel::None as i32,
                ..Default::default()
            }
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Clone)]
struct Sums {
    gross: Decimal,
    discount: Decimal,
    accrued: Decimal,
    redeemable: Decimal,
    affected: u64,
}

impl Sums {
    fn add(&mut self, r: &EvaluationResult) {
        let t = totals(r);
        self.gross += dec(&t.gross_amount);
        self.discount += dec(&t.discount);
        self.accrued += dec(&t.points_accrued);
        self.redeemable += dec(&t.max_redeem_points);
        if !(dec(&t.discount).is_zero()
            && dec(&t.points_accrued).is_zero()
            && dec(&t.referral_points).is_zero()
            && r.stamp_changes.is_empty())
        {
            self.affected += 1;
        }
    }

    fn of(t: &pb::SimulationTotals) -> Self {
        Sums {
            gross: dec(&t.gross_amount),
            discount: dec(&t.discount),
            accrued: dec(&t.points_accrued),
            redeemable: dec(&t.points_redeemable),
            affected: t.receipts_affected,
        }
    }

    fn plus(mut self, o: &Sums) -> Self {
        self.gross += o.gross;
        self.discount += o.discount;
        self.accrued += o.accrued;
        self.redeemable += o.redeemable;
        self.affected += o.affected;
        self
    }
}

async fn simulation_totals_equal_single_evaluations(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = unique("simulate");
    let v1 = rules.live(&m, &baseline_program(), &[]).await;
    let draft = rules.draft(&m, &candidate_program()).await;
    let at = now();
    let receipts = receipts(at);

    // The sums of single evaluations: Evaluate (active) for the baseline, DryRun for the draft.
    let mut baseline = Sums::default();
    let mut candidate = Sums::default();
    let mut per_tier: HashMap<String, (Sums, Sums)> = HashMap::new();
    let mut customers: [HashSet<String>; 2] = Default::default();
    for receipt in &receipts {
        let b = rules.active(&m, receipt.clone()).await;
        assert_eq!(b.program_version, v1.version);
        let c = rules
            .dry_run(&m, Source::Version(draft.version), receipt.clone(), &[])
            .await
            .result
            .expect("the draft is valid");
        baseline.add(&b);
        let id = receipt
            .customer
            .as_ref()
            .map_or(String::new(), |c| c.customer_id.clone());
        for (side, r) in [&c, &b].into_iter().enumerate() {
            let t = totals(r);
            let affected = !dec(&t.discount).is_zero() || !dec(&t.points_accrued).is_zero();
            if affected && !id.is_empty() {
                customers[side].insert(id.clone());
            }
        }
        candidate.add(&c);
        let code = receipt
            .customer
            .as_ref()
            .and_then(|c| c.tier.as_ref())
            .map_or(String::new(), |t| t.code.clone());
        let entry = per_tier.entry(code).or_default();
        entry.0.add(&c);
        entry.1.add(&b);
    }
    assert!(
        candidate.discount > baseline.discount,
        "{candidate:?} {baseline:?}"
    );

    // The same receipts streamed, plus one with a bad basket.
    let mut stream = vec![pb::SimulateRequest {
        merchant_id: m.clone(),
        item: Some(Item::Setup(pb::SimulationSetup {
            candidate: Some(ProgramRef {
                source: Some(Source::Version(draft.version)),
            }),
            baseline: None,
            max_errors: 5,
        })),
    }];
    for (i, receipt) in receipts.iter().enumerate() {
        stream.push(pb::SimulateRequest {
            merchant_id: m.clone(),
            item: Some(Item::Receipt(pb::SimulatedReceipt {
                receipt_id: format!("r{i}"),
                input: Some(receipt.clone()),
            })),
        });
        if i == 24 {
            let mut bad = receipt.clone();
            bad.lines[0].quantity = "0".into();
            stream.push(pb::SimulateRequest {
                merchant_id: m.clone(),
                item: Some(Item::Receipt(pb::SimulatedReceipt {
                    receipt_id: "bad".into(),
                    input: Some(bad),
                })),
            });
        }
    }
    let sim = rules
        .eval
        .clone()
        .simulate(tokio_stream::iter(stream))
        .await
        .expect("Simulate")
        .into_inner();
    assert_eq!((sim.receipts, sim.receipts_failed), (51, 1));
    assert_eq!(sim.errors.len(), 1);
    assert_eq!(
        (
            sim.errors[0].receipt_id.as_str(),
            sim.errors[0].reason.as_str()
        ),
        ("bad", "BASKET_INVALID")
    );
    assert!(
        sim.errors[0].message.contains("input.lines[0].quantity"),
        "{}",
        sim.errors[0].message
    );
    assert_eq!(sim.candidate_version, draft.version);
    let sim_candidate = Sums::of(sim.candidate.as_ref().unwrap());
    let sim_baseline = Sums::of(sim.baseline.as_ref().unwrap());
    assert_eq!(sim_candidate, candidate, "candidate totals");
    assert_eq!(sim_baseline, baseline, "baseline totals");
    assert_eq!(
        (
            sim.candidate.as_ref().unwrap().customers_affected,
            sim.baseline.as_ref().unwrap().customers_affected
        ),
        (customers[0].len() as u64, customers[1].len() as u64)
    );

    // Per tier: each as single evaluations say, and together the totals.
    let mut codes: Vec<&str> = sim.tiers.iter().map(|t| t.tier_code.as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["", "GOLD", "NEW", "VIP"]);
    let mut sum_c = Sums::default();
    let mut sum_b = Sums::default();
    for t in &sim.tiers {
        let c = Sums::of(t.candidate.as_ref().unwrap());
        let b = Sums::of(t.baseline.as_ref().unwrap());
        let (want_c, want_b) = &per_tier[&t.tier_code];
        assert_eq!((&c, &b), (want_c, want_b), "tier `{}`", t.tier_code);
        sum_c = sum_c.plus(&c);
        sum_b = sum_b.plus(&b);
    }
    assert_eq!(sum_c, sim_candidate);
    assert_eq!(sum_b, sim_baseline);

    // Per rule: the union of both programs' rules; five-off only in the candidate, with its
    // discount (the candidate's discount is five-off's plus the tiers' plus 3 for 2).
    let ids: Vec<&str> = sim.rules.iter().map(|r| r.rule_id.as_str()).collect();
    for id in [
        "sale",
        "brackets",
        "tier",
        "three-for-two",
        "five-off",
        "again",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let rule = |id: &str| sim.rules.iter().find(|r| r.rule_id == id).unwrap();
    let five = rule("five-off");
    assert_eq!(five.rule_name, "5 % off");
    assert!(dec(&five.candidate.as_ref().unwrap().discount) > Decimal::ZERO);
    assert!(dec(&five.baseline.as_ref().unwrap().discount).is_zero());
    let rule_discounts: Decimal = sim
        .rules
        .iter()
        .map(|r| dec(&r.candidate.as_ref().unwrap().discount))
        .sum();
    assert_eq!(rule_discounts, candidate.discount);
    let rule_points: Decimal = sim
        .rules
        .iter()
        .map(|r| dec(&r.baseline.as_ref().unwrap().points_accrued))
        .sum();
    assert_eq!(rule_points, baseline.accrued);

    // An inline candidate against a fixed baseline version: the same totals, version 0.
    let mut stream = vec![pb::SimulateRequest {
        merchant_id: m.clone(),
        item: Some(Item::Setup(pb::SimulationSetup {
            candidate: Some(ProgramRef {
                source: Some(Source::Inline(from_yaml(&candidate_program()).unwrap())),
            }),
            baseline: Some(ProgramRef {
                source: Some(Source::Version(v1.version)),
            }),
            max_errors: 0,
        })),
    }];
    stream.extend(
        receipts
            .iter()
            .enumerate()
            .map(|(i, r)| pb::SimulateRequest {
                merchant_id: m.clone(),
                item: Some(Item::Receipt(pb::SimulatedReceipt {
                    receipt_id: format!("r{i}"),
                    input: Some(r.clone()),
                })),
            }),
    );
    let inline = rules
        .eval
        .clone()
        .simulate(tokio_stream::iter(stream))
        .await
        .expect("Simulate inline")
        .into_inner();
    assert_eq!(
        (
            inline.receipts,
            inline.receipts_failed,
            inline.candidate_version
        ),
        (50, 0, 0)
    );
    assert_eq!(Sums::of(inline.candidate.as_ref().unwrap()), candidate);
    assert_eq!(Sums::of(inline.baseline.as_ref().unwrap()), baseline);

    // The first message must be the setup.
    let status = rules
        .eval
        .clone()
        .simulate(tokio_stream::iter(vec![pb::SimulateRequest {
            merchant_id: m.clone(),
            item: Some(Item::Receipt(pb::SimulatedReceipt {
                receipt_id: "r".into(),
                input: Some(receipts[0].clone()),
            })),
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["setup"]);
}

// ---- 6. DecideTier and EvaluateAction ---------------------------------------------------------

const TIERS_AND_ACTIONS: &str = "name: Tiers and actions\nsettings: {currency: RUB, time_zone: Europe/Moscow}\ntier_progression:\n  levels:\n    - {tier_code: NEW}\n    - {tier_code: GOLD, cumulative_turnover_at_least: \"10000\"}\n    - {tier_code: VIP, cumulative_turnover_at_least: \"30000\"}\nrules:\n  - id: base\n    name: 5 %\n    accrue_percent: {percent: \"5\"}\n  - id: start-bonus\n    name: Start bonus\n    points_terms: {valid_days: 14}\n    action_reward:\n      action: ACTION_KIND_REGISTRATION\n      points: \"100\"\n      once_per_customer: true\n      referrer_rewards:\n        - {level: 1, points: \"200\"}\n        - {level: 2, points: \"50\"}\n  - id: review\n    name: A review\n    action_reward: {action: ACTION_KIND_REVIEW, points: \"50\"}\n";

fn with_lifetime(code: &str, lifetime: &str) -> CustomerContext {
    CustomerContext {
        customer_id: "c1".into(),
        tier: Some(CustomerTier {
            code: code.into(),
            rank: 1,
            ..Default::default()
        }),
        aggregates: Some(PurchaseAggregates {
            lifetime_turnover: lifetime.into(),
            purchase_count: 5,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn tier_decisions_and_action_rewards(suite: TestSuite) {
    let rules = Rules::of(&suite);
    let m = unique("tiers");
    let v = rules
        .live(&m, TIERS_AND_ACTIONS, &["NEW", "GOLD", "VIP"])
        .await;
    let decide = |merchant: &str, c: CustomerContext, amount: &str| {
        let mut eval = rules.eval.clone();
        let request = pb::DecideTierRequest {
            merchant_id: merchant.into(),
            program: None,
            customer: Some(c),
            trigger: TierTrigger::Purchase as i32,
            purchase_amount: amount.into(),
            decided_at: Some(ts(now())),
        };
        async move {
            eval.decide_tier(request)
                .await
                .expect("DecideTier")
                .into_inner()
        }
    };
    // NEW → GOLD by a purchase crossing 10 000 cumulative.
    let r = decide(&m, with_lifetime("NEW", "9250"), "1000").await;
    assert_eq!(r.decision(), TierDecision::Upgrade);
    assert_eq!(
        (r.tier_code.as_str(), r.previous_tier_code.as_str()),
        ("GOLD", "NEW")
    );
    assert_eq!(r.criterion(), TierCriterion::CumulativeTurnover);
    assert_eq!(r.rule_id, "tier_progression.GOLD");
    assert_eq!(r.program_version, v.version);
    assert!(!r.reason.is_empty());
    let progress = r.progress.unwrap();
    assert_eq!(
        (
            progress.next_tier_code.as_str(),
            progress.cumulative_turnover_missing.as_str()
        ),
        ("VIP", "19750.00")
    );
    // VIP at 30 000.
    let r = decide(&m, with_lifetime("GOLD", "29000"), "1000").await;
    assert_eq!(
        (r.decision(), r.tier_code.as_str()),
        (TierDecision::Upgrade, "VIP")
    );
    assert_eq!(r.rule_id, "tier_progression.VIP");
    // Below the bar: KEEP, 0.01 short.
    let r = decide(&m, with_lifetime("NEW", "8999.99"), "1000").await;
    assert_eq!(
        (r.decision(), r.tier_code.as_str()),
        (TierDecision::Keep, "NEW")
    );
    let progress = r.progress.unwrap();
    assert_eq!(
        (
            progress.next_tier_code.as_str(),
            progress.cumulative_turnover_missing.as_str()
        ),
        ("GOLD", "0.01")
    );
    // Locked by hand: nothing changes.
    let mut locked = with_lifetime("NEW", "50000");
    locked.tier_locked = true;
    let r = decide(&m, locked, "1000").await;
    assert_eq!(
        (r.decision(), r.tier_code.as_str()),
        (TierDecision::Locked, "NEW")
    );
    // No trigger: a field violation.
    let status = rules
        .eval
        .clone()
        .decide_tier(pb::DecideTierRequest {
            merchant_id: m.clone(),
            customer: Some(with_lifetime("NEW", "0")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["trigger"]);
    // A program without tier progression.
    let (plain, _) = rules.merchant_with("plain", TIER_RATES).await;
    let r = decide(&plain, with_lifetime("NEW", "50000"), "1000").await;
    assert_eq!(r.decision(), TierDecision::NoProgression);

    // REGISTRATION: the start bonus, 100 points valid 14 days, once per customer.
    let t = now();
    let action = |kind: ActionKind, action_ref: &str| {
        let mut eval = rules.eval.clone();
        let request = pb::EvaluateActionRequest {
            merchant_id: m.clone(),
            program: None,
            customer: Some(CustomerContext {
                customer_id: "newbie".into(),
                referrer_customer_ids: vec!["friend".into(), "friend-of-friend".into()],
                ..Default::default()
            }),
            action: kind as i32,
            custom_code: String::new(),
            action_ref: action_ref.into(),
            occurred_at: Some(ts(t)),
        };
        async move { eval.evaluate_action(request).await }
    };
    let r = action(ActionKind::Registration, "")
        .await
        .expect("EvaluateAction")
        .into_inner();
    assert_eq!(r.program_version, v.version);
    assert_eq!(r.grants.len(), 1, "{:?}", r.grants);
    let bonus = &r.grants[0];
    assert_eq!(bonus.amount, "100");
    assert_eq!(bonus.kind(), LotKind::Gift);
    assert_eq!(bonus.grant_key, "action:start-bonus");
    assert_eq!(bonus.rule_ids, ["start-bonus"]);
    assert_eq!(
        seconds(&bonus.expires_at),
        (t + Duration::days(14)).timestamp()
    );
    if let Some(activates) = &bonus.activates_at {
        assert_eq!(activates.seconds, t.timestamp(), "spendable at once");
    }
    // The referrers per level, keyed by the new customer.
    let referrers: Vec<(&str, u32, &str, &str)> = r
        .referrer_grants
        .iter()
        .map(|g| {
            let grant = g.grant.as_ref().unwrap();
            (
                g.customer_id.as_str(),
                g.level,
                grant.amount.as_str(),
                grant.grant_key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        referrers,
        [
            ("friend", 1, "200", "action:start-bonus:newbie"),
            ("friend-of-friend", 2, "50", "action:start-bonus:newbie")
        ]
    );
    let applied = explanation_of(&r.explanations, "start-bonus");
    assert_eq!(applied.outcome(), RuleOutcome::Applied);
    assert_eq!(applied.amount, "100");
    let other = explanation_of(&r.explanations, "review");
    assert_eq!(other.outcome(), RuleOutcome::ConditionNotMet);

    // A review: keyed by the review's reference, never expiring by default.
    let r = action(ActionKind::Review, "review-42")
        .await
        .expect("EvaluateAction")
        .into_inner();
    assert_eq!(r.grants.len(), 1, "{:?}", r.grants);
    let g = &r.grants[0];
    assert_eq!(
        (g.amount.as_str(), g.grant_key.as_str(), g.kind()),
        ("50", "action:review:review-42", LotKind::Action)
    );
    assert!(g.expires_at.is_none());
    assert!(r.referrer_grants.is_empty());
    // Without a reference a per-occurrence reward cannot be keyed.
    let status = action(ActionKind::Review, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["action_ref"]);
    // An action nothing rewards: no grants.
    let r = action(ActionKind::Survey, "s-1")
        .await
        .expect("EvaluateAction")
        .into_inner();
    assert!(r.grants.is_empty() && r.referrer_grants.is_empty());
}

fn explanation_of<'a>(all: &'a [pb::Explanation], rule: &str) -> &'a pb::Explanation {
    all.iter()
        .find(|e| e.rule_id == rule)
        .unwrap_or_else(|| panic!("no explanation for {rule}: {all:?}"))
}
