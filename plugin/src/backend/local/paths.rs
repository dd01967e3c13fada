//! Where a local volume lives, the same for both formats so tools (and the
//! mover) find things: everything under `ROOT/NAME`, the mountpoint docker
//! gets at `ROOT/NAME/data`, a `block` volume's image at `ROOT/NAME/image.FS`.

use profiles::{Filesystem, LocalSettings};
use std::path::PathBuf;

/// Name of the directory docker sees, inside the volume's directory.
pub(crate) const DATA_DIR: &str = "data";

/// A local volume's paths.
#[derive(Debug, Clone)]
pub(crate) struct LocalPaths {
    /// `ROOT/NAME`: everything of this volume lives here.
    pub(crate) dir: PathBuf,
    /// `ROOT/NAME/data`: the mountpoint.
    pub(crate) data: PathBuf,
}

impl LocalPaths {
    pub(crate) fn new(name: &str, s: &LocalSettings) -> Self {
        let dir = s.root.join(name);
        Self {
            data: dir.join(DATA_DIR),
            dir,
        }
    }
}

/// A `block` volume's image file (`ROOT/NAME/image.ext4`).
pub(crate) fn image_path(s: &LocalSettings, p: &LocalPaths) -> PathBuf {
    let fs = s.filesystem.unwrap_or(Filesystem::Ext4);
    p.dir.join(format!("image.{}", fs.as_str()))
}
