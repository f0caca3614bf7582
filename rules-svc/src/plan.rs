//! A program compiled once into an evaluation plan: decimals parsed, rules sorted by priority,
//! brackets checked ascending, product and category ids interned so that a checkout matches
//! scopes by comparing small integers and does no parsing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kopilka_proto::rules::{
    self as pb, bracket, referral_level, rule::Effect as PbEffect, stamp_card, AmountBasis,
    BracketBasis, GroupMode, Per, Program, Violation, ViolationSeverity,
};
use kopilka_proto::types::{AmountRange, Lookback};
use prost::Message;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::money::{self, Sign};
use crate::settings::Settings;

/// SHA-256 (hex) of the program's protobuf encoding (deterministic: the message has no maps).
pub fn fingerprint(program: &Program) -> String {
    hex::encode(Sha256::digest(program.encode_to_vec()))
}

/// An interned product or category id of the program.
pub type Sym = u32;

/// A range of amounts with optional inclusive/exclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    /// (bound, inclusive)
    pub lower: Option<(Decimal, bool)>,
    pub upper: Option<(Decimal, bool)>,
}

impl Range {
    pub fn contains(&self, v: Decimal) -> bool {
        let lower_ok = match self.lower {
            Some((b, true)) => v >= b,
            Some((b, false)) => v > b,
            None => true,
        };
        let upper_ok = match self.upper {
            Some((b, true)) => v <= b,
            Some((b, false)) => v < b,
            None => true,
        };
        lower_ok && upper_ok
    }

    /// How much more is needed to reach the lower bound (`unit` is the smallest step, for an
    /// exclusive bound); `None` if the value is not below it.
    pub fn missing(&self, v: Decimal, unit: Decimal) -> Option<Decimal> {
        let (b, inclusive) = self.lower?;
        let target = if inclusive { b } else { b + unit };
        (v < target).then(|| target - v)
    }
}

/// A weekly local time window in minutes after midnight; `end <= start` spans midnight.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// ISO weekdays (Monday = 1); empty = every day.
    pub weekdays: Vec<u32>,
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BasketNeed {
    pub products: Vec<Sym>,
    pub categories: Vec<Sym>,
    pub min_quantity: Decimal,
    pub min_amount: Option<Decimal>,
}

/// A period: (inclusive start, exclusive end), either open.
pub type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Compiled conditions; `None` / empty = not a condition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conds {
    pub tiers: Vec<String>,
    pub active: Option<Period>,
    pub windows: Vec<Window>,
    pub birthday: Option<(u32, u32)>,
    pub since_within_days: Option<u32>,
    pub since_at_least_days: Option<u32>,
    pub turnover: Option<(Option<Lookback>, Range)>,
    pub receipt_total: Option<Range>,
    /// Upper-cased codes.
    pub promo_codes: Vec<String>,
    pub store_ids: Vec<String>,
    pub purchase_count: Option<(Option<u64>, Option<u64>)>,
    pub basket: Option<BasketNeed>,
    pub registered_within_days: Option<u32>,
    pub include_anonymous: bool,
}

impl Conds {
    /// Whether a condition reads customer data (and so fails for an anonymous receipt).
    pub fn needs_customer(&self) -> bool {
        !self.tiers.is_empty()
            || self.birthday.is_some()
            || self.since_within_days.is_some()
            || self.since_at_least_days.is_some()
            || self.turnover.is_some()
            || self.purchase_count.is_some()
            || self.registered_within_days.is_some()
    }
}

/// Compiled scope: sorted interned ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scope {
    pub products: Vec<Sym>,
    pub categories: Vec<Sym>,
    pub exclude_products: Vec<Sym>,
    pub exclude_categories: Vec<Sym>,
    pub skip_discounted: bool,
}

impl Scope {
    /// Whether a line with this (interned) product and categories is in scope.
    pub fn matches(&self, product: Option<Sym>, categories: &[Sym]) -> bool {
        let has_product = |set: &[Sym]| product.is_some_and(|p| set.binary_search(&p).is_ok());
        let has_category = |set: &[Sym]| categories.iter().any(|c| set.binary_search(c).is_ok());
        let included = (self.products.is_empty() && self.categories.is_empty())
            || has_product(&self.products)
            || has_category(&self.categories);
        included && !has_product(&self.exclude_products) && !has_category(&self.exclude_categories)
    }
}

