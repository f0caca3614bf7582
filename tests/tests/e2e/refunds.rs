//! Refunds through the gateway's own API, on both engines (issue 13, item 4):
//!
//! - a refund tells the register the money to hand back: the cash share of what was paid, not
//!   the line's value before points (two lattes at 250 with 19 points used: returning one pays
//!   out 240,50 ₽ and gives back 9 points, the second 240,50 ₽ and 10 points);
//! - partial refunds are proportional at every step: 20 units returned one at a time take back
//!   one of the line's 5 points with every 4th unit, not all 5 with the last;
//! - a customer whose refund left a debt is still served: Calculate and Confirm work, accrue,
//!   and the accrual pays the debt first; a redemption meanwhile is `FAILED_PRECONDITION
//!   INSUFFICIENT_POINTS` with the real (negative) balance as `available`.

use chrono::Utc;
use kopilka_proto::gateway::admin_service_client::AdminServiceClient;
use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::customer_service_client::CustomerServiceClient;
use kopilka_proto::gateway::{self as gw, buyer::Who, Buyer};
use kopilka_proto::types::BasketLine;
use kopilka_runtime::timestamps;
use kopilka_tests::{authed, on_both_backends, Channel, SeededMerchant, TestSuite};
use tonic::{Code, Status};
use tonic_types::StatusExt;

on_both_backends!(
    a_refund_pays_out_the_cash_share,
    one_unit_at_a_time_keeps_pace,
    a_customer_in_debt_is_served
);

const PROGRAM: &str = r#"name: refunds
settings: {currency: RUB, time_zone: Europe/Moscow}
rules:
  - id: flat
    name: flat 5 %
    accrue_percent: {percent: "5"}
  - id: pay
    name: pay with points
    redemption_limit: {max_share_percent: "100"}
"#;

struct Till {
    m: SeededMerchant,
    checkout: CheckoutServiceClient<Channel>,
    customers: CustomerServiceClient<Channel>,
}

impl Till {
    async fn open(suite: &TestSuite, merchant: &str) -> Till {
        let m = suite.seed_merchant(merchant).await;
        let channel = suite.channel(suite.addrs.gateway);
        AdminServiceClient::new(channel.clone())
            .apply_program(authed(
                gw::ApplyProgramRequest {
                    request_id: "apply".into(),
                    program: Some(rules_svc::document::from_yaml(PROGRAM).unwrap()),
                    ..Default::default()
                },
                &m.admin_key,
            ))
            .await
            .expect("the program applied");
        Till {
            m,
            checkout: CheckoutServiceClient::new(channel.clone()),
            customers: CustomerServiceClient::new(channel),
        }
    }

