//! A real three-manager Docker Swarm on one machine, for the cluster tests.
//!
//! Shape (CONTRIBUTING.md, "Test hosts on one machine", for why):
//! - a bridge `br0` in a namespace of its own, the "switch";
//! - nodes 1..=N, each a network namespace with `eth0` = 10.232.0.N/24 on a
//!   veth to that bridge, and its own mount and UTS namespaces (hostname
//!   `swnodeN`) held by a `sleep` process, so they outlive a killed dockerd;
//! - in each node a containerd and a dockerd using it (own data root, exec
//!   root, socket, cgroup parent; no bridge, no iptables), and the node's
//!   own legacy plugin directory bound over /run/docker/plugins;
//! - a 3-member etcd cluster, one member per node namespace ([`crate::etcd`]);
//! - the test image loaded into every engine; every node labelled
//!   `daffe.node=swnodeN`, so services are placed by a label constraint.
//!
//! Addresses exist only inside these namespaces: each swarm has its own
//! switch, so parallel swarms reuse 10.232.0.0/24 without meeting.
//!
//! Failure tools: [`Swarm::kill_node`] (kill -9 of its dockerd and of the
//! processes a test started there), [`Swarm::cut`] / [`Swarm::restore`] (the
//! node's cable), [`Swarm::shape`] (tbf), and the etcd members' `kill`.
//!
//! Teardown is one idempotent shell script written when the swarm is made:
//! engines get SIGTERM (so they stop their containers and call their plugins
//! while those still run), then every process left in the swarm's network
//! namespaces or cgroups is killed, loop devices backed by files under the
//! swarm's directory are detached, and the namespaces and directories are
//! removed. [`Drop`] runs it; so does a reaper process when the test process
//! ends any other way (a panic in a shared swarm, an abort, a kill), which is
//! what makes [`shared`] safe.

use crate::docker::Docker;
use crate::etcd::EtcdCluster;
use crate::postgres::Place;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The swarm's subnet; node N is .N, inside the swarm's own namespaces.
pub const SUBNET: [u8; 3] = [10, 232, 0];

/// Overlay networks' address pool (swarm's default is 10.0.0.0/8); these
/// addresses too exist only inside the node namespaces.
const ADDR_POOL: &str = "10.233.0.0/16";

/// The node label services are placed by: `node.labels.daffe.node==swnodeN`.
pub const NODE_LABEL: &str = "daffe.node";

/// How long one engine may take to answer after start (two busy cores,
/// containerd starting too).
const ENGINE_READY: Duration = Duration::from_secs(60);

/// How long the swarm may take to see all its managers Ready after a join
/// or a restart (raft and the dispatcher's first heartbeat).
const NODES_READY: Duration = Duration::from_secs(90);

