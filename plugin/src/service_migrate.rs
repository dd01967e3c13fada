//! The volume service's side of a migration between hosts: the state changes
//! of the source (`Moving`, `Fenced`, `Moved`) and of the destination
//! (`Receiving`, then `Ready`), and where the mover finds a volume's data.
//!
//! Every change happens under the volume's lock, like Mount: once `fence`
//! returned, no Mount can slip in, and a Mount that won the race makes
//! `fence` fail with "in use". Nothing here calls dockerd (a handler must
//! never wait on it): the operator, or `daffe migrate`, stops the containers.

use super::*;
use crate::backend::local::LocalPaths;
use crate::backend::local_block;
use serde::Deserialize;

/// Directory, inside a local volume's directory (beside `data`), where the
/// receiving mover keeps its state: same filesystem as the data (staged files
/// are renamed in), outside the tree docker sees.
pub const RECEIVE_STATE_DIR: &str = ".mover-receive";
/// Same, for the sending side's stat cache (kept between rounds).
pub const SEND_CACHE_DIR: &str = ".mover-send";

/// How a volume's data is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    /// A `dir` volume: its directory tree.
    Tree,
    /// A `block` volume: its filesystem image.
    Image,
}

/// Where the mover reads or writes a volume, on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPaths {
    pub docker_name: String,
    pub profile: String,
    pub mode: TransferMode,
    /// The tree (`ROOT/NAME/data`) or the image (`ROOT/NAME/image.FS`).
    pub data: PathBuf,
    /// Receiver state (destination side).
    pub state_dir: PathBuf,
    /// Sender stat cache (source side).
    pub cache_dir: PathBuf,
    /// The `-o` options to re-create the volume with elsewhere (size...).
    pub options: BTreeMap<String, String>,
    pub state: String,
    /// The other host of a migration (`Moving`/`Fenced`/`Moved` to, `Receiving` from).
    #[serde(default)]
    pub peer: Option<String>,
}

/// A destination's answer to "could you receive this volume?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveCheck {
    pub docker_name: String,
    pub profile: String,
    /// Where the volume would live (the profile's root on this host).
    pub root: PathBuf,
    pub free_bytes: u64,
    pub need_bytes: u64,
    /// A partial copy from an earlier, interrupted migration is there.
    pub resuming: bool,
}

fn transfer_paths(rec: &VolumeRecord) -> Result<TransferPaths, ServiceError> {
    let Settings::Local(s) = &rec.settings else {
        return Err(ServiceError::Migration {
            op: "migrate",
            name: rec.docker_name.clone(),
            message: "only local volumes (dir, block) can be migrated between hosts".into(),
        });
    };
    let p = LocalPaths::new(&rec.name, s);
    let (mode, data) = match s.format {
        LocalFormat::Dir => (TransferMode::Tree, p.data.clone()),
        LocalFormat::Block => (TransferMode::Image, local_block::image_path(s, &p)),
    };
    Ok(TransferPaths {
        docker_name: rec.docker_name.clone(),
        profile: rec.profile.clone(),
        mode,
        data,
        state_dir: p.dir.join(RECEIVE_STATE_DIR),
        cache_dir: p.dir.join(SEND_CACHE_DIR),
        options: rec.options.clone(),
        state: rec.state.as_str().to_owned(),
        peer: rec.state.peer().map(str::to_owned),
    })
}

