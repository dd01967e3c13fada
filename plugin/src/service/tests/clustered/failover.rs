//! Failover (issue 14, node failure): the owner dies (its lease runs out in
//! the in-memory etcd), and a Mount elsewhere takes the volume over from a
//! standby copy, only if that copy is the dead owner's standby holding a
//! whole round it marked at the epoch of its last write.

use super::{Cluster, cluster, node, read, write, writer};
use crate::service::VolumeService;
use crate::service::tests::go;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// `a` dies: its lease runs out (revoked: its keys go as they do when it
/// expires), while the other nodes keep theirs.
fn kill_a(c: &Cluster) {
    use cluster::Coordinator;
    let lease = c.a.cluster().unwrap().status().unwrap().lease;
    c.etcd.revoke(cluster::LeaseId(lease)).unwrap();
}

/// `v@ha` owned by a, written "one" and sent to b in a complete round, then
/// "two" written after it (what a failover loses).
fn owned_by_a_with_a_round(c: &Cluster) -> std::path::PathBuf {
    c.a.create("v@ha", &BTreeMap::new()).unwrap();
    c.b.get_clustered("v@ha").unwrap();
    let mp = c.a.mount("v@ha", "c1", &go()).unwrap();
    write(&mp, "one", "first");
    c.a.standby_tick();
    let lag = &c.a.standby_lags("v")[0];
    assert_eq!((lag.node.as_str(), lag.rounds), ("b", 1), "{lag:?}");
    assert!(lag.error.is_none(), "{lag:?}");
    // A dir volume's scan is never frozen: not sealed.
    assert!(!lag.sealed && lag.freeze_ms.is_none(), "{lag:?}");
    write(&mp, "two", "second");
    mp
}

#[test]
fn a_dead_owners_standby_takes_over_from_its_last_round_and_says_what_was_lost() {
    let c = cluster();
    owned_by_a_with_a_round(&c);
    std::thread::sleep(Duration::from_millis(60));
    kill_a(&c);
    let mp = c.b.mount("v@ha", "c2", &go()).unwrap();
    // The round's content, nothing after it.
    assert_eq!(read(&mp, "one").as_deref(), Some("first"));
    assert_eq!(read(&mp, "two"), None);
    assert_eq!(writer(&c, "v"), "b");
    // No handover was asked of the dead node.
    assert!(super::super::lock(&c.nodes.asked).is_empty());
    let t = c.b.last_takeover("v").unwrap();
    assert_eq!(t.from, "a");
    assert!(t.epoch > t.from_epoch, "{t:?}");
    assert!(!t.sealed, "{t:?}");
    assert!(t.rpo_ms >= 60, "{t:?}");
    assert!(t.round_at_unix_ms <= t.mark_received_unix_ms, "{t:?}");
    assert!(t.checked.contains("each file as the owner's scan read it"));
    // Inspect shows it.
    let info = c.b.get("v@ha").unwrap().unwrap();
    let st = serde_json::to_value(&info.status).unwrap();
    assert_eq!(st["cluster"]["last_takeover"]["from"], "a", "{st}");
    // Served and owned: b writes, and a later Mount of it asks nobody.
    write(&mp, "three", "after");
    c.b.unmount("v@ha", "c2").unwrap();
    let mp = c.b.mount("v@ha", "c3", &go()).unwrap();
    assert_eq!(read(&mp, "three").as_deref(), Some("after"));
}

#[test]
fn a_node_that_is_no_standby_of_the_dead_owner_refuses_and_the_standby_still_can() {
    let c = cluster();
    let n3 = node(c._dir.path(), "n3", &c.etcd, &c.nodes);
    n3.get_clustered("v@ha").ok();
    owned_by_a_with_a_round(&c);
    n3.get_clustered("v@ha").unwrap();
    kill_a(&c);
    let err = n3.mount("v@ha", "c2", &go()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("node a is not in the cluster now"), "{msg}");
    assert!(msg.contains("holds no standby copy"), "{msg}");
    // The claim was given back: the standby takes it over.
    let mp = c.b.mount("v@ha", "c3", &go()).unwrap();
    assert_eq!(read(&mp, "one").as_deref(), Some("first"));
}

#[test]
fn a_standby_of_an_older_epoch_is_refused_and_kept() {
    let c = cluster();
    let mp = owned_by_a_with_a_round(&c);
    drop(mp);
    // a mounts it again (a new epoch, a's copy current) and writes; no
    // round of that epoch reaches b before a dies.
    c.a.unmount("v@ha", "c1").unwrap();
    let mp = c.a.mount("v@ha", "c4", &go()).unwrap();
    write(&mp, "later", "x");
    kill_a(&c);
    let err = c.b.mount("v@ha", "c2", &go()).unwrap_err().to_string();
    assert!(err.contains("the last write is of"), "{err}");
    // Kept as it was: still a's standby, never served.
    let p = c.b.transfer_paths("v@ha").unwrap();
    assert_eq!(
        (p.state.as_str(), p.peer.as_deref()),
        ("receiving", Some("a"))
    );
    assert!(c.b.last_takeover("v").is_none());
}

