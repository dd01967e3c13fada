//! Warm standbys (issue 14): while a node owns a volume whose profile asks
//! for `standbys = N`, it streams pre-copy rounds of it to N other live
//! nodes, so that when the volume moves to one of them the handover sends
//! only what changed since the last round.
//!
//! - [`pick`]: which nodes hold a volume's standbys (pure);
//! - [`StandbyLink`]: one round to one standby, a remote behind a trait
//!   (the service tests use a double); [`AgentStandby`] is the real one,
//!   over the agents' mutual TLS with this node's agent certificate;
//! - [`Lags`]: what the owner knows of each standby (the age of the data it
//!   holds, the last round's bytes, the last error), for `cluster status`
//!   and inspect.
//!
//! A standby copy is a copy in state `Receiving { from: owner }` whose
//! receiver index survives between rounds; it is never mounted nor served
//! until a handover's final round and commit make it the volume, or, when
//! the owner died, a takeover (`crate::service::standby`) finds that its last
//! committed round is one the owner marked.
//!
//! Failover safety, the round's side ([`RoundMark`]):
//! - the owner scans first (a block volume with its filesystem frozen:
//!   `super::freeze`), then tells the standby, in the Standby request, the
//!   root of that scan's manifest, its time by the owner's clock and whether
//!   it was frozen; the standby keeps the last few marks beside its receiver
//!   state ([`remember_mark`]);
//! - the round is sent exact (`final_round`: the receiver's pre-copy
//!   leniency is off), so a chunk that changed after the thaw fails the
//!   round instead of committing a mix of two states;
//! - the mover's receiver commits a round atomically (nothing touches the
//!   image before its commit record; after it, a replay finishes it), and
//!   its applied root names exactly what the destination holds.
//!
//! So at takeover: the receiver recovered, its applied root equal to a mark
//! of the last writer at the writer's epoch means the copy is byte for byte
//! that scan. A round half-sent when the owner died never committed, so the
//! copy is still the previous round (a redo log, not an undo log: nothing
//! of an uncommitted round was ever written to the image, so there is
//! nothing to roll back).

use crate::migrate::wire::{PeerReply, PeerRequest, RoundMark};
use cluster::Epoch;
use mover::RateLimiter;
use mover::Sender;
use mover::Source;
use mover::net::tls;
use mover::net::{Endpoint, NodeFiles, Peer, RoundRequest, TransferMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the owner sends each standby a round (the next starts this
/// long after the last ended). Data age lost on failover is about twice it.
pub(crate) const ROUND_INTERVAL: Duration = Duration::from_secs(5);

/// Standby rounds share the link with the application's clients: at most
/// this many bytes per second leave the owner for all its standbys (100
/// Mbit/s links here: about half of one).
pub(crate) const BANDWIDTH: u64 = 6 << 20;

/// A standby that does not answer this soon is skipped until the next tick.
const CONNECT: Duration = Duration::from_secs(5);

/// The first `n` live nodes other than `me`, in name order: every owner of a
/// volume picks the same standbys, so a volume that moves back and forth
/// between two nodes keeps its standby on the other one.
pub(crate) fn pick<'a>(
    me: &str,
    live: &'a [(String, String)],
    n: u32,
) -> Vec<&'a (String, String)> {
    let mut others: Vec<&(String, String)> = live.iter().filter(|(name, _)| name != me).collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    others.truncate(n as usize);
    others
}

