//! `daffe status` and the health routes (issue 13, items 7 and 9) against a
//! running `daffe serve` and a running `daffe agent`.

use daffe_e2e::plugin::{Plugin, daffe_bin};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn status_reports_volumes_mounts_and_the_last_error() {
    let p = Plugin::start();
    for v in ["a", "b"] {
        let (st, r) = p.call("/VolumeDriver.Create", &json!({"Name": v, "Opts": {}}));
        assert_eq!(st, 200, "{r}");
    }
    let (st, r) = p.call("/VolumeDriver.Mount", &json!({"Name": "a", "ID": "c1"}));
    assert_eq!(st, 200, "{r}");
    // Removing a mounted volume is refused, and logged as a warning.
    let (st, _) = p.call("/VolumeDriver.Remove", &json!({"Name": "a"}));
    assert_ne!(st, 200);

    let out = p.daffe(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = json_out(&out);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["pid"], p.pid(), "{v}");
    assert_eq!(v["backend"], "local", "{v}");
    assert_eq!(v["volumes_total"], 2, "{v}");
    assert_eq!(v["volumes"]["ready"], 2, "{v}");
    assert_eq!(v["mounts"], json!({"volumes": 1, "total": 1}), "{v}");
    assert_eq!(v["moves"], json!([]), "{v}");
    let errors = v["last_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["level"] == "WARN" && e["message"].as_str().unwrap().contains('a')),
        "{v}"
    );

    // The text form: one section a line, no JSON.
    let out = p.daffe(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backend local"), "{text}");
    assert!(text.contains("volumes: 2 (ready 2)"), "{text}");
    assert!(text.contains("mounts:  1 on 1 volume(s)"), "{text}");
    assert!(!text.contains('{'), "{text}");

    // Healthy daemon: exit code 0.
    let out = p.daffe(&["status", "--health", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_out(&out)["healthy"], true);
}

#[test]
fn health_fails_with_the_reason_when_nothing_answers() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(daffe_bin())
        .args(["status", "--health", "--control-socket"])
        .arg(t.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unhealthy") && err.contains("none.sock"),
        "{err}"
    );
}

/// Runs `daffe agent` on a free local port for `control`; (child, address).
fn agent(tls: &Path, control: &Path) -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(daffe_bin())
        .args(["agent", "--listen", &addr, "--name", "host-b", "--tls-dir"])
        .arg(tls)
        .arg("--control-socket")
        .arg(control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, addr)
}

/// `daffe status --health --agent ADDR`; with `wait`, retried while the
/// agent is not listening yet (for up to 10 s).
fn agent_health(tls: &Path, addr: &str, wait: bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(if wait { 10 } else { 0 });
    loop {
        let out = Command::new(daffe_bin())
            .args(["status", "--health", "--json", "--agent", addr, "--tls-dir"])
            .arg(tls)
            .output()
            .unwrap();
        // The agent may not be listening yet: wait for it, not for a verdict.
        let refused = String::from_utf8_lossy(&out.stdout).contains("connection refused");
        if !refused || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_health_checks_the_agent_and_its_daemon() {
    let p = Plugin::start();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let run = |args: &[&str], dirs: &[&Path]| {
        let out = Command::new(daffe_bin())
            .args(args)
            .args(dirs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["agent", "init", "--name", "host-a", "--dir"], &[&a]);
    let out = Command::new(daffe_bin())
        .args(["agent", "issue", "--name", "host-b", "--ca-dir"])
        .arg(&a)
        .arg("--out")
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // An agent whose daemon answers: healthy.
    let (mut good, addr) = agent(&b, &p.control_socket());
    let out = agent_health(&a, &addr, true);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json_out(&out);
    assert_eq!(v["node"], "host-b", "{v}");
    good.kill().unwrap();
    good.wait().unwrap();

    // An agent whose daemon is gone: unhealthy, and it says so.
    let (mut orphan, addr) = agent(&b, &t.path().join("gone.sock"));
    let out = agent_health(&a, &addr, true);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let reason = json_out(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("its daemon is not"), "{reason}");
    orphan.kill().unwrap();
    orphan.wait().unwrap();

    // No agent at all: unhealthy, with the address.
    let out = agent_health(&a, &addr, false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let reason = json_out(&out)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains(&format!("cannot reach {addr}")), "{reason}");
}
