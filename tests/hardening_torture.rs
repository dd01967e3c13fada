//! Issue 12, crash torture, the short version CI runs: `bench/torture.sh`
//! with 8 runs of a 32 MB tree, each `daffe sync` killed with SIGKILL at a
//! random point or crashed at a journal write (after a flush, or in one with
//! a torn tail: `DAFFE_FAILPOINT`, the test build's crash points; the script
//! fails if none fired); the destination must then equal the source and a
//! rerun fetch nothing. The full size (200 x 256 MB) is the script's default.

use daffe_e2e::hosts::daffe_bin;
use std::process::Command;

#[test]
fn a_receiver_killed_at_random_points_ends_identical_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/torture.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["8", "32"])
        .env("DAFFE", daffe_bin())
        .env("TORTURE_DIR", dir.path().join("t"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok: 8 runs"),
        "torture failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
