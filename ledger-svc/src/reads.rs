//! Reads (balance, lots, history, aggregates, receipts, totals, verify) and the due-work pass
//! that activates and expires lots and releases timed-out holds.

use chrono::{DateTime, Duration, Months, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, lookback::Span, Lookback, LotKind};
use kopilka_runtime::validate::Violations;
use rust_decimal::Decimal;

use crate::convert::{self, opt_instant, timestamp};
use crate::domain::book::{lot_state, Account, AccountState, Book};
use crate::domain::periods::{buckets, Granularity};
use crate::error::Error;
use crate::ledger::{day_of, hold_not_found, hold_state, tx_kind, Ledger, MAX_ID};
use crate::receipts::receipt_not_found;
use crate::settings::Settings;
use crate::store::LedgerTx;
use crate::{in_read_tx, in_write_tx};
use chrono_tz::Tz;

const DEFAULT_EXPIRING: i64 = 30;
/// The largest page of a list.
const MAX_PAGE: u32 = 1000;
/// Most lookback windows of one request.
const MAX_LOOKBACKS: usize = 10;
/// Most differences Verify reports, and how many when the request gives 0.
const MAX_DIFFERENCES: u32 = 10_000;
const DEFAULT_DIFFERENCES: u32 = 100;
/// Most items one ProcessDueLots call processes, and how many when it gives 0.
const MAX_DUE_ITEMS: u32 = 100_000;
const DEFAULT_DUE_ITEMS: u32 = 10_000;

fn expiring_within(d: &Option<pbjson_types::Duration>) -> Duration {
    d.as_ref()
        .filter(|d| d.seconds > 0)
        .map_or(Duration::days(DEFAULT_EXPIRING), |d| {
            Duration::seconds(d.seconds)
        })
}

/// The page size of a list: 0 is `default`, 1 to [`MAX_PAGE`] as asked.
fn page(v: &mut Violations, size: i32, default: u32) -> i64 {
    i64::from(v.page_size("page_size", size, default, MAX_PAGE))
}

/// The position a `page_token` of a keyset-paged list stands for: the id of the previous page's
/// last row (empty: the first page). A page costs what it returns however deep it is, and rows
/// written meanwhile never shift it.
fn after_token<'a>(v: &mut Violations, token: &'a str) -> Option<&'a str> {
    if token.is_empty() {
        return None;
    }
    if token.len() > MAX_ID || !token.bytes().all(|b| b.is_ascii_graphic()) {
        v.page_token_invalid("page_token");
        return None;
    }
    Some(token)
}

/// A ListHistory `page_token`: the id of the last transaction of the previous page.
fn history_token(v: &mut Violations, token: &str) {
    let is_id = uuid::Uuid::try_parse(token).is_ok_and(|id| id.to_string() == token);
    if !token.is_empty() && !is_id {
        v.page_token_invalid("page_token");
    }
}

/// At most `max` (LIMIT_EXCEEDED above); 0 is `default`.
fn at_most(v: &mut Violations, field: &str, value: u32, default: u32, max: u32, what: &str) -> u32 {
    match value {
        0 => default,
        n if n > max => {
            v.limit(field, max, what);
            max
        }
        n => n,
    }
}

/// The start of a trailing window ending at `as_of`.
pub fn window_start(lookback: &Lookback, as_of: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    match lookback.span {
        Some(Span::Days(d)) if (1..=3660).contains(&d) => Ok(as_of - Duration::days(i64::from(d))),
        Some(Span::Months(m)) if (1..=120).contains(&m) => as_of
            .checked_sub_months(Months::new(m))
            .ok_or_else(|| Error::invalid("lookbacks", "window out of range")),
        _ => Err(Error::invalid(
            "lookbacks",
            "days 1 to 3660 or months 1 to 120",
        )),
    }
}

