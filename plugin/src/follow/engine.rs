//! The few Docker Engine (Swarm) API calls `daffe follow` and `daffe
//! placement where` make, behind [`SwarmApi`] so the actuator is tested
//! against a faithful double (`follow/fake.rs`). [`EngineClient`] is the
//! real one: HTTP/1 over the engine's unix socket (hyperlocal, as the
//! control client), every call bounded by [`CALL_LIMIT`].
//!
//! Replies are parsed by pure functions ([`parse_nodes`], [`parse_tasks`],
//! [`parse_service`]) tested on JSON the engine sends. The service's spec
//! stays a `serde_json::Value`: an update must send back every field the
//! engine gave, including those this code does not know.

use crate::unix_http::{UnixHttpError, percent_encode};
use hyper::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One engine call's limit: a manager answers these from its raft store in
/// milliseconds; 10 s covers a leader election without hanging `follow`.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The engine's socket when none is given (Docker's default).
pub(crate) const DEFAULT_ENGINE: &str = "/var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("cannot reach the Docker engine at {socket}: {message}")]
    Connect { socket: PathBuf, message: String },
    #[error("the Docker engine at {socket} did not answer {what} within {secs} s")]
    Timeout {
        socket: PathBuf,
        what: String,
        secs: u64,
    },
    #[error("no service {0:?} in this swarm")]
    NoService(String),
    #[error("the Docker engine refused {what}: {status}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("the Docker engine's reply to {what} is not what daffe expects: {message}")]
    Reply { what: String, message: String },
}

/// A swarm node as `follow` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub id: String,
    pub hostname: String,
    /// The address other nodes and clients reach it at.
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    pub role: String,
    /// Status `ready` and availability `active`: tasks can go there.
    pub schedulable: bool,
}

/// A task of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskInfo {
    pub id: String,
    /// Empty until the scheduler assigns one.
    pub node_id: String,
    pub desired: String,
    pub state: String,
    pub error: String,
}

/// A service: its id, the version an update must name, and its spec.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceInfo {
    pub id: String,
    pub name: String,
    pub version: u64,
    pub spec: Value,
}

/// What `follow` asks of a swarm manager.
pub(crate) trait SwarmApi {
    fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;
    /// The service named (or with this id).
    fn service(&self, name: &str) -> Result<ServiceInfo, EngineError>;
    /// Replaces the service's spec; `version` is the one read with it (the
    /// engine refuses a stale one: someone else updated in between).
    fn update_service(&self, id: &str, version: u64, spec: &Value) -> Result<(), EngineError>;
    /// The service's tasks (all states).
    fn tasks(&self, service: &str) -> Result<Vec<TaskInfo>, EngineError>;
}

fn bad(what: &str, message: impl Into<String>) -> EngineError {
    EngineError::Reply {
        what: what.to_owned(),
        message: message.into(),
    }
}

fn text(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_default().to_owned()
}

/// The host part of `ip:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, _)) if !h.contains(':') => h,
        _ => addr,
    }
}

