//! The receiver's one error type, and the helpers that give an I/O error
//! the destination path it concerns.

use crate::fsmeta::FsMetaError;
use crate::journal::JournalError;
use crate::manifest::{self, ManifestError};
use crate::safe_path::SafePathError;
use crate::source::SourceError;
use crate::statcache::StatCacheError;

/// Errors of a receiver round.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("destination {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    SafePath(#[from] SafePathError),
    #[error(transparent)]
    Meta(#[from] FsMetaError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    StatCache(#[from] StatCacheError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("source: {0}")]
    Source(SourceError),
    /// The source's data no longer matches its manifest (it changed since
    /// the scan): what arrived so far is durable; rescan and rerun.
    #[error("source changed since its scan: {path:?} at offset {offset}; rescan and rerun")]
    Stale { path: String, offset: u64 },
    #[error("manifest mode {got:?} does not fit destination {dest}")]
    ModeMismatch { got: manifest::Mode, dest: String },
    #[error("verification failed: {path:?}: {why}")]
    Verify { path: String, why: String },
    #[error("destination block device {path} holds {have} bytes, image needs {need}")]
    DeviceTooSmall { path: String, have: u64, need: u64 },
    /// The source's data is over the destination's cap
    /// ([`super::ReceiveOptions::max_size`]).
    #[error("the source's {what} is {size} bytes, over this destination's limit of {limit}")]
    OverSize {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// The round cannot fit: refused before anything is written.
    #[error(
        "destination {path} has {free} bytes free; the round needs at least {need} more \
         (its {what})"
    )]
    NoRoom {
        path: String,
        what: &'static str,
        need: u64,
        free: u64,
    },
}

/// Wraps an I/O error with the (destination-relative) path it concerns.
pub(super) fn io_err(path: impl AsRef<[u8]>) -> impl FnOnce(std::io::Error) -> ReceiveError {
    let path = lossy(path.as_ref());
    move |source| ReceiveError::Io { path, source }
}

/// [`io_err`] for a raw errno.
pub(super) fn errno(path: &[u8]) -> impl FnOnce(rustix::io::Errno) -> ReceiveError + '_ {
    move |e| io_err(path)(e.into())
}

/// A path for messages (paths are bytes, not necessarily UTF-8).
pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
