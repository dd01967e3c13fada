//! The Debian package, installed without building (issue 13, item 5):
//! `packaging/build-deb.sh` packages the binary under test (in CI the dev
//! build, to save the release build's time; the release build is the one to
//! ship), `dpkg -i` installs it into a clean Debian root made by debootstrap
//! from this machine's own Debian mirror, and then:
//! - what it installed: the stripped binary, both systemd units (which
//!   `systemd-analyze verify` accepts without a warning), the conffile,
//!   completions for three shells, man pages, the README the units point to;
//! - the installed daffe, run from that root with the unit's umask (0077),
//!   says READY=1 over `$NOTIFY_SOCKET` only once it answers, logs JSON lines
//!   with `DAFFE_LOG_FORMAT=json`, serves the FlockerProfiles demo
//!   (`scripts/demo.sh`) as the legacy plugin `daffe` of a private engine,
//!   and gives a non-root container a writable dir volume;
//! - `dpkg -P` leaves the root exactly as it was before the install.

use daffe_e2e::docker::{PrivateDockerd, test_image};
use daffe_e2e::plugin::{daffe_bin, unmount_under};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{}", show(what, &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The mirror this machine's apt uses for `codename` (one-line or deb822
/// sources): the root is made from the same place the host's packages come
/// from. Pure: takes the files' texts.
fn mirror_for(codename: &str, sources: &[String]) -> Option<String> {
    for text in sources {
        // deb822 stanzas are separated by blank lines.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            let suites = field("Suites").unwrap_or_default();
            let types = field("Types").unwrap_or_default();
            if types.split_whitespace().any(|t| t == "deb")
                && suites.split_whitespace().any(|s| s == codename)
                && let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next())
            {
                return Some(uri.to_owned());
            }
        }
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == codename {
                return Some(words[1].to_owned());
            }
        }
    }
    None
}

#[test]
fn mirrors_are_read_from_either_sources_format() {
    let deb822 =
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                  Components: main\n\nTypes: deb\nURIs: http://mirror.example/security\n\
                  Suites: bookworm-security\n"
            .to_owned();
    let list = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                deb [arch=amd64] http://list.example/debian bookworm main\n"
        .to_owned();
    assert_eq!(
        mirror_for("bookworm", std::slice::from_ref(&deb822)).as_deref(),
        Some("http://mirror.example/debian")
    );
    assert_eq!(
        mirror_for("bookworm", std::slice::from_ref(&list)).as_deref(),
        Some("http://list.example/debian")
    );
    assert_eq!(mirror_for("trixie", &[deb822, list]), None);
}

