//! The behaviour every [`Coordinator`] must show, as functions a test runs
//! against one: the in-memory double (`memory.rs`'s tests) and a real etcd
//! (`tests/etcd.rs`). Keeping one copy is what keeps the double faithful.
//! Each panics with what went wrong. Volume names are prefixed by the
//! caller, so runs against one etcd do not meet.

use crate::coordinator::{Claim, Coordinator, CoordinatorError, Removed};
use crate::epoch::{Epoch, Fence};
use std::time::Duration;

/// Lease length the functions grant; etcd's minimum is about 2 s.
pub const TTL: Duration = Duration::from_secs(2);

/// Create is once, whoever asks; Remove waits until no node owns it.
pub fn create_is_once_and_remove_waits_for_the_owner(c: &dyn Coordinator, prefix: &str) {
    let db = format!("{prefix}db");
    let (first, made) = c.create_volume(&db, b"gold").unwrap();
    assert!(made);
    let (second, made) = c.create_volume(&db, b"default").unwrap();
    assert!(!made, "a second Create must find the first volume");
    assert_eq!(second, first);
    assert_eq!(second.record, b"gold");
    assert_eq!(c.volume(&db).unwrap().as_ref(), Some(&first));
    assert!(c.volumes().unwrap().iter().any(|v| v.name == db));
    let lease = c.grant(TTL).unwrap();
    let Claim::Won(epoch, _) = c.claim(&db, "a", lease, None).unwrap() else {
        panic!("a free volume was not won")
    };
    match c.remove_volume(&db).unwrap() {
        Removed::Owned(o) => assert_eq!((o.node.as_str(), o.epoch), ("a", epoch)),
        other => panic!("removed a volume a node owns: {other:?}"),
    }
    c.revoke(lease).unwrap();
    assert_eq!(
        c.owner(&db).unwrap(),
        None,
        "revoking the lease frees the volume"
    );
    assert_eq!(c.remove_volume(&db).unwrap(), Removed::Removed);
    assert_eq!(c.remove_volume(&db).unwrap(), Removed::Absent);
    assert_eq!(c.volume(&db).unwrap(), None);
}

/// One claim wins; a handover needs the current epoch; only the current
/// owner can release.
pub fn one_claim_wins_and_handover_needs_the_current_epoch(c: &dyn Coordinator, prefix: &str) {
    let db = format!("{prefix}db");
    let (la, lb) = (c.grant(TTL).unwrap(), c.grant(TTL).unwrap());
    let Claim::Won(e1, _) = c.claim(&db, "a", la, None).unwrap() else {
        panic!("a free volume was not won")
    };
    let Claim::Held(owner) = c.claim(&db, "b", lb, None).unwrap() else {
        panic!("a second claim must not win")
    };
    assert_eq!(
        (owner.node.as_str(), owner.epoch, owner.lease),
        ("a", e1, la)
    );
    assert!(
        matches!(
            c.claim(&db, "b", lb, Some(Epoch(e1.0 - 1))).unwrap(),
            Claim::Held(_)
        ),
        "a handover from an old epoch must fail"
    );
    let Claim::Won(e2, _) = c.claim(&db, "b", lb, Some(e1)).unwrap() else {
        panic!("a handover from the current epoch must win")
    };
    assert!(e2 > e1, "{e2} after {e1}");
    assert!(
        !c.release(&db, e1).unwrap(),
        "an old owner released the volume"
    );
    assert!(c.release(&db, e2).unwrap());
    assert_eq!(c.owner(&db).unwrap(), None);
    // A handover whose owner already left is a free claim.
    let Claim::Won(e3, _) = c.claim(&db, "a", la, Some(e2)).unwrap() else {
        panic!("a free volume was not won by a handover claim")
    };
    assert!(e3 > e2);
    c.revoke(la).unwrap();
    c.revoke(lb).unwrap();
}

