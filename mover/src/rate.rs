//! The one rate limiter: a token bucket (in its GCRA form) shared by every
//! thread that charges it. The network side charges it in bytes (one bucket
//! per process for `--bwlimit`, so concurrent streams share the cap); the
//! EBS side in requests (one per snapshot, under AWS's per-snapshot limit).
//!
//! The state is the instant the bucket is full again, i.e. when everything
//! charged so far is paid off at the rate. A charge moves it later by the
//! charge's cost; the taker sleeps only for what lies beyond the burst
//! allowance, so after an idle spell a burst goes through at once, and a
//! taker that overdraws sleeps off its own debt (concurrent takers queue
//! behind each other and the sum stays at the rate).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};

/// Caps the rate of all the threads that share it.
pub struct RateLimiter {
    /// Units per second; 0 means no cap.
    rate: u64,
    /// What the burst allowance is worth in time.
    burst: Duration,
    clock: Arc<dyn Clock>,
    /// When the bucket is full again (None: full now).
    full_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `per_second` units per second on average (0: no cap), up to `burst`
    /// units back to back after an idle spell; starts full.
    pub fn new(per_second: u64, burst: u64) -> Self {
        Self::with_clock(per_second, burst, Arc::new(SystemClock))
    }

    /// [`RateLimiter::new`] on the given clock.
    pub fn with_clock(per_second: u64, burst: u64, clock: Arc<dyn Clock>) -> Self {
        let mut lim = RateLimiter {
            rate: per_second,
            burst: Duration::ZERO,
            clock,
            full_at: Mutex::new(None),
        };
        lim.burst = lim.cost(burst);
        lim
    }

    /// The rate, units per second (0: no cap).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How long `units` take at the rate.
    fn cost(&self, units: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let nanos = u128::from(units) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Charges `units`; sleeps as long as the charge lies beyond the burst,
    /// and returns how long that was.
    pub fn take(&self, units: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let wait = {
            // A poisoned lock only means another thread panicked between two
            // lines that keep the value consistent.
            let mut full_at = self.full_at.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.clock.now();
            let next = full_at.map_or(now, |t| t.max(now)) + self.cost(units);
            *full_at = Some(next);
            (next - now).saturating_sub(self.burst)
        };
        if !wait.is_zero() {
            self.clock.sleep(wait);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limiter(rate: u64, burst: u64) -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock::default());
        clock.advance(Duration::from_secs(10));
        (clock.clone(), RateLimiter::with_clock(rate, burst, clock))
    }

    #[test]
    fn holds_the_average_rate_after_the_burst() {
        // (rate, burst, units per take, takes, virtual time it must take)
        let cases: [(u64, u64, u64, u32, Duration); 3] = [
            // 10 requests go at once, the next 1000 take a millisecond each.
            (1000, 10, 1, 1010, Duration::from_millis(1000)),
            // 10 MB at 1 MB/s with a 100 ms burst: 10 s less the burst.
            (
                1_000_000,
                100_000,
                10_000,
                1000,
                Duration::from_millis(9900),
            ),
            // No cap.
            (0, 0, 1_000_000, 100, Duration::ZERO),
        ];
        for (rate, burst, units, takes, want) in cases {
            let (clock, lim) = limiter(rate, burst);
            for _ in 0..takes {
                lim.take(units);
            }
            let t = clock.elapsed() - Duration::from_secs(10);
            let diff = t.abs_diff(want);
            assert!(
                diff <= Duration::from_millis(1),
                "rate {rate}: took {t:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn a_burst_goes_through_after_idle_but_idle_time_is_not_saved_up() {
        let (clock, lim) = limiter(100, 5);
        for _ in 0..5 {
            lim.take(1);
        }
        assert!(clock.sleeps().is_empty());
        lim.take(1);
        assert_eq!(clock.sleeps().len(), 1);
        clock.advance(Duration::from_secs(1));
        let before = clock.sleeps().len();
        for _ in 0..5 {
            lim.take(1);
        }
        assert_eq!(clock.sleeps().len(), before);

        // A minute idle buys the burst (100 ms), not a minute: 1.1 MB at
        // 1 MB/s still waits 1 s.
        let (clock, lim) = limiter(1_000_000, 100_000);
        clock.advance(Duration::from_secs(60));
        let before = clock.elapsed();
        lim.take(1_100_000);
        assert_eq!(clock.elapsed() - before, Duration::from_secs(1));
    }
}
