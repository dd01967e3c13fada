//! One HTTP request over a unix socket (hyperlocal), bounded in time: the
//! control client (`control::client`) and the Docker Engine client
//! (`follow::engine`) share it; each maps the failure into its own error.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Escapes everything but unreserved characters (RFC 3986), for a path
/// segment or a query value of a request (volume, container and service
/// names, a JSON filter).
pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(c).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// Why a request got no reply.
#[derive(Debug)]
pub(crate) enum UnixHttpError {
    /// Nothing answered on the socket, or the exchange broke (the innermost
    /// cause, which names the socket error rather than hyper's wrapper).
    Connect(String),
    /// No whole reply within the limit.
    Timeout,
}

/// `method path` on `socket` with an optional JSON body; the reply's status
/// and body, within `limit`.
pub(crate) async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&Value>,
    limit: Duration,
) -> Result<(StatusCode, Bytes), UnixHttpError> {
    let client: Client<UnixConnector, Full<Bytes>> = Client::unix();
    let connect = |e: &dyn std::error::Error| {
        UnixHttpError::Connect(e.source().map_or_else(|| e.to_string(), |s| s.to_string()))
    };
    let mut req = Request::builder()
        .method(method)
        .uri(hyperlocal::Uri::new(socket, path));
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(
            body.map(Value::to_string).unwrap_or_default(),
        )))
        .map_err(|e| connect(&e))?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| connect(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(&e))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| UnixHttpError::Timeout)?
}
