//! `daffe migrate` to an agent it cannot reach fails within
//! `--connect-timeout` (default 5 s), saying which address and why, instead
//! of retrying for the reconnect deadline (5 minutes).

use daffe_e2e::plugin::{Plugin, daffe_bin};
use serde_json::json;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A daemon with volume `vol`, and TLS files for this node.
fn setup() -> (Plugin, tempfile::TempDir) {
    let p = Plugin::start();
    let (st, r) = p.call("/VolumeDriver.Create", &json!({"Name": "vol", "Opts": {}}));
    assert_eq!(st, 200, "{r}");
    let tls = tempfile::tempdir().unwrap();
    let out = Command::new(daffe_bin())
        .args(["agent", "init", "--name", "host-a", "--dir"])
        .arg(tls.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (p, tls)
}

fn migrate(p: &Plugin, tls: &tempfile::TempDir, to: &str, extra: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(daffe_bin())
        .args([
            "migrate",
            "vol",
            "--to",
            to,
            "--name",
            "host-a",
            "--tls-dir",
        ])
        .arg(tls.path())
        .arg("--control-socket")
        .arg(p.control_socket())
        .args(extra)
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn a_refused_port_fails_at_once_with_the_address() {
    let (p, tls) = setup();
    // A port nothing listens on: bind one, then close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = format!("127.0.0.1:{port}");
    let (out, took) = migrate(&p, &tls, &to, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot reach {to} (connection refused)")),
        "{err}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}: {err}");
    assert!(!err.contains("retrying"), "{err}");
    // Nothing changed on the source.
    assert_eq!(p.inspect("vol")["status"]["state"], "ready");
}

#[test]
fn a_listener_that_never_answers_tls_fails_within_the_connect_timeout() {
    let (p, tls) = setup();
    // Accepts and holds every connection, sending nothing (a wrong service
    // or a hung host): TCP succeeds, the TLS handshake never completes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let (out, took) = migrate(&p, &tls, &to, &["--connect-timeout", "2s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot reach {to} (timed out")),
        "{err}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}: {err}");
    assert!(took < Duration::from_secs(5), "{took:?}: {err}");
    // The default is 5 s.
    let (out, took) = migrate(&p, &tls, &to, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach {to} (timed out")),
        "{err}"
    );
    assert!(took >= Duration::from_secs(5), "{took:?}: {err}");
    assert!(took < Duration::from_secs(8), "{took:?}: {err}");
    assert_eq!(p.inspect("vol")["status"]["state"], "ready");
}

#[test]
fn a_bad_read_limit_fails_at_once_naming_its_flag() {
    let (p, tls) = setup();
    for flag in ["--read-limit", "--first-round-read-limit"] {
        let (out, took) = migrate(&p, &tls, "127.0.0.1:1", &[flag, "fast"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("{flag}: ")), "{flag}: {err}");
        assert!(
            !err.contains("cannot reach"),
            "checked before dialing: {err}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}: {err}");
    }
    assert_eq!(p.inspect("vol")["status"]["state"], "ready");
}
