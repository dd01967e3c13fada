//! Faithful doubles for two-host mode's tests: a Docker engine holding
//! containers and images ([`FakeEngine`]: names are unique, a running
//! container cannot be removed, a start of a container whose image is
//! missing fails, stop of a stopped one is a no-op as the engine's 304),
//! and a migration ([`FakeMover`]) that, like `migrate`, asks for the
//! unmount and waits for it: it fails (unfenced, as `UnmountTimeout`) when
//! a running container still mounts the volume on the source, and moves
//! the volume's owner only when it completes.

use super::containers::{ContainerApi, ContainerInfo};
use super::engine::EngineError;
use super::hosts::HostSpec;
use super::two_hosts::{Mover, MoverError};
use crate::migrate::orchestrate::MigrateError;
use crate::migrate::report::Report;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default)]
struct Engine {
    containers: BTreeMap<String, ContainerInfo>,
    images: BTreeSet<String>,
    seq: u32,
    fail_start: bool,
    calls: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct FakeEngine(Mutex<Engine>);

impl FakeEngine {
    pub(crate) fn with_image(image: &str) -> Self {
        let e = Self::default();
        e.with(|s| s.images.insert(image.to_owned()));
        e
    }

    fn with<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A container as `docker run -d --volume-driver DRIVER -v VOLUME:/data`.
    pub(crate) fn run(&self, name: &str, image: &str, volumes: &[(&str, &str)]) {
        let raw = serde_json::json!({
            "Id": format!("id-{name}-0"),
            "Name": format!("/{name}"),
            "State": {"Running": true},
            "Config": {"Image": image, "Cmd": ["httpd"], "Env": ["A=1"]},
            "HostConfig": {"NetworkMode": "host", "VolumeDriver": volumes.first().map(|v| v.1).unwrap_or("local"),
                           "Binds": volumes.iter().map(|(v, _)| format!("{v}:/data")).collect::<Vec<_>>()},
            "Mounts": volumes.iter().map(|(v, d)| serde_json::json!({"Type": "volume", "Name": v, "Driver": d})).collect::<Vec<_>>(),
        });
        let c = super::containers::parse_container(&raw).expect("fake container");
        self.with(|s| {
            s.images.insert(image.to_owned());
            s.containers.insert(name.to_owned(), c);
        });
    }

    pub(crate) fn fail_start(&self) {
        self.with(|s| s.fail_start = true);
    }

    pub(crate) fn running(&self, name: &str) -> bool {
        self.with(|s| s.containers.get(name).is_some_and(|c| c.running))
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.with(|s| s.containers.contains_key(name))
    }

    pub(crate) fn raw(&self, name: &str) -> Value {
        self.with(|s| s.containers[name].raw.clone())
    }

    /// The calls that changed something, in order (`stop NAME`, ...).
    pub(crate) fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    fn by_id<'a>(s: &'a mut Engine, id: &str) -> Option<&'a mut ContainerInfo> {
        s.containers.values_mut().find(|c| c.id == id)
    }
}

fn refused(what: &str, status: u16, message: &str) -> EngineError {
    EngineError::Refused {
        what: what.into(),
        status,
        message: message.into(),
    }
}

