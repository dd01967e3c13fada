//! [`Records`]: the one type through which volume records are read and
//! written.
//!
//! It owns the store, and every write through it bumps a generation after
//! the commit. Caches of what the records say (List's reply) are keyed by
//! that generation, so they are right after every write by construction: no
//! code outside this folder holds a store it could write around it.

use super::record::VolumeRecord;
use super::store::{Store, StoreError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The volume records of this host, durable in redb.
pub(crate) struct Records {
    store: Store,
    /// Bumped after every write (committed or failed); a value read before
    /// reading the records tags what was read: equal generations mean
    /// nothing was written in between.
    generation: AtomicU64,
}

impl Records {
    /// Opens (or creates) the records' store at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Store::open(path)?,
            generation: AtomicU64::new(0),
        })
    }

    /// The record of NAME, if any.
    pub(crate) fn get(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        self.store.get(name)
    }

    /// Every record, ordered by NAME.
    pub(crate) fn list(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.store.list()
    }

    /// Writes `rec` (insert or replace), durably.
    pub(crate) fn put(&self, rec: &VolumeRecord) -> Result<(), StoreError> {
        let r = self.store.put(rec);
        self.bump();
        r
    }

    /// Deletes NAME's record, durably; returns whether it existed.
    pub(crate) fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let r = self.store.delete(name);
        self.bump();
        r
    }

    /// After the commit (or a failed one, conservatively), never before: a
    /// reader that read the old records is then tagged with the old
    /// generation.
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts writes; read it *before* reading the records it tags.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::record;
    use super::*;

    #[test]
    fn every_write_moves_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("state.redb")).unwrap();
        let g0 = r.generation();
        r.put(&record("a")).unwrap();
        let g1 = r.generation();
        assert!(g1 > g0);
        assert_eq!(r.get("a").unwrap().unwrap().name, "a");
        assert_eq!(r.generation(), g1, "reads do not");
        assert!(r.delete("a").unwrap());
        assert!(r.generation() > g1);
        assert!(r.list().unwrap().is_empty());
    }
}
