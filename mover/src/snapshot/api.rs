//! The EBS direct APIs we use, as a trait: the seam between the push/pull logic
//! and AWS. Implemented by `aws::AwsSnapshotApi` (feature `aws`) and by the
//! in-memory double `memory::MemoryEbs`, which enforces AWS's rules.
//!
//! Calls are blocking and the trait is `Sync`: push and pull call it from a pool
//! of worker threads. Errors carry a [`ErrorKind`] that the one retry layer
//! (`retry`) acts on; nothing below this trait retries.

use super::block::BlockHash;
use super::rules::StartRequest;
use std::fmt;

/// How a failed call may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// RequestThrottledException, ThrottlingException, HTTP 429: back off, retry.
    Throttled,
    /// 5xx, timeouts, dropped connections: retry.
    Transient,
    /// ResourceNotFoundException: retried only where the resource may be too
    /// new to be seen yet (a snapshot just started).
    NotFound,
    /// Anything else: retrying cannot help.
    Permanent,
}

/// A failed call, with the operation and the AWS error code (or HTTP status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {code}: {message}")]
pub struct ApiError {
    pub op: &'static str,
    pub kind: ErrorKind,
    /// AWS error code (`ValidationException`), or `HTTP 500` when the reply had none.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(
        op: &'static str,
        kind: ErrorKind,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            op,
            kind,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What StartSnapshot returned that we use. The returned BlockSize is
/// deliberately not here: blocks are 524288 bytes, whatever a server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub snapshot_id: String,
    /// `BlockSize` as the server reported it, kept only to warn about it.
    pub reported_block_size: Option<i64>,
}

/// One block listed by ListSnapshotBlocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlock {
    pub index: u64,
    pub token: String,
}

/// One page of ListSnapshotBlocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockPage {
    pub blocks: Vec<ListedBlock>,
    pub volume_gib: Option<u64>,
    pub next_token: Option<String>,
}

/// A block as GetSnapshotBlock returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlock {
    pub data: Vec<u8>,
    pub checksum: Option<String>,
    pub checksum_algorithm: Option<String>,
}

/// The EBS direct APIs used by push and pull.
pub trait SnapshotApi: Send + Sync {
    /// StartSnapshot. The caller has checked the request with `rules::check_start`.
    fn start_snapshot(&self, req: &StartRequest) -> Result<Started, ApiError>;

    /// PutSnapshotBlock of one full block with its SHA-256 (sent as base64 with
    /// ChecksumAlgorithm SHA256).
    fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: &[u8],
        checksum: &BlockHash,
    ) -> Result<(), ApiError>;

    /// CompleteSnapshot with the number of blocks written and their LINEAR
    /// aggregated checksum. Returns the status AWS reports.
    fn complete_snapshot(
        &self,
        snapshot_id: &str,
        changed_blocks: u64,
        aggregate: &BlockHash,
    ) -> Result<String, ApiError>;

    /// One page of ListSnapshotBlocks.
    fn list_blocks(
        &self,
        snapshot_id: &str,
        next_token: Option<&str>,
    ) -> Result<BlockPage, ApiError>;

    /// GetSnapshotBlock.
    fn get_block(
        &self,
        snapshot_id: &str,
        index: u64,
        token: &str,
    ) -> Result<FetchedBlock, ApiError>;
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::NotFound => "not found",
            Self::Permanent => "permanent",
        })
    }
}
