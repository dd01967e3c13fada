//! The source side of a migration, as a state machine over two seams: the
//! local daemon ([`SourceHost`]) and the destination's agent ([`DestHost`]).
//!
//! 1. Preflight (the thesis' phase I): the destination answers (so it is
//!    reachable and authenticated), has the profile and the room.
//! 2. Pre-copy rounds while the volume stays mounted and in use:
//!    [`mover::net::precopy`] runs them (partial rounds are kept) until
//!    the convergence model (`mover::net::precopy::Estimate`) says cut over, or, in strict mode, refuses (then
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

use super::app_data;
use super::flush::{self, FlushError};
use super::hook::{self, BeforeCutover, HookReport};
use super::report::{CutoverPhases, EstimateReport, Report, RoundReport, millis};
use super::wire::{PeerReply, PeerRequest};
use crate::backend::local::holders;
use crate::control::{ClientError, ControlClient, ControlRequest};
use crate::service::migrate::{ReceiveCheck, TransferMode, TransferPaths};
use mover::ImageChanges;
use mover::RateLimiter;
use mover::Source;
use mover::net::ConnError;
use mover::net::ServeEvent;
use mover::net::precopy::{
    self, PreCopyError, PreCopyHooks, PreCopyReport, PreCopyRound, RoundTarget, Targets,
};
use mover::net::{RoundPushError, RoundPushReport, RoundPusher};
use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[error(
        "refusing the cutover of {volume}: {holder}. Its image would be stale; stop that \
         process (or make it leave the mount) and run daffe migrate again. {volume} was not \
         moved and is not fenced"
    )]
    Held { volume: String, holder: String },
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
    /// Flushes a block volume's mounted filesystem to its image (before a
    /// pre-copy round); how long it took, or none when it is not mounted.
    fn flush(&self, mountpoint: &Path) -> Result<Option<Duration>, FlushError>;
    /// Who still holds a block volume's filesystem after the unmount (a
    /// mount namespace, a loop holder); none when it is released everywhere.
    fn held(&self, image: &Path) -> Option<String>;
    /// Who knows where a block volume's image was written between scans
    /// into `cache_dir` (the daemon); none: a changed image is read whole.
    fn write_changes(&self, volume: &str, cache_dir: &Path) -> Option<Arc<dyn ImageChanges>>;
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
    fn flush(&self, mountpoint: &Path) -> Result<Option<Duration>, FlushError> {
        // Unmounted, the image is already what the filesystem wrote (and a
        // syncfs there would flush the filesystem holding the directory).
        if !crate::backend::sys::is_mountpoint(mountpoint) {
            return Ok(None);
        }
        flush::syncfs(mountpoint, flush::FLUSH_LIMIT).map(Some)
    }
    fn held(&self, image: &Path) -> Option<String> {
        holders::describe(&holders::check(image))
    }
    fn write_changes(&self, volume: &str, cache_dir: &Path) -> Option<Arc<dyn ImageChanges>> {
        Some(Arc::new(super::changes::DaemonChanges::new(
            self.clone(),
            volume,
            cache_dir,
        )))
    }
}

