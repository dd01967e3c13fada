//! fastcdc v2020's cut search run over two independent regions at once.
//!
//! fastcdc's `cut` is bound by the latency of its gear-hash chain
//! (`shl` -> `add` -> `add` per byte pair): the CPU waits on the previous hash
//! while most of its ALUs and load ports idle. Two chains with no data
//! dependency between them, interleaved in one loop, fill some of those idle
//! slots: on a Zen 4 core the search costs about a third less CPU time per
//! byte (0.27 instead of 0.40 s/GiB, db class). Three or four lanes
//! measured no clear further gain: with two chains the loop is bound by its
//! instruction count, not by the chains, which is why [`scan_pairs`] is
//! unrolled and kept out of line (fewer instructions per byte).
//!
//! The loop here is fastcdc 5.0.0's `cut_gear` (same tables, masks, limits and
//! test order), only run for two lanes side by side: each lane's cuts are
//! exactly the ones [`Chunker::cut`] gives for that lane's region (the tests
//! check this against fastcdc's own `cut`). The caller splices the lanes'
//! lists into the serial sequence.

use fastcdc::v2020;

use super::Chunker;

/// fastcdc's gear tables: `gear` for the second byte of a pair, `gear_ls`
/// (each entry shifted left by one) for the first.
#[derive(Clone, Copy)]
struct Tables {
    gear: &'static [u64; 256],
    gear_ls: &'static [u64; 256],
}

impl Tables {
    /// The default (unseeded) tables fastcdc's `cut` uses. fastcdc does not
    /// export them directly; `get_gear_with_seed(0)` borrows them.
    fn get() -> Tables {
        use std::borrow::Cow;
        let (Cow::Borrowed(gear), Cow::Borrowed(gear_ls)) = v2020::get_gear_with_seed(0) else {
            unreachable!("fastcdc borrows its static tables for seed 0")
        };
        Tables {
            gear: gear
                .try_into()
                .expect("fastcdc's gear table has 256 entries"),
            gear_ls: gear_ls
                .try_into()
                .expect("fastcdc's shifted gear table has 256 entries"),
        }
    }
}

/// A region of the input for one lane.
pub(super) struct Region<'a> {
    /// The region's bytes.
    pub data: &'a [u8],
    /// Offset of `data[0]` in the caller's coordinates (passed on to `make`).
    pub base: u64,
    /// Whether `data` ends where the input ends (see [`Chunker::cuts`]).
    pub at_end: bool,
}

/// One lane: a region of the input, the chunks found in it so far and the
/// search state of the chunk being cut.
struct Lane<'a, C, F> {
    region: Region<'a>,
    /// Makes a chunk's record from its offset and bytes.
    make: &'a F,
    /// Chunks found, in order.
    out: Vec<C>,
    /// Start of the chunk being searched (index into the region).
    start: usize,
    /// First byte of the next pair to hash.
    pos: usize,
    /// The gear hash after the bytes before `pos`.
    hash: u64,
    /// End of the strict-mask (`mask_s`) part of the search.
    center: usize,
    /// End of the search: past it the chunk is `len` bytes with no cut.
    end: usize,
    /// The chunk's length when no cut point is found.
    len: usize,
    /// No more definitive chunks in this lane.
    done: bool,
}

