//! Tier decisions (R13, EvaluationService.DecideTier), a pure function of the program's
//! TierProgression and the customer context: upgrades after a purchase, window re-checks and
//! downgrades at the scheduled recalculation.
//!
//! Which level a customer qualifies for: the highest level any of whose criteria is met. The
//! first level without criteria is the entry level (everyone qualifies for it); a later level
//! without criteria is only ever assigned by hand. A customer with no tier, or with a tier the
//! progression does not list, counts as below the entry level.

use chrono::{DateTime, Utc};
use kopilka_proto::rules::{
    CustomerContext, DecideTierResponse, Program, TierCriterion, TierDecision, TierDowngrade,
    TierLevel, TierProgress, TierTrigger,
};
use kopilka_proto::types::{lookback::Span, Lookback, PurchaseAggregates};
use rust_decimal::Decimal;

use crate::context;
use crate::error::Error;
use crate::money::{self, Sign};
use crate::settings::currency_scale;

/// Decides the customer's tier after a purchase of `purchase_amount` (trigger PURCHASE; the
/// aggregates are those before it) or at a recalculation (the amount is ignored). `_at` is the
/// decision time: windows are read from the aggregates, which already end there.
pub fn decide(
    program: &Program,
    version: u64,
    customer: &CustomerContext,
    trigger: TierTrigger,
    purchase_amount: Decimal,
    _at: DateTime<Utc>,
) -> Result<DecideTierResponse, Error> {
    let purchase = match trigger {
        TierTrigger::Purchase if purchase_amount < Decimal::ZERO => {
            return Err(Error::invalid("purchase_amount", "must not be negative"));
        }
        TierTrigger::Purchase => Some(purchase_amount),
        TierTrigger::Recalculation => None,
        TierTrigger::Unspecified => {
            return Err(Error::invalid(
                "trigger",
                "TIER_TRIGGER_PURCHASE or TIER_TRIGGER_RECALCULATION is required",
            ));
        }
    };
    let current_code = customer.tier.as_ref().map_or("", |t| t.code.as_str());
    let mut response = DecideTierResponse {
        decision: TierDecision::Keep as i32,
        tier_code: current_code.to_owned(),
        previous_tier_code: current_code.to_owned(),
        program_version: version,
        ..Default::default()
    };
    let Some(progression) = program
        .tier_progression
        .as_ref()
        .filter(|p| !p.levels.is_empty())
    else {
        response.decision = TierDecision::NoProgression as i32;
        response.reason = "the program has no tier progression".to_owned();
        return Ok(response);
    };
    if customer.tier_locked {
        response.decision = TierDecision::Locked as i32;
        response.reason = format!("tier {} is locked by hand", shown(current_code));
        return Ok(response);
    }
    let currency = program
        .settings
        .as_ref()
        .map_or("", |s| s.currency.as_str());
    let scale = currency_scale(currency).ok_or_else(|| {
        Error::invalid(
            "settings.currency",
            format!("`{currency}` is not an ISO 4217 currency; validate the program"),
        )
    })?;
    let levels = progression
        .levels
        .iter()
        .enumerate()
        .map(|(i, l)| Level::parse(i, l, scale))
        .collect::<Result<Vec<_>, _>>()?;
    let facts = Facts::new(context::aggregates(Some(customer)), purchase, scale)?;
    let entry = levels.iter().position(|l| l.is_entry_candidate());
    let qualifies = |i: usize| -> Option<Met> {
        let level = levels.get(i)?;
        if level.is_entry_candidate() {
            return (entry == Some(i)).then_some(Met::entry());
        }
        level.met(&facts)
    };
    let qualified: Option<usize> = (0..levels.len()).rev().find(|&i| qualifies(i).is_some());
    let current = levels.iter().position(|l| l.code == current_code);

    // Positions compare as Option: no tier (None) is below every level.
    let target: Option<(usize, TierDecision)> = match (qualified, trigger) {
        (Some(q), _) if Some(q) > current => Some((q, TierDecision::Upgrade)),
        (_, TierTrigger::Recalculation) => match current {
            Some(c) if qualified < Some(c) => {
                match TierDowngrade::try_from(progression.downgrade).unwrap_or_default() {
                    TierDowngrade::ToQualified => {
                        // Nothing qualifies (no entry level): the lowest level is the floor.
                        let to = qualified.unwrap_or(0);
                        (to < c).then_some((to, TierDecision::Downgrade))
                    }
                    TierDowngrade::OneStep => {
                        c.checked_sub(1).map(|to| (to, TierDecision::Downgrade))
                    }
                    TierDowngrade::Never | TierDowngrade::Unspecified => None,
                }
            }
            _ => None,
        },
        _ => None,
    };

    let result = match target {
        Some((to, decision)) => {
            let code = levels[to].code;
            response.decision = decision as i32;
            response.tier_code = code.to_owned();
            let met = qualifies(to);
            response.criterion = met.as_ref().map_or(0, |m| m.criterion as i32);
            response.reason = match (decision, met) {
                (TierDecision::Upgrade, Some(m)) => format!("{} for {code}", m.why),
                (_, Some(m)) => format!(
                    "{} → {code} at recalculation: {} for {code}",
                    shown(current_code),
                    m.why
                ),
                (_, None) => format!(
                    "{} → {code} at recalculation: moves down one level ({})",
                    shown(current_code),
                    qualified.map_or_else(
                        || "no level qualifies".to_owned(),
                        |q| format!("qualifies for {}", levels[q].code)
                    )
                ),
            };
            Some(to)
        }
        None => {
            let met = current.and_then(&qualifies);
            response.criterion = met.as_ref().map_or(0, |m| m.criterion as i32);
            response.reason = match (current, qualified) {
                (Some(c), Some(q)) if q < c => format!(
                    "{current_code} kept: qualifies only for {}, and the program never moves tiers down this way",
                    levels[q].code
                ),
                (Some(c), None) if c > 0 || entry.is_none() => format!(
                    "{current_code} kept: no level qualifies, and the program never moves tiers down this way"
                ),
                _ => format!("{} kept: no higher level reached", shown(current_code)),
            };
            current
        }
    };
    if !response.tier_code.is_empty() {
        response.rule_id = format!("tier_progression.{}", response.tier_code);
    }
    let next = result.map_or(0, |r| r + 1);
    response.progress = Some(
        levels
            .get(next)
            .map_or_else(TierProgress::default, |l| l.progress(&facts, scale)),
    );
    Ok(response)
}

