//! `pull`: a snapshot becomes an image file or is written onto a block device,
//! every block verified; incrementally over a destination that holds a base
//! snapshot, writing only the blocks that differ and punching the blocks that
//! became zero, so holes stay holes.
//!
//! What to write comes from our block indexes (the target's and the base's),
//! not from ListChangedBlocks. Block tokens come from ListSnapshotBlocks of the
//! target; a block our index says the target holds but the listing lacks is
//! looked up in the target's ancestors (AWS lists inherited blocks; moto does
//! not). Every block is checked three ways: 524288 bytes, the SHA-256 checksum
//! that came with it, and the hash in our index. A snapshot we have no index
//! for (made elsewhere) is pulled in full from its listing, verified by its
//! checksums, and its index stored for later incremental pulls.

use super::api::SnapshotApi;
use super::block::{BLOCK_BYTES, BlockHash, GIB, is_zero};
use super::diff::{PullAction, pull_plan};
use super::image::{ImageError, ImageWriter};
use super::index::{BlockIndex, IndexError, IndexStore};
use super::rules::{self, RuleError};
use super::transfer::{TransferOptions, run_pool};
use crate::aws::ApiError;
use crate::progress::BlockProgress;
use crate::rate::RateLimiter;
use crate::retry::{Exhausted, Retrier};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What to pull.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PullOptions {
    /// Snapshot the destination holds now; only the differences are written.
    pub base: Option<String>,
    /// How to talk to the endpoint.
    pub transfer: TransferOptions,
}

crate::builder::setters!(PullOptions {
    with_base => base: Option<String>,
    with_transfer => transfer: TransferOptions,
});

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PullReport {
    /// The snapshot pulled.
    pub snapshot_id: String,
    /// The snapshot the destination held before, if the pull was incremental.
    pub base: Option<String>,
    /// Bytes the destination holds now.
    pub bytes: u64,
    /// Blocks fetched with GetSnapshotBlock (each verified).
    pub blocks_fetched: u64,
    /// Blocks written to the destination.
    pub blocks_written: u64,
    /// Blocks made into holes (zero in the target, data in the base).
    pub blocks_zeroed: u64,
    /// Bytes written to the destination.
    pub bytes_written: u64,
    /// Retries made by the retry layer.
    pub retries: u64,
    /// AWS API calls made, every attempt (first tries and retries).
    pub calls: u64,
    /// Duration of the pull.
    pub duration_secs: f64,
    /// False when the snapshot was not pushed from this state dir and its
    /// index was rebuilt from the listing.
    pub index_known: bool,
}

#[derive(Debug, thiserror::Error)]
/// Errors of [`pull`](fn@crate::snapshot::pull).
pub enum PullError {
    /// The destination could not be opened, written or sized.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The block index store failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The base snapshot's index is not in the store.
    #[error(
        "no block index for snapshot {snapshot_id} in {dir}: an incremental pull needs the indexes \
         of the snapshot and of the base (push or pull them with this state dir first)"
    )]
    NoIndex {
        /// The base snapshot.
        snapshot_id: String,
        /// The store's folder.
        dir: PathBuf,
    },
    /// The destination does not hold the base snapshot (its size differs).
    #[error(
        "{path} is {size} bytes but base snapshot {base} is {base_bytes}: the destination does \
         not hold the base; pull without --base"
    )]
    BaseMismatch {
        /// The destination.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The base snapshot.
        base: String,
        /// The base's size.
        base_bytes: u64,
    },
    /// Listing the snapshot's blocks failed.
    #[error(
        "snapshot {snapshot_id}: ListSnapshotBlocks failed after {attempts} attempt(s): {source}"
    )]
    List {
        /// The snapshot.
        snapshot_id: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: ApiError,
    },
    /// Fetching a block failed.
    #[error(
        "snapshot {snapshot_id}: GetSnapshotBlock of block {block} failed after {attempts} attempt(s): {source}"
    )]
    Get {
        /// The snapshot.
        snapshot_id: String,
        /// The block.
        block: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: ApiError,
    },
    /// A block the listing named did not come.
    #[error(
        "snapshot {snapshot_id}: block {block} holds data by our index but no snapshot in its lineage lists it"
    )]
    MissingBlock {
        /// The snapshot.
        snapshot_id: String,
        /// The block.
        block: u64,
    },
    /// A fetched block broke AWS's rules.
    #[error("snapshot {snapshot_id}: {source}")]
    Verify {
        /// The snapshot.
        snapshot_id: String,
        /// The rule.
        source: RuleError,
    },
    /// A block came without a checksum.
    #[error("snapshot {snapshot_id}: block {block} has no checksum in the reply")]
    NoChecksum {
        /// The snapshot.
        snapshot_id: String,
        /// The block.
        block: u64,
    },
    /// A block does not match its checksum.
    #[error("snapshot {snapshot_id}: block {block} hashes to {got:?}, our index says {want:?}")]
    Mismatch {
        /// The snapshot.
        snapshot_id: String,
        /// The block.
        block: u64,
        /// The checksum AWS sent.
        want: BlockHash,
        /// The checksum of the bytes received.
        got: BlockHash,
    },
}

