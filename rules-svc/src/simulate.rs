//! Simulation totals: what a candidate program would have given on past receipts, against a
//! baseline, in total, per rule and per tier. Pure accumulation over single evaluations, so the
//! totals are exactly the sums of what `Evaluate` answers for each receipt.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use kopilka_proto::rules::{
    EffectTarget, EvaluationInput, EvaluationResult, RuleSimulation, SimulateResponse,
    SimulationError, SimulationTotals, TierSimulation,
};
use rust_decimal::Decimal;

use crate::error::Error;

fn dec(s: &str) -> Decimal {
    // Results are produced by the evaluator in canonical form; an empty field is zero.
    Decimal::from_str(s).unwrap_or(Decimal::ZERO)
}

/// Running totals of one side.
#[derive(Debug, Default, Clone)]
struct Totals {
    gross: Decimal,
    discount: Decimal,
    accrued: Decimal,
    redeemable: Decimal,
    redeemed: Decimal,
    referral: Decimal,
    receipts_affected: u64,
    customers: HashSet<String>,
}

impl Totals {
    fn add_receipt(&mut self, r: &EvaluationResult, customer: &str) {
        let Some(t) = &r.totals else {
            return;
        };
        self.gross += dec(&t.gross_amount);
        self.discount += dec(&t.discount);
        self.accrued += dec(&t.points_accrued);
        self.redeemable += dec(&t.max_redeem_points);
        self.redeemed += dec(&t.redeem_points);
        self.referral += dec(&t.referral_points);
        let affected = !(dec(&t.discount).is_zero()
            && dec(&t.points_accrued).is_zero()
            && dec(&t.referral_points).is_zero()
            && r.stamp_changes.is_empty());
        if affected {
            self.receipts_affected += 1;
            if !customer.is_empty() {
                self.customers.insert(customer.to_owned());
            }
        }
    }

    fn proto(&self, money_scale: u32, points_scale: u32) -> SimulationTotals {
        use crate::money::format;
        SimulationTotals {
            gross_amount: format(self.gross, money_scale),
            discount: format(self.discount, money_scale),
            points_accrued: format(self.accrued, points_scale),
            points_redeemable: format(self.redeemable, points_scale),
            points_redeemed: format(self.redeemed, points_scale),
            referral_points: format(self.referral, points_scale),
            receipts_affected: self.receipts_affected,
            customers_affected: self.customers.len() as u64,
        }
    }
}

/// Per-rule attribution of one side's result.
fn add_rules(
    rules: &mut BTreeMap<String, [Totals; 2]>,
    side: usize,
    r: &EvaluationResult,
    customer: &str,
) {
    let mut touched: BTreeMap<&str, (Decimal, Decimal, Decimal)> = BTreeMap::new();
    for line in &r.lines {
        for c in &line.contributions {
            let entry = touched.entry(c.rule_id.as_str()).or_default();
            let amount = dec(&c.amount);
            match EffectTarget::try_from(c.target) {
                Ok(EffectTarget::Discount) => entry.0 += amount,
                Ok(EffectTarget::Accrual) => entry.1 += amount,
                Ok(EffectTarget::Referral) => entry.2 += amount,
                _ => {}
            }
        }
    }
    for change in &r.stamp_changes {
        touched.entry(change.stamp_card_id.as_str()).or_default();
    }
    for (rule, (discount, accrued, referral)) in touched {
        let t = &mut rules.entry(rule.to_owned()).or_default()[side];
        t.discount += discount;
        t.accrued += accrued;
        t.referral += referral;
        t.receipts_affected += 1;
        if !customer.is_empty() {
            t.customers.insert(customer.to_owned());
        }
    }
}

/// A simulation in progress.
#[derive(Debug)]
pub struct Simulation {
    max_errors: usize,
    receipts: u64,
    failed: u64,
    errors: Vec<SimulationError>,
    sides: [Totals; 2],
    rules: BTreeMap<String, [Totals; 2]>,
    names: BTreeMap<String, String>,
    tiers: BTreeMap<String, [Totals; 2]>,
    money_scale: u32,
    points_scale: u32,
}

impl Simulation {
    /// `max_errors` failures are reported in detail (0 = the default 10, at most 100); names
    /// are the rule names of both programs (candidate first).
    pub fn new(
        max_errors: u32,
        names: impl IntoIterator<Item = (String, String)>,
        money_scale: u32,
        points_scale: u32,
    ) -> Self {
        let mut map = BTreeMap::new();
        for (id, name) in names {
            map.entry(id).or_insert(name);
        }
        Simulation {
            max_errors: if max_errors == 0 {
                10
            } else {
                max_errors.min(100) as usize
            },
            receipts: 0,
            failed: 0,
            errors: Vec::new(),
            sides: Default::default(),
            rules: BTreeMap::new(),
            names: map,
            tiers: BTreeMap::new(),
            money_scale,
            points_scale,
        }
    }

    /// Names a rule (of a baseline version met along the way).
    pub fn name(&mut self, id: &str, name: &str) {
        if !self.names.contains_key(id) {
            self.names.insert(id.to_owned(), name.to_owned());
        }
    }

    /// Adds one receipt's two evaluations; a failure on either side counts the receipt as
    /// failed and leaves the totals alone.
    pub fn add(
        &mut self,
        receipt_id: &str,
        input: &EvaluationInput,
        candidate: Result<EvaluationResult, Error>,
        baseline: Result<EvaluationResult, Error>,
    ) {
        self.receipts += 1;
        let (candidate, baseline) = match (candidate, baseline) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(e), _) | (_, Err(e)) => {
                self.failed += 1;
                if self.errors.len() < self.max_errors {
                    let status = tonic::Status::from(e);
                    self.errors.push(SimulationError {
                        receipt_id: receipt_id.to_owned(),
                        reason: kopilka_runtime::status::reason_of(&status)
                            .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase()),
                        message: status.message().to_owned(),
                    });
                }
                return;
            }
        };
        let customer = input
            .customer
            .as_ref()
            .map_or("", |c| c.customer_id.as_str());
        let tier = input
            .customer
            .as_ref()
            .and_then(|c| c.tier.as_ref())
            .map_or(String::new(), |t| t.code.clone());
        for (side, result) in [&candidate, &baseline].into_iter().enumerate() {
            self.sides[side].add_receipt(result, customer);
            self.tiers.entry(tier.clone()).or_default()[side].add_receipt(result, customer);
            add_rules(&mut self.rules, side, result, customer);
        }
    }

    /// The answer.
    pub fn finish(self, candidate_version: u64) -> SimulateResponse {
        let (m, p) = (self.money_scale, self.points_scale);
        SimulateResponse {
            receipts: self.receipts,
            receipts_failed: self.failed,
            errors: self.errors,
            candidate: Some(self.sides[0].proto(m, p)),
            baseline: Some(self.sides[1].proto(m, p)),
            rules: self
                .names
                .iter()
                .map(|(id, name)| {
                    let sides = self.rules.get(id).cloned().unwrap_or_default();
                    RuleSimulation {
                        rule_id: id.clone(),
                        rule_name: name.clone(),
                        candidate: Some(sides[0].proto(m, p)),
                        baseline: Some(sides[1].proto(m, p)),
                    }
                })
                .collect(),
            tiers: self
                .tiers
                .into_iter()
                .map(|(code, sides)| TierSimulation {
                    tier_code: code,
                    candidate: Some(sides[0].proto(m, p)),
                    baseline: Some(sides[1].proto(m, p)),
                })
                .collect(),
            candidate_version,
        }
    }
}
