//! The ledger's lists page by position (keyset), on SQLite and on PostgreSQL: a receipt sold,
//! or a lot expiring sooner, between two pages neither repeats a row on the next page nor skips
//! one, as an offset would.

use chrono::Duration;
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, BasketLine, LotKind};
use kopilka_runtime::timestamps;
use kopilka_tests::ledger::{epoch, TestLedger};
use kopilka_tests::Backend;

const M: &str = "m-pages";
const C: &str = "c-pages";

fn receipt(id: &str, minutes_ago: i64) -> pb::RecordReceiptRequest {
    pb::RecordReceiptRequest {
        merchant_id: M.into(),
        request_id: format!("rec-{id}"),
        receipt: Some(pb::ReceiptInput {
            receipt_id: id.into(),
            customer_id: C.into(),
            occurred_at: Some(timestamps::to_proto(
                epoch() - Duration::minutes(minutes_ago),
            )),
            lines: vec![pb::ReceiptLine {
                line: Some(BasketLine {
                    line_id: "1".into(),
                    product_id: "coffee".into(),
                    unit_price: "10.00".into(),
                    quantity: "1".into(),
                    ..Default::default()
                }),
                accrual_points: "1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn grant(id: &str, amount: &str, days: i64) -> pb::AccrueRequest {
    pb::AccrueRequest {
        merchant_id: M.into(),
        request_id: format!("grant-{id}"),
        customer_id: C.into(),
        grant: Some(types::PointsGrant {
            amount: amount.into(),
            kind: LotKind::Purchase as i32,
            expires_at: Some(timestamps::to_proto(epoch() + Duration::days(days))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn pages_are_positions(l: TestLedger) {
    let mut client = l.client();
    for (id, ago) in [("r-1", 30), ("r-2", 20), ("r-3", 10)] {
        client
            .record_receipt(receipt(id, ago))
            .await
            .expect("recorded");
    }
    let list = |page_token: String| pb::ListReceiptsRequest {
        merchant_id: M.into(),
        customer_id: C.into(),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let first = client
        .list_receipts(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    let ids = |page: &pb::ListReceiptsResponse| -> Vec<String> {
        page.receipts.iter().map(|r| r.receipt_id.clone()).collect()
    };
    assert_eq!(ids(&first), ["r-3", "r-2"]);
    client
        .record_receipt(receipt("r-4", 1))
        .await
        .expect("a newer sale");
    let second = client
        .list_receipts(list(first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&second), ["r-1"]);
    assert_eq!(second.next_page_token, "");

    for (id, amount, days) in [("a", "5", 30), ("b", "6", 40)] {
        client
            .accrue(grant(id, amount, days))
            .await
            .expect("granted");
    }
    let lots = |page_token: String| pb::ListLotsRequest {
        merchant_id: M.into(),
        customer_id: C.into(),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let amounts = |page: &pb::ListLotsResponse| -> Vec<String> {
        page.lots.iter().map(|l| l.amount.clone()).collect()
    };
    let first = client
        .list_lots(lots(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amounts(&first), ["5", "6"]);
    client.accrue(grant("c", "7", 1)).await.expect("sooner");
    let second = client
        .list_lots(lots(first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    // The receipts' 1-point lots never expire: they come after every dated one.
    assert_eq!(amounts(&second), ["1", "1"]);
    l.stop().await;
}

#[tokio::test]
async fn ledger_lists_page_by_position_on_sqlite() {
    pages_are_positions(TestLedger::start(Backend::Sqlite).await).await;
}

#[tokio::test]
async fn ledger_lists_page_by_position_on_postgres() {
    pages_are_positions(TestLedger::start(Backend::PostgresRedis).await).await;
}
