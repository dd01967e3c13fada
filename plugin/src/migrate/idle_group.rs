//! `--precopy-priority idle` (the default of `daffe migrate`): while a
//! pre-copy round runs, the whole `migrate` process runs in a cpu cgroup
//! with `cpu.idle = 1`, the group-level SCHED_IDLE: any non-idle task's
//! wakeup preempts it, so the application runs as if pre-copy were not
//! there and pre-copy takes the CPU the application leaves.
//!
//! Why a cgroup and not only nice (`super::priority`): a nice value ranks a
//! thread only among the threads of its own scheduler group, and the
//! application is in another (a container's cgroup; or another session's
//! autogroup, as PostgreSQL started by `pg_ctl` is). Groups share the CPU
//! equally whatever their threads' nice values (BENCHMARKS.md, issue 11,
//! stop 32: pgbench's latency x2.55 beside a nice-19 burner in another
//! autogroup, x0.80 beside the same burner in a `cpu.idle` cgroup).
//!
//! Why the whole process and not the round's thread: the sender's threads
//! are not all started by the round (connection and read-ahead workers
//! outlive it or predate it). A thread left outside keeps competing, and a
//! pool thread left inside would run the final round, the downtime, at idle
//! priority. v1's `cgroup.procs` moves every thread at once, both ways.
//!
//! The price: an application that saturates the CPU leaves an idle group
//! nothing, and pre-copy would never end (seen at stop 32: round 1 took
//! 102 s and round 2 104 s under unthrottled pgbench). So a watchdog
//! measures, from the threads' scheduler statistics, how much CPU the
//! process got against how long its threads stood runnable: when it got
//! less than [`STARVED_SHARE`] of one CPU while its threads stood runnable
//! at least half the time, for [`STARVED_WINDOWS`] windows in a row, the process
//! moves to [`LOW_GROUP`] for the rest of the move's pre-copy and says so.
//!
//! Why a low-weight group and not back where it came from: there the
//! process shares a contended CPU equally with the application's group, and
//! an unthrottled PostgreSQL lost 16-22% of its TPS to pre-copy (BENCHMARKS.md,
//! issue 11, stop 44; the issue asks for at most 20%). In [`LOW_GROUP`]
//! (`cpu.shares` [`LOW_SHARES`]) pre-copy gets about a tenth of a CPU the
//! application wants, and all of one it leaves: it still ends, and the
//! application keeps nine tenths. Each round moves back on its end, so the
//! final round never runs there.
//!
//! Only the cgroup v1 `cpu` controller is used (it lets a process make a
//! group beside its own); on a cgroup-v2-only host nothing is moved and
//! pre-copy is niced only (README, "Nice is not enough", says how an
//! operator runs `migrate` in an idle cgroup there).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use mover::{CpuTimes, ThreadTimes};

/// The cpu cgroup (v1 controller, under its mount) pre-copy runs in, with
/// `cpu.idle = 1`; made on first use, shared by every move on the host.
pub(crate) const IDLE_GROUP: &str = "daffe-precopy";

/// The cpu cgroup (v1) a starved pre-copy runs in: a normal group with a
/// small weight (module doc), beside [`IDLE_GROUP`].
pub(crate) const LOW_GROUP: &str = "daffe-precopy-low";

/// `cpu.shares` of [`LOW_GROUP`]: against a group of the default weight
/// (1024) that wants the same CPU, 114 / (114 + 1024) = 10% of it, the share
/// below which the watchdog calls pre-copy starved.
const LOW_SHARES: u32 = 114;

/// How long one look of the watchdog spans.
const WINDOW: Duration = Duration::from_secs(5);

/// Starved: less than this share of one CPU in a window...
const STARVED_SHARE: f64 = 0.10;

/// ...for this many windows in a row (10 s: pre-copy of a busy app's volume
/// takes minutes, and a short burst of the app must not end the idle run).
const STARVED_WINDOWS: u32 = 2;