fn shown(code: &str) -> &str {
    if code.is_empty() {
        "(no tier)"
    } else {
        code
    }
}

/// What qualified a level, for the response.
struct Met {
    criterion: TierCriterion,
    why: String,
}

impl Met {
    fn entry() -> Met {
        Met {
            criterion: TierCriterion::Unspecified,
            why: "the entry level".to_owned(),
        }
    }
}

/// The amounts the criteria are compared with.
struct Facts<'a> {
    aggregates: Option<&'a PurchaseAggregates>,
    /// The triggering purchase (PURCHASE only): added to the turnovers, and the single
    /// purchase criterion.
    purchase: Option<Decimal>,
    cumulative: Decimal,
    scale: u32,
}

impl<'a> Facts<'a> {
    fn new(
        aggregates: Option<&'a PurchaseAggregates>,
        purchase: Option<Decimal>,
        scale: u32,
    ) -> Result<Self, Error> {
        let cumulative = context::lifetime_turnover(aggregates)
            .checked_add(purchase.unwrap_or_default())
            .ok_or_else(|| Error::invalid("purchase_amount", "is too large"))?;
        Ok(Facts {
            aggregates,
            purchase,
            cumulative,
            scale,
        })
    }

    /// Turnover over the window, the triggering purchase included (a window missing from the
    /// aggregates counts as no turnover).
    fn window(&self, lookback: &Lookback) -> Decimal {
        let before = context::window_turnover(self.aggregates, lookback).unwrap_or_default();
        before
            .checked_add(self.purchase.unwrap_or_default())
            .unwrap_or(before)
    }
}

/// One level with its thresholds parsed.
struct Level<'a> {
    code: &'a str,
    cumulative: Option<Decimal>,
    window: Option<(&'a Lookback, Decimal)>,
    single: Option<Decimal>,
}

impl<'a> Level<'a> {
    fn parse(i: usize, level: &'a TierLevel, scale: u32) -> Result<Self, Error> {
        let path = format!("tier_progression.levels[{i}]");
        let amount = |field: &str, value: &str| -> Result<Option<Decimal>, Error> {
            if value.is_empty() {
                return Ok(None);
            }
            money::parse(value, scale, Sign::NonNegative)
                .map(Some)
                .map_err(|e| Error::invalid(format!("{path}.{field}"), e))
        };
        let window = match &level.window_turnover {
            None => None,
            Some(w) => {
                let lookback = w.lookback.as_ref().ok_or_else(|| {
                    Error::invalid(
                        format!("{path}.window_turnover.lookback"),
                        "is required; validate the program",
                    )
                })?;
                let at_least =
                    amount("window_turnover.at_least", &w.at_least)?.ok_or_else(|| {
                        Error::invalid(format!("{path}.window_turnover.at_least"), "is required")
                    })?;
                Some((lookback, at_least))
            }
        };
        Ok(Level {
            code: &level.tier_code,
            cumulative: amount(
                "cumulative_turnover_at_least",
                &level.cumulative_turnover_at_least,
            )?,
            window,
            single: amount("single_purchase_at_least", &level.single_purchase_at_least)?,
        })
    }

