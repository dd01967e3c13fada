//! Writes to an image, or to a tree's files, tracked by someone else, so
//! that a scan reads only what changed since the last one instead of the
//! whole image or every changed file whole.
//!
//! An image's timestamps say only *that* it changed, never *where*: without
//! help every scan after a write re-reads and re-hashes all of it (a 1 GiB
//! gold volume costs seconds per round, and the final round of a move pays
//! that while the application is stopped). The plugin knows where: every
//! write to a loop device passes the kernel's block tracepoint. Whoever
//! tracks the writes implements [`ImageChanges`]; the scan keeps the last
//! scan's chunks where nothing was written, re-hashes in place the chunks
//! a write touched, and cuts new chunks where a write landed in a hole.
//!
//! The chunk boundaries stay where the last full scan put them: a block
//! image is rewritten in place, never shifted, so fixed boundaries lose
//! nothing, and correctness needs only that every byte written since the
//! last scan is inside a reported range.
//!
//! A tree's files are the same once told apart by inode ([`FileChanges`]):
//! a database's table file is rewritten in place in pages, and the tracker
//! (the plugin's `dir_writes`, from the filesystem's write tracepoints)
//! says which pages. A file the tracker cannot vouch for (recreated,
//! truncated, memory-mapped, on another filesystem) is read whole, as is
//! any whose modification time moved while no write to it was seen.

use std::collections::HashMap;

use crate::chunk::ChunkRef;
use crate::fsmeta::FileStat;
use crate::statcache::StatRec;

/// The writes to an image since its last scan, as a tracker reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChanges {
    /// Handed back to [`ImageChanges::scanned`] once the scan that used
    /// these changes is saved.
    pub mark: u64,
    /// Byte ranges `[start, end)` written since the last saved scan, or
    /// `None` when the tracker cannot vouch for them (it started after that
    /// scan, or lost events): the scan then reads the whole image.
    pub ranges: Option<Vec<(u64, u64)>>,
    /// For a tree: its files' writes since the last saved scan, or `None`
    /// when the tracker cannot vouch for them (every changed file is read
    /// whole, as without a tracker). Image trackers leave it `None`.
    pub files: Option<FileChanges>,
}

/// The writes to a tree's files since its last saved scan, by inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileChanges {
    /// The filesystem (`st_dev`) the inodes are on: a file on any other is
    /// read whole.
    pub dev: u64,
    /// Inode -> byte ranges `[start, end)` written; `None`: read the file
    /// whole (created or freed, truncated, shifted, memory-mapped). An
    /// inode not listed had no data written through the traced paths.
    pub written: HashMap<u64, Option<Vec<(u64, u64)>>>,
}

impl FileChanges {
    /// The ranges to re-read of a regular file whose stat changed since the
    /// last scan (`seen`), normalized; `None`: read it whole. Only files
    /// the last scan read as more than one small chunk, with the same
    /// identity and no smaller, are patched (a shrink, a new inode or a
    /// small file costs little whole).
    pub(crate) fn dirty(&self, now: &FileStat, seen: Option<&StatRec>) -> Option<Vec<(u64, u64)>> {
        if now.dev != self.dev || !same_file_no_smaller(now, seen) {
            return None;
        }
        let seen = seen?;
        match self.written.get(&now.ino) {
            Some(Some(r)) => Some(normalize(r, now.size)),
            Some(None) => None,
            // Data changes move the modification time; one that moved with
            // no write seen came some way the tracker does not see.
            None if now.mtime_ns == seen.mtime_ns && now.size == seen.size => Some(Vec::new()),
            None => None,
        }
    }

    /// Bytes the tracker saw written to a changed file read whole (its
    /// [`dirty`](Self::dirty) was `None`): the ranges it reports, or the
    /// whole file where it says the file was created, truncated or
    /// shifted; 0 where it saw no write (or the file is on another
    /// filesystem). A database's new WAL segment is read whole and is
    /// dirtied data all the same: left out, the rounds' "moved against
    /// dirtied" overstated what pre-copy carried beyond the writes.
    pub(crate) fn written_bytes(&self, now: &FileStat) -> u64 {
        if now.dev != self.dev {
            return 0;
        }
        match self.written.get(&now.ino) {
            Some(Some(r)) => ranges_len(&normalize(r, now.size)),
            Some(None) => now.size,
            None => 0,
        }
    }
}

