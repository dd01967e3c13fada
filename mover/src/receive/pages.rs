//! Page patches at the destination (issue 11, item 5): a chunk of a file
//! patched in place usually differs from the destination's previous bytes
//! of the same range in a few 4 KiB pages (a database rewrites pages, and a
//! 256 KiB chunk around one changed page is otherwise written whole, twice:
//! pack and file). When the previous bytes are at hand (the executor reads
//! them for every patch want), only the differing pages go to the pack and
//! then into the file, whatever the file's name or chunk class.
//!
//! `round/pages` lists, per pack offset, the pages stored there (durable
//! before the commit record, like the op streams). Apply rebuilds the chunk
//! from the file's current bytes and those pages, checks it against the
//! chunk's id, and writes only the pages: replaying it after a crash gives
//! the same bytes, so it stays idempotent.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use rustix::fs::SeekFrom;

use super::error::ReceiveError;
use crate::journal::{FramedReader, FramedWriter};

/// The page size patches are cut at, aligned to the file.
pub(super) const PAGE: u64 = 4096;
/// The file in the round dir listing page patches.
pub(super) const PAGES_FILE: &str = "pages";

/// Pages of a chunk at file offset `offset` that differ between `new` and
/// `old` (same length): (offset in the chunk, length), file-aligned,
/// neighbours merged.
pub(super) fn diff_pages(offset: u64, new: &[u8], old: &[u8]) -> Vec<(u32, u32)> {
    debug_assert_eq!(new.len(), old.len());
    pages_where(offset, new.len(), |a, b| new[a..b] != old[a..b])
}

/// The pages of a chunk of `len` bytes at file offset `offset` for which
/// `pick(start, end)` (chunk-relative) holds: file-aligned (the first and
/// last cut at the chunk's edges), neighbours merged.
fn pages_where(
    offset: u64,
    len: usize,
    mut pick: impl FnMut(usize, usize) -> bool,
) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut a = 0usize;
    while a < len {
        let to_boundary = PAGE - (offset + a as u64) % PAGE;
        #[allow(clippy::cast_possible_truncation, reason = "at most PAGE")]
        let b = (a + to_boundary as usize).min(len);
        if pick(a, b) {
            #[allow(clippy::cast_possible_truncation, reason = "a chunk is < 4 GiB")]
            let (pa, pb) = (a as u32, b as u32);
            match out.last_mut() {
                Some((s, l)) if *s + *l == pa => *l += pb - pa,
                _ => out.push((pa, pb - pa)),
            }
        }
        a = b;
    }
    out
}

/// Bytes a page list covers.
pub(super) fn covered(pages: &[(u32, u32)]) -> u64 {
    pages.iter().map(|&(_, l)| u64::from(l)).sum()
}

/// `pages` (sorted, disjoint) together with `holes` (chunk-relative ranges
/// where the destination's copy is a hole): sorted, overlaps and neighbours
/// merged. A hole reads as zeros, so a page the source holds allocated but
/// zero matches it; written, it is allocated here too (same bytes, same
/// layout).
pub(super) fn with_holes(pages: Vec<(u32, u32)>, holes: &[(u32, u32)]) -> Vec<(u32, u32)> {
    if holes.is_empty() {
        return pages;
    }
    let mut all = pages;
    all.extend_from_slice(holes);
    all.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(all.len());
    for (o, l) in all {
        match out.last_mut() {
            Some((s, sl)) if o <= *s + *sl => *sl = (*sl).max(o + l - *s),
            _ => out.push((o, l)),
        }
    }
    out
}

/// The pages of `old` (the destination's bytes of a chunk at file offset
/// `offset` in `f`) that lie over a hole, relative to `offset`, merged. Only
/// an all-zero page can be a hole, and only such a page is asked about, at
/// its start (`SEEK_DATA` answers at once where there is data; `SEEK_HOLE`
/// walks tmpfs page by page to the next hole, over a millisecond per call
/// in a 400 MB file). A page the kernel cannot answer for counts as a hole:
/// written, it costs a page; left, it could stay one.
pub(super) fn holes_in(f: &File, offset: u64, old: &[u8]) -> Vec<(u32, u32)> {
    pages_where(offset, old.len(), |a, b| {
        let at = offset + a as u64;
        old[a..b].iter().all(|&x| x == 0)
            && !matches!(rustix::fs::seek(f, SeekFrom::Data(at)), Ok(d) if d == at)
    })
}

