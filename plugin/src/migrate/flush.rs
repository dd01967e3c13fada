//! Before each pre-copy round of a block volume: `syncfs(2)` on its mounted
//! filesystem, so the image file the round reads holds what the filesystem
//! holds. Without it the kernel keeps written data as dirty pages for up
//! to ~30 s (dirty expiry); a round reads a stale image, the estimate is
//! too small, and the data lands in the final round, as downtime.
//!
//! Bounded: syncfs runs on a thread and is waited for up to a limit; a
//! flush that takes longer (a writer faster than the disk) is reported and
//! the round goes on: it reads what is on disk, and the final round, after
//! the unmount, is exact anyway.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one flush may hold up a round.
pub(crate) const FLUSH_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("flushing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("flushing {path}: still running after {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
}

/// `syncfs` on the filesystem holding `dir`; returns how long it took.
pub(crate) fn syncfs(dir: &Path, limit: Duration) -> Result<Duration, FlushError> {
    let t = Instant::now();
    let path = dir.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::File::open(&path)
            .and_then(|f| rustix::fs::syncfs(&f).map_err(std::io::Error::from));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok(t.elapsed()),
        Ok(Err(source)) => Err(FlushError::Io {
            path: dir.to_path_buf(),
            source,
        }),
        Err(_) => Err(FlushError::Timeout {
            path: dir.to_path_buf(),
            secs: limit.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_flushed_and_a_missing_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"data").unwrap();
        assert!(syncfs(d.path(), FLUSH_LIMIT).unwrap() < FLUSH_LIMIT);
        let err = syncfs(&d.path().join("missing"), FLUSH_LIMIT).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
