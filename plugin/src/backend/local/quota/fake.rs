//! The double of [`ProjectQuotas`]: one filesystem in memory that behaves
//! as xfs does for what daffe asks (project ids on directories that must
//! exist, limits per id, empty entries kept after a limit is cleared).

use super::pure::{Fs, ProjectState, Usage};
use super::{ProjectQuotas, QuotaError};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Default)]
struct Inner {
    dirs: HashMap<PathBuf, u32>,
    quotas: BTreeMap<u32, Usage>,
    calls: Vec<String>,
}

pub(crate) struct FakeQuotas {
    state: ProjectState,
    inner: Mutex<Inner>,
}

impl FakeQuotas {
    pub(crate) fn new(state: ProjectState) -> Self {
        Self {
            state,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub(crate) fn fs(&self) -> Fs {
        Fs {
            fstype: "xfs".into(),
            mountpoint: "/fake".into(),
            project: self.state,
        }
    }

    pub(crate) fn limit_of(&self, id: u32) -> u64 {
        self.lock().quotas.get(&id).map_or(0, |u| u.limit)
    }

    /// Files of `bytes` written under a directory of project `id`.
    pub(crate) fn charge(&self, id: u32, bytes: u64) {
        self.lock().quotas.entry(id).or_default().used += bytes;
    }

    /// The directory and its files deleted: their usage goes.
    pub(crate) fn delete_dir(&self, dir: &Path) {
        let mut i = self.lock();
        if let Some(id) = i.dirs.remove(dir)
            && let Some(u) = i.quotas.get_mut(&id)
        {
            u.used = 0;
        }
    }

    /// The directory replaced by one without a project, the old id's
    /// files and limit left (a crash between delete and release).
    pub(crate) fn forget_dir(&self, dir: &Path) {
        self.lock().dirs.remove(dir);
    }

    /// Mutating calls and reports, in order.
    pub(crate) fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

impl ProjectQuotas for FakeQuotas {
    fn filesystem(&self, path: &Path) -> Result<Fs, QuotaError> {
        if !path.exists() {
            return Err(QuotaError::NoMount(path.to_owned()));
        }
        Ok(self.fs())
    }

    fn report(&self, _fs: &Fs) -> Result<Vec<(u32, Usage)>, QuotaError> {
        let mut i = self.lock();
        i.calls.push("report".into());
        Ok(i.quotas.iter().map(|(id, u)| (*id, *u)).collect())
    }

    fn project_of(&self, dir: &Path) -> Result<u32, QuotaError> {
        if !dir.exists() {
            return Err(QuotaError::Io {
                what: "reading the project of",
                path: dir.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(self.lock().dirs.get(dir).copied().unwrap_or(0))
    }

    fn set_project(&self, dir: &Path, id: u32) -> Result<(), QuotaError> {
        if !dir.is_dir() {
            return Err(QuotaError::Io {
                what: "setting the project of",
                path: dir.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let mut i = self.lock();
        i.calls.push(format!("set_project {id}"));
        i.dirs.insert(dir.to_owned(), id);
        // The directory inode itself is charged to its project.
        i.quotas.entry(id).or_default().used += 4096;
        Ok(())
    }

    fn set_limit(&self, _fs: &Fs, id: u32, bytes: u64) -> Result<(), QuotaError> {
        let mut i = self.lock();
        i.calls.push(format!("set_limit {id} {bytes}"));
        i.quotas.entry(id).or_default().limit = bytes;
        Ok(())
    }
}