impl<'a, C, F: Fn(u64, &[u8]) -> C> Lane<'a, C, F> {
    fn new(c: &Chunker, region: Region<'a>, make: &'a F) -> Lane<'a, C, F> {
        let mut lane = Lane {
            out: Vec::with_capacity(region.data.len() / c.avg + 1),
            region,
            make,
            start: 0,
            pos: 0,
            hash: 0,
            center: 0,
            end: 0,
            len: 0,
            done: false,
        };
        lane.begin(c);
        lane
    }

    fn data(&self) -> &'a [u8] {
        self.region.data
    }

    /// Sets up the search for the chunk at `start`, the way fastcdc's
    /// `cut_gear` does: chunks no longer than `min` are cut without a
    /// search; the search runs over byte pairs from `min` on, with `mask_s`
    /// before `min(avg, len)` and `mask_l` after, and an odd last byte is never
    /// a candidate.
    fn begin(&mut self, c: &Chunker) {
        loop {
            let left = self.data().len() - self.start;
            if left == 0 {
                self.done = true;
                return;
            }
            let len = left.min(c.max);
            if len <= c.min {
                if !self.emit(c, len) {
                    return;
                }
                continue;
            }
            let center = len.min(c.avg);
            self.len = len;
            self.pos = self.start + c.min;
            self.hash = 0;
            self.center = self.start + center / 2 * 2;
            self.end = self.start + len / 2 * 2;
            return;
        }
    }

    /// Records the chunk of `n` bytes at `start` (unless it runs into the end
    /// of a region that is not the input's end: more input could move its
    /// cut). Returns whether the lane goes on.
    fn emit(&mut self, c: &Chunker, n: usize) -> bool {
        let data = self.data();
        if !self.region.at_end && self.start + n == data.len() && n < c.max {
            self.done = true;
            return false;
        }
        let offset = self.region.base + self.start as u64;
        self.out
            .push((self.make)(offset, &data[self.start..self.start + n]));
        self.start += n;
        true
    }

    /// A cut point was found at byte `at`: the chunk ends before it.
    fn found(&mut self, c: &Chunker, at: usize) {
        if self.emit(c, at - self.start) {
            self.begin(c);
        }
    }

    /// Moves past a search that reached its end without a cut point: the
    /// chunk is `len` bytes. Loops because the next chunk may be short too.
    fn settle(&mut self, c: &Chunker) {
        while !self.done && self.pos >= self.end {
            if self.emit(c, self.len) {
                self.begin(c);
            }
        }
    }

    /// The masks in force at `pos`, and for how many pairs they stay in
    /// force. fastcdc tests a pair's first byte on a hash shifted one bit
    /// further, hence that byte's mask shifted likewise.
    fn phase(&self, c: &Chunker) -> (Masks, usize) {
        let (mask, until) = if self.pos < self.center {
            (c.mask_s, self.center)
        } else {
            (c.mask_l, self.end)
        };
        let m = Masks {
            first: mask << 1,
            second: mask,
        };
        (m, (until - self.pos) / 2)
    }

    /// Cuts the rest of the lane one chunk at a time (after the other lane
    /// finished: nothing left to interleave with).
    fn finish_serial(&mut self, c: &Chunker) {
        while !self.done {
            let n = c.cut(&self.data()[self.start..]);
            if self.emit(c, n) && self.start == self.data().len() {
                self.done = true;
            }
        }
    }
}

/// Which lane found a cut point, and where (index into its region).
enum Hit {
    A(usize),
    B(usize),
}

/// The (first byte, second byte) masks of a pair, for one lane.
#[derive(Clone, Copy, Debug)]
struct Masks {
    first: u64,
    second: u64,
}

/// Hashes one byte pair into `h` the way fastcdc's `cut_gear` does. `Err`
/// holds the pair's byte (0 or 1) that is a cut point.
#[inline(always)]
fn pair(h: u64, [b0, b1]: [u8; 2], m: Masks, t: Tables) -> Result<u64, usize> {
    let h = (h << 2).wrapping_add(t.gear_ls[usize::from(b0)]);
    if h & m.first == 0 {
        return Err(0);
    }
    let h = h.wrapping_add(t.gear[usize::from(b1)]);
    if h & m.second == 0 {
        return Err(1);
    }
    Ok(h)
}

/// Where [`scan_pairs`] stopped.
enum Scanned {
    /// Both lanes hashed all their pairs, ending at these hashes.
    All { ha: u64, hb: u64 },
    /// Lane A has a cut point `at` bytes in; lane B hashed `done` bytes,
    /// ending at `hb`.
    A { at: usize, done: usize, hb: u64 },
    /// Lane B has a cut point `at` bytes in; lane A hashed `done` bytes,
    /// ending at `ha`.
    B { at: usize, done: usize, ha: u64 },
}

impl Scanned {
    fn a(at: usize, done: usize, hb: u64) -> Scanned {
        Scanned::A { at, done, hb }
    }
    fn b(at: usize, done: usize, ha: u64) -> Scanned {
        Scanned::B { at, done, ha }
    }
}

