//! The one place that turns service errors into replies, for both sockets:
//! the status comes from the error's code ([`status_of`]).
//!
//! Failures go out with `{"Err": message}`, as Docker's own plugin helpers
//! do: dockerd passes the message on, so it reaches the docker CLI ("Error
//! response from daemon: ... VolumeDriver.Create: <ours>"). The control API
//! adds the code (`"Code": "in_use"`, [`coded`]); VolumeDriver replies keep
//! Docker's shape.

use super::request::ParseError;
use crate::server::Reply;
use crate::service::{ErrorCode, ServiceError};
use hyper::StatusCode;
use serde_json::json;

impl From<ParseError> for Reply {
    fn from(e: ParseError) -> Self {
        let status = match e {
            ParseError::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            ParseError::Body { .. } => StatusCode::BAD_REQUEST,
        };
        Self::error(status, e.to_string())
    }
}

/// The HTTP status of each kind of failure.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Invalid => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Exists
        | ErrorCode::InUse
        | ErrorCode::NotMountable
        | ErrorCode::Moved
        | ErrorCode::Refused => StatusCode::CONFLICT,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ServiceError> for Reply {
    fn from(e: ServiceError) -> Self {
        let status = status_of(e.code());
        match status {
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {
                tracing::info!(error = %e, "refused")
            }
            _ => tracing::warn!(error = %e, "failed"),
        }
        Self::error(status, e.to_string())
    }
}

/// A control API failure: status, code and message.
pub(crate) fn failure(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Reply {
    let mut r = Reply::error(status, message);
    r.body["Code"] = json!(code);
    r
}

/// A service failure with its code (control API).
pub(crate) fn coded(e: ServiceError) -> Reply {
    let code = e.code();
    let mut r = Reply::from(e);
    r.body["Code"] = json!(code);
    r
}
