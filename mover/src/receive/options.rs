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

/// Where the receiver writes.
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
pub struct ReceiveOptions {
    pub verify: Verify,
    pub progress: Arc<dyn ProgressSink>,
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

/// What a round did at the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStats {
    /// Root of the manifest now applied.
    pub root: String,
    /// A committed round found at start and replayed.
    pub recovered: bool,
    pub entries: u64,
    pub files_staged: u64,
    pub files_patched: u64,
    pub meta_only: u64,
    pub deleted: u64,
    /// Chunks listed in the manifest.
    pub chunks_total: u64,
    /// Chunks fetched from the source.
    pub chunks_new: u64,
    /// Chunk placements served locally (already in place, or copied from
    /// the destination's own data, or a duplicate fetched earlier).
    pub chunks_reused: u64,
    /// Payload bytes received from the source.
    pub bytes_fetched: u64,
    /// Bytes copied from data already at the destination.
    pub bytes_reused: u64,
    /// Data bytes written (staged files, pack, in-place patches).
    pub bytes_written: u64,
    pub bytes_verified: u64,
    /// Chunks the source changed under this (pre-copy) round: their ranges
    /// keep older bytes and go again next round. Nonzero = a partial round.
    #[serde(default)]
    pub chunks_dirty: u64,
    #[serde(default)]
    pub bytes_dirty: u64,
    /// Entries with at least one dirty range.
    #[serde(default)]
    pub entries_dirty: u64,
    pub skipped: Vec<Skip>,
    pub plan_ms: u64,
    pub fetch_ms: u64,
    pub apply_ms: u64,
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
