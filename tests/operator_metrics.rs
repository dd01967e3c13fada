//! Prometheus metrics (issue 13, item 8) against the real daemon: `GET
//! /metrics` on the control socket and on `--metrics-addr`; the counters move
//! by exactly the calls made, the gauges follow the volumes; a non-loopback
//! address is refused without `--metrics-public`.

use daffe_e2e::plugin::{Plugin, daffe_bin};
use serde_json::json;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.0 GET over `stream`: (status, content type, body).
fn get(mut s: impl Read + Write, path: &str) -> (u16, String, String) {
    write!(s, "GET {path} HTTP/1.0\r\nHost: daffe\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ct = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ct, body.to_owned())
}

fn scrape_socket(socket: &Path) -> String {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (status, ct, body) = get(s, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    body
}

/// The value of the series `series` (name and labels, as printed); 0 when
/// absent (a counter not incremented yet).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn calls(text: &str, endpoint: &str, result: &str) -> f64 {
    value(
        text,
        &format!(r#"daffe_driver_requests_total{{endpoint="{endpoint}",result="{result}"}}"#),
    )
}

#[test]
fn counters_move_by_the_calls_made_and_gauges_follow_the_volumes() {
    let p = Plugin::start();
    let name = daffe_e2e::unique("met");
    let before = scrape_socket(&p.control_socket());

    let ok = |endpoint: &str, body: serde_json::Value| {
        let (st, r) = p.call(endpoint, &body);
        assert_eq!(st, 200, "{endpoint}: {r}");
    };
    ok("/VolumeDriver.Create", json!({"Name": name, "Opts": {}}));
    ok("/VolumeDriver.Mount", json!({"Name": name, "ID": "c1"}));
    let mounted = scrape_socket(&p.control_socket());
    ok("/VolumeDriver.Unmount", json!({"Name": name, "ID": "c1"}));
    let (st, _) = p.call(
        "/VolumeDriver.Mount",
        &json!({"Name": "nosuch", "ID": "c2"}),
    );
    assert_eq!(st, 404);
    let after = scrape_socket(&p.control_socket());

    let delta =
        |endpoint, result| calls(&after, endpoint, result) - calls(&before, endpoint, result);
    assert_eq!(delta("Create", "ok"), 1.0, "{after}");
    assert_eq!(delta("Mount", "ok"), 1.0, "{after}");
    assert_eq!(delta("Unmount", "ok"), 1.0, "{after}");
    assert_eq!(delta("Mount", "not_found"), 1.0, "{after}");
    assert_eq!(delta("Remove", "ok"), 0.0, "{after}");
    // Every Mount is timed: two more in the histogram.
    let mounts_timed = |t: &str| {
        value(
            t,
            r#"daffe_driver_request_duration_seconds_count{endpoint="Mount"}"#,
        )
    };
    assert_eq!(mounts_timed(&after) - mounts_timed(&before), 2.0, "{after}");
    // Gauges: read at each scrape from the records.
    let ready = r#"daffe_volumes{profile="default",state="ready"}"#;
    assert_eq!(value(&before, ready), 0.0, "{before}");
    assert_eq!(value(&mounted, ready), 1.0, "{mounted}");
    assert_eq!(value(&mounted, "daffe_volume_mounts"), 1.0, "{mounted}");
    assert_eq!(value(&after, "daffe_volume_mounts"), 0.0, "{after}");
    // The scrapes themselves are control requests: two before `after`.
    let scrapes = r#"daffe_control_requests_total{op="metrics",result="ok"}"#;
    assert_eq!(
        value(&after, scrapes) - value(&before, scrapes),
        2.0,
        "{after}"
    );
    assert!(after.contains("daffe_build_info{version=\""), "{after}");
    assert!(after.ends_with("# EOF\n"), "{after}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn metrics_addr_serves_the_same_metrics_over_tcp() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let p = Plugin::start_with_env(None, vec![("DAFFE_METRICS_ADDR", addr.clone())]);
    let name = daffe_e2e::unique("tcp");
    let (st, r) = p.call("/VolumeDriver.Create", &json!({"Name": name, "Opts": {}}));
    assert_eq!(st, 200, "{r}");
    let connect = || {
        let s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let (status, ct, body) = get(connect(), "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert_eq!(calls(&body, "Create", "ok"), 1.0, "{body}");
    assert_eq!(
        value(&body, r#"daffe_volumes{profile="default",state="ready"}"#),
        1.0,
        "{body}"
    );
    // Nothing else is served there.
    assert_eq!(get(connect(), "/v1/volumes").0, 404);
}

#[test]
fn a_metrics_addr_beyond_loopback_needs_metrics_public() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let sock = t.path().join("d.sock");
    let started = Instant::now();
    let out = Command::new(daffe_bin())
        .args(["serve", "--metrics-addr", &format!("0.0.0.0:{port}")])
        .arg("--socket")
        .arg(&sock)
        .arg("--control-socket")
        .arg(t.path().join("c.sock"))
        .arg("--data-root")
        .arg(t.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a loopback address") && err.contains("--metrics-public"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // It never served: no VolumeDriver socket was made.
    assert!(!sock.exists());
    // --metrics-public alone (no address) is a usage error.
    let out = Command::new(daffe_bin())
        .args(["serve", "--metrics-public"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
