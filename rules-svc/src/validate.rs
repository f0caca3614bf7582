//! Program validation (ProgramService.ValidateProgram / PublishVersion): every constraint the
//! comments of program.proto state, reported with the exact path of the bad field, plus what
//! evaluating the program needs from the caller ([`EvaluationNeeds`]).
//!
//! Codes are those of `Violation.code`. Where the list has no specific code, a value outside
//! its allowed set (an unknown enum value, a bad id, an unknown time zone, a count out of
//! bounds) is `OUT_OF_RANGE`; a decimal string with the wrong syntax or scale is `BAD_DECIMAL`
//! while a well-formed one with the wrong sign is `OUT_OF_RANGE`; a bad "HH:MM" or a period
//! ending before it starts is `BAD_TIME`.

use std::collections::HashSet;

use kopilka_proto::rules::{
    bracket, referral_level, rule::Effect, stamp_card, ActionReward, AmountBasis, BracketBasis,
    BracketTable, Conditions, DiscountCombination, EvaluationNeeds, GroupMode, Per, Program,
    ProgramSettings, ReferralLevel, Rule, Scope, TierDowngrade, TierLevel, TierProgression,
    Violation, ViolationSeverity,
};
use kopilka_proto::types::{
    lookback::Span, ActionKind, AmountRange, Lookback, Period, Rounding as RoundingProto, Weekday,
};
use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::context::same_lookback;
use crate::money::{self, Sign};
use crate::settings::currency_scale;

/// The stable violation codes (`Violation.code`).
pub mod code {
    pub const DUPLICATE_ID: &str = "DUPLICATE_ID";
    pub const REQUIRED: &str = "REQUIRED";
    pub const OUT_OF_RANGE: &str = "OUT_OF_RANGE";
    pub const BAD_DECIMAL: &str = "BAD_DECIMAL";
    pub const BAD_TIME: &str = "BAD_TIME";
    pub const EMPTY_TIME_WINDOW: &str = "EMPTY_TIME_WINDOW";
    pub const BRACKETS_NOT_ASCENDING: &str = "BRACKETS_NOT_ASCENDING";
    pub const UNKNOWN_TIER: &str = "UNKNOWN_TIER";
    pub const UNKNOWN_CATEGORY: &str = "UNKNOWN_CATEGORY";
    pub const UNKNOWN_GROUP: &str = "UNKNOWN_GROUP";
    pub const TIER_ORDER: &str = "TIER_ORDER";
    pub const NO_EFFECT: &str = "NO_EFFECT";
    pub const CONFLICT: &str = "CONFLICT";
    pub const UNREACHABLE: &str = "UNREACHABLE";
}

use code::*;

const MAX_RULES: usize = 500;
const MAX_GROUPS: usize = 50;
const MAX_TIER_LEVELS: usize = 50;
const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2000;
const MAX_BRACKETS: usize = 20;
const MAX_PROMO_CODES: usize = 100;
const MAX_PROMO_CODE_LEN: usize = 32;
const MAX_CUSTOM_CODE_LEN: usize = 64;
const MAX_REFERRAL_LEVEL: u32 = 10;
/// Decimal places of percentages and factors.
const PERCENT_SCALE: u32 = 4;
/// Decimal places of quantities (weighted goods).
const QUANTITY_SCALE: u32 = 3;
/// Decimal places of the point value (the contract's most).
const POINT_VALUE_SCALE: u32 = 6;

/// What the program is checked against besides itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    /// The merchant's tier codes; `None` = references are not checked.
    pub tier_codes: Option<&'a [String]>,
    /// The merchant's catalog; `None` or empty = the merchant has no catalog, so unknown
    /// categories are warnings (catalog.proto).
    pub catalog: Option<&'a Catalog>,
}

/// The outcome of validation: every finding, and what evaluation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub needs: EvaluationNeeds,
}

impl Report {
    /// True if there is no ERROR violation.
    pub fn is_valid(&self) -> bool {
        !self.violations.iter().any(is_error)
    }

    pub fn errors(&self) -> Vec<Violation> {
        self.violations
            .iter()
            .filter(|v| is_error(v))
            .cloned()
            .collect()
    }

    pub fn warnings(&self) -> Vec<Violation> {
        self.violations
            .iter()
            .filter(|v| !is_error(v))
            .cloned()
            .collect()
    }
}

fn is_error(v: &Violation) -> bool {
    v.severity == ViolationSeverity::Error as i32
}

/// Validates `program` against what is `known` about the merchant.
pub fn validate(program: &Program, known: &Known) -> Report {
    let default_settings = ProgramSettings::default();
    let settings = program.settings.as_ref().unwrap_or(&default_settings);
    let catalog = known.catalog.filter(|c| !c.is_empty());
    let mut c = Checker {
        tier_codes: known.tier_codes,
        catalog,
        violations: Vec::new(),
        needs: EvaluationNeeds::default(),
        // An unknown currency is reported in settings; checking against the largest scale
        // avoids noise.
        money_scale: currency_scale(&settings.currency).unwrap_or(4),
        // A bad scale is reported in settings; checking against the largest avoids noise.
        points_scale: settings.points_scale.min(4),
        reading: true,
    };
    c.text("name", &program.name, true, MAX_NAME);
    c.text("description", &program.description, false, MAX_DESCRIPTION);
    c.settings(settings);
    let groups = c.groups(program);
    if program.rules.len() > MAX_RULES {
        c.error(
            "rules",
            OUT_OF_RANGE,
            format!("at most {MAX_RULES} rules are allowed"),
        );
    }
    let mut rule_ids = HashSet::new();
    for (i, rule) in program.rules.iter().enumerate() {
        c.rule(i, rule, &groups, &mut rule_ids);
    }
    unreachable_rules(&mut c, program);
    if let Some(progression) = &program.tier_progression {
        c.tier_progression(progression);
    }
    Report {
        violations: c.violations,
        needs: c.needs,
    }
}

/// Groups by id with their mode (for the FIRST-group shadowing check).
type Groups = Vec<(String, GroupMode)>;

struct Checker<'a> {
    tier_codes: Option<&'a [String]>,
    catalog: Option<&'a Catalog>,
    violations: Vec<Violation>,
    needs: EvaluationNeeds,
    money_scale: u32,
    points_scale: u32,
    /// False while checking a disabled rule: it is validated but evaluation never reads it.
    reading: bool,
}

