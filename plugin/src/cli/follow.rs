//! `daffe follow SERVICE`: reads what `daffe placement observe` keeps,
//! asks the rule (`advise`), and acts: in Swarm mode it moves the service
//! by its region constraint (`follow::swarm`), and Swarm with cluster mode
//! moves the task and the volume. `--dry-run` says what it would do.
//! Runs once (`--once`) or every `--interval`.
//!
//! `--forward-port PORT` keeps clients connected: when the service's task
//! leaves this node (`--node`), this node forwards PORT to the new node for
//! `--grace`. Every node that may lose the service runs it (the mover with
//! its decisions, the others with `--forward-only`), since each old node
//! listens on its own address.
//!
//! Two-host mode (no Swarm): `--host REGION=agent=...,engine=...,control=...`
//! once per host (`follow::hosts`). The service is a container (`--container`,
//! default SERVICE) that runs on one of them; a move is `daffe migrate` of its
//! daffe volume with pre-copy while it runs, the container stopped on the
//! source at the cutover and created and started on the destination
//! (`follow::two_hosts`). With `--forward-port`, the host named by `--node`
//! (this one, where `follow` runs) forwards the port from the moment its
//! container stops, holding clients until the new host answers.
//!
//! The moves made are kept in `SERVICE.follow.json` beside observe's state
//! (observe rewrites its own file and would drop them); the rule's minimum
//! stay and daily budget count them.

