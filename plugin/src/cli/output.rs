//! The flags every `daffe` command takes about how much it says (issue 13,
//! item 12): `-q/--quiet` (no progress, errors only) and `-v/--verbose`
//! (repeatable: more log detail). `main` parses them once and hands them to
//! [`set`]; commands read them with [`quiet`] and logging with [`log_filter`].
//!
//! What `-q` keeps: errors, and what a command was asked to print (`--json`
//! output, the answer of a query such as `status` or `volume inspect`).
//! What it drops: progress bars, log lines below ERROR, warnings, and the
//! one-line summary of a command that acts (sync, migrate, snapshot pull).
//! `volume ls -q` prints the names only and `snapshot push -q` the new
//! snapshot's id only, as `docker ... -q` prints ids.

use clap::{ArgAction, Args};
use std::sync::OnceLock;

/// `-q` and `-v`, accepted before or after any subcommand.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct GlobalArgs {
    /// No progress, no warnings or summaries: errors only (and --json output,
    /// or a query's answer). `volume ls -q` prints names only; `snapshot push
    /// -q` the snapshot id only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log detail on stderr: -v debug for daffe's own modules, -vv debug
    /// for everything, -vvv trace. Overrides DAFFE_LOG.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

static GLOBAL: OnceLock<GlobalArgs> = OnceLock::new();

/// Records the flags for the rest of the process (the first call wins).
pub fn set(args: GlobalArgs) {
    let _ = GLOBAL.set(args);
}

fn get() -> GlobalArgs {
    GLOBAL.get().copied().unwrap_or_default()
}

/// `-q` was given.
pub(crate) fn quiet() -> bool {
    get().quiet
}

/// Daffe's own crates, for `-v` (their tracing targets).
const OWN_CRATES: [&str; 5] = ["daffe_plugin", "mover", "profiles", "placement", "cluster"];

/// The tracing filter for `flags` and the `DAFFE_LOG`/`RUST_LOG` value
/// `env` (pure): a flag overrides the environment, which overrides `info`.
pub(crate) fn log_filter(flags: GlobalArgs, env: Option<&str>) -> String {
    match (flags.quiet, flags.verbose) {
        (true, _) => "error".into(),
        (false, 0) => env.map_or_else(|| "info".into(), str::to_owned),
        (false, 1) => std::iter::once("info".to_owned())
            .chain(OWN_CRATES.iter().map(|c| format!("{c}=debug")))
            .collect::<Vec<_>>()
            .join(","),
        (false, 2) => "debug".into(),
        (false, _) => "trace".into(),
    }
}

/// The filter for this process (see [`log_filter`]).
pub(crate) fn process_log_filter() -> String {
    let env = std::env::var("DAFFE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    log_filter(get(), env.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        g: GlobalArgs,
        #[command(subcommand)]
        sub: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Run {
            #[arg(long)]
            json: bool,
        },
    }

    fn parse(args: &[&str]) -> Result<GlobalArgs, clap::Error> {
        Cli::try_parse_from(args).map(|c| c.g)
    }

    #[test]
    fn flags_go_before_or_after_the_subcommand() {
        assert!(parse(&["d", "-q", "run"]).unwrap().quiet);
        assert!(parse(&["d", "run", "--quiet"]).unwrap().quiet);
        assert_eq!(parse(&["d", "run", "-vv"]).unwrap().verbose, 2);
        // Given on both sides, clap keeps the count of the last place (its
        // global flags are not summed): write -vv in one place.
        assert!(parse(&["d", "-v", "run", "-v"]).unwrap().verbose >= 1);
        // Quiet and verbose at once is a usage error (exit code 2): clap
        // sees it where both are written in one place; across places it
        // lets both through and `cli::start` refuses them (e2e test
        // `operator_progress`).
        assert_eq!(parse(&["d", "run", "-q", "-v"]).unwrap_err().exit_code(), 2);
        let both = parse(&["d", "-q", "run", "-v"]).unwrap();
        assert!(both.quiet && both.verbose == 1);
    }

    #[test]
    fn a_flag_overrides_daffe_log() {
        let f = |quiet, verbose| GlobalArgs { quiet, verbose };
        assert_eq!(log_filter(f(false, 0), None), "info");
        assert_eq!(log_filter(f(false, 0), Some("warn")), "warn");
        assert_eq!(log_filter(f(true, 0), Some("debug")), "error");
        let v = log_filter(f(false, 1), Some("warn"));
        assert!(v.starts_with("info,") && v.contains("mover=debug"), "{v}");
        assert!(v.contains("daffe_plugin=debug"), "{v}");
        assert!(!v.contains("aws"), "{v}");
        assert_eq!(log_filter(f(false, 2), None), "debug");
        assert_eq!(log_filter(f(false, 7), None), "trace");
        // Every filter parses as tracing's EnvFilter.
        for v in 0..4 {
            let s = log_filter(f(false, v), None);
            assert!(tracing_subscriber::EnvFilter::try_new(&s).is_ok(), "{s}");
        }
    }
}