/// Whether the moves of this `migrate` left the idle group for good, shared
/// by the rounds: once starved, later rounds do not go back in.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdlePolicy {
    starved: Arc<AtomicBool>,
}

impl IdlePolicy {
    /// Whether the watchdog took the process out of the group for good.
    pub(crate) fn starved(&self) -> bool {
        self.starved.load(Ordering::Relaxed)
    }

    /// This process into the idle group for one round (into [`LOW_GROUP`]
    /// once it starved there in an earlier round), or `None` where that
    /// cannot be done (no v1 cpu controller, no cpu.idle, not root).
    pub(crate) fn enter(&self) -> Option<IdleProcess> {
        let pid = std::process::id();
        let entered = if self.starved.load(Ordering::Relaxed) {
            IdleProcess::enter_low(pid)
        } else {
            IdleProcess::enter(pid, self.starved.clone())
        };
        match entered {
            Ok(p) => Some(p),
            Err(why) => {
                tracing::debug!("pre-copy is niced only: {why}");
                None
            }
        }
    }
}

/// A process in [`IDLE_GROUP`] (watched for starvation) or in [`LOW_GROUP`]
/// until dropped.
pub(crate) struct IdleProcess {
    pid: u32,
    /// `cgroup.procs` of the group the process was in.
    back: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl IdleProcess {
    /// Moves process `pid` (every thread of it) into the idle group and
    /// starts its watchdog; on starvation the watchdog moves it to
    /// [`LOW_GROUP`] (back, if that cannot be made) and sets `starved`.
    pub(crate) fn enter(pid: u32, starved: Arc<AtomicBool>) -> Result<IdleProcess, String> {
        let (root, back) = groups(pid)?;
        let idle = make_group(&root, IDLE_GROUP)?;
        // A kernel without cpu.idle (before 5.15) has no such file: the group
        // would then be one more equal-weight group, no better than none.
        write(&idle.join("cpu.idle"), "1")?;
        write(&idle.join("cgroup.procs"), &pid.to_string())?;
        let (stop, stopped) = mpsc::channel();
        let (back_w, starved_w) = (back.clone(), starved.clone());
        let watchdog = std::thread::Builder::new()
            .name("precopy-idle-watch".into())
            .spawn(move || watch_for_starvation(pid, &root, &back_w, &starved_w, &stopped))
            .map_err(|e| format!("watchdog thread: {e}"));
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                // Unwatched, the idle group could starve pre-copy for ever.
                let _ = write(&back, &pid.to_string());
                return Err(e);
            }
        };
        Ok(IdleProcess {
            pid,
            back,
            stop: Some(stop),
            watchdog: Some(watchdog),
        })
    }

    /// Moves process `pid` into [`LOW_GROUP`] (a round after pre-copy
    /// starved in the idle group), unwatched: it cannot starve there.
    pub(crate) fn enter_low(pid: u32) -> Result<IdleProcess, String> {
        let (root, back) = groups(pid)?;
        write(&low_group(&root)?.join("cgroup.procs"), &pid.to_string())?;
        Ok(IdleProcess {
            pid,
            back,
            stop: None,
            watchdog: None,
        })
    }
}

/// The v1 cpu controller's mount and the `cgroup.procs` of process `pid`'s
/// group under it.
fn groups(pid: u32) -> Result<(PathBuf, PathBuf), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let root = cpu_controller_v1(&mountinfo).ok_or("no cgroup v1 cpu controller")?;
    let cgroup_file = format!("/proc/{pid}/cgroup");
    let cgroup =
        std::fs::read_to_string(&cgroup_file).map_err(|e| format!("{cgroup_file}: {e}"))?;
    let before = cpu_group_v1(&cgroup).ok_or("the process has no v1 cpu group")?;
    let back = root
        .join(before.trim_start_matches('/'))
        .join("cgroup.procs");
    Ok((root, back))
}

