//! `push`: an image or block device becomes an EBS snapshot, full or
//! incremental against a parent pushed from this state dir.
//!
//! One pass over the source: blocks that overlap data (SEEK_DATA) and blocks
//! that held data in the parent are read and hashed on this thread; each block
//! whose content differs from the parent (or, for a full snapshot, each
//! non-zero block) goes to a worker pool that puts it under the shared rate cap
//! and the retry layer. After CompleteSnapshot succeeds the new snapshot's block
//! index is stored, and only then: a failed push leaves no index, and AWS
//! cancels the pending snapshot after its timeout.

use super::api::SnapshotApi;
use super::block::{
    BLOCK_BYTES, BLOCK_SIZE, BlockHash, BlockState, blocks_for, linear_checksum, state_of,
    volume_gib_for, zero_block_hash,
};
use super::diff::{PushAction, merge_ascending, push_action};
use super::image::{ImageError, ImageReader};
use super::index::{BlockIndex, IndexError, IndexStore};
use super::rules::{self, RuleError, StartRequest};
use super::transfer::{TransferOptions, client_token, run_pool};
use crate::aws::ApiError;
use crate::progress::BlockProgress;
use crate::retry::{Exhausted, Retrier};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Minutes of inactivity after which AWS cancels a pending snapshot we left
/// (a crash mid-push). AWS's default is 60; we keep it: long enough to read
/// through a large unchanged region between two puts.
pub const SNAPSHOT_TIMEOUT_MINUTES: u32 = 60;

/// What to push.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PushOptions {
    /// Parent snapshot, for an incremental push; its index must be in the store.
    pub parent: Option<String>,
    /// Encrypt the snapshot (only without a parent: a child inherits its parent's encryption).
    pub encrypted: bool,
    /// The KMS key to encrypt with (AWS's default key when `None`).
    pub kms_key_arn: Option<String>,
    /// The snapshot's description.
    pub description: Option<String>,
    /// The snapshot's tags.
    pub tags: Vec<(String, String)>,
    /// How to talk to the endpoint.
    pub transfer: TransferOptions,
}

crate::builder::setters!(PushOptions {
    with_parent => parent: Option<String>,
    with_encrypted => encrypted: bool,
    with_kms_key_arn => kms_key_arn: Option<String>,
    with_description => description: Option<String>,
    with_tags => tags: Vec<(String, String)>,
    with_transfer => transfer: TransferOptions,
});

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PushReport {
    /// The snapshot made.
    pub snapshot_id: String,
    /// Its parent, for an incremental push.
    pub parent: Option<String>,
    /// Its volume size.
    pub volume_gib: u64,
    /// The source's size.
    pub source_bytes: u64,
    /// Blocks read and hashed from the source (holes are not read).
    pub blocks_read: u64,
    /// Blocks sent with PutSnapshotBlock, zero blocks included.
    pub blocks_uploaded: u64,
    /// Of those, all-zero blocks sent so a child hides its parent's data.
    pub zero_blocks_uploaded: u64,
    /// Blocks of the volume not sent (unchanged, or zero in a full snapshot).
    pub blocks_skipped: u64,
    /// Block bytes sent.
    pub bytes_uploaded: u64,
    /// Retries made by the retry layer (throttling, 5xx, not-yet-visible).
    pub retries: u64,
    /// AWS API calls made, every attempt (first tries and retries).
    pub calls: u64,
    /// Duration of the push.
    pub duration_secs: f64,
    /// Where the snapshot's block index was saved.
    pub index_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
/// Errors of [`push`](fn@crate::snapshot::push).
pub enum PushError {
    /// The source could not be opened or read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The block index store failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The request would break AWS's rules.
    #[error("refused before any request: {0}")]
    Rule(#[from] RuleError),
    /// The parent snapshot's index is not in the store.
    #[error(
        "no block index for parent snapshot {parent} in {dir}: an incremental push needs the \
         parent's index (push the parent from this state dir, or push a full snapshot)"
    )]
    NoParentIndex {
        /// The parent.
        parent: String,
        /// The store's folder.
        dir: PathBuf,
    },
    /// StartSnapshot failed.
    #[error("StartSnapshot failed after {attempts} attempt(s): {source}")]
    Start {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: ApiError,
    },
    /// PutSnapshotBlock failed.
    #[error(
        "snapshot {snapshot_id}: PutSnapshotBlock of block {block} failed after {attempts} attempt(s): {source}"
    )]
    Put {
        /// The snapshot.
        snapshot_id: String,
        /// The block.
        block: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: ApiError,
    },
    /// CompleteSnapshot failed.
    #[error(
        "snapshot {snapshot_id}: CompleteSnapshot failed after {attempts} attempt(s): {source}"
    )]
    Complete {
        /// The snapshot.
        snapshot_id: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: ApiError,
    },
    /// The completed snapshot ended in a state other than completed.
    #[error("snapshot {snapshot_id}: CompleteSnapshot reported status {status}")]
    Status {
        /// The snapshot.
        snapshot_id: String,
        /// Its status.
        status: String,
    },
}

