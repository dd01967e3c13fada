//! Opening a scanned path to read its data, safe against what a container
//! can swap in between the lstat and the open (issue 12, finding 2).
//!
//! A container may create device nodes (`CAP_MKNOD` is in Docker's default
//! set) and FIFOs in a volume. Opening by name after an lstat said "regular
//! file" could otherwise read a host disk or `/dev/zero` into the copy, or
//! block forever on a FIFO. So the open is non-blocking (a FIFO opens at
//! once) and does not follow symlinks, and the descriptor itself is checked:
//! it must be a regular file, and the very inode the lstat saw.

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};

/// The flags every data open uses. `NONBLOCK` has no effect on a regular
/// file; it only keeps a FIFO from blocking the open.
pub const FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// What an open found.
#[derive(Debug)]
pub enum Opened {
    /// The regular file that was expected.
    File(OwnedFd),
    /// Something else is there now; it was not read.
    Changed(&'static str),
}

/// Checks an open descriptor: a regular file, and (when given) the
/// `(dev, ino)` the caller's lstat saw.
pub fn check(fd: OwnedFd, expect: Option<(u64, u64)>) -> std::io::Result<Opened> {
    let st = rustix::fs::fstat(&fd)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Ok(Opened::Changed(match ft {
            FileType::Fifo => "a FIFO",
            FileType::CharacterDevice => "a character device",
            FileType::BlockDevice => "a block device",
            FileType::Directory => "a directory",
            FileType::Socket => "a socket",
            _ => "not a regular file",
        }));
    }
    if let Some((dev, ino)) = expect
        && (st.st_dev != dev || st.st_ino != ino)
    {
        return Ok(Opened::Changed("another file"));
    }
    Ok(Opened::File(fd))
}

/// Opens `name` in `dir` for reading data and checks it (see [`check`]).
/// `O_NOATIME` keeps a scan from dirtying every inode; only the owner (or
/// root) may ask for it, so the open falls back without it.
pub fn open_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    expect: Option<(u64, u64)>,
) -> std::io::Result<Opened> {
    let fd = match rustix::fs::openat(dir, name, FLAGS | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, FLAGS, Mode::empty()),
        r => r,
    }?;
    check(fd, expect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn dir(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    /// lstat of a regular file, then something else swapped in at the path.
    fn swapped(make: impl FnOnce(&std::path::Path)) -> Opened {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"data").unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        make(&p);
        let d = dir(t.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let name = OsStr::new("f").to_owned();
        // A FIFO opened blocking would never return: bound the wait.
        std::thread::spawn(move || {
            let _ = tx.send(open_at(d.as_fd(), &name, Some((md.dev(), md.ino()))));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("open hung (FIFO opened blocking?)")
            .unwrap()
    }

    #[test]
    fn finding_02_fifo_swapped_in_is_changed() {
        let got = swapped(|p| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap()
        });
        assert!(matches!(got, Opened::Changed(_)), "{got:?}");
    }

    #[test]
    fn finding_02_char_device_swapped_in_is_changed() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (CI runs tests as root): mknod of a device"
        );
        // 1:5 is /dev/zero.
        let got = swapped(|p| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                p,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                rustix::fs::makedev(1, 5),
            )
            .unwrap()
        });
        assert!(matches!(got, Opened::Changed(_)), "{got:?}");
    }

    #[test]
    fn finding_02_other_regular_file_swapped_in_is_changed() {
        // Renamed over from a file made before the original's removal, so
        // the kernel cannot hand it the freed inode number.
        let t = tempfile::tempdir().unwrap();
        let other = t.path().join("other");
        std::fs::write(&other, b"other").unwrap();
        let got = swapped(move |p| std::fs::rename(&other, p).unwrap());
        assert!(matches!(got, Opened::Changed(_)), "{got:?}");
    }

    #[test]
    fn the_same_regular_file_opens() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"data").unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let d = dir(t.path());
        let got = open_at(d.as_fd(), OsStr::new("f"), Some((md.dev(), md.ino()))).unwrap();
        assert!(matches!(got, Opened::File(_)), "{got:?}");
    }
}
