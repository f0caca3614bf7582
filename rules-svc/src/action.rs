//! Points for non-purchase actions and occasions (R14, EvaluationService.EvaluateAction): which
//! action_reward rules match the action, the customer's lot and the referrers' lots with the
//! grant keys that make each grant happen once. Pure.
//!
//! Conditions read for actions: tiers, active, time_windows (the action's local time),
//! registered_within_days, since_last_purchase, purchase_count and turnover. Receipt conditions
//! (receipt_total, promo_code, store_ids, basket_contains) have nothing to read and are
//! ignored (validation warns about them); birthday is not read either: the BIRTHDAY occasion
//! is itself scheduled on the birthday.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use chrono_tz::Tz;
use kopilka_proto::rules::{
    referral_level, rule::Effect, ActionReward, Conditions, CustomerContext, EffectTarget,
    EvaluateActionRequest, EvaluateActionResponse, Explanation, Program, Rule, RuleOutcome,
};
use kopilka_proto::types::{ActionKind, AmountRange, BeneficiaryGrant, LotKind, PointsGrant};
use kopilka_proto::wkt::Timestamp;
use kopilka_runtime::timestamps::to_proto as timestamp;
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;

use crate::context;
use crate::error::Error;
use crate::money::{self, Sign};
use crate::settings::Settings;
use crate::validate::parse_hhmm;

const MAX_REF_LEN: usize = 64;

/// Computes the grants for `request.action` under `program` (stored as `version`). The action
/// happened at `request.occurred_at`, or at `now` when that is unset.
pub fn evaluate_action(
    program: &Program,
    version: u64,
    request: &EvaluateActionRequest,
    now: DateTime<Utc>,
) -> Result<EvaluateActionResponse, Error> {
    let (customer, action, at) = check_request(request, now)?;
    let settings = Settings::from_proto(program.settings.as_ref()).ok_or_else(|| {
        Error::invalid(
            "program.settings",
            "the settings are not valid; validate the program",
        )
    })?;
    let mut response = EvaluateActionResponse {
        program_version: version,
        ..Default::default()
    };
    for (i, rule) in program.rules.iter().enumerate() {
        let Some(Effect::ActionReward(reward)) = &rule.effect else {
            continue;
        };
        let path = format!("rules[{i}]");
        let mut explanation = Explanation {
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            target: EffectTarget::Action as i32,
            ..Default::default()
        };
        if rule.disabled {
            explanation.outcome = RuleOutcome::Disabled as i32;
            explanation.message = "the rule is disabled".to_owned();
            response.explanations.push(explanation);
            continue;
        }
        if let Some((failed, message)) = mismatch(&path, reward, action, &request.custom_code) {
            explanation.outcome = RuleOutcome::ConditionNotMet as i32;
            explanation.failed_path = failed;
            explanation.message = message;
            response.explanations.push(explanation);
            continue;
        }
        let key = grant_key(
            rule,
            reward,
            action,
            &request.action_ref,
            at,
            settings.time_zone,
        )?;
        if let Some(when) = &rule.when {
            if let Some((failed, message)) =
                failed_condition(&path, when, customer, at, settings.time_zone)
            {
                explanation.outcome = RuleOutcome::ConditionNotMet as i32;
                explanation.failed_path = failed;
                explanation.message = message;
                response.explanations.push(explanation);
                continue;
            }
        }
        let (activates_at, expires_at) = settings.lot_times(rule.points_terms.as_ref(), at);
        let lot = |amount: Decimal, kind: LotKind, grant_key: String| PointsGrant {
            amount: settings.fmt_points(amount),
            kind: kind as i32,
            activates_at: activates_at.map(timestamp),
            expires_at: expires_at.map(timestamp),
            rule_ids: vec![rule.id.clone()],
            grant_key,
        };
        let points = parse_points(
            &format!("{path}.action_reward.points"),
            &reward.points,
            &settings,
        )?;
        if points > Decimal::ZERO {
            response.grants.push(lot(points, lot_kind(action), key));
        }
        let mut levels: Vec<_> = reward.referrer_rewards.iter().enumerate().collect();
        levels.sort_by_key(|(_, l)| l.level);
        let mut to_referrers = Decimal::ZERO;
        for (j, level) in levels {
            // Only points are valid here (validation refuses percentages).
            let Some(referral_level::Value::Points(value)) = &level.value else {
                continue;
            };
            let amount = parse_points(
                &format!("{path}.action_reward.referrer_rewards[{j}].points"),
                value,
                &settings,
            )?;
            let referrer = (level.level as usize)
                .checked_sub(1)
                .and_then(|k| customer.referrer_customer_ids.get(k))
                .filter(|id| !id.is_empty());
            let (Some(referrer), true) = (referrer, amount > Decimal::ZERO) else {
                continue;
            };
            to_referrers += amount;
            response.referrer_grants.push(BeneficiaryGrant {
                customer_id: referrer.clone(),
                level: level.level,
                grant: Some(lot(
                    amount,
                    LotKind::Referral,
                    format!("action:{}:{}", rule.id, customer.customer_id),
                )),
            });
        }
        explanation.outcome = RuleOutcome::Applied as i32;
        explanation.amount = settings.fmt_points(points);
        explanation.message = if to_referrers > Decimal::ZERO {
            format!(
                "{} points for {}, {} to referrers",
                settings.fmt_points(points),
                action_name(action),
                settings.fmt_points(to_referrers)
            )
        } else {
            format!(
                "{} points for {}",
                settings.fmt_points(points),
                action_name(action)
            )
        };
        response.explanations.push(explanation);
    }
    Ok(response)
}

