//! Docker's volume semantics, as dockerd's VolumeDriver client expects them
//! (the plugin README's "How it behaves" says the same for operators):
//!
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
//! - A Create cut off by a crash is rolled back at the next start
//!   ([`VolumeService::recover`]).

use super::clustered::Refresh;
use super::{ServiceError, VolumeService, in_use, lock, short_id, vref};
use crate::backend::{Status, usage};
use crate::bounded::{BoundedError, Fence};
use crate::state::record::{ClusterFacts, VolumeRecord, VolumeState};
use profiles::{LocalFormat, Settings};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What one pass of Mount came to.
enum MountStep {
    Mounted(PathBuf),
    /// Cluster mode: the copy is stale and claimed; bring it up to date.
    Refresh(Refresh),
}

/// What Get and List report for a volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct VolumeInfo {
    pub(crate) name: String,
    pub(crate) mountpoint: PathBuf,
    /// RFC 3339, as docker expects.
    pub(crate) created_at: String,
    pub(crate) status: Status,
}

/// Everything known about a volume, for `daffe volume inspect` and the
/// control API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct VolumeView {
    #[serde(flatten)]
    pub(crate) record: VolumeRecord,
    pub(crate) mountpoint: PathBuf,
    pub(crate) mount_count: u64,
    pub(crate) status: Status,
}

impl VolumeService {
    /// Finishes what a crash interrupted (issue 12, crash torture):
    /// - volumes still `Creating` (a Create never answered, or a Remove
    ///   whose storage was going) lose their storage and record;
    /// - a local block volume that no mount ID holds is unmounted, its loop
    ///   device freed: a kill between the mount and the count's commit, or
    ///   between the count's commit and the unmount, left it mounted for
    ///   nobody.
    pub(crate) fn recover(&self) -> Result<(), ServiceError> {
        for r in self.records.list()? {
            if r.state != VolumeState::Creating && r.mounts.is_empty() {
                self.release_stale_mount(&r);
            }
            if r.state == VolumeState::Creating {
                tracing::warn!(volume = %r.docker_name, "removing a volume whose Create (or Remove) was interrupted");
                // One volume that cannot be cleaned must not keep the daemon
                // from serving the others (issue 12, low finding): its
                // record stays `Creating`, retried at the next start or
                // redone by a Create of that name.
                if let Err(e) = self
                    .backend
                    .remove(vref(&r))
                    .map_err(ServiceError::from)
                    .and_then(|()| Ok(self.records.delete(&r.name).map(drop)?))
                {
                    tracing::error!(volume = %r.docker_name, error = %e,
                        "cleaning an interrupted Create failed; serving the other volumes");
                }
            }
        }
        Ok(())
    }

    /// Unmounts a local block volume whose record holds no mount (see
    /// [`VolumeService::recover`]); a failure is logged, the daemon serves on.
    fn release_stale_mount(&self, r: &VolumeRecord) {
        let Settings::Local(s) = &r.settings else {
            return;
        };
        if s.format != LocalFormat::Block {
            return;
        }
        let mounted =
            self.backend.status(vref(r)).get("mounted") == Some(&serde_json::Value::Bool(true));
        match self.backend.unmount(vref(r)) {
            Ok(()) if mounted => {
                tracing::warn!(volume = %r.docker_name, "unmounted a volume no mount holds (an interrupted Mount or Unmount)");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(volume = %r.docker_name, error = %e, "a volume no mount holds cannot be unmounted; serving the others");
            }
        }
    }

