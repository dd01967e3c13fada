use super::*;
use crate::backend::ebs::AwsSide;
use std::cell::RefCell;
use std::collections::VecDeque;

/// The daemon: records the steps called; the fence answers "in use"
/// `busy_fences` times first.
#[derive(Default)]
struct FakeSteps {
    device: Option<PathBuf>,
    busy_fences: RefCell<u32>,
    fail_copy: bool,
    calls: RefCell<Vec<String>>,
}

fn facts(device: Option<PathBuf>) -> EbsFacts {
    EbsFacts {
        name: "db".into(),
        docker_name: "db@gold".into(),
        profile: "gold".into(),
        volume_id: "vol-src".into(),
        zone: "us-east-1a".into(),
        size_gib: 1,
        encrypted: false,
        kms_key_id: None,
        tag_state: None,
        mount_count: u64::from(device.is_some()),
        device,
        aws: AwsSide {
            region: None,
            endpoint_url: None,
            cluster: "default".into(),
            instance_id: "i-1".into(),
            zone: "us-east-1a".into(),
            snapshot_state_dir: PathBuf::from("/tmp/x"),
            device_resolver: "loop".into(),
        },
    }
}

impl FakeSteps {
    fn log(&self, s: impl Into<String>) {
        self.calls.borrow_mut().push(s.into());
    }
    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl EbsSteps for FakeSteps {
    fn facts(&self) -> Result<EbsFacts, StepError> {
        self.log("facts");
        Ok(facts(self.device.clone()))
    }
    fn fence(&self, zone: &str) -> Result<(), StepError> {
        let mut busy = self.busy_fences.borrow_mut();
        if *busy > 0 {
            *busy -= 1;
            self.log("fence:busy");
            return Err(StepError {
                message: "in use".into(),
                in_use: true,
            });
        }
        self.log(format!("fence:{zone}"));
        Ok(())
    }
    fn unfence(&self) -> Result<(), StepError> {
        self.log("unfence");
        Ok(())
    }
    fn attach(&self) -> Result<PathBuf, StepError> {
        self.log("attach");
        Ok(PathBuf::from("/dev/attached"))
    }
    fn detach(&self) -> Result<(), StepError> {
        self.log("detach");
        Ok(())
    }
    fn copy(&self, snapshot_id: &str, zone: &str) -> Result<String, StepError> {
        self.log(format!("copy:{snapshot_id}:{zone}"));
        if self.fail_copy {
            return Err(StepError {
                message: "InvalidSnapshot.NotFound".into(),
                in_use: false,
            });
        }
        Ok("vol-new".into())
    }
    fn moved(&self, zone: &str, volume_id: &str) -> Result<(), StepError> {
        self.log(format!("moved:{zone}:{volume_id}"));
        Ok(())
    }
}

/// Pushes that upload the given block counts in turn.
struct FakePusher {
    blocks: VecDeque<u64>,
    pushes: Vec<(PathBuf, Option<String>)>,
}

impl FakePusher {
    fn new(blocks: &[u64]) -> Self {
        Self {
            blocks: blocks.iter().copied().collect(),
            pushes: Vec::new(),
        }
    }
}

impl Pusher for FakePusher {
    fn push(&mut self, device: &Path, parent: Option<&str>) -> Result<PushReport, PushError> {
        self.pushes
            .push((device.to_owned(), parent.map(str::to_owned)));
        let n = self.pushes.len();
        let blocks = self.blocks.pop_front().unwrap_or(0);
        Ok(PushReport {
            snapshot_id: format!("snap-{n}"),
            parent: parent.map(str::to_owned),
            volume_gib: 1,
            source_bytes: 1 << 30,
            blocks_read: blocks,
            blocks_uploaded: blocks,
            zero_blocks_uploaded: 0,
            blocks_skipped: 2048 - blocks,
            bytes_uploaded: blocks * 512 * 1024,
            retries: 0,
            duration_secs: 0.1,
            index_path: PathBuf::new(),
        })
    }
}

fn opts() -> EbsMigrateOptions {
    EbsMigrateOptions {
        volume: "db@gold".into(),
        to_zone: "us-east-1c".into(),
        max_rounds: 5,
        small_round_blocks: SMALL_ROUND_BLOCKS,
        unmount_timeout: Duration::from_secs(5),
        fence_poll: Duration::from_millis(1),
    }
}

#[test]
fn pre_copy_stops_when_rounds_stop_shrinking_then_final_round_and_copy() {
    let steps = FakeSteps {
        device: Some(PathBuf::from("/dev/live")),
        busy_fences: RefCell::new(2),
        ..Default::default()
    };
    // Full 1000, then 300, then 400 (not shrinking: stop), final 50.
    let mut pusher = FakePusher::new(&[1000, 300, 400, 50]);
    let mut waited = 0;
    let report = migrate_ebs(&steps, &mut pusher, &opts(), &mut |e| {
        if matches!(e, EbsEvent::WaitingForUnmount) {
            waited += 1;
        }
    })
    .unwrap();
    assert_eq!(waited, 1);
    let parents: Vec<_> = pusher.pushes.iter().map(|p| p.1.clone()).collect();
    assert_eq!(
        parents,
        [
            None,
            Some("snap-1".into()),
            Some("snap-2".into()),
            Some("snap-3".into())
        ]
    );
    assert_eq!(pusher.pushes[0].0, PathBuf::from("/dev/live"));
    assert_eq!(pusher.pushes[3].0, PathBuf::from("/dev/attached"));
    let blocks: Vec<_> = report.rounds.iter().map(|r| r.blocks_changed).collect();
    assert_eq!(blocks, [1000, 300, 400, 50]);
    assert!(report.rounds[3].final_round && !report.rounds[2].final_round);
    assert_eq!(report.final_snapshot_id, "snap-4");
    assert_eq!(report.new_volume_id, "vol-new");
    assert_eq!(report.bytes, 1750 * 512 * 1024);
    assert_eq!(
        steps.calls(),
        [
            "facts",
            "fence:busy",
            "fence:busy",
            "fence:us-east-1c",
            "attach",
            "detach",
            "copy:snap-4:us-east-1c",
            "moved:us-east-1c:vol-new"
        ]
    );
}

#[test]
fn pre_copy_stops_at_a_small_round_or_max_rounds() {
    let steps = FakeSteps {
        device: Some(PathBuf::from("/dev/live")),
        ..Default::default()
    };
    let mut pusher = FakePusher::new(&[1000, 500, 10, 5]);
    let r = migrate_ebs(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap();
    assert_eq!(r.rounds.len(), 4, "3 pre-copy (the third is small) + final");

    let mut pusher = FakePusher::new(&[1000, 900, 800, 700, 600, 500]);
    let o = EbsMigrateOptions {
        max_rounds: 2,
        ..opts()
    };
    let r = migrate_ebs(&steps, &mut pusher, &o, &mut |_| {}).unwrap();
    assert_eq!(r.rounds.len(), 3, "2 pre-copy + final");
}

#[test]
fn an_unmounted_volume_gets_one_full_push_after_the_fence() {
    let steps = FakeSteps::default();
    let mut pusher = FakePusher::new(&[100]);
    let r = migrate_ebs(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap();
    assert_eq!(pusher.pushes, [(PathBuf::from("/dev/attached"), None)]);
    assert_eq!(r.rounds.len(), 1);
    assert!(r.rounds[0].final_round);
}

#[test]
fn a_failure_after_the_fence_unfences() {
    let steps = FakeSteps {
        fail_copy: true,
        ..Default::default()
    };
    let mut pusher = FakePusher::new(&[100]);
    let e = migrate_ebs(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            EbsMigrateError::AfterFence {
                unfence_error: None,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("InvalidSnapshot.NotFound"), "{msg}");
    assert!(msg.contains("usable here again"), "{msg}");
    assert_eq!(steps.calls().last().unwrap(), "unfence");
    assert!(!steps.calls().iter().any(|c| c.starts_with("moved")));
}

#[test]
fn same_zone_and_unmount_timeout_are_refused_without_a_fence() {
    let steps = FakeSteps::default();
    let o = EbsMigrateOptions {
        to_zone: "us-east-1a".into(),
        ..opts()
    };
    let e = migrate_ebs(&steps, &mut FakePusher::new(&[]), &o, &mut |_| {}).unwrap_err();
    assert!(matches!(e, EbsMigrateError::SameZone { .. }), "{e}");

    let steps = FakeSteps {
        busy_fences: RefCell::new(u32::MAX),
        ..Default::default()
    };
    let o = EbsMigrateOptions {
        unmount_timeout: Duration::from_millis(20),
        ..opts()
    };
    let e = migrate_ebs(&steps, &mut FakePusher::new(&[]), &o, &mut |_| {}).unwrap_err();
    assert!(matches!(e, EbsMigrateError::UnmountTimeout { .. }), "{e}");
    assert!(
        !steps
            .calls()
            .iter()
            .any(|c| c == "unfence" || c == "attach")
    );
}
