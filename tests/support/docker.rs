//! The docker CLI, the test image, and a private dockerd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The image tests run: a local busybox, never pulled (no registry here).
pub const DEFAULT_IMAGE: &str = "daffe-test/busybox:latest";

/// A docker CLI bound to one engine.
#[derive(Debug, Clone, Default)]
pub struct Docker {
    /// `-H` value; `None` is the default engine (/var/run/docker.sock).
    host: Option<String>,
}

fn show(args: &[&str], out: &Output) -> String {
    format!(
        "docker {}: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Docker {
    pub fn at(socket: &Path) -> Self {
        Self {
            host: Some(format!("unix://{}", socket.display())),
        }
    }

    /// The `-H` value, if not the default engine (for DOCKER_HOST).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("docker");
        if let Some(h) = &self.host {
            c.args(["-H", h]);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs docker; panics only if the CLI cannot be started (Docker missing
    /// must fail the test, never skip it).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker (is Docker installed?): {e}"))
    }

    /// Runs docker and returns trimmed stdout; panics with everything on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{}", show(args, &out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs docker expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "expected failure: {}",
            show(args, &out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `docker volume inspect NAME` as JSON.
    pub fn volume_inspect(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["volume", "inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("volume inspect JSON");
        v[0].clone()
    }

    pub fn volume_names(&self, driver: &str) -> Vec<String> {
        self.ok(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("driver={driver}"),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Waits until `docker info` answers (a freshly started engine).
    pub fn wait_ready(&self, limit: Duration) {
        let t = Instant::now();
        while !self.run(&["info", "--format", "{{.ID}}"]).status.success() {
            assert!(
                t.elapsed() < limit,
                "dockerd did not come up within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The test image's name: `DAFFE_TEST_IMAGE`, else [`DEFAULT_IMAGE`], imported
/// into the default engine from Debian's static busybox if missing.
pub fn test_image() -> String {
    static ONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let image = std::env::var("DAFFE_TEST_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
        let d = Docker::default();
        if !d.run(&["image", "inspect", &image]).status.success() {
            import_busybox(&d, &image);
        }
        image
    })
    .clone()
}

/// Builds a one-binary rootfs (busybox-static plus an applet symlink farm)
/// and `docker import`s it.
pub fn import_busybox(d: &Docker, image: &str) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    for sub in ["bin", "tmp", "data", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    let tar = dir.path().join("rootfs.tar");
    let st = Command::new("tar")
        .args(["-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(&[
        "import",
        "--change",
        "ENV PATH=/bin",
        &tar.to_string_lossy(),
        image,
    ]);
}

/// A second Docker Engine, private to one test: its own data root, exec root,
/// socket, pidfile and containerd; its own network namespace (with its own
/// docker0: containers get networking, `-p` works inside it); and its own legacy plugin directory: it runs in a mount
/// namespace (slave of the host's, so the plugin's loop mounts reach it) where
/// [`PrivateDockerd::plugins_dir`] is bound over /run/docker/plugins.
///
/// Why not the shared engine: dockerd remembers every legacy plugin it ever
/// activated until it restarts, and a lookup of an unknown volume (`docker
/// volume inspect`, which docker-compose runs before creating) asks each one,
/// retrying a vanished socket for about 30 s. Tests that start plugins under
/// unique names make the shared engine slower with every run.
/// Stopped and wiped on drop.
pub struct PrivateDockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<std::process::Child>,
    name: String,
}

impl PrivateDockerd {
    pub fn start() -> Self {
        let name = crate::unique("dt");
        // Short paths: containerd's sockets live under the exec root, and unix
        // socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("daffe-dockerd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let socket = PathBuf::from(format!("/run/daffe-{name}.sock"));
        let mut d = Self {
            dir,
            socket,
            child: None,
            name,
        };
        // The plugin's data root lives under a shared mount made before the
        // engine's namespace exists, so the plugin's loop mounts propagate
        // into it (and into the namespace of a restarted engine).
        let shared = d.shared_dir();
        std::fs::create_dir_all(&shared).unwrap();
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(&shared)
            .arg(&shared)
            .status()
            .unwrap();
        let share = Command::new("mount")
            .arg("--make-rshared")
            .arg(&shared)
            .status()
            .unwrap();
        assert!(
            bind.success() && share.success(),
            "making {} a shared mount",
            shared.display()
        );
        d.spawn();
        let docker = d.docker();
        docker.wait_ready(Duration::from_secs(60));
        // Bring the test image across from the main engine.
        let image = test_image();
        let mut save = Command::new("docker")
            .args(["save", &image])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let load = docker
            .command()
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {image}");
        assert!(
            load.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        d
    }

    fn exec_root(&self) -> PathBuf {
        PathBuf::from(format!("/run/daffe-{}", self.name))
    }

    /// A shared mount for plugins' data roots (see `start`).
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// Where this engine looks for legacy plugin sockets (host path).
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .unwrap();
        std::fs::create_dir_all(self.plugins_dir()).unwrap();
        // The bind target; absent on a host that never saw a plugin.
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        // unshare runs sh, which binds the plugin dir and execs dockerd: the
        // child's pid ends up being dockerd's.
        let child = Command::new("unshare")
            // -n: its own network namespace, where it makes its own docker0
            // and iptables rules. (Never run a second dockerd in the host's:
            // with `--bridge=none` it deletes the host's docker0 at start,
            // and without it the two fight over docker0.)
            .args(["-m", "-n", "--propagation", "slave", "sh", "-c"])
            // lo up: containers with `--network host` serve on 127.0.0.1.
            // The host's root is private here, so slave propagation does not
            // drop other tests' block volumes: drop them (netns.rs says why).
            .arg(format!(
                r#"{} && mount --bind "$0" /run/docker/plugins && ip link set lo up && exec "$@""#,
                crate::netns::DROP_INHERITED_LOOP_MOUNTS
            ))
            .arg(self.plugins_dir())
            .arg("dockerd")
            .arg("--data-root")
            .arg(self.dir.path().join("data"))
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--pidfile")
            .arg(self.dir.path().join("dockerd.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start dockerd");
        self.child = Some(child);
    }

    pub fn docker(&self) -> Docker {
        Docker::at(&self.socket)
    }

    /// The engine's network namespace (its containers' `--network host`),
    /// for `nsenter --net=`. unshare and sh exec into dockerd, so the
    /// child's pid is dockerd's.
    pub fn net_ns(&self) -> PathBuf {
        let pid = self.child.as_ref().expect("engine running").id();
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    }

    /// Stops the engine (SIGTERM, as systemd does) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.docker().wait_ready(Duration::from_secs(60));
    }

    fn stop(&mut self) {
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
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        let d = self.docker();
        let ids = d.run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            d.run(&["rm", "-f", id]);
        }
        self.stop();
        // Anything the engine left mounted (overlay, netns, shm) under its roots.
        crate::plugin::unmount_under(self.dir.path());
        crate::plugin::unmount_under(&self.exec_root());
        let _ = std::fs::remove_dir_all(self.exec_root());
        let _ = std::fs::remove_file(&self.socket);
    }
}
