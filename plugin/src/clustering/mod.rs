//! Cluster mode in the daemon (issue 14; the design is cluster/DESIGN.md):
//! this node's etcd lease, the volumes it owns and their epochs, the
//! cluster-wide catalogue, and the fence. The rules themselves (lease
//! deadline, epochs, the etcd transactions) live in the `cluster` crate;
//! this module applies them to the daemon's volumes.
//!
//! - this file: [`ClusterNode`]: grant, keep-alive, claim and release;
//! - [`keeper`]: the thread that renews the lease and fences on time;
//! - [`fencing`]: the heartbeat file and the watchdog process that shuts a
//!   volume's filesystem down when the lease deadline passes, even with the
//!   daemon dead;
//! - [`catalogue`]: what the catalogue record of a volume holds;
//! - [`handover`]: asking the last writer's agent for the volume when this
//!   node's copy is stale (the data path);
//! - [`standby`]: warm standbys: which nodes, one round to one, their lag;
//! - [`freeze`]: a block volume frozen for a sealed standby round's scan;
//! - [`status`]: `daffe cluster status`.

pub(crate) mod catalogue;
pub(crate) mod fencing;
pub(crate) mod freeze;
pub(crate) mod handover;
mod keeper;
pub(crate) mod standby;
pub(crate) mod status;

use cluster::{Claim, ClusterConfig, Coordinator, CoordinatorError, Epoch, LeaseId, LeaseRule};
use cluster::{Standing, Writer};
use fencing::{Heartbeat, boot_ms};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Every etcd call's limit: a Docker handler must never hang on etcd.
pub(crate) const ETCD_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a Mount retries a claim that another node holds.
const CLAIM_RETRY: Duration = Duration::from_millis(250);
/// The longest a Mount waits for another owner to let go: inside the
/// Mount handler's own limit (100 s), itself inside Docker's 120 s.
const CLAIM_WAIT_MAX: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error(transparent)]
    Etcd(#[from] CoordinatorError),
    #[error(
        "volume {volume:?} is owned by node {node} ({epoch}), which did not let go within {secs} s; \
         stop its container there, or wait for that node's lease to run out"
    )]
    Owned {
        volume: String,
        node: String,
        epoch: Epoch,
        secs: u64,
    },
    #[error(
        "volume {volume:?} is in use on node {node} (it owns it, {epoch}); stop its containers there first"
    )]
    OwnedElsewhere {
        volume: String,
        node: String,
        epoch: Epoch,
    },
    #[error(
        "this node's copy of volume {volume:?} is stale: node {writer} wrote it last ({epoch}), \
         and it could not be brought up to date from there: {reason}"
    )]
    NotRefreshed {
        volume: String,
        writer: String,
        epoch: Epoch,
        reason: String,
    },
    #[error(transparent)]
    Record(#[from] catalogue::RecordError),
    #[error(
        "this node is fenced: its etcd lease was not renewed in time, so it owns no volume until it re-claims"
    )]
    Fenced,
}

/// One term of this node's membership: a lease and what it owns under it.
#[derive(Debug)]
struct Term {
    lease: LeaseId,
    /// CLOCK_BOOTTIME ms when the newest acknowledged keep-alive (or the
    /// grant) was sent: the lease rule counts from the send.
    acked_sent_ms: u64,
    /// When the last keep-alive was sent (acknowledged or not).
    last_sent_ms: u64,
    /// The deadline passed in this term: nothing is owned any more, and the
    /// next acknowledged renewal starts a new term instead of reviving this.
    fenced: bool,
    /// Owned volumes: their epoch and, for a block volume, the mounted
    /// filesystem the watchdog shuts down at the deadline.
    owned: BTreeMap<String, (Epoch, Option<PathBuf>)>,
    /// Block filesystems of volumes lost while mounted (fenced), until their
    /// last Unmount here; they outlive a term.
    fenced_mounts: BTreeMap<String, PathBuf>,
}

impl Term {
    /// Fences: every owned volume is lost; its filesystem is to be shut.
    fn fence(&mut self) -> Vec<String> {
        self.fenced = true;
        let lost = std::mem::take(&mut self.owned);
        let names = lost.keys().cloned().collect();
        for (v, (_, m)) in lost {
            if let Some(m) = m {
                self.fenced_mounts.insert(v, m);
            }
        }
        names
    }
}

