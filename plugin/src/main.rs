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
    /// EBS snapshots of an image or block device: push (full or incremental) and pull.
    Snapshot(daffe_plugin::cli::snapshot::SnapshotArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Snapshot(a) => daffe_plugin::cli::snapshot::run(a),
    }
}