/// `GET /nodes`.
pub(crate) fn parse_nodes(v: &Value) -> Result<Vec<NodeInfo>, EngineError> {
    let arr = v
        .as_array()
        .ok_or_else(|| bad("GET /nodes", "not a list"))?;
    arr.iter()
        .map(|n| {
            let id = text(n, &["ID"]);
            if id.is_empty() {
                return Err(bad("GET /nodes", "a node without an ID"));
            }
            let labels = n["Spec"]["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            // A manager may report 0.0.0.0 in Status.Addr (moby#35437);
            // its raft address names the interface it advertised.
            let mut addr = text(n, &["Status", "Addr"]);
            if addr.is_empty() || addr == "0.0.0.0" {
                addr = host_of(&text(n, &["ManagerStatus", "Addr"])).to_owned();
            }
            Ok(NodeInfo {
                hostname: text(n, &["Description", "Hostname"]),
                addr,
                labels,
                role: text(n, &["Spec", "Role"]),
                schedulable: text(n, &["Status", "State"]) == "ready"
                    && text(n, &["Spec", "Availability"]) == "active",
                id,
            })
        })
        .collect()
}

/// `GET /tasks?filters=...`.
pub(crate) fn parse_tasks(v: &Value) -> Result<Vec<TaskInfo>, EngineError> {
    let arr = v
        .as_array()
        .ok_or_else(|| bad("GET /tasks", "not a list"))?;
    Ok(arr
        .iter()
        .map(|t| TaskInfo {
            id: text(t, &["ID"]),
            node_id: text(t, &["NodeID"]),
            desired: text(t, &["DesiredState"]),
            state: text(t, &["Status", "State"]),
            error: text(t, &["Status", "Err"]),
        })
        .collect())
}

/// `GET /services/NAME`.
pub(crate) fn parse_service(v: &Value) -> Result<ServiceInfo, EngineError> {
    let what = "GET /services";
    let id = text(v, &["ID"]);
    let version = v["Version"]["Index"]
        .as_u64()
        .ok_or_else(|| bad(what, "no Version.Index"))?;
    if id.is_empty() || !v["Spec"].is_object() {
        return Err(bad(what, "no ID or Spec"));
    }
    Ok(ServiceInfo {
        id,
        name: text(v, &["Spec", "Name"]),
        version,
        spec: v["Spec"].clone(),
    })
}

/// The placement constraints of a service spec.
pub(crate) fn constraints(spec: &Value) -> Vec<String> {
    spec["TaskTemplate"]["Placement"]["Constraints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets a spec's placement constraints, keeping everything else.
pub(crate) fn set_constraints(spec: &mut Value, cs: &[String]) {
    if !spec["TaskTemplate"].is_object() {
        spec["TaskTemplate"] = serde_json::json!({});
    }
    let tt = &mut spec["TaskTemplate"];
    if !tt["Placement"].is_object() {
        tt["Placement"] = serde_json::json!({});
    }
    tt["Placement"]["Constraints"] = serde_json::json!(cs);
}

/// The real engine: a swarm manager's API socket.
#[derive(Debug, Clone)]
pub(crate) struct EngineClient {
    socket: PathBuf,
}

impl EngineClient {
    pub(crate) fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// One call; the reply's JSON (Null for an empty body), or the refusal.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, EngineError> {
        self.call_within(method, path, body, CALL_LIMIT)
    }

    /// [`Self::call`] with its own limit (a container's stop waits out its
    /// grace before the engine answers).
    pub(crate) fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<Value, EngineError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EngineError::Connect {
                socket: self.socket.clone(),
                message: e.to_string(),
            })?;
        rt.block_on(async {
            let (status, bytes) =
                crate::unix_http::request(&self.socket, method, path, body, limit)
                    .await
                    .map_err(|e| match e {
                        UnixHttpError::Connect(message) => EngineError::Connect {
                            socket: self.socket.clone(),
                            message,
                        },
                        UnixHttpError::Timeout => EngineError::Timeout {
                            socket: self.socket.clone(),
                            what: what.clone(),
                            secs: limit.as_secs(),
                        },
                    })?;
            let value: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| bad(&what, e.to_string()))?
            };
            if !status.is_success() {
                return Err(EngineError::Refused {
                    what,
                    status: status.as_u16(),
                    message: value["message"]
                        .as_str()
                        .unwrap_or("(no message)")
                        .to_owned(),
                });
            }
            Ok(value)
        })
    }
}