/// The request's own checks: the customer, the action and the occurrence reference.
fn check_request(
    request: &EvaluateActionRequest,
    now: DateTime<Utc>,
) -> Result<(&CustomerContext, ActionKind, DateTime<Utc>), Error> {
    let mut violations = Violations::new();
    let customer = request
        .customer
        .as_ref()
        .filter(|c| !c.customer_id.is_empty());
    if customer.is_none() {
        violations.add("customer.customer_id", "is required");
    }
    let action = ActionKind::try_from(request.action).unwrap_or(ActionKind::Unspecified);
    if action == ActionKind::Unspecified {
        violations.add(
            "action",
            "an action (ACTION_KIND_REGISTRATION, ACTION_KIND_REVIEW …) is required",
        );
    }
    if request.action_ref.chars().count() > MAX_REF_LEN {
        violations.limit("action_ref", MAX_REF_LEN, "characters");
    }
    if action == ActionKind::Custom && request.custom_code.is_empty() {
        violations.add("custom_code", "is required for ACTION_KIND_CUSTOM");
    }
    let at = match &request.occurred_at {
        None => Some(now),
        Some(t) => kopilka_runtime::timestamps::from_proto(t),
    };
    if at.is_none() {
        violations.add("occurred_at", "is not a valid instant");
    }
    match (customer, at) {
        (Some(c), Some(at)) if violations.is_empty() => Ok((c, action, at)),
        _ => Err(Error::Invalid(violations)),
    }
}

/// Why the rule is not for this action: `(failed path, message)`.
fn mismatch(
    path: &str,
    reward: &ActionReward,
    action: ActionKind,
    custom_code: &str,
) -> Option<(String, String)> {
    if reward.action != action as i32 {
        let wanted = ActionKind::try_from(reward.action).unwrap_or(ActionKind::Unspecified);
        return Some((
            format!("{path}.action_reward.action"),
            format!(
                "the rule rewards {}, not {}",
                action_name(wanted),
                action_name(action)
            ),
        ));
    }
    if action == ActionKind::Custom && reward.custom_code != custom_code {
        return Some((
            format!("{path}.action_reward.custom_code"),
            format!(
                "the rule rewards custom action `{}`, not `{custom_code}`",
                reward.custom_code
            ),
        ));
    }
    None
}

