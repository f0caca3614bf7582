//! Input limits of the checkout (documented in proto/kopilka/gateway/v1/common.proto), checked
//! before anything is called or stored: every violation is reported with its field path, and a
//! request with any violation changes nothing.

use std::collections::HashSet;

use kopilka_proto::gateway::Buyer;
use kopilka_proto::types::{BasketLine, IdentifierKind};
use kopilka_runtime::decimal::{self, Sign};
pub use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;

/// Most lines per receipt.
pub const MAX_LINES: usize = 500;
/// Longest receipt, request, refund and terminal id.
pub const MAX_ID: usize = 128;
/// Longest line, product and category id.
pub const MAX_LINE_ID: usize = 64;
/// Longest product name and free text.
pub const MAX_TEXT: usize = 256;
/// Most categories per line.
pub const MAX_CATEGORIES: usize = 16;
/// Most promo codes, and the longest.
pub const MAX_PROMO_CODES: usize = 10;
pub const MAX_PROMO_CODE: usize = 32;
/// Largest quantity and its decimals.
pub const MAX_QUANTITY: i64 = 100_000;
pub const QUANTITY_SCALE: u32 = 3;
/// Largest price or amount.
pub const MAX_MONEY: i64 = 1_000_000_000;
/// Most decimals of points the gateway accepts (the merchant's own scale is checked by rules).
pub const MAX_POINTS_SCALE: u32 = 4;
pub use kopilka_runtime::validate::MAX_CLOCK_SKEW;
/// Longest raw identifier input.
pub const MAX_IDENTIFIER: usize = 256;

/// A decimal string of points, >= 0 or > 0 when `positive` (then required; empty = none).
pub fn points(v: &mut Violations, field: &str, value: &str, positive: bool) -> Option<Decimal> {
    let sign = if positive {
        Sign::Positive
    } else {
        Sign::NonNegative
    };
    v.decimal(field, value, MAX_POINTS_SCALE, sign, positive)
}

/// Decimals of a currency's minor unit: the suite's one ISO 4217 table
/// ([`kopilka_runtime::currency::minor_units`]); `None` for a code that is not an ISO 4217
/// currency with a minor unit.
pub fn currency_scale(currency: &str) -> Option<u32> {
    kopilka_runtime::currency::minor_units(currency)
}

/// Checks the receipt lines; `prefix` is the field name ("lines").
pub fn lines(v: &mut Violations, prefix: &str, lines: &[BasketLine], currency: &str) {
    if lines.is_empty() {
        v.add(prefix, format!("a receipt needs 1 to {MAX_LINES} lines"));
        return;
    }
    if lines.len() > MAX_LINES {
        v.limit(prefix, MAX_LINES, "lines per receipt");
        return;
    }
    // Prices are checked on the currency's own scale, never on an assumed one: a merchant
    // whose currency is not in ISO 4217 (which rules-svc refuses in a program, so it has no
    // program to calculate with either) cannot take receipts.
    let Some(scale) = currency_scale(currency) else {
        v.add(
            prefix,
            format!("the merchant's currency `{currency}` is not an ISO 4217 currency"),
        );
        return;
    };
    let max_money = Decimal::from(MAX_MONEY);
    let mut seen = HashSet::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let at = |field: &str| format!("{prefix}[{i}].{field}");
        v.id(&at("line_id"), &line.line_id, MAX_LINE_ID, true);
        if !line.line_id.is_empty() && !seen.insert(line.line_id.as_str()) {
            v.add(at("line_id"), "duplicate line id in this receipt");
        }
        v.id(&at("product_id"), &line.product_id, MAX_LINE_ID, true);
        v.text(&at("sku"), &line.sku, MAX_LINE_ID, false);
        v.text(&at("name"), &line.name, MAX_TEXT, false);
        v.count(&at("category_ids"), line.category_ids.len(), MAX_CATEGORIES);
        for (j, category) in line.category_ids.iter().enumerate() {
            v.id(
                &format!("{prefix}[{i}].category_ids[{j}]"),
                category,
                MAX_LINE_ID,
                true,
            );
        }
        let price = money(
            v,
            &at("unit_price"),
            &line.unit_price,
            scale,
            max_money,
            true,
        );
        let quantity = match decimal::parse(&line.quantity, QUANTITY_SCALE, Sign::Positive) {
            Ok(q) if q > Decimal::from(MAX_QUANTITY) => {
                v.add(at("quantity"), format!("at most {MAX_QUANTITY}"));
                None
            }
            Ok(q) => Some(q),
            Err(why) => {
                v.add(at("quantity"), why);
                None
            }
        };
        if !line.amount.is_empty() {
            let amount = money(v, &at("amount"), &line.amount, scale, max_money, false);
            if let (Some(amount), Some(price), Some(quantity)) = (amount, price, quantity) {
                if amount > price * quantity {
                    v.add(at("amount"), "must not be above unit_price x quantity");
                }
            }
        }
    }
}

