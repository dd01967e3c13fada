//! ClusterNode against the in-memory etcd double: claims, stale copies,
//! handover to a restarted daemon, release.

use super::*;
use cluster::memory::MemoryCoordinator;

fn cfg(node: &str) -> ClusterConfig {
    let text = format!(
        "name = \"prod\"\nnode = \"{node}\"\nagent = \"127.0.0.1:7443\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"
    );
    toml::from_str(&text).unwrap()
}

fn node(etcd: &MemoryCoordinator, name: &str, dir: &std::path::Path) -> Arc<ClusterNode> {
    ClusterNode::start(
        cfg(name),
        Arc::new(etcd.clone()),
        dir.join(format!("{name}.json")),
    )
    .unwrap()
}

#[test]
fn one_owner_at_a_time_and_a_stale_copy_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = MemoryCoordinator::new("prod");
    let (a, b) = (node(&etcd, "a", dir.path()), node(&etcd, "b", dir.path()));
    let mp = PathBuf::from("/v/db/data");
    let ea = a
        .claim("db", None, Some(mp.clone()), Duration::ZERO)
        .unwrap();
    // The heartbeat names the block filesystem the watchdog must fence.
    let hb = fencing::read(&dir.path().join("a.json")).unwrap();
    assert_eq!(hb.mounts, vec![mp]);
    assert!(hb.writable_until_ms > boot_ms());
    match b.claim("db", None, None, Duration::ZERO) {
        Err(ClusterError::Owned { node, epoch, .. }) => {
            assert_eq!((node.as_str(), epoch), ("a", ea))
        }
        other => panic!("a second owner: {other:?}"),
    }
    a.release("db");
    assert!(
        fencing::read(&dir.path().join("a.json"))
            .unwrap()
            .mounts
            .is_empty()
    );
    // b's copy never had a's writes: refused, and the ownership given back.
    match b.claim("db", None, None, Duration::ZERO) {
        Err(ClusterError::NotRefreshed { writer, epoch, .. }) => {
            assert_eq!((writer.as_str(), epoch), ("a", ea))
        }
        other => panic!("a stale copy served: {other:?}"),
    }
    assert_eq!(etcd.owner("db").unwrap(), None);
    // a's copy is current: a wins again, with a newer epoch.
    let ea2 = a.claim("db", Some(ea), None, Duration::ZERO).unwrap();
    assert!(ea2 > ea);
    // A copy a remembers at an older epoch is stale too.
    a.release("db");
    assert!(matches!(
        a.claim("db", Some(ea), None, Duration::ZERO),
        Err(ClusterError::NotRefreshed { .. })
    ));
}

#[test]
fn a_restarted_daemon_takes_over_its_own_ownership() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = MemoryCoordinator::new("prod");
    let first = node(&etcd, "a", dir.path());
    let e1 = first.claim("db", None, None, Duration::ZERO).unwrap();
    // The daemon restarts: a new lease while the old one still lives.
    let second = node(&etcd, "a", dir.path());
    let e2 = second.claim("db", Some(e1), None, Duration::ZERO).unwrap();
    assert!(e2 > e1);
    assert_eq!(second.owned("db"), Some(e2));
}

#[test]
fn a_node_past_its_lease_deadline_is_fenced_and_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = MemoryCoordinator::new("prod");
    let mut c = cfg("a");
    c.lease_ttl = 2;
    c.fence_margin_ms = 900;
    let a = ClusterNode::start(c, Arc::new(etcd.clone()), dir.path().join("a.json")).unwrap();
    a.claim("db", None, Some("/v/db".into()), Duration::ZERO)
        .unwrap();
    // etcd stops answering: no renewal is acknowledged.
    etcd.set_unavailable(true);
    let t = Instant::now();
    while a.owned("db").is_some() {
        a.tick();
        assert!(t.elapsed() < Duration::from_secs(3), "not fenced in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fenced at ttl - margin (1.1 s) after the grant, before etcd's 2 s.
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        t.elapsed()
    );
    let hb = fencing::read(&dir.path().join("a.json")).unwrap();
    assert_eq!(hb.writable_until_ms, 0, "the watchdog must fence now");
    assert_eq!(
        hb.fenced,
        vec![PathBuf::from("/v/db")],
        "the lost volume's filesystem must stay listed"
    );
    etcd.set_unavailable(false);
    assert!(matches!(
        a.claim("db", None, None, Duration::ZERO),
        Err(ClusterError::Fenced)
    ));
    // The next acknowledged renewal starts a new term; claims work again.
    for _ in 0..40 {
        a.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = a.status().unwrap();
    assert!(!st.fenced, "{st:?}");
    // A new term keeps the lost filesystem shut until it is unmounted.
    let hb = fencing::read(&dir.path().join("a.json")).unwrap();
    assert_eq!(hb.fenced, vec![PathBuf::from("/v/db")]);
    a.release("db");
    assert!(
        fencing::read(&dir.path().join("a.json"))
            .unwrap()
            .fenced
            .is_empty()
    );
}
