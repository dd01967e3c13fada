//! The daemon's profile catalog, which `POST /v1/configuration/profiles` can
//! change while it runs: readers take a snapshot (`Arc<Catalog>`), a writer
//! builds a candidate, checks it against the existing volumes, then commits
//! it (persisted, then swapped in).
//!
//! Profiles defined through the API are kept in `DATA_ROOT/state/profiles.json`
//! (written to a temporary file, fsynced, renamed, directory fsynced) and
//! laid over the config file's at every start, so a defined profile outlives
//! a restart as the volumes made with it do.

use profiles::{
    BackendKind, Catalog, CatalogError, ProfileDef, RequestError, ResolveError, Settings,
    VolumeRequest,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The file under the state directory.
pub(crate) const PROFILES_FILE: &str = "profiles.json";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CatalogStoreError {
    #[error("profiles file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profiles file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("profiles file {path}: {source}")]
    Profile { path: PathBuf, source: CatalogError },
}

/// The file's content: profiles defined through the API, by name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    profiles: BTreeMap<String, ProfileDef>,
}

pub(crate) struct SharedCatalog {
    current: RwLock<Arc<Catalog>>,
    /// Where defined profiles are kept; `None`: not persisted (tests).
    file: Option<PathBuf>,
    /// Defined profiles, as persisted; also serialises writers.
    overrides: Mutex<BTreeMap<String, ProfileDef>>,
}

impl std::fmt::Debug for SharedCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCatalog")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogStoreError + '_ {
    move |source| CatalogStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl SharedCatalog {
    /// A catalog that is not persisted.
    pub(crate) fn new(catalog: Catalog) -> Self {
        Self {
            current: RwLock::new(Arc::new(catalog)),
            file: None,
            overrides: Mutex::new(BTreeMap::new()),
        }
    }

    /// `base` (built-ins and config file) with the profiles defined earlier
    /// laid over it, persisted in `state_dir`.
    pub(crate) fn open(base: Catalog, state_dir: &Path) -> Result<Self, CatalogStoreError> {
        let path = state_dir.join(PROFILES_FILE);
        let overrides = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Overrides>(&bytes)
                    .map_err(|e| CatalogStoreError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?
                    .profiles
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut cat = base;
        for (name, def) in &overrides {
            cat.define(name, def.clone())
                .map_err(|source| CatalogStoreError::Profile {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(Self {
            current: RwLock::new(Arc::new(cat)),
            file: Some(path),
            overrides: Mutex::new(overrides),
        })
    }

    /// The catalog now.
    pub(crate) fn snapshot(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the writer's lock: one definition at a time, from candidate to
    /// commit.
    pub(crate) fn writer(&self) -> Writer<'_> {
        Writer {
            cat: self,
            overrides: self.overrides.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    // Pass-throughs to the current catalog, for the service's readers.

    pub(crate) fn request(
        &self,
        docker_name: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<VolumeRequest, RequestError> {
        self.snapshot().request(docker_name, opts)
    }

    pub(crate) fn resolve(
        &self,
        req: &VolumeRequest,
        backend: BackendKind,
        data_root: &Path,
    ) -> Result<Settings, ResolveError> {
        self.snapshot().resolve(req, backend, data_root)
    }
}

/// A writer holding the lock.
pub(crate) struct Writer<'a> {
    cat: &'a SharedCatalog,
    overrides: MutexGuard<'a, BTreeMap<String, ProfileDef>>,
}

impl Writer<'_> {
    /// The catalog as it would be with `name` defined as `def`.
    pub(crate) fn candidate(&self, name: &str, def: ProfileDef) -> Result<Catalog, CatalogError> {
        let mut c = (*self.cat.snapshot()).clone();
        c.define(name, def)?;
        Ok(c)
    }

    /// Persists the definition, then makes `candidate` current.
    pub(crate) fn commit(
        &mut self,
        name: &str,
        def: ProfileDef,
        candidate: Catalog,
    ) -> Result<(), CatalogStoreError> {
        let mut next = self.overrides.clone();
        next.insert(name.to_owned(), def);
        if let Some(path) = &self.cat.file {
            save(path, &next)?;
        }
        *self.overrides = next;
        *self.cat.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(candidate);
        Ok(())
    }
}

/// Atomic replace: temp file, fsync, rename, fsync the directory.
fn save(path: &Path, profiles: &BTreeMap<String, ProfileDef>) -> Result<(), CatalogStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let body = serde_json::to_vec_pretty(&Overrides {
        profiles: profiles.clone(),
    })
    .map_err(|e| CatalogStoreError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silver() -> ProfileDef {
        serde_json::from_value(serde_json::json!({
            "description": "between",
            "local": {"format": "dir"},
            "ebs": {"type": "gp3", "throughput": 250}
        }))
        .unwrap()
    }

    #[test]
    fn defined_profiles_outlive_a_restart_and_override_the_config() {
        let t = tempfile::tempdir().unwrap();
        let sc = SharedCatalog::open(Catalog::builtin(), t.path()).unwrap();
        let before = sc.snapshot();
        {
            let mut w = sc.writer();
            let cand = w.candidate("silver", silver()).unwrap();
            w.commit("silver", silver(), cand).unwrap();
        }
        assert!(before.get("silver").is_none(), "snapshots do not change");
        assert!(sc.snapshot().get("silver").is_some());
        let again = SharedCatalog::open(Catalog::builtin(), t.path()).unwrap();
        assert_eq!(again.snapshot().get("silver").unwrap().def, silver());
        assert_eq!(
            again.snapshot().names().to_string(),
            "default, gold, silver"
        );
        // A bad definition never becomes a candidate.
        let bad: ProfileDef =
            serde_json::from_value(serde_json::json!({"description": "x"})).unwrap();
        assert!(again.writer().candidate("x", bad).is_err());
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_path() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(PROFILES_FILE), b"{not json").unwrap();
        let e = SharedCatalog::open(Catalog::builtin(), t.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(PROFILES_FILE), "{e}");
    }
}
