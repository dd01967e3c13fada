//! Where a mounted block volume was written, from the kernel's block
//! tracepoint, so that a scan of its image reads only that
//! ([`mover::ImageChanges`]; issue 11 "a round after the first should not
//! need to re-read the whole image", issue 14's handover share).
//!
//! Every write the filesystem makes to its loop device ends in
//! `block:block_rq_complete` once the loop driver has written it to the
//! image file. While a volume is mounted, a tracefs instance of its own
//! (`instances/daffe-MAJOR-MINOR-PID-N-RANDOM`, see [`instance_name`]) records
//! that event for its device only; a
//! drain thread (and every scan, first) moves the events into per-cache
//! range lists. The completion event, not the queue event: a range is
//! recorded only once its bytes are in the image, so a scan that starts
//! after the drain either sees them or they go to the next scan.
//!
//! The tracker vouches for nothing it might have missed: until a scan that
//! started after tracking began has been saved, after a new mount (the
//! image may have been written unmounted, e.g. received), and after the
//! kernel dropped events (buffer full, counted per CPU) or the instance
//! vanished, a cache's answer is `None` and the scan reads the whole image.
//! Without tracefs (not mounted and not mountable, no permission) nothing
//! is tracked and every scan reads the whole image, as before.
//!
//! - [`parse_event`]: one line of `trace_pipe` (pure, table-tested).
//! - [`Consumer`]: the ranges one source cache has not scanned yet (pure).
//! - [`WriteLogs`]: the process's logs by image, the tracefs sessions and
//!   the drain thread (thin I/O).

use super::super::mountpoint::Device;
use super::tracefs;
use mover::{ImageChanges, PendingChanges};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Per-CPU buffer of one volume's instance. An event takes about 60 bytes:
/// 1 MiB holds some 15,000 writes per CPU, seconds of a busy database
/// between two drains 250 ms apart. The kernel's default (1410 KiB on
/// Linux 6.18) is kept when larger (`tracefs::Session::start`).
const BUFFER_KB: u32 = 1024;
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// More ranges than this per cache are coarsened to 1 MiB cells (memory
/// stays bounded whatever the write pattern; a scan reads a little more).
const MAX_RANGES: usize = 200_000;
const COARSE: u64 = 1 << 20;

/// A write the tracepoint reported: bytes `[start, end)` of the device.
pub(crate) fn parse_event(line: &str, dev: Device) -> Option<(u64, u64)> {
    let rest = line.split("block_rq_complete: ").nth(1)?;
    let mut words = rest.split_whitespace();
    let (maj, min) = words.next()?.split_once(',')?;
    if maj.parse::<u32>().ok()? != dev.major || min.parse::<u32>().ok()? != dev.minor {
        return None;
    }
    let rwbs = words.next()?;
    // Reads change nothing; a preflush ('F' first) says nothing of the op.
    if rwbs.trim_start_matches('F').starts_with('R') {
        return None;
    }
    let (before, after) = rest.split_once(" + ")?;
    let sector: u64 = before.split_whitespace().last()?.parse().ok()?;
    let sectors: u64 = after.split_whitespace().next()?.parse().ok()?;
    if sectors == 0 {
        return None;
    }
    Some((
        sector.checked_mul(512)?,
        sector.checked_add(sectors)?.checked_mul(512)?,
    ))
}

/// What one source cache has not scanned yet.
#[derive(Debug, Default)]
pub(crate) struct Consumer {
    /// Ranges drained since the last `pending`, not yet handed out.
    open: Vec<(u64, u64)>,
    /// Handed out under a mark, kept until a scan with that mark is saved.
    handed: Vec<(u64, Vec<(u64, u64)>)>,
    /// A saved scan covers every write before the ranges kept here.
    trusted: bool,
    /// The first mark after the last loss: a saved scan from it on is a base.
    clean_from: u64,
}

impl Consumer {
    fn add(&mut self, r: (u64, u64)) {
        self.open.push(r);
        if self.open.len() > MAX_RANGES {
            self.open = coarsen(&self.open);
        }
    }

    fn lose(&mut self, next_mark: u64) {
        self.open.clear();
        self.handed.clear();
        self.trusted = false;
        self.clean_from = next_mark;
    }

