//! The Docker Engine container calls of two-host mode (`daffe follow
//! --host ...`, no Swarm): inspect a container on the host it runs on, stop
//! it when `daffe migrate` asks for the unmount, and create and start the
//! same container on the destination's engine. Behind [`ContainerApi`] so
//! the actuator is tested against a faithful double (`fake_hosts.rs`);
//! [`EngineClient`] is the real one (hyperlocal, every call bounded).
//!
//! What is carried over is decided by a pure function ([`recreate_body`])
//! tested on the JSON the engine sends: the container's `Config` (image,
//! command, environment, ports, labels ...) and the part of its
//! `HostConfig` that says how it runs rather than where (network mode, port
//! bindings, volumes with their driver, restart policy ...). Host-bound
//! fields (device paths, cgroup parents, a pid file) stay behind.

use super::engine::{EngineClient, EngineError};
use crate::unix_http::percent_encode;
use serde_json::{Map, Value};
use std::time::Duration;

/// How long Docker gives the container to exit after SIGTERM before
/// SIGKILL (`docker stop`'s default).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// A container as two-host mode needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub running: bool,
    pub image: String,
    /// The named volumes it mounts: (volume name, driver).
    pub volumes: Vec<(String, String)>,
    /// The whole `GET /containers/NAME/json` reply, for [`recreate_body`].
    pub raw: Value,
}

/// What two-host mode asks of one host's engine.
pub(crate) trait ContainerApi {
    /// The container named, or None when this engine has none by that name.
    fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError>;
    /// Whether this engine has the image (a move never pulls: a pull may
    /// take minutes, past any sane bound; the plan refuses instead).
    fn has_image(&self, image: &str) -> Result<bool, EngineError>;
    /// `docker stop`: SIGTERM, SIGKILL after `grace`.
    fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError>;
    /// `docker rm` (never with its volumes: a volume's data is not ours to
    /// drop). Only for a stopped copy left by an earlier move.
    fn remove(&self, id: &str) -> Result<(), EngineError>;
    /// `docker create --name NAME` with the body of [`recreate_body`]; the new id.
    fn create(&self, name: &str, body: &Value) -> Result<String, EngineError>;
    fn start(&self, id: &str) -> Result<(), EngineError>;
}

fn bad(what: &str, message: impl Into<String>) -> EngineError {
    EngineError::Reply {
        what: what.to_owned(),
        message: message.into(),
    }
}

