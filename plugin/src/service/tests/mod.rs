//! The service's tests, by part: [`volumes`] (Docker's semantics, over a
//! fake backend), [`migrate`] (host-to-host migration states, over the
//! local backend), [`ebs`] and [`profile_change`] (over the EBS backend and the
//! in-memory EC2), [`clustered`] (cluster mode's data path over the
//! in-memory etcd), and [`list`]: List's cache is right after every write,
//! whichever part made it.

mod clustered;
mod ebs;
mod list;
mod migrate;
mod profile_change;
mod volumes;

use super::VolumeService;
use crate::backend::{Backend, BackendError, Status, Storage, VolumeRef};
use crate::bounded::Fence;
use crate::state::Records;
use profiles::{BackendKind, Catalog};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records in a temporary directory.
fn records(dir: &std::path::Path) -> Records {
    Records::open(&dir.join("state.redb")).unwrap()
}

/// A service over the real local backend, its roots in a temporary directory.
fn local_service() -> (tempfile::TempDir, VolumeService) {
    let dir = tempfile::tempdir().unwrap();
    let backend = crate::backend::open(
        profiles::BackendKind::Local,
        &Default::default(),
        dir.path(),
    )
    .unwrap();
    let svc = VolumeService::new(
        records(dir.path()),
        backend,
        Catalog::builtin(),
        dir.path().to_path_buf(),
    );
    (dir, svc)
}

/// A service over the EBS backend of `r`, with its store and state in a
/// temporary directory.
pub(crate) fn ebs_service(
    r: &crate::backend::ebs::testkit::Rig,
) -> (Arc<VolumeService>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let svc = VolumeService::new(
        records(dir.path()),
        Storage::ebs(r.be.clone()),
        Catalog::builtin(),
        dir.path().to_owned(),
    );
    (Arc::new(svc), dir)
}

fn no_opts() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// A fence nobody abandons.
fn go() -> Fence {
    Fence::unbounded()
}

/// A backend that records what it is asked and fails on demand.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    mounted: Mutex<std::collections::HashSet<String>>,
    fail_create: AtomicBool,
    fail_mount: AtomicBool,
    /// Remove fails for this name.
    fail_remove: Mutex<Option<String>>,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.calls))
    }
    fn log(&self, what: &str, name: &str) {
        lock(&self.calls).push(format!("{what} {name}"));
    }
    fn is_mounted(&self, name: &str) -> bool {
        lock(&self.mounted).contains(name)
    }
}

fn fail(name: &str) -> BackendError {
    BackendError::Other {
        volume: name.into(),
        message: "injected".into(),
    }
}

impl Backend for Fake {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    fn create(&self, v: VolumeRef<'_>) -> Result<(), BackendError> {
        self.log("create", v.name);
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(fail(v.name));
        }
        Ok(())
    }
    fn remove(&self, v: VolumeRef<'_>) -> Result<(), BackendError> {
        self.log("remove", v.name);
        if lock(&self.fail_remove).as_deref() == Some(v.name) {
            return Err(fail(v.name));
        }
        Ok(())
    }
    fn mount(&self, v: VolumeRef<'_>) -> Result<PathBuf, BackendError> {
        self.log("mount", v.name);
        if self.fail_mount.load(Ordering::SeqCst) {
            return Err(fail(v.name));
        }
        lock(&self.mounted).insert(v.name.to_owned());
        Ok(self.path(v))
    }
    fn unmount(&self, v: VolumeRef<'_>) -> Result<(), BackendError> {
        self.log("unmount", v.name);
        lock(&self.mounted).remove(v.name);
        Ok(())
    }
    fn path(&self, v: VolumeRef<'_>) -> PathBuf {
        PathBuf::from("/fake").join(v.name)
    }
    fn status(&self, _: VolumeRef<'_>) -> Status {
        Status::from([("fake".to_owned(), true.into())])
    }
}

struct Env {
    svc: Arc<VolumeService>,
    fake: Arc<Fake>,
    _dir: tempfile::TempDir,
    store_path: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("state.redb");
    let fake = Arc::new(Fake::default());
    let svc = VolumeService::new(
        Records::open(&store_path).unwrap(),
        Storage::plain(fake.clone()),
        Catalog::builtin(),
        dir.path().to_owned(),
    );
    Env {
        svc: Arc::new(svc),
        fake,
        _dir: dir,
        store_path,
    }
}
