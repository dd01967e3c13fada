//! `daffe migrate` between two hosts, for the operator surface (issue 13):
//! a volume still mounted past `--unmount-timeout` ends with exit code 4
//! ("in use", README "Exit codes"), the container untouched; and
//! `--json-progress` streams the migration's events as JSON lines, in a
//! failed migration and in one that completes (whose report is the one a
//! migration without the flag prints).

use daffe_e2e::hosts::{TwoHosts, ok, test_image};
use serde_json::Value;

#[test]
fn still_mounted_past_the_unmount_timeout_is_exit_code_4_with_a_json_event_stream() {
    let h = TwoHosts::start("100mbit");
    let image = test_image();
    let holder = h.container("holder");
    ok(
        h.docker_a(&[
            "run",
            "-d",
            "--name",
            &holder,
            "--volume-driver",
            &h.plugin,
            "-v",
            "held:/data",
            &image,
            "sh",
            "-c",
            "head -c 3000000 /dev/urandom > /data/f; sleep 600",
        ]),
        "start the holder",
    );
    // Wait until the file is there (the container writes it at start).
    let t = std::time::Instant::now();
    while !h
        .docker_a(&["exec", &holder, "test", "-s", "/data/f"])
        .status
        .success()
    {
        assert!(t.elapsed().as_secs() < 30, "the holder never wrote /data/f");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (child, rx) = h.migrate("held", &["--unmount-timeout", "2s", "--json-progress"]);
    let out = child.wait_with_output().unwrap();
    let lines: Vec<String> = rx.iter().collect();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "stdout: {stdout}\nstderr: {lines:#?}"
    );
    // --json: the error as JSON on stdout.
    let err: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        err["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{err}"
    );

    // stderr: JSON lines only, the migration's events among them.
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let events: Vec<&str> = values.iter().filter_map(|v| v["event"].as_str()).collect();
    for want in [
        "preflight",
        "round_start",
        "round_end",
        "waiting_for_unmount",
    ] {
        assert!(events.contains(&want), "no {want} event: {events:?}");
    }
    assert!(!events.contains(&"committed"), "{events:?}");
    assert!(
        values
            .iter()
            .filter(|v| v["event"].is_string())
            .all(|v| v["command"] == "migrate")
    );
    // The first round moved the file: its round_end says so, and some
    // progress event counted bytes.
    let first_end = values.iter().find(|v| v["event"] == "round_end").unwrap();
    assert!(
        first_end["bytes"].as_u64().unwrap() >= 3_000_000,
        "{first_end}"
    );
    assert!(
        values
            .iter()
            .any(|v| v["event"] == "progress" && v["done"].as_u64().unwrap_or(0) > 0),
        "{values:#?}"
    );
    // daffe never stops a container: the holder still runs, its volume
    // still mounted on A.
    let running = ok(
        h.docker_a(&["inspect", "-f", "{{.State.Running}}", &holder]),
        "inspect the holder",
    );
    assert_eq!(running, "true");
    assert!(h.a.inspect("held")["mount_count"].as_u64().unwrap() >= 1);
}

/// Writes `bytes` of random data into volume `name` on A (a container that
/// exits: the volume is left unmounted).
fn fill(h: &TwoHosts, name: &str, bytes: u64) {
    h.write_on_a(name, &format!("head -c {bytes} /dev/urandom > /data/f"));
}

#[test]
fn a_completed_migration_streams_json_lines_and_keeps_its_report() {
    let h = TwoHosts::start("100mbit");
    fill(&h, "plain", 2_000_000);
    fill(&h, "streamed", 2_000_000);

    let (child, rx) = h.migrate("plain", &[]);
    let plain = h.finish(child);
    drop(rx);
    let (child, rx) = h.migrate("streamed", &["--json-progress"]);
    let streamed = h.finish(child);
    let lines: Vec<String> = rx.iter().collect();

    // stdout: the report, with the same keys and the same kind of figures
    // as without the flag.
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&plain), keys(&streamed), "{plain}\n{streamed}");
    assert_eq!(plain["mode"], streamed["mode"]);
    for r in [&plain, &streamed] {
        assert!(r["bytes_moved"].as_u64().unwrap() >= 2_000_000, "{r}");
        assert!(!r["rounds"].as_array().unwrap().is_empty(), "{r}");
    }

    // stderr: every line JSON; events of migrate from preflight to the
    // commit, log lines as JSON objects with a level.
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(
        values
            .iter()
            .all(|v| v["event"].is_string() || v["level"].is_string()),
        "{values:#?}"
    );
    let events: Vec<&str> = values.iter().filter_map(|v| v["event"].as_str()).collect();
    for want in ["preflight", "round_start", "round_end", "committed"] {
        assert!(events.contains(&want), "no {want} event: {events:?}");
    }
    assert_eq!(events.first(), Some(&"preflight"), "{events:?}");
    assert!(
        values
            .iter()
            .filter(|v| v["event"].is_string())
            .all(|v| v["command"] == "migrate" && v["elapsed_ms"].is_u64()),
        "{values:#?}"
    );
    // The volume moved: B has it, A does not serve it any more.
    assert!(h.b.inspect("streamed")["name"].is_string());
}
