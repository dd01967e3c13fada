//! The one client of the control socket (hyperlocal), for the `daffe`
//! commands that talk to the local daemon: `volume`, `profiles`, `migrate`
//! (both kinds) and `agent`. They are plain threaded programs, so calls are
//! blocking (each on a small runtime of its own).
//!
//! A request is a [`ControlRequest`], encoded the way the daemon parses it;
//! the client waits for its answer as long as the daemon's limit for that
//! request plus [`CLIENT_MARGIN`]. A refusal comes back as
//! [`ClientError::Status`] with its typed [`ErrorCode`].

use super::request::ControlRequest;
use super::routes::Limits;
use crate::service::ErrorCode;
use crate::unix_http::UnixHttpError;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Waited beyond the daemon's own limit for a request: its timeout answer,
/// which names the step, must arrive before the client gives up (a local
/// socket delivers it in microseconds; 2 s absorbs a loaded host).
pub(crate) const CLIENT_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error(
        "cannot reach the daffe daemon at {socket}: {message} (is `daffe serve` running? see --control-socket)"
    )]
    Connect { socket: PathBuf, message: String },
    #[error("the daffe daemon at {socket} did not answer within {secs} s")]
    Timeout { socket: PathBuf, secs: u64 },
    #[error("the daffe daemon at {socket} answered {status}: {message}")]
    Status {
        socket: PathBuf,
        status: StatusCode,
        /// `None` from a daemon too old to send codes.
        code: Option<ErrorCode>,
        message: String,
    },
    #[error("the daffe daemon at {socket} sent invalid JSON: {source}")]
    Json {
        socket: PathBuf,
        source: serde_json::Error,
    },
    #[error("the daemon's reply to {path} is not what daffe expects: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot start a client runtime: {0}")]
    Runtime(std::io::Error),
}

impl ClientError {
    /// The daemon's code for a refusal.
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Status { code, .. } => *code,
            _ => None,
        }
    }

    /// The daemon refused because the volume is mounted.
    pub(crate) fn in_use(&self) -> bool {
        self.code() == Some(ErrorCode::InUse)
    }

    /// Trying again later may work: the daemon was unreachable, or slower
    /// than its limit.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. })
            || self.code() == Some(ErrorCode::Timeout)
    }
}

/// The local daemon, through its control socket.
#[derive(Debug, Clone)]
pub(crate) struct ControlClient {
    socket: PathBuf,
}

impl ControlClient {
    pub(crate) fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends `req`; the JSON reply of a 2xx answer, else the refusal.
    pub(crate) fn send(&self, req: &ControlRequest) -> Result<Value, ClientError> {
        let (method, path, body) = req.to_http();
        let limit = Limits::default().of(req) + CLIENT_MARGIN;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?
            .block_on(call(&self.socket, method, &path, body.as_ref(), limit))
    }

    /// Like [`ControlClient::send`], decoding the reply.
    pub(crate) fn send_as<T: DeserializeOwned>(
        &self,
        req: &ControlRequest,
    ) -> Result<T, ClientError> {
        let v = self.send(req)?;
        serde_json::from_value(v).map_err(|source| ClientError::Decode {
            path: req.to_http().1,
            source,
        })
    }
}

/// One call: `method path` with an optional JSON body, within `limit`.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&Value>,
    limit: Duration,
) -> Result<Value, ClientError> {
    let (status, bytes) = crate::unix_http::request(socket, method, path, body, limit)
        .await
        .map_err(|e| match e {
            UnixHttpError::Connect(message) => ClientError::Connect {
                socket: socket.to_owned(),
                message,
            },
            UnixHttpError::Timeout => ClientError::Timeout {
                socket: socket.to_owned(),
                secs: limit.as_secs(),
            },
        })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
        socket: socket.to_owned(),
        source,
    })?;
    if !status.is_success() {
        return Err(ClientError::Status {
            socket: socket.to_owned(),
            status,
            code: serde_json::from_value(value["Code"].clone()).ok(),
            message: value["Err"].as_str().unwrap_or("(no message)").to_owned(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_daemon_that_never_answers_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        // Accepts and holds connections, never answers: a wedged daemon.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let limit = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let e = call(&sock, Method::GET, "/v1/volumes", None, limit)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.is_transient());
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();

        let e = call(
            &dir.path().join("absent.sock"),
            Method::GET,
            "/",
            None,
            limit,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
