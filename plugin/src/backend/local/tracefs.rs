//! A tracefs instance of our own: some tracepoints, each with a filter,
//! recorded into private per-CPU buffers and drained through its
//! `trace_pipe`. The write trackers (`writes` for block volumes,
//! `dir_writes` for dir volumes) each run their sessions on it.
//!
//! A session vouches for nothing it might have missed: a full buffer drops
//! new events and counts them (never overwrites old ones silently), and a
//! drain that finds any dropped, or an event switched off, or the instance
//! gone, is an error the tracker turns into "read it whole".

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where tracefs is, or is mounted by us if absent (root, once).
const TRACEFS: &str = "/sys/kernel/tracing";

/// One instance (`instances/NAME`) while it records.
pub(crate) struct Session {
    dir: PathBuf,
    /// `system/event` of every tracepoint enabled.
    events: Vec<String>,
    /// `None` only inside `drop`: the pipe must close before the instance's
    /// rmdir, which the kernel refuses (EBUSY) while a reader holds it.
    pipe: Option<std::fs::File>,
    carry: String,
    /// Dropped events counted by the kernel when the session began.
    dropped: u64,
}

impl Session {
    /// Records `events` (`(system/event, filter)`) in a new instance
    /// `name`, with at least `buffer_kb` of buffer per CPU (the kernel's
    /// default when that is more). A leftover instance of that name (an
    /// earlier daemon's) is removed first: its events are not ours.
    ///
    /// The buffers are sized before any event is on, never while they
    /// record: the kernel discards events written during a resize and
    /// counts them nowhere (neither dropped nor overrun). Resized from the
    /// drain thread 250 ms in, as sessions once were, a dir volume's
    /// tracker lost the writes a test made in those milliseconds and
    /// vouched for a manifest with a stale chunk (`dir_writes` tests, 6 of
    /// 15 runs here). The cost is on the Mount's or the first scan's path:
    /// 15-28 ms for a resize on this machine, none when the default is
    /// enough.
    pub(crate) fn start(
        name: &str,
        events: &[(&str, String)],
        buffer_kb: u32,
    ) -> std::io::Result<Session> {
        let root = root()?;
        let dir = root.join("instances").join(name);
        if dir.exists() {
            let _ = disable(&dir);
            let _ = std::fs::remove_dir(&dir);
        }
        // The pipe first: an instance whose pipe is held is never swept by
        // another daemon ([`sweep_unheld`]). In the window before (a mkdir)
        // a daemon starting or tracking beside us may sweep ours: made again.
        let mut tries = 0;
        let pipe = loop {
            tries += 1;
            std::fs::create_dir(&dir)?;
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed())
                .open(dir.join("trace_pipe"))
            {
                Ok(p) => break p,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 5 => {}
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            }
        };
        let setup = || -> std::io::Result<()> {
            let now = std::fs::read_to_string(dir.join("buffer_size_kb"))?;
            if size_kb(&now).is_none_or(|kb| kb < buffer_kb) {
                std::fs::write(dir.join("buffer_size_kb"), buffer_kb.to_string())?;
            }
            // Full buffer: drop new events and count them.
            std::fs::write(dir.join("options/overwrite"), "0")?;
            for (event, filter) in events {
                let ev = dir.join("events").join(event);
                std::fs::write(ev.join("filter"), filter)?;
                std::fs::write(ev.join("enable"), "1")?;
            }
            std::fs::write(dir.join("tracing_on"), "1")
        };
        if let Err(e) = setup() {
            let _ = disable(&dir);
            drop(pipe);
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        let dropped = dropped(&dir)?;
        Ok(Session {
            dir,
            events: events.iter().map(|(e, _)| (*e).to_owned()).collect(),
            pipe: Some(pipe),
            carry: String::new(),
            dropped,
        })
    }

    /// Hands every whole line recorded since the last drain to `each`; an
    /// error if any may be missing (events dropped, an event switched off,
    /// the instance gone).
    pub(crate) fn drain(&mut self, mut each: impl FnMut(&str)) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let Some(pipe) = self.pipe.as_mut() else {
            return Err(std::io::Error::other("the session is closing"));
        };
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.carry.push_str(&String::from_utf8_lossy(&buf[..n]));
                    let end = self.carry.rfind('\n').map_or(0, |i| i + 1);
                    for line in self.carry[..end].lines() {
                        each(line);
                    }
                    self.carry.drain(..end);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        for event in &self.events {
            let on = std::fs::read_to_string(self.dir.join("events").join(event).join("enable"))?;
            if on.trim() != "1" {
                return Err(std::io::Error::other(format!(
                    "the tracepoint {event} was switched off"
                )));
            }
        }
        if dropped(&self.dir)? != self.dropped {
            return Err(std::io::Error::other(
                "the kernel dropped write events (buffer full)",
            ));
        }
        Ok(())
    }
}

