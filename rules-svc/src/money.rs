//! Exact arithmetic of evaluation: the program's rounding modes and largest-remainder
//! allocation, so receipt-level amounts spread over lines add up to the total exactly.
//! Parsing and formatting of decimal strings is the runtime's ([`kopilka_runtime::decimal`]).

use kopilka_proto::types::Rounding as RoundingProto;
use rust_decimal::{Decimal, RoundingStrategy};

pub use kopilka_runtime::decimal::{format, parse, Sign, MAX_AMOUNT};

/// How an amount is rounded to its scale (`kopilka.type.v1.Rounding` without "unspecified").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    HalfUp,
    HalfEven,
    Down,
    Up,
}

impl Rounding {
    /// The proto value, with `default` for ROUNDING_UNSPECIFIED and unknown values.
    pub fn from_proto(value: i32, default: Rounding) -> Rounding {
        match RoundingProto::try_from(value) {
            Ok(RoundingProto::HalfUp) => Rounding::HalfUp,
            Ok(RoundingProto::HalfEven) => Rounding::HalfEven,
            Ok(RoundingProto::Down) => Rounding::Down,
            Ok(RoundingProto::Up) => Rounding::Up,
            _ => default,
        }
    }

    fn strategy(self) -> RoundingStrategy {
        match self {
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
            Rounding::Down => RoundingStrategy::ToZero,
            Rounding::Up => RoundingStrategy::AwayFromZero,
        }
    }

    /// `value` rounded to `scale` decimals.
    pub fn round(self, value: Decimal, scale: u32) -> Decimal {
        value.round_dp_with_strategy(scale, self.strategy())
    }
}

/// One unit of the last decimal place at `scale` (0.01 at scale 2).
pub fn unit(scale: u32) -> Decimal {
    Decimal::new(1, scale)
}

/// Splits `total` (already at `scale`) over `weights` in proportion, by largest remainder: each
/// share is first rounded down to `scale`, then the units left over go one each to the shares
/// with the largest remainders (ties: the earlier index). The shares sum to `total` exactly and
/// none is negative. Zero or negative weights get nothing; if every weight is zero, everything
/// is zero (the caller decides whether that is an error).
pub fn allocate(total: Decimal, weights: &[Decimal], scale: u32) -> Vec<Decimal> {
    allocate_units(total, weights, scale).unwrap_or_else(|| allocate_exact(total, weights, scale))
}

/// [`allocate`] in integers: `total` in units of `scale`, weights at one common scale, each
/// share `floor(total × w / whole)` with its remainder. The same answer as the decimal
/// version, without a 28-digit division per line; `None` when a product would not fit in i128.
fn allocate_units(total: Decimal, weights: &[Decimal], scale: u32) -> Option<Vec<Decimal>> {
    if total <= Decimal::ZERO {
        return Some(vec![Decimal::ZERO; weights.len()]);
    }
    if scale > 18 {
        return None;
    }
    let units = |d: Decimal, to: u32| -> Option<i128> {
        let (m, sc) = (d.mantissa(), d.scale());
        if sc <= to {
            m.checked_mul(10i128.checked_pow(to - sc)?)
        } else {
            Some(m / 10i128.checked_pow(sc - to)?)
        }
    };
    let total_units = units(total, scale)?;
    let ws = weights.iter().map(|w| w.scale()).max().unwrap_or(0);
    let mut w_units: Vec<i128> = Vec::with_capacity(weights.len());
    let mut whole: i128 = 0;
    for w in weights {
        let u = if *w > Decimal::ZERO {
            units(*w, ws)?
        } else {
            0
        };
        whole = whole.checked_add(u)?;
        w_units.push(u);
    }
    let mut shares = vec![Decimal::ZERO; weights.len()];
    if whole == 0 {
        return Some(shares);
    }
    let mut given: i128 = 0;
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    let mut floors: Vec<i128> = vec![0; weights.len()];
    for (i, &w) in w_units.iter().enumerate() {
        if w == 0 {
            continue;
        }
        let num = total_units.checked_mul(w)?;
        floors[i] = num / whole;
        given += floors[i];
        remainders.push((num % whole, i));
    }
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut left = total_units - given;
    let mut k = 0;
    while left > 0 && !remainders.is_empty() {
        floors[remainders[k % remainders.len()].1] += 1;
        left -= 1;
        k += 1;
    }
    for (share, f) in shares.iter_mut().zip(floors) {
        *share = Decimal::try_from_i128_with_scale(f, scale).ok()?;
    }
    Some(shares)
}

