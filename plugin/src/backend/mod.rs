//! Storage backends: what makes, attaches, mounts and deletes a volume's
//! storage. The service decides *when* (first Mount, last Unmount, rollback);
//! a backend only knows *how*.
//!
//! The trait is synchronous on purpose: local backends run mkfs and mount(8),
//! and the EBS backend blocks on its async AWS calls internally. The service
//! calls backends on tokio's blocking pool under a time limit, so a hung
//! device never stalls the socket.
//!
//! Every method must be idempotent: after a crash the service may repeat a
//! create, mount, unmount or remove that already happened (wholly or in part).

pub(crate) mod change;
pub(crate) mod ebs;
pub(crate) mod local;
pub(crate) mod mountpoint;
pub(crate) mod sys;
pub(crate) mod usage;

use profiles::{BackendKind, Settings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a backend gets to work on: a volume's NAME and its resolved settings
/// (plus its profile and docker name, which the EBS backend writes into the
/// volume's tags so records can be rebuilt from AWS).
#[derive(Debug, Clone, Copy)]
pub(crate) struct VolumeRef<'a> {
    pub(crate) name: &'a str,
    pub(crate) settings: &'a Settings,
    pub(crate) profile: &'a str,
    pub(crate) docker_name: &'a str,
}

/// A volume the backend's storage holds, as found at start (EBS: tagged for
/// this host's cluster and zone), for rebuilding a lost record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Discovered {
    pub(crate) name: String,
    pub(crate) profile: String,
    pub(crate) docker_name: String,
    pub(crate) created_at: Option<u64>,
    /// Settings read from the storage itself; `keep_on_remove` is the
    /// service's to decide (from the profile).
    pub(crate) settings: Settings,
    /// The storage's own id (EBS volume id), for logs.
    pub(crate) storage_id: String,
    /// Nobody owns it yet: adopting it claims it for this host.
    pub(crate) unclaimed: bool,
}

/// Backend-specific facts for Get's `Status` (`docker volume inspect`).
pub(crate) type Status = BTreeMap<String, serde_json::Value>;

