//! BLAKE3 of many short inputs at once, the same ids [`ChunkId::of`] gives.
//!
//! BLAKE3 splits an input into 1 KiB chunks and compresses up to 16 of them
//! side by side in SIMD lanes (AVX-512; 8 with AVX2). A 4 KiB `db-small`
//! chunk has 4, so hashed alone it fills a quarter of the lanes: its bytes
//! hashed at about a third of a long input's speed, and over the scan, the
//! fetch and the verify that was a third of a small database file's first
//! transfer. Here the inputs' chunks are hashed across inputs instead: the
//! `j`-th 1 KiB chunk of every input carries the same chunk counter `j`, so
//! one `hash_many` call takes them all. The last partial chunks go the same
//! way, bucketed by chunk index and length in blocks, except each one's last
//! block (which can be short: `compress_in_place` alone); and the parent
//! nodes level by level across inputs, one `hash_many` call per level.
//! 29,570 inputs of 2-7 KiB (128 MiB), release build, AVX-512: 85 ms one at
//! a time, 40 ms here (`blake3::hash` of the 128 MiB whole: 29 ms).
//!
//! `hash_many` and `IncrementCounter` are in the crate's hidden API, public
//! but "unstable, for benchmarks only": they may change with a blake3
//! release (a build error, caught with the upgrade; `Cargo.lock` pins the
//! version). The ids cannot drift unnoticed: the tests compare every path
//! here with `blake3::hash`.

use std::collections::BTreeMap;

use blake3::IncrementCounter;
use blake3::hazmat::ChainingValue;
use blake3::platform::{Platform, le_bytes_from_words_32, words_from_le_bytes_32};

use super::ChunkId;

/// BLAKE3's chunk and block lengths.
const CHUNK: usize = blake3::CHUNK_LEN;
const BLOCK: usize = 64;
/// BLAKE3's flags (spec, section 2.1): a chunk's first and last block, a
/// parent node, the root node.
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const PARENT: u8 = 4;
const ROOT: u8 = 8;
/// BLAKE3's IV, the key of the unkeyed hash (spec, section 2.2).
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

/// Inputs hashed together at most (a 16 MiB scan segment's `db-small`
/// chunks): enough that the last partial chunks of the same chunk index and
/// block count fill the lanes, with scratch space of about 200 bytes each.
const GROUP: usize = 4096;
/// Inputs this long or longer are hashed alone, by `blake3::hash`: they fill
/// the lanes with their own chunks (16 with AVX-512) and parent nodes.
const ALONE: usize = 16 * CHUNK;

/// The ids of `inputs`, in order, appended to `out`: `ChunkId::of` of each.
pub fn ids_of(inputs: &[&[u8]], out: &mut Vec<ChunkId>) {
    ids_on(Platform::detect(), inputs, out);
}

/// [`ids_of`] with `platform`'s SIMD (the tests run every one this CPU has:
/// `hash_many`'s lane count differs between them).
fn ids_on(platform: Platform, inputs: &[&[u8]], out: &mut Vec<ChunkId>) {
    let mut rest = inputs;
    while !rest.is_empty() {
        // The short inputs up to the next long one, at most a group of them.
        let short = rest
            .iter()
            .take(GROUP)
            .take_while(|d| d.len() < ALONE)
            .count();
        if short == 0 {
            out.push(ChunkId::of(rest[0]));
            rest = &rest[1..];
        } else {
            hash_group(platform, &rest[..short], out);
            rest = &rest[short..];
        }
    }
}

