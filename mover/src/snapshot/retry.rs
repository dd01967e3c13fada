//! The one retry layer for AWS calls: exponential backoff with jitter for
//! throttling and transient failures, and a time window in which "not found"
//! is retried for a resource that may be too new to be seen (EBS says a snapshot
//! may not exist for a minute or two after StartSnapshot). The SDK's own retries
//! are disabled (see `aws`), so this is the only layer: a failure is tried at
//! most `max_attempts` times, never `max_attempts` squared.
//!
//! Generic over the error through [`Retryable`], so the EC2 calls of the EBS
//! backend can use the same layer.

use super::api::{ApiError, ErrorKind};
use super::pace::Clock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Attempts per call, first included. With the delays below the last retry
/// starts after about 40 s of backoff on average (at most ~65 s), which rides
/// out throttling and a brief 5xx outage but surfaces a dead endpoint within a
/// minute.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// First backoff step: a few times a typical EBS request latency, so a
/// throttled worker really slows down.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(200);
/// Largest single backoff, so a long run of failures still retries often
/// enough to notice recovery.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(20);
/// How long after StartSnapshot "snapshot not found" is retried: AWS documents
/// up to a minute or two of eventual consistency; 150 s covers that with margin.
pub const DEFAULT_NOT_FOUND_WINDOW: Duration = Duration::from_secs(150);

/// How an error may be retried.
pub trait Retryable {
    fn retry_kind(&self) -> ErrorKind;
}

impl Retryable for ApiError {
    fn retry_kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub not_found_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            not_found_window: DEFAULT_NOT_FOUND_WINDOW,
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based): "equal jitter", half of
    /// the exponential step for sure plus a random part of the other half, so
    /// a throttled worker always slows down and workers do not retry in step.
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// A call that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted<E> {
    pub error: E,
    pub attempts: u32,
}

/// Runs calls under a policy and counts the retries it made (for reports and
/// for tests that bound them).
pub struct Retrier<'c> {
    policy: RetryPolicy,
    clock: &'c dyn Clock,
    retries: AtomicU64,
}

impl std::fmt::Debug for Retrier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl<'c> Retrier<'c> {
    pub fn new(policy: RetryPolicy, clock: &'c dyn Clock) -> Self {
        Self {
            policy,
            clock,
            retries: AtomicU64::new(0),
        }
    }

    pub fn clock(&self) -> &'c dyn Clock {
        self.clock
    }

    /// Retries made so far by all calls.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs `f` until it succeeds, fails permanently, or the policy gives up.
    /// `new_since`: when the resource was created, if "not found" may mean
    /// "not visible yet".
    pub fn run<T, E: Retryable + std::fmt::Display>(
        &self,
        what: &dyn Fn() -> String,
        new_since: Option<Instant>,
        mut f: impl FnMut() -> Result<T, E>,
    ) -> Result<T, Exhausted<E>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match f() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = match error.retry_kind() {
                ErrorKind::Throttled | ErrorKind::Transient => attempts < self.policy.max_attempts,
                ErrorKind::NotFound => new_since.is_some_and(|t| {
                    self.clock.now().saturating_duration_since(t) < self.policy.not_found_window
                }),
                ErrorKind::Permanent => false,
            };
            if !retry {
                return Err(Exhausted { error, attempts });
            }
            let delay = self.policy.delay(attempts);
            tracing::debug!(target: "daffe::retry", "{} failed ({error}); attempt {attempts}, retrying in {delay:?}", what());
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.clock.sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::pace::ManualClock;
    use std::cell::Cell;

    fn err(kind: ErrorKind) -> ApiError {
        ApiError::new("PutSnapshotBlock", kind, "Code", "msg")
    }

    fn what() -> String {
        "test call".into()
    }

    #[test]
    fn throttling_is_retried_then_succeeds() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::default(), &clock);
        let n = Cell::new(0);
        let out = r.run(&what, None, || {
            n.set(n.get() + 1);
            if n.get() < 4 {
                Err(err(ErrorKind::Throttled))
            } else {
                Ok(n.get())
            }
        });
        assert_eq!(out, Ok(4));
        assert_eq!(r.retries(), 3);
        let sleeps = clock.sleeps();
        // Each delay is at least half its exponential step and at most the step.
        for (i, d) in sleeps.iter().enumerate() {
            let step = DEFAULT_BASE_DELAY * (1 << i);
            assert!(*d >= step / 2 && *d <= step, "retry {i}: {d:?}");
        }
    }

    #[test]
    fn attempts_are_bounded_and_delays_capped() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::default(), &clock);
        let out: Result<(), _> = r.run(&what, None, || Err(err(ErrorKind::Transient)));
        let e = out.unwrap_err();
        assert_eq!(e.attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(r.retries(), u64::from(DEFAULT_MAX_ATTEMPTS - 1));
        assert!(clock.sleeps().iter().all(|d| *d <= DEFAULT_MAX_DELAY));
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::default(), &clock);
        let out: Result<(), _> = r.run(&what, None, || Err(err(ErrorKind::Permanent)));
        assert_eq!(out.unwrap_err().attempts, 1);
        assert!(clock.sleeps().is_empty());
    }

    #[test]
    fn not_found_is_retried_only_for_new_resources_within_the_window() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::default(), &clock);
        let out: Result<(), _> = r.run(&what, None, || Err(err(ErrorKind::NotFound)));
        assert_eq!(out.unwrap_err().attempts, 1);

        // A new snapshot that shows up after 30 s.
        let started = clock.now();
        let out = r.run(&what, Some(started), || {
            if clock.now() - started < Duration::from_secs(30) {
                Err(err(ErrorKind::NotFound))
            } else {
                Ok(())
            }
        });
        assert!(out.is_ok());

        // One that never shows up: given up once the window has passed.
        let started = clock.now();
        let out: Result<(), _> = r.run(&what, Some(started), || Err(err(ErrorKind::NotFound)));
        assert!(out.is_err());
        let waited = clock.now() - started;
        assert!(
            waited >= DEFAULT_NOT_FOUND_WINDOW
                && waited < DEFAULT_NOT_FOUND_WINDOW + DEFAULT_MAX_DELAY
        );
    }
}
