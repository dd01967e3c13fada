//! Writeback started while a round still writes. A round's data becomes
//! durable through one `syncfs` at each checkpoint and at the commit. Left
//! alone, the kernel starts writing dirty pages back only past
//! `dirty_background_ratio` (gigabytes on a big host), so the commit waited
//! for the whole round's data to reach the disk after the fetch, in series
//! with it (in a final round, as downtime). A thread here writes back the
//! file being written (`fdatasync` of the staged file or the pack) every
//! [`EVERY`] bytes the round writes: the disk writes while the fetch goes
//! on, and the commit's `syncfs` finds little left. Only the round's own
//! files: other writers on the filesystem (a host's other volumes) keep
//! the kernel's pace.
//!
//! Advisory for durability: what a crash keeps is still decided by the
//! checkpoints' and the commit's own syncs and journal records. It does
//! carry errors: the thread's file handle is opened when the round starts,
//! so its `syncfs` reports a writeback error since then (the kernel keeps
//! one error sequence per filesystem and per open file). A fresh handle,
//! opened after the failed writeback, would not see it, so the checkpoints
//! and the commit sync on that handle ([`Writeback::check`]) and fail on any
//! error, the thread's included.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Bytes written between two requests for writeback: large enough that the
/// syncs (each also commits the filesystem's journal) stay few, small
/// enough that the disk starts early in a round of a few hundred MiB.
pub(super) const EVERY: u64 = 16 << 20;

/// The writeback thread of one round's writer.
pub(super) struct Writeback {
    /// Files to write back; `None` once finished.
    tx: Option<SyncSender<File>>,
    thread: Option<JoinHandle<()>>,
    /// The state dir, held since the round started (see the module doc).
    dir: Option<File>,
    /// The first error of the thread's syncs, until [`Writeback::check`] takes it.
    failed: Arc<Mutex<Option<io::Error>>>,
    since: u64,
}

impl Writeback {
    /// Starts the thread for the filesystem holding `state`. If the dir or
    /// the thread cannot be had, the round runs without early writeback
    /// (as before it existed); its own syncs then report the problem.
    pub(super) fn start(state: &Path) -> Self {
        let mut w = Writeback {
            tx: None,
            thread: None,
            dir: None,
            failed: Arc::default(),
            since: 0,
        };
        let Ok(dir) = File::open(state) else {
            return w;
        };
        // One file waits while a sync runs; more are redundant (mostly the
        // same file, whose next sync covers everything dirty by then).
        let (tx, rx) = sync_channel::<File>(1);
        let failed = w.failed.clone();
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for f in rx {
                    if let Err(e) = f.sync_data() {
                        let mut slot = failed.lock().unwrap_or_else(PoisonError::into_inner);
                        slot.get_or_insert(e);
                    }
                }
            });
        if let Ok(t) = thread {
            w.tx = Some(tx);
            w.thread = Some(t);
            w.dir = Some(dir);
        }
        w
    }

    /// `n` more bytes were written, the last into `f`: every [`EVERY`],
    /// `f` is handed to the thread (a second handle on the same file).
    pub(super) fn wrote(&mut self, n: u64, f: &File) {
        self.since += n;
        if self.since < EVERY {
            return;
        }
        self.since = 0;
        let (Some(tx), Ok(f)) = (&self.tx, f.try_clone()) else {
            return;
        };
        match tx.try_send(f) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Syncs the filesystem on the handle held since the round started;
    /// fails if that sync or one of the thread's failed. False when there
    /// is no such handle: the caller syncs on its own.
    pub(super) fn check(&self) -> io::Result<bool> {
        let ours = match &self.dir {
            Some(d) => rustix::fs::syncfs(d)
                .map(|()| true)
                .map_err(io::Error::from),
            None => Ok(false),
        };
        let theirs = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match theirs {
            Some(e) => Err(e),
            None => ours,
        }
    }

    /// Stops the thread (after the sync it is in), then [`Writeback::check`].
    pub(super) fn finish(&mut self) -> io::Result<bool> {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            return Err(io::Error::other("the writeback thread panicked"));
        }
        let r = self.check();
        self.dir = None;
        r
    }
}

impl Drop for Writeback {
    /// A round that fails before its commit leaves the thread to end on its
    /// own after the sync it is in (not joined: that sync can take seconds).
    fn drop(&mut self) {
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pokes_only_every_so_many_bytes_and_finish_reports_success() {
        let t = tempfile::tempdir().unwrap();
        let mut w = Writeback::start(t.path());
        assert!(w.thread.is_some(), "a readable dir starts the thread");
        let f = File::create(t.path().join("data")).unwrap();
        w.wrote(EVERY - 1, &f);
        assert_eq!(w.since, EVERY - 1);
        w.wrote(1, &f);
        assert_eq!(w.since, 0, "the poke resets the count");
        for _ in 0..10 {
            w.wrote(EVERY, &f); // a busy thread drops the extra pokes
        }
        assert!(w.finish().unwrap(), "synced on the held handle");
        assert!(w.tx.is_none() && w.thread.is_none() && w.dir.is_none());
        w.wrote(EVERY, &f); // after finish: a no-op, not a panic
        assert!(
            !w.finish().unwrap(),
            "nothing held any more: the caller syncs"
        );
    }

    #[test]
    fn a_missing_state_dir_runs_without_writeback() {
        let t = tempfile::tempdir().unwrap();
        let mut w = Writeback::start(&t.path().join("absent"));
        assert!(w.thread.is_none());
        let f = File::create(t.path().join("data")).unwrap();
        w.wrote(EVERY * 3, &f);
        assert!(!w.finish().unwrap(), "the caller syncs on its own");
    }
}
