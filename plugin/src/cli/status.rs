//! `daffe status`: what the local daemon is doing (version, uptime,
//! backend, volumes by state, mounts, moves and their peers, the last
//! warnings and errors), as text or `--json`. `daffe status --health` only
//! checks: exit code 0 when healthy, 1 with the reason when not; with
//! `--agent HOST[:PORT]` it checks that agent (and, through it, the agent's
//! own daemon) instead.

use super::agent::{DEFAULT_TLS_DIR, PeerOptions};
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::{ControlClient, ControlRequest};
use crate::migrate::duration;
use crate::migrate::wire::{PeerReply, PeerRequest};
use clap::Args;
use mover::net::Peer;
use mover::net::tls;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Show what the daemon is doing, or check that it (or an agent) is healthy.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's control socket.
    #[arg(long, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
    /// Only check health: exit code 0 when healthy, 1 (with the reason on
    /// stderr, or in the JSON) when not.
    #[arg(long)]
    pub(crate) health: bool,
    /// With --health: check the agent at HOST[:PORT] (mutual TLS with this
    /// node's certificate) and, through it, the agent's daemon.
    #[arg(long, value_name = "HOST[:PORT]", requires = "health")]
    pub(crate) agent: Option<String>,
    /// Directory with ca.pem, node.pem, node.key, for --agent.
    #[arg(long, env = "DAFFE_TLS_DIR", default_value = DEFAULT_TLS_DIR)]
    pub(crate) tls_dir: PathBuf,
    /// How long the agent may take to answer (connect, TLS, reply).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = duration::positive)]
    pub(crate) timeout: String,
}

/// `3725` -> `1h 2m 5s`.
fn human_secs(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// The status report as text (pure: the JSON the daemon sent in).
fn render(v: &Value) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "daffe {} (pid {}), up {} since {}, backend {}",
        text(&v["version"]),
        text(&v["pid"]),
        human_secs(v["uptime_secs"].as_u64().unwrap_or(0)),
        text(&v["started_at"]),
        text(&v["backend"]),
    ));
    let by_state: Vec<String> = v["volumes"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    out.push(format!(
        "volumes: {}{}",
        text(&v["volumes_total"]),
        if by_state.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_state.join(", "))
        }
    ));
    out.push(format!(
        "mounts:  {} on {} volume(s)",
        text(&v["mounts"]["total"]),
        text(&v["mounts"]["volumes"])
    ));
    let moves = v["moves"].as_array().cloned().unwrap_or_default();
    if moves.is_empty() {
        out.push("moves:   none".into());
    } else {
        out.push("moves:".into());
        for m in &moves {
            let arrow = if m["state"] == "receiving" {
                "<-"
            } else {
                "->"
            };
            out.push(format!(
                "  {} {} {arrow} {}",
                text(&m["volume"]),
                text(&m["state"]),
                text(&m["peer"])
            ));
        }
    }
    let peers: Vec<String> = v["peers"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    out.push(format!(
        "peers:   {}",
        if peers.is_empty() {
            "none".to_owned()
        } else {
            peers.join(", ")
        }
    ));
    let errors = v["last_errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        out.push("last errors: none".into());
    } else {
        out.push("last errors:".into());
        for e in &errors {
            out.push(format!(
                "  {} {:<5} {}",
                text(&e["at"]),
                text(&e["level"]),
                text(&e["message"])
            ));
        }
    }
    out.join("\n")
}

