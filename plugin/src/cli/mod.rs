//! One module per `daffe` subcommand: its clap argument struct and its `run`.
pub mod sync;
