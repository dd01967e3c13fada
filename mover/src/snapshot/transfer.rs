//! What push and pull share: tuning options, the worker pool that runs block
//! requests concurrently, and ClientToken generation.

use crate::clock::{Clock, SystemClock};
use crate::rate::RateLimiter;
use crate::retry::RetryPolicy;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// AWS allows about 1000 PutSnapshotBlock (and GetSnapshotBlock) requests per
/// second per snapshot; we aim 10% under so bursts and clock drift between us
/// and AWS do not trip RequestThrottledException.
pub const DEFAULT_REQUESTS_PER_SEC: u32 = 900;
/// Requests allowed back to back after an idle spell: one per default worker.
pub const DEFAULT_BURST: u32 = 64;

/// Block requests in flight at once. At ~50-100 ms per 512 KiB request, 64 in
/// flight are what it takes to approach AWS's ~1000 requests/s per snapshot;
/// the memory cost is two blocks per worker (64 MiB).
pub const DEFAULT_CONCURRENCY: usize = 64;

/// How a push or pull talks to the endpoint.
#[derive(Clone)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Block requests in flight.
    pub concurrency: usize,
    /// Cap on block requests per second for this snapshot (0: none).
    pub requests_per_sec: u32,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// The retry policy of every call.
    pub retry: RetryPolicy,
    /// The clock the rate limiter and the retries wait on.
    pub clock: Arc<dyn Clock>,
}

crate::builder::setters!(TransferOptions {
    with_concurrency => concurrency: usize,
    with_requests_per_sec => requests_per_sec: u32,
    with_burst => burst: u32,
    with_retry => retry: RetryPolicy,
    with_clock => clock: Arc<dyn Clock>,
});

impl std::fmt::Debug for TransferOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOptions")
            .field("concurrency", &self.concurrency)
            .field("requests_per_sec", &self.requests_per_sec)
            .field("burst", &self.burst)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            requests_per_sec: DEFAULT_REQUESTS_PER_SEC,
            burst: DEFAULT_BURST,
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl TransferOptions {
    /// The rate cap of block requests these options ask for, on their clock.
    pub(crate) fn limiter(&self) -> RateLimiter {
        RateLimiter::with_clock(
            u64::from(self.requests_per_sec),
            u64::from(self.burst),
            self.clock.clone(),
        )
    }
}

/// Runs `work` on jobs from `produce` in `concurrency` threads. Stops at the
/// first error (from the producer or a worker) and returns it.
pub(crate) fn run_pool<J, E>(
    concurrency: usize,
    produce: impl FnOnce(&dyn Fn(J) -> bool) -> Result<(), E>,
    work: impl Fn(J) -> Result<(), E> + Sync,
) -> Result<(), E>
where
    J: Send,
    E: Send,
{
    let concurrency = concurrency.max(1);
    let (tx, rx) = crossbeam_channel::bounded::<J>(concurrency);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<E>> = Mutex::new(None);
    let record = |e: E| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = first_err.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            let rx = rx.clone();
            let (work, failed, record) = (&work, &failed, &record);
            s.spawn(move || {
                for job in rx {
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    if let Err(e) = work(job) {
                        record(e);
                    }
                }
            });
        }
        drop(rx);
        let send = |job: J| !failed.load(Ordering::SeqCst) && tx.send(job).is_ok();
        if let Err(e) = produce(&send) {
            record(e);
        }
        drop(tx);
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A ClientToken unique to this push: a retried StartSnapshot with it returns
/// the snapshot the first attempt made instead of starting a second one.
pub(crate) fn client_token(seed: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(now.as_nanos().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_runs_every_job_and_stops_at_the_first_error() {
        let done = AtomicU64::new(0);
        let r: Result<(), String> = run_pool(
            4,
            |send| {
                for i in 0..100u64 {
                    send(i);
                }
                Ok(())
            },
            |i| {
                done.fetch_add(i, Ordering::SeqCst);
                Ok(())
            },
        );
        assert!(r.is_ok());
        assert_eq!(done.load(Ordering::SeqCst), 4950);

        let sent = AtomicU64::new(0);
        let r: Result<(), String> = run_pool(
            2,
            |send| {
                for i in 0..10_000u64 {
                    if !send(i) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            },
            |i| {
                if i == 3 {
                    Err(format!("job {i}"))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r, Err("job 3".to_string()));
        assert!(sent.load(Ordering::SeqCst) < 10_000);
    }

    #[test]
    fn client_tokens_differ() {
        assert_ne!(client_token("a"), client_token("a"));
        assert_eq!(client_token("a").len(), 32);
    }
}
