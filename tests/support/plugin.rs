//! A `daffe serve` for one test: unique legacy plugin name
//! (`daffe-t<unique>.sock`), its own data root and control socket in a
//! temporary directory, and a Docker engine of its own (or one the test
//! brings, [`Plugin::start_for`]), never the host's. Dropping it, also when
//! the test panics, removes the test's containers and volumes (while the
//! plugin still answers), stops the daemon, unmounts what is left, deletes
//! the directory and stops its engine.
//!
//! Why never the host's engine: dockerd keeps every legacy plugin it ever
//! used until it restarts, and asks each about every volume it does not
//! know, retrying a vanished socket for seconds. A dozen finished test
//! plugins made `docker volume ls` on the host take 15 s.

use crate::docker::{Docker, PrivateDockerd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The daffe binary: `DAFFE_BIN`, else the workspace's debug build.
pub fn daffe_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DAFFE_BIN") {
        return p.into();
    }
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/daffe");
    assert!(
        bin.exists(),
        "{} missing: build it (cargo build -p daffe-plugin) or set DAFFE_BIN",
        bin.display()
    );
    bin
}

pub struct Plugin {
    /// The driver name docker uses (`--volume-driver`).
    pub name: String,
    pub dir: tempfile::TempDir,
    pub docker: Docker,
    /// Where dockerd looks for legacy plugins.
    plugins_dir: PathBuf,
    data_root: PathBuf,
    child: Option<Child>,
    config: Option<PathBuf>,
    /// Extra environment for `daffe serve` (e.g. AWS credentials for moto).
    envs: Vec<(&'static str, String)>,
    /// The engine this plugin started for itself; stopped after the plugin
    /// (fields drop after `Drop::drop` has cleaned up).
    engine: Option<PrivateDockerd>,
}

impl Plugin {
    /// A plugin with the built-in profiles, on an engine of its own.
    pub fn start() -> Self {
        Self::start_with_env(None, Vec::new())
    }

    /// Starts a plugin for a private engine the test owns (see
    /// [`crate::docker::PrivateDockerd`]), e.g. to restart that engine.
    pub fn start_for(engine: &PrivateDockerd, config: Option<&str>) -> Self {
        let mut p = Self::start_in(
            engine.docker(),
            engine.plugins_dir(),
            config,
            Some(engine.shared_dir()),
            Vec::new(),
        );
        p.wait_ready();
        p
    }

    /// Starts with a config file whose text is `config` (sockets and data root
    /// still come from the flags), on an engine of its own.
    pub fn start_with_config(config: &str) -> Self {
        Self::start_with_env(Some(config), Vec::new())
    }

    /// Like [`Plugin::start_with_config`], with extra environment for the
    /// daemon (e.g. AWS credentials for moto).
    pub fn start_with_env(config: Option<&str>, envs: Vec<(&'static str, String)>) -> Self {
        let engine = PrivateDockerd::start();
        let mut p = Self::start_in(
            engine.docker(),
            engine.plugins_dir(),
            config,
            Some(engine.shared_dir()),
            envs,
        );
        p.engine = Some(engine);
        p.wait_ready();
        p
    }

    /// `data_parent`: where the data root goes (default: the temp dir).
    fn start_in(
        docker: Docker,
        plugins_dir: PathBuf,
        config: Option<&str>,
        data_parent: Option<PathBuf>,
        envs: Vec<(&'static str, String)>,
    ) -> Self {
        let name = crate::unique("daffe-t");
        let dir = tempfile::Builder::new()
            .prefix("daffe-e2e-")
            .tempdir()
            .unwrap();
        let config = config.map(|text| {
            let p = dir.path().join("daffe.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let data_root = data_parent
            .unwrap_or_else(|| dir.path().to_owned())
            .join(&name)
            .join("data");
        let mut p = Self {
            name,
            dir,
            docker,
            data_root,
            plugins_dir,
            child: None,
            config,
            envs,
            engine: None,
        };
        p.spawn_only();
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.plugins_dir.join(format!("{}.sock", self.name))
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    pub fn data_root(&self) -> PathBuf {
        self.data_root.clone()
    }

    fn spawn(&mut self) {
        self.spawn_only();
        self.wait_ready();
    }

    fn spawn_only(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daffe.log"))
            .unwrap();
        let mut cmd = Command::new(daffe_bin());
        cmd.arg("serve")
            .arg("--socket")
            .arg(self.socket())
            .arg("--control-socket")
            .arg(self.control_socket())
            .arg("--data-root")
            .arg(self.data_root())
            .env("DAFFE_LOG", "debug")
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        self.child = Some(cmd.spawn().expect("cannot start daffe serve"));
    }

    /// Waits until the control socket answers (both sockets are bound before
    /// either serves).
    fn wait_ready(&mut self) {
        let t = Instant::now();
        loop {
            if self.control_socket().exists()
                && self.daffe(&["volume", "ls", "--json"]).status.success()
            {
                return;
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("daffe serve exited ({st}):\n{}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "daffe serve not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daffe.log")).unwrap_or_default()
    }

    /// Runs the daffe CLI against this daemon's control socket.
    pub fn daffe(&self, args: &[&str]) -> Output {
        Command::new(daffe_bin())
            .args(args)
            .env("DAFFE_CONTROL_SOCKET", self.control_socket())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run daffe")
    }

    /// `daffe volume inspect NAME --json`.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.daffe(&["volume", "inspect", name, "--json"]);
        assert!(
            out.status.success(),
            "daffe volume inspect {name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The volume's total mount count as the daemon's store has it.
    pub fn mount_count(&self, name: &str) -> u64 {
        self.inspect(name)["mount_count"].as_u64().unwrap()
    }

    /// POSTs a VolumeDriver request straight to the plugin socket, as dockerd
    /// does; returns (HTTP status, JSON reply).
    pub fn call(&self, endpoint: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        call_socket(&self.socket(), "POST", endpoint, &body.to_string())
    }

    /// A container name owned by this test (removed on drop).
    pub fn container(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// kill -9 the daemon: no cleanup, the socket file stays behind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again on the same sockets and data root.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let d = &self.docker;
        let ids = d.run(&["ps", "-aq", "--filter", &format!("name={}-", self.name)]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            d.run(&["rm", "-f", id]);
        }
        if self.child.is_some() {
            for v in d.volume_names(&self.name) {
                d.run(&["volume", "rm", "-f", &v]);
            }
        }
        self.stop();
        let _ = std::fs::remove_file(self.socket());
        unmount_under(self.dir.path());
        unmount_under(&self.data_root);
        let _ = std::fs::remove_dir_all(&self.data_root);
    }
}

/// Unmounts everything mounted at or below `root`, deepest first.
pub fn unmount_under(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let root = root.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &root || p.starts_with(&format!("{root}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

/// One HTTP/1.0 request over a unix socket (no client crate needed for a
/// test): returns (status, JSON body).
pub fn call_socket(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(130))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: daffe\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, json) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}