impl PullError {
    /// The snapshot the error is about, if any.
    pub fn snapshot_id(&self) -> Option<&str> {
        match self {
            Self::NoIndex { snapshot_id, .. }
            | Self::List { snapshot_id, .. }
            | Self::Get { snapshot_id, .. }
            | Self::MissingBlock { snapshot_id, .. }
            | Self::Verify { snapshot_id, .. }
            | Self::NoChecksum { snapshot_id, .. }
            | Self::Mismatch { snapshot_id, .. } => Some(snapshot_id),
            Self::BaseMismatch { base, .. } => Some(base),
            _ => None,
        }
    }

    /// The AWS error code, for an AWS error.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Self::List { source, .. } | Self::Get { source, .. } => Some(&source.code),
            _ => None,
        }
    }
}

/// One block to handle.
struct Job {
    index: u64,
    /// Fetch from (snapshot, token) and expect this hash (if known); `None`: zero it.
    fetch: Option<(String, String, Option<BlockHash>)>,
}

/// Lists every block of a snapshot: index -> token, and the volume size.
fn list_all(
    api: &dyn SnapshotApi,
    retrier: &Retrier<'_>,
    limiter: &RateLimiter,
    snapshot_id: &str,
) -> Result<(BTreeMap<u64, String>, Option<u64>), PullError> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    let mut volume = None;
    loop {
        let page = retrier
            .run(
                &|| format!("{snapshot_id}: ListSnapshotBlocks"),
                None,
                || {
                    limiter.take(1);
                    api.list_blocks(snapshot_id, token.as_deref())
                },
            )
            .map_err(|Exhausted { error, attempts }| PullError::List {
                snapshot_id: snapshot_id.to_owned(),
                attempts,
                source: error,
            })?;
        volume = volume.or(page.volume_gib);
        out.extend(page.blocks.into_iter().map(|b| (b.index, b.token)));
        match page.next_token {
            Some(t) if Some(&t) != token.as_ref() => token = Some(t),
            _ => return Ok((out, volume)),
        }
    }
}

/// ListSnapshotBlocks is limited to about 50 requests/s per account; stay under.
const LIST_REQUESTS_PER_SEC: u64 = 40;

