//! `--metrics-addr`: the metrics over plain HTTP on a TCP address, for a
//! Prometheus that cannot reach the control socket. It answers `GET
//! /metrics` and nothing else, on a thread of its own (its own small
//! runtime), so a scrape never competes with the VolumeDriver handlers.
//!
//! The metrics are not secret, but they name volumes' profiles and tell
//! load: the address must be a loopback one unless `--metrics-public` says
//! otherwise (safe default; put a proxy with TLS in front for remote scrapes).

use super::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Longest a scrape waits for the volume gauges to be read (the store is
/// local; this only bounds a wedged disk).
const REFRESH_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AddrError {
    #[error("--metrics-addr {addr:?}: not IP:PORT ({reason})")]
    Parse { addr: String, reason: String },
    #[error(
        "--metrics-addr {0}: not a loopback address; the metrics have no authentication, \
         so serving them beyond this host needs --metrics-public"
    )]
    NotLoopback(SocketAddr),
}

/// Parses `addr` (IP:PORT, no host names) and applies the loopback rule
/// (pure).
pub(crate) fn check(addr: &str, public: bool) -> Result<SocketAddr, AddrError> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e: std::net::AddrParseError| AddrError::Parse {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    if a.ip().is_loopback() || public {
        Ok(a)
    } else {
        Err(AddrError::NotLoopback(a))
    }
}

/// What a scrape needs: the metrics, and what brings their gauges up to
/// date first (read the records), run on the blocking pool.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) metrics: &'static Metrics,
    pub(crate) refresh: Arc<dyn Fn() + Send + Sync>,
}

/// Serves `listener` on a thread of its own until the process ends.
pub(crate) fn spawn(listener: std::net::TcpListener, source: Source) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || rt.block_on(serve(listener, source)))?;
    Ok(())
}

async fn serve(listener: std::net::TcpListener, source: Source) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let source = source.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            answer(&source, req.method(), req.uri().path()).await,
                        )
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // A client that stalls mid-request is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

async fn answer(source: &Source, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let reply = |status, ct: &str, body: String| {
        Response::builder()
            .status(status)
            .header("Content-Type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if path != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics here\n".into(),
        );
    }
    if method != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let refresh = source.refresh.clone();
    let refreshed = tokio::time::timeout(
        REFRESH_LIMIT,
        tokio::task::spawn_blocking(move || refresh()),
    )
    .await;
    if refreshed.is_err() {
        tracing::warn!(
            "metrics: reading the volumes took over {REFRESH_LIMIT:?}; their gauges are stale"
        );
    }
    reply(StatusCode::OK, super::CONTENT_TYPE, source.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_public() {
        assert!(check("127.0.0.1:9450", false).is_ok());
        assert!(check("[::1]:9450", false).is_ok());
        assert_eq!(
            check("0.0.0.0:9450", false),
            Err(AddrError::NotLoopback("0.0.0.0:9450".parse().unwrap()))
        );
        assert!(check("0.0.0.0:9450", true).is_ok());
        assert!(matches!(
            check("localhost:9450", false),
            Err(AddrError::Parse { .. })
        ));
        assert!(matches!(
            check("127.0.0.1", false),
            Err(AddrError::Parse { .. })
        ));
    }
}
