//! Concurrent writers on one customer never spend the same points twice, concurrent duplicates of
//! a request perform it once, and concurrent refunds of one receipt refund it once — on
//! PostgreSQL (row locks) and, for the redemptions, on SQLite (one writer; writers queue, never
//! "database is locked").

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, BasketLine, LotKind};
use kopilka_runtime::status::reason_of;
use kopilka_tests::ledger::TestLedger;
use kopilka_tests::Backend;
use ledger_svc::domain::clock::Clock;
use tokio::task::JoinSet;
use tonic::{Code, Status};

const M: &str = "m-conc";

async fn accrue(l: &TestLedger, customer: &str, amount: &str) {
    l.client()
        .accrue(pb::AccrueRequest {
            merchant_id: M.into(),
            request_id: format!("seed-{customer}-{amount}"),
            customer_id: customer.into(),
            grant: Some(types::PointsGrant {
                amount: amount.into(),
                kind: LotKind::Purchase as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("Accrue");
}

fn redeem_request(request_id: String, customer: &str, amount: &str) -> pb::RedeemRequest {
    pb::RedeemRequest {
        merchant_id: M.into(),
        request_id,
        customer_id: customer.into(),
        amount: amount.into(),
        ..Default::default()
    }
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

async fn assert_verified(l: &TestLedger) {
    let v = l
        .client()
        .verify(pb::VerifyRequest {
            merchant_id: M.into(),
            ..Default::default()
        })
        .await
        .expect("Verify")
        .into_inner();
    assert!(v.ok, "Verify found differences: {:?}", v.differences);
}

/// Counts successes and failures by reason; panics on anything but OK or FAILED_PRECONDITION.
fn tally<T>(results: &[Result<T, Status>]) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut reasons = Vec::new();
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(
                    s.code(),
                    Code::FailedPrecondition,
                    "unexpected failure: {s:?}"
                );
                reasons.push(reason_of(s).unwrap_or_default());
            }
        }
    }
    (ok, reasons)
}

async fn join_all<T: Send + 'static>(mut set: JoinSet<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("task"));
    }
    out
}

/// 64 concurrent redemptions of 1 point on a balance of 10: exactly 10 succeed.
async fn concurrent_redemptions_never_overspend(l: TestLedger) {
    let c = "c-race";
    accrue(&l, c, "10").await;
    let mut set = JoinSet::new();
    for i in 0..64 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .redeem(redeem_request(format!("race-{i}"), c, "1"))
                .await
        });
    }
    let results = join_all(set).await;
    let (ok, reasons) = tally(&results);
    assert_eq!(ok, 10, "exactly the balance is spent: {reasons:?}");
    assert_eq!(reasons.len(), 54);
    assert!(
        reasons.iter().all(|r| r == "INSUFFICIENT_POINTS"),
        "{reasons:?}"
    );
    let b = balance(&l, c).await;
    assert_eq!((b.available.as_str(), b.held.as_str()), ("0", "0"));
    assert_verified(&l).await;
}

#[tokio::test]
async fn concurrent_redemptions_never_overspend_on_postgres() {
    concurrent_redemptions_never_overspend(TestLedger::start(Backend::PostgresRedis).await).await;
}

#[tokio::test]
async fn concurrent_redemptions_never_overspend_on_sqlite() {
    concurrent_redemptions_never_overspend(TestLedger::start(Backend::Sqlite).await).await;
}

/// 100 concurrent copies of one Redeem (one request_id, one payload): all answer the same
/// transaction and the balance drops once.
async fn concurrent_duplicates_apply_once(l: TestLedger) {
    let c = "c-dup";
    accrue(&l, c, "50").await;
    let mut set = JoinSet::new();
    for _ in 0..100 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .redeem(redeem_request("the-one".into(), c, "7"))
                .await
        });
    }
    let results = join_all(set).await;
    let answers: Vec<pb::RedeemResponse> = results
        .into_iter()
        .map(|r| r.expect("every duplicate succeeds").into_inner())
        .collect();
    let first = &answers[0];
    assert!(!first.transaction_id.is_empty());
    for a in &answers {
        assert_eq!(a, first, "every duplicate gets the first answer");
    }
    assert_eq!(balance(&l, c).await.available, "43", "redeemed once");
    let history = l
        .client()
        .list_history(pb::ListHistoryRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            kinds: vec![pb::TransactionKind::Redemption as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.transactions.len(), 1);
    assert_verified(&l).await;
}

