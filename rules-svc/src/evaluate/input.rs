//! Reading an [`EvaluationInput`]: every limit the contract documents is checked here, with
//! the path of the bad field, before any rule runs. What comes out is parsed once: amounts as
//! decimals, categories expanded with their ancestors and interned against the plan.

use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use chrono_tz::Tz;
use kopilka_proto::rules::{CustomerContext, EvaluationInput, ExplainLevel};
use kopilka_runtime::validate::Violations;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::catalog::Catalog;
use crate::error::{self, Error};
use crate::money::{self, Sign};
use crate::plan::{Plan, Sym};

/// Most lines per receipt.
pub const MAX_LINES: usize = 500;
/// Largest unit price.
const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Largest quantity.
const MAX_QUANTITY: Decimal = Decimal::from_parts(100_000, 0, 0, false, 0);

/// One parsed basket line.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub id: &'a str,
    pub product: Option<Sym>,
    /// Interned categories with their ancestors, sorted.
    pub categories: Vec<Sym>,
    pub unit_price: Decimal,
    pub quantity: Decimal,
    /// Amount before loyalty discounts (money).
    pub gross: Decimal,
    pub weighted: bool,
}

impl Line<'_> {
    /// Whole units for unit-based mechanics; weighted lines have none.
    pub fn units(&self) -> u32 {
        if self.weighted {
            return 0;
        }
        self.quantity.trunc().to_u32().unwrap_or(0)
    }
}

/// The customer's tier rates, parsed.
#[derive(Debug, Clone)]
pub struct Tier<'a> {
    pub code: &'a str,
    pub discount: Option<Decimal>,
    pub accrual: Option<Decimal>,
    pub share: Option<Decimal>,
}

/// A receipt ready for evaluation.
#[derive(Debug)]
pub struct Receipt<'a> {
    pub lines: Vec<Line<'a>>,
    pub at: DateTime<Utc>,
    pub time_zone: Tz,
    pub local: NaiveDateTime,
    /// `None` for an anonymous receipt.
    pub customer: Option<&'a CustomerContext>,
    pub tier: Option<Tier<'a>>,
    pub available: Decimal,
    pub redeem: Decimal,
    /// Upper-cased presented codes.
    pub promo_codes: Vec<String>,
    pub store_id: &'a str,
    pub explain: ExplainLevel,
    /// Sum of gross amounts.
    pub total: Decimal,
}

/// The basket's problems: BASKET_INVALID, unless one has a reason of its own (LIMIT_EXCEEDED,
/// TIMESTAMP_IN_FUTURE), which then names the error.
struct Problems(Violations);

impl Problems {
    /// A pathological basket could produce thousands; the first hundred say enough.
    fn room(&self) -> bool {
        self.0.fields().len() < 100
    }

    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.room() {
            self.0.add(field, description);
        }
    }

    /// A documented size limit (lines, characters, codes): LIMIT_EXCEEDED naming the field and
    /// the limit.
    fn limit(&mut self, field: impl Into<String>, description: impl Into<String>, limit: usize) {
        if self.room() {
            let field = field.into();
            let metadata = vec![("field", field.clone()), ("limit", limit.to_string())];
            self.0
                .add_with_reason(field, description, "LIMIT_EXCEEDED", metadata);
        }
    }

    fn check_len(&mut self, field: impl FnOnce() -> String, value: &str, min: usize, max: usize) {
        let n = value.chars().count();
        if n > max {
            self.limit(field(), format!("must be {min} to {max} characters"), max);
        } else if n < min {
            let what = if min > 0 && n == 0 {
                "is required".to_owned()
            } else {
                format!("must be {min} to {max} characters")
            };
            self.add(field(), what);
        }
    }
}

fn percent(value: &str) -> Option<Decimal> {
    if value.is_empty() {
        return None;
    }
    money::parse(value, 4, Sign::NonNegative)
        .ok()
        .filter(|d| *d <= Decimal::ONE_HUNDRED)
}

