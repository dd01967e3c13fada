//! `daffe migrate VOLUME --via-ebs --to-zone ZONE`: moves an EBS volume to
//! another availability zone through snapshots.
//!
//! Sequence (the daemon's steps are the `/v1/volumes/NAME/ebs/*` control
//! routes, see `crate::service::ebs`):
//! 1. preflight: the volume's facts; ZONE must differ from its zone.
//! 2. pre-copy: while a container mounts it, its device is attached here, so
//!    we snapshot it live: a full push, then incremental pushes against the
//!    previous one until a round changes few blocks or stops shrinking. An
//!    unmounted volume is not attached, and attaching needs the fence, so it
//!    gets no pre-copy (nothing writes to it anyway).
//! 3. cutover: fence, retried until nothing mounts it (the operator stops
//!    the containers), bounded by the unmount timeout; attach, the final
//!    incremental push, detach.
//! 4. copy: the new volume in ZONE from the final snapshot (an earlier
//!    attempt's copy is looked up first), then `moved`. Any failure after
//!    the fence deletes every copy made, then lifts the fence, so the
//!    volume is usable again and no host of ZONE adopts a second live copy
//!    (hardening finding 11); a copy that cannot be deleted keeps the fence.
//! 5. snapshots: every snapshot the migration pushed is deleted (after a
//!    move, keeping the newest `keep_snapshots` of the volume's migration
//!    snapshots; after a failure, once its copies are gone), each checked
//!    to carry this migration's tags first (`super::ebs_snapshots`). A
//!    failed delete is a warning in the report, never a failed move.
//!
//! The daemon and the snapshot pushes are traits so the sequencing is
//! tested with fakes (below); the real sides are [`DaemonSteps`] here and
//! `super::ebs_snapshots`.

use super::ebs_snapshots::{Cleanup, SnapshotCleaner, clean_up};
use crate::control::{ControlClient, ControlRequest, EbsStep};
use crate::service::ebs::EbsFacts;
use mover::snapshot::{PushError, PushReport};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A round that uploads at most this many blocks (512 KiB each) is small
/// enough that the final round after the fence is short: stop pre-copying.
pub(crate) const SMALL_ROUND_BLOCKS: u64 = 64;

/// Pre-copy rounds at most, by default.
pub(crate) const DEFAULT_MAX_ROUNDS: u32 = 5;

/// Migration snapshots kept per volume after a move, by default: none. The
/// source volume stays (marked moved) until `docker volume rm`, so it, not
/// a snapshot, is the way back; daffe never reads the snapshots again (a
/// later move pushes a full round from the new volume), and each one bills
/// for its blocks until deleted.
pub(crate) const DEFAULT_KEEP_SNAPSHOTS: u32 = 0;

/// A failed daemon step, as the daemon client reports it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct StepError {
    pub(crate) message: String,
    /// The daemon refused because the volume is mounted (fence, attach).
    pub(crate) in_use: bool,
}

/// The daemon's EBS migration steps for one volume.
pub(crate) trait EbsSteps {
    fn facts(&self) -> Result<EbsFacts, StepError>;
    fn fence(&self, zone: &str) -> Result<(), StepError>;
    fn unfence(&self) -> Result<(), StepError>;
    fn attach(&self) -> Result<PathBuf, StepError>;
    fn detach(&self) -> Result<(), StepError>;
    /// Returns the new volume's id.
    fn copy(&self, snapshot_id: &str, zone: &str) -> Result<String, StepError>;
    /// Deletes every copy of the volume a migration made; their ids.
    fn discard_copies(&self) -> Result<Vec<String>, StepError>;
    fn moved(&self, zone: &str, volume_id: &str) -> Result<(), StepError>;
}

/// The daemon's side of [`EbsSteps`]: one volume's `/v1/volumes/NAME/ebs`
/// routes, through the control client.
pub(crate) struct DaemonSteps {
    pub(crate) daemon: ControlClient,
    pub(crate) volume: String,
}

impl DaemonSteps {
    fn send(&self, step: Option<EbsStep>) -> Result<serde_json::Value, StepError> {
        let name = self.volume.clone();
        let req = match step {
            Some(step) => ControlRequest::Ebs { name, step },
            None => ControlRequest::EbsFacts { name },
        };
        self.daemon.send(&req).map_err(|e| StepError {
            // The service refuses fence and attach while a container
            // mounts the volume: that is the cutover's wait signal.
            in_use: e.in_use(),
            message: e.to_string(),
        })
    }

    /// A string field of a step's reply.
    fn field(&self, step: EbsStep, key: &str) -> Result<String, StepError> {
        let v = self.send(Some(step))?;
        v[key].as_str().map(str::to_owned).ok_or_else(|| StepError {
            message: format!("the daemon's reply has no {key:?}: {v}"),
            in_use: false,
        })
    }
}