/// Whether a changed file is the one the last scan read (`seen`), no
/// smaller, and was more than one small chunk then: its last chunks'
/// boundaries still mean something (a shrink, a new inode or a small file
/// costs little read whole).
fn same_file_no_smaller(now: &FileStat, seen: Option<&StatRec>) -> bool {
    seen.is_some_and(|seen| {
        seen.dev == now.dev
            && seen.ino == now.ino
            && seen.size > crate::chunk::SMALL_MAX
            && now.size >= seen.size
    })
}

/// Whether a changed file with no tracker to say where it was written is
/// re-read at its last chunks' boundaries rather than cut anew: the same
/// file, no smaller ([`same_file_no_smaller`]), and dense (no holes, as a
/// database's files are: re-read whole, a sparse file's holes would be read
/// as zeros where a whole read skips them). Every byte is read either way;
/// only the cuts differ, and the scan cuts anew where the old ones do not
/// hold (`Scanner::write_patched`).
pub(crate) fn rehashable(now: &FileStat, seen: Option<&StatRec>) -> bool {
    same_file_no_smaller(now, seen) && now.blocks.saturating_mul(512) >= now.size
}

/// A tracker of the writes to one image source, kept per source cache
/// (a cache's last scan is what "since" means).
///
/// [`pending`](Self::pending) may be called more than once before
/// [`scanned`](Self::scanned) (a scan retried without its cache); each
/// answer must include every range of the earlier ones.
pub trait ImageChanges: Send + Sync {
    /// The ranges written since the last [`scanned`](Self::scanned), taken
    /// as the scan starts. Every write that completed before this call must
    /// be in them; writes after it go to the next call.
    fn pending(&self) -> PendingChanges;
    /// The scan that took `mark` is saved: forget what it covered.
    fn scanned(&self, mark: u64);
}

/// What a patched scan does with one piece of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Nothing written in it since the last scan: the chunk as it was.
    Keep(ChunkRef),
    /// Read and hash `[offset, offset + len)` (a chunk a write touched,
    /// with its old boundaries, or a new piece where a write filled a hole).
    Read { offset: u64, len: u32 },
}

/// Bytes in `ranges` (`[start, end)` pairs, as [`normalize`] leaves them:
/// no overlaps).
pub(crate) fn ranges_len(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(a, b)| b - a).sum()
}