/// The de-duplication key: once ever, once a (local) year for birthdays, else once per
/// occurrence, which then needs the caller's reference.
fn grant_key(
    rule: &Rule,
    reward: &ActionReward,
    action: ActionKind,
    action_ref: &str,
    at: DateTime<Utc>,
    tz: Tz,
) -> Result<String, Error> {
    if reward.once_per_customer {
        Ok(format!("action:{}", rule.id))
    } else if action == ActionKind::Birthday {
        Ok(format!(
            "action:{}:{}",
            rule.id,
            at.with_timezone(&tz).year()
        ))
    } else if action_ref.is_empty() {
        Err(Error::invalid(
            "action_ref",
            format!(
                "is required: rule `{}` rewards each occurrence once, identified by action_ref",
                rule.id
            ),
        ))
    } else {
        Ok(format!("action:{}:{}", rule.id, action_ref))
    }
}

fn lot_kind(action: ActionKind) -> LotKind {
    match action {
        ActionKind::Registration | ActionKind::Birthday | ActionKind::WinBack => LotKind::Gift,
        _ => LotKind::Action,
    }
}

fn action_name(action: ActionKind) -> &'static str {
    action.as_str_name()
}

fn parse_points(path: &str, value: &str, settings: &Settings) -> Result<Decimal, Error> {
    money::parse(value, settings.points_scale, Sign::NonNegative)
        .map_err(|e| Error::invalid(path.to_owned(), e))
}

fn instant(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    kopilka_runtime::timestamps::from_proto(t?)
}

/// The first condition that does not hold for an action at `at`: `(path, message)`.
fn failed_condition(
    path: &str,
    when: &Conditions,
    customer: &CustomerContext,
    at: DateTime<Utc>,
    tz: Tz,
) -> Option<(String, String)> {
    let fail = |field: &str, message: String| Some((format!("{path}.when.{field}"), message));
    if !when.tiers.is_empty() {
        let tier = customer.tier.as_ref().map_or("", |t| t.code.as_str());
        if !when.tiers.iter().any(|t| t == tier) {
            return fail(
                "tiers",
                format!(
                    "the customer's tier `{tier}` is not one of {}",
                    when.tiers.join(", ")
                ),
            );
        }
    }
    if let Some(active) = &when.active {
        let started = instant(active.start.as_ref()).is_none_or(|s| at >= s);
        let ended = instant(active.end.as_ref()).is_some_and(|e| at >= e);
        if !started || ended {
            return fail("active", "outside the rule's active period".to_owned());
        }
    }
    if !when.time_windows.is_empty() && !in_any_window(when, at, tz) {
        return fail(
            "time_windows",
            "outside the rule's local time windows".to_owned(),
        );
    }
    if let Some(days) = when.registered_within_days {
        let registered = instant(customer.registered_at.as_ref());
        if registered.is_none_or(|r| at - r > Duration::days(i64::from(days))) {
            return fail(
                "registered_within_days",
                format!("the customer did not register within the last {days} days"),
            );
        }
    }
    let aggregates = customer.aggregates.as_ref();
    if let Some(since) = &when.since_last_purchase {
        let elapsed = context::last_purchase_at(aggregates).map(|last| at - last);
        let within = since
            .within_days
            .is_none_or(|d| elapsed.is_some_and(|e| e <= Duration::days(i64::from(d))));
        let at_least = since
            .at_least_days
            .is_none_or(|d| elapsed.is_some_and(|e| e >= Duration::days(i64::from(d))));
        if !within || !at_least {
            return fail(
                "since_last_purchase",
                "the time since the last purchase is outside the range".to_owned(),
            );
        }
    }
    if let Some(range) = &when.purchase_count {
        let n = context::purchase_count(aggregates);
        if range.at_least.is_some_and(|l| n < l) || range.at_most.is_some_and(|h| n > h) {
            return fail(
                "purchase_count",
                format!("{n} earlier purchases are outside the range"),
            );
        }
    }
    if let Some(turnover) = &when.turnover {
        let value = match &turnover.lookback {
            None => context::lifetime_turnover(aggregates),
            Some(lb) => context::window_turnover(aggregates, lb).unwrap_or_default(),
        };
        if !in_range(value, turnover.amount.as_ref()) {
            return fail("turnover", "the turnover is outside the range".to_owned());
        }
    }
    None
}

