//! Reading and applying one entry's metadata: kind, mode, owner, ns times,
//! xattrs (ACLs are xattrs), rdev, symlink targets; data extents through
//! SEEK_DATA/SEEK_HOLE; hole punching.
//!
//! Apply order matters and is fixed here: owner, then mode (chown clears
//! set-id bits), then xattrs (chown clears `security.capability`), then times
//! (every other change bumps them).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    AtFlags, FallocateFlags, FileType, Gid, Mode, SeekFrom, Timespec, Timestamps, Uid,
};

use crate::manifest::{Entry, Kind, Xattrs};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum FsMetaError {
    /// A syscall on `path` failed.
    #[error("{op} {path:?}: {source}")]
    Sys {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

fn sys<'a>(op: &'static str, path: &'a [u8]) -> impl FnOnce(rustix::io::Errno) -> FsMetaError + 'a {
    move |e| FsMetaError::Sys {
        op,
        path: String::from_utf8_lossy(path).into_owned(),
        source: e.into(),
    }
}

/// The stat fields the mover uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub kind: StatKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub blocks: u64,
}

/// File type as seen by stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    Dir,
    File,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileStat {
    /// Converts a rustix stat. (The casts are no-ops on x86_64 but not on
    /// every target: `struct stat` field types differ per architecture.)
    #[allow(clippy::unnecessary_cast)]
    pub fn from_stat(st: &rustix::fs::Stat) -> FileStat {
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Directory => StatKind::Dir,
            FileType::Symlink => StatKind::Symlink,
            FileType::Fifo => StatKind::Fifo,
            FileType::CharacterDevice => StatKind::CharDev,
            FileType::BlockDevice => StatKind::BlockDev,
            FileType::Socket => StatKind::Socket,
            _ => StatKind::File,
        };
        FileStat {
            kind,
            perm: st.st_mode as u32 & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        }
    }

    /// The manifest kind for this stat (None for sockets).
    pub fn manifest_kind(&self) -> Option<Kind> {
        Some(match self.kind {
            StatKind::Dir => Kind::Dir,
            StatKind::File => Kind::File,
            StatKind::Symlink => Kind::Symlink,
            StatKind::Fifo => Kind::Fifo,
            StatKind::CharDev => Kind::CharDev,
            StatKind::BlockDev => Kind::BlockDev,
            StatKind::Socket => return None,
        })
    }
}

/// lstat of `name` in `dir`.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<FileStat, FsMetaError> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|s| FileStat::from_stat(&s))
        .map_err(sys("lstat", name.as_bytes()))
}

/// fstat.
pub fn stat_fd(fd: BorrowedFd<'_>, path: &[u8]) -> Result<FileStat, FsMetaError> {
    rustix::fs::fstat(fd)
        .map(|s| FileStat::from_stat(&s))
        .map_err(sys("fstat", path))
}

