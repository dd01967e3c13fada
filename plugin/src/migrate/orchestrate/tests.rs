//! The orchestrator against doubles of the local daemon and the agent.

use super::*;
use mover::ScanStats;
use mover::net::RoundSummary;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

/// A daemon double: a state, a mount count that drops after some polls.
struct FakeHost {
    paths: TransferPaths,
    log: RefCell<Vec<String>>,
    mounted_polls: RefCell<u32>,
    /// Who holds the image after the unmount.
    holder: Option<String>,
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
                mountpoint: None,
                received_from: None,
            },
            log: RefCell::new(vec![]),
            mounted_polls: RefCell::new(2),
            holder: None,
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
    fn flush(&self, mp: &Path) -> Result<Option<Duration>, FlushError> {
        self.log
            .borrow_mut()
            .push(format!("flush {}", mp.display()));
        Ok(Some(Duration::from_millis(3)))
    }
    fn held(&self, _image: &Path) -> Option<String> {
        self.log.borrow_mut().push("held?".into());
        self.holder.clone()
    }
    fn write_changes(
        &self,
        _volume: &str,
        _cache_dir: &Path,
    ) -> Option<std::sync::Arc<dyn mover::ImageChanges>> {
        None
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
    /// Prepares answered (each gave token `token-N`).
    prepared: u32,
    /// The token rounds carry (`set_source`).
    token: String,
}

/// A round over a 1 GB/s link: it takes (really: the model measures
/// wall time) 1 ms per MB.
fn push_report(bytes: u64, dirty: u64) -> RoundPushReport {
    let transfer = Duration::from_micros(bytes / 1000);
    std::thread::sleep(transfer);
    // RoundPushReport is #[non_exhaustive]: filled in from its Default.
    let mut r = RoundPushReport::default();
    r.summary = RoundSummary::default()
        .with_bytes_fetched(bytes)
        .with_bytes_dirty(dirty);
    r.scan = ScanStats::default();
    r.scan_time = Duration::from_millis(10);
    r.transfer_time = transfer;
    r.wire_sent = bytes;
    r.attempts = 1;
    r
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
                // A new token per prepare, as the agent makes one.
                self.prepared += 1;
                Ok(PeerReply::Prepared {
                    token: format!("token-{}", self.prepared),
                })
            }
            PeerRequest::CommitStatus { .. } => {
                self.log.push("commit status".into());
                Ok(PeerReply::CommitStatus {
                    committed: self.committed,
                })
            }
            PeerRequest::Commit { token, .. } => {
                self.log.push("commit".into());
                // The commit carries this run's token, as its rounds do.
                assert_eq!(*token, format!("token-{}", self.prepared));
                assert_eq!(self.token, *token, "rounds and commit share the token");
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
            PeerRequest::Health => Ok(PeerReply::Health {
                version: "test".into(),
                daemon_error: None,
            }),
            PeerRequest::Handover { .. }
            | PeerRequest::Pull { .. }
            | PeerRequest::Standby { .. } => Err(MigrateError::Reply(
                "a migration never asks for a handover".into(),
            )),
        }
    }
    fn set_source(
        &mut self,
        target: &str,
        _s: Source,
        _c: PathBuf,
        token: &str,
        _changes: Option<std::sync::Arc<dyn mover::ImageChanges>>,
    ) {
        self.token = token.to_owned();
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
                source: mover::ScanError::Io {
                    path: "/x".into(),
                    source: std::io::Error::other("disk on fire"),
                },
            }),
        }
    }
    fn foreground(&mut self) {
        self.log.push("foreground".into());
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
        stop_time: Duration::ZERO,
        strict: false,
        before_cutover: None,
        precopy: true,
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
        prepared: 0,
        token: String::new(),
    }
}

