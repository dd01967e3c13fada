//! `block` volumes: a sparse image file of the requested size, formatted at
//! Create and loop-mounted at the volume's first Mount. The filesystem gives a
//! real size limit, and the image is what block-level transfer moves later.

use super::super::{BackendError, mountpoint, sys};
use super::holders;
use super::paths::{LocalPaths, image_path};
use profiles::{Filesystem, LocalSettings};
use std::ffi::OsStr;

/// `ROOT/NAME` private (0700, tightened if an older daffe made it 0755), the
/// mountpoint inside it.
fn private_dirs(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    sys::private_dir(&p.dir).map_err(|e| BackendError::io(name, "creating", &p.dir, e))?;
    std::fs::create_dir_all(&p.data).map_err(|e| BackendError::io(name, "creating", &p.data, e))
}

fn cmd_err(volume: &str) -> impl FnOnce(sys::CommandError) -> BackendError + '_ {
    move |source| BackendError::Command {
        volume: volume.to_owned(),
        source,
    }
}

/// Makes and formats the image. Create runs only for a new volume (or to
/// redo one whose Create was interrupted), so an existing image is replaced.
pub(crate) fn create(name: &str, s: &LocalSettings, p: &LocalPaths) -> Result<(), BackendError> {
    let size = s.size.ok_or_else(|| BackendError::Other {
        volume: name.to_owned(),
        message: "a block volume needs a size".into(),
    })?;
    // A directory already there that daffe did not make is refused.
    super::claim::claim(name, p)?;
    private_dirs(name, p)?;
    let img = image_path(s, p);
    let file =
        std::fs::File::create(&img).map_err(|e| BackendError::io(name, "creating", &img, e))?;
    // set_len on a new file makes it sparse: the image costs no space until written.
    file.set_len(size.bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| BackendError::io(name, "sizing", &img, e))?;
    drop(file);
    let img_arg = img.as_os_str();
    match s.filesystem.unwrap_or(Filesystem::Ext4) {
        // -m 0: no blocks reserved for root; an application volume should get
        // all of the size it asked for. nodiscard: the sparse file is already
        // empty; lazy init: formatting a large image stays fast.
        Filesystem::Ext4 => sys::run(
            "mkfs.ext4",
            &[
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-m"),
                OsStr::new("0"),
                OsStr::new("-E"),
                OsStr::new("nodiscard,lazy_itable_init=1,lazy_journal_init=1"),
                img_arg,
            ],
        ),
        Filesystem::Xfs => sys::run(
            "mkfs.xfs",
            &[
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new("-K"),
                img_arg,
            ],
        ),
    }
    .map_err(cmd_err(name))
}

/// Checks a received image's filesystem read-only (`e2fsck -n -f`,
/// `xfs_repair -n -f`) before it is first mounted: the kernel's filesystem
/// code is no place to meet a peer's crafted image (issue 12, finding 13).
/// A clean image passes; anything the check would repair is refused.
pub(crate) fn check_received(
    name: &str,
    s: &LocalSettings,
    p: &LocalPaths,
) -> Result<(), BackendError> {
    let img = image_path(s, p);
    let img_arg = img.as_os_str();
    let checked = match s.filesystem.unwrap_or(Filesystem::Ext4) {
        Filesystem::Ext4 => sys::run("e2fsck", &[OsStr::new("-n"), OsStr::new("-f"), img_arg]),
        Filesystem::Xfs => sys::run("xfs_repair", &[OsStr::new("-n"), OsStr::new("-f"), img_arg]),
    };
    checked.map_err(|e| BackendError::Other {
        volume: name.to_owned(),
        message: format!(
            "the received image {} fails its filesystem check, so it is not mounted: {e}",
            img.display()
        ),
    })
}

/// Loop-mounts the image on the data directory, unless it already is (a
/// crash between the mount and the count's commit leaves it mounted). A
/// mount found there is reused only if it is this image's loop device: a
/// stale mount of anything else (an earlier life of the data root) is
/// refused, never served as the volume (issue 12, finding 14).
pub(crate) fn mount(name: &str, s: &LocalSettings, p: &LocalPaths) -> Result<(), BackendError> {
    let img = image_path(s, p);
    if let Some(dev) = mountpoint::mounted_at(&p.data) {
        if mountpoint::is_loop_of(dev, &img) {
            return Ok(());
        }
        return Err(BackendError::Other {
            volume: name.to_owned(),
            message: format!(
                "{} has device {dev} mounted ({}), which is not this volume's image {}; \
                 unmount it (umount {}) and retry",
                p.data.display(),
                mountpoint::loop_backing_file(dev).map_or_else(
                    || "not a loop device over a file".to_owned(),
                    |b| format!("backed by {}", b.display())
                ),
                img.display(),
                p.data.display()
            ),
        });
    }
    private_dirs(name, p)?;
    if !img.exists() {
        return Err(BackendError::Other {
            volume: name.to_owned(),
            message: format!("image {} is missing", img.display()),
        });
    }
    let fs = s.filesystem.unwrap_or(Filesystem::Ext4);
    let options = format!("loop,{}", sys::SAFE_MOUNT_OPTIONS);
    sys::run(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new(fs.as_str()),
            OsStr::new("-o"),
            OsStr::new(&options),
            img.as_os_str(),
            p.data.as_os_str(),
        ],
    )
    .map_err(cmd_err(name))
}

/// Most mounts stacked at one mountpoint that unmount takes off (an older
/// daffe, whose path check a symlinked data root defeated, stacked one per
/// Mount); more means something else keeps mounting there.
const MAX_STACKED: usize = 16;

/// Unmounts (which also frees the autoclear loop device) every mount
/// stacked at the data directory; then proves the filesystem is released
/// everywhere. A mount namespace that still mounts it (a process that
/// unshared while it was mounted) keeps it alive with its dirty pages and
/// the image stale: that is reported as an error naming the holder, not
/// counted as unmounted. A loop device left attached with no mount and no
/// holder is detached (no leak).
pub(crate) fn unmount(name: &str, s: &LocalSettings, p: &LocalPaths) -> Result<(), BackendError> {
    let mut left = MAX_STACKED;
    while mountpoint::mounted_at(&p.data).is_some() {
        if left == 0 {
            return Err(BackendError::Other {
                volume: name.to_owned(),
                message: format!(
                    "{} is still mounted after {MAX_STACKED} unmounts",
                    p.data.display()
                ),
            });
        }
        sys::unmount(&p.data).map_err(cmd_err(name))?;
        left -= 1;
    }
    let held = holders::check(&image_path(s, p));
    if let Some(desc) = holders::describe(&held) {
        return Err(BackendError::Other {
            volume: name.to_owned(),
            message: format!(
                "unmounted here, but its filesystem is still in use elsewhere: {desc}; its image \
                 stays stale until that process exits"
            ),
        });
    }
    for h in held {
        let dev = format!("/dev/{}", h.device);
        if let Err(e) = sys::run("losetup", &[OsStr::new("-d"), OsStr::new(&dev)]) {
            tracing::warn!(volume = name, device = %dev, error = %e, "detaching a loop device left attached");
        }
    }
    Ok(())
}