/// An owner that stops renewing loses the volume when its lease runs out;
/// the next owner's epoch fences it. `wait` lets `by` pass (a manual clock
/// for the double, a sleep for etcd).
pub fn an_expired_lease_frees_the_volume(
    c: &dyn Coordinator,
    prefix: &str,
    wait: &dyn Fn(Duration),
) {
    let db = format!("{prefix}db");
    let la = c.grant(TTL).unwrap();
    let lb = c.grant(Duration::from_secs(60)).unwrap();
    let Claim::Won(ea, _) = c.claim(&db, "a", la, None).unwrap() else {
        panic!("a free volume was not won")
    };
    c.keep_alive(la).unwrap();
    assert!(matches!(
        c.claim(&db, "b", lb, None).unwrap(),
        Claim::Held(_)
    ));
    // etcd may keep an expired lease up to about a second longer.
    wait(TTL + Duration::from_millis(1_500));
    assert_eq!(
        c.owner(&db).unwrap(),
        None,
        "the owner key outlived its lease"
    );
    let renewed = c.keep_alive(la);
    assert!(
        matches!(renewed, Err(CoordinatorError::LeaseGone(l)) if l == la),
        "a keep-alive of an expired lease must say it is gone: {renewed:?}"
    );
    assert!(
        matches!(
            c.claim(&db, "a", la, None),
            Err(CoordinatorError::LeaseGone(_))
        ),
        "a claim under an expired lease must fail"
    );
    let Claim::Won(eb, _) = c.claim(&db, "b", lb, None).unwrap() else {
        panic!("the freed volume was not won")
    };
    let mut standby = Fence::new();
    standby.admit(&db, eb).unwrap();
    assert!(
        standby.admit(&db, ea).is_err(),
        "the old owner's epoch must be fenced"
    );
    c.revoke(lb).unwrap();
}

/// Every claim names who owned the volume before (read in the same
/// transaction), and the last writer outlives its owner's lease: that is how
/// a node learns its copy is stale. Nodes are listed while their lease lives.
pub fn the_last_writer_outlives_the_owner_and_nodes_live_with_their_lease(
    c: &dyn Coordinator,
    prefix: &str,
) {
    let db = format!("{prefix}db");
    let (na, nb) = (format!("{prefix}a"), format!("{prefix}b"));
    let (la, lb) = (c.grant(TTL).unwrap(), c.grant(TTL).unwrap());
    c.register_node(&na, b"10.0.0.1:7443", la).unwrap();
    c.register_node(&nb, b"10.0.0.2:7443", lb).unwrap();
    let listed = c.nodes().unwrap();
    assert!(
        listed.contains(&(na.clone(), b"10.0.0.1:7443".to_vec())),
        "{listed:?}"
    );
    assert!(listed.iter().any(|(n, _)| *n == nb));
    assert_eq!(c.writer(&db).unwrap(), None);
    let Claim::Won(e1, before) = c.claim(&db, &na, la, None).unwrap() else {
        panic!("a free volume was not won")
    };
    assert_eq!(before, None, "a volume never owned has no writer");
    assert_eq!(c.writer(&db).unwrap(), None, "a claim alone writes nothing");
    assert!(c.record_writer(&db, &na, e1).unwrap());
    let w = c.writer(&db).unwrap().expect("the recorded writer");
    assert_eq!((w.node.as_str(), w.epoch), (na.as_str(), e1));
    assert!(c.release(&db, e1).unwrap());
    assert_eq!(
        c.writer(&db).unwrap().map(|w| w.epoch),
        Some(e1),
        "release keeps the last writer"
    );
    let Claim::Won(e2, before) = c.claim(&db, &nb, lb, None).unwrap() else {
        panic!("a released volume was not won")
    };
    let before = before.expect("the previous writer");
    assert_eq!((before.node.as_str(), before.epoch), (na.as_str(), e1));
    assert!(
        !c.record_writer(&db, &na, e1).unwrap(),
        "an old owner recorded itself as the writer"
    );
    assert!(c.record_writer(&db, &nb, e2).unwrap());
    assert!(
        !c.record_writer(&db, &na, e1).unwrap(),
        "an old owner recorded itself as the writer"
    );
    assert!(c.record_writer(&db, &nb, e2).unwrap());
    // The owner's lease goes; its last write stays on record.
    c.revoke(lb).unwrap();
    assert_eq!(c.owner(&db).unwrap(), None);
    let w = c
        .writer(&db)
        .unwrap()
        .expect("the writer outlives the lease");
    assert_eq!((w.node.as_str(), w.epoch), (nb.as_str(), e2));
    assert!(
        !c.nodes().unwrap().iter().any(|(n, _)| *n == nb),
        "a node whose lease is gone is still listed"
    );
    // Remove takes the writer record with the volume.
    c.create_volume(&db, b"gold").unwrap();
    assert_eq!(c.remove_volume(&db).unwrap(), Removed::Removed);
    assert_eq!(c.writer(&db).unwrap(), None);
    c.revoke(la).unwrap();
}
