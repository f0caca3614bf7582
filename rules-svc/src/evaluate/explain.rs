//! Turning a finished evaluation into the answer: lines and totals as decimal strings, lots to
//! book, referral rewards, stamp changes, cashier hints and the explanation of every rule.
//! Sentences are in the program's locale (Russian by default, English otherwise).

use chrono::{DateTime, Utc};
use kopilka_proto::rules::{
    EffectTarget, EvaluationResult, ExplainLevel, Explanation, Hint, HintKind, LineResult,
    ReceiptTotals, RuleAmount, RuleOutcome,
};
use kopilka_proto::types::{BeneficiaryGrant, LotKind, PointsGrant, StampChange};
use kopilka_runtime::timestamps::to_proto as ts;
use rust_decimal::Decimal;

use super::{Evaluation, Outcome};
use crate::context;
use crate::plan::{BracketValue, Effect, Target};
use kopilka_proto::rules::BracketBasis;

/// Points to book as one lot, gathered from the lines' contributions.
struct Lot {
    kind: LotKind,
    activates: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    amount: Decimal,
    rule_ids: Vec<String>,
}

/// A near miss: at most this share of the bound is missing (20 %).
fn near(missing: Decimal, bound: Decimal) -> bool {
    missing > Decimal::ZERO && missing * Decimal::from(5) <= bound
}

struct Text {
    ru: bool,
}

impl Text {
    fn pick(&self, ru: String, en: String) -> String {
        if self.ru {
            ru
        } else {
            en
        }
    }
}

fn target_of(e: &Effect) -> EffectTarget {
    match e {
        Effect::Stamp { .. } => EffectTarget::Stamps,
        Effect::RedemptionLimit { .. } => EffectTarget::RedemptionLimit,
        Effect::Exclude { .. } => EffectTarget::Exclusion,
        Effect::Referral { .. } => EffectTarget::Referral,
        Effect::Action => EffectTarget::Action,
        Effect::TierRates { discount: true, .. } => EffectTarget::Discount,
        Effect::TierRates { accrual: true, .. } => EffectTarget::Accrual,
        Effect::TierRates { .. } => EffectTarget::RedemptionLimit,
        e => match e.target() {
            Target::Discount => EffectTarget::Discount,
            _ => EffectTarget::Accrual,
        },
    }
}

