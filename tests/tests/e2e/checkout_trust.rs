//! The checkout holes an outside review found, each tried for real on the process stack
//! (PostgreSQL, separate processes; see `kopilka_tests::stack`):
//!
//! - a Confirm interrupted between the ledger's booking and the gateway's own commit (the
//!   gateway's database connection is killed while it waits to write) is answered on retry from
//!   the ledger's receipt, even when evaluating again would be refused, and a retry with other
//!   content is a conflict;
//! - request ids a register picks cannot collide with keys the gateway derives (`book:R42`,
//!   `receipt:R43`);
//! - two gateway replicas racing Confirm / Cancel / Refund on the same receipts end where the
//!   ledger is: a booked receipt is never shown cancelled, a newer refund never overwritten.

use std::time::{Duration, Instant};

use kopilka_proto::gateway::checkout_service_client::CheckoutServiceClient;
use kopilka_proto::gateway::{self as gw, CheckoutState};
use kopilka_proto::ledger as ledger_pb;
use kopilka_proto::types::BasketLine;
use kopilka_runtime::status::reason_of;
use kopilka_tests::authed;
use kopilka_tests::stack::{dec, one, phone, Stack, Till, PHONE};
use kopilka_tests::Channel;
use rust_decimal::Decimal;
use sqlx::Connection;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const ACCRUE_AND_PAY: &str = "rules:
  - id: flat
    name: flat 5 %
    accrue_percent: {percent: \"5\"}
  - id: pay
    name: pay with points
    redemption_limit: {max_share_percent: \"100\"}
";

fn confirm_request(request_id: &str, receipt_id: &str, redeem: &str) -> gw::ConfirmRequest {
    gw::ConfirmRequest {
        request_id: request_id.into(),
        receipt_id: receipt_id.into(),
        buyer: phone(PHONE),
        lines: one("1000.00"),
        redeem_points: redeem.into(),
        ..Default::default()
    }
}

async fn confirm(
    client: &mut CheckoutServiceClient<Channel>,
    key: &str,
    request: gw::ConfirmRequest,
) -> Result<gw::ConfirmResponse, Status> {
    client
        .confirm(authed(request, key))
        .await
        .map(|r| r.into_inner())
}

async fn adjust(till: &mut Till, customer_id: &str, amount: &str) {
    till.customers
        .adjust_points(authed(
            gw::AdjustPointsRequest {
                request_id: format!("adjust-{customer_id}-{amount}"),
                customer_id: customer_id.into(),
                amount: amount.into(),
                reason: "opening balance".into(),
                ..Default::default()
            },
            &till.m.admin_key,
        ))
        .await
        .expect("points adjusted");
}

/// The available points, as the register sees them.
async fn available(till: &mut Till, customer_id: &str) -> Decimal {
    let balance = till
        .customers
        .get_balance(authed(
            gw::GetBalanceRequest {
                customer: Some(gw::get_balance_request::Customer::CustomerId(
                    customer_id.into(),
                )),
            },
            &till.m.terminal_key,
        ))
        .await
        .expect("balance")
        .into_inner()
        .balance
        .expect("a balance");
    dec(&balance.available)
}

fn redeemed(answer: &gw::ConfirmResponse) -> Decimal {
    let receipt = answer
        .checkout
        .as_ref()
        .and_then(|c| c.receipt.as_ref())
        .expect("a booked receipt");
    dec(&receipt.summary.as_ref().expect("a summary").redeem_points)
}

#[track_caller]
fn assert_conflict(status: &Status, state: CheckoutState) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "CHECKOUT_STATE_CONFLICT", "{status:?}");
    assert_eq!(
        info.metadata.get("state").map(String::as_str),
        Some(state.as_str_name()),
        "{status:?}"
    );
}

