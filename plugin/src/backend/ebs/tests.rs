//! Unit tests of the EBS backend against the in-memory EC2 (AWS's rules,
//! transitions that take several looks), a fake device resolver and fake
//! filesystem steps, on virtual time: the state machine (attach and detach
//! waits, rollback of a failed first Mount, time budgets), the CreateVolume
//! parameters, tags, rebuild, modify and the migration steps.

use super::backend::*;
use super::error::EbsError;
use super::fs::Filesystems;
use super::tags;
use super::testkit::*;
use crate::aws::{Ec2Api, NewVolume};
use crate::backend::{Backend, BackendError, change};
use mover::retry::ErrorKind;
use profiles::{EbsVolumeType, Settings};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[test]
fn create_sends_the_profile_and_tags_and_waits_for_available() {
    let r = rig();
    // (profile, size GiB, type, iops, throughput, encrypted)
    let cases = [
        ("default", None, "gp3", 3_000, Some(125), false),
        ("default", Some(1), "gp3", 3_000, Some(125), false),
        ("default", Some(16_384), "gp3", 3_000, Some(125), false),
        ("gold", Some(4), "io2", 120, None, true),
        ("gold", None, "io2", 300, None, true),
        ("gold", Some(8_533), "io2", 255_990, None, true),
        ("gold", Some(8_534), "io2", 256_000, None, true),
        ("gold", Some(65_536), "io2", 256_000, None, true),
    ];
    for (i, (profile, size, ty, iops, tp, enc)) in cases.into_iter().enumerate() {
        let s = profile_settings(profile, size);
        let name = format!("v{i}");
        r.be.create(vref(&name, profile, &s)).unwrap();
        let v = r.volume_of(&name);
        assert_eq!(v.state, "available", "{name}: waited for available");
        assert_eq!(v.zone, ZONE);
        assert_eq!(v.size_gib, size.unwrap_or(10), "{name}");
        assert_eq!(
            (v.volume_type.as_str(), v.iops, v.throughput, v.encrypted),
            (ty, Some(iops), tp, enc),
            "{name}"
        );
        assert_eq!(v.tags[tags::CLUSTER], "c1");
        assert_eq!(v.tags[tags::HOST], ME);
        assert_eq!(v.tags[tags::NAME], name);
        assert_eq!(v.tags[tags::PROFILE], profile);
    }
}

#[test]
fn create_is_idempotent_and_rides_out_eventual_consistency() {
    let r = rig();
    r.ec2.set_invisible(2);
    let s = profile_settings("default", None);
    r.be.create(vref("db", "default", &s)).unwrap();
    let id = r.volume_of("db").id;
    // A repeated Create (a crash before the record said Ready) adopts it.
    let fresh = rig_in("i-other", ZONE, r.ec2.clone());
    let mut scope = fresh.be.scope.clone();
    scope.instance_id = ME.into();
    let again = EbsBackend::new(Parts {
        ec2: r.ec2.clone(),
        resolver: fresh.resolver.clone(),
        fs: fresh.fs.clone(),
        clock: fresh.clock.clone(),
        scope,
        mount_root: PathBuf::from("/nonexistent"),
        side: fresh.be.side().clone(),
    });
    again.create(vref("db", "default", &s)).unwrap();
    assert_eq!(r.ec2.volume_ids(), [id]);
}

