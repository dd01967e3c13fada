//! What is mounted at a directory, by device and mount IDs, never by path
//! strings (issue 12, finding 14). Comparing a volume's mountpoint with the
//! paths in /proc/self/mountinfo failed whenever the data root was reached
//! through a symlink (mountinfo shows the resolved path): unmount was
//! skipped, mounts stacked, loop devices leaked, and Remove deleted through
//! a live mount.
//!
//! `statx` says whether a directory is the root of a mount
//! (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8+); on an older kernel, a mount's root
//! is on another device, or has another mount ID, than its parent. The
//! device it reports is the mounted filesystem's, and for a loop device
//! sysfs names the backing file, which is compared with the volume's image
//! by device and inode before a mount found there is reused.

use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A block device's major:minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Device {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// What `statx` tells about a directory or its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    dev: Device,
    /// `None`: the kernel gave no mount ID.
    mnt_id: Option<u64>,
    /// `None`: the kernel does not report `STATX_ATTR_MOUNT_ROOT`.
    mount_root: Option<bool>,
}

fn node(path: &Path) -> Option<Node> {
    let st = statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )
    .ok()?;
    Some(Node {
        dev: Device {
            major: st.stx_dev_major,
            minor: st.stx_dev_minor,
        },
        mnt_id: (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id),
        mount_root: st
            .stx_attributes_mask
            .contains(StatxAttributes::MOUNT_ROOT)
            .then(|| st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)),
    })
}

/// Pure decision: is `dir` the root of a mount, given it and its parent.
fn is_mount_root(dir: Node, parent: Option<Node>) -> bool {
    if let Some(root) = dir.mount_root {
        return root;
    }
    let Some(parent) = parent else {
        return false;
    };
    dir.dev != parent.dev || matches!((dir.mnt_id, parent.mnt_id), (Some(a), Some(b)) if a != b)
}

/// The device of the filesystem mounted exactly at `dir` (the top one if
/// mounts are stacked), or `None` if nothing is mounted there (or `dir` is
/// missing).
pub(crate) fn mounted_at(dir: &Path) -> Option<Device> {
    let n = node(dir)?;
    // `..` is resolved by the kernel from `dir` itself, symlinks above it
    // or not; only read when the attribute is missing.
    let parent = if n.mount_root.is_none() {
        node(&dir.join(".."))
    } else {
        None
    };
    is_mount_root(n, parent).then_some(n.dev)
}

/// Pure part of [`loop_backing_file`]: sysfs's `backing_file` is the path
/// and a newline; a deleted file's path ends in " (deleted)".
fn parse_backing_file(text: &str) -> Option<PathBuf> {
    let path = text.strip_suffix('\n').unwrap_or(text);
    if path.is_empty() || path.ends_with(" (deleted)") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The file a loop device reads, from sysfs; `None` for a device that is
/// not a loop device, or whose file was deleted.
pub(crate) fn loop_backing_file(dev: Device) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{dev}/loop/backing_file")).ok()?;
    parse_backing_file(&text)
}

/// Whether `dev` is a loop device over `image` (same device and inode,
/// whatever path either is reached by).
pub(crate) fn is_loop_of(dev: Device, image: &Path) -> bool {
    let Some(backing) = loop_backing_file(dev) else {
        return false;
    };
    match (std::fs::metadata(&backing), std::fs::metadata(image)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(major: u32, minor: u32, mnt_id: Option<u64>, mount_root: Option<bool>) -> Node {
        Node {
            dev: Device { major, minor },
            mnt_id,
            mount_root,
        }
    }

    #[test]
    fn mount_roots_by_attribute_then_device_then_mount_id() {
        for (dir, parent, want) in [
            // The kernel says so: believed either way.
            (n(7, 0, Some(40), Some(true)), None, true),
            (
                n(8, 1, Some(22), Some(false)),
                Some(n(7, 0, Some(40), None)),
                false,
            ),
            // Older kernels: another device than the parent's.
            (n(7, 0, None, None), Some(n(8, 1, None, None)), true),
            // A bind mount of the same filesystem: same device, other mount.
            (n(8, 1, Some(41), None), Some(n(8, 1, Some(22), None)), true),
            (
                n(8, 1, Some(22), None),
                Some(n(8, 1, Some(22), None)),
                false,
            ),
            (n(8, 1, None, None), Some(n(8, 1, None, None)), false),
            (n(8, 1, None, None), None, false),
        ] {
            assert_eq!(is_mount_root(dir, parent), want, "{dir:?} under {parent:?}");
        }
    }

    #[test]
    fn parses_sysfs_backing_file() {
        for (text, want) in [
            (
                "/var/lib/daffe/local/gold/db/image.ext4\n",
                Some("/var/lib/daffe/local/gold/db/image.ext4"),
            ),
            (
                "/srv/with space/image.ext4\n",
                Some("/srv/with space/image.ext4"),
            ),
            ("/srv/x/image.ext4", Some("/srv/x/image.ext4")),
            ("/srv/x/image.ext4 (deleted)\n", None),
            ("\n", None),
            ("", None),
        ] {
            assert_eq!(
                parse_backing_file(text),
                want.map(PathBuf::from),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_root_is_a_mount_and_a_plain_directory_is_not() {
        assert!(mounted_at(Path::new("/")).is_some());
        assert!(mounted_at(Path::new("/proc")).is_some());
        let t = tempfile::tempdir().unwrap();
        assert_eq!(mounted_at(t.path()), None);
        assert_eq!(mounted_at(&t.path().join("missing")), None);
        // Through a symlink to a mount's root, the link itself is no mount
        // (never followed), and a path with the link above a mount still is.
        let link = t.path().join("link");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        assert_eq!(mounted_at(&link), None);
        std::os::unix::fs::symlink("/", t.path().join("top")).unwrap();
        assert!(mounted_at(&t.path().join("top/proc")).is_some());
    }
}
