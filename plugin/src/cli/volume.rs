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
    /// List volumes: name, profile, format, size, used space, mounts, state.
    Ls {
        /// Print the daemon's records as JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// One line per volume from a template, as `docker volume ls
        /// --format`: {{.Name}} {{.DockerName}} {{.Profile}} {{.Format}}
        /// {{.Size}} {{.Used}} {{.Mounts}} {{.State}}; or `json` for one
        /// JSON object per line.
        #[arg(long, value_name = "TEMPLATE", conflicts_with = "json", value_parser = parse_template)]
        format: Option<String>,
    },
    /// Show one volume: record, settings, mount counts per docker mount ID.
    Inspect {
        /// NAME or docker name (NAME@PROFILE).
        name: String,
        /// Print the record as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Move a volume to another profile, changing its storage in place where
    /// the backend can (EBS: type, IOPS, throughput); refused otherwise.
    SetProfile {
        /// NAME or docker name (NAME@PROFILE).
        name: String,
        /// The profile to move it to (see `daffe profiles ls`).
        profile: String,
        /// Print what changed as JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Cluster mode: move a volume that no service runs on to node NODE.
    /// NODE's copy is brought up to date from the node that wrote it last
    /// (over the agents); the volume stays unmounted, and its next Mount on
    /// NODE needs no copy. Refused at once while a node has it mounted
    /// (move the service instead: Swarm brings the data along).
    Move {
        /// NAME or docker name (NAME@PROFILE).
        name: String,
        /// The cluster node to move it to (its `[cluster] node` name).
        #[arg(long = "to", value_name = "NODE")]
        to: String,
        /// Print the result as JSON (for scripts).
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
        VolumeCommand::Ls { json, .. } => (ControlRequest::Volumes, *json),
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
        VolumeCommand::Move { name, to, json } => {
            let (name, node) = (name.clone(), to.clone());
            (ControlRequest::MoveTo { name, node }, *json)
        }
    };
    let reply = match ControlClient::new(&args.control_socket).send(&req) {
        Ok(v) => v,
        Err(e) => return super::fail_client(json, &e),
    };
    if json {
        super::print_json(&reply);
        return ExitCode::SUCCESS;
    }
    match args.command {
        VolumeCommand::Ls { format, .. } => {
            // The global -q: names only (NAME), one a line, as `docker
            // volume ls -q`; --format wins over it.
            let quiet = super::output::quiet() && format.is_none();
            let vols = reply.as_array().map(Vec::as_slice).unwrap_or_default();
            match (quiet, format.as_deref()) {
                (true, _) => vols.iter().for_each(|v| println!("{}", s(&v["name"]))),
                (false, Some("json")) => vols.iter().for_each(|v| println!("{}", row_json(v))),
                (false, Some(t)) => vols.iter().for_each(|v| println!("{}", fill(t, v))),
                (false, None) => print_table(vols),
            }
        }
        VolumeCommand::Inspect { .. } => print_one(&reply),
        VolumeCommand::SetProfile { .. } if super::output::quiet() => {}
        VolumeCommand::SetProfile { .. } => print_change(&reply),
        VolumeCommand::Move { .. } if super::output::quiet() => {}
        VolumeCommand::Move { .. } => match &reply["from"] {
            Value::String(from) => println!(
                "{}: moved from {from} to {} in {:.1} s",
                s(&reply["volume"]),
                s(&reply["node"]),
                reply["ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            _ => println!(
                "{}: {} holds its latest copy already",
                s(&reply["volume"]),
                s(&reply["node"])
            ),
        },
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

/// The template fields of `volume ls --format`, and each one's value.
const FIELDS: [&str; 8] = [
    "Name",
    "DockerName",
    "Profile",
    "Format",
    "Size",
    "Used",
    "Mounts",
    "State",
];

/// A field of a volume, as text.
fn field(v: &Value, name: &str) -> String {
    let st = &v["status"];
    match name {
        "Name" => s(&v["name"]),
        "DockerName" => s(&v["docker_name"]),
        "Profile" => s(&v["profile"]),
        "Format" => s(&st["format"]),
        "Size" => s(&st["size"]),
        "Used" => s(&st["used"]),
        "Mounts" => s(&v["mount_count"]),
        "State" => state(v),
        _ => String::new(),
    }
}

/// The state in words: `ready`, `moving -> hostb`, `receiving <- hosta`;
/// never the record's JSON.
fn state(v: &Value) -> String {
    let name = s(&v["status"]["state"]);
    // The record's state is a word, or {"moving": {"to": ..}}.
    let peer = v["state"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|inner| inner.get("to").or_else(|| inner.get("from")))
        .and_then(Value::as_str);
    match (peer, name.as_str()) {
        (Some(p), "receiving") => format!("{name} <- {p}"),
        (Some(p), _) => format!("{name} -> {p}"),
        (None, _) => name,
    }
}

/// Checks a `--format` template: `json`, or text whose every `{{.Field}}`
/// is known (a typo is a usage error, not an empty column).
fn parse_template(t: &str) -> Result<String, String> {
    if t == "json" {
        return Ok(t.to_owned());
    }
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i..].find("}}") else {
            return Err(format!("unclosed {{{{ in {t:?}"));
        };
        let inner = rest[i + 2..i + j].trim();
        let name = inner.strip_prefix('.').unwrap_or(inner);
        if !FIELDS.contains(&name) {
            return Err(format!(
                "unknown field {inner:?} in {t:?}; fields: {}",
                FIELDS.map(|f| format!("{{{{.{f}}}}}")).join(" ")
            ));
        }
        rest = &rest[i + j + 2..];
    }
    Ok(t.to_owned())
}

/// Fills a checked template for one volume; `\t` and `\n` as docker does.
fn fill(t: &str, v: &Value) -> String {
    let mut out = t.replace("\\t", "\t").replace("\\n", "\n");
    for f in FIELDS {
        for pat in [format!("{{{{.{f}}}}}"), format!("{{{{ .{f} }}}}")] {
            out = out.replace(&pat, &field(v, f));
        }
    }
    out
}

/// `--format json`: one line per volume with the table's fields.
fn row_json(v: &Value) -> Value {
    Value::Object(
        FIELDS
            .iter()
            .map(|f| ((*f).to_owned(), Value::String(field(v, f))))
            .collect(),
    )
}

/// The table's columns, in order (the README lists them: a test keeps the
/// two alike).
const COLUMNS: [&str; 8] = [
    "NAME",
    "PROFILE",
    "FORMAT",
    "SIZE",
    "USED",
    "MOUNTS",
    "STATE",
    "DOCKER NAME",
];

fn print_table(vols: &[Value]) {
    let c = COLUMNS;
    println!(
        "{:<32} {:<10} {:<6} {:<9} {:<10} {:<6} {:<16} {}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    );
    for v in vols {
        println!(
            "{:<32} {:<10} {:<6} {:<9} {:<10} {:<6} {:<16} {}",
            field(v, "Name"),
            field(v, "Profile"),
            field(v, "Format"),
            field(v, "Size"),
            field(v, "Used"),
            field(v, "Mounts"),
            field(v, "State"),
            field(v, "DockerName"),
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
        ("Used", &st["used"]),
        ("Mountpoint", &v["mountpoint"]),
        ("Mounts", &v["mount_count"]),
    ] {
        println!("{label:<12} {}", s(value));
    }
    println!("{:<12} {}", "State", state(v));
    if let Some(ids) = v["mounts"].as_object() {
        for (id, n) in ids {
            println!("  {id} x{n}");
        }
    }
    println!("{:<12} {}", "Settings", v["settings"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// README.md's `volume ls` lines name the table's columns and the
    /// `--format` fields as the code has them.
    #[test]
    fn the_readme_lists_the_columns_and_fields_volume_ls_has() {
        let readme = include_str!("../../../README.md");
        let line = |needle: &str| {
            readme
                .lines()
                .find(|l| l.starts_with("daffe volume ls") && l.contains(needle))
                .unwrap_or_else(|| panic!("README has no `daffe volume ls ... {needle}` line"))
        };
        let columns = line("[--json]")
            .split_once('#')
            .unwrap()
            .1
            .trim()
            .to_owned();
        let want: Vec<String> = COLUMNS.iter().map(|c| c.to_lowercase()).collect();
        assert_eq!(columns, want.join(", "), "README's volume ls columns");
        let fields = line("--format").split_once("fields:").unwrap().1;
        let fields: Vec<&str> = fields
            .split(';')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(fields, FIELDS, "README's volume ls --format fields");
    }

    fn vol(state: Value) -> Value {
        json!({
            "name": "db", "docker_name": "db@gold", "profile": "gold",
            "mount_count": 1, "state": state,
            "status": {"format": "dir", "size": "10G", "used": "1.5 MiB",
                       "state": "moving"},
        })
    }

    #[test]
    fn the_state_is_words_never_json() {
        let v = vol(json!({"moving": {"to": "hostb"}}));
        assert_eq!(state(&v), "moving -> hostb");
        let mut r = vol(json!({"receiving": {"from": "hosta"}}));
        r["status"]["state"] = json!("receiving");
        assert_eq!(state(&r), "receiving <- hosta");
        let mut ready = vol(json!("ready"));
        ready["status"]["state"] = json!("ready");
        assert_eq!(state(&ready), "ready");
    }

    #[test]
    fn templates_fill_known_fields_and_refuse_unknown_ones() {
        let v = vol(json!({"moving": {"to": "hostb"}}));
        let t = parse_template("{{.Name}}\\t{{ .Used }} {{.State}}").unwrap();
        assert_eq!(fill(&t, &v), "db\t1.5 MiB moving -> hostb");
        assert!(
            parse_template("{{.Nmae}}")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(parse_template("{{.Name").is_err());
        assert_eq!(parse_template("json").as_deref(), Ok("json"));
        assert_eq!(row_json(&v)["Used"], "1.5 MiB");
    }
}