/// A bracket value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BracketValue {
    Percent(Decimal),
    Fixed(Decimal),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bracket {
    pub lower: Decimal,
    pub inclusive: bool,
    pub value: BracketValue,
}

impl Bracket {
    pub fn admits(&self, v: Decimal) -> bool {
        if self.inclusive {
            v >= self.lower
        } else {
            v > self.lower
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Brackets {
    pub basis: BracketBasis,
    pub lookback: Option<Lookback>,
    /// Ascending.
    pub brackets: Vec<Bracket>,
}

impl Brackets {
    /// The index of the bracket `v` falls in: the last whose lower bound admits it.
    pub fn find(&self, v: Decimal) -> Option<usize> {
        self.brackets.iter().rposition(|b| b.admits(v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PerKind {
    Receipt,
    Line,
    Unit,
}

fn per(value: i32) -> PerKind {
    match Per::try_from(value) {
        Ok(Per::Line) => PerKind::Line,
        Ok(Per::Unit) => PerKind::Unit,
        _ => PerKind::Receipt,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StampReward {
    Percent(Decimal),
    Points(Decimal),
}

/// A referral level's reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LevelValue {
    Percent(Decimal),
    Points(Decimal),
}

/// What a rule does, compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    DiscountPercent {
        percent: Decimal,
        max: Option<Decimal>,
    },
    DiscountFixed {
        amount: Decimal,
        per: PerKind,
    },
    DiscountBrackets(Brackets),
    AccruePercent {
        percent: Decimal,
        gross: bool,
        max: Option<Decimal>,
    },
    AccruePerAmount {
        points: Decimal,
        every: Decimal,
        per_line: bool,
        gross: bool,
    },
    AccrueFixed {
        points: Decimal,
        per: PerKind,
    },
    AccrueBrackets(Brackets),
    Cashback {
        percent: Decimal,
        max: Option<Decimal>,
    },
    Multiplier(Decimal),
    TierRates {
        discount: bool,
        accrual: bool,
        redemption: bool,
    },
    Exclude {
        discount: bool,
        accrual: bool,
        redemption: bool,
    },
    RedemptionLimit {
        share: Option<Decimal>,
        max_points: Option<Decimal>,
    },
    NForM {
        buy: u32,
        pay: u32,
        max_times: u32,
    },
    NthItem {
        every: u32,
        percent: Decimal,
        max_times: u32,
    },
    Stamp {
        every: u32,
        per_receipt: bool,
        reward: StampReward,
    },
    Referral {
        levels: Vec<(u32, LevelValue)>,
        max_purchases: u32,
    },
    /// Action rules are for EvaluateAction; receipts skip them.
    Action,
}

/// The kinds of effect that compete under `stop_further_rules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Discount,
    Accrual,
    Redemption,
    Exclusion,
    Referral,
    Action,
}

impl Effect {
    pub fn target(&self) -> Target {
        match self {
            Effect::DiscountPercent { .. }
            | Effect::DiscountFixed { .. }
            | Effect::DiscountBrackets(_)
            | Effect::NForM { .. }
            | Effect::NthItem { .. } => Target::Discount,
            Effect::Stamp { reward, .. } => match reward {
                StampReward::Percent(_) => Target::Discount,
                StampReward::Points(_) => Target::Accrual,
            },
            Effect::AccruePercent { .. }
            | Effect::AccruePerAmount { .. }
            | Effect::AccrueFixed { .. }
            | Effect::AccrueBrackets(_)
            | Effect::Cashback { .. }
            | Effect::Multiplier(_) => Target::Accrual,
            Effect::TierRates { discount, .. } => {
                if *discount {
                    Target::Discount
                } else {
                    Target::Accrual
                }
            }
            Effect::Exclude { .. } => Target::Exclusion,
            Effect::RedemptionLimit { .. } => Target::Redemption,
            Effect::Referral { .. } => Target::Referral,
            Effect::Action => Target::Action,
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Position in `Program.rules` (for paths like `rules[3].when.receipt_total`).
    pub index: usize,
    pub id: String,
    pub name: String,
    pub disabled: bool,
    pub group: Option<usize>,
    pub stop: bool,
    pub when: Conds,
    pub scope: Scope,
    pub terms: Option<pb::PointsTerms>,
    pub effect: Effect,
}

/// A compiled group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: String,
    pub first: bool,
}

/// A compiled program version.
#[derive(Debug, Clone)]
pub struct Plan {
    version: u64,
    fingerprint: String,
    program: Program,
    settings: Settings,
    /// By descending priority, ties in document order.
    pub rules: Vec<Rule>,
    pub groups: Vec<Group>,
    symbols: HashMap<String, Sym>,
}

/// Collects the violations met while compiling, by path.
struct Compiler<'a> {
    symbols: &'a mut HashMap<String, Sym>,
    errors: Vec<Violation>,
}

impl Compiler<'_> {
    fn fail(&mut self, field: String, description: String) {
        self.errors.push(Violation {
            field,
            code: "BAD_DECIMAL".to_owned(),
            description,
            severity: ViolationSeverity::Error as i32,
        });
    }

    fn dec(&mut self, path: String, value: &str, sign: Sign) -> Decimal {
        match money::parse(value, 6, sign) {
            Ok(d) => d,
            Err(e) => {
                self.fail(path, e);
                Decimal::ZERO
            }
        }
    }

    fn opt_dec(&mut self, path: String, value: &str, sign: Sign) -> Option<Decimal> {
        (!value.is_empty()).then(|| self.dec(path, value, sign))
    }

    fn sym(&mut self, id: &str) -> Sym {
        let next = self.symbols.len() as Sym;
        *self.symbols.entry(id.to_owned()).or_insert(next)
    }

    fn syms(&mut self, ids: &[String]) -> Vec<Sym> {
        let mut out: Vec<Sym> = ids.iter().map(|i| self.sym(i)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn range(&mut self, path: &str, r: &AmountRange) -> Range {
        let mut out = Range::default();
        if let Some(d) = self.opt_dec(format!("{path}.at_least"), &r.at_least, Sign::NonNegative) {
            out.lower = Some((d, true));
        }
        if let Some(d) = self.opt_dec(format!("{path}.above"), &r.above, Sign::NonNegative) {
            out.lower = Some((d, false));
        }
        if let Some(d) = self.opt_dec(format!("{path}.below"), &r.below, Sign::NonNegative) {
            out.upper = Some((d, false));
        }
        if let Some(d) = self.opt_dec(format!("{path}.at_most"), &r.at_most, Sign::NonNegative) {
            out.upper = Some((d, true));
        }
        out
    }

    fn time(&mut self, path: String, value: &str, default: u32, end_of_day: bool) -> u32 {
        if value.is_empty() {
            return default;
        }
        crate::validate::parse_hhmm(value, end_of_day).unwrap_or_else(|| {
            self.fail(path, format!("`{value}` is not a time HH:MM"));
            0
        })
    }

    fn conds(&mut self, path: &str, c: Option<&pb::Conditions>) -> Conds {
        let Some(c) = c else {
            return Conds::default();
        };
        let instant = |t: &Option<pbjson_types::Timestamp>| {
            t.as_ref().and_then(kopilka_runtime::timestamps::from_proto)
        };
        let windows = c
            .time_windows
            .iter()
            .enumerate()
            .map(|(i, w)| Window {
                weekdays: w.weekdays.iter().map(|d| *d as u32).collect(),
                start: self.time(
                    format!("{path}.time_windows[{i}].start"),
                    &w.start,
                    0,
                    false,
                ),
                end: self.time(
                    format!("{path}.time_windows[{i}].end"),
                    &w.end,
                    24 * 60,
                    true,
                ),
            })
            .collect();
        let basket = c.basket_contains.as_ref().map(|b| BasketNeed {
            products: self.syms(&b.product_ids),
            categories: self.syms(&b.category_ids),
            min_quantity: self
                .opt_dec(
                    format!("{path}.basket_contains.min_quantity"),
                    &b.min_quantity,
                    Sign::Positive,
                )
                .unwrap_or(Decimal::ONE),
            min_amount: self.opt_dec(
                format!("{path}.basket_contains.min_amount"),
                &b.min_amount,
                Sign::NonNegative,
            ),
        });
        Conds {
            tiers: c.tiers.clone(),
            active: c
                .active
                .as_ref()
                .map(|p| (instant(&p.start), instant(&p.end))),
            windows,
            birthday: c.birthday.as_ref().map(|b| (b.days_before, b.days_after)),
            since_within_days: c.since_last_purchase.as_ref().and_then(|s| s.within_days),
            since_at_least_days: c.since_last_purchase.as_ref().and_then(|s| s.at_least_days),
            turnover: c.turnover.as_ref().map(|t| {
                let range = t
                    .amount
                    .as_ref()
                    .map(|a| self.range(&format!("{path}.turnover.amount"), a))
                    .unwrap_or_default();
                (t.lookback, range)
            }),
            receipt_total: c
                .receipt_total
                .as_ref()
                .map(|r| self.range(&format!("{path}.receipt_total"), r)),
            promo_codes: c
                .promo_code
                .as_ref()
                .map(|p| p.codes.iter().map(|c| c.to_uppercase()).collect())
                .unwrap_or_default(),
            store_ids: c.store_ids.clone(),
            purchase_count: c.purchase_count.as_ref().map(|r| (r.at_least, r.at_most)),
            basket,
            registered_within_days: c.registered_within_days,
            include_anonymous: c.include_anonymous,
        }
    }

    fn scope(&mut self, s: Option<&pb::Scope>) -> Scope {
        let Some(s) = s else {
            return Scope::default();
        };
        Scope {
            products: self.syms(&s.product_ids),
            categories: self.syms(&s.category_ids),
            exclude_products: self.syms(&s.exclude_product_ids),
            exclude_categories: self.syms(&s.exclude_category_ids),
            skip_discounted: s.skip_discounted_lines,
        }
    }

    fn brackets(&mut self, path: &str, t: &pb::BracketTable) -> Brackets {
        let mut brackets = Vec::with_capacity(t.brackets.len());
        for (i, b) in t.brackets.iter().enumerate() {
            let p = format!("{path}.brackets[{i}]");
            let (lower, inclusive) = match &b.lower {
                Some(bracket::Lower::AtLeast(v)) => (
                    self.dec(format!("{p}.at_least"), v, Sign::NonNegative),
                    true,
                ),
                Some(bracket::Lower::Above(v)) => {
                    (self.dec(format!("{p}.above"), v, Sign::NonNegative), false)
                }
                None => {
                    self.fail(format!("{p}.at_least"), "a lower bound is required".into());
                    (Decimal::ZERO, true)
                }
            };
            let value = match &b.value {
                Some(bracket::Value::Percent(v)) => {
                    BracketValue::Percent(self.dec(format!("{p}.percent"), v, Sign::NonNegative))
                }
                Some(bracket::Value::FixedAmount(v)) => {
                    BracketValue::Fixed(self.dec(format!("{p}.fixed_amount"), v, Sign::NonNegative))
                }
                None => {
                    self.fail(format!("{p}.percent"), "a value is required".into());
                    BracketValue::Percent(Decimal::ZERO)
                }
            };
            brackets.push(Bracket {
                lower,
                inclusive,
                value,
            });
        }
        let ascending = brackets.windows(2).all(|w| {
            w[0].lower < w[1].lower
                || (w[0].lower == w[1].lower && w[0].inclusive && !w[1].inclusive)
        });
        if !ascending {
            self.fail(
                format!("{path}.brackets"),
                "lower bounds must strictly increase".into(),
            );
        }
        let basis = BracketBasis::try_from(t.basis).unwrap_or(BracketBasis::ReceiptTotal);
        Brackets {
            basis: if basis == BracketBasis::Unspecified {
                BracketBasis::ReceiptTotal
            } else {
                basis
            },
            lookback: t.lookback,
            brackets,
        }
    }

    fn effect(&mut self, path: &str, e: Option<&PbEffect>) -> Option<Effect> {
        use Sign::{NonNegative as Nn, Positive as Pos};
        let gross = |b: i32| b == AmountBasis::Gross as i32;
        Some(match e? {
            PbEffect::DiscountPercent(d) => Effect::DiscountPercent {
                percent: self.dec(format!("{path}.discount_percent.percent"), &d.percent, Pos),
                max: self.opt_dec(
                    format!("{path}.discount_percent.max_amount"),
                    &d.max_amount,
                    Nn,
                ),
            },
            PbEffect::DiscountFixed(d) => Effect::DiscountFixed {
                amount: self.dec(format!("{path}.discount_fixed.amount"), &d.amount, Pos),
                per: per(d.per),
            },
            PbEffect::DiscountBrackets(t) => {
                Effect::DiscountBrackets(self.brackets(&format!("{path}.discount_brackets"), t))
            }
            PbEffect::AccruePercent(a) => Effect::AccruePercent {
                percent: self.dec(format!("{path}.accrue_percent.percent"), &a.percent, Pos),
                gross: gross(a.basis),
                max: self.opt_dec(
                    format!("{path}.accrue_percent.max_points"),
                    &a.max_points,
                    Nn,
                ),
            },
            PbEffect::AccruePerAmount(a) => Effect::AccruePerAmount {
                points: self.dec(format!("{path}.accrue_per_amount.points"), &a.points, Pos),
                every: self.dec(format!("{path}.accrue_per_amount.every"), &a.every, Pos),
                per_line: per(a.per) == PerKind::Line,
                gross: gross(a.basis),
            },
            PbEffect::AccrueFixed(a) => Effect::AccrueFixed {
                points: self.dec(format!("{path}.accrue_fixed.points"), &a.points, Pos),
                per: per(a.per),
            },
            PbEffect::AccrueBrackets(t) => {
                Effect::AccrueBrackets(self.brackets(&format!("{path}.accrue_brackets"), t))
            }
            PbEffect::Cashback(c) => Effect::Cashback {
                percent: self.dec(format!("{path}.cashback.percent"), &c.percent, Pos),
                max: self.opt_dec(format!("{path}.cashback.max_points"), &c.max_points, Nn),
            },
            PbEffect::AccrualMultiplier(m) => Effect::Multiplier(self.dec(
                format!("{path}.accrual_multiplier.factor"),
                &m.factor,
                Pos,
            )),
            PbEffect::TierRates(t) => Effect::TierRates {
                discount: t.discount,
                accrual: t.accrual,
                redemption: t.redemption_share,
            },
            PbEffect::Exclude(x) => Effect::Exclude {
                discount: x.from_discount,
                accrual: x.from_accrual,
                redemption: x.from_redemption,
            },
            PbEffect::RedemptionLimit(r) => Effect::RedemptionLimit {
                share: self.opt_dec(
                    format!("{path}.redemption_limit.max_share_percent"),
                    &r.max_share_percent,
                    Nn,
                ),
                max_points: self.opt_dec(
                    format!("{path}.redemption_limit.max_points"),
                    &r.max_points,
                    Nn,
                ),
            },
            PbEffect::NForM(n) => {
                if n.buy < 2 || n.pay < 1 || n.pay >= n.buy {
                    self.fail(
                        format!("{path}.n_for_m"),
                        "needs buy >= 2 and 1 <= pay < buy".into(),
                    );
                }
                Effect::NForM {
                    buy: n.buy.max(2),
                    pay: n.pay.clamp(1, n.buy.max(2) - 1),
                    max_times: n.max_times,
                }
            }
            PbEffect::NthItem(n) => {
                if n.every < 2 {
                    self.fail(format!("{path}.nth_item.every"), "must be 2 to 100".into());
                }
                Effect::NthItem {
                    every: n.every.max(2),
                    percent: self.dec(format!("{path}.nth_item.percent"), &n.percent, Pos),
                    max_times: n.max_times,
                }
            }
            PbEffect::StampCard(s) => {
                if s.every < 2 {
                    self.fail(
                        format!("{path}.stamp_card.every"),
                        "must be 2 to 100".into(),
                    );
                }
                let reward = match &s.reward {
                    Some(stamp_card::Reward::DiscountPercent(p)) => StampReward::Percent(self.dec(
                        format!("{path}.stamp_card.discount_percent"),
                        p,
                        Pos,
                    )),
                    Some(stamp_card::Reward::Points(p)) => {
                        StampReward::Points(self.dec(format!("{path}.stamp_card.points"), p, Pos))
                    }
                    None => StampReward::Percent(Decimal::ONE_HUNDRED),
                };
                Effect::Stamp {
                    every: s.every.max(2),
                    per_receipt: s.per == Per::Receipt as i32,
                    reward,
                }
            }
            PbEffect::ReferralReward(r) => {
                let mut levels = Vec::with_capacity(r.levels.len());
                for (i, l) in r.levels.iter().enumerate() {
                    let p = format!("{path}.referral_reward.levels[{i}]");
                    let value = match &l.value {
                        Some(referral_level::Value::Percent(v)) => {
                            LevelValue::Percent(self.dec(format!("{p}.percent"), v, Nn))
                        }
                        Some(referral_level::Value::Points(v)) => {
                            LevelValue::Points(self.dec(format!("{p}.points"), v, Pos))
                        }
                        None => {
                            self.fail(format!("{p}.points"), "a value is required".into());
                            LevelValue::Points(Decimal::ZERO)
                        }
                    };
                    levels.push((l.level, value));
                }
                Effect::Referral {
                    levels,
                    max_purchases: r.max_purchases,
                }
            }
            PbEffect::ActionReward(_) => Effect::Action,
        })
    }
}

impl Plan {
    /// Compiles `program` (stored as `version`, 0 for an inline document). A program whose
    /// values cannot be read is `Error::ProgramInvalid` with the paths; validation
    /// (`crate::validate`) finds more, and runs before a version is published.
    pub fn compile(program: &Program, version: u64) -> Result<Plan, Error> {
        let Some(settings) = Settings::from_proto(program.settings.as_ref()) else {
            return Err(Error::ProgramInvalid(vec![Violation {
                field: "settings".to_owned(),
                code: "OUT_OF_RANGE".to_owned(),
                description: "the settings are not valid (time zone, points scale, point value \
                              or percentages); validate the program for details"
                    .to_owned(),
                severity: ViolationSeverity::Error as i32,
            }]));
        };
        let groups: Vec<Group> = program
            .groups
            .iter()
            .map(|g| Group {
                id: g.id.clone(),
                first: g.mode == GroupMode::First as i32,
            })
            .collect();
        let mut symbols = HashMap::new();
        let mut c = Compiler {
            symbols: &mut symbols,
            errors: Vec::new(),
        };
        let mut rules = Vec::with_capacity(program.rules.len());
        for (index, r) in program.rules.iter().enumerate() {
            let path = format!("rules[{index}]");
            let Some(effect) = c.effect(&path, r.effect.as_ref()) else {
                c.errors.push(Violation {
                    field: path,
                    code: "NO_EFFECT".to_owned(),
                    description: "a rule needs exactly one effect".to_owned(),
                    severity: ViolationSeverity::Error as i32,
                });
                continue;
            };
            let group = if r.group.is_empty() {
                None
            } else {
                let found = groups.iter().position(|g| g.id == r.group);
                if found.is_none() {
                    c.errors.push(Violation {
                        field: format!("{path}.group"),
                        code: "UNKNOWN_GROUP".to_owned(),
                        description: format!("no group `{}`", r.group),
                        severity: ViolationSeverity::Error as i32,
                    });
                }
                found
            };
            rules.push((
                r.priority,
                Rule {
                    index,
                    id: r.id.clone(),
                    name: r.name.clone(),
                    disabled: r.disabled,
                    group,
                    stop: r.stop_further_rules,
                    when: c.conds(&format!("{path}.when"), r.when.as_ref()),
                    scope: c.scope(r.scope.as_ref()),
                    terms: r.points_terms,
                    effect,
                },
            ));
        }
        if !c.errors.is_empty() {
            return Err(Error::ProgramInvalid(c.errors));
        }
        // Stable: equal priorities keep document order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.0));
        Ok(Plan {
            version,
            fingerprint: fingerprint(program),
            program: program.clone(),
            settings,
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            groups,
            symbols,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The interned id of a product or category the program mentions; `None` if it mentions
    /// none by that id (so no scope can match it).
    pub fn symbol(&self, id: &str) -> Option<Sym> {
        self.symbols.get(id).copied()
    }
}
