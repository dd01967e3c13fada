//! `daffe placement` end to end through the binary, no Docker: observe a
//! log placed through a test `.mmdb`, follow it across a rotation, advise,
//! simulate a small scenario, forward a port for a grace period.

use placement::testing::mmdb::{MmdbWriter, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn daffe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_daffe"));
    c.env("DAFFE_LOG", "warn");
    c
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// 192.0.2.0/24 in Munich, 198.51.100.0/24 in Tokyo.
fn write_db(p: &Path) {
    let loc = |lat: f64, lon: f64| {
        Value::map([(
            "location",
            Value::map([
                ("latitude", Value::F64(lat)),
                ("longitude", Value::F64(lon)),
            ]),
        )])
    };
    let mut w = MmdbWriter::new("daffe-test-City");
    w.insert("192.0.2.0/24".parse().unwrap(), loc(48.14, 11.58));
    w.insert("198.51.100.0/24".parse().unwrap(), loc(35.68, 139.7));
    std::fs::write(p, w.to_bytes()).unwrap();
}

/// Combined-format lines: `tokyo` from Tokyo, `munich` from Munich, one
/// per second from `start` (Unix seconds).
fn lines(start: i64, tokyo: usize, munich: usize) -> String {
    let mut s = String::new();
    for i in 0..tokyo + munich {
        let ip = if i < tokyo {
            "198.51.100.7"
        } else {
            "192.0.2.9"
        };
        let t = start + i64::try_from(i).expect("a test writes few lines");
        let (d, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        // 2026-12-01 is day 20788 since the epoch.
        assert_eq!(d, 20_788, "the test writes times on 2026-12-01 only");
        s.push_str(&format!(
            "{ip} - - [01/Dec/2026:{:02}:{:02}:{:02} +0000] \"GET / HTTP/1.1\" 200 12 \"-\" \"t\"\n",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        ));
    }
    s
}

/// 2026-12-01T10:00:00Z
const T0: i64 = 1_796_119_200;

#[test]
fn observe_then_advise_moves_a_service_toward_its_clients() {
    let d = tempfile::tempdir().unwrap();
    let (db, log, state) = (
        d.path().join("geo.mmdb"),
        d.path().join("access.log"),
        d.path().join("state"),
    );
    write_db(&db);
    let mut text = lines(T0, 900, 100);
    text.push_str("not a log line\n10.1.2.3 - - [01/Dec/2026:10:20:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"t\"\n");
    std::fs::write(&log, text).unwrap();
    let observe = || {
        let out = daffe()
            .args([
                "placement",
                "observe",
                "--service",
                "web",
                "--json",
                "--log",
            ])
            .arg(&log)
            .arg("--mmdb")
            .arg(&db)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = observe();
    let v = json(&out);
    assert_eq!(v["lines"], 1002);
    assert_eq!(v["malformed"], 1);
    assert_eq!(v["unknown"], 1);
    assert_eq!(v["requests_by_region"]["ap-northeast-1"], 900);
    assert_eq!(v["requests_by_region"]["eu-central-1"], 100);
    // Observing again reads nothing twice.
    let again = observe();
    assert_eq!(json(&again)["lines"], 1002);

    let advise = |region: &str| {
        daffe()
            .args(["placement", "advise", "web", "--json", "--region", region])
            .args(["--sites", "us-east-1,eu-central-1,ap-northeast-1"])
            .args([
                "--volume-size",
                "1G",
                "--throughput",
                "10M",
                "--dirty-rate",
                "1M",
            ])
            .args(["--at", &(T0 + 1200).to_string()])
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let out = advise("us-east-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = json(&out);
    assert_eq!(a["best_now"], "ap-northeast-1", "{a:#}");
    assert!(
        a["at_best"]["mean_ms"].as_f64().unwrap() < a["at_current"]["mean_ms"].as_f64().unwrap()
    );
    // p50 is the Tokyo majority's; p95 is the Munich tenth's, which Tokyo
    // serves worse than Virginia does: the tail a move can cost.
    assert!(a["at_best"]["p50_ms"].as_f64().unwrap() < a["at_current"]["p50_ms"].as_f64().unwrap());
    assert!(a["at_best"]["p95_ms"].as_f64().unwrap() > a["at_current"]["p95_ms"].as_f64().unwrap());
    assert!(a["move_cost"]["downtime_s"].as_f64().unwrap() > 0.0);
    assert_eq!(a["decision"]["action"], "move", "{a:#}");
    assert_eq!(a["decision"]["to"], "ap-northeast-1");
    // Already there: stay.
    let a = json(&advise("ap-northeast-1"));
    assert_eq!(a["decision"]["action"], "stay", "{a:#}");
    // Text form names the decision.
    let text = daffe()
        .args([
            "placement",
            "advise",
            "web",
            "--region",
            "us-east-1",
            "--volume-size",
            "1G",
        ])
        .args(["--throughput", "10M", "--at", &(T0 + 1200).to_string()])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("decision: move to"));
    // Bad input: clear errors, exit 1.
    for args in [
        vec![
            "placement",
            "advise",
            "nobody",
            "--region",
            "us-east-1",
            "--volume-size",
            "1G",
            "--throughput",
            "1M",
        ],
        vec![
            "placement",
            "advise",
            "web",
            "--region",
            "moon-1",
            "--volume-size",
            "1G",
            "--throughput",
            "1M",
        ],
        vec!["placement", "advise", "web", "--region", "us-east-1"],
        vec![
            "placement",
            "advise",
            "../x",
            "--region",
            "us-east-1",
            "--volume-size",
            "1G",
            "--throughput",
            "1M",
        ],
    ] {
        let out = daffe()
            .args(&args)
            .arg("--json")
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            json(&out)["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}"
        );
    }
    // An IP log without a database is refused before reading anything.
    let out = daffe()
        .args(["placement", "observe", "--service", "w2", "--log"])
        .arg(&log)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mmdb"));
}

#[test]
fn observe_reads_json_lines_with_a_region_field_without_a_database() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("access.jsonl");
    std::fs::write(
        &log,
        "{\"edge\":{\"region\":\"eu-west-1\"},\"ts\":1796119200}\n\
         {\"edge\":{\"region\":\"eu-west-1\"},\"ts\":\"2026-12-01T10:00:01Z\"}\n\
         {\"edge\":{},\"ts\":1796119202}\n\
         [1, 2]\n",
    )
    .unwrap();
    let out = daffe()
        .args([
            "placement",
            "observe",
            "--service",
            "api",
            "--json",
            "--format",
            "json",
        ])
        .args([
            "--region-field",
            "edge.region",
            "--time-field",
            "ts",
            "--log",
        ])
        .arg(&log)
        .arg("--state-dir")
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["lines"], 4);
    // No region and no IP field value: malformed; not an object: malformed.
    assert_eq!(v["malformed"], 2);
    assert_eq!(v["requests_by_region"]["eu-west-1"], 2);
    assert_eq!(v["last_request"], 1_796_119_201.0);
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn observe_follows_a_growing_rotating_log_and_saves_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let (db, log, state) = (
        d.path().join("geo.mmdb"),
        d.path().join("access.log"),
        d.path().join("state"),
    );
    write_db(&db);
    std::fs::write(&log, lines(T0, 10, 0)).unwrap();
    let mut child = daffe()
        .args([
            "placement",
            "observe",
            "--service",
            "web",
            "--follow",
            "--json",
        ])
        .args(["--poll", "50ms", "--save-every", "50ms", "--log"])
        .arg(&log)
        .arg("--mmdb")
        .arg(&db)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let file = state.join("web.json");
    let seen = |n: u64| {
        let file = file.clone();
        move || {
            std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["counters"]["lines"] == n)
        }
    };
    wait_for("the first 10 lines", Duration::from_secs(20), seen(10));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(lines(T0 + 10, 0, 5).as_bytes())
        .unwrap();
    wait_for("5 appended lines", Duration::from_secs(20), seen(15));
    // logrotate's create mode: rename, new file.
    std::fs::rename(&log, d.path().join("access.log.1")).unwrap();
    std::fs::write(&log, lines(T0 + 15, 3, 0)).unwrap();
    wait_for("3 lines in the new file", Duration::from_secs(20), seen(18));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["requests_by_region"]["ap-northeast-1"], 13);
    assert_eq!(v["requests_by_region"]["eu-central-1"], 5);
}

