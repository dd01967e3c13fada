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
//! - [`dir_writes`]: where a dir volume's files were written (ext4's write
//!   tracepoints, parsed by [`file_writes`]), so scans read only that.
//! - [`tracefs`]: the tracefs instance both trackers record in.
//! - [`quota`]: a `dir` volume's size limit, a project quota on its
//!   directory (issue 12, finding 7).

pub(crate) mod block;
pub(crate) mod claim;
pub(crate) mod dir;
pub(crate) mod dir_writes;
pub(crate) mod file_writes;
pub(crate) mod holders;
pub(crate) mod paths;
pub(crate) mod quota;
pub(crate) mod tracefs;
pub(crate) mod writes;

pub(crate) use paths::LocalPaths;

use super::{Backend, BackendError, Status, VolumeRef};
use paths::image_path;
use profiles::{BackendKind, LocalFormat, LocalSettings, Settings};
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) struct LocalBackend {
    /// Project quotas, for `dir` volumes with a size.
    quotas: Arc<dyn quota::ProjectQuotas>,
    #[cfg(test)]
    _live: test_tracking::Live,
}

impl LocalBackend {
    /// The backend over the host's real quota tools.
    pub(crate) fn new() -> Self {
        Self::with_quotas(Arc::new(quota::tools::QuotaTools))
    }

    pub(crate) fn with_quotas(quotas: Arc<dyn quota::ProjectQuotas>) -> Self {
        Self {
            quotas,
            #[cfg(test)]
            _live: test_tracking::Live::new(),
        }
    }
}

/// A test process has no daemon stop to end the trackers' sessions (they
/// live in statics, never dropped), and exits with their tracefs instances
/// still recording its filesystem. So in tests the last backend dropped
/// ends them, as `serve` does at its stop.
#[cfg(test)]
mod test_tracking {
    use std::sync::Mutex;

    /// Backends alive. The lock is held across the stop, so a backend made
    /// meanwhile waits, and starts its sessions only after it.
    static LIVE: Mutex<usize> = Mutex::new(0);

    pub(super) struct Live;

    impl Live {
        pub(super) fn new() -> Self {
            *LIVE.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            Live
        }
    }

    impl Drop for Live {
        fn drop(&mut self) {
            let mut n = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            *n -= 1;
            if *n == 0 {
                super::stop_tracking();
            }
        }
    }
}

use dir::quota_err;

/// At the daemon's stop: ends both trackers' sessions, so a clean stop
/// leaves no tracefs instance behind (a killed daemon's are swept by
/// [`sweep_dead_tracking`] at the next start).
pub(crate) fn stop_tracking() {
    dir_writes::DIR_WRITES.stop_all();
    writes::WRITE_LOGS.stop_all();
}

