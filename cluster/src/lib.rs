//! Cluster mode's core (issue 14): what one node must decide, without I/O.
//!
//! Docker Swarm schedules the containers; etcd holds who owns each volume.
//! This crate holds the rules daffe applies on top of them:
//!
//! - [`config`]: the `[cluster]` table (cluster name, this node, etcd
//!   endpoints and TLS, lease TTL), validated.
//! - [`keys`]: the etcd key layout, one prefix per cluster.
//! - [`label`]: node labels (`[cluster] labels`) and the `KEY=VALUE` a
//!   profile's `standby_label` asks of its standbys' nodes.
//! - [`epoch`]: ownership epochs. The owner key's etcd revision is the
//!   fencing token; [`epoch::Fence`] refuses anything older than the highest
//!   epoch seen per volume.
//! - [`lease`]: when a node must stop writing: a pure rule over the times
//!   its keep-alives were *sent*, since etcd may have received them later.
//! - [`coordinator`]: the few etcd operations cluster mode needs, as a
//!   trait; [`memory`] is its faithful double (revisions, leases that expire
//!   on a manual clock, compare-and-swap), for tests only.
//!
//! - [`etcd`] (feature `etcd`, on by default): the trait over a real etcd;
//!   [`conformance`] holds the behaviour tests both implementations pass.

pub mod config;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod coordinator;
pub mod epoch;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod keys;
pub mod label;
pub mod lease;
#[cfg(any(test, feature = "testing"))]
pub mod memory;

pub use config::{ClusterConfig, ConfigError};
pub use coordinator::{
    Claim, Coordinator, CoordinatorError, LeaseId, Owner, Removed, VolumeEntry, Writer,
};
pub use epoch::{Admitted, Epoch, Fence, StaleEpoch};
pub use lease::{LeaseRule, Standing};
