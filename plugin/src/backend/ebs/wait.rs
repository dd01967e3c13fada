//! Time budgets for the EBS backend: each operation gets a [`Deadline`]
//! that every wait and every AWS call checks, so a handler answers docker
//! before docker gives up, whatever AWS does.
//!
//! Time comes from a `Clock` (mover's), so tests of the waits run on
//! virtual time.

use mover::clock::Clock;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First pause between two looks at a changing state: AWS attaches in a few
/// seconds, so looking 4 times a second costs little and answers soon.
pub(crate) const POLL_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between looks: DescribeVolumes has a per-account rate
/// limit shared by every caller; one look every 2 s per waiting volume stays
/// far below it.
pub(crate) const POLL_MAX: Duration = Duration::from_secs(2);

/// The end of an operation's time budget.
#[derive(Clone)]
pub(crate) struct Deadline {
    clock: Arc<dyn Clock>,
    start: Instant,
    budget: Duration,
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("budget", &self.budget)
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Deadline {
    pub(crate) fn new(clock: Arc<dyn Clock>, budget: Duration) -> Self {
        let start = clock.now();
        Self {
            clock,
            start,
            budget,
        }
    }

    /// A shorter budget inside this one (a phase of the operation).
    pub(crate) fn within(&self, budget: Duration) -> Self {
        Self::new(self.clock.clone(), budget.min(self.remaining()))
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.budget
            .saturating_sub(self.clock.now().saturating_duration_since(self.start))
    }

    pub(crate) fn passed(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The whole budget, for messages.
    pub(crate) fn secs(&self) -> u64 {
        self.budget.as_secs()
    }

    /// Sleeps `d`, or what is left of the budget if less.
    pub(crate) fn sleep(&self, d: Duration) {
        let d = d.min(self.remaining());
        if !d.is_zero() {
            self.clock.sleep(d);
        }
    }

    /// Calls `look` until it returns `Some`, pausing between looks (from
    /// [`POLL_FIRST`] doubling to [`POLL_MAX`]); `Ok(None)` once the budget is
    /// spent. Errors from `look` end the wait at once.
    pub(crate) fn poll<T, E>(
        &self,
        mut look: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let mut pause = POLL_FIRST;
        loop {
            if let Some(v) = look()? {
                return Ok(Some(v));
            }
            self.sleep(pause);
            // Checked after the pause: a look made with no budget left
            // could not finish its own calls.
            if self.passed() {
                return Ok(None);
            }
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mover::clock::ManualClock;

    #[test]
    fn polls_back_off_and_stop_at_the_budget() {
        let clock = Arc::new(ManualClock::default());
        let d = Deadline::new(clock.clone(), Duration::from_secs(10));
        let r: Result<Option<()>, ()> = d.poll(|| Ok(None));
        assert_eq!(r, Ok(None));
        let sleeps = clock.sleeps();
        assert_eq!(sleeps[0], POLL_FIRST);
        assert!(sleeps.iter().all(|s| *s <= POLL_MAX));
        assert_eq!(
            clock.elapsed(),
            Duration::from_secs(10),
            "never past the budget"
        );

        let d = Deadline::new(clock.clone(), Duration::from_secs(10));
        let mut n = 0;
        let r: Result<Option<u32>, ()> = d.poll(|| {
            n += 1;
            Ok((n == 3).then_some(n))
        });
        assert_eq!(r, Ok(Some(3)));
        assert!(d.within(Duration::from_secs(60)).remaining() <= Duration::from_secs(10));
    }
}
