//! A 100k-file tree: syncs, compares, and stays within a modest memory
//! bound (the manifest and stat caches are streamed, never held whole).
mod common;

use std::fs;

use common::*;
use mover::{Destination, Source, sync};

fn peak_rss_kib() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hundred_thousand_files() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    for d in 0..500u64 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200u64 {
            let n = d * 200 + f;
            fs::write(dir.join(format!("f{f:03}")), bytes((n % 300) as usize, n)).unwrap();
        }
    }
    let o = opts(t.path());
    let s = sync(
        &Source::Tree(src.clone()),
        &Destination::Tree(dst.clone()),
        &o,
    )
    .unwrap();
    assert_eq!(s.rounds.entries, 1 + 500 + 100_000, "{s:#?}");
    assert_same_tree(&src, &dst);
    // Edit a few, and sync again.
    fs::write(src.join("d007/f009"), b"changed").unwrap();
    fs::remove_file(src.join("d400/f000")).unwrap();
    let s = sync(
        &Source::Tree(src.clone()),
        &Destination::Tree(dst.clone()),
        &o,
    )
    .unwrap();
    assert_eq!(s.rounds.entries, 1 + 500 + 100_000 - 1);
    assert_eq!(fs::read(dst.join("d007/f009")).unwrap(), b"changed");
    assert!(!dst.join("d400/f000").exists());
    let rss = peak_rss_kib();
    assert!(rss < 200 * 1024, "peak RSS {rss} KiB for a 100k-file tree");
}
