//! Swarm mode: where a service runs ([`locate`], for `daffe placement
//! where` and for the forwarder), and the actuator that moves it by
//! rewriting its region constraint. Swarm then stops the task and starts
//! it on a node of the new region, and cluster mode's Mount there pulls
//! the volume from the last writer: this code moves neither itself.

use super::constraint::{meets_all, with_region};
use super::engine::{self, EngineError, NodeInfo, SwarmApi, TaskInfo};
use placement::actuator::{ActError, Actuator, MoveOrder, Outcome};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Where a service's task is meant to run now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Placed {
    pub service: String,
    pub node: String,
    pub node_id: String,
    /// The node's address (clients and the forwarder go there).
    pub addr: String,
    /// The node's region label, if it has one.
    pub region: Option<String>,
    /// The task's state (`running`, or `pending`, `starting` ... during a move).
    pub state: String,
}

/// States of a task that the scheduler has placed and that has not ended:
/// its node is where the service is (or is about to be).
fn live(t: &TaskInfo) -> bool {
    t.desired == "running"
        && !t.node_id.is_empty()
        && !matches!(
            t.state.as_str(),
            "complete" | "failed" | "shutdown" | "rejected" | "orphaned" | "remove"
        )
}

/// The node of the service's live task: the running one if there is one,
/// else the one being started. None when no task is placed (pending, or
/// the service is scaled to 0).
pub(crate) fn locate(
    api: &dyn SwarmApi,
    service: &str,
    label: &str,
) -> Result<Option<Placed>, EngineError> {
    let tasks = api.tasks(service)?;
    let pick = tasks
        .iter()
        .filter(|t| live(t))
        .max_by_key(|t| t.state == "running");
    let Some(t) = pick else {
        return Ok(None);
    };
    let nodes = api.nodes()?;
    let n = nodes.iter().find(|n| n.id == t.node_id);
    Ok(Some(Placed {
        service: service.to_owned(),
        node: n.map(|n| n.hostname.clone()).unwrap_or_default(),
        node_id: t.node_id.clone(),
        addr: n.map(|n| n.addr.clone()).unwrap_or_default(),
        region: n.and_then(|n| n.labels.get(label).cloned()),
        state: t.state.clone(),
    }))
}

/// Regions of the schedulable nodes (the sites a service can go to).
pub(crate) fn regions(nodes: &[NodeInfo], label: &str) -> Vec<String> {
    let mut r: Vec<String> = nodes
        .iter()
        .filter(|n| n.schedulable)
        .filter_map(|n| n.labels.get(label).cloned())
        .collect();
    r.sort();
    r.dedup();
    r
}

/// How long and how often the actuator waits for the task to run in the
/// new region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    pub limit: Duration,
    pub poll: Duration,
}

impl Default for Wait {
    /// Stop (10 s grace), the volume's hand-over, image present: the
    /// planned moves measured in BENCHMARKS.md take 2-20 s; 120 s leaves room
    /// for a large volume's final round without waiting forever.
    fn default() -> Self {
        Self {
            limit: Duration::from_secs(120),
            poll: Duration::from_millis(250),
        }
    }
}

/// A move carried out: from where to where (the forwarder's two ends).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Done {
    pub from: Option<Placed>,
    pub to: Placed,
    pub took_s: f64,
    /// Two-host mode: the migration's report (`daffe migrate --json`'s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate: Option<serde_json::Value>,
}

/// Moves a Swarm service by its region constraint.
pub(crate) struct SwarmActuator<'a> {
    pub api: &'a dyn SwarmApi,
    /// The node label holding the region (`region`).
    pub label: String,
    pub wait: Wait,
    /// The last move made, for the caller (forwarding, reports).
    pub last: Option<Done>,
}

impl SwarmActuator<'_> {
    fn fail(&self, o: &MoveOrder, msg: impl std::fmt::Display) -> ActError {
        ActError {
            service: o.service.clone(),
            from: o.from.clone(),
            to: o.to.clone(),
            msg: msg.to_string(),
        }
    }

    fn move_to(&mut self, o: &MoveOrder) -> Result<Done, String> {
        let started = Instant::now();
        let e = |e: EngineError| e.to_string();
        let from = locate(self.api, &o.service, &self.label).map_err(e)?;
        let svc = self.api.service(&o.service).map_err(e)?;
        let cs = with_region(&engine::constraints(&svc.spec), &self.label, &o.to);
        // Refuse a move no node can take before touching the service: a
        // constraint nothing meets leaves the task pending, the service down.
        let nodes = self.api.nodes().map_err(e)?;
        if !nodes.iter().any(|n| n.schedulable && meets_all(n, &cs)) {
            return Err(format!(
                "no schedulable node has label {}={} and meets the service's other constraints {:?}; the service is left where it is",
                self.label, o.to, cs
            ));
        }
        let mut spec = svc.spec.clone();
        engine::set_constraints(&mut spec, &cs);
        self.api
            .update_service(&svc.id, svc.version, &spec)
            .map_err(e)?;
        let deadline = started + self.wait.limit;
        loop {
            // An engine that does not answer for a moment (leader election)
            // is waited out within the limit, like a task still starting.
            match locate(self.api, &o.service, &self.label) {
                Ok(Some(p)) if p.state == "running" && p.region.as_deref() == Some(&o.to) => {
                    return Ok(Done {
                        from,
                        to: p,
                        took_s: started.elapsed().as_secs_f64(),
                        migrate: None,
                    });
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "follow: waiting for the move"),
            }
            if Instant::now() >= deadline {
                let tasks = self.api.tasks(&o.service).unwrap_or_default();
                let why = tasks
                    .iter()
                    .filter(|t| t.desired == "running")
                    .map(|t| format!("{} {}", t.state, t.error))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(format!(
                    "the constraint is {:?} but no task runs in {} after {} s (tasks: {why}); Swarm keeps trying",
                    cs.last().cloned().unwrap_or_default(),
                    o.to,
                    self.wait.limit.as_secs()
                ));
            }
            std::thread::sleep(self.wait.poll);
        }
    }
}

