//! `GET /v1/status` and `GET /v1/health`: what `daffe status` shows. The
//! report is built by a pure function from the volume views, the start time
//! and the recent warnings and errors this process logged (kept in a small
//! ring that the logging layer fills, see `cli::logging`).

use crate::service::VolumeView;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

/// Warnings and errors kept for `daffe status`: enough to see what went
/// wrong lately, small enough to answer in one screen.
pub(crate) const RECENT_ERRORS: usize = 10;

/// One warning or error the daemon logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct LoggedError {
    /// RFC 3339, UTC.
    pub(crate) at: String,
    /// `WARN` or `ERROR`.
    pub(crate) level: String,
    pub(crate) message: String,
}

/// The last [`RECENT_ERRORS`] warnings and errors, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Recent(VecDeque<LoggedError>);

impl Recent {
    /// Keeps `e`, dropping the oldest beyond the limit.
    pub(crate) fn push(&mut self, e: LoggedError) {
        if self.0.len() == RECENT_ERRORS {
            self.0.pop_front();
        }
        self.0.push_back(e);
    }

    pub(crate) fn to_vec(&self) -> Vec<LoggedError> {
        self.0.iter().cloned().collect()
    }
}

/// This process's ring (one daemon per process).
static RECENT: Mutex<Recent> = Mutex::new(Recent(VecDeque::new()));

/// Called by the logging layer for each warning and error.
pub(crate) fn remember(level: &str, message: String) {
    let at = crate::time::rfc3339(now_secs());
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(LoggedError {
            at,
            level: level.to_owned(),
            message,
        });
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The recent warnings and errors, oldest first.
pub(crate) fn recent() -> Vec<LoggedError> {
    RECENT.lock().unwrap_or_else(|e| e.into_inner()).to_vec()
}

/// A migration in progress (or done) that this host takes part in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct MoveView {
    pub(crate) volume: String,
    pub(crate) state: &'static str,
    /// The other host (`to` when sending, `from` when receiving).
    pub(crate) peer: String,
}

/// Mount totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct MountTotals {
    /// Volumes mounted at least once.
    pub(crate) volumes: u64,
    /// Mounts over all volumes (a volume mounted by two containers counts 2).
    pub(crate) total: u64,
}

/// What `daffe status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StatusReport {
    pub(crate) version: String,
    pub(crate) pid: u32,
    /// RFC 3339, UTC.
    pub(crate) started_at: String,
    pub(crate) uptime_secs: u64,
    pub(crate) backend: profiles::BackendKind,
    pub(crate) volumes_total: u64,
    /// Volumes per state (`ready`, `moving`, ...); states with none left out.
    pub(crate) volumes: BTreeMap<&'static str, u64>,
    pub(crate) mounts: MountTotals,
    /// Volumes being sent or received (`moving`, `fenced`, `receiving`).
    pub(crate) moves: Vec<MoveView>,
    /// The hosts of those moves: the agents this host talks to now.
    pub(crate) peers: Vec<String>,
    pub(crate) last_errors: Vec<LoggedError>,
}

/// The process facts of a report.
#[derive(Debug, Clone)]
pub(crate) struct Daemon {
    pub(crate) version: String,
    pub(crate) pid: u32,
    pub(crate) started_secs: u64,
    pub(crate) backend: profiles::BackendKind,
}

/// Builds the report (pure).
pub(crate) fn report(
    d: &Daemon,
    now_secs: u64,
    views: &[VolumeView],
    last_errors: Vec<LoggedError>,
) -> StatusReport {
    let mut volumes = BTreeMap::new();
    let mut mounts = MountTotals::default();
    let mut moves = Vec::new();
    let mut peers = BTreeSet::new();
    for v in views {
        let state = &v.record.state;
        *volumes.entry(state.as_str()).or_insert(0) += 1;
        if v.mount_count > 0 {
            mounts.volumes += 1;
            mounts.total += v.mount_count;
        }
        let in_progress = matches!(state.as_str(), "moving" | "fenced" | "receiving");
        if let (true, Some(peer)) = (in_progress, state.peer()) {
            moves.push(MoveView {
                volume: v.record.docker_name.clone(),
                state: state.as_str(),
                peer: peer.to_owned(),
            });
            peers.insert(peer.to_owned());
        }
    }
    StatusReport {
        version: d.version.clone(),
        pid: d.pid,
        started_at: crate::time::rfc3339(d.started_secs),
        uptime_secs: now_secs.saturating_sub(d.started_secs),
        backend: d.backend,
        volumes_total: views.len() as u64,
        volumes,
        mounts,
        moves,
        peers: peers.into_iter().collect(),
        last_errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_ten_oldest_first() {
        let mut r = Recent::default();
        for i in 0..15 {
            r.push(LoggedError {
                at: String::new(),
                level: "WARN".into(),
                message: format!("e{i}"),
            });
        }
        let v = r.to_vec();
        assert_eq!(v.len(), RECENT_ERRORS);
        assert_eq!(v[0].message, "e5");
        assert_eq!(v[9].message, "e14");
    }
}
