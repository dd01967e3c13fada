//! Cluster mode's data path over the local backend and the in-memory etcd:
//! a Mount on a node whose copy is stale brings it up to date from the last
//! writer, through a [`Handover`] double that does what the two agents do
//! (the writer's daemon plans it, the volume moves as `daffe migrate` moves
//! it: begin, fence, receive, commit, moved; a failure before the commit
//! aborts the move), with failures injected at its steps. Warm standbys go
//! through a [`StandbyLink`] double that does what a standby round does
//! (the standby's daemon accepts, the changed files go into its copy).

use super::go;
use crate::clustering::ClusterNode;
use crate::clustering::handover::{Handed, Handover, HandoverError};
use crate::clustering::standby::{self, RoundFigures, Sending, StandbyError, StandbyLink};
use crate::migrate::wire::PullReport;
use crate::service::migrate::TransferMode;
use crate::service::{ErrorCode, ServiceError, VolumeService};
use cluster::ClusterConfig;
use cluster::memory::MemoryCoordinator;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Where a handover fails (none: it works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAt {
    /// Before anything moved (the writer's agent is unreachable).
    Reach,
    /// Mid-copy (the writer died or the link broke): the move is aborted.
    Copy,
    /// After the commit: only the reply is lost.
    Reply,
}

/// The nodes' services, by node name, as the agents reach them.
#[derive(Default)]
struct Nodes {
    services: Mutex<BTreeMap<String, Weak<VolumeService>>>,
    fail: Mutex<Option<FailAt>>,
    /// Handovers asked for: (asker, writer, volume).
    asked: Mutex<Vec<(String, String, String)>>,
    /// Bytes each handover copied (what the asker's copy lacked).
    handed: Mutex<Vec<u64>>,
    /// Standby rounds: the owner dies mid-round (failover tests).
    die_mid_round: Mutex<bool>,
    /// Standby rounds are sent without a mark (an owner of an older version).
    unmarked: Mutex<bool>,
}

impl Nodes {
    fn service(&self, node: &str) -> Arc<VolumeService> {
        super::lock(&self.services)[node].upgrade().unwrap()
    }
}

/// The two agents' work, done directly on the two services.
struct Agents {
    me: String,
    nodes: Arc<Nodes>,
}

/// Copies the files of `from` that `to` lacks or holds otherwise, as a
/// round does; the bytes copied.
fn copy_tree(from: &Path, to: &Path) -> u64 {
    std::fs::create_dir_all(to).unwrap();
    let mut copied = 0;
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copied += copy_tree(&e.path(), &dest);
        } else if std::fs::read(e.path()).ok() != std::fs::read(&dest).ok() {
            copied += std::fs::copy(e.path(), dest).unwrap();
        }
    }
    copied
}

impl Handover for Agents {
    fn handover(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        _limit: Duration,
    ) -> Result<Handed, HandoverError> {
        super::lock(&self.nodes.asked).push((
            self.me.clone(),
            node.to_owned(),
            docker_name.to_owned(),
        ));
        let fail = *super::lock(&self.nodes.fail);
        let failed = |message: String| HandoverError::Failed {
            node: node.to_owned(),
            message,
        };
        if fail == Some(FailAt::Reach) {
            return Err(HandoverError::Reach {
                node: node.to_owned(),
                agent: agent.to_owned(),
                message: "connection refused".into(),
            });
        }
        let writer = self.nodes.service(node);
        let asker = self.nodes.service(&self.me);
        // The writer's agent: its daemon plans it (the asker is named by
        // its certificate), then `daffe migrate`'s steps.
        let plan = writer
            .handover_plan(docker_name, &self.me)
            .map_err(|e| failed(e.to_string()))?;
        writer.begin_move(docker_name, &plan.agent).unwrap();
        writer.fence(docker_name, &plan.agent).unwrap();
        let src = writer.transfer_paths(docker_name).unwrap();
        let dst = asker
            .prepare_receive(docker_name, &src.options, node)
            .map_err(|e| failed(e.to_string()))?;
        if fail == Some(FailAt::Copy) {
            writer.abort_move(docker_name).unwrap();
            return Err(failed("link cut mid-round".into()));
        }
        let copied = copy_tree(&src.data, &dst.data);
        super::lock(&self.nodes.handed).push(copied);
        asker.take_ownership(docker_name).unwrap();
        writer.finish_move(docker_name, &plan.agent).unwrap();
        if fail == Some(FailAt::Reply) {
            return Err(failed("connection reset before the reply".into()));
        }
        Ok(Handed {
            bytes: copied,
            ms: 1,
        })
    }