    fn is_entry_candidate(&self) -> bool {
        self.cumulative.is_none() && self.window.is_none() && self.single.is_none()
    }

    /// The first criterion met (cumulative, window, single purchase), if any.
    fn met(&self, facts: &Facts) -> Option<Met> {
        let fmt = |d: Decimal| grouped(d, facts.scale);
        if let Some(t) = self.cumulative {
            if facts.cumulative >= t {
                return Some(Met {
                    criterion: TierCriterion::CumulativeTurnover,
                    why: format!(
                        "lifetime turnover {} reached {}",
                        fmt(facts.cumulative),
                        fmt(t)
                    ),
                });
            }
        }
        if let Some((lookback, t)) = self.window {
            let turnover = facts.window(lookback);
            if turnover >= t {
                return Some(Met {
                    criterion: TierCriterion::WindowTurnover,
                    why: format!(
                        "turnover over {} {} reached {}",
                        describe(lookback),
                        fmt(turnover),
                        fmt(t)
                    ),
                });
            }
        }
        // A single purchase counts only right after it (never at recalculation).
        if let (Some(t), Some(p)) = (self.single, facts.purchase) {
            if p >= t {
                return Some(Met {
                    criterion: TierCriterion::SinglePurchase,
                    why: format!("a single purchase of {} reached {}", fmt(p), fmt(t)),
                });
            }
        }
        None
    }

    fn progress(&self, facts: &Facts, scale: u32) -> TierProgress {
        let missing = |have: Decimal, need: Decimal| {
            money::format(
                need.checked_sub(have)
                    .unwrap_or_default()
                    .max(Decimal::ZERO),
                scale,
            )
        };
        TierProgress {
            next_tier_code: self.code.to_owned(),
            cumulative_turnover_missing: self
                .cumulative
                .map(|t| missing(facts.cumulative, t))
                .unwrap_or_default(),
            window_turnover_missing: self
                .window
                .map(|(l, t)| missing(facts.window(l), t))
                .unwrap_or_default(),
            single_purchase_at_least: self
                .single
                .map(|t| money::format(t, scale))
                .unwrap_or_default(),
        }
    }
}

/// "the last 3 months", "the last 90 days".
fn describe(lookback: &Lookback) -> String {
    match lookback.span {
        Some(Span::Days(1)) => "the last day".to_owned(),
        Some(Span::Days(d)) => format!("the last {d} days"),
        Some(Span::Months(1)) => "the last month".to_owned(),
        Some(Span::Months(m)) => format!("the last {m} months"),
        None => "the window".to_owned(),
    }
}

/// An amount for people: thousands separated by spaces, "10 250.00".
fn grouped(value: Decimal, scale: u32) -> String {
    let plain = money::format(value, scale);
    let (sign, rest) = match plain.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", plain.as_str()),
    };
    let (int, frac) = rest
        .split_once('.')
        .map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut out = String::with_capacity(plain.len() + int.len() / 3);
    out.push_str(sign);
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::from_yaml;
    use kopilka_proto::rules::CustomerTier;
    use kopilka_proto::types::WindowAggregate;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).unwrap()
    }

    const CUMULATIVE: &str = r#"
name: Tiers
settings: {currency: RUB, time_zone: Europe/Moscow}
tier_progression:
  levels:
    - {tier_code: NEW}
    - {tier_code: GOLD, cumulative_turnover_at_least: "10000"}
    - {tier_code: VIP, cumulative_turnover_at_least: "30000"}