impl Ledger {
    /// A customer's balance at `now`, with due activations and expiries applied in memory even
    /// if the background job has not run yet.
    pub(crate) async fn read_balance(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        customer: &str,
        s: &Settings,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<pb::Balance, Error> {
        let book = Self::read_book(tx, merchant, customer, now).await?;
        let mut balance = convert::balance(&book.account, book.lots(), s, now, window);
        balance.stamps = Self::stamp_balances(tx, merchant, customer).await?;
        Ok(balance)
    }

    async fn read_book(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> Result<Book, Error> {
        let account = tx
            .account(merchant, customer)
            .await?
            .unwrap_or(AccountState {
                customer_id: customer.to_owned(),
                ..Default::default()
            });
        let lots = tx.open_lots(merchant, customer).await?;
        let mut book = Book::new(account, lots, now);
        book.activate_due();
        book.expire_due();
        Ok(book)
    }

    /// The violations of a read's merchant and customer ids.
    fn ids(merchant: &str, customer: &str) -> Violations {
        let mut v = Violations::new();
        v.id("merchant_id", merchant, MAX_ID, true);
        v.id("customer_id", customer, MAX_ID, true);
        v
    }

    pub async fn get_balance(
        &self,
        r: &pb::GetBalanceRequest,
    ) -> Result<pb::GetBalanceResponse, Error> {
        Self::ids(&r.merchant_id, &r.customer_id).check()?;
        let now = self.now();
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let balance = self.read_balance(tx, &r.merchant_id, &r.customer_id, &s, now, expiring_within(&r.expiring_within)).await?;
            Ok(pb::GetBalanceResponse { balance: Some(balance) })
        })
    }

    /// Turnover and purchases in `[from, as_of]`: whole days inside the window from the daily
    /// buckets, the two partial edge days from that customer's receipts (an indexed range of at
    /// most two days), so a window costs at most one row per day and ends exactly at `as_of`.
    async fn window(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        customer: &str,
        from: DateTime<Utc>,
        as_of: DateTime<Utc>,
    ) -> Result<(Decimal, i64), Error> {
        let (first, last) = (day_of(from), day_of(as_of));
        if first == last {
            return Ok(tx
                .receipts_turnover(merchant, customer, from, as_of)
                .await?);
        }
        let day_start = |d: i64| DateTime::from_timestamp(d * 86_400, 0).unwrap_or(from);
        let (mut turnover, mut count) = tx
            .receipts_turnover(
                merchant,
                customer,
                from,
                day_start(first + 1) - Duration::microseconds(1),
            )
            .await?;
        let (t, c) = tx
            .receipts_turnover(merchant, customer, day_start(last), as_of)
            .await?;
        turnover += t;
        count += c;
        if last - first > 1 {
            let (t, c) = tx
                .window_turnover(merchant, customer, first + 1, last - 1)
                .await?;
            turnover += t;
            count += c;
        }
        Ok((turnover, count))
    }

    async fn aggregates(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        account: &AccountState,
        lookbacks: &[Lookback],
        as_of: DateTime<Utc>,
        s: &Settings,
    ) -> Result<types::PurchaseAggregates, Error> {
        let mut windows = Vec::new();
        for lookback in lookbacks {
            let from = window_start(lookback, as_of)?;
            let (turnover, count) =
                Self::window(tx, merchant, &account.customer_id, from, as_of).await?;
            windows.push(types::WindowAggregate {
                lookback: Some(*lookback),
                turnover: s.money(turnover),
                purchase_count: count.max(0) as u64,
            });
        }
        Ok(types::PurchaseAggregates {
            as_of: Some(timestamp(as_of)),
            lifetime_turnover: s.money(account.lifetime_turnover),
            purchase_count: account.purchase_count.max(0) as u64,
            first_purchase_at: convert::opt_timestamp(account.first_purchase_at),
            last_purchase_at: convert::opt_timestamp(account.last_purchase_at),
            windows,
            favourite_product_id: String::new(),
            favourite_product_name: String::new(),
        })
    }

