//! Two "hosts" on one machine: network namespaces joined by a veth pair whose
//! both directions are shaped with `tc tbf`, and (optionally) a Docker engine
//! living inside one of them.
//!
//! Rules this helper keeps (CONTRIBUTING.md, "Tests" and "Test hosts on one
//! machine"):
//! - Addresses are assigned only inside the namespaces it creates
//!   (10.231.0.1/30 and 10.231.0.2/30 on the veth): each pair of namespaces is
//!   its own little network, so parallel tests can reuse them.
//! - `tbf` shapes the link (netem does not exist in this kernel).
//! - A second dockerd runs under `unshare -m nsenter --net=...` with its own
//!   data root, exec root, socket and pidfile, no bridge and no iptables; its
//!   containers use `--network host` (= the namespace). Legacy plugins for it
//!   put their sockets in its own plugins directory, bound over
//!   /run/docker/plugins in its mount namespace.
//! - Everything is torn down on drop. Missing root, `ip`, `tc` or `dockerd`
//!   fails the test (never skips it).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Shell that lazily unmounts, in a mount namespace just made, every copy of
/// a loop-device mount it inherited. A new namespace copies every mount of
/// the moment, other tests' block volumes included, and a copy keeps that
/// filesystem alive: daffe then (rightly) refuses to count the volume
/// unmounted or to move it (issue 11's holder check). Test hosts must not
/// be the stray holders that check exists for.
pub const DROP_INHERITED_LOOP_MOUNTS: &str = "findmnt -rn -o TARGET,SOURCE | \
     awk '$2 ~ /^\\/dev\\/loop/ {print $1}' | sort -r | \
     while read -r m; do umount -l \"$m\" 2>/dev/null || true; done";

/// [`DROP_INHERITED_LOOP_MOUNTS`] but for the copies whose mount point
/// contains `keep`: a test's deliberate holder of one volume must hold that
/// volume only, never the block volumes of the tests running beside it.
pub fn drop_inherited_loop_mounts_except(keep: &str) -> String {
    assert!(
        !keep.contains(['\'', '"', '\\', ' ']),
        "keep is spliced into shell: {keep:?}"
    );
    format!(
        "findmnt -rn -o TARGET,SOURCE | \
         awk -v keep='{keep}' '$2 ~ /^\\/dev\\/loop/ && index($1, keep) == 0 {{print $1}}' | \
         sort -r | while read -r m; do umount -l \"$m\" 2>/dev/null || true; done"
    )
}

/// Address of host A on the link.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// Address of host B on the link.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} (is iproute2 installed? root?): {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// A network namespace made by this test (deleted on drop).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// /var/run/netns/NAME, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside this namespace. `nsenter --net`
    /// and not `ip netns exec`: the latter remounts /sys, which breaks dockerd.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a shaped veth pair.
#[derive(Debug)]
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    /// The veth end in `a` (and `b`): names for `ip link set DEV down`.
    pub dev_a: String,
    pub dev_b: String,
    pub rate: String,
}

impl Link {
    /// Makes the pair; `rate` is a tc rate such as `100mbit`.
    pub fn new(rate: &str) -> Self {
        let id = crate::unique("");
        // Interface names are at most 15 bytes.
        let tail = &id[id.len().saturating_sub(9)..];
        let a = Netns::create(&format!("dfa{id}"));
        let b = Netns::create(&format!("dfb{id}"));
        let dev_a = format!("va{tail}");
        let dev_b = format!("vb{tail}");
        ip(&[
            "link", "add", &dev_a, "netns", &a.name, "type", "veth", "peer", "name", &dev_b,
            "netns", &b.name,
        ]);
        let link = Link {
            a,
            b,
            dev_a,
            dev_b,
            rate: rate.to_string(),
        };
        for (ns, dev, addr) in [
            (&link.a, &link.dev_a, ADDR_A),
            (&link.b, &link.dev_b, ADDR_B),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            link.shape(ns, dev);
        }
        link
    }

    fn shape(&self, ns: &Netns, dev: &str) {
        // burst: veth hands tbf GSO packets up to 64 KiB; a smaller bucket would
        // drop them. latency: the queue a sender can fill before drops (TCP
        // then backs off, as on a real bottleneck).
        run(ns.command("tc").args([
            "qdisc", "add", "dev", dev, "root", "tbf", "rate", &self.rate, "burst", "256kb",
            "latency", "50ms",
        ]));
    }

    /// Brings both veth ends down (the cable is cut).
    pub fn down(&self) {
        self.a.ip(&["link", "set", &self.dev_a, "down"]);
        self.b.ip(&["link", "set", &self.dev_b, "down"]);
    }