    pub(crate) fn create(
        &self,
        docker_name: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<(), ServiceError> {
        let req = self.catalog.request(docker_name, opts)?;
        let vlock = self.volume_lock(&req.name);
        let _g = lock(&vlock);
        // Cluster mode: the catalogue decides first (one volume cluster-wide).
        let catalogued = self.catalogue_create(&req, opts)?;
        if let Some(mut existing) = self.records.get(&req.name)? {
            let facts = existing.cluster.as_ref().map(|f| f.created);
            match (catalogued, facts) {
                // A copy of an earlier volume of this name, removed elsewhere
                // and made again: not this volume's data.
                (Some(now), Some(was)) if now != was => {
                    if !existing.mounts.is_empty() {
                        return Err(in_use(&existing));
                    }
                    tracing::warn!(volume = %existing.docker_name, "dropping the copy of an earlier volume of this name");
                    self.backend.remove(vref(&existing))?;
                    self.records.delete(&existing.name)?;
                }
                _ if existing.profile == req.profile => {
                    let mut changed = false;
                    // A volume made before cluster mode joins the catalogue.
                    if let (Some(now), None) = (catalogued, facts) {
                        existing.cluster = Some(ClusterFacts {
                            created: now,
                            epoch: None,
                        });
                        changed = true;
                    }
                    // docker now holds this name too: record the handle.
                    if !existing.knows(docker_name) {
                        existing.aliases.insert(docker_name.to_owned());
                        changed = true;
                    }
                    if changed {
                        self.records.put(&existing)?;
                    }
                    return Ok(());
                }
                _ => {
                    return Err(ServiceError::Exists {
                        name: req.name,
                        existing: existing.docker_name,
                        profile: existing.profile,
                    });
                }
            }
        }
        let mut rec = self.new_record(req, opts, VolumeState::Creating)?;
        rec.cluster = catalogued.map(|created| ClusterFacts {
            created,
            epoch: None,
        });
        self.create_storage(&rec, |_| Ok(()))?;
        rec.state = VolumeState::Ready;
        self.records.put(&rec)?;
        tracing::info!(volume = %rec.docker_name, profile = %rec.profile, "created");
        Ok(())
    }

    pub(crate) fn remove(&self, docker_name: &str) -> Result<(), ServiceError> {
        if self.cluster.is_some()
            && matches!(self.find(docker_name), Err(ServiceError::NotFound(_)))
        {
            return self.remove_uncopied(docker_name);
        }
        self.locked(docker_name, |mut rec| {
            if !rec.mounts.is_empty() {
                return Err(in_use(&rec));
            }
            // Another docker name still refers to the volume: drop this
            // handle only. (A name never recorded, e.g. from before aliases
            // were kept, counts as a handle of its own.)
            let others = if rec.knows(docker_name) {
                rec.drop_name(docker_name)
            } else {
                true
            };
            if others {
                self.records.put(&rec)?;
                tracing::info!(volume = %rec.name, name = docker_name, "docker name dropped; the volume stays for its other names");
                return Ok(());
            }
            // The catalogue first (cluster mode): refused while a node owns it.
            self.catalogue_remove(&rec.name)?;
            // Storage next: if that fails the record stays, and a retry finds it.
            // While it goes the record says `Creating` (storage not whole): a
            // kill -9 from here on leaves a record that recover() finishes,
            // never a `ready` volume without its storage (issue 12, crash
            // torture found that one).
            let was = std::mem::replace(&mut rec.state, VolumeState::Creating);
            self.records.put(&rec)?;
            if let Err(e) = self.backend.remove(vref(&rec)) {
                rec.state = was;
                if let Err(e2) = self.records.put(&rec) {
                    tracing::error!(volume = %rec.docker_name, error = %e2, "restoring the state of a volume whose Remove failed");
                }
                return Err(e.into());
            }
            self.records.delete(&rec.name)?;
            tracing::info!(volume = %rec.docker_name, "removed");
            Ok(())
        })
    }

    /// Mounts for `id`. `fence` decides, under the volume's lock, whether the
    /// caller is still waiting; if not, nothing is changed.
    pub(crate) fn mount(
        &self,
        docker_name: &str,
        id: &str,
        fence: &Fence,
    ) -> Result<PathBuf, ServiceError> {
        match self.mount_step(docker_name, id, fence, None)? {
            MountStep::Mounted(p) => Ok(p),
            // Cluster mode, a stale copy: brought up to date from the last
            // writer with no lock held (its agent sends into this node's
            // agent), then mounted under the lock again.
            MountStep::Refresh(r) => {
                let outcome = self.run_refresh(docker_name, &r);
                let res = self.mount_step(docker_name, id, fence, Some((&r, outcome)));
                self.end_refresh(&r.name, Some(&r));
                match res? {
                    MountStep::Mounted(p) => Ok(p),
                    MountStep::Refresh(_) => Err(ServiceError::Internal {
                        op: "mount",
                        name: docker_name.to_owned(),
                        message: "a second refresh".into(),
                    }),
                }
            }
        }
    }

    /// One pass of Mount under the volume's lock. `refreshed`: the second
    /// pass, after a refresh (and how it went).
    fn mount_step(
        &self,
        docker_name: &str,
        id: &str,
        fence: &Fence,
        refreshed: Option<(&Refresh, Result<(), String>)>,
    ) -> Result<MountStep, ServiceError> {
        self.locked(docker_name, |mut rec| {
            let timeout = |rec: VolumeRecord| {
                ServiceError::from(BoundedError::Timeout {
                    op: "mount",
                    name: rec.docker_name,
                    secs: fence.secs(),
                })
            };
            if fence.is_abandoned() {
                return Err(timeout(rec));
            }
            let first = rec.mounts.is_empty();
            if let Some((r, outcome)) = refreshed {
                self.adopt_refreshed(&mut rec, r, outcome)?;
            } else {
                if self.is_refreshing(&rec.name) {
                    return Err(ServiceError::NotMountable {
                        moved: false,
                        docker_name: rec.docker_name,
                        reason: "its copy here is being brought up to date; try again".into(),
                    });
                }
                // In cluster mode a copy moved away (or left half-received)
                // is only a stale copy: the claim decides.
                let stale_copy = self.cluster().is_some()
                    && matches!(
                        rec.state,
                        VolumeState::Moved { .. } | VolumeState::Receiving { .. }
                    );
                if let Some(reason) = rec.state.mount_refusal()
                    && !stale_copy
                {
                    return Err(ServiceError::NotMountable {
                        moved: matches!(rec.state, VolumeState::Moved { .. }),
                        docker_name: rec.docker_name,
                        reason,
                    });
                }
                if let Some(r) = self.claim_for_mount(&mut rec, first)? {
                    self.begin_refresh(&mut rec, &r)?;
                    return Ok(MountStep::Refresh(r));
                }
            }
            let path = if first {
                match self.backend.mount(vref(&rec)) {
                    Ok(p) => p,
                    Err(e) => {
                        self.release_ownership(&rec.name);
                        return Err(e.into());
                    }
                }
            } else {
                self.backend.path(vref(&rec))
            };
            rec.mounts.add(id);
            let undo = |rec: &VolumeRecord| {
                if first {
                    if let Err(e) = self.backend.unmount(vref(rec)) {
                        tracing::error!(volume = %rec.docker_name, error = %e, "rolling back a mount");
                    } else {
                        self.release_ownership(&rec.name);
                    }
                }
            };
            if !fence.try_commit() {
                undo(&rec);
                return Err(timeout(rec));
            }
            if let Err(e) = self.records.put(&rec) {
                undo(&rec);
                return Err(e.into());
            }
            tracing::info!(volume = %rec.docker_name, id = short_id(id), total = rec.mounts.total(), "mounted");
            Ok(MountStep::Mounted(path))
        })
    }

    pub(crate) fn unmount(&self, docker_name: &str, id: &str) -> Result<(), ServiceError> {
        self.locked(docker_name, |mut rec| {
            let Some(last) = rec.mounts.release(id) else {
                // Nothing to undo: an Unmount for an ID we never counted (e.g.
                // a state dir wiped by hand). Refusing would only wedge docker.
                tracing::warn!(volume = %rec.docker_name, id = short_id(id), "unmount for an ID that holds no mount; ignored");
                return Ok(());
            };
            // The count goes first: if the real unmount then fails (busy), the
            // next Mount finds it mounted and reuses it, and Remove retries it.
            self.records.put(&rec)?;
            if last {
                self.backend.unmount(vref(&rec))?;
                // Unmounted here: another node may own it now.
                self.release_ownership(&rec.name);
            }
            tracing::info!(volume = %rec.docker_name, id = short_id(id), total = rec.mounts.total(), "unmounted");
            Ok(())
        })
    }

    pub(crate) fn path(&self, docker_name: &str) -> Result<PathBuf, ServiceError> {
        let rec = self.find(docker_name)?;
        Ok(self.backend.path(vref(&rec)))
    }

    /// Get, answered from the records without any lock when the name is one
    /// docker already holds. `Ok(None)`: the volume exists under a name docker
    /// does not hold yet; call [`VolumeService::get_recording`].
    pub(crate) fn get(&self, docker_name: &str) -> Result<Option<VolumeInfo>, ServiceError> {
        let rec = self.find(docker_name)?;
        if !rec.knows(docker_name) {
            return Ok(None);
        }
        Ok(Some(self.info(&rec, docker_name)))
    }

    /// Get for a new docker name of an existing volume: dockerd will keep
    /// the name once Get answers, so the handle is recorded first.
    pub(crate) fn get_recording(&self, docker_name: &str) -> Result<VolumeInfo, ServiceError> {
        self.locked(docker_name, |mut rec| {
            if !rec.knows(docker_name) {
                rec.aliases.insert(docker_name.to_owned());
                self.records.put(&rec)?;
                tracing::info!(volume = %rec.name, name = docker_name, "new docker name");
            }
            Ok(self.info(&rec, docker_name))
        })
    }

    /// Docker names and mountpoints: all List needs. Read afresh; the
    /// VolumeDriver List caches its reply by [`VolumeService::generation`].
    pub(crate) fn list(&self) -> Result<Vec<(String, PathBuf)>, ServiceError> {
        if let Some(c) = &self.cluster {
            return self.list_clustered(c);
        }
        Ok(self
            .records
            .list()?
            .into_iter()
            .flat_map(|r| {
                let mp = self.backend.path(vref(&r));
                r.docker_names()
                    .map(|n| (n.to_owned(), mp.clone()))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// A volume by NAME or by docker name, for the CLI.
    pub(crate) fn inspect(&self, name: &str) -> Result<VolumeView, ServiceError> {
        self.find(name).map(|r| self.view(r))
    }

    pub(crate) fn views(&self) -> Result<Vec<VolumeView>, ServiceError> {
        Ok(self
            .records
            .list()?
            .into_iter()
            .map(|r| self.view(r))
            .collect())
    }

    pub(super) fn view(&self, record: VolumeRecord) -> VolumeView {
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
        if let (Some(c), Some(f)) = (&self.cluster, &rec.cluster) {
            // This node's view (no etcd call: Get stays quick);
            // `daffe cluster status` asks etcd.
            st.insert(
                "cluster".into(),
                serde_json::json!({
                    "node": c.node(),
                    "owned_here": c.owned(&rec.name).map(|e| e.0),
                    "copy_epoch": f.epoch,
                    "catalogued": f.created,
                    // The owner's view of its standbys (lag since the start
                    // of each one's last complete round).
                    "standbys": self.standby_lags(&rec.name),
                    "last_handover": self.last_handover(&rec.name),
                    // A failover from a standby copy: data age lost (RPO)
                    // and the time from the Mount's start.
                    "last_takeover": self.last_takeover(&rec.name),
                }),
            );
        }
        for (k, v) in self.backend.status(vref(rec)) {
            st.entry(k).or_insert(v);
        }
        let how = usage::measure(
            format,
            &self.backend.path(vref(rec)),
            st.get("mounted").and_then(serde_json::Value::as_bool),
            st.get("image").and_then(serde_json::Value::as_str),
        );
        if let Some(u) = how.as_ref().and_then(usage::used) {
            // A number for scripts, a size for people (`volume inspect`).
            st.insert("used_bytes".into(), u.bytes.into());
            let human = crate::migrate::report::human_bytes(u.bytes);
            st.insert(
                "used".into(),
                if u.partial {
                    format!(">= {human}")
                } else {
                    human
                }
                .into(),
            );
        }
        st
    }
}
