//! An etcd cluster from Debian's `etcd-server` (3.4) for the cluster tests:
//! one member per node network namespace (see [`crate::swarm`]), plain HTTP
//! on the node's own address, plus 127.0.0.1:2379 inside that namespace for
//! the node's local daemon.
//!
//! A member can be killed (-9) and started again on its data directory; the
//! cluster answers as long as a majority runs. [`EtcdCluster::etcdctl`] runs
//! Debian's `etcdctl` from inside a node's namespace (the addresses exist
//! nowhere else). Members are killed on drop; their data lives in the
//! caller's directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Client port (etcd's default), on the node's address and on 127.0.0.1.
pub const CLIENT_PORT: u16 = 2379;
/// Peer port (etcd's default).
pub const PEER_PORT: u16 = 2380;

/// How long a fresh cluster may take to elect a leader and answer. etcd's
/// default election timeout is 1 s; three members on two busy cores have
/// been seen to need a few rounds.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// One member: where it runs and how to start it.
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub addr: Ipv4Addr,
    /// The network namespace it runs in (/var/run/netns/NAME).
    pub netns: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.addr)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.addr)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, initial_cluster: &str, token: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen-peer-urls",
                &self.peer_url(),
                "--initial-advertise-peer-urls",
                &self.peer_url(),
                "--listen-client-urls",
                &format!("{},http://127.0.0.1:{CLIENT_PORT}", self.client_url()),
                "--advertise-client-urls",
                &self.client_url(),
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-token",
                token,
                // Ignored once the data directory exists (a restart).
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd (apt-get install etcd-server)");
        self.child = Some(child);
    }

    /// kill -9 (a crash; the data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster of members started together.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    token: String,
}

impl EtcdCluster {
    /// Starts one member per `(name, addr, netns)` with its data under `dir`,
    /// and waits until the cluster answers a write.
    pub fn start(dir: &Path, nodes: &[(String, Ipv4Addr, PathBuf)]) -> Self {
        let members = nodes
            .iter()
            .map(|(name, addr, netns)| EtcdMember {
                name: name.clone(),
                addr: *addr,
                netns: netns.clone(),
                data_dir: dir.join(format!("etcd-{name}")),
                log: dir.join(format!("etcd-{name}.log")),
                child: None,
            })
            .collect();
        let mut c = Self {
            members,
            token: crate::unique("daffe-etcd-"),
        };
        for i in 0..c.members.len() {
            c.start_member(i);
        }
        c.wait_ready(0, READY_LIMIT);
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again), on its existing data directory if any.
    pub fn start_member(&mut self, i: usize) {
        let (cluster, token) = (self.initial_cluster(), self.token.clone());
        self.members[i].spawn(&cluster, &token);
    }

    /// kill -9 member `i`.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Every member's client URL, comma-separated (etcdctl's --endpoints).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdMember::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl --endpoints=ALL ARGS`, run inside member `via`'s namespace.
    /// Bounded: a cluster without quorum makes it fail, not hang. Note:
    /// etcdctl 3.4 may stay on a killed member's endpoint until its command
    /// timeout instead of failing over; [`EtcdCluster::etcdctl_local`] avoids
    /// that.
    pub fn etcdctl(&self, via: usize, args: &[&str]) -> Output {
        self.etcdctl_with(via, &self.endpoints(), args)
    }

    /// `etcdctl ARGS` against member `via` alone, on 127.0.0.1 inside its
    /// namespace: what a node's own daemon talks to.
    pub fn etcdctl_local(&self, via: usize, args: &[&str]) -> Output {
        self.etcdctl_with(via, &format!("http://127.0.0.1:{CLIENT_PORT}"), args)
    }

    fn etcdctl_with(&self, via: usize, endpoints: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.members[via].netns.display()))
            .arg("--")
            .arg("etcdctl")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run etcdctl (apt-get install etcd-client)")
    }

    /// Waits until a put through member `via` succeeds (it has a leader and
    /// a quorum); returns how long that took.
    pub fn wait_ready(&self, via: usize, limit: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let out = self.etcdctl_local(via, &["put", "daffe-harness/ready", "1"]);
            if out.status.success() {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "etcd not ready after {limit:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tail of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s.push_str(&format!("--- etcd {} ---\n", m.name));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}