/// [`ids_of`] for at most [`GROUP`] inputs.
fn hash_group(platform: Platform, inputs: &[&[u8]], out: &mut Vec<ChunkId>) {
    // Each input's 1 KiB chunks that are hashed across inputs: all of its
    // full ones, but none of a single-chunk input (that chunk is the root,
    // finalized differently) and never the last partial one.
    let full = |d: &[u8]| if d.len() <= CHUNK { 0 } else { d.len() / CHUNK };
    // Each input's nodes of the tree level being hashed, chunks first.
    let mut level: Vec<Vec<ChainingValue>> = inputs
        .iter()
        .map(|d| vec![[0; 32]; chunks(d.len())])
        .collect();
    let mut refs: Vec<&[u8; CHUNK]> = Vec::with_capacity(inputs.len());
    let mut whose: Vec<usize> = Vec::with_capacity(inputs.len());
    let mut hashed = vec![0u8; 32 * inputs.len()];
    for j in 0..inputs.iter().map(|d| full(d)).max().unwrap_or(0) {
        refs.clear();
        whose.clear();
        for (i, d) in inputs.iter().enumerate() {
            if full(d) > j {
                let c = &d[j * CHUNK..(j + 1) * CHUNK];
                refs.push(c.try_into().expect("a whole chunk"));
                whose.push(i);
            }
        }
        platform.hash_many(
            &refs,
            &IV,
            j as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut hashed[..32 * refs.len()],
        );
        for (k, &i) in whose.iter().enumerate() {
            level[i][j].copy_from_slice(&hashed[32 * k..32 * (k + 1)]);
        }
    }
    let mut root: Vec<Option<ChunkId>> = vec![None; inputs.len()];
    // The last partial chunks, by chunk index and whole blocks before their
    // last block (which can be short): each bucket's whole blocks in one
    // `hash_many` call, then each last block alone.
    let mut tails: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, d) in inputs.iter().enumerate() {
        let (n, f) = (chunks(d.len()), full(d));
        if n == 1 {
            root[i] = Some(ChunkId::of(d));
        } else if f < n {
            let len = d.len() - f * CHUNK;
            tails.entry((f, (len - 1) / BLOCK)).or_default().push(i);
        }
    }
    for ((f, k), who) in tails {
        let tail = |i: usize| &inputs[i][f * CHUNK..];
        let mut cvs = vec![0u8; 32 * who.len()];
        if k > 0 {
            let prefixes: Vec<&[u8]> = who.iter().map(|&i| &tail(i)[..k * BLOCK]).collect();
            whole_blocks(platform, k, &prefixes, f as u64, &mut cvs);
        }
        for (&i, cv) in who.iter().zip(cvs.chunks_exact(32)) {
            let rest = &tail(i)[k * BLOCK..];
            let mut block = [0u8; BLOCK];
            block[..rest.len()].copy_from_slice(rest);
            let (mut words, start) = if k == 0 {
                (IV, CHUNK_START)
            } else {
                (words_from_le_bytes_32(cv.try_into().expect("32 bytes")), 0)
            };
            #[allow(clippy::cast_possible_truncation, reason = "at most a block")]
            platform.compress_in_place(
                &mut words,
                &block,
                rest.len() as u8,
                f as u64,
                start | CHUNK_END,
            );
            level[i][f] = le_bytes_from_words_32(&words);
        }
    }
    parents(platform, &mut level, &mut root);
    out.extend(
        root.into_iter()
            .map(|r| r.expect("every input reached its root")),
    );
}

/// Hashes every input's tree from its chunks' chaining values (`level[i]`,
/// for the inputs whose `root[i]` is not yet known) up to its root, one
/// level at a time across inputs: BLAKE3's tree pairs neighbouring nodes
/// and carries an odd last one up a level (the left subtree is always the
/// largest power of two), and every parent block of a level, 64 bytes of
/// two chaining values, is compressed in the same SIMD call.
fn parents(platform: Platform, level: &mut [Vec<ChainingValue>], root: &mut [Option<ChunkId>]) {
    let mut blocks: Vec<[u8; 64]> = Vec::new();
    let mut last: Vec<[u8; 64]> = Vec::new();
    let mut at_root: Vec<usize> = Vec::new();
    let mut hashed: Vec<u8> = Vec::new();
    loop {
        blocks.clear();
        last.clear();
        at_root.clear();
        for (i, nodes) in level.iter().enumerate() {
            if root[i].is_some() {
                continue;
            }
            let pairs = nodes.chunks_exact(2).map(|p| {
                let mut b = [0u8; 64];
                b[..32].copy_from_slice(&p[0]);
                b[32..].copy_from_slice(&p[1]);
                b
            });
            if nodes.len() == 2 {
                last.extend(pairs);
                at_root.push(i);
            } else {
                blocks.extend(pairs);
            }
        }
        if blocks.is_empty() && last.is_empty() {
            return;
        }
        hashed.resize(32 * blocks.len().max(last.len()), 0);
        let refs: Vec<&[u8; 64]> = blocks.iter().collect();
        platform.hash_many(
            &refs,
            &IV,
            0,
            IncrementCounter::No,
            PARENT,
            0,
            0,
            &mut hashed,
        );
        let mut next = hashed.chunks_exact(32);
        for (i, nodes) in level.iter_mut().enumerate() {
            if root[i].is_some() || nodes.len() <= 2 {
                continue;
            }
            let carried = (nodes.len() % 2 == 1).then(|| nodes[nodes.len() - 1]);
            let half = nodes.len() / 2;
            for cv in nodes.iter_mut().take(half) {
                cv.copy_from_slice(next.next().expect("one per pair"));
            }
            nodes.truncate(half);
            nodes.extend(carried);
        }
        let refs: Vec<&[u8; 64]> = last.iter().collect();
        platform.hash_many(
            &refs,
            &IV,
            0,
            IncrementCounter::No,
            PARENT | ROOT,
            0,
            0,
            &mut hashed,
        );
        for (&i, r) in at_root.iter().zip(hashed.chunks_exact(32)) {
            root[i] = Some(ChunkId(r.try_into().expect("32 bytes")));
        }
    }
}

