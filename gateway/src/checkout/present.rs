//! What the register shows and prints: short lines for the customer display and the slip,
//! in the merchant's language (Russian by default), built from decimal strings without floats.

use kopilka_proto::ledger::{Balance, Refund};
use kopilka_proto::rules::ReceiptTotals;
use rust_decimal::Decimal;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

/// "балл", "балла", "баллов" for a number of points.
pub fn points_word(points: Decimal) -> &'static str {
    if !points.fract().is_zero() {
        return "балла";
    }
    let n = (points.abs() % Decimal::from(100))
        .to_string()
        .parse::<u32>()
        .unwrap_or(0);
    match (n % 10, n) {
        (_, 11..=14) => "баллов",
        (1, _) => "балл",
        (2..=4, _) => "балла",
        _ => "баллов",
    }
}

/// Money as the slip prints it: "1 250,50 ₽".
pub fn money(amount: &str, currency: &str) -> String {
    let symbol = match currency {
        "RUB" => "₽",
        "EUR" => "€",
        "USD" => "$",
        other => other,
    };
    format!("{} {symbol}", group(amount))
}

fn group(number: &str) -> String {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push('\u{a0}');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped},{frac}")
    }
}

fn points(amount: &str) -> String {
    format!("{} {}", group(amount), points_word(dec(amount)))
}

/// Lines for the customer display after a calculation.
pub fn display_lines(
    totals: &ReceiptTotals,
    currency: &str,
    balance: Option<&Balance>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if dec(&totals.discount) > Decimal::ZERO {
        lines.push(format!("Скидка {}", money(&totals.discount, currency)));
    }
    if dec(&totals.redeem_points) > Decimal::ZERO {
        lines.push(format!("Оплата баллами: {}", points(&totals.redeem_points)));
    }
    if dec(&totals.points_accrued) > Decimal::ZERO {
        lines.push(format!(
            "Будет начислено {}",
            points(&totals.points_accrued)
        ));
    }
    if let Some(balance) = balance {
        lines.push(format!("Доступно: {}", points(&balance.available)));
    }
    lines
}

/// Lines for the slip after a confirmed receipt.
pub fn print_lines(
    totals: &ReceiptTotals,
    currency: &str,
    balance: Option<&Balance>,
    tier: Option<&str>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if dec(&totals.discount) > Decimal::ZERO {
        lines.push(format!("Скидка: {}", money(&totals.discount, currency)));
    }
    if dec(&totals.redeem_points) > Decimal::ZERO {
        lines.push(format!("Списано: {}", points(&totals.redeem_points)));
    }
    if dec(&totals.points_accrued) > Decimal::ZERO {
        lines.push(format!("Начислено: {}", points(&totals.points_accrued)));
    }
    if let Some(balance) = balance {
        lines.push(format!("Баланс: {}", points(&balance.available)));
    }
    if let Some(tier) = tier {
        lines.push(format!("Ваш уровень: {tier}"));
    }
    lines
}

/// Lines for the return slip. "Возврат" is the money the register pays out (`cash_amount`:
/// the cash share of what was paid), never the goods' value before points — the points part
/// goes back to the account ("Возвращено на счёт").
pub fn refund_lines(refund: &Refund, currency: &str, balance: Option<&Balance>) -> Vec<String> {
    let mut lines = vec![format!("Возврат: {}", money(&refund.cash_amount, currency))];
    if dec(&refund.points_reversed) > Decimal::ZERO {
        lines.push(format!(
            "Списано начисленных: {}",
            points(&refund.points_reversed)
        ));
    }
    if dec(&refund.points_restored) > Decimal::ZERO {
        lines.push(format!(
            "Возвращено на счёт: {}",
            points(&refund.points_restored)
        ));
    }
    if dec(&refund.shortfall) > Decimal::ZERO {
        lines.push(format!(
            "Не хватило баллов: {} ({})",
            points(&refund.shortfall),
            money(&refund.shortfall_money, currency)
        ));
    }
    if let Some(balance) = balance {
        lines.push(format!("Баланс: {}", points(&balance.available)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_plurals() {
        let word = |n: i64| points_word(Decimal::from(n));
        assert_eq!(word(1), "балл");
        assert_eq!(word(3), "балла");
        assert_eq!(word(5), "баллов");
        assert_eq!(word(11), "баллов");
        assert_eq!(word(21), "балл");
        assert_eq!(word(112), "баллов");
        assert_eq!(points_word(Decimal::new(15, 1)), "балла");
    }

    #[test]
    fn money_is_grouped_with_a_comma() {
        assert_eq!(money("1250.50", "RUB"), "1\u{a0}250,50 ₽");
        assert_eq!(money("120.00", "RUB"), "120,00 ₽");
        assert_eq!(money("1000000", "USD"), "1\u{a0}000\u{a0}000 $");
    }

    /// Two lattes at 250 paid with 19 points: returning one hands back 240,50 ₽ in cash and
    /// 9 points, not the latte's 250,00 ₽.
    #[test]
    fn the_return_slip_pays_out_the_cash_share() {
        let refund = Refund {
            amount: "250.00".into(),
            cash_amount: "240.50".into(),
            points_reversed: "0".into(),
            points_restored: "9".into(),
            shortfall: "0".into(),
            ..Default::default()
        };
        assert_eq!(
            refund_lines(&refund, "RUB", None),
            ["Возврат: 240,50 ₽", "Возвращено на счёт: 9 баллов"]
        );
    }

    #[test]
    fn display_lines_skip_zeros() {
        let totals = ReceiptTotals {
            discount: "120.00".into(),
            points_accrued: "45".into(),
            redeem_points: "0".into(),
            ..Default::default()
        };
        assert_eq!(
            display_lines(&totals, "RUB", None),
            ["Скидка 120,00 ₽", "Будет начислено 45 баллов"]
        );
    }
}
