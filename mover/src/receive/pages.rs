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
use std::path::Path;

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
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut a = 0usize;
    while a < new.len() {
        let to_boundary = PAGE - (offset + a as u64) % PAGE;
        #[allow(clippy::cast_possible_truncation, reason = "at most PAGE")]
        let b = (a + to_boundary as usize).min(new.len());
        if new[a..b] != old[a..b] {
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
