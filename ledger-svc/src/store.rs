//! The only SQL of ledger-svc. [`LedgerTx`] is what an operation may do inside one database
//! transaction; it is implemented once, by a macro, for a PostgreSQL and a SQLite transaction,
//! so every query is written once. The dialects differ only in row locks (`FOR UPDATE` and
//! `SKIP LOCKED` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serialises writers) and in how
//! the writes [`Tx`] keeps back are sent (one statement on PostgreSQL, see [`Write`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kopilka_runtime::{Amount, Timestamp};
use rust_decimal::Decimal;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use crate::domain::book::{AccountState, Entry, Lot};

/// How a request id was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: this transaction performs the operation.
    New,
    /// Done before: the operation, the request digest and the stored answer.
    Done {
        operation: String,
        request_hash: Vec<u8>,
        response: Vec<u8>,
    },
}

/// A journal transaction's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRecord {
    pub transaction_id: String,
    pub customer_id: String,
    pub kind: i32,
    pub amount: Decimal,
    pub balance_after: Decimal,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub receipt_id: String,
    pub refund_id: String,
    pub hold_id: String,
    pub request_id: String,
    pub description: String,
}

/// A hold as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub hold_id: String,
    pub customer_id: String,
    pub amount: Decimal,
    pub committed_amount: Decimal,
    pub state: i32,
    pub reference: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
}

/// A receipt as stored (the document is the encoded `kopilka.ledger.v1.Receipt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    pub receipt_id: String,
    pub customer_id: String,
    pub content_hash: Vec<u8>,
    pub document: Vec<u8>,
    pub refunded_amount: Decimal,
    pub refund_state: i32,
    pub transaction_id: String,
}

/// What a receipt line sold (for segments and favourite products).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoldLine {
    pub line_id: String,
    pub product_id: String,
    pub category_ids: Vec<String>,
}

/// A customer's purchase activity over a window (segments, RFM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    pub customer_id: String,
    pub turnover: Decimal,
    pub purchases: i64,
    pub last_day: i64,
}

/// What has been refunded of a line so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineRefunded {
    pub line_id: String,
    pub quantity: Decimal,
    pub amount: Decimal,
    pub points_reversed: Decimal,
    pub points_restored: Decimal,
}

/// One journal transaction with its entries (history, verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxWithEntries {
    pub record: TxRecord,
    pub entries: Vec<Entry>,
}

/// The database work of one operation, inside one transaction.
#[async_trait]
pub trait LedgerTx: Send {
    /// Registers `request_id` for this operation, or returns what it did before. Concurrent
    /// duplicates wait here for the first to commit.
    async fn claim_request(
        &mut self,
        merchant: &str,
        request_id: &str,
        operation: &str,
        hash: &[u8],
        now: DateTime<Utc>,
    ) -> sqlx::Result<Claim>;
    /// Stores the answer of a claimed request.
    async fn finish_request(
        &mut self,
        merchant: &str,
        request_id: &str,
        response: &[u8],
    ) -> sqlx::Result<()>;

    /// The merchant's encoded settings, if any were saved.
    async fn settings(&mut self, merchant: &str) -> sqlx::Result<Option<Vec<u8>>>;
    /// Saves the merchant's encoded settings.
    async fn put_settings(
        &mut self,
        merchant: &str,
        settings: &[u8],
        now: DateTime<Utc>,
    ) -> sqlx::Result<()>;
    /// Whether the merchant has any journal transaction.
    async fn has_transactions(&mut self, merchant: &str) -> sqlx::Result<bool>;

