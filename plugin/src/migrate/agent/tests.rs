//! The agent's handler over real mutual TLS, in front of a real daemon (a
//! `VolumeService` on the local backend, its control socket served as
//! `daffe serve` serves it): issue 12, finding 5. Peers are nodes of one
//! cluster CA; the one that lies names another node in its `Hello`.

use super::{AgentHandler, Outgoing};
use crate::bounded::Fence;
use crate::clustering::ClusterNode;
use crate::control::{ControlApi, ControlClient, Limits};
use crate::migrate::wire::{PeerReply, PeerRequest};
use crate::service::VolumeService;
use crate::state::Records;
use mover::Source;
use mover::net::identity::{self, NodeFiles};
use mover::net::tls;
use mover::net::{Agent, Endpoint, Peer, RoundPushRetry, RoundPusher};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A daemon's control socket and an agent in front of it, both stopped on
/// drop. The agent is node `dest` of a CA made here.
struct Site {
    dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
    stop: tokio::sync::watch::Sender<bool>,
    shutdown: Arc<AtomicBool>,
    addr: String,
    svc: Arc<VolumeService>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn local_service(root: &Path) -> VolumeService {
    std::fs::create_dir_all(root).unwrap();
    let backend =
        crate::backend::open(profiles::BackendKind::Local, &Default::default(), root).unwrap();
    VolumeService::new(
        Records::open(&root.join("state.redb")).unwrap(),
        backend,
        profiles::Catalog::builtin(),
        root.to_owned(),
    )
}

impl Site {
    /// `svc` (made in the site's directory) behind a control socket and an
    /// agent for node `dest`.
    fn start(make: impl FnOnce(&Path) -> VolumeService) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let svc = Arc::new(make(&dir.path().join("root")));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let control = dir.path().join("control.sock");
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let listener = rt.block_on(async { crate::server::bind(&control).unwrap() });
        rt.spawn(crate::server::serve(
            listener,
            Arc::new(ControlApi::new(svc.clone(), Limits::default())),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        let dest = identity::init(&dir.path().join("ca"), "dest").unwrap();
        let mut handler = AgentHandler::new(ControlClient::new(&control));
        let mut ep = Endpoint::new("dest");
        ep.io_timeout = Duration::from_secs(10);
        handler.outgoing = Some(Outgoing {
            files: dest.clone(),
            ep: ep.clone(),
        });
        let agent = Arc::new(Agent::new(
            tls::server_config(&dest).unwrap(),
            ep,
            Arc::new(handler),
        ));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let shutdown = Arc::new(AtomicBool::new(false));
        let sd = shutdown.clone();
        std::thread::spawn(move || agent.serve(l, &sd));
        Site {
            dir,
            rt: Some(rt),
            stop,
            shutdown,
            addr,
            svc,
        }
    }

    /// A certificate of this cluster for `node`.
    fn node(&self, node: &str) -> NodeFiles {
        identity::issue(
            &self.dir.path().join("ca"),
            node,
            &self.dir.path().join(node),
        )
        .unwrap()
    }

    /// One request from the holder of `files`, saying `hello` in its Hello.
    fn ask(&self, files: &NodeFiles, hello: &str, req: &PeerRequest) -> Result<PeerReply, String> {
        let mut ep = Endpoint::new(hello);
        ep.io_timeout = Duration::from_secs(10);
        let mut peer = Peer::connect(&self.addr, &tls::client_config(files).unwrap(), &ep)
            .map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(req).unwrap();
        let reply = peer.control(&body).map_err(|e| e.to_string())?;
        peer.bye();
        Ok(serde_json::from_slice(&reply).unwrap())
    }

    /// A round of `src` into volume `v` from the holder of `files`, with `token`.
    fn round(&self, files: &NodeFiles, node: &str, token: &str, src: &Path) -> Result<u64, String> {
        let mut ep = Endpoint::new(node);
        ep.io_timeout = Duration::from_secs(10);
        RoundPusher::new(
            self.addr.clone(),
            tls::client_config(files).unwrap(),
            ep,
            Source::Tree(src.to_owned()),
            self.dir.path().join(format!("cache-{node}")),
            "v",
        )
        .with_token(token.to_owned())
        .with_retry(RoundPushRetry::default().with_connect_timeout(Duration::from_secs(5)))
        .push(1, true, &mut |_| {})
        .map(|r| r.summary.bytes_fetched)
        .map_err(|e| e.to_string())
    }

    fn state(&self, volume: &str) -> Option<String> {
        self.svc
            .transfer_paths(volume)
            .ok()
            .map(|p| format!("{} from {}", p.state, p.peer.unwrap_or_default()))
    }
}

fn prepare() -> PeerRequest {
    PeerRequest::Prepare {
        volume: "v".into(),
        options: BTreeMap::new(),
    }
}

fn commit(token: &str) -> PeerRequest {
    PeerRequest::Commit {
        volume: "v".into(),
        token: token.into(),
    }
}

fn token_of(r: Result<PeerReply, String>) -> String {
    match r {
        Ok(PeerReply::Prepared { token }) => token,
        other => panic!("prepare: {other:?}"),
    }
}

/// Issue 12, finding 5, at the plugin's level: a node with a valid
/// certificate whose Hello names another node gets nothing from the agent
/// (before the fix, its Prepare made a volume "received from" the node it
/// named).
#[test]
fn finding_05_a_peer_whose_hello_names_another_node_prepares_nothing() {
    let site = Site::start(local_service);
    let x = site.node("x");
    site.node("y");
    let err = site.ask(&x, "y", &prepare()).unwrap_err();
    assert!(err.contains("certificate names x"), "{err}");
    assert_eq!(site.state("v"), None, "no volume was made");
    // Under its own name it is served, and recorded as the sender.
    token_of(site.ask(&x, "x", &prepare()));
    assert_eq!(site.state("v").as_deref(), Some("receiving from x"));
}

/// Finding 5: a receive started by x can be neither taken over (prepared
/// again), fed, nor committed by y; nor by a stale run of x itself, whose
/// token a newer prepare replaced. Only x's current run commits it.
#[test]
fn finding_05_a_receive_started_by_one_node_is_not_taken_over_fed_or_committed_by_another() {
    let site = Site::start(local_service);
    let (x, y) = (site.node("x"), site.node("y"));
    let src = site.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"from x").unwrap();
    let old = token_of(site.ask(&x, "x", &prepare()));