/// [`allocate`] in decimals, for amounts too large for the integer path.
fn allocate_exact(total: Decimal, weights: &[Decimal], scale: u32) -> Vec<Decimal> {
    let mut shares = vec![Decimal::ZERO; weights.len()];
    let whole: Decimal = weights.iter().filter(|w| **w > Decimal::ZERO).sum();
    if whole <= Decimal::ZERO || total <= Decimal::ZERO {
        return shares;
    }
    let mut remainders: Vec<(Decimal, usize)> = Vec::with_capacity(weights.len());
    let mut given = Decimal::ZERO;
    for (i, w) in weights.iter().enumerate() {
        if *w <= Decimal::ZERO {
            continue;
        }
        // Full precision first: `checked_*` keeps a pathological input from panicking.
        let exact = total
            .checked_mul(*w)
            .and_then(|p| p.checked_div(whole))
            .unwrap_or(Decimal::ZERO);
        let floor = exact.round_dp_with_strategy(scale, RoundingStrategy::ToZero);
        shares[i] = floor;
        given += floor;
        remainders.push((exact - floor, i));
    }
    // Stable sort: equal remainders keep index order.
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    let step = unit(scale);
    let mut left = total - given;
    let mut k = 0;
    while left >= step && !remainders.is_empty() {
        shares[remainders[k % remainders.len()].1] += step;
        left -= step;
        k += 1;
    }
    shares
}

/// Like [`allocate`], but no share exceeds its `caps` entry: what a capped share cannot take goes
/// to the others, again by largest remainder. The shares sum to `min(total, sum of caps)`.
pub fn allocate_capped(
    total: Decimal,
    weights: &[Decimal],
    caps: &[Decimal],
    scale: u32,
) -> Vec<Decimal> {
    let mut shares = vec![Decimal::ZERO; weights.len()];
    let mut open: Vec<bool> = caps.iter().map(|c| *c > Decimal::ZERO).collect();
    let mut left = total.min(caps.iter().copied().filter(|c| *c > Decimal::ZERO).sum());
    // Each round either places everything or closes at least one share, so this ends.
    for _ in 0..=weights.len() {
        if left <= Decimal::ZERO {
            break;
        }
        let round_weights: Vec<Decimal> = weights
            .iter()
            .zip(&open)
            .map(|(w, o)| if *o { *w } else { Decimal::ZERO })
            .collect();
        let mut proposal = allocate(left, &round_weights, scale);
        if proposal.iter().all(|p| p.is_zero()) {
            // Weights of the open shares are all zero: fill them in order.
            for (i, p) in proposal.iter_mut().enumerate() {
                if open[i] {
                    *p = left.min(caps[i] - shares[i]);
                    left -= *p;
                }
            }
            for (s, p) in shares.iter_mut().zip(proposal) {
                *s += p;
            }
            break;
        }
        let mut closed_any = false;
        for i in 0..shares.len() {
            let room = caps[i] - shares[i];
            if proposal[i] >= room && open[i] {
                proposal[i] = room;
                open[i] = false;
                closed_any = true;
            }
        }
        let placed: Decimal = proposal.iter().sum();
        for (s, p) in shares.iter_mut().zip(proposal) {
            *s += p;
        }
        left -= placed;
        if !closed_any {
            break;
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn rounding_modes() {
        assert_eq!(Rounding::HalfUp.round(d("2.5"), 0), d("3"));
        assert_eq!(Rounding::HalfEven.round(d("2.5"), 0), d("2"));
        assert_eq!(Rounding::HalfEven.round(d("3.5"), 0), d("4"));
        assert_eq!(Rounding::Down.round(d("2.9"), 0), d("2"));
        assert_eq!(Rounding::Up.round(d("2.1"), 0), d("3"));
        assert_eq!(Rounding::HalfUp.round(d("10.005"), 2), d("10.01"));
    }

    #[test]
    fn allocation_sums_exactly() {
        // 100.00 over three equal lines: 33.34 + 33.33 + 33.33.
        let shares = allocate(d("100.00"), &[d("1"), d("1"), d("1")], 2);
        assert_eq!(shares, vec![d("33.34"), d("33.33"), d("33.33")]);
        let shares = allocate(d("10"), &[d("150"), d("0"), d("50")], 0);
        assert_eq!(shares, vec![d("8"), d("0"), d("2")]);
        assert_eq!(allocate(d("5"), &[d("0"), d("0")], 0), vec![d("0"), d("0")]);
    }

    #[test]
    fn integer_and_decimal_allocation_agree() {
        let cases: &[(&str, &[&str], u32)] = &[
            ("100.00", &["1", "1", "1"], 2),
            ("10", &["150", "0", "50"], 0),
            ("1203.34", &["333.33", "0.01", "870", "12.5"], 2),
            ("7", &["0.001", "0.002", "0.003"], 0),
            ("999999999.99", &["1000000000", "3", "0.07"], 2),
        ];
        for (total, weights, scale) in cases {
            let weights: Vec<Decimal> = weights.iter().map(|w| d(w)).collect();
            assert_eq!(
                allocate_units(d(total), &weights, *scale).unwrap(),
                allocate_exact(d(total), &weights, *scale),
                "{total} over {weights:?}"
            );
        }
    }

    #[test]
    fn capped_allocation_moves_the_excess() {
        let shares = allocate_capped(d("100"), &[d("1"), d("1")], &[d("10"), d("1000")], 0);
        assert_eq!(shares, vec![d("10"), d("90")]);
        let shares = allocate_capped(d("100"), &[d("1"), d("1")], &[d("10"), d("20")], 0);
        assert_eq!(shares, vec![d("10"), d("20")]);
        let shares = allocate_capped(d("7"), &[d("0"), d("0")], &[d("5"), d("5")], 0);
        assert_eq!(shares, vec![d("5"), d("2")]);
    }
}
