//! `dir` volumes: a plain directory. Nothing to attach or mount; no size limit.

use super::super::BackendError;
use super::paths::LocalPaths;

pub(crate) fn create(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    std::fs::create_dir_all(&p.data).map_err(|e| BackendError::io(name, "creating", &p.data, e))
}

/// Recreates the directory if someone deleted it, so docker can still bind it.
pub(crate) fn mount(name: &str, p: &LocalPaths) -> Result<(), BackendError> {
    create(name, p)
}
