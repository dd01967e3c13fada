//! The dead man's switch that stops a node writing a volume it may no longer
//! own, even when the daemon itself is dead (kill -9, a hung process).
//!
//! The daemon cannot be trusted to fence itself: FIELD-NOTES ("Swarm") saw a
//! killed node's container keep writing while Swarm ran the task elsewhere.
//! So a separate small process, `daffe fence-watch FILE` (started by `daffe
//! serve`, in its own session so it outlives the daemon), reads a heartbeat
//! file the daemon rewrites after every acknowledged etcd keep-alive: until
//! when writes are safe (the lease rule of `cluster::lease`, on
//! CLOCK_BOOTTIME, which both processes share and which counts suspend) and
//! which filesystems to stop. Once that moment passes without a newer
//! heartbeat, the watchdog shuts those filesystems down (`xfs_io -x -c
//! "shutdown -f"`: the ext4/XFS shutdown ioctl, log flushed). What a
//! container still running there sees: every read and write of the volume
//! fails with EIO at once (a read-only remount would not do: ext4 refuses
//! it while any file is open for writing). The copy is never served again:
//! the node re-claims, finds another writer, and its copy is stale.
//!
//! A `dir` volume shares the host's filesystem, which cannot be shut down:
//! it is fenced for new Mounts and rounds only (documented in the plugin
//! README); gold (block) volumes are fenced for running containers too.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the watchdog reads the heartbeat: well inside any margin.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(100);

/// What the daemon tells the watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    /// CLOCK_BOOTTIME milliseconds until which writes are safe.
    pub(crate) writable_until_ms: u64,
    /// Mounted filesystems of owned block volumes: shut at the deadline.
    pub(crate) mounts: Vec<PathBuf>,
    /// Filesystems of volumes this node lost while mounted: shut now, and
    /// kept listed (so a new heartbeat never hides them from the watchdog)
    /// until they are unmounted.
    #[serde(default)]
    pub(crate) fenced: Vec<PathBuf>,
}

/// The watchdog's decision for one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Safe,
    /// Shut these down now (each once: `done` holds those already shut).
    Fence(Vec<PathBuf>),
}

impl Heartbeat {
    pub(crate) fn verdict(&self, now_ms: u64, done: &[PathBuf]) -> Verdict {
        let due = now_ms >= self.writable_until_ms;
        let mut left: Vec<PathBuf> = Vec::new();
        let listed = self.fenced.iter().chain(self.mounts.iter().filter(|_| due));
        for m in listed {
            if !done.contains(m) && !left.contains(m) {
                left.push(m.clone());
            }
        }
        if left.is_empty() {
            Verdict::Safe
        } else {
            Verdict::Fence(left)
        }
    }

    /// Whether `m` is still listed at all (a path no longer listed was
    /// unmounted: a later mount there is a new filesystem, to be fenced anew).
    fn lists(&self, m: &Path) -> bool {
        self.mounts.iter().chain(&self.fenced).any(|x| x == m)
    }
}

/// CLOCK_BOOTTIME in milliseconds.
pub(crate) fn boot_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(t.tv_nsec / 1_000_000).unwrap_or(0))
}