/// Group `name` under the controller's mount `root`, made if missing.
fn make_group(root: &Path, name: &str) -> Result<PathBuf, String> {
    let group = root.join(name);
    if let Err(e) = std::fs::create_dir(&group)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(format!("{}: {e}", group.display()));
    }
    Ok(group)
}

/// [`LOW_GROUP`], made if missing, with its weight set (each time: whoever
/// made it, it must not run pre-copy at another weight).
fn low_group(root: &Path) -> Result<PathBuf, String> {
    let low = make_group(root, LOW_GROUP)?;
    write(&low.join("cpu.shares"), &LOW_SHARES.to_string())?;
    Ok(low)
}

impl Drop for IdleProcess {
    fn drop(&mut self) {
        // The watchdog first, so that it cannot act after the move back.
        drop(self.stop.take());
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        // Back from either group (the final round, the downtime, must run
        // where the process came from).
        if let Err(e) = write(&self.back, &self.pid.to_string()) {
            tracing::warn!("process {} stays in a pre-copy cgroup: {e}", self.pid);
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

/// The watchdog's loop: a look every [`WINDOW`] until told to stop (the
/// sender dropped) or the process starved (then it is moved to
/// [`LOW_GROUP`] under `root`, or `back` if that group cannot be made).
fn watch_for_starvation(
    pid: u32,
    root: &Path,
    back: &Path,
    starved: &AtomicBool,
    stop: &mpsc::Receiver<()>,
) {
    let mut meter = Starvation::default();
    let mut last = ThreadTimes::of(pid);
    let mut at = std::time::Instant::now();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WINDOW) {
        let now = ThreadTimes::of(pid);
        let elapsed = at.elapsed();
        at = std::time::Instant::now();
        let CpuTimes { run, wait } = now.since(&last);
        last = now;
        if meter.observe(elapsed, run, wait) {
            // Moved before it is said, so whoever sees the flag sees the
            // process out of the idle group.
            let pid_s = pid.to_string();
            let to_low = low_group(root).and_then(|low| write(&low.join("cgroup.procs"), &pid_s));
            let moved = match &to_low {
                Ok(()) => Ok(()),
                Err(_) => write(back, &pid_s),
            };
            starved.store(true, Ordering::Relaxed);
            let got = format!(
                "{:.0}% of a CPU",
                100.0 * run.as_secs_f64() / elapsed.as_secs_f64()
            );
            match to_low {
                Ok(()) => tracing::warn!(
                    got,
                    "pre-copy starved in the idle cgroup (the application uses all the CPU): \
                     its later pre-copy rounds run in the cgroup {LOW_GROUP}, at about a \
                     tenth of a CPU the application wants (the hook's round and the final \
                     round at normal priority)"
                ),
                Err(why) => tracing::warn!(
                    got,
                    moved_back = moved.is_ok(),
                    "pre-copy starved in the idle cgroup (the application uses all the CPU), \
                     and {LOW_GROUP} cannot be used ({why}): its later pre-copy rounds run \
                     outside the group at nice 19"
                ),
            }
            return;
        }
    }
}

/// The starvation rule (module doc), fed one window at a time.
#[derive(Debug, Default)]
struct Starvation {
    in_a_row: u32,
}

impl Starvation {
    /// One window: `run` on a CPU and `wait` runnable, summed over the
    /// threads, in `elapsed`. True once starved.
    fn observe(&mut self, elapsed: Duration, run: Duration, wait: Duration) -> bool {
        // Little CPU while sleeping (a read cap, the disk, the link) is not
        // starvation; little CPU while standing runnable is.
        // Runnable at least half the window, summed over the threads: not
        // all of it, as a task's own wait does not count every moment its
        // group waits at the level above (one thread starved by a burner
        // showed 4.1 s of wait in 5 s, and 16 ms on a CPU).
        let starved_window =
            run.as_secs_f64() < STARVED_SHARE * elapsed.as_secs_f64() && wait * 2 >= elapsed;
        self.in_a_row = if starved_window { self.in_a_row + 1 } else { 0 };
        self.in_a_row >= STARVED_WINDOWS
    }
}

/// Where the cgroup v1 `cpu` controller is mounted, from mountinfo text.
fn cpu_controller_v1(mountinfo: &str) -> Option<PathBuf> {
    crate::backend::local::quota::pure::parse_mountinfo(mountinfo)
        .into_iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "cpu"))
        .map(|m| m.mountpoint)
}

