//! Which chunk class a file gets (issue 11, item 5): its name, or the write
//! pattern the last scan observed. A file rewritten in place in small pages
//! (a database whatever its name, e.g. `data.bin`) is cut with a page
//! class's small chunks (`db-small`, 4 KiB on average, up to 256 MiB;
//! `db`, 16 KiB, past it: [`ChunkClass::for_pages`]), so a rewritten 4 KiB
//! page costs a small chunk instead of a 256 KiB one at the source, on the
//! wire and at the destination.
//!
//! The evidence is the source's stat cache: the same inode at the same size
//! with a new mtime was written inside, not replaced or appended. That is
//! known before the file is read, so the choice costs nothing. Once chosen,
//! the class sticks (the `paged` list beside the stat cache): a database
//! also grows, and flipping classes would make every chunk of the file new
//! for one round (a page file growing past 256 MiB flips once, from
//! `db-small` to `db`, when it is next read whole). The class is only a performance choice: any class gives
//! the same bytes, so a lost or stale list costs one slower round, never
//! wrong data.
//!
//! Pure core ([`choose`]) plus the list's load and save.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use crate::chunk::ChunkClass;
use crate::statcache::StatRec;

/// The file in the source's cache dir listing the paths chunked as pages
/// because of their write pattern (postcard `Vec<Vec<u8>>`).
pub(super) const PAGED_FILE: &str = "paged";

/// What the last scan saw of a file, as far as the class choice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// The last scan chunked it as pages because of its write pattern.
    pub paged: bool,
}

impl Seen {
    /// From the last scan's stat record and the `paged` list.
    pub(super) fn of(rec: &StatRec, paged: bool) -> Seen {
        Seen {
            dev: rec.dev,
            ino: rec.ino,
            size: rec.size,
            mtime_ns: rec.mtime_ns,
            paged,
        }
    }
}

/// The file now: identity, size and mtime from its lstat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

/// Why a file got its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// From its size and name alone ([`ChunkClass::for_path`]).
    ByName(ChunkClass),
    /// A page class ([`ChunkClass::for_pages`]) because it was rewritten in
    /// place, or was before: list it.
    Paged(ChunkClass),
}

impl Choice {
    pub fn class(self) -> ChunkClass {
        match self {
            Choice::ByName(c) => c,
            Choice::Paged(c) => c,
        }
    }
}

/// The class of a file at `path` (raw bytes), given what the last scan saw
/// of it. A small file is one chunk whatever happens to it; a name that
/// says database decides; otherwise a file written inside (same inode, same
/// size, new mtime) or listed as paged before is cut as pages.
pub fn choose(path: &[u8], now: Now, seen: Option<Seen>) -> Choice {
    let by_name = ChunkClass::for_path(path, now.size);
    if by_name != ChunkClass::Default {
        return Choice::ByName(by_name);
    }
    let Some(s) = seen else {
        return Choice::ByName(by_name);
    };
    let same_inode = s.dev == now.dev && s.ino == now.ino;
    let rewritten_inside = same_inode && s.size == now.size && s.mtime_ns != now.mtime_ns;
    if (same_inode && s.paged) || rewritten_inside {
        Choice::Paged(ChunkClass::for_pages(now.size))
    } else {
        Choice::ByName(by_name)
    }
}

/// Whether a file the tracker says was written at `dirty` (normalized
/// ranges), first seen rewritten in place this scan, should switch to the
/// `db` class now. Switching reads it whole once and makes every chunk id
/// new (the round in which a file without a tracker switches costs that
/// too); staying patches it in its `Default` chunks, one re-read chunk
/// (~256 KiB) per written range. Switch when staying would re-read half the
/// file or more: scattered pages (a database named `data.bin`: 1% of its
/// pages is 327 ranges of a 128 MiB file, ~82 MB of chunks) switch; a
/// sequential write (a PostgreSQL WAL segment, preallocated, then filled in
/// place: one range per round) stays.
pub fn switch_to_pages(dirty: &[(u64, u64)], size: u64) -> bool {
    let (_, avg, _) = ChunkClass::Default.sizes();
    (dirty.len() as u64).saturating_mul(u64::from(avg)) >= size / 2
}

