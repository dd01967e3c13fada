//! The space a volume uses, for `docker volume inspect`'s Status and
//! `daffe volume ls`: a mounted filesystem's used blocks (statvfs), an
//! unmounted image's allocated blocks, or a directory tree's allocated
//! blocks (du, hard links once, capped at [`MAX_ENTRIES`] and cached for
//! [`TTL`] so a `volume ls` over many large trees stays bounded).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A tree walk stops after this many entries; the result is then a lower
/// bound (`partial`).
pub(crate) const MAX_ENTRIES: u64 = 200_000;
/// How long a tree's measure is reused.
pub(crate) const TTL: Duration = Duration::from_secs(30);

/// Bytes used, and whether that is only a lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Used {
    pub(crate) bytes: u64,
    pub(crate) partial: bool,
}

/// How to measure a volume (decided from its Status facts; pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Measure {
    /// Walk the tree at this path.
    Tree(PathBuf),
    /// A filesystem mounted here: its used blocks.
    Mounted(PathBuf),
    /// An unmounted image file: its allocated blocks.
    Image(PathBuf),
}

/// What to measure for a volume of `format` whose data is at `path`, given
/// whether its filesystem is `mounted` and the `image` file, if any.
pub(crate) fn measure(
    format: &str,
    path: &Path,
    mounted: Option<bool>,
    image: Option<&str>,
) -> Option<Measure> {
    match (format, mounted, image) {
        ("dir", _, _) => Some(Measure::Tree(path.to_owned())),
        (_, Some(true), _) => Some(Measure::Mounted(path.to_owned())),
        (_, _, Some(img)) => Some(Measure::Image(PathBuf::from(img))),
        _ => None,
    }
}

/// Allocated bytes of the tree at `root` (not crossing into other
/// filesystems), at most `max_entries` entries looked at.
pub(crate) fn tree(root: &Path, max_entries: u64) -> Option<Used> {
    let top = std::fs::symlink_metadata(root).ok()?;
    let dev = top.dev();
    let mut used = Used {
        bytes: top.blocks() * 512,
        partial: false,
    };
    let mut seen_links = HashSet::new();
    let mut stack = vec![root.to_owned()];
    let mut entries = 0u64;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            entries += 1;
            if entries > max_entries {
                used.partial = true;
                return Some(used);
            }
            let Ok(m) = ent.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen_links.insert(m.ino()) {
                continue;
            }
            used.bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(ent.path());
            }
        }
    }
    Some(used)
}

/// Used bytes of the filesystem mounted at `path`.
pub(crate) fn mounted(path: &Path) -> Option<Used> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(Used {
        bytes: st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize,
        partial: false,
    })
}

/// Allocated bytes of a file (holes are free).
pub(crate) fn image(path: &Path) -> Option<Used> {
    let m = std::fs::metadata(path).ok()?;
    Some(Used {
        bytes: m.blocks() * 512,
        partial: false,
    })
}

/// Tree measures, reused for [`TTL`].
static TREES: Mutex<Option<HashMap<PathBuf, (Instant, Used)>>> = Mutex::new(None);

/// Carries out `m` (trees through the cache).
pub(crate) fn used(m: &Measure) -> Option<Used> {
    match m {
        Measure::Mounted(p) => mounted(p),
        Measure::Image(p) => image(p),
        Measure::Tree(p) => {
            let now = Instant::now();
            if let Some((at, u)) = TREES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .get(p)
                && now.duration_since(*at) < TTL
            {
                return Some(*u);
            }
            let u = tree(p, MAX_ENTRIES)?;
            let mut cache = TREES.lock().unwrap_or_else(|e| e.into_inner());
            let cache = cache.get_or_insert_with(HashMap::new);
            cache.retain(|_, (at, _)| now.duration_since(*at) < TTL);
            cache.insert(p.clone(), (now, u));
            Some(u)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_measured_follows_the_format_and_mount() {
        let p = Path::new("/v/data");
        assert_eq!(measure("dir", p, None, None), Some(Measure::Tree(p.into())));
        assert_eq!(
            measure("block", p, Some(true), Some("/v/img")),
            Some(Measure::Mounted(p.into()))
        );
        assert_eq!(
            measure("block", p, Some(false), Some("/v/img")),
            Some(Measure::Image("/v/img".into()))
        );
        assert_eq!(measure("block", p, Some(false), None), None);
    }

    #[test]
    fn a_tree_counts_allocated_blocks_hard_links_once_and_stops_at_the_cap() {
        let t = tempfile::tempdir().unwrap();
        let empty = tree(t.path(), 100).unwrap().bytes;
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), vec![1u8; 64 * 1024]).unwrap();
        let one = tree(t.path(), 100).unwrap();
        assert!(one.bytes >= empty + 64 * 1024, "{one:?}");
        assert!(!one.partial);
        std::fs::hard_link(t.path().join("d/f"), t.path().join("link")).unwrap();
        let linked = tree(t.path(), 100).unwrap();
        assert_eq!(linked.bytes, one.bytes, "a hard link is not counted twice");
        // A sparse file uses what it allocated, not its length.
        let sparse = std::fs::File::create(t.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        assert!(tree(t.path(), 100).unwrap().bytes < one.bytes + (1 << 20));
        assert!(tree(t.path(), 2).unwrap().partial);
    }
}
