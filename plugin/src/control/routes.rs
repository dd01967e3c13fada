//! The control socket's one router: a request is parsed
//! ([`ControlRequest::parse`]), then carried out on the blocking pool under
//! its time limit ([`crate::bounded`]), like the VolumeDriver handlers, so
//! no route (an mkfs for a received volume, an fsync, a wait for a volume's
//! lock, an AWS call) ever runs on an async worker and stalls the
//! VolumeDriver socket. Replies are JSON; failures are `{"Err": message,
//! "Code": code}` with a 4xx/5xx status (codes: [`ErrorCode`]).

use super::request::{ControlRequest, EbsStep, RequestError};
use super::status;
use crate::api::reply::{coded, failure};
use crate::bounded;
use crate::server::{Handler, Reply};
use crate::service::profile_change::DefineReport;
use crate::service::{ErrorCode, ServiceError, VolumeService};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long each kind of request may run before it is answered with a
/// timeout (the work goes on, or is rolled back, in the background). The
/// client waits a little longer ([`super::client::CLIENT_MARGIN`]), so the
/// daemon's message, which names the step, reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Reads of the records and profiles, and the migration state steps
    /// (a wait for the volume's lock; the Create and blanking of a received
    /// volume): milliseconds when healthy; the CLI has always given the
    /// daemon 10 s.
    pub(crate) quick: Duration,
    /// One AWS change or lookup (set-profile's ModifyVolume, an EBS
    /// volume's facts), within the EBS backend's 45 s budgets.
    pub(crate) aws: Duration,
    /// EBS migration steps: attach and copy have 90 s budgets.
    pub(crate) ebs_step: Duration,
    /// A profile definition re-applied to its volumes one by one.
    pub(crate) define: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            quick: Duration::from_secs(8),
            aws: Duration::from_secs(50),
            ebs_step: Duration::from_secs(100),
            define: Duration::from_secs(110),
        }
    }
}

impl Limits {
    /// The limit of `req`.
    pub(crate) fn of(&self, req: &ControlRequest) -> Duration {
        use ControlRequest as R;
        match req {
            R::Profiles
            | R::Volumes
            | R::Status
            | R::Health
            | R::Cluster
            | R::Metrics
            | R::Report(_)
            | R::Volume { .. }
            | R::Transfer { .. }
            | R::Move { .. }
            | R::Fence { .. }
            | R::FinishMove { .. }
            | R::AbortMove { .. }
            | R::Own { .. }
            | R::Handover { .. }
            | R::Standby { .. }
            | R::Changes { .. }
            | R::Scanned { .. }
            | R::CheckReceive { .. }
            | R::PrepareReceive { .. } => self.quick,
            R::SetProfile { .. } | R::EbsFacts { .. } => self.aws,
            // A pull's handover is bounded at 80 s inside it; a move asked of
            // another node waits for that node's pull.
            R::Ebs { .. } | R::Pull { .. } => self.ebs_step,
            R::DefineProfile { .. } | R::MoveTo { .. } => self.define,
        }
    }
}

/// The control API, bound to a service.
pub(crate) struct ControlApi {
    svc: Arc<VolumeService>,
    limits: Limits,
    /// For `/v1/status`: made when the daemon starts serving.
    daemon: Arc<status::Daemon>,
}

impl ControlApi {
    pub(crate) fn new(svc: Arc<VolumeService>, limits: Limits) -> Self {
        let daemon = Arc::new(status::Daemon {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_secs: status::now_secs(),
            backend: svc.backend_kind(),
        });
        Self {
            svc,
            limits,
            daemon,
        }
    }

    /// Answers one request.
    pub(crate) async fn handle(&self, method: &Method, path: &str, body: &[u8]) -> Reply {
        let req = match ControlRequest::parse(method, path, body) {
            Ok(r) => r,
            Err(e) => return refused(&e),
        };
        tracing::debug!(?req, "control request");
        let limit = self.limits.of(&req);
        let (op, subject) = (req.op(), req.subject().to_owned());
        let (svc, daemon) = (self.svc.clone(), self.daemon.clone());
        let reply = bounded::run(op, &subject, limit, move |_| answer(&svc, &daemon, req))
            .await
            .unwrap_or_else(coded);
        crate::metrics::daemon().control_call(op, reply.status);
        reply
    }
}

impl Handler for ControlApi {
    async fn call(&self, method: &Method, path: &str, body: Bytes) -> Reply {
        self.handle(method, path, &body).await
    }
}

/// A request that never reached the service.
fn refused(e: &RequestError) -> Reply {
    let (status, code) = match e {
        RequestError::NoRoute(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        RequestError::Method { .. } => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Invalid),
        RequestError::Body(_) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
    };
    tracing::info!(error = %e, "control request refused");
    failure(status, code, e.to_string())
}

fn json(v: impl Serialize) -> Reply {
    Reply::json(serde_json::to_value(v).unwrap_or_default())
}