    /// Brings both ends back up (addresses and qdiscs stay).
    pub fn up(&self) {
        self.a.ip(&["link", "set", &self.dev_a, "up"]);
        self.b.ip(&["link", "set", &self.dev_b, "up"]);
    }

    /// Bytes sent from A's side of the link (tx counter of A's veth end).
    pub fn tx_bytes_a(&self) -> u64 {
        let out = self.a.ip(&["-s", "-j", "link", "show", &self.dev_a]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        v[0]["stats64"]["tx"]["bytes"].as_u64().unwrap_or(0)
    }
}

/// A Docker engine inside a network namespace, with a private mount namespace
/// so its own plugin directory can be bound over /run/docker/plugins.
pub struct NsDockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Where legacy plugins for this engine put their sockets (seen by the
    /// engine as /run/docker/plugins).
    pub plugins_dir: PathBuf,
    netns: PathBuf,
    exec_root: PathBuf,
    child: Option<Child>,
}

impl std::fmt::Debug for NsDockerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsDockerd")
            .field("socket", &self.socket)
            .finish()
    }
}

impl NsDockerd {
    /// Starts dockerd in `ns` and waits until it answers.
    pub fn start(ns: &Netns) -> Self {
        let name = crate::unique("nd");
        // Short paths: containerd's sockets live under the exec root, and unix
        // socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("daffe-nsd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let plugins_dir = PathBuf::from(format!("/run/daffe-{name}-plugins"));
        std::fs::create_dir_all(&plugins_dir).unwrap();
        let exec_root = PathBuf::from(format!("/run/daffe-{name}"));
        let socket = PathBuf::from(format!("/run/daffe-{name}.sock"));
        let script = dir.path().join("start.sh");
        std::fs::write(
            &script,
            format!(
                "set -e\nmount --make-rprivate /\n{drop}\nmount --bind {plugins} /run/docker/plugins\n\
                 exec dockerd --data-root {data} --exec-root {exec} -H unix://{sock} \
                 --pidfile {dir}/dockerd.pid --bridge=none --iptables=false --ip-masq=false \
                 --ip6tables=false\n",
                drop = DROP_INHERITED_LOOP_MOUNTS,
                plugins = plugins_dir.display(),
                data = dir.path().join("data").display(),
                exec = exec_root.display(),
                sock = socket.display(),
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .arg("-m")
            .arg("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg("sh")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start dockerd (unshare/nsenter missing?)");
        let d = NsDockerd {
            dir,
            socket,
            plugins_dir,
            netns: ns.path(),
            exec_root,
            child: Some(child),
        };
        d.wait_ready(Duration::from_secs(60));
        d
    }

    fn wait_ready(&self, limit: Duration) {
        let t = Instant::now();
        loop {
            let ok = self
                .docker()
                .args(["info", "--format", "{{.ID}}"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "dockerd in {} not ready:\n{}",
                self.netns.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pid of the dockerd process (`sh` exec'd into it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Where to run commands inside this engine's network and mount
    /// namespaces (e.g. a PostgreSQL on one of its plugin's volumes).
    pub fn place(&self) -> crate::postgres::Place {
        crate::postgres::Place::namespaces(
            &self.netns,
            Path::new(&format!("/proc/{}/ns/mnt", self.pid())),
        )
    }

    /// A `docker -H` command for this engine.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .stdin(Stdio::null());
        c
    }

    /// A command run inside this engine's network *and* mount namespaces
    /// (its plugin must be there so its loop mounts are seen by containers).
    pub fn enter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid()))
            .arg("--")
            .arg(program);
        c
    }

    /// Copies an image from the default engine: `docker save | docker -H load`.
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let out = self
            .docker()
            .arg("load")
            .stdin(save.stdout.take().expect("save stdout"))
            .output()
            .expect("docker load");
        let saved = save.wait().expect("docker save");
        assert!(
            saved.success() && out.status.success(),
            "docker save | load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for NsDockerd {
    fn drop(&mut self) {
        // Containers first (they hold mounts), then the engine.
        if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.docker().args(["rm", "-f", id]).output();
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.plugins_dir);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(&self.exec_root)
            .output();
        let _ = std::fs::remove_dir_all(&self.exec_root);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("data"))
            .output();
    }
}

/// Runs `sh -c SCRIPT` in `ns` and returns stdout (panics on failure).
pub fn sh_in(ns: &Netns, script: &str) -> String {
    let out = run(ns.command("sh").args(["-c", script]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
