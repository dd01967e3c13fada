use super::*;

const DEV: Device = Device {
    major: 254,
    minor: 0,
};

fn range(ino: u64, start: u64, end: u64) -> FileChange {
    FileChange::Range {
        ino,
        start,
        end,
        early: false,
    }
}

#[test]
fn a_cache_is_trusted_only_after_a_scan_it_started_was_saved() {
    let mut c = FileConsumer::default();
    c.lose(0);
    assert!(c.add(range(5, 0, 512)));
    assert_eq!(c.pending(0), None, "nothing recorded before: read whole");
    assert!(c.add(range(5, 4096, 8192))); // during the base scan
    c.scanned(0);
    let want: Written = [(5, Some(vec![(4096, 8192)]))].into();
    assert_eq!(c.pending(1), Some(want));
    // The scan with mark 1 fails: its changes stay for the next.
    assert!(c.add(range(6, 0, 10)));
    assert!(c.add(range(5, 8192, 9000)));
    let want: Written = [(5, Some(vec![(4096, 9000)])), (6, Some(vec![(0, 10)]))].into();
    assert_eq!(c.pending(2), Some(want));
    c.scanned(2);
    assert_eq!(c.pending(3), Some(HashMap::new()));
    // Events lost: untrusted until a scan taken after the loss is saved.
    c.lose(4);
    c.scanned(3);
    assert_eq!(c.pending(5), None);
    c.scanned(5);
    assert_eq!(c.pending(6), Some(HashMap::new()));
}

#[test]
fn whole_wins_over_ranges_and_direct_ranges_go_twice() {
    let mut c = FileConsumer::default();
    c.lose(0);
    c.pending(0);
    c.scanned(0);
    c.add(range(1, 0, 10));
    c.add(FileChange::Whole { ino: 1 });
    c.add(range(1, 20, 30));
    c.add(FileChange::Range {
        ino: 2,
        start: 0,
        end: 8192,
        early: true,
    });
    // Mapped files are the log's, not a cache's.
    c.add(FileChange::Mapped { ino: 3 });
    let want: Written = [(1, None), (2, Some(vec![(0, 8192)]))].into();
    assert_eq!(c.pending(1), Some(want));
    c.scanned(1);
    // The direct write may have landed during scan 1's read: once more.
    let want: Written = [(2, Some(vec![(0, 8192)]))].into();
    assert_eq!(c.pending(2), Some(want));
    c.scanned(2);
    assert_eq!(c.pending(3), Some(HashMap::new()));
}

#[test]
fn too_many_ranges_are_coarsened_then_the_cache_is_lost() {
    let mut c = FileConsumer::default();
    for i in 0..(MAX_RANGES as u64 + 10) {
        assert!(c.add(range(1, i * 8192, i * 8192 + 512)));
    }
    assert!(c.open_ranges <= MAX_RANGES);
    // Many files with one far-apart range each cannot be coarsened.
    let mut c = FileConsumer::default();
    let ok = (0..(MAX_RANGES as u64 + 10)).all(|i| c.add(range(i, 0, 1)));
    assert!(!ok, "the bound held");
}

#[test]
fn shared_writable_mappings_of_the_filesystem() {
    let table: &[(&str, Option<u64>)] = &[
        ("7f00-7f10 rw-s 00000000 fe:00 1234 /data/x.db", Some(1234)),
        ("7f00-7f10 r--s 00000000 fe:00 1234 /data/x.db", None),
        ("7f00-7f10 rw-p 00000000 fe:00 1234 /data/x.db", None),
        ("7f00-7f10 rw-s 00000000 fe:10 1234 /data/x.db", None),
        ("7f00-7f10 rw-s 00000000 00:00 0 /dev/zero (deleted)", None),
        ("7f00-7f10 rw-s 00000000 fe:00 0", None),
        ("garbage", None),
    ];
    for (line, want) in table {
        assert_eq!(shared_writable_inode(line, DEV), *want, "{line}");
    }
}