    fn pull(
        &self,
        node: &str,
        _agent: &str,
        docker_name: &str,
        _limit: Duration,
    ) -> Result<PullReport, HandoverError> {
        self.nodes
            .service(node)
            .pull(docker_name)
            .map_err(|e| HandoverError::Failed {
                node: node.to_owned(),
                message: e.to_string(),
            })
    }
}

/// One standby round as the two agents do it, with the real scan and the
/// real receiver: the owner scans (marked), the standby's daemon accepts
/// (checking etcd) and keeps the mark, then the round is received exact
/// into its copy. `Nodes::die_mid_round`: the owner dies after sending part
/// of the round's chunks (the receiver holds them, uncommitted).
impl StandbyLink for Agents {
    fn round(
        &self,
        node: &str,
        _agent: &str,
        docker_name: &str,
        epoch: cluster::Epoch,
        sending: Sending<'_>,
    ) -> Result<RoundFigures, StandbyError> {
        let Sending {
            source,
            cache_dir,
            changes,
            freeze,
        } = sending;
        let failed = |message: String| StandbyError::Round {
            node: node.to_owned(),
            message,
        };
        let mut scanned = standby::scan_for_round(&source, cache_dir, docker_name, changes, freeze)
            .map_err(|e| failed(e.to_string()))?;
        let mark = scanned.mark.clone();
        let standby = self.nodes.service(node);
        let mark = (!*super::lock(&self.nodes.unmarked)).then_some(mark);
        standby
            .accept_standby(docker_name, &self.me, epoch.0, mark.clone())
            .map_err(|e| StandbyError::Refused {
                node: node.to_owned(),
                message: e.to_string(),
            })?;
        let dst = standby.transfer_paths(docker_name).unwrap();
        let dest = match dst.mode {
            TransferMode::Tree => mover::Destination::Tree(dst.data.clone()),
            TransferMode::Image => mover::Destination::Image(dst.data.clone()),
        };
        let opts = mover::ReceiveOptions::default().with_precopy(!scanned.exact);
        let mut rx = mover::Receiver::open(&dest, &dst.state_dir).unwrap();
        let stats = if *super::lock(&self.nodes.die_mid_round) {
            let mut dying = DiesMidRound(&mut scanned.sender);
            rx.run_round(&mut dying, &opts)
        } else {
            rx.run_round(&mut scanned.sender, &opts)
        }
        .map_err(|e| failed(e.to_string()))?;
        let freeze_ms = scanned.thaw();
        Ok(RoundFigures {
            bytes: stats.bytes_fetched,
            bytes_dirty: stats.bytes_dirty,
            ms: 1,
            sealed: mark.is_some_and(|m| m.sealed),
            freeze_ms,
        })
    }
}

/// A source whose owner dies during the fetch: the first half of the first
/// batch of chunks arrives, then the link is gone.
struct DiesMidRound<'a>(&'a mut mover::Sender);

impl mover::ChunkSource for DiesMidRound<'_> {
    fn manifest(
        &mut self,
        out: &mut dyn std::io::Write,
    ) -> Result<mover::ManifestId, mover::SourceError> {
        self.0.manifest(out)
    }

    fn fetch(
        &mut self,
        wants: &[mover::Want],
        sink: &mut mover::Sink<'_>,
    ) -> Result<(), mover::SourceError> {
        self.0.fetch(&wants[..wants.len() / 2], sink)?;
        Err(mover::SourceError::Transport(
            "the owner was killed mid-round".into(),
        ))
    }
}

/// The built-in profiles and `ha`: a dir volume with one standby.
const HA: &str = "[profiles.ha]\nstandbys = 1\n[profiles.ha.local]\nformat = \"dir\"\n";

fn cfg(node: &str) -> ClusterConfig {
    toml::from_str(&format!(
        "name = \"prod\"\nnode = \"{node}\"\nagent = \"{node}:7443\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"
    ))
    .unwrap()
}

