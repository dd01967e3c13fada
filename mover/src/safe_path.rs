//! Opening, creating and renaming *beneath* a root directory.
//!
//! Every destination path comes from a manifest, i.e. from a peer. Paths are
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so `..`,
//! absolute paths and symlinks in intermediate components are refused by the
//! kernel even if a directory is swapped for a symlink while we work. Final
//! components are then used with `*at` calls relative to the parent's fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::manifest::path_is_safe;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SafePathError {
    /// The path is not a safe relative path.
    #[error("unsafe path {0:?} (empty component, `.`/`..`, absolute or NUL)")]
    Unsafe(String),
    /// Resolving or opening failed (a symlink or `..` on the way shows up here
    /// as ELOOP/EXDEV).
    #[error("opening {path:?} beneath {root}: {source}")]
    Open {
        root: PathBuf,
        path: String,
        source: std::io::Error,
    },
}

/// The flags that keep resolution inside the root and off symlinks.
fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// A directory all paths are resolved beneath.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// The last parent directory opened (entries come in tree order, so
    /// siblings reuse it: one openat2 per directory, not per file).
    cache: std::cell::RefCell<Option<(Vec<u8>, std::rc::Rc<OwnedFd>)>>,
}

impl Root {
    /// Opens `path` (which must be a directory) as a root.
    pub fn open(path: &Path) -> Result<Root, SafePathError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SafePathError::Open {
            root: path.to_path_buf(),
            path: String::new(),
            source: e.into(),
        })?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            cache: Default::default(),
        })
    }

    /// The root's own fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn err(&self, rel: &[u8], e: rustix::io::Errno) -> SafePathError {
        SafePathError::Open {
            root: self.path.clone(),
            path: String::from_utf8_lossy(rel).into_owned(),
            source: e.into(),
        }
    }

    /// Opens `rel` beneath the root with `flags` (O_CLOEXEC added).
    pub fn open_at(&self, rel: &[u8], flags: OFlags, mode: Mode) -> Result<OwnedFd, SafePathError> {
        if rel.is_empty() {
            return rustix::fs::openat(&self.fd, ".", flags | OFlags::CLOEXEC, mode)
                .map_err(|e| self.err(rel, e));
        }
        if !path_is_safe(rel) {
            return Err(SafePathError::Unsafe(
                String::from_utf8_lossy(rel).into_owned(),
            ));
        }
        rustix::fs::openat2(
            &self.fd,
            OsStr::from_bytes(rel),
            flags | OFlags::CLOEXEC,
            mode,
            resolve(),
        )
        .map_err(|e| self.err(rel, e))
    }

    /// The parent directory of `rel` (opened beneath the root) and the final
    /// component. The final component may be anything, including a symlink:
    /// callers use `*at` calls with NOFOLLOW semantics on it.
    pub fn parent<'p>(
        &self,
        rel: &'p [u8],
    ) -> Result<(std::rc::Rc<OwnedFd>, &'p OsStr), SafePathError> {
        if !path_is_safe(rel) {
            return Err(SafePathError::Unsafe(
                String::from_utf8_lossy(rel).into_owned(),
            ));
        }
        let (dir, name) = match rel.iter().rposition(|&c| c == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        if let Some((p, fd)) = self.cache.borrow().as_ref()
            && p.as_slice() == dir
        {
            return Ok((fd.clone(), OsStr::from_bytes(name)));
        }
        let fd = std::rc::Rc::new(self.open_at(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?);
        *self.cache.borrow_mut() = Some((dir.to_vec(), fd.clone()));
        Ok((fd, OsStr::from_bytes(name)))
    }

    /// Forgets the cached parent (after renaming or removing directories).
    pub fn forget(&self) {
        *self.cache.borrow_mut() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(t.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("abs")).unwrap();
        let r = Root::open(&root).unwrap();
        for bad in [
            &b"../secret"[..],
            b"/etc/passwd",
            b"up/secret",
            b"abs/secret",
            b"d/../../secret",
            b"",
        ] {
            let res = r.open_at(bad, OFlags::RDONLY, Mode::empty());
            if bad.is_empty() {
                continue; // the root itself is fine
            }
            assert!(res.is_err(), "{:?} opened", String::from_utf8_lossy(bad));
        }
        assert!(r.parent(b"up/x").is_err());
        assert!(r.parent(b"d/x").is_ok());
    }
}
