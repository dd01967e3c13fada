//! Live pre-copy's decisions end to end (issue 11), between two hosts on a
//! shaped link: a writer faster than the link, under `--strict`, is refused
//! before anything is fenced, and the app keeps running on the source.

use daffe_e2e::hosts::{TwoHosts, test_image};
use std::time::{Duration, Instant};

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

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
