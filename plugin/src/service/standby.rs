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
//! - Failover ([`VolumeService::take_over`]): the owner died (its lease ran
//!   out), this node claimed the volume, and its copy is the dead owner's
//!   standby. It is served only if its last committed round is one the
//!   owner marked at the epoch of the last write (`clustering::standby`
//!   says why that is exact), sealed for a block volume, and a block image
//!   passes `e2fsck -n -f` / `xfs_repair -n -f`. Otherwise the Mount fails,
//!   saying why, and the copy is kept as it is.
//!   - A block volume's copy is then the image as it was frozen by the
//!     owner at the mark's time: what a crash of the owner at that moment
//!     would have left, with the journal flushed.
//!   - A dir volume's copy is each file as the owner's scan read it (no
//!     freeze: files read at different moments of the scan, a file written
//!     during the scan's read of it may be torn, as a copy of a running
//!     application's files is). Its rounds are exact too: a file that
//!     changed between the scan and the send fails the round, so no file
//!     mixes two rounds.
//!   - Data age lost (RPO): now minus the mark's time, by the owner's clock
//!     as it sent it (the nodes' clocks are assumed NTP-close; the standby's
//!     own receive time is kept beside it).

use super::{ServiceError, VolumeService};
use crate::clustering::standby::{self, KeptMark, StandbyLag};
use crate::clustering::{ClusterError, NodeInfo};
use crate::migrate::wire::RoundMark;
use crate::state::record::{ClusterFacts, VolumeRecord, VolumeState};
use cluster::{Epoch, Writer};
use mover::Source;
use profiles::{LocalFormat, Settings, VolumeName};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A failover into this node's standby copy, for inspect and `cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct LastTakeover {
    /// The dead owner, and the epoch it last wrote at.
    pub(crate) from: String,
    pub(crate) from_epoch: u64,
    /// This node's epoch since.
    pub(crate) epoch: u64,
    /// The round taken over was scanned with the filesystem frozen.
    pub(crate) sealed: bool,
    /// The round's scan (its freeze), Unix ms by the owner's clock.
    pub(crate) round_at_unix_ms: u64,
    /// When the round's mark reached this node, Unix ms by its clock.
    pub(crate) mark_received_unix_ms: u64,
    /// When this node found the writer gone (its lease expired: its keys
    /// went), Unix ms: the writer stopped writing before it (fence margin).
    pub(crate) writer_gone_unix_ms: u64,
    /// Data age of the copy when served: the takeover's time minus the
    /// round's (it counts the wait for the lease and for Swarm's
    /// rescheduling too; the data the dead owner wrote and lost spans at
    /// most `writer_gone_unix_ms - round_at_unix_ms`).
    pub(crate) rpo_ms: u64,
    /// From the Mount's start (its wait for the dead owner's lease included).
    pub(crate) takeover_ms: u64,
    pub(crate) at_unix_ms: u64,
    /// The check the copy passed before it was served.
    pub(crate) checked: String,
}

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
                let warm = self
                    .lags
                    .of(&rec.name)
                    .iter()
                    .any(|l| l.node == *node && l.rounds > 0 && l.error.is_none());
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
                            .write_changes(super::vref(&rec), &paths.cache_dir),
                        // A mounted block volume's scan runs frozen (the
                        // round is sealed) once the standby holds a round:
                        // the first carries the whole image, unfrozen.
                        freeze: paths
                            .mountpoint
                            .as_ref()
                            .filter(|mp| crate::backend::sys::is_mountpoint(mp))
                            .filter(|_| warm)
                            .map(|mp| (mp.clone(), self.freeze_markers())),
                    },
                );
                self.end_standby_send(&rec.name);
                match r {
                    Ok(f) => {
                        tracing::debug!(volume = %rec.name, standby = %node, bytes = f.bytes, ms = f.ms, sealed = f.sealed, freeze_ms = ?f.freeze_ms, "standby round");
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
    /// `mark`: what the round that follows will leave here, kept (durably,
    /// before that round can commit) for a takeover to check.
    pub(crate) fn accept_standby(
        &self,
        docker_name: &str,
        from: &str,
        epoch: u64,
        mark: Option<RoundMark>,
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
        let keep = |rec: &VolumeRecord| -> Result<(), ServiceError> {
            let Some(mark) = &mark else {
                return Ok(());
            };
            let paths = super::migrate::transfer_paths(rec)?;
            let kept = KeptMark {
                from: from.to_owned(),
                epoch,
                mark: mark.clone(),
                received_unix_ms: standby::now_unix_ms(),
            };
            standby::remember_mark(&paths.state_dir, kept).map_err(|e| ServiceError::Migration {
                op: "standby",
                name: rec.docker_name.clone(),
                message: format!("keeping the round's mark: {e}"),
            })
        };
        self.locked(docker_name, |mut rec| {
            if rec.state == receiving {
                return keep(&rec);
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
            keep(&rec)
        })
    }

    /// Where a freeze of a volume leaves its marker (`clustering::freeze`).
    pub(super) fn freeze_markers(&self) -> PathBuf {
        self.data_root.join(".daffe-frozen")
    }

    /// The last failover into this node's copy of `name` (since the start).
    pub(crate) fn last_takeover(&self, name: &str) -> Option<LastTakeover> {
        super::lock(&self.taken).get(name).cloned()
    }

    /// Failover, under the volume's lock: this node claimed `rec` (at
    /// `epoch`) after its last writer `writer` died, and its copy is to be
    /// served only if it is that writer's standby holding a round the
    /// writer marked at its epoch (see the module's doc). On success the
    /// copy is Ready and the caller adopts it; on failure the reason, and
    /// the copy is left as it is.
    pub(super) fn take_over(
        &self,
        rec: &mut VolumeRecord,
        epoch: Epoch,
        writer: &Writer,
        started: Instant,
    ) -> Result<LastTakeover, String> {
        let gone = standby::now_unix_ms();
        match &rec.state {
            VolumeState::Receiving { from } if *from == writer.node => {}
            VolumeState::Receiving { from } => {
                return Err(format!(
                    "this node's copy is a standby of node {from}, not of node {}",
                    writer.node
                ));
            }
            other => {
                return Err(format!(
                    "this node holds no standby copy of it (its copy here is {})",
                    other.as_str()
                ));
            }
        }
        let block = matches!(&rec.settings, Settings::Local(l) if l.format == LocalFormat::Block);
        let paths = super::migrate::transfer_paths(rec).map_err(|e| e.to_string())?;
        let dest = match paths.mode {
            super::migrate::TransferMode::Tree => mover::Destination::Tree(paths.data.clone()),
            super::migrate::TransferMode::Image => mover::Destination::Image(paths.data.clone()),
        };
        // A round committed but not wholly applied (this node died during
        // it) is finished first; one never committed never touched the copy.
        let root = mover::Receiver::open(&dest, &paths.state_dir)
            .and_then(|mut rx| {
                rx.recover(&mover::ReceiveOptions::default())?;
                Ok(rx.applied_root())
            })
            .map_err(|e| format!("its receiver state: {e}"))?
            .ok_or("no standby round ever completed here")?
            .to_hex();
        let marks = standby::read_marks(&paths.state_dir);
        let Some(m) = marks
            .iter()
            .rev()
            .find(|m| m.from == writer.node && m.epoch == writer.epoch.0 && m.mark.root == root)
        else {
            if let Some(old) = marks
                .iter()
                .rev()
                .find(|m| m.from == writer.node && m.mark.root == root)
            {
                return Err(format!(
                    "its last round is of node {}'s epoch {}, but the last write is of {} \
                     (written since, never sent here)",
                    writer.node, old.epoch, writer.epoch
                ));
            }
            return Err(format!(
                "its last committed round is none that node {} announced at {} \
                     (an unmarked round, or none since that epoch began)",
                writer.node, writer.epoch
            ));
        };
        let checked = if block {
            if !m.mark.sealed {
                return Err(
                    "its last round was not sealed (the owner could not freeze the filesystem for its scan)"
                        .into(),
                );
            }
            let Settings::Local(s) = &rec.settings else {
                return Err("not a local volume".into());
            };
            let p = crate::backend::local::paths::LocalPaths::new(&rec.name, s);
            crate::backend::local::block::check_received(&rec.docker_name, s, &p)
                .map_err(|e| e.to_string())?;
            match s.filesystem.unwrap_or(profiles::Filesystem::Ext4) {
                profiles::Filesystem::Ext4 => "e2fsck -n -f: clean",
                profiles::Filesystem::Xfs => "xfs_repair -n -f: clean",
            }
        } else {
            "dir volume: each file as the owner's scan read it"
        };
        let now = standby::now_unix_ms();
        let t = LastTakeover {
            from: writer.node.clone(),
            from_epoch: writer.epoch.0,
            epoch: epoch.0,
            sealed: m.mark.sealed,
            round_at_unix_ms: m.mark.at_unix_ms,
            mark_received_unix_ms: m.received_unix_ms,
            writer_gone_unix_ms: gone,
            rpo_ms: now.saturating_sub(m.mark.at_unix_ms),
            takeover_ms: crate::migrate::report::millis(started.elapsed()),
            at_unix_ms: now,
            checked: checked.to_owned(),
        };
        rec.state = VolumeState::Ready;
        rec.received_from = Some(writer.node.clone());
        Ok(t)
    }

    /// Records a takeover done (after the adopt), for inspect.
    pub(super) fn took_over(&self, name: &str, t: LastTakeover) {
        tracing::warn!(volume = name, from = %t.from, epoch = t.epoch, rpo_ms = t.rpo_ms,
            takeover_ms = t.takeover_ms, sealed = t.sealed, checked = %t.checked,
            "failover: took the volume over from this node's standby copy");
        super::lock(&self.taken).insert(name.to_owned(), t);
    }
}
