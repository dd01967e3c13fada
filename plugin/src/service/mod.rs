//! The volume service: Docker's volume semantics, migrations and profile
//! changes on top of the records ([`crate::state`]) and a backend.
//! Synchronous; the socket handlers call it on the blocking pool through
//! [`crate::bounded`], which bounds each call in time.
//!
//! Map:
//! - this file: [`VolumeService`] and what its parts share: finding a
//!   volume by docker name, the per-volume lock, new records.
//! - [`error`]: [`ServiceError`] and its [`ErrorCode`]s.
//! - [`volumes`]: Docker's semantics (create, mount multiset, remove, get,
//!   list, inspect, recovery at start).
//! - [`migrate`]: moving a volume between hosts (source and destination
//!   states, where the mover reads and writes).
//! - [`ebs`]: records rebuilt from EBS at start; the EBS zone-migration
//!   steps.
//! - [`profile_change`]: set-profile and profile definitions.
//! - [`clustered`]: what cluster mode adds to Docker's semantics (the
//!   cluster-wide catalogue, ownership at Mount); nothing without `[cluster]`.
//! - [`standby`]: cluster mode's warm standbys (the owner's rounds, a
//!   standby's acceptance, one sender per volume).
//!
//! Every record write goes through [`Records`], which keeps List's cache
//! right; nothing here holds the store itself.
//!
//! Rules (see the plugin README, "How it behaves"):
//! - Get and List answer from the records and never block on a volume's
//!   lock, so dockerd's Get-before-Create and its start-up Get sweep stay
//!   fast while a slow mkfs runs.
//! - Operations on one volume run one at a time (a per-NAME lock); different
//!   volumes proceed in parallel.

mod clustered;
pub(crate) mod ebs;
mod error;
pub(crate) mod migrate;
pub(crate) mod profile_change;
mod standby;
mod volumes;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use error::{ErrorCode, ServiceError};
pub(crate) use standby::LastTakeover;
pub(crate) use volumes::{VolumeInfo, VolumeView};

use crate::backend::ebs::EbsBackend;
use crate::backend::{Backend, Storage, VolumeRef};
use crate::clustering::ClusterNode;
use crate::clustering::handover::Handover;
use crate::clustering::standby::{Lags, StandbyLink};
use crate::state::Records;
use crate::state::catalog::SharedCatalog;
use crate::state::record::{Mounts, VolumeRecord, VolumeState};
use profiles::{Catalog, VolumeName, VolumeRequest};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) struct VolumeService {
    /// The one way records are read and written.
    records: Records,
    backend: Arc<dyn Backend>,
    /// The same backend when it is EBS, for what only EBS does.
    ebs: Option<Arc<EbsBackend>>,
    /// Changes at run time (`POST /v1/configuration/profiles`).
    catalog: SharedCatalog,
    data_root: PathBuf,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Cluster mode (`[cluster]`); `None`: a single host.
    cluster: Option<Arc<ClusterNode>>,
    /// Cluster mode: how a stale copy is brought up to date from the last
    /// writer (its agent); `None`: a stale copy is refused.
    handover: Option<Arc<dyn Handover>>,
    /// Volumes whose copy is being brought up to date here now: their copy
    /// is incomplete, so another Mount of them is refused meanwhile.
    refreshing: Mutex<BTreeSet<String>>,
    /// Cluster mode: how this node, owner, sends rounds to standbys; `None`:
    /// it keeps none (no agent certificate).
    standby: Option<Arc<dyn StandbyLink>>,
    /// What this node knows of its volumes' standbys.
    lags: Lags,
    /// Volumes with a standby round in flight from here, and its end.
    standby_sends: Mutex<BTreeSet<String>>,
    standby_sent: Condvar,
    /// The last handover into each copy here (inspect shows it).
    handed: Mutex<BTreeMap<String, clustered::LastHandover>>,
    /// The last failover takeover of each copy here (inspect shows it).
    taken: Mutex<BTreeMap<String, LastTakeover>>,
}

