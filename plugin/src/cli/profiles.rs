//! `daffe profiles ls`: the profiles and what each means per backend. Asks the
//! daemon (GET /v1/configuration/profiles); if none runs, reads the config
//! file the daemon would read, and says so.

use crate::config::{Config, DEFAULT_CONTROL_SOCKET};
use crate::control::{ClientError, ControlClient, ControlRequest};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Config file to read when no daemon answers.
    #[arg(long, global = true, env = "DAFFE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: ProfilesCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProfilesCommand {
    /// List profiles.
    Ls {
        /// Print the profiles as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Define or redefine a profile on the running daemon (POST
    /// /v1/configuration/profiles) and re-apply it to that profile's volumes.
    /// FILE holds the definition: TOML as in the config file, either with
    /// its [profiles.NAME] table (other profiles in it are ignored) or the
    /// table's keys alone; or JSON (a .json file).
    Set {
        /// The profile's name.
        name: String,
        /// The definition: TOML (`[profiles.NAME]` or its keys) or JSON.
        file: PathBuf,
        /// Print what was re-applied as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ProfilesArgs) -> ExitCode {
    let json = match args.command {
        ProfilesCommand::Ls { json } => json,
        ProfilesCommand::Set { name, file, json } => {
            return set(&args.control_socket, &name, &file, json);
        }
    };
    let reply = match ControlClient::new(&args.control_socket).send(&ControlRequest::Profiles) {
        Ok(v) => v,
        Err(ClientError::Connect { .. }) => match Config::load(args.config.as_deref()) {
            Ok(cfg) => {
                eprintln!(
                    "daffe: no daemon at {}; showing the config file's profiles",
                    args.control_socket.display()
                );
                let profiles: Vec<_> = cfg.catalog.iter().collect();
                json!({ "backend": cfg.backend, "profiles": profiles })
            }
            Err(e) => return super::fail(json, e),
        },
        Err(e) => return super::fail_client(json, &e),
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
    // Throughput is what set-profile most often changes on gp3.
    if let Some(t) = v["throughput"].as_u64() {
        out += &format!(" {t} MiB/s");
    }
    if v["encrypted"] == true {
        out += " encrypted";
    }
    out
}

/// A profile definition in TOML: the config file's form (`[profiles.NAME]`,
/// so a block copied from daffe.toml works as is) or the table's keys alone.
fn toml_definition(name: &str, text: &str) -> Result<profiles::ProfileDef, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let Some(all) = doc.remove("profiles") else {
        return toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string());
    };
    let mut all = match all {
        toml::Value::Table(t) => t,
        _ => return Err("`profiles` must be a table of [profiles.NAME] tables".into()),
    };
    if !doc.is_empty() {
        let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
        return Err(format!(
            "keys outside [profiles.{name}]: {}; give the profile's table only",
            keys.join(", ")
        ));
    }
    let def = all.remove(name).ok_or_else(|| {
        let have: Vec<&str> = all.keys().map(String::as_str).collect();
        format!(
            "no [profiles.{name}] table (the file has: {})",
            if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            }
        )
    })?;
    def.try_into().map_err(|e: toml::de::Error| e.to_string())
}

fn set(socket: &std::path::Path, name: &str, file: &std::path::Path, json: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return super::fail(json, format!("{}: {e}", file.display())),
    };
    let def = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml_definition(name, &text)
    };
    let def = match def {
        Ok(d) => d,
        Err(e) => return super::fail(json, format!("{}: {e}", file.display())),
    };
    let req = ControlRequest::DefineProfile {
        name: name.to_owned(),
        def,
    };
    let reply = match ControlClient::new(socket).send(&req) {
        Ok(v) => v,
        Err(e) => return super::fail(json, e),
    };
    if json {
        super::print_json(&reply);
        return ExitCode::SUCCESS;
    }
    println!("profile {name} defined");
    for v in reply["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let changes: Vec<&str> = v["changes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "  {}: {}",
            v["docker_name"].as_str().unwrap_or("?"),
            if changes.is_empty() {
                "record only".to_owned()
            } else {
                changes.join(", ")
            }
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_is_read_from_either_toml_form() {
        let table = "[profiles.silver]\ndescription = \"d\"\n[profiles.silver.local]\nformat = \"dir\"\n\
                     [profiles.other]\ndescription = \"o\"\n";
        let bare = "description = \"d\"\n[local]\nformat = \"dir\"\n";
        let a = toml_definition("silver", table).unwrap();
        let b = toml_definition("silver", bare).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.description, "d");
        assert!(a.local.is_some() && a.ebs.is_none());

        let refused = [
            (
                "gold",
                table,
                "no [profiles.gold] table (the file has: other, silver)",
            ),
            (
                "silver",
                "backend = \"ebs\"\n[profiles.silver]\n",
                "keys outside [profiles.silver]: backend",
            ),
            ("silver", "profiles = 3\n", "must be a table"),
            (
                "silver",
                "descripton = \"typo\"\n",
                "unknown field `descripton`",
            ),
            (
                "silver",
                "[profiles.silver]\nlocal = { format = \"tape\" }\n",
                "tape",
            ),
        ];
        for (name, text, want) in refused {
            let e = toml_definition(name, text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