impl Drop for Session {
    /// Events off, pipe closed, instance removed. The rmdir is retried
    /// while the kernel says busy, for up to [`RMDIR_BUSY_WAIT`]: a
    /// process this one forks (mount, mkfs) holds a copy of the pipe until
    /// its exec closes it, and the instance stays busy until then (a test
    /// saw its instance left behind in 2 of 30 runs beside tests that spawn
    /// commands).
    fn drop(&mut self) {
        let _ = disable(&self.dir);
        drop(self.pipe.take());
        let step = std::time::Duration::from_millis(5);
        let mut waited = std::time::Duration::ZERO;
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.raw_os_error() != Some(rustix::io::Errno::BUSY.raw_os_error())
                || waited >= RMDIR_BUSY_WAIT
            {
                break;
            }
            std::thread::sleep(step);
            waited += step;
        }
    }
}

/// How long a session's end waits for its instance to be free to remove.
const RMDIR_BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Starts, once per `once`, a thread named `name` that calls `drain` on
/// `owner` every `every`: a tracker's sessions are drained between scans
/// too, so their kernel buffers do not fill while nobody asks. The thread
/// holds the tracker weakly and ends once it is dropped: a tracker's drop
/// ends its sessions (their instances removed), which a thread holding it
/// for ever would prevent for every tracker but the daemon's static.
pub(crate) fn drain_every<T: Send + Sync + 'static>(
    owner: &std::sync::Arc<T>,
    once: &std::sync::OnceLock<()>,
    name: &str,
    every: std::time::Duration,
    drain: impl Fn(&T) + Send + 'static,
) {
    once.get_or_init(|| {
        let weak = std::sync::Arc::downgrade(owner);
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(owner) = weak.upgrade() else {
                        return;
                    };
                    drain(&owner);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, thread = name, "cannot start a write-tracking drain thread");
        }
    });
}

/// Removes every instance named `prefix...` but `ours` that no process
/// reads: a dead daemon's (kill -9 leaves its instance and its buffers).
/// The kernel refuses (EBUSY) to remove an instance whose `trace_pipe` is
/// open, so another live daemon's session is never touched, nor its events
/// switched off.
pub(crate) fn sweep_unheld(prefix: &str, ours: &str) {
    if let Ok(root) = root() {
        sweep_unheld_in(&root, prefix, ours);
    }
}

/// [`sweep_unheld`] under a known tracefs root.
pub(crate) fn sweep_unheld_in(root: &Path, prefix: &str, ours: &str) {
    sweep_unheld_where(root, |name| name.starts_with(prefix) && name != ours);
}

/// 8 hex digits that differ between calls and processes, for an
/// instance's name: daemons in other PID namespaces (a managed plugin is
/// PID 1 in its own) may share a PID and a counter.
pub(crate) fn name_nonce() -> String {
    use std::hash::{BuildHasher, RandomState};
    // `RandomState` is seeded per process and advanced per instance.
    let random = RandomState::new().hash_one(std::time::Instant::now()) & 0xffff_ffff;
    format!("{random:08x}")
}

/// Removes every instance under `root` whose name `sweeps` and that no
/// process reads (the kernel refuses the rmdir while a `trace_pipe` is
/// open). Only an rmdir: no file in an instance is opened, so a live one
/// is neither switched off nor kept from its own removal.
pub(crate) fn sweep_unheld_where(root: &Path, sweeps: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(root.join("instances")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if sweeps(&name) && std::fs::remove_dir(e.path()).is_ok() {
            tracing::info!(instance = %name, "removed a dead daemon's write tracking");
        }
    }
}

/// Switches off every event of an instance.
pub(crate) fn disable(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("events/enable"), "0")
}

/// Pure: the per-CPU size in `buffer_size_kb`'s text: `1410`, or for a
/// buffer not yet allocated, `7 (expanded: 1408)`, the size it takes once
/// it records (1408).
fn size_kb(text: &str) -> Option<u32> {
    let expanded = text
        .split_once("(expanded:")
        .map(|(_, r)| r.trim_end().trim_end_matches(')'));
    expanded
        .unwrap_or(text)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Events the kernel lost in the instance, summed over CPUs.
fn dropped(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("per_cpu"))? {
        n += lost_in_stats(&std::fs::read_to_string(e?.path().join("stats"))?);
    }
    Ok(n)
}

