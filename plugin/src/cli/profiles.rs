//! `daffe profiles ls`: the profiles and what each means per backend. Asks the
//! daemon (GET /v1/configuration/profiles); if none runs, reads the config
//! file the daemon would read, and says so.

use crate::client;
use crate::config::Config;
use crate::control::DEFAULT_CONTROL_SOCKET;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    #[arg(long, global = true, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Config file to read when no daemon answers.
    #[arg(long, global = true, env = "DAFFE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ProfilesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// List profiles.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ProfilesArgs) -> ExitCode {
    let ProfilesCommand::Ls { json } = args.command;
    let reply = match super::block_on(client::call(
        &args.control_socket,
        Method::GET,
        "/v1/configuration/profiles",
        None,
    )) {
        Ok(Ok(v)) => v,
        Ok(Err(client::ClientError::Connect { .. })) => {
            match Config::load(args.config.as_deref()) {
                Ok(cfg) => {
                    eprintln!(
                        "daffe: no daemon at {}; showing the config file's profiles",
                        args.control_socket.display()
                    );
                    let profiles: Vec<_> = cfg.catalog.iter().collect();
                    json!({ "backend": cfg.backend, "profiles": profiles })
                }
                Err(e) => return super::fail(json, e),
            }
        }
        Ok(Err(e)) => return super::fail(json, e),
        Err(e) => return super::fail(json, e),
    };
    if json {
        super::print_json(&reply);
        return ExitCode::SUCCESS;
    }
    println!("backend: {}", reply["backend"].as_str().unwrap_or("?"));
    println!(
        "{:<12} {:<8} {:<28} {:<34} DESCRIPTION",
        "PROFILE", "BUILTIN", "LOCAL", "EBS"
    );
    for p in reply["profiles"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "{:<12} {:<8} {:<28} {:<34} {}",
            p["name"].as_str().unwrap_or("?"),
            p["builtin"].as_bool().unwrap_or(false),
            local_summary(&p["local"]),
            ebs_summary(&p["ebs"]),
            p["description"].as_str().unwrap_or(""),
        );
    }
    ExitCode::SUCCESS
}

fn local_summary(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let mut out = v["format"].as_str().unwrap_or("?").to_owned();
    if let Some(size) = v["default_size"].as_str() {
        out += &format!(" {size}");
    }
    if v["format"] == "block" {
        out += &format!(" {}", v["filesystem"].as_str().unwrap_or("ext4"));
    }
    if let Some(root) = v["root"].as_str() {
        out += &format!(" at {root}");
    }
    out
}

fn ebs_summary(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let mut out = v["type"].as_str().unwrap_or("?").to_owned();
    match &v["iops"] {
        Value::Null => {}
        Value::Number(n) => out += &format!(" {n} IOPS"),
        rule => out += &format!(" {}/GiB IOPS", rule["per_gib"]),
    }
    if v["encrypted"] == true {
        out += " encrypted";
    }
    out
}