/// The destination's agent, as the orchestrator sees it.
pub(crate) trait DestHost {
    fn request(&mut self, req: &PeerRequest) -> Result<PeerReply, MigrateError>;
    /// Sets what rounds send (known after the local lookup), and the token
    /// the destination's prepare gave (every round carries it).
    fn set_source(
        &mut self,
        target: &str,
        source: Source,
        cache_dir: PathBuf,
        token: &str,
        changes: Option<Arc<dyn ImageChanges>>,
    );
    fn round(
        &mut self,
        round: u32,
        final_round: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RoundPushReport, RoundPushError>;
    fn compression(&self) -> bool;
    /// The rounds from now on run at normal priority: the round after the
    /// before-cutover hook is the last before the unmount, and what it
    /// leaves behind (the app keeps writing while it runs) is downtime.
    fn foreground(&mut self) {}
}

/// The real destination: a [`RoundPusher`] to an agent.
pub(crate) struct RemoteAgent {
    pub(crate) pusher: RoundPusher,
    /// `--read-limit` and `--first-round-read-limit`: charged by the reads
    /// of pre-copy rounds' scans and chunk answers (an answer only for what
    /// the page cache no longer holds), never by the final round's.
    pub(crate) read_caps: ReadCaps,
    /// Pre-copy rounds run in the background (`--precopy-priority low`
    /// or `idle`; see `super::priority`); the final round never does.
    pub(crate) background: bool,
    /// `--precopy-priority idle` (the default): background rounds also run
    /// with this whole process in the cpu.idle cgroup until it starves
    /// there (`super::idle_group`). `None` in a daemon, whose other work
    /// must not go idle with it.
    pub(crate) idle: Option<super::idle_group::IdlePolicy>,
}

/// The limiter of `--read-limit`: `rate` bytes/s with a quarter second of
/// burst (the scan reads in pieces of at most a few MiB).
pub(crate) fn read_limiter(rate: u64) -> RateLimiter {
    RateLimiter::new(rate, (rate / 4).max(1 << 20))
}

/// Which read cap a round runs under.
#[derive(Clone, Default)]
pub(crate) struct ReadCaps {
    /// `--read-limit`: every pre-copy round.
    pub(crate) all: Option<Arc<RateLimiter>>,
    /// `--first-round-read-limit`: the first round instead. It reads the
    /// whole volume (the bulk of what the move costs the application);
    /// the rounds after it read only what changed, and a cap there slows
    /// the convergence that bounds the downtime (BENCHMARKS.md: a 20M cap
    /// on every round kept pgbench's latency, and cost 5.3 s of downtime).
    pub(crate) first: Option<Arc<RateLimiter>>,
}

impl ReadCaps {
    /// The cap for round `round` (1-based); none for the final round.
    pub(crate) fn for_round(&self, round: u32, final_round: bool) -> Option<Arc<RateLimiter>> {
        if final_round {
            return None;
        }
        match (round, &self.first) {
            (1, Some(first)) => Some(first.clone()),
            _ => self.all.clone(),
        }
    }
}

impl DestHost for RemoteAgent {
    fn request(&mut self, req: &PeerRequest) -> Result<PeerReply, MigrateError> {
        let body = serde_json::to_vec(req).map_err(|e| MigrateError::Reply(e.to_string()))?;
        let mut peer = self.pusher.connect()?;
        let reply = peer.control(&body)?;
        peer.bye();
        serde_json::from_slice(&reply).map_err(|e| MigrateError::Reply(e.to_string()))
    }
    fn set_source(
        &mut self,
        target: &str,
        source: Source,
        cache_dir: PathBuf,
        token: &str,
        changes: Option<Arc<dyn ImageChanges>>,
    ) {
        self.pusher.changes = changes;
        self.pusher.token = token.to_owned();
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
        let _cap = self
            .read_caps
            .for_round(round, final_round)
            .map(mover::ReadCap::install);
        let background = self.background && !final_round;
        let _background = background.then(super::priority::Background::enter);
        let _idle = self
            .idle
            .as_ref()
            .filter(|_| background)
            .and_then(|p| p.enter());
        self.pusher.push(round, final_round, &mut |ev| {
            if let ServeEvent::ChunkSent { bytes, .. } = ev {
                progress(bytes)
            }
        })
    }
    fn compression(&self) -> bool {
        self.pusher.ep.hello.zstd
    }
    fn foreground(&mut self) {
        // At nice 19 and the idle I/O class on a busy host, the hook's round
        // (PostgreSQL's CHECKPOINT: 362 MB of pages) took 14.7 s, and the
        // 200 MB the database dirtied meanwhile went in the final round
        // (5.3 s of downtime; live8's run, BENCHMARKS.md).
        // In the idle cgroup the round gets every CPU the application
        // leaves, and the watchdog ends starvation, so it stays there (its
        // latency cost fell from x2.0-2.4 to x1.3; BENCHMARKS.md, stop 33).
        // Once starved there, the round goes at normal priority as before
        // (at nice 19, or with the low group's tenth of a CPU, it would lag
        // the writes: live8).
        if self.idle.as_ref().is_none_or(|p| p.starved()) {
            self.background = false;
        }
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
    /// How long the operator's stop is expected to take, from the request
    /// to the unmount (`--stop-time`): the application writes meanwhile, and
    /// the final round carries it.
    pub(crate) stop_time: Duration,
    /// Refuse the cutover (unfenced) when the estimate exceeds `max_downtime`.
    pub(crate) strict: bool,
    /// Run before the last pre-copy round (`--before-cutover`).
    pub(crate) before_cutover: Option<BeforeCutover>,
    /// Pre-copy rounds first. A cluster handover sends a volume that is
    /// already unmounted (nothing changes under it), often into a warm
    /// standby: the final round alone carries what the standby lacks, and
    /// a pre-copy round would only scan the volume a second time.
    pub(crate) precopy: bool,
}

/// Pre-copy rounds at most unless the operator says otherwise.
pub(crate) const DEFAULT_MAX_ROUNDS: u32 = 10;

/// The stop the estimate expects unless told otherwise (`--stop-time`):
/// what it takes to stop a container and release its volume. Measured
/// (BENCHMARKS.md, issue 11, stop 41): `docker stop` of a writer's container
/// 1.1-1.2 s, `pg_ctl stop -m fast` then the unmount 0.2-0.9 s. Without it
/// the estimate expected the final round to carry what the app dirtied up
/// to the request only: a 1 MB/s writer's final round came out at twice its
/// estimate (est./actual 0.53 and 0.66, default and gold).
pub(crate) const DEFAULT_STOP_TIME: Duration = Duration::from_secs(1);

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
    /// The writes outpace the link, or the estimate is over the target: the
    /// figures, before the unmount is asked for.
    CutoverWarning(String),
    /// The volume holds a database and no before-cutover hook was given
    /// (`super::app_data`): said before pre-copy starts.
    NoHook(String),
    /// A block volume's flush before a round failed or timed out (the round
    /// goes on with what is on disk).
    FlushFailed(String),
    /// The before-cutover hook starts (its command).
    HookStart(String),
    /// The before-cutover hook ended (successfully or not).
    HookDone(HookReport),
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
        bytes_scanned: r.scan.bytes_scanned,
        bytes_read: r.scan.bytes_hashed,
        bytes_tracked: r.scan.bytes_tracked,
        bytes_carried: r.carried,
        bytes_written: r.summary.bytes_written,
        bytes_dirty: r.summary.bytes_dirty,
        partial: r.summary.bytes_dirty > 0,
        wire_bytes: r.wire_sent + r.wire_received,
        chunks_new: r.summary.chunks_new,
        chunks_total: r.summary.chunks_total,
        scan_ms: millis(r.scan_time),
        scan_read_ms: millis(r.scan.read_time),
        scan_paced_ms: millis(r.scan.paced_time),
        scan_run_ms: r.scan_cpu.map(|c| millis(c.run)),
        scan_wait_ms: r.scan_cpu.map(|c| millis(c.wait)),
        transfer_ms: millis(r.transfer_time),
        transfer_run_ms: r.transfer_cpu.map(|c| millis(c.run)),
        transfer_wait_ms: r.transfer_cpu.map(|c| millis(c.wait)),
        attempts: r.attempts,
        after_hook: false,
        estimate_ms: None,
        flush_ms: None,
    }
}