    fn pending(&mut self, mark: u64) -> PendingChanges {
        let open = std::mem::take(&mut self.open);
        self.handed.push((mark, open));
        let ranges = self.trusted.then(|| {
            let all: Vec<(u64, u64)> = self
                .handed
                .iter()
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            coarsen_if_big(all)
        });
        PendingChanges {
            mark,
            ranges,
            files: None,
        }
    }

    fn scanned(&mut self, mark: u64) {
        self.handed.retain(|(m, _)| *m > mark);
        if mark >= self.clean_from {
            self.trusted = true;
        }
    }
}

fn coarsen_if_big(v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if v.len() > MAX_RANGES { coarsen(&v) } else { v }
}

/// The 1 MiB cells the ranges touch, merged.
pub(super) fn coarsen(v: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut cells: Vec<(u64, u64)> = v
        .iter()
        .map(|&(s, e)| (s / COARSE * COARSE, e.next_multiple_of(COARSE)))
        .collect();
    cells.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in cells {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// A volume's tracefs instance while its loop device is attached.
struct Session {
    dev: Device,
    trace: tracefs::Session,
}

impl Session {
    fn start(dev: Device) -> std::io::Result<Session> {
        sweep_unheld(&tracefs::root()?);
        let code = (u64::from(dev.major) << 20) | u64::from(dev.minor);
        let trace = tracefs::Session::start(
            &instance_name(dev),
            &[("block/block_rq_complete", format!("dev == {code}"))],
            BUFFER_KB,
        )?;
        Ok(Session { dev, trace })
    }

    /// The writes recorded since the last drain; an error if any may be
    /// missing (events dropped, the instance switched off or gone).
    fn drain(&mut self) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let dev = self.dev;
        self.trace.drain(|line| {
            if let Some(r) = parse_event(line, dev) {
                out.push(r);
            }
        })?;
        Ok(out)
    }
}

/// A new session's instance: `daffe-MAJOR-MINOR-PID-N-RANDOM`, never the
/// name of another session, live or ending.
///
/// Why not one name per device: a loop device is detached at Unmount
/// before its session ends, and a Mount beside it may take the same loop
/// number at once. Under one name per device the new session found the
/// ending one's instance (held: it could neither remove it nor make its
/// own, so it went untracked), or the ending one switched off the events
/// of the new one made under its name (its tracking lost). Both are safe
/// (the scan reads the whole image) but slow, and tests that mount loop
/// devices side by side meet them: `mount -o loop` takes the lowest free
/// number.
///
/// The random part: two managed plugins on one host are each PID 1 in
/// their own namespace, and their counters may agree (as the dir tracker's
/// names, `dir_writes::instance_name`).
fn instance_name(dev: Device) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "daffe-{}-{}-{}-{n}-{}",
        dev.major,
        dev.minor,
        std::process::id(),
        tracefs::name_nonce()
    )
}

