//! What a receiver round is told (where to write, how much to verify, how
//! often to checkpoint) and what it reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fsmeta::Skip;
use crate::progress::ProgressSink;

/// Bytes written between checkpoints: a kill -9 re-fetches at most this
/// much; larger means fewer filesystem syncs (each one waits for writeback).
pub const CHECKPOINT_BYTES: u64 = 512 << 20;

/// Where the receiver writes: the counterpart of a [`crate::Source`] of the
/// same kind. Its state (journal, manifest, caches) lives in a folder beside
/// it unless [`crate::SyncOptions::state_dir`] names another.
///
/// A tree made identical to its source, then kept so: what the source no
/// longer has is deleted there too.
///
/// ```
/// use mover::{Destination, Source, SyncOptions, sync};
///
/// let d = tempfile::tempdir()?;
/// let (src, dst) = (d.path().join("src"), d.path().join("dst"));
/// std::fs::create_dir_all(&src)?;
/// std::fs::write(src.join("a"), b"one")?;
/// std::fs::write(src.join("b"), b"two")?;
/// let opts = SyncOptions::default().with_state_dir(Some(d.path().join("state")));
/// sync(&Source::Tree(src.clone()), &Destination::Tree(dst.clone()), &opts)?;
/// std::fs::remove_file(src.join("b"))?;
/// let stats = sync(&Source::Tree(src), &Destination::Tree(dst.clone()), &opts)?;
/// assert_eq!(stats.rounds.deleted, 1);
/// assert_eq!(std::fs::read(dst.join("a"))?, b"one");
/// assert!(!dst.join("b").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// A directory (created if missing).
    Tree(PathBuf),
    /// A regular file (created if missing) or a block device.
    Image(PathBuf),
}

impl Destination {
    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            Destination::Tree(p) | Destination::Image(p) => p,
        }
    }
}

/// How much to re-read after applying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verify {
    /// Nothing (chunks are still verified on arrival).
    None,
    /// What this round wrote.
    #[default]
    Touched,
    /// Every data entry.
    All,
}

/// Receiver settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct ReceiveOptions {
    /// What to re-read after applying.
    pub verify: Verify,
    /// Progress events.
    pub progress: Arc<dyn ProgressSink>,
    /// Bytes written between durability checkpoints (default 512 MiB).
    pub checkpoint_bytes: u64,
    /// A pre-copy round: the app still writes, so a chunk that changed at
    /// the source since its scan marks its range dirty (sent again next
    /// round) instead of failing the round, and everything else the round
    /// moved is kept and applied. Off for a final round, which must be
    /// exact (such a chunk fails it with `ReceiveError::Stale`).
    pub precopy: bool,
    /// Largest the destination may become: a tree's data bytes, an image's
    /// size (daffe: a block volume's profile size). A manifest over it is
    /// refused before anything is fetched (hardening finding 13: a peer
    /// could grow an image past its volume's size). None: no cap beyond
    /// the free space, which every round checks.
    pub max_size: Option<u64>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            verify: Verify::Touched,
            progress: Arc::new(crate::progress::NoProgress),
            checkpoint_bytes: CHECKPOINT_BYTES,
            precopy: false,
            max_size: None,
        }
    }
}

crate::builder::setters!(ReceiveOptions {
    with_verify => verify: Verify,
    with_progress => progress: Arc<dyn ProgressSink>,
    with_checkpoint_bytes => checkpoint_bytes: u64,
    with_precopy => precopy: bool,
    with_max_size => max_size: Option<u64>,
});

