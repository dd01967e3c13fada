//! The walk: a tree depth-first in manifest order (siblings sorted, one
//! (dev, ino) map for hardlinks), or a single image, each entry handed to
//! the builder.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::chunk::ChunkClass;
use crate::fsmeta::{self, FileStat, FsMetaError, StatKind, XTarget};
use crate::manifest::{Entry, Kind, Mode as MMode};
use crate::regular_file;

use super::builder::Scanner;
use super::options::{Scan, ScanError, ScanOptions, io_err};

fn base_entry(path: Vec<u8>, kind: Kind, st: &FileStat) -> Entry {
    Entry {
        path,
        kind,
        mode: st.perm,
        uid: st.uid,
        gid: st.gid,
        mtime_ns: st.mtime_ns,
        size: 0,
        rdev: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
        class: ChunkClass::Small.code(),
    }
}

/// An error that means the entry vanished (deleted, renamed away, or its
/// parent or itself replaced by a symlink or a file) between the listing
/// and reading it: the entry is not in this round, which is not a failure
/// (issue 12, finding 9). The next round sees whatever is there then.
fn vanished(e: &ScanError) -> bool {
    let source = match e {
        ScanError::Io { source, .. } | ScanError::Meta(FsMetaError::Sys { source, .. }) => source,
        _ => return false,
    };
    source.kind() == std::io::ErrorKind::NotFound
        || matches!(
            source.raw_os_error(),
            Some(c) if c == rustix::io::Errno::LOOP.raw_os_error()
                || c == rustix::io::Errno::NOTDIR.raw_os_error()
        )
}

struct Frame {
    fd: Arc<OwnedFd>,
    path: Vec<u8>,
    /// Children, sorted descending so `pop` yields them in order.
    names: Vec<Vec<u8>>,
}

