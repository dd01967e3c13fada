//! The one positional read loop: fill a buffer from a file at an offset,
//! stopping early only at end of file. Every reader of chunk data (scan,
//! sender, receiver, the chunk index) goes through it, so EINTR and short
//! reads are handled in one place.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::rate::RateLimiter;

/// Asks the kernel to start reading `len` bytes of `f` at `offset` now,
/// so that a later read finds them in the page cache (many ranges advised
/// before they are read make one deep queue instead of one cold random read
/// at a time). Only a hint: a file that cannot take it is read as usual.
pub(crate) fn will_need(f: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        f,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
}

/// The process's read cap while a [`ReadCap`] lives.
static READ_CAP: RwLock<Option<Arc<RateLimiter>>> = RwLock::new(None);

/// Caps the bytes this process reads through the read loop while it lives
/// (issue 11: a live migration's pre-copy reads compete with the
/// application for the disk and, on a small machine, the CPU; the final
/// round, after the unmount, is not capped). One at a time: installing
/// another replaces the cap, and dropping either lifts it.
#[must_use = "the cap is lifted when this is dropped"]
pub struct ReadCap(());

impl ReadCap {
    /// Charges every read to `limiter` until dropped.
    pub fn install(limiter: Arc<RateLimiter>) -> ReadCap {
        *READ_CAP.write().unwrap_or_else(PoisonError::into_inner) = Some(limiter);
        ReadCap(())
    }
}

