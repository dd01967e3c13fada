//! `daffe cluster status`: the nodes alive in etcd, every catalogued
//! volume with its owner, epoch and last writer, and this node's lease.

use super::catalogue::CatalogueRecord;
use super::fencing::boot_ms;
use super::{ClusterError, ClusterNode, NodeInfo, lock};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClusterStatus {
    pub(crate) cluster: String,
    pub(crate) node: String,
    /// This node's lease (etcd's id).
    pub(crate) lease: i64,
    /// The lease rule's verdict: writes are safe for this long (0: fenced).
    pub(crate) writable_for_ms: u64,
    pub(crate) fenced: bool,
    pub(crate) uptime_secs: u64,
    pub(crate) nodes: Vec<NodeRow>,
    pub(crate) volumes: Vec<VolumeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeRow {
    pub(crate) name: String,
    pub(crate) agent: Option<String>,
    pub(crate) version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VolumeRow {
    pub(crate) name: String,
    pub(crate) docker_name: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) owner: Option<String>,
    pub(crate) epoch: Option<u64>,
    /// Who owned it last, and at which epoch (a copy of another epoch is stale).
    pub(crate) last_writer: Option<String>,
    pub(crate) last_epoch: Option<u64>,
    /// Standby copies and their lag, as the owner knows them (filled in by
    /// the daemon on the owner; empty elsewhere).
    pub(crate) standbys: Vec<super::standby::StandbyLag>,
    /// This node's last failover takeover of the volume (filled in by the
    /// daemon of the node that took it over).
    pub(crate) last_takeover: Option<crate::service::LastTakeover>,
}

impl ClusterNode {
    pub(crate) fn status(&self) -> Result<ClusterStatus, ClusterError> {
        let (lease, acked, fenced) = {
            let t = lock(&self.term);
            (t.lease, t.acked_sent_ms, t.fenced)
        };
        let until = self.rule.writable_until(acked);
        let nodes = self
            .coord
            .nodes()?
            .into_iter()
            .map(|(name, bytes)| {
                let info: Option<NodeInfo> = serde_json::from_slice(&bytes).ok();
                NodeRow {
                    name,
                    agent: info.as_ref().map(|i| i.agent.clone()),
                    version: info.map(|i| i.version),
                }
            })
            .collect();
        let mut volumes = Vec::new();
        for entry in self.coord.volumes()? {
            let rec = CatalogueRecord::decode(&entry.name, &entry.record).ok();
            let owner = self.coord.owner(&entry.name)?;
            let writer = self.coord.writer(&entry.name)?;
            volumes.push(VolumeRow {
                docker_name: rec.as_ref().map(|r| r.docker_name.clone()),
                profile: rec.map(|r| r.profile),
                owner: owner.as_ref().map(|o| o.node.clone()),
                epoch: owner.map(|o| o.epoch.0),
                last_writer: writer.as_ref().map(|w| w.node.clone()),
                last_epoch: writer.map(|w| w.epoch.0),
                standbys: Vec::new(),
                last_takeover: None,
                name: entry.name,
            });
        }
        Ok(ClusterStatus {
            cluster: self.cfg.name.clone(),
            node: self.cfg.node.clone(),
            lease: lease.0,
            writable_for_ms: if fenced {
                0
            } else {
                until.saturating_sub(boot_ms())
            },
            fenced,
            uptime_secs: self.started.elapsed().as_secs(),
            nodes,
            volumes,
        })
    }
}
