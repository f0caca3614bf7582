//! A model of the ledger in plain Rust — the oracle — and a stateful property test that runs
//! random sequences of operations against the model and the real service (over gRPC, on SQLite
//! and on PostgreSQL) and compares, after every operation, the outcome (ok or the error reason),
//! the details of the answer (lots consumed, points reversed and restored, debt created) and the
//! balance (available, held, pending); after every clock advance also the open lots. At the end
//! of each sequence `Verify` must be ok and the journal must sum to zero and to the balances.
//!
//! The model follows `ledger-svc/README.md`, not the service's code:
//! - spending (redemption, hold, negative adjustment, refund reversal of spendable points) takes
//!   free points (remaining − held) of active lots soonest-expiring first, lots without expiry
//!   last, ties by creation time, then lot id;
//! - a lot activating later is pending; due activations, expiries and hold time-outs happen in
//!   the due-work pass (`ProcessDueLots`, run after every clock advance), hold releases first;
//! - a lot never expires what an active hold took from it; those points expire when released if
//!   the lot's expiry has passed; restored points already past their expiry expire at once too
//!   (both are what `GetBalance` shows; the journal catches up at the next write or pass);
//! - a refund reverses accrual and restores redemption per line in proportion to the refunded
//!   quantity, cumulatively (each refund takes the rounded-down share of all that is refunded so
//!   far minus what earlier refunds took; the last refund of a line takes what is left); it takes
//!   accrued points back from the receipt's own lots first (pending, then free), then from other
//!   free points, and the rest becomes a debt (ALLOW_NEGATIVE); restored points form a new lot with the
//!   earliest expiry of the lots the receipt redeemed from, but not earlier than the expiry
//!   notice period (7 days) after the refund; new free points pay a debt first.
//!
//! Cases: `LEDGER_MODEL_CASES` (default 20 per backend, 20 to 30 operations each), seed `LEDGER_MODEL_SEED` (default
//! fixed, printed on failure).

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger as pb;
use kopilka_proto::types::{self, BasketLine, LotKind};
use kopilka_proto::wkt;
use kopilka_runtime::status::reason_of;
use kopilka_tests::ledger::TestLedger;
use kopilka_tests::Backend;
use ledger_svc::domain::clock::Clock;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tonic::Status;

type T = DateTime<Utc>;

// ---- the model --------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LotState {
    Pending,
    Active,
    /// Consumed, expired or reversed: no longer open.
    Closed,
}

#[derive(Clone, Debug)]
struct Lot {
    id: String,
    remaining: i64,
    held: i64,
    state: LotState,
    activates_at: Option<T>,
    expires_at: Option<T>,
    created_at: T,
    receipt: Option<String>,
}

impl Lot {
    fn free(&self) -> i64 {
        self.remaining - self.held
    }

    /// Spending order: soonest expiry first, no expiry last, then creation time, then id.
    fn key(&self) -> (bool, Option<T>, T, String) {
        (
            self.expires_at.is_none(),
            self.expires_at,
            self.created_at,
            self.id.clone(),
        )
    }