use super::placement::{
    DEFAULT_STATE_DIR, ForwardWindow, MoveArgs, TableArgs, now_s, read_rule, state_path,
};
use crate::follow::engine::{DEFAULT_ENGINE, EngineClient, SwarmApi};
use crate::follow::hosts::{self, HostSpec};
use crate::follow::keep::{Forwarders, KeepEvent, KeepOptions, KeepReport, Keeper};
use crate::follow::migrate::RealMover;
use crate::follow::swarm::{self, Done, SwarmActuator, Wait};
use crate::follow::two_hosts::{self, Host, Mover, Step, TwoHostActuator};
use crate::migrate::duration;
use clap::{Args, ValueEnum};
use placement::actuator::{self, DryRun, Outcome};
use placement::advise;
use placement::rates::DemandConfig;
use placement::rule::Action;
use placement::state::{self, MoveEvent};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Clock {
    /// Decide as of now.
    Wall,
    /// Decide as of the newest request observed (replayed or compressed logs).
    Log,
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The service (as given to `observe --service`; in Swarm mode, the
    /// Swarm service's name).
    pub(crate) service: String,
    /// Directory of `observe`'s state files (SERVICE.json); the moves made
    /// go to SERVICE.follow.json there.
    #[arg(long = "placement-dir", alias = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    /// A Swarm manager's engine socket.
    #[arg(long, value_name = "SOCKET", default_value = DEFAULT_ENGINE)]
    pub(crate) engine: PathBuf,
    /// The node label that holds a node's region.
    #[arg(long, default_value = "region")]
    pub(crate) region_label: String,
    /// Standalone mode (no Swarm): the region serving the service now
    /// (decisions only: with --dry-run).
    #[arg(long, conflicts_with = "hosts")]
    pub(crate) region: Option<String>,
    /// Regions a move may go to (comma-separated; default: the regions of
    /// the swarm's schedulable nodes, or in standalone mode every region of
    /// the RTT table).
    #[arg(long, value_delimiter = ',')]
    pub(crate) sites: Vec<String>,
    /// Two-host mode (boxed: it would make every subcommand's value as big).
    #[command(flatten)]
    pub(crate) two: Box<HostArgs>,
    /// Say what would be done; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Decide (and act) once, then exit (after the forwarding period, if
    /// this node forwards).
    #[arg(long)]
    pub(crate) once: bool,
    /// How often to decide.
    #[arg(long, default_value = "60s")]
    pub(crate) interval: String,
    /// The time decisions are made as of.
    #[arg(long, value_enum, default_value = "wall")]
    pub(crate) clock: Clock,
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
    /// How long to wait for the task to run in the new region.
    #[arg(long, default_value = "120s")]
    pub(crate) wait: String,
    /// Keep clients connected: when the task leaves this node, forward this
    /// TCP port (the service's) to the node it went to.
    #[arg(long, value_name = "PORT")]
    pub(crate) forward_port: Option<u16>,
    /// Only watch and forward (nodes other than the one that decides).
    #[arg(long, requires = "forward_port")]
    pub(crate) forward_only: bool,
    /// This node's name in the swarm (default: the hostname); in two-host
    /// mode, the region of the host this `follow` runs on (it forwards when
    /// the container leaves it).
    #[arg(long)]
    pub(crate) node: Option<String>,
    /// The address the forwarder listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub(crate) forward_listen: String,
    #[command(flatten)]
    pub(crate) window: ForwardWindow,
    /// How often the forwarding watch looks where the task is.
    #[arg(long, default_value = "500ms")]
    pub(crate) watch: String,
    /// Print JSON lines on stdout instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Two-host mode's flags (no Swarm).
#[derive(Debug, Args)]
pub(crate) struct HostArgs {
    /// Two-host mode (no Swarm), once per host:
    /// REGION=agent=HOST[:PORT],engine=SOCKET,control=SOCKET[,tls-dir=DIR][,addr=ADDR]:
    /// the host's daffe agent, its Docker engine's socket, its daffe
    /// daemon's control socket (paths here; a remote host's forwarded, e.g.
    /// `ssh -L`), the certificate it presents as a source (default
    /// --tls-dir) and where clients reach it (default the agent's host).
    /// A move migrates the container's daffe volume (pre-copy while it
    /// runs), stops it on the source at the cutover, and creates and starts
    /// the same container on the destination.
    #[arg(long = "host", value_name = "REGION=agent=..,engine=..,control=..")]
    pub(crate) hosts: Vec<HostSpec>,
    /// Two-host mode: the container (default: the service's name).
    #[arg(long, requires = "hosts")]
    pub(crate) container: Option<String>,
    /// Two-host mode: which of the container's plugin volumes moves (when
    /// it has more than one).
    #[arg(long, requires = "hosts")]
    pub(crate) volume: Option<String>,
    /// Two-host mode: `daffe migrate --connect-timeout`.
    #[arg(long, default_value = "5s", requires = "hosts")]
    pub(crate) connect_timeout: String,
    /// Two-host mode: the certificates (ca.pem, node.pem, node.key) a source
    /// host presents when its --host names no tls-dir.
    #[arg(long, env = "DAFFE_TLS_DIR", requires = "hosts")]
    pub(crate) tls_dir: Option<PathBuf>,
}

/// The moves `follow` made for a service.
#[derive(Debug, Default, Serialize, Deserialize)]
struct MoveLog {
    service: String,
    moves: Vec<MoveEvent>,
}

fn moves_path(dir: &Path, service: &str) -> Result<PathBuf, String> {
    let p = state_path(dir, service)?;
    Ok(p.with_extension("follow.json"))
}

fn load_moves(path: &Path, service: &str) -> Result<MoveLog, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let log: MoveLog =
                serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?;
            if log.service != service {
                return Err(format!(
                    "{} is for service {:?}, not {service:?}",
                    path.display(),
                    log.service
                ));
            }
            Ok(log)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MoveLog {
            service: service.to_owned(),
            moves: Vec::new(),
        }),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaced atomically: a crash keeps the old log or the new one (a lost
/// move would let the rule move again early).
fn save_moves(path: &Path, log: &MoveLog) -> Result<(), String> {
    let body = serde_json::to_vec(log).map_err(|e| e.to_string())?;
    placement::state::replace_file(path, &body).map_err(|e| format!("{}: {e}", path.display()))
}

/// One decision, as printed.
#[derive(Debug, Serialize)]
struct TickReport {
    service: String,
    at: f64,
    current: String,
    best_now: String,
    decision: placement::rule::Decision,
    /// `stay`, `moved`, `dry-run` or `failed`.
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    said: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    moved: Option<Done>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn render_tick(r: &TickReport) -> String {
    let what = match r.outcome {
        "moved" => r.moved.as_ref().map_or_else(
            || "moved".to_owned(),
            |d| {
                format!(
                    "moved to {} ({}) in {:.1} s",
                    d.to.node, d.to.addr, d.took_s
                )
            },
        ),
        "dry-run" => r.said.clone().unwrap_or_default(),
        "failed" => format!("move failed: {}", r.error.as_deref().unwrap_or("")),
        _ => format!("stay: {}", r.decision.reason),
    };
    format!(
        "{}: at {}, best now {}: {what}\n",
        r.service, r.current, r.best_now
    )
}

fn this_node(a: &FollowArgs) -> String {
    // The kernel's hostname: what Docker reports as the node's Hostname.
    a.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
}

fn dur(s: &str, what: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| format!("--{what}: {e}"))
}

/// Where the service is and how it moves.
enum Mode<'a> {
    Swarm(&'a dyn SwarmApi),
    Hosts {
        hosts: &'a [Host<'a>],
        mover: &'a mut dyn Mover,
        on_step: &'a mut dyn FnMut(Step),
    },
}

/// One decision and, if it says move, the move (Swarm mode).
fn tick(a: &FollowArgs, api: &dyn SwarmApi) -> Result<TickReport, String> {
    tick_in(a, Mode::Swarm(api))
}

fn container_of(a: &FollowArgs) -> &str {
    a.two.container.as_deref().unwrap_or(&a.service)
}

/// One decision and, if it says move, the move.
fn tick_in(a: &FollowArgs, mode: Mode<'_>) -> Result<TickReport, String> {
    let table = a.table.table()?;
    let rule = read_rule(&a.rule)?;
    let model = a.moves.model()?;
    let path = state_path(&a.state_dir, &a.service)?;
    let mut st = state::load(&path, &a.service)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no observations for {} yet ({} does not exist): is `daffe placement observe` running?",
                a.service,
                path.display()
            )
        })?;
    let mpath = moves_path(&a.state_dir, &a.service)?;
    let mut log = load_moves(&mpath, &a.service)?;
    st.moves.clone_from(&log.moves);
    let (current, sites) = match (&a.region, &mode) {
        (None, Mode::Hosts { hosts, .. }) => {
            let (i, _) = two_hosts::locate(hosts, container_of(a))?;
            let sites = if a.sites.is_empty() {
                hosts.iter().map(|h| h.spec.region.clone()).collect()
            } else {
                a.sites.clone()
            };
            (hosts[i].spec.region.clone(), sites)
        }
        (Some(r), _) => (
            r.clone(),
            if a.sites.is_empty() {
                table.names().to_vec()
            } else {
                a.sites.clone()
            },
        ),
        (None, Mode::Swarm(api)) => {
            let here = swarm::locate(*api, &a.service, &a.region_label)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no task of {} is placed on a node now", a.service))?;
            let region = here.region.ok_or_else(|| {
                format!(
                    "node {} has no {} label (docker node update --label-add {}=REGION {})",
                    here.node, a.region_label, a.region_label, here.node
                )
            })?;
            let sites = if a.sites.is_empty() {
                swarm::regions(&api.nodes().map_err(|e| e.to_string())?, &a.region_label)
            } else {
                a.sites.clone()
            };
            (region, sites)
        }
    };
    let now = match a.clock {
        Clock::Wall => now_s(),
        Clock::Log => st.last_request,
    };
    let advice = advise::advise(&advise::AdviseInput {
        state: &st,
        table: &table,
        sites: &sites,
        current: &current,
        now,
        access_ms: a.access_ms,
        move_estimate: model.estimate(),
        rule: &rule,
        demand: &DemandConfig::default(),
    })
    .map_err(|e| e.to_string())?;
    let mut report = TickReport {
        service: a.service.clone(),
        at: now,
        current: current.clone(),
        best_now: advice.best_now.clone(),
        decision: advice.decision.clone(),
        outcome: "stay",
        said: None,
        moved: None,
        error: None,
    };
    let mut dry = DryRun::default();
    let wait = Wait {
        limit: dur(&a.wait, "wait")?,
        ..Wait::default()
    };
    let mut last = None;
    let stepped = if a.dry_run {
        let r = actuator::follow_step(&advice, &mut st, &mut dry);
        // Two-host mode says what the move would do, or why it would be refused.
        if let (Ok(Some(Outcome::DryRun(said))), Mode::Hosts { hosts, .. }, Action::Move { to }) =
            (&r, &mode, &advice.decision.action)
        {
            let plan = match two_hosts::plan(hosts, container_of(a), a.two.volume.as_deref(), to) {
                Ok(p) => format!("plan: {}", p.render()),
                Err(e) => format!("the move would be refused: {e}"),
            };
            Ok(Some(Outcome::DryRun(format!("{said}; {plan}"))))
        } else {
            r
        }
    } else {
        match mode {
            Mode::Swarm(api) => {
                let mut sw = SwarmActuator {
                    api,
                    label: a.region_label.clone(),
                    wait,
                    last: None,
                };
                let r = actuator::follow_step(&advice, &mut st, &mut sw);
                last = sw.last.take();
                r
            }
            Mode::Hosts {
                hosts,
                mover,
                on_step,
            } => {
                let mut th = TwoHostActuator {
                    hosts,
                    container: container_of(a).to_owned(),
                    volume: a.two.volume.clone(),
                    mover,
                    on_step,
                    last: None,
                };
                let r = actuator::follow_step(&advice, &mut st, &mut th);
                last = th.last.take();
                r
            }
        }
    };
    match stepped {
        Ok(None) => {}
        Ok(Some(Outcome::DryRun(s))) => {
            report.outcome = "dry-run";
            report.said = Some(s);
        }
        Ok(Some(Outcome::Moved)) => {
            report.outcome = "moved";
            report.moved = last;
            log.moves = st.moves;
            save_moves(&mpath, &log)?;
        }
        Err(e) => {
            report.outcome = "failed";
            report.error = Some(e.to_string());
        }
    }
    Ok(report)
}

