//! The real [`Mover`] of two-host mode: `daffe migrate`'s own orchestrator
//! (`migrate::orchestrate::migrate`), with the source host's daemon (its
//! control socket) and certificate and the destination's agent, exactly as
//! `daffe migrate VOLUME --to AGENT` run on the source would. Where migrate
//! tells the operator to stop the containers, it calls back instead.

use super::hosts::HostSpec;
use super::two_hosts::{Mover, MoverError};
use crate::cli::agent::{DEFAULT_TLS_DIR, PeerOptions};
use crate::control::ControlClient;
use crate::migrate::orchestrate::{
    DEFAULT_MAX_ROUNDS, DEFAULT_STOP_TIME, Event, MigrateOptions, ReadCaps, RemoteAgent, migrate,
};
use crate::migrate::report::Report;
use mover::Source;
use mover::net::{RoundPushRetry, RoundPusher, tls};
use std::path::PathBuf;
use std::time::Duration;

/// The migration settings `follow` passes on (those of `daffe migrate`).
#[derive(Debug, Clone)]
pub(crate) struct RealMover {
    /// `--tls-dir`: a host's certificate when its `--host` names none.
    pub tls_dir: Option<PathBuf>,
    pub max_downtime: Duration,
    pub connect_timeout: Duration,
    pub unmount_timeout: Duration,
}

/// As `daffe migrate`'s (`cli/migrate.rs`): bounds the downtime measurement.
const FENCE_POLL: Duration = Duration::from_millis(20);

impl Mover for RealMover {
    fn migrate(
        &mut self,
        volume: &str,
        from: &HostSpec,
        to: &HostSpec,
        unmount: &mut dyn FnMut(),
    ) -> Result<Report, MoverError> {
        let peer = PeerOptions {
            tls_dir: from
                .tls_dir
                .clone()
                .or_else(|| self.tls_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR)),
            name: None,
            bwlimit: None,
            no_compress: false,
            io_timeout: "60s".into(),
        };
        let ep = peer
            .endpoint()
            .map_err(|e| MoverError::Setup(format!("{}: {e}", from.region)))?;
        let tls = tls::client_config(&peer.files()).map_err(|e| {
            MoverError::Setup(format!("{}: {e} (see `daffe agent init`)", from.region))
        })?;
        let daemon = ControlClient::new(&from.control);
        let mut dest = RemoteAgent {
            read_caps: ReadCaps::default(),
            background: true,
            // The follow controller is a daemon: its other work must not go
            // idle with the round (nice and the idle I/O class only).
            idle: None,
            pusher: RoundPusher::new(
                to.agent.clone(),
                tls,
                ep,
                Source::Tree(PathBuf::new()),
                PathBuf::new(),
                volume.to_owned(),
            )
            .with_retry(RoundPushRetry::default().with_connect_timeout(self.connect_timeout)),
        };
        let opts = MigrateOptions {
            volume: volume.to_owned(),
            to: to.agent.clone(),
            max_downtime: self.max_downtime,
            max_rounds: DEFAULT_MAX_ROUNDS,
            unmount_timeout: self.unmount_timeout,
            fence_poll: FENCE_POLL,
            stop_time: DEFAULT_STOP_TIME,
            strict: false,
            before_cutover: None,
            precopy: true,
        };
        let report = migrate(&daemon, &mut dest, &opts, &mut |ev| match ev {
            Event::WaitingForUnmount => {
                tracing::info!(volume, "pre-copy done: stopping the container");
                unmount();
            }
            Event::RoundEnd(r) => {
                tracing::info!(
                    volume,
                    round = r.round,
                    bytes = r.bytes,
                    final_round = r.final_round,
                    "round"
                );
            }
            Event::Committed => tracing::info!(volume, to = %to.agent, "handed over"),
            _ => {}
        })?;
        Ok(report)
    }
}
