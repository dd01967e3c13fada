//! Finding the block device of an attached EBS volume, behind the
//! [`DeviceResolver`] trait, so tests can stand a loop device in for it
//! (`loop_device`).
//!
//! On Nitro instances an EBS volume is an NVMe namespace whose controller
//! serial is the volume id without its dash (`vol0123456789abcdef0`); udev
//! links it as `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123...`.
//! The device name given to AttachVolume (`/dev/sdf`) means nothing there.
//! On older Xen instances the device is that name with `xvd` for `sd`.
//! [`NvmeResolver`] tries the udev link, then the serials in sysfs (no udev
//! in some containers), then the Xen name.

use super::wait::Deadline;
use crate::aws::VolumeFacts;
use std::path::PathBuf;
use std::time::Duration;

/// How often to look for a device that is not there yet: udev creates the
/// link within tens of milliseconds of the kernel seeing the namespace.
const LOOK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error(
        "no block device for {volume_id} appeared within {secs} s \
         (looked for {looked}); is it attached to this instance?"
    )]
    NotFound {
        volume_id: String,
        secs: u64,
        looked: String,
    },
    /// The loop stand-in's backing file.
    #[cfg(any(test, feature = "testing"))]
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Command(#[from] super::super::sys::CommandError),
    /// The loop stand-in filling its file from a snapshot.
    #[cfg(any(test, feature = "testing"))]
    #[error("preparing {volume_id} from snapshot {snapshot_id}: {message}")]
    Hydrate {
        volume_id: String,
        snapshot_id: String,
        message: String,
    },
}

/// Maps attached EBS volumes to block devices on this host.
pub(crate) trait DeviceResolver: Send + Sync {
    /// Short name for logs and `docker volume inspect` (`nvme`, `loop`).
    fn name(&self) -> &'static str;

    /// The device of `vol`, attached to this instance under `attach_device`;
    /// waits for it to appear until `deadline`.
    fn wait_device(
        &self,
        vol: &VolumeFacts,
        attach_device: &str,
        deadline: &Deadline,
    ) -> Result<PathBuf, DeviceError>;

    /// The device of `volume_id` if it is there now; no waiting, no changes.
    fn current(&self, volume_id: &str, attach_device: Option<&str>) -> Option<PathBuf>;

    /// Before DetachVolume: let go of the device (nothing for NVMe, whose
    /// device the kernel removes at detach).
    fn release(&self, volume_id: &str) -> Result<(), DeviceError>;

    /// After DeleteVolume: drop whatever stood in for the volume.
    fn forget(&self, volume_id: &str) -> Result<(), DeviceError>;

    /// After CreateVolume from a snapshot, once `available`: nothing for
    /// EBS (the volume holds the snapshot's data from then on, even if the
    /// snapshot is deleted); a stand-in copies the data in now.
    fn created(&self, _vol: &VolumeFacts) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// `vol-0123` -> `vol0123`: the NVMe serial of an EBS volume.
pub(crate) fn nvme_serial(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// `/dev/sdf` -> `xvdf`: the Xen block device for an attach name.
fn xen_name(attach_device: &str) -> Option<String> {
    let base = attach_device.strip_prefix("/dev/")?;
    let rest = base
        .strip_prefix("sd")
        .or_else(|| base.strip_prefix("xvd"))?;
    Some(format!("xvd{rest}"))
}

/// The real resolver.
#[derive(Debug, Clone)]
pub(crate) struct NvmeResolver {
    /// `/dev` (a temp dir in tests).
    pub(crate) dev: PathBuf,
    /// `/sys` (a temp dir in tests).
    pub(crate) sys: PathBuf,
}

impl Default for NvmeResolver {
    fn default() -> Self {
        Self {
            dev: "/dev".into(),
            sys: "/sys".into(),
        }
    }
}

impl NvmeResolver {
    fn by_id(&self, volume_id: &str) -> PathBuf {
        self.dev.join("disk/by-id").join(format!(
            "nvme-Amazon_Elastic_Block_Store_{}",
            nvme_serial(volume_id)
        ))
    }

    /// The namespace block device (`nvme1n1`) whose controller serial is the
    /// volume's.
    fn by_serial(&self, volume_id: &str) -> Option<PathBuf> {
        let want = nvme_serial(volume_id);
        let entries = std::fs::read_dir(self.sys.join("block")).ok()?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Namespaces only (nvme1n1), not partitions (nvme1n1p1).
            if !name.starts_with("nvme") || name.contains('p') {
                continue;
            }
            let serial =
                std::fs::read_to_string(e.path().join("device/serial")).unwrap_or_default();
            if serial.trim() == want {
                return Some(self.dev.join(name));
            }
        }
        None
    }

    fn xen(&self, attach_device: &str) -> Option<PathBuf> {
        let name = xen_name(attach_device)?;
        self.sys
            .join("block")
            .join(&name)
            .exists()
            .then(|| self.dev.join(name))
    }

    fn look(&self, volume_id: &str, attach_device: Option<&str>) -> Option<PathBuf> {
        let link = self.by_id(volume_id);
        if let Ok(p) = std::fs::canonicalize(&link) {
            return Some(p);
        }
        self.by_serial(volume_id)
            .or_else(|| attach_device.and_then(|d| self.xen(d)))
    }
}

impl DeviceResolver for NvmeResolver {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn wait_device(
        &self,
        vol: &VolumeFacts,
        attach_device: &str,
        deadline: &Deadline,
    ) -> Result<PathBuf, DeviceError> {
        loop {
            if let Some(p) = self.look(&vol.id, Some(attach_device)) {
                return Ok(p);
            }
            if deadline.passed() {
                return Err(DeviceError::NotFound {
                    volume_id: vol.id.clone(),
                    secs: deadline.secs(),
                    looked: format!(
                        "{}, NVMe serial {} in {}, {}",
                        self.by_id(&vol.id).display(),
                        nvme_serial(&vol.id),
                        self.sys.join("block").display(),
                        xen_name(attach_device).unwrap_or_default()
                    ),
                });
            }
            deadline.sleep(LOOK_EVERY);
        }
    }

