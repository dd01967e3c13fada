//! The scheduler's account of a process's threads: how long each ran on a
//! CPU and how long it stood runnable waiting for one
//! (`/proc/PID/task/TID/schedstat`, Linux 2.6.9+, no schedstats switch
//! needed for these two fields).
//!
//! Two users: the idle-group watchdog of `daffe migrate` (a pre-copy that
//! gets no CPU while its threads stand runnable is starved), and the
//! pre-copy model, which needs to know how much of a round's transfer was
//! spent waiting for a CPU the application held: the final round runs
//! with the application stopped and does not wait (`converge::final_pace`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One look at a process's threads: per thread id, (ns on a CPU, ns
/// runnable on a run queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadTimes(HashMap<u32, (u64, u64)>);

/// Time on a CPU and time standing runnable, summed over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    /// On a CPU.
    pub run: Duration,
    /// Runnable, waiting for a CPU.
    pub wait: Duration,
}

impl ThreadTimes {
    /// The threads of process `pid` now. Threads that cannot be read (ended
    /// meanwhile) are left out; no `/proc` gives an empty look.
    pub fn of(pid: u32) -> ThreadTimes {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return ThreadTimes::default();
        };
        ThreadTimes(
            dir.filter_map(|e| {
                let e = e.ok()?;
                let tid = e.file_name().to_str()?.parse().ok()?;
                let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
                Some((tid, parse_schedstat(&text)?))
            })
            .collect(),
        )
    }

    /// This process's threads now.
    pub fn of_self() -> ThreadTimes {
        ThreadTimes::of(std::process::id())
    }

    /// Whether the look saw no thread (no `/proc`, or the process gone).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What the threads added since `before`: a thread in both counts its
    /// growth, a new thread all it has (it started in between); a thread
    /// gone by now is left out (its last part is lost: the kernel keeps no
    /// per-thread account after exit).
    pub fn since(&self, before: &ThreadTimes) -> CpuTimes {
        let (mut run, mut wait) = (0u64, 0u64);
        for (tid, &(r, w)) in &self.0 {
            let (r0, w0) = before.0.get(tid).copied().unwrap_or((0, 0));
            run += r.saturating_sub(r0);
            wait += w.saturating_sub(w0);
        }
        CpuTimes {
            run: Duration::from_nanos(run),
            wait: Duration::from_nanos(wait),
        }
    }

    /// A look made of `(tid, run ns, wait ns)` rows, for tests.
    #[cfg(test)]
    pub(crate) fn from_rows(rows: &[(u32, u64, u64)]) -> ThreadTimes {
        ThreadTimes(rows.iter().map(|&(t, r, w)| (t, (r, w))).collect())
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            run: self.run + o.run,
            wait: self.wait + o.wait,
        }
    }
}

/// The calling thread's (ns on a CPU, ns runnable) now; `None` without
/// `/proc`.
pub(crate) fn this_thread() -> Option<(u64, u64)> {
    parse_schedstat(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
}

/// Threads' times added up as each finishes its part, for work done by
/// threads that end before anyone could look at them from outside (the
/// scan's chunking workers: [`ThreadTimes::since`] loses an ended thread).
/// Each thread takes [`this_thread`] when it starts and hands it to
/// [`add_since`](Self::add_since) when done.
#[derive(Debug, Default)]
pub(crate) struct CpuTally {
    run: AtomicU64,
    wait: AtomicU64,
    /// A thread could not read its times: the total would be short.
    missed: AtomicBool,
}

impl CpuTally {
    /// Adds what the calling thread ran and waited since `start` (its
    /// [`this_thread`] then).
    pub(crate) fn add_since(&self, start: Option<(u64, u64)>) {
        match (start, this_thread()) {
            (Some((r0, w0)), Some((r, w))) => {
                self.run.fetch_add(r.saturating_sub(r0), Ordering::Relaxed);
                self.wait.fetch_add(w.saturating_sub(w0), Ordering::Relaxed);
            }
            _ => self.missed.store(true, Ordering::Relaxed),
        }
    }

    /// The sum, `None` if a thread could not tell.
    pub(crate) fn total(&self) -> Option<CpuTimes> {
        (!self.missed.load(Ordering::Relaxed)).then(|| CpuTimes {
            run: Duration::from_nanos(self.run.load(Ordering::Relaxed)),
            wait: Duration::from_nanos(self.wait.load(Ordering::Relaxed)),
        })
    }
}

/// `schedstat`'s first two fields: run and wait ns.
fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut f = text.split_ascii_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_growth_new_threads_and_drops_gone_ones() {
        let before = ThreadTimes::from_rows(&[(1, 100, 50), (2, 500, 500), (3, 7, 7)]);
        // 1 grew, 2 ended, 4 is new, 3 reads lower (a reused id): 0.
        let now = ThreadTimes::from_rows(&[(1, 160, 90), (4, 30, 20), (3, 1, 1)]);
        assert_eq!(
            now.since(&before),
            CpuTimes {
                run: Duration::from_nanos(90),
                wait: Duration::from_nanos(60)
            }
        );
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat("123\n"), None);
        assert_eq!(parse_schedstat("x 1 2\n"), None);
    }

    /// Spins until the calling thread has run `cpu` on a CPU by its own
    /// schedstat. Not by the wall clock: on a VM the scheduler's clock
    /// leaves out the time the hypervisor stole, so 30 ms of wall time can
    /// be 20 ms of run plus wait (CI saw 45 ms for two such threads). The
    /// wall-clock bound only keeps a broken `/proc` from hanging the test.
    fn spin_cpu(cpu: Duration) {
        let start = this_thread().expect("/proc/thread-self/schedstat").0;
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while Duration::from_nanos(this_thread().unwrap().0 - start) < cpu {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            assert!(t.elapsed() < Duration::from_secs(20), "run time stuck");
        }
    }

    #[test]
    fn this_process_is_seen_running() {
        let before = ThreadTimes::of_self();
        // Some CPU work on this thread, which both looks see.
        spin_cpu(Duration::from_millis(30));
        let d = ThreadTimes::of_self().since(&before);
        assert!(d.run >= Duration::from_millis(30), "{d:?}");
        assert!(ThreadTimes::of(u32::MAX).is_empty());
        assert!(!ThreadTimes::of_self().is_empty());
    }

    #[test]
    fn a_tally_counts_threads_that_have_ended() {
        let tally = std::sync::Arc::new(CpuTally::default());
        let spin = |tally: &CpuTally| {
            let start = this_thread();
            spin_cpu(Duration::from_millis(30));
            tally.add_since(start);
        };
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let tally = tally.clone();
                std::thread::spawn(move || spin(&tally))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Both ended, each after running at least 30 ms: the tally has
        // both parts, though no thread is left to look at.
        let total = tally.total().unwrap();
        assert!(total.run >= Duration::from_millis(60), "{total:?}");
        // A thread that could not read its start leaves the total unknown.
        tally.add_since(None);
        assert_eq!(tally.total(), None);
        let sum = CpuTimes {
            run: Duration::from_millis(1),
            wait: Duration::from_millis(2),
        } + CpuTimes {
            run: Duration::from_millis(3),
            wait: Duration::from_millis(4),
        };
        assert_eq!((sum.run.as_millis(), sum.wait.as_millis()), (4, 6));
    }
}
