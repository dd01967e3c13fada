//! A chunk's id rebuilt from the pages a write touched, instead of from
//! the whole chunk read again.
//!
//! A patched scan (`super::changes`) re-hashes every chunk a write touched.
//! A database's 8 KiB page lands in a `db` chunk of 16 KiB on average, and
//! the chunk a random write hits is a long one more often than not: a busy
//! PostgreSQL's later pre-copy rounds read 600-700 MB of whole chunks for
//! ~350 MB written. Reading the live image fast is what costs the database
//! (BENCHMARKS, stop 38), and the final round pays it while the application
//! is stopped.
//!
//! A chunk id is BLAKE3's root over the chunk's bytes. BLAKE3 is a tree:
//! every 4 KiB-aligned piece of a chunk longer than 4 KiB (the last piece
//! maybe shorter) is one of its subtrees, so the root is rebuilt from the
//! pieces' chaining values (`blake3::hazmat`) with a merge per parent node
//! (15 for a 64 KiB chunk). Keeping the chaining values of the chunks a
//! patched scan hashes, the next scan reads only the pieces written since,
//! hashes them, and merges: a written page costs two or three pieces (a
//! chunk's grid starts where the chunk does, not on the image's pages),
//! not the chunk.
//!
//! The values are a hint kept beside the cache ([`Store`]): they are
//! checked against the chunk's id before use (their root must be it), so a
//! stale or damaged file costs a whole read, never a wrong id. Between the
//! pieces read again, trust is the tracker's, as for a chunk kept whole.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::chunk::{ChunkId, ChunkRef};

/// A piece's chaining value.
pub(crate) type Cv = ChainingValue;

/// Bytes per piece: a BLAKE3 subtree of four 1 KiB chunks, and the page a
/// filesystem writes an image in.
pub(crate) const PIECE: u64 = 4096;

/// The cache file the values are kept in.
pub(super) const FILE: &str = "page-hashes";

/// [`PIECE`] as an index into a chunk's bytes.
pub(crate) const PIECE_USIZE: usize = 4096;
const _: () = assert!(PIECE_USIZE as u64 == PIECE);

/// Pieces of a chunk of `len` bytes.
pub(crate) fn pieces(len: u32) -> usize {
    (len as usize).div_ceil(PIECE_USIZE)
}

/// Whether a chunk of `len` bytes has pieces at all: one no longer than a
/// piece is its own root, hashed whole (cheap).
pub(crate) fn has_pieces(len: u32) -> bool {
    u64::from(len) > PIECE
}

/// The chaining value of piece `index` of a chunk (its bytes: `PIECE`
/// long, or less for the last piece).
pub(crate) fn piece_cv(index: usize, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index as u64 * PIECE);
    h.update(bytes);
    h.finalize_non_root()
}

/// The chaining values of every piece of `chunk` (longer than a piece).
pub(crate) fn piece_cvs(chunk: &[u8]) -> Vec<ChainingValue> {
    debug_assert!(chunk.len() as u64 > PIECE);
    chunk
        .chunks(PIECE_USIZE)
        .enumerate()
        .map(|(i, b)| piece_cv(i, b))
        .collect()
}

/// The id of a chunk of `len` bytes (longer than a piece) from its
/// pieces' chaining values, merged in BLAKE3's tree shape: a node longer
/// than a piece splits where `left_subtree_len` says, which for such a node
/// is a power of two no less than a piece, so every piece is a node.
pub(crate) fn root(cvs: &[ChainingValue], len: u64) -> ChunkId {
    debug_assert!(len > PIECE && cvs.len() as u64 == len.div_ceil(PIECE));
    fn node(cvs: &[ChainingValue], off: u64, len: u64) -> ChainingValue {
        if len <= PIECE {
            #[allow(clippy::cast_possible_truncation, reason = "a piece of one chunk")]
            return cvs[(off / PIECE) as usize];
        }
        let l = left_subtree_len(len);
        merge_subtrees_non_root(&node(cvs, off, l), &node(cvs, off + l, len - l), Mode::Hash)
    }
    let l = left_subtree_len(len);
    let r = merge_subtrees_root(&node(cvs, 0, l), &node(cvs, l, len - l), Mode::Hash);
    ChunkId(*r.as_bytes())
}

