//! Test helpers: build trees with every kind of entry, and snapshot a tree
//! (data, holes, metadata, xattrs, hardlink groups) to compare two of them.
#![allow(dead_code)]

#[cfg(feature = "net")]
pub mod net;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use mover::internals::fsmeta;

/// Everything that must match between source and destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub size: u64,
    pub data: Option<[u8; 32]>,
    pub extents: Vec<(u64, u64)>,
    pub target: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// First path (in sorted order) of the same inode, for hardlinks.
    pub link_group: Vec<u8>,
}

pub fn fail_unless_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (CI runs tests as root): devices, chown, trusted.* xattrs"
    );
}

/// Snapshot of a tree, keyed by relative path bytes ("" = root).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut paths = vec![Vec::new()];
    let mut all = Vec::new();
    while let Some(rel) = paths.pop() {
        let full = join(root, &rel);
        let md = std::fs::symlink_metadata(&full).unwrap();
        if md.is_dir() {
            for e in std::fs::read_dir(&full).unwrap() {
                let e = e.unwrap();
                let mut p = rel.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(e.file_name().as_bytes());
                paths.push(p);
            }
        }
        all.push(rel);
    }
    all.sort();
    for rel in all {
        let full = join(root, &rel);
        let md = std::fs::symlink_metadata(&full).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chr"
        } else if ft.is_block_device() {
            "blk"
        } else if ft.is_socket() {
            continue;
        } else {
            "file"
        };
        let link_group = if ft.is_file() && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        } else {
            rel.clone()
        };
        let (data, extents) = if ft.is_file() {
            let f = File::open(&full).unwrap();
            let ext = fsmeta::data_extents(f.as_fd(), md.size(), b"").unwrap();
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0;
            loop {
                let n = f.read_at(&mut buf, off).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
            (Some(*h.finalize().as_bytes()), ext)
        } else {
            (None, vec![])
        };
        let target = if ft.is_symlink() {
            std::fs::read_link(&full)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            vec![]
        };
        let xattrs = if ft.is_symlink() {
            let dir = File::open(full.parent().unwrap()).unwrap();
            fsmeta::read_xattrs(
                fsmeta::XTarget::Link {
                    dir: dir.as_fd(),
                    name: full.file_name().unwrap(),
                },
                b"",
            )
            .unwrap()
        } else if ft.is_file() || ft.is_dir() {
            let f = File::open(&full).unwrap();
            fsmeta::read_xattrs(fsmeta::XTarget::Fd(f.as_fd()), b"").unwrap()
        } else {
            let dir = File::open(full.parent().unwrap()).unwrap();
            fsmeta::read_xattrs(
                fsmeta::XTarget::Link {
                    dir: dir.as_fd(),
                    name: full.file_name().unwrap(),
                },
                b"",
            )
            .unwrap()
        };
        out.insert(
            rel.clone(),
            Node {
                kind: kind.into(),
                mode: if ft.is_symlink() {
                    0
                } else {
                    md.mode() & 0o7777
                },
                uid: md.uid(),
                gid: md.gid(),
                mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
                size: if ft.is_file() { md.size() } else { 0 },
                data,
                extents,
                target,
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    md.rdev()
                } else {
                    0
                },
                xattrs,
                link_group,
            },
        );
    }
    out
}

pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Asserts two trees are equal, bit for bit and attribute for attribute.
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let a = snapshot(src);
    let b = snapshot(dst);
    let ka: Vec<_> = a
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let kb: Vec<_> = b
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(ka, kb, "different entries");
    for (k, na) in &a {
        let nb = &b[k];
        assert_eq!(na, nb, "entry {:?} differs", String::from_utf8_lossy(k));
    }
}

/// Sets mtime (ns) without following symlinks.
pub fn set_mtime(p: &Path, ns: i128) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: i64::try_from(ns / 1_000_000_000).unwrap(),
            tv_nsec: (ns % 1_000_000_000) as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes a sparse file: data at each (offset, len), holes elsewhere, total size.
pub fn write_sparse(p: &Path, size: u64, data: &[(u64, usize)], seed: u64) {
    let f = File::create(p).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in data.iter().enumerate() {
        f.write_all_at(&bytes(len, seed + i as u64), off).unwrap();
    }
}

/// Options that keep state and caches inside a test dir.
pub fn opts(base: &Path) -> mover::SyncOptions {
    mover::SyncOptions::default()
        .with_state_dir(Some(base.join("state")))
        .with_cache_dir(Some(base.join("cache")))
}

/// Attaches `backing` to a free loop device; returns the device's path.
/// The caller detaches it (`losetup -d`).
pub fn losetup(backing: &Path) -> String {
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(backing)
        .output()
        .expect("losetup runs");
    assert!(
        out.status.success(),
        "losetup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Scans `src` with two threads and no progress output, for a round.
pub fn scan_sender(src: &mover::Source, cache: &Path) -> mover::Sender {
    mover::Sender::scan(
        src,
        cache,
        mover::internals::scan::ScanOptions {
            threads: 2,
            label: "t".into(),
            progress: std::sync::Arc::new(mover::progress::NoProgress),
            changes: None,
            copy_into: None,
        },
    )
    .unwrap()
}