struct Cluster {
    _dir: tempfile::TempDir,
    etcd: MemoryCoordinator,
    nodes: Arc<Nodes>,
    a: Arc<VolumeService>,
    b: Arc<VolumeService>,
}

fn node(
    dir: &Path,
    name: &str,
    etcd: &MemoryCoordinator,
    nodes: &Arc<Nodes>,
) -> Arc<VolumeService> {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let backend =
        crate::backend::open(profiles::BackendKind::Local, &Default::default(), &root).unwrap();
    let mut svc = VolumeService::new(
        super::records(&root),
        backend,
        profiles::Catalog::from_config_toml(HA).unwrap(),
        root.clone(),
    );
    let cn =
        ClusterNode::start(cfg(name), Arc::new(etcd.clone()), root.join("fence.json")).unwrap();
    let agents = Arc::new(Agents {
        me: name.to_owned(),
        nodes: nodes.clone(),
    });
    svc.set_cluster(cn, Some(agents.clone()));
    svc.set_standby(agents);
    let svc = Arc::new(svc);
    super::lock(&nodes.services).insert(name.to_owned(), Arc::downgrade(&svc));
    svc
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let etcd = MemoryCoordinator::new("prod");
    let nodes = Arc::new(Nodes::default());
    let a = node(dir.path(), "a", &etcd, &nodes);
    let b = node(dir.path(), "b", &etcd, &nodes);
    Cluster {
        _dir: dir,
        etcd,
        nodes,
        a,
        b,
    }
}

fn write(mp: &Path, file: &str, text: &str) {
    std::fs::write(mp.join(file), text).unwrap();
}

fn read(mp: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(mp.join(file)).ok()
}

fn writer(c: &Cluster, volume: &str) -> String {
    use cluster::Coordinator;
    let w = c.etcd.writer(volume).unwrap().unwrap();
    w.node
}

/// Volume `v`, written on a ("one"), unmounted there; b has its empty copy
/// (made by Get, as dockerd's Get before a Mount makes it).
fn written_on_a(c: &Cluster) {
    c.a.create("v", &BTreeMap::new()).unwrap();
    let mp = c.a.mount("v", "c1", &go()).unwrap();
    write(&mp, "one", "from a");
    c.a.unmount("v", "c1").unwrap();
    c.b.get_clustered("v").unwrap();
}

mod failover;

#[test]
fn a_stale_copy_is_brought_up_to_date_from_the_last_writer_and_back() {
    let c = cluster();
    written_on_a(&c);
    let mp_b = c.b.mount("v", "c2", &go()).unwrap();
    assert_eq!(read(&mp_b, "one").as_deref(), Some("from a"));
    assert_eq!(writer(&c, "v"), "b");
    write(&mp_b, "two", "from b");
    c.b.unmount("v", "c2").unwrap();
    // And back: a's moved copy is brought up to date in its turn.
    let mp = c.a.mount("v", "c3", &go()).unwrap();
    assert_eq!(read(&mp, "one").as_deref(), Some("from a"));
    assert_eq!(read(&mp, "two").as_deref(), Some("from b"));
    assert_eq!(writer(&c, "v"), "a");
    let asked = super::lock(&c.nodes.asked).clone();
    assert_eq!(
        asked,
        [
            ("b".into(), "a".into(), "v".into()),
            ("a".into(), "b".into(), "v".into())
        ]
    );
    // A current copy asks nobody.
    c.a.unmount("v", "c3").unwrap();
    c.a.mount("v", "c4", &go()).unwrap();
    assert_eq!(super::lock(&c.nodes.asked).len(), 2);
}

#[test]
fn a_lost_reply_after_the_commit_still_adopts_the_copy() {
    let c = cluster();
    written_on_a(&c);
    *super::lock(&c.nodes.fail) = Some(FailAt::Reply);
    let mp_b = c.b.mount("v", "c2", &go()).unwrap();
    assert_eq!(read(&mp_b, "one").as_deref(), Some("from a"));
    assert_eq!(writer(&c, "v"), "b");
}

