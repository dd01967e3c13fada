//! `daffe migrate VOLUME --to HOST[:PORT]`: moves a volume to another host's
//! agent with pre-copy rounds and a short cutover (see `crate::migrate`).
//! Run it on the source host; it talks to the local daemon and the peer.
//!
//! At cutover it waits until the volume is unmounted: stop the containers
//! that use it (`docker stop`) when it says so. It never stops them itself.
//!
//! With `--via-ebs --to-zone ZONE` it moves an EBS volume to another zone
//! through snapshots instead (see `super::migrate_ebs`).

use super::agent::PeerOptions;
use super::progress_json::JsonLines;
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::ControlClient;
use crate::metrics::report::RunReport;
use crate::migrate::duration;
use crate::migrate::hook::BeforeCutover;
use crate::migrate::orchestrate::{
    DEFAULT_MAX_ROUNDS, Event, MigrateOptions, ReadCaps, RemoteAgent, migrate, read_limiter,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mover::Source;
use mover::net::parse_rate;
use mover::net::tls;
use mover::net::{RoundPushRetry, RoundPusher};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The volume (NAME or NAME@PROFILE).
    pub(crate) volume: String,
    /// The destination agent: HOST[:PORT] (default port 7450).
    #[arg(long, required_unless_present = "via_ebs", conflicts_with = "via_ebs")]
    pub(crate) to: Option<String>,
    /// Move an EBS volume to another availability zone through snapshots:
    /// pre-copy snapshots while it is in use, a final one once the containers
    /// are stopped (stop them when told to; daffe never does), and a new
    /// volume in --to-zone from the final snapshot.
    #[arg(long, requires = "to_zone")]
    pub(crate) via_ebs: bool,
    /// The zone of the new volume (with --via-ebs).
    #[arg(long, requires = "via_ebs", value_name = "ZONE")]
    pub(crate) to_zone: Option<String>,
    #[command(flatten)]
    pub(crate) ebs: super::migrate_ebs::EbsArgs,
    /// Downtime target: pre-copy continues until the final round is
    /// expected (from the measured dirty rate and link rate) to take less
    /// than this, or until rounds stop converging.
    #[arg(long, default_value = "2s", conflicts_with = "via_ebs")]
    pub(crate) max_downtime: String,
    /// How long stopping the application is expected to take, from
    /// migrate's request to the volume's unmount (e.g. `docker stop`). The
    /// application writes meanwhile and the final round carries that, so
    /// the estimate counts it; set it to what your stop takes.
    #[arg(
        long,
        default_value = "1s",
        value_name = "DURATION",
        conflicts_with = "via_ebs"
    )]
    pub(crate) stop_time: String,
    /// Refuse the cutover when the estimated downtime exceeds
    /// --max-downtime: exit non-zero with the figures, the volume not
    /// fenced, the application still running.
    #[arg(long, conflicts_with = "via_ebs")]
    pub(crate) strict: bool,
    /// A command run on this host with `sh -c` once pre-copy has converged,
    /// before the last pre-copy round, so that what it flushes travels
    /// while the application still runs: a database's checkpoint (e.g.
    /// `docker exec db psql -U postgres -c CHECKPOINT`). If it fails
    /// (non-zero exit, or --before-cutover-timeout) migrate stops with its
    /// stderr; the volume is not fenced and the application keeps running.
    #[arg(long, value_name = "CMD", conflicts_with = "via_ebs")]
    pub(crate) before_cutover: Option<String>,
    /// Time limit for --before-cutover; past it the command (and what it
    /// started) is killed and counts as failed.
    #[arg(
        long,
        default_value = "60s",
        value_name = "DURATION",
        conflicts_with = "via_ebs"
    )]
    pub(crate) before_cutover_timeout: String,
    /// Cap this process's reads of the volume during pre-copy rounds
    /// (bytes/s with K/M/G, binary, or bits with kbit/mbit/gbit, e.g. 20M),
    /// so the application keeps its share of the disk and CPU while it
    /// runs: the scans' reads, and the chunks sent that the page cache no
    /// longer holds. The final round, after the unmount, is never capped.
    /// Default: no cap.
    #[arg(long, value_name = "RATE", conflicts_with = "via_ebs")]
    pub(crate) read_limit: Option<String>,
    /// Cap this process's reads during the first pre-copy round only, in
    /// place of --read-limit there (same units). The first round reads the
    /// whole volume, which is most of what a move costs the running
    /// application; the rounds after it read only what changed and run at
    /// --read-limit (default: uncapped), so pre-copy still catches up
    /// with the writes. Default: no cap.
    #[arg(long, value_name = "RATE", conflicts_with = "via_ebs")]
    pub(crate) first_round_read_limit: Option<String>,
    /// CPU and I/O priority of pre-copy rounds on this host. `idle` (the
    /// default): as `low`, and the whole `migrate` process runs in a cgroup
    /// with cpu.idle=1 during pre-copy, so the application's threads go
    /// first even from another cgroup or session (cgroup v1 cpu controller,
    /// root; elsewhere as `low`). If the application leaves pre-copy almost
    /// no CPU there for 10 s, `migrate` says so and runs the rest of the
    /// pre-copy in a low-weight cgroup (about a tenth of a CPU the
    /// application wants). `low`: nice 19 and the idle I/O class, which
    /// only rank pre-copy among its own scheduler group. `normal`: neither.
    /// The final round always runs at normal priority. The destination's
    /// agent receives pre-copy rounds at nice 19 either way.
    #[arg(long, value_enum, default_value_t = PrecopyPriority::Idle, conflicts_with = "via_ebs")]
    pub(crate) precopy_priority: PrecopyPriority,
    /// Pre-copy rounds at most (default 10; 5 with --via-ebs, where each
    /// round is a snapshot).
    #[arg(long)]
    pub(crate) max_rounds: Option<u32>,
    /// How long the first contact with the destination agent may take (TCP
    /// connect and TLS handshake). An agent not reached by then fails the
    /// command with "cannot reach HOST:PORT (...)"; once reached, a cut link
    /// is retried for up to 5 minutes. Must be above 0.
    #[arg(
        long,
        default_value = "5s",
        value_name = "DURATION",
        value_parser = duration::positive,
        conflicts_with = "via_ebs"
    )]
    pub(crate) connect_timeout: String,
    /// How long to wait for the containers to be stopped at cutover.
    #[arg(long, default_value = "10m")]
    pub(crate) unmount_timeout: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Stream progress and round events on stderr as JSON, one object per
    /// line (README, "Progress for scripts"); stdout is unchanged.
    #[arg(long)]
    pub json_progress: bool,
    /// The local daemon's control socket.
    #[arg(long, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
    #[command(flatten)]
    pub(crate) peer: PeerOptions,
}

