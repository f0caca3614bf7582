//! Whether a rule's conditions hold for a receipt, and if not, which one failed and by how
//! much (for near misses and hints).
//!
//! Local-time rules: time windows are weekly, in the store's (or program's) zone, start
//! inclusive and end exclusive; a window ending before it starts runs past midnight and belongs
//! to the weekday it starts on. Birthdays: the window is counted in local dates around the
//! birthday of the receipt's year (and of the years before and after, so a window can span New
//! Year); someone born on 29 February celebrates on 28 February in other years.

use chrono::{Datelike, Duration, NaiveDate, Timelike};
use rust_decimal::Decimal;

use super::input::Receipt;
use crate::context;
use crate::plan::{Conds, Range};

/// The condition that failed: its path under `rules[i].when` and, for amounts, what is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub field: &'static str,
    /// Money still needed to meet a lower bound (receipt total, basket amount).
    pub missing: Option<Decimal>,
    /// Set where the failure is about the receipt's total.
    pub bound: Option<Decimal>,
}

fn fail(field: &'static str) -> Result<(), Failure> {
    Err(Failure {
        field,
        missing: None,
        bound: None,
    })
}

fn in_range(field: &'static str, range: &Range, v: Decimal, unit: Decimal) -> Result<(), Failure> {
    if range.contains(v) {
        return Ok(());
    }
    Err(Failure {
        field,
        missing: range.missing(v, unit),
        bound: range.lower.map(|(b, _)| b),
    })
}

/// The birthday in `year`, with 29 February moved to the 28th in common years.
fn birthday_in(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, day).or_else(|| {
        (month == 2 && day == 29)
            .then(|| NaiveDate::from_ymd_opt(year, 2, 28))
            .flatten()
    })
}

/// Whether `date` is within `before` days before to `after` days after the birthday.
pub fn in_birthday_window(date: NaiveDate, month: u32, day: u32, before: u32, after: u32) -> bool {
    (date.year() - 1..=date.year() + 1).any(|y| {
        birthday_in(y, month, day).is_some_and(|b| {
            date >= b - Duration::days(i64::from(before))
                && date <= b + Duration::days(i64::from(after))
        })
    })
}

/// Whether a weekly window holds at local weekday `wd` (Monday = 1) and minute `m`.
fn in_window(weekdays: &[u32], start: u32, end: u32, wd: u32, m: u32) -> bool {
    let day_ok = |d: u32| weekdays.is_empty() || weekdays.contains(&d);
    if start < end {
        day_ok(wd) && m >= start && m < end
    } else {
        // Past midnight: the late part belongs to the previous day.
        let prev = if wd == 1 { 7 } else { wd - 1 };
        (day_ok(wd) && m >= start) || (day_ok(prev) && m < end)
    }
}

