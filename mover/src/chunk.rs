//! Content-defined chunking: chunk ids, the chunker classes (sizes per kind of
//! file) and the buffer-reusing chunk loops.
//!
//! Cut points come from fastcdc 5.0.0 `v2020` (normalisation level 1); ids are
//! blake3 hashes. Long inputs are cut as two halves at once (`lockstep`),
//! with exactly the serial cut points. Everything here is pure: it works over
//! slices or any `Read`. The golden vectors in the tests pin the cut points: a
//! fastcdc upgrade that moves them fails a test instead of silently breaking
//! dedup across rounds.

use std::fmt;
use std::io;

use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Serialize};

mod lockstep;
pub(crate) mod many;

/// The chunker recorded in every manifest header.
pub const CHUNKER_NAME: &str = "fastcdc-v2020";
/// The fastcdc version whose cut points the golden vectors pin.
pub const CHUNKER_VERSION: &str = "5.0.0";

/// A chunk's name: the blake3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` into its id.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The first 8 bytes as an integer: the key of compact in-memory indexes
    /// (a prefix collision only costs a failed verification, never wrong data,
    /// because every read of a chunk is verified against the full id).
    pub fn prefix(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// Lower-case hex, for logs and file names.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Sizes that fastcdc would accept only in a debug build, or not at all.
    #[error("invalid chunker sizes min={min} avg={avg} max={max}: {why}")]
    BadSizes {
        min: u32,
        avg: u32,
        max: u32,
        why: &'static str,
    },
    /// Reading the data being chunked failed.
    #[error("reading data to chunk: {0}")]
    Read(#[from] io::Error),
}

/// Which chunk sizes a file gets. Recorded per entry in the manifest (as its
/// `u8` code) so a receiver can check chunk lengths against the class maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChunkClass {
    /// Files no larger than `SMALL_MAX` (64 KiB): the whole file is one chunk, so the
    /// many-small-files case pays no CDC cost and one id names the file.
    Small,
    /// Random-rewrite files (databases, block images): small chunks so that a
    /// rewritten 4 KiB page re-sends little (measured: 7.5% of a file is
    /// re-sent after 1% random page rewrites at 4K/16K/64K, 22% at
    /// 16K/64K/256K; DESIGN.md, "Facts the code relies on").
    Db,
    /// Everything else: larger chunks, fewer manifest records and index entries.
    Default,
    /// Random-rewrite files of at most 256 MiB (`DB_SMALL_MAX`; not block images):
    /// 4 KiB average chunks. A page rewritten in a `Db` chunk costs the
    /// whole chunk, ~27 KiB on average (a random page lands in a long chunk
    /// more often than in a short one); rsync's block is the square root of
    /// the file's size, 11 KiB at 128 MiB, and re-sends less than `Db` there
    /// (4.9 MiB against 8.5 MiB for 1% of a 128 MiB file's pages; 3.1 MiB at
    /// these sizes). At 1 GiB rsync's 32 KiB blocks send more than `Db`, and
    /// twice `Db`'s records would buy little, so larger files stay `Db`.
    DbSmall,
}

/// Random-rewrite files up to this size get [`ChunkClass::DbSmall`], larger
/// ones [`ChunkClass::Db`] (where rsync's block, the square root of the
/// size, reaches `Db`'s 16 KiB average).
pub const DB_SMALL_MAX: u64 = 256 << 20;

/// Files up to this size are a single chunk (the `db` class maximum: a
/// small file's entry is `Small`, whose max this is).
pub const SMALL_MAX: u64 = 64 * 1024;

impl ChunkClass {
    /// All classes, in code order (the manifest header lists their sizes).
    /// `DbSmall` came last: a manifest of an older build lists the first three,
    /// which cut as they did (see `manifest::Header::same_chunking`).
    pub const ALL: [ChunkClass; 4] = [
        ChunkClass::Small,
        ChunkClass::Db,
        ChunkClass::Default,
        ChunkClass::DbSmall,
    ];

    /// The class's code in the manifest.
    pub fn code(self) -> u8 {
        match self {
            ChunkClass::Small => 0,
            ChunkClass::Db => 1,
            ChunkClass::Default => 2,
            ChunkClass::DbSmall => 3,
        }
    }