/// Pure: the events one CPU's `stats` says were lost: `dropped events`
/// (a full buffer refused them) and `overrun` (written over or removed
/// unread; a buffer that never overwrites counts here only what a resize
/// took away, which the sessions never do while recording, but a loss
/// uncounted is a manifest vouched for wrongly).
fn lost_in_stats(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| {
            l.strip_prefix("dropped events:")
                .or_else(|| l.strip_prefix("overrun:"))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// tracefs's root if it is mounted (at its usual place or under debugfs).
pub(crate) fn mounted_root() -> Option<PathBuf> {
    [TRACEFS, "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|r| r.join("instances").is_dir())
}

/// tracefs's root, mounted at its usual place if it is not yet.
pub(crate) fn root() -> std::io::Result<PathBuf> {
    if let Some(root) = mounted_root() {
        return Ok(root);
    }
    let root = PathBuf::from(TRACEFS);
    super::super::sys::run(
        "mount",
        &[
            std::ffi::OsStr::new("-t"),
            std::ffi::OsStr::new("tracefs"),
            std::ffi::OsStr::new("nodev"),
            root.as_os_str(),
        ],
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    if root.join("instances").is_dir() {
        Ok(root)
    } else {
        Err(std::io::Error::other("tracefs has no instances directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live session's instance survives another daemon's sweep with its
    /// events still on; a dead daemon's (nobody reads it) is removed.
    #[test]
    fn a_sweep_removes_dead_instances_and_never_touches_a_live_one() {
        let prefix = format!("daffe-sweeptest-{}-", std::process::id());
        let events = [("ext4/ext4_da_write_end", "dev == 0".to_owned())];
        let live = Session::start(&format!("{prefix}live"), &events, 64).unwrap();
        let dead = root()
            .unwrap()
            .join("instances")
            .join(format!("{prefix}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("events/ext4/ext4_da_write_end/enable"), "1").unwrap();
        sweep_unheld(&prefix, &format!("{prefix}ours"));
        let dead_left = dead.exists();
        let _ = std::fs::remove_dir(&dead);
        assert!(!dead_left, "{} kept", dead.display());
        assert!(live.dir.exists(), "a live session's instance was removed");
        let mut live = live;
        live.drain(|_| {})
            .expect("the live session's events are still on");
    }

    #[test]
    fn lost_events_are_the_dropped_and_the_overrun_not_the_commit_overrun() {
        let stats = "entries: 12\noverrun: 3\ncommit overrun: 100\nbytes: 9\n\
                     oldest event ts:     0.000000\nnow ts:  1.0\ndropped events: 4\n\
                     read events: 7\n";
        assert_eq!(lost_in_stats(stats), 7);
        assert_eq!(lost_in_stats("entries: 0\n"), 0);
    }

    #[test]
    fn a_buffer_size_reads_with_or_without_its_expansion() {
        for (text, want) in [
            ("1410\n", Some(1410)),
            ("7 (expanded: 1408)\n", Some(1408)),
            ("7 (expanded: X)\n", None),
            ("X\n", None),
            ("", None),
        ] {
            assert_eq!(size_kb(text), want, "{text:?}");
        }
    }

    /// A session's buffers have the size asked for (the kernel rounds up
    /// to whole pages) before it records; a larger default is kept. The
    /// session drains cleanly either way.
    #[test]
    fn the_buffers_are_sized_at_start_and_a_larger_default_is_kept() {
        let name = format!("daffe-sizetest-{}", std::process::id());
        let events = [("ext4/ext4_da_write_end", "dev == 0".to_owned())];
        let size = |s: &Session| {
            size_kb(&std::fs::read_to_string(s.dir.join("buffer_size_kb")).unwrap()).unwrap()
        };
        let mut s = Session::start(&name, &events, 4096).unwrap();
        let big = size(&s);
        assert!((4096..4096 + 64).contains(&big), "{big} KiB");
        s.drain(|_| {}).expect("the session records");
        drop(s);
        let mut s = Session::start(&name, &events, 4).unwrap();
        let small = size(&s);
        assert!(small > 64, "the default was shrunk to {small} KiB");
        s.drain(|_| {}).expect("the session records");
        drop(s);
        let gone = root().unwrap().join("instances").join(&name);
        assert!(!gone.exists(), "{} left behind", gone.display());
    }
}