#[test]
fn a_round_half_received_when_the_owner_died_is_never_served() {
    let c = cluster();
    let mp = owned_by_a_with_a_round(&c);
    // A second round: its mark reaches b, half its chunks too, then a dies.
    write(&mp, "big", &"y".repeat(300_000));
    *super::super::lock(&c.nodes.die_mid_round) = true;
    c.a.standby_tick();
    let lag = &c.a.standby_lags("v")[0];
    assert!(
        lag.error
            .as_deref()
            .unwrap_or("")
            .contains("killed mid-round"),
        "{lag:?}"
    );
    let p = c.b.transfer_paths("v@ha").unwrap();
    assert_eq!(
        crate::clustering::standby::read_marks(&p.state_dir).len(),
        2,
        "the second round's mark arrived"
    );
    kill_a(&c);
    // The copy is the first round whole: nothing of the second.
    let mp = c.b.mount("v@ha", "c2", &go()).unwrap();
    assert_eq!(read(&mp, "one").as_deref(), Some("first"));
    assert_eq!(read(&mp, "two"), None);
    assert_eq!(read(&mp, "big"), None);
}

#[test]
fn a_round_committed_without_the_owners_mark_is_refused() {
    let c = cluster();
    let mp = owned_by_a_with_a_round(&c);
    // An unmarked round commits on b after the marked one: b cannot tell
    // what it holds, so it serves nothing.
    write(&mp, "three", "z");
    *super::super::lock(&c.nodes.unmarked) = true;
    c.a.standby_tick();
    assert!(c.a.standby_lags("v")[0].error.is_none());
    kill_a(&c);
    let err = c.b.mount("v@ha", "c2", &go()).unwrap_err().to_string();
    assert!(err.contains("none that node a announced"), "{err}");
}

/// a owned `v` and died; b took it over (container c2) and wrote "from-b".
fn taken_over_by_b() -> Cluster {
    let c = cluster();
    owned_by_a_with_a_round(&c);
    kill_a(&c);
    let mp_b = c.b.mount("v@ha", "c2", &go()).unwrap();
    write(&mp_b, "from-b", "b");
    c
}

#[test]
fn the_dead_owner_back_never_serves_its_copy_and_its_rounds_are_refused() {
    let c = taken_over_by_b();
    let owner = {
        use cluster::Coordinator;
        c.etcd.owner("v").unwrap().unwrap()
    };
    assert_eq!(owner.node, "b");
    let Cluster { a: a2, b, .. } = &restart_a(c);
    assert!(a2.cluster().unwrap().owned("v").is_none());
    // A round of a's old epoch is refused on b: b owns it at a newer one.
    let err = b
        .accept_standby("v@ha", "a", owner.epoch.0 - 1, None)
        .unwrap_err();
    assert!(err.to_string().contains("does not own it"), "{err}");
    // A Mount on a, once b let go, brings a's copy up to date from b
    // first: never its stale copy ("two" went with it).
    b.unmount("v@ha", "c2").unwrap();
    let mp = a2.mount("v@ha", "c5", &go()).unwrap();
    assert_eq!(read(&mp, "from-b").as_deref(), Some("b"));
    assert_eq!(read(&mp, "two"), None);
}

/// a's daemon starts again (a new lease) on the same data, after b took
/// the volume over: the cluster with a's new service. a's copy (with "two",
/// never sent) still counts the mount of its container, which its engine's
/// restart killed without an Unmount (the plugin was down).
fn restart_a(c: Cluster) -> Cluster {
    assert_eq!(mounts(&c.a), 1);
    let Cluster {
        _dir,
        etcd,
        nodes,
        a,
        b,
    } = c;
    drop(a);
    let a: Arc<VolumeService> = node(_dir.path(), "a", &etcd, &nodes);
    a.join_cluster().unwrap();
    Cluster {
        _dir,
        etcd,
        nodes,
        a,
        b,
    }
}

fn mounts(svc: &VolumeService) -> u64 {
    svc.records.get("v").unwrap().unwrap().mounts.total()
}

#[test]
fn the_dead_owner_back_becomes_the_new_owners_standby_once_nothing_mounts_its_copy() {
    let c = taken_over_by_b();
    let Cluster { a: a2, b, .. } = &restart_a(c);
    // Nothing mounts a's directory now: the count went at start, and the
    // copy is b's standby at b's next round (b's first other node).
    let p = a2.transfer_paths("v@ha").unwrap();
    assert_eq!((mounts(a2), p.state.as_str()), (0, "ready"));
    b.standby_tick();
    let lag = &b.standby_lags("v")[0];
    assert_eq!((lag.node.as_str(), lag.rounds), ("a", 1), "{lag:?}");
    assert!(lag.error.is_none(), "{lag:?}");
    let p = a2.transfer_paths("v@ha").unwrap();
    assert_eq!(
        (p.state.as_str(), p.peer.as_deref()),
        ("receiving", Some("b"))
    );
    // Blank first (the receiver knows only what its own rounds wrote),
    // then b's round: b's write, nothing of a's lost one.
    assert_eq!(read(&p.data, "from-b").as_deref(), Some("b"));
    assert_eq!(read(&p.data, "two"), None);
    assert_eq!(read(&p.data, "one").as_deref(), Some("first"));
}
