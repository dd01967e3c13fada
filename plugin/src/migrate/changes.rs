//! [`mover::ImageChanges`] asked of the daemon: `daffe migrate` and the
//! cluster handover scan a block volume's image in their own process, but
//! the daemon is the one that tracks where it was written
//! (`crate::backend::local::writes`). Any failure to ask answers "unknown":
//! the scan then reads the whole image, as it did before tracking.

use crate::control::client::ControlClient;
use crate::control::request::ControlRequest;
use crate::service::migrate::ChangesReply;
use mover::{ImageChanges, PendingChanges};
use std::path::Path;

pub(crate) struct DaemonChanges {
    daemon: ControlClient,
    volume: String,
    cache: String,
}

impl DaemonChanges {
    pub(crate) fn new(daemon: ControlClient, volume: &str, cache: &Path) -> Self {
        Self {
            daemon,
            volume: volume.to_owned(),
            cache: cache.display().to_string(),
        }
    }
}

impl ImageChanges for DaemonChanges {
    fn pending(&self) -> PendingChanges {
        match self
            .daemon
            .send_as::<ChangesReply>(&ControlRequest::Changes {
                name: self.volume.clone(),
                cache: self.cache.clone(),
            }) {
            Ok(r) => r.into(),
            Err(e) => {
                tracing::warn!(volume = %self.volume, error = %e, "cannot ask the daemon where the image was written; reading it whole");
                PendingChanges {
                    mark: 0,
                    ranges: None,
                    files: None,
                }
            }
        }
    }

    fn scanned(&self, mark: u64) {
        // Unsaid, the daemon keeps the ranges: the next scan reads them again.
        if let Err(e) = self.daemon.send(&ControlRequest::Scanned {
            name: self.volume.clone(),
            cache: self.cache.clone(),
            mark,
        }) {
            tracing::warn!(volume = %self.volume, error = %e, "cannot tell the daemon the scan is saved");
        }
    }
}
