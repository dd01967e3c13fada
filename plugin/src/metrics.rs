//! Prometheus metrics of the daemon (issue 13, item 8), in the text format
//! Prometheus scrapes (OpenMetrics, from the `prometheus-client` crate):
//! `GET /metrics` on the control socket, and on `--metrics-addr` when given
//! (see [`http`]).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `daffe_driver_requests_total` | `endpoint`, `result` | VolumeDriver calls (`Create`, `Mount`, ...) by outcome (`ok`, `invalid`, `not_found`, `conflict`, `timeout`, `failed`) |
//! | `daffe_driver_request_duration_seconds` | `endpoint` | their latency (histogram) |
//! | `daffe_control_requests_total` | `op`, `result` | control socket requests (the CLI, the agent) |
//! | `daffe_volumes` | `profile`, `state` | volumes by profile and state, read at each scrape |
//! | `daffe_volume_mounts` | | mounts over all volumes |
//! | `daffe_log_events_total` | `level` | warnings and errors the daemon logged |
//! | `daffe_migration_downtime_seconds` | | from the source's fence to the destination owning the volume (histogram) |
//! | `daffe_migration_last_downtime_seconds` | `volume` | the last move's downtime: the daemon's own figure (fence to moved), then the one `daffe migrate`'s report gives (unmount to owned), which arrives after it |
//! | `daffe_build_info` | `version` | always 1 |
//!
//! The mover's bytes and rounds are counted where they move: `daffe agent
//! --metrics-addr` serves the receiving side's:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `daffe_received_bytes_total` | `kind` | `scanned` (the data the sender's scan listed in the round's manifest), `fetched` (chunk data that crossed the link), `written` (applied to volumes) |
//! | `daffe_receive_rounds_total` | `result` | rounds received from peers: `ok`, `failed` |
//! | `daffe_receive_round_duration_seconds` | | their duration (histogram) |
//! | `daffe_agent_connections_total` | `result` | peer connections: `accepted`, or refused: `unauthenticated`, `busy`, `peer_busy`, `handshake_full` |
//! | `daffe_agent_connections_active` | | sessions open now |
//!
//! The EBS backend's EC2 calls (`daffe serve` on the EBS backend), counted
//! at the retry layer's edge (`backend/ebs/backend.rs`):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `daffe_aws_calls_total` | `operation`, `result` | every attempt: `ok`, or the error's kind (`throttled`, `transient`, `not_found`, `permanent`) |
//! | `daffe_aws_retries_total` | `operation` | attempts after the first |
//!
//! The short-lived commands (`daffe migrate`, `daffe sync`, `daffe snapshot
//! push/pull`) post their final report ([`run::RunReport`]) to the daemon ([`report`], `POST
//! /v1/reports` on the control socket), which counts it here:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `daffe_cli_runs_total` | `command` | reports received: `migrate`, `sync`, `snapshot_push`, `snapshot_pull` |
//! | `daffe_cli_bytes_total` | `command`, `kind` | `scanned` (the source as scanned), `fetched` (what crossed: chunk payload, EBS blocks), `written` (at the destination) |
//! | `daffe_cli_round_duration_seconds` | `command` | each round (a migration's pre-copy and final rounds; a sync or a snapshot transfer is one) (histogram) |
//! | `daffe_cli_aws_calls_total`, `daffe_cli_aws_retries_total` | `command` | the snapshot commands' EBS API calls (every attempt) and retries |
//!
//! One set per process ([`daemon`]): a daemon serves one store.

pub(crate) mod http;
pub(crate) mod report;
pub(crate) mod run;

