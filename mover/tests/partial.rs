//! A pre-copy round the source outruns keeps what it moved (issue 11, item
//! 1), checked deterministically in-process: the source is changed between
//! the scan and the fetch, which is exactly what a busy app does to a round.
//! The round applies everything that still matched, reports the rest as
//! dirty (with its bytes), and the next round makes the destination exact.
//! A final round (not pre-copy) under the same change still fails: it must
//! be exact.

use crate::common::{self, scan_sender as scan};

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use mover::ReceiveError;
use mover::{Destination, ReceiveOptions, Receiver, RoundStats, Sender, Source};

fn round(
    dest: &Destination,
    state: &Path,
    sender: &mut Sender,
    precopy: bool,
) -> Result<RoundStats, ReceiveError> {
    let opts = ReceiveOptions::default().with_precopy(precopy);
    Receiver::open(dest, state)?.run_round(sender, &opts)
}

fn page_write(p: &Path, offset: u64, seed: u64) {
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&common::bytes(4096, seed), offset).unwrap();
}

/// A tree: a database patched in place, a file rewritten, one that grows,
/// one deleted and one renamed, all after the scan.
fn tree_case(precopy: bool) -> (tempfile::TempDir, Result<RoundStats, ReceiveError>) {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("data.bin"), common::bytes(8 << 20, 1)).unwrap();
    std::fs::write(src.join("grows"), common::bytes(3 << 20, 2)).unwrap();
    std::fs::write(src.join("sub/gone"), common::bytes(2 << 20, 3)).unwrap();
    std::fs::write(src.join("sub/moved"), common::bytes(1 << 20, 4)).unwrap();
    std::fs::write(src.join("steady"), common::bytes(4 << 20, 5)).unwrap();
    let dest = Destination::Tree(d.path().join("dst"));
    let state = d.path().join("state");
    let cache = d.path().join("cache");
    // Round 1 (quiet) gives the destination a version to patch.
    let mut s = scan(&Source::Tree(src.clone()), &cache);
    round(&dest, &state, &mut s, true).unwrap();
    common::assert_same_tree(&src, dest.path());

    // Round 2: the app writes after the scan, before the fetch.
    for k in 0..8 {
        page_write(&src.join("data.bin"), k * 1_000_000, 10 + k);
    }
    page_write(&src.join("steady"), 0, 40);
    page_write(&src.join("grows"), 0, 42);
    page_write(&src.join("sub/gone"), 0, 43);
    page_write(&src.join("sub/moved"), 0, 44);
    let mut s = scan(&Source::Tree(src.clone()), &cache);
    for k in 0..8 {
        page_write(&src.join("data.bin"), k * 1_000_000 + 4096 * 3, 20 + k);
    }
    page_write(&src.join("steady"), 2 << 20, 41);
    let g = OpenOptions::new()
        .append(true)
        .open(src.join("grows"))
        .unwrap();
    g.write_all_at(&common::bytes(1 << 20, 30), 0).unwrap();
    std::fs::write(src.join("grows"), common::bytes(5 << 20, 31)).unwrap();
    std::fs::remove_file(src.join("sub/gone")).unwrap();
    std::fs::rename(src.join("sub/moved"), src.join("sub/moved2")).unwrap();
    let r = round(&dest, &state, &mut s, precopy);
    (d, r)
}

#[test]
fn a_tree_round_the_source_outran_keeps_what_it_moved() {
    let (d, r) = tree_case(true);
    let st = r.expect("a pre-copy round never fails because the source moved");
    assert!(st.chunks_dirty > 0 && st.bytes_dirty > 0, "{st:?}");
    assert!(
        st.entries_dirty >= 4,
        "data.bin, steady, grows, gone, moved: {st:?}"
    );
    // It kept the rest: steady's first page and data.bin's first pages.
    assert!(st.bytes_fetched > 0, "{st:?}");
    // The next round (quiet) makes the destination exact, moving only what
    // was dirty or changed since.
    let src = d.path().join("src");
    let dest = Destination::Tree(d.path().join("dst"));
    let mut s = scan(&Source::Tree(src.clone()), &d.path().join("cache"));
    let st3 = round(&dest, &d.path().join("state"), &mut s, false).unwrap();
    common::assert_same_tree(&src, dest.path());
    // What it sends: the ranges left dirty, plus the file rewritten after
    // the scan (5 MiB) and the renamed one (1 MiB, whose destination copy
    // kept an old page): nothing the partial round kept.
    assert!(
        st3.bytes_fetched <= st.bytes_dirty + (6 << 20),
        "only the dirty ranges and the rewritten files again: {st3:?} after {st:?}"
    );
}