/// A small ext4 filesystem of our own, loop-mounted (no other writer on
/// it), unmounted on drop.
struct Ext4 {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Ext4 {
    fn new() -> Ext4 {
        use std::process::Command;
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("image.ext4");
        let mnt = d.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("mkfs.ext4")
            .args(["-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&img));
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Ext4 { _dir: d, mnt }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}

/// The real kernel (root, as CI is): a tree on ext4 changed every way a
/// program changes files (pwrite in place, append, truncate and regrow,
/// delete and recreate, rename over, mmap, direct I/O, punch a hole),
/// scanned with the tracker after each step: every manifest matches the
/// tree, and pages rewritten in place are all that is read of their file.
#[test]
fn every_way_of_writing_a_file_ends_in_a_manifest_that_matches_the_tree() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let fs = Ext4::new();
    let root = fs.mnt.join("data");
    std::fs::create_dir(&root).unwrap();
    let cache = fs.mnt.join("cache");
    let mib = 1u64 << 20;
    let data = |seed: u64, len: u64| -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(seed) >> 3).to_le_bytes()[0])
            .collect()
    };
    for (i, name) in ["t.db", "u.db", "v.db", "w.db", "x.db", "m.db", "d.db"]
        .iter()
        .enumerate()
    {
        std::fs::write(root.join(name), data(i as u64 * 2 + 3, 4 * mib)).unwrap();
    }
    let logs: Arc<DirWrites> = Arc::default();
    let t = logs.changes(&root, &cache).expect("ext4 is tracked");
    let opts = || mover::ScanOptions {
        threads: 2,
        label: "t".into(),
        progress: Arc::new(mover::progress::NoProgress),
        changes: Some(t.clone()),
        copy_into: None,
    };
    let s = mover::internals::scan::scan_tree(&root, &cache, opts()).unwrap();
    mover::internals::scan::manifest_matches_the_tree(&s, &root);
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join(n))
            .unwrap()
    };
    // Past the racy window of the base scan's timestamps.
    std::thread::sleep(Duration::from_millis(20));

    // 1. Pages rewritten in place and an append: only those are read.
    let f = open("t.db");
    f.write_all_at(&[0xa1; 8192], mib + 8192).unwrap();
    f.write_all_at(&[0xa2; 8192], 3 * mib).unwrap();
    f.write_all_at(&[0xa3; 8192], 4 * mib).unwrap();
    let s = mover::internals::scan::scan_tree(&root, &cache, opts()).unwrap();
    mover::internals::scan::manifest_matches_the_tree(&s, &root);
    assert_eq!(s.stats.bytes_tracked, 3 * 8192, "{:?}", s.stats);
    assert!(s.stats.bytes_hashed <= 5 * 64 * 1024, "{:?}", s.stats);

    // 2. Truncated and regrown to the same size; deleted and recreated
    //    (the inode number may come back); renamed over.
    let f = open("u.db");
    f.set_len(mib).unwrap();
    f.set_len(4 * mib).unwrap();
    f.write_all_at(&[0xb1; 100], 0).unwrap();
    std::fs::remove_file(root.join("v.db")).unwrap();
    let g = std::fs::File::create(root.join("v.db")).unwrap();
    g.write_all_at(&[0xb2; 4096], 0).unwrap();
    g.set_len(4 * mib).unwrap();
    std::fs::write(root.join("w.new"), data(41, 4 * mib)).unwrap();
    std::fs::rename(root.join("w.new"), root.join("w.db")).unwrap();
    let s = mover::internals::scan::scan_tree(&root, &cache, opts()).unwrap();
    mover::internals::scan::manifest_matches_the_tree(&s, &root);

    // 3. Written through a shared mapping (no write event), then a page
    //    through pwrite too; a hole punched; a direct write.
    let m = open("m.db");
    let map = shared_map::SharedMap::new(&m, 4 << 20);
    map.write((2 << 20) + 100, &[0xc1; 3000]);
    m.write_all_at(&[0xc2; 8192], 0).unwrap();
    let x = open("x.db");
    rustix::fs::fallocate(
        &x,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        mib,
        65536,
    )
    .unwrap();
    let d = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits().cast_signed())
        .open(root.join("d.db"))
        .unwrap();
    let aligned = Aligned([0xd1; 8192]);
    d.write_all_at(&aligned.0, 2 * mib).unwrap();
    let s = mover::internals::scan::scan_tree(&root, &cache, opts()).unwrap();
    mover::internals::scan::manifest_matches_the_tree(&s, &root);

    // 4. The mapping written again, nothing else: still read (mapped files
    //    are read whole for the session's life).
    map.write(3 << 20, &[0xc3; 10]);
    let s = mover::internals::scan::scan_tree(&root, &cache, opts()).unwrap();
    mover::internals::scan::manifest_matches_the_tree(&s, &root);
    drop(map);
}