/// `--precopy-priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PrecopyPriority {
    Idle,
    Low,
    Normal,
}

/// Pause between looks at the mount count at cutover: the downtime is
/// measured from the look that saw it unmounted, so this bounds the error.
const FENCE_POLL: Duration = Duration::from_millis(20);

pub fn run(args: MigrateArgs) -> ExitCode {
    if args.via_ebs {
        return super::migrate_ebs::run(&super::migrate_ebs::ViaEbs {
            volume: &args.volume,
            to_zone: args.to_zone.as_deref().unwrap_or_default(),
            max_rounds: args.max_rounds,
            unmount_timeout: &args.unmount_timeout,
            json: args.json,
            json_progress: args.json_progress,
            control_socket: &args.control_socket,
            ebs: &args.ebs,
        });
    }
    super::init_logging();
    let to = args.to.clone().unwrap_or_default();
    let json = args.json;
    let parse = |s: &str| duration::parse(s).map_err(|e| e.to_string());
    let (max_downtime, unmount_timeout, connect_timeout, hook_timeout) = match (
        parse(&args.max_downtime),
        parse(&args.unmount_timeout),
        parse(&args.connect_timeout),
        parse(&args.before_cutover_timeout),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            return super::fail(json, e);
        }
    };
    let stop_time = match parse(&args.stop_time) {
        Ok(t) => t,
        Err(e) => return super::fail(json, format!("--stop-time: {e}")),
    };
    let ep = match args.peer.endpoint() {
        Ok(ep) => ep,
        Err(e) => return super::fail(json, e),
    };
    let tls = match tls::client_config(&args.peer.files()) {
        Ok(t) => t,
        Err(e) => return super::fail(json, format!("{e} (see `daffe agent init`)")),
    };
    let cap = |flag: &str, v: &Option<String>| match v.as_deref().map(parse_rate).transpose() {
        Ok(r) => Ok(r.filter(|&r| r > 0).map(|r| Arc::new(read_limiter(r)))),
        Err(e) => Err(format!("{flag}: {e}")),
    };
    let read_caps = match (
        cap("--read-limit", &args.read_limit),
        cap("--first-round-read-limit", &args.first_round_read_limit),
    ) {
        (Ok(all), Ok(first)) => ReadCaps { all, first },
        (Err(e), _) | (_, Err(e)) => return super::fail(json, e),
    };
    let daemon = ControlClient::new(&args.control_socket);
    let mut dest = RemoteAgent {
        read_caps,
        background: args.precopy_priority != PrecopyPriority::Normal,
        idle: (args.precopy_priority == PrecopyPriority::Idle)
            .then(crate::migrate::idle_group::IdlePolicy::default),
        pusher: RoundPusher::new(
            to.clone(),
            tls,
            ep,
            Source::Tree(PathBuf::new()),
            PathBuf::new(),
            args.volume.clone(),
        )
        .with_retry(RoundPushRetry::default().with_connect_timeout(connect_timeout)),
    };
    let opts = MigrateOptions {
        volume: args.volume.clone(),
        to: to.clone(),
        max_downtime,
        max_rounds: args.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS).max(1),
        unmount_timeout,
        fence_poll: FENCE_POLL,
        stop_time,
        strict: args.strict,
        before_cutover: args.before_cutover.clone().map(|command| BeforeCutover {
            command,
            timeout: hook_timeout,
        }),
        precopy: true,
    };
    let quiet = super::output::quiet();
    let stream = args
        .json_progress
        .then(|| JsonLines::new("migrate", "bytes"));
    let bar = if quiet || stream.is_some() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    // Lines the operator (or a script reading stderr) acts on are printed
    // whether or not stderr is a terminal; the bar only draws on one. `-q`
    // and `--json-progress` print none of them.
    let say = |bar: &ProgressBar, line: String| {
        if quiet || stream.is_some() {
            return;
        }
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let volume = args.volume.clone();
    let result = migrate(&daemon, &mut dest, &opts, &mut |ev| {
        if let Some(s) = &stream {
            stream_event(s, &ev);
        }
        match ev {
            Event::Preflight(c) => say(
                &bar,
                format!(
                    "{}: destination {} has profile {} and {} bytes free{}",
                    volume,
                    to,
                    c.profile,
                    c.free_bytes,
                    if c.resuming {
                        " (resuming an earlier transfer)"
                    } else {
                        ""
                    }
                ),
            ),
            Event::RoundStart { round, final_round } => {
                bar.set_position(0);
                bar.set_message(format!(
                    "round {round} ({})",
                    if final_round { "final" } else { "pre-copy" }
                ));
                if !bar.is_hidden() {
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
            }
            Event::Bytes(b) => bar.inc(b),
            Event::RoundEnd(r) => say(
                &bar,
                format!(
                    "round {} ({}): {} bytes changed ({} carried before compression), {} on the wire, scan {} ms ({} bytes read in {} ms), transfer {} ms{}{}",
                    r.round,
                    if r.final_round { "final" } else { "pre-copy" },
                    r.bytes,
                    r.bytes_carried,
                    r.wire_bytes,
                    r.scan_ms,
                    r.bytes_read,
                    r.scan_read_ms,
                    r.transfer_ms,
                    if r.partial {
                        format!(
                            " (partial: {} bytes changed under it, sent next round)",
                            r.bytes_dirty
                        )
                    } else {
                        String::new()
                    },
                    r.estimate_ms
                        .map(|e| format!(", final round estimated at {e} ms"))
                        .unwrap_or_default()
                ),
            ),
            Event::CutoverWarning(msg) | Event::NoHook(msg) => say(&bar, format!("warning: {msg}")),
            Event::FlushFailed(msg) => say(
                &bar,
                format!("warning: {msg}; the round reads what is on disk"),
            ),
            Event::HookStart(cmd) => say(&bar, format!("before-cutover: running `{cmd}`")),
            Event::HookDone(h) => say(
                &bar,
                if h.succeeded() {
                    format!(
                        "before-cutover: done in {:.1} s; one more pre-copy round",
                        h.seconds
                    )
                } else {
                    format!("before-cutover: {}", h.failure())
                },
            ),
            Event::WaitingForUnmount => say(
                &bar,
                format!(
                    "waiting for {volume} to be unmounted: stop the containers using it (docker stop)"
                ),
            ),
            Event::Unmounted => say(&bar, format!("{volume} unmounted and fenced; final round")),
            Event::Committed => say(&bar, format!("{to} owns {volume} now")),
        }
    });
    bar.finish_and_clear();
    if let Some(s) = &stream {
        s.finish();
    }
    if let Ok(r) = &result {
        crate::metrics::report::post(&args.control_socket, RunReport::of_migrate(r));
    }
    match result {
        Ok(_) if quiet && !json => ExitCode::SUCCESS,
        Ok(r) => super::finish_report::<_, String>(json, Ok(r), |r| r.render()),
        Err(e) => super::fail_code(json, &e, exit_of(&e)),
    }
}

/// A migration event on the `--json-progress` stream: bytes count against
/// the round (the `progress` events), the rest are events of their own.
fn stream_event(s: &JsonLines, ev: &Event) {
    use serde_json::json;
    match ev {
        Event::Preflight(c) => s.emit(
            "preflight",
            json!({ "profile": c.profile, "free_bytes": c.free_bytes, "resuming": c.resuming }),
        ),
        Event::RoundStart { round, final_round } => s.with(|t, now| {
            let mut out = t.begin(now, if *final_round { "final" } else { "pre-copy" }, 0);
            out.push(t.event(
                now,
                "round_start",
                json!({ "round": round, "final": final_round }),
            ));
            out
        }),
        Event::Bytes(b) => s.with(|t, now| t.advance(now, *b).into_iter().collect()),
        Event::RoundEnd(r) => s.with(|t, now| {
            let mut out: Vec<_> = t.flush(now).into_iter().collect();
            out.push(t.event(
                now,
                "round_end",
                serde_json::to_value(r).unwrap_or_default(),
            ));
            out
        }),
        Event::CutoverWarning(m) | Event::NoHook(m) => s.emit("warning", json!({ "message": m })),
        Event::FlushFailed(m) => s.emit(
            "warning",
            json!({ "message": format!("{m}; the round reads what is on disk") }),
        ),
        Event::HookStart(cmd) => s.emit("hook_start", json!({ "command": cmd })),
        Event::HookDone(h) => s.emit(
            "hook_done",
            json!({
                "ok": h.succeeded(),
                "seconds": h.seconds,
                "failure": (!h.succeeded()).then(|| h.failure()),
            }),
        ),
        Event::WaitingForUnmount => s.emit("waiting_for_unmount", json!({})),
        Event::Unmounted => s.emit("unmounted", json!({})),
        Event::Committed => s.emit("committed", json!({})),
    }
}

/// The exit code of a failed migration (see `super::exit`).
fn exit_of(e: &crate::migrate::orchestrate::MigrateError) -> u8 {
    use crate::migrate::orchestrate::MigrateError as E;
    match e {
        E::Daemon(c) => super::exit::of_client(c),
        E::Peer(_) | E::Push(_) | E::Reply(_) => super::exit::REMOTE,
        E::UnmountTimeout { .. } => super::exit::IN_USE,
        _ => super::exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: MigrateArgs,
    }

    #[test]
    fn flags_a_move_through_ebs_snapshots_would_ignore_are_refused_with_it() {
        let ebs = ["migrate", "v", "--via-ebs", "--to-zone", "us-east-1b"];
        assert!(Cli::try_parse_from(ebs).unwrap().a.via_ebs);
        for extra in [
            &["--max-downtime", "1s"][..],
            &["--stop-time", "3s"],
            &["--strict"],
            &["--before-cutover", "true"],
            &["--before-cutover-timeout", "5s"],
            &["--read-limit", "20M"],
            &["--first-round-read-limit", "20M"],
            &["--precopy-priority", "low"],
            &["--connect-timeout", "2s"],
        ] {
            let err = Cli::try_parse_from(ebs.iter().chain(extra))
                .err()
                .unwrap_or_else(|| panic!("{extra:?} accepted with --via-ebs"));
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{extra:?}"
            );
            // And each is taken by a move to an agent.
            let agent = ["migrate", "v", "--to", "host-b"];
            assert!(
                Cli::try_parse_from(agent.iter().chain(extra)).is_ok(),
                "{extra:?}"
            );
        }
    }
}
