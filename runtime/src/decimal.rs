//! Decimal strings of the v1 contract (money, points, percentages) as exact decimals with a
//! given scale, for every service. Parsing refuses what a float
//! would have silently rounded.

use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// The largest amount accepted anywhere (points or money): 10^12.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// What a parsed amount must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// > 0
    Positive,
    /// >= 0
    NonNegative,
    /// != 0 (signed)
    NonZero,
}

/// Parses a decimal string with at most `scale` decimals; the error is the field violation's
/// description.
pub fn parse(value: &str, scale: u32, sign: Sign) -> Result<Decimal, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err("is required".to_owned());
    }
    let valid_chars = trimmed
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && c == '-'));
    if !valid_chars || trimmed != value {
        return Err(format!("`{value}` is not a decimal number such as 123.45"));
    }
    let d = Decimal::from_str(trimmed)
        .map_err(|_| format!("`{value}` is not a decimal number such as 123.45"))?;
    if d.normalize().scale() > scale {
        return Err(format!("has more than {scale} decimal places"));
    }
    if d.abs() > MAX_AMOUNT {
        return Err(format!("exceeds {MAX_AMOUNT}"));
    }
    match sign {
        Sign::Positive if d <= Decimal::ZERO => Err("must be greater than zero".to_owned()),
        Sign::NonNegative if d < Decimal::ZERO => Err("must not be negative".to_owned()),
        Sign::NonZero if d == Decimal::ZERO => Err("must not be zero".to_owned()),
        _ => Ok(d.normalize()),
    }
}

/// Formats an amount with exactly `scale` decimals ("100" at scale 2 is "100.00"), rounding
/// half away from zero. Written by hand: answers format every amount of every line, and this is
/// several times faster than `Decimal`'s `Display` with a rescale.
pub fn format(value: Decimal, scale: u32) -> String {
    let mut v = value;
    if v.scale() != scale {
        v = v.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
        v.rescale(scale);
    }
    let mantissa = v.mantissa();
    let mut digits = [0u8; 40];
    let mut i = digits.len();
    let wide = mantissa.unsigned_abs();
    // At least scale + 1 digits, so "0.05" keeps its leading zero. Amounts fit in u64 almost
    // always, and u64 division is far cheaper than u128's.
    if let Ok(mut n) = u64::try_from(wide) {
        while n > 0 || digits.len() - i <= scale as usize {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    } else {
        let mut n = wide;
        while n > 0 || digits.len() - i <= scale as usize {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    let body = &digits[i..];
    let mut out = String::with_capacity(body.len() + 2);
    if mantissa < 0 {
        out.push('-');
    }
    let point = body.len() - scale as usize;
    for (k, d) in body.iter().enumerate() {
        if k == point {
            out.push('.');
        }
        out.push(char::from(*d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_within_scale() {
        assert_eq!(parse("100", 0, Sign::Positive).unwrap(), Decimal::from(100));
        assert_eq!(
            parse("12.50", 2, Sign::Positive).unwrap().to_string(),
            "12.5"
        );
        assert_eq!(parse("-3", 0, Sign::NonZero).unwrap(), Decimal::from(-3));
        assert_eq!(parse("0", 0, Sign::NonNegative).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn refuses_bad_input() {
        for (input, scale, sign) in [
            ("", 0, Sign::Positive),
            ("1.5", 0, Sign::Positive),
            ("0.001", 2, Sign::Positive),
            ("-1", 0, Sign::Positive),
            ("0", 0, Sign::Positive),
            ("1e3", 0, Sign::Positive),
            (" 1", 0, Sign::Positive),
            ("١٢", 0, Sign::Positive),
            ("NaN", 0, Sign::Positive),
            ("10000000000000", 0, Sign::Positive),
        ] {
            assert!(parse(input, scale, sign).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn formats_with_scale() {
        assert_eq!(format(Decimal::from(100), 2), "100.00");
        assert_eq!(format(Decimal::new(125, 1), 0), "13");
        assert_eq!(format(Decimal::ZERO, 0), "0");
        assert_eq!(format(-Decimal::ZERO, 2), "0.00");
        assert_eq!(format(Decimal::new(5, 2), 2), "0.05");
        assert_eq!(format(Decimal::new(-1205, 2), 2), "-12.05");
        assert_eq!(format(Decimal::new(-4, 3), 2), "0.00");
        assert_eq!(format(Decimal::new(12345, 4), 0), "1");
        assert_eq!(format(Decimal::MAX, 0), Decimal::MAX.to_string());
    }
}