pub(crate) trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Makes the storage (directory; sparse image + mkfs; EBS CreateVolume).
    fn create(&self, vol: VolumeRef<'_>) -> Result<(), BackendError>;

    /// Whether `create` could make this volume here, asked before work
    /// that needs it (a migration checks before sending); no changes.
    fn check_create(&self, _vol: VolumeRef<'_>) -> Result<(), BackendError> {
        Ok(())
    }

    /// Deletes the storage and its data; unmounts first if still mounted.
    fn remove(&self, vol: VolumeRef<'_>) -> Result<(), BackendError>;

    /// Attaches, formats if new, mounts; returns the mountpoint. Called on the
    /// volume's first mount only. An already mounted volume is success.
    fn mount(&self, vol: VolumeRef<'_>) -> Result<PathBuf, BackendError>;

    /// Unmounts and detaches. Called at the volume's last unmount only. A
    /// volume that is not mounted is success.
    fn unmount(&self, vol: VolumeRef<'_>) -> Result<(), BackendError>;

    /// After a run of this daemon was killed with the volume mounted:
    /// unmounts what that run left mounted here, and proves that nothing
    /// else holds the volume any more (the containers that mounted it are
    /// gone). `Ok` only then; the error says what still holds it, or that
    /// this backend cannot tell.
    fn release_left(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        Err(BackendError::Other {
            volume: vol.name.to_owned(),
            message: format!("the {} backend cannot prove a volume released", self.kind()),
        })
    }

    /// Where the volume is (or will be) mounted; no I/O.
    fn path(&self, vol: VolumeRef<'_>) -> PathBuf;

    /// Facts for `docker volume inspect`; cheap (no remote calls).
    fn status(&self, vol: VolumeRef<'_>) -> Status;

    /// Who knows where the volume was written since a scan into
    /// `cache_dir` (local block volumes' images: `local::writes`; local dir
    /// volumes' files on ext4: `local::dir_writes`); `None`: a changed image
    /// or file is read whole.
    fn write_changes(
        &self,
        _vol: VolumeRef<'_>,
        _cache_dir: &std::path::Path,
    ) -> Option<std::sync::Arc<dyn mover::ImageChanges>> {
        None
    }

    /// Volumes the storage holds for this host (rebuilding records from
    /// the storage); local storage has nothing to report.
    fn discover(&self) -> Result<Vec<Discovered>, BackendError> {
        Ok(Vec::new())
    }

    /// Takes a discovered volume as this host's (EBS: claims it by tag).
    fn adopt(&self, _found: &Discovered) -> Result<(), BackendError> {
        Ok(())
    }

    /// Applies a planned settings change (`change::plan`) to the storage.
    /// Backends without remote changes accept record-only plans.
    fn apply_change(
        &self,
        vol: VolumeRef<'_>,
        change: &change::SettingsChange,
    ) -> Result<(), BackendError> {
        match &change.modify {
            None => Ok(()),
            Some(_) => Err(BackendError::Other {
                volume: vol.name.to_owned(),
                message: format!("the {} backend cannot modify volumes", self.kind()),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("volume {volume:?}: settings are for the {got} backend, this host runs {want}")]
    WrongBackend {
        volume: String,
        got: BackendKind,
        want: BackendKind,
    },
    #[error(transparent)]
    Io(#[from] VolumeIoError),
    #[error("volume {volume:?}: {source}")]
    Command {
        volume: String,
        source: sys::CommandError,
    },
    #[error("volume {volume:?}: {message}")]
    Other { volume: String, message: String },
    #[error(transparent)]
    Ebs(#[from] Box<ebs::EbsError>),
    #[error("starting the EBS backend: {0}")]
    EbsStart(String),
}

impl From<ebs::EbsError> for BackendError {
    fn from(e: ebs::EbsError) -> Self {
        Self::Ebs(Box::new(e))
    }
}

/// A file operation on a volume's storage that failed (either backend).
#[derive(Debug, thiserror::Error)]
#[error("volume {volume:?}: {what} {path}: {source}")]
pub(crate) struct VolumeIoError {
    pub(crate) volume: String,
    pub(crate) what: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) source: std::io::Error,
}

impl BackendError {
    pub(crate) fn io(
        volume: &str,
        what: &'static str,
        path: &Path,
        source: std::io::Error,
    ) -> Self {
        Self::Io(VolumeIoError {
            volume: volume.to_owned(),
            what,
            path: path.to_owned(),
            source,
        })
    }
}

/// The storage a host runs: its backend, and, when that is the EBS backend,
/// the same backend as its own type for what only EBS does (the zone
/// migration's steps, re-tagging a volume's profile). Typed at start, so
/// nothing asks a `dyn Backend` what it really is.
#[derive(Clone)]
pub(crate) struct Storage {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) ebs: Option<Arc<ebs::EbsBackend>>,
}

impl Storage {
    /// A backend without EBS operations (local, or a test's fake).
    pub(crate) fn plain(backend: Arc<dyn Backend>) -> Self {
        Self { backend, ebs: None }
    }

    pub(crate) fn ebs(be: Arc<ebs::EbsBackend>) -> Self {
        Self {
            backend: be.clone(),
            ebs: Some(be),
        }
    }
}

/// The storage a host runs, made from its config (`backend`, `[aws]`, the
/// data root). The EBS backend fails to open (and the daemon to start)
/// rather than fall back to local storage.
pub(crate) fn open(
    kind: BackendKind,
    aws: &ebs::EbsConfig,
    data_root: &Path,
) -> Result<Storage, BackendError> {
    match kind {
        BackendKind::Local => Ok(Storage::plain(Arc::new(local::LocalBackend::new()))),
        BackendKind::Ebs => Ok(Storage::ebs(Arc::new(ebs::EbsBackend::open(
            aws, data_root,
        )?))),
    }
}
