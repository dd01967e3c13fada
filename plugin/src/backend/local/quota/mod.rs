//! Size limits of `dir` volumes (issue 12, finding 7: one tenant must not
//! fill the host): a dir volume created with `-o size=N` gets a project
//! quota of N on its data directory `ROOT/NAME/data`.
//!
//! - Each such volume has its own project id, set on `data/` with
//!   `PROJINHERIT`, so everything a container makes under it is charged to
//!   it (and nothing of daffe's own in `ROOT/NAME`). The id is kept where the kernel keeps it, on the
//!   directory's inode (`FS_IOC_FSGETXATTR`): the record cannot disagree
//!   with the filesystem, and a restored or copied record cannot point at
//!   another volume's id. A new id is one the filesystem has neither files
//!   nor a limit for (so never one a live volume, or an operator's own
//!   project, holds), chosen under a process-wide lock.
//! - A filesystem that does not enforce project quotas refuses the volume at
//!   Create, saying what the operator must enable ([`pure::Fs::what_to_enable`]).
//! - Remove deletes the directory, then clears the limit, which frees the id.
//!
//! [`pure`] is the pure part (mountinfo, the refusal text, id choice, report
//! parsing); [`tools`] the real edge behind [`ProjectQuotas`]; the double is
//! `fake::FakeQuotas` (tests only).

#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod pure;
pub(crate) mod tools;

pub(crate) use pure::{Fs, Usage};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the kernel's project quotas are asked, one method per operation.
pub(crate) trait ProjectQuotas: Send + Sync {
    /// The filesystem holding `path` (an existing path) and its quota state.
    fn filesystem(&self, path: &Path) -> Result<Fs, QuotaError>;
    /// Every project the filesystem has a usage or limit entry for.
    fn report(&self, fs: &Fs) -> Result<Vec<(u32, Usage)>, QuotaError>;
    /// The project id of `dir` (0: none).
    fn project_of(&self, dir: &Path) -> Result<u32, QuotaError>;
    /// Sets `dir`'s project id and `PROJINHERIT` (new files and
    /// directories under it take the id).
    fn set_project(&self, dir: &Path, id: u32) -> Result<(), QuotaError>;
    /// Sets project `id`'s hard block limit (0: none).
    fn set_limit(&self, fs: &Fs, id: u32, bytes: u64) -> Result<(), QuotaError>;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum QuotaError {
    #[error("cannot enforce a size on a dir volume here: {0}")]
    Unsupported(String),
    #[error("`{command}` did not finish within {seconds} s")]
    Timeout { command: String, seconds: u64 },
    #[error(transparent)]
    Command(#[from] super::super::sys::CommandError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no mount in /proc/self/mountinfo holds {0}")]
    NoMount(PathBuf),
    #[error("unexpected output of {command}: {output:?}")]
    Parse { command: String, output: String },
    #[error("no free project id on the filesystem at {0}")]
    NoFreeId(PathBuf),
}

/// Allocation and setting of an id are one step: two Creates at once must
/// not both find the same id free.
static ALLOCATE: Mutex<()> = Mutex::new(());

/// The nearest existing directory at or above `path` (a volume's root may
/// not exist before its first Create), to find its filesystem.
fn existing_ancestor(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(up) => p = up,
            None => break,
        }
    }
    p
}

/// Refuses early (before anything is made) when the filesystem that will
/// hold `dir` cannot enforce a limit.
pub(crate) fn check(q: &dyn ProjectQuotas, dir: &Path) -> Result<Fs, QuotaError> {
    let fs = q.filesystem(existing_ancestor(dir))?;
    match fs.what_to_enable() {
        None => Ok(fs),
        Some(why) => Err(QuotaError::Unsupported(why)),
    }
}

/// Gives `dir` (new and empty) its own project with a limit
/// of `bytes`; returns the id. A Create redone keeps the id the directory
/// already has.
pub(crate) fn limit(q: &dyn ProjectQuotas, dir: &Path, bytes: u64) -> Result<u32, QuotaError> {
    let fs = check(q, dir)?;
    let _one = ALLOCATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut id = q.project_of(dir)?;
    if id == 0 {
        let in_use = q
            .report(&fs)?
            .into_iter()
            .filter(|(_, u)| u.is_live())
            .map(|(id, _)| id)
            .collect();
        id = pure::allocate(&in_use, &dir.to_string_lossy())
            .ok_or_else(|| QuotaError::NoFreeId(fs.mountpoint.clone()))?;
        // The limit first: an id is taken (live) from the moment it has
        // one, before any file is charged to it.
        q.set_limit(&fs, id, bytes)?;
        q.set_project(dir, id)?;
    } else {
        q.set_limit(&fs, id, bytes)?;
    }
    Ok(id)
}