/// `GET /containers/NAME/json`.
pub(crate) fn parse_container(v: &Value) -> Result<ContainerInfo, EngineError> {
    let what = "GET /containers/json";
    let id = v["Id"].as_str().unwrap_or_default().to_owned();
    if id.is_empty() || !v["Config"].is_object() {
        return Err(bad(what, "no Id or Config"));
    }
    let volumes = v["Mounts"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["Type"] == "volume")
                .map(|m| {
                    (
                        m["Name"].as_str().unwrap_or_default().to_owned(),
                        m["Driver"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ContainerInfo {
        name: v["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        running: v["State"]["Running"].as_bool().unwrap_or(false),
        image: v["Config"]["Image"].as_str().unwrap_or_default().to_owned(),
        volumes,
        raw: v.clone(),
        id,
    })
}

/// `HostConfig` fields that say how the container runs, not where: carried
/// to the destination. Anything else (devices, cgroup parent, CPU sets,
/// log paths) names things of the source host.
const CARRIED_HOST_CONFIG: &[&str] = &[
    "Binds",
    "Mounts",
    "VolumeDriver",
    "NetworkMode",
    "PortBindings",
    "PublishAllPorts",
    "RestartPolicy",
    "AutoRemove",
    "CapAdd",
    "CapDrop",
    "Privileged",
    "Init",
    "ExtraHosts",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ReadonlyRootfs",
    "Tmpfs",
    "ShmSize",
    "Ulimits",
    "Memory",
    "NanoCpus",
    "SecurityOpt",
];

/// The `POST /containers/create` body that makes the same container on
/// another engine: its `Config` (less the hostname Docker derived from the
/// old id) and the carried `HostConfig` fields.
pub(crate) fn recreate_body(inspect: &Value) -> Value {
    let mut body = match &inspect["Config"] {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    // Docker sets Hostname to the first 12 characters of the id when none
    // was given: keep it only if it was chosen.
    let id = inspect["Id"].as_str().unwrap_or_default();
    if let Some(h) = body.get("Hostname").and_then(Value::as_str)
        && (h.is_empty() || id.starts_with(h))
    {
        body.remove("Hostname");
    }
    let mut hc = Map::new();
    if let Value::Object(src) = &inspect["HostConfig"] {
        for k in CARRIED_HOST_CONFIG {
            if let Some(v) = src.get(*k).filter(|v| !v.is_null()) {
                hc.insert((*k).to_owned(), v.clone());
            }
        }
    }
    body.insert("HostConfig".into(), Value::Object(hc));
    Value::Object(body)
}

impl ContainerApi for EngineClient {
    fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let path = format!("/containers/{}/json", percent_encode(name));
        match self.call(hyper::Method::GET, &path, None) {
            Err(EngineError::Refused { status: 404, .. }) => Ok(None),
            r => parse_container(&r?).map(Some),
        }
    }

    fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        // The image name may hold a `/` (a repository): the engine takes it
        // unescaped in the path.
        let path = format!("/images/{image}/json");
        match self.call(hyper::Method::GET, &path, None) {
            Err(EngineError::Refused { status: 404, .. }) => Ok(false),
            r => r.map(|_| true),
        }
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let path = format!(
            "/containers/{}/stop?t={}",
            percent_encode(id),
            grace.as_secs()
        );
        // The engine answers once the container exited: the grace, then
        // the kill, within the usual call limit past it.
        match self.call_within(
            hyper::Method::POST,
            &path,
            None,
            grace + super::engine::CALL_LIMIT,
        ) {
            // 304: already stopped.
            Err(EngineError::Refused { status: 304, .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, id: &str) -> Result<(), EngineError> {
        let path = format!("/containers/{}", percent_encode(id));
        self.call(hyper::Method::DELETE, &path, None).map(drop)
    }

    fn create(&self, name: &str, body: &Value) -> Result<String, EngineError> {
        let path = format!("/containers/create?name={}", percent_encode(name));
        let v = self.call(hyper::Method::POST, &path, Some(body))?;
        v["Id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad("POST /containers/create", "no Id"))
    }

    fn start(&self, id: &str) -> Result<(), EngineError> {
        let path = format!("/containers/{}/start", percent_encode(id));
        match self.call(hyper::Method::POST, &path, None) {
            Err(EngineError::Refused { status: 304, .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `docker inspect` of the web counter (engine 27).
    const COUNTER: &str = r#"{
        "Id": "4f2a9c1e7b3d5a6f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f",
        "Name": "/counter",
        "State": {"Status": "running", "Running": true, "Pid": 4242},
        "Config": {"Hostname": "4f2a9c1e7b3d", "Image": "daffe-test/busybox:latest",
                   "Cmd": ["sh", "-c", "exec httpd -f -p 8080"], "Env": ["PATH=/bin", "LABEL=A"],
                   "ExposedPorts": {"8080/tcp": {}}, "Labels": {"app": "counter"},
                   "WorkingDir": "/data", "FutureField": 1},
        "HostConfig": {"NetworkMode": "host", "VolumeDriver": "daffe",
                       "Binds": ["counter@gold:/data"],
                       "PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "8080"}]},
                       "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                       "CgroupParent": "/host/slice", "Devices": [{"PathOnHost": "/dev/loop7"}],
                       "ContainerIDFile": "/tmp/cid", "Mounts": null},
        "Mounts": [{"Type": "volume", "Name": "counter@gold", "Driver": "daffe",
                    "Destination": "/data"},
                   {"Type": "bind", "Source": "/etc/hosts", "Destination": "/etc/hosts"}]
    }"#;

    #[test]
    fn a_container_parses_with_its_named_volumes_and_driver() {
        let c = parse_container(&serde_json::from_str(COUNTER).unwrap()).unwrap();
        assert_eq!(c.name, "counter");
        assert!(c.running);
        assert_eq!(c.image, "daffe-test/busybox:latest");
        assert_eq!(c.volumes, vec![("counter@gold".into(), "daffe".into())]);
        assert!(parse_container(&serde_json::json!({"Id": "x"})).is_err());
        assert!(parse_container(&serde_json::json!({"message": "no"})).is_err());
    }

    #[test]
    fn the_recreated_container_keeps_how_it_runs_and_drops_what_names_the_old_host() {
        let b = recreate_body(&serde_json::from_str(COUNTER).unwrap());
        assert_eq!(b["Image"], "daffe-test/busybox:latest");
        assert_eq!(b["Cmd"][2], "exec httpd -f -p 8080");
        assert_eq!(b["Env"][1], "LABEL=A");
        assert_eq!(b["ExposedPorts"]["8080/tcp"], serde_json::json!({}));
        assert_eq!(b["Labels"]["app"], "counter");
        assert_eq!(b["WorkingDir"], "/data");
        assert_eq!(b["FutureField"], 1, "unknown Config fields are kept");
        assert!(b.get("Hostname").is_none(), "the derived hostname goes");
        let hc = &b["HostConfig"];
        assert_eq!(hc["NetworkMode"], "host");
        assert_eq!(hc["VolumeDriver"], "daffe");
        assert_eq!(hc["Binds"][0], "counter@gold:/data");
        assert_eq!(hc["PortBindings"]["8080/tcp"][0]["HostPort"], "8080");
        assert_eq!(hc["RestartPolicy"]["Name"], "unless-stopped");
        for gone in ["CgroupParent", "Devices", "ContainerIDFile", "Mounts"] {
            assert!(hc.get(gone).is_none(), "{gone} stays behind");
        }
        // A hostname the operator chose travels.
        let mut v: Value = serde_json::from_str(COUNTER).unwrap();
        v["Config"]["Hostname"] = "web".into();
        assert_eq!(recreate_body(&v)["Hostname"], "web");
    }

    #[test]
    fn an_absent_engine_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = EngineClient::new(&dir.path().join("gone.sock"))
            .inspect("counter")
            .unwrap_err();
        assert!(e.to_string().contains("gone.sock"), "{e}");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