impl Checker<'_> {
    fn push(&mut self, field: &str, code: &str, description: String, severity: ViolationSeverity) {
        self.violations.push(Violation {
            field: field.to_owned(),
            code: code.to_owned(),
            description,
            severity: severity as i32,
        });
    }

    fn error(&mut self, field: &str, code: &str, description: impl Into<String>) {
        self.push(field, code, description.into(), ViolationSeverity::Error);
    }

    fn warning(&mut self, field: &str, code: &str, description: impl Into<String>) {
        self.push(field, code, description.into(), ViolationSeverity::Warning);
    }

    // ---- scalar checks ----

    fn text(&mut self, field: &str, value: &str, required: bool, max_chars: usize) {
        if value.trim().is_empty() {
            if required {
                self.error(field, REQUIRED, "is required");
            }
        } else if value.chars().count() > max_chars {
            self.error(
                field,
                OUT_OF_RANGE,
                format!("must be at most {max_chars} characters"),
            );
        }
    }

    /// A rule or group id: `[a-z0-9][a-z0-9_-]{0,63}`.
    fn id(&mut self, field: &str, value: &str) -> bool {
        if value.is_empty() {
            self.error(field, REQUIRED, "is required");
            return false;
        }
        let bytes = value.as_bytes();
        let ok = bytes.len() <= 64
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if !ok {
            self.error(
                field,
                OUT_OF_RANGE,
                format!("`{value}` is not an id: use a-z, 0-9, '_' and '-', starting with a letter or digit, at most 64 characters"),
            );
        }
        ok
    }

    fn count(&mut self, field: &str, value: u32, low: u32, high: u32) -> bool {
        let ok = (low..=high).contains(&value);
        if !ok {
            self.error(
                field,
                OUT_OF_RANGE,
                format!("must be {low} to {high}, got {value}"),
            );
        }
        ok
    }

    fn enum_value<E: TryFrom<i32>>(&mut self, field: &str, value: i32) -> bool {
        let ok = E::try_from(value).is_ok();
        if !ok {
            self.error(field, OUT_OF_RANGE, format!("{value} is not a known value"));
        }
        ok
    }

    /// A decimal string with at most `scale` decimals and the given sign. Empty = not set.
    fn decimal(
        &mut self,
        field: &str,
        value: &str,
        scale: u32,
        sign: Sign,
        required: bool,
    ) -> Option<Decimal> {
        if value.is_empty() {
            if required {
                self.error(field, REQUIRED, "is required");
            }
            return None;
        }
        match money::parse(value, scale, sign) {
            Ok(d) => Some(d),
            Err(description) => {
                // Well-formed at this scale but refused: the sign is what is wrong.
                let well_formed = money::parse(value, scale, Sign::NonNegative).is_ok()
                    || money::parse(value, scale, Sign::NonZero).is_ok();
                let code = if well_formed {
                    OUT_OF_RANGE
                } else {
                    BAD_DECIMAL
                };
                self.error(field, code, description);
                None
            }
        }
    }

    fn money(&mut self, field: &str, value: &str, sign: Sign, required: bool) -> Option<Decimal> {
        self.decimal(field, value, self.money_scale, sign, required)
    }

    fn points(&mut self, field: &str, value: &str, sign: Sign, required: bool) -> Option<Decimal> {
        self.decimal(field, value, self.points_scale, sign, required)
    }

    /// A percentage with at most 4 decimals, `> 0` (or `>= 0` with `allow_zero`) and `<= 100`.
    fn percent(
        &mut self,
        field: &str,
        value: &str,
        required: bool,
        allow_zero: bool,
    ) -> Option<Decimal> {
        let sign = if allow_zero {
            Sign::NonNegative
        } else {
            Sign::Positive
        };
        let d = self.decimal(field, value, PERCENT_SCALE, sign, required)?;
        if d > Decimal::ONE_HUNDRED {
            self.error(field, OUT_OF_RANGE, format!("{value} is over 100 %"));
            return None;
        }
        Some(d)
    }

    /// "HH:MM" as minutes since midnight; "24:00" only where `end_of_day` is allowed.
    fn time_of_day(&mut self, field: &str, value: &str, end_of_day: bool) -> Option<u32> {
        let minutes = parse_hhmm(value, end_of_day);
        if minutes.is_none() {
            let allowed = if end_of_day {
                "00:00 to 24:00"
            } else {
                "00:00 to 23:59"
            };
            self.error(
                field,
                BAD_TIME,
                format!("`{value}` is not a time \"HH:MM\" ({allowed})"),
            );
        }
        minutes
    }

    fn lookback(&mut self, field: &str, lookback: Option<&Lookback>, required: bool) -> bool {
        let Some(lookback) = lookback else {
            if required {
                self.error(field, REQUIRED, "a window (days or months) is required");
            }
            return false;
        };
        match lookback.span {
            None => {
                self.error(field, REQUIRED, "set days or months");
                false
            }
            Some(Span::Days(d)) => self.count(&format!("{field}.days"), d, 1, 3660),
            Some(Span::Months(m)) => self.count(&format!("{field}.months"), m, 1, 120),
        }
    }

    /// An AmountRange of money: bounds valid, at least one set. Returns whether it can hold
    /// any amount at all (false = an empty range, reported by the caller as it sees fit).
    fn amount_range(&mut self, field: &str, range: Option<&AmountRange>) -> bool {
        let Some(r) = range else {
            self.error(
                field,
                REQUIRED,
                "set at least one bound (at_least, above, below, at_most)",
            );
            return true;
        };
        if r.at_least.is_empty() && r.above.is_empty() && r.below.is_empty() && r.at_most.is_empty()
        {
            self.error(
                field,
                REQUIRED,
                "set at least one bound (at_least, above, below, at_most)",
            );
            return true;
        }
        if !r.at_least.is_empty() && !r.above.is_empty() {
            self.error(
                &format!("{field}.above"),
                CONFLICT,
                "set at_least or above, not both",
            );
        }
        if !r.below.is_empty() && !r.at_most.is_empty() {
            self.error(
                &format!("{field}.at_most"),
                CONFLICT,
                "set below or at_most, not both",
            );
        }
        let mut bound = |name: &str, value: &str| {
            self.money(&format!("{field}.{name}"), value, Sign::NonNegative, false)
        };
        let at_least = bound("at_least", &r.at_least);
        let above = bound("above", &r.above);
        let below = bound("below", &r.below);
        let at_most = bound("at_most", &r.at_most);
        let lower = at_least.map(|v| (v, false)).or(above.map(|v| (v, true)));
        let upper = below.map(|v| (v, true)).or(at_most.map(|v| (v, false)));
        match (lower, upper) {
            (Some((lo, lo_open)), Some((hi, hi_open))) => {
                lo < hi || (lo == hi && !lo_open && !hi_open)
            }
            _ => true,
        }
    }

    fn category(&mut self, field: &str, id: &str) {
        if id.is_empty() {
            self.error(field, REQUIRED, "a category id is required");
            return;
        }
        if self.reading && !self.needs.category_ids.iter().any(|c| c == id) {
            self.needs.category_ids.push(id.to_owned());
        }
        match self.catalog {
            Some(catalog) if !catalog.contains(id) => {
                self.error(field, UNKNOWN_CATEGORY, format!("category `{id}` is not in the catalog"));
            }
            Some(_) => {}
            None => self.warning(
                field,
                UNKNOWN_CATEGORY,
                format!("category `{id}` cannot be checked: the merchant has no catalog, so baskets must send it on each line"),
            ),
        }
    }

    fn tier(&mut self, field: &str, code: &str) {
        if code.is_empty() {
            self.error(field, REQUIRED, "a tier code is required");
            return;
        }
        if self.reading && !self.needs.tier_codes.iter().any(|c| c == code) {
            self.needs.tier_codes.push(code.to_owned());
        }
        if let Some(known) = self.tier_codes {
            if !known.iter().any(|k| k == code) {
                self.error(field, UNKNOWN_TIER, format!("tier `{code}` does not exist"));
            }
        }
    }

    fn product(&mut self, field: &str, id: &str) {
        if id.is_empty() {
            self.error(field, REQUIRED, "a product id is required");
        }
    }

    // ---- what evaluation reads ----

    fn need_lookback(&mut self, lookback: &Lookback) {
        if !self.reading {
            return;
        }
        self.needs.aggregates = true;
        if !self
            .needs
            .lookbacks
            .iter()
            .any(|l| same_lookback(l, lookback))
        {
            self.needs.lookbacks.push(*lookback);
        }
    }

    fn need_aggregates(&mut self) {
        if self.reading {
            self.needs.aggregates = true;
        }
    }

    fn need_referral_levels(&mut self, level: u32) {
        if self.reading && level <= MAX_REFERRAL_LEVEL {
            self.needs.referral_levels = self.needs.referral_levels.max(level);
        }
    }

    // ---- the document ----

    fn settings(&mut self, s: &ProgramSettings) {
        if s.currency.is_empty() {
            self.error(
                "settings.currency",
                REQUIRED,
                "the currency (ISO 4217, e.g. RUB) is required",
            );
        } else if s.currency.len() != 3 || !s.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            self.error(
                "settings.currency",
                OUT_OF_RANGE,
                format!(
                    "`{}` is not an ISO 4217 code of 3 upper-case letters",
                    s.currency
                ),
            );
        } else if currency_scale(&s.currency).is_none() {
            self.error(
                "settings.currency",
                OUT_OF_RANGE,
                format!(
                    "`{}` is not an ISO 4217 currency with a minor unit (e.g. RUB, KZT, XPF)",
                    s.currency
                ),
            );
        }
        if s.time_zone.is_empty() {
            self.error(
                "settings.time_zone",
                REQUIRED,
                "the IANA time zone (e.g. Europe/Moscow) is required",
            );
        } else if s.time_zone.parse::<chrono_tz::Tz>().is_err() {
            self.error(
                "settings.time_zone",
                OUT_OF_RANGE,
                format!("`{}` is not an IANA time zone", s.time_zone),
            );
        }
        self.enum_value::<RoundingProto>("settings.money_rounding", s.money_rounding);
        self.enum_value::<RoundingProto>("settings.points_rounding", s.points_rounding);
        self.count("settings.points_scale", s.points_scale, 0, 4);
        self.decimal(
            "settings.point_value",
            &s.point_value,
            POINT_VALUE_SCALE,
            Sign::Positive,
            false,
        );
        self.count(
            "settings.accrual_activation_days",
            s.accrual_activation_days,
            0,
            365,
        );
        self.count(
            "settings.accrual_validity_days",
            s.accrual_validity_days,
            0,
            3660,
        );
        self.percent(
            "settings.max_redeem_share_percent",
            &s.max_redeem_share_percent,
            false,
            true,
        );
        self.money(
            "settings.min_money_payment",
            &s.min_money_payment,
            Sign::NonNegative,
            false,
        );
        self.enum_value::<DiscountCombination>(
            "settings.discount_combination",
            s.discount_combination,
        );
        self.percent(
            "settings.max_discount_percent",
            &s.max_discount_percent,
            false,
            true,
        );
        if !s.locale.is_empty() && !is_language_tag(&s.locale) {
            self.error(
                "settings.locale",
                OUT_OF_RANGE,
                format!(
                    "`{}` is not a BCP 47 language tag such as ru or en-US",
                    s.locale
                ),
            );
        }
    }

    fn groups(&mut self, program: &Program) -> Groups {
        if program.groups.len() > MAX_GROUPS {
            self.error(
                "groups",
                OUT_OF_RANGE,
                format!("at most {MAX_GROUPS} groups are allowed"),
            );
        }
        let mut groups: Groups = Vec::new();
        for (i, g) in program.groups.iter().enumerate() {
            let path = format!("groups[{i}]");
            if self.id(&format!("{path}.id"), &g.id) {
                if groups.iter().any(|(id, _)| *id == g.id) {
                    self.error(
                        &format!("{path}.id"),
                        DUPLICATE_ID,
                        format!("group id `{}` is used twice", g.id),
                    );
                } else {
                    groups.push((
                        g.id.clone(),
                        GroupMode::try_from(g.mode).unwrap_or_default(),
                    ));
                }
            }
            self.text(&format!("{path}.name"), &g.name, false, MAX_NAME);
            self.enum_value::<GroupMode>(&format!("{path}.mode"), g.mode);
        }
        groups
    }

    fn rule(&mut self, i: usize, rule: &Rule, groups: &Groups, ids: &mut HashSet<String>) {
        let path = format!("rules[{i}]");
        self.reading = !rule.disabled;
        if self.id(&format!("{path}.id"), &rule.id) && !ids.insert(rule.id.clone()) {
            self.error(
                &format!("{path}.id"),
                DUPLICATE_ID,
                format!("rule id `{}` is used twice", rule.id),
            );
        }
        self.text(&format!("{path}.name"), &rule.name, true, MAX_NAME);
        self.text(
            &format!("{path}.description"),
            &rule.description,
            false,
            MAX_DESCRIPTION,
        );
        if !rule.group.is_empty() && !groups.iter().any(|(id, _)| *id == rule.group) {
            self.error(
                &format!("{path}.group"),
                UNKNOWN_GROUP,
                format!("group `{}` is not defined in groups", rule.group),
            );
        }
        if let Some(when) = &rule.when {
            self.conditions(&format!("{path}.when"), when);
        }
        if let Some(scope) = &rule.scope {
            self.scope(&format!("{path}.scope"), scope);
        }
        if let Some(terms) = &rule.points_terms {
            if let Some(days) = terms.valid_days {
                self.count(&format!("{path}.points_terms.valid_days"), days, 0, 3660);
            }
            if let Some(days) = terms.activation_delay_days {
                self.count(
                    &format!("{path}.points_terms.activation_delay_days"),
                    days,
                    0,
                    365,
                );
            }
        }
        match &rule.effect {
            None => self.error(&path, NO_EFFECT, "the rule has no effect: set exactly one effect (discount_percent, accrue_percent …)"),
            Some(effect) => self.effect(&path, rule, effect),
        }
        self.reading = true;
    }

    fn conditions(&mut self, path: &str, when: &Conditions) {
        for (j, tier) in when.tiers.iter().enumerate() {
            self.tier(&format!("{path}.tiers[{j}]"), tier);
        }
        if let Some(active) = &when.active {
            self.period(&format!("{path}.active"), active);
        }
        for (k, window) in when.time_windows.iter().enumerate() {
            let wpath = format!("{path}.time_windows[{k}]");
            for (m, day) in window.weekdays.iter().enumerate() {
                let field = format!("{wpath}.weekdays[{m}]");
                if *day == Weekday::Unspecified as i32 {
                    self.error(
                        &field,
                        OUT_OF_RANGE,
                        "WEEKDAY_UNSPECIFIED is not a day of the week",
                    );
                } else {
                    self.enum_value::<Weekday>(&field, *day);
                }
            }
            let start = if window.start.is_empty() {
                Some(0)
            } else {
                self.time_of_day(&format!("{wpath}.start"), &window.start, false)
            };
            let end = if window.end.is_empty() {
                Some(24 * 60)
            } else {
                self.time_of_day(&format!("{wpath}.end"), &window.end, true)
            };
            // Equal start and end is no time at all (00:00-24:00 is the whole day).
            if let (Some(s), Some(e)) = (start, end) {
                if s == e {
                    self.error(
                        &format!("{wpath}.end"),
                        EMPTY_TIME_WINDOW,
                        "start and end are equal: the window is empty",
                    );
                }
            }
        }
        if let Some(b) = &when.birthday {
            self.count(
                &format!("{path}.birthday.days_before"),
                b.days_before,
                0,
                31,
            );
            self.count(&format!("{path}.birthday.days_after"), b.days_after, 0, 31);
            if self.reading {
                self.needs.birth_date = true;
            }
        }
        if let Some(since) = &when.since_last_purchase {
            self.need_aggregates();
            match (since.within_days, since.at_least_days) {
                (None, None) => self.error(
                    &format!("{path}.since_last_purchase"),
                    REQUIRED,
                    "set within_days or at_least_days",
                ),
                (Some(within), Some(at_least)) if at_least > within => self.warning(
                    &format!("{path}.since_last_purchase"),
                    UNREACHABLE,
                    format!("at least {at_least} days and at most {within} days since the last purchase can never both hold"),
                ),
                _ => {}
            }
        }
        if let Some(turnover) = &when.turnover {
            let tpath = format!("{path}.turnover");
            match &turnover.lookback {
                Some(lb) => {
                    if self.lookback(&format!("{tpath}.lookback"), Some(lb), true) {
                        self.need_lookback(lb);
                    }
                }
                None => self.need_aggregates(),
            }
            if !self.amount_range(&format!("{tpath}.amount"), turnover.amount.as_ref()) {
                self.warning(
                    &format!("{tpath}.amount"),
                    UNREACHABLE,
                    "the range is empty: no turnover is in it",
                );
            }
        }
        if let Some(total) = &when.receipt_total {
            if !self.amount_range(&format!("{path}.receipt_total"), Some(total)) {
                self.warning(
                    &format!("{path}.receipt_total"),
                    UNREACHABLE,
                    "the range is empty (lower bound above the upper one): no receipt total is in it",
                );
            }
        }
        if let Some(promo) = &when.promo_code {
            let ppath = format!("{path}.promo_code.codes");
            if promo.codes.is_empty() {
                self.error(&ppath, REQUIRED, "at least one promo code is required");
            } else if promo.codes.len() > MAX_PROMO_CODES {
                self.error(
                    &ppath,
                    OUT_OF_RANGE,
                    format!("at most {MAX_PROMO_CODES} codes are allowed"),
                );
            }
            for (j, code) in promo.codes.iter().enumerate() {
                let field = format!("{ppath}[{j}]");
                if code.is_empty() {
                    self.error(&field, REQUIRED, "a promo code must not be empty");
                } else if code.chars().count() > MAX_PROMO_CODE_LEN {
                    self.error(
                        &field,
                        OUT_OF_RANGE,
                        format!("a promo code is at most {MAX_PROMO_CODE_LEN} characters"),
                    );
                }
            }
            if self.reading {
                self.needs.promo_codes = true;
            }
        }
        for (j, store) in when.store_ids.iter().enumerate() {
            if store.is_empty() {
                self.error(
                    &format!("{path}.store_ids[{j}]"),
                    REQUIRED,
                    "a store id must not be empty",
                );
            }
        }
        if let Some(count) = &when.purchase_count {
            self.need_aggregates();
            if let (Some(low), Some(high)) = (count.at_least, count.at_most) {
                if low > high {
                    self.error(
                        &format!("{path}.purchase_count.at_most"),
                        OUT_OF_RANGE,
                        format!("at_most {high} is below at_least {low}"),
                    );
                }
            }
        }
        if let Some(basket) = &when.basket_contains {
            let bpath = format!("{path}.basket_contains");
            if basket.product_ids.is_empty() && basket.category_ids.is_empty() {
                self.error(
                    &format!("{bpath}.product_ids"),
                    REQUIRED,
                    "name at least one product or category",
                );
            }
            for (j, id) in basket.product_ids.iter().enumerate() {
                self.product(&format!("{bpath}.product_ids[{j}]"), id);
            }
            for (j, id) in basket.category_ids.iter().enumerate() {
                self.category(&format!("{bpath}.category_ids[{j}]"), id);
            }
            self.decimal(
                &format!("{bpath}.min_quantity"),
                &basket.min_quantity,
                QUANTITY_SCALE,
                Sign::Positive,
                false,
            );
            self.money(
                &format!("{bpath}.min_amount"),
                &basket.min_amount,
                Sign::NonNegative,
                false,
            );
        }
    }

    fn period(&mut self, path: &str, period: &Period) {
        let start = self.instant(&format!("{path}.start"), period.start.as_ref());
        let end = self.instant(&format!("{path}.end"), period.end.as_ref());
        if let (Some(s), Some(e)) = (start, end) {
            if e <= s {
                self.error(
                    &format!("{path}.end"),
                    BAD_TIME,
                    "the end must be after the start",
                );
            }
        }
    }

    fn instant(
        &mut self,
        field: &str,
        t: Option<&kopilka_proto::wkt::Timestamp>,
    ) -> Option<(i64, i32)> {
        let t = t?;
        if chrono::DateTime::from_timestamp(t.seconds, 0).is_none()
            || !(0..1_000_000_000).contains(&t.nanos)
        {
            self.error(field, BAD_TIME, "not a valid instant");
            return None;
        }
        Some((t.seconds, t.nanos))
    }

    fn scope(&mut self, path: &str, scope: &Scope) {
        for (j, id) in scope.product_ids.iter().enumerate() {
            self.product(&format!("{path}.product_ids[{j}]"), id);
        }
        for (j, id) in scope.exclude_product_ids.iter().enumerate() {
            self.product(&format!("{path}.exclude_product_ids[{j}]"), id);
        }
        for (j, id) in scope.category_ids.iter().enumerate() {
            self.category(&format!("{path}.category_ids[{j}]"), id);
        }
        for (j, id) in scope.exclude_category_ids.iter().enumerate() {
            self.category(&format!("{path}.exclude_category_ids[{j}]"), id);
        }
    }

    fn effect(&mut self, path: &str, rule: &Rule, effect: &Effect) {
        match effect {
            Effect::DiscountPercent(e) => {
                let p = format!("{path}.discount_percent");
                self.percent(&format!("{p}.percent"), &e.percent, true, false);
                self.money(
                    &format!("{p}.max_amount"),
                    &e.max_amount,
                    Sign::Positive,
                    false,
                );
            }
            Effect::DiscountFixed(e) => {
                let p = format!("{path}.discount_fixed");
                self.money(&format!("{p}.amount"), &e.amount, Sign::Positive, true);
                self.enum_value::<Per>(&format!("{p}.per"), e.per);
            }
            Effect::DiscountBrackets(t) => {
                self.brackets(&format!("{path}.discount_brackets"), t, true)
            }
            Effect::AccrueBrackets(t) => {
                self.brackets(&format!("{path}.accrue_brackets"), t, false)
            }
            Effect::AccruePercent(e) => {
                let p = format!("{path}.accrue_percent");
                self.percent(&format!("{p}.percent"), &e.percent, true, false);
                self.enum_value::<AmountBasis>(&format!("{p}.basis"), e.basis);
                self.points(
                    &format!("{p}.max_points"),
                    &e.max_points,
                    Sign::Positive,
                    false,
                );
            }
            Effect::AccruePerAmount(e) => {
                let p = format!("{path}.accrue_per_amount");
                self.points(&format!("{p}.points"), &e.points, Sign::Positive, true);
                self.money(&format!("{p}.every"), &e.every, Sign::Positive, true);
                if self.enum_value::<Per>(&format!("{p}.per"), e.per) && e.per == Per::Unit as i32 {
                    self.error(
                        &format!("{p}.per"),
                        OUT_OF_RANGE,
                        "PER_UNIT is not valid here: use PER_RECEIPT or PER_LINE",
                    );
                }
                self.enum_value::<AmountBasis>(&format!("{p}.basis"), e.basis);
            }
            Effect::AccrueFixed(e) => {
                let p = format!("{path}.accrue_fixed");
                self.points(&format!("{p}.points"), &e.points, Sign::Positive, true);
                self.enum_value::<Per>(&format!("{p}.per"), e.per);
            }
            Effect::Cashback(e) => {
                let p = format!("{path}.cashback");
                self.percent(&format!("{p}.percent"), &e.percent, true, false);
                self.points(
                    &format!("{p}.max_points"),
                    &e.max_points,
                    Sign::Positive,
                    false,
                );
            }
            Effect::AccrualMultiplier(e) => {
                let p = format!("{path}.accrual_multiplier.factor");
                if let Some(f) = self.decimal(&p, &e.factor, PERCENT_SCALE, Sign::Positive, true) {
                    if f > Decimal::ONE_HUNDRED {
                        self.error(&p, OUT_OF_RANGE, "the factor is at most 100");
                    }
                }
            }
            Effect::TierRates(e) => {
                if !(e.discount || e.accrual || e.redemption_share) {
                    self.error(
                        &format!("{path}.tier_rates"),
                        NO_EFFECT,
                        "set at least one of discount, accrual, redemption_share",
                    );
                }
            }
            Effect::Exclude(e) => {
                if !(e.from_discount || e.from_accrual || e.from_redemption) {
                    self.error(
                        &format!("{path}.exclude"),
                        NO_EFFECT,
                        "set at least one of from_discount, from_accrual, from_redemption",
                    );
                }
            }
            Effect::RedemptionLimit(e) => {
                let p = format!("{path}.redemption_limit");
                self.percent(
                    &format!("{p}.max_share_percent"),
                    &e.max_share_percent,
                    false,
                    true,
                );
                self.points(
                    &format!("{p}.max_points"),
                    &e.max_points,
                    Sign::NonNegative,
                    false,
                );
                if e.max_share_percent.is_empty() && e.max_points.is_empty() {
                    self.error(&p, NO_EFFECT, "set max_share_percent or max_points");
                }
            }
            Effect::NForM(e) => {
                let p = format!("{path}.n_for_m");
                if self.count(&format!("{p}.buy"), e.buy, 2, 100) {
                    self.count(&format!("{p}.pay"), e.pay, 1, e.buy - 1);
                } else if e.pay == 0 {
                    self.count(&format!("{p}.pay"), e.pay, 1, 99);
                }
            }
            Effect::NthItem(e) => {
                let p = format!("{path}.nth_item");
                self.count(&format!("{p}.every"), e.every, 2, 100);
                self.percent(&format!("{p}.percent"), &e.percent, true, false);
            }
            Effect::StampCard(e) => {
                let p = format!("{path}.stamp_card");
                self.count(&format!("{p}.every"), e.every, 2, 100);
                if self.enum_value::<Per>(&format!("{p}.per"), e.per) && e.per == Per::Line as i32 {
                    self.error(
                        &format!("{p}.per"),
                        OUT_OF_RANGE,
                        "PER_LINE is not valid here: use PER_UNIT or PER_RECEIPT",
                    );
                }
                match &e.reward {
                    Some(stamp_card::Reward::DiscountPercent(v)) => {
                        self.percent(&format!("{p}.discount_percent"), v, true, false);
                    }
                    Some(stamp_card::Reward::Points(v)) => {
                        self.points(&format!("{p}.points"), v, Sign::Positive, true);
                    }
                    None => {}
                }
                if self.reading {
                    self.needs.stamps = true;
                }
            }
            Effect::ReferralReward(e) => {
                let p = format!("{path}.referral_reward");
                if e.levels.is_empty() {
                    self.error(
                        &format!("{p}.levels"),
                        REQUIRED,
                        "at least one level is required",
                    );
                }
                self.referral_levels(&format!("{p}.levels"), &e.levels, false);
                if e.max_purchases > 0 {
                    self.need_aggregates();
                }
            }
            Effect::ActionReward(e) => self.action_reward(path, rule, e),
        }
    }

    fn brackets(&mut self, path: &str, table: &BracketTable, discount: bool) {
        let basis_ok = self.enum_value::<BracketBasis>(&format!("{path}.basis"), table.basis);
        if basis_ok && table.basis == BracketBasis::WindowTurnover as i32 {
            if self.lookback(&format!("{path}.lookback"), table.lookback.as_ref(), true) {
                if let Some(lb) = &table.lookback {
                    self.need_lookback(lb);
                }
            }
        } else if basis_ok && table.basis == BracketBasis::LifetimeTurnover as i32 {
            self.need_aggregates();
        }
        if table.brackets.is_empty() {
            self.error(
                &format!("{path}.brackets"),
                REQUIRED,
                "at least one bracket is required",
            );
        } else if table.brackets.len() > MAX_BRACKETS {
            self.error(
                &format!("{path}.brackets"),
                OUT_OF_RANGE,
                format!("at most {MAX_BRACKETS} brackets are allowed"),
            );
        }
        // `above X` is X plus an epsilon: the key (X, 1) sorts after (X, 0) for `at_least X`.
        let mut previous: Option<(Decimal, u8)> = None;
        for (j, b) in table.brackets.iter().enumerate() {
            let bpath = format!("{path}.brackets[{j}]");
            let lower = match &b.lower {
                None => {
                    self.error(
                        &format!("{bpath}.at_least"),
                        REQUIRED,
                        "a lower bound (at_least or above) is required",
                    );
                    None
                }
                Some(bracket::Lower::AtLeast(v)) => {
                    let field = format!("{bpath}.at_least");
                    self.money(&field, v, Sign::NonNegative, true)
                        .map(|d| ((d, 0u8), field))
                }
                Some(bracket::Lower::Above(v)) => {
                    let field = format!("{bpath}.above");
                    self.money(&field, v, Sign::NonNegative, true)
                        .map(|d| ((d, 1u8), field))
                }
            };
            if let Some((key, field)) = lower {
                if let Some(prev) = previous {
                    if key <= prev {
                        self.error(
                            &field,
                            BRACKETS_NOT_ASCENDING,
                            "lower bounds must strictly increase: this bracket does not start above the previous one",
                        );
                    }
                }
                previous = Some(previous.map_or(key, |p| p.max(key)));
            }
            match &b.value {
                None => self.error(
                    &format!("{bpath}.percent"),
                    REQUIRED,
                    "a value (percent or fixed_amount) is required",
                ),
                Some(bracket::Value::Percent(v)) => {
                    self.percent(&format!("{bpath}.percent"), v, true, true);
                }
                Some(bracket::Value::FixedAmount(v)) => {
                    // Money off the receipt for discounts, points per receipt for accrual.
                    let field = format!("{bpath}.fixed_amount");
                    if discount {
                        self.money(&field, v, Sign::NonNegative, true);
                    } else {
                        self.points(&field, v, Sign::NonNegative, true);
                    }
                }
            }
        }
    }

    /// Referral levels 1 to 10, each once, exactly one value; `points_only` for action rewards.
    fn referral_levels(&mut self, path: &str, levels: &[ReferralLevel], points_only: bool) {
        let mut seen = Vec::new();
        for (j, level) in levels.iter().enumerate() {
            let lpath = format!("{path}[{j}]");
            if self.count(
                &format!("{lpath}.level"),
                level.level,
                1,
                MAX_REFERRAL_LEVEL,
            ) {
                if seen.contains(&level.level) {
                    self.error(
                        &format!("{lpath}.level"),
                        DUPLICATE_ID,
                        format!("level {} is given twice", level.level),
                    );
                } else {
                    seen.push(level.level);
                    self.need_referral_levels(level.level);
                }
            }
            match &level.value {
                None => self.error(
                    &format!("{lpath}.points"),
                    REQUIRED,
                    "a value (points or percent) is required",
                ),
                Some(referral_level::Value::Percent(v)) => {
                    if points_only {
                        self.error(&format!("{lpath}.percent"), OUT_OF_RANGE, "only points are valid for action rewards (there is no amount to take a percentage of)");
                    } else {
                        self.percent(&format!("{lpath}.percent"), v, true, true);
                    }
                }
                Some(referral_level::Value::Points(v)) => {
                    self.points(&format!("{lpath}.points"), v, Sign::Positive, true);
                }
            }
        }
    }

    fn action_reward(&mut self, path: &str, rule: &Rule, e: &ActionReward) {
        let p = format!("{path}.action_reward");
        if e.action == ActionKind::Unspecified as i32 {
            self.error(&format!("{p}.action"), REQUIRED, "the action is required");
        } else {
            self.enum_value::<ActionKind>(&format!("{p}.action"), e.action);
        }
        if e.action == ActionKind::Custom as i32 {
            if e.custom_code.is_empty() {
                self.error(
                    &format!("{p}.custom_code"),
                    REQUIRED,
                    "a custom action needs its code",
                );
            } else if e.custom_code.chars().count() > MAX_CUSTOM_CODE_LEN {
                self.error(
                    &format!("{p}.custom_code"),
                    OUT_OF_RANGE,
                    format!("at most {MAX_CUSTOM_CODE_LEN} characters"),
                );
            }
        } else if !e.custom_code.is_empty() {
            self.warning(
                &format!("{p}.custom_code"),
                CONFLICT,
                "custom_code is ignored unless the action is ACTION_KIND_CUSTOM",
            );
        }
        self.points(&format!("{p}.points"), &e.points, Sign::NonNegative, true);
        self.referral_levels(&format!("{p}.referrer_rewards"), &e.referrer_rewards, true);
        // Actions have no receipt: receipt conditions and scopes never mean anything here.
        if let Some(when) = &rule.when {
            let receipt_only = [
                ("receipt_total", when.receipt_total.is_some()),
                ("promo_code", when.promo_code.is_some()),
                ("store_ids", !when.store_ids.is_empty()),
                ("basket_contains", when.basket_contains.is_some()),
                ("include_anonymous", when.include_anonymous),
            ];
            for (name, set) in receipt_only {
                if set {
                    self.warning(
                        &format!("{path}.when.{name}"),
                        CONFLICT,
                        format!("{name} is a receipt condition; an action_reward rule has no receipt, so it is not checked"),
                    );
                }
            }
        }
        if rule.scope.is_some() {
            self.warning(
                &format!("{path}.scope"),
                CONFLICT,
                "an action_reward rule has no receipt lines: the scope is ignored",
            );
        }
    }

    fn tier_progression(&mut self, t: &TierProgression) {
        let path = "tier_progression";
        if t.levels.is_empty() {
            self.error(
                &format!("{path}.levels"),
                REQUIRED,
                "at least one level is required",
            );
        } else if t.levels.len() > MAX_TIER_LEVELS {
            self.error(
                &format!("{path}.levels"),
                OUT_OF_RANGE,
                format!("at most {MAX_TIER_LEVELS} levels are allowed"),
            );
        }
        let mut codes: Vec<&str> = Vec::new();
        // The last threshold seen per criterion, to check they rise with the levels.
        let mut last_cumulative: Option<(Decimal, usize)> = None;
        let mut last_single: Option<(Decimal, usize)> = None;
        let mut last_window: Vec<(Lookback, Decimal, usize)> = Vec::new();
        let mut entry_seen = false;
        for (j, level) in t.levels.iter().enumerate() {
            let lpath = format!("{path}.levels[{j}]");
            let code_field = format!("{lpath}.tier_code");
            self.tier(&code_field, &level.tier_code);
            if !level.tier_code.is_empty() {
                if codes.contains(&level.tier_code.as_str()) {
                    self.error(
                        &code_field,
                        DUPLICATE_ID,
                        format!("tier `{}` appears twice", level.tier_code),
                    );
                } else {
                    codes.push(&level.tier_code);
                }
            }
            let cumulative_field = format!("{lpath}.cumulative_turnover_at_least");
            let cumulative = self.money(
                &cumulative_field,
                &level.cumulative_turnover_at_least,
                Sign::NonNegative,
                false,
            );
            if !level.cumulative_turnover_at_least.is_empty() {
                self.need_aggregates();
            }
            if let Some(v) = cumulative {
                tier_order(
                    self,
                    &cumulative_field,
                    (v, j),
                    &mut last_cumulative,
                    &t.levels,
                    "lifetime turnover",
                );
            }
            let single_field = format!("{lpath}.single_purchase_at_least");
            if let Some(v) = self.money(
                &single_field,
                &level.single_purchase_at_least,
                Sign::NonNegative,
                false,
            ) {
                tier_order(
                    self,
                    &single_field,
                    (v, j),
                    &mut last_single,
                    &t.levels,
                    "single purchase",
                );
            }
            if let Some(w) = &level.window_turnover {
                let wpath = format!("{lpath}.window_turnover");
                let lookback_ok =
                    self.lookback(&format!("{wpath}.lookback"), w.lookback.as_ref(), true);
                let at_least_field = format!("{wpath}.at_least");
                let at_least = self.money(&at_least_field, &w.at_least, Sign::NonNegative, true);
                if let (true, Some(lb), Some(v)) = (lookback_ok, w.lookback.as_ref(), at_least) {
                    self.need_lookback(lb);
                    match last_window
                        .iter_mut()
                        .find(|(l, _, _)| same_lookback(l, lb))
                    {
                        Some((_, prev, k)) => {
                            if v <= *prev {
                                let lower = t.levels.get(*k).map_or("", |l| l.tier_code.as_str());
                                self.error(
                                    &at_least_field,
                                    TIER_ORDER,
                                    format!("window turnover threshold must be above that of the lower level `{lower}`"),
                                );
                            } else {
                                *prev = v;
                                *k = j;
                            }
                        }
                        None => last_window.push((*lb, v, j)),
                    }
                }
            }
            let has_criteria = !level.cumulative_turnover_at_least.is_empty()
                || !level.single_purchase_at_least.is_empty()
                || level.window_turnover.is_some();
            if !has_criteria {
                if entry_seen {
                    self.warning(
                        &lpath,
                        UNREACHABLE,
                        format!("level `{}` has no criteria and is not the entry level: it is never reached automatically", level.tier_code),
                    );
                }
                entry_seen = true;
            }
        }
        self.enum_value::<TierDowngrade>(&format!("{path}.downgrade"), t.downgrade);
        if let Some(r) = &t.recalculation {
            let rpath = format!("{path}.recalculation");
            if r.day_of_month != 0 {
                self.count(&format!("{rpath}.day_of_month"), r.day_of_month, 1, 28);
            }
            if !r.local_time.is_empty() {
                self.time_of_day(&format!("{rpath}.local_time"), &r.local_time, false);
            }
            if r.every_months != 0 {
                self.count(&format!("{rpath}.every_months"), r.every_months, 1, 12);
            }
        }
    }
}