/// Runs `[first, end)` of the pieces of a chunk at `offset`, `len` bytes
/// long, that `dirty` (normalized ranges) touches.
pub(crate) fn touched(offset: u64, len: u32, dirty: &[(u64, u64)]) -> Vec<(usize, usize)> {
    let end = offset + u64::from(len);
    let n = pieces(len);
    let mut out: Vec<(usize, usize)> = Vec::new();
    // The first range that may reach into the chunk.
    let from = dirty.partition_point(|&(_, e)| e <= offset);
    for &(s, e) in &dirty[from..] {
        if s >= end {
            break;
        }
        #[allow(clippy::cast_possible_truncation, reason = "pieces of one chunk")]
        let (a, b) = (
            ((s.max(offset) - offset) / PIECE) as usize,
            ((e.min(end) - offset).div_ceil(PIECE) as usize).min(n),
        );
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The bytes (offset, length) of pieces `[first, end)` of chunk `c`.
pub(crate) fn span(c: ChunkRef, first: usize, end: usize) -> (u64, u32) {
    let s = first as u64 * PIECE;
    let e = (end as u64 * PIECE).min(u64::from(c.len));
    #[allow(clippy::cast_possible_truncation, reason = "within one chunk")]
    (c.offset + s, (e - s) as u32)
}

/// Chaining values by chunk id: the last scan's (read) and this scan's
/// (being built). Flat, not a map of boxes: a 1 GiB image has tens of
/// thousands of chunks, every kept chunk's values are carried over and the
/// store is saved whole each scan; an allocation (or a tree search) per
/// chunk cost more than the pieces it spared reading.
#[derive(Default)]
pub(super) struct Store {
    /// (id, first value in `cvs`, count), in the order inserted.
    index: Vec<(ChunkId, u32, u16)>,
    /// Id prefix -> position in `index`. Of two ids sharing a prefix the
    /// second has no hint (read whole: never a wrong id).
    by_prefix: HashMap<u64, u32>,
    cvs: Vec<ChainingValue>,
}

/// Leads the saved file (and names its layout).
const MAGIC: &[u8; 8] = b"dfpcv\x00\x00\x02";
/// Bytes of one index record: id, first, count.
const RECORD: usize = 32 + 4 + 2;

impl Store {
    fn find(&self, id: &ChunkId) -> Option<&[ChainingValue]> {
        let &pos = self.by_prefix.get(&id.prefix())?;
        let (rid, first, n) = self.index[pos as usize];
        (rid == *id).then(|| &self.cvs[first as usize..first as usize + usize::from(n)])
    }

    /// The values of `id` (a chunk of `len` bytes) if they are there and
    /// rebuild it; anything else is no hint.
    pub(super) fn get(&self, id: &ChunkId, len: u32) -> Option<&[ChainingValue]> {
        let cvs = self.find(id)?;
        (has_pieces(len) && cvs.len() == pieces(len) && root(cvs, u64::from(len)) == *id)
            .then_some(cvs)
    }

    pub(super) fn insert(&mut self, id: ChunkId, cvs: &[ChainingValue]) {
        let (Ok(pos), Ok(first), Ok(n)) = (
            u32::try_from(self.index.len()),
            u32::try_from(self.cvs.len()),
            u16::try_from(cvs.len()),
        ) else {
            return; // beyond any volume's chunks: no hint
        };
        if let std::collections::hash_map::Entry::Vacant(e) = self.by_prefix.entry(id.prefix()) {
            e.insert(pos);
            self.index.push((id, first, n));
            self.cvs.extend_from_slice(cvs);
        }
    }

    /// Carries `id`'s values over from `prev` (a chunk kept as it was).
    pub(super) fn keep(&mut self, prev: &Store, id: &ChunkId) {
        if let Some(cvs) = prev.find(id) {
            self.insert(*id, cvs);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// The store saved in `dir`; empty when there is none or it cannot be
    /// read (only a hint).
    pub(super) fn load(dir: &Path) -> Store {
        std::fs::read(dir.join(FILE))
            .ok()
            .and_then(|b| Store::decode(&b))
            .unwrap_or_default()
    }

    /// Replaces the saved store (via a temporary file and a rename: a crash
    /// leaves the old file or the new one); an empty store removes it.
    pub(super) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let p = dir.join(FILE);
        if self.index.is_empty() {
            return match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = dir.join("page-hashes.next");
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "at most u32 records, see insert"
        )]
        w.write_all(&(self.index.len() as u32).to_le_bytes())?;
        for (id, first, n) in &self.index {
            w.write_all(&id.0)?;
            w.write_all(&first.to_le_bytes())?;
            w.write_all(&n.to_le_bytes())?;
        }
        w.write_all(self.cvs.as_flattened())?;
        w.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, &p)
    }

    /// `None` unless the file is whole: every record's values inside it
    /// (each is checked against its id again on use).
    fn decode(b: &[u8]) -> Option<Store> {
        let rest = b.strip_prefix(MAGIC)?;
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let (idx, vals) = rest[4..].split_at_checked(n.checked_mul(RECORD)?)?;
        if vals.len() % 32 != 0 {
            return None;
        }
        let mut s = Store {
            index: Vec::with_capacity(n),
            by_prefix: HashMap::with_capacity(n),
            cvs: Vec::new(),
        };
        let all: Vec<ChainingValue> = vals
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        for r in idx.chunks_exact(RECORD) {
            let id = ChunkId(r[..32].try_into().expect("32 bytes"));
            let first = u32::from_le_bytes(r[32..36].try_into().expect("4 bytes")) as usize;
            let count = usize::from(u16::from_le_bytes(r[36..38].try_into().expect("2 bytes")));
            s.insert(id, all.get(first..first.checked_add(count)?)?);
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24).to_le_bytes()[0]
            })
            .collect()
    }

    /// Property: for every length past a piece, the merged root is the
    /// chunk's id, and a patch of the pieces a write touched gives the id
    /// of the written chunk.
    #[test]
    fn a_root_rebuilt_from_touched_pieces_is_the_whole_hash() {
        let mut lens: Vec<usize> = vec![4097, 5000, 8191, 8192, 8193, 12288, 16384, 65536];
        lens.extend((0..200).map(|i| 4097 + (i * 7919) % (65536 - 4097)));
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in lens {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let mut data = bytes(len, seed);
            let mut cvs = piece_cvs(&data);
            assert_eq!(root(&cvs, len as u64), ChunkId::of(&data), "len {len}");
            // A write of up to two pages at a chunk offset of any alignment.
            let at = (seed >> 8) as usize % len;
            let n = (1 + (seed >> 40) as usize % 8192).min(len - at);
            data[at..at + n].fill(0xa5);
            let dirty = [(1000 + at as u64, 1000 + (at + n) as u64)];
            #[allow(clippy::cast_possible_truncation, reason = "at most 64 KiB")]
            for (a, b) in touched(1000, len as u32, &dirty) {
                for (i, cv) in cvs.iter_mut().enumerate().take(b).skip(a) {
                    let s = i * PIECE_USIZE;
                    *cv = piece_cv(i, &data[s..(s + PIECE_USIZE).min(len)]);
                }
            }
            assert_eq!(
                root(&cvs, len as u64),
                ChunkId::of(&data),
                "len {len} at {at}+{n}"
            );
        }
    }

    #[test]
    fn touched_pieces_follow_the_chunks_own_grid() {
        // A chunk at 1000, 20000 bytes long: pieces [1000, 5096), ...
        type Case<'a> = (&'a [(u64, u64)], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&[(0, 1000)], &[]),
            (&[(21000, 30000)], &[]),
            (&[(0, 1001)], &[(0, 1)]),
            (&[(5095, 5097)], &[(0, 2)]),
            (&[(5096, 9192)], &[(1, 2)]),
            // The last piece is short (20000 = 4 * 4096 + 3616).
            (&[(20999, 21000)], &[(4, 5)]),
            (&[(0, 100_000)], &[(0, 5)]),
            // Two ranges in one piece, and adjacent runs, merge.
            (&[(1100, 1200), (1300, 1400), (5096, 5100)], &[(0, 2)]),
            (&[(1100, 1200), (13288, 13300)], &[(0, 1), (3, 4)]),
        ];
        for (dirty, want) in cases {
            assert_eq!(touched(1000, 20000, dirty), *want, "{dirty:?}");
        }
    }

    #[test]
    fn the_store_round_trips_and_its_hints_are_checked_on_use() {
        let d = tempfile::tempdir().unwrap();
        let a = bytes(20000, 3);
        let b = bytes(9000, 5);
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        let mut s = Store::default();
        s.insert(ia, &piece_cvs(&a));
        // Values that do not rebuild their id are stored but never given.
        s.insert(ib, &piece_cvs(&a));
        // A chunk kept twice (two files alike) is saved once.
        s.insert(ia, &piece_cvs(&a));
        s.save(d.path()).unwrap();
        let l = Store::load(d.path());
        assert_eq!(l.len(), 2);
        assert_eq!(l.get(&ia, 20000), Some(&piece_cvs(&a)[..]));
        // (A length is in its last piece's value: one id has one length,
        // and values for another piece count are never given.)
        assert!(l.get(&ia, 16000).is_none(), "another piece count");
        assert!(l.get(&ib, 9000).is_none(), "values of another chunk");
        assert!(l.get(&ChunkId::of(b"x"), 9000).is_none(), "not there");
        // Carried over by `keep`, what is not there is not made up.
        let mut next = Store::default();
        next.keep(&l, &ia);
        next.keep(&l, &ChunkId::of(b"x"));
        assert_eq!(next.len(), 1);
        assert_eq!(next.get(&ia, 20000), Some(&piece_cvs(&a)[..]));
        // A torn or foreign file is no store.
        let full = std::fs::read(d.path().join(FILE)).unwrap();
        std::fs::write(d.path().join(FILE), &full[..full.len() - 1]).unwrap();
        assert_eq!(Store::load(d.path()).len(), 0);
        std::fs::write(d.path().join(FILE), [0xffu8; 40]).unwrap();
        assert_eq!(Store::load(d.path()).len(), 0);
        // An empty store removes the file.
        Store::default().save(d.path()).unwrap();
        assert!(!d.path().join(FILE).exists());
        Store::default().save(d.path()).unwrap();
    }
}
