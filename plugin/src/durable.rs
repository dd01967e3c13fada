//! The one way the daemon replaces a small state file it must not lose
//! (create records, kept marks, migration tokens, the profile catalog): a
//! temporary file beside it, fsync, rename over it, fsync of the directory.
//! A crash leaves the old file or the new one, never half of one, and a
//! replace that returned survives a power cut (the rename is in the
//! directory, which is synced too).
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `bytes`, making its directory if needed. The new
/// file has `mode` (less the umask): state files are the daemon's alone.
pub(crate) fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?
        .to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    fs::create_dir_all(dir)?;
    // A temporary file left by a crash keeps its old mode through a
    // truncating open; a new one gets `mode`.
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_replace_leaves_the_new_bytes_with_the_mode_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/record.json");
        replace(&path, b"old", 0o600).unwrap();
        // A crash's leftover, readable by all: replaced, not reused.
        let tmp = dir.path().join("state/record.json.tmp");
        fs::write(&tmp, b"half").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        replace(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["record.json"]);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        replace(&path, b"old", 0o600).unwrap();
        // The rename fails: a directory stands where the file would go.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(replace(&blocked, b"new", 0o600).is_err());
        assert!(!dir.path().join("blocked.tmp").exists());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(
            replace(Path::new("/"), b"x", 0o600).is_err(),
            "no file name"
        );
    }
}