impl PushError {
    /// The snapshot concerned, if one was started.
    pub fn snapshot_id(&self) -> Option<&str> {
        match self {
            Self::Put { snapshot_id, .. }
            | Self::Complete { snapshot_id, .. }
            | Self::Status { snapshot_id, .. } => Some(snapshot_id),
            Self::NoParentIndex { parent, .. } => Some(parent),
            _ => None,
        }
    }

    /// The AWS error code, for errors that came from AWS.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Self::Start { source, .. }
            | Self::Put { source, .. }
            | Self::Complete { source, .. } => Some(&source.code),
            _ => None,
        }
    }
}

struct Job {
    index: u64,
    data: Vec<u8>,
    hash: BlockHash,
    zero: bool,
}

/// Pushes `source` as a new snapshot and stores its block index in `store`.
pub fn push(
    api: &dyn SnapshotApi,
    store: &IndexStore,
    source: &Path,
    opts: &PushOptions,
    progress: &dyn BlockProgress,
) -> Result<PushReport, PushError> {
    let t0 = Instant::now();
    let reader = ImageReader::open(source)?;
    let source_bytes = reader.size();
    let parent = match &opts.parent {
        None => None,
        Some(p) => Some(store.load(p)?.ok_or_else(|| PushError::NoParentIndex {
            parent: p.clone(),
            dir: store.dir().to_owned(),
        })?),
    };
    // A child never shrinks below its parent's volume; blocks past the new end
    // of the source are zero and sent as such if the parent had data there.
    let volume_gib = volume_gib_for(source_bytes).max(parent.as_ref().map_or(0, |p| p.volume_gib));
    let req = StartRequest {
        volume_gib,
        parent: opts.parent.clone(),
        encrypted: opts.encrypted,
        kms_key_arn: opts.kms_key_arn.clone(),
        description: opts.description.clone(),
        client_token: Some(client_token(&source.to_string_lossy())),
        timeout_minutes: Some(SNAPSHOT_TIMEOUT_MINUTES),
        tags: opts.tags.clone(),
    };
    rules::check_start(&req)?;

    let clock = opts.transfer.clock.as_ref();
    let retrier = Retrier::new(opts.transfer.retry, clock);
    let started = retrier
        .run(&|| "StartSnapshot".to_string(), None, || {
            api.start_snapshot(&req)
        })
        .map_err(|Exhausted { error, attempts }| PushError::Start {
            attempts,
            source: error,
        })?;
    let started_at = clock.now();
    let snapshot_id = started.snapshot_id;
    if let Some(bs) = started.reported_block_size
        && u64::try_from(bs) != Ok(BLOCK_BYTES)
    {
        tracing::warn!(
            "{snapshot_id}: the endpoint reports BlockSize {bs}; ignoring it, EBS blocks are {BLOCK_SIZE} bytes"
        );
    }

    let mut index = BlockIndex::new(
        &snapshot_id,
        opts.parent.as_deref(),
        volume_gib,
        source_bytes,
    );
    let volume_blocks = index.volume_blocks();
    let source_blocks = blocks_for(source_bytes);
    let ranges = reader.data_block_ranges()?;
    let candidates = || {
        let data = ranges.iter().flat_map(|r| r.clone());
        let inherited = parent.iter().flat_map(|p| p.data_blocks().map(|(i, _)| i));
        merge_ascending(data, inherited).take_while(move |&i| i < volume_blocks)
    };
    progress.begin("push", candidates().count() as u64);

    let limiter = opts.transfer.limiter();
    let written: Mutex<Vec<(u64, BlockHash)>> = Mutex::new(Vec::new());
    let (uploaded, zeros, read) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let zero_hash = zero_block_hash();

    let produce = |send: &dyn Fn(Job) -> bool| -> Result<(), PushError> {
        let mut in_range = ranges.iter().peekable();
        for i in candidates() {
            while in_range.peek().is_some_and(|r| r.end <= i) {
                in_range.next();
            }
            let has_data = i < source_blocks && in_range.peek().is_some_and(|r| r.contains(&i));
            let mut buf = Vec::new();
            let now = if has_data {
                buf = vec![0u8; BLOCK_SIZE];
                reader.read_block(i, &mut buf)?;
                read.fetch_add(1, Ordering::Relaxed);
                state_of(&buf)
            } else {
                BlockState::Zero
            };
            if let BlockState::Data(h) = now {
                index.push_data(i, h)?;
            }
            let job = match push_action(parent.as_ref().map(|p| p.state(i)), now) {
                PushAction::Skip => {
                    progress.advance(1);
                    continue;
                }
                PushAction::Put(hash) => Job {
                    index: i,
                    data: buf,
                    hash,
                    zero: false,
                },
                PushAction::PutZero => Job {
                    index: i,
                    data: vec![0u8; BLOCK_SIZE],
                    hash: zero_hash,
                    zero: true,
                },
            };
            if !send(job) {
                break;
            }
        }
        Ok(())
    };
    let work = |job: Job| -> Result<(), PushError> {
        let what = || format!("{snapshot_id}: PutSnapshotBlock {}", job.index);
        retrier
            .run(&what, Some(started_at), || {
                limiter.take(1);
                api.put_block(&snapshot_id, job.index, &job.data, &job.hash)
            })
            .map_err(|Exhausted { error, attempts }| PushError::Put {
                snapshot_id: snapshot_id.clone(),
                block: job.index,
                attempts,
                source: error,
            })?;
        uploaded.fetch_add(1, Ordering::Relaxed);
        if job.zero {
            zeros.fetch_add(1, Ordering::Relaxed);
        }
        written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((job.index, job.hash));
        progress.advance(1);
        Ok(())
    };
    let pooled = run_pool(opts.transfer.concurrency, produce, work);
    progress.end();
    pooled?;

    let mut written = written.into_inner().unwrap_or_else(|p| p.into_inner());
    written.sort_unstable_by_key(|&(i, _)| i);
    let aggregate = linear_checksum(written.iter().map(|(_, h)| h));
    let changed = written.len() as u64;
    let status = retrier
        .run(
            &|| format!("{snapshot_id}: CompleteSnapshot"),
            Some(started_at),
            || api.complete_snapshot(&snapshot_id, changed, &aggregate),
        )
        .map_err(|Exhausted { error, attempts }| PushError::Complete {
            snapshot_id: snapshot_id.clone(),
            attempts,
            source: error,
        })?;
    if !matches!(status.as_str(), "completed" | "pending") {
        return Err(PushError::Status {
            snapshot_id,
            status,
        });
    }
    let index_path = store.save(&index)?;

    let blocks_uploaded = uploaded.into_inner();
    Ok(PushReport {
        snapshot_id,
        parent: opts.parent.clone(),
        volume_gib,
        source_bytes,
        blocks_read: read.into_inner(),
        blocks_uploaded,
        zero_blocks_uploaded: zeros.into_inner(),
        blocks_skipped: volume_blocks - blocks_uploaded,
        bytes_uploaded: blocks_uploaded * BLOCK_BYTES,
        retries: retrier.retries(),
        calls: retrier.calls(),
        duration_secs: t0.elapsed().as_secs_f64(),
        index_path,
    })
}
