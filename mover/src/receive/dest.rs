//! The destination as the receiver's parts reach it: the data tree (every
//! path resolved beneath its root with `safe_path`) or the image, and the
//! state dir beside it (`applied.manifest`, `applied.stat`, `round/`,
//! `seed/`). Opening, lstat, listing, syncing; no decisions.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::error::{ReceiveError, io_err};
use super::options::Destination;
use super::plan::{DestView, Device, StoredManifest};
use crate::fsmeta::{self, StatKind};
use crate::safe_path::Root;

/// Default state dir: beside the destination, so it is on the same
/// filesystem (renames from the round dir into the tree must not cross one).
pub fn default_state_dir(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(".daffe-state");
    dest.parent().unwrap_or(Path::new(".")).join(s)
}

/// Where a local sync's scan copies the files it reads into an empty
/// destination (`ScanOptions::copy_into`): in the state dir, so that a copy
/// is renamed into the round's stage dir, on the same filesystem.
pub(crate) fn scan_copy_dir(state: &Path) -> PathBuf {
    state.join("scan-copy")
}

/// The destination and its state dir.
pub(super) struct Dest {
    pub(super) dest: Destination,
    pub(super) state: PathBuf,
    /// The tree's root (None for an image).
    pub(super) root: Option<Root>,
}