fn print_line<T: Serialize>(json: bool, v: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string(v).unwrap_or_default());
    } else {
        print!("{}", text(v));
    }
    let _ = std::io::stdout().flush();
}

#[derive(Serialize)]
struct ForwardLine<'a> {
    forward: &'a str,
    #[serde(flatten)]
    report: Option<&'a KeepReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn print_forward(json: bool, r: Result<KeepReport, String>) {
    let (line, text) = match &r {
        Ok(k) => (
            ForwardLine {
                forward: "ended",
                report: Some(k),
                to: None,
                error: None,
            },
            format!(
                "forwarding to {} ended: {} connections, {} could not reach the new node, {} cut at the drain limit\n",
                k.to, k.report.accepted, k.report.connect_failed, k.report.cut_at_drain
            ),
        ),
        Err(e) => (
            ForwardLine {
                forward: "failed",
                report: None,
                to: None,
                error: Some(e.clone()),
            },
            format!("forwarding failed: {e}\n"),
        ),
    };
    print_line(json, &line, |_| text);
}

/// The forwarding watch's surroundings.
struct Watch<'a> {
    a: &'a FollowArgs,
    api: &'a dyn SwarmApi,
    /// This node's name.
    me: &'a str,
    every: Duration,
    stop: &'a AtomicBool,
}

