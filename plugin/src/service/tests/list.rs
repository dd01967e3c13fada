//! List's cache (the VolumeDriver List reply, kept until the records
//! change) is right after every write, whichever part of the service made
//! it: Docker's own calls, each step of a migration on the source and on the
//! destination, and the EBS migration steps and rebuild. A write that went
//! around [`crate::state::Records`] would leave `docker volume ls` stale on
//! this host until some other write; these tests would catch it.

use super::{ebs_service, env, local_service, no_opts};
use crate::api::{DriverApi, Limits};
use crate::backend::Backend;
use crate::backend::ebs::testkit::{ME, ZONE, rig, rig_in};
use crate::service::VolumeService;
use std::sync::Arc;

/// (docker name, mountpoint) pairs, sorted.
type Listing = Vec<(String, String)>;

/// What docker sees: the List reply, through the VolumeDriver handler and
/// its cache.
async fn listed(api: &DriverApi) -> (Listing, bytes::Bytes) {
    let raw = api.handle("/VolumeDriver.List", b"{}").await.to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let mut out: Listing = body["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            (s("Name"), s("Mountpoint"))
        })
        .collect();
    out.sort();
    (out, raw)
}

/// What the records hold now, read afresh (no cache on this path).
fn stored(svc: &VolumeService) -> Listing {
    let mut out: Listing = svc
        .views()
        .unwrap()
        .into_iter()
        .flat_map(|v| {
            let mp = v.mountpoint.display().to_string();
            v.record
                .docker_names()
                .map(|n| (n.to_owned(), mp.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

async fn assert_list(api: &DriverApi, svc: &VolumeService, step: &str) {
    assert_eq!(listed(api).await.0, stored(svc), "List after {step}");
}

#[tokio::test]
async fn list_follows_every_docker_write_and_is_served_from_its_cache_between() {
    let e = env();
    let api = DriverApi::new(e.svc.clone(), Limits::default());
    assert!(listed(&api).await.0.is_empty());
    e.svc.create("a", &no_opts()).unwrap();
    assert_list(&api, &e.svc, "create").await;
    let (_, first) = listed(&api).await;
    let (_, again) = listed(&api).await;
    assert_eq!(
        first.as_ptr(),
        again.as_ptr(),
        "nothing changed: the same cached bytes"
    );
    e.svc.get_recording("a@default").unwrap();
    assert_list(&api, &e.svc, "a new docker name").await;
    assert_eq!(listed(&api).await.0.len(), 2);
    e.svc.mount("a", "c1", &super::go()).unwrap();
    e.svc.unmount("a", "c1").unwrap();
    assert_list(&api, &e.svc, "mount and unmount").await;
    e.svc.remove("a@default").unwrap();
    assert_list(&api, &e.svc, "remove of one docker name").await;
    e.svc.remove("a").unwrap();
    assert_list(&api, &e.svc, "remove").await;
    assert!(listed(&api).await.0.is_empty());
}

/// Hosts A and B in one service each; a volume goes A -> B and back.
#[tokio::test]
async fn list_is_right_after_every_migration_step_on_both_hosts() {
    let (_da, a) = local_service();
    let (_db, b) = local_service();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let api_a = DriverApi::new(a.clone(), Limits::default());
    let api_b = DriverApi::new(b.clone(), Limits::default());
    let opts = no_opts();
    a.create("v", &opts).unwrap();
    assert_list(&api_a, &a, "create (A)").await;
    assert_list(&api_b, &b, "start (B)").await;

    // Pre-copy, cutover, handover.
    a.begin_move("v", "hostb").unwrap();
    assert_list(&api_a, &a, "moving (A)").await;
    b.prepare_receive("v", &opts, "hosta").unwrap();
    assert_list(&api_b, &b, "prepare (B)").await;
    b.prepare_receive("v", &opts, "hosta").unwrap();
    assert_list(&api_b, &b, "prepare again, resuming (B)").await;
    a.fence("v", "hostb").unwrap();
    assert_list(&api_a, &a, "fenced (A)").await;
    a.abort_move("v").unwrap();
    assert_list(&api_a, &a, "unfence by abort (A)").await;
    a.begin_move("v", "hostb").unwrap();
    a.fence("v", "hostb").unwrap();
    b.take_ownership("v").unwrap();
    assert_list(&api_b, &b, "commit (B)").await;
    a.finish_move("v", "hostb").unwrap();
    assert_list(&api_a, &a, "moved (A)").await;

    // And back: A receives into its old, moved copy.
    b.begin_move("v", "hosta").unwrap();
    b.fence("v", "hosta").unwrap();
    a.prepare_receive("v", &opts, "hostb").unwrap();
    assert_list(&api_a, &a, "prepare of a moved volume (A)").await;
    a.take_ownership("v").unwrap();
    assert_list(&api_a, &a, "commit of a moved volume (A)").await;
    b.finish_move("v", "hosta").unwrap();
    assert_list(&api_b, &b, "moved back (B)").await;

    // A receive that fails (no such profile here) leaves nothing listed.
    assert!(b.prepare_receive("w@nosuch", &opts, "hosta").is_err());
    assert_list(&api_b, &b, "a refused prepare (B)").await;
}

#[tokio::test]
async fn list_is_right_after_every_ebs_migration_step_and_rebuild() {
    let r = rig();
    let (svc, _d) = ebs_service(&r);
    let api = DriverApi::new(svc.clone(), Limits::default());
    svc.create("db@gold", &no_opts()).unwrap();
    assert_list(&api, &svc, "create").await;
    svc.ebs_fence("db", "us-east-1b").unwrap();
    assert_list(&api, &svc, "fence").await;
    svc.ebs_attach("db").unwrap();
    assert_list(&api, &svc, "attach").await;
    svc.ebs_detach("db").unwrap();
    assert_list(&api, &svc, "detach").await;
    svc.ebs_unfence("db").unwrap();
    assert_list(&api, &svc, "unfence").await;
    svc.ebs_fence("db", "us-east-1b").unwrap();
    r.ec2.add_snapshot("snap-1", 1, true, "completed");
    let copy = svc.ebs_copy("db", "snap-1", "us-east-1b").unwrap();
    assert_list(&api, &svc, "copy").await;
    svc.ebs_moved("db", "us-east-1b", &copy).unwrap();
    assert_list(&api, &svc, "moved").await;

    // A host whose records were lost gets them back from EBS at start.
    let fresh = rig_in(ME, ZONE, r.ec2.clone());
    let (again, _d2) = ebs_service(&fresh);
    let api2 = DriverApi::new(again.clone(), Limits::default());
    again.create("kept", &no_opts()).unwrap();
    assert_list(&api2, &again, "create on a fresh host").await;
    r.be.create(crate::backend::ebs::testkit::vref(
        "lost",
        "default",
        &crate::backend::ebs::testkit::profile_settings("default", None),
    ))
    .unwrap();
    assert_eq!(again.rebuild().unwrap(), ["lost"]);
    assert_list(&api2, &again, "rebuild").await;
}