"#;

    fn window_program(downgrade: &str) -> Program {
        from_yaml(&format!(
            r#"
name: Window tiers
settings: {{currency: RUB, time_zone: Europe/Moscow}}
tier_progression:
  downgrade: {downgrade}
  levels:
    - {{tier_code: NEW}}
    - {{tier_code: GOLD, window_turnover: {{lookback: {{months: 3}}, at_least: "10000"}}, single_purchase_at_least: "5000"}}
    - {{tier_code: VIP, window_turnover: {{lookback: {{months: 3}}, at_least: "30000"}}}}
"#
        ))
        .unwrap()
    }

    fn customer(tier: &str, lifetime: &str, window_3m: Option<&str>) -> CustomerContext {
        CustomerContext {
            customer_id: "c1".into(),
            tier: (!tier.is_empty()).then(|| CustomerTier {
                code: tier.into(),
                ..Default::default()
            }),
            aggregates: Some(PurchaseAggregates {
                lifetime_turnover: lifetime.into(),
                windows: window_3m
                    .map(|t| WindowAggregate {
                        lookback: Some(Lookback {
                            span: Some(Span::Months(3)),
                        }),
                        turnover: t.into(),
                        purchase_count: 1,
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn purchase(p: &Program, c: &CustomerContext, amount: &str) -> DecideTierResponse {
        decide(p, 7, c, TierTrigger::Purchase, d(amount), at()).unwrap()
    }

    fn recalc(p: &Program, c: &CustomerContext) -> DecideTierResponse {
        decide(p, 7, c, TierTrigger::Recalculation, Decimal::ZERO, at()).unwrap()
    }

    #[test]
    fn gold_at_10000_cumulative() {
        let p = from_yaml(CUMULATIVE).unwrap();
        let r = purchase(&p, &customer("NEW", "9250", None), "1000");
        assert_eq!(r.decision(), TierDecision::Upgrade);
        assert_eq!(r.tier_code, "GOLD");
        assert_eq!(r.previous_tier_code, "NEW");
        assert_eq!(r.criterion(), TierCriterion::CumulativeTurnover);
        assert_eq!(r.rule_id, "tier_progression.GOLD");
        assert_eq!(r.program_version, 7);
        assert_eq!(
            r.reason,
            "lifetime turnover 10 250.00 reached 10 000.00 for GOLD"
        );
        let progress = r.progress.unwrap();
        assert_eq!(progress.next_tier_code, "VIP");
        assert_eq!(progress.cumulative_turnover_missing, "19750.00");

        // 9 999.99 keeps NEW, 0.01 short.
        let r = purchase(&p, &customer("NEW", "8999.99", None), "1000");
        assert_eq!(r.decision(), TierDecision::Keep);
        assert_eq!(r.tier_code, "NEW");
        assert_eq!(r.rule_id, "tier_progression.NEW");
        let progress = r.progress.unwrap();
        assert_eq!(progress.next_tier_code, "GOLD");
        assert_eq!(progress.cumulative_turnover_missing, "0.01");
        assert_eq!(progress.window_turnover_missing, "");
        assert_eq!(progress.single_purchase_at_least, "");
    }

    #[test]
    fn vip_at_30000_and_skipping_levels() {
        let p = from_yaml(CUMULATIVE).unwrap();
        let r = purchase(&p, &customer("GOLD", "29000", None), "1000");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "VIP")
        );
        let progress = r.progress.unwrap();
        assert_eq!(progress.next_tier_code, "");
        assert_eq!(progress.cumulative_turnover_missing, "");
        // One big first purchase goes straight to the top.
        let r = purchase(&p, &customer("NEW", "0", None), "35000");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "VIP")
        );
        // A purchase never moves down, even under the bar.
        let r = purchase(&p, &customer("VIP", "100", None), "1");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Keep, "VIP")
        );
    }

    #[test]
    fn no_tier_or_unknown_tier_is_below_entry() {
        let p = from_yaml(CUMULATIVE).unwrap();
        let r = purchase(&p, &customer("", "0", None), "100");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "NEW")
        );
        assert_eq!(r.criterion(), TierCriterion::Unspecified);
        assert_eq!(r.previous_tier_code, "");
        let r = purchase(&p, &customer("LEGACY", "20000", None), "0");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "GOLD")
        );
    }

    #[test]
    fn a_single_purchase_qualifies_until_recalculation() {
        let p = window_program("TIER_DOWNGRADE_TO_QUALIFIED");
        let r = purchase(&p, &customer("NEW", "0", Some("0")), "5000");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "GOLD")
        );
        assert_eq!(r.criterion(), TierCriterion::SinglePurchase);
        assert_eq!(
            r.reason,
            "a single purchase of 5 000.00 reached 5 000.00 for GOLD"
        );
        let r = purchase(&p, &customer("NEW", "0", Some("0")), "4999.99");
        assert_eq!(r.decision(), TierDecision::Keep);
        let progress = r.progress.unwrap();
        assert_eq!(progress.single_purchase_at_least, "5000.00");
        assert_eq!(progress.window_turnover_missing, "5000.01");
        // At recalculation the single purchase no longer counts: 5 000 over 3 months < 10 000.
        let r = recalc(&p, &customer("GOLD", "5000", Some("5000")));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Downgrade, "NEW")
        );
    }

    #[test]
    fn turnover_over_3_months_at_recalculation() {
        // Upgrade by window at recalculation.
        let p = window_program("TIER_DOWNGRADE_TO_QUALIFIED");
        let r = recalc(&p, &customer("NEW", "50000", Some("31000")));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "VIP")
        );
        assert_eq!(r.criterion(), TierCriterion::WindowTurnover);
        assert_eq!(
            r.reason,
            "turnover over the last 3 months 31 000.00 reached 30 000.00 for VIP"
        );
        // A purchase adds to the window.
        let r = purchase(&p, &customer("NEW", "0", Some("9500")), "500");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Upgrade, "GOLD")
        );
        assert_eq!(r.criterion(), TierCriterion::WindowTurnover);

        // VIP whose last 3 months fell to 12 000 / 5 000.
        let r = recalc(&p, &customer("VIP", "90000", Some("12000")));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Downgrade, "GOLD")
        );
        assert_eq!(r.criterion(), TierCriterion::WindowTurnover);
        assert_eq!(r.previous_tier_code, "VIP");
        let r = recalc(&p, &customer("VIP", "90000", Some("5000")));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Downgrade, "NEW")
        );
        assert_eq!(r.criterion(), TierCriterion::Unspecified);
        // Still qualifies: kept.
        let r = recalc(&p, &customer("VIP", "90000", Some("30000")));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Keep, "VIP")
        );

        let one_step = window_program("TIER_DOWNGRADE_ONE_STEP");
        let r = recalc(&one_step, &customer("VIP", "90000", Some("5000")));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Downgrade, "GOLD")
        );
        assert_eq!(r.criterion(), TierCriterion::Unspecified);
        let r = recalc(&one_step, &customer("NEW", "0", None));
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Keep, "NEW")
        );

        for never in ["TIER_DOWNGRADE_NEVER", "TIER_DOWNGRADE_UNSPECIFIED"] {
            let r = recalc(
                &window_program(never),
                &customer("VIP", "90000", Some("5000")),
            );
            assert_eq!(
                (r.decision(), r.tier_code.as_str()),
                (TierDecision::Keep, "VIP")
            );
            assert!(r.reason.contains("qualifies only for NEW"), "{}", r.reason);
        }
    }

    #[test]
    fn locked_and_no_progression() {
        let p = from_yaml(CUMULATIVE).unwrap();
        let mut c = customer("NEW", "50000", None);
        c.tier_locked = true;
        let r = purchase(&p, &c, "100");
        assert_eq!(
            (r.decision(), r.tier_code.as_str()),
            (TierDecision::Locked, "NEW")
        );
        assert_eq!(r.program_version, 7);

        let mut none = p.clone();
        none.tier_progression = None;
        let r = purchase(&none, &customer("GOLD", "50000", None), "100");
        assert_eq!(r.decision(), TierDecision::NoProgression);
        assert_eq!(r.tier_code, "GOLD");
        assert_eq!(r.rule_id, "");
    }

    #[test]
    fn bad_input() {
        let p = from_yaml(CUMULATIVE).unwrap();
        let c = customer("NEW", "0", None);
        let err = decide(&p, 1, &c, TierTrigger::Unspecified, Decimal::ZERO, at()).unwrap_err();
        assert!(matches!(err, Error::Invalid(ref v) if v.fields()[0].0 == "trigger"));
        let err = decide(&p, 1, &c, TierTrigger::Purchase, d("-1"), at()).unwrap_err();
        assert!(matches!(err, Error::Invalid(ref v) if v.fields()[0].0 == "purchase_amount"));
        // Garbage in the program or the aggregates never panics.
        let mut bad = p.clone();
        bad.tier_progression.as_mut().unwrap().levels[1].cumulative_turnover_at_least = "x".into();
        assert!(decide(&bad, 1, &c, TierTrigger::Purchase, Decimal::MAX, at()).is_err());
        let mut c = customer("NEW", "garbage", Some("-5"));
        c.aggregates.as_mut().unwrap().windows[0].lookback = None;
        let r = decide(&p, 1, &c, TierTrigger::Purchase, Decimal::MAX, at());
        assert!(r.is_ok());
    }

    #[test]
    fn grouping() {
        assert_eq!(grouped(d("10250"), 2), "10 250.00");
        assert_eq!(grouped(d("999"), 0), "999");
        assert_eq!(grouped(d("1234567.5"), 2), "1 234 567.50");
        assert_eq!(grouped(d("-1000"), 0), "-1 000");
    }
}
