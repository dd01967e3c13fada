//! Durable volume state in redb, under the data root.
//!
//! One table maps NAME to the JSON of its [`VolumeRecord`] (mount counts
//! included, so a record and its counts change together). Every mutation is
//! one committed redb transaction with `Durability::Immediate`: when a call
//! returns, the change is on disk, and a kill -9 at any moment leaves either
//! the old or the new record, never a torn one (redb's copy-on-write commit).
//! redb also locks the file, so a second daemon on the same data root fails
//! at open instead of corrupting it.
//!
//! A failed write (the disk full) makes redb refuse every later call until
//! the database is closed and opened again (`PreviousIo`): one `ENOSPC`
//! wedged the daemon until a restart (issue 12, finding 7). The store
//! reopens itself after such an error: the request that met it fails, and
//! later ones work again as soon as the space is back. Committed data is
//! safe either way (copy-on-write commits; a reopen recovers to the last
//! one).
//!
//! Room for the state itself: the state directory usually shares its
//! filesystem with the volumes, which a container can fill. The store keeps
//! a reserve beside it ([`RESERVE_FILE`], [`RESERVE_BYTES`] allocated with
//! `fallocate`); a write that meets a full disk releases the reserve and is
//! retried, so Create, Mount, Unmount and Remove (the way out of a full disk)
//! keep being recorded. The reserve is made again once there is room (at
//! open, and after a successful write, at most every [`REARM_EVERY`]).
//!
//! JSON rather than a binary encoding: records are small, and an operator or
//! a newer daemon can read them; unknown-field-tolerant decoding keeps old
//! records loadable. The store's format version lives beside the records
//! (see [`super::format`]): an older store is brought up to date at open, a
//! newer one refused untouched.

use super::format::{self, FORMAT, FORMAT_KEY, META, Open};
use super::record::VolumeRecord;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

/// File name of the store inside the state directory.
pub(crate) const STORE_FILE: &str = "daffe.redb";

/// The reserve's file name, beside the store.
pub(crate) const RESERVE_FILE: &str = "daffe.reserve";

/// Space held for the store (issue 12, finding 7): thousands of records'
/// worth of redb pages. Released when the disk is full, made again later.
pub(crate) const RESERVE_BYTES: u64 = 16 << 20;

/// How often a missing reserve is tried again after a write.
const REARM_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("state store {path}: cannot create its directory: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state store {path} is open in another process (is another `daffe serve` using this data root?)"
    )]
    Locked { path: PathBuf },
    #[error("state store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error(
        "state store {path} is closed after an I/O error and cannot be opened again yet \
         (is the disk full?): {source}"
    )]
    Reopen {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error(
        "state store {path} has format version {found}, newer than this daffe reads (up to \
         {known}): it was written by a newer daffe; run that one, or restore the copy of the \
         state directory made before the upgrade (packaging/UPGRADING.md). Nothing was changed."
    )]
    Newer {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    #[error("state store {path}: record {name:?} cannot be read: {source}")]
    Decode {
        path: PathBuf,
        name: String,
        source: serde_json::Error,
    },
}

/// The volume store: redb serialises writers and lets readers run
/// concurrently with them. Only [`super::Records`] holds one.
pub(super) struct Store {
    /// `None` after an I/O error closed it and the reopen failed too; the
    /// next call tries again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// When the reserve was last found missing and tried again (`None`: it
    /// is in place).
    reserve_tried: std::sync::Mutex<Option<std::time::Instant>>,
    reserve_bytes: u64,
    rearm_every: std::time::Duration,
}

/// Whether `e` is the disk being full.
fn is_full(e: &StoreError) -> bool {
    let (StoreError::Db { source, .. } | StoreError::Reopen { source, .. }) = e else {
        return false;
    };
    match &**source {
        redb::Error::Io(io) => {
            io.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
                || io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
        }
        _ => false,
    }
}

