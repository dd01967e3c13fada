//! Progress reporting, for a progress bar or a log.
//!
//! - A sync round sends [`Progress`] events to a [`ProgressSink`].
//! - An EBS snapshot push or pull counts blocks through [`BlockProgress`].
//!
//! Both are called from worker threads: they must be cheap (they run in the
//! data path) and thread-safe. [`NoProgress`] drops everything, for either.

use serde::{Deserialize, Serialize};

/// The phases of a sync, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Replaying an interrupted round's committed journal.
    Recover,
    /// Walking and chunking the source.
    Scan,
    /// Deciding what the destination lacks.
    Plan,
    /// Fetching and writing chunks.
    Fetch,
    /// Applying the round to the destination.
    Apply,
    /// Re-reading what the round wrote.
    Verify,
    /// Done.
    Done,
}

/// One progress event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// A new phase starts. `total_bytes` is known for Fetch (bytes to fetch
    /// or copy) and Verify.
    Phase {
        /// The phase.
        phase: Phase,
        /// Its total, 0 when unknown.
        total_bytes: u64,
    },
    /// The scan looked at more entries / read more data.
    Scanned {
        /// Entries seen so far.
        entries: u64,
        /// Bytes read and hashed so far.
        bytes_hashed: u64,
    },
    /// Bytes of chunk data made available at the destination (fetched or
    /// copied locally) since the last event.
    Moved {
        /// How many.
        bytes: u64,
    },
    /// Bytes verified since the last event.
    Verified {
        /// How many.
        bytes: u64,
    },
    /// Something was left out (a socket, an xattr the kernel refused).
    Warning {
        /// What, and why.
        message: String,
    },
}

/// Receives progress events.
pub trait ProgressSink: Send + Sync {
    /// Called for every event; must not block for long.
    fn event(&self, ev: &Progress);
}

/// Progress of an EBS snapshot push or pull, in blocks.
pub trait BlockProgress: Sync {
    /// A phase starts with this many blocks to go through.
    fn begin(&self, phase: &str, total: u64);
    /// `n` more blocks done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn end(&self);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _ev: &Progress) {}
}

impl BlockProgress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

impl<F: Fn(&Progress) + Send + Sync> ProgressSink for F {
    fn event(&self, ev: &Progress) {
        self(ev)
    }
}