/// Node `n`'s address (1-based).
pub fn node_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        SUBNET[0],
        SUBNET[1],
        SUBNET[2],
        u8::try_from(n).expect("node index"),
    )
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// Managers (3: killing one keeps the raft quorum).
    pub nodes: usize,
    /// A member of an etcd cluster in every node.
    pub etcd: bool,
    /// `swarm init --dispatcher-heartbeat` (Docker's default, 5 s, when None).
    /// A node is declared Down after a few missed heartbeats, so this sets
    /// how soon a failed node's tasks are rescheduled.
    pub dispatcher_heartbeat: Option<Duration>,
    /// Images copied from the default engine into every node.
    pub images: Vec<String>,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            etcd: true,
            dispatcher_heartbeat: None,
            images: vec![crate::docker::test_image()],
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ip(args: &[&str]) -> String {
    must(Command::new("ip").args(args))
}

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
    exec_root: PathBuf,
    cgroup_parent: String,
    holder: Option<Child>,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    procs: Vec<(String, Child)>,
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.netns)
    }

    fn holder_pid(&self) -> u32 {
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
    fn start_containerd(&mut self) {
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

fn stop_child(mut c: Child, limit: Duration) {
    let _ = Command::new("kill").arg(c.id().to_string()).status();
    let t = Instant::now();
    while c.try_wait().ok().flatten().is_none() {
        if t.elapsed() > limit {
            let _ = c.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A task of a service as `docker service ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
}

/// Parses `docker service ps --format '{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}'`.
pub fn parse_tasks(text: &str) -> Vec<Task> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t').map(str::trim);
            let mut next = || f.next().unwrap_or("").to_owned();
            Task {
                node: next(),
                desired: next(),
                current: next(),
                error: next(),
            }
        })
        .collect()
}

/// The swarm: nodes, switch, etcd, teardown.
#[derive(Debug)]
pub struct Swarm {
    pub id: String,
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub etcd: Option<EtcdCluster>,
    /// Seconds each formation step took (for the CI cost in reports).
    pub timings: Vec<(&'static str, Duration)>,
    bridge_ns: String,
    teardown: PathBuf,
    reaper: Option<Child>,
}

impl Swarm {
    /// Builds the whole swarm (see the module docs); panics with logs if a
    /// step fails, after tearing down what it made.
    pub fn start(opts: SwarmOptions) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "swarm tests need root (namespaces, dockerd)"
        );
        assert!(opts.nodes >= 1 && opts.nodes < 250, "{} nodes", opts.nodes);
        let id = crate::unique("sw");
        let dir = PathBuf::from(format!("/var/tmp/daffe-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let teardown = dir.join("teardown.sh");
        let mut s = Swarm {
            bridge_ns: format!("df{id}b"),
            id,
            dir,
            nodes: Vec::new(),
            etcd: None,
            timings: Vec::new(),
            teardown,
            reaper: None,
        };
        // The teardown script and its reaper come first: from here on any
        // panic leaves nothing behind.
        std::fs::write(&s.teardown, s.teardown_script(opts.nodes)).unwrap();
        s.reaper = Some(
            Command::new("setsid")
                .arg("sh")
                .arg("-c")
                .arg(r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec sh "$2""#)
                .arg("reaper")
                .arg(std::process::id().to_string())
                .arg(&s.teardown)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("setsid"),
        );
        let mut t = Instant::now();
        let mut lap = |s: &mut Swarm, what| {
            s.timings.push((what, t.elapsed()));
            t = Instant::now();
        };
        s.make_network(opts.nodes);
        lap(&mut s, "namespaces and switch");
        std::thread::scope(|sc| {
            for n in &mut s.nodes {
                sc.spawn(move || {
                    n.start_containerd();
                    n.start_dockerd();
                });
            }
        });
        lap(&mut s, "engines");
        s.load_images(&opts.images);
        lap(&mut s, "images");
        s.form(opts.dispatcher_heartbeat);
        lap(&mut s, "swarm init, joins, labels");
        if opts.etcd {
            let members: Vec<_> = s
                .nodes
                .iter()
                .map(|n| (format!("e{}", n.index), n.addr, n.netns_path()))
                .collect();
            s.etcd = Some(EtcdCluster::start(&s.dir, &members));
            lap(&mut s, "etcd cluster");
        }
        s
    }

    fn make_network(&mut self, count: usize) {
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        ip(&["netns", "add", &self.bridge_ns]);
        let br = |args: &[&str]| {
            let mut all = vec!["-n", self.bridge_ns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        br(&["link", "set", "lo", "up"]);
        br(&["link", "add", "br0", "type", "bridge"]);
        br(&["link", "set", "br0", "up"]);
        for n in 1..=count {
            let name = format!("swnode{n}");
            let netns = format!("df{}n{n}", self.id);
            ip(&["netns", "add", &netns]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            // Both ends are born in their namespaces: no name ever appears
            // in the root namespace, so parallel swarms cannot clash.
            let port = format!("n{n}");
            br(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            br(&["link", "set", &port, "master", "br0"]);
            br(&["link", "set", &port, "up"]);
            let addr = node_addr(n);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            let dir = self.dir.join(format!("n{n}"));
            let plugins_dir = PathBuf::from(format!("/run/daffe-{}-n{n}-plugins", self.id));
            std::fs::create_dir_all(&plugins_dir).unwrap();
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::write(dir.join("daemon.json"), "{}\n").unwrap();
            // The holder owns the node's mount and UTS namespaces: private
            // propagation (nothing leaks to the host), the node's plugin
            // directory, its hostname.
            let holder = Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{netns}"))
                .args([
                    "--",
                    "unshare",
                    "-m",
                    "-u",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    // /run/containerd: containerd's shims keep their
                    // sockets there whatever the state directory; a tmpfs
                    // of the node's own makes them vanish with the node.
                    r#"mount --bind "$1" /run/docker/plugins && mkdir -p /run/containerd && mount -t tmpfs -o mode=0711 daffe-node /run/containerd && hostname "$2" && exec sleep infinity"#,
                    "holder",
                ])
                .arg(&plugins_dir)
                .arg(&name)
                .stdin(Stdio::null())
                .spawn()
                .expect("unshare");
            let node = Node {
                index: n,
                addr,
                netns,
                socket: PathBuf::from(format!("/run/daffe-{}-n{n}.sock", self.id)),
                exec_root: PathBuf::from(format!("/run/daffe-{}-n{n}", self.id)),
                cgroup_parent: format!("/daffe-{}-n{n}", self.id),
                plugins_dir,
                dir,
                name,
                holder: Some(holder),
                containerd: None,
                dockerd: None,
                procs: Vec::new(),
            };
            self.nodes.push(node);
        }
        // sh execs sleep once the bind and hostname are done.
        for node in &mut self.nodes {
            let pid = node.holder_pid();
            let t = Instant::now();
            while std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() != "sleep")
                .unwrap_or(true)
            {
                if let Some(h) = &mut node.holder
                    && let Ok(Some(st)) = h.try_wait()
                {
                    panic!("node {} holder exited: {st}", node.name);
                }
                assert!(t.elapsed() < Duration::from_secs(10), "holder not ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn load_images(&self, images: &[String]) {
        if images.is_empty() {
            return;
        }
        let tar = self.dir.join("images.tar");
        let mut save = Command::new("docker");
        save.arg("save").arg("-o").arg(&tar).args(images);
        must(&mut save);
        std::thread::scope(|sc| {
            for n in &self.nodes {
                let tar = &tar;
                sc.spawn(move || {
                    n.docker().ok(&["load", "-q", "-i", &tar.to_string_lossy()]);
                });
            }
        });
        let _ = std::fs::remove_file(&tar);
    }

    fn form(&mut self, heartbeat: Option<Duration>) {
        let first = &self.nodes[0];
        let addr = first.addr.to_string();
        let mut init = vec![
            "swarm".to_owned(),
            "init".into(),
            "--advertise-addr".into(),
            addr.clone(),
            "--listen-addr".into(),
            format!("{addr}:2377"),
            "--default-addr-pool".into(),
            ADDR_POOL.into(),
        ];
        if let Some(h) = heartbeat {
            init.push("--dispatcher-heartbeat".into());
            init.push(format!("{}ms", h.as_millis()));
        }
        let init: Vec<&str> = init.iter().map(String::as_str).collect();
        first.docker().ok(&init);
        let token = first.docker().ok(&["swarm", "join-token", "-q", "manager"]);
        // Joins one after the other: each adds a raft member, and raft wants
        // the previous one settled.
        for n in &self.nodes[1..] {
            let a = n.addr.to_string();
            n.docker().ok(&[
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &a,
                "--listen-addr",
                &format!("{a}:2377"),
                &format!("{addr}:2377"),
            ]);
        }
        self.wait_nodes_ready(NODES_READY);
        let m = self.manager();
        for n in &self.nodes {
            m.ok(&[
                "node",
                "update",
                "--label-add",
                &format!("{NODE_LABEL}={}", n.name),
                &n.name,
            ]);
        }
    }

    /// Waits until every node is Ready and (for managers) Reachable, as seen
    /// by a manager that has the control plane.
    pub fn wait_nodes_ready(&self, limit: Duration) {
        let t = Instant::now();
        loop {
            let out = self.try_manager().map(|m| {
                m.run(&[
                    "node",
                    "ls",
                    "--format",
                    "{{.Hostname}} {{.Status}} {{.ManagerStatus}}",
                ])
            });
            let text = out
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ready = self.nodes.iter().all(|n| {
                text.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&n.name.as_str())
                        && f.get(1) == Some(&"Ready")
                        && matches!(f.get(2), Some(&"Leader") | Some(&"Reachable"))
                })
            });
            if ready {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "swarm nodes not ready after {limit:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A manager engine that has the control plane (panics if none).
    pub fn manager(&self) -> Docker {
        self.try_manager()
            .expect("no manager with the control plane answers")
    }

    fn try_manager(&self) -> Option<Docker> {
        self.nodes.iter().map(Node::docker).find(|d| {
            let out = d.run(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
        })
    }

    /// Node `n` (1-based).
    pub fn node(&mut self, n: usize) -> &mut Node {
        &mut self.nodes[n - 1]
    }

    /// kill -9 node `n`'s engine and every process a test started there
    /// (its daffe). Its containers keep running, as on a real host whose
    /// daemon crashed.
    pub fn kill_node(&mut self, n: usize) {
        let node = self.node(n);
        node.kill_dockerd();
        for (_, mut c) in node.procs.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Cuts node `n`'s cable (the switch port goes down: no carrier on
    /// either end; addresses and routes stay).
    pub fn cut(&self, n: usize) {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &format!("n{n}"),
            "down",
        ]);
    }

    /// Plugs node `n`'s cable back in.
    pub fn restore(&self, n: usize) {
        ip(&["-n", &self.bridge_ns, "link", "set", &format!("n{n}"), "up"]);
    }

    /// Shapes node `n`'s link in both directions to `rate` (a tc rate such
    /// as `100mbit`), replacing any earlier shaping.
    pub fn shape(&self, n: usize, rate: &str) {
        let netns = &self.nodes[n - 1].netns;
        let port = format!("n{n}");
        for (ns, dev) in [(netns.as_str(), "eth0"), (self.bridge_ns.as_str(), &port)] {
            // burst/latency: as in crate::netns (veth hands tbf 64 KiB GSO
            // packets; 50 ms of queue before drops).
            must(
                Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{ns}"))
                    .args([
                        "--", "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                        "burst", "256kb", "latency", "50ms",
                    ]),
            );
        }
    }

    /// `docker service create` of `name` on node `on` (by its label), with
    /// `--network host` (no routing mesh here) and no registry lookup.
    /// `flags` go before the image (e.g. `--mount ...`), `cmd` after it.
    pub fn create_service(&self, name: &str, on: usize, flags: &[&str], image: &str, cmd: &[&str]) {
        let constraint = format!("node.labels.{NODE_LABEL}=={}", self.nodes[on - 1].name);
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--no-resolve-image",
            "--network",
            "host",
            "--constraint",
            &constraint,
        ];
        args.extend_from_slice(flags);
        args.push(image);
        args.extend_from_slice(cmd);
        self.manager().ok(&args);
    }

    /// Moves a service's placement from node `from` to node `to` by swapping
    /// its label constraint (what an operator does for a planned move).
    pub fn move_service(&self, name: &str, from: usize, to: usize) {
        let c = |n: usize| format!("node.labels.{NODE_LABEL}=={}", self.nodes[n - 1].name);
        self.manager().ok(&[
            "service",
            "update",
            "--detach",
            "--constraint-rm",
            &c(from),
            "--constraint-add",
            &c(to),
            name,
        ]);
    }

    pub fn remove_service(&self, name: &str) {
        self.manager().ok(&["service", "rm", name]);
    }

    /// The service's tasks, newest first.
    pub fn tasks(&self, name: &str) -> Vec<Task> {
        let out = self.manager().ok(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}",
            name,
        ]);
        parse_tasks(&out)
    }

    /// Waits until a task of `name` runs on node `n`; returns the id of its
    /// container there.
    pub fn wait_running(&self, name: &str, n: usize, limit: Duration) -> String {
        let node = &self.nodes[n - 1];
        let t = Instant::now();
        loop {
            let tasks = self.tasks(name);
            let running = tasks.iter().any(|t| {
                t.node == node.name && t.desired == "Running" && t.current.starts_with("Running")
            });
            if running {
                let id = node.docker().ok(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={name}"),
                ]);
                if let Some(id) = id.lines().next() {
                    return id.to_owned();
                }
            }
            assert!(
                t.elapsed() < limit,
                "service {name} not running on {} after {limit:?}: {tasks:?}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Puts the swarm back as [`Swarm::start`] left it, for the next test of
    /// a [`shared`] swarm: services removed, cables plugged in and
    /// unshaped, processes tests started stopped, dead engines and etcd
    /// members started again, every node Ready.
    pub fn reset(&mut self) {
        for n in 1..=self.nodes.len() {
            self.restore(n);
            let netns = self.nodes[n - 1].netns.clone();
            for (ns, dev) in [
                (netns, "eth0".to_owned()),
                (self.bridge_ns.clone(), format!("n{n}")),
            ] {
                let _ = Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{ns}"))
                    .args(["--", "tc", "qdisc", "del", "dev", &dev, "root"])
                    .output();
            }
        }
        for node in &mut self.nodes {
            if node
                .containerd
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some())
            {
                node.start_containerd();
            }
            if node.dockerd_pid().is_none() {
                node.start_dockerd();
            }
        }
        // A restarted engine, or a node whose cable was cut for a while,
        // takes up to about 20 s to be Ready again; one `node ls` otherwise.
        self.wait_nodes_ready(NODES_READY);
        let m = self.manager();
        let services = m.ok(&["service", "ls", "-q"]);
        for s in services.lines() {
            m.run(&["service", "rm", s]);
        }
        // Tasks' containers go after their services (each stop is bounded
        // by its grace period); what a test ran by hand goes by force. The
        // next test starts on empty engines.
        for node in &self.nodes {
            let d = node.docker();
            let t = Instant::now();
            loop {
                let left = d.ok(&["ps", "-aq"]);
                if left.is_empty() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    for id in left.lines() {
                        d.run(&["rm", "-f", id]);
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "containers linger on {}",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for node in &mut self.nodes {
            for (_, c) in node.procs.drain(..) {
                stop_child(c, Duration::from_secs(10));
            }
        }
        if let Some(e) = &mut self.etcd {
            for i in 0..e.members.len() {
                if !e.members[i].is_running() {
                    e.start_member(i);
                }
            }
            e.wait_ready(0, Duration::from_secs(30));
        }
    }

    /// The teardown script (see the module docs). Everything it touches is
    /// named after this swarm's id, or found through its namespaces.
    fn teardown_script(&self, count: usize) -> String {
        let nodes: Vec<String> = (1..=count).map(|n| n.to_string()).collect();
        format!(
            r#"#!/bin/sh
# Tears down swarm {id}: idempotent.
ID={id}
DIR={dir}
NODES="{nodes}"
BRNS={brns}
# Processes are found only through this swarm's own namespaces and cgroups
# (never by name or by a pid file that may have gone stale): everything in
# the nodes' network namespaces (holders, engines, containerd, shims, etcd,
# plugins, host-network containers) or in the engines' cgroups (containers
# with namespaces of their own).
inos=
for n in $NODES; do
  i=$(stat -L -c %i /var/run/netns/df${{ID}}n$n 2>/dev/null) && inos="$inos $i"
done
victims() {{
  if [ -n "$inos" ]; then
    for p in /proc/[0-9]*; do
      i=$(stat -L -c %i $p/ns/net 2>/dev/null) || continue
      case " $inos " in *" $i "*) echo ${{p#/proc/}};; esac
    done
  fi
  for n in $NODES; do
    for d in /sys/fs/cgroup/*/daffe-$ID-n$n; do
      [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {{}} + 2>/dev/null
    done
  done
}}
# Engines first, with SIGTERM: they stop their containers and call their
# plugins while those still run (15 s at most).
engines=
for p in $(victims | sort -u); do
  [ "$(cat /proc/$p/comm 2>/dev/null)" = dockerd ] && engines="$engines $p"
done
if [ -n "$engines" ]; then
  kill -TERM $engines 2>/dev/null
  i=0
  alive() {{ for p in $engines; do kill -0 $p 2>/dev/null && return 0; done; return 1; }}
  while [ $i -lt 150 ] && alive; do sleep 0.1; i=$((i+1)); done
fi
for sig in TERM KILL KILL; do
  v=$(victims | sort -u)
  [ -z "$v" ] && break
  kill -$sig $v 2>/dev/null
  sleep 1
done
for n in $NODES; do
  for d in /sys/fs/cgroup/*/daffe-$ID-n$n; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {{}} + 2>/dev/null
  done
done
# Loop devices over files of this swarm (plugins' block volumes).
losetup -l -n -O NAME,BACK-FILE 2>/dev/null | while read -r dev file; do
  case "$file" in "$DIR"/*) losetup -d "$dev" 2>/dev/null;; esac
done
# Mounts in this namespace under the swarm's paths (none expected: the
# nodes' mounts died with their namespaces).
awk '{{print $5}}' /proc/self/mountinfo | grep -E "^($DIR|/run/daffe-$ID-)" | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null
done
for n in $NODES; do ip netns del df${{ID}}n$n 2>/dev/null; done
ip netns del "$BRNS" 2>/dev/null
i=0
while [ $i -lt 10 ]; do
  rm -rf "$DIR" /run/daffe-$ID-n* 2>/dev/null && break
  sleep 0.5; i=$((i+1))
done
exit 0
"#,
            id = self.id,
            dir = self.dir.display(),
            nodes = nodes.join(" "),
            brns = self.bridge_ns,
        )
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // Processes this value owns: let the script find them, but reap our
        // children so none is left a zombie of the test process.
        self.etcd.take();
        for node in &mut self.nodes {
            for (_, c) in node.procs.drain(..) {
                stop_child(c, Duration::from_secs(10));
            }
        }
        let _ = Command::new("sh").arg(&self.teardown).status();
        for node in &mut self.nodes {
            for c in [
                node.dockerd.take(),
                node.containerd.take(),
                node.holder.take(),
            ]
            .into_iter()
            .flatten()
            {
                stop_child(c, Duration::from_secs(5));
            }
        }
        if let Some(mut r) = self.reaper.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One swarm for every test of a test binary that asks for it: forming one
/// costs several seconds (see the smoke test), so tests that need a plain
/// swarm share it, one at a time (the guard holds a lock), each finding it
/// [`Swarm::reset`]. It is torn down by its reaper when the test process
/// exits (statics are never dropped).
pub fn shared() -> MutexGuard<'static, Swarm> {
    static SWARM: OnceLock<Mutex<Swarm>> = OnceLock::new();
    let m = SWARM.get_or_init(|| Mutex::new(Swarm::start(SwarmOptions::default())));
    // A test that panicked while holding the swarm poisons the lock; reset
    // repairs what it may have broken.
    let mut g = m.lock().unwrap_or_else(PoisonError::into_inner);
    g.reset();
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ps_lines_parse() {
        let text = "swnode2\tRunning\tRunning 3 seconds ago\t\n\
                    swnode1\tShutdown\tShutdown 4 seconds ago\t\n\
                    swnode1\tRunning\tPending 2 seconds ago\t\"no suitable node\"\n";
        let t = parse_tasks(text);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            Task {
                node: "swnode2".into(),
                desired: "Running".into(),
                current: "Running 3 seconds ago".into(),
                error: String::new(),
            }
        );
        assert_eq!(t[2].error, "\"no suitable node\"");
        assert!(parse_tasks("\n").is_empty());
    }

    #[test]
    fn node_addresses_are_in_the_swarm_subnet() {
        assert_eq!(node_addr(1), Ipv4Addr::new(10, 232, 0, 1));
        assert_eq!(node_addr(3).octets()[..3], SUBNET);
    }
}