#[test]
fn first_mount_attaches_waits_formats_once_and_mounts() {
    let r = rig();
    let s = profile_settings("gold", Some(20));
    let v = vref("db", "gold", &s);
    r.be.create(v).unwrap();
    let mp = r.be.mount(v).unwrap();
    assert_eq!(mp, r.be.mountpoint("db"));
    let facts = r.volume_of("db");
    let a = facts.attachment_to(ME).unwrap();
    assert_eq!(
        (a.state.as_str(), a.device.as_str()),
        ("attached", "/dev/sdf")
    );
    assert!(r.fs.is_mounted(&mp));
    assert_eq!(*lock(&r.fs.mkfs_count), 1);
    assert!(
        r.clock.elapsed() > Duration::ZERO,
        "waited for attaching -> attached"
    );
    assert!(r.clock.elapsed() < MOUNT_BUDGET);
    assert_eq!(r.be.status(v)["attach_device"], "/dev/sdf");

    r.be.unmount(v).unwrap();
    assert!(!r.fs.is_mounted(&mp));
    let facts = r.volume_of("db");
    assert!(
        facts.attachments.is_empty(),
        "waited until detached: {facts:?}"
    );
    assert_eq!(facts.state, "available");
    assert!(
        r.resolver_calls()
            .contains(&format!("release {}", facts.id))
    );

    // Second life: attached again, the filesystem is kept.
    r.be.mount(v).unwrap();
    assert_eq!(
        *lock(&r.fs.mkfs_count),
        1,
        "no mkfs of a volume with a filesystem"
    );
    r.be.unmount(v).unwrap();
    r.be.unmount(v).unwrap(); // idempotent
}

#[test]
fn a_failed_first_mount_detaches_again() {
    let r = rig();
    let s = profile_settings("default", None);
    let v = vref("db", "default", &s);
    r.be.create(v).unwrap();
    r.fs.fail_mount.store(true, Ordering::SeqCst);
    let e = r.be.mount(v).unwrap_err().to_string();
    assert!(e.contains("\"db\"") && e.contains("injected"), "{e}");
    let facts = r.volume_of("db");
    assert!(facts.attachments.is_empty(), "rolled back: {facts:?}");
    // And a device that never shows up: same.
    r.fs.fail_mount.store(false, Ordering::SeqCst);
    r.resolver.fail.store(true, Ordering::SeqCst);
    let e = r.be.mount(v).unwrap_err().to_string();
    assert!(
        e.contains("no block device") && e.contains(&facts.id),
        "{e}"
    );
    assert!(r.volume_of("db").attachments.is_empty());
    r.resolver.fail.store(false, Ordering::SeqCst);
    r.be.mount(v).unwrap();
}

#[test]
fn an_attach_that_never_completes_ends_within_the_budget_and_is_rolled_back() {
    let r = rig();
    let s = profile_settings("default", None);
    let v = vref("db", "default", &s);
    r.be.create(v).unwrap();
    r.ec2.set_settle(u32::MAX);
    let before = r.clock.elapsed();
    let e = r.be.mount(v).unwrap_err();
    assert!(
        matches!(*e_ebs(&e), EbsError::Timeout { what, .. } if what.starts_with("attach")),
        "{e}"
    );
    let spent = r.clock.elapsed() - before;
    assert!(
        spent <= MOUNT_BUDGET + ROLLBACK_BUDGET + Duration::from_secs(5),
        "bounded: {spent:?}"
    );
    // The rollback asked for a detach once the attachment existed.
    let calls = r.ec2.take_calls();
    assert!(
        calls.iter().any(|c| c.starts_with("AttachVolume")),
        "{calls:?}"
    );
}

fn e_ebs(e: &BackendError) -> &EbsError {
    match e {
        BackendError::Ebs(b) => b,
        other => panic!("not an EBS error: {other}"),
    }
}

