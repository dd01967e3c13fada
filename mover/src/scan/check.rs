//! A check for tests (the mover's and the plugin's, through
//! `mover::internals`): a scan's manifest against the tree it was made from.

use std::path::Path;

/// Every regular file under `root` is what the scan's manifest says: each
/// chunk's hash matches the bytes there, bytes no chunk covers are zeros.
pub fn manifest_matches_the_tree(scan: &super::Scan, root: &Path) {
    use crate::chunk::ChunkId;
    use crate::manifest::{Item, Kind, ManifestReader};
    use std::os::unix::ffi::OsStrExt;
    let mut r = ManifestReader::new(std::io::BufReader::new(
        std::fs::File::open(&scan.manifest).unwrap(),
    ))
    .unwrap();
    let mut cur: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = None;
    let check = |c: &mut Option<(Vec<u8>, Vec<u8>, Vec<u8>)>| {
        if let Some((path, want, got)) = c.take() {
            let first = want.iter().zip(&got).position(|(a, b)| a != b);
            assert!(
                first.is_none(),
                "{} differs from its manifest at byte {first:?}",
                String::from_utf8_lossy(&path)
            );
        }
    };
    while let Some(item) = r.next().unwrap() {
        match item {
            Item::Entry(e) => {
                check(&mut cur);
                if e.kind == Kind::File {
                    let bytes =
                        std::fs::read(root.join(std::ffi::OsStr::from_bytes(&e.path))).unwrap();
                    assert_eq!(bytes.len() as u64, e.size);
                    let zeros = vec![0u8; bytes.len()];
                    cur = Some((e.path.clone(), bytes, zeros));
                }
            }
            Item::Chunk(c) => {
                let (_, want, got) = cur.as_mut().expect("a chunk of a file");
                let (a, b) = (
                    usize::try_from(c.offset).unwrap(),
                    usize::try_from(c.end()).unwrap(),
                );
                assert_eq!(ChunkId::of(&want[a..b]), c.id, "chunk at {a} is stale");
                got[a..b].copy_from_slice(&want[a..b]);
            }
        }
    }
    check(&mut cur);
}
