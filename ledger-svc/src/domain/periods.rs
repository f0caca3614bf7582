//! Splitting a period into calendar buckets (days, ISO weeks, months) in a time zone, for the
//! merchant totals (L6).

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// Bucket size (values of `kopilka.ledger.v1.Granularity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Week,
    Month,
    Total,
}

/// The local midnight starting `date`, as a UTC instant (the first valid instant when a DST
/// change skips midnight).
fn midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let naive = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => tz
            .from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
            .map_or_else(|| Utc.from_utc_datetime(&naive), |t| t.with_timezone(&Utc)),
    }
}

fn next_start(tz: Tz, start: NaiveDate, g: Granularity) -> NaiveDate {
    match g {
        Granularity::Day => start + Duration::days(1),
        Granularity::Week => {
            start + Duration::days(7 - i64::from(start.weekday().num_days_from_monday()))
        }
        Granularity::Month => {
            let (y, m) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1).expect("first of a month exists")
        }
        Granularity::Total => {
            let _ = tz;
            NaiveDate::MAX
        }
    }
}

/// `[from, to)` split at local calendar boundaries; the first and last buckets are clipped to
/// the period.
pub fn buckets(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    g: Granularity,
    tz: Tz,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    if g == Granularity::Total || to <= from {
        return vec![(from, to)];
    }
    let mut out = Vec::new();
    let mut start = from;
    let mut date = from.with_timezone(&tz).date_naive();
    while start < to {
        date = next_start(tz, date, g);
        let end = midnight(tz, date).min(to);
        if end > start {
            out.push((start, end));
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn days_follow_the_merchants_midnight() {
        // Moscow is UTC+3: local days start at 21:00 UTC.
        let b = buckets(
            utc(2026, 3, 1, 0),
            utc(2026, 3, 3, 0),
            Granularity::Day,
            chrono_tz::Europe::Moscow,
        );
        assert_eq!(
            b,
            vec![
                (utc(2026, 3, 1, 0), utc(2026, 3, 1, 21)),
                (utc(2026, 3, 1, 21), utc(2026, 3, 2, 21)),
                (utc(2026, 3, 2, 21), utc(2026, 3, 3, 0))
            ]
        );
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let w = buckets(
            utc(2026, 1, 7, 0),
            utc(2026, 1, 20, 0),
            Granularity::Week,
            chrono_tz::UTC,
        );
        assert_eq!(
            w.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![utc(2026, 1, 7, 0), utc(2026, 1, 12, 0), utc(2026, 1, 19, 0)]
        );
        let m = buckets(
            utc(2026, 11, 15, 0),
            utc(2027, 2, 1, 0),
            Granularity::Month,
            chrono_tz::UTC,
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[1], (utc(2026, 12, 1, 0), utc(2027, 1, 1, 0)));
    }

    #[test]
    fn total_is_one_bucket() {
        assert_eq!(
            buckets(
                utc(2026, 1, 1, 0),
                utc(2026, 6, 1, 0),
                Granularity::Total,
                chrono_tz::UTC
            )
            .len(),
            1
        );
    }
}
