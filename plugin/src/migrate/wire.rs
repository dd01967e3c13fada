//! What `daffe migrate` asks the destination's agent, and what cluster
//! nodes' agents tell each other (standby rounds' marks, pulls): JSON in the
//! peer protocol's `Control` messages; the mover carries them, opaque.

use crate::service::migrate::ReceiveCheck;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a cluster owner tells a standby of the round that follows (sent in the
/// Standby request, before the round's data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RoundMark {
    /// The root of the manifest the owner scanned (hex): the round, once
    /// committed, leaves exactly this on the standby.
    pub(crate) root: String,
    /// When the scan started (the freeze, for a sealed round), Unix ms by
    /// the owner's clock.
    pub(crate) at_unix_ms: u64,
    /// The scan ran with the filesystem frozen: a consistent image.
    pub(crate) sealed: bool,
}

/// What `daffe volume move` did (the pulling daemon's answer, also over the
/// agents' protocol when another node pulled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PullReport {
    pub(crate) volume: String,
    /// The node that holds the volume's latest copy now.
    pub(crate) node: String,
    /// The node it came from; none: that node's copy was the latest already.
    pub(crate) from: Option<String>,
    pub(crate) ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum PeerRequest {
    /// Phase I: does the destination have the profile and the room?
    Preflight {
        volume: String,
        options: BTreeMap<String, String>,
        need_bytes: u64,
    },
    /// Create (or find, when resuming) the volume in state `Receiving`.
    Prepare {
        volume: String,
        options: BTreeMap<String, String>,
    },
    /// The final round is applied: the destination owns the volume now.
    /// `token`: what `Prepared` gave this run (a stale run is refused).
    Commit { volume: String, token: String },
    /// `daffe status --health --agent`: is the agent up, and its daemon?
    Health,
    /// Does the destination own the volume, received from this source? A
    /// rerun after a commit whose reply was lost asks before anything else.
    CommitStatus { volume: String },
    /// Cluster mode: the asker owns the volume now but its copy is stale;
    /// this node wrote it last: send it over (a whole migration to the
    /// asker's agent). Answered when it is committed there.
    Handover { volume: String },
    /// Cluster mode, `daffe volume move --to THIS-NODE` run elsewhere: make
    /// this node's copy the latest (its daemon pulls it from the last writer).
    Pull { volume: String },
    /// Cluster mode: the asker owns the volume at `epoch` and will stream
    /// pre-copy rounds into this node's copy, a warm standby (never
    /// committed by those rounds; a handover commits it). `mark`: what the
    /// round that follows will leave there (failover checks it).
    Standby {
        volume: String,
        epoch: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mark: Option<RoundMark>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum PeerReply {
    Preflight(ReceiveCheck),
    /// The volume is receiving; rounds and the commit carry `token`.
    Prepared {
        token: String,
    },
    /// Milliseconds since the Unix epoch when the destination became owner.
    Committed {
        ready_unix_ms: u64,
    },
    /// The agent answered; `daemon_error` says why its daemon did not.
    Health {
        version: String,
        daemon_error: Option<String>,
    },
    /// `true`: the destination owns the volume, received from the asker.
    CommitStatus {
        committed: bool,
    },
    /// The volume was sent and committed on the asker: bytes moved, time.
    HandedOver {
        bytes: u64,
        ms: u64,
    },
    Pulled(PullReport),
    /// This node's copy receives the asker's rounds now; `token` goes in
    /// the round that follows (as `Prepared`'s does in a migration).
    Standby {
        token: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let r = PeerRequest::Commit {
            volume: "counter@gold".into(),
            token: "ab".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"commit","volume":"counter@gold","token":"ab"}"#);
        assert_eq!(serde_json::from_str::<PeerRequest>(&s).unwrap(), r);
        assert!(serde_json::from_str::<PeerRequest>(r#"{"op":"rm -rf"}"#).is_err());
    }
}