impl ContainerApi for FakeEngine {
    fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        Ok(self.with(|s| s.containers.get(name).cloned()))
    }

    fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        Ok(self.with(|s| s.images.contains(image)))
    }

    fn stop(&self, id: &str, _grace: Duration) -> Result<(), EngineError> {
        self.with(|s| {
            let c = Self::by_id(s, id).ok_or_else(|| refused("stop", 404, "No such container"))?;
            c.running = false;
            c.raw["State"]["Running"] = false.into();
            let n = c.name.clone();
            s.calls.push(format!("stop {n}"));
            Ok(())
        })
    }

    fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.with(|s| {
            let c = Self::by_id(s, id).ok_or_else(|| refused("rm", 404, "No such container"))?;
            if c.running {
                return Err(refused("rm", 409, "cannot remove a running container"));
            }
            let n = c.name.clone();
            s.containers.remove(&n);
            s.calls.push(format!("rm {n}"));
            Ok(())
        })
    }

    fn create(&self, name: &str, body: &Value) -> Result<String, EngineError> {
        self.with(|s| {
            if s.containers.contains_key(name) {
                return Err(refused("create", 409, "name already in use"));
            }
            let image = body["Image"].as_str().unwrap_or_default();
            if !s.images.contains(image) {
                return Err(refused("create", 404, &format!("No such image: {image}")));
            }
            s.seq += 1;
            let mut raw = body.clone();
            let mut hc = raw["HostConfig"].take();
            let config = {
                raw.as_object_mut().map(|m| m.remove("HostConfig"));
                raw
            };
            let driver = hc["VolumeDriver"].as_str().unwrap_or("local").to_owned();
            let mounts: Vec<Value> = hc["Binds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_str()?.split(':').next().map(str::to_owned))
                .map(|v| serde_json::json!({"Type": "volume", "Name": v, "Driver": driver}))
                .collect();
            let id = format!("id-{name}-{}", s.seq);
            let full = serde_json::json!({
                "Id": id, "Name": format!("/{name}"), "State": {"Running": false},
                "Config": config, "HostConfig": hc.take(), "Mounts": mounts,
            });
            let c = super::containers::parse_container(&full).expect("created");
            s.containers.insert(name.to_owned(), c);
            s.calls.push(format!("create {name}"));
            Ok(id)
        })
    }

    fn start(&self, id: &str) -> Result<(), EngineError> {
        self.with(|s| {
            let fail = s.fail_start;
            let c = Self::by_id(s, id).ok_or_else(|| refused("start", 404, "No such container"))?;
            if fail {
                return Err(refused("start", 500, "port is already allocated"));
            }
            c.running = true;
            c.raw["State"]["Running"] = true.into();
            let n = c.name.clone();
            s.calls.push(format!("start {n}"));
            Ok(())
        })
    }
}

/// How the fake migration ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Completes,
    /// The final round fails: the volume is given back to the source.
    FinalRoundFails,
    /// The commit's answer is lost: the source stays fenced.
    HandoverLost,
}

/// A migration between fake hosts. `engines`: each region's engine, to see
/// whether the volume is still mounted on the source when it asks.
pub(crate) struct FakeMover<'a> {
    pub engines: Vec<(&'a str, &'a FakeEngine)>,
    pub owner: String,
    pub ending: Ending,
    pub runs: u32,
}

impl Mover for FakeMover<'_> {
    fn migrate(
        &mut self,
        volume: &str,
        from: &HostSpec,
        to: &HostSpec,
        unmount: &mut dyn FnMut(),
    ) -> Result<Report, MoverError> {
        self.runs += 1;
        assert_eq!(self.owner, from.region, "migrate runs on the owner");
        unmount();
        let (_, src) = self
            .engines
            .iter()
            .find(|(r, _)| *r == from.region)
            .expect("source engine");
        let mounted = src.with(|s| {
            s.containers
                .values()
                .any(|c| c.running && c.volumes.iter().any(|(v, _)| v == volume))
        });
        if mounted {
            return Err(MigrateError::UnmountTimeout {
                volume: volume.into(),
                secs: 0,
            }
            .into());
        }
        match self.ending {
            Ending::Completes => {
                self.owner = to.region.clone();
                Ok(Report {
                    volume: volume.into(),
                    to: to.agent.clone(),
                    downtime_ms: 7,
                    ..Report::default()
                })
            }
            Ending::FinalRoundFails => Err(MigrateError::Reply("link cut".into()).into()),
            Ending::HandoverLost => Err(MigrateError::Handover {
                volume: volume.into(),
                to: to.agent.clone(),
                source: Box::new(MigrateError::Reply("commit answer lost".into())),
            }
            .into()),
        }
    }
}
