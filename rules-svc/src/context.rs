//! Reading the customer context: turnover over a window or a lifetime, purchase counts, the
//! last purchase. Shared by receipt evaluation and tier decisions.

use chrono::{DateTime, Utc};
use kopilka_proto::rules::CustomerContext;
use kopilka_proto::types::{lookback::Span, Lookback, PurchaseAggregates};
use rust_decimal::Decimal;

use crate::money::{self, Sign};

/// Whether two lookbacks describe the same window.
pub fn same_lookback(a: &Lookback, b: &Lookback) -> bool {
    match (&a.span, &b.span) {
        (Some(Span::Days(x)), Some(Span::Days(y))) => x == y,
        (Some(Span::Months(x)), Some(Span::Months(y))) => x == y,
        _ => false,
    }
}

fn amount(value: &str) -> Decimal {
    // Aggregates come from the ledger; an unreadable value counts as none rather than failing
    // a checkout (the input validation reports it where it matters).
    if value.is_empty() {
        return Decimal::ZERO;
    }
    money::parse(value, 6, Sign::NonNegative).unwrap_or(Decimal::ZERO)
}

/// The purchase aggregates, if any.
pub fn aggregates(customer: Option<&CustomerContext>) -> Option<&PurchaseAggregates> {
    customer.and_then(|c| c.aggregates.as_ref())
}

/// Lifetime turnover before this receipt (0 without aggregates).
pub fn lifetime_turnover(aggregates: Option<&PurchaseAggregates>) -> Decimal {
    aggregates.map_or(Decimal::ZERO, |a| amount(&a.lifetime_turnover))
}

/// Turnover over `lookback` before this receipt; `None` if the caller did not send that window
/// (a window the program needs but the input lacks counts as zero turnover: callers fetch the
/// windows in `EvaluationNeeds.lookbacks`).
pub fn window_turnover(
    aggregates: Option<&PurchaseAggregates>,
    lookback: &Lookback,
) -> Option<Decimal> {
    aggregates?
        .windows
        .iter()
        .find(|w| {
            w.lookback
                .as_ref()
                .is_some_and(|l| same_lookback(l, lookback))
        })
        .map(|w| amount(&w.turnover))
}

/// Number of earlier purchases (0 without aggregates).
pub fn purchase_count(aggregates: Option<&PurchaseAggregates>) -> u64 {
    aggregates.map_or(0, |a| a.purchase_count)
}

/// Time of the previous purchase, if any.
pub fn last_purchase_at(aggregates: Option<&PurchaseAggregates>) -> Option<DateTime<Utc>> {
    let t = aggregates?.last_purchase_at.as_ref()?;
    kopilka_runtime::timestamps::from_proto(t)
}
