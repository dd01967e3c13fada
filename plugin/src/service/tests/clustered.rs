//! Cluster mode's data path over the local backend and the in-memory etcd:
//! a Mount on a node whose copy is stale brings it up to date from the last
//! writer, through a [`Handover`] double that does what the two agents do
//! (the writer's daemon plans it, the volume moves as `daffe migrate` moves
//! it: begin, fence, receive, commit, moved; a failure before the commit
//! aborts the move), with failures injected at its steps.

use super::go;
use crate::clustering::ClusterNode;
use crate::clustering::handover::{Handover, HandoverError, PullReport};
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

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

impl Handover for Agents {
    fn handover(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        _limit: Duration,
    ) -> Result<(), HandoverError> {
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
        copy_tree(&src.data, &dst.data);
        asker.take_ownership(docker_name).unwrap();
        writer.finish_move(docker_name, &plan.agent).unwrap();
        if fail == Some(FailAt::Reply) {
            return Err(failed("connection reset before the reply".into()));
        }
        Ok(())
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
        profiles::Catalog::builtin(),
        root.clone(),
    );
    let cn =
        ClusterNode::start(cfg(name), Arc::new(etcd.clone()), root.join("fence.json")).unwrap();
    svc.set_cluster(
        cn,
        Some(Arc::new(Agents {
            me: name.to_owned(),
            nodes: nodes.clone(),
        })),
    );
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