#[test]
fn volumes_attached_elsewhere_or_in_another_zone_are_refused() {
    let r = rig();
    let s = profile_settings("default", None);
    let v = vref("db", "default", &s);
    r.be.create(v).unwrap();
    let id = r.volume_of("db").id;
    r.ec2.add_instance("i-other", ZONE);
    r.ec2.describe_volume(&id).unwrap();
    r.ec2.attach_volume(&id, "i-other", "/dev/sdf").unwrap();
    let e = r.be.mount(v).unwrap_err().to_string();
    assert!(e.contains("attached to instance i-other"), "{e}");
    assert!(
        r.volume_of("db").attachment_to("i-other").is_some(),
        "no force-detach"
    );
    let e = r.be.remove(v).unwrap_err().to_string();
    assert!(e.contains("attached to instance i-other"), "{e}");

    // A volume of another zone (created there, tagged for us), even with
    // its id cached here, is not this host's: not found in this zone, and
    // never attached.
    let b = rig_in(ME, "us-east-1b", r.ec2.clone());
    b.be.create(vref("other", "default", &s)).unwrap();
    let vb = b.volume_of("other");
    r.be.remember("other", &vb.id);
    let e =
        r.be.mount(vref("other", "default", &s))
            .unwrap_err()
            .to_string();
    assert!(e.contains("zone us-east-1a"), "{e}");
    assert!(r.ec2.peek(&vb.id).unwrap().attachments.is_empty());
    // attach's own check, for the zone move's steps that reach it by id.
    let d = super::wait::Deadline::new(r.clock.clone(), Duration::from_secs(5));
    let e = r.be.attach("other", &vb, &d);
    assert!(
        e.unwrap_err().to_string().contains("is in us-east-1b"),
        "attach refuses another zone's volume"
    );
}

#[test]
fn concurrent_attaches_get_distinct_device_names() {
    let r = Arc::new(rig());
    let s = profile_settings("default", None);
    for i in 0..4 {
        r.be.create(vref(&format!("v{i}"), "default", &s)).unwrap();
    }
    std::thread::scope(|sc| {
        for i in 0..4 {
            let r = r.clone();
            let s = s.clone();
            sc.spawn(move || {
                let name = format!("v{i}");
                r.be.mount(vref(&name, "default", &s)).unwrap();
            });
        }
    });
    let mut devs: Vec<String> = (0..4)
        .map(|i| {
            r.volume_of(&format!("v{i}"))
                .attachment_to(ME)
                .unwrap()
                .device
                .clone()
        })
        .collect();
    devs.sort();
    devs.dedup();
    assert_eq!(devs.len(), 4, "{devs:?}");
}

#[test]
fn remove_deletes_or_keeps_and_is_idempotent() {
    let r = rig();
    let s = profile_settings("default", None);
    let v = vref("db", "default", &s);
    r.be.create(v).unwrap();
    r.be.mount(v).unwrap();
    let id = r.volume_of("db").id;
    // Remove unmounts and detaches first (a crash may leave it mounted).
    r.be.remove(v).unwrap();
    assert!(r.ec2.peek(&id).is_none(), "deleted");
    assert!(r.resolver_calls().contains(&format!("forget {id}")));
    r.be.remove(v).unwrap();

    let Settings::Ebs(mut e) = profile_settings("default", None) else {
        unreachable!()
    };
    e.keep_on_remove = true;
    let keep = Settings::Ebs(e);
    let v = vref("kept", "default", &keep);
    r.be.create(v).unwrap();
    let id = r.volume_of("kept").id;
    r.be.remove(v).unwrap();
    let left = r.ec2.peek(&id).expect("kept in EBS");
    assert_eq!(left.tags[tags::STATE], "released");
    // A new volume of that NAME is a new EBS volume, not the released one.
    r.be.create(v).unwrap();
    assert_ne!(r.volume_of("kept").id, id);
}

#[test]
fn throttling_is_retried_and_failures_name_volume_and_code() {
    use mover::aws::ApiError;
    let r = rig();
    let s = profile_settings("default", None);
    let v = vref("db", "default", &s);
    let throttle = || {
        ApiError::new(
            "AttachVolume",
            ErrorKind::Throttled,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        )
    };
    r.be.create(v).unwrap();
    r.ec2.fail_next("AttachVolume", throttle());
    r.ec2.fail_next("AttachVolume", throttle());
    r.be.mount(v).unwrap();
    r.be.unmount(v).unwrap();
    for _ in 0..EC2_RETRY.max_attempts {
        r.ec2.fail_next("AttachVolume", throttle());
    }
    let e = r.be.mount(v).unwrap_err().to_string();
    let id = r.volume_of("db").id;
    assert!(
        e.contains("\"db\"")
            && e.contains(&id)
            && e.contains("AttachVolume: RequestLimitExceeded")
            && e.contains("after 6 attempt(s)"),
        "{e}"
    );
    r.ec2.fail_next(
        "CreateVolume",
        ApiError::new(
            "CreateVolume",
            ErrorKind::Permanent,
            "UnauthorizedOperation",
            "no",
        ),
    );
    let e =
        r.be.create(vref("x", "default", &s))
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("CreateVolume: UnauthorizedOperation") && e.contains("check the instance role"),
        "{e}"
    );
}

