//! Regression tests for the hardening audit's findings, one test per finding,
//! each named for it (`finding_NN_...`). Each failed before its fix.

use daffe_e2e::docker::test_image;
use daffe_e2e::plugin::Plugin;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The uid an unprivileged host user runs as (`nobody`).
const NOBODY: &str = "65534";

/// Runs `sh -c script` as root and returns (success, stdout + stderr).
fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_owned())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Finding 3: a setuid-root binary placed in a volume (by a container or a
/// migration peer) must not give a user of the host euid 0. Two defences,
/// each checked on its own: the volume's files are out of reach of other
/// users (private data root and volume directories), and the filesystems
/// daffe mounts are `nosuid,nodev` (checked by exec'ing the binary through a
/// descriptor root opened, which skips the directory permissions).
#[test]
fn finding_03_a_setuid_binary_in_a_volume_gives_no_host_user_root() {
    let p = Plugin::start();
    // The test's temp dir is 0700 itself; make the path above the data root
    // as open as /var/lib is, so only daffe's own modes protect the volume.
    for dir in [p.dir.path(), p.data_root().parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let id = Command::new("sh")
        .args(["-c", "command -v id"])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    assert!(!id.is_empty(), "no `id` on this host");

    for (vol, profile, own_mount) in [("suidblk", "gold", true), ("suiddir", "default", false)] {
        let docker_name = format!("{vol}@{profile}");
        p.docker.ok(&[
            "volume",
            "create",
            "-d",
            &p.name,
            "-o",
            if own_mount {
                "size=64M"
            } else {
                "profile=default"
            },
            &docker_name,
        ]);
        // A container keeps the volume mounted (a block volume is mounted only
        // while used).
        let container = format!("{}-{vol}", p.name);
        p.docker.ok(&[
            "run",
            "-d",
            "--name",
            &container,
            "-v",
            &format!("{docker_name}:/data"),
            &test_image(),
            "sleep",
            "300",
        ]);
        let vol_dir = p.data_root().join("local").join(profile).join(vol);
        let mp = vol_dir.join("data");
        let bin = mp.join("id");
        std::fs::copy(&id, &bin).unwrap();
        let (ok, out) = sh(&format!("chown 0:0 {0} && chmod 4755 {0}", bin.display()));
        assert!(ok, "{out}");

        // Defence 1: nobody can reach the volume's files by path.
        assert_eq!(mode(&p.data_root()), 0o700, "data root mode");
        assert_eq!(
            mode(&vol_dir),
            0o700,
            "{docker_name}: volume directory mode"
        );
        // Through a shell that runs as nobody: setpriv itself opens the
        // program before it drops root, which would skip the check.
        let (ok, out) = sh(&format!(
            "setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups /bin/sh -c '{} -u'",
            bin.display()
        ));
        assert!(
            !ok,
            "{docker_name}: a host user ran the volume's binary by path: {out}"
        );
        assert!(out.contains("Permission denied"), "{docker_name}: {out}");

        // Defence 2: where daffe mounts the volume's filesystem, the setuid bit
        // does nothing even when the binary is reached another way.
        if own_mount {
            let (ok, out) = sh(&format!(
                "exec 3<{}; setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups /proc/self/fd/3 -u",
                bin.display()
            ));
            assert!(ok, "{docker_name}: {out}");
            assert_eq!(out, NOBODY, "{docker_name}: the setuid bit took effect");
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let line = info
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
                .unwrap_or_else(|| panic!("{docker_name}: not mounted at {}", mp.display()));
            let opts = line.split(' ').nth(5).unwrap();
            for want in ["nosuid", "nodev"] {
                assert!(opts.split(',').any(|o| o == want), "{docker_name}: {line}");
            }
        }
        p.docker.ok(&["rm", "-f", &container]);
    }
}