/// Writes the heartbeat atomically (a reader never sees half a file).
pub(crate) fn write(path: &Path, hb: &Heartbeat) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(hb).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn read(path: &Path) -> Option<Heartbeat> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Shuts a mounted filesystem down: from now on every operation on it
/// fails with EIO, in every mount namespace (it is the superblock's state).
pub(crate) fn shut_down(mountpoint: &Path) -> Result<(), String> {
    let out = std::process::Command::new("xfs_io")
        .args(["-x", "-c", "shutdown -f"])
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running xfs_io (Debian package xfsprogs): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "xfs_io shutdown {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts `daffe cluster fence-watch FILE` in a process group of its own
/// (so it outlives the daemon, whatever kills it), unless the one a previous
/// run started still runs (its pid is kept in `FILE.pid`).
pub(crate) fn start_watchdog(file: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let pid_file = file.with_extension("pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(11).any(|w| w == b"fence-watch"))
    {
        tracing::info!(pid, "fence watchdog already running");
        return Ok(());
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["cluster", "fence-watch"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    std::fs::write(&pid_file, child.id().to_string())?;
    tracing::info!(pid = child.id(), "fence watchdog started");
    Ok(())
}

/// The watchdog's loop (`daffe cluster fence-watch FILE`). It runs until
/// killed: a missing file (not written yet, or being replaced) means
/// nothing new to fence.
pub(crate) fn watch(path: &Path) {
    watch_with(path, shut_down, || false);
}

/// [`watch`] with the shutdown and the stop condition given (tests).
pub(crate) fn watch_with(
    path: &Path,
    mut shut: impl FnMut(&Path) -> Result<(), String>,
    stop: impl Fn() -> bool,
) {
    let mut done: Vec<PathBuf> = Vec::new();
    let mut last: Option<Heartbeat> = None;
    while !stop() {
        // What was shut stays shut and is not retried while it is listed.
        if let Some(hb) = read(path) {
            done.retain(|m| hb.lists(m));
            last = Some(hb);
        }
        if let Some(hb) = &last
            && let Verdict::Fence(mounts) = hb.verdict(boot_ms(), &done)
        {
            for m in mounts {
                match shut(&m) {
                    Ok(()) => {
                        tracing::error!(mount = %m.display(), "lease deadline passed without renewal: filesystem shut down (fenced)")
                    }
                    Err(e) => tracing::error!(mount = %m.display(), error = %e, "fencing failed"),
                }
                done.push(m);
            }
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_each_mount_once_and_only_after_the_deadline() {
        let (a, b) = (PathBuf::from("/v/a"), PathBuf::from("/v/b"));
        let hb = Heartbeat {
            writable_until_ms: 1_000,
            mounts: vec![a.clone(), b.clone()],
            fenced: vec![],
        };
        let cases = [
            (999, vec![], Verdict::Safe),
            (1_000, vec![], Verdict::Fence(vec![a.clone(), b.clone()])),
            (5_000, vec![a.clone()], Verdict::Fence(vec![b.clone()])),
            (5_000, vec![a.clone(), b.clone()], Verdict::Safe),
        ];
        for (now, done, want) in cases {
            assert_eq!(hb.verdict(now, &done), want, "now {now}, done {done:?}");
        }
        let none = Heartbeat {
            writable_until_ms: 0,
            mounts: vec![],
            fenced: vec![],
        };
        assert_eq!(none.verdict(10, &[]), Verdict::Safe);
        // A lost volume is shut at once, whatever the deadline, and once.
        let lost = Heartbeat {
            writable_until_ms: u64::MAX,
            mounts: vec![a.clone()],
            fenced: vec![b.clone()],
        };
        assert_eq!(lost.verdict(10, &[]), Verdict::Fence(vec![b.clone()]));
        assert_eq!(lost.verdict(10, std::slice::from_ref(&b)), Verdict::Safe);
    }

    /// The watchdog starts before the daemon's first heartbeat, and must
    /// still be watching when the deadline of a later one passes.
    #[test]
    fn the_watchdog_waits_for_a_heartbeat_then_fences_at_its_deadline() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hb.json");
        let shut = Arc::new(Mutex::new(Vec::<PathBuf>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (p, shut, stop) = (p.clone(), shut.clone(), stop.clone());
            std::thread::spawn(move || {
                watch_with(
                    &p,
                    |m| {
                        shut.lock().unwrap().push(m.to_owned());
                        Ok(())
                    },
                    || stop.load(Ordering::SeqCst),
                )
            })
        };
        std::thread::sleep(WATCH_EVERY * 3);
        let until = boot_ms() + 500;
        write(
            &p,
            &Heartbeat {
                writable_until_ms: until,
                mounts: vec!["/v/a".into()],
                fenced: vec![],
            },
        )
        .unwrap();
        std::thread::sleep(WATCH_EVERY * 2);
        assert!(
            shut.lock().unwrap().is_empty(),
            "fenced before the deadline"
        );
        let t = std::time::Instant::now();
        while shut.lock().unwrap().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(3), "never fenced");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(boot_ms() >= until);
        std::thread::sleep(WATCH_EVERY * 3);
        stop.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        assert_eq!(
            *shut.lock().unwrap(),
            vec![PathBuf::from("/v/a")],
            "fenced once"
        );
    }

    #[test]
    fn the_heartbeat_file_round_trips_and_a_missing_one_reads_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hb.json");
        assert_eq!(read(&p), None);
        let hb = Heartbeat {
            writable_until_ms: 42,
            mounts: vec!["/m".into()],
            fenced: vec![],
        };
        write(&p, &hb).unwrap();
        assert_eq!(read(&p), Some(hb));
        assert!(boot_ms() > 0);
    }
}
