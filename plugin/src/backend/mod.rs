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

pub mod local;
pub mod local_block;
pub mod local_dir;
pub mod sys;

use profiles::{BackendKind, Settings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a backend gets to work on: a volume's NAME and its resolved settings.
#[derive(Debug, Clone, Copy)]
pub struct VolumeRef<'a> {
    pub name: &'a str,
    pub settings: &'a Settings,
}

/// Backend-specific facts for Get's `Status` (`docker volume inspect`).
pub type Status = BTreeMap<String, serde_json::Value>;

pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Makes the storage (directory; sparse image + mkfs; EBS CreateVolume).
    fn create(&self, vol: VolumeRef<'_>) -> Result<(), BackendError>;

    /// Deletes the storage and its data; unmounts first if still mounted.
    fn remove(&self, vol: VolumeRef<'_>) -> Result<(), BackendError>;

    /// Attaches, formats if new, mounts; returns the mountpoint. Called on the
    /// volume's first mount only. An already mounted volume is success.
    fn mount(&self, vol: VolumeRef<'_>) -> Result<PathBuf, BackendError>;

    /// Unmounts and detaches. Called at the volume's last unmount only. A
    /// volume that is not mounted is success.
    fn unmount(&self, vol: VolumeRef<'_>) -> Result<(), BackendError>;

    /// Where the volume is (or will be) mounted; no I/O.
    fn path(&self, vol: VolumeRef<'_>) -> PathBuf;

    /// Facts for `docker volume inspect`; cheap (no remote calls).
    fn status(&self, vol: VolumeRef<'_>) -> Status;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("volume {volume:?}: settings are for the {got} backend, this host runs {want}")]
    WrongBackend {
        volume: String,
        got: BackendKind,
        want: BackendKind,
    },
    #[error("volume {volume:?}: {what} {path}: {source}")]
    Io {
        volume: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume {volume:?}: {source}")]
    Command {
        volume: String,
        source: sys::CommandError,
    },
    #[error("volume {volume:?}: {message}")]
    Other { volume: String, message: String },
    #[error("the {0} backend is not available in this build")]
    Unavailable(BackendKind),
}

impl BackendError {
    pub(crate) fn io(
        volume: &str,
        what: &'static str,
        path: &Path,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            volume: volume.to_owned(),
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// The backend a host runs, made from its kind.
pub fn open(kind: BackendKind) -> Result<Arc<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Local => Ok(Arc::new(local::LocalBackend)),
        // The EBS backend lands with the EBS work; refusing here keeps a host
        // configured for EBS from silently storing volumes locally.
        BackendKind::Ebs => Err(BackendError::Unavailable(kind)),
    }
}
