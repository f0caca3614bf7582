//! Evaluating one receipt against a compiled plan: a pure function of (plan, basket, customer
//! context, time). The order is the one `program.proto` documents:
//!
//! 1. conditions and scopes of every rule, then groups pick their winners;
//! 2. exclusions; 3. discounts by priority (N for M, every Nth item, stamp cards included);
//! 4. the most payable with points per line and in total; 5. accrual (multipliers last) and
//!    referral rewards; 6. lots, hints and explanations.
//!
//! Receipt-level amounts are rounded once and spread over lines by largest remainder, so lines
//! always add up to the totals. Nothing here panics on any input: amounts are bounded by the
//! input checks ([`input`]) and arithmetic beyond them saturates.

mod conditions;
mod explain;
pub mod input;

use chrono::{DateTime, Utc};
use kopilka_proto::rules::{BracketBasis, EffectTarget, EvaluationInput, EvaluationResult};
use kopilka_runtime::status::Refusal;
use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::context;
use crate::error::Error;
use crate::money::{allocate, allocate_capped, unit, MAX_AMOUNT};
use crate::plan::{BracketValue, Brackets, Effect, LevelValue, Plan, Rule, StampReward, Target};

pub use conditions::in_birthday_window;
use conditions::Failure;
use input::Receipt;

/// How an evaluation treats a requested redemption above the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redemption {
    /// FAILED_PRECONDITION (checkout).
    #[default]
    Refuse,
    /// Lower it to the maximum (simulating past receipts under a new program).
    Cap,
}

/// Evaluates `input` under `plan`; `now` is the sale time when the input has none (and the
/// reference for "at most 5 minutes in the future").
pub fn evaluate(
    plan: &Plan,
    input: &EvaluationInput,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<EvaluationResult, Error> {
    evaluate_with(plan, input, catalog, now, Redemption::Refuse)
}

/// [`evaluate`] with a choice of what a too-large redemption does.
pub fn evaluate_with(
    plan: &Plan,
    input: &EvaluationInput,
    catalog: &Catalog,
    now: DateTime<Utc>,
    redemption: Redemption,
) -> Result<EvaluationResult, Error> {
    let receipt = Receipt::read(plan, input, catalog, now)?;
    let mut e = Evaluation::new(plan, &receipt);
    e.select();
    e.exclusions();
    e.discounts();
    e.redemption(redemption)?;
    e.accruals();
    Ok(explain::result(&e))
}

/// Why a rule did or did not apply.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Still to be decided by its phase.
    Eligible,
    Applied,
    Failed(Failure),
    /// Below the first bracket of a bracket table (`missing` to reach it).
    BelowBrackets(Option<Decimal>),
    OutOfScope,
    Lost(usize),
    Stopped(usize),
    Capped,
    Disabled,
    Anonymous,
    /// Action rules: not evaluated on receipts.
    NotForReceipts,
}

/// One rule's state during an evaluation.
#[derive(Debug, Clone)]
struct RuleRun {
    outcome: Outcome,
    /// Indexes of the lines in scope.
    lines: Vec<usize>,
    /// Total effect (money for discounts, points otherwise).
    amount: Decimal,
    /// Bracket chosen, for explanations and hints.
    bracket: Option<usize>,
    /// The basis a bracket table was looked up with.
    basis: Decimal,
    /// Units towards the next N-for-M / Nth-item group (hint).
    one_more: bool,
    /// Stamp card: (earned, consumed, balance after).
    stamps: Option<(u32, u32, u32)>,
}

impl RuleRun {
    /// A rule that takes no part (in a standalone valuation of another rule).
    fn idle() -> Self {
        RuleRun {
            outcome: Outcome::Disabled,
            lines: Vec::new(),
            amount: Decimal::ZERO,
            bracket: None,
            basis: Decimal::ZERO,
            one_more: false,
            stamps: None,
        }
    }
}

/// What happened to one line.
#[derive(Debug, Clone, Default)]
struct LineRun {
    discount: Decimal,
    ex_discount: bool,
    ex_accrual: bool,
    ex_redemption: bool,
    /// Rule (plan index) that stopped further rules of a target on this line.
    stop_discount: Option<usize>,
    stop_accrual: Option<usize>,
    stop_redemption: Option<usize>,
    max_redeem: Decimal,
    redeem: Decimal,
    redeem_money: Decimal,
    accrual: Decimal,
    /// (rule plan index, target, amount)
    contributions: Vec<(usize, EffectTarget, Decimal)>,
}

/// A referral reward to one referrer.
#[derive(Debug, Clone)]
struct ReferralRun {
    rule: usize,
    level: u32,
    customer_id: String,
    points: Decimal,
}

/// The state of one evaluation.
struct Evaluation<'p, 'r> {
    plan: &'p Plan,
    r: &'r Receipt<'r>,
    rules: Vec<RuleRun>,
    lines: Vec<LineRun>,
    referrals: Vec<ReferralRun>,
    /// Points rewards of stamp cards, booked in the accrual phase: (rule, line, points), one
    /// entry per rewarded line.
    stamp_points: Vec<(usize, usize, Decimal)>,
    total_max_redeem: Decimal,
    money_unit: Decimal,
}

