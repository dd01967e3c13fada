//! Thin wrappers over the system tools the local backends use (mkfs.ext4,
//! mount, umount) and over /proc/self/mountinfo.
//!
//! util-linux `mount -o loop` finds a free loop device, attaches the image
//! with autoclear, and mounts, in one step that cleans up after itself on
//! failure; `umount` then detaches the loop device. Doing that by hand with
//! the loop ioctls would be more code for the same result. The managed
//! plugin's rootfs ships these tools (see packaging/).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Options on every filesystem daffe mounts. A volume's content comes from
/// containers (which may `mknod` and `chmod u+s` as root inside) and from
/// migration peers: a setuid-root binary or a device node placed there must
/// never become a way to root, or to a host disk, for a user of this host.
/// Bind mounts inherit these flags, so containers get them too.
pub(crate) const SAFE_MOUNT_OPTIONS: &str = "nosuid,nodev";

/// Makes `dir` (and missing parents) and sets it to 0700, so only root can
/// pass it: a volume's files (setuid binaries, world-writable files a
/// container made) are then out of reach of the host's other users, whatever
/// their modes. An existing, looser directory (made by an older daffe) is
/// tightened. Docker's own volume store is private the same way.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    #[error("cannot run {program}: {source} (is it installed and on PATH?)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `program args...`, failing with its stderr on a non-zero exit.
pub(crate) fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), CommandError> {
    output(program, args).map(drop)
}

/// Like [`run`], returning what the program printed on stdout.
pub(crate) fn output(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, CommandError> {
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut command = program.to_owned();
    for a in args {
        command.push(' ');
        command.push_str(&a.to_string_lossy());
    }
    Err(CommandError::Failed {
        command,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Whether something is mounted exactly at `dir` (in this mount namespace).
pub(crate) fn is_mountpoint(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo_has(&info, dir)
}

/// Pure part of [`is_mountpoint`]: field 5 of each mountinfo line is the mount
/// point, with space, tab, newline and backslash octal-escaped.
fn mountinfo_has(info: &str, dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape(mp) == want)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(char::from(v));
            i += 4;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mountpoints_in_mountinfo() {
        let info = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    40 22 7:0 / /var/lib/daffe/local/gold/db/data rw - ext4 /dev/loop0 rw\n\
                    41 22 7:1 / /srv/with\\040space rw - ext4 /dev/loop1 rw\n";
        assert!(mountinfo_has(
            info,
            Path::new("/var/lib/daffe/local/gold/db/data")
        ));
        assert!(mountinfo_has(info, Path::new("/srv/with space")));
        assert!(!mountinfo_has(
            info,
            Path::new("/var/lib/daffe/local/gold/db")
        ));
    }

    #[test]
    fn failed_commands_report_stderr() {
        let err = run("sh", &["-c".as_ref(), "echo oops >&2; exit 3".as_ref()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("oops") && msg.contains("exit status: 3"),
            "{msg}"
        );
        assert!(matches!(
            run("/nonexistent/prog", &[]),
            Err(CommandError::Spawn { .. })
        ));
    }
}