    async fn register(&mut self, phone: &str) -> String {
        self.customers
            .register_customer(authed(
                gw::RegisterCustomerRequest {
                    request_id: format!("reg-{phone}"),
                    phone: phone.into(),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .expect("registered")
            .into_inner()
            .customer
            .unwrap()
            .customer_id
    }

    async fn adjust(&mut self, customer_id: &str, amount: &str) -> String {
        self.customers
            .adjust_points(authed(
                gw::AdjustPointsRequest {
                    request_id: format!("adjust-{customer_id}-{amount}"),
                    customer_id: customer_id.into(),
                    amount: amount.into(),
                    reason: "test".into(),
                    ..Default::default()
                },
                &self.m.admin_key,
            ))
            .await
            .expect("points adjusted")
            .into_inner()
            .balance
            .unwrap()
            .available
    }

    async fn confirm(
        &mut self,
        receipt_id: &str,
        customer_id: &str,
        lines: Vec<BasketLine>,
        redeem: &str,
    ) -> Result<gw::ConfirmResponse, Status> {
        self.checkout
            .confirm(authed(
                gw::ConfirmRequest {
                    request_id: format!("confirm-{receipt_id}"),
                    receipt_id: receipt_id.into(),
                    buyer: buyer(customer_id),
                    lines,
                    redeem_points: redeem.into(),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn calculate(
        &mut self,
        receipt_id: &str,
        customer_id: &str,
        lines: Vec<BasketLine>,
        redeem: &str,
    ) -> Result<gw::Calculation, Status> {
        self.checkout
            .calculate(authed(
                gw::CalculateRequest {
                    receipt_id: receipt_id.into(),
                    buyer: buyer(customer_id),
                    lines,
                    redeem_points: redeem.into(),
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .map(|r| r.into_inner().calculation.unwrap())
    }

    /// Refunds `quantity` of line `line_id` ("" = all that remains of the receipt).
    async fn refund(
        &mut self,
        receipt_id: &str,
        refund_id: &str,
        line_id: &str,
        quantity: &str,
    ) -> gw::RefundResponse {
        let lines = if line_id.is_empty() {
            vec![]
        } else {
            vec![gw::RefundLine {
                line_id: line_id.into(),
                quantity: quantity.into(),
            }]
        };
        self.checkout
            .refund(authed(
                gw::RefundRequest {
                    request_id: format!("refund-{receipt_id}-{refund_id}"),
                    receipt_id: receipt_id.into(),
                    refund_id: refund_id.into(),
                    lines,
                    ..Default::default()
                },
                &self.m.terminal_key,
            ))
            .await
            .expect("refunded")
            .into_inner()
    }
}

fn buyer(customer_id: &str) -> Option<Buyer> {
    Some(Buyer {
        who: Some(Who::CustomerId(customer_id.into())),
    })
}

fn line(id: &str, price: &str, quantity: &str) -> Vec<BasketLine> {
    vec![BasketLine {
        line_id: id.into(),
        product_id: format!("p-{id}"),
        unit_price: price.into(),
        quantity: quantity.into(),
        ..Default::default()
    }]
}

fn insufficient(what: &str, status: Status, available: &str, requested: &str) {
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{what}: {status:?}"
    );
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "INSUFFICIENT_POINTS", "{what}: {status:?}");
    assert_eq!(info.metadata["available"], available, "{what}");
    assert_eq!(info.metadata["requested"], requested, "{what}");
}

/// (amount, cash_amount, points_restored) of a refund and of its only line.
fn figures(r: &gw::RefundResponse) -> [String; 6] {
    let f = r.refund.as_ref().expect("a refund");
    let l = &f.lines[0];
    [
        f.amount.clone(),
        f.cash_amount.clone(),
        f.points_restored.clone(),
        l.amount.clone(),
        l.cash_amount.clone(),
        l.points_restored.clone(),
    ]
}

fn strings<const N: usize>(v: [&str; N]) -> [String; N] {
    v.map(str::to_owned)
}

fn s(v: &str) -> String {
    v.to_owned()
}

async fn a_refund_pays_out_the_cash_share(suite: TestSuite) {
    let mut till = Till::open(&suite, "lattes").await;
    let anna = till.register("+79126000001").await;
    till.adjust(&anna, "19").await;
    let sold = till
        .confirm("r-lattes", &anna, line("1", "250.00", "2"), "19")
        .await
        .expect("two lattes, 19 points used");
    let receipt = sold.checkout.unwrap().receipt.unwrap();
    let summary = receipt.summary.unwrap();
    assert_eq!(
        (summary.redeem_money.as_str(), summary.paid_money.as_str()),
        ("19.00", "481.00")
    );
    // 5 % of the 481,00 paid.
    assert_eq!(summary.points_accrued, "24");
    // One latte back: the cash share of the 481,00 paid, and 9 of the 19 points.
    let first = till.refund("r-lattes", "rf-1", "1", "1").await;
    assert_eq!(
        figures(&first),
        strings(["250.00", "240.50", "9", "250.00", "240.50", "9"])
    );
    assert_eq!(
        first.print_lines[0], "Возврат: 240,50 ₽",
        "{:?}",
        first.print_lines
    );
    // The second closes the line exactly: 481,00 ₽ and 19 points in all.
    let second = till.refund("r-lattes", "rf-2", "", "").await;
    assert_eq!(
        figures(&second),
        strings(["250.00", "240.50", "10", "250.00", "240.50", "10"])
    );
    // The accrual goes back half and half: 19 - 19 + 24 - 12 + 9 = 21, then - 12 + 10 = 19.
    let reversed = |r: &gw::RefundResponse| r.refund.clone().unwrap().points_reversed;
    assert_eq!((reversed(&first), reversed(&second)), (s("12"), s("12")));
    assert_eq!(first.balance.unwrap().available, "21");
    assert_eq!(second.balance.unwrap().available, "19");
    suite.stop().await.unwrap();
}

async fn one_unit_at_a_time_keeps_pace(suite: TestSuite) {
    let mut till = Till::open(&suite, "units").await;
    let boris = till.register("+79126000002").await;
    // 20 units at 5,00: 100,00 paid, 5 % = 5 points.
    let sold = till
        .confirm("r-units", &boris, line("1", "5.00", "20"), "")
        .await
        .expect("20 units");
    assert_eq!(sold.balance.unwrap().available, "5");
    for k in 1..=20 {
        let r = till.refund("r-units", &format!("rf-{k}"), "1", "1").await;
        let f = r.refund.as_ref().unwrap();
        let step = if k % 4 == 0 { "1" } else { "0" };
        assert_eq!(
            (
                f.cash_amount.as_str(),
                f.amount.as_str(),
                f.points_reversed.as_str(),
                f.lines[0].points_reversed.as_str(),
            ),
            ("5.00", "5.00", step, step),
            "unit {k}"
        );
        let left = 5 - k / 4;
        assert_eq!(
            r.balance.unwrap().available,
            left.to_string(),
            "after {k} of 20 units"
        );
    }
    suite.stop().await.unwrap();
}

async fn a_customer_in_debt_is_served(suite: TestSuite) {
    let mut till = Till::open(&suite, "debt").await;
    let vera = till.register("+79126000003").await;
    // 50 points for a 1000,00 purchase, spent at once; the purchase comes back: -50.
    let sold = till
        .confirm("r-big", &vera, line("1", "1000.00", "1"), "")
        .await
        .expect("a big purchase");
    assert_eq!(sold.balance.unwrap().available, "50");
    assert_eq!(till.adjust(&vera, "-50").await, "0");
    let back = till.refund("r-big", "rf-big", "", "").await;
    let f = back.refund.as_ref().unwrap();
    assert_eq!(
        (
            f.points_reversed.as_str(),
            f.negative_balance_created.as_str(),
            f.cash_amount.as_str()
        ),
        ("50", "50", "1000.00")
    );
    assert_eq!(back.balance.unwrap().available, "-50");

    // Calculate serves her: nothing redeemable, the accrual shown.
    let calc = till
        .calculate("r-next", &vera, line("1", "400.00", "1"), "")
        .await
        .expect("a customer in debt can be calculated");
    let totals = calc.totals.unwrap();
    assert_eq!(
        (
            totals.max_redeem_points.as_str(),
            totals.points_accrued.as_str()
        ),
        ("0", "20")
    );
    // Redeeming meanwhile is refused, with the real balance.
    let status = till
        .calculate("r-next", &vera, line("1", "400.00", "1"), "1")
        .await
        .expect_err("no redemption in debt");
    insufficient("Calculate", status, "-50", "1");
    let status = till
        .confirm("r-spend", &vera, line("1", "400.00", "1"), "1")
        .await
        .expect_err("no redemption in debt");
    insufficient("Confirm", status, "-50", "1");
    // Confirm accrues, and the accrual pays the debt first.
    let next = till
        .confirm("r-next", &vera, line("1", "400.00", "1"), "")
        .await
        .expect("a customer in debt can buy");
    let receipt = next.checkout.unwrap().receipt.unwrap();
    assert_eq!(receipt.summary.unwrap().points_accrued, "20");
    assert_eq!(next.balance.unwrap().available, "-30");
    // An offline receipt accrues too.
    let offline = till
        .checkout
        .submit_offline_receipt(authed(
            gw::SubmitOfflineReceiptRequest {
                request_id: "offline-1".into(),
                receipt_id: "r-offline".into(),
                buyer: buyer(&vera),
                lines: line("1", "1200.00", "1"),
                occurred_at: Some(timestamps::to_proto(Utc::now())),
                ..Default::default()
            },
            &till.m.terminal_key,
        ))
        .await
        .expect("an offline receipt of a customer in debt")
        .into_inner();
    assert_eq!(offline.balance.unwrap().available, "30", "-30 + 60");
    // Out of debt, she redeems again.
    let spend = till
        .confirm("r-spend-2", &vera, line("1", "400.00", "1"), "30")
        .await
        .expect("a redemption once the debt is paid");
    assert_eq!(
        spend.balance.unwrap().available,
        "18",
        "30 - 30 + 5 % of 370,00 (18,5 → 18)"
    );
    suite.stop().await.unwrap();
}
