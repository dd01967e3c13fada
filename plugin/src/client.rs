//! Client side of daffe's sockets (hyperlocal): the CLI's way to the daemon.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A CLI call waits this long: the control API answers from the store in
/// milliseconds, so anything slower is a wedged daemon worth reporting.
const CALL_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
        message: String,
    },
    #[error("the daffe daemon at {socket} sent invalid JSON: {source}")]
    Json {
        socket: PathBuf,
        source: serde_json::Error,
    },
}

/// Sends `method path` with an optional JSON body; returns the JSON reply of
/// a 2xx answer, else the reply's `Err` as an error.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    call_within(socket, method, path, body, CALL_LIMIT).await
}

/// Like [`call`] with its own time limit, for routes that call AWS (the
/// daemon bounds those itself; `limit` should be a little longer).
pub async fn call_within(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
    limit: Duration,
) -> Result<serde_json::Value, ClientError> {
    let client: Client<UnixConnector, Full<Bytes>> = Client::unix();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(hyperlocal::Uri::new(socket, path))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Connect {
            socket: socket.to_owned(),
            message: e.to_string(),
        })?;
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                socket: socket.to_owned(),
                message: std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), |s| s.to_string()),
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Connect {
                socket: socket.to_owned(),
                message: e.to_string(),
            })?
            .to_bytes();
        Ok::<_, ClientError>((status, bytes))
    };
    let (status, bytes) =
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                socket: socket.to_owned(),
                secs: limit.as_secs(),
            })??;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
            socket: socket.to_owned(),
            source,
        })?;
    if !status.is_success() {
        let message = value["Err"].as_str().unwrap_or("(no message)").to_owned();
        return Err(ClientError::Status {
            socket: socket.to_owned(),
            status,
            message,
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
        let e = call_within(&sock, Method::GET, "/v1/volumes", None, limit)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();

        let e = call(&dir.path().join("absent.sock"), Method::GET, "/", None)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
