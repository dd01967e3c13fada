//! The receiver: one round at the destination.
//!
//! recover -> manifest -> validity -> plan (merge-join of applied and new
//! manifests) executed with local copies and fetch windows -> checkpoints ->
//! commit -> apply -> verify -> promote. See DESIGN.md "The round at the
//! receiver". Before the commit record the destination tree is untouched
//! (all writes go to the round dir in the state dir); after it, the
//! journaled ops are replayed to completion by whoever runs next. So the
//! destination is the previous state or the new one, never half of each,
//! across any crash.
//!
//! Map (each module depends only on those above it):
//! - `error`, `options`: the error type; what a round is told and reports.
//! - `ops`: the apply ops (an on-disk format).
//! - `plan`: the round's decisions, pure (no I/O), table-tested.
//! - `dest`: the destination and its state dir as files.
//! - `discard`: a finished round's files, removed in the background.
//! - `apply`: replaying the committed ops.
//! - `writeback`: the disk written while the round writes (early `syncfs`).
//! - `writer`: staged files, pack, op streams, journal checkpoints.
//! - `verify`: validity before a round; verify and promote after it.
//! - `exec`: the plan's executor (local copies, fetch windows).
//! - `partial`: what a pre-copy round that the source outran keeps.
//! - `pages`: patches written as the 4 KiB pages that differ.
//! - `round`: [`Receiver`], which sequences a round's steps.
//! - `preview`: a dry run of the plan.

mod apply;
mod dest;
mod discard;
mod error;
mod exec;
mod ops;
mod options;
mod pages;
mod partial;
mod plan;
mod preview;
mod round;
mod verify;
mod writeback;
mod writer;

pub use dest::default_state_dir;
pub(crate) use dest::scan_copy_dir;
pub use error::ReceiveError;
pub use options::{CHECKPOINT_BYTES, Destination, ReceiveOptions, RoundStats, Verify};
pub use plan::{Action, Change};
pub use preview::{Preview, Tally};
pub use round::Receiver;
pub use verify::Checked;
