//! daffe's data mover: make a destination identical to a source while sending
//! only what the destination lacks, round after round.
//!
//! The API (see `README.md`, "Stability", for what may change):
//! - [`sync()`] a [`Source`] into a [`Destination`] with [`SyncOptions`],
//!   getting [`SyncStats`] back, or [`preview()`] what it would do; errors are
//!   [`SyncError`].
//! - [`progress`]: progress events ([`Progress`]) and sinks ([`ProgressSink`]).
//! - The two ends of a round, for a transport of your own: [`Sender`] (the
//!   source side, which implements [`ChunkSource`]) and [`Receiver`] (the
//!   destination side, [`ReceiveOptions`], [`RoundStats`]).
//! - `net` (feature `net`): moving volumes between hosts over mutual TLS:
//!   the receiving agent (`net::Agent`) and the sender (`net::RoundPusher`).
//! - [`snapshot`]: push and pull of images as EBS snapshots (the AWS client
//!   with feature `aws`).
//! - [`aws`], [`retry`], [`clock`]: the AWS call errors and SDK config, the
//!   retry policy, and the clock the waiting parts use.
//!
//! Everything else is internal (`pub(crate)`, or `#[doc(hidden)]` where
//! daffe's plugin or this crate's integration tests reach in); `DESIGN.md`
//! maps it: the manifest format, the scanner, the receive round's plan and
//! executor, the journal and stat caches, the convergence model.
//!
//! Features: `net` (the network side: rustls, rcgen, zstd), `aws` (the AWS
//! SDK implementation of the EBS target), `testing` (test doubles: an
//! in-memory EBS endpoint, a virtual clock, the `fuzzing` harnesses).

#![warn(missing_docs)]

mod builder;

// The API: documented, linted by `missing_docs`, covered by the semver notes
// in README.md. Everything an embedder needs is re-exported below or lives
// in one of these modules.
pub mod aws;
pub mod clock;
#[cfg(feature = "net")]
pub mod net;
pub mod progress;
pub mod retry;
pub mod snapshot;

// Internals. `pub(crate)` unless daffe's plugin or this crate's own
// integration tests (which see only `pub`) reach into them; those are
// `#[doc(hidden)]`: no part of the API, free to change in any release.
#[doc(hidden)]
pub mod chunk;
pub(crate) mod chunk_index;
#[doc(hidden)]
pub mod converge;
#[doc(hidden)]
pub mod fsmeta;
pub(crate) mod manifest_delta;
pub(crate) mod preflight;
mod read_full;
pub(crate) mod receive;
pub(crate) mod safe_path;
pub(crate) mod source;
pub(crate) mod sync;
// Fuzz harnesses and seed inputs for `fuzz/` and the corpus replay test.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod journal;
#[doc(hidden)]
pub mod manifest;
#[doc(hidden)]
pub mod rate;
#[doc(hidden)]
pub mod regular_file;
#[doc(hidden)]
pub mod scan;
#[doc(hidden)]
pub mod statcache;

pub use chunk::{ChunkClass, ChunkId};
pub use manifest::ManifestId;
pub use preflight::PreflightError;
pub use progress::{Phase, Progress, ProgressSink};
pub use read_full::ReadCap;
pub use receive::{
    Action, Change, Checked, Destination, Preview, ReceiveError, ReceiveOptions, Receiver,
    RoundStats, Tally, Verify,
};
pub use scan::{ScanError, ScanStats};
pub use source::{ChunkSource, ManifestBase, Sender, Sink, SinkError, Source, SourceError, Want};
pub use sync::{SyncError, SyncOptions, SyncStats, preview, sync};
