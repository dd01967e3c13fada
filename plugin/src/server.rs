//! HTTP/1 over a unix socket (hyper 1), shared by the VolumeDriver socket and
//! the control socket: a [`Handler`] turns (method, path, body) into a
//! [`Reply`].
//!
//! `serve(listener, handler, shutdown)` takes its listener and shutdown signal
//! as arguments, so tests bind a temporary socket and stop it at will. On
//! shutdown it stops accepting, asks open connections to finish their current
//! request, and waits for them (bounded by [`DRAIN_LIMIT`]).

use crate::peer::{PeerPolicy, peer_of};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest request body read: VolumeDriver bodies are a name, an ID and a few
/// options; anything bigger is a mistake or an attack.
const MAX_BODY: usize = 1 << 20;

/// How long shutdown waits for in-flight requests: longer than the slowest
/// handler's limit would hold up a systemd stop; a request cut off here is
/// answered by dockerd's retry against the restarted daemon.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// A request's head (its line and headers) must arrive within this, and an
/// idle kept-alive connection is closed after it (issue 12, low finding):
/// without it, a local client that connects and sends nothing, or a byte a
/// minute, held a task and a descriptor for ever. dockerd and the CLI send
/// a request at once.
pub(crate) const HEADER_LIMIT: Duration = Duration::from_secs(10);

/// A request's body must arrive within this (it is at most [`MAX_BODY`]).
pub(crate) const BODY_LIMIT: Duration = Duration::from_secs(10);

/// Largest request head: a VolumeDriver or control request has a line and a
/// handful of short headers.
const MAX_HEADER: usize = 64 << 10;

/// A JSON reply: a status and a body (`{"Err": ...}` for failures).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    /// Already serialised JSON sent instead of `body` (a cached List).
    pub(crate) raw: Option<bytes::Bytes>,
}

impl Reply {
    /// A success; adds the empty `Err` every VolumeDriver reply carries.
    pub(crate) fn ok(mut body: Value) -> Self {
        if let Value::Object(m) = &mut body {
            m.entry("Err")
                .or_insert_with(|| Value::String(String::new()));
        }
        Self::json(body)
    }

    /// A success carrying a plain JSON document (control API).
    pub(crate) fn json(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            raw: None,
        }
    }

    /// A success whose JSON is already serialised.
    pub(crate) fn raw(json: bytes::Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            body: Value::Null,
            raw: Some(json),
        }
    }

    /// The bytes to send.
    /// A reply that is not JSON: `body` sent as is with `content_type`
    /// (the metrics' text format). The content type rides in `body`, which
    /// a raw reply does not otherwise use.
    pub(crate) fn text(content_type: &'static str, body: String) -> Self {
        Self {
            status: StatusCode::OK,
            body: Value::String(content_type.to_owned()),
            raw: Some(body.into()),
        }
    }

    /// The reply's content type: Docker's plugin JSON unless [`Reply::text`].
    pub(crate) fn content_type(&self) -> &str {
        match (&self.raw, &self.body) {
            (Some(_), Value::String(ct)) => ct,
            _ => "application/vnd.docker.plugins.v1.2+json",
        }
    }

    pub(crate) fn to_bytes(&self) -> bytes::Bytes {
        match &self.raw {
            Some(b) => b.clone(),
            None => serde_json::to_vec(&self.body).unwrap_or_default().into(),
        }
    }

    pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "Err": message.into() }),
            raw: None,
        }
    }

    pub(crate) fn method_not_allowed(method: &hyper::Method) -> Self {
        Self::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        )
    }
}

/// A request handler: (method, path, body) to a JSON reply.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(&self, method: &Method, path: &str, body: Bytes) -> impl Future<Output = Reply> + Send;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error("socket {path}: another process is serving it (is daffe already running?)")]
    InUse { path: PathBuf },
    #[error("socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Binds a unix socket at `path`, replacing a stale one (a socket file left
/// by a crashed daemon: connecting to it is refused), but never one a live
/// process serves.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    bind_with_group(path, None)
}

/// Like [`bind`]; with a group, the socket is 0660 and owned by that group
/// (`--socket-group`: non-root members may use the control socket).
pub(crate) fn bind_with_group(
    path: &Path,
    group: Option<u32>,
) -> Result<UnixListener, ServerError> {
    let io = |what| {
        move |source| ServerError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse {
                path: path.to_owned(),
            });
        }
        tracing::info!(socket = %path.display(), "removing a stale socket");
        std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
    }
    // Bound under a temporary name, made 0600, then renamed into place: the
    // socket never exists at `path` with the umask's mode (issue 12,
    // finding 10). Only root (dockerd, the `daffe` CLI under sudo) connects.
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io("binding"))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    let placed = std::os::unix::fs::chown(&tmp, None, group)
        .map_err(io("setting its group"))
        .and_then(|()| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(io("setting its mode"))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("renaming into place")));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Serves `handler` on `listener` until `shutdown` resolves.
pub(crate) async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    serve_checked(listener, handler, shutdown, None).await;
}