/// Pulls `snapshot_id` into `dest` (an image file, created if missing, or a
/// block device).
pub fn pull(
    api: &dyn SnapshotApi,
    store: &IndexStore,
    snapshot_id: &str,
    dest: &Path,
    opts: &PullOptions,
    progress: &dyn BlockProgress,
) -> Result<PullReport, PullError> {
    let t0 = Instant::now();
    store.path_of(snapshot_id)?;
    let no_index = |id: &str| PullError::NoIndex {
        snapshot_id: id.to_owned(),
        dir: store.dir().to_owned(),
    };
    let target = store.load(snapshot_id)?;
    let base = match &opts.base {
        None => None,
        Some(b) => Some(store.load(b)?.ok_or_else(|| no_index(b))?),
    };
    if base.is_some() && target.is_none() {
        return Err(no_index(snapshot_id));
    }
    let clock = opts.transfer.clock.as_ref();
    let retrier = Retrier::new(opts.transfer.retry, clock);
    let list_limiter =
        RateLimiter::with_clock(LIST_REQUESTS_PER_SEC, 1, opts.transfer.clock.clone());
    let (listed, listed_volume) = list_all(api, &retrier, &list_limiter, snapshot_id)?;

    // The work: (block, what to do) ascending, with where to fetch from.
    let mut jobs: Vec<Job> = Vec::new();
    let bytes = match &target {
        Some(t) => {
            let mut lineage: Vec<(String, BTreeMap<u64, String>)> =
                vec![(snapshot_id.to_owned(), listed)];
            for (i, action) in pull_plan(base.as_ref(), t) {
                let fetch = match action {
                    PullAction::Zero => None,
                    PullAction::Write(h) => {
                        let (snap, token) =
                            find_token(api, store, &retrier, &list_limiter, &mut lineage, t, i)?;
                        Some((snap, token, Some(h)))
                    }
                };
                jobs.push(Job { index: i, fetch });
            }
            t.source_bytes
        }
        None => {
            for (i, token) in listed {
                jobs.push(Job {
                    index: i,
                    fetch: Some((snapshot_id.to_owned(), token, None)),
                });
            }
            listed_volume.unwrap_or(1) * GIB
        }
    };

    let writer = match &base {
        None => ImageWriter::fresh(dest, bytes)?,
        Some(b) => {
            if let Ok(meta) = std::fs::metadata(dest)
                && meta.is_file()
                && meta.len() != b.source_bytes
            {
                return Err(PullError::BaseMismatch {
                    path: dest.to_owned(),
                    size: meta.len(),
                    base: b.snapshot_id.clone(),
                    base_bytes: b.source_bytes,
                });
            }
            ImageWriter::existing(dest, bytes)?
        }
    };
    let block_len = |i: u64| bytes.saturating_sub(i * BLOCK_BYTES).min(BLOCK_BYTES);
    let volume_gib = target
        .as_ref()
        .map(|t| t.volume_gib)
        .or(listed_volume)
        .unwrap_or(1);

    progress.begin("pull", jobs.len() as u64);
    let limiter = opts.transfer.limiter();
    let (fetched, written, zeroed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let bytes_written = AtomicU64::new(0);
    let rebuilt: Mutex<Vec<(u64, BlockHash)>> = Mutex::new(Vec::new());
    let produce = |send: &dyn Fn(Job) -> bool| -> Result<(), PullError> {
        for job in jobs {
            if !send(job) {
                break;
            }
        }
        Ok(())
    };
    let work = |job: Job| -> Result<(), PullError> {
        let i = job.index;
        let Some((snap, token, want)) = job.fetch else {
            writer.zero_block(i, block_len(i))?;
            zeroed.fetch_add(1, Ordering::Relaxed);
            progress.advance(1);
            return Ok(());
        };
        let block = retrier
            .run(&|| format!("{snap}: GetSnapshotBlock {i}"), None, || {
                limiter.take(1);
                api.get_block(&snap, i, &token)
            })
            .map_err(|Exhausted { error, attempts }| PullError::Get {
                snapshot_id: snap.clone(),
                block: i,
                attempts,
                source: error,
            })?;
        fetched.fetch_add(1, Ordering::Relaxed);
        let verify_err = |source| PullError::Verify {
            snapshot_id: snap.clone(),
            source,
        };
        rules::check_block(i, block.data.len(), volume_gib).map_err(verify_err)?;
        let checksum = block
            .checksum
            .as_deref()
            .ok_or_else(|| PullError::NoChecksum {
                snapshot_id: snap.clone(),
                block: i,
            })?;
        let got = rules::verify_checksum(
            i,
            &block.data,
            checksum,
            block.checksum_algorithm.as_deref(),
        )
        .map_err(verify_err)?;
        if let Some(want) = want
            && want != got
        {
            return Err(PullError::Mismatch {
                snapshot_id: snap.clone(),
                block: i,
                want,
                got,
            });
        }
        // A fresh destination is all holes: zero data needs no write.
        if want.is_none() && is_zero(&block.data) {
            progress.advance(1);
            return Ok(());
        }
        writer.write_block(i, &block.data, block_len(i))?;
        written.fetch_add(1, Ordering::Relaxed);
        bytes_written.fetch_add(block_len(i), Ordering::Relaxed);
        if want.is_none() {
            rebuilt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((i, got));
        }
        progress.advance(1);
        Ok(())
    };
    let pooled = run_pool(opts.transfer.concurrency, produce, work);
    progress.end();
    pooled?;
    writer.finish()?;

    let index_known = target.is_some();
    if !index_known {
        let mut blocks = rebuilt.into_inner().unwrap_or_else(|p| p.into_inner());
        blocks.sort_unstable_by_key(|&(i, _)| i);
        let mut ix = BlockIndex::new(snapshot_id, None, volume_gib, bytes);
        for (i, h) in blocks {
            ix.push_data(i, h)?;
        }
        store.save(&ix)?;
    }
    let blocks_written = written.into_inner();
    Ok(PullReport {
        snapshot_id: snapshot_id.to_owned(),
        base: opts.base.clone(),
        bytes,
        blocks_fetched: fetched.into_inner(),
        blocks_written,
        blocks_zeroed: zeroed.into_inner(),
        bytes_written: bytes_written.into_inner(),
        retries: retrier.retries(),
        calls: retrier.calls(),
        duration_secs: t0.elapsed().as_secs_f64(),
        index_known,
    })
}

/// Where to fetch block `i` of `target`: its own listing first, then its
/// ancestors' (listed on demand, as far as our indexes know the lineage).
fn find_token(
    api: &dyn SnapshotApi,
    store: &IndexStore,
    retrier: &Retrier<'_>,
    limiter: &RateLimiter,
    lineage: &mut Vec<(String, BTreeMap<u64, String>)>,
    target: &BlockIndex,
    i: u64,
) -> Result<(String, String), PullError> {
    let mut depth = 0;
    loop {
        if let Some((snap, listed)) = lineage.get(depth) {
            if let Some(token) = listed.get(&i) {
                return Ok((snap.clone(), token.clone()));
            }
            depth += 1;
            continue;
        }
        // Extend the lineage by the parent of the last snapshot listed.
        let last = &lineage[depth - 1].0;
        let parent = if last == &target.snapshot_id {
            target.parent.clone()
        } else {
            store.load(last)?.and_then(|ix| ix.parent)
        };
        let Some(parent) = parent else {
            return Err(PullError::MissingBlock {
                snapshot_id: target.snapshot_id.clone(),
                block: i,
            });
        };
        tracing::debug!(
            "{}: block {i} not listed; looking in ancestor {parent}",
            target.snapshot_id
        );
        let (listed, _) = list_all(api, retrier, limiter, &parent)?;
        lineage.push((parent, listed));
    }
}