/// What a round did at the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RoundStats {
    /// Root of the manifest now applied.
    pub root: String,
    /// A committed round found at start and replayed.
    pub recovered: bool,
    /// Entries in the manifest.
    pub entries: u64,
    /// Files written anew (staged, then renamed into place).
    pub files_staged: u64,
    /// Files patched in place.
    pub files_patched: u64,
    /// Entries whose metadata alone changed.
    pub meta_only: u64,
    /// Entries deleted.
    pub deleted: u64,
    /// Chunks listed in the manifest.
    pub chunks_total: u64,
    /// Data bytes the manifest lists: the source as the sender's scan saw
    /// it (what the round compared against the destination).
    #[serde(default)]
    pub manifest_bytes: u64,
    /// Chunks fetched from the source.
    pub chunks_new: u64,
    /// Chunk placements served locally (already in place, or copied from
    /// the destination's own data, or a duplicate fetched earlier).
    pub chunks_reused: u64,
    /// Payload bytes received from the source.
    pub bytes_fetched: u64,
    /// Bytes copied from data already at the destination.
    pub bytes_reused: u64,
    /// Of `bytes_fetched`, those a local sync's scan wrote into the
    /// destination's state dir as it read them (`crate::scan::ScanCopy`):
    /// not read from the source a second time.
    #[serde(default)]
    pub bytes_scan_copied: u64,
    /// Data bytes written (staged files, pack, in-place patches).
    pub bytes_written: u64,
    /// Bytes read back to verify.
    pub bytes_verified: u64,
    /// Chunks the source changed under this (pre-copy) round: their ranges
    /// keep older bytes and go again next round. Nonzero = a partial round.
    #[serde(default)]
    pub chunks_dirty: u64,
    /// Bytes in those chunks.
    #[serde(default)]
    pub bytes_dirty: u64,
    /// Entries with at least one dirty range.
    #[serde(default)]
    pub entries_dirty: u64,
    /// What was left out (sockets, refused xattrs).
    pub skipped: Vec<Skip>,
    /// Planning, in milliseconds.
    pub plan_ms: u64,
    /// Fetching and writing, in milliseconds.
    pub fetch_ms: u64,
    /// Applying, in milliseconds.
    pub apply_ms: u64,
    /// Verifying, in milliseconds.
    pub verify_ms: u64,
}

impl RoundStats {
    /// Adds round `r` to a running total: counters and times sum; the
    /// manifest (root, entry and chunk counts) is the latest round's.
    pub fn add(&mut self, r: RoundStats) {
        self.root = r.root;
        self.recovered |= r.recovered;
        self.entries = r.entries;
        self.chunks_total = r.chunks_total;
        self.files_staged += r.files_staged;
        self.files_patched += r.files_patched;
        self.meta_only += r.meta_only;
        self.deleted += r.deleted;
        self.chunks_new += r.chunks_new;
        self.chunks_reused += r.chunks_reused;
        self.bytes_fetched += r.bytes_fetched;
        self.bytes_reused += r.bytes_reused;
        self.bytes_scan_copied += r.bytes_scan_copied;
        self.bytes_written += r.bytes_written;
        self.bytes_verified += r.bytes_verified;
        self.chunks_dirty += r.chunks_dirty;
        self.bytes_dirty += r.bytes_dirty;
        self.entries_dirty += r.entries_dirty;
        self.skipped.extend(r.skipped);
        self.plan_ms += r.plan_ms;
        self.fetch_ms += r.fetch_ms;
        self.apply_ms += r.apply_ms;
        self.verify_ms += r.verify_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_the_counters_and_keeps_the_latest_manifest() {
        let round = |root: &str, fetched: u64, recovered: bool| RoundStats {
            root: root.into(),
            recovered,
            entries: fetched,
            chunks_total: fetched,
            bytes_fetched: fetched,
            bytes_dirty: 1,
            fetch_ms: 2,
            skipped: vec![Skip {
                path: root.into(),
                what: "socket".into(),
                reason: "test".into(),
            }],
            ..RoundStats::default()
        };
        let mut total = RoundStats::default();
        total.add(round("a", 10, true));
        total.add(round("b", 5, false));
        assert_eq!(total.root, "b");
        assert!(total.recovered, "a recovery in any round is reported");
        assert_eq!((total.entries, total.chunks_total), (5, 5));
        assert_eq!(total.bytes_fetched, 15);
        assert_eq!((total.bytes_dirty, total.fetch_ms), (2, 4));
        assert_eq!(total.skipped.len(), 2);
    }
}
