//! The ledger through its gRPC API, on SQLite and on PostgreSQL: accrual and soonest-expiring-first
//! redemption, refusals (INSUFFICIENT_POINTS, bad input), gifts granted once and expiring on time,
//! pending points, holds (commit, void, time-out), receipts with refunds by lines, receipt and
//! request idempotency, purchase aggregates over windows. Every scenario ends with `Verify` ok.
//!
//! Each scenario is one async fn run by two `#[tokio::test]`s, one per backend.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, lookback::Span, ActionKind, BasketLine, Lookback, LotKind};
use kopilka_proto::wkt;
use kopilka_runtime::status::{field_violations_of, reason_of};
use kopilka_tests::ledger::TestLedger;
use kopilka_tests::Backend;
use ledger_svc::domain::clock::Clock;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const M: &str = "m-api";

// ---- helpers ----------------------------------------------------------------------------------

fn rid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("req-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn ts(t: DateTime<Utc>) -> wkt::Timestamp {
    wkt::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn instant(t: &Option<wkt::Timestamp>) -> DateTime<Utc> {
    let t = t.as_ref().expect("timestamp set");
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

fn secs(s: i64) -> wkt::Duration {
    wkt::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn grant(amount: &str, expires_at: Option<DateTime<Utc>>) -> types::PointsGrant {
    types::PointsGrant {
        amount: amount.into(),
        kind: LotKind::Purchase as i32,
        expires_at: expires_at.map(ts),
        ..Default::default()
    }
}

/// The reason of a FAILED_PRECONDITION / NOT_FOUND status; panics on success or another code.
fn reason<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> String {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    reason_of(&status).unwrap_or_else(|| panic!("no ErrorInfo reason in {status:?}"))
}

/// The field paths of an INVALID_ARGUMENT status.
fn violations<T: std::fmt::Debug>(result: Result<T, Status>) -> Vec<String> {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let v = field_violations_of(&status);
    assert!(
        !v.is_empty(),
        "INVALID_ARGUMENT without field violations: {status:?}"
    );
    v.into_iter().map(|(f, _)| f).collect()
}

async fn accrue(
    l: &TestLedger,
    customer: &str,
    g: types::PointsGrant,
) -> Result<pb::AccrueResponse, Status> {
    l.client()
        .accrue(pb::AccrueRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: customer.into(),
            grant: Some(g),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn redeem(
    l: &TestLedger,
    customer: &str,
    amount: &str,
) -> Result<pb::RedeemResponse, Status> {
    redeem_with_id(l, &rid(), customer, amount).await
}

async fn redeem_with_id(
    l: &TestLedger,
    request_id: &str,
    customer: &str,
    amount: &str,
) -> Result<pb::RedeemResponse, Status> {
    l.client()
        .redeem(pb::RedeemRequest {
            merchant_id: M.into(),
            request_id: request_id.into(),
            customer_id: customer.into(),
            amount: amount.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn reserve(
    l: &TestLedger,
    customer: &str,
    amount: &str,
    ttl_secs: i64,
) -> Result<pb::Hold, Status> {
    l.client()
        .reserve(pb::ReserveRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: customer.into(),
            amount: amount.into(),
            ttl: Some(secs(ttl_secs)),
            reference: "register-1".into(),
        })
        .await
        .map(|r| r.into_inner().hold.expect("hold"))
}

async fn commit(
    l: &TestLedger,
    hold_id: &str,
    amount: &str,
) -> Result<pb::CommitHoldResponse, Status> {
    l.client()
        .commit_hold(pb::CommitHoldRequest {
            merchant_id: M.into(),
            request_id: rid(),
            hold_id: hold_id.into(),
            amount: amount.into(),
            description: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn void(l: &TestLedger, hold_id: &str) -> Result<pb::VoidHoldResponse, Status> {
    l.client()
        .void_hold(pb::VoidHoldRequest {
            merchant_id: M.into(),
            request_id: rid(),
            hold_id: hold_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get_hold(l: &TestLedger, hold_id: &str) -> pb::Hold {
    l.client()
        .get_hold(pb::GetHoldRequest {
            merchant_id: M.into(),
            hold_id: hold_id.into(),
        })
        .await
        .expect("GetHold")
        .into_inner()
        .hold
        .expect("hold")
}

async fn balance(l: &TestLedger, customer: &str) -> pb::Balance {
    l.client()
        .get_balance(pb::GetBalanceRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            expiring_within: None,
        })
        .await
        .expect("GetBalance")
        .into_inner()
        .balance
        .expect("balance")
}

/// (available, held, pending) as reported.
async fn abp(l: &TestLedger, customer: &str) -> (String, String, String) {
    let b = balance(l, customer).await;
    assert_eq!(
        b.active.parse::<i64>().unwrap(),
        b.available.parse::<i64>().unwrap() + b.held.parse::<i64>().unwrap(),
        "active = available + held: {b:?}"
    );
    (b.available, b.held, b.pending)
}

fn s3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

async fn process_due(l: &TestLedger) -> pb::ProcessDueLotsResponse {
    l.client()
        .process_due_lots(pb::ProcessDueLotsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            as_of: None,
            max_items: 0,
        })
        .await
        .expect("ProcessDueLots")
        .into_inner()
}

async fn lots(l: &TestLedger, customer: &str, states: &[pb::LotState]) -> Vec<pb::Lot> {
    l.client()
        .list_lots(pb::ListLotsRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            states: states.iter().map(|s| *s as i32).collect(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListLots")
        .into_inner()
        .lots
}

async fn assert_verified(l: &TestLedger) {
    let v = l
        .client()
        .verify(pb::VerifyRequest {
            merchant_id: M.into(),
            customer_ids: vec![],
            max_differences: 0,
        })
        .await
        .expect("Verify")
        .into_inner();
    assert!(v.ok, "Verify found differences: {:?}", v.differences);
    assert!(v.accounts_checked > 0);
}

fn line(
    id: &str,
    product: &str,
    unit_price: &str,
    quantity: &str,
    redeem: &str,
    accrual: &str,
) -> pb::ReceiptLine {
    pb::ReceiptLine {
        line: Some(BasketLine {
            line_id: id.into(),
            product_id: product.into(),
            name: format!("product {product}"),
            unit_price: unit_price.into(),
            quantity: quantity.into(),
            ..Default::default()
        }),
        redeem_points: redeem.into(),
        // A point pays 1 ₽ in these tests.
        redeem_money: redeem.into(),
        accrual_points: accrual.into(),
        ..Default::default()
    }
}

fn receipt(id: &str, customer: &str, lines: Vec<pb::ReceiptLine>) -> pb::ReceiptInput {
    let redeem: i64 = lines
        .iter()
        .map(|l| l.redeem_points.parse::<i64>().unwrap_or(0))
        .sum();
    pb::ReceiptInput {
        receipt_id: id.into(),
        customer_id: customer.into(),
        store_id: "store-1".into(),
        terminal_id: "till-1".into(),
        currency: "RUB".into(),
        lines,
        redeem_points: redeem.to_string(),
        ..Default::default()
    }
}

async fn record(
    l: &TestLedger,
    request_id: &str,
    input: pb::ReceiptInput,
) -> Result<pb::RecordReceiptResponse, Status> {
    l.client()
        .record_receipt(pb::RecordReceiptRequest {
            merchant_id: M.into(),
            request_id: request_id.into(),
            receipt: Some(input),
        })
        .await
        .map(|r| r.into_inner())
}

async fn refund(
    l: &TestLedger,
    receipt_id: &str,
    refund_id: &str,
    lines: &[(&str, &str)],
) -> Result<pb::RefundReceiptResponse, Status> {
    l.client()
        .refund_receipt(pb::RefundReceiptRequest {
            merchant_id: M.into(),
            request_id: rid(),
            receipt_id: receipt_id.into(),
            refund_id: refund_id.into(),
            lines: lines
                .iter()
                .map(|(id, q)| pb::RefundLineRequest {
                    line_id: (*id).into(),
                    quantity: (*q).into(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn get_receipt(l: &TestLedger, receipt_id: &str) -> Result<pb::Receipt, Status> {
    l.client()
        .get_receipt(pb::GetReceiptRequest {
            merchant_id: M.into(),
            receipt_id: receipt_id.into(),
        })
        .await
        .map(|r| r.into_inner().receipt.expect("receipt"))
}

async fn aggregates(
    l: &TestLedger,
    customer: &str,
    lookbacks: &[Span],
    as_of: Option<DateTime<Utc>>,
) -> types::PurchaseAggregates {
    l.client()
        .get_purchase_aggregates(pb::GetPurchaseAggregatesRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            lookbacks: lookbacks
                .iter()
                .map(|s| Lookback { span: Some(*s) })
                .collect(),
            as_of: as_of.map(ts),
            include_favourite_product: false,
        })
        .await
        .expect("GetPurchaseAggregates")
        .into_inner()
        .aggregates
        .expect("aggregates")
}

fn window(a: &types::PurchaseAggregates, i: usize) -> (String, u64) {
    (a.windows[i].turnover.clone(), a.windows[i].purchase_count)
}

async fn history(l: &TestLedger, customer: &str) -> Vec<pb::Transaction> {
    l.client()
        .list_history(pb::ListHistoryRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            include_entries: true,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("ListHistory")
        .into_inner()
        .transactions
}

// ---- scenarios --------------------------------------------------------------------------------

/// Accrual shows in the balance; redemption takes soonest-expiring lots first, lots without
/// expiry last, ties by creation time.
async fn accrue_then_redeem_soonest_expiring_first(l: TestLedger) {
    let c = "c-spend";
    let now = l.clock.now();
    let never = accrue(&l, c, grant("50", None))
        .await
        .unwrap()
        .lot
        .unwrap()
        .lot_id;
    l.clock.advance(Duration::seconds(1));
    let late = accrue(&l, c, grant("30", Some(now + Duration::days(60))))
        .await
        .unwrap()
        .lot
        .unwrap()
        .lot_id;
    l.clock.advance(Duration::seconds(1));
    let soon_a = accrue(&l, c, grant("20", Some(now + Duration::days(10))))
        .await
        .unwrap()
        .lot
        .unwrap()
        .lot_id;
    l.clock.advance(Duration::seconds(1));
    let soon_b = accrue(&l, c, grant("10", Some(now + Duration::days(10))))
        .await
        .unwrap();
    assert_eq!(soon_b.balance.as_ref().unwrap().available, "110");
    let soon_b = soon_b.lot.unwrap().lot_id;
    assert_eq!(abp(&l, c).await, s3("110", "0", "0"));

    let r = redeem(&l, c, "65").await.unwrap();
    let consumed: Vec<(String, String)> = r
        .consumed
        .iter()
        .map(|x| (x.lot_id.clone(), x.amount.clone()))
        .collect();
    assert_eq!(
        consumed,
        vec![
            (soon_a.clone(), "20".to_owned()),
            (soon_b.clone(), "10".to_owned()),
            (late.clone(), "30".to_owned()),
            (never.clone(), "5".to_owned()),
        ],
        "soonest expiry first, ties by creation time, lots without expiry last"
    );
    assert_eq!(r.balance.unwrap().available, "45");
    assert_eq!(abp(&l, c).await, s3("45", "0", "0"));
    let open = lots(&l, c, &[]).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].lot_id.as_str(), open[0].remaining.as_str()),
        (never.as_str(), "45")
    );
    let consumed = lots(&l, c, &[pb::LotState::Consumed]).await;
    assert_eq!(consumed.len(), 3);
    assert_verified(&l).await;
}

/// Spending more than is available is FAILED_PRECONDITION INSUFFICIENT_POINTS and changes nothing.
async fn insufficient_points(l: TestLedger) {
    let c = "c-poor";
    accrue(&l, c, grant("10", None)).await.unwrap();
    assert_eq!(
        reason(redeem(&l, c, "11").await, Code::FailedPrecondition),
        "INSUFFICIENT_POINTS"
    );
    assert_eq!(
        reason(reserve(&l, c, "11", 600).await, Code::FailedPrecondition),
        "INSUFFICIENT_POINTS"
    );
    assert_eq!(
        reason(redeem(&l, "c-unknown", "1").await, Code::FailedPrecondition),
        "INSUFFICIENT_POINTS",
        "an unknown customer has an empty account"
    );
    assert_eq!(abp(&l, c).await, s3("10", "0", "0"));
    redeem(&l, c, "10")
        .await
        .expect("exactly the balance can be spent");
    assert_eq!(abp(&l, c).await, s3("0", "0", "0"));
    assert_verified(&l).await;
}

/// Negative, over-precise, malformed amounts and missing ids are INVALID_ARGUMENT with field
/// violations; nothing changes.
async fn bad_input_is_refused(l: TestLedger) {
    let c = "c-bad";
    accrue(&l, c, grant("100", None)).await.unwrap();
    for amount in ["-5", "1.5", "0", "abc", "", "1e3", " 7"] {
        assert_eq!(
            violations(redeem(&l, c, amount).await),
            vec!["amount"],
            "redeem {amount:?}"
        );
        assert_eq!(
            violations(reserve(&l, c, amount, 60).await),
            vec!["amount"],
            "reserve {amount:?}"
        );
    }
    for amount in ["-5", "1.5", "0"] {
        assert_eq!(
            violations(accrue(&l, c, grant(amount, None)).await),
            vec!["grant.amount"],
            "accrue {amount:?}"
        );
    }
    assert_eq!(violations(redeem(&l, "", "5").await), vec!["customer_id"]);
    assert_eq!(
        violations(accrue(&l, "", grant("5", None)).await),
        vec!["customer_id"]
    );
    assert_eq!(
        violations(redeem_with_id(&l, "", c, "5").await),
        vec!["request_id"]
    );
    // Expiry before activation.
    let now = l.clock.now();
    let mut g = grant("5", Some(now + Duration::days(1)));
    g.activates_at = Some(ts(now + Duration::days(2)));
    assert_eq!(violations(accrue(&l, c, g).await), vec!["grant.expires_at"]);
    // A receipt line with too many decimals of points, and one without a product.
    let mut bad = receipt(
        "rc-bad",
        c,
        vec![
            line("1", "p1", "10.00", "1", "1.5", "0"),
            line("2", "", "10.00", "1", "0", "0"),
        ],
    );
    bad.redeem_points = String::new();
    let fields = violations(record(&l, &rid(), bad).await);
    assert!(
        fields.contains(&"receipt.lines[0].redeem_points".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"receipt.lines[1].line.product_id".to_owned()),
        "{fields:?}"
    );
    assert_eq!(abp(&l, c).await, s3("100", "0", "0"), "nothing changed");
    assert_eq!(
        reason(get_receipt(&l, "rc-bad").await, Code::NotFound),
        "RECEIPT_NOT_FOUND"
    );
    assert_verified(&l).await;
}

/// The demo program's start bonus: 100 points valid 14 days, granted once per customer by its
/// grant key; 14 days and a second later the due-work pass expires it.
async fn start_bonus_is_granted_once_and_expires(l: TestLedger) {
    let c = "c-new";
    let now = l.clock.now();
    let gift = |request_id: String| pb::GrantGiftRequest {
        merchant_id: M.into(),
        request_id,
        customer_id: c.into(),
        grant: Some(types::PointsGrant {
            amount: "100".into(),
            kind: LotKind::Gift as i32,
            expires_at: Some(ts(now + Duration::days(14))),
            grant_key: "registration".into(),
            rule_ids: vec!["start-bonus".into()],
            ..Default::default()
        }),
        action: ActionKind::Registration as i32,
        description: "start bonus".into(),
        ..Default::default()
    };
    let first = l
        .client()
        .grant_gift(gift(rid()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.already_granted);
    let lot = first.lot.unwrap();
    assert_eq!(
        (lot.amount.as_str(), lot.kind, lot.action),
        ("100", LotKind::Gift as i32, ActionKind::Registration as i32)
    );
    assert_eq!(first.balance.unwrap().available, "100");

    let again = l
        .client()
        .grant_gift(gift(rid()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.already_granted,
        "a second grant with the key books nothing"
    );
    assert_eq!(again.lot.unwrap().lot_id, lot.lot_id);
    assert_eq!(abp(&l, c).await, s3("100", "0", "0"));

    let b = balance(&l, c).await;
    assert_eq!(b.expiring.len(), 1, "expiring within 30 days: {b:?}");
    assert_eq!(
        (
            b.expiring[0].amount.as_str(),
            instant(&b.expiring[0].expires_at)
        ),
        ("100", now + Duration::days(14))
    );

    l.clock.advance(Duration::days(14) - Duration::seconds(1));
    assert_eq!(process_due(&l).await.expired, 0, "not yet");
    assert_eq!(abp(&l, c).await, s3("100", "0", "0"));
    l.clock.advance(Duration::seconds(2));
    let done = process_due(&l).await;
    assert_eq!(done.expired, 1, "{done:?}");
    assert_eq!(abp(&l, c).await, s3("0", "0", "0"));
    let expired = lots(&l, c, &[pb::LotState::Expired]).await;
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].lot_id.as_str(), expired[0].remaining.as_str()),
        (lot.lot_id.as_str(), "0")
    );
    assert!(lots(&l, c, &[]).await.is_empty());

    let later = l
        .client()
        .grant_gift(gift(rid()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        later.already_granted,
        "the key is once-only per customer, ever"
    );
    assert_eq!(abp(&l, c).await, s3("0", "0", "0"));
    assert_verified(&l).await;
}

/// Pending points (activation in the future) are not spendable until the clock passes their
/// activation and the due-work pass runs.
async fn pending_points_activate(l: TestLedger) {
    let c = "c-pending";
    let now = l.clock.now();
    let mut g = grant("40", Some(now + Duration::days(30)));
    g.activates_at = Some(ts(now + Duration::days(2)));
    let r = accrue(&l, c, g).await.unwrap();
    assert_eq!(r.lot.unwrap().state, pb::LotState::Pending as i32);
    assert_eq!(abp(&l, c).await, s3("0", "0", "40"));
    let b = balance(&l, c).await;
    assert_eq!(b.pending_activations.len(), 1);
    assert_eq!(
        instant(&b.pending_activations[0].activates_at),
        now + Duration::days(2)
    );
    assert_eq!(
        reason(redeem(&l, c, "1").await, Code::FailedPrecondition),
        "INSUFFICIENT_POINTS"
    );

    l.clock.advance(Duration::days(2) + Duration::seconds(1));
    let done = process_due(&l).await;
    assert_eq!(done.activated, 1, "{done:?}");
    assert_eq!(abp(&l, c).await, s3("40", "0", "0"));
    assert_eq!(lots(&l, c, &[]).await[0].state, pb::LotState::Active as i32);
    redeem(&l, c, "15").await.unwrap();
    assert_eq!(abp(&l, c).await, s3("25", "0", "0"));
    assert_verified(&l).await;
}

/// Reserve moves points from available to held; a commit redeems part and releases the rest;
/// void releases; a hold past its time-out is released by the due-work pass.
async fn holds(l: TestLedger) {
    let c = "c-hold";
    accrue(&l, c, grant("100", None)).await.unwrap();
    let h1 = reserve(&l, c, "60", 600).await.unwrap();
    assert_eq!(
        (h1.amount.as_str(), h1.state),
        ("60", pb::HoldState::Active as i32)
    );
    assert_eq!(abp(&l, c).await, s3("40", "60", "0"));
    assert_eq!(
        reason(redeem(&l, c, "41").await, Code::FailedPrecondition),
        "INSUFFICIENT_POINTS",
        "held points cannot be spent"
    );
    assert_eq!(
        reason(
            commit(&l, &h1.hold_id, "61").await,
            Code::FailedPrecondition
        ),
        "HOLD_AMOUNT_EXCEEDED"
    );

    let done = commit(&l, &h1.hold_id, "25").await.unwrap();
    let hold = done.hold.unwrap();
    assert_eq!(
        (hold.state, hold.committed_amount.as_str()),
        (pb::HoldState::Committed as i32, "25")
    );
    assert_eq!(done.balance.unwrap().available, "75");
    assert_eq!(abp(&l, c).await, s3("75", "0", "0"));
    assert_eq!(
        reason(commit(&l, &h1.hold_id, "1").await, Code::FailedPrecondition),
        "HOLD_FINALIZED"
    );
    assert_eq!(
        reason(void(&l, &h1.hold_id).await, Code::FailedPrecondition),
        "HOLD_FINALIZED",
        "a committed hold cannot be voided"
    );

    let h2 = reserve(&l, c, "30", 600).await.unwrap();
    assert_eq!(abp(&l, c).await, s3("45", "30", "0"));
    let voided = void(&l, &h2.hold_id).await.unwrap();
    assert_eq!(voided.hold.unwrap().state, pb::HoldState::Voided as i32);
    assert_eq!(abp(&l, c).await, s3("75", "0", "0"));
    let again = void(&l, &h2.hold_id)
        .await
        .expect("voiding a voided hold succeeds");
    assert_eq!(again.hold.unwrap().state, pb::HoldState::Voided as i32);
    assert_eq!(abp(&l, c).await, s3("75", "0", "0"), "released once");
    assert_eq!(
        reason(commit(&l, &h2.hold_id, "").await, Code::FailedPrecondition),
        "HOLD_FINALIZED"
    );

    // Commit with an empty amount redeems everything held.
    let h3 = reserve(&l, c, "5", 600).await.unwrap();
    let all = commit(&l, &h3.hold_id, "").await.unwrap();
    assert_eq!(all.hold.unwrap().committed_amount, "5");
    assert_eq!(abp(&l, c).await, s3("70", "0", "0"));

    // Time-out.
    let h4 = reserve(&l, c, "20", 60).await.unwrap();
    assert_eq!(
        instant(&h4.expires_at),
        l.clock.now() + Duration::seconds(60)
    );
    l.clock.advance(Duration::seconds(59));
    assert_eq!(process_due(&l).await.holds_released, 0);
    assert_eq!(abp(&l, c).await, s3("50", "20", "0"));
    l.clock.advance(Duration::seconds(2));
    assert_eq!(process_due(&l).await.holds_released, 1);
    assert_eq!(
        get_hold(&l, &h4.hold_id).await.state,
        pb::HoldState::Expired as i32
    );
    assert_eq!(abp(&l, c).await, s3("70", "0", "0"));
    assert_eq!(
        reason(commit(&l, &h4.hold_id, "").await, Code::FailedPrecondition),
        "HOLD_EXPIRED"
    );
    let v = void(&l, &h4.hold_id)
        .await
        .expect("voiding an expired hold succeeds");
    assert_eq!(v.hold.unwrap().state, pb::HoldState::Expired as i32);
    assert_eq!(abp(&l, c).await, s3("70", "0", "0"));

    assert_eq!(
        reason(commit(&l, "no-such-hold", "").await, Code::NotFound),
        "HOLD_NOT_FOUND"
    );
    assert_eq!(
        reason(void(&l, "no-such-hold").await, Code::NotFound),
        "HOLD_NOT_FOUND"
    );
    assert_verified(&l).await;
}

/// A receipt redeems and accrues in one transaction; refunds by lines reverse accrual and
/// restore redemption in proportion, the last refund of a line taking exactly what is left.
async fn receipt_and_refunds_by_lines(l: TestLedger) {
    let c = "c-buyer";
    let now = l.clock.now();
    let funding = accrue(&l, c, grant("100", Some(now + Duration::days(90))))
        .await
        .unwrap()
        .lot
        .unwrap();
    // Line 1: 3 × 100.00, 30 points redeemed, 10 accrued; line 2: 2 × 50.00, 7 accrued.
    let input = receipt(
        "rc-1",
        c,
        vec![
            line("1", "coffee", "100.00", "3", "30", "10"),
            line("2", "cake", "50.00", "2", "0", "7"),
        ],
    );
    let rec = record(&l, &rid(), input).await.unwrap();
    assert!(!rec.already_recorded);
    let r = rec.receipt.unwrap();
    let summary = r.summary.unwrap();
    assert_eq!(
        (
            summary.gross_amount.as_str(),
            summary.net_amount.as_str(),
            summary.redeem_points.as_str(),
            summary.points_accrued.as_str()
        ),
        ("400.00", "400.00", "30", "17")
    );
    assert_eq!(summary.paid_money, "370.00");
    assert_eq!(r.lots.len(), 1);
    assert_eq!(
        (r.lots[0].amount.as_str(), r.lots[0].receipt_id.as_str()),
        ("17", "rc-1")
    );
    assert_eq!(r.refund_state, pb::RefundState::None as i32);
    assert_eq!(abp(&l, c).await, s3("87", "0", "0"), "100 - 30 + 17");

    // One unit of line 1: a third of 10 accrued (3, rounded down) and of 30 redeemed (10).
    let r1 = refund(&l, "rc-1", "rf-1", &[("1", "1")]).await.unwrap();
    let f1 = r1.refund.unwrap();
    assert_eq!(
        (
            f1.amount.as_str(),
            f1.points_reversed.as_str(),
            f1.points_restored.as_str()
        ),
        ("100.00", "3", "10")
    );
    assert!(!f1.fully_refunded);
    assert_eq!(f1.restored_lots.len(), 1);
    let restored = &f1.restored_lots[0];
    assert_eq!(
        (restored.kind, restored.amount.as_str()),
        (LotKind::Restored as i32, "10")
    );
    assert_eq!(
        instant(&restored.expires_at),
        instant(&funding.expires_at),
        "restored points keep the expiry of the lots they were redeemed from"
    );
    assert_eq!(
        r1.receipt.unwrap().refund_state,
        pb::RefundState::Partial as i32
    );
    assert_eq!(abp(&l, c).await, s3("94", "0", "0"), "87 - 3 + 10");

    // The same refund id and content again: the first refund, nothing new.
    let again = refund(&l, "rc-1", "rf-1", &[("1", "1")]).await.unwrap();
    assert_eq!(again.refund.unwrap(), f1);
    assert_eq!(abp(&l, c).await, s3("94", "0", "0"));

    let r2 = refund(&l, "rc-1", "rf-2", &[("1", "1")])
        .await
        .unwrap()
        .refund
        .unwrap();
    assert_eq!(
        (r2.points_reversed.as_str(), r2.points_restored.as_str()),
        ("3", "10")
    );
    assert_eq!(abp(&l, c).await, s3("101", "0", "0"));
    assert_eq!(
        reason(
            refund(&l, "rc-1", "rf-x", &[("1", "2")]).await,
            Code::FailedPrecondition
        ),
        "REFUND_EXCEEDS_RECEIPT"
    );
    assert_eq!(
        reason(
            refund(&l, "rc-1", "rf-y", &[("9", "1")]).await,
            Code::NotFound
        ),
        "LINE_NOT_FOUND"
    );

    // The rest: line 1's last unit takes exactly what is left (4 of 10), line 2 all of its 7.
    let r3 = refund(&l, "rc-1", "rf-3", &[]).await.unwrap();
    let f3 = r3.refund.unwrap();
    assert!(f3.fully_refunded);
    let by_line: Vec<(String, String, String, String)> = f3
        .lines
        .iter()
        .map(|x| {
            (
                x.line_id.clone(),
                x.quantity.clone(),
                x.points_reversed.clone(),
                x.points_restored.clone(),
            )
        })
        .collect();
    assert_eq!(
        by_line,
        vec![
            ("1".into(), "1".into(), "4".into(), "10".into()),
            ("2".into(), "2".into(), "7".into(), "0".into())
        ]
    );
    assert_eq!(
        (
            f3.points_reversed.as_str(),
            f3.points_restored.as_str(),
            f3.amount.as_str()
        ),
        ("11", "10", "200.00")
    );
    assert_eq!(
        abp(&l, c).await,
        s3("100", "0", "0"),
        "everything undone: the 100 funding points are back"
    );

    let stored = get_receipt(&l, "rc-1").await.unwrap();
    assert_eq!(stored.refund_state, pb::RefundState::Full as i32);
    assert_eq!(stored.refunds.len(), 3);
    let refunded: Vec<&str> = stored
        .lines
        .iter()
        .map(|x| x.refunded_quantity.as_str())
        .collect();
    assert_eq!(refunded, vec!["3", "2"]);
    let total_reversed: i64 = stored
        .refunds
        .iter()
        .map(|f| f.points_reversed.parse::<i64>().unwrap())
        .sum();
    let total_restored: i64 = stored
        .refunds
        .iter()
        .map(|f| f.points_restored.parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        (total_reversed, total_restored),
        (17, 30),
        "no drift over repeated partial refunds"
    );

    assert_eq!(
        reason(
            refund(&l, "rc-1", "rf-4", &[]).await,
            Code::FailedPrecondition
        ),
        "RECEIPT_ALREADY_REFUNDED"
    );
    assert_eq!(
        reason(
            refund(&l, "rc-1", "rf-5", &[("2", "1")]).await,
            Code::FailedPrecondition
        ),
        "RECEIPT_ALREADY_REFUNDED"
    );
    assert_eq!(
        reason(refund(&l, "rc-none", "rf-1", &[]).await, Code::NotFound),
        "RECEIPT_NOT_FOUND"
    );
    assert_eq!(abp(&l, c).await, s3("100", "0", "0"));
    assert_verified(&l).await;
}

/// A refund that takes back accrued points already spent leaves a debt (ALLOW_NEGATIVE, the
/// default); later accruals pay it off first.
async fn refund_after_spending_leaves_a_debt(l: TestLedger) {
    let c = "c-debt";
    let rec = record(
        &l,
        &rid(),
        receipt(
            "rc-debt",
            c,
            vec![line("1", "tv", "1000.00", "1", "0", "50")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(rec.balance.unwrap().available, "50");
    redeem(&l, c, "40").await.unwrap();
    let f = refund(&l, "rc-debt", "rf-debt", &[])
        .await
        .unwrap()
        .refund
        .unwrap();
    assert_eq!(
        (
            f.points_reversed.as_str(),
            f.negative_balance_created.as_str()
        ),
        ("50", "40")
    );
    assert_eq!(f.policy_applied, pb::ShortfallPolicy::AllowNegative as i32);
    assert_eq!(abp(&l, c).await, s3("-40", "0", "0"));
    assert_eq!(
        reason(redeem(&l, c, "1").await, Code::FailedPrecondition),
        "INSUFFICIENT_POINTS"
    );
    accrue(&l, c, grant("25", None)).await.unwrap();
    assert_eq!(abp(&l, c).await, s3("-15", "0", "0"));
    let paid = accrue(&l, c, grant("25", None)).await.unwrap();
    assert_eq!(
        paid.lot.unwrap().remaining,
        "10",
        "the new lot's unspent part is reduced by the debt it pays"
    );
    assert_eq!(abp(&l, c).await, s3("10", "0", "0"));
    let r = redeem(&l, c, "10").await.unwrap();
    assert_eq!(r.consumed.len(), 1);
    assert_eq!(abp(&l, c).await, s3("0", "0", "0"));
    assert_verified(&l).await;
}

/// The same receipt id with the same content is the stored receipt under any request id; other
/// content is RECEIPT_ALREADY_RECORDED; a request id reused for another payload is
/// IDEMPOTENCY_KEY_REUSED; a retry of the same request returns the first answer.
async fn receipt_and_request_idempotency(l: TestLedger) {
    let c = "c-idem";
    accrue(&l, c, grant("50", None)).await.unwrap();
    let input = receipt(
        "rc-idem",
        c,
        vec![line("1", "tea", "80.00", "1", "20", "4")],
    );
    let first_id = rid();
    let first = record(&l, &first_id, input.clone()).await.unwrap();
    assert!(!first.already_recorded);
    assert_eq!(abp(&l, c).await, s3("34", "0", "0"));

    let retry = record(&l, &first_id, input.clone()).await.unwrap();
    assert_eq!(retry, first, "a retry returns the first answer");

    let again = record(&l, &rid(), input.clone()).await.unwrap();
    assert!(again.already_recorded);
    assert_eq!(again.transaction_id, first.transaction_id);
    assert_eq!(again.receipt.as_ref().unwrap().receipt_id, "rc-idem");
    assert_eq!(abp(&l, c).await, s3("34", "0", "0"), "booked once");

    let mut other = input.clone();
    other.lines[0].accrual_points = "5".into();
    assert_eq!(
        reason(
            record(&l, &rid(), other.clone()).await,
            Code::FailedPrecondition
        ),
        "RECEIPT_ALREADY_RECORDED"
    );
    assert_eq!(
        reason(record(&l, &first_id, other).await, Code::FailedPrecondition),
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(abp(&l, c).await, s3("34", "0", "0"));

    let redeem_id = rid();
    let r = redeem_with_id(&l, &redeem_id, c, "4").await.unwrap();
    let retry = redeem_with_id(&l, &redeem_id, c, "4").await.unwrap();
    assert_eq!(retry, r, "the stored answer");
    assert_eq!(abp(&l, c).await, s3("30", "0", "0"), "redeemed once");
    assert_eq!(
        reason(
            redeem_with_id(&l, &redeem_id, c, "5").await,
            Code::FailedPrecondition
        ),
        "IDEMPOTENCY_KEY_REUSED"
    );
    // The same id for another operation is reused too.
    let reused = l
        .client()
        .accrue(pb::AccrueRequest {
            merchant_id: M.into(),
            request_id: redeem_id.clone(),
            customer_id: c.into(),
            grant: Some(grant("4", None)),
            ..Default::default()
        })
        .await;
    assert_eq!(
        reason(reused, Code::FailedPrecondition),
        "IDEMPOTENCY_KEY_REUSED"
    );
    assert_eq!(abp(&l, c).await, s3("30", "0", "0"));
    assert_verified(&l).await;
}

/// Purchase aggregates over windows ending at `as_of`, from receipts recorded at different times.
async fn purchase_aggregates_over_windows(l: TestLedger) {
    let c = "c-agg";
    let t0 = l.clock.now();
    record(
        &l,
        &rid(),
        receipt("rc-a", c, vec![line("1", "p", "100.00", "1", "0", "0")]),
    )
    .await
    .unwrap();
    l.clock.advance(Duration::days(50));
    record(
        &l,
        &rid(),
        receipt("rc-b", c, vec![line("1", "p", "200.00", "1", "0", "0")]),
    )
    .await
    .unwrap();
    l.clock.advance(Duration::days(50));
    record(
        &l,
        &rid(),
        receipt("rc-c", c, vec![line("1", "p", "150.00", "2", "0", "0")]),
    )
    .await
    .unwrap();
    let now = l.clock.now();

    let windows = [
        Span::Months(3),
        Span::Days(30),
        Span::Months(12),
        Span::Days(1),
    ];
    let a = aggregates(&l, c, &windows, None).await;
    assert_eq!(
        (a.lifetime_turnover.as_str(), a.purchase_count),
        ("600.00", 3)
    );
    assert_eq!(instant(&a.first_purchase_at), t0);
    assert_eq!(instant(&a.last_purchase_at), now);
    assert_eq!(
        window(&a, 0),
        ("500.00".into(), 2),
        "3 months: receipts b and c"
    );
    assert_eq!(window(&a, 1), ("300.00".into(), 1), "30 days: receipt c");
    assert_eq!(window(&a, 2), ("600.00".into(), 3), "12 months: all");
    assert_eq!(window(&a, 3), ("300.00".into(), 1), "1 day: receipt c");
    assert_eq!(
        a.windows[0].lookback.unwrap().span,
        Some(Span::Months(3)),
        "windows in request order"
    );

    // Windows ending earlier.
    let earlier = aggregates(
        &l,
        c,
        &[Span::Days(30), Span::Days(61)],
        Some(t0 + Duration::days(60)),
    )
    .await;
    assert_eq!(window(&earlier, 0), ("200.00".into(), 1));
    assert_eq!(window(&earlier, 1), ("300.00".into(), 2));
    assert_eq!(earlier.windows.len(), 2);

    // A partial refund lowers the turnover of the receipt's day.
    refund(&l, "rc-c", "rf-c", &[("1", "1")]).await.unwrap();
    let a = aggregates(&l, c, &[Span::Days(30)], None).await;
    assert_eq!(window(&a, 0), ("150.00".into(), 1));
    assert_eq!(a.lifetime_turnover, "450.00");

    // A snapshot carries the same aggregates with the balance.
    let snap = l
        .client()
        .get_account_snapshot(pb::GetAccountSnapshotRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            lookbacks: vec![Lookback {
                span: Some(Span::Months(3)),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.aggregates.unwrap().windows[0].turnover, "350.00");
    assert_eq!(snap.balance.unwrap().available, "0");
    assert_verified(&l).await;
}

/// Refund shortfall policies: REPORT_SHORTFALL takes back what is available and reports the
/// rest; under ALLOW_NEGATIVE a refund that would pass max_negative_balance is refused.
async fn refund_shortfall_policies(l: TestLedger) {
    let c = "c-shortfall";
    record(
        &l,
        &rid(),
        receipt("rc-sf1", c, vec![line("1", "tv", "500.00", "1", "0", "50")]),
    )
    .await
    .unwrap();
    redeem(&l, c, "40").await.unwrap();
    let f = l
        .client()
        .refund_receipt(pb::RefundReceiptRequest {
            merchant_id: M.into(),
            request_id: rid(),
            receipt_id: "rc-sf1".into(),
            refund_id: "rf-sf1".into(),
            policy: pb::ShortfallPolicy::ReportShortfall as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .refund
        .unwrap();
    assert_eq!(
        f.policy_applied,
        pb::ShortfallPolicy::ReportShortfall as i32
    );
    assert_eq!(
        (
            f.shortfall.as_str(),
            f.shortfall_money.as_str(),
            f.negative_balance_created.as_str()
        ),
        ("40", "40.00", "0")
    );
    assert_eq!(abp(&l, c).await, s3("0", "0", "0"), "never below zero");

    // At most 5 points of debt.
    l.client()
        .update_ledger_settings(pb::UpdateLedgerSettingsRequest {
            merchant_id: M.into(),
            request_id: rid(),
            settings: Some(pb::LedgerSettings {
                max_negative_balance: "5".into(),
                ..Default::default()
            }),
            update_mask: Some(wkt::FieldMask {
                paths: vec!["max_negative_balance".into()],
            }),
        })
        .await
        .unwrap();
    record(
        &l,
        &rid(),
        receipt("rc-sf2", c, vec![line("1", "tv", "500.00", "1", "0", "50")]),
    )
    .await
    .unwrap();
    redeem(&l, c, "40").await.unwrap();
    assert_eq!(
        reason(
            refund(&l, "rc-sf2", "rf-sf2", &[]).await,
            Code::FailedPrecondition
        ),
        "NEGATIVE_BALANCE_NOT_ALLOWED"
    );
    assert_eq!(abp(&l, c).await, s3("10", "0", "0"), "nothing changed");
    assert_eq!(
        get_receipt(&l, "rc-sf2").await.unwrap().refund_state,
        pb::RefundState::None as i32
    );
    accrue(&l, c, grant("36", None)).await.unwrap();
    let f = refund(&l, "rc-sf2", "rf-sf3", &[])
        .await
        .unwrap()
        .refund
        .unwrap();
    assert_eq!(
        f.negative_balance_created, "4",
        "46 taken back, 4 of debt: within the limit"
    );
    assert_eq!(abp(&l, c).await, s3("-4", "0", "0"));
    assert_verified(&l).await;
}

/// A receipt's sale time: at most 5 minutes ahead (TIMESTAMP_IN_FUTURE), at most
/// max_receipt_age (30 days) old (RECEIPT_TOO_OLD); an older sale within the age is counted on
/// its own day.
async fn receipt_sale_time_limits(l: TestLedger) {
    let c = "c-offline";
    let now = l.clock.now();
    let at = |id: &str, t: DateTime<Utc>| {
        let mut r = receipt(id, c, vec![line("1", "p", "10.00", "1", "0", "1")]);
        r.occurred_at = Some(ts(t));
        r
    };
    // Bad input (errors.proto): INVALID_ARGUMENT naming the field in a field violation and in
    // the ErrorInfo metadata.
    let ahead = record(&l, &rid(), at("rc-f", now + Duration::minutes(6)))
        .await
        .expect_err("a sale six minutes ahead is refused");
    assert_eq!(ahead.code(), Code::InvalidArgument, "{ahead:?}");
    let info = ahead.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "TIMESTAMP_IN_FUTURE");
    assert_eq!(
        info.metadata,
        std::collections::HashMap::from([("field".to_owned(), "receipt.occurred_at".to_owned())])
    );
    assert_eq!(violations::<()>(Err(ahead)), vec!["receipt.occurred_at"]);
    assert_eq!(
        reason(
            record(&l, &rid(), at("rc-o", now - Duration::days(31))).await,
            Code::FailedPrecondition
        ),
        "RECEIPT_TOO_OLD"
    );
    record(&l, &rid(), at("rc-skew", now + Duration::minutes(4)))
        .await
        .expect("a little clock skew is fine");
    let old = record(&l, &rid(), at("rc-late", now - Duration::days(20)))
        .await
        .unwrap();
    assert_eq!(
        instant(&old.receipt.unwrap().occurred_at),
        now - Duration::days(20)
    );
    // Windows end at the reference instant: five minutes on, the skewed sale is in the past.
    l.clock.advance(Duration::minutes(5));
    let a = aggregates(&l, c, &[Span::Days(10), Span::Days(25)], None).await;
    assert_eq!(window(&a, 0), ("10.00".into(), 1));
    assert_eq!(window(&a, 1), ("20.00".into(), 2));
    assert_eq!(instant(&a.first_purchase_at), now - Duration::days(20));
    assert_eq!(abp(&l, c).await, s3("2", "0", "0"));
    assert_verified(&l).await;
}

/// Manual adjustments: a positive one is a new lot, a negative one spends soonest-expiring first
/// and refuses to go below zero unless allow_negative; a reason is required.
async fn adjustments(l: TestLedger) {
    let c = "c-adjust";
    let adjust = |amount: &str, reason: &str, allow_negative: bool| pb::AdjustRequest {
        merchant_id: M.into(),
        request_id: rid(),
        customer_id: c.into(),
        amount: amount.into(),
        reason: reason.into(),
        operator: "support-1".into(),
        expires_at: None,
        allow_negative,
    };
    let added = l
        .client()
        .adjust(adjust("20", "goodwill", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.lot.unwrap().kind, LotKind::Adjustment as i32);
    assert_eq!(
        violations(l.client().adjust(adjust("5", "", false)).await),
        vec!["reason"]
    );
    assert_eq!(
        violations(l.client().adjust(adjust("0", "zero", false)).await),
        vec!["amount"]
    );
    assert_eq!(
        reason(
            l.client().adjust(adjust("-30", "fraud", false)).await,
            Code::FailedPrecondition
        ),
        "INSUFFICIENT_POINTS"
    );
    assert_eq!(abp(&l, c).await, s3("20", "0", "0"));
    let removed = l
        .client()
        .adjust(adjust("-30", "fraud", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.consumed.len(), 1);
    assert_eq!(abp(&l, c).await, s3("-10", "0", "0"));
    accrue(&l, c, grant("15", None)).await.unwrap();
    assert_eq!(
        abp(&l, c).await,
        s3("5", "0", "0"),
        "the debt is paid first"
    );
    assert_verified(&l).await;
}

// ---- regressions: bugs found by these tests, fixed in ledger-svc ------------------------------

/// A fully refunded receipt no longer counts as a purchase (PurchaseAggregates.purchase_count
/// and WindowAggregate.purchase_count: "fully refunded ones not counted").
async fn fully_refunded_receipt_is_not_a_purchase(l: TestLedger) {
    let c = "c-agg-refund";
    record(
        &l,
        &rid(),
        receipt("rc-r1", c, vec![line("1", "p", "100.00", "1", "0", "0")]),
    )
    .await
    .unwrap();
    record(
        &l,
        &rid(),
        receipt("rc-r2", c, vec![line("1", "p", "40.00", "1", "0", "0")]),
    )
    .await
    .unwrap();
    refund(&l, "rc-r2", "rf-r2", &[]).await.unwrap();
    let a = aggregates(&l, c, &[Span::Days(30)], None).await;
    assert_eq!(a.lifetime_turnover, "100.00");
    assert_eq!(window(&a, 0).0, "100.00");
    assert_eq!(
        a.purchase_count, 1,
        "lifetime count without the fully refunded receipt"
    );
    assert_eq!(
        window(&a, 0).1,
        1,
        "window count without the fully refunded receipt"
    );
    assert_verified(&l).await;
}

/// A repeated grant key returns the first booking's transaction id (AccrueResponse.transaction_id:
/// "of the first booking if already_granted").
async fn repeated_grant_key_returns_the_first_transaction(l: TestLedger) {
    let c = "c-key";
    let mut g = grant("7", None);
    g.grant_key = "import:2026".into();
    let first = accrue(&l, c, g.clone()).await.unwrap();
    assert!(!first.transaction_id.is_empty());
    let again = accrue(&l, c, g).await.unwrap();
    assert!(again.already_granted);
    assert_eq!(again.lot.unwrap().lot_id, first.lot.unwrap().lot_id);
    assert_eq!(abp(&l, c).await, s3("7", "0", "0"));
    assert_eq!(again.transaction_id, first.transaction_id);
}

/// Points an active hold took from a lot that has since expired expire when the hold is released:
/// the VoidHold answer already shows them gone, as GetBalance does.
async fn points_released_from_an_expired_lot_expire_on_release(l: TestLedger) {
    let c = "c-hold-expiry";
    let now = l.clock.now();
    accrue(&l, c, grant("50", Some(now + Duration::hours(1))))
        .await
        .unwrap();
    let h = reserve(&l, c, "20", 3 * 3600).await.unwrap();
    l.clock.advance(Duration::hours(1) + Duration::seconds(1));
    assert_eq!(process_due(&l).await.expired, 1);
    assert_eq!(
        abp(&l, c).await,
        s3("0", "20", "0"),
        "the held part does not expire while held"
    );
    let voided = void(&l, &h.hold_id).await.unwrap();
    assert_eq!(
        abp(&l, c).await,
        s3("0", "0", "0"),
        "released points of an expired lot are gone"
    );
    let b = voided.balance.unwrap();
    assert_eq!(
        (b.available.as_str(), b.held.as_str()),
        ("0", "0"),
        "the VoidHold answer agrees with GetBalance"
    );
    assert_verified(&l).await;
}

/// CommitHold on a hold past its time-out answers HOLD_EXPIRED and releases it (the hold is
/// EXPIRED and its points are available again without waiting for the due-work pass).
async fn commit_after_time_out_releases_the_hold(l: TestLedger) {
    let c = "c-hold-late";
    accrue(&l, c, grant("50", None)).await.unwrap();
    let h = reserve(&l, c, "20", 60).await.unwrap();
    l.clock.advance(Duration::seconds(61));
    assert_eq!(
        reason(commit(&l, &h.hold_id, "").await, Code::FailedPrecondition),
        "HOLD_EXPIRED"
    );
    assert_eq!(
        get_hold(&l, &h.hold_id).await.state,
        pb::HoldState::Expired as i32
    );
    assert_eq!(abp(&l, c).await, s3("50", "0", "0"));
    assert_verified(&l).await;
}

/// Journal entries name the merchant's system accounts "merchant:<name>" (Entry.account).
async fn journal_accounts_are_named_per_contract(l: TestLedger) {
    let c = "c-journal";
    accrue(&l, c, grant("30", None)).await.unwrap();
    redeem(&l, c, "12").await.unwrap();
    let txs = history(&l, c).await;
    assert_eq!(txs.len(), 2);
    assert_eq!(txs[0].balance_after, "18");
    for t in &txs {
        let sum: i64 = t
            .entries
            .iter()
            .map(|e| e.amount.parse::<i64>().unwrap())
            .sum();
        assert_eq!(sum, 0, "entries of a transaction sum to zero: {t:?}");
        for e in &t.entries {
            assert!(
                e.account == format!("customer:{c}:available")
                    || e.account.starts_with("merchant:"),
                "account names per the contract: {e:?}"
            );
        }
    }
}

/// Transaction.amount is the signed net change of the customer's available + pending points:
/// a redemption of 12 is "-12".
async fn transaction_amount_is_the_net_change(l: TestLedger) {
    let c = "c-net";
    accrue(&l, c, grant("30", None)).await.unwrap();
    redeem(&l, c, "12").await.unwrap();
    let txs = history(&l, c).await;
    let amounts: Vec<&str> = txs.iter().map(|t| t.amount.as_str()).collect();
    assert_eq!(amounts, vec!["-12", "30"], "newest first");
    for t in &txs {
        let net: i64 = t
            .entries
            .iter()
            .filter(|e| e.account.ends_with(":available") || e.account.ends_with(":pending"))
            .map(|e| e.amount.parse::<i64>().unwrap())
            .sum();
        assert_eq!(t.amount.parse::<i64>().unwrap(), net, "{t:?}");
    }
}

/// A refund line with an empty quantity refunds all that remains of the line
/// (RefundLineRequest.quantity: "empty = all that remains of the line").
async fn refund_line_with_empty_quantity_takes_the_rest(l: TestLedger) {
    let c = "c-rest";
    record(
        &l,
        &rid(),
        receipt(
            "rc-rest",
            c,
            vec![
                line("1", "p", "10.00", "3", "0", "9"),
                line("2", "q", "5.00", "1", "0", "1"),
            ],
        ),
    )
    .await
    .unwrap();
    refund(&l, "rc-rest", "rf-1", &[("1", "1")]).await.unwrap();
    let f = refund(&l, "rc-rest", "rf-2", &[("1", "")])
        .await
        .expect("empty quantity = the rest of the line")
        .refund
        .unwrap();
    assert_eq!(
        (f.lines[0].quantity.as_str(), f.points_reversed.as_str()),
        ("2", "6")
    );
    assert!(!f.fully_refunded, "line 2 remains");
    assert_eq!(abp(&l, c).await, s3("1", "0", "0"));
    assert_verified(&l).await;
}

/// Purchase aggregates end at `as_of`: a purchase after it is not counted, even later the same
/// day (GetPurchaseAggregatesRequest.as_of: "purchases after it are not counted").
async fn aggregates_end_at_as_of(l: TestLedger) {
    let c = "c-asof";
    let before = l.clock.now();
    l.clock.advance(Duration::hours(2));
    record(
        &l,
        &rid(),
        receipt("rc-asof", c, vec![line("1", "p", "10.00", "1", "0", "0")]),
    )
    .await
    .unwrap();
    let a = aggregates(&l, c, &[Span::Days(30)], Some(before)).await;
    assert_eq!(
        window(&a, 0),
        ("0.00".into(), 0),
        "the purchase two hours after as_of is not in the window"
    );
}

// ---- the tests: each scenario on both backends --------------------------------------------------

macro_rules! on_both_backends {
    ($($(#[$attr:meta])* $scenario:ident),* $(,)?) => {
        mod sqlite {
            $( $(#[$attr])* #[tokio::test] async fn $scenario() {
                super::$scenario(super::TestLedger::start(super::Backend::Sqlite).await).await;
            } )*
        }
        mod postgres {
            $( $(#[$attr])* #[tokio::test] async fn $scenario() {
                super::$scenario(super::TestLedger::start(super::Backend::PostgresRedis).await).await;
            } )*
        }
    };
}

on_both_backends!(
    accrue_then_redeem_soonest_expiring_first,
    insufficient_points,
    bad_input_is_refused,
    start_bonus_is_granted_once_and_expires,
    pending_points_activate,
    holds,
    receipt_and_refunds_by_lines,
    refund_after_spending_leaves_a_debt,
    receipt_and_request_idempotency,
    purchase_aggregates_over_windows,
    refund_shortfall_policies,
    receipt_sale_time_limits,
    adjustments,
    refund_line_with_empty_quantity_takes_the_rest,
    aggregates_end_at_as_of,
    fully_refunded_receipt_is_not_a_purchase,
    repeated_grant_key_returns_the_first_transaction,
    points_released_from_an_expired_lot_expire_on_release,
    commit_after_time_out_releases_the_hold,
    journal_accounts_are_named_per_contract,
    transaction_amount_is_the_net_change,
);
