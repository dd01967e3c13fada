//! The local backend: volumes stored on this host, under each profile's root,
//! as a directory (`dir`) or a loop-mounted filesystem image (`block`).
//!
//! Layout, the same for both formats so tools (and the mover) find things:
//! `ROOT/NAME/data` is the mountpoint handed to docker; a `block` volume also
//! has its image at `ROOT/NAME/image.FS`.

//!
//! - this file: [`LocalBackend`].
//! - [`paths`]: where a local volume's directory, mountpoint and image are.
//! - [`dir`], [`block`]: the two formats.
//! - [`claim`]: the marker that says daffe made a volume's directory.
//! - [`holders`]: is a block volume's filesystem released everywhere (no
//!   other mount namespace, no loop holder)? Unmount and migrate's cutover ask.
//! - [`writes`]: where a mounted block volume was written (the kernel's
//!   block tracepoint), so scans of its image read only that.

pub(crate) mod block;
pub(crate) mod claim;
pub(crate) mod dir;
pub(crate) mod holders;
pub(crate) mod paths;
pub(crate) mod writes;

pub(crate) use paths::LocalPaths;

use super::{Backend, BackendError, Status, VolumeRef};
use paths::image_path;
use profiles::{BackendKind, LocalFormat, LocalSettings, Settings};
use std::path::PathBuf;

pub(crate) struct LocalBackend;

fn local<'a>(vol: VolumeRef<'a>) -> Result<&'a LocalSettings, BackendError> {
    match vol.settings {
        Settings::Local(s) => Ok(s),
        Settings::Ebs(_) => Err(BackendError::WrongBackend {
            volume: vol.name.to_owned(),
            got: BackendKind::Ebs,
            want: BackendKind::Local,
        }),
    }
}

impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn create(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = local(vol)?;
        let p = LocalPaths::new(vol.name, s);
        match s.format {
            LocalFormat::Dir => dir::create(vol.name, &p),
            LocalFormat::Block => block::create(vol.name, s, &p),
        }
    }

    fn remove(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = local(vol)?;
        let p = LocalPaths::new(vol.name, s);
        if s.format == LocalFormat::Block {
            block::unmount(vol.name, s, &p)?;
            writes::WRITE_LOGS.forget(&image_path(s, &p));
        }
        if !p.dir.exists() {
            return Ok(());
        }
        // Never delete through a live mount (issue 12, finding 14): a
        // filesystem still mounted at the data directory is not ours to empty.
        if let Some(dev) = super::mountpoint::mounted_at(&p.data) {
            return Err(BackendError::Other {
                volume: vol.name.to_owned(),
                message: format!(
                    "not removing {}: device {dev} is still mounted at {}",
                    p.dir.display(),
                    p.data.display()
                ),
            });
        }
        // Never delete what daffe did not make (issue 12, finding 10): the
        // record goes, the directory stays, and the log says where.
        if !claim::is_ours(&p) {
            tracing::warn!(
                volume = vol.name,
                dir = %p.dir.display(),
                "not deleting the volume's directory: daffe did not make it (no {} marker)",
                claim::MARKER
            );
            return Ok(());
        }
        match std::fs::remove_dir_all(&p.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io(vol.name, "removing", &p.dir, e)),
        }
    }

    fn mount(&self, vol: VolumeRef<'_>) -> Result<PathBuf, BackendError> {
        let s = local(vol)?;
        let p = LocalPaths::new(vol.name, s);
        match s.format {
            LocalFormat::Dir => dir::mount(vol.name, &p)?,
            LocalFormat::Block => {
                block::mount(vol.name, s, &p)?;
                if let Some(dev) = super::mountpoint::mounted_at(&p.data) {
                    writes::WRITE_LOGS.mounted(&image_path(s, &p), dev);
                }
            }
        }
        Ok(p.data)
    }

    fn unmount(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = local(vol)?;
        match s.format {
            LocalFormat::Dir => Ok(()),
            LocalFormat::Block => {
                let p = LocalPaths::new(vol.name, s);
                block::unmount(vol.name, s, &p)?;
                // Only once released everywhere: a filesystem still held
                // elsewhere keeps writing, and keeps being recorded.
                writes::WRITE_LOGS.unmounted(&image_path(s, &p));
                Ok(())
            }
        }
    }

    fn image_changes(
        &self,
        vol: VolumeRef<'_>,
        cache_dir: &std::path::Path,
    ) -> Option<std::sync::Arc<dyn mover::ImageChanges>> {
        let s = local(vol).ok()?;
        if s.format != LocalFormat::Block {
            return None;
        }
        let p = LocalPaths::new(vol.name, s);
        Some(writes::WRITE_LOGS.changes(&image_path(s, &p), cache_dir))
    }

    fn path(&self, vol: VolumeRef<'_>) -> PathBuf {
        match vol.settings {
            Settings::Local(s) => LocalPaths::new(vol.name, s).data,
            Settings::Ebs(_) => PathBuf::new(),
        }
    }

    fn status(&self, vol: VolumeRef<'_>) -> Status {
        let mut st = Status::new();
        let Settings::Local(s) = vol.settings else {
            return st;
        };
        let p = LocalPaths::new(vol.name, s);
        st.insert("root".into(), s.root.display().to_string().into());
        if s.format == LocalFormat::Block {
            st.insert(
                "image".into(),
                image_path(s, &p).display().to_string().into(),
            );
            st.insert("mounted".into(), super::sys::is_mountpoint(&p.data).into());
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_volumes_live_under_their_root_and_remove_deletes_data() {
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::Local(LocalSettings {
            root: root.path().join("local/default"),
            format: LocalFormat::Dir,
            size: None,
            filesystem: None,
        });
        let vol = VolumeRef {
            name: "db",
            settings: &settings,
            profile: "default",
            docker_name: "db",
        };
        let b = LocalBackend;
        b.create(vol).unwrap();
        b.create(vol).unwrap(); // idempotent
        let mp = b.mount(vol).unwrap();
        assert_eq!(mp, root.path().join("local/default/db/data"));
        assert_eq!(b.path(vol), mp);
        std::fs::write(mp.join("f"), b"x").unwrap();
        b.unmount(vol).unwrap();
        assert!(mp.join("f").exists(), "unmount of a dir keeps the data");
        b.remove(vol).unwrap();
        assert!(!root.path().join("local/default/db").exists());
        b.remove(vol).unwrap(); // idempotent
    }

    /// Issue 12, finding 10: Create adopted a directory already at the
    /// volume's place, and Remove then deleted it.
    #[test]
    fn finding_10_create_never_adopts_and_remove_never_deletes_a_foreign_directory() {
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::Local(LocalSettings {
            root: root.path().join("local/default"),
            format: LocalFormat::Dir,
            size: None,
            filesystem: None,
        });
        let vol = VolumeRef {
            name: "victim",
            settings: &settings,
            profile: "default",
            docker_name: "victim",
        };
        let theirs = root.path().join("local/default/victim/data");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join("precious"), b"x").unwrap();
        let b = LocalBackend;
        let err = b.create(vol).expect_err("a foreign directory was adopted");
        assert!(err.to_string().contains("daffe did not make it"), "{err}");
        b.remove(vol).unwrap();
        assert!(theirs.join("precious").exists(), "Remove deleted it");
    }

    #[test]
    fn ebs_settings_are_refused() {
        let settings = Settings::Ebs(profiles::EbsSettings {
            volume_type: profiles::EbsVolumeType::Gp3,
            size_gib: 1,
            iops: None,
            throughput: None,
            encrypted: false,
            kms_key_id: None,
            keep_on_remove: false,
        });
        let vol = VolumeRef {
            name: "db",
            settings: &settings,
            profile: "default",
            docker_name: "db",
        };
        assert!(matches!(
            LocalBackend.create(vol),
            Err(BackendError::WrongBackend { .. })
        ));
    }
}
