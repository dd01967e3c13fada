//! The volume service's side of a migration between hosts: the state changes
//! of the source (`Moving`, `Fenced`, `Moved`) and of the destination
//! (`Receiving`, then `Ready`), and where the mover finds a volume's data.
//!
//! Every change happens under the volume's lock, like Mount: once `fence`
//! returned, no Mount can slip in, and a Mount that won the race makes
//! `fence` fail with "in use". Nothing here calls dockerd (a handler must
//! never wait on it): the operator, or `daffe migrate`, stops the containers.

use super::{ServiceError, VolumeService, VolumeView, in_use, lock, vref};
use crate::backend::VolumeRef;
use crate::backend::local::LocalPaths;
use crate::backend::local::block;
use crate::backend::local::paths::image_path;
use crate::state::record::{VolumeRecord, VolumeState};
use profiles::{LocalFormat, Settings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Directory, inside a local volume's directory (beside `data`), where the
/// receiving mover keeps its state: same filesystem as the data (staged files
/// are renamed in), outside the tree docker sees.
pub(crate) const RECEIVE_STATE_DIR: &str = ".mover-receive";
/// Same, for the sending side's stat cache (kept between rounds).
pub(crate) const SEND_CACHE_DIR: &str = ".mover-send";
/// Volumes one peer may have in `Receiving` here at once. A host drains
/// onto another a few volumes at a time; an authenticated peer must not
/// create volumes without end (hardening finding 13).
pub(crate) const MAX_RECEIVING_PER_PEER: usize = 32;

/// How a volume's data is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransferMode {
    /// A `dir` volume: its directory tree.
    Tree,
    /// A `block` volume: its filesystem image.
    Image,
}

/// The control API's answer to `changes` ([`mover::PendingChanges`] as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChangesReply {
    pub(crate) mark: u64,
    pub(crate) ranges: Option<Vec<(u64, u64)>>,
    /// A dir volume's files ([`mover::FileChanges`]); absent from a daemon
    /// older than dir tracking: changed files are read whole.
    #[serde(default)]
    pub(crate) files: Option<FilesReply>,
}

/// [`mover::FileChanges`] as JSON: (inode, ranges or null for "whole").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FilesReply {
    pub(crate) dev: u64,
    pub(crate) written: Vec<InodeWrites>,
}

/// One inode's written ranges, `None`: read the file whole.
pub(crate) type InodeWrites = (u64, Option<Vec<(u64, u64)>>);

impl From<mover::PendingChanges> for ChangesReply {
    fn from(p: mover::PendingChanges) -> Self {
        ChangesReply {
            mark: p.mark,
            ranges: p.ranges,
            files: p.files.map(|f| FilesReply {
                dev: f.dev,
                written: f.written.into_iter().collect(),
            }),
        }
    }
}

impl From<ChangesReply> for mover::PendingChanges {
    fn from(r: ChangesReply) -> Self {
        mover::PendingChanges {
            mark: r.mark,
            ranges: r.ranges,
            files: r.files.map(|f| mover::FileChanges {
                dev: f.dev,
                written: f.written.into_iter().collect(),
            }),
        }
    }
}

/// Where the mover reads or writes a volume, on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TransferPaths {
    pub(crate) docker_name: String,
    pub(crate) profile: String,
    pub(crate) mode: TransferMode,
    /// The tree (`ROOT/NAME/data`) or the image (`ROOT/NAME/image.FS`).
    pub(crate) data: PathBuf,
    /// Receiver state (destination side).
    pub(crate) state_dir: PathBuf,
    /// Sender stat cache (source side).
    pub(crate) cache_dir: PathBuf,
    /// The `-o` options to re-create the volume with elsewhere (size...).
    pub(crate) options: BTreeMap<String, String>,
    pub(crate) state: String,
    /// The other host of a migration (`Moving`/`Fenced`/`Moved` to, `Receiving` from).
    #[serde(default)]
    pub(crate) peer: Option<String>,
    /// Where a block volume's filesystem is mounted while in use (flushed
    /// before each pre-copy round so the image holds what it holds).
    #[serde(default)]
    pub(crate) mountpoint: Option<PathBuf>,
    /// The host a `ready` volume was received from (see
    /// `VolumeRecord::received_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) received_from: Option<String>,
}

/// A destination's answer to "could you receive this volume?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiveCheck {
    pub(crate) docker_name: String,
    pub(crate) profile: String,
    /// Where the volume would live (the profile's root on this host).
    pub(crate) root: PathBuf,
    pub(crate) free_bytes: u64,
    pub(crate) need_bytes: u64,
    /// A partial copy from an earlier, interrupted migration is there.
    pub(crate) resuming: bool,
}

