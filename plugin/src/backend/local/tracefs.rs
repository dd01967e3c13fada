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
    /// The per-CPU buffer size asked for, while the instance still has the
    /// kernel's default (see [`Session::resize`]).
    resize_to: Option<u32>,
}

impl Session {
    /// Records `events` (`(system/event, filter)`) in a new instance
    /// `name`, whose buffers become `buffer_kb` per CPU at the first
    /// [`Session::resize`]. A leftover instance of that name (an earlier
    /// daemon's) is removed first: its events are not ours.
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
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => {}
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            }
        };
        let setup = || -> std::io::Result<()> {
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
        let now = std::fs::read_to_string(dir.join("buffer_size_kb"))?;
        Ok(Session {
            dir,
            events: events.iter().map(|(e, _)| (*e).to_owned()).collect(),
            pipe: Some(pipe),
            carry: String::new(),
            dropped,
            resize_to: (size_kb(&now) != Some(buffer_kb)).then_some(buffer_kb),
        })
    }

    /// Gives the instance the buffer size [`Session::start`] was asked
    /// for, once; the trackers' drain threads call it. Not done in `start`:
    /// any resize waits for the kernel (an RCU grace period, 5-14 ms here),
    /// and `start` runs on the path of a Mount or of the first scan that
    /// asks (a 128 MiB first `daffe sync` takes ~0.25 s). A new instance
    /// records meanwhile in the kernel's default buffers (1410 KiB per CPU
    /// on Linux 6.18), and the kernel resizes them while they record. A
    /// failed resize leaves the default size: a buffer that then fills is
    /// seen as dropped events, as always.
    pub(crate) fn resize(&mut self) {
        if let Some(kb) = self.resize_to.take()
            && let Err(e) = std::fs::write(self.dir.join("buffer_size_kb"), kb.to_string())
        {
            tracing::debug!(instance = %self.dir.display(), error = %e, "cannot resize the write tracking's buffers; keeping the kernel's default");
        }
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
    fn drop(&mut self) {
        let _ = disable(&self.dir);
        drop(self.pipe.take());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

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
    let Ok(entries) = std::fs::read_dir(root.join("instances")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name != ours && std::fs::remove_dir(e.path()).is_ok() {
            tracing::info!(instance = %name, "removed a dead daemon's write tracking");
        }
    }
}

/// Switches off every event of an instance.
pub(crate) fn disable(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("events/enable"), "0")
}

/// Pure: the per-CPU size in `buffer_size_kb`'s text (`1410`, or `7
/// (expanded: 1408)` for a buffer not yet allocated).
fn size_kb(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

/// Events the kernel dropped in the instance, summed over CPUs.
fn dropped(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("per_cpu"))? {
        let stats = std::fs::read_to_string(e?.path().join("stats"))?;
        n += stats
            .lines()
            .filter_map(|l| l.strip_prefix("dropped events:"))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(n)
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
    fn a_buffer_size_reads_with_or_without_its_expansion() {
        for (text, want) in [
            ("1410\n", Some(1410)),
            ("7 (expanded: 1408)\n", Some(7)),
            ("X\n", None),
            ("", None),
        ] {
            assert_eq!(size_kb(text), want, "{text:?}");
        }
    }

    /// The buffers keep the kernel's size until the first resize (the
    /// drain thread's), which happens once, and the session still drains
    /// cleanly (no event switched off, none dropped) after it.
    #[test]
    fn the_buffers_are_resized_by_the_first_resize_not_at_start() {
        let name = format!("daffe-resizetest-{}", std::process::id());
        let events = [("ext4/ext4_da_write_end", "dev == 0".to_owned())];
        let size = |s: &Session| {
            size_kb(&std::fs::read_to_string(s.dir.join("buffer_size_kb")).unwrap()).unwrap()
        };
        let mut s = Session::start(&name, &events, 4096).unwrap();
        let before = size(&s);
        assert!(before < 4096, "start resized the buffers ({before} KiB)");
        s.resize();
        // The kernel rounds up to whole pages (2048 reads back as 2051).
        let after = size(&s);
        assert!((4096..4096 + 64).contains(&after), "{after} KiB");
        s.resize();
        assert_eq!(size(&s), after, "the second resize changed it");
        s.drain(|_| {})
            .expect("the session records after its resize");
        // Asked for the size it already has: nothing to do.
        drop(s);
        let s = Session::start(&name, &events, before).unwrap();
        assert_eq!(s.resize_to, None);
    }
}