#[test]
fn a_failed_handover_serves_nothing_gives_the_claim_back_and_the_next_mount_retries() {
    for fail in [FailAt::Reach, FailAt::Copy] {
        let c = cluster();
        written_on_a(&c);
        *super::lock(&c.nodes.fail) = Some(fail);
        let err = c.b.mount("v", "c2", &go()).unwrap_err();
        assert!(
            matches!(&err, ServiceError::Cluster(e) if e.to_string().contains("stale")),
            "{fail:?}: {err}"
        );
        assert!(err.to_string().contains("node a"), "{err}");
        assert_eq!(err.code(), ErrorCode::NotMountable);
        // Nothing changed hands: the claim went back, a is still the
        // writer, and a can mount its copy again at once.
        assert_eq!(writer(&c, "v"), "a");
        let mp = c.a.mount("v", "c3", &go()).unwrap();
        assert_eq!(read(&mp, "one").as_deref(), Some("from a"), "{fail:?}");
        c.a.unmount("v", "c3").unwrap();
        // The link is back: b's next Mount brings the copy up to date.
        *super::lock(&c.nodes.fail) = None;
        let mp_b = c.b.mount("v", "c2", &go()).unwrap();
        assert_eq!(read(&mp_b, "one").as_deref(), Some("from a"), "{fail:?}");
    }
}

#[test]
fn the_writer_hands_over_only_to_the_owner_and_only_its_last_write() {
    let c = cluster();
    c.a.create("v", &BTreeMap::new()).unwrap();
    c.a.mount("v", "c1", &go()).unwrap();
    // Mounted on a: nothing to hand over, whoever asks.
    let err = c.a.handover_plan("v", "b").unwrap_err();
    assert_eq!(err.code(), ErrorCode::InUse, "{err}");
    c.a.unmount("v", "c1").unwrap();
    // A peer that does not own the volume (a lying or confused node).
    let err = c.a.handover_plan("v", "b").unwrap_err();
    assert!(err.to_string().contains("node b does not own it"), "{err}");
    // b takes it over; then b's old-epoch copy on a cannot be asked of a
    // again by a third node that claims to own it.
    c.b.get_clustered("v").unwrap();
    c.b.mount("v", "c2", &go()).unwrap();
    let err = c.a.handover_plan("v", "b").unwrap_err();
    assert!(err.to_string().contains("not the last write"), "{err}");
    let err = c.a.handover_plan("v", "mallory").unwrap_err();
    assert!(
        err.to_string().contains("node mallory does not own it"),
        "{err}"
    );
}