    fn current(&self, volume_id: &str, attach_device: Option<&str>) -> Option<PathBuf> {
        self.look(volume_id, attach_device)
    }

    fn release(&self, _volume_id: &str) -> Result<(), DeviceError> {
        Ok(())
    }

    fn forget(&self, _volume_id: &str) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mover::clock::ManualClock;
    use std::sync::Arc;

    fn facts(id: &str) -> VolumeFacts {
        VolumeFacts {
            id: id.into(),
            ..VolumeFacts::default()
        }
    }

    #[test]
    fn serials_and_xen_names() {
        assert_eq!(nvme_serial("vol-0abc1234"), "vol0abc1234");
        assert_eq!(xen_name("/dev/sdf").as_deref(), Some("xvdf"));
        assert_eq!(xen_name("/dev/xvdg").as_deref(), Some("xvdg"));
        assert_eq!(xen_name("sdf"), None);
    }

    #[test]
    fn finds_the_namespace_by_link_serial_or_xen_name() {
        let t = tempfile::tempdir().unwrap();
        let r = NvmeResolver {
            dev: t.path().join("dev"),
            sys: t.path().join("sys"),
        };
        // sysfs: nvme0n1 is the root disk, nvme1n1 our volume, nvme1n1p1 a partition.
        for (name, serial) in [
            ("nvme0n1", "vol0root"),
            ("nvme1n1", "vol0abc"),
            ("nvme1n1p1", "vol0abc"),
        ] {
            let d = r.sys.join("block").join(name).join("device");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("serial"), format!("{serial}   \n")).unwrap();
        }
        assert_eq!(r.current("vol-0abc", None), Some(r.dev.join("nvme1n1")));
        // The udev link wins when present.
        let byid = r.dev.join("disk/by-id");
        std::fs::create_dir_all(&byid).unwrap();
        std::fs::write(r.dev.join("nvme7n1"), b"").unwrap();
        std::os::unix::fs::symlink(
            "../../nvme7n1",
            byid.join("nvme-Amazon_Elastic_Block_Store_vol0abc"),
        )
        .unwrap();
        assert_eq!(
            r.current("vol-0abc", None),
            Some(std::fs::canonicalize(r.dev.join("nvme7n1")).unwrap())
        );
        // Xen: /dev/sdf is xvdf.
        std::fs::create_dir_all(r.sys.join("block/xvdf")).unwrap();
        assert_eq!(
            r.current("vol-0other", Some("/dev/sdf")),
            Some(r.dev.join("xvdf"))
        );
        assert_eq!(r.current("vol-0other", Some("/dev/sdg")), None);
    }

    #[test]
    fn waiting_for_a_missing_device_ends_with_what_was_looked_for() {
        let t = tempfile::tempdir().unwrap();
        let r = NvmeResolver {
            dev: t.path().join("dev"),
            sys: t.path().join("sys"),
        };
        let d = Deadline::new(Arc::new(ManualClock::default()), Duration::from_secs(3));
        let e = r
            .wait_device(&facts("vol-0zz"), "/dev/sdf", &d)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vol-0zz") && e.contains("within 3 s"), "{e}");
        assert!(e.contains("nvme-Amazon_Elastic_Block_Store_vol0zz"), "{e}");
    }
}
