//! What a profile means on local storage: where volumes live, whether they are
//! plain directories (`dir`, optionally size-limited by a project quota) or
//! size-limited filesystem images (`block`), and which filesystem the images get.

use crate::size::{ByteSize, GIB, MIB, TIB};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Smallest block volume: ext4 with its journal needs a few MiB; below 16 MiB
/// the filesystem would be mostly metadata.
pub const MIN_BLOCK_SIZE: ByteSize = ByteSize(16 * MIB);
/// Largest block volume: ext4's maximum file size with 4 KiB blocks (the image
/// is a sparse file on the host's filesystem).
pub const MAX_BLOCK_SIZE: ByteSize = ByteSize(16 * TIB);
/// Smallest size limit of a `dir` volume: the quota counts the directory
/// itself and every file's blocks; below 1 MiB nothing useful fits.
pub const MIN_DIR_SIZE: ByteSize = ByteSize(MIB);
/// Block size when neither the request nor the profile gives one.
pub const FALLBACK_BLOCK_SIZE: ByteSize = ByteSize(GIB);

/// How a local volume is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalFormat {
    /// A directory; synced file by file. No size limit unless the request
    /// gives one (`-o size`), which the plugin enforces with a project quota
    /// on the directory (issue 12, finding 7).
    Dir,
    /// A sparse image file formatted at Create and loop-mounted on first Mount;
    /// a real size limit; synced block by block.
    Block,
}

/// Filesystems a `block` volume can be formatted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
        }
    }
}

/// A profile's local section, as written in config files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    /// Where this profile's volumes live. `None`: `DATA_ROOT/local/PROFILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    pub format: LocalFormat,
    /// Size of a `block` volume when the request gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_size: Option<ByteSize>,
    #[serde(default = "default_fs")]
    pub filesystem: Filesystem,
}

fn default_fs() -> Filesystem {
    Filesystem::Ext4
}

/// Concrete settings for one local volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSettings {
    pub root: PathBuf,
    pub format: LocalFormat,
    /// Image size in bytes (`block`), or the project quota's limit (`dir`,
    /// `None`: unlimited).
    pub size: Option<ByteSize>,
    /// Filesystem of the image (`block` only).
    pub filesystem: Option<Filesystem>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error(
        "size {size} is outside what a block volume can be ({MIN_BLOCK_SIZE}-{MAX_BLOCK_SIZE})"
    )]
    SizeOutOfRange { size: ByteSize },
    #[error("root {0:?} must be an absolute path")]
    RelativeRoot(PathBuf),
    #[error("size {size} is below the smallest size limit of a dir volume ({MIN_DIR_SIZE})")]
    DirSizeTooSmall { size: ByteSize },
    #[error(
        "a default_size is set but format is \"dir\": a dir volume is limited only when \
         its request asks (-o size, a project quota), never by default"
    )]
    DefaultSizeOnDir,
}

impl LocalSpec {
    /// Checks what can be checked without a request.
    pub fn validate(&self) -> Result<(), LocalError> {
        if let Some(root) = &self.root
            && !root.is_absolute()
        {
            return Err(LocalError::RelativeRoot(root.clone()));
        }
        match (self.format, self.default_size) {
            (LocalFormat::Dir, Some(_)) => Err(LocalError::DefaultSizeOnDir),
            (LocalFormat::Block, Some(size)) => check_block_size(size),
            _ => Ok(()),
        }
    }

    /// Settings for a volume of `profile`, with `data_root` supplying the
    /// default root.
    pub fn settings(
        &self,
        profile: &str,
        size: Option<ByteSize>,
        data_root: &Path,
    ) -> Result<LocalSettings, LocalError> {
        self.validate()?;
        let root = self
            .root
            .clone()
            .unwrap_or_else(|| data_root.join("local").join(profile));
        match self.format {
            LocalFormat::Dir => {
                // Whether the filesystem can enforce it is the backend's to
                // find out at Create (project quotas): this crate does no I/O.
                if let Some(size) = size
                    && size < MIN_DIR_SIZE
                {
                    return Err(LocalError::DirSizeTooSmall { size });
                }
                Ok(LocalSettings {
                    root,
                    format: LocalFormat::Dir,
                    size,
                    filesystem: None,
                })
            }
            LocalFormat::Block => {
                let size = size.or(self.default_size).unwrap_or(FALLBACK_BLOCK_SIZE);
                check_block_size(size)?;
                Ok(LocalSettings {
                    root,
                    format: LocalFormat::Block,
                    size: Some(size),
                    filesystem: Some(self.filesystem),
                })
            }
        }
    }
}

fn check_block_size(size: ByteSize) -> Result<(), LocalError> {
    if size < MIN_BLOCK_SIZE || size > MAX_BLOCK_SIZE {
        return Err(LocalError::SizeOutOfRange { size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> LocalSpec {
        LocalSpec {
            root: None,
            format: LocalFormat::Block,
            default_size: Some(ByteSize(GIB)),
            filesystem: Filesystem::Ext4,
        }
    }

    #[test]
    fn block_sizes() {
        let data = Path::new("/var/lib/daffe");
        let cases: &[(Option<u64>, Result<u64, ()>)] = &[
            (None, Ok(GIB)),
            (Some(20 * GIB), Ok(20 * GIB)),
            (Some(16 * MIB), Ok(16 * MIB)),
            (Some(16 * MIB - 1), Err(())),
            (Some(16 * TIB), Ok(16 * TIB)),
            (Some(16 * TIB + 1), Err(())),
        ];
        for (req, want) in cases {
            let got = block().settings("gold", req.map(ByteSize), data);
            match (got, want) {
                (Ok(s), Ok(w)) => {
                    assert_eq!(s.size, Some(ByteSize(*w)));
                    assert_eq!(s.root, PathBuf::from("/var/lib/daffe/local/gold"));
                    assert_eq!(s.filesystem, Some(Filesystem::Ext4));
                }
                (Err(e), Err(())) => assert!(matches!(e, LocalError::SizeOutOfRange { .. })),
                (got, want) => panic!("{req:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn dir_sizes_are_limits_of_at_least_one_mib() {
        let dir = LocalSpec {
            root: Some("/srv/vols".into()),
            format: LocalFormat::Dir,
            default_size: None,
            filesystem: Filesystem::Ext4,
        };
        let data = Path::new("/var/lib/daffe");
        let s = dir.settings("default", None, data).unwrap();
        assert_eq!(
            (s.root.as_path(), s.format, s.size),
            (Path::new("/srv/vols"), LocalFormat::Dir, None)
        );
        let s = dir.settings("default", Some(ByteSize(GIB)), data).unwrap();
        assert_eq!((s.format, s.size), (LocalFormat::Dir, Some(ByteSize(GIB))));
        let s = dir.settings("default", Some(MIN_DIR_SIZE), data).unwrap();
        assert_eq!(s.size, Some(MIN_DIR_SIZE));
        assert_eq!(
            dir.settings("default", Some(ByteSize(MIB - 1)), data),
            Err(LocalError::DirSizeTooSmall {
                size: ByteSize(MIB - 1)
            })
        );
    }

    #[test]
    fn invalid_specs() {
        let mut s = block();
        s.root = Some("relative/path".into());
        assert!(matches!(s.validate(), Err(LocalError::RelativeRoot(_))));
        let s = LocalSpec {
            format: LocalFormat::Dir,
            ..block()
        };
        assert_eq!(s.validate(), Err(LocalError::DefaultSizeOnDir));
        let s = LocalSpec {
            default_size: Some(ByteSize(1)),
            ..block()
        };
        assert!(s.validate().is_err());
    }
}
