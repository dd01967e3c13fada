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
//! Everything else is internal (`pub(crate)`); `DESIGN.md` maps it: the
//! manifest format, the scanner, the receive round's plan and executor, the
//! journal and stat caches, the convergence model. This crate's own
//! integration tests and examples see some of it through `internals`
//! (feature `testing` only, no part of the API).
//!
//! Features: `net` (the network side: rustls, rcgen, zstd), `aws` (the AWS
//! SDK implementation of the EBS target), `testing` (test doubles: an
//! in-memory EBS endpoint, a virtual clock, the `fuzzing` harnesses, and
//! `internals`).

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

// Internals: `pub(crate)`. daffe's plugin reaches them only through the
// re-exports below and the API modules; this crate's integration tests and
// examples through `internals` (feature `testing`), which is why their docs
// are linted only without that feature (with it, every `pub` item of theirs
// is reachable, the way an unstable test hook is).
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod chunk;
pub(crate) mod chunk_index;
// Pre-copy's model: only the network rounds use it.
#[cfg(feature = "net")]
pub(crate) mod converge;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod fsmeta;
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
// Crash points for the crash torture (`DAFFE_FAILPOINT`).
#[cfg(feature = "testing")]
mod failpoint;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod journal;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod manifest;
pub(crate) mod rate;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod regular_file;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod scan;
#[cfg_attr(feature = "testing", allow(missing_docs))]
pub(crate) mod statcache;
pub(crate) mod thread_times;

/// Internals this crate's own integration tests (`tests/`) and examples
/// reach into: the manifest and stat-cache formats, the scanner, the
/// chunker, the journal, the wire messages. **Unstable**: feature `testing`
/// only, no part of the API, changed without notice in any release; an
/// embedder uses the crate root and the API modules instead.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod internals {
    /// Content-defined chunking (`crate::chunk`).
    pub mod chunk {
        pub use crate::chunk::*;
    }
    /// File metadata reads (`crate::fsmeta`).
    pub mod fsmeta {
        pub use crate::fsmeta::*;
    }
    /// The resume journal (`crate::journal`).
    pub mod journal {
        pub use crate::journal::*;
    }
    /// The manifest format (`crate::manifest`).
    pub mod manifest {
        pub use crate::manifest::*;
    }
    /// Opening regular files safely (`crate::regular_file`).
    pub mod regular_file {
        pub use crate::regular_file::*;
    }
    /// The scanner (`crate::scan`).
    pub mod scan {
        pub use crate::scan::*;
    }
    /// The stat cache format (`crate::statcache`).
    pub mod statcache {
        pub use crate::statcache::*;
    }
    /// The wire protocol's messages, the serving side of a round, and the
    /// wire counters (`crate::net::{message, serve, bwlimit}`).
    #[cfg(feature = "net")]
    pub mod net {
        pub use crate::net::bwlimit::*;
        pub use crate::net::message::*;
        pub use crate::net::serve::*;
    }
}

pub use chunk::{ChunkClass, ChunkId};
pub use manifest::ManifestId;
pub use preflight::PreflightError;
pub use progress::{Phase, Progress, ProgressSink};
pub use rate::RateLimiter;
pub use read_full::ReadCap;
pub use receive::{
    Action, Change, Checked, Destination, Preview, ReceiveError, ReceiveOptions, Receiver,
    RoundStats, Tally, Verify,
};
pub use scan::{FileChanges, ImageChanges, PendingChanges, ScanError, ScanOptions, ScanStats};
pub use source::{
    Arrived, ChunkSource, ManifestBase, Sender, Sink, SinkError, Source, SourceError, Want,
};
pub use sync::{SyncError, SyncOptions, SyncStats, preview, source_cache_dir, sync};
pub use thread_times::{CpuTimes, ThreadTimes};
