//! The source side of a migration, as a state machine over two seams: the
//! local daemon ([`SourceHost`]) and the destination's agent ([`DestHost`]).
//!
//! 1. Preflight (the thesis' phase I): the destination answers (so it is
//!    reachable and authenticated), has the profile and the room.
//! 2. Pre-copy rounds while the volume stays mounted and in use, until
//!    [`plan::decide`] says cut over.
//! 3. Cutover: wait until nothing mounts the volume (the operator stops the
//!    container; see `mod.rs`), fencing it in the same locked step; final
//!    round; the destination takes ownership; the source is marked moved.
//! 4. Report.
//!
//! Failure rules: before ownership passes, any failure unfences the source
//! (the application can start again here). Once the commit was sent and its
//! answer lost, the source stays fenced: rerunning `daffe migrate` finishes
//! the handover (every step is idempotent), never two owners.

use super::daemon::{Daemon, DaemonError};
use super::plan::{self, Decision, RoundObs, Why};
use super::report::{Report, RoundReport};
use super::wire::{PeerReply, PeerRequest};
use crate::service::migrate::{ReceiveCheck, TransferMode, TransferPaths};
use mover::Source;
use mover::net::conn::ConnError;
use mover::net::rounds::{RoundPushError, RoundPushReport, RoundPusher};
use mover::net::serve::ServeEvent;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("local daemon: {0}")]
    Daemon(#[from] DaemonError),
    #[error("destination: {0}")]
    Peer(#[from] ConnError),
    #[error("destination: {0}")]
    Push(#[from] RoundPushError),
    #[error("destination sent an unexpected reply: {0}")]
    Reply(String),
    #[error("volume {volume} already moved to {to}")]
    AlreadyMoved { volume: String, to: String },
    #[error("volume {volume} is {state}{}; it cannot be moved to {to} now",
        .peer.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Busy {
        volume: String,
        state: String,
        peer: Option<String>,
        to: String,
    },
    #[error(
        "volume {volume} was still mounted after {secs} s; stop the containers using it \
         (docker stop) and run daffe migrate again"
    )]
    UnmountTimeout { volume: String, secs: u64 },
    #[error("measuring {path}: {source}")]
    Used {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the handover of {volume} to {to} did not complete ({source}); the volume stays fenced \
         here so it never has two owners: run daffe migrate again to finish"
    )]
    Handover {
        volume: String,
        to: String,
        source: Box<MigrateError>,
    },
}

/// The local daemon, as the orchestrator sees it.
pub trait SourceHost {
    fn transfer_paths(&self, volume: &str) -> Result<TransferPaths, DaemonError>;
    fn begin_move(&self, volume: &str, to: &str) -> Result<(), DaemonError>;
    /// Fences if unmounted; an error with `in_use()` otherwise.
    fn fence(&self, volume: &str, to: &str) -> Result<(), DaemonError>;
    fn finish_move(&self, volume: &str, to: &str) -> Result<(), DaemonError>;
    fn abort_move(&self, volume: &str) -> Result<(), DaemonError>;
}

impl SourceHost for Daemon {
    fn transfer_paths(&self, volume: &str) -> Result<TransferPaths, DaemonError> {
        Daemon::transfer_paths(self, volume)
    }
    fn begin_move(&self, volume: &str, to: &str) -> Result<(), DaemonError> {
        Daemon::begin_move(self, volume, to)
    }
    fn fence(&self, volume: &str, to: &str) -> Result<(), DaemonError> {
        Daemon::fence(self, volume, to)
    }
    fn finish_move(&self, volume: &str, to: &str) -> Result<(), DaemonError> {
        Daemon::finish_move(self, volume, to)
    }
    fn abort_move(&self, volume: &str) -> Result<(), DaemonError> {
        Daemon::abort_move(self, volume)
    }
}

