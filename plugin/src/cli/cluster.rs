//! `daffe cluster`: cluster mode from the command line. `status` lists the
//! nodes alive in etcd, every volume with its owner, epoch and last writer,
//! and this node's lease, as text or `--json`. `fence-watch` is the
//! watchdog `daffe serve` starts (hidden: not for people).

use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::{ControlClient, ControlRequest};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub(crate) command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Nodes, volumes, owners, epochs and this node's lease.
    Status {
        /// The daemon's control socket.
        #[arg(long, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
        control_socket: PathBuf,
        /// Print JSON on stdout instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The fence watchdog (started by `daffe serve` in cluster mode).
    #[command(hide = true)]
    FenceWatch {
        /// The heartbeat file the daemon writes.
        file: PathBuf,
    },
}

pub fn run(args: ClusterArgs) -> ExitCode {
    match args.command {
        ClusterCommand::Status {
            control_socket,
            json,
        } => match ControlClient::new(&control_socket).send(&ControlRequest::Cluster) {
            Ok(v) if json => {
                super::print_json(&v);
                ExitCode::SUCCESS
            }
            Ok(v) => {
                print!("{}", render(&v));
                ExitCode::SUCCESS
            }
            Err(e) => super::fail(json, e),
        },
        ClusterCommand::FenceWatch { file } => {
            super::init_logging();
            crate::clustering::fencing::watch(&file);
            ExitCode::SUCCESS
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The status as text (pure: the JSON the daemon sent).
fn render(v: &Value) -> String {
    let mut out = format!(
        "cluster {} node {}: lease {} {}\n",
        text(&v["cluster"]),
        text(&v["node"]),
        text(&v["lease"]),
        if v["fenced"] == Value::Bool(true) {
            "FENCED (owns nothing until it re-claims)".to_owned()
        } else {
            format!(
                "writable for {} ms",
                v["writable_for_ms"].as_u64().unwrap_or(0)
            )
        }
    );
    out.push_str("NODE             AGENT                  VERSION\n");
    for n in v["nodes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<22} {}\n",
            text(&n["name"]),
            text(&n["agent"]),
            text(&n["version"])
        ));
    }
    out.push_str("VOLUME               PROFILE  OWNER            EPOCH  LAST WRITER@EPOCH\n");
    for x in v["volumes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:<8} {:<16} {:<6} {}@{}\n",
            text(&x["name"]),
            text(&x["profile"]),
            text(&x["owner"]),
            text(&x["epoch"]),
            text(&x["last_writer"]),
            text(&x["last_epoch"]),
        ));
        // Known on the owner only (it sends the rounds).
        for s in x["standbys"].as_array().into_iter().flatten() {
            let lag = match s["lag_ms"].as_u64() {
                Some(ms) => format!(
                    "lag {:.1} s, last round {}",
                    ms as f64 / 1000.0,
                    crate::migrate::report::human_bytes(
                        s["last_round_bytes"].as_u64().unwrap_or(0)
                    )
                ),
                None => "no round yet".into(),
            };
            let error = s["error"]
                .as_str()
                .map(|e| format!(", error: {}", e.chars().take(40).collect::<String>()))
                .unwrap_or_default();
            out.push_str(&format!("  standby {}: {lag}{error}\n", text(&s["node"])));
        }
        // Known on the node that took the volume over from its standby.
        let t = &x["last_takeover"];
        if t.is_object() {
            out.push_str(&format!(
                "  took over from {}@{}: data age {:.1} s, in {} ms, {}\n",
                text(&t["from"]),
                text(&t["from_epoch"]),
                t["rpo_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                text(&t["takeover_ms"]),
                text(&t["checked"]),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_nodes_volumes_and_a_fenced_node() {
        let v = json!({
            "cluster": "prod", "node": "n1", "lease": 7, "fenced": false, "writable_for_ms": 6000,
            "nodes": [{"name": "n1", "agent": "10.0.0.1:7443", "version": "0.1.0"}],
            "volumes": [{"name": "db", "profile": "gold", "owner": "n1", "epoch": 12,
                         "last_writer": "n1", "last_epoch": 12,
                         "standbys": [{"node": "n2", "lag_ms": 5300, "last_round_bytes": 2048,
                                       "lag_bytes": 0, "rounds": 9, "error": null},
                                      {"node": "n3", "lag_ms": null, "last_round_bytes": 0,
                                       "lag_bytes": 0, "rounds": 0,
                                       "error": "reaching node n3's agent at 10.0.0.3:7443: connection refused"}],
                         "last_takeover": {"from": "n3", "from_epoch": 8, "epoch": 12, "rpo_ms": 20028,
                                           "takeover_ms": 7, "checked": "e2fsck -n -f: clean"}}],
        });
        let t = render(&v);
        assert!(t.contains("lease 7 writable for 6000 ms"), "{t}");
        assert!(t.contains("10.0.0.1:7443"), "{t}");
        assert!(t.contains("db") && t.contains("n1@12"), "{t}");
        assert!(
            t.contains("standby n2: lag 5.3 s, last round 2.0 KiB"),
            "{t}"
        );
        assert!(
            t.contains("standby n3: no round yet, error: reaching"),
            "{t}"
        );
        assert!(
            t.contains("took over from n3@8: data age 20.0 s, in 7 ms, e2fsck -n -f: clean"),
            "{t}"
        );
        let fenced = render(&json!({"fenced": true, "nodes": [], "volumes": []}));
        assert!(fenced.contains("FENCED"), "{fenced}");
        assert!(t.lines().all(|l| l.len() <= 80), "{t}");
    }
}
