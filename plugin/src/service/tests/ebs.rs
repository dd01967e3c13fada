//! Records rebuilt from EBS at start, over the in-memory EC2.

use super::ebs_service;
use crate::backend::Backend;
use crate::backend::ebs::testkit::{ME, ZONE, profile_settings, rig, rig_in, vref};
use crate::state::record::VolumeState;
use profiles::Settings;
use std::collections::BTreeMap;

#[test]
fn lost_records_are_rebuilt_once_and_unknown_profiles_keep_their_data() {
    let r = rig();
    let gold = profile_settings("gold", Some(8));
    r.be.create(vref("lost", "gold", &gold)).unwrap();
    // Made with a profile this host does not know.
    let other = profile_settings("default", Some(5));
    r.be.create(vref("stray", "platinum", &other)).unwrap();
    let known = profile_settings("default", None);

    // A host whose state dir was lost: a fresh backend and an empty store
    // that knows one volume of its own.
    let fresh = rig_in(ME, ZONE, r.ec2.clone());
    let (svc, _d) = ebs_service(&fresh);
    svc.create("kept", &BTreeMap::new()).unwrap();
    let mut rebuilt = svc.rebuild().unwrap();
    rebuilt.sort();
    assert_eq!(rebuilt, ["lost", "stray"]);

    let lost = svc.find("lost").unwrap();
    assert_eq!(
        (lost.profile.as_str(), lost.state),
        ("gold", VolumeState::Ready)
    );
    let Settings::Ebs(s) = &lost.settings else {
        panic!("{:?}", lost.settings)
    };
    assert_eq!(
        (s.size_gib, s.encrypted, s.keep_on_remove),
        (8, true, false)
    );
    let stray = svc.find("stray").unwrap();
    let Settings::Ebs(s) = &stray.settings else {
        panic!("{:?}", stray.settings)
    };
    assert!(
        s.keep_on_remove,
        "without its profile, Remove must keep the data"
    );

    // Idempotent; the store's own record is left alone.
    assert!(svc.rebuild().unwrap().is_empty());
    assert_eq!(svc.find("kept").unwrap().settings, known);
}
