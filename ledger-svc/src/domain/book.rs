//! One customer's account and unspent lots, loaded under lock, to which a write applies its
//! movements. Every movement changes the projection (available, pending, held), the lots, and
//! appends journal entries that sum to zero — all in memory; the store then persists exactly
//! what changed.
//!
//! Invariants kept by every method (and checked by `Verify`):
//! - `available >= 0` ⇒ `available == Σ free(active lots)`, where free = remaining − held;
//! - `available < 0` (a debt) ⇒ `Σ free(active lots) == 0`: new free points pay the debt first;
//! - `pending == Σ remaining(pending lots)`, `held == Σ held(active lots)`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// Lot states (values of `kopilka.ledger.v1.LotState`).
pub mod lot_state {
    pub const PENDING: i32 = 1;
    pub const ACTIVE: i32 = 2;
    pub const CONSUMED: i32 = 3;
    pub const EXPIRED: i32 = 4;
    pub const REVERSED: i32 = 5;
}
use lot_state::*;

/// A journal account: three per customer, the rest per merchant (system accounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    Available,
    Pending,
    Held,
    Issued,
    Redeemed,
    Expired,
    Reversed,
    Restored,
    Adjusted,
    Merged,
}

impl Account {
    pub const ALL: [Account; 10] = [
        Account::Available,
        Account::Pending,
        Account::Held,
        Account::Issued,
        Account::Redeemed,
        Account::Expired,
        Account::Reversed,
        Account::Restored,
        Account::Adjusted,
        Account::Merged,
    ];

    /// The name stored in `entries.account`.
    pub fn name(self) -> &'static str {
        match self {
            Account::Available => "available",
            Account::Pending => "pending",
            Account::Held => "held",
            Account::Issued => "issued",
            Account::Redeemed => "redeemed",
            Account::Expired => "expired",
            Account::Reversed => "reversed",
            Account::Restored => "restored",
            Account::Adjusted => "adjusted",
            Account::Merged => "merged",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Account::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether the account belongs to a customer (else to the merchant).
    pub fn is_customer(self) -> bool {
        matches!(self, Account::Available | Account::Pending | Account::Held)
    }
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The customer for customer accounts; empty for system accounts.
    pub customer_id: String,
    pub account: Account,
    /// Signed: credits to an account are positive.
    pub amount: Decimal,
    /// The lot the points came from or went to, when one did.
    pub lot_id: String,
}

/// A lot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    pub lot_id: String,
    pub customer_id: String,
    pub kind: i32,
    pub action: i32,
    pub amount: Decimal,
    pub remaining: Decimal,
    pub held: Decimal,
    pub state: i32,
    pub activates_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub receipt_id: Option<String>,
    pub grant_key: Option<String>,
    pub rule_ids: Vec<String>,
}

impl Lot {
    /// Unspent and not held.
    pub fn free(&self) -> Decimal {
        self.remaining - self.held
    }

    fn settle_state(&mut self) {
        if self.remaining == Decimal::ZERO && self.held == Decimal::ZERO && self.state == ACTIVE {
            self.state = CONSUMED;
        }
    }
}

/// The projection row of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountState {
    pub customer_id: String,
    pub available: Decimal,
    pub pending: Decimal,
    pub held: Decimal,
    pub lifetime_turnover: Decimal,
    pub purchase_count: i64,
    pub first_purchase_at: Option<DateTime<Utc>>,
    pub last_purchase_at: Option<DateTime<Utc>>,
}

/// A lot to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLot {
    pub lot_id: String,
    pub kind: i32,
    pub action: i32,
    pub amount: Decimal,
    pub activates_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub receipt_id: Option<String>,
    pub grant_key: Option<String>,
    pub rule_ids: Vec<String>,
}

