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
use crate::clustering::handover::HandoverPlan;
use crate::clustering::{Claimed, ClusterError, ClusterNode};
use crate::migrate::wire::PullReport;
use crate::state::record::{ClusterFacts, VolumeRecord, VolumeState};
use cluster::{Epoch, Removed, Writer};
use profiles::{LocalFormat, Settings, VolumeName, VolumeRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The longest a Mount waits for the last writer to hand a stale copy's
/// volume over: inside the Mount handler's own limit (100 s), with the
/// claim's wait before it mostly spent on a dead owner, not a live one.
const HANDOVER_LIMIT: Duration = Duration::from_secs(80);

/// The longest `daffe volume move` waits for another node's pull (its own
/// handover limit and the steps around it).
const PULL_LIMIT: Duration = Duration::from_secs(95);

/// The longest a handover waits for a standby round of the volume still in
/// flight from this node (started before the Unmount): once the standby is
/// warm a round carries seconds of writes.
const STANDBY_SEND_WAIT: Duration = Duration::from_secs(30);

/// The last handover into a copy here, for inspect: a move into a warm
/// standby carries only the last delta, into a blank copy the whole volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LastHandover {
    pub(crate) from: String,
    pub(crate) bytes: u64,
    /// From the request to the commit, as this node waited for it.
    pub(crate) ms: u64,
}