/// Builds the result.
pub(super) fn result(e: &Evaluation<'_, '_>) -> EvaluationResult {
    let plan = e.plan;
    let s = plan.settings();
    let r = e.r;
    let text = Text {
        ru: s.locale.starts_with("ru"),
    };

    // Lines.
    let mut lines = Vec::with_capacity(r.lines.len());
    let mut t = (
        Decimal::ZERO,
        Decimal::ZERO,
        Decimal::ZERO,
        Decimal::ZERO,
        Decimal::ZERO,
    );
    for (l, line) in r.lines.iter().enumerate() {
        let run = &e.lines[l];
        let net = line.gross - run.discount;
        let paid = net - run.redeem_money;
        t.0 += run.discount;
        t.1 += run.redeem;
        t.2 += run.redeem_money;
        t.3 += run.accrual;
        t.4 += line.gross;
        lines.push(LineResult {
            line_id: line.id.to_owned(),
            gross_amount: s.fmt_money(line.gross),
            discount: s.fmt_money(run.discount),
            net_amount: s.fmt_money(net),
            max_redeem_points: s.fmt_points(run.max_redeem),
            redeem_points: s.fmt_points(run.redeem),
            redeem_money: s.fmt_money(run.redeem_money),
            paid_money: s.fmt_money(paid),
            accrual_points: s.fmt_points(run.accrual),
            excluded_from_discount: run.ex_discount,
            excluded_from_accrual: run.ex_accrual,
            excluded_from_redemption: run.ex_redemption || r.customer.is_none(),
            contributions: run
                .contributions
                .iter()
                .map(|(i, target, amount)| RuleAmount {
                    rule_id: plan.rules[*i].id.clone(),
                    target: *target as i32,
                    amount: if *target == EffectTarget::Discount {
                        s.fmt_money(*amount)
                    } else {
                        s.fmt_points(*amount)
                    },
                })
                .collect(),
        });
    }
    let (discount, redeem, redeem_money, accrued, gross) = t;
    let referral_total: Decimal = e.referrals.iter().map(|x| x.points).sum();

    // Lots: one per distinct (kind, activation, expiry).
    let mut lots: Vec<Lot> = Vec::new();
    // Lot terms per rule, computed once.
    type Times = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let mut times: Vec<Option<Times>> = vec![None; plan.rules.len()];
    for run in &e.lines {
        for (i, target, amount) in &run.contributions {
            if *target != EffectTarget::Accrual {
                continue;
            }
            let rule = &plan.rules[*i];
            let kind = if matches!(rule.effect, Effect::Cashback { .. }) {
                LotKind::Cashback
            } else {
                LotKind::Purchase
            };
            let (activates, expires) =
                *times[*i].get_or_insert_with(|| s.lot_times(rule.terms.as_ref(), r.at));
            let lot = match lots
                .iter()
                .position(|x| x.kind == kind && x.activates == activates && x.expires == expires)
            {
                Some(k) => &mut lots[k],
                None => {
                    lots.push(Lot {
                        kind,
                        activates,
                        expires,
                        amount: Decimal::ZERO,
                        rule_ids: Vec::new(),
                    });
                    lots.last_mut().expect("just pushed")
                }
            };
            lot.amount += *amount;
            if !lot.rule_ids.contains(&rule.id) {
                lot.rule_ids.push(rule.id.clone());
            }
        }
    }
    // A multiplier below 1 may leave its own lot negative: take that from the largest others.
    while let Some(k) = lots.iter().position(|x| x.amount <= Decimal::ZERO) {
        let empty = lots.remove(k);
        let mut owed = -empty.amount;
        lots.sort_by_key(|x| std::cmp::Reverse(x.amount));
        for lot in lots.iter_mut() {
            if owed <= Decimal::ZERO {
                break;
            }
            let take = owed.min(lot.amount);
            lot.amount -= take;
            owed -= take;
            for id in &empty.rule_ids {
                if !lot.rule_ids.contains(id) {
                    lot.rule_ids.push(id.clone());
                }
            }
        }
    }
    let accruals = lots
        .into_iter()
        .map(|lot| PointsGrant {
            amount: s.fmt_points(lot.amount),
            kind: lot.kind as i32,
            activates_at: lot.activates.map(ts),
            expires_at: lot.expires.map(ts),
            rule_ids: lot.rule_ids,
            grant_key: String::new(),
        })
        .collect();
    let referral_rewards = e
        .referrals
        .iter()
        .map(|x| {
            let rule = &plan.rules[x.rule];
            let (activates, expires) = s.lot_times(rule.terms.as_ref(), r.at);
            BeneficiaryGrant {
                customer_id: x.customer_id.clone(),
                level: x.level,
                grant: Some(PointsGrant {
                    amount: s.fmt_points(x.points),
                    kind: LotKind::Referral as i32,
                    activates_at: activates.map(ts),
                    expires_at: expires.map(ts),
                    rule_ids: vec![rule.id.clone()],
                    grant_key: String::new(),
                }),
            }
        })
        .collect();
    let stamp_changes = plan
        .rules
        .iter()
        .zip(&e.rules)
        .filter_map(|(rule, run)| {
            let (earned, consumed, balance_after) = run.stamps?;
            Some(StampChange {
                stamp_card_id: rule.id.clone(),
                earned,
                consumed,
                balance_after,
            })
        })
        .collect();
    let mut applied_promo_codes: Vec<String> = Vec::new();
    for (rule, run) in plan.rules.iter().zip(&e.rules) {
        if run.outcome == Outcome::Applied {
            for code in &r.promo_codes {
                if rule.when.promo_codes.contains(code) && !applied_promo_codes.contains(code) {
                    applied_promo_codes.push(code.clone());
                }
            }
        }
    }

    let hints = hints(e, &text, gross - discount, &applied_promo_codes);
    let explanations = if r.explain == ExplainLevel::None {
        Vec::new()
    } else {
        explanations(e, &text)
    };

    EvaluationResult {
        program_version: plan.version(),
        program_fingerprint: plan.fingerprint().to_owned(),
        currency: s.currency.clone(),
        evaluated_for: Some(ts(r.at)),
        time_zone: r.time_zone.name().to_owned(),
        lines,
        totals: Some(ReceiptTotals {
            gross_amount: s.fmt_money(gross),
            discount: s.fmt_money(discount),
            net_amount: s.fmt_money(gross - discount),
            max_redeem_points: s.fmt_points(e.total_max_redeem),
            redeem_points: s.fmt_points(redeem),
            redeem_money: s.fmt_money(redeem_money),
            paid_money: s.fmt_money(gross - discount - redeem_money),
            points_accrued: s.fmt_points(accrued),
            referral_points: s.fmt_points(referral_total),
        }),
        accruals,
        referral_rewards,
        stamp_changes,
        applied_promo_codes,
        hints,
        explanations,
    }
}

