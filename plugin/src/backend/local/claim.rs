//! Which volume directories daffe made (issue 12, finding 10): Create never
//! adopts a directory that is already at a volume's place, and Remove never
//! deletes one daffe did not make. The proof is a marker file, written in
//! `ROOT/NAME` before that directory gets its name: the directory is built
//! under a temporary name and renamed into place with `RENAME_NOREPLACE`,
//! so it never exists at its name without the marker, and an existing
//! directory there is never replaced. Containers see only `ROOT/NAME/data`,
//! so they cannot forge the marker.

use super::super::{BackendError, sys};
use super::paths::LocalPaths;
use rustix::fs::{CWD, RenameFlags, renameat_with};
use std::path::{Path, PathBuf};

/// The marker's name in `ROOT/NAME`.
pub(crate) const MARKER: &str = ".daffe-volume";

/// Whether daffe made the volume's directory (its marker is there, a
/// regular file: a symlink planted by someone else does not count).
pub(crate) fn is_ours(p: &LocalPaths) -> bool {
    std::fs::symlink_metadata(p.dir.join(MARKER)).is_ok_and(|m| m.file_type().is_file())
}

/// Where `ROOT/NAME` is built before its rename: beside it, named for it,
/// so a Create redone after a crash clears what the last one left.
fn staging(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.daffe-new"))
}

/// Makes `ROOT/NAME` (private, with the marker), or accepts it if daffe
/// made it (a Create redone). Any other directory or file there is refused.
pub(crate) fn claim(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    if is_ours(p) {
        return Ok(());
    }
    if let Some(root) = p.dir.parent() {
        std::fs::create_dir_all(root).map_err(|e| BackendError::io(name, "creating", root, e))?;
    }
    let tmp = staging(&p.dir);
    match std::fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BackendError::io(name, "clearing", &tmp, e)),
    }
    let built = sys::private_dir(&tmp)
        .and_then(|()| {
            let marker = tmp.join(MARKER);
            std::fs::write(&marker, format!("daffe volume {name}\n"))?;
            std::fs::File::open(&marker)?.sync_all()
        })
        .map_err(|e| BackendError::io(name, "building", &tmp, e));
    let placed = built.and_then(|()| {
        renameat_with(CWD, &tmp, CWD, &p.dir, RenameFlags::NOREPLACE).map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                not_ours(name, &p.dir)
            } else {
                BackendError::io(name, "placing", &p.dir, e.into())
            }
        })
    });
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    placed
}

/// The refusal for a directory at a volume's place that daffe did not make.
pub(crate) fn not_ours(name: &str, dir: &Path) -> BackendError {
    BackendError::Other {
        volume: name.to_owned(),
        message: format!(
            "{} already exists and daffe did not make it (no {MARKER} marker); daffe never \
             adopts or deletes a directory it did not make: move it away, or pick another name",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiles::{LocalFormat, LocalSettings};

    fn paths(root: &Path) -> LocalPaths {
        LocalPaths::new(
            "db",
            &LocalSettings {
                root: root.to_owned(),
                format: LocalFormat::Dir,
                size: None,
                filesystem: None,
            },
        )
    }

    #[test]
    fn claims_a_new_place_once_and_refuses_a_foreign_one() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(&t.path().join("root"));
        claim("db", &p).unwrap();
        assert!(is_ours(&p));
        claim("db", &p).unwrap(); // redone
        let names: Vec<_> = std::fs::read_dir(t.path().join("root"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("db")], "no staging left");

        // Someone else's directory, empty or not, and a file: refused, untouched.
        let q = paths(&t.path().join("other"));
        for plant in ["empty", "full", "file"] {
            let _ = std::fs::remove_dir_all(&q.dir);
            let _ = std::fs::remove_file(&q.dir);
            std::fs::create_dir_all(q.dir.parent().unwrap()).unwrap();
            match plant {
                "empty" => std::fs::create_dir(&q.dir).unwrap(),
                "full" => {
                    std::fs::create_dir_all(&q.data).unwrap();
                    std::fs::write(q.data.join("precious"), b"x").unwrap();
                }
                _ => std::fs::write(&q.dir, b"x").unwrap(),
            }
            let err = claim("db", &q).unwrap_err().to_string();
            assert!(err.contains("daffe did not make it"), "{plant}: {err}");
            assert!(!is_ours(&q), "{plant}");
            if plant == "full" {
                assert!(q.data.join("precious").exists());
            }
        }
        // A marker that is a symlink is no marker.
        std::fs::remove_file(&q.dir).unwrap();
        std::fs::create_dir(&q.dir).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", q.dir.join(MARKER)).unwrap();
        assert!(!is_ours(&q));
        assert!(claim("db", &q).is_err());
    }
}
