//! Runs blocking service calls on tokio's blocking pool with a time limit.
//!
//! A call that runs past its limit cannot be stopped (a mount(8) in progress
//! must finish), so the caller answers docker with a timeout while the call
//! runs on. For operations whose effect docker must know about (Mount: no
//! Unmount follows a failed Mount), the call and its caller race on a
//! [`Fence`]: the call commits only if the caller still waits, and the caller
//! reports a timeout only if the call has not committed. Exactly one wins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

const RUNNING: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Why a bounded call has no result for its caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BoundedError {
    #[error(
        "{op} of volume {name:?} did not finish within {secs} s; it was rolled back or will be"
    )]
    Timeout {
        op: &'static str,
        name: String,
        secs: u64,
    },
    #[error("{op} of volume {name:?}: internal error: {message}")]
    Panicked {
        op: &'static str,
        name: String,
        message: String,
    },
}

/// Decides, once, whether a bounded call's effect stands.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    state: Arc<AtomicU8>,
    secs: u64,
}

impl Fence {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            state: Arc::new(AtomicU8::new(RUNNING)),
            secs: limit.as_secs(),
        }
    }

    /// A fence nobody abandons.
    #[cfg(test)]
    pub(crate) fn unbounded() -> Self {
        Self::new(Duration::MAX)
    }

    /// Called by the work just before it makes its effect durable: true if
    /// the caller still waits (and now will get the result).
    pub(crate) fn try_commit(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, COMMITTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called by the caller when its time is up: true if the work had not
    /// committed (and now never will).
    pub(crate) fn abandon(&self) -> bool {
        self.state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.state.load(Ordering::Acquire) == ABANDONED
    }

    pub(crate) fn secs(&self) -> u64 {
        self.secs
    }
}

/// Runs `f` on the blocking pool; gives up after `limit` unless `f` has
/// already passed its fence's commit point, in which case its result is
/// awaited (it is about to finish).
pub(crate) async fn run<T, E, F>(
    op: &'static str,
    name: &str,
    limit: Duration,
    f: F,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<BoundedError> + Send + 'static,
    F: FnOnce(&Fence) -> Result<T, E> + Send + 'static,
{
    let fence = Fence::new(limit);
    let theirs = fence.clone();
    let mut handle = tokio::task::spawn_blocking(move || f(&theirs));
    let joined = match tokio::time::timeout(limit, &mut handle).await {
        Ok(joined) => joined,
        Err(_) if fence.abandon() => {
            tracing::warn!(
                op,
                volume = name,
                secs = limit.as_secs(),
                "timed out; the work goes on in the background"
            );
            return Err(BoundedError::Timeout {
                op,
                name: name.to_owned(),
                secs: limit.as_secs(),
            }
            .into());
        }
        Err(_) => handle.await,
    };
    joined.map_err(|e| {
        E::from(BoundedError::Panicked {
            op,
            name: name.to_owned(),
            message: e.to_string(),
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_wins() {
        let f = Fence::new(Duration::from_secs(1));
        assert!(f.try_commit());
        assert!(!f.abandon());
        let f = Fence::new(Duration::from_secs(1));
        assert!(f.abandon());
        assert!(f.is_abandoned());
        assert!(!f.try_commit());
    }

    #[tokio::test]
    async fn slow_work_times_out_and_is_told_so() {
        let (tx, rx) = std::sync::mpsc::channel();
        let r: Result<(), BoundedError> =
            run("mount", "v", Duration::from_millis(50), move |fence| {
                std::thread::sleep(Duration::from_millis(200));
                tx.send(fence.try_commit()).unwrap();
                Ok(())
            })
            .await;
        assert!(
            matches!(r, Err(BoundedError::Timeout { op: "mount", .. })),
            "{r:?}"
        );
        assert!(!rx.recv().unwrap(), "the work learns it must not commit");
    }

    #[tokio::test]
    async fn committed_work_is_awaited_past_the_limit() {
        let r = run("mount", "v", Duration::from_millis(50), |fence| {
            assert!(fence.try_commit());
            std::thread::sleep(Duration::from_millis(150));
            Ok::<_, BoundedError>(7)
        })
        .await;
        assert_eq!(r.unwrap(), 7);
    }
}