/// The destination's agent, as the orchestrator sees it.
pub trait DestHost {
    fn request(&mut self, req: &PeerRequest) -> Result<PeerReply, MigrateError>;
    /// Sets what rounds send (known after the local lookup).
    fn set_source(&mut self, target: &str, source: Source, cache_dir: PathBuf);
    fn round(
        &mut self,
        round: u32,
        final_round: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RoundPushReport, RoundPushError>;
    fn compression(&self) -> bool;
}

/// The real destination: a [`RoundPusher`] to an agent.
pub struct RemoteAgent {
    pub pusher: RoundPusher,
}

impl DestHost for RemoteAgent {
    fn request(&mut self, req: &PeerRequest) -> Result<PeerReply, MigrateError> {
        let body = serde_json::to_vec(req).map_err(|e| MigrateError::Reply(e.to_string()))?;
        let mut peer = self.pusher.connect()?;
        let reply = peer.control(&body)?;
        peer.bye();
        serde_json::from_slice(&reply).map_err(|e| MigrateError::Reply(e.to_string()))
    }
    fn set_source(&mut self, target: &str, source: Source, cache_dir: PathBuf) {
        self.pusher.target = target.to_owned();
        self.pusher.source = source;
        self.pusher.cache_dir = cache_dir;
    }
    fn round(
        &mut self,
        round: u32,
        final_round: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RoundPushReport, RoundPushError> {
        self.pusher.push(round, final_round, &mut |ev| {
            if let ServeEvent::ChunkSent { bytes } = ev {
                progress(bytes)
            }
        })
    }
    fn compression(&self) -> bool {
        self.pusher.ep.hello.zstd
    }
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub volume: String,
    /// The destination as given (`HOST[:PORT]`): also what a fenced Mount names.
    pub to: String,
    pub max_downtime: Duration,
    pub max_rounds: u32,
    pub unmount_timeout: Duration,
    /// How often the unmount is looked for: bounds the downtime measurement error.
    pub fence_poll: Duration,
}

/// Progress, for a bar or a log.
#[derive(Debug, Clone)]
pub enum Event {
    Preflight(ReceiveCheck),
    RoundStart { round: u32, final_round: bool },
    Bytes(u64),
    RoundEnd(RoundReport),
    WaitingForUnmount,
    Unmounted,
    Committed,
}

/// Bytes the data occupies on disk (allocated blocks: holes do not count).
pub fn used_bytes(paths: &TransferPaths) -> Result<u64, MigrateError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Used { path, source }
    };
    match paths.mode {
        TransferMode::Image => Ok(std::fs::metadata(&paths.data)
            .map_err(err(&paths.data))?
            .blocks()
            * 512),
        TransferMode::Tree => {
            let mut total = 0u64;
            let mut stack = vec![paths.data.clone()];
            while let Some(p) = stack.pop() {
                let md = std::fs::symlink_metadata(&p).map_err(err(&p))?;
                total += md.blocks() * 512;
                if md.is_dir() {
                    for e in std::fs::read_dir(&p).map_err(err(&p))? {
                        stack.push(e.map_err(err(&p))?.path());
                    }
                }
            }
            Ok(total)
        }
    }
}

fn round_report(round: u32, final_round: bool, r: &RoundPushReport) -> RoundReport {
    RoundReport {
        round,
        final_round,
        bytes: r.summary.bytes_fetched,
        wire_bytes: r.wire_sent + r.wire_received,
        chunks_new: r.summary.chunks_new,
        chunks_total: r.summary.chunks_total,
        scan_ms: r.scan_time.as_millis() as u64,
        transfer_ms: r.transfer_time.as_millis() as u64,
        attempts: r.attempts,
        stale: false,
        estimate_ms: None,
    }
}

