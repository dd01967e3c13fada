//! Migration states on the source and the destination, over the local
//! backend.

use super::{go, local_service};
use crate::service::migrate::TransferMode;
use crate::service::{ErrorCode, ServiceError};
use std::collections::BTreeMap;

#[test]
fn fence_waits_for_unmount_and_then_refuses_mounts() {
    let (_d, svc) = local_service();
    svc.create("v", &BTreeMap::new()).unwrap();
    svc.mount("v", "c1", &go()).unwrap();
    svc.begin_move("v", "hostb").unwrap();
    // Pre-copy: still mountable.
    svc.mount("v", "c2", &go()).unwrap();
    let err = svc.fence("v", "hostb").unwrap_err();
    assert!(matches!(err, ServiceError::InUse { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::InUse);
    svc.unmount("v", "c1").unwrap();
    svc.unmount("v", "c2").unwrap();
    svc.fence("v", "hostb").unwrap();
    let err = svc.mount("v", "c3", &go()).unwrap_err();
    assert!(err.to_string().contains("being moved to hostb"), "{err}");
    assert_eq!(err.code(), ErrorCode::NotMountable);
    svc.finish_move("v", "hostb").unwrap();
    let err = svc.mount("v", "c3", &go()).unwrap_err();
    assert!(err.to_string().contains("volume moved to hostb"), "{err}");
    assert_eq!(err.code(), ErrorCode::Moved);
    // A finished move cannot be aborted or fenced for another host.
    assert!(svc.abort_move("v").is_err());
    assert!(svc.fence("v", "hostc").is_err());
}

#[test]
fn an_aborted_move_makes_the_volume_usable_again() {
    let (_d, svc) = local_service();
    svc.create("v", &BTreeMap::new()).unwrap();
    svc.begin_move("v", "hostb").unwrap();
    svc.fence("v", "hostb").unwrap();
    svc.abort_move("v").unwrap();
    svc.mount("v", "c1", &go()).unwrap();
}

#[test]
fn receiving_is_not_mountable_until_ownership_and_never_overwrites() {
    let (_d, svc) = local_service();
    let opts = BTreeMap::new();
    let p = svc.prepare_receive("r@default", &opts, "hosta").unwrap();
    assert_eq!(p.mode, TransferMode::Tree);
    assert!(p.data.ends_with("r/data"));
    let err = svc.mount("r@default", "c", &go()).unwrap_err();
    assert!(
        err.to_string().contains("being received from hosta"),
        "{err}"
    );
    // Resuming an interrupted receive finds the same volume.
    assert_eq!(svc.prepare_receive("r@default", &opts, "hosta").unwrap(), p);
    assert!(svc.check_receive("r@default", &opts, 1).unwrap().resuming);
    svc.take_ownership("r@default").unwrap();
    svc.mount("r@default", "c", &go()).unwrap();
    // An owned volume is never received into.
    assert!(svc.prepare_receive("r@default", &opts, "hosta").is_err());
    assert!(svc.check_receive("r@default", &opts, 1).is_err());
}

#[test]
fn check_receive_wants_the_profile_and_room() {
    let (_d, svc) = local_service();
    let opts = BTreeMap::new();
    let err = svc.check_receive("x@nosuch", &opts, 0).unwrap_err();
    assert!(err.to_string().contains("nosuch"), "{err}");
    let err = svc.check_receive("x", &opts, u64::MAX).unwrap_err();
    assert!(err.to_string().contains("not enough room"), "{err}");
    let ok = svc.check_receive("x", &opts, 1).unwrap();
    assert!(ok.free_bytes > 0 && !ok.resuming);
}

/// Issue 12, finding 7: a sized dir volume is refused before anything is
/// sent where this host's filesystem cannot enforce its limit (the real
/// local backend on the test's temporary directory).
#[test]
fn a_sized_dir_volume_is_refused_before_sending_where_quotas_are_off() {
    use crate::backend::local::quota::{ProjectQuotas, pure::ProjectState, tools::QuotaTools};
    let (d, svc) = local_service();
    let opts: BTreeMap<String, String> = [("size".to_owned(), "16M".to_owned())].into();
    let enforced = QuotaTools.filesystem(d.path()).unwrap().project == ProjectState::Enforced;
    let checked = svc.check_receive("q", &opts, 1);
    if enforced {
        checked.unwrap();
        return;
    }
    let err = checked.unwrap_err().to_string();
    assert!(
        err.contains("cannot enforce a size on a dir volume"),
        "{err}"
    );
    let err = svc.prepare_receive("q", &opts, "hosta").unwrap_err();
    assert!(err.to_string().contains("cannot enforce a size"), "{err}");
    assert!(svc.list().unwrap().is_empty(), "nothing recorded");
    // Unsized, the same volume is received as before.
    svc.check_receive("q", &BTreeMap::new(), 1).unwrap();
}

#[test]
fn a_received_block_image_starts_as_all_holes() {
    use std::os::unix::fs::MetadataExt;
    let (_d, svc) = local_service();
    let p = svc
        .prepare_receive("g@gold", &BTreeMap::new(), "hosta")
        .unwrap();
    assert_eq!(p.mode, TransferMode::Image);
    let md = std::fs::metadata(&p.data).unwrap();
    assert!(md.len() > 0, "the image keeps its size");
    assert_eq!(md.blocks(), 0, "mkfs data must not survive into a receive");
}

#[test]
fn a_moved_volume_can_come_back() {
    let (_d, svc) = local_service();
    let opts = BTreeMap::new();
    svc.create("v", &opts).unwrap();
    svc.begin_move("v", "hostb").unwrap();
    svc.fence("v", "hostb").unwrap();
    svc.finish_move("v", "hostb").unwrap();
    let p = svc.transfer_paths("v").unwrap();
    std::fs::write(p.data.join("stale"), b"old copy").unwrap();
    svc.prepare_receive("v", &opts, "hostb").unwrap();
    assert!(!p.data.join("stale").exists(), "the old copy is blanked");
    svc.take_ownership("v").unwrap();
    svc.mount("v", "c", &go()).unwrap();
}

/// Hardening finding 13: a peer could have any number of volumes created
/// here in `Receiving` (each a directory, a record, for block volumes an
/// image). Now one peer gets `MAX_RECEIVING_PER_PEER`; another peer, and a
/// resume of one it already has, are unaffected.
#[test]
fn finding_13_one_peer_cannot_receive_volumes_without_end() {
    use crate::service::migrate::MAX_RECEIVING_PER_PEER;
    let (_d, svc) = local_service();
    let opts = BTreeMap::new();
    for i in 0..MAX_RECEIVING_PER_PEER {
        svc.prepare_receive(&format!("r{i}"), &opts, "evil")
            .unwrap();
    }
    let err = svc
        .prepare_receive("one-more", &opts, "evil")
        .expect_err("a peer received volumes past the limit");
    assert!(err.to_string().contains("already sending"), "{err}");
    assert!(svc.find("one-more").is_err(), "the refused volume was made");
    svc.prepare_receive("r0", &opts, "evil").unwrap();
    svc.prepare_receive("other", &opts, "good").unwrap();
    svc.take_ownership("r0").unwrap();
    svc.prepare_receive("one-more", &opts, "evil").unwrap();
}

/// Issue 12, finding 13: a received ext4 image was mounted without a check,
/// so a peer's crafted image met the kernel's filesystem code. Now the
/// handover runs `e2fsck -n -f` first: an image that is no clean filesystem
/// is refused (the volume stays receiving), a clean one is taken.
#[test]
fn finding_13_a_received_image_is_checked_before_it_is_owned() {
    let (_d, svc) = local_service();
    let p = svc
        .prepare_receive("g@gold", &BTreeMap::new(), "hosta")
        .unwrap();
    // As received: all holes, no filesystem at all.
    let err = svc.take_ownership("g@gold").unwrap_err();
    assert!(err.to_string().contains("filesystem check"), "{err}");
    assert!(
        svc.mount("g@gold", "c", &go()).is_err(),
        "mountable after a failed check"
    );
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&p.data)
        .status()
        .unwrap();
    assert!(st.success());
    svc.take_ownership("g@gold").unwrap();
}
