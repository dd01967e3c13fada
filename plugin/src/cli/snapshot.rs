//! `daffe snapshot push|pull`: EBS snapshots of an image file or block device,
//! full or incremental, through the mover's snapshot target.
//!
//! Block indexes live in `--state-dir` (default /var/lib/daffe/snapshots): an
//! incremental push needs its parent's index there, an incremental pull both
//! indexes. Credentials and region come from the standard AWS chain;
//! `--region` and `--endpoint-url` override them.

use super::progress_json::JsonLines;
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::metrics::report::RunReport;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mover::aws::AwsOptions;
use mover::progress::{BlockProgress, NoProgress};
use mover::retry::RetryPolicy;
use mover::snapshot::aws::AwsSnapshotApi;
use mover::snapshot::{
    DEFAULT_STATE_DIR, IndexStore, PullOptions, PushOptions, TransferOptions, pull, push,
};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Push an image or device to an EBS snapshot, or pull a snapshot back.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub(crate) command: SnapshotCommand,
}

impl SnapshotArgs {
    /// `--json-progress` was given.
    pub fn json_progress(&self) -> bool {
        match &self.command {
            SnapshotCommand::Push(a) => a.common.json_progress,
            SnapshotCommand::Pull(a) => a.common.json_progress,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Upload SOURCE (an image file or block device) as a new EBS snapshot.
    /// With --parent, only the blocks changed since the parent are sent.
    Push(PushArgs),
    /// Restore snapshot SNAP into DEST (an image file or block device), every
    /// block verified. With --base, DEST holds BASE and only changed blocks are written.
    Pull(PullArgs),
}

/// Options shared by push and pull.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// Where block indexes are kept. Old spelling: --state-dir (which
    /// elsewhere means a sync destination's state).
    #[arg(long = "index-dir", alias = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "DAFFE_SNAPSHOT_STATE_DIR")]
    pub(crate) state_dir: PathBuf,
    /// Print a JSON report (or a JSON error) on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Stream progress (blocks per phase) on stderr as JSON, one object per
    /// line (README, "Progress for scripts"); stdout is unchanged.
    #[arg(long)]
    pub(crate) json_progress: bool,
    /// AWS region (default: the standard AWS chain).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Endpoint URL for EBS (e.g. a moto server).
    #[arg(long)]
    pub(crate) endpoint_url: Option<String>,
    /// Block requests in flight at once.
    #[arg(long, default_value_t = mover::snapshot::DEFAULT_CONCURRENCY)]
    pub(crate) concurrency: usize,
    /// Cap on block requests per second (AWS allows about 1000 per snapshot).
    #[arg(long, default_value_t = mover::snapshot::DEFAULT_REQUESTS_PER_SEC)]
    pub(crate) max_rate: u32,
    /// Attempts per request before giving up on throttling or server errors.
    #[arg(long, default_value_t = mover::retry::DEFAULT_MAX_ATTEMPTS)]
    pub(crate) max_attempts: u32,
    /// The local daemon's control socket: the run's figures (bytes, AWS
    /// calls and retries) go to its metrics (nothing happens when no daemon
    /// runs here).
    #[arg(long, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// Image file or block device.
    pub(crate) source: PathBuf,
    /// Parent snapshot: send only what changed since it (its index must be in --state-dir).
    #[arg(long, value_name = "SNAP")]
    pub(crate) parent: Option<String>,
    /// Encrypt the snapshot (not with --parent: a child inherits its parent's encryption).
    #[arg(long)]
    pub(crate) encrypted: bool,
    /// KMS key for --encrypted.
    #[arg(long)]
    pub(crate) kms_key_arn: Option<String>,
    /// Snapshot description.
    #[arg(long)]
    pub(crate) description: Option<String>,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// Snapshot to restore.
    #[arg(value_name = "SNAP")]
    pub(crate) snapshot: String,
    /// Image file (created if missing) or block device.
    pub(crate) dest: PathBuf,
    /// Snapshot DEST holds now: write only the blocks that differ.
    #[arg(long, value_name = "SNAP")]
    pub(crate) base: Option<String>,
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Runs `daffe snapshot ...`.
pub fn run(args: SnapshotArgs) -> ExitCode {
    super::init_logging();
    match args.command {
        SnapshotCommand::Push(a) => run_push(a),
        SnapshotCommand::Pull(a) => run_pull(a),
    }
}

/// A failure, as printed.
#[derive(Debug, Serialize)]
struct Failure {
    error: String,
    snapshot_id: Option<String>,
    aws_code: Option<String>,
}

impl Failure {
    fn new(error: String, snapshot_id: Option<&str>, aws_code: Option<&str>) -> Self {
        Self {
            error,
            snapshot_id: snapshot_id.map(str::to_owned),
            aws_code: aws_code.map(str::to_owned),
        }
    }
}

/// Ends a push or pull: its report (JSON, or `text` of it), or the failure
/// with the snapshot id and AWS code it carries.
fn finish<R: Serialize, E>(
    json: bool,
    result: Result<R, E>,
    failure: impl FnOnce(&E) -> Failure,
    text: impl FnOnce(&R) -> String,
) -> ExitCode {
    match result {
        Ok(r) if json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let line = text(&r);
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(json, failure(&e)),
    }
}

fn fail(json: bool, f: Failure) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string(&f).unwrap_or_else(|_| f.error.clone())
        );
    } else {
        eprintln!("daffe snapshot: {}", f.error);
    }
    super::logging::flush_sdk_note();
    ExitCode::FAILURE
}