    pub async fn get_aggregates(
        &self,
        r: &pb::GetPurchaseAggregatesRequest,
    ) -> Result<pb::GetPurchaseAggregatesResponse, Error> {
        let mut v = Self::ids(&r.merchant_id, &r.customer_id);
        v.count("lookbacks", r.lookbacks.len(), MAX_LOOKBACKS);
        v.check()?;
        let as_of = opt_instant(&r.as_of, "as_of")?.unwrap_or_else(|| self.now());
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let account = tx.account(&r.merchant_id, &r.customer_id).await?.unwrap_or(AccountState { customer_id: r.customer_id.clone(), ..Default::default() });
            let mut aggregates = Self::aggregates(tx, &r.merchant_id, &account, &r.lookbacks, as_of, &s).await?;
            if r.include_favourite_product {
                let from = as_of - Duration::days(365);
                aggregates.favourite_product_id = tx.favourite_product(&r.merchant_id, &r.customer_id, from, as_of).await?.unwrap_or_default();
            }
            Ok(pb::GetPurchaseAggregatesResponse { aggregates: Some(aggregates) })
        })
    }

    pub async fn get_snapshot(
        &self,
        r: &pb::GetAccountSnapshotRequest,
    ) -> Result<pb::GetAccountSnapshotResponse, Error> {
        let mut v = Self::ids(&r.merchant_id, &r.customer_id);
        v.count("lookbacks", r.lookbacks.len(), MAX_LOOKBACKS);
        v.check()?;
        let now = self.now();
        let as_of = opt_instant(&r.as_of, "as_of")?.unwrap_or(now);
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let book = Self::read_book(tx, &r.merchant_id, &r.customer_id, now).await?;
            let aggregates = Self::aggregates(tx, &r.merchant_id, &book.account, &r.lookbacks, as_of, &s).await?;
            let mut balance = convert::balance(&book.account, book.lots(), &s, now, expiring_within(&r.expiring_within));
            balance.stamps = Self::stamp_balances(tx, &r.merchant_id, &r.customer_id).await?;
            Ok(pb::GetAccountSnapshotResponse { balance: Some(balance), aggregates: Some(aggregates) })
        })
    }

    pub async fn list_lots(&self, r: &pb::ListLotsRequest) -> Result<pb::ListLotsResponse, Error> {
        let mut v = Self::ids(&r.merchant_id, &r.customer_id);
        let limit = page(&mut v, r.page_size, 100);
        let after = after_token(&mut v, &r.page_token);
        v.check()?;
        let states: Vec<i32> = if r.states.is_empty() {
            vec![lot_state::PENDING, lot_state::ACTIVE]
        } else {
            r.states.clone()
        };
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let lots = tx.lots_in_states(&r.merchant_id, &r.customer_id, &states, limit + 1, after).await?;
            let page = &lots[..lots.len().min(limit as usize)];
            let next_page_token = match page.last() {
                Some(last) if lots.len() > page.len() => last.lot_id.clone(),
                _ => String::new(),
            };
            Ok(pb::ListLotsResponse {
                lots: page.iter().map(|l| convert::lot(l, &s)).collect(),
                next_page_token,
            })
        })
    }

    pub async fn list_history(
        &self,
        r: &pb::ListHistoryRequest,
    ) -> Result<pb::ListHistoryResponse, Error> {
        let mut v = Self::ids(&r.merchant_id, &r.customer_id);
        let limit = page(&mut v, r.page_size, 50);
        history_token(&mut v, &r.page_token);
        v.check()?;
        let (period_start, period_end) = convert::period_bounds(&r.period, "period")?;
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let mut before = r.page_token.clone();
            let mut out = Vec::new();
            let mut next = String::new();
            // Filters apply after the page is read, so keep reading until the page is full.
            'pages: loop {
                let batch = tx.history(&r.merchant_id, &r.customer_id, (!before.is_empty()).then_some(before.as_str()), limit, r.include_entries).await?;
                let exhausted = (batch.len() as i64) < limit;
                for t in batch {
                    before = t.record.transaction_id.clone();
                    let rec = &t.record;
                    let in_period = period_start.is_none_or(|p| rec.occurred_at >= p) && period_end.is_none_or(|p| rec.occurred_at < p);
                    if !in_period || (!r.kinds.is_empty() && !r.kinds.contains(&rec.kind)) {
                        continue;
                    }
                    out.push(pb::Transaction {
                        transaction_id: rec.transaction_id.clone(),
                        customer_id: rec.customer_id.clone(),
                        kind: rec.kind,
                        amount: s.points(rec.amount),
                        balance_after: s.points(rec.balance_after),
                        occurred_at: Some(timestamp(rec.occurred_at)),
                        recorded_at: Some(timestamp(rec.recorded_at)),
                        receipt_id: rec.receipt_id.clone(),
                        refund_id: rec.refund_id.clone(),
                        hold_id: rec.hold_id.clone(),
                        request_id: rec.request_id.clone(),
                        description: rec.description.clone(),
                        entries: t.entries.iter().map(|e| pb::Entry {
                            account: if e.account.is_customer() { format!("customer:{}:{}", e.customer_id, e.account.name()) } else { format!("merchant:{}", e.account.name()) },
                            amount: s.points(e.amount),
                            lot_id: e.lot_id.clone(),
                        }).collect(),
                    });
                    if out.len() as i64 == limit {
                        next = before.clone();
                        break 'pages;
                    }
                }
                if exhausted {
                    break;
                }
            }
            Ok(pb::ListHistoryResponse { transactions: out, next_page_token: next })
        })
    }

    pub async fn get_hold(&self, r: &pb::GetHoldRequest) -> Result<pb::GetHoldResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.id("hold_id", &r.hold_id, MAX_ID, true);
        v.check()?;
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let hold = tx.hold(&r.merchant_id, &r.hold_id).await?.ok_or_else(|| hold_not_found(&r.hold_id))?;
            Ok(pb::GetHoldResponse { hold: Some(convert::hold(&hold, &s)) })
        })
    }

    pub async fn get_receipt(
        &self,
        r: &pb::GetReceiptRequest,
    ) -> Result<pb::GetReceiptResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.id("receipt_id", &r.receipt_id, MAX_ID, true);
        v.check()?;
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let row = tx.receipt(&r.merchant_id, &r.receipt_id).await?.ok_or_else(|| receipt_not_found(&r.receipt_id))?;
            Ok(pb::GetReceiptResponse { receipt: Some(self.receipt_with_refunds(tx, &r.merchant_id, &row).await?) })
        })
    }

    pub async fn list_receipts(
        &self,
        r: &pb::ListReceiptsRequest,
    ) -> Result<pb::ListReceiptsResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        let limit = page(&mut v, r.page_size, 100);
        let after = after_token(&mut v, &r.page_token);
        v.check()?;
        let (from, to) = convert::period_bounds(&r.period, "period")?;
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let rows = tx.list_receipts(&r.merchant_id, &r.customer_id, &r.store_id, from, to, limit + 1, after).await?;
            let more = rows.len() as i64 > limit;
            let next_page_token = match rows.get(limit as usize - 1) {
                Some(last) if more => last.receipt_id.clone(),
                _ => String::new(),
            };
            let mut receipts = Vec::new();
            for row in rows.iter().take(limit as usize) {
                let mut receipt = self.receipt_with_refunds(tx, &r.merchant_id, row).await?;
                if !r.include_lines {
                    receipt.lines.clear();
                }
                receipts.push(receipt);
            }
            Ok(pb::ListReceiptsResponse { receipts, next_page_token })
        })
    }

    pub async fn merchant_totals(
        &self,
        r: &pb::GetMerchantTotalsRequest,
    ) -> Result<pb::GetMerchantTotalsResponse, Error> {
        let mut v = Violations::new();
        v.id("merchant_id", &r.merchant_id, MAX_ID, true);
        v.check()?;
        let period = r.period.unwrap_or_default();
        let (Some(from), Some(to)) = (
            opt_instant(&period.start, "period.start")?,
            opt_instant(&period.end, "period.end")?,
        ) else {
            return Err(Error::invalid("period", "both start and end are required"));
        };
        if to <= from || to - from > Duration::days(3 * 366) {
            return Err(Error::invalid("period", "end after start, at most 3 years"));
        }
        let granularity = match pb::Granularity::try_from(r.granularity) {
            Ok(pb::Granularity::Day) => Granularity::Day,
            Ok(pb::Granularity::Week) => Granularity::Week,
            Ok(pb::Granularity::Month) => Granularity::Month,
            Ok(_) => Granularity::Total,
            Err(_) => return Err(Error::invalid("granularity", "unknown granularity")),
        };
        let tz: Tz = if r.time_zone.is_empty() {
            Tz::UTC
        } else {
            r.time_zone.parse().map_err(|_| {
                Error::invalid("time_zone", "not an IANA time zone such as Europe/Moscow")
            })?
        };
        let periods = buckets(from, to, granularity, tz);
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let s = Self::settings(tx, &r.merchant_id).await?;
            let mut out = Vec::with_capacity(periods.len());
            for (from, to) in periods {
                out.push(Self::totals_bucket(tx, &r.merchant_id, &r.store_id, from, to, &s).await?);
            }
            let outstanding = tx.outstanding(&r.merchant_id).await?;
            Ok(pb::GetMerchantTotalsResponse { buckets: out, outstanding_points: s.points(outstanding) })
        })
    }

    /// One bucket of merchant totals: lots say what was given and why; system accounts what was
    /// spent, expired, reversed or restored.
    async fn totals_bucket(
        tx: &mut dyn LedgerTx,
        merchant: &str,
        store: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        s: &Settings,
    ) -> Result<pb::TotalsBucket, Error> {
        let sums = tx.system_totals(merchant, store, from, to).await?;
        let get = |a: Account| {
            sums.iter()
                .find(|(n, _)| n == a.name())
                .map_or(Decimal::ZERO, |(_, v)| *v)
        };
        let by_kind = tx.lot_totals(merchant, store, from, to).await?;
        let kinds = |ks: &[LotKind]| {
            by_kind
                .iter()
                .filter(|(k, _)| ks.iter().any(|x| *x as i32 == *k))
                .map(|(_, v)| *v)
                .sum::<Decimal>()
        };
        let (receipts, turnover, discount, customers) =
            tx.receipt_totals(merchant, store, from, to).await?;
        Ok(pb::TotalsBucket {
            period: Some(types::Period {
                start: Some(timestamp(from)),
                end: Some(timestamp(to)),
            }),
            points_accrued: s.points(kinds(&[
                LotKind::Purchase,
                LotKind::Cashback,
                LotKind::Migration,
            ])),
            points_gifted: s.points(kinds(&[LotKind::Gift, LotKind::Action])),
            points_referral: s.points(kinds(&[LotKind::Referral])),
            points_redeemed: s.points(get(Account::Redeemed)),
            points_expired: s.points(get(Account::Expired)),
            points_reversed: s.points(get(Account::Reversed)),
            points_restored: s.points(-get(Account::Restored)),
            points_adjusted: s.points(-get(Account::Adjusted)),
            receipts: receipts.max(0) as u64,
            turnover: s.money(turnover),
            discount: s.money(discount),
            active_customers: customers.max(0) as u64,
        })
    }

    /// Recomputes every balance from the journal and from the lots and reports differences.
    pub async fn verify(&self, r: &pb::VerifyRequest) -> Result<pb::VerifyResponse, Error> {
        let started = std::time::Instant::now();
        let mut v = Violations::new();
        let max = at_most(
            &mut v,
            "max_differences",
            r.max_differences,
            DEFAULT_DIFFERENCES,
            MAX_DIFFERENCES,
            "differences",
        ) as usize;
        v.check()?;
        let now = self.now();
        in_read_tx!(&self.db(), tx => {
            let tx: &mut dyn LedgerTx = &mut tx;
            let merchants = if r.merchant_id.is_empty() { tx.merchants().await? } else { vec![r.merchant_id.clone()] };
            let mut out = pb::VerifyResponse::default();
            for merchant in merchants {
                let s = Self::settings(tx, &merchant).await?;
                let only: Vec<Option<&str>> = if r.customer_ids.is_empty() { vec![None] } else { r.customer_ids.iter().map(|c| Some(c.as_str())).collect() };
                for customer in only {
                    let journal = tx.journal_balances(&merchant, customer).await?;
                    for account in tx.accounts(&merchant, customer).await? {
                        out.accounts_checked += 1;
                        let sum = |a: Account| journal.iter().find(|(c, n, _)| c == &account.customer_id && n == a.name()).map_or(Decimal::ZERO, |(_, _, v)| *v);
                        let mut diff = |field: &str, projected: Decimal, recomputed: Decimal| {
                            if projected != recomputed {
                                out.differences.push(pb::BalanceDifference { customer_id: account.customer_id.clone(), field: field.to_owned(), projected: s.points(projected), recomputed: s.points(recomputed) });
                            }
                        };
                        diff("available", account.available, sum(Account::Available));
                        diff("pending", account.pending, sum(Account::Pending));
                        diff("held", account.held, sum(Account::Held));
                        let lots = tx.open_lots(&merchant, &account.customer_id).await?;
                        let book = Book::new(account.clone(), lots, now);
                        let free = book.free_points();
                        let expected_free = account.available.max(Decimal::ZERO);
                        diff("lots:free", expected_free, free);
                        let pending: Decimal = book.lots().iter().filter(|l| l.state == lot_state::PENDING).map(|l| l.remaining).sum();
                        diff("lots:pending", account.pending, pending);
                        let held: Decimal = book.lots().iter().map(|l| l.held).sum();
                        diff("lots:held", account.held, held);
                        if out.differences.len() >= max {
                            break;
                        }
                    }
                }
                for (transaction_id, sum) in tx.unbalanced_transactions(&merchant).await? {
                    out.differences.push(pb::BalanceDifference { customer_id: String::new(), field: format!("transaction:{transaction_id}"), projected: "0".to_owned(), recomputed: s.points(sum) });
                }
                out.transactions_checked += tx.transaction_count(&merchant).await?.max(0) as u64;
            }
            out.differences.truncate(max);
            out.ok = out.differences.is_empty();
            let elapsed = started.elapsed();
            out.elapsed = Some(pbjson_types::Duration { seconds: elapsed.as_secs() as i64, nanos: elapsed.subsec_nanos() as i32 });
            Ok(out)
        })
    }

    /// Activates, expires and releases what is due for up to `max_items` customers of each
    /// merchant; each customer in its own short transaction. Safe on several replicas: the
    /// account lock serialises them and the work is idempotent by nature.
    pub async fn process_due(
        &self,
        merchant: Option<&str>,
        as_of: Option<DateTime<Utc>>,
        max_items: u32,
    ) -> Result<pb::ProcessDueLotsResponse, Error> {
        let now = as_of.unwrap_or_else(|| self.now()).min(self.now());
        let mut v = Violations::new();
        let limit = at_most(
            &mut v,
            "max_items",
            max_items,
            DEFAULT_DUE_ITEMS,
            MAX_DUE_ITEMS,
            "items",
        ) as i64;
        v.check()?;
        let merchants: Vec<String> = match merchant {
            Some(m) => vec![m.to_owned()],
            None => {
                in_read_tx!(&self.db(), tx => { let tx: &mut dyn LedgerTx = &mut tx; Ok::<_, Error>(tx.merchants().await?) })?
            }
        };
        let mut out = pb::ProcessDueLotsResponse::default();
        for merchant in merchants {
            let customers = in_read_tx!(&self.db(), tx => {
                let tx: &mut dyn LedgerTx = &mut tx;
                Ok::<_, Error>(tx.customers_with_due_work(&merchant, now, limit + 1).await?)
            })?;
            out.more |= customers.len() as i64 > limit;
            for customer in customers.iter().take(limit as usize) {
                let (activated, expired, released) = in_write_tx!(&self.db(), tx => {
                    let tx: &mut dyn LedgerTx = &mut tx;
                    self.process_customer(tx, &merchant, customer, now).await
                })?;
                out.activated += activated;
                out.expired += expired;
                out.holds_released += released;
            }
            let (notices, more) = in_write_tx!(&self.db(), tx => {
                let tx: &mut dyn LedgerTx = &mut tx;
                self.expiry_notices(tx, &merchant, now, limit).await
            })?;
            out.expiry_notices += notices;
            out.more |= more;
        }
        Ok(out)
    }

    /// Emits one PointsExpiring event per lot entering the notice window; prunes idempotency
    /// records past their retention.
    async fn expiry_notices(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<(u64, bool), Error> {
        let s = Self::settings(tx, merchant).await?;
        tx.prune_idempotency(
            merchant,
            now - Duration::from_std(s.idempotency_retention).unwrap_or(Duration::days(30)),
        )
        .await?;
        if s.expiry_notice.is_zero() {
            return Ok((0, false));
        }
        let until = now + Duration::from_std(s.expiry_notice).unwrap_or(Duration::days(7));
        let claimed = tx.claim_expiry_notices(merchant, until, limit).await?;
        let mut events = Vec::with_capacity(claimed.len());
        for (customer, lot_id, remaining, expires_at) in &claimed {
            let payload = types::event::Payload::PointsExpiring(types::PointsExpiring {
                amount: s.points(*remaining),
                expires_at: Some(timestamp(*expires_at)),
                lot_id: lot_id.clone(),
                balance: String::new(),
            });
            events.push(Self::event(merchant, customer, lot_id, payload, now));
        }
        tx.insert_events(merchant, &events, now).await?;
        Ok((claimed.len() as u64, claimed.len() as i64 >= limit))
    }

    async fn process_customer(
        &self,
        tx: &mut dyn LedgerTx,
        merchant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64, u64), Error> {
        let account = tx.lock_account(merchant, customer, now).await?;
        let lots = tx.open_lots(merchant, customer).await?;
        let mut book = Book::new(account, lots, now);
        let mut released = 0;
        for mut hold in tx.expired_holds(merchant, customer, now).await? {
            self.end_hold(
                tx,
                merchant,
                &mut hold,
                &mut book,
                Decimal::ZERO,
                hold_state::EXPIRED,
                now,
            )
            .await?;
            released += 1;
        }
        let activated = book.activate_due();
        let (expired, _) = book.expire_due();
        if book.entries().is_empty() && released == 0 {
            return Ok((activated as u64, expired as u64, released));
        }
        let kind = if expired > 0 {
            tx_kind::EXPIRY
        } else if activated > 0 {
            tx_kind::ACTIVATION
        } else {
            tx_kind::HOLD_RELEASE
        };
        Self::save(
            tx,
            merchant,
            &book,
            kind,
            now,
            now,
            ("", "", ""),
            "",
            "scheduled: activation, expiry, hold time-outs",
        )
        .await?;
        let s = Self::settings(tx, merchant).await?;
        let mut events = Vec::new();
        let expired_lots: Vec<(String, Decimal)> = book
            .entries()
            .iter()
            .filter(|e| e.account == Account::Expired)
            .map(|e| (e.lot_id.clone(), e.amount))
            .collect();
        for (lot_id, amount) in expired_lots {
            let payload = types::event::Payload::PointsExpired(types::PointsExpired {
                amount: s.points(amount),
                lot_id: lot_id.clone(),
                balance_after: s.points(book.account.available),
            });
            events.push(Self::event(merchant, customer, &lot_id, payload, now));
        }
        tx.insert_events(merchant, &events, now).await?;
        Ok((activated as u64, expired as u64, released))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::testing::*;

    #[tokio::test]
    async fn missing_things_are_named() {
        let (l, _) = ledger().await;
        let hold = pb::GetHoldRequest {
            merchant_id: M.into(),
            hold_id: "h-missing".into(),
        };
        let receipt = pb::GetReceiptRequest {
            merchant_id: M.into(),
            receipt_id: "r-missing".into(),
        };
        check(vec![
            (
                "no such hold",
                refusal(l.get_hold(&hold).await),
                answer(Code::NotFound, "HOLD_NOT_FOUND", &[]),
            ),
            (
                "no such receipt",
                refusal(l.get_receipt(&receipt).await),
                answer(
                    Code::NotFound,
                    "RECEIPT_NOT_FOUND",
                    &[("receipt_id", "r-missing")],
                ),
            ),
        ]);
    }

    /// Page tokens not returned by the call are PAGE_TOKEN_INVALID; page and batch sizes
    /// above their documented limits are LIMIT_EXCEEDED naming the field and the limit.
    #[tokio::test]
    async fn lists_refuse_foreign_tokens_and_oversized_pages() {
        let (l, _) = ledger().await;
        let c = "c-1";
        accrue(&l, M, c, "1").await;
        accrue(&l, M, c, "2").await;
        let receipts = |page_size: i32, page_token: &str| pb::ListReceiptsRequest {
            merchant_id: M.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        };
        let lots = |page_token: &str| pb::ListLotsRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            page_token: page_token.into(),
            ..Default::default()
        };
        let history = |page_size: i32, page_token: &str| pb::ListHistoryRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        };
        let activity =
            |filter: pb::ActivityFilter, page_token: &str| pb::ListCustomerActivityRequest {
                merchant_id: M.into(),
                filter: Some(filter),
                page_token: page_token.into(),
                ..Default::default()
            };
        let many_stores = pb::ActivityFilter {
            store_ids: (0..1001).map(|i| format!("s-{i}")).collect(),
            ..Default::default()
        };
        let aggregates = pb::GetPurchaseAggregatesRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            lookbacks: (1..=11)
                .map(|d| Lookback {
                    span: Some(Span::Days(d)),
                })
                .collect(),
            ..Default::default()
        };
        let verify = pb::VerifyRequest {
            merchant_id: M.into(),
            max_differences: 10_001,
            ..Default::default()
        };
        let token_invalid = answer(Code::InvalidArgument, "PAGE_TOKEN_INVALID", &[]);
        let none = pb::ActivityFilter::default;
        check_invalid(vec![
            (
                "receipts: a token that is no receipt id",
                invalid(l.list_receipts(&receipts(0, "not a token")).await),
                token_invalid.clone(),
                &["page_token"],
            ),
            (
                "lots: a token that is no lot id",
                invalid(l.list_lots(&lots(&"x".repeat(129))).await),
                token_invalid.clone(),
                &["page_token"],
            ),
            (
                "history: a token that is not a transaction id",
                invalid(l.list_history(&history(0, "zz")).await),
                token_invalid.clone(),
                &["page_token"],
            ),
            (
                "activity: a token that is not an offset",
                invalid(l.list_activity(&activity(none(), "x")).await),
                token_invalid.clone(),
                &["page_token"],
            ),
            (
                "receipts: a page of 1001",
                invalid(l.list_receipts(&receipts(1001, "")).await),
                limit_exceeded("page_size", "1000"),
                &["page_size"],
            ),
            (
                "history: a negative page size",
                invalid(l.list_history(&history(-1, "")).await),
                answer(Code::InvalidArgument, "VALIDATION_FAILED", &[]),
                &["page_size"],
            ),
            (
                "activity: 1001 stores",
                invalid(l.list_activity(&activity(many_stores, "")).await),
                limit_exceeded("filter.store_ids", "1000"),
                &["filter.store_ids"],
            ),
            (
                "aggregates: 11 lookbacks",
                invalid(l.get_aggregates(&aggregates).await),
                limit_exceeded("lookbacks", "10"),
                &["lookbacks"],
            ),
            (
                "verify: 10 001 differences",
                invalid(l.verify(&verify).await),
                limit_exceeded("max_differences", "10000"),
                &["max_differences"],
            ),
            (
                "due work: 100 001 items",
                invalid(l.process_due(Some(M), None, 100_001).await),
                limit_exceeded("max_items", "100000"),
                &["max_items"],
            ),
        ]);
        // The tokens the lists return are accepted.
        let first = l.list_history(&history(1, "")).await.unwrap();
        assert_eq!(first.transactions.len(), 1);
        let second = l
            .list_history(&history(1, &first.next_page_token))
            .await
            .unwrap();
        assert_eq!(second.transactions.len(), 1);
        assert_ne!(
            first.transactions[0].transaction_id,
            second.transactions[0].transaction_id
        );
        let page = l.list_lots(&lots("")).await.unwrap();
        assert!(page.next_page_token.is_empty());
    }

    /// Page tokens are positions: a row written between two pages in front of the position
    /// neither repeats a row on the next page nor skips one (an offset would shift by it).
    #[tokio::test]
    async fn pages_are_positions_not_offsets() {
        let (l, clock) = ledger().await;
        let c = "c-pages";
        let now = crate::domain::clock::Clock::now(&clock);
        for (k, id) in ["r-1", "r-2", "r-3"].into_iter().enumerate() {
            let mut r = receipt(id, c, vec![line("1", "10.00", "1", "0", "1")]);
            r.occurred_at = Some(ts(now - chrono::Duration::minutes(10 - k as i64)));
            record(&l, r).await.unwrap();
        }
        let list = |page_token: &str| pb::ListReceiptsRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            page_size: 2,
            page_token: page_token.into(),
            ..Default::default()
        };
        let ids = |page: &pb::ListReceiptsResponse| -> Vec<String> {
            page.receipts.iter().map(|r| r.receipt_id.clone()).collect()
        };
        let first = l.list_receipts(&list("")).await.unwrap();
        assert_eq!(ids(&first), ["r-3", "r-2"]);
        // A newer sale arrives between the pages: it sorts in front of the position.
        let mut newer = receipt("r-4", c, vec![line("1", "10.00", "1", "0", "1")]);
        newer.occurred_at = Some(ts(now));
        record(&l, newer).await.unwrap();
        let second = l
            .list_receipts(&list(&first.next_page_token))
            .await
            .unwrap();
        assert_eq!(ids(&second), ["r-1"]);
        assert_eq!(second.next_page_token, "");

        // Lots: soonest expiry first; one expiring sooner than all arrives between pages.
        let grant = |amount: &str, days: i64| pb::AccrueRequest {
            merchant_id: M.into(),
            request_id: rid(),
            customer_id: c.into(),
            grant: Some(types::PointsGrant {
                amount: amount.into(),
                kind: LotKind::Purchase as i32,
                expires_at: Some(ts(now + chrono::Duration::days(days))),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (amount, days) in [("5", 30), ("6", 40)] {
            l.accrue_points(&grant(amount, days)).await.unwrap();
        }
        let lots = |page_token: &str| pb::ListLotsRequest {
            merchant_id: M.into(),
            customer_id: c.into(),
            page_size: 2,
            page_token: page_token.into(),
            ..Default::default()
        };
        let amounts = |page: &pb::ListLotsResponse| -> Vec<String> {
            page.lots.iter().map(|l| l.amount.clone()).collect()
        };
        let first = l.list_lots(&lots("")).await.unwrap();
        // The four receipts' 1-point lots never expire: they come last.
        assert_eq!(amounts(&first), ["5", "6"]);
        l.accrue_points(&grant("7", 1)).await.unwrap();
        let second = l.list_lots(&lots(&first.next_page_token)).await.unwrap();
        assert_eq!(amounts(&second), ["1", "1"]);
        let third = l.list_lots(&lots(&second.next_page_token)).await.unwrap();
        assert_eq!(amounts(&third), ["1", "1"]);
        assert_eq!(third.next_page_token, "");
    }
}
