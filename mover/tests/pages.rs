//! A file rewritten in place in 4 KiB pages, with a name that says nothing
//! (`data.bin`), synced locally (issue 11, item 5): the destination writes
//! about the changed pages, and once the write pattern is seen the source
//! cuts the file in page-sized chunks, so a round reads and moves about the
//! chunks around the changed pages, not whole 256 KiB chunks.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::*;
use mover::{Destination, Source, sync};

const SIZE: usize = 16 << 20;
const PAGES: u64 = (SIZE / 4096) as u64;

/// Rewrites 1% of the file's 4 KiB pages in place (distinct pages), then
/// moves its mtime on so the rewrite is seen whatever the clock's grain.
fn rewrite_pages(p: &Path, seed: u64, mtime_ns: i128) -> u64 {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    let n = PAGES / 100;
    let mut x = seed | 1;
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        picked.insert(x % PAGES);
    }
    for (i, &pg) in picked.iter().enumerate() {
        f.write_all_at(&bytes(4096, seed * 1000 + i as u64), pg * 4096)
            .unwrap();
    }
    drop(f);
    set_mtime(p, mtime_ns);
    n * 4096
}

#[test]
fn data_bin_rewritten_in_pages_moves_about_the_pages() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    let file = src.join("data.bin");
    fs::write(&file, bytes(SIZE, 42)).unwrap();
    set_mtime(&file, 1_000_000_000_000_000_000);
    let (s, d) = (Source::Tree(src.clone()), Destination::Tree(dst.clone()));
    let run = || sync(&s, &d, &opts(t.path())).unwrap();
    let first = run();
    assert_eq!(first.rounds.files_staged, 1, "{first:#?}");

    // Round 1 after a page rewrite: the same inode at the same size with a
    // new mtime is seen, so the file is now cut as pages. Every chunk id is
    // new this once (the class changed), but the destination compares each
    // chunk with its own bytes of the range and writes only the pages that
    // differ.
    let changed = rewrite_pages(&file, 1, 1_000_000_100_000_000_000);
    let r1 = run();
    assert_same_tree(&src, &dst);
    assert_eq!(r1.rounds.files_patched, 1, "{r1:#?}");
    assert!(
        r1.rounds.bytes_written <= 2 * changed,
        "written {} for {changed} changed: {r1:#?}",
        r1.rounds.bytes_written
    );

    // Round 2: cut as pages again, so the destination fetches only the
    // small chunks around the changed pages. Default-class chunks (256 KiB
    // average) would carry about half the file here.
    let changed = rewrite_pages(&file, 2, 1_000_000_200_000_000_000);
    let r2 = run();
    assert_same_tree(&src, &dst);
    assert_eq!(r2.rounds.files_patched, 1, "{r2:#?}");
    assert!(
        r2.rounds.bytes_written <= 2 * changed,
        "written {} for {changed} changed: {r2:#?}",
        r2.rounds.bytes_written
    );
    assert!(
        r2.rounds.bytes_fetched <= SIZE as u64 / 8,
        "fetched {} of {SIZE} for {changed} changed: {r2:#?}",
        r2.rounds.bytes_fetched
    );

    // Round 3: the class sticks when the file grows (a database extends
    // its files), and an append still syncs exactly.
    let f = OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all_at(&bytes(1 << 20, 9), SIZE as u64).unwrap();
    drop(f);
    set_mtime(&file, 1_000_000_300_000_000_000);
    let r3 = run();
    assert_same_tree(&src, &dst);
    assert!(
        r3.rounds.bytes_fetched <= (1 << 20) + (64 << 10),
        "fetched {} for a 1 MiB append: {r3:#?}",
        r3.rounds.bytes_fetched
    );
}