/// Sorted, merged ranges clipped to `[0, size)`; empty ones dropped.
pub(crate) fn normalize(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(s, e)| (s.min(size), e.min(size)))
        .filter(|(s, e)| s < e)
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Alignment of new pieces cut in a hole (the page size: writes to a
/// filesystem image come in whole pages).
const PAGE: u64 = 4096;

/// The pieces of an image of `size` bytes whose last scan gave `old`
/// (sorted, non-overlapping chunks; gaps between them are holes) after
/// writes to `dirty` (normalized). Covers every old chunk and every dirty
/// byte; pieces are sorted and never overlap. New pieces are at most `max`
/// (the file's class maximum, which the receiver holds each chunk to).
pub(crate) fn plan(old: &[ChunkRef], dirty: &[(u64, u64)], size: u64, max: u32) -> Vec<Piece> {
    let max = u64::from(max);
    let mut out = Vec::with_capacity(old.len());
    let mut d = 0; // first dirty range that may still matter
    let mut pos = 0u64; // everything before is planned
    let cut_gap = |out: &mut Vec<Piece>, from: u64, to: u64, d: &mut usize| {
        // Dirty bytes in the hole [from, to): page-aligned pieces of at most
        // `max`, cut at multiples of `max` so later scans cut alike.
        while *d < dirty.len() && dirty[*d].1 <= from {
            *d += 1;
        }
        let mut i = *d;
        while i < dirty.len() && dirty[i].0 < to {
            let s = (dirty[i].0.max(from) / PAGE * PAGE).max(from);
            let e = dirty[i].1.min(to).next_multiple_of(PAGE).min(to);
            let mut p = s.max(match out.last() {
                Some(Piece::Read { offset, len }) => offset + u64::from(*len),
                _ => s,
            });
            while p < e {
                let q = ((p / max + 1) * max).min(e);
                #[allow(clippy::cast_possible_truncation, reason = "at most `max`, a u32")]
                out.push(Piece::Read {
                    offset: p,
                    len: (q - p) as u32,
                });
                p = q;
            }
            i += 1;
        }
    };
    for c in old {
        if c.offset > pos {
            cut_gap(&mut out, pos, c.offset.min(size), &mut d);
        }
        while d < dirty.len() && dirty[d].1 <= c.offset {
            d += 1;
        }
        let touched = d < dirty.len() && dirty[d].0 < c.end();
        out.push(if touched {
            Piece::Read {
                offset: c.offset,
                len: c.len,
            }
        } else {
            Piece::Keep(*c)
        });
        pos = c.end();
    }
    if pos < size {
        cut_gap(&mut out, pos, size, &mut d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkId;

    type Span = (u64, u64);
    /// Ranges in, image size, ranges out.
    type NormalizeCase<'a> = (&'a [Span], u64, &'a [Span]);
    /// What the double's `pending` answers: a mark and the ranges.
    type Script = (u64, Option<Vec<Span>>);

    fn c(offset: u64, len: u32) -> ChunkRef {
        ChunkRef {
            offset,
            len,
            id: ChunkId::of(&offset.to_le_bytes()),
        }
    }

    fn read(offset: u64, len: u32) -> Piece {
        Piece::Read { offset, len }
    }

    const DB_MAX: u32 = 64 * 1024;

    #[test]
    fn normalize_sorts_merges_and_clips() {
        let cases: &[NormalizeCase] = &[
            (&[], 100, &[]),
            (&[(10, 20), (0, 5)], 100, &[(0, 5), (10, 20)]),
            (&[(0, 10), (10, 20)], 100, &[(0, 20)]),
            (&[(0, 10), (5, 8)], 100, &[(0, 10)]),
            (&[(90, 200), (150, 300)], 100, &[(90, 100)]),
            (&[(5, 5), (7, 6)], 100, &[]),
        ];
        for (input, size, want) in cases {
            assert_eq!(normalize(input, *size), *want, "{input:?}");
        }
    }

    #[test]
    fn plans_keep_clean_chunks_and_reread_touched_ones() {
        let old = [c(0, 4096), c(4096, 8192), c(12288, 4096)];
        let size = 16384;
        let cases: &[(&[Span], Vec<Piece>)] = &[
            (
                &[],
                vec![
                    Piece::Keep(old[0]),
                    Piece::Keep(old[1]),
                    Piece::Keep(old[2]),
                ],
            ),
            (
                &[(5000, 5001)],
                vec![Piece::Keep(old[0]), read(4096, 8192), Piece::Keep(old[2])],
            ),
            // A range ending exactly at a chunk's start leaves it clean.
            (
                &[(0, 4096)],
                vec![read(0, 4096), Piece::Keep(old[1]), Piece::Keep(old[2])],
            ),
            (
                &[(4000, 13000)],
                vec![read(0, 4096), read(4096, 8192), read(12288, 4096)],
            ),
        ];
        for (dirty, want) in cases {
            assert_eq!(plan(&old, dirty, size, DB_MAX), *want, "{dirty:?}");
        }
    }

    #[test]
    fn plans_new_pieces_where_writes_filled_holes() {
        // Data at [64 KiB, 68 KiB) only; the rest of 256 KiB is a hole.
        let k = 1024u64;
        let old = [c(64 * k, 4096)];
        let size = 256 * k;
        // A write at 1 byte past 0, one straddling 64 Ki's chunk end, one
        // spanning two 64 KiB cells in the tail hole.
        let dirty = normalize(&[(1, 2), (66 * k, 70 * k), (120 * k, 140 * k)], size);
        assert_eq!(
            plan(&old, &dirty, size, DB_MAX),
            vec![
                read(0, 4096),
                read(64 * k, 4096),
                read(68 * k, 2048 + 2048),
                read(120 * k, 8192),
                read(128 * k, 12288),
            ]
        );
    }

    /// Property: the plan covers every old chunk and every dirty byte, in
    /// order, without overlap, and re-reads every chunk a write touched.
    #[test]
    fn plans_cover_everything_written_without_overlap() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..500 {
            let size = 1 + next(1 << 20);
            let mut old = Vec::new();
            let mut p = next(4) * 4096;
            while p < size {
                let len = (1 + next(64 * 1024)).min(size - p);
                #[allow(clippy::cast_possible_truncation, reason = "at most 64 KiB")]
                old.push(c(p, len as u32));
                p += len + if next(3) == 0 { next(5) * 4096 } else { 0 };
            }
            let raw: Vec<(u64, u64)> = (0..next(6))
                .map(|_| {
                    let s = next(size);
                    (s, s + 1 + next(100_000))
                })
                .collect();
            let dirty = normalize(&raw, size);
            // The db class's max, or db-small's, below some old chunks.
            let max = [DB_MAX, 16 * 1024][usize::from(next(2) == 0)];
            let pieces = plan(&old, &dirty, size, max);
            let span = |p: &Piece| match p {
                Piece::Keep(c) => (c.offset, c.end()),
                Piece::Read { offset, len } => (*offset, offset + u64::from(*len)),
            };
            let mut end = 0;
            for p in &pieces {
                let (s, e) = span(p);
                assert!(s >= end && e > s && e <= size, "{p:?} after {end}");
                end = e;
                // A new piece (no old chunk's span) is within the class max.
                if !old.iter().any(|ch| (ch.offset, ch.end()) == (s, e)) {
                    assert!(e - s <= u64::from(max), "{p:?} over {max}");
                }
                if let Piece::Keep(ch) = p {
                    assert!(
                        !dirty
                            .iter()
                            .any(|&(ds, de)| ds < ch.end() && ch.offset < de),
                        "kept a written chunk {ch:?}"
                    );
                }
            }
            for ch in &old {
                assert!(pieces.iter().any(|p| span(p) == (ch.offset, ch.end())));
            }
            for &(ds, de) in &dirty {
                let mut x = ds;
                while x < de {
                    assert!(
                        pieces.iter().any(|p| {
                            let (s, e) = span(p);
                            s <= x && x < e
                        }),
                        "byte {x} written but not planned"
                    );
                    x += 97;
                }
            }
        }
    }

    /// A tracker double: the ranges the test says it wrote.
    #[derive(Default)]
    struct Told {
        ranges: std::sync::Mutex<Script>,
        files: std::sync::Mutex<Option<FileChanges>>,
        scanned: std::sync::Mutex<Vec<u64>>,
    }

    impl ImageChanges for Told {
        fn pending(&self) -> PendingChanges {
            let g = self.ranges.lock().unwrap();
            PendingChanges {
                mark: g.0,
                ranges: g.1.clone(),
                files: self.files.lock().unwrap().clone(),
            }
        }
        fn scanned(&self, mark: u64) {
            self.scanned.lock().unwrap().push(mark);
        }
    }

    /// Scan options asking `told` (`threads` workers).
    fn told_opts(told: &std::sync::Arc<Told>, threads: usize) -> crate::scan::ScanOptions {
        crate::scan::ScanOptions {
            threads,
            label: "t".into(),
            progress: std::sync::Arc::new(crate::progress::NoProgress),
            changes: Some(told.clone()),
            copy_into: None,
        }
    }

    /// The chunks a scan's manifest lists for the image, each checked
    /// against the bytes the file holds there now.
    fn chunks_match_the_file(scan: &crate::scan::Scan, img: &std::path::Path) -> Vec<ChunkRef> {
        use crate::manifest::{Item, ManifestReader};
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(img).unwrap();
        let mut r = ManifestReader::new(std::io::BufReader::new(
            std::fs::File::open(&scan.manifest).unwrap(),
        ))
        .unwrap();
        let mut out = Vec::new();
        while let Some(item) = r.next().unwrap() {
            if let Item::Chunk(c) = item {
                let mut buf = vec![0u8; c.len as usize];
                f.read_exact_at(&mut buf, c.offset).unwrap();
                assert_eq!(ChunkId::of(&buf), c.id, "chunk at {} is stale", c.offset);
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn a_scan_under_a_read_cap_counts_the_cap_s_waits_apart() {
        use std::os::unix::fs::FileExt;
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        let f = std::fs::File::create(&img).unwrap();
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        let told = Arc::new(Told::default());
        let _one = crate::read_full::CAP_TESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // 8 MiB/s with 256 KiB of burst: ~0.22 s of the scan is the cap's.
        let lim = Arc::new(crate::RateLimiter::new(8 << 20, 256 << 10));
        let s = {
            let _cap = crate::ReadCap::install(lim);
            crate::scan::scan_image(&img, &d.path().join("cache"), told_opts(&told, 1)).unwrap()
        };
        let st = &s.stats;
        assert!(
            st.paced_time >= std::time::Duration::from_millis(150) && st.paced_time <= st.read_time,
            "paced {:?} of {:?} reading",
            st.paced_time,
            st.read_time
        );
        // Uncapped, nothing waits.
        let s =
            crate::scan::scan_image(&img, &d.path().join("cache2"), told_opts(&told, 1)).unwrap();
        assert!(s.stats.paced_time < std::time::Duration::from_millis(50));
    }

    #[test]
    fn a_tracked_image_is_rescanned_only_where_it_was_written() {
        use std::os::unix::fs::FileExt;
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        let cache = d.path().join("cache");
        let f = std::fs::File::create(&img).unwrap();
        let mib = 1u64 << 20;
        f.set_len(16 * mib).unwrap();
        // 4 MiB of data at 2 MiB; the rest holes.
        let data: Vec<u8> = (0..4 * mib).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all_at(&data, 2 * mib).unwrap();
        let told = Arc::new(Told::default());
        let opts = || told_opts(&told, 1);
        // The tracker cannot vouch yet: a full scan, then `scanned`.
        let t = std::time::Instant::now();
        let s1 = crate::scan::scan_image(&img, &cache, opts()).unwrap();
        let took = t.elapsed();
        assert_eq!(s1.stats.bytes_hashed, 4 * mib);
        // The reads' part of the scan's time, within it.
        assert!(
            s1.stats.read_time > std::time::Duration::ZERO && s1.stats.read_time <= took,
            "{:?} of {took:?}",
            s1.stats.read_time
        );
        assert_eq!(*told.scanned.lock().unwrap(), vec![0]);
        let before = chunks_match_the_file(&s1, &img);

        // A page rewritten inside the data, a write into the hole at 10 MiB.
        f.write_all_at(&[0xaa; 4096], 3 * mib + 8192).unwrap();
        f.write_all_at(&[0x55; 100], 10 * mib + 5).unwrap();
        *told.ranges.lock().unwrap() = (
            1,
            Some(vec![
                (3 * mib + 8192, 3 * mib + 12288),
                (10 * mib + 5, 10 * mib + 105),
            ]),
        );
        let s2 = crate::scan::scan_image(&img, &cache, opts()).unwrap();
        assert!(
            s2.stats.bytes_hashed <= 2 * 64 * 1024,
            "read {} bytes",
            s2.stats.bytes_hashed
        );
        // The patched reads are timed too.
        assert!(s2.stats.read_time > std::time::Duration::ZERO);
        assert_eq!(*told.scanned.lock().unwrap(), vec![0, 1]);
        let after = chunks_match_the_file(&s2, &img);
        // Same boundaries in the data; one new piece in the hole.
        assert_eq!(after.len(), before.len() + 1);
        assert!(after.iter().any(|c| c.offset == 10 * mib && c.len == 4096));

        // The tracker lost track: the scan reads the data whole again.
        f.write_all_at(&[0x11; 10], 2 * mib).unwrap();
        *told.ranges.lock().unwrap() = (2, None);
        let s3 = crate::scan::scan_image(&img, &cache, opts()).unwrap();
        assert!(s3.stats.bytes_hashed >= 4 * mib);
        chunks_match_the_file(&s3, &img);
    }

    fn stat(dev: u64, ino: u64, size: u64, mtime_ns: i128) -> FileStat {
        FileStat {
            kind: crate::fsmeta::StatKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns,
            ctime_ns: mtime_ns,
            dev,
            ino,
            nlink: 1,
            rdev: 0,
            blocks: size / 512,
        }
    }

    #[test]
    fn a_changed_file_is_patched_only_when_the_tracker_vouches_for_all_of_it() {
        let big = 1 << 20;
        let mut written = HashMap::new();
        written.insert(5, Some(vec![(100, 200), (0, 50)]));
        written.insert(6, None);
        let fc = FileChanges { dev: 9, written };
        let was = |ino, size, mtime| StatRec::new(b"f", &stat(9, ino, size, mtime), 0);
        type Row = (&'static str, FileStat, Option<StatRec>, Option<Vec<Span>>);
        let rows: Vec<Row> = vec![
            (
                "written",
                stat(9, 5, big, 2),
                Some(was(5, big, 1)),
                Some(vec![(0, 50), (100, 200)]),
            ),
            (
                "grown by writes",
                stat(9, 5, big + 10, 2),
                Some(was(5, big, 1)),
                Some(vec![(0, 50), (100, 200)]),
            ),
            ("shrunk", stat(9, 5, big - 1, 2), Some(was(5, big, 1)), None),
            (
                "told to read whole",
                stat(9, 6, big, 2),
                Some(was(6, big, 1)),
                None,
            ),
            (
                "another inode at the path",
                stat(9, 5, big, 2),
                Some(was(4, big, 1)),
                None,
            ),
            (
                "another filesystem",
                stat(8, 5, big, 2),
                Some(was(5, big, 1)),
                None,
            ),
            ("never scanned", stat(9, 5, big, 2), None, None),
            (
                "small last time",
                stat(9, 5, big, 2),
                Some(was(5, 4096, 1)),
                None,
            ),
            (
                "metadata only",
                stat(9, 7, big, 1),
                Some(was(7, big, 1)),
                Some(vec![]),
            ),
            (
                "modified, no write seen",
                stat(9, 7, big, 2),
                Some(was(7, big, 1)),
                None,
            ),
            (
                "grown, no write seen",
                stat(9, 7, big + 1, 1),
                Some(was(7, big, 1)),
                None,
            ),
        ];
        for (what, now, seen, want) in rows {
            assert_eq!(fc.dirty(&now, seen.as_ref()), want, "{what}");
        }
    }

    #[test]
    fn a_tracked_tree_rereads_only_the_pages_written_and_files_it_cannot_vouch_for() {
        use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("tree");
        let cache = d.path().join("cache");
        std::fs::create_dir(&root).unwrap();
        let mib = 1u64 << 20;
        let data =
            |seed: u64| -> Vec<u8> { (0..4 * mib).map(|i| ((i * seed) % 251) as u8).collect() };
        for (name, seed) in [("table.db", 7), ("index", 11), ("meta", 13), ("log", 17)] {
            std::fs::write(root.join(name), data(seed)).unwrap();
        }
        std::fs::write(root.join("small"), b"tiny").unwrap();
        let told = Arc::new(Told::default());
        let opts = || told_opts(&told, 2);
        let s1 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        assert_eq!(*told.scanned.lock().unwrap(), vec![0]);
        crate::scan::manifest_matches_the_tree(&s1, &root);
        // Past the racy window of the first scan's timestamps.
        std::thread::sleep(std::time::Duration::from_millis(50));

        let ino = |n: &str| std::fs::metadata(root.join(n)).unwrap().ino();
        let dev = std::fs::metadata(&root).unwrap().dev();
        // table.db (page-sized chunks): two pages rewritten in place and
        // 100 KiB appended (told);
        // index: rewritten everywhere but the tracker says "whole";
        // meta: chmod only (not told, same mtime): nothing read;
        // log: replaced by another file at the same path (new inode).
        let table = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("table.db"))
            .unwrap();
        table.write_all_at(&[0xaa; 8192], mib + 8192).unwrap();
        table.write_all_at(&[0xbb; 8192], 3 * mib).unwrap();
        table.write_all_at(&[0xcc; 100 * 1024], 4 * mib).unwrap();
        std::fs::write(root.join("index"), data(19)).unwrap();
        std::fs::set_permissions(root.join("meta"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(root.join("log.new"), data(23)).unwrap();
        std::fs::rename(root.join("log.new"), root.join("log")).unwrap();
        let mut written = HashMap::new();
        written.insert(
            ino("table.db"),
            Some(vec![
                (mib + 8192, mib + 16384),
                (3 * mib, 3 * mib + 8192),
                (4 * mib, 4 * mib + 100 * 1024),
            ]),
        );
        written.insert(ino("index"), None);
        *told.files.lock().unwrap() = Some(FileChanges { dev, written });
        *told.ranges.lock().unwrap() = (1, None);
        let s2 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        assert_eq!(*told.scanned.lock().unwrap(), vec![0, 1]);
        crate::scan::manifest_matches_the_tree(&s2, &root);
        // index and log whole (8 MiB); table: the chunks around the two
        // pages (at most 64 KiB each, and a neighbour where a page straddles
        // two) and the appended 100 KiB.
        let whole = 8 * mib;
        assert!(
            s2.stats.bytes_hashed >= whole,
            "read {}",
            s2.stats.bytes_hashed
        );
        assert!(
            // (+ the last chunk, re-cut with what was appended)
            s2.stats.bytes_hashed <= whole + 5 * 64 * 1024 + 100 * 1024,
            "read {} bytes",
            s2.stats.bytes_hashed
        );
        // The pages and the append, and index whole (told "whole"); log is
        // a new inode the tracker said nothing of: not counted.
        assert_eq!(s2.stats.bytes_tracked, 2 * 8192 + 100 * 1024 + 4 * mib);

        // The tracker lost track: every changed file is read whole again.
        table.write_all_at(&[0x11; 10], 0).unwrap();
        *told.files.lock().unwrap() = None;
        *told.ranges.lock().unwrap() = (2, None);
        let s3 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        assert!(s3.stats.bytes_hashed >= 4 * mib);
        crate::scan::manifest_matches_the_tree(&s3, &root);
    }

    #[test]
    fn a_grown_file_is_cut_as_a_whole_read_cuts_it() {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("tree");
        let cache = d.path().join("cache");
        std::fs::create_dir(&root).unwrap();
        let log = root.join("log");
        let mib = 1usize << 20;
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = |n: usize| xorshift_bytes(&mut x, n);
        std::fs::write(&log, random(3 * mib)).unwrap();
        let told = Arc::new(Told::default());
        let opts = || told_opts(&told, 2);
        crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let append = |bytes: &[u8]| {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(bytes).unwrap();
        };

        // 5 MiB appended, told: read from the last chunk on.
        append(&random(5 * mib));
        let dev = std::fs::metadata(&root).unwrap().dev();
        let mut written = HashMap::new();
        let ino = std::fs::metadata(&log).unwrap().ino();
        written.insert(ino, Some(vec![(3 * mib as u64, 8 * mib as u64)]));
        *told.files.lock().unwrap() = Some(FileChanges { dev, written });
        *told.ranges.lock().unwrap() = (1, None);
        let s2 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        assert_eq!(s2.stats.bytes_tracked, 5 * mib as u64);
        assert!(
            s2.stats.bytes_hashed < 7 * mib as u64,
            "read {} bytes",
            s2.stats.bytes_hashed
        );
        let patched = chunks_match_the_file(&s2, &log);
        std::thread::sleep(std::time::Duration::from_millis(50));

        // The tracker lost track: read whole. Every chunk but the last
        // (cut at the old end of file) is one the patched scan made.
        append(b"x");
        *told.files.lock().unwrap() = None;
        *told.ranges.lock().unwrap() = (2, None);
        let s3 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        assert!(s3.stats.bytes_hashed >= 8 * mib as u64);
        let whole = chunks_match_the_file(&s3, &log);
        assert!(whole.len() > 4, "{} chunks", whole.len());
        assert_eq!(whole[..whole.len() - 1], patched[..patched.len() - 1]);
    }

    /// `n` pseudo-random bytes from a xorshift64 generator's `state`.
    fn xorshift_bytes(state: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 24).to_le_bytes()[0]
            })
            .collect()
    }

    /// The chunks a scan's manifest lists for the entry at `path`.
    fn chunks_of(scan: &crate::scan::Scan, path: &[u8]) -> Vec<ChunkRef> {
        use crate::manifest::{Item, ManifestReader};
        let mut r = ManifestReader::new(std::io::BufReader::new(
            std::fs::File::open(&scan.manifest).unwrap(),
        ))
        .unwrap();
        let (mut out, mut cur) = (Vec::new(), false);
        while let Some(item) = r.next().unwrap() {
            match item {
                Item::Entry(e) => cur = e.path == path,
                Item::Chunk(c) if cur => out.push(c),
                Item::Chunk(_) => {}
            }
        }
        out
    }

    /// No tracker: a file rewritten in place is re-read at its last cuts
    /// (and what it grew by cut from its last chunk on), a file written
    /// anew over itself with its content shifted is cut anew, and a sparse
    /// file is read whole as before. Every manifest matches its tree.
    #[test]
    fn an_untracked_file_rewritten_in_place_is_rehashed_at_its_last_cuts() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("tree");
        let cache = d.path().join("cache");
        std::fs::create_dir(&root).unwrap();
        let mib = 1u64 << 20;
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = |n: u64| xorshift_bytes(&mut x, usize::try_from(n).unwrap());
        let (table, shifted, sparse) = (
            root.join("table.db"),
            root.join("data.bin"),
            root.join("sparse"),
        );
        std::fs::write(&table, random(4 * mib)).unwrap();
        let before = random(4 * mib);
        std::fs::write(&shifted, &before).unwrap();
        let f = std::fs::File::create(&sparse).unwrap();
        f.write_all_at(&random(mib), 0).unwrap();
        f.write_all_at(&random(mib), 3 * mib).unwrap();
        f.set_len(5 * mib).unwrap();
        let opts = || crate::scan::ScanOptions {
            threads: 2,
            label: "t".into(),
            progress: std::sync::Arc::new(crate::progress::NoProgress),
            changes: None,
            copy_into: None,
        };
        let s1 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        crate::scan::manifest_matches_the_tree(&s1, &root);
        // (The next scan replaces the cache's manifest.)
        let c1 = chunks_of(&s1, b"table.db");
        let d1 = chunks_of(&s1, b"data.bin");
        // Past the racy window of the first scan's timestamps.
        std::thread::sleep(std::time::Duration::from_millis(50));

        // table.db: three pages rewritten, 100 KiB appended; data.bin: 100
        // bytes put before its content, same inode; sparse: a page.
        let t = std::fs::OpenOptions::new()
            .write(true)
            .open(&table)
            .unwrap();
        for at in [0, mib + 8192, 3 * mib + 4096] {
            t.write_all_at(&random(4096), at).unwrap();
        }
        t.write_all_at(&random(100 * 1024), 4 * mib).unwrap();
        let mut after = random(100);
        after.extend_from_slice(&before);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&shifted)
            .unwrap()
            .write_all_at(&after, 0)
            .unwrap();
        f.write_all_at(&random(4096), 8192).unwrap();
        let s2 = crate::scan::scan_tree(&root, &cache, opts()).unwrap();
        crate::scan::manifest_matches_the_tree(&s2, &root);
        assert_eq!(
            (s2.stats.files_rehashed, s2.stats.guesses_missed),
            (2, 1),
            "table.db and data.bin re-read at their cuts; data.bin's did not hold"
        );
        assert_eq!(s2.stats.bytes_tracked, 0);
        // table.db: every cut of the first scan but its last chunk's end
        // (what it grew by is cut from there), and the pages' chunks new.
        let c2 = chunks_of(&s2, b"table.db");
        let cuts = |c: &[ChunkRef]| c.iter().map(|c| (c.offset, c.len)).collect::<Vec<_>>();
        assert_eq!(cuts(&c1[..c1.len() - 1]), cuts(&c2[..c1.len() - 1]));
        let changed = c1[..c1.len() - 1]
            .iter()
            .zip(&c2)
            .filter(|(a, b)| a.id != b.id)
            .count();
        assert!((3..=6).contains(&changed), "{changed} chunks changed");
        // data.bin: cut as a scan without a cache cuts it.
        let shifted_chunks = chunks_of(&s2, b"data.bin");
        let fresh = crate::scan::scan_tree(&root, &d.path().join("fresh"), opts()).unwrap();
        assert_eq!(shifted_chunks, chunks_of(&fresh, b"data.bin"));
        // Read: table.db and sparse's data whole; data.bin up to its last
        // chunk at the old cuts, then whole.
        let last = u64::from(d1.last().unwrap().len);
        let want = (4 * mib + 100 * 1024) + 2 * mib + (4 * mib - last) + (4 * mib + 100);
        assert_eq!(s2.stats.bytes_hashed, want);
    }
}
