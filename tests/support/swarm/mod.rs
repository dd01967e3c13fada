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

mod clients;
mod daffe;
mod node;
mod services;
mod teardown;

pub use clients::Client;
pub use daffe::{CLUSTER, Lease};
pub use node::Node;
use node::stop_child;
pub use services::{Task, parse_tasks};

use crate::docker::Docker;
use crate::etcd::EtcdCluster;
use std::net::Ipv4Addr;
use std::path::PathBuf;
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
                    format!(
                        r#"{} && mount --bind "$1" /run/docker/plugins && mkdir -p /run/containerd && mount -t tmpfs -o mode=0711 daffe-node /run/containerd && hostname "$2" && exec sleep infinity"#,
                        crate::netns::DROP_INHERITED_LOOP_MOUNTS
                    )
                    .as_str(),
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
        // A test's plugin volumes go while its plugin still runs: an engine
        // that keeps volumes of a stopped legacy plugin retries that plugin
        // in every `volume ls` (FIELD-NOTES), slowing the next test.
        for node in &self.nodes {
            let d = node.docker();
            let names = d.ok(&["volume", "ls", "-q", "--filter", "driver=daffe"]);
            for v in names.lines() {
                d.run(&["volume", "rm", "-f", v]);
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
    fn node_addresses_are_in_the_swarm_subnet() {
        assert_eq!(node_addr(1), Ipv4Addr::new(10, 232, 0, 1));
        assert_eq!(node_addr(3).octets()[..3], SUBNET);
    }
}
