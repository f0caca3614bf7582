//! The gateway with each dependency stopped in turn: cards-svc, rules-svc, ledger-svc and the
//! gateway run as separate processes on PostgreSQL (a database each), cards-svc with Redis. A
//! dependency killed with SIGKILL makes the checkout answer UNAVAILABLE DEPENDENCY_UNAVAILABLE
//! naming it, within the dependency timeout, and book nothing (never a zero discount or a
//! success without it); once it is back, the very same Confirm (same request id) books exactly
//! once. Redis killed under cards-svc changes nothing for the checkout.

use kopilka_proto::gateway::{self as gw, CheckoutState};
use kopilka_tests::stack::{dec, phone, Stack, Till, PHONE};
use rust_decimal::Decimal;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const FLAT_5: &str = "rules:\n  - id: flat\n    name: flat\n    accrue_percent: {percent: \"5\"}\n";

/// UNAVAILABLE DEPENDENCY_UNAVAILABLE with metadata dependency = `dependency`.
#[track_caller]
fn assert_dependency_unavailable<T: std::fmt::Debug>(answer: Result<T, Status>, dependency: &str) {
    let status = answer.expect_err("an answer without the dependency");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("ErrorInfo expected: {status:?}"));
    assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE", "{status:?}");
    assert_eq!(
        info.metadata.get("dependency").map(String::as_str),
        Some(dependency),
        "{status:?}"
    );
}

/// A confirmed receipt of 1 000.00 accruing 5 %.
#[track_caller]
fn assert_booked(answer: &gw::ConfirmResponse, receipt_id: &str) {
    let checkout = answer.checkout.as_ref().expect("a checkout");
    assert_eq!(checkout.receipt_id, receipt_id);
    assert_eq!(checkout.state(), CheckoutState::Confirmed);
    let summary = checkout
        .receipt
        .as_ref()
        .and_then(|r| r.summary.as_ref())
        .expect("a receipt summary");
    assert_eq!(dec(&summary.points_accrued), Decimal::from(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dependency_killed_in_turn() {
    let mut stack = Stack::start().await;
    let mut till = Till::open(&stack, "outage").await;
    till.program(FLAT_5).await;
    let customer = till.register(PHONE).await;

    // All up: 5 % of 1 000.
    let calculation = till.calculate(phone(PHONE)).await.expect("calculated");
    let totals = calculation.totals.as_ref().unwrap();
    assert_eq!(dec(&totals.points_accrued), Decimal::from(50));
    let confirmed = till.confirm("c-0", "rcpt-0").await.expect("confirmed");
    assert_booked(&confirmed, "rcpt-0");
    let mut points = till.points(&customer).await;

    // ---- rules-svc killed: no calculation at all, never a zero discount; nothing booked.
    stack.rules.kill();
    assert_dependency_unavailable(till.calculate(phone(PHONE)).await, "rules");
    assert_dependency_unavailable(till.calculate(None).await, "rules");
    assert_dependency_unavailable(till.confirm("c-rules", "rcpt-rules").await, "rules");
    assert_eq!(till.points(&customer).await, points, "nothing booked");
    let missing = till.get_checkout("rcpt-rules").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    stack.rules.restart().await;
    let booked = till
        .confirm_after_restart("c-rules", "rcpt-rules")
        .await
        .expect("the same Confirm succeeds once rules-svc is back");
    assert_booked(&booked, "rcpt-rules");
    let again = till
        .confirm("c-rules", "rcpt-rules")
        .await
        .expect("repeated");
    assert_eq!(again.checkout, booked.checkout, "the same answer");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked once");
    let stored = till.get_checkout("rcpt-rules").await.expect("stored");
    assert_eq!(stored.state(), CheckoutState::Confirmed);

    // ---- ledger-svc killed: the purchase cannot be booked; once it is back, exactly once.
    stack.ledger.kill();
    // Calculate shows the buyer's balance: without ledger-svc it may refuse, naming it.
    if let Err(status) = till.calculate(phone(PHONE)).await {
        assert_dependency_unavailable::<()>(Err(status), "ledger");
    }
    assert_dependency_unavailable(till.confirm("c-ledger", "rcpt-ledger").await, "ledger");
    stack.ledger.restart().await;
    assert_eq!(till.points(&customer).await, points, "nothing booked");
    let booked = till
        .confirm_after_restart("c-ledger", "rcpt-ledger")
        .await
        .expect("the same Confirm succeeds once ledger-svc is back");
    assert_booked(&booked, "rcpt-ledger");
    let again = till
        .confirm("c-ledger", "rcpt-ledger")
        .await
        .expect("repeated");
    assert_eq!(again.checkout, booked.checkout, "the same answer");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked exactly once");

    // ---- cards-svc killed: identified buyers cannot be served.
    stack.cards.kill();
    assert_dependency_unavailable(till.calculate(phone(PHONE)).await, "cards");
    assert_dependency_unavailable(till.confirm("c-cards", "rcpt-cards").await, "cards");
    assert_eq!(till.points(&customer).await, points, "nothing booked");
    let anonymous = till.calculate(None).await;
    eprintln!(
        "anonymous Calculate without cards-svc: {:?}",
        anonymous.as_ref().map(|_| "OK").map_err(|s| s.code())
    );
    stack.cards.restart().await;
    let booked = till
        .confirm_after_restart("c-cards", "rcpt-cards")
        .await
        .expect("the same Confirm succeeds once cards-svc is back");
    assert_booked(&booked, "rcpt-cards");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked once");

    // ---- Redis killed (SIGKILL) under cards-svc: the checkout goes on without the cache.
    // cards-svc keeps the merchant's tiers in Redis: there is something there to miss.
    let mut redis = redis::Client::open(stack.redis.url())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut redis)
        .await
        .expect("DBSIZE");
    assert!(keys > 0, "cards-svc cached nothing in Redis");
    drop(redis);
    stack.redis.stop();
    let calculation = till
        .calculate(phone(PHONE))
        .await
        .expect("Calculate without Redis");
    assert_eq!(
        dec(&calculation.totals.as_ref().unwrap().points_accrued),
        Decimal::from(50)
    );
    let booked = till
        .confirm("c-redis", "rcpt-redis")
        .await
        .expect("Confirm without Redis");
    assert_booked(&booked, "rcpt-redis");
    points += Decimal::from(50);
    assert_eq!(till.points(&customer).await, points, "booked once");
    assert!(stack.cards.is_running(), "cards-svc survives Redis dying");
    let logs = stack.cards.logs();
    let fallbacks = logs.lines().filter(|l| l.contains("Redis")).count();
    eprintln!("cards-svc log lines about Redis after it died: {fallbacks}");
}
