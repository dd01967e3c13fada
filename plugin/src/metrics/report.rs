//! What a short-lived command did, for the daemon's registry (issue 13,
//! item 8). `daffe migrate`, `daffe sync` and `daffe snapshot push/pull`
//! run in their own process, so their figures would die with it: at the
//! end each one posts a [`RunReport`] to the local daemon's control socket
//! (`POST /v1/reports`), which adds it to its metrics
//! ([`super::Metrics::run_report`]). No daemon (a host that only runs
//! `daffe sync`) costs nothing: the report is dropped with a debug line; a
//! daemon that refuses it is one warning. The command's own result never
//! depends on it.

pub(crate) use super::run::{Command, RunReport};
use crate::control::{ControlClient, ControlRequest};
use crate::migrate::report::Report as MigrateReport;
use mover::SyncStats;
use mover::snapshot::{PullReport, PushReport};
use std::path::Path;

impl RunReport {
    /// A `daffe sync`: one round.
    pub(crate) fn of_sync(s: &SyncStats) -> Self {
        RunReport {
            bytes_scanned: s.bytes_scanned,
            bytes_fetched: s.rounds.bytes_fetched,
            bytes_written: s.rounds.bytes_written,
            round_ms: vec![s.duration_ms],
            ..Self::new(Command::Sync)
        }
    }

    /// A host-to-host `daffe migrate`: its rounds and its downtime.
    pub(crate) fn of_migrate(r: &MigrateReport) -> Self {
        let sum = |f: fn(&crate::migrate::report::RoundReport) -> u64| {
            r.rounds.iter().map(f).fold(0u64, u64::saturating_add)
        };
        RunReport {
            volume: Some(r.volume.clone()),
            bytes_scanned: sum(|x| x.bytes_scanned),
            bytes_fetched: sum(|x| x.bytes),
            bytes_written: sum(|x| x.bytes_written),
            round_ms: r
                .rounds
                .iter()
                .map(|x| x.scan_ms.saturating_add(x.transfer_ms))
                .collect(),
            downtime_ms: Some(r.downtime_ms),
            ..Self::new(Command::Migrate)
        }
    }

    /// A `daffe snapshot push`: the image scanned, the blocks uploaded.
    pub(crate) fn of_push(r: &PushReport) -> Self {
        RunReport {
            bytes_scanned: r.source_bytes,
            bytes_fetched: r.bytes_uploaded,
            round_ms: vec![secs_to_ms(r.duration_secs)],
            aws_calls: r.calls,
            aws_retries: r.retries,
            ..Self::new(Command::SnapshotPush)
        }
    }

    /// A `daffe snapshot pull`: the blocks fetched and written.
    pub(crate) fn of_pull(r: &PullReport) -> Self {
        RunReport {
            bytes_scanned: r.bytes,
            bytes_fetched: r
                .blocks_fetched
                .saturating_mul(u64::try_from(mover::snapshot::BLOCK_SIZE).unwrap_or(u64::MAX)),
            bytes_written: r.bytes_written,
            round_ms: vec![secs_to_ms(r.duration_secs)],
            aws_calls: r.calls,
            aws_retries: r.retries,
            ..Self::new(Command::SnapshotPull)
        }
    }
}

/// Whole milliseconds of a report's seconds (saturating; NaN is 0).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "`as` from f64 saturates (NaN and negatives give 0); rounded first"
)]
fn secs_to_ms(s: f64) -> u64 {
    (s * 1000.0).round() as u64
}

/// Posts `report` to the daemon at `socket`. Never fails the caller: no
/// socket there is a debug line (no daemon on this host), any other
/// failure one warning.
pub(crate) fn post(socket: &Path, report: RunReport) {
    let command = report.command.as_str();
    if !socket.exists() {
        tracing::debug!(
            socket = %socket.display(),
            "no daffe daemon here: the {command} report is not kept in its metrics"
        );
        return;
    }
    if let Err(e) = ControlClient::new(socket).send(&ControlRequest::Report(report)) {
        tracing::warn!("the {command} report did not reach the daemon's metrics: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::run::MAX_ROUNDS;
    use super::*;
    use crate::migrate::report::RoundReport;

    #[test]
    fn a_migration_sums_its_rounds_and_keeps_its_downtime() {
        let round = |bytes, scanned, written, ms| RoundReport {
            bytes,
            bytes_scanned: scanned,
            bytes_written: written,
            scan_ms: ms,
            transfer_ms: ms,
            ..Default::default()
        };
        let r = MigrateReport {
            volume: "db".into(),
            rounds: vec![round(100, 1000, 90, 10), round(5, 1000, 5, 2)],
            downtime_ms: 1234,
            ..Default::default()
        };
        let got = RunReport::of_migrate(&r);
        assert_eq!(got.command, Command::Migrate);
        assert_eq!(got.volume.as_deref(), Some("db"));
        assert_eq!(
            (got.bytes_scanned, got.bytes_fetched, got.bytes_written),
            (2000, 105, 95)
        );
        assert_eq!(got.round_ms, vec![20, 4]);
        assert_eq!(got.downtime_ms, Some(1234));
        assert!(got.check().is_ok());
    }

    #[test]
    fn the_wire_form_is_strict_and_bounded() {
        let r: RunReport =
            serde_json::from_str(r#"{"command":"snapshot_push","aws_calls":7,"aws_retries":2}"#)
                .unwrap();
        assert_eq!(r.command, Command::SnapshotPush);
        assert_eq!((r.aws_calls, r.aws_retries), (7, 2));
        assert!(serde_json::from_str::<RunReport>(r#"{"command":"sync","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<RunReport>(r#"{"command":"rm"}"#).is_err());

        let mut many = RunReport::new(Command::Migrate);
        many.round_ms = vec![1; MAX_ROUNDS + 1];
        assert!(many.check().unwrap_err().contains("rounds"));
        let mut bad = RunReport::new(Command::Migrate);
        bad.volume = Some("a\nb".into());
        assert!(bad.check().is_err());
        bad.volume = Some(String::new());
        assert!(bad.check().is_err());
    }

    #[test]
    fn no_daemon_is_no_error_and_no_wait() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        post(
            &dir.path().join("absent.sock"),
            RunReport::new(Command::Sync),
        );
        // A dead socket file (a daemon that died): a refused connect, one
        // warning, no panic, no wait.
        let sock = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        post(&sock, RunReport::new(Command::Sync));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn seconds_become_whole_milliseconds() {
        assert_eq!(secs_to_ms(1.2344), 1234);
        assert_eq!(secs_to_ms(f64::NAN), 0);
        assert_eq!(secs_to_ms(-1.0), 0);
    }
}
