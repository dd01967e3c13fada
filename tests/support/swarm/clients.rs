//! Client hosts on the swarm's switch: a network namespace per client with
//! an address outside the nodes' subnet (a documentation range, so an
//! `.mmdb` can place it), on-link routes both ways (one L2 segment, two
//! subnets), removed on drop. For tests where where a request comes from
//! matters (issue 15: clients by region).

use super::{Swarm, ip};
use std::net::Ipv4Addr;
use std::process::Command;

/// A client host: its namespace and address.
#[derive(Debug)]
pub struct Client {
    pub netns: String,
    pub addr: Ipv4Addr,
}

impl Client {
    /// `program` run inside the client's network namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The veth goes with the namespace (its peer in the switch too).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

impl Swarm {
    /// A client host `k` (1-based, a few at most) with address `addr`/24,
    /// plugged into the switch; every node gets an on-link route to
    /// `addr`'s /24 and the client one to the nodes' subnet.
    pub fn add_client(&self, k: usize, addr: Ipv4Addr) -> Client {
        let netns = format!("df{}c{k}", self.id);
        ip(&["netns", "add", &netns]);
        let client = Client { netns, addr };
        let ns = client.netns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let port = format!("c{k}");
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ]);
        ip(&["-n", &self.bridge_ns, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.bridge_ns, "link", "set", &port, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        let [a, b, _, _] = addr.octets();
        let s = super::SUBNET;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{}.{}.{}.0/24", s[0], s[1], s[2]),
            "dev",
            "eth0",
        ]);
        let theirs = format!("{a}.{b}.{}.0/24", addr.octets()[2]);
        for n in &self.nodes {
            // `replace`: a second client in the same /24 finds it there.
            ip(&["-n", &n.netns, "route", "replace", &theirs, "dev", "eth0"]);
        }
        client
    }
}
