//! A stand-in for EBS block devices, for tests on machines that are not EC2
//! instances (`[aws] device_resolver = "loop"`; built only for tests and
//! with the `testing` feature, which the end-to-end tests' build turns on,
//! never into a release binary): each volume id is backed by
//! a sparse file of the volume's size, `DIR/vol-....img`, put on a loop
//! device when the volume is attached, so tests mount real filesystems while
//! the EC2 side (attach, detach, delete) goes to moto.
//!
//! A volume created from a snapshot gets its file filled from the snapshot
//! as soon as the daemon that created it sees it `available`
//! ([`DeviceResolver::created`]), through a [`Hydrate`] function (the EBS
//! direct-API pull): EBS loads lazily, but a volume keeps its data once
//! created, so the snapshot may be deleted right after (what a migration
//! does). A volume first seen at attach (created by someone else) is filled
//! then. Hosts that share a volume's data share `loop_dir`.

use super::super::{BackendError, sys};
use super::config::EbsConfig;
use super::device::{DeviceError, DeviceResolver};
use super::wait::Deadline;
use crate::aws::VolumeFacts;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const GIB: u64 = 1 << 30;

/// Fills `path` with the content of snapshot `snapshot_id`.
pub(crate) type Hydrate = Arc<dyn Fn(&str, &Path) -> Result<(), String> + Send + Sync>;

pub(crate) struct LoopResolver {
    dir: PathBuf,
    hydrate: Option<Hydrate>,
}

impl std::fmt::Debug for LoopResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopResolver")
            .field("dir", &self.dir)
            .field("hydrate", &self.hydrate.is_some())
            .finish()
    }
}

/// Loop devices backing `file`, from `losetup -j FILE` output lines like
/// `/dev/loop3: [2049]:1234 (/path/file)`.
fn parse_losetup_j(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| l.split_once(':').map(|(dev, _)| PathBuf::from(dev.trim())))
        .filter(|p| p.as_os_str().len() > "/dev/loop".len())
        .collect()
}

/// Creates `path`'s parent directories, naming the path on failure.
fn ensure_dir(path: &Path) -> Result<(), DeviceError> {
    std::fs::create_dir_all(path).map_err(|source| DeviceError::Io {
        what: "creating",
        path: path.to_owned(),
        source,
    })
}

impl LoopResolver {
    pub(crate) fn new(dir: impl Into<PathBuf>, hydrate: Option<Hydrate>) -> Self {
        Self {
            dir: dir.into(),
            hydrate,
        }
    }

    pub(crate) fn file_of(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.img"))
    }

    fn loops_of(&self, file: &Path) -> Result<Vec<PathBuf>, DeviceError> {
        if !file.exists() {
            return Ok(Vec::new());
        }
        let out = sys::output("losetup", &[OsStr::new("-j"), file.as_os_str()])?;
        Ok(parse_losetup_j(&out))
    }

    /// Makes the backing file: from the snapshot if the volume has one,
    /// then (or else) sparse up to the volume's size.
    fn prepare(&self, vol: &VolumeFacts, file: &Path) -> Result<(), DeviceError> {
        ensure_dir(&self.dir)?;
        let io = |what: &'static str| {
            move |source| DeviceError::Io {
                what,
                path: file.to_owned(),
                source,
            }
        };
        if !file.exists()
            && let (Some(snap), Some(hydrate)) = (&vol.snapshot_id, &self.hydrate)
        {
            // Into a temporary name: a half-filled file must not look ready.
            let part = file.with_extension("part");
            hydrate(snap, &part).map_err(|message| DeviceError::Hydrate {
                volume_id: vol.id.clone(),
                snapshot_id: snap.clone(),
                message,
            })?;
            std::fs::rename(&part, file).map_err(io("renaming into"))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(file)
            .map_err(io("opening"))?;
        let want = vol.size_gib.saturating_mul(GIB);
        let len = f.metadata().map_err(io("reading the size of"))?.len();
        if len < want {
            // set_len past the end leaves a hole: no space used until written.
            f.set_len(want).map_err(io("sizing"))?;
        }
        Ok(())
    }
}

