//! Re-reading and hashing the pieces of a patched file
//! (`super::changes::plan`): batches of neighbouring pieces read with one
//! `pread` per run, their ids hashed together (`chunk::many`), the batches
//! spread over the scan's threads.
//!
//! Why: a patched file's pieces were read and hashed one at a time on the
//! scanning thread. That is fine for the 1% of a file a tracker reports,
//! but a file rewritten in place with no tracker to say where is re-read
//! whole at its old boundaries (`walk`: about 30,000 pieces of 4 KiB for a
//! 128 MiB database), and one 4 KiB BLAKE3 input at a time fills a quarter
//! of the SIMD lanes while the scan's workers idle.

use std::fs::File;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::chunk::{ChunkId, ChunkRef, many};
use crate::read_full::{neighbour_runs, read_full_at, will_need};
use crate::thread_times::{self, CpuTally};

use super::changes::Piece;

/// Bytes of pieces one batch reads and hashes: a batch's runs are asked of
/// the kernel together (one deep queue on a cold cache instead of one cold
/// random read at a time), and one batch per thread is in flight, which
/// bounds how far reads run ahead of the scan under a read cap (pre-copy
/// charges a read when the scan takes it).
pub(super) const BATCH_BYTES: u64 = 2 << 20;

/// A piece to read: its offset and length.
type Span = (u64, u32);

/// `reads` cut into batches (index ranges, in order) of at most
/// [`BATCH_BYTES`], a piece longer than that a batch alone.
fn batches(reads: &[Span]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut a, mut bytes) = (0, 0u64);
    for (i, &(_, len)) in reads.iter().enumerate() {
        if i > a && bytes + u64::from(len) > BATCH_BYTES {
            out.push(a..i);
            (a, bytes) = (i, 0);
        }
        bytes += u64::from(len);
    }
    if a < reads.len() {
        out.push(a..reads.len());
    }
    out
}

/// Batches asked of the kernel ahead of the one being read (see
/// [`Window`]).
const AHEAD: usize = 4;

/// How far the batches were asked of the kernel (`will_need`) ahead of the
/// reads: [`AHEAD`] batches (8 MiB) past the one a thread takes, as the
/// one-piece-at-a-time reader before it kept 8 MiB ahead: scattered pages
/// (1% of a 128 MiB file's, ~330 chunks) took ~55 ms to re-read one cold
/// random read at a time, and go to the disk as one deep queue when asked
/// for together. (A whole file re-read on a cold cache, 128 MiB, measured
/// the same 100-125 ms with this window, with none beyond its own batch,
/// and with the whole file asked for at once; `cat` reads it in 60 ms.)
/// A window, not the whole file: under a read cap a read the kernel
/// started early is charged only when the scan takes it.
struct Window {
    advised: Mutex<usize>,
}

impl Window {
    fn new() -> Self {
        Window {
            advised: Mutex::new(0),
        }
    }

    /// Batch `i` is about to be read: ask for it and the ones up to
    /// [`AHEAD`] past it that were not asked for yet.
    fn ahead(&self, file: &File, reads: &[Span], batches: &[Range<usize>], i: usize) {
        let mut advised = self.advised.lock().unwrap_or_else(|p| p.into_inner());
        let to = (i + 1 + AHEAD).min(batches.len());
        if let (Some(first), Some(last)) = (batches.get(*advised), batches.get(to.max(1) - 1))
            && *advised < to
        {
            // One call per stretch of neighbours, not per run of reads
            // (a 128 MiB file asked for per 256 KiB run: 512 calls).
            let mut span: Option<(u64, u64)> = None;
            for &(offset, len) in &reads[first.start..last.end] {
                let end = offset + u64::from(len);
                span = match span {
                    Some((s, e)) if e == offset => Some((s, end)),
                    Some((s, e)) => {
                        will_need(file, s, e - s);
                        Some((offset, end))
                    }
                    None => Some((offset, end)),
                };
            }
            if let Some((s, e)) = span {
                will_need(file, s, e - s);
            }
        }
        *advised = (*advised).max(to);
    }
}

