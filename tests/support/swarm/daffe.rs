//! daffe in cluster mode on the swarm's nodes: one daemon per node, its
//! socket in the node's plugin directory, its data under the node's
//! directory, `[cluster]` pointing at the swarm's etcd members.

use super::{Swarm, node_addr};
use crate::plugin::daffe_bin;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

/// The cluster name the tests use (the etcd prefix `/daffe/t/`).
pub const CLUSTER: &str = "t";

/// Lease settings short enough for tests to see expiry and fencing.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub ttl_secs: u64,
    pub margin_ms: u64,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            ttl_secs: 4,
            margin_ms: 1_500,
        }
    }
}

impl Swarm {
    fn daffe_dir(&self, n: usize) -> PathBuf {
        self.nodes[n - 1].dir.join("daffe")
    }

    pub fn daffe_control(&self, n: usize) -> PathBuf {
        self.daffe_dir(n).join("control.sock")
    }

    /// Node `n`'s agent certificate folder: node 1's holds the cluster CA,
    /// which issues the others' (made once per swarm).
    fn agent_dir(&self, n: usize) -> PathBuf {
        self.daffe_dir(n).join("agent")
    }

    fn ensure_agent_certs(&self, n: usize) {
        let dir = self.agent_dir(n);
        if dir.join("node.pem").exists() {
            return;
        }
        let ca = self.agent_dir(1);
        if !ca.join("ca.key").exists() {
            std::fs::create_dir_all(self.daffe_dir(1)).unwrap();
            let out = std::process::Command::new(daffe_bin())
                .args(["agent", "init", "--tls-dir"])
                .arg(&ca)
                .args(["--node", &self.nodes[0].name])
                .output()
                .unwrap();
            assert!(out.status.success(), "agent init: {out:?}");
        }
        if n > 1 {
            let out = std::process::Command::new(daffe_bin())
                .args(["agent", "issue", "--tls-dir"])
                .arg(&ca)
                .args(["--node", &self.nodes[n - 1].name, "--out"])
                .arg(&dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "agent issue: {out:?}");
        }
    }

    /// Starts daffe in cluster mode on node `n`, waits until it serves, and
    /// makes the node's engine look the plugin up (FIELD-NOTES' discovery
    /// trap: the scheduler only uses a plugin its engine already knows).
    pub fn start_daffe(&mut self, n: usize, lease: Lease) {
        self.start_daffe_with(n, lease, "");
    }

    /// [`Swarm::start_daffe`] with `extra` appended to the node's config
    /// (tables only: `[cluster.labels]`, `[profiles.NAME]`).
    pub fn start_daffe_with(&mut self, n: usize, lease: Lease, extra: &str) {
        let dir = self.daffe_dir(n);
        std::fs::create_dir_all(&dir).unwrap();
        let etcd = self.etcd.as_ref().expect("a swarm with etcd");
        let endpoints: Vec<String> = etcd
            .endpoints()
            .split(',')
            .map(|e| format!("{e:?}"))
            .collect();
        self.ensure_agent_certs(n);
        let node = &self.nodes[n - 1];
        let config = format!(
            "socket = {socket:?}\ncontrol_socket = {control:?}\ndata_root = {data:?}\n\
             [cluster]\nname = \"{CLUSTER}\"\nnode = \"{name}\"\nagent = \"{addr}:7443\"\n\
             lease_ttl = {ttl}\nfence_margin_ms = {margin}\ntls_dir = {tls:?}\n\
             [cluster.etcd]\nendpoints = [{eps}]\n",
            tls = self.agent_dir(n),
            socket = node.plugin_socket("daffe"),
            control = self.daffe_control(n),
            data = dir.join("data"),
            name = node.name,
            addr = node_addr(n),
            ttl = lease.ttl_secs,
            margin = lease.margin_ms,
            eps = endpoints.join(", "),
        );
        let cfg = dir.join("daffe.toml");
        std::fs::write(&cfg, config + extra).unwrap();
        let mut cmd = node.enter(daffe_bin());
        cmd.arg("serve").arg("--config").arg(&cfg);
        let node = &mut self.nodes[n - 1];
        node.spawn("daffe", cmd);
        let control = self.daffe_control(n);
        let t = Instant::now();
        while !self.daffe(n, &["status", "--health"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "daffe on node {n} did not come up:\n{}",
                self.nodes[n - 1].log("daffe")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(control.exists());
        // The node's agent: receives handovers into this daemon and sends
        // them from it (the data path of a stale copy).
        let mut agent = self.nodes[n - 1].enter(daffe_bin());
        agent
            .args(["agent", "--listen", &format!("{}:7443", node_addr(n))])
            .arg("--tls-dir")
            .arg(self.agent_dir(n))
            .args(["--node", &self.nodes[n - 1].name])
            .arg("--control-socket")
            .arg(&control);
        self.nodes[n - 1].spawn("agent", agent);
        self.nodes[n - 1].docker().ok(&["volume", "ls"]);
    }

    /// `daffe ARGS` against node `n`'s daemon (its control socket).
    pub fn daffe(&self, n: usize, args: &[&str]) -> Output {
        let mut cmd = self.nodes[n - 1].enter(daffe_bin());
        cmd.args(args)
            .env("DAFFE_CONTROL_SOCKET", self.daffe_control(n));
        cmd.output().expect("running daffe")
    }

    /// `daffe cluster status --json` from node `n`.
    pub fn cluster_status(&self, n: usize) -> serde_json::Value {
        self.try_cluster_status(n)
            .unwrap_or_else(|e| panic!("cluster status on node {n}: {e}"))
    }

    /// `daffe cluster status --json` from node `n`, or what it printed when
    /// it failed: a node whose link just came back may find etcd unreachable
    /// for a moment while its connections are re-made.
    pub fn try_cluster_status(&self, n: usize) -> Result<serde_json::Value, String> {
        let out = self.daffe(n, &["cluster", "status", "--json"]);
        if !out.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cluster status JSON: {e}"))
    }
}
