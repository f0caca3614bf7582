//! Fuzzing the program parser, validation, compilation and evaluation: nothing may panic, on
//! any document or basket. The seed corpus is small and in the repo — the ready-made programs
//! (`rules-svc/programs`) and edge cases (`rules-svc/fuzz/corpus`: every effect at once, odd
//! values at the limits, an invalid document). Proptest mutates the seeds (token swaps, byte
//! edits, truncation) and throws hostile baskets at them; every document that parses is
//! validated, compiled and evaluated. A failure prints the minimal input; add it to the corpus.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use kopilka_proto::rules::{CustomerContext, CustomerTier, EvaluationInput, ExplainLevel};
use kopilka_proto::types::{BasketLine, Date, PurchaseAggregates, StampBalance};
use kopilka_proto::wkt::Timestamp;
use proptest::prelude::*;
use rules_svc::catalog::Catalog;
use rules_svc::document::from_yaml;
use rules_svc::evaluate::{evaluate, evaluate_with, Redemption};
use rules_svc::plan::Plan;
use rules_svc::validate::{validate, Known};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn corpus() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["programs", "fuzz/corpus"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("corpus directory") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort();
    assert!(files.len() >= 7, "the corpus is in the repo");
    files
}

/// Values a mutation may put in place of a token.
const TOKENS: &[&str] = &[
    "\"0\"",
    "\"-1\"",
    "\"100\"",
    "\"101\"",
    "\"1e9\"",
    "\"99999999999999\"",
    "\"0.00001\"",
    "\"\"",
    "\"24:00\"",
    "\"25:61\"",
    "0",
    "4294967295",
    "-2147483648",
    "[]",
    "{}",
    "null",
    "ROUNDING_UP",
    "PER_UNIT",
    "PER_LINE",
    "BRACKET_BASIS_WINDOW_TURNOVER",
    "GROUP_MODE_FIRST",
    "\"١٢\"",
    "true",
    "x",
];

fn mutate(seed: &str, edits: &[(usize, usize, u8)]) -> String {
    let mut words: Vec<String> = seed
        .split_inclusive([' ', ',', '{', '}', '[', ']', ':', '\n'])
        .map(str::to_owned)
        .collect();
    for &(at, token, byte) in edits {
        if words.is_empty() {
            break;
        }
        let i = at % words.len();
        match byte % 4 {
            0 => words[i] = format!("{} ", TOKENS[token % TOKENS.len()]),
            1 => {
                words.remove(i);
            }
            2 => {
                let dup = words[i].clone();
                words.insert(i, dup);
            }
            _ => words[i].push(char::from(byte.clamp(32, 126))),
        }
    }
    words.concat()
}

fn line(id: &str, price: &str, quantity: &str, categories: &[&str], weighted: bool) -> BasketLine {
    BasketLine {
        line_id: id.into(),
        product_id: format!("p-{id}"),
        category_ids: categories.iter().map(|c| c.to_string()).collect(),
        unit_price: price.into(),
        quantity: quantity.into(),
        weighted,
        ..Default::default()
    }
}

