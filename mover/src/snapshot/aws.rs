//! `SnapshotApi` over the AWS SDK's EBS client (feature `aws`; the SDK
//! configuration and error conversion it uses are `crate::aws`'s).
//!
//! The trait is blocking (push and pull run worker threads); this type owns a
//! small tokio runtime and blocks on it from those threads. Do not call it from
//! inside another tokio runtime's async context (use `spawn_blocking`).

use super::api::{BlockPage, FetchedBlock, ListedBlock, SnapshotApi, Started};
use super::block::{BLOCK_SIZE, BlockHash};
use super::rules::StartRequest;
use crate::aws::{ApiError, AwsConfigError, AwsOptions, from_sdk_error, load_sdk_config};
use crate::retry::ErrorKind;
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};

/// Threads driving the SDK's I/O. Requests are I/O-bound and the blocking
/// callers are separate threads, so two are plenty.
const RUNTIME_THREADS: usize = 2;
/// ListSnapshotBlocks page size: AWS's maximum, fewest calls under the ~50/s
/// List limit.
const LIST_PAGE: i32 = 10_000;

/// The EBS direct APIs through the AWS SDK.
#[derive(Debug)]
pub struct AwsSnapshotApi {
    client: aws_sdk_ebs::Client,
    rt: tokio::runtime::Runtime,
}

fn index_i32(op: &'static str, index: u64) -> Result<i32, ApiError> {
    i32::try_from(index).map_err(|_| {
        ApiError::new(
            op,
            ErrorKind::Permanent,
            "InvalidBlockIndex",
            format!("block {index} does not fit the API"),
        )
    })
}

fn missing(op: &'static str, what: &str) -> ApiError {
    ApiError::new(
        op,
        ErrorKind::Permanent,
        "InvalidResponse",
        format!("the reply has no {what}"),
    )
}

impl AwsSnapshotApi {
    /// Builds the client from the standard chain plus `opts`.
    pub fn connect(opts: &AwsOptions) -> Result<Self, AwsConfigError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("daffe-aws")
            .enable_all()
            .build()
            .map_err(AwsConfigError::Runtime)?;
        let config = rt.block_on(load_sdk_config(opts))?;
        Ok(Self {
            client: aws_sdk_ebs::Client::new(&config),
            rt,
        })
    }
}

impl SnapshotApi for AwsSnapshotApi {
    fn start_snapshot(&self, req: &StartRequest) -> Result<Started, ApiError> {
        const OP: &str = "StartSnapshot";
        let volume = i64::try_from(req.volume_gib).map_err(|_| {
            ApiError::new(
                OP,
                ErrorKind::Permanent,
                "InvalidVolumeSize",
                "volume size overflows",
            )
        })?;
        let mut call = self
            .client
            .start_snapshot()
            .volume_size(volume)
            .set_parent_snapshot_id(req.parent.clone())
            .set_description(req.description.clone())
            .set_client_token(req.client_token.clone())
            .set_kms_key_arn(req.kms_key_arn.clone())
            .set_timeout(req.timeout_minutes.and_then(|m| i32::try_from(m).ok()));
        // Encrypted is sent only when asked for: AWS refuses it next to a parent
        // even when false is meant.
        if req.encrypted {
            call = call.encrypted(true);
        }
        for (k, v) in &req.tags {
            call = call.tags(Tag::builder().key(k).value(v).build());
        }
        let out = self
            .rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(Started {
            snapshot_id: out
                .snapshot_id()
                .ok_or_else(|| missing(OP, "SnapshotId"))?
                .to_owned(),
            reported_block_size: out.block_size().map(i64::from),
        })
    }

    fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: &[u8],
        checksum: &BlockHash,
    ) -> Result<(), ApiError> {
        const OP: &str = "PutSnapshotBlock";
        let call = self
            .client
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index_i32(OP, index)?)
            .block_data(ByteStream::from(data.to_vec()))
            .data_length(index_i32(OP, data.len() as u64)?)
            .checksum(checksum.to_base64())
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256);
        self.rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(())
    }

    fn complete_snapshot(
        &self,
        snapshot_id: &str,
        changed_blocks: u64,
        aggregate: &BlockHash,
    ) -> Result<String, ApiError> {
        const OP: &str = "CompleteSnapshot";
        let call = self
            .client
            .complete_snapshot()
            .snapshot_id(snapshot_id)
            .changed_blocks_count(index_i32(OP, changed_blocks)?)
            .checksum(aggregate.to_base64())
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear);
        let out = self
            .rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        Ok(out
            .status()
            .map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned()))
    }

    fn list_blocks(
        &self,
        snapshot_id: &str,
        next_token: Option<&str>,
    ) -> Result<BlockPage, ApiError> {
        const OP: &str = "ListSnapshotBlocks";
        let call = self
            .client
            .list_snapshot_blocks()
            .snapshot_id(snapshot_id)
            .max_results(LIST_PAGE)
            .set_next_token(next_token.map(str::to_owned));
        let out = self
            .rt
            .block_on(call.send())
            .map_err(|e| from_sdk_error(OP, e))?;
        let mut blocks = Vec::with_capacity(out.blocks().len());
        for b in out.blocks() {
            let index = b.block_index().ok_or_else(|| missing(OP, "BlockIndex"))?;
            let token = b.block_token().ok_or_else(|| missing(OP, "BlockToken"))?;
            blocks.push(ListedBlock {
                index: u64::try_from(index).map_err(|_| missing(OP, "valid BlockIndex"))?,
                token: token.to_owned(),
            });
        }
        Ok(BlockPage {
            blocks,
            volume_gib: out.volume_size().and_then(|v| u64::try_from(v).ok()),
            next_token: out.next_token().map(str::to_owned),
        })
    }

    fn get_block(
        &self,
        snapshot_id: &str,
        index: u64,
        token: &str,
    ) -> Result<FetchedBlock, ApiError> {
        const OP: &str = "GetSnapshotBlock";
        let call = self
            .client
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index_i32(OP, index)?)
            .block_token(token);
        self.rt.block_on(async {
            let out = call.send().await.map_err(|e| from_sdk_error(OP, e))?;
            let checksum = out.checksum().map(str::to_owned);
            let checksum_algorithm = out.checksum_algorithm().map(|a| a.as_str().to_owned());
            let body = out.block_data.collect().await.map_err(|e| {
                ApiError::new(
                    OP,
                    ErrorKind::Transient,
                    "BodyReadError",
                    format!("reading block {index}: {e}"),
                )
            })?;
            let mut data = Vec::with_capacity(BLOCK_SIZE);
            data.extend_from_slice(&body.into_bytes());
            Ok(FetchedBlock {
                data,
                checksum,
                checksum_algorithm,
            })
        })
    }
}
