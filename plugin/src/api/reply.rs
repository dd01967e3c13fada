//! Replies, and the one place that turns errors into them.
//!
//! Failures go out as HTTP 500 with `{"Err": message}`, as Docker's own
//! plugin helpers do: dockerd passes the message on, so it reaches the
//! docker CLI ("Error response from daemon: ... VolumeDriver.Create: <ours>").

use super::request::ParseError;
use crate::service::{ErrorCode, ServiceError};
use hyper::StatusCode;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// Already serialised JSON sent instead of `body` (a cached List).
    pub raw: Option<bytes::Bytes>,
}

impl Reply {
    /// A success; adds the empty `Err` every VolumeDriver reply carries.
    pub fn ok(mut body: Value) -> Self {
        if let Value::Object(m) = &mut body {
            m.entry("Err")
                .or_insert_with(|| Value::String(String::new()));
        }
        Self::json(body)
    }

    /// A success carrying a plain JSON document (control API).
    pub fn json(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            raw: None,
        }
    }

    /// A success whose JSON is already serialised.
    pub fn raw(json: bytes::Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            body: Value::Null,
            raw: Some(json),
        }
    }

    /// The bytes to send.
    pub fn to_bytes(&self) -> bytes::Bytes {
        match &self.raw {
            Some(b) => b.clone(),
            None => serde_json::to_vec(&self.body).unwrap_or_default().into(),
        }
    }

    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "Err": message.into() }),
            raw: None,
        }
    }

    pub fn method_not_allowed(method: &hyper::Method) -> Self {
        Self::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        )
    }
}

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
pub fn status_of(code: ErrorCode) -> StatusCode {
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
