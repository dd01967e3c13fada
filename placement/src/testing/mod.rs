//! Helpers for tests (this crate's and, with the `testing` feature, other
//! crates'): never compiled into the binary.

pub mod mmdb;