/// Locks a std mutex, ignoring poisoning: the data behind these locks is
/// `()` or a map of locks, which a panic cannot leave inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VolumeService {
    pub(crate) fn new(
        records: Records,
        storage: Storage,
        catalog: Catalog,
        data_root: PathBuf,
    ) -> Self {
        Self {
            records,
            backend: storage.backend,
            ebs: storage.ebs,
            catalog: SharedCatalog::new(catalog),
            data_root,
            locks: Mutex::new(HashMap::new()),
            cluster: None,
            handover: None,
            refreshing: Mutex::new(BTreeSet::new()),
            standby: None,
            lags: Lags::default(),
            standby_sends: Mutex::new(BTreeSet::new()),
            standby_sent: Condvar::new(),
            handed: Mutex::new(BTreeMap::new()),
            taken: Mutex::new(BTreeMap::new()),
        }
    }

    /// Turns cluster mode on (once, at start, before serving); `handover`
    /// brings stale copies up to date (none: they are refused).
    pub(crate) fn set_cluster(
        &mut self,
        node: Arc<ClusterNode>,
        handover: Option<Arc<dyn Handover>>,
    ) {
        self.cluster = Some(node);
        self.handover = handover;
    }

    /// Cluster mode: streams standby rounds through `link` (once, at
    /// start, before serving).
    pub(crate) fn set_standby(&mut self, link: Arc<dyn StandbyLink>) {
        self.standby = Some(link);
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }

    /// The profiles now (a snapshot: a later definition does not change it).
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.catalog.snapshot()
    }

    /// Lays the profiles defined through the control API (kept under
    /// `state_dir`) over the configured ones, and keeps later definitions
    /// there. Called once at start.
    pub(crate) fn persist_profiles(&mut self, state_dir: &Path) -> Result<(), ServiceError> {
        let base = (*self.catalog.snapshot()).clone();
        self.catalog = SharedCatalog::open(base, state_dir)?;
        Ok(())
    }

    pub(crate) fn backend_kind(&self) -> profiles::BackendKind {
        self.backend.kind()
    }

    /// Counts record writes; equal values mean nothing changed between
    /// (List's cache is keyed by it). `None` in cluster mode: other nodes
    /// change the catalogue without this node's records moving.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.cluster.is_none().then(|| self.records.generation())
    }

    fn volume_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.locks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The record a docker name refers to. NAME is the identity; the docker
    /// name may omit the profile (`db` is `db@default` is FlockerProfiles'
    /// rule, and `db` names whatever `db` is), but a profile it names must be
    /// the volume's: `db@default` is not the `db@gold` volume.
    fn find(&self, docker_name: &str) -> Result<VolumeRecord, ServiceError> {
        let not_found = || ServiceError::NotFound(docker_name.to_owned());
        let parsed = VolumeName::parse(docker_name).map_err(|_| not_found())?;
        match self.records.get(parsed.name())? {
            // A docker name the volume holds stays valid after set-profile
            // (dockerd keeps `db@gold` and asks for it after a restart).
            Some(r) if r.knows(docker_name) || parsed.profile().is_none_or(|p| p == r.profile) => {
                Ok(r)
            }
            _ => Err(not_found()),
        }
    }

    /// Runs `f` on the record of `docker_name` under the volume's lock (the
    /// record read again once the lock is held).
    fn locked<T>(
        &self,
        docker_name: &str,
        f: impl FnOnce(VolumeRecord) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let rec = self.find(docker_name)?;
        let vlock = self.volume_lock(&rec.name);
        let _g = lock(&vlock);
        f(self.find(docker_name)?)
    }

    /// A new record for `req`, resolved against this host's backend, in
    /// `state`.
    fn new_record(
        &self,
        req: VolumeRequest,
        opts: &BTreeMap<String, String>,
        state: VolumeState,
    ) -> Result<VolumeRecord, ServiceError> {
        let settings = self
            .catalog
            .resolve(&req, self.backend.kind(), &self.data_root)?;
        Ok(VolumeRecord {
            docker_name: req.docker_name,
            aliases: Default::default(),
            name: req.name,
            profile: req.profile,
            backend: self.backend.kind(),
            settings,
            options: opts.clone(),
            created_at: now_secs(),
            state,
            mounts: Mounts::default(),
            received_from: None,
            cluster: None,
        })
    }

    /// Makes `rec`'s storage, intent first: the record is written
    /// `Creating` before the backend's work, so a crash in between leaves a
    /// record that [`VolumeService::recover`] cleans up, never storage
    /// nobody knows about. On failure the storage and the record go again.
    /// `then` finishes the storage (a receive blanks it); the record is left
    /// `Creating` for the caller to move on.
    fn create_storage(
        &self,
        rec: &VolumeRecord,
        then: impl FnOnce(&VolumeRecord) -> Result<(), ServiceError>,
    ) -> Result<(), ServiceError> {
        self.records.put(rec)?;
        let made = self
            .backend
            .create(vref(rec))
            .map_err(ServiceError::from)
            .and_then(|()| then(rec));
        if let Err(e) = made {
            if let Err(e2) = self.backend.remove(vref(rec)) {
                tracing::error!(volume = %rec.docker_name, error = %e2, "cleaning up after a failed create");
            }
            self.records.delete(&rec.name)?;
            return Err(e);
        }
        Ok(())
    }
}

/// "Mounted, so no": the error for a volume that must be unmounted first.
fn in_use(rec: &VolumeRecord) -> ServiceError {
    ServiceError::InUse {
        docker_name: rec.docker_name.clone(),
        mounts: rec.mounts.total(),
        ids: rec
            .mounts
            .ids()
            .map(|(id, _)| short_id(id))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn vref(r: &VolumeRecord) -> VolumeRef<'_> {
    VolumeRef {
        name: &r.name,
        settings: &r.settings,
        profile: &r.profile,
        docker_name: &r.docker_name,
    }
}

/// Docker mount IDs are 64 hex characters; 12 identify them in logs, as docker does.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
