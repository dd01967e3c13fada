//! Time as the mover's waiting logic sees it: the one [`Clock`] trait that
//! the rate limiter, the retry layer and their callers take, so their
//! arithmetic is tested on virtual time (`ManualClock`, feature
//! `testing`) without sleeping.

use std::time::{Duration, Instant};

/// Milliseconds of `d`, for a report (saturating: no round lasts 584
/// million years).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A time source that can also wait.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Waits `d` (a virtual clock advances instead).
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

#[cfg(any(test, feature = "testing"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "testing"))]
mod manual {
    use super::Clock;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

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
}
