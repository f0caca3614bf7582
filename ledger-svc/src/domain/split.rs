//! Proportional shares that add up exactly.
//!
//! The rule (for money, points taken back and points restored alike): when `part` more of a
//! line's `whole` quantity is refunded after `part_done`, this refund's share of the line's
//! `total` is the **cumulative** share `⌊total × (part_done + part) / whole⌋` (rounded toward
//! zero to `scale`) minus what earlier refunds took; the refund that completes the line takes
//! exactly what is left. So after any number of partial refunds the refunded sum is within one
//! rounding step (`10^-scale`) below `total × refunded / whole`, and it is `total` once the line
//! is fully returned; rounding never accumulates across refunds.

use rust_decimal::{Decimal, RoundingStrategy};

/// The share of `total` that `part` of `whole` units represent, rounded toward zero to `scale`;
/// all of it at (or beyond) `whole`.
pub fn cumulative(total: Decimal, whole: Decimal, part: Decimal, scale: u32) -> Decimal {
    if whole <= Decimal::ZERO || part <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    if part >= whole {
        return total;
    }
    (total * part / whole).round_dp_with_strategy(scale, RoundingStrategy::ToZero)
}

/// This refund's share of `total` when `part` more of `whole` go back after `part_done`:
/// `cumulative(part_done + part) − total_done`, kept within `0 ..= total − total_done`; the
/// refund that completes the whole takes the rest.
///
/// `total_done` is what earlier refunds took (stored); when they followed this rule it equals
/// `cumulative(part_done)`, and if they did not (older refunds) this refund makes up the drift.
pub fn proportional(
    total: Decimal,
    total_done: Decimal,
    whole: Decimal,
    part_done: Decimal,
    part: Decimal,
    scale: u32,
) -> Decimal {
    if whole <= Decimal::ZERO || part <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    let rest = (total - total_done).max(Decimal::ZERO);
    if part_done + part >= whole {
        return rest;
    }
    let target = cumulative(total, whole, part_done + part, scale);
    (target - total_done).max(Decimal::ZERO).min(rest)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn shares_sum_to_the_total() {
        let d = Decimal::from;
        // 10 points over 3 units refunded one at a time: 3 + 3 + 4.
        let mut done = Decimal::ZERO;
        let mut shares = vec![];
        for i in 0..3 {
            let s = proportional(d(10), done, d(3), d(i), d(1), 0);
            done += s;
            shares.push(s);
        }
        assert_eq!(shares, vec![d(3), d(3), d(4)]);
        assert_eq!(done, d(10));
    }

    #[test]
    fn full_part_takes_everything_left() {
        let d = Decimal::from;
        assert_eq!(proportional(d(7), d(2), d(5), d(1), d(4), 0), d(5));
    }

    /// 5 points over 20 units returned one at a time: a point goes back with every 4th unit
    /// (each refund rounding on its own would take 0 nineteen times and 5 at the end).
    #[test]
    fn one_unit_at_a_time_keeps_pace() {
        let d = Decimal::from;
        let mut done = Decimal::ZERO;
        let mut steps = vec![];
        for k in 0..20 {
            let s = proportional(d(5), done, d(20), d(k), d(1), 0);
            done += s;
            steps.push(s);
        }
        let expected: Vec<Decimal> = (1..=20)
            .map(|k| if k % 4 == 0 { d(1) } else { d(0) })
            .collect();
        assert_eq!(steps, expected);
    }

    /// Money with cents: 481.00 over 2 units is 240.50 + 240.50; 100.00 over 3 is
    /// 33.33 + 33.33 + 33.34.
    #[test]
    fn money_rounds_to_the_cent() {
        let m = |s: &str| s.parse::<Decimal>().unwrap();
        let d = Decimal::from;
        assert_eq!(
            proportional(m("481.00"), d(0), d(2), d(0), d(1), 2),
            m("240.50")
        );
        let a = proportional(m("100.00"), d(0), d(3), d(0), d(1), 2);
        let b = proportional(m("100.00"), a, d(3), d(1), d(1), 2);
        let c = proportional(m("100.00"), a + b, d(3), d(2), d(1), 2);
        assert_eq!((a, b, c), (m("33.33"), m("33.33"), m("33.34")));
    }

    /// A line: its total (in units of 10^-scale), whole quantity (thousandths), scale, and a
    /// sequence of refunded quantities (thousandths) that returns all of it.
    fn line() -> impl Strategy<Value = (i64, i64, u32, Vec<i64>)> {
        (0i64..10_000_000, 1i64..50_000, 0u32..=4).prop_flat_map(|(total, whole, scale)| {
            proptest::collection::vec(1i64..=whole, 1..40).prop_map(move |cuts| {
                // Turn arbitrary cuts into parts that sum to `whole`.
                let mut parts = Vec::new();
                let mut left = whole;
                for c in cuts {
                    if left == 0 {
                        break;
                    }
                    let p = c.min(left);
                    parts.push(p);
                    left -= p;
                }
                if left > 0 {
                    parts.push(left);
                }
                (total, whole, scale, parts)
            })
        })
    }

    proptest! {
        /// Σ per-refund shares is the line's total once it is fully returned, and after any
        /// prefix of k units the refunded sum is within one rounding step below k/n of it.
        #[test]
        fn refunds_never_drift((total, whole, scale, parts) in line()) {
            let total = Decimal::new(total, scale);
            let whole = Decimal::new(whole, 3);
            let step = Decimal::new(1, scale);
            let (mut done, mut qty) = (Decimal::ZERO, Decimal::ZERO);
            for p in parts {
                let p = Decimal::new(p, 3);
                let s = proportional(total, done, whole, qty, p, scale);
                prop_assert!(s >= Decimal::ZERO);
                done += s;
                qty += p;
                // done ≤ total·qty/whole < done + step, compared without dividing.
                let exact = total * qty;
                let at = format!("{done} after {qty} of {whole} units of {total}");
                prop_assert!(done * whole <= exact, "ahead: {}", at);
                prop_assert!(exact < (done + step) * whole, "behind: {}", at);
            }
            prop_assert_eq!(qty, whole);
            prop_assert_eq!(done, total);
        }
    }
}