impl EbsSteps for DaemonSteps {
    fn facts(&self) -> Result<EbsFacts, StepError> {
        serde_json::from_value(self.send(None)?).map_err(|e| StepError {
            message: format!("the daemon's EBS facts are not what daffe expects: {e}"),
            in_use: false,
        })
    }
    fn fence(&self, zone: &str) -> Result<(), StepError> {
        let zone = zone.to_owned();
        self.send(Some(EbsStep::Fence { zone })).map(drop)
    }
    fn unfence(&self) -> Result<(), StepError> {
        self.send(Some(EbsStep::Unfence)).map(drop)
    }
    fn attach(&self) -> Result<PathBuf, StepError> {
        self.field(EbsStep::Attach, "device").map(PathBuf::from)
    }
    fn detach(&self) -> Result<(), StepError> {
        self.send(Some(EbsStep::Detach)).map(drop)
    }
    fn copy(&self, snapshot_id: &str, zone: &str) -> Result<String, StepError> {
        let step = EbsStep::Copy {
            snapshot_id: snapshot_id.to_owned(),
            zone: zone.to_owned(),
        };
        self.field(step, "volume_id")
    }
    fn discard_copies(&self) -> Result<Vec<String>, StepError> {
        let v = self.send(Some(EbsStep::Discard))?;
        serde_json::from_value(v["deleted"].clone()).map_err(|e| StepError {
            message: format!("the daemon's reply has no list \"deleted\": {e}"),
            in_use: false,
        })
    }
    fn moved(&self, zone: &str, volume_id: &str) -> Result<(), StepError> {
        let step = EbsStep::Moved {
            zone: zone.to_owned(),
            volume_id: volume_id.to_owned(),
        };
        self.send(Some(step)).map(drop)
    }
}

/// Pushes a device as a snapshot, incremental against `parent`.
pub(crate) trait Pusher {
    fn push(&mut self, device: &Path, parent: Option<&str>) -> Result<PushReport, PushError>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EbsMigrateError {
    #[error("{volume}: {step} failed: {source}")]
    Step {
        volume: String,
        step: &'static str,
        source: StepError,
    },
    #[error("{volume} is already in zone {zone}: give --to-zone another zone")]
    SameZone { volume: String, zone: String },
    #[error(
        "{volume}: snapshot push of round {round} failed{}{}: {source}",
        snapshot_id.as_ref().map(|s| format!(" (snapshot {s})")).unwrap_or_default(),
        aws_code.as_ref().map(|c| format!(" (AWS {c})")).unwrap_or_default()
    )]
    Push {
        volume: String,
        round: u32,
        snapshot_id: Option<String>,
        aws_code: Option<String>,
        // Boxed: PushError is large and this enum is every step's error.
        source: Box<PushError>,
    },
    #[error(
        "{volume} is still mounted after {secs} s: stop the containers using it and run migrate again"
    )]
    UnmountTimeout { volume: String, secs: u64 },
    #[error(
        "{source}; {}",
        match (discard_error, unfence_error) {
            (Some(e), _) => format!(
                "deleting the copies made in the new zone failed ({e}), so the volume stays \
                 fenced (two live copies must never exist): run migrate again, or delete \
                 the copies tagged daffe:migrated-from and then unfence"
            ),
            (None, None) => "its copies were deleted, the fence was lifted and the volume is \
                             usable here again".to_owned(),
            (None, Some(e)) => format!("lifting the fence failed too ({e}): run migrate again or unfence it"),
        }
    )]
    AfterFence {
        source: Box<EbsMigrateError>,
        discard_error: Option<String>,
        unfence_error: Option<String>,
    },
}

/// One snapshot push.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Round {
    pub(crate) round: u32,
    pub(crate) final_round: bool,
    pub(crate) snapshot_id: String,
    pub(crate) parent: Option<String>,
    /// Blocks sent (changed since the parent, or non-zero for a full push).
    pub(crate) blocks_changed: u64,
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

