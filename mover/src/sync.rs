//! The public entry point: [`sync`] a [`Source`] into a [`Destination`] and
//! get [`SyncStats`] back. In-process: the sender and the receiver run in one
//! process (the network layer pairs them across hosts instead).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::clock::millis;
use crate::preflight::{self, PreflightError};
use crate::progress::{NoProgress, Phase, Progress, ProgressSink};
use crate::receive::{
    self, Change, Preview, ReceiveError, ReceiveOptions, Receiver, RoundStats, Verify,
};
use crate::scan::{ScanError, ScanOptions, ScanStats};
use crate::source::Sender;

pub use crate::receive::Destination;
pub use crate::source::Source;

/// Settings for [`sync`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SyncOptions {
    /// Destination state dir (must be on the destination's filesystem).
    /// Default: `.NAME.daffe-state` beside the destination.
    pub state_dir: Option<PathBuf>,
    /// Source stat cache dir. Default: `source-cache` in the state dir.
    pub cache_dir: Option<PathBuf>,
    /// What to re-read after applying.
    pub verify: Verify,
    /// Chunking threads (default: available cores).
    pub threads: usize,
    /// Progress events.
    pub progress: Arc<dyn ProgressSink>,
    /// Rounds retried when the source changes under the scan.
    pub retries: u32,
    /// Bytes written between durability checkpoints.
    pub checkpoint_bytes: u64,
    /// Accept a destination daffe has not synced to before that is not empty:
    /// what the source lacks is deleted there (`daffe sync --delete`). Off by
    /// default: see [`crate::PreflightError::ForeignDestination`].
    pub allow_foreign: bool,
    /// Where the source was written since the cache's last scan (a tracker
    /// such as the daffe daemon's, keyed by [`source_cache_dir`]): a
    /// changed file is then read only where it was written, an image only
    /// where it was written. `None` (the default): every changed file or
    /// image is read whole. A dry run never uses it (it would tell the
    /// tracker that a scan it throws away was saved).
    pub changes: Option<Arc<dyn crate::scan::ImageChanges>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            state_dir: None,
            cache_dir: None,
            verify: Verify::Touched,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: Arc::new(NoProgress),
            retries: 3,
            checkpoint_bytes: receive::CHECKPOINT_BYTES,
            allow_foreign: false,
            changes: None,
        }
    }
}

crate::builder::setters!(SyncOptions {
    with_state_dir => state_dir: Option<PathBuf>,
    with_cache_dir => cache_dir: Option<PathBuf>,
    with_verify => verify: Verify,
    with_threads => threads: usize,
    with_progress => progress: Arc<dyn ProgressSink>,
    with_retries => retries: u32,
    with_checkpoint_bytes => checkpoint_bytes: u64,
    with_allow_foreign => allow_foreign: bool,
    with_changes => changes: Option<Arc<dyn crate::scan::ImageChanges>>,
});

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("state_dir", &self.state_dir)
            .field("cache_dir", &self.cache_dir)
            .field("verify", &self.verify)
            .field("threads", &self.threads)
            .field("retries", &self.retries)
            .field("allow_foreign", &self.allow_foreign)
            .field("changes", &self.changes.is_some())
            .finish()
    }
}