/// Reads one batch into `buf` and appends its ids to `ids`. A piece cut
/// short by the end of the file (it shrank under the scan) is hashed with
/// zeros after what was read: the scan re-stats the file after and marks it
/// racy, so the next round reads it again.
fn hash_batch(
    file: &File,
    reads: &[Span],
    buf: &mut Vec<u8>,
    ids: &mut Vec<ChunkId>,
) -> std::io::Result<()> {
    let runs: Vec<Range<usize>> = neighbour_runs(reads, |&r| r).collect();
    let total: usize = reads.iter().map(|&(_, len)| len as usize).sum();
    // Grown, never cleared: every byte is read (or zeroed past the end
    // of the file) before it is hashed, and zeroing a batch first cost as
    // much as reading it from the page cache.
    if buf.len() < total {
        buf.resize(total, 0);
    }
    let buf = &mut buf[..total];
    let mut at = 0;
    for run in runs {
        let (start, _) = reads[run.start];
        let n: usize = reads[run.clone()].iter().map(|&(_, l)| l as usize).sum();
        let want = &mut buf[at..at + n];
        let got = read_full_at(file, want, start)?;
        want[got..].fill(0);
        at += n;
    }
    let mut parts = Vec::with_capacity(reads.len());
    let mut rest = &buf[..];
    for &(_, len) in reads {
        let (part, tail) = rest.split_at(len as usize);
        parts.push(part);
        rest = tail;
    }
    many::ids_of(&parts, ids);
    Ok(())
}

/// The chunks of `pieces` in order: kept ones as they were, read ones
/// re-read from `file` and hashed, on up to `threads` threads (the
/// calling one and helpers, whose CPU times go to `cpu`, the scan's
/// tally); and the bytes read.
pub(super) fn hash_pieces(
    file: &File,
    pieces: &[Piece],
    threads: usize,
    cpu: &CpuTally,
) -> std::io::Result<(Vec<ChunkRef>, u64)> {
    let reads: Vec<Span> = pieces
        .iter()
        .filter_map(|p| match *p {
            Piece::Read { offset, len } => Some((offset, len)),
            Piece::Keep(_) => None,
        })
        .collect();
    let batches = batches(&reads);
    let ids = if batches.len() > 1 && threads > 1 {
        hash_batches_on_threads(file, &reads, &batches, threads, cpu)?
    } else {
        let (mut buf, mut ids) = (Vec::new(), Vec::with_capacity(reads.len()));
        let window = Window::new();
        for (i, b) in batches.iter().enumerate() {
            window.ahead(file, &reads, &batches, i);
            hash_batch(file, &reads[b.clone()], &mut buf, &mut ids)?;
        }
        ids
    };
    let mut ids = ids.into_iter();
    let chunks = pieces
        .iter()
        .map(|p| match *p {
            Piece::Keep(c) => c,
            Piece::Read { offset, len } => ChunkRef {
                offset,
                len,
                id: ids.next().expect("one id per read piece"),
            },
        })
        .collect();
    let read = reads.iter().map(|&(_, len)| u64::from(len)).sum();
    Ok((chunks, read))
}