#[test]
fn modify_applies_one_change_and_refusals_change_nothing() {
    let r = rig();
    let s = profile_settings("default", Some(100));
    let v = vref("db", "default", &s);
    r.be.create(v).unwrap();
    let Settings::Ebs(mut to) = s.clone() else {
        unreachable!()
    };
    to.volume_type = EbsVolumeType::Io1;
    to.iops = Some(5_000);
    let plan = change::plan(&s, &Settings::Ebs(to)).unwrap();
    r.be.apply_change(v, &plan).unwrap();
    let f = r.volume_of("db");
    assert_eq!((f.volume_type.as_str(), f.iops), ("io1", Some(5_000)));
    let calls = r.ec2.take_calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("ModifyVolume"))
            .count(),
        1,
        "{calls:?}"
    );
    // A second change while the first is still being applied: AWS's code, with advice.
    let e = r.be.apply_change(v, &plan).unwrap_err().to_string();
    assert!(
        e.contains("IncorrectModificationState") && e.contains("still being applied"),
        "{e}"
    );
}

#[test]
fn rebuild_finds_own_and_unclaimed_volumes_and_claims_them() {
    let r = rig();
    let s = profile_settings("gold", Some(8));
    r.be.create(vref("mine", "gold", &s)).unwrap();
    // Another host's volume in our zone and cluster.
    let other = rig_in("i-other", ZONE, r.ec2.clone());
    other.be.create(vref("theirs", "gold", &s)).unwrap();
    // A volume nobody claimed yet (migrated in from another zone).
    let mut t = tags::for_new("c1", None, "moved", "gold", "moved@gold", 42);
    t.insert(tags::MIGRATED_FROM.into(), "vol-src".into());
    let Settings::Ebs(e) = &s else { unreachable!() };
    let nv = r
        .ec2
        .create_volume(&NewVolume {
            zone: ZONE.into(),
            size_gib: e.size_gib,
            volume_type: "io2".into(),
            iops: e.iops,
            encrypted: true,
            tags: t,
            client_token: "x".into(),
            ..NewVolume::default()
        })
        .unwrap();
    // Volumes of another cluster are not ours.
    let mut foreign = tags::for_new("c2", Some(ME), "alien", "gold", "alien", 1);
    foreign.remove(tags::HOST);
    r.ec2
        .create_volume(&NewVolume {
            zone: ZONE.into(),
            size_gib: 10,
            volume_type: "gp3".into(),
            tags: foreign,
            client_token: "y".into(),
            ..NewVolume::default()
        })
        .unwrap();
    let fresh = rig_in(ME, ZONE, r.ec2.clone());
    let mut found = fresh.be.discover().unwrap();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = found.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["mine", "moved"]);
    let moved = &found[1];
    assert!(moved.unclaimed);
    assert_eq!(
        (moved.docker_name.as_str(), moved.created_at),
        ("moved@gold", Some(42))
    );
    // As AWS reports it (the key AWS chose); the service fills in the profile's view.
    assert_eq!(moved.settings, {
        let Settings::Ebs(mut e) = s.clone() else {
            unreachable!()
        };
        e.kms_key_id = Some("alias/aws/ebs".into());
        Settings::Ebs(e)
    });
    fresh.be.adopt(moved).unwrap();
    assert_eq!(r.ec2.peek(&nv.id).unwrap().tags[tags::HOST], ME);
}

