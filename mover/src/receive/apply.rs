//! Applying a committed round (DESIGN.md step 8): replay the op streams in
//! order (deletes; mkdirs; places, patches, metadata and links in manifest
//! order; directory metadata last). Every op is idempotent, so a crash
//! during apply is finished by replaying the same streams again.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::dest::Dest;
use super::error::{ReceiveError, errno, io_err, lossy};
use super::ops::{Op, STREAMS};
use super::options::RoundStats;
use crate::chunk::ChunkId;
use crate::chunk_index::read_verified;
use crate::fsmeta::{self, Skip, StatKind};
use crate::journal::FramedReader;
use crate::manifest::{Entry, Kind};
use crate::read_full::read_full_at;

/// Replays the committed ops (idempotent).
pub(super) fn apply(d: &Dest, stats: &mut RoundStats) -> Result<(), ReceiveError> {
    // Directories may be replaced by the ops: never reuse a parent fd
    // opened before them.
    if let Some(r) = &d.root {
        r.forget();
    }
    let rd = d.round_dir();
    let pack = File::open(rd.join("pack")).ok();
    // Patches a partial pre-copy round could not fill: those ranges keep
    // their previous bytes (the round's manifest says so).
    let skips = super::partial::read_skips(&rd)?;
    // Patches stored as the pages that differ from the file's bytes.
    let pages = super::pages::read_pages_file(&rd)?;
    let mut buf = Vec::new();
    for name in STREAMS {
        let Some(mut r) = FramedReader::open(&rd.join(name))? else {
            continue;
        };
        let mut patch_file: Option<(Vec<u8>, File)> = None;
        while let Some(op) = r.next::<Op>() {
            match op {
                Op::Delete { path } => {
                    delete(d, &path)?;
                    stats.deleted += 1;
                }
                Op::Mkdir { path } => {
                    if path.is_empty() {
                        continue;
                    }
                    let (dir, name) = d.tree_root().parent(&path)?;
                    match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(errno(&path)(e)),
                    }
                }
                Op::Place { stage, entry } => place(d, stage, &entry)?,
                Op::PatchWrite {
                    path,
                    offset,
                    len,
                    pack: at,
                    id,
                } => {
                    if skips.contains(&at) {
                        continue;
                    }
                    if patch_file.as_ref().is_none_or(|(p, _)| *p != path) {
                        let fd = d.open_entry(&path, OFlags::RDWR | OFlags::NOFOLLOW)?;
                        patch_file = Some((path.clone(), File::from(fd)));
                    }
                    let f = &patch_file.as_ref().expect("set above").1;
                    let pk = pack.as_ref().ok_or_else(|| ReceiveError::Verify {
                        path: lossy(&path),
                        why: "pack missing for a committed patch".into(),
                    })?;
                    if let Some(list) = pages.get(&at) {
                        patch_pages(f, pk, &path, (offset, len, at, &id), list, &mut buf)?;
                        continue;
                    }
                    if !read_verified(pk, at, len, &id, &mut buf).map_err(io_err(b"pack"))? {
                        // Already applied by an earlier replay and the
                        // pack lost? The pack is durable before commit,
                        // so this is corruption: stop loudly.
                        return Err(ReceiveError::Verify {
                            path: lossy(&path),
                            why: format!("pack chunk at {at} does not match {id}"),
                        });
                    }
                    f.write_all_at(&buf, offset).map_err(io_err(&path))?;
                    stats.bytes_written += u64::from(len);
                    // Verify the touched range right away.
                    if !read_verified(f, offset, len, &id, &mut buf).map_err(io_err(&path))? {
                        return Err(ReceiveError::Verify {
                            path: lossy(&path),
                            why: format!("read-back at {offset} does not match {id}"),
                        });
                    }
                    stats.bytes_verified += u64::from(len);
                }
                Op::PatchEnd { entry, holes } => {
                    patch_end(d, &entry, &holes, &mut stats.skipped)?;
                    patch_file = None;
                }
                Op::Meta { entry } => meta(d, &entry, &mut stats.skipped)?,
                Op::Link { path, target } => link(d, &path, &target)?,
                Op::DirMeta { entry } => {
                    let fd = d.open_entry(
                        &entry.path,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                    )?;
                    fsmeta::apply_fd(fd.as_fd(), &entry, &mut stats.skipped)?;
                }
            }
        }
    }
    Ok(())
}