/// xattr namespaces the mover carries. ACLs travel as their system.* xattrs.
pub(crate) fn xattr_wanted(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"security.")
        || name.starts_with(b"trusted.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Where xattrs are read or written: an open fd, or a path (for symlinks,
/// which cannot be opened; the path goes through `/proc/self/fd/DIR/NAME` so
/// intermediate components are not re-resolved).
#[derive(Clone, Copy)]
pub enum XTarget<'a> {
    Fd(BorrowedFd<'a>),
    Link {
        dir: BorrowedFd<'a>,
        name: &'a OsStr,
    },
}

fn link_path(dir: BorrowedFd<'_>, name: &OsStr) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    p
}

fn list_raw(t: XTarget<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        let r = match t {
            XTarget::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
            XTarget::Link { dir, name } => {
                rustix::fs::llistxattr(OsStr::from_bytes(&link_path(dir, name)), &mut buf[..])
            }
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn get_raw(t: XTarget<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    let cname = OsStr::from_bytes(name);
    loop {
        let r = match t {
            XTarget::Fd(fd) => rustix::fs::fgetxattr(fd, cname, &mut buf[..]),
            XTarget::Link { dir, name: n } => {
                rustix::fs::lgetxattr(OsStr::from_bytes(&link_path(dir, n)), cname, &mut buf[..])
            }
        };
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the carried xattrs, sorted by name.
pub fn read_xattrs(t: XTarget<'_>, path: &[u8]) -> Result<Xattrs, FsMetaError> {
    let err = |source| FsMetaError::Sys {
        op: "read xattrs of",
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    };
    let list = list_raw(t).map_err(err)?;
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !xattr_wanted(name) {
            continue;
        }
        if let Some(v) = get_raw(t, name).map_err(err)? {
            out.push((name.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Data extents `(start, end)` of an open regular file or image via
/// SEEK_DATA/SEEK_HOLE. Devices (and filesystems without the support) are
/// all data.
pub fn data_extents(
    fd: BorrowedFd<'_>,
    size: u64,
    path: &[u8],
) -> Result<Vec<(u64, u64)>, FsMetaError> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(sys("seek data in", path)(e)),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(fd, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(e) => return Err(sys("seek hole in", path)(e)),
        };
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Punches a hole (keeps the size). Block devices zero the range instead.
pub(crate) fn punch_hole(
    fd: BorrowedFd<'_>,
    off: u64,
    len: u64,
    path: &[u8],
) -> Result<(), FsMetaError> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    )
    .map_err(sys("punch hole in", path))
}

/// A metadata item that could not be applied (namespace not permitted, ...).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skip {
    pub path: String,
    pub what: String,
    pub reason: String,
}

fn ts(ns: i128) -> Timespec {
    Timespec {
        // Times outside what the kernel can store are clamped to its range.
        tv_sec: i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(if ns < 0 {
            i64::MIN
        } else {
            i64::MAX
        }),
        tv_nsec: ns.rem_euclid(1_000_000_000).try_into().unwrap_or(0),
    }
}

fn times(e: &Entry) -> Timestamps {
    Timestamps {
        // atime is not carried; leave it alone.
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT as _,
        },
        last_modification: ts(e.mtime_ns),
    }
}

/// Applies owner, mode, xattrs, times to an open file or directory.
pub(crate) fn apply_fd(
    fd: BorrowedFd<'_>,
    e: &Entry,
    skips: &mut Vec<Skip>,
) -> Result<(), FsMetaError> {
    let p = &e.path;
    // SAFETY-free: rustix ids from raw numeric values (numeric ids are carried as-is).
    let uid = Uid::from_raw(e.uid);
    let gid = Gid::from_raw(e.gid);
    rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(sys("chown", p))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode as _)).map_err(sys("chmod", p))?;
    set_xattrs(XTarget::Fd(fd), e, skips)?;
    rustix::fs::futimens(fd, &times(e)).map_err(sys("set times of", p))?;
    Ok(())
}

/// Applies owner, xattrs and times to a symlink (its mode is not settable).
pub(crate) fn apply_link(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    e: &Entry,
    skips: &mut Vec<Skip>,
) -> Result<(), FsMetaError> {
    let p = &e.path;
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(e.uid)),
        Some(Gid::from_raw(e.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(sys("chown", p))?;
    set_xattrs(XTarget::Link { dir, name }, e, skips)?;
    rustix::fs::utimensat(dir, name, &times(e), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys("set times of", p))?;
    Ok(())
}

/// Makes the carried xattrs of the target equal to the entry's: removes the
/// extra ones, sets missing or different ones. Namespaces the kernel refuses
/// (EPERM, ENOTSUP) are reported as skips, not errors.
pub(crate) fn set_xattrs(
    t: XTarget<'_>,
    e: &Entry,
    skips: &mut Vec<Skip>,
) -> Result<(), FsMetaError> {
    let have = read_xattrs(t, &e.path)?;
    if have == e.xattrs {
        return Ok(());
    }
    let skip = |skips: &mut Vec<Skip>, name: &[u8], err: rustix::io::Errno| {
        skips.push(Skip {
            path: e.display_path(),
            what: format!("xattr {}", String::from_utf8_lossy(name)),
            reason: io::Error::from(err).to_string(),
        })
    };
    for (name, _) in &have {
        if e.xattrs.iter().any(|(n, _)| n == name) {
            continue;
        }
        let cname = OsStr::from_bytes(name);
        let r = match t {
            XTarget::Fd(fd) => rustix::fs::fremovexattr(fd, cname),
            XTarget::Link { dir, name: n } => {
                rustix::fs::lremovexattr(OsStr::from_bytes(&link_path(dir, n)), cname)
            }
        };
        match r {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(
                err @ (rustix::io::Errno::PERM
                | rustix::io::Errno::NOTSUP
                | rustix::io::Errno::ACCESS),
            ) => skip(skips, name, err),
            Err(err) => return Err(sys("remove xattr of", &e.path)(err)),
        }
    }
    for (name, value) in &e.xattrs {
        if have.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        let cname = OsStr::from_bytes(name);
        let flags = rustix::fs::XattrFlags::empty();
        let r = match t {
            XTarget::Fd(fd) => rustix::fs::fsetxattr(fd, cname, value, flags),
            XTarget::Link { dir, name: n } => {
                rustix::fs::lsetxattr(OsStr::from_bytes(&link_path(dir, n)), cname, value, flags)
            }
        };
        match r {
            Ok(()) => {}
            Err(
                err @ (rustix::io::Errno::PERM
                | rustix::io::Errno::NOTSUP
                | rustix::io::Errno::ACCESS),
            ) => skip(skips, name, err),
            Err(err) => return Err(sys("set xattr of", &e.path)(err)),
        }
    }
    Ok(())
}

/// Creates a special file (fifo, char or block device) named `name` in `dir`.
pub(crate) fn make_special(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    e: &Entry,
) -> Result<(), FsMetaError> {
    let ft = match e.kind {
        Kind::Fifo => FileType::Fifo,
        Kind::CharDev => FileType::CharacterDevice,
        Kind::BlockDev => FileType::BlockDevice,
        _ => FileType::RegularFile,
    };
    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), e.rdev as _)
        .map_err(sys("mknod", &e.path))
}

/// Whether the destination object's stat already matches the entry's
/// metadata (used by verification). Symlink modes are not compared.
pub(crate) fn meta_matches(st: &FileStat, e: &Entry) -> bool {
    let kind_ok = st.manifest_kind()
        == Some(match e.kind {
            Kind::Hardlink | Kind::Image => Kind::File,
            k => k,
        });
    kind_ok
        && st.uid == e.uid
        && st.gid == e.gid
        && (e.kind == Kind::Symlink || st.perm == e.mode)
        && st.mtime_ns == e.mtime_ns
}