    /// The customer's account row, created when missing, locked for this transaction.
    async fn lock_account(
        &mut self,
        merchant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> sqlx::Result<AccountState>;
    /// The customer's account row without locking (reads); `None` when it never had a movement.
    async fn account(
        &mut self,
        merchant: &str,
        customer: &str,
    ) -> sqlx::Result<Option<AccountState>>;
    /// The customer's pending and active lots.
    async fn open_lots(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Vec<Lot>>;
    /// The lot booked with this grant key, if any.
    async fn lot_by_grant_key(
        &mut self,
        merchant: &str,
        customer: &str,
        key: &str,
    ) -> sqlx::Result<Option<Lot>>;
    /// Lots of the customer in the given states, soonest expiry first (never-expiring last),
    /// after the lot `after` of the previous page.
    async fn lots_in_states(
        &mut self,
        merchant: &str,
        customer: &str,
        states: &[i32],
        limit: i64,
        after: Option<&str>,
    ) -> sqlx::Result<Vec<Lot>>;

    /// Persists a write: new lots, changed lots, the account row, the transaction and entries.
    async fn save(
        &mut self,
        merchant: &str,
        account: &AccountState,
        new_lots: &[Lot],
        changed_lots: &[&Lot],
        tx: &TxRecord,
        entries: &[Entry],
    ) -> sqlx::Result<()>;

    async fn insert_hold(
        &mut self,
        merchant: &str,
        hold: &HoldRow,
        allocations: &[(String, Decimal)],
    ) -> sqlx::Result<()>;
    async fn hold(&mut self, merchant: &str, hold_id: &str) -> sqlx::Result<Option<HoldRow>>;
    async fn hold_allocations(
        &mut self,
        merchant: &str,
        hold_id: &str,
    ) -> sqlx::Result<Vec<(String, Decimal)>>;
    async fn finish_hold(
        &mut self,
        merchant: &str,
        hold_id: &str,
        state: i32,
        committed: Decimal,
        at: DateTime<Utc>,
    ) -> sqlx::Result<()>;

    async fn receipt(
        &mut self,
        merchant: &str,
        receipt_id: &str,
    ) -> sqlx::Result<Option<ReceiptRow>>;
    /// Like [`LedgerTx::receipt`], locking the row for this transaction (refunds of one receipt
    /// run one at a time).
    async fn lock_receipt(
        &mut self,
        merchant: &str,
        receipt_id: &str,
    ) -> sqlx::Result<Option<ReceiptRow>>;
    #[allow(clippy::too_many_arguments)]
    async fn insert_receipt(
        &mut self,
        merchant: &str,
        row: &ReceiptRow,
        store_id: &str,
        occurred_at: DateTime<Utc>,
        recorded_at: DateTime<Utc>,
        net_amount: Decimal,
        discount: Decimal,
        lines: &[SoldLine],
    ) -> sqlx::Result<()>;
    /// Receipts, newest sale first, filtered by customer, store and sale period, after the
    /// receipt `after` of the previous page.
    #[allow(clippy::too_many_arguments)]
    async fn list_receipts(
        &mut self,
        merchant: &str,
        customer: &str,
        store: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: i64,
        after: Option<&str>,
    ) -> sqlx::Result<Vec<ReceiptRow>>;
    async fn lines_refunded(
        &mut self,
        merchant: &str,
        receipt_id: &str,
    ) -> sqlx::Result<Vec<LineRefunded>>;
    async fn update_line_refunded(
        &mut self,
        merchant: &str,
        receipt_id: &str,
        line: &LineRefunded,
    ) -> sqlx::Result<()>;
    async fn update_receipt_refund(
        &mut self,
        merchant: &str,
        receipt_id: &str,
        refunded_amount: Decimal,
        refund_state: i32,
    ) -> sqlx::Result<()>;
    async fn refund(
        &mut self,
        merchant: &str,
        receipt_id: &str,
        refund_id: &str,
    ) -> sqlx::Result<Option<(Vec<u8>, Vec<u8>)>>;
    async fn refunds(&mut self, merchant: &str, receipt_id: &str) -> sqlx::Result<Vec<Vec<u8>>>;
    async fn insert_refund(
        &mut self,
        merchant: &str,
        receipt_id: &str,
        refund_id: &str,
        hash: &[u8],
        document: &[u8],
        at: DateTime<Utc>,
    ) -> sqlx::Result<()>;
    async fn add_purchase_day(
        &mut self,
        merchant: &str,
        customer: &str,
        day: i64,
        turnover: Decimal,
        purchases: i64,
    ) -> sqlx::Result<()>;
    /// The first transaction that moved points of a lot.
    async fn lot_transaction(
        &mut self,
        merchant: &str,
        lot_id: &str,
    ) -> sqlx::Result<Option<String>>;
    /// Net turnover and count of not fully refunded receipts sold in `[from, to]`.
    async fn receipts_turnover(
        &mut self,
        merchant: &str,
        customer: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> sqlx::Result<(Decimal, i64)>;
    /// Turnover and purchase count of the customer's days in `[from_day, to_day]`.
    async fn window_turnover(
        &mut self,
        merchant: &str,
        customer: &str,
        from_day: i64,
        to_day: i64,
    ) -> sqlx::Result<(Decimal, i64)>;

    /// The earliest expiry among the lots a transaction took redeemed points from.
    async fn redeemed_from_expiry(
        &mut self,
        merchant: &str,
        transaction_id: &str,
    ) -> sqlx::Result<Option<DateTime<Utc>>>;

    /// The customer this one was merged into, if any.
    async fn merged_into(&mut self, merchant: &str, customer: &str)
        -> sqlx::Result<Option<String>>;
    /// Moves everything of `source` to `target` (lots, holds, receipts, purchase days) and marks
    /// `source` merged; returns (lots moved, receipts moved).
    async fn move_customer(
        &mut self,
        merchant: &str,
        source: &str,
        target: &str,
    ) -> sqlx::Result<(u64, u64)>;

    /// The customer's stamp card balances.
    async fn stamps(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Vec<(String, i64)>>;
    /// Changes a stamp card balance by `delta`; returns the new count.
    async fn add_stamps(
        &mut self,
        merchant: &str,
        customer: &str,
        card: &str,
        delta: i64,
    ) -> sqlx::Result<i64>;
    /// Per customer with purchases on days `>= from_day`: turnover, purchases, last day.
    async fn activity(&mut self, merchant: &str, from_day: i64) -> sqlx::Result<Vec<ActivityRow>>;
    /// Customers who bought one of the products or categories in `[from, to)`.
    /// Customers with a receipt at one of `stores`.
    async fn store_customers(
        &mut self,
        merchant: &str,
        stores: &[String],
    ) -> sqlx::Result<Vec<String>>;
    async fn buyers(
        &mut self,
        merchant: &str,
        products: &[String],
        categories: &[String],
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> sqlx::Result<Vec<String>>;
    /// The customer's most bought product (by line count) in `[from, to)`.
    async fn favourite_product(
        &mut self,
        merchant: &str,
        customer: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> sqlx::Result<Option<String>>;

    /// Claims (marks notified) up to `limit` active lots with unspent points expiring by
    /// `until` whose notice has not gone out; returns (customer, lot id, remaining, expires_at).
    async fn claim_expiry_notices(
        &mut self,
        merchant: &str,
        until: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<Vec<(String, String, Decimal, DateTime<Utc>)>>;
    /// Deletes idempotency records created before `before`; returns how many.
    async fn prune_idempotency(
        &mut self,
        merchant: &str,
        before: DateTime<Utc>,
    ) -> sqlx::Result<u64>;

    /// Writes domain events `(event id, encoded event)` to the outbox.
    async fn insert_events(
        &mut self,
        merchant: &str,
        events: &[(String, Vec<u8>)],
        now: DateTime<Utc>,
    ) -> sqlx::Result<()>;

    /// Customers of the merchant with pending lots due, lots due to expire, or holds timed out.
    async fn customers_with_due_work(
        &mut self,
        merchant: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> sqlx::Result<Vec<String>>;
    /// Every merchant the ledger knows.
    async fn merchants(&mut self) -> sqlx::Result<Vec<String>>;
    /// Active holds of the customer past their time-out.
    async fn expired_holds(
        &mut self,
        merchant: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> sqlx::Result<Vec<HoldRow>>;

    /// Transactions of a customer, newest first, with entries when asked.
    async fn history(
        &mut self,
        merchant: &str,
        customer: &str,
        before_id: Option<&str>,
        limit: i64,
        with_entries: bool,
    ) -> sqlx::Result<Vec<TxWithEntries>>;
    /// Σ of each customer account over the journal, per customer (Verify).
    async fn journal_balances(
        &mut self,
        merchant: &str,
        customer: Option<&str>,
    ) -> sqlx::Result<Vec<(String, String, Decimal)>>;
    /// Transactions whose entries do not sum to zero (Verify).
    async fn unbalanced_transactions(
        &mut self,
        merchant: &str,
    ) -> sqlx::Result<Vec<(String, Decimal)>>;
    /// Every account row of the merchant (or one customer) (Verify).
    async fn accounts(
        &mut self,
        merchant: &str,
        customer: Option<&str>,
    ) -> sqlx::Result<Vec<AccountState>>;
    /// Number of transactions of the merchant.
    async fn transaction_count(&mut self, merchant: &str) -> sqlx::Result<i64>;
    /// Σ of system-account entries per account name, for transactions that occurred in `[from, to)`.
    async fn system_totals(
        &mut self,
        merchant: &str,
        store: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> sqlx::Result<Vec<(String, Decimal)>>;
    /// Σ amount of lots created in `[from, to)`, per lot kind.
    async fn lot_totals(
        &mut self,
        merchant: &str,
        store: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> sqlx::Result<Vec<(i32, Decimal)>>;
    /// Receipts, turnover, discount and distinct customers of receipts sold in `[from, to)`.
    async fn receipt_totals(
        &mut self,
        merchant: &str,
        store: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> sqlx::Result<(i64, Decimal, Decimal, i64)>;
    /// Σ available + pending of every customer (outstanding points).
    async fn outstanding(&mut self, merchant: &str) -> sqlx::Result<Decimal>;
}

#[derive(sqlx::FromRow)]
struct LotRow {
    lot_id: String,
    customer_id: String,
    kind: i32,
    action: i32,
    amount: Amount,
    remaining: Amount,
    held: Amount,
    state: i32,
    activates_at: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    created_at: Timestamp,
    receipt_id: Option<String>,
    grant_key: Option<String>,
    rule_ids: String,
}

impl From<LotRow> for Lot {
    fn from(r: LotRow) -> Self {
        Lot {
            lot_id: r.lot_id,
            customer_id: r.customer_id,
            kind: r.kind,
            action: r.action,
            amount: r.amount.0,
            remaining: r.remaining.0,
            held: r.held.0,
            state: r.state,
            activates_at: r.activates_at.map(|t| t.0),
            expires_at: r.expires_at.map(|t| t.0),
            created_at: r.created_at.0,
            receipt_id: r.receipt_id,
            grant_key: r.grant_key,
            rule_ids: r
                .rule_ids
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    customer_id: String,
    available: Amount,
    pending: Amount,
    held: Amount,
    lifetime_turnover: Amount,
    purchase_count: i64,
    first_purchase_at: Option<Timestamp>,
    last_purchase_at: Option<Timestamp>,
}

impl From<AccountRow> for AccountState {
    fn from(r: AccountRow) -> Self {
        AccountState {
            customer_id: r.customer_id,
            available: r.available.0,
            pending: r.pending.0,
            held: r.held.0,
            lifetime_turnover: r.lifetime_turnover.0,
            purchase_count: r.purchase_count,
            first_purchase_at: r.first_purchase_at.map(|t| t.0),
            last_purchase_at: r.last_purchase_at.map(|t| t.0),
        }
    }
}

#[derive(sqlx::FromRow)]
struct HoldDbRow {
    hold_id: String,
    customer_id: String,
    amount: Amount,
    committed_amount: Amount,
    state: i32,
    reference: String,
    created_at: Timestamp,
    expires_at: Timestamp,
    finalized_at: Option<Timestamp>,
}

impl From<HoldDbRow> for HoldRow {
    fn from(r: HoldDbRow) -> Self {
        HoldRow {
            hold_id: r.hold_id,
            customer_id: r.customer_id,
            amount: r.amount.0,
            committed_amount: r.committed_amount.0,
            state: r.state,
            reference: r.reference,
            created_at: r.created_at.0,
            expires_at: r.expires_at.0,
            finalized_at: r.finalized_at.map(|t| t.0),
        }
    }
}

#[derive(sqlx::FromRow)]
struct TxDbRow {
    transaction_id: String,
    customer_id: String,
    kind: i32,
    amount: Amount,
    balance_after: Amount,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    receipt_id: String,
    refund_id: String,
    hold_id: String,
    request_id: String,
    description: String,
}

impl From<TxDbRow> for TxRecord {
    fn from(r: TxDbRow) -> Self {
        TxRecord {
            transaction_id: r.transaction_id,
            customer_id: r.customer_id,
            kind: r.kind,
            amount: r.amount.0,
            balance_after: r.balance_after.0,
            occurred_at: r.occurred_at.0,
            recorded_at: r.recorded_at.0,
            receipt_id: r.receipt_id,
            refund_id: r.refund_id,
            hold_id: r.hold_id,
            request_id: r.request_id,
            description: r.description,
        }
    }
}

const LOT_COLUMNS: &str = "lot_id, customer_id, kind, action, amount, remaining, held, state, activates_at, expires_at, created_at, receipt_id, grant_key, rule_ids";
const ACCOUNT_COLUMNS: &str = "customer_id, available, pending, held, lifetime_turnover, purchase_count, first_purchase_at, last_purchase_at";
const HOLD_COLUMNS: &str = "hold_id, customer_id, amount, committed_amount, state, reference, created_at, expires_at, finalized_at";
const TX_COLUMNS: &str = "transaction_id, customer_id, kind, amount, balance_after, occurred_at, recorded_at, receipt_id, refund_id, hold_id, request_id, description";
/// Spending order: soonest expiry first, lots without expiry last.
const LOT_ORDER: &str =
    "ORDER BY CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at, created_at, lot_id";

/// Where never-expiring lots sort in a lot list (after every real expiry).
fn end_of_time() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or_default()
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp(t)
}

fn amt(d: Decimal) -> Amount {
    Amount(d)
}

/// A write whose result nothing reads back before the next statement: [`Tx`] keeps it and
/// sends all kept writes together right before the next statement or the commit — PostgreSQL as
/// one statement of data-modifying CTEs, SQLite one by one (in-process, so round trips cost
/// little there). A receipt's whole write is thus one round trip on PostgreSQL.
#[derive(Debug)]
enum Write {
    NewLots(Vec<Lot>),
    Lot(Lot),
    Account(AccountState, DateTime<Utc>),
    Transaction(TxRecord),
    Entries(String, Vec<Entry>),
    Receipt(Box<NewReceipt>),
    ReceiptLines(String, Vec<SoldLine>),
    PurchaseDay {
        customer: String,
        day: i64,
        turnover: Decimal,
        purchases: i64,
    },
    Events(Vec<(String, Vec<u8>)>, DateTime<Utc>),
    Answer {
        request_id: String,
        response: Vec<u8>,
    },
}

#[derive(Debug)]
struct NewReceipt {
    row: ReceiptRow,
    store_id: String,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    net_amount: Decimal,
    discount: Decimal,
}

impl Write {
    /// The rows this write updates in place. One statement must not update a row twice, so a
    /// write touching a row a kept write touches goes out only after the kept ones.
    fn updates(&self) -> Vec<(&'static str, &str, i64)> {
        match self {
            Write::Lot(l) => vec![("lot", &l.lot_id, 0)],
            Write::NewLots(lots) => lots.iter().map(|l| ("lot", l.lot_id.as_str(), 0)).collect(),
            Write::Account(a, _) => vec![("account", &a.customer_id, 0)],
            Write::PurchaseDay { customer, day, .. } => vec![("day", customer, *day)],
            Write::Answer { request_id, .. } => vec![("answer", request_id, 0)],
            _ => vec![],
        }
    }
}

/// Appends the SQL of one write (without a trailing `;`) to `q`.
fn push_write<'a, DB>(q: &mut QueryBuilder<'a, DB>, merchant: &'a str, write: &'a Write)
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Option<String>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a Vec<u8>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Amount: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Timestamp: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<Timestamp>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match write {
        Write::NewLots(lots) => {
            q.push(format!("INSERT INTO lots (merchant_id, {LOT_COLUMNS}) "));
            q.push_values(lots.iter(), |mut b, l| {
                b.push_bind(merchant)
                    .push_bind(&l.lot_id)
                    .push_bind(&l.customer_id)
                    .push_bind(l.kind)
                    .push_bind(l.action)
                    .push_bind(amt(l.amount))
                    .push_bind(amt(l.remaining))
                    .push_bind(amt(l.held))
                    .push_bind(l.state)
                    .push_bind(l.activates_at.map(ts))
                    .push_bind(l.expires_at.map(ts))
                    .push_bind(ts(l.created_at))
                    .push_bind(&l.receipt_id)
                    .push_bind(&l.grant_key)
                    .push_bind(l.rule_ids.join(","));
            });
        }
        Write::Lot(l) => {
            q.push("UPDATE lots SET remaining = ")
                .push_bind(amt(l.remaining))
                .push(", held = ")
                .push_bind(amt(l.held))
                .push(", state = ")
                .push_bind(l.state)
                .push(" WHERE merchant_id = ")
                .push_bind(merchant)
                .push(" AND lot_id = ")
                .push_bind(&l.lot_id);
        }
        Write::Account(a, at) => {
            q.push("UPDATE accounts SET available = ")
                .push_bind(amt(a.available))
                .push(", pending = ")
                .push_bind(amt(a.pending))
                .push(", held = ")
                .push_bind(amt(a.held))
                .push(", lifetime_turnover = ")
                .push_bind(amt(a.lifetime_turnover))
                .push(", purchase_count = ")
                .push_bind(a.purchase_count)
                .push(", first_purchase_at = ")
                .push_bind(a.first_purchase_at.map(ts))
                .push(", last_purchase_at = ")
                .push_bind(a.last_purchase_at.map(ts))
                .push(", updated_at = ")
                .push_bind(ts(*at))
                .push(" WHERE merchant_id = ")
                .push_bind(merchant)
                .push(" AND customer_id = ")
                .push_bind(&a.customer_id);
        }
        Write::Transaction(t) => {
            q.push(format!(
                "INSERT INTO transactions (merchant_id, {TX_COLUMNS}) VALUES ("
            ));
            q.separated(", ")
                .push_bind(merchant)
                .push_bind(&t.transaction_id)
                .push_bind(&t.customer_id)
                .push_bind(t.kind)
                .push_bind(amt(t.amount))
                .push_bind(amt(t.balance_after))
                .push_bind(ts(t.occurred_at))
                .push_bind(ts(t.recorded_at))
                .push_bind(&t.receipt_id)
                .push_bind(&t.refund_id)
                .push_bind(&t.hold_id)
                .push_bind(&t.request_id)
                .push_bind(&t.description);
            q.push(")");
        }
        Write::Entries(transaction_id, entries) => {
            q.push("INSERT INTO entries (merchant_id, transaction_id, entry_no, customer_id, account, amount, lot_id) ");
            q.push_values(entries.iter().enumerate(), |mut b, (i, e)| {
                b.push_bind(merchant)
                    .push_bind(transaction_id)
                    .push_bind(i as i32)
                    .push_bind(&e.customer_id)
                    .push_bind(e.account.name())
                    .push_bind(amt(e.amount))
                    .push_bind(&e.lot_id);
            });
        }
        Write::Receipt(r) => {
            q.push(
                "INSERT INTO receipts (merchant_id, receipt_id, customer_id, store_id, occurred_at, recorded_at, \
                 content_hash, document, net_amount, discount, refunded_amount, refund_state, transaction_id) VALUES (",
            );
            q.separated(", ")
                .push_bind(merchant)
                .push_bind(&r.row.receipt_id)
                .push_bind(&r.row.customer_id)
                .push_bind(&r.store_id)
                .push_bind(ts(r.occurred_at))
                .push_bind(ts(r.recorded_at))
                .push_bind(&r.row.content_hash)
                .push_bind(&r.row.document)
                .push_bind(amt(r.net_amount))
                .push_bind(amt(r.discount))
                .push_bind(amt(r.row.refunded_amount))
                .push_bind(r.row.refund_state)
                .push_bind(&r.row.transaction_id);
            q.push(")");
        }
        Write::ReceiptLines(receipt_id, lines) => {
            q.push("INSERT INTO receipt_lines (merchant_id, receipt_id, line_id, product_id, category_ids) ");
            q.push_values(lines.iter(), |mut b, l| {
                b.push_bind(merchant)
                    .push_bind(receipt_id)
                    .push_bind(&l.line_id)
                    .push_bind(&l.product_id)
                    .push_bind(l.category_ids.join(","));
            });
        }
        Write::PurchaseDay {
            customer,
            day,
            turnover,
            purchases,
        } => {
            q.push("INSERT INTO purchase_days (merchant_id, customer_id, day, turnover, purchases) VALUES (");
            q.separated(", ")
                .push_bind(merchant)
                .push_bind(customer)
                .push_bind(*day as i32)
                .push_bind(amt(*turnover))
                .push_bind(*purchases);
            q.push(
                ") ON CONFLICT (merchant_id, customer_id, day) DO UPDATE SET \
                 turnover = purchase_days.turnover + excluded.turnover, \
                 purchases = purchase_days.purchases + excluded.purchases",
            );
        }
        Write::Events(events, at) => {
            q.push("INSERT INTO outbox (merchant_id, event_id, event, created_at) ");
            q.push_values(events.iter(), |mut b, (id, event)| {
                b.push_bind(merchant)
                    .push_bind(id)
                    .push_bind(event)
                    .push_bind(ts(*at));
            });
        }
        Write::Answer {
            request_id,
            response,
        } => {
            q.push("UPDATE idempotency_keys SET response = ")
                .push_bind(response)
                .push(" WHERE merchant_id = ")
                .push_bind(merchant)
                .push(" AND request_id = ")
                .push_bind(request_id);
        }
    }
}

/// A database transaction of either engine with the writes it keeps back (see [`Write`]).
pub struct Tx<DB: sqlx::Database> {
    tx: sqlx::Transaction<'static, DB>,
    kept: Vec<(String, Write)>,
}

impl<DB: sqlx::Database> Tx<DB> {
    pub fn new(tx: sqlx::Transaction<'static, DB>) -> Self {
        Tx {
            tx,
            kept: Vec::new(),
        }
    }
}

macro_rules! impl_ledger_tx {
    ($db:ty, $for_update:expr, $skip_locked:expr, $one_round_trip:expr) => {
        impl Tx<$db> {
            /// Keeps `write` back until the next statement; first sends the kept writes when one
            /// of them updates a row this one updates too.
            async fn keep(&mut self, merchant: &str, write: Write) -> sqlx::Result<()> {
                let rows = write.updates();
                if !rows.is_empty() && self.kept.iter().any(|(_, w)| w.updates().iter().any(|r| rows.contains(r))) {
                    self.flush().await?;
                }
                self.kept.push((merchant.to_owned(), write));
                Ok(())
            }

            /// Sends the kept writes.
            async fn flush(&mut self) -> sqlx::Result<()> {
                if self.kept.is_empty() {
                    return Ok(());
                }
                let kept = std::mem::take(&mut self.kept);
                if $one_round_trip && kept.len() > 1 {
                    let mut q = QueryBuilder::<$db>::new("WITH ");
                    for (i, (merchant, write)) in kept.iter().enumerate() {
                        if i > 0 {
                            q.push(", ");
                        }
                        q.push(format!("w{i} AS ("));
                        push_write(&mut q, merchant, write);
                        q.push(" RETURNING 1)");
                    }
                    q.push(" SELECT 1");
                    q.build().execute(&mut *self.tx).await?;
                } else {
                    for (merchant, write) in &kept {
                        let mut q = QueryBuilder::<$db>::new("");
                        push_write(&mut q, merchant, write);
                        q.build().execute(&mut *self.tx).await?;
                    }
                }
                Ok(())
            }

            /// The connection for a statement, after the kept writes (so it sees them).
            async fn conn(&mut self) -> sqlx::Result<&mut <$db as sqlx::Database>::Connection> {
                self.flush().await?;
                Ok(&mut *self.tx)
            }

            /// Sends the kept writes and commits.
            pub async fn commit(mut self) -> sqlx::Result<()> {
                self.flush().await?;
                self.tx.commit().await
            }
        }

        #[async_trait]
        impl LedgerTx for Tx<$db> {
            async fn claim_request(&mut self, merchant: &str, request_id: &str, operation: &str, hash: &[u8], now: DateTime<Utc>) -> sqlx::Result<Claim> {
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (merchant_id, request_id, operation, request_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (merchant_id, request_id) DO NOTHING",
                )
                .bind(merchant).bind(request_id).bind(operation).bind(hash).bind(ts(now))
                .execute(self.conn().await?).await?.rows_affected();
                if inserted == 1 {
                    return Ok(Claim::New);
                }
                let (operation, request_hash, response): (String, Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
                    "SELECT operation, request_hash, response FROM idempotency_keys WHERE merchant_id = $1 AND request_id = $2",
                )
                .bind(merchant).bind(request_id)
                .fetch_one(self.conn().await?).await?;
                Ok(Claim::Done { operation, request_hash, response: response.unwrap_or_default() })
            }

            async fn finish_request(&mut self, merchant: &str, request_id: &str, response: &[u8]) -> sqlx::Result<()> {
                self.keep(merchant, Write::Answer { request_id: request_id.to_owned(), response: response.to_vec() }).await
            }

            async fn settings(&mut self, merchant: &str) -> sqlx::Result<Option<Vec<u8>>> {
                sqlx::query_scalar("SELECT settings FROM ledger_settings WHERE merchant_id = $1")
                    .bind(merchant).fetch_optional(self.conn().await?).await
            }

            async fn put_settings(&mut self, merchant: &str, settings: &[u8], now: DateTime<Utc>) -> sqlx::Result<()> {
                sqlx::query(
                    "INSERT INTO ledger_settings (merchant_id, settings, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (merchant_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                )
                .bind(merchant).bind(settings).bind(ts(now))
                .execute(self.conn().await?).await.map(|_| ())
            }

            async fn has_transactions(&mut self, merchant: &str) -> sqlx::Result<bool> {
                let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM transactions WHERE merchant_id = $1 LIMIT 1")
                    .bind(merchant).fetch_optional(self.conn().await?).await?;
                Ok(found.is_some())
            }

            async fn lock_account(&mut self, merchant: &str, customer: &str, now: DateTime<Utc>) -> sqlx::Result<AccountState> {
                // Lock the existing row (the common case: one statement, no new row version);
                // create it first when the customer has never had a movement.
                let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE merchant_id = $1 AND customer_id = $2{}", $for_update);
                if let Some(row) = sqlx::query_as::<_, AccountRow>(&sql).bind(merchant).bind(customer).fetch_optional(self.conn().await?).await? {
                    return Ok(row.into());
                }
                sqlx::query(
                    "INSERT INTO accounts (merchant_id, customer_id, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (merchant_id, customer_id) DO NOTHING",
                )
                .bind(merchant).bind(customer).bind(ts(now))
                .execute(self.conn().await?).await?;
                let row: AccountRow = sqlx::query_as(&sql).bind(merchant).bind(customer).fetch_one(self.conn().await?).await?;
                Ok(row.into())
            }

            async fn account(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Option<AccountState>> {
                let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE merchant_id = $1 AND customer_id = $2");
                let row: Option<AccountRow> = sqlx::query_as(&sql).bind(merchant).bind(customer).fetch_optional(self.conn().await?).await?;
                Ok(row.map(Into::into))
            }

            async fn open_lots(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Vec<Lot>> {
                let sql = format!("SELECT {LOT_COLUMNS} FROM lots WHERE merchant_id = $1 AND customer_id = $2 AND state IN (1, 2) {LOT_ORDER}");
                let rows: Vec<LotRow> = sqlx::query_as(&sql).bind(merchant).bind(customer).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn lot_by_grant_key(&mut self, merchant: &str, customer: &str, key: &str) -> sqlx::Result<Option<Lot>> {
                let sql = format!("SELECT {LOT_COLUMNS} FROM lots WHERE merchant_id = $1 AND customer_id = $2 AND grant_key = $3");
                let row: Option<LotRow> = sqlx::query_as(&sql).bind(merchant).bind(customer).bind(key).fetch_optional(self.conn().await?).await?;
                Ok(row.map(Into::into))
            }

            async fn lots_in_states(&mut self, merchant: &str, customer: &str, states: &[i32], limit: i64, after: Option<&str>) -> sqlx::Result<Vec<Lot>> {
                let mut q = QueryBuilder::<$db>::new(format!("SELECT {LOT_COLUMNS} FROM lots WHERE merchant_id = "));
                q.push_bind(merchant).push(" AND customer_id = ").push_bind(customer).push(" AND state IN (");
                let mut sep = q.separated(", ");
                for s in states {
                    sep.push_bind(*s);
                }
                q.push(")");
                // Keyset: the position of the previous page's last lot, in the list's order.
                let never = ts(end_of_time());
                if let Some(after) = after {
                    q.push(" AND (COALESCE(expires_at, ").push_bind(never).push("), created_at, lot_id) > (SELECT COALESCE(expires_at, ")
                        .push_bind(never).push("), created_at, lot_id FROM lots WHERE merchant_id = ").push_bind(merchant)
                        .push(" AND lot_id = ").push_bind(after.to_owned()).push(")");
                }
                q.push(" ORDER BY COALESCE(expires_at, ").push_bind(never).push("), created_at, lot_id LIMIT ").push_bind(limit);
                let rows: Vec<LotRow> = q.build_query_as().fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn save(&mut self, merchant: &str, account: &AccountState, new_lots: &[Lot], changed_lots: &[&Lot], tx: &TxRecord, entries: &[Entry]) -> sqlx::Result<()> {
                if !new_lots.is_empty() {
                    self.keep(merchant, Write::NewLots(new_lots.to_vec())).await?;
                }
                for lot in changed_lots {
                    self.keep(merchant, Write::Lot((*lot).clone())).await?;
                }
                self.keep(merchant, Write::Account(account.clone(), tx.recorded_at)).await?;
                self.keep(merchant, Write::Transaction(tx.clone())).await?;
                if !entries.is_empty() {
                    self.keep(merchant, Write::Entries(tx.transaction_id.clone(), entries.to_vec())).await?;
                }
                Ok(())
            }

            async fn insert_hold(&mut self, merchant: &str, h: &HoldRow, allocations: &[(String, Decimal)]) -> sqlx::Result<()> {
                sqlx::query(&format!("INSERT INTO holds (merchant_id, {HOLD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                    .bind(merchant).bind(&h.hold_id).bind(&h.customer_id).bind(amt(h.amount)).bind(amt(h.committed_amount))
                    .bind(h.state).bind(&h.reference).bind(ts(h.created_at)).bind(ts(h.expires_at)).bind(h.finalized_at.map(ts))
                    .execute(self.conn().await?).await?;
                if !allocations.is_empty() {
                    let mut q = QueryBuilder::<$db>::new("INSERT INTO hold_allocations (merchant_id, hold_id, lot_id, amount) ");
                    q.push_values(allocations, |mut b, (lot, a)| {
                        b.push_bind(merchant).push_bind(&h.hold_id).push_bind(lot).push_bind(amt(*a));
                    });
                    q.build().execute(self.conn().await?).await?;
                }
                Ok(())
            }

            async fn hold(&mut self, merchant: &str, hold_id: &str) -> sqlx::Result<Option<HoldRow>> {
                let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE merchant_id = $1 AND hold_id = $2");
                let row: Option<HoldDbRow> = sqlx::query_as(&sql).bind(merchant).bind(hold_id).fetch_optional(self.conn().await?).await?;
                Ok(row.map(Into::into))
            }

            async fn hold_allocations(&mut self, merchant: &str, hold_id: &str) -> sqlx::Result<Vec<(String, Decimal)>> {
                let rows: Vec<(String, Amount)> = sqlx::query_as(
                    "SELECT a.lot_id, a.amount FROM hold_allocations a JOIN lots l ON l.merchant_id = a.merchant_id AND l.lot_id = a.lot_id
                     WHERE a.merchant_id = $1 AND a.hold_id = $2
                     ORDER BY CASE WHEN l.expires_at IS NULL THEN 1 ELSE 0 END, l.expires_at, l.created_at, l.lot_id",
                )
                .bind(merchant).bind(hold_id).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(l, a)| (l, a.0)).collect())
            }

            async fn finish_hold(&mut self, merchant: &str, hold_id: &str, state: i32, committed: Decimal, at: DateTime<Utc>) -> sqlx::Result<()> {
                sqlx::query("UPDATE holds SET state = $3, committed_amount = $4, finalized_at = $5 WHERE merchant_id = $1 AND hold_id = $2")
                    .bind(merchant).bind(hold_id).bind(state).bind(amt(committed)).bind(ts(at))
                    .execute(self.conn().await?).await.map(|_| ())
            }

            async fn receipt(&mut self, merchant: &str, receipt_id: &str) -> sqlx::Result<Option<ReceiptRow>> {
                let row: Option<(String, String, Vec<u8>, Vec<u8>, Amount, i32, String)> = sqlx::query_as(
                    "SELECT receipt_id, customer_id, content_hash, document, refunded_amount, refund_state, transaction_id
                     FROM receipts WHERE merchant_id = $1 AND receipt_id = $2",
                )
                .bind(merchant).bind(receipt_id).fetch_optional(self.conn().await?).await?;
                Ok(row.map(|(receipt_id, customer_id, content_hash, document, refunded, refund_state, transaction_id)| ReceiptRow {
                    receipt_id, customer_id, content_hash, document, refunded_amount: refunded.0, refund_state, transaction_id,
                }))
            }

            async fn lock_receipt(&mut self, merchant: &str, receipt_id: &str) -> sqlx::Result<Option<ReceiptRow>> {
                let row: Option<(String, String, Vec<u8>, Vec<u8>, Amount, i32, String)> = sqlx::query_as(
                    "UPDATE receipts SET refund_state = refund_state WHERE merchant_id = $1 AND receipt_id = $2
                     RETURNING receipt_id, customer_id, content_hash, document, refunded_amount, refund_state, transaction_id",
                )
                .bind(merchant).bind(receipt_id).fetch_optional(self.conn().await?).await?;
                Ok(row.map(|(receipt_id, customer_id, content_hash, document, refunded, refund_state, transaction_id)| ReceiptRow {
                    receipt_id, customer_id, content_hash, document, refunded_amount: refunded.0, refund_state, transaction_id,
                }))
            }

            async fn insert_receipt(&mut self, merchant: &str, r: &ReceiptRow, store_id: &str, occurred_at: DateTime<Utc>, recorded_at: DateTime<Utc>, net_amount: Decimal, discount: Decimal, lines: &[SoldLine]) -> sqlx::Result<()> {
                let receipt = NewReceipt { row: r.clone(), store_id: store_id.to_owned(), occurred_at, recorded_at, net_amount, discount };
                self.keep(merchant, Write::Receipt(Box::new(receipt))).await?;
                if !lines.is_empty() {
                    self.keep(merchant, Write::ReceiptLines(r.receipt_id.clone(), lines.to_vec())).await?;
                }
                Ok(())
            }

            async fn list_receipts(&mut self, merchant: &str, customer: &str, store: &str, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, limit: i64, after: Option<&str>) -> sqlx::Result<Vec<ReceiptRow>> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT receipt_id, customer_id, content_hash, document, refunded_amount, refund_state, transaction_id FROM receipts WHERE merchant_id = ",
                );
                q.push_bind(merchant);
                if !customer.is_empty() {
                    q.push(" AND customer_id = ").push_bind(customer);
                }
                if !store.is_empty() {
                    q.push(" AND store_id = ").push_bind(store);
                }
                if let Some(from) = from {
                    q.push(" AND occurred_at >= ").push_bind(ts(from));
                }
                if let Some(to) = to {
                    q.push(" AND occurred_at < ").push_bind(ts(to));
                }
                // Keyset: the position of the previous page's last receipt.
                if let Some(after) = after {
                    q.push(" AND (occurred_at, receipt_id) < (SELECT occurred_at, receipt_id FROM receipts WHERE merchant_id = ")
                        .push_bind(merchant).push(" AND receipt_id = ").push_bind(after.to_owned()).push(")");
                }
                q.push(" ORDER BY occurred_at DESC, receipt_id DESC LIMIT ").push_bind(limit);
                let rows: Vec<(String, String, Vec<u8>, Vec<u8>, Amount, i32, String)> = q.build_query_as().fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(receipt_id, customer_id, content_hash, document, refunded, refund_state, transaction_id)| ReceiptRow {
                    receipt_id, customer_id, content_hash, document, refunded_amount: refunded.0, refund_state, transaction_id,
                }).collect())
            }

            async fn lines_refunded(&mut self, merchant: &str, receipt_id: &str) -> sqlx::Result<Vec<LineRefunded>> {
                let rows: Vec<(String, Amount, Amount, Amount, Amount)> = sqlx::query_as(
                    "SELECT line_id, refunded_quantity, refunded_amount, points_reversed, points_restored
                     FROM receipt_lines WHERE merchant_id = $1 AND receipt_id = $2",
                )
                .bind(merchant).bind(receipt_id).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(line_id, q, a, rv, rs)| LineRefunded {
                    line_id, quantity: q.0, amount: a.0, points_reversed: rv.0, points_restored: rs.0,
                }).collect())
            }

            async fn update_line_refunded(&mut self, merchant: &str, receipt_id: &str, l: &LineRefunded) -> sqlx::Result<()> {
                sqlx::query(
                    "UPDATE receipt_lines SET refunded_quantity = $4, refunded_amount = $5, points_reversed = $6, points_restored = $7
                     WHERE merchant_id = $1 AND receipt_id = $2 AND line_id = $3",
                )
                .bind(merchant).bind(receipt_id).bind(&l.line_id).bind(amt(l.quantity)).bind(amt(l.amount))
                .bind(amt(l.points_reversed)).bind(amt(l.points_restored))
                .execute(self.conn().await?).await.map(|_| ())
            }

            async fn update_receipt_refund(&mut self, merchant: &str, receipt_id: &str, refunded_amount: Decimal, refund_state: i32) -> sqlx::Result<()> {
                sqlx::query("UPDATE receipts SET refunded_amount = $3, refund_state = $4 WHERE merchant_id = $1 AND receipt_id = $2")
                    .bind(merchant).bind(receipt_id).bind(amt(refunded_amount)).bind(refund_state)
                    .execute(self.conn().await?).await.map(|_| ())
            }

            async fn refund(&mut self, merchant: &str, receipt_id: &str, refund_id: &str) -> sqlx::Result<Option<(Vec<u8>, Vec<u8>)>> {
                sqlx::query_as("SELECT content_hash, document FROM refunds WHERE merchant_id = $1 AND receipt_id = $2 AND refund_id = $3")
                    .bind(merchant).bind(receipt_id).bind(refund_id).fetch_optional(self.conn().await?).await
            }

            async fn refunds(&mut self, merchant: &str, receipt_id: &str) -> sqlx::Result<Vec<Vec<u8>>> {
                sqlx::query_scalar("SELECT document FROM refunds WHERE merchant_id = $1 AND receipt_id = $2 ORDER BY recorded_at, refund_id")
                    .bind(merchant).bind(receipt_id).fetch_all(self.conn().await?).await
            }

            async fn insert_refund(&mut self, merchant: &str, receipt_id: &str, refund_id: &str, hash: &[u8], document: &[u8], at: DateTime<Utc>) -> sqlx::Result<()> {
                sqlx::query("INSERT INTO refunds (merchant_id, receipt_id, refund_id, content_hash, document, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(merchant).bind(receipt_id).bind(refund_id).bind(hash).bind(document).bind(ts(at))
                    .execute(self.conn().await?).await.map(|_| ())
            }

            async fn add_purchase_day(&mut self, merchant: &str, customer: &str, day: i64, turnover: Decimal, purchases: i64) -> sqlx::Result<()> {
                self.keep(merchant, Write::PurchaseDay { customer: customer.to_owned(), day, turnover, purchases }).await
            }

            async fn lot_transaction(&mut self, merchant: &str, lot_id: &str) -> sqlx::Result<Option<String>> {
                sqlx::query_scalar("SELECT MIN(transaction_id) FROM entries WHERE merchant_id = $1 AND lot_id = $2 AND lot_id <> ''")
                    .bind(merchant).bind(lot_id).fetch_one(self.conn().await?).await
            }

            async fn receipts_turnover(&mut self, merchant: &str, customer: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<(Decimal, i64)> {
                let (turnover, count): (Option<Amount>, i64) = sqlx::query_as(
                    "SELECT SUM(net_amount - refunded_amount), COUNT(CASE WHEN refund_state <> 3 THEN 1 END) FROM receipts
                     WHERE merchant_id = $1 AND customer_id = $2 AND occurred_at >= $3 AND occurred_at <= $4",
                )
                .bind(merchant).bind(customer).bind(ts(from)).bind(ts(to)).fetch_one(self.conn().await?).await?;
                Ok((turnover.map(|a| a.0).unwrap_or_default(), count))
            }

            async fn window_turnover(&mut self, merchant: &str, customer: &str, from_day: i64, to_day: i64) -> sqlx::Result<(Decimal, i64)> {
                let (turnover, count): (Option<Amount>, Option<i64>) = sqlx::query_as(
                    "SELECT SUM(turnover), CAST(SUM(purchases) AS BIGINT) FROM purchase_days
                     WHERE merchant_id = $1 AND customer_id = $2 AND day >= $3 AND day <= $4",
                )
                .bind(merchant).bind(customer).bind(from_day as i32).bind(to_day as i32)
                .fetch_one(self.conn().await?).await?;
                Ok((turnover.map(|a| a.0).unwrap_or_default(), count.unwrap_or(0)))
            }

            async fn redeemed_from_expiry(&mut self, merchant: &str, transaction_id: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
                let earliest: Option<Timestamp> = sqlx::query_scalar(
                    "SELECT MIN(l.expires_at) FROM entries e JOIN lots l ON l.merchant_id = e.merchant_id AND l.lot_id = e.lot_id
                     WHERE e.merchant_id = $1 AND e.transaction_id = $2 AND e.account = 'redeemed'",
                )
                .bind(merchant).bind(transaction_id).fetch_one(self.conn().await?).await?;
                Ok(earliest.map(|t| t.0))
            }

            async fn merged_into(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Option<String>> {
                let found: Option<Option<String>> = sqlx::query_scalar("SELECT merged_into FROM accounts WHERE merchant_id = $1 AND customer_id = $2")
                    .bind(merchant).bind(customer).fetch_optional(self.conn().await?).await?;
                Ok(found.flatten())
            }

            async fn move_customer(&mut self, merchant: &str, source: &str, target: &str) -> sqlx::Result<(u64, u64)> {
                // A grant key the target already used (both got the start bonus) stays once-only.
                sqlx::query(
                    "UPDATE lots SET grant_key = grant_key || ':merged:' || customer_id
                     WHERE merchant_id = $1 AND customer_id = $2 AND grant_key IN
                       (SELECT grant_key FROM lots WHERE merchant_id = $1 AND customer_id = $3 AND grant_key IS NOT NULL)",
                )
                .bind(merchant).bind(source).bind(target).execute(self.conn().await?).await?;
                let lots = sqlx::query("UPDATE lots SET customer_id = $3 WHERE merchant_id = $1 AND customer_id = $2")
                    .bind(merchant).bind(source).bind(target).execute(self.conn().await?).await?.rows_affected();
                sqlx::query("UPDATE holds SET customer_id = $3 WHERE merchant_id = $1 AND customer_id = $2")
                    .bind(merchant).bind(source).bind(target).execute(self.conn().await?).await?;
                let receipts = sqlx::query("UPDATE receipts SET customer_id = $3 WHERE merchant_id = $1 AND customer_id = $2")
                    .bind(merchant).bind(source).bind(target).execute(self.conn().await?).await?.rows_affected();
                sqlx::query(
                    "INSERT INTO purchase_days (merchant_id, customer_id, day, turnover, purchases)
                     SELECT merchant_id, $3, day, turnover, purchases FROM purchase_days WHERE merchant_id = $1 AND customer_id = $2 AND 1 = 1
                     ON CONFLICT (merchant_id, customer_id, day)
                     DO UPDATE SET turnover = purchase_days.turnover + excluded.turnover, purchases = purchase_days.purchases + excluded.purchases",
                )
                .bind(merchant).bind(source).bind(target).execute(self.conn().await?).await?;
                sqlx::query("DELETE FROM purchase_days WHERE merchant_id = $1 AND customer_id = $2")
                    .bind(merchant).bind(source).execute(self.conn().await?).await?;
                sqlx::query(
                    "UPDATE accounts SET available = 0, pending = 0, held = 0, lifetime_turnover = 0, purchase_count = 0,
                     first_purchase_at = NULL, last_purchase_at = NULL, merged_into = $3 WHERE merchant_id = $1 AND customer_id = $2",
                )
                .bind(merchant).bind(source).bind(target).execute(self.conn().await?).await?;
                Ok((lots, receipts))
            }

            async fn stamps(&mut self, merchant: &str, customer: &str) -> sqlx::Result<Vec<(String, i64)>> {
                sqlx::query_as("SELECT stamp_card_id, count FROM stamps WHERE merchant_id = $1 AND customer_id = $2 AND count > 0 ORDER BY stamp_card_id")
                    .bind(merchant).bind(customer).fetch_all(self.conn().await?).await
            }

            async fn add_stamps(&mut self, merchant: &str, customer: &str, card: &str, delta: i64) -> sqlx::Result<i64> {
                sqlx::query_scalar(
                    "INSERT INTO stamps (merchant_id, customer_id, stamp_card_id, count) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (merchant_id, customer_id, stamp_card_id) DO UPDATE SET count = stamps.count + excluded.count
                     RETURNING count",
                )
                .bind(merchant).bind(customer).bind(card).bind(delta).fetch_one(self.conn().await?).await
            }

            async fn activity(&mut self, merchant: &str, from_day: i64) -> sqlx::Result<Vec<ActivityRow>> {
                let rows: Vec<(String, Amount, i64, i32)> = sqlx::query_as(
                    "SELECT customer_id, SUM(turnover), CAST(SUM(purchases) AS BIGINT), MAX(day) FROM purchase_days
                     WHERE merchant_id = $1 AND day >= $2 GROUP BY customer_id ORDER BY customer_id",
                )
                .bind(merchant).bind(from_day as i32).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(customer_id, t, p, d)| ActivityRow { customer_id, turnover: t.0, purchases: p, last_day: i64::from(d) }).collect())
            }

            async fn store_customers(&mut self, merchant: &str, stores: &[String]) -> sqlx::Result<Vec<String>> {
                let mut q = QueryBuilder::<$db>::new("SELECT DISTINCT customer_id FROM receipts WHERE merchant_id = ");
                q.push_bind(merchant).push(" AND customer_id <> '' AND store_id IN (");
                let mut sep = q.separated(", ");
                for store in stores {
                    sep.push_bind(store);
                }
                q.push(")");
                q.build_query_scalar().fetch_all(self.conn().await?).await
            }

            async fn buyers(&mut self, merchant: &str, products: &[String], categories: &[String], from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> sqlx::Result<Vec<String>> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT DISTINCT r.customer_id FROM receipt_lines l JOIN receipts r ON r.merchant_id = l.merchant_id AND r.receipt_id = l.receipt_id
                     WHERE l.merchant_id = ",
                );
                q.push_bind(merchant).push(" AND r.customer_id <> '' AND (1 = 0");
                for p in products {
                    q.push(" OR l.product_id = ").push_bind(p);
                }
                for c in categories {
                    // category_ids is a comma-separated list: match a whole element.
                    q.push(" OR ',' || l.category_ids || ',' LIKE ").push_bind(format!("%,{c},%"));
                }
                q.push(")");
                if let Some(from) = from {
                    q.push(" AND r.occurred_at >= ").push_bind(ts(from));
                }
                if let Some(to) = to {
                    q.push(" AND r.occurred_at < ").push_bind(ts(to));
                }
                q.build_query_scalar().fetch_all(self.conn().await?).await
            }

            async fn favourite_product(&mut self, merchant: &str, customer: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Option<String>> {
                sqlx::query_scalar(
                    "SELECT l.product_id FROM receipt_lines l JOIN receipts r ON r.merchant_id = l.merchant_id AND r.receipt_id = l.receipt_id
                     WHERE l.merchant_id = $1 AND r.customer_id = $2 AND r.occurred_at >= $3 AND r.occurred_at <= $4
                     GROUP BY l.product_id ORDER BY COUNT(*) DESC, l.product_id LIMIT 1",
                )
                .bind(merchant).bind(customer).bind(ts(from)).bind(ts(to)).fetch_optional(self.conn().await?).await
            }

            async fn claim_expiry_notices(&mut self, merchant: &str, until: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<(String, String, Decimal, DateTime<Utc>)>> {
                // One statement claims the rows, so concurrent replicas never notify twice.
                let rows: Vec<(String, String, Amount, Timestamp)> = sqlx::query_as(
                    "UPDATE lots SET expiry_notified = 1
                     WHERE merchant_id = $1 AND lot_id IN (
                         SELECT lot_id FROM lots WHERE merchant_id = $1 AND state = 2 AND expiry_notified = 0
                         AND expires_at <= $2 AND remaining > held ORDER BY expires_at LIMIT $3)
                     RETURNING customer_id, lot_id, remaining, expires_at",
                )
                .bind(merchant).bind(ts(until)).bind(limit).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(c, l, r, e)| (c, l, r.0, e.0)).collect())
            }

            async fn prune_idempotency(&mut self, merchant: &str, before: DateTime<Utc>) -> sqlx::Result<u64> {
                Ok(sqlx::query("DELETE FROM idempotency_keys WHERE merchant_id = $1 AND created_at < $2")
                    .bind(merchant).bind(ts(before)).execute(self.conn().await?).await?.rows_affected())
            }

            async fn insert_events(&mut self, merchant: &str, events: &[(String, Vec<u8>)], now: DateTime<Utc>) -> sqlx::Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                self.keep(merchant, Write::Events(events.to_vec(), now)).await
            }

            async fn customers_with_due_work(&mut self, merchant: &str, now: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<String>> {
                let sql = format!(
                    "SELECT DISTINCT customer_id FROM (
                        SELECT customer_id FROM lots WHERE merchant_id = $1 AND state = 1 AND activates_at <= $2
                        UNION SELECT customer_id FROM lots WHERE merchant_id = $1 AND state = 2 AND expires_at <= $2 AND remaining > held
                        UNION SELECT customer_id FROM holds WHERE merchant_id = $1 AND state = 1 AND expires_at <= $2
                     ) due ORDER BY customer_id LIMIT $3"
                );
                sqlx::query_scalar(&sql).bind(merchant).bind(ts(now)).bind(limit).fetch_all(self.conn().await?).await
            }

            async fn merchants(&mut self) -> sqlx::Result<Vec<String>> {
                sqlx::query_scalar("SELECT merchant_id FROM ledger_settings ORDER BY merchant_id").fetch_all(self.conn().await?).await
            }

            async fn expired_holds(&mut self, merchant: &str, customer: &str, now: DateTime<Utc>) -> sqlx::Result<Vec<HoldRow>> {
                let sql = format!(
                    "SELECT {HOLD_COLUMNS} FROM holds WHERE merchant_id = $1 AND customer_id = $2 AND state = 1 AND expires_at <= $3 ORDER BY hold_id{}",
                    $skip_locked
                );
                let rows: Vec<HoldDbRow> = sqlx::query_as(&sql).bind(merchant).bind(customer).bind(ts(now)).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn history(&mut self, merchant: &str, customer: &str, before_id: Option<&str>, limit: i64, with_entries: bool) -> sqlx::Result<Vec<TxWithEntries>> {
                let sql = format!(
                    "SELECT {TX_COLUMNS} FROM transactions WHERE merchant_id = $1 AND customer_id = $2 AND ($3 = '' OR transaction_id < $3)
                     ORDER BY transaction_id DESC LIMIT $4"
                );
                let rows: Vec<TxDbRow> = sqlx::query_as(&sql).bind(merchant).bind(customer)
                    .bind(before_id.unwrap_or("")).bind(limit).fetch_all(self.conn().await?).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let record: TxRecord = row.into();
                    let entries = if with_entries {
                        let rows: Vec<(String, String, Amount, String)> = sqlx::query_as(
                            "SELECT customer_id, account, amount, lot_id FROM entries WHERE merchant_id = $1 AND transaction_id = $2 ORDER BY entry_no",
                        )
                        .bind(merchant).bind(&record.transaction_id).fetch_all(self.conn().await?).await?;
                        rows.into_iter().filter_map(|(customer_id, account, amount, lot_id)| {
                            Some(Entry { customer_id, account: crate::domain::book::Account::parse(&account)?, amount: amount.0, lot_id })
                        }).collect()
                    } else {
                        Vec::new()
                    };
                    out.push(TxWithEntries { record, entries });
                }
                Ok(out)
            }

            async fn journal_balances(&mut self, merchant: &str, customer: Option<&str>) -> sqlx::Result<Vec<(String, String, Decimal)>> {
                let rows: Vec<(String, String, Amount)> = sqlx::query_as(
                    "SELECT customer_id, account, SUM(amount) FROM entries
                     WHERE merchant_id = $1 AND customer_id <> '' AND ($2 = '' OR customer_id = $2)
                     GROUP BY customer_id, account ORDER BY customer_id, account",
                )
                .bind(merchant).bind(customer.unwrap_or("")).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(c, a, s)| (c, a, s.0)).collect())
            }

            async fn unbalanced_transactions(&mut self, merchant: &str) -> sqlx::Result<Vec<(String, Decimal)>> {
                let rows: Vec<(String, Amount)> = sqlx::query_as(
                    "SELECT transaction_id, SUM(amount) FROM entries WHERE merchant_id = $1
                     GROUP BY transaction_id HAVING SUM(amount) <> 0 ORDER BY transaction_id LIMIT 1000",
                )
                .bind(merchant).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(t, s)| (t, s.0)).collect())
            }

            async fn accounts(&mut self, merchant: &str, customer: Option<&str>) -> sqlx::Result<Vec<AccountState>> {
                let sql = format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE merchant_id = $1 AND ($2 = '' OR customer_id = $2) ORDER BY customer_id"
                );
                let rows: Vec<AccountRow> = sqlx::query_as(&sql).bind(merchant).bind(customer.unwrap_or("")).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn transaction_count(&mut self, merchant: &str) -> sqlx::Result<i64> {
                sqlx::query_scalar("SELECT COUNT(*) FROM transactions WHERE merchant_id = $1").bind(merchant).fetch_one(self.conn().await?).await
            }

            async fn system_totals(&mut self, merchant: &str, store: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Vec<(String, Decimal)>> {
                let rows: Vec<(String, Amount)> = sqlx::query_as(
                    "SELECT e.account, SUM(e.amount) FROM entries e JOIN transactions t
                       ON t.merchant_id = e.merchant_id AND t.transaction_id = e.transaction_id
                     WHERE e.merchant_id = $1 AND e.customer_id = '' AND t.occurred_at >= $2 AND t.occurred_at < $3
                       AND ($4 = '' OR t.receipt_id IN (SELECT receipt_id FROM receipts WHERE merchant_id = $1 AND store_id = $4))
                     GROUP BY e.account",
                )
                .bind(merchant).bind(ts(from)).bind(ts(to)).bind(store).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(a, s)| (a, s.0)).collect())
            }

            async fn lot_totals(&mut self, merchant: &str, store: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Vec<(i32, Decimal)>> {
                let rows: Vec<(i32, Amount)> = sqlx::query_as(
                    "SELECT kind, SUM(amount) FROM lots WHERE merchant_id = $1 AND created_at >= $2 AND created_at < $3
                     AND ($4 = '' OR receipt_id IN (SELECT receipt_id FROM receipts WHERE merchant_id = $1 AND store_id = $4)) GROUP BY kind",
                )
                .bind(merchant).bind(ts(from)).bind(ts(to)).bind(store).fetch_all(self.conn().await?).await?;
                Ok(rows.into_iter().map(|(k, s)| (k, s.0)).collect())
            }

            async fn receipt_totals(&mut self, merchant: &str, store: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<(i64, Decimal, Decimal, i64)> {
                let (n, turnover, discount, customers): (i64, Option<Amount>, Option<Amount>, i64) = sqlx::query_as(
                    "SELECT COUNT(*), SUM(net_amount - refunded_amount), SUM(discount),
                            COUNT(DISTINCT CASE WHEN customer_id <> '' THEN customer_id END)
                     FROM receipts WHERE merchant_id = $1 AND occurred_at >= $2 AND occurred_at < $3 AND ($4 = '' OR store_id = $4)",
                )
                .bind(merchant).bind(ts(from)).bind(ts(to)).bind(store).fetch_one(self.conn().await?).await?;
                Ok((n, turnover.map(|a| a.0).unwrap_or_default(), discount.map(|a| a.0).unwrap_or_default(), customers))
            }

            async fn outstanding(&mut self, merchant: &str) -> sqlx::Result<Decimal> {
                let sum: Option<Amount> = sqlx::query_scalar("SELECT SUM(available + pending + held) FROM accounts WHERE merchant_id = $1")
                    .bind(merchant).fetch_one(self.conn().await?).await?;
                Ok(sum.map(|a| a.0).unwrap_or_default())
            }
        }
    };
}

// PostgreSQL sends the kept writes as one statement (data-modifying CTEs); SQLite, which has
// none, runs them one by one (in-process, so round trips cost little there).
impl_ledger_tx!(Postgres, " FOR UPDATE", " FOR UPDATE SKIP LOCKED", true);
impl_ledger_tx!(Sqlite, "", "", false);

/// Runs `work` in one write transaction on either engine (`BEGIN IMMEDIATE` on SQLite, so
/// writers queue instead of failing), committing when it returns `Ok`.
#[macro_export]
macro_rules! in_write_tx {
    ($db:expr, $tx:ident => $work:expr) => {{
        match $db {
            kopilka_runtime::Db::Postgres(pool) => {
                let mut $tx =
                    $crate::store::Tx::new(pool.begin().await.map_err($crate::error::Error::from)?);
                // The commit sends the kept writes, so its error is the operation's (a retry
                // may follow).
                match $work {
                    Ok(value) => $tx
                        .commit()
                        .await
                        .map(|()| value)
                        .map_err($crate::error::Error::from),
                    Err(e) => Err(e),
                }
            }
            kopilka_runtime::Db::Sqlite(pool) => {
                let mut $tx = $crate::store::Tx::new(
                    pool.begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err($crate::error::Error::from)?,
                );
                // The commit sends the kept writes, so its error is the operation's (a retry
                // may follow).
                match $work {
                    Ok(value) => $tx
                        .commit()
                        .await
                        .map(|()| value)
                        .map_err($crate::error::Error::from),
                    Err(e) => Err(e),
                }
            }
        }
    }};
}

/// Runs `work` in a read transaction on either engine.
#[macro_export]
macro_rules! in_read_tx {
    ($db:expr, $tx:ident => $work:expr) => {{
        match $db {
            kopilka_runtime::Db::Postgres(pool) => {
                let mut $tx =
                    $crate::store::Tx::new(pool.begin().await.map_err($crate::error::Error::from)?);
                $work
            }
            kopilka_runtime::Db::Sqlite(pool) => {
                let mut $tx =
                    $crate::store::Tx::new(pool.begin().await.map_err($crate::error::Error::from)?);
                $work
            }
        }
    }};
}
