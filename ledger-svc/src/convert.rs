//! Conversions between stored rows, domain values and the proto messages of the API.

use chrono::{DateTime, Duration, Utc};
use kopilka_proto::ledger::{Balance, ExpiringPoints, Hold, Lot as LotProto, PendingPoints};
use pbjson_types::Timestamp;
use rust_decimal::Decimal;

use crate::domain::book::{lot_state, AccountState, Lot};
use crate::error::Error;
use crate::settings::Settings;
use crate::store::HoldRow;

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    kopilka_runtime::timestamps::to_proto(t)
}

pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(timestamp)
}

/// A proto timestamp as a UTC instant, truncated to microseconds; an impossible one is a field
/// violation.
pub fn instant(t: &Timestamp, field: &str) -> Result<DateTime<Utc>, Error> {
    kopilka_runtime::timestamps::from_proto_micros(t)
        .ok_or_else(|| Error::invalid(field, "not a valid timestamp"))
}

pub fn opt_instant(t: &Option<Timestamp>, field: &str) -> Result<Option<DateTime<Utc>>, Error> {
    t.as_ref().map(|t| instant(t, field)).transpose()
}

pub fn lot(l: &Lot, s: &Settings) -> LotProto {
    LotProto {
        lot_id: l.lot_id.clone(),
        customer_id: l.customer_id.clone(),
        kind: l.kind,
        action: l.action,
        amount: s.points(l.amount),
        remaining: s.points(l.remaining),
        state: l.state,
        activates_at: opt_timestamp(l.activates_at),
        expires_at: opt_timestamp(l.expires_at),
        created_at: Some(timestamp(l.created_at)),
        receipt_id: l.receipt_id.clone().unwrap_or_default(),
        grant_key: l.grant_key.clone().unwrap_or_default(),
        rule_ids: l.rule_ids.clone(),
    }
}

pub fn hold(h: &HoldRow, s: &Settings) -> Hold {
    Hold {
        hold_id: h.hold_id.clone(),
        customer_id: h.customer_id.clone(),
        amount: s.points(h.amount),
        committed_amount: s.points(h.committed_amount),
        state: h.state,
        reference: h.reference.clone(),
        created_at: Some(timestamp(h.created_at)),
        expires_at: Some(timestamp(h.expires_at)),
        finalized_at: opt_timestamp(h.finalized_at),
    }
}

/// The balance a customer sees, from the account row and the open lots.
pub fn balance(
    account: &AccountState,
    lots: &[Lot],
    s: &Settings,
    now: DateTime<Utc>,
    expiring_within: Duration,
) -> Balance {
    let horizon = now + expiring_within;
    let mut expiring: Vec<(DateTime<Utc>, Decimal)> = Vec::new();
    let mut pending: Vec<(DateTime<Utc>, Decimal)> = Vec::new();
    for l in lots {
        match l.state {
            lot_state::ACTIVE => {
                if let Some(exp) = l.expires_at.filter(|e| *e <= horizon) {
                    if l.remaining > Decimal::ZERO {
                        add(&mut expiring, exp, l.remaining);
                    }
                }
            }
            lot_state::PENDING if l.remaining > Decimal::ZERO => {
                add(&mut pending, l.activates_at.unwrap_or(now), l.remaining)
            }
            _ => {}
        }
    }
    expiring.sort();
    pending.sort();
    Balance {
        customer_id: account.customer_id.clone(),
        available: s.points(account.available),
        active: s.points(account.available + account.held),
        held: s.points(account.held),
        pending: s.points(account.pending),
        expiring: expiring
            .into_iter()
            .map(|(t, a)| ExpiringPoints {
                amount: s.points(a),
                expires_at: Some(timestamp(t)),
            })
            .collect(),
        pending_activations: pending
            .into_iter()
            .map(|(t, a)| PendingPoints {
                amount: s.points(a),
                activates_at: Some(timestamp(t)),
            })
            .collect(),
        stamps: Vec::new(),
        as_of: Some(timestamp(now)),
    }
}

fn add(groups: &mut Vec<(DateTime<Utc>, Decimal)>, at: DateTime<Utc>, amount: Decimal) {
    match groups.iter_mut().find(|(t, _)| *t == at) {
        Some((_, a)) => *a += amount,
        None => groups.push((at, amount)),
    }
}

/// The bounds of a period, each optional.
pub type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The optional bounds of an optional period (`field.start`, `field.end`).
pub fn period_bounds(
    period: &Option<kopilka_proto::types::Period>,
    field: &str,
) -> Result<Bounds, Error> {
    match period {
        None => Ok((None, None)),
        Some(p) => Ok((
            opt_instant(&p.start, &format!("{field}.start"))?,
            opt_instant(&p.end, &format!("{field}.end"))?,
        )),
    }
}
