//! Two daffe hosts on one machine, built on [`crate::netns`]:
//! - host A: a private Docker engine ([`PrivateDockerd`], never the
//!   host's: dockerd keeps every legacy plugin it ever listed until it
//!   restarts, so a finished test's plugin would slow the host's `docker
//!   volume ls` by 15 s), a `daffe serve` in the root namespaces whose data
//!   root sits in that engine's shared mount, `daffe migrate` run inside
//!   namespace A;
//! - host B: its own Docker engine in namespace B (own mount namespace), a
//!   `daffe serve` inside B's namespaces, and `daffe agent` listening on B's
//!   link address.
//!
//! Both plugins use the same unique legacy plugin name, so
//! `--volume-driver NAME -v counter@gold:/data` reads the same on both hosts.
//! Everything is stopped and removed on drop.

use crate::docker::PrivateDockerd;
use crate::netns::{ADDR_B, Link, NsDockerd};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::plugin::daffe_bin;

pub use crate::docker::test_image;

/// The thesis' web counter: busybox httpd on `listen` (`PORT` or
/// `ADDR:PORT`) with a CGI script that keeps its count in /data/count
/// (written to a temp file, renamed, its filesystem synced) and answers
/// `LABEL: N`, or just `N` without a label. `sync -f /data`, not `sync`: a
/// whole-system sync waits for every other test's writes, and took a
/// request past its client's timeout in CI while a 1 GiB writer ran beside
/// it.
pub fn counter_script(label: Option<&str>, listen: &str) -> String {
    let prefix = label.map(|l| format!("{l}: ")).unwrap_or_default();
    format!(
        r#"mkdir -p /www/cgi-bin
cat > /www/cgi-bin/count <<'EOS'
#!/bin/sh
n=$(cat /data/count 2>/dev/null || echo 0)
n=$((n+1))
echo $n > /data/count.tmp && mv /data/count.tmp /data/count && sync -f /data
printf 'Content-Type: text/plain\r\n\r\n{prefix}%s\n' "$n"
EOS
chmod +x /www/cgi-bin/count
exec httpd -f -p {listen} -h /www"#
    )
}

