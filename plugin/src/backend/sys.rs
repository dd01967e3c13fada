//! Thin wrappers over the system tools the local backends use (mkfs.ext4,
//! mount, umount).
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

/// Whether something is mounted exactly at `dir` (in this mount namespace),
/// by device and mount IDs (see [`super::mountpoint`]), never by comparing
/// path strings, which a symlink above `dir` defeats.
pub(crate) fn is_mountpoint(dir: &Path) -> bool {
    super::mountpoint::mounted_at(dir).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

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