/// After a file's patch writes: its size, the holes, its metadata (a block
/// device keeps its size and metadata).
fn patch_end(
    d: &Dest,
    e: &Entry,
    holes: &[(u64, u64)],
    skipped: &mut Vec<Skip>,
) -> Result<(), ReceiveError> {
    let fd = d.open_entry(&e.path, OFlags::RDWR | OFlags::NOFOLLOW)?;
    let device = Dest::is_block_device(&fd);
    if !device {
        rustix::fs::ftruncate(&fd, e.size).map_err(errno(&e.path))?;
    }
    for &(o, l) in holes {
        if o + l == e.size && !device {
            // A hole up to a size that is not block-aligned: punching would
            // only zero the last partial block (still allocated, so data to
            // SEEK_DATA). Cutting the file there and extending it again
            // leaves a real hole, as the source has.
            rustix::fs::ftruncate(&fd, o).map_err(errno(&e.path))?;
            rustix::fs::ftruncate(&fd, e.size).map_err(errno(&e.path))?;
        } else {
            fsmeta::punch_hole(fd.as_fd(), o, l, &e.path)?;
        }
    }
    if !device {
        fsmeta::apply_fd(fd.as_fd(), e, skipped)?;
    }
    Ok(())
}

/// Metadata only (the data is unchanged).
fn meta(d: &Dest, e: &Entry, skipped: &mut Vec<Skip>) -> Result<(), ReceiveError> {
    match e.kind {
        Kind::Symlink | Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
            let (dir, name) = d.tree_root().parent(&e.path)?;
            special_meta(dir.as_fd(), name, e, skipped)?;
        }
        _ => {
            let fd = d.open_entry(&e.path, OFlags::RDONLY | OFlags::NOFOLLOW)?;
            if !Dest::is_block_device(&fd) {
                fsmeta::apply_fd(fd.as_fd(), e, skipped)?;
            }
        }
    }
    Ok(())
}

/// Owner, mode, xattrs, times of a symlink or special file (by name).
pub(super) fn special_meta(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    e: &Entry,
    skips: &mut Vec<Skip>,
) -> Result<(), ReceiveError> {
    if e.kind != Kind::Symlink {
        // fchmodat has no working AT_SYMLINK_NOFOLLOW (rustix refuses it):
        // by name it would follow a symlink swapped in for the node out of
        // the destination (issue 12, low finding). So: hold the node itself
        // (O_PATH, no follow), check it is the kind the manifest says, and
        // change that inode (through /proc/self/fd, as glibc does).
        let node = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&e.path))?;
        let kind = rustix::fs::FileType::from_raw_mode(
            rustix::fs::fstat(&node).map_err(errno(&e.path))?.st_mode,
        );
        let expected = match e.kind {
            Kind::Fifo => rustix::fs::FileType::Fifo,
            Kind::CharDev => rustix::fs::FileType::CharacterDevice,
            Kind::BlockDev => rustix::fs::FileType::BlockDevice,
            _ => kind,
        };
        if kind != expected {
            // ELOOP for a symlink, as O_NOFOLLOW says it; EEXIST for another
            // kind of file in its place.
            let e2 = if kind == rustix::fs::FileType::Symlink {
                rustix::io::Errno::LOOP
            } else {
                rustix::io::Errno::EXIST
            };
            return Err(errno(&e.path)(e2));
        }
        rustix::fs::chownat(
            &node,
            "",
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(errno(&e.path))?;
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
        rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(e.mode as _))
            .map_err(errno(&e.path))?;
    }
    fsmeta::apply_link(dir, name, e, skips)?;
    Ok(())
}

/// Renames a finished staged entry into place (its data and metadata
/// were set while staging). Idempotent: a missing stage file was renamed
/// by an earlier replay.
fn place(d: &Dest, stage: u32, e: &Entry) -> Result<(), ReceiveError> {
    let sname = stage.to_string();
    let sname = OsStr::new(&sname);
    let r = match &d.root {
        Some(root) => {
            let sd = File::open(d.stage_dir()).map_err(io_err(b"stage dir"))?;
            let (dir, name) = root.parent(&e.path)?;
            rustix::fs::renameat(sd.as_fd(), sname, dir.as_fd(), name)
        }
        None => std::fs::rename(d.stage_dir().join(sname), d.dest.path())
            .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)),
    };
    match r {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(err) => Err(errno(&e.path)(err)),
    }
}

