//! Follow the clients without Swarm (issue 15, part 4's two-host mode, and
//! part 5's measure of the requests that fail during a move): two hosts
//! made of network namespaces on a shaped link (100 Mbit/s), each with its
//! own Docker engine inside its namespace (`NsDockerd`), its own `daffe
//! serve` and its own `daffe agent`. The web counter (busybox httpd and a
//! CGI script counting in /data/count) runs on host A (us-east-1) on a
//! daffe volume (one test on a dir volume, one on a gold block volume),
//! reached at A's address. After each move `daffe placement where --host
//! ...` names the new host and its address.
//!
//! Demand is an access log in JSON lines (`region`, `t`), replayed in
//! compressed time (`--clock log`): first us-east-1 only (follow stays),
//! then eu-west-1 only (follow moves the container to B: `daffe migrate`
//! with pre-copy while it serves, the container stopped on A at the
//! cutover, created and started on B), then, a day later, us-east-1 again
//! (follow moves it back to A).
//!
//! Two clients, one in each region's namespace, send a GET to the
//! service's old address every 100 ms and retry a failed one once after
//! 500 ms. The first move runs with the forwarder (`--forward-port`, from
//! the moment the container stops on A), the second without: the failed
//! requests of each are printed, and checked (with the forwarder: none
//! after the retry; without: some, else the comparison shows nothing).
//! Checked too: each client's counts only go up, the count on the new host
//! goes on from the last one answered (nothing lost), and the old host's
//! container is kept, stopped.

use daffe_e2e::docker::test_image;
use daffe_e2e::hosts::{counter_script, must, spawn_logged, stop};
use daffe_e2e::netns::{ADDR_A, ADDR_B, Link, Netns, NsDockerd};
use daffe_e2e::plugin::{daffe_bin, unmount_under};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// One host: its engine (in its namespace), daemon and agent.
struct Host {
    region: &'static str,
    addr: std::net::Ipv4Addr,
    dir: PathBuf,
    docker: NsDockerd,
    serve: Option<Child>,
    agent: Option<Child>,
}

impl Host {
    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn tls(&self) -> PathBuf {
        self.dir.join("tls")
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.docker.docker().args(args).output().expect("docker -H")
    }

    /// The `--host` flag of `daffe follow` for this host.
    fn flag(&self) -> String {
        format!(
            "{}=agent={}:7450,engine={},control={},tls-dir={}",
            self.region,
            self.addr,
            self.docker.socket.display(),
            self.control().display(),
            self.tls().display()
        )
    }

    fn running(&self, name: &str) -> bool {
        must(
            self.docker(&["inspect", "-f", "{{.State.Running}}", name]),
            "inspect",
        ) == "true"
    }
}

