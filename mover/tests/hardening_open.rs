//! Issue 12, finding 2: the sender opens whatever is at a scanned path. A
//! container can swap a FIFO or a device node in between the scan and the
//! fetch; the round must neither hang on the FIFO nor read the device into
//! the copy. The entry is reported dirty and goes again next round. (A
//! device swapped in here is caught by the receiver's check either way; the
//! device case that mattered, the scanner hashing it into the manifest, is
//! tested at the open helper, `mover::internals::regular_file`.)

use crate::common::{self, scan_sender as scan};

use std::path::Path;
use std::time::Duration;

use mover::{Destination, ReceiveOptions, Receiver, RoundStats, Source};
use rustix::fs::{FileType, Mode};

/// Scans a one-file tree, swaps `make` in at the file's path, and runs a
/// pre-copy round (bounded: a FIFO read would block it forever).
fn swapped_round(make: fn(&Path)) -> RoundStats {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), common::bytes(1 << 20, 7)).unwrap();
        let mut s = scan(&Source::Tree(src.clone()), &d.path().join("cache"));
        std::fs::remove_file(src.join("f")).unwrap();
        make(&src.join("f"));
        let dest = Destination::Tree(d.path().join("dst"));
        let opts = ReceiveOptions::default().with_precopy(true);
        let r = Receiver::open(&dest, &d.path().join("state"))
            .and_then(|mut r| r.run_round(&mut s, &opts));
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the round hung on what was swapped in")
        .expect("a pre-copy round survives a swapped-in node")
}

fn mknod(p: &Path, kind: FileType, dev: rustix::fs::Dev) {
    rustix::fs::mknodat(rustix::fs::CWD, p, kind, Mode::from_raw_mode(0o600), dev).unwrap();
}

#[test]
fn finding_02_fifo_swapped_in_after_scan_is_not_read() {
    let st = swapped_round(|p| mknod(p, FileType::Fifo, 0));
    assert_eq!(st.entries_dirty, 1, "{st:?}");
    assert_eq!(st.bytes_fetched, 0, "nothing read from the FIFO: {st:?}");
}
