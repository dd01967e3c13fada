//! One swarm node: its namespaces (held by a `sleep`), its containerd and
//! engine, and the processes a test started there.

use super::ENGINE_READY;
use crate::docker::Docker;
use crate::postgres::Place;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node: namespaces, engine, and processes a test started there.
#[derive(Debug)]
pub struct Node {
    /// 1-based.
    pub index: usize,
    /// Hostname, swarm node name and label value: `swnodeN`.
    pub name: String,
    pub addr: Ipv4Addr,
    /// Network namespace name (`ip netns`).
    pub netns: String,
    /// Node's files: engine data, logs, and room for a test's plugin data.
    pub dir: PathBuf,
    /// Host path the node's engine sees as /run/docker/plugins.
    pub plugins_dir: PathBuf,
    /// The engine's API socket (a host path).
    pub socket: PathBuf,
    pub(super) exec_root: PathBuf,
    pub(super) cgroup_parent: String,
    pub(super) holder: Option<Child>,
    pub(super) containerd: Option<Child>,
    pub(super) dockerd: Option<Child>,
    pub(super) procs: Vec<(String, Child)>,
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
    }

    pub(super) fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(Child::id).expect("node holder")
    }

    /// A command run inside this node's network, mount and UTS namespaces
    /// (where its engine, plugin and containers live).
    pub fn enter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let h = self.holder_pid();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg(format!("--mount=/proc/{h}/ns/mnt"))
            .arg(format!("--uts=/proc/{h}/ns/uts"))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// The same place for the PostgreSQL harness.
    pub fn place(&self) -> Place {
        Place::namespaces(
            &self.netns_path(),
            Path::new(&format!("/proc/{}/ns/mnt", self.holder_pid())),
        )
    }

    /// The docker CLI for this node's engine.
    pub fn docker(&self) -> Docker {
        Docker::at(&self.socket)
    }

    /// Where a legacy plugin named `name` puts its socket for this engine.
    pub fn plugin_socket(&self, name: &str) -> PathBuf {
        self.plugins_dir.join(format!("{name}.sock"))
    }

    /// Starts `cmd` (made with [`Node::enter`]) as a process of this node,
    /// output to `dir/label.log`; it is killed by [`Swarm::kill_node`] and
    /// at teardown. Returns its pid.
    pub fn spawn(&mut self, label: &str, cmd: Command) -> u32 {
        let child = self.launch(label, cmd);
        let pid = child.id();
        self.procs.push((label.to_owned(), child));
        pid
    }

    /// Spawns `cmd` with its output appended to `dir/label.log`.
    fn launch(&self, label: &str, mut cmd: Command) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{label}.log")))
            .unwrap();
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} on {}: {e}", self.name))
    }

    /// Waits until `ready()` (at most [`ENGINE_READY`]); panics with the
    /// log if `child` exits first.
    fn wait_started(&self, child: &mut Child, label: &str, ready: impl Fn() -> bool) {
        let t = Instant::now();
        while !ready() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("{label} on {} exited {st}:\n{}", self.name, self.log(label));
            }
            assert!(
                t.elapsed() < ENGINE_READY,
                "{label} on {} not ready:\n{}",
                self.name,
                self.log(label)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 the processes started under `label`.
    pub fn kill9(&mut self, label: &str) {
        for (_, mut c) in self.procs.extract_if(.., |(l, _)| l == label) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the processes started under `label` and wait (10 s, then -9).
    pub fn stop(&mut self, label: &str) {
        for (_, c) in self.procs.extract_if(.., |(l, _)| l == label) {
            stop_child(c, Duration::from_secs(10));
        }
    }

    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// The engine's pid, if it runs.
    pub fn dockerd_pid(&mut self) -> Option<u32> {
        let c = self.dockerd.as_mut()?;
        c.try_wait().ok().flatten().is_none().then(|| c.id())
    }

    /// The node's containerd socket (under the exec root: a short path).
    fn containerd_socket(&self) -> PathBuf {
        self.exec_root.join("containerd.sock")
    }

    /// Starts the node's containerd, a service of its own as on a Debian
    /// host (docker.service and containerd.service): a dockerd killed with
    /// -9 leaves it and the containers' shims running, and a restarted
    /// dockerd reconnects to it. (A containerd that dockerd starts itself
    /// outlives it too, and blocks the next one's start on its lock.)
    pub(super) fn start_containerd(&mut self) {
        let config = self.dir.join("containerd.toml");
        std::fs::write(
            &config,
            // The CRI plugin is for Kubernetes; dockerd's own containerd
            // disables it too.
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .unwrap();
        let mut cmd = self.enter("containerd");
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(self.dir.join("containerd"))
            .arg("--state")
            .arg(self.exec_root.join("containerd"))
            .arg("--address")
            .arg(self.containerd_socket());
        // Unowned on a panic: teardown finds it in the node's namespace.
        let mut child = self.launch("containerd", cmd);
        let socket = self.containerd_socket();
        self.wait_started(&mut child, "containerd", || socket.exists());
        self.containerd = Some(child);
    }

    /// Starts (or restarts) the node's engine and waits until it answers.
    pub fn start_dockerd(&mut self) {
        assert!(self.dockerd_pid().is_none(), "{}: dockerd runs", self.name);
        let mut cmd = self.enter("dockerd");
        cmd.arg("--config-file")
            .arg(self.dir.join("daemon.json"))
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--containerd")
            .arg(self.containerd_socket())
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
            ]);
        let mut child = self.launch("dockerd", cmd);
        let docker = self.docker();
        self.wait_started(&mut child, "dockerd", || {
            docker
                .run(&["info", "--format", "{{.ID}}"])
                .status
                .success()
        });
        self.dockerd = Some(child);
    }

    /// kill -9 the engine (its containers keep running under their shims).
    pub fn kill_dockerd(&mut self) {
        if let Some(mut c) = self.dockerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(super) fn stop_child(mut c: Child, limit: Duration) {
    let _ = Command::new("kill").arg(c.id().to_string()).status();
    let t = Instant::now();
    while c.try_wait().ok().flatten().is_none() {
        if t.elapsed() > limit {
            let _ = c.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
