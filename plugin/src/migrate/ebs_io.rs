//! The real sides of [`super::ebs`]: the daemon's `/v1/volumes/NAME/ebs`
//! routes over the control socket, and snapshot pushes through the mover.

use super::ebs::{EbsSteps, Pusher, StepError};
use crate::client::{self, ClientError};
use crate::control::percent_encode;
use crate::control_ext::EBS_STEP_LIMIT;
use crate::service::ebs::EbsFacts;
use hyper::{Method, StatusCode};
use mover::progress::BlockProgress;
use mover::snapshot::aws::AwsSnapshotApi;
use mover::snapshot::{IndexStore, PushError, PushOptions, PushReport, push};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon bounds each step by [`EBS_STEP_LIMIT`]; we wait a little
/// longer so its own timeout message, which names the step, reaches us.
const STEP_CALL_LIMIT: Duration = Duration::from_secs(EBS_STEP_LIMIT.as_secs() + 10);

/// One volume's EBS steps, through the local daemon's control socket.
pub struct DaemonSteps {
    pub socket: PathBuf,
    pub volume: String,
}

impl DaemonSteps {
    fn call(
        &self,
        method: Method,
        step: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, StepError> {
        let path = match step {
            Some(s) => format!("/v1/volumes/{}/ebs/{s}", percent_encode(&self.volume)),
            None => format!("/v1/volumes/{}/ebs", percent_encode(&self.volume)),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StepError {
                message: format!("cannot start a client runtime: {e}"),
                in_use: false,
            })?;
        rt.block_on(client::call_within(
            &self.socket,
            method,
            &path,
            body.as_ref(),
            STEP_CALL_LIMIT,
        ))
        .map_err(|e| {
            // The service refuses fence and attach with 409 "in use" while a
            // container mounts the volume: that is the cutover's wait signal.
            let in_use = matches!(&e, ClientError::Status { status, message, .. }
                if *status == StatusCode::CONFLICT && message.contains("in use"));
            StepError {
                message: e.to_string(),
                in_use,
            }
        })
    }

    fn post(&self, step: &str, body: Value) -> Result<Value, StepError> {
        self.call(Method::POST, Some(step), Some(body))
    }
}

fn field(v: &Value, key: &str) -> Result<String, StepError> {
    v[key].as_str().map(str::to_owned).ok_or_else(|| StepError {
        message: format!("the daemon's reply has no {key:?}: {v}"),
        in_use: false,
    })
}

impl EbsSteps for DaemonSteps {
    fn facts(&self) -> Result<EbsFacts, StepError> {
        let v = self.call(Method::GET, None, None)?;
        serde_json::from_value(v).map_err(|e| StepError {
            message: format!("the daemon's EBS facts are not what daffe expects: {e}"),
            in_use: false,
        })
    }
    fn fence(&self, zone: &str) -> Result<(), StepError> {
        self.post("fence", json!({ "zone": zone })).map(drop)
    }
    fn unfence(&self) -> Result<(), StepError> {
        self.post("unfence", json!({})).map(drop)
    }
    fn attach(&self) -> Result<PathBuf, StepError> {
        field(&self.post("attach", json!({}))?, "device").map(PathBuf::from)
    }
    fn detach(&self) -> Result<(), StepError> {
        self.post("detach", json!({})).map(drop)
    }
    fn copy(&self, snapshot_id: &str, zone: &str) -> Result<String, StepError> {
        field(
            &self.post("copy", json!({ "snapshot_id": snapshot_id, "zone": zone }))?,
            "volume_id",
        )
    }
    fn moved(&self, zone: &str, volume_id: &str) -> Result<(), StepError> {
        self.post("moved", json!({ "zone": zone, "volume_id": volume_id }))
            .map(drop)
    }
}

/// Pushes through the EBS direct APIs; block indexes in `store`, so each
/// round's index is the next round's parent.
pub struct AwsPusher<'a> {
    pub api: AwsSnapshotApi,
    pub store: IndexStore,
    /// Tags, description and transfer settings; `parent` is set per round.
    pub opts: PushOptions,
    pub progress: &'a dyn BlockProgress,
}

impl Pusher for AwsPusher<'_> {
    fn push(&mut self, device: &Path, parent: Option<&str>) -> Result<PushReport, PushError> {
        let mut opts = PushOptions {
            parent: parent.map(str::to_owned),
            ..self.opts.clone()
        };
        // AWS refuses Encrypted with a parent: a child inherits its
        // parent's encryption, so only the full round asks for it.
        if opts.parent.is_some() {
            opts.encrypted = false;
            opts.kms_key_arn = None;
        }
        push(&self.api, &self.store, device, &opts, self.progress)
    }
}