#[test]
fn the_estimate_counts_what_the_app_writes_during_the_operators_stop() {
    // The same rounds (100 MB, then 30 MB: ~270 MB/s dirtied over round
    // 1's ~110 ms), estimated with no stop and with a 1 s one: the app
    // writes on through the stop, and the final round carries it.
    let final_bytes = |stop_time| {
        let d = tempfile::tempdir().unwrap();
        let host = FakeHost::new(d.path(), "ready", None);
        let mut dest = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
        let o = MigrateOptions {
            stop_time,
            ..opts()
        };
        let r = migrate(&host, &mut dest, &o, &mut |_| {}).unwrap();
        assert_eq!(r.cutover_reason, "fits", "{r:?}");
        r.final_round.unwrap().estimated_bytes
    };
    let (none, one) = (
        final_bytes(Duration::ZERO),
        final_bytes(Duration::from_secs(1)),
    );
    // ~40 ms of round 2 against 1.04 s: ~26x; 10x leaves room for a slow
    // machine's timings.
    assert!(one > 10 * none, "no stop {none}, 1 s stop {one}");
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
fn a_handover_without_pre_copy_sends_one_exact_round_into_the_standby() {
    let d = tempfile::tempdir().unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    // What the standby lacks: one final round, no scan before it.
    let mut dest = dest(vec![Ok(4096)]);
    let o = MigrateOptions {
        precopy: false,
        ..opts()
    };
    let r = migrate(&host, &mut dest, &o, &mut |_| {}).unwrap();
    assert_eq!(r.rounds.len(), 1);
    assert!(r.rounds[0].final_round);
    assert_eq!(r.bytes_moved, 4096);
    assert!(r.cutover_reason.starts_with("final round only"), "{r:?}");
    assert_eq!(
        dest.log,
        vec![
            "preflight",
            "prepare",
            "source counter@gold",
            "round 1 final=true",
            "commit"
        ]
    );
    assert_eq!(host.log().first().unwrap(), "move hostb");
    assert_eq!(host.log().last().unwrap(), "moved hostb");
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
        .position(|e| matches!(e, Event::CutoverWarning(m) if m.contains("MB/s")))
        .expect("an outpaced warning");
    let waiting = events
        .iter()
        .position(|e| matches!(e, Event::WaitingForUnmount))
        .unwrap();
    assert!(said < waiting);
}

#[test]
fn the_before_cutover_hook_runs_before_the_last_pre_copy_round_and_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    *host.mounted_polls.borrow_mut() = 0;
    let marker = d.path().join("hook-ran");
    // 100 MB, then 30 MB (fits): the hook, one more round, the final.
    let mut dest = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(5000), Ok(10)]);
    let mut o = opts();
    o.before_cutover = Some(BeforeCutover {
        command: format!("touch {}", marker.display()),
        timeout: Duration::from_secs(10),
    });
    let mut events = vec![];
    let r = migrate(&host, &mut dest, &o, &mut |e| events.push(e)).unwrap();
    assert!(marker.exists());
    let h = r.before_cutover.as_ref().expect("the hook in the report");
    assert_eq!((h.exit_status, h.timed_out), (Some(0), false));
    assert!(h.command.starts_with("touch "));
    let kinds: Vec<(bool, bool)> = r
        .rounds
        .iter()
        .map(|x| (x.after_hook, x.final_round))
        .collect();
    assert_eq!(
        kinds,
        [(false, false), (false, false), (true, false), (false, true)]
    );
    // The hook ran after round 2 ended and before round 3 started.
    let at = |f: &dyn Fn(&Event) -> bool| events.iter().position(f).unwrap();
    let hook_at = at(&|e| matches!(e, Event::HookStart(_)));
    let r2_end = at(&|e| matches!(e, Event::RoundEnd(x) if x.round == 2));
    let r3_start = at(&|e| matches!(e, Event::RoundStart { round: 3, .. }));
    assert!(r2_end < hook_at && hook_at < r3_start);
    assert!(r.render().contains("before-cutover `touch "));
    // The round after the hook, the last before the unmount, runs in the
    // foreground; the rounds before it stay in the background.
    let at = |s: &str| dest.log.iter().position(|l| l == s).unwrap();
    assert!(at("round 2 final=false") < at("foreground"));
    assert!(at("foreground") < at("round 3 final=false"));
}

#[test]
fn a_failing_hook_stops_unfenced_with_its_stderr() {
    let d = tempfile::tempdir().unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    let mut dest = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(5000)]);
    let mut o = opts();
    o.before_cutover = Some(BeforeCutover {
        command: "echo no checkpoint for you >&2; exit 3".into(),
        timeout: Duration::from_secs(10),
    });
    let err = migrate(&host, &mut dest, &o, &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MigrateError::PreCopy(..)), "{msg}");
    assert!(
        msg.contains("before-cutover hook failed")
            && msg.contains("status 3")
            && msg.contains("no checkpoint for you")
            && msg.contains("not fenced"),
        "{msg}"
    );
    assert_eq!(host.log(), vec!["move hostb", "abort"]);
    assert!(
        dest.log
            .iter()
            .all(|l| !l.ends_with("final=true") && l != "commit")
    );
    assert!(!dest.log.contains(&"round 3 final=false".to_string()));
}

#[test]
fn a_block_volume_is_flushed_before_each_pre_copy_round_not_the_final_one() {
    let d = tempfile::tempdir().unwrap();
    let mut host = FakeHost::new(d.path(), "ready", None);
    host.paths.mountpoint = Some("/vol/data".into());
    *host.mounted_polls.borrow_mut() = 0;
    let mut dest = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
    let r = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap();
    assert_eq!(
        host.log(),
        vec![
            "move hostb",
            "flush /vol/data",
            "flush /vol/data",
            "fence hostb",
            "moved hostb"
        ]
    );
    let flushes: Vec<_> = r.rounds.iter().map(|x| x.flush_ms).collect();
    assert_eq!(flushes, [Some(3), Some(3), None]);
}