/// Whether `value` is in the range; an unreadable bound fails (validation refuses it).
fn in_range(value: Decimal, range: Option<&AmountRange>) -> bool {
    let Some(r) = range else { return true };
    let bound = |s: &str, test: &dyn Fn(Decimal) -> bool| -> bool {
        s.is_empty() || money::parse(s, 6, Sign::NonNegative).is_ok_and(test)
    };
    bound(&r.at_least, &|b| value >= b)
        && bound(&r.above, &|b| value > b)
        && bound(&r.below, &|b| value < b)
        && bound(&r.at_most, &|b| value <= b)
}

/// Whether the local time of `at` falls in one of the rule's weekly windows. A window ending
/// before it starts spans midnight and belongs to the weekday of its start.
fn in_any_window(when: &Conditions, at: DateTime<Utc>, tz: Tz) -> bool {
    let local = at.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let today = local.weekday().number_from_monday() as i32;
    let yesterday = local.weekday().pred().number_from_monday() as i32;
    when.time_windows.iter().any(|w| {
        let start = if w.start.is_empty() {
            Some(0)
        } else {
            parse_hhmm(&w.start, false)
        };
        let end = if w.end.is_empty() {
            Some(24 * 60)
        } else {
            parse_hhmm(&w.end, true)
        };
        let (Some(start), Some(end)) = (start, end) else {
            return false;
        };
        let on = |day: i32| w.weekdays.is_empty() || w.weekdays.contains(&day);
        if start < end {
            on(today) && (start..end).contains(&minute)
        } else if end < start {
            (on(today) && minute >= start) || (on(yesterday) && minute < end)
        } else {
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{from_yaml, DEMO_PROGRAM_YAML};
    use kopilka_proto::rules::CustomerTier;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).unwrap()
    }

    fn request(action: ActionKind, action_ref: &str) -> EvaluateActionRequest {
        EvaluateActionRequest {
            customer: Some(CustomerContext {
                customer_id: "c1".into(),
                ..Default::default()
            }),
            action: action as i32,
            action_ref: action_ref.into(),
            ..Default::default()
        }
    }

    const PROGRAM: &str = r#"
name: Car wash
settings: {currency: RUB, time_zone: Europe/Moscow}
rules:
  - id: base
    name: 5 % back
    accrue_percent: {percent: "5"}
  - id: reg
    name: Start bonus and referrers
    action_reward:
      action: ACTION_KIND_REGISTRATION
      points: "100"
      once_per_customer: true
      referrer_rewards: [{level: 2, points: "20"}, {level: 1, points: "50"}]
  - id: review
    name: Review reward
    points_terms: {valid_days: 30}
    action_reward: {action: ACTION_KIND_REVIEW, points: "50"}
  - id: bday
    name: Birthday gift
    points_terms: {valid_days: 7}
    action_reward: {action: ACTION_KIND_BIRTHDAY, points: "200"}
  - id: app-rating
    name: Rated the app
    action_reward: {action: ACTION_KIND_CUSTOM, custom_code: app-rating, points: "30"}
  - id: quiz
    name: Quiz
    action_reward: {action: ACTION_KIND_CUSTOM, custom_code: quiz, points: "10"}
  - id: gold-survey
    name: Survey for gold members in 2025
    when:
      tiers: [GOLD]
      active: {start: "2025-01-01T00:00:00Z", end: "2026-01-01T00:00:00Z"}
    action_reward: {action: ACTION_KIND_SURVEY, points: "25"}
  - id: old-survey
    name: Disabled survey
    disabled: true
    action_reward: {action: ACTION_KIND_SURVEY, points: "99"}
"#;

    fn program() -> Program {
        from_yaml(PROGRAM).unwrap()
    }

    fn explanation<'a>(r: &'a EvaluateActionResponse, id: &str) -> &'a Explanation {
        r.explanations.iter().find(|e| e.rule_id == id).unwrap()
    }

    #[test]
    fn start_bonus_100_points_valid_14_days() {
        let p = from_yaml(DEMO_PROGRAM_YAML).unwrap();
        let r = evaluate_action(&p, 3, &request(ActionKind::Registration, ""), at()).unwrap();
        assert_eq!(r.program_version, 3);
        assert_eq!(r.grants.len(), 1);
        let g = &r.grants[0];
        assert_eq!(g.amount, "100");
        assert_eq!(g.kind(), LotKind::Gift);
        assert_eq!(g.grant_key, "action:start-bonus");
        assert_eq!(g.rule_ids, ["start-bonus"]);
        assert_eq!(g.activates_at, None);
        assert_eq!(g.expires_at, Some(timestamp(at() + Duration::days(14))));
        assert!(r.referrer_grants.is_empty());
        let e = explanation(&r, "start-bonus");
        assert_eq!(e.outcome(), RuleOutcome::Applied);
        assert_eq!(e.target(), EffectTarget::Action);
        assert_eq!(e.amount, "100");
        // occurred_at wins over "now".
        let mut req = request(ActionKind::Registration, "");
        req.occurred_at = Some(timestamp(at() - Duration::days(1)));
        let r = evaluate_action(&p, 3, &req, at()).unwrap();
        assert_eq!(
            r.grants[0].expires_at,
            Some(timestamp(at() + Duration::days(13)))
        );
    }

    #[test]
    fn review_reward_per_review_ref() {
        let p = program();
        let r = evaluate_action(&p, 1, &request(ActionKind::Review, "rev-42"), at()).unwrap();
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.grants[0].grant_key, "action:review:rev-42");
        assert_eq!(r.grants[0].kind(), LotKind::Action);
        assert_eq!(r.grants[0].amount, "50");
        assert_eq!(
            r.grants[0].expires_at,
            Some(timestamp(at() + Duration::days(30)))
        );
        let r2 = evaluate_action(&p, 1, &request(ActionKind::Review, "rev-43"), at()).unwrap();
        assert_eq!(r2.grants[0].grant_key, "action:review:rev-43");
        let err = evaluate_action(&p, 1, &request(ActionKind::Review, ""), at()).unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref v) if v.fields()[0].0 == "action_ref"),
            "{err:?}"
        );
    }

    #[test]
    fn registration_rewards_referrers_two_levels() {
        let p = program();
        let mut req = request(ActionKind::Registration, "");
        req.customer.as_mut().unwrap().referrer_customer_ids =
            vec!["p1".into(), "p2".into(), "p3".into()];
        let r = evaluate_action(&p, 1, &req, at()).unwrap();
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.grants[0].grant_key, "action:reg");
        let got: Vec<_> = r
            .referrer_grants
            .iter()
            .map(|b| {
                let g = b.grant.as_ref().unwrap();
                (
                    b.customer_id.as_str(),
                    b.level,
                    g.amount.as_str(),
                    g.kind(),
                    g.grant_key.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("p1", 1, "50", LotKind::Referral, "action:reg:c1"),
                ("p2", 2, "20", LotKind::Referral, "action:reg:c1"),
            ]
        );
        assert_eq!(
            explanation(&r, "reg").message,
            "100 points for ACTION_KIND_REGISTRATION, 70 to referrers"
        );
        // Only one referrer: only level 1 is paid.
        req.customer.as_mut().unwrap().referrer_customer_ids = vec!["p1".into()];
        let r = evaluate_action(&p, 1, &req, at()).unwrap();
        assert_eq!(r.referrer_grants.len(), 1);
    }

    #[test]
    fn birthday_key_uses_the_local_year() {
        let p = program();
        // 2024-12-31 22:00 UTC is 2025-01-01 01:00 in Moscow.
        let utc = DateTime::parse_from_rfc3339("2024-12-31T22:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = evaluate_action(&p, 1, &request(ActionKind::Birthday, ""), utc).unwrap();
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.grants[0].grant_key, "action:bday:2025");
        assert_eq!(r.grants[0].kind(), LotKind::Gift);
        assert_eq!(r.grants[0].amount, "200");
    }

    #[test]
    fn custom_code_matching() {
        let p = program();
        let mut req = request(ActionKind::Custom, "q-7");
        req.custom_code = "quiz".into();
        let r = evaluate_action(&p, 1, &req, at()).unwrap();
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.grants[0].grant_key, "action:quiz:q-7");
        assert_eq!(r.grants[0].kind(), LotKind::Action);
        let other = explanation(&r, "app-rating");
        assert_eq!(other.outcome(), RuleOutcome::ConditionNotMet);
        assert_eq!(other.failed_path, "rules[4].action_reward.custom_code");
        // Receipt rules get no explanation entry.
        assert!(r.explanations.iter().all(|e| e.rule_id != "base"));
        req.custom_code = "nothing".into();
        let r = evaluate_action(&p, 1, &req, at()).unwrap();
        assert!(r.grants.is_empty());
    }

    #[test]
    fn conditions_tiers_and_active() {
        let p = program();
        let mut req = request(ActionKind::Survey, "s-1");
        let r = evaluate_action(&p, 1, &req, at()).unwrap();
        assert!(r.grants.is_empty());
        let e = explanation(&r, "gold-survey");
        assert_eq!(e.outcome(), RuleOutcome::ConditionNotMet);
        assert_eq!(e.failed_path, "rules[6].when.tiers");
        assert_eq!(
            explanation(&r, "old-survey").outcome(),
            RuleOutcome::Disabled
        );

        req.customer.as_mut().unwrap().tier = Some(CustomerTier {
            code: "GOLD".into(),
            ..Default::default()
        });
        let r = evaluate_action(&p, 1, &req, at()).unwrap();
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.grants[0].amount, "25");
        assert_eq!(r.grants[0].grant_key, "action:gold-survey:s-1");

        let late = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = evaluate_action(&p, 1, &req, late).unwrap();
        assert_eq!(
            explanation(&r, "gold-survey").failed_path,
            "rules[6].when.active"
        );
    }

    #[test]
    fn zero_matching_rules_give_nothing() {
        let p = program();
        let r = evaluate_action(&p, 1, &request(ActionKind::AppInstall, "x"), at()).unwrap();
        assert!(r.grants.is_empty() && r.referrer_grants.is_empty());
        assert!(r
            .explanations
            .iter()
            .filter(|e| e.outcome() != RuleOutcome::Disabled)
            .all(|e| e.outcome() == RuleOutcome::ConditionNotMet
                && e.failed_path.ends_with(".action_reward.action")));
    }

    #[test]
    fn points_use_the_points_scale_and_windows_local_time() {
        let p = from_yaml(
            r#"
name: Scaled
settings: {currency: RUB, time_zone: Europe/Moscow, points_scale: 2}
rules:
  - id: sub
    name: Subscribed in the morning
    when: {time_windows: [{start: "22:00", end: "02:00"}]}
    action_reward: {action: ACTION_KIND_SUBSCRIPTION, points: "10.5", once_per_customer: true}
"#,
        )
        .unwrap();
        // 20:30 UTC = 23:30 Moscow: inside 22:00-02:00.
        let t = DateTime::parse_from_rfc3339("2025-06-02T20:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = evaluate_action(&p, 1, &request(ActionKind::Subscription, ""), t).unwrap();
        assert_eq!(r.grants[0].amount, "10.50");
        let noon = t + Duration::hours(12);
        let r = evaluate_action(&p, 1, &request(ActionKind::Subscription, ""), noon).unwrap();
        assert!(r.grants.is_empty());
        assert_eq!(
            explanation(&r, "sub").failed_path,
            "rules[0].when.time_windows"
        );
    }

    #[test]
    fn bad_requests_name_their_fields() {
        let p = program();
        let req = EvaluateActionRequest {
            action_ref: "x".repeat(65),
            ..Default::default()
        };
        let Err(Error::Invalid(v)) = evaluate_action(&p, 1, &req, at()) else {
            panic!("expected Invalid");
        };
        let fields: Vec<&str> = v.fields().iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["customer.customer_id", "action", "action_ref"]);
        let mut req = request(ActionKind::Custom, "r");
        req.occurred_at = Some(Timestamp {
            seconds: i64::MAX,
            nanos: -3,
        });
        let Err(Error::Invalid(v)) = evaluate_action(&p, 1, &req, at()) else {
            panic!("expected Invalid");
        };
        let fields: Vec<&str> = v.fields().iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["custom_code", "occurred_at"]);
        let mut req = request(ActionKind::Review, "r");
        req.action = 99;
        assert!(evaluate_action(&p, 1, &req, at()).is_err());
    }
}
