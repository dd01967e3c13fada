//! Two-host mode (no Swarm): the actuator that moves a container and its
//! volume between hosts that each have their own Docker engine and daffe
//! daemon. A move is `daffe migrate` (the same orchestrator, pre-copy while
//! the container runs) with this code in the operator's seat:
//!
//! 1. plan: find the host the container runs on, its one daffe volume, and
//!    check the destination has the image and no running copy (refused
//!    before anything changes);
//! 2. migrate; when it waits for the unmount, stop the container on the
//!    source (its engine, over the API: never from a VolumeDriver handler,
//!    this is the `follow` process);
//! 3. create and start the same container on the destination's engine.
//!
//! A failure says what state each host is left in. Before the handover the
//! migration is undone (the volume unfenced) and the source container is
//! started again; after it, the volume is the destination's and the source
//! keeps its stopped container and fenced copy: nothing is ever removed
//! there.

use super::containers::{ContainerApi, ContainerInfo, STOP_GRACE, recreate_body};
use super::engine::EngineError;
use super::hosts::HostSpec;
use super::swarm::{Done, Placed};
use crate::migrate::report::Report;
use placement::actuator::{ActError, Actuator, MoveOrder, Outcome};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One host: how to reach it, and its engine.
pub(crate) struct Host<'a> {
    pub spec: HostSpec,
    pub engine: &'a dyn ContainerApi,
}

/// Runs the migration of a volume (the real one: `RealMover`, over the
/// source's control socket and the destination's agent).
pub(crate) trait Mover {
    /// Moves `volume` from `from` to `to`; calls `unmount` once, when the
    /// migration waits for the volume to be unmounted.
    fn migrate(
        &mut self,
        volume: &str,
        from: &HostSpec,
        to: &HostSpec,
        unmount: &mut dyn FnMut(),
    ) -> Result<Report, MoverError>;
}

/// Why a migration did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MoverError {
    /// Nothing was started (the certificate, the settings).
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Migrate(#[from] crate::migrate::orchestrate::MigrateError),
}

impl MoverError {
    /// The commit was sent and not confirmed: the source stays fenced
    /// (never two owners) and only a rerun of the migration finishes it.
    fn handing_over(&self) -> bool {
        matches!(
            self,
            Self::Migrate(crate::migrate::orchestrate::MigrateError::Handover { .. })
        )
    }
}

/// Where the container is and what it uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Plan {
    pub container: String,
    pub image: String,
    pub volume: String,
    pub driver: String,
    pub from: String,
    pub to: String,
    pub from_addr: String,
    pub to_addr: String,
    pub to_agent: String,
}

impl Plan {
    pub(crate) fn render(&self) -> String {
        format!(
            "migrate volume {} ({}) from {} to {} (agent {}) with pre-copy while {} runs; \
             stop {} on {} at the cutover; create and start it (image {}) on {} ({})",
            self.volume,
            self.driver,
            self.from,
            self.to,
            self.to_agent,
            self.container,
            self.container,
            self.from,
            self.image,
            self.to,
            self.to_addr
        )
    }
}

/// What happens during a move, for the caller (the forwarder).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// The source container (in region `from`) is being stopped: its port
    /// frees when it exits, and the service will answer at `to` (not yet:
    /// it starts after the final round). Said before the stop, so that a
    /// forwarder takes the port the moment the kernel frees it, not after
    /// the engine's cleanup (the volume's unmount), which takes longer
    /// than a client's retry may wait.
    SourceStopping { from: String, to: Placed },
    /// The container is about to start in region `to` (a forwarder there
    /// must free the port first).
    DestinationStarting { to: String },
    /// The move failed before the handover: the source container is about
    /// to start again (a forwarder on its port must go first).
    SourceRestarting,
}

fn placed(service: &str, h: &HostSpec, state: &str) -> Placed {
    Placed {
        service: service.to_owned(),
        node: h.region.clone(),
        node_id: String::new(),
        addr: h.addr.clone(),
        region: Some(h.region.clone()),
        state: state.to_owned(),
    }
}