fn value_text(s: &crate::settings::Settings, v: BracketValue, discount: bool, ru: bool) -> String {
    match (v, discount, ru) {
        (BracketValue::Percent(p), true, true) => format!("скидка {} %", p.normalize()),
        (BracketValue::Percent(p), true, false) => format!("{} % off", p.normalize()),
        (BracketValue::Percent(p), false, true) => format!("{} % баллами", p.normalize()),
        (BracketValue::Percent(p), false, false) => format!("{} % back in points", p.normalize()),
        (BracketValue::Fixed(a), true, true) => format!("скидка {}", s.fmt_money(a)),
        (BracketValue::Fixed(a), true, false) => format!("{} off", s.fmt_money(a)),
        (BracketValue::Fixed(a), false, true) => format!("{} баллов", s.fmt_points(a)),
        (BracketValue::Fixed(a), false, false) => format!("{} points", s.fmt_points(a)),
    }
}

fn hints(
    e: &Evaluation<'_, '_>,
    text: &Text,
    net_total: Decimal,
    applied_codes: &[String],
) -> Vec<Hint> {
    let plan = e.plan;
    let s = plan.settings();
    let r = e.r;
    let mut hints = Vec::new();
    for (rule, run) in plan.rules.iter().zip(&e.rules) {
        // The next bracket of a receipt-total table.
        if let Effect::DiscountBrackets(t) | Effect::AccrueBrackets(t) = &rule.effect {
            let by_receipt = matches!(
                t.basis,
                BracketBasis::ReceiptTotal | BracketBasis::ScopeTotal
            );
            let next = match (&run.outcome, run.bracket) {
                (Outcome::Applied | Outcome::Capped, Some(b)) => Some(b + 1),
                (Outcome::BelowBrackets(_), _) => Some(0),
                _ => None,
            };
            if let (true, Some(n)) = (by_receipt, next) {
                if let Some(b) = t.brackets.get(n) {
                    let target = if b.inclusive {
                        b.lower
                    } else {
                        b.lower + e.money_unit
                    };
                    let needed = target - run.basis;
                    if needed > Decimal::ZERO {
                        let discount = matches!(rule.effect, Effect::DiscountBrackets(_));
                        let what = value_text(s, b.value, discount, text.ru);
                        hints.push(Hint {
                            kind: HintKind::NextBracket as i32,
                            message: text.pick(
                                format!("Ещё {} до: {what}", s.fmt_money(needed)),
                                format!("{} more to reach {what}", s.fmt_money(needed)),
                            ),
                            rule_id: rule.id.clone(),
                            amount_needed: s.fmt_money(needed),
                            units_needed: 0,
                            benefit: match b.value {
                                BracketValue::Percent(p) => p.normalize().to_string(),
                                BracketValue::Fixed(a) => a.normalize().to_string(),
                            },
                        });
                    }
                }
            }
        }
        match &run.outcome {
            Outcome::Failed(f) => {
                if let (Some(missing), Some(bound)) = (f.missing, f.bound) {
                    if near(missing, bound) {
                        hints.push(Hint {
                            kind: HintKind::MinTotal as i32,
                            message: text.pick(
                                format!("Ещё {}: «{}»", s.fmt_money(missing), rule.name),
                                format!("{} more for “{}”", s.fmt_money(missing), rule.name),
                            ),
                            rule_id: rule.id.clone(),
                            amount_needed: s.fmt_money(missing),
                            units_needed: 0,
                            benefit: String::new(),
                        });
                    }
                }
                if run.one_more {
                    hints.push(one_more(rule, text));
                }
            }
            Outcome::Applied | Outcome::Capped if run.one_more => hints.push(one_more(rule, text)),
            _ => {}
        }
        if let (Some((_, _, after)), Effect::Stamp { every, .. }) = (run.stamps, &rule.effect) {
            let needed = every.saturating_sub(1).saturating_sub(after);
            hints.push(Hint {
                kind: HintKind::Stamps as i32,
                message: if needed == 0 {
                    text.pick(
                        format!("«{}»: следующая — в подарок", rule.name),
                        format!("“{}”: the next one is the reward", rule.name),
                    )
                } else {
                    text.pick(
                        format!("«{}»: ещё {needed} до подарка", rule.name),
                        format!("“{}”: {needed} more to the reward", rule.name),
                    )
                },
                rule_id: rule.id.clone(),
                amount_needed: String::new(),
                units_needed: needed,
                benefit: String::new(),
            });
        }
        if run.outcome == Outcome::Applied && rule.when.birthday.is_some() {
            hints.push(Hint {
                kind: HintKind::Birthday as i32,
                message: text.pick(
                    format!("День рождения: «{}»", rule.name),
                    format!("Birthday: “{}”", rule.name),
                ),
                rule_id: rule.id.clone(),
                amount_needed: String::new(),
                units_needed: 0,
                benefit: String::new(),
            });
        }
    }
    // Tier progress by cumulative turnover.
    if let (Some(customer), Some(tp)) = (r.customer, plan.program().tier_progression.as_ref()) {
        let current = r.tier.as_ref().map(|t| t.code);
        let position = current.and_then(|c| tp.levels.iter().position(|l| l.tier_code == c));
        let start = position.map_or(0, |p| p + 1);
        if let Some(level) = tp.levels[start.min(tp.levels.len())..]
            .iter()
            .find(|l| !l.cumulative_turnover_at_least.is_empty())
        {
            if let Ok(threshold) = crate::money::parse(
                &level.cumulative_turnover_at_least,
                6,
                crate::money::Sign::NonNegative,
            ) {
                let after = context::lifetime_turnover(customer.aggregates.as_ref()) + net_total;
                let needed = threshold - after;
                if needed > Decimal::ZERO {
                    hints.push(Hint {
                        kind: HintKind::TierProgress as i32,
                        message: text.pick(
                            format!("Ещё {} до уровня {}", s.fmt_money(needed), level.tier_code),
                            format!("{} more to {}", s.fmt_money(needed), level.tier_code),
                        ),
                        rule_id: format!("tier_progression.{}", level.tier_code),
                        amount_needed: s.fmt_money(needed),
                        units_needed: 0,
                        benefit: level.tier_code.clone(),
                    });
                }
            }
        }
    }
    for code in &r.promo_codes {
        if !applied_codes.contains(code) {
            hints.push(Hint {
                kind: HintKind::PromoCodeUnknown as i32,
                message: text.pick(
                    format!("Промокод {code} не подошёл"),
                    format!("Promo code {code} matched no offer"),
                ),
                rule_id: String::new(),
                amount_needed: String::new(),
                units_needed: 0,
                benefit: code.clone(),
            });
        }
    }
    if e.total_max_redeem > Decimal::ZERO {
        hints.push(Hint {
            kind: HintKind::PointsAvailable as i32,
            message: text.pick(
                format!(
                    "Можно оплатить баллами до {}",
                    s.fmt_points(e.total_max_redeem)
                ),
                format!(
                    "Up to {} points can pay for this receipt",
                    s.fmt_points(e.total_max_redeem)
                ),
            ),
            rule_id: String::new(),
            amount_needed: String::new(),
            units_needed: 0,
            benefit: s.fmt_points(e.total_max_redeem),
        });
    }
    hints
}

