//! What [`crate::sync`] checks before it creates or reads anything:
//! - the source exists and is of the kind asked for (a missing source must not
//!   leave a new, empty destination and state dir behind);
//! - source and destination do not overlap (a destination inside the source
//!   copies itself one level deeper on every run; a source inside the
//!   destination would be deleted by the sync);
//! - a destination that daffe did not make is not overwritten unless the
//!   caller said so: `sync` makes the destination identical to the source, so
//!   every file there that the source lacks is deleted (rsync deletes only
//!   with `--delete`; so does `daffe sync`).
//!
//! The path logic is pure ([`overlap`], [`normalize`]); [`check`] does the
//! few `stat`s around it.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use crate::receive::Destination;
use crate::source::Source;

/// Why a sync was refused before it started. Nothing was created or changed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The source cannot be read.
    #[error("source {}: {source}", path.display())]
    Source {
        /// The source.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A tree sync whose source is not a directory.
    #[error("source {} is not a directory", .0.display())]
    NotATree(PathBuf),
    /// An image sync whose source is not a regular file or block device.
    #[error("source {} is not a regular file or block device", .0.display())]
    NotAnImage(PathBuf),
    /// The destination cannot be checked.
    #[error("destination {}: {source}", path.display())]
    Destination {
        /// The destination.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The source is the destination.
    #[error("source and destination are the same: {}", .0.display())]
    Same(PathBuf),
    /// The destination lies inside the source.
    #[error(
        "destination {} is inside the source {}: every run would copy the last one again",
        dst.display(),
        src.display()
    )]
    DestinationInsideSource {
        /// The source.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
    },
    /// The source lies inside the destination.
    #[error(
        "source {} is inside the destination {}: the sync would delete it",
        src.display(),
        dst.display()
    )]
    SourceInsideDestination {
        /// The source.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
    },
    /// A non-empty directory daffe never synced to (see `SyncOptions::allow_foreign`).
    #[error(
        "destination {} is not empty and daffe has not synced to it before: its files that the \
         source lacks would be deleted (pass --delete to allow that)",
        .0.display()
    )]
    ForeignDestination(PathBuf),
    /// A non-empty image daffe never synced to (see `SyncOptions::allow_foreign`).
    #[error(
        "destination {} is an existing image that daffe has not synced to before: it would be \
         overwritten (pass --delete to allow that)",
        .0.display()
    )]
    ForeignImage(PathBuf),
}

/// How two paths overlap, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    DestinationInsideSource,
    SourceInsideDestination,
}

/// Lexical normal form of an absolute path: `.` dropped, `..` taken back
/// (never above `/`). Symlinks are resolved by the caller first, for the part
/// of the path that exists.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// How `src` and `dst` (both absolute and normalized) overlap.
pub fn overlap(src: &Path, dst: &Path) -> Option<Overlap> {
    if src == dst {
        Some(Overlap::Same)
    } else if dst.starts_with(src) {
        Some(Overlap::DestinationInsideSource)
    } else if src.starts_with(dst) {
        Some(Overlap::SourceInsideDestination)
    } else {
        None
    }
}

/// The real path of `p`, which may not exist yet: its nearest existing
/// ancestor is canonicalized (symlinks resolved), the rest joined lexically.
fn real_path(p: &Path) -> io::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let abs = normalize(&abs);
    let mut existing = abs.as_path();
    let mut tail = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                let mut out = real;
                out.extend(tail.iter().rev());
                return Ok(normalize(&out));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(e);
                };
                tail.push(name.to_owned());
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `state_dir` holds daffe state for a destination: an applied round,
/// or a round in progress (its staged data or a commit to replay).
pub fn has_sync_state(state_dir: &Path) -> bool {
    state_dir.join("applied.manifest").exists() || state_dir.join("round").exists()
}

