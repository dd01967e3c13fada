//! Where a dir volume's files were written, so that a scan of the tree
//! reads only those pages of a changed file instead of all of it
//! ([`mover::FileChanges`]; issue 11: PostgreSQL on a `default` volume,
//! whose final round re-read every changed table file whole).
//!
//! Dir volumes share the data root's filesystem, so one tracefs instance
//! per filesystem and daemon (`instances/daffe-fs-MAJ-MIN-PID-RANDOM`;
//! a dead daemon's is swept, a live one's is never touched) records the events
//! `file_writes` parses, filtered to that filesystem's device. It starts
//! when a scan first asks about a volume on it and stops after
//! [`IDLE`] without questions. A drain thread (and every scan, first) moves
//! the events into per-cache lists keyed by inode; a scan then patches a
//! changed file from the last manifest where nothing was written.
//!
//! The tracker vouches for nothing it might have missed, as the block
//! tracker (`writes`): until a scan that started after recording began has
//! been saved, and after the kernel dropped events, a cache's answer is
//! `None` and changed files are read whole. A file mapped into a process
//! (at the start, from `/proc/*/maps`; then from the fault events) is read
//! whole for the session's life. Not ext4 (xfs, btrfs, overlay): no
//! tracker, changed files are read whole as before.
//!
//! - [`FileConsumer`]: the changes one source cache has not scanned (pure).
//! - [`shared_writable_inode`]: one `/proc/PID/maps` line (pure).
//! - [`DirWrites`]: the process's logs by filesystem, the sessions and the
//!   drain thread (thin I/O).

use super::super::mountpoint::Device;
use super::file_writes::{self, FileChange};
use super::tracefs;
use mover::{FileChanges, ImageChanges, PendingChanges};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Per-CPU buffer of a filesystem's instance: every buffered write of the
/// filesystem is an event (~90 bytes), 2 MiB holds some 20,000 per CPU
/// between two drains 250 ms apart. Set before the session records
/// (`tracefs::Session::start`).
const BUFFER_KB: u32 = 2048;
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// A filesystem nobody asked about for this long stops being recorded.
pub(crate) const IDLE: Duration = Duration::from_secs(600);
/// More ranges than this in one cache's open list are coarsened to 1 MiB
/// cells; if that is still too many, the cache stops being trusted.
const MAX_RANGES: usize = 200_000;

type Written = HashMap<u64, Option<Vec<(u64, u64)>>>;

/// What one source cache has not scanned yet, by inode.
#[derive(Debug, Default)]
pub(crate) struct FileConsumer {
    /// Changes drained since the last `pending`, not yet handed out
    /// (`None`: read that file whole).
    open: Written,
    open_ranges: usize,
    /// Direct-I/O ranges recorded since the last `pending`: handed out
    /// once more after that one (their data may land during its scan).
    again: Vec<(u64, (u64, u64))>,
    /// Handed out under a mark, kept until a scan with that mark is saved.
    handed: Vec<(u64, Written)>,
    /// A saved scan covers every write before the changes kept here.
    trusted: bool,
    /// The first mark after the last loss: a saved scan from it on is a base.
    clean_from: u64,
}

impl FileConsumer {
    /// Records one change; false if the list outgrew its bound (the
    /// caller then loses this cache).
    fn add(&mut self, c: FileChange) -> bool {
        match c {
            FileChange::Range {
                ino,
                start,
                end,
                early,
            } => {
                if early {
                    self.again.push((ino, (start, end)));
                }
                self.add_range(ino, (start, end));
            }
            FileChange::Whole { ino } => {
                if let Some(Some(v)) = self.open.insert(ino, None) {
                    self.open_ranges -= v.len();
                }
            }
            // Kept by the log for the session's life, not per cache.
            FileChange::Mapped { .. } => {}
        }
        if self.open_ranges > MAX_RANGES {
            let mut n = 0;
            for v in self.open.values_mut().flatten() {
                *v = super::writes::coarsen(v);
                n += v.len();
            }
            self.open_ranges = n;
        }
        self.open_ranges <= MAX_RANGES
    }

    fn add_range(&mut self, ino: u64, r: (u64, u64)) {
        if let Some(v) = self.open.entry(ino).or_insert_with(|| Some(Vec::new())) {
            v.push(r);
            self.open_ranges += 1;
        }
    }

    fn lose(&mut self, next_mark: u64) {
        self.open.clear();
        self.open_ranges = 0;
        self.again.clear();
        self.handed.clear();
        self.trusted = false;
        self.clean_from = next_mark;
    }