#[test]
fn volume_move_pulls_to_the_named_node_from_any_node_and_refuses_a_mounted_volume() {
    let c = cluster();
    c.a.create("v", &BTreeMap::new()).unwrap();
    let mp = c.a.mount("v", "c1", &go()).unwrap();
    write(&mp, "one", "from a");
    // Mounted on a: a move elsewhere is refused at once, naming a.
    let t = std::time::Instant::now();
    let err = c.a.move_to("v", "b").unwrap_err();
    assert!(err.to_string().contains("node a"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    c.a.unmount("v", "c1").unwrap();
    // Asked on a, done by b: b's copy is the latest now, and nobody owns it.
    let r = c.a.move_to("v", "b").unwrap();
    assert_eq!((r.node.as_str(), r.from.as_deref()), ("b", Some("a")));
    assert_eq!(writer(&c, "v"), "b");
    {
        use cluster::Coordinator;
        assert_eq!(c.etcd.owner("v").unwrap(), None);
    }
    // Asked on b itself for b: nothing to do.
    let r = c.b.move_to("v", "b").unwrap();
    assert_eq!(r.from, None);
    // b mounts its copy without asking anyone; it holds a's data.
    let asked = super::lock(&c.nodes.asked).len();
    let mp_b = c.b.mount("v", "c2", &go()).unwrap();
    assert_eq!(read(&mp_b, "one").as_deref(), Some("from a"));
    assert_eq!(super::lock(&c.nodes.asked).len(), asked);
    // An unknown node is a clear refusal.
    let err = c.b.move_to("v", "nowhere").unwrap_err();
    assert!(
        err.to_string()
            .contains("node nowhere is not in the cluster"),
        "{err}"
    );
}

#[test]
fn a_move_into_a_warm_standby_sends_only_what_changed_since_its_last_round() {
    let c = cluster();
    c.a.create("v@ha", &BTreeMap::new()).unwrap();
    c.b.get_clustered("v@ha").unwrap();
    let mp = c.a.mount("v@ha", "c1", &go()).unwrap();
    let big = "x".repeat(100_000);
    write(&mp, "big", &big);
    // The owner's pass: b (the only other node) gets a round.
    c.a.standby_tick();
    let lags = c.a.standby_lags("v");
    assert_eq!(lags.len(), 1, "{lags:?}");
    assert_eq!(
        (
            lags[0].node.as_str(),
            lags[0].rounds,
            lags[0].last_round_bytes
        ),
        ("b", 1, 100_000)
    );
    assert!(
        lags[0].lag_ms.is_some() && lags[0].error.is_none(),
        "{lags:?}"
    );
    // A second pass with nothing new carries nothing.
    c.a.standby_tick();
    assert_eq!(c.a.standby_lags("v")[0].last_round_bytes, 0);
    // Written after the last round, then the task stops on a.
    write(&mp, "small", "0123456789");
    c.a.unmount("v@ha", "c1").unwrap();
    // b's Mount: its copy is a's standby, kept; only the delta comes.
    let mp_b = c.b.mount("v@ha", "c2", &go()).unwrap();
    assert_eq!(*super::lock(&c.nodes.handed), [10]);
    let last = c.b.last_handover("v").unwrap();
    assert_eq!((last.from.as_str(), last.bytes), ("a", 10));
    assert_eq!(read(&mp_b, "big").as_deref(), Some(big.as_str()));
    assert_eq!(read(&mp_b, "small").as_deref(), Some("0123456789"));
    assert_eq!(writer(&c, "v"), "b");
    // a owns nothing now: its pass sends nothing and forgets its standbys.
    c.a.standby_tick();
    assert!(c.a.standby_lags("v").is_empty());
    // b, the owner now, streams to a, whose copy was mounted there (not
    // fed by rounds): it starts blank and gets everything once.
    write(&mp_b, "three", "from b");
    c.b.standby_tick();
    let lags = c.b.standby_lags("v");
    assert_eq!(
        (lags[0].node.as_str(), lags[0].rounds),
        ("a", 1),
        "{lags:?}"
    );
    assert_eq!(lags[0].last_round_bytes, 100_000 + 10 + 6);
}

#[test]
fn a_standby_is_fed_only_by_the_owner_at_its_epoch_and_never_while_in_use() {
    use cluster::Coordinator;
    let c = cluster();
    c.a.create("v@ha", &BTreeMap::new()).unwrap();
    c.b.get_clustered("v@ha").unwrap();
    // Nobody owns it yet: no node may feed a standby of it.
    let err = c.b.accept_standby("v@ha", "a", 1, None).unwrap_err();
    assert!(err.to_string().contains("no node does"), "{err}");
    c.a.mount("v@ha", "c1", &go()).unwrap();
    let epoch = c.etcd.owner("v").unwrap().unwrap().epoch.0;
    // Another node naming itself, or the owner at an older epoch.
    let err =
        c.b.accept_standby("v@ha", "mallory", epoch, None)
            .unwrap_err();
    assert!(
        err.to_string().contains("node mallory does not own it"),
        "{err}"
    );
    let err =
        c.b.accept_standby("v@ha", "a", epoch - 1, None)
            .unwrap_err();
    assert!(
        err.to_string().contains(&format!("at epoch {}", epoch - 1)),
        "{err}"
    );
    // A node is never its own standby.
    let err = c.a.accept_standby("v@ha", "a", epoch, None).unwrap_err();
    assert!(err.to_string().contains("never its own standby"), "{err}");
    // The owner at its epoch: accepted, and again (idempotent).
    c.b.accept_standby("v@ha", "a", epoch, None).unwrap();
    c.b.accept_standby("v@ha", "a", epoch, None).unwrap();
    let p = c.b.transfer_paths("v@ha").unwrap();
    assert_eq!(
        (p.state.as_str(), p.peer.as_deref()),
        ("receiving", Some("a"))
    );
    // A standby round into a profile with no standbys is never sent.
    c.a.create("plain", &BTreeMap::new()).unwrap();
    c.a.mount("plain", "c2", &go()).unwrap();
    c.a.standby_tick();
    assert!(c.a.standby_lags("plain").is_empty());
    assert_eq!(c.a.standby_lags("v").len(), 1);
}
