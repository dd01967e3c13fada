//! Warm standbys, the service's side (issue 14; `crate::clustering::standby`
//! has the remote and the lag table).
//!
//! - The owner: [`VolumeService::standby_tick`], run by a thread of the
//!   daemon every few seconds, sends each volume it owns (mounted here) one
//!   pre-copy round per standby its profile asks for.
//! - A standby: [`VolumeService::accept_standby`] (the owner's agent
//!   request) makes this node's copy `Receiving { from: owner }`, blank the
//!   first time, and keeps it so: later rounds and the handover's final
//!   round add only what changed.
//! - Between the two, one sender at a time per volume: a handover waits for
//!   a standby round in flight ([`VolumeService::wait_standby_sends`]); two
//!   senders into one receiver index would each undo the other's rounds.

use super::{ServiceError, VolumeService};
use crate::clustering::standby::{self, StandbyLag};
use crate::clustering::{ClusterError, NodeInfo};
use crate::state::record::{ClusterFacts, VolumeState};
use cluster::Epoch;
use mover::Source;
use profiles::{Settings, VolumeName};
use std::time::{Duration, Instant};

impl VolumeService {
    /// One pass of the owner's side: a round to each standby of each volume
    /// this node owns whose profile keeps standbys. Errors are kept per
    /// standby (shown with its lag) and logged, never raised: the volume is
    /// served whatever its standbys do.
    pub(crate) fn standby_tick(&self) {
        let (Some(c), Some(link)) = (self.cluster.as_ref(), self.standby.as_ref()) else {
            return;
        };
        for v in self.lags.volumes() {
            if c.owned(&v).is_none() {
                self.lags.forget(&v);
            }
        }
        let live: Vec<(String, NodeInfo)> = match c.coordinator().nodes() {
            Ok(n) => n
                .into_iter()
                .filter_map(|(name, b)| {
                    serde_json::from_slice::<NodeInfo>(&b)
                        .ok()
                        .map(|i| (name, i))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "standbys: cannot list the nodes");
                return;
            }
        };
        let records = match self.records.list() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "standbys: cannot list the volumes");
                return;
            }
        };
        let catalog = self.catalog();
        for rec in records {
            let Some(epoch) = c.owned(&rec.name) else {
                continue;
            };
            let profile = catalog.get(&rec.profile);
            let wanted = profile.map_or(0, |p| p.def.standbys);
            // EBS volumes move by snapshot, not by rounds.
            if wanted == 0
                || rec.state != VolumeState::Ready
                || !matches!(rec.settings, Settings::Local(_))
            {
                self.lags.forget(&rec.name);
                continue;
            }
            let label = profile.and_then(|p| p.def.standby_label());
            let eligible = standby::eligible(&live, label.as_ref());
            let picked = standby::pick(c.node(), &eligible, wanted);
            let names: Vec<&str> = picked.iter().map(|(n, _)| n.as_str()).collect();
            self.lags.keep_only(&rec.name, &names);
            let paths = match super::migrate::transfer_paths(&rec) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(volume = %rec.name, error = %e, "standbys: no transfer paths");
                    continue;
                }
            };
            let source = match paths.mode {
                super::migrate::TransferMode::Tree => Source::Tree(paths.data.clone()),
                super::migrate::TransferMode::Image => Source::Image(paths.data.clone()),
            };
            for (node, agent) in picked {
                if !self.begin_standby_send(&rec.name) {
                    continue;
                }
                // Owned still, now that the send is marked: a handover of
                // the volume (after its Unmount here) either saw the mark
                // and waits, or ran after the release this check sees.
                if c.owned(&rec.name) != Some(epoch) {
                    self.end_standby_send(&rec.name);
                    break;
                }
                if let Some(mp) = &paths.mountpoint
                    && crate::backend::sys::is_mountpoint(mp)
                    && let Err(e) =
                        crate::migrate::flush::syncfs(mp, crate::migrate::flush::FLUSH_LIMIT)
                {
                    tracing::warn!(volume = %rec.name, error = %e, "standby round: flush failed; sending what the image holds");
                }
                let started = Instant::now();
                let r = link.round(
                    node,
                    agent,
                    &rec.docker_name,
                    epoch,
                    standby::Sending {
                        source: source.clone(),
                        cache_dir: &paths.cache_dir,
                        changes: self
                            .backend
                            .image_changes(super::vref(&rec), &paths.cache_dir),
                    },
                );
                self.end_standby_send(&rec.name);
                match r {
                    Ok(f) => {
                        tracing::debug!(volume = %rec.name, standby = %node, bytes = f.bytes, ms = f.ms, "standby round");
                        self.lags.round_ok(&rec.name, node, started, &f);
                    }
                    Err(e) => {
                        tracing::warn!(volume = %rec.name, standby = %node, error = %e, "standby round failed");
                        self.lags.round_failed(&rec.name, node, e.to_string());
                    }
                }
            }
        }
    }

    /// The standbys of `name` this node streams to, with their lag (empty
    /// where this node does not own the volume).
    pub(crate) fn standby_lags(&self, name: &str) -> Vec<StandbyLag> {
        self.lags.of(name)
    }

    /// Marks a standby round of `name` in flight; false if one already is.
    fn begin_standby_send(&self, name: &str) -> bool {
        super::lock(&self.standby_sends).insert(name.to_owned())
    }

    fn end_standby_send(&self, name: &str) {
        super::lock(&self.standby_sends).remove(name);
        self.standby_sent.notify_all();
    }

    /// Waits until no standby round of `name` is being sent from here, for
    /// at most `limit` (a round in flight carries at most a few seconds of
    /// writes once the standby is warm).
    pub(super) fn wait_standby_sends(
        &self,
        name: &str,
        limit: Duration,
    ) -> Result<(), ServiceError> {
        let deadline = Instant::now() + limit;
        let mut sends = super::lock(&self.standby_sends);
        while sends.contains(name) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Refused {
                    op: "handover",
                    name: name.to_owned(),
                    reason: format!(
                        "a standby round of it was still being sent after {} s; try again",
                        limit.as_secs()
                    ),
                });
            }
            sends = self
                .standby_sent
                .wait_timeout(sends, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// A standby's side: node `from`, owner of the volume at `epoch`, will
    /// stream rounds into this node's copy. Refused unless etcd says `from`
    /// owns it at that epoch now, and this node's copy is neither in use,
    /// owned, being brought up to date, nor the volume's last write.
    pub(crate) fn accept_standby(
        &self,
        docker_name: &str,
        from: &str,
        epoch: u64,
    ) -> Result<(), ServiceError> {
        let refused = |reason: String| ServiceError::Refused {
            op: "standby",
            name: docker_name.to_owned(),
            reason,
        };
        let c = self
            .cluster
            .as_ref()
            .ok_or_else(|| refused("this daemon is not in cluster mode".into()))?;
        if from == c.node() {
            return Err(refused("a node is never its own standby".into()));
        }
        let name = VolumeName::parse(docker_name)
            .map_err(|e| refused(e.to_string()))?
            .name()
            .to_owned();
        match c.coordinator().owner(&name).map_err(ClusterError::from)? {
            Some(o) if o.node == from && o.epoch == Epoch(epoch) => {}
            Some(o) => {
                return Err(refused(format!(
                    "node {from} does not own it at epoch {epoch} (node {} does, {})",
                    o.node, o.epoch
                )));
            }
            None => {
                return Err(refused(format!(
                    "node {from} does not own it (no node does)"
                )));
            }
        }
        // This node's copy of the catalogue's volume (made if absent).
        self.get_clustered(docker_name)?;
        let receiving = VolumeState::Receiving {
            from: from.to_owned(),
        };
        self.locked(docker_name, |mut rec| {
            if rec.state == receiving {
                return Ok(());
            }
            if !rec.mounts.is_empty() {
                return Err(super::in_use(&rec));
            }
            if c.owned(&rec.name).is_some() || self.is_refreshing(&rec.name) {
                return Err(refused(
                    "this node owns it or is bringing its copy up to date".into(),
                ));
            }
            match &rec.state {
                VolumeState::Ready | VolumeState::Moved { .. } | VolumeState::Receiving { .. } => {}
                other => {
                    return Err(refused(format!(
                        "its copy here is {}; it cannot be a standby now",
                        other.as_str()
                    )));
                }
            }
            let copy = rec.cluster.as_ref().and_then(|f| f.epoch).map(Epoch);
            if let Some(w) = c.coordinator().writer(&rec.name).map_err(ClusterError::from)?
                && w.is_copy(c.node(), copy)
                && rec.state == VolumeState::Ready
            {
                return Err(refused(format!(
                    "this node's copy is its last write ({}); node {from} must take it from here first",
                    w.epoch
                )));
            }
            // The receiver knows only what its own rounds wrote: a copy that
            // was mounted here, or fed by another node, starts blank.
            rec.state = receiving;
            rec.cluster.get_or_insert_with(ClusterFacts::default).epoch = None;
            self.records.put(&rec)?;
            self.backend.remove(super::vref(&rec))?;
            self.backend.create(super::vref(&rec))?;
            super::migrate::blank_for_receive(&rec)?;
            tracing::info!(volume = %rec.name, from, epoch, "standby copy: receiving the owner's rounds");
            Ok(())
        })
    }
}