/// The chaining values, into `out`, of `prefixes` (each `k` whole blocks
/// from the start of a chunk, the chunk's index `counter`), `k` in 1..16.
/// `hash_many` takes its input length as a constant.
fn whole_blocks(platform: Platform, k: usize, prefixes: &[&[u8]], counter: u64, out: &mut [u8]) {
    fn of<const N: usize>(platform: Platform, prefixes: &[&[u8]], counter: u64, out: &mut [u8]) {
        let refs: Vec<&[u8; N]> = prefixes
            .iter()
            .map(|p| (*p).try_into().expect("k whole blocks"))
            .collect();
        platform.hash_many(
            &refs,
            &IV,
            counter,
            IncrementCounter::No,
            0,
            CHUNK_START,
            0,
            out,
        );
    }
    match k {
        1 => of::<64>(platform, prefixes, counter, out),
        2 => of::<128>(platform, prefixes, counter, out),
        3 => of::<192>(platform, prefixes, counter, out),
        4 => of::<256>(platform, prefixes, counter, out),
        5 => of::<320>(platform, prefixes, counter, out),
        6 => of::<384>(platform, prefixes, counter, out),
        7 => of::<448>(platform, prefixes, counter, out),
        8 => of::<512>(platform, prefixes, counter, out),
        9 => of::<576>(platform, prefixes, counter, out),
        10 => of::<640>(platform, prefixes, counter, out),
        11 => of::<704>(platform, prefixes, counter, out),
        12 => of::<768>(platform, prefixes, counter, out),
        13 => of::<832>(platform, prefixes, counter, out),
        14 => of::<896>(platform, prefixes, counter, out),
        15 => of::<960>(platform, prefixes, counter, out),
        _ => unreachable!("a partial chunk has at most 15 whole blocks before its last"),
    }
}

/// 1 KiB chunks in an input of `len` bytes (an empty input has one).
fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 131 + seed * 7919).to_le_bytes()[1])
            .collect()
    }

    /// The lengths where BLAKE3's tree changes shape: empty, one chunk, the
    /// chunk boundary, powers of two chunks and one past, and the sizes the
    /// `db-small` class cuts (2 KiB to 16 KiB).
    #[test]
    fn every_tree_shape_gives_blake3s_hash() {
        let lens: Vec<usize> = [
            0, 1, 63, 64, 65, 1023, 1024, 1025, 2047, 2048, 2049, 3072, 4095, 4096, 4097, 5000,
            8191, 8192, 8193, 12288, 16384, 16385, 32768, 65537, 100_000,
        ]
        .to_vec();
        let inputs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(s, &l)| bytes(l, s)).collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        for p in platforms() {
            let mut got = Vec::new();
            ids_on(p, &refs, &mut got);
            assert_eq!(got.len(), inputs.len());
            for (d, id) in inputs.iter().zip(&got) {
                assert_eq!(*id, ChunkId::of(d), "{} bytes, {p:?}", d.len());
            }
        }
    }

    /// The portable implementation, the one `ids_of` picks here (AVX-512 on
    /// the CI machine), and on x86 every older one this CPU can run.
    fn platforms() -> Vec<Platform> {
        let mut all = vec![Platform::portable(), Platform::detect()];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        all.extend(
            [Platform::sse2(), Platform::sse41(), Platform::avx2()]
                .into_iter()
                .flatten(),
        );
        all
    }

    /// On x86 (where CI runs) the tests above run 1, 4, 8 and (AVX-512) 16
    /// lanes.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[test]
    fn the_tests_cover_more_than_one_lane_count() {
        let lanes: std::collections::BTreeSet<usize> =
            platforms().iter().map(Platform::simd_degree).collect();
        assert!(lanes.len() >= 3, "{lanes:?}");
    }

    /// More inputs than a group, with long ones (hashed alone) between.
    #[test]
    fn groups_and_long_inputs_between_them_keep_the_order() {
        let lens: Vec<usize> = (0..GROUP + 5)
            .map(|i| if i % 1000 == 999 { ALONE + i } else { i % 3000 })
            .collect();
        let inputs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(s, &l)| bytes(l, s)).collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let want: Vec<ChunkId> = inputs.iter().map(|d| ChunkId::of(d)).collect();
        for p in platforms() {
            let mut got = Vec::new();
            ids_on(p, &refs, &mut got);
            assert!(got == want, "{} inputs, {p:?}", inputs.len());
        }
    }

    proptest! {
        /// Any mix of lengths, any order.
        #[test]
        fn ids_are_blake3_of_each_input(
            lens in prop::collection::vec(
                prop_oneof![0usize..3000, 2048usize..20_000, 1usize..100_000], 0..150,
            ),
        ) {
            let inputs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(s, &l)| bytes(l, s)).collect();
            let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            for p in platforms() {
                let mut got = vec![ChunkId::of(b"kept")];
                ids_on(p, &refs, &mut got);
                prop_assert_eq!(got.len(), inputs.len() + 1);
                prop_assert_eq!(got[0], ChunkId::of(b"kept"), "appended, not replaced");
                for (d, id) in inputs.iter().zip(&got[1..]) {
                    prop_assert_eq!(*id, ChunkId::of(d), "{} bytes, {:?}", d.len(), p);
                }
            }
        }
    }
}