/// The gear search of two lanes side by side over the bytes `wa` and `wb`
/// (equal, even lengths), from hashes `ha` and `hb`, up to the first cut point
/// in either lane.
///
/// Two pairs per lane per iteration halve the loop overhead, a good part of
/// the work once two hash chains run side by side. Kept out of line with
/// plain arguments so that the loop's live values (cursors, two hashes, two
/// tables, four masks) all get registers: inlined into its caller, the
/// compiler spilled some to the stack and reloaded them on every pair.
#[inline(never)]
fn scan_pairs(
    wa: &[u8],
    wb: &[u8],
    (mut ha, mut hb): (u64, u64),
    m: [Masks; 2],
    t: Tables,
) -> Scanned {
    let (qa, ra) = wa.as_chunks::<4>();
    let (qb, _) = wb.as_chunks::<4>();
    // Equal lengths let the compiler drop the bounds checks on `qb[k]`.
    let qb = &qb[..qa.len()];
    for k in 0..qa.len() {
        let [a0, a1, a2, a3] = qa[k];
        let [b0, b1, b2, b3] = qb[k];
        let at = 4 * k;
        ha = match pair(ha, [a0, a1], m[0], t) {
            Ok(h) => h,
            Err(off) => return Scanned::a(at + off, at, hb),
        };
        ha = match pair(ha, [a2, a3], m[0], t) {
            Ok(h) => h,
            Err(off) => return Scanned::a(at + 2 + off, at, hb),
        };
        hb = match pair(hb, [b0, b1], m[1], t) {
            Ok(h) => h,
            Err(off) => return Scanned::b(at + off, at + 4, ha),
        };
        hb = match pair(hb, [b2, b3], m[1], t) {
            Ok(h) => h,
            Err(off) => return Scanned::b(at + 2 + off, at + 4, ha),
        };
    }
    // An odd number of pairs leaves one.
    if let ([a0, a1], [b0, b1, ..]) = (ra, &wb[wa.len() - ra.len()..]) {
        let at = wa.len() - 2;
        ha = match pair(ha, [*a0, *a1], m[0], t) {
            Ok(h) => h,
            Err(off) => return Scanned::a(at + off, at, hb),
        };
        hb = match pair(hb, [*b0, *b1], m[1], t) {
            Ok(h) => h,
            Err(off) => return Scanned::b(at + off, at + 2, ha),
        };
    }
    Scanned::All { ha, hb }
}

/// Runs the gear search of both lanes for `pairs` byte pairs each (both
/// lanes have at least that many left in their current mask phase), up to
/// the first cut point in either lane; the other lane's state stays exact, so
/// it resumes where it stopped.
fn step<C, F>(
    a: &mut Lane<C, F>,
    b: &mut Lane<C, F>,
    pairs: usize,
    m: [Masks; 2],
    t: Tables,
) -> Option<Hit> {
    let wa = &a.region.data[a.pos..a.pos + 2 * pairs];
    let wb = &b.region.data[b.pos..b.pos + 2 * pairs];
    match scan_pairs(wa, wb, (a.hash, b.hash), m, t) {
        Scanned::All { ha, hb } => {
            (a.pos, a.hash) = (a.pos + 2 * pairs, ha);
            (b.pos, b.hash) = (b.pos + 2 * pairs, hb);
            None
        }
        Scanned::A { at, done, hb } => {
            (b.pos, b.hash) = (b.pos + done, hb);
            Some(Hit::A(a.pos + at))
        }
        Scanned::B { at, done, ha } => {
            (a.pos, a.hash) = (a.pos + done, ha);
            Some(Hit::B(b.pos + at))
        }
    }
}

