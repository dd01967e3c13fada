use super::*;
use crate::follow::fake_hosts::{Ending, FakeEngine, FakeMover};

const IMAGE: &str = "daffe-test/busybox:latest";

fn spec(region: &str, n: u8) -> HostSpec {
    HostSpec {
        region: region.into(),
        agent: format!("10.0.0.{n}:7450"),
        engine: format!("/run/{region}/docker.sock").into(),
        control: format!("/run/{region}/control.sock").into(),
        tls_dir: None,
        addr: format!("10.0.0.{n}"),
    }
}

fn order(from: &str, to: &str) -> MoveOrder {
    MoveOrder {
        service: "counter".into(),
        from: from.into(),
        to: to.into(),
        expected_downtime_s: 1.0,
        reason: "test".into(),
    }
}

/// The counter runs on us (A) with its daffe volume; eu (B) has the image.
fn two() -> (FakeEngine, FakeEngine) {
    let a = FakeEngine::default();
    a.run("counter", IMAGE, &[("counter@gold", "daffe")]);
    (a, FakeEngine::with_image(IMAGE))
}

fn hosts<'a>(a: &'a FakeEngine, b: &'a FakeEngine) -> Vec<Host<'a>> {
    vec![
        Host {
            spec: spec("us", 1),
            engine: a,
        },
        Host {
            spec: spec("eu", 2),
            engine: b,
        },
    ]
}

#[test]
fn a_move_stops_the_source_at_the_unmount_and_starts_the_same_container_there() {
    let (a, b) = two();
    let hs = hosts(&a, &b);
    let mut mover = FakeMover {
        engines: vec![("us", &a), ("eu", &b)],
        owner: "us".into(),
        ending: Ending::Completes,
        runs: 0,
    };
    let mut steps = Vec::new();
    let mut on_step = |s: Step| steps.push(s);
    let mut act = TwoHostActuator {
        hosts: &hs,
        container: "counter".into(),
        volume: None,
        mover: &mut mover,
        on_step: &mut on_step,
        last: None,
    };
    assert_eq!(act.execute(&order("us", "eu")).unwrap(), Outcome::Moved);
    let done = act.last.take().unwrap();
    drop(act);
    assert_eq!(done.from.unwrap().addr, "10.0.0.1");
    assert_eq!(
        (done.to.node.as_str(), done.to.addr.as_str()),
        ("eu", "10.0.0.2")
    );
    assert_eq!(done.migrate.unwrap()["downtime_ms"], 7);
    assert!(
        !a.running("counter") && a.exists("counter"),
        "A's copy is kept, stopped"
    );
    assert!(b.running("counter"));
    let made = b.raw("counter");
    assert_eq!(made["Config"]["Cmd"][0], "httpd");
    assert_eq!(made["HostConfig"]["VolumeDriver"], "daffe");
    assert_eq!(made["HostConfig"]["Binds"][0], "counter@gold:/data");
    assert_eq!(a.calls(), vec!["stop counter"]);
    assert_eq!(b.calls(), vec!["create counter", "start counter"]);
    assert_eq!(mover.owner, "eu");
    assert!(
        matches!(&steps[..], [Step::SourceStopping { from, to }, Step::DestinationStarting { to: t }]
            if from == "us" && to.addr == "10.0.0.2" && t == "eu"),
        "{steps:?}"
    );

    // And back: B's container stops, A's stopped copy is replaced by the
    // one from B (the volume's data is what travelled, not the container).
    let mut on_step = |_: Step| {};
    let mut act = TwoHostActuator {
        hosts: &hs,
        container: "counter".into(),
        volume: None,
        mover: &mut mover,
        on_step: &mut on_step,
        last: None,
    };
    act.execute(&order("eu", "us")).unwrap();
    drop(act);
    assert!(a.running("counter") && !b.running("counter"));
    assert_eq!(
        a.calls()[1..],
        ["rm counter", "create counter", "start counter"]
    );
    assert_eq!(mover.owner, "us");
}

#[test]
fn bad_moves_are_refused_before_anything_changes() {
    let (a, b) = two();
    let hs = hosts(&a, &b);
    let p = |c: &str, v: Option<&str>, to: &str| plan(&hs, c, v, to);
    assert!(
        p("web", None, "eu")
            .unwrap_err()
            .contains("runs on none of the hosts (us, eu)")
    );
    assert!(
        p("counter", None, "ap")
            .unwrap_err()
            .contains("no --host for region ap")
    );
    assert!(
        p("counter", None, "us")
            .unwrap_err()
            .contains("already runs in us")
    );
    assert!(
        p("counter", Some("other"), "eu")
            .unwrap_err()
            .contains("does not mount volume other")
    );
    let ok = p("counter", None, "eu").unwrap();
    assert_eq!(
        (ok.volume.as_str(), ok.driver.as_str()),
        ("counter@gold", "daffe")
    );
    assert!(
        ok.render()
            .contains("migrate volume counter@gold (daffe) from us to eu")
    );
    // No image on the destination: a pull is not a move's business.
    let bare = FakeEngine::default();
    let hs2 = hosts(&a, &bare);
    assert!(
        plan(&hs2, "counter", None, "eu")
            .unwrap_err()
            .contains("eu has no image")
    );
    // Running on both: which one is the service?
    b.run("counter", IMAGE, &[("counter@gold", "daffe")]);
    assert!(
        p("counter", None, "eu")
            .unwrap_err()
            .contains("runs on us and eu")
    );
    // Only local volumes, or two plugin volumes and none named.
    let c = FakeEngine::default();
    c.run("counter", IMAGE, &[("scratch", "local")]);
    let hs3 = hosts(&c, &bare);
    assert!(
        plan(&hs3, "counter", None, "eu")
            .unwrap_err()
            .contains("mounts no volume of a plugin")
    );
    let d = FakeEngine::default();
    d.run("counter", IMAGE, &[("x", "daffe"), ("y", "daffe")]);
    let e = FakeEngine::with_image(IMAGE);
    let hs4 = hosts(&d, &e);
    assert!(
        plan(&hs4, "counter", None, "eu")
            .unwrap_err()
            .contains("name the one to move with --volume")
    );
    assert_eq!(plan(&hs4, "counter", Some("y"), "eu").unwrap().volume, "y");
    // Nothing was touched by any of it.
    assert!(a.calls().is_empty() && b.calls().is_empty() && d.calls().is_empty());
}

