//! One module per `daffe` subcommand: its clap argument struct and its `run`.

pub mod agent;
pub mod cluster;
pub(crate) mod exit;
pub mod follow;
pub mod generate;
pub(crate) mod logging;
pub mod migrate;
pub(crate) mod migrate_ebs;
pub(crate) mod notify;
pub mod output;
pub mod placement;
pub(crate) mod placement_rtt;
pub mod profiles;
pub(crate) mod progress_json;
pub mod serve;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod volume;
pub(crate) mod volume_tracker;

use std::process::ExitCode;

/// Logs to stderr (see [`logging`]): `DAFFE_LOG` (or `RUST_LOG`) takes a
/// tracing filter, default `info` (`-q`/`-v` override it);
/// `DAFFE_LOG_FORMAT=json` for JSON lines. Idempotent.
pub(crate) fn init_logging() {
    logging::init(false);
}

/// Sets up what every command shares: the `-q`/`-v` flags and logging.
/// `main` calls it once, before the subcommand runs; `json_lines` is the
/// subcommand's `--json-progress`.
pub fn start(global: output::GlobalArgs, json_lines: bool) -> Result<(), ExitCode> {
    // clap checks a conflict between global flags only where both were
    // written (`daffe -q sync -v` passes it).
    if global.quiet && global.verbose > 0 {
        eprintln!("error: -q/--quiet and -v/--verbose cannot be used together");
        return Err(exit::code(exit::USAGE));
    }
    output::set(global);
    logging::init(json_lines);
    Ok(())
}

/// Prints an error as text on stderr, or as `{"error": ...}` on stdout with
/// `--json`; exit code 1.
pub(crate) fn fail(json: bool, msg: impl std::fmt::Display) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": msg.to_string() }));
    } else {
        eprintln!("daffe: {msg}");
    }
    logging::flush_sdk_note();
    ExitCode::FAILURE
}

/// Like [`fail`], with exit code `code` (see [`exit`]).
pub(crate) fn fail_code(json: bool, msg: impl std::fmt::Display, code: u8) -> ExitCode {
    let _ = fail(json, msg);
    exit::code(code)
}

/// A failed call to the daemon: not found, in use, unreachable each get
/// their exit code.
pub(crate) fn fail_client(json: bool, e: &crate::control::ClientError) -> ExitCode {
    fail_code(json, e, exit::of_client(e))
}

/// Prints a JSON value, pretty.
pub(crate) fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Ends a command that produces a report: the report as JSON or rendered
/// text, or the error.
pub(crate) fn finish_report<R: serde::Serialize, E: std::fmt::Display>(
    json: bool,
    result: Result<R, E>,
    render: impl FnOnce(&R) -> String,
) -> ExitCode {
    match result {
        Ok(report) => {
            if json {
                print_json(&serde_json::to_value(&report).unwrap_or_default());
            } else {
                print!("{}", render(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(json, e),
    }
}
