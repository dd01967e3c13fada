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
//! 4. copy: the new volume in ZONE from the final snapshot, then `moved`.
//!    Any failure after the fence lifts it, so the volume is usable again.
//!
//! The daemon and the snapshot pushes are traits so the sequencing is
//! tested with fakes (`ebs_tests.rs`).

use crate::service::ebs::EbsFacts;
use mover::snapshot::{PushError, PushReport};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A round that uploads at most this many blocks (512 KiB each) is small
/// enough that the final round after the fence is short: stop pre-copying.
pub const SMALL_ROUND_BLOCKS: u64 = 64;

/// Pre-copy rounds at most, by default.
pub const DEFAULT_MAX_ROUNDS: u32 = 5;

/// A failed daemon step, as the daemon client reports it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    /// The daemon refused because the volume is mounted (fence, attach).
    pub in_use: bool,
}

/// The daemon's EBS migration steps for one volume.
pub trait EbsSteps {
    fn facts(&self) -> Result<EbsFacts, StepError>;
    fn fence(&self, zone: &str) -> Result<(), StepError>;
    fn unfence(&self) -> Result<(), StepError>;
    fn attach(&self) -> Result<PathBuf, StepError>;
    fn detach(&self) -> Result<(), StepError>;
    /// Returns the new volume's id.
    fn copy(&self, snapshot_id: &str, zone: &str) -> Result<String, StepError>;
    fn moved(&self, zone: &str, volume_id: &str) -> Result<(), StepError>;
}

/// Pushes a device as a snapshot, incremental against `parent`.
pub trait Pusher {
    fn push(&mut self, device: &Path, parent: Option<&str>) -> Result<PushReport, PushError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EbsMigrateError {
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
        match unfence_error {
            None => "the fence was lifted and the volume is usable here again".to_owned(),
            Some(e) => format!("lifting the fence failed too ({e}): run migrate again or unfence it"),
        }
    )]
    AfterFence {
        source: Box<EbsMigrateError>,
        unfence_error: Option<String>,
    },
}

/// One snapshot push.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    pub round: u32,
    pub final_round: bool,
    pub snapshot_id: String,
    pub parent: Option<String>,
    /// Blocks sent (changed since the parent, or non-zero for a full push).
    pub blocks_changed: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EbsReport {
    pub volume: String,
    pub source_volume_id: String,
    pub from_zone: String,
    pub to_zone: String,
    pub new_volume_id: String,
    pub final_snapshot_id: String,
    pub rounds: Vec<Round>,
    pub bytes: u64,
    pub total_secs: f64,
    /// From the fence to the new volume's creation: the time the volume
    /// could be used nowhere.
    pub downtime_secs: f64,
}

impl EbsReport {
    pub fn render(&self) -> String {
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
            s += &format!(
                "  round {} ({}): {} blocks, {} bytes, {:.1} s, {}\n",
                r.round,
                if r.final_round { "final" } else { "pre-copy" },
                r.blocks_changed,
                r.bytes,
                r.secs,
                r.snapshot_id
            );
        }
        s += &format!(
            "  {} bytes in {:.1} s, downtime {:.1} s\n",
            self.bytes, self.total_secs, self.downtime_secs
        );
        s
    }
}

#[derive(Debug, Clone)]
pub struct EbsMigrateOptions {
    pub volume: String,
    pub to_zone: String,
    pub max_rounds: u32,
    pub small_round_blocks: u64,
    pub unmount_timeout: Duration,
    /// Pause between fence attempts while the volume is still mounted.
    pub fence_poll: Duration,
}

/// What the CLI shows as it goes.
#[derive(Debug)]
pub enum EbsEvent<'a> {
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
}

/// Runs the migration; see the module comment for the sequence.
pub fn migrate_ebs(
    steps: &dyn EbsSteps,
    pusher: &mut dyn Pusher,
    opts: &EbsMigrateOptions,
    on: &mut dyn FnMut(EbsEvent<'_>),
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

    let mut rounds: Vec<Round> = Vec::new();
    let push_round = |pusher: &mut dyn Pusher,
                      rounds: &mut Vec<Round>,
                      device: &Path,
                      final_round: bool,
                      on: &mut dyn FnMut(EbsEvent<'_>)|
     -> Result<(), EbsMigrateError> {
        let round = rounds.len() as u32 + 1;
        let parent = rounds.last().map(|r| r.snapshot_id.clone());
        on(EbsEvent::RoundStart { round, final_round });
        let r = pusher
            .push(device, parent.as_deref())
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
            while (rounds.len() as u32) < opts.max_rounds.max(1) {
                push_round(pusher, &mut rounds, dev, false, on)?;
                if converged(&rounds, opts.small_round_blocks) {
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
        let pushed = push_round(pusher, &mut rounds, &dev, true, on);
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
                        "{} (volume {new_id} in {} was created and is left in place)",
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
            return Err(EbsMigrateError::AfterFence {
                source: Box::new(e),
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
        rounds,
        total_secs: started.elapsed().as_secs_f64(),
        downtime_secs: downtime.as_secs_f64(),
    })
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
#[path = "ebs_tests.rs"]
mod tests;