/// Errors after which redb must be closed and opened again.
fn needs_reopen(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// The store's format version (`None` when it has no marker: version 0, or
/// a new file), and whether it holds the volumes table (a new file does not).
fn read_format(db: &Database) -> Result<(Option<u64>, bool), redb::Error> {
    let txn = db.begin_read()?;
    let has_volumes = match txn.open_table(VOLUMES) {
        Ok(_) => true,
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, has_volumes)),
        Err(e) => return Err(e.into()),
    };
    Ok((table.get(FORMAT_KEY)?.map(|v| v.value()), has_volumes))
}

/// Opens (or creates) the database file, telling a lock held by another
/// process apart.
fn create(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        e => StoreError::Db {
            path: path.to_owned(),
            source: Box::new(e.into()),
        },
    })
}

fn closed(path: &Path) -> impl FnOnce() -> StoreError + '_ {
    move || StoreError::Reopen {
        path: path.to_owned(),
        source: Box::new(redb::Error::DatabaseClosed),
    }
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: path.to_owned(),
                source,
            })?;
        }
        let db = create(path)?;
        let db_err = |e: redb::Error| StoreError::Db {
            path: path.to_owned(),
            source: Box::new(e),
        };
        // The version first, in a read transaction: a newer store is
        // refused before this daffe writes anything into it.
        let (found, existed) = read_format(&db).map_err(db_err)?;
        let step = format::open(found);
        if let Open::Newer { found } = step {
            return Err(StoreError::Newer {
                path: path.to_owned(),
                found,
                known: FORMAT,
            });
        }
        let store = Self {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            reserve_tried: std::sync::Mutex::new(None),
            reserve_bytes: RESERVE_BYTES,
            rearm_every: REARM_EVERY,
        };
        store.arm_reserve();
        // Create the table up front so readers never meet a missing table.
        store.write(|t| {
            let _ = t;
            Ok(())
        })?;
        if let Open::Upgrade { from } = step {
            store.write_format()?;
            if existed {
                tracing::info!(store = %path.display(), from, to = FORMAT, "state store format upgraded");
            }
        }
        Ok(store)
    }

    /// Marks the store as [`FORMAT`].
    fn write_format(&self) -> Result<(), StoreError> {
        let result = {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or_else(closed(&self.path))?;
            db.begin_write().map_err(redb::Error::from).and_then(|txn| {
                txn.open_table(META)
                    .map_err(redb::Error::from)
                    .and_then(|mut t| {
                        t.insert(FORMAT_KEY, FORMAT).map(|_| ()).map_err(Into::into)
                    })?;
                txn.commit().map_err(redb::Error::from)
            })
        };
        result.map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if needs_reopen(&e) {
            self.reopen();
        }
        StoreError::Db {
            path: self.path.clone(),
            source: Box::new(e),
        }
    }

    /// Closes the database and opens it again; on failure it stays closed
    /// and [`Store::db`] retries.
    fn reopen(&self) {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Close first: redb locks the file, a second open in this process
        // would be refused.
        drop(db.take());
        match create(&self.path) {
            Ok(d) => {
                tracing::warn!(store = %self.path.display(), "state store reopened after an I/O error");
                *db = Some(d);
            }
            Err(e) => {
                tracing::warn!(store = %self.path.display(), error = %e, "state store cannot be reopened yet");
            }
        }
    }

    /// The open database, reopening it first if an earlier error closed it.
    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        for _ in 0..2 {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            if db.is_some() {
                return Ok(db);
            }
            drop(db);
            let mut w = self.db.write().unwrap_or_else(|p| p.into_inner());
            if w.is_none() {
                *w = Some(create(&self.path).map_err(|e| match e {
                    StoreError::Db { path, source } => StoreError::Reopen { path, source },
                    e => e,
                })?);
            }
        }
        Err(StoreError::Reopen {
            path: self.path.clone(),
            source: Box::new(redb::Error::DatabaseClosed),
        })
    }

    fn decode(&self, name: &str, bytes: &[u8]) -> Result<VolumeRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            name: name.to_owned(),
            source,
        })
    }

    fn reserve_path(&self) -> PathBuf {
        self.path.with_file_name(RESERVE_FILE)
    }

    /// Makes the reserve if it is missing (or short); a disk too full for it
    /// leaves it missing, tried again later.
    fn arm_reserve(&self) {
        let path = self.reserve_path();
        let made = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| {
                rustix::fs::fallocate(
                    &f,
                    rustix::fs::FallocateFlags::empty(),
                    0,
                    self.reserve_bytes,
                )?;
                f.sync_all()
            });
        let mut tried = self.reserve_tried.lock().unwrap_or_else(|p| p.into_inner());
        match made {
            Ok(()) => *tried = None,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                *tried = Some(std::time::Instant::now());
                tracing::warn!(reserve = %path.display(), error = %e,
                    "no room for the state store's reserve; tried again later");
            }
        }
    }

    /// Gives the reserve's space back to the filesystem; whether there was
    /// one to give.
    fn release_reserve(&self) -> bool {
        let path = self.reserve_path();
        let released = std::fs::remove_file(&path).is_ok();
        *self.reserve_tried.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
        if released {
            tracing::warn!(reserve = %path.display(), bytes = self.reserve_bytes,
                "the disk is full: released the state store's reserve so the state can still be written; free space on this filesystem");
        }
        released
    }

    /// One write transaction; on a full disk, once more after releasing the
    /// reserve. A missing reserve is made again after a write that worked.
    fn write(
        &self,
        mut f: impl FnMut(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let r = match self.write_once(&mut f) {
            Err(e) if is_full(&e) && self.release_reserve() => self.write_once(&mut f),
            r => r,
        };
        if r.is_ok() {
            let due = self
                .reserve_tried
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() >= self.rearm_every);
            if due {
                self.arm_reserve();
            }
        }
        r
    }

    fn write_once(
        &self,
        f: &mut impl FnMut(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let result = {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or_else(closed(&self.path))?;
            db.begin_write()
                .map_err(redb::Error::from)
                .and_then(|mut txn| {
                    // Explicit, not redb's default: the module's promise (a
                    // returned call is on disk) must not change with a redb
                    // upgrade (issue 12, low finding).
                    txn.set_durability(redb::Durability::Immediate)?;
                    txn.open_table(VOLUMES)
                        .map_err(redb::Error::from)
                        .and_then(|mut table| f(&mut table))?;
                    txn.commit().map_err(redb::Error::from)
                })
        };
        // The guard is gone: a reopen can take the lock.
        result.map_err(|e| self.db_err(e))
    }

    /// The record of NAME, if any.
    pub(super) fn get(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        let bytes = {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or_else(closed(&self.path))?;
            db.begin_read()
                .map_err(redb::Error::from)
                .and_then(|txn| txn.open_table(VOLUMES).map_err(redb::Error::from))
                .and_then(|table| Ok(table.get(name)?.map(|v| v.value().to_vec())))
        };
        match bytes.map_err(|e| self.db_err(e))? {
            Some(v) => self.decode(name, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every record, ordered by NAME.
    pub(super) fn list(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        let pairs = {
            let guard = self.db()?;
            let db = guard.as_ref().ok_or_else(closed(&self.path))?;
            db.begin_read()
                .map_err(redb::Error::from)
                .and_then(|txn| txn.open_table(VOLUMES).map_err(redb::Error::from))
                .and_then(|table| {
                    table
                        .iter()?
                        .map(|entry| {
                            let (k, v) = entry?;
                            Ok((k.value().to_owned(), v.value().to_vec()))
                        })
                        .collect::<Result<Vec<_>, redb::Error>>()
                })
        };
        pairs
            .map_err(|e| self.db_err(e))?
            .iter()
            .map(|(k, v)| self.decode(k, v))
            .collect()
    }

    /// Writes `rec` (insert or replace), durably.
    pub(super) fn put(&self, rec: &VolumeRecord) -> Result<(), StoreError> {
        // Serialising our own types cannot fail (string keys, no floats).
        let bytes = serde_json::to_vec(rec).unwrap_or_default();
        self.write(|t| {
            t.insert(rec.name.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Deletes NAME's record, durably; returns whether it existed.
    pub(super) fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let mut existed = false;
        self.write(|t| {
            existed = t.remove(name)?.is_some();
            Ok(())
        })?;
        Ok(existed)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::record::{Mounts, VolumeState};
    use super::*;
    use profiles::{BackendKind, LocalFormat, LocalSettings, Settings};

    pub(crate) fn record(name: &str) -> VolumeRecord {
        VolumeRecord {
            docker_name: format!("{name}@default"),
            aliases: Default::default(),
            name: name.to_owned(),
            profile: "default".into(),
            backend: BackendKind::Local,
            settings: Settings::Local(LocalSettings {
                root: "/d".into(),
                format: LocalFormat::Dir,
                size: None,
                filesystem: None,
            }),
            options: Default::default(),
            created_at: 1,
            state: VolumeState::Ready,
            mounts: Mounts::default(),
            received_from: None,
            cluster: None,
        }
    }

    #[test]
    fn put_get_list_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(STORE_FILE);
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.get("a").unwrap(), None);
            let mut a = record("a");
            s.put(&a).unwrap();
            s.put(&record("b")).unwrap();
            a.mounts.add("id1");
            s.put(&a).unwrap();
            assert_eq!(s.get("a").unwrap(), Some(a.clone()));
            let names: Vec<_> = s.list().unwrap().into_iter().map(|r| r.name).collect();
            assert_eq!(names, ["a", "b"]);
            assert!(s.delete("b").unwrap());
            assert!(!s.delete("b").unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
        assert_eq!(s.get("a").unwrap().unwrap().mounts.count("id1"), 1);
    }

    #[test]
    fn a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let _s = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
    }

    /// A tmpfs of `size` (the tests run as root), unmounted on drop: a disk
    /// that fills.
    struct SmallFs {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl SmallFs {
        fn mount(size: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("small");
            std::fs::create_dir(&path).unwrap();
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&path)
                .status()
                .unwrap();
            assert!(
                st.success(),
                "mounting a small tmpfs (the tests run as root)"
            );
            Self { _dir: dir, path }
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }

    /// Issue 12, finding 7: one failed write on a full disk made redb refuse
    /// every later call (`PreviousIo`) until the daemon restarted. The
    /// write that meets the full disk fails; once there is room again, the
    /// store works without a restart, and what was committed is kept.
    #[test]
    fn finding_07_a_full_disk_fails_one_write_and_the_store_recovers() {
        let small = SmallFs::mount("4m");
        let mnt = small.path.clone();
        let path = mnt.join(STORE_FILE);
        let s = Store::open(&path).unwrap();
        s.put(&record("before")).unwrap();

        // Fill what is left of the filesystem.
        let filler = mnt.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![7u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
        }
        let mut failed = None;
        for i in 0..64 {
            let mut r = record(&format!("big{i}"));
            r.options.insert("pad".into(), "x".repeat(32 << 10));
            if let Err(e) = s.put(&r) {
                failed = Some(e);
                break;
            }
        }
        let err = failed.expect("the full disk never failed a write");
        assert!(matches!(err, StoreError::Db { .. }), "{err}");

        std::fs::remove_file(&filler).unwrap();
        s.put(&record("after"))
            .unwrap_or_else(|e| panic!("the store stayed wedged after the space came back: {e}"));
        assert!(s.get("before").unwrap().is_some());
        assert!(s.get("after").unwrap().is_some());
        assert!(s.list().unwrap().len() >= 2);
    }

    /// Issue 12, finding 7 (second point): the state shares its filesystem
    /// with the volumes. A volume filling the disk must not stop the daemon
    /// from recording what it does (a Remove is how an operator gets out):
    /// the writes go on from the reserve, which comes back once there is
    /// room. (Before: the first write on the full disk failed.)
    #[test]
    fn finding_07_the_state_is_written_on_a_full_disk_from_its_reserve() {
        let small = SmallFs::mount("32m");
        let mnt = small.path.clone();
        let path = mnt.join("state").join(STORE_FILE);
        let reserve = mnt.join("state").join(RESERVE_FILE);
        let mut s = Store::open(&path).unwrap();
        s.rearm_every = std::time::Duration::ZERO;
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
        s.put(&record("before")).unwrap();

        // A volume fills the filesystem.
        let filler = mnt.join("volume-data");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![7u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
        }
        for i in 0..20 {
            let mut r = record(&format!("big{i}"));
            r.options.insert("pad".into(), "x".repeat(16 << 10));
            s.put(&r)
                .unwrap_or_else(|e| panic!("write {i} on the full disk failed: {e}"));
        }
        assert!(s.delete("big0").unwrap(), "a Remove is recorded too");
        assert!(!reserve.exists(), "the reserve was given up for the state");

        // Room again: the next write makes the reserve again.
        std::fs::remove_file(&filler).unwrap();
        s.put(&record("after")).unwrap();
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
        assert_eq!(s.list().unwrap().len(), 21);
    }

    /// Role switch for the crash test: when this variable names a store
    /// path, the test process is the child that writes until killed.
    const CRASH_CHILD_ENV: &str = "DAFFE_STORE_CRASH_CHILD";

    /// kill -9 a process that commits records in a loop, reopen, and check
    /// that redb's integrity check passes, every record decodes, and every
    /// record the child reported as committed is there with its last value.
    #[test]
    fn kill_9_during_writes_loses_and_corrupts_nothing() {
        use std::io::{BufRead, BufReader, Write};
        if let Ok(path) = std::env::var(CRASH_CHILD_ENV) {
            let s = Store::open(Path::new(&path)).unwrap();
            let start = s.list().unwrap().len();
            let mut out = std::io::stdout().lock();
            for i in start.. {
                let mut r = record(&format!("v{i:06}"));
                r.created_at = i as u64;
                s.put(&r).unwrap();
                // Rewrite an older record too, so updates race the kill as well.
                let mut old = record(&format!("v{:06}", i / 2));
                old.created_at = (i / 2) as u64;
                old.mounts.add(&format!("id{i}"));
                s.put(&old).unwrap();
                writeln!(out, "{i}").unwrap();
                out.flush().unwrap();
            }
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let exe = std::env::current_exe().unwrap();
        for round in 0..4 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "state::store::tests::kill_9_during_writes_loses_and_corrupts_nothing",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CRASH_CHILD_ENV, &path)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut last = None;
            // Let it commit a varying number of records before the kill.
            let want = 20 + round * 17;
            while let Some(Ok(line)) = lines.next() {
                if let Ok(i) = line.trim().parse::<usize>() {
                    last = Some(i);
                    if i >= want * (round + 1) {
                        break;
                    }
                }
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let last = last.expect("child committed nothing");
            {
                let mut db = Database::create(&path).unwrap();
                assert!(db.check_integrity().unwrap(), "round {round}: integrity");
            }
            let s = Store::open(&path).unwrap();
            let all = s.list().unwrap();
            assert!(
                all.len() > last,
                "round {round}: {} records, {last} reported",
                all.len()
            );
            for (i, r) in all.iter().enumerate() {
                assert_eq!(r.name, format!("v{i:06}"), "round {round}: no gaps");
                assert_eq!(r.created_at, i as u64);
            }
        }
    }
}
