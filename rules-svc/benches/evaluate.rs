//! Evaluation speed (issue 6, "Benchmark"):
//!
//! 1. a 20-line basket against a realistic 30-rule program (`program-30-rules.yaml`), compiled
//!    once — evaluations per second on one core (criterion runs on one thread) and allocations
//!    per evaluation (a counting global allocator);
//! 2. the same decision in GoRules `zen-engine` and in Kopilka: tier × receipt-total bracket →
//!    percentage (NEW / GOLD / VIP × below 500 / 500–1000 / above 1000, first hit) — both rates
//!    and their ratio.
//!
//! Run: `cargo bench -p rules-svc --features bench --bench evaluate`. Built only with the
//! `bench` feature, so `cargo test` and `cargo clippy --all-targets` never compile it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use criterion::Criterion;
use kopilka_proto::rules::{
    CustomerContext, CustomerTier, EvaluationInput, EvaluationResult, Program,
};
use kopilka_proto::types::{
    lookback::Span, BasketLine, Date, Lookback, PurchaseAggregates, StampBalance, WindowAggregate,
};
use rules_svc::catalog::Catalog;
use rules_svc::document::from_yaml;
use rules_svc::evaluate::evaluate;
use rules_svc::plan::Plan;
use rules_svc::validate::{validate, Known};
use serde_json::json;
use zen_engine::model::DecisionContent;
use zen_engine::{Decision, DecisionEngine};

// ---- allocation counting ----

