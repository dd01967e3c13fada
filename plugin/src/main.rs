//! The `daffe` binary: glue between clap and the subcommand modules in `daffe_plugin::cli`.
use clap::{CommandFactory, Parser, Subcommand};
use daffe_plugin::cli;

/// daffe: Docker volumes with storage profiles (`NAME@PROFILE`), and a data mover
/// that migrates them between hosts and to EBS snapshots.
#[derive(Parser)]
#[command(name = "daffe", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: cli::output::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the volume plugin daemon.
    Serve(cli::serve::ServeArgs),
    /// Inspect volumes (through the daemon's control socket).
    Volume(cli::volume::VolumeArgs),
    /// Show storage profiles.
    Profiles(cli::profiles::ProfilesArgs),
    /// EBS snapshots of an image or block device: push (full or incremental) and pull.
    Snapshot(cli::snapshot::SnapshotArgs),
    /// Receive volumes from other hosts (mutual TLS); `init`/`issue` make certificates.
    Agent(cli::agent::AgentArgs),
    /// Move a volume to another host's agent (--to), or an EBS volume to another
    /// zone through snapshots (--via-ebs --to-zone): pre-copy rounds, short cutover.
    Migrate(cli::migrate::MigrateArgs),
    /// Sync a local tree or image into DST (incremental, atomic, resumable).
    Sync(cli::sync::SyncArgs),
    /// What the daemon is doing (volumes, mounts, moves, recent errors);
    /// `--health` checks the daemon or an agent (exit code 0 when healthy).
    Status(cli::status::StatusArgs),
    /// Write shell completions or man pages (run when packaging).
    #[command(hide = true)]
    Generate(cli::generate::GenerateArgs),
    /// Cluster mode (`[cluster]`): nodes, volumes, owners and epochs.
    Cluster(cli::cluster::ClusterArgs),
    /// Follow the clients: observe where requests come from, advise where
    /// to serve them, simulate a circadian day, forward the old address.
    Placement(cli::placement::PlacementArgs),
    /// Act on placement's advice: move a Swarm service, or a container
    /// between two hosts (--host), to its clients' region (or --dry-run),
    /// and forward the old address's port after a move.
    Follow(cli::follow::FollowArgs),
}

impl Command {
    /// `--json-progress` was given (the commands that stream progress).
    fn json_progress(&self) -> bool {
        match self {
            Command::Sync(a) => a.json_progress,
            Command::Migrate(a) => a.json_progress,
            Command::Snapshot(a) => a.json_progress(),
            _ => false,
        }
    }
}

fn main() -> std::process::ExitCode {
    let parsed = Cli::parse();
    if let Err(code) = cli::start(parsed.global, parsed.command.json_progress()) {
        return code;
    }
    match parsed.command {
        Command::Serve(a) => cli::serve::run(a),
        Command::Volume(a) => cli::volume::run(a),
        Command::Profiles(a) => cli::profiles::run(a),
        Command::Snapshot(a) => cli::snapshot::run(a),
        Command::Agent(a) => cli::agent::run(a),
        Command::Migrate(a) => cli::migrate::run(a),
        Command::Sync(a) => cli::sync::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Generate(a) => cli::generate::run(a, Cli::command()),
        Command::Placement(a) => cli::placement::run(a),
        Command::Cluster(a) => cli::cluster::run(a),
        Command::Follow(a) => cli::follow::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command says what it is for (issue 13, item
    /// 12): `--help` never lists a bare flag.
    #[test]
    fn every_argument_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "daffe", &mut missing);
        assert!(
            missing.is_empty(),
            "arguments without a description: {missing:?}"
        );
    }
}
