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
use std::time::Duration;

/// One look at a process's threads: per thread id, (ns on a CPU, ns
/// runnable on a run queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadTimes(HashMap<u32, (u64, u64)>);

/// Time on a CPU and time standing runnable, summed over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

    #[test]
    fn this_process_is_seen_running() {
        let before = ThreadTimes::of_self();
        // Some CPU work on this thread, which both looks see.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let d = ThreadTimes::of_self().since(&before);
        assert!(d.run >= Duration::from_millis(10), "{d:?}");
        assert!(ThreadTimes::of(u32::MAX).is_empty());
        assert!(!ThreadTimes::of_self().is_empty());
    }
}
