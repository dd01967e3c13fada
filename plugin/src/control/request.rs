//! Control API requests as values: pure parsing of (method, path, body)
//! into a [`ControlRequest`], and the inverse ([`ControlRequest::to_http`])
//! that the client sends, so the two sides cannot disagree on a route or a
//! body. Table-tested, with a round trip over every route.
//!
//! Routes (JSON bodies and replies):
//!
//! | method | path | request |
//! |---|---|---|
//! | GET | `/v1/configuration/profiles` | [`ControlRequest::Profiles`] |
//! | POST | `/v1/configuration/profiles` `{"name", ...ProfileDef}` | [`ControlRequest::DefineProfile`] |
//! | GET | `/v1/volumes` | [`ControlRequest::Volumes`] |
//! | GET | `/v1/status` | [`ControlRequest::Status`] |
//! | GET | `/v1/health` | [`ControlRequest::Health`] |
//! | GET | `/v1/cluster` | [`ControlRequest::Cluster`] |
//! | GET | `/metrics` (Prometheus' usual path) | [`ControlRequest::Metrics`] |
//! | POST | `/v1/reports` `{"command", ...RunReport}` | [`ControlRequest::Report`] |
//! | GET | `/v1/volumes/NAME` | [`ControlRequest::Volume`] |
//! | POST | `/v1/volumes/NAME/profile` `{"profile"}` | [`ControlRequest::SetProfile`] |
//! | GET | `/v1/volumes/NAME/transfer` | [`ControlRequest::Transfer`] |
//! | POST | `/v1/volumes/NAME/{move,fence,moved}` `{"to"}` | [`ControlRequest::Move`], [`ControlRequest::Fence`], [`ControlRequest::FinishMove`] |
//! | POST | `/v1/volumes/NAME/{abort,own}` | [`ControlRequest::AbortMove`], [`ControlRequest::Own`] |
//! | POST | `/v1/volumes/NAME/handover` `{"to"}` | [`ControlRequest::Handover`] |
//! | POST | `/v1/volumes/NAME/pull` | [`ControlRequest::Pull`] |
//! | POST | `/v1/volumes/NAME/standby` `{"from","epoch","mark"?}` | [`ControlRequest::Standby`] |
//! | POST | `/v1/volumes/NAME/move-to` `{"node"}` | [`ControlRequest::MoveTo`] |
//! | POST | `/v1/volumes/NAME/changes` `{"cache"}` | [`ControlRequest::Changes`] |
//! | POST | `/v1/volumes/NAME/scanned` `{"cache","mark"}` | [`ControlRequest::Scanned`] |
//! | POST | `/v1/receive/check` `{"volume","options","need_bytes"}` | [`ControlRequest::CheckReceive`] |
//! | POST | `/v1/receive/prepare` `{"volume","options","from"}` | [`ControlRequest::PrepareReceive`] |
//! | GET | `/v1/volumes/NAME/ebs` | [`ControlRequest::EbsFacts`] |
//! | POST | `/v1/volumes/NAME/ebs/{fence,unfence,attach,detach,copy,discard,moved}` | [`ControlRequest::Ebs`] |
//!
//! NAME is a NAME or a docker name (`db@gold`), percent-encoded as needed.
//! Bodies are strict: an unknown key is an error, not ignored.