/// Fills a loop file from an EBS snapshot (the loop resolver's stand-in for
/// EBS's lazy loading), with the snapshot indexes in the state dir.
pub(super) fn snapshot_hydrator(cfg: &EbsConfig) -> Result<Hydrate, BackendError> {
    use mover::progress::NoProgress;
    use mover::snapshot::aws::AwsSnapshotApi;
    use mover::snapshot::{IndexStore, PullOptions, pull};
    let api = AwsSnapshotApi::connect(&cfg.aws_options())
        .map_err(|e| BackendError::EbsStart(e.to_string()))?;
    let store = IndexStore::new(cfg.snapshot_state_dir());
    Ok(Arc::new(move |snap: &str, path: &Path| {
        pull(
            &api,
            &store,
            snap,
            path,
            &PullOptions::default(),
            &NoProgress,
        )
        .map(drop)
        .map_err(|e| e.to_string())
    }))
}

impl DeviceResolver for LoopResolver {
    fn name(&self) -> &'static str {
        "loop"
    }

    fn wait_device(
        &self,
        vol: &VolumeFacts,
        _attach_device: &str,
        _deadline: &Deadline,
    ) -> Result<PathBuf, DeviceError> {
        let file = self.file_of(&vol.id);
        self.prepare(vol, &file)?;
        if let Some(dev) = self.loops_of(&file)?.into_iter().next() {
            return Ok(dev);
        }
        let out = sys::output(
            "losetup",
            &[OsStr::new("--find"), OsStr::new("--show"), file.as_os_str()],
        )?;
        Ok(PathBuf::from(out.trim()))
    }

    fn current(&self, volume_id: &str, _attach_device: Option<&str>) -> Option<PathBuf> {
        self.loops_of(&self.file_of(volume_id))
            .ok()?
            .into_iter()
            .next()
    }

    fn release(&self, volume_id: &str) -> Result<(), DeviceError> {
        for dev in self.loops_of(&self.file_of(volume_id))? {
            sys::run("losetup", &[OsStr::new("-d"), dev.as_os_str()])?;
        }
        Ok(())
    }

    fn created(&self, vol: &VolumeFacts) -> Result<(), DeviceError> {
        if vol.snapshot_id.is_none() {
            return Ok(());
        }
        self.prepare(vol, &self.file_of(&vol.id))
    }

    fn forget(&self, volume_id: &str) -> Result<(), DeviceError> {
        self.release(volume_id)?;
        let file = self.file_of(volume_id);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DeviceError::Io {
                what: "removing",
                path: file,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_losetup_j() {
        let out = "/dev/loop3: [2049]:1234 (/var/lib/x/vol-1.img)\n\
                   /dev/loop12: [2049]:1234 (/var/lib/x/vol-1.img)\n";
        assert_eq!(
            parse_losetup_j(out),
            vec![PathBuf::from("/dev/loop3"), PathBuf::from("/dev/loop12")]
        );
        assert!(parse_losetup_j("").is_empty());
    }

    #[test]
    fn backing_files_are_sparse_and_hydrated_once() {
        let t = tempfile::tempdir().unwrap();
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = calls.clone();
        let hydrate: Hydrate = Arc::new(move |snap: &str, path: &Path| {
            c.lock().unwrap().push(snap.to_owned());
            std::fs::write(path, b"from the snapshot").map_err(|e| e.to_string())
        });
        let r = LoopResolver::new(t.path(), Some(hydrate));
        let vol = VolumeFacts {
            id: "vol-1".into(),
            size_gib: 2,
            snapshot_id: Some("snap-1".into()),
            ..VolumeFacts::default()
        };
        let file = r.file_of("vol-1");
        // Filled at creation (the snapshot may go right after), not again
        // at attach.
        r.created(&vol).unwrap();
        assert!(file.exists());
        r.prepare(&vol, &file).unwrap();
        assert_eq!(*calls.lock().unwrap(), ["snap-1"], "hydrated once");
        // A volume not made from a snapshot has nothing to fill yet.
        let blank = VolumeFacts {
            id: "vol-2".into(),
            size_gib: 1,
            ..VolumeFacts::default()
        };
        r.created(&blank).unwrap();
        assert!(!r.file_of("vol-2").exists());
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len(), 2 * GIB);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < GIB, "sparse");
        let head = std::fs::read(&file).unwrap();
        assert!(head.starts_with(b"from the snapshot"));
        r.forget("vol-1").unwrap();
        assert!(!file.exists());
    }
}