fn baskets() -> Vec<EvaluationInput> {
    let at = Some(Timestamp {
        seconds: Utc
            .with_ymd_and_hms(2026, 2, 28, 21, 30, 0)
            .unwrap()
            .timestamp(),
        nanos: 0,
    });
    let member = CustomerContext {
        customer_id: "c".into(),
        tier: Some(CustomerTier {
            code: "GOLD".into(),
            rank: 1,
            accrual_percent: "100".into(),
            discount_percent: "100".into(),
            max_redeem_share_percent: "0".into(),
        }),
        birth_date: Some(Date {
            year: 0,
            month: 2,
            day: 29,
        }),
        aggregates: Some(PurchaseAggregates {
            lifetime_turnover: "999999999".into(),
            purchase_count: u64::MAX,
            ..Default::default()
        }),
        stamps: vec![StampBalance {
            stamp_card_id: "st".into(),
            count: u32::MAX,
        }],
        referrer_customer_ids: vec![String::new(), "r2".into(), "r3".into()],
        available_points: "999999999999".into(),
        ..Default::default()
    };
    let lines = vec![
        line("1", "1000000000", "100000", &["sale", "coffee"], false),
        line("2", "0", "0.001", &[], true),
        line("3", "0.01", "3", &["pizza", "accessories"], false),
        line("4", "333.33", "7.5", &["coffee"], true),
    ];
    vec![
        EvaluationInput {
            lines: lines.clone(),
            occurred_at: at,
            explain: ExplainLevel::Full as i32,
            ..Default::default()
        },
        EvaluationInput {
            lines,
            customer: Some(member),
            occurred_at: at,
            promo_codes: vec!["summer".into(), "ВЕСНА".into()],
            redeem_points: "999999999999".into(),
            explain: ExplainLevel::Full as i32,
            ..Default::default()
        },
    ]
}

/// Parse → validate → compile → evaluate; every step may refuse, none may panic.
fn exercise(text: &str) {
    let Ok(program) = from_yaml(text) else {
        return;
    };
    let tiers = vec!["GOLD".to_owned(), "NEW".to_owned()];
    let catalog = Catalog::new([("coffee".to_owned(), "drinks".to_owned())]);
    let report = validate(
        &program,
        &Known {
            tier_codes: Some(&tiers),
            catalog: Some(&catalog),
        },
    );
    let _ = report.is_valid();
    let Ok(plan) = Plan::compile(&program, 1) else {
        return;
    };
    let now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    for input in baskets() {
        let _ = evaluate(&plan, &input, &catalog, now);
        if let Ok(result) = evaluate_with(&plan, &input, &catalog, now, Redemption::Cap) {
            assert_eq!(result.lines.len(), input.lines.len());
        }
    }
}

#[test]
fn the_corpus_parses_validates_compiles_and_evaluates() {
    for (path, text) in corpus() {
        let program = from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy();
        let report = validate(
            &program,
            &Known {
                tier_codes: None,
                catalog: None,
            },
        );
        assert_eq!(
            report.is_valid(),
            name != "invalid.yaml",
            "{name}: {:?}",
            report.errors()
        );
        exercise(&text);
    }
}

proptest! {
    // PROPTEST_CASES raises the count for a long session.
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn mutated_programs_never_panic(
        seed in 0usize..64,
        edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<usize>()),
    ) {
        let corpus = corpus();
        let (_, text) = &corpus[seed % corpus.len()];
        let mut mutated = mutate(text, &edits);
        if let Some(cut) = cut {
            let at = cut % (mutated.len() + 1);
            let at = (0..=at).rev().find(|i| mutated.is_char_boundary(*i)).unwrap_or(0);
            mutated.truncate(at);
        }
        exercise(&mutated);
    }

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in ".{0,400}") {
        exercise(&text);
    }

    #[test]
    fn hostile_baskets_never_panic(
        seed in 0usize..64,
        price in "[-0-9.e١]{0,20}",
        quantity in "[-0-9.]{0,12}",
        amount in "[0-9.]{0,12}",
        redeem in "[0-9.]{0,16}",
        zone in "(|UTC|Europe/Moscow|Nowhere)",
        seconds in any::<i64>(),
    ) {
        let corpus = corpus();
        let (_, text) = &corpus[seed % corpus.len()];
        let Ok(program) = from_yaml(text) else { return Ok(()) };
        let Ok(plan) = Plan::compile(&program, 1) else { return Ok(()) };
        let mut input = baskets().pop().unwrap();
        input.lines[0].unit_price = price;
        input.lines[1].quantity = quantity;
        input.lines[2].amount = amount;
        input.redeem_points = redeem;
        input.time_zone = zone;
        input.occurred_at = Some(Timestamp { seconds, nanos: 0 });
        let _ = evaluate(&plan, &input, &Catalog::default(), Utc::now());
    }
}
