//! `daffe migrate` between two hosts made of network namespaces on a veth
//! link shaped to 100 Mbit/s, each with its own Docker engine, daffe plugin
//! and (on B) agent. Needs root, dockerd, iproute2 and tc: missing ones fail
//! the tests, they never skip.

use daffe_e2e::hosts::{TwoHosts, counter_script, daffe_bin, ok, test_image, wait_line};
use daffe_e2e::netns::ADDR_B;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A port for the counter on A (free on the root namespace; A's engine has
/// a network namespace of its own, where it is free too).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `curl URL` inside the network namespace `net` (host A's engine's),
/// given up after `max_secs`.
fn curl_in(net: &Path, url: &str, max_secs: u32) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", net.display()))
        .args(["curl", "-sS", "--max-time", &max_secs.to_string(), url])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn count_of(reply: &str) -> u64 {
    reply
        .rsplit(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a counter reply: {reply:?}"))
}

fn wait_http(f: impl Fn() -> Result<String, String>) -> String {
    let t = Instant::now();
    loop {
        match f() {
            Ok(s) => return s,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(20), "counter not up: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn the_web_counter_keeps_its_count_across_hosts() {
    let h = TwoHosts::start("100mbit");
    let image = test_image();
    let port = free_port();
    let name_a = h.container("counter");
    ok(
        h.docker_a(&[
            "run",
            "-d",
            "--name",
            &name_a,
            "--network",
            "host",
            "--volume-driver",
            &h.plugin,
            "-v",
            "counter@gold:/data",
            &image,
            "sh",
            "-c",
            &counter_script(Some("A"), &format!("127.0.0.1:{port}")),
        ]),
        "start counter on A",
    );
    let url = format!("http://127.0.0.1:{port}/cgi-bin/count");
    let net_a = h.docker_a.net_ns();
    let first = wait_http(|| curl_in(&net_a, &url, 30));
    assert_eq!(first, "A: 1");
    assert_eq!(curl_in(&net_a, &url, 30).unwrap(), "A: 2");
    assert_eq!(curl_in(&net_a, &url, 30).unwrap(), "A: 3");

    // Steady write load while the pre-copy rounds run. A request that
    // fails may still have counted (its reply lost to the timeout): the
    // load keeps `None` for it, and the count may skip there.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let url = url.clone();
        let net_a = net_a.clone();
        std::thread::spawn(move || {
            let mut seen = vec![];
            while !stop.load(Ordering::SeqCst) {
                seen.push(curl_in(&net_a, &url, 5).ok().map(|r| count_of(&r)));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };
    let (child, rx) = h.migrate("counter@gold", &["--max-downtime", "2s"]);
    wait_line(&rx, "waiting for", Duration::from_secs(300));
    // Cutover: the operator stops the load, reads the count A ends with
    // (the volume is still mounted there) and stops the container.
    stop.store(true, Ordering::SeqCst);
    let seen = load.join().unwrap();
    let last_a = count_of(&curl_in(&net_a, &url, 60).expect("the last count on A"));
    ok(h.docker_a(&["stop", &name_a]), "docker stop on A");
    let report = h.finish(child);
    eprintln!("report: {report:#}");
    assert!(
        seen.iter().flatten().next().is_some(),
        "the load never reached the counter: {seen:?}"
    );
    assert!(
        counts_go_on(4, &seen, last_a),
        "counts on A under load: {seen:?}, then {last_a}"
    );
    assert_eq!(report["mode"], "image");
    assert!(report["rounds"].as_array().unwrap().len() >= 2);
    assert!(report["downtime_ms"].as_u64().is_some());

    // A is fenced: the volume cannot be mounted there any more.
    let start_again = h.docker_a(&["start", &name_a]);
    assert!(!start_again.status.success(), "the counter restarted on A");
    let err = String::from_utf8_lossy(&start_again.stderr);
    assert!(err.contains(&format!("volume moved to {ADDR_B}")), "{err}");

    // B has it, with its name and profile; the count goes on.
    let info = h.b.inspect("counter@gold");
    assert_eq!(info["profile"], "gold");
    assert_eq!(info["status"]["state"], "ready");
    let name_b = h.container("counter-b");
    ok(
        h.docker_b(&[
            "run",
            "-d",
            "--name",
            &name_b,
            "--network",
            "host",
            "--volume-driver",
            &h.plugin,
            "-v",
            "counter@gold:/data",
            &image,
            "sh",
            "-c",
            &counter_script(Some("B"), &format!("127.0.0.1:{port}")),
        ]),
        "start counter on B",
    );
    let url_b = format!("http://127.0.0.1:{port}/cgi-bin/count");
    let n1 = wait_http(|| {
        let out = h
            .link
            .b
            .command("curl")
            .args(["-sS", "--max-time", "30", &url_b])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    assert_eq!(n1, format!("B: {}", last_a + 1));
    assert_eq!(h.curl_b(&url_b), format!("B: {}", last_a + 2));
    assert_eq!(h.curl_b(&url_b), format!("B: {}", last_a + 3));
}

/// Whether the counts a load saw go on by one from `first`, skipping only
/// where a request failed (`None`: it may have counted), and end below
/// `last`, the count read after the load: no count lost or repeated.
fn counts_go_on(first: u64, seen: &[Option<u64>], last: u64) -> bool {
    let mut next = first;
    let mut may_skip = false;
    for s in seen {
        match *s {
            None => may_skip = true,
            Some(n) if n == next || (may_skip && n > next) => {
                next = n + 1;
                may_skip = false;
            }
            Some(_) => return false,
        }
    }
    last == next || (may_skip && last > next)
}

#[test]
fn counts_go_on_skips_only_after_a_failed_request() {
    for (seen, last, want) in [
        (vec![Some(4), Some(5)], 6, true),
        (vec![Some(4), None, Some(6)], 7, true),
        (vec![None, Some(5)], 6, true),
        (vec![Some(4), Some(6)], 7, false),
        (vec![Some(4), Some(4)], 5, false),
        (vec![Some(4), None, Some(4)], 5, false),
        (vec![Some(4), Some(5)], 7, false),
        (vec![Some(4), None], 7, true),
        (vec![Some(5)], 6, false),
        (vec![], 4, true),
    ] {
        assert_eq!(counts_go_on(4, &seen, last), want, "{seen:?} then {last}");
    }
}

/// Hash of every regular file under `root` (relative path, sha256).
fn tree_digest(root: &std::path::Path) -> String {
    ok(
        Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . -type f | LC_ALL=C sort | xargs -r sha256sum")
            .arg("sh")
            .arg(root)
            .output()
            .unwrap(),
        "hash tree",
    )
}

#[test]
fn a_1gib_volume_moves_while_a_writer_appends_1mb_per_second() {
    let h = TwoHosts::start("100mbit");
    let image = test_image();
    ok(
        h.docker_a(&[
            "run",
            "--rm",
            "--volume-driver",
            &h.plugin,
            "-v",
            "big:/data",
            &image,
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do head -c 134217728 /dev/urandom > /data/f$i; done",
        ]),
        "fill 1 GiB",
    );
    let writer = h.container("writer");
    ok(
        h.docker_a(&[
            "run",
            "-d",
            "--name",
            &writer,
            "--volume-driver",
            &h.plugin,
            "-v",
            "big:/data",
            &image,
            "sh",
            "-c",
            "while true; do head -c 1048576 /dev/urandom >> /data/log; sleep 1; done",
        ]),
        "start the writer",
    );
    let (child, rx) = h.migrate("big", &["--max-downtime", "1s"]);
    wait_line(&rx, "waiting for", Duration::from_secs(600));
    ok(h.docker_a(&["stop", "-t", "1", &writer]), "stop the writer");
    let report = h.finish(child);
    eprintln!("report: {report:#}");
    let rounds = report["rounds"].as_array().unwrap();
    assert!(rounds.len() >= 2, "{report:#}");
    let used = report["used_bytes"].as_u64().unwrap();
    assert!(used >= 1 << 30, "{report:#}");
    let fin = rounds.last().unwrap();
    assert_eq!(fin["final_round"], true);
    // The final round moved the tail of the log, not the volume.
    assert!(fin["bytes"].as_u64().unwrap() < 64 << 20, "{report:#}");
    let a = std::path::PathBuf::from(h.a.inspect("big")["mountpoint"].as_str().unwrap());
    let b = std::path::PathBuf::from(h.b.inspect("big")["mountpoint"].as_str().unwrap());
    assert_eq!(tree_digest(&a), tree_digest(&b));
}

#[test]
fn a_cut_link_and_a_killed_agent_resume_without_resending_what_was_stored() {
    let mut h = TwoHosts::start("100mbit");
    let image = test_image();
    ok(
        h.docker_a(&[
            "run",
            "--rm",
            "--volume-driver",
            &h.plugin,
            "-v",
            "res:/data",
            &image,
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6; do head -c 33554432 /dev/urandom > /data/f$i; done",
        ]),
        "fill 192 MiB",
    );
    // Short timeouts so a dead link is noticed in seconds; small checkpoints
    // so what was stored is visible at this size.
    let fast = ["--io-timeout", "3s"];
    h.start_agent(&["--io-timeout", "3s", "--checkpoint", "8M"]);
    let (child, rx) = h.migrate("res", &fast);
    wait_line(&rx, "destination", Duration::from_secs(60));
    // ~4 s into round 1 (about 50 MB at 100 Mbit/s), cut the cable for 6 s.
    std::thread::sleep(Duration::from_secs(4));
    h.link.down();
    std::thread::sleep(Duration::from_secs(6));
    h.link.up();
    // Then kill -9 the agent mid-transfer and bring it back.
    std::thread::sleep(Duration::from_secs(5));
    h.b.kill_agent();
    std::thread::sleep(Duration::from_secs(1));
    h.start_agent(&["--io-timeout", "3s", "--checkpoint", "8M"]);
    let report = h.finish(child);
    eprintln!("report: {report:#}");
    let r1 = &report["rounds"][0];
    assert!(r1["attempts"].as_u64().unwrap() >= 3, "{report:#}");
    let used = report["used_bytes"].as_u64().unwrap();
    let wire = r1["wire_bytes"].as_u64().unwrap();
    // Random data does not compress: the wire carries the volume once, plus
    // per interruption at most one checkpoint interval (8 MiB) and what was in
    // flight in the two socket buffers (a few MiB), plus TLS/framing.
    assert!(
        wire <= used + used / 10 + 3 * (16 << 20),
        "round 1 put {wire} bytes on the wire for {used} used"
    );
    let a = std::path::PathBuf::from(h.a.inspect("res")["mountpoint"].as_str().unwrap());
    let b = std::path::PathBuf::from(h.b.inspect("res")["mountpoint"].as_str().unwrap());
    assert_eq!(tree_digest(&a), tree_digest(&b));
}

#[test]
fn a_peer_without_our_certificate_gets_nothing_and_writes_nothing() {
    let h = TwoHosts::start("100mbit");
    let image = test_image();
    ok(
        h.docker_a(&[
            "run",
            "--rm",
            "--volume-driver",
            &h.plugin,
            "-v",
            "secret:/data",
            &image,
            "sh",
            "-c",
            "echo s3cret > /data/x",
        ]),
        "make a volume",
    );
    let rogue = tempfile::tempdir().unwrap();
    ok(
        Command::new(daffe_bin())
            .args(["agent", "init", "--name", "mallory", "--dir"])
            .arg(rogue.path().join("tls"))
            .output()
            .unwrap(),
        "rogue CA",
    );
    let out = h
        .link
        .a
        .command(daffe_bin())
        .args([
            "migrate",
            "secret",
            "--to",
            &ADDR_B.to_string(),
            "--name",
            "mallory",
        ])
        .arg("--tls-dir")
        .arg(rogue.path().join("tls"))
        .arg("--control-socket")
        .arg(h.a.control_socket())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS"), "{err}");
    // Nothing arrived on B, nothing changed on A.
    let vols = ok(h.b.daffe(&["volume", "ls", "--json"]), "ls on B");
    assert_eq!(vols, "[]");
    assert_eq!(h.a.inspect("secret")["status"]["state"], "ready");
    // Plain HTTP to the agent's port gets no answer either.
    let curl = h
        .link
        .a
        .command("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{ADDR_B}:7450/")])
        .output()
        .unwrap();
    assert!(!curl.status.success());
    assert!(curl.stdout.is_empty());
}
