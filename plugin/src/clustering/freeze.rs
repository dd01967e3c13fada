//! Freezing a block volume's mounted filesystem for the scan of a sealed
//! standby round (issue 14, failover).
//!
//! A standby copy is only worth taking over if it holds an image the
//! filesystem could have been unmounted as. `fsfreeze -f` (FIFREEZE) flushes
//! the journal and blocks every writer, so the image read while frozen is
//! exactly such an image.
//!
//! The freeze covers the scan and the send of a small round (what was
//! written since the last one, the kernel-tracked writes read alone), not
//! just the scan: the thaw itself rewrites the superblock (ext4 sets its
//! needs_recovery flag again), so a chunk scanned frozen and read after the
//! thaw always differs, and the exact round fails (measured on the Swarm:
//! every such round failed). A round too big for that is sent unfrozen,
//! unsealed (`clustering::standby`).
//!
//! The freeze is bounded: [`Frozen`] thaws when dropped (also on an error
//! or a panic, by unwinding), a watchdog thread thaws it at its limit
//! whatever the round does (the round then fails its exact check if
//! anything changed, and commits nothing), and a marker file per frozen
//! volume lets the next daemon start thaw what a killed daemon left frozen
//! ([`thaw_left`]). The commands run through `fsfreeze` (the crate forbids
//! `unsafe`, and so a raw ioctl), each bounded by `timeout`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest `fsfreeze -f` may take (it syncs first: the standby tick
/// flushed the filesystem just before, so it is quick).
const FREEZE_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum FreezeError {
    #[error("fsfreeze {what} {mountpoint}: {message}")]
    Command {
        what: &'static str,
        mountpoint: String,
        message: String,
    },
    #[error("freeze marker {path}: {source}")]
    Marker {
        path: String,
        source: std::io::Error,
    },
}

/// A frozen filesystem; thawed when dropped, or by its watchdog at its
/// limit.
#[derive(Debug)]
pub(crate) struct Frozen {
    mountpoint: PathBuf,
    marker: PathBuf,
    at: Instant,
    /// Thawed already (by [`Frozen::thaw`] or the watchdog), and when.
    thawed: Arc<Mutex<Option<Instant>>>,
    /// Dropped at the thaw: wakes the watchdog, which then ends.
    wake: Option<mpsc::Sender<()>>,
}

/// Thaws `mountpoint` unless `thawed` says it is already; the marker goes
/// with a thaw that worked.
fn thaw_once(
    mountpoint: &Path,
    marker: &Path,
    thawed: &Mutex<Option<Instant>>,
) -> Result<(), String> {
    let mut t = thawed.lock().unwrap_or_else(|e| e.into_inner());
    if t.is_some() {
        return Ok(());
    }
    fsfreeze("-u", mountpoint, FREEZE_LIMIT)?;
    *t = Some(Instant::now());
    let _ = std::fs::remove_file(marker);
    Ok(())
}

