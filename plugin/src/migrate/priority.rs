//! Pre-copy rounds run in the background of the application they move
//! (issue 11: the app should barely notice the pre-copy). While a
//! [`Background`] guard lives, the thread that made it, and every thread it
//! starts, runs at the lowest CPU priority (nice 19) and in the
//! idle I/O class. That ranks pre-copy below the other threads of its own
//! scheduler group only: an application in another cgroup or session still
//! shares the CPU with it equally. `super::idle_group` is what puts the
//! `migrate` process below the application; the agent and the daemons,
//! which have other work, get this guard alone. On an idle machine either
//! leaves rounds as fast as before; on a busy one they slow down instead of
//! the application (the convergence model measures the rounds it gets).
//!
//! The final round, after the unmount, runs at normal priority: nothing of
//! the application runs then, and its time is the downtime.
//!
//! Per thread: on Linux nice and the I/O priority belong to a thread, and a
//! new thread inherits its creator's. A round runs on one thread (the
//! `migrate` command's, or the agent's connection thread for it), and the
//! scan's workers are started within the round, so they inherit it; the
//! agent's other connections are not touched.
//! The I/O class is set with util-linux's `ionice` (the workspace has no
//! unsafe code for the `ioprio_set` system call); without it only the CPU
//! priority is lowered, and the guard says so.

use std::process::Command;

use rustix::process::{getpriority_process, setpriority_process};

/// Nice value of pre-copy threads: the lowest CPU priority there is.
pub(crate) const BACKGROUND_NICE: i32 = 19;

/// Lowers the calling thread's priority until dropped (see the module
/// doc). Not `Send`: it must be dropped on the thread it lowered.
pub(crate) struct Background {
    /// The thread's id and nice value before.
    tid: i32,
    nice_before: Option<i32>,
    /// The idle I/O class was set (to be lifted on drop).
    io_idle: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Background {
    /// The calling thread to nice [`BACKGROUND_NICE`] and the idle I/O
    /// class. What cannot be lowered stays as it was.
    pub(crate) fn enter() -> Background {
        let Some(tid) = own_tid() else {
            tracing::debug!("no thread id: pre-copy runs at normal priority");
            return Background {
                tid: 0,
                nice_before: None,
                io_idle: false,
                _not_send: std::marker::PhantomData,
            };
        };
        // `None`: the calling thread (setpriority's who = 0).
        let nice_before = getpriority_process(None)
            .ok()
            .filter(|_| setpriority_process(None, BACKGROUND_NICE).is_ok());
        let io_idle = ionice(&["-c", "3"], tid);
        if !io_idle {
            tracing::debug!("ionice unavailable: pre-copy runs in the normal I/O class");
        }
        Background {
            tid,
            nice_before,
            io_idle,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether the I/O class was lowered too.
    #[cfg(test)]
    pub(crate) fn io_idle(&self) -> bool {
        self.io_idle
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(before) = self.nice_before {
            let _ = setpriority_process(None, before);
        }
        if self.io_idle {
            // Class "none": the I/O priority follows the nice value again.
            ionice(&["-c", "0"], self.tid);
        }
    }
}

/// The calling thread's id, from `/proc/thread-self` (`PID/task/TID`).
fn own_tid() -> Option<i32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// `ionice ARGS -p TID`; true when it succeeded.
fn ionice(args: &[&str], tid: i32) -> bool {
    Command::new("ionice")
        .args(args)
        .args(["-p", &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        getpriority_process(None).unwrap()
    }

    fn own_io_class() -> String {
        let tid = own_tid().unwrap();
        let out = Command::new("ionice")
            .args(["-p", &tid.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn threads_are_lowered_inherited_and_restored() {
        let before = own_nice();
        let (nice_in, class_in, child) = {
            let g = Background::enter();
            let child = std::thread::spawn(|| (own_nice(), own_io_class()))
                .join()
                .unwrap();
            assert!(g.io_idle(), "ionice (util-linux) is needed here");
            (own_nice(), own_io_class(), child)
        };
        assert_eq!(nice_in, BACKGROUND_NICE);
        assert_eq!(class_in, "idle");
        // A thread started under the guard inherits both.
        assert_eq!(child, (BACKGROUND_NICE, "idle".to_owned()));
        // Lifted on drop (raising nice back needs root, which the tests
        // of this crate run as, as the daemon does).
        assert_eq!(own_nice(), before);
        assert_ne!(own_io_class(), "idle");
    }
}
