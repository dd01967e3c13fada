//! daffe's data mover: make a destination identical to a source while sending
//! only what the destination lacks, round after round.
//!
//! Map of the crate (see `DESIGN.md` for the contract between the modules):
//! - [`sync`]: the entry point: [`sync()`], [`Source`], [`Destination`],
//!   [`SyncOptions`], [`SyncStats`].
//! - [`chunk`]: chunk ids, chunker classes, chunk loops.
//! - [`manifest`]: the streamed manifest format, reader and writer;
//!   [`manifest_delta`]: a manifest sent as a delta against an earlier one.
//! - [`scan`] / [`source`]: the source side ([`Sender`]) and the
//!   [`ChunkSource`] trait transports implement.
//! - [`receive`]: the destination side ([`Receiver`]): one atomic round.
//! - [`store`], [`journal`], [`statcache`], [`fsmeta`], [`safe_path`]: the
//!   pieces the receiver and the scanner stand on.
//! - [`progress`]: progress events.
//! - [`snapshot`]: the EBS snapshot target (push/pull of images, per-snapshot block index).
//! - [`net`]: moving volumes between hosts (peer protocol, mutual TLS,
//!   bandwidth limit, the agent and the dialer).

pub mod chunk;
pub mod chunk_index;
pub mod fsmeta;
pub mod journal;
pub mod manifest;
pub mod manifest_delta;
pub mod net;
pub mod progress;
mod read_full;
pub mod receive;
pub mod safe_path;
pub mod scan;
pub mod snapshot;
pub mod source;
pub mod statcache;
pub mod sync;

pub use chunk::{ChunkClass, ChunkId};
pub use manifest::{ManifestId, ManifestReader, ManifestWriter};
pub use progress::{Phase, Progress, ProgressSink};
pub use receive::{
    Action, Change, Checked, Destination, Preview, ReceiveOptions, Receiver, RoundStats, Tally,
    Verify,
};
pub use source::{ChunkSource, ManifestBase, Sender, Source, Want};
pub use sync::{SyncError, SyncOptions, SyncStats, preview, sync};