/// Like [`serve`]; with a policy, a peer it refuses (by `SO_PEERCRED`) gets
/// 403 and the reason for every request, and the handler never runs.
pub(crate) async fn serve_checked<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    policy: Option<PeerPolicy>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let refusal: Option<Arc<str>> = policy.and_then(|p| match peer_of(&stream) {
                    Ok(peer) => p.refusal(&peer).map(|r| {
                        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "control connection refused");
                        r.into()
                    }),
                    Err(e) => Some(format!("cannot read the peer's credentials: {e}").into()),
                });
                let handler = handler.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        let refusal = refusal.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(match refusal {
                                Some(r) => refuse(&r),
                                None => respond(&*handler, req).await,
                            })
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_LIMIT)
                        .max_buf_size(MAX_HEADER.max(8192))
                        .max_header_size(MAX_HEADER)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(error = %e, "connection") },
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_LIMIT, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing");
        conns.abort_all();
    }
}

/// The reply to every request of a peer the policy refuses.
fn refuse(reason: &str) -> Response<Full<Bytes>> {
    to_response(&Reply::error(StatusCode::FORBIDDEN, reason))
}

async fn respond<H: Handler>(handler: &H, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(BODY_LIMIT, Limited::new(body, MAX_BODY).collect());
    let reply = match read.await {
        Err(_) => Reply::error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_LIMIT.as_secs()
            ),
        ),
        Ok(Ok(b)) => {
            handler
                .call(&parts.method, parts.uri.path(), b.to_bytes())
                .await
        }
        Ok(Err(e)) => Reply::error(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        ),
    };
    to_response(&reply)
}

fn to_response(reply: &Reply) -> Response<Full<Bytes>> {
    let body = reply.to_bytes();
    Response::builder()
        .status(reply.status)
        .header("Content-Type", reply.content_type())
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, finding 10: the sockets must not rely on the umask (0022
    /// gave a world-connectable 0755 socket).
    #[tokio::test]
    async fn finding_10_sockets_are_0600_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.sock");
        let _l = bind(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        // Rebinding over a stale socket keeps the mode, and leaves no
        // temporary name behind.
        drop(_l);
        let _l = bind(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("s.sock")]);
    }

    struct Echo;
    impl Handler for Echo {
        async fn call(&self, _: &Method, path: &str, _: Bytes) -> Reply {
            Reply::ok(json!({ "path": path }))
        }
    }

    /// A served socket in a temp dir (stopped when the guard drops).
    async fn served() -> (tempfile::TempDir, PathBuf, tokio::sync::oneshot::Sender<()>) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.sock");
        let l = bind(&p).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(l, Arc::new(Echo), async {
            let _ = rx.await;
        }));
        (t, p, tx)
    }

    /// Reads until the server closes; how long that took, or `None` if it
    /// did not within `wait`.
    async fn closed_within(s: &mut tokio::net::UnixStream, wait: Duration) -> Option<Duration> {
        use tokio::io::AsyncReadExt;
        let t = std::time::Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(wait, s.read_to_end(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(t.elapsed())
    }

    /// Issue 12, low finding: a client that connects and sends nothing, half
    /// a request head, or nothing after its first request, is cut off; a
    /// slow body is answered 408. (Before: all were held for ever.)
    #[tokio::test]
    async fn idle_and_slow_clients_are_cut_off() {
        use tokio::io::AsyncWriteExt;
        let (_t, p, _stop) = served().await;
        let wait = HEADER_LIMIT + Duration::from_secs(5);

        let mut silent = tokio::net::UnixStream::connect(&p).await.unwrap();
        let mut half = tokio::net::UnixStream::connect(&p).await.unwrap();
        half.write_all(b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut idle = tokio::net::UnixStream::connect(&p).await.unwrap();
        idle.write_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut slow_body = tokio::net::UnixStream::connect(&p).await.unwrap();
        slow_body
            .write_all(b"POST /b HTTP/1.0\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            .await
            .unwrap();

        let (a, b, c, d) = tokio::join!(
            closed_within(&mut silent, wait),
            closed_within(&mut half, wait),
            closed_within(&mut idle, wait),
            async {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::new();
                tokio::time::timeout(wait + BODY_LIMIT, slow_body.read_to_end(&mut buf))
                    .await
                    .ok()
                    .map(|_| String::from_utf8_lossy(&buf).into_owned())
            }
        );
        assert!(
            a.is_some(),
            "a silent connection is still open after {wait:?}"
        );
        assert!(
            b.is_some(),
            "half a request head is still held after {wait:?}"
        );
        assert!(
            c.is_some(),
            "an idle kept-alive connection is still open after {wait:?}"
        );
        let d = d.expect("a body that never ends is still waited for");
        assert!(d.starts_with("HTTP/1.0 408"), "{d}");

        // A normal request is unaffected.
        let mut ok = tokio::net::UnixStream::connect(&p).await.unwrap();
        ok.write_all(b"POST /c HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        ok.read_to_end(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf).contains("\"path\":\"/c\""));
    }
}