/// Carries out `req` (on the blocking pool).
fn answer(
    svc: &VolumeService,
    daemon: &status::Daemon,
    req: ControlRequest,
) -> Result<Reply, ServiceError> {
    use ControlRequest as R;
    Ok(match req {
        R::Profiles => {
            let catalog = svc.catalog();
            let profiles: Vec<_> = catalog.iter().collect();
            json(json!({ "backend": svc.backend_kind(), "profiles": profiles }))
        }
        R::DefineProfile { name, def } => defined(&name, &svc.define_profile(&name, def)?),
        R::Volumes => json(svc.views()?),
        R::Status => json(status::report(
            daemon,
            status::now_secs(),
            &svc.views()?,
            status::recent(),
        )),
        // Healthy: the request got through the pool in time and the record
        // store reads (a failure replies with its error and a 5xx).
        R::Health => {
            let volumes = svc.views()?.len();
            json(json!({
                "ok": true,
                "version": daemon.version,
                "uptime_secs": status::now_secs().saturating_sub(daemon.started_secs),
                "volumes": volumes,
            }))
        }
        R::Cluster => match svc.cluster() {
            Some(c) => {
                let mut st = c.status().map_err(ServiceError::from)?;
                for v in &mut st.volumes {
                    v.standbys = svc.standby_lags(&v.name);
                    v.last_takeover = svc.last_takeover(&v.name);
                }
                json(st)
            }
            None => {
                return Err(ServiceError::Refused {
                    op: "cluster status",
                    name: String::new(),
                    reason: "this daemon is not in cluster mode (no [cluster] in its config)"
                        .into(),
                });
            }
        },
        R::Metrics => {
            let m = crate::metrics::daemon();
            m.set_volumes(&svc.views()?);
            Reply::text(crate::metrics::CONTENT_TYPE, m.render())
        }
        R::Report(r) => {
            crate::metrics::daemon().run_report(&r);
            json(json!({}))
        }
        R::Volume { name } => json(svc.inspect(&name)?),
        R::SetProfile { name, profile } => json(svc.set_profile(&name, &profile)?),
        R::Transfer { name } => json(svc.transfer_paths(&name)?),
        R::Move { name, to } => json(svc.begin_move(&name, &to)?),
        R::Fence { name, to } => {
            let r = svc.fence(&name, &to)?;
            crate::metrics::daemon().fenced(&name, std::time::Instant::now());
            json(r)
        }
        R::Handover { name, to } => json(svc.handover_plan(&name, &to)?),
        R::Pull { name } => json(svc.pull(&name)?),
        R::Standby {
            name,
            from,
            epoch,
            mark,
        } => json(svc.accept_standby(&name, &from, epoch, mark)?),
        R::MoveTo { name, node } => json(svc.move_to(&name, &node)?),
        R::Changes { name, cache } => json(svc.write_changes_pending(&name, Path::new(&cache))?),
        R::Scanned { name, cache, mark } => {
            svc.write_changes_scanned(&name, Path::new(&cache), mark)?;
            json(serde_json::json!({}))
        }
        R::FinishMove { name, to } => {
            let r = svc.finish_move(&name, &to)?;
            crate::metrics::daemon().move_ended(&name, true, std::time::Instant::now());
            json(r)
        }
        R::AbortMove { name } => {
            let r = svc.abort_move(&name)?;
            crate::metrics::daemon().move_ended(&name, false, std::time::Instant::now());
            json(r)
        }
        R::Own { name } => json(svc.take_ownership(&name)?),
        R::CheckReceive {
            volume,
            options,
            need_bytes,
        } => json(svc.check_receive(&volume, &options, need_bytes)?),
        R::PrepareReceive {
            volume,
            options,
            from,
        } => json(svc.prepare_receive(&volume, &options, &from)?),
        R::EbsFacts { name } => json(svc.ebs_facts(&name)?),
        R::Ebs { name, step } => match step {
            EbsStep::Fence { zone } => {
                let r = svc.ebs_fence(&name, &zone)?;
                crate::metrics::daemon().fenced(&name, std::time::Instant::now());
                json(r)
            }
            EbsStep::Unfence => {
                let r = svc.ebs_unfence(&name)?;
                crate::metrics::daemon().move_ended(&name, false, std::time::Instant::now());
                json(r)
            }
            EbsStep::Attach => json(json!({ "device": svc.ebs_attach(&name)? })),
            EbsStep::Detach => {
                svc.ebs_detach(&name)?;
                json(json!({}))
            }
            EbsStep::Copy { snapshot_id, zone } => {
                json(json!({ "volume_id": svc.ebs_copy(&name, &snapshot_id, &zone)? }))
            }
            EbsStep::Discard => json(json!({ "deleted": svc.ebs_discard_copies(&name)? })),
            EbsStep::Moved { zone, volume_id } => {
                let r = svc.ebs_moved(&name, &zone, &volume_id)?;
                crate::metrics::daemon().move_ended(&name, true, std::time::Instant::now());
                json(r)
            }
        },
    })
}

/// A profile definition's reply: 200 with what it did, or 502 with the same
/// body plus `Err` when some volume's storage call failed (the profile was
/// defined all the same).
fn defined(name: &str, report: &DefineReport) -> Reply {
    let failures: Vec<String> = report
        .failures()
        .map(|v| v.error.clone().unwrap_or_default())
        .collect();
    let mut body = serde_json::to_value(report).unwrap_or_default();
    if failures.is_empty() {
        return Reply::json(body);
    }
    body["Err"] = json!(format!(
        "profile {name:?} was defined, but {} volume(s) could not be changed: {}",
        failures.len(),
        failures.join("; ")
    ));
    body["Code"] = json!(ErrorCode::Failed);
    Reply {
        status: StatusCode::BAD_GATEWAY,
        body,
        raw: None,
    }
}
