//! Proportional shares that add up exactly.

use rust_decimal::{Decimal, RoundingStrategy};

/// The share of `total` that `part / whole` of it represents, rounded down to `scale`; the last
/// share (when `part == whole - done`) is the rest, so repeated partial shares never drift.
///
/// `total_done` is what earlier shares took; `part_done` how much of `whole` they covered.
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
    let share = (total * part / whole).round_dp_with_strategy(scale, RoundingStrategy::ToZero);
    share.min(rest)
}

#[cfg(test)]
mod tests {
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
}