/// The live nodes (name, record) that may hold a standby of a profile
/// asking for `label` (all of them without one), as `pick` takes them:
/// (name, agent).
pub(crate) fn eligible(
    live: &[(String, super::NodeInfo)],
    label: Option<&cluster::label::NodeLabel>,
) -> Vec<(String, String)> {
    live.iter()
        .filter(|(_, info)| label.is_none_or(|l| l.matches(&info.labels)))
        .map(|(name, info)| (name.clone(), info.agent.clone()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StandbyError {
    #[error("reaching node {node}'s agent at {agent}: {message}")]
    Reach {
        node: String,
        agent: String,
        message: String,
    },
    #[error("node {node} refused to keep a standby: {message}")]
    Refused { node: String, message: String },
    #[error("round to node {node}: {message}")]
    Round { node: String, message: String },
    #[error("this node's agent certificate in {dir}: {message}")]
    Identity { dir: String, message: String },
}

/// What one standby round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoundFigures {
    /// Bytes the standby fetched (what was new to it).
    pub(crate) bytes: u64,
    /// Bytes that changed again during the round (they go in the next one).
    pub(crate) bytes_dirty: u64,
    pub(crate) ms: u64,
    /// The scan ran with the filesystem frozen (a block volume's round).
    pub(crate) sealed: bool,
    /// How long the filesystem stayed frozen.
    pub(crate) freeze_ms: Option<u64>,
}

/// A mark as the standby keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeptMark {
    pub(crate) from: String,
    pub(crate) epoch: u64,
    pub(crate) mark: RoundMark,
    /// When it arrived, Unix ms by the standby's clock.
    pub(crate) received_unix_ms: u64,
}

/// The standby's marks file, in its receiver state dir (so a copy blanked
/// for another owner loses its marks with its receiver state).
const MARKS_FILE: &str = "standby-marks.json";
/// Marks kept: the last round's, and the one before it (the round in
/// flight when the owner died never committed).
const MARKS_KEPT: usize = 4;

/// The marks kept in `state_dir`, oldest first.
pub(crate) fn read_marks(state_dir: &Path) -> Vec<KeptMark> {
    std::fs::read(state_dir.join(MARKS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Keeps `m` (durably, before the round it announces can commit).
pub(crate) fn remember_mark(state_dir: &Path, m: KeptMark) -> std::io::Result<()> {
    let mut marks = read_marks(state_dir);
    marks.push(m);
    let extra = marks.len().saturating_sub(MARKS_KEPT);
    marks.drain(..extra);
    let body = serde_json::to_vec(&marks).map_err(std::io::Error::other)?;
    crate::durable::replace(&state_dir.join(MARKS_FILE), &body, 0o600)
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, crate::migrate::report::millis)
}

/// What a standby round sends from here.
pub(crate) struct Sending<'a> {
    /// The volume's tree or image.
    pub(crate) source: Source,
    /// The sender's stat cache (kept between rounds).
    pub(crate) cache_dir: &'a Path,
    /// Who tracks where a block image was written between this cache's
    /// scans (`crate::backend::local::writes`); none: read it whole.
    pub(crate) changes: Option<Arc<dyn mover::ImageChanges>>,
    /// A block volume's mounted filesystem, frozen during the scan (the
    /// round is then sealed), and where the freeze markers go.
    pub(crate) freeze: Option<(PathBuf, PathBuf)>,
}

/// One standby round, from this node (the owner) to another node.
pub(crate) trait StandbyLink: Send + Sync {
    /// Asks `node` (agent at `agent`) to keep a standby of `docker_name`
    /// fed by this node, owner at `epoch`, then sends it one pre-copy round
    /// of what `sending` says.
    fn round(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        epoch: Epoch,
        sending: Sending<'_>,
    ) -> Result<RoundFigures, StandbyError>;
}

/// [`StandbyLink`] over the agents' protocol.
pub(crate) struct AgentStandby {
    files: NodeFiles,
    dir: String,
    node: String,
    /// Shared by every standby round of this daemon.
    bucket: Arc<RateLimiter>,
}

impl AgentStandby {
    pub(crate) fn new(dir: &Path, node: &str) -> Result<Self, StandbyError> {
        let me = Self {
            files: NodeFiles::in_dir(dir),
            dir: dir.display().to_string(),
            node: node.to_owned(),
            bucket: Arc::new(RateLimiter::new(BANDWIDTH, BANDWIDTH / 4)),
        };
        tls::client_config(&me.files).map_err(|e| me.identity(e))?;
        Ok(me)
    }

    fn identity(&self, e: impl std::fmt::Display) -> StandbyError {
        StandbyError::Identity {
            dir: self.dir.clone(),
            message: e.to_string(),
        }
    }
}

impl AgentStandby {
    /// One round of `scanned`: the Standby request carrying its mark, then
    /// the round itself (exact or pre-copy, as the scan says).
    #[allow(clippy::too_many_arguments)]
    fn send_round(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        epoch: Epoch,
        peers: (Peer, Peer),
        scanned: &mut Scanned,
    ) -> Result<mover::net::RoundSummary, StandbyError> {
        let (mut peer, mut round_peer) = peers;
        // Unfrozen work runs in the background of the application; frozen,
        // the application waits for it.
        let _background = scanned
            .frozen
            .is_none()
            .then(crate::migrate::priority::Background::enter);
        let reach = |message: String| StandbyError::Reach {
            node: node.to_owned(),
            agent: agent.to_owned(),
            message,
        };
        let refused = |message: String| StandbyError::Refused {
            node: node.to_owned(),
            message,
        };
        // The standby keeps the mark before the round can commit.
        let req = PeerRequest::Standby {
            volume: docker_name.to_owned(),
            epoch: epoch.0,
            mark: Some(scanned.mark.clone()),
        };
        let body = serde_json::to_vec(&req).map_err(|e| reach(e.to_string()))?;
        let reply = peer.control(&body).map_err(|e| refused(e.to_string()))?;
        peer.bye();
        let token = match serde_json::from_slice::<PeerReply>(&reply) {
            Ok(PeerReply::Standby { token }) => token,
            Ok(other) => return Err(refused(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(refused(format!("unreadable reply: {e}"))),
        };
        let req = RoundRequest {
            target: docker_name.to_owned(),
            mode: scanned.mode,
            round: 1,
            // Exact: a chunk changed since the scan fails the round, which
            // then commits nothing (the standby keeps its last round whole).
            final_round: scanned.exact,
            token,
        };
        let summary = round_peer
            .push_round(&req, &mut scanned.sender, &mut |_| {})
            .map_err(|e| StandbyError::Round {
                node: node.to_owned(),
                message: e.to_string(),
            })?;
        round_peer.bye();
        Ok(summary)
    }
}

impl StandbyLink for AgentStandby {
    fn round(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        epoch: Epoch,
        sending: Sending<'_>,
    ) -> Result<RoundFigures, StandbyError> {
        let Sending {
            source,
            cache_dir,
            changes,
            freeze,
        } = sending;
        let t = Instant::now();
        // The standby must be the node etcd named (finding 5: pinned).
        let mut ep = Endpoint::new(&self.node).expecting(node);
        ep.bucket = Some(self.bucket.clone());
        let scan_err = |e: mover::ScanError| StandbyError::Round {
            node: node.to_owned(),
            message: format!("scan: {e}"),
        };
        // Both sessions (the mark's, the round's) before any freeze: their
        // TLS handshakes do not hold the application's writes.
        let connect = || -> Result<(Peer, Peer), StandbyError> {
            let tls = tls::client_config(&self.files).map_err(|e| self.identity(e))?;
            let reach = |e: &dyn std::fmt::Display| StandbyError::Reach {
                node: node.to_owned(),
                agent: agent.to_owned(),
                message: e.to_string(),
            };
            Ok((
                Peer::connect_within(agent, &tls, &ep, CONNECT).map_err(|e| reach(&e))?,
                Peer::connect_within(agent, &tls, &ep, CONNECT).map_err(|e| reach(&e))?,
            ))
        };
        let mut bytes = 0;
        let peers = connect()?;
        let mut scanned = scan_for_round(
            &source,
            cache_dir,
            docker_name,
            changes.clone(),
            freeze.clone(),
        )
        .map_err(scan_err)?;
        let peers = if scanned.too_big {
            // Too much to send frozen: sent unfrozen first (unsealed), then
            // at once the few writes made meanwhile, frozen.
            let first = self.send_round(node, agent, docker_name, epoch, peers, &mut scanned)?;
            bytes += first.bytes_fetched;
            let peers = connect()?;
            scanned = scan_for_round(&source, cache_dir, docker_name, changes, freeze)
                .map_err(scan_err)?;
            peers
        } else {
            peers
        };
        let r = self.send_round(node, agent, docker_name, epoch, peers, &mut scanned);
        let freeze_ms = scanned.thaw();
        let summary = r?;
        Ok(RoundFigures {
            bytes: bytes + summary.bytes_fetched,
            bytes_dirty: summary.bytes_dirty,
            ms: crate::migrate::report::millis(t.elapsed()),
            sealed: scanned.mark.sealed,
            freeze_ms,
        })
    }
}

/// The longest a sealed round holds the application's writes: past it the
/// watchdog thaws (the round then fails if anything changed).
const FREEZE_MAX: Duration = Duration::from_secs(2);

/// A scan read more than this (written since the last round): not sent
/// frozen (at [`BANDWIDTH`] it would hold the writers for over half a
/// second); a pre-copy round goes first.
const SEAL_MAX_BYTES: u64 = 4 << 20;

/// A scan for a standby round, and how the round goes.
pub(crate) struct Scanned {
    pub(crate) sender: Sender,
    pub(crate) mark: RoundMark,
    /// The round is exact (sealed, or a dir volume's).
    pub(crate) exact: bool,
    pub(crate) mode: TransferMode,
    /// Scanned frozen but too much to send so: thawed, unsealed.
    pub(crate) too_big: bool,
    /// Still frozen: the round goes now, then [`Scanned::thaw`].
    frozen: Option<super::freeze::Frozen>,
}

impl Scanned {
    /// Thaws (if still frozen); how long the filesystem stayed frozen.
    pub(crate) fn thaw(&mut self) -> Option<u64> {
        let f = self.frozen.take()?;
        match f.thaw() {
            Ok(held) => Some(crate::migrate::report::millis(held)),
            Err(e) => {
                tracing::error!(error = %e, "standby round: thaw failed");
                None
            }
        }
    }
}

/// Scans `source` for a standby round. With `freeze` (a block volume's
/// mountpoint and the freeze markers' dir) the scan runs frozen, and when
/// it read little the filesystem stays frozen through the round: sealed. A
/// freeze that fails leaves an unsealed round, logged.
pub(crate) fn scan_for_round(
    source: &Source,
    cache_dir: &Path,
    label: &str,
    changes: Option<Arc<dyn mover::ImageChanges>>,
    freeze: Option<(PathBuf, PathBuf)>,
) -> Result<Scanned, mover::ScanError> {
    let at_unix_ms = now_unix_ms();
    let mut frozen = freeze.and_then(|(mp, markers)| {
        super::freeze::freeze(&mp, &markers, FREEZE_MAX)
            .inspect_err(|e| tracing::warn!(volume = label, error = %e, "standby round: not frozen, so not sealed"))
            .ok()
    });
    let _background = frozen
        .is_none()
        .then(crate::migrate::priority::Background::enter);
    let sender = Sender::scan(
        source,
        cache_dir,
        mover::ScanOptions {
            // One scan thread: the application runs on the other cores.
            threads: 1,
            label: label.to_owned(),
            progress: Arc::new(mover::progress::NoProgress),
            changes,
            copy_into: None,
        },
    )?;
    let too_big = frozen.is_some() && sender.stats().bytes_hashed > SEAL_MAX_BYTES;
    if too_big {
        frozen.take();
    }
    let sealed = frozen.is_some();
    let exact = sealed || matches!(source, Source::Tree(_));
    let root = sender.manifest_id().to_hex();
    Ok(Scanned {
        sender,
        mark: RoundMark {
            root,
            at_unix_ms,
            sealed,
        },
        exact,
        mode: match source {
            Source::Tree(_) => TransferMode::Tree,
            Source::Image(_) => TransferMode::Image,
        },
        too_big,
        frozen,
    })
}

/// What the owner knows of one standby, as `cluster status` and inspect
/// show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct StandbyLag {
    pub(crate) node: String,
    /// The standby holds the volume as it was at most this long ago (from
    /// the start of its last complete round); none: no round completed yet.
    pub(crate) lag_ms: Option<u64>,
    /// Bytes the last complete round carried.
    pub(crate) last_round_bytes: u64,
    /// Bytes that changed during it (not yet on the standby).
    pub(crate) lag_bytes: u64,
    pub(crate) rounds: u64,
    /// The last round's error, if it failed.
    pub(crate) error: Option<String>,
    /// The last complete round was sealed (scanned with the filesystem
    /// frozen): the standby can take over from it.
    pub(crate) sealed: bool,
    /// How long the last sealed round's freeze held the writers, and the
    /// longest since this node streams the volume.
    pub(crate) freeze_ms: Option<u64>,
    pub(crate) max_freeze_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    lag: StandbyLag,
    /// When the last complete round started.
    synced_at: Option<Instant>,
}

/// Every standby's lag, per volume (the owner's view).
#[derive(Debug, Default)]
pub(crate) struct Lags {
    by_volume: Mutex<BTreeMap<String, BTreeMap<String, Entry>>>,
}

impl Lags {
    pub(crate) fn round_ok(&self, volume: &str, node: &str, started: Instant, r: &RoundFigures) {
        let mut m = super::lock(&self.by_volume);
        let e = m
            .entry(volume.to_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default();
        e.lag.node = node.to_owned();
        e.lag.last_round_bytes = r.bytes;
        e.lag.lag_bytes = r.bytes_dirty;
        e.lag.rounds += 1;
        e.lag.error = None;
        e.lag.sealed = r.sealed;
        e.lag.freeze_ms = r.freeze_ms;
        e.lag.max_freeze_ms = e.lag.max_freeze_ms.max(r.freeze_ms.unwrap_or(0));
        e.synced_at = Some(started);
    }

    pub(crate) fn round_failed(&self, volume: &str, node: &str, error: String) {
        let mut m = super::lock(&self.by_volume);
        let e = m
            .entry(volume.to_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default();
        e.lag.node = node.to_owned();
        e.lag.error = Some(error);
    }

    /// This node no longer streams `volume` (not owned here any more).
    pub(crate) fn forget(&self, volume: &str) {
        super::lock(&self.by_volume).remove(volume);
    }

    /// Standbys no longer picked (a node left, the profile changed).
    pub(crate) fn keep_only(&self, volume: &str, nodes: &[&str]) {
        if let Some(m) = super::lock(&self.by_volume).get_mut(volume) {
            m.retain(|n, _| nodes.contains(&n.as_str()));
        }
    }

    /// The standbys of `volume`, with their lag now.
    pub(crate) fn of(&self, volume: &str) -> Vec<StandbyLag> {
        let m = super::lock(&self.by_volume);
        m.get(volume)
            .map(|s| {
                s.values()
                    .map(|e| {
                        let mut l = e.lag.clone();
                        l.lag_ms = e
                            .synced_at
                            .map(|t| crate::migrate::report::millis(t.elapsed()));
                        l
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Volumes with standbys known here.
    pub(crate) fn volumes(&self) -> Vec<String> {
        super::lock(&self.by_volume).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("{n}:7450")))
            .collect()
    }

    #[test]
    fn a_profile_s_label_keeps_standbys_on_the_nodes_that_carry_it() {
        let node = |name: &str, zone: Option<&str>| {
            (
                name.to_owned(),
                super::super::NodeInfo {
                    agent: format!("{name}:7443"),
                    version: String::new(),
                    labels: zone
                        .map(|z| [("zone".to_owned(), z.to_owned())].into())
                        .unwrap_or_default(),
                },
            )
        };
        let live = [
            node("a", Some("a")),
            node("b", None),
            node("c", Some("b")),
            node("d", Some("b")),
        ];
        let names = |v: Vec<(String, String)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(eligible(&live, None)), ["a", "b", "c", "d"]);
        let zone_b: cluster::label::NodeLabel = "zone=b".parse().unwrap();
        let e = eligible(&live, Some(&zone_b));
        assert_eq!(names(e.clone()), ["c", "d"]);
        // The owner in zone b itself: the other labelled node only.
        let picked: Vec<&str> = pick("c", &e, 1).iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(picked, ["d"]);
        // No node carries it: no standby (the lag table stays empty).
        let zone_z: cluster::label::NodeLabel = "zone=z".parse().unwrap();
        assert!(eligible(&live, Some(&zone_z)).is_empty());
    }

    #[test]
    fn standbys_are_the_first_other_nodes_by_name() {
        let l = live(&["swnode3", "swnode1", "swnode2"]);
        let names =
            |v: Vec<&(String, String)>| v.into_iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(pick("swnode1", &l, 1)), ["swnode2"]);
        assert_eq!(names(pick("swnode2", &l, 1)), ["swnode1"]);
        assert_eq!(names(pick("swnode3", &l, 2)), ["swnode1", "swnode2"]);
        // More asked than there are other nodes: all of them, never itself.
        assert_eq!(names(pick("swnode1", &l, 4)), ["swnode2", "swnode3"]);
        assert!(pick("swnode1", &l, 0).is_empty());
        assert!(pick("solo", &live(&["solo"]), 1).is_empty());
    }

    #[test]
    fn lag_counts_from_the_start_of_the_last_complete_round() {
        let lags = Lags::default();
        let started = Instant::now() - Duration::from_millis(1500);
        let fig = RoundFigures {
            bytes: 4096,
            bytes_dirty: 512,
            ms: 700,
            sealed: true,
            freeze_ms: Some(12),
        };
        lags.round_ok("db", "swnode2", started, &fig);
        let l = &lags.of("db")[0];
        assert!(l.lag_ms.unwrap() >= 1500, "{l:?}");
        assert_eq!((l.last_round_bytes, l.lag_bytes, l.rounds), (4096, 512, 1));
        assert_eq!(
            (l.sealed, l.freeze_ms, l.max_freeze_ms),
            (true, Some(12), 12)
        );
        // A failed round keeps the age of the last good one, and says why.
        lags.round_failed("db", "swnode2", "link cut".into());
        let l = &lags.of("db")[0];
        assert!(l.lag_ms.unwrap() >= 1500);
        assert_eq!(l.error.as_deref(), Some("link cut"));
        // A node that never completed a round has no age at all.
        lags.round_failed("db", "swnode3", "refused".into());
        assert_eq!(lags.of("db")[1].lag_ms, None);
        lags.keep_only("db", &["swnode3"]);
        assert_eq!(lags.of("db").len(), 1);
        lags.forget("db");
        assert!(lags.of("db").is_empty());
    }
}
