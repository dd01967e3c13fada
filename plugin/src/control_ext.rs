//! The control socket's routes that change things (JSON body, JSON reply;
//! errors `{"Err": ...}` with 4xx/5xx):
//!
//! - `POST /v1/configuration/profiles` `{"name": N, ...ProfileDef}`: defines
//!   or redefines profile N (as FlockerProfiles proposed) and re-applies it to
//!   N's volumes. 200 with `{profile, volumes: [...]}`; 409 with nothing
//!   changed if a volume cannot take it; 502 with the same body plus `Err`
//!   if the profile was defined but some volume's storage call failed.
//! - `POST /v1/volumes/NAME/profile` `{"profile": P}`: `daffe volume
//!   set-profile`.
//! - EBS migration steps (`daffe migrate --via-ebs`): `GET
//!   /v1/volumes/NAME/ebs`; `POST /v1/volumes/NAME/ebs/{fence,unfence,attach,
//!   detach,copy,moved}`.
//!
//! Work that calls AWS runs on the blocking pool under a time limit
//! (`bounded`), like the VolumeDriver handlers.

use crate::api::reply::Reply;
use crate::bounded;
use crate::service::VolumeService;
use hyper::{Method, StatusCode};
use profiles::ProfileDef;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// One volume's profile change: one ModifyVolume within the EBS backend's
/// 45 s change budget.
pub const SET_PROFILE_LIMIT: Duration = Duration::from_secs(50);
/// A profile definition re-applied to its volumes one by one; past this the
/// caller gets a timeout while the work finishes in the background.
pub const DEFINE_LIMIT: Duration = Duration::from_secs(110);
/// EBS migration steps: attach and copy have 90 s budgets.
pub const EBS_STEP_LIMIT: Duration = Duration::from_secs(100);

/// `{"name": N, ...ProfileDef}`. Parsed by hand rather than with
/// `#[serde(flatten)]`, which would silently drop unknown keys (a misspelt
/// `ebs` section would define a profile without it).
#[derive(Debug)]
struct Define {
    name: String,
    def: ProfileDef,
}

fn parse_define(body: &[u8]) -> Result<Define, Reply> {
    let bad = |m: String| Reply::error(StatusCode::BAD_REQUEST, format!("bad request body: {m}"));
    let mut obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let name = match obj.remove("name") {
        Some(serde_json::Value::String(n)) => n,
        Some(_) => return Err(bad("\"name\" must be a string".into())),
        None => return Err(bad("missing \"name\" (the profile's name)".into())),
    };
    let def = serde_json::from_value(serde_json::Value::Object(obj))
        .map_err(|e| bad(format!("profile {name:?}: {e}")))?;
    Ok(Define { name, def })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetProfile {
    profile: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Zone {
    zone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Copy {
    snapshot_id: String,
    zone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Moved {
    zone: String,
    volume_id: String,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// Answers one of these routes, or `None` if `segs` is not one.
pub async fn route(
    svc: &Arc<VolumeService>,
    method: &Method,
    segs: &[&str],
    body: &[u8],
) -> Option<Reply> {
    let post = *method == Method::POST;
    let get = *method == Method::GET;
    let svc = svc.clone();
    let reply = match segs {
        ["v1", "configuration", "profiles"] if post => {
            let d = match parse_define(body) {
                Ok(d) => d,
                Err(r) => return Some(r),
            };
            let name = d.name.clone();
            match bounded::run("define profile", &name, DEFINE_LIMIT, move |_| {
                svc.define_profile(&d.name, d.def)
            })
            .await
            {
                Ok(report) => {
                    let failures: Vec<String> = report
                        .failures()
                        .map(|v| v.error.clone().unwrap_or_default())
                        .collect();
                    let mut body = json!(report);
                    if failures.is_empty() {
                        Reply::json(body)
                    } else {
                        body["Err"] = json!(format!(
                            "profile {name:?} was defined, but {} volume(s) could not be changed: {}",
                            failures.len(),
                            failures.join("; ")
                        ));
                        Reply {
                            status: StatusCode::BAD_GATEWAY,
                            body,
                            raw: None,
                        }
                    }
                }
                Err(e) => Reply::from(e),
            }
        }
        ["v1", "volumes", name, "profile"] if post => {
            let p: SetProfile = match parse(body) {
                Ok(p) => p,
                Err(r) => return Some(r),
            };
            let n = (*name).to_owned();
            bounded::run("set-profile", name, SET_PROFILE_LIMIT, move |_| {
                svc.set_profile(&n, &p.profile)
            })
            .await
            .map(|c| Reply::json(json!(c)))
            .unwrap_or_else(Reply::from)
        }
        ["v1", "volumes", name, "ebs"] if get => {
            let n = (*name).to_owned();
            bounded::run("ebs facts", name, SET_PROFILE_LIMIT, move |_| {
                svc.ebs_facts(&n)
            })
            .await
            .map(|f| Reply::json(json!(f)))
            .unwrap_or_else(Reply::from)
        }
        ["v1", "volumes", name, "ebs", step] if post => {
            let n = (*name).to_owned();
            let result = match *step {
                "fence" => match parse::<Zone>(body) {
                    Ok(z) => {
                        bounded::run("fence", name, EBS_STEP_LIMIT, move |_| {
                            svc.ebs_fence(&n, &z.zone).map(|f| json!(f))
                        })
                        .await
                    }
                    Err(r) => return Some(r),
                },
                "unfence" => {
                    bounded::run("unfence", name, EBS_STEP_LIMIT, move |_| {
                        svc.ebs_unfence(&n).map(|f| json!(f))
                    })
                    .await
                }
                "attach" => {
                    bounded::run("attach", name, EBS_STEP_LIMIT, move |_| {
                        svc.ebs_attach(&n).map(|d| json!({ "device": d }))
                    })
                    .await
                }
                "detach" => {
                    bounded::run("detach", name, EBS_STEP_LIMIT, move |_| {
                        svc.ebs_detach(&n).map(|()| json!({}))
                    })
                    .await
                }
                "copy" => match parse::<Copy>(body) {
                    Ok(c) => {
                        bounded::run("copy", name, EBS_STEP_LIMIT, move |_| {
                            svc.ebs_copy(&n, &c.snapshot_id, &c.zone)
                                .map(|id| json!({ "volume_id": id }))
                        })
                        .await
                    }
                    Err(r) => return Some(r),
                },
                "moved" => match parse::<Moved>(body) {
                    Ok(m) => {
                        bounded::run("moved", name, EBS_STEP_LIMIT, move |_| {
                            svc.ebs_moved(&n, &m.zone, &m.volume_id).map(|f| json!(f))
                        })
                        .await
                    }
                    Err(r) => return Some(r),
                },
                _ => return None,
            };
            result.map(Reply::json).unwrap_or_else(Reply::from)
        }
        _ => return None,
    };
    Some(reply)
}

#[cfg(test)]
#[path = "control_ext_tests.rs"]
mod tests;
