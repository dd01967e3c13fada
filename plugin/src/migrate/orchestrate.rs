//! The source side of a migration, as a state machine over two seams: the
//! local daemon ([`SourceHost`]) and the destination's agent ([`DestHost`]).
//!
//! 1. Preflight (the thesis' phase I): the destination answers (so it is
//!    reachable and authenticated), has the profile and the room.
//! 2. Pre-copy rounds while the volume stays mounted and in use:
//!    [`mover::net::precopy`] runs them (partial rounds are kept) until
//!    [`mover::converge`] says cut over, or, in strict mode, refuses (then
//!    nothing is fenced and the application keeps running).
//! 3. Cutover: wait until nothing mounts the volume (the operator stops the
//!    container; see `mod.rs`), fencing it in the same locked step; final
//!    round; the destination takes ownership; the source is marked moved.
//! 4. Report.
//!
//! Failure rules: before ownership passes, any failure unfences the source
//! (the application can start again here). Once the commit was sent and its
//! answer lost, the source stays fenced: rerunning `daffe migrate` finishes
//! the handover (every step is idempotent), never two owners.

use super::report::{EstimateReport, Report, RoundReport, millis};
use super::wire::{PeerReply, PeerRequest};
use crate::control::{ClientError, ControlClient, ControlRequest};
use crate::service::migrate::{ReceiveCheck, TransferMode, TransferPaths};
use mover::Source;
use mover::converge::Targets;
use mover::net::conn::ConnError;
use mover::net::precopy::{
    self, PreCopyError, PreCopyHooks, PreCopyReport, PreCopyRound, RoundTarget,
};
use mover::net::rounds::{RoundPushError, RoundPushReport, RoundPusher};
use mover::net::serve::ServeEvent;
use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    #[error("local daemon: {0}")]
    Daemon(#[from] ClientError),
    #[error("destination: {0}")]
    Peer(#[from] ConnError),
    #[error("destination: {0}")]
    Push(#[from] RoundPushError),
    /// Pre-copy stopped without fencing (strict mode's refusal, with its
    /// figures; a failed hook).
    #[error("{0}; {1} was not fenced and stays in use here")]
    PreCopy(String, String),
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
pub(crate) trait SourceHost {
    fn transfer_paths(&self, volume: &str) -> Result<TransferPaths, ClientError>;
    fn begin_move(&self, volume: &str, to: &str) -> Result<(), ClientError>;
    /// Fences if unmounted; an error with `in_use()` otherwise.
    fn fence(&self, volume: &str, to: &str) -> Result<(), ClientError>;
    fn finish_move(&self, volume: &str, to: &str) -> Result<(), ClientError>;
    fn abort_move(&self, volume: &str) -> Result<(), ClientError>;
}

impl SourceHost for ControlClient {
    fn transfer_paths(&self, volume: &str) -> Result<TransferPaths, ClientError> {
        self.send_as(&ControlRequest::Transfer {
            name: volume.to_owned(),
        })
    }
    fn begin_move(&self, volume: &str, to: &str) -> Result<(), ClientError> {
        self.send(&ControlRequest::Move {
            name: volume.to_owned(),
            to: to.to_owned(),
        })
        .map(drop)
    }
    fn fence(&self, volume: &str, to: &str) -> Result<(), ClientError> {
        self.send(&ControlRequest::Fence {
            name: volume.to_owned(),
            to: to.to_owned(),
        })
        .map(drop)
    }
    fn finish_move(&self, volume: &str, to: &str) -> Result<(), ClientError> {
        self.send(&ControlRequest::FinishMove {
            name: volume.to_owned(),
            to: to.to_owned(),
        })
        .map(drop)
    }
    fn abort_move(&self, volume: &str) -> Result<(), ClientError> {
        self.send(&ControlRequest::AbortMove {
            name: volume.to_owned(),
        })
        .map(drop)
    }
}

/// The destination's agent, as the orchestrator sees it.
pub(crate) trait DestHost {
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
pub(crate) struct RemoteAgent {
    pub(crate) pusher: RoundPusher,
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
pub(crate) struct MigrateOptions {
    pub(crate) volume: String,
    /// The destination as given (`HOST[:PORT]`): also what a fenced Mount names.
    pub(crate) to: String,
    pub(crate) max_downtime: Duration,
    pub(crate) max_rounds: u32,
    pub(crate) unmount_timeout: Duration,
    /// How often the unmount is looked for: bounds the downtime measurement error.
    pub(crate) fence_poll: Duration,
    /// Refuse the cutover (unfenced) when the estimate exceeds `max_downtime`.
    pub(crate) strict: bool,
}

/// Pre-copy rounds at most unless the operator says otherwise.
pub(crate) const DEFAULT_MAX_ROUNDS: u32 = 10;

/// Progress, for a bar or a log.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Preflight(ReceiveCheck),
    RoundStart {
        round: u32,
        final_round: bool,
    },
    Bytes(u64),
    RoundEnd(RoundReport),
    /// The writes outpace the link: the figures, before the unmount is asked for.
    Outpaced(String),
    WaitingForUnmount,
    Unmounted,
    Committed,
}

/// Bytes the data occupies on disk (allocated blocks: holes do not count).
pub(crate) fn used_bytes(paths: &TransferPaths) -> Result<u64, MigrateError> {
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
        bytes_dirty: r.summary.bytes_dirty,
        partial: r.summary.bytes_dirty > 0,
        wire_bytes: r.wire_sent + r.wire_received,
        chunks_new: r.summary.chunks_new,
        chunks_total: r.summary.chunks_total,
        scan_ms: millis(r.scan_time),
        transfer_ms: millis(r.transfer_time),
        attempts: r.attempts,
        after_hook: false,
        estimate_ms: None,
    }
}

/// Pre-copy rounds go to the destination, with progress events; each
/// round's push report is kept for [`ReportRounds`].
struct DestRounds<'a, 'e> {
    dest: &'a mut dyn DestHost,
    event: &'a RefCell<&'e mut dyn FnMut(Event)>,
    pushes: &'a RefCell<Vec<RoundPushReport>>,
}

impl RoundTarget for DestRounds<'_, '_> {
    fn push_round(
        &mut self,
        round: u32,
        final_round: bool,
    ) -> Result<RoundPushReport, RoundPushError> {
        (self.event.borrow_mut())(Event::RoundStart { round, final_round });
        let event = self.event;
        let r = self.dest.round(round, final_round, &mut |b| {
            (event.borrow_mut())(Event::Bytes(b))
        })?;
        self.pushes.borrow_mut().push(r.clone());
        Ok(r)
    }
}

/// Each pre-copy round, once the model has seen it, into the report and the
/// operator's progress.
struct ReportRounds<'a, 'e> {
    event: &'a RefCell<&'e mut dyn FnMut(Event)>,
    pushes: &'a RefCell<Vec<RoundPushReport>>,
    rounds: &'a mut Vec<RoundReport>,
}

impl PreCopyHooks for ReportRounds<'_, '_> {
    fn round_done(&mut self, p: &PreCopyRound) {
        // A round that never completed (the source changed under every
        // rescan) has no push report: its figures are the loop's.
        let mut rr = match self.pushes.borrow_mut().pop() {
            Some(r) => round_report(p.round, false, &r),
            None => RoundReport {
                round: p.round,
                bytes: p.bytes_moved,
                bytes_dirty: p.bytes_dirty,
                partial: p.partial,
                wire_bytes: p.wire_bytes,
                scan_ms: p.scan_ms,
                transfer_ms: p.transfer_ms,
                attempts: p.attempts,
                ..Default::default()
            },
        };
        rr.after_hook = p.after_hook;
        rr.estimate_ms = Some(millis(p.estimate.downtime));
        (self.event.borrow_mut())(Event::RoundEnd(rr.clone()));
        self.rounds.push(rr);
    }
}

/// Runs a migration. `event` sees progress.
pub(crate) fn migrate(
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
        max_downtime_ms: millis(opts.max_downtime),
        ..Default::default()
    };

    // A rerun after a commit whose reply was lost (issue 12, finding 6): if
    // the destination owns the volume, received from this host, the
    // handover happened; only marking it moved here is left. Asking first
    // also keeps the rerun from any round into the volume it now owns.
    if resume_cutover
        && let PeerReply::CommitStatus { committed: true } =
            dest.request(&PeerRequest::CommitStatus {
                volume: paths.docker_name.clone(),
            })?
    {
        report.cutover_reason = "resumed: the destination already owned it".into();
        event(Event::Committed);
        host.finish_move(vol, to)
            .map_err(|e| MigrateError::Handover {
                volume: vol.clone(),
                to: to.clone(),
                source: Box::new(MigrateError::Daemon(e)),
            })?;
        report.total_ms = millis(t0.elapsed());
        return Ok(report);
    }

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

    // 2. Pre-copy, through mover's loop and convergence model: rounds under
    // writes are partial but kept (the agent receives with `precopy`).
    let mut round = 0u32;
    let mut precopy_report: Option<PreCopyReport> = None;
    let event = RefCell::new(event);
    if resume_cutover {
        report.cutover_reason = "resumed".into();
    } else {
        host.begin_move(vol, to)?;
        let targets = Targets {
            max_downtime: opts.max_downtime,
            max_rounds: opts.max_rounds,
            strict: opts.strict,
            link_rate: None,
            // The unmount is seen within a poll of the operator's stop.
            cutover_gap: opts.fence_poll,
        };
        let pushes = RefCell::new(Vec::new());
        let mut target = DestRounds {
            dest: &mut *dest,
            event: &event,
            pushes: &pushes,
        };
        let mut hooks = ReportRounds {
            event: &event,
            pushes: &pushes,
            rounds: &mut report.rounds,
        };
        match precopy::precopy(&mut target, &targets, 1, &mut hooks) {
            Ok(pr) => {
                round = pr.next_round - 1;
                report.cutover_reason = pr.reason.as_str().into();
                precopy_report = Some(pr);
            }
            Err(e) => {
                // Nothing was fenced: the application keeps running here.
                let _ = host.abort_move(vol);
                return Err(match e {
                    PreCopyError::Push(e) => e.into(),
                    e => MigrateError::PreCopy(e.to_string(), vol.clone()),
                });
            }
        }
    }
    let event = event.into_inner();
    if let Some(pr) = &precopy_report {
        report.estimate = Some(EstimateReport::of(&pr.estimate, pr.outpaced));
        // Said before the unmount is asked for: the operator decides with
        // the figures in hand.
        if let Some(msg) = pr.outpaced_message() {
            event(Event::Outpaced(msg));
        }
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
    report.unmount_wait_ms = millis(t_unmount - tw);
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
            if let Some(pr) = &precopy_report {
                report.final_round = Some(pr.final_round(&r, tw));
            }
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

    report.downtime_ms = millis(t_ready - t_unmount);
    report.bytes_moved = report.rounds.iter().map(|r| r.bytes).sum();
    report.wire_bytes = report.rounds.iter().map(|r| r.wire_bytes).sum();
    report.total_ms = millis(t0.elapsed());
    Ok(report)
}

#[cfg(test)]
/// The orchestrator against doubles of the local daemon and the agent.
mod tests {
    use super::*;
    use mover::net::message::RoundSummary;
    use mover::scan::ScanStats;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, VecDeque};

    /// A daemon double: a state, a mount count that drops after some polls.
    struct FakeHost {
        paths: TransferPaths,
        log: RefCell<Vec<String>>,
        mounted_polls: RefCell<u32>,
    }

    impl FakeHost {
        fn new(dir: &Path, state: &str, peer: Option<&str>) -> Self {
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(dir.join("data/count"), b"3").unwrap();
            FakeHost {
                paths: TransferPaths {
                    docker_name: "counter@gold".into(),
                    profile: "gold".into(),
                    mode: TransferMode::Tree,
                    data: dir.join("data"),
                    state_dir: dir.join("state"),
                    cache_dir: dir.join("cache"),
                    options: BTreeMap::new(),
                    state: state.into(),
                    peer: peer.map(str::to_owned),
                    received_from: None,
                },
                log: RefCell::new(vec![]),
                mounted_polls: RefCell::new(2),
            }
        }
        fn log(&self) -> Vec<String> {
            self.log.borrow().clone()
        }
    }

    fn in_use() -> ClientError {
        ClientError::Status {
            socket: "/x".into(),
            status: hyper::StatusCode::CONFLICT,
            code: Some(crate::service::ErrorCode::InUse),
            message: "volume \"v\" is in use: 1 mount(s)".into(),
        }
    }

    impl SourceHost for FakeHost {
        fn transfer_paths(&self, _v: &str) -> Result<TransferPaths, ClientError> {
            Ok(self.paths.clone())
        }
        fn begin_move(&self, _v: &str, to: &str) -> Result<(), ClientError> {
            self.log.borrow_mut().push(format!("move {to}"));
            Ok(())
        }
        fn fence(&self, _v: &str, to: &str) -> Result<(), ClientError> {
            let mut left = self.mounted_polls.borrow_mut();
            if *left > 0 {
                *left -= 1;
                self.log.borrow_mut().push("fence: in use".into());
                return Err(in_use());
            }
            self.log.borrow_mut().push(format!("fence {to}"));
            Ok(())
        }
        fn finish_move(&self, _v: &str, to: &str) -> Result<(), ClientError> {
            self.log.borrow_mut().push(format!("moved {to}"));
            Ok(())
        }
        fn abort_move(&self, _v: &str) -> Result<(), ClientError> {
            self.log.borrow_mut().push("abort".into());
            Ok(())
        }
    }

    /// An agent double: scripted round outcomes (dirty bytes), a commit result.
    struct FakeDest {
        rounds: VecDeque<Result<u64, &'static str>>,
        /// Bytes the source changes under each round (partial rounds).
        dirty: VecDeque<u64>,
        log: Vec<String>,
        commit_fails: bool,
        /// The commit lands (the destination owns the volume) but its
        /// reply is lost on the way back.
        commit_reply_lost: bool,
        /// The destination owns the volume, from this source: from then on
        /// it refuses to receive it again, as the real one does (409).
        committed: bool,
    }

    /// A round over a 1 GB/s link: it takes (really: the model measures
    /// wall time) 1 ms per MB.
    fn push_report(bytes: u64, dirty: u64) -> RoundPushReport {
        let transfer = Duration::from_micros(bytes / 1000);
        std::thread::sleep(transfer);
        RoundPushReport {
            summary: RoundSummary {
                bytes_fetched: bytes,
                bytes_dirty: dirty,
                ..Default::default()
            },
            scan: ScanStats::default(),
            scan_time: Duration::from_millis(10),
            transfer_time: transfer,
            wire_sent: bytes,
            wire_received: 0,
            attempts: 1,
            rescans: 0,
        }
    }

    impl DestHost for FakeDest {
        fn request(&mut self, req: &PeerRequest) -> Result<PeerReply, MigrateError> {
            match req {
                PeerRequest::Preflight { .. } | PeerRequest::Prepare { .. } if self.committed => {
                    self.log.push("refused: exists".into());
                    Err(MigrateError::Reply(
                        "409: volume \"counter\" already exists as docker volume \"counter@gold\""
                            .into(),
                    ))
                }
                PeerRequest::Preflight { need_bytes, .. } => {
                    self.log.push("preflight".into());
                    Ok(PeerReply::Preflight(ReceiveCheck {
                        docker_name: "counter@gold".into(),
                        profile: "gold".into(),
                        root: "/x".into(),
                        free_bytes: 1 << 40,
                        need_bytes: *need_bytes,
                        resuming: false,
                    }))
                }
                PeerRequest::Prepare { .. } => {
                    self.log.push("prepare".into());
                    Ok(PeerReply::Prepared)
                }
                PeerRequest::CommitStatus { .. } => {
                    self.log.push("commit status".into());
                    Ok(PeerReply::CommitStatus {
                        committed: self.committed,
                    })
                }
                PeerRequest::Commit { .. } => {
                    self.log.push("commit".into());
                    if self.commit_reply_lost {
                        self.committed = true;
                        return Err(MigrateError::Reply("link cut".into()));
                    }
                    if self.commit_fails {
                        Err(MigrateError::Reply("link cut".into()))
                    } else {
                        Ok(PeerReply::Committed { ready_unix_ms: 1 })
                    }
                }
            }
        }
        fn set_source(&mut self, target: &str, _s: Source, _c: PathBuf) {
            self.log.push(format!("source {target}"));
        }
        fn round(
            &mut self,
            round: u32,
            final_round: bool,
            progress: &mut dyn FnMut(u64),
        ) -> Result<RoundPushReport, RoundPushError> {
            self.log.push(format!("round {round} final={final_round}"));
            match self.rounds.pop_front().unwrap_or(Ok(0)) {
                Ok(b) => {
                    progress(b);
                    Ok(push_report(b, self.dirty.pop_front().unwrap_or(0)))
                }
                Err("stale") => Err(RoundPushError::StillStale {
                    target: "counter@gold".into(),
                    round,
                    rescans: 3,
                }),
                Err(_) => Err(RoundPushError::Scan {
                    path: "/x".into(),
                    source: mover::scan::ScanError::Io {
                        path: "/x".into(),
                        source: std::io::Error::other("disk on fire"),
                    },
                }),
            }
        }
        fn compression(&self) -> bool {
            true
        }
    }

    fn opts() -> MigrateOptions {
        MigrateOptions {
            volume: "counter@gold".into(),
            to: "hostb".into(),
            max_downtime: Duration::from_secs(2),
            max_rounds: 10,
            unmount_timeout: Duration::from_secs(5),
            fence_poll: Duration::from_millis(1),
            strict: false,
        }
    }

    fn dest(rounds: Vec<Result<u64, &'static str>>) -> FakeDest {
        FakeDest {
            rounds: rounds.into(),
            dirty: VecDeque::new(),
            log: vec![],
            commit_fails: false,
            commit_reply_lost: false,
            committed: false,
        }
    }

    #[test]
    fn rounds_converge_then_cutover_fences_final_round_commits_and_marks_moved() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        // 100 MB (one round never fits), 30 MB (its estimate does), final 2 KB.
        let mut dest = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
        let mut events = vec![];
        let r = migrate(&host, &mut dest, &opts(), &mut |e| events.push(e)).unwrap();
        assert_eq!(r.rounds.len(), 3);
        assert!(r.rounds[2].final_round);
        assert_eq!(r.cutover_reason, "fits");
        assert_eq!(r.bytes_moved, 130_002_000);
        let e = r.estimate.as_ref().unwrap();
        assert!(
            e.downtime_ms <= 2000 && e.link_rate > 0 && !e.outpaced,
            "{e:?}"
        );
        assert!(r.rounds[1].estimate_ms.is_some());
        let f = r.final_round.as_ref().unwrap();
        assert_eq!(f.bytes, 2000);
        assert_eq!(
            f.composition.before_unmount + f.composition.after_unmount,
            2000
        );
        assert_eq!(
            host.log(),
            vec![
                "move hostb",
                "fence: in use",
                "fence: in use",
                "fence hostb",
                "moved hostb"
            ]
        );
        assert_eq!(
            dest.log,
            vec![
                "preflight",
                "prepare",
                "source counter@gold",
                "round 1 final=false",
                "round 2 final=false",
                "round 3 final=true",
                "commit"
            ]
        );
        assert!(events.iter().any(|e| matches!(e, Event::WaitingForUnmount)));
        assert!(r.used_bytes > 0);
    }

    #[test]
    fn a_failed_final_round_gives_the_volume_back() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest = dest(vec![Ok(1000), Err("io")]);
        let err = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(host.log().last().unwrap(), "abort");
        assert!(!dest.log.contains(&"commit".to_string()));
    }

    #[test]
    fn a_lost_commit_keeps_the_source_fenced_and_a_rerun_finishes() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest1 = dest(vec![Ok(1000)]);
        dest1.commit_fails = true;
        let err = migrate(&host, &mut dest1, &opts(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, MigrateError::Handover { .. }), "{err}");
        assert!(
            !host.log().contains(&"abort".to_string()),
            "{:?}",
            host.log()
        );
        // The rerun finds the volume fenced for hostb: no pre-copy, final round, commit.
        let host2 = FakeHost::new(d.path(), "fenced", Some("hostb"));
        *host2.mounted_polls.borrow_mut() = 0;
        let mut dest2 = dest(vec![Ok(0)]);
        let r = migrate(&host2, &mut dest2, &opts(), &mut |_| {}).unwrap();
        assert_eq!(r.rounds.len(), 1);
        assert!(r.rounds[0].final_round);
        assert_eq!(host2.log(), vec!["fence hostb", "moved hostb"]);
    }

    /// Issue 12, finding 6: the commit landed (the destination owns the
    /// volume) but its reply was lost. The rerun met 409 at the destination
    /// and left the source fenced for ever; it must see that this source
    /// already handed the volume over, and only mark it moved.
    #[test]
    fn finding_06_a_rerun_after_a_lost_commit_reply_finishes() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest = dest(vec![Ok(1000)]);
        dest.commit_reply_lost = true;
        let err = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, MigrateError::Handover { .. }), "{err}");
        assert!(dest.committed);
        let first_run = dest.log.len();

        let host2 = FakeHost::new(d.path(), "fenced", Some("hostb"));
        *host2.mounted_polls.borrow_mut() = 0;
        let r = migrate(&host2, &mut dest, &opts(), &mut |_| {})
            .unwrap_or_else(|e| panic!("the rerun failed: {e}; dest saw {:?}", dest.log));
        assert_eq!(host2.log(), vec!["moved hostb"]);
        // No round and no second commit into the volume the destination owns.
        let rerun = &dest.log[first_run..];
        assert!(
            rerun
                .iter()
                .all(|l| !l.starts_with("round") && l != "commit"),
            "{rerun:?}"
        );
        assert!(r.rounds.is_empty());
    }

    #[test]
    fn stale_pre_copy_rounds_are_survived() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest = dest(vec![Ok(50_000_000), Err("stale"), Ok(100_000), Ok(10)]);
        let r = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap();
        assert_eq!(r.rounds[1].bytes, 0);
        assert!(r.rounds.last().unwrap().final_round);
    }

    #[test]
    fn partial_rounds_are_reported_with_their_bytes() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest = dest(vec![Ok(20_000_000), Ok(2_000_000), Ok(10_000), Ok(500)]);
        dest.dirty = vec![300_000, 40_000].into();
        let r = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap();
        let first = &r.rounds[0];
        assert!(first.partial && !first.final_round);
        assert_eq!((first.bytes, first.bytes_dirty), (20_000_000, 300_000));
        assert!(r.rounds[1].partial);
        assert_eq!(r.rounds[1].bytes, 2_000_000);
        assert!(r.rounds.last().unwrap().final_round);
        assert_eq!(r.bytes_moved, r.rounds.iter().map(|x| x.bytes).sum::<u64>());
    }

    /// Every pre-copy round moves as much as the one before: the source
    /// writes as fast as the link carries.
    fn outpacing_dest() -> FakeDest {
        dest(vec![Ok(3_000_000); 12])
    }

    #[test]
    fn strict_mode_refuses_unfenced_with_the_figures() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest = outpacing_dest();
        let mut o = opts();
        o.strict = true;
        o.max_downtime = Duration::from_millis(1);
        let mut events = vec![];
        let err = migrate(&host, &mut dest, &o, &mut |e| events.push(e)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, MigrateError::PreCopy(..)), "{msg}");
        assert!(msg.contains("strict mode") && msg.contains("MB/s"), "{msg}");
        assert!(msg.contains("not fenced"), "{msg}");
        // Never fenced, given back, no final round, no commit.
        assert_eq!(host.log(), vec!["move hostb", "abort"]);
        assert!(
            dest.log
                .iter()
                .all(|l| !l.ends_with("final=true") && l != "commit")
        );
        assert!(!events.iter().any(|e| matches!(e, Event::WaitingForUnmount)));
    }

    #[test]
    fn outpacing_writes_are_said_before_the_unmount_is_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        *host.mounted_polls.borrow_mut() = 0;
        let mut dest = outpacing_dest();
        let mut o = opts();
        o.max_downtime = Duration::from_millis(1);
        let mut events = vec![];
        let r = migrate(&host, &mut dest, &o, &mut |e| events.push(e)).unwrap();
        assert_eq!(r.cutover_reason, "write-rate-exceeds-link");
        assert!(r.estimate.as_ref().unwrap().outpaced);
        let said = events
            .iter()
            .position(|e| matches!(e, Event::Outpaced(m) if m.contains("MB/s")))
            .expect("an outpaced warning");
        let waiting = events
            .iter()
            .position(|e| matches!(e, Event::WaitingForUnmount))
            .unwrap();
        assert!(said < waiting);
    }

    #[test]
    fn a_volume_that_stays_mounted_times_out_and_is_unfenced() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        *host.mounted_polls.borrow_mut() = u32::MAX;
        let mut o = opts();
        o.unmount_timeout = Duration::from_millis(30);
        let mut dest = dest(vec![Ok(10)]);
        let err = migrate(&host, &mut dest, &o, &mut |_| {}).unwrap_err();
        assert!(matches!(err, MigrateError::UnmountTimeout { .. }), "{err}");
        assert_eq!(host.log().last().unwrap(), "abort");
    }

    #[test]
    fn moved_and_foreign_states_are_refused_before_anything_happens() {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "moved", Some("hostc"));
        let mut dest = dest(vec![]);
        let err = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("already moved to hostc"), "{err}");
        let host = FakeHost::new(d.path(), "moving", Some("hostc"));
        let err = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, MigrateError::Busy { .. }), "{err}");
        assert!(dest.log.is_empty());
    }
}
