//! Store failures in the log: one warn line per failure, at most once a second per thread.
//! Its own module because every store logs through it (the Redis driver and the SQLite writer
//! have no caller to hand a failure to) and it needs nothing from them.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most one store-failure line per thread this often: during an outage every request
/// fails the same way, and the log must stay readable.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// When a thread may log its next store failure.
#[derive(Clone, Copy, Default)]
struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// Whether a failure at `now` is logged; if it is, how many were left out before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

thread_local! {
    static WARNED: Cell<WarnLimit> = const { Cell::new(WarnLimit { last: None, suppressed: 0 }) };
}

/// Logs a store failure at warn, as upstream failures are: at most once a second per worker
/// thread, with the number of failures left out since the previous line.
pub(super) fn log_failure(store: &'static str, op: &'static str, e: &dyn std::fmt::Display) {
    let admitted = WARNED.with(|w| {
        let mut limit = w.get();
        let admitted = limit.admit(Instant::now());
        w.set(limit);
        admitted
    });
    if let Some(suppressed) = admitted {
        tracing::warn!(store, op, error = %e, suppressed, "budget store failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_are_logged_at_most_once_a_second_with_a_count_of_the_rest() {
        let mut w = WarnLimit::default();
        let t0 = Instant::now();
        assert_eq!(w.admit(t0), Some(0), "the first failure is logged");
        assert_eq!(w.admit(t0 + Duration::from_millis(10)), None);
        assert_eq!(w.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(
            w.admit(t0 + Duration::from_secs(1)),
            Some(2),
            "a second later: logged, with the two left out"
        );
        assert_eq!(w.admit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(w.admit(t0 + Duration::from_secs(3)), Some(1));
    }
}
