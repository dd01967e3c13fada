//! What a scan is told, what it reports, how it fails, and what it leaves:
//! the manifest on disk plus what the sender needs to answer chunk requests.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fsmeta::{FsMetaError, Skip};
use crate::manifest::{Header, ManifestError, PathTable, Trailer};
use crate::progress::ProgressSink;
use crate::statcache::StatCacheError;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading the source failed.
    #[error("scanning {path:?}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// A file's metadata could not be read.
    #[error(transparent)]
    Meta(#[from] FsMetaError),
    /// A manifest failed (the one written, or the last one reused).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The stat cache failed (read or written).
    #[error(transparent)]
    StatCache(#[from] StatCacheError),
    /// A tree source that is not a directory.
    #[error("source {0}: not a directory")]
    NotADir(PathBuf),
    /// An image source that is neither a regular file nor a block device.
    #[error("source {0}: not a regular file or block device")]
    NotAnImage(PathBuf),
    /// A chunking thread panicked.
    #[error("scan worker thread died")]
    Worker,
    /// The last scan's cache is unusable (torn, foreign): the scan is redone
    /// without it.
    #[error("source cache unusable: {0}")]
    Cache(String),
}

pub(super) fn io_err(path: &[u8]) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

/// What the scan read and decided.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScanStats {
    /// Entries in the manifest.
    pub entries: u64,
    /// Regular files (and images).
    pub files: u64,
    /// Logical bytes of all files (data plus holes).
    pub bytes_scanned: u64,
    /// Data bytes read and hashed (0 for entries reused from the stat cache).
    pub bytes_hashed: u64,
    /// Entries copied from the last manifest without reading data.
    pub entries_reused: u64,
    /// Sockets left out.
    pub sockets_skipped: u64,
    /// Bytes a write tracker reported written since the last scan, for an
    /// image or a tree's files ([`super::changes::ImageChanges`]; a file
    /// read whole counts what the tracker saw written to it, all of it if
    /// created; an image read whole, 0): what the source dirtied between
    /// two rounds, measured apart from what the round then moved.
    #[serde(default)]
    pub bytes_tracked: u64,
    /// Changed files re-read whole at their last scan's chunk boundaries,
    /// with no tracker to say where they were written: rewritten in place
    /// (same inode, no smaller), so hashing the old chunks again finds the
    /// unchanged ones without a content-defined cut (`super::walk`).
    #[serde(default)]
    pub files_rehashed: u64,
    /// Of `files_rehashed`, those whose old boundaries did not hold (their
    /// class changed, or most of their bytes did): cut anew as a whole read
    /// cuts them.
    #[serde(default)]
    pub guesses_missed: u64,
    /// Of the scan's time, the part spent reading and hashing data (the
    /// scanning thread's reads, and its waits for the chunking workers'):
    /// what grows with the bytes read. The rest is the walk and the
    /// manifest, which grow with the volume's entries and chunks. The
    /// convergence model scales only this part to the final round's bytes
    /// (`crate::converge`).
    #[serde(default)]
    pub read_time: std::time::Duration,
    /// Of `read_time`, the time the reads waited for a read cap
    /// (`migrate --read-limit`): the final round, uncapped, does not wait.
    #[serde(default)]
    pub paced_time: std::time::Duration,
    /// The scan's threads (the scanning thread and the chunking workers),
    /// summed: time on a CPU and time standing runnable without one
    /// ([`crate::CpuTimes`]); `None` where `/proc` could not tell. A
    /// pre-copy scan in an idle cpu group beside a busy application waits
    /// through much of its walk and reads; the final round's, with the
    /// application stopped, does not (`crate::converge`).
    #[serde(default)]
    pub cpu: Option<crate::CpuTimes>,
}

/// Scan settings.
#[derive(Clone)]
pub struct ScanOptions {
    /// Worker threads for chunking (>= 1).
    pub threads: usize,
    /// Manifest label.
    pub label: String,
    /// Progress sink.
    pub progress: Arc<dyn ProgressSink>,
    /// Where the writes to the source since this cache's last scan are
    /// tracked (`super::changes`); `None`: an image changed at all is read
    /// whole, as is a tree's changed file.
    pub changes: Option<Arc<dyn super::changes::ImageChanges>>,
    /// Where to copy the data of large files as it is read (a local
    /// [`crate::sync`] into an empty destination: the scan's bytes are
    /// written as they are hashed, and the round takes the copies instead
    /// of reading every file again; see `super::copy`). `None`: no copies.
    pub copy_into: Option<PathBuf>,
}

/// A finished scan: the manifest on disk and what the sender needs to answer
/// positional chunk requests.
#[derive(Debug)]
pub struct Scan {
    /// The manifest file (`CACHE/last.manifest`).
    pub manifest: PathBuf,
    pub header: Header,
    pub trailer: Trailer,
    /// Entry index -> path, for data-carrying entries.
    pub paths: PathTable,
    pub stats: ScanStats,
    pub skipped: Vec<Skip>,
    /// Files whose data the scan copied ([`ScanOptions::copy_into`]),
    /// unchanged while it read them: each copy holds exactly the bytes
    /// hashed into the manifest.
    pub copies: Vec<super::copy::ScanCopy>,
}

/// Names of the cache files in the source's cache dir.
pub const LAST_MANIFEST: &str = "last.manifest";
pub(super) const LAST_STAT: &str = "last.stat";
