//! The filesystem steps of an EBS volume's Mount and Unmount (is there a
//! filesystem, make one, mount, unmount), behind a trait so the backend's
//! state machine is unit-tested without devices.
//!
//! EBS volumes get ext4 (`-m 0`: the volume's whole size is the
//! application's). "Is it new" is asked of the device itself (`blkid -p`,
//! a low-level probe that bypasses blkid's cache), never assumed: a volume
//! made from a snapshot, or one whose first Mount failed after mkfs, already
//! has its filesystem.

use super::super::sys::{self, CommandError};
use std::ffi::OsStr;
use std::path::Path;

/// `blkid -p` exit status when the device holds no known signature.
const BLKID_NOTHING_FOUND: i32 = 2;

pub(crate) trait Filesystems: Send + Sync {
    /// Whether `dev` holds a filesystem (or any signature blkid knows).
    fn has_filesystem(&self, dev: &Path) -> Result<bool, CommandError>;
    fn mkfs(&self, dev: &Path) -> Result<(), CommandError>;
    fn mount(&self, dev: &Path, mountpoint: &Path) -> Result<(), CommandError>;
    fn unmount(&self, mountpoint: &Path) -> Result<(), CommandError>;
    fn is_mounted(&self, mountpoint: &Path) -> bool;
}

/// The real thing: blkid, mkfs.ext4, mount, umount.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemFs;

impl Filesystems for SystemFs {
    fn has_filesystem(&self, dev: &Path) -> Result<bool, CommandError> {
        match sys::output("blkid", &[OsStr::new("-p"), dev.as_os_str()]) {
            Ok(_) => Ok(true),
            Err(CommandError::Failed { status, .. })
                if status.code() == Some(BLKID_NOTHING_FOUND) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn mkfs(&self, dev: &Path) -> Result<(), CommandError> {
        // nodiscard: a new EBS volume (or a sparse loop file) reads as zeros
        // already, and discarding a large volume takes minutes; lazy init
        // keeps mkfs of a TiB volume to seconds.
        sys::run(
            "mkfs.ext4",
            &[
                OsStr::new("-q"),
                OsStr::new("-m"),
                OsStr::new("0"),
                OsStr::new("-E"),
                OsStr::new("nodiscard,lazy_itable_init=1,lazy_journal_init=1"),
                dev.as_os_str(),
            ],
        )
    }

    fn mount(&self, dev: &Path, mountpoint: &Path) -> Result<(), CommandError> {
        sys::run(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("ext4"),
                OsStr::new("-o"),
                OsStr::new(sys::SAFE_MOUNT_OPTIONS),
                dev.as_os_str(),
                mountpoint.as_os_str(),
            ],
        )
    }

    fn unmount(&self, mountpoint: &Path) -> Result<(), CommandError> {
        // Retried while busy, as a block volume's (`sys::unmount`).
        sys::unmount(mountpoint)
    }

    fn is_mounted(&self, mountpoint: &Path) -> bool {
        sys::is_mountpoint(mountpoint)
    }
}