struct Setup {
    link: Link,
    plugin: String,
    a: Host,
    b: Host,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        assert!(
            rustix::process::geteuid().is_root(),
            "two-host tests need root (network namespaces, dockerd)"
        );
        let link = Link::new("100mbit");
        let plugin = daffe_e2e::unique("daffe-fh");
        let dir = tempfile::Builder::new()
            .prefix("daffe-fh-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mk = |ns: &Netns, region, addr, label: &str| {
            let docker = NsDockerd::start(ns);
            docker.load_image(&test_image());
            let d = dir.path().join(label);
            std::fs::create_dir_all(&d).unwrap();
            let mut h = Host {
                region,
                addr,
                dir: d,
                docker,
                serve: None,
                agent: None,
            };
            // The daemon lives in its engine's namespaces (as B's of
            // `hosts::TwoHosts`), so both hosts are alike.
            let mut cmd = h.docker.enter(daffe_bin());
            cmd.arg("serve")
                .arg("--socket")
                .arg(h.docker.plugins_dir.join(format!("{plugin}.sock")))
                .arg("--control-socket")
                .arg(h.control())
                .arg("--data-root")
                .arg(h.dir.join("data"));
            h.serve = Some(spawn_logged(cmd, &h.dir.join("serve.log")));
            h
        };
        let a = mk(&link.a, US, ADDR_A, "a");
        let b = mk(&link.b, EU, ADDR_B, "b");
        for h in [&a, &b] {
            let t = Instant::now();
            while !Command::new(daffe_bin())
                .args(["volume", "ls", "--json"])
                .env("DAFFE_CONTROL_SOCKET", h.control())
                .output()
                .is_ok_and(|o| o.status.success())
            {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "daffe serve ({}) not ready:\n{}",
                    h.region,
                    std::fs::read_to_string(h.dir.join("serve.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // One CA (on A); a certificate per host.
        must(
            Command::new(daffe_bin())
                .args(["agent", "init", "--name", "hosta", "--dir"])
                .arg(a.tls())
                .output()
                .unwrap(),
            "agent init",
        );
        must(
            Command::new(daffe_bin())
                .args(["agent", "issue", "--name", "hostb", "--ca-dir"])
                .arg(a.tls())
                .arg("--out")
                .arg(b.tls())
                .output()
                .unwrap(),
            "agent issue",
        );
        let mut s = Setup {
            link,
            plugin,
            a,
            b,
            dir,
        };
        for (h, ns, name) in [
            (&mut s.a, &s.link.a, "hosta"),
            (&mut s.b, &s.link.b, "hostb"),
        ] {
            let mut cmd = ns.command(daffe_bin());
            cmd.arg("agent")
                .arg("--listen")
                .arg(format!("{}:7450", h.addr))
                .arg("--name")
                .arg(name)
                .arg("--tls-dir")
                .arg(h.tls())
                .arg("--control-socket")
                .arg(h.control());
            h.agent = Some(spawn_logged(cmd, &h.dir.join("agent.log")));
        }
        std::thread::sleep(Duration::from_millis(300));
        s
    }

    fn placement_dir(&self) -> PathBuf {
        self.dir.path().join("placement")
    }

    /// Appends demand (one line per request) and runs `placement observe`
    /// over what is new.
    fn demand(&self, region: &str, from_s: u64, secs: u64, per_s: u32) {
        let log = self.dir.path().join("access.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut body = String::new();
        for t in from_s..from_s + secs {
            for _ in 0..per_s {
                body.push_str(&format!("{{\"region\":\"{region}\",\"t\":{t}}}\n"));
            }
        }
        f.write_all(body.as_bytes()).unwrap();
        must(
            Command::new(daffe_bin())
                .args([
                    "placement",
                    "observe",
                    "--service",
                    "counter",
                    "--format",
                    "json",
                ])
                .args(["--region-field", "region", "--time-field", "t", "--log"])
                .arg(&log)
                .arg("--placement-dir")
                .arg(self.placement_dir())
                .output()
                .unwrap(),
            "placement observe",
        );
    }

    /// `daffe follow counter --once` run in `ns` (the host it acts from)
    /// with `extra` flags; its JSON lines.
    fn follow(&self, ns: &Netns, extra: &[&str]) -> Vec<serde_json::Value> {
        let out = ns
            .command(daffe_bin())
            .args(["follow", "counter", "--once", "--json", "--clock", "log"])
            .arg("--placement-dir")
            .arg(self.placement_dir())
            .args(["--volume-size", "100M", "--throughput", "10M"])
            .args(["--host", &self.a.flag(), "--host", &self.b.flag()])
            .args(["--container", &self.container()])
            .args(extra)
            .env("DAFFE_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "[follow] {stdout}\n[follow stderr] {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "daffe follow failed: {stdout}\nA agent: {}\nB agent: {}",
            std::fs::read_to_string(self.a.dir.join("agent.log")).unwrap_or_default(),
            std::fs::read_to_string(self.b.dir.join("agent.log")).unwrap_or_default()
        );
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn container(&self) -> String {
        format!("{}-counter", self.plugin)
    }

    /// `daffe placement where counter --host .. --host ..`: (region, addr).
    fn where_now(&self) -> (String, String) {
        let out = Command::new(daffe_bin())
            .args(["placement", "where", "counter", "--json"])
            .args(["--host", &self.a.flag(), "--host", &self.b.flag()])
            .args(["--container", &self.container()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&must(out, "placement where")).unwrap();
        (
            v["node"].as_str().unwrap_or_default().to_owned(),
            v["addr"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for h in [&self.a, &self.b] {
            let _ = h.docker(&["rm", "-f", &self.container()]);
            for v in ["counter", "counter@gold"] {
                let _ = h.docker(&["volume", "rm", "-f", v]);
            }
        }
        for h in [&mut self.a, &mut self.b] {
            stop(&mut h.agent);
            stop(&mut h.serve);
        }
        unmount_under(self.dir.path());
    }
}

fn get(ns: &Path, url: &str) -> Result<u64, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["curl", "-sS", "--max-time", "10", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let body = String::from_utf8_lossy(&out.stdout);
    body.trim()
        .parse()
        .map_err(|_| format!("not a count: {body:?}"))
}

/// One request of a client: when, whether its first try failed, and the
/// count (None: failed after its retry too).
#[derive(Debug, Clone)]
struct Req {
    at: Instant,
    first_failed: bool,
    count: Option<u64>,
    /// Why the first try and the retry failed.
    errors: Vec<String>,
}

/// A client in `ns` sending a GET to `url` every 100 ms (retrying a
/// failed one once after 500 ms) until `stop`.
fn client(ns: PathBuf, url: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Req>>>) {
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let mut errors = Vec::new();
        let (first_failed, count) = match get(&ns, &url) {
            Ok(n) => (false, Some(n)),
            Err(e) => {
                errors.push(format!("{:?}: {e}", at.elapsed()));
                std::thread::sleep(Duration::from_millis(500));
                let again = get(&ns, &url);
                if let Err(e) = &again {
                    errors.push(format!("{:?}: {e}", at.elapsed()));
                }
                (true, again.ok())
            }
        };
        log.lock().unwrap().push(Req {
            at,
            first_failed,
            count,
            errors,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Failed first tries and failures after the retry, in `[from, to)`.
fn failures(log: &[Req], from: Instant, to: Instant) -> (usize, usize, usize) {
    let w: Vec<&Req> = log.iter().filter(|r| r.at >= from && r.at < to).collect();
    for r in w.iter().filter(|r| r.count.is_none()).take(5) {
        eprintln!(
            "failed at {:?} into the window: {:?}",
            r.at - from,
            r.errors
        );
    }
    (
        w.len(),
        w.iter().filter(|r| r.first_failed).count(),
        w.iter().filter(|r| r.count.is_none()).count(),
    )
}

/// Runs the clients of both regions against `url` while `f` runs and for
/// `after` more; their requests.
fn with_clients<R>(
    s: &Setup,
    url: &str,
    after: Duration,
    f: impl FnOnce() -> R,
) -> (R, Vec<Vec<Req>>, Instant, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Vec<Req>>>> = (0..2).map(|_| Arc::default()).collect();
    let threads: Vec<_> = [&s.link.a, &s.link.b]
        .into_iter()
        .zip(&logs)
        .map(|(ns, log)| {
            let (ns, url, stop, log) = (ns.path(), url.to_owned(), stop.clone(), log.clone());
            std::thread::spawn(move || {
                client(ns, url, stop, log);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let from = Instant::now();
    let r = f();
    std::thread::sleep(after);
    let to = Instant::now();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let logs = logs
        .into_iter()
        .map(|l| std::mem::take(&mut *l.lock().unwrap()))
        .collect();
    (r, logs, from, to)
}

/// How long after a move its failed requests are counted.
const AFTER: Duration = Duration::from_secs(10);

/// The end of a move's window: `AFTER` past the move (its `took_s` from
/// the start of `follow`), which the clients must have covered.
fn window_end(tick: &serde_json::Value, from: Instant, to: Instant) -> Instant {
    let took = Duration::from_secs_f64(tick["moved"]["took_s"].as_f64().unwrap());
    let end = from + took + AFTER;
    assert!(end <= to, "the clients stopped before the window ended");
    end
}

fn moved(lines: &[serde_json::Value]) -> &serde_json::Value {
    let tick = lines
        .iter()
        .find(|l| l.get("outcome").is_some())
        .expect("a decision line");
    assert_eq!(tick["outcome"], "moved", "{tick:#}");
    tick
}

/// Counts per client only go up.
fn check_monotonic(logs: &[Vec<Req>]) -> u64 {
    let mut top = 0;
    for (i, l) in logs.iter().enumerate() {
        let counts: Vec<u64> = l.iter().filter_map(|r| r.count).collect();
        assert!(
            counts.windows(2).all(|w| w[1] > w[0]),
            "client {i}'s counts went backwards: {counts:?}"
        );
        top = top.max(counts.last().copied().unwrap_or(0));
    }
    top
}

#[test]
fn follow_moves_the_counter_between_two_hosts_and_the_forwarder_keeps_the_old_address() {
    round_trip("counter");
}

/// The same on a gold (block) volume: the image's writes are tracked by
/// the kernel, so the rounds after the first carry only what changed.
#[test]
fn follow_moves_a_counter_on_a_gold_volume_between_two_hosts() {
    round_trip("counter@gold");
}

fn round_trip(volume: &str) {
    let s = Setup::start();
    let port = 18080 + (std::process::id() % 1000) as u16;
    let name = s.container();
    must(
        s.a.docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "--volume-driver",
            &s.plugin,
            "-v",
            &format!("{volume}:/data"),
            &test_image(),
            "sh",
            "-c",
            // Every address of its host's namespace.
            &counter_script(None, &port.to_string()),
        ]),
        "start the counter on A",
    );
    let url_a = format!("http://{ADDR_A}:{port}/cgi-bin/count");
    let url_b = format!("http://{ADDR_B}:{port}/cgi-bin/count");
    let t = Instant::now();
    while get(&s.link.b.path(), &url_a).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "counter not up on A");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The latency model from RTTs measured between the hosts (each host to
    // the other's agent, into one file): one pair, measured twice.
    let rtt = s.dir.path().join("rtt.toml");
    for (ns, from, to) in [
        (&s.link.a, US, format!("{EU}={ADDR_B}:7450")),
        (&s.link.b, EU, format!("{US}={ADDR_A}:7450")),
    ] {
        let out = ns
            .command(daffe_bin())
            .args(["placement", "rtt", "--from", from, "--to", &to])
            .args(["--samples", "5", "--json", "--out"])
            .arg(&rtt)
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_str(&must(out, "placement rtt")).unwrap();
        let p50 = r["pairs"][0]["p50_ms"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 50.0, "{r:#}");
        assert_eq!(r["usable"], true, "{r:#}");
    }
    let table = std::fs::read_to_string(&rtt).unwrap();
    assert_eq!(table.matches("[[pair]]").count(), 1, "{table}");
    let refused = s
        .link
        .a
        .command(daffe_bin())
        .args(["placement", "rtt", "--from", US, "--to"])
        .arg(format!("{EU}={ADDR_B}:1"))
        .arg("--out")
        .arg(&rtt)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("cannot reach eu-west-1"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&rtt).unwrap(), table);

    // Half an hour of us-east-1: the counter is where its clients are.
    s.demand(US, 0, 1800, 5);
    let dry = s.follow(&s.link.a, &["--dry-run"]);
    assert_eq!(dry[0]["outcome"], "stay", "{:#}", dry[0]);
    assert_eq!(s.where_now(), (US.to_owned(), ADDR_A.to_string()));

    // Then an hour of eu-west-1 only: a dry run says the plan ...
    s.demand(EU, 1800, 3600, 10);
    let dry = s.follow(&s.link.a, &["--dry-run"]);
    let said = dry[0]["said"].as_str().unwrap_or_default();
    assert!(
        said.contains("plan: migrate volume counter")
            && said.contains(&format!("stop {name} on us-east-1")),
        "{dry:?}"
    );
    assert!(s.a.running(&name));

    // ... and the move, with the forwarder on A, under the clients' load.
    let grace = Duration::from_secs(15);
    let (lines, logs1, from1, to1) = with_clients(&s, &url_a, Duration::ZERO, || {
        s.follow(
            &s.link.a,
            &[
                "--forward-port",
                &port.to_string(),
                "--forward-listen",
                &ADDR_A.to_string(),
                "--node",
                US,
                "--grace",
                "15s",
                "--hold",
                "30s",
            ],
        )
    });
    let tick = moved(&lines);
    assert_eq!(tick["moved"]["to"]["addr"], ADDR_B.to_string());
    let downtime1 = tick["moved"]["migrate"]["downtime_ms"]
        .as_u64()
        .expect("downtime");
    // A new ext4 image is still zeroing its inode tables (lazy init): the
    // final round carries those writes too. How little it reads when the
    // app writes little is pinned by migrate_block's test; here it is said.
    let last = tick["moved"]["migrate"]["rounds"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["final_round"] == true))
        .expect("a final round");
    eprintln!(
        "{volume}: final round moved {} bytes, read {} of {} scanned",
        last["bytes"], last["bytes_read"], last["bytes_scanned"]
    );
    assert!(
        tick["moved"]["migrate"]["rounds"].as_array().unwrap().len() >= 2,
        "{tick:#}"
    );
    let forwarded = lines
        .iter()
        .find(|l| l["forward"] == "ended")
        .expect("forward report");
    assert!(forwarded["accepted"].as_u64().unwrap() > 0, "{forwarded:#}");
    assert!(!s.a.running(&name), "A's container stopped (kept)");
    assert!(s.b.running(&name));
    assert_eq!(s.where_now(), (EU.to_owned(), ADDR_B.to_string()));
    let top1 = check_monotonic(&logs1);
    let after = get(&s.link.b.path(), &url_b).unwrap();
    // More than one up when a held request was answered after its client
    // gave up: counted, never lost.
    assert!(after > top1, "the count went back: {after} after {top1}");
    // The window: the move and the 10 s after it (within the 15 s grace;
    // past the grace the old address is closed by design).
    let end1 = window_end(tick, from1, to1);
    let (n1, first1, failed1) = failures(&logs1.concat(), from1, end1);
    eprintln!(
        "WITH the forwarder: {n1} requests to the old address during the move and the {}s after: {first1} failed their first try, {failed1} failed after one retry",
        AFTER.as_secs()
    );

    // A day later, us-east-1 again: back to A, without the forwarder.
    s.demand(US, 5400 + 86_400, 3600, 10);
    let (lines, logs2, from2, to2) = with_clients(&s, &url_b, grace, || s.follow(&s.link.b, &[]));
    let tick = moved(&lines);
    assert_eq!(tick["moved"]["to"]["addr"], ADDR_A.to_string());
    let downtime2 = tick["moved"]["migrate"]["downtime_ms"]
        .as_u64()
        .expect("downtime");
    assert!(s.a.running(&name) && !s.b.running(&name));
    assert_eq!(s.where_now(), (US.to_owned(), ADDR_A.to_string()));
    let top2 = check_monotonic(&logs2).max(after);
    assert!(top2 >= after);
    let back = get(&s.link.a.path(), &url_a).unwrap();
    assert!(back > top2, "the count went back: {back} after {top2}");
    let end2 = window_end(tick, from2, to2);
    let (n2, first2, failed2) = failures(&logs2.concat(), from2, end2);
    eprintln!(
        "WITHOUT the forwarder: {n2} requests to the old address during the move and the {}s after: {first2} failed their first try, {failed2} failed after one retry",
        AFTER.as_secs()
    );
    println!(
        "follow_hosts ({volume}): failed requests to the old address (after one retry): with forwarder {failed1}/{n1}, without {failed2}/{n2}; migrate downtime {} ms / {} ms",
        downtime1, downtime2
    );
    assert_eq!(
        failed1, 0,
        "with the forwarder no GET fails after its retry"
    );
    assert!(
        failed2 > 0,
        "without the forwarder the old address must fail (else the comparison says nothing)"
    );
}