use crate::metrics::run::RunReport;
use crate::unix_http::percent_encode;
use hyper::Method;
use profiles::ProfileDef;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One control API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ControlRequest {
    /// The profiles and what each means on every backend.
    Profiles,
    /// Defines or redefines a profile and re-applies it to its volumes.
    DefineProfile { name: String, def: ProfileDef },
    /// Every volume: record, mountpoint, mount counts.
    Volumes,
    /// `daffe status`: version, uptime, volumes by state, moves, recent errors.
    Status,
    /// Liveness and readiness: 200 when the daemon answers and its record
    /// store reads.
    Health,
    /// `daffe cluster status`: nodes, volumes, owners, epochs (cluster mode).
    Cluster,
    /// Prometheus metrics, in the text format (`crate::metrics`).
    Metrics,
    /// A short-lived command's final figures, for the metrics
    /// (`crate::metrics::report`).
    Report(RunReport),
    /// One volume, by NAME or docker name.
    Volume { name: String },
    /// `daffe volume set-profile`.
    SetProfile { name: String, profile: String },
    /// Where the mover reads or writes the volume on this host.
    Transfer { name: String },
    /// Source: pre-copy to `to` starts (`Ready -> Moving`).
    Move { name: String, to: String },
    /// Source: cutover, once unmounted (`Moving -> Fenced`).
    Fence { name: String, to: String },
    /// Source: `to` owns the volume now (`Fenced -> Moved`).
    FinishMove { name: String, to: String },
    /// Source: the move is called off (back to `Ready`).
    AbortMove { name: String },
    /// Destination: the volume is handed over (`Receiving -> Ready`).
    Own { name: String },
    /// Cluster mode, the last writer's side: may node `to` (which owns the
    /// volume now, with a stale copy) be sent this node's copy, and where
    /// is its agent?
    Handover { name: String, to: String },
    /// Cluster mode: make this node's copy the latest, unmounted
    /// (`daffe volume move --to THIS-NODE`).
    Pull { name: String },
    /// Cluster mode, a standby's side: node `from`, owner at `epoch`,
    /// streams pre-copy rounds of the volume into this node's copy.
    Standby {
        name: String,
        from: String,
        epoch: u64,
        /// What the round that follows leaves there (failover checks it).
        mark: Option<crate::migrate::wire::RoundMark>,
    },
    /// Cluster mode: `daffe volume move VOLUME --to NODE`, from any node.
    MoveTo { name: String, node: String },
    /// A block volume's image: where it was written since the last saved
    /// scan into the source cache `cache` (`backend::local::writes`).
    Changes { name: String, cache: String },
    /// The scan that took `mark` from [`ControlRequest::Changes`] is saved.
    Scanned {
        name: String,
        cache: String,
        mark: u64,
    },
    /// Destination: could `volume` be received (profile, room)?
    CheckReceive {
        volume: String,
        options: BTreeMap<String, String>,
        need_bytes: u64,
    },
    /// Destination: make (or find) the volume in `Receiving`.
    PrepareReceive {
        volume: String,
        options: BTreeMap<String, String>,
        from: String,
    },
    /// An EBS volume's facts, for `migrate --via-ebs`.
    EbsFacts { name: String },
    /// A step of `migrate --via-ebs`.
    Ebs { name: String, step: EbsStep },
}