    /// The changes since the last saved scan (every hand-out not yet
    /// saved, merged), or `None` while untrusted.
    fn pending(&mut self, mark: u64) -> Option<Written> {
        let open = std::mem::take(&mut self.open);
        self.open_ranges = 0;
        self.handed.push((mark, open));
        for (ino, r) in std::mem::take(&mut self.again) {
            self.add_range(ino, r);
        }
        if !self.trusted {
            return None;
        }
        let mut all: Written = HashMap::new();
        for (_, w) in &self.handed {
            for (ino, v) in w {
                match (all.entry(*ino).or_insert_with(|| Some(Vec::new())), v) {
                    (Some(acc), Some(v)) => acc.extend_from_slice(v),
                    (slot, _) => *slot = None,
                }
            }
        }
        for v in all.values_mut().flatten() {
            *v = merge(std::mem::take(v));
        }
        Some(all)
    }

    fn scanned(&mut self, mark: u64) {
        self.handed.retain(|(m, _)| *m > mark);
        if mark >= self.clean_from {
            self.trusted = true;
        }
    }
}

/// Sorted, merged (touching ranges joined).
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The inode of a `/proc/PID/maps` line that maps a file of `dev` shared
/// and writable (`rw-s`): its writes reach the file without a write event.
pub(crate) fn shared_writable_inode(line: &str, dev: Device) -> Option<u64> {
    let mut w = line.split_whitespace();
    let (_, perms, _, mdev, ino) = (w.next()?, w.next()?, w.next()?, w.next()?, w.next()?);
    let p = perms.as_bytes();
    if p.len() < 4 || p[1] != b'w' || p[3] != b's' {
        return None;
    }
    let (maj, min) = mdev.split_once(':')?;
    if u32::from_str_radix(maj, 16).ok()? != dev.major
        || u32::from_str_radix(min, 16).ok()? != dev.minor
    {
        return None;
    }
    ino.parse().ok().filter(|&i| i != 0)
}

/// The files of `dev` some process maps shared and writable now.
fn mapped_now(dev: Device) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // A process gone meanwhile maps nothing.
        if let Ok(maps) = std::fs::read_to_string(p.path().join("maps")) {
            out.extend(maps.lines().filter_map(|l| shared_writable_inode(l, dev)));
        }
    }
    out
}

/// The start of every dir tracker's instance name.
pub(crate) const INSTANCE_PREFIX: &str = "daffe-fs-";

/// A new session's instance name, `daffe-fs-MAJ-MIN-PID-RANDOM`: one per
/// daemon and session. Several daemons may track one filesystem (Swarm
/// nodes on one host, tests side by side); a shared name would let each
/// start switch the other's events off (a safe fallback to whole reads,
/// but slow). The random part keeps daemons in different PID namespaces
/// (a managed plugin is PID 1 in its own) apart.
fn instance_name(dev: Device) -> String {
    format!("{}{}", own_instance_prefix(dev), tracefs::name_nonce())
}

/// What every session of this process on `dev` is named from,
/// `daffe-fs-MAJ-MIN-PID-`.
fn own_instance_prefix(dev: Device) -> String {
    format!(
        "{INSTANCE_PREFIX}{}-{}-{}-",
        dev.major,
        dev.minor,
        std::process::id()
    )
}

/// One filesystem's log: its session while recording, the caches' changes.
struct FsLog {
    dev: Device,
    /// `st_dev` as stat reports it (what the scan compares).
    st_dev: u64,
    session: Option<tracefs::Session>,
    consumers: HashMap<PathBuf, FileConsumer>,
    /// Files mapped into a process since the session began.
    mapped: HashSet<u64>,
    next_mark: u64,
    asked: Instant,
}

impl FsLog {
    fn start(&mut self) {
        let events: Vec<(&str, String)> = file_writes::EVENTS
            .iter()
            .map(|e| (*e, file_writes::filter(e, self.dev)))
            .collect();
        let name = instance_name(self.dev);
        tracefs::sweep_unheld(INSTANCE_PREFIX, &name);
        match tracefs::Session::start(&name, &events, BUFFER_KB) {
            Ok(s) => {
                self.session = Some(s);
                // Mapped before the events were on: no fault will tell.
                self.mapped = mapped_now(self.dev);
                self.lose_all();
            }
            Err(e) => {
                tracing::debug!(dev = %self.dev, error = %e, "not tracking dir volume writes (tracefs); changed files are read whole");
            }
        }
    }

    fn drain(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (dev, mut changes) = (self.dev, Vec::new());
        let r = s.drain(|line| {
            if let Some(c) = file_writes::parse_file_change(line, dev) {
                changes.push(c);
            }
        });
        if let Err(e) = r {
            tracing::warn!(dev = %self.dev, error = %e, "dir volume write tracking lost; changed files are read whole");
            self.session = None;
            self.lose_all();
            return;
        }
        let from = self.clean_from();
        for c in changes {
            if let FileChange::Mapped { ino } = c {
                self.mapped.insert(ino);
            }
            for cons in self.consumers.values_mut() {
                if !cons.add(c) {
                    cons.lose(from);
                }
            }
        }
    }