fn fsfreeze(flag: &str, mountpoint: &Path, limit: Duration) -> Result<(), String> {
    let out = Command::new("timeout")
        .arg("-s")
        .arg("KILL")
        .arg(format!("{}", limit.as_secs().max(1)))
        .arg("fsfreeze")
        .arg(flag)
        .arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// The marker file of a freeze of `mountpoint` in `markers`.
fn marker_of(markers: &Path, mountpoint: &Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    markers.join(format!("{name}.frozen"))
}

/// Freezes the filesystem mounted at `mountpoint` for at most `max`,
/// leaving a marker in `markers` (written first: a daemon killed between the
/// two thaws a filesystem that was never frozen, which is harmless).
pub(crate) fn freeze(
    mountpoint: &Path,
    markers: &Path,
    max: Duration,
) -> Result<Frozen, FreezeError> {
    // FIFREEZE freezes whatever filesystem holds the path: never anything
    // but the volume's own mount.
    if !crate::backend::sys::is_mountpoint(mountpoint) {
        return Err(FreezeError::Command {
            what: "-f",
            mountpoint: mountpoint.display().to_string(),
            message: "not a mountpoint (nothing of the volume's to freeze)".into(),
        });
    }
    let marker = marker_of(markers, mountpoint);
    let mark = || -> std::io::Result<()> {
        std::fs::create_dir_all(markers)?;
        std::fs::write(&marker, mountpoint.as_os_str().as_encoded_bytes())
    };
    mark().map_err(|source| FreezeError::Marker {
        path: marker.display().to_string(),
        source,
    })?;
    let at = Instant::now();
    if let Err(message) = fsfreeze("-f", mountpoint, FREEZE_LIMIT) {
        // A freeze killed by the timeout may still have frozen it.
        let _ = fsfreeze("-u", mountpoint, FREEZE_LIMIT);
        let _ = std::fs::remove_file(&marker);
        return Err(FreezeError::Command {
            what: "-f",
            mountpoint: mountpoint.display().to_string(),
            message,
        });
    }
    let thawed = Arc::new(Mutex::new(None));
    let (wake, woken) = mpsc::channel::<()>();
    {
        let (mp, mk, th) = (mountpoint.to_owned(), marker.clone(), thawed.clone());
        std::thread::spawn(move || {
            if woken.recv_timeout(max) == Err(RecvTimeoutError::Timeout) {
                match thaw_once(&mp, &mk, &th) {
                    Ok(()) => {
                        tracing::warn!(mountpoint = %mp.display(), limit_ms = crate::migrate::report::millis(max), "freeze limit reached: thawed")
                    }
                    Err(e) => {
                        tracing::error!(mountpoint = %mp.display(), error = %e, "thawing a frozen volume at its limit")
                    }
                }
            }
        });
    }
    Ok(Frozen {
        mountpoint: mountpoint.to_owned(),
        marker,
        at,
        thawed,
        wake: Some(wake),
    })
}

impl Frozen {
    /// Thaws now (if the watchdog did not); how long the filesystem stayed
    /// frozen.
    pub(crate) fn thaw(mut self) -> Result<Duration, FreezeError> {
        let r = thaw_once(&self.mountpoint, &self.marker, &self.thawed);
        self.wake.take();
        // The marker stays if the thaw failed: the next start retries it.
        r.map_err(|message| FreezeError::Command {
            what: "-u",
            mountpoint: self.mountpoint.display().to_string(),
            message,
        })?;
        let t = self.thawed.lock().unwrap_or_else(|e| e.into_inner());
        Ok(t.map_or_else(|| self.at.elapsed(), |at| at - self.at))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = thaw_once(&self.mountpoint, &self.marker, &self.thawed) {
            tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "thawing a frozen volume");
        }
        self.wake.take();
    }
}

/// At start: thaws every filesystem a previous run left frozen (killed
/// between its freeze and thaw). Returns the mountpoints thawed.
pub(crate) fn thaw_left(markers: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(markers) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("frozen") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let mp = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
        // Only the volume's own mount (FITHAW thaws whatever filesystem
        // holds the path); "not frozen" (EINVAL) is the usual answer.
        if !crate::backend::sys::is_mountpoint(&mp) {
            let _ = std::fs::remove_file(&p);
            out.push(mp);
            continue;
        }
        match fsfreeze("-u", &mp, FREEZE_LIMIT) {
            Ok(()) => {
                tracing::warn!(mountpoint = %mp.display(), "thawed a volume a previous run left frozen")
            }
            Err(e) => tracing::debug!(mountpoint = %mp.display(), error = %e, "thaw at start"),
        }
        let _ = std::fs::remove_file(&p);
        out.push(mp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_that_fails_leaves_no_marker_and_a_leftover_marker_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let markers = dir.path().join("frozen");
        // Not a mountpoint (it would freeze the filesystem holding it):
        // refused before fsfreeze, nothing stays behind.
        let err = freeze(dir.path(), &markers, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("not a mountpoint"), "{err}");
        assert!(!markers.exists());
        // A killed daemon's marker: thawed (here: refused, not frozen) and gone.
        let m = marker_of(&markers, Path::new("/var/lib/daffe/x/data"));
        std::fs::create_dir_all(&markers).unwrap();
        std::fs::write(&m, "/var/lib/daffe/x/data").unwrap();
        assert_eq!(
            thaw_left(&markers),
            [PathBuf::from("/var/lib/daffe/x/data")]
        );
        assert!(!m.exists());
    }
}
