//! Removing a finished round's files off the round's critical path.
//!
//! Once a round is promoted, its round dir (pack, op streams, journal) and
//! any seed dir are garbage. Deleting them used to be the round's last step,
//! and so part of a migration's downtime: a final round's pack of page
//! patches is a sparse file with one extent per patched page, and on a busy
//! ext4 its unlink took 10 s (9,400 page patches, 75 MB, while other builds
//! wrote to the same filesystem; measured with strace, issue 11). Now the
//! dir is renamed (one metadata op) into `discard/` in the state dir and
//! removed by a background thread. A process that exits first leaves it
//! there; the next round's sweep removes it. Nothing reads `discard/`, so a
//! half-removed entry is harmless.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use super::error::{ReceiveError, io_err};

/// The state dir's folder of entries waiting to be removed.
pub(super) const DISCARD_DIR: &str = "discard";

/// Moves `dir` (inside the state dir `state`) into `discard/` and starts its
/// removal in the background. A missing `dir` is not an error. The handle
/// is for tests; callers drop it.
pub(super) fn discard(state: &Path, dir: &Path) -> Result<Option<JoinHandle<()>>, ReceiveError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(None);
    }
    let bin = state.join(DISCARD_DIR);
    std::fs::create_dir_all(&bin).map_err(io_err(b"discard dir"))?;
    std::fs::rename(dir, bin.join(unique_name())).map_err(io_err(b"round dir"))?;
    Ok(Some(sweep(state)))
}

/// Removes everything in `discard/` on a background thread (leftovers of
/// a process that exited before its removal finished).
pub(super) fn sweep(state: &Path) -> JoinHandle<()> {
    let bin = state.join(DISCARD_DIR);
    std::thread::spawn(move || remove_entries(&bin))
}

/// Removes each entry of `bin`; errors are ignored (another sweep may be
/// removing the same entry, and what is left goes at the next sweep).
fn remove_entries(bin: &Path) {
    let Ok(rd) = std::fs::read_dir(bin) else {
        return;
    };
    for e in rd.flatten() {
        let p: PathBuf = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let _ = std::fs::remove_dir_all(&p);
            }
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// A name no other discard of this or another process uses.
fn unique_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discarded_dir_leaves_its_place_at_once_and_is_removed_in_the_background() {
        let state = tempfile::tempdir().unwrap();
        let round = state.path().join("round");
        std::fs::create_dir_all(round.join("stage")).unwrap();
        std::fs::write(round.join("pack"), vec![7u8; 1 << 16]).unwrap();
        let h = discard(state.path(), &round)
            .unwrap()
            .expect("a dir to discard");
        // The round dir's name is free before the removal finishes: the
        // next round can start at once.
        assert!(!round.exists());
        h.join().unwrap();
        let left: Vec<_> = std::fs::read_dir(state.path().join(DISCARD_DIR))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(discard(state.path(), &round).unwrap().is_none());
    }

    #[test]
    fn a_sweep_removes_what_an_exited_process_left() {
        let state = tempfile::tempdir().unwrap();
        let bin = state.path().join(DISCARD_DIR);
        std::fs::create_dir_all(bin.join("1-2-3/stage")).unwrap();
        std::fs::write(bin.join("1-2-3/pack"), b"x").unwrap();
        std::fs::write(bin.join("stray"), b"x").unwrap();
        sweep(state.path()).join().unwrap();
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 0);
        // Two names taken in a row differ.
        assert_ne!(unique_name(), unique_name());
    }
}
