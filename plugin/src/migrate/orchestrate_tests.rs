//! The orchestrator against doubles of the local daemon and the agent.

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
            },
            log: RefCell::new(vec![]),
            mounted_polls: RefCell::new(2),
        }
    }
    fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

fn in_use() -> DaemonError {
    DaemonError::Client(crate::client::ClientError::Status {
        socket: "/x".into(),
        status: hyper::StatusCode::CONFLICT,
        message: "volume \"v\" is in use: 1 mount(s)".into(),
    })
}

impl SourceHost for FakeHost {
    fn transfer_paths(&self, _v: &str) -> Result<TransferPaths, DaemonError> {
        Ok(self.paths.clone())
    }
    fn begin_move(&self, _v: &str, to: &str) -> Result<(), DaemonError> {
        self.log.borrow_mut().push(format!("move {to}"));
        Ok(())
    }
    fn fence(&self, _v: &str, to: &str) -> Result<(), DaemonError> {
        let mut left = self.mounted_polls.borrow_mut();
        if *left > 0 {
            *left -= 1;
            self.log.borrow_mut().push("fence: in use".into());
            return Err(in_use());
        }
        self.log.borrow_mut().push(format!("fence {to}"));
        Ok(())
    }
    fn finish_move(&self, _v: &str, to: &str) -> Result<(), DaemonError> {
        self.log.borrow_mut().push(format!("moved {to}"));
        Ok(())
    }
    fn abort_move(&self, _v: &str) -> Result<(), DaemonError> {
        self.log.borrow_mut().push("abort".into());
        Ok(())
    }
}

/// An agent double: scripted round outcomes (dirty bytes), a commit result.
struct FakeDest {
    rounds: VecDeque<Result<u64, &'static str>>,
    log: Vec<String>,
    commit_fails: bool,
}

fn push_report(bytes: u64) -> RoundPushReport {
    RoundPushReport {
        summary: RoundSummary {
            bytes_fetched: bytes,
            ..Default::default()
        },
        scan: ScanStats::default(),
        scan_time: Duration::from_millis(10),
        // 10 MB/s.
        transfer_time: Duration::from_millis(bytes / 10_000),
        wire_sent: bytes,
        wire_received: 0,
        attempts: 1,
        rescans: 0,
    }
}

impl DestHost for FakeDest {
    fn request(&mut self, req: &PeerRequest) -> Result<PeerReply, MigrateError> {
        match req {
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
            PeerRequest::Commit { .. } => {
                self.log.push("commit".into());
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
                Ok(push_report(b))
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
    }
}

fn dest(rounds: Vec<Result<u64, &'static str>>) -> FakeDest {
    FakeDest {
        rounds: rounds.into(),
        log: vec![],
        commit_fails: false,
    }
}

#[test]
fn rounds_converge_then_cutover_fences_final_round_commits_and_marks_moved() {
    let d = tempfile::tempdir().unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    // 100 MB, 30 MB (10 s at 10 MB/s -> continue), 1 MB (0.1 s -> fits), final 2 KB.
    let mut dest = dest(vec![
        Ok(100_000_000),
        Ok(30_000_000),
        Ok(1_000_000),
        Ok(2000),
    ]);
    let mut events = vec![];
    let r = migrate(&host, &mut dest, &opts(), &mut |e| events.push(e)).unwrap();
    assert_eq!(r.rounds.len(), 4);
    assert!(r.rounds[3].final_round);
    assert_eq!(r.cutover_reason, "fits");
    assert_eq!(r.bytes_moved, 131_002_000);
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
            "round 3 final=false",
            "round 4 final=true",
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

#[test]
fn stale_pre_copy_rounds_are_survived() {
    let d = tempfile::tempdir().unwrap();
    let host = FakeHost::new(d.path(), "ready", None);
    let mut dest = dest(vec![Ok(50_000_000), Err("stale"), Ok(100_000), Ok(10)]);
    let r = migrate(&host, &mut dest, &opts(), &mut |_| {}).unwrap();
    assert!(r.rounds[1].stale);
    assert!(r.rounds.last().unwrap().final_round);
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