    fn clean_from(&self) -> u64 {
        if self.session.is_some() {
            self.next_mark
        } else {
            u64::MAX
        }
    }

    fn lose_all(&mut self) {
        let from = self.clean_from();
        for c in self.consumers.values_mut() {
            c.lose(from);
        }
    }
}

/// The process's dir-volume write logs, by filesystem.
#[derive(Default)]
pub(crate) struct DirWrites {
    logs: Mutex<HashMap<u64, FsLog>>,
    drainer: std::sync::OnceLock<()>,
}

pub(crate) static DIR_WRITES: LazyLock<Arc<DirWrites>> = LazyLock::new(Arc::default);

/// ext4's `f_type`: the only filesystem whose write events are traced.
const EXT4_MAGIC: i64 = 0xEF53;

impl DirWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, FsLog>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tracker a scan of the tree at `data` into `cache_dir` asks, or
    /// `None` where writes cannot be traced (not ext4, not there).
    pub(crate) fn changes(
        self: &Arc<Self>,
        data: &Path,
        cache_dir: &Path,
    ) -> Option<Arc<dyn ImageChanges>> {
        // The operator's off switch (README "Where the volume was written").
        if std::env::var("DAFFE_DIR_TRACKING").is_ok_and(|v| v == "off") {
            return None;
        }
        let st = rustix::fs::stat(data).ok()?;
        let fs = rustix::fs::statfs(data).ok()?;
        #[allow(clippy::useless_conversion, reason = "f_type's width is per arch")]
        if i64::from(fs.f_type) != EXT4_MAGIC {
            return None;
        }
        let dev = Device {
            major: rustix::fs::major(st.st_dev),
            minor: rustix::fs::minor(st.st_dev),
        };
        self.start_drainer();
        Some(Arc::new(Tracked {
            logs: Arc::clone(self),
            dev,
            st_dev: st.st_dev,
            cache: cache_dir.to_path_buf(),
        }))
    }

    /// The daemon stops: every filesystem's session ends (its instance
    /// removed). A static is never dropped, so without this each stop left
    /// its instance recording until the next daemon's start swept it.
    pub(crate) fn stop_all(&self) {
        self.lock().clear();
    }

    fn start_drainer(self: &Arc<Self>) {
        tracefs::drain_every(self, &self.drainer, "dir-write-drain", DRAIN_EVERY, |me| {
            let mut logs = me.lock();
            // Nobody asked for long: stop recording, forget.
            logs.retain(|_, l| l.asked.elapsed() < IDLE);
            for log in logs.values_mut() {
                log.drain();
            }
        });
    }
}

struct Tracked {
    logs: Arc<DirWrites>,
    dev: Device,
    st_dev: u64,
    cache: PathBuf,
}

impl ImageChanges for Tracked {
    fn pending(&self) -> PendingChanges {
        let mut logs = self.logs.lock();
        let key = (u64::from(self.dev.major) << 20) | u64::from(self.dev.minor);
        let log = logs.entry(key).or_insert_with(|| FsLog {
            dev: self.dev,
            st_dev: self.st_dev,
            session: None,
            consumers: HashMap::new(),
            mapped: HashSet::new(),
            next_mark: 0,
            asked: Instant::now(),
        });
        log.asked = Instant::now();
        if log.session.is_none() {
            log.start();
        }
        log.drain();
        let from = log.clean_from();
        let mark = log.next_mark;
        log.next_mark += 1;
        let first = !log.consumers.contains_key(&self.cache);
        let c = log.consumers.entry(self.cache.clone()).or_default();
        if first {
            // Nothing was recorded for this cache before: this scan reads
            // changed files whole and, if recording, is its base.
            c.lose(from);
        }
        let files = c.pending(mark).map(|mut written| {
            for ino in &log.mapped {
                written.insert(*ino, None);
            }
            FileChanges {
                dev: log.st_dev,
                written,
            }
        });
        PendingChanges {
            mark,
            ranges: None,
            files,
        }
    }

    fn scanned(&self, mark: u64) {
        let key = (u64::from(self.dev.major) << 20) | u64::from(self.dev.minor);
        if let Some(c) = self
            .logs
            .lock()
            .get_mut(&key)
            .and_then(|l| l.consumers.get_mut(&self.cache))
        {
            c.scanned(mark);
        }
    }
}

#[cfg(test)]
mod tests;