    /// The class for a manifest code.
    pub fn from_code(code: u8) -> Option<ChunkClass> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The class's name in the manifest header.
    pub fn name(self) -> &'static str {
        match self {
            ChunkClass::Small => "small",
            ChunkClass::Db => "db",
            ChunkClass::Default => "default",
            ChunkClass::DbSmall => "db-small",
        }
    }

    /// (min, avg, max) chunk sizes. `Small` uses CDC only if someone feeds it a
    /// longer input; its max bounds every chunk of a small file.
    #[allow(clippy::cast_possible_truncation, reason = "SMALL_MAX is 64 KiB")]
    pub fn sizes(self) -> (u32, u32, u32) {
        match self {
            // max == SMALL_MAX: the whole small file is one chunk.
            ChunkClass::Small => (4 * 1024, 16 * 1024, SMALL_MAX as u32),
            ChunkClass::Db => (4 * 1024, 16 * 1024, 64 * 1024),
            ChunkClass::Default => (64 * 1024, 256 * 1024, 1024 * 1024),
            ChunkClass::DbSmall => (2 * 1024, 4 * 1024, 16 * 1024),
        }
    }

    /// The largest chunk this class produces.
    pub fn max_len(self) -> u32 {
        self.sizes().2
    }

    /// The chunker for this class.
    pub fn chunker(self) -> Chunker {
        let (min, avg, max) = self.sizes();
        Chunker::new(min, avg, max).expect("class sizes are valid constants")
    }

    /// Picks the class for a file from its path (raw bytes) and size.
    pub fn for_path(path: &[u8], size: u64) -> ChunkClass {
        if size <= SMALL_MAX {
            return ChunkClass::Small;
        }
        if is_db_path(path) {
            ChunkClass::for_pages(size)
        } else {
            ChunkClass::Default
        }
    }

    /// The class for a file of `size` bytes rewritten in place in pages.
    pub fn for_pages(size: u64) -> ChunkClass {
        if size <= SMALL_MAX {
            ChunkClass::Small
        } else if size <= DB_SMALL_MAX {
            ChunkClass::DbSmall
        } else {
            ChunkClass::Db
        }
    }
}

