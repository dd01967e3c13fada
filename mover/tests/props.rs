//! Property tests: random trees and random edit scripts; after every sync
//! the destination equals the source, bit for bit and attribute for
//! attribute.

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;
use mover::{Destination, Source, sync};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Edit {
    Write {
        file: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    Truncate {
        file: usize,
        len: u64,
    },
    Create {
        dir: usize,
        name: u8,
        len: usize,
        seed: u64,
    },
    Remove {
        file: usize,
    },
    Chmod {
        file: usize,
        mode: u32,
    },
    Xattr {
        file: usize,
        v: u8,
    },
    Symlink {
        dir: usize,
        name: u8,
        target: u8,
    },
    Hardlink {
        file: usize,
        dir: usize,
        name: u8,
    },
    Mkdir {
        dir: usize,
        name: u8,
    },
    RemoveDir {
        dir: usize,
    },
    Sparse {
        dir: usize,
        name: u8,
        hole: u64,
        len: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u64..400_000, 1usize..70_000, any::<u64>()).prop_map(
            |(file, off, len, seed)| Edit::Write {
                file,
                off,
                len,
                seed
            }
        ),
        (any::<usize>(), 0u64..300_000).prop_map(|(file, len)| Edit::Truncate { file, len }),
        (any::<usize>(), any::<u8>(), 0usize..300_000, any::<u64>()).prop_map(
            |(dir, name, len, seed)| Edit::Create {
                dir,
                name,
                len,
                seed
            }
        ),
        any::<usize>().prop_map(|file| Edit::Remove { file }),
        (any::<usize>(), 0u32..0o7777).prop_map(|(file, mode)| Edit::Chmod {
            file,
            mode: mode | 0o400
        }),
        (any::<usize>(), any::<u8>()).prop_map(|(file, v)| Edit::Xattr { file, v }),
        (any::<usize>(), any::<u8>(), any::<u8>()).prop_map(|(dir, name, target)| Edit::Symlink {
            dir,
            name,
            target
        }),
        (any::<usize>(), any::<usize>(), any::<u8>())
            .prop_map(|(file, dir, name)| Edit::Hardlink { file, dir, name }),
        (any::<usize>(), any::<u8>()).prop_map(|(dir, name)| Edit::Mkdir { dir, name }),
        any::<usize>().prop_map(|dir| Edit::RemoveDir { dir }),
        (
            any::<usize>(),
            any::<u8>(),
            0u64..2_000_000,
            1usize..100_000
        )
            .prop_map(|(dir, name, hole, len)| Edit::Sparse {
                dir,
                name,
                hole,
                len
            }),
    ]
}

fn list(root: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if dirs {
            out.push(d.clone());
        }
        let mut es: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        es.sort();
        for p in es {
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if !dirs && md.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn name(n: u8) -> String {
    format!("n{:02x}", n % 24)
}

fn apply(root: &Path, e: &Edit) {
    let files = list(root, false);
    let dirs = list(root, true);
    let pick = |v: &Vec<PathBuf>, i: usize| v.get(i % v.len().max(1)).cloned();
    match e.clone() {
        Edit::Write {
            file,
            off,
            len,
            seed,
        } => {
            if let Some(p) = pick(&files, file) {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all_at(&bytes(len, seed), off).unwrap();
            }
        }
        Edit::Truncate { file, len } => {
            if let Some(p) = pick(&files, file) {
                fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len)
                    .unwrap();
            }
        }
        Edit::Create {
            dir,
            name: n,
            len,
            seed,
        } => {
            let p = pick(&dirs, dir).unwrap().join(name(n));
            if fs::symlink_metadata(&p).is_err() {
                fs::write(p, bytes(len, seed)).unwrap();
            }
        }
        Edit::Remove { file } => {
            if let Some(p) = pick(&files, file) {
                fs::remove_file(p).unwrap();
            }
        }
        Edit::Chmod { file, mode } => {
            if let Some(p) = pick(&files, file) {
                fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        Edit::Xattr { file, v } => {
            if let Some(p) = pick(&files, file) {
                rustix::fs::lsetxattr(&p, "user.prop", &[v; 3], rustix::fs::XattrFlags::empty())
                    .unwrap();
            }
        }
        Edit::Symlink {
            dir,
            name: n,
            target,
        } => {
            let p = pick(&dirs, dir).unwrap().join(name(n));
            if fs::symlink_metadata(&p).is_err() {
                std::os::unix::fs::symlink(name(target), p).unwrap();
            }
        }
        Edit::Hardlink { file, dir, name: n } => {
            let p = pick(&dirs, dir).unwrap().join(name(n));
            if let Some(f) = pick(&files, file)
                && fs::symlink_metadata(&p).is_err()
            {
                fs::hard_link(f, p).unwrap();
            }
        }
        Edit::Mkdir { dir, name: n } => {
            let p = pick(&dirs, dir).unwrap().join(name(n));
            if fs::symlink_metadata(&p).is_err() {
                fs::create_dir(p).unwrap();
            }
        }
        Edit::RemoveDir { dir } => {
            let d = pick(&dirs, dir).unwrap();
            if d != root {
                fs::remove_dir_all(d).unwrap();
            }
        }
        Edit::Sparse {
            dir,
            name: n,
            hole,
            len,
        } => {
            let p = pick(&dirs, dir).unwrap().join(name(n));
            if fs::symlink_metadata(&p).is_err() {
                write_sparse(&p, hole + len as u64 + 8192, &[(hole, len)], hole);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_trees_and_edit_scripts(initial in prop::collection::vec(edit(), 1..25),
                                     rounds in prop::collection::vec(prop::collection::vec(edit(), 1..12), 1..4)) {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(&src).unwrap();
        for e in &initial {
            apply(&src, e);
        }
        let o = opts(t.path());
        sync(&Source::Tree(src.clone()), &Destination::Tree(dst.clone()), &o).unwrap();
        assert_same_tree(&src, &dst);
        for edits in &rounds {
            for e in edits {
                apply(&src, e);
            }
            sync(&Source::Tree(src.clone()), &Destination::Tree(dst.clone()), &o).unwrap();
            assert_same_tree(&src, &dst);
        }
    }
}