/// Errors of [`sync`].
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The source could not be scanned.
    #[error("scan: {0}")]
    Scan(#[from] ScanError),
    /// The destination could not receive the round.
    #[error("receive: {0}")]
    Receive(#[from] ReceiveError),
    /// A tree into an image or an image into a tree.
    #[error("source and destination kinds differ (tree vs image)")]
    KindMismatch,
    /// A check before the sync refused it; nothing was created.
    #[error("{0}")]
    Preflight(#[from] PreflightError),
    /// A dry run's scratch folder could not be made.
    #[error("dry run scratch folder: {0}")]
    Scratch(String),
}

/// What a sync did: the source's scan beside what its rounds did at the
/// destination (summed over the attempts; the manifest is the last one's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SyncStats {
    /// The destination's side, in the same terms as one network round.
    #[serde(flatten)]
    pub rounds: RoundStats,
    /// Files in the source.
    pub files: u64,
    /// Logical size of all files scanned.
    pub bytes_scanned: u64,
    /// Data read and hashed at the source (0 in an unchanged round).
    pub bytes_hashed: u64,
    /// Entries the source reused from its stat cache.
    pub entries_reused: u64,
    /// Rounds redone because the source changed during the sync.
    pub stale_retries: u32,
    /// The last scan, in milliseconds.
    pub scan_ms: u64,
    /// The whole sync, in milliseconds.
    pub duration_ms: u64,
}

impl SyncStats {
    fn absorb(&mut self, scan: &ScanStats, r: RoundStats) {
        self.files = scan.files;
        self.bytes_scanned = scan.bytes_scanned;
        self.bytes_hashed += scan.bytes_hashed;
        self.entries_reused = scan.entries_reused;
        self.rounds.add(r);
    }
}

/// The destination's state dir and the source's cache dir, once the kinds
/// of `src` and `dst` are known to match.
fn dirs(
    src: &Source,
    dst: &Destination,
    opts: &SyncOptions,
) -> Result<(PathBuf, PathBuf), SyncError> {
    if matches!(
        (src, dst),
        (Source::Tree(_), Destination::Image(_)) | (Source::Image(_), Destination::Tree(_))
    ) {
        return Err(SyncError::KindMismatch);
    }
    let state = state_dir(dst, opts);
    preflight::check(src, dst, &state, opts.allow_foreign)?;
    let cache = cache_dir_in(&state, opts);
    Ok((state, cache))
}

/// The state dir a [`sync`] into `dst` with `opts` uses.
fn state_dir(dst: &Destination, opts: &SyncOptions) -> PathBuf {
    opts.state_dir
        .clone()
        .unwrap_or_else(|| receive::default_state_dir(dst.path()))
}

/// [`SyncOptions::cache_dir`], else `source-cache` in `state`.
fn cache_dir_in(state: &std::path::Path, opts: &SyncOptions) -> PathBuf {
    opts.cache_dir
        .clone()
        .unwrap_or_else(|| state.join("source-cache"))
}

/// The source's stat cache dir a [`sync`] into `dst` with `opts` uses:
/// [`SyncOptions::cache_dir`], else `source-cache` in the state dir. A
/// write tracker's "since the last scan" is per cache, so its caller names
/// the cache with this.
pub fn source_cache_dir(dst: &Destination, opts: &SyncOptions) -> PathBuf {
    cache_dir_in(&state_dir(dst, opts), opts)
}

/// What [`sync`] would do, without doing it (a dry run): the source is
/// scanned first (a bad source fails before anything is read at the
/// destination), then `each` sees every path the round would create, change
/// or delete, and the totals are returned. Nothing is created or written at
/// the destination, in its state dir or in the source's stat cache: the scan
/// runs against a copy of that cache (so an unchanged file is not re-read)
/// in a scratch folder under the system temp dir, removed on return.
///
/// ```
/// use mover::{Action, Destination, Source, SyncOptions, preview};
///
/// let t = tempfile::tempdir()?;
/// let (src, dst) = (t.path().join("src"), t.path().join("dst"));
/// std::fs::create_dir(&src)?;
/// std::fs::write(src.join("new.txt"), b"1234")?;
///
/// let mut created = Vec::new();
/// let totals = preview(&Source::Tree(src), &Destination::Tree(dst.clone()), &SyncOptions::default(), &mut |c| {
///     if c.action == Action::Create {
///         created.push(c.display_path());
///     }
/// })?;
/// assert!(created.contains(&"new.txt".to_owned()), "{created:?}");
/// assert_eq!(totals.deleted.entries, 0);
/// assert!(!dst.exists(), "a dry run creates nothing");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn preview(
    src: &Source,
    dst: &Destination,
    opts: &SyncOptions,
    each: &mut dyn FnMut(&Change),
) -> Result<Preview, SyncError> {
    let (state, cache) = dirs(src, dst, opts)?;
    let scratch = tempfile::Builder::new()
        .prefix("daffe-preview-")
        .tempdir()
        .map_err(|e| SyncError::Scratch(e.to_string()))?;
    let scratch_cache = scratch.path().join("source-cache");
    copy_files(&cache, &scratch_cache).map_err(|e| {
        SyncError::Scratch(format!("copy of the stat cache {}: {e}", cache.display()))
    })?;
    let label = source_label(src);
    let mut sender = Sender::scan(
        src,
        &scratch_cache,
        ScanOptions {
            threads: opts.threads.max(1),
            label,
            progress: opts.progress.clone(),
            changes: None,
            copy_into: None,
        },
    )?;
    let rx = Receiver::open_existing(dst, &state)?;
    Ok(rx.preview(&mut sender, scratch.path(), each)?)
}