/// Database-like files: rewritten in place in small pages.
fn is_db_path(path: &[u8]) -> bool {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    const SUFFIXES: [&[u8]; 7] = [b".db", b".wt", b".ibd", b".mdb", b".ldb", b".img", b".raw"];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    if name.starts_with(b"ibdata") || contains(name, b".sqlite") {
        return true;
    }
    // PostgreSQL relation files live under `base/<dboid>/<relfilenode>`.
    let mut comps = path.split(|&b| b == b'/');
    comps.any(|c| c == b"base") && !path.ends_with(b"/base")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A configured fastcdc v2020 cutter (masks precomputed once).
#[derive(Clone, Copy, Debug)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// Validates the sizes (fastcdc checks them only with debug asserts).
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Chunker, ChunkError> {
        let bad = |why| ChunkError::BadSizes { min, avg, max, why };
        if !min.is_multiple_of(2) || !avg.is_multiple_of(2) || !max.is_multiple_of(2) {
            return Err(bad("sizes must be even"));
        }
        if !(min <= avg && avg <= max) {
            return Err(bad("need min <= avg <= max"));
        }
        let (min_u, avg_u, max_u) = (min as usize, avg as usize, max as usize);
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min_u)
            || !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg_u)
            || !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max_u)
        {
            return Err(bad("outside fastcdc's limits"));
        }
        let (mask_s, mask_l) = v2020::select_masks(avg_u, Normalization::Level1);
        Ok(Chunker {
            min: min_u,
            avg: avg_u,
            max: max_u,
            mask_s,
            mask_l,
        })
    }

    /// The maximum chunk length.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Length of the chunk starting at `data[0]`. When `data` is shorter than
    /// `max` and holds no cut point, this is `data.len()`: definitive only if
    /// `data` ends where the input ends.
    pub fn cut(&self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let (_, n) = v2020::cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        n.max(1).min(data.len())
    }

    /// Cut points of `data` starting at `data[0]`, as (offset, len). When
    /// `at_end` is false, a last chunk that runs into the end of `data` is
    /// left out: more input could move its cut.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "offsets from 0 into `data`, which is in memory"
    )]
    pub fn cuts(&self, data: &[u8], at_end: bool) -> Vec<(usize, usize)> {
        self.chunks(data, 0, at_end, &|o, d: &[u8]| (o as usize, d.len()))
    }

    /// The chunks of `data` (whose first byte sits at offset `base`), cut as
    /// [`Chunker::cuts`] cuts them; `make` turns each chunk's offset and bytes
    /// into its record right after it is cut, while its bytes are still in
    /// the CPU cache (hashing them there is cheaper than after the whole
    /// input is cut).
    ///
    /// Long inputs are cut as two halves in lockstep ([`lockstep`]), spliced
    /// back into the serial sequence by a [`SegmentJoin`]: the same chunks,
    /// in less CPU time.
    fn chunks<C: Span>(
        &self,
        data: &[u8],
        base: u64,
        at_end: bool,
        make: &impl Fn(u64, &[u8]) -> C,
    ) -> Vec<C> {
        if data.len() < LOCKSTEP_MIN_MAXES * self.max {
            let mut out = Vec::with_capacity(data.len() / self.avg + 1);
            let mut p = base;
            while let Ok(c) = self.chunk_at(data, base, at_end, p, make) {
                p = c.end();
                out.push(c);
            }
            return out;
        }
        let mid = data.len() / 2;
        let first = lockstep::Region {
            data: &data[..mid],
            base,
            at_end: false,
        };
        let second = lockstep::Region {
            data: &data[mid..],
            base: base + mid as u64,
            at_end,
        };
        let lists = lockstep::chunks2(self, first, second, make);
        self.splice(data, base, at_end, lists, make)
    }

    /// The chunk of `data` (based at `base`) starting at offset `p`, or
    /// `Stop` where the serial loop ends: at the end of `data`, or at a last
    /// chunk that is not definitive (`at_end` false, see [`Chunker::cuts`]).
    fn chunk_at<C>(
        &self,
        data: &[u8],
        base: u64,
        at_end: bool,
        p: u64,
        make: &impl Fn(u64, &[u8]) -> C,
    ) -> Result<C, Stop> {
        let i = usize::try_from(p - base).unwrap_or(usize::MAX);
        if i >= data.len() {
            return Err(Stop);
        }
        let n = self.cut(&data[i..]);
        if !at_end && i + n == data.len() && n < self.max {
            return Err(Stop);
        }
        Ok(make(p, &data[i..i + n]))
    }

    /// Joins the chunk lists of consecutive regions of `data` (the first
    /// starting at `data[0]`, each ending where the next starts, each cut as
    /// [`Chunker::cuts`] cuts a region alone) into the chunks of the whole of
    /// `data`.
    fn splice<C: Span>(
        &self,
        data: &[u8],
        base: u64,
        at_end: bool,
        lists: [Vec<C>; 2],
        make: &impl Fn(u64, &[u8]) -> C,
    ) -> Vec<C> {
        let mut out = Vec::with_capacity(data.len() / self.avg + 1);
        let mut serial = |p: u64| self.chunk_at(data, base, at_end, p, make);
        let mut emit = |c: C| -> Result<(), Stop> {
            out.push(c);
            Ok(())
        };
        let mut join = SegmentJoin::new(base);
        // `Stop` ends the sequence exactly where the serial loop ends:
        // nothing to report.
        let _ = lists
            .into_iter()
            .try_for_each(|list| join.push(list, &mut serial, &mut emit))
            .and_then(|()| join.finish(base + data.len() as u64, &mut serial, &mut emit));
        out
    }
}

/// The serial chunk sequence of an input has ended (see `Chunker::chunk_at`).
struct Stop;

/// Inputs shorter than this many maximum chunks are cut serially: splitting
/// costs the one or two chunks after the split point twice (until the first
/// half's sequence meets the second's), which only pays on long inputs. The
/// scanner's segments (16 MiB plus a lookahead of 4 maxima) reach it for every
/// class.
const LOCKSTEP_MIN_MAXES: usize = 16;

