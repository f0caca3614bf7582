//! Receipts and refunds: the part of the ledger a checkout touches.

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, event::Payload, LotKind};
use kopilka_runtime::status::Refusal;
use kopilka_runtime::validate::Violations;
use prost::Message;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::convert::{self, opt_instant, timestamp};
use crate::domain::amounts::Sign;
use crate::domain::book::{Account, NewLot};
use crate::domain::split::{cumulative, proportional};
use crate::error::Error;
use crate::ledger::{
    book_error, day_of, digest, hold_exceeded, hold_finalized, hold_not_found, hold_state, new_id,
    parse_into, tx_kind, Ledger, MAX_CLOCK_SKEW, MAX_ID, MAX_LINES, MAX_TEXT,
};
use crate::settings::Settings;
use crate::store::{LedgerTx, LineRefunded, ReceiptRow, SoldLine};

/// Refund states (values of `kopilka.ledger.v1.RefundState`).
pub mod refund_state {
    pub const NONE: i32 = 1;
    pub const PARTIAL: i32 = 2;
    pub const FULL: i32 = 3;
}

const QUANTITY_SCALE: u32 = 3;
/// Longest `ReceiptInput.caller_digest`, in bytes.
const MAX_CALLER_DIGEST: usize = 64;

/// One validated receipt line.
struct Line {
    proto: pb::ReceiptLine,
    gross: Decimal,
    discount: Decimal,
    redeem: Decimal,
    accrual: Decimal,
}

/// RECEIPT_NOT_FOUND.
pub(crate) fn receipt_not_found(receipt_id: &str) -> Error {
    Refusal::not_found(
        "RECEIPT_NOT_FOUND",
        format!("receipt `{receipt_id}` not found"),
    )
    .with("receipt_id", receipt_id)
    .into()
}

/// A duration as ISO 8601 in hours, minutes and seconds ("PT720H", "PT1H30M", "PT0.5S").
pub(crate) fn iso_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = "PT".to_owned();
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push_str(&format!("{sec}.{}S", frac.trim_end_matches('0')));
    } else if sec > 0 || out.len() == 2 {
        out.push_str(&format!("{sec}S"));
    }
    out
}

/// An optional amount >= 0; empty is zero.
fn opt_amount(field: &str, value: &str, scale: u32, v: &mut Violations) -> Decimal {
    v.decimal(field, value, scale, Sign::NonNegative, false)
        .unwrap_or(Decimal::ZERO)
}

/// TIMESTAMP_IN_FUTURE when `at` is more than [`MAX_CLOCK_SKEW`] ahead of `now` (the ledger's
/// clock).
fn not_future(v: &mut Violations, field: &str, at: DateTime<Utc>, now: DateTime<Utc>) {
    if at > now + Duration::from_std(MAX_CLOCK_SKEW).unwrap_or(Duration::minutes(5)) {
        v.add_with_reason(
            field,
            format!(
                "more than {} minutes in the future (check the clock)",
                MAX_CLOCK_SKEW.as_secs() / 60
            ),
            "TIMESTAMP_IN_FUTURE",
            vec![("field", field.to_owned())],
        );
    }
}

impl Ledger {
    pub(crate) async fn stamp_balances(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        customer: &str,
    ) -> Result<Vec<types::StampBalance>, Error> {
        Ok(tx
            .stamps(merchant, customer)
            .await?
            .into_iter()
            .map(|(stamp_card_id, count)| types::StampBalance {
                stamp_card_id,
                count: count.max(0) as u32,
            })
            .collect())
    }

    /// An outbox event, encoded with its id; callers write their events in one statement.
    pub(crate) fn event(
        merchant: &str,
        customer: &str,
        correlation: &str,
        payload: Payload,
        now: DateTime<Utc>,
    ) -> (String, Vec<u8>) {
        let event = types::Event {
            event_id: new_id(),
            merchant_id: merchant.to_owned(),
            occurred_at: Some(timestamp(now)),
            customer_id: customer.to_owned(),
            producer: "ledger-svc".to_owned(),
            correlation_id: correlation.to_owned(),
            payload: Some(payload),
        };
        (event.event_id.clone(), event.encode_to_vec())
    }

