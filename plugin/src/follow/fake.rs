//! A faithful double of a swarm manager for the actuator's tests: nodes
//! with labels and availability, services whose updates are refused when
//! their version is stale (as the engine's "update out of sequence"), and a
//! scheduler that, on an update, shuts the old task down and places a new
//! one on a schedulable node meeting every constraint (pending, on no node,
//! when none does), which runs after a few looks at the tasks (`lag`), or
//! never on a node told so.

use super::constraint::meets_all;
use super::engine::{self, EngineError, NodeInfo, ServiceInfo, SwarmApi, TaskInfo, constraints};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Svc {
    id: String,
    version: u64,
    spec: Value,
    bump_on_read: bool,
}

#[derive(Debug)]
struct Task {
    info: TaskInfo,
    service: String,
    /// Looks at the tasks left before it runs.
    left: u32,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: Vec<NodeInfo>,
    services: BTreeMap<String, Svc>,
    tasks: Vec<Task>,
    lag: u32,
    never: Vec<String>,
    updates: u32,
    seq: u32,
}

#[derive(Debug, Default)]
pub(crate) struct FakeSwarm(Mutex<Inner>);

impl FakeSwarm {
    /// n1 us-east-1 (10.0.0.1), n2 eu-west-1, n3 ap-northeast-1; all
    /// managers, all schedulable.
    pub(crate) fn three_regions() -> Self {
        let nodes = [
            ("n1", "us-east-1"),
            ("n2", "eu-west-1"),
            ("n3", "ap-northeast-1"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (h, r))| NodeInfo {
            id: format!("id-{h}"),
            hostname: (*h).to_owned(),
            addr: format!("10.0.0.{}", i + 1),
            labels: [("region".to_owned(), (*r).to_owned())].into(),
            role: "manager".into(),
            schedulable: true,
        })
        .collect();
        Self(Mutex::new(Inner {
            nodes,
            ..Inner::default()
        }))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A service whose task already runs where its constraints allow.
    pub(crate) fn create(&self, name: &str, cs: &[&str]) {
        self.with(|s| {
            let mut spec = serde_json::json!({"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}});
            let cs: Vec<String> = cs.iter().map(|c| (*c).to_owned()).collect();
            engine::set_constraints(&mut spec, &cs);
            s.services.insert(
                name.to_owned(),
                Svc {
                    id: format!("sid-{name}"),
                    version: 1,
                    spec,
                    bump_on_read: false,
                },
            );
            s.schedule(name, 0);
        });
    }

    pub(crate) fn set_lag(&self, looks: u32) {
        self.with(|s| s.lag = looks);
    }

    pub(crate) fn drain(&self, host: &str) {
        self.with(|s| {
            for n in s.nodes.iter_mut().filter(|n| n.hostname == host) {
                n.schedulable = false;
            }
        });
    }

    pub(crate) fn never_start(&self, host: &str) {
        self.with(|s| s.never.push(format!("id-{host}")));
    }

    pub(crate) fn bump_version_on_next_read(&self, name: &str) {
        self.with(|s| {
            if let Some(v) = s.services.get_mut(name) {
                v.bump_on_read = true;
            }
        });
    }

    pub(crate) fn constraints(&self, name: &str) -> Vec<String> {
        self.with(|s| constraints(&s.services[name].spec))
    }

    pub(crate) fn updates(&self) -> u32 {
        self.with(|s| s.updates)
    }
}

impl Inner {
    /// Shuts the service's live tasks down and places a new one.
    fn schedule(&mut self, name: &str, lag: u32) {
        for t in self.tasks.iter_mut().filter(|t| t.service == name) {
            t.info.desired = "shutdown".into();
            t.info.state = "shutdown".into();
        }
        let cs = constraints(&self.services[name].spec);
        let node = self
            .nodes
            .iter()
            .find(|n| n.schedulable && meets_all(n, &cs))
            .map(|n| n.id.clone());
        self.seq += 1;
        let (node_id, state) = match node {
            Some(id) if lag == 0 && !self.never.contains(&id) => (id, "running"),
            Some(id) => (id, "preparing"),
            None => (String::new(), "pending"),
        };
        self.tasks.push(Task {
            info: TaskInfo {
                id: format!("t{}", self.seq),
                node_id,
                desired: "running".into(),
                state: state.into(),
                error: String::new(),
            },
            service: name.to_owned(),
            left: lag,
        });
    }
}

impl SwarmApi for FakeSwarm {
    fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(self.with(|s| s.nodes.clone()))
    }

    fn service(&self, name: &str) -> Result<ServiceInfo, EngineError> {
        self.with(|s| {
            let v = s
                .services
                .get_mut(name)
                .ok_or_else(|| EngineError::NoService(name.to_owned()))?;
            let info = ServiceInfo {
                id: v.id.clone(),
                name: name.to_owned(),
                version: v.version,
                spec: v.spec.clone(),
            };
            if std::mem::take(&mut v.bump_on_read) {
                v.version += 1;
            }
            Ok(info)
        })
    }

    fn update_service(&self, id: &str, version: u64, spec: &Value) -> Result<(), EngineError> {
        self.with(|s| {
            let name = s
                .services
                .iter()
                .find(|(_, v)| v.id == id)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| EngineError::NoService(id.to_owned()))?;
            let v = s.services.get_mut(&name).expect("found above");
            if v.version != version {
                return Err(EngineError::Refused {
                    what: "POST /services/update".into(),
                    status: 500,
                    message: "rpc error: code = Unknown desc = update out of sequence".into(),
                });
            }
            v.version += 1;
            v.spec = spec.clone();
            s.updates += 1;
            let lag = s.lag;
            s.schedule(&name, lag);
            Ok(())
        })
    }

    fn tasks(&self, service: &str) -> Result<Vec<TaskInfo>, EngineError> {
        self.with(|s| {
            let never = s.never.clone();
            let mut out = Vec::new();
            for t in s.tasks.iter_mut().filter(|t| t.service == service) {
                if t.info.desired == "running" && t.info.state == "preparing" {
                    if t.left > 0 {
                        t.left -= 1;
                    } else if !never.contains(&t.info.node_id) {
                        t.info.state = "running".into();
                    }
                }
                out.push(t.info.clone());
            }
            // The engine lists newest first.
            out.reverse();
            Ok(out)
        })
    }
}
