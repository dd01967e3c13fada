//! Copies of the source's large files, written while the scan reads them
//! ([`super::ScanOptions::copy_into`]).
//!
//! A local first transfer read and hashed every byte three times: the scan,
//! the fetch (which reads the source again and checks each chunk against its
//! id, because the source may have changed since its scan) and the verify at
//! the destination. A copy written from the very buffers the scan hashes
//! needs no fetch, provided the file did not change while it was read. The
//! rule is the one the stat cache already trusts to skip an unchanged file:
//! size, mtime and ctime the same before and after the read, and timestamps
//! outside the racy margin when the scan began, so that any write during the
//! read would have moved them. A file that fails it (or whose copy could not
//! be written) keeps no copy: the round fetches and checks it as before, and
//! a final round whose source moved still stops there
//! (`ReceiveError::Stale`). The round's verify re-reads a copied file like
//! any staged one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Files smaller than this are not copied: the fetch of a small file costs
/// little more than the copy's own create and rename.
pub(crate) const COPY_MIN: u64 = 1 << 20;

/// A file the scan copied whole and unchanged: the copy holds exactly the
/// bytes hashed into the manifest for entry `entry`.
#[derive(Debug)]
pub struct ScanCopy {
    /// The entry's index in the manifest; the copy is `COPY_DIR/<entry>`.
    pub entry: u32,
    /// The copy, on a handle opened before its first byte was written: its
    /// `fdatasync` reports every writeback error of the copy.
    pub file: File,
}

/// A copy being written by the chunking workers.
pub(super) struct Copying {
    file: File,
    path: PathBuf,
    failed: AtomicBool,
}

impl Copying {
    /// Creates `dir/<seq>.part`, `size` bytes long (holes where nothing is
    /// written). None when it cannot be made: the file is then fetched.
    pub(super) fn create(dir: &Path, seq: u64, size: u64) -> Option<Copying> {
        let path = dir.join(format!("{seq}.part"));
        let made = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
            .open(&path)
            .and_then(|f| f.set_len(size).map(|()| f));
        match made {
            Ok(file) => Some(Copying {
                file,
                path,
                failed: AtomicBool::new(false),
            }),
            Err(e) => {
                tracing::debug!("no scan copy at {}: {e}", path.display());
                None
            }
        }
    }

    /// Writes `data`, read from the source at `offset`, to the same place.
    /// A failure (a full disk) only loses the copy.
    pub(super) fn write(&self, data: &[u8], offset: u64) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.file.write_all_at(data, offset) {
            tracing::debug!("scan copy {}: {e}", self.path.display());
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// The copy of a file read unchanged, renamed to `dir/<entry>`; None
    /// (and the copy removed) when a write failed.
    pub(super) fn keep(&self, dir: &Path, entry: u32) -> Option<ScanCopy> {
        if self.failed.load(Ordering::Relaxed) {
            self.discard();
            return None;
        }
        let kept = std::fs::rename(&self.path, dir.join(entry.to_string()))
            .and_then(|()| self.file.try_clone());
        match kept {
            Ok(file) => Some(ScanCopy { entry, file }),
            Err(e) => {
                tracing::debug!("scan copy {}: {e}", self.path.display());
                self.discard();
                None
            }
        }
    }

    /// Removes the copy of a file that changed while it was read.
    pub(super) fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