/// One chunk of a data extent: where it starts (absolute file offset), its
/// length and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Absolute offset in the file or image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// blake3 of the bytes.
    pub id: ChunkId,
}

impl ChunkRef {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Chunks `len` bytes of `r` (which sits at absolute offset `base`) and calls
/// `emit` for every chunk in order. `buf` is reused across calls (it grows to
/// `2 * max` once): no allocation per chunk. Returns the bytes read, which is
/// less than `len` when the input ended early (the caller decides whether a
/// shrinking file is an error). Tests and the testing feature only.
#[cfg(any(test, feature = "testing"))]
pub fn chunk_reader<R: io::Read, E: From<ChunkError>>(
    mut r: R,
    chunker: &Chunker,
    base: u64,
    len: u64,
    buf: &mut Vec<u8>,
    mut emit: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    // A window of two maxima keeps refills rare while bounding memory.
    let window = (2 * chunker.max()).max(1 << 20);
    if buf.len() < window {
        buf.resize(window, 0);
    }
    let mut filled = 0usize; // valid bytes in buf
    let mut start = 0usize; // first unconsumed byte
    let mut read_total = 0u64;
    let mut offset = base;
    let mut eof = false;
    loop {
        if !eof && filled - start < chunker.max() {
            buf.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
            while filled < buf.len() && read_total < len {
                let want = (buf.len() - filled)
                    .min(usize::try_from(len - read_total).unwrap_or(usize::MAX));
                let n = match r.read(&mut buf[filled..filled + want]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ChunkError::Read(e).into()),
                };
                if n == 0 {
                    break;
                }
                filled += n;
                read_total += n as u64;
            }
            eof = read_total >= len || filled < buf.len();
        }
        if start == filled {
            return Ok(read_total);
        }
        let n = chunker.cut(&buf[start..filled]);
        emit(offset, &buf[start..start + n])?;
        offset += n as u64;
        start += n;
    }
}

/// Splices per-segment cut lists back into the serial cut sequence, so that
/// segments of one extent can be chunked on several threads and still give
/// exactly the cuts a single thread would (cut points depend only on the bytes
/// from the previous cut on: once two sequences share a cut they agree after it).
///
/// Feed segment lists in order with [`SegmentJoin::push`]; the first list must
/// start at the extent start. `serial` chunks from a given offset when no list
/// covers it (for the scanner's segments rare: only when two sequences did not
/// meet within the lookahead; for [`Chunker::cuts`]'s halves, which have no
/// lookahead, the one or two chunks until the first half meets the second).
///
/// The lists hold [`ChunkRef`]s (the scanner's segments) or bare
/// (offset, len) cuts ([`Chunker::cuts`] splicing its lockstep halves).
#[derive(Debug)]
pub struct SegmentJoin<C = ChunkRef> {
    next: u64,
    carry: std::collections::VecDeque<C>,
}

/// A chunk as [`SegmentJoin`] sees it: where it starts and ends.
pub trait Span: Copy {
    /// Offset of the first byte.
    fn start(&self) -> u64;
    /// One past the last byte.
    fn end(&self) -> u64;
}

impl Span for ChunkRef {
    fn start(&self) -> u64 {
        self.offset
    }
    fn end(&self) -> u64 {
        ChunkRef::end(self)
    }
}

/// An (offset, len) cut as [`Chunker::cuts`] lists it.
impl Span for (usize, usize) {
    fn start(&self) -> u64 {
        self.0 as u64
    }
    fn end(&self) -> u64 {
        (self.0 + self.1) as u64
    }
}

impl<C: Span> SegmentJoin<C> {
    /// A join for an extent starting at `start`.
    pub fn new(start: u64) -> SegmentJoin<C> {
        SegmentJoin {
            next: start,
            carry: Default::default(),
        }
    }