use crate::service::VolumeView;
use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use run::RunReport;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    endpoint: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    profile: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Level {
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsCall {
    operation: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Volume {
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cmd {
    command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CmdKind {
    command: String,
    kind: String,
}

/// Round durations: 10 ms to ~22 min by doubling (a sync of an unchanged
/// tree is milliseconds; a first copy of a large volume, many minutes).
fn round_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

/// Latency buckets: 1 ms to ~33 s by doubling (a List is milliseconds; a
/// Create that runs mkfs or an EBS attach, tens of seconds).
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The daemon's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    driver_calls: Family<Call, Counter>,
    driver_seconds: Family<Endpoint, Histogram, fn() -> Histogram>,
    control_calls: Family<Op, Counter>,
    volumes: Family<VolumeLabels, Gauge>,
    mounts: Gauge,
    log_events: Family<Level, Counter>,
    downtime: Histogram,
    /// Each volume's last downtime, in seconds.
    last_downtime: Family<Volume, Gauge<f64, AtomicU64>>,
    /// The short-lived commands' reports (`report`).
    cli_runs: Family<Cmd, Counter>,
    cli_bytes: Family<CmdKind, Counter>,
    cli_round_seconds: Family<Cmd, Histogram, fn() -> Histogram>,
    cli_aws_calls: Family<Cmd, Counter>,
    cli_aws_retries: Family<Cmd, Counter>,
    /// When each volume was fenced (its downtime began), until it moved.
    fenced_at: Mutex<HashMap<String, Instant>>,
    /// Receiving side (the agent): bytes by kind, rounds' durations, peers.
    received_bytes: Family<Kind, Counter>,
    round_seconds: Histogram,
    rounds: Family<Outcome, Counter>,
    /// The agent's peer connections.
    connections: Family<Outcome, Counter>,
    connections_active: Gauge,
    /// EC2 calls by attempt, and retries.
    aws_calls: Family<AwsCall, Counter>,
    aws_retries: Family<Operation, Counter>,
}

impl Metrics {
    /// A fresh set, every metric registered at zero.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("daffe");
        let driver_calls = Family::<Call, Counter>::default();
        let driver_seconds =
            Family::<Endpoint, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        let control_calls = Family::<Op, Counter>::default();
        let volumes = Family::<VolumeLabels, Gauge>::default();
        let mounts = Gauge::default();
        let log_events = Family::<Level, Counter>::default();
        // 10 ms to ~164 s: a cutover is meant to take seconds.
        let downtime = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        let last_downtime = Family::<Volume, Gauge<f64, AtomicU64>>::default();
        let cli_runs = Family::<Cmd, Counter>::default();
        let cli_bytes = Family::<CmdKind, Counter>::default();
        let cli_round_seconds =
            Family::<Cmd, Histogram, fn() -> Histogram>::new_with_constructor(round_buckets);
        let cli_aws_calls = Family::<Cmd, Counter>::default();
        let cli_aws_retries = Family::<Cmd, Counter>::default();
        let received_bytes = Family::<Kind, Counter>::default();
        let round_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 18));
        let rounds = Family::<Outcome, Counter>::default();
        let connections = Family::<Outcome, Counter>::default();
        let connections_active = Gauge::default();
        let aws_calls = Family::<AwsCall, Counter>::default();
        let aws_retries = Family::<Operation, Counter>::default();
        registry.register(
            "driver_requests",
            "VolumeDriver calls by endpoint and result",
            driver_calls.clone(),
        );
        registry.register(
            "driver_request_duration_seconds",
            "VolumeDriver call latency by endpoint",
            driver_seconds.clone(),
        );
        registry.register(
            "control_requests",
            "Control socket requests by operation and result",
            control_calls.clone(),
        );
        registry.register("volumes", "Volumes by profile and state", volumes.clone());
        registry.register("volume_mounts", "Mounts over all volumes", mounts.clone());
        registry.register(
            "log_events",
            "Warnings and errors logged, by level",
            log_events.clone(),
        );
        registry.register(
            "migration_downtime_seconds",
            "Time from a migrating volume's fence to the destination owning it",
            downtime.clone(),
        );
        registry.register(
            "migration_last_downtime_seconds",
            "The last move's downtime, by volume",
            last_downtime.clone(),
        );
        registry.register(
            "cli_runs",
            "Reports of short-lived commands (migrate, sync, snapshot push/pull), by command",
            cli_runs.clone(),
        );
        registry.register(
            "cli_bytes",
            "Bytes the short-lived commands moved, by command and kind (scanned, fetched, written)",
            cli_bytes.clone(),
        );
        registry.register(
            "cli_round_duration_seconds",
            "Duration of the short-lived commands' rounds, by command",
            cli_round_seconds.clone(),
        );
        registry.register(
            "cli_aws_calls",
            "AWS API calls of the short-lived commands, every attempt, by command",
            cli_aws_calls.clone(),
        );
        registry.register(
            "cli_aws_retries",
            "AWS API retries of the short-lived commands, by command",
            cli_aws_retries.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes of received rounds by kind (scanned: data the round's manifest lists; fetched: chunk data on the wire; written: applied to volumes)",
            received_bytes.clone(),
        );
        registry.register(
            "receive_round_duration_seconds",
            "Duration of the rounds received from peers",
            round_seconds.clone(),
        );
        registry.register(
            "receive_rounds",
            "Rounds received from peers, by result",
            rounds.clone(),
        );
        registry.register(
            "agent_connections",
            "Peer connections to the agent: accepted, or refused and why",
            connections.clone(),
        );
        registry.register(
            "agent_connections_active",
            "Peer sessions open now",
            connections_active.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls, every attempt, by operation and result",
            aws_calls.clone(),
        );
        registry.register(
            "aws_retries",
            "AWS API attempts after the first, by operation",
            aws_retries.clone(),
        );
        registry.register(
            "build",
            "The running daffe",
            Info::new(Version {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        Self {
            registry,
            driver_calls,
            driver_seconds,
            control_calls,
            volumes,
            mounts,
            log_events,
            downtime,
            last_downtime,
            cli_runs,
            cli_bytes,
            cli_round_seconds,
            cli_aws_calls,
            cli_aws_retries,
            fenced_at: Mutex::default(),
            received_bytes,
            round_seconds,
            rounds,
            connections,
            connections_active,
            aws_calls,
            aws_retries,
        }
    }

    /// One VolumeDriver call answered with `status` after `elapsed`.
    pub(crate) fn driver_call(&self, endpoint: &str, status: StatusCode, elapsed: Duration) {
        self.driver_calls
            .get_or_create(&Call {
                endpoint: endpoint.to_owned(),
                result: result_of(status).to_owned(),
            })
            .inc();
        self.driver_seconds
            .get_or_create(&Endpoint {
                endpoint: endpoint.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One control request answered with `status`.
    pub(crate) fn control_call(&self, op: &str, status: StatusCode) {
        self.control_calls
            .get_or_create(&Op {
                op: op.to_owned(),
                result: result_of(status).to_owned(),
            })
            .inc();
    }

    /// A warning or error was logged (`level`: `WARN`, `ERROR`).
    pub(crate) fn log_event(&self, level: &str) {
        self.log_events
            .get_or_create(&Level {
                level: level.to_ascii_lowercase(),
            })
            .inc();
    }

    /// `volume` was fenced for its cutover: its downtime starts.
    pub(crate) fn fenced(&self, volume: &str, now: Instant) {
        self.fenced_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(volume.to_owned(), now);
    }

    /// `volume`'s move ended: moved (its downtime is observed) or called
    /// off (forgotten).
    pub(crate) fn move_ended(&self, volume: &str, moved: bool, now: Instant) {
        let began = self
            .fenced_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(volume);
        if let (true, Some(t)) = (moved, began) {
            let secs = now.saturating_duration_since(t).as_secs_f64();
            self.downtime.observe(secs);
            self.set_last_downtime(volume, secs);
        }
    }

    fn set_last_downtime(&self, volume: &str, secs: f64) {
        self.last_downtime
            .get_or_create(&Volume {
                volume: volume.to_owned(),
            })
            .set(secs);
    }

    /// A short-lived command's final report (checked by the caller with
    /// [`RunReport::check`]).
    pub(crate) fn run_report(&self, r: &RunReport) {
        let command = r.command.as_str().to_owned();
        let cmd = Cmd {
            command: command.clone(),
        };
        self.cli_runs.get_or_create(&cmd).inc();
        for (kind, n) in [
            ("scanned", r.bytes_scanned),
            ("fetched", r.bytes_fetched),
            ("written", r.bytes_written),
        ] {
            self.cli_bytes
                .get_or_create(&CmdKind {
                    command: command.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
        let rounds = self.cli_round_seconds.get_or_create(&cmd);
        for ms in &r.round_ms {
            rounds.observe(Duration::from_millis(*ms).as_secs_f64());
        }
        drop(rounds);
        if r.aws_calls > 0 || r.aws_retries > 0 {
            self.cli_aws_calls.get_or_create(&cmd).inc_by(r.aws_calls);
            self.cli_aws_retries
                .get_or_create(&cmd)
                .inc_by(r.aws_retries);
        }
        // The histogram has the daemon's own fence-to-moved figure; the
        // report's (unmount to owned, what the operator was shown) replaces
        // the last one.
        if let (Some(v), Some(ms)) = (&r.volume, r.downtime_ms) {
            self.set_last_downtime(v, Duration::from_millis(ms).as_secs_f64());
        }
    }

    /// The volume gauges, from the records as they are now.
    pub(crate) fn set_volumes(&self, views: &[VolumeView]) {
        self.volumes.clear();
        let mut mounts: u64 = 0;
        for v in views {
            self.volumes
                .get_or_create(&VolumeLabels {
                    profile: v.record.profile.clone(),
                    state: v.record.state.as_str().to_owned(),
                })
                .inc();
            mounts = mounts.saturating_add(v.mount_count);
        }
        self.mounts.set(i64::try_from(mounts).unwrap_or(i64::MAX));
    }

    /// A received round: its manifest listed `scanned` bytes of data,
    /// `fetched` bytes of chunk data came over the wire, `written` were
    /// applied, in `elapsed`.
    pub(crate) fn round_received(
        &self,
        scanned: u64,
        fetched: u64,
        written: u64,
        elapsed: Duration,
    ) {
        for (kind, n) in [
            ("scanned", scanned),
            ("fetched", fetched),
            ("written", written),
        ] {
            self.received_bytes
                .get_or_create(&Kind {
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
        self.round_seconds.observe(elapsed.as_secs_f64());
        self.round_ended(true);
    }

    /// A received round ended (`ok`: applied; else failed or refused).
    pub(crate) fn round_ended(&self, ok: bool) {
        self.rounds
            .get_or_create(&Outcome {
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// A peer connection accepted (`None`) or refused (`Some(why)`).
    pub(crate) fn connection(&self, refused: Option<&str>) {
        self.connections
            .get_or_create(&Outcome {
                result: refused.unwrap_or("accepted").to_owned(),
            })
            .inc();
        if refused.is_none() {
            self.connections_active.inc();
        }
    }

    /// An accepted peer session ended.
    pub(crate) fn connection_closed(&self) {
        self.connections_active.dec();
    }

    /// One attempt of the AWS call `operation`: `result` is `ok` or the
    /// error's kind.
    pub(crate) fn aws_attempt(&self, operation: &str, result: &str) {
        self.aws_calls
            .get_or_create(&AwsCall {
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// `n` retries of `operation` (attempts after its first).
    pub(crate) fn aws_retried(&self, operation: &str, n: u64) {
        if n > 0 {
            self.aws_retries
                .get_or_create(&Operation {
                    operation: operation.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// The metrics in the text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub(crate) fn daemon() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The `result` label of a reply's status.
pub(crate) fn result_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        400 => "invalid",
        403 => "forbidden",
        404 => "not_found",
        405 => "method",
        409 => "conflict",
        504 => "timeout",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` in `text`.
    pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok()).flatten()
        })
    }

    #[test]
    fn calls_count_by_endpoint_and_result_with_latency() {
        let m = Metrics::new();
        let ms = Duration::from_millis(3);
        m.driver_call("Create", StatusCode::OK, ms);
        m.driver_call("Create", StatusCode::OK, ms);
        m.driver_call("Mount", StatusCode::NOT_FOUND, ms);
        m.control_call("list volumes", StatusCode::OK);
        m.log_event("WARN");
        let t = m.render();
        let s = |series| sample(&t, series);
        assert_eq!(
            s(r#"daffe_driver_requests_total{endpoint="Create",result="ok"}"#),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            s(r#"daffe_driver_requests_total{endpoint="Mount",result="not_found"}"#),
            Some(1.0)
        );
        assert_eq!(
            s(r#"daffe_driver_request_duration_seconds_count{endpoint="Create"}"#),
            Some(2.0)
        );
        // 3 ms falls in the 4 ms bucket, not the 2 ms one.
        assert_eq!(
            s(r#"daffe_driver_request_duration_seconds_bucket{le="0.002",endpoint="Create"}"#),
            Some(0.0),
            "{t}"
        );
        assert_eq!(
            s(r#"daffe_driver_request_duration_seconds_bucket{le="0.004",endpoint="Create"}"#),
            Some(2.0)
        );
        assert_eq!(
            s(r#"daffe_control_requests_total{op="list volumes",result="ok"}"#),
            Some(1.0)
        );
        assert_eq!(s(r#"daffe_log_events_total{level="warn"}"#), Some(1.0));
        assert!(t.contains("daffe_build_info{version="), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn downtime_runs_from_fence_to_moved_and_an_abort_is_not_counted() {
        let m = Metrics::new();
        let t0 = Instant::now();
        m.fenced("a", t0);
        m.move_ended("a", true, t0 + Duration::from_millis(1500));
        m.fenced("b", t0);
        m.move_ended("b", false, t0 + Duration::from_secs(60));
        // Moved without a fence seen (the daemon restarted): no figure.
        m.move_ended("c", true, t0 + Duration::from_secs(60));
        let t = m.render();
        assert_eq!(
            sample(&t, "daffe_migration_downtime_seconds_count"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, "daffe_migration_downtime_seconds_sum"),
            Some(1.5)
        );
    }

    #[test]
    fn a_command_report_adds_its_figures_and_sets_the_last_downtime() {
        let m = Metrics::new();
        let t0 = Instant::now();
        m.fenced("db", t0);
        m.move_ended("db", true, t0 + Duration::from_millis(700));
        let s0 = m.render();
        assert_eq!(
            sample(&s0, r#"daffe_migration_last_downtime_seconds{volume="db"}"#),
            Some(0.7),
            "{s0}"
        );
        let r: RunReport = serde_json::from_value(serde_json::json!({
            "command": "migrate", "volume": "db", "bytes_scanned": 3000,
            "bytes_fetched": 1000, "bytes_written": 900, "round_ms": [1500, 500],
            "downtime_ms": 850,
        }))
        .unwrap();
        m.run_report(&r);
        m.run_report(&r);
        let push: RunReport = serde_json::from_value(serde_json::json!({
            "command": "snapshot_push", "bytes_scanned": 10, "bytes_fetched": 5,
            "round_ms": [40], "aws_calls": 12, "aws_retries": 2,
        }))
        .unwrap();
        m.run_report(&push);
        let t = m.render();
        let s = |series| sample(&t, series);
        assert_eq!(
            s(r#"daffe_cli_runs_total{command="migrate"}"#),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            s(r#"daffe_cli_bytes_total{command="migrate",kind="fetched"}"#),
            Some(2000.0)
        );
        assert_eq!(
            s(r#"daffe_cli_bytes_total{command="migrate",kind="scanned"}"#),
            Some(6000.0)
        );
        assert_eq!(
            s(r#"daffe_cli_bytes_total{command="migrate",kind="written"}"#),
            Some(1800.0)
        );
        assert_eq!(
            s(r#"daffe_cli_round_duration_seconds_count{command="migrate"}"#),
            Some(4.0)
        );
        assert_eq!(
            s(r#"daffe_cli_round_duration_seconds_sum{command="migrate"}"#),
            Some(4.0)
        );
        // The report's downtime replaces the daemon's own; the histogram
        // keeps one observation (the daemon's).
        assert_eq!(
            s(r#"daffe_migration_last_downtime_seconds{volume="db"}"#),
            Some(0.85)
        );
        assert_eq!(s("daffe_migration_downtime_seconds_count"), Some(1.0));
        assert_eq!(
            s(r#"daffe_cli_aws_calls_total{command="snapshot_push"}"#),
            Some(12.0)
        );
        assert_eq!(
            s(r#"daffe_cli_aws_retries_total{command="snapshot_push"}"#),
            Some(2.0)
        );
        // A command without AWS calls has no AWS series.
        assert!(
            !t.contains(r#"daffe_cli_aws_calls_total{command="migrate"}"#),
            "{t}"
        );
    }

    #[test]
    fn agent_connections_and_aws_calls_count_by_result() {
        let m = Metrics::new();
        m.connection(None);
        m.connection(None);
        m.connection(Some("unauthenticated"));
        m.connection_closed();
        m.aws_attempt("CreateVolume", "throttled");
        m.aws_attempt("CreateVolume", "ok");
        m.aws_retried("CreateVolume", 1);
        m.aws_retried("DescribeVolumes", 0);
        let t = m.render();
        let s = |series| sample(&t, series);
        assert_eq!(
            s(r#"daffe_agent_connections_total{result="accepted"}"#),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            s(r#"daffe_agent_connections_total{result="unauthenticated"}"#),
            Some(1.0)
        );
        assert_eq!(s("daffe_agent_connections_active"), Some(1.0), "{t}");
        assert_eq!(
            s(r#"daffe_aws_calls_total{operation="CreateVolume",result="ok"}"#),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            s(r#"daffe_aws_calls_total{operation="CreateVolume",result="throttled"}"#),
            Some(1.0)
        );
        assert_eq!(
            s(r#"daffe_aws_retries_total{operation="CreateVolume"}"#),
            Some(1.0)
        );
        // No retries: no series.
        assert!(!t.contains(r#"operation="DescribeVolumes""#), "{t}");
    }

    #[test]
    fn results_name_the_kind_of_failure() {
        assert_eq!(result_of(StatusCode::OK), "ok");
        assert_eq!(result_of(StatusCode::CONFLICT), "conflict");
        assert_eq!(result_of(StatusCode::GATEWAY_TIMEOUT), "timeout");
        assert_eq!(result_of(StatusCode::BAD_GATEWAY), "failed");
    }
}