impl Watch<'_> {
    /// Where the task is, every `every`, until `stop`; forwards when it
    /// leaves `me`. With `until_idle`, also returns once a forwarding
    /// period has ended and none runs (`--once`). `first` is a move this
    /// process made itself.
    fn run(&self, fwd: &mut Forwarders, until_idle: bool, first: Option<KeepEvent>) {
        let json = self.a.json;
        let mut keeper = Keeper::new(self.me);
        let mut forwarded = false;
        if let Some(e) = first {
            keeper.saw(Some(placed_here(self.a, self.me)));
            if let KeepEvent::ForwardTo(p) = &e {
                keeper.saw(Some(p.clone()));
            }
            announce(json, &e);
            fwd.apply(e);
            forwarded = true;
        }
        while !self.stop.load(Ordering::Relaxed) {
            match swarm::locate(self.api, &self.a.service, &self.a.region_label) {
                Ok(now) => {
                    if let Some(e) = keeper.saw(now) {
                        announce(json, &e);
                        forwarded = true;
                        if let Some(r) = fwd.apply(e) {
                            print_forward(json, r);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "follow: where is the service?"),
            }
            if let Some(r) = fwd.finished() {
                keeper.ended();
                print_forward(json, r);
            }
            if until_idle && forwarded && !fwd.active() {
                return;
            }
            sleep_unless(self.stop, self.every);
        }
        if let Some(r) = fwd.stop() {
            print_forward(json, r);
        }
    }
}

/// The placement the watch starts from when told the service was here.
fn placed_here(a: &FollowArgs, me: &str) -> swarm::Placed {
    swarm::Placed {
        service: a.service.clone(),
        node: me.to_owned(),
        node_id: String::new(),
        addr: String::new(),
        region: None,
        state: "running".into(),
    }
}

fn announce(json: bool, e: &KeepEvent) {
    let (to, text) = match e {
        KeepEvent::ForwardTo(p) => (
            Some(p.node.clone()),
            format!("forwarding the old address to {} ({})\n", p.node, p.addr),
        ),
        KeepEvent::Stop => (
            None,
            "the service is back here: forwarding stopped\n".into(),
        ),
    };
    let line = ForwardLine {
        forward: if to.is_some() { "started" } else { "stopped" },
        report: None,
        to,
        error: None,
    };
    print_line(json, &line, |_| text);
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let t = std::time::Instant::now();
    while t.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

/// Two-host mode's forwarder: started when the container stops on this
/// host (`--node`), stopped before a container starts here again.
struct HostForward<'a> {
    fwd: Option<Forwarders>,
    me: &'a str,
    json: bool,
}

impl HostForward<'_> {
    fn step(&mut self, s: Step) {
        let Some(fwd) = &mut self.fwd else { return };
        let e = match s {
            Step::SourceStopping { from, to } if from == self.me => KeepEvent::ForwardTo(to),
            Step::SourceStopping { .. } => return,
            Step::DestinationStarting { to } if to != self.me => return,
            Step::DestinationStarting { .. } | Step::SourceRestarting => KeepEvent::Stop,
        };
        if e == KeepEvent::Stop && !fwd.active() {
            return;
        }
        announce(self.json, &e);
        if let Some(r) = fwd.apply(e) {
            print_forward(self.json, r);
        }
    }

    fn finished(&mut self) {
        if let Some(r) = self.fwd.as_mut().and_then(Forwarders::finished) {
            print_forward(self.json, r);
        }
    }

    fn active(&self) -> bool {
        self.fwd.as_ref().is_some_and(Forwarders::active)
    }

    fn stop(&mut self) {
        if let Some(r) = self.fwd.as_mut().and_then(Forwarders::stop) {
            print_forward(self.json, r);
        }
    }
}