/// A stale copy, claimed (in etcd, not yet owned), to be brought up to date
/// from its last writer before it is mounted.
#[derive(Debug, Clone)]
pub(super) struct Refresh {
    /// The volume's NAME.
    pub(super) name: String,
    pub(super) epoch: Epoch,
    pub(super) writer: Writer,
    /// The writer's agent, as it announced it.
    pub(super) agent: String,
}

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
    /// (another owner did not let go, this node fenced). A stale copy comes
    /// back as a [`Refresh`] to run (the claim held meanwhile), or, when it
    /// cannot be brought up to date (the writer's node is gone, no
    /// certificate to reach it), as an error. On a later mount of a volume
    /// already mounted here: still owned?
    pub(super) fn claim_for_mount(
        &self,
        rec: &mut VolumeRecord,
        first: bool,
    ) -> Result<Option<Refresh>, ServiceError> {
        // Swarm mounts here a moment after the old node's Unmount; a dead
        // owner lets go when its lease runs out.
        let started = std::time::Instant::now();
        let wait = self.node().map_or(Duration::ZERO, |c| {
            c.config().lease_ttl() + Duration::from_secs(10)
        });
        self.claim_copy_here(rec, first, wait, started)
    }

    /// [`VolumeService::claim_for_mount`], waiting at most `wait` for
    /// another owner to let go. `started`: when the Mount (or move) began,
    /// for a failover's takeover time.
    fn claim_copy_here(
        &self,
        rec: &mut VolumeRecord,
        first: bool,
        wait: Duration,
        started: std::time::Instant,
    ) -> Result<Option<Refresh>, ServiceError> {
        let Some(c) = self.node() else {
            return Ok(None);
        };
        if !first {
            return match c.owned(&rec.name) {
                Some(_) => Ok(None),
                None => Err(ClusterError::Fenced.into()),
            };
        }
        let copy_epoch = rec.cluster.as_ref().and_then(|f| f.epoch).map(Epoch);
        let mount = self.fence_mount(rec);
        match c.claim_copy(&rec.name, copy_epoch, mount, wait)? {
            Claimed::Current(epoch) => {
                if matches!(rec.state, VolumeState::Receiving { .. }) {
                    // Never reached by the rules (a copy is blanked only
                    // when stale, and a later write is never its own older
                    // one); an incomplete copy must not be served anyway.
                    c.release(&rec.name);
                    return Err(ClusterError::NotRefreshed {
                        volume: rec.name.clone(),
                        writer: c.node().to_owned(),
                        epoch,
                        reason: "this node's copy is incomplete".into(),
                    }
                    .into());
                }
                // A copy handed over to a node that never adopted it is
                // still the last write: it is this node's volume again.
                if matches!(rec.state, VolumeState::Moved { .. }) {
                    rec.state = VolumeState::Ready;
                }
                rec.cluster.get_or_insert_with(ClusterFacts::default).epoch = Some(epoch.0);
                Ok(None)
            }
            Claimed::Stale { epoch, writer } => {
                let volume = rec.name.clone();
                let refuse = |reason: String| -> ServiceError {
                    c.give_back(&volume, epoch);
                    ClusterError::NotRefreshed {
                        volume: volume.clone(),
                        writer: writer.node.clone(),
                        epoch: writer.epoch,
                        reason,
                    }
                    .into()
                };
                if self.handover.is_none() {
                    return Err(refuse(
                        "this node has no agent certificate to reach it with ([cluster] tls_dir)"
                            .into(),
                    ));
                }
                if writer.node == c.node() {
                    return Err(refuse("this node no longer holds that write".into()));
                }
                match c.agent_of(&writer.node) {
                    Ok(Some(agent)) => Ok(Some(Refresh {
                        name: rec.name.clone(),
                        epoch,
                        writer,
                        agent,
                    })),
                    // The writer's lease ran out (its node key went with
                    // it, and this claim won): failover, if this node's
                    // copy is its standby holding a round it marked.
                    Ok(None) => {
                        let gone = format!(
                            "node {} is not in the cluster now (down, or cut off from etcd)",
                            writer.node
                        );
                        match self.take_over(rec, epoch, &writer, started) {
                            Ok(t) => {
                                let adopted = c
                                    .adopt(&rec.name, epoch, self.fence_mount(rec))
                                    .inspect_err(|_| c.give_back(&rec.name, epoch))?;
                                rec.cluster.get_or_insert_with(ClusterFacts::default).epoch =
                                    Some(adopted.0);
                                self.records.put(rec)?;
                                self.took_over(&rec.name, t);
                                Ok(None)
                            }
                            Err(why) => Err(refuse(format!(
                                "{gone}, and this node cannot take over from its copy: {why}"
                            ))),
                        }
                    }
                    Err(e) => Err(refuse(e.to_string())),
                }
            }
        }
    }

    /// The block filesystem the watchdog shuts down when this node's lease
    /// runs out while it owns `rec`.
    fn fence_mount(&self, rec: &VolumeRecord) -> Option<PathBuf> {
        let block = match &rec.settings {
            Settings::Local(l) => l.format == LocalFormat::Block,
            Settings::Ebs(_) => true,
        };
        block.then(|| self.backend.path(vref(rec)))
    }

    /// A Refresh's first step, under the volume's lock: the copy becomes
    /// one being received from the writer, and other Mounts of it are
    /// refused until [`VolumeService::adopt_refreshed`]. A warm standby of
    /// the writer's (already receiving its rounds) is kept as it is, so the
    /// handover sends only what changed since its last round; any other
    /// copy starts blank (the receiver knows only what its own rounds
    /// wrote).
    pub(super) fn begin_refresh(
        &self,
        rec: &mut VolumeRecord,
        r: &Refresh,
    ) -> Result<(), ServiceError> {
        super::lock(&self.refreshing).insert(rec.name.clone());
        let mut start = || -> Result<(), ServiceError> {
            let receiving = VolumeState::Receiving {
                from: r.writer.node.clone(),
            };
            if rec.state == receiving {
                tracing::info!(volume = %rec.name, from = %r.writer.node, "warm standby: only the last delta comes");
                return Ok(());
            }
            rec.state = receiving;
            self.records.put(rec)?;
            self.backend.remove(vref(rec))?;
            self.backend.create(vref(rec))?;
            super::migrate::blank_for_receive(rec)
        };
        start().inspect_err(|_| self.end_refresh(&rec.name, Some(r)))
    }

    /// The Refresh itself, with no lock held (the writer's agent sends the
    /// volume into this node's agent, which takes the volume's lock).
    pub(super) fn run_refresh(&self, docker_name: &str, r: &Refresh) -> Result<(), String> {
        let Some(h) = &self.handover else {
            return Err("no handover configured".into());
        };
        tracing::info!(volume = docker_name, from = %r.writer.node, agent = %r.agent, "stale copy: asking the last writer for the volume");
        let t = std::time::Instant::now();
        let res = h
            .handover(&r.writer.node, &r.agent, docker_name, HANDOVER_LIMIT)
            .map_err(|e| e.to_string());
        let ms = crate::migrate::report::millis(t.elapsed());
        tracing::info!(
            volume = docker_name,
            ms,
            bytes = res.as_ref().map_or(0, |h| h.bytes),
            ok = res.is_ok(),
            "handover ended"
        );
        let handed = res?;
        super::lock(&self.handed).insert(
            r.name.clone(),
            LastHandover {
                from: r.writer.node.clone(),
                bytes: handed.bytes,
                ms,
            },
        );
        Ok(())
    }

    /// The last handover into this node's copy of `name` (since the start).
    pub(super) fn last_handover(&self, name: &str) -> Option<LastHandover> {
        super::lock(&self.handed).get(name).cloned()
    }

    /// A Refresh's last step, under the volume's lock again: the copy was
    /// committed here, received from the writer (whatever the reply said:
    /// a lost reply after the commit is fine), so it is this node's volume
    /// from now on. Otherwise the claim goes back and the Mount fails.
    pub(super) fn adopt_refreshed(
        &self,
        rec: &mut VolumeRecord,
        r: &Refresh,
        outcome: Result<(), String>,
    ) -> Result<(), ServiceError> {
        let Some(c) = self.node() else {
            return Err(ServiceError::Internal {
                op: "mount",
                name: rec.name.clone(),
                message: "a refresh without cluster mode".into(),
            });
        };
        let committed = rec.state == VolumeState::Ready
            && rec.received_from.as_deref() == Some(r.writer.node.as_str());
        if !committed {
            c.give_back(&rec.name, r.epoch);
            return Err(ClusterError::NotRefreshed {
                volume: rec.name.clone(),
                writer: r.writer.node.clone(),
                epoch: r.writer.epoch,
                reason: outcome
                    .err()
                    .unwrap_or_else(|| "the copy was not committed here".into()),
            }
            .into());
        }
        if let Err(e) = &outcome {
            tracing::warn!(volume = %rec.name, error = %e, "the handover's reply was lost, but the copy was committed here");
        }
        let epoch = c
            .adopt(&rec.name, r.epoch, self.fence_mount(rec))
            .inspect_err(|_| c.give_back(&rec.name, r.epoch))?;
        rec.cluster.get_or_insert_with(ClusterFacts::default).epoch = Some(epoch.0);
        tracing::info!(volume = %rec.name, from = %r.writer.node, %epoch, "stale copy brought up to date; owned");
        Ok(())
    }

    /// Other Mounts of the volume may proceed again (the refresh adopted,
    /// failed, or never started; `r`: its claim is given back if it was
    /// not adopted).
    pub(super) fn end_refresh(&self, name: &str, r: Option<&Refresh>) {
        super::lock(&self.refreshing).remove(name);
        if let (Some(r), Some(c)) = (r, self.node())
            && c.owned(name).is_none()
        {
            c.give_back(name, r.epoch);
        }
    }

    /// Whether a Refresh of `name` runs now.
    pub(super) fn is_refreshing(&self, name: &str) -> bool {
        super::lock(&self.refreshing).contains(name)
    }

    /// `daffe volume move VOLUME --to THIS-NODE`: makes this node's copy
    /// the volume (brought up to date from the last writer when stale),
    /// without mounting it; ownership is given up again at the end. Refused
    /// at once while another node owns the volume (a running service: Swarm
    /// moves it, not this command).
    pub(crate) fn pull(&self, docker_name: &str) -> Result<PullReport, ServiceError> {
        let Some(c) = self.node() else {
            return Err(ServiceError::Refused {
                op: "volume move",
                name: docker_name.to_owned(),
                reason: "this daemon is not in cluster mode (no [cluster] in its config)".into(),
            });
        };
        // This node's copy of the catalogue's volume (made empty if absent).
        self.get_clustered(docker_name)?;
        let t = std::time::Instant::now();
        let refresh = self.locked(docker_name, |mut rec| {
            if !rec.mounts.is_empty() {
                return Ok(None);
            }
            if self.is_refreshing(&rec.name) {
                return Err(ServiceError::NotMountable {
                    moved: false,
                    docker_name: rec.docker_name,
                    reason: "its copy here is being brought up to date; try again".into(),
                });
            }
            match self.claim_copy_here(&mut rec, true, Duration::ZERO, t)? {
                None => {
                    self.records.put(&rec)?;
                    self.release_ownership(&rec.name);
                    Ok(None)
                }
                Some(r) => {
                    self.begin_refresh(&mut rec, &r)?;
                    Ok(Some(r))
                }
            }
        })?;
        let Some(r) = refresh else {
            return Ok(PullReport {
                volume: docker_name.to_owned(),
                node: c.node().to_owned(),
                from: None,
                ms: crate::migrate::report::millis(t.elapsed()),
            });
        };
        let outcome = self.run_refresh(docker_name, &r);
        let res = self.locked(docker_name, |mut rec| {
            self.adopt_refreshed(&mut rec, &r, outcome)?;
            self.records.put(&rec)?;
            self.release_ownership(&rec.name);
            Ok(())
        });
        self.end_refresh(&r.name, Some(&r));
        res?;
        Ok(PullReport {
            volume: docker_name.to_owned(),
            node: c.node().to_owned(),
            from: Some(r.writer.node),
            ms: crate::migrate::report::millis(t.elapsed()),
        })
    }

    /// `daffe volume move VOLUME --to NODE`, from any node: here, or asked
    /// of `node`'s agent.
    pub(crate) fn move_to(
        &self,
        docker_name: &str,
        node: &str,
    ) -> Result<PullReport, ServiceError> {
        let refused = |reason: String| ServiceError::Refused {
            op: "volume move",
            name: docker_name.to_owned(),
            reason,
        };
        let c = self.node().ok_or_else(|| {
            refused("this daemon is not in cluster mode (no [cluster] in its config)".into())
        })?;
        if node == c.node() {
            return self.pull(docker_name);
        }
        let h = self.handover.as_ref().ok_or_else(|| {
            refused(
                "this node has no agent certificate to reach other nodes with ([cluster] tls_dir)"
                    .into(),
            )
        })?;
        let agent = c
            .agent_of(node)?
            .ok_or_else(|| refused(format!("node {node} is not in the cluster now")))?;
        h.pull(node, &agent, docker_name, PULL_LIMIT)
            .map_err(|e| refused(e.to_string()))
    }

    /// The last writer's side of a handover (its agent asks): `to` owns the
    /// volume now and this node's copy holds the last write, so it may be
    /// sent there; the answer is `to`'s agent.
    pub(crate) fn handover_plan(
        &self,
        docker_name: &str,
        to: &str,
    ) -> Result<HandoverPlan, ServiceError> {
        let refused = |reason: String| ServiceError::Refused {
            op: "handover",
            name: docker_name.to_owned(),
            reason,
        };
        let c = self
            .node()
            .ok_or_else(|| refused("this daemon is not in cluster mode".into()))?;
        // One sender per receiver: a standby round started before the
        // Unmount ends first (none starts after it: not owned any more).
        let name = self.find(docker_name)?.name;
        self.wait_standby_sends(&name, STANDBY_SEND_WAIT)?;
        self.locked(docker_name, |mut rec| {
            if !rec.mounts.is_empty() {
                return Err(super::in_use(&rec));
            }
            match c
                .coordinator()
                .owner(&rec.name)
                .map_err(ClusterError::from)?
            {
                Some(o) if o.node == to => {}
                Some(o) => {
                    return Err(refused(format!(
                        "node {to} does not own it (node {} does, {})",
                        o.node, o.epoch
                    )));
                }
                None => return Err(refused(format!("node {to} does not own it (no node does)"))),
            }
            let copy = rec.cluster.as_ref().and_then(|f| f.epoch).map(Epoch);
            match c
                .coordinator()
                .writer(&rec.name)
                .map_err(ClusterError::from)?
            {
                Some(w) if w.is_copy(c.node(), copy) => {}
                Some(w) => {
                    return Err(refused(format!(
                        "this node's copy is not the last write (node {} wrote it at {})",
                        w.node, w.epoch
                    )));
                }
                None => return Err(refused("it was never written".into())),
            }
            // Handed over before to a node that never adopted it: this copy
            // is still the last write, and goes again.
            if matches!(rec.state, VolumeState::Moved { .. }) {
                rec.state = VolumeState::Ready;
                self.records.put(&rec)?;
            }
            let agent = c
                .agent_of(to)?
                .ok_or_else(|| refused(format!("node {to} is not in the cluster now")))?;
            Ok(HandoverPlan { agent })
        })
    }

    /// Gives up what [`VolumeService::claim_for_mount`] took (the last
    /// Unmount, or a Mount that failed after the claim).
    pub(super) fn release_ownership(&self, name: &str) {
        if let Some(c) = self.node() {
            c.release(name);
        }
    }

    /// The last write of `rec`'s volume, when another node made it after
    /// this node's copy (a failover while this node was down): this copy is
    /// never served again. `None` when it is this node's, or etcd cannot
    /// say now (the claim path decides then).
    fn written_elsewhere(&self, c: &ClusterNode, rec: &VolumeRecord) -> Option<Writer> {
        let copy = rec.cluster.as_ref().and_then(|f| f.epoch).map(Epoch);
        c.coordinator()
            .writer(&rec.name)
            .ok()
            .flatten()
            .filter(|w| w.node != c.node() && !w.is_copy(c.node(), copy))
    }

    /// At start: `rec` still counts the mounts of containers from before
    /// this daemon was killed, but node `w` wrote the volume since. Docker
    /// never sends their Unmount when its engine restarted first (the
    /// plugin was down then). Once nothing holds the copy (those containers
    /// are gone; the backend proves it), the count goes, so the copy can
    /// become the new owner's standby; while one still holds it, the count
    /// stays until Docker's Unmount. Never re-claimed: a later Mount here
    /// brings the copy up to date from `w` first, or is refused.
    fn drop_stale_mounts(&self, rec: &mut VolumeRecord, w: &Writer) -> Result<(), ServiceError> {
        match self.backend.release_left(vref(rec)) {
            Ok(()) => {
                let dropped = rec.mounts.total();
                rec.mounts = Default::default();
                self.records.put(rec)?;
                tracing::warn!(volume = %rec.docker_name, writer = %w.node, epoch = %w.epoch, dropped, "stale copy: node {} wrote it since; the containers that mounted it here are gone, so their mounts are no longer counted", w.node);
            }
            Err(e) => {
                tracing::warn!(volume = %rec.docker_name, writer = %w.node, error = %e, "stale copy still in use here; it counts its mounts until Docker unmounts them");
            }
        }
        Ok(())
    }

    /// At start in cluster mode: catalogue the volumes made before it, and
    /// re-claim those still mounted (a daemon restart under running
    /// containers: the previous run's owner keys are handed over).
    pub(crate) fn join_cluster(&self) -> Result<(), ServiceError> {
        let Some(c) = self.node() else {
            return Ok(());
        };
        // A run killed during a sealed round's scan left that volume frozen.
        crate::clustering::freeze::thaw_left(&self.freeze_markers());
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
                if let Some(w) = self.written_elsewhere(c, &rec) {
                    self.drop_stale_mounts(&mut rec, &w)?;
                    continue;
                }
                match self.claim_for_mount(&mut rec, true) {
                    Ok(None) => self.records.put(&rec)?,
                    Ok(Some(r)) => {
                        c.give_back(&rec.name, r.epoch);
                        tracing::error!(volume = %rec.docker_name, writer = %r.writer.node, "mounted here, but node {} wrote it last", r.writer.node);
                    }
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
