//! The background pass that keeps lots and holds on time. Several replicas may run it at once:
//! each customer is processed under its account lock, and activation, expiry and release are
//! idempotent by nature.

use std::time::Duration;

use crate::ledger::Ledger;

/// Runs [`Ledger::process_due`] every `interval`, for every merchant, until cancelled.
pub async fn run_due_work(ledger: Ledger, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match ledger.process_due(None, None, 10_000).await {
                Ok(done) => {
                    if done.activated + done.expired + done.holds_released > 0 {
                        tracing::info!(
                            activated = done.activated,
                            expired = done.expired,
                            holds_released = done.holds_released,
                            "due work done"
                        );
                    }
                    if !done.more {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "due work failed; retrying at the next tick");
                    break;
                }
            }
        }
    }
}
