//! Exponential back-off, the one way every Kopilka retry waits: `initial`, doubling, at most
//! `max`. [`Backoff`] keeps the state of one retry loop; [`Backoff::nth`] is the same schedule
//! for a retry whose count is stored (the gateway's kept tier decisions).

use std::time::Duration;

/// `initial`, doubling, at most `max`; reset on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The pause after one more failure.
    pub fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// After a success the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }

    /// The pause after `failures` earlier failures: what [`Backoff::failed`] returns the
    /// `failures + 1`-th time.
    pub fn nth(initial: Duration, max: Duration, failures: u32) -> Duration {
        initial.saturating_mul(1u32 << failures.min(31)).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let pauses: Vec<u64> = (0..9).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }

    #[test]
    fn nth_is_the_same_schedule() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(initial, max);
        for failures in 0..40 {
            assert_eq!(
                Backoff::nth(initial, max, failures),
                b.failed(),
                "{failures}"
            );
        }
        assert_eq!(Backoff::nth(initial, max, u32::MAX), max);
    }
}
