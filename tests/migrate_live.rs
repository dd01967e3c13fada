//! Live pre-copy's decisions end to end (issue 11), between two hosts on a
//! shaped link: a writer faster than the link, under `--strict`, is refused
//! before anything is fenced, and the app keeps running on the source; the
//! `--before-cutover` hook's writes travel in a pre-copy round, and a failing
//! hook stops migrate unfenced.

use daffe_e2e::hosts::{TwoHosts, ok, test_image, wait_line};
use std::time::{Duration, Instant};

#[test]
fn strict_mode_refuses_a_writer_faster_than_the_link_unfenced_and_the_app_keeps_running() {
    // 8 Mbit/s carries about 1 MB/s; the writer replaces 4 MiB of random
    // data every second or so: four times what the link can absorb.
    let h = TwoHosts::start("8mbit");
    let image = test_image();
    let writer = h.container("hot");
    ok(
        h.docker_a(&[
            "run",
            "-d",
            "--name",
            &writer,
            "--volume-driver",
            &h.plugin,
            "-v",
            "hot:/data",
            &image,
            "sh",
            "-c",
            "while true; do head -c 4194304 /dev/urandom > /data/hot.tmp && mv /data/hot.tmp /data/hot; sleep 1; done",
        ]),
        "start the writer",
    );
    std::thread::sleep(Duration::from_secs(2));
    let (mut child, rx) = h.migrate(
        "hot",
        &["--strict", "--max-downtime", "1s", "--max-rounds", "6"],
    );
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("migrate --strict still running after 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Everything it printed: stdout (the JSON error), then its stderr.
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let mut lines = vec![stdout];
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
        lines.push(l);
    }
    let said = lines.join("\n");
    eprintln!("migrate said:\n{said}");
    assert!(!status.success(), "strict mode cut over:\n{said}");
    eprintln!("exit: {status}");
    assert!(
        said.contains("strict mode") && said.contains("not fenced"),
        "no strict refusal with its reason:\n{said}"
    );
    // Never asked for the unmount: the refusal comes before it.
    assert!(!said.contains("waiting for"), "{said}");
    // The source still owns the volume and the app still writes to it.
    assert_eq!(h.a.inspect("hot")["status"]["state"], "ready");
    let running = ok(
        h.docker_a(&["inspect", "-f", "{{.State.Running}}", &writer]),
        "inspect the writer",
    );
    assert_eq!(running, "true", "the app stopped");
    let before = ok(
        h.docker_a(&["exec", &writer, "stat", "-c", "%Y", "/data/hot"]),
        "stat",
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = ok(
        h.docker_a(&["exec", &writer, "stat", "-c", "%Y", "/data/hot"]),
        "stat",
    );
    assert_ne!(before, after, "the app no longer writes to its volume");
}

/// `sha256sum FILE` inside a throwaway container on the volume.
fn digest_in(out: std::process::Output) -> String {
    ok(out, "sha256sum")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `docker -H A`, for a hook's command line.
fn docker_cli(h: &TwoHosts) -> String {
    format!(
        "docker -H {}",
        h.docker_a.docker().host().expect("A's socket")
    )
}

/// The app's container on host A: idle, holding the volume mounted.
fn start_app(h: &TwoHosts, volume: &str) -> String {
    let app = h.container("app");
    ok(
        h.docker_a(&[
            "run",
            "-d",
            "--name",
            &app,
            "--stop-signal",
            "KILL",
            "--volume-driver",
            &h.plugin,
            "-v",
            &format!("{volume}:/data"),
            &test_image(),
            "sh",
            "-c",
            "head -c 1048576 /dev/urandom > /data/base; exec sleep 600",
        ]),
        "start the app",
    );
    std::thread::sleep(Duration::from_secs(1));
    app
}

/// The hook as a database checkpoint would be: `docker exec` into the app
/// on the source host, writing what it held in memory (here: 3 MiB of new
/// data). It must travel in a pre-copy round, not in the final one.
#[test]
fn the_before_cutover_hook_flushes_into_a_pre_copy_round() {
    const MARKER: u64 = 3 << 20;
    let h = TwoHosts::start("100mbit");
    let app = start_app(&h, "marked");
    let hook = format!(
        "{} exec {app} sh -c 'head -c {MARKER} /dev/urandom > /data/marker && echo flushed'",
        docker_cli(&h)
    );
    let (child, rx) = h.migrate(
        "marked",
        &["--max-downtime", "2s", "--before-cutover", &hook],
    );
    wait_line(&rx, "waiting for", Duration::from_secs(300));
    ok(h.docker_a(&["stop", &app]), "stop the app");
    let report = h.finish(child);
    eprintln!("report: {report:#}");
    let hr = &report["before_cutover"];
    assert_eq!(hr["exit_status"], 0, "{report:#}");
    assert_eq!(hr["timed_out"], false);
    assert!(hr["seconds"].as_f64().unwrap() > 0.0);
    assert!(hr["command"].as_str().unwrap().contains("/data/marker"));
    let rounds = report["rounds"].as_array().unwrap();
    // The pre-copy round after the hook, then (its 3 MiB are a flush) a
    // catch-up round that runs the hook again, and on a slow machine (the
    // estimate still over 2 s) one more: every one of them before the final
    // round.
    let after: Vec<_> = rounds
        .iter()
        .filter(|r| r["after_hook"] == true && r["final_round"] == false)
        .collect();
    assert!(
        !after.is_empty(),
        "no pre-copy round after the hook: {report:#}"
    );
    assert_eq!(hr["runs"].as_u64(), Some(after.len() as u64), "{report:#}");
    assert!(
        after[0]["bytes"].as_u64().unwrap() >= MARKER,
        "the marker did not travel in the round after the hook: {report:#}"
    );
    let fin = rounds.last().unwrap();
    assert_eq!(fin["final_round"], true);
    assert!(
        fin["bytes"].as_u64().unwrap() < MARKER,
        "the marker waited for the final round: {report:#}"
    );
    // The destination has it, byte for byte.
    // A's copy is moved (fenced): read it where it lies.
    let a_dir = std::path::PathBuf::from(h.a.inspect("marked")["mountpoint"].as_str().unwrap());
    let want = ok(
        std::process::Command::new("sha256sum")
            .arg(a_dir.join("marker"))
            .output()
            .unwrap(),
        "sha256sum on A",
    );
    let got = digest_in(h.docker_b(&[
        "run",
        "--rm",
        "--volume-driver",
        &h.plugin,
        "-v",
        "marked:/data",
        &test_image(),
        "sha256sum",
        "/data/marker",
    ]));
    assert_eq!(want.split_whitespace().next().unwrap(), got);
}

/// A hook that fails (`exit 3`) stops migrate before anything is fenced,
/// with the hook's stderr; the app keeps running and owning its volume.
#[test]
fn a_failing_before_cutover_hook_leaves_the_source_unfenced_and_the_app_running() {
    let h = TwoHosts::start("100mbit");
    let app = start_app(&h, "refused");
    let (child, rx) = h.migrate(
        "refused",
        &[
            "--before-cutover",
            "echo 'the checkpoint failed' >&2; exit 3",
        ],
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut said = vec![stdout.clone()];
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        said.push(l);
    }
    let said = said.join("\n");
    eprintln!("migrate said:\n{said}");
    assert!(!out.status.success(), "{said}");
    let err: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON error");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("status 3")
            && msg.contains("the checkpoint failed")
            && msg.contains("not fenced"),
        "{msg}"
    );
    assert!(!said.contains("waiting for"), "{said}");
    assert_eq!(h.a.inspect("refused")["status"]["state"], "ready");
    let running = ok(
        h.docker_a(&["inspect", "-f", "{{.State.Running}}", &app]),
        "inspect the app",
    );
    assert_eq!(running, "true", "the app stopped");
    // It still writes to its volume.
    ok(
        h.docker_a(&["exec", &app, "sh", "-c", "echo more >> /data/base"]),
        "write after the refusal",
    );
}
