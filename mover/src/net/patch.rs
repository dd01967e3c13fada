//! Chunk patches. A database rewrites 4 KiB pages in place; content-defined
//! chunks are larger (the `db` class averages 16 KiB), so each rewritten page
//! would cost a whole chunk on the wire. When the receiver holds the previous
//! version of a chunk's byte range (the same range of the same file, which
//! it is patching in place), it sends one short hash per 4 KiB block of it
//! with the want; the sender answers with the blocks that differ and a bitmap.
//! The receiver rebuilds the chunk and checks it against the chunk's blake3 id
//! like any other, so a collision or a stale base costs a refetch, never bad
//! data.
//!
//! Blocks are aligned to the *file* (multiples of 4 KiB from its start), not
//! to the chunk, whose content-defined start falls anywhere: a page-aligned
//! rewrite then dirties exactly one block. A chunk's first and last blocks
//! may be short.
//!
//! Payload: `ceil(blocks / 8)` bitmap bytes (bit `i` set: block `i` follows),
//! then the differing blocks in order.

/// Block size of patches: the page size of common databases and of the
/// kernel, the unit in-place writers dirty.
pub const BLOCK: usize = 4096;

/// One block's sum: 8 bytes of its blake3 hash. Only a hint: the rebuilt
/// chunk is verified against its full id.
pub type BlockSum = [u8; 8];

/// Errors applying a patch (a broken or hostile peer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("patch is shorter than its bitmap")]
    NoBitmap,
    #[error("patch reuses block {0}, which the base does not have")]
    NoBase(usize),
    #[error("patch ends inside block {0}")]
    Short(usize),
    #[error("patch has {0} bytes after its last block")]
    Trailing(usize),
}

fn sum(block: &[u8]) -> BlockSum {
    let h = blake3::hash(block);
    let mut s = [0u8; 8];
    s.copy_from_slice(&h.as_bytes()[..8]);
    s
}

/// The blocks of `len` bytes at file offset `offset`, as ranges of the chunk.
fn spans(offset: u64, len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    #[allow(clippy::cast_possible_truncation, reason = "a remainder below BLOCK")]
    let head = (BLOCK - (offset % BLOCK as u64) as usize) % BLOCK;
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let n = if at == 0 && head != 0 { head } else { BLOCK };
        let r = at..(at + n).min(len);
        at = r.end;
        Some(r)
    })
}

/// Number of blocks of a `len`-byte chunk at `offset` (at most `len / 4 KiB + 2`).
pub fn blocks(offset: u64, len: usize) -> usize {
    spans(offset, len).count()
}

fn bitmap_len(offset: u64, len: usize) -> usize {
    blocks(offset, len).div_ceil(8)
}

/// Longest patch of a `len`-byte chunk at `offset` (every block sent).
pub fn max_len(offset: u64, len: usize) -> usize {
    bitmap_len(offset, len) + len
}

/// Sums of the blocks of `base`, the receiver's bytes at file offset `offset`.
pub fn block_sums(base: &[u8], offset: u64) -> Vec<BlockSum> {
    spans(offset, base.len()).map(|r| sum(&base[r])).collect()
}

/// Encodes `new` (the chunk at file offset `offset`) against the receiver's
/// block sums into `out`. False when a patch would not save at least an
/// eighth of the chunk (send it whole).
pub fn encode(new: &[u8], offset: u64, sums: &[BlockSum], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.resize(bitmap_len(offset, new.len()), 0);
    let limit = new.len() - new.len() / 8;
    for (i, r) in spans(offset, new.len()).enumerate() {
        let block = &new[r];
        if sums.get(i) == Some(&sum(block)) {
            continue;
        }
        out[i / 8] |= 1 << (i % 8);
        out.extend_from_slice(block);
        if out.len() > limit {
            return false;
        }
    }
    true
}

