//! The EBS backend's errors. Each names the docker volume (NAME) and, once
//! known, the EBS volume id; AWS failures carry the operation, the AWS error
//! code and how many attempts the retry layer made.

use super::super::VolumeIoError;
use super::super::sys::CommandError;
use super::device::DeviceError;
use mover::aws::ApiError;

fn id(volume_id: &Option<String>) -> String {
    volume_id
        .as_deref()
        .map(|v| format!(" ({v})"))
        .unwrap_or_default()
}

/// Advice for AWS error codes an operator can act on.
pub(crate) fn hint(code: &str) -> &'static str {
    match code {
        "IncorrectModificationState" => {
            "; a previous change to this volume is still being applied, try again once it completes"
        }
        "VolumeModificationRateExceeded" => {
            "; AWS limits how often a volume can be modified, try again later"
        }
        "UnauthorizedOperation" | "AuthFailure" => {
            "; check the instance role or credentials (see the README's EBS section)"
        }
        "InvalidVolume.ZoneMismatch" => "; EBS volumes attach only within their zone",
        "InsufficientVolumeCapacity" => "; the zone is out of this volume type for now",
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EbsError {
    #[error("volume {volume:?}{}: {source} (after {attempts} attempt(s)){}", id(.volume_id), hint(&.source.code))]
    Aws {
        volume: String,
        volume_id: Option<String>,
        attempts: u32,
        source: ApiError,
    },
    #[error("volume {volume:?} ({volume_id}): {what} did not finish within {secs} s")]
    Timeout {
        volume: String,
        volume_id: String,
        what: &'static str,
        secs: u64,
    },
    #[error(
        "volume {volume:?} ({volume_id}) is attached to instance {instance}; it can be mounted \
         on one host at a time (stop its containers there, or detach it)"
    )]
    AttachedElsewhere {
        volume: String,
        volume_id: String,
        instance: String,
    },
    #[error(
        "volume {volume:?} ({volume_id}) is in {volume_zone} and this host in {zone}: EBS \
         volumes attach only within their zone (move it with daffe migrate --via-ebs)"
    )]
    WrongZone {
        volume: String,
        volume_id: String,
        volume_zone: String,
        zone: String,
    },
    #[error("volume {volume:?} ({volume_id}) cannot be used here: {reason}")]
    NotUsable {
        volume: String,
        volume_id: String,
        reason: String,
    },
    #[error("volume {volume:?} ({volume_id}) is {state} in AWS")]
    BadState {
        volume: String,
        volume_id: String,
        state: String,
    },
    #[error(
        "volume {volume:?}: no EBS volume tagged daffe:name={volume} in cluster {cluster:?}, \
         zone {zone} (deleted outside daffe?)"
    )]
    Missing {
        volume: String,
        cluster: String,
        zone: String,
    },
    #[error(
        "volume {volume:?}: several EBS volumes are tagged as it ({ids}); tag the extra ones \
         daffe:state=released or delete them"
    )]
    Ambiguous { volume: String, ids: String },
    #[error(
        "volume {volume:?}: no free device name on instance {instance} (all of {names} are used)"
    )]
    NoDeviceName {
        volume: String,
        instance: String,
        names: String,
    },
    #[error("volume {volume:?}{}: {source}", id(.volume_id))]
    Device {
        volume: String,
        volume_id: Option<String>,
        source: DeviceError,
    },
    #[error("volume {volume:?}{}: {source}", id(.volume_id))]
    Command {
        volume: String,
        volume_id: Option<String>,
        source: CommandError,
    },
    #[error(transparent)]
    Io(VolumeIoError),
    #[error("volume {volume:?}{}: snapshot {snapshot_id} is {state}; a volume can be made only from a completed snapshot", id(.volume_id))]
    SnapshotState {
        volume: String,
        volume_id: Option<String>,
        snapshot_id: String,
        state: String,
    },
    #[error("volume {volume:?}: {message}")]
    Refused { volume: String, message: String },
}

impl EbsError {
    /// The AWS error code, for errors that came from AWS.
    pub(crate) fn aws_code(&self) -> Option<&str> {
        match self {
            Self::Aws { source, .. } => Some(&source.code),
            _ => None,
        }
    }
}
