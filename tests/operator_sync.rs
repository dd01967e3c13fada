//! `daffe sync --dry-run` (issue 13, item 1): it lists what a run would
//! create, change and delete, with sizes, and leaves every byte where it
//! was: no destination, no state dir, no changed file. And
//! `migrate --connect-timeout 0` is a usage error, not a command that fails
//! every attempt. And `daffe sync` of a dir volume's directory reads a
//! rewritten file only where the daemon saw it written (issue 11).

use daffe_e2e::plugin::{Plugin, daffe_bin};
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

/// Rewrites `n` 4 KiB pages of `file` in place, spread over it.
fn rewrite_pages(file: &Path, n: u64, seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let stride = f.metadata().unwrap().len() / n;
    for i in 0..n {
        f.write_all_at(&[seed ^ i.to_le_bytes()[0]; 4096], i * stride + 4096)
            .unwrap();
    }
}

#[test]
fn sync_of_a_dir_volume_reads_only_where_the_daemon_saw_writes() {
    let p = Plugin::start();
    let (code, reply) = p.call(
        "/VolumeDriver.Create",
        &serde_json::json!({"Name": "pages"}),
    );
    assert_eq!(code, 200, "{reply}");
    let vol = std::path::PathBuf::from(p.inspect("pages")["mountpoint"].as_str().unwrap());
    let file = vol.join("data.bin");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    std::fs::write(&file, data).unwrap();
    let t = tempfile::tempdir().unwrap();
    let dst = t.path().join("copy");
    let sync = |socket: &Path| -> serde_json::Value {
        let out = Command::new(daffe_bin())
            .args(["sync", "--json"])
            .arg(&vol)
            .arg(&dst)
            .env("DAFFE_CONTROL_SOCKET", socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read(dst.join("data.bin")).unwrap(),
            std::fs::read(&file).unwrap()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let hashed = |v: &serde_json::Value| v["bytes_hashed"].as_u64().unwrap();
    let daemon = p.control_socket();
    let pause = || std::thread::sleep(std::time::Duration::from_millis(2100));

    // The first sync reads all of it (the tracker starts with it).
    assert_eq!(hashed(&sync(&daemon)), 16 << 20);
    // 64 scattered pages: the file switches to page-sized chunks (read
    // whole once, as without the daemon).
    pause();
    rewrite_pages(&file, 64, 1);
    assert_eq!(hashed(&sync(&daemon)), 16 << 20);
    // Then only the chunks around the pages written are read.
    pause();
    rewrite_pages(&file, 64, 2);
    let v = sync(&daemon);
    assert!(hashed(&v) <= 64 * (64 << 10), "{v:#}");
    assert!(hashed(&v) >= 64 * 4096, "{v:#}");
    // The same change with no daemon to ask: the whole file.
    pause();
    rewrite_pages(&file, 64, 3);
    assert_eq!(hashed(&sync(&t.path().join("no-daemon.sock"))), 16 << 20);

    // The daemon's tracefs instance (`daffe-fs-MAJ-MIN-PID-RANDOM`) records
    // every write of the filesystem. A killed daemon's stays until the next
    // daemon starts; a stopped daemon removes its own.
    let mut p = p;
    let first = p.pid();
    assert!(
        !tracking_of(first).is_empty(),
        "the daemon tracks the volume"
    );
    p.kill9();
    assert!(!tracking_of(first).is_empty(), "kill -9 runs no cleanup");
    p.start_again();
    assert!(
        tracking_of(first).is_empty(),
        "a killed daemon's tracking outlived the next start: {:?}",
        tracking_of(first)
    );
    sync(&daemon);
    let second = p.pid();
    assert!(!tracking_of(second).is_empty(), "the new daemon tracks");
    p.stop();
    assert!(
        tracking_of(second).is_empty(),
        "a stopped daemon left its tracking: {:?}",
        tracking_of(second)
    );
}

/// The dir write tracker's tracefs instances of the daemon with `pid`.
fn tracking_of(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/kernel/tracing/instances") else {
        panic!("tracefs is needed (root, as CI is)");
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("daffe-fs-")
                .is_some_and(|r| r.split('-').nth(2) == Some(pid.to_string().as_str()))
        })
        .collect()
}
