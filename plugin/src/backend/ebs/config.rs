//! The daemon config's `[aws]` table: where the EBS backend (and the
//! migration commands) find AWS, this host, and its block devices. Every key
//! is optional: region, credentials and endpoint come from the standard AWS
//! chain, instance id and zone from the instance metadata service.
//!
//! ```toml
//! [aws]
//! region = "us-east-1"
//! endpoint_url = "http://127.0.0.1:5000"   # e.g. a moto server
//! instance_id = "i-0123456789abcdef0"
//! availability_zone = "us-east-1a"
//! cluster = "prod"                          # tag scope of volume names
//! device_resolver = "nvme"                  # or "loop" (tests)
//! loop_dir = "/var/lib/daffe/ebs-loop"      # loop only
//! snapshot_state_dir = "/var/lib/daffe/snapshots"
//! ```

use mover::aws::AwsOptions;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Cluster of volumes a host belongs to when the config names none.
pub(crate) const DEFAULT_CLUSTER: &str = "default";

/// How the backend finds an attached volume's block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ResolverKind {
    /// NVMe serial / udev link / Xen name: real EC2 instances.
    #[default]
    Nvme,
    /// A sparse file per volume id on a loop device: tests off EC2.
    Loop,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EbsConfig {
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) instance_id: Option<String>,
    pub(crate) availability_zone: Option<String>,
    pub(crate) cluster: Option<String>,
    #[serde(default)]
    pub(crate) device_resolver: ResolverKind,
    pub(crate) loop_dir: Option<PathBuf>,
    pub(crate) snapshot_state_dir: Option<PathBuf>,
}

impl EbsConfig {
    pub(crate) fn cluster(&self) -> &str {
        self.cluster.as_deref().unwrap_or(DEFAULT_CLUSTER)
    }

    /// SDK overrides for EC2 and EBS clients.
    pub(crate) fn aws_options(&self) -> AwsOptions {
        AwsOptions::default()
            .with_region(self.region.clone())
            .with_endpoint_url(self.endpoint_url.clone())
    }

    /// The loop stand-in's backing files (tests).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn loop_dir(&self, data_root: &std::path::Path) -> PathBuf {
        self.loop_dir
            .clone()
            .unwrap_or_else(|| data_root.join("ebs-loop"))
    }

    /// Block indexes of snapshots (shared with `daffe snapshot`).
    pub(crate) fn snapshot_state_dir(&self) -> PathBuf {
        self.snapshot_state_dir
            .clone()
            .unwrap_or_else(|| mover::snapshot::DEFAULT_STATE_DIR.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c: EbsConfig = toml::from_str(
            r#"
            region = "eu-west-3"
            endpoint_url = "http://127.0.0.1:5000"
            instance_id = "i-1"
            availability_zone = "eu-west-3a"
            device_resolver = "loop"
            "#,
        )
        .unwrap();
        assert_eq!(c.device_resolver, ResolverKind::Loop);
        assert_eq!(c.cluster(), DEFAULT_CLUSTER);
        assert_eq!(
            c.loop_dir(std::path::Path::new("/var/lib/daffe")),
            std::path::Path::new("/var/lib/daffe/ebs-loop")
        );
        assert_eq!(c.aws_options().region.as_deref(), Some("eu-west-3"));
        let e = toml::from_str::<EbsConfig>("regoin = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = toml::from_str::<EbsConfig>("device_resolver = \"scsi\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }
}
