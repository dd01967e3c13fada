//! The mover's integration tests, one binary (as ripgrep does): linking one
//! test binary instead of one per file is most of an incremental test build.
//! Each module is one former binary; helpers live in `common`.
//!
//! `scale.rs` is a binary of its own (see `Cargo.toml`): it asserts the
//! process's peak RSS, which other tests in the same process would raise.

mod common;

#[cfg(all(feature = "net", feature = "testing"))]
mod fuzz_corpus;
mod hardening_limits;
mod hardening_open;
mod hardening_vanish;
mod image;
#[cfg(feature = "net")]
mod live_precopy;
#[cfg(feature = "net")]
mod net_protocol;
#[cfg(feature = "net")]
mod net_sync;
mod pages;
mod partial;
mod props;
mod resume;
mod tree;