/// A tier threshold must be above the same criterion's threshold on every lower level; `last`
/// is that threshold and its level's index, updated to level `j`'s when it rises.
fn tier_order(
    c: &mut Checker,
    field: &str,
    (value, j): (Decimal, usize),
    last: &mut Option<(Decimal, usize)>,
    levels: &[TierLevel],
    what: &str,
) {
    match *last {
        Some((prev, k)) if value <= prev => {
            let lower = levels.get(k).map_or("", |l| l.tier_code.as_str());
            c.error(
                field,
                TIER_ORDER,
                format!(
                    "the {what} threshold must be above {prev}, that of the lower level `{lower}`"
                ),
            );
        }
        _ => *last = Some((value, j)),
    }
}

/// Whether a condition set constrains nothing (other than who it applies to).
fn unconditional(when: Option<&Conditions>) -> bool {
    when.is_none_or(|w| {
        Conditions {
            include_anonymous: false,
            ..w.clone()
        } == Conditions::default()
    })
}

fn all_lines(scope: Option<&Scope>) -> bool {
    scope.is_none_or(|s| *s == Scope::default())
}

/// What an effect acts on, for `stop_further_rules`; `None` where it cannot stop others for sure.
fn sure_target(effect: Option<&Effect>) -> Option<&'static str> {
    match effect? {
        Effect::DiscountPercent(_) => Some("discount"),
        Effect::AccruePercent(_) | Effect::Cashback(_) => Some("accrual"),
        Effect::RedemptionLimit(_) => Some("redemption limit"),
        _ => None,
    }
}