#[test]
fn migration_steps_fence_attach_copy_and_mark_moved() {
    let r = rig();
    let s = profile_settings("gold", Some(8));
    let v = vref("db", "gold", &s);
    r.be.create(v).unwrap();
    let src = r.volume_of("db").id;
    let e = r.be.attach_for_transfer("db").unwrap_err().to_string();
    assert!(e.contains("fenced first"), "{e}");
    r.be.fence("db", "us-east-1b").unwrap();
    r.be.fence("db", "us-east-1b").unwrap(); // idempotent
    let e = r.be.mount(v).unwrap_err().to_string();
    assert!(e.contains("being moved to us-east-1b"), "{e}");
    let e = r.be.remove(v).unwrap_err().to_string();
    assert!(e.contains("finish or abort the migration"), "{e}");
    let dev = r.be.attach_for_transfer("db").unwrap();
    assert_eq!(dev, PathBuf::from(format!("/dev/fake/{src}")));
    r.be.detach_after_transfer("db").unwrap();
    assert!(r.volume_of("db").attachments.is_empty());

    r.ec2.add_snapshot("snap-1", 8, true, "pending");
    let Settings::Ebs(es) = &s else {
        unreachable!()
    };
    let e =
        r.be.create_in_zone("db", "gold", "db@gold", es, "snap-1", "us-east-1b")
            .unwrap_err()
            .to_string();
    assert!(e.contains("snap-1") && e.contains("pending"), "{e}");
    r.ec2.set_snapshot_state("snap-1", "completed");
    let copy =
        r.be.create_in_zone("db", "gold", "db@gold", es, "snap-1", "us-east-1b")
            .unwrap();
    assert_eq!(copy.zone, "us-east-1b");
    assert_eq!(copy.state, "available");
    assert_eq!(copy.snapshot_id.as_deref(), Some("snap-1"));
    assert_eq!(
        (copy.volume_type.as_str(), copy.iops, copy.encrypted),
        ("io2", Some(240), true)
    );
    assert!(
        !copy.tags.contains_key(tags::HOST),
        "left for a host of us-east-1b to claim"
    );
    assert_eq!(copy.tags[tags::MIGRATED_FROM], src);
    r.be.mark_moved("db", "us-east-1b", &copy.id).unwrap();
    let e = r.be.mount(v).unwrap_err().to_string();
    assert!(
        e.contains(&format!("moved to us-east-1b as {}", copy.id)),
        "{e}"
    );

    // The destination host of zone b takes it over.
    let b = rig_in("i-b", "us-east-1b", r.ec2.clone());
    let found = b.be.discover().unwrap();
    assert_eq!(found.len(), 1);
    b.be.adopt(&found[0]).unwrap();
    // The snapshot carried the source's filesystem: no mkfs over it.
    lock(&b.fs.formatted).insert(PathBuf::from(format!("/dev/fake/{}", copy.id)));
    b.be.mount(v).unwrap();
    assert_eq!(*lock(&b.fs.mkfs_count), 0);

    // An aborted move lifts the fence.
    let other = vref("x", "default", &s);
    r.be.create(other).unwrap();
    r.be.fence("x", "us-east-1c").unwrap();
    r.be.unfence("x").unwrap();
    r.be.mount(other).unwrap();
}

