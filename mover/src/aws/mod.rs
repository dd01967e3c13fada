//! What every AWS client of daffe shares: a failed call as an [`ApiError`]
//! (operation, AWS error code, and the [`ErrorKind`] the one retry layer in
//! [`crate::retry`] acts on), and, with feature `aws`, the SDK configuration
//! (`config`: standard chain, overrides, a timeout on every call, SDK retries
//! off) and the conversion of SDK errors (`sdk_error`). The EBS snapshot
//! target and the daffe plugin's EC2 calls both use them.

#[cfg(feature = "aws")]
mod config;
#[cfg(feature = "aws")]
mod sdk_error;

#[cfg(feature = "aws")]
pub use config::{AwsConfigError, AwsOptions, CALL_TIMEOUT, load_sdk_config};
#[cfg(feature = "aws")]
pub use sdk_error::{classify_code, from_sdk_error};

use crate::retry::{ErrorKind, Retryable};

/// A failed call, with the operation and the AWS error code (or HTTP status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {code}: {message}")]
pub struct ApiError {
    /// The operation (`CreateVolume`, `PutSnapshotBlock`, ...).
    pub op: &'static str,
    /// How the retry layer treats it.
    pub kind: ErrorKind,
    /// AWS error code (`ValidationException`), or `HTTP 500` when the reply had none.
    pub code: String,
    /// AWS's message.
    pub message: String,
}

impl ApiError {
    /// An error of `op`, classified as `kind`.
    pub fn new(
        op: &'static str,
        kind: ErrorKind,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            op,
            kind,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl Retryable for ApiError {
    fn retry_kind(&self) -> ErrorKind {
        self.kind
    }
}