fn target(effect: Option<&Effect>) -> Option<&'static str> {
    match effect? {
        Effect::DiscountPercent(_)
        | Effect::DiscountFixed(_)
        | Effect::DiscountBrackets(_)
        | Effect::NForM(_)
        | Effect::NthItem(_) => Some("discount"),
        Effect::AccruePercent(_)
        | Effect::AccruePerAmount(_)
        | Effect::AccrueFixed(_)
        | Effect::AccrueBrackets(_)
        | Effect::Cashback(_) => Some("accrual"),
        Effect::RedemptionLimit(_) => Some("redemption limit"),
        _ => None,
    }
}

/// Warnings for rules that can never apply because an unconditional, all-lines rule of higher
/// priority always wins: the first in a FIRST group, or one with `stop_further_rules`.
fn unreachable_rules(c: &mut Checker, program: &Program) {
    let first_groups: Vec<&str> = program
        .groups
        .iter()
        .filter(|g| g.mode == GroupMode::First as i32)
        .map(|g| g.id.as_str())
        .collect();
    // Evaluation order: higher priority first, ties in document order.
    let mut order: Vec<usize> = (0..program.rules.len())
        .filter(|&i| {
            let r = &program.rules[i];
            !r.disabled && !matches!(r.effect, None | Some(Effect::ActionReward(_)))
        })
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(program.rules[i].priority), i));
    let mut reported = HashSet::new();
    for (pos, &w) in order.iter().enumerate() {
        let winner = &program.rules[w];
        if !unconditional(winner.when.as_ref()) || !all_lines(winner.scope.as_ref()) {
            continue;
        }
        let winner_anonymous = winner.when.as_ref().is_some_and(|x| x.include_anonymous);
        for &l in &order[pos + 1..] {
            let loser = &program.rules[l];
            let loser_anonymous = loser.when.as_ref().is_some_and(|x| x.include_anonymous);
            // A loser that also runs on anonymous receipts where the winner does not still can apply.
            if loser_anonymous && !winner_anonymous || reported.contains(&l) {
                continue;
            }
            let in_first_group = !winner.group.is_empty()
                && winner.group == loser.group
                && first_groups.contains(&winner.group.as_str());
            let stopped = winner.stop_further_rules
                && winner.group.is_empty()
                && sure_target(winner.effect.as_ref()).is_some()
                && sure_target(winner.effect.as_ref()) == target(loser.effect.as_ref());
            let why = if in_first_group {
                format!(
                    "rule `{}` of FIRST group `{}` has no conditions and a higher priority, so this rule always loses",
                    winner.id, winner.group
                )
            } else if stopped {
                format!(
                    "rule `{}` has no conditions, acts on every line and stops further rules with the same target",
                    winner.id
                )
            } else {
                continue;
            };
            reported.insert(l);
            c.warning(&format!("rules[{l}]"), UNREACHABLE, why);
        }
    }
}