fn host_mirror() -> (String, String) {
    let release = std::fs::read_to_string("/etc/os-release").unwrap();
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .expect("VERSION_CODENAME in /etc/os-release (a Debian host)")
        .trim_matches('"')
        .to_owned();
    let mut sources: Vec<String> = std::fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        sources.extend(files.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    let mirror = mirror_for(&codename, &sources)
        .unwrap_or_else(|| panic!("no apt source for {codename} on this host"));
    (codename, mirror)
}

/// A clean Debian root (debootstrap --variant=minbase); unmounted and
/// deleted on drop, but only if nothing is mounted in it any more: deleting
/// through a leftover bind of /dev would delete the host's device nodes.
struct Root {
    dir: Option<tempfile::TempDir>,
}

impl Root {
    fn make() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("daffe-root-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let (codename, mirror) = host_mirror();
        ok(
            "debootstrap",
            Command::new("debootstrap")
                .args(["--variant=minbase", &codename])
                .arg(dir.path())
                .arg(&mirror),
        );
        Self { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("the root").path()
    }

    /// `path` (absolute, as seen inside) on the host.
    fn host(&self, path: &str) -> PathBuf {
        self.path().join(path.trim_start_matches('/'))
    }

    fn chroot(&self) -> Command {
        let mut c = Command::new("chroot");
        c.arg(self.path())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }

    fn bind(&self, source: &Path, inside: &str, recursive: bool) {
        let target = self.host(inside);
        std::fs::create_dir_all(&target).unwrap();
        ok(
            "mount --bind",
            Command::new("mount")
                .arg(if recursive { "--rbind" } else { "--bind" })
                .arg(source)
                .arg(&target),
        );
        if recursive {
            // Unmounting the copies later must not reach the host's /dev.
            ok(
                "mount --make-rslave",
                Command::new("mount").arg("--make-rslave").arg(&target),
            );
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        unmount_under(self.path());
        let root = self.path().to_string_lossy().into_owned();
        let still = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|p| p.starts_with(&root));
        if still && let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            eprintln!("{}: still has mounts; not deleted", kept.display());
        }
    }
}

/// Directories whose content changes for reasons other than the package:
/// kernel and run-time file systems, dpkg's own database and logs, and the
/// test's scratch space.
const NOT_COMPARED: [&str; 10] = [
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "var/tmp",
    "var/log",
    "var/cache",
    "var/lib/dpkg",
    "var/lib/apt",
];

/// Every path under `root` with its type, mode, owner and (files) size.
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if NOT_COMPARED.contains(&rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&path).unwrap();
            let size = if m.is_file() { m.len() } else { 0 };
            out.insert(format!(
                "{rel} {:o} {}:{} {size}",
                m.mode(),
                m.uid(),
                m.gid()
            ));
            if m.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The daemon started from the root; killed on drop if still running.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the package from the binary under test; returns the .deb.
fn build_deb(out: &Path) -> PathBuf {
    let stdout = ok(
        "packaging/build-deb.sh",
        Command::new("bash")
            .arg(repo().join("packaging/build-deb.sh"))
            .arg("--bin")
            .arg(daffe_bin())
            .arg("--out")
            .arg(out),
    );
    PathBuf::from(stdout.lines().last().expect("the .deb's path").trim())
}

fn check_installed(root: &Root, bin: &Path) {
    for path in [
        "usr/bin/daffe",
        "lib/systemd/system/daffe.service",
        "lib/systemd/system/daffe-agent.service",
        "etc/daffe/daffe.toml",
        "usr/share/bash-completion/completions/daffe",
        "usr/share/zsh/vendor-completions/_daffe",
        "usr/share/fish/vendor_completions.d/daffe.fish",
        "usr/share/man/man1/daffe.1.gz",
        "usr/share/man/man1/daffe-serve.1.gz",
        "usr/share/man/man1/daffe-agent.1.gz",
        "usr/share/man/man1/daffe-volume-ls.1.gz",
        "usr/share/doc/daffe/README.md",
        "usr/share/doc/daffe/copyright",
    ] {
        assert!(root.host(path).is_file(), "{path} not installed");
    }
    let installed = root.host("usr/bin/daffe");
    assert_eq!(
        installed.metadata().unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Stripped: no debug info or line tables (`.debug_gdb_scripts` is loaded
    // with the program and stays), and smaller than what was packaged.
    let sections = ok(
        "objdump -h",
        Command::new("objdump").arg("-h").arg(&installed),
    );
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".debug_line"),
        "not stripped: {sections}"
    );
    assert!(installed.metadata().unwrap().len() < bin.metadata().unwrap().len());
    let version = ok(
        "daffe --version",
        root.chroot().args(["daffe", "--version"]),
    );
    assert!(version.starts_with("daffe "), "{version}");
    let conffiles = ok(
        "dpkg-query",
        root.chroot()
            .args(["dpkg-query", "-W", "-f", "${Conffiles}", "daffe"]),
    );
    assert!(conffiles.contains("/etc/daffe/daffe.toml"), "{conffiles}");
    let bash =
        std::fs::read_to_string(root.host("usr/share/bash-completion/completions/daffe")).unwrap();
    assert!(bash.contains("snapshot") && bash.contains("set-profile"));

    // The units as installed, with ExecStart pointed at the root's binary
    // (systemd-analyze checks that it exists): no error, no warning.
    let units = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for unit in ["daffe.service", "daffe-agent.service"] {
        let text =
            std::fs::read_to_string(root.host(&format!("lib/systemd/system/{unit}"))).unwrap();
        assert!(
            text.contains("Type=notify") && text.contains("UMask=0077"),
            "{unit}"
        );
        let p = units.path().join(unit);
        std::fs::write(
            &p,
            text.replace("/usr/bin/daffe", &installed.to_string_lossy()),
        )
        .unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        show("systemd-analyze verify", &out)
    );
}

/// Waits for one notification datagram.
fn notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the limit");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_package_installs_on_a_clean_root_serves_the_demo_and_purges_clean() {
    let scratch = tempfile::tempdir().unwrap();
    let bin = daffe_bin();
    let deb = build_deb(scratch.path());
    let root = Root::make();
    let engine = PrivateDockerd::start();
    let docker = engine.docker();
    docker.ok(&["tag", &test_image(), "busybox:latest"]);

    // Scaffolding the test needs inside the root, made before the "before"
    // listing: the data root sits at the same path inside and outside, so the
    // mountpoints daffe returns mean the same to dockerd.
    let data_root = engine.shared_dir().join("pkg");
    std::fs::create_dir_all(&data_root).unwrap();
    let inside_shared = engine.shared_dir().to_string_lossy().into_owned();
    std::fs::create_dir_all(root.host(&inside_shared)).unwrap();
    let before = listing(root.path());

    std::fs::copy(&deb, root.host("tmp/daffe.deb")).unwrap();
    ok(
        "dpkg -i",
        root.chroot().args(["dpkg", "-i", "/tmp/daffe.deb"]),
    );
    check_installed(&root, &bin);

    // Run the installed daffe from the root, as its unit would.
    ok(
        "mount proc",
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(root.host("proc")),
    );
    root.bind(Path::new("/sys"), "/sys", true);
    root.bind(Path::new("/dev"), "/dev", true);
    root.bind(&engine.plugins_dir(), "/run/docker/plugins", false);
    root.bind(&engine.shared_dir(), &inside_shared, false);
    let notify_path = root.host("run/daffe-notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let log_path = scratch.path().join("daffe.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = Daemon(
        root.chroot()
            .args(["/bin/sh", "-c", "umask 077; exec /usr/bin/daffe serve"])
            .env("DAFFE_DATA_ROOT", &data_root)
            .env("DAFFE_LOG_FORMAT", "json")
            .env("NOTIFY_SOCKET", "/run/daffe-notify.sock")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    assert_eq!(notification(&notify), "READY=1");
    // READY means ready: the very first call is answered.
    ok(
        "daffe volume ls",
        root.chroot().args(["daffe", "volume", "ls"]),
    );

    // The demo, with the installed daffe as its `daffe` and the private
    // engine as its Docker.
    let wrapper = scratch.path().join("daffe");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec chroot {} /usr/bin/daffe \"$@\"\n",
            root.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = format!("unix://{}", engine.socket.display());
    let demo = ok(
        "scripts/demo.sh",
        Command::new("bash")
            .arg(repo().join("scripts/demo.sh"))
            .env("DAFFE_BIN", &wrapper)
            .env("DOCKER_HOST", &host),
    );
    assert!(demo.contains("daffe is already serving"), "{demo}");
    assert!(demo.contains("\nhello\n"), "{demo}");
    assert!(
        demo.contains("cheapvolume") && demo.contains("highperfvolume"),
        "{demo}"
    );
    // The gold volume is a real size-limited filesystem (df in the demo).
    assert!(demo.contains("/data"), "{demo}");

    // Under the unit's umask a new dir volume still admits a non-root
    // container (mounted where the image has no directory, so Docker copies
    // no mode onto it).
    let img = test_image();
    let listed = docker.ok(&[
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "--volume-driver=daffe",
        "-v",
        "umaskcheck:/vol",
        &img,
        "sh",
        "-c",
        "ls -ld /vol && ls /vol && echo readable",
    ]);
    assert!(listed.ends_with("readable"), "{listed}");
    docker.ok(&[
        "volume",
        "rm",
        "cheapvolume@default",
        "highperfvolume@gold",
        "umaskcheck",
    ]);

    // SIGTERM: STOPPING=1, a clean exit, and every log line was JSON.
    let mut daemon = daemon;
    ok("kill", Command::new("kill").arg(daemon.0.id().to_string()));
    assert_eq!(notification(&notify), "STOPPING=1");
    assert!(daemon.0.wait().unwrap().success());
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.lines().count() > 3, "{logged}");
    for line in logged.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    drop(daemon);

    // Purge: nothing the package (or the daemon's run) left behind.
    drop(notify);
    unmount_under(root.path());
    std::fs::remove_file(&notify_path).unwrap();
    ok("dpkg -P", root.chroot().args(["dpkg", "-P", "daffe"]));
    let after = listing(root.path());
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "left behind: {added:#?}\ngone: {removed:#?}"
    );
}