fn connect(c: &CommonArgs) -> Result<AwsSnapshotApi, Failure> {
    AwsSnapshotApi::connect(
        &AwsOptions::default()
            .with_region(c.region.clone())
            .with_endpoint_url(c.endpoint_url.clone()),
    )
    .map_err(|e| Failure::new(e.to_string(), None, None))
}

fn transfer(c: &CommonArgs) -> TransferOptions {
    TransferOptions::default()
        .with_concurrency(c.concurrency)
        .with_requests_per_sec(c.max_rate)
        .with_retry(RetryPolicy::default().with_max_attempts(c.max_attempts.max(1)))
}

/// Progress: a bar on stderr, shown only on a terminal and without --json
/// or -q; or the `--json-progress` stream.
struct Bar(Option<ProgressBar>, Option<JsonLines>);

impl Bar {
    fn new(c: &CommonArgs, command: &'static str) -> Self {
        if c.json_progress {
            return Self(None, Some(JsonLines::new(command, "blocks")));
        }
        let shown = !c.json && !super::output::quiet() && std::io::stderr().is_terminal();
        Self(shown.then(ProgressBar::hidden), None)
    }
    fn sink(&self) -> &dyn BlockProgress {
        match (&self.0, &self.1) {
            (_, Some(stream)) => stream,
            (Some(_), None) => self,
            (None, None) => &NoProgress,
        }
    }
}

impl BlockProgress for Bar {
    fn begin(&self, phase: &str, total: u64) {
        if let Some(pb) = &self.0 {
            pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            pb.set_length(total);
            pb.set_position(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} blocks ({per_sec}, {eta})",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb.set_message(phase.to_owned());
        }
    }
    fn advance(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
        }
    }
    fn end(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

fn run_push(a: PushArgs) -> ExitCode {
    let json = a.common.json;
    let api = match connect(&a.common) {
        Ok(api) => api,
        Err(f) => return fail(json, f),
    };
    let opts = PushOptions::default()
        .with_parent(a.parent)
        .with_encrypted(a.encrypted)
        .with_kms_key_arn(a.kms_key_arn)
        .with_description(a.description)
        // AWS tag values are at most 256 characters.
        .with_tags(vec![(
            "daffe:source".into(),
            a.source.display().to_string().chars().take(256).collect(),
        )])
        .with_transfer(transfer(&a.common));
    let bar = Bar::new(&a.common, "snapshot-push");
    let store = IndexStore::new(&a.common.state_dir);
    let quiet = super::output::quiet();
    let result = push(&api, &store, &a.source, &opts, bar.sink());
    if let Ok(r) = &result {
        crate::metrics::report::post(&a.common.control_socket, RunReport::of_push(r));
    }
    finish(
        json,
        result,
        |e| Failure::new(e.to_string(), e.snapshot_id(), e.aws_code()),
        |r| {
            if quiet {
                // The one thing a script needs, as `docker ... -q` prints ids.
                return r.snapshot_id.clone();
            }
            format!(
                "{}: {} blocks uploaded ({} zero), {} skipped, {} MiB in {:.1} s, {} retries",
                r.snapshot_id,
                r.blocks_uploaded,
                r.zero_blocks_uploaded,
                r.blocks_skipped,
                r.bytes_uploaded >> 20,
                r.duration_secs,
                r.retries
            )
        },
    )
}

fn run_pull(a: PullArgs) -> ExitCode {
    let json = a.common.json;
    let api = match connect(&a.common) {
        Ok(api) => api,
        Err(f) => return fail(json, f),
    };
    let opts = PullOptions::default()
        .with_base(a.base)
        .with_transfer(transfer(&a.common));
    let bar = Bar::new(&a.common, "snapshot-pull");
    let store = IndexStore::new(&a.common.state_dir);
    let quiet = super::output::quiet();
    let result = pull(&api, &store, &a.snapshot, &a.dest, &opts, bar.sink());
    if let Ok(r) = &result {
        crate::metrics::report::post(&a.common.control_socket, RunReport::of_pull(r));
    }
    finish(
        json,
        result,
        |e| Failure::new(e.to_string(), e.snapshot_id(), e.aws_code()),
        |r| {
            if quiet {
                return String::new();
            }
            format!(
                "{} -> {}: {} blocks written, {} zeroed, {} MiB in {:.1} s, {} retries",
                r.snapshot_id,
                a.dest.display(),
                r.blocks_written,
                r.blocks_zeroed,
                r.bytes_written >> 20,
                r.duration_secs,
                r.retries
            )
        },
    )
}