#[test]
fn an_image_still_held_elsewhere_is_never_moved_and_the_source_is_unfenced() {
    let d = tempfile::tempdir().unwrap();
    let mut host = FakeHost::new(d.path(), "ready", None);
    host.paths.mode = TransferMode::Image;
    host.paths.data = d.path().join("data/count");
    host.holder = Some("/dev/loop3 (7:3) is still mounted ... of pid 4242 (sleep)".into());
    *host.mounted_polls.borrow_mut() = 0;
    let mut dest1 = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
    let err = migrate(&host, &mut dest1, &opts(), &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MigrateError::Held { .. }), "{msg}");
    assert!(
        msg.contains("pid 4242 (sleep)") && msg.contains("not fenced"),
        "{msg}"
    );
    assert_eq!(
        host.log(),
        vec!["move hostb", "fence hostb", "held?", "abort"]
    );
    assert!(
        dest1
            .log
            .iter()
            .all(|l| !l.ends_with("final=true") && l != "commit")
    );
    // Released: the same move goes through.
    host.holder = None;
    let mut dest2 = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
    migrate(&host, &mut dest2, &opts(), &mut |_| {}).unwrap();
    assert!(dest2.log.contains(&"commit".to_string()));
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

#[test]
fn the_first_round_cap_replaces_the_cap_in_round_one_only_and_no_final_round_is_capped() {
    let (all, first) = (
        Arc::new(read_limiter(1 << 20)),
        Arc::new(read_limiter(2 << 20)),
    );
    let name = |c: Option<Arc<RateLimiter>>| match c {
        None => "none",
        Some(c) if Arc::ptr_eq(&c, &all) => "all",
        Some(c) if Arc::ptr_eq(&c, &first) => "first",
        Some(_) => "other",
    };
    let both = ReadCaps {
        all: Some(all.clone()),
        first: Some(first.clone()),
    };
    let only_first = ReadCaps {
        all: None,
        first: Some(first.clone()),
    };
    let only_all = ReadCaps {
        all: Some(all.clone()),
        first: None,
    };
    // (caps, round, final round, expected)
    let cases = [
        (&both, 1, false, "first"),
        (&both, 2, false, "all"),
        (&both, 7, false, "all"),
        (&both, 1, true, "none"),
        (&both, 3, true, "none"),
        (&only_first, 1, false, "first"),
        (&only_first, 2, false, "none"),
        (&only_all, 1, false, "all"),
        (&only_all, 2, false, "all"),
        (&only_all, 2, true, "none"),
        (&ReadCaps::default(), 1, false, "none"),
    ];
    for (caps, round, fin, want) in cases {
        assert_eq!(
            name(caps.for_round(round, fin)),
            want,
            "round {round}, final {fin}"
        );
    }
}

#[test]
fn a_database_moved_without_a_hook_is_warned_of_before_pre_copy_and_in_the_report() {
    let d = tempfile::tempdir().unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    *host.mounted_polls.borrow_mut() = 0;
    // PostgreSQL's data directory one level below the volume's root.
    std::fs::create_dir_all(d.path().join("data/pg/global")).unwrap();
    std::fs::write(d.path().join("data/pg/PG_VERSION"), "15\n").unwrap();
    let mut dest1 = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
    let mut events = vec![];
    let r = migrate(&host, &mut dest1, &opts(), &mut |e| events.push(e)).unwrap();
    let warned = events
        .iter()
        .position(
            |e| matches!(e, Event::NoHook(m) if m.contains("PostgreSQL") && m.contains("in pg")),
        )
        .expect("a warning that names the database");
    let round1 = events
        .iter()
        .position(|e| matches!(e, Event::RoundStart { round: 1, .. }))
        .unwrap();
    assert!(warned < round1, "said before pre-copy starts");
    assert_eq!(r.warnings.len(), 1);
    assert!(
        r.render()
            .contains("warning: counter@gold holds a PostgreSQL")
    );

    // With a hook, or a volume that holds no database: no warning.
    let mut o = opts();
    o.before_cutover = Some(BeforeCutover {
        command: "true".into(),
        timeout: Duration::from_secs(10),
    });
    let host = FakeHost::new(d.path(), "ready", None);
    *host.mounted_polls.borrow_mut() = 0;
    let mut dest2 = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(5000), Ok(10)]);
    let mut events = vec![];
    let r = migrate(&host, &mut dest2, &o, &mut |e| events.push(e)).unwrap();
    assert!(r.warnings.is_empty());
    assert!(!events.iter().any(|e| matches!(e, Event::NoHook(_))));
    std::fs::remove_dir_all(d.path().join("data/pg")).unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    *host.mounted_polls.borrow_mut() = 0;
    let mut dest3 = dest(vec![Ok(100_000_000), Ok(30_000_000), Ok(2000)]);
    let r = migrate(&host, &mut dest3, &opts(), &mut |_| {}).unwrap();
    assert!(r.warnings.is_empty());
}