/// "HH:MM" as minutes since midnight; "24:00" only with `end_of_day`.
pub fn parse_hhmm(value: &str, end_of_day: bool) -> Option<u32> {
    let b = value.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![b[0], b[1], b[3], b[4]].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours = u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0');
    let minutes = u32::from(b[3] - b'0') * 10 + u32::from(b[4] - b'0');
    if hours == 24 && minutes == 0 && end_of_day {
        return Some(24 * 60);
    }
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
}

/// A loose BCP 47 check: alphanumeric subtags of 1 to 8 characters joined by '-', the first
/// 2 to 8 letters.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{from_yaml, DEMO_PROGRAM_YAML};
    use kopilka_proto::rules::{rule::Effect, Rule};

    const BASE: &str = "name: Test\nsettings: {currency: RUB, time_zone: Europe/Moscow}\n";

    fn doc(extra: &str) -> Program {
        let text = if extra.starts_with("settings:") {
            format!("name: Test\n{extra}")
        } else {
            format!("{BASE}{extra}")
        };
        from_yaml(&text).unwrap_or_else(|e| panic!("test document does not parse: {e}\n{text}"))
    }

    fn has(report: &Report, field: &str, code: &str, severity: ViolationSeverity) -> bool {
        report
            .violations
            .iter()
            .any(|v| v.field == field && v.code == code && v.severity == severity as i32)
    }

    const TIERS: &[&str] = &["NEW", "GOLD", "VIP"];

    fn tier_list() -> Vec<String> {
        TIERS.iter().map(|t| t.to_string()).collect()
    }

    /// One bad program per kind of violation: (document after the base, path, code).
    const BAD: &[(&str, &str, &str)] = &[
        ("rules:\n  - {id: a, name: A, discount_percent: {percent: \"5\"}}\n  - {id: a, name: B, discount_percent: {percent: \"5\"}}\n", "rules[1].id", DUPLICATE_ID),
        ("groups:\n  - {id: g}\n  - {id: g}\n", "groups[1].id", DUPLICATE_ID),
        ("rules:\n  - {id: Bad Id, name: A, discount_percent: {percent: \"5\"}}\n", "rules[0].id", OUT_OF_RANGE),
        ("rules:\n  - {id: a, discount_percent: {percent: \"5\"}}\n", "rules[0].name", REQUIRED),
        ("rules:\n  - {id: a, name: A}\n", "rules[0]", NO_EFFECT),
        ("rules:\n  - {id: a, name: A, group: nope, discount_percent: {percent: \"5\"}}\n", "rules[0].group", UNKNOWN_GROUP),
        ("rules:\n  - {id: a, name: A, discount_percent: {percent: \"150\"}}\n", "rules[0].discount_percent.percent", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, discount_percent: {percent: \"12.34567\"}}\n", "rules[0].discount_percent.percent", BAD_DECIMAL),
        ("rules:\n  - {id: a, name: A, discount_percent: {percent: \"0\"}}\n", "rules[0].discount_percent.percent", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, discount_fixed: {amount: \"10.001\"}}\n", "rules[0].discount_fixed.amount", BAD_DECIMAL),
        ("rules:\n  - {id: a, name: A, discount_fixed: {amount: \"1e3\"}}\n", "rules[0].discount_fixed.amount", BAD_DECIMAL),
        ("rules:\n  - {id: a, name: A, accrue_fixed: {points: \"1.5\"}}\n", "rules[0].accrue_fixed.points", BAD_DECIMAL),
        ("rules:\n  - {id: a, name: A, when: {tiers: [PLATINUM]}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.tiers[0]", UNKNOWN_TIER),
        ("rules:\n  - {id: a, name: A, when: {active: {start: \"2025-02-01T00:00:00Z\", end: \"2025-01-01T00:00:00Z\"}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.active.end", BAD_TIME),
        ("rules:\n  - {id: a, name: A, when: {time_windows: [{start: \"25:00\", end: \"12:00\"}]}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.time_windows[0].start", BAD_TIME),
        ("rules:\n  - {id: a, name: A, when: {time_windows: [{start: \"9:00\"}]}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.time_windows[0].start", BAD_TIME),
        ("rules:\n  - {id: a, name: A, when: {time_windows: [{start: \"10:00\", end: \"10:00\"}]}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.time_windows[0].end", EMPTY_TIME_WINDOW),
        ("rules:\n  - {id: a, name: A, when: {time_windows: [{weekdays: [WEEKDAY_UNSPECIFIED]}]}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.time_windows[0].weekdays[0]", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, when: {birthday: {days_before: 40}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.birthday.days_before", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, when: {receipt_total: {at_least: \"1\", above: \"2\"}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.receipt_total.above", CONFLICT),
        ("rules:\n  - {id: a, name: A, when: {receipt_total: {}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.receipt_total", REQUIRED),
        ("rules:\n  - {id: a, name: A, when: {promo_code: {codes: [\"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\"]}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.promo_code.codes[0]", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, when: {promo_code: {codes: []}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.promo_code.codes", REQUIRED),
        ("rules:\n  - {id: a, name: A, when: {purchase_count: {at_least: 5, at_most: 2}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.purchase_count.at_most", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, when: {basket_contains: {product_ids: [p1], min_quantity: \"0.0001\"}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.basket_contains.min_quantity", BAD_DECIMAL),
        ("rules:\n  - {id: a, name: A, when: {turnover: {lookback: {months: 121}, amount: {above: \"30000\"}}}, discount_percent: {percent: \"5\"}}\n", "rules[0].when.turnover.lookback.months", OUT_OF_RANGE),
        ("rules:\n  - id: a\n    name: A\n    discount_brackets:\n      brackets:\n        - {above: \"1000\", percent: \"6\"}\n        - {at_least: \"1000\", percent: \"12\"}\n", "rules[0].discount_brackets.brackets[1].at_least", BRACKETS_NOT_ASCENDING),
        ("rules:\n  - id: a\n    name: A\n    discount_brackets:\n      brackets:\n        - {at_least: \"500\", percent: \"6\"}\n        - {at_least: \"100\", percent: \"3\"}\n", "rules[0].discount_brackets.brackets[1].at_least", BRACKETS_NOT_ASCENDING),
        ("rules:\n  - {id: a, name: A, discount_brackets: {brackets: []}}\n", "rules[0].discount_brackets.brackets", REQUIRED),
        ("rules:\n  - {id: a, name: A, discount_brackets: {brackets: [{at_least: \"0\"}]}}\n", "rules[0].discount_brackets.brackets[0].percent", REQUIRED),
        ("rules:\n  - {id: a, name: A, accrue_brackets: {brackets: [{percent: \"3\"}]}}\n", "rules[0].accrue_brackets.brackets[0].at_least", REQUIRED),
        ("rules:\n  - {id: a, name: A, accrue_brackets: {brackets: [{at_least: \"0\", percent: \"101\"}]}}\n", "rules[0].accrue_brackets.brackets[0].percent", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, accrue_brackets: {brackets: [{at_least: \"0\", fixed_amount: \"1.5\"}]}}\n", "rules[0].accrue_brackets.brackets[0].fixed_amount", BAD_DECIMAL),
        ("rules:\n  - {id: a, name: A, accrue_brackets: {basis: BRACKET_BASIS_WINDOW_TURNOVER, brackets: [{at_least: \"0\", percent: \"5\"}]}}\n", "rules[0].accrue_brackets.lookback", REQUIRED),
        ("rules:\n  - {id: a, name: A, accrue_brackets: {basis: BRACKET_BASIS_WINDOW_TURNOVER, lookback: {days: 0}, brackets: [{at_least: \"0\", percent: \"5\"}]}}\n", "rules[0].accrue_brackets.lookback.days", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, accrue_per_amount: {points: \"5\", every: \"100\", per: PER_UNIT}}\n", "rules[0].accrue_per_amount.per", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, accrue_per_amount: {points: \"5\"}}\n", "rules[0].accrue_per_amount.every", REQUIRED),
        ("rules:\n  - {id: a, name: A, stamp_card: {every: 1}}\n", "rules[0].stamp_card.every", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, stamp_card: {every: 6, per: PER_LINE}}\n", "rules[0].stamp_card.per", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, n_for_m: {buy: 3, pay: 3}}\n", "rules[0].n_for_m.pay", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, n_for_m: {buy: 101, pay: 2}}\n", "rules[0].n_for_m.buy", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, nth_item: {every: 1, percent: \"50\"}}\n", "rules[0].nth_item.every", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, accrual_multiplier: {factor: \"101\"}}\n", "rules[0].accrual_multiplier.factor", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, tier_rates: {}}\n", "rules[0].tier_rates", NO_EFFECT),
        ("rules:\n  - {id: a, name: A, exclude: {}}\n", "rules[0].exclude", NO_EFFECT),
        ("rules:\n  - {id: a, name: A, redemption_limit: {max_share_percent: \"120\"}}\n", "rules[0].redemption_limit.max_share_percent", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, referral_reward: {levels: [{level: 1, points: \"5\"}, {level: 1, points: \"3\"}]}}\n", "rules[0].referral_reward.levels[1].level", DUPLICATE_ID),
        ("rules:\n  - {id: a, name: A, referral_reward: {levels: [{level: 11, points: \"5\"}]}}\n", "rules[0].referral_reward.levels[0].level", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, referral_reward: {levels: [{level: 1}]}}\n", "rules[0].referral_reward.levels[0].points", REQUIRED),
        ("rules:\n  - {id: a, name: A, action_reward: {points: \"100\"}}\n", "rules[0].action_reward.action", REQUIRED),
        ("rules:\n  - {id: a, name: A, action_reward: {action: ACTION_KIND_CUSTOM, points: \"100\"}}\n", "rules[0].action_reward.custom_code", REQUIRED),
        ("rules:\n  - {id: a, name: A, action_reward: {action: ACTION_KIND_REGISTRATION, points: \"0\", referrer_rewards: [{level: 1, percent: \"5\"}]}}\n", "rules[0].action_reward.referrer_rewards[0].percent", OUT_OF_RANGE),
        ("rules:\n  - {id: a, name: A, points_terms: {valid_days: 5000}, accrue_percent: {percent: \"5\"}}\n", "rules[0].points_terms.valid_days", OUT_OF_RANGE),
        ("settings: {currency: rub, time_zone: Europe/Moscow}\n", "settings.currency", OUT_OF_RANGE),
        ("settings: {currency: ABC, time_zone: Europe/Moscow}\n", "settings.currency", OUT_OF_RANGE),
        ("settings: {currency: XAU, time_zone: Europe/Moscow}\n", "settings.currency", OUT_OF_RANGE),
        ("tier_progression: {levels: [{tier_code: NEW}, {tier_code: GOLD, cumulative_turnover_at_least: \"30000\"}, {tier_code: VIP, cumulative_turnover_at_least: \"10000\"}]}\n", "tier_progression.levels[2].cumulative_turnover_at_least", TIER_ORDER),
        ("tier_progression: {levels: [{tier_code: NEW}, {tier_code: NEW, single_purchase_at_least: \"5000\"}]}\n", "tier_progression.levels[1].tier_code", DUPLICATE_ID),
        ("tier_progression: {levels: [{tier_code: NEW}, {tier_code: PLATINUM, cumulative_turnover_at_least: \"5000\"}]}\n", "tier_progression.levels[1].tier_code", UNKNOWN_TIER),
        ("tier_progression: {levels: []}\n", "tier_progression.levels", REQUIRED),
        ("tier_progression: {levels: [{tier_code: NEW}, {tier_code: GOLD, window_turnover: {at_least: \"10000\"}}]}\n", "tier_progression.levels[1].window_turnover.lookback", REQUIRED),
        ("tier_progression: {levels: [{tier_code: NEW}], recalculation: {day_of_month: 29}}\n", "tier_progression.recalculation.day_of_month", OUT_OF_RANGE),
        ("tier_progression: {levels: [{tier_code: NEW}], recalculation: {local_time: \"24:00\"}}\n", "tier_progression.recalculation.local_time", BAD_TIME),
        ("tier_progression: {levels: [{tier_code: NEW}], recalculation: {every_months: 13}}\n", "tier_progression.recalculation.every_months", OUT_OF_RANGE),
    ];

    #[test]
    fn each_kind_of_bad_program_is_reported_with_its_path() {
        let tiers = tier_list();
        let known = Known {
            tier_codes: Some(&tiers),
            catalog: None,
        };
        for (extra, field, code) in BAD {
            let report = validate(&doc(extra), &known);
            assert!(
                has(&report, field, code, ViolationSeverity::Error),
                "expected {code} at {field} for\n{extra}\ngot {:#?}",
                report.violations
            );
            assert!(!report.is_valid());
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut p = doc("");
        let s = p.settings.as_mut().unwrap();
        s.time_zone = "Mars/Olympus".into();
        s.points_scale = 5;
        s.point_value = "0".into();
        s.accrual_activation_days = 366;
        s.accrual_validity_days = 3661;
        s.max_redeem_share_percent = "100.5".into();
        s.min_money_payment = "-1".into();
        s.max_discount_percent = "abc".into();
        s.money_rounding = 42;
        s.locale = "not a tag".into();
        let r = validate(&p, &Known::default());
        for (field, code) in [
            ("settings.time_zone", OUT_OF_RANGE),
            ("settings.points_scale", OUT_OF_RANGE),
            ("settings.point_value", OUT_OF_RANGE),
            ("settings.accrual_activation_days", OUT_OF_RANGE),
            ("settings.accrual_validity_days", OUT_OF_RANGE),
            ("settings.max_redeem_share_percent", OUT_OF_RANGE),
            ("settings.min_money_payment", OUT_OF_RANGE),
            ("settings.max_discount_percent", BAD_DECIMAL),
            ("settings.money_rounding", OUT_OF_RANGE),
            ("settings.locale", OUT_OF_RANGE),
        ] {
            assert!(
                has(&r, field, code, ViolationSeverity::Error),
                "{field}: {:#?}",
                r.violations
            );
        }
        let r = validate(&Program::default(), &Known::default());
        for field in ["name", "settings.currency", "settings.time_zone"] {
            assert!(
                has(&r, field, REQUIRED, ViolationSeverity::Error),
                "{field}"
            );
        }
    }

    #[test]
    fn limits_and_lengths() {
        let rule = Rule {
            id: "r".into(),
            name: "R".into(),
            effect: Some(Effect::AccruePercent(
                kopilka_proto::rules::PercentAccrual {
                    percent: "1".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let mut p = doc("");
        p.name = "x".repeat(201);
        p.description = "x".repeat(2001);
        p.rules = (0..501)
            .map(|i| Rule {
                id: format!("r{i}"),
                ..rule.clone()
            })
            .collect();
        p.rules[0].id = "a".repeat(65);
        let r = validate(&p, &Known::default());
        for field in ["name", "description", "rules", "rules[0].id"] {
            assert!(
                has(&r, field, OUT_OF_RANGE, ViolationSeverity::Error),
                "{field}"
            );
        }
    }

    #[test]
    fn unknown_categories_are_errors_only_with_a_catalog() {
        let p = doc("rules:\n  - {id: a, name: A, scope: {category_ids: [coffee, tea]}, discount_percent: {percent: \"5\"}}\n");
        let catalog = Catalog::new([("coffee".to_owned(), String::new())]);
        let with = validate(
            &p,
            &Known {
                tier_codes: None,
                catalog: Some(&catalog),
            },
        );
        assert!(has(
            &with,
            "rules[0].scope.category_ids[1]",
            UNKNOWN_CATEGORY,
            ViolationSeverity::Error
        ));
        assert!(!has(
            &with,
            "rules[0].scope.category_ids[0]",
            UNKNOWN_CATEGORY,
            ViolationSeverity::Error
        ));
        let empty = Catalog::default();
        for known in [
            Known::default(),
            Known {
                tier_codes: None,
                catalog: Some(&empty),
            },
        ] {
            let without = validate(&p, &known);
            assert!(without.is_valid());
            assert!(has(
                &without,
                "rules[0].scope.category_ids[1]",
                UNKNOWN_CATEGORY,
                ViolationSeverity::Warning
            ));
        }
    }

    #[test]
    fn warnings_for_rules_that_never_apply() {
        let p = doc(concat!(
            "groups: [{id: rate, mode: GROUP_MODE_FIRST}]\n",
            "rules:\n",
            "  - {id: big, name: Big, when: {receipt_total: {at_least: \"1000\", at_most: \"500\"}}, discount_percent: {percent: \"5\"}}\n",
            "  - {id: base, name: Base, group: rate, priority: 10, accrue_percent: {percent: \"5\"}}\n",
            "  - {id: more, name: More, group: rate, accrue_percent: {percent: \"15\"}}\n",
            "  - {id: stop, name: Stop, priority: 5, stop_further_rules: true, discount_percent: {percent: \"3\"}}\n",
            "  - {id: low, name: Low, priority: 1, discount_fixed: {amount: \"50\"}}\n",
            "  - {id: off, name: Off, disabled: true, priority: 1, discount_fixed: {amount: \"50\"}}\n",
            "  - {id: pts, name: Points, priority: 1, accrue_fixed: {points: \"5\"}}\n",
            "  - {id: act, name: Act, when: {receipt_total: {at_least: \"1\"}}, action_reward: {action: ACTION_KIND_REVIEW, points: \"5\"}}\n",
            "  - {id: win, name: Win, when: {since_last_purchase: {within_days: 7, at_least_days: 30}}, accrue_percent: {percent: \"1\"}}\n",
        ));
        let r = validate(&p, &Known::default());
        assert!(r.is_valid(), "{:#?}", r.errors());
        let w = ViolationSeverity::Warning;
        assert!(has(&r, "rules[0].when.receipt_total", UNREACHABLE, w));
        assert!(has(&r, "rules[2]", UNREACHABLE, w), "{:#?}", r.warnings());
        assert!(has(&r, "rules[4]", UNREACHABLE, w));
        assert!(has(&r, "rules[7].when.receipt_total", CONFLICT, w));
        assert!(has(&r, "rules[8].when.since_last_purchase", UNREACHABLE, w));
        // Disabled is not unreachable; a different target is not stopped.
        assert!(!r
            .violations
            .iter()
            .any(|v| v.field == "rules[5]" || v.field == "rules[6]"));
        assert!(!r
            .violations
            .iter()
            .any(|v| v.field == "rules[1]" || v.field == "rules[3]"));
    }

    #[test]
    fn well_formed_edges_are_accepted() {
        let p = doc(concat!(
            "rules:\n",
            "  - id: night\n    name: Night\n    when:\n      time_windows: [{start: \"22:00\", end: \"02:00\"}, {start: \"00:00\", end: \"24:00\"}, {}]\n",
            "    discount_brackets:\n      brackets:\n        - {at_least: \"0\", percent: \"3\"}\n        - {at_least: \"500\", percent: \"6\"}\n        - {above: \"1000\", percent: \"12\"}\n        - {above: \"2000\", fixed_amount: \"100.50\"}\n",
            "  - {id: n-3-for-2, name: N, n_for_m: {buy: 3, pay: 2}}\n",
            "  - {id: range, name: R, when: {receipt_total: {at_least: \"500\", at_most: \"500\"}}, accrue_percent: {percent: \"100\"}}\n",
            "  - {id: every-6, name: S, stamp_card: {every: 6, per: PER_RECEIPT, points: \"10\"}}\n",
        ));
        let r = validate(&p, &Known::default());
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
    }

    #[test]
    fn the_demo_program_validates_clean() {
        let p = from_yaml(DEMO_PROGRAM_YAML).unwrap();
        let r = validate(&p, &Known::default());
        assert!(r.is_valid(), "{:#?}", r.errors());
        // Without a catalog the one category reference can only be a warning.
        let w = r.warnings();
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].code, UNKNOWN_CATEGORY);
        let catalog = Catalog::new([("sale".to_owned(), String::new())]);
        let r = validate(
            &p,
            &Known {
                tier_codes: None,
                catalog: Some(&catalog),
            },
        );
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
        assert!(r.needs.birth_date);
        assert!(!r.needs.aggregates);
        assert_eq!(r.needs.category_ids, ["sale"]);
    }

    #[test]
    fn needs_are_computed_in_first_seen_order() {
        let p = doc(concat!(
            "groups: [{id: rate, mode: GROUP_MODE_FIRST}]\n",
            "rules:\n",
            "  - {id: vip-rate, name: V, group: rate, priority: 1, when: {tiers: [GOLD], turnover: {lookback: {months: 3}, amount: {above: \"30000\"}}}, accrue_percent: {percent: \"15\"}}\n",
            "  - {id: rate, name: R, group: rate, accrue_percent: {percent: \"5\"}}\n",
            "  - {id: br, name: B, scope: {category_ids: [tv], exclude_category_ids: [sale]}, accrue_brackets: {basis: BRACKET_BASIS_WINDOW_TURNOVER, lookback: {days: 30}, brackets: [{at_least: \"0\", percent: \"1\"}]}}\n",
            "  - {id: br2, name: B2, accrue_brackets: {basis: BRACKET_BASIS_WINDOW_TURNOVER, lookback: {months: 3}, brackets: [{at_least: \"0\", percent: \"1\"}]}}\n",
            "  - {id: off, name: Off, disabled: true, when: {turnover: {lookback: {days: 7}, amount: {above: \"1\"}}, promo_code: {codes: [X]}}, discount_percent: {percent: \"1\"}}\n",
            "  - {id: ref, name: Ref, referral_reward: {levels: [{level: 2, points: \"5\"}, {level: 1, percent: \"3\"}]}}\n",
            "  - {id: stamps, name: S, when: {promo_code: {codes: [coffee]}}, stamp_card: {every: 6}}\n",
            "  - {id: reg, name: Reg, action_reward: {action: ACTION_KIND_REGISTRATION, points: \"100\", referrer_rewards: [{level: 3, points: \"50\"}]}}\n",
            "tier_progression:\n  levels:\n    - {tier_code: NEW}\n    - {tier_code: GOLD, window_turnover: {lookback: {months: 6}, at_least: \"10000\"}}\n    - {tier_code: VIP, window_turnover: {lookback: {months: 3}, at_least: \"30000\"}}\n",
        ));
        let r = validate(&p, &Known::default());
        assert!(r.is_valid(), "{:#?}", r.errors());
        let n = &r.needs;
        let spans: Vec<_> = n.lookbacks.iter().map(|l| l.span).collect();
        assert_eq!(
            spans,
            [
                Some(Span::Months(3)),
                Some(Span::Days(30)),
                Some(Span::Months(6))
            ]
        );
        assert!(n.aggregates && n.stamps && n.promo_codes && !n.birth_date);
        assert_eq!(n.referral_levels, 3);
        assert_eq!(n.tier_codes, ["GOLD", "NEW", "VIP"]);
        assert_eq!(n.category_ids, ["tv", "sale"]);
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("09:30", false), Some(570));
        assert_eq!(parse_hhmm("24:00", true), Some(1440));
        for bad in ["24:00", "23:60", "9:00", "09-00", "", "０9:00", "09:00 "] {
            assert_eq!(parse_hhmm(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn odd_input_never_panics() {
        let mut p = doc("rules:\n  - {id: \"é\", name: \"\\u0000\", when: {time_windows: [{start: \"é:é\"}]}, n_for_m: {buy: 0, pay: 0}}\n");
        p.rules.push(Rule {
            id: "-".into(),
            when: Some(Conditions {
                active: Some(kopilka_proto::types::Period {
                    start: Some(kopilka_proto::wkt::Timestamp {
                        seconds: i64::MAX,
                        nanos: -1,
                    }),
                    end: Some(kopilka_proto::wkt::Timestamp {
                        seconds: i64::MIN,
                        nanos: 0,
                    }),
                }),
                ..Default::default()
            }),
            effect: Some(Effect::DiscountBrackets(BracketTable {
                basis: 77,
                brackets: vec![Default::default(); 25],
                ..Default::default()
            })),
            ..Default::default()
        });
        let r = validate(&p, &Known::default());
        assert!(!r.is_valid());
        assert!(has(
            &r,
            "rules[0].n_for_m.buy",
            OUT_OF_RANGE,
            ViolationSeverity::Error
        ));
        assert!(has(
            &r,
            "rules[1].discount_brackets.brackets",
            OUT_OF_RANGE,
            ViolationSeverity::Error
        ));
    }
}
