//! `daffe volume ls|inspect|set-profile`: volumes as the daemon's store holds
//! them, read (and set-profile changed) through the control socket (the
//! store's file is locked by the daemon).

use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::{ControlClient, ControlRequest};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
    #[command(subcommand)]
    pub(crate) command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum VolumeCommand {
    /// List volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one volume: record, settings, mount counts per docker mount ID.
    Inspect {
        /// NAME or docker name (NAME@PROFILE).
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Move a volume to another profile, changing its storage in place where
    /// the backend can (EBS: type, IOPS, throughput); refused otherwise.
    SetProfile {
        /// NAME or docker name (NAME@PROFILE).
        name: String,
        profile: String,
        #[arg(long)]
        json: bool,
    },
}

/// Prints set-profile's reply.
fn print_change(reply: &Value) {
    let changes: Vec<&str> = reply["changes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "{}: profile {} -> {}{}",
        s(&reply["docker_name"]),
        s(&reply["from_profile"]),
        s(&reply["to_profile"]),
        if changes.is_empty() {
            " (record only)".to_owned()
        } else {
            format!(": {}", changes.join(", "))
        }
    );
}

pub fn run(args: VolumeArgs) -> ExitCode {
    let (req, json) = match &args.command {
        VolumeCommand::Ls { json } => (ControlRequest::Volumes, *json),
        VolumeCommand::Inspect { name, json } => {
            let name = name.clone();
            (ControlRequest::Volume { name }, *json)
        }
        VolumeCommand::SetProfile {
            name,
            profile,
            json,
        } => {
            let (name, profile) = (name.clone(), profile.clone());
            (ControlRequest::SetProfile { name, profile }, *json)
        }
    };
    let reply = match ControlClient::new(&args.control_socket).send(&req) {
        Ok(v) => v,
        Err(e) => return super::fail(json, e),
    };
    if json {
        super::print_json(&reply);
        return ExitCode::SUCCESS;
    }
    match args.command {
        VolumeCommand::Ls { .. } => {
            print_table(reply.as_array().map(Vec::as_slice).unwrap_or_default())
        }
        VolumeCommand::Inspect { .. } => print_one(&reply),
        VolumeCommand::SetProfile { .. } => print_change(&reply),
    }
    ExitCode::SUCCESS
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_table(vols: &[Value]) {
    println!(
        "{:<32} {:<10} {:<6} {:<9} {:<6} {:<8} DOCKER NAME",
        "NAME", "PROFILE", "FORMAT", "SIZE", "MOUNTS", "STATE"
    );
    for v in vols {
        let st = &v["status"];
        println!(
            "{:<32} {:<10} {:<6} {:<9} {:<6} {:<8} {}",
            s(&v["name"]),
            s(&v["profile"]),
            s(&st["format"]),
            s(&st["size"]),
            s(&v["mount_count"]),
            s(&v["state"]),
            s(&v["docker_name"]),
        );
    }
}

fn print_one(v: &Value) {
    let st = &v["status"];
    for (label, value) in [
        ("Name", &v["name"]),
        ("Docker name", &v["docker_name"]),
        ("Profile", &v["profile"]),
        ("Backend", &v["backend"]),
        ("Format", &st["format"]),
        ("Size", &st["size"]),
        ("State", &v["state"]),
        ("Mountpoint", &v["mountpoint"]),
        ("Mounts", &v["mount_count"]),
    ] {
        println!("{label:<12} {}", s(value));
    }
    if let Some(ids) = v["mounts"].as_object() {
        for (id, n) in ids {
            println!("  {id} x{n}");
        }
    }
    println!("{:<12} {}", "Settings", v["settings"]);
}