fn list_dir(fd: &OwnedFd, path: &[u8]) -> Result<Vec<Vec<u8>>, ScanError> {
    let mut names = Vec::new();
    let dir = rustix::fs::Dir::read_from(fd).map_err(|e| io_err(path)(e.into()))?;
    for ent in dir {
        let ent = ent.map_err(|e| io_err(path)(e.into()))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Scans the tree at `root` into `CACHE/last.manifest`, using and refreshing
/// the stat cache in `cache_dir`.
///
/// With a tracker ([`ScanOptions::changes`]) that vouches for the tree's
/// files, a changed file is read only where it was written (see
/// [`super::changes::FileChanges`]).
pub fn scan_tree(root: &Path, cache_dir: &Path, opts: ScanOptions) -> Result<Scan, ScanError> {
    // Taken before the walk: writes completing after this go to the
    // tracker's next answer.
    let tracker = opts.changes.clone();
    let pending = tracker.as_ref().map(|t| t.pending());
    let files = pending.as_ref().and_then(|p| p.files.as_ref());
    let scan = with_cache_fallback(cache_dir, opts, |opts, use_cache| {
        scan_tree_with(root, cache_dir, opts, use_cache, files)
    })?;
    if let (Some(t), Some(p)) = (tracker, pending) {
        t.scanned(p.mark);
    }
    Ok(scan)
}

/// Runs a scan with the source cache, and again without it if the cache
/// turns out unusable (torn or foreign: never a failed scan).
fn with_cache_fallback(
    cache_dir: &Path,
    opts: ScanOptions,
    scan: impl Fn(ScanOptions, bool) -> Result<Scan, ScanError>,
) -> Result<Scan, ScanError> {
    match scan(opts.clone(), true) {
        Err(ScanError::Cache(why)) => {
            tracing::warn!(
                "source cache in {} unusable ({why}); rescanning without it",
                cache_dir.display()
            );
            scan(opts, false)
        }
        r => r,
    }
}

fn scan_tree_with(
    root: &Path,
    cache_dir: &Path,
    opts: ScanOptions,
    use_cache: bool,
    files: Option<&super::changes::FileChanges>,
) -> Result<Scan, ScanError> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| ScanError::NotADir(root.to_path_buf()))?;
    let mut s = Scanner::new(cache_dir, MMode::Tree, opts, use_cache)?;
    // Hardlinks: the first path seen of every (dev, ino) with more than one link.
    let mut hardlinks: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let st = fsmeta::stat_fd(rootfd.as_fd(), b"")?;
    let reuse = s.cached(b"", &st)?;
    let mut e = base_entry(Vec::new(), Kind::Dir, &st);
    if !reuse {
        e.xattrs = fsmeta::read_xattrs(XTarget::Fd(rootfd.as_fd()), b"")?;
    }
    s.add(e, &st, reuse, None)?;
    let names = list_dir(&rootfd, b"")?;
    let mut stack = vec![Frame {
        fd: Arc::new(rootfd),
        path: Vec::new(),
        names,
    }];
    // Reading one entry: a vanished entry is left out (`continue`), any
    // other error fails the scan. Only for steps before `add`.
    macro_rules! or_gone {
        ($e:expr, $path:expr, $st:expr) => {
            match $e {
                Ok(v) => v,
                Err(err) => {
                    let err = ScanError::from(err);
                    if !vanished(&err) {
                        return Err(err);
                    }
                    tracing::debug!(
                        "{:?} vanished while scanning: {err}",
                        String::from_utf8_lossy($path)
                    );
                    if hardlinks
                        .get(&($st.dev, $st.ino))
                        .is_some_and(|p| p.as_slice() == $path)
                    {
                        hardlinks.remove(&($st.dev, $st.ino));
                    }
                    continue;
                }
            }
        };
    }
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            stack.pop();
            continue;
        };
        let dirfd = top.fd.clone();
        let path = join_path(&top.path, &name);
        let oname = OsStr::from_bytes(&name);
        let st = match fsmeta::stat_at(dirfd.as_fd(), oname).map_err(ScanError::from) {
            Ok(st) => st,
            // Vanished between readdir and lstat: it is simply not there.
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        let Some(kind) = st.manifest_kind() else {
            s.skip_socket(&path);
            continue;
        };
        // Hardlinks: later names of an inode already seen.
        if kind == Kind::File && st.nlink > 1 {
            if let Some(first) = hardlinks.get(&(st.dev, st.ino)) {
                let mut e = base_entry(path, Kind::Hardlink, &st);
                e.target = first.clone();
                // Keep the stat cache cursor moving past this path.
                let _ = s.cached(&e.path, &st)?;
                s.add(e, &st, false, None)?;
                continue;
            }
            hardlinks.insert((st.dev, st.ino), path.clone());
        }
        let (reuse, seen) = s.lookup(&path, &st)?;
        let mut e = base_entry(path, kind, &st);
        // xattrs of a symlink or special file, read by name (not followed).
        let link_xattrs = |path: &[u8]| {
            fsmeta::read_xattrs(
                XTarget::Link {
                    dir: dirfd.as_fd(),
                    name: oname,
                },
                path,
            )
        };
        match kind {
            Kind::Dir => {
                let fd = or_gone!(
                    rustix::fs::openat(
                        dirfd.as_fd(),
                        oname,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|err| io_err(&e.path)(err.into())),
                    &e.path,
                    st
                );
                if !reuse {
                    e.xattrs = or_gone!(
                        fsmeta::read_xattrs(XTarget::Fd(fd.as_fd()), &e.path),
                        &e.path,
                        st
                    );
                }
                let names = or_gone!(list_dir(&fd, &e.path), &e.path, st);
                let p = e.path.clone();
                s.add(e, &st, reuse, None)?;
                stack.push(Frame {
                    fd: Arc::new(fd),
                    path: p,
                    names,
                });
            }
            Kind::File => {
                e.size = st.size;
                let pick = s.file_class(&e.path, &st, seen.as_ref());
                e.class = pick.class.code();
                if reuse {
                    s.add(e, &st, true, None)?;
                } else {
                    // Not whatever is at the path now: the file the lstat saw
                    // (a FIFO or device swapped in is left out, never read).
                    let fd = match or_gone!(
                        regular_file::open_at(dirfd.as_fd(), oname, Some((st.dev, st.ino)))
                            .map_err(io_err(&e.path)),
                        &e.path,
                        st
                    ) {
                        regular_file::Opened::File(fd) => fd,
                        regular_file::Opened::Changed(what) => {
                            hardlinks.remove(&(st.dev, st.ino));
                            s.skip_changed(&e.path, what);
                            continue;
                        }
                    };
                    e.xattrs = or_gone!(
                        fsmeta::read_xattrs(XTarget::Fd(fd.as_fd()), &e.path),
                        &e.path,
                        st
                    );
                    let dirty = files.and_then(|f| f.dirty(&st, seen.as_ref()));
                    // First seen rewritten in place: a patch keeps the last
                    // scan's (larger) chunks; scattered pages switch to the
                    // page class now, read whole once (`class::switch_to_pages`).
                    let dirty = match dirty {
                        Some(d) if pick.newly_paged => {
                            if super::class::switch_to_pages(&d, st.size) {
                                None
                            } else {
                                s.unlist_paged(&e.path);
                                Some(d)
                            }
                        }
                        d => d,
                    };
                    // No tracker: a file rewritten in place (a database's
                    // table) is re-read at its last chunks' boundaries,
                    // which finds the unchanged ones without a
                    // content-defined cut (a 128 MiB database file's scan,
                    // page cache warm: 92 -> 44 ms).
                    let (dirty, guessed) = match dirty {
                        Some(d) => (Some(d), false),
                        None if files.is_none()
                            && !pick.newly_paged
                            && super::changes::rehashable(&st, seen.as_ref()) =>
                        {
                            (Some(vec![(0, st.size)]), true)
                        }
                        None => (None, false),
                    };
                    match dirty {
                        Some(dirty) => {
                            s.add_patched_file(e, &st, File::from(fd), dirty, guessed)?
                        }
                        None => {
                            if let Some(f) = files {
                                s.count_tracked(f.written_bytes(&st));
                            }
                            s.add(e, &st, false, Some(File::from(fd)))?
                        }
                    }
                }
            }
            Kind::Symlink => {
                if !reuse {
                    e.target = or_gone!(
                        rustix::fs::readlinkat(dirfd.as_fd(), oname, Vec::new())
                            .map_err(|err| io_err(&e.path)(err.into())),
                        &e.path,
                        st
                    )
                    .into_bytes();
                    e.xattrs = or_gone!(link_xattrs(&e.path), &e.path, st);
                }
                s.add(e, &st, reuse, None)?;
            }
            _ => {
                e.rdev = st.rdev;
                if !reuse {
                    e.xattrs = or_gone!(link_xattrs(&e.path), &e.path, st);
                }
                s.add(e, &st, reuse, None)?;
            }
        }
    }
    s.finish(cache_dir)
}