    /// Offset where the next chunk of the serial sequence starts.
    #[cfg(any(test, feature = "testing"))]
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Adds the next segment's list (chunks from its own start on). Emits
    /// every chunk of the serial sequence that lies before the point where it
    /// meets `list`.
    pub fn push<E>(
        &mut self,
        list: Vec<C>,
        serial: &mut dyn FnMut(u64) -> Result<C, E>,
        emit: &mut dyn FnMut(C) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(first) = list.first() else {
            return Ok(());
        };
        let seg_start = first.start();
        let last_start = list.last().map_or(seg_start, |c| c.start());
        loop {
            if self.next >= seg_start {
                if let Ok(i) = list.binary_search_by_key(&self.next, |c| c.start()) {
                    self.carry = list[i..].iter().copied().collect();
                    return Ok(());
                }
                if self.next > last_start {
                    // Passed the whole list without meeting it: keep going on
                    // the serial sequence; later lists may still meet it.
                    return Ok(());
                }
            }
            self.step(serial, emit)?;
        }
    }

    /// Emits the next chunk of the serial sequence: the carried one if it
    /// starts where the sequence is, else one cut serially.
    fn step<E>(
        &mut self,
        serial: &mut dyn FnMut(u64) -> Result<C, E>,
        emit: &mut dyn FnMut(C) -> Result<(), E>,
    ) -> Result<(), E> {
        let c = match self.carry.pop_front() {
            Some(c) if c.start() == self.next => c,
            _ => {
                self.carry.clear();
                serial(self.next)?
            }
        };
        self.next = c.end();
        emit(c)
    }

    /// Emits the rest of the serial sequence up to `end`.
    pub fn finish<E>(
        &mut self,
        end: u64,
        serial: &mut dyn FnMut(u64) -> Result<C, E>,
        emit: &mut dyn FnMut(C) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.next < end {
            self.step(serial, emit)?;
        }
        Ok(())
    }
}