impl Round {
    /// `round 2 (pre-copy): 17 blocks, 8912896 bytes, 1.2 s -> snap-...`
    pub(crate) fn line(&self) -> String {
        format!(
            "round {} ({}): {} blocks, {} bytes, {:.1} s -> {}",
            self.round,
            if self.final_round {
                "final"
            } else {
                "pre-copy"
            },
            self.blocks_changed,
            self.bytes,
            self.secs,
            self.snapshot_id
        )
    }
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct EbsReport {
    pub(crate) volume: String,
    pub(crate) source_volume_id: String,
    pub(crate) from_zone: String,
    pub(crate) to_zone: String,
    pub(crate) new_volume_id: String,
    pub(crate) final_snapshot_id: String,
    pub(crate) rounds: Vec<Round>,
    pub(crate) bytes: u64,
    pub(crate) total_secs: f64,
    /// From the fence to the new volume's creation: the time the volume
    /// could be used nowhere.
    pub(crate) downtime_secs: f64,
    /// The migration's snapshots: deleted, kept, warnings.
    pub(crate) snapshots: Cleanup,
}

impl EbsReport {
    pub(crate) fn render(&self) -> String {
        let mut s = format!(
            "{} moved from {} ({}) to {} ({}) via snapshot {}\n",
            self.volume,
            self.from_zone,
            self.source_volume_id,
            self.to_zone,
            self.new_volume_id,
            self.final_snapshot_id
        );
        for r in &self.rounds {
            s += &format!("  {}\n", r.line());
        }
        s += &format!(
            "  {} bytes in {:.1} s, downtime {:.1} s\n",
            self.bytes, self.total_secs, self.downtime_secs
        );
        s += &format!("  {}\n", cleanup_line(&self.snapshots));
        for w in &self.snapshots.warnings {
            s += &format!("  warning: {w}\n");
        }
        s
    }
}

/// `snapshots: 3 deleted, 1 kept (snap-...)`
pub(crate) fn cleanup_line(c: &Cleanup) -> String {
    let mut s = format!("snapshots: {} deleted", c.deleted.len());
    if !c.kept.is_empty() {
        s += &format!(", {} kept ({})", c.kept.len(), c.kept.join(", "));
    }
    if !c.warnings.is_empty() {
        s += &format!(", {} warnings", c.warnings.len());
    }
    s
}

#[derive(Debug, Clone)]
pub(crate) struct EbsMigrateOptions {
    pub(crate) volume: String,
    /// Tags this migration's snapshots (`daffe:migration`): only they are
    /// deleted as this migration's.
    pub(crate) migration_id: String,
    /// Migration snapshots of the volume kept after a move (newest first).
    pub(crate) keep_snapshots: u32,
    pub(crate) to_zone: String,
    pub(crate) max_rounds: u32,
    pub(crate) small_round_blocks: u64,
    pub(crate) unmount_timeout: Duration,
    /// Pause between fence attempts while the volume is still mounted.
    pub(crate) fence_poll: Duration,
}

/// What the CLI shows as it goes.
#[derive(Debug)]
pub(crate) enum EbsEvent<'a> {
    Preflight(&'a EbsFacts),
    RoundStart {
        round: u32,
        final_round: bool,
    },
    RoundEnd(&'a Round),
    /// No pre-copy: the volume is not attached here (nothing mounts it).
    NoPreCopy,
    WaitingForUnmount,
    Fenced,
    Copied {
        volume_id: &'a str,
    },
    /// The migration's snapshots were dealt with (also after a failure).
    Cleaned(&'a Cleanup),
}

/// Runs the migration; see the module comment for the sequence.
pub(crate) fn migrate_ebs(
    steps: &dyn EbsSteps,
    pusher: &mut dyn Pusher,
    cleaner: &dyn SnapshotCleaner,
    opts: &EbsMigrateOptions,
    on: &mut dyn FnMut(EbsEvent<'_>),
) -> Result<EbsReport, EbsMigrateError> {
    let mut rounds = Vec::new();
    let mut stray = None;
    let result = run(steps, pusher, opts, on, &mut rounds, &mut stray);
    let mut made: Vec<String> = rounds.iter().map(|r| r.snapshot_id.clone()).collect();
    // A failed push's own snapshot (NoParentIndex names a parent: had).
    made.extend(stray.filter(|s| !made.contains(s)));
    let mut report = match result {
        Ok(r) => r,
        // A copy that could not be deleted may still be filling from the
        // snapshots, and the volume stays fenced for a rerun: keep them.
        Err(
            e @ EbsMigrateError::AfterFence {
                discard_error: Some(_),
                ..
            },
        ) => return Err(e),
        Err(e) => {
            if !made.is_empty() {
                let c = clean_up(cleaner, &opts.migration_id, &made, None, 0);
                on(EbsEvent::Cleaned(&c));
            }
            return Err(e);
        }
    };
    report.snapshots = clean_up(
        cleaner,
        &opts.migration_id,
        &made,
        Some(&report.final_snapshot_id),
        opts.keep_snapshots,
    );
    on(EbsEvent::Cleaned(&report.snapshots));
    Ok(report)
}

/// Steps 1 to 4; the rounds pushed (and the snapshot of a failed push) are
/// left in `rounds` and `stray` whatever the outcome.
fn run(
    steps: &dyn EbsSteps,
    pusher: &mut dyn Pusher,
    opts: &EbsMigrateOptions,
    on: &mut dyn FnMut(EbsEvent<'_>),
    rounds: &mut Vec<Round>,
    stray: &mut Option<String>,
) -> Result<EbsReport, EbsMigrateError> {
    let started = Instant::now();
    let vol = opts.volume.as_str();
    let step = |step: &'static str| {
        move |source: StepError| EbsMigrateError::Step {
            volume: vol.to_owned(),
            step,
            source,
        }
    };
    let facts = steps
        .facts()
        .map_err(step("reading the volume's EBS facts"))?;
    if facts.zone == opts.to_zone {
        return Err(EbsMigrateError::SameZone {
            volume: vol.to_owned(),
            zone: facts.zone,
        });
    }
    on(EbsEvent::Preflight(&facts));

    let mut push_round = |pusher: &mut dyn Pusher,
                          rounds: &mut Vec<Round>,
                          device: &Path,
                          final_round: bool,
                          on: &mut dyn FnMut(EbsEvent<'_>)|
     -> Result<(), EbsMigrateError> {
        let round = count(rounds) + 1;
        let parent = rounds.last().map(|r| r.snapshot_id.clone());
        on(EbsEvent::RoundStart { round, final_round });
        let r = pusher
            .push(device, parent.as_deref())
            .inspect_err(|source| {
                stray.clone_from(&source.snapshot_id().map(str::to_owned));
            })
            .map_err(|source| EbsMigrateError::Push {
                volume: vol.to_owned(),
                round,
                snapshot_id: source.snapshot_id().map(str::to_owned),
                aws_code: source.aws_code().map(str::to_owned),
                source: Box::new(source),
            })?;
        let r = Round {
            round,
            final_round,
            snapshot_id: r.snapshot_id,
            parent,
            blocks_changed: r.blocks_uploaded,
            bytes: r.bytes_uploaded,
            secs: r.duration_secs,
        };
        on(EbsEvent::RoundEnd(&r));
        rounds.push(r);
        Ok(())
    };

    // Pre-copy, only from a device attached for a running container.
    match &facts.device {
        Some(dev) => {
            while count(rounds) < opts.max_rounds.max(1) {
                push_round(pusher, rounds, dev, false, on)?;
                if converged(rounds, opts.small_round_blocks) {
                    break;
                }
            }
        }
        None => on(EbsEvent::NoPreCopy),
    }

    // Cutover: the fence succeeds only in the locked step that sees no
    // mount, so retrying it is how we wait for the unmount.
    let waited = Instant::now();
    let mut said = false;
    loop {
        match steps.fence(&opts.to_zone) {
            Ok(()) => break,
            Err(e) if e.in_use => {
                if waited.elapsed() >= opts.unmount_timeout {
                    return Err(EbsMigrateError::UnmountTimeout {
                        volume: vol.to_owned(),
                        secs: opts.unmount_timeout.as_secs(),
                    });
                }
                if !said {
                    on(EbsEvent::WaitingForUnmount);
                    said = true;
                }
                std::thread::sleep(opts.fence_poll);
            }
            Err(e) => return Err(step("fence")(e)),
        }
    }
    let fenced_at = Instant::now();
    on(EbsEvent::Fenced);

    let after_fence = (|| {
        let dev = steps.attach().map_err(step("attach"))?;
        let pushed = push_round(pusher, rounds, &dev, true, on);
        // Detach even after a failed push: the volume goes back to Mount.
        let detached = steps.detach().map_err(step("detach"));
        pushed?;
        detached?;
        let snap = rounds
            .last()
            .map(|r| r.snapshot_id.clone())
            .unwrap_or_default();
        let new_id = steps
            .copy(&snap, &opts.to_zone)
            .map_err(step("creating the volume from the final snapshot"))?;
        let downtime = fenced_at.elapsed();
        on(EbsEvent::Copied { volume_id: &new_id });
        steps
            .moved(&opts.to_zone, &new_id)
            .map_err(|e| EbsMigrateError::Step {
                volume: vol.to_owned(),
                step: "marking the volume moved",
                source: StepError {
                    message: format!(
                        "{} (volume {new_id} in {} was created)",
                        e.message, opts.to_zone
                    ),
                    in_use: e.in_use,
                },
            })?;
        Ok::<_, EbsMigrateError>((snap, new_id, downtime))
    })();
    let (final_snapshot_id, new_volume_id, downtime) = match after_fence {
        Ok(v) => v,
        Err(e) => {
            // The copy goes before the fence: a copy left while the source
            // is live again is a second live volume once a host of the new
            // zone adopts it (hardening finding 11).
            if let Err(d) = steps.discard_copies() {
                return Err(EbsMigrateError::AfterFence {
                    source: Box::new(e),
                    discard_error: Some(d.message),
                    unfence_error: None,
                });
            }
            return Err(EbsMigrateError::AfterFence {
                source: Box::new(e),
                discard_error: None,
                unfence_error: steps.unfence().err().map(|e| e.message),
            });
        }
    };
    Ok(EbsReport {
        volume: vol.to_owned(),
        source_volume_id: facts.volume_id,
        from_zone: facts.zone,
        to_zone: opts.to_zone.clone(),
        new_volume_id,
        final_snapshot_id,
        bytes: rounds.iter().map(|r| r.bytes).sum(),
        rounds: rounds.clone(),
        total_secs: started.elapsed().as_secs_f64(),
        downtime_secs: downtime.as_secs_f64(),
        snapshots: Cleanup::default(),
    })
}

/// How many rounds ran (saturating: there are at most `max_rounds`).
fn count(rounds: &[Round]) -> u32 {
    u32::try_from(rounds.len()).unwrap_or(u32::MAX)
}

/// Pre-copy has done what it can: the last round was small, or no smaller
/// than the one before (the writer dirties blocks as fast as we send them).
fn converged(rounds: &[Round], small: u64) -> bool {
    match rounds {
        [.., prev, last] => {
            last.blocks_changed <= small || last.blocks_changed >= prev.blocks_changed
        }
        [only] => only.blocks_changed <= small,
        [] => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ec2_memory::MemoryEc2;
    use crate::backend::ebs::AwsSide;
    use crate::migrate::ebs_snapshots::{CLUSTER_TAG, Ec2Cleaner, MIGRATION_TAG, SOURCE_TAG};
    use mover::aws::ApiError;
    use mover::clock::SystemClock;
    use mover::retry::{ErrorKind, Retrier, RetryPolicy};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::sync::Arc;

    /// This migration's id in the tests.
    const MIGRATION: &str = "vol-src-1";

    /// The daemon: records the steps called; the fence answers "in use"
    /// `busy_fences` times first.
    #[derive(Default)]
    struct FakeSteps {
        device: Option<PathBuf>,
        busy_fences: RefCell<u32>,
        fail_copy: bool,
        fail_moved: bool,
        fail_discard: bool,
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
        fn discard_copies(&self) -> Result<Vec<String>, StepError> {
            self.log("discard");
            if self.fail_discard {
                return Err(StepError {
                    message: "VolumeInUse".into(),
                    in_use: false,
                });
            }
            Ok(vec!["vol-new".into()])
        }
        fn moved(&self, zone: &str, volume_id: &str) -> Result<(), StepError> {
            self.log(format!("moved:{zone}:{volume_id}"));
            if self.fail_moved {
                return Err(StepError {
                    message: "RequestLimitExceeded".into(),
                    in_use: false,
                });
            }
            Ok(())
        }
    }

    /// Pushes that upload the given block counts in turn, each a snapshot
    /// tagged as the CLI tags them in the EC2 double; push `fail_at` (1-based)
    /// fails with its snapshot left `pending`.
    struct FakePusher {
        blocks: VecDeque<u64>,
        pushes: Vec<(PathBuf, Option<String>)>,
        ec2: Arc<MemoryEc2>,
        fail_at: Option<usize>,
    }

    impl FakePusher {
        fn new(blocks: &[u64]) -> Self {
            Self::with(blocks, Arc::new(MemoryEc2::new()))
        }
        fn with(blocks: &[u64], ec2: Arc<MemoryEc2>) -> Self {
            Self {
                blocks: blocks.iter().copied().collect(),
                pushes: Vec::new(),
                ec2,
                fail_at: None,
            }
        }
    }

    fn ours() -> [(&'static str, &'static str); 3] {
        [
            (MIGRATION_TAG, MIGRATION),
            (SOURCE_TAG, "db@gold"),
            (CLUSTER_TAG, "default"),
        ]
    }

    impl Pusher for FakePusher {
        fn push(&mut self, device: &Path, parent: Option<&str>) -> Result<PushReport, PushError> {
            self.pushes
                .push((device.to_owned(), parent.map(str::to_owned)));
            let n = self.pushes.len();
            if self.fail_at == Some(n) {
                self.ec2
                    .add_tagged_snapshot(&format!("snap-{n}"), "pending", &ours());
                return Err(PushError::Put {
                    snapshot_id: format!("snap-{n}"),
                    block: 7,
                    attempts: 10,
                    source: ApiError::new(
                        "PutSnapshotBlock",
                        ErrorKind::Throttled,
                        "ThrottlingException",
                        "slow down",
                    ),
                });
            }
            self.ec2
                .add_tagged_snapshot(&format!("snap-{n}"), "completed", &ours());
            let blocks = self.blocks.pop_front().unwrap_or(0);
            // PushReport is #[non_exhaustive]: filled in from its Default.
            let mut r = PushReport::default();
            r.snapshot_id = format!("snap-{n}");
            r.parent = parent.map(str::to_owned);
            r.volume_gib = 1;
            r.source_bytes = 1 << 30;
            r.blocks_read = blocks;
            r.blocks_uploaded = blocks;
            r.blocks_skipped = 2048 - blocks;
            r.bytes_uploaded = blocks * 512 * 1024;
            r.duration_secs = 0.1;
            Ok(r)
        }
    }

    fn opts() -> EbsMigrateOptions {
        EbsMigrateOptions {
            volume: "db@gold".into(),
            migration_id: MIGRATION.into(),
            keep_snapshots: 0,
            to_zone: "us-east-1c".into(),
            max_rounds: 5,
            small_round_blocks: SMALL_ROUND_BLOCKS,
            unmount_timeout: Duration::from_secs(5),
            fence_poll: Duration::from_millis(1),
        }
    }

    /// A policy that does not wait: the double's faults are permanent.
    fn retrier() -> Retrier<'static> {
        Retrier::new(RetryPolicy::default(), &SystemClock)
    }

    /// `migrate_ebs` with a cleaner over the pusher's EC2 double.
    fn go(
        steps: &FakeSteps,
        pusher: &mut FakePusher,
        o: &EbsMigrateOptions,
        on: &mut dyn FnMut(EbsEvent<'_>),
    ) -> Result<EbsReport, EbsMigrateError> {
        let ec2 = pusher.ec2.clone();
        let retrier = retrier();
        let cleaner = Ec2Cleaner {
            ec2: ec2.as_ref(),
            retrier: &retrier,
            source: "db@gold".into(),
            cluster: "default".into(),
        };
        migrate_ebs(steps, pusher, &cleaner, o, on)
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
        let report = go(&steps, &mut pusher, &opts(), &mut |e| {
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
        let r = go(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap();
        assert_eq!(r.rounds.len(), 4, "3 pre-copy (the third is small) + final");

        let mut pusher = FakePusher::new(&[1000, 900, 800, 700, 600, 500]);
        let o = EbsMigrateOptions {
            max_rounds: 2,
            ..opts()
        };
        let r = go(&steps, &mut pusher, &o, &mut |_| {}).unwrap();
        assert_eq!(r.rounds.len(), 3, "2 pre-copy + final");
    }

    #[test]
    fn an_unmounted_volume_gets_one_full_push_after_the_fence() {
        let steps = FakeSteps::default();
        let mut pusher = FakePusher::new(&[100]);
        let r = go(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap();
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
        let e = go(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                e,
                EbsMigrateError::AfterFence {
                    discard_error: None,
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

    /// Hardening finding 11: `moved` failing after the copy was made lifted
    /// the fence and left the copy in the new zone, where a host adopted it:
    /// two live volumes. Now the copies go first; if they cannot, the fence
    /// stays.
    #[test]
    fn finding_11_a_failed_move_deletes_its_copy_before_unfencing() {
        let steps = FakeSteps {
            fail_moved: true,
            ..Default::default()
        };
        let e = go(&steps, &mut FakePusher::new(&[100]), &opts(), &mut |_| {}).unwrap_err();
        let calls = steps.calls();
        assert_eq!(
            calls[calls.len() - 3..],
            ["moved:us-east-1c:vol-new", "discard", "unfence"],
            "{calls:?}"
        );
        assert!(e.to_string().contains("copies were deleted"), "{e}");

        let steps = FakeSteps {
            fail_moved: true,
            fail_discard: true,
            ..Default::default()
        };
        let e = go(&steps, &mut FakePusher::new(&[100]), &opts(), &mut |_| {}).unwrap_err();
        assert!(
            !steps.calls().iter().any(|c| c == "unfence"),
            "unfenced with a copy left: {:?}",
            steps.calls()
        );
        assert!(e.to_string().contains("stays fenced"), "{e}");
    }

    #[test]
    fn same_zone_and_unmount_timeout_are_refused_without_a_fence() {
        let steps = FakeSteps::default();
        let o = EbsMigrateOptions {
            to_zone: "us-east-1a".into(),
            ..opts()
        };
        let e = go(&steps, &mut FakePusher::new(&[]), &o, &mut |_| {}).unwrap_err();
        assert!(matches!(e, EbsMigrateError::SameZone { .. }), "{e}");

        let steps = FakeSteps {
            busy_fences: RefCell::new(u32::MAX),
            ..Default::default()
        };
        let o = EbsMigrateOptions {
            unmount_timeout: Duration::from_millis(20),
            ..opts()
        };
        let e = go(&steps, &mut FakePusher::new(&[]), &o, &mut |_| {}).unwrap_err();
        assert!(matches!(e, EbsMigrateError::UnmountTimeout { .. }), "{e}");
        assert!(
            !steps
                .calls()
                .iter()
                .any(|c| c == "unfence" || c == "attach")
        );
    }

    /// Events of kind Cleaned, as (deleted, kept, warnings) counts.
    fn cleaned(events: &[Cleanup]) -> Vec<(usize, usize, usize)> {
        events
            .iter()
            .map(|c| (c.deleted.len(), c.kept.len(), c.warnings.len()))
            .collect()
    }

    /// Finding 11, last point: a move leaves none of its snapshots behind,
    /// and touches no snapshot it did not make, even one tagged with the
    /// volume's name.
    #[test]
    fn finding_11_a_move_deletes_its_snapshots_and_nothing_else() {
        let ec2 = Arc::new(MemoryEc2::new());
        // An operator's snapshot of the volume (no migration tag), and one
        // of another cluster's same-named volume.
        ec2.add_tagged_snapshot("snap-operator", "completed", &[(SOURCE_TAG, "db@gold")]);
        ec2.add_tagged_snapshot(
            "snap-other-cluster",
            "completed",
            &[
                (MIGRATION_TAG, "vol-x-1"),
                (SOURCE_TAG, "db@gold"),
                (CLUSTER_TAG, "blue"),
            ],
        );
        let steps = FakeSteps {
            device: Some(PathBuf::from("/dev/live")),
            ..Default::default()
        };
        let mut pusher = FakePusher::with(&[1000, 10, 5], ec2.clone());
        let mut seen = Vec::new();
        let r = go(&steps, &mut pusher, &opts(), &mut |e| {
            if let EbsEvent::Cleaned(c) = e {
                seen.push(c.clone());
            }
        })
        .unwrap();
        assert_eq!(r.snapshots.deleted, ["snap-1", "snap-2", "snap-3"]);
        assert!(r.snapshots.kept.is_empty() && r.snapshots.warnings.is_empty());
        assert_eq!(ec2.snapshot_ids(), ["snap-operator", "snap-other-cluster"]);
        assert_eq!(seen, std::slice::from_ref(&r.snapshots));
        assert!(
            r.render().contains("snapshots: 3 deleted"),
            "{}",
            r.render()
        );
        // The cleanup comes after the copy is made and marked moved.
        assert_eq!(steps.calls().last().unwrap(), "moved:us-east-1c:vol-new");
    }

    #[test]
    fn keep_snapshots_keeps_the_newest_of_the_volumes_migrations() {
        let ec2 = Arc::new(MemoryEc2::new());
        let earlier = |m: &'static str| {
            [
                (MIGRATION_TAG, m),
                (SOURCE_TAG, "db@gold"),
                (CLUSTER_TAG, "default"),
            ]
        };
        ec2.add_tagged_snapshot("snap-old", "completed", &earlier("vol-a-1"));
        ec2.add_tagged_snapshot("snap-older-move", "completed", &earlier("vol-b-2"));
        ec2.add_tagged_snapshot("snap-other", "completed", &[(SOURCE_TAG, "web@gold")]);
        let o = EbsMigrateOptions {
            keep_snapshots: 2,
            ..opts()
        };
        let steps = FakeSteps {
            device: Some(PathBuf::from("/dev/live")),
            ..Default::default()
        };
        let mut pusher = FakePusher::with(&[1000, 10, 5], ec2.clone());
        let r = go(&steps, &mut pusher, &o, &mut |_| {}).unwrap();
        // Kept: this move's final snapshot, then the newest earlier one.
        assert_eq!(r.snapshots.kept, ["snap-3", "snap-older-move"]);
        assert_eq!(r.snapshots.deleted, ["snap-1", "snap-2", "snap-old"]);
        assert_eq!(
            ec2.snapshot_ids(),
            ["snap-3", "snap-older-move", "snap-other"]
        );

        // keep 1: only the final one of the newest move stays.
        let ec2 = Arc::new(MemoryEc2::new());
        ec2.add_tagged_snapshot("snap-old", "completed", &earlier("vol-a-1"));
        let o = EbsMigrateOptions {
            keep_snapshots: 1,
            ..opts()
        };
        let mut pusher = FakePusher::with(&[100], ec2.clone());
        let r = go(&FakeSteps::default(), &mut pusher, &o, &mut |_| {}).unwrap();
        assert_eq!(r.snapshots.kept, ["snap-1"]);
        assert_eq!(ec2.snapshot_ids(), ["snap-1"]);
    }

    #[test]
    fn a_failed_delete_is_a_warning_and_the_move_stands() {
        let ec2 = Arc::new(MemoryEc2::new());
        ec2.fail_next(
            "DeleteSnapshot",
            ApiError::new(
                "DeleteSnapshot",
                ErrorKind::Permanent,
                "UnauthorizedOperation",
                "not allowed",
            ),
        );
        let steps = FakeSteps {
            device: Some(PathBuf::from("/dev/live")),
            ..Default::default()
        };
        let mut pusher = FakePusher::with(&[1000, 10, 5], ec2.clone());
        let r = go(&steps, &mut pusher, &opts(), &mut |_| {}).unwrap();
        assert_eq!(r.new_volume_id, "vol-new");
        assert_eq!(r.snapshots.deleted, ["snap-2", "snap-3"]);
        assert_eq!(r.snapshots.warnings.len(), 1, "{:?}", r.snapshots);
        assert!(
            r.snapshots.warnings[0].contains("snap-1")
                && r.snapshots.warnings[0].contains("UnauthorizedOperation"),
            "{:?}",
            r.snapshots
        );
        assert_eq!(ec2.snapshot_ids(), ["snap-1"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["snapshots"]["warnings"].as_array().unwrap().len(), 1);
        assert!(
            r.render().contains("warning: deleting snap-1"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_failed_move_deletes_its_snapshots_once_its_copy_is_gone() {
        // The push of round 2 fails: its pending snapshot cannot go yet
        // (a warning), round 1's does; the error is the push's.
        let ec2 = Arc::new(MemoryEc2::new());
        let steps = FakeSteps {
            device: Some(PathBuf::from("/dev/live")),
            ..Default::default()
        };
        let mut pusher = FakePusher::with(&[1000, 500], ec2.clone());
        pusher.fail_at = Some(2);
        let mut seen = Vec::new();
        let e = go(&steps, &mut pusher, &opts(), &mut |e| {
            if let EbsEvent::Cleaned(c) = e {
                seen.push(c.clone());
            }
        })
        .unwrap_err();
        assert!(matches!(e, EbsMigrateError::Push { round: 2, .. }), "{e}");
        assert_eq!(cleaned(&seen), [(1, 0, 1)], "{seen:?}");
        assert!(seen[0].warnings[0].contains("IncorrectState"), "{seen:?}");
        assert_eq!(ec2.snapshot_ids(), ["snap-2"]);

        // `moved` fails: the copy is deleted, then the snapshots, then the
        // fence is lifted.
        let ec2 = Arc::new(MemoryEc2::new());
        let steps = FakeSteps {
            fail_moved: true,
            ..Default::default()
        };
        let mut pusher = FakePusher::with(&[100], ec2.clone());
        let mut seen = Vec::new();
        go(&steps, &mut pusher, &opts(), &mut |e| {
            if let EbsEvent::Cleaned(c) = e {
                seen.push(c.clone());
            }
        })
        .unwrap_err();
        assert_eq!(cleaned(&seen), [(1, 0, 0)]);
        assert!(ec2.snapshot_ids().is_empty());

        // The copy could not be deleted: the volume stays fenced and the
        // snapshots stay with it (the copy may still be filling from them).
        let ec2 = Arc::new(MemoryEc2::new());
        let steps = FakeSteps {
            fail_moved: true,
            fail_discard: true,
            ..Default::default()
        };
        let mut pusher = FakePusher::with(&[100], ec2.clone());
        let mut seen = Vec::new();
        go(&steps, &mut pusher, &opts(), &mut |e| {
            if let EbsEvent::Cleaned(c) = e {
                seen.push(c.clone());
            }
        })
        .unwrap_err();
        assert!(seen.is_empty());
        assert_eq!(ec2.snapshot_ids(), ["snap-1"]);
    }

    #[test]
    fn a_snapshot_of_another_migration_is_never_deleted_as_this_ones() {
        // Same volume and cluster, another migration's id: `delete_ours`
        // with this migration's id leaves it.
        let ec2 = MemoryEc2::new();
        ec2.add_tagged_snapshot(
            "snap-9",
            "completed",
            &[
                (MIGRATION_TAG, "vol-src-0"),
                (SOURCE_TAG, "db@gold"),
                (CLUSTER_TAG, "default"),
            ],
        );
        let retrier = retrier();
        let cleaner = Ec2Cleaner {
            ec2: &ec2,
            retrier: &retrier,
            source: "db@gold".into(),
            cluster: "default".into(),
        };
        let c = clean_up(&cleaner, MIGRATION, &["snap-9".into()], None, 0);
        assert!(c.deleted.is_empty(), "{c:?}");
        assert!(c.warnings[0].contains("not this one"), "{c:?}");
        // Already gone: nothing to report.
        let c = clean_up(&cleaner, MIGRATION, &["snap-none".into()], None, 0);
        assert_eq!(c, Cleanup::default());
        assert_eq!(ec2.snapshot_ids(), ["snap-9"]);
    }
}
