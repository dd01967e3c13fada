//! A blocking client of the local daemon's migration routes (see
//! [`super::control`]), for `daffe migrate` and `daffe agent`, which are
//! plain threaded programs.

use crate::client::{self, ClientError};
use crate::control::percent_encode;
use crate::service::migrate::{ReceiveCheck, TransferPaths};
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start a client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the daemon's reply to {path} is not what daffe expects: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

impl DaemonError {
    /// The daemon refused because the volume is mounted.
    pub fn in_use(&self) -> bool {
        matches!(self, DaemonError::Client(ClientError::Status { status, message, .. })
            if *status == StatusCode::CONFLICT && message.contains("in use"))
    }
}

/// The local daemon, through its control socket.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub socket: PathBuf,
}

impl Daemon {
    pub fn new(socket: &Path) -> Self {
        Daemon {
            socket: socket.to_path_buf(),
        }
    }

    fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, DaemonError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DaemonError::Runtime)?;
        Ok(rt.block_on(client::call(&self.socket, method, path, body.as_ref()))?)
    }

    fn typed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, DaemonError> {
        let v = self.call(method, path, body)?;
        serde_json::from_value(v).map_err(|source| DaemonError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    fn vol(name: &str, op: &str) -> String {
        format!("/v1/volumes/{}/{op}", percent_encode(name))
    }

    /// `daffe volume inspect` as JSON.
    pub fn inspect(&self, name: &str) -> Result<Value, DaemonError> {
        self.call(
            Method::GET,
            &format!("/v1/volumes/{}", percent_encode(name)),
            None,
        )
    }

    pub fn transfer_paths(&self, name: &str) -> Result<TransferPaths, DaemonError> {
        self.typed(Method::GET, &Self::vol(name, "transfer"), None)
    }

    pub fn begin_move(&self, name: &str, to: &str) -> Result<(), DaemonError> {
        self.call(
            Method::POST,
            &Self::vol(name, "move"),
            Some(json!({ "to": to })),
        )
        .map(drop)
    }

    /// Fences the volume if nothing mounts it; `in_use()` on the error otherwise.
    pub fn fence(&self, name: &str, to: &str) -> Result<(), DaemonError> {
        self.call(
            Method::POST,
            &Self::vol(name, "fence"),
            Some(json!({ "to": to })),
        )
        .map(drop)
    }

    pub fn finish_move(&self, name: &str, to: &str) -> Result<(), DaemonError> {
        self.call(
            Method::POST,
            &Self::vol(name, "moved"),
            Some(json!({ "to": to })),
        )
        .map(drop)
    }

    pub fn abort_move(&self, name: &str) -> Result<(), DaemonError> {
        self.call(Method::POST, &Self::vol(name, "abort"), Some(json!({})))
            .map(drop)
    }

    pub fn check_receive(
        &self,
        volume: &str,
        options: &BTreeMap<String, String>,
        need_bytes: u64,
    ) -> Result<ReceiveCheck, DaemonError> {
        self.typed(
            Method::POST,
            "/v1/receive/check",
            Some(json!({ "volume": volume, "options": options, "need_bytes": need_bytes })),
        )
    }

    pub fn prepare_receive(
        &self,
        volume: &str,
        options: &BTreeMap<String, String>,
        from: &str,
    ) -> Result<TransferPaths, DaemonError> {
        self.typed(
            Method::POST,
            "/v1/receive/prepare",
            Some(json!({ "volume": volume, "options": options, "from": from })),
        )
    }

    pub fn take_ownership(&self, name: &str) -> Result<(), DaemonError> {
        self.call(Method::POST, &Self::vol(name, "own"), Some(json!({})))
            .map(drop)
    }
}
