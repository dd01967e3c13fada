//! Issue 12, finding 13: an authenticated peer could exhaust the receiver's
//! disk. A round is now refused before it fetches a byte when its image is
//! over the destination's size cap or its data cannot fit in the free
//! space, and an endless manifest is cut off at a share of the free space.
//! The small filesystems are tmpfs mounts (root, as CI runs).

use std::io::Write;
use std::path::{Path, PathBuf};

use mover::ReceiveError;
use mover::{ChunkSource, Destination, ManifestId, ReceiveOptions, Receiver, Source, Want};
use mover::{Sink, SourceError};

use crate::common;

/// A tmpfs of `size` bytes at `dir/name`, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(dir: &Path, name: &str, size: u64) -> SmallFs {
        common::fail_unless_root();
        let p = dir.join(name);
        std::fs::create_dir_all(&p).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(p)
    }

    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn round(
    dest: &Destination,
    state: &Path,
    src: &mut dyn ChunkSource,
    max_size: Option<u64>,
) -> Result<mover::RoundStats, ReceiveError> {
    let opts = ReceiveOptions::default().with_max_size(max_size);
    Receiver::open(dest, state)?.run_round(src, &opts)
}

#[test]
fn finding_13_an_image_over_the_volume_size_is_refused() {
    let d = tempfile::tempdir().unwrap();
    // The source claims an 8 MiB image; this volume is 1 MiB.
    let src = d.path().join("src.img");
    common::write_sparse(&src, 8 << 20, &[(0, 4096), (7 << 20, 4096)], 3);
    let dst = d.path().join("dst.img");
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut s = common::scan_sender(&Source::Image(src), &d.path().join("cache"));
    let err = round(
        &Destination::Image(dst.clone()),
        &d.path().join("state"),
        &mut s,
        Some(1 << 20),
    )
    .expect_err("an image past the volume's size was received");
    assert!(
        matches!(err, ReceiveError::OverSize { size, limit, .. } if size == 8 << 20 && limit == 1 << 20),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&dst).unwrap().len(),
        1 << 20,
        "the image grew"
    );
}

#[test]
fn finding_13_a_round_that_cannot_fit_is_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), common::bytes(8 << 20, 5)).unwrap();
    let fs = SmallFs::new(d.path(), "small", 4 << 20);
    let free = fs.free();
    let mut s = common::scan_sender(&Source::Tree(src), &d.path().join("cache"));
    let err = round(
        &Destination::Tree(fs.0.join("data")),
        &fs.0.join("state"),
        &mut s,
        None,
    )
    .expect_err("8 MiB fit into 4 MiB");
    assert!(
        matches!(err, ReceiveError::NoRoom { need, .. } if need == 8 << 20),
        "{err}"
    );
    // Refused before the data: the filesystem is as free as before, but
    // for the state directory's few blocks.
    assert!(
        fs.free() + (64 << 10) >= free,
        "{} of {free} left",
        fs.free()
    );
}

/// A peer's manifest that never ends.
struct Endless;

impl ChunkSource for Endless {
    fn manifest(&mut self, out: &mut dyn Write) -> Result<ManifestId, SourceError> {
        let piece = vec![0x55u8; 64 << 10];
        loop {
            out.write_all(&piece).map_err(SourceError::Manifest)?;
        }
    }

    fn fetch(&mut self, _: &[Want], _: &mut Sink<'_>) -> Result<(), SourceError> {
        panic!("nothing is fetched for a manifest that never ends")
    }
}

#[test]
fn finding_13_an_endless_manifest_stops_at_a_share_of_the_free_space() {
    let d = tempfile::tempdir().unwrap();
    let fs = SmallFs::new(d.path(), "small", 8 << 20);
    let free = fs.free();
    let err = round(
        &Destination::Tree(fs.0.join("data")),
        &fs.0.join("state"),
        &mut Endless,
        None,
    )
    .expect_err("an endless manifest ended");
    assert!(
        matches!(err, ReceiveError::NoRoom { .. }),
        "the disk filled instead: {err}"
    );
    assert!(
        fs.free() >= free / 2,
        "{} of {free} bytes left free",
        fs.free()
    );
}
