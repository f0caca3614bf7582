//! A booked receipt's calculation rebuilt from the ledger's receipt, for a Confirm whose first
//! attempt booked the receipt but never answered (a crash, a timeout before the gateway's
//! commit). The ledger keeps what was booked, not how it was computed: the rebuilt calculation
//! has no hints, explanations or most-payable amounts, and no balance before the receipt.

use kopilka_proto::gateway::{Calculation, CustomerSummary};
use kopilka_proto::ledger::{Receipt, ReceiptLine};
use kopilka_proto::rules::{LineResult, ReceiptTotals, RuleAmount};
use rust_decimal::Decimal;

use super::present;

/// What `receipt` booked, in the shape Calculate and Confirm answer.
pub fn calculation(receipt: &Receipt, customer: Option<CustomerSummary>) -> Calculation {
    let s = receipt.summary.clone().unwrap_or_default();
    let totals = ReceiptTotals {
        gross_amount: s.gross_amount,
        discount: s.discount,
        net_amount: s.net_amount,
        max_redeem_points: String::new(),
        redeem_points: s.redeem_points,
        redeem_money: s.redeem_money,
        paid_money: s.paid_money,
        points_accrued: s.points_accrued,
        referral_points: s.referral_points,
    };
    Calculation {
        customer,
        lines: receipt.lines.iter().map(line).collect(),
        display_lines: present::display_lines(&totals, &receipt.currency, None),
        totals: Some(totals),
        balance: None,
        hints: Vec::new(),
        explanations: Vec::new(),
        program_version: receipt.program_version,
        currency: receipt.currency.clone(),
        applied_promo_codes: receipt.promo_codes.clone(),
    }
}

fn line(l: &ReceiptLine) -> LineResult {
    let amount = |s: &str| s.parse::<Decimal>().unwrap_or_default();
    // The ledger stores both in the currency's scale, so their differences are exact.
    let net = amount(&l.gross_amount) - amount(&l.discount);
    let paid = net - amount(&l.redeem_money);
    LineResult {
        line_id: l
            .line
            .as_ref()
            .map(|b| b.line_id.clone())
            .unwrap_or_default(),
        gross_amount: l.gross_amount.clone(),
        discount: l.discount.clone(),
        net_amount: net.to_string(),
        max_redeem_points: String::new(),
        redeem_points: l.redeem_points.clone(),
        redeem_money: l.redeem_money.clone(),
        paid_money: paid.to_string(),
        accrual_points: l.accrual_points.clone(),
        excluded_from_discount: false,
        excluded_from_accrual: false,
        excluded_from_redemption: false,
        contributions: l
            .rule_ids
            .iter()
            .map(|rule_id| RuleAmount {
                rule_id: rule_id.clone(),
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kopilka_proto::ledger::ReceiptSummary;
    use kopilka_proto::types::BasketLine;

    fn booked(id: &str, gross: &str, discount: &str, points: &str, money: &str) -> ReceiptLine {
        ReceiptLine {
            line: Some(BasketLine {
                line_id: id.into(),
                ..Default::default()
            }),
            gross_amount: gross.into(),
            discount: discount.into(),
            redeem_points: points.into(),
            redeem_money: money.into(),
            accrual_points: "5".into(),
            rule_ids: vec!["flat".into()],
            refunded_quantity: String::new(),
        }
    }

    #[test]
    fn lines_and_totals_are_the_ledgers() {
        let receipt = Receipt {
            receipt_id: "R1".into(),
            currency: "RUB".into(),
            program_version: 3,
            lines: vec![
                booked("1", "250.00", "25.00", "19", "19.00"),
                booked("2", "100.00", "0.00", "0", "0.00"),
            ],
            summary: Some(ReceiptSummary {
                gross_amount: "350.00".into(),
                discount: "25.00".into(),
                net_amount: "325.00".into(),
                redeem_points: "19".into(),
                redeem_money: "19.00".into(),
                paid_money: "306.00".into(),
                points_accrued: "10".into(),
                referral_points: "0".into(),
            }),
            promo_codes: vec!["SPRING".into()],
            ..Default::default()
        };
        let c = calculation(&receipt, None);
        let paid: Vec<&str> = c.lines.iter().map(|l| l.paid_money.as_str()).collect();
        assert_eq!(paid, ["206.00", "100.00"]);
        assert_eq!(c.lines[0].net_amount, "225.00");
        let totals = c.totals.unwrap();
        assert_eq!(totals.paid_money, "306.00");
        let sum: Decimal = c
            .lines
            .iter()
            .map(|l| l.paid_money.parse::<Decimal>().unwrap())
            .sum();
        assert_eq!(sum.to_string(), totals.paid_money, "lines sum to the total");
        assert_eq!(c.program_version, 3);
        assert_eq!(c.applied_promo_codes, ["SPRING"]);
        assert_eq!(c.lines[0].contributions[0].rule_id, "flat");
        assert!(
            c.balance.is_none(),
            "no balance before the receipt is known"
        );
    }
}