#[tokio::test]
async fn concurrent_duplicates_apply_once_on_postgres() {
    concurrent_duplicates_apply_once(TestLedger::start(Backend::PostgresRedis).await).await;
}

#[tokio::test]
async fn concurrent_duplicates_apply_once_on_sqlite() {
    concurrent_duplicates_apply_once(TestLedger::start(Backend::Sqlite).await).await;
}

fn receipt_redeeming(
    id: &str,
    customer: &str,
    redeem: &str,
    accrual: &str,
    lines: usize,
) -> pb::ReceiptInput {
    pb::ReceiptInput {
        receipt_id: id.into(),
        customer_id: customer.into(),
        store_id: "s1".into(),
        currency: "RUB".into(),
        lines: (1..=lines)
            .map(|i| pb::ReceiptLine {
                line: Some(BasketLine {
                    line_id: i.to_string(),
                    product_id: format!("p{i}"),
                    unit_price: "10.00".into(),
                    quantity: "1".into(),
                    ..Default::default()
                }),
                redeem_points: if i == 1 { redeem.into() } else { "0".into() },
                redeem_money: if i == 1 { redeem.into() } else { "0".into() },
                accrual_points: accrual.into(),
                ..Default::default()
            })
            .collect(),
        redeem_points: redeem.into(),
        ..Default::default()
    }
}

/// 32 concurrent receipts each redeeming 3 points on a balance of 30: 10 are recorded, the rest
/// refused with INSUFFICIENT_POINTS, and the balance never goes below zero.
#[tokio::test]
async fn concurrent_receipts_never_overspend_on_postgres() {
    let l = TestLedger::start(Backend::PostgresRedis).await;
    let c = "c-checkout";
    accrue(&l, c, "30").await;
    let mut set = JoinSet::new();
    for i in 0..32 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .record_receipt(pb::RecordReceiptRequest {
                    merchant_id: M.into(),
                    request_id: format!("rr-{i}"),
                    receipt: Some(receipt_redeeming(&format!("rc-{i}"), c, "3", "0", 1)),
                })
                .await
        });
    }
    let results = join_all(set).await;
    let (ok, reasons) = tally(&results);
    assert_eq!(ok, 10, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r == "INSUFFICIENT_POINTS"),
        "{reasons:?}"
    );
    for r in results.iter().flatten() {
        let available: i64 = r
            .get_ref()
            .balance
            .as_ref()
            .unwrap()
            .available
            .parse()
            .unwrap();
        assert!(
            available >= 0,
            "the balance never goes below zero: {available}"
        );
    }
    let b = balance(&l, c).await;
    assert_eq!((b.available.as_str(), b.held.as_str()), ("0", "0"));
    assert_verified(&l).await;
}

async fn turnover(l: &TestLedger, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let totals = l
        .client()
        .get_merchant_totals(pb::GetMerchantTotalsRequest {
            merchant_id: M.into(),
            period: Some(types::Period {
                start: Some(kopilka_proto::wkt::Timestamp {
                    seconds: from.timestamp(),
                    nanos: 0,
                }),
                end: Some(kopilka_proto::wkt::Timestamp {
                    seconds: to.timestamp(),
                    nanos: 0,
                }),
            }),
            ..Default::default()
        })
        .await
        .expect("GetMerchantTotals")
        .into_inner();
    totals.buckets[0].turnover.clone()
}

