//! The volume service: Docker's volume semantics on top of the store and a
//! backend. Synchronous; the API layer calls it on the blocking pool through
//! [`crate::bounded`], which bounds each call in time.
//!
//! Rules (see FIELD-NOTES, "Docker VolumeDriver protocol"):
//! - Get and List answer from the store and never block on a volume's lock,
//!   so dockerd's Get-before-Create and its start-up Get sweep stay fast while
//!   a slow mkfs runs.
//! - Operations on one volume run one at a time (a per-NAME lock); different
//!   volumes proceed in parallel.
//! - Create is idempotent for the same NAME and profile (`db` and
//!   `db@default` are the same volume); the same NAME with another profile is
//!   refused. Get echoes whichever docker name it was asked for. dockerd keeps
//!   every name it gets an answer for, so each is recorded as a handle
//!   (`VolumeRecord::aliases`), listed, and dropped by its own Remove; the
//!   data goes with the last handle.
//! - Mounts are a persisted multiset per (NAME, ID); the backend mounts at the
//!   first and unmounts at the last. A Mount that fails, or whose caller gave
//!   up waiting, leaves the count and the mount as they were: docker sends no
//!   Unmount after a failed Mount.
//! - Remove refuses a volume that is mounted.

use crate::backend::{Backend, BackendError, Status, VolumeRef};
use crate::bounded::Fence;
use crate::catalog_store::{CatalogStoreError, SharedCatalog};
use crate::record::{Mounts, VolumeRecord, VolumeState};
use crate::store::{Store, StoreError};
use profiles::{
    Catalog, CatalogError, LocalFormat, RequestError, ResolveError, Settings, VolumeName,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
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
    NotMountable { docker_name: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "{op} of volume {name:?} did not finish within {secs} s; it was rolled back or will be"
    )]
    Timeout {
        op: &'static str,
        name: String,
        secs: u64,
    },
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
    #[error("{op} of volume {name:?}: internal error: {message}")]
    Internal {
        op: &'static str,
        name: String,
        message: String,
    },
}

/// What Get and List report for a volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: PathBuf,
    /// RFC 3339, as docker expects.
    pub created_at: String,
    pub status: Status,
}

/// Everything known about a volume, for `daffe volume inspect` and the
/// control API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeView {
    #[serde(flatten)]
    pub record: VolumeRecord,
    pub mountpoint: PathBuf,
    pub mount_count: u64,
    pub status: Status,
}

/// List's answer, tagged with the write generation it was read at.
type ListCache = (u64, Arc<Vec<(String, PathBuf)>>);