#[test]
fn simulate_writes_a_table_and_three_plots() {
    let d = tempfile::tempdir().unwrap();
    let scn = d.path().join("s.toml");
    std::fs::write(
        &scn,
        r#"
        name = "two"
        mean_rps = 50
        step_s = 300
        sites = ["us-east-1", "eu-central-1"]
        [[region]]
        name = "us-east-1"
        weight = 1
        utc_offset_h = -5
        [[region]]
        name = "eu-central-1"
        weight = 1
        utc_offset_h = 1
        [moves]
        volume_gib = 1
        dirty_mib_per_s = 1
        throughput_mib_per_s = 10
        overhead_s = 0.5
        max_downtime_s = 1
        "#,
    )
    .unwrap();
    let out_dir = d.path().join("out");
    let out = daffe()
        .args(["placement", "simulate", "--json", "--scenario"])
        .arg(&scn)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let names: Vec<&str> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["static", "follow-the-sun", "daffe", "optimum"]);
    for p in ["latency.svg", "site.svg", "demand.svg"] {
        let body = std::fs::read_to_string(out_dir.join(p)).unwrap();
        assert!(body.starts_with("<svg"), "{p}");
        assert!(body.contains("daffe") || p == "demand.svg", "{p}");
    }
    // A scenario naming a region the table lacks is refused with its name.
    std::fs::write(
        &scn,
        std::fs::read_to_string(&scn)
            .unwrap()
            .replace("eu-central-1\"]", "mars-1\"]"),
    )
    .unwrap();
    let out = daffe()
        .args(["placement", "simulate", "--scenario"])
        .arg(&scn)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mars-1"));
}

#[test]
fn forward_relays_for_the_grace_period_then_refuses() {
    // The "new node": an echo server on 127.0.0.1.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    // A free port for the "old node".
    let old = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = daffe()
        .args([
            "placement",
            "forward",
            "--json",
            "--grace",
            "3s",
            "--drain",
            "5s",
        ])
        .args(["--listen", &old.to_string(), "--to", &to.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = None;
    wait_for("the forwarder to listen", Duration::from_secs(10), || {
        conn = TcpStream::connect(old).ok();
        conn.is_some()
    });
    let mut c = conn.unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    drop(c);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["accepted"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["connect_failed"], 0);
    let err = TcpStream::connect(old).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