/// Hardening finding 11, over the in-memory EC2: a retried copy step made
/// a second copy, and a move whose `moved` step failed (injected here at its
/// CreateTags) was unfenced with its copy left in the new zone, where that
/// zone's host adopted it: two live volumes. Now the copy step looks up
/// before it creates, and the copies are discarded before the unfence.
#[test]
fn finding_11_copies_are_looked_up_before_create_and_discarded_before_unfence() {
    let r = rig();
    let s = profile_settings("gold", Some(8));
    let v = vref("db", "gold", &s);
    r.be.create(v).unwrap();
    r.be.fence("db", "us-east-1b").unwrap();
    r.ec2.add_snapshot("snap-1", 8, true, "completed");
    r.ec2.add_snapshot("snap-2", 8, true, "completed");
    let Settings::Ebs(es) = &s else {
        unreachable!()
    };
    let copy = |snap: &str| {
        r.be.create_in_zone("db", "gold", "db@gold", es, snap, "us-east-1b")
            .unwrap()
    };
    let first = copy("snap-1");
    // The copy step again (its reply was lost): the same volume.
    assert_eq!(copy("snap-1").id, first.id);
    // A rerun with a newer final snapshot: the stale copy goes.
    let second = copy("snap-2");
    assert_ne!(second.id, first.id);
    let b = rig_in("i-b", "us-east-1b", r.ec2.clone());
    let found = b.be.discover().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    // Marking the source moved fails, for good.
    r.ec2.fail_next(
        "CreateTags",
        mover::aws::ApiError::new(
            "CreateTags",
            ErrorKind::Permanent,
            "UnauthorizedOperation",
            "no",
        ),
    );
    assert!(r.be.mark_moved("db", "us-east-1b", &second.id).is_err());
    assert_eq!(
        r.be.discard_copies("db").unwrap(),
        std::slice::from_ref(&second.id)
    );
    r.be.unfence("db").unwrap();
    r.be.mount(v).unwrap();
    assert!(
        b.be.discover().unwrap().is_empty(),
        "zone b still has a copy to adopt"
    );
    r.be.unmount(v).unwrap();

    // A finished move is never discarded.
    r.be.fence("db", "us-east-1b").unwrap();
    let third = copy("snap-2");
    r.be.mark_moved("db", "us-east-1b", &third.id).unwrap();
    let e = r.be.discard_copies("db").unwrap_err().to_string();
    assert!(e.contains("the move finished"), "{e}");
    assert_eq!(b.be.discover().unwrap().len(), 1);
}

/// Hardening (issue 12, low finding): the CreateVolume token was
/// `daffe-NAME-RANDOM` cut at 64 bytes, so for a long name the random part
/// was cut off and every Create of that name sent one token: AWS answered
/// a new Create with the volume of the first (even after it was removed).
#[test]
fn low_finding_client_tokens_stay_unique_for_long_names() {
    let long = "v".repeat(200);
    let (a, b) = (client_token(&long), client_token(&long));
    assert_ne!(a, b, "two Creates of one long name share a token");
    for t in [&a, &b, &client_token("db"), &client_token("é-名前")] {
        assert!(t.len() <= 64 && t.is_ascii(), "{t}");
    }
}

/// What an interrupted Create left: its request, saved as Create saves it
/// before calling EC2 (the caller sends it to EC2 when it landed).
fn interrupted_create(r: &Rig, name: &str, profile: &str) -> NewVolume {
    use super::create_record::{self, CreateRecord};
    let Settings::Ebs(e) = profile_settings(profile, None) else {
        unreachable!()
    };
    let t = tags::for_new("c1", Some(ME), name, profile, name, 1);
    let req = new_volume(name, &e, ZONE, None, t);
    let dir = r.be.mountpoint(name).parent().unwrap().to_owned();
    let rec = CreateRecord {
        request: req.clone(),
        volume_id: None,
    };
    create_record::save(&dir.join(create_record::FILE), &rec).unwrap();
    req
}

/// Crash safety (issue 12): the rollback of a Create whose CreateVolume
/// answer was lost (kill -9) deletes the volume EC2 made, though the tag
/// search cannot see it yet; and a CreateVolume that reaches EC2 only after
/// the rollback makes no volume (the rollback sent it first, same token).
#[test]
fn an_interrupted_create_rolled_back_leaves_no_ebs_volume_whenever_its_request_lands() {
    let r = rig();
    let s = profile_settings("default", None);
    // Landed before the rollback, invisible to the tag search.
    let req = interrupted_create(&r, "db", "default");
    r.ec2.set_invisible(3);
    let made = r.ec2.create_volume(&req).unwrap();
    r.be.remove(vref("db", "default", &s)).unwrap();
    assert!(
        r.ec2.peek(&made.id).is_none(),
        "the landed volume was deleted"
    );
    assert!(r.ec2.volume_ids().is_empty());
    assert!(!r.be.mountpoint("db").parent().unwrap().exists());

    // Landing after the rollback: EC2 answers with the deleted volume.
    let req = interrupted_create(&r, "web", "default");
    r.be.remove(vref("web", "default", &s)).unwrap();
    let late = r.ec2.create_volume(&req).unwrap();
    assert_eq!(late.state, "deleted");
    assert!(r.ec2.volume_ids().is_empty(), "{:?}", r.ec2.volume_ids());
}

