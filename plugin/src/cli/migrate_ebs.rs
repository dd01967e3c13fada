//! `daffe migrate VOLUME --via-ebs --to-zone ZONE`: the CLI side of
//! `crate::migrate::ebs`. Run it on the host whose daemon serves the volume.
//!
//! AWS region, endpoint and the block-index state dir default to the
//! daemon's `[aws]` config (from the volume's facts), so the snapshots are
//! pushed where the daemon will look for them; flags override.

use super::progress_json::JsonLines;
use crate::aws::ec2_sdk::SdkEc2;
use crate::control::ControlClient;
use crate::migrate::duration;
use crate::migrate::ebs::{
    DEFAULT_KEEP_SNAPSHOTS, DEFAULT_MAX_ROUNDS, DaemonSteps, EbsEvent, EbsMigrateOptions, EbsSteps,
    SMALL_ROUND_BLOCKS, cleanup_line, migrate_ebs,
};
use crate::migrate::ebs_snapshots::{
    AwsPusher, CLUSTER_TAG, Ec2Cleaner, MIGRATION_TAG, SOURCE_TAG,
};
use clap::Args;
use mover::aws::AwsOptions;
use mover::clock::SystemClock;
use mover::progress::NoProgress;
use mover::retry::{Retrier, RetryPolicy};
use mover::snapshot::aws::AwsSnapshotApi;
use mover::snapshot::{IndexStore, PushOptions, TransferOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `--via-ebs` options (ignored without it).
#[derive(Debug, Args)]
pub(crate) struct EbsArgs {
    /// With --via-ebs: AWS region (default: the daemon's `[aws]` region).
    #[arg(long, requires = "via_ebs")]
    pub(crate) region: Option<String>,
    /// With --via-ebs: endpoint URL for EBS (default: the daemon's).
    #[arg(long, requires = "via_ebs")]
    pub(crate) endpoint_url: Option<String>,
    /// With --via-ebs: where snapshot block indexes are kept (default: the
    /// daemon's `snapshot_state_dir`). Old spelling: --state-dir.
    #[arg(
        long = "index-dir",
        alias = "state-dir",
        value_name = "DIR",
        requires = "via_ebs",
        env = "DAFFE_SNAPSHOT_STATE_DIR"
    )]
    pub(crate) state_dir: Option<PathBuf>,
    /// With --via-ebs: after a move, keep the N newest snapshots daffe
    /// migrations made of this volume (this move's final one first);
    /// the rest, and every other snapshot this move pushed, are deleted.
    /// Default 0: the source volume stays (marked moved) until `docker
    /// volume rm`, and it, not a snapshot, is the way back.
    #[arg(
        long,
        value_name = "N",
        requires = "via_ebs",
        env = "DAFFE_KEEP_SNAPSHOTS",
        default_value_t = DEFAULT_KEEP_SNAPSHOTS
    )]
    pub(crate) keep_snapshots: u32,
}

/// Pause between fence attempts while the containers are still running.
const FENCE_POLL: Duration = Duration::from_millis(200);

/// What `daffe migrate --via-ebs` was asked (from `MigrateArgs`).
#[derive(Debug)]
pub(crate) struct ViaEbs<'a> {
    pub(crate) volume: &'a str,
    pub(crate) to_zone: &'a str,
    pub(crate) max_rounds: Option<u32>,
    pub(crate) unmount_timeout: &'a str,
    pub(crate) json: bool,
    pub(crate) json_progress: bool,
    pub(crate) control_socket: &'a Path,
    pub(crate) ebs: &'a EbsArgs,
}