/// Rebuilds the `len`-byte chunk at file offset `offset` from `base` (the
/// receiver's previous bytes of that range) and `patch`, into `out`.
pub fn apply(
    base: &[u8],
    patch: &[u8],
    offset: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), PatchError> {
    out.clear();
    let (bitmap, mut rest) = patch
        .split_at_checked(bitmap_len(offset, len))
        .ok_or(PatchError::NoBitmap)?;
    for (i, r) in spans(offset, len).enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            let (block, more) = rest.split_at_checked(r.len()).ok_or(PatchError::Short(i))?;
            out.extend_from_slice(block);
            rest = more;
        } else {
            out.extend_from_slice(base.get(r).ok_or(PatchError::NoBase(i))?);
        }
    }
    if !rest.is_empty() {
        return Err(PatchError::Trailing(rest.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; n];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut v);
        v
    }

    #[test]
    fn a_rewritten_page_travels_alone() {
        // A chunk starting mid-page: its blocks follow the file's pages.
        let at = 3 * BLOCK as u64 + 1000;
        let old = data(5 * BLOCK + 100, 1);
        let mut new = old.clone();
        // File page 5 (aligned) rewritten: chunk bytes from 2 pages in.
        let page = 5 * BLOCK - usize::try_from(at).unwrap();
        new[page..page + BLOCK].copy_from_slice(&data(BLOCK, 2));
        let mut p = Vec::new();
        assert!(encode(&new, at, &block_sums(&old, at), &mut p));
        assert_eq!(blocks(at, new.len()), 6);
        assert_eq!(p.len(), 1 + BLOCK);
        let mut out = Vec::new();
        apply(&old, &p, at, new.len(), &mut out).unwrap();
        assert_eq!(out, new);
        // Unaligned rewrites cost the pages they touch.
        let mut new2 = old.clone();
        new2[10..20].copy_from_slice(b"0123456789");
        new2[page + 100..page + 100 + BLOCK].copy_from_slice(&data(BLOCK, 3));
        assert!(encode(&new2, at, &block_sums(&old, at), &mut p));
        assert_eq!(p.len(), 1 + (BLOCK - 1000) + 2 * BLOCK);
        apply(&old, &p, at, new2.len(), &mut out).unwrap();
        assert_eq!(out, new2);
    }

    #[test]
    fn growth_shrinkage_and_no_base_rebuild_exactly() {
        let old = data(3 * BLOCK, 3);
        let mut grown = old.clone();
        grown.extend_from_slice(&data(BLOCK / 2, 4));
        let mut out = Vec::new();
        let mut p = Vec::new();
        for at in [0, 4096 * 7, 12345] {
            assert!(encode(&grown, at, &block_sums(&old, at), &mut p));
            apply(&old, &p, at, grown.len(), &mut out).unwrap();
            assert_eq!(out, grown);
            // A short last block in the base never matches a full one.
            let short = &old[..2 * BLOCK + 10];
            assert!(encode(&old, at, &block_sums(short, at), &mut p));
            apply(short, &p, at, old.len(), &mut out).unwrap();
            assert_eq!(out, old);
            // Nothing in common: not worth a patch.
            assert!(!encode(
                &data(4 * BLOCK, 5),
                at,
                &block_sums(&old, at),
                &mut p
            ));
            assert!(!encode(&old, at, &[], &mut p));
        }
    }

    #[test]
    fn broken_patches_are_refused() {
        let old = data(2 * BLOCK, 6);
        let mut out = Vec::new();
        assert_eq!(apply(&old, &[], 0, 10, &mut out), Err(PatchError::NoBitmap));
        // Block 0 sent but cut short; block 2 reused but the base has 2 blocks.
        assert_eq!(
            apply(&old, &[1, 0, 0], 0, 2 * BLOCK, &mut out),
            Err(PatchError::Short(0))
        );
        assert_eq!(
            apply(&old, &[0], 0, 3 * BLOCK, &mut out),
            Err(PatchError::NoBase(2))
        );
        assert_eq!(
            apply(&old, &[0, 9], 0, 2 * BLOCK, &mut out),
            Err(PatchError::Trailing(1))
        );
    }
}