impl Actuator for SwarmActuator<'_> {
    fn execute(&mut self, o: &MoveOrder) -> Result<Outcome, ActError> {
        let done = self.move_to(o).map_err(|m| self.fail(o, m))?;
        tracing::info!(service = %o.service, to = %done.to.node, took_s = done.took_s, "moved");
        self.last = Some(done);
        Ok(Outcome::Moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::fake::FakeSwarm;

    fn order(to: &str) -> MoveOrder {
        MoveOrder {
            service: "counter".into(),
            from: "us-east-1".into(),
            to: to.into(),
            expected_downtime_s: 1.0,
            reason: "test".into(),
        }
    }

    fn quick() -> Wait {
        Wait {
            limit: Duration::from_millis(300),
            poll: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_move_rewrites_the_region_constraint_and_waits_for_the_task_there() {
        let fake = FakeSwarm::three_regions();
        fake.create(
            "counter",
            &["node.labels.region==us-east-1", "node.role==manager"],
        );
        fake.set_lag(3);
        let here = locate(&fake, "counter", "region").unwrap().unwrap();
        assert_eq!((here.node.as_str(), here.state.as_str()), ("n1", "running"));
        let mut act = SwarmActuator {
            api: &fake,
            label: "region".into(),
            wait: quick(),
            last: None,
        };
        assert_eq!(act.execute(&order("eu-west-1")).unwrap(), Outcome::Moved);
        assert_eq!(
            fake.constraints("counter"),
            vec!["node.role==manager", "node.labels.region==eu-west-1"]
        );
        let done = act.last.clone().unwrap();
        assert_eq!(done.from.unwrap().node, "n1");
        assert_eq!(done.to.node, "n2");
        assert_eq!(done.to.addr, "10.0.0.2");
        assert_eq!(fake.updates(), 1);
        // A task on its way counts as "where it is" for the forwarder.
        fake.set_lag(5);
        act.execute(&order("ap-northeast-1")).unwrap();
        assert_eq!(act.last.as_ref().unwrap().to.node, "n3");
    }

    #[test]
    fn a_region_without_a_node_is_refused_before_the_service_is_touched() {
        let fake = FakeSwarm::three_regions();
        fake.create("counter", &["node.labels.region==us-east-1"]);
        let mut act = SwarmActuator {
            api: &fake,
            label: "region".into(),
            wait: quick(),
            last: None,
        };
        let e = act.execute(&order("sa-east-1")).unwrap_err();
        assert!(e.msg.contains("no schedulable node"), "{e}");
        // A drained node does not count either.
        fake.drain("n2");
        let e = act.execute(&order("eu-west-1")).unwrap_err();
        assert!(e.msg.contains("no schedulable node"), "{e}");
        assert_eq!(fake.updates(), 0);
        assert_eq!(
            fake.constraints("counter"),
            vec!["node.labels.region==us-east-1"]
        );
    }

    #[test]
    fn a_task_that_never_starts_is_an_error_within_the_limit() {
        let fake = FakeSwarm::three_regions();
        fake.create("counter", &["node.labels.region==us-east-1"]);
        fake.never_start("n2");
        let mut act = SwarmActuator {
            api: &fake,
            label: "region".into(),
            wait: quick(),
            last: None,
        };
        let t = Instant::now();
        let e = act.execute(&order("eu-west-1")).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.msg.contains("no task runs in eu-west-1"), "{e}");
        assert!(e.msg.contains("preparing"), "{e}");
        assert!(act.last.is_none());
    }

    #[test]
    fn a_concurrent_update_is_refused_by_version_not_overwritten() {
        let fake = FakeSwarm::three_regions();
        fake.create("counter", &["node.labels.region==us-east-1"]);
        // Someone else updates between our read and our write.
        fake.bump_version_on_next_read("counter");
        let mut act = SwarmActuator {
            api: &fake,
            label: "region".into(),
            wait: quick(),
            last: None,
        };
        let e = act.execute(&order("eu-west-1")).unwrap_err();
        assert!(e.msg.contains("out of sequence"), "{e}");
        assert_eq!(
            fake.constraints("counter"),
            vec!["node.labels.region==us-east-1"]
        );
    }

    #[test]
    fn regions_are_those_of_schedulable_labelled_nodes() {
        let fake = FakeSwarm::three_regions();
        fake.drain("n3");
        let r = regions(&fake.nodes().unwrap(), "region");
        assert_eq!(r, vec!["eu-west-1", "us-east-1"]);
        assert!(regions(&fake.nodes().unwrap(), "zone").is_empty());
    }
}