/// Copies the regular files directly in `from` (if it exists) into `to`,
/// which is created.
fn copy_files(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for ent in entries {
        let ent = ent?;
        if ent.file_type()?.is_file() {
            std::fs::copy(ent.path(), to.join(ent.file_name()))?;
        }
    }
    Ok(())
}

/// A folder of scratch files, removed with what it holds when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The manifest label of a source: its last path component.
fn source_label(src: &Source) -> String {
    src.path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes `dst` identical to `src`, sending only what `dst` lacks.
///
/// A second run copies only what changed; a destination daffe has not
/// synced to before must be empty unless [`SyncOptions::allow_foreign`].
///
/// ```
/// use mover::{Destination, Source, SyncOptions, sync};
///
/// let t = tempfile::tempdir()?;
/// let (src, dst) = (t.path().join("src"), t.path().join("dst"));
/// std::fs::create_dir(&src)?;
/// std::fs::write(src.join("hello.txt"), b"hello")?;
///
/// let stats = sync(&Source::Tree(src.clone()), &Destination::Tree(dst.clone()), &SyncOptions::default())?;
/// assert_eq!(std::fs::read(dst.join("hello.txt"))?, b"hello");
/// assert_eq!(stats.rounds.bytes_fetched, 5);
///
/// // Nothing changed: the next run moves no data.
/// let again = sync(&Source::Tree(src), &Destination::Tree(dst), &SyncOptions::default())?;
/// assert_eq!(again.rounds.bytes_fetched, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sync(src: &Source, dst: &Destination, opts: &SyncOptions) -> Result<SyncStats, SyncError> {
    let t0 = Instant::now();
    let (state, cache) = dirs(src, dst, opts)?;
    let mut rx = Receiver::open(dst, &state)?;
    let ropts = ReceiveOptions {
        verify: opts.verify,
        progress: opts.progress.clone(),
        checkpoint_bytes: opts.checkpoint_bytes.max(1),
        // A local sync is one exact round (retried when the source moves).
        precopy: false,
        max_size: None,
    };
    // Finish an interrupted, committed round before reading anything.
    let mut stats = SyncStats::default();
    stats.rounds.recovered = rx.recover(&ropts)?;
    let label = source_label(src);
    // Check the destination while the source scans: an unchanged round then
    // costs the longer of the two walks, not their sum, and a changed round
    // plans with this check instead of walking the destination again.
    let scrub = opts.verify == Verify::All;
    let mut check = Some({
        let (dst, state) = (dst.clone(), state.clone());
        std::thread::spawn(move || Receiver::open(&dst, &state)?.check(scrub))
    });
    // Into an empty destination the scan copies the large files it reads
    // into the state dir, and the round stages those copies instead of
    // reading the files again (`crate::scan::ScanCopy`). Not into a device,
    // which is patched in place.
    let copies = (rx.applied_root().is_none() && !rx.is_device())
        .then(|| ScratchDir(receive::scan_copy_dir(&state)));
    let mut attempt = 0;
    loop {
        if let Some(c) = &copies {
            // An earlier attempt's copies that were not taken.
            c.clear();
        }
        opts.progress.event(&Progress::Phase {
            phase: Phase::Scan,
            total_bytes: 0,
        });
        let ts = Instant::now();
        let mut sender = Sender::scan(
            src,
            &cache,
            ScanOptions {
                threads: opts.threads.max(1),
                label: label.clone(),
                progress: opts.progress.clone(),
                changes: opts.changes.clone(),
                copy_into: copies.as_ref().map(|c| c.0.clone()),
            },
        )?;
        stats.scan_ms += millis(ts.elapsed());
        // The receiver is in this process: hashing on the reading thread
        // takes the hash off the thread that writes.
        sender.hash_while_reading(true);
        for s in sender.skipped() {
            stats.rounds.skipped.push(s.clone());
        }
        let scan_stats = sender.stats().clone();
        // A panicked check only means no head start: the round checks itself.
        let checked = match check.take().map(|h| h.join()) {
            Some(Ok(r)) => r?,
            _ => None,
        };
        match rx.run_round_checked(&mut sender, &ropts, checked) {
            Ok(r) => {
                stats.absorb(&scan_stats, r);
                break;
            }
            Err(ReceiveError::Stale { path, offset }) if attempt < opts.retries => {
                tracing::info!("source changed during the round ({path} at {offset}); rescanning");
                stats.bytes_hashed += scan_stats.bytes_hashed;
                attempt += 1;
                stats.stale_retries = attempt;
            }
            Err(e) => return Err(e.into()),
        }
    }
    stats.duration_ms = millis(t0.elapsed());
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::Action;
    use std::path::Path;

    fn write(p: &Path, bytes: usize, seed: u8) {
        let data: Vec<u8> = (0..bytes)
            .map(|i| u8::try_from(i % 256).unwrap().wrapping_mul(seed))
            .collect();
        std::fs::write(p, data).unwrap();
    }

    #[test]
    fn preview_reports_what_a_round_would_do_and_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        write(&src.join("a"), 1000, 3);
        write(&src.join("d/b"), 5000, 5);
        let (s, d) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
        let opts = SyncOptions {
            threads: 1,
            ..SyncOptions::default()
        };

        // Into an empty destination: everything would be created.
        let mut seen = Vec::new();
        let p = preview(&s, &d, &opts, &mut |c| {
            seen.push((c.action, c.display_path()))
        })
        .unwrap();
        assert_eq!(p.created.entries, 3, "{seen:?}");
        assert_eq!(p.created.bytes, 6000);
        assert!(p.changed.entries == 1 && p.deleted.entries == 0, "{p:?}");
        // Neither the destination nor its state dir was created.
        assert!(!dst.exists());
        assert!(!t.path().join(".dst.daffe-state").exists());

        sync(&s, &d, &opts).unwrap();
        let unchanged = preview(&s, &d, &opts, &mut |_| {}).unwrap();
        assert!(unchanged.is_empty(), "{unchanged:?}");

        // Change one file, add one, remove one.
        write(&src.join("d/b"), 7000, 7);
        write(&src.join("c"), 300, 11);
        std::fs::remove_file(src.join("a")).unwrap();
        let mut seen = Vec::new();
        let p = preview(&s, &d, &opts, &mut |c| {
            seen.push((c.action, c.display_path()))
        })
        .unwrap();
        assert!(seen.contains(&(Action::Delete, "a".into())), "{seen:?}");
        assert!(seen.contains(&(Action::Create, "c".into())), "{seen:?}");
        // Grown and rewritten: patched in place (as a table growing under
        // updates is, whose unchanged pages then stay where they are).
        assert!(seen.contains(&(Action::Patch, "d/b".into())), "{seen:?}");
        assert_eq!((p.created.entries, p.created.bytes), (1, 300));
        assert_eq!((p.deleted.entries, p.deleted.bytes), (1, 1000));
        assert_eq!(std::fs::read(dst.join("a")).unwrap().len(), 1000);
        assert!(!t.path().join(".dst.daffe-state/preview.manifest").exists());
        assert_eq!(std::fs::read(dst.join("d/b")).unwrap().len(), 5000);

        // The round then does what the preview said.
        let st = sync(&s, &d, &opts).unwrap();
        assert_eq!(st.rounds.deleted, 1);
        assert_eq!((st.rounds.files_staged, st.rounds.files_patched), (1, 1));
        assert_eq!(std::fs::read(dst.join("d/b")).unwrap().len(), 7000);
    }

    #[test]
    fn a_first_sync_stages_the_scans_copies_of_the_files_that_held_still() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        let big: Vec<u8> = crate::chunk::tests::golden_input(3 << 20, 7);
        std::fs::write(src.join("big.bin"), &big).unwrap();
        // The same bytes again: every chunk a duplicate of big.bin's.
        std::fs::write(src.join("dup.bin"), &big).unwrap();
        // Sparse: data, a hole, data, a hole at the end.
        let sparse = std::fs::File::create(src.join("sparse.bin")).unwrap();
        sparse.write_all_at(&big[..1 << 20], 0).unwrap();
        sparse
            .write_all_at(&big[1 << 20..(3 << 19)], 3 << 19)
            .unwrap();
        sparse.set_len(4 << 20).unwrap();
        drop(sparse);
        write(&src.join("small.txt"), 1000, 3);
        // Out of the racy window: their timestamps prove them unchanged.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        // Written just now: its timestamps prove nothing, so no copy.
        let fresh = crate::chunk::tests::golden_input(2 << 20, 11);
        std::fs::write(src.join("fresh.bin"), &fresh).unwrap();
        let (s, d) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
        let st = sync(&s, &d, &SyncOptions::default()).unwrap();
        let copied = 2 * (3 << 20) + (1 << 20) + (1 << 19);
        assert_eq!(st.rounds.bytes_scan_copied, copied, "{st:?}");
        assert_eq!(st.rounds.bytes_fetched, copied + 1000 + (2 << 20), "{st:?}");
        for f in ["big.bin", "dup.bin", "sparse.bin", "small.txt", "fresh.bin"] {
            assert!(
                std::fs::read(dst.join(f)).unwrap() == std::fs::read(src.join(f)).unwrap(),
                "{f}"
            );
        }
        let state = t.path().join(".dst.daffe-state");
        assert!(!receive::scan_copy_dir(&state).exists(), "no copy left");
        // The destination is now ours: the next round copies nothing.
        std::fs::write(src.join("fresh.bin"), &fresh[1..]).unwrap();
        let again = sync(&s, &d, &SyncOptions::default()).unwrap();
        assert_eq!(again.rounds.bytes_scan_copied, 0, "{again:?}");
        assert!(!receive::scan_copy_dir(&state).exists());
        assert_eq!(
            std::fs::read(dst.join("fresh.bin")).unwrap(),
            std::fs::read(src.join("fresh.bin")).unwrap()
        );
    }

    /// Writes into a file when the scan reports its first bytes hashed.
    struct WriteWhileScanned {
        file: PathBuf,
        done: std::sync::atomic::AtomicBool,
    }

    impl ProgressSink for WriteWhileScanned {
        fn event(&self, ev: &Progress) {
            use std::os::unix::fs::FileExt;
            if let Progress::Scanned { bytes_hashed, .. } = ev
                && *bytes_hashed > 0
                && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.file)
                    .unwrap();
                f.write_all_at(b"moved", 20 << 20).unwrap();
            }
        }
    }

    #[test]
    fn a_file_written_while_the_scan_reads_it_keeps_no_copy() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        // Two scan segments: the write comes after the first is hashed,
        // before the file's second stat.
        let file = src.join("db.bin");
        std::fs::write(&file, crate::chunk::tests::golden_input(24 << 20, 3)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let sink = Arc::new(WriteWhileScanned {
            file: file.clone(),
            done: Default::default(),
        });
        let opts = SyncOptions::default().with_progress(sink.clone());
        let (s, d) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
        let st = sync(&s, &d, &opts).unwrap();
        assert!(sink.done.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(st.rounds.bytes_scan_copied, 0, "{st:?}");
        assert!(std::fs::read(dst.join("db.bin")).unwrap() == std::fs::read(&file).unwrap());
    }

    /// Swaps a file for another of the same size, mode and mtime (a new
    /// inode) once the round says it verifies: after apply.
    struct SwapAtVerify {
        file: PathBuf,
        done: std::sync::atomic::AtomicBool,
    }

    impl ProgressSink for SwapAtVerify {
        fn event(&self, ev: &Progress) {
            if matches!(
                ev,
                Progress::Phase {
                    phase: Phase::Verify,
                    ..
                }
            ) && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let mut bytes = std::fs::read(&self.file).unwrap();
                bytes[1000] ^= 1;
                let m = std::fs::metadata(&self.file).unwrap();
                let tmp = self.file.with_extension("swap");
                std::fs::write(&tmp, &bytes).unwrap();
                std::fs::set_permissions(&tmp, m.permissions()).unwrap();
                let f = std::fs::File::options().write(true).open(&tmp).unwrap();
                f.set_modified(m.modified().unwrap()).unwrap();
                drop(f);
                std::fs::rename(&tmp, &self.file).unwrap();
            }
        }
    }

    #[test]
    fn a_placed_file_that_is_not_the_staged_one_re_read_fails_the_verify() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("f.bin"),
            crate::chunk::tests::golden_input(1 << 20, 5),
        )
        .unwrap();
        let sink = Arc::new(SwapAtVerify {
            file: dst.join("f.bin"),
            done: Default::default(),
        });
        let (s, d) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
        let err = sync(&s, &d, &SyncOptions::default().with_progress(sink.clone())).unwrap_err();
        assert!(
            matches!(&err, SyncError::Receive(ReceiveError::Verify { path, .. }) if path == "f.bin"),
            "{err}"
        );
        // The next round repairs it.
        sync(&s, &d, &SyncOptions::default()).unwrap();
        assert!(
            std::fs::read(dst.join("f.bin")).unwrap() == std::fs::read(src.join("f.bin")).unwrap()
        );
    }

    /// A tracker that reports what the test tells it, and counts the saves.
    struct Tracker {
        files: std::sync::Mutex<Option<crate::FileChanges>>,
        saved: std::sync::atomic::AtomicU64,
    }

    impl crate::ImageChanges for Tracker {
        fn pending(&self) -> crate::PendingChanges {
            crate::PendingChanges {
                mark: 7,
                ranges: None,
                files: self.files.lock().unwrap().clone(),
            }
        }
        fn scanned(&self, mark: u64) {
            assert_eq!(mark, 7);
            self.saved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_tracker_makes_the_round_read_only_what_was_written() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        let file = src.join("data.bin");
        write(&file, 4 << 20, 13);
        let tracker = Arc::new(Tracker {
            files: std::sync::Mutex::new(None),
            saved: Default::default(),
        });
        let (s, d) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
        let opts = SyncOptions::default().with_changes(Some(tracker.clone()));
        // The tracker cannot vouch yet: the file is read whole.
        assert_eq!(sync(&s, &d, &opts).unwrap().bytes_hashed, 4 << 20);
        assert_eq!(tracker.saved.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Rewrite two pages in place, out of the racy window.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0xa5; 4096], 1 << 20).unwrap();
        f.write_all_at(&[0x5a; 4096], 3 << 20).unwrap();
        drop(f);
        let m = std::fs::metadata(&file).unwrap();
        let told = |ranges: Vec<(u64, u64)>| crate::FileChanges {
            dev: m.dev(),
            written: [(m.ino(), Some(ranges))].into(),
        };
        *tracker.files.lock().unwrap() = Some(told(vec![
            (1 << 20, (1 << 20) + 4096),
            (3 << 20, (3 << 20) + 4096),
        ]));
        let st = sync(&s, &d, &opts).unwrap();
        // The two chunks the pages fall in (1 MiB each in this class), not
        // the four of the file; the destination writes only the pages.
        assert_eq!(st.bytes_hashed, 2 << 20, "{st:?}");
        assert_eq!(st.rounds.bytes_written, 8192, "{st:?}");
        assert_eq!(
            std::fs::read(dst.join("data.bin")).unwrap(),
            std::fs::read(&file).unwrap()
        );
        assert_eq!(tracker.saved.load(std::sync::atomic::Ordering::SeqCst), 2);

        // Pages scattered over the file: it switches to page-sized chunks
        // (read whole once, in the new class), then is patched in them.
        let scatter = |seed: u8| {
            std::thread::sleep(std::time::Duration::from_millis(2100));
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            let pages: Vec<u64> = (0..16).map(|i| i * (256 << 10) + 8192).collect();
            for &p in &pages {
                f.write_all_at(&[seed; 4096], p).unwrap();
            }
            *tracker.files.lock().unwrap() =
                Some(told(pages.iter().map(|&p| (p, p + 4096)).collect()));
        };
        scatter(1);
        let st = sync(&s, &d, &opts).unwrap();
        assert_eq!(st.bytes_hashed, 4 << 20, "the switch round: {st:?}");
        scatter(2);
        let st = sync(&s, &d, &opts).unwrap();
        assert!(
            st.bytes_hashed <= 16 * (64 << 10),
            "patched in pages: {st:?}"
        );
        assert_eq!(
            std::fs::read(dst.join("data.bin")).unwrap(),
            std::fs::read(&file).unwrap()
        );

        // Without the tracker the same change costs the whole file: the
        // figures above are the tracker's doing.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0x33; 4096], 2 << 20).unwrap();
        drop(f);
        let plain = SyncOptions::default();
        assert_eq!(sync(&s, &d, &plain).unwrap().bytes_hashed, 4 << 20);
        assert_eq!(
            std::fs::read(dst.join("data.bin")).unwrap(),
            std::fs::read(&file).unwrap()
        );
    }
}
