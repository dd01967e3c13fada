//! set-profile and profile definitions against the EBS backend over the
//! in-memory EC2 (AWS's rules for ModifyVolume), on virtual time.

use super::{ebs_service, no_opts, records};
use crate::backend::ebs::testkit::{Rig, rig};
use crate::service::{ServiceError, VolumeService};
use profiles::{Catalog, ProfileDef, Settings};

pub(crate) fn def(v: serde_json::Value) -> ProfileDef {
    serde_json::from_value(v).unwrap()
}

/// gp3 above its baseline: differs from `default` only in what
/// ModifyVolume can change.
pub(crate) fn silver(throughput: u32) -> ProfileDef {
    def(serde_json::json!({
        "description": "gp3 above baseline",
        "local": {"format": "dir"},
        "ebs": {"type": "gp3", "iops": 4000, "throughput": throughput}
    }))
}

fn modify_calls(r: &Rig) -> usize {
    r.ec2
        .take_calls()
        .iter()
        .filter(|c| c.starts_with("ModifyVolume"))
        .count()
}

#[test]
fn set_profile_modifies_an_ebs_volume_in_place_then_records_it() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    svc.define_profile("silver", silver(250)).unwrap();
    svc.create("db", &no_opts()).unwrap();
    r.ec2.take_calls();

    let c = svc.set_profile("db", "silver").unwrap();
    assert_eq!(
        (c.from_profile.as_str(), c.to_profile.as_str()),
        ("default", "silver")
    );
    assert!(c.modified, "{c:?}");
    assert!(c.changes.iter().any(|n| n.contains("iops")), "{c:?}");
    assert!(c.changes.iter().any(|n| n.contains("throughput")), "{c:?}");
    assert_eq!(modify_calls(&r), 1, "one ModifyVolume with every change");
    let f = r.volume_of("db");
    assert_eq!(
        (f.volume_type.as_str(), f.iops, f.throughput),
        ("gp3", Some(4000), Some(250))
    );
    let rec = svc.find("db").unwrap();
    assert_eq!(rec.profile, "silver");
    let Settings::Ebs(s) = &rec.settings else {
        panic!("{:?}", rec.settings)
    };
    assert_eq!(
        (s.iops, s.throughput, s.size_gib),
        (Some(4000), Some(250), 10)
    );
    // The docker name docker holds still works, and so does the new one.
    assert!(svc.get("db").unwrap().is_some());
    assert_eq!(svc.find("db@silver").unwrap().name, "db");

    // A docker name with the old profile in it stays valid: dockerd keeps
    // `web@default` and asks for it again after a restart.
    svc.create("web@default", &no_opts()).unwrap();
    svc.set_profile("web@default", "silver").unwrap();
    let info = svc.get("web@default").unwrap().expect("old docker name");
    assert_eq!(info.name, "web@default");
    assert_eq!(svc.find("web@default").unwrap().profile, "silver");
    r.ec2.take_calls();

    // Again: nothing to do, no AWS call.
    let again = svc.set_profile("db@silver", "silver").unwrap();
    assert!(!again.modified && again.changes.is_empty(), "{again:?}");
    assert_eq!(modify_calls(&r), 0);
}

#[test]
fn set_profile_refuses_what_the_backend_cannot_apply_and_changes_nothing() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    svc.define_profile("silver", silver(250)).unwrap();
    svc.define_profile(
        "fast",
        def(serde_json::json!({"ebs": {"type": "io1", "iops": 500}})),
    )
    .unwrap();
    svc.create("db", &no_opts()).unwrap();
    r.ec2.take_calls();

    // gold is encrypted: EBS cannot encrypt a volume in place.
    let e = svc.set_profile("db", "gold").unwrap_err();
    assert!(matches!(e, ServiceError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("encrypt"), "{e}");
    let e = svc.set_profile("db", "nope").unwrap_err();
    assert!(matches!(e, ServiceError::Resolve(_)), "{e}");
    assert!(e.to_string().contains("unknown profile \"nope\""), "{e}");
    let e = svc.set_profile("ghost", "silver").unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    assert_eq!(modify_calls(&r), 0);
    assert_eq!(svc.find("db").unwrap().profile, "default");

    // AWS refuses a second modification while the first is applied: the
    // record keeps what the storage has (silver's settings).
    svc.set_profile("db", "silver").unwrap();
    let e = svc.set_profile("db", "fast").unwrap_err().to_string();
    assert!(e.contains("IncorrectModificationState"), "{e}");
    let rec = svc.find("db").unwrap();
    assert_eq!(rec.profile, "silver");
    assert_eq!(r.volume_of("db").volume_type, "gp3");
}

#[test]
fn a_redefined_profile_is_reapplied_to_its_volumes_or_refused_whole() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    let first = svc.define_profile("silver", silver(250)).unwrap();
    assert!(first.volumes.is_empty());
    svc.create("a@silver", &no_opts()).unwrap();
    svc.create("b@silver", &no_opts()).unwrap();
    svc.create("c", &no_opts()).unwrap();
    r.ec2.take_calls();

    let report = svc.define_profile("silver", silver(500)).unwrap();
    assert_eq!(report.profile.def, silver(500));
    let names: Vec<_> = report.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "only silver's volumes");
    assert!(
        report
            .volumes
            .iter()
            .all(|v| v.modified && v.error.is_none())
    );
    assert_eq!(modify_calls(&r), 2);
    assert_eq!(r.volume_of("a").throughput, Some(500));
    assert_eq!(r.volume_of("c").throughput, Some(125));

    // Encryption cannot be added in place: refused, the profile and the
    // volumes stay as they were.
    let enc = def(serde_json::json!({"ebs": {"type": "gp3", "encrypted": true}}));
    let e = svc.define_profile("silver", enc).unwrap_err();
    assert!(matches!(e, ServiceError::Refused { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("a@silver") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(svc.catalog().get("silver").unwrap().def, silver(500));
    assert_eq!(modify_calls(&r), 0);

    // Invalid values never reach the volumes.
    let bad = def(serde_json::json!({"ebs": {"type": "gp3", "throughput": 5000}}));
    let e = svc.define_profile("silver", bad).unwrap_err();
    assert!(matches!(e, ServiceError::Catalog(_)), "{e}");
    assert!(e.to_string().contains("5000 MiB/s"), "{e}");
    assert_eq!(modify_calls(&r), 0);
    let e = svc.define_profile("Bad Name", silver(250)).unwrap_err();
    assert!(matches!(e, ServiceError::Catalog(_)), "{e}");
}

#[test]
fn defined_profiles_survive_a_restart_of_the_service() {
    let r = rig();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut svc = VolumeService::new(
            records(dir.path()),
            crate::backend::Storage::ebs(r.be.clone()),
            Catalog::builtin(),
            dir.path().to_owned(),
        );
        svc.persist_profiles(&dir.path().join("state")).unwrap();
        svc
    };
    let svc = open();
    svc.define_profile("silver", silver(300)).unwrap();
    drop(svc);
    let svc = open();
    assert_eq!(svc.catalog().get("silver").unwrap().def, silver(300));
    svc.create("db@silver", &no_opts()).unwrap();
    assert_eq!(r.volume_of("db").throughput, Some(300));
}
