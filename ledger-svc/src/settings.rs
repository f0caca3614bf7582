//! A merchant's ledger settings with their documented defaults applied.

use std::time::Duration;

use kopilka_proto::ledger::{LedgerSettings, ShortfallPolicy};
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;

use crate::domain::amounts::{self, Sign};
use crate::domain::book::Shortfall;
use crate::error::Error;

/// Settings as operations use them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub currency: String,
    pub money_scale: u32,
    pub points_scale: u32,
    pub shortfall_policy: ShortfallPolicy,
    pub max_negative_balance: Option<Decimal>,
    pub hold_default_ttl: Duration,
    pub hold_max_ttl: Duration,
    pub expiry_notice: Duration,
    pub idempotency_retention: Duration,
    pub max_receipt_age: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            currency: String::new(),
            money_scale: 2,
            points_scale: 0,
            shortfall_policy: ShortfallPolicy::AllowNegative,
            max_negative_balance: None,
            hold_default_ttl: Duration::from_secs(15 * 60),
            hold_max_ttl: Duration::from_secs(24 * 3600),
            expiry_notice: Duration::from_secs(7 * 24 * 3600),
            idempotency_retention: Duration::from_secs(30 * 24 * 3600),
            max_receipt_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Most decimals of money and points.
const MAX_SCALE: u32 = 4;

/// A money or points scale: 0 to [`MAX_SCALE`] decimals.
fn scale(v: &mut Violations, field: &str, value: u32) {
    if value > MAX_SCALE {
        v.add(field, format!("must be 0 to {MAX_SCALE}"));
    }
}

fn duration(d: &Option<pbjson_types::Duration>) -> Option<Duration> {
    d.as_ref()
        .filter(|d| d.seconds > 0 || d.nanos > 0)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

fn proto_duration(d: Duration) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

impl Settings {
    /// Applies defaults to stored (or requested) settings; refuses out-of-range values.
    pub fn from_proto(p: &LedgerSettings) -> Result<Self, Error> {
        let d = Settings::default();
        let mut v = Violations::new();
        scale(&mut v, "settings.money_scale", p.money_scale);
        scale(&mut v, "settings.points_scale", p.points_scale);
        let max_negative_balance = v.decimal(
            "settings.max_negative_balance",
            &p.max_negative_balance,
            MAX_SCALE,
            Sign::NonNegative,
            false,
        );
        let retention = duration(&p.idempotency_retention).unwrap_or(d.idempotency_retention);
        if retention < Duration::from_secs(24 * 3600) {
            v.add("settings.idempotency_retention", "must be at least 1 day");
        }
        v.check()?;
        Ok(Settings {
            currency: p.currency.clone(),
            money_scale: if p.money_scale == 0 && p.currency.is_empty() {
                d.money_scale
            } else {
                p.money_scale
            },
            points_scale: p.points_scale,
            shortfall_policy: match ShortfallPolicy::try_from(p.shortfall_policy) {
                Ok(ShortfallPolicy::ReportShortfall) => ShortfallPolicy::ReportShortfall,
                _ => ShortfallPolicy::AllowNegative,
            },
            max_negative_balance,
            hold_default_ttl: duration(&p.hold_default_ttl).unwrap_or(d.hold_default_ttl),
            hold_max_ttl: duration(&p.hold_max_ttl).unwrap_or(d.hold_max_ttl),
            expiry_notice: duration(&p.expiry_notice).unwrap_or(d.expiry_notice),
            idempotency_retention: retention,
            max_receipt_age: duration(&p.max_receipt_age).unwrap_or(d.max_receipt_age),
        })
    }

    pub fn to_proto(&self) -> LedgerSettings {
        LedgerSettings {
            currency: self.currency.clone(),
            money_scale: self.money_scale,
            points_scale: self.points_scale,
            shortfall_policy: self.shortfall_policy as i32,
            max_negative_balance: self
                .max_negative_balance
                .map(|d| d.to_string())
                .unwrap_or_default(),
            hold_default_ttl: proto_duration(self.hold_default_ttl),
            hold_max_ttl: proto_duration(self.hold_max_ttl),
            expiry_notice: proto_duration(self.expiry_notice),
            idempotency_retention: proto_duration(self.idempotency_retention),
            max_receipt_age: proto_duration(self.max_receipt_age),
        }
    }

    /// The shortfall rule for a refund (`requested` UNSPECIFIED = the merchant's).
    pub fn shortfall(&self, requested: ShortfallPolicy) -> (Shortfall, ShortfallPolicy) {
        let policy = match requested {
            ShortfallPolicy::Unspecified => self.shortfall_policy,
            p => p,
        };
        match policy {
            ShortfallPolicy::ReportShortfall => (Shortfall::Report, policy),
            _ => (
                Shortfall::AllowNegative(self.max_negative_balance),
                ShortfallPolicy::AllowNegative,
            ),
        }
    }

    /// Formats points with the merchant's scale.
    pub fn points(&self, d: Decimal) -> String {
        amounts::format(d, self.points_scale)
    }

    /// Formats money with the merchant's scale.
    pub fn money(&self, d: Decimal) -> String {
        amounts::format(d, self.money_scale)
    }
}