/// One hundredth: multiplying by it is exact and much cheaper than dividing by 100.
const HUNDREDTH: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

fn pct(amount: Decimal, percent: Decimal) -> Decimal {
    amount
        .checked_mul(percent)
        .and_then(|v| v.checked_mul(HUNDREDTH))
        .unwrap_or(Decimal::ZERO)
}

/// `count` whole units of one line (`k`: its index in the rule's lines) at `price` each.
#[derive(Debug, Clone, Copy, PartialEq)]
struct UnitRun {
    k: usize,
    price: Decimal,
    count: u64,
}

/// `amount` x `count`, saturating (inputs keep it far below the limit).
fn times(amount: Decimal, count: u64) -> Decimal {
    amount
        .checked_mul(Decimal::from(count))
        .unwrap_or(MAX_AMOUNT)
}

impl<'p, 'r> Evaluation<'p, 'r> {
    fn new(plan: &'p Plan, r: &'r Receipt<'r>) -> Self {
        Evaluation {
            plan,
            r,
            rules: Vec::with_capacity(plan.rules.len()),
            lines: vec![LineRun::default(); r.lines.len()],
            referrals: Vec::new(),
            stamp_points: Vec::new(),
            total_max_redeem: Decimal::ZERO,
            money_unit: unit(plan.settings().money_scale),
        }
    }

