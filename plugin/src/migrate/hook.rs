//! `daffe migrate --before-cutover CMD`: the operator's command (e.g.
//! `psql -c CHECKPOINT`) run on the source host with `sh -c`, before the
//! last pre-copy round, so what it makes the application flush travels
//! while the application still runs.
//!
//! Bounded: past its timeout the command's whole process group is killed
//! (a shell's children too) and the hook counts as failed. Its stdout goes
//! to `migrate`'s stderr (stdout is the `--json` report); its stderr is
//! shown there too and its tail kept for the error.

use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of the command's stderr kept for the error message.
const STDERR_TAIL: usize = 4096;

/// How often the child is looked at while it runs.
const POLL: Duration = Duration::from_millis(20);

/// What the operator asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BeforeCutover {
    pub(crate) command: String,
    pub(crate) timeout: Duration,
}

/// What the hook did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct HookReport {
    pub(crate) command: String,
    /// The exit code; none when a signal (or the timeout) ended it.
    pub(crate) exit_status: Option<i32>,
    /// The signal that ended it, if one did.
    pub(crate) signal: Option<i32>,
    pub(crate) timed_out: bool,
    /// Of the last run.
    pub(crate) seconds: f64,
    /// How many times it ran: once before the last pre-copy round, and
    /// again before each catch-up round (README, "Databases").
    pub(crate) runs: u32,
    /// The last bytes of its stderr (lossy UTF-8).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) stderr: String,
}

impl HookReport {
    pub(crate) fn succeeded(&self) -> bool {
        self.exit_status == Some(0) && !self.timed_out
    }

    /// Why it failed, with its stderr: the error `migrate` exits with.
    pub(crate) fn failure(&self) -> String {
        let how = if self.timed_out {
            format!("timed out after {:.1} s and was killed", self.seconds)
        } else if let Some(code) = self.exit_status {
            format!("exited with status {code}")
        } else {
            format!("was killed by signal {}", self.signal.unwrap_or(0))
        };
        let stderr = self.stderr.trim();
        format!(
            "`{}` {how}{}",
            self.command,
            if stderr.is_empty() {
                String::new()
            } else {
                format!("; its stderr: {stderr}")
            }
        )
    }
}

/// Errors starting the command (not its failure: that is in the report).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    #[error("cannot run `{command}` with sh -c: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("waiting for `{command}`: {source}")]
    Wait {
        command: String,
        source: std::io::Error,
    },
}

/// Runs `sh -c COMMAND` within its timeout.
pub(crate) fn run(hook: &BeforeCutover) -> Result<HookReport, HookError> {
    let command = hook.command.clone();
    let t0 = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&hook.command)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what the shell started.
        .process_group(0);
    // Its stdout joins ours on stderr; a closed stderr just drops it.
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => cmd.stdout(Stdio::from(fd)),
        Err(_) => cmd.stdout(Stdio::null()),
    };
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        command: command.clone(),
        source,
    })?;
    // Read stderr on a thread: a command that fills the pipe must not
    // block, and a timed-out one must not block us.
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    if let Some(err) = child.stderr.take() {
        let tail = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(err).split(b'\n').map_while(Result::ok) {
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(b"[before-cutover] ");
                let _ = stderr.write_all(&line);
                let _ = stderr.write_all(b"\n");
                drop(stderr);
                let Ok(mut t) = tail.lock() else { break };
                t.extend_from_slice(&line);
                t.push(b'\n');
                let over = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..over);
            }
        });
    }
    let wait_err = |source| HookError::Wait {
        command: command.clone(),
        source,
    };
    let (status, timed_out) = loop {
        if let Some(st) = child.try_wait().map_err(wait_err)? {
            break (st, false);
        }
        if t0.elapsed() >= hook.timeout {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = child.kill();
            break (child.wait().map_err(wait_err)?, true);
        }
        std::thread::sleep(POLL);
    };
    let seconds = t0.elapsed().as_secs_f64();
    // The reader ends when the pipe closes; give it a moment for the last
    // lines (a grandchild that escaped the group may keep it open).
    let t_read = Instant::now();
    while Arc::strong_count(&tail) > 1 && t_read.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stderr = tail
        .lock()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default();
    Ok(HookReport {
        command,
        exit_status: if timed_out { None } else { status.code() },
        signal: status.signal(),
        timed_out,
        seconds: (seconds * 1000.0).round() / 1000.0,
        stderr,
        runs: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(cmd: &str, timeout_ms: u64) -> BeforeCutover {
        BeforeCutover {
            command: cmd.into(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[test]
    fn a_command_that_succeeds_is_reported_with_its_status_and_time() {
        let r = run(&hook("sleep 0.1; echo done", 5000)).unwrap();
        assert!(r.succeeded(), "{r:?}");
        assert_eq!((r.exit_status, r.timed_out), (Some(0), false));
        assert!(r.seconds >= 0.1 && r.seconds < 5.0, "{r:?}");
    }

    #[test]
    fn a_failing_command_gives_its_status_and_stderr() {
        let r = run(&hook("echo 'checkpoint refused' >&2; exit 3", 5000)).unwrap();
        assert!(!r.succeeded());
        assert_eq!(r.exit_status, Some(3));
        let msg = r.failure();
        assert!(
            msg.contains("exited with status 3") && msg.contains("checkpoint refused"),
            "{msg}"
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let late = d.path().join("late");
        // The shell's child (a second sh) would write the file after 1.5 s
        // if only the first shell were killed.
        let cmd = format!("sh -c 'sleep 1.5; touch {}' ; true", late.display());
        let t = Instant::now();
        let r = run(&hook(&cmd, 200)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(r.timed_out && !r.succeeded(), "{r:?}");
        assert!(r.failure().contains("timed out"), "{}", r.failure());
        std::thread::sleep(Duration::from_millis(1800));
        assert!(!late.exists(), "a child of the hook outlived its timeout");
    }
}