/// Pure: whether `name` is a block volume's instance, this version's
/// (`daffe-MAJOR-MINOR-PID-N-RANDOM`, the last part 8 hex digits) or an
/// earlier one's (`daffe-MAJOR-MINOR-PID-N`, `daffe-MAJOR-MINOR`). A dir
/// tracker's (`daffe-fs-...`) is not.
fn is_block_instance(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("daffe-") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    let decimal = |p: &[&str]| p.iter().all(|p| p.parse::<u32>().is_ok());
    match parts.as_slice() {
        [_, _] | [_, _, _, _] => decimal(&parts),
        [numbers @ .., random] if numbers.len() == 4 => {
            decimal(numbers) && random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => false,
    }
}

/// Removes the block volumes' instances that no process reads: a killed
/// daemon's (kill -9, a fenced node) keeps its events on, 1 MiB of kernel
/// buffers per CPU, for as long as its loop device stays attached. A live
/// session holds its `trace_pipe` from the instance's making to its end,
/// and the kernel refuses (EBUSY) to remove an instance whose pipe is
/// held, so no live daemon's tracking is touched
/// ([`tracefs::sweep_unheld_where`]).
pub(crate) fn sweep_unheld(root: &Path) {
    tracefs::sweep_unheld_where(root, is_block_instance);
}

/// One image's log: the session while mounted, the caches' pending ranges.
#[derive(Default)]
struct Log {
    session: Option<Session>,
    consumers: HashMap<PathBuf, Consumer>,
    next_mark: u64,
}

impl Log {
    fn drain(&mut self, image: &Path) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match s.drain() {
            Ok(ranges) => {
                for c in self.consumers.values_mut() {
                    for &r in &ranges {
                        c.add(r);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(image = %image.display(), error = %e, "write tracking lost; the next scans read the whole image");
                self.session = None;
                self.lose_all();
            }
        }
    }

    /// The first mark a saved scan may be trusted from: the next one while
    /// a session records, never (until the next mount starts one) while
    /// none does.
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

/// The process's write logs, by image path. One per process, as the loop
/// devices and tracefs are the kernel's.
#[derive(Default)]
pub(crate) struct WriteLogs {
    logs: Mutex<HashMap<PathBuf, Log>>,
    drainer: std::sync::OnceLock<()>,
}

pub(crate) static WRITE_LOGS: LazyLock<Arc<WriteLogs>> = LazyLock::new(Arc::default);

impl WriteLogs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Log>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The image was just mounted on `dev`: start recording its writes.
    /// What happened to it unmounted is unknown: every cache rescans it
    /// (and none is trusted again if recording could not start).
    pub(crate) fn mounted(self: &Arc<Self>, image: &Path, dev: Device) {
        let session = match Session::start(dev) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::info!(image = %image.display(), error = %e, "not tracking writes (tracefs); scans read the whole image");
                None
            }
        };
        {
            let mut logs = self.lock();
            let log = logs.entry(image.to_path_buf()).or_default();
            log.lose_all();
            log.session = session;
        }
        tracefs::drain_every(self, &self.drainer, "write-log-drain", DRAIN_EVERY, |me| {
            for (image, log) in me.lock().iter_mut() {
                log.drain(image);
            }
        });
    }

    /// The daemon stops: every session ends (its instance removed), as a
    /// restarted daemon trusts none of them anyway.
    pub(crate) fn stop_all(&self) {
        self.lock().clear();
    }

    /// The image was unmounted (its loop device gone, every write in the
    /// file): keep what was recorded for the scans to come, stop recording.
    pub(crate) fn unmounted(&self, image: &Path) {
        let mut logs = self.lock();
        if let Some(log) = logs.get_mut(image) {
            log.drain(image);
            log.session = None;
        }
    }

    /// The volume is gone: forget its log.
    pub(crate) fn forget(&self, image: &Path) {
        self.lock().remove(image);
    }

    /// The tracker a scan of `image` into `cache_dir` asks.
    pub(crate) fn changes(
        self: &Arc<Self>,
        image: &Path,
        cache_dir: &Path,
    ) -> Arc<dyn ImageChanges> {
        Arc::new(Tracked {
            logs: Arc::clone(self),
            image: image.to_path_buf(),
            cache: cache_dir.to_path_buf(),
        })
    }
}

struct Tracked {
    logs: Arc<WriteLogs>,
    image: PathBuf,
    cache: PathBuf,
}

impl ImageChanges for Tracked {
    fn pending(&self) -> PendingChanges {
        let mut logs = self.logs.lock();
        let log = logs.entry(self.image.clone()).or_default();
        log.drain(&self.image);
        let from = log.clean_from();
        let mark = log.next_mark;
        log.next_mark += 1;
        let first = !log.consumers.contains_key(&self.cache);
        let c = log.consumers.entry(self.cache.clone()).or_default();
        if first {
            // Writes before this cache was known were never recorded for
            // it: this scan reads it whole and, if recording, is its base.
            c.lose(from);
        }
        c.pending(mark)
    }

