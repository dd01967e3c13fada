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
    /// A file operation failed.
    #[error("destination {path}: {source}")]
    Io {
        /// What it was on.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A path from the manifest is not safe to write.
    #[error(transparent)]
    SafePath(#[from] SafePathError),
    /// Reading or setting file metadata failed.
    #[error(transparent)]
    Meta(#[from] FsMetaError),
    /// The manifest is damaged or invalid.
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// A stat cache could not be read or written.
    #[error(transparent)]
    StatCache(#[from] StatCacheError),
    /// The round journal failed, or is of a newer version.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The source failed.
    #[error("source: {0}")]
    Source(SourceError),
    /// The source's data no longer matches its manifest (it changed since
    /// the scan): what arrived so far is durable; rescan and rerun.
    #[error("source changed since its scan: {path:?} at offset {offset}; rescan and rerun")]
    Stale {
        /// The file.
        path: String,
        /// Where in it.
        offset: u64,
    },
    /// The manifest is of the other kind than the destination.
    #[error("manifest mode {got:?} does not fit destination {dest}")]
    ModeMismatch {
        /// The manifest's kind.
        got: manifest::Mode,
        /// The destination.
        dest: String,
    },
    /// Data read back differs from what was written.
    #[error("verification failed: {path:?}: {why}")]
    Verify {
        /// The file.
        path: String,
        /// How.
        why: String,
    },
    /// A block device smaller than the image.
    #[error("destination block device {path} holds {have} bytes, image needs {need}")]
    DeviceTooSmall {
        /// The device.
        path: String,
        /// Its size.
        have: u64,
        /// The image's size.
        need: u64,
    },
    /// The source's data is over the destination's cap
    /// ([`super::ReceiveOptions::max_size`]).
    #[error("the source's {what} is {size} bytes, over this destination's limit of {limit}")]
    OverSize {
        /// What is over the limit.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The round cannot fit: refused before anything is written.
    #[error(
        "destination {path} has {free} bytes free; the round needs at least {need} more \
         (its {what})"
    )]
    NoRoom {
        /// Where.
        path: String,
        /// What needs the room.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes free.
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