/// A Create repeated after the crash adopts the volume the first one made
/// (its request's token), or deletes it first when it asked for other
/// settings: never two volumes for one name.
#[test]
fn a_create_repeated_after_a_crash_adopts_or_replaces_the_interrupted_ones_volume() {
    let r = rig();
    let req = interrupted_create(&r, "db", "default");
    r.ec2.set_invisible(3);
    let made = r.ec2.create_volume(&req).unwrap();
    let s = profile_settings("default", None);
    r.be.create(vref("db", "default", &s)).unwrap();
    assert_eq!(r.ec2.volume_ids(), std::slice::from_ref(&made.id));

    let req = interrupted_create(&r, "web", "default");
    let made = r.ec2.create_volume(&req).unwrap();
    let gold = profile_settings("gold", Some(20));
    r.be.create(vref("web", "gold", &gold)).unwrap();
    assert!(
        r.ec2.peek(&made.id).is_none(),
        "the default-profile volume went"
    );
    let now = r.volume_of("web");
    assert_eq!(now.volume_type, "io2");
    assert_eq!(r.ec2.volume_ids().len(), 2);
}

/// Makes volume "db" here, then gives it to another host the way a move
/// does (its `daffe:host` tag); returns its id.
fn made_here_then_taken(r: &Rig, s: &Settings) -> String {
    r.be.create(vref("db", "default", s)).unwrap();
    let id = r.volume_of("db").id;
    let other = [(tags::HOST.to_owned(), "i-0other".to_owned())]
        .into_iter()
        .collect();
    r.ec2.create_tags(&id, &other).unwrap();
    id
}

fn assert_kept_for_the_other_host(r: &Rig, id: &str) {
    let left = r.ec2.peek(id).expect("another host's volume is kept");
    assert_eq!(left.tags[tags::HOST], "i-0other");
    assert!(left.attachment_to(ME).is_none(), "and never attached here");
}

/// The create record stays on a host whose volume went to another host:
/// a Remove of the name here leaves that volume alone, as the tag search
/// does.
#[test]
fn a_create_record_never_reaches_a_volume_another_host_took() {
    let r = rig();
    let s = profile_settings("default", None);
    let id = made_here_then_taken(&r, &s);
    // This host's daemon restarted: no id cached, the record on disk.
    let mount_root =
        r.be.mountpoint("db")
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
    let restarted = EbsBackend::new(Parts {
        ec2: r.ec2.clone(),
        resolver: r.resolver.clone(),
        fs: r.fs.clone(),
        clock: r.clock.clone(),
        scope: r.be.scope.clone(),
        mount_root,
        side: r.be.side().clone(),
    });
    restarted.remove(vref("db", "default", &s)).unwrap();
    assert_kept_for_the_other_host(&r, &id);
}

/// The id cached when this host made a volume stays cached after another
/// host takes the volume: a Mount or Remove here must leave that volume
/// alone, as the tag search would.
#[test]
fn a_cached_id_never_reaches_a_volume_another_host_took() {
    let r = rig();
    let s = profile_settings("default", None);
    let id = made_here_then_taken(&r, &s);
    assert_eq!(r.be.cached_id("db").as_deref(), Some(id.as_str()));
    let v = vref("db", "default", &s);
    assert!(
        r.be.mount(v).is_err(),
        "another host's volume is not mounted here"
    );
    r.be.remove(v).unwrap();
    assert_kept_for_the_other_host(&r, &id);
}
