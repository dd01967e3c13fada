//! The one retry layer: exponential backoff for failures that may pass
//! (throttling, transient errors), bounded by attempts and by time, and a
//! window in which "not found" is retried for a resource that may be too new
//! to be seen (EBS says a snapshot may not exist for a minute or two after
//! StartSnapshot).
//!
//! Two policies use it: [`RetryPolicy::default`] for AWS calls (snapshot
//! push and pull, the EBS backend's EC2 calls; the SDK's own retries are
//! off, so a failure is tried at most `max_attempts` times, never
//! `max_attempts` squared), and [`RetryPolicy::RECONNECT`] for a migration's
//! dialer, which reconnects to an agent until a deadline.
//!
//! [`Retrier`] runs a call to completion under a policy; [`Attempts`] is the
//! same decision for callers whose loop does more than call again (the
//! dialer rescans between some attempts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Attempts per AWS call, first included. With the delays below the last
/// retry starts after about 40 s of backoff on average (at most ~65 s),
/// which rides out throttling and a brief 5xx outage but surfaces a dead
/// endpoint within a minute.
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

/// How a failed call may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// RequestThrottledException, ThrottlingException, HTTP 429: back off, retry.
    Throttled,
    /// 5xx, timeouts, dropped connections, an unreachable peer: retry.
    Transient,
    /// ResourceNotFoundException: retried only where the resource may be too
    /// new to be seen yet (a snapshot just started).
    NotFound,
    /// Anything else: retrying cannot help.
    Permanent,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::NotFound => "not found",
            Self::Permanent => "permanent",
        })
    }
}

/// How an error may be retried.
pub trait Retryable {
    /// How the retry layer treats this error.
    fn retry_kind(&self) -> ErrorKind;
}

/// Backoff parameters and bounds.
///
/// `#[non_exhaustive]`: start from [`RetryPolicy::AWS`],
/// [`RetryPolicy::RECONNECT`] or `Default`, and change what you need with
/// the `const` `with_*` setters (usable in a `const`):
///
/// ```
/// use mover::retry::RetryPolicy;
/// use std::time::Duration;
///
/// const EC2: RetryPolicy = RetryPolicy::AWS
///     .with_max_attempts(6)
///     .with_base_delay(Duration::from_millis(250));
/// assert_eq!(EC2.max_attempts, 6);
/// assert_eq!(EC2.max_delay, RetryPolicy::AWS.max_delay);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts per call, first included.
    pub max_attempts: u32,
    /// Give up once this long has passed since the first attempt.
    pub deadline: Option<Duration>,
    /// First backoff step; each retry doubles it, up to `max_delay`.
    pub base_delay: Duration,
    /// Longest pause between two attempts.
    pub max_delay: Duration,
    /// Equal jitter on each step (see [`RetryPolicy::delay`]), so workers
    /// that failed together do not retry in step.
    pub jitter: bool,
    /// How long after a resource's creation "not found" is retried.
    pub not_found_window: Duration,
}

impl RetryPolicy {
    /// AWS calls (the default): see the `DEFAULT_*` constants.
    pub const AWS: RetryPolicy = RetryPolicy {
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        deadline: None,
        base_delay: DEFAULT_BASE_DELAY,
        max_delay: DEFAULT_MAX_DELAY,
        jitter: true,
        not_found_window: DEFAULT_NOT_FOUND_WINDOW,
    };

    /// A dialer reconnecting to a peer: 0.2 s doubling to 5 s, for five
    /// minutes. A link flap or an agent restart is over well before; a host
    /// that is gone for longer needs the operator, not a loop. One dialer
    /// only, so no jitter.
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        max_attempts: u32::MAX,
        deadline: Some(Duration::from_secs(300)),
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(5),
        jitter: false,
        not_found_window: Duration::ZERO,
    };

    /// Delay before retry number `retry` (1-based): the exponential step,
    /// or with jitter "equal jitter": half of the step for sure plus a random
    /// part of the other half, so a throttled worker always slows down.
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        if !self.jitter {
            return step;
        }
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub const fn with_max_attempts(mut self, value: u32) -> Self {
        self.max_attempts = value;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    #[must_use]
    pub const fn with_deadline(mut self, value: Option<Duration>) -> Self {
        self.deadline = value;
        self
    }

    /// Sets [`base_delay`](Self::base_delay).
    #[must_use]
    pub const fn with_base_delay(mut self, value: Duration) -> Self {
        self.base_delay = value;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    #[must_use]
    pub const fn with_max_delay(mut self, value: Duration) -> Self {
        self.max_delay = value;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    #[must_use]
    pub const fn with_jitter(mut self, value: bool) -> Self {
        self.jitter = value;
        self
    }

    /// Sets [`not_found_window`](Self::not_found_window).
    #[must_use]
    pub const fn with_not_found_window(mut self, value: Duration) -> Self {
        self.not_found_window = value;
        self
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::AWS
    }
}

/// The retry decisions for one call (or one operation made of attempts).
pub struct Attempts<'c> {
    policy: RetryPolicy,
    clock: &'c dyn Clock,
    started: Instant,
    /// When the resource was created, if "not found" may mean "not visible yet".
    new_since: Option<Instant>,
    attempts: u32,
}

impl<'c> Attempts<'c> {
    /// Starts counting now.
    pub fn new(policy: RetryPolicy, clock: &'c dyn Clock, new_since: Option<Instant>) -> Self {
        Attempts {
            policy,
            clock,
            started: clock.now(),
            new_since,
            attempts: 0,
        }
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.attempts
    }

    /// An attempt failed with an error of `kind`: the delay before the next
    /// attempt, or None to give up.
    pub fn failed(&mut self, kind: ErrorKind) -> Option<Duration> {
        self.attempts += 1;
        let now = self.clock.now();
        let in_time = self
            .policy
            .deadline
            .is_none_or(|d| now.saturating_duration_since(self.started) < d);
        let retry = match kind {
            ErrorKind::Throttled | ErrorKind::Transient => {
                self.attempts < self.policy.max_attempts && in_time
            }
            ErrorKind::NotFound => self
                .new_since
                .is_some_and(|t| now.saturating_duration_since(t) < self.policy.not_found_window),
            ErrorKind::Permanent => false,
        };
        retry.then(|| self.policy.delay(self.attempts))
    }
}

/// A call that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted<E> {
    /// The last error.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
}