/// Two daemons tracking one filesystem (Swarm nodes on one host, tests
/// side by side): the second's start leaves the first's session recording,
/// so the first still reads only what was written.
#[test]
fn a_second_daemon_on_the_filesystem_leaves_the_first_one_tracking() {
    use std::os::unix::fs::FileExt;
    let fs = Ext4::new();
    let mib = 1u64 << 20;
    let trees: Vec<(PathBuf, PathBuf)> = ["a", "b"]
        .iter()
        .map(|n| {
            let root = fs.mnt.join(n);
            std::fs::create_dir(&root).unwrap();
            std::fs::write(root.join("t.db"), vec![7u8; 4 << 20]).unwrap();
            (root, fs.mnt.join(format!("{n}.cache")))
        })
        .collect();
    let scan = |logs: &Arc<DirWrites>, (root, cache): &(PathBuf, PathBuf)| {
        let s = mover::internals::scan::scan_tree(root, cache, tracked(logs, root, cache)).unwrap();
        mover::internals::scan::manifest_matches_the_tree(&s, root);
        s
    };
    let (first, second): (Arc<DirWrites>, Arc<DirWrites>) = (Arc::default(), Arc::default());
    scan(&first, &trees[0]);
    std::thread::sleep(Duration::from_millis(20));
    // The second daemon starts recording the same filesystem.
    scan(&second, &trees[1]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(trees[0].0.join("t.db"))
        .unwrap();
    f.write_all_at(&[0xa1; 8192], mib).unwrap();
    let s = scan(&first, &trees[0]);
    assert_eq!(s.stats.bytes_tracked, 8192, "{:?}", s.stats);
    assert!(s.stats.bytes_hashed <= 2 * 64 * 1024, "{:?}", s.stats);
}

#[repr(align(4096))]
struct Aligned([u8; 8192]);

/// Options for a scan of `root` into `cache` that asks `logs` what was
/// written.
fn tracked(logs: &Arc<DirWrites>, root: &Path, cache: &Path) -> mover::ScanOptions {
    mover::ScanOptions {
        threads: 2,
        label: "t".into(),
        progress: Arc::new(mover::progress::NoProgress),
        changes: Some(logs.changes(root, cache).expect("ext4 is tracked")),
        copy_into: None,
    }
}

/// A tracker dropped ends its sessions: its drain thread holds it weakly
/// and lets it go, so the instance recording the filesystem is removed
/// (a thread holding it for ever left every test's instance recording
/// until the process ended, and a dropped tracker's for the daemon's life).
#[test]
fn a_dropped_tracker_removes_its_instance() {
    let fs = Ext4::new();
    let root = fs.mnt.join("data");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("t.db"), vec![7u8; 1 << 20]).unwrap();
    let st = rustix::fs::stat(&root).unwrap();
    let ours = own_instance_prefix(Device {
        major: rustix::fs::major(st.st_dev),
        minor: rustix::fs::minor(st.st_dev),
    });
    let instances = || -> Vec<String> {
        std::fs::read_dir(tracefs::root().unwrap().join("instances"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&ours))
            .collect()
    };
    let logs: Arc<DirWrites> = Arc::default();
    let cache = fs.mnt.join("cache");
    mover::internals::scan::scan_tree(&root, &cache, tracked(&logs, &root, &cache)).unwrap();
    // Past a drain or two: the thread has held the tracker.
    std::thread::sleep(DRAIN_EVERY * 3);
    let live = instances();
    assert_eq!(live.len(), 1, "one session recording: {live:?}");
    drop(logs);
    let deadline = Instant::now() + DRAIN_EVERY * 8;
    while !instances().is_empty() && Instant::now() < deadline {
        std::thread::sleep(DRAIN_EVERY / 5);
    }
    assert_eq!(
        instances(),
        Vec::<String>::new(),
        "the dropped tracker's instance is gone"
    );
}

/// A shared writable mapping of a file, held by a `python3` child (the
/// workspace forbids unsafe code, `mmap` included).
mod shared_map {
    use std::os::fd::AsRawFd;
    use std::process::{Child, Command, Stdio};
    pub(super) struct SharedMap {
        child: std::cell::RefCell<Child>,
    }
    impl SharedMap {
        /// A helper process maps the file shared and writable and writes
        /// through the mapping on request ("OFFSET HEXBYTES" lines).
        pub(super) fn new(f: &std::fs::File, len: usize) -> SharedMap {
            let fd = f.as_raw_fd();
            let script = format!(
                "import mmap,os,sys\n\
                 m=mmap.mmap({fd},{len},mmap.MAP_SHARED,mmap.PROT_READ|mmap.PROT_WRITE)\n\
                 for l in sys.stdin:\n\
                 \x20o,h=l.split()\n\
                 \x20b=bytes.fromhex(h)\n\
                 \x20m[int(o):int(o)+len(b)]=b\n\
                 \x20print('ok',flush=True)\n"
            );
            // The child inherits the descriptor (no CLOEXEC on a dup).
            let dup = rustix::io::fcntl_dupfd_cloexec(f, 100).unwrap();
            rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
            let script = script.replace(
                &format!("mmap({fd},"),
                &format!("mmap({},", dup.as_raw_fd()),
            );
            let child = Command::new("python3")
                .args(["-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            drop(dup);
            SharedMap {
                child: std::cell::RefCell::new(child),
            }
        }
        pub(super) fn write(&self, off: usize, bytes: &[u8]) {
            use std::io::{BufRead, Write};
            let mut c = self.child.borrow_mut();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(c.stdin.as_mut().unwrap(), "{off} {hex}").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(c.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ok");
        }
    }
    impl Drop for SharedMap {
        fn drop(&mut self) {
            let mut c = self.child.borrow_mut();
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}
