//! Docker's VolumeDriver protocol: requests parsed into values ([`request`]),
//! carried out against the service ([`volume`], [`plugin`]), and every
//! outcome turned into a reply in one place ([`reply`]).

pub(crate) mod plugin;
pub(crate) mod reply;
pub(crate) mod request;
pub(crate) mod volume;

use crate::server::Reply;
use crate::service::VolumeService;
use request::Request;
use std::sync::Arc;
use std::time::Duration;

/// Time limits per call, under dockerd's own (Create and Mount 120 s, the
/// rest 60 s) with margin, so docker always gets our answer (and its message)
/// instead of its own timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Create and Mount: mkfs of a large image, an EBS attach.
    pub(crate) slow: Duration,
    /// Remove, Unmount, Path: deleting a large tree, an EBS detach.
    pub(crate) fast: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            slow: Duration::from_secs(100),
            fast: Duration::from_secs(50),
        }
    }
}

/// The VolumeDriver endpoint set, bound to a service.
#[derive(Clone)]
pub(crate) struct DriverApi {
    svc: Arc<VolumeService>,
    limits: Limits,
    list_cache: Arc<volume::ListCache>,
}

impl DriverApi {
    pub(crate) fn new(svc: Arc<VolumeService>, limits: Limits) -> Self {
        Self {
            svc,
            limits,
            list_cache: Arc::default(),
        }
    }

    /// Answers one POST to `path` with `body`, counted and timed in the
    /// metrics (`crate::metrics`).
    pub(crate) async fn handle(&self, path: &str, body: &[u8]) -> Reply {
        let started = std::time::Instant::now();
        let req = match Request::parse(path, body) {
            Ok(r) => r,
            Err(e) => {
                let reply = Reply::from(e);
                crate::metrics::daemon().driver_call("unknown", reply.status, started.elapsed());
                return reply;
            }
        };
        tracing::debug!(?req, "request");
        let endpoint = req.endpoint();
        let reply = match req {
            Request::Activate => plugin::activate(),
            Request::Capabilities => plugin::capabilities(),
            other => volume::handle(&self.svc, self.limits, &self.list_cache, other).await,
        };
        crate::metrics::daemon().driver_call(endpoint, reply.status, started.elapsed());
        reply
    }
}

impl crate::server::Handler for DriverApi {
    async fn call(&self, method: &hyper::Method, path: &str, body: bytes::Bytes) -> Reply {
        if method != hyper::Method::POST {
            return Reply::method_not_allowed(method);
        }
        self.handle(path, &body).await
    }
}
