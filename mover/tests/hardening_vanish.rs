//! Issue 12, finding 9: an app deleting files while a pre-copy round scans
//! is normal. An entry that vanishes between the directory listing, the
//! lstat and the open is simply not in this round ("entry gone"), never a
//! failed scan.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mover::internals::scan::ScanOptions;
use mover::{Sender, Source};

fn churn(src: &Path, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        for i in 0..64 {
            let _ = std::fs::write(src.join(format!("f{i}")), b"x");
            let _ = std::fs::create_dir(src.join(format!("d{i}")));
            let _ = std::os::unix::fs::symlink("f0", src.join(format!("l{i}")));
        }
        for i in 0..64 {
            let _ = std::fs::remove_file(src.join(format!("f{i}")));
            let _ = std::fs::remove_dir(src.join(format!("d{i}")));
            let _ = std::fs::remove_file(src.join(format!("l{i}")));
        }
    }
}

#[test]
fn finding_09_entries_vanishing_mid_scan_are_gone_not_errors() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("steady"), b"steady").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || churn(&src, &stop))
    };
    let t = Instant::now();
    let mut scans = 0u32;
    let mut failed = Vec::new();
    while t.elapsed() < Duration::from_secs(5) {
        let r = Sender::scan(
            &Source::Tree(src.clone()),
            &d.path().join("cache"),
            ScanOptions {
                threads: 2,
                label: "t".into(),
                progress: Arc::new(mover::progress::NoProgress),
                changes: None,
                copy_into: None,
            },
        );
        scans += 1;
        if let Err(e) = r {
            failed.push(format!("{e:?}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    churner.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {scans} scans failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}
