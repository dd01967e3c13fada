//! Prometheus metrics of what moves (issue 13, item 8, the rest): after a
//! real migration through the agent, the agent's counters moved by exactly
//! what the migration's report says it moved (bytes fetched, rounds, their
//! durations, the connection), and the source daemon observed one downtime;
//! after an EBS volume create against moto, the daemon counted its EC2
//! calls by operation and result.
//!
//! The short-lived commands' own figures (issue 13, item 8, the CLI side):
//! `daffe migrate`, `daffe snapshot push/pull` and `daffe sync` post their
//! final report to the local daemon, whose `/metrics` then shows exactly
//! the report's figures; with no daemon, or a dead one, the command still
//! succeeds.

use daffe_e2e::hosts::TwoHosts;
use daffe_e2e::moto::Moto;
use daffe_e2e::plugin::Plugin;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The value of `series` (name and labels, as printed); 0 when absent (a
/// counter not incremented yet).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// `GET /metrics` on a control socket.
fn scrape_socket(socket: &Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: daffe\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    assert!(head.contains(" 200 "), "{head}\n{body}");
    body.to_owned()
}

#[test]
fn a_migration_moves_the_agents_counters_by_what_its_report_says() {
    let mut h = TwoHosts::start("100mbit");
    // The agent's metrics on B's loopback (its own network namespace).
    h.start_agent(&["--metrics-addr", "127.0.0.1:9464"]);
    let agent = || h.curl_b("http://127.0.0.1:9464/metrics");
    let before = agent();
    let a_before = scrape_socket(&h.a.control_socket());
    h.write_on_a("counted", "head -c 3000000 /dev/urandom > /data/f");
    let (child, _rx) = h.migrate("counted", &[]);
    let report = h.finish(child);
    let rounds = report["rounds"].as_array().unwrap().len() as f64;
    let moved = report["bytes_moved"].as_u64().unwrap() as f64;
    assert!(moved >= 3_000_000.0, "{report}");

    // Connections close just after migrate exits: wait for the gauge.
    let t = Instant::now();
    let after = loop {
        let a = agent();
        if value(&a, "daffe_agent_connections_active") == 0.0 || t.elapsed().as_secs() > 10 {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta(r#"daffe_received_bytes_total{kind="fetched"}"#),
        moved,
        "fetched bytes vs the report's bytes_moved\n{after}"
    );
    assert!(
        delta(r#"daffe_received_bytes_total{kind="written"}"#) >= 3_000_000.0,
        "{after}"
    );
    // Every round's manifest lists the whole volume (3 MB of data, and
    // the first round fetched all of it).
    assert!(
        delta(r#"daffe_received_bytes_total{kind="scanned"}"#) >= rounds * 3_000_000.0,
        "{after}"
    );
    assert_eq!(
        delta(r#"daffe_receive_rounds_total{result="ok"}"#),
        rounds,
        "{after}"
    );
    assert_eq!(delta("daffe_receive_round_duration_seconds_count"), rounds);
    assert!(delta("daffe_receive_round_duration_seconds_sum") > 0.0);
    assert!(
        delta(r#"daffe_agent_connections_total{result="accepted"}"#) >= 1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "daffe_agent_connections_active"),
        0.0,
        "{after}"
    );

    // The source daemon saw one cutover: fence to the destination owning it.
    let a_after = scrape_socket(&h.a.control_socket());
    let a_delta = |series: &str| value(&a_after, series) - value(&a_before, series);
    assert_eq!(
        a_delta("daffe_migration_downtime_seconds_count"),
        1.0,
        "{a_after}"
    );
    let downtime = a_delta("daffe_migration_downtime_seconds_sum");
    let reported = report["downtime_ms"].as_f64().unwrap() / 1000.0;
    assert!(
        downtime > 0.0 && downtime <= reported + 1.0,
        "metric {downtime} s, report {reported} s"
    );

    // `daffe migrate` posted its report to A's daemon: the migration's own
    // figures, exactly as its --json report gives them.
    let sum = |key: &str| -> f64 {
        report["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].as_u64().unwrap() as f64)
            .sum()
    };
    assert_eq!(
        a_delta(r#"daffe_cli_runs_total{command="migrate"}"#),
        1.0,
        "{a_after}"
    );
    assert_eq!(
        a_delta(r#"daffe_cli_bytes_total{command="migrate",kind="fetched"}"#),
        moved,
        "{a_after}"
    );
    assert_eq!(
        a_delta(r#"daffe_cli_bytes_total{command="migrate",kind="scanned"}"#),
        sum("bytes_scanned")
    );
    assert!(sum("bytes_scanned") >= rounds * 3_000_000.0, "{report}");
    assert_eq!(
        a_delta(r#"daffe_cli_bytes_total{command="migrate",kind="written"}"#),
        sum("bytes_written")
    );
    assert!(sum("bytes_written") >= 3_000_000.0, "{report}");
    assert_eq!(
        a_delta(r#"daffe_cli_round_duration_seconds_count{command="migrate"}"#),
        rounds
    );
    let round_secs = (sum("scan_ms") + sum("transfer_ms")) / 1000.0;
    assert!(
        (a_delta(r#"daffe_cli_round_duration_seconds_sum{command="migrate"}"#) - round_secs).abs()
            < 1e-6,
        "{a_after}"
    );
    // The report's downtime, to the float rounding of seconds from ms.
    let last = value(
        &a_after,
        r#"daffe_migration_last_downtime_seconds{volume="counted"}"#,
    );
    assert!(
        reported > 0.0 && (last - reported).abs() < 1e-6,
        "gauge {last} s, report {reported} s\n{a_after}"
    );
}

/// `daffe ARGS` with the AWS environment of `moto`; its JSON stdout and
/// stderr, asserting success.
fn daffe_ok(args: &[&str], moto: &Moto) -> (serde_json::Value, String) {
    let out = std::process::Command::new(daffe_e2e::plugin::daffe_bin())
        .args(args)
        .envs(moto.env())
        .env_remove("DAFFE_CONTROL_SOCKET")
        .env("DAFFE_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "daffe {args:?}: {stdout}\n{stderr}");
    (
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("daffe {args:?}: {e}: {stdout}")),
        stderr,
    )
}

#[test]
fn snapshot_and_sync_reports_reach_the_daemons_metrics() {
    let moto = Moto::start();
    moto.reset();
    let p = Plugin::start();
    let sock = p.control_socket();
    let sock = sock.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    // 3 blocks of data (512 KiB each) in a 4 MiB sparse image.
    let img = path("a.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(4 << 20).unwrap();
    for (i, b) in [(0u64, 1u8), (3, 2), (5, 3)] {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![b; 512 << 10], i * (512 << 10))
            .unwrap();
    }
    let common = |v: &mut Vec<String>| {
        v.extend(
            [
                "--json",
                "--endpoint-url",
                &moto.url,
                "--index-dir",
                &path("index"),
                "--control-socket",
                sock,
            ]
            .map(str::to_owned),
        );
    };
    let before = scrape_socket(&p.control_socket());

    let mut push = vec!["snapshot".to_owned(), "push".into(), img.clone()];
    common(&mut push);
    let push: Vec<&str> = push.iter().map(String::as_str).collect();
    let (r, _) = daffe_ok(&push, &moto);
    let snap = r["snapshot_id"].as_str().unwrap().to_owned();
    let mut pull = vec!["snapshot".to_owned(), "pull".into(), snap, path("b.img")];
    common(&mut pull);
    let pull: Vec<&str> = pull.iter().map(String::as_str).collect();
    let (q, _) = daffe_ok(&pull, &moto);
    let src = path("tree");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(format!("{src}/f"), vec![9u8; 100_000]).unwrap();
    let (s, _) = daffe_ok(
        &[
            "sync",
            &src,
            &path("copy"),
            "--json",
            "--control-socket",
            sock,
        ],
        &moto,
    );

    let after = scrape_socket(&p.control_socket());
    let delta = |series: &str| value(&after, series) - value(&before, series);
    let n =
        |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    // The push: the image scanned, its 3 blocks uploaded, every EBS call.
    assert_eq!(
        delta(r#"daffe_cli_runs_total{command="snapshot_push"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta(r#"daffe_cli_bytes_total{command="snapshot_push",kind="scanned"}"#),
        n(&r, "source_bytes")
    );
    assert_eq!(
        delta(r#"daffe_cli_bytes_total{command="snapshot_push",kind="fetched"}"#),
        n(&r, "bytes_uploaded")
    );
    assert_eq!(n(&r, "bytes_uploaded"), (3 * (512 << 10)) as f64, "{r}");
    // Start, 3 blocks, complete, at least: every attempt is counted.
    assert!(n(&r, "calls") >= 5.0, "{r}");
    assert_eq!(
        delta(r#"daffe_cli_aws_calls_total{command="snapshot_push"}"#),
        n(&r, "calls")
    );
    assert_eq!(
        delta(r#"daffe_cli_aws_retries_total{command="snapshot_push"}"#),
        n(&r, "retries")
    );
    assert_eq!(
        delta(r#"daffe_cli_round_duration_seconds_count{command="snapshot_push"}"#),
        1.0
    );
    // The pull: what it wrote, its calls.
    assert_eq!(
        delta(r#"daffe_cli_bytes_total{command="snapshot_pull",kind="written"}"#),
        n(&q, "bytes_written")
    );
    assert!(n(&q, "bytes_written") >= (3 * (512 << 10)) as f64, "{q}");
    assert_eq!(
        delta(r#"daffe_cli_aws_calls_total{command="snapshot_pull"}"#),
        n(&q, "calls")
    );
    // The sync: its bytes and its one round.
    assert_eq!(delta(r#"daffe_cli_runs_total{command="sync"}"#), 1.0);
    assert_eq!(
        delta(r#"daffe_cli_bytes_total{command="sync",kind="fetched"}"#),
        n(&s, "bytes_fetched")
    );
    assert_eq!(
        delta(r#"daffe_cli_bytes_total{command="sync",kind="written"}"#),
        n(&s, "bytes_written")
    );
    assert!(n(&s, "bytes_written") >= 100_000.0, "{s}");

    // No daemon: the command succeeds and says nothing about metrics.
    let (_, stderr) = daffe_ok(
        &[
            "sync",
            &src,
            &path("copy2"),
            "--json",
            "--control-socket",
            &path("absent.sock"),
        ],
        &moto,
    );
    assert!(!stderr.contains("metrics"), "{stderr}");
    // A dead daemon (its socket file left behind): still a success, one
    // warning.
    let dead = path("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let (_, stderr) = daffe_ok(
        &[
            "sync",
            &src,
            &path("copy3"),
            "--json",
            "--control-socket",
            &dead,
        ],
        &moto,
    );
    assert!(
        stderr.contains("did not reach the daemon's metrics"),
        "{stderr}"
    );
}

#[test]
fn an_ebs_create_counts_its_ec2_calls_by_operation_and_result() {
    let moto = Moto::start();
    moto.reset();
    let (instance, zone) = moto.run_instance("us-east-1b");
    let p = Plugin::start_with_env(Some(&moto.ebs_config(&instance, &zone)), moto.env());
    let before = scrape_socket(&p.control_socket());
    p.docker.ok(&[
        "volume",
        "create",
        &format!("--driver={}", p.name),
        "counted@gold",
    ]);
    let after = scrape_socket(&p.control_socket());
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta(r#"daffe_aws_calls_total{operation="CreateVolume",result="ok"}"#),
        1.0,
        "{after}"
    );
    // moto answers at once: no retries, no failed attempt.
    assert_eq!(
        delta(r#"daffe_aws_retries_total{operation="CreateVolume"}"#),
        0.0
    );
    assert!(
        !after.contains(r#"operation="CreateVolume",result="t"#),
        "a failed CreateVolume attempt: {after}"
    );
    // The create waits for the volume to become available.
    assert!(
        delta(r#"daffe_aws_calls_total{operation="DescribeVolumes",result="ok"}"#) >= 1.0,
        "{after}"
    );
}
