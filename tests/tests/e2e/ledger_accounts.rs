//! Merging accounts, stamp cards, receipt listing and customer activity (segments, RFM),
//! through gRPC on SQLite and PostgreSQL.

use kopilka_proto::ledger as pb;
use kopilka_proto::types::{BasketLine, PointsGrant, StampChange};
use kopilka_runtime::status::reason_of;
use kopilka_tests::{ledger::TestLedger, Backend};

const M: &str = "m-accounts";

fn line(id: &str, product: &str, price: &str, accrual: &str, redeem: &str) -> pb::ReceiptLine {
    pb::ReceiptLine {
        line: Some(BasketLine {
            line_id: id.into(),
            product_id: product.into(),
            category_ids: vec!["food".into()],
            unit_price: price.into(),
            quantity: "1".into(),
            ..Default::default()
        }),
        accrual_points: accrual.into(),
        redeem_points: redeem.into(),
        redeem_money: redeem.into(),
        ..Default::default()
    }
}

async fn accrue(l: &TestLedger, request: &str, customer: &str, amount: &str, key: &str) {
    l.client()
        .accrue(pb::AccrueRequest {
            merchant_id: M.into(),
            request_id: request.into(),
            customer_id: customer.into(),
            grant: Some(PointsGrant {
                amount: amount.into(),
                grant_key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn record(
    l: &TestLedger,
    request: &str,
    receipt: pb::ReceiptInput,
) -> pb::RecordReceiptResponse {
    l.client()
        .record_receipt(pb::RecordReceiptRequest {
            merchant_id: M.into(),
            request_id: request.into(),
            receipt: Some(receipt),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn available(l: &TestLedger, customer: &str) -> String {
    l.client()
        .get_balance(pb::GetBalanceRequest {
            merchant_id: M.into(),
            customer_id: customer.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .balance
        .unwrap()
        .available
}

async fn verified(l: &TestLedger) {
    let v = l
        .client()
        .verify(pb::VerifyRequest {
            merchant_id: M.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{:?}", v.differences);
}

async fn merge_moves_everything_once(l: TestLedger) {
    accrue(&l, "a1", "keep", "100", "registration").await;
    accrue(&l, "a2", "dup", "30", "registration").await;
    record(
        &l,
        "r1",
        pb::ReceiptInput {
            receipt_id: "dup-rc".into(),
            customer_id: "dup".into(),
            lines: vec![line("1", "coffee", "200.00", "6", "10")],
            ..Default::default()
        },
    )
    .await;
    let merge = |request: &'static str| {
        let mut c = l.client();
        async move {
            c.merge_accounts(pb::MergeAccountsRequest {
                merchant_id: M.into(),
                request_id: request.into(),
                source_customer_id: "dup".into(),
                target_customer_id: "keep".into(),
            })
            .await
        }
    };
    let first = merge("m1").await.unwrap().into_inner();
    assert!(first.merged_now);
    assert_eq!(
        first.balance.unwrap().available,
        "126",
        "100 + (30 - 10 + 6)"
    );
    assert_eq!((first.lots_moved, first.receipts_moved), (2, 1));
    let again = merge("m2").await.unwrap().into_inner();
    assert!(!again.merged_now, "a repeated merge changes nothing");
    assert_eq!(available(&l, "dup").await, "0");
    assert_eq!(available(&l, "keep").await, "126");
    // The start bonus key stays once-only for the surviving customer.
    accrue(&l, "a3", "keep", "100", "registration").await;
    assert_eq!(available(&l, "keep").await, "126");
    let listed = l
        .client()
        .list_receipts(pb::ListReceiptsRequest {
            merchant_id: M.into(),
            customer_id: "keep".into(),
            include_lines: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.receipts.len(), 1);
    assert_eq!(listed.receipts[0].lines.len(), 1);
    let other = l
        .client()
        .merge_accounts(pb::MergeAccountsRequest {
            merchant_id: M.into(),
            request_id: "m3".into(),
            source_customer_id: "dup".into(),
            target_customer_id: "third".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&other).as_deref(), Some("MERGE_CONFLICT"));
    verified(&l).await;
}

async fn stamps_are_counted_and_returned_with_the_receipt(l: TestLedger) {
    let stamps = |earned: u32, consumed: u32| {
        vec![StampChange {
            stamp_card_id: "pizza".into(),
            earned,
            consumed,
            balance_after: 0,
        }]
    };
    let first = record(
        &l,
        "s1",
        pb::ReceiptInput {
            receipt_id: "s-rc1".into(),
            customer_id: "eater".into(),
            lines: vec![line("1", "pizza", "500.00", "0", "0")],
            stamp_changes: stamps(5, 0),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.receipt.unwrap().stamp_changes[0].balance_after, 5);
    let second = record(
        &l,
        "s2",
        pb::ReceiptInput {
            receipt_id: "s-rc2".into(),
            customer_id: "eater".into(),
            lines: vec![line("1", "pizza", "500.00", "0", "0")],
            stamp_changes: stamps(1, 6),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        second.balance.unwrap().stamps.len(),
        0,
        "the 6th pizza used the card up"
    );
    let short = l
        .client()
        .record_receipt(pb::RecordReceiptRequest {
            merchant_id: M.into(),
            request_id: "s3".into(),
            receipt: Some(pb::ReceiptInput {
                receipt_id: "s-rc3".into(),
                customer_id: "eater".into(),
                lines: vec![line("1", "pizza", "500.00", "0", "0")],
                stamp_changes: stamps(0, 1),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&short).as_deref(), Some("INSUFFICIENT_STAMPS"));
    // Returning the first receipt takes its five stamps back (the card stays at zero).
    let refund = l
        .client()
        .refund_receipt(pb::RefundReceiptRequest {
            merchant_id: M.into(),
            request_id: "s4".into(),
            receipt_id: "s-rc1".into(),
            refund_id: "f1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.refund.unwrap().stamp_changes[0].consumed, 5);
    verified(&l).await;
}

async fn activity_finds_segments(l: TestLedger) {
    for (i, (customer, product, price)) in [
        ("ann", "nappies", "900.00"),
        ("bob", "coffee", "100.00"),
        ("ann", "babyfood", "300.00"),
    ]
    .into_iter()
    .enumerate()
    {
        record(
            &l,
            &format!("act{i}"),
            pb::ReceiptInput {
                receipt_id: format!("act-rc{i}"),
                customer_id: customer.into(),
                store_id: if customer == "bob" { "kiosk" } else { "mall" }.into(),
                lines: vec![line("1", product, price, "0", "0")],
                ..Default::default()
            },
        )
        .await;
    }
    let find = |filter: pb::ActivityFilter| {
        let mut c = l.client();
        async move {
            c.list_customer_activity(pb::ListCustomerActivityRequest {
                merchant_id: M.into(),
                filter: Some(filter),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .customers
        }
    };
    let nappies = find(pb::ActivityFilter {
        bought_product_ids: vec!["nappies".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(
        nappies
            .iter()
            .map(|c| c.customer_id.as_str())
            .collect::<Vec<_>>(),
        ["ann"]
    );
    assert_eq!(nappies[0].lifetime_turnover, "1200.00");
    assert_eq!(nappies[0].purchase_count, 2);
    let everyone = find(pb::ActivityFilter::default()).await;
    let ann = everyone.iter().find(|c| c.customer_id == "ann").unwrap();
    let bob = everyone.iter().find(|c| c.customer_id == "bob").unwrap();
    let (a, b) = (ann.rfm.unwrap(), bob.rfm.unwrap());
    assert!(
        a.monetary > b.monetary && a.frequency > b.frequency,
        "{a:?} vs {b:?}"
    );
    let top = find(pb::ActivityFilter {
        min_purchase_count: 2,
        ..Default::default()
    })
    .await;
    let at_store = find(pb::ActivityFilter {
        store_ids: vec!["kiosk".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(
        at_store
            .iter()
            .map(|c| c.customer_id.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    assert_eq!(top.len(), 1);
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod sqlite { use super::*; $( #[tokio::test] async fn $name() { super::$name(TestLedger::start(Backend::Sqlite).await).await } )* }
        mod postgres { use super::*; $( #[tokio::test] async fn $name() { super::$name(TestLedger::start(Backend::PostgresRedis).await).await } )* }
    };
}

on_both!(
    merge_moves_everything_once,
    stamps_are_counted_and_returned_with_the_receipt,
    activity_finds_segments
);

mod totals {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use kopilka_tests::ledger::epoch;

    fn ts(t: chrono::DateTime<Utc>) -> pbjson_types::Timestamp {
        pbjson_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        }
    }

    /// Daily buckets in the merchant's time zone, and a store filter (L6).
    async fn totals_by_day_and_store(l: TestLedger) {
        for (i, store) in ["north", "south", "north"].into_iter().enumerate() {
            record(
                &l,
                &format!("t{i}"),
                pb::ReceiptInput {
                    receipt_id: format!("t-rc{i}"),
                    customer_id: "buyer".into(),
                    store_id: store.into(),
                    lines: vec![line("1", "tea", "100.00", "5", "0")],
                    ..Default::default()
                },
            )
            .await;
            l.clock.advance(Duration::days(1));
        }
        let start = Utc.from_utc_datetime(&(epoch().date_naive().and_hms_opt(0, 0, 0).unwrap()))
            - Duration::hours(3);
        let totals = |store: &'static str, granularity: pb::Granularity| {
            let mut c = l.client();
            async move {
                c.get_merchant_totals(pb::GetMerchantTotalsRequest {
                    merchant_id: M.into(),
                    period: Some(kopilka_proto::types::Period {
                        start: Some(ts(start)),
                        end: Some(ts(start + Duration::days(3))),
                    }),
                    granularity: granularity as i32,
                    time_zone: "Europe/Moscow".into(),
                    store_id: store.into(),
                })
                .await
                .unwrap()
                .into_inner()
            }
        };
        let daily = totals("", pb::Granularity::Day).await;
        assert_eq!(daily.buckets.len(), 3);
        assert!(
            daily
                .buckets
                .iter()
                .all(|b| b.receipts == 1 && b.points_accrued == "5"),
            "{:?}",
            daily.buckets
        );
        let north = totals("north", pb::Granularity::Total).await;
        assert_eq!(
            (
                north.buckets[0].receipts,
                north.buckets[0].turnover.as_str(),
                north.buckets[0].points_accrued.as_str()
            ),
            (2, "200.00", "10")
        );
        assert_eq!(north.outstanding_points, "15");
    }

    on_both!(totals_by_day_and_store);
}
