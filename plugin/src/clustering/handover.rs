//! Bringing a stale copy up to date (issue 14, the data path). When a Mount
//! on node B finds that node A wrote the volume last, B asks A's agent to
//! hand the volume over: A's agent checks with A's daemon that B owns the
//! volume now and that A's copy holds the last write, then runs the same
//! migration `daffe migrate` runs (rounds to B's agent, A fenced and marked
//! moved, B commits). B's Mount waits for that, then adopts the copy.
//!
//! - [`Handover`]: B's side of the request, a remote behind a trait (the
//!   service tests use a double);
//! - [`AgentHandover`]: the real one, over the agents' mutual TLS with this
//!   node's agent certificate;
//! - [`HandoverPlan`]: what A's daemon answers its agent.

use crate::migrate::wire::{PeerReply, PeerRequest, PullReport};
use mover::net::identity;
use mover::net::tls;
use mover::net::{Endpoint, NodeFiles, Peer};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The first contact with the writer's agent: an agent that does not answer
/// within this is down or the wrong host.
const CONNECT: Duration = Duration::from_secs(5);

/// What the last writer's daemon tells its agent: where the new owner's
/// agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandoverPlan {
    pub(crate) agent: String,
}

/// What a handover carried, as the writer's agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handed {
    /// Bytes that crossed (what the asker's copy lacked: the whole volume
    /// into a blank copy, the last delta into a warm standby).
    pub(crate) bytes: u64,
    /// The writer's side, from its plan to the commit.
    pub(crate) ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverError {
    #[error("reaching node {node}'s agent at {agent}: {message}")]
    Reach {
        node: String,
        agent: String,
        message: String,
    },
    #[error("node {node}'s agent refused or failed the handover: {message}")]
    Failed { node: String, message: String },
    #[error("this node's agent certificate in {dir}: {message}")]
    Identity { dir: String, message: String },
}

/// Asks other nodes' agents for volumes.
pub(crate) trait Handover: Send + Sync {
    /// Returns once node `node` (agent at `agent`) sent `docker_name` to this
    /// node's agent and it was committed here, or failed; within `limit`.
    fn handover(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        limit: Duration,
    ) -> Result<Handed, HandoverError>;

    /// `daffe volume move --to NODE`: asks node `node` (agent at `agent`)
    /// to make its copy of `docker_name` the latest; within `limit`.
    fn pull(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        limit: Duration,
    ) -> Result<PullReport, HandoverError>;
}

/// [`Handover`] over the agents' protocol.
pub(crate) struct AgentHandover {
    /// Read at each handover (a rotated certificate is picked up); checked
    /// once at start.
    files: NodeFiles,
    dir: String,
    node: String,
}

impl AgentHandover {
    /// With the certificate in `dir` (that of this node's agent: its name
    /// is this node's, which the writer checks against the volume's owner).
    pub(crate) fn new(dir: &Path, node: &str) -> Result<Self, HandoverError> {
        let me = Self {
            files: NodeFiles::in_dir(dir),
            dir: dir.display().to_string(),
            node: node.to_owned(),
        };
        tls::client_config(&me.files).map_err(|e| me.identity(e))?;
        // Peers know this node by its certificate's name (issue 12, finding
        // 5): one naming another node would be refused at every handover.
        let certified = identity::node_name(&me.files).map_err(|e| me.identity(e))?;
        if certified != node {
            return Err(me.identity(format!(
                "the certificate names node {certified}, not this node ({node}); issue one \
                 for {node} with `daffe agent issue --node {node}`"
            )));
        }
        Ok(me)
    }

    fn identity(&self, e: impl std::fmt::Display) -> HandoverError {
        HandoverError::Identity {
            dir: self.dir.clone(),
            message: e.to_string(),
        }
    }
}

impl AgentHandover {
    /// One request to `node`'s agent and its reply, within `limit`.
    fn ask(
        &self,
        node: &str,
        agent: &str,
        req: &PeerRequest,
        limit: Duration,
    ) -> Result<PeerReply, HandoverError> {
        let reach = |message: String| HandoverError::Reach {
            node: node.to_owned(),
            agent: agent.to_owned(),
            message,
        };
        let tls = tls::client_config(&self.files).map_err(|e| self.identity(e))?;
        // Pinned: the agent there must be `node` by its certificate.
        let mut ep = Endpoint::new(&self.node).expecting(node);
        // The reply comes when the whole of the work is done.
        ep.io_timeout = limit;
        let mut peer = Peer::connect_within(agent, &tls, &ep, CONNECT.min(limit))
            .map_err(|e| reach(e.to_string()))?;
        let body = serde_json::to_vec(req).map_err(|e| reach(e.to_string()))?;
        let failed = |message: String| HandoverError::Failed {
            node: node.to_owned(),
            message,
        };
        let reply = peer.control(&body).map_err(|e| failed(e.to_string()))?;
        peer.bye();
        serde_json::from_slice::<PeerReply>(&reply)
            .map_err(|e| failed(format!("unreadable reply: {e}")))
    }
}

impl Handover for AgentHandover {
    fn handover(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        limit: Duration,
    ) -> Result<Handed, HandoverError> {
        let req = PeerRequest::Handover {
            volume: docker_name.to_owned(),
        };
        match self.ask(node, agent, &req, limit)? {
            PeerReply::HandedOver { bytes, ms } => Ok(Handed { bytes, ms }),
            other => Err(HandoverError::Failed {
                node: node.to_owned(),
                message: format!("unexpected reply {other:?}"),
            }),
        }
    }

    fn pull(
        &self,
        node: &str,
        agent: &str,
        docker_name: &str,
        limit: Duration,
    ) -> Result<PullReport, HandoverError> {
        let req = PeerRequest::Pull {
            volume: docker_name.to_owned(),
        };
        match self.ask(node, agent, &req, limit)? {
            PeerReply::Pulled(r) => Ok(r),
            other => Err(HandoverError::Failed {
                node: node.to_owned(),
                message: format!("unexpected reply {other:?}"),
            }),
        }
    }
}
