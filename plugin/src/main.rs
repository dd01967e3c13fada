//! The `daffe` binary: glue between clap and the subcommand modules in `daffe_plugin::cli`.
use clap::{Parser, Subcommand};

/// daffe: Docker volumes with storage profiles (`NAME@PROFILE`), and a data mover
/// that migrates them between hosts and to EBS snapshots.
#[derive(Parser)]
#[command(name = "daffe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sync a local tree or image into DST (incremental, atomic, resumable).
    Sync(daffe_plugin::cli::sync::SyncArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sync(args) => daffe_plugin::cli::sync::run(args),
    }
}