pub struct VolumeService {
    store: Store,
    /// Bumped after every committed write; a cached List is valid only for
    /// the generation it was read at. dockerd calls List for every `docker
    /// volume ls` and more; decoding 1,000 records each time costs
    /// milliseconds, the cache microseconds.
    generation: std::sync::atomic::AtomicU64,
    list_cache: Mutex<Option<ListCache>>,
    backend: Arc<dyn Backend>,
    /// Changes at run time (`POST /v1/configuration/profiles`).
    catalog: SharedCatalog,
    data_root: PathBuf,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Locks a std mutex, ignoring poisoning: the data behind these locks is
/// `()` or a map of locks, which a panic cannot leave inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VolumeService {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        catalog: Catalog,
        data_root: PathBuf,
    ) -> Self {
        Self {
            store,
            generation: std::sync::atomic::AtomicU64::new(0),
            list_cache: Mutex::new(None),
            backend,
            catalog: SharedCatalog::new(catalog),
            data_root,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The profiles now (a snapshot: a later definition does not change it).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.snapshot()
    }

    /// Lays the profiles defined through the control API (kept under
    /// `state_dir`) over the configured ones, and keeps later definitions
    /// there. Called once at start.
    pub fn persist_profiles(&mut self, state_dir: &Path) -> Result<(), ServiceError> {
        let base = (*self.catalog.snapshot()).clone();
        self.catalog = SharedCatalog::open(base, state_dir)?;
        Ok(())
    }

    pub fn backend_kind(&self) -> profiles::BackendKind {
        self.backend.kind()
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    fn put(&self, rec: &VolumeRecord) -> Result<(), StoreError> {
        let r = self.store.put(rec);
        self.bump();
        r
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let r = self.store.delete(name);
        self.bump();
        r
    }

    /// After the commit (or a failed one, conservatively), never before: a
    /// List that read the old state is then tagged with the old generation.
    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Counts committed writes; equal values mean nothing changed between.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
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
        match self.store.get(parsed.name())? {
            // A docker name the volume holds stays valid after set-profile
            // (dockerd keeps `db@gold` and asks for it after a restart).
            Some(r) if r.knows(docker_name) || parsed.profile().is_none_or(|p| p == r.profile) => {
                Ok(r)
            }
            _ => Err(not_found()),
        }
    }

    /// Finishes what a crash interrupted: volumes still `Creating` were never
    /// reported to docker as created, so their storage and record go.
    pub fn recover(&self) -> Result<(), ServiceError> {
        for r in self.store.list()? {
            if r.state == VolumeState::Creating {
                tracing::warn!(volume = %r.docker_name, "removing a volume whose Create was interrupted");
                self.backend.remove(vref(&r))?;
                self.delete(&r.name)?;
            }
        }
        Ok(())
    }

    pub fn create(
        &self,
        docker_name: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<(), ServiceError> {
        let req = self.catalog.request(docker_name, opts)?;
        let vlock = self.volume_lock(&req.name);
        let _g = lock(&vlock);
        if let Some(mut existing) = self.store.get(&req.name)? {
            if existing.profile == req.profile {
                // docker now holds this name too: record the handle.
                if !existing.knows(docker_name) {
                    existing.aliases.insert(docker_name.to_owned());
                    self.put(&existing)?;
                }
                return Ok(());
            }
            return Err(ServiceError::Exists {
                name: req.name,
                existing: existing.docker_name,
                profile: existing.profile,
            });
        }
        let settings = self
            .catalog
            .resolve(&req, self.backend.kind(), &self.data_root)?;
        let mut rec = VolumeRecord {
            docker_name: req.docker_name,
            aliases: Default::default(),
            name: req.name,
            profile: req.profile,
            backend: self.backend.kind(),
            settings,
            options: opts.clone(),
            created_at: now_secs(),
            state: VolumeState::Creating,
            mounts: Mounts::default(),
        };
        // Intent first: a crash during the backend's work leaves a record
        // that `recover` cleans up, never storage nobody knows about.
        self.put(&rec)?;
        if let Err(e) = self.backend.create(vref(&rec)) {
            if let Err(e2) = self.backend.remove(vref(&rec)) {
                tracing::error!(volume = %rec.docker_name, error = %e2, "cleaning up after a failed create");
            }
            self.delete(&rec.name)?;
            return Err(e.into());
        }
        rec.state = VolumeState::Ready;
        self.put(&rec)?;
        tracing::info!(volume = %rec.docker_name, profile = %rec.profile, "created");
        Ok(())
    }

    pub fn remove(&self, docker_name: &str) -> Result<(), ServiceError> {
        let rec = self.find(docker_name)?;
        let vlock = self.volume_lock(&rec.name);
        let _g = lock(&vlock);
        let mut rec = self.find(docker_name)?; // re-read under the lock
        if !rec.mounts.is_empty() {
            return Err(ServiceError::InUse {
                docker_name: rec.docker_name.clone(),
                mounts: rec.mounts.total(),
                ids: rec
                    .mounts
                    .ids()
                    .map(|(id, _)| short_id(id))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Another docker name still refers to the volume: drop this handle
        // only. (A name never recorded, e.g. from before aliases were kept,
        // counts as a handle of its own.)
        let others = if rec.knows(docker_name) {
            rec.drop_name(docker_name)
        } else {
            true
        };
        if others {
            self.put(&rec)?;
            tracing::info!(volume = %rec.name, name = docker_name, "docker name dropped; the volume stays for its other names");
            return Ok(());
        }
        // Storage first: if that fails the record stays, and a retry finds it.
        self.backend.remove(vref(&rec))?;
        self.delete(&rec.name)?;
        tracing::info!(volume = %rec.docker_name, "removed");
        Ok(())
    }

    /// Mounts for `id`. `fence` decides, under the volume's lock, whether the
    /// caller is still waiting; if not, nothing is changed.
    pub fn mount(
        &self,
        docker_name: &str,
        id: &str,
        fence: &Fence,
    ) -> Result<PathBuf, ServiceError> {
        let rec = self.find(docker_name)?;
        let vlock = self.volume_lock(&rec.name);
        let _g = lock(&vlock);
        let mut rec = self.find(docker_name)?;
        if fence.is_abandoned() {
            return Err(ServiceError::Timeout {
                op: "mount",
                name: rec.docker_name,
                secs: fence.secs(),
            });
        }
        if let Some(reason) = rec.state.mount_refusal() {
            return Err(ServiceError::NotMountable {
                docker_name: rec.docker_name,
                reason,
            });
        }
        let first = rec.mounts.is_empty();
        let path = if first {
            self.backend.mount(vref(&rec))?
        } else {
            self.backend.path(vref(&rec))
        };
        rec.mounts.add(id);
        let undo = |rec: &VolumeRecord| {
            if first && let Err(e) = self.backend.unmount(vref(rec)) {
                tracing::error!(volume = %rec.docker_name, error = %e, "rolling back a mount");
            }
        };
        if !fence.try_commit() {
            undo(&rec);
            return Err(ServiceError::Timeout {
                op: "mount",
                name: rec.docker_name,
                secs: fence.secs(),
            });
        }
        if let Err(e) = self.put(&rec) {
            undo(&rec);
            return Err(e.into());
        }
        tracing::info!(volume = %rec.docker_name, id = short_id(id), total = rec.mounts.total(), "mounted");
        Ok(path)
    }

    pub fn unmount(&self, docker_name: &str, id: &str) -> Result<(), ServiceError> {
        let rec = self.find(docker_name)?;
        let vlock = self.volume_lock(&rec.name);
        let _g = lock(&vlock);
        let mut rec = self.find(docker_name)?;
        let Some(last) = rec.mounts.release(id) else {
            // Nothing to undo: an Unmount for an ID we never counted (e.g. a
            // state dir wiped by hand). Refusing would only wedge docker.
            tracing::warn!(volume = %rec.docker_name, id = short_id(id), "unmount for an ID that holds no mount; ignored");
            return Ok(());
        };
        // The count goes first: if the real unmount then fails (busy), the
        // next Mount finds it mounted and reuses it, and Remove retries it.
        self.put(&rec)?;
        if last {
            self.backend.unmount(vref(&rec))?;
        }
        tracing::info!(volume = %rec.docker_name, id = short_id(id), total = rec.mounts.total(), "unmounted");
        Ok(())
    }

    pub fn path(&self, docker_name: &str) -> Result<PathBuf, ServiceError> {
        let rec = self.find(docker_name)?;
        Ok(self.backend.path(vref(&rec)))
    }

    /// Get, answered from the store without any lock when the name is one
    /// docker already holds. `Ok(None)`: the volume exists under a name docker
    /// does not hold yet; call [`VolumeService::get_recording`].
    pub fn get(&self, docker_name: &str) -> Result<Option<VolumeInfo>, ServiceError> {
        let rec = self.find(docker_name)?;
        if !rec.knows(docker_name) {
            return Ok(None);
        }
        Ok(Some(self.info(&rec, docker_name)))
    }

    /// Get for a new docker name of an existing volume: dockerd will keep
    /// the name once Get answers, so the handle is recorded first.
    pub fn get_recording(&self, docker_name: &str) -> Result<VolumeInfo, ServiceError> {
        let rec = self.find(docker_name)?;
        let vlock = self.volume_lock(&rec.name);
        let _g = lock(&vlock);
        let mut rec = self.find(docker_name)?;
        if !rec.knows(docker_name) {
            rec.aliases.insert(docker_name.to_owned());
            self.put(&rec)?;
            tracing::info!(volume = %rec.name, name = docker_name, "new docker name");
        }
        Ok(self.info(&rec, docker_name))
    }

    /// Docker names and mountpoints: all List needs, from a cache that is
    /// valid until the next write.
    pub fn list(&self) -> Result<Arc<Vec<(String, PathBuf)>>, ServiceError> {
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((g, cached)) = &*lock(&self.list_cache)
            && *g == generation
        {
            return Ok(cached.clone());
        }
        let fresh: Arc<Vec<_>> = Arc::new(
            self.store
                .list()?
                .into_iter()
                .flat_map(|r| {
                    let mp = self.backend.path(vref(&r));
                    r.docker_names()
                        .map(|n| (n.to_owned(), mp.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
        );
        *lock(&self.list_cache) = Some((generation, fresh.clone()));
        Ok(fresh)
    }

    /// A volume by NAME or by docker name, for the CLI.
    pub fn inspect(&self, name: &str) -> Result<VolumeView, ServiceError> {
        self.find(name).map(|r| self.view(r))
    }

    pub fn views(&self) -> Result<Vec<VolumeView>, ServiceError> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .map(|r| self.view(r))
            .collect())
    }

    fn view(&self, record: VolumeRecord) -> VolumeView {
        VolumeView {
            mountpoint: self.backend.path(vref(&record)),
            mount_count: record.mounts.total(),
            status: self.status(&record),
            record,
        }
    }

    fn info(&self, rec: &VolumeRecord, docker_name: &str) -> VolumeInfo {
        VolumeInfo {
            // dockerd matches the answer to its question by name.
            name: docker_name.to_owned(),
            mountpoint: self.backend.path(vref(rec)),
            created_at: crate::time::rfc3339(rec.created_at),
            status: self.status(rec),
        }
    }

    /// Get's `Status`: profile, backend, format, size, state, mounts, then the
    /// resolved settings and the backend's own facts.
    fn status(&self, rec: &VolumeRecord) -> Status {
        let mut st = Status::new();
        st.insert("profile".into(), rec.profile.clone().into());
        st.insert("backend".into(), rec.backend.to_string().into());
        let (format, size) = match &rec.settings {
            Settings::Local(l) => (
                match l.format {
                    LocalFormat::Dir => "dir",
                    LocalFormat::Block => "block",
                },
                l.size.map(|s| s.to_string()),
            ),
            Settings::Ebs(e) => ("block", Some(format!("{}G", e.size_gib))),
        };
        st.insert("format".into(), format.into());
        st.insert(
            "size".into(),
            size.unwrap_or_else(|| "unlimited".into()).into(),
        );
        st.insert("state".into(), rec.state.as_str().into());
        st.insert("mounts".into(), rec.mounts.total().into());
        st.insert(
            "settings".into(),
            serde_json::to_value(&rec.settings).unwrap_or_default(),
        );
        if !rec.options.is_empty() {
            st.insert(
                "options".into(),
                serde_json::to_value(&rec.options).unwrap_or_default(),
            );
        }
        for (k, v) in self.backend.status(vref(rec)) {
            st.entry(k).or_insert(v);
        }
        st
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

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;

#[path = "service_migrate.rs"]
pub mod migrate;

#[path = "service_profiles.rs"]
pub mod profile_change;

#[path = "service_ebs.rs"]
pub mod ebs;
