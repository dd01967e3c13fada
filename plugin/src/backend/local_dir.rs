//! `dir` volumes: a plain directory. Nothing to attach or mount; no size limit.

use super::BackendError;
use super::local::LocalPaths;
use super::sys;

/// Makes `ROOT/NAME` private (0700: see [`sys::private_dir`]) and the data
/// directory inside it, whose own mode is the container's business.
pub fn create(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    sys::private_dir(&p.dir).map_err(|e| BackendError::io(name, "creating", &p.dir, e))?;
    std::fs::create_dir_all(&p.data).map_err(|e| BackendError::io(name, "creating", &p.data, e))
}

/// Recreates the directory if someone deleted it, so docker can still bind it.
pub fn mount(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    create(name, p)
}
