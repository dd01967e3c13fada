//! The etcd operations cluster mode needs, as a trait: the daemon's etcd
//! client implements it; [`crate::memory`] is its double for tests.
//!
//! Every write that decides something is one etcd transaction (compare,
//! then put or delete), so two nodes racing get one answer: one `Create`
//! makes the volume, one `claim` wins, and `Remove` cannot remove a volume
//! that a node owns.

use crate::epoch::Epoch;
use crate::keys::BadComponent;
use std::time::Duration;

/// An etcd lease, as etcd numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

/// Who owns a volume now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub epoch: Epoch,
    pub lease: LeaseId,
}

/// A volume's catalogue record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    pub name: String,
    /// The daemon's own serialization of the record (profile, size, ...).
    pub record: Vec<u8>,
    /// etcd's create revision: tells a re-created volume from the old one.
    pub created: u64,
}

/// The node that wrote a volume last, and the epoch it owned it at. A copy
/// written at any other epoch is stale. Stored as `NODE@EPOCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub node: String,
    pub epoch: Epoch,
}

impl Writer {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}@{}", self.node, self.epoch.0).into_bytes()
    }

    /// `None` for a value no daffe wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let (node, epoch) = s.rsplit_once('@')?;
        Some(Self {
            node: node.to_owned(),
            epoch: Epoch(epoch.parse().ok()?),
        })
    }

    /// Whether `node`'s copy, last written at `copy_epoch` (its own epoch
    /// then), holds this last write: the rule that keeps a stale copy from
    /// being served.
    pub fn is_copy(&self, node: &str, copy_epoch: Option<Epoch>) -> bool {
        self.node == node && Some(self.epoch) == copy_epoch
    }
}

/// The outcome of [`Coordinator::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the volume from this epoch on. The second field is
    /// the last writer (read in the same transaction), `None` for a volume
    /// never written: the claimer's copy is current only if that was itself
    /// at the epoch its copy was last written at. The claimer records
    /// itself as the writer ([`Coordinator::record_writer`]) only once it
    /// knows its copy is current, so a refused stale claim changes nothing.
    Won(Epoch, Option<Writer>),
    /// Another owner (or a newer ownership of this node) stands.
    Held(Owner),
}

/// The outcome of [`Coordinator::remove_volume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Removed,
    Absent,
    /// A node owns it (has it mounted, or keeps it as its writer).
    Owned(Owner),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// No quorum, a timeout, a refused connection: nothing was decided.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The lease expired or was revoked: this node owns nothing under it.
    #[error("lease {0:?} is gone (expired or revoked)")]
    LeaseGone(LeaseId),
    #[error(transparent)]
    BadKey(#[from] BadComponent),
    /// etcd refused the request for another reason (bad TLS files, a
    /// permission, a malformed answer): retrying will not help.
    #[error("etcd: {0}")]
    Failed(String),
}

/// One node's view of the cluster's consistent store.
pub trait Coordinator: Send + Sync {
    /// A new lease of `ttl`.
    fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordinatorError>;
    /// Renews `lease`; the caller records when it *sent* this (see
    /// [`crate::lease`]).
    fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordinatorError>;
    /// Ends `lease` at once, deleting what is attached to it.
    fn revoke(&self, lease: LeaseId) -> Result<(), CoordinatorError>;

    /// Creates the catalogue record unless one exists. Returns the record
    /// that stands and whether this call made it.
    fn create_volume(
        &self,
        name: &str,
        record: &[u8],
    ) -> Result<(VolumeEntry, bool), CoordinatorError>;
    fn volume(&self, name: &str) -> Result<Option<VolumeEntry>, CoordinatorError>;
    fn volumes(&self) -> Result<Vec<VolumeEntry>, CoordinatorError>;
    /// Removes the record (and its last-writer record) only if no node owns it.
    fn remove_volume(&self, name: &str) -> Result<Removed, CoordinatorError>;

    fn owner(&self, volume: &str) -> Result<Option<Owner>, CoordinatorError>;
    /// Takes ownership for `node` under `lease` if nobody owns the volume,
    /// or, for a planned handover, if `handover_from` is still the current
    /// epoch. The new epoch is the owner key's new revision.
    fn claim(
        &self,
        volume: &str,
        node: &str,
        lease: LeaseId,
        handover_from: Option<Epoch>,
    ) -> Result<Claim, CoordinatorError>;
    /// Gives ownership up if `epoch` is still current; false if it was not.
    /// The last-writer record stays.
    fn release(&self, volume: &str, epoch: Epoch) -> Result<bool, CoordinatorError>;
    /// Who wrote `volume` last (kept after the owner's lease is gone).
    fn writer(&self, volume: &str) -> Result<Option<Writer>, CoordinatorError>;
    /// Records `node` as the writer at `epoch`, if `epoch` is still the
    /// owner's; false if it is not (ownership already lost).
    fn record_writer(
        &self,
        volume: &str,
        node: &str,
        epoch: Epoch,
    ) -> Result<bool, CoordinatorError>;

    /// Announces this node (its agent address, ...) under its lease.
    fn register_node(
        &self,
        node: &str,
        info: &[u8],
        lease: LeaseId,
    ) -> Result<(), CoordinatorError>;
    /// The nodes whose lease is alive, with what they announced.
    fn nodes(&self) -> Result<Vec<(String, Vec<u8>)>, CoordinatorError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_round_trips_and_names_the_current_copy() {
        let w = Writer {
            node: "swnode-1".into(),
            epoch: Epoch(42),
        };
        assert_eq!(Writer::decode(&w.encode()), Some(w.clone()));
        assert_eq!(Writer::decode(b"no-epoch"), None);
        assert_eq!(Writer::decode(b"n@x"), None);
        // (node, copy epoch, current?)
        for (node, copy, current) in [
            ("swnode-1", Some(42), true),
            ("swnode-1", Some(41), false),
            ("swnode-1", None, false),
            ("swnode-2", Some(42), false),
        ] {
            assert_eq!(w.is_copy(node, copy.map(Epoch)), current, "{node} {copy:?}");
        }
    }
}