    fn close_if_empty(&mut self) {
        if self.state == LotState::Active && self.remaining == 0 && self.held == 0 {
            self.state = LotState::Closed;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldState {
    Active,
    Committed,
    Voided,
    Expired,
}

#[derive(Clone, Debug)]
struct Hold {
    id: String,
    amount: i64,
    /// (lot id, points) taken at reserve time.
    allocations: Vec<(String, i64)>,
    state: HoldState,
    expires_at: T,
}

#[derive(Clone, Debug)]
struct Line {
    qty: i64,
    accrual: i64,
    redeem: i64,
    refunded: i64,
    reversed: i64,
    restored: i64,
}

#[derive(Clone, Debug)]
struct Receipt {
    id: String,
    lines: Vec<Line>,
    /// The earliest expiry of the lots the receipt redeemed from.
    restore_expiry: Option<T>,
}

impl Receipt {
    fn fully_refunded(&self) -> bool {
        self.lines.iter().all(|l| l.refunded >= l.qty)
    }
}

/// What the model says an operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Err(String),
}

fn err(reason: &str) -> Outcome {
    Outcome::Err(reason.to_owned())
}

/// One refund's figures: (reversed, restored, debt created, fully refunded).
type RefundFigures = (i64, i64, i64, bool);

#[derive(Clone, Debug)]
struct Model {
    now: T,
    available: i64,
    pending: i64,
    held: i64,
    lots: Vec<Lot>,
    holds: Vec<Hold>,
    receipts: Vec<Receipt>,
}

/// This refund's share of `total` when `part` more of `whole` units go back after `part_done`:
/// the cumulative share of `part_done + part` units (rounded down) minus what earlier refunds
/// took (`done`); the part that completes the whole takes what is left.
fn share(total: i64, done: i64, whole: i64, part_done: i64, part: i64) -> i64 {
    let rest = (total - done).max(0);
    if part_done + part >= whole {
        rest
    } else {
        (total * (part_done + part) / whole - done).clamp(0, rest)
    }
}

impl Model {
    fn new(now: T) -> Self {
        Model {
            now,
            available: 0,
            pending: 0,
            held: 0,
            lots: Vec::new(),
            holds: Vec::new(),
            receipts: Vec::new(),
        }
    }

    fn index_of(&self, lot_id: &str) -> usize {
        self.lots
            .iter()
            .position(|l| l.id == lot_id)
            .expect("known lot")
    }

    fn sorted(&self, mut idx: Vec<usize>) -> Vec<usize> {
        idx.sort_by_key(|&i| self.lots[i].key());
        idx
    }

    /// Active lots with free points, in spending order.
    fn spend_order(&self) -> Vec<usize> {
        self.sorted(
            (0..self.lots.len())
                .filter(|&i| self.lots[i].state == LotState::Active && self.lots[i].free() > 0)
                .collect(),
        )
    }

    /// Picks up to `amount` free points, lots in `first` before the spending order.
    fn pick_free(&self, amount: i64, first: &[usize]) -> Vec<(usize, i64)> {
        let mut order = first.to_vec();
        order.extend(
            self.spend_order()
                .into_iter()
                .filter(|i| !first.contains(i)),
        );
        let mut left = amount;
        let mut picked = Vec::new();
        for i in order {
            if left == 0 {
                break;
            }
            let lot = &self.lots[i];
            let take = lot.free().min(left);
            if lot.state != LotState::Active || take <= 0 {
                continue;
            }
            left -= take;
            picked.push((i, take));
        }
        picked
    }

    /// `x` points of lot `i` became free: they pay off a debt first.
    fn gain(&mut self, i: usize, x: i64) {
        let debt = (-self.available).max(0);
        let pay = x.min(debt);
        self.available += x;
        let lot = &mut self.lots[i];
        lot.remaining -= pay;
        lot.close_if_empty();
    }

    fn credit(
        &mut self,
        id: &str,
        amount: i64,
        activates_at: Option<T>,
        expires_at: Option<T>,
        receipt: Option<String>,
    ) {
        let pending = activates_at.is_some_and(|t| t > self.now);
        self.lots.push(Lot {
            id: id.to_owned(),
            remaining: amount,
            held: 0,
            state: if pending {
                LotState::Pending
            } else {
                LotState::Active
            },
            activates_at,
            expires_at,
            created_at: self.now,
            receipt,
        });
        let i = self.lots.len() - 1;
        if pending {
            self.pending += amount;
        } else {
            self.gain(i, amount);
        }
    }

    /// Spends `amount` available points; the lots consumed in order.
    fn debit(&mut self, amount: i64) -> Result<Vec<(String, i64)>, Outcome> {
        if self.available < amount {
            return Err(err("INSUFFICIENT_POINTS"));
        }
        let picked = self.pick_free(amount, &[]);
        let mut consumed = Vec::new();
        for (i, take) in picked {
            let lot = &mut self.lots[i];
            lot.remaining -= take;
            lot.close_if_empty();
            consumed.push((lot.id.clone(), take));
        }
        self.available -= amount;
        Ok(consumed)
    }

    /// A manual removal: spends what is available, the rest (only with allow_negative) is a debt.
    fn remove(&mut self, amount: i64, allow_negative: bool) -> Result<Vec<(String, i64)>, Outcome> {
        let available = self.available.max(0);
        if amount > available && !allow_negative {
            return Err(err("INSUFFICIENT_POINTS"));
        }
        let consumed = self.debit(amount.min(available))?;
        self.available -= amount - amount.min(available);
        Ok(consumed)
    }

    fn reserve(&mut self, hold_id: &str, amount: i64, ttl: Duration) -> Outcome {
        if self.available < amount {
            return err("INSUFFICIENT_POINTS");
        }
        let mut allocations = Vec::new();
        for (i, take) in self.pick_free(amount, &[]) {
            self.lots[i].held += take;
            allocations.push((self.lots[i].id.clone(), take));
        }
        self.available -= amount;
        self.held += amount;
        self.holds.push(Hold {
            id: hold_id.to_owned(),
            amount,
            allocations,
            state: HoldState::Active,
            expires_at: self.now + ttl,
        });
        Outcome::Ok
    }

    /// Ends hold `h`: `commit` points are redeemed (from its soonest-expiring lots first), the
    /// rest goes back to the lots. Returns the lots redeemed from.
    fn finish_hold(&mut self, h: usize, commit: i64, state: HoldState) -> Vec<usize> {
        let mut allocations = self.holds[h].allocations.clone();
        allocations.sort_by_key(|(id, _)| self.lots[self.index_of(id)].key());
        let mut to_commit = commit;
        let mut redeemed_from = Vec::new();
        for (lot_id, a) in allocations {
            let i = self.index_of(&lot_id);
            let c = a.min(to_commit);
            let r = a - c;
            to_commit -= c;
            self.lots[i].held -= a;
            self.lots[i].remaining -= c;
            self.held -= a;
            if c > 0 {
                redeemed_from.push(i);
            }
            if r > 0 {
                self.gain(i, r);
            }
            self.lots[i].close_if_empty();
        }
        self.holds[h].state = state;
        redeemed_from
    }

    fn commit(&mut self, h: usize, amount: Option<i64>) -> Outcome {
        let hold = &self.holds[h];
        match hold.state {
            HoldState::Active if hold.expires_at <= self.now => err("HOLD_EXPIRED"),
            HoldState::Active => {
                let amount = amount.unwrap_or(hold.amount);
                if amount > hold.amount {
                    return err("HOLD_AMOUNT_EXCEEDED");
                }
                self.finish_hold(h, amount, HoldState::Committed);
                Outcome::Ok
            }
            HoldState::Expired => err("HOLD_EXPIRED"),
            HoldState::Committed | HoldState::Voided => err("HOLD_FINALIZED"),
        }
    }

    fn void(&mut self, h: usize) -> Outcome {
        let hold = &self.holds[h];
        match hold.state {
            HoldState::Active => {
                let state = if hold.expires_at <= self.now {
                    HoldState::Expired
                } else {
                    HoldState::Voided
                };
                self.finish_hold(h, 0, state);
                Outcome::Ok
            }
            HoldState::Voided | HoldState::Expired => Outcome::Ok,
            HoldState::Committed => err("HOLD_FINALIZED"),
        }
    }

    fn record(
        &mut self,
        r: &ReceiptOp,
        receipt_id: &str,
        hold: Option<usize>,
        lot_id: &str,
    ) -> Outcome {
        let redeem: i64 = r.lines.iter().map(|l| l.2).sum();
        let accrual: i64 = r.lines.iter().map(|l| l.1).sum();
        let redeemed_from: Vec<usize> = if let Some(h) = hold {
            let hold = &self.holds[h];
            if hold.state == HoldState::Expired
                || (hold.state == HoldState::Active && hold.expires_at <= self.now)
            {
                return err("HOLD_EXPIRED");
            }
            if hold.state != HoldState::Active {
                return err("HOLD_FINALIZED");
            }
            if redeem > hold.amount {
                return err("HOLD_AMOUNT_EXCEEDED");
            }
            self.finish_hold(h, redeem, HoldState::Committed)
        } else if redeem > 0 {
            match self.debit(redeem) {
                Ok(consumed) => consumed.iter().map(|(id, _)| self.index_of(id)).collect(),
                Err(e) => return e,
            }
        } else {
            Vec::new()
        };
        let restore_expiry = redeemed_from
            .iter()
            .filter_map(|&i| self.lots[i].expires_at)
            .min();
        if accrual > 0 {
            let (activates_at, expires_at) = r.terms(self.now);
            self.credit(
                lot_id,
                accrual,
                activates_at,
                expires_at,
                Some(receipt_id.to_owned()),
            );
        }
        self.receipts.push(Receipt {
            id: receipt_id.to_owned(),
            lines: r
                .lines
                .iter()
                .map(|&(qty, accrual, redeem)| Line {
                    qty,
                    accrual,
                    redeem,
                    refunded: 0,
                    reversed: 0,
                    restored: 0,
                })
                .collect(),
            restore_expiry,
        });
        Outcome::Ok
    }

    /// Takes back `amount` accrued points of `receipt_id`; returns the debt created.
    fn take_back(&mut self, amount: i64, receipt_id: &str) -> i64 {
        let own = self.sorted(
            (0..self.lots.len())
                .filter(|&i| {
                    self.lots[i].receipt.as_deref() == Some(receipt_id)
                        && self.lots[i].state != LotState::Closed
                })
                .collect(),
        );
        let mut left = amount;
        for &i in &own {
            let lot = &mut self.lots[i];
            if lot.state != LotState::Pending || left == 0 {
                continue;
            }
            let take = lot.remaining.min(left);
            lot.remaining -= take;
            if lot.remaining == 0 {
                lot.state = LotState::Closed;
            }
            self.pending -= take;
            left -= take;
        }
        let own_active: Vec<usize> = own
            .into_iter()
            .filter(|&i| self.lots[i].state == LotState::Active)
            .collect();
        for (i, take) in self.pick_free(left, &own_active) {
            let lot = &mut self.lots[i];
            lot.remaining -= take;
            lot.close_if_empty();
            self.available -= take;
            left -= take;
        }
        self.available -= left;
        left
    }

    fn refund(
        &mut self,
        k: usize,
        lines: &Option<Vec<(usize, i64)>>,
        restored_lot_id: &str,
    ) -> Result<RefundFigures, Outcome> {
        let receipt = &self.receipts[k];
        if receipt.fully_refunded() {
            return Err(err("RECEIPT_ALREADY_REFUNDED"));
        }
        let wanted: Vec<(usize, i64)> = match lines {
            None => receipt
                .lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.qty > l.refunded)
                .map(|(i, l)| (i, l.qty - l.refunded))
                .collect(),
            Some(v) => v.clone(),
        };
        if wanted
            .iter()
            .any(|&(i, q)| receipt.lines[i].refunded + q > receipt.lines[i].qty)
        {
            return Err(err("REFUND_EXCEEDS_RECEIPT"));
        }
        let receipt = &mut self.receipts[k];
        let (mut reversed, mut restored) = (0, 0);
        for (i, q) in wanted {
            let l = &mut receipt.lines[i];
            let rv = share(l.accrual, l.reversed, l.qty, l.refunded, q);
            let rs = share(l.redeem, l.restored, l.qty, l.refunded, q);
            l.refunded += q;
            l.reversed += rv;
            l.restored += rs;
            reversed += rv;
            restored += rs;
        }
        let (receipt_id, expiry, fully) = (
            receipt.id.clone(),
            receipt.restore_expiry,
            receipt.fully_refunded(),
        );
        let debt = self.take_back(reversed, &receipt_id);
        if restored > 0 {
            // Never earlier than the expiry notice period (7 days by default) after the refund.
            let expiry = expiry.map(|e| e.max(self.now + chrono::Duration::days(7)));
            self.credit(restored_lot_id, restored, None, expiry, None);
        }
        Ok((reversed, restored, debt, fully))
    }

    fn activate_due(&mut self) {
        let due = self.sorted(
            (0..self.lots.len())
                .filter(|&i| {
                    self.lots[i].state == LotState::Pending
                        && self.lots[i].activates_at.is_some_and(|t| t <= self.now)
                })
                .collect(),
        );
        for i in due {
            let amount = self.lots[i].remaining;
            self.lots[i].state = LotState::Active;
            self.pending -= amount;
            self.gain(i, amount);
            self.lots[i].close_if_empty();
        }
    }

    /// Free points of active lots past their expiry expire (held points stay until released).
    fn expire_due(&mut self) {
        for lot in &mut self.lots {
            if lot.state == LotState::Active
                && lot.expires_at.is_some_and(|t| t <= self.now)
                && lot.free() > 0
            {
                let x = lot.free();
                lot.remaining -= x;
                self.available -= x;
                if lot.held == 0 {
                    lot.state = LotState::Closed;
                }
            }
        }
    }

    /// The due-work pass: timed-out holds released, due lots activated, due lots expired.
    fn due_work(&mut self) {
        let mut due: Vec<usize> = (0..self.holds.len())
            .filter(|&h| {
                self.holds[h].state == HoldState::Active && self.holds[h].expires_at <= self.now
            })
            .collect();
        due.sort_by_key(|&h| self.holds[h].id.clone());
        for h in due {
            self.finish_hold(h, 0, HoldState::Expired);
        }
        self.activate_due();
        self.expire_due();
    }

    /// Open lots: (id, remaining, pending?) sorted by id.
    fn open_lots(&self) -> Vec<(String, i64, bool)> {
        let mut v: Vec<_> = self
            .lots
            .iter()
            .filter(|l| l.state != LotState::Closed)
            .map(|l| (l.id.clone(), l.remaining, l.state == LotState::Pending))
            .collect();
        v.sort();
        v
    }

    /// The model's own invariants (README: available = Σ free of active lots unless in debt).
    fn check_invariants(&self) -> Result<(), String> {
        let free: i64 = self
            .lots
            .iter()
            .filter(|l| l.state == LotState::Active)
            .map(Lot::free)
            .sum();
        let pending: i64 = self
            .lots
            .iter()
            .filter(|l| l.state == LotState::Pending)
            .map(|l| l.remaining)
            .sum();
        let held: i64 = self.lots.iter().map(|l| l.held).sum();
        let ok = free == self.available.max(0)
            && pending == self.pending
            && held == self.held
            && self
                .lots
                .iter()
                .all(|l| l.remaining >= l.held && l.held >= 0);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "model invariants broken: free {free} pending {pending} held {held} in {self:#?}"
            ))
        }
    }
}

