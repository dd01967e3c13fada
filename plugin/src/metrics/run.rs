//! The wire form of a short-lived command's final figures (`POST
//! /v1/reports`, issue 13 item 8): pure data and its bounds, no I/O, so the
//! fuzz crate compiles it with the control request parser (`fuzz/src/lib.rs`).
//! How each command fills it and posts it: `super::report`.

use serde::{Deserialize, Serialize};

/// Rounds one report may carry: a migration runs a few pre-copy rounds and
/// a final one (`--max-rounds` is small); far more is a broken client.
pub(crate) const MAX_ROUNDS: usize = 1000;

/// Longest volume name a report may carry (Docker's names are shorter):
/// it becomes a label value.
pub(crate) const MAX_VOLUME_LEN: usize = 255;

/// The command that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Command {
    Migrate,
    Sync,
    SnapshotPush,
    SnapshotPull,
}

impl Command {
    /// The `command` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Migrate => "migrate",
            Command::Sync => "sync",
            Command::SnapshotPush => "snapshot_push",
            Command::SnapshotPull => "snapshot_pull",
        }
    }
}

/// One finished run's figures. Strict on the wire: an unknown key is an
/// error, so a newer client's field is not silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunReport {
    pub(crate) command: Command,
    /// The volume moved (`migrate`); none for the others.
    #[serde(default)]
    pub(crate) volume: Option<String>,
    /// Data the source's scans listed (logical bytes).
    #[serde(default)]
    pub(crate) bytes_scanned: u64,
    /// Data that crossed to the destination (chunk payload, or EBS blocks).
    #[serde(default)]
    pub(crate) bytes_fetched: u64,
    /// Data written at the destination.
    #[serde(default)]
    pub(crate) bytes_written: u64,
    /// Each round's duration (a migration's pre-copy and final rounds; the
    /// sync or the snapshot transfer as one round), in milliseconds.
    #[serde(default)]
    pub(crate) round_ms: Vec<u64>,
    /// A migration's downtime, from the unmount to the destination owning
    /// the volume, in milliseconds.
    #[serde(default)]
    pub(crate) downtime_ms: Option<u64>,
    /// AWS API calls (every attempt) and retries among them.
    #[serde(default)]
    pub(crate) aws_calls: u64,
    #[serde(default)]
    pub(crate) aws_retries: u64,
}

impl RunReport {
    /// An empty report of `command`.
    pub(crate) fn new(command: Command) -> Self {
        RunReport {
            command,
            volume: None,
            bytes_scanned: 0,
            bytes_fetched: 0,
            bytes_written: 0,
            round_ms: Vec::new(),
            downtime_ms: None,
            aws_calls: 0,
            aws_retries: 0,
        }
    }

    /// Refuses what the registry should not take: too many rounds, a volume
    /// name that is no name.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.round_ms.len() > MAX_ROUNDS {
            return Err(format!(
                "{} rounds in one report (at most {MAX_ROUNDS})",
                self.round_ms.len()
            ));
        }
        if let Some(v) = &self.volume
            && (v.is_empty() || v.len() > MAX_VOLUME_LEN || v.chars().any(char::is_control))
        {
            return Err(format!(
                "volume {v:?} is not a volume name (1 to {MAX_VOLUME_LEN} printable characters)"
            ));
        }
        Ok(())
    }
}
