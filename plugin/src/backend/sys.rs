//! Thin wrappers over the system tools the backends use (mkfs.ext4,
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
use std::time::{Duration, Instant};

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

/// How long an unmount retries a mount the kernel calls busy. A process that
/// has just ended may hold it for some milliseconds more: `pg_ctl stop -w`
/// returns once the server has removed its pid file, before the server
/// process is gone (its working directory is the data directory). The
/// Unmount right after it failed "target is busy" 12 ms after the server's
/// last log line, and `migrate` then refused its cutover (BENCHMARKS.md,
/// issue 11, stop 43). Bounded, as every handler Docker waits for is; a
/// mount still busy after it fails as before.
pub(crate) const UNMOUNT_BUSY_WAIT: Duration = Duration::from_secs(2);
const BUSY_POLL: Duration = Duration::from_millis(20);

/// `umount DIR`, retried while the kernel calls the mount busy, for at
/// most [`UNMOUNT_BUSY_WAIT`].
pub(crate) fn unmount(dir: &Path) -> Result<(), CommandError> {
    let until = Instant::now() + UNMOUNT_BUSY_WAIT;
    loop {
        match run("umount", &[dir.as_os_str()]) {
            Err(e) if is_busy(&e) && Instant::now() < until => std::thread::sleep(BUSY_POLL),
            done => return done,
        }
    }
}

/// Pure: whether `umount` failed because the mount is in use (util-linux
/// says "target is busy"; exit status 32 covers every mount failure).
fn is_busy(e: &CommandError) -> bool {
    matches!(e, CommandError::Failed { stderr, .. } if stderr.contains("busy"))
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
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn only_a_busy_mount_is_retried() {
        let failed = |stderr: &str| CommandError::Failed {
            command: "umount /v".into(),
            status: std::process::ExitStatus::from_raw(32 << 8),
            stderr: stderr.into(),
        };
        let cases = [
            (failed("umount: /v: target is busy."), true),
            (failed("umount: /v: not mounted."), false),
            (failed("umount: /v: must be superuser to unmount."), false),
            (
                CommandError::Spawn {
                    program: "umount".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                },
                false,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(is_busy(&e), want, "{e}");
        }
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