/// Concurrent refunds of one receipt: several "refund everything" with different refund ids
/// refund it once (the others are RECEIPT_ALREADY_REFUNDED); concurrent refunds of its lines all
/// count in the receipt's refunded amount.
#[tokio::test]
async fn concurrent_refunds_refund_once_on_postgres() {
    let l = TestLedger::start(Backend::PostgresRedis).await;
    let c = "c-refunds";
    let now = l.clock.now();
    accrue(&l, c, "100").await;
    for (receipt_id, lines) in [("rc-all", 1), ("rc-lines", 8)] {
        l.client()
            .record_receipt(pb::RecordReceiptRequest {
                merchant_id: M.into(),
                request_id: format!("rec-{receipt_id}"),
                receipt: Some(receipt_redeeming(receipt_id, c, "2", "1", lines)),
            })
            .await
            .expect("RecordReceipt");
    }
    // 8 × "refund what remains" of rc-all.
    let mut set = JoinSet::new();
    for i in 0..8 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .refund_receipt(pb::RefundReceiptRequest {
                    merchant_id: M.into(),
                    request_id: format!("rf-all-{i}"),
                    receipt_id: "rc-all".into(),
                    refund_id: format!("return-{i}"),
                    ..Default::default()
                })
                .await
        });
    }
    let (ok, reasons) = tally(&join_all(set).await);
    assert_eq!(
        ok, 1,
        "one refund; the others find it refunded: {reasons:?}"
    );
    assert!(
        reasons.iter().all(|r| r == "RECEIPT_ALREADY_REFUNDED"),
        "{reasons:?}"
    );
    // 8 lines of rc-lines refunded one per request, concurrently.
    let mut set = JoinSet::new();
    for i in 1..=8 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .refund_receipt(pb::RefundReceiptRequest {
                    merchant_id: M.into(),
                    request_id: format!("rf-line-{i}"),
                    receipt_id: "rc-lines".into(),
                    refund_id: format!("line-return-{i}"),
                    lines: vec![pb::RefundLineRequest {
                        line_id: i.to_string(),
                        quantity: "1".into(),
                    }],
                    ..Default::default()
                })
                .await
        });
    }
    let (ok, reasons) = tally(&join_all(set).await);
    assert_eq!(ok, 8, "{reasons:?}");
    let receipt = l
        .client()
        .get_receipt(pb::GetReceiptRequest {
            merchant_id: M.into(),
            receipt_id: "rc-lines".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(receipt.refund_state, pb::RefundState::Full as i32);
    assert_eq!(
        turnover(&l, now - Duration::days(1), now + Duration::days(1)).await,
        "0.00",
        "both receipts are fully refunded"
    );
    assert_eq!(
        balance(&l, c).await.available,
        "100",
        "everything undone once"
    );
    assert_verified(&l).await;
}

/// Concurrent copies of one receipt under different request ids book it once; concurrent gifts
/// with one grant key book one lot.
#[tokio::test]
async fn concurrent_same_receipt_and_same_grant_key_book_once_on_postgres() {
    let l = TestLedger::start(Backend::PostgresRedis).await;
    let c = "c-once";
    accrue(&l, c, "10").await;
    let mut set = JoinSet::new();
    for i in 0..16 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .record_receipt(pb::RecordReceiptRequest {
                    merchant_id: M.into(),
                    request_id: format!("copy-{i}"),
                    receipt: Some(receipt_redeeming("rc-once", c, "4", "9", 1)),
                })
                .await
        });
    }
    let answers: Vec<pb::RecordReceiptResponse> = join_all(set)
        .await
        .into_iter()
        .map(|r| r.expect("every copy succeeds").into_inner())
        .collect();
    assert_eq!(
        answers.iter().filter(|a| !a.already_recorded).count(),
        1,
        "booked once"
    );
    let transaction_ids: std::collections::BTreeSet<&str> =
        answers.iter().map(|a| a.transaction_id.as_str()).collect();
    assert_eq!(transaction_ids.len(), 1, "{transaction_ids:?}");
    assert_eq!(balance(&l, c).await.available, "15", "10 - 4 + 9");

    let mut set = JoinSet::new();
    for i in 0..16 {
        let mut client = l.client();
        set.spawn(async move {
            client
                .grant_gift(pb::GrantGiftRequest {
                    merchant_id: M.into(),
                    request_id: format!("gift-{i}"),
                    customer_id: c.into(),
                    grant: Some(types::PointsGrant {
                        amount: "100".into(),
                        kind: LotKind::Gift as i32,
                        grant_key: "registration".into(),
                        ..Default::default()
                    }),
                    action: types::ActionKind::Registration as i32,
                    ..Default::default()
                })
                .await
        });
    }
    let gifts: Vec<pb::GrantGiftResponse> = join_all(set)
        .await
        .into_iter()
        .map(|r| r.expect("every grant succeeds").into_inner())
        .collect();
    assert_eq!(gifts.iter().filter(|g| !g.already_granted).count(), 1);
    let lot_ids: std::collections::BTreeSet<&str> = gifts
        .iter()
        .map(|g| g.lot.as_ref().unwrap().lot_id.as_str())
        .collect();
    assert_eq!(lot_ids.len(), 1);
    assert_eq!(balance(&l, c).await.available, "115");
    assert_verified(&l).await;
}
