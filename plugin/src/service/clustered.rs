//! What cluster mode adds to Docker's volume semantics (issue 14). Without
//! `[cluster]` none of this runs. With it:
//!
//! - Create makes the volume in the cluster-wide catalogue first (one etcd
//!   transaction: three nodes creating at once make one volume), then this
//!   node's copy. A copy of an earlier volume of the same name (removed on
//!   another node, made again) is replaced, unless mounted.
//! - Get and List answer for every catalogued volume on every node, so Swarm
//!   never makes a second, local volume of the same name; a Get of a volume
//!   with no copy here makes the (empty) copy.
//! - Remove removes the catalogue record, only when no node owns it.
//! - The first Mount on a node claims ownership (the epoch is the owner
//!   key's revision) and refuses a stale copy; the last Unmount releases it.
//!
//! Every etcd call is bounded (`clustering::ETCD_TIMEOUT`) and runs on the
//! blocking pool, never on the sockets' async threads.

use super::{ServiceError, VolumeInfo, VolumeService, vref};
use crate::clustering::catalogue::CatalogueRecord;
use crate::clustering::{ClusterError, ClusterNode};
use crate::state::record::{ClusterFacts, VolumeRecord, VolumeState};
use cluster::{Epoch, Removed};
use profiles::{LocalFormat, Settings, VolumeName, VolumeRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

impl VolumeService {
    fn node(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }

    /// Create's first step in cluster mode: the catalogue record, made or
    /// found. Its create revision, or `None` without cluster mode.
    pub(super) fn catalogue_create(
        &self,
        req: &VolumeRequest,
        opts: &BTreeMap<String, String>,
    ) -> Result<Option<u64>, ServiceError> {
        let Some(c) = self.node() else {
            return Ok(None);
        };
        let mine = CatalogueRecord::new(&req.docker_name, &req.profile, opts, c.node());
        let (entry, made) = c
            .coordinator()
            .create_volume(&req.name, &mine.encode())
            .map_err(ClusterError::from)?;
        let stands =
            CatalogueRecord::decode(&entry.name, &entry.record).map_err(ClusterError::from)?;
        if stands.profile != req.profile {
            return Err(ServiceError::Exists {
                name: req.name.clone(),
                existing: stands.docker_name,
                profile: stands.profile,
            });
        }
        if made {
            tracing::info!(volume = %req.name, revision = entry.created, "catalogued");
        }
        Ok(Some(entry.created))
    }

    /// Whether this copy is of the volume the catalogue holds now. Without
    /// cluster mode, always.
    fn is_current(&self, rec: &VolumeRecord) -> Result<bool, ServiceError> {
        let Some(c) = self.node() else {
            return Ok(true);
        };
        let Some(facts) = &rec.cluster else {
            return Ok(false);
        };
        let entry = c
            .coordinator()
            .volume(&rec.name)
            .map_err(ClusterError::from)?;
        Ok(entry.is_some_and(|e| e.created == facts.created))
    }

    /// Get in cluster mode: this node's copy if it is current, else the
    /// catalogue's volume, whose (empty) copy is made here first.
    pub(crate) fn get_clustered(&self, docker_name: &str) -> Result<VolumeInfo, ServiceError> {
        if let Ok(rec) = self.find(docker_name) {
            match self.is_current(&rec) {
                Ok(true) => return self.get_recording(docker_name),
                Ok(false) => {}
                // etcd unreachable: answer from this node's copy. A Get that
                // failed would make dockerd forget the volume, and a later
                // `-v NAME:/path` quietly make a `local` one of that name.
                // Mount still needs etcd.
                Err(ServiceError::Cluster(ClusterError::Etcd(e))) => {
                    tracing::warn!(volume = %rec.name, error = %e, "etcd unreachable: Get answered from this node's copy");
                    return self.get_recording(docker_name);
                }
                Err(e) => return Err(e),
            }
        }
        let not_found = || ServiceError::NotFound(docker_name.to_owned());
        let parsed = VolumeName::parse(docker_name).map_err(|_| not_found())?;
        let c = self.node().ok_or_else(not_found)?;
        let entry = c
            .coordinator()
            .volume(parsed.name())
            .map_err(ClusterError::from)?
            .ok_or_else(not_found)?;
        let rec =
            CatalogueRecord::decode(&entry.name, &entry.record).map_err(ClusterError::from)?;
        if parsed.profile().is_some_and(|p| p != rec.profile) {
            return Err(not_found());
        }
        self.create(&rec.docker_name, &rec.options)?;
        self.get_recording(docker_name)
    }

    /// List in cluster mode: every catalogued volume, with this node's copy's
    /// docker names where it has a current one.
    pub(super) fn list_clustered(
        &self,
        c: &ClusterNode,
    ) -> Result<Vec<(String, PathBuf)>, ServiceError> {
        let local: BTreeMap<String, VolumeRecord> = self
            .records
            .list()?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let mut out = Vec::new();
        for entry in c.coordinator().volumes().map_err(ClusterError::from)? {
            match local.get(&entry.name) {
                Some(r)
                    if r.cluster
                        .as_ref()
                        .is_some_and(|f| f.created == entry.created) =>
                {
                    let mp = self.backend.path(vref(r));
                    out.extend(r.docker_names().map(|n| (n.to_owned(), mp.clone())));
                }
                _ => {
                    let Ok(rec) = CatalogueRecord::decode(&entry.name, &entry.record) else {
                        tracing::warn!(volume = %entry.name, "unreadable catalogue record; not listed");
                        continue;
                    };
                    // Where the copy would live here: Get makes it there.
                    let path = || -> Result<PathBuf, ServiceError> {
                        let req = self.catalog.request(&rec.docker_name, &rec.options)?;
                        let r = self.new_record(req, &rec.options, VolumeState::Ready)?;
                        Ok(self.backend.path(vref(&r)))
                    };
                    let path = path();
                    match path {
                        Ok(p) => out.push((rec.docker_name, p)),
                        Err(e) => {
                            tracing::warn!(volume = %entry.name, error = %e, "catalogued volume this node cannot hold; not listed")
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Remove's cluster step, just before the data goes: the catalogue
    /// record goes first, and only if no node owns the volume.
    pub(super) fn catalogue_remove(&self, name: &str) -> Result<(), ServiceError> {
        let Some(c) = self.node() else {
            return Ok(());
        };
        match c
            .coordinator()
            .remove_volume(name)
            .map_err(ClusterError::from)?
        {
            Removed::Removed | Removed::Absent => Ok(()),
            Removed::Owned(o) => Err(ClusterError::OwnedElsewhere {
                volume: name.to_owned(),
                node: o.node,
                epoch: o.epoch,
            }
            .into()),
        }
    }

    /// Remove of a volume with no copy on this node.
    pub(super) fn remove_uncopied(&self, docker_name: &str) -> Result<(), ServiceError> {
        let not_found = || ServiceError::NotFound(docker_name.to_owned());
        let c = self.node().ok_or_else(not_found)?;
        let parsed = VolumeName::parse(docker_name).map_err(|_| not_found())?;
        let entry = c
            .coordinator()
            .volume(parsed.name())
            .map_err(ClusterError::from)?
            .ok_or_else(not_found)?;
        self.catalogue_remove(&entry.name)?;
        tracing::info!(volume = %entry.name, "removed from the catalogue (no copy here)");
        Ok(())
    }

    /// Mount's cluster step on a node's first mount: own the volume, or fail
    /// (another owner did not let go, a stale copy, this node fenced). On a
    /// later mount of a volume already mounted here: still owned?
    pub(super) fn claim_for_mount(
        &self,
        rec: &mut VolumeRecord,
        first: bool,
    ) -> Result<(), ServiceError> {
        let Some(c) = self.node() else {
            return Ok(());
        };
        if !first {
            return match c.owned(&rec.name) {
                Some(_) => Ok(()),
                None => Err(ClusterError::Fenced.into()),
            };
        }
        let copy_epoch = rec.cluster.as_ref().and_then(|f| f.epoch).map(Epoch);
        let block = match &rec.settings {
            Settings::Local(l) => l.format == LocalFormat::Block,
            Settings::Ebs(_) => true,
        };
        let mount = block.then(|| self.backend.path(vref(rec)));
        // Swarm mounts here a moment after the old node's Unmount; a dead
        // owner lets go when its lease runs out.
        let wait = c.config().lease_ttl() + Duration::from_secs(10);
        let epoch = c.claim(&rec.name, copy_epoch, mount, wait)?;
        rec.cluster.get_or_insert_with(ClusterFacts::default).epoch = Some(epoch.0);
        Ok(())
    }

    /// Gives up what [`VolumeService::claim_for_mount`] took (the last
    /// Unmount, or a Mount that failed after the claim).
    pub(super) fn release_ownership(&self, name: &str) {
        if let Some(c) = self.node() {
            c.release(name);
        }
    }

    /// At start in cluster mode: catalogue the volumes made before it, and
    /// re-claim those still mounted (a daemon restart under running
    /// containers: the previous run's owner keys are handed over).
    pub(crate) fn join_cluster(&self) -> Result<(), ServiceError> {
        let Some(c) = self.node() else {
            return Ok(());
        };
        let mut seen = BTreeSet::new();
        for mut rec in self.records.list()? {
            seen.insert(rec.name.clone());
            if rec.cluster.is_none() && rec.state == VolumeState::Ready {
                let req = self.catalog.request(&rec.docker_name, &rec.options)?;
                match self.catalogue_create(&req, &rec.options) {
                    Ok(Some(created)) => {
                        rec.cluster = Some(ClusterFacts {
                            created,
                            epoch: None,
                        });
                        self.records.put(&rec)?;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(volume = %rec.docker_name, error = %e, "cannot catalogue a local volume; it stays unlisted in cluster mode");
                        continue;
                    }
                }
            }
            if !rec.mounts.is_empty() {
                let vlock = self.volume_lock(&rec.name);
                let _g = super::lock(&vlock);
                match self.claim_for_mount(&mut rec, true) {
                    Ok(()) => self.records.put(&rec)?,
                    Err(e) => {
                        tracing::error!(volume = %rec.docker_name, error = %e, "mounted here but not owned")
                    }
                }
            }
        }
        tracing::info!(node = c.node(), volumes = seen.len(), "joined the cluster");
        Ok(())
    }
}
