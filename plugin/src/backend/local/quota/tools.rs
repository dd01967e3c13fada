//! The real [`ProjectQuotas`]: /proc/self/mountinfo for the filesystem's
//! state, `xfs_io` for a directory's project id, `xfs_quota` for limits and
//! usage (xfsprogs; on ext4 in its foreign-filesystem mode, `-f`).
//!
//! Why tools and not the syscalls (`FS_IOC_FSSETXATTR`, `quotactl`): the
//! workspace forbids unsafe code (issue 12), and both need raw structs
//! passed to the kernel; rustix wraps neither. The tools do exactly those
//! calls, on xfs and ext4 alike, and each run here is bounded in time
//! ([`TOOL_TIMEOUT`]) and killed past it, so a hung quota call never keeps
//! a Docker request's blocking thread.

use super::pure::{self, Fs, Usage};
use super::{ProjectQuotas, QuotaError};
use crate::backend::sys::CommandError;
use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `xfs_io`/`xfs_quota` run may take (they do one or two
/// quotactl or ioctl calls; a report of many projects is still quick).
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct QuotaTools;

/// Runs `program args`, returning stdout; killed past [`TOOL_TIMEOUT`].
/// stdout and stderr are read on threads so a large report never blocks
/// the tool on a full pipe while this waits.
fn run(program: &str, args: &[&OsStr]) -> Result<String, QuotaError> {
    let command = || {
        let mut c = program.to_owned();
        for a in args {
            c.push(' ');
            c.push_str(&a.to_string_lossy());
        }
        c
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            QuotaError::Command(CommandError::Spawn {
                program: program.to_owned(),
                source,
            })
        })?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = child.stdout.take().map(|o| reader(Box::new(o)));
    let err = child.stderr.take().map(|e| reader(Box::new(e)));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|source| QuotaError::Io {
            what: "waiting for",
            path: program.into(),
            source,
        })? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(QuotaError::Timeout {
                command: command(),
                seconds: TOOL_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(QuotaError::Command(CommandError::Failed {
        command: command(),
        status,
        stderr: stderr.trim().to_owned(),
    }))
}

/// `xfs_quota -x [-f] -c CMD MOUNTPOINT`.
fn xfs_quota(fs: &Fs, cmd: &str) -> Result<String, QuotaError> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("-x")];
    if !fs.is_xfs() {
        args.push(OsStr::new("-f"));
    }
    args.extend([OsStr::new("-c"), OsStr::new(cmd), fs.mountpoint.as_os_str()]);
    run("xfs_quota", &args)
}

impl ProjectQuotas for QuotaTools {
    fn filesystem(&self, path: &Path) -> Result<Fs, QuotaError> {
        let io = |source| QuotaError::Io {
            what: "reading the filesystem of",
            path: path.to_owned(),
            source,
        };
        let st = statx(
            CWD,
            path,
            AtFlags::empty(),
            StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
        )
        .map_err(|e| io(e.into()))?;
        let mnt_id = (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id);
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(io)?;
        pure::filesystem_of(
            &pure::parse_mountinfo(&text),
            mnt_id,
            (st.stx_dev_major, st.stx_dev_minor),
        )
        .ok_or_else(|| QuotaError::NoMount(path.to_owned()))
    }

    fn report(&self, fs: &Fs) -> Result<Vec<(u32, Usage)>, QuotaError> {
        Ok(pure::parse_report(&xfs_quota(fs, "report -p -N -n -b")?))
    }

    fn project_of(&self, dir: &Path) -> Result<u32, QuotaError> {
        let out = run(
            "xfs_io",
            &[
                OsStr::new("-r"),
                OsStr::new("-c"),
                OsStr::new("lsproj"),
                dir.as_os_str(),
            ],
        )?;
        // "projid = 42"
        out.trim()
            .strip_prefix("projid = ")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| QuotaError::Parse {
                command: format!("xfs_io -c lsproj {}", dir.display()),
                output: out.clone(),
            })
    }

    fn set_project(&self, dir: &Path, id: u32) -> Result<(), QuotaError> {
        let chproj = OsString::from(format!("chproj {id}"));
        run(
            "xfs_io",
            &[
                OsStr::new("-c"),
                &chproj,
                OsStr::new("-c"),
                OsStr::new("chattr +P"),
                dir.as_os_str(),
            ],
        )
        .map(drop)
    }

    fn set_limit(&self, fs: &Fs, id: u32, bytes: u64) -> Result<(), QuotaError> {
        xfs_quota(
            fs,
            &format!("limit -p bhard={} {id}", pure::limit_arg(bytes)),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_filesystem_is_found_and_tools_are_bounded() {
        let fs = QuotaTools.filesystem(Path::new("/")).unwrap();
        assert_eq!(fs.mountpoint, Path::new("/"));
        let err = run("sh", &[OsStr::new("-c"), OsStr::new("echo no >&2; exit 2")]).unwrap_err();
        assert!(err.to_string().contains("no"), "{err}");
        // A large output does not block the tool on a full pipe.
        let big = run(
            "sh",
            &[OsStr::new("-c"), OsStr::new("head -c 1000000 /dev/zero")],
        )
        .unwrap();
        assert_eq!(big.len(), 1_000_000);
    }

    /// The real `xfs_io` (xfsprogs, which block volumes need anyway): a
    /// plain directory reads as project 0; a set project reads back, or,
    /// where the filesystem has no project ids, the set fails loudly.
    #[test]
    fn xfs_io_sets_and_reads_a_project_or_reports_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(QuotaTools.project_of(dir.path()).unwrap(), 0);
        match QuotaTools.set_project(dir.path(), FIRST_TEST_ID) {
            Ok(()) => assert_eq!(QuotaTools.project_of(dir.path()).unwrap(), FIRST_TEST_ID),
            Err(e) => assert!(e.to_string().contains("chproj"), "{e}"),
        }
        assert!(QuotaTools.project_of(&dir.path().join("gone")).is_err());
    }

    const FIRST_TEST_ID: u32 = pure::FIRST_ID;
}
