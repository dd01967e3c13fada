//! Exit codes (issue 13, item 12; README "Exit codes"): usage 2, not found
//! 3, remote failure 5, against the real binary; and the old flag spellings
//! still work (hidden aliases).

use daffe_e2e::plugin::{Plugin, daffe_bin};
use std::process::Command;

fn code(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(daffe_bin()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn usage_not_found_and_remote_failures_have_their_own_codes() {
    // 2: the command line is wrong.
    assert_eq!(code(&["volume", "ls", "--bogus"]).0, Some(2));
    assert_eq!(code(&["sync"]).0, Some(2));
    // 5: the daemon cannot be reached.
    let t = tempfile::tempdir().unwrap();
    let gone = t.path().join("gone.sock");
    let gone = gone.to_str().unwrap();
    let (c, text) = code(&["volume", "ls", "--control-socket", gone]);
    assert_eq!(c, Some(5), "{text}");
    let (c, text) = code(&["status", "--control-socket", gone]);
    assert_eq!(c, Some(5), "{text}");
    // 3: no such source.
    let missing = t.path().join("missing");
    let dst = t.path().join("dst");
    let (c, text) = code(&["sync", missing.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(c, Some(3), "{text}");
    // 3: no such volume.
    let p = Plugin::start();
    let out = p.daffe(&["volume", "inspect", "nosuch"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn the_old_flag_spellings_still_work() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let (c, text) = code(&["agent", "init", "--dir", a, "--name", "host-a"]);
    assert_eq!(c, Some(0), "{text}");
    let (c, text) = code(&[
        "agent", "issue", "--ca-dir", a, "--name", "host-b", "--out", b,
    ]);
    assert_eq!(c, Some(0), "{text}");
    assert!(std::path::Path::new(b).join("node.pem").exists());
    // The new ones, and only they, are in --help.
    let (_, help) = code(&["agent", "issue", "--help"]);
    assert!(
        help.contains("--tls-dir") && help.contains("--node"),
        "{help}"
    );
    assert!(!help.contains("--ca-dir <"), "{help}");
    let (_, help) = code(&["migrate", "--help"]);
    assert!(
        help.contains("--node <") && !help.contains("--name <"),
        "{help}"
    );
}
