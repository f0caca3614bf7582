//! ISO 4217 currencies: the one table of minor units every service reads.
//!
//! The data is the `iso_currency` crate's copy of the ISO 4217 list (kept current with the
//! maintenance agency's amendments). A code that is not an active ISO 4217 currency with a minor
//! unit (`"ABC"`, lower case, or a unit without one such as gold `XAU` or `XXX`) has none:
//! callers refuse it where a currency is configured instead of assuming 2 decimals.

use iso_currency::Currency;

/// Decimal places of the currency's minor unit (ISO 4217 "minor unit"): `JPY` 0, `RUB` 2,
/// `KWD` 3, `CLF` 4. `None` for an unknown code (exact, upper-case alpha-3) or a unit with no
/// minor unit (precious metals, `XXX`, `XDR`, …).
pub fn minor_units(code: &str) -> Option<u32> {
    Currency::from_code(code)?.exponent().map(u32::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disputed_codes_have_their_iso_minor_units() {
        for (code, units) in [
            ("XPF", 0),
            ("BIF", 0),
            ("RWF", 0),
            ("VUV", 0),
            ("KMF", 0),
            ("DJF", 0),
            ("GNF", 0),
            ("UYI", 0),
            ("JPY", 0),
            ("KRW", 0),
            ("ISK", 0),
            ("CLP", 0),
            ("XAF", 0),
            ("XOF", 0),
            ("RUB", 2),
            ("EUR", 2),
            ("USD", 2),
            ("BHD", 3),
            ("KWD", 3),
            ("IQD", 3),
            ("TND", 3),
            ("CLF", 4),
            ("UYW", 4),
        ] {
            assert_eq!(minor_units(code), Some(units), "{code}");
        }
    }

    #[test]
    fn unknown_codes_and_units_without_a_minor_unit_have_none() {
        for code in ["", "ABC", "rub", "RUBX", "XAU", "XXX", "XDR"] {
            assert_eq!(minor_units(code), None, "{code:?}");
        }
    }
}
