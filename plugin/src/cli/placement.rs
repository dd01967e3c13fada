//! `daffe placement observe|advise|simulate|forward`: follow the clients.
//! Thin glue over the `placement` crate: flags to values, files in and
//! out, reports printed (text or `--json`).
//!
//! - `observe` reads a service's access log (once, or `--follow` alongside
//!   the daemon), places each client through an `.mmdb`, and keeps decayed
//!   rates per region in a state file.
//! - `advise SERVICE` reads that state: best region now, latency there and
//!   here, the cost of a move, and the rule's decision.
//! - `simulate` runs a scenario's circadian day(s) through four policies
//!   and writes SVG plots.
//! - `forward` relays the old node's port to the new node for a grace
//!   period after a move.
//! - `where SERVICE` says which node (address, region) a Swarm service's
//!   task is on now.

use crate::migrate::duration;
use clap::{Args, Subcommand, ValueEnum};
use placement::cost::{self, MigrateReport, MoveEstimate, MoveModel};
use placement::geo::{Locator, MmdbLocator, UNKNOWN};
use placement::logline::LogFormat;
use placement::rates::DemandConfig;
use placement::rtt::RttTable;
use placement::rule::RuleConfig;
use placement::scenario::Scenario;
use placement::state::{self, ServiceState};
use placement::tail::Follower;
use placement::{advise, forward, plot, sim};
use profiles::ByteSize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where `observe` keeps one JSON file per service.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/daffe/placement";

