//! `dir` volumes: a plain directory. Nothing to attach or mount; no size limit.

use super::super::BackendError;
use super::super::sys;
use super::claim;
use super::paths::LocalPaths;
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

fn make_data(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    if p.data.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(&p.data).map_err(|e| BackendError::io(name, "creating", &p.data, e))?;
    std::fs::set_permissions(&p.data, std::fs::Permissions::from_mode(NEW_DIR_MODE))
        .map_err(|e| BackendError::io(name, "setting the mode of", &p.data, e))
}

/// Recreates the directory if someone deleted it, so docker can still bind
/// it. A volume made by an older daffe (no marker) is used as it is.
pub(crate) fn mount(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    if p.dir.is_dir() {
        sys::private_dir(&p.dir).map_err(|e| BackendError::io(name, "creating", &p.dir, e))?;
        return make_data(name, p);
    }
    create(name, p)
}