/// The paths the last scan listed as paged (empty when there is no list or
/// it cannot be read: only a hint).
pub(super) fn load_paged(cache_dir: &Path) -> HashSet<Vec<u8>> {
    std::fs::read(cache_dir.join(PAGED_FILE))
        .ok()
        .and_then(|b| postcard::from_bytes::<Vec<Vec<u8>>>(&b).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// Replaces the list with `paths` (via a temporary file and a rename, so a
/// crash leaves the old list or the new one). None removes it.
pub(super) fn save_paged(cache_dir: &Path, paths: &[Vec<u8>]) -> std::io::Result<()> {
    let p = cache_dir.join(PAGED_FILE);
    if paths.is_empty() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let body = postcard::to_stdvec(paths).map_err(std::io::Error::other)?;
    let tmp = cache_dir.join("paged.next");
    std::fs::File::create(&tmp)?.write_all(&body)?;
    std::fs::rename(&tmp, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn now(size: u64, mtime_ns: i128) -> Now {
        Now {
            dev: 1,
            ino: 7,
            size,
            mtime_ns,
        }
    }

    fn seen(ino: u64, size: u64, mtime_ns: i128, paged: bool) -> Option<Seen> {
        Some(Seen {
            dev: 1,
            ino,
            size,
            mtime_ns,
            paged,
        })
    }

    #[test]
    fn a_tracked_file_switches_to_pages_when_its_writes_are_scattered() {
        let pages = |n: u64, stride: u64| -> Vec<(u64, u64)> {
            (0..n).map(|i| (i * stride, i * stride + 4096)).collect()
        };
        type Ranges = Vec<(u64, u64)>;
        // (written ranges, file size, switch)
        let table: &[(Ranges, u64, bool)] = &[
            // 1% of a 128 MiB file's pages, scattered: ~82 MB of chunks.
            (pages(327, 400 * 1024), 128 * MIB, true),
            // 1% of 1 GiB.
            (pages(2621, 400 * 1024), 1024 * MIB, true),
            // A WAL segment filled in place: one range.
            (vec![(0, 9 * MIB)], 16 * MIB, false),
            // A few pages of a large file: patch them in place.
            (pages(100, 4 * MIB), 1024 * MIB, false),
            // At the line: 256 ranges of 256 KiB chunks = half of 128 MiB.
            (pages(256, 400 * 1024), 128 * MIB, true),
            (pages(255, 400 * 1024), 128 * MIB, false),
            (Vec::new(), 128 * MIB, false),
        ];
        for (i, (dirty, size, want)) in table.iter().enumerate() {
            assert_eq!(switch_to_pages(dirty, *size), *want, "row {i}");
        }
    }

    #[test]
    fn the_write_pattern_decides_for_names_that_say_nothing() {
        use ChunkClass::{Db, DbSmall, Default, Small};
        let p = b"dir/data.bin";
        // (what the last scan saw, the file now, the class, listed as paged)
        let table: &[(Option<Seen>, Now, ChunkClass, bool)] = &[
            // Never seen: the name decides.
            (None, now(128 * MIB, 10), Default, false),
            // Seen, untouched (racy re-read): nothing observed.
            (
                seen(7, 128 * MIB, 10, false),
                now(128 * MIB, 10),
                Default,
                false,
            ),
            // Same inode, same size, new mtime: rewritten in place.
            (
                seen(7, 128 * MIB, 10, false),
                now(128 * MIB, 11),
                DbSmall,
                true,
            ),
            // Past 256 MiB, the db class's larger chunks.
            (seen(7, 300 * MIB, 10, false), now(300 * MIB, 11), Db, true),
            // Grown (appended): not a page pattern...
            (
                seen(7, 100 * MIB, 10, false),
                now(128 * MIB, 11),
                Default,
                false,
            ),
            // ...unless it was paged before: a page class sticks (which
            // one follows the size).
            (
                seen(7, 100 * MIB, 10, true),
                now(128 * MIB, 11),
                DbSmall,
                true,
            ),
            (
                seen(7, 128 * MIB, 10, true),
                now(128 * MIB, 10),
                DbSmall,
                true,
            ),
            (seen(7, 200 * MIB, 10, true), now(300 * MIB, 11), Db, true),
            // Replaced by another inode (written whole, renamed over).
            (
                seen(8, 128 * MIB, 10, false),
                now(128 * MIB, 11),
                Default,
                false,
            ),
            (
                seen(8, 128 * MIB, 10, true),
                now(128 * MIB, 11),
                Default,
                false,
            ),
            // Small files stay one chunk whatever their pattern.
            (seen(7, 4096, 10, false), now(4096, 11), Small, false),
            (seen(7, 4096, 10, true), now(4096, 11), Small, false),
        ];
        for (i, &(s, n, class, paged)) in table.iter().enumerate() {
            let c = choose(p, n, s);
            assert_eq!(c.class(), class, "row {i}: {s:?} -> {n:?}");
            assert_eq!(matches!(c, Choice::Paged(_)), paged, "row {i}: {c:?}");
        }
    }

    #[test]
    fn a_database_name_still_decides_alone() {
        let c = choose(b"pg/base/5/16396", now(400 * MIB, 1), None);
        assert_eq!(c, Choice::ByName(ChunkClass::Db));
        let c = choose(b"pg/base/5/16396", now(128 * MIB, 1), None);
        assert_eq!(c, Choice::ByName(ChunkClass::DbSmall));
        let c = choose(b"x.sqlite", now(MIB, 2), seen(7, 2 * MIB, 1, false));
        assert_eq!(c, Choice::ByName(ChunkClass::DbSmall));
    }

    #[test]
    fn the_list_round_trips_and_a_bad_one_is_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_paged(d.path()).is_empty());
        save_paged(d.path(), &[b"a/data.bin".to_vec(), b"b".to_vec()]).unwrap();
        let l = load_paged(d.path());
        assert!(l.contains(b"a/data.bin".as_slice()) && l.len() == 2);
        std::fs::write(d.path().join(PAGED_FILE), [0xff; 3]).unwrap();
        assert!(load_paged(d.path()).is_empty());
        save_paged(d.path(), &[]).unwrap();
        assert!(!d.path().join(PAGED_FILE).exists());
        save_paged(d.path(), &[]).unwrap();
    }
}
