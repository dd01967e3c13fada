//! daffe: a Docker volume plugin with storage profiles, and the `daffe` command line.
//!
//! Map of the crate:
//! - `cli`: one module per `daffe` subcommand (argument struct + `run`).
pub mod cli;