    pub(crate) async fn record_receipt(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::RecordReceiptRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::RecordReceiptResponse, Error> {
        let Some(input) = &r.receipt else {
            return Err(Error::invalid("receipt", "is required"));
        };
        let mut v = Violations::new();
        v.id("receipt.receipt_id", &input.receipt_id, MAX_ID, true);
        for (field, value) in [
            ("receipt.customer_id", &input.customer_id),
            ("receipt.store_id", &input.store_id),
            ("receipt.terminal_id", &input.terminal_id),
            ("receipt.hold_id", &input.hold_id),
        ] {
            v.id(field, value, MAX_ID, false);
        }
        let occurred_at = match opt_instant(&input.occurred_at, "receipt.occurred_at") {
            Ok(at) => at.unwrap_or(now),
            Err(Error::Invalid(bad)) => {
                v.extend(bad);
                now
            }
            Err(e) => return Err(e),
        };
        not_future(&mut v, "receipt.occurred_at", occurred_at, now);
        if !s.currency.is_empty() && !input.currency.is_empty() && input.currency != s.currency {
            v.add(
                "receipt.currency",
                format!("must be the merchant's currency {}", s.currency),
            );
        }
        if input.lines.is_empty() {
            v.add("receipt.lines", "a receipt has at least one line");
        }
        if input.lines.len() > MAX_LINES {
            v.limit("receipt.lines", MAX_LINES, "lines");
        }
        let mut seen = std::collections::HashSet::new();
        let mut lines = Vec::with_capacity(input.lines.len());
        for (i, l) in input.lines.iter().enumerate() {
            let f = |name: &str| format!("receipt.lines[{i}].{name}");
            let basket = l.line.clone().unwrap_or_default();
            v.id(&f("line.line_id"), &basket.line_id, MAX_ID, true);
            if !seen.insert(basket.line_id.clone()) {
                v.add(f("line.line_id"), "is repeated in this receipt");
            }
            v.id(&f("line.product_id"), &basket.product_id, MAX_ID, true);
            let price = parse_into(
                &f("line.unit_price"),
                &basket.unit_price,
                s.money_scale,
                Sign::NonNegative,
                &mut v,
            );
            let quantity = parse_into(
                &f("line.quantity"),
                &basket.quantity,
                QUANTITY_SCALE,
                Sign::Positive,
                &mut v,
            );
            let full = (price * quantity)
                .round_dp_with_strategy(s.money_scale, RoundingStrategy::MidpointAwayFromZero);
            let gross = if basket.amount.is_empty() {
                full
            } else {
                let a = parse_into(
                    &f("line.amount"),
                    &basket.amount,
                    s.money_scale,
                    Sign::NonNegative,
                    &mut v,
                );
                if a > price * quantity {
                    v.add(f("line.amount"), "must not exceed unit_price × quantity");
                }
                a
            };
            let discount = opt_amount(&f("discount"), &l.discount, s.money_scale, &mut v);
            if discount > gross {
                v.add(f("discount"), "must not exceed the line's amount");
            }
            let redeem = opt_amount(
                &f("redeem_points"),
                &l.redeem_points,
                s.points_scale,
                &mut v,
            );
            // The money a line's points paid is the caller's (rules-svc knows the point
            // value, the ledger does not): a redeeming line without it is refused, never
            // guessed.
            if l.redeem_money.is_empty() && redeem > Decimal::ZERO {
                v.add(
                    f("redeem_money"),
                    "is required when the line redeems points",
                );
            }
            let redeem_money =
                opt_amount(&f("redeem_money"), &l.redeem_money, s.money_scale, &mut v);
            if redeem_money > gross - discount {
                v.add(
                    f("redeem_money"),
                    "must not exceed the line's amount after discount",
                );
            }
            let accrual = opt_amount(
                &f("accrual_points"),
                &l.accrual_points,
                s.points_scale,
                &mut v,
            );
            let mut proto = l.clone();
            proto.gross_amount = s.money(gross);
            proto.discount = s.money(discount);
            proto.redeem_points = s.points(redeem);
            proto.redeem_money = s.money(redeem_money);
            proto.accrual_points = s.points(accrual);
            proto.refunded_quantity = "0".to_owned();
            lines.push(Line {
                proto,
                gross,
                discount,
                redeem,
                accrual,
            });
        }
        let lines_redeem: Decimal = lines.iter().map(|l| l.redeem).sum();
        let lines_accrual: Decimal = lines.iter().map(|l| l.accrual).sum();
        let redeem = if input.redeem_points.is_empty() {
            lines_redeem
        } else {
            parse_into(
                "receipt.redeem_points",
                &input.redeem_points,
                s.points_scale,
                Sign::NonNegative,
                &mut v,
            )
        };
        if redeem != lines_redeem {
            v.add(
                "receipt.redeem_points",
                "must equal the sum of the lines' redeem_points",
            );
        }
        let mut lots: Vec<NewLot> = input
            .accruals
            .iter()
            .enumerate()
            .map(|(i, g)| Self::new_lot(g, &format!("receipt.accruals[{i}]"), s, &mut v))
            .collect();
        if lots.is_empty() && lines_accrual > Decimal::ZERO {
            lots.push(NewLot {
                lot_id: new_id(),
                kind: LotKind::Purchase as i32,
                action: 0,
                amount: lines_accrual,
                activates_at: None,
                expires_at: None,
                receipt_id: None,
                grant_key: None,
                rule_ids: vec![],
            });
        }
        let lots_total: Decimal = lots.iter().map(|l| l.amount).sum();
        if lots_total != lines_accrual {
            v.add(
                "receipt.accruals",
                "their amounts must sum to the lines' accrual_points",
            );
        }
        let mut beneficiaries = Vec::new();
        for (i, b) in input.beneficiary_grants.iter().enumerate() {
            v.id(
                &format!("receipt.beneficiary_grants[{i}].customer_id"),
                &b.customer_id,
                MAX_ID,
                true,
            );
            let mut l = Self::new_lot(
                &b.grant.clone().unwrap_or_default(),
                &format!("receipt.beneficiary_grants[{i}].grant"),
                s,
                &mut v,
            );
            if b.grant.as_ref().is_none_or(|g| g.kind == 0) {
                l.kind = LotKind::Referral as i32;
            }
            beneficiaries.push((b.customer_id.clone(), l));
        }
        let anonymous = input.customer_id.is_empty();
        if anonymous
            && (redeem > Decimal::ZERO
                || lots_total > Decimal::ZERO
                || !input.hold_id.is_empty()
                || !beneficiaries.is_empty())
        {
            v.add(
                "receipt.customer_id",
                "an anonymous receipt can neither redeem nor accrue points",
            );
        }
        for (i, c) in input.stamp_changes.iter().enumerate() {
            v.id(
                &format!("receipt.stamp_changes[{i}].stamp_card_id"),
                &c.stamp_card_id,
                MAX_ID,
                true,
            );
        }
        if anonymous && !input.stamp_changes.is_empty() {
            v.add(
                "receipt.stamp_changes",
                "an anonymous receipt collects no stamps",
            );
        }
        if input.caller_digest.len() > MAX_CALLER_DIGEST {
            v.limit("receipt.caller_digest", MAX_CALLER_DIGEST, "bytes");
        }
        if input.offline && redeem > Decimal::ZERO {
            v.add(
                "receipt.redeem_points",
                "an offline receipt cannot redeem points",
            );
        }
        v.check()?;
        if now - occurred_at > Duration::from_std(s.max_receipt_age).unwrap_or(Duration::days(30)) {
            return Err(Refusal::precondition(
                "RECEIPT_TOO_OLD",
                "the sale is older than the merchant accepts",
            )
            .with("max_age", iso_duration(s.max_receipt_age))
            .into());
        }

        let content_hash = digest(input);
        if let Some(existing) = tx.receipt(merchant, &input.receipt_id).await? {
            return self
                .already_recorded(tx, merchant, existing, &content_hash, s, now)
                .await;
        }

        // Lock every account involved in one fixed order.
        let mut customers: Vec<&str> = beneficiaries.iter().map(|(c, _)| c.as_str()).collect();
        if !anonymous {
            customers.push(&input.customer_id);
        }
        Self::lock_in_order(tx, merchant, customers, now).await?;

        let net: Decimal = lines.iter().map(|l| l.gross - l.discount).sum();
        let gross: Decimal = lines.iter().map(|l| l.gross).sum();
        let discount: Decimal = lines.iter().map(|l| l.discount).sum();
        let redeem_money: Decimal = lines.iter().map(|l| amount_of(&l.proto.redeem_money)).sum();
        let mut receipt_lots = Vec::new();
        let mut stamp_changes = input.stamp_changes.clone();
        let mut events = Vec::new();
        let mut balance = None;
        let mut transaction_id = String::new();
        if !anonymous {
            let mut loaded = Self::load(tx, merchant, &input.customer_id, now).await?;
            if !input.hold_id.is_empty() {
                let mut hold = tx
                    .hold(merchant, &input.hold_id)
                    .await?
                    .filter(|h| h.customer_id == input.customer_id)
                    .ok_or_else(|| hold_not_found(&input.hold_id))?;
                if hold.state == hold_state::EXPIRED
                    || (hold.state == hold_state::ACTIVE && hold.expires_at <= now)
                {
                    return Err(Refusal::precondition(
                        "HOLD_EXPIRED",
                        format!("hold `{}` expired", hold.hold_id),
                    )
                    .into());
                }
                if hold.state != hold_state::ACTIVE {
                    return Err(hold_finalized(
                        &hold,
                        format!("hold `{}` is already finished", hold.hold_id),
                    ));
                }
                if redeem > hold.amount {
                    return Err(hold_exceeded(&hold, redeem, s));
                }
                self.end_hold(
                    tx,
                    merchant,
                    &mut hold,
                    &mut loaded.book,
                    redeem,
                    hold_state::COMMITTED,
                    now,
                )
                .await?;
            } else if redeem > Decimal::ZERO {
                loaded
                    .book
                    .debit(redeem, Account::Redeemed)
                    .map_err(|e| book_error(e, s))?;
            }
            for mut lot in lots {
                lot.receipt_id = Some(input.receipt_id.clone());
                let i = loaded.book.credit(lot, Account::Issued);
                receipt_lots.push(loaded.book.lots()[i].clone());
            }
            let account = &mut loaded.book.account;
            account.lifetime_turnover += net;
            account.purchase_count += 1;
            account.first_purchase_at = Some(
                account
                    .first_purchase_at
                    .map_or(occurred_at, |t| t.min(occurred_at)),
            );
            account.last_purchase_at = Some(
                account
                    .last_purchase_at
                    .map_or(occurred_at, |t| t.max(occurred_at)),
            );
            // Stamps first: the journal write below is kept back and sent with the receipt's
            // other writes in one round trip, which a read in between would split.
            for c in &mut stamp_changes {
                let count = tx
                    .add_stamps(
                        merchant,
                        &input.customer_id,
                        &c.stamp_card_id,
                        i64::from(c.earned) - i64::from(c.consumed),
                    )
                    .await?;
                if count < 0 {
                    return Err(Refusal::precondition(
                        "INSUFFICIENT_STAMPS",
                        format!(
                            "stamp card `{}` has fewer stamps than consumed",
                            c.stamp_card_id
                        ),
                    )
                    .with("stamp_card_id", &c.stamp_card_id)
                    .into());
                }
                c.balance_after = count as u32;
            }
            let stamps = Self::stamp_balances(tx, merchant, &input.customer_id).await?;
            transaction_id = Self::save(
                tx,
                merchant,
                &loaded.book,
                tx_kind::RECEIPT,
                now,
                occurred_at,
                (&input.receipt_id, "", &input.hold_id),
                request_id,
                "",
            )
            .await?;
            tx.add_purchase_day(merchant, &input.customer_id, day_of(occurred_at), net, 1)
                .await?;
            let mut b = self.balance(&loaded.book, s);
            b.stamps = stamps;
            balance = Some(b);
            for lot in &receipt_lots {
                let payload = Payload::PointsAccrued(types::PointsAccrued {
                    amount: s.points(lot.amount),
                    kind: lot.kind,
                    action: lot.action,
                    receipt_id: input.receipt_id.clone(),
                    activates_at: convert::opt_timestamp(lot.activates_at),
                    expires_at: convert::opt_timestamp(lot.expires_at),
                    lot_id: lot.lot_id.clone(),
                    balance_after: s.points(loaded.book.account.available),
                });
                events.push(Self::event(
                    merchant,
                    &input.customer_id,
                    &input.receipt_id,
                    payload,
                    now,
                ));
            }
            if redeem > Decimal::ZERO {
                let payload = Payload::PointsRedeemed(types::PointsRedeemed {
                    amount: s.points(redeem),
                    receipt_id: input.receipt_id.clone(),
                    balance_after: s.points(loaded.book.account.available),
                });
                events.push(Self::event(
                    merchant,
                    &input.customer_id,
                    &input.receipt_id,
                    payload,
                    now,
                ));
            }
        }
        for (customer, mut lot) in beneficiaries {
            lot.receipt_id = Some(input.receipt_id.clone());
            self.grant_one(
                tx,
                merchant,
                request_id,
                &customer,
                lot,
                s,
                now,
                occurred_at,
                "referral reward",
            )
            .await?;
        }

        let receipt = pb::Receipt {
            receipt_id: input.receipt_id.clone(),
            customer_id: input.customer_id.clone(),
            store_id: input.store_id.clone(),
            terminal_id: input.terminal_id.clone(),
            occurred_at: Some(timestamp(occurred_at)),
            recorded_at: Some(timestamp(now)),
            currency: if input.currency.is_empty() {
                s.currency.clone()
            } else {
                input.currency.clone()
            },
            program_version: input.program_version,
            lines: lines.iter().map(|l| l.proto.clone()).collect(),
            summary: Some(pb::ReceiptSummary {
                gross_amount: s.money(gross),
                discount: s.money(discount),
                net_amount: s.money(net),
                redeem_points: s.points(redeem),
                redeem_money: s.money(redeem_money),
                paid_money: s.money(net - redeem_money),
                points_accrued: s.points(lots_total),
                referral_points: s.points(
                    input
                        .beneficiary_grants
                        .iter()
                        .map(|b| {
                            b.grant
                                .as_ref()
                                .map_or(Decimal::ZERO, |g| amount_of(&g.amount))
                        })
                        .sum(),
                ),
            }),
            lots: receipt_lots.iter().map(|l| convert::lot(l, s)).collect(),
            beneficiary_grants: input.beneficiary_grants.clone(),
            stamp_changes,
            promo_codes: input.promo_codes.clone(),
            offline: input.offline,
            hold_id: input.hold_id.clone(),
            refund_state: refund_state::NONE,
            refunds: vec![],
            caller_digest: input.caller_digest.clone(),
        };
        let row = ReceiptRow {
            receipt_id: input.receipt_id.clone(),
            customer_id: input.customer_id.clone(),
            content_hash,
            document: receipt.encode_to_vec(),
            refunded_amount: Decimal::ZERO,
            refund_state: refund_state::NONE,
            transaction_id: transaction_id.clone(),
        };
        let sold: Vec<SoldLine> = lines
            .iter()
            .map(|l| {
                let b = l.proto.line.clone().unwrap_or_default();
                SoldLine {
                    line_id: b.line_id,
                    product_id: b.product_id,
                    category_ids: b.category_ids,
                }
            })
            .collect();
        tx.insert_receipt(
            merchant,
            &row,
            &input.store_id,
            occurred_at,
            now,
            net,
            discount,
            &sold,
        )
        .await?;
        let payload = Payload::PurchaseConfirmed(types::PurchaseConfirmed {
            receipt_id: input.receipt_id.clone(),
            store_id: input.store_id.clone(),
            terminal_id: input.terminal_id.clone(),
            currency: receipt.currency.clone(),
            gross_amount: s.money(gross),
            discount: s.money(discount),
            amount: s.money(net),
            points_accrued: s.points(lots_total),
            points_redeemed: s.points(redeem),
            program_version: input.program_version,
            line_count: lines.len() as u32,
            product_ids: lines
                .iter()
                .filter_map(|l| l.proto.line.as_ref().map(|b| b.product_id.clone()))
                .collect(),
            offline: input.offline,
        });
        events.push(Self::event(
            merchant,
            &input.customer_id,
            &input.receipt_id,
            payload,
            now,
        ));
        tx.insert_events(merchant, &events, now).await?;
        Ok(pb::RecordReceiptResponse {
            receipt: Some(receipt),
            already_recorded: false,
            transaction_id,
            balance,
        })
    }

    async fn already_recorded(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        existing: ReceiptRow,
        content_hash: &[u8],
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::RecordReceiptResponse, Error> {
        if existing.content_hash != content_hash {
            return Err(Refusal::precondition(
                "RECEIPT_ALREADY_RECORDED",
                format!(
                    "receipt `{}` was recorded with different content",
                    existing.receipt_id
                ),
            )
            .with("receipt_id", &existing.receipt_id)
            .into());
        }
        let receipt = self.receipt_with_refunds(tx, merchant, &existing).await?;
        let balance = if existing.customer_id.is_empty() {
            None
        } else {
            Some(
                self.read_balance(
                    tx,
                    merchant,
                    &existing.customer_id,
                    s,
                    now,
                    Duration::days(30),
                )
                .await?,
            )
        };
        Ok(pb::RecordReceiptResponse {
            receipt: Some(receipt),
            already_recorded: true,
            transaction_id: existing.transaction_id,
            balance,
        })
    }

    /// A stored receipt with its refunds and per-line refunded quantities.
    pub(crate) async fn receipt_with_refunds(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        row: &ReceiptRow,
    ) -> Result<pb::Receipt, Error> {
        let mut receipt = pb::Receipt::decode(row.document.as_slice())?;
        let refunded = tx.lines_refunded(merchant, &row.receipt_id).await?;
        for line in &mut receipt.lines {
            let id = line
                .line
                .as_ref()
                .map(|b| b.line_id.as_str())
                .unwrap_or_default();
            if let Some(r) = refunded.iter().find(|r| r.line_id == id) {
                line.refunded_quantity = r.quantity.normalize().to_string();
            }
        }
        receipt.refund_state = row.refund_state;
        for doc in tx.refunds(merchant, &row.receipt_id).await? {
            receipt.refunds.push(pb::Refund::decode(doc.as_slice())?);
        }
        Ok(receipt)
    }

    pub(crate) async fn refund_receipt(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        request_id: &str,
        r: &pb::RefundReceiptRequest,
        s: &Settings,
        now: DateTime<Utc>,
    ) -> Result<pb::RefundReceiptResponse, Error> {
        let mut v = Violations::new();
        v.id("receipt_id", &r.receipt_id, MAX_ID, true);
        v.id("refund_id", &r.refund_id, MAX_ID, true);
        v.text("reason", &r.reason, MAX_TEXT, false);
        // At most one entry per line of a receipt of at most MAX_LINES lines.
        v.count("lines", r.lines.len(), MAX_LINES);
        let mut requested = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, l) in r.lines.iter().enumerate() {
            v.id(&format!("lines[{i}].line_id"), &l.line_id, MAX_ID, true);
            // Empty = all that remains of the line (resolved once the receipt is read).
            let q = if l.quantity.is_empty() {
                None
            } else {
                Some(parse_into(
                    &format!("lines[{i}].quantity"),
                    &l.quantity,
                    QUANTITY_SCALE,
                    Sign::Positive,
                    &mut v,
                ))
            };
            if !seen.insert(l.line_id.as_str()) {
                v.add(format!("lines[{i}].line_id"), "is repeated");
            }
            requested.push((l.line_id.clone(), q));
        }
        let policy = pb::ShortfallPolicy::try_from(r.policy)
            .map_err(|_| Error::invalid("policy", "unknown policy"))?;
        let occurred_at = opt_instant(&r.occurred_at, "occurred_at")?.unwrap_or(now);
        v.check()?;
        let row = tx
            .lock_receipt(merchant, &r.receipt_id)
            .await?
            .ok_or_else(|| receipt_not_found(&r.receipt_id))?;
        let hash = digest(&pb::RefundReceiptRequest {
            merchant_id: String::new(),
            request_id: String::new(),
            ..r.clone()
        });
        if let Some((stored_hash, doc)) = tx.refund(merchant, &r.receipt_id, &r.refund_id).await? {
            if stored_hash != hash {
                return Err(Refusal::precondition(
                    "IDEMPOTENCY_KEY_REUSED",
                    format!("refund `{}` was made with different content", r.refund_id),
                )
                .with("request_id", request_id)
                .into());
            }
            let refund = pb::Refund::decode(doc.as_slice())?;
            let receipt = self.receipt_with_refunds(tx, merchant, &row).await?;
            let balance = self
                .read_balance(tx, merchant, &row.customer_id, s, now, Duration::days(30))
                .await?;
            return Ok(pb::RefundReceiptResponse {
                refund: Some(refund),
                receipt: Some(receipt),
                balance: Some(balance),
            });
        }
        if row.refund_state == refund_state::FULL {
            return Err(Refusal::precondition(
                "RECEIPT_ALREADY_REFUNDED",
                format!("receipt `{}` is fully refunded", r.receipt_id),
            )
            .into());
        }
        let receipt = pb::Receipt::decode(row.document.as_slice())?;
        // Lock the buyer and every referrer rewarded by this receipt, in one fixed order.
        let mut customers: Vec<&str> = receipt
            .beneficiary_grants
            .iter()
            .map(|b| b.customer_id.as_str())
            .collect();
        if !row.customer_id.is_empty() {
            customers.push(&row.customer_id);
        }
        Self::lock_in_order(tx, merchant, customers, now).await?;
        let mut refunded = tx.lines_refunded(merchant, &r.receipt_id).await?;
        // Per line: id, quantity, net amount, accrual, redemption, and the money paid (net
        // minus what the points paid), all as recorded.
        let sold: Vec<(String, Decimal, Decimal, Decimal, Decimal, Decimal)> = receipt
            .lines
            .iter()
            .map(|l| {
                let b = l.line.clone().unwrap_or_default();
                let net = amount_of(&l.gross_amount) - amount_of(&l.discount);
                (
                    b.line_id,
                    amount_of(&b.quantity),
                    net,
                    amount_of(&l.accrual_points),
                    amount_of(&l.redeem_points),
                    (net - amount_of(&l.redeem_money)).max(Decimal::ZERO),
                )
            })
            .collect();
        let wanted: Vec<(String, Decimal)> = if requested.is_empty() {
            sold.iter()
                .map(|(id, qty, ..)| {
                    let done = refunded
                        .iter()
                        .find(|x| &x.line_id == id)
                        .map_or(Decimal::ZERO, |x| x.quantity);
                    (id.clone(), *qty - done)
                })
                .filter(|(_, q)| *q > Decimal::ZERO)
                .collect()
        } else {
            requested
                .into_iter()
                .map(|(id, q)| {
                    let q = q.unwrap_or_else(|| {
                        let sold_qty = sold
                            .iter()
                            .find(|(s, ..)| s == &id)
                            .map_or(Decimal::ZERO, |l| l.1);
                        let done = refunded
                            .iter()
                            .find(|x| x.line_id == id)
                            .map_or(Decimal::ZERO, |x| x.quantity);
                        sold_qty - done
                    });
                    (id, q)
                })
                .collect()
        };
        let mut out_lines = Vec::new();
        let (mut amount, mut cash, mut reversed, mut restored) =
            (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
        for (i, (line_id, qty)) in wanted.iter().enumerate() {
            let Some((_, sold_qty, net, accrual, redeem, paid)) =
                sold.iter().find(|(id, ..)| id == line_id)
            else {
                return Err(Refusal::not_found(
                    "LINE_NOT_FOUND",
                    format!("line `{line_id}` is not on receipt `{}`", r.receipt_id),
                )
                .with("line_id", line_id)
                .into());
            };
            let state = match refunded.iter_mut().find(|x| &x.line_id == line_id) {
                Some(x) => x,
                None => {
                    refunded.push(LineRefunded {
                        line_id: line_id.clone(),
                        ..Default::default()
                    });
                    refunded.last_mut().expect("just pushed")
                }
            };
            if *qty <= Decimal::ZERO || state.quantity + qty > *sold_qty {
                let remaining = (*sold_qty - state.quantity).normalize().to_string();
                return Err(Refusal::precondition(
                    "REFUND_EXCEEDS_RECEIPT",
                    format!(
                        "lines[{i}]: {} exceeds the {remaining} not yet refunded",
                        qty.normalize()
                    ),
                )
                .with("line_id", line_id)
                .with("remaining_quantity", remaining)
                .into());
            }
            let a = proportional(
                *net,
                state.amount,
                *sold_qty,
                state.quantity,
                *qty,
                s.money_scale,
            );
            // The cash to hand back: the same cumulative share of the money actually paid.
            // Earlier refunds of the line (under this rule) paid out exactly its cumulative
            // share of what they returned.
            let c = proportional(
                *paid,
                cumulative(*paid, *sold_qty, state.quantity, s.money_scale),
                *sold_qty,
                state.quantity,
                *qty,
                s.money_scale,
            );
            let rv = proportional(
                *accrual,
                state.points_reversed,
                *sold_qty,
                state.quantity,
                *qty,
                s.points_scale,
            );
            let rs = proportional(
                *redeem,
                state.points_restored,
                *sold_qty,
                state.quantity,
                *qty,
                s.points_scale,
            );
            state.quantity += qty;
            state.amount += a;
            state.points_reversed += rv;
            state.points_restored += rs;
            amount += a;
            cash += c;
            reversed += rv;
            restored += rs;
            out_lines.push(pb::RefundedLine {
                line_id: line_id.clone(),
                quantity: qty.normalize().to_string(),
                amount: s.money(a),
                cash_amount: s.money(c),
                points_reversed: s.points(rv),
                points_restored: s.points(rs),
            });
        }
        let fully = sold.iter().all(|(id, qty, ..)| {
            refunded
                .iter()
                .find(|x| &x.line_id == id)
                .is_some_and(|x| x.quantity >= *qty)
        });
        let (shortfall_rule, policy_applied) = s.shortfall(policy);
        let mut refund = pb::Refund {
            refund_id: r.refund_id.clone(),
            receipt_id: r.receipt_id.clone(),
            lines: out_lines,
            amount: s.money(amount),
            cash_amount: s.money(cash),
            points_reversed: s.points(reversed),
            points_restored: s.points(restored),
            shortfall: s.points(Decimal::ZERO),
            shortfall_money: s.money(Decimal::ZERO),
            negative_balance_created: s.points(Decimal::ZERO),
            policy_applied: policy_applied as i32,
            occurred_at: Some(timestamp(occurred_at)),
            recorded_at: Some(timestamp(now)),
            ..Default::default()
        };
        let mut balance = None;
        if !row.customer_id.is_empty() {
            let mut loaded = Self::load(tx, merchant, &row.customer_id, now).await?;
            let taken = loaded
                .book
                .take_back(reversed, &r.receipt_id, shortfall_rule)
                .map_err(|e| book_error(e, s))?;
            refund.shortfall = s.points(taken.shortfall);
            // What was actually taken back; a reported shortfall is not.
            refund.points_reversed = s.points(reversed - taken.shortfall);
            refund.shortfall_money = s.money(taken.shortfall);
            refund.negative_balance_created = s.points(taken.debt_created);
            if restored > Decimal::ZERO {
                let expires_at = tx
                    .redeemed_from_expiry(merchant, &row.transaction_id)
                    .await?
                    // The customer gets at least the notice period to use them.
                    .map(|e| e.max(now + Duration::from_std(s.expiry_notice).unwrap_or_default()));
                let i = loaded.book.credit(
                    NewLot {
                        lot_id: new_id(),
                        kind: LotKind::Restored as i32,
                        action: 0,
                        amount: restored,
                        activates_at: None,
                        expires_at,
                        receipt_id: None,
                        grant_key: None,
                        rule_ids: vec![],
                    },
                    Account::Restored,
                );
                refund
                    .restored_lots
                    .push(convert::lot(&loaded.book.lots()[i], s));
            }
            loaded.book.account.lifetime_turnover -= amount;
            if fully {
                // A fully returned receipt is no longer a purchase.
                loaded.book.account.purchase_count -= 1;
            }
            Self::save(
                tx,
                merchant,
                &loaded.book,
                tx_kind::REFUND,
                now,
                occurred_at,
                (&r.receipt_id, &r.refund_id, ""),
                request_id,
                &r.reason,
            )
            .await?;
            let sold_at = receipt
                .occurred_at
                .as_ref()
                .map(|t| convert::instant(t, "occurred_at"))
                .transpose()?
                .unwrap_or(now);
            tx.add_purchase_day(
                merchant,
                &row.customer_id,
                day_of(sold_at),
                -amount,
                if fully { -1 } else { 0 },
            )
            .await?;
            balance = Some(self.balance(&loaded.book, s));
        }
        refund.fully_refunded = fully;
        // Referral rewards shrink with the purchase: each referrer loses the refunded share of
        // the money (all of it on the last refund), under the same shortfall policy.
        let net_total: Decimal = sold.iter().map(|(_, _, net, ..)| *net).sum();
        for b in &receipt.beneficiary_grants {
            let granted = b
                .grant
                .as_ref()
                .map_or(Decimal::ZERO, |g| amount_of(&g.amount));
            let share = |refunded_money: Decimal| {
                if net_total <= Decimal::ZERO || refunded_money >= net_total {
                    granted
                } else {
                    (granted * refunded_money / net_total)
                        .round_dp_with_strategy(s.points_scale, RoundingStrategy::ToZero)
                }
            };
            let before = row.refunded_amount;
            let now_reversed = if fully {
                granted - share(before)
            } else {
                share(before + amount) - share(before)
            };
            if now_reversed <= Decimal::ZERO {
                continue;
            }
            let mut loaded = Self::load(tx, merchant, &b.customer_id, now).await?;
            let taken = loaded
                .book
                .take_back(now_reversed, &r.receipt_id, shortfall_rule)
                .map_err(|e| book_error(e, s))?;
            Self::save(
                tx,
                merchant,
                &loaded.book,
                tx_kind::REFUND,
                now,
                occurred_at,
                (&r.receipt_id, &r.refund_id, ""),
                request_id,
                "referral reward reversed",
            )
            .await?;
            refund.beneficiary_reversals.push(pb::BeneficiaryReversal {
                customer_id: b.customer_id.clone(),
                level: b.level,
                points_reversed: s.points(now_reversed),
                shortfall: s.points(taken.shortfall),
            });
        }
        // Stamps go back when the whole receipt is returned.
        if fully && !row.customer_id.is_empty() {
            for c in &receipt.stamp_changes {
                let delta = i64::from(c.consumed) - i64::from(c.earned);
                if delta == 0 {
                    continue;
                }
                let count = tx
                    .add_stamps(merchant, &row.customer_id, &c.stamp_card_id, delta)
                    .await?;
                if count < 0 {
                    // Stamps already used for a reward: keep the card at zero.
                    tx.add_stamps(merchant, &row.customer_id, &c.stamp_card_id, -count)
                        .await?;
                }
                refund.stamp_changes.push(types::StampChange {
                    stamp_card_id: c.stamp_card_id.clone(),
                    earned: c.consumed,
                    consumed: c.earned,
                    balance_after: count.max(0) as u32,
                });
            }
        }
        for line in &refunded {
            tx.update_line_refunded(merchant, &r.receipt_id, line)
                .await?;
        }
        let state = if fully {
            refund_state::FULL
        } else {
            refund_state::PARTIAL
        };
        tx.update_receipt_refund(merchant, &r.receipt_id, row.refunded_amount + amount, state)
            .await?;
        tx.insert_refund(
            merchant,
            &r.receipt_id,
            &r.refund_id,
            &hash,
            &refund.encode_to_vec(),
            now,
        )
        .await?;
        let payload = Payload::ReceiptRefunded(types::ReceiptRefunded {
            receipt_id: r.receipt_id.clone(),
            refund_id: r.refund_id.clone(),
            amount: refund.amount.clone(),
            points_reversed: refund.points_reversed.clone(),
            points_restored: refund.points_restored.clone(),
            shortfall: refund.shortfall.clone(),
            fully_refunded: fully,
        });
        let event = Self::event(merchant, &row.customer_id, &r.receipt_id, payload, now);
        tx.insert_events(merchant, &[event], now).await?;
        let stored = ReceiptRow {
            refunded_amount: row.refunded_amount + amount,
            refund_state: state,
            ..row
        };
        let receipt = self.receipt_with_refunds(tx, merchant, &stored).await?;
        Ok(pb::RefundReceiptResponse {
            refund: Some(refund),
            receipt: Some(receipt),
            balance,
        })
    }
}

/// A stored decimal string (already validated) as a decimal; empty is zero.
fn amount_of(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::testing::*;

    #[test]
    fn durations_read_as_iso_8601() {
        let d = std::time::Duration::from_millis;
        for (ms, iso) in [
            (72 * 3_600_000, "PT72H"),
            (5_400_000, "PT1H30M"),
            (3_600_000 + 1000, "PT1H1S"),
            (45_000, "PT45S"),
            (500, "PT0.5S"),
            (0, "PT0S"),
        ] {
            assert_eq!(iso_duration(d(ms)), iso);
        }
    }

    /// A redeemed line says what its points paid: the ledger does not know the point value
    /// and never books points as money 1:1.
    #[tokio::test]
    async fn a_redeeming_line_without_its_money_is_refused() {
        let (l, _) = ledger().await;
        accrue(&l, M, "c-1", "50").await;
        let mut two = receipt(
            "r-1",
            "c-1",
            vec![
                line("1", "100.00", "1", "0", "0"),
                line("2", "100.00", "1", "5", "0"),
            ],
        );
        // No money for either line: only the redeeming one is wrong.
        two.lines[0].redeem_money.clear();
        two.lines[1].redeem_money.clear();
        check_invalid(vec![(
            "redeem_points without redeem_money",
            invalid(record(&l, two.clone()).await),
            answer(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
            &["receipt.lines[1].redeem_money"],
        )]);
        // With it, the summary books exactly that money, whatever the point value.
        two.lines[1].redeem_money = "2.50".into();
        let r = record(&l, two).await.unwrap().receipt.unwrap();
        let summary = r.summary.unwrap();
        assert_eq!(
            (summary.redeem_money.as_str(), summary.paid_money.as_str()),
            ("2.50", "197.50")
        );
    }

    /// Two lattes at 250 paid with 19 points (19.00 ₽): returning one pays back the cash
    /// share of what was paid, 481.00 / 2 = 240.50, and 9 of the points; the second closes
    /// the line exactly (240.50 and 10 points).
    #[tokio::test]
    async fn a_refund_pays_back_the_cash_share() {
        let (l, _) = ledger().await;
        accrue(&l, M, "c-1", "19").await;
        let mut lattes = line("1", "250.00", "2", "19", "0");
        lattes.redeem_money = "19.00".into();
        record(&l, receipt("r-1", "c-1", vec![lattes]))
            .await
            .unwrap();
        let figures = |f: &pb::Refund| {
            let line = &f.lines[0];
            (
                f.amount.clone(),
                f.cash_amount.clone(),
                f.points_restored.clone(),
                line.cash_amount.clone(),
                line.points_restored.clone(),
            )
        };
        let first = refund(&l, &rid(), "r-1", "rf-1", &[("1", "1")])
            .await
            .unwrap()
            .refund
            .unwrap();
        let s = |v: &str| v.to_owned();
        assert_eq!(
            figures(&first),
            (s("250.00"), s("240.50"), s("9"), s("240.50"), s("9"))
        );
        let second = refund(&l, &rid(), "r-1", "rf-2", &[]).await.unwrap();
        assert_eq!(
            figures(second.refund.as_ref().unwrap()),
            (s("250.00"), s("240.50"), s("10"), s("240.50"), s("10"))
        );
        assert_eq!(second.balance.unwrap().available, "19");
    }

    /// 20 units returned one at a time: every 4th gives back one of the line's 5 points
    /// (each refund rounding on its own would keep 5 points until the last), and the money
    /// (192.99 paid, 9.6495 a unit) never runs more than a cent behind.
    #[tokio::test]
    async fn partial_refunds_keep_pace_with_the_line() {
        let (l, _) = ledger().await;
        accrue(&l, M, "c-1", "7").await;
        let mut units = line("1", "10.00", "20", "7", "5");
        units.redeem_money = "7.01".into();
        record(&l, receipt("r-1", "c-1", vec![units]))
            .await
            .unwrap();
        let d = |v: &str| v.parse::<Decimal>().unwrap();
        let (mut cash, mut reversed, mut restored) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
        for k in 1..=20 {
            let f = refund(&l, &rid(), "r-1", &format!("rf-{k}"), &[("1", "1")])
                .await
                .unwrap()
                .refund
                .unwrap();
            cash += d(&f.cash_amount);
            reversed += d(&f.points_reversed);
            restored += d(&f.points_restored);
            let k = Decimal::from(k);
            assert_eq!(
                reversed,
                (d("5") * k / d("20")).floor(),
                "reversed after {k}"
            );
            assert_eq!(
                restored,
                (d("7") * k / d("20")).floor(),
                "restored after {k}"
            );
            let exact = d("192.99") * k / d("20");
            assert!(
                cash <= exact && exact - cash < d("0.01"),
                "{cash} after {k}"
            );
            assert_eq!(d(&f.cash_amount), d(&f.lines[0].cash_amount));
        }
        assert_eq!((cash, reversed, restored), (d("192.99"), d("5"), d("7")));
    }

    /// Every refusal of receipts and refunds, with the exact metadata errors.proto documents
    /// for its reason.
    #[tokio::test]
    async fn refusals_carry_the_documented_metadata() {
        let (l, clock) = ledger().await;
        let policy = pb::LedgerSettings {
            max_negative_balance: "5".into(),
            max_receipt_age: Some(pbjson_types::Duration {
                seconds: 72 * 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        set(&l, M, policy, &["max_negative_balance", "max_receipt_age"])
            .await
            .unwrap();
        // c-1: 20 points from r-1, 15 of them reversed by a refund of 1.5 of its 2 items.
        record(
            &l,
            receipt("r-1", "c-1", vec![line("1", "100.00", "2", "0", "20")]),
        )
        .await
        .unwrap();
        refund(&l, &rid(), "r-1", "refund-1", &[("1", "1.5")])
            .await
            .unwrap();
        // r-2 refunded in full.
        record(
            &l,
            receipt("r-2", "c-2", vec![line("1", "10.00", "1", "0", "0")]),
        )
        .await
        .unwrap();
        refund(&l, &rid(), "r-2", "refund-2", &[]).await.unwrap();
        // c-3 spent the 30 points of r-3: refunding r-3 would leave -30, the limit is -5.
        record(
            &l,
            receipt("r-3", "c-3", vec![line("1", "100.00", "1", "0", "30")]),
        )
        .await
        .unwrap();
        record(
            &l,
            receipt("r-3b", "c-3", vec![line("1", "100.00", "1", "30", "0")]),
        )
        .await
        .unwrap();
        let small = reserve(&l, "c-1", "2").await.unwrap();
        let voided = reserve(&l, "c-1", "1").await.unwrap();
        void(&l, &voided.hold_id).await.unwrap();
        let with_hold = |id: &str, hold: &str, redeem: &str| pb::ReceiptInput {
            hold_id: hold.into(),
            ..receipt(id, "c-1", vec![line("1", "100.00", "1", redeem, "0")])
        };
        let at = |id: &str, t: DateTime<Utc>| pb::ReceiptInput {
            occurred_at: Some(ts(t)),
            ..receipt(id, "c-4", vec![line("1", "10.00", "1", "0", "0")])
        };
        let unstamped = pb::ReceiptInput {
            stamp_changes: vec![types::StampChange {
                stamp_card_id: "coffee".into(),
                consumed: 1,
                ..Default::default()
            }],
            ..receipt("r-stamps", "c-4", vec![line("1", "10.00", "1", "0", "0")])
        };
        let now = l.now();
        let fp = Code::FailedPrecondition;
        check(vec![
            (
                "same receipt_id, other content",
                refusal(
                    record(
                        &l,
                        receipt("r-1", "c-1", vec![line("1", "1.00", "1", "0", "0")]),
                    )
                    .await,
                ),
                answer(fp, "RECEIPT_ALREADY_RECORDED", &[("receipt_id", "r-1")]),
            ),
            (
                "redeem more than available",
                refusal(
                    record(
                        &l,
                        receipt("r-4", "c-4", vec![line("1", "10.00", "1", "5", "0")]),
                    )
                    .await,
                ),
                answer(
                    fp,
                    "INSUFFICIENT_POINTS",
                    &[("available", "0"), ("requested", "5")],
                ),
            ),
            (
                "sale too old",
                refusal(record(&l, at("r-6", now - Duration::hours(73))).await),
                answer(fp, "RECEIPT_TOO_OLD", &[("max_age", "PT72H")]),
            ),
            (
                "more stamps consumed than collected",
                refusal(record(&l, unstamped).await),
                answer(fp, "INSUFFICIENT_STAMPS", &[("stamp_card_id", "coffee")]),
            ),
            (
                "redeem more than held",
                refusal(record(&l, with_hold("r-7", &small.hold_id, "3")).await),
                answer(fp, "HOLD_AMOUNT_EXCEEDED", &[("held", "2")]),
            ),
            (
                "redeem from a voided hold",
                refusal(record(&l, with_hold("r-8", &voided.hold_id, "1")).await),
                answer(fp, "HOLD_FINALIZED", &[("state", "HOLD_STATE_VOIDED")]),
            ),
            (
                "redeem from no such hold",
                refusal(record(&l, with_hold("r-9", "h-missing", "1")).await),
                answer(Code::NotFound, "HOLD_NOT_FOUND", &[]),
            ),
            (
                "refund of no such receipt",
                refusal(refund(&l, &rid(), "r-missing", "refund-x", &[]).await),
                answer(
                    Code::NotFound,
                    "RECEIPT_NOT_FOUND",
                    &[("receipt_id", "r-missing")],
                ),
            ),
            (
                "refund of a line not on the receipt",
                refusal(refund(&l, &rid(), "r-1", "refund-x", &[("9", "1")]).await),
                answer(Code::NotFound, "LINE_NOT_FOUND", &[("line_id", "9")]),
            ),
            (
                "refund of more than remains",
                refusal(refund(&l, &rid(), "r-1", "refund-x", &[("1", "1")]).await),
                answer(
                    fp,
                    "REFUND_EXCEEDS_RECEIPT",
                    &[("line_id", "1"), ("remaining_quantity", "0.5")],
                ),
            ),
            (
                "refund_id reused with other content",
                refusal(refund(&l, "req-refund", "r-1", "refund-1", &[("1", "0.5")]).await),
                answer(
                    fp,
                    "IDEMPOTENCY_KEY_REUSED",
                    &[("request_id", "req-refund")],
                ),
            ),
            (
                "refund of a refunded receipt",
                refusal(refund(&l, &rid(), "r-2", "refund-x", &[]).await),
                answer(fp, "RECEIPT_ALREADY_REFUNDED", &[]),
            ),
            (
                "refund below the negative limit",
                refusal(refund(&l, &rid(), "r-3", "refund-x", &[]).await),
                answer(fp, "NEGATIVE_BALANCE_NOT_ALLOWED", &[]),
            ),
        ]);
        // Bad input: INVALID_ARGUMENT with the field violations, under the reason of the
        // first violation that has one of its own.
        let lines = |n: usize| -> Vec<pb::ReceiptLine> {
            (0..n)
                .map(|i| line(&i.to_string(), "1.00", "1", "0", "0"))
                .collect()
        };
        let long_id = "r".repeat(129);
        let long_line = vec![line(&"l".repeat(129), "1.00", "1", "0", "0")];
        let digest = pb::ReceiptInput {
            caller_digest: vec![7; 65],
            ..receipt("r-digest", "c-4", lines(1))
        };
        let refund_with_reason = pb::RefundReceiptRequest {
            merchant_id: M.into(),
            request_id: rid(),
            receipt_id: "r-1".into(),
            refund_id: "refund-long".into(),
            reason: "x".repeat(501),
            ..Default::default()
        };
        let future_and_long = pb::ReceiptInput {
            lines: lines(501),
            ..at("r-both", now + Duration::minutes(6))
        };
        let invalid_argument = |reason: &str| answer(Code::InvalidArgument, reason, &[]);
        check_invalid(vec![
            (
                "sale in the future",
                invalid(record(&l, at("r-5", now + Duration::minutes(6))).await),
                answer(
                    Code::InvalidArgument,
                    "TIMESTAMP_IN_FUTURE",
                    &[("field", "receipt.occurred_at")],
                ),
                &["receipt.occurred_at"],
            ),
            (
                "501 lines",
                invalid(record(&l, receipt("r-big", "c-4", lines(501))).await),
                limit_exceeded("receipt.lines", "500"),
                &["receipt.lines"],
            ),
            (
                "a receipt id of 129 characters",
                invalid(record(&l, receipt(&long_id, "c-4", lines(1))).await),
                limit_exceeded("receipt.receipt_id", "128"),
                &["receipt.receipt_id"],
            ),
            (
                "a line id of 129 characters",
                invalid(record(&l, receipt("r-long-line", "c-4", long_line)).await),
                limit_exceeded("receipt.lines[0].line.line_id", "128"),
                // The test line's product id is "p-" and the line id.
                &[
                    "receipt.lines[0].line.line_id",
                    "receipt.lines[0].line.product_id",
                ],
            ),
            (
                "a caller digest of 65 bytes",
                invalid(record(&l, digest).await),
                limit_exceeded("receipt.caller_digest", "64"),
                &["receipt.caller_digest"],
            ),
            (
                "a refund reason of 501 characters",
                invalid(l.refund(&refund_with_reason).await),
                limit_exceeded("reason", "500"),
                &["reason"],
            ),
            (
                "in the future and too long: every field, the first reason",
                invalid(record(&l, future_and_long).await),
                answer(
                    Code::InvalidArgument,
                    "TIMESTAMP_IN_FUTURE",
                    &[("field", "receipt.occurred_at")],
                ),
                &["receipt.occurred_at", "receipt.lines"],
            ),
            (
                "no lines",
                invalid(record(&l, receipt("r-empty", "c-4", vec![])).await),
                invalid_argument("VALIDATION_FAILED"),
                &["receipt.lines"],
            ),
        ]);
        // Within the allowed clock skew (of the ledger's clock) a sale time is fine, and 500
        // lines are.
        record(&l, at("r-skew", now + Duration::minutes(4)))
            .await
            .expect("a little clock skew is fine");
        record(&l, receipt("r-500", "c-4", lines(500)))
            .await
            .expect("500 lines are allowed");
        // The ledger's clock decides what is in the future.
        clock.advance(Duration::hours(1));
        record(&l, at("r-5", now + Duration::minutes(6)))
            .await
            .expect("six minutes after the old now is in the past now");
    }
}