impl<'a> Receipt<'a> {
    /// Checks and parses `input`; `now` is the default sale time and the reference for "not in
    /// the future".
    pub fn read(
        plan: &Plan,
        input: &'a EvaluationInput,
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) -> Result<Receipt<'a>, Error> {
        let s = plan.settings();
        let mut p = Problems(Violations::new());
        if input.lines.is_empty() {
            p.add("input.lines", "a receipt needs at least one line");
        }
        if input.lines.len() > MAX_LINES {
            p.limit(
                "input.lines",
                format!("at most {MAX_LINES} lines"),
                MAX_LINES,
            );
        }
        let mut lines = Vec::with_capacity(input.lines.len().min(MAX_LINES));
        let mut total = Decimal::ZERO;
        for (i, l) in input.lines.iter().enumerate().take(MAX_LINES) {
            let f = |name: &str| format!("input.lines[{i}].{name}");
            p.check_len(|| f("line_id"), &l.line_id, 1, 64);
            if input.lines[..i].iter().any(|o| o.line_id == l.line_id) {
                p.add(f("line_id"), "line ids must be unique within the receipt");
            }
            p.check_len(|| f("product_id"), &l.product_id, 1, 64);
            p.check_len(|| f("sku"), &l.sku, 0, 64);
            p.check_len(|| f("name"), &l.name, 0, 256);
            if l.category_ids.len() > 16 {
                p.limit(f("category_ids"), "at most 16 categories", 16);
            }
            for (j, c) in l.category_ids.iter().enumerate() {
                p.check_len(|| format!("input.lines[{i}].category_ids[{j}]"), c, 1, 64);
            }
            let unit_price = match money::parse(&l.unit_price, s.money_scale, Sign::NonNegative) {
                Ok(d) if d > MAX_PRICE => {
                    p.add(f("unit_price"), "must be at most 1000000000");
                    Decimal::ZERO
                }
                Ok(d) => d,
                Err(e) => {
                    p.add(f("unit_price"), e);
                    Decimal::ZERO
                }
            };
            let quantity = match money::parse(&l.quantity, 3, Sign::Positive) {
                Ok(d) if d > MAX_QUANTITY => {
                    p.add(f("quantity"), "must be at most 100000");
                    Decimal::ONE
                }
                Ok(d) => d,
                Err(e) => {
                    p.add(f("quantity"), e);
                    Decimal::ONE
                }
            };
            let full = s.round_money(unit_price * quantity);
            let gross = if l.amount.is_empty() {
                full
            } else {
                match money::parse(&l.amount, s.money_scale, Sign::NonNegative) {
                    Ok(d) if d > unit_price * quantity => {
                        p.add(f("amount"), "must not be above unit_price x quantity");
                        full
                    }
                    Ok(d) => d,
                    Err(e) => {
                        p.add(f("amount"), e);
                        full
                    }
                }
            };
            total += gross;
            let mut categories: Vec<Sym> = if catalog.is_empty() {
                l.category_ids
                    .iter()
                    .filter_map(|c| plan.symbol(c))
                    .collect()
            } else {
                catalog
                    .with_ancestors(&l.category_ids)
                    .into_iter()
                    .filter_map(|c| plan.symbol(c))
                    .collect()
            };
            categories.sort_unstable();
            categories.dedup();
            lines.push(Line {
                id: &l.line_id,
                product: plan.symbol(&l.product_id),
                categories,
                unit_price,
                quantity,
                gross,
                weighted: l.weighted,
            });
        }
        if input.promo_codes.len() > 10 {
            p.limit("input.promo_codes", "at most 10 codes", 10);
        }
        for (i, c) in input.promo_codes.iter().enumerate() {
            p.check_len(|| format!("input.promo_codes[{i}]"), c, 1, 32);
        }
        let at = match &input.occurred_at {
            None => now,
            Some(t) => match kopilka_runtime::timestamps::from_proto(t) {
                Some(at) if at > now + Duration::minutes(5) => {
                    if p.room() {
                        p.0.add_with_reason(
                            "input.occurred_at",
                            "is more than 5 minutes in the future",
                            "TIMESTAMP_IN_FUTURE",
                            vec![("field", "input.occurred_at".to_owned())],
                        );
                    }
                    now
                }
                Some(at) => at,
                None => {
                    p.add("input.occurred_at", "is not a valid timestamp");
                    now
                }
            },
        };
        let time_zone = if input.time_zone.is_empty() {
            s.time_zone
        } else {
            Tz::from_str(&input.time_zone).unwrap_or_else(|_| {
                p.add(
                    "input.time_zone",
                    "is not an IANA time zone such as Europe/Moscow",
                );
                s.time_zone
            })
        };
        p.check_len(|| "input.store_id".to_owned(), &input.store_id, 0, 64);
        p.check_len(|| "input.terminal_id".to_owned(), &input.terminal_id, 0, 64);
        let redeem = if input.redeem_points.is_empty() {
            Decimal::ZERO
        } else {
            money::parse(&input.redeem_points, s.points_scale, Sign::NonNegative).unwrap_or_else(
                |e| {
                    p.add("input.redeem_points", e);
                    Decimal::ZERO
                },
            )
        };
        let customer = input
            .customer
            .as_ref()
            .filter(|c| !c.customer_id.is_empty());
        let mut available = Decimal::ZERO;
        let mut tier = None;
        if let Some(c) = customer {
            p.check_len(
                || "input.customer.customer_id".to_owned(),
                &c.customer_id,
                1,
                64,
            );
            if !c.available_points.is_empty() {
                // A negative balance is a debt left by a refund (ALLOW_NEGATIVE): the customer
                // is still served; nothing is redeemable until the debt is paid.
                let (negative, magnitude) = match c.available_points.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, c.available_points.as_str()),
                };
                available = money::parse(magnitude, 4, Sign::NonNegative)
                    .map(|d| if negative { -d } else { d })
                    .unwrap_or_else(|e| {
                        p.add("input.customer.available_points", e);
                        Decimal::ZERO
                    });
            }
            if let Some(t) = &c.tier {
                let mut rate = |name: &str, v: &str| {
                    let parsed = percent(v);
                    if parsed.is_none() && !v.is_empty() {
                        p.add(
                            format!("input.customer.tier.{name}"),
                            "must be a percentage from 0 to 100",
                        );
                    }
                    parsed
                };
                tier = Some(Tier {
                    code: &t.code,
                    discount: rate("discount_percent", &t.discount_percent),
                    accrual: rate("accrual_percent", &t.accrual_percent),
                    share: rate("max_redeem_share_percent", &t.max_redeem_share_percent),
                });
            }
            if let Some(a) = &c.aggregates {
                for (name, v) in [("lifetime_turnover", &a.lifetime_turnover)] {
                    if !v.is_empty() && money::parse(v, 4, Sign::NonNegative).is_err() {
                        p.add(
                            format!("input.customer.aggregates.{name}"),
                            "must be an amount >= 0",
                        );
                    }
                }
                for (i, w) in a.windows.iter().enumerate() {
                    if !w.turnover.is_empty()
                        && money::parse(&w.turnover, 4, Sign::NonNegative).is_err()
                    {
                        p.add(
                            format!("input.customer.aggregates.windows[{i}].turnover"),
                            "must be an amount >= 0",
                        );
                    }
                }
            }
        } else if !redeem.is_zero() {
            p.add(
                "input.redeem_points",
                "an anonymous receipt cannot be paid with points",
            );
        }
        if !p.0.is_empty() {
            return Err(Error::Invalid(error::with_default_reason(
                p.0,
                "BASKET_INVALID",
            )));
        }
        Ok(Receipt {
            lines,
            local: at.with_timezone(&time_zone).naive_local(),
            at,
            time_zone,
            customer,
            tier,
            available,
            redeem,
            promo_codes: input.promo_codes.iter().map(|c| c.to_uppercase()).collect(),
            store_id: &input.store_id,
            explain: match ExplainLevel::try_from(input.explain) {
                Ok(ExplainLevel::None) => ExplainLevel::None,
                Ok(ExplainLevel::Full) => ExplainLevel::Full,
                _ => ExplainLevel::Applied,
            },
            total,
        })
    }
}
