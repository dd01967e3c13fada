//! The chunk index: which chunks the destination already holds and where
//! (applied tree, this round's staged files and pack, an interrupted round's
//! seeds), and verified reads of them.
//!
//! The index is keyed by the first 8 bytes of the id (about 32 bytes per
//! chunk in memory). Every read through it is verified against the full id,
//! so a prefix collision or a corrupted file costs a re-fetch, never wrong
//! data.

use std::collections::HashMap;
use std::fs::File;
use std::io;

use crate::chunk::ChunkId;
use crate::read_full::read_full_at;

/// Where a chunk's bytes can be read at the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// In the applied tree: entry index of `applied.manifest`, offset.
    Applied { entry: u32, offset: u64 },
    /// In this round's staged file for new-manifest entry `entry`.
    Stage { entry: u32, offset: u64 },
    /// In this round's pack.
    Pack { offset: u64 },
    /// In an interrupted round's leftovers: seed file number, offset.
    Seed { file: u32, offset: u64 },
    /// Asked for in the current fetch window (want number).
    Pending { want: u32 },
}

/// id-prefix -> (location, length).
#[derive(Debug, Default)]
pub struct ChunkIndex {
    map: HashMap<u64, (Loc, u32)>,
}

impl ChunkIndex {
    /// The known location of `id`, if any.
    pub fn get(&self, id: &ChunkId) -> Option<(Loc, u32)> {
        self.map.get(&id.prefix()).copied()
    }

    /// Records a location unless one is known already.
    pub fn add(&mut self, id: &ChunkId, loc: Loc, len: u32) {
        self.map.entry(id.prefix()).or_insert((loc, len));
    }

    /// Records a location, replacing any other.
    pub fn set(&mut self, id: &ChunkId, loc: Loc, len: u32) {
        self.map.insert(id.prefix(), (loc, len));
    }

    /// Forgets `id` (its copy failed verification).
    pub fn remove(&mut self, id: &ChunkId) {
        self.map.remove(&id.prefix());
    }
}

/// Reads `len` bytes at `offset` into `buf` and checks them against `id`.
/// `Ok(false)` means short or corrupt: the chunk is not really there.
pub fn read_verified(
    f: &File,
    offset: u64,
    len: u32,
    id: &ChunkId,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    buf.resize(len as usize, 0);
    let got = read_full_at(f, buf, offset)?;
    Ok(got == buf.len() && ChunkId::of(buf) == *id)
}