    fn scanned(&self, mark: u64) {
        if let Some(c) = self
            .logs
            .lock()
            .get_mut(&self.image)
            .and_then(|l| l.consumers.get_mut(&self.cache))
        {
            c.scanned(mark);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const LOOP1: Device = Device { major: 7, minor: 1 };

    #[test]
    fn parses_writes_and_ignores_the_rest() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            (
                "ksoftirqd/1-22 [001] ..s.. 14903.971101: block_rq_complete: 7,1 WS () 17410 + 24 be,0,4 [0]",
                Some((17410 * 512, (17410 + 24) * 512)),
            ),
            (
                "kworker/u8:1-9 [000] ..... 1.0: block_rq_complete: 7,1 FWS () 8 + 8 be,0,4 [0]",
                Some((4096, 8192)),
            ),
            // A discard changes the content (zeroes or holes).
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 7,1 D () 8770 + 7616 be,0,4 [0]",
                Some((8770 * 512, (8770 + 7616) * 512)),
            ),
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 7,1 RM () 8742 + 2 be,0,4 [0]",
                None,
            ),
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 7,1 RAM () 522 + 2 be,0,4 [0]",
                None,
            ),
            // A flush: no sectors.
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 7,1 FF () 18446744073709551615 + 0 none,0,0 [0]",
                None,
            ),
            (
                "x-1 [001] d.s1. 1.0: block_rq_complete: 7,1 WSM () 32788 + 0 be,0,3 [0]",
                None,
            ),
            // Another device.
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 7,2 WS () 8 + 8 be,0,4 [0]",
                None,
            ),
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 8,1 WS () 8 + 8 be,0,4 [0]",
                None,
            ),
            ("# tracer: nop", None),
            ("", None),
            (
                "x-1 [001] ..s.. 1.0: block_rq_complete: 7,1 WS () notanumber + 8",
                None,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_event(line, LOOP1), *want, "{line}");
        }
    }

    #[test]
    fn a_cache_is_trusted_only_after_a_scan_it_started_was_saved() {
        let mut c = Consumer::default();
        c.lose(0);
        c.add((0, 512));
        let p = c.pending(0);
        assert_eq!(p.ranges, None, "nothing recorded before: read it whole");
        c.add((4096, 8192)); // during the full scan
        c.scanned(0);
        let p = c.pending(1);
        assert_eq!(p.ranges, Some(vec![(4096, 8192)]));
        // The scan with mark 1 fails: its ranges stay for the next.
        c.add((9000, 9100));
        let p = c.pending(2);
        assert_eq!(p.ranges, Some(vec![(4096, 8192), (9000, 9100)]));
        c.scanned(2);
        assert_eq!(c.pending(3).ranges, Some(vec![]));
        // Events lost: untrusted until a scan taken after the loss is saved.
        c.lose(4);
        c.scanned(3);
        assert_eq!(c.pending(5).ranges, None);
        c.scanned(5);
        assert_eq!(c.pending(6).ranges, Some(vec![]));
    }

    #[test]
    fn many_ranges_are_coarsened_to_cells_that_cover_them() {
        let v: Vec<(u64, u64)> = (0..(MAX_RANGES as u64 + 10))
            .map(|i| (i * 8192, i * 8192 + 512))
            .collect();
        let mut c = Consumer::default();
        for &r in &v {
            c.add(r);
        }
        assert!(c.open.len() <= MAX_RANGES);
        for (s, e) in v {
            assert!(c.open.iter().any(|&(cs, ce)| cs <= s && e <= ce));
        }
    }

    /// The real kernel: an ext4 image on a loop device, written through its
    /// filesystem; every byte of the image that changed is in the ranges
    /// the tracker hands out (root, as CI is).
    #[test]
    fn every_byte_the_filesystem_wrote_is_in_the_ranges() {
        use std::process::Command;
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("image.ext4");
        let mnt = d.path().join("data");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        // No lazy init: nothing writes the image in the background.
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("mkfs.ext4")
            .args(["-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&img));
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
            }
        }
        let guard = Unmount(mnt.clone());
        let dev = super::super::super::mountpoint::mounted_at(&mnt).expect("mounted");
        let logs: Arc<WriteLogs> = Arc::default();
        logs.mounted(&img, dev);
        let t = logs.changes(&img, &d.path().join("cache"));
        let p0 = t.pending();
        assert_eq!(p0.ranges, None, "a new cache is read whole first");
        t.scanned(p0.mark);
        let sync = |p: &Path| {
            let f = std::fs::File::open(p).unwrap();
            rustix::fs::syncfs(&f).unwrap();
        };
        sync(&mnt);
        let a = std::fs::read(&img).unwrap();
        let p1 = t.pending();
        assert_eq!(p1.ranges, Some(vec![]), "{p1:?}");
        t.scanned(p1.mark);
        // 1 MiB in a new file, and a page rewritten in an old one.
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2])
            .collect();
        std::fs::write(mnt.join("new"), &data).unwrap();
        sync(&mnt);
        std::thread::sleep(Duration::from_millis(300));
        let b = std::fs::read(&img).unwrap();
        let p2 = t.pending();
        let ranges = p2.ranges.expect("recording");
        let covered = |i: u64| ranges.iter().any(|&(s, e)| s <= i && i < e);
        let changed: Vec<u64> = (0..a.len())
            .filter(|&i| a[i] != b[i])
            .map(|i| i as u64)
            .collect();
        assert!(changed.len() > 1 << 19, "the file's data is in the image");
        let missed: Vec<u64> = changed
            .iter()
            .copied()
            .filter(|&i| !covered(i))
            .take(5)
            .collect();
        assert!(
            missed.is_empty(),
            "bytes changed outside the ranges: {missed:?} (ranges {ranges:?})"
        );
        let total: u64 = mover_total(&ranges);
        assert!(total < 8 << 20, "{total} bytes marked for 1 MiB written");
        drop(guard);
        logs.unmounted(&img);
        // The instance (2 MiB of kernel buffers) is gone with the session.
        let ours = format!("daffe-{}-{}-{}-", dev.major, dev.minor, std::process::id());
        let left: Vec<String> = std::fs::read_dir(tracefs::root().unwrap().join("instances"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&ours))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn block_instance_names_are_told_from_others() {
        for (name, want) in [
            ("daffe-7-3-4242-0", true),
            ("daffe-7-3", true),
            ("daffe-259-12-1-18", true),
            ("daffe-fs-2049-4242-1-", false),
            ("daffe-7", false),
            ("daffe-7-3-4242", false),
            ("daffe-7-x-4242-0", false),
            ("not-daffe-7-3", false),
            ("daffe-7-3-4242-0-0badf00d", true),
            ("daffe-7-3-4242-0-1", false),
            ("daffe-7-3-4242-0-0badf00x", false),
            ("daffe-7-3-4242-0-0badf00d-1", false),
            ("daffe-fs-7-3-4242-0badf00d", false),
        ] {
            assert_eq!(is_block_instance(name), want, "{name}");
        }
        let dev = Device { major: 7, minor: 3 };
        let (a, b) = (instance_name(dev), instance_name(dev));
        assert_ne!(a, b, "two sessions of one device share an instance");
        assert!(is_block_instance(&a), "{a}");
    }

    /// A killed daemon's block instances (this version's names and an
    /// earlier one's) are removed by the next sweep; a live session's, on
    /// the same loop number, stays on, as does an instance not ours.
    #[test]
    fn unheld_block_instances_are_swept_and_a_live_one_kept() {
        let root = tracefs::root().unwrap();
        let free = free_loop_minor(200);
        let inst = |n: &str| root.join("instances").join(n);
        let stale = [
            inst(&format!("daffe-7-{free}")),
            inst(&format!("daffe-7-{free}-1-1")),
            inst(&format!("daffe-7-{free}-1-2-0badf00d")),
        ];
        for d in &stale {
            std::fs::create_dir(d).unwrap();
        }
        let other = inst(&format!("not-daffe-7-{free}"));
        std::fs::create_dir(&other).unwrap();
        let dev = Device {
            major: 7,
            minor: free,
        };
        let code = (7u64 << 20) | u64::from(free);
        let mut live = tracefs::Session::start(
            &instance_name(dev),
            &[("block/block_rq_complete", format!("dev == {code}"))],
            64,
        )
        .unwrap();
        sweep_unheld(&root);
        let left: Vec<bool> = stale.iter().map(|d| d.exists()).collect();
        let other_left = other.exists();
        let _ = std::fs::remove_dir(&other);
        for d in &stale {
            let _ = std::fs::remove_dir(d);
        }
        assert_eq!(left, [false; 3], "{stale:?}");
        assert!(other_left, "an instance not ours was removed");
        live.drain(|_| {})
            .expect("the live session's instance and events are still there");
    }

    /// A loop minor from `from` on that no device is attached at. Tests
    /// running side by side start apart: each makes instances of `7:MINOR`.
    pub(in crate::backend::local) fn free_loop_minor(from: u32) -> u32 {
        (from..from + 2000)
            .find(|m| !Path::new(&format!("/sys/dev/block/7:{m}")).exists())
            .expect("a free loop minor")
    }

    fn mover_total(r: &[(u64, u64)]) -> u64 {
        r.iter().map(|(s, e)| e - s).sum()
    }
}