/// Makes `path` another name of `target` (replacing what is there).
fn link(d: &Dest, path: &[u8], target: &[u8]) -> Result<(), ReceiveError> {
    let root = d.tree_root();
    let (tdir, tname) = root.parent(target)?;
    let tdir = tdir.clone();
    let sd = File::open(d.stage_dir()).map_err(io_err(b"stage dir"))?;
    let tmp = OsStr::new("link.tmp");
    let _ = rustix::fs::unlinkat(sd.as_fd(), tmp, AtFlags::empty());
    rustix::fs::linkat(tdir.as_fd(), tname, sd.as_fd(), tmp, AtFlags::empty())
        .map_err(errno(path))?;
    let (dir, name) = root.parent(path)?;
    rustix::fs::renameat(sd.as_fd(), tmp, dir.as_fd(), name).map_err(errno(path))?;
    // rename() between two names of one inode does nothing: clean up.
    let _ = rustix::fs::unlinkat(sd.as_fd(), tmp, AtFlags::empty());
    Ok(())
}

/// Removes whatever is at `path`, recursively, beneath the root.
/// A page patch: the chunk is the file's current bytes of its range with
/// the pack's pages over them; checked against its id, then only the pages
/// are written. Idempotent: after a partial write the rebuilt chunk is the
/// same.
fn patch_pages(
    f: &File,
    pack: &File,
    path: &[u8],
    (offset, len, at, id): (u64, u32, u64, &ChunkId),
    pages: &[(u32, u32)],
    buf: &mut Vec<u8>,
) -> Result<(), ReceiveError> {
    buf.clear();
    buf.resize(len as usize, 0);
    // Past the file's end the range reads as zeros, as the base did.
    read_full_at(f, buf, offset).map_err(io_err(path))?;
    for &(o, l) in pages {
        let r = o as usize..o as usize + l as usize;
        pack.read_exact_at(&mut buf[r], at + u64::from(o))
            .map_err(io_err(b"pack"))?;
    }
    if ChunkId::of(buf) != *id {
        return Err(ReceiveError::Verify {
            path: lossy(path),
            why: format!("page patch at {offset} does not rebuild chunk {id}"),
        });
    }
    for &(o, l) in pages {
        let r = o as usize..o as usize + l as usize;
        f.write_all_at(&buf[r], offset + u64::from(o))
            .map_err(io_err(path))?;
    }
    Ok(())
}

fn delete(d: &Dest, path: &[u8]) -> Result<(), ReceiveError> {
    let Some(root) = d.root.as_ref() else {
        return Ok(());
    };
    let (dir, name) = match root.parent(path) {
        Ok(x) => x,
        // The parent is gone (deleted with an ancestor): done.
        Err(_) => return Ok(()),
    };
    remove_at(dir.as_fd(), name, path)?;
    root.forget();
    Ok(())
}

fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, path: &[u8]) -> Result<(), ReceiveError> {
    let st = match fsmeta::stat_at(dir, name) {
        Ok(st) => st,
        Err(_) => return Ok(()),
    };
    if st.kind == StatKind::Dir {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(path))?;
        let mut names = Vec::new();
        for ent in rustix::fs::Dir::read_from(&fd).map_err(errno(path))? {
            let ent = ent.map_err(errno(path))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        for n in names {
            let mut child = path.to_vec();
            child.push(b'/');
            child.extend_from_slice(&n);
            remove_at(fd.as_fd(), OsStr::from_bytes(&n), &child)?;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(path)(e)),
        }
    } else {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode_of(p: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Issue 12, low finding: the metadata of a FIFO or device node is set
    /// by name; a symlink swapped in for it must not carry the chmod out of
    /// the destination.
    #[test]
    fn special_meta_never_follows_a_symlink_swapped_in() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "host file").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dest = d.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("fifo")).unwrap();
        let mut e = crate::manifest::tests::entry(b"fifo", Kind::Fifo, 0);
        (e.uid, e.gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        e.mode = 0o4777;
        let dir = File::open(&dest).unwrap();
        let r = special_meta(dir.as_fd(), OsStr::new("fifo"), &e, &mut Vec::new());
        assert!(r.is_err(), "a symlink where a FIFO should be is refused");
        assert_eq!(mode_of(&outside), 0o600, "the file outside kept its mode");

        // The real thing still gets its mode.
        std::fs::remove_file(dest.join("fifo")).unwrap();
        rustix::fs::mknodat(
            &dir,
            "fifo",
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        e.mode = 0o640;
        special_meta(dir.as_fd(), OsStr::new("fifo"), &e, &mut Vec::new()).unwrap();
        assert_eq!(mode_of(&dest.join("fifo")), 0o640);
    }
}