impl Drop for ReadCap {
    fn drop(&mut self) {
        *READ_CAP.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Held by tests that install a [`ReadCap`]: the cap is the process's, so
/// two at once would lift or replace each other's.
#[cfg(test)]
pub(crate) static CAP_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Nanoseconds this process's reads have waited for the cap, all threads:
/// a scan's reads under a cap take the cap's time, not the disk's, and the
/// final round, uncapped, does not (see [`paced`]).
static PACED_NS: AtomicU64 = AtomicU64::new(0);

/// Waits until `n` more bytes fit under the cap, if there is one.
fn charge(n: usize) {
    let cap = READ_CAP
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(l) = cap {
        // What the cap asked for, or longer: a thread woken late (pre-copy
        // runs in the idle cpu group) waited for the cap all the same. The
        // limiter's own figure counts under a test's manual clock.
        let t = std::time::Instant::now();
        let asked = l.take(n as u64);
        let waited = asked.max(t.elapsed());
        PACED_NS.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// The time this process's reads have waited for a read cap so far (a
/// running total, summed over threads: a span's is the difference of two).
pub(crate) fn paced() -> std::time::Duration {
    std::time::Duration::from_nanos(PACED_NS.load(Ordering::Relaxed))
}

/// Reads into `buf` from `offset` until it is full or the file ends, at most
/// `piece` bytes per system call; returns the bytes read (less than
/// `buf.len()` only at end of file).
pub(crate) fn read_full_at_in(
    f: &File,
    buf: &mut [u8],
    offset: u64,
    piece: usize,
) -> io::Result<usize> {
    let piece = piece.max(1);
    let mut got = 0usize;
    while got < buf.len() {
        let end = got.saturating_add(piece).min(buf.len());
        match f.read_at(&mut buf[got..end], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                charge(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// [`read_full_at_in`] with no limit per system call.
pub(crate) fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    read_full_at_in(f, buf, offset, usize::MAX)
}

/// [`read_full_at`] for a chunk answer, whose bytes this round's scan read
/// (and was charged for) unless its file was unchanged: what the page cache
/// still holds comes free of the cap, the rest is read and charged as any
/// read. Without it a capped first round paid the cap
/// twice for the same bytes, once to hash them and once to send them (a
/// 900 MB database at `--first-round-read-limit 20M`: 86 s instead of 43;
/// BENCHMARKS.md, stop 33); the cap is there for the disk, and a page-cache
/// hit costs the disk nothing. On a volume larger than memory the scan's
/// pages are gone by the time they are asked for, and are charged again.
pub(crate) fn reread_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    if !capped() {
        return read_full_at(f, buf, offset);
    }
    let cached = read_cached_at(f, buf, offset);
    if cached == buf.len() {
        return Ok(cached);
    }
    Ok(cached + read_full_at(f, &mut buf[cached..], offset + cached as u64)?)
}

/// Bytes of neighbouring ranges read at once where a file's small chunks
/// are read one after another (the local fetch, the verify): a read per
/// 4 KiB chunk costs more than its hash.
pub(crate) const JOINED_READ: u64 = 256 * 1024;

/// `items` cut into runs (`[a, b)` index ranges) of neighbours, each starting
/// where the one before it ended (`range`: an item's offset and length), of
/// at most [`JOINED_READ`] bytes; an item longer than that is a run alone.
pub(crate) fn neighbour_runs<'a, T>(
    items: &'a [T],
    range: impl Fn(&T) -> (u64, u32) + 'a,
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut a = 0;
    std::iter::from_fn(move || {
        let (start, len) = range(items.get(a)?);
        let mut end = start + u64::from(len);
        let mut b = a + 1;
        while let Some((o, l)) = items.get(b).map(&range) {
            if o != end || o + u64::from(l) - start > JOINED_READ {
                break;
            }
            end += u64::from(l);
            b += 1;
        }
        let run = a..b;
        a = b;
        Some(run)
    })
}

/// Whether a cap is installed (reads are paced: nothing should read ahead
/// of them).
pub(crate) fn capped() -> bool {
    READ_CAP
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// Fills `buf` from `offset` with what the page cache holds (`RWF_NOWAIT`:
/// the kernel answers `EAGAIN` instead of going to the disk), stopping at
/// the first byte it does not hold, at end of file, or on any error (the
/// caller reads the rest the usual way: a kernel or filesystem without
/// `RWF_NOWAIT` only loses the discount).
fn read_cached_at(f: &File, buf: &mut [u8], offset: u64) -> usize {
    use rustix::io::{Errno, ReadWriteFlags};
    let mut got = 0usize;
    while got < buf.len() {
        let mut iov = [io::IoSliceMut::new(&mut buf[got..])];
        match rustix::io::preadv2(f, &mut iov, offset + got as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn reads_under_a_cap_take_their_time_and_none_after_it_is_lifted() {
        let _one = CAP_TESTS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![1u8; 4 << 20]).unwrap();
        let clock = Arc::new(ManualClock::default());
        clock.advance(Duration::from_secs(10));
        // 1 MiB/s, 256 KiB of burst: 4 MiB cost at least 3.75 s.
        let lim = Arc::new(RateLimiter::with_clock(1 << 20, 256 << 10, clock.clone()));
        let t0 = clock.elapsed();
        let paced0 = paced();
        let mut buf = vec![0u8; 4 << 20];
        {
            let _cap = ReadCap::install(lim);
            assert_eq!(read_full_at_in(&f, &mut buf, 0, 64 << 10).unwrap(), 4 << 20);
        }
        let capped = clock.elapsed() - t0;
        assert!(capped >= Duration::from_millis(3750), "{capped:?}");
        // The waits are counted (a running total other tests may add to).
        assert!(paced() - paced0 >= Duration::from_millis(3750));
        let t1 = clock.elapsed();
        assert_eq!(read_full_at(&f, &mut buf, 0).unwrap(), 4 << 20);
        assert_eq!(clock.elapsed(), t1, "a lifted cap still charged");
    }

    #[test]
    fn a_reread_takes_from_the_page_cache_only_what_it_holds() {
        use std::os::fd::AsFd;
        // On the source tree's filesystem, not a tmpfs /tmp, whose pages
        // cannot be dropped (an unnamed O_TMPFILE: nothing is left behind).
        let mut f = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let data: Vec<u8> = (0..4u32 << 20).map(|i| i.to_le_bytes()[1]).collect();
        f.write_all(&data).unwrap();
        let mut buf = vec![0u8; 4 << 20];

        // Just written: all in the page cache, so all free under a cap.
        assert_eq!(read_cached_at(&f, &mut buf, 0), 4 << 20);
        assert_eq!(buf, data);

        // Written back, then dropped: the cache holds none of it (the
        // kernel may read a little ahead by itself, never all).
        f.sync_all().unwrap();
        rustix::fs::fadvise(f.as_fd(), 0, None, rustix::fs::Advice::DontNeed).unwrap();
        buf.fill(0);
        assert!(read_cached_at(&f, &mut buf, 0) < 1 << 20);
        // The re-read gets it all the same (the rest read, and charged).
        buf.fill(0);
        assert_eq!(reread_full_at(&f, &mut buf, 0).unwrap(), 4 << 20);
        assert_eq!(buf, data);

        // Past the end: what there is.
        let mut tail = vec![0u8; 8192];
        assert_eq!(reread_full_at(&f, &mut tail, (4 << 20) - 100).unwrap(), 100);
        assert_eq!(&tail[..100], &data[data.len() - 100..]);
        assert_eq!(read_cached_at(&f, &mut tail, 4 << 20), 0);
    }

    #[test]
    fn fills_in_pieces_and_stops_at_eof() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        f.write_all(&data).unwrap();
        let cases: [(u64, usize, usize, usize); 5] = [
            // (offset, buffer, piece, expected bytes)
            (0, 10_000, usize::MAX, 10_000),
            (0, 10_000, 7, 10_000),
            (9_000, 4_096, 1_000, 1_000),
            (10_000, 16, 4, 0),
            (123, 0, 1, 0),
        ];
        for (offset, len, piece, want) in cases {
            let mut buf = vec![0u8; len];
            let got = read_full_at_in(&f, &mut buf, offset, piece).unwrap();
            assert_eq!(got, want, "offset {offset} len {len} piece {piece}");
            let start = usize::try_from(offset).unwrap();
            assert_eq!(&buf[..got], &data[start..start + got]);
        }
    }
}
