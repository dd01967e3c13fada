//! The AWS side: SDK configuration shared by every AWS client daffe makes
//! (`config`), the classification of SDK errors for the one retry layer
//! (`errors`), and the EBS direct-API implementation of `SnapshotApi` (`ebs`).
//!
//! Behind the mover feature `aws`, so the core builds without the SDK.

pub mod config;
pub mod ebs;
pub mod errors;

pub use config::{AwsConfigError, AwsOptions, load_sdk_config};
pub use ebs::AwsSnapshotApi;
pub use errors::{classify_code, from_sdk_error};