/// Chunks two regions in lockstep. Returns each region's chunks (made by
/// `make` from their offset and bytes, right after they are cut), as
/// [`Chunker::cuts`] would cut each region alone.
pub(super) fn chunks2<C, F: Fn(u64, &[u8]) -> C>(
    c: &Chunker,
    a: Region<'_>,
    b: Region<'_>,
    make: &F,
) -> [Vec<C>; 2] {
    let t = Tables::get();
    let mut la = Lane::new(c, a, make);
    let mut lb = Lane::new(c, b, make);
    loop {
        la.settle(c);
        lb.settle(c);
        if la.done || lb.done {
            break;
        }
        let (ma, na) = la.phase(c);
        let (mb, nb) = lb.phase(c);
        match step(&mut la, &mut lb, na.min(nb), [ma, mb], t) {
            Some(Hit::A(at)) => la.found(c, at),
            Some(Hit::B(at)) => lb.found(c, at),
            None => {}
        }
    }
    la.finish_serial(c);
    lb.finish_serial(c);
    [la.out, lb.out]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use fastcdc::v2020::Normalization;
    use proptest::prelude::*;

    /// The cuts of `data` straight from fastcdc's own `cut`: the reference
    /// every faster path must match exactly.
    pub(in crate::chunk) fn fastcdc_cuts(
        data: &[u8],
        (min, avg, max): (usize, usize, usize),
        at_end: bool,
    ) -> Vec<(usize, usize)> {
        let (ms, ml) = v2020::select_masks(avg, Normalization::Level1);
        let mut out = Vec::new();
        let mut p = 0;
        while p < data.len() {
            let (_, n) = v2020::cut(&data[p..], min, avg, max, ms, ml, ms << 1, ml << 1);
            if !at_end && p + n == data.len() && n < max {
                break;
            }
            out.push((p, n));
            p += n;
        }
        out
    }

    /// Random valid (even) sizes, small enough that short inputs hold many
    /// chunks, every mask phase and max-length cuts.
    pub(in crate::chunk) fn sizes() -> impl Strategy<Value = (usize, usize, usize)> {
        (32usize..2048, 0usize..4096, 0usize..16384).prop_map(|(a, b, c)| {
            let min = 2 * a;
            let avg = min.max(v2020::AVERAGE_MIN) + 2 * b;
            let max = avg.max(v2020::MAXIMUM_MIN) + 2 * c;
            (min, avg, max)
        })
    }

    /// Pseudo-random bytes with runs of zeros (which never cut: the chunk
    /// runs to its maximum) and of a short repeated pattern.
    pub(in crate::chunk) fn mixed_input(len: usize, seed: u64) -> Vec<u8> {
        let mut data = crate::chunk::tests::golden_input(len, seed);
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..len / 50_000 {
            let at = usize::try_from(next() % len as u64).unwrap();
            let run = usize::try_from(next() % 80_000).unwrap().min(len - at);
            let fill = next();
            for (i, b) in data[at..at + run].iter_mut().enumerate() {
                *b = if fill % 2 == 0 {
                    0
                } else {
                    u8::try_from(i % 7).unwrap()
                };
            }
        }
        data
    }

    /// Both regions' cuts as (offset in the region, len).
    fn cuts2(
        c: &Chunker,
        (a, at_end_a): (&[u8], bool),
        (b, at_end_b): (&[u8], bool),
    ) -> [Vec<(usize, usize)>; 2] {
        let region = |data, at_end| Region {
            data,
            base: 0,
            at_end,
        };
        chunks2(
            c,
            region(a, at_end_a),
            region(b, at_end_b),
            &|o, d: &[u8]| (usize::try_from(o).unwrap(), d.len()),
        )
    }

    /// One lane searched alone, pair by pair: its first cut point, if any,
    /// and its hash after each whole pair before it.
    fn lane_alone(w: &[u8], mut h: u64, m: Masks) -> (Option<usize>, Vec<u64>) {
        let t = Tables::get();
        let mut hashes = vec![h];
        for (k, p) in w.as_chunks::<2>().0.iter().enumerate() {
            match pair(h, *p, m, t) {
                Ok(next) => h = next,
                Err(off) => return (Some(2 * k + off), hashes),
            }
            hashes.push(h);
        }
        (None, hashes)
    }

    /// Checks one lane's side of a [`scan_pairs`] result: a cut point where
    /// the lane alone has its first, or `done` bytes hashed (no cut point in
    /// them) ending at `h`.
    fn check_lane(alone: &(Option<usize>, Vec<u64>), hit: Option<usize>, done: usize, h: u64) {
        let (first, hashes) = alone;
        match hit {
            Some(at) => assert_eq!(Some(at), *first, "cut point"),
            None => {
                assert!(
                    done.is_multiple_of(2) && done / 2 < hashes.len(),
                    "{done} bytes hashed past a cut point"
                );
                assert_eq!(h, hashes[done / 2], "hash after {done} bytes");
            }
        }
    }

    /// Masks of one to three random bits: cut points every few bytes, so
    /// every position in the unrolled loop gets hit.
    fn loose_masks() -> impl Strategy<Value = Masks> {
        let bits = || {
            prop::collection::vec(0u32..64, 1..4)
                .prop_map(|b| b.iter().fold(0u64, |m, i| m | 1 << i))
        };
        (bits(), bits()).prop_map(|(first, second)| Masks { first, second })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The unrolled search stops at a cut point of one lane, with the
        /// other lane's state exact and at most one iteration behind, for odd
        /// and even pair counts.
        #[test]
        fn scan_pairs_stops_with_exact_lanes(pairs in 0usize..24, seed in any::<u64>(), ha in any::<u64>(),
                                             hb in any::<u64>(), ma in loose_masks(), mb in loose_masks()) {
            let data = crate::chunk::tests::golden_input(4 * pairs, seed);
            let (wa, wb) = data.split_at(2 * pairs);
            let (alone_a, alone_b) = (lane_alone(wa, ha, ma), lane_alone(wb, hb, mb));
            match scan_pairs(wa, wb, (ha, hb), [ma, mb], Tables::get()) {
                Scanned::All { ha, hb } => {
                    check_lane(&alone_a, None, 2 * pairs, ha);
                    check_lane(&alone_b, None, 2 * pairs, hb);
                }
                Scanned::A { at, done, hb } => {
                    check_lane(&alone_a, Some(at), 0, 0);
                    check_lane(&alone_b, None, done, hb);
                    prop_assert!(at.abs_diff(done) <= 4);
                }
                Scanned::B { at, done, ha } => {
                    check_lane(&alone_b, Some(at), 0, 0);
                    check_lane(&alone_a, None, done, ha);
                    prop_assert!(at.abs_diff(done) <= 4);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Each lane's cuts are exactly fastcdc's for that lane's region,
        /// whatever the sizes, region lengths (odd ones too) and end flags.
        #[test]
        fn lanes_match_fastcdc(sizes in sizes(), len_a in 0usize..300_000, len_b in 0usize..300_000,
                               seed in any::<u64>(), at_end_a in any::<bool>(), at_end_b in any::<bool>()) {
            let (min, avg, max) = sizes;
            let c = Chunker::new(u32::try_from(min).unwrap(), u32::try_from(avg).unwrap(), u32::try_from(max).unwrap()).unwrap();
            let a = mixed_input(len_a, seed);
            let b = mixed_input(len_b, seed ^ 0x5555);
            let [got_a, got_b] = cuts2(&c, (&a, at_end_a), (&b, at_end_b));
            prop_assert_eq!(got_a, fastcdc_cuts(&a, sizes, at_end_a));
            prop_assert_eq!(got_b, fastcdc_cuts(&b, sizes, at_end_b));
        }
    }

    /// Inputs of one repeated byte never cut before the maximum, in either
    /// lane; lanes of very different lengths finish one after the other.
    #[test]
    fn uncuttable_and_uneven_lanes_match_fastcdc() {
        let sizes = (4096, 16384, 65536);
        let c = Chunker::new(4096, 16384, 65536).unwrap();
        let zeros = vec![0u8; 1_000_001];
        let random = crate::chunk::tests::golden_input(77_777, 3);
        for (a, b) in [
            (&zeros[..], &random[..]),
            (&random[..], &zeros[..]),
            (&zeros[..], &[][..]),
        ] {
            for at_end in [false, true] {
                let [got_a, got_b] = cuts2(&c, (a, at_end), (b, at_end));
                assert_eq!(got_a, fastcdc_cuts(a, sizes, at_end));
                assert_eq!(got_b, fastcdc_cuts(b, sizes, at_end));
            }
        }
    }
}