/// Runs a migration. `event` sees progress.
pub fn migrate(
    host: &dyn SourceHost,
    dest: &mut dyn DestHost,
    opts: &MigrateOptions,
    event: &mut dyn FnMut(Event),
) -> Result<Report, MigrateError> {
    let t0 = Instant::now();
    let vol = &opts.volume;
    let to = &opts.to;
    let paths = host.transfer_paths(vol)?;
    let resume_cutover = match (paths.state.as_str(), paths.peer.as_deref()) {
        ("ready", _) => false,
        ("moving", Some(p)) if p == to => false,
        ("fenced", Some(p)) if p == to => true,
        ("moved", Some(p)) => {
            return Err(MigrateError::AlreadyMoved {
                volume: vol.clone(),
                to: p.to_owned(),
            });
        }
        (state, peer) => {
            return Err(MigrateError::Busy {
                volume: vol.clone(),
                state: state.to_owned(),
                peer: peer.map(str::to_owned),
                to: to.clone(),
            });
        }
    };
    let used = used_bytes(&paths)?;
    let mut report = Report {
        volume: paths.docker_name.clone(),
        to: to.clone(),
        mode: match paths.mode {
            TransferMode::Tree => "tree".into(),
            TransferMode::Image => "image".into(),
        },
        used_bytes: used,
        compression: dest.compression(),
        max_downtime_ms: opts.max_downtime.as_millis() as u64,
        ..Default::default()
    };

    // 1. Preflight, then the destination makes (or finds) the volume.
    match dest.request(&PeerRequest::Preflight {
        volume: paths.docker_name.clone(),
        options: paths.options.clone(),
        need_bytes: used,
    })? {
        PeerReply::Preflight(check) => event(Event::Preflight(check)),
        other => return Err(MigrateError::Reply(format!("{other:?}"))),
    }
    dest.request(&PeerRequest::Prepare {
        volume: paths.docker_name.clone(),
        options: paths.options.clone(),
    })?;
    let source = match paths.mode {
        TransferMode::Tree => Source::Tree(paths.data.clone()),
        TransferMode::Image => Source::Image(paths.data.clone()),
    };
    dest.set_source(&paths.docker_name, source, paths.cache_dir.clone());

    // 2. Pre-copy.
    let mut round = 0u32;
    if !resume_cutover {
        host.begin_move(vol, to)?;
        let mut obs: Vec<RoundObs> = Vec::new();
        loop {
            round += 1;
            event(Event::RoundStart {
                round,
                final_round: false,
            });
            let mut rr = match dest.round(round, false, &mut |b| event(Event::Bytes(b))) {
                Ok(r) => {
                    obs.push(RoundObs {
                        dirty_bytes: r.summary.bytes_fetched,
                        wire_bytes: r.wire_sent + r.wire_received,
                        transfer: r.transfer_time,
                        scan: r.scan_time,
                        stale: false,
                    });
                    round_report(round, false, &r)
                }
                Err(e) if e.is_stale() => {
                    obs.push(RoundObs {
                        dirty_bytes: obs.last().map_or(u64::MAX, |o| o.dirty_bytes),
                        wire_bytes: 0,
                        transfer: Duration::ZERO,
                        scan: Duration::ZERO,
                        stale: true,
                    });
                    RoundReport {
                        round,
                        stale: true,
                        ..Default::default()
                    }
                }
                Err(e) => {
                    let _ = host.abort_move(vol);
                    return Err(e.into());
                }
            };
            let decision = plan::decide(&obs, opts.max_downtime, opts.max_rounds);
            let (estimate, why) = match decision {
                Decision::Continue { estimate } => (estimate, None),
                Decision::Cutover { estimate, why } => (estimate, Some(why)),
            };
            rr.estimate_ms = Some(estimate.as_millis().min(u128::from(u64::MAX)) as u64);
            event(Event::RoundEnd(rr.clone()));
            report.rounds.push(rr);
            if let Some(why) = why {
                report.cutover_reason = match why {
                    Why::Fits => "fits",
                    Why::NotShrinking => "not-shrinking",
                    Why::MaxRounds => "max-rounds",
                }
                .into();
                break;
            }
        }
    } else {
        report.cutover_reason = "resumed".into();
    }

    // 3. Cutover: wait for the unmount, fencing in the same step.
    event(Event::WaitingForUnmount);
    let tw = Instant::now();
    loop {
        match host.fence(vol, to) {
            Ok(()) => break,
            Err(e) if e.in_use() => {
                if tw.elapsed() >= opts.unmount_timeout {
                    let _ = host.abort_move(vol);
                    return Err(MigrateError::UnmountTimeout {
                        volume: vol.clone(),
                        secs: opts.unmount_timeout.as_secs(),
                    });
                }
                std::thread::sleep(opts.fence_poll);
            }
            Err(e) => {
                let _ = host.abort_move(vol);
                return Err(e.into());
            }
        }
    }
    let t_unmount = Instant::now();
    report.unmount_wait_ms = (t_unmount - tw).as_millis() as u64;
    event(Event::Unmounted);

    // Final round: the source is quiesced, so it cannot be stale; a failure
    // here gives the volume back to the source host.
    round += 1;
    event(Event::RoundStart {
        round,
        final_round: true,
    });
    match dest.round(round, true, &mut |b| event(Event::Bytes(b))) {
        Ok(r) => {
            let rr = round_report(round, true, &r);
            event(Event::RoundEnd(rr.clone()));
            report.rounds.push(rr);
        }
        Err(e) => {
            let _ = host.abort_move(vol);
            return Err(e.into());
        }
    }

    // Handover. From here on the source stays fenced whatever happens.
    let handover = |e: MigrateError| MigrateError::Handover {
        volume: vol.clone(),
        to: to.clone(),
        source: Box::new(e),
    };
    match dest.request(&PeerRequest::Commit {
        volume: paths.docker_name.clone(),
    }) {
        Ok(PeerReply::Committed { .. }) => {}
        Ok(other) => return Err(handover(MigrateError::Reply(format!("{other:?}")))),
        Err(e) => return Err(handover(e)),
    }
    let t_ready = Instant::now();
    event(Event::Committed);
    host.finish_move(vol, to)
        .map_err(|e| handover(MigrateError::Daemon(e)))?;

    report.downtime_ms = (t_ready - t_unmount).as_millis() as u64;
    report.bytes_moved = report.rounds.iter().map(|r| r.bytes).sum();
    report.wire_bytes = report.rounds.iter().map(|r| r.wire_bytes).sum();
    report.total_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
#[path = "orchestrate_tests.rs"]
mod tests;