/// Free bytes for an unprivileged-by-root write at `path` or its nearest
/// existing ancestor (a profile root is made lazily).
fn free_bytes(path: &Path) -> Result<u64, std::io::Error> {
    let mut p = path;
    loop {
        match rustix::fs::statvfs(p) {
            Ok(st) => return Ok(st.f_bavail.saturating_mul(st.f_frsize)),
            Err(rustix::io::Errno::NOENT) => match p.parent() {
                Some(parent) => p = parent,
                None => return Err(rustix::io::Errno::NOENT.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes the receiving side's storage blank. A block volume's image is
/// emptied to all holes at its size: the receiver writes the source's data
/// extents and punches only what its own earlier rounds wrote, so anything
/// `mkfs` (or an older copy) left where the source has holes would survive.
/// A tree is blank already when freshly created.
fn blank_for_receive(paths: &TransferPaths) -> std::io::Result<()> {
    if paths.mode == TransferMode::Image {
        let f = std::fs::OpenOptions::new().write(true).open(&paths.data)?;
        let len = f.metadata()?.len();
        f.set_len(0)?;
        f.set_len(len)?;
        f.sync_all()?;
    }
    match std::fs::remove_dir_all(&paths.state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn blank_error(rec: &VolumeRecord, e: std::io::Error) -> ServiceError {
    ServiceError::Migration {
        op: "receive",
        name: rec.docker_name.clone(),
        message: format!("preparing blank storage: {e}"),
    }
}

fn wrong_state(rec: &VolumeRecord, op: &'static str, want: &str) -> ServiceError {
    ServiceError::Migration {
        op,
        name: rec.docker_name.clone(),
        message: format!(
            "volume is {}{}; {op} needs it {want}",
            rec.state.as_str(),
            rec.state
                .peer()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ),
    }
}

impl VolumeService {
    /// Runs `f` on the record of `docker_name` under its lock and stores the
    /// result.
    fn change_state(
        &self,
        docker_name: &str,
        f: impl FnOnce(&mut VolumeRecord) -> Result<(), ServiceError>,
    ) -> Result<VolumeView, ServiceError> {
        let rec = self.find(docker_name)?;
        let vlock = self.volume_lock(&rec.name);
        let _g = lock(&vlock);
        let mut rec = self.find(docker_name)?;
        let before = rec.state.clone();
        f(&mut rec)?;
        if rec.state != before {
            self.store.put(&rec)?;
            tracing::info!(volume = %rec.docker_name, from = before.as_str(),
                to = rec.state.as_str(), peer = rec.state.peer().unwrap_or(""), "migration state");
        }
        Ok(self.view(rec))
    }

    /// Where the mover finds this volume.
    pub fn transfer_paths(&self, docker_name: &str) -> Result<TransferPaths, ServiceError> {
        transfer_paths(&self.find(docker_name)?)
    }

    /// Source: pre-copy to `to` starts. The volume stays mountable.
    pub fn begin_move(&self, docker_name: &str, to: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| {
            transfer_paths(rec)?;
            match &rec.state {
                VolumeState::Ready | VolumeState::Moving { .. } => {
                    rec.state = VolumeState::Moving { to: to.to_owned() };
                    Ok(())
                }
                _ => Err(wrong_state(rec, "move", "ready")),
            }
        })
    }

    /// Source: cutover. Succeeds only when nothing has the volume mounted;
    /// from then on Mount is refused ("being moved to HOST").
    pub fn fence(&self, docker_name: &str, to: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| {
            match &rec.state {
                VolumeState::Moving { to: t } | VolumeState::Fenced { to: t } if t == to => {}
                _ => return Err(wrong_state(rec, "fence", &format!("moving to {to}"))),
            }
            if !rec.mounts.is_empty() {
                return Err(ServiceError::InUse {
                    docker_name: rec.docker_name.clone(),
                    mounts: rec.mounts.total(),
                    ids: rec
                        .mounts
                        .ids()
                        .map(|(id, _)| short_id(id).to_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            rec.state = VolumeState::Fenced { to: to.to_owned() };
            Ok(())
        })
    }

    /// Source: the destination owns the volume now. Mount fails for good
    /// with "volume moved to HOST" (Remove still works, to reclaim space).
    pub fn finish_move(&self, docker_name: &str, to: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| match &rec.state {
            VolumeState::Fenced { to: t } | VolumeState::Moved { to: t } if t == to => {
                rec.state = VolumeState::Moved { to: to.to_owned() };
                Ok(())
            }
            _ => Err(wrong_state(rec, "finish_move", &format!("fenced for {to}"))),
        })
    }

    /// Source: a move that did not hand ownership over is called off; the
    /// volume is usable here again.
    pub fn abort_move(&self, docker_name: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| match &rec.state {
            VolumeState::Moving { .. } | VolumeState::Fenced { .. } | VolumeState::Ready => {
                rec.state = VolumeState::Ready;
                Ok(())
            }
            _ => Err(wrong_state(rec, "abort_move", "moving or fenced")),
        })
    }

    /// Destination: can `docker_name` (with `opts`) be received from `from`,
    /// needing `need_bytes`? Nothing is changed.
    pub fn check_receive(
        &self,
        docker_name: &str,
        opts: &BTreeMap<String, String>,
        need_bytes: u64,
    ) -> Result<ReceiveCheck, ServiceError> {
        let req = self.catalog.request(docker_name, opts)?;
        let settings = self
            .catalog
            .resolve(&req, self.backend.kind(), &self.data_root)?;
        let Settings::Local(s) = &settings else {
            return Err(ServiceError::Migration {
                op: "receive",
                name: docker_name.to_owned(),
                message: "this host's backend cannot receive volumes".into(),
            });
        };
        let mut resuming = false;
        if let Some(existing) = self.store.get(&req.name)? {
            match &existing.state {
                VolumeState::Receiving { .. } => resuming = true,
                VolumeState::Moved { .. } => {}
                _ => {
                    return Err(ServiceError::Exists {
                        name: req.name,
                        existing: existing.docker_name,
                        profile: existing.profile,
                    });
                }
            }
            if existing.docker_name != docker_name {
                return Err(ServiceError::Exists {
                    name: req.name,
                    existing: existing.docker_name,
                    profile: existing.profile,
                });
            }
        }
        let free = free_bytes(&s.root).map_err(|e| ServiceError::Migration {
            op: "receive",
            name: docker_name.to_owned(),
            message: format!("free space of {}: {e}", s.root.display()),
        })?;
        if free < need_bytes {
            return Err(ServiceError::Migration {
                op: "receive",
                name: docker_name.to_owned(),
                message: format!(
                    "not enough room under {}: {need_bytes} bytes needed, {free} free",
                    s.root.display()
                ),
            });
        }
        Ok(ReceiveCheck {
            docker_name: docker_name.to_owned(),
            profile: req.profile,
            root: s.root.clone(),
            free_bytes: free,
            need_bytes,
            resuming,
        })
    }

    /// Destination: makes (or finds) the volume in state `Receiving` and
    /// returns where rounds write. A `Ready` volume here is never overwritten.
    pub fn prepare_receive(
        &self,
        docker_name: &str,
        opts: &BTreeMap<String, String>,
        from: &str,
    ) -> Result<TransferPaths, ServiceError> {
        let req = self.catalog.request(docker_name, opts)?;
        let vlock = self.volume_lock(&req.name);
        let _g = lock(&vlock);
        let receiving = VolumeState::Receiving {
            from: from.to_owned(),
        };
        if let Some(mut existing) = self.store.get(&req.name)? {
            let ok = existing.docker_name == docker_name
                && matches!(
                    existing.state,
                    VolumeState::Receiving { .. } | VolumeState::Moved { .. }
                );
            if !ok {
                return Err(ServiceError::Exists {
                    name: req.name,
                    existing: existing.docker_name,
                    profile: existing.profile,
                });
            }
            if let VolumeState::Moved { .. } = existing.state {
                // Our old copy of a volume that moved away and now comes
                // back: start from blank storage (the receiver only knows
                // what its own rounds wrote, not what this copy holds).
                self.backend.remove(vref(&existing))?;
                self.backend.create(vref(&existing))?;
                let paths = transfer_paths(&existing)?;
                blank_for_receive(&paths).map_err(|e| blank_error(&existing, e))?;
            }
            if existing.state != receiving {
                existing.state = receiving;
                self.store.put(&existing)?;
            }
            return transfer_paths(&existing);
        }
        let settings = self
            .catalog
            .resolve(&req, self.backend.kind(), &self.data_root)?;
        let mut rec = VolumeRecord {
            docker_name: req.docker_name,
            aliases: Default::default(),
            name: req.name,
            profile: req.profile,
            backend: self.backend.kind(),
            settings,
            options: opts.clone(),
            created_at: now_secs(),
            state: VolumeState::Creating,
            mounts: Mounts::default(),
        };
        // Same intent-first order as Create: a crash leaves a `Creating`
        // record that `recover` cleans up.
        self.store.put(&rec)?;
        if let Err(e) = self.backend.create(vref(&rec)) {
            if let Err(e2) = self.backend.remove(vref(&rec)) {
                tracing::error!(volume = %rec.docker_name, error = %e2, "cleaning up after a failed receive");
            }
            self.store.delete(&rec.name)?;
            return Err(e.into());
        }
        let paths = transfer_paths(&rec)?;
        if let Err(e) = blank_for_receive(&paths) {
            let _ = self.backend.remove(vref(&rec));
            self.store.delete(&rec.name)?;
            return Err(blank_error(&rec, e));
        }
        rec.state = receiving;
        self.store.put(&rec)?;
        tracing::info!(volume = %rec.docker_name, from, "receiving");
        transfer_paths(&rec)
    }

    /// Destination: the source handed the volume over; it is ours and
    /// mountable. Repeating it is fine (the source may retry the handover).
    pub fn take_ownership(&self, docker_name: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| match &rec.state {
            VolumeState::Receiving { .. } | VolumeState::Ready => {
                rec.state = VolumeState::Ready;
                Ok(())
            }
            _ => Err(wrong_state(rec, "take_ownership", "receiving")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounded::Fence;

    fn fence() -> Fence {
        Fence::new(std::time::Duration::from_secs(10))
    }

    fn svc() -> (tempfile::TempDir, VolumeService) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let backend = crate::backend::open(&crate::config::Config::default()).unwrap();
        let catalog = Catalog::builtin();
        let svc = VolumeService::new(store, backend, catalog, dir.path().to_path_buf());
        (dir, svc)
    }

    #[test]
    fn fence_waits_for_unmount_and_then_refuses_mounts() {
        let (_d, svc) = svc();
        svc.create("v", &BTreeMap::new()).unwrap();
        svc.mount("v", "c1", &fence()).unwrap();
        svc.begin_move("v", "hostb").unwrap();
        // Pre-copy: still mountable.
        svc.mount("v", "c2", &fence()).unwrap();
        let err = svc.fence("v", "hostb").unwrap_err();
        assert!(matches!(err, ServiceError::InUse { .. }), "{err}");
        svc.unmount("v", "c1").unwrap();
        svc.unmount("v", "c2").unwrap();
        svc.fence("v", "hostb").unwrap();
        let err = svc.mount("v", "c3", &fence()).unwrap_err();
        assert!(err.to_string().contains("being moved to hostb"), "{err}");
        svc.finish_move("v", "hostb").unwrap();
        let err = svc.mount("v", "c3", &fence()).unwrap_err();
        assert!(err.to_string().contains("volume moved to hostb"), "{err}");
        // A finished move cannot be aborted or fenced for another host.
        assert!(svc.abort_move("v").is_err());
        assert!(svc.fence("v", "hostc").is_err());
    }

    #[test]
    fn an_aborted_move_makes_the_volume_usable_again() {
        let (_d, svc) = svc();
        svc.create("v", &BTreeMap::new()).unwrap();
        svc.begin_move("v", "hostb").unwrap();
        svc.fence("v", "hostb").unwrap();
        svc.abort_move("v").unwrap();
        svc.mount("v", "c1", &fence()).unwrap();
    }

    #[test]
    fn receiving_is_not_mountable_until_ownership_and_never_overwrites() {
        let (_d, svc) = svc();
        let opts = BTreeMap::new();
        let p = svc.prepare_receive("r@default", &opts, "hosta").unwrap();
        assert_eq!(p.mode, TransferMode::Tree);
        assert!(p.data.ends_with("r/data"));
        let err = svc.mount("r@default", "c", &fence()).unwrap_err();
        assert!(
            err.to_string().contains("being received from hosta"),
            "{err}"
        );
        // Resuming an interrupted receive finds the same volume.
        assert_eq!(svc.prepare_receive("r@default", &opts, "hosta").unwrap(), p);
        assert!(svc.check_receive("r@default", &opts, 1).unwrap().resuming);
        svc.take_ownership("r@default").unwrap();
        svc.mount("r@default", "c", &fence()).unwrap();
        // An owned volume is never received into.
        assert!(svc.prepare_receive("r@default", &opts, "hosta").is_err());
        assert!(svc.check_receive("r@default", &opts, 1).is_err());
    }

    #[test]
    fn check_receive_wants_the_profile_and_room() {
        let (_d, svc) = svc();
        let opts = BTreeMap::new();
        let err = svc.check_receive("x@nosuch", &opts, 0).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
        let err = svc.check_receive("x", &opts, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("not enough room"), "{err}");
        let ok = svc.check_receive("x", &opts, 1).unwrap();
        assert!(ok.free_bytes > 0 && !ok.resuming);
    }

    #[test]
    fn a_received_block_image_starts_as_all_holes() {
        use std::os::unix::fs::MetadataExt;
        let (_d, svc) = svc();
        let p = svc
            .prepare_receive("g@gold", &BTreeMap::new(), "hosta")
            .unwrap();
        assert_eq!(p.mode, TransferMode::Image);
        let md = std::fs::metadata(&p.data).unwrap();
        assert!(md.len() > 0, "the image keeps its size");
        assert_eq!(md.blocks(), 0, "mkfs data must not survive into a receive");
    }

    #[test]
    fn a_moved_volume_can_come_back() {
        let (_d, svc) = svc();
        let opts = BTreeMap::new();
        svc.create("v", &opts).unwrap();
        svc.begin_move("v", "hostb").unwrap();
        svc.fence("v", "hostb").unwrap();
        svc.finish_move("v", "hostb").unwrap();
        let p = svc.transfer_paths("v").unwrap();
        std::fs::write(p.data.join("stale"), b"old copy").unwrap();
        svc.prepare_receive("v", &opts, "hostb").unwrap();
        assert!(!p.data.join("stale").exists(), "the old copy is blanked");
        svc.take_ownership("v").unwrap();
        svc.mount("v", "c", &fence()).unwrap();
    }
}
