//! daffe's data mover: make a destination identical to a source while sending
//! only what the destination lacks, round after round.
//!
//! Map of the crate (see `DESIGN.md` for the contract between the modules):
//! - [`sync`]: the entry points: [`sync()`] and its dry run [`preview()`],
//!   [`Source`], [`Destination`], [`SyncOptions`], [`SyncStats`].
//! - [`chunk`]: chunk ids, chunker classes, chunk loops.
//! - [`manifest`]: the streamed manifest format, reader and writer
//!   (`manifest_delta`: a manifest sent as a delta against an earlier one).
//! - [`scan`] / [`source`]: the source side ([`Sender`]) and the
//!   [`ChunkSource`] trait transports implement.
//! - [`receive`]: the destination side ([`Receiver`]): one atomic round,
//!   planned by a pure plan and carried out by its executor.
//! - [`journal`], [`statcache`], [`fsmeta`], [`safe_path`] (and the
//!   destination's chunk index): the pieces the receiver and the scanner
//!   stand on.
//! - [`preflight`]: what `sync` checks before touching anything (source there,
//!   no overlap, no foreign destination overwritten unless asked).
//! - [`progress`]: progress events and sinks.
//! - [`clock`], [`rate`], [`retry`]: the one clock, rate limiter and retry
//!   layer every waiting part uses.
//! - [`aws`]: what every AWS client shares (call errors; with feature `aws`,
//!   SDK config and error conversion).
//! - [`snapshot`]: the EBS snapshot target (push/pull of images,
//!   per-snapshot block index).
//! - [`net`] (feature `net`): moving volumes between hosts (peer protocol,
//!   mutual TLS, bandwidth limit, the agent and the dialer).
//!
//! Features: `net` (the network side: rustls, rcgen, zstd), `aws` (the AWS
//! SDK implementation of the EBS target), `testing` (test doubles: an
//! in-memory EBS endpoint, a virtual clock, the `fuzzing` harnesses).

pub mod aws;
pub mod chunk;
pub(crate) mod chunk_index;
pub mod clock;
pub mod converge;
pub mod fsmeta;
// Fuzz harnesses and seed inputs for `fuzz/` and the corpus replay test.
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod journal;
pub mod manifest;
pub(crate) mod manifest_delta;
#[cfg(feature = "net")]
pub mod net;
pub mod preflight;
pub mod progress;
pub mod rate;
mod read_full;
pub mod receive;
pub mod regular_file;
pub mod retry;
pub mod safe_path;
pub mod scan;
pub mod snapshot;
pub mod source;
pub mod statcache;
pub mod sync;

pub use chunk::{ChunkClass, ChunkId};
pub use manifest::{ManifestId, ManifestReader, ManifestWriter};
pub use progress::{Phase, Progress, ProgressSink};
pub use read_full::ReadCap;
pub use receive::{
    Action, Change, Checked, Destination, Preview, ReceiveOptions, Receiver, RoundStats, Tally,
    Verify,
};
pub use source::{ChunkSource, ManifestBase, Sender, Source, Want};
pub use sync::{SyncError, SyncOptions, SyncStats, preview, sync};
