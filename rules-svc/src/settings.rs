//! A program's settings with every documented default filled in, parsed once: the scales,
//! roundings, time zone and limits every evaluation reads.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use kopilka_proto::rules::{DiscountCombination, PointsTerms, ProgramSettings};
use rust_decimal::Decimal;

use crate::money::{self, Rounding, Sign};

/// [`ProgramSettings`] with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub currency: String,
    /// Decimal places of money in the currency (ISO 4217 minor units).
    pub money_scale: u32,
    pub time_zone: Tz,
    pub money_rounding: Rounding,
    pub points_rounding: Rounding,
    pub points_scale: u32,
    /// Money value of one point.
    pub point_value: Decimal,
    pub accrue_on_redeemed_part: bool,
    pub accrual_activation_days: u32,
    pub accrual_validity_days: u32,
    /// 0 to 100.
    pub max_redeem_share_percent: Decimal,
    pub min_money_payment: Decimal,
    /// True for SEQUENTIAL, false for ADDITIVE.
    pub sequential_discounts: bool,
    /// 0 to 100.
    pub max_discount_percent: Decimal,
    /// BCP 47; "ru" by default.
    pub locale: String,
}

/// Decimal places of a currency's minor unit: the one ISO 4217 table of the suite
/// ([`kopilka_runtime::currency::minor_units`]); `None` for a code that is not an ISO 4217
/// currency with a minor unit (validation refuses such a program).
pub fn currency_scale(code: &str) -> Option<u32> {
    kopilka_runtime::currency::minor_units(code)
}

fn decimal_or(value: &str, default: Decimal) -> Option<Decimal> {
    if value.is_empty() {
        Some(default)
    } else {
        money::parse(value, 6, Sign::NonNegative).ok()
    }
}

impl Settings {
    /// The settings of a program, or `None` where a value is unreadable (validation reports
    /// which; a program that passed validation always converts).
    pub fn from_proto(s: Option<&ProgramSettings>) -> Option<Settings> {
        let default = ProgramSettings::default();
        let s = s.unwrap_or(&default);
        let time_zone = Tz::from_str(&s.time_zone).ok()?;
        let money_scale = currency_scale(&s.currency)?;
        if s.points_scale > 4 {
            return None;
        }
        let point_value = decimal_or(&s.point_value, Decimal::ONE)?;
        if point_value <= Decimal::ZERO {
            return None;
        }
        let hundred = Decimal::ONE_HUNDRED;
        let max_redeem_share_percent = decimal_or(&s.max_redeem_share_percent, hundred)?;
        let max_discount_percent = decimal_or(&s.max_discount_percent, hundred)?;
        if max_redeem_share_percent > hundred || max_discount_percent > hundred {
            return None;
        }
        Some(Settings {
            currency: s.currency.clone(),
            money_scale,
            time_zone,
            money_rounding: Rounding::from_proto(s.money_rounding, Rounding::HalfUp),
            points_rounding: Rounding::from_proto(s.points_rounding, Rounding::Down),
            points_scale: s.points_scale,
            point_value,
            accrue_on_redeemed_part: s.accrue_on_redeemed_part,
            accrual_activation_days: s.accrual_activation_days,
            accrual_validity_days: s.accrual_validity_days,
            max_redeem_share_percent,
            min_money_payment: decimal_or(&s.min_money_payment, Decimal::ZERO)?,
            sequential_discounts: s.discount_combination == DiscountCombination::Sequential as i32,
            max_discount_percent,
            locale: if s.locale.is_empty() {
                "ru".to_owned()
            } else {
                s.locale.clone()
            },
        })
    }

    /// Money rounded with the program's money rounding to the currency's scale.
    pub fn round_money(&self, value: Decimal) -> Decimal {
        self.money_rounding.round(value, self.money_scale)
    }

    /// Points rounded with the program's points rounding to the points scale.
    pub fn round_points(&self, value: Decimal) -> Decimal {
        self.points_rounding.round(value, self.points_scale)
    }

    pub fn fmt_money(&self, value: Decimal) -> String {
        money::format(value, self.money_scale)
    }

    pub fn fmt_points(&self, value: Decimal) -> String {
        money::format(value, self.points_scale)
    }

    /// When points granted at `at` under `terms` (falling back to the settings) become
    /// spendable and when they expire: `(activates_at, expires_at)`, `None` = at once / never.
    pub fn lot_times(
        &self,
        terms: Option<&PointsTerms>,
        at: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let delay = terms
            .and_then(|t| t.activation_delay_days)
            .unwrap_or(self.accrual_activation_days);
        let valid = terms
            .and_then(|t| t.valid_days)
            .unwrap_or(self.accrual_validity_days);
        let activates = at + Duration::days(i64::from(delay));
        let expires = (valid > 0).then(|| activates + Duration::days(i64::from(valid)));
        ((delay > 0).then_some(activates), expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let s = Settings::from_proto(Some(&ProgramSettings {
            currency: "RUB".into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(s.money_scale, 2);
        assert_eq!(s.points_scale, 0);
        assert_eq!(s.money_rounding, Rounding::HalfUp);
        assert_eq!(s.points_rounding, Rounding::Down);
        assert_eq!(s.point_value, Decimal::ONE);
        assert_eq!(s.max_redeem_share_percent, Decimal::ONE_HUNDRED);
        assert_eq!(s.locale, "ru");
        assert!(Settings::from_proto(Some(&ProgramSettings {
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        }))
        .is_none());
    }

    #[test]
    fn money_scale_is_the_iso_minor_unit_and_unknown_currencies_do_not_convert() {
        let with = |currency: &str| {
            Settings::from_proto(Some(&ProgramSettings {
                currency: currency.into(),
                time_zone: "UTC".into(),
                ..Default::default()
            }))
            .map(|s| s.money_scale)
        };
        for (code, scale) in [
            ("XPF", 0),
            ("BIF", 0),
            ("RWF", 0),
            ("VUV", 0),
            ("JPY", 0),
            ("KRW", 0),
            ("RUB", 2),
            ("BHD", 3),
            ("KWD", 3),
            ("CLF", 4),
            ("UYW", 4),
        ] {
            assert_eq!(with(code), Some(scale), "{code}");
        }
        assert_eq!(with("ABC"), None);
        assert_eq!(with("XAU"), None);
    }

    #[test]
    fn start_bonus_lot_lasts_14_days() {
        let s = Settings::from_proto(Some(&ProgramSettings {
            currency: "RUB".into(),
            time_zone: "UTC".into(),
            ..Default::default()
        }))
        .unwrap();
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let terms = PointsTerms {
            valid_days: Some(14),
            activation_delay_days: None,
        };
        assert_eq!(
            s.lot_times(Some(&terms), at),
            (None, Some(at + Duration::days(14)))
        );
        assert_eq!(s.lot_times(None, at), (None, None));
    }
}