fn money(
    v: &mut Violations,
    field: &str,
    value: &str,
    scale: u32,
    max: Decimal,
    required: bool,
) -> Option<Decimal> {
    if value.is_empty() && !required {
        return None;
    }
    match decimal::parse(value, scale, Sign::NonNegative) {
        Ok(m) if m > max => {
            v.add(field, format!("at most {max}"));
            None
        }
        Ok(m) => Some(m),
        Err(why) => {
            v.add(
                field,
                format!("{why} (at most {scale} decimals for this currency)"),
            );
            None
        }
    }
}

/// Checks promo codes.
pub fn promo_codes(v: &mut Violations, field: &str, codes: &[String]) {
    v.count(field, codes.len(), MAX_PROMO_CODES);
    for (i, code) in codes.iter().enumerate() {
        v.id(&format!("{field}[{i}]"), code, MAX_PROMO_CODE, true);
    }
}

/// Checks who is buying; `required` when points need a customer.
pub fn buyer(v: &mut Violations, field: &str, buyer: Option<&Buyer>, required: bool) {
    use kopilka_proto::gateway::buyer::Who;
    match buyer.and_then(|b| b.who.as_ref()) {
        None if required => v.add(field, "required: an identifier or a customer_id"),
        None => {}
        Some(Who::CustomerId(id)) => v.id(&format!("{field}.customer_id"), id, MAX_ID, true),
        Some(Who::Identifier(input)) => {
            let raw = format!("{field}.identifier.raw");
            if input.raw.trim().is_empty() {
                v.add(&raw, format!("required: 1 to {MAX_IDENTIFIER} characters"));
            } else if input.raw.chars().count() > MAX_IDENTIFIER {
                v.limit(&raw, MAX_IDENTIFIER, "characters");
            } else if input
                .raw
                .chars()
                .any(|c| c.is_numeric() && !c.is_ascii_digit())
            {
                v.add(
                    &raw,
                    "digits must be ASCII 0-9 (re-type the number on the register's keyboard)",
                );
            } else if input.raw.chars().any(char::is_control) {
                v.add(&raw, "must not contain control characters");
            }
            v.enumeration::<IdentifierKind>(
                &format!("{field}.identifier.kind_hint"),
                input.kind_hint,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, price: &str, quantity: &str) -> BasketLine {
        BasketLine {
            line_id: id.into(),
            product_id: "p".into(),
            unit_price: price.into(),
            quantity: quantity.into(),
            ..Default::default()
        }
    }

    fn fields(v: Violations) -> Vec<String> {
        v.fields().iter().map(|(f, _)| f.clone()).collect()
    }

    #[test]
    fn good_lines_pass() {
        let mut v = Violations::default();
        lines(
            &mut v,
            "lines",
            &[line("1", "100.50", "2"), line("2", "0", "0.125")],
            "RUB",
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn bad_lines_are_named_by_path() {
        let mut v = Violations::default();
        let mut weighted = line("3", "10", "1.5");
        weighted.amount = "16".into();
        lines(
            &mut v,
            "lines",
            &[
                line("1", "100.505", "1"),
                line("1", "10", "0"),
                weighted,
                line("4", "-1", "-2"),
                line("5", "1", "100001"),
            ],
            "RUB",
        );
        assert_eq!(
            fields(v),
            [
                "lines[0].unit_price",
                "lines[1].line_id",
                "lines[1].quantity",
                "lines[2].amount",
                "lines[3].unit_price",
                "lines[3].quantity",
                "lines[4].quantity",
            ]
        );
    }

    #[test]
    fn empty_and_oversized_receipts_are_refused() {
        let mut v = Violations::default();
        lines(&mut v, "lines", &[], "RUB");
        let many: Vec<_> = (0..=MAX_LINES)
            .map(|i| line(&i.to_string(), "1", "1"))
            .collect();
        lines(&mut v, "lines", &many, "RUB");
        assert_eq!(fields(v), ["lines", "lines"]);
    }

    #[test]
    fn yen_has_no_decimals() {
        let mut v = Violations::default();
        lines(&mut v, "lines", &[line("1", "100.5", "1")], "JPY");
        assert_eq!(fields(v), ["lines[0].unit_price"]);
    }

    #[test]
    fn prices_are_checked_on_the_iso_minor_unit() {
        for (currency, good, bad) in [
            ("XPF", "100", "100.5"),
            ("BIF", "100", "100.5"),
            ("RWF", "100", "100.5"),
            ("VUV", "100", "100.5"),
            ("KMF", "100", "100.5"),
            ("DJF", "100", "100.5"),
            ("GNF", "100", "100.5"),
            ("UYI", "100", "100.5"),
            ("KRW", "100", "100.5"),
            ("RUB", "100.55", "100.555"),
            ("BHD", "1.555", "1.5555"),
            ("KWD", "1.555", "1.5555"),
            ("CLF", "1.5555", "1.55555"),
            ("UYW", "1.5555", "1.55555"),
        ] {
            let mut v = Violations::default();
            lines(&mut v, "lines", &[line("1", good, "1")], currency);
            assert!(v.is_empty(), "{currency} {good}: {v:?}");
            lines(&mut v, "lines", &[line("1", bad, "1")], currency);
            assert_eq!(fields(v), ["lines[0].unit_price"], "{currency} {bad}");
        }
    }

    #[test]
    fn an_unknown_currency_is_refused_not_assumed() {
        let mut v = Violations::default();
        lines(&mut v, "lines", &[line("1", "100.50", "1")], "ABC");
        assert_eq!(fields(v), ["lines"]);
    }

    #[test]
    fn phones_with_non_ascii_digits_are_refused() {
        use kopilka_proto::gateway::buyer::Who;
        use kopilka_proto::types::IdentifierInput;
        let buyer_with = |raw: &str, hint: i32| Buyer {
            who: Some(Who::Identifier(IdentifierInput {
                raw: raw.into(),
                kind_hint: hint,
            })),
        };
        let mut v = Violations::default();
        buyer(
            &mut v,
            "buyer",
            Some(&buyer_with("+7 912 ٣٤٥-67-89", 0)),
            false,
        );
        buyer(
            &mut v,
            "buyer",
            Some(&buyer_with("+7 912 345-67-89", 999)),
            false,
        );
        buyer(
            &mut v,
            "buyer",
            Some(&buyer_with("+7 912 345-67-89", 0)),
            true,
        );
        buyer(&mut v, "buyer", None, true);
        assert_eq!(
            fields(v),
            [
                "buyer.identifier.raw",
                "buyer.identifier.kind_hint",
                "buyer"
            ]
        );
    }
}
