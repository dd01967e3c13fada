//! The EBS backend: a daffe volume is an EBS volume in this host's zone.
//!
//! - [`backend`]: [`EbsBackend`]: Create, Mount, Unmount, Remove, profile
//!   changes; budgets; lookups by tag.
//! - [`attach`]: attach and detach, waits over AWS's attachment states.
//! - [`zone`]: the steps of `daffe migrate --via-ebs` (fence, attach for
//!   reading, copy into another zone, mark moved).
//! - [`create_record`]: what a Create sent, so that a rollback finds the
//!   volume a lost CreateVolume answer made.
//! - [`rebuild`]: records rebuilt from tagged volumes at start.
//! - [`tags`]: the `daffe:*` tags and what is read back from them.
//! - [`device`]: which block device an attached volume is (NVMe serials).
//! - [`fs`]: the filesystem steps of Mount (blkid, mkfs, mount).
//! - [`wait`]: time budgets and polling on a clock.
//! - [`error`]: the backend's errors, [`EbsError`].
//! - [`config`]: the daemon config's `[aws]` table.
//! - test doubles: [`loop_stand_in`] (loop devices for NVMe; tests and the
//!   `testing` feature only), `testkit` (unit tests only).
//!
//! The EC2 calls themselves are behind `crate::aws::Ec2Api`.

mod attach;
pub(crate) mod backend;
pub(crate) mod config;
mod create_record;
pub(crate) mod device;
pub(crate) mod error;
pub(crate) mod fs;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod loop_stand_in;
mod rebuild;
pub(crate) mod tags;
#[cfg(test)]
pub(crate) mod testkit;
pub(crate) mod wait;
pub(crate) mod zone;

#[cfg(test)]
mod tests;

pub(crate) use backend::{AwsSide, EbsBackend};
pub(crate) use config::EbsConfig;
pub(crate) use error::EbsError;
