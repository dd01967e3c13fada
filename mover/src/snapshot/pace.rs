//! Time, and the request-rate cap: a [`Clock`] trait (so retry and rate tests
//! run on virtual time) and one [`RateLimiter`] shared by all the workers of a
//! push or pull.
//!
//! The limiter spaces requests evenly (a token bucket in GCRA form): each
//! request takes the next slot, `1/rate` after the previous one, and may run
//! early by at most the burst allowance, so after an idle spell every worker
//! can start at once without breaking the average rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// AWS allows about 1000 PutSnapshotBlock (and GetSnapshotBlock) requests per
/// second per snapshot; we aim 10% under so bursts and clock drift between us
/// and AWS do not trip RequestThrottledException.
pub const DEFAULT_REQUESTS_PER_SEC: u32 = 900;
/// Requests allowed back to back after an idle spell: one per default worker.
pub const DEFAULT_BURST: u32 = 64;

/// Time as the retry and pacing logic sees it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A virtual clock for tests: `sleep` advances time at once and is recorded.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    state: Mutex<(Duration, Vec<Duration>)>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            state: Mutex::new((Duration::ZERO, Vec::new())),
        }
    }
}

impl ManualClock {
    /// Moves time forward without a sleep.
    pub fn advance(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += d;
    }
    /// Every sleep so far.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
    /// Virtual time elapsed.
    pub fn elapsed(&self) -> Duration {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn sleep(&self, d: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += d;
        s.1.push(d);
    }
}

/// Caps the request rate of all the threads that share it.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `per_second` requests per second on average (0 means no cap), up to
    /// `burst` back to back.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = if per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / per_second
        };
        Self {
            interval,
            burst: interval * burst.saturating_sub(1),
            next: Mutex::new(None),
        }
    }

    /// Waits for this request's slot.
    pub fn acquire(&self, clock: &dyn Clock) {
        if self.interval.is_zero() {
            return;
        }
        let now = clock.now();
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = next.map_or(earliest, |n| n.max(earliest));
            *next = Some(slot + self.interval);
            slot
        };
        if slot > now {
            clock.sleep(slot - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_holds_the_average_rate_after_the_burst() {
        let clock = ManualClock::default();
        clock.advance(Duration::from_secs(10));
        let lim = RateLimiter::new(1000, 10);
        for _ in 0..1010 {
            lim.acquire(&clock);
        }
        // 10 go at once, the next 1000 take one millisecond each.
        let t = clock.elapsed() - Duration::from_secs(10);
        assert!(
            t >= Duration::from_millis(999) && t <= Duration::from_millis(1001),
            "{t:?}"
        );
    }

    #[test]
    fn limiter_lets_a_burst_through_after_idle() {
        let clock = ManualClock::default();
        clock.advance(Duration::from_secs(10));
        let lim = RateLimiter::new(100, 5);
        for _ in 0..5 {
            lim.acquire(&clock);
        }
        assert!(clock.sleeps().is_empty());
        lim.acquire(&clock);
        assert_eq!(clock.sleeps().len(), 1);
        clock.advance(Duration::from_secs(1));
        let before = clock.sleeps().len();
        for _ in 0..5 {
            lim.acquire(&clock);
        }
        assert_eq!(clock.sleeps().len(), before);
    }

    #[test]
    fn zero_rate_means_no_cap() {
        let clock = ManualClock::default();
        let lim = RateLimiter::new(0, 0);
        for _ in 0..100 {
            lim.acquire(&clock);
        }
        assert!(clock.sleeps().is_empty());
    }
}
