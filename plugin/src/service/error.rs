//! The service's one error type, and the code each error carries: what a
//! caller (docker, the CLI, a migration) can act on without reading the
//! message. The control API puts the code in its replies (`"Code"`), and
//! the control client hands it back typed, so "the volume is mounted" is
//! `ErrorCode::InUse`, never a search for "in use" in a message.

use crate::backend::BackendError;
use crate::bounded::BoundedError;
use crate::clustering::ClusterError;
use crate::state::StoreError;
use crate::state::catalog::CatalogStoreError;
use profiles::{CatalogError, RequestError, ResolveError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("volume {0:?} not found")]
    NotFound(String),
    #[error(
        "volume NAME {name:?} already exists as docker volume {existing:?} (profile {profile:?}); \
         use that name, or pick another NAME"
    )]
    Exists {
        name: String,
        existing: String,
        profile: String,
    },
    #[error(
        "volume {docker_name:?} is in use: {mounts} mount(s) by {ids}; stop the containers using it first"
    )]
    InUse {
        docker_name: String,
        mounts: u64,
        ids: String,
    },
    #[error("volume {docker_name:?} cannot be mounted: {reason}")]
    NotMountable {
        docker_name: String,
        reason: String,
        /// The volume moved to another host for good (not a passing state).
        moved: bool,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Past its time limit (the work goes on, or was rolled back), or the
    /// work panicked.
    #[error(transparent)]
    Bounded(#[from] BoundedError),
    /// A migration step that the volume's state or this host refuses.
    #[error("{op} of volume {name:?}: {message}")]
    Migration {
        op: &'static str,
        name: String,
        message: String,
    },
    /// A change the volume's backend or state cannot take (set-profile,
    /// a profile redefined, an EBS migration step).
    #[error("{op} of {name:?} refused: {reason}")]
    Refused {
        op: &'static str,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    CatalogStore(#[from] CatalogStoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{op} of volume {name:?}: internal error: {message}")]
    Internal {
        op: &'static str,
        name: String,
        message: String,
    },
}

/// What kind of failure an error is, for callers that act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// The request, a name, a profile or a definition is wrong: fix it.
    Invalid,
    /// No such volume (or route).
    NotFound,
    /// NAME is taken by another volume.
    Exists,
    /// The volume is mounted: stop its containers, or wait (a cutover).
    InUse,
    /// The volume's state refuses Mount for now (being created, moved,
    /// received).
    NotMountable,
    /// The volume moved to another host for good.
    Moved,
    /// The volume's state, its backend or this host refuses the step.
    Refused,
    /// The work did not finish within its limit; it goes on (or was
    /// rolled back) in the background.
    Timeout,
    /// The storage, the store or the daemon itself failed.
    Failed,
}

impl ServiceError {
    /// The one mapping from errors to codes.
    pub(crate) fn code(&self) -> ErrorCode {
        use ServiceError as E;
        match self {
            E::Request(_) | E::Resolve(_) | E::Catalog(_) => ErrorCode::Invalid,
            E::NotFound(_) => ErrorCode::NotFound,
            E::Exists { .. } => ErrorCode::Exists,
            E::InUse { .. } => ErrorCode::InUse,
            E::NotMountable { moved: true, .. } => ErrorCode::Moved,
            E::NotMountable { moved: false, .. } => ErrorCode::NotMountable,
            E::Migration { .. } | E::Refused { .. } => ErrorCode::Refused,
            E::Bounded(BoundedError::Timeout { .. }) => ErrorCode::Timeout,
            E::Cluster(ClusterError::Owned { .. } | ClusterError::OwnedElsewhere { .. }) => {
                ErrorCode::InUse
            }
            E::Cluster(ClusterError::NotRefreshed { .. } | ClusterError::Fenced) => {
                ErrorCode::NotMountable
            }
            E::Cluster(ClusterError::Record(_)) => ErrorCode::Refused,
            E::Cluster(ClusterError::Etcd(_)) => ErrorCode::Failed,
            E::Store(_)
            | E::Backend(_)
            | E::CatalogStore(_)
            | E::Internal { .. }
            | E::Bounded(BoundedError::Panicked { .. }) => ErrorCode::Failed,
        }
    }
}