impl SwarmApi for EngineClient {
    fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        parse_nodes(&self.call(Method::GET, "/nodes", None)?)
    }

    fn service(&self, name: &str) -> Result<ServiceInfo, EngineError> {
        let path = format!("/services/{}", percent_encode(name));
        match self.call(Method::GET, &path, None) {
            Err(EngineError::Refused { status, .. })
                if status == StatusCode::NOT_FOUND.as_u16() =>
            {
                Err(EngineError::NoService(name.to_owned()))
            }
            r => parse_service(&r?),
        }
    }

    fn update_service(&self, id: &str, version: u64, spec: &Value) -> Result<(), EngineError> {
        let path = format!("/services/{}/update?version={version}", percent_encode(id));
        self.call(Method::POST, &path, Some(spec)).map(|_| ())
    }

    fn tasks(&self, service: &str) -> Result<Vec<TaskInfo>, EngineError> {
        let filters = serde_json::json!({ "service": { service: true } }).to_string();
        let path = format!("/tasks?filters={}", percent_encode(&filters));
        let tasks = parse_tasks(&self.call(Method::GET, &path, None)?)?;
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse_from_the_engine_reply_and_a_manager_s_zero_address_is_replaced() {
        let v: Value = serde_json::from_str(
            r#"[
            {"ID":"n1","Spec":{"Labels":{"region":"eu-west-1"},"Role":"manager","Availability":"active"},
             "Description":{"Hostname":"swnode1"},
             "Status":{"State":"ready","Addr":"0.0.0.0"},
             "ManagerStatus":{"Leader":true,"Reachability":"reachable","Addr":"10.232.0.1:2377"}},
            {"ID":"n2","Spec":{"Labels":{},"Role":"worker","Availability":"drain"},
             "Description":{"Hostname":"swnode2"},
             "Status":{"State":"ready","Addr":"10.232.0.2"}},
            {"ID":"n3","Spec":{"Role":"worker","Availability":"active"},
             "Description":{"Hostname":"swnode3"},
             "Status":{"State":"down","Addr":"10.232.0.3"}}
            ]"#,
        )
        .unwrap();
        let n = parse_nodes(&v).unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].addr, "10.232.0.1");
        assert_eq!(n[0].labels["region"], "eu-west-1");
        assert!(n[0].schedulable);
        assert!(!n[1].schedulable, "drained");
        assert!(!n[2].schedulable, "down");
        assert!(n[2].labels.is_empty());
        assert!(parse_nodes(&serde_json::json!({"message": "x"})).is_err());
        assert!(parse_nodes(&serde_json::json!([{"Spec": {}}])).is_err());
    }

    #[test]
    fn a_service_parses_and_its_constraints_are_replaced_keeping_unknown_fields() {
        let v: Value = serde_json::from_str(
            r#"{"ID":"s1","Version":{"Index":42},
                "Spec":{"Name":"counter","Labels":{"x":"y"},
                        "TaskTemplate":{"ContainerSpec":{"Image":"busybox"},
                                        "Placement":{"Constraints":["node.labels.region==us-east-1","node.role==manager"],
                                                     "Preferences":[{"Spread":{"SpreadDescriptor":"node.labels.rack"}}]},
                                        "FutureField":7},
                        "Mode":{"Replicated":{"Replicas":1}}}}"#,
        )
        .unwrap();
        let s = parse_service(&v).unwrap();
        assert_eq!(
            (s.id.as_str(), s.name.as_str(), s.version),
            ("s1", "counter", 42)
        );
        assert_eq!(
            constraints(&s.spec),
            vec!["node.labels.region==us-east-1", "node.role==manager"]
        );
        let mut spec = s.spec.clone();
        set_constraints(&mut spec, &["node.labels.region==eu-west-1".into()]);
        assert_eq!(constraints(&spec), vec!["node.labels.region==eu-west-1"]);
        assert_eq!(spec["TaskTemplate"]["FutureField"], 7);
        assert_eq!(
            spec["TaskTemplate"]["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
            "node.labels.rack"
        );
        // A spec without any placement gets one.
        let mut bare = serde_json::json!({"Name": "x"});
        set_constraints(&mut bare, &["node.labels.region==a".into()]);
        assert_eq!(constraints(&bare), vec!["node.labels.region==a"]);
        assert!(parse_service(&serde_json::json!({"ID": "s"})).is_err());
    }

    #[test]
    fn tasks_parse_and_queries_are_escaped() {
        let v: Value = serde_json::from_str(
            r#"[{"ID":"t1","NodeID":"n2","DesiredState":"running","Status":{"State":"starting"}},
                {"ID":"t0","NodeID":"n1","DesiredState":"shutdown","Status":{"State":"failed","Err":"boom"}}]"#,
        )
        .unwrap();
        let t = parse_tasks(&v).unwrap();
        assert_eq!(t[0].node_id, "n2");
        assert_eq!(t[0].state, "starting");
        assert_eq!(t[1].error, "boom");
        assert_eq!(percent_encode("{\"a\":1}"), "%7B%22a%22%3A1%7D");
        assert_eq!(host_of("10.0.0.1:2377"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:2377"), "fd00::1");
    }

    #[test]
    fn an_engine_that_is_not_there_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = EngineClient::new(&dir.path().join("absent.sock"))
            .nodes()
            .unwrap_err();
        assert!(matches!(e, EngineError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("absent.sock"), "{e}");
    }
}