#[test]
fn a_final_round_the_source_outran_still_fails() {
    let (_d, r) = tree_case(false);
    assert!(matches!(r, Err(ReceiveError::Stale { .. })), "{r:?}");
}

#[test]
fn an_image_round_under_writes_keeps_what_it_moved() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("src.img");
    std::fs::write(&img, common::bytes(16 << 20, 7)).unwrap();
    let dest = Destination::Image(d.path().join("dst.img"));
    let state = d.path().join("state");
    let cache = d.path().join("cache");
    let src = Source::Image(img.clone());
    let mut s = scan(&src, &cache);
    round(&dest, &state, &mut s, true).unwrap();
    for k in 0..32 {
        page_write(&img, k * 500_000, 100 + k);
    }
    let mut s = scan(&src, &cache);
    // Half of those pages change again before the fetch.
    for k in 0..16 {
        page_write(&img, k * 1_000_000, 200 + k);
    }
    let st = round(&dest, &state, &mut s, true).unwrap();
    assert!(st.chunks_dirty > 0, "{st:?}");
    assert!(
        st.bytes_fetched > 0,
        "the pages that held still arrived: {st:?}"
    );
    let mut s = scan(&src, &cache);
    round(&dest, &state, &mut s, false).unwrap();
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(dest.path()).unwrap(),
        "the image differs after an exact round"
    );
}

#[test]
fn a_first_round_under_writes_keeps_what_it_moved() {
    // No previous version: dirty ranges of staged files hold zeros, and the
    // manifest says so. `a.db` is db-class by name from the start: a name
    // that says nothing would switch to that class once its in-place
    // rewrite is seen (`scan::class`), and that round fetches the file whole.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.db"), common::bytes(4 << 20, 1)).unwrap();
    std::fs::write(src.join("b"), common::bytes(4 << 20, 2)).unwrap();
    let dest = Destination::Tree(d.path().join("dst"));
    let state = d.path().join("state");
    let cache = d.path().join("cache");
    let mut s = scan(&Source::Tree(src.clone()), &cache);
    page_write(&src.join("a.db"), 1 << 20, 9);
    let st = round(&dest, &state, &mut s, true).unwrap();
    assert!(st.chunks_dirty >= 1 && st.entries_dirty == 1, "{st:?}");
    assert!(st.bytes_fetched >= 6 << 20, "{st:?}");
    let mut s = scan(&Source::Tree(src.clone()), &cache);
    let st2 = round(&dest, &state, &mut s, true).unwrap();
    assert!(
        st2.bytes_fetched <= 2 << 20,
        "only the dirty chunk again: {st2:?}"
    );
    common::assert_same_tree(&src, dest.path());
}

#[test]
fn a_staged_range_the_source_outran_keeps_the_bytes_that_arrived() {
    // What arrived for a dirty range is the source's newer version of it:
    // a staged file keeps that, not zeros, so the next round patches
    // against bytes a page behind instead of sending the range whole.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.db"), common::bytes(4 << 20, 1)).unwrap();
    let dest = Destination::Tree(d.path().join("dst"));
    let state = d.path().join("state");
    let mut s = scan(&Source::Tree(src.clone()), &d.path().join("cache"));
    page_write(&src.join("a.db"), 1 << 20, 9);
    let st = round(&dest, &state, &mut s, true).unwrap();
    assert!(st.chunks_dirty >= 1, "{st:?}");
    // Nothing changed after the fetch: the destination is the source's
    // file, the page written after the scan included.
    let (got, want) = (
        std::fs::read(dest.path().join("a.db")).unwrap(),
        std::fs::read(src.join("a.db")).unwrap(),
    );
    let page = (1 << 20)..(1 << 20) + 4096;
    assert!(
        got[page.clone()] == want[page],
        "the dirty page arrived and stayed"
    );
    assert!(got == want, "the whole file is the source's");
}