/// The cgroup path under the v1 `cpu` controller, from `/proc/PID/cgroup`
/// text (`ID:CONTROLLERS:PATH` lines).
fn cpu_group_v1(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "cpu").then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// (run, wait) in one 5 s window, and whether starved after it.
    type Window = (Duration, Duration, bool);

    #[test]
    fn starvation_needs_little_cpu_while_runnable_for_two_windows() {
        let table: [(&str, &[Window]); 7] = [
            (
                "starved twice",
                &[(MS(100), S(9), false), (MS(50), S(10), true)],
            ),
            // Half a CPU beside the app: slowed, not starved.
            ("a fair share", &[(S(2), S(8), false), (S(2), S(8), false)]),
            // Sleeping on a read cap or the link: little CPU, no waiting.
            (
                "sleeping",
                &[(MS(50), MS(10), false), (MS(50), MS(10), false)],
            ),
            (
                "a burst of the app in between",
                &[
                    (MS(10), S(5), false),
                    (S(3), S(1), false),
                    (MS(10), S(5), false),
                ],
            ),
            // Waiting, but less than half the window.
            (
                "short waits",
                &[(MS(100), S(2), false), (MS(100), S(2), false)],
            ),
            (
                "waits of half the window",
                &[(MS(100), MS(2500), false), (MS(100), MS(2500), true)],
            ),
            (
                "starved later",
                &[
                    (S(4), S(1), false),
                    (MS(400), S(6), false),
                    (MS(10), S(10), true),
                ],
            ),
        ];
        for (case, windows) in table {
            let mut m = Starvation::default();
            for (i, &(run, wait, want)) in windows.iter().enumerate() {
                assert_eq!(m.observe(WINDOW, run, wait), want, "{case}, window {i}");
            }
        }
    }

    #[test]
    fn the_cpu_controller_is_found_in_mountinfo_and_the_group_in_proc_cgroup() {
        let hybrid = "\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
";
        let joint = "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let v2 = "31 1 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let cpuset_only = "28 25 0:25 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n";
        let table: [(&str, Option<&str>); 5] = [
            (hybrid, Some("/sys/fs/cgroup/cpu")),
            (joint, Some("/sys/fs/cgroup/cpu,cpuacct")),
            (v2, None),
            (cpuset_only, None),
            ("", None),
        ];
        for (text, want) in table {
            assert_eq!(cpu_controller_v1(text), want.map(PathBuf::from), "{text:?}");
        }
        let groups: [(&str, Option<&str>); 5] = [
            (
                "2:cpuacct:/\n1:cpu:/daffe-precopy\n0::/\n",
                Some("/daffe-precopy"),
            ),
            (
                "4:cpu,cpuacct:/system.slice/docker.service\n",
                Some("/system.slice/docker.service"),
            ),
            ("3:cpuset:/\n2:cpuacct:/x\n", None),
            ("0::/user.slice\n", None),
            ("9:name=systemd:/\n1:cpu:/a:b\n", Some("/a:b")),
        ];
        for (text, want) in groups {
            assert_eq!(cpu_group_v1(text), want, "{text:?}");
        }
    }

    /// A CPU burner pinned to CPU 0 (`taskset`), as a child process in a
    /// session of its own: its own autogroup at nice 0, whatever the
    /// caller's (a test run from a shell whose autogroup was niced would
    /// otherwise give the competitor too little weight to starve anyone).
    fn burner() -> std::process::Child {
        std::process::Command::new("setsid")
            .args(["taskset", "-c", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("taskset (util-linux) and sh")
    }

    fn cpu_group_of(pid: u32) -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        cpu_group_v1(&text).unwrap().to_owned()
    }

    /// The real kernel: a process moved into the idle group beside a
    /// normal one that wants the same CPU gets (almost) nothing; the
    /// watchdog sees it and moves it to the low-weight group, where it
    /// gets a small share of that CPU and not nothing; back on drop; the
    /// next round goes to the low group straight away. A process left in
    /// the idle group unstarved is moved back on drop. Needs root and the
    /// v1 cpu controller (CI has both; a v2-only host has nothing to test:
    /// the module doc).
    #[test]
    fn a_starved_process_goes_to_the_low_group_and_a_fed_one_returns_on_drop() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if cpu_controller_v1(&mountinfo).is_none() {
            assert!(
                Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
                "neither a v1 cpu controller nor cgroup v2"
            );
            return;
        }
        let (idle, low) = (format!("/{IDLE_GROUP}"), format!("/{LOW_GROUP}"));

        // Fed: moved in, every thread with it, and back on drop.
        let mut fed = burner();
        let before = cpu_group_of(fed.id());
        let starved = Arc::new(AtomicBool::new(false));
        let g = IdleProcess::enter(fed.id(), starved.clone()).expect("root is needed here");
        assert_eq!(cpu_group_of(fed.id()), idle);
        drop(g);
        assert_eq!(cpu_group_of(fed.id()), before);
        assert!(!starved.load(Ordering::Relaxed));

        // Starved: its competitor (not idle) on the same CPU takes it all.
        let mut starving = burner();
        let starved = Arc::new(AtomicBool::new(false));
        let g = IdleProcess::enter(starving.id(), starved.clone()).unwrap();
        assert_eq!(cpu_group_of(starving.id()), idle);
        let deadline = std::time::Instant::now() + WINDOW * (STARVED_WINDOWS + 4);
        while !starved.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            std::thread::sleep(MS(200));
        }
        let (got_out, group) = (starved.load(Ordering::Relaxed), cpu_group_of(starving.id()));
        // In the low group, beside `fed` (at the default weight, on the same
        // CPU): a share near LOW_SHARES / (LOW_SHARES + 1024) = 10%. Bounds
        // wide enough for a busy CI machine, narrow enough to tell it from
        // an equal share (50%) and from starvation (~0-3%).
        let (a0, b0) = (ThreadTimes::of(starving.id()), ThreadTimes::of(fed.id()));
        std::thread::sleep(S(3));
        let a = ThreadTimes::of(starving.id()).since(&a0).run;
        let b = ThreadTimes::of(fed.id()).since(&b0).run;
        drop(g);
        let after_drop = cpu_group_of(starving.id());
        // A later round of the same move: to the low group at once.
        let g = IdleProcess::enter_low(starving.id()).unwrap();
        let next_round = cpu_group_of(starving.id());
        drop(g);
        let after_next = cpu_group_of(starving.id());
        for c in [&mut fed, &mut starving] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(got_out, "the watchdog did not see the starvation");
        assert_eq!(group, low, "moved to the low group by the watchdog");
        let share = a.as_secs_f64() / (a + b).as_secs_f64().max(1e-9);
        assert!(
            (0.04..0.25).contains(&share),
            "share of the low group: {share:.2} ({a:?} vs {b:?} on a CPU)"
        );
        assert_eq!(after_drop, before, "back on drop");
        assert_eq!(next_round, low);
        assert_eq!(after_next, before);
        assert_eq!(
            std::fs::read_to_string(
                Path::new(&cpu_controller_v1(&mountinfo).unwrap())
                    .join(LOW_GROUP)
                    .join("cpu.shares")
            )
            .unwrap()
            .trim(),
            LOW_SHARES.to_string()
        );
    }
}
