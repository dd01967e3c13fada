//! daffe's data mover: make a destination identical to a source while sending
//! only what the destination lacks, round after round.
//!
//! See `DESIGN.md` in this crate for the contract between the modules.

pub mod net;