/// Chunks a segment of an in-memory extent: `data` holds the extent bytes
/// from `seg` on (segment plus lookahead), `at_end` says whether it reaches
/// the extent end. Ids are computed here (on the worker thread), each right
/// after its chunk is cut.
///
/// Only the chunks starting before `keep_before` (the segment's end; past
/// the extent's end for its last segment) and the one after them are
/// returned and hashed: the next segment's list almost always has a cut
/// where one of the last two ends ([`SegmentJoin`] meets it there), and
/// when not, the joiner cuts the gap itself. Hashing every chunk of a
/// lookahead of several maxima was a quarter more hashing on a whole-file
/// scan, thrown away at the join. (The straddling chunk alone met the next
/// list at 1 of 30 segment ends of the `default` class in a test, with the
/// one after it at 23: its cut falls where the next list, nearer its own
/// start, still wants a rarer hash.)
#[allow(
    clippy::cast_possible_truncation,
    reason = "a chunk is at most its class's max (1 MiB)"
)]
pub fn chunk_segment(
    chunker: &Chunker,
    data: &[u8],
    seg: u64,
    at_end: bool,
    keep_before: u64,
) -> Vec<ChunkRef> {
    // Cut first, then hash the kept chunks together (`many`: short chunks
    // hashed one at a time leave most SIMD lanes idle).
    let mut chunks = chunker.chunks(data, seg, at_end, &|offset, bytes: &[u8]| ChunkRef {
        offset,
        len: bytes.len() as u32,
        id: ChunkId([0; 32]),
    });
    let kept = chunks.partition_point(|c| c.offset < keep_before) + 1;
    chunks.truncate(kept);
    let at = |c: &ChunkRef| usize::try_from(c.offset - seg).expect("a chunk of `data`");
    let bytes: Vec<&[u8]> = chunks
        .iter()
        .map(|c| &data[at(c)..at(c) + c.len as usize])
        .collect();
    let mut ids = Vec::with_capacity(chunks.len());
    many::ids_of(&bytes, &mut ids);
    for (c, id) in chunks.iter_mut().zip(ids) {
        c.id = id;
    }
    chunks
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (xorshift64*), the golden input.
    pub(crate) fn golden_input(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn serial(chunker: &Chunker, data: &[u8]) -> Vec<(usize, usize)> {
        chunker.cuts(data, true)
    }

    #[test]
    fn golden_vectors_pin_cut_points() {
        let data = golden_input(4 << 20, 0xdaff_e001);
        // (class, first five cut offsets, number of chunks, id of first chunk prefix)
        let cases: [(ChunkClass, [usize; 5], usize, &str); 3] = [
            (
                ChunkClass::Db,
                GOLDEN_DB_CUTS,
                GOLDEN_DB_COUNT,
                GOLDEN_DB_FIRST_ID,
            ),
            (
                ChunkClass::Default,
                GOLDEN_DEFAULT_CUTS,
                GOLDEN_DEFAULT_COUNT,
                GOLDEN_DEFAULT_FIRST_ID,
            ),
            (
                ChunkClass::DbSmall,
                GOLDEN_DB_SMALL_CUTS,
                GOLDEN_DB_SMALL_COUNT,
                GOLDEN_DB_SMALL_FIRST_ID,
            ),
        ];
        for (class, cuts, count, first_id) in cases {
            let got = serial(&class.chunker(), &data);
            let offs: Vec<usize> = got.iter().take(5).map(|c| c.0 + c.1).collect();
            assert_eq!(offs, cuts, "cut points of class {}", class.name());
            assert_eq!(got.len(), count, "chunk count of class {}", class.name());
            let id = ChunkId::of(&data[..got[0].1]).to_hex();
            assert_eq!(&id[..16], first_id, "first id of class {}", class.name());
        }
    }

    const GOLDEN_DB_CUTS: [usize; 5] = [18330, 37481, 54624, 72582, 96774];
    const GOLDEN_DB_COUNT: usize = 221;
    const GOLDEN_DB_FIRST_ID: &str = "6a10686fb76f8ff2";
    const GOLDEN_DEFAULT_CUTS: [usize; 5] = [137908, 305103, 739841, 1268488, 1581988];
    const GOLDEN_DEFAULT_COUNT: usize = 13;
    const GOLDEN_DEFAULT_FIRST_ID: &str = "68e475d288de1846";
    const GOLDEN_DB_SMALL_CUTS: [usize; 5] = [8757, 11853, 17010, 19301, 24509];
    const GOLDEN_DB_SMALL_COUNT: usize = 778;
    const GOLDEN_DB_SMALL_FIRST_ID: &str = "dfd8abec1d160a54";

    #[test]
    fn odd_or_unordered_sizes_are_refused() {
        assert!(Chunker::new(4095, 16384, 65536).is_err());
        assert!(Chunker::new(4096, 2048, 65536).is_err());
        assert!(Chunker::new(4096, 16384, 1 << 30).is_err());
    }

    #[test]
    fn classes_follow_paths_and_sizes() {
        use ChunkClass::{Db, DbSmall, Default, Small};
        // (path, size, class)
        let table: &[(&[u8], u64, ChunkClass)] = &[
            (b"a/b.txt", 10, Small),
            (b"data/x.db", 1 << 30, Db),
            (b"pg/base/16384/2619", 1 << 20, DbSmall),
            (b"pg/base/16384/2619", 1 << 30, Db),
            (b"ibdata1", 1 << 20, DbSmall),
            (b"a.sqlite3", 1 << 20, DbSmall),
            (b"log/app.log", 1 << 20, Default),
        ];
        for &(path, size, class) in table {
            let got = ChunkClass::for_path(path, size);
            assert_eq!(got, class, "{}", String::from_utf8_lossy(path));
        }
        // The line between the two page classes, and the small files.
        assert_eq!(ChunkClass::for_pages(DB_SMALL_MAX), ChunkClass::DbSmall);
        assert_eq!(ChunkClass::for_pages(DB_SMALL_MAX + 1), ChunkClass::Db);
        assert_eq!(ChunkClass::for_pages(SMALL_MAX), ChunkClass::Small);
        assert_eq!(ChunkClass::for_pages(SMALL_MAX + 1), ChunkClass::DbSmall);
        for c in ChunkClass::ALL {
            assert_eq!(ChunkClass::from_code(c.code()), Some(c));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The streaming loop over a `Read` gives the same chunks as one-shot
        /// chunking of the whole buffer, whatever the read sizes.
        #[test]
        fn streaming_equals_one_shot(len in 0usize..600_000, seed in any::<u64>(), step in 1usize..70_000) {
            let data = golden_input(len, seed);
            let chunker = ChunkClass::Db.chunker();
            let want: Vec<(usize, usize)> = serial(&chunker, &data);
            struct Trickle<'a> { d: &'a [u8], step: usize }
            impl io::Read for Trickle<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    let n = self.step.min(b.len()).min(self.d.len());
                    b[..n].copy_from_slice(&self.d[..n]);
                    self.d = &self.d[n..];
                    Ok(n)
                }
            }
            let mut got = Vec::new();
            let mut buf = Vec::new();
            chunk_reader::<_, ChunkError>(Trickle { d: &data, step }, &chunker, 0, len as u64, &mut buf, |o, c| {
                got.push((usize::try_from(o).unwrap(), c.len()));
                Ok(())
            }).unwrap();
            prop_assert_eq!(got, want);
        }

        /// Lockstep halves spliced together give exactly fastcdc's serial
        /// cuts, for any sizes, lengths around the lockstep threshold and end
        /// flag.
        #[test]
        fn cuts_match_fastcdc(sizes in lockstep::tests::sizes(), len_maxes in 0usize..40,
                              extra in 0usize..70_000, seed in any::<u64>(), at_end in any::<bool>()) {
            let (min, avg, max) = sizes;
            let chunker = Chunker::new(u32::try_from(min).unwrap(), u32::try_from(avg).unwrap(), u32::try_from(max).unwrap()).unwrap();
            let data = lockstep::tests::mixed_input(len_maxes * max + extra, seed);
            let want = lockstep::tests::fastcdc_cuts(&data, sizes, at_end);
            prop_assert_eq!(chunker.cuts(&data, at_end), want.clone());
            // The same cuts with ids, at an offset, as the scanner gets them.
            let base = 1 << 40;
            let got: Vec<(usize, usize)> = chunk_segment(&chunker, &data, base, at_end, u64::MAX)
                .into_iter()
                .map(|c| {
                    let (o, n) = (usize::try_from(c.offset - base).unwrap(), c.len as usize);
                    assert_eq!(c.id, ChunkId::of(&data[o..o + n]));
                    (o, n)
                })
                .collect();
            prop_assert_eq!(got, want);
        }

        /// Segment-parallel chunking joined by `SegmentJoin` gives exactly the
        /// serial cut sequence, for any segment size and lookahead.
        #[test]
        fn segment_join_equals_serial(len in 1usize..900_000, seed in any::<u64>(),
                                      seg in 4096usize..200_000, look in 0usize..300_000,
                                      keep_all in any::<bool>()) {
            let data = golden_input(len, seed);
            let chunker = ChunkClass::Db.chunker();
            let want: Vec<ChunkRef> = chunk_segment(&chunker, &data, 0, true, u64::MAX);
            let mut join = SegmentJoin::new(0);
            let mut got = Vec::new();
            let mut serial_fn = |p: u64| -> Result<ChunkRef, ()> {
                let p = usize::try_from(p).unwrap();
                let n = chunker.cut(&data[p..]);
                Ok(ChunkRef { offset: p as u64, len: u32::try_from(n).unwrap(), id: ChunkId::of(&data[p..p + n]) })
            };
            let mut s = 0;
            while s < len {
                let end = (s + seg + look).min(len);
                // As the scanner keeps them: up to the segment's end (all
                // of the last one), or, with `keep_all`, every chunk the
                // lookahead let the worker cut.
                let keep = if end == len || keep_all { u64::MAX } else { (s + seg) as u64 };
                let list = chunk_segment(&chunker, &data[s..end], s as u64, end == len, keep);
                let at = |o: u64| usize::try_from(o).unwrap();
                prop_assert!(list.iter().all(|c| c.id == ChunkId::of(&data[at(c.offset)..at(c.end())])));
                join.push(list, &mut serial_fn, &mut |c| { got.push(c); Ok(()) }).unwrap();
                s += seg;
            }
            join.finish(len as u64, &mut serial_fn, &mut |c| { got.push(c); Ok(()) }).unwrap();
            prop_assert_eq!(got, want);
        }
    }
}
