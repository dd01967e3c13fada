//! The EBS direct APIs we use, as a trait: the seam between the push/pull logic
//! and AWS. Implemented by `aws::AwsSnapshotApi` (feature `aws`) and by the
//! in-memory double `memory::MemoryEbs`, which enforces AWS's rules.
//!
//! Calls are blocking and the trait is `Sync`: push and pull call it from a pool
//! of worker threads. Errors are [`ApiError`]s, whose kind the one retry layer
//! (`crate::retry`) acts on; nothing below this trait retries.

use super::block::BlockHash;
use super::rules::StartRequest;
use crate::aws::ApiError;

/// What StartSnapshot returned that we use. The returned BlockSize is
/// deliberately not here: blocks are 524288 bytes, whatever a server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The new snapshot.
    pub snapshot_id: String,
    /// `BlockSize` as the server reported it, kept only to warn about it.
    pub reported_block_size: Option<i64>,
}

/// One block listed by ListSnapshotBlocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlock {
    /// The block index in the snapshot.
    pub index: u64,
    /// The token `GetSnapshotBlock` needs for it.
    pub token: String,
}

/// One page of ListSnapshotBlocks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockPage {
    /// The blocks of this page.
    pub blocks: Vec<ListedBlock>,
    /// The snapshot's volume size, when the reply says.
    pub volume_gib: Option<u64>,
    /// The token of the next page; `None`: the last page.
    pub next_token: Option<String>,
}

/// A block as GetSnapshotBlock returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlock {
    /// The block's bytes.
    pub data: Vec<u8>,
    /// Its checksum as AWS sent it (base64).
    pub checksum: Option<String>,
    /// The checksum algorithm AWS named (`SHA256`).
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