/// At the daemon's start: removes the write tracking a killed daemon left
/// (kill -9, OOM, a node fenced mid-step). Its tracefs instances keep their
/// events on, so every write of their filesystem still passes a filter into
/// 2 MiB per CPU of kernel buffers, until a later session on the same
/// filesystem or loop device happens to sweep them. Only instances nobody
/// reads go (every live session holds its `trace_pipe`, dir and block
/// trackers alike): another live daemon's tracking is never touched. tracefs is not
/// mounted for this: if it is absent, nobody left anything there.
pub(crate) fn sweep_dead_tracking() {
    if let Some(root) = tracefs::mounted_root() {
        // No live instance of ours is named "": nothing to spare.
        tracefs::sweep_unheld_in(&root, dir_writes::INSTANCE_PREFIX, "");
        writes::sweep_unheld(&root);
    }
}

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
        match (s.format, s.size) {
            (LocalFormat::Dir, None) => dir::create(vol.name, &p),
            (LocalFormat::Dir, Some(size)) => {
                dir::create_limited(vol.name, &p, self.quotas.as_ref(), size.bytes())
            }
            (LocalFormat::Block, _) => block::create(vol.name, s, &p),
        }
    }

    /// A sized dir volume needs a filesystem that enforces project quotas:
    /// asked before a migration sends anything here.
    fn check_create(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = local(vol)?;
        if let (LocalFormat::Dir, Some(_)) = (s.format, s.size) {
            let p = LocalPaths::new(vol.name, s);
            quota::check(self.quotas.as_ref(), &p.dir).map_err(quota_err(vol.name))?;
        }
        Ok(())
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
        // A sized dir volume's project, read before its directory goes.
        let project = match (s.format, s.size) {
            (LocalFormat::Dir, Some(_)) => {
                quota::project(self.quotas.as_ref(), &p.data).map_err(quota_err(vol.name))?
            }
            _ => None,
        };
        match std::fs::remove_dir_all(&p.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackendError::io(vol.name, "removing", &p.dir, e)),
        }
        // Cleared only once the files are gone: until then the limit holds.
        // A failure here leaves an unused id with a limit (nothing is
        // charged to it), logged; the volume itself is gone.
        if let Some((fs, id)) = project
            && let Err(e) = quota::release(self.quotas.as_ref(), &fs, id)
        {
            tracing::warn!(
                volume = vol.name,
                project = id,
                "clearing the size limit: {e}"
            );
        }
        Ok(())
    }

    fn mount(&self, vol: VolumeRef<'_>) -> Result<PathBuf, BackendError> {
        let s = local(vol)?;
        let p = LocalPaths::new(vol.name, s);
        match s.format {
            LocalFormat::Dir => match s.size {
                None => dir::mount(vol.name, &p)?,
                Some(size) => {
                    dir::mount_limited(vol.name, &p, self.quotas.as_ref(), size.bytes())?;
                }
            },
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

    fn write_changes(
        &self,
        vol: VolumeRef<'_>,
        cache_dir: &std::path::Path,
    ) -> Option<std::sync::Arc<dyn mover::ImageChanges>> {
        let s = local(vol).ok()?;
        let p = LocalPaths::new(vol.name, s);
        match s.format {
            LocalFormat::Block => Some(writes::WRITE_LOGS.changes(&image_path(s, &p), cache_dir)),
            LocalFormat::Dir => dir_writes::DIR_WRITES.changes(&p.data, cache_dir),
        }
    }

    fn path(&self, vol: VolumeRef<'_>) -> PathBuf {
        match vol.settings {
            Settings::Local(s) => LocalPaths::new(vol.name, s).data,
            Settings::Ebs(_) => PathBuf::new(),
        }
    }

    fn release_left(&self, vol: VolumeRef<'_>) -> Result<(), BackendError> {
        let s = local(vol)?;
        match s.format {
            // Unmounts, then checks every loop device and namespace.
            LocalFormat::Block => self.unmount(vol),
            LocalFormat::Dir => {
                let p = LocalPaths::new(vol.name, s);
                let held = |message: String| BackendError::Other {
                    volume: vol.name.to_owned(),
                    message,
                };
                match holders::check_dir(&p.data) {
                    Some(h) if h.is_empty() => Ok(()),
                    Some(h) => Err(held(format!(
                        "its directory is still mounted: {}",
                        h.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))),
                    None => Err(held(
                        "where its directory lies cannot be read from /proc/self/mountinfo".into(),
                    )),
                }
            }
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
        if let (LocalFormat::Dir, Some(size)) = (s.format, s.size) {
            st.insert("size_limit".into(), size.bytes().into());
            match quota::status(self.quotas.as_ref(), &p.data) {
                Ok(Some((id, u))) => {
                    st.insert("quota_project".into(), id.into());
                    st.insert("size_used".into(), u.used.into());
                }
                Ok(None) => {
                    st.insert("quota_error".into(), "the directory has no project".into());
                }
                Err(e) => {
                    st.insert("quota_error".into(), e.to_string().into());
                }
            }
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed daemon left recording goes at the next daemon's start,
    /// before any scan asks: an unheld dir tracker's instance with its
    /// events on, and a detached loop device's. A live session stays on.
    #[test]
    fn the_daemons_start_sweeps_a_dead_daemons_tracking_and_spares_a_live_one() {
        let root = tracefs::root().expect("tracefs (root, as CI is)");
        let tag = std::process::id();
        let dead = root
            .join("instances")
            .join(format!("{}dead-{tag}", dir_writes::INSTANCE_PREFIX));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("events/ext4/ext4_da_write_end/enable"), "1").unwrap();
        let free = writes::tests::free_loop_minor(3000);
        let detached = root.join("instances").join(format!("daffe-7-{free}"));
        std::fs::create_dir(&detached).unwrap();
        let events = [("ext4/ext4_da_write_end", "dev == 0".to_owned())];
        let mut live = tracefs::Session::start(
            &format!("{}live-{tag}", dir_writes::INSTANCE_PREFIX),
            &events,
            64,
        )
        .unwrap();
        sweep_dead_tracking();
        let (dead_left, detached_left) = (dead.exists(), detached.exists());
        let _ = std::fs::remove_dir(&dead);
        let _ = std::fs::remove_dir(&detached);
        assert!(!dead_left, "{} kept", dead.display());
        assert!(!detached_left, "{} kept", detached.display());
        live.drain(|_| {})
            .expect("the live session's instance and events are still there");
    }

    /// A process that ends just after the application's stop (as the
    /// PostgreSQL server does after `pg_ctl stop -w` returns) holds a block
    /// volume's mount a moment longer: Unmount waits for it, up to
    /// `sys::UNMOUNT_BUSY_WAIT`; a mount still held after that fails as busy and
    /// stays mounted.
    #[test]
    fn a_block_unmount_waits_for_a_holder_that_is_ending() {
        use std::time::{Duration, Instant};
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::Local(LocalSettings {
            root: root.path().join("local/gold"),
            format: LocalFormat::Block,
            size: Some(profiles::ByteSize(32 << 20)),
            filesystem: Some(profiles::Filesystem::Ext4),
        });
        let vol = VolumeRef {
            name: "busy",
            settings: &settings,
            profile: "gold",
            docker_name: "busy",
        };
        let b = LocalBackend::new();
        b.create(vol).unwrap();
        let mp = b.mount(vol).unwrap();
        // Its working directory in the volume holds the mount until it ends.
        let hold = |secs: &str| {
            std::process::Command::new("sleep")
                .arg(secs)
                .current_dir(&mp)
                .spawn()
                .unwrap()
        };
        let mut ending = hold("0.3");
        let t = Instant::now();
        let r = b.unmount(vol);
        let took = t.elapsed();
        ending.wait().unwrap();
        r.expect("the unmount did not wait for a holder that ended 0.3 s in");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(super::super::mountpoint::mounted_at(&mp).is_none());

        b.mount(vol).unwrap();
        let mut holder = hold("30");
        let t = Instant::now();
        let r = b.unmount(vol);
        let took = t.elapsed();
        holder.kill().unwrap();
        holder.wait().unwrap();
        let err = r.expect_err("a mount held throughout was unmounted");
        assert!(err.to_string().contains("busy"), "{err}");
        assert!(took >= super::super::sys::UNMOUNT_BUSY_WAIT, "{took:?}");
        assert!(super::super::mountpoint::mounted_at(&mp).is_some());
        b.unmount(vol).unwrap();
        b.remove(vol).unwrap();
    }

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
        let b = LocalBackend::new();
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
        let b = LocalBackend::new();
        let err = b.create(vol).expect_err("a foreign directory was adopted");
        assert!(err.to_string().contains("daffe did not make it"), "{err}");
        b.remove(vol).unwrap();
        assert!(theirs.join("precious").exists(), "Remove deleted it");
    }

    /// Issue 12, finding 7: a dir volume with a size gets a project quota;
    /// Inspect shows it, Remove frees it; a filesystem without enforced
    /// project quotas refuses the volume before anything is made.
    #[test]
    fn finding_7_sized_dir_volumes_get_a_project_quota_or_are_refused() {
        use quota::ProjectQuotas;
        use quota::fake::FakeQuotas;
        use quota::pure::ProjectState;
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::Local(LocalSettings {
            root: root.path().join("local/default"),
            format: LocalFormat::Dir,
            size: Some(profiles::ByteSize(64 << 20)),
            filesystem: None,
        });
        let vol = VolumeRef {
            name: "tenant",
            settings: &settings,
            profile: "default",
            docker_name: "tenant",
        };
        let q = Arc::new(FakeQuotas::new(ProjectState::Enforced));
        let b = LocalBackend::with_quotas(q.clone());
        b.create(vol).unwrap();
        b.check_create(vol).unwrap();
        let dir = root.path().join("local/default/tenant");
        let data = dir.join("data");
        let id = q.project_of(&data).unwrap();
        assert_ne!(id, 0);
        assert_eq!(q.project_of(&dir).unwrap(), 0, "daffe's own files stay out");
        assert_eq!(q.limit_of(id), 64 << 20);
        b.create(vol).unwrap(); // idempotent: same id
        assert_eq!(q.project_of(&data).unwrap(), id);
        // A Mount after data/ was deleted never hands out an unlimited one.
        std::fs::remove_dir(&data).unwrap();
        q.forget_dir(&data);
        b.mount(vol).unwrap();
        let id2 = q.project_of(&data).unwrap();
        assert_ne!(id2, 0);
        assert_eq!(q.limit_of(id2), 64 << 20);
        let id = id2;
        let st = b.status(vol);
        assert_eq!(st["size_limit"], 64 << 20);
        assert_eq!(st["quota_project"], id);
        assert!(st["size_used"].as_u64().unwrap() > 0, "{st:?}");
        b.remove(vol).unwrap();
        assert!(!dir.exists());
        assert_eq!(q.limit_of(id), 0, "remove frees the quota");

        let off = Arc::new(FakeQuotas::new(ProjectState::Off));
        let b = LocalBackend::with_quotas(off.clone());
        let err = b.create(vol).unwrap_err().to_string();
        assert!(
            err.contains("cannot enforce a size") && err.contains("prjquota"),
            "{err}"
        );
        assert!(!dir.exists(), "nothing made");
        assert!(off.calls().is_empty(), "{:?}", off.calls());
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
            LocalBackend::new().create(vol),
            Err(BackendError::WrongBackend { .. })
        ));
    }
}