/// The trimmed stdout of a command that must have succeeded.
pub fn must(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Starts `cmd` with stdout and stderr in `log` (info logging).
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .env("DAFFE_LOG", "info")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// SIGTERM, then SIGKILL after 10 s; waits for the exit.
pub fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let t = Instant::now();
        while c.try_wait().ok().flatten().is_none() {
            if t.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One host's daffe: plugin daemon (and, on B, the agent).
pub struct DaffeHost {
    pub label: &'static str,
    pub dir: PathBuf,
    pub socket: PathBuf,
    serve: Option<Child>,
    agent: Option<Child>,
}

impl DaffeHost {
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{what}.log"))).unwrap_or_default()
    }

    /// `daffe ARGS` against this host's daemon (from the root namespaces:
    /// the control socket is a file).
    pub fn daffe(&self, args: &[&str]) -> Output {
        Command::new(daffe_bin())
            .args(args)
            .env("DAFFE_CONTROL_SOCKET", self.control_socket())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run daffe")
    }

    pub fn inspect(&self, volume: &str) -> serde_json::Value {
        let out = must(
            self.daffe(&["volume", "inspect", volume, "--json"]),
            "inspect",
        );
        serde_json::from_str(&out).expect("inspect JSON")
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        while !(self.control_socket().exists()
            && self.daffe(&["volume", "ls", "--json"]).status.success())
        {
            if let Some(c) = &mut self.serve
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "daffe serve ({}) exited {st}:\n{}",
                    self.label,
                    self.log("serve")
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "daffe serve ({}) not ready:\n{}",
                self.label,
                self.log("serve")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 the agent (a crash mid-transfer).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test's two hosts.
pub struct TwoHosts {
    pub link: Link,
    pub docker_a: PrivateDockerd,
    pub docker_b: NsDockerd,
    pub plugin: String,
    pub a: DaffeHost,
    pub b: DaffeHost,
    dir: tempfile::TempDir,
    agent_args: Vec<String>,
}

impl TwoHosts {
    /// Link at `rate`, B's engine with the test image, plugins on both
    /// hosts, certificates, B's agent.
    pub fn start(rate: &str) -> TwoHosts {
        assert!(
            rustix::process::geteuid().is_root(),
            "migration tests need root (network namespaces, dockerd, loop devices)"
        );
        let link = Link::new(rate);
        let docker_a = PrivateDockerd::start();
        let docker_b = NsDockerd::start(&link.b);
        docker_b.load_image(&test_image());
        let plugin = crate::unique("daffe-t");
        let dir = tempfile::Builder::new()
            .prefix("daffe-mig-")
            .tempdir_in("/var/tmp")
            .unwrap();
        // A's data root must sit in its engine's shared mount, so A's loop
        // mounts reach the engine's mount namespace.
        let a_dir = docker_a.shared_dir().join("a");
        let mk = |label: &'static str, socket: PathBuf| {
            let d = if label == "a" {
                a_dir.clone()
            } else {
                dir.path().join(label)
            };
            std::fs::create_dir_all(&d).unwrap();
            DaffeHost {
                label,
                dir: d,
                socket,
                serve: None,
                agent: None,
            }
        };
        let mut a = mk("a", docker_a.plugins_dir().join(format!("{plugin}.sock")));
        let mut b = mk("b", docker_b.plugins_dir.join(format!("{plugin}.sock")));
        // A's daemon serves A's private engine from the root namespaces.
        let mut cmd = Command::new(daffe_bin());
        serve_args(&mut cmd, &a);
        a.serve = Some(spawn_logged(cmd, &a.dir.join("serve.log")));
        a.wait_ready();
        // B's daemon lives in B's network and mount namespaces, so its loop
        // mounts are what B's containers see.
        let mut cmd = docker_b.enter(daffe_bin());
        serve_args(&mut cmd, &b);
        b.serve = Some(spawn_logged(cmd, &b.dir.join("serve.log")));
        b.wait_ready();
        // Certificates: a CA on A, a certificate for B.
        must(
            Command::new(daffe_bin())
                .args(["agent", "init", "--name", "hosta", "--dir"])
                .arg(a.tls_dir())
                .output()
                .unwrap(),
            "agent init",
        );
        must(
            Command::new(daffe_bin())
                .args(["agent", "issue", "--name", "hostb", "--ca-dir"])
                .arg(a.tls_dir())
                .arg("--out")
                .arg(b.tls_dir())
                .output()
                .unwrap(),
            "agent issue",
        );
        let mut hosts = TwoHosts {
            link,
            docker_a,
            docker_b,
            plugin,
            a,
            b,
            dir,
            agent_args: vec![],
        };
        hosts.start_agent(&[]);
        hosts
    }

    /// (Re)starts B's agent with extra flags (e.g. `--io-timeout 2s`).
    pub fn start_agent(&mut self, extra: &[&str]) {
        self.start_agent_env(extra, &[]);
    }

    /// [`TwoHosts::start_agent`] with extra environment variables (the
    /// agent's test hooks, e.g. `DAFFE_TEST_LOSE_COMMIT_REPLY`).
    pub fn start_agent_env(&mut self, extra: &[&str], env: &[(&str, &Path)]) {
        self.b.kill_agent();
        self.agent_args = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.link.b.command(daffe_bin());
        cmd.arg("agent")
            .arg("--listen")
            .arg(format!("{ADDR_B}:7450"))
            .arg("--name")
            .arg("hostb")
            .arg("--tls-dir")
            .arg(self.b.tls_dir())
            .arg("--control-socket")
            .arg(self.b.control_socket())
            .args(&self.agent_args)
            .envs(env.iter().copied());
        let log = self.b.dir.join(format!("agent-{}.log", crate::unique("")));
        self.b.agent = Some(spawn_logged(cmd, &log));
        // The agent binds at once; give it a moment so the first dial works
        // (migrate would retry anyway).
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Starts `daffe migrate VOLUME --to B ARGS...` in namespace A. Lines of
    /// its stderr arrive on the returned channel as they are printed.
    pub fn migrate(&self, volume: &str, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut cmd = self.link.a.command(daffe_bin());
        cmd.arg("migrate")
            .arg(volume)
            .arg("--to")
            .arg(ADDR_B.to_string())
            .arg("--name")
            .arg("hosta")
            .arg("--tls-dir")
            .arg(self.a.tls_dir())
            .arg("--control-socket")
            .arg(self.a.control_socket())
            .arg("--json")
            .args(extra)
            .env("DAFFE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start daffe migrate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[migrate] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    /// Waits for migrate to exit; returns its JSON report (panics with the
    /// logs if it failed).
    pub fn finish(&self, child: Child) -> serde_json::Value {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "daffe migrate failed: {stdout}\nagent log:\n{}\nB serve log:\n{}",
            self.agent_logs(),
            self.b.log("serve")
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report JSON: {e}: {stdout}"))
    }

    pub fn agent_logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.b.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("agent-") {
                    s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        s
    }

    /// `docker ARGS` on host A (its private engine).
    pub fn docker_a(&self, args: &[&str]) -> Output {
        self.docker_a
            .docker()
            .command()
            .args(args)
            .output()
            .expect("docker -H A")
    }

    /// Runs `sh -c SCRIPT` in a container on host A with volume `name`
    /// (this plugin's) at /data, and waits for it: the volume is left
    /// written and unmounted. Panics with the output if it fails.
    pub fn write_on_a(&self, name: &str, script: &str) {
        ok(
            self.docker_a(&[
                "run",
                "--rm",
                "--volume-driver",
                &self.plugin,
                "-v",
                &format!("{name}:/data"),
                &crate::docker::test_image(),
                "sh",
                "-c",
                script,
            ]),
            &format!("writing volume {name} on A"),
        );
    }

    /// `docker ARGS` on host B.
    pub fn docker_b(&self, args: &[&str]) -> Output {
        self.docker_b
            .docker()
            .args(args)
            .output()
            .expect("docker -H B")
    }

    /// A container name owned by this test.
    pub fn container(&self, what: &str) -> String {
        format!("{}-{what}", self.plugin)
    }

    /// `curl URL` from inside namespace A (`root` = the root namespace) or B.
    pub fn curl_b(&self, url: &str) -> String {
        must(
            self.link
                .b
                .command("curl")
                .args(["-sS", "--max-time", "10", url])
                .output()
                .unwrap(),
            "curl in B",
        )
    }
}

fn serve_args(cmd: &mut Command, h: &DaffeHost) {
    cmd.arg("serve")
        .arg("--socket")
        .arg(&h.socket)
        .arg("--control-socket")
        .arg(h.control_socket())
        .arg("--data-root")
        .arg(h.dir.join("data"));
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Containers and volumes go while the plugins still answer.
        for (docker, label) in [(None, "a"), (Some(()), "b")] {
            let run = |args: &[&str]| match docker {
                None => self.docker_a(args),
                Some(()) => self.docker_b(args),
            };
            let ps = run(&["ps", "-aq", "--filter", &format!("name={}-", self.plugin)]);
            for id in String::from_utf8_lossy(&ps.stdout).split_whitespace() {
                run(&["rm", "-f", id]);
            }
            let vols = run(&[
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("driver={}", self.plugin),
            ]);
            for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
                run(&["volume", "rm", "-f", v]);
            }
            let _ = label;
        }
        self.b.kill_agent();
        stop(&mut self.a.serve);
        stop(&mut self.b.serve);
        let _ = std::fs::remove_file(&self.a.socket);
        // Unmount what A's plugin may have left (B's mounts die with its
        // mount namespace when its engine stops; A's engine unmounts its
        // own directory when it is dropped, after this).
        crate::plugin::unmount_under(&self.a.dir);
        crate::plugin::unmount_under(self.dir.path());
    }
}

/// The stdout of a command that must succeed; panics with `what`, its
/// stdout and stderr otherwise.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits for a line of `daffe migrate`'s stderr (from
/// [`TwoHosts::migrate`]'s receiver) that contains `needle`.
pub fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains(needle) => return,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("migrate's stderr ended before {needle:?}: {e}"),
        }
    }
    panic!("no {needle:?} from migrate within {limit:?}");
}
