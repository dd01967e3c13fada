//! Docker's volume semantics against a fake backend and temporary records.

use super::{Env, env, go, no_opts};
use crate::bounded::{BoundedError, Fence};
use crate::service::ServiceError;
use crate::service::VolumeService;
use crate::state::Records;
use crate::state::record::{Mounts, VolumeState};
use profiles::Catalog;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[test]
fn create_is_idempotent_for_same_name_and_profile_only() {
    let e = env();
    e.svc.create("db@gold", &no_opts()).unwrap();
    e.svc.create("db@gold", &no_opts()).unwrap();
    let opts: BTreeMap<_, _> = [("profile".to_owned(), "gold".to_owned())].into();
    e.svc.create("db", &opts).unwrap();
    assert_eq!(e.fake.calls(), ["create db"], "repeated creates are no-ops");
    for (other, opts) in [("db", no_opts()), ("db@default", no_opts())] {
        let err = e.svc.create(other, &opts).unwrap_err();
        assert!(matches!(err, ServiceError::Exists { .. }), "{other}: {err}");
        assert!(
            err.to_string().contains("\"db@gold\" (profile \"gold\")"),
            "{err}"
        );
    }
    // FlockerProfiles: `name` is `name@default`.
    e.svc.create("cheap@default", &no_opts()).unwrap();
    e.svc.create("cheap", &no_opts()).unwrap();
    assert_eq!(e.svc.get("cheap").unwrap().unwrap().name, "cheap");
    // Each docker name docker holds is listed.
    let names: Vec<_> = e.svc.list().unwrap().iter().map(|v| v.0.clone()).collect();
    assert_eq!(names, ["cheap@default", "cheap", "db@gold", "db"]);
}

#[test]
fn invalid_names_are_refused_before_any_work() {
    let e = env();
    for bad in ["vol@", "@gold", "a@b@c", "a/b@gold", "..@gold", "db@silver"] {
        let err = e.svc.create(bad, &no_opts()).unwrap_err();
        assert!(matches!(err, ServiceError::Request(_)), "{bad}: {err}");
        assert!(
            err.to_string().contains("profiles: default, gold"),
            "{bad}: {err}"
        );
    }
    let err = e
        .svc
        .create("db", &[("size".to_owned(), "512K".to_owned())].into())
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::Resolve(_)),
        "a dir volume's size under its 1M minimum: {err}"
    );
    assert!(e.fake.calls().is_empty());
    assert!(e.svc.list().unwrap().is_empty());
}