#[derive(Debug, Args)]
pub struct PlacementArgs {
    #[command(subcommand)]
    pub(crate) command: PlacementCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PlacementCommand {
    /// Read a service's access log and keep request rates per client region.
    Observe(ObserveArgs),
    /// Best region for a service now, latency there and here, and whether
    /// a move pays (from `observe`'s state).
    Advise(AdviseArgs),
    /// Simulate a scenario's day(s): static site, follow-the-sun, daffe's
    /// rule and the offline optimum; a table and SVG plots.
    Simulate(SimulateArgs),
    /// After a move: relay the old address to the new node for a grace
    /// period, then refuse new connections and let open ones finish.
    Forward(ForwardArgs),
    /// Where a service runs now: node, address, region (for a DNS or
    /// load-balancer updater); a Swarm service, or two-host mode's
    /// container (--host).
    Where(WhereArgs),
    /// Measure round trips from this node to other nodes' agents and add
    /// them to an RTT table file (for --rtt).
    Rtt(super::placement_rtt::RttArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// nginx/Apache combined (or common) log format.
    Combined,
    /// One JSON object per line (see --ip-field, --region-field, --time-field).
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct TableArgs {
    /// An RTT table laid over the built-in one (TOML: `regions` + `p50_ms`
    /// [+ `p90_ms`] matrices, `[[pair]]` entries, `[coords]`).
    #[arg(long, value_name = "FILE")]
    pub(crate) rtt: Option<PathBuf>,
}

impl TableArgs {
    pub(crate) fn table(&self) -> Result<RttTable, String> {
        let mut t = RttTable::builtin().map_err(|e| e.to_string())?;
        if let Some(p) = &self.rtt {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            t.overlay(&text)
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(t)
    }
}

#[derive(Debug, Args)]
pub(crate) struct ObserveArgs {
    /// The service the log belongs to (names the state file).
    #[arg(long)]
    pub(crate) service: String,
    /// The access log.
    #[arg(long, value_name = "FILE")]
    pub(crate) log: PathBuf,
    /// The log's line format.
    #[arg(long, value_enum, default_value = "combined")]
    pub(crate) format: Format,
    /// JSON: field with the client IP (dotted path for nested objects).
    #[arg(long, default_value = "remote_addr")]
    pub(crate) ip_field: String,
    /// JSON: field with the client's region (used when present).
    #[arg(long)]
    pub(crate) region_field: Option<String>,
    /// JSON: field with the request time (Unix seconds/ms or RFC 3339);
    /// without it, the time the line is read.
    #[arg(long)]
    pub(crate) time_field: Option<String>,
    /// MaxMind-format database (GeoIP2/GeoLite2 City or Country, or one
    /// with a `cloud_region` field) to place client IPs.
    #[arg(long, value_name = "FILE")]
    pub(crate) mmdb: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) table: TableArgs,
    /// Directory of the state files (SERVICE.json). Old spelling: --state-dir.
    #[arg(long = "placement-dir", alias = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    /// Keep following the log as it grows (rotation and truncation
    /// handled) until SIGINT/SIGTERM; the state is saved periodically.
    #[arg(long)]
    pub(crate) follow: bool,
    /// How often to look for new lines when following.
    #[arg(long, default_value = "1s")]
    pub(crate) poll: String,
    /// How often to save the state when following.
    #[arg(long, default_value = "10s")]
    pub(crate) save_every: String,
    /// Half-life of the "now" rates.
    #[arg(long, default_value = "10m")]
    pub(crate) half_life: String,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Places nothing: a log whose clients are named by region needs no
/// database, and an IP log without one is refused before this is used.
struct NoLocator;
impl Locator for NoLocator {
    fn locate(&mut self, _: IpAddr) -> String {
        UNKNOWN.into()
    }
}

pub(crate) fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn state_path(dir: &Path, service: &str) -> Result<PathBuf, String> {
    let ok = !service.is_empty()
        && service.len() <= 128
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !service.starts_with('.');
    if !ok {
        return Err(format!(
            "service name {service:?}: letters, digits, '_', '-', '.' (not first), at most 128"
        ));
    }
    Ok(dir.join(format!("{service}.json")))
}

fn observe_summary(s: &ServiceState, at: f64) -> serde_json::Value {
    serde_json::json!({
        "service": s.service,
        "lines": s.counters.lines,
        "malformed": s.counters.malformed,
        "unknown": s.counters.unknown,
        "requests_by_region": s.counters.by_region,
        "rates_now": s.demand.now.rates(at),
        "last_request": s.last_request,
        "profile_complete": s.demand.profile.complete(),
    })
}

fn observe(a: ObserveArgs) -> Result<serde_json::Value, String> {
    let dur = |s: &str| duration::parse(s).map_err(|e| e.to_string());
    let (poll, save_every, half_life) = (dur(&a.poll)?, dur(&a.save_every)?, dur(&a.half_life)?);
    let format = match a.format {
        Format::Combined => LogFormat::Combined,
        Format::Json => LogFormat::Json {
            ip_field: Some(a.ip_field.clone()),
            region_field: a.region_field.clone(),
            time_field: a.time_field.clone(),
        },
    };
    let needs_ip = a.region_field.is_none() || matches!(a.format, Format::Combined);
    let table = a.table.table()?;
    let mut locator: Box<dyn Locator> = match &a.mmdb {
        Some(p) => Box::new(MmdbLocator::open(p, table).map_err(|e| e.to_string())?),
        None if needs_ip => {
            return Err("client IPs need --mmdb (a MaxMind-format database) to be placed".into());
        }
        None => Box::new(NoLocator),
    };
    let path = state_path(&a.state_dir, &a.service)?;
    let cfg = DemandConfig {
        half_life_s: half_life.as_secs_f64(),
        ..DemandConfig::default()
    };
    let mut st = state::load(&path, &a.service)
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| ServiceState::new(&a.service, &cfg));
    // The flag holds for this run even on an older state.
    st.demand.now.half_life_s = cfg.half_life_s.max(1.0);
    let mut tail = Follower::new(&a.log, st.position);
    let mut pass = |st: &mut ServiceState| -> Result<usize, String> {
        let got = tail.poll().map_err(|e| e.to_string())?;
        let now = now_s();
        for line in &got.lines {
            st.ingest(&format, line, locator.as_mut(), now);
        }
        st.counters.lines += got.overlong;
        st.counters.malformed += got.overlong;
        st.position = tail.position();
        Ok(got.lines.len())
    };
    if !a.follow {
        while pass(&mut st)? > 0 {}
        state::save(&path, &st).map_err(|e| e.to_string())?;
        return Ok(observe_summary(&st, st.last_request.max(0.0)));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let mut last_save = std::time::Instant::now();
        loop {
            // A burst of lines is read to its end before sleeping.
            while pass(&mut st)? > 0 {}
            if last_save.elapsed() >= save_every {
                state::save(&path, &st).map_err(|e| e.to_string())?;
                last_save = std::time::Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        while pass(&mut st)? > 0 {}
        state::save(&path, &st).map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })?;
    Ok(observe_summary(&st, now_s()))
}

/// The move model's flags, shared by `advise` (and `simulate`'s reports).
#[derive(Debug, Args)]
pub(crate) struct MoveArgs {
    /// A `daffe migrate --json` report to fit the move model to
    /// (repeatable); the flags below override what it gives.
    #[arg(long = "migrate-report", value_name = "FILE")]
    pub(crate) reports: Vec<PathBuf>,
    /// The volume's size (e.g. 20G).
    #[arg(long)]
    pub(crate) volume_size: Option<String>,
    /// Bytes the service writes per second (e.g. 1M).
    #[arg(long)]
    pub(crate) dirty_rate: Option<String>,
    /// Pre-copy throughput to the other site, bytes per second (e.g. 10M).
    #[arg(long)]
    pub(crate) throughput: Option<String>,
    /// Cutover work besides the final round's data (unmount, hand-over).
    #[arg(long)]
    pub(crate) overhead: Option<String>,
    /// Container stop and start around the cutover.
    #[arg(long, default_value = "0s")]
    pub(crate) restart: String,
    /// The downtime target `daffe migrate --max-downtime` would use.
    #[arg(long)]
    pub(crate) max_downtime: Option<String>,
}

fn read_reports(paths: &[PathBuf]) -> Result<Vec<(String, MigrateReport)>, String> {
    paths
        .iter()
        .map(|p| {
            let what = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| format!("{what}: {e}"))?;
            Ok((
                what.clone(),
                MigrateReport::parse(&what, &text).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

fn bytes(s: &str, what: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches("/s");
    t.parse::<ByteSize>()
        .map(|b| b.bytes() as f64)
        .map_err(|e| format!("--{what}: {e}"))
}

impl MoveArgs {
    pub(crate) fn model(&self) -> Result<MoveModel, String> {
        let secs = |s: &str| {
            duration::parse(s)
                .map(|d| d.as_secs_f64())
                .map_err(|e| e.to_string())
        };
        let restart = secs(&self.restart)?;
        let mut m = if self.reports.is_empty() {
            let (Some(size), Some(tp)) = (&self.volume_size, &self.throughput) else {
                return Err(
                    "the move's cost needs --migrate-report FILE, or --volume-size and --throughput".into(),
                );
            };
            MoveModel {
                volume_bytes: bytes(size, "volume-size")?,
                dirty_bytes_per_s: 0.0,
                throughput_bytes_per_s: bytes(tp, "throughput")?,
                // `daffe migrate`'s measured cutover work is ~0.5 s
                // (BENCHMARKS.md); a guess until a report says better.
                overhead_s: 0.5,
                restart_s: restart,
                // `daffe migrate --max-downtime`'s default.
                max_downtime_s: 2.0,
                max_rounds: cost::DEFAULT_MAX_ROUNDS,
            }
        } else {
            cost::fit(&read_reports(&self.reports)?, restart).map_err(|e| e.to_string())?
        };
        if let Some(s) = &self.volume_size {
            m.volume_bytes = bytes(s, "volume-size")?;
        }
        if let Some(s) = &self.throughput {
            m.throughput_bytes_per_s = bytes(s, "throughput")?;
        }
        if let Some(s) = &self.dirty_rate {
            m.dirty_bytes_per_s = bytes(s, "dirty-rate")?;
        }
        if let Some(s) = &self.overhead {
            m.overhead_s = secs(s)?;
        }
        if let Some(s) = &self.max_downtime {
            m.max_downtime_s = secs(s)?;
        }
        m.validate().map_err(|e| e.to_string())?;
        Ok(m)
    }
}

#[derive(Debug, Args)]
pub(crate) struct AdviseArgs {
    /// The service, as given to `observe --service`.
    pub(crate) service: String,
    /// Region label of the node serving the service now.
    #[arg(long)]
    pub(crate) region: String,
    /// Regions with a node that can run it (comma-separated; default:
    /// every region of the RTT table).
    #[arg(long, value_delimiter = ',')]
    pub(crate) sites: Vec<String>,
    /// Directory of `observe`'s state files (SERVICE.json). Old spelling:
    /// --state-dir.
    #[arg(long = "placement-dir", alias = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    #[command(flatten)]
    pub(crate) table: TableArgs,
    #[command(flatten)]
    pub(crate) moves: MoveArgs,
    /// The rule's settings (TOML, keys of placement/DESIGN.md's table).
    #[arg(long, value_name = "FILE")]
    pub(crate) rule: Option<PathBuf>,
    /// Clients' access latency added to every request (ms).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) access_ms: f64,
    /// Decide as of this time (Unix seconds; default: now). For replayed logs.
    #[arg(long)]
    pub(crate) at: Option<f64>,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn read_rule(p: &Option<PathBuf>) -> Result<RuleConfig, String> {
    let Some(p) = p else {
        return Ok(RuleConfig::default());
    };
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let r: RuleConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    r.validate().map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(r)
}

fn do_advise(a: &AdviseArgs) -> Result<advise::Advice, String> {
    let table = a.table.table()?;
    let rule = read_rule(&a.rule)?;
    let model = a.moves.model()?;
    let path = state_path(&a.state_dir, &a.service)?;
    let st = state::load(&path, &a.service)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no observations for {} ({} does not exist): run `daffe placement observe` first",
                a.service,
                path.display()
            )
        })?;
    let sites = if a.sites.is_empty() {
        table.names().to_vec()
    } else {
        a.sites.clone()
    };
    let estimate: MoveEstimate = model.estimate();
    advise::advise(&advise::AdviseInput {
        state: &st,
        table: &table,
        sites: &sites,
        current: &a.region,
        now: a.at.unwrap_or_else(now_s),
        access_ms: a.access_ms,
        move_estimate: estimate,
        rule: &rule,
        demand: &DemandConfig::default(),
    })
    .map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// The scenario (TOML; see placement/scenarios/).
    #[arg(long, value_name = "FILE")]
    pub(crate) scenario: PathBuf,
    /// Where the SVG plots go (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// `daffe migrate --json` reports: the move cost model is fitted to
    /// them instead of the scenario's `[moves]`.
    #[arg(long = "migrate-report", value_name = "FILE")]
    pub(crate) reports: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) table: TableArgs,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(serde::Serialize)]
struct SimReport {
    #[serde(flatten)]
    result: sim::SimResult,
    plots: Vec<PathBuf>,
}

fn simulate(a: &SimulateArgs) -> Result<SimReport, String> {
    let table = a.table.table()?;
    let p = &a.scenario;
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let scn = Scenario::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    scn.validate(&table)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let model = if a.reports.is_empty() {
        scn.moves.model()
    } else {
        cost::fit(&read_reports(&a.reports)?, scn.moves.restart_s).map_err(|e| e.to_string())?
    };
    let result = sim::run(&scn, &table, &model).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let plots = plot::write_all(&result, &a.out).map_err(|e| e.to_string())?;
    Ok(SimReport { result, plots })
}

#[derive(Debug, Args)]
pub(crate) struct ForwardArgs {
    /// Where clients still arrive (the old node's address), e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub(crate) listen: String,
    /// The new node's address.
    #[arg(long)]
    pub(crate) to: String,
    #[command(flatten)]
    pub(crate) window: ForwardWindow,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

/// How an old node forwards after a move: one set of flags for `placement
/// forward` and `follow --forward-port`, so the two read and default alike.
#[derive(Debug, Args)]
pub(crate) struct ForwardWindow {
    /// How long the old node forwards after a move (then new connections
    /// are refused).
    #[arg(long, default_value = "10m")]
    pub(crate) grace: String,
    /// How long forwarded connections may go on after the grace.
    #[arg(long, default_value = "60s")]
    pub(crate) drain: String,
    /// How long a client of the old address is held while the new node
    /// does not answer yet (the move's downtime) before it is closed.
    #[arg(long, default_value = "30s")]
    pub(crate) hold: String,
}

/// [`ForwardWindow`] parsed.
pub(crate) struct Window {
    pub(crate) grace: std::time::Duration,
    pub(crate) drain: std::time::Duration,
    pub(crate) hold: std::time::Duration,
}

impl ForwardWindow {
    pub(crate) fn parse(&self) -> Result<Window, String> {
        let dur = |s: &str, flag: &str| duration::parse(s).map_err(|e| format!("--{flag}: {e}"));
        Ok(Window {
            grace: dur(&self.grace, "grace")?,
            drain: dur(&self.drain, "drain")?,
            hold: dur(&self.hold, "hold")?,
        })
    }
}

fn do_forward(a: &ForwardArgs) -> Result<forward::ForwardReport, String> {
    let Window { grace, drain, hold } = a.window.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", a.listen))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let opts = forward::ForwardOptions {
            to: a.to.clone(),
            drain,
            connect_timeout: hold,
        };
        tracing::info!(listen = %a.listen, to = %a.to, grace = ?grace, "forwarding");
        let to = a.to.clone();
        Ok(forward::forward(listener, opts, stop, move || {
            eprintln!("daffe: grace period over; refusing new connections (clients go to {to})");
        })
        .await)
    })
}

#[derive(Debug, Args)]
pub(crate) struct WhereArgs {
    /// The service: a Swarm service, or in two-host mode (`--host`) the
    /// service name `follow` was given.
    pub(crate) service: String,
    /// A Swarm manager's engine socket.
    #[arg(long, value_name = "SOCKET", default_value = crate::follow::engine::DEFAULT_ENGINE)]
    pub(crate) engine: PathBuf,
    /// The node label that holds a node's region.
    #[arg(long, default_value = "region")]
    pub(crate) region_label: String,
    /// Two-host mode (no Swarm): the hosts, as `daffe follow --host` names
    /// them; the answer is the one whose engine runs the container.
    #[arg(long = "host", value_name = "REGION=agent=..,engine=..,control=..")]
    pub(crate) hosts: Vec<crate::follow::hosts::HostSpec>,
    /// Two-host mode: the container (default: the service's name).
    #[arg(long, requires = "hosts")]
    pub(crate) container: Option<String>,
    /// Print JSON on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

fn do_where(a: &WhereArgs) -> Result<crate::follow::swarm::Placed, String> {
    if !a.hosts.is_empty() {
        crate::follow::hosts::check(&a.hosts).map_err(|e| e.to_string())?;
        let engines: Vec<_> = a
            .hosts
            .iter()
            .map(|h| crate::follow::engine::EngineClient::new(&h.engine))
            .collect();
        let hosts: Vec<_> = a
            .hosts
            .iter()
            .zip(&engines)
            .map(|(spec, engine)| crate::follow::two_hosts::Host {
                spec: spec.clone(),
                engine,
            })
            .collect();
        let container = a.container.as_deref().unwrap_or(&a.service);
        return crate::follow::two_hosts::where_is(&hosts, &a.service, container);
    }
    let api = crate::follow::engine::EngineClient::new(&a.engine);
    crate::follow::swarm::locate(&api, &a.service, &a.region_label)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no task of {} is placed on a node now (pending?)",
                a.service
            )
        })
}

fn render_where(p: &crate::follow::swarm::Placed) -> String {
    format!(
        "{} runs on {} ({}), region {}, task {}\n",
        p.service,
        p.node,
        p.addr,
        p.region.as_deref().unwrap_or("(no label)"),
        p.state
    )
}

pub fn run(args: PlacementArgs) -> ExitCode {
    super::init_logging();
    match args.command {
        PlacementCommand::Observe(a) => {
            let json = a.json;
            super::finish_report(json, observe(a), |v| {
                format!(
                    "{}: {} lines, {} malformed (skipped), {} from unplaceable clients\n  requests by region: {}\n",
                    v["service"].as_str().unwrap_or(""),
                    v["lines"],
                    v["malformed"],
                    v["unknown"],
                    v["requests_by_region"]
                )
            })
        }
        PlacementCommand::Advise(a) => super::finish_report(a.json, do_advise(&a), advise::render),
        PlacementCommand::Simulate(a) => super::finish_report(a.json, simulate(&a), |r| {
            let mut s = sim::render_table(&r.result);
            for p in &r.plots {
                s.push_str(&format!("wrote {}\n", p.display()));
            }
            s
        }),
        PlacementCommand::Where(a) => super::finish_report(a.json, do_where(&a), render_where),
        PlacementCommand::Rtt(a) => super::finish_report(
            a.json,
            super::placement_rtt::run(&a),
            super::placement_rtt::render,
        ),
        PlacementCommand::Forward(a) => super::finish_report(a.json, do_forward(&a), |r| {
            format!(
                "forwarded {} connections ({} relayed, {} could not reach the new node, {} cut at the drain limit)\n",
                r.accepted, r.relayed, r.connect_failed, r.cut_at_drain
            )
        }),
    }
}
