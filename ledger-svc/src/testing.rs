//! Unit-test support: a ledger on an in-memory SQLite database with a manual clock, request
//! builders, and the code, reason and metadata a refused call answers with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, BasketLine, LotKind};
use kopilka_runtime::status::{field_violations_of, ERROR_DOMAIN};
use kopilka_runtime::Db;
use sqlx::sqlite::SqlitePoolOptions;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::domain::clock::ManualClock;
use crate::error::Error;
use crate::ledger::Ledger;

pub const M: &str = "m-test";

/// A ledger on a fresh in-memory database (one connection, so one database).
pub async fn ledger() -> (Ledger, ManualClock) {
    ledger_with_acquire_timeout(Duration::from_secs(10)).await
}

/// Like [`ledger`], with the pool's acquire timeout.
pub async fn ledger_with_acquire_timeout(timeout: Duration) -> (Ledger, ManualClock) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .expect("in-memory SQLite");
    crate::MIGRATIONS
        .sqlite
        .run(&pool)
        .await
        .expect("migrations");
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap());
    (
        Ledger::new(Db::Sqlite(pool), Arc::new(clock.clone())),
        clock,
    )
}

/// What a refusal says on the wire: code, `ErrorInfo.reason`, `ErrorInfo.metadata`.
pub type Answer = (Code, String, BTreeMap<String, String>);

/// The answer of a failed call (its `ErrorInfo.domain` checked); panics on success.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> Answer {
    answer_of(&Status::from(result.expect_err("the call must fail")))
}

fn answer_of(status: &Status) -> Answer {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, ERROR_DOMAIN);
    (
        status.code(),
        info.reason,
        info.metadata.into_iter().collect(),
    )
}

/// The answer of a call refused as bad input, with the field paths of its `BadRequest` in
/// order; panics on success or on a refusal without field violations.
pub fn invalid<T: std::fmt::Debug>(result: Result<T, Error>) -> Invalid {
    let status = Status::from(result.expect_err("the call must fail"));
    let fields: Vec<String> = field_violations_of(&status)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert!(!fields.is_empty(), "no field violations in {status:?}");
    (answer_of(&status), fields)
}

/// What [`invalid`] returns: the answer and the field paths.
pub type Invalid = (Answer, Vec<String>);

/// Asserts each `(case, got, want, field paths)` of calls refused as bad input.
pub fn check_invalid(cases: Vec<(&str, Invalid, Answer, &[&str])>) {
    for (case, (got, got_fields), want, want_fields) in cases {
        assert_eq!(got, want, "{case}");
        assert_eq!(got_fields, want_fields, "{case}: field paths");
    }
}

/// INVALID_ARGUMENT LIMIT_EXCEEDED of `field` above `limit`.
pub fn limit_exceeded(field: &str, limit: &str) -> Answer {
    answer(
        Code::InvalidArgument,
        "LIMIT_EXCEEDED",
        &[("field", field), ("limit", limit)],
    )
}

/// An expected [`Answer`].
pub fn answer(code: Code, reason: &str, metadata: &[(&str, &str)]) -> Answer {
    let metadata = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    (code, reason.to_owned(), metadata)
}

/// Asserts each `(case, got, want)`.
pub fn check(cases: Vec<(&str, Answer, Answer)>) {
    for (case, got, want) in cases {
        assert_eq!(got, want, "{case}");
    }
}

pub fn rid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("req-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn ts(t: chrono::DateTime<Utc>) -> pbjson_types::Timestamp {
    crate::convert::timestamp(t)
}

pub async fn accrue(l: &Ledger, merchant: &str, customer: &str, amount: &str) {
    l.accrue_points(&pb::AccrueRequest {
        merchant_id: merchant.into(),
        request_id: rid(),
        customer_id: customer.into(),
        grant: Some(types::PointsGrant {
            amount: amount.into(),
            kind: LotKind::Purchase as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("accrue");
}

pub async fn reserve(l: &Ledger, customer: &str, amount: &str) -> Result<pb::Hold, Error> {
    let r = l
        .reserve_points(&pb::ReserveRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: customer.into(),
            amount: amount.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.hold.expect("hold"))
}

pub async fn void(l: &Ledger, hold_id: &str) -> Result<pb::VoidHoldResponse, Error> {
    l.void(&pb::VoidHoldRequest {
        merchant_id: M.into(),
        request_id: rid(),
        hold_id: hold_id.into(),
    })
    .await
}

/// Changes settings fields (`paths`) of `merchant`.
pub async fn set(
    l: &Ledger,
    merchant: &str,
    settings: pb::LedgerSettings,
    paths: &[&str],
) -> Result<pb::UpdateLedgerSettingsResponse, Error> {
    l.set_settings(&pb::UpdateLedgerSettingsRequest {
        merchant_id: merchant.into(),
        request_id: rid(),
        settings: Some(settings),
        update_mask: Some(pbjson_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    })
    .await
}

pub fn line(
    id: &str,
    unit_price: &str,
    quantity: &str,
    redeem: &str,
    accrual: &str,
) -> pb::ReceiptLine {
    pb::ReceiptLine {
        line: Some(BasketLine {
            line_id: id.into(),
            product_id: format!("p-{id}"),
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

/// A receipt of `customer` (redeem_points = the lines' sum).
pub fn receipt(id: &str, customer: &str, lines: Vec<pb::ReceiptLine>) -> pb::ReceiptInput {
    let redeem: i64 = lines
        .iter()
        .map(|l| l.redeem_points.parse::<i64>().unwrap_or(0))
        .sum();
    pb::ReceiptInput {
        receipt_id: id.into(),
        customer_id: customer.into(),
        lines,
        redeem_points: redeem.to_string(),
        ..Default::default()
    }
}

pub async fn record(
    l: &Ledger,
    input: pb::ReceiptInput,
) -> Result<pb::RecordReceiptResponse, Error> {
    l.record(&pb::RecordReceiptRequest {
        merchant_id: M.into(),
        request_id: rid(),
        receipt: Some(input),
    })
    .await
}

/// Refunds `(line_id, quantity)` pairs ("" = what remains) of a receipt.
pub async fn refund(
    l: &Ledger,
    request_id: &str,
    receipt_id: &str,
    refund_id: &str,
    lines: &[(&str, &str)],
) -> Result<pb::RefundReceiptResponse, Error> {
    l.refund(&pb::RefundReceiptRequest {
        merchant_id: M.into(),
        request_id: request_id.into(),
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
}
