//! `dir` volumes: a plain directory. Nothing to attach or mount; a size
//! limit only when asked, as a project quota on `ROOT/NAME` (see [`super::quota`]).

use super::super::BackendError;
use super::super::sys;
use super::claim;
use super::paths::LocalPaths;
use super::quota;
use std::os::unix::fs::PermissionsExt;

/// A new volume's directory is what containers see at their mount point:
/// 0755, as Docker's local driver makes it, whatever the daemon's umask
/// (0077 under the systemd unit). Set once, at creation: a container that
/// later narrows it (a database's 0700 data directory) keeps its choice.
/// The volume's own directory around it is private (see [`sys::private_dir`]),
/// so host users still cannot reach it.
const NEW_DIR_MODE: u32 = 0o755;

/// Makes `ROOT/NAME` (private, with daffe's marker: a directory already
/// there that daffe did not make is refused, see [`claim`]) and the data
/// directory inside it.
pub(crate) fn create(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    claim::claim(name, p)?;
    make_data(name, p)
}

/// Like [`create`], with a limit of `bytes`: refused before anything is
/// made when the filesystem cannot enforce it. The project is set on
/// `data/` while it is empty, so everything a container makes under it
/// inherits it; `ROOT/NAME` itself (daffe's marker, a migration's receive
/// state and send cache) stays out, so daffe's own files never eat the
/// tenant's limit, nor the tenant's files daffe's room to migrate.
pub(crate) fn create_limited(
    name: &str,
    p: &LocalPaths,
    q: &dyn quota::ProjectQuotas,
    bytes: u64,
) -> Result<(), BackendError> {
    quota::check(q, &p.dir).map_err(quota_err(name))?;
    let fresh = !claim::is_ours(p);
    claim::claim(name, p)?;
    let limited = make_data(name, p).and_then(|()| {
        quota::limit(q, &p.data, bytes)
            .map(drop)
            .map_err(quota_err(name))
    });
    if let Err(e) = limited {
        // Not left behind half made (no limit) by this Create.
        if fresh {
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        return Err(e);
    }
    Ok(())
}

pub(crate) fn quota_err(volume: &str) -> impl FnOnce(quota::QuotaError) -> BackendError + '_ {
    move |e| BackendError::Other {
        volume: volume.to_owned(),
        message: e.to_string(),
    }
}

fn make_data(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    if p.data.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(&p.data).map_err(|e| BackendError::io(name, "creating", &p.data, e))?;
    std::fs::set_permissions(&p.data, std::fs::Permissions::from_mode(NEW_DIR_MODE))
        .map_err(|e| BackendError::io(name, "setting the mode of", &p.data, e))
}

/// Recreates the directory if someone deleted it, so docker can still bind
/// it. A volume made by an older daffe (no marker) is used as it is. A
/// sized volume's limit is checked (and set again, on the same project, or
/// a new one if `data/` was recreated) so no Mount hands out an unlimited
/// directory.
pub(crate) fn mount_limited(
    name: &str,
    p: &LocalPaths,
    q: &dyn quota::ProjectQuotas,
    bytes: u64,
) -> Result<(), BackendError> {
    mount(name, p)?;
    quota::limit(q, &p.data, bytes)
        .map(drop)
        .map_err(quota_err(name))
}

/// See [`mount_limited`]; a volume without a size.
pub(crate) fn mount(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    if p.dir.is_dir() {
        sys::private_dir(&p.dir).map_err(|e| BackendError::io(name, "creating", &p.dir, e))?;
        return make_data(name, p);
    }
    create(name, p)
}