pub(crate) fn run(args: &ViaEbs<'_>) -> ExitCode {
    super::init_logging();
    let json = args.json;
    let zone = args.to_zone.to_owned();
    let unmount_timeout = match duration::parse(args.unmount_timeout) {
        Ok(d) => d,
        Err(e) => return super::fail(json, e),
    };
    let steps = DaemonSteps {
        daemon: ControlClient::new(args.control_socket),
        volume: args.volume.to_owned(),
    };
    // The daemon's AWS side, for the pushes' defaults.
    let facts = match steps.facts() {
        Ok(f) => f,
        Err(e) => return super::fail(json, format!("{}: {e}", args.volume)),
    };
    let aws = AwsOptions::default()
        .with_region(args.ebs.region.clone().or(facts.aws.region.clone()))
        .with_endpoint_url(
            args.ebs
                .endpoint_url
                .clone()
                .or(facts.aws.endpoint_url.clone()),
        );
    let api = match AwsSnapshotApi::connect(&aws) {
        Ok(a) => a,
        Err(e) => return super::fail(json, e),
    };
    // EC2, for deleting the migration's snapshots when it is done.
    let ec2 = match SdkEc2::connect(&aws) {
        Ok(c) => c,
        Err(e) => return super::fail(json, e),
    };
    let retrier = Retrier::new(RetryPolicy::default(), &SystemClock);
    let cleaner = Ec2Cleaner {
        ec2: &ec2,
        retrier: &retrier,
        source: tag_value(&facts.docker_name),
        cluster: tag_value(&facts.aws.cluster),
    };
    // Unique per run: the source volume and the start, to the millisecond.
    let migration_id = format!(
        "{}-{}",
        facts.volume_id,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let state_dir = args
        .ebs
        .state_dir
        .clone()
        .unwrap_or_else(|| facts.aws.snapshot_state_dir.clone());
    let mut pusher = AwsPusher {
        api,
        store: IndexStore::new(&state_dir),
        opts: PushOptions::default()
            .with_description(Some(format!("daffe migrate {} to {zone}", args.volume)))
            // What the cleanup checks before it deletes one.
            .with_tags(vec![
                (SOURCE_TAG.into(), cleaner.source.clone()),
                (CLUSTER_TAG.into(), cleaner.cluster.clone()),
                (MIGRATION_TAG.into(), migration_id.clone()),
            ])
            // Children inherit the parent's encryption; the full round is
            // encrypted like the volume (AWS's default key unless named).
            .with_encrypted(facts.encrypted)
            .with_kms_key_arn(facts.kms_key_id.clone())
            .with_transfer(TransferOptions::default()),
        progress: &NoProgress,
    };
    let opts = EbsMigrateOptions {
        volume: args.volume.to_owned(),
        migration_id,
        keep_snapshots: args.ebs.keep_snapshots,
        to_zone: zone.clone(),
        max_rounds: args.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS).max(1),
        small_round_blocks: SMALL_ROUND_BLOCKS,
        unmount_timeout,
        fence_poll: FENCE_POLL,
    };
    let volume = args.volume.to_owned();
    // Progress lines go to stderr whether or not it is a terminal: the
    // operator acts on "waiting for ... unmounted". `-q` drops them;
    // `--json-progress` streams them as JSON events instead.
    let quiet = super::output::quiet();
    let stream = args
        .json_progress
        .then(|| JsonLines::new("migrate", "blocks"));
    let say = |event: &str, fields: serde_json::Value, line: String| match &stream {
        Some(s) => s.emit(event, fields),
        None if quiet => {}
        None => eprintln!("{line}"),
    };
    use serde_json::json;
    let result = migrate_ebs(&steps, &mut pusher, &cleaner, &opts, &mut |ev| match ev {
        EbsEvent::Preflight(f) => say(
            "preflight",
            json!({ "volume_id": f.volume_id, "zone": f.zone, "size_gib": f.size_gib, "to_zone": zone }),
            format!(
                "{volume}: EBS volume {} in {}, {} GiB; moving to {zone}",
                f.volume_id, f.zone, f.size_gib
            ),
        ),
        EbsEvent::RoundStart { round, final_round } => say(
            "round_start",
            json!({ "round": round, "final": final_round }),
            format!(
                "round {round} ({}): pushing a snapshot",
                if final_round { "final" } else { "pre-copy" }
            ),
        ),
        EbsEvent::RoundEnd(r) => say(
            "round_end",
            serde_json::to_value(r).unwrap_or_default(),
            r.line(),
        ),
        EbsEvent::NoPreCopy => say(
            "no_pre_copy",
            json!({}),
            format!("{volume} is not attached here (not mounted): no pre-copy, one final round"),
        ),
        EbsEvent::WaitingForUnmount => say(
            "waiting_for_unmount",
            json!({}),
            format!(
                "waiting for {volume} to be unmounted: stop the containers using it (docker stop)"
            ),
        ),
        EbsEvent::Fenced => say(
            "unmounted",
            json!({}),
            format!("{volume} fenced (Mount refused); final round"),
        ),
        EbsEvent::Copied { volume_id } => say(
            "copied",
            json!({ "volume_id": volume_id, "zone": zone }),
            format!("{volume_id} created in {zone}"),
        ),
        EbsEvent::Cleaned(c) => {
            say(
                "snapshots",
                serde_json::to_value(c).unwrap_or_default(),
                cleanup_line(c),
            );
            // Warnings reach stderr even with -q: a snapshot left bills.
            if stream.is_none() {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
            }
        }
    });
    if quiet && !json && result.is_ok() {
        return ExitCode::SUCCESS;
    }
    super::finish_report(json, result, |r| r.render())
}

/// AWS tag values are at most 256 characters.
fn tag_value(s: &str) -> String {
    s.chars().take(256).collect()
}