/// Two-host mode: decide and move every `interval` (or `--once`), with
/// the forwarder of this host.
fn follow_hosts(
    a: &FollowArgs,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    keep_opts: Option<KeepOptions>,
    interval: Duration,
) -> Result<ExitCode, String> {
    hosts::check(&a.two.hosts).map_err(|e| e.to_string())?;
    let regions: Vec<&str> = a.two.hosts.iter().map(|h| h.region.as_str()).collect();
    if a.forward_only {
        return Err("--forward-only is for Swarm mode; in two-host mode the follow that moves the container forwards (on the host named by --node)".into());
    }
    let me = match (&a.node, &keep_opts) {
        (Some(n), _) if !regions.contains(&n.as_str()) => {
            return Err(format!(
                "--node {n} is not the region of a --host ({})",
                regions.join(", ")
            ));
        }
        (Some(n), _) => n.clone(),
        (None, Some(_)) => {
            return Err("--forward-port in two-host mode needs --node REGION: the host this follow runs on, whose address it forwards".into());
        }
        (None, None) => String::new(),
    };
    let engines: Vec<EngineClient> = a
        .two
        .hosts
        .iter()
        .map(|h| EngineClient::new(&h.engine))
        .collect();
    let hs: Vec<Host<'_>> = a
        .two
        .hosts
        .iter()
        .zip(&engines)
        .map(|(spec, engine)| Host {
            spec: spec.clone(),
            engine,
        })
        .collect();
    let mut mover = RealMover {
        tls_dir: a.two.tls_dir.clone(),
        // The move model's downtime target is migrate's (`--max-downtime`).
        max_downtime: dur(
            a.moves.max_downtime.as_deref().unwrap_or("2s"),
            "max-downtime",
        )?,
        connect_timeout: dur(&a.two.connect_timeout, "connect-timeout")?,
        unmount_timeout: two_hosts::UNMOUNT_LIMIT,
    };
    let mut hf = HostForward {
        fwd: keep_opts.map(|o| Forwarders::new(rt.handle().clone(), o)),
        me: &me,
        json: a.json,
    };
    loop {
        let r = tick_in(
            a,
            Mode::Hosts {
                hosts: &hs,
                mover: &mut mover,
                on_step: &mut |s| hf.step(s),
            },
        );
        match r {
            Ok(r) if a.once => {
                print_line(a.json, &r, render_tick);
                // Forward for the grace (or until stopped), then exit.
                while hf.active() && !stop.load(Ordering::Relaxed) {
                    hf.finished();
                    sleep_unless(stop, Duration::from_millis(200));
                }
                hf.stop();
                return Ok(if r.outcome == "failed" {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
            Ok(r) => print_line(a.json, &r, render_tick),
            Err(e) if a.once => {
                hf.stop();
                return Err(e);
            }
            Err(e) => print_line(a.json, &serde_json::json!({ "error": &e }), |_| {
                format!("daffe follow: {e}\n")
            }),
        }
        let t = std::time::Instant::now();
        while t.elapsed() < interval && !stop.load(Ordering::Relaxed) {
            hf.finished();
            sleep_unless(stop, Duration::from_millis(200).min(interval));
        }
        if stop.load(Ordering::Relaxed) {
            hf.stop();
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn follow(a: &FollowArgs) -> Result<ExitCode, String> {
    if a.region.is_some() && !a.dry_run {
        return Err(
            "standalone mode (--region) can only --dry-run; to move a container between hosts without Swarm, name them with --host (two-host mode); in a swarm, label the nodes and leave out --region".into(),
        );
    }
    if a.region.is_some() && a.forward_port.is_some() {
        return Err(
            "--forward-port needs Swarm mode (where the task runs); leave out --region".into(),
        );
    }
    let interval = dur(&a.interval, "interval")?;
    let keep_opts = match a.forward_port {
        Some(port) => Some({
            let w = a.window.parse()?;
            KeepOptions {
                listen: format!("{}:{port}", a.forward_listen),
                port,
                grace: w.grace,
                drain: w.drain,
                connect_timeout: w.hold,
                // The old task's stop grace (Docker's default 10 s) and more.
                bind_for: Duration::from_secs(30),
            }
        }),
        None => None,
    };
    let watch = dur(&a.watch, "watch")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let mut term = rt
            .block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            })
            .map_err(|e| e.to_string())?;
        rt.spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    if !a.two.hosts.is_empty() {
        return follow_hosts(a, &rt, &stop, keep_opts, interval);
    }
    let api = EngineClient::new(&a.engine);
    let me = this_node(a);
    if a.forward_only {
        let Some(o) = keep_opts else {
            return Err("--forward-only needs --forward-port".into());
        };
        let mut fwd = Forwarders::new(rt.handle().clone(), o);
        let w = Watch {
            a,
            api: &api,
            me: &me,
            every: watch,
            stop: &stop,
        };
        w.run(&mut fwd, false, None);
        return Ok(ExitCode::SUCCESS);
    }
    if a.once {
        let r = tick(a, &api)?;
        print_line(a.json, &r, render_tick);
        if let (Some(o), Some(done)) = (keep_opts, &r.moved)
            && done.from.as_ref().is_some_and(|f| f.node == me)
        {
            let mut fwd = Forwarders::new(rt.handle().clone(), o);
            let first = KeepEvent::ForwardTo(done.to.clone());
            let w = Watch {
                a,
                api: &api,
                me: &me,
                every: watch,
                stop: &stop,
            };
            w.run(&mut fwd, true, Some(first));
        }
        return Ok(if r.outcome == "failed" {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    std::thread::scope(|sc| {
        if let Some(o) = keep_opts {
            let (api, me, stop) = (&api, &me, &stop);
            let handle = rt.handle().clone();
            sc.spawn(move || {
                let mut fwd = Forwarders::new(handle, o);
                let w = Watch {
                    a,
                    api,
                    me,
                    every: watch,
                    stop,
                };
                w.run(&mut fwd, false, None);
            });
        }
        while !stop.load(Ordering::Relaxed) {
            match tick(a, &api) {
                Ok(r) => print_line(a.json, &r, render_tick),
                // The loop outlives a moment without observations or an
                // engine that does not answer; each is said.
                Err(e) => print_line(a.json, &serde_json::json!({ "error": &e }), |_| {
                    format!("daffe follow: {e}\n")
                }),
            }
            sleep_unless(&stop, interval);
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: FollowArgs) -> ExitCode {
    super::init_logging();
    match follow(&a) {
        Ok(code) => code,
        Err(e) => super::fail(a.json, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::fake::FakeSwarm;
    use clap::Parser;
    use placement::state::ServiceState;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: FollowArgs,
    }

    fn args(dir: &Path, extra: &[&str]) -> FollowArgs {
        let d = dir.to_string_lossy().into_owned();
        let mut v = vec![
            "follow",
            "counter",
            "--placement-dir",
            &d,
            "--volume-size",
            "100M",
            "--throughput",
            "100M",
            "--clock",
            "log",
        ];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().a
    }

    /// An hour of requests from Europe only, ending at t = 3600.
    fn observed(dir: &Path) {
        let mut st = ServiceState::new("counter", &DemandConfig::default());
        for s in 0..3600 {
            st.demand.add(f64::from(s), "eu-west-1", 10.0);
        }
        st.last_request = 3599.0;
        state::save(&state_path(dir, "counter").unwrap(), &st).unwrap();
    }

    #[test]
    fn a_tick_moves_the_service_to_its_clients_and_the_next_respects_the_minimum_stay() {
        let dir = tempfile::tempdir().unwrap();
        observed(dir.path());
        let fake = FakeSwarm::three_regions();
        fake.create("counter", &["node.labels.region==us-east-1"]);
        let a = args(dir.path(), &[]);
        let r = tick(&a, &fake).unwrap();
        assert_eq!(r.outcome, "moved", "{r:?}");
        assert_eq!(
            (r.current.as_str(), r.best_now.as_str()),
            ("us-east-1", "eu-west-1")
        );
        let done = r.moved.unwrap();
        assert_eq!(
            (done.from.unwrap().node.as_str(), done.to.node.as_str()),
            ("n1", "n2")
        );
        assert_eq!(
            fake.constraints("counter"),
            vec!["node.labels.region==eu-west-1"]
        );
        let log = load_moves(&moves_path(dir.path(), "counter").unwrap(), "counter").unwrap();
        assert_eq!(log.moves.len(), 1);
        assert_eq!(log.moves[0].to, "eu-west-1");
        // Observe rewrites its state (dropping nothing of follow's): the
        // next decision still sees the move.
        observed(dir.path());
        let r = tick(&a, &fake).unwrap();
        assert_eq!(r.outcome, "stay");
        assert_eq!(r.current, "eu-west-1");
        // Moved back by hand: the rule waits out its minimum stay.
        let back = FakeSwarm::three_regions();
        back.create("counter", &["node.labels.region==us-east-1"]);
        let r = tick(&a, &back).unwrap();
        assert_eq!(r.outcome, "stay");
        assert!(
            r.decision.reason.contains("minimum stay"),
            "{}",
            r.decision.reason
        );
        assert_eq!(back.updates(), 0);
    }

    #[test]
    fn a_dry_run_says_and_changes_nothing_and_standalone_needs_no_engine() {
        let dir = tempfile::tempdir().unwrap();
        observed(dir.path());
        let fake = FakeSwarm::three_regions();
        fake.create("counter", &["node.labels.region==us-east-1"]);
        let r = tick(&args(dir.path(), &["--dry-run"]), &fake).unwrap();
        assert_eq!(r.outcome, "dry-run");
        assert!(
            r.said
                .as_deref()
                .unwrap()
                .contains("would move counter from us-east-1 to eu-west-1"),
            "{r:?}"
        );
        assert_eq!(fake.updates(), 0);
        assert!(!moves_path(dir.path(), "counter").unwrap().exists());
        // Standalone: --region, no swarm at all (an engine that is absent).
        let nowhere = EngineClient::new(&dir.path().join("no.sock"));
        let a = args(
            dir.path(),
            &[
                "--dry-run",
                "--region",
                "us-east-1",
                "--sites",
                "us-east-1,eu-west-1",
            ],
        );
        let r = tick(&a, &nowhere).unwrap();
        assert_eq!(r.outcome, "dry-run");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["decision"]["action"], "move");
        assert_eq!(json["decision"]["to"], "eu-west-1");
        assert!(render_tick(&r).contains("would move"));
        // Acting in standalone mode is refused, clearly.
        let e = follow(&args(dir.path(), &["--region", "us-east-1", "--once"])).unwrap_err();
        assert!(e.contains("name them with --host"), "{e}");
    }

    const HOST_US: &str =
        "us-east-1=agent=10.0.0.1:7450,engine=/run/a.sock,control=/run/a/control.sock";
    const HOST_EU: &str =
        "eu-west-1=agent=10.0.0.2:7450,engine=/run/b.sock,control=/run/b/control.sock";

    #[test]
    fn two_host_mode_moves_the_container_to_its_clients_and_a_dry_run_prints_the_plan() {
        use crate::follow::fake_hosts::{Ending, FakeEngine, FakeMover};
        let dir = tempfile::tempdir().unwrap();
        observed(dir.path());
        let a_eng = FakeEngine::default();
        a_eng.run("web", "busybox", &[("counter@gold", "daffe")]);
        let b_eng = FakeEngine::with_image("busybox");
        let hosts_of = |a: &FollowArgs| -> Vec<Host<'_>> {
            a.two
                .hosts
                .iter()
                .zip([
                    &a_eng as &dyn crate::follow::containers::ContainerApi,
                    &b_eng,
                ])
                .map(|(spec, engine)| Host {
                    spec: spec.clone(),
                    engine,
                })
                .collect()
        };
        let mut mover = FakeMover {
            engines: vec![("us-east-1", &a_eng), ("eu-west-1", &b_eng)],
            owner: "us-east-1".into(),
            ending: Ending::Completes,
            runs: 0,
        };
        let dry = args(
            dir.path(),
            &[
                "--host",
                HOST_US,
                "--host",
                HOST_EU,
                "--container",
                "web",
                "--dry-run",
            ],
        );
        let hs = hosts_of(&dry);
        let r = tick_in(
            &dry,
            Mode::Hosts {
                hosts: &hs,
                mover: &mut mover,
                on_step: &mut |_| {},
            },
        )
        .unwrap();
        assert_eq!(r.outcome, "dry-run");
        let said = r.said.unwrap();
        assert!(
            said.contains("would move counter from us-east-1 to eu-west-1"),
            "{said}"
        );
        assert!(
            said.contains("plan: migrate volume counter@gold (daffe) from us-east-1 to eu-west-1 (agent 10.0.0.2:7450)"),
            "{said}"
        );
        assert_eq!(mover.runs, 0);
        assert!(a_eng.calls().is_empty());

        let a = args(
            dir.path(),
            &["--host", HOST_US, "--host", HOST_EU, "--container", "web"],
        );
        let hs = hosts_of(&a);
        let mut steps = 0;
        let r = tick_in(
            &a,
            Mode::Hosts {
                hosts: &hs,
                mover: &mut mover,
                on_step: &mut |_| steps += 1,
            },
        )
        .unwrap();
        assert_eq!(r.outcome, "moved", "{r:?}");
        let done = r.moved.as_ref().unwrap();
        assert_eq!(done.to.addr, "10.0.0.2");
        assert!(render_tick(&r).contains("moved to eu-west-1 (10.0.0.2)"));
        assert!(b_eng.running("web") && !a_eng.running("web"));
        assert_eq!(steps, 2);
        let log = load_moves(&moves_path(dir.path(), "counter").unwrap(), "counter").unwrap();
        assert_eq!(log.moves.len(), 1);
        // The next decision finds it there and stays.
        let r = tick_in(
            &a,
            Mode::Hosts {
                hosts: &hs,
                mover: &mut mover,
                on_step: &mut |_| {},
            },
        )
        .unwrap();
        assert_eq!((r.outcome, r.current.as_str()), ("stay", "eu-west-1"));
        assert_eq!(mover.runs, 1);
    }

    #[test]
    fn two_host_mode_refuses_bad_hosts_and_flags_fast() {
        let dir = tempfile::tempdir().unwrap();
        let run = |extra: &[&str]| follow(&args(dir.path(), extra)).unwrap_err();
        assert!(run(&["--host", HOST_US]).contains("at least two --host"));
        assert!(run(&["--host", HOST_US, "--host", HOST_US]).contains("given by two --host"));
        let e = run(&[
            "--host",
            HOST_US,
            "--host",
            HOST_EU,
            "--forward-port",
            "8080",
        ]);
        assert!(e.contains("needs --node REGION"), "{e}");
        let e = run(&[
            "--host", HOST_US, "--host", HOST_EU, "--node", "ap", "--once",
        ]);
        assert!(e.contains("--node ap is not the region of a --host"), "{e}");
        // Engines that are not there: said with the region, at once.
        let t = std::time::Instant::now();
        observed(dir.path());
        let e = run(&["--host", HOST_US, "--host", HOST_EU, "--once"]);
        assert!(
            e.contains("us-east-1: cannot reach the Docker engine at /run/a.sock"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        // Parse errors are clap's, naming the flag's form.
        let bad = Cli::try_parse_from(["follow", "x", "--host", "us=engine=/e"]);
        assert!(bad.is_err());
        let bad = Cli::try_parse_from(["follow", "x", "--host", HOST_US, "--region", "us"]);
        assert!(bad.is_err(), "--region conflicts with --host");
    }

    #[test]
    fn no_observations_and_unlabelled_nodes_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSwarm::three_regions();
        fake.create("counter", &["node.labels.region==us-east-1"]);
        let e = tick(&args(dir.path(), &[]), &fake).unwrap_err();
        assert!(e.contains("no observations for counter"), "{e}");
        observed(dir.path());
        let e = tick(&args(dir.path(), &["--region-label", "zone"]), &fake).unwrap_err();
        assert!(e.contains("has no zone label"), "{e}");
        let e = tick(&args(dir.path(), &[]), &FakeSwarm::three_regions()).unwrap_err();
        assert!(e.contains("no task of counter"), "{e}");
        // A move log of another service is refused, not misread.
        let p = moves_path(dir.path(), "counter").unwrap();
        std::fs::write(&p, r#"{"service":"other","moves":[]}"#).unwrap();
        let e = tick(&args(dir.path(), &[]), &fake).unwrap_err();
        assert!(e.contains("is for service \"other\""), "{e}");
    }
}
