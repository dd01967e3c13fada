//! EBS snapshot target: push an image or block device to an EBS snapshot
//! (full, or incremental against a parent) and pull a snapshot back (full, or
//! incremental over a destination holding a base snapshot), with the EBS direct
//! APIs.
//!
//! Map:
//! - `block`: the 524288-byte block, its SHA-256/base64 checksum, zero detection.
//! - `rules`: AWS's rules, enforced before a request leaves.
//! - `index`: per-snapshot block index (SHA-256 per block) in a state dir.
//! - `diff`: which blocks a push sends and a pull writes.
//! - `image`: block reader (SEEK_DATA/SEEK_HOLE) and writer (holes kept/punched).
//! - `api`: the `SnapshotApi` trait (the seam to AWS).
//! - `transfer`: options and the worker pool shared by push and pull (under
//!   the crate's one rate limiter and one retry layer).
//! - `push`, `pull`: the operations.
//! - `memory` (tests, feature `testing`): an in-memory endpoint enforcing
//!   AWS's rules.
//! - `aws` (feature `aws`): the AWS SDK implementation (its SDK config and
//!   error conversion are `crate::aws`'s, shared with the EC2 calls).
//!
//! Why our own index: moto (the test endpoint) ignores ParentSnapshotId and
//! gets ListChangedBlocks wrong, and even AWS's ListChangedBlocks cannot tell
//! which blocks of a live image changed since the last push. Hashing every
//! block against the parent's index can.

// The API: `push`, `pull`, their options and reports, the block index
// store, and the `SnapshotApi` seam (with the AWS SDK client behind feature
// `aws`). The modules themselves are internal.
pub mod api;
#[cfg(feature = "aws")]
pub mod aws;
pub(crate) mod block;
pub(crate) mod diff;
pub(crate) mod image;
pub(crate) mod index;
// The in-memory endpoint other crates' tests use: no part of the API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod memory;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod rules;
pub(crate) mod transfer;

pub use api::SnapshotApi;
pub use block::{BLOCK_SIZE, BlockHash};
pub use index::{BlockIndex, DEFAULT_STATE_DIR, IndexError, IndexStore};
pub use pull::{PullError, PullOptions, PullReport, pull};
pub use push::{PushError, PushOptions, PushReport, push};
pub use rules::{RuleError, StartRequest};
pub use transfer::{DEFAULT_CONCURRENCY, DEFAULT_REQUESTS_PER_SEC, TransferOptions};

#[cfg(test)]
mod tests;