// ---- operations -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ReceiptOp {
    /// (quantity, accrual points, redeem points) per line.
    lines: Vec<(i64, i64, i64)>,
    expires_h: Option<i64>,
    activates_h: Option<i64>,
    hold: Option<Index>,
}

impl ReceiptOp {
    fn terms(&self, now: T) -> (Option<T>, Option<T>) {
        terms(now, self.activates_h, self.expires_h)
    }
}

/// (activates_at, expires_at): expiry counted from activation.
fn terms(now: T, activates_h: Option<i64>, expires_h: Option<i64>) -> (Option<T>, Option<T>) {
    let activates_at = activates_h.map(|h| now + Duration::hours(h));
    let expires_at = expires_h.map(|h| activates_at.unwrap_or(now) + Duration::hours(h));
    (activates_at, expires_at)
}

#[derive(Clone, Debug)]
enum Op {
    Accrue {
        amount: i64,
        expires_h: Option<i64>,
        activates_h: Option<i64>,
    },
    Redeem {
        amount: i64,
    },
    Adjust {
        amount: i64,
        allow_negative: bool,
        expires_h: Option<i64>,
    },
    Reserve {
        amount: i64,
        ttl_min: i64,
    },
    Commit {
        hold: Index,
        amount: Option<i64>,
    },
    Void {
        hold: Index,
    },
    Receipt(ReceiptOp),
    Refund {
        receipt: Index,
        lines: Option<Vec<(Index, i64)>>,
    },
    Advance {
        minutes: i64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    use proptest::option::{of, weighted};
    prop_oneof![
        4 => (5i64..=80, of(1i64..=96), weighted(0.3, 1i64..=48))
            .prop_map(|(amount, expires_h, activates_h)| Op::Accrue { amount, expires_h, activates_h }),
        2 => (1i64..=30).prop_map(|amount| Op::Redeem { amount }),
        1 => (prop_oneof![-40i64..=-1, 1i64..=40], any::<bool>(), of(1i64..=96))
            .prop_map(|(amount, allow_negative, expires_h)| Op::Adjust { amount, allow_negative, expires_h }),
        2 => (1i64..=40, 1i64..=240).prop_map(|(amount, ttl_min)| Op::Reserve { amount, ttl_min }),
        2 => (any::<Index>(), of(1i64..=40)).prop_map(|(hold, amount)| Op::Commit { hold, amount }),
        1 => any::<Index>().prop_map(|hold| Op::Void { hold }),
        3 => (
            proptest::collection::vec((1i64..=4, 0i64..=15, prop_oneof![Just(0i64), 1i64..=8]), 1..=3),
            of(1i64..=96),
            weighted(0.3, 1i64..=48),
            weighted(0.25, any::<Index>()),
        )
            .prop_map(|(lines, expires_h, activates_h, hold)| Op::Receipt(ReceiptOp { lines, expires_h, activates_h, hold })),
        2 => (any::<Index>(), weighted(0.5, proptest::collection::vec((any::<Index>(), 1i64..=3), 1..=2)))
            .prop_map(|(receipt, lines)| Op::Refund { receipt, lines }),
        3 => prop_oneof![1i64..=120, 120i64..=4320].prop_map(|minutes| Op::Advance { minutes }),
    ]
}

// ---- the system under test ----------------------------------------------------------------------

struct Sut<'a> {
    ledger: &'a TestLedger,
    merchant: String,
    customer: String,
    seq: u64,
}

