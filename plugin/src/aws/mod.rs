//! The plugin's AWS side: the EC2 calls the EBS backend makes, behind the
//! [`ec2::Ec2Api`] trait (the seam to AWS), with the SDK implementation
//! ([`ec2_sdk`]), a faithful in-memory double for unit tests (`ec2_memory`,
//! compiled for tests only), and this instance's identity (instance id and
//! zone, from IMDS or the config: [`identity`]).
//!
//! SDK configuration (standard chain, endpoint/region overrides, timeouts,
//! SDK retries off) comes from `mover::aws` and the one retry layer from
//! `mover::retry`, so EC2 and EBS calls behave alike.

pub(crate) mod ec2;
#[cfg(test)]
pub(crate) mod ec2_memory;
pub(crate) mod ec2_sdk;
pub(crate) mod identity;

pub(crate) use ec2::{Ec2Api, Filter, Modify, NewVolume, VolumeFacts};
pub(crate) use mover::aws::ApiError;