    /// The program's settings, borrowed from the plan (not from `self`, so `&mut self` calls
    /// stay possible while they are in use).
    fn settings(&self) -> &'p crate::settings::Settings {
        self.plan.settings()
    }

    fn anonymous(&self) -> bool {
        self.r.customer.is_none()
    }

    /// Conditions, scope and groups: which rules are eligible.
    fn select(&mut self) {
        for rule in &self.plan.rules {
            let lines: Vec<usize> = self
                .r
                .lines
                .iter()
                .enumerate()
                .filter(|(_, l)| rule.scope.matches(l.product, &l.categories))
                .map(|(i, _)| i)
                .collect();
            let outcome = if rule.disabled {
                Outcome::Disabled
            } else if rule.effect == Effect::Action {
                Outcome::NotForReceipts
            } else if self.anonymous()
                && (!rule.when.include_anonymous
                    || rule.effect.target() != Target::Discount
                    || matches!(rule.effect, Effect::Stamp { .. } | Effect::TierRates { .. }))
            {
                Outcome::Anonymous
            } else if let Err(f) = conditions::check(&rule.when, self.r, self.money_unit) {
                Outcome::Failed(f)
            } else if lines.is_empty() {
                Outcome::OutOfScope
            } else {
                Outcome::Eligible
            };
            self.rules.push(RuleRun {
                outcome,
                lines,
                amount: Decimal::ZERO,
                bracket: None,
                basis: Decimal::ZERO,
                one_more: false,
                stamps: None,
            });
        }
        self.resolve_groups();
    }

    /// Rules of a group compete: FIRST keeps the highest-priority eligible one, BEST the one
    /// worth most to the customer on this receipt alone (discount plus points at their money
    /// value; ties go to priority).
    fn resolve_groups(&mut self) {
        for (g, group) in self.plan.groups.iter().enumerate() {
            let members: Vec<usize> = (0..self.plan.rules.len())
                .filter(|&i| {
                    self.plan.rules[i].group == Some(g)
                        && self.rules[i].outcome == Outcome::Eligible
                })
                .collect();
            if members.len() < 2 {
                continue;
            }
            let winner = if group.first {
                members[0]
            } else {
                let mut best = members[0];
                let mut best_value = self.standalone_value(best);
                for &m in &members[1..] {
                    let v = self.standalone_value(m);
                    if v > best_value {
                        best = m;
                        best_value = v;
                    }
                }
                best
            };
            for m in members {
                if m != winner {
                    self.rules[m].outcome = Outcome::Lost(winner);
                }
            }
        }
    }

    /// What a rule alone would give on this receipt (money), for BEST groups.
    fn standalone_value(&self, i: usize) -> Decimal {
        let mut scratch = Evaluation {
            plan: self.plan,
            r: self.r,
            // Only rule `i` acts; the others need no line lists.
            rules: self
                .rules
                .iter()
                .enumerate()
                .map(
                    |(j, run)| {
                        if j == i {
                            run.clone()
                        } else {
                            RuleRun::idle()
                        }
                    },
                )
                .collect(),
            lines: vec![LineRun::default(); self.lines.len()],
            referrals: Vec::new(),
            stamp_points: Vec::new(),
            total_max_redeem: Decimal::ZERO,
            money_unit: self.money_unit,
        };
        let rule = &self.plan.rules[i];
        match rule.effect.target() {
            Target::Discount => {
                scratch.apply_discount(i);
                scratch.lines.iter().map(|l| l.discount).sum()
            }
            Target::Accrual => {
                scratch.apply_accrual(i);
                let points: Decimal = scratch.lines.iter().map(|l| l.accrual).sum::<Decimal>()
                    + scratch.stamp_points.iter().map(|s| s.2).sum::<Decimal>();
                points * self.plan.settings().point_value
            }
            Target::Referral => {
                scratch.apply_referral(i);
                scratch.referrals.iter().map(|r| r.points).sum::<Decimal>()
                    * self.plan.settings().point_value
            }
            _ => Decimal::ZERO,
        }
    }

    /// Whether rule `i` may still act: eligible, or tier rates that acted in an earlier phase
    /// (they touch discount, redemption and accrual).
    fn eligible(&self, i: usize) -> bool {
        match self.rules[i].outcome {
            Outcome::Eligible => true,
            Outcome::Applied | Outcome::Capped => {
                matches!(self.plan.rules[i].effect, Effect::TierRates { .. })
            }
            _ => false,
        }
    }

    fn exclusions(&mut self) {
        for i in 0..self.plan.rules.len() {
            if let (
                true,
                Effect::Exclude {
                    discount,
                    accrual,
                    redemption,
                },
            ) = (self.eligible(i), &self.plan.rules[i].effect)
            {
                for &l in &self.rules[i].lines {
                    let line = &mut self.lines[l];
                    line.ex_discount |= discount;
                    line.ex_accrual |= accrual;
                    line.ex_redemption |= redemption;
                }
                self.rules[i].outcome = Outcome::Applied;
            }
        }
    }

    /// Lines of rule `i` a rule of `target` may still act on; marks the rule STOPPED when a
    /// higher-priority rule stopped all of them.
    fn open_lines(&mut self, i: usize, target: Target) -> Vec<usize> {
        let skip_discounted = self.plan.rules[i].scope.skip_discounted;
        let mut stopped_by = None;
        let open: Vec<usize> = self.rules[i]
            .lines
            .iter()
            .copied()
            .filter(|&l| {
                let line = &self.lines[l];
                let (excluded, stop) = match target {
                    Target::Discount => (line.ex_discount, line.stop_discount),
                    Target::Accrual | Target::Referral => (line.ex_accrual, line.stop_accrual),
                    Target::Redemption => (line.ex_redemption, line.stop_redemption),
                    _ => (false, None),
                };
                if stop.is_some() {
                    stopped_by = stop;
                }
                !excluded && stop.is_none() && (!skip_discounted || line.discount.is_zero())
            })
            .collect();
        if open.is_empty() {
            self.rules[i].outcome = match stopped_by {
                Some(by) => Outcome::Stopped(by),
                None => Outcome::Capped,
            };
        }
        open
    }

    fn mark_stop(&mut self, i: usize, target: Target, lines: &[usize]) {
        if !self.plan.rules[i].stop {
            return;
        }
        for &l in lines {
            let line = &mut self.lines[l];
            let slot = match target {
                Target::Discount => &mut line.stop_discount,
                Target::Accrual | Target::Referral => &mut line.stop_accrual,
                Target::Redemption => &mut line.stop_redemption,
                _ => continue,
            };
            slot.get_or_insert(i);
        }
    }

    /// Records per-line amounts of rule `i` and its outcome.
    fn book(&mut self, i: usize, target: EffectTarget, lines: &[usize], amounts: &[Decimal]) {
        let mut total = Decimal::ZERO;
        for (&l, &a) in lines.iter().zip(amounts) {
            if a.is_zero() {
                continue;
            }
            let line = &mut self.lines[l];
            match target {
                EffectTarget::Discount => line.discount += a,
                EffectTarget::Accrual => line.accrual += a,
                _ => {}
            }
            line.contributions.push((i, target, a));
            total += a;
        }
        let run = &mut self.rules[i];
        run.amount += total;
        if total.is_zero() {
            if run.outcome == Outcome::Eligible {
                run.outcome = Outcome::Capped;
            }
        } else {
            run.outcome = Outcome::Applied;
        }
    }

    /// The basis a bracket table is looked up with.
    fn bracket_basis(&self, i: usize, t: &Brackets) -> Decimal {
        let aggregates = context::aggregates(self.r.customer);
        match t.basis {
            BracketBasis::ScopeTotal => self.rules[i]
                .lines
                .iter()
                .map(|&l| self.r.lines[l].gross)
                .sum(),
            BracketBasis::WindowTurnover => t
                .lookback
                .as_ref()
                .and_then(|l| context::window_turnover(aggregates, l))
                .unwrap_or(Decimal::ZERO),
            BracketBasis::LifetimeTurnover => context::lifetime_turnover(aggregates),
            _ => self.r.total,
        }
    }

    /// Looks up the bracket; `None` (and the rule marked) when below the first one.
    fn bracket(&mut self, i: usize, t: &Brackets) -> Option<BracketValue> {
        let basis = self.bracket_basis(i, t);
        self.rules[i].basis = basis;
        match t.find(basis) {
            Some(b) => {
                self.rules[i].bracket = Some(b);
                Some(t.brackets[b].value)
            }
            None => {
                let missing = t.brackets.first().map(|b| {
                    let target = if b.inclusive {
                        b.lower
                    } else {
                        b.lower + self.money_unit
                    };
                    target - basis
                });
                self.rules[i].outcome = Outcome::BelowBrackets(missing);
                None
            }
        }
    }

    // ---- discounts ----

    fn discounts(&mut self) {
        for i in 0..self.plan.rules.len() {
            if self.eligible(i) {
                self.apply_discount(i);
            }
        }
    }

    /// Room left for discount on a line under `max_discount_percent`.
    fn room(&self, l: usize) -> Decimal {
        let s = self.settings();
        let gross = self.r.lines[l].gross;
        let cap = if s.max_discount_percent == Decimal::ONE_HUNDRED {
            gross
        } else {
            s.round_money(pct(gross, s.max_discount_percent)).min(gross)
        };
        (cap - self.lines[l].discount).max(Decimal::ZERO)
    }

    fn apply_discount(&mut self, i: usize) {
        let plan = self.plan;
        let rule: &Rule = &plan.rules[i];
        let effect = match &rule.effect {
            Effect::TierRates { discount: true, .. } => {
                match self.r.tier.as_ref().and_then(|t| t.discount) {
                    Some(p) if p > Decimal::ZERO => Effect::DiscountPercent {
                        percent: p,
                        max: None,
                    },
                    _ => return,
                }
            }
            e if e.target() == Target::Discount => e.clone(),
            _ => return,
        };
        let lines = self.open_lines(i, Target::Discount);
        if lines.is_empty() {
            return;
        }
        let amounts = match effect {
            Effect::DiscountPercent { percent, max } => self.percent_discount(&lines, percent, max),
            Effect::DiscountFixed { amount, per } => self.fixed_discount(&lines, amount, per),
            Effect::DiscountBrackets(ref t) => match self.bracket(i, t) {
                Some(BracketValue::Percent(p)) => self.percent_discount(&lines, p, None),
                Some(BracketValue::Fixed(a)) => {
                    self.fixed_discount(&lines, a, crate::plan::PerKind::Receipt)
                }
                None => return,
            },
            Effect::NForM {
                buy,
                pay,
                max_times,
            } => self.n_for_m(i, &lines, buy, pay, max_times),
            Effect::NthItem {
                every,
                percent,
                max_times,
            } => self.nth_item(i, &lines, every, percent, max_times),
            Effect::Stamp {
                every,
                per_receipt,
                reward,
            } => self.stamp_card(i, &lines, every, per_receipt, reward),
            _ => return,
        };
        self.book(i, EffectTarget::Discount, &lines, &amounts);
        if self.rules[i]
            .stamps
            .is_some_and(|(earned, _, _)| earned > 0)
            && self.rules[i].outcome == Outcome::Capped
        {
            // Stamps were earned though no reward was due: the rule still applied.
            self.rules[i].outcome = Outcome::Applied;
        }
        if self.rules[i].outcome == Outcome::Applied {
            self.mark_stop(i, Target::Discount, &lines);
        }
    }

    fn percent_discount(
        &self,
        lines: &[usize],
        percent: Decimal,
        max: Option<Decimal>,
    ) -> Vec<Decimal> {
        let s = self.settings();
        let bases: Vec<Decimal> = lines
            .iter()
            .map(|&l| {
                let gross = self.r.lines[l].gross;
                if s.sequential_discounts {
                    gross - self.lines[l].discount
                } else {
                    gross
                }
            })
            .collect();
        let mut total = s.round_money(pct(bases.iter().sum(), percent));
        if let Some(max) = max {
            total = total.min(max);
        }
        let rooms: Vec<Decimal> = lines.iter().map(|&l| self.room(l)).collect();
        allocate_capped(total, &bases, &rooms, s.money_scale)
    }

    fn fixed_discount(
        &self,
        lines: &[usize],
        amount: Decimal,
        per: crate::plan::PerKind,
    ) -> Vec<Decimal> {
        use crate::plan::PerKind;
        let s = self.settings();
        let rooms: Vec<Decimal> = lines.iter().map(|&l| self.room(l)).collect();
        match per {
            PerKind::Receipt => {
                let weights: Vec<Decimal> = lines
                    .iter()
                    .map(|&l| self.r.lines[l].gross - self.lines[l].discount)
                    .collect();
                allocate_capped(amount, &weights, &rooms, s.money_scale)
            }
            PerKind::Line => rooms.iter().map(|room| amount.min(*room)).collect(),
            PerKind::Unit => lines
                .iter()
                .zip(&rooms)
                .map(|(&l, room)| (amount * Decimal::from(self.r.lines[l].units())).min(*room))
                .collect(),
        }
    }

    /// A line's price per whole unit for unit mechanics, on the money scale: a register amount
    /// below price x quantity lowers it.
    fn unit_price(&self, l: usize) -> Decimal {
        let line = &self.r.lines[l];
        match line.gross.checked_div(line.quantity) {
            Some(per_unit) => line.unit_price.min(self.settings().round_money(per_unit)),
            None => Decimal::ZERO,
        }
    }

    /// The whole units of the lines as runs, dearest first (ties: line order), so that laying
    /// the runs end to end gives every unit in the order unit mechanics count them.
    fn unit_runs(&self, lines: &[usize]) -> Vec<UnitRun> {
        let mut runs: Vec<UnitRun> = lines
            .iter()
            .enumerate()
            .filter(|(_, &l)| self.r.lines[l].units() > 0)
            .map(|(k, &l)| UnitRun {
                k,
                price: self.unit_price(l),
                count: u64::from(self.r.lines[l].units()),
            })
            .collect();
        // Stable: equal prices keep line order.
        runs.sort_by_key(|r| std::cmp::Reverse(r.price));
        runs
    }

    fn cap_to_rooms(&self, lines: &[usize], mut amounts: Vec<Decimal>) -> Vec<Decimal> {
        for (k, &l) in lines.iter().enumerate() {
            amounts[k] = amounts[k].min(self.room(l));
        }
        amounts
    }

    /// Groups of `buy` units, dearest first; the cheapest `buy - pay` of each are free.
    fn n_for_m(
        &mut self,
        i: usize,
        lines: &[usize],
        buy: u32,
        pay: u32,
        max_times: u32,
    ) -> Vec<Decimal> {
        let runs = self.unit_runs(lines);
        let units: u64 = runs.iter().map(|r| r.count).sum();
        let (buy, pay) = (u64::from(buy), u64::from(pay));
        let mut groups = units / buy;
        if max_times > 0 {
            groups = groups.min(u64::from(max_times));
        }
        // Free units among the first `n`: positions `pay..buy` of each group counted so far.
        let free_before = |n: u64| {
            let n = n.min(groups * buy);
            n / buy * (buy - pay) + (n % buy).saturating_sub(pay)
        };
        let mut amounts = vec![Decimal::ZERO; lines.len()];
        let mut start = 0;
        for r in &runs {
            let end = start + r.count;
            amounts[r.k] += times(r.price, free_before(end) - free_before(start));
            start = end;
        }
        self.rules[i].one_more =
            units % buy == buy - 1 && (max_times == 0 || groups < u64::from(max_times));
        if groups == 0 {
            self.rules[i].outcome = Outcome::Failed(Failure {
                field: "n_for_m.buy",
                missing: None,
                bound: None,
            });
        }
        self.cap_to_rooms(lines, amounts)
    }

    /// Every `every`-th unit, dearest first, `percent` off (each unit's discount rounded).
    fn nth_item(
        &mut self,
        i: usize,
        lines: &[usize],
        every: u32,
        percent: Decimal,
        max_times: u32,
    ) -> Vec<Decimal> {
        let s = self.settings();
        let runs = self.unit_runs(lines);
        let units: u64 = runs.iter().map(|r| r.count).sum();
        let every = u64::from(every);
        let mut given = units / every;
        if max_times > 0 {
            given = given.min(u64::from(max_times));
        }
        // Rewarded units among the first `n`: positions every - 1, 2 x every - 1, ..., `given` in
        // all.
        let given_before = |n: u64| (n / every).min(given);
        let mut amounts = vec![Decimal::ZERO; lines.len()];
        let mut start = 0;
        for r in &runs {
            let end = start + r.count;
            let rewarded = given_before(end) - given_before(start);
            if rewarded > 0 {
                amounts[r.k] += times(s.round_money(pct(r.price, percent)), rewarded);
            }
            start = end;
        }
        self.rules[i].one_more =
            units % every == every - 1 && (max_times == 0 || given < u64::from(max_times));
        if given == 0 {
            self.rules[i].outcome = Outcome::Failed(Failure {
                field: "nth_item.every",
                missing: None,
                bound: None,
            });
        }
        self.cap_to_rooms(lines, amounts)
    }

    /// Stamps: the `every`-th qualifying unit (counting the customer's stamps first) is the
    /// reward; the cheapest units of the receipt are rewarded first.
    fn stamp_card(
        &mut self,
        i: usize,
        lines: &[usize],
        every: u32,
        per_receipt: bool,
        reward: StampReward,
    ) -> Vec<Decimal> {
        let plan = self.plan;
        let s = plan.settings();
        let rule_id = &plan.rules[i].id;
        let balance = self
            .r
            .customer
            .and_then(|c| c.stamps.iter().find(|x| &x.stamp_card_id == rule_id))
            .map_or(0, |x| x.count);
        let mut runs = self.unit_runs(lines);
        // Cheapest first; equal prices in reverse line order, as the reversed unit list had.
        runs.reverse();
        if per_receipt {
            // One stamp per visit; the reward is the visit's cheapest unit (or line).
            let cheapest = runs
                .first()
                .map(|r| UnitRun { count: 1, ..*r })
                .or_else(|| {
                    lines
                        .iter()
                        .enumerate()
                        .min_by(|a, b| self.r.lines[*a.1].gross.cmp(&self.r.lines[*b.1].gross))
                        .map(|(k, &l)| UnitRun {
                            k,
                            price: self.r.lines[l].gross,
                            count: 1,
                        })
                });
            runs = cheapest.into_iter().collect();
        }
        let qualifying =
            u32::try_from(runs.iter().map(|r| r.count).sum::<u64>()).unwrap_or(u32::MAX);
        let rewards = (balance.saturating_add(qualifying)) / every;
        let rewards = rewards.min(qualifying);
        let after = balance
            .saturating_add(qualifying)
            .saturating_sub(rewards * every);
        self.rules[i].stamps = Some((qualifying - rewards, rewards * (every - 1), after));
        let mut amounts = vec![Decimal::ZERO; lines.len()];
        let mut left = u64::from(rewards);
        for r in &runs {
            if left == 0 {
                break;
            }
            let n = r.count.min(left);
            left -= n;
            match reward {
                StampReward::Percent(p) => {
                    amounts[r.k] += times(s.round_money(pct(r.price, p)), n);
                }
                // One entry per line, not per unit: the points of its `n` rewards.
                StampReward::Points(points) => {
                    let points = times(s.round_points(points), n);
                    self.stamp_points.push((i, lines[r.k], points));
                }
            }
        }
        self.cap_to_rooms(lines, amounts)
    }

    // ---- redemption ----

    fn redemption(&mut self, mode: Redemption) -> Result<(), Error> {
        let s = self.settings();
        let n = self.lines.len();
        if self.anonymous() {
            return Ok(());
        }
        // Share caps per line (percent), the strictest wins.
        let mut share = vec![s.max_redeem_share_percent; n];
        let mut point_caps: Vec<(usize, Vec<usize>, Decimal)> = Vec::new();
        for i in 0..self.plan.rules.len() {
            if !self.eligible(i) {
                continue;
            }
            let (limit, max_points) = match &self.plan.rules[i].effect {
                Effect::RedemptionLimit { share, max_points } => (*share, *max_points),
                Effect::TierRates {
                    redemption: true, ..
                } => match self.r.tier.as_ref().and_then(|t| t.share) {
                    Some(p) => (Some(p), None),
                    None => continue,
                },
                _ => continue,
            };
            let lines = self.open_lines(i, Target::Redemption);
            if lines.is_empty() {
                continue;
            }
            if let Some(limit) = limit {
                for &l in &lines {
                    share[l] = share[l].min(limit);
                }
            }
            if let Some(max) = max_points {
                point_caps.push((i, lines.clone(), max));
            }
            self.rules[i].outcome = Outcome::Applied;
            self.mark_stop(i, Target::Redemption, &lines);
        }
        let point_value = s.point_value;
        let to_points = |money: Decimal| {
            // The usual point value is 1: no division then.
            let points = if point_value == Decimal::ONE {
                money
            } else {
                money.checked_div(point_value).unwrap_or(Decimal::ZERO)
            };
            crate::money::Rounding::Down.round(points, s.points_scale)
        };
        let mut caps: Vec<Decimal> = (0..n)
            .map(|l| {
                if self.lines[l].ex_redemption {
                    return Decimal::ZERO;
                }
                let net = self.r.lines[l].gross - self.lines[l].discount;
                to_points(s.round_money(pct(net, share[l])).min(net))
            })
            .collect();
        // Rule caps in points (per visit), spread over their lines.
        for (i, lines, max) in point_caps {
            let these: Vec<Decimal> = lines.iter().map(|&l| caps[l]).collect();
            let capped = allocate_capped(max, &these, &these, s.points_scale);
            for (&l, c) in lines.iter().zip(capped) {
                caps[l] = c;
            }
            self.rules[i].amount = max;
        }
        // Receipt-wide: what must be paid in money, and what the customer has.
        let net_total: Decimal = (0..n)
            .map(|l| self.r.lines[l].gross - self.lines[l].discount)
            .sum();
        let by_money = to_points((net_total - s.min_money_payment).max(Decimal::ZERO));
        let by_limits: Decimal = caps.iter().sum();
        let limit = by_limits.min(by_money);
        // The balance may have more decimals than the points scale; those cannot pay. A
        // negative balance (a debt after a refund) pays nothing: nothing is redeemable, and a
        // redemption is INSUFFICIENT_POINTS with the real (negative) balance as `available`.
        let available = crate::money::Rounding::Down
            .round(self.r.available, s.points_scale)
            .max(Decimal::ZERO);
        let total = limit.min(available);
        let maxima = allocate_capped(total, &caps, &caps, s.points_scale);
        self.total_max_redeem = total;
        let mut requested = self.r.redeem;
        if requested > total {
            match mode {
                Redemption::Cap => requested = total,
                Redemption::Refuse if requested > self.r.available && self.r.available < limit => {
                    return Err(Refusal::precondition(
                        "INSUFFICIENT_POINTS",
                        format!(
                            "{} points available, {} requested",
                            s.fmt_points(self.r.available),
                            s.fmt_points(requested)
                        ),
                    )
                    .with("available", s.fmt_points(self.r.available))
                    .with("requested", s.fmt_points(requested))
                    .into())
                }
                Redemption::Refuse => {
                    return Err(Refusal::precondition(
                        "REDEMPTION_LIMIT_EXCEEDED",
                        format!(
                            "at most {} points can pay for this receipt, {} requested",
                            s.fmt_points(total),
                            s.fmt_points(requested)
                        ),
                    )
                    .with("max_redeemable", s.fmt_points(total))
                    .with("requested", s.fmt_points(requested))
                    .into())
                }
            }
        }
        let redeem = allocate_capped(requested, &maxima, &maxima, s.points_scale);
        for l in 0..n {
            let line = &mut self.lines[l];
            line.max_redeem = maxima[l];
            line.redeem = redeem[l];
            let net = self.r.lines[l].gross - line.discount;
            line.redeem_money = s.round_money(redeem[l] * point_value).min(net);
        }
        Ok(())
    }

    // ---- accrual ----

    fn accruals(&mut self) {
        if self.anonymous() {
            return;
        }
        let order: Vec<usize> = (0..self.plan.rules.len()).collect();
        for &i in &order {
            if self.eligible(i)
                && !matches!(
                    self.plan.rules[i].effect,
                    Effect::Multiplier(_) | Effect::Referral { .. }
                )
            {
                self.apply_accrual(i);
            }
        }
        for (rule, line, points) in std::mem::take(&mut self.stamp_points) {
            let points = self.plan.settings().round_points(points);
            self.book(rule, EffectTarget::Accrual, &[line], &[points]);
        }
        for &i in &order {
            if self.eligible(i) && matches!(self.plan.rules[i].effect, Effect::Multiplier(_)) {
                self.apply_accrual(i);
            }
        }
        for &i in &order {
            if self.eligible(i) && matches!(self.plan.rules[i].effect, Effect::Referral { .. }) {
                self.apply_referral(i);
            }
        }
    }

    /// A line's amount for accrual: after discount (or before, for GROSS), less the part paid
    /// with points unless the program accrues on it too.
    fn accrual_base(&self, l: usize, gross: bool) -> Decimal {
        let line = &self.lines[l];
        let amount = if gross {
            self.r.lines[l].gross
        } else {
            self.r.lines[l].gross - line.discount
        };
        let paid = if self.plan.settings().accrue_on_redeemed_part {
            Decimal::ZERO
        } else {
            line.redeem_money
        };
        (amount - paid).max(Decimal::ZERO)
    }

    /// Points as `percent` of the bases, rounded once for the receipt and spread by largest
    /// remainder.
    fn percent_points(
        &self,
        bases: &[Decimal],
        percent: Decimal,
        max: Option<Decimal>,
    ) -> Vec<Decimal> {
        let s = self.settings();
        let raw: Vec<Decimal> = bases.iter().map(|b| pct(*b, percent)).collect();
        let mut total = s.round_points(raw.iter().sum());
        if let Some(max) = max {
            total = total.min(max);
        }
        allocate(total, &raw, s.points_scale)
    }

    /// Fixed points for the receipt, spread over the lines by their bases (evenly if all are 0).
    fn receipt_points(&self, bases: &[Decimal], points: Decimal) -> Vec<Decimal> {
        let s = self.settings();
        let points = s.round_points(points);
        if bases.iter().all(|b| b.is_zero()) {
            return allocate(points, &vec![Decimal::ONE; bases.len()], s.points_scale);
        }
        allocate(points, bases, s.points_scale)
    }

    fn apply_accrual(&mut self, i: usize) {
        use crate::plan::PerKind;
        let plan = self.plan;
        let s = plan.settings();
        let rule = &plan.rules[i];
        let effect = match &rule.effect {
            Effect::TierRates { accrual: true, .. } => {
                match self.r.tier.as_ref().and_then(|t| t.accrual) {
                    Some(p) if p > Decimal::ZERO => Effect::AccruePercent {
                        percent: p,
                        gross: false,
                        max: None,
                    },
                    _ => return,
                }
            }
            Effect::TierRates { .. } => return,
            e if e.target() == Target::Accrual => e.clone(),
            _ => return,
        };
        if let Effect::Stamp {
            every,
            per_receipt,
            reward,
        } = effect
        {
            // A points reward: stamps are counted here, the points booked by `accruals`.
            if self.rules[i].outcome == Outcome::Eligible {
                let lines = self.rules[i].lines.clone();
                self.stamp_card(i, &lines, every, per_receipt, reward);
                if self.rules[i].stamps.is_some_and(|(e, c, _)| e > 0 || c > 0) {
                    self.rules[i].outcome = Outcome::Applied;
                }
            }
            return;
        }
        let lines = self.open_lines(i, Target::Accrual);
        if lines.is_empty() {
            return;
        }
        let base = |e: &Self, gross: bool| -> Vec<Decimal> {
            lines.iter().map(|&l| e.accrual_base(l, gross)).collect()
        };
        let amounts = match effect {
            Effect::AccruePercent {
                percent,
                gross,
                max,
            } => self.percent_points(&base(self, gross), percent, max),
            Effect::AccruePerAmount {
                points,
                every,
                per_line,
                gross,
            } => {
                let bases = base(self, gross);
                if per_line {
                    bases
                        .iter()
                        .map(|b| s.round_points((*b / every).floor() * points))
                        .collect()
                } else {
                    let steps = (bases.iter().sum::<Decimal>() / every).floor();
                    let total = s.round_points(steps * points);
                    allocate(total, &bases, s.points_scale)
                }
            }
            Effect::AccrueFixed { points, per } => match per {
                PerKind::Receipt => self.receipt_points(&base(self, false), points),
                PerKind::Line => vec![s.round_points(points); lines.len()],
                PerKind::Unit => lines
                    .iter()
                    .map(|&l| s.round_points(points * Decimal::from(self.r.lines[l].units())))
                    .collect(),
            },
            Effect::AccrueBrackets(ref t) => match self.bracket(i, t) {
                Some(BracketValue::Percent(p)) => self.percent_points(&base(self, false), p, None),
                Some(BracketValue::Fixed(points)) => {
                    self.receipt_points(&base(self, false), points)
                }
                None => return,
            },
            Effect::Cashback { percent, max } => {
                // Cashback is on the money actually paid, whatever accrue_on_redeemed_part says.
                let paid: Vec<Decimal> = lines
                    .iter()
                    .map(|&l| {
                        (self.r.lines[l].gross
                            - self.lines[l].discount
                            - self.lines[l].redeem_money)
                            .max(Decimal::ZERO)
                    })
                    .collect();
                self.percent_points(&paid, percent, max)
            }
            Effect::Multiplier(factor) => {
                let current: Vec<Decimal> = lines.iter().map(|&l| self.lines[l].accrual).collect();
                let raw: Vec<Decimal> = current
                    .iter()
                    // Points never grow beyond MAX_AMOUNT per line, however many multipliers stack.
                    .map(|a| {
                        a.checked_mul(factor - Decimal::ONE)
                            .map_or((MAX_AMOUNT - *a).max(Decimal::ZERO), |x| {
                                x.min((MAX_AMOUNT - *a).max(Decimal::ZERO))
                            })
                    })
                    .collect();
                let total: Decimal = raw.iter().sum();
                if total >= Decimal::ZERO {
                    allocate(s.round_points(total), &raw, s.points_scale)
                } else {
                    // A factor below 1 takes points back, never more than a line has.
                    let back = allocate_capped(
                        s.round_points(-total),
                        &raw.iter().map(|r| -*r).collect::<Vec<_>>(),
                        &current,
                        s.points_scale,
                    );
                    back.into_iter().map(|b| -b).collect()
                }
            }
            _ => return,
        };
        self.book(i, EffectTarget::Accrual, &lines, &amounts);
        if self.rules[i].outcome == Outcome::Applied {
            self.mark_stop(i, Target::Accrual, &lines);
        }
    }

    fn apply_referral(&mut self, i: usize) {
        let plan = self.plan;
        let Effect::Referral {
            levels,
            max_purchases,
        } = &plan.rules[i].effect
        else {
            return;
        };
        let Some(customer) = self.r.customer else {
            return;
        };
        if *max_purchases > 0
            && context::purchase_count(customer.aggregates.as_ref()) >= u64::from(*max_purchases)
        {
            self.rules[i].outcome = Outcome::Failed(Failure {
                field: "referral_reward.max_purchases",
                missing: None,
                bound: None,
            });
            return;
        }
        let lines = self.open_lines(i, Target::Referral);
        if lines.is_empty() {
            return;
        }
        let bases: Vec<Decimal> = lines.iter().map(|&l| self.accrual_base(l, false)).collect();
        let mut total = Decimal::ZERO;
        for (level, value) in levels {
            let Some(referrer) = customer
                .referrer_customer_ids
                .get((*level as usize).wrapping_sub(1))
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            let amounts = match value {
                LevelValue::Percent(p) => self.percent_points(&bases, *p, None),
                LevelValue::Points(p) => self.receipt_points(&bases, *p),
            };
            let points: Decimal = amounts.iter().sum();
            if points.is_zero() {
                continue;
            }
            for (&l, a) in lines.iter().zip(&amounts) {
                if !a.is_zero() {
                    self.lines[l]
                        .contributions
                        .push((i, EffectTarget::Referral, *a));
                }
            }
            total += points;
            self.referrals.push(ReferralRun {
                rule: i,
                level: *level,
                customer_id: referrer.clone(),
                points,
            });
        }
        self.rules[i].amount = total;
        self.rules[i].outcome = if total.is_zero() {
            Outcome::Capped
        } else {
            Outcome::Applied
        };
    }
}

#[cfg(test)]
mod tests;