/// The daemon's steps of an EBS zone migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EbsStep {
    Fence {
        zone: String,
    },
    Unfence,
    Attach,
    Detach,
    Copy {
        snapshot_id: String,
        zone: String,
    },
    /// Deletes every copy a migration made of the volume (before an
    /// unfence: hardening finding 11).
    Discard,
    Moved {
        zone: String,
        volume_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("no route {0}")]
    NoRoute(String),
    #[error("method {method} not allowed on {path}")]
    Method { method: String, path: String },
    #[error("bad request body: {0}")]
    Body(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheBody {
    cache: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScannedBody {
    cache: String,
    mark: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StandbyBody {
    from: String,
    epoch: u64,
    #[serde(default)]
    mark: Option<crate::migrate::wire::RoundMark>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetProfileBody {
    profile: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    volume: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    need_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrepareBody {
    volume: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    from: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneBody {
    zone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyBody {
    snapshot_id: String,
    zone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MovedBody {
    zone: String,
    volume_id: String,
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RequestError> {
    serde_json::from_slice(bytes).map_err(|e| RequestError::Body(e.to_string()))
}

/// `{"name": N, ...ProfileDef}`. Parsed by hand rather than with
/// `#[serde(flatten)]`, which would silently drop unknown keys (a misspelt
/// `ebs` section would define a profile without it).
fn define(bytes: &[u8]) -> Result<ControlRequest, RequestError> {
    let bad = |m: String| RequestError::Body(m);
    let mut obj: serde_json::Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let name = match obj.remove("name") {
        Some(Value::String(n)) => n,
        Some(_) => return Err(bad("\"name\" must be a string".into())),
        None => return Err(bad("missing \"name\" (the profile's name)".into())),
    };
    let def = serde_json::from_value(Value::Object(obj))
        .map_err(|e| bad(format!("profile {name:?}: {e}")))?;
    Ok(ControlRequest::DefineProfile { name, def })
}

impl ControlRequest {
    /// Parses one request. Path segments are percent-decoded one by one
    /// (clients may escape the `@` of `db@gold`).
    pub(crate) fn parse(method: &Method, path: &str, bytes: &[u8]) -> Result<Self, RequestError> {
        use ControlRequest as R;
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let decoded = format!("/{}", segs.join("/"));
        // The one method a route takes (both, for the profiles).
        let only = |want: Method| {
            if *method == want {
                Ok(())
            } else {
                Err(RequestError::Method {
                    method: method.to_string(),
                    path: decoded.clone(),
                })
            }
        };
        let name = |n: &str| n.to_owned();
        match segs.as_slice() {
            ["v1", "configuration", "profiles"] if *method == Method::POST => define(bytes),
            ["v1", "configuration", "profiles"] => only(Method::GET).map(|()| R::Profiles),
            ["v1", "volumes"] => only(Method::GET).map(|()| R::Volumes),
            ["v1", "status"] => only(Method::GET).map(|()| R::Status),
            ["v1", "health"] => only(Method::GET).map(|()| R::Health),
            ["v1", "cluster"] => only(Method::GET).map(|()| R::Cluster),
            ["metrics"] => only(Method::GET).map(|()| R::Metrics),
            ["v1", "reports"] => {
                only(Method::POST)?;
                let r: RunReport = body(bytes)?;
                r.check().map_err(RequestError::Body)?;
                Ok(R::Report(r))
            }
            ["v1", "volumes", n] => only(Method::GET).map(|()| R::Volume { name: name(n) }),
            ["v1", "volumes", n, "transfer"] => {
                only(Method::GET).map(|()| R::Transfer { name: name(n) })
            }
            ["v1", "volumes", n, "ebs"] => {
                only(Method::GET).map(|()| R::EbsFacts { name: name(n) })
            }
            [
                "v1",
                "volumes",
                n,
                op @ ("profile" | "move" | "fence" | "moved" | "abort" | "own" | "handover"
                | "pull" | "move-to" | "standby" | "changes" | "scanned"),
            ] => {
                only(Method::POST)?;
                let name = name(n);
                Ok(match *op {
                    "profile" => R::SetProfile {
                        name,
                        profile: body::<SetProfileBody>(bytes)?.profile,
                    },
                    "move" => R::Move {
                        name,
                        to: body::<To>(bytes)?.to,
                    },
                    "fence" => R::Fence {
                        name,
                        to: body::<To>(bytes)?.to,
                    },
                    "moved" => R::FinishMove {
                        name,
                        to: body::<To>(bytes)?.to,
                    },
                    "abort" => R::AbortMove { name },
                    "handover" => R::Handover {
                        name,
                        to: body::<To>(bytes)?.to,
                    },
                    "pull" => R::Pull { name },
                    "standby" => {
                        let b = body::<StandbyBody>(bytes)?;
                        R::Standby {
                            name,
                            from: b.from,
                            epoch: b.epoch,
                            mark: b.mark,
                        }
                    }
                    "move-to" => R::MoveTo {
                        name,
                        node: body::<NodeBody>(bytes)?.node,
                    },
                    "changes" => R::Changes {
                        name,
                        cache: body::<CacheBody>(bytes)?.cache,
                    },
                    "scanned" => {
                        let b = body::<ScannedBody>(bytes)?;
                        R::Scanned {
                            name,
                            cache: b.cache,
                            mark: b.mark,
                        }
                    }
                    _ => R::Own { name },
                })
            }
            [
                "v1",
                "volumes",
                n,
                "ebs",
                step @ ("fence" | "unfence" | "attach" | "detach" | "copy" | "discard" | "moved"),
            ] => {
                only(Method::POST)?;
                let step = match *step {
                    "fence" => EbsStep::Fence {
                        zone: body::<ZoneBody>(bytes)?.zone,
                    },
                    "unfence" => EbsStep::Unfence,
                    "attach" => EbsStep::Attach,
                    "detach" => EbsStep::Detach,
                    "discard" => EbsStep::Discard,
                    "copy" => {
                        let c: CopyBody = body(bytes)?;
                        EbsStep::Copy {
                            snapshot_id: c.snapshot_id,
                            zone: c.zone,
                        }
                    }
                    _ => {
                        let m: MovedBody = body(bytes)?;
                        EbsStep::Moved {
                            zone: m.zone,
                            volume_id: m.volume_id,
                        }
                    }
                };
                Ok(R::Ebs {
                    name: name(n),
                    step,
                })
            }
            ["v1", "receive", "check"] => {
                only(Method::POST)?;
                let c: CheckBody = body(bytes)?;
                Ok(R::CheckReceive {
                    volume: c.volume,
                    options: c.options,
                    need_bytes: c.need_bytes,
                })
            }
            ["v1", "receive", "prepare"] => {
                only(Method::POST)?;
                let p: PrepareBody = body(bytes)?;
                Ok(R::PrepareReceive {
                    volume: p.volume,
                    options: p.options,
                    from: p.from,
                })
            }
            _ => Err(RequestError::NoRoute(decoded)),
        }
    }

    /// The method, path and body that [`ControlRequest::parse`] reads back
    /// as `self`.
    pub(crate) fn to_http(&self) -> (Method, String, Option<Value>) {
        use ControlRequest as R;
        let vol = |n: &str, op: &str| match op {
            "" => format!("/v1/volumes/{}", percent_encode(n)),
            op => format!("/v1/volumes/{}/{op}", percent_encode(n)),
        };
        let get = |path: String| (Method::GET, path, None);
        let post = |path: String, body: Value| (Method::POST, path, Some(body));
        match self {
            R::Profiles => get("/v1/configuration/profiles".into()),
            R::DefineProfile { name, def } => {
                let mut body = serde_json::to_value(def).unwrap_or_else(|_| json!({}));
                body["name"] = json!(name);
                post("/v1/configuration/profiles".into(), body)
            }
            R::Volumes => get("/v1/volumes".into()),
            R::Status => get("/v1/status".into()),
            R::Health => get("/v1/health".into()),
            R::Cluster => get("/v1/cluster".into()),
            R::Metrics => get("/metrics".into()),
            R::Report(r) => post(
                "/v1/reports".into(),
                serde_json::to_value(r).unwrap_or_else(|_| json!({})),
            ),
            R::Volume { name } => get(vol(name, "")),
            R::SetProfile { name, profile } => {
                post(vol(name, "profile"), json!({ "profile": profile }))
            }
            R::Transfer { name } => get(vol(name, "transfer")),
            R::Move { name, to } => post(vol(name, "move"), json!({ "to": to })),
            R::Fence { name, to } => post(vol(name, "fence"), json!({ "to": to })),
            R::FinishMove { name, to } => post(vol(name, "moved"), json!({ "to": to })),
            R::Handover { name, to } => post(vol(name, "handover"), json!({ "to": to })),
            R::Pull { name } => post(vol(name, "pull"), json!({})),
            R::Standby {
                name,
                from,
                epoch,
                mark,
            } => post(
                vol(name, "standby"),
                json!({ "from": from, "epoch": epoch, "mark": mark }),
            ),
            R::MoveTo { name, node } => post(vol(name, "move-to"), json!({ "node": node })),
            R::Changes { name, cache } => post(vol(name, "changes"), json!({ "cache": cache })),
            R::Scanned { name, cache, mark } => post(
                vol(name, "scanned"),
                json!({ "cache": cache, "mark": mark }),
            ),
            R::AbortMove { name } => post(vol(name, "abort"), json!({})),
            R::Own { name } => post(vol(name, "own"), json!({})),
            R::CheckReceive {
                volume,
                options,
                need_bytes,
            } => post(
                "/v1/receive/check".into(),
                json!({ "volume": volume, "options": options, "need_bytes": need_bytes }),
            ),
            R::PrepareReceive {
                volume,
                options,
                from,
            } => post(
                "/v1/receive/prepare".into(),
                json!({ "volume": volume, "options": options, "from": from }),
            ),
            R::EbsFacts { name } => get(vol(name, "ebs")),
            R::Ebs { name, step } => {
                let (op, body) = match step {
                    EbsStep::Fence { zone } => ("fence", json!({ "zone": zone })),
                    EbsStep::Unfence => ("unfence", json!({})),
                    EbsStep::Attach => ("attach", json!({})),
                    EbsStep::Detach => ("detach", json!({})),
                    EbsStep::Discard => ("discard", json!({})),
                    EbsStep::Copy { snapshot_id, zone } => {
                        ("copy", json!({ "snapshot_id": snapshot_id, "zone": zone }))
                    }
                    EbsStep::Moved { zone, volume_id } => {
                        ("moved", json!({ "zone": zone, "volume_id": volume_id }))
                    }
                };
                post(vol(name, &format!("ebs/{op}")), body)
            }
        }
    }

    /// What the request does, for logs and timeout messages.
    pub(crate) fn op(&self) -> &'static str {
        use ControlRequest as R;
        match self {
            R::Profiles => "list profiles",
            R::DefineProfile { .. } => "define profile",
            R::Volumes => "list volumes",
            R::Status => "status",
            R::Health => "health",
            R::Cluster => "cluster status",
            R::Metrics => "metrics",
            R::Report(_) => "report",
            R::Volume { .. } => "inspect",
            R::SetProfile { .. } => "set-profile",
            R::Transfer { .. } => "transfer paths",
            R::Move { .. } => "move",
            R::Fence { .. } => "fence",
            R::FinishMove { .. } => "finish_move",
            R::AbortMove { .. } => "abort_move",
            R::Own { .. } => "take_ownership",
            R::Handover { .. } => "handover",
            R::Pull { .. } => "pull",
            R::Standby { .. } => "standby",
            R::MoveTo { .. } => "volume move",
            R::Changes { .. } => "image changes",
            R::Scanned { .. } => "image scanned",
            R::CheckReceive { .. } => "check receive",
            R::PrepareReceive { .. } => "prepare receive",
            R::EbsFacts { .. } => "ebs facts",
            R::Ebs { step, .. } => match step {
                EbsStep::Fence { .. } => "fence",
                EbsStep::Unfence => "unfence",
                EbsStep::Attach => "attach",
                EbsStep::Detach => "detach",
                EbsStep::Copy { .. } => "copy",
                EbsStep::Discard => "discard",
                EbsStep::Moved { .. } => "moved",
            },
        }
    }

    /// The volume (or profile) the request is about; empty for the lists.
    pub(crate) fn subject(&self) -> &str {
        use ControlRequest as R;
        match self {
            R::Profiles | R::Volumes | R::Status | R::Health | R::Cluster | R::Metrics => "",
            R::Report(r) => r.volume.as_deref().unwrap_or(""),
            R::DefineProfile { name, .. }
            | R::Volume { name }
            | R::SetProfile { name, .. }
            | R::Transfer { name }
            | R::Move { name, .. }
            | R::Fence { name, .. }
            | R::FinishMove { name, .. }
            | R::Handover { name, .. }
            | R::Pull { name }
            | R::Standby { name, .. }
            | R::MoveTo { name, .. }
            | R::Changes { name, .. }
            | R::Scanned { name, .. }
            | R::AbortMove { name }
            | R::Own { name }
            | R::EbsFacts { name }
            | R::Ebs { name, .. } => name,
            R::CheckReceive { volume, .. } | R::PrepareReceive { volume, .. } => volume,
        }
    }
}

/// Decodes `%XX` escapes; anything else, a bad escape included, is kept.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
            && let Ok(byte) = u8::try_from(h * 16 + l)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silver() -> ProfileDef {
        serde_json::from_value(json!({"description": "gp3 above baseline",
            "ebs": {"type": "gp3", "iops": 4000, "throughput": 250}}))
        .unwrap()
    }

    /// Every route, as a client would send it.
    fn every_request() -> Vec<ControlRequest> {
        use ControlRequest as R;
        let n = || "db@gold".to_owned();
        vec![
            R::Profiles,
            R::DefineProfile {
                name: "silver".into(),
                def: silver(),
            },
            R::Volumes,
            R::Status,
            R::Health,
            R::Cluster,
            R::Metrics,
            R::Report(
                serde_json::from_value(json!({"command": "migrate", "volume": "db@gold",
                    "bytes_scanned": 3, "bytes_fetched": 2, "bytes_written": 1,
                    "round_ms": [5, 6], "downtime_ms": 7}))
                .unwrap(),
            ),
            R::Report(serde_json::from_value(json!({"command": "snapshot_pull"})).unwrap()),
            R::Volume { name: n() },
            R::Volume {
                name: "with space/and%slash".into(),
            },
            R::SetProfile {
                name: n(),
                profile: "silver".into(),
            },
            R::Transfer { name: n() },
            R::Move {
                name: n(),
                to: "hostb:7450".into(),
            },
            R::Fence {
                name: n(),
                to: "hostb".into(),
            },
            R::FinishMove {
                name: n(),
                to: "hostb".into(),
            },
            R::AbortMove { name: n() },
            R::Own { name: n() },
            R::Handover {
                name: n(),
                to: "swnode2".into(),
            },
            R::Pull { name: n() },
            R::Standby {
                name: n(),
                from: "swnode1".into(),
                epoch: 42,
                mark: Some(crate::migrate::wire::RoundMark {
                    root: "ab".repeat(32),
                    at_unix_ms: 1_700_000_000_000,
                    sealed: true,
                }),
            },
            R::MoveTo {
                name: n(),
                node: "swnode3".into(),
            },
            R::Changes {
                name: n(),
                cache: "/var/lib/daffe/cache/db".into(),
            },
            R::Scanned {
                name: n(),
                cache: "/var/lib/daffe/cache/db".into(),
                mark: 7,
            },
            R::CheckReceive {
                volume: n(),
                options: BTreeMap::from([("size".to_owned(), "2G".to_owned())]),
                need_bytes: 1 << 40,
            },
            R::PrepareReceive {
                volume: n(),
                options: BTreeMap::new(),
                from: "hosta".into(),
            },
            R::EbsFacts { name: n() },
            R::Ebs {
                name: n(),
                step: EbsStep::Fence {
                    zone: "us-east-1b".into(),
                },
            },
            R::Ebs {
                name: n(),
                step: EbsStep::Unfence,
            },
            R::Ebs {
                name: n(),
                step: EbsStep::Attach,
            },
            R::Ebs {
                name: n(),
                step: EbsStep::Detach,
            },
            R::Ebs {
                name: n(),
                step: EbsStep::Copy {
                    snapshot_id: "snap-1".into(),
                    zone: "us-east-1b".into(),
                },
            },
            R::Ebs {
                name: n(),
                step: EbsStep::Moved {
                    zone: "us-east-1b".into(),
                    volume_id: "vol-2".into(),
                },
            },
        ]
    }

    #[test]
    fn every_route_reads_back_what_the_client_sends() {
        for req in every_request() {
            let (method, path, body) = req.to_http();
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            assert_eq!(
                ControlRequest::parse(&method, &path, bytes.as_bytes()),
                Ok(req.clone()),
                "{method} {path} {bytes}"
            );
        }
    }

    #[test]
    fn parses_what_clients_write_by_hand() {
        use ControlRequest as R;
        let cases: Vec<(Method, &str, &str, ControlRequest)> = vec![
            (
                Method::GET,
                "/v1/volumes/db%40gold",
                "",
                R::Volume {
                    name: "db@gold".into(),
                },
            ),
            (
                Method::GET,
                "/v1/volumes/db@gold/",
                "",
                R::Volume {
                    name: "db@gold".into(),
                },
            ),
            (
                Method::POST,
                "/v1/volumes/v/abort",
                "",
                R::AbortMove { name: "v".into() },
            ),
            (
                Method::POST,
                "/v1/receive/check",
                r#"{"volume":"v"}"#,
                R::CheckReceive {
                    volume: "v".into(),
                    options: BTreeMap::new(),
                    need_bytes: 0,
                },
            ),
            (
                Method::POST,
                "/v1/volumes/v/ebs/attach",
                "{}",
                R::Ebs {
                    name: "v".into(),
                    step: EbsStep::Attach,
                },
            ),
            (
                Method::POST,
                "/v1/volumes/v/ebs/discard",
                "{}",
                R::Ebs {
                    name: "v".into(),
                    step: EbsStep::Discard,
                },
            ),
        ];
        for (method, path, body, want) in cases {
            assert_eq!(
                ControlRequest::parse(&method, path, body.as_bytes()),
                Ok(want),
                "{method} {path} {body}"
            );
        }
    }

    #[test]
    fn refuses_bad_requests_with_the_reason() {
        let cases = [
            (Method::GET, "/v1/nope", "", "no route /v1/nope"),
            (Method::GET, "/v2/volumes", "", "no route /v2/volumes"),
            (Method::POST, "/v1/volumes/v/eject", "{}", "no route"),
            (
                Method::PUT,
                "/v1/volumes",
                "",
                "method PUT not allowed on /v1/volumes",
            ),
            (
                Method::GET,
                "/v1/volumes/v/fence",
                "",
                "method GET not allowed",
            ),
            (
                Method::POST,
                "/v1/volumes/v/transfer",
                "",
                "method POST not allowed",
            ),
            (
                Method::DELETE,
                "/v1/configuration/profiles",
                "",
                "not allowed",
            ),
            (
                Method::POST,
                "/v1/volumes/v/move",
                "{}",
                "missing field `to`",
            ),
            (
                Method::POST,
                "/v1/volumes/v/move",
                r#"{"to":"b","x":1}"#,
                "unknown field `x`",
            ),
            (
                Method::POST,
                "/v1/volumes/v/profile",
                r#"{"profil":"gold"}"#,
                "unknown field",
            ),
            (
                Method::POST,
                "/v1/volumes/v/ebs/copy",
                r#"{"zone":"z"}"#,
                "snapshot_id",
            ),
            (
                Method::POST,
                "/v1/receive/prepare",
                r#"{"volume":"v"}"#,
                "missing field `from`",
            ),
            (
                Method::POST,
                "/v1/receive/check",
                "not json",
                "bad request body",
            ),
            (Method::GET, "/v1/reports", "", "method GET not allowed"),
            (
                Method::POST,
                "/v1/reports",
                r#"{"command":"sync","rounds":3}"#,
                "unknown field `rounds`",
            ),
            (
                Method::POST,
                "/v1/reports",
                r#"{"command":"migrate","volume":""}"#,
                "not a volume name",
            ),
            (
                Method::POST,
                "/v1/configuration/profiles",
                "{}",
                "missing \"name\"",
            ),
            (
                Method::POST,
                "/v1/configuration/profiles",
                r#"{"name":7}"#,
                "must be a string",
            ),
            (
                Method::POST,
                "/v1/configuration/profiles",
                r#"{"name":"x","ebz":{"type":"gp3"}}"#,
                "unknown field `ebz`",
            ),
        ];
        for (method, path, body, want) in cases {
            let err = ControlRequest::parse(&method, path, body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{method} {path} {body}: {err}");
        }
    }

    #[test]
    fn percent_round_trip() {
        for s in ["db@gold", "a b/c%", "plain", "é"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
        assert_eq!(percent_decode("db%40gold"), "db@gold");
        assert_eq!(percent_decode("bad%4"), "bad%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
