//! Prometheus metrics of what moves (issue 13, item 8, the rest): after a
//! real migration through the agent, the agent's counters moved by exactly
//! what the migration's report says it moved (bytes fetched, rounds, their
//! durations, the connection), and the source daemon observed one downtime;
//! after an EBS volume create against moto, the daemon counted its EC2
//! calls by operation and result.

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
