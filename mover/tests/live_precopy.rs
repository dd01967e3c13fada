//! Pre-copy under a real writer, over the loopback net path (issue 11): a
//! tree and an image are written throughout the rounds (pages rewritten in
//! place, appends, files created, deleted and renamed); every pre-copy round
//! succeeds and keeps what it moved (never a rescan, never a discarded
//! round); after the writer stops, one exact final round leaves the
//! destination byte-identical to the source's last state.

use crate::common;

use crate::common::net::Net;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mover::Source;
use mover::net::RoundPusher;

/// The agent receives rounds not marked final as pre-copy rounds, as the
/// plugin's agent does; a pre-copy round must not need a rescan any more.
fn precopy_net() -> Net {
    Net::with(4 << 20, true)
}

fn pusher(net: &Net, source: Source, target: &str) -> RoundPusher {
    let mut p = net.pusher(source, target);
    p.retry.stale_rescans = 0;
    p
}

/// A tiny deterministic generator (no shared state between threads).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Writes to a tree until `stop`: rewrites 4 KiB pages of `db` in place,
/// appends to `wal`, creates `new-N`, deletes and renames earlier ones.
fn tree_writer(root: PathBuf, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut r = Lcg(7);
    let db = OpenOptions::new()
        .write(true)
        .open(root.join("db"))
        .unwrap();
    let wal = OpenOptions::new()
        .append(true)
        .open(root.join("wal"))
        .unwrap();
    let db_pages = std::fs::metadata(root.join("db")).unwrap().len() / 4096;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..8 {
            let page = r.next() % db_pages;
            db.write_all_at(&common::bytes(4096, r.next()), page * 4096)
                .unwrap();
        }
        std::io::Write::write_all(&mut &wal, &common::bytes(16 << 10, r.next())).unwrap();
        std::fs::write(root.join(format!("new-{n}")), common::bytes(20_000, n)).unwrap();
        if n >= 3 {
            let _ = std::fs::remove_file(root.join(format!("new-{}", n - 3)));
        }
        if n >= 1 && n.is_multiple_of(2) {
            let _ = std::fs::rename(
                root.join(format!("new-{}", n - 1)),
                root.join(format!("renamed-{}", n - 1)),
            );
        }
        n += 1;
        ops.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes 4 KiB pages all over an image until `stop`.
fn image_writer(img: PathBuf, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut r = Lcg(11);
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    let pages = std::fs::metadata(&img).unwrap().len() / 4096;
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..16 {
            let page = r.next() % pages;
            f.write_all_at(&common::bytes(4096, r.next()), page * 4096)
                .unwrap();
        }
        ops.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `rounds` pre-copy rounds while `writer` writes, then stops it and
/// runs the final round. Returns (bytes moved per pre-copy round, dirty
/// bytes per pre-copy round).
fn precopy_under(
    net: &Net,
    pusher: &RoundPusher,
    rounds: u32,
    writer: impl FnOnce(Arc<AtomicBool>, Arc<AtomicU64>) + Send + 'static,
) -> (Vec<u64>, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let w = {
        let (stop, ops) = (stop.clone(), ops.clone());
        std::thread::spawn(move || writer(stop, ops))
    };
    let mut moved = Vec::new();
    let mut dirty = Vec::new();
    for round in 1..=rounds {
        let before = ops.load(Ordering::SeqCst);
        let r = pusher
            .push(round, false, &mut |_| {})
            .unwrap_or_else(|e| panic!("pre-copy round {round}: {e}; {:?}", net.errors()));
        assert_eq!(r.rescans, 0, "round {round} was discarded and rescanned");
        assert!(
            ops.load(Ordering::SeqCst) > before,
            "the writer wrote during round {round}"
        );
        moved.push(r.summary.bytes_fetched);
        dirty.push(r.summary.bytes_dirty);
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    // The racy-timestamp rule: a file written within 2 s of a scan is read
    // again anyway, so the final round needs no wait to be exact.
    let f = pusher.push(rounds + 1, true, &mut |_| {}).unwrap();
    assert_eq!(f.summary.bytes_dirty, 0);
    (moved, dirty)
}

fn assert_progress(moved: &[u64], dirty: &[u64]) {
    eprintln!("pre-copy rounds: moved {moved:?}, dirty {dirty:?}");
    for (i, m) in moved.iter().enumerate() {
        assert!(*m > 0, "round {} kept nothing: {moved:?}", i + 1);
    }
}

#[test]
fn a_tree_under_writes_converges_and_ends_identical() {
    let net = precopy_net();
    let src = net.dir.path().join("a/vol");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("db"), common::bytes(24 << 20, 1)).unwrap();
    std::fs::write(src.join("wal"), common::bytes(1 << 20, 2)).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("sub/f{i}")), common::bytes(50_000, 10 + i)).unwrap();
    }
    let pusher = pusher(&net, Source::Tree(src.clone()), "vol");
    let root = src.clone();
    let (moved, dirty) = precopy_under(&net, &pusher, 4, move |stop, ops| {
        tree_writer(root, stop, ops)
    });
    assert_progress(&moved, &dirty);
    common::assert_same_tree(&src, &net.dir.path().join("b/dst/vol"));
}

#[test]
fn an_image_under_writes_converges_and_ends_identical() {
    let net = precopy_net();
    let img = net.dir.path().join("a/vol.img");
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    std::fs::write(&img, common::bytes(32 << 20, 3)).unwrap();
    let pusher = pusher(&net, Source::Image(img.clone()), "vol.img");
    let i2 = img.clone();
    let (moved, dirty) = precopy_under(&net, &pusher, 4, move |stop, ops| {
        image_writer(i2, stop, ops)
    });
    assert_progress(&moved, &dirty);
    let dst = net.dir.path().join("b/dst/vol.img");
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(&dst).unwrap(),
        "image differs after the final round"
    );
}

/// A file that grows while it is scanned (a table file under inserts) must
/// never make the manifest invalid: scanned over and over under appends and
/// rewrites, every scan's manifest is accepted.
#[test]
fn a_file_growing_mid_scan_never_fails_the_round() {
    let net = precopy_net();
    let src = net.dir.path().join("a/grow");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("table"), common::bytes(40 << 20, 5)).unwrap();
    let pusher = pusher(&net, Source::Tree(src.clone()), "grow");
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let stop = stop.clone();
        let p = src.join("table");
        std::thread::spawn(move || {
            let mut r = Lcg(3);
            let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let len = f.metadata().unwrap().len();
                f.write_all_at(&common::bytes(8192, r.next()), len).unwrap();
                let page = r.next() % (len / 4096);
                f.write_all_at(&common::bytes(4096, r.next()), page * 4096)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    for round in 1..=4 {
        pusher
            .push(round, false, &mut |_| {})
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    pusher.push(5, true, &mut |_| {}).unwrap();
    common::assert_same_tree(&src, &net.dir.path().join("b/dst/grow"));
}