/// Runs calls under a policy and counts the retries it made (for reports and
/// for tests that bound them).
pub struct Retrier<'c> {
    policy: RetryPolicy,
    clock: &'c dyn Clock,
    retries: AtomicU64,
    /// Every attempt of every call (first tries and retries).
    calls: AtomicU64,
}

impl std::fmt::Debug for Retrier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .field("retries", &self.retries)
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl<'c> Retrier<'c> {
    /// A retrier applying `policy`, waiting on `clock`.
    pub fn new(policy: RetryPolicy, clock: &'c dyn Clock) -> Self {
        Self {
            policy,
            clock,
            retries: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// The clock it waits on.
    pub fn clock(&self) -> &'c dyn Clock {
        self.clock
    }

    /// Retries made so far by all calls.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Attempts made so far by all calls, first tries included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
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
        let mut attempts = Attempts::new(self.policy, self.clock, new_since);
        loop {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let error = match f() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(delay) = attempts.failed(error.retry_kind()) else {
                return Err(Exhausted {
                    error,
                    attempts: attempts.failures(),
                });
            };
            let n = attempts.failures();
            tracing::debug!(target: "daffe::retry", "{} failed ({error}); attempt {n}, retrying in {delay:?}", what());
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.clock.sleep(delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::cell::Cell;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Failure(ErrorKind);

    impl Retryable for Failure {
        fn retry_kind(&self) -> ErrorKind {
            self.0
        }
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
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
                Err(Failure(ErrorKind::Throttled))
            } else {
                Ok(n.get())
            }
        });
        assert_eq!(out, Ok(4));
        assert_eq!(r.retries(), 3);
        // Every attempt is a call: the first try and the three retries.
        assert_eq!(r.calls(), 4);
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
        let out: Result<(), _> = r.run(&what, None, || Err(Failure(ErrorKind::Transient)));
        let e = out.unwrap_err();
        assert_eq!(e.attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(r.retries(), u64::from(DEFAULT_MAX_ATTEMPTS - 1));
        assert!(clock.sleeps().iter().all(|d| *d <= DEFAULT_MAX_DELAY));
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::default(), &clock);
        let out: Result<(), _> = r.run(&what, None, || Err(Failure(ErrorKind::Permanent)));
        assert_eq!(out.unwrap_err().attempts, 1);
        assert!(clock.sleeps().is_empty());
    }

    #[test]
    fn not_found_is_retried_only_for_new_resources_within_the_window() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::default(), &clock);
        let out: Result<(), _> = r.run(&what, None, || Err(Failure(ErrorKind::NotFound)));
        assert_eq!(out.unwrap_err().attempts, 1);

        // A new snapshot that shows up after 30 s.
        let started = clock.now();
        let out = r.run(&what, Some(started), || {
            if clock.now() - started < Duration::from_secs(30) {
                Err(Failure(ErrorKind::NotFound))
            } else {
                Ok(())
            }
        });
        assert!(out.is_ok());

        // One that never shows up: given up once the window has passed.
        let started = clock.now();
        let out: Result<(), _> = r.run(&what, Some(started), || Err(Failure(ErrorKind::NotFound)));
        assert!(out.is_err());
        let waited = clock.now() - started;
        assert!(
            waited >= DEFAULT_NOT_FOUND_WINDOW
                && waited < DEFAULT_NOT_FOUND_WINDOW + DEFAULT_MAX_DELAY
        );
    }

    #[test]
    fn reconnect_backs_off_without_jitter_until_its_deadline() {
        let clock = ManualClock::default();
        let r = Retrier::new(RetryPolicy::RECONNECT, &clock);
        let out: Result<(), _> = r.run(&what, None, || Err(Failure(ErrorKind::Transient)));
        let sleeps = clock.sleeps();
        let ms: Vec<u128> = sleeps.iter().take(7).map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);
        // The last retry starts before the deadline; none after it.
        let total: Duration = sleeps.iter().sum();
        assert!(total >= Duration::from_secs(300), "{total:?}");
        assert!(total < Duration::from_secs(305), "{total:?}");
        assert_eq!(
            out.unwrap_err().attempts,
            u32::try_from(sleeps.len() + 1).unwrap()
        );
    }
}