    let err = site.ask(&y, "y", &prepare()).unwrap_err();
    assert!(err.contains("being received from x"), "{err}");
    let err = site.ask(&y, "y", &commit(&old)).unwrap_err();
    assert!(err.contains("not from y"), "{err}");
    let err = site.round(&y, "y", &old, &src).unwrap_err();
    assert!(err.contains("not from y"), "{err}");
    assert_eq!(site.state("v").as_deref(), Some("receiving from x"));

    // x runs again: the first run's token is dead.
    let token = token_of(site.ask(&x, "x", &prepare()));
    assert_ne!(token, old);
    let err = site.round(&x, "x", &old, &src).unwrap_err();
    assert!(err.contains("token"), "{err}");
    let err = site.ask(&x, "x", &commit(&old)).unwrap_err();
    assert!(err.contains("token"), "{err}");
    let err = site.ask(&x, "x", &commit("")).unwrap_err();
    assert!(err.contains("token"), "{err}");
    assert_eq!(site.state("v").as_deref(), Some("receiving from x"));

    assert_eq!(site.round(&x, "x", &token, &src).unwrap(), 6);
    match site.ask(&x, "x", &commit(&token)) {
        Ok(PeerReply::Committed { .. }) => {}
        other => panic!("commit: {other:?}"),
    }
    let p = site.svc.transfer_paths("v").unwrap();
    assert_eq!(p.state, "ready");
    assert_eq!(p.received_from.as_deref(), Some("x"));
    assert_eq!(std::fs::read(p.data.join("f")).unwrap(), b"from x");
    // The owned volume: y can neither commit it nor write into it.
    assert!(site.ask(&y, "y", &commit(&token)).is_err());
    assert!(site.round(&y, "y", &token, &src).is_err());
}

/// Finding 5, cluster mode: a handover goes only to the volume's owner, and
/// the asker is the node its certificate names. Node mallory (a valid
/// certificate of the cluster) can get the volume neither under its own
/// name (it does not own it) nor by naming the owner in its Hello.
#[test]
fn finding_05_a_cluster_handover_refuses_an_asker_whose_certificate_does_not_name_the_owner() {
    use cluster::Coordinator;
    let etcd = cluster::memory::MemoryCoordinator::new("prod");
    let coord = etcd.clone();
    let site = Site::start(move |root| {
        let mut svc = local_service(root);
        // Node "dest" (the agent's); node "b" is announced with an agent
        // address where nothing listens.
        let cfg: cluster::ClusterConfig = toml::from_str(
            "name = \"prod\"\nnode = \"dest\"\nagent = \"127.0.0.1:1\"\n\
             [etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap();
        let cn = ClusterNode::start(cfg, Arc::new(coord), root.join("fence.json")).unwrap();
        svc.set_cluster(cn, None);
        svc
    });
    // Written last here, then owned by b (b's Mount claimed it).
    site.svc.create("v", &BTreeMap::new()).unwrap();
    let mp = site.svc.mount("v", "c1", &Fence::unbounded()).unwrap();
    std::fs::write(mp.join("f"), b"x").unwrap();
    site.svc.unmount("v", "c1").unwrap();
    let lease = etcd.grant(Duration::from_secs(60)).unwrap();
    etcd.claim("v", "b", lease, None).unwrap();
    let handover = PeerRequest::Handover { volume: "v".into() };

    let mallory = site.node("mallory");
    let err = site.ask(&mallory, "mallory", &handover).unwrap_err();
    assert!(err.contains("node mallory does not own it"), "{err}");
    let err = site.ask(&mallory, "b", &handover).unwrap_err();
    assert!(err.contains("certificate names mallory"), "{err}");
    // The owner's own certificate passes the check (and then fails to be
    // reached: b announced no agent here).
    let b = site.node("b");
    let err = site.ask(&b, "b", &handover).unwrap_err();
    assert!(!err.contains("does not own it"), "{err}");
    assert!(err.contains("not in the cluster"), "{err}");
    assert_eq!(site.svc.transfer_paths("v").unwrap().state, "ready");
}