/// Size of a block device or regular file.
pub fn image_size(f: &File, st: &FileStat) -> std::io::Result<u64> {
    if st.kind == StatKind::BlockDev {
        rustix::fs::seek(f, rustix::fs::SeekFrom::End(0)).map_err(Into::into)
    } else {
        Ok(st.size)
    }
}

/// Scans the image (regular file or block device) at `path`.
pub fn scan_image(path: &Path, cache_dir: &Path, opts: ScanOptions) -> Result<Scan, ScanError> {
    // Taken before the image is opened: writes completing after this go to
    // the tracker's next answer.
    let tracker = opts.changes.clone();
    let pending = tracker.as_ref().map(|t| t.pending());
    let dirty = pending.as_ref().and_then(|p| p.ranges.as_deref());
    let scan = with_cache_fallback(cache_dir, opts, |opts, use_cache| {
        scan_image_with(path, cache_dir, opts, use_cache, dirty)
    })?;
    if let (Some(t), Some(p)) = (tracker, pending) {
        t.scanned(p.mark);
    }
    Ok(scan)
}

fn scan_image_with(
    path: &Path,
    cache_dir: &Path,
    opts: ScanOptions,
    use_cache: bool,
    dirty: Option<&[(u64, u64)]>,
) -> Result<Scan, ScanError> {
    let f = File::open(path).map_err(io_err(path.as_os_str().as_bytes()))?;
    let st = fsmeta::stat_fd(f.as_fd(), b"")?;
    if !matches!(st.kind, StatKind::File | StatKind::BlockDev) {
        return Err(ScanError::NotAnImage(path.to_path_buf()));
    }
    let mut s = Scanner::new(cache_dir, MMode::Image, opts, use_cache)?;
    let mut st2 = st;
    st2.size = image_size(&f, &st).map_err(io_err(path.as_os_str().as_bytes()))?;
    // A device's timestamps say nothing about its contents: always read it.
    let (unchanged, seen) = s.lookup(b"", &st2)?;
    let reuse = st.kind == StatKind::File && unchanged;
    let mut e = base_entry(Vec::new(), Kind::Image, &st2);
    e.size = st2.size;
    e.class = ChunkClass::Db.code();
    if !reuse
        && st.kind == StatKind::File
        && let Some(d) = dirty
    {
        let ranges = super::changes::normalize(d, st2.size);
        if s.add_patched(e.clone(), &st2, seen.as_ref(), &f, &ranges)? {
            let mut scan = s.finish(cache_dir)?;
            scan.stats.bytes_tracked = super::changes::ranges_len(&ranges);
            return Ok(scan);
        }
    }
    s.add(e, &st2, reuse, if reuse { None } else { Some(f) })?;
    s.finish(cache_dir)
}