/// Runs `call` while the gateway cannot write checkouts (the table is locked), and kills the
/// gateway's database session once it waits for that lock: the ledger has booked by then (the
/// commit follows the booking), the gateway's commit never happens.
async fn interrupted_before_commit<T: Send + 'static>(
    db_url: &str,
    call: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Status {
    let mut locker = sqlx::PgConnection::connect(db_url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE checkouts IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let call = tokio::spawn(call);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE NOT granted AND relation = 'checkouts'::regclass",
        )
        .fetch_all(&mut locker)
        .await
        .unwrap();
        if let Some(pid) = waiting.first() {
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&mut locker)
                .await
                .unwrap();
            assert!(killed, "the waiting session {pid} was terminated");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never tried to store the checkout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = call.await.expect("the call task");
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    match answer {
        Ok(_) => panic!("the interrupted call answered OK"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_confirm_is_answered_from_the_ledger() {
    let stack = Stack::start().await;
    let mut till = Till::open(&stack, "trust").await;
    till.program(ACCRUE_AND_PAY).await;
    let customer = till.register(PHONE).await;
    adjust(&mut till, &customer, "100").await;
    assert_eq!(available(&mut till, &customer).await, Decimal::from(100));

    // Pays the whole balance with points; the gateway's commit is cut off after the booking.
    let mut client = till.checkout.clone();
    let key = till.m.terminal_key.clone();
    let first = interrupted_before_commit(&stack.gateway_db_url(), async move {
        confirm(&mut client, &key, confirm_request("c-1", "R1", "100")).await
    })
    .await;
    eprintln!("interrupted Confirm: {first:?}");
    let after_booking = available(&mut till, &customer).await;
    assert!(
        after_booking < Decimal::from(100),
        "the ledger booked the redemption: {after_booking}"
    );
    // Evaluating again now would be refused: the 100 points are spent.
    let calc = till
        .checkout
        .calculate(authed(
            gw::CalculateRequest {
                buyer: phone(PHONE),
                lines: one("1000.00"),
                redeem_points: "100".into(),
                ..Default::default()
            },
            &till.m.terminal_key,
        ))
        .await
        .expect_err("100 points are no longer there");
    assert_eq!(reason_of(&calc).as_deref(), Some("INSUFFICIENT_POINTS"));

    // The retry is the booked answer, built from the ledger's receipt; nothing is booked twice.
    let retry = confirm(
        &mut till.checkout,
        &till.m.terminal_key,
        confirm_request("c-1", "R1", "100"),
    )
    .await
    .expect("the booked receipt");
    let checkout = retry.checkout.as_ref().unwrap();
    assert_eq!(checkout.state(), CheckoutState::Confirmed);
    assert_eq!(redeemed(&retry), Decimal::from(100));
    let calculation = checkout.calculation.as_ref().unwrap();
    assert_eq!(
        dec(&calculation.totals.as_ref().unwrap().redeem_points),
        Decimal::from(100)
    );
    assert_eq!(calculation.customer.as_ref().unwrap().customer_id, customer);
    assert_eq!(
        dec(&retry.balance.as_ref().unwrap().available),
        after_booking,
        "the balance after the one booking"
    );
    assert_eq!(available(&mut till, &customer).await, after_booking);

    // The same receipt under another request id: the same answer. Stored now, so GetCheckout
    // shows it.
    let again = confirm(
        &mut till.checkout,
        &till.m.terminal_key,
        confirm_request("c-1-again", "R1", "100"),
    )
    .await
    .expect("the booked receipt again");
    assert_eq!(again.checkout, retry.checkout);
    assert_eq!(
        till.get_checkout("R1").await.unwrap().state(),
        CheckoutState::Confirmed
    );

    // Other content under the booked receipt id: a conflict, never a mix of the two.
    let other = confirm(
        &mut till.checkout,
        &till.m.terminal_key,
        confirm_request("c-1-other", "R1", "50"),
    )
    .await
    .expect_err("other content");
    assert_conflict(&other, CheckoutState::Confirmed);

    // The same interruption, and a retry with other content before any retry with the same:
    // the ledger's receipt is not this one, so a conflict; the ledger is untouched.
    adjust(&mut till, &customer, "60").await;
    let before = available(&mut till, &customer).await;
    let mut client = till.checkout.clone();
    let key = till.m.terminal_key.clone();
    interrupted_before_commit(&stack.gateway_db_url(), async move {
        confirm(&mut client, &key, confirm_request("c-2", "R2", "60")).await
    })
    .await;
    let booked = available(&mut till, &customer).await;
    assert!(booked < before, "the ledger booked R2: {booked} < {before}");
    let other = confirm(
        &mut till.checkout,
        &till.m.terminal_key,
        confirm_request("c-2-other", "R2", "10"),
    )
    .await
    .expect_err("other content");
    assert_conflict(&other, CheckoutState::Confirmed);
    assert_eq!(available(&mut till, &customer).await, booked);
    let same = confirm(
        &mut till.checkout,
        &till.m.terminal_key,
        confirm_request("c-2", "R2", "60"),
    )
    .await
    .expect("the booked receipt");
    assert_eq!(redeemed(&same), Decimal::from(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_ids_never_collide_with_derived_keys() {
    let stack = Stack::start().await;
    let mut till = Till::open(&stack, "keys").await;
    till.program(ACCRUE_AND_PAY).await;
    let customer = till.register(PHONE).await;
    adjust(&mut till, &customer, "100").await;
    let key = till.m.terminal_key.clone();

    // A reservation whose request id is what the gateway once derived for booking R42.
    till.checkout
        .reserve(authed(
            gw::ReserveRequest {
                request_id: "book:R42".into(),
                receipt_id: "R41".into(),
                buyer: phone(PHONE),
                lines: one("1000.00"),
                points: "10".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .expect("reserved");
    // R42 still books (it was NOT_FOUND RECEIPT_NOT_FOUND for good before).
    let r42 = confirm(&mut till.checkout, &key, confirm_request("c-42", "R42", ""))
        .await
        .expect("R42 books");
    assert_eq!(
        r42.checkout.as_ref().unwrap().state(),
        CheckoutState::Confirmed
    );
    assert_eq!(
        r42.checkout
            .as_ref()
            .unwrap()
            .receipt
            .as_ref()
            .unwrap()
            .receipt_id,
        "R42"
    );

    // A Confirm whose request id is the gateway's old key for R43's answer.
    confirm(
        &mut till.checkout,
        &key,
        confirm_request("receipt:R43", "R44", ""),
    )
    .await
    .expect("R44 books");
    let r43 = confirm(&mut till.checkout, &key, confirm_request("c-43", "R43", ""))
        .await
        .expect("R43 books");
    // R43 repeated under another request id gets R43's answer (it was IDEMPOTENCY_KEY_REUSED).
    let repeat = confirm(
        &mut till.checkout,
        &key,
        confirm_request("c-43-b", "R43", ""),
    )
    .await
    .expect("R43's answer");
    assert_eq!(repeat.checkout, r43.checkout);
}

/// One receipt's line: two units of 500.00.
fn two_units() -> Vec<BasketLine> {
    let mut lines = one("500.00");
    lines[0].quantity = "2".into();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_end_where_the_ledger_is() {
    const RECEIPTS: usize = 8;
    let stack = Stack::with_replicas(1).await;
    let mut till = Till::open(&stack, "race").await;
    till.program(ACCRUE_AND_PAY).await;
    let customer = till.register(PHONE).await;
    adjust(&mut till, &customer, "1000").await;
    let key = till.m.terminal_key.clone();
    let mut a = till.checkout.clone();
    let mut b = CheckoutServiceClient::new(stack.replicas[0].channel());
    let mut ledger = till.ledger.clone();

    // Confirm on one replica against Cancel on the other, on reserved and on calculated receipts.
    let mut confirmed = 0;
    for i in 0..RECEIPTS {
        let receipt_id = format!("race-{i}");
        if i % 2 == 0 {
            a.reserve(authed(
                gw::ReserveRequest {
                    request_id: format!("hold-{i}"),
                    receipt_id: receipt_id.clone(),
                    buyer: phone(PHONE),
                    lines: two_units(),
                    points: "10".into(),
                    ..Default::default()
                },
                &key,
            ))
            .await
            .expect("reserved");
        }
        let mut request = confirm_request(&format!("confirm-{i}"), &receipt_id, "");
        request.lines = two_units();
        let cancel = gw::CancelRequest {
            request_id: format!("cancel-{i}"),
            receipt_id: receipt_id.clone(),
            ..Default::default()
        };
        let (booked, cancelled) = tokio::join!(
            confirm(&mut a, &key, request),
            b.cancel(authed(cancel, &key))
        );
        eprintln!(
            "{receipt_id}: confirm {:?}, cancel {:?}",
            booked.as_ref().map(|_| "OK").map_err(reason_of),
            cancelled.as_ref().map(|_| "OK").map_err(reason_of)
        );
        let in_ledger = ledger
            .get_receipt(ledger_pb::GetReceiptRequest {
                merchant_id: till.m.merchant_id.clone(),
                receipt_id: receipt_id.clone(),
            })
            .await
            .is_ok();
        let mut states = Vec::new();
        for client in [&mut a, &mut b] {
            let checkout = client
                .get_checkout(authed(
                    gw::GetCheckoutRequest {
                        receipt_id: receipt_id.clone(),
                    },
                    &key,
                ))
                .await
                .expect("a checkout")
                .into_inner()
                .checkout
                .unwrap();
            states.push(checkout.state());
        }
        assert_eq!(states[0], states[1], "{receipt_id}: both replicas agree");
        let expected = if in_ledger {
            CheckoutState::Confirmed
        } else {
            CheckoutState::Cancelled
        };
        assert_eq!(
            states[0], expected,
            "{receipt_id}: the gateway agrees with the ledger"
        );
        if booked.is_ok() {
            confirmed += 1;
            assert!(in_ledger, "{receipt_id}: an acknowledged Confirm is booked");
        }
        assert!(
            booked.is_ok() || cancelled.is_ok(),
            "{receipt_id}: one of the two wins"
        );
    }
    eprintln!("{confirmed} of {RECEIPTS} Confirms won");

    // Two refunds of one unit each, on the two replicas at once: the checkout ends refunded
    // in full with both refunds, whatever order their writes land in.
    for i in 0..RECEIPTS {
        let receipt_id = format!("refund-{i}");
        let mut request = confirm_request(&format!("sale-{i}"), &receipt_id, "");
        request.lines = two_units();
        confirm(&mut a, &key, request).await.expect("booked");
        let refund = |n: u32| gw::RefundRequest {
            request_id: format!("refund-{i}-{n}"),
            receipt_id: receipt_id.clone(),
            refund_id: format!("ret-{n}"),
            lines: vec![gw::RefundLine {
                line_id: "1".into(),
                quantity: "1".into(),
            }],
            ..Default::default()
        };
        let (one_back, other_back) = tokio::join!(
            a.refund(authed(refund(1), &key)),
            b.refund(authed(refund(2), &key))
        );
        one_back.expect("first refund");
        other_back.expect("second refund");
        let checkout = a
            .get_checkout(authed(
                gw::GetCheckoutRequest {
                    receipt_id: receipt_id.clone(),
                },
                &key,
            ))
            .await
            .unwrap()
            .into_inner()
            .checkout
            .unwrap();
        assert_eq!(checkout.state(), CheckoutState::Refunded, "{receipt_id}");
        let receipt = checkout.receipt.unwrap();
        assert_eq!(
            receipt.refunds.len(),
            2,
            "{receipt_id}: the latest receipt is stored"
        );
        assert_eq!(receipt.refund_state(), ledger_pb::RefundState::Full);
    }
}