/// The agent's health: its reply, or why there is none.
fn agent_health(args: &StatusArgs, addr: &str) -> Result<Value, String> {
    let timeout = duration::parse(&args.timeout).map_err(|e| e.to_string())?;
    let opts = PeerOptions {
        tls_dir: args.tls_dir.clone(),
        name: None,
        bwlimit: None,
        no_compress: false,
        io_timeout: args.timeout.clone(),
    };
    let ep = opts.endpoint()?;
    let client =
        tls::client_config(&opts.files()).map_err(|e| format!("{e} (see `daffe agent init`)"))?;
    let mut peer = Peer::connect_within(addr, &client, &ep, timeout).map_err(|e| {
        match mover::net::unreachable_reason(&e, timeout) {
            Some(reason) => format!(
                "cannot reach {} ({reason})",
                mover::net::with_default_port(addr)
            ),
            None => e.to_string(),
        }
    })?;
    let body = serde_json::to_vec(&PeerRequest::Health).map_err(|e| e.to_string())?;
    let reply = peer
        .control(&body)
        .map_err(|e| format!("agent {addr}: {e}"))?;
    let node = peer.node().to_owned();
    peer.bye();
    match serde_json::from_slice::<PeerReply>(&reply) {
        Ok(PeerReply::Health {
            version,
            daemon_error: None,
        }) => Ok(json!({ "healthy": true, "agent": addr, "node": node, "version": version })),
        Ok(PeerReply::Health {
            daemon_error: Some(e),
            ..
        }) => Err(format!(
            "agent {addr} ({node}) is up, but its daemon is not: {e}"
        )),
        Ok(other) => Err(format!("agent {addr} answered {other:?}")),
        Err(e) => Err(format!(
            "agent {addr} does not know the health request (older daffe?): {e}"
        )),
    }
}

/// `daffe status --health`.
fn health(args: &StatusArgs) -> ExitCode {
    let result = match &args.agent {
        Some(addr) => agent_health(args, addr),
        None => ControlClient::new(&args.control_socket)
            .send(&ControlRequest::Health)
            .map(|mut v| {
                v["healthy"] = json!(true);
                v
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(v) if args.json => {
            super::print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(v) => {
            match &args.agent {
                Some(a) => println!("healthy: agent {a} ({})", text(&v["node"])),
                None => println!(
                    "healthy: daemon {} up {}",
                    text(&v["version"]),
                    human_secs(v["uptime_secs"].as_u64().unwrap_or(0))
                ),
            }
            ExitCode::SUCCESS
        }
        Err(reason) if args.json => {
            super::print_json(&json!({ "healthy": false, "reason": reason }));
            ExitCode::FAILURE
        }
        Err(reason) => {
            eprintln!("daffe: unhealthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `daffe status`.
pub fn run(args: StatusArgs) -> ExitCode {
    if args.health {
        return health(&args);
    }
    match ControlClient::new(&args.control_socket).send(&ControlRequest::Status) {
        Ok(v) if args.json => {
            super::print_json(&v);
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("{}", render(&v));
            ExitCode::SUCCESS
        }
        Err(e) => super::fail_client(args.json, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_short() {
        assert_eq!(human_secs(5), "5s");
        assert_eq!(human_secs(125), "2m 5s");
        assert_eq!(human_secs(3725), "1h 2m");
        assert_eq!(human_secs(90_000), "1d 1h");
    }

    #[test]
    fn render_shows_every_section() {
        let v = json!({
            "version": "0.1.0", "pid": 42, "uptime_secs": 65,
            "started_at": "2026-12-02T00:00:00Z", "backend": "local",
            "volumes_total": 3, "volumes": {"ready": 2, "receiving": 1},
            "mounts": {"volumes": 1, "total": 2},
            "moves": [{"volume": "db@gold", "state": "receiving", "peer": "host-a"}],
            "peers": ["host-a"],
            "last_errors": [{"at": "2026-12-02T00:00:01Z", "level": "WARN", "message": "disk slow"}],
        });
        let t = render(&v);
        for want in [
            "daffe 0.1.0 (pid 42), up 1m 5s",
            "backend local",
            "volumes: 3 (ready 2, receiving 1)",
            "mounts:  2 on 1 volume(s)",
            "  db@gold receiving <- host-a",
            "peers:   host-a",
            "WARN  disk slow",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        assert!(!t.contains('{'), "no raw JSON in\n{t}");
    }
}