impl Dest {
    /// Opens (creating if needed) the destination and its state dir.
    pub(super) fn open(dest: &Destination, state_dir: &Path) -> Result<Dest, ReceiveError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir.as_os_str().as_bytes()))?;
        let root = match dest {
            Destination::Tree(p) => {
                std::fs::create_dir_all(p).map_err(io_err(p.as_os_str().as_bytes()))?;
                Some(Root::open(p)?)
            }
            Destination::Image(_) => None,
        };
        Ok(Dest {
            dest: dest.clone(),
            state: state_dir.to_path_buf(),
            root,
        })
    }

    /// Opens the destination and its state dir as they are, creating
    /// nothing (a dry run): a missing tree has no root and lists as empty,
    /// a missing state dir as no applied round.
    pub(super) fn open_existing(
        dest: &Destination,
        state_dir: &Path,
    ) -> Result<Dest, ReceiveError> {
        let root = match dest {
            Destination::Tree(p) if p.exists() => Some(Root::open(p)?),
            Destination::Tree(_) | Destination::Image(_) => None,
        };
        Ok(Dest {
            dest: dest.clone(),
            state: state_dir.to_path_buf(),
            root,
        })
    }

    /// The round in progress: manifest, journal, op streams, pack, stage/.
    pub(super) fn round_dir(&self) -> PathBuf {
        self.state.join("round")
    }

    /// Where staged entries are written (`stage/<entry index>`).
    pub(super) fn stage_dir(&self) -> PathBuf {
        self.round_dir().join("stage")
    }

    /// The manifest the destination holds now.
    pub(super) fn applied_manifest(&self) -> PathBuf {
        self.state.join("applied.manifest")
    }

    /// The destination's stat of every applied entry, as the last round left it.
    pub(super) fn applied_stat(&self) -> PathBuf {
        self.state.join("applied.stat")
    }

    /// The tree's root; an image has none (its ops never need one).
    pub(super) fn tree_root(&self) -> &Root {
        self.root
            .as_ref()
            .expect("only tree entries reach here, and trees have a root")
    }

    /// Makes everything written to the destination filesystem durable, and
    /// an image destination too: a block device's cache belongs to no
    /// filesystem, so `syncfs` leaves its writes dirty (the kernel flushes
    /// them only at the device's last close, which a mount or another
    /// opener defers; issue 12, finding 8). An image file not written yet
    /// (staged this round) has nothing to flush.
    pub(super) fn sync_fs(&self) -> Result<(), ReceiveError> {
        let f = File::open(&self.state).map_err(io_err(self.state.as_os_str().as_bytes()))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err(self.state.as_os_str().as_bytes())(e.into()))?;
        self.sync_image()
    }

    /// The image file's data, for an image destination that is a file; the
    /// rest of [`Dest::sync_fs`].
    pub(super) fn sync_image(&self) -> Result<(), ReceiveError> {
        if let (None, Destination::Image(p)) = (&self.root, &self.dest) {
            match File::open(p) {
                Ok(img) => img.sync_data().map_err(io_err(p.as_os_str().as_bytes()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(p.as_os_str().as_bytes())(e)),
            }
        }
        Ok(())
    }

    /// Opens the destination object for an entry path.
    pub(super) fn open_entry(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, ReceiveError> {
        match (&self.root, &self.dest) {
            (Some(r), _) => Ok(r.open_at(path, flags, Mode::empty())?),
            (None, d) => rustix::fs::open(d.path(), flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io_err(d.path().as_os_str().as_bytes())(e.into())),
        }
    }

    /// Opens an entry's data read-only, as a `File`.
    pub(super) fn open_entry_ro(&self, path: &[u8]) -> Result<File, ReceiveError> {
        self.open_entry(path, OFlags::RDONLY | OFlags::NOFOLLOW)
            .map(File::from)
    }

    /// lstat of the destination object for an entry path (a block device
    /// reports its size).
    pub(super) fn stat(&self, path: &[u8]) -> Option<fsmeta::FileStat> {
        match (&self.root, &self.dest) {
            (Some(r), _) if path.is_empty() => fsmeta::stat_fd(r.fd(), b"").ok(),
            (Some(r), _) => {
                let (dir, name) = r.parent(path).ok()?;
                fsmeta::stat_at(dir.as_fd(), name).ok()
            }
            (None, d) => {
                let f = File::open(d.path()).ok()?;
                let mut st = fsmeta::stat_fd(f.as_fd(), b"").ok()?;
                if st.kind == StatKind::BlockDev {
                    st.size = crate::scan::image_size(&f, &st).ok()?;
                }
                Some(st)
            }
        }
    }

    /// The block device an image destination is, if it is one.
    pub(super) fn device(&self) -> Option<Device> {
        if self.root.is_some() {
            return None;
        }
        let st = self.stat(b"").filter(|s| s.kind == StatKind::BlockDev)?;
        Some(Device {
            path: self.dest.path().display().to_string(),
            size: st.size,
        })
    }

    /// Whether `fd` is a block device (whose size and metadata stay as they are).
    pub(super) fn is_block_device(fd: &OwnedFd) -> bool {
        fsmeta::stat_fd(fd.as_fd(), b"").is_ok_and(|s| s.kind == StatKind::BlockDev)
    }
}

impl DestView for Dest {
    fn names(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let Ok(fd) = self.open_entry(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
        else {
            return Vec::new();
        };
        let mut names = Vec::new();
        if let Ok(d) = rustix::fs::Dir::read_from(&fd) {
            for ent in d.flatten() {
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
        }
        names.sort();
        names
    }

    fn same_inode(&self, a: &[u8], b: &[u8]) -> bool {
        match (self.stat(a), self.stat(b)) {
            (Some(x), Some(y)) => x.dev == y.dev && x.ino == y.ino,
            _ => false,
        }
    }
}

/// A manifest stored in a file (the round's new one, the applied one).
pub(super) struct ManifestFile(pub(super) PathBuf);

impl ManifestFile {
    fn file(&self) -> Result<File, ReceiveError> {
        File::open(&self.0).map_err(io_err(self.0.as_os_str().as_bytes()))
    }
}

impl StoredManifest for ManifestFile {
    type Reader = BufReader<File>;

    fn open(&self) -> Result<BufReader<File>, ReceiveError> {
        // Streamed once from end to end: a large buffer, few system calls.
        Ok(BufReader::with_capacity(1 << 20, self.file()?))
    }

    fn open_at(&self, pos: u64) -> Result<BufReader<File>, ReceiveError> {
        let mut f = self.file()?;
        f.seek(SeekFrom::Start(pos))
            .map_err(io_err(self.0.as_os_str().as_bytes()))?;
        Ok(BufReader::new(f))
    }
}
