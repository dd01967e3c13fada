//! daffe's data mover: make a destination identical to a source while sending
//! only what the destination lacks, round after round.
//!
//! See `DESIGN.md` in this crate for the contract between the modules.

pub mod chunk;
pub mod fsmeta;
pub mod manifest;
pub mod progress;
pub mod safe_path;
pub mod scan;
pub mod source;
pub mod statcache;