#[test]
fn get_echoes_the_docker_name_and_reports_status() {
    let e = env();
    e.svc
        .create("db@gold", &[("size".to_owned(), "64M".to_owned())].into())
        .unwrap();
    let v = e.svc.get("db@gold").unwrap().unwrap();
    assert_eq!(v.name, "db@gold");
    assert_eq!(v.mountpoint, Path::new("/fake/db"));
    assert!(v.created_at.ends_with('Z'));
    for (k, want) in [
        ("profile", "gold"),
        ("backend", "local"),
        ("format", "block"),
        ("size", "64M"),
        ("state", "ready"),
    ] {
        assert_eq!(v.status[k], want, "{k}");
    }
    assert_eq!(v.status["settings"]["filesystem"], "ext4");
    assert_eq!(v.status["options"]["size"], "64M");
    assert_eq!(v.status["fake"], true, "backend status is included");
    // NAME alone finds it (echoed as asked); another profile does not.
    // A name docker does not hold yet is recorded before Get answers.
    assert!(e.svc.get("db").unwrap().is_none());
    assert_eq!(e.svc.get_recording("db").unwrap().name, "db");
    assert_eq!(e.svc.get("db").unwrap().unwrap().name, "db");
    assert!(matches!(
        e.svc.get("db@default"),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(e.svc.get("a@b@c"), Err(ServiceError::NotFound(_))));
    // The CLI may use NAME.
    assert_eq!(e.svc.inspect("db").unwrap().record.docker_name, "db@gold");
    assert_eq!(e.svc.list().unwrap().len(), 2, "db@gold and db");
}

#[test]
fn anonymous_volumes_get_the_default_profile() {
    let e = env();
    let anon = "3f1c0a9b8e7d6c5b4a3928171615141312111009080706050403020100ffeedd";
    e.svc.create(anon, &no_opts()).unwrap();
    assert_eq!(
        e.svc.get(anon).unwrap().unwrap().status["profile"],
        "default"
    );
}

#[test]
fn mounts_are_counted_per_id_and_the_backend_sees_first_and_last_only() {
    let e = env();
    e.svc.create("v", &no_opts()).unwrap();
    e.fake.calls();
    e.svc.mount("v", "c1", &go()).unwrap();
    e.svc.mount("v", "c2", &go()).unwrap();
    e.svc.mount("v", "c1", &go()).unwrap(); // docker cp reuses the ID
    assert_eq!(e.fake.calls(), ["mount v"]);
    let view = e.svc.inspect("v").unwrap();
    assert_eq!((view.mount_count, view.record.mounts.count("c1")), (3, 2));
    e.svc.unmount("v", "c1").unwrap();
    e.svc.unmount("v", "c2").unwrap();
    assert!(e.fake.calls().is_empty(), "c1 still holds one mount");
    assert!(e.fake.is_mounted("v"));
    e.svc.unmount("v", "unknown-id").unwrap();
    e.svc.unmount("v", "c1").unwrap();
    assert_eq!(e.fake.calls(), ["unmount v"]);
    assert_eq!(e.svc.inspect("v").unwrap().mount_count, 0);
}

#[test]
fn remove_of_a_mounted_volume_fails_in_use() {
    let e = env();
    e.svc.create("v", &no_opts()).unwrap();
    e.svc.mount("v", "0123456789abcdef", &go()).unwrap();
    let err = e.svc.remove("v").unwrap_err();
    assert!(
        err.to_string().contains("in use") && err.to_string().contains("0123456789ab"),
        "{err}"
    );
    e.svc.unmount("v", "0123456789abcdef").unwrap();
    e.svc.remove("v").unwrap();
    assert!(matches!(e.svc.get("v"), Err(ServiceError::NotFound(_))));
    assert!(matches!(e.svc.remove("v"), Err(ServiceError::NotFound(_))));
}

#[test]
fn a_failed_mount_changes_nothing() {
    let e = env();
    e.svc.create("v", &no_opts()).unwrap();
    e.fake.fail_mount.store(true, Ordering::SeqCst);
    assert!(e.svc.mount("v", "c1", &go()).is_err());
    assert_eq!(e.svc.inspect("v").unwrap().mount_count, 0);
    e.fake.fail_mount.store(false, Ordering::SeqCst);
    e.svc.remove("v").unwrap();
}

#[test]
fn an_abandoned_mount_is_rolled_back() {
    let e = env();
    e.svc.create("v", &no_opts()).unwrap();
    e.fake.calls();
    let fence = Fence::new(Duration::from_secs(1));
    assert!(fence.abandon());
    assert!(matches!(
        e.svc.mount("v", "c1", &fence),
        Err(ServiceError::Bounded(BoundedError::Timeout { .. }))
    ));
    assert_eq!(e.svc.inspect("v").unwrap().mount_count, 0);
    assert!(!e.fake.is_mounted("v"));
}

#[test]
fn a_failed_create_leaves_no_record() {
    let e = env();
    e.fake.fail_create.store(true, Ordering::SeqCst);
    assert!(e.svc.create("v", &no_opts()).is_err());
    assert_eq!(e.fake.calls(), ["create v", "remove v"]);
    assert!(e.svc.list().unwrap().is_empty());
}

#[test]
fn state_survives_a_restart_and_interrupted_creates_are_cleaned() {
    let e = env();
    e.svc.create("keep", &no_opts()).unwrap();
    e.svc.mount("keep", "c1", &go()).unwrap();
    // A Create cut off after its intent record.
    let mut rec = e.svc.records.get("keep").unwrap().unwrap();
    rec.name = "half".into();
    rec.docker_name = "half".into();
    rec.state = VolumeState::Creating;
    rec.mounts = Mounts::default();
    e.svc.records.put(&rec).unwrap();
    let Env {
        svc,
        fake,
        _dir,
        store_path,
    } = e;
    drop(svc);
    let svc = VolumeService::new(
        Records::open(&store_path).unwrap(),
        crate::backend::Storage::plain(fake.clone()),
        Catalog::builtin(),
        "/d".into(),
    );
    fake.calls();
    svc.recover().unwrap();
    assert_eq!(fake.calls(), ["remove half"]);
    let names: Vec<_> = svc.list().unwrap().iter().map(|v| v.0.clone()).collect();
    assert_eq!(names, ["keep"]);
    assert_eq!(svc.inspect("keep").unwrap().mount_count, 1);
    svc.unmount("keep", "c1").unwrap();
    assert_eq!(fake.calls(), ["unmount keep"]);
}

#[test]
fn parallel_creates_and_mounts_leave_exact_counts() {
    let e = env();
    std::thread::scope(|s| {
        for i in 0..20 {
            let svc = &e.svc;
            s.spawn(move || svc.create(&format!("p{i}"), &no_opts()).unwrap());
        }
    });
    assert_eq!(e.svc.list().unwrap().len(), 20);
    e.svc.create("shared", &no_opts()).unwrap();
    e.fake.calls();
    std::thread::scope(|s| {
        for i in 0..5 {
            let svc = &e.svc;
            s.spawn(move || svc.mount("shared", &format!("c{i}"), &go()).unwrap());
        }
    });
    assert_eq!(e.fake.calls(), ["mount shared"]);
    assert_eq!(e.svc.inspect("shared").unwrap().mount_count, 5);
    std::thread::scope(|s| {
        for i in 0..5 {
            let svc = &e.svc;
            s.spawn(move || svc.unmount("shared", &format!("c{i}")).unwrap());
        }
    });
    assert_eq!(e.fake.calls(), ["unmount shared"]);
    assert_eq!(e.svc.inspect("shared").unwrap().mount_count, 0);
}

#[test]
fn remove_drops_one_docker_name_and_the_data_with_the_last() {
    let e = env();
    e.svc.create("v@default", &no_opts()).unwrap();
    e.svc.get_recording("v").unwrap(); // docker run -v v:/data
    e.fake.calls();
    e.svc.mount("v", "c1", &go()).unwrap();
    assert!(matches!(
        e.svc.remove("v@default"),
        Err(ServiceError::InUse { .. })
    ));
    e.svc.unmount("v@default", "c1").unwrap();
    e.svc.remove("v@default").unwrap();
    assert_eq!(
        e.fake.calls(),
        ["mount v", "unmount v"],
        "data kept for `v`"
    );
    assert!(
        matches!(e.svc.get("v@default"), Ok(None)),
        "v@default is no longer held"
    );
    assert!(e.svc.get("v").unwrap().is_some());
    e.svc.remove("v").unwrap();
    assert_eq!(e.fake.calls(), ["remove v"]);
    assert!(matches!(e.svc.get("v"), Err(ServiceError::NotFound(_))));
}

/// Issue 12, low finding: `recover()` returned at the first volume it
/// could not clean, and `serve` exited: one bad volume kept every other
/// from being served. Now it logs that one and goes on.
#[test]
fn low_finding_one_interrupted_create_that_cannot_be_cleaned_does_not_stop_recover() {
    let e = env();
    e.svc.create("keep", &no_opts()).unwrap();
    for name in ["bad", "half"] {
        let mut rec = e.svc.records.get("keep").unwrap().unwrap();
        rec.name = name.into();
        rec.docker_name = name.into();
        rec.state = VolumeState::Creating;
        e.svc.records.put(&rec).unwrap();
    }
    *e.fake.fail_remove.lock().unwrap() = Some("bad".into());
    e.fake.calls();
    e.svc.recover().expect("recover gave up on the daemon");
    let mut calls = e.fake.calls();
    calls.sort();
    assert_eq!(calls, ["remove bad", "remove half"]);
    assert!(e.svc.records.get("half").unwrap().is_none());
    assert_eq!(
        e.svc.records.get("bad").unwrap().unwrap().state,
        VolumeState::Creating,
        "kept for the next start"
    );
    assert_eq!(e.svc.inspect("keep").unwrap().mount_count, 0);
}