fn one_more(rule: &crate::plan::Rule, text: &Text) -> Hint {
    Hint {
        kind: HintKind::OneMoreItem as i32,
        message: text.pick(
            format!("Ещё один товар — и сработает «{}»", rule.name),
            format!("One more item for “{}”", rule.name),
        ),
        rule_id: rule.id.clone(),
        amount_needed: String::new(),
        units_needed: 1,
        benefit: String::new(),
    }
}

fn explanations(e: &Evaluation<'_, '_>, text: &Text) -> Vec<Explanation> {
    let plan = e.plan;
    let s = plan.settings();
    let full = e.r.explain == ExplainLevel::Full;
    let mut out = Vec::new();
    for (ri, (rule, run)) in plan.rules.iter().zip(&e.rules).enumerate() {
        let target = target_of(&rule.effect);
        let fmt_amount = |a: Decimal| {
            if target == EffectTarget::Discount {
                s.fmt_money(a)
            } else {
                s.fmt_points(a)
            }
        };
        let mut x = Explanation {
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            target: target as i32,
            ..Default::default()
        };
        let affected = |want_amount: bool| -> Vec<String> {
            run.lines
                .iter()
                .filter(|&&l| !want_amount || e.lines[l].contributions.iter().any(|c| c.0 == ri))
                .map(|&l| e.r.lines[l].id.to_owned())
                .collect()
        };
        match &run.outcome {
            Outcome::NotForReceipts | Outcome::Eligible => continue,
            Outcome::Applied => {
                x.outcome = RuleOutcome::Applied as i32;
                let with_amounts = matches!(
                    target,
                    EffectTarget::Discount | EffectTarget::Accrual | EffectTarget::Referral
                );
                x.line_ids = affected(with_amounts && !run.amount.is_zero());
                x.amount = fmt_amount(run.amount);
                let bracket = run.bracket.and_then(|b| match &rule.effect {
                    Effect::DiscountBrackets(t) | Effect::AccrueBrackets(t) => Some((
                        t.brackets[b].value,
                        matches!(rule.effect, Effect::DiscountBrackets(_)),
                    )),
                    _ => None,
                });
                x.message = match (bracket, run.stamps) {
                    (Some((v, discount)), _) => {
                        let what = value_text(s, v, discount, text.ru);
                        text.pick(
                            format!("{}: сумма {} — {what}", rule.name, s.fmt_money(run.basis)),
                            format!(
                                "{}: amount {} gives {what}",
                                rule.name,
                                s.fmt_money(run.basis)
                            ),
                        )
                    }
                    (None, Some((earned, consumed, after))) => text.pick(
                        format!(
                            "{}: +{earned} штамп(ов), использовано {consumed}, теперь {after}",
                            rule.name
                        ),
                        format!(
                            "{}: +{earned} stamps, {consumed} used, {after} now",
                            rule.name
                        ),
                    ),
                    _ => match target {
                        EffectTarget::Discount => text.pick(
                            format!("{}: скидка {}", rule.name, s.fmt_money(run.amount)),
                            format!("{}: {} off", rule.name, s.fmt_money(run.amount)),
                        ),
                        EffectTarget::Accrual | EffectTarget::Referral => text.pick(
                            format!("{}: {} баллов", rule.name, s.fmt_points(run.amount)),
                            format!("{}: {} points", rule.name, s.fmt_points(run.amount)),
                        ),
                        EffectTarget::Exclusion => text.pick(
                            format!("{}: строки исключены", rule.name),
                            format!("{}: lines excluded", rule.name),
                        ),
                        _ => text.pick(
                            format!("{}: ограничение оплаты баллами", rule.name),
                            format!("{}: limits payment with points", rule.name),
                        ),
                    },
                };
            }
            Outcome::Failed(f) => {
                let near_miss = matches!((f.missing, f.bound), (Some(m), Some(b)) if near(m, b));
                if !full && !near_miss && !run.one_more {
                    continue;
                }
                x.outcome = RuleOutcome::ConditionNotMet as i32;
                let effect_part = f.field.contains('.')
                    && !f.field.starts_with("since_")
                    && !f.field.starts_with("basket_");
                x.failed_path = if effect_part {
                    format!("rules[{}].{}", rule.index, f.field)
                } else {
                    format!("rules[{}].when.{}", rule.index, f.field)
                };
                x.line_ids = affected(false);
                x.near_miss = near_miss || run.one_more;
                if let Some(m) = f.missing {
                    x.missing_amount = s.fmt_money(m);
                }
                x.message = match f.missing {
                    Some(m) => text.pick(
                        format!("Не применено: не хватает {} ({})", s.fmt_money(m), f.field),
                        format!("Not applied: {} short ({})", s.fmt_money(m), f.field),
                    ),
                    None => text.pick(
                        format!("Не применено: условие {} не выполнено", f.field),
                        format!("Not applied: condition {} not met", f.field),
                    ),
                };
            }
            Outcome::BelowBrackets(missing) => {
                let near_miss = missing.is_some_and(|m| m > Decimal::ZERO);
                x.outcome = RuleOutcome::ConditionNotMet as i32;
                let table = if matches!(rule.effect, Effect::DiscountBrackets(_)) {
                    "discount_brackets"
                } else {
                    "accrue_brackets"
                };
                x.failed_path = format!("rules[{}].{table}.brackets[0]", rule.index);
                x.near_miss = near_miss;
                x.line_ids = affected(false);
                if let Some(m) = missing {
                    x.missing_amount = s.fmt_money(*m);
                }
                x.message = text.pick(
                    format!(
                        "Не применено: сумма {} ниже первой ступени",
                        s.fmt_money(run.basis)
                    ),
                    format!(
                        "Not applied: {} is below the first bracket",
                        s.fmt_money(run.basis)
                    ),
                );
            }
            other => {
                if !full {
                    continue;
                }
                let (outcome, ru, en, by) = match other {
                    Outcome::OutOfScope => (
                        RuleOutcome::OutOfScope,
                        "нет подходящих строк",
                        "no line in scope",
                        None,
                    ),
                    Outcome::Lost(w) => (
                        RuleOutcome::LostInGroup,
                        "выиграло другое правило группы",
                        "another rule of its group won",
                        Some(*w),
                    ),
                    Outcome::Stopped(w) => (
                        RuleOutcome::Stopped,
                        "остановлено правилом выше",
                        "stopped by a higher-priority rule",
                        Some(*w),
                    ),
                    Outcome::Capped => (
                        RuleOutcome::Capped,
                        "ограничение свело эффект к нулю",
                        "a cap reduced it to zero",
                        None,
                    ),
                    Outcome::Disabled => (
                        RuleOutcome::Disabled,
                        "правило выключено",
                        "the rule is disabled",
                        None,
                    ),
                    _ => (
                        RuleOutcome::Anonymous,
                        "нужен участник программы",
                        "needs an identified customer",
                        None,
                    ),
                };
                x.outcome = outcome as i32;
                x.superseded_by = by.map(|w| plan.rules[w].id.clone()).unwrap_or_default();
                x.line_ids = affected(false);
                x.message = text.pick(format!("Не применено: {ru}"), format!("Not applied: {en}"));
            }
        }
        out.push(x);
    }
    out
}