/// Pre-copy rounds go to the destination, with progress events; each
/// round's push report is kept for [`ReportRounds`].
struct DestRounds<'a, 'e> {
    dest: &'a mut dyn DestHost,
    event: &'a RefCell<&'e mut dyn FnMut(Event)>,
    pushes: &'a RefCell<Vec<RoundPushReport>>,
    /// A block volume's mountpoint, flushed before each pre-copy round.
    flush: Option<(&'a dyn SourceHost, &'a Path)>,
    /// The last flush's time, for the round's report.
    flush_ms: &'a RefCell<Option<u64>>,
    /// Set once the before-cutover hook ran: the next round is the last
    /// pre-copy round, run in the foreground ([`DestHost::foreground`]).
    hook_ran: &'a std::cell::Cell<bool>,
}

impl RoundTarget for DestRounds<'_, '_> {
    fn push_round(
        &mut self,
        round: u32,
        final_round: bool,
    ) -> Result<RoundPushReport, RoundPushError> {
        if let (Some((host, mp)), false) = (self.flush, final_round) {
            match host.flush(mp) {
                Ok(took) => *self.flush_ms.borrow_mut() = took.map(millis),
                Err(e) => (self.event.borrow_mut())(Event::FlushFailed(e.to_string())),
            }
        }
        if self.hook_ran.get() {
            self.dest.foreground();
        }
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
/// Runs the before-cutover hook when pre-copy decides to stop.
struct ReportRounds<'a, 'e> {
    event: &'a RefCell<&'e mut dyn FnMut(Event)>,
    pushes: &'a RefCell<Vec<RoundPushReport>>,
    flush_ms: &'a RefCell<Option<u64>>,
    rounds: &'a mut Vec<RoundReport>,
    hook: Option<&'a BeforeCutover>,
    hook_report: &'a mut Option<HookReport>,
    hook_ran: &'a std::cell::Cell<bool>,
}

impl PreCopyHooks for ReportRounds<'_, '_> {
    fn has_before_last_round(&self) -> bool {
        self.hook.is_some()
    }

    fn before_last_round(
        &mut self,
        _estimate: &mover::net::precopy::Estimate,
    ) -> Result<(), String> {
        let Some(h) = self.hook else { return Ok(()) };
        (self.event.borrow_mut())(Event::HookStart(h.command.clone()));
        let mut r = hook::run(h).map_err(|e| e.to_string())?;
        r.runs += self.hook_report.as_ref().map_or(0, |earlier| earlier.runs);
        (self.event.borrow_mut())(Event::HookDone(r.clone()));
        let ok = r.succeeded();
        let failure = r.failure();
        *self.hook_report = Some(r);
        self.hook_ran.set(ok);
        if ok { Ok(()) } else { Err(failure) }
    }

    fn round_done(&mut self, p: &PreCopyRound) {
        // A round that never completed (the source changed under every
        // rescan) has no push report: its figures are the loop's.
        let mut rr = match self.pushes.borrow_mut().pop() {
            Some(r) => round_report(p.round, false, &r),
            None => RoundReport {
                round: p.round,
                bytes: p.bytes_moved,
                bytes_dirty: p.bytes_dirty,
                bytes_carried: p.bytes_carried,
                partial: p.partial,
                wire_bytes: p.wire_bytes,
                scan_ms: p.scan_ms,
                transfer_ms: p.transfer_ms,
                attempts: p.attempts,
                ..Default::default()
            },
        };
        rr.after_hook = p.after_hook;
        rr.flush_ms = self.flush_ms.borrow_mut().take();
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
    // The destination's token for this run: rounds and the commit carry it
    // (issue 12, finding 5: a stale run's are refused).
    let token = match dest.request(&PeerRequest::Prepare {
        volume: paths.docker_name.clone(),
        options: paths.options.clone(),
    })? {
        PeerReply::Prepared { token } => token,
        other => return Err(MigrateError::Reply(format!("{other:?}"))),
    };
    // Rounds after the first, and the final one, read only what the daemon
    // saw written (`backend::local::writes` for an image, `dir_writes` for
    // a tree's files).
    let source = match paths.mode {
        TransferMode::Tree => Source::Tree(paths.data.clone()),
        TransferMode::Image => Source::Image(paths.data.clone()),
    };
    let changes = host.write_changes(&paths.docker_name, &paths.cache_dir);
    dest.set_source(
        &paths.docker_name,
        source,
        paths.cache_dir.clone(),
        &token,
        changes,
    );

    // A database moved without a hook pays its buffers as downtime, unseen
    // by the estimate: said now, while stopping costs nothing.
    if opts.precopy && !resume_cutover && opts.before_cutover.is_none() {
        let root = match paths.mode {
            TransferMode::Tree => Some(paths.data.as_path()),
            TransferMode::Image => paths.mountpoint.as_deref(),
        };
        if let Some(found) = root.and_then(app_data::find) {
            let msg = app_data::advice(vol, &found);
            report.warnings.push(msg.clone());
            event(Event::NoHook(msg));
        }
    }

    // 2. Pre-copy, through mover's loop and convergence model: rounds under
    // writes are partial but kept (the agent receives with `precopy`).
    let mut round = 0u32;
    let mut precopy_report: Option<PreCopyReport> = None;
    let event = RefCell::new(event);
    if resume_cutover {
        report.cutover_reason = "resumed".into();
    } else if !opts.precopy {
        host.begin_move(vol, to)?;
        report.cutover_reason = "final round only (the volume was not in use)".into();
    } else {
        host.begin_move(vol, to)?;
        let targets = Targets::new(opts.max_downtime, opts.max_rounds)
            .with_strict(opts.strict)
            // From the last round to the final round's scan: the operator's
            // stop, then the unmount seen within a poll.
            .with_cutover_gap(opts.stop_time + opts.fence_poll);
        let pushes = RefCell::new(Vec::new());
        let flush_ms = RefCell::new(None);
        let hook_ran = std::cell::Cell::new(false);
        let mut target = DestRounds {
            dest: &mut *dest,
            event: &event,
            pushes: &pushes,
            flush: paths.mountpoint.as_deref().map(|mp| (host, mp)),
            flush_ms: &flush_ms,
            hook_ran: &hook_ran,
        };
        let mut hooks = ReportRounds {
            event: &event,
            pushes: &pushes,
            flush_ms: &flush_ms,
            rounds: &mut report.rounds,
            hook: opts.before_cutover.as_ref(),
            hook_report: &mut report.before_cutover,
            hook_ran: &hook_ran,
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
        if let Some(msg) = pr.cutover_warning(opts.max_downtime) {
            event(Event::CutoverWarning(msg));
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
    // Unmounted here is not enough for an image: another mount namespace
    // may still hold the filesystem, with data the image does not have yet.
    if paths.mode == TransferMode::Image
        && let Some(holder) = host.held(&paths.data)
    {
        let _ = host.abort_move(vol);
        return Err(MigrateError::Held {
            volume: vol.clone(),
            holder,
        });
    }
    let t_final = Instant::now();
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
    let t_commit = Instant::now();
    let handover = |e: MigrateError| MigrateError::Handover {
        volume: vol.clone(),
        to: to.clone(),
        source: Box::new(e),
    };
    match dest.request(&PeerRequest::Commit {
        volume: paths.docker_name.clone(),
        token,
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
    report.cutover = Some(CutoverPhases {
        held_check_ms: millis(t_final - t_unmount),
        final_round_ms: millis(t_commit - t_final),
        commit_ms: millis(t_ready - t_commit),
    });
    report.bytes_moved = report.rounds.iter().map(|r| r.bytes).sum();
    report.wire_bytes = report.rounds.iter().map(|r| r.wire_bytes).sum();
    report.total_ms = millis(t0.elapsed());
    Ok(report)
}

#[cfg(test)]
mod tests;
