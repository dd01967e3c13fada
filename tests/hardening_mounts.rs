//! Issue 12, finding 14: mount detection compared path strings with
//! /proc/self/mountinfo, which shows resolved paths. With a data root
//! reached through a symlink, unmount was skipped (the loop device leaked),
//! a second Mount stacked another loop mount, and Remove deleted through the
//! live mount. A stale mount of another image at a volume's mountpoint was
//! reused as if it were the volume's own.
//!
//! These tests drive `daffe serve` over the VolumeDriver socket directly (no
//! Docker engine needed), with the data root a symlink to a directory.

use daffe_e2e::plugin::{call_socket, daffe_bin, unmount_under};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon whose data root is `DIR/link`, a symlink to `DIR/real`.
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("daffe-f14-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let log = std::fs::File::create(dir.path().join("daffe.log")).unwrap();
        let child = Command::new(daffe_bin())
            .arg("serve")
            .arg("--socket")
            .arg(dir.path().join("d.sock"))
            .arg("--control-socket")
            .arg(dir.path().join("c.sock"))
            .arg("--data-root")
            .arg(dir.path().join("link"))
            .env("DAFFE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Self { dir, child };
        let t = Instant::now();
        while !d.dir.path().join("c.sock").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "not ready:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daffe.log")).unwrap_or_default()
    }

    fn real(&self) -> PathBuf {
        self.dir.path().join("real")
    }

    fn call(&self, endpoint: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        call_socket(
            &self.dir.path().join("d.sock"),
            "POST",
            endpoint,
            &body.to_string(),
        )
    }

    fn ok(&self, endpoint: &str, body: serde_json::Value) -> serde_json::Value {
        let (st, r) = self.call(endpoint, body.clone());
        assert!(
            st == 200 && r["Err"].as_str().unwrap_or("").is_empty(),
            "{endpoint} {body}: {st} {r}\n{}",
            self.log()
        );
        r
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.real());
    }
}

/// Mounts at `dir`, by the resolved path mountinfo shows.
fn mounts_at(dir: &Path) -> usize {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let want = want.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(b.trim_end()).starts_with(&dir)
        {
            found.push(format!(
                "{}: {}",
                e.file_name().to_string_lossy(),
                b.trim_end()
            ));
        }
    }
    found
}

#[test]
fn finding_14_a_symlinked_data_root_unmounts_and_removes_cleanly() {
    let d = Daemon::start();
    let data = d.real().join("local/gold/v/data");
    d.ok(
        "/VolumeDriver.Create",
        json!({"Name": "v@gold", "Opts": {"size": "64M"}}),
    );
    for round in 0..2 {
        d.ok("/VolumeDriver.Mount", json!({"Name": "v@gold", "ID": "a"}));
        assert_eq!(mounts_at(&data), 1, "round {round}: one mount after Mount");
        std::fs::write(data.join("f"), b"x").unwrap();
        d.ok(
            "/VolumeDriver.Unmount",
            json!({"Name": "v@gold", "ID": "a"}),
        );
        assert_eq!(
            mounts_at(&data),
            0,
            "round {round}: Unmount left the volume mounted"
        );
        assert_eq!(
            loops_under(&d.real()),
            Vec::<String>::new(),
            "round {round}: loop leak"
        );
    }
    d.ok("/VolumeDriver.Remove", json!({"Name": "v@gold"}));
    assert!(
        !data.parent().unwrap().exists(),
        "Remove left the volume's directory"
    );
    assert_eq!(loops_under(&d.real()), Vec::<String>::new());
}

#[test]
fn finding_14_a_stale_mount_of_another_image_is_not_reused() {
    let d = Daemon::start();
    let data = d.real().join("local/gold/w/data");
    d.ok(
        "/VolumeDriver.Create",
        json!({"Name": "w@gold", "Opts": {"size": "64M"}}),
    );
    // A stale mount from an earlier life: another image, mounted at the
    // volume's mountpoint.
    let other = d.dir.path().join("other.ext4");
    let f = std::fs::File::create(&other).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&other)
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(data.join("theirs"), b"x").unwrap();

    let (st, r) = d.call("/VolumeDriver.Mount", json!({"Name": "w@gold", "ID": "a"}));
    let err = r["Err"].as_str().unwrap_or("");
    assert!(
        st != 200 || !err.is_empty(),
        "Mount reused another image's mount: {st} {r}"
    );
    assert!(err.contains("not this volume's image"), "{err}");
    assert!(data.join("theirs").exists(), "the other mount was touched");
}