/// Writes (replacing) the round dir's page-patch list; none removes it.
pub(super) fn write_pages_file(
    round_dir: &Path,
    list: &[(u64, Vec<(u32, u32)>)],
) -> Result<(), ReceiveError> {
    let p = round_dir.join(PAGES_FILE);
    if list.is_empty() {
        let _ = std::fs::remove_file(&p);
        return Ok(());
    }
    let mut w = FramedWriter::open(&p, true)?;
    for part in list.chunks(4096) {
        w.push(&part.to_vec())?;
    }
    w.flush(true)?;
    Ok(())
}

/// Pack offset -> pages stored there (empty when there is no list).
pub(super) fn read_pages_file(
    round_dir: &Path,
) -> Result<HashMap<u64, Vec<(u32, u32)>>, ReceiveError> {
    let Some(mut r) = FramedReader::open(&round_dir.join(PAGES_FILE))? else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    while let Some(v) = r.next::<Vec<(u64, Vec<(u32, u32)>)>>() {
        out.extend(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_file_aligned_and_merged() {
        let old = vec![0u8; 20_000];
        let mut new = old.clone();
        // Chunk at file offset 1000: its first page ends at chunk offset 3096.
        new[10] = 1; // page [0, 3096)
        new[3100] = 1; // page [3096, 7192)
        new[15_000] = 1; // file 16000: page [12288, 16384) = chunk [11288, 15384)
        assert_eq!(
            diff_pages(1000, &new, &old),
            vec![(0, 7192), (11_288, 4096)]
        );
        assert!(diff_pages(1000, &old, &old).is_empty());
        // The tail page is cut at the chunk's end.
        new[19_999] = 2;
        assert_eq!(diff_pages(1000, &new, &old).last(), Some(&(19_480, 520)));
    }

    #[test]
    fn hole_pages_join_the_differing_pages() {
        type Row = (
            &'static [(u32, u32)],
            &'static [(u32, u32)],
            &'static [(u32, u32)],
        );
        let table: &[Row] = &[
            (&[(0, 4096)], &[], &[(0, 4096)]),
            (&[], &[(4096, 8192)], &[(4096, 8192)]),
            // Disjoint: sorted.
            (
                &[(16_384, 4096)],
                &[(0, 4096)],
                &[(0, 4096), (16_384, 4096)],
            ),
            // Neighbours and overlaps merge.
            (&[(0, 4096)], &[(4096, 4096)], &[(0, 8192)]),
            (
                &[(0, 8192), (20_000, 100)],
                &[(4096, 12_288)],
                &[(0, 16_384), (20_000, 100)],
            ),
            (&[(4096, 4096)], &[(0, 20_000)], &[(0, 20_000)]),
        ];
        for (i, (pages, holes, want)) in table.iter().enumerate() {
            assert_eq!(with_holes(pages.to_vec(), holes), want.to_vec(), "row {i}");
        }
    }

    #[test]
    fn holes_are_the_zero_pages_without_data() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::create(&p).unwrap();
        // Data at [64K, 128K) (its second half allocated zeros) and
        // [256K, 260K); holes elsewhere, to 512K.
        f.write_all_at(&[1u8; 32_768], 65_536).unwrap();
        f.write_all_at(&[0u8; 32_768], 98_304).unwrap();
        f.write_all_at(&[2u8; 4096], 262_144).unwrap();
        f.set_len(524_288).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&p).unwrap();
        let read = |offset: u64, len: usize| {
            let mut b = vec![0u8; len];
            f.read_exact_at(&mut b, offset).unwrap();
            b
        };
        assert_eq!(
            holes_in(&f, 0, &read(0, 524_288)),
            vec![(0, 65_536), (131_072, 131_072), (266_240, 258_048)]
        );
        // Cut at the range's edges, partial pages included.
        assert_eq!(
            holes_in(&f, 70_000, &read(70_000, 100_000)),
            vec![(61_072, 38_928)]
        );
        assert!(holes_in(&f, 65_536, &read(65_536, 65_536)).is_empty());
        assert_eq!(holes_in(&f, 1000, &read(1000, 5000)), vec![(0, 5000)]);
    }

    #[test]
    fn the_list_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let list = vec![(0u64, vec![(0u32, 4096u32)]), (65_536, vec![(4096, 8192)])];
        write_pages_file(d.path(), &list).unwrap();
        let m = read_pages_file(d.path()).unwrap();
        assert_eq!(m[&65_536], vec![(4096, 8192)]);
        write_pages_file(d.path(), &[]).unwrap();
        assert!(read_pages_file(d.path()).unwrap().is_empty());
    }
}