fn failing(
    ending: Ending,
    fail_start: bool,
) -> (String, FakeEngine, FakeEngine, String, Vec<Step>) {
    let (a, b) = two();
    if fail_start {
        b.fail_start();
    }
    let hs = hosts(&a, &b);
    let mut mover = FakeMover {
        engines: vec![("us", &a), ("eu", &b)],
        owner: "us".into(),
        ending,
        runs: 0,
    };
    let mut steps = Vec::new();
    let mut on_step = |s: Step| steps.push(s);
    let mut act = TwoHostActuator {
        hosts: &hs,
        container: "counter".into(),
        volume: None,
        mover: &mut mover,
        on_step: &mut on_step,
        last: None,
    };
    let e = act.execute(&order("us", "eu")).unwrap_err().to_string();
    assert!(act.last.is_none());
    drop(act);
    let owner = mover.owner.clone();
    drop(mover);
    drop(hs);
    (e, a, b, owner, steps)
}

#[test]
fn a_failed_migration_gives_the_container_back_to_the_source() {
    let (e, a, b, owner, steps) = failing(Ending::FinalRoundFails, false);
    assert!(e.contains("link cut"), "{e}");
    assert!(
        e.contains("us: counter started again, volume counter@gold unchanged"),
        "{e}"
    );
    assert!(e.contains("eu: nothing started"), "{e}");
    assert!(a.running("counter"));
    assert!(!b.exists("counter"));
    assert_eq!(owner, "us");
    assert_eq!(a.calls(), vec!["stop counter", "start counter"]);
    // A forwarder on the port goes before the container comes back.
    assert!(matches!(
        &steps[..],
        [Step::SourceStopping { .. }, Step::SourceRestarting]
    ));
}

#[test]
fn a_lost_handover_keeps_the_source_stopped_and_fenced_and_says_how_to_finish() {
    let (e, a, b, _, _) = failing(Ending::HandoverLost, false);
    assert!(
        e.contains("us: counter stopped (kept), volume counter@gold fenced (kept)"),
        "{e}"
    );
    assert!(
        e.contains("finish with `daffe migrate counter@gold --to 10.0.0.2:7450` on us"),
        "{e}"
    );
    assert!(!a.running("counter") && a.exists("counter"));
    assert!(!b.exists("counter"));
    assert_eq!(
        a.calls(),
        vec!["stop counter"],
        "never restarted: two owners"
    );
}

#[test]
fn a_destination_that_will_not_start_is_said_with_each_host_s_state() {
    let (e, a, b, owner, _) = failing(Ending::Completes, true);
    assert!(
        e.contains("volume counter@gold moved to eu, but starting counter failed"),
        "{e}"
    );
    assert!(e.contains("port is already allocated"), "{e}");
    assert!(
        e.contains("us: counter stopped (kept), volume counter@gold fenced: moved to eu"),
        "{e}"
    );
    assert!(
        e.contains("eu: volume counter@gold owned there; container counter not running"),
        "{e}"
    );
    assert_eq!(owner, "eu");
    assert!(a.exists("counter"), "the source container is never removed");
    assert!(b.exists("counter") && !b.running("counter"));
}

#[test]
fn where_is_the_host_that_runs_the_container_with_its_client_address() {
    let (a, b) = two();
    let hs = hosts(&a, &b);
    let p = where_is(&hs, "web", "counter").unwrap();
    assert_eq!(
        (p.service.as_str(), p.node.as_str(), p.addr.as_str()),
        ("web", "us", "10.0.0.1")
    );
    assert_eq!(
        (p.region.as_deref(), p.state.as_str()),
        (Some("us"), "running")
    );
    // Stopped on A, not yet started on B (mid-move): no host, said so.
    a.stop(&a.inspect("counter").unwrap().unwrap().id, Duration::ZERO)
        .unwrap();
    let e = where_is(&hs, "web", "counter").unwrap_err();
    assert!(e.contains("runs on none of the hosts (us, eu)"), "{e}");
    // Then running on B only.
    b.run("counter", IMAGE, &[("counter@gold", "daffe")]);
    assert_eq!(where_is(&hs, "web", "counter").unwrap().addr, "10.0.0.2");
    // Running on both: which one serves? Refused, naming both.
    a.start(&a.inspect("counter").unwrap().unwrap().id).unwrap();
    let e = where_is(&hs, "web", "counter").unwrap_err();
    assert!(e.contains("runs on us and eu"), "{e}");
}