/// Why a movement cannot happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("insufficient points: {available} available, {requested} requested")]
    Insufficient {
        available: Decimal,
        requested: Decimal,
    },
    #[error("the balance would fall to {would_be}, below the allowed -{limit}")]
    NegativeLimit { limit: Decimal, would_be: Decimal },
}

/// What to do when points to take back are no longer there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// The balance may go negative, down to `-limit` (`None` = no limit).
    AllowNegative(Option<Decimal>),
    /// Take what is there and report the rest.
    Report,
}

/// The result of taking points back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeBack {
    /// Points taken from lots.
    pub taken: Decimal,
    /// Points not available, reported to the caller (Report policy).
    pub shortfall: Decimal,
    /// Points that made the balance negative (AllowNegative policy).
    pub debt_created: Decimal,
    /// The earliest expiry among the lots points were taken from.
    pub earliest_expiry: Option<DateTime<Utc>>,
}

/// A customer's account and unspent lots during one write.
#[derive(Debug, Clone)]
pub struct Book {
    pub account: AccountState,
    lots: Vec<Lot>,
    touched: Vec<bool>,
    loaded: usize,
    entries: Vec<Entry>,
    now: DateTime<Utc>,
}

impl Book {
    /// `lots` are the customer's pending and active lots.
    pub fn new(account: AccountState, lots: Vec<Lot>, now: DateTime<Utc>) -> Self {
        let loaded = lots.len();
        Self {
            account,
            touched: vec![false; loaded],
            lots,
            loaded,
            entries: Vec::new(),
            now,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Every lot known to this write (loaded and new).
    pub fn lots(&self) -> &[Lot] {
        &self.lots
    }

    /// Loaded lots this write changed.
    pub fn changed_lots(&self) -> impl Iterator<Item = &Lot> {
        self.lots[..self.loaded]
            .iter()
            .zip(&self.touched)
            .filter_map(|(lot, touched)| touched.then_some(lot))
    }

    /// Lots this write created.
    pub fn new_lots(&self) -> &[Lot] {
        &self.lots[self.loaded..]
    }

    /// The journal entries written so far (they sum to zero).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn lot(&self, lot_id: &str) -> Option<&Lot> {
        self.lots.iter().find(|l| l.lot_id == lot_id)
    }

    /// Σ free points of active lots.
    pub fn free_points(&self) -> Decimal {
        self.lots
            .iter()
            .filter(|l| l.state == ACTIVE)
            .map(Lot::free)
            .sum()
    }

    fn touch(&mut self, i: usize) -> &mut Lot {
        if i < self.loaded {
            self.touched[i] = true;
        }
        &mut self.lots[i]
    }

    fn entry(&mut self, customer: bool, account: Account, amount: Decimal, lot_id: &str) {
        self.entries.push(Entry {
            customer_id: if customer {
                self.account.customer_id.clone()
            } else {
                String::new()
            },
            account,
            amount,
            lot_id: lot_id.to_owned(),
        });
    }

    /// Moves `amount` from one account to another (one entry each).
    fn movement(&mut self, from: Account, to: Account, amount: Decimal, lot_id: &str) {
        self.entry(from.is_customer(), from, -amount, lot_id);
        self.entry(to.is_customer(), to, amount, lot_id);
    }

    /// Active lots in spending order: soonest expiry first, lots without expiry last, then by
    /// creation time and id.
    fn spend_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.lots.len())
            .filter(|&i| self.lots[i].state == ACTIVE && self.lots[i].free() > Decimal::ZERO)
            .collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.lots[a], &self.lots[b]);
            (
                a.expires_at.is_none(),
                a.expires_at,
                a.created_at,
                &a.lot_id,
            )
                .cmp(&(
                    b.expires_at.is_none(),
                    b.expires_at,
                    b.created_at,
                    &b.lot_id,
                ))
        });
        order
    }

    /// Takes up to `amount` free points from active lots in spending order (lots in `first`
    /// before the others); returns what was taken per lot.
    fn take_free(&mut self, amount: Decimal, first: &[usize]) -> Vec<(usize, Decimal)> {
        let mut left = amount;
        let mut taken = Vec::new();
        let mut order: Vec<usize> = first.to_vec();
        order.extend(
            self.spend_order()
                .into_iter()
                .filter(|i| !first.contains(i)),
        );
        for i in order {
            if left <= Decimal::ZERO {
                break;
            }
            let lot = &self.lots[i];
            if lot.state != ACTIVE {
                continue;
            }
            let take = lot.free().min(left);
            if take <= Decimal::ZERO {
                continue;
            }
            left -= take;
            taken.push((i, take));
        }
        taken
    }

    /// Uses new free points of lot `i` to pay off a debt (negative available).
    fn settle_debt(&mut self, i: usize) {
        if self.lots[i].state != ACTIVE {
            return;
        }
        // `available` already includes these points; paying the debt only removes them from
        // the lot, which keeps Σ free == max(available, 0).
        let owed =
            Decimal::ZERO.max(self.free_points() - self.account.available.max(Decimal::ZERO));
        let pay = self.lots[i].free().min(owed);
        if pay > Decimal::ZERO {
            let lot = self.touch(i);
            lot.remaining -= pay;
            lot.settle_state();
        }
    }

    /// Appends entries computed outside the book (a merge moves balances between customers).
    pub fn push_entries(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.entries.extend(entries);
    }

    /// Restores the debt invariant after balances were combined (a merge): free points beyond
    /// a non-negative available balance pay the debt.
    pub fn settle_all_debt(&mut self) {
        for i in self.spend_order() {
            self.settle_debt(i);
        }
    }

    /// Books a new lot from `source` (issued, restored, adjusted …): pending when it activates
    /// later, else active (paying off any debt first). Returns its index in [`Book::lots`].
    pub fn credit(&mut self, new: NewLot, source: Account) -> usize {
        let pending = new.activates_at.is_some_and(|t| t > self.now);
        let lot = Lot {
            customer_id: self.account.customer_id.clone(),
            remaining: new.amount,
            held: Decimal::ZERO,
            state: if pending { PENDING } else { ACTIVE },
            created_at: self.now,
            lot_id: new.lot_id,
            kind: new.kind,
            action: new.action,
            amount: new.amount,
            activates_at: new.activates_at,
            expires_at: new.expires_at,
            receipt_id: new.receipt_id,
            grant_key: new.grant_key,
            rule_ids: new.rule_ids,
        };
        let (amount, lot_id) = (lot.amount, lot.lot_id.clone());
        self.lots.push(lot);
        let i = self.lots.len() - 1;
        if pending {
            self.account.pending += amount;
            self.movement(source, Account::Pending, amount, &lot_id);
        } else {
            self.account.available += amount;
            self.movement(source, Account::Available, amount, &lot_id);
            self.settle_debt(i);
        }
        i
    }

    /// Spends `amount` available points into `to` (redeemed, adjusted …).
    pub fn debit(
        &mut self,
        amount: Decimal,
        to: Account,
    ) -> Result<Vec<(String, Decimal)>, BookError> {
        if self.account.available < amount {
            return Err(BookError::Insufficient {
                available: self.account.available,
                requested: amount,
            });
        }
        let taken = self.take_free(amount, &[]);
        let mut consumed = Vec::new();
        for (i, take) in taken {
            let lot = self.touch(i);
            lot.remaining -= take;
            lot.settle_state();
            let lot_id = lot.lot_id.clone();
            self.movement(Account::Available, to, take, &lot_id);
            consumed.push((lot_id, take));
        }
        self.account.available -= amount;
        Ok(consumed)
    }

    /// Reserves `amount` available points; returns the per-lot allocations.
    pub fn hold(&mut self, amount: Decimal) -> Result<Vec<(String, Decimal)>, BookError> {
        if self.account.available < amount {
            return Err(BookError::Insufficient {
                available: self.account.available,
                requested: amount,
            });
        }
        let taken = self.take_free(amount, &[]);
        let mut allocations = Vec::new();
        for (i, take) in taken {
            let lot = self.touch(i);
            lot.held += take;
            let lot_id = lot.lot_id.clone();
            self.movement(Account::Available, Account::Held, take, &lot_id);
            allocations.push((lot_id, take));
        }
        self.account.available -= amount;
        self.account.held += amount;
        Ok(allocations)
    }

    /// Ends a hold: `commit` points (at most the held total) are redeemed, taken from the
    /// allocations in order; the rest goes back to the lots. Returns (committed, released).
    /// Allocations whose lot is not loaded (e.g. merged away) are skipped.
    pub fn finish_hold(
        &mut self,
        allocations: &[(String, Decimal)],
        commit: Decimal,
    ) -> (Decimal, Decimal) {
        let mut to_commit = commit;
        let (mut committed, mut released) = (Decimal::ZERO, Decimal::ZERO);
        for (lot_id, amount) in allocations {
            let Some(i) = self.lots.iter().position(|l| &l.lot_id == lot_id) else {
                continue;
            };
            let c = (*amount).min(to_commit.max(Decimal::ZERO));
            let r = *amount - c;
            to_commit -= c;
            {
                let lot = self.touch(i);
                lot.held -= *amount;
                lot.remaining -= c;
                lot.settle_state();
            }
            if c > Decimal::ZERO {
                self.movement(Account::Held, Account::Redeemed, c, lot_id);
            }
            if r > Decimal::ZERO {
                self.movement(Account::Held, Account::Available, r, lot_id);
                self.account.available += r;
                self.settle_debt(i);
            }
            committed += c;
            released += r;
        }
        self.account.held -= committed + released;
        (committed, released)
    }

    /// Activates pending lots due by now; returns how many.
    pub fn activate_due(&mut self) -> usize {
        let due: Vec<usize> = (0..self.lots.len())
            .filter(|&i| {
                let l = &self.lots[i];
                l.state == PENDING && l.activates_at.is_none_or(|t| t <= self.now)
            })
            .collect();
        for &i in &due {
            let (amount, lot_id) = {
                let lot = self.touch(i);
                lot.state = ACTIVE;
                (lot.remaining, lot.lot_id.clone())
            };
            self.account.pending -= amount;
            self.account.available += amount;
            self.movement(Account::Pending, Account::Available, amount, &lot_id);
            if amount == Decimal::ZERO {
                self.touch(i).settle_state();
            }
            self.settle_debt(i);
        }
        due.len()
    }

    /// Expires the free points of active lots whose expiry has passed; returns (lots, points).
    pub fn expire_due(&mut self) -> (usize, Decimal) {
        let due: Vec<usize> = (0..self.lots.len())
            .filter(|&i| {
                let l = &self.lots[i];
                l.state == ACTIVE
                    && l.expires_at.is_some_and(|t| t <= self.now)
                    && l.free() > Decimal::ZERO
            })
            .collect();
        let mut total = Decimal::ZERO;
        for &i in &due {
            let (x, lot_id) = {
                let lot = self.touch(i);
                let x = lot.free();
                lot.remaining -= x;
                if lot.held == Decimal::ZERO {
                    lot.state = EXPIRED;
                }
                (x, lot.lot_id.clone())
            };
            self.account.available -= x;
            self.movement(Account::Available, Account::Expired, x, &lot_id);
            total += x;
        }
        (due.len(), total)
    }

    /// Takes back `amount` accrued points (a refund): first from the lots of `receipt_id`
    /// (pending or free), then from other free points, then per the shortfall policy.
    pub fn take_back(
        &mut self,
        amount: Decimal,
        receipt_id: &str,
        policy: Shortfall,
    ) -> Result<TakeBack, BookError> {
        let mut result = TakeBack::default();
        let mut left = amount;
        let own: Vec<usize> = (0..self.lots.len())
            .filter(|&i| self.lots[i].receipt_id.as_deref() == Some(receipt_id))
            .collect();
        // Pending points of this receipt first: they were never spendable.
        for &i in &own {
            if left <= Decimal::ZERO {
                break;
            }
            if self.lots[i].state != PENDING {
                continue;
            }
            let take = self.lots[i].remaining.min(left);
            if take <= Decimal::ZERO {
                continue;
            }
            let lot_id = {
                let lot = self.touch(i);
                lot.remaining -= take;
                if lot.remaining == Decimal::ZERO {
                    lot.state = REVERSED;
                }
                lot.lot_id.clone()
            };
            self.account.pending -= take;
            self.movement(Account::Pending, Account::Reversed, take, &lot_id);
            left -= take;
            result.taken += take;
        }
        let own_active: Vec<usize> = own
            .iter()
            .copied()
            .filter(|&i| self.lots[i].state == ACTIVE)
            .collect();
        for (i, take) in self.take_free(left, &own_active) {
            let lot_id = {
                let lot = self.touch(i);
                lot.remaining -= take;
                if lot.remaining == Decimal::ZERO && lot.held == Decimal::ZERO {
                    lot.state = if own.contains(&i) { REVERSED } else { CONSUMED };
                }
                lot.lot_id.clone()
            };
            if let Some(exp) = self.lots[i].expires_at {
                result.earliest_expiry = Some(result.earliest_expiry.map_or(exp, |e| e.min(exp)));
            }
            self.account.available -= take;
            self.movement(Account::Available, Account::Reversed, take, &lot_id);
            left -= take;
            result.taken += take;
        }
        if left > Decimal::ZERO {
            match policy {
                Shortfall::Report => result.shortfall = left,
                Shortfall::AllowNegative(limit) => {
                    let would_be = self.account.available - left;
                    if let Some(limit) = limit {
                        if would_be < -limit {
                            return Err(BookError::NegativeLimit { limit, would_be });
                        }
                    }
                    self.account.available = would_be;
                    self.movement(Account::Available, Account::Reversed, left, "");
                    result.debt_created = left;
                }
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    fn d(v: i64) -> Decimal {
        Decimal::from(v)
    }

    fn lot(id: &str, amount: i64, expires_h: Option<i64>, activates_h: Option<i64>) -> NewLot {
        NewLot {
            lot_id: id.into(),
            kind: 1,
            action: 0,
            amount: d(amount),
            activates_at: activates_h.map(t),
            expires_at: expires_h.map(t),
            receipt_id: None,
            grant_key: None,
            rule_ids: vec![],
        }
    }

    fn book() -> Book {
        Book::new(
            AccountState {
                customer_id: "c1".into(),
                ..Default::default()
            },
            vec![],
            t(0),
        )
    }

    fn assert_invariants(b: &Book) {
        let sum: Decimal = b.entries().iter().map(|e| e.amount).sum();
        assert_eq!(sum, Decimal::ZERO, "entries sum to zero");
        let free = b.free_points();
        if b.account.available >= Decimal::ZERO {
            assert_eq!(b.account.available, free, "available == free");
        } else {
            assert_eq!(free, Decimal::ZERO, "a debt leaves no free points");
        }
        let pending: Decimal = b
            .lots()
            .iter()
            .filter(|l| l.state == PENDING)
            .map(|l| l.remaining)
            .sum();
        assert_eq!(b.account.pending, pending);
        let held: Decimal = b.lots().iter().map(|l| l.held).sum();
        assert_eq!(b.account.held, held);
    }

    #[test]
    fn spends_soonest_expiring_first() {
        let mut b = book();
        b.credit(lot("never", 50, None, None), Account::Issued);
        b.credit(lot("late", 30, Some(48), None), Account::Issued);
        b.credit(lot("soon", 20, Some(24), None), Account::Issued);
        let consumed = b.debit(d(60), Account::Redeemed).unwrap();
        assert_eq!(
            consumed,
            vec![
                ("soon".into(), d(20)),
                ("late".into(), d(30)),
                ("never".into(), d(10))
            ]
        );
        assert_eq!(b.account.available, d(40));
        assert_invariants(&b);
        assert_eq!(
            b.debit(d(41), Account::Redeemed),
            Err(BookError::Insufficient {
                available: d(40),
                requested: d(41)
            })
        );
    }

    #[test]
    fn hold_commit_and_release() {
        let mut b = book();
        b.credit(lot("a", 100, None, None), Account::Issued);
        let alloc = b.hold(d(70)).unwrap();
        assert_eq!((b.account.available, b.account.held), (d(30), d(70)));
        assert!(b.hold(d(31)).is_err(), "held points cannot be held twice");
        let (c, r) = b.finish_hold(&alloc, d(50));
        assert_eq!((c, r), (d(50), d(20)));
        assert_eq!((b.account.available, b.account.held), (d(50), d(0)));
        assert_invariants(&b);
    }

    #[test]
    fn pending_points_activate_and_expire_on_time() {
        let mut b = book();
        b.credit(lot("p", 100, Some(48), Some(24)), Account::Issued);
        assert_eq!((b.account.available, b.account.pending), (d(0), d(100)));
        b.now = t(24);
        assert_eq!(b.activate_due(), 1);
        assert_eq!((b.account.available, b.account.pending), (d(100), d(0)));
        b.debit(d(30), Account::Redeemed).unwrap();
        b.now = t(48);
        assert_eq!(b.expire_due(), (1, d(70)));
        assert_eq!(b.account.available, d(0));
        assert_eq!(b.lots()[0].state, EXPIRED);
        assert_invariants(&b);
    }

    #[test]
    fn expiry_spares_held_points() {
        let mut b = book();
        b.credit(lot("x", 100, Some(1), None), Account::Issued);
        let alloc = b.hold(d(40)).unwrap();
        b.now = t(2);
        assert_eq!(b.expire_due(), (1, d(60)));
        assert_eq!(b.lots()[0].state, ACTIVE, "still holds 40");
        b.finish_hold(&alloc, d(0));
        assert_eq!(
            b.expire_due(),
            (1, d(40)),
            "released points of an expired lot expire next"
        );
        assert_invariants(&b);
    }

    #[test]
    fn refund_takes_back_then_allows_a_debt_that_accruals_pay_off() {
        let mut b = book();
        let mut purchase = lot("r1-lot", 100, None, None);
        purchase.receipt_id = Some("r1".into());
        b.credit(purchase, Account::Issued);
        b.debit(d(80), Account::Redeemed).unwrap();
        let tb = b
            .take_back(d(100), "r1", Shortfall::AllowNegative(None))
            .unwrap();
        assert_eq!((tb.taken, tb.debt_created), (d(20), d(80)));
        assert_eq!(b.account.available, d(-80));
        assert_invariants(&b);
        b.credit(lot("next", 50, None, None), Account::Issued);
        assert_eq!(b.account.available, d(-30));
        assert_invariants(&b);
        b.credit(lot("more", 50, None, None), Account::Issued);
        assert_eq!(b.account.available, d(20));
        assert_invariants(&b);
    }

    #[test]
    fn refund_reports_a_shortfall_or_respects_the_limit() {
        let mut b = book();
        b.credit(lot("a", 10, None, None), Account::Issued);
        let tb = b.clone().take_back(d(25), "r", Shortfall::Report).unwrap();
        assert_eq!(
            (tb.taken, tb.shortfall, tb.debt_created),
            (d(10), d(15), d(0))
        );
        assert_eq!(
            b.take_back(d(25), "r", Shortfall::AllowNegative(Some(d(5)))),
            Err(BookError::NegativeLimit {
                limit: d(5),
                would_be: d(-15)
            })
        );
    }
}
