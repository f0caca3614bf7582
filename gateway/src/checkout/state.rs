//! The checkout state machine: which operation may move a checkout from which state, in one
//! function. Every write of a checkout is conditional on the version it was read at
//! ([`super::store::Checkouts::put`]), so with several gateway replicas a transition decided
//! on a stale read is never stored: the loser re-reads and decides again.
//!
//! ```text
//!            Calculate        Reserve          Confirm
//!   (none) ───────────▶ CALCULATED ─────▶ RESERVED ─────▶ CONFIRMED ──Refund──▶ PARTIALLY_REFUNDED
//!      │                   │   ▲ Calculate   │  ▲ Reserve     ▲                    │ Refund
//!      │                   │   └─────────────┘  └────────┘    │                    ▼
//!      │                   └──────── Confirm / offline ───────┘                 REFUNDED
//!      └──────────────────────────── Confirm / offline ───────┘
//!   (none) / CALCULATED / RESERVED ──Cancel──▶ CANCELLED
//! ```

use kopilka_proto::gateway::CheckoutState;

/// What is asked of a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A calculation is remembered with the checkout (books nothing).
    Calculate,
    /// Points are held for the receipt.
    Reserve,
    /// The receipt is booked online (from the hold when reserved).
    Confirm,
    /// The receipt is booked as sold offline: never after an online reservation.
    Offline,
    /// A reservation is voided or an unbooked checkout abandoned.
    Cancel,
    /// A booked receipt is refunded; `full` when the ledger reports it refunded in full.
    Refund { full: bool },
}

/// Why an operation cannot move a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The checkout is past the point where this operation applies (e.g. Cancel of a
    /// confirmed receipt); `hint` says what to do instead.
    Conflict { hint: &'static str },
    /// A Calculate of a booked or cancelled checkout: answered, but the stored checkout keeps
    /// what was booked.
    Keep,
}

/// Booked in the ledger: confirmed or (partly) refunded.
pub fn is_booked(state: CheckoutState) -> bool {
    matches!(
        state,
        CheckoutState::Confirmed | CheckoutState::PartiallyRefunded | CheckoutState::Refunded
    )
}

/// The state `op` moves a checkout in `from` (`None`: no checkout yet) to.
pub fn next(from: Option<CheckoutState>, op: Op) -> Result<CheckoutState, Refusal> {
    use CheckoutState as S;
    let from = from.unwrap_or(S::Unspecified);
    let open = matches!(from, S::Unspecified | S::Calculated | S::Reserved);
    match op {
        Op::Calculate if open => Ok(if from == S::Unspecified {
            S::Calculated
        } else {
            from
        }),
        Op::Calculate => Err(Refusal::Keep),
        Op::Reserve if open => Ok(S::Reserved),
        Op::Reserve => Err(Refusal::Conflict {
            hint: "it cannot be reserved again",
        }),
        Op::Confirm if open => Ok(S::Confirmed),
        Op::Offline if matches!(from, S::Unspecified | S::Calculated) => Ok(S::Confirmed),
        Op::Offline if from == S::Reserved => Err(Refusal::Conflict {
            hint: "it was reserved online: confirm it instead",
        }),
        Op::Confirm | Op::Offline => Err(Refusal::Conflict {
            hint: "it cannot be booked again",
        }),
        Op::Cancel if open || from == S::Cancelled => Ok(S::Cancelled),
        Op::Cancel => Err(Refusal::Conflict {
            hint: "refund it instead",
        }),
        Op::Refund { full } if is_booked(from) => Ok(if full {
            S::Refunded
        } else {
            S::PartiallyRefunded
        }),
        Op::Refund { .. } => Err(Refusal::Conflict {
            hint: "only a confirmed receipt can be refunded",
        }),
    }
}

/// The word for a state in messages and in `ErrorInfo.metadata["state"]`.
pub fn word(state: CheckoutState) -> &'static str {
    match state {
        CheckoutState::Unspecified => "unknown",
        CheckoutState::Calculated => "calculated",
        CheckoutState::Reserved => "reserved",
        CheckoutState::Confirmed => "confirmed",
        CheckoutState::Cancelled => "cancelled",
        CheckoutState::PartiallyRefunded => "partially refunded",
        CheckoutState::Refunded => "refunded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckoutState as S;

    const ALL: [Option<S>; 7] = [
        None,
        Some(S::Calculated),
        Some(S::Reserved),
        Some(S::Confirmed),
        Some(S::PartiallyRefunded),
        Some(S::Refunded),
        Some(S::Cancelled),
    ];

    #[test]
    fn a_booked_receipt_is_never_cancelled_reserved_or_booked_again() {
        for from in [S::Confirmed, S::PartiallyRefunded, S::Refunded] {
            for op in [Op::Cancel, Op::Reserve, Op::Confirm, Op::Offline] {
                assert!(
                    matches!(next(Some(from), op), Err(Refusal::Conflict { .. })),
                    "{op:?} from {from:?}"
                );
            }
            assert_eq!(next(Some(from), Op::Calculate), Err(Refusal::Keep));
        }
    }

    #[test]
    fn only_booked_receipts_are_refunded() {
        for from in ALL {
            let booked = from.is_some_and(is_booked);
            assert_eq!(
                next(from, Op::Refund { full: true }).is_ok(),
                booked,
                "{from:?}"
            );
        }
        assert_eq!(
            next(Some(S::Refunded), Op::Refund { full: false }),
            Ok(S::PartiallyRefunded),
            "the ledger's refund state is what the checkout follows"
        );
    }

    #[test]
    fn the_open_states_move_forward() {
        assert_eq!(next(None, Op::Calculate), Ok(S::Calculated));
        assert_eq!(next(Some(S::Reserved), Op::Calculate), Ok(S::Reserved));
        assert_eq!(next(Some(S::Calculated), Op::Reserve), Ok(S::Reserved));
        assert_eq!(next(Some(S::Reserved), Op::Reserve), Ok(S::Reserved));
        assert_eq!(next(Some(S::Reserved), Op::Confirm), Ok(S::Confirmed));
        assert_eq!(next(None, Op::Offline), Ok(S::Confirmed));
        assert!(matches!(
            next(Some(S::Reserved), Op::Offline),
            Err(Refusal::Conflict { .. })
        ));
        assert_eq!(next(Some(S::Reserved), Op::Cancel), Ok(S::Cancelled));
        assert_eq!(next(Some(S::Cancelled), Op::Cancel), Ok(S::Cancelled));
        for op in [Op::Reserve, Op::Confirm, Op::Offline] {
            assert!(matches!(
                next(Some(S::Cancelled), op),
                Err(Refusal::Conflict { .. })
            ));
        }
    }
}