fn ts(t: T) -> wkt::Timestamp {
    wkt::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn outcome_of<R>(r: &Result<R, Status>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(s) => {
            Outcome::Err(reason_of(s).unwrap_or_else(|| format!("{:?}: {}", s.code(), s.message())))
        }
    }
}

fn int(s: &str) -> i64 {
    s.parse()
        .unwrap_or_else(|_| panic!("an integer amount, got {s:?}"))
}

impl Sut<'_> {
    fn rid(&mut self) -> String {
        self.seq += 1;
        format!("{}-r{}", self.merchant, self.seq)
    }

    fn client(
        &self,
    ) -> kopilka_proto::ledger::ledger_service_client::LedgerServiceClient<kopilka_tests::Channel>
    {
        self.ledger.client()
    }

    async fn balance(&self) -> (i64, i64, i64) {
        let b = self
            .client()
            .get_balance(pb::GetBalanceRequest {
                merchant_id: self.merchant.clone(),
                customer_id: self.customer.clone(),
                expiring_within: None,
            })
            .await
            .expect("GetBalance")
            .into_inner()
            .balance
            .expect("balance");
        (int(&b.available), int(&b.held), int(&b.pending))
    }

    async fn open_lots(&self) -> Vec<(String, i64, bool)> {
        let lots = self
            .client()
            .list_lots(pb::ListLotsRequest {
                merchant_id: self.merchant.clone(),
                customer_id: self.customer.clone(),
                states: vec![],
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("ListLots")
            .into_inner()
            .lots;
        let mut v: Vec<_> = lots
            .into_iter()
            .map(|l| {
                (
                    l.lot_id,
                    int(&l.remaining),
                    l.state == pb::LotState::Pending as i32,
                )
            })
            .collect();
        v.sort();
        v
    }

    async fn process_due(&mut self) {
        let request_id = self.rid();
        self.client()
            .process_due_lots(pb::ProcessDueLotsRequest {
                merchant_id: self.merchant.clone(),
                request_id,
                as_of: None,
                max_items: 0,
            })
            .await
            .expect("ProcessDueLots");
    }
}

fn check<V: PartialEq + std::fmt::Debug>(what: &str, model: V, service: V) -> Result<(), String> {
    record_outcome(what, &service);
    if model == service {
        Ok(())
    } else {
        Err(format!("{what}: model {model:?}, service {service:?}"))
    }
}

/// Applies `op` to the service and the model and compares.
async fn step(sut: &mut Sut<'_>, model: &mut Model, op: &Op, n: usize) -> Result<(), String> {
    let now = sut.ledger.clock.now();
    model.now = now;
    let m = sut.merchant.clone();
    let c = sut.customer.clone();
    match op {
        Op::Accrue {
            amount,
            expires_h,
            activates_h,
        } => {
            let (activates_at, expires_at) = terms(now, *activates_h, *expires_h);
            let r = sut
                .client()
                .accrue(pb::AccrueRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    customer_id: c,
                    grant: Some(types::PointsGrant {
                        amount: amount.to_string(),
                        kind: LotKind::Purchase as i32,
                        activates_at: activates_at.map(ts),
                        expires_at: expires_at.map(ts),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner());
            check("Accrue outcome", Outcome::Ok, outcome_of(&r))?;
            let lot_id = r.unwrap().lot.expect("lot").lot_id;
            model.credit(&lot_id, *amount, activates_at, expires_at, None);
        }
        Op::Redeem { amount } => {
            let r = sut
                .client()
                .redeem(pb::RedeemRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    customer_id: c,
                    amount: amount.to_string(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner());
            match model.debit(*amount) {
                Ok(consumed) => {
                    check("Redeem outcome", Outcome::Ok, outcome_of(&r))?;
                    let got: Vec<(String, i64)> = r
                        .unwrap()
                        .consumed
                        .into_iter()
                        .map(|x| (x.lot_id, int(&x.amount)))
                        .collect();
                    check("Redeem consumed (soonest-expiring first)", consumed, got)?;
                }
                Err(e) => check("Redeem outcome", e, outcome_of(&r))?,
            }
        }
        Op::Adjust {
            amount,
            allow_negative,
            expires_h,
        } => {
            let expires_at = if *amount > 0 {
                terms(now, None, *expires_h).1
            } else {
                None
            };
            let r = sut
                .client()
                .adjust(pb::AdjustRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    customer_id: c,
                    amount: amount.to_string(),
                    reason: format!("op {n}"),
                    operator: "model".into(),
                    expires_at: expires_at.map(ts),
                    allow_negative: *allow_negative,
                })
                .await
                .map(|r| r.into_inner());
            if *amount > 0 {
                check("Adjust outcome", Outcome::Ok, outcome_of(&r))?;
                let lot_id = r.unwrap().lot.expect("lot").lot_id;
                model.credit(&lot_id, *amount, None, expires_at, None);
            } else {
                match model.remove(-amount, *allow_negative) {
                    Ok(consumed) => {
                        check("Adjust outcome", Outcome::Ok, outcome_of(&r))?;
                        let got: Vec<(String, i64)> = r
                            .unwrap()
                            .consumed
                            .into_iter()
                            .map(|x| (x.lot_id, int(&x.amount)))
                            .collect();
                        check("Adjust consumed (soonest-expiring first)", consumed, got)?;
                    }
                    Err(e) => check("Adjust outcome", e, outcome_of(&r))?,
                }
            }
        }
        Op::Reserve { amount, ttl_min } => {
            let r = sut
                .client()
                .reserve(pb::ReserveRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    customer_id: c,
                    amount: amount.to_string(),
                    ttl: Some(wkt::Duration {
                        seconds: ttl_min * 60,
                        nanos: 0,
                    }),
                    reference: format!("op-{n}"),
                })
                .await
                .map(|r| r.into_inner());
            let hold_id = r
                .as_ref()
                .ok()
                .and_then(|r| r.hold.as_ref())
                .map_or_else(|| "?".to_owned(), |h| h.hold_id.clone());
            let expected = model.reserve(&hold_id, *amount, Duration::minutes(*ttl_min));
            check("Reserve outcome", expected, outcome_of(&r))?;
        }
        Op::Commit { hold, amount } => {
            if model.holds.is_empty() {
                return Ok(());
            }
            let h = hold.index(model.holds.len());
            let r = sut
                .client()
                .commit_hold(pb::CommitHoldRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    hold_id: model.holds[h].id.clone(),
                    amount: amount.map(|a| a.to_string()).unwrap_or_default(),
                    description: String::new(),
                })
                .await
                .map(|r| r.into_inner());
            let expected = model.commit(h, *amount);
            check("CommitHold outcome", expected.clone(), outcome_of(&r))?;
            if expected == Outcome::Ok {
                let committed = amount.unwrap_or(model.holds[h].amount);
                check(
                    "CommitHold committed",
                    committed,
                    int(&r.unwrap().hold.expect("hold").committed_amount),
                )?;
            }
        }
        Op::Void { hold } => {
            if model.holds.is_empty() {
                return Ok(());
            }
            let h = hold.index(model.holds.len());
            let r = sut
                .client()
                .void_hold(pb::VoidHoldRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    hold_id: model.holds[h].id.clone(),
                })
                .await
                .map(|r| r.into_inner());
            check("VoidHold outcome", model.void(h), outcome_of(&r))?;
        }
        Op::Receipt(op) => {
            let hold = match (&op.hold, model.holds.len()) {
                (Some(i), len) if len > 0 => Some(i.index(len)),
                _ => None,
            };
            let receipt_id = format!("rc-{n}");
            let redeem: i64 = op.lines.iter().map(|l| l.2).sum();
            let accrual: i64 = op.lines.iter().map(|l| l.1).sum();
            let (activates_at, expires_at) = op.terms(now);
            let input = pb::ReceiptInput {
                receipt_id: receipt_id.clone(),
                customer_id: c,
                store_id: "s1".into(),
                terminal_id: "t1".into(),
                currency: "RUB".into(),
                lines: op
                    .lines
                    .iter()
                    .enumerate()
                    .map(|(i, &(qty, accrual, redeem))| pb::ReceiptLine {
                        line: Some(BasketLine {
                            line_id: format!("{}", i + 1),
                            product_id: format!("p{i}"),
                            unit_price: "100.00".into(),
                            quantity: qty.to_string(),
                            ..Default::default()
                        }),
                        redeem_points: redeem.to_string(),
                        redeem_money: redeem.to_string(),
                        accrual_points: accrual.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                redeem_points: redeem.to_string(),
                hold_id: hold.map(|h| model.holds[h].id.clone()).unwrap_or_default(),
                accruals: if accrual > 0 {
                    vec![types::PointsGrant {
                        amount: accrual.to_string(),
                        kind: LotKind::Purchase as i32,
                        activates_at: activates_at.map(ts),
                        expires_at: expires_at.map(ts),
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                ..Default::default()
            };
            let r = sut
                .client()
                .record_receipt(pb::RecordReceiptRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    receipt: Some(input),
                })
                .await
                .map(|r| r.into_inner());
            let lot_id = r
                .as_ref()
                .ok()
                .and_then(|r| r.receipt.as_ref())
                .and_then(|r| r.lots.first())
                .map_or_else(|| "?".to_owned(), |l| l.lot_id.clone());
            let expected = model.record(op, &receipt_id, hold, &lot_id);
            check("RecordReceipt outcome", expected, outcome_of(&r))?;
        }
        Op::Refund { receipt, lines } => {
            if model.receipts.is_empty() {
                return Ok(());
            }
            let k = receipt.index(model.receipts.len());
            let count = model.receipts[k].lines.len();
            let lines: Option<Vec<(usize, i64)>> = lines.as_ref().map(|v| {
                let mut out: Vec<(usize, i64)> = Vec::new();
                for (i, q) in v {
                    let i = i.index(count);
                    if !out.iter().any(|(j, _)| *j == i) {
                        out.push((i, *q));
                    }
                }
                out
            });
            let receipt_id = model.receipts[k].id.clone();
            let r = sut
                .client()
                .refund_receipt(pb::RefundReceiptRequest {
                    merchant_id: m,
                    request_id: sut.rid(),
                    receipt_id,
                    refund_id: format!("rf-{n}"),
                    lines: lines
                        .iter()
                        .flatten()
                        .map(|(i, q)| pb::RefundLineRequest {
                            line_id: format!("{}", i + 1),
                            quantity: q.to_string(),
                        })
                        .collect(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner());
            let restored_lot = r
                .as_ref()
                .ok()
                .and_then(|r| r.refund.as_ref())
                .and_then(|f| f.restored_lots.first())
                .map_or_else(|| "?".to_owned(), |l| l.lot_id.clone());
            match model.refund(k, &lines, &restored_lot) {
                Ok(expected) => {
                    check("RefundReceipt outcome", Outcome::Ok, outcome_of(&r))?;
                    let f = r.unwrap().refund.expect("refund");
                    let got = (
                        int(&f.points_reversed),
                        int(&f.points_restored),
                        int(&f.negative_balance_created),
                        f.fully_refunded,
                    );
                    check(
                        "RefundReceipt (reversed, restored, debt created, fully refunded)",
                        expected,
                        got,
                    )?;
                }
                Err(e) => check("RefundReceipt outcome", e, outcome_of(&r))?,
            }
        }
        Op::Advance { minutes } => {
            sut.ledger.clock.advance(Duration::minutes(*minutes));
            model.now = sut.ledger.clock.now();
            sut.process_due().await;
            model.due_work();
            check(
                "open lots after the due-work pass (id, remaining, pending)",
                model.open_lots(),
                sut.open_lots().await,
            )?;
        }
    }
    // What GetBalance shows: released or restored points of a lot past its expiry are gone.
    model.expire_due();
    model.check_invariants()?;
    let (a, h, p) = sut.balance().await;
    check(
        "balance (available, held, pending)",
        (model.available, model.held, model.pending),
        (a, h, p),
    )
}

/// The end of a sequence: the due-work pass catches the journal up; Verify is ok; every
/// transaction's entries sum to zero and the customer's entries sum to the balance.
async fn finish(sut: &mut Sut<'_>, model: &Model) -> Result<(), String> {
    sut.process_due().await;
    check(
        "open lots at the end",
        model.open_lots(),
        sut.open_lots().await,
    )?;
    let v = sut
        .client()
        .verify(pb::VerifyRequest {
            merchant_id: sut.merchant.clone(),
            customer_ids: vec![],
            max_differences: 0,
        })
        .await
        .map_err(|e| format!("Verify failed: {e}"))?
        .into_inner();
    if !v.ok {
        return Err(format!("Verify found differences: {:?}", v.differences));
    }
    let mut transactions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = sut
            .client()
            .list_history(pb::ListHistoryRequest {
                merchant_id: sut.merchant.clone(),
                customer_id: sut.customer.clone(),
                include_entries: true,
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("ListHistory failed: {e}"))?
            .into_inner();
        transactions.extend(page.transactions);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let (mut available, mut held, mut pending) = (0, 0, 0);
    for t in &transactions {
        let sum: i64 = t.entries.iter().map(|e| int(&e.amount)).sum();
        if sum != 0 {
            return Err(format!(
                "entries of transaction {} sum to {sum}: {t:?}",
                t.transaction_id
            ));
        }
        for e in &t.entries {
            match e.account.rsplit(':').next() {
                Some("available") if e.account.starts_with("customer:") => {
                    available += int(&e.amount)
                }
                Some("held") if e.account.starts_with("customer:") => held += int(&e.amount),
                Some("pending") if e.account.starts_with("customer:") => pending += int(&e.amount),
                _ => {}
            }
        }
    }
    check(
        "journal sums (available, held, pending)",
        (model.available, model.held, model.pending),
        (available, held, pending),
    )
}

/// Which outcomes the runs produced (printed with `--nocapture`, to see what was exercised).
static STATS: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

fn record_outcome<V: std::fmt::Debug>(what: &str, value: &V) {
    if !what.ends_with("outcome") {
        return;
    }
    let key = format!("{what}: {value:?}");
    let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
    match stats.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => stats.push((key, 1)),
    }
}

// ---- the property test --------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_model(backend: Backend, tag: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ledger = rt.block_on(TestLedger::start(backend));
    let seed = env_u64("LEDGER_MODEL_SEED", 0x6b6f_7069_6c6b);
    let config = Config {
        cases: env_u64("LEDGER_MODEL_CASES", 20) as u32,
        failure_persistence: None,
        max_shrink_iters: 48,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let case = AtomicU64::new(0);
    let strategy = proptest::collection::vec(op_strategy(), 20..=30);
    let result = runner.run(&strategy, |ops| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        rt.block_on(async {
            let mut sut = Sut {
                ledger: &ledger,
                merchant: format!("m-model-{tag}-{n}"),
                customer: "c1".to_owned(),
                seq: 0,
            };
            let mut model = Model::new(ledger.clock.now());
            for (i, op) in ops.iter().enumerate() {
                step(&mut sut, &mut model, op, i)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("after op #{i} {op:?}: {e}")))?;
            }
            finish(&mut sut, &model)
                .await
                .map_err(|e| TestCaseError::fail(format!("at the end: {e}")))
        })
    });
    let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    stats.sort();
    eprintln!("outcomes ({tag}): {stats:#?}");
    if let Err(e) = result {
        panic!("the service disagrees with the model (LEDGER_MODEL_SEED={seed}): {e}");
    }
    rt.block_on(ledger.stop());
}

#[test]
fn the_service_agrees_with_the_model_on_sqlite() {
    run_model(Backend::Sqlite, "sqlite");
}

#[test]
fn the_service_agrees_with_the_model_on_postgres() {
    run_model(Backend::PostgresRedis, "pg");
}

#[test]
fn proportional_shares_add_up() {
    // The oracle's own arithmetic: 10 over 3 units one at a time is 3 + 3 + 4.
    assert_eq!(
        (
            share(10, 0, 3, 0, 1),
            share(10, 3, 3, 1, 1),
            share(10, 6, 3, 2, 1)
        ),
        (3, 3, 4)
    );
    assert_eq!(share(7, 0, 2, 0, 2), 7);
    // Cumulative: 5 over 20 units one at a time gives 1 on every 4th unit, not 5 at the end.
    let mut done = 0;
    let steps: Vec<i64> = (0..20)
        .map(|k| {
            let s = share(5, done, 20, k, 1);
            done += s;
            s
        })
        .collect();
    assert_eq!(steps.iter().sum::<i64>(), 5);
    assert_eq!(&steps[..4], &[0, 0, 0, 1]);
}