/// Checks `c` against the receipt; `money_unit` is the currency's smallest step.
pub fn check(c: &Conds, r: &Receipt<'_>, money_unit: Decimal) -> Result<(), Failure> {
    if !c.store_ids.is_empty() && !c.store_ids.iter().any(|s| s == r.store_id) {
        return fail("store_ids");
    }
    if let Some((start, end)) = c.active {
        if start.is_some_and(|s| r.at < s) || end.is_some_and(|e| r.at >= e) {
            return fail("active");
        }
    }
    if !c.windows.is_empty() {
        let wd = r.local.weekday().number_from_monday();
        let minute = r.local.hour() * 60 + r.local.minute();
        if !c
            .windows
            .iter()
            .any(|w| in_window(&w.weekdays, w.start, w.end, wd, minute))
        {
            return fail("time_windows");
        }
    }
    if !c.promo_codes.is_empty() && !r.promo_codes.iter().any(|p| c.promo_codes.contains(p)) {
        return fail("promo_code");
    }
    if let Some(range) = &c.receipt_total {
        in_range("receipt_total", range, r.total, money_unit)?;
    }
    if let Some(b) = &c.basket {
        let mut quantity = Decimal::ZERO;
        let mut amount = Decimal::ZERO;
        for l in &r.lines {
            let hit = l.product.is_some_and(|p| b.products.contains(&p))
                || l.categories.iter().any(|x| b.categories.contains(x));
            if hit {
                quantity += l.quantity;
                amount += l.gross;
            }
        }
        if quantity < b.min_quantity {
            return fail("basket_contains");
        }
        if let Some(min) = b.min_amount {
            if amount < min {
                return Err(Failure {
                    field: "basket_contains.min_amount",
                    missing: Some(min - amount),
                    bound: Some(min),
                });
            }
        }
    }
    let Some(customer) = r.customer else {
        return if c.needs_customer() {
            fail("include_anonymous")
        } else {
            Ok(())
        };
    };
    if !c.tiers.is_empty()
        && !r
            .tier
            .as_ref()
            .is_some_and(|t| c.tiers.iter().any(|x| x == t.code))
    {
        return fail("tiers");
    }
    let aggregates = customer.aggregates.as_ref();
    if let Some((before, after)) = c.birthday {
        let Some(b) = &customer.birth_date else {
            return fail("birthday");
        };
        let (Ok(month), Ok(day)) = (u32::try_from(b.month), u32::try_from(b.day)) else {
            return fail("birthday");
        };
        if !in_birthday_window(r.local.date(), month, day, before, after) {
            return fail("birthday");
        }
    }
    if c.since_within_days.is_some() || c.since_at_least_days.is_some() {
        let Some(last) = context::last_purchase_at(aggregates) else {
            return fail("since_last_purchase");
        };
        let elapsed = r.at - last;
        if c.since_within_days
            .is_some_and(|d| elapsed > Duration::days(i64::from(d)))
        {
            return fail("since_last_purchase.within_days");
        }
        if c.since_at_least_days
            .is_some_and(|d| elapsed < Duration::days(i64::from(d)))
        {
            return fail("since_last_purchase.at_least_days");
        }
    }
    if let Some((lookback, range)) = &c.turnover {
        let turnover = match lookback {
            Some(l) => context::window_turnover(aggregates, l).unwrap_or(Decimal::ZERO),
            None => context::lifetime_turnover(aggregates),
        };
        if !range.contains(turnover) {
            return fail("turnover");
        }
    }
    if let Some((at_least, at_most)) = c.purchase_count {
        let n = context::purchase_count(aggregates);
        if at_least.is_some_and(|a| n < a) || at_most.is_some_and(|a| n > a) {
            return fail("purchase_count");
        }
    }
    if let Some(days) = c.registered_within_days {
        let registered = customer
            .registered_at
            .as_ref()
            .and_then(kopilka_runtime::timestamps::from_proto);
        if registered.is_none_or(|t| r.at - t > Duration::days(i64::from(days))) {
            return fail("registered_within_days");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birthday_window_spans_new_year_and_leap_day() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        // Born 30 December: ±3 days reaches 2 January.
        assert!(in_birthday_window(d(2026, 1, 2), 12, 30, 3, 3));
        assert!(!in_birthday_window(d(2026, 1, 3), 12, 30, 3, 3));
        assert!(in_birthday_window(d(2025, 12, 27), 12, 30, 3, 3));
        assert!(!in_birthday_window(d(2025, 12, 26), 12, 30, 3, 3));
        // Born 29 February: 28 February in a common year, the 29th in a leap year.
        assert!(in_birthday_window(d(2027, 2, 28), 2, 29, 0, 0));
        assert!(!in_birthday_window(d(2027, 3, 1), 2, 29, 0, 0));
        assert!(in_birthday_window(d(2028, 2, 29), 2, 29, 0, 0));
        assert!(!in_birthday_window(d(2028, 2, 28), 2, 29, 0, 0));
        assert!(in_birthday_window(d(2027, 3, 3), 2, 29, 0, 3));
        assert!(!in_birthday_window(d(2027, 3, 4), 2, 29, 0, 3));
    }

    #[test]
    fn windows_past_midnight_belong_to_their_start_day() {
        let fri = [5];
        // Friday 22:00–02:00: Saturday 01:00 is in, Friday 01:00 is not.
        assert!(in_window(&fri, 22 * 60, 2 * 60, 6, 60));
        assert!(!in_window(&fri, 22 * 60, 2 * 60, 5, 60));
        assert!(in_window(&fri, 22 * 60, 2 * 60, 5, 23 * 60));
        // Mon–Thu 9:00–12:00: 12:00 is out, 9:00 in.
        let mon_thu = [1, 2, 3, 4];
        assert!(in_window(&mon_thu, 540, 720, 1, 540));
        assert!(!in_window(&mon_thu, 540, 720, 1, 720));
        assert!(!in_window(&mon_thu, 540, 720, 5, 600));
    }
}