/// The host the container runs on, with its inspect. Exactly one: none
/// running is an error (nothing to move, or it is down), two is one too
/// (which is the service?).
pub(crate) fn locate<'h>(
    hosts: &'h [Host<'h>],
    container: &str,
) -> Result<(usize, ContainerInfo), String> {
    let mut found = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let c = h
            .engine
            .inspect(container)
            .map_err(|e| format!("{}: {e}", h.spec.region))?;
        if let Some(c) = c.filter(|c| c.running) {
            found.push((i, c));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "container {container} runs on none of the hosts ({}): start it on one",
            hosts
                .iter()
                .map(|h| h.spec.region.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Err(format!(
            "container {container} runs on {} and {}: stop one (a volume has one owner)",
            hosts[found[0].0].spec.region, hosts[found[1].0].spec.region
        )),
    }
}

/// `placement where` in two-host mode: the host whose engine runs
/// `container`, with the address clients reach it at (`addr=`). Between
/// the source's stop and the destination's start no host runs it: that is
/// an error naming the hosts, as for a Swarm service with no placed task.
pub(crate) fn where_is(
    hosts: &[Host<'_>],
    service: &str,
    container: &str,
) -> Result<Placed, String> {
    let (i, _) = locate(hosts, container)?;
    Ok(placed(service, &hosts[i].spec, "running"))
}

/// Checks a move of `container` to `to` and says what it would do.
/// `volume`: which of its volumes, when it has more than one.
pub(crate) fn plan(
    hosts: &[Host<'_>],
    container: &str,
    volume: Option<&str>,
    to: &str,
) -> Result<Plan, String> {
    let (i, c) = locate(hosts, container)?;
    let from = &hosts[i];
    let dest = hosts
        .iter()
        .find(|h| h.spec.region == to)
        .ok_or_else(|| format!("no --host for region {to}"))?;
    if dest.spec.region == from.spec.region {
        return Err(format!("{container} already runs in {to}"));
    }
    // Only a daffe volume can move; `local` and the like stay.
    let candidates: Vec<&(String, String)> = c
        .volumes
        .iter()
        .filter(|(_, d)| d != "local")
        .filter(|(n, _)| volume.is_none_or(|v| v == n))
        .collect();
    let (vname, driver) = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(match volume {
                Some(v) => format!("container {container} does not mount volume {v}"),
                None => format!(
                    "container {container} mounts no volume of a plugin (its volumes: {:?}): nothing for daffe to move",
                    c.volumes
                ),
            });
        }
        many => {
            return Err(format!(
                "container {container} mounts {} plugin volumes ({}): name the one to move with --volume (one volume per move)",
                many.len(),
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    let region = &dest.spec.region;
    let has = dest
        .engine
        .has_image(&c.image)
        .map_err(|e| format!("{region}: {e}"))?;
    if !has {
        return Err(format!(
            "{region} has no image {}: pull it there first (a move never pulls: it may take minutes)",
            c.image
        ));
    }
    if let Some(other) = dest
        .engine
        .inspect(container)
        .map_err(|e| format!("{region}: {e}"))?
        && other.running
    {
        return Err(format!("a container {container} already runs on {region}"));
    }
    Ok(Plan {
        container: container.to_owned(),
        image: c.image,
        volume: vname,
        driver,
        from: from.spec.region.clone(),
        to: region.clone(),
        from_addr: from.spec.addr.clone(),
        to_addr: dest.spec.addr.clone(),
        to_agent: dest.spec.agent.clone(),
    })
}

/// Moves a container and its volume between hosts.
pub(crate) struct TwoHostActuator<'a> {
    pub hosts: &'a [Host<'a>],
    pub container: String,
    pub volume: Option<String>,
    pub mover: &'a mut dyn Mover,
    pub on_step: &'a mut dyn FnMut(Step),
    /// The last move made (the forwarder's ends, the report).
    pub last: Option<Done>,
}

/// How the hosts were left by a failed move.
fn left(from: &str, from_state: &str, to: &str, to_state: &str) -> String {
    format!("{from}: {from_state}; {to}: {to_state}")
}

impl TwoHostActuator<'_> {
    fn move_to(&mut self, o: &MoveOrder) -> Result<Done, String> {
        let started = Instant::now();
        let p = plan(self.hosts, &self.container, self.volume.as_deref(), &o.to)?;
        let hosts = self.hosts;
        let src = hosts
            .iter()
            .find(|h| h.spec.region == p.from)
            .expect("planned");
        let dst = hosts
            .iter()
            .find(|h| h.spec.region == p.to)
            .expect("planned");
        let source = src
            .engine
            .inspect(&p.container)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} vanished from {}", p.container, p.from))?;
        let body = recreate_body(&source.raw);
        let mut stopped: Option<Result<(), EngineError>> = None;
        let on_step = &mut *self.on_step;
        let to_placed = placed(&o.service, &dst.spec, "starting");
        let result = self
            .mover
            .migrate(&p.volume, &src.spec, &dst.spec, &mut || {
                if stopped.is_none() {
                    on_step(Step::SourceStopping {
                        from: p.from.clone(),
                        to: to_placed.clone(),
                    });
                    stopped = Some(src.engine.stop(&source.id, STOP_GRACE));
                }
            });
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let stop_failed = match &stopped {
                    Some(Err(se)) => format!(" (stopping {} failed: {se})", p.container),
                    _ => String::new(),
                };
                if e.handing_over() {
                    return Err(format!(
                        "{e}{stop_failed}. {}",
                        left(
                            &p.from,
                            &format!(
                                "{} stopped (kept), volume {} fenced (kept)",
                                p.container, p.volume
                            ),
                            &p.to,
                            &format!(
                                "{} not created; finish with `daffe migrate {} --to {}` on {}, then start it",
                                p.container, p.volume, p.to_agent, p.from
                            ),
                        )
                    ));
                }
                // Before the handover: migrate gave the volume back.
                if stopped.is_some() {
                    (self.on_step)(Step::SourceRestarting);
                }
                let restarted = if matches!(stopped, Some(Ok(()))) {
                    match src.engine.start(&source.id) {
                        Ok(()) => format!(
                            "{} started again, volume {} unchanged",
                            p.container, p.volume
                        ),
                        Err(se) => format!(
                            "{} stopped and could not start again ({se}): `docker start {}` there; volume {} unchanged",
                            p.container, p.container, p.volume
                        ),
                    }
                } else {
                    format!(
                        "{} still running, volume {} unchanged",
                        p.container, p.volume
                    )
                };
                return Err(format!(
                    "{e}{stop_failed}. {}",
                    left(
                        &p.from,
                        &restarted,
                        &p.to,
                        "nothing started (a partial copy of the volume may be there, resumed by the next move)"
                    )
                ));
            }
        };
        // The volume is the destination's now. The container goes there;
        // the source keeps its stopped container (never removed).
        let after = |what: String| {
            format!(
                "volume {} moved to {}, but {what}. {}",
                p.volume,
                p.to,
                left(
                    &p.from,
                    &format!(
                        "{} stopped (kept), volume {} fenced: moved to {}",
                        p.container, p.volume, p.to
                    ),
                    &p.to,
                    &format!(
                        "volume {} owned there; container {} not running: fix and `docker start` it there, or move back with daffe migrate",
                        p.volume, p.container
                    ),
                )
            )
        };
        // A stopped copy from an earlier stay there is replaced (its data is
        // the volume's, which just arrived; the container itself is config).
        if let Some(old) = dst
            .engine
            .inspect(&p.container)
            .map_err(|e| after(format!("inspecting {} there failed: {e}", p.container)))?
        {
            if old.running {
                return Err(after(format!(
                    "a container {} already runs there",
                    p.container
                )));
            }
            dst.engine
                .remove(&old.id)
                .map_err(|e| after(format!("removing its stopped old copy failed: {e}")))?;
        }
        (self.on_step)(Step::DestinationStarting { to: p.to.clone() });
        let id = dst
            .engine
            .create(&p.container, &body)
            .map_err(|e| after(format!("creating {} failed: {e}", p.container)))?;
        dst.engine
            .start(&id)
            .map_err(|e| after(format!("starting {} failed: {e}", p.container)))?;
        Ok(Done {
            from: Some(placed(&o.service, &src.spec, "exited")),
            to: placed(&o.service, &dst.spec, "running"),
            took_s: started.elapsed().as_secs_f64(),
            migrate: serde_json::to_value(&report).ok(),
        })
    }
}

impl Actuator for TwoHostActuator<'_> {
    fn execute(&mut self, o: &MoveOrder) -> Result<Outcome, ActError> {
        let done = self.move_to(o).map_err(|msg| ActError {
            service: o.service.clone(),
            from: o.from.clone(),
            to: o.to.clone(),
            msg,
        })?;
        tracing::info!(service = %o.service, to = %done.to.node, took_s = done.took_s, "moved");
        self.last = Some(done);
        Ok(Outcome::Moved)
    }
}

/// How long `follow` waits for the unmount it causes itself: the stop's
/// grace and the engine's answer, and room for the volume's unmount.
pub(crate) const UNMOUNT_LIMIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests;