/// The project of `dir` and its filesystem, if it has one (before Remove
/// deletes the directory); none if `dir` is gone.
pub(crate) fn project(q: &dyn ProjectQuotas, dir: &Path) -> Result<Option<(Fs, u32)>, QuotaError> {
    if !dir.exists() {
        return Ok(None);
    }
    let fs = q.filesystem(dir)?;
    match q.project_of(dir)? {
        0 => Ok(None),
        id => Ok(Some((fs, id))),
    }
}

/// Clears project `id`'s limit (its files are gone): the id is free again.
pub(crate) fn release(q: &dyn ProjectQuotas, fs: &Fs, id: u32) -> Result<(), QuotaError> {
    q.set_limit(fs, id, 0)
}

/// A volume's project, limit and usage, for `docker volume inspect`.
pub(crate) fn status(
    q: &dyn ProjectQuotas,
    dir: &Path,
) -> Result<Option<(u32, Usage)>, QuotaError> {
    let Some((fs, id)) = project(q, dir)? else {
        return Ok(None);
    };
    let usage = q
        .report(&fs)?
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, u)| u)
        .unwrap_or_default();
    Ok(Some((id, usage)))
}

#[cfg(test)]
mod tests {
    use super::fake::FakeQuotas;
    use super::pure::ProjectState;
    use super::*;

    #[test]
    fn a_volume_gets_a_free_id_with_its_limit_and_remove_frees_it() {
        let root = tempfile::tempdir().unwrap();
        let q = FakeQuotas::new(ProjectState::Enforced);
        // An operator's project that happens to sit where "a" would start.
        let a_dir = root.path().join("a");
        std::fs::create_dir(&a_dir).unwrap();
        let start = pure::allocate(&Default::default(), &a_dir.to_string_lossy()).unwrap();
        q.set_limit(&q.fs(), start, 4096).unwrap();

        let a = limit(&q, &a_dir, 64 << 20).unwrap();
        assert_ne!(a, start, "an id with a limit is not free");
        assert_eq!(q.project_of(&a_dir).unwrap(), a);
        assert_eq!(q.limit_of(a), 64 << 20);
        // A redone Create keeps the id and resets the limit.
        assert_eq!(limit(&q, &a_dir, 32 << 20).unwrap(), a);
        assert_eq!(q.limit_of(a), 32 << 20);

        q.charge(a, 5000);
        let (id, u) = status(&q, &a_dir).unwrap().unwrap();
        // 4096: the directory inode itself is charged to its project.
        assert_eq!((id, u.used, u.limit), (a, 4096 + 5000, 32 << 20));

        let (fs, id) = project(&q, &a_dir).unwrap().unwrap();
        q.delete_dir(&a_dir);
        release(&q, &fs, id).unwrap();
        assert_eq!(q.limit_of(a), 0);
        assert_eq!(
            q.limit_of(start),
            4096,
            "the operator's project is untouched"
        );
    }

    #[test]
    fn two_volumes_never_share_an_id_even_from_the_same_start() {
        let root = tempfile::tempdir().unwrap();
        let q = FakeQuotas::new(ProjectState::Enforced);
        let mut ids = std::collections::BTreeSet::new();
        for n in 0..20 {
            let d = root.path().join(format!("v{n}"));
            std::fs::create_dir(&d).unwrap();
            assert!(ids.insert(limit(&q, &d, 1 << 20).unwrap()), "{n}");
        }
        // A directory whose seed collides (the same path recreated after a
        // remove that kept the old project) still gets a free id.
        let d = root.path().join("v0");
        let old = q.project_of(&d).unwrap();
        q.forget_dir(&d);
        let new = limit(&q, &d, 1 << 20).unwrap();
        assert_ne!(new, old, "old id still holds files and a limit");
    }

    #[test]
    fn filesystems_without_enforced_project_quotas_are_refused_before_anything_is_made() {
        let root = tempfile::tempdir().unwrap();
        for state in [ProjectState::Off, ProjectState::AccountingOnly] {
            let q = FakeQuotas::new(state);
            let d = root.path().join("not/yet/there");
            let err = limit(&q, &d, 1 << 20).unwrap_err();
            assert!(
                matches!(err, QuotaError::Unsupported(_))
                    && err.to_string().contains("cannot enforce a size"),
                "{err}"
            );
            assert!(q.calls().is_empty(), "{state:?}: {:?}", q.calls());
        }
    }
}
