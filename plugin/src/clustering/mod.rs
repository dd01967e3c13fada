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
//! - [`status`]: `daffe cluster status`.

pub(crate) mod catalogue;
pub(crate) mod fencing;
mod keeper;
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
        "volume {volume:?} is owned by node {node} (epoch {epoch}), which did not let go within {secs} s; \
         stop its container there, or wait for that node's lease to run out"
    )]
    Owned {
        volume: String,
        node: String,
        epoch: Epoch,
        secs: u64,
    },
    #[error(
        "this node's copy of volume {volume:?} is stale: node {writer} wrote it last (epoch {epoch}); \
         it is not served here until it is refreshed from that node"
    )]
    Stale {
        volume: String,
        writer: String,
        epoch: Epoch,
    },
    #[error(
        "volume {volume:?} is in use on node {node} (it owns it, epoch {epoch}); stop its containers there first"
    )]
    OwnedElsewhere {
        volume: String,
        node: String,
        epoch: Epoch,
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

    /// Makes this node the owner of `volume` (Mount's first step). Waits, up
    /// to `wait`, for another owner to let go (Swarm unmounts on the old node
    /// and mounts here within a second or two; a dead node's lease runs out
    /// after its TTL). `copy_epoch` is the epoch this node last owned the
    /// volume at (its copy's age); `mount` the block filesystem to fence.
    pub(crate) fn claim(
        &self,
        volume: &str,
        copy_epoch: Option<Epoch>,
        mount: Option<PathBuf>,
        wait: Duration,
    ) -> Result<Epoch, ClusterError> {
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
                    return self.won(volume, epoch, previous, copy_epoch, mount);
                }
                Claim::Held(o) if o.node == self.cfg.node && o.lease == lease => {
                    let mut term = lock(&self.term);
                    term.owned.insert(volume.to_owned(), (o.epoch, mount));
                    self.beat(&term);
                    return Ok(o.epoch);
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

    fn won(
        &self,
        volume: &str,
        epoch: Epoch,
        previous: Option<Writer>,
        copy_epoch: Option<Epoch>,
        mount: Option<PathBuf>,
    ) -> Result<Epoch, ClusterError> {
        if let Some(w) = previous
            && !(w.node == self.cfg.node && Some(w.epoch) == copy_epoch)
        {
            // Never serve a stale copy: give the ownership straight back.
            if let Err(e) = self.coord.release(volume, epoch) {
                tracing::warn!(volume, error = %e, "releasing a claim over a stale copy");
            }
            return Err(ClusterError::Stale {
                volume: volume.to_owned(),
                writer: w.node,
                epoch: w.epoch,
            });
        }
        // From here this node's copy is the volume: say so before writing.
        if !self.coord.record_writer(volume, &self.cfg.node, epoch)? {
            return Err(ClusterError::Fenced);
        }
        let mut term = lock(&self.term);
        term.owned.insert(volume.to_owned(), (epoch, mount));
        self.beat(&term);
        tracing::info!(volume, %epoch, "owned");
        Ok(epoch)
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