/// [`hash_batch`] of every batch, taken in turn by `threads` threads; the
/// ids in the batches' order.
fn hash_batches_on_threads(
    file: &File,
    reads: &[Span],
    batches: &[Range<usize>],
    threads: usize,
    cpu: &CpuTally,
) -> std::io::Result<Vec<ChunkId>> {
    let next = AtomicUsize::new(0);
    let window = Window::new();
    let done: Mutex<Vec<Option<Vec<ChunkId>>>> = Mutex::new(vec![None; batches.len()]);
    let work = || -> std::io::Result<()> {
        let mut buf = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(b) = batches.get(i) else {
                return Ok(());
            };
            window.ahead(file, reads, batches, i);
            let mut ids = Vec::with_capacity(b.len());
            if let Err(e) = hash_batch(file, &reads[b.clone()], &mut buf, &mut ids) {
                // The others stop at their next batch.
                next.store(batches.len(), Ordering::Relaxed);
                return Err(e);
            }
            done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(ids);
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(batches.len()))
            .map(|_| {
                s.spawn(|| {
                    let start = thread_times::this_thread();
                    let r = work();
                    cpu.add_since(start);
                    r
                })
            })
            .collect();
        let mine = work();
        helpers
            .into_iter()
            .map(|h| h.join().expect("a hashing thread panicked"))
            .fold(mine, Result::and)
    })?;
    let done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(done
        .into_iter()
        .flat_map(|ids| ids.expect("every batch hashed"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn batches_cover_every_read_in_order_within_the_limit() {
        const M: u32 = 1 << 20;
        // (piece lengths, batch sizes in pieces)
        let table: &[(&[u32], &[usize])] = &[
            (&[], &[]),
            (&[4096], &[1]),
            (&[M / 2, M / 2, M / 2, M / 2], &[4]),
            (&[M / 2, M / 2, M / 2, M / 2, 1], &[4, 1]),
            (&[3 * M, 1, 1], &[1, 2]),
            (&[1, 3 * M, 1], &[1, 1, 1]),
            (&[3 * M / 2, M, M, M], &[1, 2, 1]),
        ];
        for (lens, want) in table {
            let reads: Vec<Span> = lens.iter().map(|&l| (0, l)).collect();
            let got = batches(&reads);
            let sizes: Vec<usize> = got.iter().map(ExactSizeIterator::len).collect();
            assert_eq!(&sizes, want, "{lens:?}");
            let mut at = 0;
            for b in &got {
                assert_eq!(b.start, at, "{lens:?}: in order, no gap");
                at = b.end;
                let bytes: u64 = reads[b.clone()].iter().map(|&(_, l)| u64::from(l)).sum();
                assert!(b.len() == 1 || bytes <= BATCH_BYTES, "{lens:?}");
            }
            assert_eq!(at, reads.len());
        }
    }

    /// Every read piece's id is its bytes', on one thread and on several,
    /// kept pieces pass through, and a piece past the end is hashed with
    /// zeros.
    #[test]
    fn read_pieces_are_hashed_as_their_bytes() {
        let data: Vec<u8> = (0..24u64 << 20)
            .map(|i| ((i * 2_654_435_761) >> 11).to_le_bytes()[0])
            .collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let size = data.len() as u64;
        let kept = ChunkRef {
            offset: 0,
            len: 1,
            id: ChunkId::of(b"kept"),
        };
        let mut pieces = Vec::new();
        let mut at = 0u64;
        let mut n = 0u64;
        while at < size {
            // Neighbours of 1-9 KiB, gaps, kept pieces and a few long ones.
            let len = match n % 97 {
                0 => 300 << 10,
                _ => 1024 * (1 + n % 9),
            };
            let len = len.min(size - at);
            if n % 13 == 5 {
                pieces.push(Piece::Keep(kept));
            } else if n % 7 != 3 {
                #[allow(clippy::cast_possible_truncation)]
                pieces.push(Piece::Read {
                    offset: at,
                    len: len as u32,
                });
            }
            at += len;
            n += 1;
        }
        // Past the end: zeros after what the file holds.
        pieces.push(Piece::Read {
            offset: size - 100,
            len: 4096,
        });
        for threads in [1, 2, 3] {
            let cpu = CpuTally::default();
            let (chunks, read) = hash_pieces(&f, &pieces, threads, &cpu).unwrap();
            assert_eq!(chunks.len(), pieces.len());
            let mut want_read = 0;
            for (p, c) in pieces.iter().zip(&chunks) {
                match *p {
                    Piece::Keep(k) => assert_eq!(*c, k),
                    Piece::Read { offset, len } => {
                        let s = usize::try_from(offset).unwrap();
                        let mut bytes = data[s..(s + len as usize).min(data.len())].to_vec();
                        bytes.resize(len as usize, 0);
                        assert_eq!((c.offset, c.len), (offset, len));
                        assert_eq!(c.id, ChunkId::of(&bytes), "{threads} threads, at {offset}");
                        want_read += u64::from(len);
                    }
                }
            }
            assert_eq!(read, want_read);
            // The helpers' CPU is the scan's: counted in its tally.
            let helped = cpu.total().expect("/proc tells").run;
            assert_eq!(threads > 1, helped > std::time::Duration::ZERO, "{threads}");
        }
    }
}