pub(super) fn transfer_paths(rec: &VolumeRecord) -> Result<TransferPaths, ServiceError> {
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
        LocalFormat::Block => (TransferMode::Image, image_path(s, &p)),
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
        mountpoint: matches!(s.format, LocalFormat::Block).then(|| p.data.clone()),
        received_from: rec.received_from.clone(),
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
pub(super) fn blank_for_receive(rec: &VolumeRecord) -> Result<(), ServiceError> {
    let paths = transfer_paths(rec)?;
    let blank = || -> std::io::Result<()> {
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
    };
    blank().map_err(|e| ServiceError::Migration {
        op: "receive",
        name: rec.docker_name.clone(),
        message: format!("preparing blank storage: {e}"),
    })
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
        self.locked(docker_name, |mut rec| {
            let before = rec.state.clone();
            f(&mut rec)?;
            if rec.state != before {
                self.records.put(&rec)?;
                tracing::info!(volume = %rec.docker_name, from = before.as_str(),
                    to = rec.state.as_str(), peer = rec.state.peer().unwrap_or(""), "migration state");
            }
            Ok(self.view(rec))
        })
    }

    /// Where the mover finds this volume.
    pub(crate) fn transfer_paths(&self, docker_name: &str) -> Result<TransferPaths, ServiceError> {
        transfer_paths(&self.find(docker_name)?)
    }

    /// Where the volume's image was written since the last saved scan into
    /// `cache` (the control API's `changes`: `daffe migrate` and the
    /// handover scan in another process than the daemon that tracks it).
    /// `ranges: null` for volumes without tracking: read the image whole.
    pub(crate) fn write_changes_pending(
        &self,
        docker_name: &str,
        cache: &Path,
    ) -> Result<ChangesReply, ServiceError> {
        let rec = self.find(docker_name)?;
        Ok(match self.backend.write_changes(super::vref(&rec), cache) {
            Some(t) => t.pending().into(),
            None => ChangesReply {
                mark: 0,
                ranges: None,
                files: None,
            },
        })
    }

    /// The scan that took `mark` from [`Self::write_changes_pending`] is saved.
    pub(crate) fn write_changes_scanned(
        &self,
        docker_name: &str,
        cache: &Path,
        mark: u64,
    ) -> Result<(), ServiceError> {
        let rec = self.find(docker_name)?;
        if let Some(t) = self.backend.write_changes(super::vref(&rec), cache) {
            t.scanned(mark);
        }
        Ok(())
    }

    /// Source: pre-copy to `to` starts. The volume stays mountable.
    pub(crate) fn begin_move(
        &self,
        docker_name: &str,
        to: &str,
    ) -> Result<VolumeView, ServiceError> {
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
    pub(crate) fn fence(&self, docker_name: &str, to: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| {
            match &rec.state {
                VolumeState::Moving { to: t } | VolumeState::Fenced { to: t } if t == to => {}
                _ => return Err(wrong_state(rec, "fence", &format!("moving to {to}"))),
            }
            if !rec.mounts.is_empty() {
                return Err(in_use(rec));
            }
            rec.state = VolumeState::Fenced { to: to.to_owned() };
            Ok(())
        })
    }

    /// Source: the destination owns the volume now. Mount fails for good
    /// with "volume moved to HOST" (Remove still works, to reclaim space).
    pub(crate) fn finish_move(
        &self,
        docker_name: &str,
        to: &str,
    ) -> Result<VolumeView, ServiceError> {
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
    pub(crate) fn abort_move(&self, docker_name: &str) -> Result<VolumeView, ServiceError> {
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
    pub(crate) fn check_receive(
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
        // A sized dir volume needs project quotas here too (issue 12,
        // finding 7): refused before the source sends anything.
        self.backend.check_create(VolumeRef {
            name: &req.name,
            settings: &settings,
            profile: &req.profile,
            docker_name,
        })?;
        let mut resuming = false;
        if let Some(existing) = self.records.get(&req.name)? {
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
    pub(crate) fn prepare_receive(
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
        if let Some(mut existing) = self.records.get(&req.name)? {
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
            // Another node's receive is its own: resumed by it, never taken
            // over (issue 12, finding 5; `from` is the asker's certificate
            // name). Removing the volume here ends it.
            if let VolumeState::Receiving { from: other } = &existing.state
                && other != from
            {
                return Err(ServiceError::Migration {
                    op: "receive",
                    name: docker_name.to_owned(),
                    message: format!(
                        "it is being received from {other}, not from {from}: only {other} \
                         may resume it (remove the volume here to end that receive)"
                    ),
                });
            }
            if let VolumeState::Moved { .. } = existing.state {
                // Our old copy of a volume that moved away and now comes
                // back: start from blank storage (the receiver only knows
                // what its own rounds wrote, not what this copy holds).
                self.backend.remove(vref(&existing))?;
                self.backend.create(vref(&existing))?;
                blank_for_receive(&existing)?;
            }
            if existing.state != receiving {
                existing.state = receiving;
                self.records.put(&existing)?;
            }
            return transfer_paths(&existing);
        }
        let from_peer = self
            .records
            .list()?
            .iter()
            .filter(|r| matches!(&r.state, VolumeState::Receiving { from: f } if f == from))
            .count();
        if from_peer >= MAX_RECEIVING_PER_PEER {
            return Err(ServiceError::Migration {
                op: "receive",
                name: docker_name.to_owned(),
                message: format!(
                    "{from} is already sending {from_peer} volumes here, the limit \
                     ({MAX_RECEIVING_PER_PEER}); finish or abort one first"
                ),
            });
        }
        let mut rec = self.new_record(req, opts, VolumeState::Creating)?;
        self.create_storage(&rec, blank_for_receive)?;
        rec.state = receiving;
        self.records.put(&rec)?;
        tracing::info!(volume = %rec.docker_name, from, "receiving");
        transfer_paths(&rec)
    }

    /// Destination: the source handed the volume over; it is ours and
    /// mountable. Repeating it is fine (the source may retry the handover).
    pub(crate) fn take_ownership(&self, docker_name: &str) -> Result<VolumeView, ServiceError> {
        self.change_state(docker_name, |rec| match &rec.state {
            VolumeState::Receiving { from } => {
                // A block volume's image came from a peer: checked before
                // anything mounts it (issue 12, finding 13).
                if let Settings::Local(s) = &rec.settings
                    && s.format == LocalFormat::Block
                {
                    block::check_received(&rec.docker_name, s, &LocalPaths::new(&rec.name, s))?;
                }
                rec.received_from = Some(from.clone());
                rec.state = VolumeState::Ready;
                Ok(())
            }
            VolumeState::Ready => Ok(()),
            _ => Err(wrong_state(rec, "take_ownership", "receiving")),
        })
    }
}
