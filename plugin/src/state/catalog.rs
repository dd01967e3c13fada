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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The file under the state directory.
pub(crate) const PROFILES_FILE: &str = "profiles.json";

/// The file's format version, its `format` field. 1: `{"format": 1,
/// "profiles": {NAME: definition}}`. A file without the field was written
/// before the marker (version 0, the same `profiles` map) and reads as it
/// is; a newer version is refused at start, before anything is written.
pub(crate) const PROFILES_FORMAT: u32 = 1;

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
    #[error(
        "profiles file {path} has format version {version}, newer than this daffe reads (up to \
         {PROFILES_FORMAT}): run the daffe that wrote it, or restore the state directory saved \
         before the upgrade (packaging/UPGRADING.md). Nothing was changed."
    )]
    Newer { path: PathBuf, version: u64 },
}

/// The file's content: profiles defined through the API, by name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    /// [`PROFILES_FORMAT`]; 0 when absent (a file from before the marker).
    #[serde(default)]
    format: u32,
    profiles: BTreeMap<String, ProfileDef>,
}

/// The version alone, read before the rest: a newer file may hold fields
/// this daffe does not know, which `Overrides` refuses with a less useful
/// message.
#[derive(Deserialize)]
struct Marker {
    #[serde(default)]
    format: u64,
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
                let parse = |e: serde_json::Error| CatalogStoreError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                };
                let version = serde_json::from_slice::<Marker>(&bytes)
                    .map_err(parse)?
                    .format;
                if version > u64::from(PROFILES_FORMAT) {
                    return Err(CatalogStoreError::Newer {
                        path: path.clone(),
                        version,
                    });
                }
                serde_json::from_slice::<Overrides>(&bytes)
                    .map_err(parse)?
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

/// Replaces the overrides file durably (`durable::replace`).
fn save(path: &Path, profiles: &BTreeMap<String, ProfileDef>) -> Result<(), CatalogStoreError> {
    let body = serde_json::to_vec_pretty(&Overrides {
        format: PROFILES_FORMAT,
        profiles: profiles.clone(),
    })
    .map_err(|e| CatalogStoreError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    crate::durable::replace(path, &body, 0o600).map_err(io_err(path))
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

    /// A `profiles.json` as daffe wrote it before the format marker.
    const UNVERSIONED: &str = r#"{
  "profiles": {
    "silver": {
      "description": "between",
      "local": {"format": "dir"},
      "ebs": {"type": "gp3", "throughput": 250}
    }
  }
}"#;

    #[test]
    fn a_file_without_a_version_loads_and_the_next_save_marks_it() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(PROFILES_FILE);
        std::fs::write(&path, UNVERSIONED).unwrap();
        let sc = SharedCatalog::open(Catalog::builtin(), t.path()).unwrap();
        assert_eq!(sc.snapshot().get("silver").unwrap().def, silver());
        // Opening rewrites nothing.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), UNVERSIONED);
        {
            let mut w = sc.writer();
            let cand = w.candidate("bronze", silver()).unwrap();
            w.commit("bronze", silver(), cand).unwrap();
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["format"], PROFILES_FORMAT);
        assert!(v["profiles"]["silver"].is_object(), "{v}");
    }

    #[test]
    fn a_newer_version_is_refused_naming_file_and_version_and_nothing_changes() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(PROFILES_FILE);
        // A newer daffe may add fields this one does not know.
        let newer = r#"{"format": 2, "profiles": {}, "placement": {}}"#;
        std::fs::write(&path, newer).unwrap();
        let e = SharedCatalog::open(Catalog::builtin(), t.path()).unwrap_err();
        assert!(
            matches!(e, CatalogStoreError::Newer { version: 2, .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("format version 2"), "{msg}");
        assert!(msg.contains("Nothing was changed"), "{msg}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
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
