//! `daffe sync --dry-run` (issue 13, item 1): it lists what a run would
//! create, change and delete, with sizes, and leaves every byte where it
//! was: no destination, no state dir, no changed file. And
//! `migrate --connect-timeout 0` is a usage error, not a command that fails
//! every attempt.

use daffe_e2e::plugin::daffe_bin;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

/// Every path under `root` (and `root` itself) with its type, mode, size,
/// mtime in ns and content: two equal snapshots mean nothing changed.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u64, i64, i64, Vec<u8>)> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, (u32, u64, i64, i64, Vec<u8>)>) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let data = if m.is_file() {
            std::fs::read(p).unwrap()
        } else {
            Vec::new()
        };
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        out.insert(rel, (m.mode(), m.size(), m.mtime(), m.mtime_nsec(), data));
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn daffe(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(daffe_bin())
        .args(args)
        .args(paths)
        .output()
        .unwrap()
}

#[test]
fn dry_run_on_a_foreign_destination_lists_deletes_and_touches_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/new"), vec![1u8; 3000]).unwrap();
    std::fs::write(src.join("same"), b"same").unwrap();
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("precious"), vec![2u8; 5000]).unwrap();
    std::fs::write(dst.join("same"), b"same").unwrap();
    let (src0, dst0) = (snapshot(&src), snapshot(&dst));
    let state = t.path().join(".dst.daffe-state");

    // Without --delete a dry run is refused as the real run would be.
    let out = daffe(&["sync", "--dry-run"], &[&src, &dst]);
    assert!(!out.status.success(), "{out:?}");

    // With it, every would-be deletion is listed, with its size.
    let out = daffe(&["sync", "--dry-run", "--delete", "--json"], &[&src, &dst]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true, "{v}");
    let changes = v["changes"].as_array().unwrap();
    let find = |path: &str| {
        changes
            .iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in {v}"))
    };
    assert_eq!(find("precious")["action"], "delete");
    assert_eq!(find("precious")["size"], 5000);
    assert_eq!(find("d/new")["action"], "create");
    assert_eq!(find("d/new")["data_bytes"], 3000);
    assert_eq!(v["deleted"]["entries"], 1, "{v}");
    assert_eq!(v["deleted"]["bytes"], 5000, "{v}");

    // The human form says the same, one line per path.
    let out = daffe(&["sync", "-n", "--delete"], &[&src, &dst]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("delete") && l.ends_with("  precious")),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");

    // Byte for byte untouched, and no state dir appeared.
    assert_eq!(snapshot(&src), src0);
    assert_eq!(snapshot(&dst), dst0);
    assert!(!state.exists());

    // A dry run into a missing destination creates neither it nor its state.
    let missing = t.path().join("fresh");
    let out = daffe(&["sync", "--dry-run", "--json"], &[&src, &missing]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["created"]["bytes"], 3004, "{v}");
    assert!(!missing.exists());
    assert!(!t.path().join(".fresh.daffe-state").exists());

    // The real run then does what the dry run said.
    let out = daffe(&["sync", "--delete", "--json"], &[&src, &dst]);
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["deleted"], 1, "{s}");
    assert!(!dst.join("precious").exists());
}

#[test]
fn a_zero_connect_timeout_is_a_usage_error() {
    for zero in ["0", "0s", "0ms"] {
        let out = daffe(
            &[
                "migrate",
                "vol",
                "--to",
                "127.0.0.1:1",
                "--connect-timeout",
                zero,
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{zero}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--connect-timeout") && err.contains("zero"),
            "{err}"
        );
    }
}