/// `System` with a count of allocations (alloc, alloc_zeroed and realloc each count one).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per call of `f`, averaged over `n` calls.
fn allocations_per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..n {
        f(i);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// Calls per second of `f` over about `seconds` (after a short warm-up), on this thread.
fn rate(seconds: f64, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..1_000 {
        f(i);
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < budget {
        for _ in 0..256 {
            f(calls);
            calls += 1;
        }
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

// ---- the 30-rule program and the 20-line basket ----

const PROGRAM_30: &str = include_str!("program-30-rules.yaml");

/// Wednesday 3 June 2026, 10:30 in Moscow (UTC+3): happy hours, a weekday.
fn sale_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 3, 7, 30, 0)
        .single()
        .expect("a valid instant")
}

fn ts(t: DateTime<Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn line(n: usize, product: &str, categories: &[&str], price: &str, qty: &str) -> BasketLine {
    BasketLine {
        line_id: n.to_string(),
        product_id: product.to_owned(),
        name: product.to_owned(),
        category_ids: categories.iter().map(|c| (*c).to_owned()).collect(),
        unit_price: price.to_owned(),
        quantity: qty.to_owned(),
        ..Default::default()
    }
}

fn basket_20() -> Vec<BasketLine> {
    let items: [(&str, &[&str], &str, &str); 20] = [
        ("cappuccino", &["coffee", "drinks-hot"], "180.00", "2"),
        ("latte", &["coffee", "drinks-hot"], "210.00", "1"),
        ("croissant", &["bakery"], "95.00", "3"),
        ("cheesecake", &["desserts"], "320.00", "1"),
        ("orange-juice", &["drinks"], "149.90", "2"),
        ("mineral-water", &["drinks"], "59.90", "3"),
        ("chips", &["snacks"], "129.00", "2"),
        ("nuts", &["snacks"], "249.00", "1"),
        ("chocolate", &["snacks"], "99.00", "1"),
        ("detergent", &["household"], "649.00", "1"),
        ("paper-towels", &["household"], "289.00", "2"),
        ("sponges", &["household"], "79.00", "1"),
        ("featured-1", &["grocery"], "199.00", "2"),
        ("featured-2", &["grocery"], "349.00", "1"),
        ("cheese", &["grocery", "dairy"], "899.00", "0.450"),
        ("apples", &["grocery", "fruit"], "159.00", "1.235"),
        ("old-mug", &["sale"], "99.00", "1"),
        ("cigarettes", &["tobacco"], "220.00", "1"),
        ("wine", &["alcohol"], "1290.00", "1"),
        ("gift-card-1000", &["gift-cards"], "1000.00", "1"),
    ];
    items
        .iter()
        .enumerate()
        .map(|(i, (p, c, price, q))| {
            let mut l = line(i + 1, p, c, price, q);
            l.weighted = q.contains('.');
            l
        })
        .collect()
}

fn months(n: u32, turnover: &str, count: u64) -> WindowAggregate {
    WindowAggregate {
        lookback: Some(Lookback {
            span: Some(Span::Months(n)),
        }),
        turnover: turnover.to_owned(),
        purchase_count: count,
    }
}

fn customer_30() -> CustomerContext {
    let at = sale_time();
    CustomerContext {
        customer_id: "c-1042".to_owned(),
        tier: Some(CustomerTier {
            code: "GOLD".to_owned(),
            rank: 2,
            accrual_percent: "5".to_owned(),
            discount_percent: "5".to_owned(),
            max_redeem_share_percent: "50".to_owned(),
        }),
        tier_locked: false,
        // Birthday on 5 June: inside the ±3-day window.
        birth_date: Some(Date {
            year: 1988,
            month: 6,
            day: 5,
        }),
        registered_at: Some(ts(at - chrono::Duration::days(400))),
        aggregates: Some(PurchaseAggregates {
            as_of: Some(ts(at)),
            lifetime_turnover: "48210.50".to_owned(),
            purchase_count: 37,
            first_purchase_at: Some(ts(at - chrono::Duration::days(390))),
            last_purchase_at: Some(ts(at - chrono::Duration::days(4))),
            windows: vec![months(3, "31250.00", 11)],
            ..Default::default()
        }),
        stamps: vec![StampBalance {
            stamp_card_id: "coffee-stamps".to_owned(),
            count: 4,
        }],
        identifiers: Vec::new(),
        referrer_customer_ids: vec![
            "c-0007".to_owned(),
            "c-0003".to_owned(),
            "c-0001".to_owned(),
        ],
        available_points: "2480".to_owned(),
    }
}

fn input_30() -> EvaluationInput {
    EvaluationInput {
        lines: basket_20(),
        customer: Some(customer_30()),
        promo_codes: vec!["summer25".to_owned()],
        occurred_at: Some(ts(sale_time())),
        time_zone: String::new(),
        store_id: "store-3".to_owned(),
        terminal_id: "pos-1".to_owned(),
        redeem_points: "500".to_owned(),
        explain: 0,
    }
}

fn compile(program: &Program) -> Plan {
    let codes = ["NEW", "GOLD", "VIP"].map(str::to_owned);
    let report = validate(
        program,
        &Known {
            tier_codes: Some(&codes),
            catalog: None,
        },
    );
    assert!(report.is_valid(), "{:#?}", report.errors());
    Plan::compile(program, 1).expect("the program compiles")
}

// ---- the equivalent decision: tier × receipt-total bracket → percentage ----

const TIERS: [(&str, [&str; 3]); 3] = [
    ("NEW", ["3", "6", "12"]),
    ("GOLD", ["5", "8", "14"]),
    ("VIP", ["7", "10", "15"]),
];
const TOTALS: [&str; 6] = [
    "120.00", "499.99", "500.00", "1000.00", "1000.01", "4500.00",
];

/// Kopilka: one rule per tier in a FIRST group, each a bracket table.
fn decision_program() -> Program {
    let mut yaml = String::from(
        "name: Tier x bracket\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n\
         groups: [{id: rate, name: Rate, mode: GROUP_MODE_FIRST}]\nrules:\n",
    );
    for (tier, [low, mid, high]) in TIERS {
        yaml.push_str(&format!(
            "  - id: {id}\n    name: {tier} rate\n    group: rate\n    when: {{tiers: [{tier}]}}\n    \
             accrue_brackets:\n      brackets:\n        - {{at_least: \"0\", percent: \"{low}\"}}\n        \
             - {{at_least: \"500\", percent: \"{mid}\"}}\n        - {{above: \"1000\", percent: \"{high}\"}}\n",
            id = tier.to_lowercase()
        ));
    }
    from_yaml(&yaml).expect("the decision program parses")
}

fn decision_inputs() -> Vec<EvaluationInput> {
    let mut inputs = Vec::new();
    for (tier, _) in TIERS {
        for total in TOTALS {
            inputs.push(EvaluationInput {
                lines: vec![line(1, "item", &[], total, "1")],
                customer: Some(CustomerContext {
                    customer_id: "c-1".to_owned(),
                    tier: Some(CustomerTier {
                        code: tier.to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                occurred_at: Some(ts(sale_time())),
                explain: 0,
                ..Default::default()
            });
        }
    }
    inputs
}

/// zen-engine: the same table as a JDM graph (input → decision table, first hit → output).
fn zen_decision() -> Decision {
    let mut rules = Vec::new();
    for (tier, [low, mid, high]) in TIERS {
        for (range, pct) in [("< 500", low), ("[500..1000]", mid), ("> 1000", high)] {
            rules.push(json!({
                "_id": format!("{tier}-{range}"),
                "t": format!("\"{tier}\""),
                "a": range,
                "p": pct,
            }));
        }
    }
    let graph = json!({
        "nodes": [
            { "id": "in", "name": "request", "type": "inputNode", "content": {} },
            { "id": "dt", "name": "rate", "type": "decisionTableNode", "content": {
                "hitPolicy": "first",
                "inputs": [
                    { "id": "t", "name": "Tier", "field": "tier" },
                    { "id": "a", "name": "Receipt total", "field": "total" }
                ],
                "outputs": [ { "id": "p", "name": "Percent", "field": "percent" } ],
                "rules": rules,
                "passThrough": false
            } },
            { "id": "out", "name": "response", "type": "outputNode", "content": {} }
        ],
        "edges": [
            { "id": "e1", "sourceId": "in", "targetId": "dt" },
            { "id": "e2", "sourceId": "dt", "targetId": "out" }
        ]
    });
    let content: DecisionContent = serde_json::from_value(graph).expect("a JDM graph");
    let mut decision = DecisionEngine::default()
        .create_decision(Arc::new(content))
        .expect("a graph decision");
    decision.compile();
    decision
}

fn zen_inputs() -> Vec<zen_engine::Variable> {
    let mut inputs = Vec::new();
    for (tier, _) in TIERS {
        for total in TOTALS {
            let total: f64 = total.parse().expect("a number");
            inputs.push(json!({ "tier": tier, "total": total }).into());
        }
    }
    inputs
}

fn points(result: &EvaluationResult) -> &str {
    result
        .totals
        .as_ref()
        .map(|t| t.points_accrued.as_str())
        .unwrap_or("")
}

fn main() {
    let catalog = Catalog::default();
    let now = sale_time();

    // 1. The 30-rule program and the 20-line basket.
    let program = from_yaml(PROGRAM_30).expect("the bench program parses");
    assert_eq!(program.rules.len(), 30, "the bench program has 30 rules");
    let plan = compile(&program);
    let input = input_30();
    assert_eq!(input.lines.len(), 20);
    let first = evaluate(&plan, &input, &catalog, now).expect("the basket evaluates");
    let totals = first.totals.clone().unwrap_or_default();
    let applied = first
        .explanations
        .iter()
        .filter(|e| e.outcome == kopilka_proto::rules::RuleOutcome::Applied as i32)
        .count();
    println!(
        "basket: gross {} discount {} points {} max redeem {} ({} rules applied)",
        totals.gross_amount,
        totals.discount,
        totals.points_accrued,
        totals.max_redeem_points,
        applied
    );

    // 2. The equivalent decision on both engines; check they agree before timing them.
    let dplan = compile(&decision_program());
    let dinputs = decision_inputs();
    let zen = zen_decision();
    let zinputs = zen_inputs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    for (i, (k, z)) in dinputs.iter().zip(&zinputs).enumerate() {
        let ours = evaluate(&dplan, k, &catalog, now).expect("the decision evaluates");
        let theirs = rt.block_on(zen.evaluate(z.clone())).expect("zen evaluates");
        let percent = theirs.result.to_value()["percent"].clone();
        let (tier, values) = TIERS[i / TOTALS.len()];
        let total: f64 = TOTALS[i % TOTALS.len()].parse().unwrap_or(0.0);
        let expected = if total > 1000.0 {
            values[2]
        } else if total >= 500.0 {
            values[1]
        } else {
            values[0]
        };
        assert_eq!(
            percent.to_string().trim_matches('"'),
            expected,
            "zen: {tier} {total}"
        );
        let want_points = (total * expected.parse::<f64>().unwrap_or(0.0) / 100.0).floor();
        assert_eq!(
            points(&ours).parse::<f64>().unwrap_or(-1.0),
            want_points,
            "kopilka: {tier} {total}"
        );
    }

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("kopilka/evaluate 20 lines, 30 rules", |b| {
        b.iter(|| evaluate(&plan, black_box(&input), &catalog, now))
    });
    c.bench_function("kopilka/tier x bracket", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            evaluate(
                &dplan,
                black_box(&dinputs[i % dinputs.len()]),
                &catalog,
                now,
            )
        })
    });
    c.bench_function("zen-engine/tier x bracket", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters as usize {
                    black_box(zen.evaluate(zinputs[i % zinputs.len()].clone()).await.ok());
                }
                start.elapsed()
            })
        })
    });
    c.final_summary();

    // Explicit figures (one thread = one core).
    let seconds = 3.0;
    let full = rate(seconds, |_| {
        black_box(evaluate(&plan, black_box(&input), &catalog, now).ok());
    });
    let full_allocs = allocations_per_call(10_000, |_| {
        black_box(evaluate(&plan, black_box(&input), &catalog, now).ok());
    });
    // The same basket without explanation entries (EXPLAIN_LEVEL_NONE; hints stay).
    let quiet = EvaluationInput {
        explain: kopilka_proto::rules::ExplainLevel::None as i32,
        ..input.clone()
    };
    let full_quiet = rate(seconds, |_| {
        black_box(evaluate(&plan, black_box(&quiet), &catalog, now).ok());
    });
    let quiet_allocs = allocations_per_call(10_000, |_| {
        black_box(evaluate(&plan, black_box(&quiet), &catalog, now).ok());
    });
    let ours = rate(seconds, |i| {
        black_box(
            evaluate(
                &dplan,
                black_box(&dinputs[i % dinputs.len()]),
                &catalog,
                now,
            )
            .ok(),
        );
    });
    let ours_allocs = allocations_per_call(10_000, |i| {
        black_box(
            evaluate(
                &dplan,
                black_box(&dinputs[i % dinputs.len()]),
                &catalog,
                now,
            )
            .ok(),
        );
    });
    let (theirs, theirs_allocs) = rt.block_on(async {
        let budget = Duration::from_secs_f64(seconds);
        for i in 0..1_000 {
            black_box(zen.evaluate(zinputs[i % zinputs.len()].clone()).await.ok());
        }
        let start = Instant::now();
        let mut calls = 0usize;
        while start.elapsed() < budget {
            for _ in 0..256 {
                black_box(
                    zen.evaluate(zinputs[calls % zinputs.len()].clone())
                        .await
                        .ok(),
                );
                calls += 1;
            }
        }
        let rate = calls as f64 / start.elapsed().as_secs_f64();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for i in 0..10_000 {
            black_box(zen.evaluate(zinputs[i % zinputs.len()].clone()).await.ok());
        }
        let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0;
        (rate, allocs)
    });

    println!();
    println!(
        "rules-svc evaluate: {:.0} evals/s per core (20 lines, 30 rules)",
        full
    );
    println!("allocations per evaluation: {:.0}", full_allocs);
    println!(
        "  with explain NONE: {:.0} evals/s per core, {:.0} allocations per evaluation",
        full_quiet, quiet_allocs
    );
    println!(
        "tier x bracket decision: kopilka {:.0} evals/s ({:.0} allocations each), zen-engine {:.0} evals/s ({:.0} allocations each)",
        ours, ours_allocs, theirs, theirs_allocs
    );
    println!("kopilka/zen = {:.2}", ours / theirs);
}