/// Runs the checks. `allow_foreign`: the caller accepts that a destination
/// daffe never synced to loses what the source lacks (`--delete`).
pub fn check(
    src: &Source,
    dst: &Destination,
    state_dir: &Path,
    allow_foreign: bool,
) -> Result<(), PreflightError> {
    let src_path = src.path();
    let meta = std::fs::metadata(src_path).map_err(|source| PreflightError::Source {
        path: src_path.to_owned(),
        source,
    })?;
    match src {
        Source::Tree(p) if !meta.is_dir() => return Err(PreflightError::NotATree(p.clone())),
        Source::Image(p) if !(meta.is_file() || meta.file_type().is_block_device()) => {
            return Err(PreflightError::NotAnImage(p.clone()));
        }
        _ => {}
    }
    let dst_path = dst.path();
    let dst_err = |source| PreflightError::Destination {
        path: dst_path.to_owned(),
        source,
    };
    let real_src = real_path(src_path).map_err(|source| PreflightError::Source {
        path: src_path.to_owned(),
        source,
    })?;
    let real_dst = real_path(dst_path).map_err(dst_err)?;
    match overlap(&real_src, &real_dst) {
        Some(Overlap::Same) => return Err(PreflightError::Same(real_src)),
        Some(Overlap::DestinationInsideSource) => {
            return Err(PreflightError::DestinationInsideSource {
                src: real_src,
                dst: real_dst,
            });
        }
        Some(Overlap::SourceInsideDestination) => {
            return Err(PreflightError::SourceInsideDestination {
                src: real_src,
                dst: real_dst,
            });
        }
        None => {}
    }
    if allow_foreign || has_sync_state(state_dir) {
        return Ok(());
    }
    match dst {
        Destination::Tree(p) => match std::fs::read_dir(p) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(PreflightError::ForeignDestination(p.clone()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(dst_err(e)),
        },
        Destination::Image(p) => match std::fs::metadata(p) {
            // An empty file is nothing to lose.
            Ok(m) if m.is_file() && m.len() == 0 => {}
            Ok(_) => return Err(PreflightError::ForeignImage(p.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(dst_err(e)),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps() {
        let cases = [
            ("/a/src", "/a/dst", None),
            ("/a/src", "/a/src", Some(Overlap::Same)),
            (
                "/a/src",
                "/a/src/dst",
                Some(Overlap::DestinationInsideSource),
            ),
            ("/a/src/x", "/a/src", Some(Overlap::SourceInsideDestination)),
            ("/", "/a", Some(Overlap::DestinationInsideSource)),
            // A shared prefix of characters is not containment.
            ("/a/src", "/a/srcdst", None),
            ("/a/srcdst", "/a/src", None),
        ];
        for (src, dst, want) in cases {
            assert_eq!(overlap(Path::new(src), Path::new(dst)), want, "{src} {dst}");
        }
    }

    #[test]
    fn normalizes_lexically() {
        let cases = [
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/../../a", "/a"),
            ("/a/b/", "/a/b"),
            ("/", "/"),
        ];
        for (p, want) in cases {
            assert_eq!(normalize(Path::new(p)), Path::new(want), "{p}");
        }
    }

    fn tree(src: &Path, dst: &Path) -> (Source, Destination) {
        (Source::Tree(src.into()), Destination::Tree(dst.into()))
    }

    #[test]
    fn refuses_before_creating_anything() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("state"),
        );
        // Missing source.
        let (s, d) = tree(&src, &dst);
        assert!(matches!(
            check(&s, &d, &state, false),
            Err(PreflightError::Source { .. })
        ));
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        // A file is not a tree, a directory not an image.
        let (s, d) = tree(&src.join("f"), &dst);
        assert!(matches!(
            check(&s, &d, &state, false),
            Err(PreflightError::NotATree(_))
        ));
        let s = Source::Image(src.clone());
        let d = Destination::Image(dst.clone());
        assert!(matches!(
            check(&s, &d, &state, false),
            Err(PreflightError::NotAnImage(_))
        ));
        // Overlaps, also through `..` and a symlink, also with --delete.
        std::os::unix::fs::symlink(&src, t.path().join("link")).unwrap();
        for (d, allow) in [
            (src.clone(), true),
            (src.join("inner"), true),
            (src.join("x/../inner2"), false),
            (t.path().join("link/inner"), true),
        ] {
            let (s, d) = tree(&src, &d);
            let r = check(&s, &d, &state, allow);
            assert!(
                matches!(
                    r,
                    Err(PreflightError::Same(_) | PreflightError::DestinationInsideSource { .. })
                ),
                "{r:?}"
            );
        }
        let s = Source::Image(src.join("f"));
        let d = Destination::Image(src.clone());
        assert!(matches!(
            check(&s, &d, &state, true),
            Err(PreflightError::SourceInsideDestination { .. })
        ));
        // A missing or empty destination is fine; a non-empty one needs
        // --delete, unless daffe synced to it before.
        let (s, d) = tree(&src, &dst);
        check(&s, &d, &state, false).unwrap();
        std::fs::create_dir(&dst).unwrap();
        check(&s, &d, &state, false).unwrap();
        std::fs::write(dst.join("precious"), b"y").unwrap();
        assert!(matches!(
            check(&s, &d, &state, false),
            Err(PreflightError::ForeignDestination(_))
        ));
        check(&s, &d, &state, true).unwrap();
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("applied.manifest"), b"").unwrap();
        check(&s, &d, &state, false).unwrap();
        // Nothing above created the destination's state or a new path.
        assert!(!t.path().join("src/inner").exists());
        assert!(!t.path().join("src/inner2").exists());
    }

    #[test]
    fn an_existing_image_needs_delete() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, state) = (
            t.path().join("a.img"),
            t.path().join("b.img"),
            t.path().join("state"),
        );
        std::fs::write(&src, b"data").unwrap();
        let (s, d) = (Source::Image(src), Destination::Image(dst.clone()));
        check(&s, &d, &state, false).unwrap();
        std::fs::write(&dst, b"").unwrap();
        check(&s, &d, &state, false).unwrap();
        std::fs::write(&dst, b"old").unwrap();
        assert!(matches!(
            check(&s, &d, &state, false),
            Err(PreflightError::ForeignImage(_))
        ));
        check(&s, &d, &state, true).unwrap();
    }
}