/// What a claim got: see [`ClusterNode::claim_copy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// Owned, and this node's copy is the volume.
    Current(Epoch),
    /// Claimed in etcd at `epoch`, but `writer` wrote the volume last: this
    /// node's copy is stale and not owned until it is brought up to date.
    Stale { epoch: Epoch, writer: Writer },
}

pub(crate) struct ClusterNode {
    cfg: ClusterConfig,
    coord: Arc<dyn Coordinator>,
    rule: LeaseRule,
    term: Mutex<Term>,
    heartbeat: PathBuf,
    started: Instant,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.cfg.node)
            .field("cluster", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a node announces under its lease (`nodes/NODE`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct NodeInfo {
    pub(crate) agent: String,
    pub(crate) version: String,
    /// `[cluster] labels` (absent from older nodes' records: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, String>,
}

impl ClusterNode {
    /// Joins the cluster: a lease, this node's record, the heartbeat file.
    pub(crate) fn start(
        cfg: ClusterConfig,
        coord: Arc<dyn Coordinator>,
        heartbeat: PathBuf,
    ) -> Result<Arc<Self>, ClusterError> {
        let rule = LeaseRule::new(cfg.lease_ttl(), cfg.fence_margin());
        let sent = boot_ms();
        let lease = coord.grant(cfg.lease_ttl())?;
        let me = Self {
            cfg,
            coord,
            rule,
            term: Mutex::new(Term {
                lease,
                acked_sent_ms: sent,
                last_sent_ms: sent,
                fenced: false,
                owned: BTreeMap::new(),
                fenced_mounts: BTreeMap::new(),
            }),
            heartbeat,
            started: Instant::now(),
        };
        me.register(lease)?;
        me.beat(&lock(&me.term));
        Ok(Arc::new(me))
    }

    pub(crate) fn node(&self) -> &str {
        &self.cfg.node
    }

    pub(crate) fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub(crate) fn coordinator(&self) -> &dyn Coordinator {
        self.coord.as_ref()
    }

    fn register(&self, lease: LeaseId) -> Result<(), ClusterError> {
        let info = NodeInfo {
            agent: self.cfg.agent.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.cfg.labels.clone(),
        };
        let bytes = serde_json::to_vec(&info).unwrap_or_default();
        Ok(self.coord.register_node(&self.cfg.node, &bytes, lease)?)
    }

    /// Tells the watchdog until when the owned block volumes may be written.
    fn beat(&self, term: &Term) {
        let hb = Heartbeat {
            writable_until_ms: if term.fenced {
                0
            } else {
                self.rule.writable_until(term.acked_sent_ms)
            },
            mounts: term.owned.values().filter_map(|(_, m)| m.clone()).collect(),
            fenced: term.fenced_mounts.values().cloned().collect(),
        };
        if let Err(e) = fencing::write(&self.heartbeat, &hb) {
            tracing::error!(file = %self.heartbeat.display(), error = %e, "writing the fence heartbeat");
        }
    }

    /// The lease to write under, if writes are safe now.
    fn writable_lease(&self, term: &Term) -> Result<LeaseId, ClusterError> {
        match self.rule.standing(term.acked_sent_ms, boot_ms()) {
            Standing::Held { .. } if !term.fenced => Ok(term.lease),
            _ => Err(ClusterError::Fenced),
        }
    }

    /// [`ClusterNode::claim_copy`], with a stale claim given straight back
    /// as an error (what a node with no way to refresh its copy does).
    #[cfg(test)]
    pub(crate) fn claim(
        &self,
        volume: &str,
        copy_epoch: Option<Epoch>,
        mount: Option<PathBuf>,
        wait: Duration,
    ) -> Result<Epoch, ClusterError> {
        match self.claim_copy(volume, copy_epoch, mount, wait)? {
            Claimed::Current(epoch) => Ok(epoch),
            Claimed::Stale { epoch, writer } => {
                self.give_back(volume, epoch);
                Err(ClusterError::NotRefreshed {
                    volume: volume.to_owned(),
                    writer: writer.node,
                    epoch: writer.epoch,
                    reason: "refused".into(),
                })
            }
        }
    }

    /// Makes this node the owner of `volume`. Waits, up to `wait`, for
    /// another owner to let go (Swarm unmounts on the old node and mounts
    /// here within a second or two; a dead node's lease runs out after its
    /// TTL). `copy_epoch` is the epoch of the last write this node's copy
    /// holds (its age); `mount` the block filesystem to fence.
    ///
    /// A stale copy is never served: the claim then stands in etcd (so no
    /// other node can take the volume while the copy is brought up to date)
    /// but this node does not own it until [`ClusterNode::adopt`].
    pub(crate) fn claim_copy(
        &self,
        volume: &str,
        copy_epoch: Option<Epoch>,
        mount: Option<PathBuf>,
        wait: Duration,
    ) -> Result<Claimed, ClusterError> {
        let wait = wait.min(CLAIM_WAIT_MAX);
        let until = Instant::now() + wait;
        loop {
            let lease = self.writable_lease(&lock(&self.term))?;
            let claim = match self.coord.claim(volume, &self.cfg.node, lease, None)? {
                // An owner key of this node under an older lease: a previous
                // run of this daemon. Hand it over to this run.
                Claim::Held(o) if o.node == self.cfg.node && o.lease != lease => {
                    self.coord
                        .claim(volume, &self.cfg.node, lease, Some(o.epoch))?
                }
                other => other,
            };
            match claim {
                Claim::Won(epoch, previous) => {
                    if let Some(w) = previous
                        && !w.is_copy(&self.cfg.node, copy_epoch)
                    {
                        return Ok(Claimed::Stale { epoch, writer: w });
                    }
                    return self.adopt(volume, epoch, mount).map(Claimed::Current);
                }
                Claim::Held(o) if o.node == self.cfg.node && o.lease == lease => {
                    let mut term = lock(&self.term);
                    term.owned.insert(volume.to_owned(), (o.epoch, mount));
                    self.beat(&term);
                    return Ok(Claimed::Current(o.epoch));
                }
                Claim::Held(o) => {
                    if Instant::now() >= until {
                        return Err(ClusterError::Owned {
                            volume: volume.to_owned(),
                            node: o.node,
                            epoch: o.epoch,
                            secs: wait.as_secs(),
                        });
                    }
                    std::thread::sleep(CLAIM_RETRY);
                }
            }
        }
    }

    /// This node's copy of `volume`, claimed at `epoch`, is the volume from
    /// now on: recorded as its last writer, then owned (and fenced at the
    /// lease deadline). Fails if the claim was lost meanwhile.
    pub(crate) fn adopt(
        &self,
        volume: &str,
        epoch: Epoch,
        mount: Option<PathBuf>,
    ) -> Result<Epoch, ClusterError> {
        // Say so in etcd before writing: a later claimer must see this node
        // as the writer, or it would serve its own older copy.
        if !self.coord.record_writer(volume, &self.cfg.node, epoch)? {
            return Err(ClusterError::Fenced);
        }
        let mut term = lock(&self.term);
        term.owned.insert(volume.to_owned(), (epoch, mount));
        self.beat(&term);
        tracing::info!(volume, %epoch, "owned");
        Ok(epoch)
    }

    /// Gives back a claim that was never adopted (a stale copy that could
    /// not be brought up to date). Best effort: the lease frees it anyway.
    pub(crate) fn give_back(&self, volume: &str, epoch: Epoch) {
        if let Err(e) = self.coord.release(volume, epoch) {
            tracing::warn!(volume, error = %e, "giving back a claim over a stale copy");
        }
    }

    /// The agent address `node` announced, if its lease is alive.
    pub(crate) fn agent_of(&self, node: &str) -> Result<Option<String>, ClusterError> {
        Ok(self
            .coord
            .nodes()?
            .into_iter()
            .find(|(n, _)| n == node)
            .and_then(|(_, info)| serde_json::from_slice::<NodeInfo>(&info).ok())
            .map(|i| i.agent))
    }

    /// Gives `volume` up (its last Unmount here). Best effort: if etcd is
    /// unreachable the lease's expiry frees it.
    pub(crate) fn release(&self, volume: &str) {
        let owned = {
            let mut term = lock(&self.term);
            let owned = term.owned.remove(volume);
            // Unmounted: a fenced filesystem of it is gone too.
            term.fenced_mounts.remove(volume);
            self.beat(&term);
            owned
        };
        if let Some((epoch, _)) = owned {
            match self.coord.release(volume, epoch) {
                Ok(true) => tracing::info!(volume, %epoch, "released"),
                Ok(false) => tracing::warn!(volume, %epoch, "release: another epoch stands"),
                Err(e) => tracing::warn!(volume, error = %e, "release failed; the lease frees it"),
            }
        }
    }

    /// The epoch this node owns `volume` at, if it does.
    pub(crate) fn owned(&self, volume: &str) -> Option<Epoch> {
        lock(&self.term).owned.get(volume).map(|(e, _)| *e)
    }
}

#[cfg(test)]
mod tests;
